"""The measuring parts shared by latency, throughput and soak benchmarks.

* :func:`load_bench_model`: the checkpoint to measure (default checkpoint, a path, or random weights
  of the default or tiny config when no checkpoint exists: timings depend on the config only).
* :func:`run_inproc`: N sessions fed at real-time pace into one :class:`SessionBatcher` in this
  process (no network); per frame: arrival, ready and delivery times (``time.time``).
* :func:`run_ws`: N WebSocket clients stream to the real server (:mod:`mm2face.realtime.server`) running
  in a thread of this process; per frame: the server's arrival/ready/send stamps and the client's
  receipt time (``time.time``, same host).
* :class:`ServerProcess` + :func:`run_server_clients`: ``mm2face-live --serve`` in its own process and
  N WebSocket clients in this one streaming at real-time pace; per frame: the clients' own send and
  receipt times (the honest capacity of the server, ``mm2face-bench throughput --server``).
* :func:`summarize`: p50/p95/p99 of audio-to-face and processing latency, per-stage times, real-time
  factor, frame-interval jitter.
"""
from __future__ import annotations

import array
import collections
import heapq
import math
import struct
import threading
import time
from pathlib import Path

import numpy as np

from mm2face.benchmarks.common import speech_like_audio, stats_ms
from mm2face.engine.audio import AudioFileError, load_audio_16k

SR = 16000
STAGES = ("audio_enc_ms", "g_step_ms", "decode_ms", "vad_ms", "contact_ms")   # per-hop session stats (engine/session.py)
STAGE_COLS = 2 + len(STAGES)     # stage records: (session, time, *STAGES)


# ----------------------------------------------------------------------------- inputs

