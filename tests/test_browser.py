"""The main user journeys in a real browser: Playwright driving Debian's Chromium against
`streamlit run` on a free localhost port. Screenshots go to test-artifacts/."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import pytest

from esmsae.core.paths import shared_data

SHARED = shared_data()

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DEMO = ROOT / "data" / "demo"

# Skipped without a browser on a developer machine; in CI (CI=true) never skipped, so a missing
# browser fails the run instead of passing it with no journey run.
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not IN_CI and not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make browser)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_workspace):
    ws = tmp_path_factory.mktemp("browser_ws")
    shutil.copytree(app_workspace, ws, dirs_exist_ok=True)
    port = _free_port()
    env = {**os.environ, "ESMSAE_WORKSPACE": str(ws), "PYTHONPATH": str(ROOT)}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    # wait on the server's own state: healthy, or its process gone (then its log says why); a loaded
    # machine only makes the start slower (the limit stops a server that hangs)
    deadline = time.monotonic() + 900
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=5)
            break
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                pytest.fail("streamlit did not start: " + Path(log.name).read_text()[-2000:])
            time.sleep(0.5)
    yield url, ws
    p.terminate()
    p.wait(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ART.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--enable-unsafe-swiftshader",
                "--use-angle=swiftshader",
                "--ignore-gpu-blocklist",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def _page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    return ctx.new_page()


def _structure_feature(index: Path) -> int:
    """A feature whose top examples include a protein with a structure (else: the strongest structure track)."""
    con = duckdb.connect(str(index), read_only=True)
    try:
        r = con.execute("""SELECT t.feature FROM top_examples t JOIN proteins p USING (pidx) WHERE p.structure <> ''
                           ORDER BY t.rank, t.max_act DESC LIMIT 1""").fetchall()
        return int(r[0][0]) if r else int(
            con.execute("SELECT feature FROM structure_tracks ORDER BY max_act DESC LIMIT 1").fetchall()[0][0])
    finally:
        con.close()


def test_journey_feature_deep_link_with_structure(server, browser):
    url, ws = server
    if (DEMO / "index.duckdb").exists():
        f, run_q = _structure_feature(DEMO / "index.duckdb"), ""
    else:
        f, run_q = _structure_feature(ws / "tiny" / "L4_resid" / "index.duckdb"), "&run=tiny/L4_resid"
    page = _page(browser)
    page.goto(f"{url}/features?feature={f}{run_q}")
    page.get_by_role("heading", name=f"Feature {f}").first.wait_for(timeout=90_000)
    # the first page a fresh server serves is a deep link: it still goes through app.py (sidebar links;
    # Streamlit ran it as a bare v1 page, without them, until some session had opened "/")
    page.get_by_test_id("stSidebar").get_by_text("Sequence inspector", exact=True).wait_for(timeout=30_000)
    page.locator(".esmsae-track").first.wait_for(timeout=60_000)  # top examples drawn as residue tracks
    if run_q == "":  # the demo's labels drawn under the tracks, on the activation's axis
        page.locator(".esmsae-lanes").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Structure").click()
    if run_q == "":  # a top example's own structure, coloured by the feature, beside the others
        page.get_by_text(re.compile(r"top example #\d+")).first.wait_for(timeout=60_000)
        assert "tab=Structure" in page.url  # the open tab is in the address
    frame_el = page.locator("iframe").first
    frame_el.wait_for(timeout=60_000)
    frame = frame_el.content_frame
    canvas = frame.locator("canvas").first
    canvas.wait_for(timeout=60_000)
    time.sleep(3)  # let WebGL draw
    shot = ART / "journey1_feature_structure.png"
    page.screenshot(path=str(shot), full_page=True)
    png = frame_el.screenshot(path=str(ART / "journey1_structure_canvas.png"))
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    assert img.std() > 5, "the 3D structure canvas is blank"
    # the reload keeps the feature (deep link survives)
    page.reload()
    page.get_by_role("heading", name=f"Feature {f}").first.wait_for(timeout=90_000)


def _inspect(browser, url: str, name: str, seq: str, run_q: str = ""):
    """Open the inspector (of the run in ``run_q``, default the demo), paste one sequence and press Analyse;
    returns the page."""
    page = _page(browser)
    page.goto(f"{url}/inspector{run_q}")
    box = page.get_by_label("Protein sequence or FASTA", exact=True)
    box.wait_for(timeout=90_000)
    box.fill(f">{name}\n{seq}")
    page.get_by_role("button", name="Analyse").click()
    page.get_by_text("Features that fire most").wait_for(timeout=120_000)
    return page


def test_journey_inspector(server, browser):
    url, _ = server
    seq = (
        "KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITASVNCAKKIVSDGNGMN"
        "AWVAWRNRCKGTDVQAWIRGCRL"
    )
    page = _inspect(browser, url, "lysozyme", seq)
    page.get_by_text(f"{len(seq)} residues - protein LM + SAE").wait_for(
        timeout=30_000
    )  # the whole sequence was analysed
    import re

    link = page.get_by_role("link", name=re.compile(r"Open feature \d+")).first
    link.wait_for(timeout=30_000)
    page.get_by_role("button", name="Download activations (CSV)").wait_for(timeout=60_000)  # the script has finished
    page.screenshot(path=str(ART / "journey2_inspector.png"), full_page=True)
    # a top feature's link opens its own page (followed by address: a click on a Streamlit page_link
    # while the script reruns was lost once in CI, which tested the timing, not the link). Label
    # and address are read from one element at once: two reads could straddle a rerun.
    text, href = link.evaluate("e => [e.innerText, e.getAttribute('href')]")
    from urllib.parse import parse_qs, urljoin, urlsplit

    f = int(re.match(r"Open feature (\d+)", text).group(1))  # the label goes on with the concept verdict
    assert href and parse_qs(urlsplit(href).query).get("feature") == [str(f)], (text, href)

    page.goto(urljoin(url + "/", href))
    page.get_by_role("heading", name=re.compile(rf"^Feature {f}\b")).first.wait_for(timeout=90_000)


def test_journey_steer_in_inspector(server, browser):
    """Analyse a sequence, steer its top feature, and see the check (does the feature fire when
    the steered sequence is re-embedded), the steered sequence and the FASTA download."""
    url, _ = server
    # the tiny ESM run: this journey checks the UI flow; UniRep (the demo) steers and generates in
    # tests/test_unirep.py and tests/test_steer.py, and one resampled position there costs one forward
    page = _inspect(
        browser,
        url,
        "q",
        "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV",
        "?run=tiny/L4_resid",
    )
    page.get_by_text("Steer along a feature, checked").wait_for(timeout=120_000)
    page.get_by_role("button", name="Download activations (CSV)").wait_for(timeout=60_000)  # the script has finished
    steer = page.get_by_role("button", name="Steer", exact=True)
    steer.click()
    check = page.get_by_text("Target fires on the steered sequence")
    try:
        check.wait_for(timeout=120_000)
    except Exception:  # a click during a rerun can be lost: click once more
        steer.click()
        check.wait_for(timeout=120_000)
    page.get_by_role("button", name="Download the steered sequence (FASTA)").wait_for(timeout=60_000)
    assert page.get_by_text("Residues changed").count() >= 1
    # generate designs with the edit held, and see the check on each
    page.get_by_label("Designs", exact=True).fill("2")  # the flow, not the sampler (tests/test_steer.py)
    page.get_by_label("Rounds", exact=True).fill("2")
    gen = page.get_by_role("button", name="Generate", exact=True)
    gen.click()
    fired = page.get_by_text("Designs in which the feature fires")
    try:
        fired.wait_for(timeout=180_000)
    except Exception:
        gen.click()
        fired.wait_for(timeout=180_000)
    page.get_by_role("button", name="Download the designs (FASTA)").wait_for(timeout=60_000)
    page.screenshot(path=str(ART / "journey_steer.png"), full_page=True)


def test_journey_inspector_structure_upload(server, browser, shared):
    """Upload a structure: its chain's sequence is read from the atoms, analysed and drawn in 3D."""
    url, _ = server
    page = _page(browser)
    page.goto(f"{url}/inspector")
    page.get_by_label("Protein sequence or FASTA", exact=True).wait_for(timeout=90_000)
    page.locator("input[type=file]").first.set_input_files(str(shared / "structures" / "foldseek" / "1tim.pdb"))
    page.get_by_text("1tim.pdb").first.wait_for(timeout=30_000)
    # the upload reruns the script; a click on Analyse during that rerun can be lost (seen once in a
    # fresh-clone run), so click again if the analysis has not started after a while
    time.sleep(2)
    for attempt in range(3):
        page.get_by_role("button", name="Analyse").click()
        try:
            page.get_by_text("Features that fire most").wait_for(timeout=60_000)
            break
        except Exception:
            if attempt == 2:
                page.screenshot(path=str(ART / "journey2b_failed.png"), full_page=True)
                raise
    page.get_by_text("1tim.pdb chain A").first.wait_for(timeout=30_000)  # the first chain is analysed, and named
    frame_el = page.locator("iframe").last
    frame_el.wait_for(timeout=60_000)
    frame_el.content_frame.locator("canvas").first.wait_for(timeout=60_000)
    time.sleep(3)
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(frame_el.screenshot())).convert("RGB")).astype(int)
    assert img.std() > 5, "the uploaded structure is not drawn"
    page.screenshot(path=str(ART / "journey2b_inspector_structure.png"), full_page=True)


