"""An activation store from a folder of .npy [N, d] arrays (esm-sae's --np_dir), cut into shards."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.config import hook_name, save_json
from esmsae.store.activations import MANIFEST, STORE_VERSION, StoreError


def store_from_npy(npy_dir: str | os.PathLike, out: str | os.PathLike, layer: int, site: str = "resid", model: str = "",
                   holdout_fraction: float = 0.05, shard_tokens: int = 262_144) -> Path:
    """An activation store from a folder of ``.npy`` ``[N, d]`` float arrays (esm-sae's ``--np_dir``),
    read in file-name order through memory maps and re-cut into shards of ``shard_tokens`` rows,
    so memory is bounded by one shard. Each file counts as one record of the store's protein
    table (no sequences: the downstream LM loss is skipped on such stores); a row is held out by
    a hash of its global index. The arrays' layer and site are what you say they are: they are
    recorded in the manifest and in every checkpoint trained on the store. Rerunning on the same
    folder with the same files reuses the finished store."""
    src = Path(npy_dir)
    files = sorted(src.glob("*.npy"))
    if not files:
        raise StoreError(f"{src}: no .npy files")
    out = Path(out)
    fp = [{"name": f.name, "size": f.stat().st_size} for f in files]
    mp = out / MANIFEST
    if mp.exists():
        man = json.loads(mp.read_text())
        if (
            man.get("complete")
            and man["provenance"].get("npy_files") == fp
            and man["hooks"] == {"layers": [layer], "site": site}
        ):
            return out
        shutil.rmtree(out)
    arrays = []
    d = None
    for f in files:
        a = np.load(f, mmap_mode="r")
        if a.ndim != 2:
            raise StoreError(f"{f}: expected a 2-D [N, d] array, got shape {a.shape}")
        if d is not None and a.shape[1] != d:
            raise StoreError(f"{f}: width {a.shape[1]}, the earlier files have {d}")
        d = a.shape[1]
        arrays.append(a)
    out.mkdir(parents=True, exist_ok=True)
    name = hook_name(layer, site)
    man = {
        "version": STORE_VERSION,
        "model": {"name": model or f"npy:{src.resolve()}"},
        "model_info": {"name": model or f"npy:{src.resolve()}", "family": "auto", "n_layers": None, "d_model": d},
        "hooks": {"layers": [layer], "site": site},
        "hook_names": [name],
        "d_in": d,
        "bos_eos": "as in the .npy files",
        "embed": {"holdout_fraction": holdout_fraction, "pool": "unknown (.npy input)"},
        "provenance": {"fasta": {"path": str(src.resolve()), "size": sum(x["size"] for x in fp)}, "npy_files": fp},
        "shards": [],
        "n_proteins": len(files),
        "n_tokens": 0,
        "n_skipped": 0,
        "skipped_examples": [],
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rows = [{"pidx": i, "id": f.stem, "description": f.name, "organism": "", "taxid": -1, "length": int(a.shape[0]),
             "sequence": "", "md5": "", "split": "mixed"} for i, (f, a) in enumerate(zip(files, arrays))]
    # rows as (file index, row) runs, cut into shards
    buf_a, buf_p, buf_pos, n_buf = [], [], [], 0

    def flush() -> None:
        nonlocal buf_a, buf_p, buf_pos, n_buf
        if not n_buf:
            return
        i = len(man["shards"])
        tmp = out / f"shard_{i:05d}.tmp"
        tmp.mkdir()
        acts = np.concatenate(buf_a).astype(np.float16)
        prot, pos = np.concatenate(buf_p), np.concatenate(buf_pos)
        gidx = np.arange(man["n_tokens"], man["n_tokens"] + len(acts), dtype=np.uint64)
        held = ((gidx * np.uint64(2654435761)) % np.uint64(1_000_003)).astype(np.float64) / 1_000_003 < holdout_fraction
        np.save(tmp / f"{name}.npy", acts)
        np.save(tmp / "protein.npy", prot)
        np.save(tmp / "position.npy", pos)
        np.save(tmp / "heldout.npy", held)
        in_shard = set(np.unique(prot).tolist())
        pd.DataFrame([r for r in rows if r["pidx"] in in_shard]).to_parquet(tmp / "proteins.parquet", index=False)
        os.replace(tmp, out / tmp.name[:-4])
        man["shards"].append(
            {
                "name": tmp.name[:-4],
                "n_tokens": len(acts),
                "n_train_tokens": int((~held).sum()),
                "n_heldout_tokens": int(held.sum()),
                "first_protein": int(prot[0]),
                "n_proteins": int(len(np.unique(prot))),
            }
        )
        man["n_tokens"] += len(acts)
        save_json(man, mp)
        buf_a, buf_p, buf_pos, n_buf = [], [], [], 0

    for fi, a in enumerate(arrays):
        start = 0
        while start < a.shape[0]:
            take = min(shard_tokens - n_buf, a.shape[0] - start)
            buf_a.append(np.asarray(a[start:start + take], dtype=np.float32))
            if not np.isfinite(buf_a[-1]).all():
                bad = np.argwhere(~np.isfinite(buf_a[-1]))[0]
                raise StoreError(f"{files[fi]}: non-finite value at row {start + bad[0]}, column {bad[1]}")
            buf_p.append(np.full(take, fi, np.int32))
            buf_pos.append(np.arange(start, start + take, dtype=np.int32))
            n_buf += take
            start += take
            if n_buf >= shard_tokens:
                flush()
    flush()
    man["complete"] = True
    save_json(man, mp)
    return out
