"""Steering a protein LM along SAE features, with the check none of the anchors does.

At the SAE's hook the activation is replaced by ``decode(edited latents) + (x - decode(latents))``:
the reconstruction error is kept, so an empty edit reproduces the model exactly (up to fp32
rounding), and the LM runs on from that layer through its remaining blocks and head. Edits:
``clamp`` a feature to a value, ``scale`` it, or ``ablate`` it, at all residues, a residue range,
or where it is active; and ``interprot``, InterProt's endpoint (its steering handler): every
position's pre-TopK value of the feature set to the global maximum pre-activation (minimum for a
negative multiplier) times the multiplier, TopK re-applied in decode.

What the user gets (:class:`SteerResult`): the per-position change of the predicted residue
distribution (delta log-probability over the 20 amino acids), the steered argmax sequence, the
change in pseudo-perplexity of the original sequence, and the check: the steered sequence
re-embedded by the unmodified model, whether the target feature now fires and where, and which
other features moved most.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from esmsae.core.fasta import STANDARD, clean_sequence
from esmsae.sae.checkpoint import hook_of

EDITS = ("clamp", "scale", "ablate", "interprot")
# A design is flagged degenerate (not a protein a biologist should take further) when any of these holds:
MIN_ENTROPY_BITS = 3.0  # Shannon entropy of its residue composition (natural proteins: ~4.0-4.2 of 4.32 bits)
MAX_HOMOPOLYMER = 8  # longest run of one residue
MIN_IDENTITY = 0.3  # identity to the seed
PPL_FOLD = 2.0  # (pseudo-)perplexity over this multiple of the seed's


def degenerate_reasons(seq: str, seed: str, ppl: float | None = None, seed_ppl: float | None = None) -> list[str]:
    """Why a generated or steered sequence is degenerate (empty when it is not)."""
    out = []
    counts = np.bincount(np.frombuffer(seq.encode(), np.uint8), minlength=256)
    p = counts[counts > 0] / max(len(seq), 1)
    ent = float(-(p * np.log2(p)).sum())
    if ent < MIN_ENTROPY_BITS:
        out.append(f"low complexity (composition entropy {ent:.2f} bits < {MIN_ENTROPY_BITS})")
    run, best, prev = 0, 0, ""
    for a in seq:
        run = run + 1 if a == prev else 1
        prev, best = a, max(best, run)
    if best >= MAX_HOMOPOLYMER:
        out.append(f"a run of {best} identical residues")
    ident = sum(a == b for a, b in zip(seq, seed)) / max(len(seq), 1)
    if ident < MIN_IDENTITY:
        out.append(f"identity to the seed {ident:.0%} < {MIN_IDENTITY:.0%}")
    if (
        ppl is not None
        and seed_ppl is not None
        and math.isfinite(ppl)
        and math.isfinite(seed_ppl)
        and ppl > PPL_FOLD * seed_ppl
    ):
        out.append(f"perplexity {ppl:.1f} > {PPL_FOLD:g}x the seed's {seed_ppl:.1f}")
    return out


def check_live(sae, feature: int) -> None:
    """Refuse to steer a feature that never fired on the SAE's reference proteins (its display max is 0):
    clamping a dead direction drives the model off its data and returns junk."""
    mx, _ = sae.display_stats() if hasattr(sae, "display_stats") else (None, None)
    if mx is not None and 0 <= feature < len(mx) and float(mx[feature]) <= 0:
        raise ValueError(
            f"feature {feature} is dead: it never fired on this SAE's reference proteins, so there is no direction "
            "the model uses to steer along. Pick a live feature (the Feature browser hides dead ones)."
        )
WHERE = ("all", "range", "active")


@dataclass
class Edit:
    """One intervention on one feature."""

    feature: int
    kind: str = "clamp"  # clamp | scale | ablate | interprot
    value: float = 0.0  # clamp: the value; scale: the factor; interprot: the multiplier
    where: str = "all"  # all | range | active
    start: int = 0  # residue range [start, end), 0-based, for where="range"
    end: int = 0

    def __post_init__(self) -> None:
        if self.kind not in EDITS:
            raise ValueError(f"edit kind {self.kind!r} is not one of {EDITS}")
        if self.where not in WHERE:
            raise ValueError(f"edit position {self.where!r} is not one of {WHERE}")
        if not math.isfinite(self.value):
            raise ValueError(f"edit value must be finite, got {self.value!r}")
        if self.where == "range" and not 0 <= self.start < self.end:
            raise ValueError(f"residue range [{self.start}, {self.end}) is empty")


def _positions(edit: Edit, acts_LF: Tensor) -> Tensor:
    L = acts_LF.shape[0]
    if edit.where == "all":
        return torch.ones(L, dtype=torch.bool, device=acts_LF.device)
    if edit.where == "range":
        m = torch.zeros(L, dtype=torch.bool, device=acts_LF.device)
        m[edit.start:min(edit.end, L)] = True
        return m
    return acts_LF[:, edit.feature] > 0


@torch.no_grad()
def steer_activations(sae, x_LD: Tensor, edits: list[Edit]) -> Tensor:
    """The hooked activations of one protein's residues with the edits applied, reconstruction
    error kept: ``decode(edited) + (x - decode(latents))``."""
    x = x_LD.float()
    if any(e.kind == "interprot" for e in edits):
        return _interprot(sae, x, edits)
    dense_LF = sae.encode_dense(x)
    recon = sae.decode_dense(dense_LF, x)
    edited = dense_LF.clone()
    for e in edits:
        m = _positions(e, dense_LF)
        if e.kind == "clamp":
            edited[m, e.feature] = e.value
        elif e.kind == "scale":
            edited[m, e.feature] = dense_LF[m, e.feature] * e.value
        else:  # ablate
            edited[m, e.feature] = 0.0
    return (sae.decode_dense(edited, x) + (x - recon)).to(x_LD.dtype)


def _interprot(sae, x: Tensor, edits: list[Edit]) -> Tensor:
    """InterProt's steering: pre-TopK latents, the feature set at every position to the global
    max (min for a negative multiplier) x multiplier, TopK re-applied (their handler.py)."""
    if sae.cfg.architecture != "topk":
        raise ValueError("InterProt's steering is defined for TopK SAEs")
    xn, stats = sae.normalize(x)
    pre_LF = sae.pre_acts(xn)

    def topk_decode(pre: Tensor) -> Tensor:
        v, i = pre.topk(sae.cfg.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
        return sae.denormalize(z @ sae.W_dec + sae.b_dec, stats)

    err = x - topk_decode(pre_LF)
    edited = pre_LF.clone()
    for e in edits:
        base = pre_LF.max() if e.value > 0 else pre_LF.min()
        edited[_positions(e, F.relu(pre_LF)), e.feature] = base * e.value
    return topk_decode(edited) + err


@dataclass
class SteerResult:
    sequence: str
    steered_sequence: str  # argmax over the 20 amino acids at every position, with the edit held
    delta_logprob_L20: np.ndarray  # steered - original log-probabilities, columns in STANDARD order
    pppl_original: float  # pseudo-perplexity of the original sequence, unmodified model
    pppl_steered: float  # the same with the edit held
    target: int
    target_before_L: np.ndarray  # target feature on the original sequence
    target_after_L: np.ndarray  # target feature on the steered sequence, re-embedded by the unmodified model
    moved: list[tuple[int, float]] = field(default_factory=list)  # other features whose mean activation moved most

    @property
    def fires_after(self) -> bool:
        return bool((self.target_after_L > 0).any())

    def summary(self) -> dict:
        changed = sum(a != b for a, b in zip(self.sequence, self.steered_sequence))
        fin = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731  (None: not computed)
        return {
            "feature": self.target,
            "residues_changed": changed,
            "length": len(self.sequence),
            "pppl_original": fin(self.pppl_original),
            "pppl_steered": fin(self.pppl_steered),
            "degenerate": degenerate_reasons(self.steered_sequence, self.sequence),
            "target_max_before": float(self.target_before_L.max(initial=0)),
            "target_max_after": float(self.target_after_L.max(initial=0)),
            "fires_after": self.fires_after,
            "fires_at": [int(i) + 1 for i in np.flatnonzero(self.target_after_L > 0)[:50]],
            "moved": [{"feature": f, "delta_mean": d} for f, d in self.moved],
        }

    def fasta(self, name: str = "steered") -> str:
        return f">{name} feature={self.target}\n{self.steered_sequence}\n"


def _aa_columns(plm) -> Tensor:
    return torch.tensor([int(plm.tokens.lut[ord(a)]) for a in STANDARD], device=plm.device)


@torch.no_grad()
def _logits(plm, hook, seqs: list[str], ids: Tensor | None = None, fn=None) -> Tensor:
    if ids is None:
        ids, mask = plm.tokenize(seqs)
    else:
        mask = ids != plm.pad_id
    return plm.logits(ids, mask, {hook: fn} if fn is not None else None)


def _residue_fn(plm, sae, edits: list[Edit]):
    """The hook function: edits applied to every protein's residue rows (BOS/EOS/padding untouched)."""
    def fn(acts_BLD: Tensor, ids: Tensor) -> Tensor:
        out = acts_BLD.clone()
        resid = (ids != plm.pad_id) & (ids != plm.cls_id) & (ids != plm.eos_id)
        for b in range(acts_BLD.shape[0]):
            rows = resid[b].nonzero().squeeze(1)
            if len(rows):
                out[b, rows] = steer_activations(sae, acts_BLD[b, rows], edits).to(out.dtype)
        return out
    return fn


