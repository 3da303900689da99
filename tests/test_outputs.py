"""The UDP outputs' playout (bursts in, a steady rate out, on the audio clock; a fake clock drives it)
and their sockets (never raising into the frame loop, flushing on stop, clear setup errors)."""
import asyncio
import logging
import socket
import subprocess
import struct
import sys
import time

import numpy as np
import pytest

from mm2face.realtime import outputs as O

LIVE = [sys.executable, "-m", "mm2face.realtime.cli"]
STEP_S = 0.001                # the fake clock's resolution


def run_clock(p: O.Playout, arrivals, until_s):
    """Drive ``p`` with a fake clock: ``arrivals`` = [(arrival_s, [(t_audio_s, values), ...])].
    Returns [(send_s, t_audio_s, values)] as a sender polling every STEP_S would send them."""
    sent, arrivals = [], sorted(arrivals, key=lambda a: a[0])
    for i in range(int(round(until_s / STEP_S)) + 1):
        now = i * STEP_S
        while arrivals and arrivals[0][0] <= now + 1e-12:
            for t, v in arrivals.pop(0)[1]:
                p.push(t, v, now)
        sent += [(now, t, v) for t, v in p.pop_due(now)]
    return sent


def pairs(n_tokens, start_s=0.0, late=None):
    """The engine's rhythm: two frames (t = k/25) every 80 ms token, ``late[i]`` s late for token i."""
    late = late or {}
    return [(start_s + 0.08 * (i + 1) + late.get(i, 0.0),
             [(k / 25, np.full(3, k, np.float32)) for k in (2 * i, 2 * i + 1)]) for i in range(n_tokens)]


def test_steady_bursts_leave_at_25_fps_unchanged():
    p = O.Playout(25)
    sent = run_clock(p, pairs(10), 1.2)
    assert [t for _, t, _ in sent] == [k / 25 for k in range(20)]
    assert all((v == k).all() for k, (_, _, v) in enumerate(sent))          # passed through, not interpolated
    gaps = np.diff([s for s, _, _ in sent])
    np.testing.assert_allclose(gaps, 0.04, atol=STEP_S * 1.01)             # evenly spaced, not in pairs
    # the first frame of each pair leaves as it arrives: no delay added
    assert sent[0][0] == pytest.approx(0.08)


def test_a_late_token_leaves_at_once_and_the_rest_keep_its_delay():
    p = O.Playout(25)
    sent = run_clock(p, pairs(10, late={4: 0.03}), 1.2)
    send = {t: s for s, t, _ in sent}
    assert len(send) == 20
    assert send[8 / 25] == pytest.approx(0.08 * 5 + 0.03)                   # sent as soon as it arrived
    gaps = np.diff([send[k / 25] for k in range(8, 20)])
    np.testing.assert_allclose(gaps, 0.04, atol=STEP_S * 1.01)              # and paced from there


def test_the_delay_recovers_after_the_window():
    p = O.Playout(25, window_s=0.5)
    sent = run_clock(p, pairs(30, late={2: 0.05}), 3.0)
    lag = [s - t for s, t, _ in sent]
    assert max(lag) == pytest.approx(0.08 + 0.05, abs=STEP_S * 1.5)
    assert lag[-1] == pytest.approx(0.08, abs=STEP_S * 1.5)                 # back to the on-time offset


def test_resampled_output_interpolates_on_its_own_grid():
    p = O.Playout(60)
    frames = [(k / 25, np.array([k, 2.0 * k], np.float32)) for k in range(10)]
    sent = run_clock(p, [(0.0, frames[:2]), (0.08, frames[2:4]), (0.16, frames[4:6]), (0.24, frames[6:8]),
                         (0.32, frames[8:])], 1.0)
    times = [t for _, t, _ in sent]
    assert times == [k / 60 for k in range(len(times))] and times[-1] == pytest.approx(0.35, abs=1 / 60)
    for _, t, v in sent:
        np.testing.assert_allclose(v, [25 * t, 50 * t], atol=1e-5)          # linear between frames
    # one input frame later than its audio time plus the arrival offset, so both neighbours are there
    s0, t0, _ = sent[0]
    assert s0 == pytest.approx(t0 + 1 / 25, abs=STEP_S * 1.5)


def test_time_going_back_starts_a_new_stream_and_drain_sends_the_rest():
    p = O.Playout(25)
    for k in range(5):
        p.push(k / 25, np.full(2, k, np.float32), now=10.0)
    assert [t for t, _ in p.pop_due(10.0)] == [0.0]
    p.push(0.0, np.full(2, 99, np.float32), now=10.01)                      # a new stream from t = 0
    assert p.resets == 1
    rest = p.drain()
    assert [t for t, _ in rest] == [0.0] and rest[0][1][0] == 99
    assert p.drain() == [] and p.next_due(11.0) is None
    p.push(5.0, np.full(2, 7, np.float32), now=10.02)                       # a jump ahead: no burst to fill it
    assert p.resets == 2 and [t for t, _ in p.drain()] == [5.0]


