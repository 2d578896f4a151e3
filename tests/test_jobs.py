"""Background training jobs: confinement to the workspace, validation, cancel and resume."""
import json
import re

import pytest

from esmsae.app import jobs
from esmsae.config import ConfigError


def _cfg(esm2_dir, fasta, budget):
    return {
        "model": {"name": str(esm2_dir)},
        "hook": {"layers": [2]},
        "embed": {"fasta": str(fasta), "holdout_fraction": 0.2},
        "sae": {"n_latents": 128, "k": 8},
        "train": {"token_budget": budget, "batch_size": 256, "checkpoint_every": 20},
        "eval": {"lm_proteins": 4},
    }


def test_run_dir_is_confined(tmp_path):
    assert jobs.run_dir(tmp_path, "ok-run_1.x") == (tmp_path / "ok-run_1.x").resolve()
    for bad in ("../x", "a/b", "", ".hidden", "x" * 80):
        with pytest.raises(jobs.JobError, match="run name"):
            jobs.run_dir(tmp_path, bad)


def test_validation_names_the_field(tmp_path, esm2_dir, mgen_fasta):
    cfg = _cfg(esm2_dir, mgen_fasta, 1000)
    cfg["sae"]["k"] = 0
    with pytest.raises(ConfigError, match="SAEConfig.k"):
        jobs.start(tmp_path, "r", cfg)
    cfg = _cfg(esm2_dir, tmp_path / "missing.fasta", 1000)
    with pytest.raises(jobs.JobError, match="data file not found"):
        jobs.start(tmp_path, "r", cfg)
    assert not (tmp_path / "r").exists()  # nothing written for a refused job


def test_the_form_refuses_what_the_job_would(tmp_path, esm2_dir, mgen_fasta, tiny_sae):
    """Layer out of the model's range (read from its config), a server file that is not FASTA, a model or
    an SAE hub id that is not in the (offline) cache, a folder that holds no SAE: refused before
    anything is written, each naming the form's field; and config errors in the form's words."""
    from esmsae.app.form_checks import form_message

    cases = [
        ({"hook": {"layers": [99], "site": "resid"}}, "Layer(s): 99 does not exist in"),
        ({"embed": {"fasta": "/etc/passwd"}}, "is not a FASTA file (its first line does not start with '>')"),
        ({"model": {"name": "nobody/no-such-model"}}, "not in the Hugging Face cache"),
    ]
    for patch, msg in cases:
        cfg = _cfg(esm2_dir, mgen_fasta, 1000)
        for sec, vals in patch.items():
            cfg[sec] = {**cfg.get(sec, {}), **vals}
        with pytest.raises(jobs.JobError, match=re.escape(msg)):
            jobs.start(tmp_path, "r", cfg)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    for source, msg in (("nobody/no-such-sae", "not in the Hugging Face cache"),
                        (str(tmp_path / "junk"), "no known SAE layout found"),
                        (str(tiny_sae), "already an esmsae checkpoint")):
        with pytest.raises(jobs.JobError, match=re.escape(msg)):
            jobs.start_import(tmp_path, "imp", {"source": source}, str(mgen_fasta))
    assert not (tmp_path / "r").exists() and not (tmp_path / "imp").exists()
    got = form_message("SAEConfig.k: must be in [1, n_latents=16]")
    assert got == "k (active latents per token): must be in [1, n_latents=16]"
    assert form_message("x: no known layout; pass --format") == "x: no known layout; choose its format"


@pytest.mark.slow
def test_cancel_then_resume_finishes(tmp_path, esm2_dir, mgen_fasta):
    cfg = _cfg(esm2_dir, mgen_fasta, 400_000)
    cfg["train"]["checkpoint_every"] = 100_000  # cancel comes before the first periodic checkpoint
    d = jobs.start(tmp_path, "run1", cfg)
    # every wait ends on the job's own state (or its exit); the long limits only stop a hung job
    st = jobs.wait(d, lambda st: st.get("stage") == "train" and (d / "metrics.jsonl").exists(), 1800)
    assert st["alive"] and st.get("stage") == "train", (d / "job.log").read_text()
    assert jobs.cancel(d)
    st = jobs.wait(d, lambda st: not st["alive"], 600, 0.1)  # the job finishes its step, writes a checkpoint and exits
    assert st["state"] == "cancelled" and not st["alive"]
    import torch

    # the cancel wrote a checkpoint: the run resumes from where it stopped, not from step 0
    stopped_at = torch.load(d / "state.pt", weights_only=False)["step"]
    assert stopped_at >= 1, stopped_at
    assert jobs.list_jobs(tmp_path)[0]["run"] == "run1"
    # the same name with another configuration is refused; resume continues the run
    with pytest.raises(jobs.JobError, match="another configuration"):
        jobs.start(tmp_path, "run1", _cfg(esm2_dir, mgen_fasta, 500_000))
    jobs.launch(d)
    st = jobs.wait(d, lambda st: st["state"] in ("done", "failed"), 3600)
    assert st["state"] == "done", (d / "job.log").read_text()[-2000:]
    assert (d / "L2_resid" / "index.duckdb").exists() and (d / "L2_resid" / "eval.json").exists()
    steps = [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # resumed, not restarted with duplicated steps
    assert steps[0] == 20


@pytest.mark.slow
def test_two_jobs_at_once_and_the_same_job_twice(tmp_path, esm2_dir, mgen_fasta):
    """Two runs may go on side by side; starting a run that is already running is refused by name."""
    a = jobs.start(tmp_path, "job-a", _cfg(esm2_dir, mgen_fasta, 400_000))
    b = jobs.start(tmp_path, "job-b", _cfg(esm2_dir, mgen_fasta, 400_000))
    try:
        assert jobs.status(a)["alive"] and jobs.status(b)["alive"]
        with pytest.raises(jobs.JobError, match="job-a is already running"):
            jobs.start(tmp_path, "job-a", _cfg(esm2_dir, mgen_fasta, 400_000))
        assert {j["run"] for j in jobs.list_jobs(tmp_path)} == {"job-a", "job-b"}
    finally:
        for d in (a, b):
            jobs.cancel(d)
        for d in (a, b):
            jobs.wait(d, lambda st: not st["alive"], 600, 0.1)
    assert not jobs.status(a)["alive"] and not jobs.status(b)["alive"]
