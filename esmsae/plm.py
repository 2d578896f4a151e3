"""Protein language model adapters: per-residue activations behind one interface.

``load_plm(ModelConfig)`` returns a :class:`ProteinLM` for

* ESM-2 through transformers ``EsmForMaskedLM``: a hub name
  (``facebook/esm2_t6_8M_UR50D`` ...), a local Hugging Face folder, or a local
  fair-esm ``.pt`` checkpoint (parameter names mapped onto the transformers model,
  fair-esm itself is never installed);
* ESM C through EvolutionaryScale's ``esm`` package: ``esmc_300m``, ``esmc_600m``
  or a local weights file (``.pth`` state dict).

Activations are read with forward hooks (see :class:`esmsae.config.HookConfig` for
the layer convention). The forward pass stops after the deepest hooked block, so
reading layer 3 of a 30-layer model costs 3 blocks. BOS/EOS positions are always
stripped: every returned tensor is ``[L, d]`` for an L-residue protein.
"""
from __future__ import annotations

import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SITES, ModelConfig, hook_name, layer_range, resolve_device
from .fasta import ALPHABET, SequenceError

# The ESM alphabet (ESM-2 and ESM C share it, in this order).
ESM_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D",
    "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
]
ESM2_HEADS = {320: 20, 480: 20, 640: 20, 1280: 20, 2560: 40, 5120: 40}
ESMC_SIZES = {"esmc_300m": (960, 15, 30), "esmc_600m": (1152, 18, 36)}


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
        ids = np.full((len(seqs), max(len(s) for s in seqs) + 2), self.pad, dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, 0] = self.cls
            ids[i, 1 : len(s) + 1] = self.lut[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]
            ids[i, len(s) + 1] = self.eos
        return torch.from_numpy(ids)


