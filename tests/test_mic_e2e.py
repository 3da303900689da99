"""End to end through a real capture device: speech is played into a PulseAudio null sink while
``mm2face-live --mic --serve`` captures its monitor through PortAudio's ``pulse`` device (the ALSA
plugin of Debian's libasound2-plugins), and a WebSocket client checks the frames it receives.

Both PortAudio bindings of ``--audio-backend`` run here: sounddevice and PyAudio (built from source
by the test set-up, ``scripts/test.sh``; in CI a missing PyAudio fails the tests, elsewhere they skip
saying how to install it). The wiring test runs on a small random model (25 fps, contiguous frames,
audio arrival stamps, style from stdin). The speech test needs the trained default checkpoint and runs
once per binding: 25 fps, the mouth opens during speech and rests in pauses, a style message
mid-stream changes the expression after the blend with no jump larger than the model's normal
frame-to-frame motion, and a SIGTERM stops it cleanly (exit 0) with the captured audio written.
"""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import soundfile as sf

from mm2face.realtime.sources import DEMO_WAV

pytestmark = [pytest.mark.audio, pytest.mark.timeout(180)]


BACKENDS = ["sounddevice", "pyaudio"]
START_TIMEOUT_S = 90.0           # mm2face-live loading the default model: ~10 s alone, over 60 s at load 15


def require_backend(backend: str) -> None:
    """PyAudio is a test dependency (scripts/test.sh installs it): missing in CI is a failure; elsewhere
    the test skips, saying how to install it."""
    if backend != "pyaudio":
        return
    try:
        import pyaudio  # noqa: F401
    except ImportError as e:
        why = (f"PyAudio does not import ({e}); the test set-up installs it: "
               "MM2FACE_BOOTSTRAP_EXTRAS=test bash scripts/bootstrap.sh (or bash scripts/test.sh)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)


def _pulse_running(env) -> bool:
    return subprocess.run(["pactl", "info"], capture_output=True, env=env).returncode == 0


def _sink_state(sink, env) -> str:
    """PulseAudio's state of a sink: RUNNING, IDLE, SUSPENDED, or '' when there is no such sink."""
    out = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True, env=env).stdout
    return next((line.split()[-1] for line in out.splitlines() if line.split()[1:2] == [sink]), "")


