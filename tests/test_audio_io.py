"""engine/audio.py: the one audio file loader and resampler, its errors, and who uses it."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mm2face.engine.audio import AudioFileError, load_audio_16k, resample

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("engine", "realtime", "viewer", "training", "benchmarks", "scripts")


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_any_rate_and_channel_count_becomes_mono_16k(tmp_path):
    left, right = tone(44100, 1.0, 440.0), tone(44100, 1.0, 660.0)
    path = tmp_path / "stereo_44k.wav"
    sf.write(path, np.stack([left, right], 1), 44100, subtype="PCM_24")   # 24-bit: the old corpus reader refused it
    audio = load_audio_16k(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 16000
    want = resample((left + right) / 2, 44100)
    assert np.abs(audio - want).max() < 1e-4
    # the file's bytes read the same as its path (the corpus loader reads zip members as bytes)
    assert np.array_equal(load_audio_16k(path.read_bytes(), "stereo_44k.wav"), audio)


def test_16k_file_is_read_as_is_and_clipped_to_unit_range(tmp_path):
    x = tone(16000, 0.5)
    x[10] = 1.7                                        # a float WAV may hold values beyond full scale
    path = tmp_path / "f.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    audio = load_audio_16k(path)
    assert len(audio) == len(x) and audio[10] == 1.0
    assert np.array_equal(audio[11:], x[11:])


@pytest.mark.parametrize("case, needle", [
    ("missing", "not found"),
    ("folder", "is a folder"),
    ("text", "could not read"),
    ("empty", "no audio samples"),
    ("nan", "NaN or infinite"),
])
def test_bad_files_raise_a_specific_error_naming_the_file(tmp_path, case, needle):
    path = tmp_path / f"{case}.wav"
    if case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("this is not a sound file\n")
    elif case == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "nan":
        sf.write(path, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioFileError) as e:
        load_audio_16k(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_bytes_name_where_they_came_from():
    with pytest.raises(AudioFileError, match="corpus.zip:audio/x.wav"):
        load_audio_16k(b"RIFF....garbage", "corpus.zip:audio/x.wav")


def test_corpus_loader_reports_a_bad_wav_as_corpus_error(tmp_path):
    import json
    import pickle
    from mm2face.training.mmhead import CorpusError, MMHeadCorpus
    root = tmp_path / "mmhead"
    (root / "audio").mkdir(parents=True)
    (root / "facial_motion").mkdir()
    pickle.dump({"expcodes": np.zeros((25, 50), np.float32), "posecodes": np.zeros((25, 6), np.float32)},
                open(root / "facial_motion" / "A.pkl", "wb"))
    (root / "audio" / "A.wav").write_bytes(b"not audio at all")
    (root / "talking_subset.json").write_text(json.dumps({"train": ["A"], "val": [], "test": []}))
    corpus = MMHeadCorpus(root, subsets=("talking",))
    with pytest.raises(CorpusError, match=r"could not read .*A\.wav as audio \(Format not recognised"):
        corpus.get("A")


def test_generate_cli_bad_wav_exits_with_the_reason(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    r = subprocess.run([sys.executable, "-m", "mm2face.viewer.generate_cli", "--wav", str(bad),
                        "--out", str(tmp_path / "m.npz")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "could not read" in r.stderr and "Traceback" not in r.stderr


def _python_files():
    for d in SOURCE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_audio_files_are_read_and_resampled_in_one_place():
    """Only engine/audio.py reads audio files (soundfile.read / wave.open) or resamples with
    resample_poly; writing files is fine. Two exceptions: training/synth_speech.py's speaker
    augmentation stretches speech by a random factor (not a rate conversion of a file), and
    benchmarks/hop_ab.py's worker imports mm2face from another source tree (an older commit, without
    engine/audio.py), so it reads the bundled 16 kHz PCM16 demo speech with the standard library."""
    allowed = {ROOT / "engine" / "audio.py", ROOT / "training" / "synth_speech.py", ROOT / "benchmarks" / "hop_ab.py"}
    offenders = []
    for path in _python_files():
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and (
                    (node.attr == "read" and isinstance(node.value, ast.Name) and node.value.id in ("sf", "soundfile"))
                    or (node.attr == "open" and isinstance(node.value, ast.Name) and node.value.id == "wave")
                    or node.attr == "resample_poly"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "scipy.signal" and \
                    any(a.name == "resample_poly" for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} import resample_poly")
    assert not offenders, "read audio with mm2face.engine.audio.load_audio_16k: " + ", ".join(offenders)
