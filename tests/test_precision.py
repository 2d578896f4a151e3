"""bf16 only where the device runs it natively: an AVX2-only CPU emulates bf16 matmuls about 40x
slower than fp32, so a requested bf16 becomes fp32 there (esmsae.core.precision)."""
from __future__ import annotations

import warnings

import pytest
import torch

from esmsae.config import ModelConfig, SAEConfig
from esmsae.core import precision
from esmsae.lm.plm import load_plm
from esmsae.sae.model import SAE


@pytest.fixture
def emulating_cpu(monkeypatch):
    """A CPU without native bf16/fp16 matmuls, whatever this machine has."""
    monkeypatch.setattr(precision, "cpu_native", lambda dtype: dtype not in precision.REDUCED)
    monkeypatch.delenv("ESMSAE_KEEP_DTYPE", raising=False)
    precision._warn_once.cache_clear()
    yield
    precision._warn_once.cache_clear()


def test_reduced_precision_falls_back_to_fp32_on_an_emulating_cpu(emulating_cpu, monkeypatch):
    with pytest.warns(RuntimeWarning, match="no native bfloat16 matmul"):
        assert precision.usable_dtype("bfloat16", "cpu", "test") == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per dtype and purpose, not on every batch
        assert precision.usable_dtype("bfloat16", "cpu", "test") == "float32"
        assert precision.usable_dtype("float32", "cpu") == "float32"
        assert precision.usable_dtype("bfloat16", torch.device("cuda")) == "bfloat16"  # GPUs: as asked
    with pytest.warns(RuntimeWarning, match="float16"):
        assert precision.usable_dtype("float16", "cpu", "test") == "float32"
    monkeypatch.setenv("ESMSAE_KEEP_DTYPE", "1")
    assert precision.usable_dtype("bfloat16", "cpu") == "bfloat16"


def test_auto_training_precision_is_bf16_only_where_native(emulating_cpu, monkeypatch):
    """`train --precision auto` (the default) becomes float32 on a CPU that would emulate bf16, with no
    warning (nothing was asked for), and bfloat16 on one that has it."""
    from esmsae.config import TrainConfig

    assert TrainConfig().precision == "auto" and TrainConfig().optimizer == "signum"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.native_precision("cpu") == "float32"
    monkeypatch.setattr(precision, "cpu_native", lambda dtype: True)
    assert precision.native_precision("cpu") == "bfloat16"


def test_model_and_sae_run_fp32_when_bf16_would_be_emulated(emulating_cpu, esm2_dir):
    with pytest.warns(RuntimeWarning, match="protein LM"):
        plm = load_plm(ModelConfig(name=str(esm2_dir), dtype="bfloat16"))
    assert plm.dtype == torch.float32
    assert {p.dtype for p in plm.model.parameters()} == {torch.float32}
    sae = SAE(SAEConfig(d_in=16, n_latents=64, k=4))
    with pytest.warns(RuntimeWarning, match="SAE"):
        sae.set_train_dtype("bfloat16").set_encode_dtype(torch.bfloat16)
    assert sae.train_dtype is None and sae.encode_dtype is None


def test_native_check_is_the_machines_own():
    """On this machine the check agrees with oneDNN's; fp32 is always native."""
    assert precision.cpu_native("float32")
    assert precision.cpu_native("bfloat16") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
