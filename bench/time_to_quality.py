"""Time to quality: wall time for the SAE trainer to reach a fixed held-out FVU on real UniRep-1900
states, esmsae against EleutherAI sparsify, each in its fastest supported mode on this CPU.

Protocol (fixed before the run):
- Data: TOKENS training states sampled evenly over the demo's activation store (UniRep-1900, layer 1,
  its training split), shuffled once with seed 0 and written as float16 (as the store holds them,
  so nothing is lost); 16,384 held-out states from the store's held-out split. Both sides read the
  same file in the same order, one batch at a time.
- SAE: TopK, 16,384 latents, k 32, batch 4,096, b_dec initialised to the data mean, 2 threads.
  Adam recipe: the Gao et al. 2024 learning rate (both trainers' default), 32 warm-up steps, then
  constant.
- Each side's time to the target is its training time (held-out evaluations excluded) at the first
  evaluation (every EVAL_EVERY steps) whose FVU is at or below the target.
- The target is the held-out FVU of sparsify's own default recipe (SignSGD in schedule-free, no AuxK)
  after TARGET_TOKENS tokens. sparsify's time is the faster of that recipe and Adam stepped as esmsae.
- Modes: sparsify's default recipe in fp32 (its SparseCoder's bf16 autocast is enabled on CUDA only)
  and, also to the target, under CPU bf16 autocast; sparsify's time is the faster. esmsae as `esmsae
  train` runs with no options (`--optimizer signum`, the fused schedule-free sign descent; normalize
  scalar; precision auto = bf16 where the CPU multiplies it natively), and the same in fp32 for the
  ratio at equal precision. AuxK is off on both sides (sparsify's default auxk_alpha is 0).
- `--with-adam` adds the Adam recipe on both sides.

Usage (after `make demo` built the store): python bench/time_to_quality.py [STORE] [--with-adam].
Writes bench/results/time_to_quality.json with ratio_vs_sparsify = sparsify time / esmsae time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a bench measures the dtype it names, also where the CPU only emulates bf16 (esmsae.core.precision)
os.environ.setdefault("ESMSAE_KEEP_DTYPE", "1")
sys.path.insert(0, str(ROOT / "bench"))

from train_precision import _cpu  # noqa: E402
from train_throughput import peer_python  # noqa: E402

from esmsae.store.activations import ActivationStore  # noqa: E402

TOKENS = 2_097_152  # in the file: esmsae may train past sparsify's budget to reach the target
TARGET_TOKENS = 1_048_576  # sparsify's budget: 256 steps of 4,096
N_HELD = 16_384
D_LAT, K, B, EVAL_EVERY, WARMUP = 16_384, 32, 4096, 16, 32
CACHE = ROOT / "bench" / "cache"


def write_data(store: ActivationStore) -> tuple[Path, Path]:
    """Sample the store evenly (every shard), shuffle once, write float16 .npy files (bounded memory:
    one shard at a time into a memory-mapped output)."""
    train_f, held_f = CACHE / f"ttq_train_{TOKENS}.npy", CACHE / "ttq_heldout.npy"
    if train_f.exists() and held_f.exists():
        return train_f, held_f
    CACHE.mkdir(parents=True, exist_ok=True)
    name = store.hook_names[0]
    rng = np.random.default_rng(0)
    n_sh = len(store.shards)
    per = [TOKENS // n_sh + (i < TOKENS % n_sh) for i in range(n_sh)]
    dest = rng.permutation(TOKENS)  # shard rows land at shuffled positions
    out = np.lib.format.open_memmap(train_f.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16,
                                    shape=(TOKENS, store.d_in))
    pos = 0
    for i in range(n_sh):
        idx = np.flatnonzero(~np.asarray(store.shard_meta(i, "heldout")))
        pick = np.sort(rng.choice(idx, size=min(per[i], len(idx)), replace=False))
        rows = np.asarray(store.shard_array(i, name)[pick], dtype=np.float32).astype(np.float16)
        out[np.sort(dest[pos:pos + len(rows)])] = rows[rng.permutation(len(rows))]
        pos += len(rows)
    if pos != TOKENS:
        raise SystemExit(f"the store's training split gave {pos} tokens, fewer than {TOKENS}")
    out.flush()
    del out
    train_f.with_suffix(".tmp.npy").rename(train_f)
    held = store.sample(name, N_HELD, split="heldout", seed=1).numpy().astype(np.float16)
    np.save(held_f, held)
    return train_f, held_f


def run(py: Path | str, impl: str, train_f: Path, held_f: Path, tokens: int, *extra: str) -> dict:
    cmd = [str(py), str(ROOT / "bench" / "sae_step.py"), "--impl", impl, "--acts", str(train_f), "--heldout",
           str(held_f), "--n-latents", str(D_LAT), "--k", str(K), "--batch", str(B), "--train-tokens", str(tokens),
           "--curve", str(EVAL_EVERY), "--warmup-steps", str(WARMUP), "--threads", "2", *extra]
    print(" ".join(cmd[2:]), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["train_s"] for p in curve if p["step"] and p["fvu"] <= target), None)


def main() -> None:
    default = Path.home() / ".cache" / "esmsae" / "demo_work" / "sae" / "store"
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    store = ActivationStore(args[0] if args else default)
    train_f, held_f = write_data(store)
    sp_py = peer_python("sparsify")
    from esmsae.config import SAEConfig, TrainConfig
    from esmsae.core.precision import native_precision

    default_prec = native_precision("cpu") if TrainConfig().precision == "auto" else TrainConfig().precision
    defaults = ["--recipe", TrainConfig().optimizer, "--normalize", SAEConfig().normalize]
    runs = {"sparsify_default": run(sp_py, "sparsify", train_f, held_f, TARGET_TOKENS, "--recipe", "signum")}
    target = runs["sparsify_default"]["curve"][-1]["fvu"]
    # esmsae as `esmsae train` runs with no options: its default optimiser, normalisation and precision
    runs["esmsae_defaults"] = run(sys.executable, "esmsae", train_f, held_f, TOKENS, *defaults,
                                  "--precision", default_prec, "--stop-below", str(target))
    runs["esmsae_defaults_fp32"] = run(sys.executable, "esmsae", train_f, held_f, TOKENS, *defaults,
                                       "--precision", "float32", "--stop-below", str(target))
    # sparsify's other CPU mode: its default recipe under CPU bf16 autocast (not its trainer's choice on a
    # CPU; measured to the target too, so that sparsify's time is its fastest)
    runs["sparsify_default_autocast"] = run(sp_py, "sparsify", train_f, held_f, TARGET_TOKENS, "--recipe", "signum",
                                            "--autocast-bf16", "--stop-below", str(target))
    if "--with-adam" in sys.argv:  # the Adam recipe on both sides (about 20 more minutes)
        runs["sparsify_adam"] = run(sp_py, "sparsify", train_f, held_f, TARGET_TOKENS, "--adam", "fused")
        runs["esmsae_adam_bf16"] = run(sys.executable, "esmsae", train_f, held_f, TOKENS, "--precision", "bfloat16",
                                       "--stop-below", str(target))
    times = {k: time_to(r["curve"], target) for k, r in runs.items()}
    tok_s = {k: round(r["curve"][-1]["tokens"] / r["curve"][-1]["train_s"]) for k, r in runs.items()}
    tokens_to = {k: next((p["tokens"] for p in r["curve"] if p["step"] and p["fvu"] <= target), None)
                 for k, r in runs.items()}
    sp_t = min(t for k, t in times.items() if k.startswith("sparsify") and t)
    sp_fp32 = times["sparsify_default"]
    out = {
        "what": "wall time (training only) to reach sparsify's held-out FVU after "
                f"{TARGET_TOKENS:,} tokens, real UniRep-1900 states",
        "settings": {"d_in": store.d_in, "n_latents": D_LAT, "k": K, "batch": B, "threads": 2,
                     "train_tokens": TOKENS, "heldout_tokens": N_HELD, "eval_every_steps": EVAL_EVERY,
                     "warmup_steps": WARMUP, "lr": {k: r["base_lr"] for k, r in runs.items()}, "store": str(store.path),
                     "sparsify": "eai-sparsify==1.3.3: default = its trainer's recipe (SignSGD in schedule-free,"
                                 " lr 5e-3 at 2^14 latents, no AuxK) in fp32, its CPU precision; default_autocast ="
                                 " the same under CPU bf16 autocast",
                     "esmsae": f"defaults = `esmsae train` with no options: optimizer {TrainConfig().optimizer}"
                               f" (fused schedule-free sign descent), normalize {SAEConfig().normalize}, precision"
                               f" auto = {default_prec} on this CPU; defaults_fp32 = the same with --precision"
                               " float32"},
        "recipes": {k: {"precision": r["precision"] if k.startswith("esmsae") else (
            "bfloat16 autocast" if r.get("autocast_bf16") else "float32"), "recipe": r["recipe"],
            "normalize": r.get("normalize", "none"), "lr": r["base_lr"]} for k, r in runs.items()},
        "target_fvu": target,
        "seconds_to_target": times,
        "tokens_to_target": tokens_to,
        "tokens_per_s": tok_s,
        "final_fvu": {k: r["curve"][-1]["fvu"] for k, r in runs.items()},
        # the issue-34 targets: >= 3 with esmsae's defaults against sparsify's fastest mode; >= 2 both in fp32
        "ratio_vs_sparsify": round(sp_t / times["esmsae_defaults"], 2) if times["esmsae_defaults"] else None,
        "ratio_at_equal_precision": round(sp_fp32 / times["esmsae_defaults_fp32"], 2)
        if times["esmsae_defaults_fp32"] and sp_fp32 else None,
        "sparsify_fastest": min((k for k in times if k.startswith("sparsify") and times[k]), key=times.get),
        "target_from": f"sparsify's default recipe after {TARGET_TOKENS:,} tokens",
        "curves": {k: r["curve"] for k, r in runs.items()},
        "machine": _cpu(),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "time_to_quality.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "curves"}, indent=2))


if __name__ == "__main__":
    main()
