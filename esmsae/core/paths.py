"""Where things live, decided in one place: the repository root, the shared data folder
(``ESMSAE_SHARED``, default ``../shared/data`` beside the checkout) and the app's workspace
(``ESMSAE_WORKSPACE``, default ``./workspace``)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """The shared data folder (labels, structures, proteomes, the ESM-2 8M config)."""
    return Path(os.environ.get("ESMSAE_SHARED", ROOT.parent / "shared" / "data"))


def workspace() -> Path:
    """Folder holding runs started from the app."""
    return Path(os.environ.get("ESMSAE_WORKSPACE", ROOT / "workspace")).resolve()
DEMO = ROOT / "data" / "demo"  # the built-in demo bundle
