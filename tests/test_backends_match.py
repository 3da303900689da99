"""Every backend that runs on CPU gives eager's outputs within its documented tolerance."""
import numpy as np
import pytest
import torch

from mm2face.engine.backends import TOLERANCE, BackendUnavailable, apply_backend, backend_status, bucket
from mm2face.engine.batch_state import KVRing
from mm2face.engine.batching import SessionBatcher
from mm2face.engine.model import MM2Face
from mm2face.engine.runners import EagerRunner, Runner, StaticRunner, runner_for
from mm2face.engine.session import StreamConfig, StreamSession


def audio(seconds, seed=0):
    return (np.random.default_rng(seed).normal(size=int(16000 * seconds)) * 0.1).astype(np.float32)


def parts(model, n_rows=3, seed=0):
    """Outputs of the model's runner's three parts on fixed random inputs, with a half-full KV ring."""
    g = torch.Generator().manual_seed(seed)
    c = model.gpt.cfg
    runner = runner_for(model)
    B = n_rows
    kv = KVRing(c, 2 * B, "cpu")
    text = torch.randn(B, c.d_text, generator=g)
    for t in range(5):               # fill 5 tokens of cache through the runner's own step
        logits = runner.g_logits(torch.randint(0, c.n_codes, (B,), generator=g),
                                 torch.randn(B, c.d_model, generator=g), text, kv, [0, 2, 4], 2.0)
    wins = torch.randn(B, model.audio.cfg.window_feats, model.audio.cnn_channels, generator=g)
    codes = torch.randint(0, c.n_codes, (B, model.vq.receptive_tokens + 2), generator=g)
    with torch.no_grad():
        return logits, runner.encode_audio(wins), runner.decode(codes)


def stream(model, seconds=1.5):
    s = StreamSession(model, StreamConfig(temperature=0.0))
    s.push_audio(audio(seconds))
    return np.stack([f.params for f in s.poll()])


@pytest.fixture(scope="module")
def ref():
    torch.set_num_threads(1)
    m = MM2Face.random(seed=0, small=True)
    return parts(m), stream(m)


@pytest.mark.parametrize("name,opts", [("static", {}), ("onnx", {}), ("compile", {"compiler": "aot_eager"})])
def test_backend_matches_eager(ref, name, opts, tmp_path):
    (lg, av, fr), frames = ref
    m = apply_backend(MM2Face.random(seed=0, small=True), name, "cpu", **opts)
    # exporting through a wrapper module once left the model in training mode (dropout in every eager
    # fallback and in the benchmarks' eager comparisons)
    assert not [n for n, mod in m.named_modules() if mod.training]
    # the backend is an explicit runner; nothing of the model is replaced, and guidance is combined by
    # the one shared Runner.g_logits
    assert m.runner.name == name and isinstance(m.runner, StaticRunner)
    assert not {"g_logits", "forward"} & set(vars(m)) and "encode_windows" not in vars(m.audio)
    assert type(m.runner).g_logits is Runner.g_logits
    lg2, av2, fr2 = parts(m)
    tol_logits, tol_frames = TOLERANCE[name] if name != "compile" else TOLERANCE["static"]
    assert (lg2 - lg).abs().max() <= max(tol_logits, 1e-5)
    assert (av2 - av).abs().max() <= 1e-4
    assert (fr2 - fr).abs().max() <= max(tol_frames, 1e-6)
    out = stream(m)                  # greedy decoding: the same tokens, so the same frames
    assert out.shape == frames.shape
    np.testing.assert_allclose(out, frames, atol=1e-4)


def test_int8_stays_close_and_is_a_copy(ref):
    (lg, _, fr), frames = ref
    base = MM2Face.random(seed=0, small=True)
    q = apply_backend(base, "int8")
    assert q is not base and type(base.gpt.head) is torch.nn.Linear      # the original is untouched
    assert isinstance(q.runner, EagerRunner) and q.runner.model is q
    lg2, _, fr2 = parts(q)
    assert (lg2 - lg).abs().max() <= TOLERANCE["int8"][0]
    assert np.isfinite(stream(q)).all()


