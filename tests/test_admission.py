"""Admission control, server-session control and per-session counters (issue 20).

The policies (realtime/admission.py) are tested with numbers and a fake clock; the server's use of
them over real sockets on loopback (a second client address comes from 127.0.0.2).
"""
import asyncio
import json

import pytest
from realtime_helpers import is_type, make_session, recv_until  # noqa: F401 - fixture

from mm2face.realtime import protocol as P
from mm2face.realtime.admission import Admission, IdleReaper, Limits, capacity_from_costs, measure_capacity
from mm2face.realtime.connection import ClientConn
from mm2face.realtime.server import Hub, serve_hub


def test_capacity_from_measured_hop_costs():
    # 5 ms fixed + 2.5 ms per session against a 40 ms budget: 14 sessions (5 + 2.5 * 14 = 40)
    est = capacity_from_costs({1: 7.5, 2: 10.0, 4: 15.0, 8: 25.0}, budget_ms=40.0)
    assert est.capacity == 14 and est.fixed_ms == pytest.approx(5.0) and est.per_session_ms == pytest.approx(2.5)
    assert "14 sessions" in est.describe()
    # unbatched: n sessions cost n single steps
    assert capacity_from_costs({1: 9.0}, budget_ms=40.0, batched=False).capacity == 4
    # a machine too slow for even one session still admits one (the operator's choice to run it)
    assert capacity_from_costs({1: 90.0, 2: 180.0}, budget_ms=40.0).capacity == 1