def test_bad_rates_are_refused():
    with pytest.raises(O.OutputError, match="output rate"):
        O.Playout(0)
    with pytest.raises(O.OutputError, match="output rate"):
        O.Playout(1000)


def test_send_failures_are_logged_once_and_never_raise(caplog):
    # a broadcast address without SO_BROADCAST: every sendto fails at once with EACCES
    out = O.UdpOutput("test", "255.255.255.255", 9, lambda t, v: b"x" * 8)
    with caplog.at_level(logging.WARNING, logger="mm2face.realtime"):
        for k in range(5):
            out.send(k / 25, np.zeros(3, np.float32))
    out.close()
    assert out.send_errors == 5 and out.sent == 0
    warnings = [r for r in caplog.records if "cannot send" in r.getMessage()]
    assert len(warnings) == 1 and "test to 255.255.255.255:9" in warnings[0].getMessage()


async def test_stopping_sends_every_frame_already_made():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    out = O.UdpOutput("test", "127.0.0.1", rx.getsockname()[1], lambda t, v: f"{t:.2f}".encode())
    task = asyncio.create_task(out.run())
    await asyncio.sleep(0)                                  # let it start, then queue a burst due in 100 s
    out.push([k / 25 for k in range(6)], np.zeros((6, 3), np.float32), now=time.monotonic() + 100)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    got = []
    while True:
        try:
            got.append(rx.recv(100).decode())
        except BlockingIOError:
            break
    rx.close()
    assert got == [f"{k / 25:.2f}" for k in range(6)]


def test_cli_output_errors_are_explained_before_loading_the_model(capsys):
    from mm2face.realtime import cli
    r = subprocess.run(LIVE + ["--livelink", "127.0.0.1:99999", "--random-model"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "out of range" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for args, msg in ((["--vmc", "127.0.0.1:abc"], "port must be a number"),
                      (["--vmc", "127.0.0.1", "--vmc-fps", "0"], "output rate must be in"),
                      (["--livelink", "127.0.0.1", "--livelink-subject", "x" * 500], "at most 468"),
                      (["--livelink-subject", "Anna"], "--livelink-subject goes with --livelink"),
                      (["--vmc-fps", "60"], "--vmc-fps goes with --vmc")):
        assert cli.main(args + ["--random-model", "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert msg in err, err


async def test_attach_converts_each_batch_once_and_refuses_a_head_without_a_map():
    from mm2face.engine.arkit import to_arkit
    from mm2face.realtime.protocol import FrameBatchEncoder, WireFrame
    rng = np.random.default_rng(0)
    motion = rng.uniform(0, 0.5, (2, 56)).astype(np.float32)
    frames = [WireFrame(session="default", session_num=0, seq=k, t_audio_s=k / 25, params=motion[k]) for k in range(2)]
    FrameBatchEncoder(frames, None).arkit()                 # as the server does for an ARKit subscriber
    cached = frames[0].arkit_cache[1].copy()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    out = O.UdpOutput("test", "127.0.0.1", rx.getsockname()[1], lambda t, v: struct.pack(f"!d{len(v)}f", t, *v))
    live = type("Live", (), {"listeners": []})()
    O.attach([out], live)
    task = asyncio.create_task(out.run())
    await asyncio.sleep(0)
    live.listeners[0](live, frames)                         # the listener, as LiveSession calls it
    got = [await asyncio.to_thread(rx.recv, 1000) for _ in range(2)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rx.close()
    got = [struct.unpack(f"!d{O.VALUES_DIM}f", g) for g in got]
    assert [g[0] for g in got] == [0.0, 0.04]
    values = np.array([g[1:] for g in got], np.float32)
    np.testing.assert_allclose(values, O.output_values(motion, to_arkit(motion)), atol=1e-6)
    np.testing.assert_array_equal(values[0, O.WEIGHTS], cached)               # the frame's cached conversion
    np.testing.assert_allclose(values[1, O.HEAD_ROTVEC], motion[1, 50:53])
    assert out.sent == 2 and out.sender_cpu_s > 0
    with pytest.raises(O.OutputError, match="VMC send ARKit weights, but the model drives"):
        O.attach([O.vmc_output("127.0.0.1", 9)], live, None, "the model drives the 'flame' head, not the stand-in")


async def test_an_encoder_bug_is_logged_and_the_stream_goes_on(caplog):
    def broken(t, v):
        raise ValueError("bug")
    out = O.UdpOutput("test", "127.0.0.1", 9, broken)
    task = asyncio.create_task(out.run())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="mm2face.realtime"):
        out.push([0.0], np.zeros((1, 3), np.float32))        # due at once: the thread encodes it
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert any("the sender stopped" in r.getMessage() for r in caplog.records)
    assert out.sent == 0 and task.done()
