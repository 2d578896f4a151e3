"""Per-residue biological concepts from the label sets in ``../shared/data`` (kingdoms: ``taxonomy``).

Every loader yields :class:`Labeled` records: a sequence, the label *source* it comes
from (a source defines which proteins are annotated, so precision is counted only on
residues that could carry the concept), per concept the annotated spans ("domains") as
0-based half-open ``(start, end)`` pairs, and the spans where the source has *no* label
(unresolved in the crystal, NMR score missing, RSA undefined): those residues are neither
positives nor negatives. Concept names are ``"<source>: <name>"`` so the same word from two
sources (helix from DSSP vs UniProt) stays apart.

Two kinds of concept (:func:`concept_kind`): *domain* concepts (a UniProt domain, a TM helix)
are recalled domain by domain, InterPLM's rule; *residue* concepts (secondary structure, RSA,
disorder, conservation, binding residues) are properties of single residues and are recalled
residue by residue, so one firing residue does not recall a whole run. Catch-all UniProt
types (any domain, any binding site) are kept, with named sub-concepts where the description
names one ("UniProt: binding site (ATP)", "UniProt: zinc finger (C4-type)"); InterPLM excludes
the catch-alls from its reported counts and so does esmsae (:func:`is_catch_all`).
"""
from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from esmsae.core.fasta import ALPHABET
from esmsae.index.taxonomy import kingdom_of_lineage


@dataclass
class Labeled:
    id: str
    sequence: str
    source: str
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # concept -> [(start, end)]
    organism: str = ""
    taxid: int | None = None
    kingdom: str = ""
    lineage: str = ""
    structure: str = ""  # structure file (relative to the structures root)
    chain: str = ""
    unknown: list[tuple[int, int]] = field(default_factory=list)  # residues this source has no label for
    partition: int | None = None  # homology partition shipped with the label set (TMbed cv_00..cv_04)
    split: str = ""  # 'train', 'valid' or 'test' (``esmsae.index.splits``); '' = decided by a hash

    def known_mask(self) -> np.ndarray:
        m = np.ones(len(self.sequence), bool)
        for a, b in self.unknown:
            m[a:b] = False
        return m


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous True segments of a boolean array as [(start, end)) pairs."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(d[::2].tolist(), d[1::2].tolist()))  # Python ints in one call each (not int() per element)


def _from_codes(codes: str, mapping: dict[str, str], source: str) -> dict[str, list[tuple[int, int]]]:
    arr = np.frombuffer(codes.encode(), dtype=np.uint8)
    out = {}
    for chars, name in mapping.items():
        is_code = np.zeros(256, bool)  # a byte lookup: np.isin sorts both sides on every call (~5x slower here)
        is_code[np.frombuffer(chars.encode(), np.uint8)] = True
        spans = runs(is_code[arr])
        if spans:
            out[f"{source}: {name}"] = spans
    return out


def _clean(seq: str) -> str | None:
    seq = seq.strip().upper()
    return seq if seq and set(seq) <= ALPHABET else None


def _tsv_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt") as fh:
        yield from csv.DictReader(fh, delimiter="\t")


# ---------------------------------------------------------------- UniProt feature tables
# concept -> UniProt feature types naming it (flat-file code, and the XML name used in mgenitalium)
_UNIPROT_CONCEPTS = {
    "binding site": ("BINDING",),
    "active site": ("ACT_SITE",),
    "metal-binding site": ("METAL", "metal ion-binding site"),
    "domain": ("DOMAIN",),
    "motif": ("MOTIF", "short sequence motif"),
    "zinc finger": ("ZN_FING", "zinc finger region"),
    "transmembrane": ("TRANSMEM", "transmembrane region"),
    "signal peptide": ("SIGNAL",),
    "disulfide bond": ("DISULFID",),
    "helix": ("HELIX",),
    "strand": ("STRAND",),
    "turn": ("TURN",),
    "coiled coil": ("COILED", "coiled-coil region"),
    "compositional bias": ("COMPBIAS", "compositionally biased region"),
    "repeat": ("REPEAT",),
    "lipidation": ("LIPID", "lipid moiety-binding region"),
    "nucleotide-binding region": ("NP_BIND", "nucleotide phosphate-binding region"),
    "modified residue": ("MOD_RES",),
    "glycosylation": ("CARBOHYD",),
    "topological domain": ("TOPO_DOM",),
    "DNA-binding region": ("DNA_BIND",),
    "cross-link": ("CROSSLNK",),
    "site": ("SITE",),
}
# feature type -> concept; the concept's own name is also accepted as a type
UNIPROT_TYPES = {t: c for c, types in _UNIPROT_CONCEPTS.items() for t in (c, *types)}
# types whose description names the thing (ligand, domain family, finger type): a named
# sub-concept "UniProt: <type> (<name>)" is added next to the catch-all
NAMED_TYPES = {"binding site", "metal-binding site", "nucleotide-binding region", "domain", "zinc finger", "motif",
               "DNA-binding region", "repeat", "active site", "compositional bias", "topological domain"}
