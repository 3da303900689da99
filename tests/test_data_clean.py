"""Cleaning: planted outliers and jitter are removed while the underlying motion is kept."""
import json
import pickle

import numpy as np
import torch

from mm2face.training.clean import (CleanConfig, clean_motion, corrupt, distance_outliers, outlier_frames,
                                    smooth_motion)
from mm2face.training.data_cli import main
from mm2face.training.mmhead import MMHeadCorpus

torch.set_num_threads(1)


def smooth_sequence(T=200, seed=0):
    """A known smooth (T, 56) motion: slow sines with plausible ranges."""
    r = np.random.default_rng(seed)
    t = np.arange(T) / 25.0
    f = r.uniform(0.2, 1.0, 56)
    ph = r.uniform(0, 2 * np.pi, 56)
    amp = np.r_[np.full(50, 0.5), np.full(6, 0.15)]
    return (amp * np.sin(2 * np.pi * f * t[:, None] + ph)).astype(np.float32)


def rms(a, b):
    return float(np.sqrt(((a - b) ** 2).mean()))


def test_distance_outliers_iqr_rule():
    d = np.zeros((100, 3))
    d[:, 0] = np.linspace(-1, 1, 100)
    d[[10, 70]] = [25.0, 0, 0]
    bad = distance_outliers(d, scale=1.5)
    assert set(np.flatnonzero(bad)) == {10, 70}
    assert not distance_outliers(d[:, :1] * 0 + 1.0).any()          # constant sequence: no outliers


def test_planted_outliers_found_and_signal_kept():
    clean = smooth_sequence()
    rng = np.random.default_rng(1)
    raw = corrupt(clean, rng, n_outliers=6, jitter=0.03, outlier_size=1.0)
    planted = set(np.flatnonzero(np.abs(raw - clean).max(1) > 0.3))
    bad = outlier_frames(raw, scale=1.5)
    assert planted <= set(np.flatnonzero(bad))                       # every planted outlier found
    assert bad.sum() <= len(planted) + 4                             # few false alarms
    out, _ = clean_motion(raw, CleanConfig())
    assert rms(out, clean) < 0.3 * rms(raw, clean)                   # error drops a lot
    assert np.abs(out - clean).max() < 0.15                          # no outlier survives
    # the signal itself is kept: cleaning a clean sequence barely changes it
    out2, _ = clean_motion(clean, CleanConfig())
    assert rms(out2, clean) < 0.02
    assert np.corrcoef(out[:, 53], clean[:, 53])[0, 1] > 0.98


def test_anchor_prevents_collapse():
    x = smooth_sequence(100)
    collapsed = smooth_motion(x, anchor=0.0, steps=300, lr=0.05)
    kept = smooth_motion(x, anchor=1.0, steps=300, lr=0.05)
    assert collapsed.std(0).mean() < 0.5 * x.std(0).mean()            # Eq. 1 alone flattens the motion
    assert kept.std(0).mean() > 0.9 * x.std(0).mean()


def test_clean_cli_on_folder(tmp_path):
    root = tmp_path / "in"
    (root / "facial_motion").mkdir(parents=True)
    clean = smooth_sequence(120, seed=3)
    raw = corrupt(clean, np.random.default_rng(3))
    pickle.dump({"expcodes": raw[:, :50], "posecodes": raw[:, 50:]}, open(root / "facial_motion" / "X.pkl", "wb"))
    (root / "t2m_subset.json").write_text(json.dumps({"train": ["X"]}))
    (root / "text_annotations" / "action").mkdir(parents=True)
    (root / "text_annotations" / "action" / "X.txt").write_text("The person nods.")
    out = tmp_path / "out"
    assert main(["clean", "--in", str(root), "--out", str(out), "--steps", "150"]) == 0
    c = MMHeadCorpus(out).get("X")
    assert c.captions["action"] == "The person nods."
    assert rms(c.motion, clean) < 0.4 * rms(raw, clean)
    rep = json.loads((out / "clean_report.json").read_text())
    assert rep["clips"] == 1 and rep["per_clip"]["X"]["outliers"] >= 4
