"""torchrun on this machine: 2 ranks x 1 thread against 1 process x 2 threads, for `embed`,
`train` (DDP) and `index`, same inputs, same outputs (the tests check that; this measures the time).

Embed: ESM-2 8M architecture (random weights: the speed does not depend on them), layers 3,
2,000 real proteome proteins of <= 400 residues (two proteomes). Train: TopK 2,048 latents, k 32,
batch 4,096, 300 steps on that store. Index: that SAE over the 2,000 proteins, no UMAP. Wall time includes interpreter
and model start (torchrun's rendezvous too),
as a user would see it. Writes bench/results/distributed.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
N_PROTEINS, TRAIN_STEPS = 2000, 300


def env(threads: int) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        e.pop(k, None)
    return e


def timed(cmd: list[str], threads: int) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(threads))
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return time.perf_counter() - t


def main() -> None:
    from esmsae.core.fasta import read_fasta, write_fasta
    from esmsae.lm.plm import save_initial_esm2

    work = Path(tempfile.mkdtemp(prefix="esmsae_dist_"))
    try:
        model = save_initial_esm2(SHARED / "esm2_t6_8M_config", work / "esm2", seed=0)
        src = sorted((SHARED / "uniprot" / "proteomes15").glob("*.fasta.gz"))[:2]
        fa = write_fasta(
            work / "p.fasta", ((h, s) for f in src for h, s in read_fasta(f) if len(s) <= 400), limit=N_PROTEINS
        )
        py, tr = [sys.executable, "-m", "esmsae"], [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "esmsae",
        ]

        def embed(store: str) -> list[str]:
            return ["embed", "--fasta", str(fa), "--model", str(model), "--layers", "3", "--store", str(work / store),
                    "--shard-tokens", "32768", "--device", "cpu"]

        out: dict = {"machine": f"{os.cpu_count()} cores", "proteins": N_PROTEINS, "train_steps": TRAIN_STEPS}
        out["embed_1proc_2threads_s"] = timed(py + embed("s1"), 2)
        out["embed_2ranks_1thread_s"] = timed(tr + embed("s2"), 1)
        man = json.loads((work / "s1" / "manifest.json").read_text())
        out["embed_tokens"], out["embed_shards"] = man["n_tokens"], len(man["shards"])

        def train(run: str, threads: int) -> list[str]:
            return [
                "train",
                "--store",
                str(work / "s1"),
                "--out",
                str(work / run),
                "--n-latents",
                "2048",
                "--k",
                "32",
                "--batch-size",
                "4096",
                "--token-budget",
                str(4096 * TRAIN_STEPS),
                "--device",
                "cpu",
                "--threads",
                str(threads),
            ]

        out["train_1proc_2threads_s"] = timed(py + train("t1", 2), 2)
        out["train_ddp_2ranks_1thread_s"] = timed(tr + train("t2", 1), 1)
        sae = next((work / "t1").glob("L3_*"))

        def index(name: str, threads: int) -> list[str]:
            return [
                "index",
                "--sae",
                str(sae),
                "--fasta",
                str(fa),
                "--out",
                str(work / name),
                "--umap",
                "false",
                "--device",
                "cpu",
                "--threads",
                str(threads),
            ]

        out["index_1proc_2threads_s"] = timed(py + index("i1.duckdb", 2), 2)
        out["index_2ranks_1thread_s"] = timed(tr + index("i2.duckdb", 1), 1)
        out["index_speedup"] = out["index_1proc_2threads_s"] / out["index_2ranks_1thread_s"]
        out["embed_speedup"] = out["embed_1proc_2threads_s"] / out["embed_2ranks_1thread_s"]
        out["train_speedup"] = out["train_1proc_2threads_s"] / out["train_ddp_2ranks_1thread_s"]
        res = ROOT / "bench" / "results" / "distributed.json"
        res.write_text(
            json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=2) + "\n"
        )
        print(res.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
