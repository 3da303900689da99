"""``mm2face-live``: live audio + style text -> FLAME frames at 25 fps, served to clients.

Examples::

    mm2face-live --demo                              # bundled speech; window, or an MP4 when headless
    mm2face-live --mic --serve                       # default microphone -> ws://127.0.0.1:8765
    mm2face-live --mic --input-device pulse --serve --view   # a named PortAudio device, plus the viewer
    mm2face-live --wav talk.wav --loop --serve --mqtt 127.0.0.1:1883
    mm2face-live --mic --livelink 192.168.1.20 --vmc 127.0.0.1   # Unreal Live Link Face, VSeeFace/VMC
    mm2face-live --serve --style "a cheerful host"   # text-only: idle motion from the style alone

While it runs, type a new style on stdin and press Enter to change the style mid-stream.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mm2face.realtime import admission
from mm2face.realtime import outputs as udp_outputs
from mm2face.realtime import protocol as P
from mm2face.realtime.protocol import FRAME_FORMATS
from mm2face.realtime.server import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("mm2face.realtime")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mm2face-live", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Drive a FLAME face from live audio and style text at 25 fps, and serve the frames "
                    "over WebSockets (protocol v2, docs/protocol.md) and MQTT.",
        epilog="examples:\n" + __doc__.split("Examples::")[1].split("While it runs")[0].rstrip() +
               "\n\nType a line on stdin to change the style while it runs. Without --mic/--wav/--demo the face\n"
               "runs in text-only mode: idle motion driven by the style alone. Clients: docs/protocol.md,\n"
               "examples/client.py, or open http://HOST:PORT/ in a browser.")
    src = ap.add_argument_group("audio source (pick one; none = text-only)")
    g = src.add_mutually_exclusive_group()
    g.add_argument("--mic", action="store_true", help="capture from a microphone (PortAudio)")
    g.add_argument("--wav", metavar="FILE", help="stream an audio file at real-time pace")
    g.add_argument("--demo", action="store_true",
                   help="the bundled speech sample; opens the viewer where there is a display, otherwise "
                        "writes an MP4 with the audio (see --out)")
    src.add_argument("--input-device", metavar="NAME",
                     help="input device name or part of it (default: the system default; see --list-devices)")
    src.add_argument("--audio-backend", choices=("sounddevice", "pyaudio"), default="sounddevice",
                     help="PortAudio binding for --mic (default: %(default)s)")
    src.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    src.add_argument("--loop", action="store_true", help="repeat --wav/--demo forever")
    ap.add_argument("--style", default="", metavar="TEXT", help="initial style text, e.g. 'a calm, friendly speaker'")
    ap.add_argument("--guidance", type=float, default=None, help="style strength (classifier-free guidance scale)")
    ap.add_argument("--no-vad", action="store_true",
                    help="turn off the voice-activity gate (by default the mouth rests while no speech is heard; "
                         "engine/vad.py)")
    ap.add_argument("--no-contact", action="store_true",
                    help="turn off the lip-contact stage (by default the lips meet on p/b/m and the lower lip reaches "
                         "the upper teeth on f/v where the model has the stage; engine/closure.py)")
    ap.add_argument("--raw-styles", action="store_true",
                    help="send style text to the model as typed: no style parser, no head-gesture layer "
                         "(engine/style.py; research)")
    srv = ap.add_argument_group("serving")
    srv.add_argument("--serve", action="store_true", help="run the WebSocket server")
    srv.add_argument("--host", default=DEFAULT_HOST, help="bind address (default: %(default)s, local only)")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT, help="WebSocket port (default: %(default)s)")
    srv.add_argument("--token", default=os.environ.get("MM2FACE_TOKEN"),
                     help="require this token for control messages (default: $MM2FACE_TOKEN); "
                          "recommended whenever --host is not 127.0.0.1")
    srv.add_argument("--mqtt", metavar="HOST[:PORT]", help="also publish frames to an MQTT broker")
    srv.add_argument("--mqtt-prefix", default="mm2face", help="MQTT topic prefix (default: %(default)s)")
    srv.add_argument("--mqtt-format", choices=FRAME_FORMATS, default="json",
                     help="MQTT frame payload: the protocol's json or binary frame, or ARKit-52 weights + head "
                          "rotation as arkit (JSON) or arkit-binary (default: %(default)s; docs/arkit.md)")
    srv.add_argument("--arkit-retarget", metavar="FILE.npz",
                     help="ARKit map from `mm2face-retarget fit`, for a real-FLAME checkpoint (default: the "
                          "stand-in head's exact map); used by the arkit frame formats")
    srv.add_argument("--view", action="store_true", help="open the viewer window on the stream (implies --serve)")
    udp_outputs.add_arguments(ap)
    admission.add_arguments(ap)
    out = ap.add_argument_group("model and output")
    out.add_argument("--ckpt", metavar="PATH", help="model checkpoint (default: the bundled default checkpoint)")
    out.add_argument("--random-model", action="store_true",
                     help="use an untrained small random model (wiring tests only; the face moves meaninglessly)")
    out.add_argument("--device", default=None, metavar="TORCH_DEVICE",
                     help="torch device for the model, e.g. cpu or cuda (default: cpu), as in every mm2face tool")
    out.add_argument("--compute", default=None, metavar="TORCH_DEVICE",
                     help="deprecated spelling of --device (removed in 0.2)")
    out.add_argument("--backend", default="auto",
                     help="inference backend: auto (the engine's measured default for --device), eager, static, "
                          "compile, int8, onnx or tensorrt (default: %(default)s)")
    out.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    out.add_argument("--out", metavar="FILE.mp4", default="runs/mm2face-live-demo.mp4",
                     help="--demo without a display: where to write the MP4 (default: %(default)s)")
    out.add_argument("--record", metavar="FILE.npz", help="save the default session's frames as a motion clip on exit")
    out.add_argument("--record-audio", metavar="FILE.wav",
                     help="save the 16 kHz audio fed to the default session on exit (to replay a live run offline)")
    out.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    out.add_argument("--quiet", action="store_true", help="no status line")
    out.add_argument("-v", "--verbose", action="store_true", help="log details")
    return ap


# torch's device types, with an optional index: what --device names (anything else was an audio input before 0.2)
TORCH_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|hip|meta|hpu|mtia|xla|ipu|vulkan|privateuseone)(:\d+)?$")


def resolve_device_arguments(args) -> list[str]:
    """``--device`` is the torch device in every mm2face tool. Until 0.2 the old spellings still work:
    ``--device NAME`` that is no torch device is taken as the audio input (``--input-device``), and
    ``--compute`` as ``--device``. Sets ``args.device`` (default cpu) and ``args.input_device``; returns
    the deprecation notes to print."""
    notes = []
    if args.device is not None and not TORCH_DEVICE.match(args.device) and args.input_device is None:
        notes.append(f"--device {args.device!r} as the audio input is deprecated (removed in 0.2); use "
                     f"--input-device {args.device!r}. --device now names the torch device (cpu, cuda ...)")
        args.input_device, args.device = args.device, None
    if args.compute is not None:
        notes.append("--compute is deprecated (removed in 0.2); use --device (the torch device, as in the other tools)")
        if args.device is None:
            args.device = args.compute
    if args.device is None:
        args.device = "cpu"
    return notes


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


class StatusLine:
    """fps, latency, dropped frames and style of a session, on stderr, updated in place."""

    def __init__(self, hub, live, stream=sys.stderr, every_s: float = 0.5):
        self.hub, self.live, self.stream, self.every_s = hub, live, stream, every_s
        self.tty = stream.isatty()
        self.width = shutil.get_terminal_size((100, 20)).columns

    def text(self) -> str:
        meter = self.live.meter
        lat, a2f = meter.median_latency_ms(), meter.median_a2f_ms()
        style = self.live.style or "(neutral)"
        ms = lambda x: "  n/a" if math.isnan(x) else f"{x:5.0f}"  # noqa: E731
        s = (f"{meter.fps():5.1f} fps | latency {ms(a2f)} ms audio-to-face, {ms(lat)} ms processing | "
             f"dropped {self.hub.dropped_total} | clients {len(self.hub.clients)} | "
             f"t {self.live.samples_in / 16000:6.1f} s | style: {style}")
        return s[: self.width - 1] if self.tty else s

    async def run(self) -> None:
        last_plain = 0.0
        while True:
            await asyncio.sleep(self.every_s)
            if self.tty:
                self.stream.write("\r\x1b[2K" + self.text())
                self.stream.flush()
            elif time.time() - last_plain > 5.0:     # logs/pipes: one line every 5 s
                last_plain = time.time()
                print(self.text(), file=self.stream, flush=True)

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


SHUTDOWN_WAIT_S = 5.0     # after a stop: how long the tasks get to finish before the recordings are written anyway
SHUTDOWN_EXIT_S = 30.0    # a shutdown phase still running after this long: dump all thread stacks, exit code 1
VIEWER_POLL_S = 0.2       # how often the viewer subprocess is checked for having exited
VIEWER_EXIT_S = 5.0       # how long the viewer gets to exit after terminate() before it is killed


def _fd_stream():
    """sys.stderr if it has a file descriptor (faulthandler writes to one), else the process's own stderr."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


