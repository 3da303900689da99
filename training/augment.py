"""Training-time audio augmentation: make clean synthetic speech sound like a user's microphone.

API (all audio is 16 kHz mono float32, full scale = 1.0)::

    from mm2face.training.augment import AugmentConfig, augment, noise_bed, NOISE_KINDS

    y = augment(audio_16k, rng, AugmentConfig())          # (samples,) -> (samples,), same length
    bed = noise_bed("lowfreq", n, -45.0, rng)             # (n,) noise at exactly -45 dBFS RMS

* :func:`augment` applies, each with its probability in :class:`AugmentConfig`: synthetic room reverb
  (exponentially decaying noise impulse response), band-limiting (microphone high-pass / low-pass),
  mild clipping of the top few dB of the peaks, **input gain** (the result's speech peak is set to a
  level in ``gain_peak_dbfs``, -30..0 dBFS), then one or more **noise beds** added at an absolute level
  in ``noise_dbfs`` (-60..-35 dBFS RMS, independent of the gain, as a room's noise is for a quiet or
  loud talker), then a DC offset. Length and timing are unchanged (reverb and filters are causal), so
  phone and frame labels stay valid. Pass ``info={}`` to get what was applied.
* :func:`noise_bed` makes one noise of a kind in :data:`NOISE_KINDS` at an exact RMS level:
  ``white``, ``pink`` (1/f), ``brown`` (1/f^2 above 20 Hz), ``lowfreq`` (pink noise between 20 and
  200 Hz: rumble, traffic, HVAC; the evaluator's fixed "-45 dBFS low-frequency noise bed"), ``hum``
  (50 or 60 Hz mains with decaying harmonics), ``fan`` (band noise 100-2000 Hz plus a blade-pass tone
  and its harmonic).
* Levels: ``dBFS`` of a noise is its RMS relative to full scale, ``20 log10(rms)`` (a full-scale
  square wave is 0 dBFS, a full-scale sine -3 dBFS); a *peak* level is ``20 log10(max |x|)``.
* Deterministic: the same ``rng`` state gives the same output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

SR = 16_000
NOISE_KINDS = ("white", "pink", "brown", "lowfreq", "hum", "fan")

BROWN_HIGHPASS_HZ = 20.0          # brown noise has no DC drift below this
LOWFREQ_BAND_HZ = (20.0, 200.0)   # band of the low-frequency bed
HUM_HARMONIC_AMPS = (1.0, 0.6, 0.45, 0.3, 0.2, 0.12, 0.08)   # mains fundamental and harmonics
FAN_BAND_HZ = (100.0, 2000.0)
FAN_BLADE_HZ = (70.0, 300.0)      # blade-pass frequency range
FAN_TONE_SHARE = 0.4              # share of the fan's power in its blade tones
SOFT_EDGE_OCT = 0.25              # half-width of the raised-cosine band edges, octaves


@dataclass
class AugmentConfig:
    """Probabilities and ranges of :func:`augment` (ranges are uniform ``(lo, hi)``)."""
    p_reverb: float = 0.4
    rt60_s: tuple[float, float] = (0.1, 0.7)
    reverb_mix: tuple[float, float] = (0.1, 0.5)      # share of the reverberant signal
    p_band_limit: float = 0.5
    highpass_hz: tuple[float, float] = (60.0, 300.0)
    lowpass_hz: tuple[float, float] = (3000.0, 7500.0)
    p_clip: float = 0.15
    clip_db: tuple[float, float] = (0.5, 6.0)          # how far below the peak the clipper sits, dB
    gain_peak_dbfs: tuple[float, float] = (-30.0, 0.0)
    p_noise: float = 0.85                               # chance of any noise bed
    max_noise_beds: int = 2
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    noise_dbfs: tuple[float, float] = (-60.0, -35.0)
    p_dc: float = 0.2
    dc_offset: tuple[float, float] = (0.001, 0.02)     # |offset| in full-scale units


def dbfs_rms(x: np.ndarray) -> float:
    """RMS level of ``x`` in dBFS (see the module docstring)."""
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-20))


def dbfs_peak(x: np.ndarray) -> float:
    return float(20 * np.log10(np.abs(x).max(initial=0.0) + 1e-20))


def room_impulse_response(rt60_s: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Synthetic room: Gaussian noise with an exponential decay reaching -60 dB at ``rt60_s``,
    direct path 1 at t=0, normalised to unit energy. (samples,) float64."""
    n = max(int(rt60_s * sr), 1)
    ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    ir[0] = 1.0
    return ir / np.sqrt((ir ** 2).sum())


def reverb(audio: np.ndarray, rt60_s: float, mix: float, rng: np.random.Generator) -> np.ndarray:
    """Mix ``audio`` with its convolution by :func:`room_impulse_response`; same length."""
    wet = fftconvolve(audio, room_impulse_response(rt60_s, rng))[:len(audio)]
    return ((1 - mix) * audio + mix * wet).astype(np.float32)


