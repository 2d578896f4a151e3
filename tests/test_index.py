"""The feature index against a brute-force computation on real M. genitalium proteins."""
import json

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import fisher_exact

from esmsae.config import ConfigError, IndexConfig, ModelConfig
from esmsae.core.fasta import read_fasta
from esmsae.index.build import build_index
from esmsae.index.group_stats import enrichment
from esmsae.index.labels import load_all, load_tmbed, runs
from esmsae.index.protein_table import ProteinTable
from esmsae.index.proteins import IndexBuildError, read_grouping
from esmsae.lm.plm import Hook, ModelMismatchError, load_plm
from esmsae.published.load import load_sae

_DENSE: dict = {}


def _dense_codes(cfg, esm2_dir, tiny_sae):
    """Cached: several brute-force tests read the same codes."""
    key = (str(cfg.out), str(esm2_dir), str(tiny_sae))
    if key not in _DENSE:
        _DENSE[key] = _dense_codes_uncached(cfg, esm2_dir, tiny_sae)
    return _DENSE[key]


def _dense_codes_uncached(cfg, esm2_dir, tiny_sae):
    """Brute force: every protein through model + SAE, dense [L, F] codes."""
    plm = load_plm(ModelConfig(name=str(esm2_dir)))
    sae = load_sae(tiny_sae)
    seqs = [s for _, s in read_fasta(cfg.fasta[0])]
    out = []
    for s in seqs:
        x = plm.embed([s], [Hook(4, "resid")])[0]["L4_resid"]
        with torch.no_grad():
            out.append(sae.encode_dense(x).numpy())
    return seqs, out