def _arm_shutdown_watchdog() -> None:
    """In SHUTDOWN_EXIT_S, unless cancelled (faulthandler.cancel_dump_traceback_later): print every
    thread's stack and exit with code 1."""
    faulthandler.dump_traceback_later(SHUTDOWN_EXIT_S, exit=True, file=_fd_stream())


def read_stdin_styles(loop: asyncio.AbstractEventLoop, on_line) -> None:
    """Each line typed on stdin becomes the new style (a daemon thread; stops at EOF)."""
    def reader():
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(on_line, line.strip())
        except (OSError, ValueError, RuntimeError):      # stdin unreadable or closed, or the loop is gone
            return
    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=reader, name="stdin-style", daemon=True).start()


def configure_arkit(hub, head_name: str, retarget_path: str | None, build_now: bool = True) -> None:
    """The map of the ARKit frame formats: ``--arkit-retarget``, else the stand-in's for a stand-in model
    (built now when ``build_now``, so that the first ARKit subscriber does not wait for it), else none:
    ARKit subscriptions are then refused with the reason."""
    from mm2face.engine.arkit import LinearRetarget, RetargetError, standin_retarget
    if retarget_path:
        try:
            hub.arkit_retarget = LinearRetarget.load(retarget_path)
        except RetargetError as e:
            raise SystemExit(f"mm2face-live: --arkit-retarget: {e}") from None
    elif head_name == "standin":
        if build_now:
            hub.arkit_retarget = standin_retarget()
    else:
        hub.arkit_error = (f"the model drives the {head_name!r} head, not the stand-in; start mm2face-live with "
                           f"--arkit-retarget FILE (made by `mm2face-retarget fit`)")


