"""WebSocketSource: the viewer's frame source on a live stream (what `mm2face-view ws://...` uses)."""
import asyncio
import threading
import time

import numpy as np
import pytest

from mm2face.realtime.server import Hub, serve_hub
from mm2face.realtime.ws_source import WebSocketSource

pytestmark = pytest.mark.timeout(60)


def test_ws_source_plays_out_live_frames_then_closes():
    import torch
    torch.set_num_threads(1)
    from mm2face.engine.model import MM2Face
    from mm2face.engine.session import StreamConfig, StreamSession
    model = MM2Face.random(seed=0, small=True).eval()
    ready, done = threading.Event(), threading.Event()
    info = {}

    def server_thread():
        async def run():
            hub = Hub(lambda style: StreamSession(model, StreamConfig(), style=style))
            live = await hub.create_session("default", style="calm")
            async with serve_hub(hub, "127.0.0.1", 0) as srv:
                info["url"], info["live"], info["loop"] = f"ws://127.0.0.1:{srv.port}", live, asyncio.get_running_loop()
                ready.set()
                while not info.get("go"):
                    await asyncio.sleep(0.01)
                rng = np.random.default_rng(0)
                frames = []
                for _ in range(25):                                   # 2 s of audio at real-time pace
                    frames += await live.push_audio((0.1 * rng.standard_normal(1280)).astype(np.float32))
                    await asyncio.sleep(0.08)
                await live.set_style("happy")
                frames += await live.end()
                info["n"], info["t_last"] = len(frames), frames[-1].t_audio_s    # what the source must show
                while not done.is_set():
                    await asyncio.sleep(0.01)
        asyncio.run(run())

    th = threading.Thread(target=server_thread, daemon=True)
    th.start()
    assert ready.wait(30)
    src = WebSocketSource(info["url"])
    assert src.latest() is None and not src.closed and src.style == "calm"
    info["go"] = True
    shown = []
    deadline = time.time() + 30                                   # bounds a failure only
    while not (shown and "t_last" in info and shown[-1][1] >= info["t_last"] - 1e-6):  # until the last frame shows
        assert time.time() < deadline, f"the last frame was not shown ({len(shown)} shown)"
        x = src.latest()
        if x is not None:
            shown.append(x)
        time.sleep(0.02)                                          # a viewer's render tick
    frame, t, style = shown[-1]
    assert frame.shape == (56,) and frame.dtype == np.float32
    ts = sorted({s[1] for s in shown})
    assert len(ts) >= 40 and np.all(np.diff(ts) > 0)          # played out in order, most frames shown
    assert style == "happy" and src.frames_received == info["n"] >= 50
    done.set()
    th.join(10)
    deadline = time.time() + 10
    while not src.closed and time.time() < deadline:
        time.sleep(0.05)
    assert src.closed
