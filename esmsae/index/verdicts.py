"""One rule for every screen: a concept is named next to a feature only where the feature *matches* it
(beats every baseline on valid and on test proteins, not a residue detector, not a catch-all concept);
everywhere else the feature reads "no match (best: X, F1 a vs <the deciding baseline> b)". The inspector,
the feature browser and titles, the feature map, search and the Overview all take their concept text
from :func:`verdict_text` through :func:`feature_verdicts`, and a feature's Concepts tab shows the
deciding baseline by name (:func:`concept_rows`).

The *deciding* baseline of a concept is the strongest one on the test proteins among fire everywhere,
the single-residue rule, every local-sequence rule family (hydropathy, amino-acid window, position,
K+R charge, PROSITE motifs) and the three learned one-hot window models (+-10, +-20, left 20; each rule
or threshold chosen on valid), named."""
from __future__ import annotations

import numpy as np
import pandas as pd

from esmsae.index.local_rules import FAMILIES
from esmsae.index.window_model import WINDOW_COLUMNS

NO_CONCEPT = "no concept"
RULE_TEXT = (
    "A feature matches a concept when its F1 beats every baseline by 0.05 on the validation proteins and again on"
    " the held-out test proteins, with the 95% bootstrap interval of the difference above 0 for every baseline."
    " The baselines: fire everywhere, the best single residue, hand rules (Kyte-Doolittle hydropathy window,"
    " amino-acid window, position, N-terminal hydropathy, K+R positive-inside window, PROSITE motifs) and learned"
    " logistic models of the one-hot sequence window (+-10, +-20 and the left 20 residues), fitted on train-side"
    " proteins that are never indexed; each rule or threshold chosen on validation proteins. A left-to-right LM's"
    " feature may read the state a few residues later (lag 0-16, chosen on validation). It must not be an"
    " amino-acid detector; catch-all UniProt types are not counted."
)


def verdict_text(best_concept: str, matches: bool, f1: float, baseline: str, baseline_f1: float) -> str:
    """The concept text of a feature: the concept where it matches, else why not, in one line."""
    if not best_concept:
        return NO_CONCEPT
    if matches:
        return best_concept
    f1s = f"{f1:.2f}" if np.isfinite(f1) else "n/a"
    if not baseline:
        return f"no match (best: {best_concept}, F1 {f1s})"
    return f"no match (best: {best_concept}, F1 {f1s} vs {baseline} {baseline_f1:.2f})"


def deciding_baselines(idx) -> pd.DataFrame:
    """Per concept: the strongest baseline on test proteins, named (concept, baseline, baseline_f1), and
    whether the concept is a catch-all."""
    cols = set(idx.q("DESCRIBE concepts")["column_name"])
    c = idx.q("SELECT * FROM concepts")
    rows = []
    for r in c.itertuples(index=False):
        r = r._asdict()
        cands = [("fire everywhere", r.get("trivial_f1")), (f"every {r.get('aa_rule')}", r.get("aa_rule_f1"))]
        cands += [(r[f"{fam}_rule"], r[f"{fam}_f1"]) for fam in FAMILIES if f"{fam}_rule" in cols]
        cands += [(f"learned {name}", r[f"{col}_f1"]) for name, col in WINDOW_COLUMNS.items() if f"{col}_f1" in cols]
        cands = [(n, float(v)) for n, v in cands if v is not None and np.isfinite(float(v))]
        name, f1 = max(cands, key=lambda x: x[1]) if cands else ("", float("nan"))
        rows.append((r["concept"], name, f1, bool(r.get("catch_all", False))))
    return pd.DataFrame(rows, columns=["concept", "baseline", "baseline_f1", "catch_all"])


