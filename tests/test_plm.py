import pytest
import torch

from esmsae.config import ModelConfig
from esmsae.core.fasta import SequenceError, clean_sequence, parse_fasta_text, parse_header
from esmsae.lm.plm import Hook, ModelMismatchError, fairesm_to_hf_state_dict, length_batches, load_plm

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWYXBZUO", "MSL"]


@pytest.fixture(scope="module")
def esm2(esm2_dir):
    return load_plm(ModelConfig(name=str(esm2_dir)))


@pytest.fixture(scope="module")
def esmc(esmc_file):
    return load_plm(ModelConfig(name=str(esmc_file)))


def test_esm2_resid_hooks_equal_output_hidden_states(esm2):
    hooks = [Hook(layer, "resid") for layer in range(esm2.n_layers + 1)]
    acts = esm2.forward_hooks(SEQS, hooks)
    ids, mask = esm2.tokenize(SEQS)
    with torch.no_grad():
        hs = esm2.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for h in hooks:
        torch.testing.assert_close(acts[h.name], hs[h.layer], rtol=0, atol=0)


def test_sdpa_attention_equals_transformers_eager(esm2, esm2_dir):
    """The adapter's fused attention gives the hidden states of an untouched transformers model."""
    from transformers import EsmForMaskedLM

    ref = EsmForMaskedLM.from_pretrained(str(esm2_dir)).eval()
    ids, mask = esm2.tokenize(SEQS)  # three lengths: padding is masked the same way
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = esm2.forward_hooks(SEQS, [Hook(esm2.n_layers, "resid")])[f"L{esm2.n_layers}_resid"]
    real = mask.bool()
    torch.testing.assert_close(got[real], want[esm2.n_layers][real], rtol=1e-4, atol=1e-5)


def test_esm2_tokenizer_matches_hf_tokenizer(esm2, esm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(esm2_dir))
    ref = tok(SEQS, padding=True, return_tensors="pt")
    ids, mask = esm2.tokenize(SEQS)
    assert torch.equal(ref.input_ids, ids) and torch.equal(ref.attention_mask.bool(), mask)


def test_esm2_sublayer_hooks_sum_to_residual(esm2):
    # resid_L = resid_{L-1} + attn_L + mlp_L (dropout is 0): the sub-layer hooks read
    # exactly what each block adds to the residual stream.
    hooks = [Hook(1, "resid"), Hook(2, "resid"), Hook(2, "attn"), Hook(2, "mlp")]
    a = esm2.forward_hooks(SEQS, hooks)
    torch.testing.assert_close(a["L2_resid"], a["L1_resid"] + a["L2_attn"] + a["L2_mlp"], rtol=1e-4, atol=1e-4)


def test_esmc_hooks_equal_hidden_states(esmc):
    hooks = [Hook(layer, "resid") for layer in range(1, esmc.n_layers + 1)]
    acts = esmc.forward_hooks(SEQS, hooks)
    ids, mask = esmc.tokenize(SEQS)
    with torch.no_grad():
        out = esmc.model(sequence_tokens=ids, sequence_id=mask)
    for h in hooks[:-1]:
        torch.testing.assert_close(acts[h.name], out.hidden_states[h.layer - 1], rtol=0, atol=0)
    # the last layer includes the final norm (ESM-2's and Biohub's convention): the package's `embeddings`
    torch.testing.assert_close(acts[hooks[-1].name], out.embeddings, rtol=0, atol=0)
    # tokenizer agrees with the esm package's own
    ref = [esmc.model.tokenizer(s).input_ids for s in SEQS]
    for r, row in zip(ref, ids):
        assert row[: len(r)].tolist() == r
    blk = esmc.model.transformer.blocks[1]
    sub = esmc.forward_hooks(SEQS, [Hook(1, "resid"), Hook(2, "resid"), Hook(2, "attn"), Hook(2, "mlp")])
    torch.testing.assert_close(
        sub["L2_resid"], sub["L1_resid"] + (sub["L2_attn"] + sub["L2_mlp"]) / blk.scaling_factor, rtol=1e-4, atol=1e-4
    )


def test_embed_strips_bos_eos_and_batches_by_length(esm2):
    out = esm2.embed(SEQS, [Hook(3, "resid")])
    assert [o["L3_resid"].shape for o in out] == [(len(s), esm2.d_model) for s in SEQS]
    full = esm2.forward_hooks(SEQS[:1], [Hook(3, "resid")])["L3_resid"][0, 1:-1]
    torch.testing.assert_close(out[0]["L3_resid"], full, rtol=1e-4, atol=1e-5)
    batches = list(length_batches([5, 100, 7, 90, 3], batch_tokens=200))
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0][0] == 1  # longest first


