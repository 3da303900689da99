"""mm2face-live as users run it (subprocesses), and the reference client in examples/."""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mm2face.realtime.sources import DEMO_WAV

ROOT = Path(__file__).resolve().parents[1]
LIVE = [sys.executable, "-m", "mm2face.realtime.cli"]
pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_device_lists_devices_without_traceback():
    r = subprocess.run(LIVE + ["--mic", "--input-device", "no-such-microphone-xyz", "--random-model"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no-such-microphone-xyz" in r.stderr and "Traceback" not in r.stderr
    assert "input devices" in r.stderr or "no input devices" in r.stderr
    assert "deprecated" not in r.stderr


def test_old_device_spellings_still_work_with_a_deprecation_note():
    """Until 0.2: --device NAME that is no torch device is the audio input, --compute is --device."""
    r = subprocess.run(LIVE + ["--mic", "--device", "no-such-microphone-xyz", "--compute", "cpu", "--random-model"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "use --input-device 'no-such-microphone-xyz'" in r.stderr      # the old meaning, with the new spelling
    assert "--compute is deprecated" in r.stderr and "use --device" in r.stderr
    assert "could not find input device 'no-such-microphone-xyz'" in r.stderr   # and it was used as the microphone


def test_device_names_the_torch_device():
    from argparse import Namespace
    from mm2face.realtime.cli import build_parser, resolve_device_arguments
    for argv, device, mic in ((["--device", "cuda:1"], "cuda:1", None), ([], "cpu", None),
                              (["--device", "mps", "--input-device", "pulse"], "mps", "pulse"),
                              (["--device", "pulse"], "cpu", "pulse")):
        args = build_parser().parse_args(argv)
        notes = resolve_device_arguments(args)
        assert (args.device, args.input_device) == (device, mic), argv
        assert bool(notes) == (argv == ["--device", "pulse"])
    assert isinstance(args, Namespace)


def test_bad_arguments_are_explained():
    r = subprocess.run(LIVE + ["--loop"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--loop goes with" in r.stderr
    r = subprocess.run(LIVE + ["--wav", "/nonexistent.wav", "--random-model"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_wav_at_real_time_pace_records_every_frame(tmp_path):
    audio, rate = sf.read(str(DEMO_WAV), dtype="float32")
    clip = tmp_path / "two_s.wav"
    sf.write(clip, audio[: 2 * rate], rate)
    out = tmp_path / "rec.npz"
    t0 = time.time()
    r = subprocess.run(LIVE + ["--wav", str(clip), "--random-model", "--threads", "1", "--quiet", "--record", str(out)],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert time.time() - t0 >= 2.0                    # paced in real time, not as fast as possible
    with np.load(out) as z:
        motion = z["motion"]
    assert motion.shape[1] == 56 and 50 <= len(motion) <= 50 + 12   # 25 fps of audio + end() tail


def test_text_only_server_and_reference_client(tmp_path):
    port = free_port()
    proc = subprocess.Popen(LIVE + ["--serve", "--port", str(port), "--random-model", "--threads", "1", "--quiet",
                                    "--style", "a calm host"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline
            time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}"
        # The default session runs in text-only mode: frames with no audio behind them, on the 25 fps
        # clock. The client stops after a count of frames (its timeout only bounds a failure).
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "client.py"), "--url", url, "subscribe",
                            "--frames", "50", "--binary"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert lines[-1].startswith("50 frames;"), r.stdout
        shown = [line.split() for line in lines if line.startswith("seq ")]     # every 25th frame
        assert len(shown) == 2 and int(shown[1][1]) - int(shown[0][1]) == 25, r.stdout
        assert all(float(w[3]) == pytest.approx(int(w[1]) / 25, abs=0.006) for w in shown), r.stdout
        assert "audio-to-face n/a" in r.stdout               # idle frames have no audio arrival time
        # ARKit frames (protocol v2) from the same server, names from the subscribed reply
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "client.py"), "--url", url, "subscribe",
                            "--seconds", "1.2", "--arkit"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "jawOpen" in r.stdout and "strongest" in r.stdout, r.stdout
        # A client session: stream a 44.1 kHz file as fast as possible, get 25 fps of frames back.
        audio, rate = sf.read(str(DEMO_WAV), dtype="float32")
        clip = tmp_path / "a.wav"
        sf.write(clip, np.interp(np.arange(0, 3 * rate, rate / 44100), np.arange(len(audio)), audio).astype(np.float32),
                 44100)
        npy = tmp_path / "frames.npy"
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "client.py"), "--url", url, "stream", str(clip),
                            "--fast", "--out", str(npy), "--style", "cheerful"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert 75 <= np.load(npy).shape[0] <= 75 + 12
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_source_that_will_not_stop_costs_no_recording(tmp_path, monkeypatch, capfd):
    """After a stop, a task that ignores its cancellation is named, the recordings are still written within
    the shutdown wait, and mm2face-live exits (in-process, so the source can be a stuck one)."""
    import asyncio

    from mm2face.realtime import cli, sources

    class StuckSource:
        def __init__(self, *a, **k):
            pass

        async def __aiter__(self):
            try:
                while True:
                    await asyncio.sleep(0.04)
                    yield sources.Chunk(np.zeros(640, np.float32), 640, time.time())
            finally:
                try:
                    await asyncio.sleep(30)          # e.g. a driver that does not let go of the device
                except asyncio.CancelledError:
                    pass

    monkeypatch.setattr(sources, "WavSource", StuckSource)
    monkeypatch.setattr(cli, "SHUTDOWN_WAIT_S", 1.0)
    rec = tmp_path / "in.wav"
    t0 = time.time()
    code = cli.main(["--wav", str(DEMO_WAV), "--random-model", "--threads", "1", "--quiet", "--seconds", "1.5",
                     "--record-audio", str(rec)])
    err = capfd.readouterr().err
    assert code == 0 and time.time() - t0 < 25, err
    assert "audio source did not stop within 1 s" in err and "Thread" in err       # named, stacks dumped
    assert rec.exists() and sf.info(str(rec)).frames > 16000 // 2                    # ~1.5 s of input kept


def test_start_up_phases_stop_with_their_reason_before_the_model_loads(tmp_path, monkeypatch):
    from mm2face.realtime.cli import LiveRun, StartupFailed, build_parser, resolve_device_arguments
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    args = build_parser().parse_args(["--wav", str(bad), "--random-model"])
    resolve_device_arguments(args)
    run = LiveRun(args)
    run.plan()
    with pytest.raises(StartupFailed, match="could not read .*bad.wav as audio"):
        run.open_io()
    assert run.model is None and run.hub is None            # the slow phases never ran
    # --demo without a display: served, the bundled speech, and an MP4 at the end instead of a window
    for var in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    args = build_parser().parse_args(["--demo"])
    run = LiveRun(args)
    run.plan()
    assert run.demo_headless and args.serve and not args.view and args.wav == str(DEMO_WAV)
