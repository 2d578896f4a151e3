"""One device rule for every stage (auto = CUDA when present): checked on this CPU machine, and
the whole pipeline on CUDA where a GPU exists (the `gpu` marker; skipped elsewhere)."""
import json
import subprocess
import sys

import pytest
import torch

from esmsae.config import ConfigError, IndexConfig, ModelConfig, TrainConfig, resolve_device
from esmsae.core.fasta import read_fasta, write_fasta

HAS_CUDA = torch.cuda.is_available()


def test_device_rule():
    assert resolve_device("auto") == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="gpu0")
    with pytest.raises(ConfigError, match="device"):
        IndexConfig(device="cuda:x")
    if not HAS_CUDA:
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            resolve_device("cuda")
    assert ModelConfig().device == "auto"


def test_a_cuda_run_of_a_checkpoint_loads_on_cpu(tiny_sae, tmp_path):
    """A checkpoint records the device it ran on; loading it never requires that device."""
    import shutil

    from esmsae.sae.checkpoint import model_config_of, read_cfg

    ck = tmp_path / "ck"
    shutil.copytree(tiny_sae, ck)
    cfg = json.loads((ck / "cfg.json").read_text())
    cfg["model_config"]["device"] = "cuda:3"
    (ck / "cfg.json").write_text(json.dumps(cfg))
    assert model_config_of(read_cfg(ck)).device == "auto"


def test_cli_says_when_cuda_is_missing(tmp_path, tiny_sae, mgen_fasta):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esmsae",
            "index",
            "--sae",
            str(tiny_sae),
            "--out",
            str(tmp_path / "i.duckdb"),
            "--fasta",
            str(mgen_fasta),
            "--device",
            "cuda",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "sees no CUDA device" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_pipeline_and_index_on_cuda(tmp_path, shared, esm2_dir):
    """embed -> train -> evaluate -> index on CUDA; the checkpoint then loads and encodes on CPU."""
    fa = write_fasta(
        tmp_path / "p.fasta",
        (
            (h, s)
            for h, s in read_fasta(shared / "af3_samples" / "uniref90__subsampled_1000.fasta")
            if 50 <= len(s) <= 300
        ),
        limit=200,
    )
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esmsae",
            "pipeline",
            "--fasta",
            str(fa),
            "--model",
            str(esm2_dir),
            "--layers",
            "3",
            "--out",
            str(out),
            "--n-latents",
            "256",
            "--k",
            "8",
            "--token-budget",
            "100000",
            "--batch-size",
            "1024",
            "--holdout-fraction",
            "0.1",
            "--lm-proteins",
            "8",
            "--device",
            "cuda",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / "L3_resid" / "eval.json").read_text())
    assert card["fvu"] < 1 and "masked" in card["downstream"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esmsae",
            "index",
            "--sae",
            str(out / "L3_resid"),
            "--out",
            str(tmp_path / "i.duckdb"),
            "--fasta",
            str(fa),
            "--device",
            "cuda",
            "--no-umap",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from esmsae.published.load import load_sae

    sae = load_sae(out / "L3_resid")
    assert sae.W_dec.device.type == "cpu" and sae.encode_dense(torch.randn(3, sae.d_in)).shape == (3, 256)
