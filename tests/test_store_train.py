import json

import numpy as np
import pytest
import torch

from esmsae.config import (
    ConfigError,
    EmbedConfig,
    HookConfig,
    ModelConfig,
    SAEConfig,
    TrainConfig,
    load_json,
    save_json,
)
from esmsae.core.fasta import SequenceError
from esmsae.core.precision import native_precision
from esmsae.lm.plm import ModelMismatchError, load_plm
from esmsae.published.load import load_sae
from esmsae.sae.checkpoint import read_cfg
from esmsae.sae.train import TrainError, read_metrics, train
from esmsae.store.activations import ActivationStore, StoreError, embed_fasta


def test_store_contents_match_direct_embedding(small_store, esm2_dir, mgen_fasta):
    st = ActivationStore(small_store)
    assert st.hook_names == ["L2_resid", "L4_resid"] and st.d_in == 320
    prots = st.proteins()
    assert len(prots) == 120 and prots["pidx"].tolist() == list(range(120))
    assert prots["organism"].str.contains("Mycoplasma genitalium").all() and (prots["taxid"] == 243273).all()
    assert sum(s["n_tokens"] for s in st.shards) == prots["length"].sum() == st.manifest["n_tokens"]
    assert len(st.shards) > 3  # bounded shards
    # the held-out split is by sequence hash and both sides are non-empty
    assert 0 < (prots["split"] == "heldout").sum() < 120
    # activations of protein 5 equal a direct forward pass (fp16 storage)
    plm = load_plm(ModelConfig(name=str(esm2_dir)))
    from esmsae.lm.plm import Hook

    direct = plm.embed([prots.loc[5, "sequence"]], [Hook(4, "resid")])[0]["L4_resid"].numpy()
    for i in range(len(st.shards)):
        pr = np.asarray(st.shard_meta(i, "protein"))
        if (pr == 5).any():
            stored = np.asarray(st.shard_array(i, "L4_resid"))[pr == 5].astype(np.float32)
            pos = np.asarray(st.shard_meta(i, "position"))[pr == 5]
            assert pos.tolist() == list(range(len(direct)))
            np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=2e-3)


def test_embed_resumes_after_interruption(tmp_path, esm2_dir, mgen_fasta, small_store):
    model, hooks = ModelConfig(name=str(esm2_dir)), HookConfig(layers=[2, 4])
    out = tmp_path / "store"
    cfg = EmbedConfig(fasta=str(mgen_fasta), store=str(out), shard_tokens=4096, holdout_fraction=0.15)
    # interrupted run: stop after 40 proteins (a crash mid-shard leaves only a .tmp folder)
    embed_fasta(EmbedConfig(**{**cfg.__dict__, "max_proteins": 40}), model, hooks, progress=False)
    man = json.loads((out / "manifest.json").read_text())
    man["complete"] = False
    (out / "manifest.json").write_text(json.dumps(man))
    (out / "shard_99999.tmp").mkdir()
    embed_fasta(cfg, model, hooks, progress=False)
    a, b = ActivationStore(out), ActivationStore(small_store)
    assert a.manifest["n_proteins"] == b.manifest["n_proteins"] == 120
    assert not (out / "shard_99999.tmp").exists()
    ta = np.concatenate([np.asarray(a.shard_array(i, "L4_resid")) for i in range(len(a.shards))])
    tb = np.concatenate([np.asarray(b.shard_array(i, "L4_resid")) for i in range(len(b.shards))])
    assert ta.shape == tb.shape
    np.testing.assert_allclose(ta.astype(np.float32), tb.astype(np.float32), atol=3e-3, rtol=1e-2)
    assert a.proteins()["md5"].tolist() == b.proteins()["md5"].tolist()
    with pytest.raises(StoreError, match="other settings"):
        embed_fasta(cfg, model, HookConfig(layers=[3]), progress=False)


