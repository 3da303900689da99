"""/metrics, /healthz, /readyz and graceful drain, over real sockets (issue 20)."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from realtime_helpers import is_type, make_session, pcm16, recv_until, speechy  # noqa: F401 - fixture

from mm2face.realtime.admission import Limits
from mm2face.realtime.server import Hub, serve_hub

prom_parser = pytest.importorskip("prometheus_client.parser")


def http_get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        e.close()
        return e.code, e.headers["Content-Type"], body


def samples(text: str) -> dict:
    """``{(name, frozenset(labels)): value}`` of a Prometheus exposition."""
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def test_metrics_health_and_readiness_over_http(make_session):
    from websockets.asyncio.client import connect
    hub = Hub(make_session, limits=Limits(max_sessions=8, max_sessions_per_client=8, capacity=2))
    await hub.create_session("default")
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        port, url = srv.port, f"ws://127.0.0.1:{srv.port}"
        status, _, body = await asyncio.to_thread(http_get, port, "/healthz")
        assert status == 200 and body.startswith("ok")
        status, _, body = await asyncio.to_thread(http_get, port, "/readyz")
        assert status == 200 and "1 of 2" in body
        async with connect(url) as a, connect(url) as b:
            await a.send(json.dumps({"type": "open", "idle": False, "format": "binary"}))
            await recv_until(a, is_type("opened"))
            await a.send(pcm16(speechy(1.0)))
            await a.send('{"type":"end"}')
            await recv_until(a, is_type("ended"))
            await b.send('{"type":"open"}')                       # full: refused
            err, _ = await recv_until(b, is_type("error"))
            assert err["code"] == "capacity"
            await b.send('{"type":"dance"}')
            await recv_until(b, is_type("error"))
            status, _, body = await asyncio.to_thread(http_get, port, "/readyz")
            assert status == 503 and "full: 2 of 2" in body
            status, ctype, text = await asyncio.to_thread(http_get, port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "version=" in ctype
        m = samples(text)
        assert m[("mm2face_sessions", frozenset({("state", "idle")}))] + \
            m[("mm2face_sessions", frozenset({("state", "speaking")}))] == 2
        assert m[("mm2face_admissions_refused_total", frozenset({("code", "capacity")}))] == 1
        assert m[("mm2face_errors_total", frozenset({("code", "unknown_type")}))] == 1
        assert m[("mm2face_frames_sent_total", frozenset())] >= 25
        assert m[("mm2face_frames_dropped_total", frozenset())] == 0
        assert m[("mm2face_hop_seconds_count", frozenset())] >= 12           # 1 s of audio = 12+ hops
        assert m[("mm2face_session_limit", frozenset({("limit", "capacity")}))] == 2
        status, _, _ = await asyncio.to_thread(http_get, port, "/nothing-here")
        assert status == 404


async def test_drain_refuses_new_sessions_and_closes_running_ones_with_a_reason(make_session):
    from websockets.asyncio.client import connect
    hub = Hub(make_session)
    await hub.create_session("default")
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        async with connect(url) as a, connect(url) as b:
            await a.send(json.dumps({"type": "open", "idle": True}))
            await recv_until(a, is_type("opened"))
            drain = asyncio.create_task(hub.drain(grace_s=1.0))
            await asyncio.sleep(0)
            status, _, body = await asyncio.to_thread(http_get, srv.port, "/readyz")
            assert status == 503 and "draining" in body
            await b.send('{"type":"open"}')
            err, _ = await recv_until(b, is_type("error"))
            assert err["code"] == "draining"
            closed, _ = await recv_until(a, is_type("session_closed"))
            assert "shutting down" in closed["reason"] and "drain" in closed["reason"]
            assert await drain == 1
        assert hub.live_sessions() == ["default"]          # the operator's own session is left to the operator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
async def test_sigterm_drains_the_real_server(tmp_path):
    """mm2face-live --serve gets SIGTERM while a client speaks: new sessions are refused with
    'draining', the running one keeps its frames until its owner closes it, then the process exits 0."""
    from websockets.asyncio.client import connect
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mm2face.realtime.cli", "--serve", "--random-model", "--quiet",
                             "--port", str(port), "--capacity", "4", "--drain-timeout", "20", "--threads", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        url = f"ws://127.0.0.1:{port}"
        async with asyncio.timeout(120):
            while True:
                try:
                    a = await connect(url)
                    break
                except OSError:
                    await asyncio.sleep(0.3)
        async with a, connect(url) as b:
            await a.send(json.dumps({"type": "open", "idle": False}))
            await recv_until(a, is_type("opened"), timeout=60)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                while (await asyncio.to_thread(http_get, port, "/readyz"))[0] != 503:
                    await asyncio.sleep(0.1)
            await b.send('{"type":"open"}')
            err, _ = await recv_until(b, is_type("error"))
            assert err["code"] == "draining"
            await a.send(pcm16(speechy(0.5)))                # the running session still works
            await a.send('{"type":"end"}')
            ended, seen = await recv_until(a, is_type("ended"), timeout=60)
            assert ended["n_frames"] > 0 or any(m.get("type") == "frame" for m in seen)
            await a.send('{"type":"close"}')
            await recv_until(a, is_type("session_closed"))
        rc = await asyncio.to_thread(proc.wait, 60)
        assert rc == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
