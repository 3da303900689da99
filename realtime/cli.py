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
        lat, a2f = self.live.latency_ms(), self.live.a2f_ms()
        style = self.live.style or "(neutral)"
        ms = lambda x: "  n/a" if math.isnan(x) else f"{x:5.0f}"  # noqa: E731
        s = (f"{self.live.fps():5.1f} fps | latency {ms(a2f)} ms audio-to-face, {ms(lat)} ms processing | "
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


async def amain(args) -> int:
    from mm2face.engine.audio import AudioFileError
    from mm2face.realtime import sources
    from mm2face.realtime.server import Hub, serve_hub

    demo_headless = args.demo and not has_display()
    if args.demo and not demo_headless:
        args.view = True
    if args.view or args.demo:
        args.serve = True                        # the demo's frames are served too
    if args.demo:
        args.wav = str(sources.DEMO_WAV)

    # Open the audio source before loading the model, so device problems are reported at once.
    try:
        outputs = udp_outputs.open_outputs(args)          # --livelink / --vmc
    except udp_outputs.OutputError as e:
        print(f"mm2face-live: {e}", file=sys.stderr)
        return 2
    source = None
    try:
        if args.mic:
            source = sources.MicSource(args.input_device, args.audio_backend)
        elif args.wav:
            source = sources.WavSource(args.wav, loop=args.loop or (args.demo and not demo_headless))
    except (sources.DeviceError, AudioFileError) as e:
        print(f"mm2face-live: {e}", file=sys.stderr)
        return 2

    from mm2face.engine.session import StreamConfig, StreamSession   # imports torch: after the quick checks
    model = with_backend(load_the_model(args), args)
    cfg = StreamConfig()
    if args.guidance is not None:
        cfg.guidance = args.guidance
    cfg.vad = not args.no_vad
    cfg.parse_styles = not args.raw_styles
    make_session = lambda style: StreamSession(model, cfg, style=style, device=args.device)  # noqa: E731
    serving = args.serve or args.view or args.demo
    limits = admission.limits_from_args(args, make_session if serving else None,
                                        log=lambda line: print(f"mm2face-live: {line}", file=sys.stderr))
    hub = Hub(make_session, token=args.token, limits=limits,
              server_session_control=args.server_session_control, ingest_speed=args.ingest_speed or None)
    configure_arkit(hub, model.head_name, args.arkit_retarget, build_now=bool(serving or args.mqtt or outputs))
    live = await hub.create_session("default", style=args.style)
    try:
        udp_outputs.attach(outputs, live, hub.arkit_retarget, hub.arkit_error)
    except udp_outputs.OutputError as e:
        print(f"mm2face-live: {e}", file=sys.stderr)
        return 2
    recorded, recorded_audio = [], []
    if args.record or demo_headless:
        live.listeners.append(lambda _live, frames: recorded.extend(frames))
    if args.record_audio:
        live.audio_taps.append(recorded_audio.append)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            print(f"\nmm2face-live: {sig.name}, stopping", file=sys.stderr, flush=True)
        stop.set()

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
            await live.set_style(text)
        asyncio.ensure_future(apply())
    read_stdin_styles(loop, on_style_line)

    tasks: list[asyncio.Task] = []
    failure: list[BaseException] = []

    def write_recordings() -> None:
        """--record / --record-audio files; called as soon as the stream stops, before the server closes
        (closing waits for clients), so a slow or stuck shutdown cannot lose them."""
        if args.record and recorded:
            from mm2face.engine.frame import MotionClip
            from mm2face.realtime.ws_source import frames_to_motion
            path = MotionClip(frames_to_motion(recorded), head=model.head_name, style=args.style).save(args.record)
            print(f"mm2face-live: recorded {len(recorded)} frames to {path}", file=sys.stderr, flush=True)
        if args.record_audio:
            import numpy as np
            import soundfile as sf
            audio = np.concatenate(recorded_audio) if recorded_audio else np.zeros(0, np.float32)
            out = Path(args.record_audio)
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")          # never leave a half-written WAV behind
            sf.write(part, audio, 16000, subtype="FLOAT", format="WAV")
            part.replace(out)
            print(f"mm2face-live: recorded {len(audio) / 16000:.2f} s of input audio to {args.record_audio}",
                  file=sys.stderr, flush=True)

    async def guarded(coro, name):
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reported below, then we stop
            failure.append(e)
            stop.set()

    async with contextlib.AsyncExitStack() as stack:
        if args.serve:
            try:
                srv = await stack.enter_async_context(serve_hub(hub, args.host, args.port))
            except OSError as e:
                print(f"mm2face-live: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                      "pick another --port", file=sys.stderr)
                if not demo_headless:
                    return 2
                args.serve = False                # a headless demo still writes its MP4
                srv = None
        if args.serve:
            url = f"ws://{args.host}:{srv.port}"
            print(f"mm2face-live: serving {url} (session 'default', protocol v{P.PROTOCOL_VERSION})", file=sys.stderr, flush=True)
            print(f"mm2face-live: browser viewer at http://{args.host}:{srv.port}/ (docs/guides/browser.md)",
                  file=sys.stderr, flush=True)
            if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
                print("mm2face-live: warning: listening beyond this machine without --token; anyone who can "
                      "reach the port can change the style", file=sys.stderr)
        for o in outputs:
            tasks.append(asyncio.create_task(guarded(o.run(), o.name), name=o.name))
            print(f"mm2face-live: {o} at {o.playout.out_fps:g} fps", file=sys.stderr)
        if args.mqtt:
            from mm2face.realtime.mqtt import MqttBridge, parse_host_port
            host, port = parse_host_port(args.mqtt)
            try:
                bridge = MqttBridge(hub, host, port, prefix=args.mqtt_prefix, frame_format=args.mqtt_format)
            except P.ProtocolError as e:
                print(f"mm2face-live: --mqtt-format {args.mqtt_format}: {e.message}", file=sys.stderr)
                return 2
            tasks.append(asyncio.create_task(guarded(bridge.run(), "mqtt"), name="mqtt"))
            print(f"mm2face-live: MQTT to {host}:{port}, topics {args.mqtt_prefix}/default/...", file=sys.stderr)

        def source_done():
            if not args.serve or demo_headless:
                stop.set()

        if source is not None:
            tasks.append(asyncio.create_task(guarded(
                sources.feed(live, source, idle_after=args.serve and not demo_headless, on_eof=source_done), "source"),
                name="audio source"))
        else:
            tasks.append(asyncio.create_task(guarded(sources.feed(live, sources.IdleSource(), end_at_eof=False), "idle"),
                                             name="idle source"))
        status = None
        if not args.quiet:
            status = StatusLine(hub, live)
            tasks.append(asyncio.create_task(status.run(), name="status line"))
        viewer = None
        if args.view:
            view_url = f"ws://127.0.0.1:{srv.port}" if args.host in ("0.0.0.0", "::") else url
            viewer = subprocess.Popen([sys.executable, "-c", "import sys; from mm2face.viewer.cli import main; "
                                       "sys.exit(main(sys.argv[1:]))", view_url])

            async def watch_viewer():
                while viewer.poll() is None:
                    await asyncio.sleep(0.2)
                if viewer.returncode == 0:
                    stop.set()                        # the user closed the window: we are done
                else:
                    print(f"mm2face-live: the viewer exited with code {viewer.returncode} (see its message "
                          "above); still serving", file=sys.stderr)
            tasks.append(asyncio.create_task(watch_viewer(), name="viewer watch"))
        if args.seconds is not None:
            loop.call_later(args.seconds, stop.set)

        await stop.wait()
        if args.serve:       # graceful drain: no new sessions, running ones get --drain-timeout to finish
            await hub.drain(args.drain_timeout)
        for t in tasks:
            t.cancel()
        # A task stuck in a driver or a worker thread must not cost the recordings, nor keep the process
        # alive: wait a bounded time, say what is stuck (with every thread's stack), and go on.
        _arm_shutdown_watchdog()
        pending = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        if pending:
            print(f"mm2face-live: {', '.join(sorted(t.get_name() for t in pending))} did not stop within "
                  f"{SHUTDOWN_WAIT_S:.0f} s; writing the recordings anyway (stacks follow)", file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=_fd_stream(), all_threads=True)
        write_recordings()
        faulthandler.cancel_dump_traceback_later()
        if status is not None:
            status.clear()
        if viewer is not None and viewer.poll() is None:
            viewer.terminate()
            try:
                viewer.wait(timeout=5)
            except subprocess.TimeoutExpired:
                viewer.kill()

    if failure:              # after the recordings: what was captured before a device failed is kept
        e = failure[0]
        if isinstance(e, sources.DeviceError):
            print(f"mm2face-live: {e}", file=sys.stderr)
            return 2
        raise e
    code = write_demo_mp4(args, model, recorded) if demo_headless else 0
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
