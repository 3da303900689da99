"""The 3D browser viewer in real headless Chromium: ``mm2face-live --serve --wav ... --loop`` with the
default model serves the page, three.js (from the server, no CDN) and head.glb; the page connects,
frames arrive, and the mouth's pixels differ between speech and silence. Then "talk through my
microphone": Chromium's fake capture device plays a speech file into getUserMedia, the page streams
PCM16 over the same WebSocket into its own session and shows that session's frames. Last, "speak a
file": the page streams a chosen file into its own session and plays it, its audio clock driving the face.

Screenshots are kept in ``$MM2FACE_ARTEFACTS/browser_viewer`` (default ``out/test-artefacts/...``).
"""
import asyncio
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from browser_helpers import HeadlessChromium, artefacts_dir
from mm2face.realtime import protocol as P
from mm2face.realtime.sources import DEMO_WAV
from mm2face.realtime.web_static import WEB_ROOT

pytestmark = pytest.mark.slow    # the default model's start-up and software WebGL: about a minute

SR = 16000
SILENCE_S = 2.0                  # the looped test file: this much silence, then speech
SPEECH = (0.5, 5.5)              # seconds of the bundled demo speech used (it pauses 2.9-3.8 s)
SILENT_WINDOW = (0.5, 1.7)       # loop positions (s) where the face must be at rest (past the mouth-closing tail)
OPEN_JAW = 0.2                   # jawOpen weight counted as an open mouth
START_TIMEOUT_S = 240            # model load on a busy 2-core CI machine
MIN_MOUTH_DIFF = 3.0             # mean |difference| (0-255) of the mouth crops, speech vs silence
TEETH_LEVEL = 180                # a pixel whose darkest channel is above this is teeth (skin and lips are not)
MIN_TEETH_SHOWN = 0.01           # share of the mouth crop showing teeth with the jaw open
MAX_TEETH_AT_REST = 0.002        # ... and with the lips closed
FRAME_S = 1 / 25                 # one frame: the allowed audio/face offset of the watched session's sound
SYNC_SAMPLES = 10                # animation frames at which the sound heard and the face shown are compared
BUSY_TIMEOUT_S = 120             # a played file's audio clock (headless, software audio) runs slow on a busy CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """2 s of silence then 5 s of the demo speech (16 kHz PCM16), looped by the server and the fake mic."""
    x, sr = sf.read(DEMO_WAV, dtype="float32")
    assert sr == SR
    clip = np.concatenate([np.zeros(int(SILENCE_S * SR), np.float32), x[int(SPEECH[0] * SR):int(SPEECH[1] * SR)]])
    path = tmp_path_factory.mktemp("browser") / "silence_then_speech.wav"
    sf.write(path, clip, SR, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def live_server(speech_wav):
    """``mm2face-live --serve --wav speech_wav --loop`` on a free port; yields (http url, loop length s)."""
    if not (WEB_ROOT / "vendor" / "three" / "build" / "three.module.js").exists():
        pytest.fail("three.js is not vendored into realtime/web/vendor: run scripts/bootstrap.sh (npm ci in web/)")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mm2face.realtime.cli", "--serve", "--port", str(port),
                             "--wav", str(speech_wav), "--loop", "--threads", "1", "--quiet",
                             "--capacity", "4"],   # not the start-up measurement: this CPU is shared
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(proc, port)
        yield f"http://127.0.0.1:{port}/", sf.info(speech_wav).duration
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc, port: int) -> None:
    import time
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mm2face-live exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)          # polling for the listening socket, not waiting for a count
    pytest.fail(f"mm2face-live did not listen on port {port} within {START_TIMEOUT_S} s")


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def _teeth_share(px: np.ndarray) -> float:
    """Share of a mouth crop ``(h, w, 3)`` showing teeth: independent of the crop's size and alignment,
    which follow the head's pose on screen and differ by a few pixels between shots."""
    return float((px.min(axis=2) > TEETH_LEVEL).mean())


def _chromium_flags(speech_wav: Path) -> list[str]:
    return ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_wav}", "--autoplay-policy=no-user-gesture-required"]


async def _mouth_shot(page, condition: str, timeout: float) -> tuple[bytes, dict]:
    """Hold the face (the page's pause) at the first frame on screen for which ``condition`` holds,
    screenshot the mouth's box, and let it play on."""
    await page.wait_for(f"({condition}) && (window.mm2face.paused = true)", timeout)
    try:
        await page.eval("new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)))")
        rect = await page.eval("window.mm2face.mouthRect()")
        state = await page.eval("({jaw: window.mm2face.jawOpen, t: window.mm2face.shownT})")
        return await page.screenshot(clip={k: rect[k] for k in ("x", "y", "width", "height")}), state
    finally:
        await page.eval("window.mm2face.paused = false")