def matched_concepts(idx) -> pd.DataFrame:
    """Per feature that matches at least one concept (not catch-all): the matched concept with the best
    *valid* F1 (feature, concept, f1 on test, f1_valid); chosen on valid like every other choice. A feature
    may match a concept other than its best-by-valid one (a signal-peptide feature matches UniProt's label
    and not TMbed's)."""
    return idx.q(
        """SELECT feature, arg_max(c.concept, c.f1_valid) AS concept, arg_max(c.f1, c.f1_valid) AS f1,
        max(c.f1_valid) AS f1_valid FROM concept_f1 c JOIN concepts k USING (concept)
        WHERE c.beats_baselines AND NOT k.catch_all GROUP BY feature"""
    )


def feature_verdicts(idx) -> pd.DataFrame:
    """Per feature: ``concept`` (the concept it matches, else ""), ``verdict`` (the text every screen shows),
    ``matches``, the concept the verdict is about with its test F1, and the deciding baseline."""
    f = idx.q("SELECT feature, best_concept, best_f1, best_f1_valid FROM features ORDER BY feature")
    m = matched_concepts(idx).set_index("feature")
    b = deciding_baselines(idx).set_index("concept")
    matched = f["feature"].map(m["concept"]).fillna("")
    matches = (matched != "").to_numpy()
    about = np.where(matches, matched, f["best_concept"].fillna(""))  # the matched concept, else the best one
    about_f1 = np.where(matches, f["feature"].map(m["f1"]).astype(float), f["best_f1"].astype(float))
    about_f1_valid = np.where(matches, f["feature"].map(m["f1_valid"]).astype(float), f["best_f1_valid"].astype(float))
    base = pd.Series(about).map(b["baseline"]).fillna("").to_numpy()
    base_f1 = pd.Series(about).map(b["baseline_f1"]).astype(float).to_numpy()
    verdict = [
        verdict_text(c, ok, float(v), n, float(bf) if np.isfinite(bf) else 0.0)
        for c, ok, v, n, bf in zip(about, matches, about_f1, base, base_f1)
    ]
    return pd.DataFrame({
        "feature": f["feature"].astype(int),
        "concept": matched.to_numpy(),
        "verdict": verdict,
        "matches": matches,
        "about": about,
        "f1": about_f1,
        "f1_valid": about_f1_valid,
        "baseline": base,
        "baseline_f1": base_f1,
    })


def concept_rows(idx, f: int, n: int = 15) -> pd.DataFrame:
    """A feature's concepts, the verdict first: its test F1 next to fire everywhere, the single-residue rule
    and the best local-sequence rule (named), and the deciding baseline with its F1."""
    cols = set(idx.q("DESCRIBE concept_f1")["column_name"])
    extra = "".join(f", c.{x}" for x in ("lag", "f1_residue", "window_f1", "ci_lo", "ci_hi") if x in cols)
    rows = idx.q(
        f"""SELECT c.concept, c.beats_baselines, c.f1 AS f1_test, c.f1_valid, c.threshold, c.precision, c.recall,
        c.trivial_f1, k.aa_rule, c.aa_rule_f1, k.local_rule, c.local_rule_f1{extra}, c.tp_residues, c.hit_domains
        FROM concept_f1 c JOIN concepts k USING (concept) WHERE c.feature = ? ORDER BY c.f1_valid DESC LIMIT ?""",
        [f, n],
    )
    b = deciding_baselines(idx).set_index("concept")
    rows.insert(0, "verdict", [
        "match" if m and not b["catch_all"].get(c, False) else
        (f"no match: {b['baseline'].get(c, '')} {b['baseline_f1'].get(c, float('nan')):.2f}" if not m else
         "no match: catch-all concept")
        for c, m in zip(rows["concept"], rows["beats_baselines"])
    ])
    rows["aa_rule"] = "every " + rows["aa_rule"].astype(str)
    rows["deciding baseline"] = rows["concept"].map(b["baseline"]).fillna("")
    rows["its F1 (test)"] = rows["concept"].map(b["baseline_f1"]).astype(float)
    first = ["verdict", "concept", "f1_test", "deciding baseline", "its F1 (test)"]
    return rows[first + [c for c in rows.columns if c not in first and c != "beats_baselines"]]
