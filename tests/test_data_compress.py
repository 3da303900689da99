"""A corpus compressed with `mm2face-data compress` loads like the original (FLAC exactly, Opus closely)."""
import json
import pickle

import numpy as np
import pytest
import soundfile as sf

from mm2face.training.compress import compress_corpus
from mm2face.training.data_cli import main as data_main
from mm2face.training.mmhead import CAPTION_KINDS, CorpusError, MMHeadCorpus


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "src"
    for d in ["audio", "facial_motion"] + [f"text_annotations/{k}" for k in CAPTION_KINDS]:
        (root / d).mkdir(parents=True)
    r = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    for cid in ("A", "B"):
        pickle.dump({"expcodes": r.uniform(0, 1, (50, 50)).astype(np.float32),
                     "posecodes": r.uniform(-.1, .1, (50, 6)).astype(np.float32)},
                    open(root / "facial_motion" / f"{cid}.pkl", "wb"))
        speechlike = 0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        sf.write(root / "audio" / f"{cid}.wav", speechlike, 16000, subtype="PCM_16")
        for k in CAPTION_KINDS:
            (root / "text_annotations" / k / f"{cid}.txt").write_text(f"{k} of {cid}")
    (root / "talking_subset.json").write_text(json.dumps({"train": ["A"], "val": [], "test": ["B"]}))
    return root


def test_flac_is_lossless_and_motion_is_zipped(corpus, tmp_path):
    out = tmp_path / "flac"
    assert data_main(["compress", "--in", str(corpus), "--out", str(out), "--codec", "flac"]) == 0
    assert (out / "facial_motion.zip").is_file() and not (out / "facial_motion").exists()
    assert (out / "audio" / "A.flac").is_file()
    a, b = MMHeadCorpus(corpus), MMHeadCorpus(out)
    assert b.errors == [] and b.ids() == a.ids()
    for cid in a.ids():
        ca, cb = a.get(cid), b.get(cid)
        np.testing.assert_array_equal(ca.audio_16k, cb.audio_16k)
        np.testing.assert_array_equal(ca.motion, cb.motion)
        assert ca.captions == cb.captions and ca.split == cb.split


def test_opus_keeps_the_signal_close(corpus, tmp_path):
    out = tmp_path / "opus"
    r = compress_corpus(corpus, out, codec="opus", progress=False)
    assert r["dst_bytes"] < r["src_bytes"]
    a, b = MMHeadCorpus(corpus).get("A").audio_16k, MMHeadCorpus(out).get("A").audio_16k
    assert abs(len(a) - len(b)) < 400
    n = min(len(a), len(b))
    # energy envelopes per 40 ms frame agree (the codec may shift phase, so compare envelopes)
    env = lambda x: np.sqrt((x[: n // 640 * 640].reshape(-1, 640) ** 2).mean(1))
    assert np.corrcoef(env(a), env(b))[0, 1] > 0.95


def test_refuses_to_overwrite(corpus, tmp_path):
    (tmp_path / "busy").mkdir(); (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(CorpusError, match="not empty"):
        compress_corpus(corpus, tmp_path / "busy", progress=False)