def test_measure_capacity_times_the_schedulers_rounds(make_session):
    """measure_capacity steps real sessions through the server's scheduler (SessionBatcher): every timed
    round runs one hop for each session, over one batch state. The clock is made up: 5 ms a round plus
    2.5 ms per hop the sessions have run, so the fit must find 5 + 2.5 n and a capacity of 14."""
    made = []

    def counting_session(style):
        made.append(make_session(style))
        return made[-1]

    calls = [0]

    def clock():                                   # seconds: 5 ms per call pair + 2.5 ms per hop run so far
        calls[0] += 1
        return 5e-3 * (calls[0] // 2) + 2.5e-3 * sum(s.k for s in made)

    est = measure_capacity(counting_session, sizes=(1, 2, 4), repeats=2, clock=clock)
    assert est.measured == pytest.approx({1: 7.5, 2: 10.0, 4: 15.0})
    assert est.capacity == 14
    assert [s.k for s in made] == [1 + 2] * 7       # the warm-up round and two timed rounds: one hop each
    for group in (made[1:3], made[3:7]):
        assert len({id(s.batch_state) for s in group}) == 1   # the scheduler's one state, a row per session


def test_admission_refuses_with_specific_codes():
    a = Admission(Limits(max_sessions=10, max_sessions_per_client=2, capacity=3))
    a.check_open(in_use=2, client_in_use=1, client="10.0.0.1")          # fine
    with pytest.raises(P.ProtocolError) as e:
        a.check_open(in_use=2, client_in_use=2, client="10.0.0.1")
    assert e.value.code == P.ErrorCode.SESSION_LIMIT and "10.0.0.1" in e.value.message
    with pytest.raises(P.ProtocolError) as e:
        a.check_open(in_use=3, client_in_use=0, client="10.0.0.2")
    assert e.value.code == P.ErrorCode.CAPACITY and "3 of 3" in e.value.message and "capacity" in e.value.message
    a.draining = True
    with pytest.raises(P.ProtocolError) as e:
        a.check_open(in_use=0, client_in_use=0, client="10.0.0.2")
    assert e.value.code == P.ErrorCode.DRAINING
    assert a.refused == {"session_limit": 1, "capacity": 1, "draining": 1}
    assert a.as_dict(3)["capacity"] == 3 and a.as_dict(3)["sessions_in_use"] == 3
    with pytest.raises(ValueError):
        Limits(capacity=0)


def test_idle_reaper_with_a_fake_clock():
    now = [100.0]
    r = IdleReaper(timeout_s=30.0, clock=lambda: now[0])
    assert r.observe({"a": False, "b": True}) == []
    now[0] = 129.0
    assert r.observe({"a": False, "b": False}) == []
    now[0] = 130.0
    assert r.observe({"a": False, "b": False}) == ["a"]          # b was busy until 129
    assert r.observe({"a": True, "b": False}) == []               # a got audio/subscriber: starts over
    now[0] = 159.0
    assert r.observe({"a": False, "b": False}) == ["b"]
    assert IdleReaper(0.0, clock=lambda: 1e9).observe({"a": False}) == []    # 0 = never


async def _open(url, host="127.0.0.1", **fields):
    from websockets.asyncio.client import connect
    ws = await connect(url, local_addr=(host, 0))
    await ws.send(json.dumps({"type": "open", **fields}))
    msg, _ = await recv_until(ws, lambda m: isinstance(m, dict) and m.get("type") in ("opened", "error"))
    return ws, msg


async def test_per_client_and_capacity_limits_over_sockets(make_session):
    from websockets.asyncio.client import connect
    hub = Hub(make_session, limits=Limits(max_sessions=10, max_sessions_per_client=2, capacity=4))
    await hub.create_session("default")                       # the operator's own: counts, never refused
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        async with connect(url) as ws:
            await ws.send('{"type":"hello"}')
            hello, _ = await recv_until(ws, is_type("hello"))
        assert hello["limits"]["max_sessions_per_client"] == 2 and hello["limits"]["capacity"] == 4
        conns = []
        try:
            for _ in range(2):
                ws, msg = await _open(url, idle=False)
                conns.append(ws)
                assert msg["type"] == "opened"
            ws, msg = await _open(url, idle=False)               # a third from the same address
            conns.append(ws)
            assert msg["type"] == "error" and msg["code"] == "session_limit", msg
            ws, msg = await _open(url, host="127.0.0.2", idle=False)    # another client: fits (4 of 4)
            conns.append(ws)
            assert msg["type"] == "opened", msg
            ws, msg = await _open(url, host="127.0.0.3", idle=False)    # full: refused, nobody slowed
            conns.append(ws)
            assert msg["type"] == "error" and msg["code"] == "capacity" and "4 of 4" in msg["message"], msg
            assert len(hub.live_sessions()) == 4
            await ws.send('{"type":"stats"}')
            st, _ = await recv_until(ws, is_type("stats"))
            assert st["server"]["refused"] == {"session_limit": 1, "capacity": 1}
            assert st["server"]["limits"]["sessions_in_use"] == 4
            # closing one frees a place
            await conns[0].send('{"type":"close"}')
            await recv_until(conns[0], is_type("session_closed"))
            ws, msg = await _open(url, host="127.0.0.3", idle=False)
            conns.append(ws)
            assert msg["type"] == "opened", msg
        finally:
            for c in conns:
                await c.close()


@pytest.mark.parametrize("mode", ["none", "style", "all"])
async def test_server_session_accepts_only_the_control_the_operator_allows(make_session, mode):
    from websockets.asyncio.client import connect
    hub = Hub(make_session, server_session_control=mode)
    await hub.create_session("default", style="calm")
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        replies = {}
        for kind, msg in (("end", {"type": "end"}), ("flush", {"type": "flush", "session": "default"}),
                          ("style", {"type": "style", "text": "sad", "session": "default"})):
            await ws.send(json.dumps(msg))
            m, _ = await recv_until(ws, lambda m: isinstance(m, dict) and m.get("type") in
                                    ("ended", "flushed", "style", "error"))
            replies[kind] = m
    allowed = {"none": set(), "style": {"style"}, "all": {"style", "end", "flush"}}[mode]
    for kind, m in replies.items():
        if kind in allowed:
            assert m["type"] != "error", (kind, m)
        else:
            assert m["type"] == "error" and m["code"] == "not_owner" and "server's own" in m["message"], (kind, m)
    assert (hub.sessions["default"].style == "sad") == ("style" in allowed)


class _FakeWS:
    transport = None
    remote_address = ("10.1.2.3", 5555)

    async def close(self, *a):
        pass


async def test_dropped_frames_are_counted_per_session(make_session):
    hub = Hub(make_session)
    a = await hub.create_session("a")
    b = await hub.create_session("b")
    c = ClientConn(hub, _FakeWS(), max_frames=2)
    assert c.addr == "10.1.2.3"
    for live, n in ((a, 3), (b, 1)):           # nobody reads: a's frames fill the outbox first
        for i in range(n):
            c.send_frame(f"{live.name}{i}", live)
    c.send_frame("b1", b)
    assert (a.dropped_frames, b.dropped_frames, c.dropped, hub.dropped_total) == (3, 0, 3, 3)
    assert a.stats()["dropped_frames"] == 3 and b.stats()["dropped_frames"] == 0


async def test_mqtt_status_counts_drops_per_session(make_session):
    import numpy as np

    from mm2face.realtime.mqtt import MqttBridge
    hub = Hub(make_session)
    a = await hub.create_session("a")
    b = await hub.create_session("b")
    bridge = MqttBridge(hub, max_queue=4)              # no broker: nothing drains the queue
    while not bridge.queue.empty():
        bridge.queue.get_nowait()
    frame = P.WireFrame(session="a", session_num=1, seq=0, t_audio_s=0.0, params=np.zeros(56, np.float32))
    bridge._on_frames(a, [frame] * 6)                  # 4 fit, 2 dropped: a's
    bridge._on_frames(b, [frame] * 1)                  # dropped: b's
    assert bridge.dropped == 3 and bridge.dropped_by == {"a": 2, "b": 1}
    bridge._publish_status(a)
    status = json.loads([item for item in list(bridge.queue._queue) if item[0].endswith("a/status")][-1][1])
    assert status["dropped"] == 2


def test_control_rate_limiter_with_a_fake_clock():
    from mm2face.realtime.admission import RateLimiter
    now = [0.0]
    r = RateLimiter(rate_per_s=10, burst=5, clock=lambda: now[0])
    assert [r.allow() for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] = 0.35                                   # 3.5 tokens back
    assert [r.allow() for _ in range(4)] == [True, True, True, False]
    assert r.dropped == 3
    now[0] = 10.0                                   # full again: 5 free, then debt at 10 per second
    assert [r.delay() for _ in range(5)] == [0.0] * 5
    assert r.delay() == pytest.approx(0.1) and r.delay() == pytest.approx(0.2)


async def test_a_flood_of_control_messages_is_slowed_with_rate_limited(make_session):
    from websockets.asyncio.client import connect
    hub = Hub(make_session)
    await hub.create_session("default")
    async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        for _ in range(300):
            await ws.send('{"type":"stats"}')
        m, seen = await recv_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "error")
        assert m["code"] == "rate_limited" and "per second" in m["message"]
        n = sum(1 for x in seen if x.get("type") == "stats")
        assert n >= 90
        while n < 300:          # nothing is dropped: the excess is answered later, read more slowly
            await recv_until(ws, is_type("stats"))
            n += 1
    assert hub.errors["rate_limited"] >= 1
