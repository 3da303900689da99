"""The state the batch owns (engine/batch_state.py): the KV ring is exact beyond its window, rows are
allocated, reused and grown as sessions join and leave, and a row's outputs depend on nothing in the
other rows."""
import numpy as np
import pytest
import torch

from mm2face.engine.batch_state import BatchState, KVRing
from mm2face.engine.batching import SessionBatcher
from mm2face.engine.gpt import GPTConfig, MotionGPT
from mm2face.engine.model import MM2Face
from mm2face.engine.runners import GStep, step_modulation
from mm2face.engine.session import StreamConfig, StreamSession, step_sessions


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    m = MM2Face.random(seed=0, small=True)
    with torch.no_grad():                  # attention that matters and sharp token distributions: a wrong
        m.gpt.head.weight.mul_(20.0)       # cache changes the tokens drawn
        for b in m.gpt.blocks:
            b.attn.out.weight.mul_(50.0)
    return m


def audio(seconds, seed=0):
    return (np.random.default_rng(seed).normal(size=int(16000 * seconds)) * 0.1).astype(np.float32)


def solo(model, a, seed, style=""):
    s = StreamSession(model, StreamConfig(seed=seed), style=style)
    s.push_audio(a)
    return np.stack([f.params for f in s.poll()])


def params(frames):
    return np.stack([f.params for f in frames])


def test_ring_steps_equal_a_full_forward_beyond_the_window_for_rows_at_different_positions():
    """Two streams in one ring, the second starting 5 tokens later and skipping a step: each row's
    logits equal a full forward pass of its own sequence (sliding window included)."""
    torch.manual_seed(0)
    g = MotionGPT(GPTConfig(n_codes=32, d_model=32, n_layer=2, n_head=2, ctx_tokens=8, d_text=16)).eval()
    for b in g.blocks:                                     # a style that matters
        torch.nn.init.normal_(b.ada.weight, std=0.2)
    T = 21                                                 # longer than the 8-token window: the ring wraps
    prev, aud, text = torch.randint(0, 33, (2, T)), torch.randn(2, T, 32), torch.randn(2, T, 16)
    full = g(prev, aud, text)
    step, kv = GStep(g), KVRing(g.cfg, 3, "cpu")           # row 2 stays empty: not read by the others
    kv.k[0][2] += 1e3                                       # garbage in a row nobody steps
    got = [[], []]
    t_of = [0, 0]
    with torch.no_grad():
        for t in range(T + 6):
            rows = [r for r in (0, 1) if t_of[r] < T and not (r == 1 and (t < 5 or t == 9))]
            if not rows:
                continue
            ts = [t_of[r] for r in rows]
            mods, tx = step_modulation(g, torch.stack([text[r, i] for r, i in zip(rows, ts)]))
            ks, vs = kv.gather(rows)
            out = step(torch.stack([prev[r, i:i + 1] for r, i in zip(rows, ts)]),
                       torch.stack([aud[r, i:i + 1] for r, i in zip(rows, ts)]), tx, kv.bias(rows), *mods, *ks, *vs)
            kv.write(rows, list(out[1:3]), list(out[3:5]))
            for j, r in enumerate(rows):
                got[r].append(out[0][j])
                t_of[r] += 1
    for r in (0, 1):
        torch.testing.assert_close(torch.stack(got[r]), full[r], atol=1e-5, rtol=1e-5)
    assert kv.t == [T, T, 0]


