"""Evaluation card of an SAE checkpoint on held-out proteins, written to ``eval.json``.

Reconstruction (raw activation space): MSE, fraction of variance unexplained (FVU),
L0, dead fraction (no activation over the N evaluated tokens, N reported), dense
fraction (fires on more than 10% of tokens), and a log-frequency histogram.

Downstream (:func:`spliced_lm_loss`): the protein LM's cross-entropy with the SAE
reconstruction spliced in at the hooked site (residue positions only; BOS/EOS are left
alone, as in training), in InterPLM's unmasked protocol and in a masked protocol that splices
only unmasked residues, each against mean ablation (the "% loss recovered" baseline), the
unigram predictor and zero ablation (labelled; a meaningless baseline for a protein LM).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from esmsae.config import DENSE_FREQ, EvalConfig, resolve_device, save_json
from esmsae.lm.plm import Hook, ProteinLM, length_batches, load_plm
from esmsae.sae.checkpoint import EVAL, check_compatible, hook_of, load_checkpoint, model_config_of
from esmsae.sae.model import SAE
from esmsae.store.activations import ActivationStore


@torch.no_grad()
def reconstruction_metrics(sae: SAE, chunks, dense_threshold: float = DENSE_FREQ, batch: int = 8192) -> dict[str, Any]:
    """Stream fp16/fp32 activation chunks [T, D] through the SAE and accumulate metrics."""
    Fn = sae.cfg.n_latents
    dev = sae.W_dec.device
    fired = torch.zeros(Fn, dtype=torch.long, device=dev)
    act_sum = torch.zeros(Fn, dtype=torch.float64, device=dev)
    sse = sum_x2 = 0.0
    sum_vec = None
    n = l0 = 0
    for arr in chunks:
        for s in range(0, len(arr), batch):
            x = torch.as_tensor(np.asarray(arr[s : s + batch]), dtype=torch.float32).to(dev)
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
    fired, sum_vec = fired.cpu(), sum_vec.cpu()
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
        "mean_act": (sum_vec / n).float().tolist(),  # the mean-ablation vector of the downstream loss
    }


def aa_lookup_fvu(
    store: ActivationStore, name: str, max_tokens: int, fit_tokens: int = 1_000_000
) -> dict[str, Any] | None:
    """The control for FVU: a 20-entry table (the mean activation of each residue type, fitted on
    training tokens) predicting held-out activations from the residue alone. In a small protein
    LM's middle layer residue identity carries almost all the variance (the demo: FVU about 0.04
    for this table), so an SAE's FVU is read against this, not against 1. None when the store has
    no sequences (pooled or .npy stores)."""
    prots = store.proteins()
    if (
        "sequence" not in prots
        or (prots["sequence"].str.len() == 0).all()
        or store.manifest.get("embed", {}).get("pool", "none") != "none"
    ):
        return None
    seq_of = dict(zip(prots["pidx"], prots["sequence"]))
    lut = np.full(256, 20, np.int64)
    lut[np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", np.uint8)] = np.arange(20)

    def aa(prot: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return np.array(
            [lut[ord(seq_of[p][q])] if 0 <= q < len(seq_of[p]) else 20 for p, q in zip(prot.tolist(), pos.tolist())]
        )

    sums, counts = None, np.zeros(21)
    for acts, prot, pos in store.iter_split(name, "train", fit_tokens):
        a = aa(prot, pos)
        x = acts.astype(np.float64)
        sums = np.zeros((21, x.shape[1])) if sums is None else sums
        np.add.at(sums, a, x)
        counts += np.bincount(a, minlength=21)
    if sums is None:
        return None
    table = sums / np.maximum(counts, 1)[:, None]
    sse = sx = sx2 = n = 0.0
    for acts, prot, pos in store.iter_split(name, "heldout", max_tokens):
        x = acts.astype(np.float64)
        sse += float(((x - table[aa(prot, pos)]) ** 2).sum())
        sx = sx + x.sum(0)
        sx2 += float((x ** 2).sum())
        n += len(x)
    if n == 0:
        return None
    total = sx2 - float((np.asarray(sx) ** 2).sum()) / n
    return {
        "fvu": sse / max(total, 1e-12),
        "n_tokens": int(n),
        "fit_tokens": int(counts.sum()),
        "what": "20-entry table: the mean training activation of each residue type, predicting held-out activations",
    }


PROTOCOLS = ("unmasked", "masked")


def _ce_per_protein(logits_BLV: torch.Tensor, target_BL: torch.Tensor, sel_BL: torch.Tensor) -> np.ndarray:
    """Mean cross-entropy over each row's selected positions -> [B] (NaN where none)."""
    ce_BL = F.cross_entropy(logits_BLV.transpose(1, 2), target_BL, reduction="none")
    n = sel_BL.sum(1)
    return ((ce_BL * sel_BL).sum(1) / n.clamp(min=1)).masked_fill(n == 0, float("nan")).double().cpu().numpy()


