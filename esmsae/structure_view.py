"""Structures for a feature's examples: which structure chain a protein has (its own indexed chain,
else the shared data's structure links, by UniProt accession or identical sequence), and a chain
coloured by the feature's activation on the indexed sequence, mapped through a sequence alignment
so a chain with unresolved residues still colours (InterProt shows its top examples this way)."""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .links import uniprot_accession
from .paths import shared_data
from .render import align_positions, parse_structure, structure_html
from .runs import read_text, structure_file


@functools.lru_cache(maxsize=4)
def _links(path: str) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
    by_acc: dict[str, list[tuple[str, str]]] = {}
    by_seq: dict[str, list[tuple[str, str]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            key = (row["file"].removeprefix("structures/"), row["chain"])
            if row.get("uniprot"):
                by_acc.setdefault(row["uniprot"], []).append(key)
            for s in {row.get("atom_seq", ""), row.get("seqres", "")} - {""}:
                by_seq.setdefault(s, []).append(key)
    return by_acc, by_seq


def structures_for(pid: str, sequence: str, structure: str = "", chain: str = "") -> list[tuple[str, str]]:
    """Structure chains (file relative to the structures folder, chain) for a protein: its own chain
    when it was indexed from a structure, else chains the shared links tie to its UniProt accession
    or to its exact sequence (atom records or SEQRES)."""
    if structure:
        return [(structure, chain)]
    p = shared_data() / "structures" / "links" / "structure_chains.tsv"
    if not p.exists():
        return []
    by_acc, by_seq = _links(str(p))
    out = list(by_acc.get(uniprot_accession(pid), [])) + list(by_seq.get(sequence, []))
    return list(dict.fromkeys(out))


@dataclass
class ChainView:
    """A structure chain coloured by a feature, or why not (``error``)."""

    rel: str
    chain: str
    html: str = ""
    note: str = ""
    error: str = ""
    coloured: int = 0  # firing residues placed on the chain


def colour_chain(index, rel: str, chain: str, sequence: str, positions, values, vmax: float,
                 height: int = 420) -> ChainView:
    """Colour ``chain`` of structure ``rel`` by activations given on ``sequence`` (sparse
    ``positions`` / ``values``), aligning the sequence to the chain's atom sequence."""
    v = ChainView(rel, chain)
    path = structure_file(index, rel)
    if path is None:
        v.error = f"Structure file {rel} is not available here."
        return v
    fmt = "cif" if ".cif" in path.name else "pdb"
    text = read_text(path)
    seq, resi = parse_structure(text, fmt).get(chain, ("", []))
    to_chain = align_positions(sequence, seq) if seq else {}
    if not seq or len(to_chain) < 0.5 * min(len(seq), len(sequence)):
        v.error = f"Chain {chain} of {Path(rel).name} does not align with the indexed sequence; colouring skipped."
        return v
    pos = np.asarray(positions, int)
    hit = np.array([p in to_chain for p in pos], bool)
    vals = np.zeros(len(seq))
    vals[[to_chain[p] for p in pos[hit]]] = np.asarray(values, float)[hit]
    v.coloured = int(hit.sum())
    if seq != sequence:
        v.note = (f"The chain's atom sequence differs from the indexed sequence ({len(seq)} vs {len(sequence)}"
                  f" residues): {len(to_chain)} residues aligned, {v.coloured} of {len(pos)} firing residues coloured.")
    v.html = structure_html(text, fmt, chain, resi, vals, vmax, height=height)
    return v
