"""SAE trainer: streams batches from an activation store, trains one SAE per layer.

* Bounded memory: ``buffer_shards`` shards are loaded and shuffled together; the
  next group is prefetched by a background thread while the current one trains.
* Exact resume: the data order is a pure function of (seed, epoch, group), and
  ``state.pt`` (written atomically) holds parameters, optimiser moments, step,
  loader position and dead-latent counters, so a resumed run reproduces the
  uninterrupted one bit for bit.
* Outputs in ``out``: one checkpoint folder per SAE (``L3_resid/sae.safetensors``
  + ``cfg.json``), ``state.pt``, ``metrics.jsonl`` and ``train_cfg.json``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from esmsae.config import TRAINABLE_ARCHITECTURES, SAEConfig, TrainConfig, hook_name, resolve_device, save_json
from esmsae.core.atomic import write_atomic, write_text_atomic
from esmsae.core.dist import World, process_group
from esmsae.core.precision import native_precision
from esmsae.core.version import __version__
from esmsae.sae.checkpoint import save_sae
from esmsae.sae.model import SAE
from esmsae.sae.optim import averaged_copy, default_lr, make_optimizer, schedule_free
from esmsae.store.activations import ActivationStore
from esmsae.store.loader import ShardBatches, TrainError

STATE = "state.pt"
METRICS = "metrics.jsonl"


class TrainInterrupted(Exception):
    """Training stopped on request (``should_stop``) after writing a checkpoint; rerun to resume."""


def lr_at(step: int, tcfg: TrainConfig, base_lr: float) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last (1 - decay_start)."""
    total = tcfg.total_steps
    if tcfg.warmup_steps and step < tcfg.warmup_steps:
        return base_lr * (step + 1) / tcfg.warmup_steps
    decay_from = int(total * tcfg.decay_start)
    if step >= decay_from and total > decay_from:
        return base_lr * max(0.0, (total - step) / (total - decay_from))
    return base_lr


def train_step(sae: SAE, opt: torch.optim.Optimizer, x_BD: torch.Tensor, dead_mask_F: torch.Tensor | None = None,
               l1_coef: float | None = None, lr: float | None = None, forward=None,
               **batch_stats):
    """One optimisation step of an SAE (the one copy: the trainer, the tests and the benches):
    forward, backward, remove the gradient component along each decoder row (it would only
    change the row's norm), Adam, re-normalise the decoder rows to unit norm. Returns the
    forward output (losses, latents); under the schedule-free optimiser the renorm rescales both of
    its sequences so that the averaged weights have unit decoder rows. ``forward``: the DDP wrapper
    of ``sae`` under torchrun, whose backward averages the gradients over ranks, with ``batch_stats``
    (``error_variance``, ``batch_threshold``) computing the global batch's statistics."""
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    o = (forward or sae)(x_BD, dead_mask_F=dead_mask_F, l1_coef=l1_coef, **batch_stats)
    opt.zero_grad(set_to_none=True)
    o.loss.backward()
    sae.remove_gradient_parallel_to_decoder()
    opt.step()
    if hasattr(opt, "unit_rows_"):  # schedule-free: y and z rescaled together, so their average has unit rows
        opt.unit_rows_(sae.W_dec)
    else:
        sae.set_decoder_norm_to_unit()
    return o


def global_error_variance(e_BD: torch.Tensor) -> torch.Tensor:
    """AuxK's normaliser over the global batch (data parallel), from all-reduced sums: each rank then
    scales its AuxK gradient as one process would (:func:`esmsae.sae.model.local_error_variance`)."""
    from esmsae.core.dist import all_reduce_

    e = e_BD.double()
    stats = all_reduce_(torch.cat([e.sum(0), e.pow(2).sum().view(1), e.new_tensor([e.shape[0]])]), op="sum")
    n = stats[-1]
    mean_D = stats[:-2] / n
    return (stats[-2] / n - mean_D.pow(2).sum()).to(e_BD.dtype)


