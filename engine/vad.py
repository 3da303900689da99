"""Streaming voice-activity gate: with noise and no speech, the mouth rests.

The audio-to-motion model reads every sound as a possible voice, so a room's rumble, hum or a fan can
make the lips twitch. This gate runs **Silero VAD** (the ONNX model shipped inside the ``silero-vad``
wheel, trained on real speech) through onnxruntime with one thread, and eases the mouth units and the
jaw to rest while it hears no speech. Emotion, brows, blinks and the head are untouched.

Determinism and latency:

* The audio is cut into 512-sample chunks (32 ms at 16 kHz) on a fixed grid from the stream's first
  sample; each chunk is run once, in order, with the model's recurrent state and its 64-sample
  context carried per stream (:class:`VadStream`). Offline generation runs the same chunks
  (:func:`vad_frame_weights`), so streaming equals offline.
* Frame ``f`` (samples ``[640 f, 640 (f + 1))``) is decided from the chunks that end inside the frame
  or its ``lookahead_samples`` (640 = the session's 40 ms lookahead): audio the session already holds
  when it emits the frame. The gate adds no lookahead and no buffering.
* Per chunk a hysteresis state machine: speech starts when the probability reaches ``threshold_on``
  and ends after it has stayed below ``threshold_off`` for ``hangover_s``. A frame is *speech* when any
  of its chunks is. While speech the gate is fully open at once (an onset is never held back); after
  speech the gate closes over ``ramp_out_s`` (the mouth eases to rest instead of snapping).

Cost: one model call per 32 ms of audio (about 0.3 ms of one CPU core each; numbers in
docs/benchmarks.md). Turn it off with ``StreamConfig(vad=False)`` / ``generate(..., vad=False)`` or
``--no-vad`` on ``mm2face-live``, ``mm2face-generate`` and ``mm2face-eval``.
"""
from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mm2face.engine.frame import FPS, SAMPLES_PER_FRAME

VAD_SR = 16_000
CHUNK = 512                   # samples per model call at 16 kHz (the model's fixed input)
CONTEXT = 64                  # samples of the previous chunk the model reads before each chunk
STATE_SHAPE = (2, 1, 128)     # the model's recurrent state for one stream
MODEL_FILE = "silero_vad.onnx"


@dataclass
class VadConfig:
    threshold_on: float = 0.5      # speech starts when a chunk's speech probability reaches this
    threshold_off: float = 0.35    # ... and ends once it stays below this for hangover_s
    hangover_s: float = 0.064      # two chunks
    ramp_out_s: float = 0.08       # the gate closes over this (two frames) after speech ends
    lookahead_samples: int = SAMPLES_PER_FRAME   # audio past a frame's end it may read (the session's 40 ms)
    threads: int = 1               # onnxruntime intra-op threads


class VadUnavailable(RuntimeError):
    """The silero-vad wheel (its bundled ONNX model) or onnxruntime is missing."""


