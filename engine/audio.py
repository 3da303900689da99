"""Audio in for every tool: files (or their bytes) -> mono ``(samples,) float32`` at 16 kHz, and resampling.

This is the one place that reads audio files and changes sample rates: the live sources (``--wav``,
the microphone), ``mm2face-generate``, the corpus loader (``training/mmhead.py``), the style
evaluation and the scripts all call :func:`load_audio_16k` / :func:`resample` /
:class:`StreamResampler`. It depends on numpy, scipy and soundfile only (no I/O layer).

* :func:`load_audio_16k` reads anything libsndfile reads (WAV in any PCM/float width, FLAC, OGG,
  ...), mixes channels to mono, resamples to 16 kHz and clips to [-1, 1]; a missing, unreadable,
  empty or non-finite file raises :class:`AudioFileError` naming the file and what to do.
* :func:`resample` converts a whole signal (polyphase, ``scipy.signal.resample_poly``).
* :class:`StreamResampler` converts chunk by chunk with no clicks at chunk edges (it carries filter
  state between calls), so a stream split into arbitrary chunks gives the same samples as the whole
  signal resampled at once (up to float rounding).
"""
from __future__ import annotations

import io
from fractions import Fraction
from math import gcd
from pathlib import Path

import numpy as np
from scipy import signal

from mm2face.engine.frame import SAMPLE_RATE

READABLE_FORMATS = "wav (PCM or float), flac, ogg/vorbis, aiff"   # what the messages suggest (libsndfile reads more)


class AudioFileError(ValueError):
    """An audio file that cannot be used: missing, not audio, empty, or with NaN/inf samples.
    The message names the file and what to do."""


def load_audio_16k(source, name: str | None = None) -> np.ndarray:
    """Read an audio file as ``audio_16k: (samples,) float32`` in [-1, 1] at 16 kHz.

    ``source``: a path, or the file's bytes (then ``name`` says where they came from, for messages).
    Any channel count is mixed to mono; any rate is resampled with :func:`resample`.
    Raises :class:`AudioFileError` for a missing, unreadable, empty or non-finite file.
    """
    import soundfile as sf
    if isinstance(source, (bytes, bytearray, memoryview)):
        where, handle = name or "audio bytes", io.BytesIO(bytes(source))
    else:
        path = Path(source)
        where, handle = name or str(path), str(path)
        if not path.exists():
            raise AudioFileError(f"audio file not found: {where}")
        if path.is_dir():
            raise AudioFileError(f"{where} is a folder, not an audio file")
    try:
        audio, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as e:
        raise AudioFileError(f"could not read {where} as audio ({getattr(e, 'error_string', None) or e}); give a {READABLE_FORMATS} file, "
                             f"e.g. convert it with `ffmpeg -i IN -ar 16000 OUT.wav`") from None
    if audio.shape[0] == 0:
        raise AudioFileError(f"{where} holds no audio samples (0 frames); record or export it again")
    if not np.isfinite(audio).all():
        raise AudioFileError(f"{where} has NaN or infinite samples; re-export it as PCM16 WAV")
    return np.clip(resample(audio.mean(axis=1), rate, SAMPLE_RATE), -1.0, 1.0)


class StreamResampler:
    """Chunked windowed-sinc resampler from ``rate_in`` Hz to 16 kHz (or ``rate_out``).

    ``process(x)`` takes any number of input samples and returns the output samples that are now
    final (those whose filter window is complete); ``flush()`` returns the tail, zero-padded. State is
    kept between calls, so chunk edges are seamless and output sample ``k`` is input time
    ``k / rate_out`` (no filter delay). Holdback: ``half_width`` input samples (< 3 ms at any rate).
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE, zero_crossings: int = 16):
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self.passthrough = self.rate_in == self.rate_out
        # Cutoff as a fraction of the input Nyquist; 0.94 keeps the transition band below the output Nyquist.
        self.fc = 0.94 * min(1.0, self.rate_out / self.rate_in)
        self.half_width = int(np.ceil(zero_crossings / self.fc))  # input samples each side
        self._offsets = np.arange(-self.half_width + 1, self.half_width + 1)
        # Output positions fall on rate_out/gcd distinct sub-sample phases: tabulate one kernel each.
        self._phase_step = gcd(self.rate_in, self.rate_out)
        frac = np.arange(0, self.rate_out, self._phase_step) / self.rate_out
        d = self._offsets[None, :] - frac[:, None]                # distance in input samples
        u = np.clip(d / self.half_width, -1.0, 1.0)
        self._kernels = self.fc * np.sinc(self.fc * d) * np.i0(8.0 * np.sqrt(1.0 - u * u)) / np.i0(8.0)
        self._buf = np.zeros(self.half_width, np.float64)        # starts with W zeros before t=0
        self._buf_start = -self.half_width                       # absolute input index of _buf[0]
        self._n_in = 0                                           # input samples received
        self._k = 0                                              # next output sample index

    def _emit(self, k_end: int) -> np.ndarray:
        k = np.arange(self._k, k_end, dtype=np.int64)
        if len(k) == 0:
            return np.zeros(0, np.float32)
        base = (k * self.rate_in) // self.rate_out
        h = self._kernels[(k * self.rate_in % self.rate_out) // self._phase_step]
        idx = base[:, None] + self._offsets[None, :] - self._buf_start
        y = (self._buf[idx] * h).sum(axis=1)
        self._k = k_end
        # Keep only what future outputs can still need.
        keep_from = (k_end * self.rate_in) // self.rate_out - self.half_width + 1
        drop = max(0, keep_from - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return y.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self.passthrough:
            return x.copy()
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        self._n_in += len(x)
        # Output k is final when its window's last input sample base+W has arrived.
        last = self._n_in - 1 - self.half_width
        k_end = (last * self.rate_out) // self.rate_in + 1 if last >= 0 else 0
        return self._emit(max(k_end, self._k))

    def flush(self) -> np.ndarray:
        """Emit the remaining output (zero-padding past the end); the total output length is
        ``ceil(n_in * rate_out / rate_in)``. The resampler can keep going afterwards."""
        if self.passthrough:
            return np.zeros(0, np.float32)
        total = -(-self._n_in * self.rate_out // self.rate_in)
        self._buf = np.concatenate([self._buf, np.zeros(self.half_width + 1)])
        return self._emit(max(total, self._k))


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole signal ``(samples,)`` float32 from ``rate_in`` to ``rate_out`` Hz (polyphase)."""
    if int(rate_in) <= 0 or int(rate_out) <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out} Hz")
    if int(rate_in) == int(rate_out):
        return np.asarray(audio, np.float32).reshape(-1)
    frac = Fraction(int(rate_out), int(rate_in))
    return signal.resample_poly(np.asarray(audio, np.float64).reshape(-1), frac.numerator,
                                frac.denominator).astype(np.float32)