def _band_gain(freqs: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """1 inside [lo, hi] Hz, raised-cosine edges SOFT_EDGE_OCT octaves wide, 0 far outside."""
    lf = np.log2(np.maximum(freqs, 1e-3))
    g = np.ones_like(freqs)
    for edge, side in ((np.log2(lo), -1), (np.log2(hi), 1)):
        d = side * (lf - edge) / SOFT_EDGE_OCT          # >0 outside the band
        g *= np.where(d <= -1, 1.0, np.where(d >= 1, 0.0, 0.5 * (1 - np.sin(np.pi / 2 * np.clip(d, -1, 1)))))
    return g


def _shaped_noise(n: int, rng: np.random.Generator, amp_of_freq) -> np.ndarray:
    """Gaussian noise whose amplitude spectrum is multiplied by ``amp_of_freq(freqs_hz)``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    return np.fft.irfft(spec * amp_of_freq(freqs), n)


def _tones(n: int, rng: np.random.Generator, f0: float, amps) -> np.ndarray:
    t = np.arange(n) / SR
    return sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi))
               for k, a in enumerate(amps) if f0 * (k + 1) < SR / 2)


def noise_bed(kind: str, n: int, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 noise of ``kind`` (one of :data:`NOISE_KINDS`) at exactly ``level_dbfs`` RMS."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if n <= 0:
        return np.zeros(0, np.float32)
    inv_f = lambda f: 1 / np.sqrt(np.maximum(f, 1.0))            # noqa: E731 - pink amplitude
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _shaped_noise(n, rng, inv_f)
    elif kind == "brown":
        x = _shaped_noise(n, rng, lambda f: np.where(f < BROWN_HIGHPASS_HZ, 0.0, 1 / np.maximum(f, 1.0)))
    elif kind == "lowfreq":
        x = _shaped_noise(n, rng, lambda f: inv_f(f) * _band_gain(f, *LOWFREQ_BAND_HZ))
    elif kind == "hum":
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        amps = np.array(HUM_HARMONIC_AMPS) * rng.uniform(0.5, 1.5, len(HUM_HARMONIC_AMPS))
        x = _tones(n, rng, f0, amps)
    else:                                                       # fan
        band = _shaped_noise(n, rng, lambda f: inv_f(f) * _band_gain(f, *FAN_BAND_HZ))
        blade = _tones(n, rng, rng.uniform(*FAN_BLADE_HZ), (1.0, 0.4))
        band /= np.sqrt(np.mean(band ** 2)) + 1e-20
        blade /= np.sqrt(np.mean(blade ** 2)) + 1e-20
        x = np.sqrt(1 - FAN_TONE_SHARE) * band + np.sqrt(FAN_TONE_SHARE) * blade
    x = np.asarray(x, np.float64)
    rms = np.sqrt(np.mean(x ** 2))
    return (x * (10 ** (level_dbfs / 20) / rms if rms > 0 else 0.0)).astype(np.float32)


def set_peak(audio: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """``audio`` scaled so that its peak is ``peak_dbfs`` (silence stays silence)."""
    peak = np.abs(audio).max(initial=0.0)
    return (audio * (10 ** (peak_dbfs / 20) / peak) if peak > 0 else audio).astype(np.float32)


def augment(audio_16k: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig(),
            info: dict | None = None) -> np.ndarray:
    """One random microphone condition applied to ``audio_16k`` ((samples,) float32 at 16 kHz).

    Returns (samples,) float32 in [-1, 1]; ``info`` (if a dict) receives what was applied.
    """
    x = np.asarray(audio_16k, np.float32)
    if x.ndim != 1:
        raise ValueError(f"augment takes mono audio of shape (samples,), got {x.shape}")
    info = {} if info is None else info
    x = x.astype(np.float64)
    if rng.random() < cfg.p_reverb:
        rt60, mix = float(rng.uniform(*cfg.rt60_s)), float(rng.uniform(*cfg.reverb_mix))
        x = reverb(x, rt60, mix, rng).astype(np.float64)
        info["reverb"] = {"rt60_s": rt60, "mix": mix}
    if rng.random() < cfg.p_band_limit:
        hp, lp = float(rng.uniform(*cfg.highpass_hz)), float(rng.uniform(*cfg.lowpass_hz))
        x = sosfilt(butter(2, hp, "highpass", fs=SR, output="sos"), x)
        x = sosfilt(butter(4, lp, "lowpass", fs=SR, output="sos"), x)
        info["band_hz"] = (hp, lp)
    if rng.random() < cfg.p_clip and np.abs(x).max(initial=0) > 0:
        db = float(rng.uniform(*cfg.clip_db))
        thr = np.abs(x).max() * 10 ** (-db / 20)
        x = np.clip(x, -thr, thr)
        info["clip_db_below_peak"] = db
    gain = float(rng.uniform(*cfg.gain_peak_dbfs))
    x = set_peak(x, gain).astype(np.float64)
    info["peak_dbfs"] = gain
    if rng.random() < cfg.p_noise and cfg.noise_kinds:
        beds = []
        for _ in range(int(rng.integers(1, cfg.max_noise_beds + 1))):
            kind = cfg.noise_kinds[int(rng.integers(len(cfg.noise_kinds)))]
            level = float(rng.uniform(*cfg.noise_dbfs))
            x = x + noise_bed(kind, len(x), level, rng)
            beds.append((kind, level))
        info["noise"] = beds
    if rng.random() < cfg.p_dc:
        dc = float(rng.uniform(*cfg.dc_offset)) * (1 if rng.random() < 0.5 else -1)
        x = x + dc
        info["dc_offset"] = dc
    return np.clip(x, -1.0, 1.0).astype(np.float32)
