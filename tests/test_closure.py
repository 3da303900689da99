"""The lip-contact stage (engine/closure.py): contacts close the lips on the mesh, streaming equals offline
and batched equals solo with it on, it reads no audio past the 40 ms lookahead, checkpoints carry it, and
its trainer runs on a corpus with phone timings."""
import numpy as np
import pytest
import torch

from mm2face.engine.closure import ClosureConfig, apply_contact, standin_head
from mm2face.engine.frame import JAW, SAMPLES_PER_FRAME
from mm2face.engine.generate import generate
from mm2face.engine.lips import closed_gap_mm, incisor_edge_y_mm, lip_geometry
from mm2face.engine.model import MM2Face
from mm2face.engine.session import StreamConfig, StreamSession
from mm2face.engine.units import unit
from mm2face.training.synth_speech import speak
from stream_helpers import solo_and_batcher, stream_in_chunks

VOICE = {"engine": "espeak-ng", "voice": "en-us", "rate_wpm": 160, "pitch": 50, "range": 50}


@pytest.fixture(scope="module")
def speech():
    sp = speak(["Bob might pay me a bit more.", "Five very fine vans."], np.random.default_rng(2), voice=VOICE)
    return sp


@pytest.fixture(scope="module")
def small(speech):
    """A tiny random model with an (untrained) contact stage whose weights span 0..1 over the clip, so every
    path of the stage runs."""
    torch.set_num_threads(1)
    m = MM2Face.random(seed=0, small=True)
    torch.manual_seed(0)
    c = m.attach_closure(ClosureConfig())
    with torch.no_grad():                                # an untrained stage says about 0.5 everywhere: put the
        n = len(speech.audio_16k) // SAMPLES_PER_FRAME   # weights' ramp over this clip's own spread of p
        p = torch.sigmoid(c.clip_logits(torch.from_numpy(speech.audio_16k)[None], n)[0, :, 0]).numpy()
    c.cfg.on_p, c.cfg.full_p = float(np.quantile(p, 0.3)), float(np.quantile(p, 0.7))
    return m.eval()


def _open_frames(n=4, jaw=0.12):
    m = np.zeros((n, 56), np.float32)
    m[:, JAW.start] = jaw
    m[:, unit("lips_part")] = 0.6
    return m


def test_full_bilabial_contact_closes_the_lips_from_an_open_mouth():
    head, cfg = standin_head(), ClosureConfig()
    for jaw in (0.05, 0.12, 0.3, 0.45):                  # over jaw_max_rad the jaw is limited first
        m = _open_frames(jaw=jaw)
        before = lip_geometry(head, m)["gap_mm"] - closed_gap_mm(head)
        assert before.min() > 3.0
        out = apply_contact(m, np.tile([[1.0, 0.0]], (len(m), 1)), head, cfg)
        gap = lip_geometry(head, out)["gap_mm"] - closed_gap_mm(head)
        np.testing.assert_allclose(gap, 0.0, atol=0.05)
        assert (out[:, JAW.start] <= max(cfg.jaw_max_rad, 0.0) + 1e-6).all() or jaw <= cfg.jaw_max_rad
        assert out[:, unit("mouth_close")].max() <= cfg.unit_max


def test_no_contact_changes_nothing_and_half_a_contact_is_between():
    head, cfg = standin_head(), ClosureConfig()
    m = _open_frames()
    np.testing.assert_array_equal(apply_contact(m, np.zeros((len(m), 2)), head, cfg), m)
    g = lambda x: lip_geometry(head, x)["gap_mm"] - closed_gap_mm(head)          # noqa: E731
    half = g(apply_contact(m, np.tile([[0.5, 0.0]], (len(m), 1)), head, cfg))
    assert (0.5 < half).all() and (half < g(m) - 0.5).all()


def test_labiodental_contact_puts_the_lower_lip_on_the_upper_teeth():
    head, cfg = standin_head(), ClosureConfig()
    m = _open_frames(jaw=0.1)
    out = apply_contact(m, np.tile([[0.0, 1.0]], (len(m), 1)), head, cfg)
    geo = lip_geometry(head, out)
    np.testing.assert_allclose(geo["lower_mm"][:, 1], incisor_edge_y_mm(head) - 0.5, atol=0.05)
    assert (geo["teeth_mm"] < 3.0).all() and (out[:, unit("lower_lip_roll")] == 1.0).all()
    both = apply_contact(m, np.tile([[1.0, 1.0]], (len(m), 1)), head, cfg)        # bilabial wins a shared frame
    np.testing.assert_allclose(lip_geometry(head, both)["gap_mm"] - closed_gap_mm(head), 0.0, atol=0.05)


def test_stream_equals_offline_with_contact(small, speech):
    x = speech.audio_16k
    off = generate(small, x, "a calm speaker", seed=2)
    w = small.closure.clip_weights(x, len(off))
    assert w.min() < 0.3 and w.max() > 0.7                  # contacts really vary over this clip
    assert not np.allclose(off, generate(small, x, "a calm speaker", seed=2, contact=False))
    for chunk in (333, 1600):
        s, frames = stream_in_chunks(small, x, "a calm speaker", seed=2, chunk=chunk)
        frames += s.end()
        got = np.stack([f.params for f in frames])[:len(off)]
        np.testing.assert_allclose(got, off, atol=1e-4)
    assert s.stats["contact_ms_total"] > 0


