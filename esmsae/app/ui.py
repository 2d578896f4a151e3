"""Streamlit glue shared by the pages: cached resources and the run picker (no analysis here)."""
from __future__ import annotations

import streamlit as st

from esmsae.app.runs import Run, list_runs
from esmsae.index.reader import FeatureIndex
from esmsae.sae.checkpoint import weights_file


@st.cache_resource(max_entries=8, show_spinner=False)
def _index(path: str, mtime: float) -> FeatureIndex:
    # keyed by mtime: a job that renames a new index into place gets a fresh read-only connection
    return FeatureIndex(path)


def ensure_navigation() -> None:
    """Serve every page through app.py's navigation (sidebar links, wide layout, the run picker).

    Streamlit decides per process, from the folder name ``pages/``, to run a deep link such as
    /features?feature=3 as a v1 multipage app: the page file alone, without app.py, until some
    session has run app.py's ``st.navigation`` (its PagesManager flag). A page reached that way
    turns the flag off and reruns, once per server process, so the rerun goes through app.py."""
    import sys

    from streamlit.runtime.pages_manager import PagesManager

    # a server only: AppTest opens page files itself, by their v1 page hashes, which app.py's pages lack
    if PagesManager.uses_pages_directory and "streamlit.testing.v1.app_test" not in sys.modules:
        PagesManager.uses_pages_directory = False
        st.rerun()


def index_of(run: Run) -> FeatureIndex | None:
    if run.index is None or not run.index.exists():
        return None
    return _index(str(run.index), run.index.stat().st_mtime)


@st.cache_resource(max_entries=4, show_spinner="Loading protein LM and SAE...")
def _analyzer(sae_dir: str, mtime: float):
    from esmsae.app.analyze import Analyzer

    return Analyzer(sae_dir)


@st.cache_resource(max_entries=64, show_spinner=False)
def _cached(path: str, mtime: float, name: str, args: tuple, _fn):
    return _fn(*args)


def cached(idx: FeatureIndex, name: str, fn, *args):
    """``fn(*args)`` computed once per index file (its path and mtime: a rebuilt index gets a fresh
    value) and ``name`` / ``args``: figures and tables every visit of a page would rebuild (the feature
    map of every feature, the frequency histogram). Shared by all sessions, never mutated by a page."""
    from pathlib import Path

    p = Path(idx.path)
    return _cached(str(p), p.stat().st_mtime, name, tuple(args), fn)


def analyzer_of(run: Run):
    return _analyzer(str(run.sae_dir), weights_file(run.sae_dir).stat().st_mtime)


def pick_run() -> Run | None:
    """Sidebar run picker; the choice is kept in the session and in the URL (?run=...)."""
    runs = list_runs()
    if not runs:
        st.sidebar.warning("No SAE runs found: build the demo (`make demo`) or train one on the Training page.")
        return None
    names = [r.name for r in runs]
    asked = st.query_params.get("run")
    if asked and asked not in names:
        st.warning(
            f"The link names run {asked!r}, which is not here: showing {names[0]!r}. Runs found:"
            f" {', '.join(names[:10])}"
            + (" ..." if len(names) > 10 else "")
            + "."
        )
        del st.query_params["run"]
        asked = None
    want = asked or st.session_state.get("run") or names[0]
    i = names.index(want) if want in names else 0
    name = st.sidebar.selectbox(
        "SAE run", names, index=i, format_func=lambda n: next(r.label for r in runs if r.name == n), key="run_picker"
    )
    st.session_state["run"] = name
    if name != names[0] or "run" in st.query_params:
        st.query_params["run"] = name
    return runs[names.index(name)]


def require_index(run: Run | None) -> FeatureIndex:
    if run is None:
        st.stop()
    idx = index_of(run)
    if idx is None:
        st.info(
            f"Run **{run.name}** has no feature index yet (it is built at the end of a training job, or with `python -m"
            " esmsae index`)."
        )
        st.stop()
    return idx


def feature_query(f: int, run: Run | None = None) -> dict[str, str]:
    """Query parameters of a feature's page: the run is named unless it is the default (demo)."""
    qp = {"feature": str(int(f))}
    if run is not None and run.name != "demo":
        qp["run"] = run.name
    return qp


def feature_url(f: int, run: Run | None = None) -> str:
    from urllib.parse import urlencode

    return "/features?" + urlencode(feature_query(f, run))


def feature_link(f: int, run: Run | None = None, about: str = "") -> None:
    """A link to a feature's page; ``about``: its concept verdict, said in the link (index/verdicts.py)."""
    st.page_link("pages/features.py", label=f"Open feature {f}" + (f": {about}" if about else ""),
                 query_params=feature_query(f, run))


def table(df, key: str | None = None, link: dict | None = None, **kw):
    """st.dataframe with readable column names, number formats and no "nan"/"None" cells
    (esmsae.app.columns); ``link``: {column: display text} for LinkColumns. Returns the widget's event."""
    from esmsae.app.columns import formats, human

    cfg = {c: st.column_config.NumberColumn(format=f) for c, f in formats(df).items()}
    for c, text in (link or {}).items():
        cfg[c] = st.column_config.LinkColumn(c, display_text=text)
    cfg.update(kw.pop("column_config", {}) or {})
    return st.dataframe(human(df), hide_index=True, key=key, column_config=cfg, **kw)
