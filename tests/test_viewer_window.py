"""The GLFW window path, on a virtual X display (skipped where Xvfb is not installed)."""
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from mm2face.engine.flame import load_head
from mm2face.viewer.demo_clip import demo_motion
from mm2face.viewer.source import ClipSource


@pytest.fixture
def xvfb_display(monkeypatch):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb) - the window cannot be tested headless")
    display = f":{90 + os.getpid() % 100}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.skip(f"Xvfb could not start on {display}")
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    yield display
    proc.terminate()
    proc.wait(timeout=10)


def test_window_draws_frames_from_a_source(xvfb_display):
    from mm2face.viewer.window import run_window

    class Counting(ClipSource):
        calls = 0

        def latest(self):
            Counting.calls += 1
            return super().latest()

    src = Counting(demo_motion(1.0), style="window test")
    n = run_window(src, load_head("standin"), size=(160, 160), style_overlay=True, max_seconds=1.5)
    assert n >= 2                          # it drew frames...
    assert Counting.calls >= n             # ...asking the source for each one


def test_window_shows_nothing_until_the_source_has_a_frame(xvfb_display):
    from mm2face.viewer.window import run_window

    class Empty:
        closed = False

        def latest(self):
            return None

    assert run_window(Empty(), load_head("standin"), size=(64, 64), max_seconds=0.5) == 0
