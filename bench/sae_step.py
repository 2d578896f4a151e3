"""One SAE implementation's TopK training step, timed on an activation file (run by
bench/train_throughput.py in esmsae's venv and in the peer's own venv, so each side imports
only its own package). Prints one JSON line."""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

NORM = "none"  # the same raw activations for both sides


def make(impl: str, d: int, n_latents: int, k: int, sample: torch.Tensor, precision: str = "float32",
         normalize: str = NORM):
    if impl == "esmsae":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from esmsae.config import SAEConfig
        from esmsae.sae.model import SAE

        sae = SAE(SAEConfig(architecture="topk", n_latents=n_latents, k=k, normalize=normalize), d, seed=0)
        sae.fit_normalization(sample)  # b_dec = data mean, as esmsae's trainer (and sparsify's) do
        sae.set_train_dtype(precision)  # "bfloat16": `train --precision bfloat16` (fp32 master weights)

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
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="esmsae only")
    ap.add_argument("--curve", type=int, default=0,
                    help="instead: train through --acts in file order for --train-tokens, evaluating the held-out "
                         "FVU on --heldout every N steps (untimed); prints the curve")
    ap.add_argument("--heldout", default="", help=".npy held-out activations for --curve")
    ap.add_argument("--warmup-steps", type=int, default=32, help="--curve: linear lr warm-up, then constant")
    ap.add_argument("--recipe", choices=("adam", "signum"), default="adam", help="--curve: see curve()")
    ap.add_argument("--autocast-bf16", action="store_true", help="--curve: CPU bf16 autocast around the forward")
    ap.add_argument("--stop-below", type=float, default=0.0, help="--curve: stop at the first FVU at or below this")
    ap.add_argument("--normalize", default=NORM, help="esmsae only: SAEConfig.normalize")
    ap.add_argument("--lr", type=float, default=0.0, help="--curve, esmsae only: instead of the default learning rate")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.curve:
        return curve(a)
    X = torch.from_numpy(np.load(a.acts)).float()
    n_hold = min(20_000, len(X) // 5)
    held, train = X[:n_hold], X[n_hold:]
    d = X.shape[1]
    # the step mode honours --precision too (it trained fp32 whatever was asked: issue 34)
    sae, loss_fn, post, after = make(a.impl, d, a.n_latents, a.k, train[:8192], a.precision)
    lr = 2e-4 / (a.n_latents / 2**14) ** 0.5  # both trainers' default (Gao et al. 2024)
    # --adam own: each side's own trainer's choice (esmsae: fused kernel; sparsify's trainer:
    # torch.optim.Adam defaults, i.e. foreach). --adam fused: the fused kernel on both sides.
    fused = a.adam == "fused" or (a.adam == "own" and a.impl == "esmsae")  # SAELens' trainer: torch Adam defaults too
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10, fused=fused)
    dead = torch.zeros(a.n_latents, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)

    def step(x):
        return _step(loss_fn, opt, post, after, x, dead)

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
                "precision": a.precision if a.impl == "esmsae" else "float32",
                "median_step_s": med,
                "tokens_per_s": a.batch / med,
                "steps": a.steps,
                "adam_fused": fused,
            }
        )
    )


def _step(loss_fn, opt, post, after, x, dead, amp=None) -> float:
    """One optimiser step, the same for both trainers: loss (under `amp` if given), backward, the
    trainer's gradient hook (`post`), the update, its post-update hook (`after`); returns the batch FVU."""
    with amp if amp is not None else contextlib.nullcontext():
        loss, fvu = loss_fn(x, dead)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    post()
    opt.step()
    after()
    return float(fvu.detach())


def _heldout_fvu(impl: str, sae, held: torch.Tensor) -> float:
    sae.eval()
    with torch.no_grad():
        if impl.startswith("saelens"):
            rec = sae(held)
        else:
            rec = torch.cat([sae(h).sae_out if impl != "esmsae" else sae(h).recon_BD for h in held.split(4096)])
        fvu = float((rec - held).pow(2).sum(-1).mean() / (held - held.mean(0)).pow(2).sum(-1).mean())
    sae.train()
    return fvu


