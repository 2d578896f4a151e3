"""Background training jobs launched from the app: embed -> train -> evaluate -> index.

A job is a folder in the workspace: ``job.json`` (the config sections), ``status.json``
(atomic), ``job.log`` and the outputs of each stage. It runs as its own process
(``python -m esmsae job RUN_DIR``, an argv list, never a shell string) in a new session,
so it survives a browser reload or a restart of the app; every stage is resumable, so
"resume" just starts the process again on the same folder.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from esmsae.app.form_checks import FormError, check_fasta, check_import_source, check_layers
from esmsae.config import IndexConfig, from_dict, save_json
from esmsae.core.paths import DEMO, ROOT
from esmsae.sae.checkpoint import is_checkpoint, read_cfg
from esmsae.sae.pipeline import SECTIONS as _ALL_SECTIONS
from esmsae.sae.pipeline import SKIPS, run_pipeline

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# a training job = `esmsae pipeline` + `esmsae index`: the sections of both, and the fields each
# stage sets itself (folders, the evaluation seed, the index's SAE / output / proteins / model)
SECTIONS = {**{k: _ALL_SECTIONS[k] for k in SKIPS["pipeline"]}, "index": IndexConfig}
JOB_SKIPS: dict[str, tuple[str, ...]] = {
    **SKIPS["pipeline"],
    "index": ("sae", "out", "fasta", "model", "concepts", "groups", "threads"),
}


class JobError(ValueError):
    pass


def app_presets() -> dict[tuple[str, str], object]:
    """What the Training page starts from where the dataclass default would not run on a fresh
    offline machine or would take hours: the demo bundle's protein LM and sample FASTA, and a
    first run of minutes (1,024 latents, 2 M tokens). Every other field starts at its
    dataclass default."""
    demo = DEMO
    # the demo's own protein LM and layer (UniRep-1900, read from the installed package: offline)
    cfg = read_cfg(demo / "sae") if is_checkpoint(demo / "sae") else {}
    model = (cfg.get("base_model") or {}).get("name", "")  # read_cfg resolves a bundle's relative model
    return {
        ("model", "name"): model or "unirep1900",
        ("hook", "layers"): [int(cfg.get("layer", 1))],
        ("embed", "fasta"): str(demo / "sample.fasta"),
        ("sae", "n_latents"): 1024,
        ("train", "token_budget"): 2_000_000,
        ("train", "batch_size"): 2048,
    }


def run_dir(ws: Path, name: str) -> Path:
    """The folder of a run, confined to the workspace."""
    if not NAME.match(name or ""):
        raise JobError(f"run name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    d = (Path(ws) / name).resolve()
    if d.parent != Path(ws).resolve():
        raise JobError(f"run name {name!r} leaves the workspace")
    return d


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build every config section (raises ConfigError naming the field) and check the data file."""
    out = {k: from_dict(cls, cfg.get(k, {})) for k, cls in SECTIONS.items()}
    if len(out["hook"].layers) != 1:
        raise JobError("train one layer per run from the app (HookConfig.layers has several)")
    try:  # what the job would reject, refused here in the form's words (esmsae.app.form_checks)
        out["embed"] = replace(out["embed"], fasta=str(check_fasta(out["embed"].fasta)))
        check_layers(out["model"].name, list(out["hook"].layers), out["hook"].site)
    except FormError as e:
        raise JobError(str(e)) from None
    return out


def start(ws: Path, name: str, cfg: dict[str, Any], index_concepts: str = "") -> Path:
    """Write the job folder and launch the job process; returns the run folder."""
    sections = validate(cfg)
    d = run_dir(ws, name)
    if d.exists() and (d / "job.json").exists():
        old = json.loads((d / "job.json").read_text())
        if old.get("config") != {k: asdict(v) for k, v in sections.items()}:
            raise JobError(
                f"run {name!r} already exists with another configuration; choose a new name (or resume it as it is)"
            )
    d.mkdir(parents=True, exist_ok=True)
    save_json(
        {
            "config": {k: asdict(v) for k, v in sections.items()},
            "index_concepts": index_concepts,
            "created": time.time(),
        },
        d / "job.json",
    )
    return launch(d)


