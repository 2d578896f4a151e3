import pytest
import torch

from esmsae.config import SAEConfig
from esmsae.sae.model import SAE
from esmsae.sae.train import train_step


def _data(n=512, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3 + 1


@pytest.mark.parametrize("norm", ["none", "scalar", "layernorm", "center", "center_scalar"])
def test_topk_exactly_k_and_forward_equals_decode_encode(norm):
    x = _data()
    sae = SAE(SAEConfig(n_latents=256, k=8, normalize=norm), 32)
    sae.fit_normalization(x)
    sae.eval()
    lat = sae.encode(x)
    assert lat.idx_BK.shape == (512, 8)
    # at init (encoder = decoder^T) every token activates exactly k latents
    assert bool(((lat.acts_BK > 0).sum(-1) == 8).all())
    assert all(len(set(r.tolist())) == 8 for r in lat.idx_BK)
    out = sae(x)
    torch.testing.assert_close(out.recon_BD, sae.decode(lat.acts_BK, lat.idx_BK, x))
    dense = sae.encode_dense(x)
    assert bool(((dense > 0).sum(-1) == 8).all())


def _assert_grads_match_dense(sae, cfg, x, seed, dead=None):
    """Backward through ``sae`` equals plain autograd on the dense TopK (+ AuxK) maths;
    returns the SAE's gradients."""
    sae.zero_grad(set_to_none=True)
    out = sae(x, dead_mask_F=dead)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    ref = SAE(cfg, x.shape[1], seed=seed)
    ref.load_state_dict(sae.state_dict())
    pre = (x - ref.b_dec) @ ref.W_enc.t() + ref.b_enc
    v, i = pre.topk(cfg.k, dim=-1)
    recon = torch.zeros_like(pre).scatter(1, i, v.clamp_min(0)) @ ref.W_dec + ref.b_dec
    loss = (recon - x).pow(2).sum(-1).mean()
    if dead is not None:
        av, ai = pre.masked_fill(~dead, -torch.inf).topk(cfg.auxk_k, dim=-1)
        e_hat = torch.zeros_like(pre).scatter(1, ai, av.clamp_min(0)) @ ref.W_dec
        e = (x - recon).detach()
        auxk = (e_hat - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean()
        assert float(out.auxk_loss) > 0
        loss = loss + cfg.auxk_coef * auxk
    loss.backward()
    torch.testing.assert_close(out.loss, loss)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=f"grad of {n}")
    return grads


def test_sparse_topk_gradients_match_dense_reference():
    x = _data(64, 16)
    cfg = SAEConfig(n_latents=64, k=4, normalize="none", auxk_coef=0)
    sae = SAE(cfg, 16, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    _assert_grads_match_dense(sae, cfg, x, seed=1)


def test_auxk_sparse_gradients_match_dense_reference_and_buffer_reuse_is_safe():
    """AuxK reuses the TopK pass's dense pre-activations (a training buffer) and has a
    sparse backward; both must equal plain autograd on the dense maths, on every call."""
    x = _data(64, 16)
    cfg = SAEConfig(n_latents=64, k=4, normalize="none", auxk_coef=0.5, auxk_k=6)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    sae = SAE(cfg, 16, seed=2)
    with torch.no_grad():
        sae.b_enc.normal_()
    for _ in range(2):  # the second call reuses the buffer the first one wrote
        grads = _assert_grads_match_dense(sae, cfg, x, seed=2, dead=dead)
        # dead latents get encoder gradient only through AuxK, so it must be non-zero there
        assert float(grads["W_enc"][dead].abs().sum()) > 0


def test_decoder_unit_norm_and_parallel_gradient_removed():
    x = _data()
    sae = SAE(SAEConfig(n_latents=128, k=8), 32)
    sae.fit_normalization(x)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        out = sae(x)
        opt.zero_grad()
        out.loss.backward()
        sae.remove_gradient_parallel_to_decoder()
        dot = (sae.W_dec.grad * sae.W_dec).sum(-1)
        assert dot.abs().max() < 1e-5
        opt.step()
        sae.set_decoder_norm_to_unit()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))


