"""Protocol v1, sans-I/O: parsing, validation, error codes, frame encodings, audio checks."""
import json
import math

import numpy as np
import pytest

from mm2face.realtime import protocol as P
from mm2face.engine.audio import StreamResampler, resample
from mm2face.realtime.audio_format import decode_samples


def err(data):
    with pytest.raises(P.ProtocolError) as ei:
        P.parse_text(data)
    return ei.value.code


def test_parse_known_messages_with_defaults():
    assert P.parse_text('{"type":"subscribe"}') == P.Subscribe("default", "json")
    assert P.parse_text('{"type":"subscribe","session":"a","format":"binary"}') == P.Subscribe("a", "binary")
    o = P.parse_text('{"type":"open","sample_rate":44100,"sample_format":"f32","style":" happy "}')
    assert (o.sample_rate, o.sample_format, o.style, o.session) == (44100, "f32", "happy", None)
    s = P.parse_text('{"type":"style","text":"angry","blend_s":1.5,"guidance":2}')
    assert (s.text, s.blend_s, s.guidance, s.session) == ("angry", 1.5, 2.0, None)
    assert isinstance(P.parse_text('{"type":"end"}'), P.End)
    assert isinstance(P.parse_text('{"type":"flush","session":"x"}'), P.Flush)
    assert P.parse_text('{"type":"hello","version":1,"token":"t"}').token == "t"
    assert P.parse_text('{"type":"style","text":""}').text == ""     # empty style: allowed (neutral)


@pytest.mark.parametrize("data,code", [
    ("{not json", P.ErrorCode.BAD_JSON),
    ("[1,2]", P.ErrorCode.BAD_JSON),
    ('"hi"', P.ErrorCode.BAD_JSON),
    ('{"kind":"x"}', P.ErrorCode.UNKNOWN_TYPE),
    ('{"type":"dance"}', P.ErrorCode.UNKNOWN_TYPE),
    ('{"type":5}', P.ErrorCode.UNKNOWN_TYPE),
    ('{"type":"hello","version":3}', P.ErrorCode.UNSUPPORTED_VERSION),
    ('{"type":"subscribe","format":"xml"}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"subscribe","session":""}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"subscribe","session":7}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"style"}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"style","text":3}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"style","text":"a","blend_s":-1}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"style","text":"a","blend_s":true}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"style","text":"a","guidance":1e9}', P.ErrorCode.BAD_MESSAGE),
    ('{"type":"open","sample_rate":1234}', P.ErrorCode.BAD_AUDIO_FORMAT),
    ('{"type":"open","sample_rate":16000.5}', P.ErrorCode.BAD_AUDIO_FORMAT),
    ('{"type":"open","sample_format":"mp3"}', P.ErrorCode.BAD_AUDIO_FORMAT),
    ('{"type":"audio_format","sample_rate":"fast"}', P.ErrorCode.BAD_AUDIO_FORMAT),
])
def test_bad_messages_get_codes(data, code):
    assert err(data) == code


def test_size_limits():
    assert err(json.dumps({"type": "style", "text": "x" * (P.MAX_TEXT_BYTES + 1)})) == P.ErrorCode.TOO_LARGE
    assert err(json.dumps({"type": "style", "text": "calm " * 2000})) == P.ErrorCode.STYLE_TOO_LONG  # 10 kB
    with pytest.raises(P.ProtocolError) as ei:
        P.check_audio(b"\0" * (P.MAX_AUDIO_BYTES + 2), "pcm16")
    assert ei.value.code == P.ErrorCode.TOO_LARGE


def test_error_json_roundtrip():
    e = P.ProtocolError(P.ErrorCode.BAD_JSON, "nope", "style")
    assert json.loads(e.to_json()) == {"type": "error", "code": "bad_json", "message": "nope", "ref": "style"}


def test_check_audio_decodes_clips_and_rejects_nonfinite():
    pcm = (np.array([0, 16384, -32768, 32767], "<i2")).tobytes()
    np.testing.assert_allclose(P.check_audio(pcm, "pcm16").audio, [0, 0.5, -1, 32767 / 32768])
    f = np.array([0.5, 3.0, -2.0], "<f4").tobytes()
    chk = P.check_audio(f, "f32")
    assert chk.n_clipped == 2 and chk.audio.max() == 1.0 and chk.audio.min() == -1.0
    for bad in (np.nan, np.inf):
        with pytest.raises(P.ProtocolError) as ei:
            P.check_audio(np.array([0.1, bad], "<f4").tobytes(), "f32")
        assert ei.value.code == P.ErrorCode.BAD_AUDIO
    with pytest.raises(P.ProtocolError) as ei:
        P.check_audio(b"\0\0\0", "pcm16")       # half a sample
    assert ei.value.code == P.ErrorCode.BAD_AUDIO


def _frame(final=False):
    params = np.linspace(-1, 1, 56).astype(np.float32)
    return P.WireFrame(session="s", session_num=3, seq=41, t_audio_s=1.64, params=params,
                       server_send_time=1.7e9 + 0.25, audio_arrival_time=1.7e9, input_ready_time=math.nan,
                       style="happy", final=final)


def test_binary_frame_layout_and_roundtrip():
    f = _frame(final=True)
    b = P.encode_frame_binary(f)
    assert len(b) == P.FRAME_BYTES == 272 and b[:4] == b"MMF1"
    # The documented layout, read with plain numpy at fixed offsets.
    assert np.frombuffer(b, "<u2", 1, 4)[0] == 1 and np.frombuffer(b, "<u4", 1, 8)[0] == 41
    assert np.frombuffer(b, "<f8", 1, 16)[0] == pytest.approx(1.64)
    np.testing.assert_array_equal(np.frombuffer(b, "<f4", 56, 48), f.params)
    g = P.decode_frame_binary(b, "s")
    assert (g.seq, g.session_num, g.final) == (41, 3, True) and math.isnan(g.input_ready_time)
    assert g.server_send_time == f.server_send_time
    np.testing.assert_array_equal(g.jaw_pose, f.params[53:56])
    with pytest.raises(ValueError):
        P.decode_frame_binary(b"XXXX" + b[4:])


def test_json_frame_fields_and_roundtrip():
    f = _frame()
    obj = json.loads(P.encode_frame_json(f))
    assert obj["type"] == "frame" and len(obj["expression"]) == 50
    assert len(obj["head_pose"]) == 3 and len(obj["jaw_pose"]) == 3
    assert obj["input_ready_time"] is None and obj["seq"] == 41 and obj["style"] == "happy"
    g = P.decode_frame_json(obj)
    np.testing.assert_allclose(g.params, f.params, atol=1e-6)


def test_stream_resampler_matches_whole_signal_in_random_chunks():
    rng = np.random.default_rng(1)
    for rate in (8000, 22050, 44100, 48000):
        t = np.arange(rate) / rate
        x = (0.6 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        rs, outs, i = StreamResampler(rate), [], 0
        while i < len(x):
            n = int(rng.integers(1, 2000))
            outs.append(rs.process(x[i:i + n]))
            i += n
        outs.append(rs.flush())
        y = np.concatenate(outs)
        assert len(y) == 16000
        want = 0.6 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
        assert np.abs(y[100:-100] - want[100:-100]).max() < 1e-3, rate
        assert np.abs(resample(x, rate)[100:-100] - want[100:-100]).max() < 1e-3
    assert decode_samples(np.array([1.0], "<f4").tobytes(), "f32")[0] == 1.0
