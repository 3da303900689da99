"""Protocol v1 of the mm2face-live WebSocket server, sans-I/O.

Pure functions and small dataclasses that turn received text/bytes into validated messages and
frames into text/bytes. No sockets, no asyncio: the server (:mod:`mm2face.realtime.server`), the
reference client and the tests all use this module. The wire format is documented in
``docs/protocol.md`` with JSON Schemas in ``docs/schemas/``.

Text messages are JSON objects with a ``"type"``. Binary messages are audio (client -> server, in
the format declared by ``open``/``audio_format``) or packed frames (server -> client, layout
:data:`FRAME_STRUCT`).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mm2face.engine.frame import EXP, FPS, FRAME_DIM, HEAD, JAW, SAMPLE_RATE
from mm2face.realtime.audio_format import AudioFormatError, check_format

PROTOCOL_VERSION = 2                # v2 = v1 + the ARKit frame formats; a v1 client sees v1 unchanged
SUPPORTED_VERSIONS = (1, 2)         # what a client may ask for in hello (the reply echoes it)
HELLO_DEFAULT_VERSION = 1           # a hello without "version" is a v1 client's: its reply says 1, as before
SERVER_NAME = "mm2face-live"

# Limits (documented in docs/protocol.md).
MAX_TEXT_BYTES = 64 * 1024          # a JSON control message
MAX_AUDIO_BYTES = 1024 * 1024       # one binary audio message (~32 s of PCM16 at 16 kHz)
MAX_STYLE_CHARS = 2000              # style text; longer texts are rejected, the old style stays
MAX_SESSION_NAME = 64
MAX_BLEND_S = 10.0
GUIDANCE_RANGE = (0.0, 10.0)
ARKIT_FORMATS = ("arkit", "arkit-binary")   # ARKit-52 weights + head yaw/pitch/roll (v2, docs/arkit.md)
FRAME_FORMATS = ("json", "binary") + ARKIT_FORMATS

# Binary frame (server -> client), little-endian, 272 bytes:
#   magic b"MMF1" | version u16 | flags u16 | seq u32 | session_num u32 |
#   t_audio_s f64 | server_send_time f64 | audio_arrival_time f64 | input_ready_time f64 |
#   params 56 x f32 (50 expression, 3 head pose, 3 jaw pose; axis-angle rad)
FRAME_MAGIC = b"MMF1"
FRAME_STRUCT = struct.Struct("<4sHHII4d56f")
FRAME_BYTES = FRAME_STRUCT.size            # 272
FRAME_LAYOUT_VERSION = 1                   # the version field of an MMF1 frame (its layout is v1's)
FLAG_FINAL = 1                              # the frame is the last one emitted by end()
# ARKit binary frame ("arkit-binary", v2), little-endian, 268 bytes: the same header with magic b"MMA1" and
# version 2, then 52 x f32 ARKit weights in ARKIT_NAMES order and 3 x f32 head yaw, pitch, roll (rad)
ARKIT_FRAME_MAGIC = b"MMA1"
ARKIT_FRAME_STRUCT = struct.Struct("<4sHHII4d52f3f")
ARKIT_FRAME_BYTES = ARKIT_FRAME_STRUCT.size  # 268
ARKIT_LAYOUT_VERSION = 2
# Session audio (server -> subscriber that asked with "audio": true; v2 addition), little-endian, 32-byte header:
#   magic b"MMAU" | version u16 | flags u16 (0) | sample_rate u32 (16000) | session_num u32 |
#   t_audio_s f64 (the frames' time of the first sample) | start_sample u64 (session-clock index of the first
#   sample) | PCM16 LE mono samples. session_num and t_audio_s sit where a frame has them (bytes 12 and 16).
AUDIO_OUT_MAGIC = b"MMAU"
AUDIO_OUT_HEADER = struct.Struct("<4sHHIIdQ")
AUDIO_OUT_HEADER_BYTES = AUDIO_OUT_HEADER.size   # 32
AUDIO_OUT_LAYOUT_VERSION = 1
PCM16_SCALE = 32768                              # int16 = float * 32768 (clipped), as decode_samples reads PCM16


class ErrorCode:
    """Error codes sent in ``{"type": "error", "code": ...}`` messages."""
    BAD_JSON = "bad_json"                    # not valid UTF-8 JSON, or not an object
    UNKNOWN_TYPE = "unknown_type"            # "type" missing or not a known message type
    BAD_MESSAGE = "bad_message"              # a field is missing, of the wrong type or out of range
    TOO_LARGE = "too_large"                  # message over the size limit
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"            # control message without the server's token
    UNKNOWN_SESSION = "unknown_session"
    SESSION_EXISTS = "session_exists"
    NO_SESSION = "no_session"                # audio/audio_format before "open"
    NOT_OWNER = "not_owner"                  # control of a session another client opened
    BAD_AUDIO_FORMAT = "bad_audio_format"    # unsupported sample rate or sample format
    BAD_AUDIO = "bad_audio"                  # NaN/Inf samples or a partial sample; the chunk is dropped
    STYLE_TOO_LONG = "style_too_long"
    CAPACITY = "capacity"                    # open refused: the server is at its real-time capacity or session limit
    SESSION_LIMIT = "session_limit"          # open refused: this client address holds its maximum of sessions
    DRAINING = "draining"                    # open refused: the server is shutting down
    RATE_LIMITED = "rate_limited"            # too many control messages per second; the excess was dropped
    INTERNAL = "internal"                    # the server failed (a bug, never the client's input)


class WarningCode:
    AUDIO_CLIPPED = "audio_clipped"          # samples beyond [-1, 1] were clipped (sent once per session)
    FRAMES_DROPPED = "frames_dropped"        # this client fell behind; frames were dropped for it


class ProtocolError(Exception):
    """A client message that cannot be accepted. ``code`` is an :class:`ErrorCode` value."""

    def __init__(self, code: str, message: str, ref: str | None = None):
        super().__init__(message)
        self.code, self.message, self.ref = code, message, ref

    def to_json(self) -> str:
        return error_json(self.code, self.message, self.ref)


# ----------------------------------------------------------------------------------------------
# Client -> server messages

@dataclass
class Hello:
    version: int = PROTOCOL_VERSION
    token: str | None = None
    client: str = ""


@dataclass
class Subscribe:
    session: str = "default"
    format: str = "json"
    audio: bool = False                 # also send the audio the session consumes (MMAU binary messages)


@dataclass
class Unsubscribe:
    session: str = "default"


@dataclass
class Open:
    """Open a session fed by this client's binary audio messages."""
    session: str | None = None          # name; the server picks one when omitted
    sample_rate: int = SAMPLE_RATE      # Hz of the audio that follows
    sample_format: str = "pcm16"        # "pcm16" or "f32", little-endian, mono
    style: str = ""
    guidance: float | None = None
    format: str = "json"                # frame format of the automatic subscription
    idle: bool = True                   # idle frames at 25 fps while the client sends no audio
    token: str | None = None