def test_journey_training(server, browser):
    url, ws = server
    page = _page(browser)
    page.goto(f"{url}/training")
    page.get_by_label("Run name", exact=True).wait_for(timeout=90_000)
    page.get_by_label("Run name", exact=True).fill("browser-run")
    fasta = ws / "train.fasta"
    from esmsae.core.fasta import read_fasta, write_fasta

    write_fasta(fasta, read_fasta(SHARED / "uniprot" / "mgenitalium" / "mgenitalium.fasta"), max_len=200, limit=80)
    model = (
        str(ROOT / "data" / "esm_lm" / "model") if (ROOT / "data" / "esm_lm" / "model").exists() else _tiny_model(ws)
    )
    page.get_by_label("Protein LM", exact=True).fill(model)
    page.get_by_label("Proteins (FASTA path)", exact=True).fill(str(fasta))
    page.get_by_label("Layer(s)", exact=True).fill("2")
    page.get_by_label("Latents (dictionary size)", exact=True).fill("256")
    page.get_by_label("k (active latents per token)", exact=True).fill("8")
    page.get_by_label("Training tokens", exact=True).fill("40000")
    page.get_by_label("Batch (tokens per step)", exact=True).fill("512")
    page.get_by_text("Advanced settings").click()
    page.get_by_label("Held-out fraction", exact=True).fill("0.2")
    page.get_by_label("Proteins for the LM loss", exact=True).fill("8")  # 64 took 30 s of this journey
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text("Started run browser-run").wait_for(timeout=60_000)
    import re

    # reload while the job runs: the job goes on (its own process) and the page finds it again
    page.reload()
    # (or already finished: a fast job may end before the reload)
    page.get_by_text(
        re.compile(r"browser-run: (starting|running)|Finished: the run is in the run picker")
    ).first.wait_for(timeout=90_000)

    page.get_by_text(re.compile(r"Finished: the run is in the run picker|browser-run\*\*: failed")).first.wait_for(
        timeout=400_000
    )
    status = (ws / "browser-run" / "status.json").read_text()
    assert '"done"' in status, status
    page.screenshot(path=str(ART / "journey3_training_done.png"), full_page=True)
    page.goto(f"{url}/overview")
    picker = page.get_by_test_id("stSelectbox").first
    picker.wait_for(timeout=60_000)
    picker.click()
    page.get_by_role("option", name="browser-run/L2_resid").click()
    page.get_by_text("Run browser-run/L2_resid").wait_for(timeout=60_000)  # its card opens
    page.screenshot(path=str(ART / "journey3_run_picker.png"), full_page=True)


