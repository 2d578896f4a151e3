"""Readable column names and number formats for every table the app shows: no ``grp``, ``n_fire``,
``frac``, ``log_odds``, ``max_pos``, ``other_sae`` or ``match_rate_live`` on a page, and no "nan" or
"None" cells (a missing value reads "n/a"). Pandas only; :func:`esmsae.app.ui.table` draws with these."""
from __future__ import annotations

import pandas as pd

HUMAN = {
    # features
    "verdict": "concept (named only where the feature matches it)",
    "best_concept": "best concept",
    "best_f1": "best concept F1 (test)",
    "best_aa_rule_f1": "single-residue rule F1 (test)",
    "aa_top": "top amino acid",
    "aa_purity": "share of firing on it",
    "freq_residue": "residue frequency",
    "freq_protein": "protein frequency",
    "max_act": "max activation",
    "top_group": "top group",
    "relevance": "relevance (BM25)",
    # groups
    "grp": "group",
    "n_proteins": "proteins",
    "n_fire": "proteins where it fires",
    "frac": "share of proteins where it fires",
    "mean_act": "mean per-protein max",
    "log_odds": "log odds ratio",
    "p": "p",
    "q": "q (FDR)",
    "q_composition": "q, composition-controlled",
    "composition_driven": "composition-driven",
    "difference": "difference (A - B)",
    # examples
    "max_pos": "position of max",
    # concepts of a feature
    "f1_valid": "F1 (valid)",
    "f1_test": "F1 (test)",
    "trivial_f1": "fire-everywhere F1",
    "aa_rule_f1": "single-residue rule F1",
    "beats_baselines": "beats every baseline",
    "lag": "lag (state read at t + lag)",
    "f1_residue": "per-residue F1 (test)",
    "window_f1": "best learned window F1 (test)",
    "ci_lo": "95% interval vs closest baseline: low",
    "ci_hi": "95% interval vs closest baseline: high",
    "tp_residues": "true-positive residues",
    "hit_domains": "domains hit",
    # matches
    "other_sae": "other SAE",
    "other_feature": "its feature",
    "match_rate": "match rate",
    "match_rate_live": "match rate (live features)",
    "chance_match_rate": "chance level",
    "chance_match_rate_live": "chance level (live features)",
    "split_features": "split features",
    "split": "several of its features map here",
}

FORMATS = {
    "p": "%.2e", "q": "%.2e", "q_composition": "%.2e", "log_odds": "%.2f", "frac": "%.3f", "mean_act": "%.3g",
    "best_f1": "%.2f", "best_aa_rule_f1": "%.2f", "aa_purity": "%.2f", "freq_residue": "%.2e", "freq_protein": "%.3f",
    "max_act": "%.3f", "relevance": "%.2f", "score": "%.3f", "match_rate": "%.3f", "match_rate_live": "%.3f",
    "chance_match_rate": "%.3f", "chance_match_rate_live": "%.3f", "f1_valid": "%.3f", "f1_test": "%.3f",
    "trivial_f1": "%.3f", "aa_rule_f1": "%.3f", "precision": "%.3f", "recall": "%.3f", "threshold": "%.2f",
    "difference": "%.3f", "f1_residue": "%.3f", "window_f1": "%.3f", "ci_lo": "%+.3f", "ci_hi": "%+.3f",
}


def human(df: pd.DataFrame) -> pd.DataFrame:
    """The table with readable column names and "n/a" for missing values (text columns: empty)."""
    out = df.copy()
    for c in out.columns:
        if out[c].isna().any():
            if pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c]):
                out[c] = out[c].astype(object).where(out[c].notna(), "n/a")
            else:
                out[c] = out[c].astype(object).where(out[c].notna(), "")
    return out.rename(columns=HUMAN)


def formats(df: pd.DataFrame) -> dict[str, str]:
    """printf formats of ``df``'s numeric columns, keyed by their readable names (after :func:`human`);
    a column that holds "n/a" cells is text and keeps its values as they are."""
    return {
        HUMAN.get(c, c): f
        for c, f in FORMATS.items()
        if c in df.columns and pd.api.types.is_numeric_dtype(df[c]) and not df[c].isna().any()
    }


def match_verdict(rate: float | None, chance: float | None) -> str:
    """One line on a match rate against its chance level."""
    if rate is None or chance is None or pd.isna(rate) or pd.isna(chance):
        return "no chance level measured"
    if rate <= chance + 0.05:
        return f"at chance ({rate:.1%} vs {chance:.1%} for an untrained SAE of the same shape)"
    return f"above chance ({rate:.1%} vs {chance:.1%} for an untrained SAE of the same shape)"
