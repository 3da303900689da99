"""Training-time microphone augmentation (training/augment.py): levels, gain, spectra, determinism."""
import numpy as np
import pytest

from mm2face.training.augment import (NOISE_KINDS, SR, AugmentConfig, augment, dbfs_peak, dbfs_rms,
                                      noise_bed)


def _speechlike(seconds=2.0, seed=0):
    """Bursts of harmonic sound with gaps: peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12)) * (np.sin(2 * np.pi * 2 * t) > 0)
    x = x + 0.01 * rng.standard_normal(len(t))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _band_share(x, lo, hi):
    f = np.fft.rfftfreq(len(x), 1 / SR)
    p = np.abs(np.fft.rfft(x)) ** 2
    return p[(f >= lo) & (f < hi)].sum() / p.sum()


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("level", [-35.0, -45.0, -60.0])
def test_noise_bed_comes_out_at_the_requested_level(kind, level):
    x = noise_bed(kind, 3 * SR, level, np.random.default_rng(1))
    assert x.dtype == np.float32 and x.shape == (3 * SR,)
    assert dbfs_rms(x) == pytest.approx(level, abs=0.05)


def test_noise_bed_spectra():
    rng = np.random.default_rng(2)
    assert _band_share(noise_bed("lowfreq", 4 * SR, -45, rng), 15, 260) > 0.98
    assert _band_share(noise_bed("brown", 4 * SR, -45, rng), 0, 200) > 0.8
    assert _band_share(noise_bed("white", 4 * SR, -45, rng), 4000, 8000) == pytest.approx(0.5, abs=0.03)
    hum = noise_bed("hum", 4 * SR, -45, rng)
    f = np.fft.rfftfreq(len(hum), 1 / SR)
    assert f[np.argmax(np.abs(np.fft.rfft(hum)))] in (50.0, 60.0)
    fan = noise_bed("fan", 4 * SR, -45, rng)
    assert _band_share(fan, 60, 2600) > 0.9
    with pytest.raises(ValueError, match="noise kind"):
        noise_bed("rain", 100, -45, rng)


@pytest.mark.parametrize("peak", [-30.0, -15.0, 0.0])
def test_input_gain_sets_the_peak(peak):
    cfg = AugmentConfig(gain_peak_dbfs=(peak, peak), p_noise=0.0, p_dc=0.0, p_clip=0.5)
    for seed in range(5):
        info = {}
        y = augment(_speechlike(), np.random.default_rng(seed), cfg, info)
        assert dbfs_peak(y) == pytest.approx(peak, abs=0.01), info


def test_noise_is_added_at_an_absolute_level_whatever_the_gain():
    silent = np.zeros(2 * SR, np.float32)
    cfg = AugmentConfig(p_reverb=0, p_band_limit=0, p_clip=0, p_dc=0, p_noise=1.0, max_noise_beds=1,
                        noise_kinds=("pink",), noise_dbfs=(-50.0, -50.0))
    assert dbfs_rms(augment(silent, np.random.default_rng(0), cfg)) == pytest.approx(-50.0, abs=0.05)
    for peak in (-30.0, 0.0):
        c = AugmentConfig(**{**cfg.__dict__, "gain_peak_dbfs": (peak, peak)})
        speech = _speechlike()
        y = augment(speech, np.random.default_rng(3), c)
        clean = augment(speech, np.random.default_rng(3), AugmentConfig(**{**c.__dict__, "p_noise": 0.0}))
        assert dbfs_rms(y - clean) == pytest.approx(-50.0, abs=0.1)


def test_augment_is_deterministic_keeps_length_and_range():
    x = _speechlike(seed=4)
    for seed in range(20):
        a = augment(x, np.random.default_rng(seed))
        b = augment(x, np.random.default_rng(seed))
        assert np.array_equal(a, b) and a.shape == x.shape and a.dtype == np.float32
        assert np.abs(a).max() <= 1.0
    outs = [augment(x, np.random.default_rng(s)) for s in range(3)]
    assert not np.array_equal(outs[0], outs[1])


def test_augment_applies_every_effect_across_seeds():
    seen, x = set(), _speechlike()
    for seed in range(60):
        info = {}
        augment(x, np.random.default_rng(seed), info=info)
        seen |= set(info)
        for kind, level in info.get("noise", []):
            assert kind in NOISE_KINDS and -60 <= level <= -35
        assert -30 <= info["peak_dbfs"] <= 0
    assert seen >= {"reverb", "band_hz", "clip_db_below_peak", "peak_dbfs", "noise", "dc_offset"}
    with pytest.raises(ValueError, match="mono"):
        augment(np.zeros((2, 100), np.float32), np.random.default_rng(0))