async def test_page_renders_the_live_head_and_the_mouth_moves_with_speech(live_server, speech_wav):
    url, loop_s = live_server
    out = artefacts_dir("browser_viewer")
    async with HeadlessChromium(_chromium_flags(speech_wav)) as browser:
        page = await browser.open(url)
        await page.wait_for("window.mm2face && window.mm2face.connected && window.mm2face.headLoaded", 120)
        await page.wait_for("window.mm2face.frames >= 50 && window.mm2face.rendered >= 3", 60)
        assert await page.eval("window.mm2face.session") == "default"
        # engines' route: ARKit frames from the server where it has them (protocol v2), else v1 frames
        # mapped in the page with the server's map (the microphone test below takes that route)
        expected = "arkit-binary" if "arkit-binary" in P.FRAME_FORMATS else "binary"
        assert await page.eval("window.mm2face.format") == expected
        # offline: everything the page loaded (page, three.js, head.glb, the socket) came from the server
        ws_url = url.replace("http://", "ws://")
        assert browser.requests and all(u.startswith((url, ws_url)) for u in browser.requests), browser.requests
        assert {url + "vendor/three/build/three.module.js", url + "head.glb"} <= set(browser.requests)
        # the page's own map (the v1 route) equals the engine's to_arkit
        from mm2face.engine.arkit import to_arkit
        frames = np.random.default_rng(0).normal(0, 0.6, (4, 56)).astype(np.float32)
        frames[:, 50:] *= 0.3
        page_w = np.array([await page.eval(f"window.mm2face.toArkit({f.tolist()})") for f in frames])
        np.testing.assert_allclose(page_w, to_arkit(frames).weights, atol=1e-5)
        assert await page.eval("window.mm2face.errors.length") == 0, await page.eval("window.mm2face.errors")
        # The loop position of the frame on screen tells speech from silence (the session clock starts
        # with the file and the loop has no gap).
        pos = f"(window.mm2face.shownT % {loop_s})"
        silent = f"{pos} > {SILENT_WINDOW[0]} && {pos} < {SILENT_WINDOW[1]}"
        speaking = f"{pos} > {SILENCE_S + 0.2} && window.mm2face.jawOpen > {OPEN_JAW}"
        quiet_png, quiet = await _mouth_shot(page, silent, 3 * loop_s)
        speech_png, speech = await _mouth_shot(page, speaking, 3 * loop_s)
        quiet2_png, quiet2 = await _mouth_shot(page, silent, 3 * loop_s)
        (out / "mouth_silence.png").write_bytes(quiet_png)
        (out / "mouth_speech.png").write_bytes(speech_png)
        (out / "mouth_silence2.png").write_bytes(quiet2_png)
        (out / "page.png").write_bytes(await page.screenshot())
        a, b, c = _pixels(quiet_png), _pixels(speech_png), _pixels(quiet2_png)
        h, w = (min(x.shape[i] for x in (a, b, c)) for i in (0, 1))
        speech_diff = float(np.abs(b[:h, :w] - a[:h, :w]).mean())
        rest_diff = float(np.abs(c[:h, :w] - a[:h, :w]).mean())
        teeth = [_teeth_share(x) for x in (a, b, c)]
        print(f"mouth |speech - silence| {speech_diff:.2f}, |silence - silence| {rest_diff:.2f}; "
              f"jawOpen {quiet['jaw']:.3f} / {speech['jaw']:.3f} / {quiet2['jaw']:.3f}; teeth shown {teeth}")
        assert quiet["jaw"] < 0.05 and quiet2["jaw"] < 0.05, (quiet, quiet2)
        assert speech_diff > MIN_MOUTH_DIFF, (speech_diff, rest_diff)
        # the pixels themselves: teeth show while speaking and not in the pauses (a pixel-wise difference
        # between two rest shots is not a baseline: the crops shift with the head's pose)
        assert teeth[1] > MIN_TEETH_SHOWN and max(teeth[0], teeth[2]) < MAX_TEETH_AT_REST, teeth
        # The session's audio (subscribe "audio": true, MMAU messages) is scheduled on the frame clock: at each
        # animation frame, the session time of the sound coming out (WebAudio's output clock) equals the frame
        # clock's time at that instant, what the face shows (log restarted after the pauses above).
        await page.eval("window.mm2face.sessionAudioSync.length = 0")
        await page.wait_for(f"window.mm2face.sessionAudioSync.length >= {SYNC_SAMPLES}", 30)
        st = await page.eval("({s: window.mm2face.sessionAudioScheduledS, k: window.mm2face.sessionAudioSkippedS, "
                             "n: window.mm2face.sessionAudioChunks, a: window.mm2face.sessionAudio, "
                             "sync: window.mm2face.sessionAudioSync})")
        offset = np.array([e["heard"] - e["shown"] for e in st["sync"]])
        print(f"session audio: {st['n']} chunks, {st['s']:.2f} s scheduled, {st['k']:.2f} s skipped; sound - face "
              f"at {len(offset)} animation frames: median {1e3 * np.median(offset):+.1f} ms, max |.| {1e3 * np.abs(offset).max():.1f} ms")
        assert st["a"] == "running" and st["s"] > 1.0, st
        assert abs(np.median(offset)) < FRAME_S, offset


