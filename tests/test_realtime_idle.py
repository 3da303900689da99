"""Idle motion instead of a frozen face: a client session that stops sending audio (after `end`,
`flush`, or a pause past the grace) keeps emitting idle frames at 25 fps from the server's idle
clock, continues without a seq gap when audio resumes, and can opt out with `open` `idle: false`.
The server's own sources (text-only idle, wav with idle after EOF) keep the default session moving.
Real sockets, the real StreamSession on a small random model; only loose rate checks."""
import asyncio
import json
import math
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from mm2face.realtime import sources
from mm2face.engine.frame import FPS
from mm2face.realtime.idle import IDLE_AFTER_S, idle_frames_due
from mm2face.realtime.server import Hub, serve_hub
from realtime_helpers import is_type, make_session, pcm16, recv_until, server, speechy, validator  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)
pytest.importorskip("jsonschema")


def jaw(m):
    return np.asarray(m["jaw_pose"], np.float32)


async def frames_until(ws, n_frames, schema=None, pred=lambda m: True, timeout_s=60.0):
    """Every message received until ``n_frames`` frames matching ``pred`` have come (a count, not a
    wall-clock wait; ``timeout_s`` only bounds a failure), validated against the server schema."""
    got, n = [], 0
    async with asyncio.timeout(timeout_s):
        while n < n_frames:
            m = json.loads(await ws.recv())
            if schema is not None:
                schema.validate(m)
            got.append(m)
            n += m.get("type") == "frame" and pred(m)
    return got


async def test_idle_after_end_then_resume(server):
    hub, url = server
    schema = validator("server_message.json")
    async with connect(url) as ws, connect(url) as watcher:
        await ws.send(json.dumps({"type": "open", "session": "tts", "style": "happy"}))
        opened, _ = await recv_until(ws, is_type("opened"))
        assert opened["idle"] is True
        schema.validate(opened)
        await watcher.send(json.dumps({"type": "subscribe", "session": "tts"}))
        await recv_until(watcher, is_type("subscribed"))
        await ws.send(json.dumps({"type": "unsubscribe", "session": "tts"}))   # the watcher reads the frames
        await recv_until(ws, is_type("unsubscribed"))
        await ws.send(pcm16(speechy(0.6)))
        await ws.send(json.dumps({"type": "end"}))
        ended, before = await recv_until(watcher, is_type("ended"))
        speech = [m for m in before if m.get("type") == "frame"]
        assert speech[-1]["final"] and ended["last_seq"] == speech[-1]["seq"]

        # After end the subscriber keeps receiving frames: idle, mouth at rest.
        got = await frames_until(watcher, 25, schema)
        idle = [m for m in got if m["type"] == "frame"]
        seqs = [m["seq"] for m in idle]
        assert seqs == list(range(ended["last_seq"] + 1, ended["last_seq"] + 1 + len(idle)))
        t = [m["t_audio_s"] for m in idle]
        assert all(b > a for a, b in zip(t, t[1:])) and t[0] > speech[-1]["t_audio_s"]
        assert all(m["audio_arrival_time"] is None for m in idle)          # they show no client audio
        assert max(float(np.abs(jaw(m)).max()) for m in idle) < 1e-4      # the mouth rests (jaw at 0)
        # Not frozen: blinks and breathing still move the face.
        expr = np.array([m["expression"] for m in idle])
        assert np.ptp(expr, axis=0).max() > 1e-3
        ev = [m for m in got if m["type"] == "idle"]
        assert ev and ev[0]["state"] == "idle" and ev[0]["session"] == "tts"

        # New audio after idle is processed and lands right after the idle frames.
        t_send = time.time()
        await ws.send(pcm16(speechy(0.6, seed=3)))
        active, between = await recv_until(watcher, lambda m: m.get("type") == "idle" and m["state"] == "active")
        schema.validate(active)
        assert active["audio_s"] == pytest.approx(0.6, abs=0.01)           # the client audio before it
        await ws.send(json.dumps({"type": "end"}))
        ended2, after = await recv_until(watcher, is_type("ended"))
        frames = [m for m in between + after if m.get("type") == "frame"]
        for m in frames:
            schema.validate(m)
        seqs2 = [m["seq"] for m in frames]
        assert seqs2[0] == seqs[-1] + 1 and seqs2 == list(range(seqs2[0], seqs2[0] + len(seqs2)))
        talk = [m for m in frames if m["audio_arrival_time"] is not None]
        assert len(talk) >= 12                                             # ~0.6 s of audio frames
        # They show the resumed audio: it arrived after we sent it, not an old chunk's time ...
        assert all(m["audio_arrival_time"] >= t_send - 1e-3 for m in talk)
        assert all(m["t_audio_s"] >= active["t_audio_s"] - 1e-6 for m in talk)
        # ... and latency bookkeeping holds: sent after the input it needed was there.
        assert all(m["server_send_time"] >= m["input_ready_time"] for m in talk)
        assert talk[0]["t_audio_s"] == pytest.approx(active["t_audio_s"], abs=0.041)
        assert frames[-1]["final"] and ended2["last_seq"] == seqs2[-1]


