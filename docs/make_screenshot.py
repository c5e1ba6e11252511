"""Make docs/labelling.png: the labelling page with one group labelled, in headless Chromium.

    .venv/bin/python docs/make_screenshot.py

Samples a small batch from the offline tiny model on its own world's captions (the shapes prompts, "a small
red circle on a noisy blue background"), serves it, labels the first group with the page's keys and
photographs it. Needs Debian's chromium and the playwright package (docs/human-feedback.md).
"""

import tempfile
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from rlft.feedback.label_server import create_app
from rlft.feedback.sample_groups import SampleGroupsConfig, sample_groups

ARGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
ARGS += " --disable-component-update --disable-sync"
OUT = Path(__file__).parent / "labelling.png"

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        folder = sample_groups(SampleGroupsConfig(out=f"{tmp}/batch", groups=6, group_size=4, threads=1))
        server = make_server("127.0.0.1", 0, create_app(folder), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS.split())
            page = browser.new_page(viewport={"width": 1060, "height": 560})
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#annotator", "alice")
            page.keyboard.press("Enter")
            # Image 3 best, image 1 worst, image 4 deformed; submit, then go back to the labelled group.
            for key in ["3", "b", "1", "w", "4", "d", "Enter"]:
                page.keyboard.press(key)
            page.wait_for_selector("#group-title:has-text('Group 2 of 6')")
            for key in ["ArrowLeft", "3"]:
                page.keyboard.press(key)
            page.wait_for_selector("#group-title .done")
            page.screenshot(path=str(OUT))
            browser.close()
        server.shutdown()
    print(f"wrote {OUT}")
