"""One SAE implementation's TopK training step, timed on an activation file (run by
bench/train_throughput.py in esmsae's venv and in the peer's own venv, so each side imports
only its own package). Prints one JSON line."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

NORM = "none"  # the same raw activations for both sides


def make(impl: str, d: int, n_latents: int, k: int, sample: torch.Tensor):
    if impl == "esmsae":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from esmsae.config import SAEConfig
        from esmsae.sae import SAE

        sae = SAE(SAEConfig(architecture="topk", n_latents=n_latents, k=k, normalize=NORM), d, seed=0)
        sae.fit_normalization(sample)  # b_dec = data mean, as esmsae's trainer (and sparsify's) do

        def loss(x, dead):
            o = sae(x, dead_mask_F=dead)
            return o.loss, o.fvu

        def post():
            sae.remove_gradient_parallel_to_decoder()

        def after():
            sae.set_decoder_norm_to_unit()
        return sae, loss, post, after
    if impl.startswith("saelens"):
        # SAELens' TopK training SAE, stepped as its SAETrainer does (training_forward_pass,
        # backward, clip_grad_norm_ 1.0, Adam). "saelens-sparse" sets its
        # use_sparse_activations option (COO latents, "worthwhile in float32" per its docs).
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n_latents, k=k, dtype="float32", device="cpu",
                                                    use_sparse_activations=impl == "saelens-sparse"))
        with torch.no_grad():
            sae.b_dec.copy_(sample.mean(0))

        def loss(x, dead):
            o = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                         n_training_steps=0, is_logging_step=False))
            with torch.no_grad():
                fvu = (o.sae_out - x).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
            return o.loss, fvu

        def post():
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)

        def after():
            pass
        return sae, loss, post, after
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=n_latents, k=k))
    sae.b_dec.data = sample.mean(0)  # sparsify's trainer initialises b_dec to the data mean too

    def loss(x, dead):
        o = sae(x, dead_mask=dead)
        return o.fvu + o.auxk_loss / 32, o.fvu  # auxk_alpha = 1/32, sparsify's default

    def post():
        sae.remove_gradient_parallel_to_decoder_directions()

    def after():
        sae.set_decoder_norm_to_unit_norm()
    return sae, loss, post, after


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=("esmsae", "sparsify", "saelens", "saelens-sparse"), required=True)
    ap.add_argument("--acts", required=True, help=".npy [N, d] float32")
    ap.add_argument("--n-latents", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--train-tokens", type=int, default=0, help="instead: train this many tokens, report held-out FVU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adam", choices=("own", "fused"), default="own")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    X = torch.from_numpy(np.load(a.acts)).float()
    n_hold = min(20_000, len(X) // 5)
    held, train = X[:n_hold], X[n_hold:]
    d = X.shape[1]
    sae, loss_fn, post, after = make(a.impl, d, a.n_latents, a.k, train[:8192])
    lr = 2e-4 / (a.n_latents / 2**14) ** 0.5  # both trainers' default (Gao et al. 2024)
    # --adam own: each side's own trainer's choice (esmsae: fused kernel; sparsify's trainer:
    # torch.optim.Adam defaults, i.e. foreach). --adam fused: the fused kernel on both sides.
    fused = a.adam == "fused" or (a.adam == "own" and a.impl == "esmsae")  # SAELens' trainer: torch Adam defaults too
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10, fused=fused)
    dead = torch.zeros(a.n_latents, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)

    def step(x):
        loss, fvu = loss_fn(x, dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        post()
        opt.step()
        after()
        return float(fvu.detach())

    if a.train_tokens:
        n = 0
        while n < a.train_tokens:
            idx = torch.randint(len(train), (a.batch,), generator=g)
            step(train[idx])
            n += a.batch
        sae.eval()
        with torch.no_grad():
            if a.impl.startswith("saelens"):
                rec = sae(held)
                fvu = float((rec - held).pow(2).sum(-1).mean() / (held - held.mean(0)).pow(2).sum(-1).mean())
            else:
                fvu = float(sae(held).fvu)
        print(json.dumps({"impl": a.impl, "train_tokens": n, "heldout_fvu": fvu}))
        return
    times = []
    for i in range(a.steps + 2):
        idx = torch.randint(len(train), (a.batch,), generator=g)
        x = train[idx]
        t = time.perf_counter()
        step(x)
        if i >= 2:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "impl": a.impl,
                "d_in": d,
                "n_latents": a.n_latents,
                "k": a.k,
                "batch": a.batch,
                "threads": a.threads,
                "median_step_s": med,
                "tokens_per_s": a.batch / med,
                "steps": a.steps,
                "adam_fused": fused,
            }
        )
    )


if __name__ == "__main__":
    main()