def test_long_sequences_are_windowed(esm2_dir):
    plm = load_plm(ModelConfig(name=str(esm2_dir), max_residues=40, window_overlap=10))
    seq = ("MKTAYIAKQRQISFVKSHFSRQ" * 6)[:130]
    wins = plm.windows(len(seq))
    assert wins[0] == (0, 40) and wins[-1] == (90, 130)
    out = plm.embed([seq], [Hook(2, "resid")])[0]["L2_resid"]
    assert out.shape == (130, plm.d_model)
    # residues in the middle of the first window take that window's activations
    first = plm.forward_hooks([seq[:40]], [Hook(2, "resid")])["L2_resid"][0, 1:-1]
    torch.testing.assert_close(out[:20], first[:20], rtol=1e-4, atol=1e-5)


def test_fairesm_checkpoint_loads_into_transformers(esm2, tmp_path):
    # write the model as fair-esm would (its parameter names), then load it back
    inv = {
        "esm.embeddings.word_embeddings.": "encoder.sentence_encoder.embed_tokens.",
        "esm.encoder.emb_layer_norm_after.": "encoder.sentence_encoder.emb_layer_norm_after.",
        "lm_head.decoder.weight": "encoder.lm_head.weight", "lm_head.bias": "encoder.lm_head.bias",
        "lm_head.dense.": "encoder.lm_head.dense.", "lm_head.layer_norm.": "encoder.lm_head.layer_norm.",
    }
    per_layer = {
        "attention.self.query.": "self_attn.q_proj.",
        "attention.self.key.": "self_attn.k_proj.",
        "attention.self.value.": "self_attn.v_proj.",
        "attention.output.dense.": "self_attn.out_proj.",
        "attention.self.rotary_embeddings.": "self_attn.rot_emb.",
        "attention.LayerNorm.": "self_attn_layer_norm.",
        "intermediate.dense.": "fc1.",
        "output.dense.": "fc2.",
        "LayerNorm.": "final_layer_norm.",
    }
    fair = {}
    for k, v in esm2.model.state_dict().items():
        if "position_ids" in k or "contact_head" in k:
            continue
        if k.startswith("esm.encoder.layer."):
            _, _, _, i, rest = k.split(".", 4)
            for a, b in per_layer.items():
                if rest.startswith(a):
                    fair[f"encoder.sentence_encoder.layers.{i}.{b}{rest[len(a):]}"] = v
                    break
            continue
        for a, b in inv.items():
            if k.startswith(a):
                fair[b + k[len(a):]] = v
                break
    assert set(fairesm_to_hf_state_dict(fair)) <= set(esm2.model.state_dict())
    p = tmp_path / "esm2_t6_8M_UR50D.pt"
    torch.save({"model": fair, "cfg": {"model": {"encoder_attention_heads": 20}}}, p)
    plm2 = load_plm(ModelConfig(name=str(p)))
    a = esm2.forward_hooks(SEQS, [Hook(6, "resid")])["L6_resid"]
    b = plm2.forward_hooks(SEQS, [Hook(6, "resid")])["L6_resid"]
    torch.testing.assert_close(a, b)


def test_bad_hooks_and_sequences_get_clear_errors(esm2):
    with pytest.raises(ModelMismatchError, match="layer 9"):
        esm2.forward_hooks(SEQS, [Hook(9, "resid")])
    with pytest.raises(SequenceError, match=r"record 'p1'.*'J' at position 3"):
        clean_sequence("MKJAA", "record 'p1'")
    with pytest.raises(SequenceError, match="empty"):
        clean_sequence("  *", "record 'p2'")
    assert clean_sequence("mk taa*") == "MKTAA"
    with pytest.raises(SequenceError, match=r"record 'b'.*'1'"):
        parse_fasta_text(">a\nMKT\n>b\nMK1T\n")


def test_header_parsing():
    assert parse_header(
        "sp|P47259|Y013_MYCGE Uncharacterized protein OS=Mycoplasma genitalium (strain G37) OX=243273 GN=x PE=1 SV=2"
    ) == (
        "P47259",
        "Uncharacterized protein OS=Mycoplasma genitalium (strain G37) OX=243273 GN=x PE=1 SV=2",
        "Mycoplasma genitalium (strain G37)",
        243273,
    )
    pid, _, org, tax = parse_header("UniRef90_A0A0 Some protein n=2 Tax=Bacillus subtilis TaxID=1423 RepID=A0A0_BACSU")
    assert (pid, org, tax) == ("UniRef90_A0A0", "Bacillus subtilis", 1423)