def test_index_matches_brute_force(built_index, esm2_dir, tiny_sae):
    path, cfg = built_index
    con = duckdb.connect(str(path), read_only=True)
    prots = con.execute("SELECT * FROM proteins ORDER BY pidx").df()
    seqs, dense = _dense_codes(cfg, esm2_dir, tiny_sae)
    by_seq = {s: d for s, d in zip(seqs, dense)}
    codes = [by_seq[s] for s in prots["sequence"]]
    F = codes[0].shape[1]
    fires_res = sum((c > 0).sum(0) for c in codes)
    prot_max = np.stack([c.max(0) for c in codes])  # [P, F]
    feats = con.execute("SELECT * FROM features ORDER BY feature").df()
    n_res = sum(len(c) for c in codes)
    np.testing.assert_allclose(feats["freq_residue"], fires_res / n_res, atol=1e-9)
    np.testing.assert_allclose(feats["freq_protein"], (prot_max > 0).mean(0), atol=1e-9)
    np.testing.assert_allclose(feats["max_act"], prot_max.max(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["idf"], np.log(len(codes) / np.maximum((prot_max > 0).sum(0), 1)), rtol=1e-6)
    assert (feats["dead"] == (fires_res == 0)).all()
    # top examples: the 5 strongest proteins per feature, with exact tracks
    top = con.execute("SELECT * FROM top_examples ORDER BY feature, rank").df()
    for f in range(F):
        want = np.sort(prot_max[:, f][prot_max[:, f] > 0])[::-1][:5]
        got = top[top.feature == f]
        np.testing.assert_allclose(got["max_act"].to_numpy(), want, rtol=1e-4, atol=1e-5)
    for _, r in top.sample(20, random_state=0).iterrows():
        col = codes[r.pidx][:, r.feature]
        assert list(r.positions) == np.flatnonzero(col > 0).tolist()
        np.testing.assert_allclose(r["values"], col[col > 0], rtol=1e-4, atol=1e-5)
    # quantile examples are real examples of their feature, in the right activation bin
    q = con.execute("SELECT * FROM quantile_examples").df()
    assert len(q) and (q.max_act >= q.bin_lo - 1e-6).all() and (q.max_act <= q.bin_hi + 1e-6).all()
    for _, r in q.sample(10, random_state=0).iterrows():
        assert abs(prot_max[r.pidx, r.feature] - r.max_act) < 1e-4


def _brute_concept(prots, by_seq, labels, concept, f, fmax, kind, half):
    """Brute force of one (feature, concept) on one half: per threshold (tp, active, hits, F1)."""
    from esmsae.index.concept_f1 import THRESHOLDS, split_of
    from esmsae.index.splits import hash_side

    out = []
    for t in THRESHOLDS:
        tp = act = hit = n_dom = n_res = 0
        for s in prots["sequence"]:
            # train-side proteins fitted the window baselines: the index drops their labels
            if s not in labels or hash_side(s) == "train" or split_of(s) != half:
                continue
            col = by_seq[s][:, f]
            on = col > t * fmax[f]
            act += on.sum()
            spans = sorted(set(labels[s].spans.get(concept, [])))
            mask = np.zeros(len(s), bool)
            for a, b in spans:
                mask[a:b] = True
                hit += on[a:b].any()
            n_dom += len(spans)
            n_res += mask.sum()
            tp += (on & mask).sum()
        p = tp / max(act, 1)
        r = hit / max(n_dom, 1) if kind == "domain" else tp / max(n_res, 1)
        out.append((tp, act, hit, 2 * p * r / (p + r) if p + r else 0.0))
    return out


@pytest.mark.parametrize("concept,kind", [("UniProt: transmembrane", "domain"), ("UniProt: binding site", "residue")])
def test_concept_f1_matches_brute_force(built_index, esm2_dir, tiny_sae, shared, concept, kind):
    """Threshold chosen on the valid half (argmax of valid F1), counts and F1 reported on the
    test half: both equal a brute-force computation over dense codes (UniProt labels have no
    unknown residues, and M. genitalium has one UniProt record per protein)."""
    from esmsae.index.concept_f1 import THRESHOLDS

    path, cfg = built_index
    con = duckdb.connect(str(path), read_only=True)
    prots = con.execute("SELECT * FROM proteins ORDER BY pidx").df()
    seqs, dense = _dense_codes(cfg, esm2_dir, tiny_sae)
    by_seq = {s: d for s, d in zip(seqs, dense)}
    labels = {lab.sequence: lab for lab in load_all(shared) if lab.source == "UniProt"}
    fmax = con.execute("SELECT max_act FROM features ORDER BY feature").df()["max_act"].to_numpy()
    f1 = con.execute("SELECT * FROM concept_f1 WHERE concept = ?", [concept]).df()
    assert len(f1) > 0
    for _, r in f1.sort_values("f1_valid", ascending=False).head(4).iterrows():
        valid = _brute_concept(prots, by_seq, labels, concept, r.feature, fmax, kind, 0)
        test = _brute_concept(prots, by_seq, labels, concept, r.feature, fmax, kind, 1)
        t = int(np.argmax([v[3] for v in valid]))
        assert r.threshold == THRESHOLDS[t] and r.f1_valid == pytest.approx(valid[t][3], rel=1e-6)
        tp, act, hit, f = test[t]
        assert (r.tp_residues, r.active_residues) == (tp, act) and r.f1 == pytest.approx(f, rel=1e-6, abs=1e-12)
        if kind == "domain":
            assert r.hit_domains == hit
        assert 0 <= r.precision <= 1 and 0 <= r.recall <= 1


def _cmh_p(tables):
    """One-sided CMH p by hand: tables = [(a, n_group, n_firing, n_all) per length stratum]."""
    from math import erfc, sqrt

    obs = sum(t[0] for t in tables)
    exp = sum(n1 * m1 / N for _, n1, m1, N in tables if N)
    var = sum(n1 * (N - n1) * m1 * (N - m1) / (N * N * (N - 1)) for _, n1, m1, N in tables if N > 1)
    return 0.5 * erfc((obs - exp) / sqrt(var) / sqrt(2)) if var > 0 else 1.0


def test_group_usage_and_enrichment_match_cmh_by_hand(built_index, esm2_dir, tiny_sae):
    """The index's default group test is CMH over length quintiles: its p equals a hand
    computation from brute-force per-protein firing, per length stratum."""
    from esmsae.index.group_stats import length_bin, length_edges

    path, cfg = built_index
    con = duckdb.connect(str(path), read_only=True)
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    assert json.loads(meta["collect"])["unknown_group_ids"]["half"] == 1  # reported, not silently dropped
    g = con.execute("SELECT * FROM group_usage WHERE grouping = 'half'").df()
    sizes = dict(con.execute("SELECT grp, n_proteins FROM groups WHERE grouping = 'half'").fetchall())
    assert sizes == {"A": 20, "B": 40}
    seqs, dense = _dense_codes(cfg, esm2_dir, tiny_sae)
    ids = [h.split()[0] for h, _ in read_fasta(cfg.fasta[0])]
    grp = {pid: ("A" if i % 3 == 0 else "B") for i, pid in enumerate(ids)}
    edges = length_edges(np.array([len(s) for s in seqs]), cfg.length_bins)
    fires = np.array([(d > 0).any(0) for d in dense])  # [P, F]
    bins = np.array([length_bin(len(s), edges) for s in seqs])
    in_a = np.array([grp[pid] == "A" for pid in ids])
    for _, r in g.sample(15, random_state=1).iterrows():
        mine = in_a if r.grp == "A" else ~in_a
        tables = [
            (
                int((fires[:, r.feature] & mine & (bins == k)).sum()),
                int((mine & (bins == k)).sum()),
                int((fires[:, r.feature] & (bins == k)).sum()),
                int((bins == k).sum()),
            )
            for k in range(len(edges) + 1)
        ]
        assert r.n_fire == sum(t[0] for t in tables)
        assert r.p == pytest.approx(_cmh_p(tables), rel=1e-6, abs=1e-12)
    # the composition control sits beside it: "composition-driven" only where the length-only test is significant
    assert {"log_odds_composition", "q_composition", "composition_driven"} <= set(g.columns)
    drv = g[g.composition_driven]
    # ... and only where stratifying by composition took away more than half of the effect (a lost effect)
    assert ((drv.q < 0.05) & (drv.log_odds > 0) & ~(drv.log_odds_composition.fillna(0) > 0.5 * drv.log_odds)).all()
    kept = g[(g.q < 0.05) & (g.log_odds > 0) & ~g.composition_driven]
    assert (kept.log_odds_composition > 0.5 * kept.log_odds).all()
    assert g.q_composition.between(0, 1).all()

def test_bh_and_enrichment_known_answer():
    # group 0 has the feature in 9/10 proteins, group 1 in 1/10
    res = enrichment(np.array([[9], [1]]), np.array([10, 10]), test="fisher")
    assert res["p"][0, 0] == pytest.approx(fisher_exact([[9, 1], [1, 9]], alternative="greater")[1])
    assert res["log_odds"][0, 0] == pytest.approx(np.log(9.5 * 9.5 / (1.5 * 1.5)))
    assert res["log_odds"][1, 0] < 0


def test_bad_index_input(tmp_path, tiny_sae, mgen_full, esm2_dir, shared):
    bad = tmp_path / "g.tsv"
    bad.write_text("P99999\tX\n")
    with pytest.raises(IndexBuildError, match="none of its 1 protein ids"):
        ProteinTable.build(
            IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "i.duckdb"), fasta=[str(mgen_full)], groups=[str(bad)]),
            [],
            tmp_path / "pt",
        )
    broken = tmp_path / "g.json"
    broken.write_text('{"A": [["MKV*Z1", "x"]]}')
    with pytest.raises(ValueError, match="group 'A' entry 0"):
        read_grouping(broken)
    dup = tmp_path / "dup.fasta"
    dup.write_text(">a\nMKVL\n>a\nMKVA\n")
    with pytest.raises(ValueError, match="duplicate"):
        ProteinTable.build(
            IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "i.duckdb"), fasta=[str(dup)]), [], tmp_path / "pt"
        )
    with pytest.raises(ConfigError, match="top_n"):
        IndexConfig(top_n=0)
    # an SAE whose d_in does not fit the model: clear error, nothing written
    from esmsae.lm.plm import build_esmc

    esmc = tmp_path / "esmc.pth"
    torch.save(build_esmc(128, 2, 3, seed=0).state_dict(), esmc)
    out = tmp_path / "x.duckdb"
    with pytest.raises(ModelMismatchError, match="d_in is 320"):
        build_index(
            IndexConfig(sae=str(tiny_sae), out=str(out), fasta=[str(mgen_full)], model=str(esmc)), progress=False
        )
    assert not out.exists()


