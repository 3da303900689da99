"""Headless rendering, MP4/PNG output, frame sources and the mm2face-view CLI."""
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from mm2face.engine.flame import load_head
from mm2face.engine.frame import JAW, MotionClip
from mm2face.engine.units import unit
from mm2face.viewer import cli
from mm2face.viewer.demo_clip import demo_motion
from mm2face.viewer.source import ClipSource, FrameSource, StaticSource

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ctx():
    from mm2face.viewer.render import create_headless_context
    try:
        c = create_headless_context()
    except RuntimeError as exc:
        pytest.skip(f"no headless OpenGL (EGL) here: {exc}")
    yield c
    c.release()


@pytest.fixture(scope="module")
def head():
    return load_head("standin")


@pytest.fixture(scope="module")
def renderer(ctx, head):
    from mm2face.viewer.render import Renderer
    r = Renderer(ctx, head, size=(256, 256))
    yield r
    r.release()


def _box(renderer, points, pad=2):
    """Pixel bounding box (r0, r1, c0, c1) of projected world points."""
    px = renderer.project(points)
    c0, r0 = np.floor(px.min(0)).astype(int) - pad
    c1, r1 = np.ceil(px.max(0)).astype(int) + pad
    W, H = renderer.size
    return max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)


def test_jaw_open_changes_the_mouth_not_the_forehead(renderer, head):
    neutral = np.zeros(56, np.float32)
    jaw = neutral.copy()
    jaw[JAW.start] = 0.3
    a = renderer.render(neutral).astype(int)
    b = renderer.render(jaw).astype(int)
    assert a.shape == (256, 256, 3) and a.dtype == np.int64
    diff = np.abs(a - b).sum(-1)
    r0, r1, c0, c1 = _box(renderer, head.v_template[head.masks["lips"]])
    mouth = diff[r0:r1, c0:c1]
    assert (mouth > 30).mean() > 0.2, "the open mouth should change a good part of the lip region"
    r0, r1, c0, c1 = _box(renderer, head.v_template[head.masks["forehead"]], pad=-2)
    assert r1 > r0 and c1 > c0
    assert diff[r0:r1, c0:c1].max() <= 3, "the forehead must not change when only the jaw moves"


def test_forehead_region_is_above_the_mouth_region(renderer, head):
    fh = _box(renderer, head.v_template[head.masks["forehead"]])
    lips = _box(renderer, head.v_template[head.masks["lips"]])
    assert fh[1] < lips[0]                     # image rows grow downward


def test_head_is_drawn_in_the_middle_and_lit(renderer):
    img = renderer.render(np.zeros(56, np.float32)).astype(int)
    bg = np.array(img[2, 2])
    fg = np.abs(img - bg).sum(-1) > 30
    assert 0.2 < fg.mean() < 0.8                                     # the head fills the frame, not all of it
    assert fg[128, 128]                                              # centre pixel is on the head
    face = img[fg]
    assert face.std(0).mean() > 10                                   # shaded, not a flat silhouette


def test_blink_hides_the_eye(renderer, head):
    ball = head.v_template[head.masks["left_eyeball"]]
    r0, r1, c0, c1 = _box(renderer, ball, pad=0)
    dark = lambda im: (im.sum(-1) < 200).sum()                      # iris and pupil pixels
    white = lambda im: ((im.min(-1) > 170) & (np.ptp(im, -1) < 40)).sum()   # sclera pixels

    def visible_eye(blink):
        f = np.zeros(56, np.float32)
        f[unit("blink_left")] = blink
        im = renderer.render(f)[r0:r1, c0:c1].astype(int)
        return dark(im) + white(im)
    seen = [visible_eye(b) for b in (0.0, 0.25, 0.5, 1.0)]
    assert seen[0] > 20
    assert seen[0] > seen[1] > seen[2] > seen[3]                     # the lid comes down progressively
    assert seen[2] > 0.1 * seen[0]                                   # half a blink leaves part of the eye open
    assert seen[3] < 0.1 * seen[0]                                   # a full blink covers it


