"""Trainers on tiny configs and tiny in-memory data: loss falls, checkpoints round-trip, resume, DDP."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2face.engine.model import MM2Face
from mm2face.training.dataset import SimpleClip
from mm2face.training.train_mm2face import GPTTrainConfig, train_mm2face
from mm2face.training.train_vqvae import VQTrainConfig, train_vqvae

TINY_VQ = {"width": 32, "depth": 1, "n_codes": 32, "code_dim": 16, "dead_after": 20}
TINY_GPT = {"d_model": 48, "n_layer": 2, "n_head": 2, "ctx_tokens": 16}
TINY_AUDIO = {"window_feats": 8, "hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "conv_dim": 16}


def make_clips(n=6, seed=0, seconds=3.0):
    """Speech-like bursts; the jaw follows the audio envelope; captions say happy or sad."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        T = int(25 * seconds)
        env = np.clip(np.sin(np.linspace(0, rng.uniform(6, 12), T)) + rng.normal(0, 0.1, T), 0, None)
        audio = (np.repeat(env, 640) * np.sin(np.arange(T * 640) * 0.05) * 0.3).astype(np.float32)
        m = np.zeros((T, 56), np.float32)
        m[:, 53] = 0.3 * env
        happy = i % 2 == 0
        m[:, 9] = m[:, 10] = 0.8 if happy else 0.0
        m[:, 12] = 0.0 if happy else 0.8
        m[:, 51] = 0.1 * np.sin(np.linspace(0, 3, T))
        caps = {"emotion": "happy and smiling" if happy else "sad and frowning", "action": "talks"}
        clips.append(SimpleClip(id=f"c{i}", motion=m, audio_16k=audio if i < n - 1 else None, captions=caps,
                                subset="talking" if i < n - 1 else "t2m"))
    return clips


def _losses(out: Path, key="loss"):
    return [json.loads(l)[key] for l in (out / "log.jsonl").read_text().splitlines() if key in json.loads(l)]


@pytest.fixture(scope="module")
def vq_path(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("vq")
    cfg = VQTrainConfig(out=str(out), steps=60, batch=8, window=32, lr=2e-3, val_every=30, save_every=30,
                        vq=TINY_VQ)
    return train_vqvae(cfg, make_clips(), make_clips(2, seed=1), progress=False)


def test_vqvae_loss_falls_and_round_trips(vq_path):
    out = vq_path.parent
    losses = _losses(out)
    assert losses[-1] < 0.7 * losses[0]
    m = MM2Face.load(vq_path)
    assert m.info.stage == "vqvae" and m.vq.cfg.n_codes == 32
    assert abs(float(m.mean[53]) - np.mean([c.motion[:, 53].mean() for c in make_clips()])) < 0.05
    st = torch.load(out / "last.pt", weights_only=False)
    assert st["step"] == 60 and MM2Face.from_checkpoint_dict(st["model"]).vq.cfg.width == 32


def test_mm2face_loss_falls_resume_and_generate(vq_path, tmp_path):
    torch.set_num_threads(2)
    out = tmp_path / "g"
    kw = dict(out=str(out), vq=str(vq_path), batch=4, n_tokens=16, lr=2e-3, val_every=20, save_every=20,
              gpt=TINY_GPT, audio=TINY_AUDIO, hist_drop=0.25)
    train_mm2face(GPTTrainConfig(steps=40, **kw), make_clips(), make_clips(2, seed=1), progress=False)
    l1 = _losses(out)
    p = train_mm2face(GPTTrainConfig(steps=60, resume=True, **kw), make_clips(), make_clips(2, seed=1),
                      progress=False)
    losses = _losses(out)
    assert len(losses) > len(l1)
    assert losses[-1] < 0.8 * losses[0]
    m = MM2Face.load(p)
    assert m.info.step == 60 and m.info.stage == "mm2face"
    from mm2face.engine.generate import generate
    motion = generate(m, make_clips()[0].audio_16k, "happy and smiling", seed=0)
    assert motion.shape == (75, 56) and np.isfinite(motion).all()
    st = torch.load(out / "last.pt", weights_only=False)      # the auxiliary heads resume too
    assert set(st["aux"]) == {"audio.weight", "audio.bias", "hidden.weight", "hidden.bias",
                              "text.weight", "text.bias"}


def test_aux_regressions_add_to_the_loss_and_train_the_audio_path(vq_path):
    """The auxiliary frame regressions are part of the loss, reach the audio encoder, and vanish at weight 0."""
    from mm2face.training.dataset import TokenCrops, clip_texts
    from mm2face.training.train_mm2face import _Stage2, _collate, build_model, tokenize_clips
    torch.manual_seed(0)
    model = build_model(GPTTrainConfig(vq=str(vq_path), gpt=TINY_GPT, audio=TINY_AUDIO)).eval()   # no dropout:
    clips = make_clips()                                # the two passes below differ only by the aux terms
    mean, std = model.mean.numpy(), model.std.numpy()
    texts = sorted({t for c in clips for t in clip_texts(c)})
    ds = TokenCrops(clips, tokenize_clips(model, clips), model.audio, model.down, model.gpt.bos, n_tokens=16,
                    texts=texts, motions=[(c.motion - mean) / std for c in clips])
    b = _collate([ds[i] for i in range(3)])
    assert b["motion"].shape == (3, 16 * model.down, 56)
    te = torch.randn(3, model.gpt.cfg.d_text)
    args = (b["prev"], b["target"], b["audio"], b["has_audio"], te, torch.ones(3, dtype=torch.bool), b["motion"])
    plain = _Stage2(model)
    assert len(plain.aux) == 0
    base = plain(*args)[0]
    full = _Stage2(model, 1.0, 0.5, 1.0)
    loss = full(*args)[0]
    assert loss > base + 1e-3                           # the MSE terms are positive at init
    w_audio = full.aux["audio"].weight
    (full(*args)[0] - plain(*args)[0]).backward()       # only the aux terms
    assert w_audio.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.audio.parameters())


