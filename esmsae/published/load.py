"""The one way to load an SAE: an esmsae checkpoint folder, or a published SAE read from its source's
own layout (hub id, file or folder). It lives here, above :mod:`esmsae.sae.checkpoint`, so that the
checkpoint module knows nothing of published formats."""
from __future__ import annotations

import os
from pathlib import Path

from esmsae.config import resolve_device
from esmsae.lm.plm import ProteinLM
from esmsae.published.canonical import canonical_meta, to_sae
from esmsae.published.source import read_source
from esmsae.sae.checkpoint import check_compatible, is_checkpoint, load_checkpoint
from esmsae.sae.model import SAE


def load_sae(
    source: str | os.PathLike,
    *,
    layer: int | None = None,
    format: str = "auto",
    device: str = "cpu",
    plm: ProteinLM | None = None,
    k: int | None = None,
    model: str = "",
    file: str = "",
) -> SAE:
    """An esmsae checkpoint folder, or a published SAE (see :mod:`esmsae.published`), as an :class:`SAE`
    whose ``meta`` is the checkpoint's cfg (base model, layer, site, normalisation, provenance).

    ``layer``, ``k``, ``model`` and ``file`` choose or complete a published SAE (an esmsae folder
    records them; a ``layer`` that disagrees with it is an error). With ``plm`` given, the SAE is
    checked against that model first (:func:`~esmsae.sae.checkpoint.check_compatible`)."""
    folder = Path(source).expanduser()
    if format == "esmsae" or (format == "auto" and is_checkpoint(folder)):
        return load_checkpoint(folder, layer=layer, device=device, plm=plm)  # names what is missing
    c = read_source(str(source), format, layer=layer, k=k, model=model, file=file)
    sae = to_sae(c)
    sae.meta = canonical_meta(c)
    if plm is not None:
        check_compatible(sae.meta, plm)
    return sae.to(resolve_device(device)).eval()