def test_tiny_render_and_vertices_input(ctx, head):
    from mm2face.viewer.render import Renderer
    r = Renderer(ctx, head, size=(16, 16), samples=0)
    try:
        img = r.render(head.v_template)                              # (V, 3) vertices are accepted too
        assert img.shape == (16, 16, 3)
        assert np.ptp(img.reshape(-1, 3), axis=0).max() > 20         # something other than background
        with pytest.raises(ValueError, match="56-number frame"):
            r.render(np.zeros(10))
        m = np.zeros((3, 56), np.float32)
        m[2, JAW.start] = 0.3
        clip = r.render_clip(m)                                      # (T, 56) -> (T, H, W, 3)
        assert clip.shape == (3, 16, 16, 3)
        np.testing.assert_array_equal(clip[0], clip[1])              # same frame, same pixels
        from mm2face.engine.flame import head_vertices
        np.testing.assert_array_equal(r.render_clip(head_vertices(head, m)), clip)   # (T, V, 3) too
    finally:
        r.release()


def test_style_overlay_draws_text_at_the_bottom(renderer):
    f = np.zeros(56, np.float32)
    plain = renderer.render(f).astype(int)
    text = renderer.render(f, style="calm, slow, smiling").astype(int)
    diff = np.abs(plain - text).sum(-1)
    assert diff[-20:].max() > 50                                     # the caption strip
    assert diff[:100].max() == 0                                     # the top is untouched


def test_vertex_normals_of_a_sphere_point_outward():
    from mm2face.engine.standin import _uv_sphere
    from mm2face.viewer.render import vertex_normals
    v, f = _uv_sphere((0, 0, 0), 1.0, 24, 16)
    n = vertex_normals(v, f)
    cos = (n * v / np.linalg.norm(v, axis=1, keepdims=True)).sum(1)
    assert cos.min() > 0.97


def test_write_mp4_frame_count_and_audio(tmp_path, head):
    import soundfile as sf
    from mm2face.viewer.output import count_video_frames, write_mp4
    motion = demo_motion(seconds=0.4)                                # 10 frames at 25 fps
    out = write_mp4(tmp_path / "clip.mp4", motion, fps=25, size=(64, 64), progress=False)   # default head
    assert count_video_frames(out) == 10
    out = write_mp4(tmp_path / "clip12.mp4", motion, 12, size=(64, 64), progress=False)      # fps positional
    assert count_video_frames(out) == 10
    import imageio_ffmpeg
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[1] == pytest.approx(10 / 12, abs=0.05)
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.linspace(0, 2000, 16000 // 2)).astype(np.float32), 16000)
    out2 = write_mp4(tmp_path / "with_audio.mp4", motion, head, fps=25, audio_path=wav, size=(64, 64), progress=False)
    import imageio_ffmpeg
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out2)],
                          capture_output=True, text=True).stderr
    assert "Audio:" in info and "Video:" in info
    assert count_video_frames(out2) == 10


def test_write_mp4_rejects_odd_sizes(tmp_path, head):
    from mm2face.viewer.output import write_mp4
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", demo_motion(0.2), head=head, size=(63, 64), progress=False)


def test_cli_demo_mp4(tmp_path):
    from mm2face.viewer.output import count_video_frames
    out = tmp_path / "demo.mp4"
    assert cli.main(["--demo", "--seconds", "0.4", "--out", str(out), "--size", "64", "--no-progress"]) == 0
    assert count_video_frames(out) == 10


