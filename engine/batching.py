"""The scheduler: one worker steps every streaming session that shares a model, as batched hops.

    b = SessionBatcher(model, device="cpu", on_frames=send)      # send(key, [Frame]) must not block
    key = b.add(StreamSession(model, style="calm"))
    b.push_audio(key, chunk_16k)          # any thread; returns at once
    b.start()                             # worker thread: batched hops as audio arrives
    ...
    b.stop()

It is the only thing that steps sessions: the WebSocket server (:mod:`mm2face.realtime.server`), the
MQTT bridge and ``mm2face-live`` (through the server's hub) and the benchmarks all run it.

Each scheduling round takes the sessions whose next hop is ready *now* and runs one hop for each of
them as one batched call (:func:`mm2face.engine.session.step_sessions`: one audio-encoder call, one G
step, grouped decoder calls). The batch is whatever is ready, never a fixed full batch, so:

* an idle session (no new input) is simply not in the round;
* a session that pushed a burst of audio gets one hop per round, like everybody else, so its backlog
  never makes the others' rounds longer (round robin; ``max_batch`` caps a batched call and the start
  of the order rotates);
* speakers first: sessions that pushed real audio within ``speaking_hold_s`` come before the others in
  a round, so with more ready hops than ``max_batch`` the speakers' hops take the first batched calls;
* a slow consumer never blocks the worker: frames go to ``on_frames`` (which must not block, e.g. hand
  them to an event loop) or to a per-session list read by :meth:`drain`;
* a session whose hop raises is removed and reported through ``on_error``; the rest of its batch is
  re-run without it.

Only the worker touches the sessions: pushes, style changes, end and flush are queued per session
and applied at the start of the next round, in order. The timing is the session's own: each pushed
chunk carries its arrival time (``time.time()`` seconds unless given) and the session stamps every
:class:`~mm2face.engine.session.Frame` with ``audio_arrival_time`` and ``input_ready_time``.
:meth:`when_caught_up` tells a caller (e.g. an event loop awaiting its frames) when a session has
neither queued input nor a ready hop left.
"""
from __future__ import annotations

import collections
import functools
import itertools
import threading
import time
from typing import Callable, Hashable

import numpy as np

from mm2face.engine.batch_state import BatchState
from mm2face.engine.session import Frame, StreamSession, step_sessions

SPEAKING_HOLD_S = 1.0      # a session counts as speaking this long after its last real audio arrived
WAKE_POLL_S = 0.05         # the worker re-checks its stop flag this often while nothing is queued


class _Slot:
    """Per-session state kept by the scheduler."""

    def __init__(self, key, session: StreamSession):
        self.key = key
        self.session = session
        self.inbox: collections.deque = collections.deque()   # (kind, value, extra) applied in order
        self.out: list[Frame] = []
        self.waiters: list[Callable[[BaseException | None], None]] = []
        self.last_audio_time = -float("inf")                  # arrival of the last real audio pushed
        self.removed = False


