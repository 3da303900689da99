"""UDP outputs of ``mm2face-live``: Unreal Live Link Face (``--livelink``) and VMC (``--vmc``).

Frames reach the outputs through the default session's frame listeners, the same fan-out that
feeds ``--record``: :func:`attach` converts each published batch to ARKit weights once (with the
hub's map, shared with the server's ARKit subscribers through the frames' cache) and hands it to
every output. The engine publishes frames in bursts (two
frames per 80 ms token), so each output plays them out on the audio clock through a
:class:`Playout`: a frame showing audio time ``t_audio_s`` leaves at ``t_audio_s + offset``, where
``offset`` is the largest ``arrival - t_audio_s`` of the last :data:`OFFSET_WINDOW_S` seconds. Steady
input therefore leaves at a steady 25 fps, a late frame leaves at once (and later frames keep its
delay for a while), and ``--vmc-fps`` other than 25 interpolates linearly between frames on an
``out_fps`` grid of audio times (one frame of added delay, so the next frame is there in time).
When the stream stops, frames already made keep their pace for up to :data:`DRAIN_MAX_S`.

Each output sends from a thread of its own, so its pacing wake-ups never take the event loop's
turns; the loop only converts and queues. Sending never blocks nor raises: the sockets are
non-blocking, a full send buffer drops that packet, and an unreachable host is logged once and
counted (``send_errors``).
See docs/outputs.md for what each protocol carries.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import math
import queue
import socket
import threading
import time
from typing import Callable

import numpy as np

from mm2face.engine.arkit import N_ARKIT
from mm2face.engine.frame import FPS, HEAD

log = logging.getLogger("mm2face.realtime")

VALUES_DIM = N_ARKIT + 3 + 3         # output values: 52 ARKit weights, head yaw/pitch/roll (rad), head axis-angle (rad, FLAME)
WEIGHTS = slice(0, N_ARKIT)
HEAD_YPR = slice(N_ARKIT, N_ARKIT + 3)
HEAD_ROTVEC = slice(N_ARKIT + 3, N_ARKIT + 6)
OFFSET_WINDOW_S = 2.0                 # Playout: the send delay follows the latest arrivals of this long
GRID_EPS = 1e-9                       # audio times closer than this are the same instant
MAX_GAP_S = 1.0                       # Playout: a frame this far after the previous one starts a new stream
MAX_OUT_FPS = 240.0                   # --vmc-fps upper bound
DEFAULT_SUBJECT = "mm2face"
DRAIN_MAX_S = 1.0                     # on stop: frames already made keep their pace for at most this long


_STOP = object()                      # UdpOutput's queue: the stream is stopping


class OutputError(ValueError):
    """An output cannot be set up (bad HOST:PORT, unknown host, bad rate); the message says what to change."""


def output_values(motion: np.ndarray, arkit=None, retarget=None) -> np.ndarray:
    """``motion: (T, 56)`` frames -> ``(T, 58) float32``: ARKit weights (52, [0, 1]), head yaw, pitch,
    roll (rad, ``engine.arkit``'s convention) and the head's axis-angle (rad, FLAME axes).
    ``arkit``: the frames' ArkitFrames if already converted, else ``to_arkit(motion, retarget)``."""
    motion = np.asarray(motion, np.float32).reshape(-1, 56)
    if arkit is None:
        from mm2face.engine.arkit import to_arkit
        arkit = to_arkit(motion, retarget)
    out = np.empty((len(motion), VALUES_DIM), np.float32)
    out[:, WEIGHTS] = arkit.weights
    out[:, HEAD_YPR] = arkit.head_rot
    out[:, HEAD_ROTVEC] = motion[:, HEAD]
    return out


# ----------------------------------------------------------------------------------------------
# Playout: bursts in, a steady rate out (sans-I/O: the caller passes the clock)

class Playout:
    """Frames ``(t_audio_s, values)`` in as they are made; ticks out at ``out_fps`` on the audio
    clock, each when its audio time is due. ``now`` is any monotonic clock in seconds.

    Ticks are the audio times ``k / out_fps``. With ``out_fps == in_fps`` they are the frames
    themselves (values passed through unchanged); otherwise each is interpolated linearly
    between the two frames around it, and a tick waits one input frame longer so that the later
    of the two has arrived.
    """

    def __init__(self, out_fps: float = FPS, in_fps: float = FPS, window_s: float = OFFSET_WINDOW_S):
        if not 0 < out_fps <= MAX_OUT_FPS:
            raise OutputError(f"output rate must be in (0, {MAX_OUT_FPS:g}] fps, got {out_fps:g}")
        self.out_fps, self.in_fps, self.window_s = float(out_fps), float(in_fps), window_s
        self.delay_s = 0.0 if self.out_fps == self.in_fps else 1.0 / self.in_fps
        self.times: collections.deque[float] = collections.deque()
        self.values: collections.deque[np.ndarray] = collections.deque()
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()   # (arrival, offset), offsets decreasing
        self.next_k: int | None = None      # the next tick to send is at audio time next_k / out_fps
        self.resets = 0

    def reset(self) -> None:
        """Forget everything (a new stream: audio time went backwards, or jumped ahead by more than
        :data:`MAX_GAP_S`, which would otherwise be filled with a burst of interpolated ticks)."""
        self.times.clear()
        self.values.clear()
        self._offsets.clear()
        self.next_k = None
        self.resets += 1

    def push(self, t_audio_s: float, values: np.ndarray, now: float) -> None:
        t = float(t_audio_s)
        if self.times and not self.times[-1] + GRID_EPS < t <= self.times[-1] + MAX_GAP_S:
            self.reset()
        self.times.append(t)
        self.values.append(np.asarray(values, np.float32))
        if self.next_k is None:
            self.next_k = math.ceil(t * self.out_fps - GRID_EPS)
        off = now - t
        while self._offsets and self._offsets[-1][1] <= off:     # a monotonic deque: its head is the window's max
            self._offsets.pop()
        self._offsets.append((now, off))

    def offset(self, now: float) -> float:
        """Send delay: the largest ``arrival - t_audio_s`` among the arrivals of the last ``window_s``."""
        while len(self._offsets) > 1 and self._offsets[0][0] < now - self.window_s:
            self._offsets.popleft()
        return self._offsets[0][1]

    def _tick_time(self, k: int) -> float:
        return k / self.out_fps

    def _ready(self) -> bool:
        """The next tick's data is there (a frame at or after its audio time)."""
        return self.next_k is not None and bool(self.times) and self._tick_time(self.next_k) <= self.times[-1] + GRID_EPS

    def next_due(self, now: float) -> float | None:
        """When (on ``now``'s clock) the next tick should go out, or None until its data arrives."""
        if not self._ready():
            return None
        return self._tick_time(self.next_k) + self.offset(now) + self.delay_s

    def _take(self) -> tuple[float, np.ndarray]:
        t = self._tick_time(self.next_k)
        self.next_k += 1
        while len(self.times) > 1 and self.times[1] <= t + GRID_EPS:    # keep the frame at or before t
            self.times.popleft()
            self.values.popleft()
        t0, v0 = self.times[0], self.values[0]
        if abs(t - t0) <= GRID_EPS or len(self.times) == 1 or t < t0:
            return t, v0
        t1, v1 = self.times[1], self.values[1]
        w = np.float32((t - t0) / (t1 - t0))
        return t, v0 + w * (v1 - v0)

    def pop_due(self, now: float) -> list[tuple[float, np.ndarray]]:
        """The ticks due by ``now``, oldest first: ``(t_audio_s, values)``."""
        out = []
        while (due := self.next_due(now)) is not None and due <= now:
            out.append(self._take())
        return out

    def drain(self) -> list[tuple[float, np.ndarray]]:
        """Every tick whose data is there, due or not (the stream is stopping)."""
        out = []
        while self._ready():
            out.append(self._take())
        return out


# ----------------------------------------------------------------------------------------------
# UDP sending

def resolve_udp(host: str, port: int) -> tuple[socket.socket, tuple]:
    """A non-blocking UDP socket for ``host:port`` and the address to send to."""
    if not 0 < port < 65536:
        raise OutputError(f"port {port} is out of range 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise OutputError(f"cannot resolve host {host!r} ({e.strerror}); use a name or address this machine "
                          "can resolve, e.g. 127.0.0.1") from None
    family, _, proto, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    sock.setblocking(False)
    return sock, addr


class UdpOutput:
    """One UDP destination: frames pushed by the frame listener, paced by a :class:`Playout` and
    sent, encoded by ``encode(t_audio_s, values (58,)) -> bytes``, from a sender thread of its own
    while :meth:`run` runs.

    The event loop only queues frames (:meth:`push`); the thread waits for each tick, encodes and
    sends, so pacing wake-ups (25 or ``out_fps`` a second) and a slow network stack never cost the
    loop a turn. ``sender_cpu_s``: the thread's CPU time once it has stopped.
    """

    def __init__(self, name: str, host: str, port: int, encode: Callable[[float, np.ndarray], bytes],
                 out_fps: float = FPS):
        self.name, self.host, self.port, self.encode = name, host, port, encode
        self.playout = Playout(out_fps)
        self.sock, self.addr = resolve_udp(host, port)
        self.sent = self.send_errors = self.dropped = 0
        self.sender_cpu_s = math.nan
        self._warned = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()      # (times, values, now) or _STOP

    def __repr__(self) -> str:
        return f"{self.name} to {self.host}:{self.port}"

    def push(self, t_audio_s, values: np.ndarray, now: float | None = None) -> None:
        """Queue frames ``t_audio_s: (n,)`` with ``values: (n, 58)`` that arrived at ``now``
        (``time.monotonic()`` seconds; default: now). Thread-safe, never blocks."""
        self._queue.put((list(t_audio_s), np.asarray(values, np.float32), time.monotonic() if now is None else now))

    def send(self, t_audio_s: float, values: np.ndarray) -> None:
        """Encode and send one frame now. Never raises for network trouble: logged once, counted."""
        data = self.encode(t_audio_s, values)
        try:
            self.sock.sendto(data, self.addr)
            self.sent += 1
        except BlockingIOError:                 # the send buffer is full: a late frame is worthless anyway
            self.dropped += 1
        except OSError as e:                    # unreachable network/host, refused port (ICMP) ...
            self.send_errors += 1
            if not self._warned:
                self._warned = True
                log.warning("%s: cannot send (%s); still running, frames to it are lost until it is reachable",
                            self, e.strerror or e)

    def _sender(self) -> None:
        """The sender thread: queued frames into the play-out, each tick sent when due. After _STOP,
        frames already made keep their pace for at most DRAIN_MAX_S; the rest then go at once."""
        stop_at = None
        try:
            while True:
                now = time.monotonic()
                for t, v in self.playout.pop_due(now):
                    self.send(t, v)
                due = self.playout.next_due(now)
                if stop_at is not None and (due is None or due > stop_at):
                    break
                try:
                    item = self._queue.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
                except queue.Empty:
                    continue
                if item is _STOP:
                    stop_at = time.monotonic() + DRAIN_MAX_S
                    continue
                times, values, arrival = item
                for t, v in zip(times, values):
                    self.playout.push(t, v, arrival)
            for t, v in self.playout.drain():
                self.send(t, v)
        except Exception:  # noqa: BLE001 - a bug in encoding must not go unnoticed, nor stop the stream
            log.exception("%s: the sender stopped; the stream goes on without this output", self)
        finally:
            self.sock.close()
            self.sender_cpu_s = time.thread_time()
            log.info("%s: sent %d, dropped %d (send buffer full), %d send errors",
                     self, self.sent, self.dropped, self.send_errors)

    async def run(self) -> None:
        """Run the sender thread until cancelled; then let it finish what is queued (see DRAIN_MAX_S)."""
        thread = threading.Thread(target=self._sender, name=f"{self.name} sender", daemon=True)
        thread.start()
        try:
            await asyncio.get_running_loop().create_future()       # until cancelled
        finally:
            self._queue.put(_STOP)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.to_thread(thread.join, DRAIN_MAX_S + 1.0)

    def close(self) -> None:
        """Close the socket of an output that never ran."""
        self.sock.close()


def livelink_output(host: str, port: int, subject: str = DEFAULT_SUBJECT) -> UdpOutput:
    from mm2face.realtime.livelink import LiveLinkEncoder, LiveLinkError, curves_from_arkit
    try:
        enc = LiveLinkEncoder(subject)
    except LiveLinkError as e:
        raise OutputError(str(e)) from None
    return UdpOutput("Live Link Face", host, port,
                     lambda t, v: enc.encode(t, curves_from_arkit(v[WEIGHTS], v[HEAD_YPR])))


def vmc_output(host: str, port: int, fps: float = FPS) -> UdpOutput:
    from mm2face.realtime.vmc import VmcEncoder
    enc = VmcEncoder()
    return UdpOutput("VMC", host, port, lambda t, v: enc.encode(t, v[WEIGHTS], v[HEAD_ROTVEC]), out_fps=fps)


# ----------------------------------------------------------------------------------------------
# mm2face-live wiring

def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The output flags of ``mm2face-live``."""
    from mm2face.realtime import livelink, vmc
    g = ap.add_argument_group("engine outputs (UDP; docs/outputs.md)")
    g.add_argument("--livelink", metavar="HOST[:PORT]",
                   help=f"send Unreal Live Link Face packets (as the iPhone app does) to HOST, port {livelink.DEFAULT_PORT} "
                        "unless given")
    g.add_argument("--livelink-subject", default=DEFAULT_SUBJECT, metavar="NAME",
                   help="the Live Link subject name Unreal shows (default: %(default)s)")
    g.add_argument("--vmc", metavar="HOST[:PORT]",
                   help=f"send VMC protocol (OSC) blendshapes and head/neck bones to HOST, port {vmc.DEFAULT_PORT} unless given")
    g.add_argument("--vmc-fps", type=float, default=float(FPS), metavar="FPS",
                   help="VMC send rate; other than 25, frames are interpolated linearly (default: %(default)g)")


def _host_port(flag: str, text: str, default_port: int) -> tuple[str, int]:
    from mm2face.realtime.mqtt import parse_host_port
    try:
        return parse_host_port(text, default_port)
    except ValueError as e:
        raise OutputError(f"{flag} {text!r}: {e}") from None


def open_outputs(args) -> list[UdpOutput]:
    """The outputs ``args`` ask for (none without --livelink/--vmc); :class:`OutputError` if one is unusable."""
    from mm2face.realtime import livelink, vmc
    if args.livelink_subject != DEFAULT_SUBJECT and not args.livelink:
        raise OutputError("--livelink-subject goes with --livelink HOST[:PORT]")
    if args.vmc_fps != FPS and not args.vmc:
        raise OutputError("--vmc-fps goes with --vmc HOST[:PORT]")
    outs: list[UdpOutput] = []
    try:
        if args.livelink:
            outs.append(livelink_output(*_host_port("--livelink", args.livelink, livelink.DEFAULT_PORT),
                                        subject=args.livelink_subject))
        if args.vmc:
            try:
                outs.append(vmc_output(*_host_port("--vmc", args.vmc, vmc.DEFAULT_PORT), fps=args.vmc_fps))
            except OutputError as e:
                raise OutputError(f"--vmc {args.vmc} --vmc-fps {args.vmc_fps:g}: {e}") from None
    except OutputError:
        for out in outs:
            out.close()
        raise
    return outs


def attach(outputs: list[UdpOutput], live, retarget=None, arkit_error: str | None = None) -> None:
    """Feed ``outputs`` from ``live``'s frames (a LiveSession frame listener). ``retarget``: the ARKit
    map (the hub's ``arkit_retarget``; None = the stand-in's); the conversion is done once per batch and
    shared with the server's ARKit subscribers and MQTT through the frames' cache. ``arkit_error`` (the
    hub's: the model's head has no map) refuses the outputs with :class:`OutputError`."""
    if not outputs:
        return
    if arkit_error:
        raise OutputError(f"{' and '.join(o.name for o in outputs)} send ARKit weights, but {arkit_error}")
    from mm2face.realtime.protocol import FrameBatchEncoder

    def on_frames(_live, frames) -> None:
        ak = FrameBatchEncoder(frames, retarget).arkit()
        values = output_values(np.stack([f.params for f in frames]), ak)
        times = [f.t_audio_s for f in frames]
        for out in outputs:
            out.push(times, values)
    live.listeners.append(on_frames)
