"""Feeding a StreamSession the way a client does: audio in fixed-size chunks, polling after each."""
from mm2face.engine.session import StreamConfig, StreamSession


def stream_in_chunks(model, audio, style="", seed=0, chunk=700, **cfg):
    """``audio: (samples,)`` float32 16 kHz pushed ``chunk`` samples at a time -> (session, frames so far)."""
    s = StreamSession(model, StreamConfig(seed=seed, **cfg), style=style)
    frames = []
    for i in range(0, len(audio), chunk):
        s.push_audio(audio[i:i + chunk])
        frames += s.poll()
    return s, frames


def solo_and_batcher(model, auds):
    """Stream ``i`` of ``auds`` alone (seed i, greedy) -> its frames ``(T_i, 56)``; and a SessionBatcher with one
    such session per stream, nothing pushed yet -> (reference frames, batcher, keys)."""
    import numpy as np

    from mm2face.engine.batching import SessionBatcher
    ref = []
    for i, a in enumerate(auds):
        s = StreamSession(model, StreamConfig(seed=i, temperature=0.0))
        s.push_audio(a)
        ref.append(np.stack([f.params for f in s.poll()]))
    b = SessionBatcher(model)
    keys = [b.add(StreamSession(model, StreamConfig(seed=i, temperature=0.0))) for i in range(len(auds))]
    return ref, b, keys
