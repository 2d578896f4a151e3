"""One rule for every screen (esmsae.index.verdicts), and search over what the user sees (esmsae.index.search),
on the committed demo bundle: the cases a browser audit found wrong are pinned here."""
import re

import numpy as np
import pytest

from esmsae.app.concepts import concept_columns, found_table
from esmsae.app.render import feature_map
from esmsae.core.paths import DEMO
from esmsae.index.describe import tokens
from esmsae.index.reader import FeatureIndex
from esmsae.index.verdicts import concept_rows, deciding_baselines, verdict_text

pytestmark = pytest.mark.skipif(not (DEMO / "index.duckdb").exists(), reason="needs the demo bundle")


@pytest.fixture(scope="module")
def idx():
    return FeatureIndex(DEMO / "index.duckdb")


def _no_match(idx, v):
    """A live feature with a best concept it does not match (eligible, not catch-all), its deciding baseline named."""
    m = v[(~v["matches"]) & (v["about"] != "") & (v["baseline"] != "")]
    elig = set(idx.q("SELECT concept FROM concepts WHERE eligible AND NOT catch_all")["concept"])
    m = m[m["about"].isin(elig)].sort_values("f1_valid", ascending=False)
    assert len(m), "the demo has no feature with an unmatched eligible best concept"
    return m.iloc[0]


def test_a_concept_is_named_only_where_the_feature_matches_it(idx):
    v = idx.verdicts().set_index("feature")
    beats = idx.q("""SELECT feature, concept FROM concept_f1 JOIN concepts USING (concept)
                     WHERE beats_baselines AND NOT catch_all""")
    matched = set(map(tuple, beats[["feature", "concept"]].to_numpy()))
    named = v[v["concept"] != ""]
    assert all((f, c) in matched for f, c in named["concept"].items())
    assert set(named.index) == {f for f, _ in matched}  # every feature that matches something is named
    assert (named["verdict"] == named["concept"]).all()
    others = v[v["concept"] == ""]["verdict"]
    assert others.str.match(r"^(no match \(best: .+, F1 \d\.\d\d( vs .+ \d\.\d\d)?\)|no concept)$").all()
    # a feature's best concept that it does not match is never named alone: the verdict says why, with the baseline
    r = _no_match(idx, v.reset_index())
    want = f"no match (best: {r['about']}, F1 {r['f1']:.2f} vs {r['baseline']} {r['baseline_f1']:.2f})"
    assert v.at[int(r["feature"]), "verdict"] == want
    # a feature named for a concept it matches even where another concept fits it better on valid
    best = idx.q("SELECT feature, best_concept FROM features").set_index("feature")["best_concept"]
    for f, c in named["concept"].items():
        assert (f, c) in matched and (best.get(f, "") == c or (f, best.get(f, "")) not in matched)
    assert verdict_text("X", False, 0.5, "rule r", 0.7) == "no match (best: X, F1 0.50 vs rule r 0.70)"
    assert verdict_text("", False, float("nan"), "", 0.0) == "no concept"


def test_the_deciding_baseline_is_named_on_the_concepts_tab(idx):
    v = idx.verdicts()
    r = _no_match(idx, v)
    rows = concept_rows(idx, int(r["feature"])).set_index("concept")
    row = rows.loc[r["about"]]
    assert row["verdict"] == f"no match: {r['baseline']} {r['baseline_f1']:.2f}"
    assert row["deciding baseline"] == r["baseline"] and row["its F1 (test)"] == pytest.approx(r["baseline_f1"])
    # the learned windows are among the baselines that can decide, and the lag and per-residue F1 are shown
    b = deciding_baselines(idx)
    assert b["baseline"].str.startswith("learned").any()
    assert {"lag", "f1_residue", "window_f1"} <= set(rows.columns)
    assert list(concept_rows(idx, int(r["feature"])).columns[:5]) == ["verdict", "concept", "f1_test",
                                                                      "deciding baseline", "its F1 (test)"]
    for f in v[v["matches"]]["feature"].head(5):
        mrows = concept_rows(idx, int(f)).set_index("concept")
        assert mrows.loc[v.set_index("feature").at[int(f), "concept"], "verdict"] == "match"


