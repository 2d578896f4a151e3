"""The real hub code paths, offline: a Hugging Face cache in the real layout (tests/hub_cache.py)
holds each repo with its real file names and config files and small or random weights, and
subprocesses run with ``HF_HUB_OFFLINE=1`` through transformers' ``from_pretrained``, the esm
package's ESM C loader and huggingface_hub's ``hf_hub_download`` / ``snapshot_download``."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_cache import offline_env, put_repo
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
DEMO_LM = ROOT / "data" / "esm_lm" / "model"


def run(env, *args, code=None, timeout=600):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "esmsae", *map(str, args)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd[:4]} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) / shape[0] ** 0.5


@pytest.fixture(scope="module")
def hub(tmp_path_factory, shared):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    cfg_dir = shared / "esm2_t6_8M_config"
    # ESM-2 8M: the real config and tokenizer files; weights are the demo LM's (same architecture)
    put_repo(
        cache,
        "facebook/esm2_t6_8M_UR50D",
        {
            "config.json": cfg_dir / "config.json",
            "model.safetensors": DEMO_LM / "model.safetensors",
            **{f: cfg_dir / f for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")},
        },
    )
    tmp = cache.parent / "staging"
    tmp.mkdir()
    # InterPLM: layer_{L}/ae_normalized.pt, a torch.save'd state dict, 10,240 latents on d 320
    Fi = 10240
    torch.save(
        {
            "bias": torch.randn(320) * 0.1,
            "encoder.weight": _rand(Fi, 320, seed=1) * 8,
            "encoder.bias": torch.full((Fi,), -0.3),
            "decoder.weight": _rand(320, Fi, seed=2),
        },
        tmp / "ae_normalized.pt",
    )
    put_repo(
        cache,
        "Elana/InterPLM-esm2-8m",
        {"layer_4/ae_normalized.pt": tmp / "ae_normalized.pt", "README.md": b"InterPLM ESM-2 8M SAEs\n"},
    )
    # InterProt: one layer-sweep file, real name and shapes (d 1280, 4,096 latents)
    save_file(
        {
            "w_enc": _rand(1280, 4096, seed=3),
            "w_dec": _rand(4096, 1280, seed=4),
            "b_enc": torch.zeros(4096),
            "b_pre": torch.zeros(1280),
            "stats_last_nonzero": torch.zeros(4096, dtype=torch.int64),
        },
        str(tmp / "ip.safetensors"),
    )
    put_repo(cache, "liambai/InterProt-ESM2-SAEs", {"esm2_plm1280_l24_sae4096.safetensors": tmp / "ip.safetensors"})
    # Biohub: config.json + layer_27.safetensors (d 1152, 16,384 latents), with max / idf
    (tmp / "bh.json").write_text(
        json.dumps(
            {"d_model": 1152, "codebook_dim": 16384, "k": 64, "available_layers": [27], "model_type": "esmc_sae"}
        )
    )
    save_file({"W_enc": _rand(1152, 16384, seed=5), "W_dec": _rand(16384, 1152, seed=6), "b_dec": torch.zeros(1152),
               "idf": torch.rand(16384) * 4, "max": torch.rand(16384) + 0.5}, str(tmp / "bh.safetensors"))
    put_repo(
        cache,
        "biohub/ESMC-600M-sae-layer27-k64-codebook16384",
        {"config.json": tmp / "bh.json", "layer_27.safetensors": tmp / "bh.safetensors"},
    )
    # plm-sae: PyTorchModelHubMixin layout, config.json {"cfg": ...} + model.safetensors
    (tmp / "pl.json").write_text(
        json.dumps(
            {
                "cfg": {
                    "act_size": 320,
                    "dict_size": 2560,
                    "l1_coeff": 3e-4,
                    "enc_dtype": "fp32",
                    "seed": 49,
                    "device": "cuda",
                    "SAVE_DIR": "checkpoints",
                }
            }
        )
    )
    save_file(
        {
            "W_enc": _rand(320, 2560, seed=7) * 8,
            "W_dec": _rand(2560, 320, seed=8),
            "b_enc": torch.full((2560,), -0.3),
            "b_dec": torch.zeros(320),
        },
        str(tmp / "pl.safetensors"),
    )
    put_repo(
        cache,
        "evillegasgarcia/sae_esm2_6_l3",
        {"config.json": tmp / "pl.json", "model.safetensors": tmp / "pl.safetensors"},
    )
    return cache


def test_import_every_catalogued_repo_offline(hub, tmp_path):
    env = offline_env(hub)
    cases = [
        ("Elana/InterPLM-esm2-8m", ["--layer", 4], ("interplm", 4, "facebook/esm2_t6_8M_UR50D", 10240)),
        (
            "liambai/InterProt-ESM2-SAEs",
            ["--layer", 24, "--k", 64],
            ("interprot", 24, "facebook/esm2_t33_650M_UR50D", 4096),
        ),
        ("biohub/ESMC-600M-sae-layer27-k64-codebook16384", [], ("esmc", 27, "esmc_600m", 16384)),
        ("evillegasgarcia/sae_esm2_6_l3", [], ("plm-sae", 4, "facebook/esm2_t6_8M_UR50D", 2560)),
    ]
    code = "from esmsae.cli import main\n" + "\n".join(
        f"assert main({['import', repo, '--out', str(tmp_path / str(i)), *map(str, extra)]!r}) == 0"
        for i, (repo, extra, _) in enumerate(cases)
    )
    run(env, code=code)
    for i, (repo, _, (fmt, layer, model, Fn)) in enumerate(cases):
        meta = json.loads((tmp_path / str(i) / "cfg.json").read_text())
        assert (meta["provenance"]["format"], meta["layer"], meta["base_model"]["name"], meta["sae"]["n_latents"]) == (
            fmt,
            layer,
            model,
            Fn,
        )
        assert meta["provenance"]["source"] == repo and meta["provenance"]["files"]
    bh = json.loads((tmp_path / "2" / "cfg.json").read_text())
    assert bh["sae"]["k"] == 64 and bh["display_stats"]["max"] and not bh["sae"]["decode_denormalize"]
    # offline with no cached copy: a clear message, nothing written
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "esmsae",
            "import",
            "Elana/InterPLM-esm2-650m",
            "--layer",
            "9",
            "--out",
            str(tmp_path / "x"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (
        p.returncode == 2 and "could not fetch 'Elana/InterPLM-esm2-650m'" in p.stderr and not (tmp_path / "x").exists()
    )


def test_esm2_hub_name_through_model_then_evaluate_and_index_an_imported_sae(hub, tmp_path, mgen_full):
    env = offline_env(hub)
    run(env, "import", "Elana/InterPLM-esm2-8m", "--layer", 4, "--out", tmp_path / "interplm")
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(line for i, line in enumerate(open(mgen_full)) if i < 40))
    run(
        env,
        "embed",
        "--model",
        "facebook/esm2_t6_8M_UR50D",
        "--fasta",
        fasta,
        "--store",
        tmp_path / "store",
        "--layers",
        4,
        "--shard-tokens",
        4096,
    )
    out = run(env, "evaluate", tmp_path / "interplm", "--store", tmp_path / "store", "--lm-proteins", 4)
    card = json.loads((tmp_path / "interplm" / "eval.json").read_text())
    assert card["source"]["format"] == "interplm" and card["eval_split"].startswith("all proteins")
    assert card["n_tokens"] > 1000 and np.isfinite(card["fvu"]) and card["downstream"]["n_proteins"] == 4
    assert "fvu" in out
    run(
        env,
        "index",
        "--sae",
        tmp_path / "interplm",
        "--fasta",
        fasta,
        "--out",
        tmp_path / "idx.duckdb",
        "--umap",
        "false",
        "--top-n",
        3,
    )
    import duckdb

    con = duckdb.connect(str(tmp_path / "idx.duckdb"), read_only=True)
    assert con.execute("select count(*) from proteins").fetchone()[0] == 20
    assert con.execute("select count(*) from features").fetchone()[0] == 10240
    # the hub copy is the demo LM's weights: the same activations as the local folder
    code = (
        "import esmsae, torch\na = esmsae.load_model('facebook/esm2_t6_8M_UR50D').embed('MKTAYIAKQRQISFVKSHFSRQ',"
        f" layer=4)\nb = esmsae.load_model({str(DEMO_LM)!r}).embed('MKTAYIAKQRQISFVKSHFSRQ', layer=4)\nassert"
        " torch.equal(a, b), (a - b).abs().max()\nprint('same')"
    )
    assert "same" in run(env, code=code)


def _readme_api_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S)
    assert m, "README has no Python API snippet"
    return m.group(1)


def test_readme_api_snippet_runs_verbatim(hub):
    code = _readme_api_snippet() + "\nprint('SHAPES', tuple(acts.shape), tuple(feats.shape), int((feats > 0).sum()))\n"
    out = run(offline_env(hub), code=code)
    m = re.search(r"SHAPES \((\d+), 320\) \((\d+), 10240\) (\d+)", out)
    assert m and m.group(1) == m.group(2) and int(m.group(3)) > 0, out


@pytest.mark.slow
def test_esmc_300m_through_the_esm_package_offline(hub, tmp_path):
    """esmc_300m: the esm package's own builder fetches EvolutionaryScale/esmc-300m-2024-12 and loads
    data/weights/esmc_300m_2024_12_v0.pth (here: random bf16 weights of the real shapes)."""
    from esm.models.esmc import ESMC
    from esm.tokenization import get_esmc_model_tokenizers

    with torch.device("meta"):
        shapes = {
            k: v.shape
            for k, v in (
                ESMC(d_model=960, n_heads=15, n_layers=30, tokenizer=get_esmc_model_tokenizers(), use_flash_attn=False)
                .state_dict()
                .items()
            )
        }
    g = torch.Generator().manual_seed(0)
    sd = {
        k: (
            (torch.ones(s) if len(s) == 1 and "bias" not in k else torch.randn(*s, generator=g) * 0.02).to(
                torch.bfloat16
            )
        )
        for k, s in shapes.items()
    }
    w = tmp_path / "esmc.pth"
    torch.save(sd, w)
    del sd
    put_repo(
        hub, "EvolutionaryScale/esmc-300m-2024-12", {"data/weights/esmc_300m_2024_12_v0.pth": w, "config.json": b"{}"}
    )
    w.unlink()
    # an esm-sae per-protein SAE (L3840_k32 layout) on its default model esmc_300m
    run_dir = tmp_path / "L3840_k32"
    run_dir.mkdir()
    rng = np.random.default_rng(0)
    np.save(
        run_dir / "checkpoint_epoch_1.npy",
        {
            "params": {
                "pb_D": np.zeros(960, np.float32),
                "enc": {"kernel": rng.standard_normal((960, 3840)).astype(np.float32)},
                "lb_L": np.zeros(3840, np.float32),
                "dec": {"kernel": rng.standard_normal((3840, 960)).astype(np.float32)},
            }
        },
        allow_pickle=True,
    )
    code = f"""
import esmsae, torch
lm = esmsae.load_model("esmc_300m")
assert lm.plm.model._use_flash_attn is False
assert (lm.n_layers, lm.d_model) == (30, 960)
seq = "MKTAYIAKQRQISFVKSHFSRQ"
acts = lm.embed(seq, layer=30)
ids, mask = lm.plm.tokenize([seq])
with torch.no_grad():
    out = lm.plm.model(sequence_tokens=ids, sequence_id=mask)
torch.testing.assert_close(acts, out.embeddings[0, 1:-1].float())   # layer 30 = post-final-norm
# Biohub layer N = hidden_states[N-1]
torch.testing.assert_close(lm.embed(seq, layer=12), out.hidden_states[11][0, 1:-1].float())
sae = esmsae.load_sae({str(run_dir / 'checkpoint_epoch_1.npy')!r}, model="esmc_300m", layer=30)
v = esmsae.features(lm, sae, seq)
assert v.shape == (1, 3840) and int((v > 0).sum()) == 32, v.shape
torch.testing.assert_close(v, sae.encode_dense(acts[-1:]))
print("ok")
"""
    assert "ok" in run(offline_env(hub), code=code)
