"""Known answers of issue 31's controls: the learned one-hot window baselines (and their reach), the
train / valid / test sides, the causal lag, the bootstrap interval, the K+R and PROSITE rules, the
label sources that keep unannotated proteins out of a concept's negatives, and converged sparse probes."""
import numpy as np
import pytest

from esmsae.index.concept_f1 import (
    CAUSAL_LAGS,
    THRESHOLDS,
    concept_counts,
    concept_layout,
    eligible,
    point_matches,
    report,
    select,
    split_of,
    window_f1,
)
from esmsae.index.labels import Labeled, load_tmbed, load_uniprot
from esmsae.index.local_rules import RULE_NAMES, fire_matrix
from esmsae.index.proteins import Item
from esmsae.index.splits import TMBED_PARTITION_SIDE, assign_sides, hash_side
from esmsae.index.window_model import WINDOW_NAMES, fit_window_models
from tests.test_science import FakeCSR

AA = "ACDEFGHIKLMNPQRSTVWY"
NO_W = AA.replace("W", "")


def _proteins(rng, n, length=120):
    """Random proteins without W, with a W planted at random gaps of 8-30 residues; the concept is the residue 3
    before each W: a model that reads to the right sees it, a model of the left window cannot."""
    out = []
    for i in range(n):
        s = list(rng.choice(list(NO_W), length))
        ws = np.cumsum(rng.integers(8, 31, 12))  # random gaps: the previous W says nothing of the next
        ws = ws[ws < length]
        for p in ws:
            s[p] = "W"
        s = "".join(s)
        spans = [(int(p) - 3, int(p) - 2) for p in ws if p >= 3]
        out.append(Labeled(f"p{i}", s, "FLIP SS", {"FLIP SS: helix": spans}))
    return out


def test_window_models_learn_their_reach_and_only_their_reach():
    rng = np.random.default_rng(0)
    train, test = _proteins(rng, 60), _proteins(rng, 30)
    wm = fit_window_models(train, {"FLIP SS: helix": "FLIP SS"})
    m = wm.by_source["FLIP SS"]
    assert m.n_train_proteins.tolist() == [60] and all(np.isfinite(v) for v in m.loss.values())
    y = np.concatenate([np.isin(np.arange(len(p.sequence)), [a for a, _ in p.spans["FLIP SS: helix"]]) for p in test])
    P = np.concatenate([m.probs(p.sequence)[:, :, 0] for p in test])  # [N, windows]
    f1 = {}
    for k, name in enumerate(WINDOW_NAMES):
        pred = P[:, k] > 0.5
        tp = (pred & y).sum()
        f1[name] = 2 * tp / max(pred.sum() + y.sum(), 1)
    assert f1["+-10 window"] > 0.95 and f1["+-20 window"] > 0.95  # "a W three residues on" is in reach
    assert f1["left 20 window"] < 0.2  # the left window never sees the W at t + 3


def test_sides_follow_tmbed_partitions_and_the_sequence():
    seqs = ["".join(np.random.default_rng(i).choice(list(AA), 50)) for i in range(2000)]
    sides = [hash_side(s) for s in seqs]
    share = sides.count("train") / len(sides)
    assert 0.16 < share < 0.24  # TRAIN_FRACTION 0.2
    # the rest keep the valid / test halves of split_of
    assert all(sd == ("valid", "test")[split_of(s)] for s, sd in zip(seqs, sides) if sd != "train")
    # a TMbed partition decides its sequence's side, for the sequence's other records too
    s = seqs[0]
    recs = [Labeled("a", s, "TMbed", partition=4), Labeled("a", s, "TMbed topology", partition=4),
            Labeled("b", s, "FLIP SS"), Labeled("c", seqs[1], "TMbed", partition=1)]
    assign_sides(recs)
    assert [r.split for r in recs] == ["test", "test", "test", "train"]
    assert TMBED_PARTITION_SIDE == {0: "train", 1: "train", 2: "train", 3: "valid", 4: "test"}


