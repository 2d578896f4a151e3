import os
import shutil
from pathlib import Path

import pytest
import torch

from esmsae.core.fasta import read_fasta, write_fasta
from esmsae.core.paths import shared_data

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data()
ESM2_CONFIG = SHARED / "esm2_t6_8M_config"
MGEN = SHARED / "uniprot" / "mgenitalium" / "mgenitalium.fasta"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still run in CI)")
    config.addinivalue_line("markers", "gpu: runs on CUDA; skipped where torch sees no CUDA device")


@pytest.fixture
def keep_dtype(monkeypatch):
    """For the tests of bf16 numerics: keep bf16 even on a CPU that would emulate it (esmsae.core.precision
    falls back to fp32 there); they are small enough to run emulated."""
    monkeypatch.setenv("ESMSAE_KEEP_DTYPE", "1")


@pytest.fixture(scope="session")
def shared():
    if not SHARED.exists():
        pytest.fail(f"shared data not found at {SHARED} (set ESMSAE_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def esm2_dir(tmp_path_factory, shared):
    """ESM-2 8M architecture (real config from ../shared/data), random weights, HF format."""
    from esmsae.lm.plm import save_initial_esm2

    return save_initial_esm2(ESM2_CONFIG, tmp_path_factory.mktemp("esm2") / "esm2_8M_init", seed=0)


@pytest.fixture(scope="session")
def esmc_file(tmp_path_factory):
    """A small ESM C (real architecture, 3 blocks, d_model 128) saved as a weights file."""
    from esmsae.lm.plm import build_esmc

    m = build_esmc(128, 2, 3, seed=0)
    p = tmp_path_factory.mktemp("esmc") / "esmc_tiny.pth"
    torch.save(m.state_dict(), p)
    return p


@pytest.fixture(scope="session")
def mgen_fasta(tmp_path_factory, shared):
    """The first 120 M. genitalium proteins (real UniProt records, cut to 150 residues to keep tests fast)."""
    from esmsae.core.fasta import read_fasta

    return write_fasta(tmp_path_factory.mktemp("fa") / "mgen120.fasta", read_fasta(MGEN), max_len=150, limit=120)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, esm2_dir, mgen_fasta):
    from esmsae.config import EmbedConfig, HookConfig, ModelConfig
    from esmsae.store.activations import embed_fasta

    out = tmp_path_factory.mktemp("store") / "store"
    embed_fasta(EmbedConfig(fasta=str(mgen_fasta), store=str(out), shard_tokens=4096, holdout_fraction=0.15),
                ModelConfig(name=str(esm2_dir)), HookConfig(layers=[2, 4], site="resid"), progress=False)
    return out


@pytest.fixture(scope="session")
def mgen_full(tmp_path_factory, shared):
    """60 whole M. genitalium proteins of <= 300 residues (their UniProt features match)."""
    return write_fasta(
        tmp_path_factory.mktemp("fa") / "mgen60.fasta", ((h, s) for h, s in read_fasta(MGEN) if len(s) <= 300), limit=60
    )


@pytest.fixture(scope="session")
def tiny_sae(tmp_path_factory, small_store):
    """A 128-latent TopK SAE on layer 4 of the random ESM-2 8M model."""
    from esmsae.config import SAEConfig, TrainConfig
    from esmsae.sae.train import train

    out = tmp_path_factory.mktemp("sae")
    (d,) = train(
        TrainConfig(store=str(small_store), out=str(out), layers=[4], token_budget=60_000, batch_size=512, seed=0),
        SAEConfig(n_latents=128, k=8),
        progress=False,
    )
    return d



@pytest.fixture(scope="session")
def structure_fasta(tmp_path_factory, shared):
    """Three real structure chains (atom-record sequences) from shared/data/structures."""
    import csv

    out = tmp_path_factory.mktemp("fa") / "chains.fasta"
    rows = list(csv.DictReader(open(shared / "structures" / "links" / "structure_chains.tsv"), delimiter="\t"))
    rows = [r for r in rows if 60 <= len(r["atom_seq"]) <= 200 and set(r["atom_seq"]) <= set("ACDEFGHIKLMNPQRSTVWY")][
        :3
    ]
    return write_fasta(out, ((f"{Path(r['file']).stem}_{r['chain']}", r["atom_seq"]) for r in rows))


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory, tiny_sae, mgen_full, structure_fasta, shared):
    """A workspace with one run (the tiny SAE) and its index, as a training job leaves it."""
    from esmsae.config import IndexConfig
    from esmsae.index.build import build_index

    ws = tmp_path_factory.mktemp("ws")
    ck = ws / "tiny" / "L4_resid"
    shutil.copytree(tiny_sae, ck)
    build_index(
        IndexConfig(
            sae=str(ck),
            out=str(ck / "index.duckdb"),
            fasta=[str(mgen_full), str(structure_fasta)],
            concepts=str(shared),
            top_n=5,
            umap=True,
            batch_tokens=2048,
        ),
        progress=False,
    )
    return ws


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_sae, mgen_full, shared, esm2_dir):
    """An index of 60 real M. genitalium proteins with their UniProt labels and a grouping file
    (one id unknown), shared by the brute-force tests of test_index.py and test_science.py."""
    import esmsae.index.write as idx_mod
    from esmsae.config import IndexConfig
    from esmsae.core.fasta import read_fasta
    from esmsae.index.build import build_index

    tmp = tmp_path_factory.mktemp("idx")
    groups = tmp / "half.tsv"
    ids = [h.split()[0] for h, _ in read_fasta(mgen_full)]
    groups.write_text(
        "id\tgroup\n"
        + "".join(f"{pid}\t{'A' if i % 3 == 0 else 'B'}\n" for i, pid in enumerate(ids))
        + "NOT_A_PROTEIN\tA\n"
    )

    cfg = IndexConfig(sae=str(tiny_sae), out=str(tmp / "index.duckdb"), fasta=[str(mgen_full)], concepts=str(shared),
                      groups=[str(groups)], top_n=5, umap=False, batch_tokens=2048)
    # a tiny example block, so the brute-force tests also cover the blocked table writes
    block, idx_mod.EXAMPLE_BLOCK = idx_mod.EXAMPLE_BLOCK, 7
    try:
        path = build_index(cfg, progress=False)
    finally:
        idx_mod.EXAMPLE_BLOCK = block
    return path, cfg


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory, tiny_sae, mgen_fasta):
    """A checkpoint folder with the README's simplest index (no --concepts, no groups, no structures),
    shared by the AppTest and the browser journey that open every page on it."""
    import shutil

    from esmsae.config import IndexConfig
    from esmsae.index.build import build_index

    ck = tmp_path_factory.mktemp("plain") / "L4_resid"
    shutil.copytree(tiny_sae, ck)
    build_index(IndexConfig(sae=str(ck), out=str(ck / "index.duckdb"), fasta=[str(mgen_fasta)], top_n=3, umap=False,
                            batch_tokens=2048), progress=False)
    return ck
