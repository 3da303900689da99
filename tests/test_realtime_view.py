"""`mm2face-live --view` opens the viewer window on the live stream (on a virtual X display)."""
import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(150)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_opens_a_viewer_that_subscribes_to_the_stream(xvfb_env):
    from websockets.asyncio.client import connect
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mm2face.realtime.cli", "--view", "--random-model", "--port",
                             str(port), "--threads", "1", "--quiet", "--style", "calm"], env=xvfb_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def viewer_subscribed() -> dict:
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                async with connect(f"ws://127.0.0.1:{port}") as ws:
                    while time.time() < deadline:
                        await ws.send(json.dumps({"type": "stats", "session": "default"}))
                        st = json.loads(await ws.recv())
                        if st["session"]["subscribers"] >= 1 and st["session"]["frames"] > 0:
                            return st
                        await asyncio.sleep(0.5)
            except OSError:
                await asyncio.sleep(0.5)
        raise AssertionError("the viewer never subscribed to the stream")

    try:
        st = asyncio.run(viewer_subscribed())
        assert st["server"]["clients"] >= 2               # the viewer and us
        assert st["client"]["dropped_frames"] == 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "mm2face-live: serving" in err
