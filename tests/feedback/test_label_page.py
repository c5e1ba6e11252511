"""The labelling page in a real browser: Debian's Chromium driven by Playwright (no `playwright install`);
then one training round on the labels it stored."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.diffusion.policy import ADAPTER_FILE
from rlft.feedback.human import labelled_items
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.feedback.sample_groups import SampleGroupsConfig, sample_groups
from rlft.training import train_on_labels

CHROMIUM = Path("/usr/bin/chromium")
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
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"),
]


def start_server(folder: Path, log: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    """`jobs/label.py <folder> --port N` in its own process (0: a free port); returns it and its URL."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "label.py"), str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )
    for line in process.stdout:
        if "http://" in line:
            return process, line.split()[-1]
    raise AssertionError(f"the server printed no URL: {log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def test_labelling_a_batch_with_clicks_and_keys_survives_a_restart(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    folder = sample_groups(
        SampleGroupsConfig(out=str(tmp_path / "batch"), groups=3, group_size=3, num_steps=2), log=print
    )
    server, url = start_server(folder, tmp_path / "server.log")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            expect = sync_api.expect
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#annotator", "alice")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text("0 / 3 labelled")

            # Group 1 by keyboard: image 2 best, image 3 worst, image 1 deformed.
            for key in ["2", "b", "3", "w", "1", "d", "Enter"]:
                page.keyboard.press(key)
            expect(page.locator("#progress")).to_have_text("1 / 3 labelled")
            expect(page.locator("#group-title")).to_contain_text("Group 2 of 3")

            # Group 2 by mouse: image 1 best, image 2 worst, image 3 unsafe.
            page.click(".card[data-image=g0001-0] .best")
            page.click(".card[data-image=g0001-1] .worst")
            page.click(".card[data-image=g0001-2] .unsafe")
            page.click("#submit")
            expect(page.locator("#progress")).to_have_text("2 / 3 labelled")

            # Group 3: a best without a worst is refused with the server's reason, then fixed.
            for key in ["1", "b", "Enter"]:
                page.keyboard.press(key)
            expect(page.locator("#message")).to_contain_text("Not saved: choose both best and worst")
            expect(page.locator("#progress")).to_have_text("2 / 3 labelled")
            for key in ["2", "w", "Enter"]:
                page.keyboard.press(key)
            expect(page.locator("#progress")).to_have_text("3 / 3 labelled")

            stop(server)
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            server, _ = start_server(folder, tmp_path / "server.log", port)  # same address: same page
            page.reload()
            page.wait_for_selector("body[data-ready=true]")
            expect(page.locator("#progress")).to_have_text("3 / 3 labelled")  # the name is remembered
            expect(page.locator("#group-title")).to_contain_text("labelled")
            card = page.locator
            expect(card(".card[data-image=g0000-1]")).to_have_class(re.compile(r"\bis-best\b"))
            expect(card(".card[data-image=g0000-2]")).to_have_class(re.compile(r"\bis-worst\b"))
            expect(card(".card[data-image=g0000-0]")).to_have_class(re.compile(r"\bis-deformed\b"))
            page.keyboard.press("ArrowRight")
            expect(card(".card[data-image=g0001-2]")).to_have_class(re.compile(r"\bis-unsafe\b"))
            browser.close()
    finally:
        stop(server)

    samples, labels = labelled_items(folder)
    pairs = list(zip(labels["index_w"].tolist(), labels["index_l"].tolist(), strict=True))
    # group 0: 1 best, 2 worst, 0 deformed (below both); group 1: 3 best, 4 worst, 5 unsafe (below both);
    # group 2: 6 best, 7 worst, 8 in between.
    assert pairs == [(1, 0), (2, 0), (1, 2), (3, 4), (3, 5), (4, 5), (6, 7), (6, 8), (8, 7)]
    assert (labels["ties"], labels["annotators"]) == (0, ["alice"])
    assert samples["latents"].shape[0] == 9

    # One training round on them: the 9 pairs x 2 steps, one pass, an adapter to sample the next round from.
    lines = []
    cfg = D3POLabelsConfig(
        batch=str(folder), epochs=1, batch_size=6, ray=False, runs_dir=str(tmp_path / "runs")
    )
    adapter = train_on_labels(cfg, log=lines.append)
    assert lines[0].startswith("9 pairs (0 ties) from 1 annotator(s)") and lines[1].startswith("epoch   0")
    assert (adapter / ADAPTER_FILE).is_file()