@torch.no_grad()
def spliced_lm_loss(plm: ProteinLM, sae: SAE, hook: Hook, sequences: list[str], mask_prob: float = 0.15, seed: int = 0,
                    mean_act_D: torch.Tensor | None = None, unigram_V: np.ndarray | None = None) -> dict[str, Any]:
    """The protein LM's cross-entropy with the SAE reconstruction spliced in at the hooked site,
    against its baselines, in two protocols:

    * ``unmasked`` (InterPLM's ``fidelity.py``): no masking; CE of every residue, averaged per
      protein, then over proteins; the reconstruction replaces every residue activation;
    * ``masked``: ``mask_prob`` of residues -> ``<mask>``; CE at masked positions (averaged per
      protein, then over proteins); the reconstruction replaces only the *unmasked* residues,
      because the SAE never saw a ``<mask>`` token in training (splicing there measured the
      SAE off its training distribution: FVU 1.06 at ``<mask>`` vs 0.002 on residues).

    Baselines at the same positions: *mean ablation* (every spliced activation replaced by the
    mean activation ``mean_act_D``), the *unigram* predictor (residue frequencies
    ``unigram_V``), and zero ablation (labelled as such; for a protein LM it is far worse than
    uniform guessing, so "% recovered against zero" says almost nothing). ``pct_loss_recovered``
    = (CE_mean - CE_sae) / (CE_mean - CE_orig); ``delta_ce_nats`` = CE_sae - CE_orig.
    """
    rng = np.random.default_rng(seed)
    seqs = [s[: plm.max_residues] for s in sequences]
    masks = []
    for s in seqs:
        m = rng.random(len(s)) < mask_prob
        if not m.any():
            m[rng.integers(len(s))] = True
        masks.append(m)
    if mean_act_D is None:
        mean_act_D = torch.zeros(plm.d_model)
    causal = getattr(plm, "objective", "mlm") == "causal"
    protocols = ("next",) if causal else PROTOCOLS
    per: dict[str, dict[str, list]] = {
        p: {k: [] for k in ("orig", "sae", "mean", "zero", "unigram")} for p in protocols
    }
    n_pos = {p: 0 for p in protocols}
    for batch in length_batches([len(s) for s in seqs], plm.cfg.resolved_batch_tokens(), extra=2):
        sub = [seqs[i] for i in batch]
        ids, attn = plm.tokenize(sub)
        resid = attn & (ids != plm.cls_id) & (ids != plm.eos_id)  # residue positions (no BOS/EOS/pad)
        sel_m = torch.zeros_like(ids, dtype=torch.bool)
        for r, i in enumerate(batch):
            sel_m[r, 1 : len(seqs[i]) + 1] = torch.from_numpy(masks[i])
        for protocol in protocols:
            inp = ids.masked_fill(sel_m, plm.mask_id) if protocol == "masked" else ids
            scored = sel_m if protocol == "masked" else resid
            spliced = resid & ~sel_m if protocol == "masked" else resid
            if (
                protocol == "next"
            ):  # causal LM: the state at residue t predicts residue t+1; every residue state spliced
                scored = torch.zeros_like(resid)
                scored[:, 1:] = resid[:, 1:] & resid[:, :-1]  # targets whose predicting state is a (spliced) residue

            def via_sae(acts_BLD: torch.Tensor, where=spliced) -> torch.Tensor:
                x = acts_BLD[where].float()
                lat = sae.encode(x)
                out = acts_BLD.clone()
                out[where] = sae.decode(lat.acts_BK, lat.idx_BK, x, denormalize=True).to(acts_BLD.dtype)
                return out

            def mean(acts_BLD: torch.Tensor, where=spliced) -> torch.Tensor:
                out = acts_BLD.clone()
                out[where] = mean_act_D.to(acts_BLD)
                return out

            def zero(acts_BLD: torch.Tensor, where=spliced) -> torch.Tensor:
                return acts_BLD.masked_fill(where[..., None], 0.0)

            for key, rep in (("orig", None), ("sae", {hook: via_sae}), ("mean", {hook: mean}), ("zero", {hook: zero})):
                lg = plm.logits(inp, attn, rep)
                if causal:  # logits at t score token t+1
                    lg = torch.cat([lg[:, -1:], lg[:, :-1]], 1)  # now position t holds the prediction of token t
                per[protocol][key].append(_ce_per_protein(lg, ids, scored))
            if unigram_V is not None:
                logp = torch.as_tensor(np.log(unigram_V), dtype=torch.float32, device=ids.device)
                ce_BL = -logp[ids]
                n = scored.sum(1)
                per[protocol]["unigram"].append(((ce_BL * scored).sum(1) / n.clamp(min=1)).double().cpu().numpy())
            n_pos[protocol] += int(scored.sum())
    out: dict[str, Any] = {
        "n_proteins": len(seqs),
        "mask_prob": mask_prob,
        "mean_over": "proteins (per-protein mean CE, InterPLM)",
        "mean_ablation": "every spliced activation replaced by the mean activation over the evaluation store",
        "objective": "causal" if causal else "mlm",
    }
    if causal:
        out["next_protocol"] = (
            "next-residue CE: the state after residue t (spliced at every residue) predicts residue t+1; "
            "residues 2..L scored, nothing masked"
        )
    for protocol in protocols:
        ce = {k: float(np.nanmean(np.concatenate(v))) for k, v in per[protocol].items() if v}
        d = {f"ce_{k}": v for k, v in ce.items()}
        d["n_positions"] = n_pos[protocol]
        d["delta_ce_nats"] = ce["sae"] - ce["orig"]
        denom = ce["mean"] - ce["orig"]
        d["pct_loss_recovered"] = 100.0 * (ce["mean"] - ce["sae"]) / denom if abs(denom) > 1e-9 else float("nan")
        if "unigram" in ce:
            du = ce["unigram"] - ce["orig"]
            d["pct_recovered_vs_unigram"] = 100.0 * (ce["unigram"] - ce["sae"]) / du if abs(du) > 1e-9 else float("nan")
        dz = ce["zero"] - ce["orig"]
        d["pct_recovered_vs_zero_ablation"] = 100.0 * (ce["zero"] - ce["sae"]) / dz if abs(dz) > 1e-9 else float("nan")
        out[protocol] = d
    # the headline figures: InterPLM's unmasked protocol, against mean ablation
    head = "next" if causal else "unmasked"
    out.update({k: out[head][k] for k in ("ce_orig", "ce_sae", "ce_mean", "delta_ce_nats", "pct_loss_recovered")})
    if not causal:
        out["n_masked_tokens"] = out["masked"]["n_positions"]
    return out