def test_grouping_json_adds_proteins(tmp_path, tiny_sae, mgen_full):
    seqs = [(s, h) for h, s in read_fasta(mgen_full)][:3]
    js = tmp_path / "sampled_sequences.json"
    js.write_text(
        json.dumps(
            {"Mollicutes": [[s, h] for s, h in seqs[:2]], "Other": [["MKTAYIAKQRQISFVKSHFSRQ", "new_protein OS=X"]]}
        )
    )
    items = list(
        ProteinTable.build(
            IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "i.duckdb"), fasta=[str(mgen_full)], groups=[str(js)]),
            [],
            tmp_path / "pt",
        ).items()
    )
    assert len(items) == 61
    grp = {it.id: it.groups.get("sampled_sequences") for it in items}
    assert grp["new_protein"] == "Other" and sum(v == "Mollicutes" for v in grp.values()) == 2


def test_ranks_stream_exactly_their_batches_of_the_plan(tmp_path, monkeypatch):
    """Every rank reads only its batches (b mod W) from the length-sorted table, a row group at a
    time; together the ranks cover each protein once, in the one-process plan's batches."""
    import pyarrow.parquet as pq

    from esmsae.index import protein_table
    from esmsae.index.build import _batches, batch_plan

    rng = np.random.default_rng(0)
    fa = tmp_path / "p.fasta"
    fa.write_text(
        "".join(
            f">p{i}\n{''.join(rng.choice(list('ACDEFGHIKLMNPQRSTVWY'), int(rng.integers(20, 80))))}\n"
            for i in range(5000)
        )
    )
    monkeypatch.setattr(
        protein_table, "ROW_GROUP", 2048
    )  # DuckDB's smallest: 3 row groups, batches across their borders
    t = ProteinTable.build(IndexConfig(sae="x", out="i.duckdb", fasta=[str(fa)]), [], tmp_path / "pt")
    assert pq.ParquetFile(t.parquet).metadata.num_row_groups == 3 and t.n == 5000
    length_S = t.lengths()
    assert (np.diff(length_S) >= 0).all()
    batch_S = batch_plan(length_S, 700, 1022)
    by_hand = [[]]  # the greedy rule: a protein joins while (members + 1) x its padded length <= budget
    for L in length_S:
        if by_hand[-1] and (len(by_hand[-1]) + 1) * (L + 2) > 700:
            by_hand.append([])
        by_hand[-1].append(int(L))
    assert [len(b) for b in by_hand] == np.bincount(batch_S).tolist()
    one = [[it.pidx for it in b] for b in _batches(t, np.ones(t.n, bool), batch_S)]
    assert [len(b) for b in one] == np.bincount(batch_S).tolist()
    assert sorted(p for b in one for p in b) == list(range(5000))
    for W in (2, 3):
        got = {}
        for r in range(W):
            got.update({i * W + r: [it.pidx for it in b] for i, b in enumerate(_batches(t, batch_S % W == r, batch_S))})
        assert [got[b] for b in range(len(one))] == one


