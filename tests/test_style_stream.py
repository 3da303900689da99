"""The style parser and gesture layer in the engine: streaming equals offline with gesture styles, a style
change eases the head from where it is, and the parser can be turned off (raw text to the model)."""
import numpy as np
import pytest
import torch

from mm2face.engine.frame import HEAD
from mm2face.engine.generate import generate
from mm2face.engine.model import MM2Face
from mm2face.engine.session import StreamConfig, StreamSession, step_sessions
from mm2face.engine.style import CALM_CAPTION, resolve_style
from mm2face.training import metrics as M
from stream_helpers import stream_in_chunks


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return MM2Face.random(seed=0)


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


@pytest.mark.parametrize("style", ["cheerful, nods a lot", "slightly grumpy and shaking the head",
                                   "glances to the left"])
def test_stream_equals_offline_with_gestures(model, style):
    audio = _noise(3.3, 1)
    off = generate(model, audio, style, seed=2)
    s, frames = stream_in_chunks(model, audio, style, seed=2, chunk=900)
    frames += s.end()
    got = np.stack([f.params for f in frames])[:len(off)]
    np.testing.assert_allclose(got, off, atol=1e-4)
    raw = generate(model, audio, style, seed=2, parse_styles=False)
    assert np.abs(off[:, HEAD] - raw[:, HEAD]).max() > 0.05          # the gesture layer moved the head
    assert all(f.style == style for f in frames)                        # the user's text is what frames show


def test_gesture_passes_its_check_on_top_of_the_model(model):
    nod = generate(model, None, "nodding along", seed=0, n_frames=100)
    shake = generate(model, None, "says no with a shake of the head", seed=0, n_frames=100)
    assert M.style_checks(nod, "nods")["nod"]["pass"]
    assert M.style_checks(shake, "shakes the head")["shake"]["pass"]


def test_style_change_eases_the_head_and_batching_matches(model):
    # both sessions' styles read the calm caption (same seed, no refiner): their difference is the gesture layer
    def run(batched):
        ss = [StreamSession(model, StreamConfig(seed=0), style=st) for st in ("looks left", "calm")]
        out = [[] for _ in ss]
        for step in range(2):
            for s in ss:
                s.push_no_audio(16000)
            while any(s.hop_ready() for s in ss):
                ready = [s for s in ss if s.hop_ready()]
                step_sessions(ready) if batched else [s.poll_into_pending() for s in ready]
            for i, s in enumerate(ss):
                out[i] += s.poll()
            if step == 0:
                ss[0].set_style("looks right", blend_s=0.5)
        return [np.stack([f.params for f in o]) for o in out]
    single, batched = run(False), run(True)
    for a, b in zip(single, batched):
        np.testing.assert_allclose(a, b, atol=1e-4)
    yaw = single[0][:, 51] - single[1][:, 51]
    n0 = 25                                                              # frames before the change (1 s)
    assert yaw[n0 - 5:n0].mean() > 0.2 and yaw[-5:].mean() < -0.2       # left, then right
    assert np.abs(np.diff(yaw)).max() < 0.06                             # eased in and across, no jump


def test_parser_off_is_the_raw_text(model):
    audio = _noise(1.0, 3)
    s, frames = stream_in_chunks(model, audio, "nods a lot", seed=1, parse_styles=False)
    raw = generate(model, audio, "nods a lot", seed=1, parse_styles=False)
    np.testing.assert_allclose(np.stack([f.params for f in frames])[:len(raw)], raw[:len(frames)], atol=1e-4)
    assert s.resolved.caption == "nods a lot" and s.resolved.expression_gain == 1.0 and not s.gestures.active


def test_empty_style_reads_the_calm_caption(model):
    s = StreamSession(model, StreamConfig())
    assert s.resolved.caption == CALM_CAPTION == resolve_style("").caption
    torch.testing.assert_close(s.emb_to, model.text_embed(CALM_CAPTION))
