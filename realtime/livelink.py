"""Unreal Live Link Face: the UDP packets of Epic's Live Link Face iPhone app, encoded from frames.

Unreal's Live Link plugin (the "Apple ARKit Face" source, UDP port 11111) reads one packet per frame
and shows the sender as a subject, as it does a phone. All numbers are big-endian (Unreal's archive
layout as the app writes it):

=========================  =====================  ==================================================
field                      type                   value sent by :class:`LiveLinkEncoder`
=========================  =====================  ==================================================
packet version             uint8                  6
device id                  int32 length + UTF-8   a UUID (36 characters), fixed per subject name
subject name               int32 length + UTF-8   ``--livelink-subject`` (default ``mm2face``)
frame number               int32                  ``round(t_audio_s * fps)``: the audio clock, not wall time
subframe                   float32                fraction of a frame (0 for frames on the 25 fps grid)
frame rate                 int32, int32           numerator 25, denominator 1
curve count                uint8                  61
curves                     61 x float32           52 ARKit weights in Apple order, then HeadYaw, HeadPitch,
                                                  HeadRoll, LeftEyeYaw, LeftEyePitch, LeftEyeRoll,
                                                  RightEyeYaw, RightEyePitch, RightEyeRoll (radians)
=========================  =====================  ==================================================

Other senders often write the first two fields as a little-endian uint32 6 followed by ``"$"`` and
the 36-character UUID: the same bytes, because ``"$"`` (0x24 = 36) is the low byte of the big-endian
length of the UUID. The packet is 306 bytes plus the subject name's UTF-8 length; Unreal accepts
264 to 774 bytes, which bounds the name (:data:`MAX_SUBJECT_BYTES`).

The head's rotation is sent as ArkitFrames' yaw/pitch/roll in radians; the eye curves are 0 (the
model drives no gaze). Bytes out, no sockets: the UDP sending lives in :mod:`mm2face.realtime.outputs`.
"""
from __future__ import annotations

import math
import struct
import uuid

import numpy as np

from mm2face.engine.arkit import N_ARKIT
from mm2face.engine.frame import FPS

DEFAULT_PORT = 11111                  # the Live Link Face app's default target port (Unreal's listener)
PACKET_VERSION = 6
EXTRA_CURVE_NAMES = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                     "RightEyeYaw", "RightEyePitch", "RightEyeRoll")     # after the 52 ARKit weights
N_CURVES = N_ARKIT + len(EXTRA_CURVE_NAMES)          # 61
HEAD_CURVES = slice(N_ARKIT, N_ARKIT + 3)            # HeadYaw, HeadPitch, HeadRoll (rad)
EYE_CURVES = slice(N_ARKIT + 3, N_CURVES)            # Left/RightEye Yaw, Pitch, Roll (rad): 0, no gaze model
MIN_PACKET_BYTES = 264                # Unreal's AppleARKitLiveLinkSource rejects smaller packets
MAX_PACKET_BYTES = 774                # ... and larger ones
DEVICE_ID_CHARS = 36                  # a UUID's text form
DEVICE_NAMESPACE = uuid.UUID("6f1f2b1e-3c55-4d0a-9a51-2e6d6d32666d")   # device ids: uuid5(this, subject)
SUBFRAME_EPS = 1e-6                   # a frame number within this of an integer is on the grid

_ID_STRUCT = struct.Struct("!Bi")                 # version, device id length
_LEN_STRUCT = struct.Struct("!i")
_BODY_STRUCT = struct.Struct(f"!ifiiB{N_CURVES}f")  # frame, subframe, fps num, den, count, curves
FIXED_BYTES = _ID_STRUCT.size + DEVICE_ID_CHARS + _LEN_STRUCT.size + _BODY_STRUCT.size   # 306: all but the name
MAX_SUBJECT_BYTES = MAX_PACKET_BYTES - FIXED_BYTES   # 468 bytes of UTF-8


class LiveLinkError(ValueError):
    """A Live Link Face packet or setting is malformed; the message says what to change."""


def device_id_for(subject: str) -> str:
    """The fixed device id (an uppercase 36-character UUID) this sender uses for ``subject``."""
    return str(uuid.uuid5(DEVICE_NAMESPACE, subject)).upper()


def frame_time(t_audio_s: float, fps: int = FPS) -> tuple[int, float]:
    """Audio time -> ``(frame number, subframe in [0, 1))`` at ``fps`` frames per second."""
    x = float(t_audio_s) * fps
    n = math.floor(x + SUBFRAME_EPS)
    sub = x - n
    return int(n), (0.0 if sub < SUBFRAME_EPS else float(sub))


def curves_from_arkit(weights: np.ndarray, head_rot: np.ndarray) -> np.ndarray:
    """``weights: (52,)`` ARKit in [0, 1] and ``head_rot: (3,)`` yaw, pitch, roll rad -> ``(61,) float32``."""
    out = np.zeros(N_CURVES, np.float32)
    out[:N_ARKIT] = weights
    out[HEAD_CURVES] = head_rot
    return out


class LiveLinkEncoder:
    """Encodes frames as Live Link Face packets for one subject. The header is built once; a frame
    costs one ``struct.pack``."""

    def __init__(self, subject: str = "mm2face", fps: int = FPS, device_id: str | None = None):
        if not subject or not subject.strip():
            raise LiveLinkError("the Live Link subject name is empty; pass a name, e.g. --livelink-subject mm2face")
        name = subject.encode("utf-8")
        if len(name) > MAX_SUBJECT_BYTES:
            raise LiveLinkError(f"the Live Link subject name is {len(name)} bytes of UTF-8; Unreal accepts at most "
                                f"{MAX_SUBJECT_BYTES} (packets over {MAX_PACKET_BYTES} bytes are dropped). Use a shorter name.")
        if int(fps) != fps or fps <= 0:
            raise LiveLinkError(f"Live Link frame rate must be a positive whole number, got {fps}")
        self.subject, self.fps = subject, int(fps)
        self.device_id = device_id or device_id_for(subject)
        dev = self.device_id.encode("utf-8")
        self._header = _ID_STRUCT.pack(PACKET_VERSION, len(dev)) + dev + _LEN_STRUCT.pack(len(name)) + name

    def encode(self, t_audio_s: float, curves: np.ndarray) -> bytes:
        """One packet: the frame at audio time ``t_audio_s`` with ``curves: (61,)`` values."""
        if len(curves) != N_CURVES:
            raise LiveLinkError(f"expected {N_CURVES} curves, got {len(curves)}")
        n, sub = frame_time(t_audio_s, self.fps)
        return self._header + _BODY_STRUCT.pack(n, sub, self.fps, 1, N_CURVES, *np.asarray(curves, np.float32).tolist())