def _lag_counts(lag_true: int, lags):
    """Domains of 10 residues; one feature fires on the residues lag_true later than each domain residue."""
    rng = np.random.default_rng(1)
    items, rows = [], []
    for i in range(120):
        s = "".join(rng.choice(list(AA), 100))
        a = int(rng.integers(5, 60))
        lab = Labeled(f"p{i}", s, "TMbed", {"TMbed: TM helix": [(a, a + 10)]}, split=("valid", "test")[i % 2])
        items.append(Item(f"p{i}", s, labels=[lab]))
        pos = np.arange(a, a + 10) + lag_true
        rows.append((i, pos, np.zeros(10, int), np.ones(10)))
    names = ["TMbed: TM helix"]
    lay = concept_layout(names, np.array([0]), lags=lags)
    halves = concept_counts(FakeCSR(rows), {i: it for i, it in enumerate(items)}, np.ones(1, np.float32),
                            {names[0]: 0}, {"TMbed": 0}, lay)
    return halves, lay


def test_causal_lag_is_chosen_on_valid_and_reported():
    halves, lay = _lag_counts(8, CAUSAL_LAGS)
    ok = eligible(halves, lay)
    sel = select(halves[0], lay, ok)
    df, per_c, best = report(halves, lay, sel, ok, np.zeros(1))
    row = df[df.feature == 0].iloc[0]
    assert row.lag == 8 and row.f1 == pytest.approx(1.0) and row.f1_residue == pytest.approx(1.0)
    assert per_c.best_feature_lag[0] == 8 and best["lag"][0] == 8
    # without lags (a masked LM) the same feature is read at t: it hits only the last 2 residues of each domain
    h0, lay0 = _lag_counts(8, (0,))
    sel0 = select(h0[0], lay0, eligible(h0, lay0))
    df0, _, _ = report(h0, lay0, sel0, eligible(h0, lay0), np.zeros(1))
    r0 = df0[df0.feature == 0].iloc[0]
    assert r0.lag == 0 and r0.f1_residue == pytest.approx(2 * 0.2 * 0.2 / 0.4)  # precision 2/10, recall 2/10


def test_window_baseline_counts_and_eligibility():
    """A concept without a window model is not eligible; with one, its F1 table has (windows x thresholds)."""
    halves, lay = _lag_counts(0, (0,))
    assert eligible(halves, lay).all()
    lay_no = concept_layout(lay.names, lay.source, has_window=[False])
    assert not eligible(halves, lay_no).any()
    assert window_f1(halves[0], lay, 0).shape == (len(WINDOW_NAMES), 11)


