"""Property-based tests: whatever a client sends, the answer is a specific error code, never ``internal``.

Arbitrary JSON (well-formed messages with wrong values, unknown and missing types, deep nesting),
arbitrary Unicode (lone surrogates included) and arbitrary bytes go to the sans-I/O protocol layer
(``parse_text``, ``check_audio``) and through the server's whole message handling (``Hub.dispatch``,
a real Hub on a small random model, no socket).
"""
import asyncio
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mm2face.realtime import protocol as P  # noqa: E402

CODES = {v for k, v in vars(P.ErrorCode).items() if k.isupper()}
CLIENT_CODES = CODES - {P.ErrorCode.INTERNAL}
FIELDS = ("type", "session", "token", "version", "client", "format", "sample_rate", "sample_format", "style",
          "text", "guidance", "blend_s", "idle")

# Every character, lone UTF-16 surrogates included (JSON's "\ud800" decodes to one).
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None)
any_text = st.text(any_char, max_size=40)
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | any_text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
type_values = st.sampled_from(list(P.MESSAGE_TYPES)) | json_values
messages = st.fixed_dictionaries({}, optional={"type": type_values}).flatmap(
    lambda base: st.dictionaries(st.sampled_from(FIELDS) | any_text, json_values, max_size=6).map(
        lambda extra: {**extra, **base}))


def dumps(obj) -> str:
    """JSON text that may carry NaN/Infinity (Python's json accepts them) and lone surrogates."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=bool(hash(repr(obj)) & 1))


def assert_specific(call):
    try:
        call()
    except P.ProtocolError as e:
        assert e.code in CLIENT_CODES, e.code
        assert e.message and e.to_json()
    # anything else propagates and fails the test


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_parse_arbitrary_json_objects(obj):
    assert_specific(lambda: P.parse_text(dumps(obj)))


@settings(max_examples=800, deadline=None)
@given(st.one_of(any_text, st.binary(max_size=200), json_values.map(dumps),
                 st.integers(1, 20_000).map(lambda n: "[" * n + "]" * n),
                 st.integers(1, 20_000).map(lambda n: '{"a":' * n + "1" + "}" * n)))
def test_parse_arbitrary_text_and_bytes(data):
    assert_specific(lambda: P.parse_text(data))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from(["pcm16", "f32"]))
def test_check_audio_arbitrary_bytes(data, fmt):
    assert_specific(lambda: P.check_audio(data, fmt))


def test_lone_surrogate_style_and_non_ascii_token_get_their_codes():
    with pytest.raises(P.ProtocolError) as e:
        P.parse_text('{"type":"style","text":"calm \\ud800"}')
    assert e.value.code == P.ErrorCode.BAD_MESSAGE and "surrogate" in e.value.message
    with pytest.raises(P.ProtocolError) as e:
        P.parse_text('{"type":[1,2]}')
    assert e.value.code == P.ErrorCode.UNKNOWN_TYPE
    with pytest.raises(P.ProtocolError) as e:
        P.parse_text('{"type":"open","sample_rate":NaN}')
    assert e.value.code == P.ErrorCode.BAD_AUDIO_FORMAT


class _FakeWS:
    """Stands in for the socket: Hub.dispatch only queues replies in the client's outbox."""
    transport = None

    async def close(self, *a):
        pass


@pytest.fixture(scope="module")
def hub_loop():
    from realtime_helpers import session_factory

    from mm2face.realtime.connection import ClientConn
    from mm2face.realtime.server import Hub
    loop = asyncio.new_event_loop()
    hub = Hub(session_factory(), token="sekret")
    loop.run_until_complete(hub.create_session("default", style="calm"))
    yield hub, loop, ClientConn
    for s in list(hub.sessions.values()):
        loop.run_until_complete(hub.close_session(s))
    hub.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def _replies(client) -> list[dict]:
    out = [json.loads(m) for is_frame, m, *_ in client.outbox if not is_frame and isinstance(m, str)]
    client.outbox.clear()
    client.n_frames_queued = client.n_control_queued = 0
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(messages.map(dumps) | st.binary(max_size=3000) | any_text, min_size=1, max_size=4),
       st.booleans())
def test_server_dispatch_never_answers_internal(hub_loop, inputs, authed):
    """Through Hub.dispatch (the code behind every received message): each error reply carries a
    client-side code, and the code dispatch returns is the one it sent."""
    hub, loop, ClientConn = hub_loop
    client = ClientConn(hub, _FakeWS())
    client.authed = authed
    try:
        for data in inputs:
            code = loop.run_until_complete(hub.dispatcher.dispatch(client, data))
            errors = [r for r in _replies(client) if r.get("type") == "error"]
            assert code != P.ErrorCode.INTERNAL, errors
            if code is not None:
                assert errors and errors[-1]["code"] == code and errors[-1]["message"]
    finally:
        if client.own is not None:
            loop.run_until_complete(hub.close_session(client.own))
