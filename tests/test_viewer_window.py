"""The GLFW window path, on a virtual X display (skipped where Xvfb is not installed).

Each check runs in a fresh Python process: a process that already made a headless EGL context (the
render tests do) must not also open a GLX window - Mesa/Xlib end such a process.
"""
import subprocess
import sys


WINDOW_SCRIPT = r"""
import sys
from mm2face.engine.flame import load_head
from mm2face.viewer.demo_clip import demo_motion
from mm2face.viewer.source import ClipSource
from mm2face.viewer.window import run_window

class Counting(ClipSource):
    calls = 0
    def latest(self):
        Counting.calls += 1
        return super().latest()

class Empty:
    closed = False
    def latest(self):
        return None

if sys.argv[1] == "clip":
    src = Counting(demo_motion(1.0), style="window test")
    n = run_window(src, load_head("standin"), size=(160, 160), style_overlay=True, max_seconds=1.5)
    print(n, Counting.calls)
else:
    print(run_window(Empty(), load_head("standin"), size=(64, 64), max_seconds=0.5), 0)
"""


def _run(env, mode):
    out = subprocess.run([sys.executable, "-c", WINDOW_SCRIPT, mode], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n, calls = (int(x) for x in out.stdout.split()[-2:])
    return n, calls


def test_window_draws_frames_from_a_source(xvfb_env):
    n, calls = _run(xvfb_env, "clip")
    assert n >= 2                          # it drew frames...
    assert calls >= n                      # ...asking the source for each one


def test_window_shows_nothing_until_the_source_has_a_frame(xvfb_env):
    n, _ = _run(xvfb_env, "empty")
    assert n == 0
