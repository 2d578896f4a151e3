"""Protein families by UniProt protein name, split by organism: a protein-level concept set for
:mod:`esmsae.analysis.protein_concepts`.

The 15 UniProt proteomes of the shared data name each protein (``>sp|ACC|ENTRY Name OS=... OX=...``). A family
here is a name pattern (``FAMILIES``): protein kinases, aminoacyl-tRNA ligases, ribosomal proteins, ABC
transporter ATP-binding proteins, and the families of one shared domain that reach 20 members on every side
(counted on the names before any feature was looked at): two-component histidine kinases and response
regulators, DEAD-box RNA helicases, protein phosphatases, GTPases and proteasome core subunits (thioredoxins,
18 in the test organisms, and WD-repeat proteins fell short). Names are UniProt's (curated, or assigned by its
automatic rules), so a few members are missed or misnamed; every predictor is scored against the same labels.

Sides are whole organisms (``ORGANISM_SIDE``), with close relatives kept on one side (E. coli and the two
Salmonella; the three Plasmodium): *train* fits the learned baselines, *valid* makes every choice, *test*
reports, so a match is a feature chosen on some organisms that finds the family in others. Each side holds
every member of a family and a seeded sample of the other proteins (the F1 therefore reads at that mix, for
the feature and every baseline alike).

A classic motif is a baseline where the family has one (``MOTIFS``: PROSITE-style patterns, a protein is
called a member when the pattern occurs anywhere in it).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FAMILIES = {
    # first: a histidine kinase named "sensor protein kinase" is no Hanks-type protein kinase
    "two-component histidine kinase": r"histidine kinase|sensor.*kinase",
    "protein kinase": r"\bprotein kinase\b|serine/threonine-protein kinase|tyrosine-protein kinase",
    "aminoacyl-tRNA ligase": r"tRNA ligase|tRNA synthetase",
    "ribosomal protein": r"\bribosomal protein\b",
    "ABC transporter ATP-binding protein": r"ABC transporter.*ATP-binding|ATP-binding.*ABC",
    "two-component response regulator": r"response regulator",
    "DEAD-box RNA helicase": r"RNA helicase",
    # activators, inhibitors, methylesterases and regulatory subunits bind phosphatases but are none
    "protein phosphatase": r"^(?!.*(activator|inhibitor|methylesterase|regulatory|interacting))"
                           r".*(protein phosphatase|protein-phosphatase|phosphatase 2C)",
    # not GTPase-activating proteins (GAPs)
    "GTPase": r"GTP-binding|GTPase(?!-activating| activat)",
    "proteasome core subunit": r"proteasome subunit (alpha|beta)|proteasome (alpha|beta)"
}
MOTIFS = {
    # PROSITE PS00108 (Ser/Thr kinase active site) or PS00109 (Tyr kinase active site)
    "protein kinase": r"[LIVMFYC].[HY].D[LIVMFY]K..N[LIVMFYCT]{3}|[LIVMFYC].[HY].D[LIVMFY][RSTAC][AP]RN[LIVMFYC]",
    # class I synthetases' HIGH and KMSKS signatures (class II has no short universal motif)
    "aminoacyl-tRNA ligase": r"H[IL]GH|KMSKS",
    # PROSITE PS00211 core: the ABC signature LSGGQ
    "ABC transporter ATP-binding protein": r"LSGGQ",
    # PROSITE PS00039, the DEAD box
    "DEAD-box RNA helicase": r"[LIVMF]{2}DEAD[RKEN].[LIVMFYGSTN]",
    # any of PPP (PS00125), tyrosine and dual-specificity (PS00383) and PP2C (PS01032) signatures
    "protein phosphatase": r"[LIVMN][KR]GN[HE]E|[LIVMF]HC.{2}G.{3}[STC][STAGP].[LIVMFY]"
                           r"|[LIVMFY][LIVMFYA][GSAC][LIVM][FYLV]DGH[GAV]",
    # PROSITE PS00017, the P-loop (Walker A) of the G domain
    "GTPase": r"[AG].{4}GK[ST]",
    # the histidine kinases, response regulators and proteasome subunits have PROSITE profiles, no short pattern
}
OTHER = "other"
# proteome file (UniProt proteome id) -> side; relatives together, kingdoms spread over the sides
ORGANISM_SIDE = {
    "UP000000625": "train",  # E. coli
    "UP000001014": "train",  # S. typhimurium
    "UP000008962": "train",  # S. typhimurium
    "UP000001450": "train",  # P. falciparum
    "UP000031513": "train",  # P. knowlesi
    "UP000074855": "train",  # P. berghei
    "UP000001203": "train",  # Cyanothece
    "UP000002311": "valid",  # S. cerevisiae
    "UP000001197": "valid",  # P. anserina
    "UP000001425": "valid",  # Synechocystis
    "UP000002483": "valid",  # Anabaena PCC 7120
    "UP000008066": "test",  # C. thermophilum
    "UP000008524": "test",  # T. brucei
    "UP000002717": "test",  # S. elongatus
    "UP000221734": "test",  # K. stuttgartiensis
}


def family_of(name: str) -> str:
    """The first family whose pattern the UniProt protein name matches, else ``OTHER``."""
    return next((f for f, p in FAMILIES.items() if re.search(p, name, re.I)), OTHER)


def name_family_sides(shared: Path, n_train: int | None = None, n_valid: int | None = None,
                      n_test: int | None = None, max_len: int = 1000, seed: int = 0
                      ) -> dict[str, list[tuple[str, str]]]:
    """(sequence, family or 'other') per side: every family member of the side's organisms (at most n_side a
    family) and a seeded sample of n_side other proteins (defaults: 4,000 train, 2,000 valid and test)."""
    from esmsae.core.fasta import STANDARD, parse_header, read_fasta

    n_other = {"train": n_train or 4000, "valid": n_valid or 2000, "test": n_test or 2000}
    members: dict[str, list] = {s: [] for s in n_other}
    others: dict[str, list] = {s: [] for s in n_other}
    seen: set[str] = set()
    for f in sorted((Path(shared) / "uniprot" / "proteomes15").glob("*.fasta.gz")):
        side = ORGANISM_SIDE.get(f.name.split("-")[0])
        if side is None:
            continue
        for h, s in read_fasta(f):
            if len(s) > max_len or s in seen or not set(s) <= set(STANDARD):
                continue
            seen.add(s)
            fam = family_of(parse_header(h)[1].split(" OS=")[0])  # UniProt's name: the description before OS=
            (others if fam == OTHER else members)[side].append((s, fam))
    rng = np.random.default_rng(seed)
    out = {}
    for side, n in n_other.items():
        # every member, up to n a family (the defaults keep all; a smoke run stays small), in file order
        cap = np.random.default_rng([seed, 1])  # its own draws: the sample below is the same with or without a cap
        keep = set()
        for fam in FAMILIES:
            idx = [i for i, r in enumerate(members[side]) if r[1] == fam]
            keep.update(idx if len(idx) <= n else [idx[j] for j in cap.permutation(len(idx))[:n]])
        rows = [r for i, r in enumerate(members[side]) if i in keep]
        rows += [others[side][i] for i in rng.permutation(len(others[side]))[:n]]
        out[side] = [rows[i] for i in rng.permutation(len(rows))]
    return out


def motif_predictions(seqs: list[str], family: str) -> np.ndarray | None:
    """[P] bool: the family's motif occurs in the protein (None: no classic motif)."""
    pat = MOTIFS.get(family)
    return None if pat is None else np.array([re.search(pat, s) is not None for s in seqs])
