"""Evaluation card of an SAE checkpoint on held-out proteins, written to ``eval.json``.

Reconstruction (raw activation space): MSE, fraction of variance unexplained (FVU),
L0, dead fraction (no activation over the N evaluated tokens, N reported), dense
fraction (fires on more than 10% of tokens), and a log-frequency histogram.

Downstream: the protein LM's masked-LM cross-entropy at masked positions with the
original activations, with the SAE reconstruction spliced in at the hooked site
(residue positions only; BOS/EOS are left alone, as in training), and with those
activations zero-ablated; "% loss recovered" = (CE_zero - CE_sae) / (CE_zero - CE_orig).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import EVAL, check_compatible, hook_of, load_sae, model_config_of
from .config import DENSE_FREQ, EvalConfig, save_json
from .plm import Hook, ProteinLM, length_batches, load_plm
from .sae import SAE
from .store import ActivationStore



@torch.no_grad()
def reconstruction_metrics(sae: SAE, chunks, dense_threshold: float = DENSE_FREQ, batch: int = 8192) -> dict[str, Any]:
    """Stream fp16/fp32 activation chunks [T, D] through the SAE and accumulate metrics."""
    Fn = sae.cfg.n_latents
    fired = torch.zeros(Fn, dtype=torch.long)
    act_sum = torch.zeros(Fn, dtype=torch.float64)
    sse = sum_x2 = 0.0
    sum_vec = None
    n = l0 = 0
    for arr in chunks:
        for s in range(0, len(arr), batch):
            x = torch.as_tensor(np.asarray(arr[s : s + batch]), dtype=torch.float32)
            lat = sae.encode(x)
            recon = sae.decode(lat.acts_BK, lat.idx_BK, x, denormalize=True)
            sse += float((recon - x).double().pow(2).sum())
            xd = x.double()
            sum_vec = xd.sum(0) if sum_vec is None else sum_vec + xd.sum(0)
            sum_x2 += float(xd.pow(2).sum())
            live = lat.acts_BK > 0
            l0 += int(live.sum())
            # indices within a row are distinct, so this counts tokens on which each latent fired
            fired += torch.bincount(lat.idx_BK[live], minlength=Fn)
            act_sum.index_add_(0, lat.idx_BK[live], lat.acts_BK[live].double())
            n += len(x)
    if n == 0:
        raise ValueError("no held-out tokens to evaluate on (is holdout_fraction 0?)")
    D = sae.d_in
    total_var = sum_x2 - float(sum_vec.pow(2).sum()) / n
    freq = fired.double() / n
    with np.errstate(divide="ignore"):
        logf = np.log10(freq.numpy())
    edges = np.arange(-7.0, 0.01, 0.5)
    counts, _ = np.histogram(logf[np.isfinite(logf)], bins=edges)
    return {
        "n_tokens": n,
        "mse": sse / (n * D),
        "mse_per_token": sse / n,
        "fvu": sse / max(total_var, 1e-12),
        "l0": l0 / n,
        "dead_fraction": float((fired == 0).double().mean()),
        "dead_window_tokens": n,
        "dense_fraction": float((freq > dense_threshold).double().mean()),
        "dense_threshold": dense_threshold,
        "freq_histogram": {"log10_edges": edges.tolist(), "counts": counts.tolist(), "n_dead": int((fired == 0).sum())},
    }


@torch.no_grad()
def spliced_lm_loss(plm: ProteinLM, sae: SAE, hook: Hook, sequences: list[str], mask_prob: float = 0.15, seed: int = 0) -> dict[str, float]:
    """Masked-LM cross-entropy: original, SAE reconstruction spliced in, zero ablation."""
    rng = np.random.default_rng(seed)
    seqs = [s[: plm.max_residues] for s in sequences]
    masks = []
    for s in seqs:
        m = rng.random(len(s)) < mask_prob
        if not m.any():
            m[rng.integers(len(s))] = True
        masks.append(m)
    totals = {"orig": 0.0, "sae": 0.0, "zero": 0.0}
    n_masked = 0
    for batch in length_batches([len(s) for s in seqs], plm.cfg.resolved_batch_tokens(), extra=2):
        sub = [seqs[i] for i in batch]
        ids, attn = plm.tokenize(sub)
        target = ids
        sel = torch.zeros_like(ids, dtype=torch.bool)
        for r, i in enumerate(batch):
            sel[r, 1 : len(seqs[i]) + 1] = torch.from_numpy(masks[i])
        masked_ids = ids.masked_fill(sel, plm.mask_id)
        resid = attn & (ids != plm.cls_id) & (ids != plm.eos_id)  # residue positions (no BOS/EOS/pad)

        def via_sae(acts_BLD: torch.Tensor) -> torch.Tensor:
            x = acts_BLD[resid].float()
            lat = sae.encode(x)
            out = acts_BLD.clone()
            out[resid] = sae.decode(lat.acts_BK, lat.idx_BK, x, denormalize=True).to(acts_BLD.dtype)
            return out

        def zero(acts_BLD: torch.Tensor) -> torch.Tensor:
            return acts_BLD.masked_fill(resid[..., None], 0.0)

        for key, rep in (("orig", None), ("sae", {hook: via_sae}), ("zero", {hook: zero})):
            logits = plm.logits(masked_ids, attn, rep)
            totals[key] += float(F.cross_entropy(logits[sel], target[sel], reduction="sum"))
        n_masked += int(sel.sum())
    ce = {k: v / n_masked for k, v in totals.items()}
    denom = ce["zero"] - ce["orig"]
    return {
        "ce_orig": ce["orig"],
        "ce_sae": ce["sae"],
        "ce_zero": ce["zero"],
        "pct_loss_recovered": 100.0 * (ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-9 else float("nan"),
        "n_proteins": len(seqs),
        "n_masked_tokens": n_masked,
    }


def evaluate(sae_dir: str | os.PathLike, ecfg: EvalConfig | None = None, store_path: str | None = None, plm: ProteinLM | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Write ``eval.json`` in the checkpoint folder and return it."""
    ecfg = ecfg or EvalConfig()
    sae_dir = Path(sae_dir)
    sae, meta = load_sae(sae_dir)
    prov = meta.get("provenance", {})
    imported = "format" in prov  # a published SAE (esmsae.published): none of the user's proteins trained it
    store_path = store_path or prov.get("store")
    if not store_path:
        raise ValueError(f"{sae_dir} was imported ({prov.get('format')} from {prov.get('source')}) and has no activation store: "
                         "embed your proteins at its layer first (python -m esmsae embed ... --layers "
                         f"{meta.get('layer')} --site {meta.get('site')}) and pass --store")
    store = ActivationStore(store_path)
    name = meta["hook"]
    store.check_hook(name)
    if store.d_in != sae.d_in:
        raise ValueError(f"store {store.path} has width {store.d_in}, SAE d_in is {sae.d_in}")
    split = "all" if imported else "heldout"  # an imported SAE has no store of its own: none of these proteins trained it
    t0 = time.perf_counter()
    rec = reconstruction_metrics(sae, (a for a, _, _ in store.iter_split(name, split, ecfg.max_tokens)), ecfg.dense_threshold)
    card: dict[str, Any] = {
        "checkpoint": str(sae_dir),
        "hook": name,
        "base_model": meta["base_model"],
        "layer": meta["layer"],
        "site": meta["site"],
        "d_in": sae.d_in,
        "n_latents": sae.cfg.n_latents,
        "k": sae.cfg.k,
        "architecture": sae.cfg.architecture,
        "tokens_trained": prov.get("tokens_trained"),
        "eval_split": ("all proteins of the store (an imported SAE saw none of them)" if split == "all"
                       else "heldout proteins (sequence-hash split)"),
        "source": {k: prov[k] for k in ("format", "source") if k in prov},
        **rec,
    }
    pool = store.manifest.get("embed", {}).get("pool", "none")
    if ecfg.lm_proteins > 0 and pool != "none":
        card["downstream_skipped"] = f"the store holds one vector per protein or rows without sequences (pool {pool!r}): no spliced LM loss"
    elif ecfg.lm_proteins > 0:
        if plm is None:
            plm = load_plm(model_config_of(meta, model_name or ""))
        check_compatible(meta, plm, strict_name=model_name is None)
        prots = store.proteins()
        held = (prots if split == "all" else prots[prots["split"] == "heldout"]).sort_values("pidx").head(ecfg.lm_proteins)
        if len(held):
            card["downstream"] = spliced_lm_loss(plm, sae, hook_of(meta), held["sequence"].tolist(), ecfg.mask_prob, ecfg.seed)
    card["eval_seconds"] = time.perf_counter() - t0
    save_json(card, sae_dir / EVAL)
    return card
