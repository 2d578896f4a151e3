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
                "--cross-seed-tokens",  # the second-seed SAE on the demo SAE's own 20,000 tokens, not 3 M
                "0",
                "--lm-eval-proteins",
                "20",
                "--train-limit",  # the learned window baselines on a few train-side proteins per source
                "15",
                "--check-proteins",  # the external check and the SCOP class test, small
                "40",
            ]
        )
        == 0
    )
    report = json.loads((out / "demo.json").read_text())
    assert report["sae"]["l0"] == 4.0 and report["index_meta"]["n_proteins"] > 20
    assert json.loads((out / "sae" / "cfg.json").read_text())["base_model"]["name"] == "../model"
    card = json.loads((out / "sae" / "representation.json").read_text())["rows"]
    assert {r["task"] for r in card} == {"TM helix (TMbed)", "TMbed inside (membrane proteins)",
                                         "TMbed outside (membrane proteins)", "signal peptide (TMbed)",
                                         "secondary structure (FLIP, 3 states)"}
    reps = {r["representation"] for r in card}
    assert {"one-hot window +-10 (control)", "one-hot left window 20 (control)", "SAE codes (64 latents)",
            "SAE codes: best 4 features (sparse probe)"} <= reps
    assert all(r["fit_grad_max"] < 1e-2 for r in card)  # converged
    ext = json.loads((out / "sae" / "external.json").read_text())["rows"]
    assert ext and all(r["n_fragments"] == 40 and 0 <= r["f1"] <= 1 for r in ext)
    assert (out / "sae" / "protein_concepts.json").exists()
    assert all(r["n_train_proteins"] <= 30 and 0 <= r["value"] <= 1 for r in card)
    from esmsae.app.analyze import Analyzer
    from esmsae.app.runs import list_runs

    runs = list_runs(tmp_path / "no-ws", demo=out)
    assert runs[0].name == "demo" and runs[0].index.exists()
    res = Analyzer(runs[0].sae_dir).run("q", "MKTAYIAKQRQISFVKSHFSRQ")  # the relative model path, resolved
    assert res.acts_LK.shape[0] == 22


def test_every_option_is_generated_from_one_declaration():
    """cli.py holds no per-option code: every option of every command is a field of a config dataclass
    named in the command table (docs/cli.md is what the parser prints: tests/test_docs.py)."""
    import argparse
    import ast
    import dataclasses

    from esmsae import cli

    tree = ast.parse((ROOT / "esmsae" / "cli.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "add_argument"]
    assert calls == [], "cli.py adds options by hand"
    subs = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == set(cli.BY_NAME)
    for name, sub in subs.choices.items():
        cmd = cli.BY_NAME[name]
        declared = {f.name for _, cls, _ in cmd.sections for f in dataclasses.fields(cls)}
        declared |= {f.name for cls in cmd.args for f in dataclasses.fields(cls)}
        dests = {a.dest for a in sub._actions if a.dest != "help"}
        assert dests <= declared, (name, dests - declared)


def test_a_command_option_is_validated_by_its_dataclass(capsys):
    assert main(["steer", "x", "--sequence", "MKV", "--feature", "1", "--mask-frac", "2"]) == 2
    assert "SteerArgs.mask_frac: must be in (0, 1], got 2.0" in capsys.readouterr().err
    assert main(["steer", "x", "--sequence", "MKV", "--feature", "-1"]) == 2
    assert "SteerArgs.feature: must be >= 0, got -1" in capsys.readouterr().err


def test_the_esmsae_console_script_runs():
    """`make venv` installs esmsae itself (editable), so `esmsae index ...` works as InterPLM and SAELens users
    expect; the script is the same CLI as python -m esmsae."""
    import subprocess
    import sys

    script = Path(sys.executable).parent / "esmsae"
    assert script.exists(), f"no console script at {script}: the set-up must `pip install -e .`"
    p = subprocess.run([str(script), "index", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage: esmsae index" in p.stdout, p.stderr[-500:]