@pytest.mark.parametrize("name", ["static", "onnx"])
def test_backend_under_the_batcher_matches_solo_eager(name):
    """Batches of changing size and style mix (ONNX: the one-stream static graph and the shared batch
    graph, and the runner's style cache) give each session the frames it gets alone in eager."""
    m = apply_backend(MM2Face.random(seed=0, small=True), name)
    b = SessionBatcher(m)
    keys = [b.add(StreamSession(m, StreamConfig(temperature=0.0, seed=i), style="calm" if i else ""))
            for i in range(3)]
    for i, k in enumerate(keys):
        b.push_audio(k, audio(0.6 + 0.3 * i, seed=i))
    b.run_until_idle()
    assert max(b.stats["batch_sizes"]) == 3
    eager = MM2Face.random(seed=0, small=True)
    for i, k in enumerate(keys):
        got = np.stack([f.params for f in b.drain(k)])
        s = StreamSession(eager, StreamConfig(temperature=0.0, seed=i), style="calm" if i else "")
        s.push_audio(audio(0.6 + 0.3 * i, seed=i))
        np.testing.assert_allclose(got, np.stack([f.params for f in s.poll()]), atol=1e-4)


def test_unavailable_backends_say_what_to_do():
    with pytest.raises(BackendUnavailable, match="CUDA"):
        apply_backend(MM2Face.random(seed=0, small=True), "tensorrt", "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        apply_backend(MM2Face.random(seed=0, small=True), "magic")
    st = backend_status("cpu")
    assert st["eager"] == "ok" and st["tensorrt"] != "ok"
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]


@pytest.mark.parametrize("name,opts", [("eager", {}), ("static", {}), ("onnx", {}),
                                       ("compile", {"compiler": "aot_eager"})])
def test_streaming_equals_offline_on_every_cpu_backend(name, opts):
    """With sampling on, a stream fed in 700-sample chunks gives generate()'s frames on the same backend:
    both run the model's runner (audio encoder and G step on the same KV ring). Not int8: dynamic
    quantisation scales each call's activations by that call's range, so a window encoded alone and the
    same window in a clip's batch differ (up to 0.3 in frames), by design of that backend."""
    from mm2face.engine.generate import generate
    base = MM2Face.random(seed=0, small=True)
    with torch.no_grad():                  # sharp token distributions: any drift changes the tokens drawn
        base.gpt.head.weight.mul_(20.0)
    m = apply_backend(base, name, "cpu", **opts)
    a = audio(1.6, seed=4)
    s = StreamSession(m, StreamConfig(seed=4), style="calm")
    frames = []
    for i in range(0, len(a), 700):
        s.push_audio(a[i:i + 700])
        frames += s.poll()
    off = generate(m, a, "calm", seed=4)
    got = np.stack([f.params for f in frames])
    np.testing.assert_allclose(got, off[:len(got)], atol=1e-4)


@pytest.mark.parametrize("name,shapes", [("static", {2, 4, 8}), ("onnx", {2, 4, 6})])
def test_static_shapes_come_from_the_batch_state(name, shapes):
    """Three sessions (6 G rows): the static runner runs a bucket of 8 rows whose caches are the state's
    rows 0-7 read in place (no padded copies); ONNX's dynamic-batch graph runs the 6 rows as they are."""
    m = apply_backend(MM2Face.random(seed=0, small=True), name)
    b = SessionBatcher(m)
    seen, in_place = set(), []
    run = m.runner.g_rows

    def g_rows(prev, audio_, text_x, bias, mods, ks, vs):
        seen.add(prev.shape[0])
        in_place.append(ks[0].untyped_storage().data_ptr() == b.state.kv.k[0].untyped_storage().data_ptr())
        return run(prev, audio_, text_x, bias, mods, ks, vs)

    m.runner.g_rows = g_rows             # the test's probe on this one runner object
    keys = [b.add(StreamSession(m, StreamConfig(seed=i))) for i in range(3)]
    for i, k in enumerate(keys):
        b.push_audio(k, audio(0.6 + 0.3 * i, seed=i))
    b.run_until_idle()
    assert seen == shapes
    assert in_place and all(in_place)   # every step read the ring's rows where they are