def test_bad_fasta_is_reported(tmp_path, esm2_dir):
    fa = tmp_path / "bad.fasta"
    fa.write_text(">a\nMKTAYIAK\n>b\nMKT1AY\n>c\n\n>d\nMSLLK\n")
    model, hooks = ModelConfig(name=str(esm2_dir)), HookConfig(layers=[1])
    with pytest.raises(SequenceError, match=r"record 'b'.*'1' at position 4"):
        embed_fasta(EmbedConfig(fasta=str(fa), store=str(tmp_path / "s1")), model, hooks, progress=False)
    embed_fasta(
        EmbedConfig(fasta=str(fa), store=str(tmp_path / "s2"), on_invalid="skip", holdout_fraction=0),
        model,
        hooks,
        progress=False,
    )
    st = ActivationStore(tmp_path / "s2")
    assert st.manifest["n_skipped"] == 2 and st.proteins()["id"].tolist() == ["a", "d"]
    dup = tmp_path / "dup.fasta"
    dup.write_text(">a\nMKT\n>a\nMKT\n")
    with pytest.raises(SequenceError, match="duplicate record id 'a'"):
        embed_fasta(EmbedConfig(fasta=str(dup), store=str(tmp_path / "s3")), model, hooks, progress=False)


def _tcfg(store, out, **kw):
    base = dict(store=str(store), out=str(out), token_budget=24 * 256, batch_size=256, buffer_shards=2,
                checkpoint_every=6, log_every=3, warmup_steps=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_identical_parameters(tmp_path, small_store):
    scfg = SAEConfig(n_latents=512, k=8, dead_tokens=1000)
    full = train(_tcfg(small_store, tmp_path / "full"), scfg, progress=False)
    part = _tcfg(small_store, tmp_path / "part")
    train(part, scfg, progress=False, stop_after_steps=9)  # interrupted between checkpoints (checkpoint at 9)
    assert torch.load(tmp_path / "part" / "state.pt", weights_only=False)["step"] == 9
    train(part, scfg, progress=False)  # resume
    for d in full:
        a = load_sae(d)
        b = load_sae(tmp_path / "part" / d.name)
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    steps = [r["step"] for r in read_metrics(tmp_path / "part") if r["sae"] == "L2_resid"]
    assert steps == sorted(set(steps)) and steps[-1] == 24
    with pytest.raises(TrainError, match="other settings"):
        train(_tcfg(small_store, tmp_path / "part", lr=1e-3), scfg, progress=False)


def test_signum_resumes_bit_for_bit_and_saves_the_averaged_weights(tmp_path, small_store):
    """`--optimizer signum` (schedule-free sign descent): an interrupted run resumes to the same
    checkpoint bit for bit (a checkpoint never moves the training point y), and the checkpoint holds
    the averaged weights x = y + (1 - 1/beta)(z - y), not y."""
    from esmsae.sae.optim import SIGNUM_MOMENTUM

    scfg = SAEConfig(n_latents=256, k=8, dead_tokens=1000)
    kw = dict(optimizer="signum", token_budget=12 * 256, checkpoint_every=4)
    full = train(_tcfg(small_store, tmp_path / "full", **kw), scfg, progress=False)
    part = _tcfg(small_store, tmp_path / "part", **kw)
    train(part, scfg, progress=False, stop_after_steps=6)  # between the checkpoints at 4 and 8
    train(part, scfg, progress=False)
    for d in full:
        a, b = load_sae(d), load_sae(tmp_path / "part" / d.name)
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    st = torch.load(tmp_path / "full" / "state.pt", weights_only=False)
    name = full[0].name
    y = st["saes"][name]["W_enc"]
    saved_sae = load_sae(full[0])
    i = [n for n, _ in saved_sae.named_parameters()].index("W_enc")  # the optimiser's state follows this order
    z = st["opts"][name]["state"][i]["z"]
    saved = saved_sae.W_enc.detach()
    torch.testing.assert_close(saved, torch.lerp(y, z, 1 - 1 / SIGNUM_MOMENTUM), rtol=0, atol=1e-6)
    assert not torch.allclose(saved, y, atol=1e-4)  # the training point is not what is saved
    rows = [r for r in read_metrics(tmp_path / "full") if r["sae"] == name]
    assert len({r["lr"] for r in rows}) == 1  # schedule-free: one constant rate
    assert rows[-1]["fvu"] < rows[0]["fvu"]
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(store=str(small_store), out=str(tmp_path / "x"), optimizer="sgd")


def test_fused_signum_equals_the_reference_wrapper_bit_for_bit():
    """The fused schedule-free sign descent (esmsae.sae.optim.ScheduleFreeSignum) takes the same steps
    as Meta's reference ScheduleFreeWrapper around sign descent, bit for bit, including a change of
    learning rate mid-run, and its state dict loads into the wrapper (checkpoints resume either way)."""
    from schedulefree import ScheduleFreeWrapper

    from esmsae.sae.optim import SIGNUM_MOMENTUM, ScheduleFreeSignum, SignSGD, averaged_copy

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(64, 48, generator=g), torch.randn(48, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init]
             for _ in range(7)]
    ref_p = [torch.nn.Parameter(t.clone()) for t in init]
    new_p = [torch.nn.Parameter(t.clone()) for t in init]
    ref = ScheduleFreeWrapper(SignSGD(ref_p, lr=5e-3), momentum=SIGNUM_MOMENTUM)
    ref.train()
    new = ScheduleFreeSignum(new_p, lr=5e-3)
    for i, gs in enumerate(grads):
        lr = 5e-3 if i < 4 else 2e-3
        for opt, ps in ((ref, ref_p), (new, new_p)):
            opt.param_groups[0]["lr"] = lr
            for p, gr in zip(ps, gs):
                p.grad = gr.clone()
            opt.step()
        for a, b in zip(ref_p, new_p):
            assert torch.equal(a, b), i
    for a, b in zip(ref_p, new_p):
        assert torch.equal(ref.state[a]["z"], new.state[b]["z"])
    assert ref.param_groups[0]["weight_sum"] == new.param_groups[0]["weight_sum"]
    # the averaged weights x and the state dict round trip
    m_ref, m_new = torch.nn.Linear(48, 64), torch.nn.Linear(48, 64)
    ref2 = ScheduleFreeWrapper(SignSGD(list(m_ref.parameters()), lr=1e-2), momentum=SIGNUM_MOMENTUM)
    ref2.train()
    new2 = ScheduleFreeSignum(list(m_new.parameters()), lr=1e-2)
    m_new.load_state_dict(m_ref.state_dict())
    for opt, m in ((ref2, m_ref), (new2, m_new)):
        m(torch.ones(3, 48)).square().sum().backward()
        opt.step()
    new2.load_state_dict(ref2.state_dict())
    x_ref, x_new = averaged_copy(m_ref, ref2), averaged_copy(m_new, new2)
    for a, b in zip(x_ref.parameters(), x_new.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="lr"):
        ScheduleFreeSignum(new_p, lr=0.0)


