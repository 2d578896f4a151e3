"""Which labelled proteins train the learned baselines, which choose (valid) and which report (test).

Three sides, decided per *sequence* (every label record of one sequence lands on the same side):

* **train**: fits the learned one-hot window baselines (:mod:`esmsae.index.window_model`) and
  nothing else. These proteins are not indexed: no feature is ever measured on them.
* **valid**: every choice (thresholds, each feature's best concept, each baseline's rule or threshold).
* **test**: the figures reported; a match must hold on valid and test.

TMbed ships five homology-reduced cross-validation partitions (``cv_00`` .. ``cv_04``, clustered so
that no two partitions share close homologues; Bernhofer & Rost 2022). They decide its proteins'
side (:data:`TMBED_PARTITION_SIDE`), so a membrane protein's close homologue cannot sit on the
other side. Elsewhere the side is a hash of the sequence (identical sequences never straddle sides;
homologues can, which the closing notes state).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esmsae.index.labels import Labeled

SIDES = ("train", "valid", "test")
TRAIN_FRACTION = 0.2  # of hash-split sequences: enough residues for a 902-weight logistic model per concept
# TMbed partition -> side: three partitions train the window baselines, one chooses, one reports
TMBED_PARTITION_SIDE = {0: "train", 1: "train", 2: "train", 3: "valid", 4: "test"}


def split_of(sequence: str) -> int:
    """0 (valid) or 1 (test), by a hash of the sequence: identical sequences never straddle
    the halves, and the split does not depend on the order or the rest of the protein set."""
    return int(hashlib.md5(b"concept-split:" + sequence.encode()).hexdigest()[:8], 16) & 1


def hash_side(sequence: str, train_fraction: float = TRAIN_FRACTION) -> str:
    """'train' for a hash-drawn ``train_fraction`` of sequences (its own salt, so the valid / test
    halves of the rest are those of :func:`split_of`), else 'valid' or 'test'."""
    u = int(hashlib.md5(b"baseline-train:" + sequence.encode()).hexdigest()[:8], 16) / 2**32
    if u < train_fraction:
        return "train"
    return SIDES[1 + split_of(sequence)]


def assign_sides(labelled: Iterable["Labeled"], train_fraction: float = TRAIN_FRACTION) -> None:
    """Set ``split`` on every record: a sequence's TMbed partition decides its side wherever TMbed
    labels it (for all its records), the hash decides the rest."""
    labelled = list(labelled)
    by_seq: dict[str, str] = {}
    for lab in labelled:
        if lab.partition is not None:
            by_seq.setdefault(lab.sequence, TMBED_PARTITION_SIDE[lab.partition % 5])
    for lab in labelled:
        lab.split = by_seq.get(lab.sequence) or hash_side(lab.sequence, train_fraction)


def side_index(lab: "Labeled") -> int:
    """-1 (train: not counted), 0 (valid) or 1 (test); a record no side was assigned to (labels a
    caller counts directly) is valid or test by :func:`split_of`, never train."""
    return SIDES.index(lab.split) - 1 if lab.split else split_of(lab.sequence)
