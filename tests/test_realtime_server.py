"""The WebSocket server over real sockets on 127.0.0.1: subscriptions, client sessions, formats,
style/end/flush, and every bad input of the robustness list, each answered while the server and the
other clients carry on. Uses the real StreamSession on a small randomly initialised model."""
import asyncio
import json
import math
import socket

import numpy as np
import pytest
from websockets.asyncio.client import connect

from mm2face.realtime import protocol as P
from mm2face.realtime.server import Hub, serve_hub
from realtime_helpers import is_type, make_session, pcm16, recv_until, server, speechy  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)


async def test_hello_subscribe_and_default_session_frames(server):
    hub, url = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        hello, _ = await recv_until(ws, is_type("hello"))
        assert hello["version"] == 1 and hello["fps"] == 25 and "default" in hello["sessions"]
        await ws.send(json.dumps({"type": "subscribe", "session": "default", "format": "json"}))
        sub, _ = await recv_until(ws, is_type("subscribed"))
        assert sub["style"] == "calm"
        live = hub.sessions["default"]
        frames = await live.push_audio(speechy(1.0))
        frames += await live.end()
        got = [(await recv_until(ws, is_type("frame")))[0] for _ in frames]
        assert [g["seq"] for g in got] == [f.seq for f in frames] == list(range(len(frames)))
        assert len(frames) >= 25                           # 1 s of audio (+ the end() tail)
        assert all(len(g["expression"]) == 50 and len(g["jaw_pose"]) == 3 for g in got)
        assert all(g["server_send_time"] >= g["input_ready_time"] for g in got)
        assert all(g["audio_arrival_time"] is not None for g in got[:20])   # frames showing real audio
        assert got[-1]["final"] is True


async def test_client_session_binary_frames_rate_change_and_end(server):
    hub, url = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "session": "tts", "sample_rate": 44100,
                                  "sample_format": "pcm16", "format": "binary", "style": "happy"}))
        opened, _ = await recv_until(ws, is_type("opened"))
        assert opened["session"] == "tts"
        num = opened["session_num"]
        a = speechy(1.0, 44100)
        for i in range(0, len(a), 4410):                     # 100 ms chunks, as fast as we like
            await ws.send(pcm16(a[i:i + 4410]))
        # Change rate mid-stream: 1 s more at 8 kHz float32.
        await ws.send(json.dumps({"type": "audio_format", "sample_rate": 8000, "sample_format": "f32"}))
        b = speechy(1.0, 8000, seed=1)
        await ws.send(b[:4000].astype("<f4").tobytes())
        await ws.send(b[4000:].astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        ended, seen = await recv_until(ws, is_type("ended"))
        frames = [P.decode_frame_binary(m, "tts") for m in seen if isinstance(m, bytes)]
        assert all(f.session_num == num for f in frames)
        seqs = [f.seq for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))     # in order, none missing
        # 2 s of audio in -> 25 frames per second of audio out (end() may add a short close-out tail).
        t = [f.t_audio_s for f in frames]
        assert len(frames) >= 50 and t[49] == pytest.approx(49 / 25 + t[0], abs=1e-6)
        assert frames[-1].final and ended["last_seq"] == seqs[-1]
        assert all(math.isfinite(f.input_ready_time) for f in frames[:45])
        assert all(f.server_send_time >= f.input_ready_time for f in frames[:45])


async def test_style_flush_and_stats(server):
    hub, url = server
    async with connect(url) as ws, connect(url) as watcher:
        await watcher.send(json.dumps({"type": "subscribe"}))
        await recv_until(watcher, is_type("subscribed"))
        await ws.send(json.dumps({"type": "open", "sample_rate": 16000}))
        opened, _ = await recv_until(ws, is_type("opened"))
        name = opened["session"]
        await ws.send(pcm16(speechy(0.5)))
        await ws.send(json.dumps({"type": "style", "text": "very angry", "blend_s": 0.2}))
        st, _ = await recv_until(ws, is_type("style"))
        assert st["text"] == "very angry" and st["session"] == name
        await ws.send(pcm16(speechy(0.5)))
        await ws.send(json.dumps({"type": "flush"}))
        await recv_until(ws, is_type("flushed"))
        await ws.send(json.dumps({"type": "stats"}))
        stats, _ = await recv_until(ws, is_type("stats"))
        assert stats["session"]["session"] == name and stats["session"]["style"] == "very angry"
        assert stats["session"]["frames"] > 0 and stats["server"]["clients"] == 2
        # Style on the default session from another client reaches that session's subscriber.
        await ws.send(json.dumps({"type": "style", "session": "default", "text": "sad", "blend_s": 0.5}))
        st2, _ = await recv_until(watcher, is_type("style"))
        assert st2["text"] == "sad" and hub.sessions["default"].style == "sad"