# properties of single residues (recalled residue by residue), by UniProt type and by source
RESIDUE_TYPES = {
    "binding site",
    "active site",
    "metal-binding site",
    "disulfide bond",
    "modified residue",
    "glycosylation",
    "cross-link",
    "site",
    "helix",
    "strand",
    "turn",
}
# secondary structure from UniProt's flat file: a source of its own (see load_uniprot)
STRUCTURE_TYPES = {"helix", "strand", "turn"}
RESIDUE_SOURCES = {"UniProt structure", "FLIP SS", "FLIP bind", "FLIP conservation", "CheZOD", "Structure"}
# catch-all types: "any domain", "any binding site"; their named sub-concepts are the real concepts
CATCH_ALL_TYPES = NAMED_TYPES | {"site", "modified residue", "cross-link"}


def _base_type(name: str) -> tuple[str, str, bool]:
    """(source, type, named) of a concept name "<source>: <type>[ (<name>)]"."""
    source, _, rest = name.partition(": ")
    named = rest.endswith(")") and " (" in rest and source == "UniProt"
    return source, rest.rsplit(" (", 1)[0] if named else rest, named


def concept_kind(name: str) -> str:
    """'residue' (recall over residues) or 'domain' (recall over annotated spans)."""
    source, typ, _ = _base_type(name)
    if source in RESIDUE_SOURCES or (source == "UniProt" and typ in RESIDUE_TYPES):
        return "residue"
    return "domain"


def is_catch_all(name: str) -> bool:
    """A UniProt type without its name (any domain, any binding site): kept, never a headline."""
    source, typ, named = _base_type(name)
    return source == "UniProt" and typ in CATCH_ALL_TYPES and not named


def feature_name(description: str) -> str:
    """The named part of a UniProt feature description: "Zinc; catalytic" -> "Zinc", "ABC
    transporter 2" -> "ABC transporter", "" -> ""."""
    d = description.split(";")[0].strip()
    d = re.sub(r"\s+\d+$", "", d)  # numbered copies: "ABC transporter 1", "ABC transporter 2"
    return d if d and not d.isdigit() and "-" not in d[:2] else ""


def load_uniprot(proteins_tsv: Path, features_tsv: Path) -> list[Labeled]:
    """UniProt feature spans (source "UniProt"); HELIX / STRAND / TURN go to source "UniProt structure",
    which labels only the proteins carrying any of them: 370 of 399 shared entries carry none, and
    scoring their helices as negatives made "UniProt: strand" a match by artefact."""
    prots: dict[str, Labeled] = {}
    structure: dict[str, Labeled] = {}
    with open(proteins_tsv) as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            seq = _clean(r["sequence"])
            if seq:
                lineage = r.get("lineage", "") or ""
                prots[r["accession"]] = Labeled(r["accession"], seq, "UniProt", organism=r.get("organism", ""),
                                                taxid=int(r["taxid"]) if r.get("taxid", "").isdigit() else None,
                                                kingdom=kingdom_of_lineage(lineage), lineage=lineage)
    with open(features_tsv) as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            p = prots.get(r["accession"])
            name = UNIPROT_TYPES.get(r["feature_type"])
            if p is None or name is None or not r["start"].isdigit() or not r["end"].isdigit():
                continue
            s, e = int(r["start"]) - 1, int(r["end"])
            if not 0 <= s < e <= len(p.sequence):
                continue
            sub = feature_name(r.get("description") or "") if name in NAMED_TYPES else ""
            if name in STRUCTURE_TYPES:  # its own source: only proteins with any structure annotation label it
                p = structure.setdefault(r["accession"], Labeled(p.id, p.sequence, "UniProt structure",
                                                                organism=p.organism, taxid=p.taxid,
                                                                kingdom=p.kingdom, lineage=p.lineage))
            src = p.source
            for cname in (f"{src}: {name}", f"{src}: {name} ({sub})") if sub else (f"{src}: {name}",):
                spans = p.spans.setdefault(cname, [])
                if name == "disulfide bond":  # start/end are the two bonded cysteines, not a span
                    spans.extend([(s, s + 1), (e - 1, e)])
                else:
                    spans.append((s, e))
    return [p for p in prots.values() if p.spans] + list(structure.values())


