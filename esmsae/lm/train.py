"""Masked-LM training of a small protein LM (the demo model), e.g. the ESM-2 8M architecture.

No pretrained protein LM can be downloaded on an offline machine, so the demo bundle uses
a model that esmsae trains itself on real sequences, saved in Hugging Face format so it
loads through exactly the same code path as ``facebook/esm2_t6_8M_UR50D``.

* Data: FASTA files, de-duplicated by sequence; proteins held out by sequence hash
  (the same split as the activation store), so no identical sequence sits on both sides.
* Objective: ESM-2's masked LM (15% of residues; 80% <mask>, 10% random, 10% unchanged),
  random crops of ``crop`` residues, batches packed by token count.
* Report (``lm_eval.json``): held-out perplexity at ``<mask>`` positions only (``masked_ppl``)
  next to the amino-acid-frequency (unigram) baseline on the same positions; the older
  ``heldout_ppl`` over all chosen positions includes the 10% left unchanged, whose input is
  the answer, and is optimistic.
* Resumable: ``lm_state.pt`` (atomic) holds model, optimiser, step and RNG state; a time
  limit ends a run cleanly after a checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from esmsae.config import LMTrainConfig, resolve_device, save_json
from esmsae.core.atomic import write_atomic
from esmsae.core.fasta import SequenceError, clean_sequence, is_heldout, read_fasta
from esmsae.core.precision import usable_dtype
from esmsae.lm.plm import ESM_VOCAB, EsmTokens, make_esm2_model, save_hf

EVAL_MASK_PROB = 0.15  # ESM-2's rate; fixed so that recipes with other training rates compare
STANDARD_IDS = [ESM_VOCAB.index(a) for a in "ACDEFGHIKLMNPQRSTVWY"]


def load_corpus(fastas: list[str], holdout_fraction: float) -> tuple[list[str], list[str], dict]:
    """Unique valid sequences from the FASTA files, split by sequence hash."""
    seen: set[str] = set()
    train, held = [], []
    n_records = n_bad = 0
    for fa in fastas:
        for header, raw in read_fasta(fa):
            n_records += 1
            try:
                s = clean_sequence(raw, header.split()[0] if header else "record")
            except SequenceError:
                n_bad += 1
                continue
            if s in seen:
                continue
            seen.add(s)
            (held if is_heldout(s, holdout_fraction) else train).append(s)
    info = {"files": [os.path.abspath(f) for f in fastas], "records": n_records, "invalid": n_bad,
            "unique": len(seen), "train": len(train), "heldout": len(held),
            "train_residues": int(sum(map(len, train))), "heldout_residues": int(sum(map(len, held)))}
    return train, held, info


def mask_tokens(ids: torch.Tensor, tok: EsmTokens, p: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT/ESM masking: choose p of residues; 80% -> <mask>, 10% -> random residue, 10% unchanged."""
    residue = (ids != tok.pad) & (ids != tok.cls) & (ids != tok.eos)
    chosen = (torch.rand(ids.shape, generator=gen) < p) & residue
    r = torch.rand(ids.shape, generator=gen)
    inp = ids.clone()
    inp[chosen & (r < 0.8)] = tok.mask
    rnd = chosen & (r >= 0.8) & (r < 0.9)
    inp[rnd] = torch.tensor(STANDARD_IDS)[torch.randint(0, 20, (int(rnd.sum()),), generator=gen)]
    return inp, chosen


