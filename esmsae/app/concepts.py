"""What the pages show of concepts, under the one rule of :mod:`esmsae.index.verdicts` (a concept is named
only where the feature matches it): the inspector's concept columns and the Overview's one-screen table
of what was found."""
from __future__ import annotations

import pandas as pd

from esmsae.app.render import format_number
from esmsae.index.verdicts import RULE_TEXT  # noqa: F401  (re-exported for the pages)


def concept_columns(top: pd.DataFrame, verdicts: pd.DataFrame, labels: dict[int, str]) -> pd.DataFrame:
    """The inspector's top features with their label (the user's, else the matched concept) and the verdict
    (the matched concept, or "no match (best: X, F1 a vs <rule> b)"), verdict right after the feature."""
    v = verdicts.set_index("feature")
    out = top.copy()
    out.insert(1, "verdict", out["feature"].map(v["verdict"]).fillna(""))
    out.insert(1, "label", out["feature"].map(labels).fillna(out["feature"].map(v["concept"])).fillna(""))
    return out


def found_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per concept that some feature matches: how many features match it, the best of them (chosen
    on valid, its test F1) and the deciding baseline (named, test F1); the concepts nothing matches are left
    to the note."""
    v = verdicts[verdicts["matches"]]
    if v.empty:
        return pd.DataFrame(columns=["concept", "features matching", "best feature", "its F1 (test)",
                                     "deciding baseline", "baseline F1 (test)"])
    best = v.sort_values("f1_valid", ascending=False).groupby("concept", sort=False).first()
    n = v.groupby("concept").size()
    out = pd.DataFrame({
        "concept": best.index,
        "features matching": n.loc[best.index].to_numpy(),
        "best feature": best["feature"].to_numpy(),
        "its F1 (test)": best["f1"].round(3).to_numpy(),
        "deciding baseline": best["baseline"].to_numpy(),
        "baseline F1 (test)": best["baseline_f1"].round(3).to_numpy(),
    })
    return out.sort_values(["features matching", "its F1 (test)"], ascending=False).reset_index(drop=True)


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{format_number(v)}%"


def loss_recovered_note(pct: float | None, n_positions: int | None) -> str:
    """A warning beside "% loss recovered" when it cannot be read as a fraction: above 100% (the spliced SAE
    beat the model itself, which only noise on few tokens does) or measured on few positions."""
    if pct is None or pct != pct:
        return ""
    if pct > 100:
        return f"over 100%: noise of a small evaluation ({n_positions or 'few'} positions), not a better model"
    if n_positions is not None and n_positions < 2000:
        return f"measured on {n_positions} positions only: a rough figure"
    return ""


def card_sections(card: dict, verdicts: pd.DataFrame, ev: dict | None = None) -> list[tuple[str, list]]:
    """The Overview's run card in three rows (the model; the SAE's quality; what was found), each metric
    as (short label that fits its column, value, what it means), with the match counts of the one rule."""
    ev = ev or {}
    nxt = (ev.get("downstream") or {}).get("next") or {}
    pct = card.get("% loss recovered (vs mean ablation)")
    note = loss_recovered_note(pct, nxt.get("n_positions") or (ev.get("downstream") or {}).get("n_positions"))
    matched = verdicts[verdicts["matches"]]
    model = [
        ("Base model", str(card["base model"]), "the protein LM the SAE reads"),
        ("Layer", f"{card['layer']} ({card['hook site']})", "hooked layer and site"),
        ("Width", f"{card['d_in']:,}", "d_in: the width of the LM state"),
        ("Latents", f"{card['latents']:,} (k {card['k']})", f"{card['architecture']} SAE"),
    ]
    sae = [
        ("FVU", format_number(card["FVU"]), "fraction of variance unexplained on held-out tokens (0 = perfect)"),
        ("L0", format_number(card["L0"]), "active latents per token"),
        ("Loss recovered", "n/a" if pct is None else f"{pct:.1f}%" + (" (!)" if note else ""),
         "share of the LM's loss gap to mean ablation the spliced-in SAE recovers" + (f"; {note}" if note else "")),
        ("Dead, eval", _pct(card["dead % (eval)"]),
         "latents that never fired on the held-out evaluation tokens (a small sample)"),
        ("Dead, index", _pct(card["dead % (index)"]),
         "latents that never fired on any indexed protein (every residue of the index)"),
    ]
    found = [
        ("Features matching", f"{len(matched):,}",
         "features that beat every baseline on validation and test proteins for some concept (catch-alls excluded)"),
        ("Concepts matched", f"{matched['concept'].nunique()}", "distinct concepts those features match"),
        ("Residue detectors", _pct(card["residue detectors % (live)"]),
         "live features with >= 90% of their firing on one amino acid"),
        ("Proteins indexed", f"{card['proteins indexed']:,}", f"{card['residues indexed']:,} residues"),
    ]
    return [("The model", model), ("The SAE", sae), ("What was found", found)]
