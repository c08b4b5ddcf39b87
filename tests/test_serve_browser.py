"""siamjax-serve end to end: the command started as a user starts it, its page driven in headless
Chromium (Debian's package, through Playwright): enrol a writer from two scans, verify a genuine
and a forged scan, read the decisions off the page, and compare them with siamjax-verify's.

Uses real scans where $SIAMJAX_DATA_DIR has them, else synthetic ones. The page's screenshot goes
to $SIAMJAX_SERVE_SCREENSHOT when set (the README's docs/serve.png), and $SIAMJAX_SERVE_WORKDIR
serves another workdir than the session's tiny one and $SIAMJAX_SERVE_SCANS other scans (for
that screenshot; README.md has the command).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from siamjax import verify
from siamjax.datasets.synthetic import generator as synthetic

pytest.importorskip("fastapi", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("SIAMJAX_CHROMIUM", "/usr/bin/chromium")
# As the machine's notes prescribe: no sandbox as root, and no background connections (this
# machine's closed network refuses them, many at a time).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, list[str]]:
    """{"references": two genuine scans, "genuine": another, "forged": a skilled forgery};
    $SIAMJAX_SERVE_SCANS (four paths, comma-separated, in that order) chooses them."""
    chosen = os.environ.get("SIAMJAX_SERVE_SCANS")
    if chosen:
        ref1, ref2, genuine, forged = chosen.split(",")
        return {"references": [ref1, ref2], "genuine": [genuine], "forged": [forged]}
    root = pathlib.Path(os.environ.get("SIAMJAX_DATA_DIR", "/nonexistent"), "originals")
    genuine_dir, forged_dir = root / "sigcomp2011/train/001", root / "sigcomp2011/train/001_forg"
    if genuine_dir.is_dir() and forged_dir.is_dir():
        genuine = sorted(str(p) for p in genuine_dir.iterdir())
        forged = sorted(str(p) for p in forged_dir.iterdir())
        return {"references": genuine[:2], "genuine": genuine[2:3], "forged": forged[:1]}
    d = tmp_path_factory.mktemp("browser_scans")
    paths = {}
    for name, render in (
        ("ref1", lambda w: synthetic.render_genuine(w, 0, 90, 150, 5, 0)),
        ("ref2", lambda w: synthetic.render_genuine(w, 1, 90, 150, 5, 0)),
        ("genuine", lambda w: synthetic.render_genuine(w, 2, 90, 150, 5, 0)),
        (
            "forged",
            lambda w: synthetic.render_genuine(synthetic.make_writer(5, 1), 0, 90, 150, 5, 1),
        ),
    ):
        page = np.full((130, 210), 255, np.uint8)
        page[20:110, 30:180] = 255 - render(synthetic.make_writer(5, 0))[..., 0]
        paths[name] = str(d / f"{name}.png")
        Image.fromarray(page).save(paths[name])
    return {
        "references": [paths["ref1"], paths["ref2"]],
        "genuine": [paths["genuine"]],
        "forged": [paths["forged"]],
    }


@pytest.fixture(scope="module")
def workdir(request) -> str:
    return os.environ.get("SIAMJAX_SERVE_WORKDIR") or request.getfixturevalue("tiny_run")[1]


@pytest.fixture(scope="module")
def server(workdir, tmp_path_factory):
    """`python -m siamjax.serve` (what the siamjax-serve script runs) on a free loopback port."""
    port = _free_port()
    db = tmp_path_factory.mktemp("browser_db") / "enrolment.sqlite"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    log = open(db.parent / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "siamjax.serve", "--workdir", workdir, "--port", str(port)]
        + ["--db", str(db)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                assert json.load(r)["status"] == "ok"
            break
        except OSError:
            log.seek(0)
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"siamjax-serve did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (.ci/run installs Debian's chromium package)")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")),  # A fresh user-data dir.
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(60_000)
        yield context.new_page()
        context.close()


def test_enrol_and_verify_in_a_real_browser(server, browser_page, scans, workdir, tmp_path):
    page = browser_page
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('checkpoint step')")

    page.fill("#enrol-writer", "writer A")
    page.set_input_files("#enrol-files", scans["references"])
    page.wait_for_function("document.querySelectorAll('#enrol-previews img').length === 2")
    page.wait_for_function(
        "[...document.querySelectorAll('#enrol-previews img')].every(i => i.naturalWidth > 0)"
    )
    page.click("#enrol-button")
    page.wait_for_selector("#enrol-status:has-text('Enrolled writer A: 2 added')")
    assert page.inner_text("#writers tr[data-writer='writer A'] td:nth-child(2)") == "2"

    config = verify.load_config(workdir)
    verifier = verify.Verifier(workdir, fusion=verify.config_fusion(config))
    shown = {}
    for i, kind in enumerate(("genuine", "forged")):
        page.set_input_files("#questioned-file", scans[kind])
        page.wait_for_selector("#questioned-previews img")
        page.select_option("#verify-writer", "writer A")
        page.click("#verify-button")
        page.wait_for_function(f"document.querySelectorAll('#history li').length === {i + 1}")
        decision = page.inner_text("#decision").strip().lower()
        score = float(page.inner_text("#score").split()[0])
        shown[kind] = (decision, score)
        expected = verifier.verify(scans["references"], scans[kind][0])
        assert decision == expected.decision, (kind, decision, expected)
        assert score == pytest.approx(expected.score, abs=1e-4)
        assert page.inner_text("#fusion").strip() == f"{verifier.fusion} of 2"
        threshold = float(page.inner_text("#threshold"))
        assert threshold == pytest.approx(expected.threshold, abs=1e-4)
    history = page.locator("#history li").all_inner_texts()
    assert [h.split(": ")[1].split()[0] for h in history] == [shown[k][0] for k in shown]
    screenshot = os.environ.get("SIAMJAX_SERVE_SCREENSHOT")
    page.screenshot(path=screenshot or str(tmp_path / "serve.png"), full_page=True)
