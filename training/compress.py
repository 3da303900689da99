"""Shrink an MMHead-layout corpus on disk: audio to FLAC (lossless) or Ogg/Opus (lossy), motion into
``facial_motion.zip``. The loader reads the result like the original (see ``AUDIO_SUFFIXES``).

Opus at its default quality keeps speech intelligible and its spectrum close (about 12x smaller than
PCM16); use FLAC where the audio must stay bit-exact (about 2x smaller).
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from .mmhead import MMHeadCorpus, CorpusError

CODECS = {"flac": ("FLAC", "PCM_16", ".flac"), "opus": ("OGG", "OPUS", ".ogg")}


def compress_corpus(src, dst, codec: str = "opus", progress: bool = True) -> dict:
    """Copy corpus ``src`` to ``dst`` with compressed audio and zipped motion; returns sizes in bytes."""
    src, dst = Path(src), Path(dst)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    if dst.exists() and any(dst.iterdir()):
        raise CorpusError(f"{dst} exists and is not empty; choose a new folder")
    fmt, subtype, ext = CODECS[codec]
    corpus = MMHeadCorpus(src)
    (dst / "audio").mkdir(parents=True, exist_ok=True)
    for name in ("talking_subset.json", "t2m_subset.json", "README.md"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for folder in ("text_annotations", "synth_meta"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, dst / folder)
    with zipfile.ZipFile(dst / "facial_motion.zip", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for cid in tqdm(corpus.ids(), desc=f"compress ({codec})", disable=not progress):
            zf.writestr(f"facial_motion/{cid}.pkl", corpus.motion.read(cid))
            if cid in corpus.audio:
                clip = corpus.get(cid)
                sf.write(dst / "audio" / f"{cid}{ext}", clip.audio_16k, 16_000, format=fmt, subtype=subtype)
    size = lambda p: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
    return {"src_bytes": size(src), "dst_bytes": size(dst), "clips": len(corpus.ids())}