def test_bootstrap_interval_known_answers():
    from esmsae.index.bootstrap import intervals

    rng = np.random.default_rng(0)
    P = 60
    n_res = rng.integers(5, 15, P)
    n_dom = np.ones(P, int)
    # baseline: half of each protein's residues found, no false positives; feature A identical, B finds all
    base = np.stack([n_res // 2, n_res // 2, np.ones(P, int)], 1)
    same = base.copy()
    better = np.stack([n_res, n_res, np.ones(P, int)], 1)
    counts = np.stack([base, same, better], 1)  # [P, K=3, 3]: 1 baseline, 2 features
    lo, hi = intervals(counts, n_res, n_dom, 1, is_domain=False)
    assert lo[0, 0] <= 0 <= hi[0, 0]  # identical to the baseline: the interval holds 0
    assert lo[1, 0] > 0.2  # F1 1.0 against ~0.66 on every resample


def test_point_matches_need_every_baseline_including_the_windows():
    halves, lay = _lag_counts(0, (0,))
    ok = eligible(halves, lay)
    sel = select(halves[0], lay, ok)
    assert point_matches(halves, lay, sel, ok, np.zeros(1))[0, 0]
    # a window model as good as the feature on valid and test takes the match away
    for h in halves:
        h.win_tp[0, 0, :] = h.n_res[0]
        h.win_act[0, 0, :] = h.n_res[0]
        h.win_dom[0, 0, :] = h.n_dom[0]
    sel = select(halves[0], lay, ok)
    assert not point_matches(halves, lay, sel, ok, np.zeros(1))[0, 0]
    _, per_c, _ = report(halves, lay, sel, ok, np.zeros(1))
    assert per_c.n_features_beat_baselines[0] == 0 and per_c.window10_f1[0] == pytest.approx(1.0)


def test_charge_and_prosite_rules_fire_where_they_should():
    s = "MKKLGAAAAGKSTLLRRNGSAVDDEEDDEEDDEE"
    f = fire_matrix(s)
    ploop = f[:, RULE_NAMES.index("motif P-loop [AG]x4GK[ST] (PS00017)")]
    assert np.flatnonzero(ploop).tolist() == list(range(4, 12))  # GAAAAGKS
    kr = f[:, RULE_NAMES.index("K+R in >= 25% of a +-3 window")]
    assert kr[0] and kr[15] and not kr[28]  # K/R-rich start and RR; the acidic tail is not


def test_topology_and_uniprot_structure_are_their_own_sources(tmp_path):
    """Topology is labelled in membrane proteins only, and UniProt helices in proteins with any structure
    annotation only: a globular protein (all '1' in TMbed) or an unannotated entry is no negative."""
    (tmp_path / "cv_03_a.fasta").write_text(
        ">A|EUKARYA|NO_SP|1\nMKTLLVAGAVLLAAGCSSKK\n1111HHHHHHHHHH222222\n"
        ">B|EUKARYA|NO_SP|0\nMKTAYIAKQRQISFVKSHFS\n11111111111111111111\n")
    recs = load_tmbed(tmp_path)
    assert [(r.id, r.source, r.partition) for r in recs] == [("A", "TMbed", 3), ("A", "TMbed topology", 3),
                                                            ("B", "TMbed", 3)]
    assert set(recs[1].spans) == {"TMbed topology: inside", "TMbed topology: outside"}
    assert "TMbed: inside" not in recs[0].spans and not recs[2].spans
    prot = tmp_path / "p.tsv"
    feat = tmp_path / "f.tsv"
    prot.write_text("accession\tsequence\torganism\ttaxid\nP1\tMKTAYIAKQRQISFVK\tx\t1\nP2\tMKTAYIAKQRQISFVW\tx\t1\n")
    feat.write_text("accession\tfeature_type\tstart\tend\tdescription\n"
                    "P1\tHELIX\t2\t8\t\nP1\tDOMAIN\t1\t10\tKinase\nP2\tDOMAIN\t3\t9\tKinase\n")
    got = {(r.id, r.source): set(r.spans) for r in load_uniprot(prot, feat)}
    assert got[("P1", "UniProt structure")] == {"UniProt structure: helix"}
    assert ("P2", "UniProt structure") not in got and "UniProt: helix" not in got[("P1", "UniProt")]


def test_sparse_probe_picks_the_informative_columns_and_converges():
    from esmsae.analysis.probe import fit_probe, top_k_columns

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 50)).astype(np.float32)
    y = (X[:, 7] - X[:, 31] + 0.3 * rng.normal(size=3000) > 0).astype(int)
    assert set(top_k_columns(X, y, 2).tolist()) == {7, 31}
    fit: dict = {}
    proba = fit_probe(X[:, [7, 31]], y, 2, fit=fit)
    assert fit["fit_grad_max"] < 1e-3 and (proba(X[:, [7, 31]]).argmax(1) == y).mean() > 0.9


def test_thresholds_unchanged():
    assert THRESHOLDS == (0.0, 0.15, 0.5, 0.6, 0.8)