def test_table_written_through_length_buckets_equals_one_sort(tmp_path, monkeypatch):
    """The final write sorts a length bucket at a time (so 10 M proteins fit DuckDB's buffer); the
    file must be the one a single sort of every protein gives: same rows, same order, same groups."""
    import pyarrow.parquet as pq

    from esmsae.index import protein_table

    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), int(rng.integers(10, 120)))) for _ in range(3000)]
    seqs += seqs[:200]  # 200 duplicate sequences: the first record wins
    fa = tmp_path / "p.fasta"
    fa.write_text(
        "".join(f">p{i} protein {i} OS=Org{i % 7} OX={9606 if i % 2 else 562}\n{s}\n" for i, s in enumerate(seqs))
    )
    tsv = tmp_path / "clade.tsv"
    tsv.write_text("".join(f"p{i}\tc{i % 5}\n" for i in range(0, len(seqs), 3)))
    cfg = IndexConfig(sae="x", out="i.duckdb", fasta=[str(fa)], groups=[str(tsv)])
    one = ProteinTable.build(cfg, [], tmp_path / "one")
    monkeypatch.setattr(protein_table, "BUCKET_BYTES", 4000)  # about 20 proteins a bucket: 150 buckets
    many = ProteinTable.build(cfg, [], tmp_path / "many")
    a, b = pq.read_table(one.parquet).to_pandas(), pq.read_table(many.parquet).to_pandas()
    assert len(a) == 3000 and many.groupings == one.groupings == ["clade", "kingdom", "organism"]
    pd.testing.assert_frame_equal(a, b)
    assert list(zip(a["length"], a["pidx"])) == sorted(zip(a["length"], a["pidx"]))
    it = {i.id: i for i in many.items()}
    assert (
        it["p3"].groups == {"clade": "c3", "kingdom": "Eukaryota", "organism": "Org3"}
        and "clade" not in it["p4"].groups
    )
    assert "p3001" not in it  # a duplicate of p1's sequence