def load_the_model(args):
    import torch
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mm2face.engine.model import MM2Face, default_checkpoint_path, load_model
    if args.random_model:
        return MM2Face.random(seed=0, small=True).to(args.device).eval()
    path = args.ckpt
    if path is None and not default_checkpoint_path().exists():
        raise SystemExit(f"mm2face-live: no default checkpoint at {default_checkpoint_path()}. Train one "
                         "(mm2face-train), pass --ckpt PATH, or use --random-model to test the wiring.")
    if path is not None and not Path(path).exists():
        raise SystemExit(f"mm2face-live: checkpoint not found: {path}")
    return load_model(path, device=args.device).eval()


def with_backend(model, args):
    """Apply ``--backend`` (auto = the engine's default for the device); exits with the reason if unavailable."""
    import warnings
    try:
        from mm2face.engine.backends import BackendUnavailable, apply_backend, default_backend
    except ImportError:          # an engine without backends: plain eager PyTorch
        return model
    name = default_backend(args.device) if args.backend == "auto" else args.backend
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # exporter/tracer chatter
            model = apply_backend(model, name, device=args.device)
    except (BackendUnavailable, ValueError) as e:
        raise SystemExit(f"mm2face-live: backend {name!r} is not available here: {e}") from None
    log.info("inference backend: %s on %s", name, args.device)
    return model