IMPORT_KEYS = ("source", "format", "layer", "k", "model", "file")


def start_import(ws: Path, name: str, spec: dict[str, Any], fasta: str, index_concepts: str = "") -> Path:
    """An import job: a published SAE (``spec``: source, format, layer, k, model, file, as
    ``python -m esmsae import``) written as a checkpoint, then indexed over ``fasta``."""
    unknown = set(spec) - set(IMPORT_KEYS)
    if unknown:
        raise JobError(f"import: unknown field(s) {sorted(unknown)}")
    try:
        check_import_source(str(spec.get("source", "")), str(spec.get("format") or "auto"))
        fasta = str(check_fasta(fasta, "FASTA to index"))
    except FormError as e:
        raise JobError(str(e)) from None
    for key in ("layer", "k"):
        v = spec.get(key)
        if v is not None and (not isinstance(v, int) or v < 0):
            raise JobError(f"import: {key} must be a non-negative integer, got {v!r}")
    d = run_dir(ws, name)
    job = {
        "kind": "import",
        "import": {k: spec.get(k) for k in IMPORT_KEYS},
        "fasta": str(fasta),
        "index_concepts": index_concepts,
    }
    if d.exists() and (d / "job.json").exists():
        old = json.loads((d / "job.json").read_text())
        if {k: old.get(k) for k in ("kind", "import", "fasta")} != {k: job[k] for k in ("kind", "import", "fasta")}:
            raise JobError(
                f"run {name!r} already exists with another configuration; choose a new name (or resume it as it is)"
            )
    d.mkdir(parents=True, exist_ok=True)
    save_json({**job, "created": time.time()}, d / "job.json")
    return launch(d)


def _run_import(d: Path, job: dict[str, Any]) -> None:
    from esmsae.index.build import build_index
    from esmsae.published.convert import import_sae

    spec = job["import"]
    ck = d / "sae"
    if not is_checkpoint(ck):
        _write_status(d, stage="import")
        import_sae(spec["source"], ck, spec.get("format") or "auto", layer=spec.get("layer"), k=spec.get("k"),
                   model=spec.get("model") or "", file=spec.get("file") or "")
    _write_status(d, stage="index")
    build_index(
        IndexConfig(
            sae=str(ck),
            out=str(ck / "index.duckdb"),
            fasta=[job["fasta"]],
            concepts=job.get("index_concepts", ""),
            umap=True,
        ),
        progress=False,
    )