def _tiny_model(ws: Path) -> str:
    from esmsae.lm.plm import save_initial_esm2

    out = ws / "_model"
    if not out.exists():
        save_initial_esm2(SHARED / "esm2_t6_8M_config", out)
    return str(out)


def test_journey_addresses(server, browser):
    """Every page answers at its own address, "/" included (the overview was "Page not found" at /overview)."""
    url, _ = server
    page = _page(browser)
    for path, heading in (
        ("/overview", "esmsae: sparse autoencoder features"),
        ("/", "esmsae: sparse autoencoder features"),
        ("/groups", "Group comparison"),
        ("/training", "Train an SAE"),
    ):
        page.goto(url + path)
        page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
        assert page.get_by_text("Page not found").count() == 0, path
    assert page.url.endswith("/training")
    page.goto(url + "/")
    page.get_by_role("heading", name="esmsae: sparse autoencoder features").first.wait_for(timeout=90_000)
    assert page.url.rstrip("/").endswith("/overview")  # "/" lands on the overview under its own address


def test_journey_search_description_and_related(server, browser):
    """Search the demo's features by words of their grounded descriptions, open one, read the
    description with its evidence, and open its Related features tab."""
    import re

    url, ws = server
    index = DEMO / "index.duckdb" if (DEMO / "index.duckdb").exists() else ws / "tiny" / "L4_resid" / "index.duckdb"
    run_q = "" if index.parent == DEMO else "?run=tiny/L4_resid"
    con = duckdb.connect(str(index), read_only=True)
    try:
        want = {
            int(r[0])
            for r in con.execute(
                "SELECT feature FROM features WHERE NOT dead AND description ILIKE '%residue detector%'"
            ).fetchall()
        }
        live = int(con.execute("SELECT count(*) FROM features WHERE NOT dead").fetchall()[0][0])
    finally:
        con.close()
    assert want
    page = _page(browser)
    page.goto(f"{url}/features{run_q}")
    _search(page, "residue detector")
    # every word must occur: at least the features whose description says it, far fewer than all live ones
    cap = page.get_by_text(re.compile(r"^\d+ features - click a row"))
    cap.wait_for(timeout=60_000)
    for _ in range(60):  # the caption first shows the unfiltered count, until the search rerun lands
        n = int(cap.inner_text().split()[0])
        if n < live:
            break
        time.sleep(1)
    assert len(want) <= n < live, (n, len(want), live)
    f = min(want)
    page.goto(f"{url}/features?feature={f}" + (run_q.replace("?", "&")))
    page.get_by_role("heading", name=re.compile(rf"^Feature {f}\b")).first.wait_for(timeout=90_000)
    page.get_by_text("residue detector:").first.wait_for(timeout=30_000)  # the description, on the page
    page.get_by_role("tab", name="Related features").click()
    if index.parent == DEMO:  # the demo stores its matches against a second-seed SAE, with the chance level
        page.get_by_text("How often a feature has a counterpart").wait_for(timeout=30_000)
        page.get_by_text("Best matches of this feature in other SAEs").wait_for(timeout=30_000)
    else:
        page.get_by_text("No other SAE matched into this index yet").wait_for(timeout=30_000)
    page.screenshot(path=str(ART / "journey_search_related.png"), full_page=True)


