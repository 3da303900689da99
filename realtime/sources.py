"""Audio sources of the live driver: microphone, wav file at real-time pace, and idle time.

Each source is an async iterator of ``(audio_16k, arrival_time)`` chunks: ``audio_16k: (samples,)
float32`` at 16 kHz, or ``None`` with a sample count for time that passes with no audio
(:class:`IdleSource`); ``arrival_time`` is the server's ``time.time()`` when the chunk became
available (the sound card's own buffering is not included). :func:`feed` drives a
:class:`~mm2face.realtime.server.LiveSession` from a source.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mm2face.engine.frame import SAMPLE_RATE
from mm2face.engine.audio import StreamResampler, load_audio_16k

log = logging.getLogger("mm2face.realtime")

DEMO_WAV = Path(__file__).resolve().parent / "assets" / "demo_speech.wav"
CHUNK_S = 0.02                   # 20 ms chunks: 320 samples at 16 kHz
CLOSE_WAIT_S = 2.0               # how long the event loop waits for a capture device to close (s)
BACKENDS = ("sounddevice", "pyaudio")


class DeviceError(RuntimeError):
    """The audio device is missing, unusable or vanished. The message lists the input devices."""


@dataclass
class Chunk:
    audio_16k: np.ndarray | None     # (samples,) float32, or None for time without audio
    n_samples: int                   # 16 kHz samples this chunk covers
    arrival_time: float              # server time.time() when it became available


# ----------------------------------------------------------------------------------------------
# Device listing

def list_input_devices(backend: str = "sounddevice") -> list[str]:
    """Names of the input devices PortAudio sees through ``backend`` (may be empty)."""
    if backend == "sounddevice":
        import sounddevice as sd
        try:
            return [d["name"] for d in sd.query_devices() if d["max_input_channels"] > 0]
        except Exception as e:  # PortAudio not initialised / no host API
            raise DeviceError(f"PortAudio could not list devices: {e}") from None
    pa = _pyaudio().PyAudio()
    try:
        return [pa.get_device_info_by_index(i)["name"] for i in range(pa.get_device_count())
                if pa.get_device_info_by_index(i)["maxInputChannels"] > 0]
    finally:
        pa.terminate()


def _pyaudio():
    """The ``pyaudio`` module; :class:`DeviceError` saying what to do when it is missing or broken (installed,
    but its C module or the PortAudio library under it does not load)."""
    try:
        import pyaudio
    except ImportError as e:
        if e.name == "pyaudio":
            raise DeviceError("--audio-backend pyaudio needs PyAudio: pip install 'mm2face-live[pyaudio]' "
                              "(on Linux first: apt-get install portaudio19-dev gcc); "
                              "or use --audio-backend sounddevice") from None
        raise DeviceError(f"--audio-backend pyaudio: PyAudio is installed but does not load ({e}). Rebuild it: "
                          "pip install --force-reinstall --no-deps --no-cache-dir pyaudio (on Linux first: "
                          "apt-get install portaudio19-dev gcc); or use --audio-backend sounddevice") from None
    return pyaudio


def _device_help(backend: str) -> str:
    try:
        names = list_input_devices(backend)
    except DeviceError as e:
        return str(e)
    if not names:
        return ("no input devices found. Plug in a microphone, or start PulseAudio, or use --wav FILE / --demo")
    return "input devices:\n" + "\n".join(f"  {n}" for n in names) + "\nchoose one with --input-device NAME"


def resolve_device(name: str | None, backend: str = "sounddevice"):
    """Return ``(device, native_rate_hz, device_name)`` for an input device name (substring match) or
    the default input; ``device`` is what the backend opens (sounddevice: the name, PyAudio: the index).
    Raises :class:`DeviceError` with the device list when there is none."""
    if backend not in BACKENDS:
        raise DeviceError(f"unknown audio backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "sounddevice":
        import sounddevice as sd
        try:
            info = sd.query_devices(name if name is not None else None, kind="input")
        except (ValueError, sd.PortAudioError) as e:
            what = f"input device {name!r}" if name else "a default input device"
            raise DeviceError(f"could not find {what} ({e}).\n{_device_help(backend)}") from None
        return info["name"], int(info["default_samplerate"]), info["name"]
    pa = _pyaudio().PyAudio()
    try:
        if name is None:
            try:
                info = pa.get_default_input_device_info()
            except OSError:
                raise DeviceError(f"no default input device.\n{_device_help(backend)}") from None
            return int(info["index"]), int(info["defaultSampleRate"]), info["name"]
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if info["maxInputChannels"] > 0 and name.lower() in info["name"].lower():
                return i, int(info["defaultSampleRate"]), info["name"]
        raise DeviceError(f"could not find input device {name!r}.\n{_device_help(backend)}")
    finally:
        pa.terminate()


# ----------------------------------------------------------------------------------------------
# Sources

class MicSource:
    """Live capture through PortAudio (``sounddevice``, default, or ``pyaudio``), resampled to 16 kHz.

    The device is opened at 16 kHz when it accepts that rate, else at its native rate. If the device
    stops delivering audio for ``stall_s`` seconds (unplugged, server gone), iteration raises
    :class:`DeviceError`.
    """

    def __init__(self, device: str | None = None, backend: str = "sounddevice", chunk_s: float = CHUNK_S,
                 stall_s: float = 2.0):
        self.device_name, self.backend, self.chunk_s, self.stall_s = device, backend, chunk_s, stall_s
        self.device, self.native_rate, self.resolved_name = resolve_device(device, backend)
        self.rate = None
        self._stream = None
        self._pa = None

    def _open(self, loop, queue):
        def deliver(mono: np.ndarray) -> bool:
            """Hand a block to the event loop; False once the loop is closed (a close that did not finish
            in CLOSE_WAIT_S left the device running): the callback then ends the stream."""
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (mono, time.time()))
            except RuntimeError:
                return False
            return True

        errors = []
        for rate in dict.fromkeys((SAMPLE_RATE, self.native_rate)):
            block = int(round(rate * self.chunk_s))
            try:
                if self.backend == "sounddevice":
                    import sounddevice as sd

                    def cb(indata, frames, time_info, status):
                        if not deliver(indata[:, 0].astype(np.float32, copy=True)):
                            raise sd.CallbackAbort
                    # blocksize=0 lets PortAudio pick block sizes: fixed small blocks stall some
                    # host APIs (the ALSA "pulse" plugin delivers one block and stops).
                    self._stream = sd.InputStream(device=self.device, channels=1, samplerate=rate,
                                                  blocksize=0, dtype="float32", callback=cb,
                                                  latency=self.chunk_s)
                    self._stream.start()
                else:
                    pyaudio = _pyaudio()

                    def cb(in_data, frame_count, time_info, status):
                        alive = deliver(np.frombuffer(in_data, "<i2").astype(np.float32) / 32768.0)
                        return (None, pyaudio.paContinue if alive else pyaudio.paAbort)
                    self._pa = pyaudio.PyAudio()
                    self._stream = self._pa.open(format=pyaudio.paInt16, channels=1, rate=rate, input=True,
                                                 input_device_index=self.device, frames_per_buffer=block,
                                                 stream_callback=cb)
                    self._stream.start_stream()
                self.rate = rate
                return
            except Exception as e:
                errors.append(f"{rate} Hz: {e}")
                self.close()
        raise DeviceError(f"could not open input device {self.resolved_name!r} ({'; '.join(errors)}).\n"
                          f"{_device_help(self.backend)}")

    def close(self):
        s, self._stream = self._stream, None
        if s is not None:
            try:
                if self.backend == "sounddevice":
                    s.abort(); s.close()  # noqa: E702   (abort: no wait for pending buffers)
                else:
                    s.close()  # Pa_CloseStream aborts an active stream (stop_stream would wait for buffers)
            except Exception:
                pass
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._open(loop, queue)
        rs = StreamResampler(self.rate)
        log.info("capturing from %r at %d Hz via %s", self.resolved_name, self.rate, self.backend)
        try:
            while True:
                try:
                    mono, t = await asyncio.wait_for(queue.get(), self.stall_s)
                except asyncio.TimeoutError:
                    raise DeviceError(f"input device {self.resolved_name!r} delivered no audio for "
                                      f"{self.stall_s:.0f} s (unplugged or its sound server stopped?).\n"
                                      f"{_device_help(self.backend)}") from None
                audio = rs.process(mono)
                if len(audio):
                    yield Chunk(audio, len(audio), t)
        finally:
            # Closing a PortAudio stream can block in the driver (seen intermittently with the ALSA
            # "pulse" plugin on SIGTERM). On the event loop that stalled the whole shutdown, recordings
            # included, so the close runs in a thread the loop waits for at most CLOSE_WAIT_S.
            closer = threading.Thread(target=self.close, name="mic-close", daemon=True)
            closer.start()
            closer.join(CLOSE_WAIT_S)
            if closer.is_alive():
                log.warning("input device %r did not close within %.0f s; leaving it", self.resolved_name,
                            CLOSE_WAIT_S)


class WavSource:
    """A file streamed at real-time pace (each chunk is released when it would have been recorded),
    optionally looped. ``speed`` > 1 plays faster than real time (tests)."""

    def __init__(self, path, loop: bool = False, chunk_s: float = CHUNK_S, speed: float = 1.0):
        self.path = Path(path)
        self.audio = load_audio_16k(path)          # AudioFileError (a ValueError) for a bad file
        self.loop, self.chunk, self.speed = loop, int(round(chunk_s * SAMPLE_RATE)), speed

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    async def __aiter__(self):
        aloop = asyncio.get_running_loop()
        t0, done = aloop.time(), 0
        while True:
            for i in range(0, len(self.audio), self.chunk):
                piece = self.audio[i:i + self.chunk]
                done += len(piece)
                delay = t0 + done / SAMPLE_RATE / self.speed - aloop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield Chunk(piece, len(piece), time.time())
            if not self.loop:
                return


class IdleSource:
    """Time passing with no audio, at real-time pace (text-only mode and idle between inputs)."""

    def __init__(self, chunk_s: float = 0.04, speed: float = 1.0):
        self.chunk, self.speed = int(round(chunk_s * SAMPLE_RATE)), speed

    async def __aiter__(self):
        aloop = asyncio.get_running_loop()
        t0, done = aloop.time(), 0
        while True:
            done += self.chunk
            delay = t0 + done / SAMPLE_RATE / self.speed - aloop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield Chunk(None, self.chunk, time.time())


async def feed(live, source, *, end_at_eof: bool = True, idle_after: bool = False, on_eof=None) -> None:
    """Push ``source``'s chunks into ``live`` (a LiveSession) until the source ends; then
    ``live.end()`` (the mouth closes), ``on_eof()`` and, with ``idle_after``, idle motion forever."""
    chunks = aiter(source)
    # closed here, also when the task is cancelled: an async generator left suspended is only closed
    # when the loop shuts down, so a capture device would stay open past the stop
    async with contextlib.aclosing(chunks) if hasattr(chunks, "aclose") else contextlib.nullcontext():
        async for ch in chunks:
            if ch.audio_16k is None:
                await live.push_no_audio(ch.n_samples)
            else:
                await live.stream_audio(ch.audio_16k, arrival_time=ch.arrival_time)
    if end_at_eof:
        await live.end()
    if on_eof is not None:
        on_eof()
    if idle_after:
        await feed(live, IdleSource(), end_at_eof=False)
