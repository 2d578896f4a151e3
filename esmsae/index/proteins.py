"""The records of an index's protein set: one protein (:class:`Item`), the grouping and taxonomy
file readers, and the one-label-record-per-source rule. The set itself is a columnar table
(``protein_table``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from esmsae.core.fasta import Protein, clean_sequence, parse_header, seq_md5
from esmsae.index.labels import Labeled


class IndexBuildError(ValueError):
    """Bad index input (grouping file, protein set); the message names the item."""


@dataclass
class Item(Protein):
    """One protein to index: a FASTA protein plus taxonomy, labels, structure and groups."""

    kingdom: str = ""
    lineage: str = ""
    source: str = ""
    structure: str = ""
    chain: str = ""
    labels: list[Labeled] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # grouping -> group
    pidx: int = -1  # row of the index's protein table




def grouping_json(text: str, name: str) -> Iterator[tuple[str, str, str]]:
    """(group, header, sequence) from esm-sae style JSON ``{group: [[sequence, header], ...]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexBuildError(f"{name}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise IndexBuildError(f"{name}: expected an object {{group: [[sequence, header], ...]}}")
    for group, members in data.items():
        if not isinstance(members, list):
            raise IndexBuildError(f"{name}: group {group!r} is not a list of [sequence, header] pairs")
        for j, m in enumerate(members):
            if not (isinstance(m, (list, tuple)) and len(m) >= 1 and isinstance(m[0], str)):
                raise IndexBuildError(f"{name}: group {group!r}, entry {j}: expected [sequence, header]")
            header = m[1] if len(m) > 1 and isinstance(m[1], str) else f"{group}_{j}"
            yield str(group), header, clean_sequence(m[0], f"{name} group {group!r} entry {j}")


def is_mmseqs_clusters(pairs: list[tuple[str, str]]) -> bool:
    """An MMseqs2 cluster TSV (``representative<TAB>member``, from ``easy-cluster`` / ``createtsv``)
    lists every representative as a member of its own cluster ("rep<TAB>rep")."""
    reps = {a for a, _ in pairs}
    return bool(pairs) and reps <= {a for a, b in pairs if a == b}


def tsv_pairs(text: str, name: str, first_line: int = 1) -> list[tuple[str, str]]:
    """(first, second) column pairs of a TSV text whose first line is line ``first_line`` of the
    file; a header ``id<TAB>group`` on the file's line 1 is skipped."""
    pairs = []
    for n, line in enumerate(text.splitlines(), first_line):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise IndexBuildError(f"{name}, line {n}: expected 'protein_id<TAB>group', got {line[:80]!r}")
        if n == 1 and parts[0].lower() in ("id", "protein", "protein_id"):
            continue
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def grouping_tsv(text: str, name: str, fmt: str = "auto") -> list[tuple[str, str]]:
    """(protein id, group) pairs of a ``protein_id<TAB>group`` file (an ``id<TAB>group`` header is
    allowed), or of an MMseqs2 cluster TSV ``representative<TAB>member`` (``fmt`` 'mmseqs', or
    detected with 'auto'): each member goes to its representative's cluster."""
    pairs = tsv_pairs(text, name)
    if fmt == "mmseqs" or (fmt == "auto" and is_mmseqs_clusters(pairs)):
        return [(member, rep) for rep, member in pairs]
    return pairs


def read_grouping(path: str | os.PathLike) -> tuple[str, dict[str, str], list[Protein]]:
    """A grouping file -> (grouping name, {protein id or 'md5:<hash>': group}, extra proteins).

    TSV: ``protein_id<TAB>group`` per line (a header line ``id<TAB>group`` is allowed).
    JSON: ``{group: [[sequence, header], ...]}`` as in esm-sae's sampled_sequences.json; those
    proteins are matched by sequence and added to the set when not already there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"grouping file not found: {path}")
    name = path.stem
    mapping: dict[str, str] = {}
    extra: list[Protein] = []
    if path.suffix == ".json":
        for group, header, seq in grouping_json(path.read_text(), path.name):
            pid, desc, org, taxid = parse_header(header)
            extra.append(Protein(pid, seq, desc, org, taxid))
            mapping["md5:" + seq_md5(seq)] = group
        return name, mapping, extra
    return name, dict(grouping_tsv(path.read_text(), str(path))), extra


def read_taxonomy(path: str | os.PathLike) -> dict[int, str]:
    """taxid -> lineage from a TSV: 'taxid<TAB>lineage' lines, or UniProt's taxonomy export
    (columns 'Taxon Id' and 'Lineage'), so UniRef proteins (TaxID= only) get kingdoms offline."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"taxonomy file not found: {path}")
    out: dict[int, str] = {}
    lines = path.read_text().splitlines()
    cols = lines[0].split("\t") if lines else []
    low = [c.strip().lower() for c in cols]
    ti, li, start = 0, 1, 0
    if "taxon id" in low or "taxid" in low:
        ti = low.index("taxon id") if "taxon id" in low else low.index("taxid")
        li = low.index("lineage") if "lineage" in low else 1
        start = 1
    for n, line in enumerate(lines[start:], start + 1):
        parts = line.split("\t")
        if not line.strip() or line.startswith("#"):
            continue
        if len(parts) <= max(ti, li) or not parts[ti].strip().isdigit():
            raise IndexBuildError(f"{path}, line {n}: expected 'taxid<TAB>lineage', got {line[:80]!r}")
        out[int(parts[ti])] = parts[li].strip()
    return out


def add_label(it: "Item", lab: Labeled) -> bool:
    """Attach a label record to a protein unless it already has one from the same source
    (homo-oligomer chains, the same sequence in two files): one record per (protein, source),
    so residues and domains are counted once (two records of one source doubled the true
    positives while active residues counted once: precision above 1)."""
    if any(old.source == lab.source for old in it.labels):
        return False
    it.labels.append(lab)
    return True


def labels_by_md5(labelled: list[Labeled]) -> tuple[dict[str, list[Labeled]], dict[str, int]]:
    """Label records merged per sequence (its md5), one per (protein, source) as ``add_label`` keeps
    them; returns the merged lists and, per sequence, how many duplicate records were dropped. The
    build and ``label_spans.add_label_spans`` both match labels to proteins through this."""
    items: dict[str, Item] = {}
    dropped: dict[str, int] = {}
    for lab in labelled:
        h = seq_md5(lab.sequence)
        if h not in items:
            items[h] = Item("", lab.sequence)
        dropped[h] = dropped.get(h, 0) + (not add_label(items[h], lab))
    return {h: it.labels for h, it in items.items()}, dropped
