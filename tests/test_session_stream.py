"""StreamSession against offline generate, with an untrained small model (no checkpoint needed)."""
import numpy as np
import pytest
import torch

from mm2face.engine.generate import generate
from mm2face.engine.model import MM2Face
from mm2face.engine.session import AudioError, StreamConfig, StreamSession, step_sessions
from stream_helpers import stream_in_chunks


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return MM2Face.random(seed=0)


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


_stream = stream_in_chunks


@pytest.mark.parametrize("seconds", [1.0, 3.3])   # 3.3 s = 41 tokens > the small model's 16-token window
def test_stream_equals_offline(model, seconds):
    audio = _noise(seconds)
    off, toks = generate(model, audio, "a happy speaker", seed=3, return_tokens=True)
    s, frames = _stream(model, audio, "a happy speaker", seed=3)
    frames += s.end()
    got = np.stack([f.params for f in frames])
    n = len(off)
    assert len(off) == int(np.ceil(len(audio) / 640))
    assert s.hist[-1] in toks or len(frames) > n
    np.testing.assert_allclose(got[:n], off, atol=1e-4)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(abs(f.t_audio_s - f.seq / 25) < 1e-9 for f in frames)


def test_frame_count_exact_no_drift(model):
    s, frames = _stream(model, _noise(4.0, 1), "", seed=0, chunk=333)
    # frames emitted only once a token's audio + lookahead has arrived: 4 s -> 100 frames minus at most 1 token
    assert 100 - 2 * 2 <= len(frames) <= 100
    frames += s.end()
    assert frames[99].seq == 99 and len(frames) >= 100


def test_bad_audio_rejected(model):
    s = StreamSession(model)
    with pytest.raises(AudioError, match="NaN"):
        s.push_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(AudioError, match="PCM16"):
        s.push_audio(np.zeros(10, np.int16))
    s.push_audio(np.full(3000, 5.0, np.float32))          # clipped, not an error
    assert s.buf.max() == 1.0


def test_end_closes_mouth_and_flush_goes_idle(model):
    s, frames = _stream(model, _noise(1.0, 2) * 5, "", seed=0)
    tail = s.end()
    assert np.allclose(tail[-1].params[53:56], 0.0)
    s.push_audio(_noise(1.0, 3))
    f = s.poll()
    k_before = s.k
    out = s.flush()
    assert 1 <= len(out) <= 2 * 2 and s.k == k_before + 1   # one hop
    assert np.allclose(out[-1].params[53:56], 0.0)
    assert not s.hop_ready()


def test_style_change_and_batched_step_match_single(model):
    audio = [_noise(1.5, 10 + i) for i in range(3)]
    styles = ["smiles", "", "frowns"]
    ref = []
    for i in range(3):
        s, fr = _stream(model, audio[i], styles[i], seed=i, chunk=1000)
        ref.append(np.stack([f.params for f in fr]))
    ss = [StreamSession(model, StreamConfig(seed=i), style=styles[i]) for i in range(3)]
    for s, a in zip(ss, audio):
        s.push_audio(a)
    while any(s.hop_ready() for s in ss):
        step_sessions([s for s in ss if s.hop_ready()])
    for s, r in zip(ss, ref):
        got = np.stack([f.params for f in s.poll()])
        np.testing.assert_allclose(got, r, atol=1e-4)


def test_text_only_mode_and_style_blend(model):
    s = StreamSession(model, StreamConfig(seed=0), style="nods")
    s.push_no_audio(16000)
    a = s.poll()
    s.set_style("shakes head", blend_s=0.4)
    s.push_no_audio(16000)
    b = s.poll()
    assert len(a) + len(b) >= 46 and b[-1].style == "shakes head"
    off = generate(model, None, "nods", seed=0, n_frames=len(a))
    np.testing.assert_allclose(np.stack([f.params for f in a]), off, atol=1e-4)


def test_blinks_in_silence_same_offline_and_streaming(model):
    from mm2face.engine.session import blink_overlay
    ov = blink_overlay(0, 250, seed=0)
    assert 2 <= ((ov[1:] >= 0.9) & (ov[:-1] < 0.9)).sum() <= 3          # ~one blink per 4 s
    np.testing.assert_array_equal(blink_overlay(37, 50, 0), ov[37:87])   # pure function of the frame number
    silence = np.zeros(16000 * 6, np.float32)
    s, frames = _stream(model, silence, "", seed=0)
    got = np.stack([f.params for f in frames])
    assert got[:, 21].max() >= 0.9 and got[:, 22].max() >= 0.9
    off = generate(model, silence, "", seed=0)
    np.testing.assert_allclose(got, off[:len(got)], atol=1e-4)


def test_standin_units_never_go_below_rest_but_flame_coefficients_may():
    audio = (np.random.default_rng(3).standard_normal(16000) * 0.1).astype(np.float32)
    outs = {}
    for head in ("standin", "flame"):
        m = MM2Face.random(seed=0, head=head)
        m.set_norm(np.r_[np.full(50, -0.5), np.zeros(6)].astype(np.float32), np.ones(56, np.float32))
        off = generate(m, audio, "", seed=1, blinks=False)            # the mean sits below rest: most units < 0
        s, frames = stream_in_chunks(m, audio, "", seed=1, blinks=False)
        np.testing.assert_allclose(np.stack([f.params for f in frames]), off[:len(frames)], atol=1e-4)
        outs[head] = off
    assert outs["standin"][:, :50].min() == 0.0 and (outs["standin"][:, :50] == 0).mean() > 0.5
    assert outs["flame"][:, :50].min() < -0.1                     # signed PCA coefficients are left alone
    np.testing.assert_allclose(outs["standin"][:, 50:], outs["flame"][:, 50:], atol=1e-6)