def launch(d: Path) -> Path:
    st = status(d)
    if st.get("alive"):
        raise JobError(f"run {d.name} is already running (pid {st['pid']})")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    }
    with open(d / "job.log", "ab") as log:  # the child keeps its own copy of the handle
        p = subprocess.Popen(
            [sys.executable, "-m", "esmsae", "job", str(Path(d).resolve())],
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    _write_status(d, state="starting", stage="", pid=p.pid)
    return d


def _write_status(d: Path, **kw: Any) -> None:
    cur = json.loads((d / "status.json").read_text()) if (d / "status.json").exists() else {}
    cur.update(kw, updated=time.time())
    save_json(cur, d / "status.json")


def _is_job_process(pid: int, d: Path | None) -> bool:
    """The pid still runs ``esmsae job <d>`` (a stored pid may have been reused by another process)."""
    if d is None:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    return b"job" in argv and str(Path(d).resolve()).encode() in argv  # launch() passes the resolved folder


def _alive(pid: int | None, d: Path | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a finished child not yet reaped is a zombie: not alive
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split(") ")[-1][:1] == "Z":
                return False
    except OSError:
        return True
    return _is_job_process(pid, d)


def status(d: Path) -> dict[str, Any]:
    p = Path(d) / "status.json"
    st = json.loads(p.read_text()) if p.exists() else {"state": "new"}
    st["alive"] = _alive(st.get("pid"), Path(d))
    if st.get("state") in ("starting", "running") and not st["alive"]:
        st["state"] = "interrupted"
    return st


def wait(
    d: Path,
    until=lambda st: st["state"] in ("done", "failed", "cancelled", "interrupted"),
    timeout_s: float = 300,
    poll_s: float = 0.2,
) -> dict[str, Any]:
    """Poll a job's status until ``until(status)`` holds, the job's process has exited (nothing more
    can change), or the time is up; returns the last status. Tests wait on the job's own state: a job
    slowed by a loaded machine is still running, and waiting on it is not a failure."""
    deadline = time.monotonic() + timeout_s
    gone_since = None  # a just-launched child is not yet "esmsae job" (fork before exec): wait 2 s to be sure
    while True:
        st = status(d)
        now = time.monotonic()
        gone_since = None if st["alive"] else (gone_since or now)
        if until(st) or (gone_since is not None and now - gone_since >= 2.0) or now > deadline:
            return st
        time.sleep(poll_s)


def cancel(d: Path) -> bool:
    st = status(d)
    if not st["alive"]:
        return False
    os.killpg(os.getpgid(st["pid"]), signal.SIGTERM)
    _write_status(d, state="cancelled")
    return True


def list_jobs(ws: Path) -> list[dict[str, Any]]:
    out = []
    for j in sorted(Path(ws).glob("*/job.json"), key=lambda p: -p.stat().st_mtime) if Path(ws).exists() else []:
        st = status(j.parent)
        out.append({"run": j.parent.name, **{k: st.get(k) for k in ("state", "stage", "error")}})
    return out


def run_job(d: Path) -> int:
    """The job process: every stage in turn, status written as it goes."""
    from esmsae.index.build import build_index

    d = Path(d).resolve()
    job = json.loads((d / "job.json").read_text())
    kind = job.get("kind", "train")
    c = {k: from_dict(cls, job["config"].get(k, {})) for k, cls in SECTIONS.items()} if kind == "train" else {}
    _write_status(d, state="running", pid=os.getpid(), error=None, started=time.time())

    from esmsae.sae.train import TrainInterrupted

    now = {"stage": "", "stop": False}

    def on_stage(stage: str) -> None:
        now["stage"] = stage
        _write_status(d, stage=stage)

    def on_term(*_):
        _write_status(d, state="cancelled")
        if (
            now["stage"] == "train"
        ):  # let the training loop write a checkpoint first (cancel before the first one lost the run)
            now["stop"] = True
            return
        os._exit(143)  # embed / evaluate / index resume from their own finished parts

    signal.signal(signal.SIGTERM, on_term)
    try:
        if kind == "import":
            _run_import(d, job)
            _write_status(d, state="done", stage="", finished=time.time())
            return 0
        try:
            (ck,) = run_pipeline(c, str(d), progress=False, on_stage=on_stage, should_stop=lambda: now["stop"])
        except TrainInterrupted as e:
            print(f"cancelled: {e}", flush=True)
            _write_status(d, state="cancelled")
            return 143
        on_stage("index")
        icfg = IndexConfig(
            **{
                **asdict(c["index"]),
                "sae": str(ck),
                "out": str(ck / "index.duckdb"),
                "fasta": [c["embed"].fasta],
                "concepts": job.get("index_concepts", ""),
            }
        )
        build_index(icfg, progress=False)
        _write_status(d, state="done", stage="", finished=time.time())
        return 0
    except Exception as e:  # recorded for the page; the traceback goes to job.log
        traceback.print_exc()
        _write_status(d, state="failed", error=f"{type(e).__name__}: {e}")
        return 1