def test_cli_motion_file_to_png_frames_and_single_frame(tmp_path):
    clip = tmp_path / "clip.npz"
    MotionClip(motion=demo_motion(0.2), style="test").save(clip)
    assert cli.main([str(clip), "--out", str(tmp_path / "frames"), "--size", "32", "--no-progress"]) == 0
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 5
    assert cli.main(["--motion", str(clip), "--out", str(tmp_path / "one.png"), "--frame", "2", "--size", "48x32"]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "one.png").size == (48, 32)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli.main([]) == 2
    assert "--demo" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "not found" in capsys.readouterr().err
    flame_clip = tmp_path / "flame.npz"
    MotionClip(motion=np.zeros((3, 56)), head="flame").save(flame_clip)
    assert cli.main([str(flame_clip), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--flame" in capsys.readouterr().err


def test_cli_without_display_suggests_out(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert cli.main(["--demo", "--seconds", "0.2"]) == 3
    err = capsys.readouterr().err
    assert "no display" in err and "--out" in err


def test_cli_dispatches_ws_urls_to_the_websocket_source(monkeypatch):
    made = {}

    class FakeWS:
        closed = False

        def __init__(self, url):
            made["url"] = url

        def latest(self):
            return None

    mod = types.ModuleType("mm2face.realtime.ws_source")
    mod.WebSocketSource = FakeWS
    monkeypatch.setitem(sys.modules, "mm2face.realtime.ws_source", mod)
    monkeypatch.setattr(cli, "_window", lambda source, head, args: made.setdefault("source", source) and 0)
    assert cli.main(["ws://127.0.0.1:8765"]) == 0
    assert made["url"] == "ws://127.0.0.1:8765" and isinstance(made["source"], FakeWS)


def test_clip_source_plays_in_real_time():
    now = [100.0]
    motion = np.zeros((5, 56), np.float32)
    motion[:, 0] = np.arange(5)
    src = ClipSource(motion, fps=25, style="s", clock=lambda: now[0])
    assert isinstance(src, FrameSource)
    frame, t, style = src.latest()
    assert frame[0] == 0 and t == 0.0 and style == "s"
    now[0] += 0.085                                                   # 2.1 frames later
    frame, t, _ = src.latest()
    assert frame[0] == 2 and t == pytest.approx(0.085)
    assert not src.closed
    now[0] += 1.0
    frame, _, _ = src.latest()
    assert frame[0] == 4 and src.closed                               # holds the last frame, then closes
    loop = ClipSource(motion, fps=25, loop=True, clock=lambda: now[0])
    loop.latest()
    now[0] += 6 / 25 + 1e-6
    assert loop.latest()[0][0] == 1 and not loop.closed
    assert isinstance(StaticSource(np.zeros(56)), FrameSource)


def test_demo_motion_has_every_phase():
    m = demo_motion(seconds=6.0)
    assert m.shape == (150, 56) and m.dtype == np.float32
    assert np.abs(m[:10]).max() == 0.0                                # starts neutral
    assert m[:, unit("lip_corner_puller_left")].max() > 0.9            # smile
    assert m[:, JAW.start].max() > 0.15                               # open mouth
    assert m[:, unit("blink_left")].max() > 0.99                      # blink
    assert np.abs(m[:, 50]).max() > 0.1                               # nod
    assert m[:, unit("inner_brow_raiser")].max() > 0.9 and m[:, unit("brow_lowerer")].max() > 0.9
    from mm2face.engine.frame import validate_motion
    validate_motion(m)


def test_cli_renders_a_flame_format_pickle(tmp_path):
    """--flame takes any FLAME-format pickle: here the stand-in written in FLAME's layout, without masks."""
    from dataclasses import replace
    from mm2face.engine.flame import save_head
    head = load_head("standin")
    pkl = save_head(replace(head, masks={}, expression_names=None), tmp_path / "generic_model.pkl")
    clip = tmp_path / "flame_clip.npz"
    m = np.zeros((2, 56), np.float32)
    m[1, JAW.start] = 0.3
    MotionClip(motion=m, head="flame").save(clip)
    out = tmp_path / "flame.png"
    assert cli.main([str(clip), "--flame", str(pkl), "--out", str(out), "--frame", "1", "--size", "64"]) == 0
    from PIL import Image
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 64, 3) and np.ptp(img.reshape(-1, 3), axis=0).max() > 20
