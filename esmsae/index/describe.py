"""Grounded one-line feature descriptions, built only from the feature's own evidence in the
index (never invented, reproducible offline), and the text they are searched by.

Each phrase comes from one measured fact, kept next to it in ``evidence`` (JSON), so the feature
page can show where every word comes from:

* ``concept``: its best concept *only if it matches* (test F1 beats fire-everywhere and the
  best single-residue rule by the margin), with test F1 and the single-residue baseline;
* ``residue``: residue-type purity when one amino acid takes >= 50% of its firing (a residue
  detector at >= 90%);
* ``position``: N- or C-terminal when >= 3x the 10% of firing expected in the first / last
  tenth of the protein;
* ``group``: its top group (CMH q < 0.05) with q;
* ``proteins``: the most common names among its top examples.
No description is "dead" or "no clear evidence" when nothing qualifies.

DuckDB's full-text-search extension cannot be installed offline (it is downloaded on first
use), so search filters in pandas: every query term must occur (case-insensitive, taken literally:
``%`` and ``_`` are characters) in the feature's search text (description, concept, top protein ids
and names) or user label; the hits are ranked by Okapi BM25 (the ``rank_bm25`` library) over the
same text, with features that match a concept first and residue detectors last.
"""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pandas as pd

from esmsae.index.concept_f1 import DETECTOR_PURITY
from esmsae.index.labels import is_catch_all

PURITY_PHRASE = 0.5  # name the residue type when it takes at least this share of the firing
END_FOLD = 3.0  # "N-terminal" when the first tenth holds >= 3x the 10% expected by chance


def _name(desc: str) -> str:
    """A protein name without UniProt's trailing OS=/OX=/GN= fields; "" for a name that is a genome
    locus rather than a protein (UniProt gives unnamed Podospora proteins "Podospora anserina S mat+
    genomic DNA chromosome 5, supercontig 10") or says nothing (hypothetical / uncharacterized)."""
    name = re.split(r"\s(?:OS|OX|GN|PE|SV)=", desc or "")[0].strip()
    return "" if CONTIG.search(name) or UNINFORMATIVE.fullmatch(name) else name


CONTIG = re.compile(
    r"genomic DNA|supercontig|\bcontig\b|scaffold|whole genome shotgun|complete genome|chromosome \d", re.I
)
UNINFORMATIVE = re.compile(
    r"(conserved )?(hypothetical|uncharacteri[sz]ed|predicted|putative uncharacterized)( protein)?( \S+)?", re.I
)


def describe(
    features: pd.DataFrame, top_names: dict[int, list[str]], top_group_q: np.ndarray | None = None
) -> pd.DataFrame:
    """-> DataFrame(feature, description, evidence JSON) from the features table's columns
    (dead, matches_concept, best_concept, best_f1, best_aa_rule_f1, best_trivial_f1, aa_top,
    aa_purity, n_residues, top_group) plus ``ends`` ([F, 2] first / last tenth firing counts)."""
    rows = []
    ends = (
        np.stack([features["n_nterm"].to_numpy(), features["n_cterm"].to_numpy()], 1) if "n_nterm" in features else None
    )
    for i, r in enumerate(features.itertuples(index=False)):
        f = int(r.feature)
        if r.dead:
            rows.append(
                (
                    f,
                    "dead: never fires on the indexed proteins",
                    json.dumps([{"phrase": "dead", "from": "n_residues = 0"}]),
                )
            )
            continue
        parts, ev = [], []
        if r.matches_concept and r.best_concept and not is_catch_all(r.best_concept):  # "any domain" is no evidence
            local = getattr(r, "best_local_rule_f1", float("nan"))
            p = (
                f"{r.best_concept} (test F1 {r.best_f1:.2f}; best local-sequence rule {local:.2f}, single-residue rule"
                f" {r.best_aa_rule_f1:.2f})"
                if np.isfinite(local)
                else f"{r.best_concept} (test F1 {r.best_f1:.2f}; single-residue rule {r.best_aa_rule_f1:.2f})"
            )
            parts.append(p)
            ev.append(
                {
                    "phrase": p,
                    "from": "concept_f1: chosen on valid proteins; beats every baseline on valid and on test proteins",
                }
            )
        if r.aa_top and r.aa_purity >= PURITY_PHRASE:
            kind = "residue detector" if r.aa_purity >= DETECTOR_PURITY else "mostly"
            p = f"{kind}: {r.aa_purity:.0%} of its firing on {r.aa_top}"
            parts.append(p)
            ev.append({"phrase": p, "from": "features.aa_purity over all indexed residues"})
        if ends is not None and r.n_residues > 0:
            for side, k in (("N-terminal", 0), ("C-terminal", 1)):
                share = ends[i, k] / r.n_residues
                if share >= END_FOLD * 0.1:
                    p = f"{side} ({share:.0%} of firing in the {'first' if k == 0 else 'last'} tenth)"
                    parts.append(p)
                    ev.append({"phrase": p, "from": "firing residues by relative position; 10% expected"})
        if r.top_group:
            q = float(top_group_q[i]) if top_group_q is not None else float("nan")
            p = f"enriched in {r.top_group}" + (f" (q {q:.1e})" if np.isfinite(q) else "")
            parts.append(p)
            ev.append({"phrase": p, "from": "group_usage: length-stratified CMH test, BH q < 0.05"})
        names = [n for n in (_name(x) for x in top_names.get(f, [])) if n]
        if names:
            common = [n for n, _ in Counter(names).most_common(2)]
            p = "top proteins: " + "; ".join(common)
            parts.append(p)
            ev.append({"phrase": p, "from": "names of its top examples"})
        rows.append((f, ", ".join(parts) if parts else "no clear evidence", json.dumps(ev)))
    return pd.DataFrame(rows, columns=["feature", "description", "evidence"])


def search_text(desc: pd.DataFrame, features: pd.DataFrame, top_ids: dict[int, list[str]]) -> pd.Series:
    """What a search looks in: description, best concept and its top proteins' ids and names."""
    concept = features.set_index("feature")["best_concept"]
    return desc.apply(
        lambda r: " | ".join(
            [r.description, str(concept.get(r.feature, "")), " ".join(top_ids.get(int(r.feature), []))]
        ),
        axis=1,
    )


# A search word also finds the names the label sets use for it (TMbed's concepts say "TM helix", not
# "transmembrane"): a term hits when it or one of these occurs, and BM25 scores them too.
SYNONYMS = {
    "transmembrane": ("tm helix", "tm strand", "tm-helix", "membrane"),
    "membrane": ("tm helix", "tm strand"),
    "helical": ("helix",),
    "disorder": ("disordered", "chezod"),
    "disordered": ("disorder", "chezod"),
    "beta": ("strand", "sheet"),
    "sheet": ("strand",),
}


def term_variants(term: str) -> tuple[str, ...]:
    """A search term and the label sets' names for it (:data:`SYNONYMS`)."""
    return (term, *SYNONYMS.get(term, ()))


def tokens(text: str) -> list[str]:
    """Words for BM25 ranking: lower-case runs of letters and digits (UniProt ids stay whole)."""
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def search_terms(query: str) -> list[str]:
    return [t for t in re.split(r"\s+", query.strip().lower()) if t]
