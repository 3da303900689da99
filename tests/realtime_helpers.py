"""Helpers shared by the WebSocket server tests: a real StreamSession factory on a small random
model, a Hub served on a free port, speech-like audio, and the protocol's JSON Schemas."""
import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from mm2face.realtime.server import Hub, serve_hub

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def session_factory():
    """``style -> StreamSession`` on one shared, randomly initialised small model (1 torch thread)."""
    import torch
    torch.set_num_threads(1)
    from mm2face.engine.model import MM2Face
    from mm2face.engine.session import StreamConfig, StreamSession
    model = MM2Face.random(seed=0, small=True).eval()
    return lambda style: StreamSession(model, StreamConfig(), style=style)


def speechy(seconds, rate=16000, seed=0):
    """Noise bursts in a 4 Hz syllable envelope: speech-like energy without needing a voice."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    return (0.3 * env * rng.standard_normal(len(t))).astype(np.float32)


def pcm16(x):
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def recv_until(ws, pred, timeout=20.0):
    """Receive messages until pred(msg) is true; returns (match, everything received before it)."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            msg = raw if isinstance(raw, bytes) else json.loads(raw)
            if pred(msg):
                return msg, seen
            seen.append(msg)


def is_type(t):
    return lambda m: isinstance(m, dict) and m.get("type") == t


async def served_hub(make_session):
    """Async generator for a fixture: a Hub with a 'default' session, served on 127.0.0.1:<free>."""
    hub = Hub(make_session)
    await hub.create_session("default", style="calm")
    async with serve_hub(hub, "127.0.0.1", 0) as srv:
        yield hub, f"ws://127.0.0.1:{srv.port}"


def validator(name):
    """A jsonschema validator for docs/schemas/<name> with the other schemas as its registry."""
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry, Resource  # ships with jsonschema
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}
    reg = Registry().with_resources([(d["$id"], Resource.from_contents(d)) for d in docs.values()])
    return jsonschema.Draft202012Validator(docs[name], registry=reg)


# Fixtures: a test module imports them by name (`from realtime_helpers import make_session, server`).
@pytest.fixture(scope="module")
def make_session():
    return session_factory()


@pytest.fixture
async def server(make_session):
    """(hub, ws url) of a served Hub (its one scheduler batches the ready hops of all sessions)."""
    async for hub_url in served_hub(make_session):
        yield hub_url
