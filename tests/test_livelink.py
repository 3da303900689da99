"""Unreal Live Link Face sender: packets checked by a decoder written here from the published layout
(Unreal's AppleARKitLiveLinkSource, as read by public parsers: uint8 version, int32-length strings
for device id and subject, int32 frame, float32 subframe, int32 rate numerator/denominator, uint8
count, 61 float32 curves; all big-endian), and a real mm2face-live run received on a UDP socket."""
import socket
import struct
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
import soundfile as sf

from mm2face.engine.arkit import ARKIT_NAMES, to_arkit
from mm2face.realtime import livelink as LL
from mm2face.realtime.sources import DEMO_WAV

LIVE = [sys.executable, "-m", "mm2face.realtime.cli"]
CLIP_S = 3.0                   # seconds of the bundled demo speech the CLI test streams


def decode_live_link_face(packet: bytes) -> dict:
    """Decode one packet by the published layout (independent of realtime/livelink.py)."""
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, packet, pos)
        pos += struct.calcsize(fmt)
        return vals

    def string():
        (n,) = take("!i")
        assert 0 <= n <= len(packet) - pos, f"string length {n} runs past the packet"
        return take(f"!{n}s")[0].decode("utf-8")

    assert 264 <= len(packet) <= 774, f"{len(packet)} bytes: outside the sizes Unreal accepts"
    (version,) = take("!B")
    device, subject = string(), string()
    frame, subframe, num, den = take("!ifii")
    (count,) = take("!B")
    curves = np.array(take(f"!{count}f"), np.float32)
    assert pos == len(packet), f"{len(packet) - pos} bytes left after the curves"
    return dict(version=version, device=device, subject=subject, frame=frame, subframe=subframe,
                fps=num, den=den, curves=curves)


class UdpCollector:
    """Receives every datagram on a loopback port chosen by the OS, in a thread, until closed."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.packets.append(self.sock.recv(65536))
            except socket.timeout:
                continue

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def test_packet_layout_by_the_published_format():
    enc = LL.LiveLinkEncoder("Avatar ü")
    curves = np.arange(LL.N_CURVES, dtype=np.float32) / 100
    pkt = enc.encode(37 / 25, curves)
    d = decode_live_link_face(pkt)
    assert d["version"] == 6 and d["subject"] == "Avatar ü"
    assert str(uuid.UUID(d["device"])).upper() == d["device"] and len(d["device"]) == 36
    assert (d["frame"], d["subframe"], d["fps"], d["den"]) == (37, 0.0, 25, 1)
    np.testing.assert_array_equal(d["curves"], curves)
    assert len(pkt) == LL.FIXED_BYTES + len("Avatar ü".encode())
    # the same bytes as senders that write a little-endian uint32 version then "$" + UUID
    assert pkt[:5] == struct.pack("<I", 6) + b"$"
    # between grid points: the subframe carries the fraction
    d = decode_live_link_face(enc.encode(2.51 / 25, curves))
    assert d["frame"] == 2 and d["subframe"] == pytest.approx(0.51, abs=1e-5)
    # a device id is fixed per subject, different between subjects
    assert LL.LiveLinkEncoder("Avatar ü").device_id == enc.device_id != LL.LiveLinkEncoder("other").device_id


def test_bad_subject_names_are_refused_with_the_limit():
    with pytest.raises(LL.LiveLinkError, match="empty"):
        LL.LiveLinkEncoder(" ")
    with pytest.raises(LL.LiveLinkError, match="at most 468"):
        LL.LiveLinkEncoder("x" * 469)
    decode_live_link_face(LL.LiveLinkEncoder("x" * 468).encode(0.0, np.zeros(61, np.float32)))   # the largest fits


def test_curves_carry_arkit_then_head_then_zero_eyes():
    w = np.linspace(0, 1, 52, dtype=np.float32)
    c = LL.curves_from_arkit(w, np.array([0.1, -0.2, 0.3], np.float32))
    np.testing.assert_array_equal(c[:52], w)
    np.testing.assert_allclose(c[52:55], [0.1, -0.2, 0.3])
    assert not c[55:].any()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mm2face_live_sends_every_frame_on_the_audio_clock(tmp_path):
    """A real CLI run: demo speech in, Live Link Face packets out, one per frame, numbered by audio time."""
    audio, rate = sf.read(str(DEMO_WAV), dtype="float32")
    clip = tmp_path / "speech.wav"
    sf.write(clip, audio[: int(CLIP_S * rate)], rate)
    rec = tmp_path / "rec.npz"
    rx = UdpCollector()
    try:
        r = subprocess.run(LIVE + ["--wav", str(clip), "--livelink", f"127.0.0.1:{rx.port}", "--livelink-subject",
                                   "TestFace", "--quiet", "--threads", "1", "--record", str(rec)],
                           capture_output=True, text=True, timeout=170)
    finally:
        rx.close()
    assert r.returncode == 0, r.stderr
    assert f"Live Link Face to 127.0.0.1:{rx.port} at 25 fps" in r.stderr
    with np.load(rec) as z:
        motion = z["motion"]
    pk = [decode_live_link_face(p) for p in rx.packets]
    assert len(pk) == len(motion) >= CLIP_S * 25
    assert {(p["version"], p["subject"], p["device"], p["fps"], p["den"], len(p["curves"])) for p in pk} == \
        {(6, "TestFace", LL.device_id_for("TestFace"), 25, 1, 61)}
    # frame k shows the audio at k / 25 s: consecutive numbers from 0, no subframes
    assert [p["frame"] for p in pk] == list(range(len(motion)))
    assert all(p["subframe"] == 0.0 for p in pk)
    # the curves are the recorded frames' ARKit weights and head rotation
    curves = np.stack([p["curves"] for p in pk])
    ak = to_arkit(motion)
    np.testing.assert_allclose(curves[:, :52], ak.weights, atol=1e-6)
    np.testing.assert_allclose(curves[:, 52:55], ak.head_rot, atol=1e-6)
    assert not curves[:, 55:].any()
    # jawOpen moves with the speech: open while it is loud, closed in the pauses
    jaw = curves[:, ARKIT_NAMES.index("jawOpen")]
    n = min(len(jaw), int(CLIP_S * 25))
    rms = np.sqrt((audio[: n * rate // 25].reshape(n, -1) ** 2).mean(axis=1))
    loud, quiet = rms > np.percentile(rms, 60), rms <= np.percentile(rms, 20)
    assert jaw.max() > 0.2
    assert jaw[:n][loud].mean() > jaw[:n][quiet].mean() + 0.05
    assert np.corrcoef(jaw[:n], rms)[0, 1] > 0.3