@pytest.mark.parametrize("words, want", [("transmembrane", r"TM helix|TM strand|transmembrane"),
                                         ("signal peptide", r"signal peptide"), ("1776", r"^Feature 1776\b")])
def test_journey_search_ranks_concept_matches_first(server, browser, words, want):
    """A search is ranked by what the user sees: "transmembrane" and "signal peptide" put a feature whose verdict
    names such a concept in the first row (a match first, where one exists: its title names it), a number that
    feature; clicking the first row opens it."""
    url, _ = server
    if not (DEMO / "index.duckdb").exists():
        pytest.skip("needs the demo bundle")
    page = _page(browser)
    page.goto(f"{url}/features")
    _search(page, words)
    page.get_by_text(re.compile("Search looks in what the pages show")).wait_for(timeout=60_000)
    _settled(page)
    grid = page.get_by_test_id("stDataFrame").first
    grid.wait_for(timeout=60_000)
    time.sleep(1)
    bb = grid.bounding_box()
    for _ in range(3):  # the row-selection column, first data row (a click during a rerun can be lost)
        page.mouse.click(bb["x"] + 12, bb["y"] + 35 + 17)
        try:
            page.get_by_role("heading", name=re.compile(r"^Feature \d+")).first.wait_for(timeout=20_000)
            break
        except Exception:
            continue
    head = page.get_by_role("heading", name=re.compile(r"^Feature \d+")).first.inner_text()
    page.screenshot(path=str(ART / f"journey_search_{words.replace(' ', '_')}.png"), full_page=True)
    if words.isdigit():
        assert re.search(want, head), head
    else:  # the title names a match; without one (no feature beats the learned windows) the verdict says why
        from esmsae.index.reader import FeatureIndex

        f = int(re.match(r"Feature (\d+)", head).group(1))
        verdict = FeatureIndex(DEMO / "index.duckdb").verdicts().set_index("feature").at[f, "verdict"]
        assert re.search(want, verdict), verdict
        assert verdict in head or verdict.startswith("no match"), head