class StartupFailed(Exception):
    """A start-up phase cannot go on; the message says why (exit code 2, no traceback)."""


def say(message: str) -> None:
    print(f"mm2face-live: {message}", file=sys.stderr, flush=True)


class LiveRun:
    """One run of ``mm2face-live``, in phases.

    Start-up: :meth:`plan` (what --demo / --view imply), :meth:`open_io` (UDP outputs and the audio
    source, before the slow model load, so device problems are reported at once), :meth:`load_engine`
    (model, backend, stream config), :meth:`build_hub` (the hub, the default session, ARKit map,
    outputs and recorders attached), :meth:`install_controls` (signals, styles typed on stdin),
    :meth:`start` (server, outputs, MQTT, audio source, status line, viewer). Each raises
    :class:`StartupFailed` with the reason. Then :meth:`wait` until a signal, the end of the source,
    ``--seconds``, the viewer closing or a failed task. Shutdown: :meth:`shutdown` (drain, cancel with a
    bounded wait, recordings, status line, viewer) and :meth:`result` (the exit code; the headless
    demo's MP4)."""

    def __init__(self, args):
        self.args = args
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.failure: list[BaseException] = []
        self.recorded: list = []              # frames of the default session (--record, the headless demo)
        self.recorded_audio: list = []        # (samples,) float32 16 kHz chunks it consumed (--record-audio)
        self.outputs: list = []
        self.source = None
        self.model = self.make_session = self.hub = self.live = None
        self.srv = self.url = None
        self.status: StatusLine | None = None
        self.viewer: subprocess.Popen | None = None
        self.demo_headless = False

    # ------------------------------------------------------------------ start-up
    def plan(self) -> None:
        from mm2face.realtime import sources
        a = self.args
        self.demo_headless = bool(a.demo and not has_display())
        if a.demo and not self.demo_headless:
            a.view = True
        if a.view or a.demo:
            a.serve = True                        # the demo's frames are served too
        if a.demo:
            a.wav = str(sources.DEMO_WAV)

    def open_io(self) -> None:
        from mm2face.engine.audio import AudioFileError
        from mm2face.realtime import sources
        a = self.args
        try:
            self.outputs = udp_outputs.open_outputs(a)          # --livelink / --vmc
        except udp_outputs.OutputError as e:
            raise StartupFailed(str(e)) from None
        try:
            if a.mic:
                self.source = sources.MicSource(a.input_device, a.audio_backend)
            elif a.wav:
                self.source = sources.WavSource(a.wav, loop=a.loop or (a.demo and not self.demo_headless))
        except (sources.DeviceError, AudioFileError) as e:
            raise StartupFailed(str(e)) from None

    def load_engine(self) -> None:
        from mm2face.engine.session import StreamConfig, StreamSession   # imports torch: after the quick checks
        a = self.args
        self.model = model = with_backend(load_the_model(a), a)
        cfg = StreamConfig()
        if a.guidance is not None:
            cfg.guidance = a.guidance
        cfg.vad = not a.no_vad
        cfg.contact = not a.no_contact
        cfg.parse_styles = not a.raw_styles
        self.make_session = lambda style: StreamSession(model, cfg, style=style, device=a.device)

    async def build_hub(self) -> None:
        from mm2face.realtime.server import Hub
        a = self.args
        limits = admission.limits_from_args(a, self.make_session if a.serve else None, log=say)
        self.hub = Hub(self.make_session, token=a.token, limits=limits,
                       server_session_control=a.server_session_control, ingest_speed=a.ingest_speed or None)
        configure_arkit(self.hub, self.model.head_name, a.arkit_retarget,
                        build_now=bool(a.serve or a.mqtt or self.outputs))
        self.live = await self.hub.create_session("default", style=a.style)
        try:
            udp_outputs.attach(self.outputs, self.live, self.hub.arkit_retarget, self.hub.arkit_error)
        except udp_outputs.OutputError as e:
            raise StartupFailed(str(e)) from None
        if a.record or self.demo_headless:
            self.live.listeners.append(lambda _live, frames: self.recorded.extend(frames))
        if a.record_audio:
            self.live.audio_taps.append(self.recorded_audio.append)

    def install_controls(self) -> None:
        """SIGINT/SIGTERM stop the run; each line typed on stdin becomes the default session's style."""
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if not self.stop.is_set():
                print(f"\nmm2face-live: {sig.name}, stopping", file=sys.stderr, flush=True)
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)

        def on_style_line(text: str) -> None:
            async def apply():
                from mm2face.realtime.protocol import MAX_STYLE_CHARS
                if len(text) > MAX_STYLE_CHARS:
                    print(f"\nmm2face-live: style text is {len(text)} characters; the limit is {MAX_STYLE_CHARS}",
                          file=sys.stderr)
                    return
                await self.live.set_style(text)
            asyncio.ensure_future(apply())
        read_stdin_styles(loop, on_style_line)

    def spawn(self, coro, name: str, guarded: bool = True) -> None:
        """Run ``coro`` as a task of this run; a guarded task that fails records why and stops the run."""
        self.tasks.append(asyncio.create_task(self._guarded(coro) if guarded else coro, name=name))

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reported by result(), after the recordings
            self.failure.append(e)
            self.stop.set()

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        a = self.args
        await self._start_server(stack)
        if not a.serve:
            stack.callback(self.hub.close)        # serve_hub closes the hub (its scheduler) when it serves
        for o in self.outputs:
            self.spawn(o.run(), o.name)
            say(f"{o} at {o.playout.out_fps:g} fps")
        self._start_mqtt()
        self._start_source()
        if not a.quiet:
            self.status = StatusLine(self.hub, self.live)
            self.spawn(self.status.run(), "status line", guarded=False)
        if a.view:
            self._start_viewer()
        if a.seconds is not None:
            asyncio.get_running_loop().call_later(a.seconds, self.stop.set)

    async def _start_server(self, stack: contextlib.AsyncExitStack) -> None:
        from mm2face.realtime.server import serve_hub
        a = self.args
        if not a.serve:
            return
        try:
            self.srv = await stack.enter_async_context(serve_hub(self.hub, a.host, a.port))
        except OSError as e:
            msg = f"cannot listen on {a.host}:{a.port} ({e.strerror or e}); pick another --port"
            if not self.demo_headless:
                raise StartupFailed(msg) from None
            say(msg)
            a.serve = False                       # a headless demo still writes its MP4
            return
        self.url = f"ws://{a.host}:{self.srv.port}"
        say(f"serving {self.url} (session 'default', protocol v{P.PROTOCOL_VERSION})")
        say(f"browser viewer at http://{a.host}:{self.srv.port}/ (docs/guides/browser.md)")
        if a.host not in ("127.0.0.1", "localhost", "::1") and not a.token:
            say("warning: listening beyond this machine without --token; anyone who can reach the port can "
                "change the style")

    def _start_mqtt(self) -> None:
        a = self.args
        if not a.mqtt:
            return
        from mm2face.realtime.mqtt import MqttBridge, parse_host_port
        host, port = parse_host_port(a.mqtt)
        try:
            bridge = MqttBridge(self.hub, host, port, prefix=a.mqtt_prefix, frame_format=a.mqtt_format)
        except P.ProtocolError as e:
            raise StartupFailed(f"--mqtt-format {a.mqtt_format}: {e.message}") from None
        self.spawn(bridge.run(), "mqtt")
        say(f"MQTT to {host}:{port}, topics {a.mqtt_prefix}/default/...")

    def _start_source(self) -> None:
        from mm2face.realtime import sources
        a = self.args
        if self.source is None:                   # text-only: idle motion from the style alone
            self.spawn(sources.feed(self.live, sources.IdleSource(), end_at_eof=False), "idle source")
            return

        def source_done():
            if not a.serve or self.demo_headless:
                self.stop.set()
        self.spawn(sources.feed(self.live, self.source, idle_after=a.serve and not self.demo_headless,
                                on_eof=source_done), "audio source")

    def _start_viewer(self) -> None:
        a = self.args
        view_url = f"ws://127.0.0.1:{self.srv.port}" if a.host in ("0.0.0.0", "::") else self.url
        self.viewer = viewer = subprocess.Popen([sys.executable, "-c", "import sys; from mm2face.viewer.cli import main; "
                                                 "sys.exit(main(sys.argv[1:]))", view_url])

        async def watch_viewer():
            while viewer.poll() is None:
                await asyncio.sleep(VIEWER_POLL_S)
            if viewer.returncode == 0:
                self.stop.set()                   # the user closed the window: we are done
            else:
                say(f"the viewer exited with code {viewer.returncode} (see its message above); still serving")
        self.spawn(watch_viewer(), "viewer watch", guarded=False)

    async def wait(self) -> None:
        await self.stop.wait()

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self) -> None:
        """Drain, stop the tasks (bounded), write the recordings, then tidy the terminal and the viewer."""
        if self.args.serve:       # graceful drain: no new sessions, running ones get --drain-timeout to finish
            await self.hub.drain(self.args.drain_timeout)
        await self._cancel_tasks()
        self.write_recordings()
        faulthandler.cancel_dump_traceback_later()
        if self.status is not None:
            self.status.clear()
        self._stop_viewer()

    async def _cancel_tasks(self) -> None:
        """A task stuck in a driver or a worker thread must not cost the recordings, nor keep the process
        alive: wait a bounded time, say what is stuck (with every thread's stack), and go on."""
        for t in self.tasks:
            t.cancel()
        _arm_shutdown_watchdog()
        pending = set()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=SHUTDOWN_WAIT_S)
        if pending:
            say(f"{', '.join(sorted(t.get_name() for t in pending))} did not stop within {SHUTDOWN_WAIT_S:.0f} s; "
                "writing the recordings anyway (stacks follow)")
            faulthandler.dump_traceback(file=_fd_stream(), all_threads=True)

    def write_recordings(self) -> None:
        """--record / --record-audio files; called as soon as the stream stops, before the server closes
        (closing waits for clients), so a slow or stuck shutdown cannot lose them."""
        a = self.args
        if a.record and self.recorded:
            from mm2face.engine.frame import MotionClip
            from mm2face.realtime.ws_source import frames_to_motion
            path = MotionClip(frames_to_motion(self.recorded), head=self.model.head_name, style=a.style).save(a.record)
            say(f"recorded {len(self.recorded)} frames to {path}")
        if a.record_audio:
            import numpy as np
            import soundfile as sf
            from mm2face.engine.frame import SAMPLE_RATE
            audio = np.concatenate(self.recorded_audio) if self.recorded_audio else np.zeros(0, np.float32)
            out = Path(a.record_audio)
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")          # never leave a half-written WAV behind
            sf.write(part, audio, SAMPLE_RATE, subtype="FLOAT", format="WAV")
            part.replace(out)
            say(f"recorded {len(audio) / SAMPLE_RATE:.2f} s of input audio to {a.record_audio}")

    def _stop_viewer(self) -> None:
        if self.viewer is not None and self.viewer.poll() is None:
            self.viewer.terminate()
            try:
                self.viewer.wait(timeout=VIEWER_EXIT_S)
            except subprocess.TimeoutExpired:
                self.viewer.kill()

    def result(self) -> int:
        """The exit code: a failed task's reason (after the recordings: what was captured before a device
        failed is kept), else the headless demo's MP4, else 0."""
        from mm2face.realtime import sources
        if self.failure:
            e = self.failure[0]
            if isinstance(e, sources.DeviceError):
                say(str(e))
                return 2
            raise e
        return write_demo_mp4(self.args, self.model, self.recorded) if self.demo_headless else 0


