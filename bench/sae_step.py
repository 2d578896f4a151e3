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
    ap.add_argument("--impl", choices=("esmsae", "sparsify"), required=True)
    ap.add_argument("--acts", required=True, help=".npy [N, d] float32")
    ap.add_argument("--n-latents", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--train-tokens", type=int, default=0, help="instead: train this many tokens, report held-out FVU")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    X = torch.from_numpy(np.load(a.acts)).float()
    n_hold = min(20_000, len(X) // 5)
    held, train = X[:n_hold], X[n_hold:]
    d = X.shape[1]
    sae, loss_fn, post, after = make(a.impl, d, a.n_latents, a.k, train[:8192])
    lr = 2e-4 / (a.n_latents / 2**14) ** 0.5  # both trainers' default (Gao et al. 2024)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
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
        with torch.no_grad():
            if a.impl == "esmsae":
                fvu = float(sae(held).fvu)
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
    print(json.dumps({"impl": a.impl, "d_in": d, "n_latents": a.n_latents, "k": a.k, "batch": a.batch, "threads": a.threads,
                      "median_step_s": med, "tokens_per_s": a.batch / med, "steps": a.steps}))


if __name__ == "__main__":
    main()
