"""Local-sequence baselines of concepts (esmsae.index.local_rules): known answers, and the rule that a
feature matches a concept only when it beats every baseline on the valid and on the test half."""
import numpy as np
import pytest
from test_science import _counts

from esmsae.index.concept_f1 import AMINO_ACIDS, eligible, report, rule_f1, select, split_of
from esmsae.index.labels import Labeled
from esmsae.index.local_rules import KYTE_DOOLITTLE, RULE_NAMES, fire_matrix
from esmsae.index.proteins import Item

HYDROPHILIC = "DEKNQRS"


def test_hydropathy_window_equals_hand_computation():
    """The Kyte-Doolittle window mean at one position, by hand, and the rule that thresholds it."""
    s = "DDDDDDDDDDLLLLIIIIVVVVLLLLIIIIVVVDDDDDDDDD"
    fire = fire_matrix(s)
    j = RULE_NAMES.index("Kyte-Doolittle mean over 19 residues >= 1.6")
    kd = np.array([KYTE_DOOLITTLE[a] for a in s])
    want = np.array([kd[max(0, i - 9): i + 10].mean() >= 1.6 for i in range(len(s))])
    assert (fire[:, j] == want).all() and want[20] and not want[0]
    first = RULE_NAMES.index("first 10 residues")
    assert fire[:, first].sum() == 10 and fire[:10, first].all()
    w = RULE_NAMES.index("L in >= 50% of a +-3 window")
    assert fire[13, w] and not fire[3, w]


def _tm_like(n=120, seed=0):
    """Proteins with a hydrophobic 20-residue stretch (the concept) in a hydrophilic background."""
    rng = np.random.default_rng(seed)
    items, spans = [], []
    for i in range(n):
        s = list(rng.choice(list(HYDROPHILIC), 100))
        a = int(rng.integers(10, 70))
        s[a:a + 20] = rng.choice(list("LIVFAM"), 20)
        s = "".join(s)
        items.append(Item(f"p{i}", s, labels=[Labeled(f"p{i}", s, "TMbed", {"TMbed: TM helix": [(a, a + 20)]})]))
        spans.append((a, a + 20))
    return items, spans


def test_hydropathy_rule_beats_a_feature_that_only_fires_on_part_of_the_helix():
    """A concept a hydropathy window finds by itself: the rule scores near 1, and a feature that fires
    on the helix's middle half (F1 0.67 by residues, 1.0 by domains) does not match, while a
    feature that is exactly the concept still does not beat a perfect rule by the margin."""
    items, spans = _tm_like()
    rows_mid = [(i, np.arange(a + 5, b - 5), np.zeros(10, int), np.ones(10)) for i, (a, b) in enumerate(spans)]
    halves, lay, names = _counts(items, rows_mid, 1)
    ok = eligible(halves, lay)
    assert ok.all()
    sel = select(halves[0], lay, ok)
    df, per_c, best = report(halves, lay, sel, ok, np.zeros(1))
    rf = rule_f1(halves[1], lay, 0)
    assert rf.max() > 0.9  # some hydropathy window recovers the helices
    assert per_c.loc[0, "hydropathy_f1"] > 0.9 and "Kyte-Doolittle" in per_c.loc[0, "hydropathy_rule"]
    assert per_c.loc[0, "baseline_max_f1"] >= per_c.loc[0, "hydropathy_f1"]
    assert not best["match"][0] and not df["beats_baselines"].any()


def test_match_needs_both_halves():
    """A feature that is the concept on test proteins but noise on valid proteins beats every
    baseline on test only: it is not a match. The same feature, good on both halves, is."""
    rng = np.random.default_rng(3)
    items, rows_both, rows_test_only = [], [], []
    for i in range(120):
        s = "".join(rng.choice(list(AMINO_ACIDS), 90))
        spans = sorted({(int(a), int(a) + 6) for a in rng.integers(0, 84, 3)})
        items.append(Item(f"p{i}", s, labels=[Labeled(f"p{i}", s, "FLIP bind", {"FLIP bind: site": spans})]))
        pos = np.unique(np.concatenate([np.arange(a, b) for a, b in spans]))
        noise = np.unique(rng.integers(0, 90, len(pos)))
        rows_both.append((i, pos, np.zeros(len(pos), int), np.ones(len(pos))))
        p2 = pos if split_of(s) == 1 else noise
        rows_test_only.append((i, p2, np.zeros(len(p2), int), np.ones(len(p2))))
    for rows, want in ((rows_both, True), (rows_test_only, False)):
        halves, lay, _ = _counts(items, rows, 1)
        ok = eligible(halves, lay)
        sel = select(halves[0], lay, ok)
        df, per_c, best = report(halves, lay, sel, ok, np.zeros(1))
        assert df["f1"].iloc[0] == pytest.approx(1.0)  # the test F1 is perfect either way
        assert bool(best["match"][0]) is want, (want, per_c.iloc[0].to_dict())


def test_signal_peptide_position_rule():
    """Concept = the first 20 residues (a domain concept: recall over domains, so "first 10" hits each
    one as surely as "first 20"): a "first w residues" rule is chosen on valid and scores F1 1 on test."""
    rng = np.random.default_rng(5)
    items = []
    for i in range(80):
        s = "".join(rng.choice(list(AMINO_ACIDS), 150))
        items.append(Item(f"p{i}", s, labels=[Labeled(f"p{i}", s, "TMbed", {"TMbed: signal peptide": [(0, 20)]})]))
    halves, lay, _ = _counts(items, [(i, [100], [0], [1.0]) for i in range(80)], 1)
    ok = eligible(halves, lay)
    sel = select(halves[0], lay, ok)
    _, per_c, _ = report(halves, lay, sel, ok, np.zeros(1))
    assert per_c.loc[0, "position_rule"] in ("first 10 residues", "first 15 residues", "first 20 residues")
    assert per_c.loc[0, "position_f1"] == pytest.approx(1.0) and per_c.loc[0, "best_baseline_f1"] == pytest.approx(1.0)
