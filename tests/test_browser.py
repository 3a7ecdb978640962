"""The explorers in a real JupyterLab, driven through Debian's Chromium by Playwright.

The test executes ``notebooks/02_explore_runs.ipynb`` headless (as ``clipad run`` does, HTML
export included), starts JupyterLab on 127.0.0.1 with a token, opens the executed copy (whose
widgets must already show, from the state saved in it), runs it again in the browser and then
uses its widgets: a key press on the sample slider changes the
methods' picture, a click on a scatter point pins that sample, a click on a run-browser cell shows
that run. Screenshots go to ``results/browser/``.

Playwright cannot download a browser here, so it drives ``/usr/bin/chromium`` (or
``$CLIPAD_CHROMIUM``). Without Chromium or the ``playwright`` package the browser part is skipped
(the headless execution still runs), unless ``CLIPAD_REQUIRE_BROWSER=1`` (set by ``.ci/run``,
which installs Chromium) makes that a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clipad_lib import paths
from clipad_lib.runner import NOTEBOOKS_DIR, execute_notebook, notebook_parameters

SCREENSHOTS = paths.REPO_ROOT / "results" / "browser"
NOTEBOOK = "02_explore_runs"
# A quicker grid than the profile's: two categories, two shots (the widgets are what is tested).
OVERRIDES = {"categories": ["pill", "weave"], "shots": 2, "patch_images": 2, "shown_images": 4,
             "embedding_images": 10}
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CLIPAD_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _browser_or_skip() -> str:
    """Chromium's path, or a skip (a failure under CLIPAD_REQUIRE_BROWSER=1) saying what is missing."""
    chromium = _chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[test]')"
    else:
        reason = None if chromium else "no Chromium found (apt-get install chromium, or set CLIPAD_CHROMIUM)"
    if reason:
        if os.environ.get("CLIPAD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CLIPAD_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"{reason}; the notebook itself ran headless")
    return chromium


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_lab(root: Path, settings: Path, port: int, token: str, log) -> subprocess.Popen:
    """JupyterLab serving ``root``; its user settings (cells rendered even when off screen, no
    news or update checks, which would reach for the network) live in ``settings``."""
    for plugin, values in (("@jupyterlab/notebook-extension/tracker", {"windowingMode": "none"}),
                           ("@jupyterlab/apputils-extension/notification", {"fetchNews": "false",
                                                                             "checkForUpdates": False})):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    environment = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
                   "JUPYTERLAB_WORKSPACES_DIR": str(settings / "workspaces")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly"]
    if os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"JupyterLab did not answer on port {port} within 60 s; see {log.name}")


def _image_source(locator) -> str:
    return locator.evaluate("element => element.getAttribute('src') || ''")


def _wait_for_new_picture(page, image, before: str) -> None:
    """Wait until the <img> of an ipywidgets.Image shows another PNG than ``before`` and has drawn it."""
    page.wait_for_function("([element, before]) => element.getAttribute('src') !== before && element.complete "
                           "&& element.naturalWidth > 0", arg=[image.element_handle(), before], timeout=15_000)