def test_ddp_two_cpu_processes(vq_path, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_train_tiny import make_clips, TINY_VQ, TINY_GPT, TINY_AUDIO
        from mm2face.training.train_vqvae import VQTrainConfig, train_vqvae
        from mm2face.training.train_mm2face import GPTTrainConfig, train_mm2face
        train_vqvae(VQTrainConfig(out={str(tmp_path / 'vq')!r}, steps=6, batch=4, window=32, vq=TINY_VQ,
                                  val_every=3, save_every=3), make_clips(4), [], progress=False)
        train_mm2face(GPTTrainConfig(out={str(tmp_path / 'g')!r}, vq={str(vq_path)!r}, steps=4, batch=2,
                                     n_tokens=8, gpt=TINY_GPT, audio=TINY_AUDIO, val_every=2, save_every=2),
                      make_clips(4), [], progress=False)
        """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    import socket
    with socket.socket() as sk:                 # a free port, so parallel runs do not collide
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    # torchrun in its own process group, so that a hang or a failure cannot leave its workers behind
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(port), str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert MM2Face.load(tmp_path / "vq" / "model.pt").info.meta["vq_steps"] == 6
    assert MM2Face.load(tmp_path / "g" / "model.pt").info.step == 4


def test_init_from_a_file_without_the_text_input_path(vq_path, tmp_path):
    """A checkpoint written before ``text_input`` existed loads (as text_input=False) and can start a
    fine-tune that adds the path: zero-initialised, so the start behaves exactly like the file."""
    from mm2face.engine.gpt import GPTConfig
    from mm2face.training.train_mm2face import build_model
    torch.manual_seed(0)
    old = build_model(GPTTrainConfig(vq=str(vq_path), gpt={**TINY_GPT, "text_input": False, "word_bag": 0},
                                     audio=TINY_AUDIO))
    assert old.gpt.text_in is None and old.gpt.words is None
    path = old.save(tmp_path / "old.pt")
    ck = torch.load(path, weights_only=False)
    ck["configs"]["gpt"].pop("text_input")                 # as written by the older code
    ck["configs"]["gpt"].pop("word_bag")
    torch.save(ck, path)
    loaded = MM2Face.load(path)
    assert loaded.gpt.cfg.text_input is False and loaded.gpt.cfg.word_bag == 0
    new = build_model(GPTTrainConfig(vq=str(vq_path), init=str(path), gpt={"text_input": True, "word_bag": 16}))
    assert new.gpt.text_in is not None and new.gpt.words is not None and isinstance(new.gpt.cfg, GPTConfig)
    prev, audio, text = torch.randint(0, 32, (2, 10)), torch.randn(2, 10, 48), torch.randn(2, 384)
    with torch.no_grad():
        torch.testing.assert_close(new.gpt.eval()(prev, audio, text), loaded.gpt(prev, audio, text))
        cap = "The person turns the head to the left."
        torch.testing.assert_close(new.text_embed(cap), loaded.text_embed(cap))   # the bag starts silent


def test_word_bag_tells_left_from_right():
    """The learned word bag separates captions a mean-pooled sentence embedding barely does."""
    from mm2face.engine.gpt import GPTConfig, MotionGPT
    from mm2face.engine.model import MM2Face as M
    enc = M.random(seed=0, small=True).text_encoder
    caps = ["The person turns the head to the left.", "The person turns the head to the right."]
    sent = torch.from_numpy(enc.encode(caps))
    assert float(sent[0] @ sent[1]) > 0.95                 # MiniLM: nearly the same vector
    torch.manual_seed(0)
    g = MotionGPT(GPTConfig(n_codes=8, d_model=16, n_layer=1, n_head=2, word_bag=8, vocab=enc.vocab_size))
    ids = torch.from_numpy(enc.word_ids(caps, max_words=16))
    assert (ids[:, -1] == -1).all() and (ids[0] != ids[1]).any()
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    target = torch.tensor([1.0, -1.0])                     # e.g. the sign of the head's ry
    for _ in range(60):
        v = g.text_vector(sent, ids)
        loss = ((v[:, :1].squeeze(1) * 10 - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    v = g.text_vector(sent, ids)[:, 0].detach()
    assert v[0] > 0 > v[1]
