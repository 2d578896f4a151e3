"""Structures for a feature's examples: which structure chain a protein has (its own indexed chain,
else the shared data's structure links, by UniProt accession or identical sequence), and a chain
coloured by the feature's activation on the indexed sequence, mapped through a sequence alignment
so a chain with unresolved residues still colours (InterProt shows its top examples this way)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esmsae.app.links import uniprot_accession
from esmsae.app.render import align_positions, parse_structure, structure_html
from esmsae.app.runs import read_text, structure_chains, structure_chains_file, structure_file


@functools.lru_cache(maxsize=4)
def _lookups(path: str) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
    """UniProt accession -> chains and exact sequence (atoms or SEQRES) -> chains, from the links table."""
    by_acc: dict[str, list[tuple[str, str]]] = {}
    by_seq: dict[str, list[tuple[str, str]]] = {}
    for key, row in structure_chains(path).items():
        if row["uniprot"]:
            by_acc.setdefault(row["uniprot"], []).append(key)
        for s in {row["atom_seq"], row["seqres"]} - {""}:
            by_seq.setdefault(s, []).append(key)
    return by_acc, by_seq


def structures_for(pid: str, sequence: str, structure: str = "", chain: str = "") -> list[tuple[str, str]]:
    """Structure chains (file relative to the structures folder, chain) for a protein: its own chain
    when it was indexed from a structure, else chains the shared links tie to its UniProt accession
    or to its exact sequence (atom records or SEQRES)."""
    if structure:
        return [(structure, chain)]
    by_acc, by_seq = _lookups(structure_chains_file())
    out = list(by_acc.get(uniprot_accession(pid), [])) + list(by_seq.get(sequence, []))
    return list(dict.fromkeys(out))


HALF = 0.5  # a chain "shows" the feature where the feature reaches this share of its max on it


def structure_candidates(index, f: int, vmax: float = 0.0) -> list[dict]:
    """Feature ``f``'s top examples that have a structure (their own chain, or one the shared links tie
    to them), then the proteins with a structure that activate it most, those where it reaches half its
    max first; one entry per chain: kind, rank (1-based, top examples only), rel, chain, the example's
    row and ``share`` (its max over the feature's max)."""
    out, seen = [], set()
    rows = [("top example", r) for _, r in index.examples(f, "top", 20).iterrows()] + [
        ("protein with a structure", r) for _, r in index.structure_examples(f, 8).iterrows()]
    for kind, r in rows:
        for rel, chain in structures_for(r["id"], r["sequence"], r.get("structure") or "", r.get("chain") or "")[:1]:
            if (rel, chain) not in seen:
                seen.add((rel, chain))
                share = float(r["max_act"]) / vmax if vmax > 0 else float("nan")
                out.append({"kind": kind, "rank": int(r["rank"]) + 1 if kind == "top example" else None,
                            "rel": rel, "chain": chain, "row": r, "share": share})
    # top examples first (they are the feature), then chains where it reaches half its max, then the rest
    return sorted(out, key=lambda c: (c["kind"] != "top example", not c["share"] >= HALF, -(c["share"] or 0)))


def unbundled_pdb_examples(index, f: int) -> list[tuple[int, str, str]]:
    """Top examples that are PDB chains (by their id) with no structure file here: (rank, id, RCSB link)."""
    from esmsae.app.links import pdb_id, protein_links

    out = []
    for _, r in index.examples(f, "top", 20).iterrows():
        if pdb_id(r["id"], r.get("structure") or "") and not structures_for(
                r["id"], r["sequence"], r.get("structure") or "", r.get("chain") or ""):
            out.append((int(r["rank"]) + 1, r["id"], protein_links(r["id"]).get("RCSB PDB", "")))
    return out


def structure_summary(index, f: int, vmax: float, cands: list[dict]) -> str:
    """One paragraph for the Structure tab: how many top examples have a structure here, whether any chain
    shows the feature (reaches half its max) and, when none does, plainly why."""
    n_top = sum(c["kind"] == "top example" for c in cands)
    shares = [c["share"] for c in cands if c["share"] == c["share"]]
    best = max(shares, default=0.0)
    away = unbundled_pdb_examples(index, f)
    parts = [f"{n_top} of its top examples {'has' if n_top == 1 else 'have'} a structure in this bundle."]
    if best >= HALF:
        k = sum(s >= HALF for s in shares)
        parts.append(f"{k} of the chains here reach{'es' if k == 1 else ''} at least half of the feature's max"
                     f" (the best, {best:.0%}, is shown first).")
    elif cands:
        parts.append(f"No protein with a structure here reaches half of the feature's max: the strongest reaches"
                     f" {best:.0%}, so these chains show where it fires weakly, not what it is about.")
    if away:
        parts.append("Top examples that are PDB entries not held in this bundle (open them at RCSB): "
                     + ", ".join(f"#{rank} [{pid}]({url})" if url else f"#{rank} {pid}" for rank, pid, url in away)
                     + ".")
    return " ".join(parts)


def feature_structures(index, f: int, vmax: float, n: int = 4, height: int = 320) -> tuple[list[dict], list[ChainView]]:
    """The candidates (``structure_candidates``) and the first ``n`` of them coloured (``colour_chain``):
    what the feature page's Structure tab shows, computed in one place so a page can cache it."""
    cands = structure_candidates(index, f, vmax)
    views = [colour_chain(index, c["rel"], c["chain"], c["row"]["sequence"], c["row"]["positions"],
                          c["row"]["values"], vmax, height=height) for c in cands[:n]]
    return cands, views


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