def test_protein_level_concepts_beat_composition_only_when_the_feature_knows():
    """A feature that tracks all-alpha domains matches that class; features of noise match nothing, because
    the composition model (fitted on separate proteins) and fire-everywhere stand in the way."""
    from esmsae.analysis.protein_concepts import label_sides, protein_concept_table
    from esmsae.core.paths import shared_data

    sides = label_sides(shared_data(), "scop", n_train=600, n_valid=300, n_test=300)
    assert {k: len(v) for k, v in sides.items()} == {"train": 600, "valid": 300, "test": 300}
    assert not {s for s, _ in sides["test"]} & {s for s, _ in sides["train"] + sides["valid"]}
    codes = _codes_knowing(sides, "a", 40, 7, seed=0)
    df = protein_concept_table(sides, codes, windows=()).set_index("concept")  # windows: tested below
    a = df.loc["SCOP class a (all-alpha)"]
    assert a.best_feature == 7 and a.match and a.f1 > 0.9 and a.ci_lo > 0
    assert not df.drop(index="SCOP class a (all-alpha)").match.any()


def test_window_filter_finds_a_planted_motif_and_stops_a_feature_that_knows_no_more(monkeypatch):
    """Random proteins, members carry a motif at a random place: the max-pooled +-10 window filter (fitted on
    train) finds them on test, and a feature that fires on the members but misses a tenth of them does not
    match; the fit is reported."""
    from esmsae.analysis.protein_concepts import protein_concept_table

    rng = np.random.default_rng(3)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))

    def side(n):
        rows = []
        for i in range(n):
            s = "".join(rng.choice(aa, rng.integers(80, 200)))
            member = i % 4 == 0
            if member:
                at = int(rng.integers(0, len(s) - 8))
                s = s[:at] + "HRDLKPEN" + s[at + 8:]
            rows.append((s, "kin" if member else "other"))
        return rows

    sides = {"train": side(400), "valid": side(200), "test": side(200)}
    codes = {}
    for s in ("valid", "test"):
        y = np.array([c == "kin" for _, c in sides[s]])
        x = rng.random((len(y), 6)).astype(np.float32) * 0.5
        x[:, 2] += y & (rng.random(len(y)) > 0.1)  # knows the members, misses a tenth
        codes[s] = x
    import esmsae.analysis.protein_concepts as pc

    monkeypatch.setattr(pc, "concept_names", lambda sides, label_set="scop": {"kin": "planted motif"})
    r = protein_concept_table(sides, codes, "name", windows=("+-10 window",), window_l2=(1e-3,)).iloc[0]
    assert r.window10_f1 > 0.95 and r.window10_f1_valid > 0.95 and r.window10_fit_loss < 0.3
    assert r.best_feature == 2 and 0.85 < r.f1 < r.window10_f1 and not r.match
    assert r.window20_f1 is None  # not fitted


def test_folds_are_tested_on_held_out_superfamilies_where_every_side_has_members():
    """TAPE folds: test is the benchmark's test file (no chain shared with train or valid); only folds with
    >= 20 members on every side become concepts; a feature tracking one fold matches it and nothing else."""
    from esmsae.analysis.protein_concepts import MIN_MEMBERS, concept_names, label_sides, protein_concept_table
    from esmsae.core.paths import shared_data

    sides = label_sides(shared_data(), "fold", n_train=3000, n_valid=1500)
    assert not {s for s, _ in sides["test"]} & {s for s, _ in sides["train"] + sides["valid"]}
    names = concept_names(sides, "fold")
    assert names and all(n.startswith("TAPE fold ") for n in names.values())
    for c in names:
        assert all(sum(lab == c for _, lab in v) >= MIN_MEMBERS for v in sides.values())
    target = next(iter(names))
    codes = _codes_knowing(sides, target, 30, 3, seed=1)
    df = protein_concept_table(sides, codes, "fold", windows=()).set_index("concept")
    assert set(df.labels) == {"fold"} and len(df) == len(names)
    hit = df.loc[names[target]]
    assert hit.best_feature == 3 and hit.match and hit.f1 > 0.9
    assert not df.drop(index=names[target]).match.any()


