"""AppTest for every page, on a tiny index the tests build (and on the demo bundle when present)."""
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from esmsae.app.render import parse_structure, structure_html, track_html
from esmsae.app.runs import list_runs
from esmsae.core.paths import DEMO
from esmsae.index.reader import FeatureIndex, get_labels

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
FEATURE_TABS = ("Top examples", "Activation ranges", "Concepts", "Groups", "Structure", "Related features")


@pytest.fixture()
def env(app_workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("ESMSAE_WORKSPACE", str(app_workspace))
    monkeypatch.setenv("ESMSAE_DEMO", str(tmp_path / "no-demo"))  # only the tiny run
    monkeypatch.chdir(ROOT)
    return app_workspace


def page(name: str, **qp) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page(f"pages/{name}.py")
    for k, v in qp.items():
        at.query_params[k] = v
    return at


def ok(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_overview(env):
    at = ok(page("overview"))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Latents"] == "128 (k 8)" and metrics["Layer"] == "4 (resid)"
    assert {"Features matching", "Concepts matched", "Residue detectors", "Loss recovered", "FVU", "L0",
            "Dead, eval", "Dead, index"} <= set(metrics)
    # every card label is whole: short enough for its column at 1400 px (labels were cut: "% loss recovered (vs ...")
    assert max(len(k) for k in metrics) <= 18, sorted(metrics, key=len)[-1]
    # what was found, in one table with the deciding baseline named; every concept with every baseline below
    assert any({"concept", "features matching", "best feature", "deciding baseline", "baseline F1 (test)"}
               <= set(d.value.columns) for d in at.dataframe)
    assert any({"fire everywhere F1", "single-residue rule", "best local-sequence rule", "hydropathy window F1",
                "features beating every baseline (valid and test)"} <= set(d.value.columns) for d in at.dataframe)
    assert len(at.get("plotly_chart")) == 2  # frequency histogram + feature map


def test_bad_links_say_what_is_wrong(env):
    """?feature=abc, a feature past the last, and ?run=nope each get a message naming the problem (no
    Python error text, no silent fallback)."""
    at = ok(page("features", feature="abc"))
    assert any("'abc', which is not a feature number" in e.value for e in at.error), [e.value for e in at.error]
    assert not any("invalid literal" in e.value for e in at.error)
    at = ok(page("features", feature="99999"))
    assert any("has no feature 99999" in e.value for e in at.error)
    at = ok(page("overview", run="nope"))
    assert any("names run 'nope', which is not here" in w.value for w in at.warning)


def test_feature_browser_table_search_and_deep_link(env):
    at = ok(page("features"))
    table = at.dataframe[0].value
    assert len(table) > 10 and {
        "feature",
        "label",
        "concept (named only where the feature matches it)",
        "share of firing on it",
        "residue frequency",
        "max activation",
        "top group",
    } <= set(table.columns)
    raw = {"grp", "n_fire", "frac", "log_odds", "max_pos", "other_sae", "match_rate_live", "best_f1", "freq_residue"}
    assert not raw & set(table.columns)  # readable column names (esmsae.app.columns)
    # residue detectors vs context features: two disjoint subsets of the live features
    at.selectbox(key="kind_filter").set_value("residue detectors").run()
    det = set(at.dataframe[0].value["feature"])
    at.selectbox(key="kind_filter").set_value("context features").run()
    ctx = set(at.dataframe[0].value["feature"])
    at.selectbox(key="kind_filter").set_value("all").run()
    assert not det & ctx and det | ctx == set(at.dataframe[0].value["feature"])
    idx = FeatureIndex(env / "tiny" / "L4_resid" / "index.duckdb")
    f = int(idx.q("SELECT feature FROM features WHERE NOT dead ORDER BY n_proteins DESC LIMIT 1").iloc[0, 0])
    at.text_input(key="search").input(str(f)).run()
    assert at.dataframe[0].value["feature"].tolist()[0] == f  # a number finds that feature, first
    assert "relevance (BM25)" in at.dataframe[0].value.columns  # a search is ranked
    at = ok(page("features", feature=str(f)))
    assert at.title[0].value.startswith(f"Feature {f}")
    assert len(at.tabs) == 6  # ..., Structure, Related features
    htmls = [h.proto.body for h in at.get("html")]
    assert any("esmsae-track" in h for h in htmls)  # per-residue tracks of the top examples
    # label editing survives in the separate labels file
    at.text_input(key="label_text").input("my test label")
    next(b for b in at.button if b.label == "Save label").click().run()
    assert "Label saved" in at.success[0].value
    assert get_labels(idx.path)[f] == "my test label"
    at = ok(page("features", feature=str(f)))
    assert "my test label" in at.title[0].value
    # a bad deep link shows a message and the table
    at = ok(page("features", feature="99999"))
    assert "has no feature" in at.error[0].value and at.dataframe


def test_feature_page_structure(env):
    idx = FeatureIndex(env / "tiny" / "L4_resid" / "index.duckdb")
    s = idx.q("SELECT feature FROM structure_tracks ORDER BY max_act DESC LIMIT 1")
    assert len(s), "the tiny index has structure proteins"
    at = ok(page("features", feature=str(int(s.iloc[0, 0]))))
    assert not at.get("iframe"), "tabs are lazy: the Structure tab runs only when it is open"
    at = ok(page("features", feature=str(int(s.iloc[0, 0])), tab="Structure"))
    frames = at.get("iframe")
    assert frames and "3Dmol-min.js" in str(frames[0].proto)
    info = " ".join(i.value for i in at.info)
    assert "of its top examples" in info and "a structure in this bundle" in info, info
    assert "of the feature's max" in " ".join(m.value for m in at.markdown)  # each chain's share of the max


def test_inspector(env):
    at = ok(page("inspector"))
    at.text_area(key="seq_text").input(">q1\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert "residues - protein LM + SAE" in at.caption[0].value
    assert len(at.dataframe[0].value) > 0
    assert at.get("download_button")


def test_inspector_refuses_what_the_page_cannot_do_in_a_minute(env, monkeypatch):
    """Past about a minute of work (this machine's measured speed), a paste is refused with the command to
    use instead; below it, the run goes on in the background behind a progress bar with a Cancel button."""
    import esmsae.app.analyze as analyze

    monkeypatch.setattr(analyze, "MAX_PAGE_SECONDS", 0.6)
    at = ok(page("inspector"))
    at.text_area(key="seq_text").input(">long\n" + "MKTAYIAKQRQISFVKSHFSRQ" * 200).run()
    next(b for b in at.button if b.label == "Analyse").click().run()
    err = " ".join(e.value for e in at.error)
    assert "long has 4,400 residues" in err and "`esmsae embed" in err, err


def test_numbered_flat_file_sequence_is_cleaned_and_formats_agree():
    """A sequence pasted from a GenBank / UniProt flat file (numbers, ORIGIN, //) is read as its residues (it
    was refused for its digits); digits anywhere else still are errors naming the position."""
    from esmsae.app.analyze import InputError, parse_input
    from esmsae.config.commands import SAE_FORMATS
    from esmsae.published.catalogue import FORMATS

    flat = "ORIGIN\n        1 mkvllaglll agsdfghkli mnpqrstvwy\n       31 mkvll\n//\n"
    assert parse_input(flat) == [("query", "MKVLLAGLLLAGSDFGHKLIMNPQRSTVWYMKVLL")]
    with pytest.raises(InputError, match="'1' at position 4"):
        parse_input("MKV1LL")
    # the import form's Format choices (config) are the formats the readers know (published)
    assert set(SAE_FORMATS) - {"auto"} == set(FORMATS) - {"esmsae"}


def test_a_queued_analysis_says_it_is_waiting():
    """While another analysis holds the model, a submitted one says it waits (and how many are ahead), then
    runs; a cancelled one stops at the next step."""
    import threading

    from esmsae.app.analyze import Job

    class FakeLM:
        lock = threading.RLock()

    class FakeAnalyzer:
        rate = 100.0

        def estimate_s(self, n):
            return n / self.rate

    job = Job(FakeAnalyzer(), 500)
    job.ahead = 2
    frac, text = job.status()
    assert frac == 0 and text.startswith("Waiting for the model: 2 other analyses ahead")
    job.started = job.submitted
    frac, text = job.status()
    assert 0 <= frac <= 0.95 and text.startswith("Analysing 500 residues: about 5 s in all")


@pytest.mark.slow
def test_a_cancelled_analysis_stops_and_frees_the_model(shared):
    """Cancel on a long UniRep analysis: the recurrence stops within a step of 64 residues, the model is
    free again at once for the next analysis."""
    import time

    from esmsae.app.analyze import Analyzer
    from esmsae.lm.base import Cancelled

    an = Analyzer(DEMO / "sae")
    job = an.submit("long", "MKTAYIAKQRQISFVKSHFSRQ" * 200)
    while job.started is None:
        time.sleep(0.01)
    time.sleep(0.2)
    job.cancelled.set()
    t = time.perf_counter()
    assert job.done.wait(30) and isinstance(job.error, Cancelled)
    assert time.perf_counter() - t < 5  # far less than the ~4,400-residue run it cut short
    nxt = an.submit("next", "MKTAYIAKQRQISFVKSHFSRQ")
    assert nxt.done.wait(60) and nxt.error is None and nxt.result.top_features(5).shape[0] > 0


def test_inspector_steer_panel(env):
    """Steer the top feature (clamp to 5 everywhere): the panel shows the check, the steered
    sequence, the delta log-probability heatmap, the moved features and a FASTA download."""
    seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ"
    at = ok(page("inspector"))
    at.text_area(key="seq_text").input(f">q1\n{seq}").run()
    at.button[0].click().run()
    at.number_input(key="steer_value").set_value(5.0)
    at.selectbox(key="steer_kind").set_value("clamp")
    at.button(key="FormSubmitter:steer_form-Steer").click().run()
    assert not at.exception and not at.error
    labels = {m.label: m.value for m in at.metric}
    assert labels["Target fires on the steered sequence"] in ("yes", "no")
    assert labels["Residues changed"].endswith(f"/ {len(seq)}")
    assert len(at.code[0].value) == len(seq) and set(at.code[0].value) <= set("ACDEFGHIKLMNPQRSTVWY")
    assert len(at.get("plotly_chart")) >= 2 and len(at.get("download_button")) >= 2
    # generation with the edit held: 3 seeded designs, each checked by re-embedding
    at.number_input(key="gen_n").set_value(3)
    at.number_input(key="gen_rounds").set_value(2)
    at.button(key="FormSubmitter:generate_form-Generate").click().run()
    assert not at.exception and not at.error
    labels = {m.label: m.value for m in at.metric}
    fired, n = labels["Designs in which the feature fires"].split(" / ")
    assert n == "3" and 0 <= int(fired) <= 3
    designs = at.dataframe[-1].value
    assert len(designs) == 3 and all(len(s) == len(seq) for s in designs["sequence"])
    assert int(designs["feature fires (unmodified model)"].sum()) == int(fired)
    assert ((designs["identity to the seed"] > 0) & (designs["identity to the seed"] <= 1)).all()
    assert "degenerate" in designs.columns and labels["Mean perplexity"] == "not computed"  # not "nan"
    first = list(designs["sequence"])
    at.button(key="FormSubmitter:generate_form-Generate").click().run()  # same seed, same designs
    assert list(at.dataframe[-1].value["sequence"]) == first


def test_inspector_paste_probes(env):
    """What a new user pastes: each is analysed as they meant it, or refused with a reason."""
    at = ok(page("inspector"))
    cases = [
        ("mktayi akq\nrqisf", "query", 14),  # lowercase, spaces and newlines: cleaned
        ("MKTAYIAKQR*", "query", 10),  # a trailing stop
        ("XXXXXXXX", "query", 8),  # unknown residues only: the models accept X
        ("M", "query", 1),  # one residue
        ("MKTAYIAKQR" * 500, "query", 5000),  # longer than the 1,022-residue window: stitched windows
    ]
    for text, name, n in cases:
        at.text_area(key="seq_text").input(text).run()
        at.button[0].click().run()
        assert not at.exception and not at.error, (text[:20], [e.value for e in at.error])
        assert at.caption[0].value.startswith(f"{n} residues"), (text[:20], at.caption[0].value)
    # two records, the same id twice: both offered under distinct names, the second one picked
    at.text_area(key="seq_text").input(">p1\nMKTAYIAKQR\n>p1\nMKVLAAGIVG AL").run()
    at.button[0].click().run()
    sel = at.selectbox(key="inspect_pick")
    assert sel.options == ["p1", "p1 (record 2)"]
    sel.set_value("p1 (record 2)").run()
    assert at.caption[0].value.startswith("12 residues")
    for text, msg in (("MKV-LL", "'-' at position 4"), ("MKV*LL", "'*' at position 4"), ("M" * 5_000_001, "at most")):
        at.text_area(key="seq_text").input(text).run()
        at.button[0].click().run()
        assert not at.exception and msg in at.error[0].value


@pytest.mark.parametrize("text,msg", [("", "empty"), ("MKV1LL", "'1'"), ("M" * 300_000, "at most"),
                                      ("ATGGCTAGCAAAGGAGAAGAACTTTTCACTGGAGTTGTCCCAATTCTT", "nucleotide sequence")])
def test_inspector_bad_input(env, text, msg):
    at = ok(page("inspector"))
    at.text_area(key="seq_text").input(text).run()
    at.button[0].click().run()
    assert not at.exception
    assert msg in at.error[0].value


def test_groups(env):
    at = ok(page("groups"))
    assert "kingdom" in at.selectbox(key="grouping").options
    idx = FeatureIndex(env / "tiny" / "L4_resid" / "index.duckdb")
    for g in at.selectbox(key="grouping").options:
        at.selectbox(key="grouping").set_value(g).run()
        assert not at.exception
        usage = idx.group_usage(g)
        groups = at.selectbox(key="enriched_group").options
        # groups listed by size, largest first
        sizes = usage.groupby("grp")["n_proteins"].first()
        assert [sizes[x] for x in groups] == sorted(sizes.values, reverse=True)
        for grp in groups[:2]:
            at.selectbox(key="enriched_group").set_value(grp).run()
            want = usage[(usage.grp == grp) & (usage.q <= 0.05)].sort_values("log_odds", ascending=False).head(20)
            if want.empty:  # no table, and a line that says why
                assert any(f"No feature is enriched in {grp}" in i.value for i in at.info)
                continue
            got = at.dataframe[0].value
            assert (
                got["feature"].tolist() == want["feature"].tolist()
            )  # the enriched table is exactly the significant rows, by effect
            assert (got["q (FDR)"] <= 0.05).all() and (got["group"] == grp).all()  # readable names
        if len(groups) >= 2:
            cmp_ = at.dataframe[-1].value
            a, b = at.selectbox(key="ga").value, at.selectbox(key="gb").value
            f0 = int(cmp_["feature"].iloc[0])
            fa = usage[(usage.grp == a) & (usage.feature == f0)]["frac"].sum()
            fb = usage[(usage.grp == b) & (usage.feature == f0)]["frac"].sum()
            d = cmp_["difference (A - B)"]
            assert d.iloc[0] == pytest.approx(fa - fb)
            assert abs(d.iloc[0]) == pytest.approx(d.abs().max())


def test_enriched_and_compare_known_answer():
    """The group tables on a usage frame with a known answer (the tiny index has no q < 0.05 feature)."""
    import pandas as pd

    from esmsae.app.groups import compare, enriched, group_heatmap

    rows = []
    for grp, fr in (("A", {0: 0.9, 1: 0.5, 2: 0.1}), ("B", {0: 0.1, 1: 0.5, 2: 0.2})):
        for f, frac in fr.items():
            q = 0.001 if (grp, f) == ("A", 0) else (0.04 if (grp, f) == ("B", 2) else 0.8)
            rows.append(
                {
                    "grp": grp,
                    "feature": f,
                    "n_proteins": 100,
                    "n_fire": int(frac * 100),
                    "frac": frac,
                    "mean_act": frac,
                    "log_odds": {0: 4.4, 1: 0.0, 2: -0.8}[f] * (1 if grp == "A" else -1),
                    "p": q / 3,
                    "q": q,
                }
            )
    usage = pd.DataFrame(rows)
    assert enriched(usage, "A")["feature"].tolist() == [0]
    assert enriched(usage, "B")["feature"].tolist() == [2]
    c = compare(usage, "A", "B")
    assert c["feature"].tolist()[:2] == [0, 2] and c["difference"].iloc[0] == pytest.approx(0.8)
    assert list(group_heatmap(usage, 2).columns) == [0, 2]  # the largest spreads


def test_uploaded_grouping(env, mgen_full, esm2_dir):
    from esmsae.app.analyze import Analyzer, InputError
    from esmsae.app.group_upload import group_usage, read_uploaded_grouping
    from esmsae.core.fasta import read_fasta

    idx = FeatureIndex(env / "tiny" / "L4_resid" / "index.duckdb")
    recs = list(read_fasta(mgen_full))[:12]
    ids = [h.split()[0].split("|")[1] for h, _ in recs]
    tsv = "id\tgroup\n" + "".join(f"{pid}\t{'A' if i < 6 else 'B'}\n" for i, pid in enumerate(ids)) + "NOPE\tA\n"
    groups, unknown = read_uploaded_grouping("g.tsv", tsv.encode(), idx.sequences)
    assert unknown == 1 and sorted(groups) == ["A", "B"] and len(groups["A"]) == 6
    an = Analyzer(env / "tiny" / "L4_resid")
    usage = group_usage(an, groups)
    # brute force: fraction of group A proteins where feature f fires
    f = int(usage.feature.iloc[0])
    with torch.no_grad():
        fires = [
            float(an.sae.encode_dense(an.plm.embed([s], [an.hook])[0][an.hook.name])[:, f].max()) > 0
            for _, s in groups["A"]
        ]
    row = usage[(usage.grp == "A") & (usage.feature == f)]
    assert (row.n_fire.iloc[0] if len(row) else 0) == sum(fires)
    with pytest.raises(InputError, match="none of its"):
        read_uploaded_grouping("g.tsv", b"X1\tA\n", idx.sequences)
    # one usable protein: the page says nothing can be tested (it drew a one-row heatmap and an empty table)
    from esmsae.app.groups import testability_note

    one, _ = read_uploaded_grouping("g.tsv", f"{ids[0]}\tA\nNOPE\tB\n".encode(), idx.sequences)
    sizes = group_usage(an, one).groupby("grp")["n_proteins"].first()
    assert "Only 0 groups here have at least 5 proteins (1 proteins in all)" in testability_note(sizes, 5)
    assert testability_note(pd.Series({"A": 6, "B": 6}), 5) == ""
    with pytest.raises(InputError, match="entry 0"):
        read_uploaded_grouping("g.json", b'{"A": [["MK1", "h"]]}', idx.sequences)


def test_training_page_form_and_validation(env):
    at = ok(page("training"))
    labels = {w.label for w in at.text_input} | {w.label for w in at.number_input} | {w.label for w in at.selectbox}
    for want in (
        "Protein LM",
        "Layer(s)",
        "Hook site",
        "Proteins (FASTA path)",
        "Architecture",
        "Latents (dictionary size)",
        "k (active latents per token)",
        "Learning rate",
        "Training tokens",
        "Batch (tokens per step)",
        "Top examples per feature",
    ):
        assert want in labels  # human labels, generated from the dataclasses (the index stage is configurable too)
    assert not any(
        "." in lab and lab.split(".")[0] in ("model", "hook", "sae", "train") for lab in labels
    )  # no raw field names
    assert at.text_input(key="cfg_train_lr").value == "auto"  # 0 is shown as what it means
    assert "jumprelu" not in at.selectbox(key="cfg_sae_architecture").options  # importable, not trainable
    assert "cfg_eval_seed" not in [w.key for w in at.number_input]  # the pipeline sets it
    for key, bad, msg in (("cfg_hook_layers", "3,x", "Layer(s): expected comma-separated whole numbers, got '3,x'"),
                          ("cfg_train_lr", "fast", "Learning rate: expected a number or 'auto', got 'fast'")):
        at.text_input(key=key).input(bad)
        at.button[0].click().run()
        assert msg in at.error[0].value
        at.text_input(key=key).input("3" if key == "cfg_hook_layers" else "auto")
    at.number_input(key="cfg_sae_k").set_value(-3)
    at.button[0].click().run()
    assert "k (active latents per token): must be" in at.error[0].value  # the form's words, not SAEConfig.k
    assert "SAEConfig" not in at.error[0].value
    at.number_input(key="cfg_sae_k").set_value(8)
    # what the job would reject is refused in the form: a missing file, a file that is not FASTA, a path
    # leading out of the workspace, a layer the model does not have
    for fasta, msg in (("/nonexistent.fasta", "data file not found"), ("/etc/passwd", "is not a FASTA file"),
                       (str(ROOT / "README.md"), "is not a FASTA file"), ("../../../etc/hosts", "leads outside")):
        at.text_input(key="cfg_embed_fasta").input(fasta)
        at.button[0].click().run()
        assert msg in at.error[0].value, (fasta, at.error[0].value)
    at.text_input(key="cfg_embed_fasta").input(str(DEMO / "sample.fasta"))
    assert at.text_input(key="cfg_model_name").value == "unirep1900"  # the demo's LM: runs offline
    at.text_input(key="cfg_hook_layers").input("99")
    at.button[0].click().run()
    assert "Layer(s): 99 does not exist in unirep1900 (site resid: layers 1..1)" in at.error[0].value
    at.text_input(key="cfg_hook_layers").input("1")
    for bad in ("../escape", "../../etc", "; rm -rf ~"):
        at.text_input(key="run_name").input(bad)
        at.button[0].click().run()
        assert f"run name {bad!r}" in at.error[0].value
    assert not any(env.glob("escape*")) and not (env.parent / "escape").exists()


def test_no_runs_message(monkeypatch, tmp_path):
    monkeypatch.setenv("ESMSAE_WORKSPACE", str(tmp_path / "empty"))
    monkeypatch.setenv("ESMSAE_DEMO", str(tmp_path / "none"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and "No SAE runs" in at.sidebar.warning[0].value


def test_structure_parsing_and_html(shared):
    text = (shared / "structures" / "foldseek" / "1tim.pdb").read_text()
    chains = parse_structure(text, "pdb")
    seq, resi = chains["A"]
    assert len(seq) == len(resi) > 200
    html = structure_html(text, "pdb", "A", resi, np.linspace(0, 1, len(resi)), 1.0)
    assert "/app/static/3Dmol-min.js" in html and "colorfunc" in html
    with pytest.raises(ValueError, match="empty|no protein|no models|could not read"):
        parse_structure("garbage\n", "pdb")
    t = track_html("MKV", [1], [0.5], 1.0)
    assert 'title="K2: 0.500"' in t and t.count("<span") == 3


@pytest.mark.skipif(not (DEMO / "index.duckdb").exists(), reason="demo bundle not built")
def test_demo_bundle_pages(monkeypatch):
    monkeypatch.delenv("ESMSAE_DEMO", raising=False)
    monkeypatch.chdir(ROOT)
    runs = list_runs()
    assert runs[0].name == "demo"
    con = duckdb.connect(str(DEMO / "index.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM proteins").fetchall()[0][0] >= 10000
    for name in ("overview", "features", "groups", "training"):
        at = ok(page(name))
        if name == "overview":  # the LM line: what the model is, next to its bigram and unigram controls
            lm = [i.value for i in at.info if i.value.startswith("Protein LM: UniRep")]
            assert lm and "for a bigram" in lm[0] and "residue frequencies alone" in lm[0], [i.value for i in at.info]
    f = con.execute("SELECT feature FROM features ORDER BY best_f1 DESC LIMIT 1").fetchall()[0][0]
    at = ok(page("features", feature=str(f)))
    assert at.title[0].value.startswith(f"Feature {f}")
    # the demo's feature page: a sequence logo of the top examples (logomaker), links out for UniProt
    # proteins, readable tables with no "nan"/"None" cells, and the match rate's verdict against chance
    at.toggle(key="show_logo").set_value(True).run()
    assert at.get("image"), "no sequence logo"
    htmls = [h.proto.body for h in at.get("html")]
    assert len(htmls) == 1  # the 20 examples are one element (60 separate ones cost the browser most of the load)
    assert "https://www.uniprot.org/uniprotkb/" in htmls[0] and "https://alphafold.ebi.ac.uk/entry/" in htmls[0]
    assert htmls[0].count('class="esmsae-track"') >= 1  # one track per top example (4 for this feature)
    # the labels under each track (label_spans): the protein's own labels on the activation's axis
    lanes = [h for h in htmls if "esmsae-lanes" in h]
    assert lanes and "activation" in lanes[0], "no label lanes under the top examples"
    md, frames, caps = "", [], ""
    for tab in FEATURE_TABS:  # tabs are lazy: open each one
        at = ok(page("features", feature=str(f), tab=tab))
        md += " ".join(m.value for m in at.markdown)
        caps += " ".join(c.value for c in at.caption)
        frames += at.get("iframe")
        for d in at.dataframe:
            v = d.value
            assert not {"grp", "n_fire", "frac", "log_odds", "other_sae", "match_rate_live"} & set(v.columns), v.columns
            assert not v.astype(str).isin(["nan", "None", "NaN"]).any().any(), v.columns
    assert ("above chance" in md or "at chance" in md) and "untrained SAE of the same shape" in md
    assert frames, "the Structure tab shows no structure for the demo's best feature"
    # related features within this SAE (decoder cosine), and the unbundled second seed said to be unbundled
    assert "Related features in this SAE" in md and "cannot be opened" in caps


def test_pages_open_an_index_with_no_concepts_groups_or_structures(tmp_path, plain_run, monkeypatch):
    """The README's simplest index (no --concepts, no groups, no structures) opens on every page."""
    import shutil

    ws = tmp_path / "ws"
    ck = ws / "plain" / "L4_resid"
    shutil.copytree(plain_run, ck)
    monkeypatch.setenv("ESMSAE_WORKSPACE", str(ws))
    monkeypatch.setenv("ESMSAE_DEMO", str(tmp_path / "no-demo"))
    monkeypatch.chdir(ROOT)
    for name in ("overview", "features", "groups", "inspector"):
        ok(page(name))
    f = int(
        FeatureIndex(ck / "index.duckdb").q("SELECT feature FROM features WHERE NOT dead LIMIT 1")["feature"].iloc[0]
    )
    for tab in FEATURE_TABS:
        ok(page("features", feature=str(f), tab=tab))