BAD_INPUTS = [
    ("{oops", "bad_json"),
    ('["type", "style"]', "bad_json"),
    ('{"type": "moonwalk"}', "unknown_type"),
    ('{"type": "style", "text": "' + "x" * (P.MAX_TEXT_BYTES + 10) + '"}', "too_large"),
    ('{"type": "style", "text": "' + "calm and friendly " * 560 + '"}', "style_too_long"),   # 10 kB
    ('{"type": "subscribe", "session": "nope"}', "unknown_session"),
    ('{"type": "audio_format", "sample_rate": 16000}', "no_session"),
    (b"\x00\x01" * 100, "no_session"),
    ('{"type": "open", "sample_rate": 3}', "bad_audio_format"),
    ('{"type": "close", "session": "default"}', "not_owner"),
]


async def test_bad_inputs_get_error_codes_and_everyone_carries_on(server):
    hub, url = server
    async with connect(url) as bystander, connect(url) as bad:
        await bystander.send(json.dumps({"type": "subscribe", "format": "binary"}))
        await recv_until(bystander, is_type("subscribed"))
        for data, code in BAD_INPUTS:
            await bad.send(data)
            e, _ = await recv_until(bad, is_type("error"))
            assert e["code"] == code, (data[:40], e)
            assert e["message"]
        # Empty style text is accepted (defined behaviour: the neutral style).
        await bad.send(json.dumps({"type": "style", "session": "default", "text": ""}))
        st, _ = await recv_until(bad, lambda m: is_type("style")(m) or is_type("error")(m))
        assert st["type"] == "style" and st["text"] == ""
        # Audio problems inside an open session.
        await bad.send(json.dumps({"type": "open", "sample_rate": 16000, "sample_format": "f32"}))
        await recv_until(bad, is_type("opened"))
        await bad.send(np.array([0.1, np.nan] * 320, "<f4").tobytes())
        e, _ = await recv_until(bad, is_type("error"))
        assert e["code"] == "bad_audio"
        await bad.send(b"\x00" * 7)                                  # not whole float32 samples
        e, _ = await recv_until(bad, is_type("error"))
        assert e["code"] == "bad_audio"
        await bad.send((np.ones(640, "<f4") * 4.0).tobytes())        # clipped: warned, then used
        w, _ = await recv_until(bad, is_type("warning"))
        assert w["code"] == "audio_clipped"
        await bad.send(b"\x00" * (P.MAX_AUDIO_BYTES + 4))            # oversized audio message
        e, _ = await recv_until(bad, is_type("error"))
        assert e["code"] == "too_large"
        await bad.send(json.dumps({"type": "audio_format", "sample_rate": 96000000}))
        e, _ = await recv_until(bad, is_type("error"))
        assert e["code"] == "bad_audio_format"
        # The bad client's connection still works ...
        await bad.send(json.dumps({"type": "stats"}))
        s, _ = await recv_until(bad, is_type("stats"))
        assert s["session"]["clipped_samples"] == 640
        # ... and the bystander still gets default-session frames.
        live = hub.sessions["default"]
        await live.push_audio(speechy(0.4))
        await live.end()
        f, _ = await recv_until(bystander, lambda m: isinstance(m, bytes))
        assert P.decode_frame_binary(f).session_num == live.num
        await recv_until(bystander, lambda m: isinstance(m, bytes) and P.decode_frame_binary(m).final)


def raw_ws_subscriber(port: int) -> socket.socket:
    """A WebSocket client on a plain socket with a tiny receive buffer: it subscribes, then we never
    read from it again (a client that stopped reading)."""
    import base64
    import os
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += sock.recv(1)
    assert b" 101 " in resp
    payload = json.dumps({"type": "subscribe", "format": "json"}).encode()
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


async def test_slow_reader_drops_only_its_own_frames(make_session):
    hub = Hub(make_session, max_frames_per_client=16)
    live = await hub.create_session("default")
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        sock = await asyncio.to_thread(raw_ws_subscriber, srv.port)
        async with connect(url) as good:
            await good.send(json.dumps({"type": "subscribe", "format": "json"}))
            await recv_until(good, is_type("subscribed"))
            async with asyncio.timeout(5):
                while len(hub.sessions["default"].subscribers) < 2:
                    await asyncio.sleep(0.01)
            slow_client = next(c for c in hub.clients if c.ws.remote_address[1] == sock.getsockname()[1])
            got = []

            async def read_good():
                while True:
                    m, _ = await recv_until(good, is_type("frame"))
                    got.append(m["seq"])

            reader = asyncio.create_task(read_good())
            audio, n = speechy(12.0), 0
            for i in range(0, len(audio), 1280):           # 80 ms chunks, faster than real time
                n += len(await live.push_audio(audio[i:i + 1280]))
                await asyncio.sleep(0.002)
            n += len(await live.end())
            async with asyncio.timeout(20):
                while len(got) < n:
                    await asyncio.sleep(0.01)
            reader.cancel()
            assert got == list(range(n))                   # the good client lost nothing
            assert slow_client.dropped > 0 and hub.dropped_total == slow_client.dropped
            assert slow_client.n_frames_queued <= 16
        sock.close()