def test_journey_truncated_structure_upload_is_flagged(server, browser, shared, tmp_path):
    """The first half of an mmCIF file: analysed for what it holds, with a warning that it is cut short."""
    url, _ = server
    cif = next(p for p in sorted((shared / "structures" / "pdb").iterdir()) if p.suffix == ".cif"
               and p.stat().st_size > 60_000)
    cut = tmp_path / ("half-" + cif.name)
    data = cif.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # ends inside the atom records
    page = _page(browser)
    page.goto(f"{url}/inspector")
    page.get_by_label("Protein sequence or FASTA", exact=True).wait_for(timeout=90_000)
    page.locator("input[type=file]").first.set_input_files(str(cut))
    page.get_by_text(cut.name).first.wait_for(timeout=30_000)
    time.sleep(2)
    warn = page.get_by_text(f"{cut.name} looks truncated")
    for attempt in range(3):
        page.get_by_role("button", name="Analyse").click()
        try:
            warn.wait_for(timeout=60_000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.screenshot(path=str(ART / "journey_truncated_upload.png"), full_page=True)


def test_journey_concurrent_analyse(server, browser):
    """Three sessions press Analyse within a second on the same model: each gets its own features (one
    shared model, forwards serialised by its lock), no 'hooks never fired' and no exception."""
    url, _ = server
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ",
            "MSLLTEVETPIRNEWGCRCNDSSDPLVVAASIIGILHLILWILDRLFFKCIYRFFKHGLKRGPSTEGVPESMREEYRKEQ",
            "GSHMKVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLC"]
    pages = []
    for i, s in enumerate(seqs):
        page = _page(browser)
        page.goto(f"{url}/inspector")
        box = page.get_by_label("Protein sequence or FASTA", exact=True)
        box.wait_for(timeout=90_000)
        box.fill(f">c{i}\n{s}")
        pages.append(page)
    time.sleep(2)
    for page in pages:  # all three within a second
        page.get_by_role("button", name="Analyse").click(no_wait_after=True)
    for i, (page, s) in enumerate(zip(pages, seqs)):
        page.get_by_text(f"{len(s)} residues - protein LM + SAE").wait_for(timeout=180_000)
        page.get_by_text("Features that fire most").wait_for(timeout=60_000)
        assert page.get_by_text("hooks never fired").count() == 0
        assert page.get_by_test_id("stException").count() == 0
    pages[0].screenshot(path=str(ART / "journey_concurrent_analyse.png"), full_page=True)


