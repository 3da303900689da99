"""The audio wire formats of the live driver: declared rate and sample format, and bytes -> samples.

Clients deliver audio at many rates and in two sample formats (little-endian PCM16 or float32);
:func:`check_format` validates what a client declares and :func:`decode_samples` turns its bytes into
``(samples,) float32``. Resampling to the engine's 16 kHz is :class:`mm2face.engine.audio.StreamResampler`.
"""
from __future__ import annotations

import numpy as np

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
