"""Suite-wide fixtures."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolate_torch_global_state():
    """CLIs run in-process switch autograd off and change thread counts for the whole process;
    put both back so that the next test (a trainer, say) sees torch's defaults."""
    import torch
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    torch.set_grad_enabled(grad)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def xvfb_env():
    """Environment for a child process with a virtual X display (Xvfb); skips where Xvfb is missing."""
    import shutil
    import subprocess
    import time
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb) - the window cannot be tested headless")
    display = f":{90 + os.getpid() % 100}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def ready() -> bool:                                       # our Xvfb holds the display and listens
        try:
            with open(f"/tmp/.X{display[1:]}-lock") as f:
                mine = int(f.read().strip() or 0) == proc.pid
        except (OSError, ValueError):
            return False
        return mine and os.path.exists(f"/tmp/.X11-unix/X{display[1:]}")
    deadline = time.monotonic() + 10                           # bounds a failure only
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ready():
        proc.kill()
        pytest.skip(f"Xvfb could not start on {display}")
    env = dict(os.environ, DISPLAY=display)
    env.pop("WAYLAND_DISPLAY", None)
    yield env
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def default():
    """The shipped default checkpoint (skips where there is none), on one CPU thread."""
    import torch

    from mm2face.engine.model import default_checkpoint_path, load_model
    if not default_checkpoint_path().exists():
        pytest.skip("no default checkpoint")
    torch.set_num_threads(1)
    return load_model()

