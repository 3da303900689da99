"""The shipped default checkpoint loads, generates, and streams like offline generation."""
import numpy as np
import pytest
import torch

from mm2face.engine.model import default_checkpoint_path, load_model

pytestmark = pytest.mark.skipif(not default_checkpoint_path().exists(), reason="no default checkpoint")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model()


def test_default_checkpoint_rebuilds_and_generates(model):
    from mm2face.engine.generate import generate
    assert model.head_name == "standin" and model.info.stage == "mm2face"
    assert default_checkpoint_path().stat().st_size <= 30 * 2 ** 20
    t = np.arange(16000 * 2) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    m = generate(model, speech, "A person smiles warmly.", seed=0)
    assert m.shape == (50, 56) and np.isfinite(m).all()
    assert np.abs(m[:, 53]).max() < 0.8                        # plausible jaw (rad)
    silent = generate(model, np.zeros(16000 * 2, np.float32), "", seed=0)
    assert np.median(silent[:, 53]) < 0.06                     # mouth rests in silence (metrics' closed threshold)


def test_default_checkpoint_streams_like_offline(model):
    from mm2face.engine.generate import generate
    from stream_helpers import stream_in_chunks
    audio = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.05).astype(np.float32)
    off = generate(model, audio, "The person nods.", seed=1)
    s, frames = stream_in_chunks(model, audio, "The person nods.", seed=1, chunk=512)
    frames += s.end()
    np.testing.assert_allclose(np.stack([f.params for f in frames])[:len(off)], off, atol=1e-4)
    assert frames[-1].params[53] == 0.0                        # end(): the jaw is at rest
