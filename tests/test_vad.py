"""The voice-activity gate (engine/vad.py): noise alone leaves the mouth at rest, speech still moves it,
streaming equals offline and batched equals solo with the gate on, and it reads no audio past the
session's 40 ms lookahead."""
import numpy as np
import pytest
import torch

from mm2face.engine.frame import SAMPLES_PER_FRAME
from mm2face.engine.generate import generate
from mm2face.engine.model import MM2Face
from mm2face.engine.session import StreamConfig, StreamSession, mouth_dims
from mm2face.engine.vad import CHUNK, VadConfig, VadStream, vad_frame_weights
from mm2face.training.augment import noise_bed, set_peak
from mm2face.training.synth_speech import BOUNDARY, SIL, speak
from stream_helpers import solo_and_batcher, stream_in_chunks

BED_DBFS = -45.0
GAINS = (-30.0, 0.0)
VOICE = {"engine": "espeak-ng", "voice": "en-us", "rate_wpm": 160, "pitch": 50, "range": 50}


@pytest.fixture(scope="module")
def tts():
    """Two phrases of espeak-ng speech with a pause: (audio_16k, per-frame speech mask)."""
    sp = speak(["Maybe we could meet at the station tomorrow.", "Bring the blue map."],
               np.random.default_rng(1), voice=VOICE)
    n = -(-len(sp.audio_16k) // SAMPLES_PER_FRAME)
    mask = np.zeros(n, bool)
    for p in sp.phones:
        if p.ph not in (SIL, BOUNDARY):
            mask[int(p.t0_s * 25):int(np.ceil(p.t1_s * 25))] = True
    return sp.audio_16k, mask


def _noisy(audio, gain_dbfs, seed=0):
    """Speech at a peak of ``gain_dbfs`` over the -45 dBFS low-frequency bed."""
    return set_peak(audio, gain_dbfs) + noise_bed("lowfreq", len(audio), BED_DBFS, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def small():
    torch.set_num_threads(1)
    return MM2Face.random(seed=0, small=True)


def test_gate_reads_no_audio_past_the_lookahead_and_keeps_the_chunk_grid(tts):
    audio, mask = tts
    x = _noisy(audio, -15.0)
    asked = []

    def get(a, b):
        asked.append((a, b))
        out = np.zeros(b - a, np.float32)
        seg = x[a:min(b, len(x))]
        out[:len(seg)] = seg
        return out
    v = VadStream(VadConfig(lookahead_samples=SAMPLES_PER_FRAME))
    n = len(mask)
    w = np.concatenate([v.frame_weights(get, f, 1)[None] for f in range(n)])[:, 0]
    # every read is a 512-sample chunk of the fixed grid, in order, each once
    assert [a for a, _ in asked] == [CHUNK * j for j in range(len(asked))] and all(b - a == CHUNK for a, b in asked)
    # ... and never past frame end + 40 ms when the frame was decided
    v2, hi = VadStream(), []
    for f in range(n):
        v2.frame_weights(lambda a, b: (hi.append((f, b)), get(a, b))[1], f, 1)
    assert all(b <= SAMPLES_PER_FRAME * (f + 2) for f, b in hi)
    # one call per frame or the whole clip at once: the same weights
    np.testing.assert_array_equal(w, vad_frame_weights(x, n))
    assert set(np.unique(w)) >= {0.0, 1.0}
    with pytest.raises(ValueError, match="in order"):
        v.frame_weights(get, 0, 1)


@pytest.mark.parametrize("gain", GAINS)
def test_noise_alone_leaves_the_mouth_at_rest(default, gain):
    bed = noise_bed("lowfreq", 16000 * 4, BED_DBFS, np.random.default_rng(3))
    for x in (bed, set_peak(bed, gain)):                  # the bed as it is, and amplified to the input gain
        on = generate(default, x, "", seed=0)
        off = generate(default, x, "", seed=0, vad=False)
        dims = mouth_dims(default.head_name)
        assert np.abs(on[:, dims]).max() == 0.0            # jaw and mouth units exactly at rest
        assert np.abs(off[:, dims]).max() > 0.01          # without the gate the noise moves the mouth
        keep = [d for d in range(56) if d not in dims]
        np.testing.assert_array_equal(on[:, keep], off[:, keep])   # emotion, blinks, head untouched


@pytest.mark.parametrize("gain", GAINS)
def test_speech_still_moves_the_mouth(default, tts, gain):
    audio, mask = tts
    x = _noisy(audio, gain)
    w = vad_frame_weights(x, len(mask))
    assert (w[mask] == 1.0).mean() >= 0.9                  # the gate is open on speech
    on = generate(default, x, "", seed=0)
    off = generate(default, x, "", seed=0, vad=False)
    assert on[mask, 53].mean() > 0.03                      # the jaw opens while speaking
    assert np.abs(on[mask, 53] - off[mask, 53]).mean() < 0.1 * off[mask, 53].mean()
    assert on[~mask, 53].mean() <= off[~mask, 53].mean()


def test_stream_equals_offline_with_the_gate(small, tts):
    audio, mask = tts
    x = _noisy(audio, -20.0, seed=4)
    w = vad_frame_weights(x, len(mask))
    assert (w == 0).any() and (w == 1).any()               # the gate really opens and closes here
    off = generate(small, x, "a calm speaker", seed=2)
    for chunk in (333, 1600):
        s, frames = stream_in_chunks(small, x, "a calm speaker", seed=2, chunk=chunk)
        frames += s.end()
        got = np.stack([f.params for f in frames])[:len(off)]
        np.testing.assert_allclose(got, off, atol=1e-4)
    gated = np.flatnonzero(w == 0)
    assert np.abs(off[gated][:, mouth_dims(small.head_name)]).max() == 0.0
    assert s.stats["vad_ms_total"] > 0
    assert s.vad.chunk_calls == SAMPLES_PER_FRAME * (len(frames) + 1) // CHUNK   # each chunk run once


def test_gate_off_by_flag(small, tts):
    audio, _ = tts
    x = _noisy(audio, -20.0, seed=4)
    s = StreamSession(small, StreamConfig(vad=False))
    assert s.vad is None
    off = generate(small, x, "", seed=0, vad=False)
    s, frames = stream_in_chunks(small, x, "", seed=0, chunk=640, vad=False)
    frames += s.end()
    np.testing.assert_allclose(np.stack([f.params for f in frames])[:len(off)], off, atol=1e-4)
    assert not np.array_equal(off, generate(small, x, "", seed=0))


def test_batched_sessions_equal_solo_with_the_gate(small, tts):
    audio, _ = tts
    auds = [_noisy(audio, g, seed=i)[:16000 * (2 + i)] for i, g in enumerate((-30.0, -15.0, 0.0))]
    ref, b, keys = solo_and_batcher(small, auds)
    got = {k: [] for k in keys}
    pos = [0, 0, 0]
    for _ in range(200):
        for i, k in enumerate(keys):
            n = 400 * (i + 1)
            if pos[i] < len(auds[i]):
                b.push_audio(k, auds[i][pos[i]:pos[i] + n])
                pos[i] += n
        b.step()
        for k in keys:
            got[k] += b.drain(k)
    b.run_until_idle()
    for i, k in enumerate(keys):
        got[k] += b.drain(k)
        out = np.stack([f.params for f in got[k]])
        np.testing.assert_allclose(out, ref[i], atol=1e-4)
    assert max(b.stats["batch_sizes"]) >= 2


def test_generate_cli_no_vad_flag(default, tmp_path):
    import soundfile as sf

    from mm2face.engine.frame import MotionClip
    from mm2face.viewer.generate_cli import main
    wav = tmp_path / "rumble.wav"
    sf.write(wav, set_peak(noise_bed("lowfreq", 16000 * 2, BED_DBFS, np.random.default_rng(7)), -6.0), 16000)
    dims = mouth_dims(default.head_name)
    moved = {}
    for flag in ([], ["--no-vad"]):
        out = tmp_path / f"m{len(flag)}.npz"
        assert main(["--wav", str(wav), "--out", str(out), "--threads", "1"] + flag) == 0
        moved[bool(flag)] = float(np.abs(MotionClip.load(out).motion[:, dims]).max())
    assert moved[False] == 0.0 and moved[True] > 0.01


def test_gate_stays_open_through_the_hiss_of_s_and_sh():
    """The fast offset's energy band reaches the sibilants: an s or sh inside a phrase is speech, not a
    pause (a 300-4000 Hz band heard their hiss, mostly above 4 kHz, as silence and shut the mouth)."""
    sp = speak(["She says this season's sales show a steady, slow rise.", "Six sisters sat in a sunny spot."],
               np.random.default_rng(1), voice=VOICE, augment=False)
    n = -(-len(sp.audio_16k) // SAMPLES_PER_FRAME)
    frames = sorted({f for p in sp.phones if p.ph in ("s", "ʃ")
                     for f in range(int(np.ceil(p.t0_s * 25)), int(p.t1_s * 25))})
    assert len(frames) >= 15
    gate = lambda cfg: vad_frame_weights(sp.audio_16k, n, cfg)[frames]
    assert gate(VadConfig(lookahead_samples=SAMPLES_PER_FRAME)).min() >= 0.9
    assert gate(VadConfig(lookahead_samples=SAMPLES_PER_FRAME, band_hz=(300.0, 4000.0))).mean() < 0.8


def test_gate_tuning_script_scores_candidate_gates(tmp_path, capsys):
    """scripts/eval_vad_rest.py applies each gate as the engine does (it checks itself against generate)
    and scores rest, LVE and the gate over speech; an unknown field is refused with the list of fields."""
    import importlib.util
    import json
    from pathlib import Path
    from test_metrics_eval_cli import write_corpus
    spec = importlib.util.spec_from_file_location(
        "eval_vad_rest", Path(__file__).resolve().parents[1] / "scripts" / "eval_vad_rest.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_corpus(tmp_path / "corpus")
    ckpt = MM2Face.random(seed=0, small=True).save(tmp_path / "tiny.pt")
    out = tmp_path / "gates.json"
    assert script.main(["--data", str(tmp_path / "corpus"), "--ckpt", str(ckpt), "--gains", "-30",
                        "--gate", "narrow:band_hz=300,4000;offset_drop_db=25", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["results"]) == ["none", "default", "narrow"]
    assert res["gates"]["narrow"]["band_hz"] == [300.0, 4000.0] and res["gates"]["narrow"]["offset_drop_db"] == 25.0
    assert res["results"]["none"]["gate_over_speech"] == 1.0
    assert "| narrow |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no field 'band'"):
        script.main(["--data", str(tmp_path / "corpus"), "--ckpt", str(ckpt), "--gate", "x:band=1"])