def test_concept_loaders_on_shared(shared):
    tm = load_tmbed(shared / "tmbed")
    assert len(tm) > 6000 and {t.kingdom for t in tm} >= {"Eukaryota", "Bacteria", "Archaea"}
    helix = [t for t in tm if "TMbed: TM helix" in t.spans]
    assert helix and all(b - a >= 5 for t in helix[:50] for a, b in t.spans["TMbed: TM helix"])
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]


def test_user_labels_survive_a_rebuild(built_index):
    from esmsae.index.reader import get_labels, set_label
    from esmsae.index.tables import labels_path

    path, cfg = built_index
    set_label(path, 3, "kept across rebuilds")
    before = path.stat().st_mtime_ns
    build_index(cfg, progress=False)  # written as .tmp, then renamed over the old index
    assert path.stat().st_mtime_ns != before and labels_path(path).exists()
    assert get_labels(path)[3] == "kept across rebuilds"
    assert not path.with_name(path.name + ".tmp").exists()


def test_reference_stats_written_into_the_checkpoint(built_index, tiny_sae, tmp_path):
    """Reference max / IDF over the index's proteins go into the checkpoint (a copy here) and
    come back on load; encode_scaled then divides by them; an index of another SAE is refused."""
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    path, _ = built_index
    ck = tmp_path / "sae"
    shutil.copytree(tiny_sae, ck)
    r = subprocess.run(
        [sys.executable, "-m", "esmsae", "reference-stats", str(ck), "--index", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    con = duckdb.connect(str(path), read_only=True)
    feats = con.execute("SELECT max_act, idf FROM features ORDER BY feature").df()
    sae = load_sae(ck)
    meta = sae.meta
    mx, idf = sae.display_stats()
    np.testing.assert_allclose(mx.numpy(), feats["max_act"], rtol=1e-6)
    np.testing.assert_allclose(idf.numpy(), feats["idf"], rtol=1e-6)
    assert meta["display_stats"]["n_proteins"] == json.loads(
        dict(con.execute("SELECT key, value FROM meta").fetchall())["n_proteins"]
    )
    x = torch.randn(6, sae.d_in)
    dense = sae.encode_dense(x)
    scaled = sae.encode_scaled(x, "max")
    live = mx > 0
    torch.testing.assert_close(scaled[:, live], dense[:, live] / mx[live], rtol=1e-5, atol=1e-6)
    # writing again from the same index is fine; an index of another SAE is refused
    r2 = subprocess.run(
        [sys.executable, "-m", "esmsae", "reference-stats", str(ck), "--index", str(path)],
        capture_output=True,
        text=True,
    )
    assert r2.returncode == 0, r2.stderr
    other = tmp_path / "other"
    shutil.copytree(tiny_sae, other)
    st = load_file(str(other / "sae.safetensors"))
    st["b_dec"] = st["b_dec"] + 1
    save_file(st, str(other / "sae.safetensors"))
    r3 = subprocess.run(
        [sys.executable, "-m", "esmsae", "reference-stats", str(other), "--index", str(path)],
        capture_output=True,
        text=True,
    )
    assert r3.returncode == 2 and "another SAE" in r3.stderr


def test_bf16_encode_index_is_the_bf16_brute_force(built_index, esm2_dir, tiny_sae, tmp_path, keep_dtype):
    """``--encode-dtype bfloat16``: the index's per-feature maxima and firing counts are those of
    the SAE encoding in bf16 protein by protein (to one bf16 step), not the fp32 ones, and the
    choice is recorded in meta."""
    _, cfg32 = built_index
    cfg = IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "bf16.duckdb"), fasta=cfg32.fasta, top_n=5, umap=False,
                      batch_tokens=2048, encode_dtype="bfloat16")
    path = build_index(cfg, progress=False)
    con = duckdb.connect(str(path), read_only=True)
    feats = con.execute("SELECT max_act, n_residues FROM features ORDER BY feature").df()
    assert (
        json.loads(dict(con.execute("SELECT key, value FROM meta").fetchall())["index_config"])["encode_dtype"]
        == "bfloat16"
    )
    plm = load_plm(ModelConfig(name=str(esm2_dir)))
    sae = load_sae(tiny_sae)
    seqs = [s for _, s in read_fasta(cfg.fasta[0])]
    with torch.no_grad():
        acts = [plm.embed([s], [Hook(4, "resid")])[0]["L4_resid"] for s in seqs]
        low = np.concatenate([sae.set_encode_dtype("bfloat16").encode_dense(a).numpy() for a in acts])
        exact = np.concatenate([sae.set_encode_dtype(None).encode_dense(a).numpy() for a in acts])
    np.testing.assert_allclose(feats["max_act"], low.max(0), rtol=1e-2, atol=1e-6)
    # top-k boundary swaps: at most a few residues per feature change hands
    assert np.abs(feats["n_residues"].to_numpy() - (low > 0).sum(0)).max() <= 3
    assert not np.allclose(feats["max_act"], exact.max(0), rtol=1e-5, atol=0)  # the bf16 path ran
    from esmsae.index.reader import FeatureIndex

    assert FeatureIndex(path).encode_dtype() == "bfloat16" and FeatureIndex(built_index[0]).encode_dtype() == "float32"


