"""Bad input, as a new user gives it: each answer names the problem, and nothing already written is lost."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esmsae.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO_LM = ROOT / "data" / "esm_lm" / "model"


def test_empty_fasta_is_an_error_and_leaves_no_store(tmp_path, capsys):
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    assert (
        main(["embed", "--model", str(DEMO_LM), "--fasta", str(empty), "--store", str(tmp_path / "s"), "--layers", "3"])
        == 2
    )
    err = capsys.readouterr().err
    assert "empty.fasta: no proteins to embed" in err and not (tmp_path / "s").exists()
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nMK1V\n>b\nJJJ\n")
    assert main(["embed", "--model", str(DEMO_LM), "--fasta", str(bad), "--store", str(tmp_path / "s"), "--layers", "3",
                 "--on-invalid", "skip"]) == 2
    assert "every record was invalid and skipped (2" in capsys.readouterr().err


DNA = "ATGGCTAGCAAAGGAGAAGAACTTTTCACTGGAGTTGTCCCAATTCTTGTTGAATTAGATGGTGATGTTAATGGGCACAAATTTTCTGTC"  # GFP's start


def test_a_nucleotide_fasta_is_refused_by_embed_and_the_inspector(tmp_path, capsys):
    """DNA pasted or given as protein is refused (it was analysed as 90 'residues', and embed exited 0), while
    a protein made of few residue types (A and C only) is still a protein."""
    from esmsae.app.analyze import InputError, parse_input

    dna = tmp_path / "gfp_cds.fasta"
    dna.write_text(f">gfp_cds\n{DNA}\n")
    assert main(["embed", "--model", str(DEMO_LM), "--fasta", str(dna), "--store", str(tmp_path / "s"),
                 "--layers", "3"]) == 2
    err = capsys.readouterr().err
    assert "record 'gfp_cds': this looks like a nucleotide sequence (90 letters" in err, err
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError, match="looks like a nucleotide sequence"):
        parse_input(DNA.lower())
    assert parse_input("AC" * 60)[0][1] == "AC" * 60


def test_windows_line_endings_read_like_unix(tmp_path):
    crlf = tmp_path / "crlf.fasta"
    crlf.write_bytes(b">p1 test\r\nMKTAYIAK\r\nQRQISF\r\n>p2\r\nMKV\r\n")
    from esmsae.core.fasta import read_proteins

    assert [(p.id, p.sequence) for p in read_proteins(crlf)] == [("p1", "MKTAYIAKQRQISF"), ("p2", "MKV")]


def test_truncated_checkpoint_names_the_file(tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(ROOT / "data" / "esm_lm" / "sae", ck, ignore=shutil.ignore_patterns("eval.json"))
    w = ck / "sae.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    from esmsae.published.load import load_sae

    with pytest.raises(ValueError, match=r"sae\.safetensors cannot be read \(truncated or corrupt\?\)"):
        load_sae(ck)
    assert main(["export", str(ck), "--format", "saelens", "--out", str(tmp_path / "o")]) == 2
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("args, want", [
    (["--lr", "nan"], "TrainConfig.lr: must be a finite number"),
    (["--lr", "inf"], "TrainConfig.lr: must be a finite number"),
    (["--k", "-3"], "SAEConfig.k"),
    (["--k", "99999"], "SAEConfig.k"),
    (["--token-budget", "0"], "TrainConfig.token_budget"),
])
def test_training_options_are_checked(tmp_path, capsys, args, want):
    assert main(["train", "--store", str(tmp_path / "nostore"), "--out", str(tmp_path / "o"), *args]) == 2
    assert want in capsys.readouterr().err


def test_a_bad_layer_list_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--fasta", "x.fasta", "--store", str(tmp_path / "s"), "--layers", "3,x"])
    assert "expected comma-separated integers, got '3,x'" in capsys.readouterr().err
    from esmsae.config import ConfigError
    from esmsae.config.fields import parse_int_list

    with pytest.raises(ConfigError, match="hook.layers: expected comma-separated whole numbers, got '3,x'"):
        parse_int_list("3,x", "hook.layers")


def test_stale_index_scratch_of_a_killed_indexer_is_swept(tmp_path):
    from esmsae.index.build import _sweep_stale_scratch

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that no longer runs, as after kill -9
    stale = tmp_path / f"esmsae_index_{p.pid}_abc"
    live = tmp_path / f"esmsae_index_{os.getpid()}_def"
    for d in (stale, live):
        d.mkdir()
        (d / "tracks.bin").write_bytes(b"x")
    _sweep_stale_scratch(tmp_path)
    assert not stale.exists() and live.exists()


def test_a_copied_checkpoint_says_where_its_relative_model_went(tmp_path):
    from esmsae.sae.checkpoint import model_config_of, read_cfg

    ck = tmp_path / "elsewhere" / "sae"
    shutil.copytree(ROOT / "data" / "esm_lm" / "sae", ck)
    with pytest.raises(FileNotFoundError, match=r"relative to its own folder \('\.\./model'\).*copy the model folder"):
        model_config_of(read_cfg(ck))
    # with the model folder beside it, as in the bundle, it resolves; naming a model always works
    shutil.copytree(ROOT / "data" / "esm_lm" / "model", tmp_path / "elsewhere" / "model")
    assert model_config_of(read_cfg(ck)).name == str((tmp_path / "elsewhere" / "model").resolve())
    assert model_config_of(read_cfg(ck), "facebook/esm2_t6_8M_UR50D").name == "facebook/esm2_t6_8M_UR50D"


@pytest.mark.parametrize("extra, want", [
    (["--layers", "9"], "layer 9 with site 'resid' does not exist"),
    (["--layers", "0", "--site", "mlp"], "HookConfig.layers: site 'mlp' has no layer 0"),
])
def test_embed_layer_problems_are_named(tmp_path, capsys, mgen_fasta, extra, want):
    assert (
        main(["embed", "--model", str(DEMO_LM), "--fasta", str(mgen_fasta), "--store", str(tmp_path / "s"), *extra])
        == 2
    )
    assert want in capsys.readouterr().err


def test_site_typo_and_unwritable_output_are_named(tmp_path, capsys, mgen_fasta):
    with pytest.raises(SystemExit):
        main(["embed", "--fasta", str(mgen_fasta), "--store", str(tmp_path / "s"), "--site", "mpl"])
    assert "invalid choice: 'mpl'" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert (
        main(
            [
                "embed",
                "--model",
                str(DEMO_LM),
                "--fasta",
                str(mgen_fasta),
                "--store",
                str(blocker / "store"),
                "--layers",
                "3",
            ]
        )
        == 2
    )
    assert str(blocker / "store") in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_the_model(tmp_path, capsys, mgen_fasta, esmc_file):
    # the demo SAE (d_in 320) on a 128-wide ESM C: refused before anything is written
    assert (
        main(
            [
                "index",
                "--sae",
                str(ROOT / "data" / "esm_lm" / "sae"),
                "--fasta",
                str(mgen_fasta),
                "--model",
                str(esmc_file),
                "--out",
                str(tmp_path / "i.duckdb"),
            ]
        )
        == 2
    )
    assert "SAE d_in is 320 but" in capsys.readouterr().err and not (tmp_path / "i.duckdb").exists()


@pytest.mark.slow
def test_kill_9_of_the_indexer_keeps_the_old_index_and_leaves_no_scratch(tmp_path, tiny_sae, mgen_full):
    import signal
    import time

    from esmsae.index.reader import FeatureIndex

    out = tmp_path / "idx" / "index.duckdb"
    small = tmp_path / "small.fasta"
    small.write_text("".join(line for i, line in enumerate(open(mgen_full)) if i < 10))
    base = ["index", "--sae", str(tiny_sae), "--out", str(out), "--umap", "false"]
    assert main([*base, "--fasta", str(small)]) == 0
    assert FeatureIndex(out).meta["n_proteins"] == 5
    # a rebuild over more proteins, killed with SIGKILL while it writes
    big = tmp_path / "big.fasta"
    big.write_text(open(mgen_full).read() * 1)
    p = subprocess.Popen(
        [sys.executable, "-m", "esmsae", *base, "--fasta", str(big), "--batch-tokens", "256"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tmp_db = out.with_name(out.name + ".tmp")
    for _ in range(600):
        if tmp_db.exists():
            break
        time.sleep(0.05)
    time.sleep(0.2)  # the half-written database exists: kill it mid-write
    assert p.poll() is None, "the rebuild finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert FeatureIndex(out).meta["n_proteins"] == 5  # the old index, whole and readable
    assert not list(out.parent.glob("esmsae_index_*"))  # no scratch folder behind
    assert main([*base, "--fasta", str(small)]) == 0 and not tmp_db.exists()  # a rerun cleans the half database up


def test_wrong_files_and_places_get_clean_messages(tmp_path, capsys):
    """search on a file that is no index, export over an existing file or into a place that cannot exist,
    evaluate on a bundle folder: one line each, naming the problem, and no scratch folder left behind."""
    from esmsae.app.groups import coverage_note

    assert main(["search", str(ROOT / "README.md"), "zinc"]) == 2
    assert "README.md is not a feature index" in capsys.readouterr().err
    f = tmp_path / "existing"
    f.write_text("x")
    sae = str(ROOT / "data" / "esm_lm" / "sae")
    assert main(["export", sae, "--format", "saelens", "--out", str(f)]) == 2
    assert "is a file: export writes a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no existing.tmp/ with the weights
    assert main(["export", sae, "--format", "saelens", "--out", "/proc/no/such"]) == 2
    err = capsys.readouterr().err
    assert "could not write the exported SAE /proc/no/such" in err and ".tmp" not in err, err
    assert main(["evaluate", str(ROOT / "data" / "demo")]) == 2
    assert "the checkpoint inside it is" in capsys.readouterr().err
    note = coverage_note("embedding cluster", 10, 100)
    assert "--cluster-proteins" in note and "grouping file (--groups)" not in note


def test_an_uncached_hub_model_offline_gets_one_line(tmp_path, capfd, monkeypatch):
    """embed with the default hub model on a machine that cannot reach the hub: one line that says what to do,
    not the hub client's minute of retries with hosts and request ids."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))  # nothing cached
    fa = tmp_path / "a.fasta"
    fa.write_text(">a\nMKTAYIAKQRQISFVKSHF\n")
    assert main(["embed", "--fasta", str(fa), "--store", str(tmp_path / "s"), "--layers", "1"]) == 2
    out = capfd.readouterr()
    err = out.err + out.out
    assert "not in the Hugging Face cache and the hub cannot be reached" in err and "--model unirep1900" in err
    assert "Retrying" not in err and "Request ID" not in err and "huggingface.co'" not in err, err
    assert not (tmp_path / "s").exists()