async def amain(args) -> int:
    run = LiveRun(args)
    try:
        run.plan()
        run.open_io()
        run.load_engine()
        await run.build_hub()
        run.install_controls()
        async with contextlib.AsyncExitStack() as stack:
            await run.start(stack)
            await run.wait()
            await run.shutdown()
    except StartupFailed as e:
        say(str(e))
        return 2
    code = run.result()
    # from here only asyncio.run's clean-up remains (cancelling tasks, closing the capture device,
    # joining worker threads); if that blocks, dump every thread's stack and exit (code 1)
    _arm_shutdown_watchdog()
    return code


def clip_to_plausible(motion):
    """Clip values beyond engine.frame's plausibility limits (an untrained model produces them), saying so."""
    import numpy as np
    from mm2face.engine import frame as F
    lim = np.full(F.FRAME_DIM, F.MAX_EXP_ABS, np.float32)
    lim[F.HEAD], lim[F.JAW] = F.MAX_HEAD_RAD * 0.999, F.MAX_JAW_RAD * 0.999
    n = int((np.abs(motion) > lim).sum())
    if n:
        print(f"mm2face-live: warning: {n} values beyond the plausible range were clipped for rendering "
              "(an untrained or diverging model?)", file=sys.stderr)
    return np.clip(motion, -lim, lim)


