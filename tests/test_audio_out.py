"""Session audio out (protocol v2 addition): a subscriber that asks with ``"audio": true`` receives the
audio the session consumed as ``MMAU`` binary messages, on the frames' clock; one that does not, gets
none. The layout, a real-socket run of a ``--wav``-style session (WavSource fed into the server's
'default' session), and the bounded outbox that isolates a reader who stalls."""
import asyncio
import json
import struct

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from mm2face.engine.frame import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from mm2face.realtime import protocol as P
from mm2face.realtime.connection import OUTBOX_MAX_AUDIO_S, ClientConn
from mm2face.realtime.server import Hub
from mm2face.engine.audio import load_audio_16k
from mm2face.realtime.sources import WavSource, feed
from realtime_helpers import is_type, make_session, recv_until, served_hub, speechy, validator  # noqa: F401

pytestmark = pytest.mark.timeout(120)

WAV_S = 1.5          # the streamed file
WAV_SPEED = 4.0      # WavSource pace: faster than real time (the clock values do not depend on it)


def test_audio_out_binary_layout():
    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 0.25], np.float32)
    msg = P.encode_audio_out(7, 48000, 3.0, audio)
    assert P.AUDIO_OUT_HEADER_BYTES == 32 and len(msg) == 32 + 2 * len(audio)
    # the documented layout, field by field (docs/protocol.md, "Session audio")
    magic, ver, flags, rate, num, t, start = struct.unpack_from("<4sHHIIdQ", msg)
    assert (magic, ver, flags, rate, num, t, start) == (b"MMAU", 1, 0, 16000, 7, 3.0, 48000)
    pcm = np.frombuffer(msg, "<i2", offset=32)
    np.testing.assert_array_equal(pcm, [0, 16384, -16384, 32767, -32768, 32767, 8192])   # clipped, x 32768
    chunk = P.decode_audio_out(msg)
    assert (chunk.session_num, chunk.start_sample, chunk.t_audio_s, chunk.sample_rate) == (7, 48000, 3.0, 16000)
    np.testing.assert_array_equal(chunk.audio_16k, pcm / 32768.0)
    # PCM16 input read the way the server reads it (int / 32768) goes out unchanged
    ints = np.arange(-32768, 32768, 97, dtype=np.int16)
    out = P.decode_audio_out(P.encode_audio_out(1, 0, 0.0, ints / 32768.0))
    np.testing.assert_array_equal(np.round(out.audio_16k * 32768).astype(np.int16), ints)
    for bad in (msg[:31], msg[:-1], b"MMF1" + msg[4:]):
        with pytest.raises(ValueError):
            P.decode_audio_out(bad)


def test_subscribe_audio_field_is_optional_and_checked():
    assert P.parse_text('{"type": "subscribe"}').audio is False                     # v1 clients: nothing new
    assert P.parse_text('{"type": "subscribe", "audio": true, "format": "binary"}').audio is True
    with pytest.raises(P.ProtocolError) as e:
        P.parse_text('{"type": "subscribe", "audio": 1}')
    assert e.value.code == P.ErrorCode.BAD_MESSAGE and "audio" in e.value.message
    v = validator("client_message.json")
    assert v.is_valid({"type": "subscribe", "session": "default", "audio": True})
    assert not v.is_valid({"type": "subscribe", "audio": "yes"})


def _final_frame(m) -> bool:
    return isinstance(m, bytes) and m[:4] == P.FRAME_MAGIC and P.decode_frame_binary(m).final


