"""Run protein LM + SAE on a user's sequence (the app's sequence inspector)."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.core.fasta import SequenceError, parse_fasta_text
from esmsae.lm.base import check_stop, stop_when
from esmsae.lm.plm import load_plm
from esmsae.published.load import load_sae
from esmsae.sae.checkpoint import hook_of, model_config_of

MAX_PASTE = 200_000  # characters; a bigger paste gets a message, not a hang
MAX_SEQUENCES = 50
DEFAULT_RATE = 80.0  # residues/s before a run has measured this machine (UniRep-1900 fp32, 2 loaded cores)
MAX_PAGE_SECONDS = 60.0  # past about a minute of work, the page points to the command line instead


class InputError(ValueError):
    """The pasted text cannot be analysed; the message says why."""


def parse_input(text: str) -> list[tuple[str, str]]:
    """A pasted sequence or FASTA -> [(name, sequence)], with clear errors."""
    if text is None or not text.strip():
        raise InputError("Paste a protein sequence or FASTA first (the box is empty).")
    if len(text) > MAX_PASTE:
        raise InputError(f"The paste is {len(text):,} characters; the inspector takes at most {MAX_PASTE:,} "
                         f"(index large sets with `python -m esmsae index`).")
    body = strip_numbering(text.strip())
    if not body.startswith(">"):
        body = ">query\n" + body
    try:
        prots = parse_fasta_text(body)
    except SequenceError as e:
        raise InputError(str(e)) from e
    if not prots:
        raise InputError("No sequence found in the paste.")
    if len(prots) > MAX_SEQUENCES:
        raise InputError(f"{len(prots)} sequences pasted; the inspector takes at most {MAX_SEQUENCES} at a time.")
    # names must be unique to be picked: a repeated id gets its record number ("x (record 2)")
    seen: dict[str, int] = {}
    out = []
    for i, p in enumerate(prots, 1):
        name = p.id if p.id not in seen else f"{p.id} (record {i})"
        seen[p.id] = i
        out.append((name, p.sequence))
    return out


_NUMBERED = re.compile(r"\s*\d+(\s+[A-Za-z*]+)+\s*")


def strip_numbering(text: str) -> str:
    """A sequence pasted from a GenBank / UniProt flat file (``ORIGIN``, lines ``1 mkvllaglll agsdfg ...``,
    ``//``): its numbers, ``ORIGIN`` and ``//`` dropped, so the residues are read as they are."""
    lines = text.splitlines()
    seq = [ln for ln in lines if ln.strip() and not ln.startswith(">") and ln.strip() not in ("ORIGIN", "//")]
    if not seq or not all(_NUMBERED.fullmatch(ln) for ln in seq):
        return text
    out = []
    for ln in lines:
        if ln.strip() in ("ORIGIN", "//"):
            continue
        out.append(ln if ln.startswith(">") else re.sub(r"\d+", "", ln))
    return "\n".join(out)


@dataclass
class Result:
    name: str
    sequence: str
    acts_LK: np.ndarray  # activations of the active latents per residue
    idx_LK: np.ndarray  # their latent ids
    seconds: float

    def dense(self, features: list[int]) -> np.ndarray:
        """[L, len(features)] activations of the chosen features."""
        out = np.zeros((len(self.sequence), len(features)), np.float32)
        feats = np.asarray(features, dtype=np.int64)
        order = np.argsort(feats)
        pos = (
            np.searchsorted(feats[order], self.idx_LK).clip(max=len(feats) - 1)
            if len(feats)
            else np.zeros_like(self.idx_LK)
        )
        hit = (
            (self.acts_LK > 0) & (feats[order][pos] == self.idx_LK) if len(feats) else np.zeros(self.idx_LK.shape, bool)
        )
        rows, _ = np.nonzero(hit)
        out[rows, order[pos[hit]]] = self.acts_LK[hit]
        return out

    def top_features(self, n: int = 20) -> pd.DataFrame:
        on = self.acts_LK > 0
        f = self.idx_LK[on]
        v = self.acts_LK[on]
        pos = np.nonzero(on)[0]
        if len(f) == 0:
            return pd.DataFrame(columns=["feature", "max_act", "mean_act", "n_residues", "max_pos"])
        df = pd.DataFrame({"feature": f, "v": v, "pos": pos})
        g = df.groupby("feature")
        out = pd.DataFrame(
            {
                "max_act": g["v"].max(),
                "mean_act": g["v"].mean(),
                "n_residues": g.size(),
                "max_pos": g.apply(lambda d: int(d.loc[d["v"].idxmax(), "pos"]) + 1, include_groups=False),
            }
        ).reset_index()
        return out.sort_values("max_act", ascending=False).head(n).reset_index(drop=True)

    def track(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        col = self.dense([f])[:, 0]
        pos = np.flatnonzero(col > 0)
        return pos, col[pos]

    def to_csv(self, features: list[int] | None = None) -> str:
        feats = features if features is not None else sorted(set(self.idx_LK[self.acts_LK > 0].tolist()))
        m = self.dense(feats)
        df = pd.DataFrame(m, columns=[f"f{f}" for f in feats])
        df.insert(0, "residue", list(self.sequence))
        df.insert(0, "position", np.arange(1, len(self.sequence) + 1))
        return df.to_csv(index=False)


class Analyzer:
    """Protein LM + SAE of a checkpoint, loaded once (the app caches it with st.cache_resource)."""

    def __init__(self, sae_dir: str | Path, device: str = "auto"):
        self.sae = load_sae(sae_dir)
        self.meta = self.sae.meta
        mcfg = model_config_of(self.meta)
        mcfg.device = device
        self.plm = load_plm(mcfg)
        self.sae = self.sae.to(self.plm.device)  # one device for both
        self.sae.meta = self.meta  # what steering reads (hook, base model)
        self.hook = hook_of(self.meta)
        self.rate: float | None = None  # residues per second measured here by earlier runs (None: none yet)
        self._count = threading.Lock()  # guards _inflight, the analyses submitted and not finished
        self._inflight = 0

    @torch.no_grad()
    def run(self, name: str, sequence: str) -> Result:
        t = time.perf_counter()
        x_LD = self.plm.embed([sequence], [self.hook])[0][self.hook.name]
        lat = self.sae.encode(x_LD.to(self.plm.device))
        res = Result(
            name, sequence, lat.acts_BK.float().cpu().numpy(), lat.idx_BK.cpu().numpy(), time.perf_counter() - t
        )
        if len(sequence) >= 100:  # this machine's own speed, for the next estimate (short runs are overhead)
            r = len(sequence) / max(res.seconds, 1e-3)
            self.rate = r if self.rate is None else 0.5 * self.rate + 0.5 * r
        return res

    # ------------------------------------------------------------ the page's view of a long run
    def estimate_s(self, n_residues: int) -> float:
        """Seconds an analysis of ``n_residues`` should take on this machine (measured by earlier runs;
        before any, a conservative :data:`DEFAULT_RATE`)."""
        return 0.5 + n_residues / (self.rate or DEFAULT_RATE)

    def calibrate(self) -> float:
        """Measure this machine's speed on a 200-residue protein (a second or two for UniRep-1900), when no
        run has yet, so that a long input is judged by what this model does here."""
        if self.rate is None:
            self.run("calibration", ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ" * 4)[:200])
        return self.rate

    def max_residues(self, seconds: float = MAX_PAGE_SECONDS) -> int:
        """The longest protein the page analyses in about ``seconds``."""
        return int((seconds - 0.5) * (self.rate or DEFAULT_RATE))

    def submit(self, name: str, sequence: str) -> "Job":
        """Run in a thread, so that the page can show progress (and a queue) while the model works."""
        job = Job(self, len(sequence))
        with self._count:
            job.ahead = self._inflight
            self._inflight += 1

        def work():
            try:
                with self.plm.lock, stop_when(job.cancelled):  # one forward at a time: wait here, in the open
                    check_stop()  # cancelled while it waited
                    job.started = time.perf_counter()
                    job.result = self.run(name, sequence)
            except Exception as e:  # shown by the page (Cancelled: the page has moved on)
                job.error = e
            finally:
                with self._count:
                    self._inflight -= 1
                job.done.set()

        threading.Thread(target=work, daemon=True, name=f"analyse-{name[:20]}").start()
        return job



class Job:
    """One analysis in flight: ``done`` when finished, ``result`` or ``error``; ``started`` is None while it
    waits for the model (``ahead`` analyses were running when it was submitted)."""

    def __init__(self, analyzer: Analyzer, n_residues: int):
        self.analyzer, self.n = analyzer, n_residues
        self.done = threading.Event()
        self.cancelled = threading.Event()  # set by the page's Cancel: the forward stops between steps
        self.result: Result | None = None
        self.error: Exception | None = None
        self.started: float | None = None
        self.submitted = time.perf_counter()
        self.ahead = 0

    def status(self) -> tuple[float, str]:
        """(fraction done, a line for the progress bar): waiting, or elapsed against the estimate."""
        now = time.perf_counter()
        if self.started is None:
            others = f"{self.ahead} other {'analysis' if self.ahead == 1 else 'analyses'}"
            waited = now - self.submitted
            return 0.0, f"Waiting for the model: {others} ahead ({waited:.0f} s so far; one runs at a time)"
        est = self.analyzer.estimate_s(self.n)
        el = now - self.started
        return min(0.95, el / est), f"Analysing {self.n:,} residues: about {est:.0f} s in all, {el:.0f} s so far"


def steer_in_app(analyzer: "Analyzer", sequence: str, edit):
    """Steering (``esmsae.analysis.steer``) with the inspector's loaded model and SAE."""
    from esmsae.analysis.model import Model
    from esmsae.analysis.steer import steer

    return steer(Model(analyzer.plm), analyzer.sae, sequence, edit)


def generate_in_app(analyzer: "Analyzer", sequence: str, edit, n_designs: int, rounds: int, mask_frac: float,
                    temperature: float, seed: int, pppl: bool):
    """Generation with the edit held (``esmsae.analysis.steer.generate``) with the inspector's model and SAE."""
    from esmsae.analysis.model import Model
    from esmsae.analysis.steer import generate

    return generate(
        Model(analyzer.plm),
        analyzer.sae,
        sequence,
        edit,
        n_designs=n_designs,
        rounds=rounds,
        mask_frac=mask_frac,
        temperature=temperature,
        seed=seed,
        pppl=pppl,
    )