async def test_pause_without_end_goes_idle_and_emits_the_last_audio_frames(server):
    hub, url = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "session": "agent"}))
        await recv_until(ws, is_type("opened"))
        await ws.send(pcm16(speechy(0.5)))
        ev, seen = await recv_until(ws, lambda m: m.get("type") == "idle" and m["state"] == "idle")
        got = [m for m in seen if m.get("type") == "frame"]
        got += [m for m in await frames_until(ws, 20, pred=lambda m: m["audio_arrival_time"] is None)
                if m["type"] == "frame"]
        seqs = [m["seq"] for m in got]
        assert seqs == list(range(len(seqs)))
        # The audio's own frames all came out (their lookahead was filled by idle time) ...
        assert max(m["t_audio_s"] for m in got if m["audio_arrival_time"] is not None) >= 0.44
        # ... followed by idle frames.
        assert sum(m["audio_arrival_time"] is None for m in got) >= 20
        assert ev["t_audio_s"] >= 0.5 - 1e-6 and ev["audio_s"] == pytest.approx(0.5, abs=0.01)


async def test_idle_false_stops_frames_after_end(server):
    hub, url = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "session": "quiet", "idle": False}))
        opened, _ = await recv_until(ws, is_type("opened"))
        assert opened["idle"] is False
        await ws.send(pcm16(speechy(0.5)))
        await ws.send(json.dumps({"type": "end"}))
        await recv_until(ws, is_type("ended"))
        # Nothing after end: the idle clock does not drive it, and even a tick far past the grace (a
        # made-up time, no sleep) feeds it no time; a stats round trip then shows no frame queued before it.
        live = hub.sessions["quiet"]
        assert live not in hub.idle_clock.sessions()
        n0, k0 = live.frames_out, live.session.k
        await hub.idle_clock.tick([live], hub.clock() + 10 * IDLE_AFTER_S)
        assert (live.frames_out, live.session.k) == (n0, k0)
        await ws.send(json.dumps({"type": "stats"}))
        _, before = await recv_until(ws, is_type("stats"))
        assert before == []
        await ws.send(json.dumps({"type": "open", "idle": 1}))             # must be a boolean
        e, _ = await recv_until(ws, is_type("error"))
        assert e["code"] == "bad_message" and "idle" in e["message"]


async def test_flush_goes_idle_at_once(server):
    hub, url = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "session": "barge", "sample_rate": 16000}))
        await recv_until(ws, is_type("opened"))
        await ws.send(pcm16(speechy(0.4)))
        await ws.send(json.dumps({"type": "flush"}))
        await recv_until(ws, is_type("flushed"))
        got = await frames_until(ws, 50)
        assert any(m["type"] == "idle" and m["state"] == "idle" for m in got)
        await ws.send(json.dumps({"type": "stats"}))
        st, _ = await recv_until(ws, is_type("stats"))
        validator("server_message.json").validate(st)
        assert st["session"]["idle"] == "idle" and st["session"]["audio_s"] == pytest.approx(0.4, abs=0.01)
        assert st["session"]["time_s"] > 0.4 + 1.5                        # idle time advanced the clock


async def test_idle_sessions_share_batched_steps(make_session):
    """Four idle client sessions: every idle tick is at most one batched step for all of them. The hub's
    clock is injected and the idle clock is ticked by hand with made-up times (no sleeps)."""
    now = [1_000.0]
    hub = Hub(make_session, idle_replay=False, clock=lambda: now[0])
    try:
        for i in range(4):
            await hub.create_session(f"i{i}", idle=True)
        hub.idle_clock.close()                             # ticks are driven below
        sessions = hub.idle_clock.sessions()
        now[0] += IDLE_AFTER_S + 0.1                       # past the grace: all idle
        await hub.idle_clock.tick(sessions, now[0])
        assert all(s.idle_active for s in sessions)
        steps0, hops0 = hub.batcher.stats["batches"], sum(s.session.k for s in sessions)
        n_ticks = 50                                       # 2 s of frames
        for _ in range(n_ticks):
            now[0] += 1 / FPS
            await hub.idle_clock.tick(sessions, now[0])
        steps = hub.batcher.stats["batches"] - steps0
        hops = sum(s.session.k for s in sessions) - hops0
        assert hops >= 4 * 2 * 12                          # each session 25 frames/s = 12.5 hops/s
        assert steps <= n_ticks and steps < hops           # hops of several sessions in one step
        assert all(s.frames_out >= 2 * FPS for s in sessions)
    finally:
        hub.close()


