"""One protein LM shared by several app sessions (st.cache_resource): concurrent forwards with
hooks must not see each other's hooks ("hooks never fired") or each other's outputs."""
from concurrent.futures import ThreadPoolExecutor

import torch

from esmsae.config import ModelConfig
from esmsae.lm.plm import Hook, load_plm


def test_concurrent_embeds_and_spliced_logits_equal_serial(esm2_dir):
    plm = load_plm(ModelConfig(name=str(esm2_dir)))
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSNQDLFNAIVEEASKRLGVPLDN", "GSHMASMTGGQQMGRGS", "MLLLAVALLLSGCSSAQ"] * 2
    h3, h5 = Hook(3, "resid"), Hook(5, "resid")
    serial = [plm.embed([s], [h3 if i % 2 else h5])[0] for i, s in enumerate(seqs)]
    ids, mask = plm.tokenize(seqs[:2])
    base = plm.logits(ids, mask)

    def work(i: int):
        if i % 3 == 2:  # a splice (zeroing layer 2) on some threads, a plain embed on the others
            return plm.logits(ids, mask, {Hook(2, "resid"): torch.zeros_like})
        return plm.embed([seqs[i % len(seqs)]], [h3 if (i % len(seqs)) % 2 else h5])[0]

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(48)))
    for i, r in enumerate(results):
        if i % 3 == 2:
            assert (r - base).abs().max() > 0.01  # the splice took effect
        else:
            want = serial[i % len(seqs)]
            assert set(r) == set(want)
            for k in r:
                torch.testing.assert_close(r[k], want[k])
    torch.testing.assert_close(plm.logits(ids, mask), base)  # no hook left behind
