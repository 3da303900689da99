"""Protocol v2's ARKit frame formats: parsing, versions, encodings, one conversion per frame, and a real
server whose subscribers choose their format per connection (v1 clients unchanged)."""
import asyncio
import json
import math

import numpy as np
import pytest

from mm2face.engine.arkit import ARKIT_MAP_VERSION, ARKIT_NAMES, LinearRetarget, standin_retarget, to_arkit
from mm2face.engine.frame import FRAME_DIM
from mm2face.realtime import protocol as P
from realtime_helpers import make_session, pcm16, recv_until, is_type, served_hub, speechy, validator  # noqa: F401


def _frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = np.zeros(FRAME_DIM, np.float32)
        p[:28] = rng.uniform(0, 1, 28)
        p[50:53] = rng.uniform(-0.3, 0.3, 3)
        p[53] = rng.uniform(0, 0.3)
        out.append(P.WireFrame(session="s", session_num=3, seq=40 + i, t_audio_s=(40 + i) / 25, params=p,
                               server_send_time=1000.5, audio_arrival_time=999.9, input_ready_time=math.nan,
                               style="happy", final=i == n - 1))
    return out


def test_versions_and_formats_parse():
    for v in (1, 2):
        assert P.parse_text(json.dumps({"type": "hello", "version": v})).version == v
    with pytest.raises(P.ProtocolError) as ei:
        P.parse_text('{"type":"hello","version":3}')
    assert ei.value.code == P.ErrorCode.UNSUPPORTED_VERSION and "1, 2" in ei.value.message
    assert P.parse_text('{"type":"subscribe","format":"arkit"}') == P.Subscribe("default", "arkit")
    assert P.parse_text('{"type":"open","format":"arkit-binary"}').format == "arkit-binary"
    assert P.parse_text('{"type":"hello"}').version == 1                      # no version: a v1 client
    assert json.loads(P.hello_json([], False, version=1))["version"] == 1      # a v1 client's reply says 1
    assert json.loads(P.hello_json([], False))["versions"] == [1, 2]


def test_arkit_binary_layout_and_roundtrip():
    f = _frames(1)[0]
    a = to_arkit(f.params)
    b = P.encode_frame_arkit_binary(f, a.weights[0], a.head_rot[0])
    assert len(b) == P.ARKIT_FRAME_BYTES == 268 and b[:4] == b"MMA1"
    # the documented layout, read with plain numpy at fixed offsets
    assert np.frombuffer(b, "<u2", 1, 4)[0] == 2 and np.frombuffer(b, "<u2", 1, 6)[0] == 1     # version, final
    assert np.frombuffer(b, "<u4", 1, 8)[0] == 40 and np.frombuffer(b, "<u4", 1, 12)[0] == 3
    np.testing.assert_array_equal(np.frombuffer(b, "<f4", 52, 48), a.weights[0])
    np.testing.assert_array_equal(np.frombuffer(b, "<f4", 3, 48 + 208), a.head_rot[0])
    g = P.decode_frame_arkit_binary(b, "s")
    assert (g.seq, g.session_num, g.final) == (40, 3, True) and math.isnan(g.input_ready_time)
    np.testing.assert_array_equal(g.weights, a.weights[0])
    with pytest.raises(ValueError, match="MMA1"):
        P.decode_frame_arkit_binary(b"MMF1" + b[4:])
    # the v1 binary frame keeps its layout and version field 1, so v1 decoders still read it
    v1 = P.encode_frame_binary(f)
    assert v1[:4] == b"MMF1" and np.frombuffer(v1, "<u2", 1, 4)[0] == 1


def test_arkit_json_frame_matches_schema():
    f = _frames(1)[0]
    a = to_arkit(f.params)
    obj = json.loads(P.encode_frame_arkit_json(f, a.weights[0], a.head_rot[0]))
    assert len(obj["arkit"]) == 52 and len(obj["head_rot"]) == 3 and "expression" not in obj
    assert obj["final"] is True and obj["style"] == "happy"
    g = P.decode_frame_arkit_json(obj)
    np.testing.assert_allclose(g.weights, a.weights[0], atol=1e-5)
    np.testing.assert_allclose(g.head_rot, a.head_rot[0], atol=1e-6)
    v = validator("server_message.json")
    v.validate(obj)
    v.validate(json.loads(P.encode_frame_json(f)))                           # the v1 frame still validates
    sub = {"type": "subscribed", "session": "s", "session_num": 3, "format": "arkit", "style": "",
           **P.arkit_subscribed_fields(standin_retarget())}
    v.validate(sub)
    assert sub["arkit_names"] == list(ARKIT_NAMES) and sub["arkit_map"] == ARKIT_MAP_VERSION
    bad = dict(obj, arkit=obj["arkit"][:51])
    assert not v.is_valid(bad)
    c = validator("client_message.json")
    for m in ('{"type":"subscribe","format":"arkit"}', '{"type":"open","format":"arkit-binary"}',
              '{"type":"hello","version":2}'):
        c.validate(json.loads(m))
    assert not c.is_valid({"type": "hello", "version": 3})


