"""The protein set of an index: FASTA proteins, labelled proteins and grouping files,
de-duplicated by sequence, with labels, taxonomy and group memberships attached."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..concepts import Labeled, kingdom_of
from ..config import IndexConfig
from ..fasta import Protein, clean_sequence, parse_header, read_proteins


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


def md5(seq: str) -> str:
    return hashlib.md5(seq.encode()).hexdigest()


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


def grouping_tsv(text: str, name: str, fmt: str = "auto") -> list[tuple[str, str]]:
    """(protein id, group) pairs of a ``protein_id<TAB>group`` file (an ``id<TAB>group`` header is
    allowed), or of an MMseqs2 cluster TSV ``representative<TAB>member`` (``fmt`` 'mmseqs', or
    detected with 'auto'): each member goes to its representative's cluster."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise IndexBuildError(f"{name}, line {n}: expected 'protein_id<TAB>group', got {line[:80]!r}")
        if n == 1 and parts[0].lower() in ("id", "protein", "protein_id"):
            continue
        pairs.append((parts[0].strip(), parts[1].strip()))
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
            mapping["md5:" + md5(seq)] = group
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


def cap_groups(items: list["Item"], cap: int) -> dict[str, int]:
    """Keep at most ``cap`` proteins per group of every grouping, chosen by sequence hash (the
    same proteins whatever the order); the others leave that grouping. Returns proteins dropped."""
    dropped: dict[str, int] = {}
    by: dict[tuple[str, str], list[Item]] = {}
    for it in items:
        for g, grp in it.groups.items():
            by.setdefault((g, grp), []).append(it)
    for (g, grp), members in by.items():
        if len(members) > cap:
            for it in sorted(members, key=lambda x: md5(x.sequence))[cap:]:
                del it.groups[g]
                dropped[g] = dropped.get(g, 0) + 1
    return dropped


INHERITED = ("organism", "taxid", "kingdom", "lineage", "structure", "chain", "description")


def add_label(it: "Item", lab: Labeled) -> bool:
    """Attach a label record to a protein unless it already has one from the same source
    (homo-oligomer chains, the same sequence in two files): one record per (protein, source),
    so residues and domains are counted once (two records of one source doubled the true
    positives while active residues counted once: precision above 1)."""
    if any(old.source == lab.source for old in it.labels):
        return False
    it.labels.append(lab)
    return True


def fill_missing(dst, src) -> None:
    """Copy metadata that ``dst`` lacks from ``src`` (another record of the same sequence)."""
    for k in INHERITED:
        if not getattr(dst, k, None) and getattr(src, k, None):
            setattr(dst, k, getattr(src, k))


class ProteinSet:
    """Proteins keyed by sequence (md5): a repeated sequence is one protein whose metadata, labels
    and sources come from all its records; ids stay unique."""

    def __init__(self):
        self.items: dict[str, Item] = {}
        self.ids: dict[str, str] = {}
        self.duplicates = 0
        self.duplicate_labels = 0  # label records dropped: the protein had one from that source

    def add(self, item: Item) -> Item:
        h = md5(item.sequence)
        if h in self.items:
            self.duplicates += 1
            old = self.items[h]
            fill_missing(old, item)
            for lab in item.labels:
                self.duplicate_labels += not add_label(old, lab)
            if item.source and item.source not in old.source.split(","):
                old.source += "," + item.source
            return old
        if item.id in self.ids:
            item.id = f"{item.id}#{len(self.items)}"
        self.ids[item.id] = h
        self.items[h] = item
        return item

    def lookup(self, key: str) -> str | None:
        """The md5 of a grouping file's protein key: 'md5:<hash>', an id as in the FASTA header's
        first word, or as parsed (sp|P12345|NAME -> P12345)."""
        h = key[4:] if key.startswith("md5:") else self.ids.get(key) or self.ids.get(parse_header(key)[0])
        return h if h in self.items else None


