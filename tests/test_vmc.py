"""VMC protocol sender: bundles parsed by python-osc, head/neck rotations checked against the axes
the protocol uses (Unity: left-handed, y up, the avatar facing +z), and a real mm2face-live run
received by a real python-osc OSC server (resampled to 60 fps)."""
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_server import BlockingOSCUDPServer

from mm2face.engine.arkit import ARKIT_NAMES, to_arkit
from mm2face.realtime import vmc
from mm2face.realtime.sources import DEMO_WAV

LIVE = [sys.executable, "-m", "mm2face.realtime.cli"]
CLIP_S = 3.0                 # seconds of the bundled demo speech the CLI test streams
OUT_FPS = 60
RCVBUF_BYTES = 8 << 20


def quat_mul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])


def quat_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotvec_matrix(r):
    """Rodrigues, right-handed (FLAME's axes)."""
    a = np.linalg.norm(r)
    if a < 1e-12:
        return np.eye(3)
    k = r / a
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def test_head_rotation_in_unity_axes():
    # FLAME: +x the subject's left, +y up, +z out of the face. Unity avatar: +x its right, +y up, +z forward.
    mirror = np.diag([-1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    for r in list(rng.uniform(-0.6, 0.6, (20, 3))) + [np.zeros(3)]:
        neck, head = vmc.head_bone_rotations(r)
        assert np.linalg.norm(neck) == pytest.approx(1) and np.linalg.norm(head) == pytest.approx(1)
        whole = quat_mul(neck, head)                      # Head is the Neck's child: neck then head
        # the same physical rotation, seen in the mirrored frame
        np.testing.assert_allclose(quat_matrix(whole), mirror @ rotvec_matrix(r) @ mirror, atol=1e-9)
        np.testing.assert_allclose(neck, head, atol=1e-12)   # half each
    # yaw: FLAME +y turns the face toward the subject's left = Unity -x
    neck, head = vmc.head_bone_rotations(np.array([0.0, 0.4, 0.0]))
    nose = quat_matrix(quat_mul(neck, head)) @ [0, 0, 1]
    assert nose[0] < -0.3
    # pitch: FLAME +x tilts the head down (nose toward -y), in Unity too
    neck, head = vmc.head_bone_rotations(np.array([0.4, 0.0, 0.0]))
    assert (quat_matrix(quat_mul(neck, head)) @ [0, 0, 1])[1] < -0.3


def test_bundle_content_and_order():
    enc = vmc.VmcEncoder()
    w = np.linspace(0, 1, 52, dtype=np.float32)
    b = OscBundle(enc.encode(1.28, w, np.array([0.1, -0.2, 0.05])))
    msgs = [b.content(i) for i in range(b.num_contents)]
    addrs = [m.address for m in msgs]
    assert addrs == [vmc.ADDR_BONE] * 2 + [vmc.ADDR_BLEND] * 52 + [vmc.ADDR_APPLY, vmc.ADDR_OK, vmc.ADDR_TIME]
    assert [m.params[0] for m in msgs[:2]] == ["Neck", "Head"]
    names = [m.params[0] for m in msgs[2:54]]
    assert names == [n[0].upper() + n[1:] for n in ARKIT_NAMES] and "JawOpen" in names and "EyeBlinkLeft" in names
    np.testing.assert_allclose([m.params[1] for m in msgs[2:54]], w, atol=1e-7)
    neck, head = vmc.head_bone_rotations(np.array([0.1, -0.2, 0.05]))
    np.testing.assert_allclose(msgs[0].params[4:], neck, atol=1e-7)
    np.testing.assert_allclose(msgs[1].params[4:], head, atol=1e-7)
    assert msgs[0].params[1:4] == pytest.approx(vmc.NECK_LOCAL_POS_M)
    assert msgs[-2].params == [1] and msgs[-1].params == [pytest.approx(1.28)]
    # the template is copied, not shared: an earlier bundle keeps its values
    first = enc.encode(0.0, np.zeros(52, np.float32), np.zeros(3))
    enc.encode(0.04, np.ones(52, np.float32), np.zeros(3))
    assert OscBundle(first).content(2).params[1] == 0.0


class OscReceiver:
    """A python-osc UDP server (one thread, datagrams handled in arrival order) recording every message."""

    def __init__(self):
        self.messages: list[tuple[str, list]] = []
        d = Dispatcher()
        d.set_default_handler(lambda address, *args: self.messages.append((address, list(args))))
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), d)
        # room for a burst of ~3 KB bundles while the handler thread catches up (FORCE needs root)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            try:
                self.server.socket.setsockopt(socket.SOL_SOCKET, opt, RCVBUF_BYTES)
                break
            except (OSError, TypeError):
                continue
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mm2face_live_vmc_resampled_to_60_fps(tmp_path):
    audio, rate = sf.read(str(DEMO_WAV), dtype="float32")
    clip = tmp_path / "speech.wav"
    sf.write(clip, audio[: int(CLIP_S * rate)], rate)
    rec = tmp_path / "rec.npz"
    rx = OscReceiver()
    try:
        r = subprocess.run(LIVE + ["--wav", str(clip), "--vmc", f"127.0.0.1:{rx.port}", "--vmc-fps", str(OUT_FPS),
                                   "--quiet", "--threads", "1", "--record", str(rec)],
                           capture_output=True, text=True, timeout=170)
    finally:
        rx.close()
    assert r.returncode == 0, r.stderr
    assert f"VMC to 127.0.0.1:{rx.port} at {OUT_FPS} fps" in r.stderr
    with np.load(rec) as z:
        motion = z["motion"]
    msgs = rx.messages
    # frames: the messages up to and including each /VMC/Ext/T
    frames, cur = [], []
    for m in msgs:
        cur.append(m)
        if m[0] == vmc.ADDR_TIME:
            frames.append(cur)
            cur = []
    assert not cur
    times = np.array([f[-1][1][0] for f in frames])
    # 60 per second of audio, every tick from 0 to the last recorded frame's time
    last_t = (len(motion) - 1) / 25
    np.testing.assert_allclose(times, np.arange(len(times)) / OUT_FPS, atol=1e-6)
    assert len(times) == int(np.floor(last_t * OUT_FPS + 1e-6)) + 1
    ak = to_arkit(motion)
    t_in = np.arange(len(motion)) / 25
    for i, f in enumerate(frames):
        addrs = [a for a, _ in f]
        assert addrs == [vmc.ADDR_BONE] * 2 + [vmc.ADDR_BLEND] * 52 + [vmc.ADDR_APPLY, vmc.ADDR_OK, vmc.ADDR_TIME]
        blend = dict(args for a, args in f if a == vmc.ADDR_BLEND)
        assert list(blend) == list(vmc.BLEND_NAMES)
        # linear interpolation of the recorded frames' weights at the tick's audio time
        want = [np.interp(times[i], t_in, ak.weights[:, j]) for j in range(52)]
        np.testing.assert_allclose([blend[n] for n in vmc.BLEND_NAMES], want, atol=2e-6)
        bones = {args[0]: np.array(args[1:]) for a, args in f if a == vmc.ADDR_BONE}
        assert set(bones) == {"Neck", "Head"}
        for b in bones.values():
            assert np.linalg.norm(b[3:]) == pytest.approx(1, abs=1e-6)
        assert f[-2] == (vmc.ADDR_OK, [1])
    jaw = np.array([dict(args for a, args in f if a == vmc.ADDR_BLEND)["JawOpen"] for f in frames])
    assert jaw.max() > 0.2 and jaw.min() < 0.05