class SessionBatcher:
    """Runs the hops of many :class:`StreamSession` s that share one model as batched steps.

    ``max_batch``: most sessions in one batched call (larger rounds are split).
    ``on_frames(key, frames)``: called by the worker with each session's new :class:`Frame` s;
    when None, frames collect per session and :meth:`drain` returns them.
    ``on_error(key, exc)``: a session failed and was removed.
    ``on_step(seconds, n)``: after every batched call of ``n`` hops (metrics).
    ``speaking_hold_s``: how long after its last real audio a session is served before silent ones.
    """

    def __init__(self, model, device="cpu", max_batch: int = 256,
                 on_frames: Callable[[Hashable, list[Frame]], None] | None = None,
                 on_error: Callable[[Hashable, BaseException], None] | None = None,
                 on_step: Callable[[float, int], None] | None = None,
                 speaking_hold_s: float = SPEAKING_HOLD_S):
        self.model = model
        # the model state of all its sessions, a row each (engine/batch_state.py): a session joins it at
        # its first hop here (in the worker) and leaves it when removed
        self.state = BatchState(model, device=device)
        self.step_fn = functools.partial(step_sessions, state=self.state)
        self.device = device
        self.max_batch = max(1, int(max_batch))
        self.on_frames = on_frames
        self.on_error = on_error
        self.on_step = on_step
        self.speaking_hold_s = float(speaking_hold_s)
        self._slots: dict[Hashable, _Slot] = {}
        self._lock = threading.Lock()                 # guards _slots, every inbox and waiter list
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._rr = 0                                  # round-robin start
        self.stats = {"rounds": 0, "batches": 0, "hops": 0, "batch_sizes": collections.Counter(),
                      "round_ms": collections.deque(maxlen=10000), "busy_s": 0.0, "errors": 0}

    # ---- sessions ------------------------------------------------------------------------------
    def add(self, session: StreamSession, key: Hashable | None = None) -> Hashable:
        if session.model is not self.model:
            raise ValueError("SessionBatcher.add: the session must use the batcher's model")
        key = next(self._ids) if key is None else key
        with self._lock:
            if key in self._slots:
                raise KeyError(f"session key {key!r} already in use")
            self._slots[key] = _Slot(key, session)
        return key

    def remove(self, key: Hashable) -> StreamSession | None:
        """Forget session ``key`` (its queued input is dropped; its waiters are released)."""
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is None:
                return None
            slot.removed = True
            waiters, slot.waiters = slot.waiters, []
        self.state.release(slot.session)          # its row is freed at the next round (the worker's)
        for fn in waiters:
            fn(None)
        return slot.session

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key) -> bool:
        return key in self._slots

    def keys(self) -> list:
        with self._lock:
            return list(self._slots)

    def session(self, key) -> StreamSession:
        return self._slots[key].session

    # ---- input (any thread) --------------------------------------------------------------------
    def push_audio(self, key, audio_16k: np.ndarray, arrival_time: float | None = None) -> None:
        """Queue ``(samples,)`` float32 16 kHz audio for session ``key`` that arrived at ``arrival_time``
        (``time.time()`` seconds; None = now)."""
        t = time.time() if arrival_time is None else arrival_time
        a = np.asarray(audio_16k, np.float32).reshape(-1)
        self._queue(key, ("audio", a, t), audio_time=t)

    def push_no_audio(self, key, n_samples: int, arrival_time: float | None = None) -> None:
        """Let ``n_samples`` of 16 kHz time pass with no audio (idle / text-only motion)."""
        t = time.time() if arrival_time is None else arrival_time
        self._queue(key, ("noaudio", int(n_samples), t))

    def set_style(self, key, text: str, blend_s: float | None = None) -> None:
        self._queue(key, ("style", text, blend_s))

    def set_guidance(self, key, scale: float) -> None:
        self._queue(key, ("guidance", float(scale), None))

    def end(self, key, arrival_time: float | None = None) -> None:
        """Input over for ``key``: its last frames and the closing tail follow in the next round."""
        self._queue(key, ("end", None, time.time() if arrival_time is None else arrival_time))

    def flush(self, key, arrival_time: float | None = None) -> None:
        """Barge-in for ``key``: queued audio not yet used is dropped, the face returns to idle."""
        self._queue(key, ("flush", None, time.time() if arrival_time is None else arrival_time))

    def when_caught_up(self, key, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(None)`` from the worker once ``key`` has neither queued input nor a ready hop (its
        frames so far have gone to ``on_frames``), or ``fn(exc)`` when the session fails; ``fn(None)`` at
        once from :meth:`remove`. ``fn`` must not block (e.g. ``loop.call_soon_threadsafe``)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                raise KeyError(f"unknown session {key!r}")
            slot.waiters.append(fn)
        self._wake.set()

    def _queue(self, key, item, audio_time: float | None = None) -> None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                raise KeyError(f"unknown session {key!r}")
            slot.inbox.append(item)
            if audio_time is not None:
                slot.last_audio_time = max(slot.last_audio_time, audio_time)
        self._wake.set()

    # ---- output --------------------------------------------------------------------------------
    def drain(self, key) -> list[Frame]:
        """Frames collected for ``key`` since the last call (only when ``on_frames`` is None)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return []
            out, slot.out = slot.out, []
        return out

    # ---- the scheduling round (worker thread, or call it yourself) -------------------------------
    def input_samples(self, key, audio_only: bool = False) -> int:
        """The input clock of session ``key`` in 16 kHz samples, from any thread: what the session has
        taken in (its own ``n_in``: audio, no-audio time, end/flush padding, dropped audio gone) plus the
        audio and no-audio time still queued for it. ``audio_only``: the real audio pushed so far instead
        (the session's ``n_real`` plus the audio queued). The worker moves queued input into the session
        under the same lock, so the sum never counts a chunk twice or not at all."""
        kinds = ("audio",) if audio_only else ("audio", "noaudio")
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                raise KeyError(f"unknown session {key!r}")
            queued = sum(len(val) if kind == "audio" else val for kind, val, _ in slot.inbox if kind in kinds)
            return (slot.session.n_real if audio_only else slot.session.n_in) + queued

    def _apply_inbox(self, slot: _Slot) -> None:
        s = slot.session
        while True:
            with self._lock:
                if not slot.inbox:
                    return
                kind, val, extra = slot.inbox[0]
                if kind == "end" and s.hop_ready():
                    # the hops already ready run batched with everyone else's first; end() (its padding and
                    # closing tail, computed at once, unbatched) is applied when they are done
                    return
                slot.inbox.popleft()
                # input moves from the inbox into the session under the lock (see input_samples)
                if kind == "audio":
                    s.push_audio(val, arrival_time=extra)
                    continue
                if kind == "noaudio":
                    s.push_no_audio(val, arrival_time=extra)
                    continue
            if kind == "style":
                s.set_style(val, extra)
            elif kind == "guidance":
                s.set_guidance(val)
            elif kind == "end":        # pads with silence and computes its (few) tail hops at once, unbatched
                self._emit(slot, s.end(arrival_time=extra))
            elif kind == "flush":
                self._emit(slot, s.flush(arrival_time=extra))

    def _order(self, ready: list[_Slot]) -> list[_Slot]:
        """Round-robin rotation, then speakers (real audio within ``speaking_hold_s``) before the rest."""
        n = len(ready)
        start = self._rr % n
        self._rr += 1
        ready = ready[start:] + ready[:start]
        now = time.time()
        return sorted(ready, key=lambda sl: now - sl.last_audio_time > self.speaking_hold_s)

    def step(self) -> int:
        """One round: apply queued input, then one hop for every ready session, batched.
        Returns the number of hops run."""
        t_round = time.perf_counter()
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            if slot.inbox:
                try:
                    self._apply_inbox(slot)
                except Exception as exc:  # noqa: BLE001 - one bad session must not stop the others
                    self._fail(slot, exc)
        ready = [sl for sl in slots if not sl.removed and sl.session.hop_ready()]
        hops = 0
        if ready:
            ready = self._order(ready)
            for i in range(0, len(ready), self.max_batch):
                hops += self._run_batch(ready[i:i + self.max_batch])
            self.stats["rounds"] += 1
            dt = time.perf_counter() - t_round
            self.stats["round_ms"].append(dt * 1e3)
            self.stats["busy_s"] += dt
        self._release(slots)
        return hops

    def _release(self, slots: list[_Slot]) -> None:
        """Call the waiters of sessions that have caught up (no queued input, no ready hop)."""
        done = []
        with self._lock:
            for sl in slots:
                if sl.waiters and not sl.removed and not sl.inbox and not sl.session.hop_ready():
                    done += sl.waiters
                    sl.waiters = []
        for fn in done:
            fn(None)

    def _run_batch(self, batch: list[_Slot]) -> int:
        t0 = time.perf_counter()
        try:
            self.step_fn([sl.session for sl in batch])
        except Exception:  # noqa: BLE001 - find the culprit: run each alone
            if len(batch) == 1:
                self._fail(batch[0], _last_exc())
                return 0
            return sum(self._run_batch([sl]) for sl in batch)
        if self.on_step is not None:
            self.on_step(time.perf_counter() - t0, len(batch))
        self.stats["batches"] += 1
        self.stats["hops"] += len(batch)
        self.stats["batch_sizes"][len(batch)] += 1
        for sl in batch:
            s = sl.session
            frames, s.pending = s.pending, []
            self._emit(sl, frames)
        return len(batch)

    def _emit(self, slot: _Slot, frames: list[Frame]) -> None:
        if not frames:
            return
        if self.on_frames is not None:
            try:
                self.on_frames(slot.key, frames)
            except Exception as exc:  # noqa: BLE001 - a failing consumer affects only its session
                self._fail(slot, exc)
        else:
            with self._lock:
                slot.out.extend(frames)

    def _fail(self, slot: _Slot, exc: BaseException) -> None:
        self.stats["errors"] += 1
        with self._lock:
            waiters, slot.waiters = slot.waiters, []
        self.remove(slot.key)
        for fn in waiters:
            fn(exc)
        if self.on_error is not None:
            self.on_error(slot.key, exc)

    def run_until_idle(self) -> int:
        """Run rounds until no session has queued input or a ready hop. Returns hops run."""
        total = 0
        while True:
            n = self.step()
            total += n
            with self._lock:
                pending = any(sl.inbox for sl in self._slots.values())
            if n == 0 and not pending:
                return total

    # ---- worker thread -------------------------------------------------------------------------
    def start(self) -> "SessionBatcher":
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mm2face-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        import torch
        with torch.no_grad():          # as in warm-up and tests: compiled graphs are guarded on it
            while not self._stop.is_set():
                self._wake.wait(WAKE_POLL_S)
                self._wake.clear()
                while not self._stop.is_set() and self.step():
                    pass                      # keep going while hops are ready

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _last_exc() -> BaseException:
    import sys
    return sys.exc_info()[1]
