"""The commands a user runs that no other test drives: init-model, train-lm and demo, through the CLI."""
import json
from pathlib import Path

import pytest

from esmsae.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO_LM = ROOT / "data" / "esm_lm" / "model"


def test_init_model_writes_a_loadable_esm2(tmp_path, shared, capsys):
    assert (
        main(
            [
                "init-model",
                "--config-dir",
                str(shared / "esm2_t6_8M_config"),
                "--out",
                str(tmp_path / "m"),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert str(tmp_path / "m") in capsys.readouterr().out
    import esmsae

    lm = esmsae.load_model(str(tmp_path / "m"))
    assert (lm.n_layers, lm.d_model) == (6, 320) and lm.embed("MKTAYIAKQR", layer=6).shape == (10, 320)


def test_train_lm_command_reports_masked_perplexity(tmp_path, shared, capsys):
    fa = shared / "af3_samples" / "uniref90__subsampled_1000.fasta"
    args = [
        "train-lm", "--config-dir", str(shared / "esm2_t6_8M_config"), "--out", str(tmp_path / "lm"),
        "--fasta", str(fa), "--crop", "62", "--batch-tokens", "1024", "--token-budget", "5120", "--warmup-steps", "2",
        "--eval-proteins", "20", "--checkpoint-every", "5", "--holdout-fraction", "0.05",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"masked_ppl", "masked_unigram_ppl", "heldout_ppl", "unigram_ppl", "steps"} <= set(out) and out["steps"] == 5
    assert (tmp_path / "lm" / "model.safetensors").exists() and (tmp_path / "lm" / "lm_state.pt").exists()
    # rerunning the finished run resumes at its end instead of starting again
    assert main(args) == 0
    assert len((tmp_path / "lm" / "lm_metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_demo_command_builds_a_bundle_the_app_opens(tmp_path, monkeypatch, capsys):
    """A small demo bundle from the shared data (the committed demo LM instead of training one):
    its checkpoint points at its model by a relative path, and the inspector runs it from there."""
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "demo",
                "--lm-dir",
                str(DEMO_LM),
                "--work",
                str(tmp_path / "work"),
                "--out",
                str(out),
                "--sae-proteins",
                "40",
                "--sae-token-budget",
                "20000",
                "--n-latents",
                "64",
                "--k",
                "4",
                "--index-proteome-sample",
                "20",
                "--labelled-limit",
                "2",
                "--dtype",
                "float32",
                "--probe-proteins",  # the representation card, small (500 a task took 270 s of this test)
                "30",
            ]
        )
        == 0
    )
    report = json.loads((out / "demo.json").read_text())
    assert report["sae"]["l0"] == 4.0 and report["index_meta"]["n_proteins"] > 20
    assert json.loads((out / "sae" / "cfg.json").read_text())["base_model"]["name"] == "../model"
    card = json.loads((out / "sae" / "representation.json").read_text())["rows"]
    assert {r["task"] for r in card} == {"TM helix (TMbed)", "secondary structure (FLIP, 3 states)"}
    assert {"one-hot window +-10 (control)", "SAE codes (64 latents)"} <= {r["representation"] for r in card}
    assert all(r["n_train_proteins"] <= 30 and 0 <= r["value"] <= 1 for r in card)
    from esmsae.app.analyze import Analyzer
    from esmsae.app.runs import list_runs

    runs = list_runs(tmp_path / "no-ws", demo=out)
    assert runs[0].name == "demo" and runs[0].index.exists()
    res = Analyzer(runs[0].sae_dir).run("q", "MKTAYIAKQRQISFVKSHFSRQ")  # the relative model path, resolved
    assert res.acts_LK.shape[0] == 22