class CountingRetarget(LinearRetarget):
    """The stand-in map, counting how many frames it converts."""

    def weights(self, motion):
        self.info["frames_converted"] = self.info.get("frames_converted", 0) + len(np.atleast_2d(motion))
        return super().weights(motion)


def _counting():
    rt = standin_retarget()
    return CountingRetarget(pos=rt.pos, neg=rt.neg, bias=rt.bias, version=rt.version, info={})


def test_encoder_converts_each_frame_once_for_all_formats_and_listeners():
    rt = _counting()
    frames = _frames(4)
    enc = P.FrameBatchEncoder(frames, rt)
    js, bi = enc.get("arkit"), enc.get("arkit-binary")
    assert enc.get("arkit") is js and len(bi) == 4
    enc.get("json"), enc.get("binary")
    assert rt.info["frames_converted"] == 4
    again = P.FrameBatchEncoder(frames, rt).get("arkit")         # e.g. the MQTT bridge on the same frames
    assert again == js and rt.info["frames_converted"] == 4
    P.FrameBatchEncoder(frames, standin_retarget()).get("arkit")   # another map converts anew
    ref = to_arkit(np.stack([f.params for f in frames]), rt)
    np.testing.assert_allclose([json.loads(m)["arkit"] for m in js], ref.weights, atol=1e-5)
    with pytest.raises(ValueError, match="unknown frame format"):
        P.FrameBatchEncoder(frames).get("xml")


async def test_server_subscribers_choose_their_format(make_session):
    from websockets.asyncio.client import connect
    async for hub, url in served_hub(make_session):
        hub.arkit_retarget = rt = _counting()
        async with connect(url) as v1, connect(url) as ak, connect(url) as akb, connect(url) as src:
            # a v1 client: hello says version 1, json frames exactly as before
            await v1.send('{"type":"hello","version":1}')
            hello, _ = await recv_until(v1, is_type("hello"))
            assert hello["version"] == 1
            await ak.send('{"type":"hello","version":2}')
            await recv_until(ak, is_type("hello"))
            await src.send('{"type":"open","session":"mic","sample_rate":16000,"idle":false}')
            await recv_until(src, is_type("subscribed"))
            for ws, fmt in ((v1, None), (ak, "arkit"), (akb, "arkit-binary")):
                await ws.send(json.dumps({"type": "subscribe", "session": "mic", **({"format": fmt} if fmt else {})}))
                sub, _ = await recv_until(ws, is_type("subscribed"))
                assert sub["format"] == (fmt or "json")
                assert ("arkit_names" in sub) == bool(fmt)
                if fmt:
                    assert sub["arkit_names"] == list(ARKIT_NAMES) and sub["head_rot_order"] == ["yaw", "pitch", "roll"]
            await src.send(pcm16(speechy(1.0)))
            await src.send('{"type":"end"}')
            await recv_until(src, is_type("ended"))
            last, got_v1 = await recv_until(v1, lambda m: is_type("frame")(m) and m.get("final"))
            got_v1 = [m for m in got_v1 if is_type("frame")(m)] + [last]
            last, got_ak = await recv_until(ak, lambda m: is_type("frame")(m) and m.get("final"))
            got_ak = [m for m in got_ak if is_type("frame")(m)] + [last]
            got_b = []
            while len(got_b) < len(got_v1):
                raw = await asyncio.wait_for(akb.recv(), 20)
                if isinstance(raw, bytes):
                    got_b.append(P.decode_frame_arkit_binary(raw))
    n = len(got_v1)
    assert n >= 25 and [m["seq"] for m in got_ak] == [m["seq"] for m in got_v1] == [g.seq for g in got_b]
    motion = np.stack([P.decode_frame_json(m).params for m in got_v1])
    ref = to_arkit(motion, rt)
    np.testing.assert_allclose([m["arkit"] for m in got_ak], ref.weights, atol=2e-5)
    np.testing.assert_allclose(np.stack([g.weights for g in got_b]), ref.weights, atol=2e-6)
    np.testing.assert_allclose(np.stack([g.head_rot for g in got_b]), ref.head_rot, atol=2e-6)
    assert got_b[-1].final and "expression" not in got_ak[0]
    # the server converted each frame once for both ARKit subscribers (+ the reference conversion above)
    assert rt.info["frames_converted"] == 2 * n


async def test_arkit_refused_with_the_reason_when_no_map_applies(make_session):
    from websockets.asyncio.client import connect
    async for hub, url in served_hub(make_session):
        hub.arkit_error = "the model drives the 'flame' head; start mm2face-live with --arkit-retarget FILE"
        async with connect(url) as ws:
            await ws.send('{"type":"subscribe","format":"arkit"}')
            err, _ = await recv_until(ws, is_type("error"))
            assert err["code"] == "bad_message" and "--arkit-retarget" in err["message"]
            await ws.send('{"type":"open","session":"x","format":"arkit-binary"}')
            err, _ = await recv_until(ws, is_type("error"))
            assert err["ref"] == "open" and "x" not in hub.sessions        # refused before it was made
            await ws.send('{"type":"subscribe"}')                            # json still works
            sub, _ = await recv_until(ws, is_type("subscribed"))
            assert sub["format"] == "json"
        assert all(fmt == "json" for live in hub.sessions.values() for fmt in live.subscribers.values())