def _causal(plm) -> bool:
    return getattr(plm, "objective", "mlm") == "causal"


def _pred_rows(plm, L: int) -> slice:
    """The logit rows that predict residues 1..L: row t predicts token t+1 in a causal LM (UniRep),
    token t in a masked LM (ESM)."""
    return slice(0, L) if _causal(plm) else slice(1, L + 1)


def perplexity_name(plm) -> str:
    return "perplexity (next residue)" if _causal(plm) else "pseudo-perplexity"


@torch.no_grad()
def pseudo_perplexity(plm, seq: str, hook=None, fn=None, batch: int = 64) -> float:
    """exp(mean over residues of -log p(residue | the rest, residue masked)), one forward per
    residue (batched), optionally with a hooked edit held. For a causal LM (UniRep) the true
    perplexity instead: -log p(residue | the residues before it), one forward."""
    ids, _ = plm.tokenize([seq])
    L = len(seq)
    if _causal(plm):
        hooked = (lambda a: fn(a, ids)) if fn is not None else None
        logits = plm.logits(ids, ids != plm.pad_id, {hook: hooked} if hooked is not None else None)
        lp = F.log_softmax(logits[0, :L], -1)
        return math.exp(-float(lp[torch.arange(L), ids[0, 1:L + 1]].mean()))
    nll = 0.0
    for s in range(0, L, batch):
        pos = torch.arange(s, min(L, s + batch)) + 1
        x = ids.repeat(len(pos), 1)
        x[torch.arange(len(pos)), pos] = plm.mask_id
        hooked = (lambda a, x=x: fn(a, x)) if fn is not None else None
        logits = plm.logits(x, x != plm.pad_id, {hook: hooked} if hooked is not None else None)
        lp = F.log_softmax(logits[torch.arange(len(pos)), pos], -1)
        nll -= float(lp[torch.arange(len(pos)), ids[0, pos]].sum())
    return math.exp(nll / L)