def test_batched_example_offers_equal_one_at_a_time(tmp_path):
    """TopN / Reservoir.offer_batch keep what offer_one keeps pair by pair, whatever the order and
    the batching: many value ties (the protein index decides), repeated features within a batch,
    and every kept track read back from the spill is that pair's own track."""
    from esmsae.index.streaming import Reservoir, TopN, TrackSpill

    rng = np.random.default_rng(0)
    F, N, R, n_prot = 7, 4, 5, 60
    pairs = [(f, p) for p in range(n_prot) for f in rng.choice(F, size=rng.integers(1, F + 1), replace=False)]
    f_Q = np.array([f for f, _ in pairs])
    p_Q = np.array([p for _, p in pairs])
    v_Q = rng.choice([0.5, 1.0, 1.5, 2.0], size=len(pairs)).astype(np.float32)  # ties everywhere
    track = {
        q: (np.arange(q % 5 + 1, dtype=np.int32) + q, np.full(q % 5 + 1, v_Q[q], np.float32)) for q in range(len(pairs))
    }

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one_spill, batch_spill = TrackSpill(tmp_path / "a"), TrackSpill(tmp_path / "b")
    top1, res1 = TopN(F, N), Reservoir(F, R, seed=3)
    for q in rng.permutation(len(pairs)):
        put = lambda q=q: one_spill.put(*track[q])  # noqa: E731
        top1.offer_one(int(f_Q[q]), float(v_Q[q]), int(p_Q[q]), put)
        res1.offer_one(int(f_Q[q]), res1.keys(f_Q[q:q + 1], int(p_Q[q]))[0], int(p_Q[q]), float(v_Q[q]), put)
    top2, res2 = TopN(F, N), Reservoir(F, R, seed=3)
    lens = np.array([len(track[q][0]) for q in range(len(pairs))])
    pos_all = np.concatenate([track[q][0] for q in range(len(pairs))])
    val_all = np.concatenate([track[q][1] for q in range(len(pairs))])
    start_Q = np.cumsum(lens) - lens
    order = rng.permutation(len(pairs))
    for chunk in np.array_split(order, 6):
        off = np.full(len(pairs), -1, np.int64)

        def tracks(q, chunk=chunk, off=off):
            new = np.unique(q[off[chunk[q]] < 0])
            off[chunk[new]] = batch_spill.put_many(
                start_Q[chunk[new]], start_Q[chunk[new]] + lens[chunk[new]], pos_all, val_all
            )
            return off[chunk[q]], lens[chunk[q]]
        top2.offer_batch(f_Q[chunk], v_Q[chunk], p_Q[chunk], tracks)
        res2.offer_batch(f_Q[chunk], v_Q[chunk], p_Q[chunk], tracks)
    one_spill.finish()
    batch_spill.finish()
    for f in range(F):
        want = [(top1.val_FN[f, s], it[0]) for s, it in top1.ranked(f)]
        got = [(top2.val_FN[f, s], it[0]) for s, it in top2.ranked(f)]
        assert want == got and len(got) == N
        assert sorted(res1.key_FR[f]) == sorted(res2.key_FR[f])
        assert sorted((it[0], it[1]) for it in res1.items[f].values()) == sorted(
            (it[0], it[1]) for it in res2.items[f].values()
        )
        for top, res, spill in ((top2, res2, batch_spill), (top1, res1, one_spill)):
            for pidx, o, n in top.items[f].values():
                q = pairs.index((f, pidx))
                pos, vals = spill.get(o, n)
                assert pos.tolist() == track[q][0].tolist() and vals.tolist() == track[q][1].tolist()
            for pidx, v, o, n in res.items[f].values():
                q = pairs.index((f, pidx))
                assert spill.get(o, n)[0].tolist() == track[q][0].tolist() and v == float(v_Q[q])


