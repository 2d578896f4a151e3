"""Index build: proteins/s, peak memory and the share of time spent in the protein-LM forward,
for a 10,240-latent SAE on the demo LM, at N and 10 N proteins (random proteome proteins from
../shared/data). Each size runs in its own process so its peak RSS is its own.

The SAE (TopK, 10,240 latents, k 32, layer 3) is trained here for a few hundred steps on the
demo LM's activations (bench/cache/demo_L3_acts.npy, made by bench/train_throughput.py), which
gives realistic firing statistics. Writes bench/results/index_scaling.json.

``--sizes N 35M 150M 650M``: the same index over N proteins at published ESM-2 sizes (random
weights, an untrained SAE of 10,240 latents on the middle layer): the forward's share of index
time where the LM is as large as the models users run; ``--encode-dtype bfloat16`` runs the SAE
encoder's matmul in bfloat16 (see bench/encode_precision.py). Writes bench/results/index_model_sizes.json.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a bench measures the dtype it names, also where the CPU only emulates bf16 (esmsae.core.precision)
os.environ.setdefault("ESMSAE_KEEP_DTYPE", "1")
CACHE = ROOT / "bench" / "cache"
N_LATENTS, K = 10_240, 32


def make_sae() -> Path:
    out = CACHE / "sae_10240"
    if (out / "cfg.json").exists():
        return out
    import numpy as np
    import torch

    from bench.train_throughput import real_acts
    from esmsae.config import SAEConfig
    from esmsae.sae.checkpoint import read_cfg, save_sae
    from esmsae.sae.model import SAE
    from esmsae.sae.optim import default_lr
    from esmsae.sae.train import train_step

    torch.manual_seed(0)
    X = torch.from_numpy(np.load(real_acts()))
    sae = SAE(SAEConfig(architecture="topk", n_latents=N_LATENTS, k=K, normalize="scalar"), X.shape[1], seed=0)
    sae.fit_normalization(X[:65536])
    opt = torch.optim.Adam(sae.parameters(), lr=default_lr("adam", N_LATENTS), fused=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        o = train_step(sae, opt, X[torch.randint(len(X), (4096,), generator=g)])
    demo = read_cfg(ROOT / "data" / "esm_lm" / "sae")  # same model, layer and site as the demo SAE
    meta = {k: demo[k] for k in ("base_model", "model_config", "layer", "site", "hook")}
    meta["provenance"] = {
        "note": "bench/index_scaling.py: 300 steps on bench/cache/demo_L3_acts.npy",
        "fvu_last_batch": float(o.fvu.detach()),
    }
    save_sae(sae.eval(), out, meta)
    return out


# ESM-2 sizes (hidden, layers, heads, FFN) of the published checkpoints, with random weights here
SIZES = {"35M": (480, 12, 20, 1920), "150M": (640, 30, 20, 2560), "650M": (1280, 33, 20, 5120)}


def make_sized(size: str) -> Path:
    """A random-weights ESM-2 of a published size (Hugging Face layout, the shared 8M tokenizer)
    and an untrained 10,240-latent TopK SAE on its middle layer with its input scale fitted: the
    costs of the LM forward and of the SAE encode are those of the real sizes (weights do not
    change the FLOPs; an untrained TopK SAE fires k latents a token like a trained one)."""
    out = CACHE / f"sae_10240_esm2_{size}"
    if (out / "cfg.json").exists():
        return out
    import torch

    from esmsae.config import ModelConfig, SAEConfig
    from esmsae.lm.plm import Hook, load_plm, make_esm2_model, save_hf
    from esmsae.sae.checkpoint import read_cfg, save_sae
    from esmsae.sae.model import SAE

    hidden, layers, heads, ffn = SIZES[size]
    cfg_dir = ROOT.parent / "shared" / "data" / "esm2_t6_8M_config"
    model_dir = CACHE / f"esm2_{size}_random"
    if not (model_dir / "config.json").exists():
        save_hf(
            make_esm2_model(
                cfg_dir,
                seed=0,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=ffn,
            ),
            cfg_dir,
            model_dir,
        )
    demo = read_cfg(ROOT / "data" / "esm_lm" / "sae")
    mcfg = ModelConfig(name=str(model_dir), family="esm2", dtype=demo["model_config"]["dtype"])
    plm = load_plm(mcfg)
    layer = layers // 2
    hook = Hook(layer, "resid")
    acts = torch.cat([a[hook.name] for a in plm.embed(proteins_seqs(64), [hook])]).float()
    sae = SAE(SAEConfig(architecture="topk", n_latents=N_LATENTS, k=K, normalize="scalar"), hidden, seed=0)
    sae.fit_normalization(acts)
    meta = {
        "base_model": {"name": str(model_dir), "family": "esm2", "n_layers": layers, "d_model": hidden},
        "model_config": {**demo["model_config"], "name": str(model_dir), "family": "esm2"},
        "layer": layer,
        "site": "resid",
        "hook": hook.name,
        "provenance": {"note": f"bench/index_scaling.py: untrained, ESM-2 {size} random weights"},
    }
    save_sae(sae.eval(), out, meta)
    return out


def proteins_seqs(n: int) -> list[str]:
    from bench.extract_throughput import sample_proteins

    return sample_proteins(n, seed=11)


def proteins_fasta(n: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    from bench.extract_throughput import sample_proteins

    out = CACHE / f"index_proteins_{n}.fasta"
    if not out.exists():
        seqs = sample_proteins(n, seed=7)
        out.write_text("".join(f">bench{i}\n{s}\n" for i, s in enumerate(seqs)))
    return out


def one(n: int, size: str = "8M", encode_dtype: str = "float32") -> dict:
    """Runs in its own process: build the index of n proteins, time the forward inside it."""
    import torch

    from esmsae.config import IndexConfig
    from esmsae.index.build import build_index
    from esmsae.lm.plm import load_plm
    from esmsae.sae.checkpoint import model_config_of, read_cfg

    torch.set_num_threads(2)
    sae_dir = (
        make_sae() if size == "8M" else (ROOT / "data" / "demo" / "sae") if size == "unirep1900" else make_sized(size)
    )
    plm = load_plm(model_config_of(read_cfg(sae_dir)))
    spent = {"forward_s": 0.0, "rss_max": 0, "streaming_peak": 0}
    embed = plm.embed
    page = os.sysconf("SC_PAGE_SIZE")
    done = threading.Event()

    def sample_rss():  # RSS every 20 ms, to tell the streaming pass's peak from the final tables'
        while not done.is_set():
            with open("/proc/self/statm") as fh:
                spent["rss_max"] = max(spent["rss_max"], int(fh.read().split()[1]) * page)
            time.sleep(0.02)

    def timed(fn, key: str, after=lambda: None):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t
                after()
        return wrapper

    # the max RSS so far, as of the latest forward
    plm.embed = timed(embed, "forward_s", lambda: spent.__setitem__("streaming_peak", spent["rss_max"]))
    # the SAE's own share: its encode timed where the build calls it (one call per batch)
    import esmsae.index.build as build_mod

    real_add = build_mod._add_batch
    spent["encode_s"] = 0.0

    def timed_add(st, sae, *a, **kw):
        sae.encode = timed(sae.encode, "encode_s")
        try:
            return real_add(st, sae, *a, **kw)
        finally:
            del sae.encode
    build_mod._add_batch = timed_add
    spent["pass_s"] = 0.0
    build_mod._stream = timed(build_mod._stream, "pass_s")  # the streaming pass: what grows with the proteins
    threading.Thread(target=sample_rss, daemon=True).start()
    out = CACHE / f"index_{n}.duckdb"
    cfg = IndexConfig(
        sae=str(sae_dir), out=str(out), fasta=[str(proteins_fasta(n))], umap=False, threads=2, encode_dtype=encode_dtype
    )
    t = time.perf_counter()
    build_index(cfg, plm=plm, progress=False)
    total = time.perf_counter() - t
    out.unlink(missing_ok=True)
    return {
        "model": "UniRep-1900 + the demo SAE (4,096 latents, k 32)" if size == "unirep1900"
        else f"ESM-2 {size}" + (" (demo LM)" if size == "8M" else " (random weights)"),
        # the streaming pass split three ways (issue 23: the rest <= 15% of the pass)
        "pass_shares": {
            "lm_forward": spent["forward_s"] / spent["pass_s"],
            "sae_encode": spent["encode_s"] / spent["pass_s"],
            "rest": 1 - (spent["forward_s"] + spent["encode_s"]) / spent["pass_s"],
        },
        "encode_dtype": encode_dtype,
        "proteins": n,
        "total_s": total,
        "proteins_per_s": n / total,
        "forward_s": spent["forward_s"],
        "forward_fraction": spent["forward_s"] / total,
        "sae_encode_s": spent["encode_s"],
        "encode_over_forward": spent["encode_s"] / spent["forward_s"],
        # everything else: per-protein bookkeeping, protein set, feature map, tables
        "rest_s": total - spent["forward_s"] - spent["encode_s"],
        # the per-protein part alone (fixed costs, the feature map and tables, amortise over a large set)
        "pass_s": spent["pass_s"],
        "forward_fraction_of_pass": spent["forward_s"] / spent["pass_s"],
        "pass_over_forward": spent["pass_s"] / spent["forward_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_streaming_mb": spent["streaming_peak"] / 2**20,
    }


def main(n: int = 1000) -> dict:
    """n and 10 n proteins."""
    make_sae()  # once, outside the timed processes
    for m in (n, 10 * n):
        proteins_fasta(m)
    runs = []
    for m in (n, 10 * n):
        r = subprocess.run([sys.executable, __file__, "--one", str(m)], capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    out = {"sae": {"n_latents": N_LATENTS, "k": K, "d_in": 320, "model": "demo LM (ESM-2 8M architecture), layer 3"},
           "threads": 2, "runs": runs, "peak_rss_ratio_10x": runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "index_scaling.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def sizes(n: int, which: list[str], encode_dtype: str = "float32") -> dict:
    """The index at published ESM-2 sizes: n proteins each, forward share of index time. Runs
    are merged into the JSON by (model, SAE encode dtype, proteins), so one can be rerun alone."""
    path = ROOT / "bench" / "results" / "index_model_sizes.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = []
    for size in which:
        make_sae() if size == "8M" else make_sized(size)  # 8M: the demo LM with the trained SAE
        proteins_fasta(n)
        r = subprocess.run(
            [sys.executable, __file__, "--one", str(n), size, encode_dtype], capture_output=True, text=True, cwd=ROOT
        )
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    key = lambda r: (r["model"], r.get("encode_dtype", "float32"), r["proteins"])  # noqa: E731
    new = {key(r) for r in runs}
    runs = sorted(
        [r for r in old if key(r) not in new] + runs,
        key=lambda r: (r.get("encode_dtype", "float32"), r["proteins"], r["forward_s"]),
    )
    out = {
        "sae": {"n_latents": N_LATENTS, "k": K, "architecture": "topk, untrained, middle layer"},
        "threads": 2,
        "runs": runs,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) in (3, 4, 5) and sys.argv[1] == "--one":  # --one N [size [encode dtype]]
        print(json.dumps(one(int(sys.argv[2]), *sys.argv[3:])))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "--unirep":  # --unirep N [encode dtype]: the demo's model + SAE
        res = one(int(sys.argv[2]), "unirep1900", *(sys.argv[3:] or ["float32"]))
        (ROOT / "bench" / "results" / "index_unirep.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
    elif len(sys.argv) > 2 and sys.argv[1] == "--sizes":  # --sizes N 35M 150M ... [--encode-dtype bfloat16]
        args = sys.argv[3:]
        enc = "float32"
        if "--encode-dtype" in args:
            i = args.index("--encode-dtype")
            enc = args[i + 1]
            args = args[:i] + args[i + 2:]
        sizes(int(sys.argv[2]), args or ["35M", "150M"], enc)
    else:
        main(int(sys.argv[1]) if len(sys.argv) == 2 else 1000)