@dataclass
class AudioFormat:
    sample_rate: int = SAMPLE_RATE
    sample_format: str = "pcm16"
    token: str | None = None


@dataclass
class Style:
    text: str = ""
    blend_s: float = 0.5
    guidance: float | None = None
    session: str | None = None          # default: the client's own session, else "default"
    token: str | None = None


@dataclass
class End:
    session: str | None = None
    token: str | None = None


@dataclass
class Flush:
    session: str | None = None
    token: str | None = None


@dataclass
class Close:
    session: str | None = None
    token: str | None = None


@dataclass
class Stats:
    session: str | None = None


CONTROL_TYPES = (Open, AudioFormat, Style, End, Flush, Close)   # need the token when one is set
MESSAGE_TYPES = {"hello": Hello, "subscribe": Subscribe, "unsubscribe": Unsubscribe, "open": Open,
                 "audio_format": AudioFormat, "style": Style, "end": End, "flush": Flush,
                 "close": Close, "stats": Stats}


def _field(obj: dict, name: str, kind, *, default=None, required=False, ref=""):
    if name not in obj or obj[name] is None:
        if required:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{ref}: field {name!r} is required", ref)
        return default
    v = obj[name]
    ok = (isinstance(v, kind) and not isinstance(v, bool)) if kind in (int, float, (int, float)) else isinstance(v, kind)
    if not ok:
        want = {str: "a string", int: "an integer", (int, float): "a number", bool: "true or false"}.get(kind, str(kind))
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{ref}: field {name!r} must be {want}, got {v!r:.80}", ref)
    return v


