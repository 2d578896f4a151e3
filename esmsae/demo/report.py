"""docs/demo.md from the committed bundle: every figure the README points to, read from the bundle
itself (demo.json, eval.json, representation.json, the index), so the page cannot drift from the data.

    python -m esmsae.demo.report > docs/demo.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from esmsae.core.paths import DEMO
from esmsae.index.reader import FeatureIndex


def _table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):  # itertuples keeps each column's type (iterrows upcasts ints to float)
        out.append(
            "| "
            + " | ".join(
                (
                    floats.format(v)
                    if isinstance(v, float)
                    else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
                )
                for v in r
            )
            + " |"
        )
    return "\n".join(out)


def demo_markdown(bundle: Path = DEMO) -> str:
    rep = json.loads((bundle / "demo.json").read_text())
    ev = json.loads((bundle / "sae" / "eval.json").read_text())
    lm = json.loads((bundle / "lm_eval.json").read_text())
    idx = FeatureIndex(bundle / "index.duckdb")  # read-only, through the index's reader
    q = idx.q
    fig = rep["figures"]
    matched = idx.verdicts()
    n_match, n_concepts = int(matched["matches"].sum()), matched.loc[matched["matches"], "concept"].nunique()
    down = ev.get("downstream", {}).get("next", {})
    lines = [
        "# The demo bundle, measured",
        "",
        (
            "Built by `make demo` (`python -m esmsae demo`, resumable) from `../shared/data`; these tables are"
            " generated from the"
        ),
        (
            "bundle by `python -m esmsae.demo.report`. Sources and licences: `data/demo/ATTRIBUTION.md`,"
            " `data/demo/NOTICE` (GPL-3.0)."
        ),
        "",
        "## The protein LM: UniRep-1900",
        "",
        lm.get("about", ""),
        "",
        (
            f"Next-residue perplexity on {lm['n_proteins']} held-out UniProtKB proteins ({lm['n_residues']:,} residues,"
            f" first {lm['max_len']} of each; {lm['heldout']}). Unigram and bigram are counted on the SAE's"
            f" {lm['n_train_proteins']:,} training proteins and scored on the same residues. UniRep's training set"
            " (UniRef50, 2017) may contain these proteins or their homologues: this compares the model with its"
            " baselines, it does not test generalisation."
        ),
        "",
        "| model | next-residue perplexity | cross-entropy (nats) |",
        "|---|---|---|",
        f"| UniRep-1900 | **{lm['next_ppl']:.2f}** | {lm['next_ce']:.3f} |",
        f"| bigram (the residue before) | {lm['bigram_ppl']:.2f} | {lm['bigram_ce']:.3f} |",
        f"| unigram (residue frequencies) | {lm['unigram_ppl']:.2f} | {lm['unigram_ce']:.3f} |",
        (
            "| the earlier self-trained ESM-2 8M architecture (masked, <mask> positions, its own proteins) | 17.60"
            " (unigram 18.22, two-neighbour 18.02) | |"
        ),
        "| real ESM-2 8M (masked perplexity, reported, not measured here) | about 10-10.5 | |",
        "",
    ]
    rc = bundle / "sae" / "representation.json"
    if rc.exists():
        r = pd.DataFrame(json.loads(rc.read_text())["rows"])
        lines += [
            "## Representation card: does the model know more than local sequence?",
            "",
            (
                "Linear probes per residue (logistic regression), trained and tested on different proteins: TM helix on"
                " TMbed's homology partitions (F1 of the helix class), 3-state secondary structure on FLIP chains split"
                " by sequence hash (Q3). The one-hot windows of the sequence itself are the controls (`python -m esmsae"
                " probe`)."
            ),
            "",
            _table(
                r[
                    ["task", "representation", "value", "minus_window10", "dims", "n_train_residues", "n_test_residues"]
                ].rename(columns={"value": "test score", "minus_window10": "minus +-10 window"})
            ),
            "",
        ]
    lines += [
        "## The SAE",
        "",
        (
            f"TopK, {ev['n_latents']:,} latents, k = {ev['k']}, on the hidden state of UniRep-1900's one mLSTM cell"
            f" (d_in {ev['d_in']}), `center_scalar` normalisation, {ev.get('tokens_trained') or 0:,} training tokens"
            " from a kingdom-balanced proteome sample; weights rounded to fp16 before indexing (the bundle stores"
            " fp16: 31 MB)."
        ),
        "",
        "| measure | value | control |",
        "|---|---|---|",
        (
            f"| FVU, held-out tokens ({ev['n_tokens']:,}) | **{ev['fvu']:.3f}** | residue-type table:"
            f" {ev.get('fvu_aa_lookup', {}).get('fvu', float('nan')):.3f} |"
        ),
        (
            f"| L0 / dead / dense | {ev['l0']:.0f} / {100 * ev['dead_fraction']:.1f}% /"
            f" {100 * ev['dense_fraction']:.2f}% | |"
        ),
        (
            f"| next-residue CE, {ev['downstream']['n_proteins']} held-out proteins | original"
            f" {down.get('ce_orig', float('nan')):.3f}, SAE spliced {down.get('ce_sae', float('nan')):.3f} (ΔCE"
            f" {down.get('delta_ce_nats', float('nan')):+.3f} nats) | mean ablation"
            f" {down.get('ce_mean', float('nan')):.3f}, unigram {down.get('ce_unigram', float('nan')):.3f}, zero"
            f" ablation {down.get('ce_zero', float('nan')):.3f} |"
        ),
        (
            f"| loss recovered | **{down.get('pct_loss_recovered', float('nan')):.1f}%** against mean ablation | "
            f"{down.get('pct_recovered_vs_unigram', float('nan')):.1f}% of the LM's gain over unigram |"
        ),
        "",
    ]
    if rep.get("k_sweep"):
        lines += [
            "Why k = 32: a sweep on the same store, 1 M training tokens each, held-out FVU:",
            "",
            _table(pd.DataFrame(rep["k_sweep"])),
            "",
            (
                "More active latents reconstruct better (as expected) at the price of denser codes; k = 32 keeps L0 at"
                " InterPLM's and InterProt's scale. 4,096 latents is the most that fits the 80 MB bundle in fp16."
            ),
            "",
        ]
    lines += [
        "## Features and concepts",
        "",
        (
            f"{fig['live_features']:,} live features; **{100 * fig['residue_detector_share_of_live']:.1f}%** are"
            " residue detectors (>= 90% of their firing on one amino acid)."
            f" **{n_match} features match a concept** ({n_concepts} concepts; the rule every screen of the app"
            " follows, `esmsae.index.verdicts`): they beat every baseline (fire everywhere, single residue, hydropathy"
            " window, amino-acid window, position rules) by 0.05 on the valid **and** the test proteins for some"
            f" concept; {fig['features_matching_a_concept_test']} of them for the concept they fit best on valid"
            " proteins."
        ),
        "",
        (
            "Per concept (eligible, not catch-all), the best feature (chosen on valid) against the best baseline"
            " (chosen on valid), both as test F1:"
        ),
        "",
    ]
    c = q(
        """SELECT concept, best_feature AS "best feature", best_feature_f1 AS "its test F1",
             best_baseline AS "best baseline", best_baseline_f1 AS "its test F1 ",
             baseline_max_f1 AS "best baseline F1 (any)",
             n_features_beat_baselines AS "features beating every baseline"
             FROM concepts WHERE eligible AND NOT catch_all ORDER BY n_features_beat_baselines DESC, best_feature_f1 -
             baseline_max_f1 DESC"""
    )
    lines += [_table(c), ""]
    beat = c[c["features beating every baseline"] > 0]["concept"].tolist()
    lines += [
        f"Concepts where a UniRep feature beats the local rules on both halves: {', '.join(beat) if beat else 'none'}.",
        (
            f"Every other eligible concept ({len(c) - len(beat)}) is matched at least as well by a rule that reads only"
            " the residues around the position."
        ),
        "",
    ]
    g = q(
        """SELECT grouping, count(*) FILTER (WHERE q < 0.05 AND log_odds > 0) AS enriched,
             count(*) FILTER (WHERE composition_driven) AS "composition-driven" FROM group_usage GROUP BY grouping
             ORDER BY grouping"""
    )
    lines += [
        "## Groups",
        "",
        (
            "Enriched (group, feature) pairs (length-stratified CMH, BH q < 0.05) and how many of them the "
            "composition control removes (stratifying also by the protein's content of the feature's top amino acid):"
        ),
        "",
        _table(g),
        "",
    ]
    cross = rep.get("cross_seed") or {}
    if cross.get("results"):
        live = fig["live_features"]
        rows = [
            {
                "method": r["method"].replace("_", " "),
                "match rate, live features": f"{100 * r['match_rate_live']:.1f}%",
                "features split": r["split_features"],
                "chance (untrained SAE)": f"{100 * r['chance_match_rate_live']:.1f}%",
            }
            for r in cross["results"]
        ]
        lines += [
            "## Matching against a second seed",
            "",
            (
                f"Each of the {live:,} live features against the {cross['other']}, threshold {cross['threshold']}"
                f" (activation correlation on {cross['n_proteins']} index proteins); chance is the same comparison"
                " against an untrained SAE of the second SAE's shape (`esmsae.analysis.match.untrained_like`):"
            ),
            "",
            _table(pd.DataFrame(rows)),
            "",
        ]
    if "cluster_profiles" in idx.tables:
        p = q(
            "SELECT cluster, n_proteins, length_median, kingdoms, top_organisms, enriched_concepts FROM"
            " cluster_profiles ORDER BY cluster"
        )
        lines += [
            "## Embedding clusters",
            "",
            (
                "k-means (k = 10) of the proteome sample's mean-pooled UniRep states, described by what "
                "they hold (`cluster_profiles`):"
            ),
            "",
            _table(p, "{:.0f}"),
            "",
        ]
    idx.con.close()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(demo_markdown(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO))