def unigram_ce(train: list[str], held_ids: torch.Tensor, chosen: torch.Tensor) -> float:
    counts = np.zeros(len(ESM_VOCAB))
    tok = EsmTokens()
    for s in train[:: max(1, len(train) // 20000)]:
        np.add.at(counts, tok.lut[np.frombuffer(s.encode(), dtype=np.uint8)], 1)
    probs = (counts + 1) / (counts + 1).sum()
    return float(-np.log(probs[held_ids[chosen].numpy()]).mean())


def neighbour_ce(
    train: list[str], ids: torch.Tensor, inp: torch.Tensor, sel: torch.Tensor, alpha: float = 20.0
) -> float:
    """CE of a neighbour-residue model at the selected positions: P(residue | the residues just
    left and right of it in the *input*), counted on training proteins, Dirichlet-smoothed
    towards residue frequencies; a neighbour that is masked (or a sequence end) is marginalised.
    The local-context reference: what a model gets from its two neighbours alone."""
    aa = np.full(len(ESM_VOCAB), 20, np.int64)  # 20 = no residue there (special token, <mask>, X)
    aa[STANDARD_IDS] = np.arange(20)
    tok = EsmTokens()
    c3 = np.zeros((21, 20, 21))
    for s in train[:: max(1, len(train) // 20000)]:
        a = aa[tok.lut[np.frombuffer(s.encode(), dtype=np.uint8)]]
        left, right = np.r_[20, a[:-1]], np.r_[a[1:], 20]
        ok = a < 20
        np.add.at(c3, (left[ok], a[ok], right[ok]), 1)
    uni = (c3.sum((0, 2)) + 1) / (c3.sum() + 20)
    b, i = torch.nonzero(sel, as_tuple=True)
    x = aa[ids[b, i].numpy()]
    le, ri = aa[inp[b, i - 1].numpy()], aa[inp[b, i + 1].numpy()]
    tot = 0.0
    for xx, l_, r_ in zip(x, le, ri):
        if l_ < 20 and r_ < 20:
            c = c3[l_, :, r_]
        elif l_ < 20:
            c = c3[l_].sum(1)
        elif r_ < 20:
            c = c3[:, :, r_].sum(0)
        else:
            c = np.zeros(20)
        tot -= math.log((c[xx] + alpha * uni[xx]) / (c.sum() + alpha))
    return tot / max(len(x), 1)


@torch.no_grad()
def heldout_ce(
    model, ids: torch.Tensor, inp: torch.Tensor, chosen: torch.Tensor, tok: EsmTokens, device: str, bs: int = 32
) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(ids), bs):
        x = inp[i : i + bs].to(device)
        logits = model(input_ids=x, attention_mask=(x != tok.pad)).logits.float()
        sel = chosen[i : i + bs].to(device)
        tot += float(F.cross_entropy(logits[sel], ids[i : i + bs].to(device)[sel], reduction="sum"))
        n += int(sel.sum())
    model.train()
    return tot / max(n, 1)


@dataclass
class HeldOut:
    """The fixed held-out evaluation set: first crop of each of the first ``eval_proteins``
    held-out proteins, masked once, with the unigram baseline on the same positions."""

    ids: torch.Tensor
    inp: torch.Tensor
    chosen: torch.Tensor  # all chosen positions (80% <mask>, 10% random, 10% unchanged)
    masked: torch.Tensor  # <mask> positions only: the honest figure
    uni: float
    uni_m: float
    neigh_m: float = float("nan")  # neighbour-residue model at the <mask> positions (local-context reference)

    @classmethod
    def make(cls, cfg: LMTrainConfig, train: list[str], held: list[str], tok: EsmTokens) -> "HeldOut":
        ids = tok.batch([s[: cfg.eval_crop] for s in held[: cfg.eval_proteins]])
        inp, chosen = mask_tokens(ids, tok, EVAL_MASK_PROB, torch.Generator().manual_seed(12345))
        # at the 10% kept-unchanged positions the input is the answer, at the 10% random ones it is noise
        masked = chosen & (inp == tok.mask)
        return cls(
            ids,
            inp,
            chosen,
            masked,
            unigram_ce(train, ids, chosen),
            unigram_ce(train, ids, masked),
            neighbour_ce(train, ids, inp, masked),
        )

    def evaluate(self, model, tok: EsmTokens, device: str) -> tuple[float, float]:
        """(CE over all chosen positions, CE at <mask> positions)."""
        return heldout_ce(model, self.ids, self.inp, self.chosen, tok, device), heldout_ce(
            model, self.ids, self.inp, self.masked, tok, device
        )


def _crop_batch(train: list[str], weights: np.ndarray, cfg: LMTrainConfig, rng: np.random.Generator) -> list[str]:
    """Proteins sampled in proportion to sqrt(length) (long ones are seen more often without
    drowning short ones), each cut to a random crop of ``cfg.crop`` residues."""
    seqs = []
    for i in rng.choice(len(train), size=cfg.batch_size, p=weights):
        s = train[i]
        if len(s) > cfg.crop:
            a = int(rng.integers(0, len(s) - cfg.crop + 1))
            s = s[a : a + cfg.crop]
        seqs.append(s)
    return seqs


def _cosine_lr(cfg: LMTrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def train_lm(cfg: LMTrainConfig, progress: bool = True) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    train, held, info = load_corpus(cfg.fasta, cfg.holdout_fraction)
    if not train or not held:
        raise ValueError(f"need training and held-out proteins, got {info}")
    tok = EsmTokens()
    ho = HeldOut.make(cfg, train, held, tok)
    device = resolve_device(cfg.device)
    model = make_esm2_model(cfg.config_dir, seed=cfg.seed)
    if cfg.init_from:
        from transformers import EsmForMaskedLM

        model.load_state_dict(EsmForMaskedLM.from_pretrained(cfg.init_from).state_dict())
    model = model.to(device)
    model.train()
    opt_ = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay)
    step, history = 0, []
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    state_p = out / "lm_state.pt"
    if state_p.exists():
        st = torch.load(state_p, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt_.load_state_dict(st["opt"])
        step, history = st["step"], st["history"]
        rng.bit_generator.state = st["rng"]
        gen.set_state(st["gen"])
    weights = np.sqrt(np.array([len(s) for s in train], dtype=np.float64))
    weights /= weights.sum()
    total = cfg.total_steps

    def save() -> None:
        state = {"model": model.state_dict(), "opt": opt_.state_dict(), "step": step, "history": history,
                 "rng": rng.bit_generator.state, "gen": gen.get_state(), "cfg": asdict(cfg)}
        write_atomic(state_p, lambda tmp: torch.save(state, tmp), "LM training state")

    bar = tqdm(total=total, initial=step, desc="lm", unit="step", disable=not progress, mininterval=5)
    run_loss, run_n, t0 = 0.0, 0, time.time()
    stopped_early = False
    while step < total:
        ids = tok.batch(_crop_batch(train, weights, cfg, rng))
        inp, chosen = mask_tokens(ids, tok, cfg.mask_prob, gen)
        run_loss += _lm_step(model, opt_, ids, inp, chosen, tok, cfg, _cosine_lr(cfg, step, total), device)
        step += 1
        run_n += 1
        bar.update(1)
        out_of_time = bool(cfg.time_limit_s) and time.time() - t_start > cfg.time_limit_s
        if step % cfg.checkpoint_every == 0 or step == total or out_of_time:
            ce, ce_m = ho.evaluate(model, tok, device)
            history.append(
                {
                    "step": step,
                    "tokens": step * cfg.batch_size * (cfg.crop + 2),
                    "train_ce": run_loss / run_n,
                    "heldout_ce": ce,
                    "heldout_ppl": math.exp(ce),
                    "unigram_ppl": math.exp(ho.uni),
                    "masked_ppl": math.exp(ce_m),
                    "masked_unigram_ppl": math.exp(ho.uni_m),
                    "masked_neighbour_ppl": math.exp(ho.neigh_m),
                    "tokens_per_s": run_n * cfg.batch_size * (cfg.crop + 2) / (time.time() - t0),
                }
            )
            bar.set_postfix(ppl=f"{math.exp(ce_m):.2f}", uni=f"{math.exp(ho.uni_m):.2f}")
            run_loss, run_n, t0 = 0.0, 0, time.time()
            save()
            with open(out / "lm_metrics.jsonl", "a") as fh:
                fh.write(json.dumps(history[-1]) + "\n")
            if out_of_time and step < total:
                stopped_early = True
                break
    bar.close()
    ce, ce_m = ho.evaluate(model, tok, device)
    save_hf(model, cfg.config_dir, out)
    report = {
        # <mask> positions only: the figure to quote (next to unigram on the same positions)
        "masked_ppl": math.exp(ce_m),
        "masked_ce": ce_m,
        "masked_unigram_ppl": math.exp(ho.uni_m),
        "masked_unigram_ce": ho.uni_m,
        "masked_tokens": int(ho.masked.sum()),
        # the local-context reference: P(residue | its two input neighbours), from training proteins
        "masked_neighbour_ppl": math.exp(ho.neigh_m),
        # all chosen positions, including the 10% left unchanged (whose input is the answer): optimistic
        "heldout_ppl": math.exp(ce),
        "heldout_ce": ce,
        "unigram_ppl": math.exp(ho.uni),
        "unigram_ce": ho.uni,
        "steps": step,
        "total_steps": total,
        "tokens_seen": step * cfg.batch_size * (cfg.crop + 2),
        # tokens behind the starting weights (--init-from an esmsae-trained LM), so the total is known
        "tokens_before": _prior_tokens(cfg.init_from),
        "tokens_total": _prior_tokens(cfg.init_from) + step * cfg.batch_size * (cfg.crop + 2),
        "finished": not stopped_early,
        "heldout_masked_tokens": int(ho.chosen.sum()),
        "eval_proteins": len(ho.ids),
        "corpus": info,
        "config": asdict(cfg),
    }
    save_json(report, out / "lm_eval.json")
    return report


def _prior_tokens(init_from: str) -> int:
    f = Path(init_from) / "lm_eval.json" if init_from else None
    if f is None or not f.exists():
        return 0
    e = json.loads(f.read_text())
    return int(e.get("tokens_total", e.get("tokens_seen", 0)))


def _lm_step(
    model,
    opt_,
    ids: torch.Tensor,
    inp: torch.Tensor,
    chosen: torch.Tensor,
    tok: EsmTokens,
    cfg: LMTrainConfig,
    lr: float,
    device: str = "cpu",
) -> float:
    """One masked-LM step (bf16 autocast by default, gradient clipped at 1); returns the loss."""
    for g in opt_.param_groups:
        g["lr"] = lr
    x = inp.to(device)
    amp = "float32" if cfg.amp == "none" else usable_dtype(cfg.amp, device, "LM training autocast")
    with torch.autocast(torch.device(device).type, dtype=getattr(torch, amp), enabled=amp != "float32"):
        logits = model(input_ids=x, attention_mask=(x != tok.pad)).logits
    sel = chosen.to(device)
    loss = F.cross_entropy(logits[sel].float(), ids.to(device)[sel])
    opt_.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt_.step()
    return float(loss.detach())
