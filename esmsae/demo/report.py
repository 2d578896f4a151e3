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
        lines += representation_section(pd.DataFrame(json.loads(rc.read_text())["rows"]))
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
    if rep.get("sae_sweep"):
        lines += [
            "Toward issue 31's SAE targets (held-out FVU <= 0.15 and >= 85% loss recovered against mean ablation, at"
            " L0 <= 64): `bench/sae_sweep.py` on the same store, each SAE scored by the same evaluation card"
            " (`bench/results/sae_sweep.json`; sign descent with the decoder rows held at unit norm). The first"
            " row is the bundled SAE's own card, from the store of the build that made it; the others share one"
            " re-embedded store (the unmodified LM's CE on its 128 proteins: 2.634 there, 2.601 in the card):",
            "",
            _table(pd.DataFrame(rep["sae_sweep"])),
            "",
        ]
    lines += concepts_section(idx, fig, n_match, n_concepts)
    pc = idx.protein_concepts()
    if "motif_f1" in pc:  # a concept without a classic motif has no motif baseline
        pc["motif_f1"] = pc["motif_f1"].astype(object).where(pc["motif_f1"].notna(), "no motif")
    if not pc.empty:
        lines += [
            "## Protein-level concepts: fold classes, folds and families",
            "",
            (
                "SCOP classes of protein domains (ProteinBERT's SCOPe benchmark) and TAPE's remote-homology folds"
                " (SCOP folds, numbered without names in the benchmark; folds with >= 20 domains on every side),"
                " tested per protein (`esmsae.analysis.protein_concepts`): a feature calls a protein a member when"
                " its maximum over the protein exceeds a threshold chosen on valid; the baselines are a logistic model"
                " of amino-acid composition and log length, one of dipeptide composition (the 400 adjacent"
                " residue pairs), and a learned filter of the one-hot +-10 and +-20 window maximised over the"
                " protein (`esmsae.analysis.window_max`: what a window of local sequence tells, pooled as the feature"
                " is; it learns a family's motif where there is one), each fitted on separate train proteins with its"
                " L2 weight and threshold chosen on valid; a match beats every baseline by 0.05 on valid and test,"
                " with the bootstrap interval of the difference to the worst of them above 0. Train and valid are"
                " drawn from each benchmark's train file, test from its test file (identical chains removed). SCOP"
                " class: homologues may straddle the split. Folds: TAPE's test file holds out whole superfamilies,"
                " so a fold match carries the fold to superfamilies no choice saw (remote homology). Families:"
                " UniProt protein names of the 15 proteomes, sides by organism (relatives on one side; every"
                " member and 2,000 other proteins on valid and test), with the classic motif as a further"
                " baseline where one exists (`esmsae.analysis.name_families`); the families of one shared domain"
                " with >= 20 members on every side were all tested, so with 17 concepts one false match at the"
                " 95% level is possible."
            ),
            "",
            _table(pc[[c for c in ("concept", "best_feature", "f1_valid", "f1", "composition_f1", "dipeptide_f1",
                                   "window10_f1", "window20_f1", "motif_f1", "trivial_f1", "ci_lo", "ci_hi", "match",
                                   "n_test") if c in pc]].rename(
                columns={"f1": "test F1", "f1_valid": "valid F1", "composition_f1": "composition model F1",
                         "dipeptide_f1": "dipeptide model F1", "window10_f1": "+-10 window filter F1",
                         "window20_f1": "+-20 window filter F1", "motif_f1": "motif F1",
                         "trivial_f1": "fire everywhere F1",
                         "ci_lo": "interval low (worst baseline)", "ci_hi": "interval high",
                         "n_test": "test members"})),
            "",
        ]
    ext = idx.external()
    if not ext.empty:
        lines += [
            "## External check",
            "",
            (
                f"{ext['set'].iloc[0]}: {int(ext['n_fragments'].iloc[0]):,} fragments,"
                f" {int(ext['n_positive'].iloc[0]):,} with a signal peptide. Every predictor is frozen as chosen on"
                " this index's valid proteins (features"
                " at their threshold, the local rule, the learned windows at their thresholds) and calls a fragment"
                " positive when it fires on any residue (`esmsae.analysis.external`)."
            ),
            "",
            _table(ext[["concept", "predictor", "kind", "index_test_f1", "precision", "recall", "f1"]].rename(
                columns={"index_test_f1": "F1 on the index's test proteins", "f1": "external F1"})),
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
                "they hold (`cluster_profiles`); never tested for features, since they are made of the states the SAE"
                " encodes:"
            ),
            "",
            _table(p, "{:.0f}"),
            "",
        ]
    idx.con.close()
    return "\n".join(lines) + "\n"


