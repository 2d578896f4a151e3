"""Two CPU processes with gloo, launched by torchrun as a subprocess: the same outputs as one process.

Every run asserts on its return code and on its artifacts; each rank runs one thread
(OMP_NUM_THREADS=1) so the comparison with the one-process run is about the distribution, not
about thread-count-dependent float reductions.
"""
from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run1(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "esmsae", *args], capture_output=True, text=True, env={**_env(), **(env or {})}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run2(*args: str, nproc: int = 2, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m esmsae ...``."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "esmsae", *args],
                       capture_output=True, text=True, env={**_env(), **(env or {})}, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def _same_store(a: Path, b: Path) -> None:
    assert _files(a) == _files(b)
    for f in _files(a):
        if f == "manifest.json":
            ma, mb = (json.loads((x / f).read_text()) for x in (a, b))
            for m in (ma, mb):
                m.pop("created"), m["embed"].pop("store"), m["embed"].pop("max_proteins"), m.pop("legacy_skipped", None)
            assert ma == mb
        else:
            assert filecmp.cmp(a / f, b / f, shallow=False), f"{f} differs"


def _embed_args(fasta: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["embed", "--fasta", str(fasta), "--store", str(out), "--model", str(model), "--layers", "2,4",
            "--shard-tokens", "2048", "--holdout-fraction", "0.15", "--device", "cpu", *extra]


def test_two_rank_store_is_the_one_process_store(tmp_path, esm2_dir, mgen_fasta):
    """rank r writes shards i mod 2 == r; every .npy, proteins.parquet and sidecar is byte-equal
    to the one-process store, and the manifest equal apart from its timestamp and path. A 2-rank
    run stopped early (--max-proteins) and finished by one process gives the same store again."""
    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "mixed"
    run1(*_embed_args(mgen_fasta, esm2_dir, one))
    r = run2(*_embed_args(mgen_fasta, esm2_dir, two))
    assert "[embed] rank 0/2: wrote shards [0, 2" in r.stderr and "[embed] rank 1/2: wrote shards [1, 3" in r.stderr
    man = json.loads((one / "manifest.json").read_text())
    assert len(man["shards"]) >= 4 and man["complete"] and man["n_proteins"] == 120
    _same_store(one, two)
    # interrupted with 2 ranks (its last shard holds fewer proteins than planned), finished by 1
    run2(*_embed_args(mgen_fasta, esm2_dir, mixed, "--max-proteins", "50"))
    m = json.loads((mixed / "manifest.json").read_text())
    m["complete"] = False
    (mixed / "manifest.json").write_text(json.dumps(m))
    (mixed / "shard_00001").rename(mixed / "shard_00001.tmp")  # a crash mid-shard leaves a .tmp folder
    run1(*_embed_args(mgen_fasta, esm2_dir, mixed))
    _same_store(one, mixed)
