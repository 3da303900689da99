"""Idle sessions cost little (issue 20): recorded idle motion is played back instead of stepping the
model, frames stay continuous, the model takes over cross-faded when audio resumes; idle sessions
without subscribers time out. The idle clock is driven by hand with made-up times (no sleeps)."""
import json
import time

import numpy as np
import pytest
from realtime_helpers import is_type, make_session, recv_until  # noqa: F401 - fixture

from mm2face.realtime.admission import Limits
from mm2face.realtime.idle_loop import IDLE_LOOP_FRAMES, IDLE_SETTLE_FRAMES, IdleLoop
from mm2face.realtime.server import FPS, IDLE_TIMEOUT_REASON, Hub, serve_hub


def test_idle_loop_records_then_plays_neighbouring_frames_and_blends_back():
    loop = IdleLoop(settle_frames=2, loop_frames=4, blend_frames=3)
    for v in range(6):                                  # 2 settle + 4 recorded (values 2..5)
        assert not loop.playing
        loop.record(np.full(56, v, np.float32))
    assert loop.playing
    played = loop.play(8)[:, 0].tolist()
    assert played == [4, 3, 2, 3, 4, 5, 4, 3]          # from the recording's end, back and forth
    loop.stop(np.full(56, 3.0, np.float32))
    assert not loop.playing
    got = [float(loop.blend(np.full(56, 7.0, np.float32))[0]) for _ in range(4)]
    assert got == pytest.approx([4.0, 5.0, 6.0, 7.0])   # 3 -> 7 over 3 frames, then the model's own
    with pytest.raises(ValueError):
        IdleLoop(loop_frames=1)


async def test_idle_session_stops_stepping_the_model_and_stays_continuous(make_session):
    hub = Hub(make_session)
    live = await hub.create_session("idle", idle=True)
    hub.idle_clock.close()                              # ticks are driven below with made-up times
    sent = []
    live.listeners.append(lambda _l, frames: sent.extend(frames))
    now = time.time() + 1.0
    n_ticks = IDLE_SETTLE_FRAMES + IDLE_LOOP_FRAMES + 10
    for i in range(n_ticks):
        await hub.idle_clock.tick([live], now + i / FPS)
    assert live.idle_loop.playing
    hops_before = live.session.stats["hops"]
    frames_before = len(sent)
    for i in range(n_ticks, n_ticks + 100):             # 4 s more of idle: played back, no model step
        await hub.idle_clock.tick([live], now + i / FPS)
    assert live.session.stats["hops"] == hops_before
    assert len(sent) - frames_before >= 99
    seqs = [f.seq for f in sent]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))          # no gap, no repeat
    assert all(abs(f.t_audio_s - f.seq / FPS) < 1e-9 for f in sent)
    # audio resumes: the model takes over where the wire clock is, cross-faded from the last played frame
    last = sent[-1]
    rng = np.random.default_rng(0)
    await live.push_audio((0.2 * rng.standard_normal(8000)).astype(np.float32))
    assert not live.idle_loop.playing and live.session.stats["hops"] > hops_before
    new = sent[len(seqs):]
    assert new and new[0].seq == last.seq + 1
    assert [f.seq for f in new] == list(range(last.seq + 1, last.seq + 1 + len(new)))
    assert live.idle_loop._from is None or live.idle_loop._blend_k > 0     # the cross-fade was applied
    await hub.close_session(live)
    hub.close()


async def test_style_change_ends_playback(make_session):
    hub = Hub(make_session)
    live = await hub.create_session("idle", idle=True)
    hub.idle_clock.close()
    now = time.time() + 1.0
    for i in range(IDLE_SETTLE_FRAMES + IDLE_LOOP_FRAMES + 5):
        await hub.idle_clock.tick([live], now + i / FPS)
    assert live.idle_loop.playing
    await live.set_style("a happy host")
    assert not live.idle_loop.playing                    # the new style's motion is made by the model
    await hub.close_session(live)
    hub.close()


async def test_idle_session_without_subscribers_times_out(make_session):
    from websockets.asyncio.client import connect
    hub = Hub(make_session, limits=Limits(max_sessions=8, max_sessions_per_client=8, idle_timeout_s=30.0))
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        await ws.send(json.dumps({"type": "open", "session": "hoard", "idle": True}))
        await recv_until(ws, is_type("opened"))
        assert await hub.reap_idle(now=100.0) == []           # subscribed (its owner): kept
        await ws.send('{"type":"unsubscribe","session":"hoard"}')
        await recv_until(ws, is_type("unsubscribed"))
        assert await hub.reap_idle(now=200.0) == []           # quiet from now on
        assert await hub.reap_idle(now=229.0) == []
        assert await hub.reap_idle(now=230.0) == ["hoard"]
        m, _ = await recv_until(ws, is_type("session_closed"))
        assert m["reason"] == IDLE_TIMEOUT_REASON
        assert "hoard" not in hub.sessions
        await ws.send('{"type":"open","idle":true}')           # the client may open again
        await recv_until(ws, is_type("opened"))


def test_speaking_sessions_come_first_in_a_round(make_session):
    """The scheduler's round steps speakers (real audio within SPEAKING_HOLD_S) before the sessions fed
    only no-audio time or whose audio is old, so with more ready hops than max_batch the silent ones take
    the later batched calls. Arrival times are made up (no sleeps)."""
    from mm2face.engine.batching import SPEAKING_HOLD_S, SessionBatcher

    first = make_session("")
    batches = []
    b = SessionBatcher(first.model, max_batch=2, on_frames=lambda k, fs: batches.append(k))
    now = time.time()
    hop = np.zeros(first.spt + first.look, np.float32)
    for name, t in (("idle1", None), ("talk1", now - 0.1), ("idle2", now - 10 * SPEAKING_HOLD_S),
                    ("talk2", now - 0.5 * SPEAKING_HOLD_S)):
        key = b.add(first if name == "idle1" else make_session(""), key=name)
        if t is None:
            b.push_no_audio(key, len(hop))
        else:
            b.push_audio(key, hop, arrival_time=t)
    assert b.step() == 4 and b.stats["batch_sizes"] == {2: 2}
    assert set(batches[:2]) == {"talk1", "talk2"} and set(batches[2:]) == {"idle1", "idle2"}