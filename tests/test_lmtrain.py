import json

import pytest
import torch

from esmsae.config import LMTrainConfig, ModelConfig
from esmsae.core.fasta import write_fasta
from esmsae.lm.plm import EsmTokens, Hook, load_plm
from esmsae.lm.train import load_corpus, mask_tokens, train_lm


def test_masking_follows_80_10_10_and_skips_special_tokens():
    tok = EsmTokens()
    ids = tok.batch(["MKTAYIAKQR" * 50] * 40)
    inp, chosen = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    frac = chosen.float().sum() / (ids.shape[0] * 500)
    assert 0.13 < frac < 0.17
    masked = (inp[chosen] == tok.mask).float().mean()
    kept = (inp[chosen] == ids[chosen]).float().mean()
    assert 0.75 < masked < 0.85 and 0.08 < kept < 0.2


@pytest.mark.slow
def test_lm_training_learns_context_and_loads_like_a_hub_model(tmp_path, shared):
    """Known answer: every sequence repeats its own random 4-residue motif, so residues are
    uniform (unigram perplexity 20) but a masked residue is fixed by its neighbours 4 away. A
    model that uses context beats unigram at <mask> positions; one that only learns residue
    frequencies cannot."""
    import random

    rng = random.Random(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    fa = write_fasta(
        tmp_path / "periodic.fasta",
        ((f"s{i}", ("".join(rng.choice(aa) for _ in range(4)) * 20)[:60]) for i in range(2000)),
    )
    train, held, info = load_corpus([str(fa)], 0.1)
    assert info["unique"] == len(train) + len(held) and not set(train) & set(held)
    cfg = LMTrainConfig(config_dir=str(shared / "esm2_t6_8M_config"), out=str(tmp_path / "lm"), fasta=[str(fa)],
                        holdout_fraction=0.1, crop=62, batch_tokens=64 * 32, lr=2e-3, warmup_steps=5,
                        token_budget=64 * 32 * 40, checkpoint_every=20, eval_proteins=100)
    report = train_lm(cfg, progress=False)
    assert report["finished"] and report["steps"] == 40
    assert 18 < report["masked_unigram_ppl"] < 21  # uniform residues
    assert report["masked_ppl"] < 0.7 * report["masked_unigram_ppl"], report  # measured 10.0 vs 20.0
    hist = [json.loads(x) for x in (tmp_path / "lm" / "lm_metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [20, 40] and hist[-1]["masked_ppl"] < hist[0]["masked_ppl"]
    saved = json.loads((tmp_path / "lm" / "lm_eval.json").read_text())
    assert saved["corpus"]["heldout"] == len(held) and saved["masked_tokens"] < saved["heldout_masked_tokens"]
    plm = load_plm(ModelConfig(name=str(tmp_path / "lm")))
    assert plm.n_layers == 6 and plm.d_model == 320
    assert plm.embed(["MKTAYIAKQR"], [Hook(3, "resid")])[0]["L3_resid"].shape == (10, 320)
