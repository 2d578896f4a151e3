"""After import everything works: the Python API's batch / pooled / sparse / scaled outputs,
protein-level stores (embed --pool), training on .npy folders (train --npy-dir), and the
Training page's import tab running an import + index job that the other pages then open."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

import esmsae
from esmsae.cli import main
from esmsae.core.fasta import read_fasta

ROOT = Path(__file__).resolve().parents[1]
DEMO_LM = ROOT / "data" / "esm_lm" / "model"


@pytest.fixture(scope="module")
def lm():
    return esmsae.load_model(str(DEMO_LM))


def _plm_sae_folder(root: Path, seed=0) -> Path:
    """A plm-sae repo (ReLU, d 320, 256 latents) reading layer 4 of an ESM-2 8M model."""
    g = torch.Generator().manual_seed(seed)
    repo = root / "sae_esm2_6_l3"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(
        json.dumps({"cfg": {"act_size": 320, "dict_size": 256, "l1_coeff": 1e-3, "enc_dtype": "fp32"}})
    )
    save_file(
        {
            "W_enc": torch.randn(320, 256, generator=g) / 320**0.5 * 4,
            "W_dec": torch.randn(256, 320, generator=g) / 16,
            "b_enc": torch.full((256,), -0.5),
            "b_dec": torch.zeros(320),
        },
        str(repo / "model.safetensors"),
    )
    return repo


def test_api_batch_pool_sparse_and_scaled(lm, mgen_fasta, tmp_path):
    seqs = [s for _, s in read_fasta(mgen_fasta)][:3]
    one = lm.embed(seqs[0], layer=3)
    many = lm.embed(seqs, layer=3)
    assert one.shape == (len(seqs[0]), 320) and [m.shape[0] for m in many] == [len(s) for s in seqs]
    torch.testing.assert_close(many[0], one)  # batching does not change a sequence's activations (fp32 rounding)
    torch.testing.assert_close(lm.embed(seqs[1], layer=3, pool="mean"), many[1].mean(0))
    torch.testing.assert_close(lm.embed(seqs[1], layer=3, pool="last"), many[1][-1])
    with pytest.raises(ValueError, match="sequence 2: invalid residue 'J' at position 3"):
        lm.embed(["MKV", "MKJV"], layer=3)
    sae = esmsae.load_sae(str(ROOT / "data" / "esm_lm" / "sae"))  # an esmsae checkpoint through the same call
    dense = esmsae.features(lm, sae, seqs[:2])
    sparse = esmsae.features(lm, sae, seqs[:2], output="sparse")
    assert [d.shape for d in dense] == [(len(s), 2048) for s in seqs[:2]]
    torch.testing.assert_close(sparse[0].to_dense(), dense[0])
    assert int((dense[0] > 0).sum(1).max()) == 32  # TopK k 32
    # the demo SAE carries reference max / IDF over its index's proteins (reference-stats): scale="max" divides by them
    ref_max, ref_idf = sae.display_stats()
    assert ref_max is not None and sae.meta["display_stats"]["n_proteins"] > 20000
    scaled = esmsae.features(lm, sae, seqs[0], scale="max")
    live = ref_max > 0
    torch.testing.assert_close(scaled[:, live], dense[0][:, live] / ref_max[live])
    from esmsae.config import SAEConfig
    from esmsae.sae.model import SAE

    with pytest.raises(ValueError, match="no reference display statistics"):
        SAE(SAEConfig(n_latents=16, k=2), 8, seed=0).encode_scaled(torch.randn(2, 8), "max")
    # an imported SAE with shipped max: the scaled output is features / max, 0 for a zero max
    repo = _plm_sae_folder(tmp_path)
    imp = esmsae.load_sae(str(repo))
    assert imp.meta["layer"] == 4 and imp.meta["provenance"]["format"] == "plm-sae"
    mx = torch.rand(256) + 0.5
    mx[0] = 0
    imp.set_display_stats(mx, torch.full((256,), 2.0))
    raw = esmsae.features(lm, imp, seqs[0])
    scaled = esmsae.features(lm, imp, seqs[0], scale="max_idf")
    torch.testing.assert_close(scaled[:, 1:], raw[:, 1:] / mx[1:] * 2.0)
    assert torch.all(scaled[:, 0] == 0)
    # the inspector's analyzer runs the imported checkpoint at its recorded layer, with the recorded model
    from esmsae.app.analyze import Analyzer
    from esmsae.lm.plm import ModelMismatchError
    from esmsae.published.convert import import_sae
    from esmsae.sae.checkpoint import check_compatible

    ck = import_sae(str(repo), tmp_path / "ck", model=str(DEMO_LM))
    res = Analyzer(ck).run("p", seqs[0])
    dense = torch.zeros(len(seqs[0]), 256).scatter_add_(1, torch.from_numpy(res.idx_LK), torch.from_numpy(res.acts_LK))
    torch.testing.assert_close(dense, raw)
    # the recorded model is checked when the SAE is used: a 1280-wide SAE does not run on the 320-wide LM
    wide = dict(imp.meta, d_in=1280)
    with pytest.raises(ModelMismatchError, match="d_in is 1280"):
        check_compatible(wide, lm.plm)


def test_embed_pool_last_store_and_npy_dir_training(tmp_path, mgen_fasta, lm):
    assert (
        main(
            [
                "embed",
                "--model",
                str(DEMO_LM),
                "--fasta",
                str(mgen_fasta),
                "--store",
                str(tmp_path / "pooled"),
                "--layers",
                "6",
                "--pool",
                "last",
                "--max-proteins",
                "30",
                "--holdout-fraction",
                "0.2",
            ]
        )
        == 0
    )
    from esmsae.store.activations import ActivationStore

    st = ActivationStore(tmp_path / "pooled")
    assert st.manifest["n_tokens"] == 30  # one vector per protein
    seqs = [s for _, s in read_fasta(mgen_fasta)][:30]
    a = np.concatenate([st.shard_array(i, "L6_resid") for i in range(len(st.shards))]).astype(np.float32)
    ref = torch.stack(lm.embed(seqs[:5], layer=6, pool="last")).numpy()
    np.testing.assert_allclose(a[:5], ref, rtol=2e-3, atol=2e-3)  # fp16 store
    # a protein-level SAE trains on it, and evaluate skips the residue-level LM loss
    assert (
        main(
            [
                "train",
                "--store",
                str(tmp_path / "pooled"),
                "--out",
                str(tmp_path / "prun"),
                "--n-latents",
                "64",
                "--k",
                "4",
                "--token-budget",
                "2000",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "prun" / "L6_resid" / "cfg.json").read_text())["pool"] == "last"
    assert main(["evaluate", str(tmp_path / "prun" / "L6_resid")]) == 0
    card = json.loads((tmp_path / "prun" / "L6_resid" / "eval.json").read_text())
    assert "downstream" not in card and "one vector per protein" in card["downstream_skipped"]
    # train --npy-dir: a folder of [N, d] arrays, cut into a store under the run folder
    npy = tmp_path / "np"
    npy.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate((2500, 700, 1800)):
        np.save(npy / f"batch_{i}.npy", rng.standard_normal((n, 48)).astype(np.float32))
    args = [
        "train",
        "--npy-dir",
        str(npy),
        "--npy-layer",
        "30",
        "--npy-model",
        "esmc_300m",
        "--out",
        str(tmp_path / "nrun"),
        "--n-latents",
        "96",
        "--k",
        "6",
        "--token-budget",
        "8000",
        "--batch-size",
        "500",
    ]
    assert main(args) == 0
    from esmsae.store.activations import ActivationStore

    ns = ActivationStore(tmp_path / "nrun" / "npy_store")
    assert ns.manifest["n_tokens"] == 5000 and ns.d_in == 48
    rows = np.concatenate([ns.shard_array(i, "L30_resid") for i in range(len(ns.shards))]).astype(np.float32)
    src = np.concatenate([np.load(npy / f"batch_{i}.npy") for i in range(3)])
    np.testing.assert_allclose(rows, src.astype(np.float16).astype(np.float32))  # every row, in order
    meta = json.loads((tmp_path / "nrun" / "L30_resid" / "cfg.json").read_text())
    assert meta["layer"] == 30 and meta["base_model"]["name"] == "esmc_300m" and meta["sae"]["d_in"] == 48
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "x.npy", np.zeros((5, 3, 2), np.float32))
    assert main(["train", "--npy-dir", str(bad), "--out", str(tmp_path / "brun")]) == 2


@pytest.mark.slow
def test_import_tab_runs_an_import_and_index_job(tmp_path, monkeypatch, mgen_full):
    ws = tmp_path / "ws"
    monkeypatch.setenv("ESMSAE_WORKSPACE", str(ws))
    monkeypatch.setenv("ESMSAE_DEMO", str(tmp_path / "no-demo"))
    monkeypatch.chdir(ROOT)
    repo = _plm_sae_folder(tmp_path)
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(line for i, line in enumerate(open(mgen_full)) if i < 20))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/training.py")
    at.run()
    assert not at.exception
    assert len(at.tabs) >= 2 and at.tabs[1].label == "Import a published SAE"
    releases = at.selectbox(key="imp_pick")
    assert any("Elana/InterPLM-esm2-8m" in str(o) for o in releases.options)
    releases.select_index(len(releases.options) - 1).run()  # "Other"
    at.text_input(key="imp_source").input(str(repo))
    other = len(releases.options) - 1
    at.text_input(key=f"imp_layer_{other}").input("x4")
    at.text_input(key=f"imp_model_{other}").input(str(DEMO_LM))
    at.text_input(key="imp_fasta").input(str(fasta))
    at.text_input(key="imp_name").input("imp1")
    at.button(key="FormSubmitter:import_form-Import and index").click().run()
    assert at.error and "Layer: expected a whole number, got 'x4'" in at.error[0].value  # refused, nothing started
    assert not (ws / "imp1").exists()
    at.text_input(key=f"imp_layer_{other}").input("")
    at.button(key="FormSubmitter:import_form-Import and index").click().run()
    assert not at.exception and "Started import imp1" in at.success[0].value
    from esmsae.app import jobs

    d = ws / "imp1"
    st = jobs.wait(d, lambda st: st["state"] in ("done", "failed"), 3600)  # ends when the job does
    assert st["state"] == "done", (d / "job.log").read_text()[-3000:]
    assert (d / "sae" / "index.duckdb").exists()
    # the imported run is an ordinary run: the overview and feature pages open it
    from esmsae.app.runs import list_runs

    runs = list_runs(ws, tmp_path / "no-demo")
    assert [r.name for r in runs] == ["imp1/sae"]
    ov = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    ov.switch_page("pages/overview.py")
    ov.run()
    assert not ov.exception
    metrics = {m.label: m.value for m in ov.metric}
    assert metrics["Latents"].startswith("256 ") and metrics["Layer"] == "4 (resid)"
    fp = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    fp.switch_page("pages/features.py")
    fp.query_params["feature"] = "1"
    fp.run()
    assert not fp.exception and fp.title[0].value.startswith("Feature 1")