def test_named_folds_hold_the_structure_they_are_named_after():
    """Each fold name rests on a chain of the shared structures that is one of the fold's domains (>= 85% of the
    domain's 5-mers in the chain), and on no domain of another fold at that level."""
    import csv

    from esmsae.analysis.protein_concepts import FOLD_NAMES, LABEL_SETS
    from esmsae.core.paths import shared_data

    shared = shared_data()
    rows = [r for split in ("train", "valid", "test")
            for r in csv.DictReader(open(shared / LABEL_SETS["fold"][0].format(split)))]
    chains = list(csv.DictReader(open(shared / "structures" / "links" / "structure_chains.tsv"), delimiter="\t"))

    def kmers(s):
        return {s[i:i + 5] for i in range(len(s) - 4)}

    for fold, (name, pdb) in FOLD_NAMES.items():
        chain = kmers(next(c["atom_seq"] for c in chains if c["file"].split("/")[-1].startswith(pdb)))
        cover = {}
        for r in rows:
            k = kmers(r["seq"])
            if k:
                f = len(k & chain) / len(k)
                cover[r["label"]] = max(cover.get(r["label"], 0.0), f)
        assert cover[fold] >= 0.85, (fold, name, pdb, cover[fold])
        assert max(v for lab, v in cover.items() if lab != fold) < 0.85, (fold, pdb)


def test_name_families_split_by_organism_and_motifs_find_their_family(monkeypatch):
    """UniProt-name families: whole organisms per side (relatives together), no sequence on two sides, every
    member of a side's organisms kept; the kinase active-site motif finds kinases far above their share."""
    from esmsae.analysis.name_families import ORGANISM_SIDE, family_of, motif_predictions
    from esmsae.analysis.protein_concepts import concept_names, label_sides
    from esmsae.core.paths import shared_data

    assert family_of("Serine/threonine-protein kinase PRKX") == "protein kinase"
    assert family_of("Alanine--tRNA ligase") == "aminoacyl-tRNA ligase"
    assert family_of("50S ribosomal protein L2") == "ribosomal protein"
    assert family_of("Uncharacterized protein") == "other"
    assert family_of("Sensor histidine protein kinase") == "two-component histidine kinase"  # not a Hanks kinase
    assert family_of("Rab GTPase-activating protein") == "other" and family_of("GTPase Era") == "GTPase"
    assert family_of("Serine/threonine-protein phosphatase 2A activator") == "other"
    # E. coli and the two Salmonella proteomes on one side
    assert ORGANISM_SIDE["UP000000625"] == ORGANISM_SIDE["UP000001014"] == ORGANISM_SIDE["UP000008962"]
    sides = label_sides(shared_data(), "name", n_train=300, n_valid=300, n_test=300)
    seqs = {k: {s for s, _ in v} for k, v in sides.items()}
    assert not seqs["train"] & seqs["valid"] and not seqs["train"] & seqs["test"] and not seqs["valid"] & seqs["test"]
    assert all(sum(c == "other" for _, c in v) == 300 for v in sides.values())
    names = concept_names(sides, "name")
    assert "UniProt name: protein kinase" in names.values()
    test = sides["test"]
    y = np.array([c == "protein kinase" for _, c in test])
    m = motif_predictions([s for s, _ in test], "protein kinase")
    assert y.sum() >= 20 and (m & y).sum() / m.sum() > 0.8 and (m & y).sum() / y.sum() > 0.5
    # the table: a feature that knows kinases beats the motif and matches; the motif is a baseline only where
    # the family has one
    from esmsae.analysis.protein_concepts import protein_concept_table

    codes = _codes_knowing(sides, "protein kinase", 20, 5, seed=2)
    # the table on three families (each family's learned baselines are six logistic fits)
    import esmsae.analysis.protein_concepts as pc

    three = {k: v for k, v in names.items() if k in ("protein kinase", "ribosomal protein", "GTPase")}
    monkeypatch.setattr(pc, "concept_names", lambda sides, label_set="scop": three)
    df = protein_concept_table(sides, codes, "name", windows=()).set_index("concept")
    kin = df.loc["UniProt name: protein kinase"]
    assert kin.best_feature == 5 and kin.match and kin.f1 >= kin.motif_f1 + 0.05
    assert not df.drop(index="UniProt name: protein kinase").match.any()
    assert np.isnan(float(df.loc["UniProt name: ribosomal protein"].motif_f1))  # no classic motif
    assert float(df.loc["UniProt name: GTPase"].motif_f1) > 0  # the P-loop


