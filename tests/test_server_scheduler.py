"""The server runs the engine's one scheduler (engine/batching.py SessionBatcher): its frames carry the
timing their session recorded, and a session whose hop raises is closed without harming the others.
Arrival times are made up (no sleeps); the port comes from the OS."""
import json

import numpy as np
import pytest
from realtime_helpers import is_type, recv_until, speechy

from mm2face.engine.batching import SessionBatcher
from mm2face.engine.frame import SAMPLES_PER_FRAME
from mm2face.realtime.server import Hub, serve_hub


@pytest.fixture(scope="module")
def model():
    import torch
    torch.set_num_threads(1)
    from mm2face.engine.model import MM2Face
    return MM2Face.random(seed=0, small=True).eval()


def _session_class():
    from mm2face.engine.session import StreamSession

    class BreakableSession(StreamSession):
        """A session whose next hop raises once ``broken`` is set (before the hop changes any state)."""
        broken = False

        def _samples(self, a, b):
            if self.broken:
                raise RuntimeError("a broken session")
            return super()._samples(a, b)
    return BreakableSession


async def test_server_frames_carry_the_session_recorded_timing(model):
    from websockets.asyncio.client import connect

    from mm2face.engine.session import StreamConfig, StreamSession
    hub = Hub(lambda style: StreamSession(model, StreamConfig(), style=style))
    live = await hub.create_session("x")
    assert isinstance(hub.batcher, SessionBatcher) and live.session in [hub.batcher.session(k)
                                                                        for k in hub.batcher.keys()]
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "session": "x", "format": "json"}))
        await recv_until(ws, is_type("subscribed"))
        a = speechy(1.0, seed=7)
        t0 = 1000.0                                          # made-up arrival clock: chunk j arrived at t0 + j
        for j, i in enumerate(range(0, len(a), SAMPLES_PER_FRAME)):
            await live.push_audio(a[i:i + SAMPLES_PER_FRAME], arrival_time=t0 + j)
        await live.end()
        frames = []
        while not frames or not frames[-1].get("final"):
            m, _ = await recv_until(ws, is_type("frame"))
            frames.append(m)
    s = live.session
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    talk = [f for f in frames if f["seq"] < 25]
    assert len(talk) == 25
    for f in talk:
        assert f["audio_arrival_time"] == pytest.approx(t0 + f["seq"])          # its own chunk's arrival
        need = s.spt * (f["seq"] // s.down + 1) + s.look                         # samples its token read
        if need <= len(a):                                                        # (else end()'s padding)
            assert f["input_ready_time"] == pytest.approx(t0 + (need - 1) // SAMPLES_PER_FRAME)
    assert sum(s.spt * (f["seq"] // s.down + 1) + s.look <= len(a) for f in talk) >= 20
    assert all(f["audio_arrival_time"] is None for f in frames if f["seq"] >= 25)   # end() padding
    assert frames[-1]["final"] and sum(bool(f.get("final")) for f in frames) == 1


async def test_a_session_whose_hop_raises_is_closed_and_the_others_go_on(model):
    from websockets.asyncio.client import connect

    from mm2face.engine.session import StreamConfig
    cls = _session_class()
    hub = Hub(lambda style: cls(model, StreamConfig(), style=style))
    good = await hub.create_session("good")
    bad = await hub.create_session("bad")
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        for name in ("good", "bad"):
            await ws.send(json.dumps({"type": "subscribe", "session": name}))
            await recv_until(ws, is_type("subscribed"))
        a = speechy(2.0, seed=8)
        half = len(a) // 2
        for live in (good, bad):
            await live.push_audio(a[:half])
        bad.session.broken = True
        import asyncio
        got = await asyncio.gather(good.push_audio(a[half:]), bad.push_audio(a[half:]), return_exceptions=True)
        assert isinstance(got[0], list) and len(got[0]) >= 20          # good: its frames, as usual
        assert type(got[1]).__name__ == "SessionClosed"
        closed, _ = await recv_until(ws, lambda m: m.get("type") == "session_closed")
        assert closed["session"] == "bad" and closed["reason"].startswith("engine error")
        assert "bad" not in hub.sessions and "good" in hub.sessions
        more = await good.push_audio(speechy(0.4, seed=9))             # and it keeps going
        assert more and more[0].seq == got[0][-1].seq + 1
    assert hub.batcher.stats["errors"] == 1
    assert np.isfinite(good.meter.median_latency_ms())
