"""Cross-session batching: same frames as solo sessions, ready-only batches, isolation of bad sessions."""
import math
import threading
import time

import numpy as np
import pytest
import torch

from mm2face.engine.batching import SessionBatcher
from mm2face.engine.model import MM2Face
from mm2face.engine.session import StreamConfig, StreamSession


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return MM2Face.random(seed=0, small=True)


def audio(seconds, seed):
    return (np.random.default_rng(seed).normal(size=int(16000 * seconds)) * 0.1).astype(np.float32)


def solo_frames(model, a, seed):
    s = StreamSession(model, StreamConfig(seed=seed, temperature=0.0))
    s.push_audio(a)
    return np.stack([f.params for f in s.poll()])


def test_batched_frames_match_solo_sessions(model):
    auds = [audio(1.2, 1), audio(2.0, 2), audio(0.7, 3)]
    b = SessionBatcher(model)
    keys = [b.add(StreamSession(model, StreamConfig(seed=i, temperature=0.0))) for i in range(3)]
    got = {k: [] for k in keys}
    pos = [0, 0, 0]
    # sessions start at different times and push different chunk sizes
    for step in range(80):
        for i, k in enumerate(keys):
            if i == 2 and step < 10:
                continue                      # the third session joins late
            n = 320 * (i + 1)
            if pos[i] < len(auds[i]):
                b.push_audio(k, auds[i][pos[i]:pos[i] + n])
                pos[i] += n
        b.step()
        for k in keys:
            got[k] += b.drain(k)
    b.run_until_idle()
    for i, k in enumerate(keys):
        got[k] += b.drain(k)
        ref = solo_frames(model, auds[i], i)
        out = np.stack([f.params for f in got[k]])
        assert [f.seq for f in got[k]] == list(range(len(ref)))
        np.testing.assert_allclose(out, ref, atol=1e-4)
    assert max(b.stats["batch_sizes"]) >= 2          # some rounds really were batched


def test_only_ready_sessions_are_batched_and_bursts_get_one_hop_per_round(model):
    b = SessionBatcher(model)
    busy, idle, burst = (b.add(StreamSession(model)) for _ in range(3))
    one_hop = model.samples_per_token + model.lookahead_samples
    b.push_audio(busy, audio(one_hop / 16000, 0))
    b.push_audio(burst, audio(3.0, 1))                # ~37 hops of backlog
    assert b.step() == 2                              # idle is not in the batch, burst runs one hop only
    assert len(b.drain(busy)) == model.down and len(b.drain(burst)) == model.down
    assert b.drain(idle) == []
    assert b.stats["batch_sizes"] == {2: 1}
    b.push_audio(busy, audio(model.samples_per_token / 16000, 2))
    assert b.step() == 2                              # busy's next hop and burst's next one, together
    assert b.step() == 1                              # then burst alone


def test_failing_consumer_removes_only_its_session(model):
    delivered, errors = {}, {}

    def on_frames(key, frames):
        if key == "bad":
            raise RuntimeError("client went away")
        delivered.setdefault(key, []).extend(frames)

    b = SessionBatcher(model, on_frames=on_frames, on_error=lambda k, e: errors.setdefault(k, e))
    for k in ("good", "bad"):
        b.add(StreamSession(model), key=k)
        b.push_audio(k, audio(0.5, 3))
    b.run_until_idle()
    assert "bad" in errors and "bad" not in b.keys()
    assert len(delivered["good"]) == len(solo_frames(model, audio(0.5, 3), 0))