def test_contact_reads_no_audio_past_the_lookahead(small, speech):
    """Changing the audio after frame k's end + 40 ms changes no contact weight of frames <= k."""
    x = speech.audio_16k
    n = len(x) // SAMPLES_PER_FRAME
    k = n // 2
    cut = SAMPLES_PER_FRAME * (k + 1) + small.lookahead_samples
    y = x.copy()
    y[cut:] = np.random.default_rng(0).normal(0, 0.3, len(y) - cut).astype(np.float32)
    a, b = small.closure.clip_weights(x, n), small.closure.clip_weights(y, n)
    np.testing.assert_allclose(a[:k + 1], b[:k + 1], atol=1e-5)
    assert not np.allclose(a[k + 1:], b[k + 1:])


def test_contact_off_by_flag_and_no_contact_without_audio(small, speech):
    s = StreamSession(small, StreamConfig(contact=False))
    assert s.contact is None
    off = generate(small, speech.audio_16k, "", seed=0, contact=False)
    s, frames = stream_in_chunks(small, speech.audio_16k, "", seed=0, chunk=640, contact=False)
    frames += s.end()
    np.testing.assert_allclose(np.stack([f.params for f in frames])[:len(off)], off, atol=1e-4)
    s = StreamSession(small, StreamConfig(seed=0))                 # text-only stretch: no contact at all
    s.push_no_audio(SAMPLES_PER_FRAME * 12)
    ref = StreamSession(small, StreamConfig(seed=0, contact=False))
    ref.push_no_audio(SAMPLES_PER_FRAME * 12)
    np.testing.assert_array_equal(np.stack([f.params for f in s.poll()]), np.stack([f.params for f in ref.poll()]))


def test_batched_sessions_equal_solo_with_contact(small, speech):
    x = speech.audio_16k
    auds = [x[:16000 * (1 + i)] for i in range(3)]
    ref, b, keys = solo_and_batcher(small, auds)
    got = {k: [] for k in keys}
    for i, k in enumerate(keys):
        for j in range(0, len(auds[i]), 500 * (i + 1)):
            b.push_audio(k, auds[i][j:j + 500 * (i + 1)])
    b.run_until_idle()
    for i, k in enumerate(keys):
        got[k] += b.drain(k)
        np.testing.assert_allclose(np.stack([f.frame.params if hasattr(f, "frame") else f.params
                                              for f in got[k]]), ref[i], atol=1e-4)


def test_checkpoint_carries_the_contact_stage(small, tmp_path):
    small.save(tmp_path / "m.pt")
    m2 = MM2Face.load(tmp_path / "m.pt")
    assert m2.closure is not None and m2.closure.cfg == small.closure.cfg
    for a, b in zip(small.closure.state_dict().values(), m2.closure.state_dict().values()):
        assert torch.equal(a, b)
    flame = MM2Face.random(seed=0, small=True, head="flame") if "head" in MM2Face.random.__code__.co_varnames else None
    if flame is not None and flame.head_name != "standin":
        with pytest.raises(ValueError, match="mouth_close"):
            flame.attach_closure()


@pytest.mark.parametrize("voice", ["en-us", "en-gb-scotland"])        # a training accent and the held-out family
def test_default_closes_the_lips_on_fresh_speech(default, voice):
    """The shipped default, on sentences and a voice rendering made here (not corpus clips): the lips meet on
    most p/b/m and vowels open well over twice as wide; without the stage they do neither."""
    from mm2face.training import articulation as A
    assert default.closure is not None
    sp = speak(["Maybe Bob will bring the map by lunchtime.", "Please pass me the blue paper, Pam."],
               np.random.default_rng(7), voice={**VOICE, "voice": voice})
    head = standin_head()
    on = A.aggregate_articulation([A.clip_articulation(head, generate(default, sp.audio_16k, "", seed=0), sp.phones)])
    off = A.aggregate_articulation([A.clip_articulation(head, generate(default, sp.audio_16k, "", seed=0, contact=False),
                                                        sp.phones)])
    assert on["bilabials"] >= 10
    assert on["bilabial_closure_rate"] >= 0.8 and off["bilabial_closure_rate"] <= 0.5
    assert on["vowel_bilabial_ratio"] >= 2.0 > off["vowel_bilabial_ratio"]


def test_trainer_cli_writes_a_model_with_the_stage(tmp_path, small):
    """`mm2face-train closure` on a freshly made small corpus: the written model carries the stage, its config
    (with --set overrides), a log-mel normalisation from the data and a log; a corpus without phones is refused."""
    import json

    from mm2face.training.synth_factory import SynthConfig, synthesize
    from mm2face.training.train_cli import main

    synthesize(tmp_path / "c", SynthConfig(hours=0.01, seed=6, workers=1, val_fraction=0.3), progress=False)
    init = tmp_path / "init.pt"
    MM2Face.random(seed=1, small=True).save(init)
    main(["closure", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "run"), "--init", str(init),
          "--steps", "4", "--batch", "3", "--threads", "1", "--set", "channels=16", "hidden=8", "on_p=0.3"])
    m = MM2Face.load(tmp_path / "run" / "model.pt")
    assert m.closure is not None and m.closure.cfg.channels == 16 and m.closure.cfg.on_p == 0.3
    assert not torch.allclose(m.closure.front.mel_std, torch.ones_like(m.closure.front.mel_std))
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert recs and recs[-1]["step"] == 4 and "bilabial_recall" in recs[-1]
    w = m.closure.clip_weights(np.zeros(16000, np.float32), 25)
    assert w.shape == (25, 2) and np.isfinite(w).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="phone timings|MMHead-layout"):
        main(["closure", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run2"), "--init", str(init)])