def unigram_of(sequences: list[str], tokenize, vocab_size: int, special: tuple[int, ...] = ()) -> np.ndarray:
    """Residue frequencies over the token vocabulary from training proteins (+1 smoothing on the
    20 standard residues only; special tokens never occur at scored positions)."""
    counts = np.zeros(vocab_size)
    for i in range(0, len(sequences), 256):
        ids, attn = tokenize(sequences[i : i + 256])
        counts += np.bincount(ids[attn].cpu().numpy().ravel(), minlength=vocab_size)[:vocab_size]
    counts[list(special)] = 0  # BOS / EOS are never scored
    seen = counts > 0
    counts[seen] += 1
    return np.where(counts > 0, counts, 1e-9) / counts.sum()


def evaluate(
    sae_dir: str | os.PathLike,
    ecfg: EvalConfig | None = None,
    store_path: str | None = None,
    plm: ProteinLM | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Write ``eval.json`` in the checkpoint folder and return it."""
    ecfg = ecfg or EvalConfig()
    sae_dir = Path(sae_dir)
    device = resolve_device(ecfg.device)  # the SAE, the protein LM and the metrics on one device
    sae = load_checkpoint(sae_dir, device=device)
    meta = sae.meta
    prov = meta.get("provenance", {})
    imported = "format" in prov  # a published SAE (esmsae.published): none of the user's proteins trained it
    store_path = store_path or prov.get("store")
    if not store_path:
        raise ValueError(
            f"{sae_dir} was imported ({prov.get('format')} from {prov.get('source')}) and has no activation store: "
            "embed your proteins at its layer first (python -m esmsae embed ... --layers "
            f"{meta.get('layer')} --site {meta.get('site')}) and pass --store"
        )
    store = ActivationStore(store_path)
    name = meta["hook"]
    store.check_hook(name)
    if store.d_in != sae.d_in:
        raise ValueError(f"store {store.path} has width {store.d_in}, SAE d_in is {sae.d_in}")
    split = (
        "all" if imported else "heldout"
    )  # an imported SAE has no store of its own: none of these proteins trained it
    t0 = time.perf_counter()
    rec = reconstruction_metrics(
        sae, (a for a, _, _ in store.iter_split(name, split, ecfg.max_tokens)), ecfg.dense_threshold
    )
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
    if split == "heldout":
        ctl = aa_lookup_fvu(store, name, ecfg.max_tokens)
        if ctl:
            card["fvu_aa_lookup"] = ctl  # the control FVU is read against
    pool = store.manifest.get("embed", {}).get("pool", "none")
    if ecfg.lm_proteins > 0 and pool != "none":
        card["downstream_skipped"] = (
            f"the store holds one vector per protein or rows without sequences (pool {pool!r}): no spliced LM loss"
        )
    elif ecfg.lm_proteins > 0:
        if plm is None:
            mcfg = model_config_of(meta, model_name or "")
            mcfg.device = device
            plm = load_plm(mcfg)
        sae = sae.to(plm.device)
        check_compatible(meta, plm, strict_name=model_name is None)
        prots = store.proteins()
        held = (
            (prots if split == "all" else prots[prots["split"] == "heldout"]).sort_values("pidx").head(ecfg.lm_proteins)
        )
        train_seqs = prots[prots["split"] != "heldout"]["sequence"].head(2000).tolist() or held["sequence"].tolist()
        if len(held):
            uni = unigram_of(train_seqs, plm.tokenize, plm.vocab_size, (plm.cls_id, plm.eos_id, plm.pad_id))
            card["downstream"] = spliced_lm_loss(
                plm,
                sae,
                hook_of(meta),
                held["sequence"].tolist(),
                ecfg.mask_prob,
                ecfg.seed,
                mean_act_D=torch.as_tensor(rec["mean_act"]),
                unigram_V=uni,
            )
    card["eval_seconds"] = time.perf_counter() - t0
    save_json(card, sae_dir / EVAL)
    return card
