"""Activation-extraction throughput (residues/s): esmsae's length-sorted token-budget batching
vs a one-sequence-at-a-time loop and vs fixed-size padded batches (N sequences in file order,
padded to the batch's longest, as a DataLoader with a padding collate does).

All three run the same model (the demo LM, ESM-2 8M architecture, fp32, 2 threads) on the same
windows of the same proteins, sampled at random from the 15 proteomes in ../shared/data (their
real length distribution), reading the residual stream of the last layer (the whole encoder).
Also reports achieved FLOP/s (useful FLOPs on real residues / time) as a fraction of this
machine's fp32 matrix-multiply FLOP/s measured in the same run. Sides alternate; medians.
Writes bench/results/extract_throughput.json.
"""
from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from esmsae.config import ModelConfig  # noqa: E402
from esmsae.core.fasta import read_fasta  # noqa: E402
from esmsae.core.paths import shared_data  # noqa: E402
from esmsae.lm.plm import Hook, length_batches, load_plm  # noqa: E402

PROTEOMES = shared_data() / "uniprot" / "proteomes15"


def sample_proteins(n: int, seed: int = 0) -> list[str]:
    seqs = [s for f in sorted(PROTEOMES.glob("*.fasta.gz")) for _, s in read_fasta(f)]
    random.Random(seed).shuffle(seqs)
    return seqs[:n]


def matmul_peak(threads: int, n: int = 2048) -> float:
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts[1:])


def forward_flops(lengths: list[int], d: int, d_ff: int, n_layers: int) -> float:
    """Multiply-add FLOPs of the encoder on unpadded sequences (BOS/EOS included):
    per layer and token 2*(4 d^2 + 2 d d_ff) for the projections, 4 L d for attention."""
    total = 0.0
    for n in lengths:
        L = n + 2
        total += n_layers * (L * 2 * (4 * d * d + 2 * d * d_ff) + 4 * L * L * d)
    return total


def main(n_proteins: int = 400, repeats: int = 3, threads: int = 2, fixed_batch: int = 8) -> dict:
    torch.set_num_threads(threads)
    plm = load_plm(ModelConfig(name=str(ROOT / "data" / "esm_lm" / "model")))  # batch_tokens: auto
    hook = Hook(plm.n_layers, "resid")
    seqs = sample_proteins(n_proteins)
    # the same windows (proteins over max_residues are split) for every method
    pieces = [s[a:b] for s in seqs for a, b in plm.windows(len(s))]
    residues = sum(len(p) for p in pieces)

    def ours():
        plm.embed(seqs, [hook])

    def one_at_a_time():
        for p in pieces:
            plm.forward_hooks([p], [hook])

    def fixed():
        for i in range(0, len(pieces), fixed_batch):
            plm.forward_hooks(pieces[i:i + fixed_batch], [hook])

    methods = {"esmsae": ours, "one_at_a_time": one_at_a_time, f"fixed_batch_{fixed_batch}": fixed}
    plm.forward_hooks(pieces[:4], [hook])  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m, fn in methods.items():
            t = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t)
    peak = matmul_peak(threads)
    hf = plm.model.config
    flops = forward_flops([len(p) for p in pieces], hf.hidden_size, hf.intermediate_size, plm.n_layers)
    padded = {  # tokens each method actually computes, padding included
        "esmsae": sum(
            max(len(pieces[j]) for j in b) + 2
            for b in length_batches([len(p) for p in pieces], plm.cfg.resolved_batch_tokens(), extra=2)
            for _ in b
        ),
        f"fixed_batch_{fixed_batch}": sum(
            (max(len(p) for p in pieces[i : i + fixed_batch]) + 2) * len(pieces[i : i + fixed_batch])
            for i in range(0, len(pieces), fixed_batch)
        ),
        "one_at_a_time": sum(len(p) + 2 for p in pieces),
    }
    out = {"cpu": platform.processor() or platform.machine(), "threads": threads, "dtype": "float32",
           "model": "demo LM (ESM-2 8M architecture), all 6 layers", "proteins": len(seqs), "windows": len(pieces),
           "residues": residues, "length_median": statistics.median(len(s) for s in seqs),
           "length_max": max(len(s) for s in seqs), "matmul_fp32_flops": peak, "methods": {}}
    for m, ts in times.items():
        med = statistics.median(ts)
        out["methods"][m] = {"residues_per_s": residues / med, "median_s": med, "runs_s": ts,
                             "padded_tokens": padded[m], "achieved_flops": flops / med,
                             "fraction_of_matmul_peak": flops / med / peak}
    base = out["methods"][f"fixed_batch_{fixed_batch}"]["residues_per_s"]
    out["ratio_vs_fixed_batch"] = out["methods"]["esmsae"]["residues_per_s"] / base
    out["ratio_vs_one_at_a_time"] = (
        out["methods"]["esmsae"]["residues_per_s"] / out["methods"]["one_at_a_time"]["residues_per_s"]
    )
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "extract_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "methods"}))
    for m, r in out["methods"].items():
        print(f"{m:>16}: {r['residues_per_s']:8.0f} residues/s, {r['fraction_of_matmul_peak']:.1%} of matmul peak")
    return out


if __name__ == "__main__":
    main()