class ProteinLM:
    """Common machinery; subclasses say where each hook lives and how to run the model.
    ``objective``: ``"mlm"`` (ESM: logits at t predict token t, a ``<mask>`` token exists) or
    ``"causal"`` (UniRep: logits at t predict token t+1; ``mask_id`` is None)."""

    family: str = ""
    objective: str = "mlm"
    default_max_residues: int = 1022

    def __init__(self, model: nn.Module, cfg: ModelConfig, vocab: Sequence[str], n_layers: int, d_model: int, tokens=None):
        self.model = model.eval()
        self.cfg = cfg
        self.name = cfg.name
        self.n_layers = n_layers
        self.d_model = d_model
        self.device = torch.device(resolve_device(cfg.device))
        self.dtype = getattr(torch, cfg.dtype)
        self.model.to(self.device, self.dtype)
        self.max_residues = cfg.max_residues or self.default_max_residues
        self.tokens = tokens or EsmTokens(vocab)
        self.vocab_size = len(vocab)
        self.cls_id, self.eos_id, self.pad_id, self.mask_id = self.tokens.cls, self.tokens.eos, self.tokens.pad, self.tokens.mask

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
            raise ModelMismatchError(f"hook site {hook.site!r} cannot be read from {self.name}: esmsae reads {', '.join(SITES)}")
        lo, hi = layer_range(hook.site, self.n_layers)
        if not lo <= hook.layer <= hi:
            raise ModelMismatchError(
                f"layer {hook.layer} with site {hook.site!r} does not exist in {self.name} "
                f"({self.n_layers} blocks: valid layers are {lo}..{self.n_layers})"
            )

    # ---------------------------------------------------------------- subclass API
    def _hook_target(self, hook: Hook) -> tuple[nn.Module, Callable[[object], Tensor], Callable[[object, Tensor], object]]:
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
    def logits(self, ids_BL: Tensor, mask_BL: Tensor, replace: dict[Hook, Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        """MLM logits, optionally replacing hooked activations ``[B, L, D]`` by ``fn(acts)``."""
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
        for batch in length_batches([b - a for _, a, b in pieces], self.cfg.resolved_batch_tokens(), extra=2):
            sub = [seqs[pieces[j][0]][pieces[j][1] : pieces[j][2]] for j in batch]
            acts = self.forward_hooks(sub, hooks)
            for row, j in enumerate(batch):
                i, a, b = pieces[j]
                results[(i, a)] = {k: v[row, 1 : b - a + 1].float().cpu() for k, v in acts.items()}
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
class ESM2(ProteinLM):
    family = "esm2"
    default_max_residues = 1022

    def __init__(self, model: nn.Module, cfg: ModelConfig, vocab: Sequence[str]):
        c = model.config
        super().__init__(model, cfg, vocab, c.num_hidden_layers, c.hidden_size)
        if getattr(c, "position_embedding_type", "") == "rotary":
            for layer in model.esm.encoder.layer:
                layer.attention.self.forward = types.MethodType(_sdpa_self_attention, layer.attention.self)

    def _hook_target(self, hook: Hook):
        enc = self.model.esm.encoder
        L, site = hook.layer, hook.site
        tensor_out = (lambda o: o, lambda o, new: new)
        tuple_out = (lambda o: o[0], lambda o, new: (new,) + tuple(o[1:]))
        if site == "resid":
            if L == 0:
                return (self.model.esm.embeddings, *tensor_out)
            if L == self.n_layers and enc.emb_layer_norm_after is not None:
                # The model's own last hidden state includes the final layer norm.
                return (enc.emb_layer_norm_after, *tensor_out)
            return (enc.layer[L - 1], *tuple_out)
        if site == "mlp":
            return (enc.layer[L - 1].output.dense, *tensor_out)
        return (enc.layer[L - 1].attention.output.dense, *tensor_out)

    def _run(self, ids_BL: Tensor, mask_BL: Tensor) -> Tensor:
        return self.model(input_ids=ids_BL, attention_mask=mask_BL).logits


def _sdpa_self_attention(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args, **kwargs):
    """Inference-only replacement of transformers' eager ESM self-attention: the same
    projections and rotary embedding, then one fused ``scaled_dot_product_attention`` instead
    of materialising [B, heads, L, L] scores (1.6x faster residues/s on this 2-core CPU, measured on the
    demo index sample; tests/test_plm.py checks it against the eager model)."""
    q = self.transpose_for_scores(self.query(hidden_states)) * self.attention_head_size**-0.5
    k = self.transpose_for_scores(self.key(hidden_states))
    v = self.transpose_for_scores(self.value(hidden_states))
    q, k = self.rotary_embeddings(q, k)
    if attention_mask is not None:
        attention_mask = attention_mask.to(q.dtype)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=1.0)  # q is pre-scaled, as in ESM
    ctx = ctx.permute(0, 2, 1, 3).reshape(*hidden_states.shape[:-1], self.all_head_size)
    return (ctx,)


_FAIR_RENAMES = [
    (r"^embed_tokens\.", "esm.embeddings.word_embeddings."),
    (r"^layers\.(\d+)\.self_attn\.q_proj\.", r"esm.encoder.layer.\1.attention.self.query."),
    (r"^layers\.(\d+)\.self_attn\.k_proj\.", r"esm.encoder.layer.\1.attention.self.key."),
    (r"^layers\.(\d+)\.self_attn\.v_proj\.", r"esm.encoder.layer.\1.attention.self.value."),
    (r"^layers\.(\d+)\.self_attn\.out_proj\.", r"esm.encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.self_attn\.rot_emb\.", r"esm.encoder.layer.\1.attention.self.rotary_embeddings."),
    (r"^layers\.(\d+)\.self_attn_layer_norm\.", r"esm.encoder.layer.\1.attention.LayerNorm."),
    (r"^layers\.(\d+)\.final_layer_norm\.", r"esm.encoder.layer.\1.LayerNorm."),
    (r"^layers\.(\d+)\.fc1\.", r"esm.encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.fc2\.", r"esm.encoder.layer.\1.output.dense."),
    (r"^emb_layer_norm_after\.", "esm.encoder.emb_layer_norm_after."),
    (r"^lm_head\.weight$", "lm_head.decoder.weight"),
    (r"^lm_head\.bias$", "lm_head.bias"),
    (r"^lm_head\.dense\.", "lm_head.dense."),
    (r"^lm_head\.layer_norm\.", "lm_head.layer_norm."),
    (r"^contact_head\.regression\.", "esm.contact_head.regression."),
]


def fairesm_to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map fair-esm ESM-2 parameter names onto transformers ``EsmForMaskedLM`` names."""
    out = {}
    for key, val in state.items():
        k = re.sub(r"^encoder\.sentence_encoder\.", "", key)
        k = re.sub(r"^encoder\.", "", k)
        for pat, rep in _FAIR_RENAMES:
            if re.search(pat, k):
                out[re.sub(pat, rep, k)] = val
                break
        else:
            raise ModelMismatchError(f"fair-esm checkpoint has a parameter esmsae cannot place: {key!r}")
    return out


def _esm2_from_fairesm(path: Path):
    from transformers import EsmConfig, EsmForMaskedLM

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt)
    sd = fairesm_to_hf_state_dict(state)
    emb = sd["esm.embeddings.word_embeddings.weight"]
    d = emb.shape[1]
    n_layers = len({int(m.group(1)) for k in sd if (m := re.match(r"esm\.encoder\.layer\.(\d+)\.", k))})
    heads = None
    mcfg = (ckpt.get("cfg") or {}).get("model") if isinstance(ckpt.get("cfg"), dict) else None
    if mcfg is not None:
        heads = mcfg.get("encoder_attention_heads") if isinstance(mcfg, dict) else getattr(mcfg, "encoder_attention_heads", None)
    if heads is None and "args" in ckpt:
        heads = getattr(ckpt["args"], "encoder_attention_heads", None)
    heads = heads or ESM2_HEADS.get(d)
    if heads is None:
        raise ModelMismatchError(f"{path}: cannot tell the number of attention heads for hidden size {d}")
    config = EsmConfig(
        vocab_size=emb.shape[0], hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=heads,
        intermediate_size=sd["esm.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, mask_token_id=32, pad_token_id=1, layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = EsmForMaskedLM(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # position_ids / contact head are optional buffers; the LM decoder is tied to the embeddings.
    allowed = re.compile(r"(position_ids|position_embeddings|contact_head|lm_head\.decoder\.weight|inv_freq)")
    bad = [k for k in missing if not allowed.search(k)]
    if bad or unexpected:
        raise ModelMismatchError(f"{path}: fair-esm checkpoint does not fit ESM-2 (missing {bad[:5]}, unexpected {list(unexpected)[:5]})")
    return model


def _load_esm2(cfg: ModelConfig) -> ESM2:
    from transformers import EsmForMaskedLM

    p = Path(cfg.name)
    if p.suffix == ".pt":
        if not p.exists():
            raise FileNotFoundError(f"fair-esm checkpoint not found: {p}")
        return ESM2(_esm2_from_fairesm(p), cfg, ESM_VOCAB)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p} is not a Hugging Face model folder (no config.json)")
    try:
        model = EsmForMaskedLM.from_pretrained(cfg.name)
    except OSError as e:
        raise OSError(
            f"could not load ESM-2 model {cfg.name!r}: {e}. Hub names need internet access "
            f"(or a Hugging Face cache); otherwise pass a local folder or .pt file."
        ) from e
    vocab = ESM_VOCAB
    if p.is_dir() and (p / "vocab.txt").exists():
        vocab = (p / "vocab.txt").read_text().split()
    return ESM2(model, cfg, vocab)


# ====================================================================== ESM C
class ESMCAdapter(ProteinLM):
    family = "esmc"
    default_max_residues = 2046

    def __init__(self, model: nn.Module, cfg: ModelConfig):
        blocks = model.transformer.blocks
        d = model.embed.weight.shape[1]
        super().__init__(model, cfg, ESM_VOCAB, len(blocks), d)

    def _hook_target(self, hook: Hook):
        L, site = hook.layer, hook.site
        ident = (lambda o: o, lambda o, new: new)
        if site == "resid":
            if L == 0:
                return (self.model.embed, *ident)
            if L == self.n_layers:
                # The last layer includes the final norm, as ESM-2's last hidden state and as
                # Biohub's ESM C SAE layer n_layers ("post-norm output"); it is the esm
                # package's ``embeddings`` output.
                return (self.model.transformer.norm, *ident)
            # Otherwise the esm package's hidden_states[L-1]: block L's output, which is
            # Biohub's "layer L" (the input of 0-based block L).
            return (self.model.transformer.blocks[L - 1], *ident)
        blk = self.model.transformer.blocks[L - 1]
        return (blk.ffn if site == "mlp" else blk.attn, *ident)

    def _run(self, ids_BL: Tensor, mask_BL: Tensor) -> Tensor:
        return self.model(sequence_tokens=ids_BL, sequence_id=mask_BL).sequence_logits


def build_esmc(d_model: int, n_heads: int, n_layers: int, seed: int | None = None) -> nn.Module:
    """An ESM C model of the real architecture (random weights unless loaded)."""
    from esm.models.esmc import ESMC
    from esm.tokenization import EsmSequenceTokenizer

    if seed is not None:
        torch.manual_seed(seed)
    return ESMC(d_model=d_model, n_heads=n_heads, n_layers=n_layers, tokenizer=EsmSequenceTokenizer(), use_flash_attn=False)


def _load_esmc(cfg: ModelConfig) -> ESMCAdapter:
    key = os.path.basename(cfg.name).lower()
    p = Path(cfg.name)
    if p.is_file():
        state = torch.load(p, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        d = state["embed.weight"].shape[1]
        n_layers = len({int(m.group(1)) for k in state if (m := re.match(r"transformer\.blocks\.(\d+)\.", k))})
        model = build_esmc(d, max(1, d // 64), n_layers)  # ESM C uses 64-dim heads
        model.load_state_dict(state)
        return ESMCAdapter(model, cfg)
    if key in ESMC_SIZES:
        # The esm package's own builder (what ESMC.from_pretrained calls): it fetches
        # EvolutionaryScale/esmc-{300m,600m}-2024-12 from the hub (or its cache) and loads
        # data/weights/esmc_*_2024_12_v0.pth. Flash attention stays off: with flash-attn
        # installed on a GPU the blocks would see unpadded [tokens, d] tensors, which the
        # hooks and the padded splicing here do not expect.
        from esm.pretrained import LOCAL_MODEL_REGISTRY

        try:
            model = LOCAL_MODEL_REGISTRY[key](torch.device(resolve_device(cfg.device)), use_flash_attn=False)
        except Exception as e:  # network or hub errors
            raise OSError(f"could not load ESM C model {key!r} from the hub (EvolutionaryScale/{key.replace('_', '-')}-2024-12): {e}") from e
        return ESMCAdapter(model.float(), cfg)
    raise FileNotFoundError(f"ESM C model {cfg.name!r}: not esmc_300m/esmc_600m and no such weights file")


def load_plm(cfg: ModelConfig) -> ProteinLM:
    fam = cfg.resolved_family()
    if fam == "unirep":
        from .unirep import load_unirep

        return load_unirep(cfg)
    return _load_esmc(cfg) if fam == "esmc" else _load_esm2(cfg)


def make_esm2_model(config_dir: str | Path, seed: int = 0, **overrides) -> nn.Module:
    """An ``EsmForMaskedLM`` built from a config folder (e.g. ../shared/data/esm2_t6_8M_config)."""
    from transformers import EsmConfig, EsmForMaskedLM

    c = EsmConfig.from_pretrained(str(config_dir), **overrides)
    torch.manual_seed(seed)
    return EsmForMaskedLM(c)


def save_hf(model: nn.Module, config_dir: str | Path, out: str | Path) -> Path:
    """Save an ESM-2 model (safetensors) with the tokenizer files of ``config_dir``, in Hugging Face layout."""
    import shutil

    out = Path(out)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(config_dir) / f).exists():
            shutil.copy(Path(config_dir) / f, out / f)
    return out


def save_initial_esm2(config_dir: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised ESM-2 (Hugging Face format, with tokenizer files)."""
    return save_hf(make_esm2_model(config_dir, seed=seed), config_dir, out)