# ---------------------------------------------------------------- TMbed
TMBED_KINGDOM = {"EUKARYA": "Eukaryota", "ARCHAEA": "Archaea", "POSITIVE": "Bacteria", "NEGATIVE": "Bacteria"}
TMBED_CODES = {"Hh": "TM helix", "Bb": "TM strand", "S": "signal peptide", "1": "inside", "2": "outside"}
TOPOLOGY_CODES = ("1", "2")


def load_tmbed(folder: Path) -> list[Labeled]:
    """TM helices / strands and signal peptides (source "TMbed", every protein), and the topology
    (source "TMbed topology": inside / outside) of membrane proteins only. A globular protein is all
    "1" in TMbed by default, so scoring topology over it would mix "is a membrane protein" into
    "faces the cytoplasm". The file's partition (``cv_0k``) is kept: it decides the side."""
    out = []
    for f in sorted(folder.glob("cv_*_a.fasta")):
        digits = "".join(ch for ch in f.name.split("_")[1] if ch.isdigit())
        part = int(digits) if digits else None
        lines = [ln.strip() for ln in open(f) if ln.strip()]
        for i in range(0, len(lines) - 2, 3):
            head, seq, lab = lines[i][1:], _clean(lines[i + 1]), lines[i + 2]
            if not seq or len(lab) != len(seq):
                continue
            parts = head.split("|")
            kingdom = TMBED_KINGDOM.get(parts[1], "") if len(parts) > 1 else ""
            unknown = runs(np.frombuffer(lab.encode(), dtype="S1") == b"U")  # U: unresolved
            membrane = any(c in lab for c in "HhBb")
            codes = {k: v for k, v in TMBED_CODES.items() if k not in TOPOLOGY_CODES}
            out.append(Labeled(parts[0], seq, "TMbed", _from_codes(lab, codes, "TMbed"), kingdom=kingdom,
                               unknown=unknown, partition=part))
            if membrane:
                topo = {k: v for k, v in TMBED_CODES.items() if k in TOPOLOGY_CODES}
                spans = _from_codes(lab, topo, "TMbed topology")
                if spans:
                    out.append(Labeled(parts[0], seq, "TMbed topology", spans, kingdom=kingdom, unknown=unknown,
                                       partition=part))
    return out


# ---------------------------------------------------------------- FLIP
def load_flip(folder: Path) -> list[Labeled]:
    out = []
    ss = folder / "secondary_structure" / "secondary_structure_joined.tsv.gz"
    if ss.exists():
        for r in _tsv_gz(ss):
            seq = _clean(r["sequence"])
            if seq and len(r["ss3"]) == len(seq):
                lab = (
                    "".join(c if m == "1" else "-" for c, m in zip(r["ss3"], r["resolved_mask"]))
                    if len(r["resolved_mask"]) == len(seq)
                    else r["ss3"]
                )
                # unresolved residues ("-") have no secondary structure: unknown, not coil or negative
                out.append(
                    Labeled(
                        r["id"],
                        seq,
                        "FLIP SS",
                        _from_codes(lab, {"H": "helix", "E": "strand", "C": "coil"}, "FLIP SS"),
                        unknown=runs(np.frombuffer(lab.encode(), dtype="S1") == b"-"),
                    )
                )
    bind = folder / "bind" / "bind_joined.tsv.gz"
    if bind.exists():
        for r in _tsv_gz(bind):
            seq = _clean(r["sequence"])
            code = r["bind_SNM_code"]
            if seq and len(code) == len(seq):
                # digit = 4 * small molecule + 2 * nucleic acid + 1 * metal
                d = np.frombuffer(code.encode(), dtype=np.uint8) - ord("0")
                spans = {}
                for bit, name in ((1, "metal"), (2, "nucleic acid"), (4, "small molecule")):
                    sp = runs((d & bit) > 0)
                    if sp:
                        spans[f"FLIP bind: {name}"] = sp
                out.append(Labeled(r["id"], seq, "FLIP bind", spans))
    cons = folder / "conservation" / "conservation_joined.tsv.gz"
    if cons.exists():
        for r in _tsv_gz(cons):
            seq = _clean(r["sequence"])
            if seq and len(r["conservation_bin"]) == len(seq):
                cb = r["conservation_bin"]
                out.append(
                    Labeled(
                        r["id"],
                        seq,
                        "FLIP conservation",
                        _from_codes(
                            cb, {"123": "low (1-3)", "456": "medium (4-6)", "789": "high (7-9)"}, "FLIP conservation"
                        ),
                        unknown=runs(~np.isin(np.frombuffer(cb.encode(), dtype="S1"), list(b"123456789"))),
                    )
                )
    return out


