"""Articulation (issue 15): the stand-in head can close its lips against an open jaw, the synthetic truth
closes them on every p/b/m and rests them in pauses, and the mesh metrics see the difference."""
from __future__ import annotations

import numpy as np
import pytest

from mm2face.engine.flame import load_head
from mm2face.engine.standin import MOUTH_CLOSE_JAW_RAD
from mm2face.engine.units import unit
from mm2face.training import articulation as A

CLOSURE_BAR = 0.90          # issue 15: bilabial closure >= 90 % of p/b/m
RATIO_BAR = 2.0             # vowel / bilabial opening ratio >= 2.0
REST_BAR = 0.97             # rest in pauses >= 97 %
FLICKER_BAR_MM = 0.3        # flicker <= 0.3 mm per frame in pauses


@pytest.fixture(scope="module")
def head():
    return load_head("standin")


def _frame(**values) -> np.ndarray:
    m = np.zeros((1, 56), np.float32)
    for k, v in values.items():
        m[0, 53 if k == "jaw" else unit(k)] = v
    return m


def test_mouth_close_closes_against_an_open_jaw(head):
    g = lambda **kw: float(A.lip_geometry(head, _frame(**kw))["gap_mm"][0])
    assert A.closed_gap_mm(head) == pytest.approx(0.0, abs=1e-3)
    assert g(jaw=MOUTH_CLOSE_JAW_RAD) > 10.0                       # the jaw alone opens the midline by > 1 cm
    assert abs(g(jaw=MOUTH_CLOSE_JAW_RAD, mouth_close=1.0)) < 0.5   # mouth_close = 1 shuts it there
    assert g(jaw=0.5 * MOUTH_CLOSE_JAW_RAD, mouth_close=0.5) == pytest.approx(0.0, abs=0.8)   # about linear


def test_lower_lip_roll_reaches_the_upper_teeth(head):
    d = lambda **kw: float(A.lip_geometry(head, _frame(**kw))["teeth_mm"][0])
    assert d() > 2 * A.LABIODENTAL_BAND_MM                         # closed lips at rest lie in front of the teeth
    assert d(lower_lip_roll=1.0) <= A.LABIODENTAL_BAND_MM


def test_solve_unit_is_exact(head):
    rng = np.random.default_rng(0)
    m = np.zeros((20, 56), np.float32)
    m[:, 53] = rng.uniform(0.0, 0.25, 20)
    m[:, unit("lips_part")] = rng.uniform(0.0, 0.8, 20)
    c = A.solve_unit(head, m, "mouth_close", np.zeros(20), "gap")
    m[:, unit("mouth_close")] = c
    assert np.abs(A.lip_geometry(head, m)["gap_mm"]).max() < 1e-2


def test_phone_frames():
    assert list(A.phone_frames(0.05, 0.13, 100)) == [1, 2, 3]     # frames overlapping [50, 130) ms
    assert list(A.core_frames(0.05, 0.13, 100)) == [1, 2]         # centres 60 and 100 ms lie inside
    assert list(A.core_frames(0.081, 0.099, 100)) == [2]          # shorter than a frame: the one it falls in


def test_noise_bed_condition():
    rng = np.random.default_rng(1)
    speech = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 200).astype(np.float32) * 0.3
    quiet_bed = A.noise_bed_audio(speech, -30.0, rng, bed_dbfs=-120.0)
    assert 20 * np.log10(np.abs(quiet_bed).max()) == pytest.approx(-30.0, abs=0.01)
    bed_only = A.noise_bed_audio(np.zeros(16000, np.float32), -30.0, rng)
    assert 20 * np.log10(np.sqrt(np.mean(bed_only.astype(np.float64) ** 2))) == pytest.approx(A.NOISE_BED_DBFS, abs=0.1)
    spec = np.abs(np.fft.rfft(bed_only)) ** 2
    assert spec[np.fft.rfftfreq(16000, 1 / 16000) > 400].sum() < 0.01 * spec.sum()      # low frequencies only


def test_fresh_corpus_articulates_on_its_own_phones(tmp_path, head):
    """A freshly made small corpus meets the closure, opening and rest bars on its own phone timings, and the
    same clips without the articulation constraint (the dominance blend alone) do not close: the metric can fail."""
    from mm2face.training.mmhead import MMHeadCorpus
    from mm2face.training.synth_factory import SynthConfig, synthesize

    synthesize(tmp_path / "c", SynthConfig(hours=0.012, seed=5, workers=1), progress=False)
    clips = [c for c in MMHeadCorpus(tmp_path / "c").clips() if c.audio_16k is not None]
    assert len(clips) >= 6
    rows, blend_rows = [], []
    for c in clips:
        m = np.asarray(c.motion, np.float32)
        rows.append(A.clip_articulation(head, m, c.meta["phones"], c.meta["speech_mask"]))
        m_blend = m.copy()
        m_blend[:, [unit("mouth_close"), unit("lower_lip_roll")]] = 0.0
        blend_rows.append(A.clip_articulation(head, m_blend, c.meta["phones"], c.meta["speech_mask"]))
    agg, blend = A.aggregate_articulation(rows), A.aggregate_articulation(blend_rows)
    assert agg["bilabials"] >= 10 and agg["rest_frames"] >= 20
    assert agg["bilabial_closure_rate"] >= CLOSURE_BAR
    assert agg["vowel_bilabial_ratio"] >= RATIO_BAR
    assert agg["labiodental_contact_rate"] >= CLOSURE_BAR
    assert agg["rest_rate"] >= REST_BAR
    assert agg["flicker_mm_per_frame"] <= FLICKER_BAR_MM
    assert blend["bilabial_closure_rate"] < 0.5 and blend["labiodental_contact_rate"] < 0.5
