"""The protein LM interface every adapter implements (:class:`ProteinLM`): tokens, hooks that read or
replace a layer's activations, windows for long proteins and length-bucketed batches. The adapters
live in :mod:`esmsae.lm.plm` (ESM-2, ESM C) and :mod:`esmsae.lm.unirep` (UniRep); both import this module,
which imports neither.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from esmsae.config import SITES, ModelConfig, hook_name, layer_range, resolve_device
from esmsae.core.fasta import ALPHABET, SequenceError
from esmsae.core.precision import usable_dtype
from esmsae.lm.packing import pack_rows

ESM_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D",
    "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
]


class Cancelled(RuntimeError):
    """The caller stopped waiting for this forward (the inspector's Cancel): raised between steps."""


_STOP = threading.local()


@contextlib.contextmanager
def stop_when(event: threading.Event) -> Iterator[None]:
    """Forwards run by this thread stop (raise :class:`Cancelled`) soon after ``event`` is set: between
    batches, and between the recurrent steps of UniRep (:func:`check_stop`)."""
    prev = getattr(_STOP, "event", None)
    _STOP.event = event
    try:
        yield
    finally:
        _STOP.event = prev


def check_stop() -> None:
    ev = getattr(_STOP, "event", None)
    if ev is not None and ev.is_set():
        raise Cancelled("analysis cancelled")


class ModelMismatchError(ValueError):
    """A checkpoint or hook does not fit the protein LM."""


class _Stop(Exception):
    """Raised by the deepest hook to end the forward pass early."""


@dataclass(frozen=True)
class Hook:
    layer: int
    site: str

    @property
    def name(self) -> str:
        return hook_name(self.layer, self.site)


class EsmTokens:
    """Fast ESM tokenisation (ESM-2 and ESM C share the alphabet): BOS + residues + EOS, right-padded."""

    def __init__(self, vocab: Sequence[str] = ESM_VOCAB):
        tok = {t: i for i, t in enumerate(vocab)}
        self.cls, self.eos, self.pad, self.mask = tok["<cls>"], tok["<eos>"], tok["<pad>"], tok["<mask>"]
        self.lut = np.full(256, tok.get("<unk>", 3), dtype=np.int64)
        for aa in ALPHABET:
            self.lut[ord(aa)] = tok[aa]

    def batch(self, seqs: Sequence[str]) -> Tensor:
        """Token ids ``[B, Lmax + 2]`` for validated (upper-case) sequences."""
        return pack_tokens(self, [[s] for s in seqs])


def pack_tokens(tokens, rows: Sequence[Sequence[str]]) -> Tensor:
    """Token ids ``[rows, longest row]``: each row its sequences' BOS + residues + EOS one after the
    other, right-padded (a row of one sequence is ``tokens.batch``'s row)."""
    width = max(sum(len(s) + 2 for s in row) for row in rows)
    ids = np.full((len(rows), width), tokens.pad, dtype=np.int64)
    for r, row in enumerate(rows):
        off = 0
        for s in row:
            ids[r, off] = tokens.cls
            ids[r, off + 1 : off + len(s) + 1] = tokens.lut[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]
            ids[r, off + len(s) + 1] = tokens.eos
            off += len(s) + 2
    return torch.from_numpy(ids)


class ProteinLM:
    """Common machinery; subclasses say where each hook lives and how to run the model.
    ``objective``: ``"mlm"`` (ESM: logits at t predict token t, a ``<mask>`` token exists) or
    ``"causal"`` (UniRep: logits at t predict token t+1; ``mask_id`` is None)."""

    family: str = ""
    objective: str = "mlm"
    default_max_residues: int = 1022
    # > 0: a recurrent model whose cell resets at every BOS, so embed packs several proteins into a
    # row, up to this many rows per forward (esmsae.lm.packing); 0: one protein per row (attention)
    max_rows: int = 0

    def __init__(
        self, model: nn.Module, cfg: ModelConfig, vocab: Sequence[str], n_layers: int, d_model: int, tokens=None
    ):
        self.model = model.eval()
        self.cfg = cfg
        self.name = cfg.name
        self.n_layers = n_layers
        self.d_model = d_model
        self.device = torch.device(resolve_device(cfg.device))
        # bf16 only where the device runs it natively (an AVX2-only CPU emulates it ~40x slower)
        self.dtype = getattr(torch, usable_dtype(cfg.dtype, self.device, "protein LM"))
        self.model.to(self.device, self.dtype)
        self.max_residues = cfg.max_residues or self.default_max_residues
        # one forward at a time: hooks are registered on shared modules, and the app shares one model
        # between sessions (st.cache_resource), so two concurrent forwards would see each other's hooks
        self.lock = threading.RLock()
        self.tokens = tokens or EsmTokens(vocab)
        self.vocab_size = len(vocab)
        self.cls_id, self.eos_id, self.pad_id, self.mask_id = (
            self.tokens.cls,
            self.tokens.eos,
            self.tokens.pad,
            self.tokens.mask,
        )

    # ---------------------------------------------------------------- description
    def describe(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "max_residues": self.max_residues,
        }

    def check_hook(self, hook: Hook) -> None:
        if hook.site not in SITES:
            raise ModelMismatchError(
                f"hook site {hook.site!r} cannot be read from {self.name}: esmsae reads {', '.join(SITES)}"
            )
        lo, hi = layer_range(hook.site, self.n_layers)
        if not lo <= hook.layer <= hi:
            raise ModelMismatchError(
                f"layer {hook.layer} with site {hook.site!r} does not exist in {self.name} "
                f"({self.n_layers} blocks: valid layers are {lo}..{self.n_layers})"
            )

    # ---------------------------------------------------------------- subclass API
    def _hook_target(
        self, hook: Hook
    ) -> tuple[nn.Module, Callable[[object], Tensor], Callable[[object, Tensor], object]]:
        raise NotImplementedError

    def _run(self, ids_BL: Tensor, mask_BL: Tensor) -> Tensor:
        """Run the model; return MLM logits [B, L, V]."""
        raise NotImplementedError

    # ---------------------------------------------------------------- tokenisation
    def tokenize(self, seqs: Sequence[str]) -> tuple[Tensor, Tensor]:
        """BOS + residues + EOS, right-padded. Returns (ids_BL, attention mask_BL)."""
        ids = self.tokens.batch(seqs).to(self.device)
        return ids, ids != self.pad_id

    # ---------------------------------------------------------------- forward with hooks
    @torch.inference_mode()
    def forward_hooks(self, seqs: Sequence[str], hooks: Sequence[Hook]) -> dict[str, Tensor]:
        """Run one padded batch; return {hook name: [B, Lmax+2, D]} (BOS/EOS/padding included)."""
        ids, mask = self.tokenize(seqs)
        return self._collect(ids, mask, hooks)

    def _collect(self, ids: Tensor, mask: Tensor, hooks: Sequence[Hook]) -> dict[str, Tensor]:
        with self.lock:
            return self._collect_locked(ids, mask, hooks)

    def _collect_locked(self, ids: Tensor, mask: Tensor, hooks: Sequence[Hook]) -> dict[str, Tensor]:
        for h in hooks:
            self.check_hook(h)
        out: dict[str, Tensor] = {}
        handles = []
        remaining = {h.name for h in hooks}

        def make(h: Hook, get: Callable[[object], Tensor]):
            def fn(_m, _inp, output):
                out[h.name] = get(output).detach()
                remaining.discard(h.name)
                if not remaining:
                    raise _Stop
            return fn

        try:
            for h in hooks:
                mod, get, _ = self._hook_target(h)
                handles.append(mod.register_forward_hook(make(h, get)))
            try:
                self._run(ids, mask)
            except _Stop:
                pass
        finally:
            for hd in handles:
                hd.remove()
        if remaining:  # pragma: no cover - would be a bug in _hook_target
            raise RuntimeError(f"hooks never fired: {sorted(remaining)}")
        return out

    @torch.inference_mode()
    def logits(
        self, ids_BL: Tensor, mask_BL: Tensor, replace: dict[Hook, Callable[[Tensor], Tensor]] | None = None
    ) -> Tensor:
        """MLM logits, optionally replacing hooked activations ``[B, L, D]`` by ``fn(acts)``."""
        with self.lock:
            return self._logits_locked(ids_BL, mask_BL, replace)

    def _logits_locked(self, ids_BL: Tensor, mask_BL: Tensor, replace) -> Tensor:
        handles = []
        try:
            for h, fn in (replace or {}).items():
                self.check_hook(h)
                mod, get, put = self._hook_target(h)

                def hook_fn(_m, _inp, output, get=get, put=put, fn=fn):
                    return put(output, fn(get(output)))

                handles.append(mod.register_forward_hook(hook_fn))
            return self._run(ids_BL, mask_BL).float()
        finally:
            for hd in handles:
                hd.remove()

    # ---------------------------------------------------------------- windows + length batching
    def windows(self, n: int) -> list[tuple[int, int]]:
        """Overlapping [start, end) windows covering n residues (one window if it fits)."""
        W = self.max_residues
        if n <= W:
            return [(0, n)]
        stride = W - min(self.cfg.window_overlap, W // 2)
        starts = list(range(0, n - W, stride)) + [n - W]
        return [(s, s + W) for s in starts]

    @torch.inference_mode()
    def embed(self, seqs: Sequence[str], hooks: Sequence[Hook]) -> list[dict[str, Tensor]]:
        """Per-residue activations for each sequence: ``[{hook: [L_i, D]}, ...]`` (float32, CPU).

        Sequences are split into windows when longer than ``max_residues``; each
        residue takes its activation from the window where it sits farthest from an
        edge. Windows are sorted by length and packed into batches of at most
        ``batch_tokens`` padded tokens, so little compute goes to padding.
        """
        for i, s in enumerate(seqs):
            if not s:
                raise SequenceError(f"sequence {i}: empty sequence")
        pieces: list[tuple[int, int, int]] = []  # (seq index, start, end)
        for i, s in enumerate(seqs):
            pieces.extend((i, a, b) for a, b in self.windows(len(s)))
        results: dict[tuple[int, int], dict[str, Tensor]] = {}
        lengths = [b - a + 2 for _, a, b in pieces]  # + BOS / EOS
        if self.max_rows:  # a recurrent model: proteins packed into full rows (esmsae.lm.packing)
            batches = list(pack_rows(lengths, self.cfg.resolved_batch_tokens(), self.max_rows))
        else:
            batches = [[[j] for j in b] for b in length_batches(lengths, self.cfg.resolved_batch_tokens())]
        for rows in batches:
            check_stop()
            sub = [[seqs[pieces[j][0]][pieces[j][1] : pieces[j][2]] for j in row] for row in rows]
            ids = pack_tokens(self.tokens, sub).to(self.device)
            acts = self._collect(ids, ids != self.pad_id, hooks)
            for r, row in enumerate(rows):
                off = 0
                for j in row:
                    i, a, b = pieces[j]
                    results[(i, a)] = {k: v[r, off + 1 : off + b - a + 1].float().cpu() for k, v in acts.items()}
                    off += b - a + 2
        out: list[dict[str, Tensor]] = []
        for i, s in enumerate(seqs):
            wins = self.windows(len(s))
            if len(wins) == 1:
                out.append(results[(i, 0)])
                continue
            centers = torch.tensor([(a + b) / 2 for a, b in wins])
            pos = torch.arange(len(s)).float()
            best = (pos[:, None] - centers[None, :]).abs().argmin(1)  # nearest window centre
            merged = {}
            for name in results[(i, 0)]:
                buf = torch.empty(len(s), results[(i, 0)][name].shape[-1])
                for w, (a, b) in enumerate(wins):
                    sel = (best == w).nonzero().squeeze(1)
                    buf[sel] = results[(i, a)][name][sel - a]
                merged[name] = buf
            out.append(merged)
        return out


POOLS = ("none", "mean", "last")


def pool_residues(acts_LD: Tensor, pool: str) -> Tensor:
    """One vector per protein from its residues' activations: ``mean``, or the ``last`` residue's
    (esm-sae's per-protein SAEs); ``none`` keeps ``[L, d]``."""
    if pool == "mean":
        return acts_LD.mean(0)
    if pool == "last":
        return acts_LD[-1]
    return acts_LD


def length_batches(lengths: Sequence[int], batch_tokens: int, extra: int = 0) -> Iterator[list[int]]:
    """Group item indices so that (count x longest + extra) <= batch_tokens, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    longest = 0
    for i in order:
        L = lengths[i] + extra
        new_longest = max(longest, L)
        if batch and new_longest * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, new_longest = [], L
        batch.append(i)
        longest = new_longest
    if batch:
        yield batch


# ====================================================================== ESM-2
