"""MQTT bridge against a real mosquitto broker that the test starts on a free port and stops."""
import asyncio
import json
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from mm2face.realtime.mqtt import MqttBridge, parse_host_port, style_from_payload
from mm2face.realtime import protocol as P
from mm2face.realtime.server import Hub

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    import os
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = tmp_path_factory.mktemp("mqtt") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"mosquitto did not start: {proc.stdout.read().decode()}")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def make_session():
    import torch
    torch.set_num_threads(1)
    from mm2face.engine.model import MM2Face
    from mm2face.engine.session import StreamConfig, StreamSession
    model = MM2Face.random(seed=0, small=True).eval()
    return lambda style: StreamSession(model, StreamConfig(), style=style)


def test_payload_and_address_parsing():
    assert parse_host_port("broker") == ("broker", 1883)
    assert parse_host_port("10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_host_port("[::1]:1999") == ("::1", 1999)
    assert style_from_payload(b"smiling") .text == "smiling"
    s = style_from_payload(b'{"text": "sad", "blend_s": 1.0, "guidance": 3}')
    assert (s.text, s.blend_s, s.guidance) == ("sad", 1.0, 3.0)
    with pytest.raises(P.ProtocolError):
        style_from_payload(("x" * 10_000).encode())


async def test_frames_out_style_in_status_retained(broker, make_session):
    import aiomqtt
    hub = Hub(make_session)
    live = await hub.create_session("default", style="calm")
    bridge = MqttBridge(hub, "127.0.0.1", broker)
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(10):
            await bridge.connected.wait()
        async with aiomqtt.Client("127.0.0.1", broker) as c:
            await c.subscribe("mm2face/default/frames", qos=0)
            await c.subscribe("mm2face/default/error", qos=0)
            await asyncio.sleep(0.2)
            rng = np.random.default_rng(0)
            n = len(await live.push_audio((0.2 * rng.standard_normal(16000)).astype(np.float32)))
            n += len(await live.end())
            frames = []
            async with asyncio.timeout(20):
                async for m in c.messages:
                    assert str(m.topic) == "mm2face/default/frames" and not m.retain
                    frames.append(json.loads(m.payload))
                    if len(frames) == n:
                        break
            assert [f["seq"] for f in frames] == list(range(n))
            assert len(frames[0]["expression"]) == 50 and frames[0]["session"] == "default"
            # Style in over MQTT (QoS 1, retained, like a dashboard would send it).
            await c.publish("mm2face/default/style", json.dumps({"text": "big smile", "blend_s": 0.3}),
                            qos=1, retain=True)
            async with asyncio.timeout(10):
                while live.style != "big smile":
                    await asyncio.sleep(0.02)
            # A bad style payload gets a protocol error on the error topic; the style is kept.
            await c.publish("mm2face/default/style", "x" * 10_000, qos=1)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    if str(m.topic) == "mm2face/default/error":
                        assert json.loads(m.payload)["code"] == "style_too_long"
                        break
            assert live.style == "big smile"
            await c.publish("mm2face/default/style", b"", qos=1, retain=True)   # clear the retained style
        # A late subscriber sees the retained current status (QoS 1).
        await asyncio.sleep(0.3)
        async with aiomqtt.Client("127.0.0.1", broker) as late:
            await late.subscribe("mm2face/default/status", qos=1)
            async with asyncio.timeout(10):
                async for m in late.messages:
                    assert m.retain
                    st = json.loads(m.payload)
                    assert st["state"] == "live" and st["session"] == "default"
                    break
        assert bridge.dropped == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_arkit_payload_format(broker, make_session):
    """--mqtt-format arkit: frames carry ARKit-52 weights + head rotation, the retained status names them."""
    import aiomqtt

    from mm2face.engine.arkit import ARKIT_NAMES, to_arkit
    hub = Hub(make_session)
    live = await hub.create_session("ak")
    with pytest.raises(ValueError, match="frame format"):
        MqttBridge(hub, "127.0.0.1", broker, frame_format="xml")
    bridge = MqttBridge(hub, "127.0.0.1", broker, prefix="akt", frame_format="arkit-binary")
    recorded = []
    live.listeners.append(lambda _live, frames: recorded.extend(frames))
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(10):
            await bridge.connected.wait()
        async with aiomqtt.Client("127.0.0.1", broker) as c:
            await c.subscribe("akt/ak/#", qos=1)
            rng = np.random.default_rng(1)
            n = len(await live.push_audio((0.2 * rng.standard_normal(16000)).astype(np.float32)))
            n += len(await live.end())
            frames, status = [], None
            async with asyncio.timeout(20):
                async for m in c.messages:
                    if str(m.topic) == "akt/ak/status":
                        status = json.loads(m.payload)
                    elif str(m.topic) == "akt/ak/frames":
                        frames.append(P.decode_frame_arkit_binary(bytes(m.payload)))
                    if len(frames) == n and status is not None:
                        break
        assert status["frame_format"] == "arkit-binary" and status["arkit_names"] == list(ARKIT_NAMES)
        assert [f.seq for f in frames] == list(range(n)) and frames[-1].final
        ref = to_arkit(np.stack([f.params for f in recorded]))
        np.testing.assert_allclose(np.stack([f.weights for f in frames]), ref.weights, atol=1e-6)
        np.testing.assert_allclose(np.stack([f.head_rot for f in frames]), ref.head_rot, atol=1e-6)
        assert bridge.dropped == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # a server whose model has no ARKit map refuses the format with the reason
    hub2 = Hub(make_session)
    hub2.arkit_error = "no map for this head"
    with pytest.raises(P.ProtocolError, match="no map for this head"):
        MqttBridge(hub2, "127.0.0.1", broker, frame_format="arkit")