async def test_wav_session_audio_reaches_only_the_subscriber_that_asked(make_session, tmp_path):
    wav = tmp_path / "speech.wav"
    sf.write(wav, speechy(WAV_S), SAMPLE_RATE, subtype="PCM_16")
    source_audio = load_audio_16k(wav)
    schema = validator("server_message.json")
    async for hub, url in served_hub(make_session):
        async with connect(url) as a, connect(url) as b:
            await a.send(json.dumps({"type": "subscribe", "session": "default", "format": "binary", "audio": True}))
            await b.send(json.dumps({"type": "subscribe", "session": "default", "format": "binary"}))
            sub_a, _ = await recv_until(a, is_type("subscribed"))
            sub_b, _ = await recv_until(b, is_type("subscribed"))
            assert sub_a["audio"] is True and sub_a["sample_rate"] == SAMPLE_RATE and "audio" not in sub_b
            assert schema.is_valid(sub_a), list(schema.iter_errors(sub_a))
            live = hub.sessions["default"]
            await feed(live, WavSource(wav, speed=WAV_SPEED))                  # ends with live.end()
            last_a, seen_a = await recv_until(a, _final_frame)
            last_b, seen_b = await recv_until(b, _final_frame)
            seen_a.append(last_a)
            seen_b.append(last_b)
    binary_a = [m for m in seen_a if isinstance(m, bytes)]
    chunks = [P.decode_audio_out(m) for m in binary_a if m[:4] == P.AUDIO_OUT_MAGIC]
    frames = [P.decode_frame_binary(m) for m in binary_a if m[:4] == P.FRAME_MAGIC]
    assert len(chunks) + len(frames) == len(binary_a)
    # the one without "audio" got frames only, the same frames
    assert all(m[:4] == P.FRAME_MAGIC for m in seen_b if isinstance(m, bytes))
    assert [f.seq for f in frames] == [P.decode_frame_binary(m).seq for m in seen_b if isinstance(m, bytes)]
    # every sample of the file, in order, without gaps, on the session clock that numbers the frames
    assert chunks and all(c.session_num == sub_a["session_num"] == frames[0].session_num for c in chunks)
    starts = np.cumsum([0] + [len(c.audio_16k) for c in chunks[:-1]])
    assert [c.start_sample for c in chunks] == starts.tolist()
    assert all(c.t_audio_s == c.start_sample / SAMPLE_RATE for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.audio_16k for c in chunks]), source_audio)
    assert all(f.t_audio_s == pytest.approx(f.seq / FPS) for f in frames)
    # the audio of a frame's instant arrived before that frame (a player can schedule it in time)
    order = {id(m): i for i, m in enumerate(binary_a)}
    audio_msgs = [m for m in binary_a if m[:4] == P.AUDIO_OUT_MAGIC]
    for f, m in zip(frames, (m for m in binary_a if m[:4] == P.FRAME_MAGIC)):
        s = f.seq * SAMPLES_PER_FRAME
        holder = next((k for k, c in enumerate(chunks) if c.start_sample <= s < c.start_sample + len(c.audio_16k)), None)
        if holder is not None:
            assert order[id(audio_msgs[holder])] < order[id(m)], f.seq
    assert sum(1 for f in frames if f.seq * SAMPLES_PER_FRAME < len(source_audio)) == -(-len(source_audio) // SAMPLES_PER_FRAME)


class _StalledSocket:
    """A client that never reads: every send waits forever."""
    remote_address = ("127.0.0.1", 1)

    async def send(self, msg):
        await asyncio.Event().wait()


async def test_stalled_audio_reader_is_bounded_and_its_drops_counted(make_session):
    hub = Hub(make_session)
    live = await hub.create_session("default")
    client = ClientConn(hub, _StalledSocket())
    hub.dispatcher.subscribe(client, live, "binary", audio=True)
    chunk = np.zeros(320, np.float32)
    n = int(3 * OUTBOX_MAX_AUDIO_S * SAMPLE_RATE / len(chunk))      # 3x the bound, never read
    for _ in range(n):
        live._queue_audio(chunk, None)     # stamped on the session clock, then queued for the scheduler
    limit = int(OUTBOX_MAX_AUDIO_S * SAMPLE_RATE)
    queued = sum(1 for kind, m, _ in client.outbox if m[:4] == P.AUDIO_OUT_MAGIC)
    assert client.audio_samples_queued == queued * len(chunk) <= limit
    assert client.dropped_audio_chunks == live.dropped_audio_chunks == n - queued > 0
    # the newest audio is kept, and control replies are never dropped
    kept = [P.decode_audio_out(m).start_sample for _, m, _ in client.outbox if m[:4] == P.AUDIO_OUT_MAGIC]
    assert kept == [len(chunk) * i for i in range(n - queued, n)]
    assert any(isinstance(m, str) and '"subscribed"' in m for _, m, _ in client.outbox)
    assert live.stats()["dropped_audio_chunks"] == n - queued
    hub.close()                             # the scheduler's worker stops stepping the queued audio
