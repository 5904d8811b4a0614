"""The viewer panel end to end in a real browser, on CPU.

`ns-viewer` serves a trained demo run; headless Chromium (Debian's /usr/bin/chromium, driven by
the playwright package: no browser is ever downloaded) opens the page, presses "Click to select"
in the panel, clicks the largest object in the 3D canvas, and the test checks from screenshots
that this object, and only it, is drawn highlighted; then that "selection only" hides the rest;
then that "Save selection" writes a file that the `splatseg export` command shown in the panel
accepts. Screenshots are kept in artifacts/viewer/.

On a busy 2-core machine: generous waits, pixels compared on the inside of regions (viser lowers
the canvas resolution over time when frames are slow, which blurs edges), the viewer's torch on
one thread, and the viewer's process group always killed.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "viewer"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]  # never --disable-software-rasterizer: WebGL runs on SwiftShader here
VIEWPORT = {"width": 1280, "height": 800}
MAX_RES = 512  # nerfstudio's default "Max res": the size of a settled (high-resolution) frame
HIGHLIGHT = np.array([255, 77, 13])  # splatseg_ns.viewer.HIGHLIGHT_COLOUR

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ViewerProcess:
    """`ns-viewer --load-config CONFIG` in its own process group, stopped (the whole group) when done."""

    def __init__(self, config: Path, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        env = dict(os.environ, TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")  # one thread beats two busy cores
        command = [str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(config),
                   "--viewer.websocket-port", str(self.port), "--viewer.websocket-host", "127.0.0.1",
                   "--viewer.image-format", "png"]  # lossless frames: pixels compare exactly
        with log_path.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                            start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_until_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ns-viewer exited ({self.process.returncode}):\n{self.log_tail()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"ns-viewer did not serve within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture()
def viewer(trained_demo_run: Path, tmp_path: Path):
    process = ViewerProcess(trained_demo_run, tmp_path / "ns-viewer.log")
    try:
        process.wait_until_serving()
        yield process
    finally:
        process.stop()
        print(f"ns-viewer log (tail):\n{process.log_tail()}")  # shown when the test fails


class Page:
    """The viewer page: its 3D view as pixels, and its panel."""

    def __init__(self, page):
        self.page = page
        self.box = None  # (x, y, width, height) of the 3D view in page pixels

    def find_view(self) -> None:
        rects = self.page.evaluate(
            "() => Array.from(document.querySelectorAll('canvas')).map(c => { const r = c.getBoundingClientRect();"
            " return [r.x, r.y, r.width, r.height]; })")
        rects = [r for r in rects if r[2] < VIEWPORT["width"] - 100 and r[2] * r[3] > 0]  # not the full-page overlay
        assert rects, "no 3D canvas on the page"
        x, y, w, h = max(rects, key=lambda r: r[2] * r[3])
        self.box = (int(np.ceil(x)), int(np.ceil(y)), int(w) - 1, int(h) - 1)

    def screenshot(self, name: str = "") -> np.ndarray:
        from PIL import Image

        png = self.page.screenshot()
        if name:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / name).write_bytes(png)
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
        x, y, w, h = self.box
        return image[y : y + h, x : x + w]

    def resolution(self) -> tuple:
        match = re.search(r"Resolution: (\d+)x(\d+)px", self.page.inner_text("body"))
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def settled(self, timeout: float = 90) -> np.ndarray:
        """The view once a high-resolution frame has arrived and stays (nerfstudio renders low, then high)."""
        deadline = time.monotonic() + timeout
        last, stable = None, 0
        while time.monotonic() < deadline:
            box = self.box
            self.find_view()  # the page lays out its panel after the first frame: the view's box may still change
            shot = self.screenshot()
            high = MAX_RES in self.resolution()
            same = box == self.box and last is not None and np.abs(shot - last).mean() < 0.5
            stable = stable + 1 if (high and same) else 0
            if stable >= 2:
                return shot
            last = shot
            time.sleep(0.8)
        raise AssertionError(f"the view did not settle within {timeout} s (resolution {self.resolution()})")

    def wait_for(self, condition, what: str, timeout: float = 90) -> np.ndarray:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shot = self.screenshot()
            if condition(shot):
                return shot
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def input_value(self, label: str) -> str:
        """The value of the panel's input labelled `label` (viser's text inputs are not tied to their labels)."""
        value = self.page.evaluate(
            """(label) => {
                const found = Array.from(document.querySelectorAll('label')).find(l => l.textContent.trim() === label);
                for (let row = found; row; row = row.parentElement) {
                    const input = row.querySelector('input');
                    if (input) return input.value;
                }
                return null;
            }""", label)
        assert value is not None, f"no input labelled {label!r} in the panel"
        return value

    def panel_text(self, label: str) -> str:
        """What the panel says after `label:` (its status lines are markdown)."""
        match = re.search(rf"^{re.escape(label)}:\s*(.*)$", self.page.inner_text("body"), re.MULTILINE)
        assert match, f"the panel shows no {label!r}"
        return match.group(1).strip()


def differs(a: np.ndarray, b: np.ndarray, tolerance: int = 60) -> np.ndarray:
    return np.abs(a - b).sum(-1) > tolerance


@pytest.mark.timeout(300, method="signal")  # a backstop; the test takes about a minute
def test_click_an_object_in_the_browser_then_show_save_and_export_it(viewer, trained_demo_run: Path):
    from playwright.sync_api import sync_playwright
    from scipy import ndimage

    run_dir = trained_demo_run.parent
    for leftover in run_dir.glob("selection*"):
        leftover.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(90_000)
            page.goto(viewer.url, wait_until="domcontentloaded")  # the page's analytics and logo fail offline
            page.wait_for_function("() => /Resolution: [1-9]/.test(document.body.innerText)")  # first frame
            view = Page(page)
            scene = view.settled()
            box = view.box
            view.screenshot("01_scene.png")

            # The largest object, clicked deepest inside. Objects are saturated; the background, the camera
            # frustums and their thumbnails are not (or are tiny).
            background = np.array([np.bincount(scene[..., c].ravel() + 0).argmax() for c in range(3)])
            saturated = (scene.max(-1) - scene.min(-1)) > 60
            foreground = differs(scene, background, 80) & saturated
            foreground[-110:, :110] = False  # the axes gizmo
            labels, count = ndimage.label(foreground)
            assert count > 1, "fewer than two objects in view"
            sizes = ndimage.sum(foreground, labels, range(1, count + 1))
            target = labels == 1 + int(np.argmax(sizes))
            assert target.sum() > 300, f"the largest object covers only {target.sum()} pixels"
            depth = ndimage.distance_transform_edt(target)
            y, x = np.unravel_index(np.argmax(depth), depth.shape)
            # Insides only: when viser lowers the canvas resolution, edges blur and move by a pixel or two.
            erode, dilate = ndimage.binary_erosion, ndimage.binary_dilation
            target_core = erode(target, iterations=3)
            others_core = erode(foreground & ~dilate(target, iterations=6), iterations=5)
            background_core = erode(~dilate(differs(scene, background, 30), iterations=4), iterations=2)
            assert others_core.sum() > 100, "no other object in view to stay unchanged"

            page.get_by_role("button", name="Click to select").click()
            page.wait_for_function(  # viser's sign that the scene takes clicks
                "() => Array.from(document.querySelectorAll('canvas')).some(c => c.style.cursor === 'pointer')")
            page.mouse.click(view.box[0] + int(x), view.box[1] + int(y))
            view.wait_for(lambda shot: differs(shot, scene)[target_core].mean() > 0.3, "the clicked object to change")
            page.wait_for_function("() => /Gaussians selected/.test(document.body.innerText)")
            highlighted = view.settled()
            page.get_by_text("splatseg", exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")  # the panel
            view.screenshot("02_clicked_highlighted.png")

            assert view.box == box, "the page's layout changed"
            changed = differs(highlighted, scene)
            assert changed[target_core].mean() > 0.5, "the clicked object is not drawn differently"
            toward = np.abs(highlighted - HIGHLIGHT).sum(-1) < np.abs(scene - HIGHLIGHT).sum(-1)
            assert toward[target_core & changed].mean() > 0.9, "the clicked object is not tinted with the highlight"
            assert changed[others_core].mean() < 0.1, "other objects changed too"
            assert changed[background_core].mean() < 0.01, "the background changed"
            status = view.panel_text("Status")
            assert re.match(r"\d+ of \d+ Gaussians selected \(coarse\)", status), status
            assert re.match(r"[\d.]+ ms = the pixel's Gaussians [\d.]+ ms", view.panel_text("Click time"))

            page.get_by_label("Show", exact=True).click()
            page.get_by_role("option", name="selection only").click()
            is_background = lambda shot: ~differs(shot, background, 30)  # noqa: E731
            only = view.wait_for(lambda shot: is_background(shot)[others_core].mean() > 0.8, "the others to vanish")
            only = view.settled()
            view.screenshot("03_selection_only.png")
            assert is_background(only)[others_core].mean() > 0.8, "'selection only' still shows other objects"
            assert is_background(only)[target_core].mean() < 0.2, "'selection only' hides the clicked object"

            page.get_by_role("button", name="Save selection").click()
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('input')).some(i => i.value.startsWith('splatseg export'))")
            command = view.input_value("Export command")
            view.screenshot("04_saved.png")
        finally:
            browser.close()
    viewer.stop()  # frees the CPU for the export

    selection = run_dir / "selection.json"
    assert selection.exists(), f"Save selection wrote nothing into {run_dir}"
    arguments = shlex.split(command)
    assert arguments[:2] == ["splatseg", "export"] and str(selection) in arguments
    output = Path(arguments[arguments.index("--output") + 1])
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1")
    result = subprocess.run([str(Path(sys.executable).parent / "splatseg"), *arguments[1:]], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from splatseg_ns.core.io.ply import read_gaussians_ply
    from splatseg_ns.core.io.selection_file import read_selection

    exported = read_gaussians_ply(output)
    assert 0 < len(exported["x"]) <= len(read_selection(selection).indices)
    for leftover in (selection, output):
        leftover.unlink()
