"""MM2Face building blocks: KV cache exactness, streaming VQ decode, checkpoints, audio windows."""
import numpy as np
import pytest
import torch

from mm2face.engine.gpt import GPTConfig, MotionGPT
from mm2face.engine.model import MM2Face, load_model
from mm2face.engine.vqvae import VQConfig, VQVAE


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_kv_cache_incremental_equals_full_forward_beyond_window():
    torch.manual_seed(0)
    g = MotionGPT(GPTConfig(n_codes=32, d_model=32, n_layer=2, n_head=2, ctx_tokens=8, d_text=16)).eval()
    T = 21                                         # longer than the 8-token window: the cache slides
    prev = torch.randint(0, 33, (2, T))
    audio = torch.randn(2, T, 32)
    text = torch.randn(2, T, 16)                   # style may change at every token
    full = g(prev, audio, text)
    cache = g.new_cache()
    steps = [g(prev[:, t:t + 1], audio[:, t:t + 1], text[:, t:t + 1], cache) for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 7 and cache.t == T
    # a prefill of several tokens then single steps gives the same
    c2 = g.new_cache()
    a = g(prev[:, :5], audio[:, :5], text[:, :5], c2)
    b = g(prev[:, 5:6], audio[:, 5:6], text[:, 5:6], c2)
    torch.testing.assert_close(torch.cat([a, b], 1), full[:, :6], atol=1e-5, rtol=1e-5)


def test_inference_memos_match_the_plain_path_and_follow_weight_changes():
    """Eager inference reuses the ALiBi bias and the style modulation; results equal the grad-mode path
    (no memo) and change as soon as the weights do."""
    torch.manual_seed(0)
    g = MotionGPT(GPTConfig(n_codes=32, d_model=32, n_layer=2, n_head=2, ctx_tokens=8, d_text=16)).eval()
    for b in g.blocks:                                 # non-zero style modulation
        torch.nn.init.normal_(b.ada.weight, std=0.2)
    T = 12
    prev, audio, text = torch.randint(0, 33, (2, T)), torch.randn(2, T, 32), torch.randn(2, 16)
    full = g(prev, audio, text)                        # grad enabled: memos off
    with torch.no_grad():
        cache = g.new_cache()
        steps = torch.cat([g(prev[:, t:t + 1], audio[:, t:t + 1], text, cache) for t in range(T)], 1)
        torch.testing.assert_close(steps, full.detach(), atol=1e-5, rtol=1e-5)
        assert g.__dict__["_bias_memo"] and g.__dict__["_mod_memo"]
        again = g(prev[:, :1], audio[:, :1], text)
        g.blocks[0].ada.weight.add_(0.5)               # in place, as an optimiser step would
        changed = g(prev[:, :1], audio[:, :1], text)
    torch.testing.assert_close(changed, g(prev[:, :1], audio[:, :1], text).detach())
    assert (changed - again).abs().max() > 1e-6        # logits are small at init (std 0.02 head)


def test_vq_decoder_is_causal_and_streams():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(width=32, depth=2, n_codes=16, code_dim=8)).eval()
    codes = torch.randint(0, 16, (1, 30))
    full = vq.decode(codes)
    assert full.shape == (1, 60, 56)
    # changing future tokens never changes past frames
    c2 = codes.clone()
    c2[0, 20:] = (c2[0, 20:] + 1) % 16
    torch.testing.assert_close(vq.decode(c2)[:, :40], full[:, :40])
    # one token at a time with a bounded history
    inc = torch.cat([vq.decode_last(codes[:, :k + 1]) for k in range(30)], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    m = MM2Face.random(seed=0)
    m.set_norm(np.linspace(-1, 1, 56), np.full(56, 0.5))
    m.info.head = "standin"
    p = m.save(tmp_path / "m.pt", note="unit test")
    m2 = MM2Face.load(p)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert m2.info.meta["note"] == "unit test" and m2.head_name == "standin"
    assert m2.down == 2 and abs(m2.algorithmic_latency_s - 0.12) < 1e-9
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_audio_windows_offline_equal_crop_context():
    """Token audio vectors from a crop with its past context equal those of the whole clip."""
    m = MM2Face.random(seed=0)
    enc = m.audio
    audio = torch.randn(1, 16000 * 2) * 0.1
    with torch.no_grad():
        full = enc.clip_tokens(audio, 20)
        s, L = 7, 6
        a0 = s * m.samples_per_token - enc.context_samples
        ctx = audio[:, a0:a0 + enc.context_len(L)]
        crop = enc.tokens_from_context(ctx, L)
    torch.testing.assert_close(crop, full[:, s:s + L], atol=1e-5, rtol=1e-4)
    # the lookahead is bounded: audio more than lookahead after a token does not change it
    a2 = audio.clone()
    cut = (5 + 1) * m.samples_per_token + m.lookahead_samples
    a2[:, cut:] = torch.randn_like(a2[:, cut:])
    with torch.no_grad():
        f2 = enc.clip_tokens(a2, 20)
    torch.testing.assert_close(f2[:, :6], full[:, :6], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(f2[:, 6], full[:, 6])


def test_pretrained_audio_encoder_folder_loads_frozen_and_round_trips(tmp_path):
    """--audio-encoder DIR: a local Wav2Vec2 folder (here a tiny random one) is loaded with its CNN frozen,
    and the checkpoint rebuilds it from the stored config alone."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from mm2face.engine.audio_encoder import AudioConfig
    from mm2face.engine.gpt import GPTConfig
    from mm2face.engine.vqvae import VQConfig
    w = Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
                                     num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4))
    w.save_pretrained(tmp_path / "w2v")
    m = MM2Face(VQConfig(width=32, depth=1, n_codes=16, code_dim=8), GPTConfig(d_model=32, n_layer=1, n_head=2),
                AudioConfig(pretrained_dir=str(tmp_path / "w2v"), window_feats=8))
    assert not any(p.requires_grad for p in m.audio.w2v.feature_extractor.parameters())
    assert any(p.requires_grad for p in m.audio.w2v.encoder.parameters())
    torch.testing.assert_close(m.audio.w2v.encoder.layers[0].attention.q_proj.weight,
                               w.encoder.layers[0].attention.q_proj.weight)
    p = m.save(tmp_path / "m.pt")
    (tmp_path / "w2v" / "model.safetensors").unlink()          # the checkpoint alone must suffice
    m2 = MM2Face.load(p)
    x = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(m2.audio.clip_tokens(x, 5), m.eval().audio.clip_tokens(x, 5))


def test_text_encoder_returns_every_text_when_one_call_overflows_its_memo():
    # training embeds >10k captions in one call; the memo used to be cleared mid-call (KeyError)
    from mm2face.engine.text_encoder import TextEncoder
    te = TextEncoder("")
    texts = [f"A person nods {i} times." for i in range(7)]
    ref = np.stack([te.encode_one(t) for t in texts])
    te._cache.clear()
    te.cache_max = 3
    got = te.encode(texts + texts[:2], batch=2)
    assert got.shape == (9, te.dim)
    np.testing.assert_allclose(got[:7], ref, atol=1e-5)
    np.testing.assert_allclose(got[7:], ref[:2], atol=1e-5)