def test_the_explorers_render_and_respond_in_jupyterlab(tmp_path, synthetic_root):
    started = time.monotonic()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    results = tmp_path / "results"
    notebook = NOTEBOOKS_DIR / f"{NOTEBOOK}.ipynb"
    parameters = notebook_parameters(notebook, "smoke", OVERRIDES, False, results)
    executed = execute_notebook(notebook, parameters, results, progress=False)
    assert executed.ok, executed.error
    exported = (results / f"{NOTEBOOK}.html").read_text()
    assert "application/vnd.jupyter.widget-state+json" in exported and "clipad-embedding-explorer" in exported
    chromium = _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    port, token = _free_port(), "clipad-browser-test"
    with open(tmp_path / "jupyterlab.log", "w") as log:
        server = _start_lab(results, tmp_path / "lab-settings", port, token, log)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                     args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
                expect(page.locator(".jp-Toolbar-kernelName").first).to_contain_text("Python 3", timeout=60_000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
                # Opened, before anything runs: the executed copy's widgets are drawn from the widget
                # state papermill saved in it (the notebook is trusted: the runner signed it).
                for name in ("clipad-method-explorer", "clipad-embedding-explorer", "clipad-run-browser"):
                    expect(page.locator(f".{name}").first).to_be_attached(timeout=30_000)
                saved = page.locator(".clipad-method-explorer img").first
                saved.scroll_into_view_if_needed()
                page.wait_for_function("element => element.complete && element.naturalWidth > 0",
                                       arg=saved.element_handle(), timeout=15_000)
                assert page.get_by_text("Error displaying widget").count() == 0
                page.screenshot(path=SCREENSHOTS / "01_opened.png")

                # Run every cell again in this kernel: the widgets must come back live.
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='busy']", timeout=30_000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
                maps = page.locator(".clipad-method-explorer").last
                scatter = page.locator(".clipad-embedding-explorer").last
                runs = page.locator(".clipad-run-browser").last
                for widget in (maps, scatter, runs):
                    expect(widget).to_be_visible(timeout=30_000)
                assert page.get_by_text("Error displaying widget").count() == 0
                page.screenshot(path=SCREENSHOTS / "02_ran.png", full_page=True)

                # The method explorer: → on the focused sample slider shows the next sample.
                picture = maps.locator("img").first
                before = _image_source(picture)
                assert before
                maps.locator(".noUi-handle").first.focus()
                page.keyboard.press("ArrowRight")
                expect(maps.locator(".widget-readout").first).to_have_text("1", timeout=15_000)
                _wait_for_new_picture(page, picture, before)
                maps.screenshot(path=SCREENSHOTS / "03_methods_next_sample.png")

                # The embedding explorer, switched to t-SNE: hovering a point names its sample, and a
                # click on it pins that sample's pictures.
                scatter.locator(".widget-dropdown", has_text="projection").locator("select").select_option(label="t-SNE")
                expect(scatter.locator("svg text", has_text="t-SNE").first).to_be_visible(timeout=30_000)
                points = scatter.locator("svg .dot")
                assert points.count() > 10
                hovered = scatter.locator(".widget-html", has_text="hover").first
                placeholder = hovered.inner_text()
                points.nth(7).hover(force=True)
                expect(hovered).not_to_have_text(placeholder, timeout=15_000)
                sample = hovered.inner_text().removeprefix("hover: ")
                _wait_for_new_picture(page, scatter.locator(".clipad-hover-picture img, img.clipad-hover-picture").first, "")
                pinned_picture = scatter.locator(".clipad-pinned-picture img, img.clipad-pinned-picture").first
                before = _image_source(pinned_picture)
                points.nth(7).click(force=True)
                expect(scatter.locator(".widget-html", has_text="pinned").first).to_have_text(f"pinned: {sample}",
                                                                                             timeout=15_000)
                _wait_for_new_picture(page, pinned_picture, before)
                scatter.screenshot(path=SCREENSHOTS / "04_embedding_pinned.png")

                # The run browser: another cell shows that run's record.
                cells = runs.locator("button.jupyter-button")
                assert cells.count() >= 2
                details = runs.locator(".widget-html").filter(has_text="timings").first
                shown, worst = details.inner_text(), runs.locator("img").first
                before = _image_source(worst)
                cells.nth(cells.count() - 1).click()
                page.wait_for_function("([element, before]) => element.innerText !== before",
                                       arg=[details.element_handle(), shown], timeout=15_000)
                _wait_for_new_picture(page, worst, before)
                runs.screenshot(path=SCREENSHOTS / "05_run_browser.png")
                browser.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    assert not errors, f"JavaScript console errors: {errors}"
    elapsed = time.monotonic() - started
    print(f"browser test: {elapsed:.0f} s (headless execution, JupyterLab, a run in the browser, the checks)")
    # About 75 s alone on 2 cores; the bound catches a wait that hangs, with room for a loaded CI machine.
    assert elapsed < 180, f"the browser test took {elapsed:.0f} s"