def test_batchtopk_keeps_k_times_batch_in_training_and_threshold_at_inference():
    x = _data(256)
    sae = SAE(SAEConfig(architecture="batchtopk", n_latents=128, k=6), 32)
    sae.fit_normalization(x)
    sae.train()
    out = sae(x)
    assert int((out.acts_BK > 0).sum()) == 6 * 256
    assert float(sae.threshold) > 0
    sae.eval()
    lat = sae.encode(x)
    assert bool((lat.acts_BK[lat.acts_BK > 0] > sae.threshold).all())
    # saved for inference as JumpReLU (as SAELens): one threshold per latent, the same codes
    jr = sae.for_inference()
    assert jr.cfg.architecture == "jumprelu" and jr.threshold.shape == (128,)
    assert torch.equal(jr.threshold, torch.full((128,), float(sae.threshold)))
    assert torch.equal(jr.encode_dense(x), sae.encode_dense(x)) and int((jr.encode_dense(x) > 0).sum()) > 0
    assert SAE(SAEConfig(n_latents=16, k=2), 8).for_inference().cfg.architecture == "topk"


def test_batch_statistics_come_from_the_caller():
    """The SAE holds no collectives: the AuxK normaliser and the BatchTopK threshold are functions the
    trainer passes in (data parallel: the global batch's). A caller's values change the result."""
    x = _data(256)
    sae = SAE(SAEConfig(architecture="topk", n_latents=128, k=4, auxk_k=8), 32, seed=0)
    sae.fit_normalization(x)
    dead = torch.ones(128, dtype=torch.bool)
    a = sae(x, dead_mask_F=dead).auxk_loss
    b = sae(x, dead_mask_F=dead, error_variance=lambda e: 2 * (e - e.mean(0)).pow(2).sum(-1).mean()).auxk_loss
    torch.testing.assert_close(b, a / 2)
    bt = SAE(SAEConfig(architecture="batchtopk", n_latents=128, k=6), 32, seed=0)
    bt.fit_normalization(x)
    bt.train()
    out = bt(x, batch_threshold=lambda pre, k: pre.flatten().topk(2 * k * pre.shape[0]).values.min())
    assert int((out.acts_BK > 0).sum()) == 2 * 6 * 256  # the caller's threshold, not this batch's top k x B
    assert not any(hasattr(bt, n) for n in ("dist_reduce", "dist_gather", "dist_local_auxk"))


def test_relu_l1_penalty_and_auxk_revives():
    x = _data()
    # behaviour of the L1 penalty: the same data and seed, trained with a larger penalty, give
    # sparser codes and a worse reconstruction
    l0, fvu = {}, {}
    for coef in (0.0, 0.2):
        relu = SAE(SAEConfig(architecture="relu", n_latents=64, k=0, l1_coef=coef), 32, seed=0)
        relu.fit_normalization(x)
        opt = torch.optim.Adam(relu.parameters(), lr=3e-3)
        for _ in range(150):
            train_step(relu, opt, x)
        relu.eval()
        lat = relu.encode(x)
        l0[coef] = float((lat.acts_BK > 0).sum(-1).float().mean())
        fvu[coef] = float(relu(x).fvu)
    assert l0[0.2] < 0.5 * l0[0.0] and fvu[0.2] > fvu[0.0], (l0, fvu)
    topk = SAE(SAEConfig(n_latents=64, k=4), 32)
    topk.fit_normalization(x)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:32] = True
    out = topk(x, dead_mask_F=dead)
    assert float(out.auxk_loss) > 0
    out.loss.backward()
    # dead latents receive decoder gradient only through AuxK
    assert float(topk.W_dec.grad[:32].abs().sum()) > 0