def _number(obj, name, default, lo, hi, ref):
    v = _field(obj, name, (int, float), default=default, ref=ref)
    if v is None:
        return None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{ref}: {name} must be within [{lo}, {hi}], got {v}", ref)
    return float(v)


def _session_name(obj, ref, default=None):
    name = _field(obj, "session", str, default=default, ref=ref)
    if name is not None and (not name or len(name) > MAX_SESSION_NAME or not name.isprintable()):
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"{ref}: session must be 1..{MAX_SESSION_NAME} printable characters", ref)
    return name


def _check_unicode(text: str, what: str, ref: str) -> None:
    """JSON may carry lone UTF-16 surrogates (``"\\ud800"``), which are no Unicode text: the tokenizer
    and every UTF-8 encoder reject them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{ref}: {what} holds an unpaired UTF-16 surrogate at "
                            f"character {e.start}; send valid Unicode text", ref) from None


def _style_text(obj, ref):
    text = _field(obj, "text", str, required=True, ref=ref) if ref == "style" else _field(obj, "style", str, default="", ref=ref)
    _check_unicode(text, "style text" if ref == "style" else "style", ref)
    if len(text) > MAX_STYLE_CHARS:
        raise ProtocolError(ErrorCode.STYLE_TOO_LONG,
                            f"style text is {len(text)} characters; the limit is {MAX_STYLE_CHARS}. "
                            "Describe the style in a sentence or two; the current style is kept.", ref)
    return text.strip()


def _audio_format(obj, ref):
    rate = obj.get("sample_rate", SAMPLE_RATE)
    fmt = obj.get("sample_format", "pcm16")
    if isinstance(rate, float) and not math.isfinite(rate):
        raise ProtocolError(ErrorCode.BAD_AUDIO_FORMAT, f"{ref}: sample_rate must be a finite integer number "
                            f"of Hz, got {rate}", ref)
    try:
        return check_format(rate, fmt)
    except AudioFormatError as e:
        raise ProtocolError(ErrorCode.BAD_AUDIO_FORMAT, f"{ref}: {e}", ref) from None


def parse_text(data: str | bytes) -> Any:
    """Parse one client text message into its dataclass; raises :class:`ProtocolError`."""
    if len(data) > MAX_TEXT_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"text message of {len(data)} bytes exceeds the {MAX_TEXT_BYTES}-byte limit")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid JSON ({e}); send a JSON object "
                            'such as {"type": "subscribe", "session": "default"}') from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "message nests arrays or objects too deeply; control messages "
                            "are flat JSON objects (see docs/protocol.md)") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"message must be a JSON object, got {type(obj).__name__}")
    t = obj.get("type")
    if not isinstance(t, str) or t not in MESSAGE_TYPES:
        shown = f"{t!r:.60}" if isinstance(t, (str, int, float, bool, type(None))) else f"a JSON {type(t).__name__}"
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown}; \"type\" must be one of: "
                            f"{', '.join(MESSAGE_TYPES)}", t if isinstance(t, str) and t.isprintable() else None)
    token = _field(obj, "token", str, ref=t)
    if token is not None:
        _check_unicode(token, "token", t)
    if t == "hello":
        v = _field(obj, "version", int, default=HELLO_DEFAULT_VERSION, ref=t)
        if v not in SUPPORTED_VERSIONS:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"protocol version {v} is not supported; this server speaks versions "
                                f"{', '.join(map(str, SUPPORTED_VERSIONS))}", t)
        client = _field(obj, "client", str, default="", ref=t)[:200]
        _check_unicode(client, "client", t)
        return Hello(version=v, token=token, client=client)
    if t in ("subscribe", "open"):
        fmt = _field(obj, "format", str, default="json", ref=t)
        if fmt not in FRAME_FORMATS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{t}: format must be one of {list(FRAME_FORMATS)}, got {fmt!r}", t)
        if t == "subscribe":
            return Subscribe(session=_session_name(obj, t, "default"), format=fmt,
                             audio=_field(obj, "audio", bool, default=False, ref=t))
        rate, sfmt = _audio_format(obj, t)
        return Open(session=_session_name(obj, t), sample_rate=rate, sample_format=sfmt,
                    style=_style_text(obj, t), guidance=_number(obj, "guidance", None, *GUIDANCE_RANGE, t),
                    format=fmt, idle=_field(obj, "idle", bool, default=True, ref=t), token=token)
    if t == "unsubscribe":
        return Unsubscribe(session=_session_name(obj, t, "default"))
    if t == "audio_format":
        rate, sfmt = _audio_format(obj, t)
        return AudioFormat(sample_rate=rate, sample_format=sfmt, token=token)
    if t == "style":
        return Style(text=_style_text(obj, t), blend_s=_number(obj, "blend_s", 0.5, 0.0, MAX_BLEND_S, t),
                     guidance=_number(obj, "guidance", None, *GUIDANCE_RANGE, t),
                     session=_session_name(obj, t), token=token)
    if t == "stats":
        return Stats(session=_session_name(obj, t))
    return MESSAGE_TYPES[t](session=_session_name(obj, t), token=token)


# ----------------------------------------------------------------------------------------------
# Client -> server audio

@dataclass
class AudioCheck:
    """Result of :func:`check_audio`: clean float32 samples and what was fixed."""
    audio: np.ndarray          # (samples,) float32 in [-1, 1] at the declared rate
    n_clipped: int = 0


def check_audio(data: bytes, sample_format: str) -> AudioCheck:
    """Decode one binary audio message; raises ProtocolError(BAD_AUDIO) on NaN/Inf or a partial
    sample (the chunk is dropped), clips samples beyond [-1, 1] and counts them."""
    from mm2face.realtime.audio_format import decode_samples
    if len(data) > MAX_AUDIO_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"audio message of {len(data)} bytes exceeds the "
                            f"{MAX_AUDIO_BYTES}-byte limit; send smaller chunks (20-100 ms is typical)", "audio")
    try:
        x = decode_samples(data, sample_format)
    except AudioFormatError as e:
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"audio chunk dropped: {e}", "audio") from None
    bad = ~np.isfinite(x)
    if bad.any():
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"audio chunk dropped: {int(bad.sum())} of {len(x)} samples "
                            "are NaN or Inf", "audio")
    over = np.abs(x) > 1.0
    n = int(over.sum())
    if n:
        x = np.clip(x, -1.0, 1.0)
    return AudioCheck(audio=x, n_clipped=n)


# ----------------------------------------------------------------------------------------------
# Server -> client messages

def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def error_json(code: str, message: str, ref: str | None = None) -> str:
    obj = {"type": "error", "code": code, "message": message}
    if ref:
        obj["ref"] = ref
    return _dumps(obj)


def warning_json(code: str, message: str, session: str | None = None) -> str:
    obj = {"type": "warning", "code": code, "message": message}
    if session is not None:
        obj["session"] = session
    return _dumps(obj)


def event_json(type_: str, **fields) -> str:
    """Any other server message: ``{"type": type_, **fields}`` (NaN-free, compact)."""
    return _dumps({"type": type_, **fields})


def hello_json(sessions: list[str], auth_required: bool, limits: dict | None = None,
               version: int = PROTOCOL_VERSION) -> str:
    """The server's greeting; ``limits``: its admission limits and sessions in use (see Admission.as_dict);
    ``version``: the one the client asked for (``versions`` lists all this server speaks)."""
    extra = {} if limits is None else {"limits": limits}
    return event_json("hello", version=version, versions=list(SUPPORTED_VERSIONS), server=SERVER_NAME, fps=FPS,
                      sample_rate=SAMPLE_RATE, frame_dim=FRAME_DIM, frame_bytes=FRAME_BYTES,
                      sessions=sessions, auth_required=auth_required,
                      max_text_bytes=MAX_TEXT_BYTES, max_audio_bytes=MAX_AUDIO_BYTES, **extra)


@dataclass
class WireFrame:
    """One frame as sent on the wire. Times are server wall-clock ``time.time()`` seconds.

    audio_arrival_time: when the audio at this frame's instant (``t_audio_s``) reached the server
        (NaN when the frame shows no audio: idle or text-only);
    input_ready_time: when the last audio this frame depends on reached the server, i.e. when the
        frame could first be computed (NaN when there was none).
    """
    session: str
    session_num: int
    seq: int
    t_audio_s: float
    params: np.ndarray                  # (56,) float32
    server_send_time: float = math.nan
    audio_arrival_time: float = math.nan
    input_ready_time: float = math.nan
    style: str = ""
    final: bool = False
    # (retarget, weights (52,), head_rot (3,)) once some encoder converted this frame to ARKit: the WebSocket
    # subscribers, MQTT and other listeners of one published frame share one conversion
    arkit_cache: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def expression(self) -> np.ndarray:
        return self.params[EXP]

    @property
    def head_pose(self) -> np.ndarray:
        return self.params[HEAD]

    @property
    def jaw_pose(self) -> np.ndarray:
        return self.params[JAW]


def _opt_time(x: float):
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def encode_frame_json(f: WireFrame) -> str:
    p = np.asarray(f.params, np.float32)
    obj = {"type": "frame", "session": f.session, "seq": int(f.seq), "t_audio_s": round(float(f.t_audio_s), 6),
           "server_send_time": _opt_time(f.server_send_time),
           "audio_arrival_time": _opt_time(f.audio_arrival_time),
           "input_ready_time": _opt_time(f.input_ready_time),
           "expression": [round(float(v), 6) for v in p[EXP]],
           "head_pose": [round(float(v), 6) for v in p[HEAD]],
           "jaw_pose": [round(float(v), 6) for v in p[JAW]],
           "style": f.style}
    if f.final:
        obj["final"] = True
    return _dumps(obj)


def encode_frame_binary(f: WireFrame) -> bytes:
    p = np.asarray(f.params, dtype="<f4").reshape(-1)
    if p.shape != (FRAME_DIM,):
        raise ValueError(f"frame params must be ({FRAME_DIM},), got {p.shape}")
    return FRAME_STRUCT.pack(FRAME_MAGIC, FRAME_LAYOUT_VERSION, FLAG_FINAL if f.final else 0, f.seq & 0xFFFFFFFF,
                             f.session_num & 0xFFFFFFFF, f.t_audio_s, f.server_send_time,
                             f.audio_arrival_time, f.input_ready_time, *p.tolist())


def decode_frame_binary(data: bytes, session: str = "") -> WireFrame:
    """Client side: 272 packed bytes -> :class:`WireFrame` (``session`` name is not on the wire)."""
    if len(data) != FRAME_BYTES:
        raise ValueError(f"binary frame must be {FRAME_BYTES} bytes, got {len(data)}")
    magic, ver, flags, seq, num, t, send, arr, ready, *p = FRAME_STRUCT.unpack(data)
    if magic != FRAME_MAGIC or ver != FRAME_LAYOUT_VERSION:
        raise ValueError(f"not an MMF1 frame (magic {magic!r}, version {ver})")
    return WireFrame(session=session, session_num=num, seq=seq, t_audio_s=t,
                     params=np.asarray(p, np.float32), server_send_time=send, audio_arrival_time=arr,
                     input_ready_time=ready, final=bool(flags & FLAG_FINAL))


def decode_frame_json(obj: dict | str) -> WireFrame:
    """Client side: a ``frame`` JSON message (text or parsed) -> :class:`WireFrame`."""
    if isinstance(obj, (str, bytes)):
        obj = json.loads(obj)
    nan = math.nan
    params = np.asarray(obj["expression"] + obj["head_pose"] + obj["jaw_pose"], np.float32)
    g = lambda k: nan if obj.get(k) is None else float(obj[k])  # noqa: E731
    return WireFrame(session=obj["session"], session_num=-1, seq=int(obj["seq"]), t_audio_s=float(obj["t_audio_s"]),
                     params=params, server_send_time=g("server_send_time"), audio_arrival_time=g("audio_arrival_time"),
                     input_ready_time=g("input_ready_time"), style=obj.get("style", ""), final=bool(obj.get("final")))


# ----------------------------------------------------------------------------------------------
# Session audio out (v2 addition): what a session consumed, for subscribers that play it in sync

@dataclass
class AudioOutChunk:
    """One ``MMAU`` message. ``audio_16k: (samples,) float32`` in [-1, 1] (PCM16 on the wire);
    ``start_sample``: session-clock index of its first sample; ``t_audio_s``: the frames' time of that sample."""
    session_num: int
    start_sample: int
    t_audio_s: float
    audio_16k: np.ndarray
    sample_rate: int = SAMPLE_RATE


