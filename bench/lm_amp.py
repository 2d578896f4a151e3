"""Masked-LM training-step throughput of the ESM-2 8M architecture: float32 vs bf16 autocast.

Backs the README figure for `train-lm --amp bfloat16`. Both modes run in this one process
on the same batch; the result is the ratio of median step times (these machines are noisy).
Writes bench/results/lm_amp.json.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a bench measures the dtype it names, also where the CPU only emulates bf16 (esmsae.core.precision)
os.environ.setdefault("ESMSAE_KEEP_DTYPE", "1")
from esmsae.core.paths import shared_data  # noqa: E402
from esmsae.lm.plm import make_esm2_model  # noqa: E402

CONFIG = shared_data() / "esm2_t6_8M_config"


def main(repeats: int = 5, batch: int = 64, length: int = 256) -> dict:
    model = make_esm2_model(CONFIG)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(4, 24, (batch, length), generator=torch.Generator().manual_seed(0))
    out = {"batch": batch, "length": length, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "repeats": repeats}
    for mode in ("float32", "bfloat16"):
        times = []
        for i in range(repeats + 1):  # first step is warm-up
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bfloat16"):
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), x.view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
        out[f"{mode}_tokens_per_s"] = batch * length / statistics.median(times)
    out["bf16_speedup"] = out["bfloat16_tokens_per_s"] / out["float32_tokens_per_s"]
    res = ROOT / "bench" / "results" / "lm_amp.json"
    res.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