def _search(page, words: str) -> None:
    """Type `words` into the Feature browser's search box and submit."""
    box = page.get_by_label("Search (description, concept, label, protein name or id, feature id)", exact=True)
    box.wait_for(timeout=90_000)
    box.fill(words)
    box.press("Enter")


def _settled(page) -> None:
    """Wait until the script run has finished (Streamlit's running indicator is gone)."""
    time.sleep(0.3)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=60_000)


def test_journey_pages_on_an_index_without_concepts(server, browser, plain_run):
    """The README's simplest index (no --concepts, no groups, no structures): every page and every tab
    of a feature page opens in the browser without an exception."""
    url, ws = server
    ck = ws / "plain" / "L4_resid"
    if not ck.exists():
        shutil.copytree(plain_run, ck)
    con = duckdb.connect(str(ck / "index.duckdb"), read_only=True)
    f = int(con.execute("SELECT feature FROM features WHERE NOT dead LIMIT 1").fetchall()[0][0])
    con.close()
    page = _page(browser)
    q = "run=plain/L4_resid"
    for path, heading in (("/overview", "esmsae: sparse autoencoder features"), ("/features", "Feature browser"),
                          ("/groups", "Group comparison")):
        page.goto(f"{url}{path}?{q}")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
        _settled(page)
        assert page.get_by_test_id("stException").count() == 0, path
    for tab in ("Top examples", "Activation ranges", "Concepts", "Groups", "Structure", "Related features"):
        page.goto(f"{url}/features?feature={f}&{q}&tab={tab.replace(' ', '+')}")
        page.get_by_role("heading", name=re.compile(rf"^Feature {f}\b")).first.wait_for(timeout=90_000)
        page.get_by_role("tab", name=tab, selected=True).wait_for(timeout=30_000)
        _settled(page)
        assert page.get_by_test_id("stException").count() == 0, tab
    page.screenshot(path=str(ART / "journey_plain_index.png"), full_page=True)


def _unseen_membrane_protein() -> tuple[str, str]:
    """A TMbed alpha-helical membrane protein (>= 2 TM helices, 150-400 residues) that is not in the demo index."""
    import hashlib


    con = duckdb.connect(str(DEMO / "index.duckdb"), read_only=True)
    try:
        seen = {hashlib.md5(s.encode()).hexdigest() for (s,) in con.execute("SELECT sequence FROM proteins").fetchall()}
    finally:
        con.close()
    lines = (ROOT.parent / "shared" / "data" / "tmbed" / "alpha.fasta").read_text().split("\n")
    for i in range(0, len(lines) - 2, 3):
        head, seq, lab = lines[i][1:], lines[i + 1].strip(), lines[i + 2].strip()
        if (150 <= len(seq) <= 400 and len(re.findall(r"H+", lab)) >= 2 and set(seq) <= set("ACDEFGHIKLMNPQRSTVWY")
                and hashlib.md5(seq.encode()).hexdigest() not in seen):
            return head.split("|")[0], seq
    raise AssertionError("no unseen membrane protein in tmbed/alpha.fasta")