def test_inspector_columns_and_overview_table_follow_the_rule(idx):
    import pandas as pd

    v = idx.verdicts()
    r = _no_match(idx, v)
    feats = [int(r["feature"])] + v[v["matches"]]["feature"].head(2).astype(int).tolist()
    top = pd.DataFrame({"feature": feats, "max_act": np.linspace(1.0, 0.7, len(feats))})
    out = concept_columns(top, v, {}).set_index("feature")
    assert out.at[int(r["feature"]), "verdict"].startswith("no match (best:")
    for f in feats[1:]:
        assert out.at[f, "label"] == v.set_index("feature").at[f, "concept"]
    found = found_table(v)
    assert set(found["concept"]) == set(v[v["matches"]]["concept"])
    best = found.set_index("concept")
    assert (best["its F1 (test)"] > best["baseline F1 (test)"]).all()


def test_the_feature_map_colours_matches_only(idx):
    pts = idx.feature_points()
    fig = feature_map(pts, "concept")
    coloured = {int(f) for tr in fig.data if tr.name != "(no match)" for f in np.asarray(tr.customdata)[:, 0]}
    assert coloured == set(idx.verdicts().query("matches")["feature"])


def _visible(idx, f: int) -> str:
    v = idx.verdicts().set_index("feature")
    d = idx.q("SELECT description FROM features WHERE feature = ?", [f]).iloc[0, 0] or ""
    ex = idx.q("""SELECT p.id, p.description FROM top_examples e JOIN proteins p USING (pidx)
                  WHERE e.feature = ? AND e.rank < 10""", [f])
    return " ".join([v.at[f, "verdict"], d, *ex["id"], *ex["description"].fillna("")])


def test_search_ranks_what_the_user_sees(idx):
    v = idx.verdicts().set_index("feature")
    first = int(idx.features(search="signal peptide", hide_dead=False)["feature"].iloc[0])
    if v["concept"].str.contains("signal peptide").any():
        assert "signal peptide" in v.at[first, "concept"], v.at[first, "verdict"]  # a feature that matches it
    assert re.search(r"signal peptide", _visible(idx, first), re.I)
    z = idx.features(search="zinc", hide_dead=False)
    assert len(z) and "zinc" in tokens(_visible(idx, int(z["feature"].iloc[0])))
    assert idx.features(search="1776", hide_dead=False)["feature"].iloc[0] == 1776
    assert idx.features(search="_", hide_dead=False).empty  # no words: nothing (hidden ids matched 3,710)
    # whole words: "peptide" is not found inside "oligopeptide"
    for f in idx.features(search="peptide", hide_dead=False)["feature"].head(50):
        assert re.search(r"\bpeptides?\b", _visible(idx, int(f)), re.I), f


def test_structures_show_the_feature_or_say_why_not(idx):
    """For the 25 features with the best valid F1 on any concept the Structure tab shows first a chain where the
    feature reaches half its max, or says plainly that no chain here does (with the strongest share), and names
    the top examples that are PDB entries the bundle does not hold."""
    from esmsae.app.structure_view import HALF, structure_candidates, structure_summary

    best = idx.q("SELECT feature FROM features WHERE NOT dead ORDER BY best_f1_valid DESC LIMIT 25")["feature"]
    shows, named_pdb = 0, 0
    for f in best:
        vmax = float(idx.feature(int(f))["max_act"])
        cands = structure_candidates(idx, int(f), vmax)
        text = structure_summary(idx, int(f), vmax, cands)
        if cands and cands[0]["share"] >= HALF:
            shows += 1
            assert "reach" in text and "at least half" in text, text
        else:
            assert ("No protein with a structure here reaches half" in text or not cands), text
        named_pdb += "https://www.rcsb.org/structure/" in text
    assert shows >= 1, shows  # measured on the demo: 2 of 25
    assert named_pdb >= 1  # top examples that are PDB chains the bundle does not hold are linked


def test_loss_recovered_over_100_or_on_few_positions_is_flagged():
    """A tiny run showed "107% loss recovered" (46 evaluation tokens) as if it were a result."""
    from esmsae.app.concepts import loss_recovered_note

    assert "over 100%" in loss_recovered_note(107.0, 46) and "46 positions" in loss_recovered_note(107.0, 46)
    assert "rough figure" in loss_recovered_note(80.0, 300)
    assert loss_recovered_note(71.6, 36_216) == "" and loss_recovered_note(None, None) == ""