def silero_model_path() -> Path:
    """Path of the ONNX model inside the installed ``silero-vad`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.origin:
        raise VadUnavailable("the voice-activity gate needs the silero-vad package (pip install silero-vad); "
                             "or turn the gate off (--no-vad, StreamConfig(vad=False))")
    path = Path(spec.origin).parent / "data" / MODEL_FILE
    if not path.exists():
        raise VadUnavailable(f"{path} is missing; reinstall silero-vad, or turn the gate off with --no-vad")
    return path


_MODELS: dict[int, object] = {}
_LOCK = threading.Lock()


def _model(threads: int):
    """One onnxruntime session per process and thread count (``run`` is thread-safe; state is per stream)."""
    with _LOCK:
        if threads not in _MODELS:
            try:
                import onnxruntime as ort
            except ImportError as e:
                raise VadUnavailable("the voice-activity gate needs onnxruntime; or turn it off with --no-vad") from e
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
            _MODELS[threads] = ort.InferenceSession(str(silero_model_path()), sess_options=so,
                                                    providers=["CPUExecutionProvider"])
        return _MODELS[threads]


class VadStream:
    """The gate for one audio stream. Pull-based: :meth:`frame_weights` asks for the samples it needs
    through ``get_samples(a, b) -> (b - a,) float32`` (timeline samples ``[a, b)``), never past
    ``frame end + lookahead_samples``. Frames must be asked for in order."""

    def __init__(self, cfg: VadConfig | None = None):
        self.cfg = cfg or VadConfig()
        if self.cfg.lookahead_samples < 0:
            raise ValueError("VadConfig.lookahead_samples must be >= 0")
        self.model = _model(self.cfg.threads)
        self.state = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros(CONTEXT, np.float32)
        self.n_chunks = 0                         # chunks run so far (chunk j = samples [512 j, 512 j + 512))
        self.speech = False                       # hysteresis state after the last chunk
        self.quiet_s = 0.0                        # time below threshold_off while in speech
        self.flags: list[bool] = []               # speech state of chunks flag0, flag0 + 1, ...
        self.flag0 = 0
        self.weight = 0.0                         # gate weight of the last frame (0 = mouth at rest)
        self.next_frame = 0
        self.last_prob = 0.0
        self._ramp = 1.0 / max(1, int(round(self.cfg.ramp_out_s * FPS)))
        self._hang_chunks = self.cfg.hangover_s * VAD_SR / CHUNK
        self.chunk_calls = 0

    def _run_chunk(self, x: np.ndarray) -> None:
        inp = np.concatenate([self.context, x])[None]
        out, self.state = self.model.run(None, {"input": inp, "state": self.state,
                                                "sr": np.array(VAD_SR, np.int64)})
        self.context = x[-CONTEXT:].copy()
        p = float(out[0, 0])
        c = self.cfg
        if p >= c.threshold_on:
            self.speech, self.quiet_s = True, 0.0
        elif self.speech:
            if p < c.threshold_off:
                self.quiet_s += 1.0
                if self.quiet_s >= self._hang_chunks:
                    self.speech, self.quiet_s = False, 0.0
            else:
                self.quiet_s = 0.0
        self.flags.append(self.speech)
        self.last_prob = p
        self.n_chunks += 1
        self.chunk_calls += 1

    def feed_until(self, get_samples: Callable[[int, int], np.ndarray], end_sample: int) -> None:
        """Run every chunk of the grid that ends at or before ``end_sample``."""
        while CHUNK * (self.n_chunks + 1) <= end_sample:
            a = CHUNK * self.n_chunks
            self._run_chunk(np.asarray(get_samples(a, a + CHUNK), np.float32))

    def frame_weights(self, get_samples: Callable[[int, int], np.ndarray], f0: int, n: int) -> np.ndarray:
        """Gate weights ``(n,)`` in [0, 1] for frames ``f0 .. f0 + n - 1`` (1 = mouth as the model says,
        0 = mouth at rest)."""
        if f0 != self.next_frame:
            raise ValueError(f"VadStream: frames must come in order (expected {self.next_frame}, got {f0})")
        out = np.empty(n, np.float32)
        for i in range(n):
            f = f0 + i
            hi = SAMPLES_PER_FRAME * (f + 1) + self.cfg.lookahead_samples
            self.feed_until(get_samples, hi)
            j0, j1 = (SAMPLES_PER_FRAME * f) // CHUNK, hi // CHUNK    # chunks ending in (640 f, hi]
            speech = any(self.flags[j - self.flag0] for j in range(max(j0, self.flag0), j1))
            self.weight = 1.0 if speech else max(0.0, self.weight - self._ramp)
            out[i] = self.weight
            # keep the flags later frames can still read (chunks ending after the next frame's start)
            keep = (SAMPLES_PER_FRAME * (f + 1)) // CHUNK
            if keep > self.flag0:
                del self.flags[:keep - self.flag0]
                self.flag0 = keep
        self.next_frame = f0 + n
        return out


def vad_frame_weights(audio_16k: np.ndarray, n_frames: int, cfg: VadConfig | None = None) -> np.ndarray:
    """Offline: the gate weights ``(n_frames,)`` a :class:`VadStream` gives ``audio_16k: (samples,)``
    float32 at 16 kHz followed by silence (as a session pads after ``end()``)."""
    audio = np.clip(np.asarray(audio_16k, np.float32).reshape(-1), -1.0, 1.0)

    def get(a: int, b: int) -> np.ndarray:
        out = np.zeros(b - a, np.float32)
        seg = audio[a:min(b, len(audio))]
        out[:len(seg)] = seg
        return out
    return VadStream(cfg).frame_weights(get, 0, n_frames)
