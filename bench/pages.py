"""Page loads in a real browser (Debian's Chromium through Playwright, as tests/test_browser.py drives
it): for each page of the demo, the time from navigation until its content is on screen, warm (the
server has opened the index and models once), REPEATS times; and the feature page's tab switches.
Writes bench/results/pages.json with p50 / p95 per page in seconds. Usage: python bench/pages.py"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 7
FEATURE = 3256  # the demo's best TM-helix feature

# (name, path, what must be on screen when the content is there)
PAGES = [
    ("overview", "/overview", re.compile(r"^Concepts: the best feature against the best baseline")),
    ("feature browser", "/features", re.compile(r"^\d+ features - click a row")),
    ("feature page", f"/features?feature={FEATURE}", re.compile(r"^#1 ")),
    ("group comparison", "/groups", re.compile(r"^Two groups side by side")),
    ("sequence inspector", "/inspector", re.compile(r"^Protein sequence or FASTA")),
    ("training", "/training", re.compile(r"^Jobs$")),
]
TABS = ["Activation ranges", "Concepts", "Groups", "Structure", "Related features", "Top examples"]
TAB_CONTENT = {
    "Activation ranges": re.compile(r"^Range "),
    "Concepts": re.compile(r"^Thresholds are fractions"),
    "Groups": re.compile(r"^Grouping$"),
    "Structure": re.compile(r"^(Protein with a structure|None of the proteins)"),
    "Related features": re.compile(r"^Best matches of this feature"),
    "Top examples": re.compile(r"^#1 "),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {**os.environ, "ESMSAE_WORKSPACE": str(ROOT / "bench" / "cache" / "pages_ws")}
    srv = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                            "--server.headless", "true"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    out: dict = {"pages": {}, "tabs": {}}
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True,
                                   args=["--no-sandbox"])
            page = b.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            for name, path, ready in PAGES:  # warm-up: the server opens the index and models once
                page.goto(url + path)
                page.get_by_text(ready).first.wait_for(timeout=300_000)
            for name, path, ready in PAGES:
                ts = []
                for _ in range(REPEATS):
                    t = time.perf_counter()
                    page.goto(url + path)
                    page.get_by_text(ready).first.wait_for(timeout=120_000)
                    ts.append(time.perf_counter() - t)
                out["pages"][name] = {"p50_s": round(statistics.median(ts), 3), "p95_s": round(pct(ts, 0.95), 3),
                                      "runs_s": [round(x, 3) for x in ts]}
                print(name, out["pages"][name], flush=True)
            page.goto(url + f"/features?feature={FEATURE}")
            page.get_by_text(TAB_CONTENT["Top examples"]).first.wait_for(timeout=120_000)
            for _ in range(3):
                for tab in TABS:
                    t = time.perf_counter()
                    page.get_by_role("tab", name=tab).click()
                    page.get_by_text(TAB_CONTENT[tab]).first.wait_for(state="visible", timeout=120_000)
                    out["tabs"].setdefault(tab, []).append(time.perf_counter() - t)
            out["tabs"] = {k: {"p50_s": round(statistics.median(v), 3), "p95_s": round(pct(v, 0.95), 3)}
                           for k, v in out["tabs"].items()}
            b.close()
    finally:
        srv.terminate()
    out["settings"] = {"repeats": REPEATS, "feature": FEATURE, "browser": "Debian chromium, headless, 1400x1000",
                       "what": "navigation until the page's content text is visible (warm server)"}
    out["targets"] = {"page_p50_s": 1.0, "tab_switch_s": 0.5}
    (ROOT / "bench" / "results" / "pages.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