def curve(a) -> None:
    """Time to quality (bench/time_to_quality.py): one pass in file order (the file is pre-shuffled),
    training time only (the held-out evaluations are not timed), the FVU every ``a.curve`` steps.

    ``--recipe adam``: Adam at the Gao et al. learning rate, linear warm-up then constant, decoder rows
    re-normalised after each step; AuxK off (no latent is marked dead: sparsify's default auxk_alpha
    is 0, and esmsae's 1 M-token dead window would only start to count at the end of the run): esmsae's trainer, and
    sparsify stepped the same way.
    ``--recipe signum``: for sparsify its 1.3.3 default trainer recipe, SignSGD wrapped in
    schedule-free (momentum 0.95) at lr 5e-3 / sqrt(latents / 2^14), no AuxK (auxk_alpha = 0), the
    gradient along decoder rows removed but no per-step re-normalisation; evaluated with the
    schedule-free averaged weights (``optimizer.eval()``), as its checkpoints are saved; for esmsae
    ``train --optimizer signum`` (esmsae.sae.optim: the same recipe, AuxK off here as on the other side)."""
    X = np.load(a.acts, mmap_mode="r")  # float16 [N, d]: read a batch at a time, bounded memory
    held = torch.from_numpy(np.load(a.heldout).astype(np.float32))
    d = X.shape[1]
    sample = torch.from_numpy(np.asarray(X[:8192], dtype=np.float32))
    sae, loss_fn, post, after = make(a.impl, d, a.n_latents, a.k, sample, a.precision, a.normalize)
    fused = a.adam == "fused" or a.impl == "esmsae"
    if a.recipe == "signum" and a.impl == "esmsae":  # `train --optimizer signum`: esmsae.sae.optim
        from esmsae.sae.optim import averaged_copy, default_lr, make_optimizer

        base_lr = a.lr or default_lr("signum", a.n_latents)
        opt = make_optimizer("signum", sae.parameters(), base_lr)

        def after():  # noqa: F811 -- no per-step decoder re-normalisation under schedule-free
            pass
    elif a.recipe == "signum":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        base_lr = 5e-3 / (a.n_latents / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=base_lr)]), momentum=0.95)
        opt.train()

        def loss_fn(x, dead):  # noqa: F811 -- auxk_alpha = 0: the loss is the FVU alone
            o = sae(x, dead_mask=None)
            return o.fvu, o.fvu

        def after():  # noqa: F811 -- sparsify 1.3.3 no longer re-normalises the decoder every step
            pass
        fused = False
    else:
        base_lr = 2e-4 / (a.n_latents / 2**14) ** 0.5  # both trainers' default (Gao et al. 2024)
        opt = torch.optim.Adam(sae.parameters(), lr=base_lr, eps=6.25e-10, fused=fused)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast_bf16)
    dead = torch.zeros(a.n_latents, dtype=torch.bool)

    def evaluate() -> float:
        if a.recipe == "signum" and a.impl == "esmsae":  # the averaged weights, as a checkpoint saves them
            return _heldout_fvu(a.impl, averaged_copy(sae, opt), held)
        if a.recipe == "signum":
            opt.eval()
        f = _heldout_fvu(a.impl, sae, held)
        if a.recipe == "signum":
            opt.train()
        return f

    steps = min(a.train_tokens, len(X)) // a.batch
    points, t_train = [{"step": 0, "tokens": 0, "train_s": 0.0, "fvu": round(evaluate(), 5)}], 0.0
    for s in range(steps):
        t = time.perf_counter()
        x = torch.from_numpy(np.asarray(X[s * a.batch:(s + 1) * a.batch], dtype=np.float32))
        if a.recipe != "signum":
            for g in opt.param_groups:
                g["lr"] = base_lr * min(1.0, (s + 1) / a.warmup_steps)
        _step(loss_fn, opt, post, after, x, dead, amp)
        t_train += time.perf_counter() - t
        if (s + 1) % a.curve == 0 or s + 1 == steps:
            points.append({"step": s + 1, "tokens": (s + 1) * a.batch, "train_s": round(t_train, 3),
                           "fvu": round(evaluate(), 5)})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
            if a.stop_below and points[-1]["fvu"] <= a.stop_below:
                break
    print(json.dumps({"impl": a.impl, "recipe": a.recipe, "precision": a.precision, "normalize": a.normalize,
                      "autocast_bf16": a.autocast_bf16, "adam_fused": fused, "batch": a.batch,
                      "n_latents": a.n_latents, "k": a.k, "d_in": d, "threads": a.threads, "base_lr": base_lr,
                      "warmup_steps": a.warmup_steps, "curve": points}))


if __name__ == "__main__":
    main()