def _codes_knowing(sides: dict, label: str, width: int, column: int, seed: int) -> dict:
    """Per side, random pooled codes [P, width] where ``column`` is 1 higher on the proteins labelled ``label``."""
    rng = np.random.default_rng(seed)
    codes = {}
    for s in ("valid", "test"):
        lab = np.array([c for _, c in sides[s]])
        x = rng.random((len(lab), width)).astype(np.float32)
        x[:, column] += (lab == label) * 1.0
        codes[s] = x
    return codes


def test_hand_written_window_gradients_equal_autograd(monkeypatch):
    """The per-residue window model's sparse X^T (p - y) gradient and the protein-level filter's
    gradient through the max (to the maximising residue only) are autograd's numbers."""
    import torch

    import esmsae.analysis.window_max as wm
    import esmsae.index.window_model as wmod

    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    seqs = ["".join(rng.choice(aa, rng.integers(10, 40))) for _ in range(20)]
    idx, seg = wm._index(seqs, 3)
    idx_t, seg_t = torch.from_numpy(idx), torch.from_numpy(seg)
    # protein level: one Adam step from the same start equals one step on autograd's gradient
    y_PC = (rng.random((20, 3)) < 0.4)
    monkeypatch.setattr(wm, "STEPS", 1)
    got = wm.fit_window_max(seqs, y_PC, 3, l2=1e-3, seed=5)
    g = torch.Generator().manual_seed(5)
    W = (0.01 * torch.randn(7 * 22, 3, generator=g)).requires_grad_()
    y = torch.from_numpy(y_PC.astype(np.float32))
    prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
    b = torch.log(prior / (1 - prior)).requires_grad_()
    opt = torch.optim.Adam([W, b], lr=wm.LR)
    s = wm._protein_max(W, idx_t, seg_t, 20) + b
    (torch.nn.functional.binary_cross_entropy_with_logits(s, y) + 1e-3 * W.pow(2).sum()).backward()
    opt.step()
    np.testing.assert_allclose(got.weight_OC, W.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(got.bias_C, b.detach().numpy(), atol=1e-6)
    # residue level: the L-BFGS fit reaches the same optimum as autograd's on the same design
    y_NC = (rng.random((len(idx), 2)) < 0.3).astype(np.float32)
    W_hand, b_hand, loss_hand = wmod._fit_one(idx, y_NC, 7 * 22)
    W2 = torch.zeros(7 * 22, 2, requires_grad=True)
    p2 = torch.from_numpy(y_NC).mean(0)
    b2 = torch.log(p2 / (1 - p2)).clone().requires_grad_()
    opt2 = torch.optim.LBFGS([W2, b2], lr=1, max_iter=150, history_size=20, tolerance_grad=1e-6,
                             tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt2.zero_grad()
        z = torch.nn.functional.embedding_bag(idx_t, W2, None, mode="sum") + b2
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(y_NC))
        loss = bce + wmod.L2 * (W2 * W2).sum()
        loss.backward()
        return loss

    opt2.step(closure)
    # a convex loss: both reach its minimum (their L-BFGS paths part in the last float bits, so the weights agree
    # to the tolerance of convergence, not to rounding)
    assert abs(loss_hand - float(closure())) < 1e-6
    np.testing.assert_allclose(W_hand, W2.detach().numpy(), atol=2e-3)
