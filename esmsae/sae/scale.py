"""Display scales of feature activations (raw, / max, / max x IDF), one rule for the app (numpy)
and the SAE's :meth:`~esmsae.sae.model.SAE.encode_scaled` (torch). Max and IDF come from the reference
statistics shipped with the SAE when an index recorded them, so two indexes of one SAE agree."""
from __future__ import annotations

from typing import Any

import numpy as np


def display_scale(info: dict[str, Any]) -> tuple[float, float, str]:
    """(max, IDF, where they come from) for the max / max x IDF display scales of a feature: the
    reference statistics shipped with the SAE (Biohub's max / idf, InterPLM's folded max) when
    the index recorded them, so two indexes of one SAE agree; otherwise this index's own."""
    rm, ri = info.get("ref_max"), info.get("ref_idf")
    if rm is not None and np.isfinite(rm):
        return (
            float(rm),
            float(ri) if ri is not None and np.isfinite(ri) else float(info["idf"]),
            "reference statistics shipped with the SAE",
        )
    return float(info["max_act"]), float(info["idf"]), "this index's proteins"


SCALES = ("raw", "max", "max_idf")


def scale_activations(values, fmax, idf, mode: str):
    """The one display-scale rule, for numpy arrays and torch tensors alike: ``raw``; ``max``
    (activation / the feature's reference max, 0-1 at the maximum); ``max_idf`` (that times the
    feature's IDF, Biohub's "TF-IDF" normalisation). A feature whose max is 0 (never fired on the
    reference proteins) scales to 0, not NaN."""
    if mode not in SCALES:
        raise ValueError(f"activation scale must be one of {SCALES}, got {mode!r}")
    if mode == "raw":
        return values
    out = values / (fmax + (fmax <= 0)) * (fmax > 0)  # fmax + (fmax <= 0): 1 where fmax is 0, no division by zero
    return out * idf if mode == "max_idf" else out


class FeatureScale:
    """The activation scale a feature's tracks are drawn in (raw, / max, / max x IDF), with the
    colour-scale maximum; max and IDF from :func:`display_scale`."""

    def __init__(self, info: dict[str, Any], mode: str):
        self.fmax, self.idf, self.source = display_scale(info)
        self.mode = mode
        self.vmax = float(self(np.array([info["max_act"]]))[0]) or 1.0

    def __call__(self, values) -> np.ndarray:
        return scale_activations(np.asarray(values, float), self.fmax, self.idf, self.mode)