async def test_talk_through_the_microphone(live_server, speech_wav):
    url, _ = live_server
    out = artefacts_dir("browser_viewer")
    async with HeadlessChromium(_chromium_flags(speech_wav)) as browser:
        page = await browser.open(url + "?format=binary")     # v1 frames, mapped to ARKit in the page
        await page.wait_for("window.mm2face && window.mm2face.connected && window.mm2face.headLoaded", 120)
        await page.click("#mic")
        await page.wait_for("window.mm2face.mic === 'on'", 30)
        session = await page.eval("window.mm2face.session")
        assert session.startswith("s-"), session            # the page's own session, not "default"
        frames0 = await page.eval("window.mm2face.frames")
        # one second of microphone audio sent, frames of our session back, and the mouth opens with the speech
        await page.wait_for(f"window.mm2face.micSamples >= {SR} && window.mm2face.frames >= {frames0} + 25", 60)
        await page.wait_for(f"window.mm2face.jawOpen > {OPEN_JAW}", 60)
        (out / "page_microphone.png").write_bytes(await page.screenshot())
        assert await page.eval("window.mm2face.session") == session
        assert await page.eval("window.mm2face.format") == "binary"
        assert await page.eval("window.mm2face.errors.length") == 0, await page.eval("window.mm2face.errors")
        # stop: the page closes its session and watches the default session again
        await page.click("#mic")
        await page.wait_for("window.mm2face.mic === 'off' && window.mm2face.session === 'default'", 30)


async def test_speak_a_file_plays_its_audio_with_the_face(live_server, speech_wav):
    url, loop_s = live_server
    out = artefacts_dir("browser_viewer")
    async with HeadlessChromium(_chromium_flags(speech_wav)) as browser:
        page = await browser.open(url)
        await page.wait_for("window.mm2face && window.mm2face.connected && window.mm2face.headLoaded", 120)
        await page.set_files("#file", [speech_wav])
        await page.wait_for("window.mm2face.audio === 'playing'", 60)
        session = await page.eval("window.mm2face.session")
        assert session.startswith("s-"), session
        chunks0 = await page.eval("window.mm2face.sessionAudioChunks")    # the default session's sound so far
        # while the file is heard (past its 2 s of silence) the mouth opens
        await page.wait_for(f"window.mm2face.audioPlayedS > {SILENCE_S} && window.mm2face.jawOpen > {OPEN_JAW}",
                            BUSY_TIMEOUT_S)
        (out / "page_file.png").write_bytes(await page.screenshot())
        # our own session's sound is the file the page plays: the server sends it no audio back
        assert await page.eval("window.mm2face.sessionAudioChunks") == chunks0
        # the whole file is played, then the page closes its session and watches the default one again
        await page.wait_for("window.mm2face.audio === 'off' && window.mm2face.session === 'default'", BUSY_TIMEOUT_S)
        played = await page.eval("window.mm2face.audioPlayedS")
        late, total, stalls, stall_s = await page.eval(
            "[window.mm2face.audioLateFrames, window.mm2face.audioFrames, window.mm2face.audioStalls, "
            "window.mm2face.audioStallS]")
        print(f"file played {played:.2f} s of {loop_s:.2f} s; audio paused {stalls}x ({stall_s:.1f} s) for frames; "
              f"{late} of {total} frames arrived after their audio was heard")
        assert played == pytest.approx(loop_s, abs=0.05)
        assert total >= 0.95 * loop_s * 25                 # every frame of the file came back
        assert await page.eval("window.mm2face.errors.length") == 0, await page.eval("window.mm2face.errors")