# ---------------------------------------------------------------- CheZOD
def load_chezod(folder: Path, z_disorder: float = 8.0) -> list[Labeled]:
    out = []
    f = folder / "chezod_1159.json"
    if not f.exists():
        return out
    d = json.loads(f.read_text())
    for k, seq in d["sequence"].items():
        seq = _clean(seq)
        z = d["z-score"][k]
        z = json.loads(z) if isinstance(z, str) else z
        if not seq or len(z) != len(seq):
            continue
        z = np.asarray(z, float)
        # CheZOD Z-scores below ~8 indicate disorder; 999 marks a residue with no data
        spans = runs((z < z_disorder) & (z != 999))
        out.append(
            Labeled(
                f"chezod_{d['brmid'][k]}",
                seq,
                "CheZOD",
                {"CheZOD: disordered (Z<8)": spans} if spans else {},
                unknown=runs((z == 999) | ~np.isfinite(z)),
            )
        )
    return out


# ---------------------------------------------------------------- structures
def load_structures(structures: Path) -> list[Labeled]:
    """One protein per structure chain, its sequence read from the atom records, with
    solvent accessibility (RSA) and P-SEA secondary structure computed from the structure."""
    links = structures / "links"
    chains = {}
    with open(links / "structure_chains.tsv") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            seq = _clean(r["atom_seq"])
            if seq and len(seq) >= 20:
                key = (r["file"], r["chain"])
                chains[key] = Labeled(
                    f"{Path(r['file']).stem}_{r['chain']}",
                    seq,
                    "Structure",
                    organism=(r.get("organism") or "").title(),
                    structure=r["file"].removeprefix("structures/"),
                    chain=r["chain"],
                )
    rsa: dict[tuple, list] = {}
    for r in _tsv_gz(links / "structure_residue_labels.tsv.gz"):
        rsa.setdefault((r["structure_file"], r["chain"]), []).append((r["aa"], r["rsa"], r["sse_psea"]))
    out = []
    for key, p in chains.items():
        rows = rsa.get(key, [])
        if len(rows) != len(p.sequence):
            continue  # residue table does not line up with the atom sequence: no labels
        r = np.array([float(x[1]) if x[1] not in ("", "nan") else np.nan for x in rows])
        p.unknown = runs(np.isnan(r))  # no RSA (missing atoms): unknown for this source
        p.spans = {k: v for k, v in {
            "Structure: buried (RSA<0.2)": runs(r < 0.2), "Structure: exposed (RSA>0.5)": runs(r > 0.5),
            "Structure: helix (P-SEA)": runs(np.array([x[2] == "a" for x in rows])),
            "Structure: strand (P-SEA)": runs(np.array([x[2] == "b" for x in rows]))}.items() if v}
        out.append(p)
    return out


def load_all(shared: Path) -> list[Labeled]:
    """Every per-residue label set found under a ``shared/data``-style folder."""
    shared = Path(shared)
    out: list[Labeled] = []
    for sub in ("mgenitalium", "core"):
        d = shared / "uniprot" / sub
        pt, ft = (
            d / f"{'uniprot_core' if sub == 'core' else sub}_proteins.tsv",
            d / f"{'uniprot_core' if sub == 'core' else sub}_features.tsv",
        )
        if pt.exists() and ft.exists():
            out += load_uniprot(pt, ft)
    if (shared / "tmbed").exists():
        out += load_tmbed(shared / "tmbed")
    if (shared / "labels_flip").exists():
        out += load_flip(shared / "labels_flip")
    if (shared / "labels_chezod").exists():
        out += load_chezod(shared / "labels_chezod")
    if (shared / "structures" / "links").exists():
        out += load_structures(shared / "structures")
    return out