def load_speech(seconds: float, path: str | None = None) -> tuple[np.ndarray, str]:
    """``(samples,)`` float32 16 kHz speech of ``seconds`` (the bundled demo speech, looped), and its source."""
    p = Path(path) if path else Path(__file__).resolve().parents[1] / "realtime" / "assets" / "demo_speech.wav"
    try:
        x, src = load_audio_16k(p), str(p.name)
    except AudioFileError:
        x, src = speech_like_audio(min(seconds, 30.0)), "synthetic speech-like tone"
    n = int(seconds * SR)
    reps = -(-n // len(x))
    return np.tile(x, reps)[:n].astype(np.float32), src


def load_bench_model(ckpt: str | None, device: str = "cpu", backend: str = "eager", tiny: bool = False):
    """(model, description). Without a checkpoint file: random weights of the default config
    (``tiny``: the test config), which time the same as trained weights of that config."""
    import torch
    from mm2face.engine.backends import apply_backend
    from mm2face.engine.model import MM2Face, default_checkpoint_path, load_model
    if tiny:
        m, desc = MM2Face.random(seed=0, small=True), "random weights, tiny test config"
    elif ckpt or default_checkpoint_path().exists():
        m = load_model(ckpt, device="cpu")
        desc = f"checkpoint {ckpt or default_checkpoint_path().name}"
    else:
        m, desc = MM2Face.random(seed=0, small=False), "random weights, default config (no default checkpoint yet)"
    n_params = sum(p.numel() for p in m.parameters())
    if backend == "auto":
        from mm2face.engine.backends import default_backend
        backend = default_backend(device)
    t = time.perf_counter()
    m = apply_backend(m, backend, device)
    torch.set_grad_enabled(False)
    warm_up(m, device)
    return m, (f"{desc}; {n_params / 1e6:.2f} M parameters; backend {backend} on {device} "
               f"(build + warm-up {time.perf_counter() - t:.1f} s)")


def warm_up(model, device="cpu", batches=(1, 2, 8), seconds: float = 2.0) -> None:
    """Run a few hops at each batch size so that compilation, export and allocator growth happen
    before anything is timed."""
    from mm2face.engine.batching import SessionBatcher
    audio = speech_like_audio(seconds)
    for n in batches:
        b = SessionBatcher(model, device=device)
        keys = [b.add(make_session(model, device, seed=j)) for j in range(n)]
        for k in keys:
            b.push_audio(k, audio)
        b.run_until_idle()


def make_session(model, device="cpu", style: str = "", seed: int = 0, vad: bool = True):
    from mm2face.engine.session import StreamConfig, StreamSession
    return StreamSession(model, StreamConfig(seed=seed, vad=vad), style=style, device=device)


# ----------------------------------------------------------------------------- in-process run

class LoopedAudio:
    """``seconds`` of audio made by looping ``base`` without allocating it all: ``len()`` and slicing."""

    def __init__(self, base: np.ndarray, seconds: float):
        self.base = np.asarray(base, np.float32)
        self.n = int(seconds * SR)

    def __len__(self):
        return self.n

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b = max(0, sl.start or 0), min(self.n, self.n if sl.stop is None else sl.stop)
        if b <= a:
            return np.zeros(0, np.float32)
        idx = np.arange(a, b) % len(self.base)
        return self.base[idx]


def run_inproc(model, audio, sessions: int = 1, chunk_s: float = 0.02, device="cpu",
               max_batch: int = 256, style: str = "", progress: bool = False, on_tick=None,
               finish: bool = False, vad: bool = True) -> dict:
    """Feed ``audio`` to ``sessions`` sessions at real-time pace (session j starts ``j / sessions`` of a
    hop later than session 0, as independent clients would) through one batcher worker thread.

    Returns ``{"frames": (n, 6) array of (session, seq, t_audio_s, arrival, ready, delivered), "stages":
    (m, STAGE_COLS) array of (session, time, *STAGES), ...}`` with times in ``time.time()`` seconds
    (arrival and ready as the session stamped its frames). Records are packed doubles (48 bytes a frame) so that a long soak
    measures the engine's memory, not the recorder's. ``on_tick(elapsed_s)`` is called about once a second.
    """
    from mm2face.engine.batching import SessionBatcher
    recs = array.array("d")
    stages = array.array("d")
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def on_frames(key, frames):
        now = time.time()
        st = batcher.session(key).stats if key in batcher else {}
        with lock:
            for f in frames:
                recs.extend((key, f.seq, f.t_audio_s, f.audio_arrival_time, f.input_ready_time, now))
            counts[key] += len(frames)
            stages.extend((key, now, *(st.get(s, math.nan) for s in STAGES)))

    batcher = SessionBatcher(model, device=device, max_batch=max_batch, on_frames=on_frames)
    keys = [batcher.add(make_session(model, device, style, seed=j, vad=vad)) for j in range(sessions)]
    hop_s = model.samples_per_token / SR
    n = int(chunk_s * SR)
    n_chunks = -(-len(audio) // n)
    # event queue: (due time, session index, chunk index)
    t0 = time.time() + 0.05
    events = [(t0 + (j / sessions) * hop_s + chunk_s, j, 0) for j in range(sessions)]
    heapq.heapify(events)
    lag = array.array("d")
    next_tick = t0 + 1.0
    batcher.start()
    try:
        while events:
            due, j, i = heapq.heappop(events)
            now = time.time()
            if due > now:
                time.sleep(due - now)
            now = time.time()
            lag.append(now - due)
            batcher.push_audio(keys[j], audio[i * n:(i + 1) * n], arrival_time=now)
            if i + 1 < n_chunks:
                heapq.heappush(events, (t0 + (j / sessions) * hop_s + (i + 2) * chunk_s, j, i + 1))
            if on_tick is not None and now >= next_tick:
                on_tick(now - t0)
                next_tick += 1.0
        # let the last ready hops finish; with ``finish`` end() each stream (its padding and closing
        # tail are not real-time audio: their frames are left out of the latency statistics)
        deadline = time.time() + 5.0
        expect = [(len(audio) - model.lookahead_samples) // model.samples_per_token * model.down] * sessions
        if finish:
            for k in keys:
                batcher.end(k)
            expect = [-(-len(audio) // 640)] * sessions
        while time.time() < deadline:
            with lock:
                got = dict(counts)
            if all(got.get(k, 0) >= e for k, e in zip(keys, expect)):
                break
            time.sleep(0.01)
    finally:
        batcher.stop()
    bs = batcher.stats
    return {"frames": np.frombuffer(recs, np.float64).reshape(-1, 6).copy(),
            "stages": np.frombuffer(stages, np.float64).reshape(-1, STAGE_COLS).copy(),
            "record_bytes": (len(recs) + len(stages) + len(lag)) * 8,
            "audio_s": len(audio) / SR, "sessions": sessions,
            "expected_frames": int(sum(expect)), "n_audio_frames": -(-len(audio) // 640),
            "feeder_lag": stats_ms(lag), "batch_sizes": dict(sorted(bs["batch_sizes"].items())),
            "round_ms": stats_ms(np.asarray(bs["round_ms"]) / 1e3), "errors": bs["errors"],
            "round_busy_s": float(bs["busy_s"]),
            "engine_totals": [_totals(batcher.session(k)) for k in keys if k in batcher],
            "clock": "time.time", "transport": "in-process (SessionBatcher worker thread)"}


def _totals(session) -> dict:
    st = session.stats
    return {"hops": st["hops"], "frames": st["frames"],
            **{s + "_total": st.get(s + "_total", 0.0) for s in STAGES}}


# ----------------------------------------------------------------------------- WebSocket run

def run_ws(model, audio: np.ndarray, sessions: int = 1, chunk_s: float = 0.02, device="cpu",
           style: str = "", vad: bool = True) -> dict:
    """Stream ``audio`` from ``sessions`` WebSocket clients to the real server in a thread of this
    process, at real-time pace. Frames are binary; receipt is stamped with ``time.time()``."""
    import asyncio

    from mm2face.realtime import protocol as P
    from mm2face.realtime.server import Hub, serve_hub
    import websockets

    hub = Hub(lambda st: make_session(model, device, st, vad=vad), max_sessions=max(64, sessions + 1))
    stages: list[tuple] = []
    totals: list[dict] = []

    def on_session(live, created):
        if created:
            def listener(lv, frames):
                st = lv.session.stats
                stages.append((lv.num, time.time(), *(st.get(s, math.nan) for s in STAGES)))
            live.listeners.append(listener)
        else:
            totals.append(_totals(live.session))
    hub.session_listeners.append(on_session)

    ready = threading.Event()
    stop = None
    box = {}

    def server_thread():
        async def main():
            nonlocal stop
            stop = asyncio.Event()
            async with serve_hub(hub, "127.0.0.1", 0) as server:
                box["port"] = server.port
                box["loop"] = asyncio.get_running_loop()
                ready.set()
                await stop.wait()
        asyncio.run(main())

    th = threading.Thread(target=server_thread, daemon=True)
    th.start()
    if not ready.wait(30):
        raise RuntimeError("the benchmark server did not start within 30 s")
    url = f"ws://127.0.0.1:{box['port']}"
    hop_s = model.samples_per_token / SR
    n = int(chunk_s * SR)
    recs: list[tuple] = []

    async def client(j: int):
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            await ws.send(P._dumps({"type": "open", "session": f"bench{j}", "sample_rate": SR,
                                    "sample_format": "f32", "format": "binary", "style": style}))
            got_final = asyncio.Event()

            async def reader():
                async for msg in ws:
                    now = time.time()
                    if isinstance(msg, bytes):
                        f = P.decode_frame_binary(msg)
                        recs.append((j, f.seq, f.t_audio_s, f.audio_arrival_time, f.input_ready_time, now,
                                     f.server_send_time))
                    elif '"ended"' in msg or '"error"' in msg:
                        if '"error"' in msg:
                            print("server error:", msg[:300])
                        got_final.set()
            rt = asyncio.create_task(reader())
            await asyncio.sleep(0.2 + (j / sessions) * hop_s)
            t0 = time.perf_counter()
            for i in range(0, len(audio), n):
                due = t0 + (i // n + 1) * chunk_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(audio[i:i + n].astype("<f4").tobytes())
            # end at once, as a client whose speech is over would: the last token's frames wait for its
            # lookahead audio or for end(), so any pause here would be counted as their latency
            await ws.send(P._dumps({"type": "end"}))
            try:
                await asyncio.wait_for(got_final.wait(), 10)
            except asyncio.TimeoutError:
                pass
            await ws.send(P._dumps({"type": "close"}))
            await asyncio.sleep(0.05)
            rt.cancel()

    async def all_clients():
        await asyncio.gather(*(client(j) for j in range(sessions)))

    try:
        asyncio.run(all_clients())
    finally:
        if stop is not None:
            box["loop"].call_soon_threadsafe(stop.set)
        th.join(10)
    # frames of the end() tail carry no arrival stamp of real audio; keep the streamed ones
    n_audio_frames = len(audio) // 640
    frames = np.array([r[:6] for r in recs if r[1] < n_audio_frames and math.isfinite(r[3])],
                      np.float64).reshape(-1, 6)
    send = [r[5] - r[6] for r in recs if r[1] < n_audio_frames and math.isfinite(r[6])]
    return {"frames": frames, "stages": np.array(stages, np.float64).reshape(-1, STAGE_COLS), "audio_s": len(audio) / SR, "sessions": sessions,
            "send_s": send, "engine_totals": totals, "clock": "time.time (same host)",
            "transport": "WebSocket to mm2face.realtime.server in this process (binary frames)"}


# ----------------------------------------------------------------------------- summary

def summarize(run: dict, hop_s: float = 0.08) -> dict:
    """Latency percentiles, per-stage times, real-time factor and jitter of a run."""
    fr = np.asarray(run["frames"], np.float64).reshape(-1, 6)
    if run.get("n_audio_frames") and len(fr):
        fr = fr[fr[:, 1] < run["n_audio_frames"]]              # the streamed audio only (no end() tail)
    out: dict = {"sessions": run["sessions"], "audio_s": run["audio_s"], "frames": int(len(fr)),
                 "expected_frames": run.get("expected_frames"),
                 "transport": run.get("transport"), "clock": run.get("clock")}
    if len(fr):
        a2f, proc = fr[:, 5] - fr[:, 3], fr[:, 5] - fr[:, 4]
        out["audio_to_face_ms"] = stats_ms(a2f)
        out["processing_ms"] = stats_ms(proc)
        # hop intervals: time between deliveries of a session's consecutive first-frames-of-token
        intervals = []
        per_session_p95 = []
        for s in np.unique(fr[:, 0]):
            f = fr[fr[:, 0] == s]
            f = f[np.argsort(f[:, 1])]
            first = f[(f[:, 1] % round(hop_s * 25)) == 0]
            intervals += list(np.diff(first[:, 5]))
            per_session_p95.append(float(np.percentile(f[:, 5] - f[:, 3], 95)) * 1e3)
        iv = np.asarray(intervals)
        if len(iv):
            out["hop_interval_ms"] = stats_ms(iv)
            out["jitter_ms"] = {"std": float(iv.std() * 1e3),
                                "p95_abs_dev": float(np.percentile(np.abs(iv - hop_s), 95) * 1e3)}
        out["worst_session_a2f_p95_ms"] = max(per_session_p95)
    st = np.asarray(run["stages"], np.float64).reshape(-1, STAGE_COLS)[:, 2:]
    stages = {}
    for i, s in enumerate(STAGES):
        if len(st):
            stages[s.replace("_ms", "")] = stats_ms(st[:, i] / 1e3)
    if run.get("send_s"):
        stages["send"] = stats_ms(run["send_s"])
    out["stages_ms"] = stages
    tot = run.get("engine_totals") or []
    if tot:
        t = tot[0]                       # session 0 (in a batch every session sees the batch's times)
        compute_s = sum(t[s + "_total"] for s in STAGES) / 1e3
        out["compute_ms_per_hop"] = compute_s * 1e3 / max(t["hops"], 1)
        # real-time factor: compute time per second of audio (one stream; for N batched streams it is
        # the time of the batches that carried session 0)
        out["rtf"] = compute_s / max(t["hops"] * hop_s, 1e-9)
    if run.get("round_busy_s") is not None:
        out["worker_busy_frac"] = run["round_busy_s"] / max(run["audio_s"], 1e-9)
    for k in ("feeder_lag", "batch_sizes", "round_ms", "errors"):
        if k in run:
            out[k] = run[k]
    return out


def latency_series(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stream time s, audio-to-face ms, processing ms) of session 0's frames, for plotting."""
    fr = np.asarray(run["frames"], np.float64).reshape(-1, 6)
    if not len(fr):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    fr = fr[fr[:, 0] == fr[0, 0]]
    if not len(fr):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    fr = fr[np.argsort(fr[:, 1])]
    return fr[:, 2], (fr[:, 5] - fr[:, 3]) * 1e3, (fr[:, 5] - fr[:, 4]) * 1e3


# ----------------------------------------------------------------------------- the real server, real clients

SERVER_START_TIMEOUT_S = 300.0      # model load + backend build + warm-up of a served checkpoint
FRAME_HEADER = struct.Struct("<4sHHII")   # the head of a binary MMF1 frame: magic, version, flags, seq, session_num


class ServerProcess:
    """``mm2face-live --serve`` in its own process, on a port the OS picks (``--port 0``; the URL is read
    from the line it prints when it serves). Use as a context manager; stderr goes to ``log_path``."""

    @staticmethod
    def base_cmd() -> list[str]:
        import sys
        return [sys.executable, "-m", "mm2face.realtime.cli", "--serve", "--host", "127.0.0.1", "--port", "0",
                "--quiet"]

    def __init__(self, server_args: list[str], log_path: Path):
        import subprocess
        self.cmd = self.base_cmd() + list(server_args)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")      # a file, not a pipe: a full pipe would stall the server
        self.proc = subprocess.Popen(self.cmd, stderr=self._log, stdout=self._log, text=True)
        self.url = self._wait_url()

    def _wait_url(self) -> str:
        import re
        t_end = time.time() + SERVER_START_TIMEOUT_S
        while time.time() < t_end:
            m = re.search(r"serving (ws://\S+)", self.log_path.read_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"the server did not start serving within {SERVER_START_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        import signal
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)           # the server's own graceful stop
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_server_clients(url: str, audio, sessions: int = 1, chunk_s: float = 0.04, style: str = "",
                       end_timeout_s: float = 30.0) -> dict:
    """``sessions`` WebSocket clients in this process (one asyncio loop) each open their own session on
    the server at ``url`` and stream ``audio`` at real-time pace (client j starts ``j / sessions`` of a hop
    after client 0, as independent clients would), then ``end``. Every time is the client's own clock
    (``time.time()``): frame ``seq`` shows audio sample ``seq * 640``; its audio-to-frame latency is the
    frame's receipt minus the send of the chunk that held that sample. Records only the streamed audio's
    frames (not the end() tail). Returns ``{"frames": (n, 6) array of (session, seq, t_audio_s, sent,
    sent, received), "client_cpu_s", "wall_s", "send_lag", "errors", ...}`` (the ``frames`` layout of
    :func:`summarize`, whose arrival and ready columns are both the send time here)."""
    import asyncio
    import resource

    from websockets.asyncio.client import connect

    from mm2face.realtime import protocol as P

    n = int(chunk_s * SR)
    n_chunks = -(-len(audio) // n)
    n_audio_frames = len(audio) // 640
    hop_s = 0.08
    recs = array.array("d")
    lag = array.array("d")
    errors: list[str] = []
    chunks = [np.asarray(audio[i * n:(i + 1) * n], np.float32).astype("<f4").tobytes() for i in range(n_chunks)]

    async def client(j: int, t0: float):
        sent = np.full(n_chunks, np.nan)
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.send(P._dumps({"type": "open", "session": f"cap{j}", "sample_rate": SR, "sample_format": "f32",
                                    "format": "binary", "style": style, "idle": False}))
            while True:
                m = await ws.recv()
                if isinstance(m, str) and '"opened"' in m:
                    break
                if isinstance(m, str) and '"error"' in m:
                    errors.append(m[:300])
                    return
            ended = asyncio.Event()

            async def reader():
                async for msg in ws:
                    now = time.time()
                    if isinstance(msg, bytes):
                        _, _, _, seq, _ = FRAME_HEADER.unpack_from(msg)
                        if seq < n_audio_frames:
                            recs.extend((j, seq, seq / 25.0, sent[seq * 640 // n], sent[seq * 640 // n], now))
                    elif '"ended"' in msg:
                        ended.set()
                    elif '"error"' in msg:
                        errors.append(msg[:300])
            rt = asyncio.create_task(reader())
            start = t0 + (j / sessions) * hop_s
            for i in range(n_chunks):
                due = start + i * chunk_s
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.time()
                lag.append(now - due)
                sent[i] = now
                await ws.send(chunks[i])
            await ws.send(P._dumps({"type": "end"}))
            try:
                await asyncio.wait_for(ended.wait(), end_timeout_s)
            except asyncio.TimeoutError:
                errors.append(f"client {j}: no 'ended' within {end_timeout_s:.0f} s")
            await ws.send(P._dumps({"type": "close"}))
            rt.cancel()

    async def main():
        t0 = time.time() + 0.5 + 0.01 * sessions              # all clients connected and opened first
        await asyncio.gather(*(client(j, t0) for j in range(sessions)))

    ru0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    asyncio.run(main())
    ru1, wall = resource.getrusage(resource.RUSAGE_SELF), time.time() - w0
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"frames": np.frombuffer(recs, np.float64).reshape(-1, 6).copy(), "stages": np.zeros((0, STAGE_COLS)),
            "audio_s": len(audio) / SR, "sessions": sessions, "expected_frames": n_audio_frames * sessions,
            "n_audio_frames": n_audio_frames, "feeder_lag": stats_ms(lag), "errors": len(errors),
            "error_messages": errors[:5], "client_cpu_s": cpu, "wall_s": wall,
            "client_cpu_frac": cpu / max(wall, 1e-9), "clock": "time.time (the clients' own)",
            "transport": "WebSocket clients (one asyncio process) to mm2face-live --serve (its own process)"}
