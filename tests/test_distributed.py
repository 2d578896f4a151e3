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
    r = subprocess.run(
        [sys.executable, "-m", "esmsae", *args],
        capture_output=True,
        text=True,
        env={**_env(), **(env or {})},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run2(*args: str, nproc: int = 2, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m esmsae ...``."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "esmsae",
            *args,
        ],
        capture_output=True,
        text=True,
        env={**_env(), **(env or {})},
        timeout=600,
    )
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


def _params(run: Path, name: str = "L4_resid") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / name / "sae.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _train_args(store: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--store",
        str(store),
        "--out",
        str(out),
        "--layers",
        "4",
        "--batch-size",
        "256",
        "--token-budget",
        str(256 * 30),
        "--warmup-steps",
        "5",
        "--log-every",
        "10",
        "--checkpoint-every",
        "1000",
        "--device",
        "cpu",
        "--threads",
        "1",
        # DDP sums gradients in another order than one process; Adam carries that rounding as rounding,
        # but sign descent (the default) turns a near-zero gradient's flipped sign into a 2 x lr move, so
        # the equal-to-rounding comparisons run Adam in fp32
        "--optimizer",
        "adam",
        "--precision",
        "float32",
        *extra,
    ]


def test_ddp_matches_one_process_with_auxk_active(tmp_path, small_store):
    """DDP on 2 gloo ranks over one global batch of 256 equals one process to fp32 rounding, with
    AuxK active (dead after 512 tokens: most of 1,024 latents are dead early). The per-rank AuxK
    normaliser (ESMSAE_DDP_LOCAL_NORMALISER=1, what a plain DDP wrap of the loss gives) drifts
    beyond the bound, so the test can tell the two apart."""
    sae = ["--n-latents", "1024", "--k", "8", "--dead-tokens", "512", "--auxk-coef", "0.5"]
    run1(*_train_args(small_store, tmp_path / "one", *sae))
    run2(*_train_args(small_store, tmp_path / "two", *sae))
    run2(*_train_args(small_store, tmp_path / "local", *sae), env={"ESMSAE_DDP_LOCAL_NORMALISER": "1"})
    one, two, local = (_params(tmp_path / x) for x in ("one", "two", "local"))
    good, bad = _max_diff(one, two), _max_diff(one, local)
    print(f"DDP vs one process: {good:.2e}; per-rank normaliser: {bad:.2e}")
    assert good < 1e-5, good
    assert bad > 1e-5 and bad > 20 * good, (good, bad)
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [10, 20, 30] and all(x["auxk"] > 0 for x in rows)
    assert not list((tmp_path / "two").glob("metrics.rank*"))  # rank 0 alone writes


@pytest.mark.parametrize("arch", ["relu", "batchtopk"])
def test_ddp_matches_one_process_relu_and_batchtopk(tmp_path, small_store, arch):
    """ReLU+L1 and BatchTopK (its threshold from the global batch: each rank offers its local top
    k x B_global values) under DDP equal one process to fp32 rounding."""
    sae = ["--architecture", arch, "--n-latents", "512", "--k", "8"]
    run1(*_train_args(small_store, tmp_path / "one", *sae))
    run2(*_train_args(small_store, tmp_path / "two", *sae))
    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    d = _max_diff(one, two)
    assert d < 1e-5, d
    if arch == "batchtopk":  # the threshold is ~0.04: an absolute 1e-5 cannot see a rank drift
        t1, t2 = one["threshold"].double(), two["threshold"].double()
        # measured: 0 with the ranks lerping toward the global threshold, 2.5e-5 toward their own minima
        assert float(t1.min()) > 0 and float(((t1 - t2).abs() / t1).max()) < 1e-6


def test_layer_parallel_is_bit_identical(tmp_path, small_store):
    """--parallel layers on 2 ranks: rank r trains layer r; each sae.safetensors is byte-identical
    to the one-process run over both layers, cfg.json equal but for the run folder, and the
    metrics of both layers are read back."""
    from esmsae.sae.train import read_metrics

    args = ["--n-latents", "256", "--k", "8"]
    both = [a if a != "4" else "2,4" for a in _train_args(small_store, tmp_path / "one", *args)]
    run1(*both)
    par = [a if a != "4" else "2,4" for a in _train_args(small_store, tmp_path / "two", *args, "--parallel", "layers")]
    run2(*par)
    for name in ("L2_resid", "L4_resid"):
        assert filecmp.cmp(
            tmp_path / "one" / name / "sae.safetensors", tmp_path / "two" / name / "sae.safetensors", shallow=False
        ), name
        ca, cb = (json.loads((tmp_path / x / name / "cfg.json").read_text()) for x in ("one", "two"))
        assert ca["train"].pop("out") != cb["train"].pop("out") and ca == cb  # only the run folder differs
    rows = read_metrics(tmp_path / "two")
    assert sorted({r["sae"] for r in rows}) == ["L2_resid", "L4_resid"] and len(rows) == len(
        read_metrics(tmp_path / "one")
    )