def test_journey_unseen_membrane_protein_names_only_matched_concepts(server, browser):
    """An unseen membrane protein in the inspector: each top feature's link says the concept it matches, or
    "no match (best: ..., F1 a vs <rule> b)"; no concept the feature does not match is named beside it."""
    from esmsae.index.reader import FeatureIndex

    if not (DEMO / "index.duckdb").exists():
        pytest.skip("needs the demo bundle")
    url, _ = server
    name, seq = _unseen_membrane_protein()
    page = _inspect(browser, url, name, seq)
    links = page.get_by_role("link", name=re.compile(r"^Open feature \d+"))
    links.first.wait_for(timeout=60_000)
    verdicts = FeatureIndex(DEMO / "index.duckdb").verdicts().set_index("feature")
    texts = [links.nth(i).inner_text() for i in range(links.count())]
    assert len(texts) == 5, texts
    for t in texts:
        f, _, about = t.removeprefix("Open feature ").partition(": ")
        assert about.replace("≥", ">=") == verdicts.at[int(f), "verdict"], t  # links print >= as the sign
        assert about.startswith("no match (best:") or verdicts.at[int(f), "matches"], t
    page.screenshot(path=str(ART / "journey_unseen_membrane_protein.png"), full_page=True)


def test_journey_concepts_tab_names_the_deciding_baseline(server, browser):
    """A feature's Concepts tab: the baseline that beats it on its best concept is on the screen, named, with its
    F1 (it was on no screen); a concept the feature matches reads "match"."""
    from esmsae.index.reader import FeatureIndex

    if not (DEMO / "index.duckdb").exists():
        pytest.skip("needs the demo bundle")
    v = FeatureIndex(DEMO / "index.duckdb").verdicts()
    miss = v[(~v["matches"]) & (v["baseline"] != "") & (v["about"] != "")].sort_values("f1_valid", ascending=False)
    f, r = int(miss.iloc[0]["feature"]), miss.iloc[0]
    url, _ = server
    page = _page(browser)
    page.goto(f"{url}/features?feature={f}&tab=Concepts")
    item = page.get_by_text(re.compile(re.escape(f"{r['about']}: no match, test F1 ") + r"\d\.\d\d against the"
                                       r" deciding baseline " + re.escape(r["baseline"])))
    item.first.wait_for(timeout=90_000)
    page.screenshot(path=str(ART / "journey_concepts_tab.png"), full_page=True)
    from esmsae.index.verdicts import concept_rows

    idx = FeatureIndex(DEMO / "index.duckdb")
    hit = [(int(g), c) for g, c in v[v["matches"]].sort_values("f1_valid", ascending=False)[["feature", "concept"]]
           .itertuples(index=False) if c in set(concept_rows(idx, int(g)).head(3)["concept"])]  # the rows in words
    if hit:
        g, c = hit[0]
        page.goto(f"{url}/features?feature={g}&tab=Concepts")
        page.get_by_text(re.compile(re.escape(f"{c}: match, test F1 ") + r"\d\.\d\d")).first.wait_for(timeout=90_000)


def test_journey_long_paste_shows_progress_and_cancels(server, browser):
    """A 4,000-residue paste shows a progress bar with an estimate at once (the page was blank for minutes),
    and Cancel stops it."""
    if not (DEMO / "index.duckdb").exists():
        pytest.skip("needs the demo bundle")
    url, _ = server
    page = _inspect(browser, url, "warm", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ")  # the model is loaded and measured
    page.get_by_role("button", name="Download activations (CSV)").wait_for(timeout=60_000)
    _settled(page)  # that run has finished drawing
    box = page.get_by_label("Protein sequence or FASTA", exact=True)
    box.fill(">long\n" + ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEV" * 60)[:4000])
    t0 = time.perf_counter()
    page.get_by_role("button", name="Analyse").click()
    bar = page.get_by_text(re.compile(r"^(Analysing 4,000 residues: about \d+ s in all|Waiting for the model)"))
    bar.first.wait_for(timeout=60_000)
    latency = time.perf_counter() - t0
    print(f"progress shown {latency:.2f} s after the click")
    # behaviour, not speed (a loaded CI machine must not fail it): the bar comes while the analysis, which takes
    # minutes for 4,000 residues here, is still running (measured 0.35 s on a quiet machine)
    assert latency < 20, latency
    assert page.get_by_role("button", name="Cancel").is_visible()
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Analysis cancelled.").wait_for(timeout=60_000)
    page.screenshot(path=str(ART / "journey_long_paste_cancelled.png"), full_page=True)