def encode_audio_out(session_num: int, start_sample: int, t_audio_s: float, audio_16k: np.ndarray) -> bytes:
    """``audio_16k: (samples,) float32`` in [-1, 1] -> one ``MMAU`` message (PCM16, rounded, clipped)."""
    pcm = np.clip(np.round(np.asarray(audio_16k, np.float32).reshape(-1) * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1)
    return AUDIO_OUT_HEADER.pack(AUDIO_OUT_MAGIC, AUDIO_OUT_LAYOUT_VERSION, 0, SAMPLE_RATE, session_num & 0xFFFFFFFF,
                                 float(t_audio_s), int(start_sample)) + pcm.astype("<i2").tobytes()


def decode_audio_out(data: bytes) -> AudioOutChunk:
    """Client side: one ``MMAU`` message -> :class:`AudioOutChunk`."""
    if len(data) < AUDIO_OUT_HEADER_BYTES or (len(data) - AUDIO_OUT_HEADER_BYTES) % 2:
        raise ValueError(f"an MMAU message is a {AUDIO_OUT_HEADER_BYTES}-byte header and whole PCM16 samples, "
                         f"got {len(data)} bytes")
    magic, ver, _flags, rate, num, t, start = AUDIO_OUT_HEADER.unpack_from(data)
    if magic != AUDIO_OUT_MAGIC or ver != AUDIO_OUT_LAYOUT_VERSION:
        raise ValueError(f"not an MMAU message (magic {magic!r}, version {ver})")
    pcm = np.frombuffer(data, "<i2", offset=AUDIO_OUT_HEADER_BYTES)
    return AudioOutChunk(session_num=num, start_sample=start, t_audio_s=t,
                         audio_16k=pcm.astype(np.float32) / PCM16_SCALE, sample_rate=rate)


# ----------------------------------------------------------------------------------------------
# ARKit frames (v2): the same frame as ARKit-52 weights and head yaw/pitch/roll (docs/arkit.md)

@dataclass
class ArkitWireFrame:
    """Client side: one decoded ARKit frame. weights: (52,) float32 in ARKIT_NAMES order; head_rot: (3,)
    float32 rad yaw, pitch, roll; times as in :class:`WireFrame`."""
    session: str
    session_num: int
    seq: int
    t_audio_s: float
    weights: np.ndarray
    head_rot: np.ndarray
    server_send_time: float = math.nan
    audio_arrival_time: float = math.nan
    input_ready_time: float = math.nan
    style: str = ""
    final: bool = False


def arkit_subscribed_fields(retarget) -> dict:
    """What an ARKit subscription's ``subscribed`` reply adds: the names (sent once, then frames carry
    bare arrays in this order), the map's version and the head rotation's order."""
    from mm2face.engine.arkit import ARKIT_NAMES, HEAD_ROT_NAMES
    return {"arkit_names": list(ARKIT_NAMES), "arkit_map": retarget.version, "head_rot_order": list(HEAD_ROT_NAMES)}


def encode_frame_arkit_json(f: WireFrame, weights: np.ndarray, head_rot: np.ndarray) -> str:
    obj = {"type": "frame", "session": f.session, "seq": int(f.seq), "t_audio_s": round(float(f.t_audio_s), 6),
           "server_send_time": _opt_time(f.server_send_time),
           "audio_arrival_time": _opt_time(f.audio_arrival_time),
           "input_ready_time": _opt_time(f.input_ready_time),
           "arkit": [round(float(v), 5) for v in weights],
           "head_rot": [round(float(v), 6) for v in head_rot],
           "style": f.style}
    if f.final:
        obj["final"] = True
    return _dumps(obj)


def encode_frame_arkit_binary(f: WireFrame, weights: np.ndarray, head_rot: np.ndarray) -> bytes:
    return ARKIT_FRAME_STRUCT.pack(ARKIT_FRAME_MAGIC, ARKIT_LAYOUT_VERSION, FLAG_FINAL if f.final else 0,
                                   f.seq & 0xFFFFFFFF, f.session_num & 0xFFFFFFFF, f.t_audio_s, f.server_send_time,
                                   f.audio_arrival_time, f.input_ready_time,
                                   *np.asarray(weights, "<f4").tolist(), *np.asarray(head_rot, "<f4").tolist())


def decode_frame_arkit_binary(data: bytes, session: str = "") -> ArkitWireFrame:
    """Client side: 268 packed bytes of an ``arkit-binary`` frame -> :class:`ArkitWireFrame`."""
    if len(data) != ARKIT_FRAME_BYTES:
        raise ValueError(f"ARKit binary frame must be {ARKIT_FRAME_BYTES} bytes, got {len(data)}")
    magic, ver, flags, seq, num, t, send, arr, ready, *v = ARKIT_FRAME_STRUCT.unpack(data)
    if magic != ARKIT_FRAME_MAGIC or ver != ARKIT_LAYOUT_VERSION:
        raise ValueError(f"not an MMA1 frame (magic {magic!r}, version {ver})")
    return ArkitWireFrame(session=session, session_num=num, seq=seq, t_audio_s=t, weights=np.asarray(v[:52], np.float32),
                          head_rot=np.asarray(v[52:], np.float32), server_send_time=send, audio_arrival_time=arr,
                          input_ready_time=ready, final=bool(flags & FLAG_FINAL))


def decode_frame_arkit_json(obj: dict | str) -> ArkitWireFrame:
    """Client side: an ARKit ``frame`` JSON message (text or parsed) -> :class:`ArkitWireFrame`."""
    if isinstance(obj, (str, bytes)):
        obj = json.loads(obj)
    g = lambda k: math.nan if obj.get(k) is None else float(obj[k])  # noqa: E731
    return ArkitWireFrame(session=obj["session"], session_num=-1, seq=int(obj["seq"]), t_audio_s=float(obj["t_audio_s"]),
                          weights=np.asarray(obj["arkit"], np.float32), head_rot=np.asarray(obj["head_rot"], np.float32),
                          server_send_time=g("server_send_time"), audio_arrival_time=g("audio_arrival_time"),
                          input_ready_time=g("input_ready_time"), style=obj.get("style", ""), final=bool(obj.get("final")))


class FrameBatchEncoder:
    """Encodes one batch of frames for any number of subscribers: each format at most once, and the ARKit
    conversion (one matrix product for the whole batch) at most once, whichever ARKit formats are asked for.

    ``retarget``: the :class:`~mm2face.engine.arkit.LinearRetarget` (None = the stand-in map)."""

    def __init__(self, frames: list[WireFrame], retarget=None):
        self.frames, self.retarget = frames, retarget
        self._encoded: dict[str, list] = {}
        self._arkit = None

    def arkit(self):
        """The batch as :class:`~mm2face.engine.arkit.ArkitFrames` (computed on first use, or taken from the
        frames' ``arkit_cache`` when another encoder converted them with the same map)."""
        if self._arkit is None:
            from mm2face.engine.arkit import ArkitFrames, to_arkit
            cached = [f.arkit_cache for f in self.frames]
            if self.frames and all(c is not None and c[0] is self.retarget for c in cached):
                self._arkit = ArkitFrames(weights=np.stack([c[1] for c in cached]),
                                          head_rot=np.stack([c[2] for c in cached]))
            else:
                self._arkit = to_arkit(np.stack([f.params for f in self.frames]), self.retarget)
                for i, f in enumerate(self.frames):
                    f.arkit_cache = (self.retarget, self._arkit.weights[i], self._arkit.head_rot[i])
        return self._arkit

    def get(self, fmt: str) -> list:
        if fmt not in self._encoded:
            if fmt == "json":
                self._encoded[fmt] = [encode_frame_json(f) for f in self.frames]
            elif fmt == "binary":
                self._encoded[fmt] = [encode_frame_binary(f) for f in self.frames]
            elif fmt in ARKIT_FORMATS:
                a = self.arkit()
                enc = encode_frame_arkit_json if fmt == "arkit" else encode_frame_arkit_binary
                self._encoded[fmt] = [enc(f, a.weights[i], a.head_rot[i]) for i, f in enumerate(self.frames)]
            else:
                raise ValueError(f"unknown frame format {fmt!r}; one of {list(FRAME_FORMATS)}")
        return self._encoded[fmt]


def needs_token(msg) -> bool:
    return isinstance(msg, CONTROL_TYPES)
