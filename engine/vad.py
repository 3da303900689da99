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
* Per chunk a hysteresis state machine: speech starts when the probability reaches ``threshold_on``
  and ends once it has stayed below ``threshold_off`` for ``hangover_s``.
* Frame ``f`` (samples ``[640 f, 640 (f + 1))``) takes the state after the last chunk that ends by the
  frame's end + ``lookahead_samples`` (640 = the session's 40 ms lookahead): audio the session already
  holds when it emits the frame. The gate adds no lookahead and no buffering. While speech the gate is
  fully open at once (an onset is never held back); after speech it closes over ``ramp_out_s`` (the
  mouth eases to rest instead of snapping).
* Fast offset: Silero's probability stays high for 100-200 ms after the voice stops, longer than a
  pause's first frames. A per-stream energy tracker of the speech band (300-7800 Hz, 4th-order
  Butterworth, so rumble and hum do not count; up to 7.8 kHz so that the hiss of s, sh and f, which
  lies mostly above 4 kHz, counts as speech) closes the gate in steps once the band has stayed
  ``offset_drop_db`` under the recent speech level for more than ``offset_start_chunks`` chunks, shut
  at ``offset_chunks``. It never opens the gate, so noise alone cannot move the mouth.

Cost: one model call per 32 ms of audio (about 0.2 ms of one CPU core each; numbers in
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
from scipy.signal import butter, sosfilt

from mm2face.engine.frame import FPS, SAMPLES_PER_FRAME

VAD_SR = 16_000
CHUNK = 512                   # samples per model call at 16 kHz (the model's fixed input)
CONTEXT = 64                  # samples of the previous chunk the model reads before each chunk
STATE_SHAPE = (2, 1, 128)     # the model's recurrent state for one stream
MODEL_FILE = "silero_vad.onnx"
BAND_ORDER = 4                # Butterworth order of the speech-band filter (fast offset)
SILENCE_DB = -120.0           # level of an empty stream, dB re full scale


@dataclass
class VadConfig:
    threshold_on: float = 0.5      # speech starts when a chunk's speech probability reaches this
    threshold_off: float = 0.35    # ... and ends once it stays below this for hangover_s
    hangover_s: float = 0.064      # two chunks
    ramp_out_s: float = 0.08       # the gate closes over this (two frames) after speech ends
    lookahead_samples: int = SAMPLES_PER_FRAME   # audio past a frame's end it may read (the session's 40 ms)
    threads: int = 1               # onnxruntime intra-op threads
    # fast offset: the model's probability stays high for 100-200 ms after speech stops. While the voice
    # band's energy has stayed offset_drop_db under the stream's recent speech level for more than
    # offset_start_chunks chunks the gate closes step by step, shut at offset_chunks (0 = off). It only
    # closes the gate, never opens it.
    offset_start_chunks: int = 2   # 64 ms
    offset_chunks: int = 4         # 128 ms
    offset_drop_db: float = 20.0
    level_decay_db_s: float = 3.0  # how fast the tracked speech level falls, dB per second
    # speech band of the energy tracker: above rumble and hum, and up to the sibilants' hiss (a 300-4000 Hz
    # band closed the gate on 41 % of s frames and 35 % of sh frames inside words; see docs/model.md)
    band_hz: tuple[float, float] = (300.0, 7800.0)


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
        self.weight = 0.0                         # gate weight of the last frame (0 = mouth at rest)
        self.band_sos = butter(BAND_ORDER, self.cfg.band_hz, "bandpass", fs=VAD_SR, output="sos")
        self.band_zi = np.zeros((self.band_sos.shape[0], 2))     # the band filter's state (causal, per stream)
        self.level_db = SILENCE_DB                # tracked speech level of the speech band
        self.quiet_run = 0                        # chunks in a row offset_drop_db under that level
        self.gate_open = 0.0                      # gate weight the last chunk asks for (speech and fast offset)
        self._decay = self.cfg.level_decay_db_s * CHUNK / VAD_SR
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
        y, self.band_zi = sosfilt(self.band_sos, x.astype(np.float64), zi=self.band_zi)
        e = float(10 * np.log10(np.mean(y * y) + 1e-12))
        self.level_db = max(e, self.level_db - self._decay)
        self.quiet_run = self.quiet_run + 1 if e < self.level_db - c.offset_drop_db else 0
        open_ = 1.0 if self.speech else 0.0
        if self.speech and c.offset_chunks:
            span = max(1, c.offset_chunks - c.offset_start_chunks)
            open_ = min(1.0, max(0.0, (c.offset_chunks - self.quiet_run) / span))
        self.gate_open = open_
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
            if self.speech:                       # the state after the last chunk ending by hi
                self.weight = self.gate_open      # open at once; a fast offset closes it chunk by chunk
            else:
                self.weight = max(0.0, self.weight - self._ramp)
            out[i] = self.weight
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
