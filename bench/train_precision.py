"""Mixed-precision SAE training at UniRep-1900 width: the esmsae TopK training step (d_in 1900, 16,384
latents, k 32, batch 4,096, fused Adam, 2 threads) in fp32 and with the bf16 encoder matmul
(``--precision bfloat16``), alternating runs on the same 65,536 real UniRep-1900 states from the demo's
activation store, and the held-out FVU each reaches after the same tokens. Usage (after `make demo`
built the store): python bench/train_precision.py [STORE]. Writes bench/results/train_precision.json."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a bench measures the dtype it names, also where the CPU only emulates bf16 (esmsae.core.precision)
os.environ.setdefault("ESMSAE_KEEP_DTYPE", "1")

from esmsae.config import SAEConfig  # noqa: E402
from esmsae.sae.model import SAE  # noqa: E402
from esmsae.sae.train import train_step  # noqa: E402
from esmsae.store.activations import ActivationStore  # noqa: E402

D_LAT, K, B, N_TOK, STEPS, ROUNDS = 16384, 32, 4096, 65_536, 12, 3


def _cpu() -> str:
    try:
        return next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main() -> None:
    default = Path.home() / ".cache" / "esmsae" / "demo_work" / "sae" / "store"
    store = ActivationStore(sys.argv[1] if len(sys.argv) > 1 else default)
    torch.set_num_threads(2)
    name = store.hook_names[0]
    x = torch.as_tensor(store.sample(name, N_TOK, seed=0)).float()
    held = torch.as_tensor(store.sample(name, 16_384, split="heldout", seed=1)).float()
    res: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    fvu: dict[str, float] = {}
    for r in range(ROUNDS):
        for prec in ("float32", "bfloat16"):
            cfg = SAEConfig(architecture="topk", n_latents=D_LAT, k=K, normalize="center_scalar")
            sae = SAE(cfg, x.shape[1], seed=0)
            sae.fit_normalization(x[:16384])
            sae.set_train_dtype(prec).train()
            opt = torch.optim.Adam(sae.parameters(), lr=2e-4, fused=True)
            dead = torch.zeros(D_LAT, dtype=torch.bool)
            train_step(sae, opt, x[:B], dead_mask_F=dead)  # warm-up
            t = time.perf_counter()
            for s in range(STEPS):
                i = (s * B) % (N_TOK - B)
                train_step(sae, opt, x[i:i + B], dead_mask_F=dead)
            res[prec].append(STEPS * B / (time.perf_counter() - t))
            if r == ROUNDS - 1:
                sae.eval()
                with torch.no_grad():
                    fvu[prec] = float(sae(held).fvu)
            print(prec, round(res[prec][-1]), flush=True)
    med = {p: statistics.median(v) for p, v in res.items()}
    out = {
        "what": "esmsae TopK training step, fp32 vs bf16 encoder matmul (fp32 master weights), real UniRep-1900 states",
        "settings": {"d_in": int(x.shape[1]), "n_latents": D_LAT, "k": K, "batch": B, "threads": 2, "steps": STEPS,
                     "rounds": ROUNDS, "tokens": N_TOK, "store": str(store.path)},
        "tokens_per_s": {p: round(v) for p, v in med.items()},
        "all_runs": {p: [round(v) for v in vs] for p, vs in res.items()},
        "ratio_bf16_vs_fp32": round(med["bfloat16"] / med["float32"], 2),
        "heldout_fvu_after_same_tokens": {p: round(v, 4) for p, v in fvu.items()},
        "machine": _cpu(),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "train_precision.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
