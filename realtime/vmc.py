"""VMC protocol (Virtual Motion Capture, OSC over UDP): one OSC bundle per frame, encoded from frames.

Receivers (VSeeFace, VMagicMirror, Warudo, VNyan, the EVMC4U Unity package) listen on UDP 39539 by
default. Each bundle (timetag "immediately") holds, in this order:

==============================  =========  =================================================================
address                         types      arguments
==============================  =========  =================================================================
``/VMC/Ext/Bone/Pos``           ``sfffffff``  ``"Neck"``, local position x y z (m), local rotation x y z w
``/VMC/Ext/Bone/Pos``           ``sfffffff``  ``"Head"``, the same
``/VMC/Ext/Blend/Val``          ``sf``     ARKit name with its first letter capitalised (VSeeFace's "perfect
                                           sync" names, e.g. ``"JawOpen"``), weight in [0, 1]; 52 of them
``/VMC/Ext/Blend/Apply``        (none)     after the values: the receiver applies them together
``/VMC/Ext/OK``                 ``i``      1 (a model is loaded and sending)
``/VMC/Ext/T``                  ``f``      the frame's audio time ``t_audio_s`` (s)
==============================  =========  =================================================================

Axes. Bone rotations are local rotations in Unity's left-handed frame of a humanoid facing +Z
(x = the avatar's right, y = up, z = forward). The model's head pose is an axis-angle rotation in
FLAME's right-handed frame (x = the subject's left, y = up, z = forward, out of the face). Going
from one to the other mirrors x, so a rotation vector ``(rx, ry, rz)`` becomes ``(rx, -ry, -rz)``
(a rotation vector is a pseudo-vector: mirrored, then negated) and the quaternion ``(x, y, z, w)``
becomes ``(x, -y, -z, w)``. A positive FLAME yaw turns the face toward the subject's left, which in
Unity is a negative rotation about +y. The rotation is split between the two bones, ``NECK_SHARE``
to the neck and the rest to the head, about the same axis, so neck then head compose to the
whole rotation. Positions are the bones' rest offsets from their parents (:data:`NECK_LOCAL_POS_M`,
:data:`HEAD_LOCAL_POS_M`, typical adult proportions), for receivers that apply bone positions.

The bundle is built once with python-osc; a frame writes its big-endian floats into a copy of that
template at known offsets, so encoding stays far below a millisecond.
"""
from __future__ import annotations

import numpy as np
from pythonosc import osc_bundle_builder, osc_message_builder

from mm2face.engine.arkit import ARKIT_NAMES

DEFAULT_PORT = 39539                        # the VMC protocol's default receiver ("marionette") port
ADDR_BONE = "/VMC/Ext/Bone/Pos"
ADDR_BLEND = "/VMC/Ext/Blend/Val"
ADDR_APPLY = "/VMC/Ext/Blend/Apply"
ADDR_OK = "/VMC/Ext/OK"
ADDR_TIME = "/VMC/Ext/T"
OK_LOADED = 1                               # /VMC/Ext/OK: 1 = a model is loaded and data is being sent
NECK_SHARE = 0.5                            # share of the head rotation given to the Neck bone (rest: Head)
NECK_LOCAL_POS_M = (0.0, 0.1, 0.0)          # Neck's rest offset from its parent (upper chest), m, Unity axes
HEAD_LOCAL_POS_M = (0.0, 0.08, 0.0)         # Head's rest offset from the Neck, m, Unity axes
FLAME_TO_UNITY_ROTVEC = np.array([1.0, -1.0, -1.0])   # mirror x: rotation vector (rx, ry, rz) -> (rx, -ry, -rz)
MIN_ANGLE_RAD = 1e-8                        # below this a rotation is the identity


def perfect_sync_name(arkit_name: str) -> str:
    """ARKit name -> VSeeFace "perfect sync" blendshape name: the first letter capitalised."""
    return arkit_name[:1].upper() + arkit_name[1:]


BLEND_NAMES = tuple(perfect_sync_name(n) for n in ARKIT_NAMES)


def quat_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle ``rotvec: (3,)`` rad -> unit quaternion ``(x, y, z, w)``."""
    rotvec = np.asarray(rotvec, np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < MIN_ANGLE_RAD:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


def head_bone_rotations(head_rotvec_flame: np.ndarray, neck_share: float = NECK_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """FLAME head pose ``(3,)`` axis-angle rad -> ``(neck, head)`` local rotations, unit quaternions
    ``(x, y, z, w)`` in Unity's frame; neck followed by head is the whole rotation."""
    r = np.asarray(head_rotvec_flame, np.float64) * FLAME_TO_UNITY_ROTVEC
    return quat_from_rotvec(r * neck_share), quat_from_rotvec(r * (1.0 - neck_share))


def _message(address: str, *args) -> osc_message_builder.OscMessage:
    b = osc_message_builder.OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build()


class VmcEncoder:
    """Encodes frames as VMC bundles (see the module docstring for the content and axes)."""

    def __init__(self, blend_names=BLEND_NAMES, neck_share: float = NECK_SHARE):
        if not 0.0 <= neck_share <= 1.0:
            raise ValueError(f"neck_share must be in [0, 1], got {neck_share}")
        self.blend_names, self.neck_share = tuple(blend_names), float(neck_share)
        msgs = [_message(ADDR_BONE, "Neck", *map(float, NECK_LOCAL_POS_M), 0.0, 0.0, 0.0, 1.0),
                _message(ADDR_BONE, "Head", *map(float, HEAD_LOCAL_POS_M), 0.0, 0.0, 0.0, 1.0)]
        msgs += [_message(ADDR_BLEND, name, 0.0) for name in self.blend_names]
        msgs += [_message(ADDR_APPLY), _message(ADDR_OK, OK_LOADED), _message(ADDR_TIME, 0.0)]
        bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
        for m in msgs:
            bundle.add_content(m)
        self._template = bundle.build().dgram
        # Where each float goes: an element is a 4-byte size then the message, whose float
        # arguments are its last bytes. Bundle header: "#bundle\0" + 8-byte timetag.
        ends, pos = [], 16
        for m in msgs:
            size = int.from_bytes(self._template[pos:pos + 4], "big")
            assert size == len(m.dgram), "python-osc bundle layout changed"
            pos += 4 + size
            ends.append(pos)
        assert pos == len(self._template)
        n_blend = len(self.blend_names)
        quat_slots = [ends[i] - 16 + 4 * j for i in (0, 1) for j in range(4)]          # x y z w of Neck, Head
        blend_slots = [ends[2 + i] - 4 for i in range(n_blend)]
        time_slot = [ends[-1] - 4]
        starts = np.asarray(quat_slots + blend_slots + time_slot, np.intp)
        self._index = (starts[:, None] + np.arange(4)).reshape(-1)                     # byte positions
        self.n_values = len(starts)
        self.n_blend = n_blend

    def encode(self, t_audio_s: float, weights: np.ndarray, head_rotvec: np.ndarray) -> bytes:
        """One bundle: ``weights: (52,)`` in [0, 1], ``head_rotvec: (3,)`` FLAME axis-angle rad, at ``t_audio_s``."""
        if len(weights) != self.n_blend:
            raise ValueError(f"expected {self.n_blend} blendshape weights, got {len(weights)}")
        neck, head = head_bone_rotations(head_rotvec, self.neck_share)
        values = np.concatenate([neck, head, np.asarray(weights, np.float64), [t_audio_s]]).astype(">f4")
        buf = np.frombuffer(self._template, np.uint8).copy()
        buf[self._index] = values.view(np.uint8)
        return buf.tobytes()
