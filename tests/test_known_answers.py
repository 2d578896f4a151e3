"""Known answers for the small rules every run depends on: learning-rate schedule, reconstruction
metrics, option parsing, and training of every architecture through ``train()``."""
import argparse
import json

import pytest
import torch

from esmsae.config import EvalConfig, HookConfig, SAEConfig, TrainConfig
from esmsae.config.fields import add_args, from_args
from esmsae.sae.model import SAE
from esmsae.sae.train import lr_at


def test_learning_rate_schedule():
    t = TrainConfig(token_budget=100 * 10, batch_size=10, warmup_steps=10, decay_start=0.8)
    assert t.total_steps == 100
    got = [lr_at(s, t, 1.0) for s in range(100)]
    assert got[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up to the peak
    assert got[10:80] == pytest.approx([1.0] * 70)  # constant
    assert got[80:] == pytest.approx(
        [(100 - s) / 20 for s in range(80, 100)]
    )  # linear decay: 1.0 at step 80 ... 0.05 at 99
    assert lr_at(100, t, 1.0) == 0.0


def test_reconstruction_metrics_known_answer():
    """An SAE that reconstructs every token as the batch mean has FVU exactly 1; a perfect one 0."""
    from esmsae.sae.evaluate import reconstruction_metrics

    torch.manual_seed(0)
    x = torch.randn(500, 8) * torch.tensor([1, 2, 3, 4, 5, 6, 7, 8.0]) + 3
    sae = SAE(SAEConfig(architecture="topk", n_latents=16, k=1, normalize="none"), 8, seed=0).eval()
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_enc.zero_()
        sae.b_dec.copy_(x.mean(0))  # every reconstruction = the mean
    m = reconstruction_metrics(sae, [x.numpy()])
    assert m["n_tokens"] == 500 and m["fvu"] == pytest.approx(1.0, abs=1e-5)
    assert m["mse"] == pytest.approx(float((x - x.mean(0)).pow(2).mean()), rel=1e-5)
    assert m["dead_fraction"] == 1.0 and m["l0"] == 0.0  # zero pre-activations never fire
    # a perfect dictionary: 8 latents equal to the axes (k = 8), no bias
    sae2 = SAE(SAEConfig(architecture="topk", n_latents=8, k=8, normalize="none"), 8, seed=0).eval()
    with torch.no_grad():
        sae2.W_dec.copy_(torch.eye(8))
        sae2.W_enc.copy_(torch.eye(8))
        sae2.b_dec.zero_()
    xp = x.abs()  # positive inputs: ReLU keeps everything
    m2 = reconstruction_metrics(sae2, [xp.numpy()])
    assert m2["fvu"] == pytest.approx(0.0, abs=1e-10) and m2["l0"] == 8.0 and m2["dead_fraction"] == 0.0


def test_add_args_parses_lists_and_booleans():
    p = argparse.ArgumentParser()
    add_args(p, HookConfig)
    add_args(p, TrainConfig, skip=("layers",))  # both have a `layers` field; the CLI never offers both
    ns = p.parse_args(["--layers", "3, 6", "--use-wandb", "--batch-size", "512"])
    hook, tr = from_args(HookConfig, ns), from_args(TrainConfig, ns)
    assert hook.layers == [3, 6] and tr.use_wandb is True and tr.batch_size == 512 and tr.lr == 0.0
    assert from_args(TrainConfig, p.parse_args(["--use-wandb", "false"])).use_wandb is False
    for bad in (["--layers", "3,x"], ["--use-wandb", "maybe"], ["--batch-size", "1.5"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    # options not given keep the base's values
    base = TrainConfig(lr=0.01, seed=7)
    assert from_args(TrainConfig, p.parse_args([]), base) == base
    assert json.loads(json.dumps(EvalConfig().__dict__)) == EvalConfig().__dict__


@pytest.mark.parametrize("arch", ["relu", "batchtopk"])
def test_train_other_architectures(tmp_path, small_store, arch):
    from esmsae.published.load import load_sae
    from esmsae.sae.evaluate import evaluate
    from esmsae.sae.train import train

    (d,) = train(
        TrainConfig(
            store=str(small_store),
            out=str(tmp_path),
            layers=[4],
            token_budget=120_000,
            batch_size=512,
            seed=0,
            l1_warmup_steps=20,
            checkpoint_every=1000,
        ),
        SAEConfig(architecture=arch, n_latents=128, k=8, l1_coef=0.01),
        progress=False,
    )
    sae = load_sae(d)
    meta = sae.meta
    # BatchTopK is saved as JumpReLU with its learned threshold (SAELens does the same)
    assert meta["sae"]["architecture"] == ("jumprelu" if arch == "batchtopk" else arch)
    card = evaluate(d, EvalConfig(lm_proteins=0))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["fvu"] < 0.8 * rows[0]["fvu"]  # it learned
    assert card["fvu"] < 0.5
    if arch == "batchtopk":
        th = sae.threshold  # one threshold per latent, all the learned BatchTopK threshold
        assert meta["trained_as"].startswith("batchtopk") and th.shape == (128,) and bool((th == th[0]).all())
        assert float(th[0]) > 0 and 2 <= card["l0"] <= 24  # inference threshold keeps about k per token
    else:
        assert card["l0"] < 128 * 0.9  # the L1 penalty keeps codes sparse


def test_jumprelu_is_refused_by_train(tmp_path, small_store):
    from esmsae.sae.train import TrainError, train

    with pytest.raises(TrainError, match="can be imported"):
        train(
            TrainConfig(store=str(small_store), out=str(tmp_path), layers=[4]),
            SAEConfig(architecture="jumprelu", n_latents=16, k=0),
        )


@pytest.mark.slow
def test_bf16_mixed_precision_training_matches_fp32(tmp_path, small_store, keep_dtype):
    """Mixed precision (bf16 encoder matmul, fp32 master weights, Adam, top-k and AuxK) on the same
    tokens and seed ends no more than 2% worse in held-out FVU than fp32 and within 5% either way (on
    this store: 2.1% and 1.3% *lower* on seeds 0 and 1, where two fp32 seeds differ by 14%), with dead
    latents within 3% of the dictionary (57 vs 65 of 512 here); the run records its precision."""
    from esmsae.published.load import load_sae
    from esmsae.sae.evaluate import evaluate
    from esmsae.sae.train import train

    cards, dead = {}, {}
    for prec in ("float32", "bfloat16"):
        (d,) = train(
            TrainConfig(store=str(small_store), out=str(tmp_path / prec), layers=[4], token_budget=200_000,
                        optimizer="adam", batch_size=512, seed=0, precision=prec, checkpoint_every=1000),
            SAEConfig(architecture="topk", n_latents=512, k=16, dead_tokens=20_000),
            progress=False,
        )
        cards[prec] = evaluate(d, EvalConfig(lm_proteins=0))
        rows = [json.loads(x) for x in (tmp_path / prec / "metrics.jsonl").read_text().splitlines()]
        dead[prec] = rows[-1]["dead_frac"] * 512
        assert load_sae(d).meta["train"]["precision"] == prec
    f32, b16 = cards["float32"]["fvu"], cards["bfloat16"]["fvu"]
    assert b16 <= 1.02 * f32 and abs(b16 - f32) / f32 < 0.05, (f32, b16)
    assert abs(dead["bfloat16"] - dead["float32"]) <= 0.03 * 512, dead  # measured: 57 vs 65 of 512 (seed 0)
    assert f32 < 0.5  # both learned