def write_demo_mp4(args, model, frames) -> int:
    from mm2face.engine.flame import load_head
    from mm2face.realtime.sources import DEMO_WAV
    from mm2face.realtime.ws_source import frames_to_motion
    from mm2face.viewer.output import write_mp4

    if not frames:
        print("mm2face-live: no frames were produced; nothing to write", file=sys.stderr)
        return 1
    if model.head_name != "standin":
        print(f"mm2face-live: this checkpoint speaks the {model.head_name!r} head; rendering it needs that head "
              "model (use mm2face-view --flame on a --record file)", file=sys.stderr)
        return 2
    motion = clip_to_plausible(frames_to_motion(frames))
    path = write_mp4(args.out, motion, load_head("standin"), fps=25, audio_path=DEMO_WAV, style=args.style,
                     progress=not args.quiet)
    print(f"mm2face-live: no display, so the demo was written to {Path(path).resolve()} "
          f"({len(motion)} frames with audio)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.list_devices:
        from mm2face.realtime.sources import DeviceError, list_input_devices
        try:
            names = list_input_devices(args.audio_backend)
        except DeviceError as e:
            print(f"mm2face-live: {e}", file=sys.stderr)
            return 2
        print("\n".join(names) if names else "no input devices found")
        return 0
    for note in resolve_device_arguments(args):
        print(f"mm2face-live: warning: {note}", file=sys.stderr)
    if (args.input_device or args.audio_backend != "sounddevice") and not args.mic:
        print("mm2face-live: --input-device and --audio-backend go with --mic", file=sys.stderr)
        return 2
    if args.loop and not (args.wav or args.demo):
        print("mm2face-live: --loop goes with --wav FILE or --demo", file=sys.stderr)
        return 2
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130
    finally:
        faulthandler.cancel_dump_traceback_later()      # the shutdown watchdog of amain, if armed


if __name__ == "__main__":
    sys.exit(main())
