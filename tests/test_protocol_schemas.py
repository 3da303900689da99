"""docs/schemas/*.json describe what the code actually sends and accepts."""
import asyncio
import json

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")

from mm2face.realtime import protocol as P  # noqa: E402
from realtime_helpers import validator  # noqa: E402

GOOD = ['{"type":"hello","version":1}', '{"type":"subscribe","session":"a","format":"binary"}',
        '{"type":"open","sample_rate":44100,"sample_format":"f32","style":"x","format":"json"}',
        '{"type":"audio_format","sample_rate":8000,"sample_format":"pcm16"}',
        '{"type":"style","text":"happy","blend_s":0.3,"guidance":2}', '{"type":"end"}', '{"type":"flush"}',
        '{"type":"close"}', '{"type":"stats","session":"default"}', '{"type":"unsubscribe"}']
BAD = ['{"type":"dance"}', '{"type":"style"}', '{"type":"subscribe","format":"xml"}',
       '{"type":"open","sample_rate":1000}', '{"type":"hello","version":3}',
       '{"type":"style","text":"a","blend_s":-1}']


def test_client_schema_agrees_with_the_parser():
    v = validator("client_message.json")
    for m in GOOD:
        P.parse_text(m)
        v.validate(json.loads(m))
    for m in BAD:
        with pytest.raises(P.ProtocolError):
            P.parse_text(m)
        assert not v.is_valid(json.loads(m)), m


def test_every_server_message_matches_the_schema():
    """Drive a real server through every reply type and validate all text it sends."""
    import torch
    torch.set_num_threads(1)
    from websockets.asyncio.client import connect

    from mm2face.engine.model import MM2Face
    from mm2face.engine.session import StreamConfig, StreamSession
    from mm2face.realtime.server import Hub, serve_hub

    model = MM2Face.random(seed=0, small=True).eval()
    seen = []

    async def run():
        hub = Hub(lambda style: StreamSession(model, StreamConfig(), style=style))
        await hub.create_session("default")
        async with serve_hub(hub, "127.0.0.1", 0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
            async def reader():
                async for raw in ws:
                    if isinstance(raw, str):
                        seen.append(json.loads(raw))
            task = asyncio.create_task(reader())
            for m in ['{"type":"hello"}', '{"type":"subscribe"}', '{"type":"unsubscribe"}',
                      '{"type":"open","sample_rate":48000,"sample_format":"f32"}',
                      '{"type":"audio_format","sample_rate":16000,"sample_format":"f32"}',
                      '{"type":"style","text":"sad"}', '{"type":"bogus"}', '{"type":"stats"}']:
                await ws.send(m)
            await ws.send((np.ones(1600, "<f4") * 2).tobytes())
            await ws.send(np.zeros(8000, "<f4").tobytes())
            for m in ['{"type":"flush"}', '{"type":"end"}', '{"type":"close"}']:
                await ws.send(m)
            async with asyncio.timeout(20):
                while not any(s["type"] == "session_closed" for s in seen):
                    await asyncio.sleep(0.01)
            task.cancel()

    asyncio.run(run())
    v = validator("server_message.json")
    types = {m["type"] for m in seen}
    assert {"hello", "subscribed", "unsubscribed", "opened", "audio_format", "style", "error", "stats", "warning",
            "frame", "flushed", "ended", "session_closed"} <= types, types
    for m in seen:
        v.validate(m)