async def test_abrupt_disconnect_closes_owned_session_and_server_carries_on(server):
    hub, url = server
    ws = await connect(url)
    await ws.send(json.dumps({"type": "open", "session": "gone"}))
    await recv_until(ws, is_type("opened"))
    await ws.send(pcm16(speechy(0.3)))
    async with connect(url) as watcher:
        await watcher.send(json.dumps({"type": "subscribe", "session": "gone"}))
        await recv_until(watcher, is_type("subscribed"))
        ws.transport.abort()                               # TCP reset, no close handshake
        closed, _ = await recv_until(watcher, is_type("session_closed"))
        assert closed["session"] == "gone" and "gone" not in hub.sessions
        await watcher.send(json.dumps({"type": "open", "session": "gone"}))   # the name is free again
        await recv_until(watcher, is_type("opened"))


async def test_token_protects_control_messages(make_session):
    hub = Hub(make_session, token="s3cret")
    await hub.create_session("default")
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        async with connect(f"ws://127.0.0.1:{srv.port}") as ws:
            await ws.send(json.dumps({"type": "subscribe"}))          # reading needs no token
            await recv_until(ws, is_type("subscribed"))
            await ws.send(json.dumps({"type": "style", "text": "happy"}))
            e, _ = await recv_until(ws, is_type("error"))
            assert e["code"] == "unauthorized"
            await ws.send(json.dumps({"type": "hello", "token": "wrong"}))
            e, _ = await recv_until(ws, is_type("error"))
            assert e["code"] == "unauthorized"
            await ws.send(json.dumps({"type": "style", "text": "happy", "token": "s3cret"}))
            await recv_until(ws, is_type("style"))
            await ws.send(json.dumps({"type": "hello", "token": "s3cret"}))
            h, _ = await recv_until(ws, is_type("hello"))
            assert h["auth_required"] is False
            await ws.send(json.dumps({"type": "open"}))
            await recv_until(ws, is_type("opened"))


async def test_many_sessions_many_subscribers(server):
    hub, url = server
    async with connect(url) as a, connect(url) as b, connect(url) as sub1, connect(url) as sub2:
        for ws, name in ((a, "A"), (b, "B")):
            await ws.send(json.dumps({"type": "open", "session": name}))
            await recv_until(ws, is_type("opened"))
        for ws in (sub1, sub2):
            await ws.send(json.dumps({"type": "subscribe", "session": "A"}))
            await ws.send(json.dumps({"type": "subscribe", "session": "B", "format": "binary"}))
            await recv_until(ws, lambda m: is_type("subscribed")(m) and m["session"] == "B")
        await a.send(pcm16(speechy(0.6)))
        await b.send(pcm16(speechy(0.6, seed=2)))
        await a.send(json.dumps({"type": "end"}))
        await b.send(json.dumps({"type": "end"}))
        await recv_until(a, is_type("ended"))
        await recv_until(b, is_type("ended"))
        for ws in (sub1, sub2):
            seen_a = seen_b = 0
            async with asyncio.timeout(20):
                while seen_a < hub.sessions["A"].frames_out or seen_b < hub.sessions["B"].frames_out:
                    m = await ws.recv()
                    if isinstance(m, bytes):
                        seen_b += P.decode_frame_binary(m).session_num == hub.sessions["B"].num
                    elif json.loads(m).get("type") == "frame":
                        seen_a += json.loads(m)["session"] == "A"
            assert seen_a > 0 and seen_b > 0


async def test_plain_http_get_serves_the_browser_monitor(server):
    import urllib.error
    import urllib.request
    hub, url = server
    http = url.replace("ws://", "http://")
    def get(path):
        try:
            with urllib.request.urlopen(http + path, timeout=10) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            e.close()
            return e.code, None, b""
    status, ctype, body = await asyncio.to_thread(get, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b"/viewer.js" in body and b"/vendor/three/" in body     # the 3D viewer (tests/test_web_static.py)
    status, ctype, body = await asyncio.to_thread(get, "/monitor.html")
    assert status == 200 and ctype.startswith("text/html")
    assert b"MMF1" in body                             # the 2D monitor decodes protocol v1 binary frames
    assert (await asyncio.to_thread(get, "/nope"))[0] == 404
