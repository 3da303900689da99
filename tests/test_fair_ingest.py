"""Fair ingestion and honest clocks (issue 20): a 1 MiB audio message is fed one hop at a time, so a
session that speaks meanwhile is served alongside it; arrival is stamped when the bytes reach the server."""
import asyncio
import json

import numpy as np
import pytest
from realtime_helpers import is_type, make_session, pcm16, recv_until, speechy  # noqa: F401 - fixture

from mm2face.realtime import protocol as P
from mm2face.realtime.dispatch import INGEST_SLICE_SAMPLES
from mm2face.realtime.server import Hub, serve_hub


async def test_a_big_upload_does_not_hold_up_another_session(make_session):
    from websockets.asyncio.client import connect
    hub = Hub(make_session)
    order = []
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        async with connect(url) as a, connect(url) as b:
            for ws in (a, b):
                await ws.send(json.dumps({"type": "open", "idle": False, "format": "binary"}))
                await recv_until(ws, is_type("opened"))
            big = pcm16(speechy(P.MAX_AUDIO_BYTES / 2 / 16000, seed=1))[:P.MAX_AUDIO_BYTES]
            await a.send(big)                                  # 32.8 s of audio in one message
            await a.send('{"type":"end"}')
            await b.send(pcm16(speechy(0.4, seed=2)))           # then b speaks 0.4 s
            await b.send('{"type":"end"}')

            async def wait_end(name, ws):
                await recv_until(ws, is_type("ended"), timeout=120)
                order.append(name)
            await asyncio.gather(wait_end("a", a), wait_end("b", b))
    assert order == ["b", "a"]          # b's few hops went in with a's slices, not after all 410 of them
    assert INGEST_SLICE_SAMPLES <= 1280


async def test_arrival_is_stamped_when_the_bytes_arrive(make_session):
    """A message that waits unread behind a slow one keeps its receipt time: its frames' arrival stamps
    precede the moment the server got round to it."""
    from websockets.asyncio.client import connect
    hub = Hub(make_session)
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        await ws.send(json.dumps({"type": "open", "idle": False, "format": "json"}))
        await recv_until(ws, is_type("opened"))
        await ws.send(pcm16(speechy(8.0, seed=3)))           # slow to process...
        await ws.send(pcm16(speechy(0.4, seed=4)))           # ...this one waits behind it
        await ws.send('{"type":"end"}')
        frames = []
        while True:
            m, seen = await recv_until(ws, lambda m: m.get("type") in ("frame", "ended"), timeout=120)
            if m["type"] == "ended":
                break
            frames.append(m)
    last = [f for f in frames if 8.0 <= f["t_audio_s"] < 8.3]
    assert last
    for f in last:       # stamped on receipt (before the 8 s message was done), not when it was read
        assert f["audio_arrival_time"] < f["server_send_time"]
    early = [f for f in frames if f["t_audio_s"] < 0.3]
    # both messages reached the server within moments of each other, so their stamps are close,
    # although the second was read only after the first's 100 hops had run
    assert last[0]["audio_arrival_time"] - early[0]["audio_arrival_time"] < 0.5 * (
        last[0]["server_send_time"] - early[0]["server_send_time"])


def test_ingest_is_paced_by_audio_seconds():
    from mm2face.realtime.admission import RateLimiter
    now = [0.0]
    r = RateLimiter(2.0, 2.0, clock=lambda: now[0])           # 2x real time after a 2 s burst
    waits = [r.delay(0.08) for _ in range(50)]                 # 4 s of audio at once
    assert max(waits[:25]) < 1e-9                              # the first 2 s go in at once
    assert waits[-1] == pytest.approx((4.0 - 2.0) / 2.0)       # the rest at 2 audio seconds per second


async def test_paced_upload_feeds_at_most_twice_real_time(make_session):
    """With ingest_speed=2, 3 s of audio sent at once reach the session over (3 - 1) / 2 s: the pacing
    waits that long in all, on an injected clock and sleep (no wall-clock wait, no timed assertion)."""
    from mm2face.realtime.admission import RateLimiter
    now, waits = [0.0], []

    async def sleep(s):                                        # time passes at once
        waits.append(s)
        now[0] += s
    hub = Hub(make_session, ingest_speed=2.0, sleep=sleep)
    hub_live = await hub.create_session("x")
    from mm2face.realtime.connection import ClientConn

    class _WS:
        transport, remote_address = None, ("127.0.0.1", 1)

        async def close(self, *a):
            pass
    c = ClientConn(hub, _WS())
    c.own = hub_live
    hub_live.ingest_rate = RateLimiter(2.0, 1.0, clock=lambda: now[0])   # a 1 s burst for a short test
    await hub.dispatcher.dispatch(c, pcm16(speechy(3.0, seed=5)))
    assert waits and sum(waits) == pytest.approx((3.0 - 1.0) / 2.0)
    assert now[0] == pytest.approx(1.0)                       # at 2 audio seconds per second after the burst
    assert hub_live.audio_samples_in == 3 * 16000
    await hub.close_session(hub_live)
    hub.close()