def test_fvu_drops_when_trained():
    torch.manual_seed(0)
    dict_true = torch.nn.functional.normalize(torch.randn(64, 32), dim=1)
    codes = torch.zeros(4096, 64)
    idx = torch.randint(0, 64, (4096, 3))
    codes.scatter_(1, idx, torch.rand(4096, 3) + 0.5)
    x = codes @ dict_true
    sae = SAE(SAEConfig(n_latents=128, k=4, normalize="scalar"), 32)
    sae.fit_normalization(x)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    first = None
    for step in range(300):
        out = train_step(sae, opt, x[torch.randint(0, 4096, (256,))])
        first = first if first is not None else float(out.fvu)
    assert float(sae(x).fvu) < 0.1 < first


@pytest.mark.parametrize("shape,k", [((64, 10240), 32), ((33, 16384), 64), ((8, 96), 5), ((5, 100), 3)])
def test_topk_rows_is_exact(shape, k):
    """The group-max prefilter returns exactly torch.topk's values, with matching indices,
    including rows full of ties."""
    from esmsae.sae.kernels import topk_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    x[0] = 1.0  # all ties
    x[1, ::7] = 5.0  # many equal maxima
    vals, idx = topk_rows(x, k)
    ref, _ = x.topk(k, dim=-1)
    torch.testing.assert_close(vals.sort(-1).values, ref.sort(-1).values)
    torch.testing.assert_close(x.gather(1, idx), vals)
    assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all())  # distinct latents per row


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_chunked_encode_equals_whole(arch):
    """encode() works on blocks of rows (bounded memory for long proteins); the result must
    not depend on the block size, K padding included."""
    x = _data(300, 16)
    sae = SAE(SAEConfig(architecture=arch, n_latents=64, k=4, normalize="none"), 16, seed=3).eval()
    with torch.no_grad():
        sae.b_enc.normal_()
        if arch == "batchtopk":
            sae.threshold.fill_(0.5)
        whole = sae.encode_dense(x)
        lat = sae.encode(x, chunk=7)
        chunked = torch.zeros_like(whole).scatter_add_(1, lat.idx_BK, lat.acts_BK)
    torch.testing.assert_close(chunked, whole)
    assert int((whole > 0).sum()) > 0


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_bf16_encode_rounds_the_matmul_and_nothing_else(arch, keep_dtype):
    """set_encode_dtype("bfloat16"): the encoder matmul's operands and its result are bf16 (products
    accumulated in fp32), the bias, ReLU / threshold and top-k work on that result as in fp32.
    Known answer: an fp32 matmul of the rounded operands, rounded to bf16 (equal up to summation
    order, so to one bf16 step). float32 restores the exact encode bit for bit, a changed W_enc is
    picked up (no stale bf16 copy), and training never uses it."""
    x = _data(300, 32) / 3
    sae = SAE(SAEConfig(architecture=arch, n_latents=256, k=8, normalize="none"), 32, seed=1).eval()

    def ref_pre():  # normalize "none" and b_dec 0: the matmul's input is x itself
        return (x.bfloat16().float() @ sae.W_enc.bfloat16().float().t()).bfloat16().float() + sae.b_enc

    def check(lat):
        pre = ref_pre()
        sel = lat.idx_BK[lat.acts_BK > 0]
        rows = torch.arange(len(x)).unsqueeze(1).expand_as(lat.idx_BK)[lat.acts_BK > 0]
        torch.testing.assert_close(lat.acts_BK[lat.acts_BK > 0], pre[rows, sel], rtol=1e-2, atol=1e-6)
        if arch == "topk":  # a top k of the reference: no unselected latent is above a selected one
            on = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, lat.idx_BK, True)
            lo = pre.masked_fill(~on, float("inf")).amin(1)
            hi = pre.masked_fill(on, -float("inf")).amax(1)
            assert bool((lo >= hi - 1e-2 * hi.abs()).all())
        else:  # every latent over its threshold (0 for ReLU) is on, to one bf16 step
            dense = torch.zeros_like(pre).index_put_((rows, sel), lat.acts_BK[lat.acts_BK > 0])
            want = torch.relu(pre) * (pre > sae.threshold)
            torch.testing.assert_close(dense, want, rtol=1e-2, atol=1e-6)

    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        if arch == "jumprelu":
            sae.threshold.fill_(0.05)
        exact = sae.encode_dense(x)
        low = sae.set_encode_dtype("bfloat16").encode(x)
        check(low)
        dense_low = torch.zeros_like(exact).scatter_add_(1, low.idx_BK, low.acts_BK)
        assert not torch.equal(dense_low, exact) and int((dense_low > 0).sum()) > len(x)
        assert torch.equal(sae.set_encode_dtype("float32").encode_dense(x), exact)
        sae.set_encode_dtype("bfloat16").encode(x)  # caches the bf16 weights; then they change
        sae.W_enc.mul_(-1)
        check(sae.encode(x))
    sae.train()
    with torch.no_grad():
        trained_with_bf16_set = sae(x).recon_BD
        assert torch.equal(trained_with_bf16_set, sae.set_encode_dtype(None)(x).recon_BD)
    with pytest.raises(ValueError, match="float16"):
        sae.set_encode_dtype("float16")


