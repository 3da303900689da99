"""Headless output: PNG frames and MP4 (H.264 through imageio-ffmpeg), optionally with audio muxed in."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from mm2face.engine.frame import FPS, validate_motion
from mm2face.engine.flame import HeadModel, head_vertices

from .render import Renderer, create_headless_context


def write_png(path, image: np.ndarray) -> Path:
    """Write one (H, W, 3) uint8 image."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path


def write_pngs(out_dir, images: Iterable[np.ndarray], prefix: str = "frame") -> list[Path]:
    """Write images as ``out_dir/frame_000000.png`` ... ; returns the paths."""
    out_dir = Path(out_dir)
    return [write_png(out_dir / f"{prefix}_{i:06d}.png", im) for i, im in enumerate(images)]


def render_frames(head: HeadModel, motion, size=(512, 512), style: str = "", ctx=None,
                  batch: int = 64, progress: bool = True, desc: str = "render") -> Iterable[np.ndarray]:
    """Yield one (H, W, 3) uint8 image per frame of ``motion (T, 56)``, rendered headless."""
    motion = validate_motion(motion)
    own_ctx = ctx is None
    ctx = ctx or create_headless_context()
    renderer = Renderer(ctx, head, size=size)
    try:
        with tqdm(total=len(motion), desc=desc, unit="frame", disable=not progress) as bar:
            for i in range(0, len(motion), batch):
                for verts in head_vertices(head, motion[i:i + batch]):
                    yield renderer.render(verts, style)
                    bar.update(1)
    finally:
        renderer.release()
        if own_ctx:
            ctx.release()


def write_mp4(path, motion, head: HeadModel | None = None, fps: int = FPS, audio_path=None, *,
              size=(512, 512), style: str = "", progress: bool = True) -> Path:
    """Render ``motion (T, 56)`` to an H.264 MP4 at ``fps``; mux ``audio_path`` (any ffmpeg-readable file) if given.

    head: the head to draw (default: the stand-in); ``write_mp4(path, motion, fps=25, audio_path=wav)``
    works too. With audio, the result is cut to the shorter of video and audio.
    """
    import imageio_ffmpeg

    if isinstance(head, (int, float)) and not isinstance(head, bool):   # called as write_mp4(path, motion, 25[, wav])
        shifted_audio = fps if not isinstance(fps, int) else audio_path
        head, fps, audio_path = None, int(head), shifted_audio
    if head is None:
        from mm2face.engine.flame import load_head
        head = load_head("standin")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    W, H = size
    if W % 2 or H % 2:
        raise ValueError(f"H.264 needs an even width and height, got {W}x{H}")
    video_path = path if audio_path is None else path.with_suffix(".video.mp4")
    writer = imageio_ffmpeg.write_frames(str(video_path), (W, H), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", quality=7, macro_block_size=1,
                                         output_params=["-movflags", "+faststart"])
    writer.send(None)
    try:
        for img in render_frames(head, motion, size=size, style=style, progress=progress, desc=path.name):
            writer.send(np.ascontiguousarray(img))
    finally:
        writer.close()
    if audio_path is not None:
        audio_path = Path(audio_path)
        if not audio_path.exists():
            raise FileNotFoundError(f"audio file not found: {audio_path}")
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video_path),
               "-i", str(audio_path), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac",
               "-shortest", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        video_path.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg could not mux {audio_path} into {path}: {proc.stderr.strip()}")
    return path


def count_video_frames(path) -> int:
    """Number of video frames in a file, decoded with imageio-ffmpeg (exact, not the header's estimate)."""
    import imageio_ffmpeg
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return int(n)
