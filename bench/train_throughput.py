"""SAE training-step throughput and quality at equal tokens: esmsae vs EleutherAI sparsify and SAELens.

All sides run on the same activation file, TopK, same d_in / latents / k / batch / threads, Adam
with the Gao et al. learning rate, fp32 on the CPU. Each peer runs in its own virtual environment
(bench/venv-sparsify, bench/venv-saelens, created here: they need other transformers versions than
esm). Sizes: (320, 10,240, k 32) on real activations of the demo LM's layer 3, and (960, 16,384,
k 64) on synthetic activations (no d=960 model is available offline). Sides alternate run by run;
the result is the ratio of medians. Adam: each side as its own trainer runs it (esmsae: the fused
kernel; sparsify and SAELens: torch.optim.Adam defaults), plus a row with the fused kernel on both
esmsae and sparsify. Writes bench/results/train_throughput.json.
"""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from esmsae.core.paths import shared_data  # noqa: E402

CACHE = ROOT / "bench" / "cache"
PEERS = {  # impl -> (venv, pip requirement)
    "sparsify": (ROOT / "bench" / "venv-sparsify", "eai-sparsify==1.3.3", "sparsify"),
    "saelens": (ROOT / "bench" / "venv-saelens", "sae-lens==6.54.12", "sae_lens"),
}


def peer_python(impl: str) -> Path:
    venv, req, module = PEERS[impl]
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)  # the CPU wheel first
    subprocess.run([str(py), "-m", "pip", "install", "-q", req], check=True)
    return py


def real_acts(n_proteins: int = 700) -> Path:
    out = CACHE / "demo_L3_acts.npy"
    if out.exists():
        return out
    from esmsae.app.analyze import Analyzer
    from esmsae.core.fasta import read_fasta

    an = Analyzer(ROOT / "data" / "esm_lm" / "sae")
    seqs = [
        s
        for i, (_, s) in enumerate(
            read_fasta(shared_data() / "uniprot" / "proteomes15" / "UP000000625-E.coli.fasta.gz")
        )
        if i < n_proteins and len(s) <= 1000
    ]
    acts = np.concatenate([a[an.hook.name].numpy() for a in an.plm.embed(seqs, [an.hook])])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(out, acts.astype(np.float32))
    return out


def synthetic_acts(d: int = 960, n: int = 120_000) -> Path:
    out = CACHE / f"synthetic_{d}.npy"
    if not out.exists():
        rng = np.random.default_rng(0)
        # a sparse sum of 2,000 random directions plus noise: roughly the structure SAEs assume
        D = rng.standard_normal((2000, d)).astype(np.float32)
        codes = rng.exponential(1.0, (n, 24)).astype(np.float32)
        idx = rng.integers(0, 2000, (n, 24))
        X = np.einsum("nk,nkd->nd", codes, D[idx]) + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(out, X.astype(np.float32))
    return out


def run(py: Path | str, impl: str, acts: Path, *args: str) -> dict:
    r = subprocess.run([str(py), str(ROOT / "bench" / "sae_step.py"), "--impl", impl, "--acts", str(acts), *args],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"{impl} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(repeats: int = 3, steps: int = 6) -> dict:
    pys = {"esmsae": Path(sys.executable), **{p: peer_python(p) for p in PEERS}}
    sizes = [("esm2_8M_interplm", real_acts(), 10240, 32), ("esmc_300m", synthetic_acts(), 16384, 64)]
    out = {"cpu": platform.processor() or platform.machine(), "threads": 2, "batch": 4096, "dtype": "float32",
           "peers": {p: PEERS[p][1] for p in PEERS}, "throughput": [], "quality": []}
    for name, acts, F, k in sizes:
        d = int(np.load(acts, mmap_mode="r").shape[1])
        args = ["--n-latents", str(F), "--k", str(k), "--steps", str(steps)]
        for adam, impls in (("own", ("esmsae", "sparsify", "saelens")), ("fused", ("esmsae", "sparsify"))):
            tps: dict[str, list[float]] = {i: [] for i in impls}
            for _ in range(repeats):  # alternate the sides: the machine's noise hits all of them
                for impl in impls:
                    tps[impl].append(run(pys[impl], impl, acts, *args, "--adam", adam)["tokens_per_s"])
            med = {i: statistics.median(v) for i, v in tps.items()}
            row = {"size": name, "d_in": d, "n_latents": F, "k": k, "adam": adam, "tokens_per_s": med,
                   **{f"ratio_vs_{p}": med["esmsae"] / med[p] for p in impls if p != "esmsae"}, "runs": tps}
            out["throughput"].append(row)
            print(json.dumps(row))
    acts = real_acts()
    q = {impl: run(pys[impl], impl, acts, "--n-latents", "10240", "--k", "32", "--train-tokens", "400000")
         for impl in ("esmsae", "sparsify", "saelens")}
    out["quality"].append({"size": "esm2_8M_interplm", "train_tokens": q["esmsae"]["train_tokens"],
                           **{f"{i}_heldout_fvu": r["heldout_fvu"] for i, r in q.items()}})
    print(json.dumps(out["quality"][-1]))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "train_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
