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