def global_batch_threshold(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK's threshold over the global batch (data parallel): the k x B_global largest values.
    Each rank offers its local top k x B_global (no more can come from one rank) and all take the
    same threshold, so every rank keeps what one process would keep."""
    from esmsae.core.dist import all_gather_cat, all_reduce_

    flat = pre_BF.flatten()
    n_glob = int(all_reduce_(torch.tensor([float(pre_BF.shape[0])], device=flat.device), op="sum")[0]) * k
    glob = all_gather_cat(flat.topk(min(n_glob, flat.numel()), sorted=False).values)
    return glob.topk(min(n_glob, glob.numel()), sorted=False).values.min()


def _resumable(train_cfg: dict) -> dict:
    """The settings a resume must match: where it runs (device, threads) may change."""
    return {k: v for k, v in train_cfg.items() if k not in ("device", "threads", "parallel")}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp), "training state")


def _rewrite_metrics(path: Path, max_step: int) -> None:
    """On resume, drop metric rows logged after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
    write_text_atomic(path, "".join(ln + "\n" for ln in keep))


def sae_meta(
    store: ActivationStore, layer: int, tcfg: TrainConfig, step: int, tokens: int, trained_as: str = ""
) -> dict[str, Any]:
    info = store.manifest["model_info"]
    saved_as = (
        {"trained_as": "batchtopk: saved as jumprelu with the learned threshold for every latent (the same codes)"}
        if trained_as == "batchtopk"
        else {}
    )
    return {
        **saved_as,
        "base_model": {
            "name": info["name"],
            "family": info["family"],
            "n_layers": info["n_layers"],
            "d_model": info["d_model"],
        },
        "model_config": store.manifest["model"],
        "layer": layer,
        "site": store.site,
        "pool": store.manifest.get("embed", {}).get("pool", "none"),
        "hook": hook_name(layer, store.site),
        "provenance": {
            "store": str(store.path.resolve()),
            "fasta": store.manifest["provenance"]["fasta"],
            "n_proteins": store.manifest["n_proteins"],
            "n_tokens": store.manifest["n_tokens"],
            "holdout_fraction": store.manifest["embed"]["holdout_fraction"],
            "tokens_trained": tokens,
            "steps": step,
        },
        # how it ran (parallel) is left out: a layer-parallel checkpoint is the one-process one, byte for byte
        "train": {k: v for k, v in asdict(tcfg).items() if k != "parallel"},
    }


class _Run:
    """One training run: the SAEs of its layers, their optimisers, dead-latent counters, the data
    order and the step; what a checkpoint saves and a resume restores."""

    def __init__(self, tcfg: TrainConfig, scfg: SAEConfig, w: World | None = None):
        if not tcfg.out:
            raise TrainError("TrainConfig.out: no run folder given")
        self.w = w = w or World()
        self.store = store = ActivationStore(tcfg.store)
        all_layers = tcfg.layers or store.layers
        all_names = [hook_name(layer, store.site) for layer in all_layers]
        for n in all_names:
            store.check_hook(n)
        if scfg.d_in and scfg.d_in != store.d_in:
            raise TrainError(f"SAEConfig.d_in is {scfg.d_in} but the store's activations have width {store.d_in}")
        scfg = SAEConfig(**{**asdict(scfg), "d_in": store.d_in})
        if scfg.architecture not in TRAINABLE_ARCHITECTURES:
            raise TrainError(
                f"SAEConfig.architecture {scfg.architecture!r} can be imported (python -m esmsae import), not trained; "
                f"train one of {list(TRAINABLE_ARCHITECTURES)}"
            )
        # under torchrun: "layers" gives rank r the layers r, r + W, ... (sparsify's
        # --distribute_modules, without the all-gather: activations are cached); "data" splits
        # every global batch over the ranks (DDP)
        self.layer_parallel = w.distributed and tcfg.parallel == "layers"
        self.data_parallel = w.distributed and tcfg.parallel == "data"
        if self.data_parallel and tcfg.batch_size % w.size:
            raise TrainError(
                f"TrainConfig.batch_size {tcfg.batch_size} is the global batch and must be divisible by the {w.size}"
                " ranks"
            )
        mine = list(range(w.rank, len(all_names), w.size)) if self.layer_parallel else list(range(len(all_names)))
        self.layers = [all_layers[j] for j in mine]
        self.names = [all_names[j] for j in mine]
        # precision "auto": bf16 where this device multiplies it natively (the default recipe's speed,
        # bench/time_to_quality.py), else fp32; resolved here so the run's records name what ran
        if tcfg.precision == "auto":
            tcfg = replace(tcfg, precision=native_precision(resolve_device(tcfg.device)))
        self.tcfg, self.scfg = tcfg, scfg
        self.out = Path(tcfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        self.base_lr = tcfg.lr or default_lr(tcfg.optimizer, scfg.n_latents)
        self.device = torch.device(w.device(resolve_device(tcfg.device)))
        torch.manual_seed(tcfg.seed)
        # built on the CPU from the seed (the same initial weights on every device and rank:
        # the seed follows the layer's place in the whole run, not in this rank's share), then moved
        self.saes = {
            all_names[j]: SAE(scfg, store.d_in, seed=tcfg.seed + j).to(self.device).set_train_dtype(tcfg.precision)
            for j in mine
        }
        self.opts = {n: make_optimizer(tcfg.optimizer, s.parameters(), self.base_lr) for n, s in self.saes.items()}
        self.since_fired = {n: torch.zeros(scfg.n_latents, dtype=torch.long, device=self.device) for n in self.names}
        # data-parallel: each rank draws the same global batch and keeps its rows of it
        part = (w.rank, w.size) if self.data_parallel else (0, 1)
        self.loader = (
            ShardBatches(store, self.names, tcfg.batch_size, tcfg.buffer_shards, tcfg.seed, part)
            if self.names
            else None
        )
        self.forwards: dict[str, Any] = {}
        self.batch_stats: dict[str, Any] = {}  # data-parallel: the global batch statistics (wrap_ddp)
        self.step = 0
        suffix = f".rank{w.rank}-of-{w.size}" if self.layer_parallel else ""
        self.state_path = self.out / f"state{suffix}.pt"
        self.metrics_path = self.out / (f"metrics{suffix}.jsonl" if self.layer_parallel and not w.main else METRICS)
        # rank 0 writes what one process writes; in layer mode every rank writes its own layers
        self.writes = w.main or self.layer_parallel

    def wrap_ddp(self) -> None:
        """Data-parallel: wrap each SAE in DDP (gradients averaged over ranks in backward) and pass
        the global batch's statistics (AuxK normaliser, BatchTopK threshold) into every forward."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        # ESMSAE_DDP_LOCAL_NORMALISER=1 (tests only) keeps AuxK's normaliser per rank, the variant
        # tests/test_distributed.py shows drifting from one process
        local = os.environ.get("ESMSAE_DDP_LOCAL_NORMALISER") == "1"
        self.batch_stats = {"batch_threshold": global_batch_threshold}
        if not local:
            self.batch_stats["error_variance"] = global_error_variance
        for n, s in self.saes.items():
            # buffers (normalisation, BatchTopK threshold) are equal on every rank by construction
            self.forwards[n] = DDP(
                s, device_ids=[self.device.index] if self.device.type == "cuda" else None, broadcast_buffers=False
            )

    def resume_or_start(self) -> None:
        """Restore the state of an interrupted run, or fit the normalisation of a new one. Under
        data parallelism every rank loads the same state.pt (rank 0 wrote it)."""
        state_path, cfg_path = self.state_path, self.out / "train_cfg.json"
        if self.w.distributed:
            from esmsae.core.dist import barrier

            barrier()  # every rank sees the same files
        if state_path.exists():
            st = torch.load(state_path, map_location="cpu", weights_only=False)
            if _resumable(st["train"]) != _resumable(asdict(self.tcfg)) or st["sae"] != asdict(self.scfg):
                raise TrainError(f"{self.out} holds a run with other settings; resume needs the same configuration "
                                 f"(saved in {cfg_path}) or a new --out folder")
            for n in self.names:
                self.saes[n].load_state_dict(st["saes"][n])
                self.opts[n].load_state_dict(st["opts"][n])
                self.since_fired[n] = st["since_fired"][n].to(self.device)
            self.step = st["step"]
            if self.loader is not None:
                self.loader.pos = tuple(st["loader_pos"])
            if self.writes:
                _rewrite_metrics(self.metrics_path, self.step)
        else:
            if self.w.main:
                save_json({"train": asdict(self.tcfg), "sae": asdict(self.scfg)}, cfg_path)
            for n, s in self.saes.items():
                s.fit_normalization(torch.as_tensor(self.store.sample(n, 65_536, seed=self.tcfg.seed)).to(self.device))
            if self.writes:
                self.metrics_path.unlink(missing_ok=True)

    def checkpoint(self) -> None:
        if not self.writes:
            return
        tokens = self.step * self.tcfg.batch_size
        for layer, n in zip(self.layers, self.names):
            # BatchTopK is saved as JumpReLU with its learned threshold (the inference form, as SAELens)
            meta = sae_meta(self.store, layer, self.tcfg, self.step, tokens, trained_as=self.scfg.architecture)
            # schedule-free: the averaged weights x, not the training point y (esmsae.sae.optim)
            save_sae(averaged_copy(self.saes[n], self.opts[n]).for_inference(), self.out / n, meta)
        _atomic_torch_save(
            {
                "step": self.step,
                "loader_pos": list(self.loader.pos),
                "train": asdict(self.tcfg),
                "sae": asdict(self.scfg),
                "saes": {n: s.state_dict() for n, s in self.saes.items()},
                "opts": {n: o.state_dict() for n, o in self.opts.items()},
                "since_fired": self.since_fired,
                "esmsae_version": __version__,
            },
            self.state_path,
        )

    def step_all(self, batch: dict[str, torch.Tensor], acc: dict[str, dict[str, float]]) -> float:
        """One optimisation step of every layer's SAE on its batch; running sums go to ``acc``."""
        scfg = self.scfg
        sf = schedule_free(self.tcfg.optimizer)
        lr = self.base_lr if sf else lr_at(self.step, self.tcfg, self.base_lr)
        l1c = scfg.l1_coef * min(1.0, (self.step + 1) / max(1, self.tcfg.l1_warmup_steps))
        for n in self.names:
            sae, x = self.saes[n], batch[n].to(self.device, non_blocking=True)
            o = train_step(
                sae,
                self.opts[n],
                x,
                dead_mask_F=self.since_fired[n] >= scfg.dead_tokens,
                l1_coef=l1c,
                lr=lr,
                forward=self.forwards.get(n),
                **self.batch_stats,
            )
            with torch.no_grad():
                if scfg.architecture == "relu":
                    active_BF = sae.pre_acts(sae.normalize(x)[0]) > 0
                    fired = active_BF.any(0)
                    l0 = float(active_BF.float().sum(-1).mean())
                else:
                    live = o.acts_BK > 0
                    fired = torch.zeros(scfg.n_latents, dtype=torch.bool, device=self.device)
                    fired[o.idx_BK[live]] = True
                    l0 = float(live.float().sum(-1).mean())
                if self.data_parallel:
                    # dead-latent bookkeeping over the global batch: fired on any rank, B global
                    # tokens (per-rank counts are sparsify's open bug #119)
                    from esmsae.core.dist import all_reduce_

                    fired = all_reduce_(fired.to(torch.int32), op="max").bool()
                self.since_fired[n] += self.tcfg.batch_size
                self.since_fired[n][fired] = 0
            a = acc[n]
            for key, val in (
                ("loss", o.loss),
                ("mse", o.mse),
                ("fvu", o.fvu),
                ("auxk", o.auxk_loss),
                ("l1", o.l1_loss),
            ):
                a[key] = a.get(key, 0.0) + float(val.detach())
            a["l0"] = a.get("l0", 0.0) + l0
            a["n"] = a.get("n", 0) + 1
        self.step += 1
        return lr

    def metric_rows(self, acc: dict[str, dict[str, float]], lr: float, tokens_per_s: float) -> list[dict[str, Any]]:
        """The means since the last log row, one row per SAE (``acc`` is emptied). Data-parallel:
        the mean over ranks of each rank's means (collective: every rank calls this)."""
        rows = []
        for n in self.names:
            a = acc[n]
            if self.data_parallel and a:
                from esmsae.core.dist import all_reduce_

                keys = sorted(k for k in a if k != "n")
                v = all_reduce_(torch.tensor([a[k] for k in keys], dtype=torch.float64), op="sum") / self.w.size
                a.update({k: float(x) for k, x in zip(keys, v)})
            cnt = max(1, a.pop("n", 1))
            row = {
                "step": self.step,
                "tokens": self.step * self.tcfg.batch_size,
                "sae": n,
                "lr": lr,
                "tokens_per_s": tokens_per_s,
            }
            row.update({k: v / cnt for k, v in a.items()})
            row["dead_frac"] = float((self.since_fired[n] >= self.scfg.dead_tokens).float().mean())
            rows.append(row)
            acc[n] = {}
        return rows


def train(tcfg: TrainConfig, scfg: SAEConfig, progress: bool = True, stop_after_steps: int | None = None,
          should_stop: Callable[[], bool] | None = None) -> list[Path]:
    """Train (or resume) one SAE per layer; return their checkpoint folders.

    ``stop_after_steps`` ends the run early after a checkpoint, as an interruption would.
    ``should_stop()`` is asked after every step; when it says yes the run writes a checkpoint
    (so a cancel before the first periodic checkpoint loses nothing) and raises
    :class:`TrainInterrupted`.
    """
    with process_group(resolve_device(tcfg.device)) as w:
        return _train(tcfg, scfg, w, progress, stop_after_steps, should_stop)


def _train(tcfg: TrainConfig, scfg: SAEConfig, w: World, progress: bool, stop_after_steps: int | None,
           should_stop: Callable[[], bool] | None) -> list[Path]:
    run = _Run(tcfg, scfg, w)
    run.resume_or_start()
    if run.data_parallel:
        run.wrap_ddp()
    if not run.names:  # layer-parallel with more ranks than layers: nothing for this rank
        return []
    wandb_run = None
    if tcfg.use_wandb and w.main:
        import wandb  # optional dependency, imported only when asked for

        wandb_run = wandb.init(
            project=tcfg.wandb_project,
            config={"train": asdict(tcfg), "sae": asdict(run.scfg)},
            resume="allow",
            dir=str(run.out),
        )
    total = tcfg.total_steps
    for s in run.saes.values():
        s.train()
    bar = tqdm(
        total=total,
        initial=run.step,
        unit="step",
        desc="train" if not w.distributed else f"train rank {w.rank}",
        disable=not progress or not run.writes,
    )
    it = iter(run.loader)
    acc: dict[str, dict[str, float]] = {n: {} for n in run.names}
    t_last, tok_last = time.perf_counter(), run.step * tcfg.batch_size
    metrics_f = open(run.metrics_path, "a") if run.writes else None
    try:
        while run.step < total:
            lr = run.step_all(next(it), acc)
            step = run.step
            bar.update(1)
            if step % tcfg.log_every == 0 or step == total:
                now, tokens = time.perf_counter(), step * tcfg.batch_size
                rows = run.metric_rows(acc, lr, (tokens - tok_last) / max(now - t_last, 1e-9))
                t_last, tok_last = now, tokens
                if metrics_f is not None:
                    metrics_f.write("".join(json.dumps(r) + "\n" for r in rows))
                    metrics_f.flush()
                bar.set_postfix(
                    fvu=f"{rows[0]['fvu']:.3f}", l0=f"{rows[0]['l0']:.1f}", dead=f"{rows[0]['dead_frac']:.2f}"
                )
                if wandb_run is not None:
                    for r in rows:
                        wandb_run.log(
                            {f"{r['sae']}/{k}": v for k, v in r.items() if k not in ("sae", "step")}, step=step
                        )
            if step % tcfg.checkpoint_every == 0 or step == total:
                run.checkpoint()
            if stop_after_steps is not None and step >= stop_after_steps:
                if step % tcfg.checkpoint_every != 0:
                    run.checkpoint()
                break
            # one rank decides for all (a stop seen by some ranks only would hang the others)
            if should_stop is not None and step < total and _rank0_decides(should_stop(), run):
                if step % tcfg.checkpoint_every != 0:
                    run.checkpoint()
                raise TrainInterrupted(
                    f"training stopped at step {step} of {total}, checkpoint written; rerun to resume"
                )
    finally:
        if metrics_f is not None:
            metrics_f.close()
        bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    return [run.out / n for n in run.names]


def _rank0_decides(flag: bool, run: _Run) -> bool:
    """Rank 0's answer on every rank (data-parallel ranks must stop at the same step)."""
    if not run.data_parallel:
        return flag
    from esmsae.core.dist import broadcast_object

    return bool(broadcast_object(flag))


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """metrics.jsonl, plus the other ranks' files of a layer-parallel run (metrics.rankR-of-W.jsonl)."""
    paths = [Path(run) / METRICS] + sorted(Path(run).glob("metrics.rank*.jsonl"))
    rows = []
    for p in paths:
        if not p.exists():
            continue
        for ln in p.read_text().splitlines():
            if ln.strip():
                try:
                    rows.append(json.loads(ln))
                except json.JSONDecodeError:  # a line being written right now
                    pass
    if len(paths) > 1:
        rows.sort(key=lambda r: r.get("step", 0))
    return rows