def test_rows_are_allocated_reused_and_grown(model):
    """Sessions join the batcher's state at their first hop; a removed session's row is freed at the next
    round and the next session reuses it; capacity doubles when full; a removed session still works alone
    and its frames continue exactly as if it had never been in the batch."""
    b = SessionBatcher(model)
    st = b.state
    keys = [b.add(StreamSession(model, StreamConfig(seed=i))) for i in range(3)]
    for i, k in enumerate(keys):
        b.push_audio(k, audio(0.6, seed=i))
    b.run_until_idle()
    assert st.capacity == 4 and sorted(s.row for s in st.sessions()) == [0, 1, 2]
    first = b.drain(keys[1])
    gone = b.remove(keys[1])
    gone_row = gone.row
    k4 = b.add(StreamSession(model, StreamConfig(seed=9)))
    b.push_audio(k4, audio(0.9, seed=9))
    b.run_until_idle()
    assert b.session(k4).row == gone_row and st.capacity == 4          # the freed row, reused
    assert gone.batch_state is not st and gone.batch_state.capacity == 1
    np.testing.assert_allclose(params(b.drain(k4)), solo(model, audio(0.9, seed=9), 9), atol=1e-5)
    # the removed session goes on alone, exactly where it left off
    gone.push_audio(audio(0.5, seed=20))
    rest = gone.poll()
    ref = StreamSession(model, StreamConfig(seed=1))
    ref.push_audio(audio(0.6, seed=1))
    ref_frames = ref.poll()
    ref.push_audio(audio(0.5, seed=20))
    ref_frames += ref.poll()
    np.testing.assert_allclose(params(first + rest), params(ref_frames), atol=1e-5)
    more = [b.add(StreamSession(model, StreamConfig(seed=10 + i))) for i in range(3)]
    for k in more:
        b.push_audio(k, audio(0.3, seed=5))
    b.run_until_idle()
    assert st.capacity == 8 and len(st.sessions()) == 6


def test_capacity_shrinks_when_sessions_leave_and_survivors_keep_their_streams(model):
    """17 sessions grow the state to 32 rows; when 15 leave, it shrinks to 8 and the two left (moved to
    rows 0 and 1) go on exactly as alone."""
    b = SessionBatcher(model)
    keys = [b.add(StreamSession(model, StreamConfig(seed=i))) for i in range(17)]
    for i, k in enumerate(keys):
        b.push_audio(k, audio(0.4, seed=i))
    b.run_until_idle()
    assert b.state.capacity == 32
    keep = [keys[5], keys[16]]
    got = {k: b.drain(k) for k in keep}
    for k in keys:
        if k not in keep:
            b.remove(k)
    for k in keep:
        b.push_audio(k, audio(0.5, seed=50 + k))
    b.run_until_idle()
    assert b.state.capacity == 8 and sorted(b.session(k).row for k in keep) == [0, 1]
    for k in keep:
        ref = StreamSession(model, StreamConfig(seed=k))
        ref.push_audio(audio(0.4, seed=k))
        ref.push_audio(audio(0.5, seed=50 + k))
        np.testing.assert_allclose(params(got[k] + b.drain(k)), params(ref.poll()), atol=1e-5)


def test_a_rows_frames_do_not_depend_on_the_other_rows(model):
    """Stepping a session with garbage in every other row of its state, alone or in a batch whose other
    members are at other positions of their streams, gives the frames it gets in a state of its own."""
    ref = solo(model, audio(1.2, seed=3), 3, style="calm")
    st = BatchState(model, capacity=4)
    others = [StreamSession(model, StreamConfig(seed=i)) for i in range(3)]
    s = StreamSession(model, StreamConfig(seed=3), style="calm")
    for o in others:
        st.join(o)
    st.join(s)
    for o in others[:2]:                                  # two other streams, started earlier
        o.push_audio(audio(2.0, seed=40))
        for _ in range(7):
            step_sessions([o], st)
    for x in (st.kv.k + st.kv.v):                         # garbage in every row but s's
        x[[r for r in range(x.shape[0]) if r // 2 != s.row]] = 1e4
    st.feats[[r for r in range(st.capacity) if r != s.row]] = -1e4
    s.push_audio(audio(1.2, seed=3))
    got, n = [], 0
    while s.hop_ready():
        batch = [s] + ([others[n % 2]] if n % 3 else [])     # alone, or with another row, in turns
        out = step_sessions(batch, st)
        got += out[0]
        n += 1
    np.testing.assert_allclose(params(got), ref, atol=1e-5)


def test_a_session_that_moves_between_states_keeps_its_stream(model):
    """Join a batcher mid-stream, leave it, join another: the frames equal one session polled alone."""
    a = audio(1.5, seed=7)
    ref = solo(model, a, 7)
    s = StreamSession(model, StreamConfig(seed=7))
    s.push_audio(a[:8000])
    got = s.poll()
    for part in (a[8000:16000], a[16000:]):
        b = SessionBatcher(model)
        k = b.add(s)
        b.push_audio(k, part)
        b.run_until_idle()
        got += b.drain(k)
        b.remove(k)
    np.testing.assert_allclose(params(got), ref, atol=1e-5)