def test_ddp_resume_is_exact(tmp_path, small_store):
    """A DDP run stopped at step 12 (checkpoint written by rank 0) and resumed by 2 ranks ends
    with the same weights, bit for bit, as the uninterrupted DDP run."""
    script = str(ROOT / "tests" / "dist_train_script.py")

    def cfg(out):
        return json.dumps(
            {
                "train": {
                    "store": str(small_store),
                    "out": str(out),
                    "layers": [4],
                    "batch_size": 256,
                    "token_budget": 256 * 24,
                    "warmup_steps": 5,
                    "checkpoint_every": 1000,
                    "log_every": 6,
                    "device": "cpu",
                    "threads": 1,
                },
                "sae": {"n_latents": 512, "k": 8, "dead_tokens": 512},
            }
        )

    def torchrun(*a):
        r = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script, *a],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]

    torchrun(cfg(tmp_path / "full"))
    torchrun(cfg(tmp_path / "cut"), "12")
    assert torch.load(tmp_path / "cut" / "state.pt", weights_only=False)["step"] == 12
    torchrun(cfg(tmp_path / "cut"))
    assert _max_diff(_params(tmp_path / "full"), _params(tmp_path / "cut")) == 0.0
    rows = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [6, 12, 18, 24]


TABLE_KEYS = {  # the order rows are compared in (the tables' content, not their physical order)
    "proteins": "pidx", "features": "feature", "feature_hist": "feature, bin_lo", "top_examples": "feature, rank",
    "quantile_examples": "feature, bin, max_act DESC, pidx", "structure_tracks": "pidx, feature", "concepts": "concept",
    "concept_f1": "feature, concept", "groups": "grouping, grp", "group_usage": "grouping, grp, feature",
    "cluster_profiles": "cluster",
}


def test_two_rank_index_equals_one_process(tmp_path, tiny_sae, mgen_full, shared):
    """The 2-rank index equals the one-process index table for table: labelled proteins (UniProt),
    a grouping file, embedding clusters (rank 0 clusters the gathered pooled vectors), a small batch
    budget (many batches dealt to the ranks). Integers, strings and
    example tracks exactly; floats to 1e-9 relative (float64 sums in another order)."""
    import duckdb
    import pandas as pd

    from esmsae.core.fasta import read_fasta

    groups = tmp_path / "half.tsv"
    ids = [h.split()[0] for h, _ in read_fasta(mgen_full)]
    groups.write_text("id\tgroup\n" + "".join(f"{pid}\t{'A' if i % 3 == 0 else 'B'}\n" for i, pid in enumerate(ids)))
    args = [
        "index",
        "--sae",
        str(tiny_sae),
        "--fasta",
        str(mgen_full),
        "--concepts",
        str(shared),
        "--groups",
        str(groups),
        "--top-n",
        "5",
        "--umap",
        "false",
        "--batch-tokens",
        "2048",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--cluster-proteins",
        "3",
    ]
    run1(*args, "--out", str(tmp_path / "one.duckdb"))
    r = run2(*args, "--out", str(tmp_path / "two.duckdb"))
    assert "index:" in r.stdout and not (tmp_path / "two.duckdb.parts").exists()
    a, b = (duckdb.connect(str(tmp_path / f), read_only=True) for f in ("one.duckdb", "two.duckdb"))
    assert json.loads(b.execute("SELECT value FROM meta WHERE key = 'world_size'").fetchall()[0][0]) == 2
    for table, order in TABLE_KEYS.items():
        da, db = (c.execute(f"SELECT * FROM {table} ORDER BY {order}").df() for c in (a, b))
        assert len(da) == len(db) > 0 or table == "structure_tracks", table
        assert list(da.columns) == list(db.columns), table
        for col in da.columns:
            x, y = da[col], db[col]
            if pd.api.types.is_float_dtype(x):
                np.testing.assert_allclose(
                    x.to_numpy(), y.to_numpy(), rtol=1e-9, atol=0, equal_nan=True, err_msg=f"{table}.{col}"
                )
            elif x.dtype == object and len(x) and isinstance(x.iloc[0], (list, np.ndarray)):
                assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(x, y)), f"{table}.{col}"
            else:
                assert x.tolist() == y.tolist(), f"{table}.{col}"
    for k in ("n_proteins", "n_residues"):
        q = f"SELECT value FROM meta WHERE key = '{k}'"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_embed_train_index_on_two_gpus(tmp_path, esm2_dir, mgen_fasta, shared):
    """The NCCL path: embed, DDP train and index on 2 GPUs (rank r on cuda:r). The store equals the
    one-GPU store file for file only with deterministic kernels, so here: the runs finish, the
    manifest and the index are complete, and DDP stays within fp32 rounding of one GPU."""
    one, two = tmp_path / "one", tmp_path / "two"
    gpu = [a if a != "cpu" else "cuda" for a in _embed_args(mgen_fasta, esm2_dir, one)]
    run1(*gpu)
    run2(*[a if a != str(one) else str(two) for a in gpu])
    assert json.loads((two / "manifest.json").read_text())["n_proteins"] == 120
    targs = [a if a != "cpu" else "cuda" for a in _train_args(one, tmp_path / "t1", "--n-latents", "512", "--k", "8")]
    run1(*targs)
    run2(*[a if a != str(tmp_path / "t1") else str(tmp_path / "t2") for a in targs])
    assert _max_diff(_params(tmp_path / "t1"), _params(tmp_path / "t2")) < 1e-4
    r = run2(
        "index",
        "--sae",
        str(tmp_path / "t2" / "L4_resid"),
        "--fasta",
        str(mgen_fasta),
        "--out",
        str(tmp_path / "i.duckdb"),
        "--umap",
        "false",
        "--device",
        "cuda",
    )
    assert "index:" in r.stdout and (tmp_path / "i.duckdb").exists()
