"""Stage 3, the causal audio refiner: exact streaming, checkpoints, and a trainer whose loss falls."""
import numpy as np
import pytest
import torch

from mm2face.engine.frame import HEAD
from mm2face.engine.generate import generate
from mm2face.engine.model import MM2Face
from mm2face.engine.refiner import Refiner, RefinerConfig
from mm2face.engine.session import StreamConfig, StreamSession, step_sessions
from mm2face.training.dataset import SimpleClip
from mm2face.training.train_refiner import RefinerTrainConfig, train_refiner
from stream_helpers import stream_in_chunks


def _scramble(module, seed=0):
    """Random non-zero weights everywhere (a fresh refiner is the identity, which would prove nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    m = MM2Face.random(seed=0)
    m.attach_refiner(RefinerConfig(width=32, dilations=(1, 2, 4)))
    _scramble(m.refiner)
    return m.eval()


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _inputs(B=2, L=12, d=8, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, d, generator=g), torch.randn(B, 2 * L, 56, generator=g),
            torch.randn(B, L, width, generator=g), torch.arange(L)[None].expand(B, L))


def test_new_refiner_is_identity_and_causal():
    r = Refiner(RefinerConfig(width=16, dilations=(1, 2), mel_bins=0), d_audio=8, down=2).eval()
    av, fr, st, t = _inputs()
    torch.testing.assert_close(r(av, fr, st, t), fr)               # zero-initialised output layers
    _scramble(r)
    full = r(av, fr, st, t)
    assert not torch.allclose(full, fr)
    av2, fr2, st2 = av.clone(), fr.clone(), st.clone()             # changing the future changes nothing before it
    av2[:, 7:] += 5
    fr2[:, 14:] += 5
    st2[:, 7:] += 5
    torch.testing.assert_close(r(av2, fr2, st2, t)[:, :14], full[:, :14])
    state = r.initial_state(2)                                     # one token at a time = whole-sequence rows
    for k in range(12):
        y, state, _ = r.step(state, av[:, k], fr[:, 2 * k:2 * k + 2], st[:, k], t[:, k])
        torch.testing.assert_close(y, full[:, 2 * k:2 * k + 2])


def test_head_offset_reads_only_style_and_time():
    r = Refiner(RefinerConfig(width=16, dilations=(1, 2), mel_bins=0), d_audio=8, down=2).eval()
    _scramble(r, seed=3)
    av, fr, st, t = _inputs()
    out = r(av, fr, st, t)
    av2, fr2 = torch.randn_like(av), fr.clone()
    fr2[..., :50] += 3                                             # other audio and expressions: same head offset
    torch.testing.assert_close((r(av2, fr2, st, t) - fr2)[..., HEAD], (out - fr)[..., HEAD])
    assert not torch.allclose(r(av, fr, st, t + 5)[..., HEAD], out[..., HEAD])    # time matters
    plain = Refiner(RefinerConfig(width=16, dilations=(1, 2), head=False, mel_bins=0), d_audio=8, down=2).eval()
    _scramble(plain)
    torch.testing.assert_close(plain(av, fr, st, t)[..., HEAD], fr[..., HEAD])    # head=False: head untouched


def test_text_pooling_ignores_padding_and_tells_captions_apart():
    r = Refiner(RefinerConfig(width=16, dilations=(1,), mel_bins=0), d_audio=8, down=2).eval()
    _scramble(r, seed=5)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 7, 384, generator=g), torch.randn(1, 5, 384, generator=g)
    padded = torch.zeros(2, 7, 384)
    padded[0], padded[1, :5] = a[0], b[0]
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    got = r.pool_text(padded, mask)
    torch.testing.assert_close(got[0], r.pool_text(a)[0])
    torch.testing.assert_close(got[1], r.pool_text(b)[0])
    assert not torch.allclose(got[0], got[1])


def test_stream_with_refiner_equals_offline(model):
    audio = _noise(3.3)                                            # 41 tokens > the refiner's 15-token field
    off = generate(model, audio, "a calm speaker", seed=2)
    s, frames = stream_in_chunks(model, audio, "a calm speaker", seed=2)
    frames += s.end()
    got = np.stack([f.params for f in frames])[:len(off)]
    np.testing.assert_allclose(got, off, atol=1e-4)
    saved, model.refiner = model.refiner, None                     # and the refiner did change the motion
    try:
        plain = generate(model, audio, "a calm speaker", seed=2)
    finally:
        model.refiner = saved
    assert np.abs(plain - off).max() > 1e-2


def test_batched_sessions_with_refiner_match_single(model):
    audios = [_noise(1.5, 1), _noise(2.5, 2)]
    alone = []
    for i, a in enumerate(audios):
        s = StreamSession(model, StreamConfig(seed=i))
        s.push_audio(a)
        alone.append(np.stack([f.params for f in s.poll()]))
    ss = [StreamSession(model, StreamConfig(seed=i)) for i in range(2)]
    for s, a in zip(ss, audios):
        s.push_audio(a)
    out = [[], []]
    while any(s.hop_ready() for s in ss):
        ready = [s for s in ss if s.hop_ready()]
        for s, fr in zip(ready, step_sessions(ready)):
            out[ss.index(s)] += fr
    for i in range(2):
        np.testing.assert_allclose(np.stack([f.params for f in out[i]]), alone[i], atol=1e-5)


def test_checkpoint_round_trip_keeps_refiner(model, tmp_path):
    p = model.save(tmp_path / "m.pt")
    m2 = MM2Face.load(p)
    assert m2.refiner is not None and m2.refiner.cfg.dilations == (1, 2, 4)
    audio = _noise(1.0)
    np.testing.assert_allclose(generate(m2, audio, "x", seed=1), generate(model, audio, "x", seed=1), atol=1e-6)
    plain = MM2Face.random(seed=0)                                 # files without stage 3 load without one
    m3 = MM2Face.load(plain.save(tmp_path / "plain.pt"))
    assert m3.refiner is None and m3.configs()["refiner"] is None


def test_trainer_loss_falls_and_writes_a_model(tmp_path):
    torch.manual_seed(0)
    base = MM2Face.random(seed=1)
    init = base.save(tmp_path / "init.pt")
    rng = np.random.default_rng(0)
    clips = []
    for i in range(8):                                             # the jaw follows the audio envelope
        T = 50
        env = np.abs(np.sin(np.linspace(0, 3 + i, T)))
        audio = (rng.standard_normal(T * 640) * np.repeat(env, 640) * 0.3).astype(np.float32)
        motion = rng.normal(0, 0.02, (T, 56)).astype(np.float32)
        motion[:, 53] = 0.3 * env
        clips.append(SimpleClip(id=f"c{i}", motion=motion, audio_16k=audio, captions={"action": "talks"}))
    cfg = RefinerTrainConfig(out=str(tmp_path / "ref"), init=str(init), steps=60, batch=4, lr=3e-3,
                             val_every=30, refiner={"width": 32, "dilations": [1, 2]})
    path = train_refiner(cfg, clips[:6], clips[6:], progress=False)
    m = MM2Face.load(path)
    assert m.refiner is not None
    meta = m.info.meta
    assert meta["refiner_val_rec"] < meta["refiner_val_rec_unrefined"]
    assert (tmp_path / "ref" / "inputs.pt").exists()
    # stages 1-2 untouched: the refiner-less part of the file equals the init file
    for k, v in base.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    front = m.refiner.front                                        # the audio front learned and was normalised
    assert front is not None and front.out.weight.abs().max() > 0
    assert not torch.allclose(front.mel_std, torch.ones_like(front.mel_std))
    # a warm start continues from that refiner (a near-zero learning rate leaves it where it was)
    warm = RefinerTrainConfig(out=str(tmp_path / "warm"), init=str(path), steps=1, batch=4, lr=1e-12,
                              warm_start=True, refiner={"width": 32, "dilations": [1, 2]})
    m2 = MM2Face.load(train_refiner(warm, clips[:6], clips[6:], progress=False))
    for k, v in m.refiner.state_dict().items():
        torch.testing.assert_close(m2.refiner.state_dict()[k], v, atol=1e-6, rtol=1e-5)
    assert "refiner_val_rec_start" in m2.info.meta
    assert m2.info.meta["refiner_best_step"] == 0                  # never beaten: the warm start comes back
    assert m2.info.meta["refiner_val_rec"] == m2.info.meta["refiner_val_rec_start"]
    # --freeze keeps the named parts as they start while the rest trains
    keep = ["head_out", "text_", "null_style", "time"]
    fz = RefinerTrainConfig(out=str(tmp_path / "frozen"), init=str(path), steps=4, batch=4, lr=3e-3, val_every=2,
                            warm_start=True, freeze=keep, refiner={"width": 32, "dilations": [1, 2]})
    m3 = MM2Face.load(train_refiner(fz, clips[:6], clips[6:], progress=False))
    before, after = m.refiner.state_dict(), m3.refiner.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if any(k.startswith(f) for f in keep))
    assert not torch.equal(after["front.out.weight"], before["front.out.weight"])
    with pytest.raises(ValueError, match="matches no refiner parameter"):
        train_refiner(RefinerTrainConfig(out=str(tmp_path / "bad"), init=str(path), steps=1, freeze=["nope"],
                                         refiner={"width": 32, "dilations": [1, 2]}), clips[:6], clips[6:],
                      progress=False)


def test_new_style_text_restarts_the_refiner_clock(model, monkeypatch):
    seen = []
    step = model.refiner.step

    def spy(state, av, fr, style, t_tok, *rest):
        seen.append(int(t_tok[0]))
        return step(state, av, fr, style, t_tok, *rest)

    monkeypatch.setattr(model.refiner, "step", spy)
    s = StreamSession(model, StreamConfig(seed=0), style="calm")
    s.push_audio(_noise(1.0))
    s.poll()
    k = s.k
    assert k > 5 and seen == list(range(k))
    s.set_style("calm")                                            # same text: the clock keeps running
    s.push_audio(_noise(0.16, 1))
    s.poll()
    k2 = s.k
    assert seen == list(range(k2))
    s.set_style("turns the head to the left")                      # new text: it restarts at the next token
    s.push_audio(_noise(0.5, 2))
    s.poll()
    assert s.style_k0 == k2 and seen[k2:] == list(range(s.k - k2))


def test_train_cli_refiner_then_eval_on_an_mmhead_folder(tmp_path, capsys):
    """mm2face-train refiner on an MMHead-layout folder, then mm2face-eval on the file it wrote."""
    import json

    from mm2face.training import eval_cli, train_cli
    from test_metrics_eval_cli import write_corpus

    write_corpus(tmp_path / "corpus")
    init = MM2Face.random(seed=0, small=True).save(tmp_path / "tiny.pt")
    train_cli.main(["refiner", "--data", str(tmp_path / "corpus"), "--out", str(tmp_path / "ref"),
                    "--init", str(init), "--steps", "12", "--batch", "2", "--val-every", "6", "--threads", "1",
                    "--no-progress", "--set", "width=16", "dilations=[1,2]", "time_tokens=32"])
    path = tmp_path / "ref" / "model.pt"
    assert f"wrote {path}" in capsys.readouterr().out
    m = MM2Face.load(path)
    assert m.refiner is not None and m.refiner.cfg.width == 16 and m.refiner.cfg.dilations == (1, 2)
    assert m.info.meta["refiner_steps"] == 12
    assert eval_cli.main(["--ckpt", str(path), "--data", str(tmp_path / "corpus"), "--out", str(tmp_path / "e.json"),
                          "--threads", "1", "--seeds", "1"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["model"]["lve_mm"] >= 0


def test_a_style_change_fades_the_head_from_where_it_is(model):
    r = Refiner(RefinerConfig(width=16, dilations=(1,), mel_bins=0), d_audio=8, down=2).eval()
    _scramble(r, seed=6)
    av, fr, st, t = _inputs(B=1, L=1)
    full, _, h_full = r.step(r.initial_state(1), av[:, 0], fr[:, :2], st[:, 0], torch.tensor([50]))
    old = torch.randn(1, 6)
    _, _, h0 = r.step(r.initial_state(1), av[:, 0], fr[:, :2], st[:, 0], torch.tensor([0]), old)
    with torch.no_grad():                                          # t = 0: 1/6 new, 5/6 where the head was
        want = r.head_out(st[:, 0] + r.time(torch.tensor([0]))) / 6 + old * 5 / 6
    torch.testing.assert_close(h0, want)
    s = StreamSession(model, StreamConfig(seed=0), style="calm")  # the session hands its last offset over
    s.push_audio(_noise(1.0))
    s.poll()
    last = s.ref_head.clone()
    s.set_style("turns the head to the left")
    torch.testing.assert_close(s.ref_head_from, last)


def test_audio_front_hears_its_token_and_the_lookahead_only(model):
    """Token k's front vector reads audio up to the end of its own samples + the lookahead, no later,
    and a window cut from the stream gives the same vector as the whole-clip pass."""
    front = model.refiner.front
    spt, look = model.samples_per_token, model.lookahead_samples
    audio = torch.from_numpy(_noise(2.0, 3))[None]
    n = 12
    whole = front.tokens(front.clip_mel(audio, n), n)                            # (1, n, width)
    assert whole.abs().max() > 1e-3
    k = 5
    end = spt * (k + 1) + look                                                    # last sample token k may hear
    later = audio.clone()
    later[:, end:] += 0.3
    torch.testing.assert_close(front.tokens(front.clip_mel(later, n), n)[:, :k + 1], whole[:, :k + 1])
    inside = audio.clone()
    inside[:, end - 160:end] += 0.3                                               # the last 10 ms of its lookahead
    assert (front.tokens(front.clip_mel(inside, n), n)[:, k] - whole[:, k]).abs().max() > 1e-4
    padded = torch.cat([torch.zeros(1, front.window_samples), audio], 1)          # zeros before the stream start
    win = padded[:, end:end + front.window_samples]                               # = audio [end - window, end)
    one = front.tokens(front.log_mel(win), 1)[:, 0]
    torch.testing.assert_close(one, whole[:, k], atol=1e-5, rtol=1e-4)


def test_files_from_before_the_audio_front_load_without_one(model, tmp_path):
    ck = model.checkpoint_dict()
    old = {k: v for k, v in ck["configs"]["refiner"].items() if not k.startswith("mel_")}
    ck["configs"]["refiner"] = old
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("refiner.front.")}
    m = MM2Face.from_checkpoint_dict(ck)
    assert m.refiner is not None and m.refiner.front is None


def test_silent_dims_limit_the_correction_on_tokens_without_audio(model, tmp_path):
    cfg = RefinerConfig(width=16, dilations=(1, 2), mel_bins=0, silent_dims=[53, 54, 55])
    r = Refiner(cfg, d_audio=8, down=2).eval()
    _scramble(r, seed=7)
    av, fr, st, t = _inputs()
    null = torch.zeros(2, 12, dtype=torch.bool)
    null[0, 5:] = True                                             # stream 0 loses its audio at token 5
    out = r(av, fr, st, t, None, null)
    delta = (out - fr)[..., :50]                                   # expression units: not in silent_dims
    assert delta[0, 10:].abs().max() == 0 and delta[0, :10].abs().min() > 0 and delta[1].abs().min() > 0
    assert (out - fr)[0, 10:, 53:56].abs().min() > 0               # the jaw is still corrected there
    assert not torch.equal((out - fr)[..., HEAD][0, 10:], torch.zeros_like(fr[0, 10:, HEAD]))  # head offset stays
    state = r.initial_state(2)                                     # per token = whole sequence, mixed rows
    for k in range(12):
        y, state, _ = r.step(state, av[:, k], fr[:, 2 * k:2 * k + 2], st[:, k], t[:, k], audio_null=null[:, k])
        torch.testing.assert_close(y, out[:, 2 * k:2 * k + 2])
    with pytest.raises(ValueError, match="subset of dims"):
        Refiner(RefinerConfig(width=16, dilations=(1,), mel_bins=0, dims=[53], silent_dims=[0]), d_audio=8, down=2)
    # in a model: text-only streaming equals offline, and the setting survives a checkpoint round trip
    m = MM2Face.random(seed=0)
    m.attach_refiner(RefinerConfig(width=32, dilations=(1, 2, 4), silent_dims=[53, 54, 55]))
    m.refiner.load_state_dict(model.refiner.state_dict())
    m2 = MM2Face.load(m.eval().save(tmp_path / "silent.pt"))
    assert m2.refiner.cfg.silent_dims == [53, 54, 55]
    off = generate(m2, None, "a calm face", seed=3, n_frames=40)
    s = StreamSession(m2, StreamConfig(seed=3), style="a calm face")
    s.push_no_audio(48 * 640)
    got = np.stack([f.params for f in s.poll()])[:40]
    np.testing.assert_allclose(got, off, atol=1e-4)
    every = generate(model, None, "a calm face", seed=3, n_frames=40)    # same weights, all dims corrected
    assert np.abs(every[:, :50] - off[:, :50]).max() > 1e-3
    np.testing.assert_allclose(every[:, 53:56], off[:, 53:56], atol=1e-6)


def test_refiner_config_cli_keeps_the_weights_and_refuses_shape_changes(model, tmp_path, capsys):
    from mm2face.training.train_cli import main
    src = model.save(tmp_path / "src.pt")
    main(["refiner-config", "--ckpt", str(src), "--out", str(tmp_path / "quiet.pt"), "--set", "silent_dims=[53,54,55]"])
    assert "wrote" in capsys.readouterr().out
    m = MM2Face.load(tmp_path / "quiet.pt")
    assert m.refiner.cfg.silent_dims == [53, 54, 55] and m.info.meta["refiner_config_changes"][-1] == {"silent_dims": [53, 54, 55]}
    for k, v in model.refiner.state_dict().items():
        torch.testing.assert_close(m.refiner.state_dict()[k], v)
    audio = _noise(1.0)                                            # with audio nothing changes
    np.testing.assert_allclose(generate(m, audio, "x", seed=1), generate(model, audio, "x", seed=1), atol=1e-6)
    with pytest.raises(SystemExit, match="alter the refiner's weights"):
        main(["refiner-config", "--ckpt", str(src), "--out", str(tmp_path / "bad.pt"), "--set", "width=8"])
    with pytest.raises(SystemExit, match="unknown RefinerConfig fields"):
        main(["refiner-config", "--ckpt", str(src), "--out", str(tmp_path / "bad.pt"), "--set", "colour=1"])
    assert not (tmp_path / "bad.pt").exists()


def test_refiner_from_moves_a_trained_refiner_onto_a_fine_tuned_stage_2(model, tmp_path):
    """--refiner-from: a new stage 2 (here: the GPT re-seeded) keeps the old refiner bit for bit; a model
    with another motion normalisation is refused."""
    from mm2face.training.train_cli import main
    src = model.save(tmp_path / "src.pt")
    tuned = MM2Face.random(seed=0)
    torch.manual_seed(5)
    for p in tuned.gpt.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    assert tuned.refiner is None
    main(["refiner-config", "--ckpt", str(tuned.save(tmp_path / "tuned.pt")), "--refiner-from", str(src),
          "--out", str(tmp_path / "grafted.pt"), "--set", "silent_dims=[53,54,55]"])
    g = MM2Face.load(tmp_path / "grafted.pt")
    for k, v in model.refiner.state_dict().items():
        torch.testing.assert_close(g.refiner.state_dict()[k], v)
    for k, v in tuned.gpt.state_dict().items():
        torch.testing.assert_close(g.gpt.state_dict()[k], v)
    assert g.refiner.cfg.silent_dims == [53, 54, 55] and g.info.meta["refiner_from"] == str(src)
    other = MM2Face.random(seed=0)
    other.mean.add_(0.1)
    with pytest.raises(SystemExit, match="another motion normalisation"):
        main(["refiner-config", "--ckpt", str(other.save(tmp_path / "other.pt")), "--refiner-from", str(src),
              "--out", str(tmp_path / "bad.pt")])
    main(["refiner-config", "--ckpt", str(src), "--out", str(tmp_path / "calm.pt"), "--empty-style", " a calm face "])
    calm = MM2Face.load(tmp_path / "calm.pt")
    assert calm.info.empty_style == "a calm face"
    torch.testing.assert_close(calm.text_embed(""), calm.text_embed("a calm face"))
    torch.testing.assert_close(model.text_embed(""), model.gpt.null_text)          # no empty style: unconditional
    with pytest.raises(SystemExit, match="nothing to change"):
        main(["refiner-config", "--ckpt", str(src), "--out", str(tmp_path / "bad.pt")])
    assert not (tmp_path / "bad.pt").exists()


def test_text_only_loss_compares_sorted_values_and_trains(tmp_path):
    from mm2face.training.train_refiner import _sorted_sq
    T = 20
    gt = torch.zeros(2, T, 3)
    gt[:, 4:8, 0] = 1.0                                            # an expression early in the clip ...
    pred = torch.roll(gt, 6, dims=1)                               # ... shown later: the same, timing aside
    m = torch.ones(2, T, 1)
    m[1, 15:] = 0                                                  # clip 1 is 15 frames long (padding)
    assert (pred - gt).pow(2).sum() > 0
    assert _sorted_sq(pred, gt, m).mul(m).sum() == 0
    assert _sorted_sq(pred * 0.5, gt, m).mul(m).sum() > 0          # a tamer one is not
    rng = np.random.default_rng(1)                                 # the trainer on talking + text-only clips
    clips = [SimpleClip(id=f"a{i}", motion=rng.normal(0, 0.02, (40, 56)).astype(np.float32),
                        audio_16k=(rng.standard_normal(40 * 640) * 0.1).astype(np.float32),
                        captions={"action": "talks"}) for i in range(3)]
    clips += [SimpleClip(id=f"t{i}", motion=rng.normal(0, 0.02, (40, 56)).astype(np.float32), audio_16k=None,
                         captions={"action": "smiles"}) for i in range(3)]
    cfg = RefinerTrainConfig(out=str(tmp_path / "ref"), init=str(MM2Face.random(seed=2).save(tmp_path / "i.pt")),
                             steps=6, batch=4, val_every=3, text_only_loss="sorted", movements_alone=False,
                             refiner={"width": 16, "dilations": [1]})
    m = MM2Face.load(train_refiner(cfg, clips[:2] + clips[3:5], [clips[2], clips[5]], progress=False))
    assert m.info.meta["refiner_train_cfg"]["text_only_loss"] == "sorted"
    assert not m.info.meta["refiner_train_cfg"]["movements_alone"]
    assert np.isfinite(m.info.meta["refiner_val_rec"])
    with pytest.raises(ValueError, match="text_only_loss"):
        train_refiner(RefinerTrainConfig(out=str(tmp_path / "bad"), init=cfg.init, steps=1, text_only_loss="mean",
                                         refiner={"width": 16, "dilations": [1]}), clips[:2], clips[2:3],
                      progress=False)


def test_validation_sample_covers_every_subset():
    from mm2face.training.train_refiner import spread
    clips = [f"talk{i}" for i in range(165)] + [f"t2m{i}" for i in range(50)]   # the loader's order
    got = spread(clips, 100)
    assert len(got) == len(set(got)) == 100 and got[0] == "talk0" and got[-1] == "t2m49"
    assert 20 <= sum(c.startswith("t2m") for c in got) <= 26                       # about its share (23 %)
    assert spread(clips[:7], 100) == clips[:7]


def test_silent_guidance_amplifies_the_caption_where_there_is_no_audio_and_streams_exactly(model, tmp_path):
    r = Refiner(RefinerConfig(width=16, dilations=(1, 2), mel_bins=0, silent_guidance=2.5), d_audio=8, down=2).eval()
    _scramble(r, seed=11)
    av, fr, st, t = _inputs()
    null = torch.zeros(2, 12, dtype=torch.bool)
    null[0, 5:] = True                                             # stream 0 loses its audio at token 5
    no_style = r.null_style.detach().expand_as(st)
    styled, plain = r(av, fr, st, t, None, null, guidance=1.0), r(av, fr, no_style, t, None, null, guidance=1.0)
    out = r(av, fr, st, t, None, null)                             # the config's guidance, 2.5
    corr = lambda y: (y - fr)[..., r.dims]
    silent = null.repeat_interleave(2, 1)                          # (B, frames)
    torch.testing.assert_close(corr(out)[silent], (corr(plain) + 2.5 * (corr(styled) - corr(plain)))[silent])
    torch.testing.assert_close(out[~silent], styled[~silent])      # tokens with audio: not guided
    assert (corr(out) - corr(styled))[silent].abs().max() > 1e-3
    torch.testing.assert_close(out[..., HEAD], styled[..., HEAD])  # the head offset is not guided
    torch.testing.assert_close(r(av, fr, no_style, t, None, null), plain)   # no caption: nothing to amplify
    state = r.initial_state(2)                                     # both passes' state, one stream per row
    assert len(state) == 2 * len(r.blocks)
    for k in range(12):
        y, state, _ = r.step(state, av[:, k], fr[:, 2 * k:2 * k + 2], st[:, k], t[:, k], audio_null=null[:, k])
        torch.testing.assert_close(y, out[:, 2 * k:2 * k + 2])
    with pytest.raises(ValueError, match="silent_guidance needs a style input"):
        Refiner(RefinerConfig(width=16, dilations=(1,), mel_bins=0, d_text=0, head=False, silent_guidance=2.0),
                d_audio=8, down=2)
    # in a model: it survives a checkpoint; streaming equals offline and batched sessions equal single ones,
    # for a stream that talks and then goes on without audio
    m = MM2Face.random(seed=0)
    m.attach_refiner(RefinerConfig(width=32, dilations=(1, 2, 4), silent_guidance=2.0))
    m.refiner.load_state_dict(model.refiner.state_dict())
    m2 = MM2Face.load(m.eval().save(tmp_path / "guided.pt"))
    assert m2.refiner.cfg.silent_guidance == 2.0
    off = generate(m2, None, "a cheerful face", seed=5, n_frames=40)
    assert np.abs(generate(model, None, "a cheerful face", seed=5, n_frames=40) - off).max() > 1e-3
    s = StreamSession(m2, StreamConfig(seed=5), style="a cheerful face")
    s.push_no_audio(48 * 640)
    np.testing.assert_allclose(np.stack([f.params for f in s.poll()])[:40], off, atol=1e-4)
    audio = _noise(1.0, 4)

    def run(sessions):
        for x in sessions:
            x.push_audio(audio)
            x.push_no_audio(16000)
        out = [[] for _ in sessions]
        while any(x.hop_ready() for x in sessions):
            ready = [x for x in sessions if x.hop_ready()]
            for x, f in zip(ready, step_sessions(ready)):
                out[sessions.index(x)] += f
        return [np.stack([f.params for f in o]) for o in out]

    styles = ["a cheerful face", ""]
    both = run([StreamSession(m2, StreamConfig(seed=i), style=txt) for i, txt in enumerate(styles)])
    for i, txt in enumerate(styles):
        np.testing.assert_allclose(both[i], run([StreamSession(m2, StreamConfig(seed=i), style=txt)])[0], atol=1e-5)



def test_batched_sampling_equals_generate():
    """The trainer samples stage 2 for many clips at once; each clip gets the tokens generate() gives it alone."""
    from mm2face.training.eval_cli import clip_caption
    from mm2face.training.train_refiner import sample_inputs
    m = MM2Face.random(seed=2).eval()
    rng = np.random.default_rng(1)
    clips = [SimpleClip(id=f"c{i}", motion=np.zeros((T, 56), np.float32), captions={"action": cap},
                        audio_16k=None if i == 1 else (rng.standard_normal(T * 640) * 0.1).astype(np.float32))
             for i, (T, cap) in enumerate(((30, "talks"), (47, "smiles"), (12, "nods and talks")))]
    items = sample_inputs(m, clips, seed=5, progress=False, batch=3)
    for i, (c, it) in enumerate(zip(clips, items)):
        _, toks = generate(m, c.audio_16k, clip_caption(c), seed=5 + i, n_frames=len(c.motion), return_tokens=True,
                           blinks=False, parse_styles=False)
        assert torch.equal(it["frames"], m.vq.decode(torch.tensor(toks)[None])[0]), f"clip {i}"
        assert it["audio"] == (c.audio_16k is not None)


def test_new_dims_get_the_data_std():
    """A unit added after stages 1-2 (mean 0, std at the floor) gets the training data's std; others keep theirs."""
    from mm2face.training.train_refiner import widen_new_dims
    m = MM2Face.random(seed=3)
    m.set_norm(np.zeros(56), np.full(56, 0.5))
    m.std[28] = 0.01                                          # never moved in stages 1-2's data
    m.std[29] = 0.01
    rng = np.random.default_rng(0)
    motion = rng.normal(0, 0.3, (200, 56)).astype(np.float32)
    motion[:, 29] = 0.0                                       # still never moves
    new = widen_new_dims(m, [SimpleClip(id="a", motion=motion, audio_16k=None, captions={})])
    assert list(new) == [28] and new[28] == pytest.approx(0.3, rel=0.15)
    assert float(m.std[28]) == pytest.approx(new[28]) and float(m.std[29]) == pytest.approx(0.01) and float(m.std[0]) == 0.5