def test_worker_thread_frames_carry_the_sessions_own_timing(model):
    """Each frame carries the arrival time its own audio was pushed with and the arrival of the last
    sample it read (the session records them); the worker delivers after both."""
    frames, received = [], []

    def on_frames(k, fs):
        frames.extend(fs)
        received.extend([time.time()] * len(fs))

    b = SessionBatcher(model, on_frames=on_frames)
    k = b.add(StreamSession(model))
    a = audio(1.0, 4)
    caught_up = threading.Event()
    with b:
        t0 = time.time() - 10.0                                              # made-up arrivals, in the past
        for j, i in enumerate(range(0, len(a), 640)):
            b.push_audio(k, a[i:i + 640], arrival_time=t0 + 0.04 * j)   # one chunk per frame
        b.end(k)
        b.when_caught_up(k, lambda exc: caught_up.set())
        assert caught_up.wait(30)
    assert [f.seq for f in frames] == list(range(len(frames))) and frames[-1].final
    talk = [f for f in frames if f.seq < 25]
    assert len(talk) == 25
    for f in talk:
        assert f.audio_arrival_time == pytest.approx(t0 + 0.04 * f.seq)       # its own chunk
        need = model.samples_per_token * (f.seq // model.down + 1) + model.lookahead_samples
        assert f.input_ready_time == pytest.approx(t0 + 0.04 * ((need - 1) // 640))
    for f, r in zip(frames, received):
        assert f.input_ready_time <= r
    tail = [f for f in frames if f.seq >= 25]
    assert tail and all(math.isnan(f.audio_arrival_time) for f in tail)      # end() padding: no audio


def test_batched_hops_equal_each_session_alone_with_sampling_and_end(model):
    """A session's frames do not depend on who shares its batch: one batched step_sessions call over
    four sessions (different lengths, text-only stretches, end and restart) gives each the frames it
    gets when stepped alone."""
    from mm2face.engine.session import step_sessions

    def alone(ready):
        return [step_sessions([s])[0] for s in ready]

    def sessions():
        return [StreamSession(model, StreamConfig(seed=10 + i)) for i in range(4)]   # sampling, top-k

    auds = [audio(1.0 + 0.37 * i, 20 + i) for i in range(4)]
    outs = []
    for step_fn in (alone, step_sessions):
        ss = sessions()
        for s, a in zip(ss, auds):
            s.push_audio(a)
        ss[3].push_no_audio(16000)                    # a stretch of text-only motion
        frames = [[] for _ in ss]
        while True:
            ready = [s for s in ss if s.hop_ready()]
            if not ready:
                break
            for s, fr in zip(ready, step_fn(ready)):
                frames[ss.index(s)] += fr
        for i in (0, 2):                               # end two streams: padding, mouth closes
            frames[i] += ss[i].end()
            ss[i].push_audio(audio(0.5, 30 + i))       # ...then talk again: the mouth blends back
        while True:
            ready = [s for s in ss if s.hop_ready()]
            if not ready:
                break
            for s, fr in zip(ready, step_fn(ready)):
                frames[ss.index(s)] += fr
        assert len(frames[0]) > len(auds[0]) // 640 + 8
        outs.append(frames)
    for a, b in zip(*outs):
        assert [f.seq for f in a] == [f.seq for f in b]
        np.testing.assert_allclose(np.stack([f.params for f in a]), np.stack([f.params for f in b]), atol=1e-5)


def test_input_samples_is_the_sessions_count_plus_its_queue_while_the_worker_runs(model):
    """input_samples(key), read while the worker moves queued input into the session, always equals
    everything pushed so far (never a chunk twice or not at all), and its audio_only count the real audio;
    after end it is the session's own count, padding included. This is the one sample clock the server
    stamps its audio with."""
    b = SessionBatcher(model).start()
    try:
        s = StreamSession(model, StreamConfig(seed=0))
        key = b.add(s)
        a, pushed = audio(3.0, 7), 0
        for i in range(0, len(a), 320):                   # 20 ms chunks, audio and no-audio time
            b.push_audio(key, a[i:i + 320])
            b.push_no_audio(key, 160)
            pushed += len(a[i:i + 320]) + 160
            assert b.input_samples(key) == pushed
            assert b.input_samples(key, audio_only=True) == min(i + 320, len(a))
        done = threading.Event()
        b.end(key)
        b.when_caught_up(key, lambda exc: done.set())
        assert done.wait(60)
        assert b.input_samples(key) == s.n_in >= pushed   # end padded the last token and the tail
        assert b.input_samples(key, audio_only=True) == s.n_real == len(a)    # padding is no audio
    finally:
        b.stop()
    with pytest.raises(KeyError):
        b.input_samples("nobody")