def _attach_labels(ps: ProteinSet, labelled: list[Labeled], add_all: bool) -> None:
    for lab in labelled:
        h = md5(lab.sequence)
        if h in ps.items:
            ps.duplicate_labels += not add_label(ps.items[h], lab)
            fill_missing(ps.items[h], lab)
        elif add_all:
            ps.add(Item(lab.id, lab.sequence, "", lab.organism, lab.taxid, kingdom=lab.kingdom, lineage=lab.lineage, source=lab.source,
                        structure=lab.structure, chain=lab.chain, labels=[lab]))


def _attach_grouping(ps: ProteinSet, path: str) -> int:
    """Read one grouping file into the set; returns how many of its ids are not in the set."""
    name, mapping, extra = read_grouping(path)
    for p in extra:
        if md5(p.sequence) not in ps.items:
            ps.add(Item(p.id, p.sequence, p.description, p.organism, p.taxid, kingdom=kingdom_of(p.taxid), source=name))
    unknown = 0
    for key, group in mapping.items():
        h = ps.lookup(key)
        if h is None:
            unknown += 1
            continue
        ps.items[h].groups[name] = group
    if unknown == len(mapping) and mapping:
        raise IndexBuildError(f"{path}: none of its {len(mapping)} protein ids is in the protein set (first: {next(iter(mapping))!r})")
    return unknown


def _taxonomy_groups(it: Item, lineage_rank: int) -> None:
    """The built-in groupings of a protein: kingdom, organism, lineage at the chosen rank."""
    it.kingdom = it.kingdom or kingdom_of(it.taxid, it.lineage)
    if it.kingdom:
        it.groups.setdefault("kingdom", it.kingdom)
    if it.organism:
        it.groups.setdefault("organism", it.organism)
    if it.lineage:
        ranks = [r.strip() for r in it.lineage.split(";")]
        if len(ranks) > lineage_rank:
            it.groups.setdefault("lineage", ranks[lineage_rank])


def collect(cfg: IndexConfig, labelled: list[Labeled] | None = None, skipped: list | None = None) -> tuple[list[Item], dict[str, Any]]:
    """Protein set of an index: FASTA proteins (+ labelled proteins, + grouping-file proteins),
    de-duplicated by sequence, with labels, taxonomy and group memberships attached."""
    ps = ProteinSet()
    sk: list = [] if skipped is None else skipped
    for f in cfg.fasta:
        for p in read_proteins(f, on_invalid=cfg.on_invalid, skipped=sk):
            ps.add(Item(p.id, p.sequence, p.description, p.organism, p.taxid, kingdom=kingdom_of(p.taxid), source=Path(f).name.split(".")[0]))
    _attach_labels(ps, labelled or [], cfg.add_labelled)
    report: dict[str, Any] = {"skipped_invalid": len(sk), "unknown_group_ids": {}}
    for gf in cfg.groups:
        report["unknown_group_ids"][Path(gf).stem] = _attach_grouping(ps, gf)
    report["duplicate_sequences"] = ps.duplicates
    report["duplicate_label_records"] = ps.duplicate_labels
    out = list(ps.items.values())
    lineages = read_taxonomy(cfg.taxonomy) if cfg.taxonomy else {}
    for it in out:
        if not it.lineage and it.taxid in lineages:
            it.lineage = lineages[it.taxid]
        _taxonomy_groups(it, cfg.lineage_rank)
    out = out[: cfg.max_proteins] if cfg.max_proteins else out
    if cfg.group_cap:
        report["capped_group_members"] = cap_groups(out, cfg.group_cap)
    return out, report


def write_proteins(con, items: list[Item], rows: list[tuple[int, int]]) -> None:
    if not rows:
        return
    recs = []
    for i, n_act in rows:
        it = items[i]
        recs.append((i, it.id, it.description, len(it.sequence), it.sequence, it.organism, it.taxid if it.taxid is not None else -1,
                     it.kingdom, it.lineage, it.source, ",".join(sorted({lab.source for lab in it.labels})), it.structure, it.chain, n_act))
    df = pd.DataFrame(recs, columns=["pidx", "id", "description", "length", "sequence", "organism", "taxid", "kingdom", "lineage",
                                     "source", "label_sources", "structure", "chain", "n_active_features"])
    con.register("_new_proteins", df)
    con.execute("INSERT INTO proteins SELECT * FROM _new_proteins")
    con.unregister("_new_proteins")