@pytest.fixture(scope="module")
def pulse_source():
    """A PulseAudio null sink; yields (sink name, env for clients that should capture its monitor)."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("pulseaudio is not installed (apt-get install pulseaudio pulseaudio-utils)")
    env = dict(os.environ)
    started = False
    if not _pulse_running(env):
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1", "--system=false", "--disallow-exit"],
                       capture_output=True, env=env)
        deadline = time.time() + 10
        while not _pulse_running(env):
            if time.time() > deadline:
                pytest.fail("pulseaudio did not start (try: pulseaudio -D --exit-idle-time=-1 --system=false)")
            time.sleep(0.1)
        started = True
    sink = f"mm2face_test_{uuid.uuid4().hex[:6]}"
    mod = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={sink}"],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    old_default = subprocess.run(["pactl", "get-default-source"], capture_output=True, text=True, env=env).stdout.strip()
    subprocess.run(["pactl", "set-default-source", f"{sink}.monitor"], env=env, check=True)
    env["PULSE_SOURCE"] = f"{sink}.monitor"
    # Keep the sink playing (zeros) so its monitor delivers audio like a real microphone does;
    # an idle null sink is suspended and its monitor then delivers nothing at all.
    # Low latency matters: with no low-latency stream attached, a null sink renders (and its monitor
    # delivers) in blocks of up to 2 s.
    devzero = open("/dev/zero", "rb")
    zeros = subprocess.Popen(["pacat", "--playback", f"--device={sink}", "--raw", "--rate=16000", "--channels=1",
                              "--format=s16le", "--latency-msec=20"], stdin=devzero, env=env)
    # Ready once that stream plays (the sink RUNNING): until then the monitor delivers in 2 s blocks, and
    # on a loaded machine the first test saw 1.4 s of audio in 2.1 s.
    deadline = time.time() + 10
    while _sink_state(sink, env) != "RUNNING":
        if zeros.poll() is not None or time.time() > deadline:
            pytest.fail(f"the zeros stream into {sink} did not start playing (pacat exit code {zeros.poll()})")
        time.sleep(0.05)
    yield sink, env
    zeros.terminate()
    zeros.wait(timeout=5)
    devzero.close()
    if old_default:
        subprocess.run(["pactl", "set-default-source", old_default], capture_output=True, env=env)
    subprocess.run(["pactl", "unload-module", mod], capture_output=True, env=env)
    if started:
        subprocess.run(["pulseaudio", "--kill"], capture_output=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_live(env, port, *extra, backend="sounddevice"):
    cmd = [sys.executable, "-m", "mm2face.realtime.cli", "--mic", "--input-device", "pulse", "--audio-backend", backend,
           "--serve", "--port", str(port), "--threads", "1", "--quiet", *extra]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mm2face-live exited with {proc.returncode}: {proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"mm2face-live did not start serving within {START_TIMEOUT_S:.0f} s")


def stop_live(proc) -> str:
    """Stop mm2face-live; returns its stderr (for failure messages)."""
    proc.terminate()
    try:   # a loaded 2-core CI machine can take a while to drain the server and write recordings
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err += "\n[killed after 60 s without exiting]"
    return f"exit code {proc.returncode}; stderr: {err}"


async def collect(port, play_wav, sink, env, *, actions=(), tail_s=1.5, lead_s=1.0, timeout_s=120.0):
    """Subscribe, play ``play_wav`` into the sink after ``lead_s``, run ``actions`` [(t_after_play_start,
    fn(ws) coroutine)], and return (frames with receive times, wall time when playback started) once the
    stream's frames cover the clip and ``tail_s`` after it on the stream's own clock (``t_audio_s``; a
    loaded machine takes longer, never fewer frames). ``timeout_s`` only bounds a failure."""
    from websockets.asyncio.client import connect
    frames = []
    dur = sf.info(str(play_wav)).duration
    # The speech plays from PulseAudio's sample cache, not streamed by a client (paplay): a starved client
    # stream plays silence and then goes on, so on a loaded machine (load 12 on 2 cores) the monitor heard
    # the speech stretched with gaps, 11 s of it over up to 33 s.
    sample = f"{sink}_speech"
    subprocess.run(["pactl", "upload-sample", str(play_wav), sample], env=env, check=True)
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "format": "json"}))

        async def reader():
            async for raw in ws:
                m = json.loads(raw)
                if m.get("type") == "frame":
                    m["t_recv"] = time.time()
                    frames.append(m)
        task = asyncio.create_task(reader())
        await asyncio.sleep(lead_s)                    # the stream runs a while before the speech
        async with asyncio.timeout(timeout_s):
            while not frames:                          # (a loaded machine may still be warming up)
                await asyncio.sleep(0.05)
        t_play, t_audio_play = time.time(), frames[-1]["t_audio_s"]
        play = await asyncio.create_subprocess_exec("pactl", "play-sample", sample, sink, env=env)
        assert await play.wait() == 0, "pactl play-sample failed"
        for at, fn in actions:
            await asyncio.sleep(max(0.0, t_play + at - time.time()))
            await fn(ws)
        async with asyncio.timeout(timeout_s):         # until the frames show the clip and its tail
            while frames[-1]["t_audio_s"] < t_audio_play + dur + tail_s:
                await asyncio.sleep(0.05)
        task.cancel()
    subprocess.run(["pactl", "remove-sample", sample], env=env)
    return frames, t_play


def frame_rate(seqs, t_recv) -> float:
    """Frames per second of a stream: 1 / the Theil-Sen slope of receive time over frame number (the
    median of all pairwise slopes), so one stall and the burst that catches up after it on a loaded
    machine do not count as a rate, while a stream that runs fast or slow throughout does."""
    seqs, t_recv = np.asarray(seqs, np.float64), np.asarray(t_recv, np.float64)
    i, j = np.triu_indices(len(seqs), k=1)
    return float(1.0 / np.median((t_recv[j] - t_recv[i]) / (seqs[j] - seqs[i])))


def check_stream(frames, duration_s):
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "frames missing or out of order"
    span = frames[-1]["t_recv"] - frames[0]["t_recv"]
    fps = frame_rate(seqs, [f["t_recv"] for f in frames])
    assert 23.0 < fps < 27.0, f"{fps:.1f} fps over {span:.1f} s ({(len(frames) - 1) / span:.1f} from end to end)"
    assert len(frames) >= 25 * duration_s * 0.9
    t = np.array([f["t_audio_s"] for f in frames])
    np.testing.assert_allclose(np.diff(t), 0.04, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mic_source_captures_the_null_sink(pulse_source, backend, monkeypatch):
    """MicSource through either PortAudio binding delivers 16 kHz audio at real-time rate: no more audio
    than the time since the device was opened (audio buffered while a loaded machine opened the device
    may come in a burst with the first chunks), and no less than the time since the first chunk."""
    require_backend(backend)
    from mm2face.realtime.sources import MicSource
    sink, env = pulse_source
    monkeypatch.setenv("PULSE_SOURCE", env["PULSE_SOURCE"])
    capture_s, slack_s = 2.0, 0.3

    async def capture():
        mic, got, t_first = MicSource("pulse", backend=backend), 0, None
        t_open = time.time()             # the device opens when iteration starts: no audio from before
        async for ch in mic:
            t_first = t_first or time.time()
            got += ch.n_samples
            assert ch.audio_16k.dtype == np.float32 and abs(ch.arrival_time - time.time()) < 1.0
            if time.time() - t_first > capture_s:
                return got / 16000, time.time() - t_open, time.time() - t_first
    got_s, since_open_s, since_first_s = asyncio.run(capture())
    assert since_first_s - slack_s < got_s < since_open_s + slack_s, (got_s, since_open_s, since_first_s)


def test_mic_wiring_random_model(pulse_source, tmp_path):
    sink, env = pulse_source
    audio, rate = sf.read(str(DEMO_WAV), dtype="float32")
    clip = tmp_path / "speech4s.wav"
    sf.write(clip, audio[: 4 * rate], rate)
    port = free_port()
    proc = start_live(env, port, "--random-model", "--style", "calm")

    async def style_from_stdin(ws):
        proc.stdin.write("a cheerful host\n")
        proc.stdin.flush()

    try:
        frames, t_play = asyncio.run(collect(port, clip, sink, env, actions=[(2.0, style_from_stdin)]))
    finally:
        err = stop_live(proc)
    assert frames, f"no frames received; mm2face-live said: {err}"
    check_stream(frames, 5.0)
    # Frames showing played audio carry its arrival time, shortly after playback started.
    with_audio = [f for f in frames if f["audio_arrival_time"] is not None]
    assert len(with_audio) == len(frames)          # a microphone always delivers audio (even silence)
    lat = [f["server_send_time"] - f["input_ready_time"] for f in frames]
    assert 0 <= np.median(lat) < 1.0
    styles = [f["style"] for f in frames]
    assert styles[0] == "calm" and styles[-1] == "a cheerful host"


def speech_activity(path):
    """``(active: (n,) bool, t_s: (n,) float)``: whether the wav speaks, every 20 ms."""
    audio, rate = sf.read(str(path), dtype="float32")
    hop = rate // 50
    rms = np.sqrt(np.convolve(audio ** 2, np.ones(hop * 2) / (hop * 2), mode="same"))[::hop]
    return rms > 0.02 * rms.max(), np.arange(len(rms)) / 50


def speech_span_s(path) -> float:
    """Seconds from the first to the last speech in a wav."""
    active, t_act = speech_activity(path)
    return float(t_act[active][-1] - t_act[active][0])


def speech_mask(path, t_frames, margin_s):
    """For each time in t_frames (s from the start of the wav): 1 speech, 0 pause, -1 near an edge or
    outside the span from the first to the last speech (silence before and after it is not a pause)."""
    active, t_act = speech_activity(path)
    t_first, t_last = t_act[active][[0, -1]]
    out = np.full(len(t_frames), -1)
    for i, t in enumerate(t_frames):
        near = active[(t_act > t - margin_s) & (t_act < t + margin_s)]
        if t_first <= t <= t_last and len(near):
            out[i] = 1 if near.all() else (0 if not near.any() else -1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_mic_mouth_follows_speech_and_style_blends(pulse_source, tmp_path, backend):
    require_backend(backend)
    from mm2face.engine.model import default_checkpoint_path
    ckpt = os.environ.get("MM2FACE_TEST_CKPT") or str(default_checkpoint_path())   # override: another checkpoint
    if not os.path.exists(ckpt):
        pytest.skip(f"needs the trained default checkpoint at {ckpt}")
    sink, env = pulse_source
    port = free_port()
    captured = tmp_path / "captured.wav"
    proc = start_live(env, port, "--ckpt", ckpt, "--style", "a calm neutral speaker",
                      "--record-audio", str(captured), backend=backend)
    blend_s, t_style = 0.5, 5.0

    async def send_style(ws):
        await ws.send(json.dumps({"type": "style", "text": "surprised, eyebrows raised", "blend_s": blend_s}))

    try:
        frames, t_play = asyncio.run(collect(port, DEMO_WAV, sink, env, actions=[(t_style, send_style)]))
    finally:
        err = stop_live(proc)
    assert frames, f"no frames received; mm2face-live said: {err}"
    dur = sf.info(str(DEMO_WAV)).duration
    check_stream(frames, dur)
    assert frames[-1]["t_recv"] - t_play > dur
    # A clean stop: SIGTERM ends it with exit code 0, having written the captured audio.
    assert proc.returncode == 0 and captured.exists(), f"no clean stop with the recording written: {err}"
    assert "recorded" in err and "of input audio" in err, err
    check_mouth_follows_speech(frames, captured, DEMO_WAV)
    check_no_jump_in_blend(frames, "surprised", blend_s)
    check_style_changed_the_face(frames, "surprised", blend_s, ckpt, captured)


def check_mouth_follows_speech(frames, captured_wav, played_wav):
    """Jaw opening (frame[53], rad) is larger while the captured audio speaks than in its pauses. Each
    frame shows the audio instant ``t_audio_s`` of the stream, which is that time in the captured wav
    (--record-audio records every sample pushed from the start): the same alignment the model had,
    however late playback started on a loaded machine."""
    P = np.array([f["expression"] + f["head_pose"] + f["jaw_pose"] for f in frames], np.float32)
    jaw = P[:, 53]
    t_wav = np.array([f["t_audio_s"] for f in frames])
    mask = speech_mask(captured_wav, t_wav, margin_s=0.12)
    speech, pause = jaw[mask == 1], jaw[mask == 0]
    assert len(speech) > 50 and len(pause) > 10, (
        f"{len(speech)} frames of speech and {len(pause)} of pauses; the capture holds the speech over "
        f"{speech_span_s(captured_wav):.1f} s, the played wav over {speech_span_s(played_wav):.1f} s")
    print(f"jaw speech mean {speech.mean():.4f} pause mean {pause.mean():.4f} std {jaw.std():.4f}")
    assert speech.mean() > pause.mean() + 0.5 * jaw.std(), "mouth does not open more during speech than in pauses"


def _style_start(frames, prefix) -> int:
    return next(i for i, f in enumerate(frames) if f["style"].startswith(prefix))


def check_no_jump_in_blend(frames, new_style_prefix, blend_s):
    """No frame-to-frame step inside the style blend is larger than the model's normal motion: the
    largest step elsewhere in the stream, with 25 % slack because the maximum of ordinary speech
    motion itself varies that much between runs (a real jump, e.g. a rebuilt cache, is several times
    larger)."""
    P = np.array([f["expression"] + f["head_pose"] + f["jaw_pose"] for f in frames], np.float32)
    i0 = _style_start(frames, new_style_prefix)
    n_blend = int(round(blend_s * 25)) + 2
    steps = np.linalg.norm(np.diff(P, axis=0), axis=1)
    blend = steps[max(0, i0 - 2):i0 + n_blend]
    rest = np.concatenate([steps[:max(0, i0 - 2)], steps[i0 + n_blend:]])
    print(f"max step in blend {blend.max():.4f}, elsewhere {rest.max():.4f}")
    assert blend.max() <= 1.25 * rest.max(), "a jump during the style blend"


def check_style_changed_the_face(frames, new_style_prefix, blend_s, ckpt, captured_wav):
    """Counterfactual: replay the exact audio the server captured through an offline StreamSession
    (same checkpoint, backend and seed) *without* the style message. Before the message the live
    frames equal the replay; after the blend they differ, so the message changed the face.
    (Comparing the expression before and after the change within one run cannot show this: speech
    alone moves the face as much as a style does over a few seconds.)"""
    import torch
    from mm2face.engine.model import load_model
    from mm2face.engine.session import StreamConfig, StreamSession
    try:
        from mm2face.engine.backends import apply_backend, default_backend
    except ImportError:
        apply_backend = None
    audio, rate = sf.read(str(captured_wav), dtype="float32")
    assert rate == 16000 and len(audio) > 16000 * 5
    torch.set_num_threads(1)
    model = load_model(ckpt).eval()
    if apply_backend is not None:                  # the same backend mm2face-live picks by default
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # exporter chatter
            model = apply_backend(model, default_backend("cpu"), device="cpu")
    s = StreamSession(model, StreamConfig(), style="a calm neutral speaker")
    s.push_audio(audio)
    ref = {f.seq: f.params for f in s.poll()}
    i0 = _style_start(frames, new_style_prefix)
    n_blend = int(round(blend_s * 25)) + 2
    live = {f["seq"]: np.array(f["expression"] + f["head_pose"] + f["jaw_pose"], np.float32) for f in frames}
    before = [k for k in live if k < frames[i0]["seq"] and k in ref]
    after = [k for k in live if k >= frames[i0]["seq"] + n_blend and k in ref]
    d_before = max(np.abs(live[k] - ref[k]).max() for k in before)
    d_after = float(np.mean([np.abs(live[k][:50] - ref[k][:50]).mean() for k in after]))
    print(f"live vs replay without the style message: max diff before {d_before:.2e}, mean diff after {d_after:.4f}")
    assert len(before) > 50 and len(after) > 25
    assert d_before < 1e-3, "the replay does not reproduce the live stream before the style message"
    assert d_after > 0.01, "the style message did not change the expression"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mic_that_stops_delivering_gives_a_clear_error(pulse_source, monkeypatch, backend):
    """A capture device that goes silent at the driver level (here: PulseAudio suspends the sink whose
    monitor we capture, as when a USB mic is pulled) ends capture with DeviceError naming the device
    and listing the inputs, instead of hanging or a traceback from PortAudio."""
    require_backend(backend)
    from mm2face.realtime.sources import DeviceError, MicSource
    sink, env = pulse_source
    monkeypatch.setenv("PULSE_SOURCE", env["PULSE_SOURCE"])

    async def capture():
        mic, got = MicSource("pulse", backend=backend, stall_s=1.0), 0
        t0 = time.time()
        async for ch in mic:
            got += ch.n_samples
            if got >= 8000 and not suspended[0]:              # 0.5 s of audio, then pull the plug
                subprocess.run(["pactl", "suspend-sink", sink, "1"], env=env, check=True)
                suspended[0] = time.time()
            if time.time() - t0 > 15:
                raise AssertionError("capture went on for 15 s after the device was suspended")

    suspended = [0.0]
    try:
        with pytest.raises(DeviceError) as err:
            asyncio.run(capture())
    finally:
        subprocess.run(["pactl", "suspend-sink", sink, "0"], env=env)
    assert suspended[0], "the device never delivered audio before the test suspended it"
    msg = str(err.value)
    assert "input device 'pulse' delivered no audio" in msg, msg
    assert "input devices" in msg.lower() or "--input-device" in msg, msg


_RUN_CLI = "import sys; from mm2face.realtime.cli import main; sys.exit(main(sys.argv[1:]))"
_HIDE_PYAUDIO = "import sys; sys.modules['pyaudio'] = None; "      # Python's own 'this module is absent'


@pytest.mark.parametrize("pyaudio_state", ["missing", "broken"])
def test_missing_or_broken_pyaudio_gives_a_clear_error(tmp_path, pyaudio_state):
    """``--audio-backend pyaudio`` without a working PyAudio exits with code 2 and says what to do, before
    loading any model: missing (not installed) and broken (installed, but its C module does not load:
    here a copy of the installed package without its compiled ``_portaudio``, put first on the path)."""
    env = dict(os.environ)
    code = _RUN_CLI
    if pyaudio_state == "missing":
        code = _HIDE_PYAUDIO + code
    else:
        require_backend("pyaudio")
        import pyaudio
        pkg = tmp_path / "pyaudio"
        pkg.mkdir()
        shutil.copy(pyaudio.__file__, pkg / "__init__.py")   # the real package; no _portaudio beside it
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    for args in (["--mic", "--audio-backend", "pyaudio", "--random-model"],
                 ["--list-devices", "--audio-backend", "pyaudio"]):
        r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        msg = r.stderr
        if pyaudio_state == "missing":
            assert "needs PyAudio: pip install 'mm2face-live[pyaudio]'" in msg and "portaudio19-dev" in msg, msg
        else:
            assert "PyAudio is installed but does not load" in msg and "_portaudio" in msg, msg
            assert "pip install --force-reinstall" in msg and "portaudio19-dev" in msg, msg
        assert "or use --audio-backend sounddevice" in msg, msg