def test_idle_policy_grace_rate_and_stall(make_session):
    """idle_frames_due with made-up times: nothing during the grace, then one frame per 40 ms (one ahead),
    none after end/flush's zero grace is used up, and a stall re-anchors instead of bursting."""
    from types import SimpleNamespace
    events = []
    live = SimpleNamespace(idle=True, closed=False, idle_active=False, input_over=False, play_end=10.0,
                           idle_loop=None, t_wire_s=lambda: 0.0, idle_event=lambda *a: events.append(a))
    assert idle_frames_due(live, 10.0 + IDLE_AFTER_S - 0.01) == 0 and not live.idle_active
    t = 10.0 + IDLE_AFTER_S
    assert idle_frames_due(live, t) == 1 and live.idle_active and events == [("idle", 0.0)]
    given = 1
    for k in range(1, 2 * FPS + 1):                        # 2 s of ticks, each frame given is played out
        live.play_end += given / FPS
        given = idle_frames_due(live, t + k / FPS)
        assert given == 1, k                               # one frame per tick, one tick ahead
    assert idle_frames_due(live, live.play_end - 2 / FPS) == 0   # ahead of time: nothing due
    live.play_end = t
    assert idle_frames_due(live, t + 1.0) == 1 and live.play_end == t + 1.0   # 25+ frames late: re-anchor
    closed = SimpleNamespace(**{**vars(live), "closed": True})
    assert idle_frames_due(closed, t + 5.0) == 0


async def test_default_session_sources_keep_moving(make_session, tmp_path):
    """The server's own sources are real-time clocks: text-only idle, and a wav that ends goes idle."""
    import soundfile as sf
    hub = Hub(make_session)
    live = await hub.create_session("default", style="calm")
    wav = tmp_path / "x.wav"
    sf.write(wav, speechy(0.4), 16000)
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        await ws.send(json.dumps({"type": "subscribe"}))
        await recv_until(ws, is_type("subscribed"))
        task = asyncio.create_task(sources.feed(live, sources.WavSource(wav), idle_after=True))
        try:
            final, seen = await recv_until(ws, lambda m: m.get("type") == "frame" and m.get("final"))
            idle = [m for m in await frames_until(ws, 20) if m["type"] == "frame"]
            assert idle[0]["seq"] == final["seq"] + 1
            assert [m["seq"] for m in idle] == list(range(idle[0]["seq"], idle[0]["seq"] + len(idle)))
            assert all(m["audio_arrival_time"] is None for m in idle)
        finally:
            task.cancel()
        # Text-only mode (no source): idle time from the IdleSource clock.
        live2 = await hub.create_session("text", style="cheerful")
        await ws.send(json.dumps({"type": "subscribe", "session": "text"}))
        await recv_until(ws, is_type("subscribed"))
        task = asyncio.create_task(sources.feed(live2, sources.IdleSource(), end_at_eof=False))
        try:
            text = lambda m: m["session"] == "text"                     # noqa: E731
            got = [m for m in await frames_until(ws, 20, pred=text) if m["type"] == "frame" and text(m)]
        finally:
            task.cancel()
        assert [m["seq"] for m in got] == list(range(len(got)))
        assert all(math.isfinite(m["t_audio_s"]) for m in got)


async def test_real_time_stream_gets_no_idle_mid_speech(make_session):
    """A client streaming at real-time pace (40 ms chunks, a 0.3 s pause inside the grace) never
    has idle time inserted into its speech: every frame before `end` shows its own audio."""
    hub = Hub(make_session)
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        await ws.send(json.dumps({"type": "open", "session": "live", "sample_rate": 16000}))
        await recv_until(ws, is_type("opened"))
        loop = asyncio.get_running_loop()
        a, step, t0 = speechy(1.6), 640, loop.time()
        for i in range(0, len(a), step):
            pause = 0.3 if i >= len(a) // 2 else 0.0                   # one 0.3 s gap halfway
            await asyncio.sleep(max(0.0, t0 + pause + i / 16000 - loop.time()))
            await ws.send(pcm16(a[i:i + step]))
        await ws.send(json.dumps({"type": "end"}))
        ended, seen = await recv_until(ws, is_type("ended"))
        assert not [m for m in seen if m.get("type") == "idle"]
        frames = [m for m in seen if m.get("type") == "frame"]
        assert [m["seq"] for m in frames] == list(range(len(frames)))
        talk = [m for m in frames if m["t_audio_s"] < 1.6 - 0.04]
        assert len(talk) >= 38 and all(m["audio_arrival_time"] is not None for m in talk)


def test_feed_closes_its_source_when_cancelled():
    """A cancelled feed closes the source at once (a microphone must not stay open until the loop ends)."""
    events = []

    class Source:
        async def __aiter__(self):
            try:
                while True:
                    await asyncio.sleep(0.01)
                    yield sources.Chunk(None, 160, time.time())
            finally:
                events.append("closed")

    fed = asyncio.Event()

    class Live:
        async def push_no_audio(self, n):
            events.append(n)
            fed.set()

    async def main():
        task = asyncio.create_task(sources.feed(Live(), Source(), end_at_eof=False))
        async with asyncio.timeout(10):                    # bounds a failure only
            await fed.wait()                               # the feed is running: a chunk went in
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return list(events)

    got = asyncio.run(main())
    assert 160 in got and got[-1] == "closed"
