"""Sequence-inspector latency: protein LM + SAE on one 400-residue protein with the demo bundle
(what the app's Analyse button runs after the model is cached). Median of 10 runs after one
warm-up, 2 CPU threads. Writes bench/results/inspector_latency.json."""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from esmsae.app.analyze import Analyzer  # noqa: E402
from esmsae.core.fasta import read_fasta  # noqa: E402
from esmsae.core.paths import shared_data  # noqa: E402

MGEN = shared_data() / "uniprot" / "mgenitalium" / "mgenitalium.fasta"


def main(length: int = 400, repeats: int = 10) -> dict:
    torch.set_num_threads(2)
    seq = next(s for _, s in read_fasta(MGEN) if len(s) >= length)[:length]
    t0 = time.perf_counter()
    an = Analyzer(ROOT / "data" / "esm_lm" / "sae")
    load_s = time.perf_counter() - t0
    an.run("warmup", seq)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = an.run("q", seq)
        res.top_features(20)
        times.append(time.perf_counter() - t)
    out = {
        "residues": length,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "model_load_s": load_s,
        "threads": 2,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "inspector_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