def test_sign_descent_keeps_the_averaged_decoder_rows_at_unit_norm():
    """unit_rows_ rescales y and z row by row so that the averaged weights x (what is saved) have unit rows,
    and x stays the same average of y and z; over many sign steps without it the rows grow (the defect the
    demo store showed: norms near 7 and a collapsing L0)."""
    from esmsae.sae.optim import ScheduleFreeSignum, averaged_copy

    g = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(32, 24, generator=g), dim=1)
    free, held = torch.nn.Parameter(rows.clone()), torch.nn.Parameter(rows.clone())
    opt_free, opt_held = ScheduleFreeSignum([free], lr=2e-2), ScheduleFreeSignum([held], lr=2e-2)
    for _ in range(300):
        grad = torch.randn(rows.shape, generator=g)
        for p, opt in ((free, opt_free), (held, opt_held)):
            p.grad = grad.clone()
            opt.step()
        y, z = held.detach().clone(), opt_held.state[held]["z"].clone()
        opt_held.unit_rows_(held)
        scale = held.detach() / y  # one factor per row, the same for y and z
        assert torch.allclose(scale, scale[:, :1].expand_as(scale), rtol=1e-5)
        assert torch.allclose(opt_held.state[held]["z"], z * scale[:, :1], rtol=1e-5, atol=1e-7)
    x_held = averaged_copy(torch.nn.ParameterList([held]), opt_held)[0]
    x_free = averaged_copy(torch.nn.ParameterList([free]), opt_free)[0]
    assert torch.allclose(x_held.norm(dim=1), torch.ones(32), atol=1e-5)
    assert x_free.norm(dim=1).mean() > 1.2  # without the constraint the rows grow (random sign steps)


