"""Training peak memory against dataset size: the same SAE (TopK, 10,240 latents, k 32) trained
through a real activation store of S shards and through a view of the same store holding S/10 of
them, with the same number of steps. Each run in its own process, so its peak RSS is its own.

The store is made here: random proteome proteins from ../shared/data through the demo LM (bf16),
layer 3, 32,768-token shards. Writes bench/results/train_memory.json.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a bench measures the dtype it names, also where the CPU only emulates bf16 (esmsae.core.precision)
os.environ.setdefault("ESMSAE_KEEP_DTYPE", "1")
CACHE = ROOT / "bench" / "cache"
SHARD_TOKENS = 32_768


def make_store(n_proteins: int = 3000) -> Path:
    out = CACHE / "store_mem"
    if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text()).get("complete"):
        return out
    from bench.index_scaling import proteins_fasta
    from esmsae.config import EmbedConfig, HookConfig, ModelConfig
    from esmsae.store.activations import embed_fasta

    embed_fasta(
        EmbedConfig(fasta=str(proteins_fasta(n_proteins)), store=str(out), shard_tokens=SHARD_TOKENS),
        ModelConfig(name=str(ROOT / "data" / "esm_lm" / "model"), dtype="bfloat16"),
        HookConfig(layers=[3]),
        progress=False,
    )
    return out


def view(store: Path, n_shards: int) -> Path:
    """A store folder listing only the first n_shards of ``store`` (shards linked, not copied)."""
    out = CACHE / f"store_mem_{n_shards}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    man = json.loads((store / "manifest.json").read_text())
    man["shards"] = man["shards"][:n_shards]
    man["n_tokens"] = sum(s["n_tokens"] for s in man["shards"])
    man["n_proteins"] = sum(s["n_proteins"] for s in man["shards"])
    for s in man["shards"]:
        os.symlink(store / s["name"], out / s["name"])
    (out / "manifest.json").write_text(json.dumps(man))
    return out


def one(store: str, steps: int) -> dict:
    from esmsae.config import SAEConfig, TrainConfig
    from esmsae.sae.train import train
    from esmsae.store.activations import ActivationStore

    with tempfile.TemporaryDirectory() as tmp:
        tcfg = TrainConfig(store=store, out=tmp, token_budget=steps * 4096, batch_size=4096, buffer_shards=4,
                           checkpoint_every=10**9, threads=2)
        train(tcfg, SAEConfig(architecture="topk", n_latents=10240, k=32), progress=False)
    st = ActivationStore(store)
    return {"shards": len(st.shards), "train_tokens_in_store": st.n_tokens("train"), "steps": steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(steps: int = 300) -> dict:
    store = make_store()
    n = len(json.loads((store / "manifest.json").read_text())["shards"])
    runs = []
    for s in (view(store, max(1, n // 10)), store):
        r = subprocess.run(
            [sys.executable, __file__, "--one", str(s), str(steps)], capture_output=True, text=True, cwd=ROOT
        )
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    out = {
        "sae": {"n_latents": 10240, "k": 32, "d_in": 320},
        "shard_tokens": SHARD_TOKENS,
        "buffer_shards": 4,
        "runs": runs,
        "peak_rss_ratio": runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"],
        "store_ratio": runs[1]["train_tokens_in_store"] / runs[0]["train_tokens_in_store"],
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "train_memory.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