def test_slim_keeps_the_labels_of_the_examples_it_keeps(built_index, tmp_path):
    """``slim_index`` drops examples; ``label_spans`` keeps exactly the rows of proteins still shown."""
    import shutil
    from pathlib import Path

    from esmsae.index.slim import slim_index

    path = tmp_path / "slim.duckdb"
    shutil.copy(built_index[0], path)
    con = duckdb.connect(str(path))
    full = con.execute("SELECT pidx, source, concept FROM label_spans").fetchall()
    assert full  # UniProt labels of M. genitalium example proteins
    # every protein of this small index stays an example, so add the labels of one that is none
    gone = (10**6, "UniProt", "UniProt: transmembrane")
    con.execute("INSERT INTO label_spans VALUES (?, ?, ?, [0], [5])", list(gone))
    con.close()
    slim_index(Path(path), 1, 1)
    con = duckdb.connect(str(path), read_only=True)
    kept = set(con.execute("SELECT pidx, source, concept FROM label_spans").fetchall())
    examples = {r[0] for r in con.execute("SELECT pidx FROM top_examples UNION SELECT pidx FROM quantile_examples"
                                          " UNION SELECT pidx FROM structure_tracks").fetchall()}
    con.close()
    assert kept == {r for r in full if r[0] in examples} and gone not in kept
