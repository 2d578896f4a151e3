"""A full disk during embed, index and train: the run stops with a message that says so, leaves
no half-written file behind, keeps what was finished, and a rerun resumes. The disk is a small
tmpfs (needs root, as on the CI machine; skipped where mounting is not allowed)."""
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from esmsae.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO_LM = ROOT / "data" / "esm_lm" / "model"


@pytest.fixture()
def small_disk(tmp_path):
    made = []

    def make(size_kb: int) -> Path:
        d = Path("/tmp") / f"esmsae_fulldisk_{uuid.uuid4().hex[:8]}"
        d.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(d)], capture_output=True, text=True
        )
        if r.returncode:
            d.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        made.append(d)
        return d

    yield make
    for d in made:
        subprocess.run(["umount", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_embed_on_a_full_disk_stops_cleanly_and_resumes(small_disk, tmp_path, mgen_fasta, capsys):
    disk = small_disk(1600)
    args = ["embed", "--model", str(DEMO_LM), "--fasta", str(mgen_fasta), "--layers", "3", "--shard-tokens", "1024"]
    assert main([*args, "--store", str(disk / "store")]) == 2
    err = capsys.readouterr().err
    assert (
        "could not write activation shard" in err
        and "No space left on device" in err
        and "rerun the same command" in err
    )
    assert not list((disk / "store").glob("*.tmp"))  # no half shard
    import json

    man = json.loads((disk / "store" / "manifest.json").read_text())
    assert man["shards"] and not man["complete"]
    # the finished shards are kept: move them where there is room and the same command resumes
    shutil.copytree(disk / "store", tmp_path / "store")
    assert main([*args, "--store", str(tmp_path / "store")]) == 0
    man2 = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert man2["complete"] and man2["n_proteins"] == 120 and man2["shards"][: len(man["shards"])] == man["shards"]


def test_index_on_a_full_disk_leaves_nothing_behind(small_disk, tiny_sae, mgen_full, capsys):
    disk = small_disk(400)
    out = disk / "index.duckdb"
    assert main(["index", "--sae", str(tiny_sae), "--fasta", str(mgen_full), "--out", str(out), "--umap", "false"]) == 2
    err = capsys.readouterr().err
    assert "could not write feature index" in err and "MiB free" in err
    assert sorted(p.name for p in disk.iterdir()) == []  # no .tmp database, no scratch folder


def test_training_checkpoint_on_a_full_disk(small_disk, small_store, capsys):
    disk = small_disk(64)
    assert (
        main(
            [
                "train",
                "--store",
                str(small_store),
                "--out",
                str(disk / "run"),
                "--layers",
                "4",
                "--n-latents",
                "1024",
                "--k",
                "8",
                "--token-budget",
                "2048",
                "--batch-size",
                "512",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left on device" in err
    assert not [p for p in (disk / "run").rglob("*") if ".tmp" in p.name]