def test_checkpoint_metadata_and_mismatch_errors(tmp_path, small_store, esm2_dir, esmc_file):
    dirs = train(
        # the default optimiser (schedule-free sign descent): its averaged decoder is saved with unit rows
        _tcfg(small_store, tmp_path / "run", layers=[4], token_budget=6 * 256),
        SAEConfig(n_latents=256, k=4),
        progress=False,
    )
    assert [d.name for d in dirs] == ["L4_resid"]
    cfg = read_cfg(dirs[0])
    # precision "auto" is recorded as what ran
    assert cfg["train"]["precision"] == native_precision("cpu") and cfg["train"]["optimizer"] == "signum"
    assert cfg["d_in"] == 320 and cfg["layer"] == 4 and cfg["site"] == "resid" and cfg["bos_eos"] == "stripped"
    assert (
        cfg["base_model"]["n_layers"] == 6
        and cfg["normalization"]["mode"] == "scalar"
        and cfg["normalization"]["scale"] > 0
    )
    assert (
        cfg["provenance"]["fasta"]["path"].endswith("mgen120.fasta") and cfg["provenance"]["tokens_trained"] == 6 * 256
    )
    sae = load_sae(dirs[0], plm=load_plm(ModelConfig(name=str(esm2_dir))))
    with torch.no_grad():
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))
    with pytest.raises(ModelMismatchError, match="d_in is 320"):
        load_sae(dirs[0], plm=load_plm(ModelConfig(name=str(esmc_file))))


def test_config_validation_and_json_round_trip(tmp_path):
    with pytest.raises(ConfigError, match=r"SAEConfig.k"):
        SAEConfig(n_latents=16, k=32)
    with pytest.raises(ConfigError, match=r"HookConfig.site"):
        HookConfig(site="mlp_out")
    with pytest.raises(ConfigError, match=r"HookConfig.layers"):
        HookConfig(layers=[0], site="mlp")
    cfg = SAEConfig(architecture="batchtopk", n_latents=2048, k=16, normalize="center")
    save_json(cfg, tmp_path / "s.json")
    assert load_json(SAEConfig, tmp_path / "s.json") == cfg


def test_a_store_in_another_format_is_refused(tmp_path, small_store):
    """The store's format version is checked on open (reading and resuming): another version gets a
    message naming it and what to do, not a KeyError later."""
    import shutil

    from esmsae.store.activations import STORE_VERSION, ActivationStore, StoreError

    copy = tmp_path / "store"
    shutil.copytree(small_store, copy)
    man = json.loads((copy / "manifest.json").read_text())
    assert man["version"] == STORE_VERSION and ActivationStore(copy).d_in > 0
    (copy / "manifest.json").write_text(json.dumps({**man, "version": STORE_VERSION + 1}))
    with pytest.raises(StoreError, match=r"activation store in format 2, and this esmsae reads format 1"):
        ActivationStore(copy)
