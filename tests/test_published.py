"""Known-answer tests for every published SAE format.

Each test writes a checkpoint in the source's exact published layout (file names, keys,
shapes, config files) with random weights, imports it with ``python -m esmsae import`` and
checks ``encode_dense`` against an independent numpy encode written from the source's
documented algorithm (../shared/design/published_sae_formats.md), on real activations: the
demo protein LM (data/esm_lm/model) on real M. genitalium proteins, layer 4.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from esmsae.cli import main
from esmsae.published.load import load_sae

ROOT = Path(__file__).resolve().parents[1]
DEMO_LM = ROOT / "data" / "esm_lm" / "model"
D, F, K, LAYER = 320, 512, 16, 4


@pytest.fixture(scope="module")
def acts(mgen_fasta):
    """[N, 320] float32: layer-4 residual activations of the demo LM on 6 real proteins."""
    import esmsae
    from esmsae.core.fasta import read_fasta

    lm = esmsae.load_model(str(DEMO_LM))
    seqs = [s for _, s in read_fasta(mgen_fasta)][:6]
    return torch.cat(lm.embed(seqs, layer=LAYER)).numpy().astype(np.float32)


def rng_weights(seed=0, scale=1.0):
    g = np.random.default_rng(seed)
    W_enc = (g.standard_normal((D, F)) * scale / np.sqrt(D)).astype(np.float32)
    W_dec = g.standard_normal((F, D)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    b_enc = (g.standard_normal(F) * 0.1 - 0.05).astype(np.float32)
    b_dec = (g.standard_normal(D) * 0.1).astype(np.float32)
    return W_enc, b_enc, W_dec, b_dec


def topk_np(pre, k):
    """Keep the k largest values of each row (then ReLU), zero elsewhere."""
    out = np.zeros_like(pre)
    idx = np.argpartition(-pre, k - 1, axis=1)[:, :k]
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
    return out


def zscore(x, ddof):
    xc = x - x.mean(-1, keepdims=True)
    return xc / (xc.std(-1, ddof=ddof, keepdims=True) + 1e-5)


def imported(tmp_path, *args):
    out = tmp_path / "imported"
    assert main(["import", *map(str, args), "--out", str(out)]) == 0
    sae = load_sae(out)
    meta = sae.meta
    return sae, meta


def features(sae, x):
    return sae.encode_dense(torch.from_numpy(x)).numpy()


def assert_match(got, ref):
    x64 = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * x64)
    assert (ref > 0).any(), "reference encode is all zero: the test would not tell anything"


# ---------------------------------------------------------------- InterPLM
def _interplm_state(seed=0):
    W_enc, b_enc, W_dec, b_dec = rng_weights(seed)
    return {"bias": torch.from_numpy(b_dec), "encoder.weight": torch.from_numpy(W_enc.T.copy()),
            "encoder.bias": torch.from_numpy(b_enc), "decoder.weight": torch.from_numpy(W_dec.T.copy())}


def test_interplm(tmp_path, acts):
    sd = _interplm_state()
    # ae_normalized.pt as InterPLM's normalize.py makes it: max folded into the weights
    fmax = torch.rand(F, generator=torch.Generator().manual_seed(3)) * 3 + 0.5
    norm = dict(sd)
    norm["encoder.weight"] = sd["encoder.weight"] / fmax[:, None]
    norm["encoder.bias"] = sd["encoder.bias"] / fmax
    norm["decoder.weight"] = sd["decoder.weight"] * fmax[None, :]
    (tmp_path / "repo" / "layer_4").mkdir(parents=True)
    torch.save(sd, tmp_path / "repo" / "layer_4" / "ae_unnormalized.pt")
    torch.save(norm, tmp_path / "repo" / "layer_4" / "ae_normalized.pt")

    def ref(s):
        e, b = s["encoder.weight"].numpy().astype(np.float64), s["encoder.bias"].numpy()
        return np.maximum((acts - s["bias"].numpy()) @ e.T + b, 0)

    # a folder + --layer picks layer_4/ae_normalized.pt, InterPLM's default
    sae, meta = imported(tmp_path, tmp_path / "repo", "--layer", 4)
    assert_match(features(sae, acts), ref(norm))
    assert (meta["layer"], meta["site"], meta["base_model"]["name"]) == (4, "resid", "facebook/esm2_t6_8M_UR50D")
    assert meta["provenance"]["format"] == "interplm" and meta["provenance"]["files"][0]["name"] == "ae_normalized.pt"
    # the unnormalized file: raw features, and the max recovered from the pair
    sae_u, _ = imported(tmp_path / "u", tmp_path / "repo" / "layer_4" / "ae_unnormalized.pt")
    raw = ref(sd)
    assert_match(features(sae_u, acts), raw)
    np.testing.assert_allclose(sae_u.display_stats()[0].numpy(), fmax.numpy(), rtol=1e-5)
    scaled = sae_u.encode_scaled(torch.from_numpy(acts), "max").numpy()
    # dividing after an fp32 matmul vs folding 1/max into the weights first: pre-activations of
    # up to ~40 carry fp32 rounding of ~40 x 1.2e-7 x sqrt(320) ~ 1e-4 (one CI run saw 1.3e-5 at atol 1e-5)
    np.testing.assert_allclose(scaled, ref(norm), rtol=1e-4, atol=1e-4)
    # reconstruction is the documented decode: f @ decoder.weight.T + bias
    lat = sae_u.encode(torch.from_numpy(acts))
    rec = sae_u.decode(lat.acts_BK, lat.idx_BK, torch.from_numpy(acts)).detach().numpy()
    np.testing.assert_allclose(rec, raw @ sd["decoder.weight"].numpy().T + sd["bias"].numpy(), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- InterProt
def test_interprot(tmp_path, acts, capsys):
    W_enc, b_enc, W_dec, b_dec = rng_weights(1)
    f = tmp_path / "esm2_plm320_l4_sae512.safetensors"
    save_file({"w_enc": torch.from_numpy(W_enc), "w_dec": torch.from_numpy(W_dec), "b_enc": torch.from_numpy(b_enc),
               "b_pre": torch.from_numpy(b_dec), "stats_last_nonzero": torch.zeros(F, dtype=torch.int64)}, str(f))
    # k is not stored: the error says which option to pass
    assert main(["import", str(f), "--out", str(tmp_path / "x")]) == 2
    assert "--k" in capsys.readouterr().err
    sae, meta = imported(tmp_path, f, "--k", K)
    ref = topk_np((zscore(acts.astype(np.float64), 1) - b_dec) @ W_enc + b_enc, K)
    assert_match(features(sae, acts), ref)
    assert meta["layer"] == 4 and meta["sae"]["normalize"] == "layernorm_eps" and meta["sae"]["k"] == K
    # decode de-normalises: (z @ w_dec + b_pre) * std + mu
    x = acts.astype(np.float64)
    mu, std = x.mean(-1, keepdims=True), (x - x.mean(-1, keepdims=True)).std(-1, ddof=1, keepdims=True)
    lat = sae.encode(torch.from_numpy(acts))
    rec = sae.decode(lat.acts_BK, lat.idx_BK, torch.from_numpy(acts)).detach().numpy()
    np.testing.assert_allclose(rec, (ref @ W_dec + b_dec) * (std + 1e-5) + mu, rtol=1e-3, atol=1e-3 * np.abs(x).max())


# ---------------------------------------------------------------- Biohub ESM C
def _esmc_repo(folder, seed=2, trivial=False):
    W_enc, _, W_dec, b_dec = rng_weights(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"d_model": D, "codebook_dim": F, "k": K, "available_layers": [LAYER], "model_type": "esmc_sae"})
    )
    fmax = torch.ones(F) if trivial else torch.rand(F) * 4 + 0.1
    idf = torch.ones(F) if trivial else torch.rand(F) * 5
    fmax[3] = 0.0  # a dead feature: 0/0 must give 0, not NaN
    save_file({"W_enc": torch.from_numpy(W_enc), "W_dec": torch.from_numpy(W_dec), "b_dec": torch.from_numpy(b_dec),
               "idf": idf, "max": fmax}, str(folder / f"layer_{LAYER}.safetensors"))
    return W_enc, W_dec, b_dec, fmax, idf


def test_biohub_esmc(tmp_path, acts):
    W_enc, W_dec, b_dec, fmax, idf = _esmc_repo(tmp_path / "repo")
    sae, meta = imported(tmp_path, tmp_path / "repo", "--model", "facebook/esm2_t6_8M_UR50D")
    z = zscore(acts.astype(np.float64), 1)
    ref = topk_np(np.maximum((z - b_dec) @ W_enc, 0), K)  # no encoder bias, ReLU then TopK
    assert_match(features(sae, acts), ref)
    m = fmax.numpy().astype(np.float64)
    ref_scaled = np.where(m > 0, ref / np.where(m > 0, m, 1), 0) * idf.numpy()
    got = sae.encode_scaled(torch.from_numpy(acts), "max_idf").numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref_scaled, rtol=1e-4, atol=1e-4 * np.abs(ref_scaled).max())
    # Biohub's reconstruction stays in z-scored space (no de-normalisation)
    lat = sae.encode(torch.from_numpy(acts))
    np.testing.assert_allclose(
        sae.decode(lat.acts_BK, lat.idx_BK).detach().numpy(), ref @ W_dec + b_dec, rtol=1e-3, atol=1e-3
    )
    assert meta["display_stats"]["max"] and meta["display_stats"]["idf"]


def test_biohub_residual_update_repo_is_marked(tmp_path, acts):
    _esmc_repo(tmp_path / "ESMC-300M-sae-mlp-k16-codebook512")
    sae, meta = imported(
        tmp_path, tmp_path / "ESMC-300M-sae-mlp-k16-codebook512", "--model", "facebook/esm2_t6_8M_UR50D"
    )
    assert meta["site"] == "resid_update" and any("residual-update" in n for n in meta["provenance"]["notes"])
    import esmsae
    from esmsae.lm.plm import Hook, ModelMismatchError

    lm = esmsae.load_model(str(DEMO_LM))
    with pytest.raises(ModelMismatchError, match="resid_update"):
        lm.plm.check_hook(Hook(4, "resid_update"))


# ---------------------------------------------------------------- plm-sae
def test_plm_sae(tmp_path, acts):
    W_enc, b_enc, W_dec, b_dec = rng_weights(3)
    repo = tmp_path / "sae_esm2_6_l3"  # hook esm.encoder.layer.3.output = the output of block 4
    repo.mkdir()
    (repo / "config.json").write_text(
        json.dumps(
            {
                "cfg": {
                    "act_size": D,
                    "dict_size": F,
                    "l1_coeff": 3e-4,
                    "enc_dtype": "fp32",
                    "seed": 49,
                    "device": "cuda",
                    "SAVE_DIR": "./checkpoints",
                }
            }
        )
    )
    save_file({"W_enc": torch.from_numpy(W_enc), "W_dec": torch.from_numpy(W_dec), "b_enc": torch.from_numpy(b_enc),
               "b_dec": torch.from_numpy(b_dec)}, str(repo / "model.safetensors"))
    sae, meta = imported(tmp_path, repo)
    assert_match(features(sae, acts), np.maximum((acts.astype(np.float64) - b_dec) @ W_enc + b_enc, 0))
    assert meta["layer"] == 4 and meta["base_model"]["name"] == "facebook/esm2_t6_8M_UR50D"


# ---------------------------------------------------------------- esm-sae
@pytest.mark.parametrize("layernorm", [False, True])
def test_esm_sae(tmp_path, acts, layernorm, capsys):
    W_enc, b_enc, W_dec, b_dec = rng_weights(4)
    run = tmp_path / f"L{F}_k{K}"
    run.mkdir()
    params = {"params": {"pb_D": b_dec, "enc": {"kernel": W_enc}, "lb_L": b_enc, "dec": {"kernel": W_dec}}}
    np.save(run / "checkpoint_epoch_3.npy", params, allow_pickle=True)
    # no model stored: required
    assert main(["import", str(run / "checkpoint_epoch_3.npy"), "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err
    args = ["--model", "facebook/esm2_t6_8M_UR50D", "--layer", "6"] + (
        ["--input-norm", "layernorm"] if layernorm else []
    )
    sae, meta = imported(tmp_path, run / "checkpoint_epoch_3.npy", *args)  # k 16 from the run folder name
    x = zscore(acts.astype(np.float64), 0) if layernorm else acts.astype(np.float64)  # esm-sae: biased std
    assert_match(features(sae, acts), topk_np((x - b_dec) @ W_enc + b_enc, K))
    assert meta["pool"] == "last" and meta["sae"]["k"] == K


# ---------------------------------------------------------------- SAELens
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens(tmp_path, acts, arch):
    W_enc, b_enc, W_dec, b_dec = rng_weights(5)
    folder = tmp_path / "blocks.3.hook_resid_post"
    folder.mkdir()
    norm = {"standard": "none", "topk": "layer_norm", "jumprelu": "constant_norm_rescale"}[arch]
    apply_b_dec = arch != "standard"  # the standard one also checks apply_b_dec_to_input False
    cfg = {
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "architecture": arch,
        "metadata": {
            "model_name": "facebook/esm2_t6_8M_UR50D",
            "hook_name": "blocks.3.hook_resid_post",
            "prepend_bos": True,
        },
    }
    tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    thr = np.abs(np.random.default_rng(9).standard_normal(F)).astype(np.float32) * 0.3
    if arch == "topk":
        cfg.update(k=K, rescale_acts_by_decoder_norm=False)
    if arch == "jumprelu":
        tensors["threshold"] = thr
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    sae, meta = imported(tmp_path, folder)
    x = acts.astype(np.float64)
    if norm == "layer_norm":
        x = zscore(x, 1)
    elif norm == "constant_norm_rescale":
        x = x * np.sqrt(D) / np.linalg.norm(x, axis=-1, keepdims=True)
    h = (x - b_dec * apply_b_dec) @ W_enc + b_enc
    ref = {"standard": np.maximum(h, 0), "topk": topk_np(h, K) if arch == "topk" else None,
           "jumprelu": np.maximum(h, 0) * (h > thr)}[arch]
    assert_match(features(sae, acts), ref)
    assert meta["layer"] == 4 and meta["site"] == "resid"


# ---------------------------------------------------------------- sparsify
def test_sparsify(tmp_path, acts):
    W_enc, b_enc, W_dec, b_dec = rng_weights(6)
    run = tmp_path / "run"
    hp = run / "encoder.layer.3"  # module output of block index 3 = esmsae layer 4
    hp.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps({"model": "facebook/esm2_t6_8M_UR50D", "hookpoints": ["encoder.layer.3"]})
    )
    (hp / "cfg.json").write_text(
        json.dumps(
            {
                "activation": "topk",
                "expansion_factor": F // D,
                "normalize_decoder": True,
                "num_latents": F,
                "k": K,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": D,
            }
        )
    )
    save_file(
        {
            "encoder.weight": torch.from_numpy(W_enc.T.copy()).to(torch.bfloat16),
            "encoder.bias": torch.from_numpy(b_enc).to(torch.bfloat16),
            "W_dec": torch.from_numpy(W_dec).to(torch.bfloat16),
            "b_dec": torch.from_numpy(b_dec).to(torch.bfloat16),
        },
        str(hp / "sae.safetensors"),
    )
    sae, meta = imported(tmp_path, run)
    # bf16 weights as sparsify saves them: the reference uses the same rounded values
    r = lambda a: torch.from_numpy(a).to(torch.bfloat16).double().numpy()  # noqa: E731
    ref = topk_np(np.maximum((acts.astype(np.float64) - r(b_dec)) @ r(W_enc) + r(b_enc), 0), K)
    assert_match(features(sae, acts), ref)
    assert meta["layer"] == 4 and meta["base_model"]["name"] == "facebook/esm2_t6_8M_UR50D"


# ---------------------------------------------------------------- export round trips
@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_export_round_trip_demo_sae(tmp_path, acts, fmt):
    """The demo SAE (TopK, scalar normalisation) exported and imported again gives the same features."""
    demo = ROOT / "data" / "esm_lm" / "sae"
    out = tmp_path / f"exp_{fmt}"
    assert main(["export", str(demo), "--format", fmt, "--out", str(out)]) == 0
    sae0 = load_sae(demo)
    meta0 = sae0.meta
    x = torch.from_numpy(acts)
    # the demo SAE reads layer 3: feed it layer-4 activations anyway, only the encode is compared
    sae1, meta1 = imported(tmp_path, out)
    f0, f1 = sae0.encode_dense(x).numpy(), sae1.encode_dense(x).numpy()
    assert_match(f1, f0)
    assert (meta1["layer"], meta1["site"]) == (meta0["layer"], meta0["site"])
    lat0, lat1 = sae0.encode(x), sae1.encode(x)
    np.testing.assert_allclose(
        sae1.decode(lat1.acts_BK, lat1.idx_BK, x).detach().numpy(),
        sae0.decode(lat0.acts_BK, lat0.idx_BK, x).detach().numpy(),
        rtol=1e-3,
        atol=1e-3,
    )


def test_export_round_trip_layernorm_sae(tmp_path, acts):
    """An imported Biohub-style SAE (per-token z-score) round-trips through SAELens' layer_norm."""
    _esmc_repo(tmp_path / "repo")
    sae0, _ = imported(tmp_path / "a", tmp_path / "repo", "--model", "facebook/esm2_t6_8M_UR50D")
    assert main(["export", str(tmp_path / "a" / "imported"), "--format", "saelens", "--out", str(tmp_path / "sl")]) == 0
    assert (
        main(["export", str(tmp_path / "a" / "imported"), "--format", "sparsify", "--out", str(tmp_path / "sp")]) == 2
    )
    sae1, _ = imported(tmp_path / "b", tmp_path / "sl")
    assert_match(features(sae1, acts), features(sae0, acts))


def test_bad_sources_name_the_problem(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    assert main(["import", str(tmp_path / "junk"), "--out", str(tmp_path / "o")]) == 2
    assert "no known SAE layout" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "esm2_plm320_l4_sae512.safetensors"
    save_file(
        {"w_enc": torch.zeros(D, F), "w_dec": torch.zeros(F + 1, D), "b_enc": torch.zeros(F), "b_pre": torch.zeros(D)},
        str(bad),
    )
    assert main(["import", str(bad), "--k", "8", "--out", str(tmp_path / "o")]) == 2
    assert "W_dec" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