def representation_section(r: pd.DataFrame) -> list[str]:
    """The representation card: converged probes of the LM state, the SAE codes (full and k-sparse) and
    the one-hot window controls, per task."""
    cols = [c for c in ["task", "representation", "value", "minus_window10", "minus_window20", "dims", "fit_loss",
                        "fit_grad_max", "n_train_residues", "n_test_residues"] if c in r.columns]
    new = "fit_loss" in r.columns
    fitted = ("logistic regression fitted to convergence by L-BFGS; its final loss and largest gradient entry are"
              " listed" if new else "logistic regression, 300 full-batch Adam epochs: this card predates the"
              " converged fit, the topology and signal-peptide tasks and the k-sparse probes; `python -m esmsae"
              " probe` rebuilds it")
    tasks = ("TM helix, signal peptide, and inside / outside within membrane proteins" if new else "TM helix")
    sparse = (" `SAE codes: best k features` are k-sparse probes (k features chosen on the training residues by"
              " class-mean separation, Gurnee et al. 2023): how much of what the LM state knows a few single"
              " features carry." if new else "")
    return [
        "## Representation card: does the model know more than local sequence?",
        "",
        (
            f"Linear probes per residue ({fitted}), trained and tested on different proteins: {tasks} on TMbed's"
            " homology partitions (F1 of the positive class), 3-state secondary structure on FLIP chains split by"
            f" sequence hash (Q3). The one-hot windows of the sequence itself are the controls.{sparse}"
        ),
        "",
        _table(r[cols].rename(columns={"value": "test score", "minus_window10": "minus +-10 window",
                                       "minus_window20": "minus +-20 window"})),
        "",
    ]


def concepts_section(idx, fig: dict, n_match: int, n_concepts: int) -> list[str]:
    """Per eligible concept the best feature against every baseline, the learned windows included."""
    have = set(idx.q("DESCRIBE concepts")["column_name"])
    opt = "".join(f', {c} AS "{a}"' for c, a in (
        ("best_feature_lag", "lag"), ("best_feature_f1_residue", "per-residue F1"),
        ("best_feature_ci_lo", "interval low"), ("top10_median_f1", "top-10 median"),
        ("window20_f1", "+-20 window"), ("left20_f1", "left 20 window"), ("window20_f1_residue", "+-20 per-residue"),
        ("n_test_proteins", "test proteins")) if c in have)
    c = idx.q(
        f"""SELECT concept, best_feature AS "best feature", best_feature_f1 AS "its test F1"{opt},
             best_baseline AS "best baseline (valid)", baseline_max_f1 AS "best baseline F1 (any)",
             n_features_beat_baselines AS "features matching"
             FROM concepts WHERE eligible AND NOT catch_all ORDER BY n_features_beat_baselines DESC, best_feature_f1 -
             baseline_max_f1 DESC"""
    )
    beat = c[c["features matching"] > 0]["concept"].tolist()
    return [
        "## Features and concepts",
        "",
        (
            f"{fig['live_features']:,} live features; **{100 * fig['residue_detector_share_of_live']:.1f}%** are"
            " residue detectors (>= 90% of their firing on one amino acid)."
            f" **{n_match} features match a concept** ({n_concepts} concepts; the rule every screen of the app"
            " follows, `esmsae.index.verdicts`)."
        ),
        "",
        (
            "**The rule.** Labelled proteins fall on three sides (TMbed by its homology partitions 0-2 / 3 / 4, the"
            " rest by a sequence hash, 20% / 40% / 40%): *train* fits the learned baselines and is never indexed,"
            " *valid* makes every choice, *test* reports. A feature matches a concept when its F1 beats every"
            " baseline by 0.05 on valid **and** test, and on test the 95% bootstrap interval (proteins resampled)"
            " of F1(feature) - F1(baseline) lies above 0 for every baseline. The baselines: fire everywhere, the"
            " best single residue, hand rules (Kyte-Doolittle hydropathy window, amino-acid window, position,"
            " N-terminal hydropathy, K+R positive-inside window, PROSITE motifs such as the P-loop) and three learned"
            " logistic"
            " models of the one-hot sequence window (+-10, +-20, and the left 20 residues a left-to-right LM has"
            " read), each with its rule or threshold chosen on valid. Concepts need >= 20 proteins on each side and a"
            " fitted window model. UniRep reads left to right, so a feature may read the state at t + lag (lag 0, 4,"
            " 8 or 16, chosen on valid): the +-20 window reaches further right than any lag."
        ),
        "",
        (
            "**Which F1.** Domain concepts (TM helix, signal peptide, UniProt domains) are scored as InterPLM does:"
            " precision over residues, recall over domains (a domain is found when any of its residues fires); every"
            " baseline is scored the same way, so a baseline firing on part of each domain gets the same credit as a"
            " feature. Matches are decided on that F1; the plain per-residue F1 is listed beside it, because a"
            " feature firing on one residue per domain can score well on the first and poorly on the second."
        ),
        "",
        "Per concept (eligible, not catch-all), the best feature (chosen on valid) against the baselines, test F1:",
        "",
        _table(c),
        "",
        f"Concepts where a UniRep feature matches: {', '.join(beat) if beat else 'none'}.",
        (
            f"Every other eligible concept ({len(c) - len(beat)}) is matched at least as well by a baseline that reads"
            " only the residues around the position."
        ),
        "",
    ]


if __name__ == "__main__":
    sys.stdout.write(demo_markdown(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO))