def _batchtopk(seed=0, F_=64):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(n_latents=F_, k=4, architecture="batchtopk", normalize="none"), 16)
    sae.train()
    return sae


def test_batchtopk_threshold_is_the_running_mean_of_the_batch_minima():
    """The inference threshold after N steps is the running mean (lerp 0.01, the first batch as is) of each
    batch's smallest kept value: the k x B-th largest ReLU'd pre-activation, computed here by hand."""
    sae = _batchtopk()
    want = None
    for step in range(25):
        x = _data(32, 16, seed=step)
        with torch.no_grad():
            flat = torch.relu(sae.pre(x, True)).flatten()
            m = flat.topk(4 * 32).values.min()
        want = m if want is None else want + 0.01 * (m - want)
        sae.activation.latents(sae, x, train=True)
        assert float(sae.threshold) == pytest.approx(float(want), rel=1e-6), step
    assert float(sae.threshold) != pytest.approx(float(m), rel=1e-3)  # not the last batch's minimum


def test_batchtopk_threshold_under_data_parallel_equals_one_process():
    """Two ranks, each with half the batch and the global threshold passed in (as global_batch_threshold
    computes it), keep the same inference threshold as one process on the whole batch, to a relative
    1e-6 (each rank's own smallest kept value differs; lerping toward it makes the ranks drift)."""
    one, r0, r1 = _batchtopk(), _batchtopk(), _batchtopk()
    for step in range(30):
        x = _data(32, 16, seed=100 + step)
        with torch.no_grad():
            t_glob = torch.relu(one.pre(x, True)).flatten().topk(4 * 32).values.min()
        one.activation.latents(one, x, train=True)
        r0.activation.latents(r0, x[:16], train=True, batch_threshold=lambda pre, k: t_glob)
        r1.activation.latents(r1, x[16:], train=True, batch_threshold=lambda pre, k: t_glob)
    t = float(one.threshold)
    assert t > 0
    assert float(r0.threshold) == pytest.approx(t, rel=1e-6) and float(r1.threshold) == pytest.approx(t, rel=1e-6)


def test_relu_training_honours_bf16(keep_dtype):
    """ReLU's training forward runs the encoder matmul in the SAE's training precision: under bf16 the loss
    moves (by bf16 rounding, not more), where fp32 gives the same loss twice."""
    x = _data(64, 32)
    torch.manual_seed(0)
    sae = SAE(SAEConfig(n_latents=128, k=8, architecture="relu", normalize="none"), 32)
    sae.train()
    fp32 = sae(x, l1_coef=1e-3)
    again = sae(x, l1_coef=1e-3)
    sae.set_train_dtype("bfloat16")
    bf16 = sae(x, l1_coef=1e-3)
    assert float(fp32.loss) == float(again.loss)
    assert float(bf16.loss) != float(fp32.loss)
    assert float(bf16.loss) == pytest.approx(float(fp32.loss), rel=2e-2)