@torch.no_grad()
def steer(lm, sae, sequence: str, edits: list[Edit] | Edit, n_moved: int = 10, pppl: bool = True) -> SteerResult:
    """Steer ``lm`` (an :class:`esmsae.api.Model`) along ``sae``'s features on one sequence."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    if not edits:
        raise ValueError("no edit given")
    for e in edits:
        if not 0 <= e.feature < sae.cfg.n_latents:
            raise ValueError(f"feature {e.feature} does not exist (the SAE has {sae.cfg.n_latents})")
        if e.kind in ("clamp", "scale", "interprot") and e.value != 1.0:
            check_live(sae, e.feature)
    plm = lm.plm
    seq = clean_sequence(sequence, "sequence to steer")
    hook = hook_of(sae.meta)
    plm.check_hook(hook)
    ids, _ = plm.tokenize([seq])
    fn = _residue_fn(plm, sae, edits)
    cols = _aa_columns(plm)
    rows = _pred_rows(plm, len(seq))  # causal LM: each residue predicted from the (edited) states before it
    lo = F.log_softmax(_logits(plm, hook, [seq])[0, rows][:, cols], -1)
    ls = F.log_softmax(_logits(plm, hook, [seq], ids=ids, fn=lambda a: fn(a, ids))[0, rows][:, cols], -1)
    steered = "".join(STANDARD[i] for i in ls.argmax(-1).tolist())
    target = edits[0].feature
    before = lm.embed(seq, layer=hook.layer, site=hook.site)
    after = lm.embed(steered, layer=hook.layer, site=hook.site)
    fb, fa = sae.encode_dense(before), sae.encode_dense(after)
    delta = (fa.mean(0) - fb.mean(0))
    delta[target] = 0
    top = delta.abs().topk(min(n_moved, delta.numel()))
    moved = [(int(i), float(delta[i])) for i in top.indices]
    p0 = pseudo_perplexity(plm, seq) if pppl else float("nan")
    p1 = pseudo_perplexity(plm, seq, hook, fn) if pppl else float("nan")
    return SteerResult(
        seq,
        steered,
        (ls - lo).cpu().numpy(),
        p0,
        p1,
        target,
        fb[:, target].cpu().numpy(),
        fa[:, target].cpu().numpy(),
        moved,
    )


@dataclass
class Designs:
    """Sequences generated with an edit held (:func:`generate`) and the check on each."""

    seed_sequence: str
    target: int
    sequences: list[str]
    fires: list[bool]  # the target fires on the design re-embedded by the unmodified model
    target_max: list[float]
    pppl: list[float]  # pseudo-perplexity of each design under the unmodified model
    seed_pppl: float | None = None  # the seed's, when computed

    def flags(self) -> list[list[str]]:
        """Per design: why it is degenerate (empty: not flagged)."""
        return [degenerate_reasons(s, self.seed_sequence, p, self.seed_pppl) for s, p in zip(self.sequences, self.pppl)]

    def summary(self) -> dict:
        return {
            "feature": self.target,
            "n_designs": len(self.sequences),
            "fraction_firing": float(np.mean(self.fires)) if self.fires else 0.0,
            "mean_pppl": float(np.nanmean(self.pppl)) if np.isfinite(self.pppl).any() else None,  # None: not computed
            "n_degenerate": sum(bool(f) for f in self.flags()),
            "mean_identity_to_seed": (
                float(np.mean([sum(a == b for a, b in zip(s, self.seed_sequence)) / len(s) for s in self.sequences]))
                if self.sequences
                else float("nan")
            ),
        }

    def fasta(self, name: str = "design") -> str:
        return "".join(
            f">{name}_{i} feature={self.target} fires={int(f)}\n{s}\n"
            for i, (s, f) in enumerate(zip(self.sequences, self.fires))
        )

    def table(self) -> pd.DataFrame:
        """One row a design: the check (fires, max of the target on the re-embedded design),
        pseudo-perplexity, identity to the seed and the design itself."""
        return pd.DataFrame(
            {
                "design": range(len(self.sequences)),
                "feature fires (unmodified model)": self.fires,
                "feature max": self.target_max,
                "perplexity": [p if math.isfinite(p) else None for p in self.pppl],
                "identity to the seed": [
                    sum(a == b for a, b in zip(s, self.seed_sequence)) / max(len(s), 1) for s in self.sequences
                ],
                "degenerate": ["; ".join(f) for f in self.flags()],
                "sequence": self.sequences,
            }
        )


@torch.no_grad()
def generate(
    lm,
    sae,
    seed_sequence: str,
    edits: list[Edit] | Edit,
    n_designs: int = 8,
    rounds: int = 10,
    mask_frac: float = 0.15,
    temperature: float = 1.0,
    seed: int = 0,
    pppl: bool = True,
) -> Designs:
    """Iterative masked resampling with the edit held (plm-sae's generation): each round masks
    ``mask_frac`` of the positions at random and samples them from the steered model's residue
    distribution (20 amino acids, ``temperature``). For a causal LM (UniRep) each round resamples
    the chosen positions left to right instead, each from P(residue | the current residues before
    it), with the edit held at every state. Each design is then re-embedded by the *unmodified*
    model: does the target feature fire without the edit? Seeded: the same arguments give the same
    designs."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    if not 0 < mask_frac <= 1 or n_designs < 1 or rounds < 0 or temperature <= 0:
        raise ValueError("need 0 < mask_frac <= 1, n_designs >= 1, rounds >= 0, temperature > 0")
    plm = lm.plm
    seq = clean_sequence(seed_sequence, "seed sequence")
    hook = hook_of(sae.meta)
    plm.check_hook(hook)
    fn = _residue_fn(plm, sae, edits)
    cols = _aa_columns(plm)
    gen = torch.Generator().manual_seed(seed)
    L = len(seq)
    n_mask = max(1, round(mask_frac * L))
    out, fires, tmax, pp = [], [], [], []
    target = edits[0].feature
    for e in edits:
        if e.kind in ("clamp", "scale", "interprot") and e.value != 1.0:
            check_live(sae, e.feature)
    for _ in range(n_designs):
        cur = seq
        for _ in range(rounds):
            if _causal(plm):
                cur = _resample_left_to_right(
                    plm, hook, fn, cols, cur, torch.randperm(L, generator=gen)[:n_mask], temperature, gen
                )
                continue
            ids, _ = plm.tokenize([cur])
            pos = torch.randperm(L, generator=gen)[:n_mask] + 1
            x = ids.clone()
            x[0, pos.to(x.device)] = plm.mask_id
            logits = (
                _logits(plm, hook, [cur], ids=x, fn=lambda a, x=x: fn(a, x))[0, pos.to(x.device)][:, cols].float().cpu()
            )
            probs = torch.softmax(logits / temperature, -1)
            pick = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            chars = list(cur)
            for p, a in zip(pos.tolist(), pick.tolist()):
                chars[p - 1] = STANDARD[a]
            cur = "".join(chars)
        act = sae.encode_dense(lm.embed(cur, layer=hook.layer, site=hook.site))[:, target]
        out.append(cur)
        fires.append(bool((act > 0).any()))
        tmax.append(float(act.max()))
        pp.append(pseudo_perplexity(plm, cur) if pppl else float("nan"))
    return Designs(seq, target, out, fires, tmax, pp, pseudo_perplexity(plm, seq) if pppl else None)


def _resample_left_to_right(plm, hook, fn, cols: Tensor, cur: str, pos: Tensor, temperature: float, gen) -> str:
    """One round of causal resampling: the chosen positions (0-based) in order, each sampled from the
    steered model's next-residue distribution given the current prefix (one forward per position)."""
    chars = list(cur)
    for p in sorted(pos.tolist()):
        # causal: the prediction of residue p depends on residues < p only, so run the prefix alone
        ids, _ = plm.tokenize(["".join(chars[:max(p, 1)])])
        logits = (
            _logits(plm, hook, [], ids=ids, fn=lambda a, x=ids: fn(a, x))[0, p][cols].float().cpu()
        )  # row p predicts residue p
        a = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        chars[p] = STANDARD[a]
    return "".join(chars)
