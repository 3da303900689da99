"""Audio format conversion for the live driver: bytes -> mono float32 at 16 kHz.

Clients and devices deliver audio at many rates and in two sample formats; the engine wants
``audio_16k: (samples,) float32`` in [-1, 1]. :class:`StreamResampler` converts chunk by chunk with
no clicks at chunk edges (it carries filter state between calls), so a stream split into arbitrary
chunks gives the same samples as the whole signal resampled at once (up to float rounding).
"""
from __future__ import annotations

from fractions import Fraction
from math import gcd

import numpy as np
from scipy import signal

from mm2face.engine.frame import SAMPLE_RATE

# Rates a client may declare. Anything between these bounds is accepted; these are the common ones.
COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
MIN_RATE, MAX_RATE = 8000, 192_000
SAMPLE_FORMATS = ("pcm16", "f32")   # little-endian int16, little-endian float32


class AudioFormatError(ValueError):
    """Bad audio format or bytes (wrong rate, unknown format, odd byte count)."""


def check_format(sample_rate, sample_format) -> tuple[int, str]:
    """Validate a declared audio format; returns ``(rate_hz, format)`` or raises AudioFormatError."""
    if sample_format not in SAMPLE_FORMATS:
        raise AudioFormatError(f"sample_format must be one of {list(SAMPLE_FORMATS)}, got {sample_format!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or sample_rate != int(sample_rate):
        raise AudioFormatError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(f"sample_rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz "
                               f"(common rates: {', '.join(map(str, COMMON_RATES))})")
    return rate, sample_format


def decode_samples(data: bytes, sample_format: str) -> np.ndarray:
    """Little-endian PCM16 or float32 bytes -> ``(samples,) float32`` (PCM16 scaled to [-1, 1))."""
    width = 2 if sample_format == "pcm16" else 4
    if len(data) % width:
        raise AudioFormatError(f"{len(data)} bytes is not a whole number of {sample_format} samples "
                               f"({width} bytes each)")
    if sample_format == "pcm16":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


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
    """Resample a whole signal ``(samples,)`` float32 from ``rate_in`` to ``rate_out`` Hz."""
    if int(rate_in) == int(rate_out):
        return np.asarray(audio, np.float32).reshape(-1)
    frac = Fraction(int(rate_out), int(rate_in))
    return signal.resample_poly(np.asarray(audio, np.float64).reshape(-1), frac.numerator,
                                frac.denominator).astype(np.float32)
