"""A Hugging Face hub cache in the real on-disk layout, for offline tests of the real loaders.

``models--ORG--NAME/blobs/<sha256>`` holds each file once, ``snapshots/<commit>/<path>`` links
to it, and ``refs/main`` names the commit: what ``hf_hub_download`` / ``snapshot_download`` /
``from_pretrained`` read with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def put_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path]) -> Path:
    """Write ``files`` (repo path -> bytes or a local file to copy) as the main revision of ``repo_id``."""
    org, name = repo_id.split("/")
    root = cache / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        tmp = root / "blobs" / "incoming"
        if isinstance(data, Path):
            shutil.copyfile(data, tmp)
        else:
            tmp.write_bytes(data)
        h = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        blob = root / "blobs" / h.hexdigest()
        os.replace(tmp, blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def offline_env(cache: Path) -> dict[str, str]:
    """Environment for a subprocess that must find everything in ``cache`` and never go online."""
    env = dict(os.environ)
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return env
