"""A GLFW window that draws the latest frame of a frame source at display rate.

Drawing is the :class:`~mm2face.viewer.render.Renderer`'s job; frames come from any
:class:`~mm2face.viewer.source.FrameSource` (a clip, the live WebSocket stream, ...).
Keys: Esc or Q closes the window.

Open the window in a process that has not made a headless EGL context
(:func:`~mm2face.viewer.render.create_headless_context`): with Mesa, a GLX window after EGL in the
same process ends the process (an X error). Render headless and show windows from separate processes.
"""
from __future__ import annotations

import os
import sys
import time

from mm2face.engine.flame import HeadModel

from .source import FrameSource


class NoDisplayError(RuntimeError):
    """There is no display to open a window on."""


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_window(source: FrameSource, head: HeadModel, size=(720, 720), title: str = "mm2face-view",
               style_overlay: bool = False, max_seconds: float | None = None) -> int:
    """Open a window and draw ``source`` until the window closes (or ``max_seconds`` pass).

    Returns the number of frames drawn. Raises :class:`NoDisplayError` without a display.
    """
    if not has_display():
        raise NoDisplayError("no display found (DISPLAY / WAYLAND_DISPLAY unset): the window cannot open here. "
                             "Render headless instead, e.g. `mm2face-view clip.npz --out clip.mp4` "
                             "or `--out frames/` for PNG frames.")
    import glfw
    import moderngl

    from .render import Renderer

    if not glfw.init():
        raise NoDisplayError("GLFW could not initialise the display; try `--out clip.mp4` to render headless")
    try:
        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
        glfw.window_hint(glfw.RESIZABLE, False)
        glfw.window_hint(glfw.SAMPLES, 4)
        win = glfw.create_window(int(size[0]), int(size[1]), title, None, None)
        if not win:
            raise NoDisplayError("could not open an OpenGL 3.3 window; try `--out clip.mp4` to render headless")
        glfw.make_context_current(win)
        glfw.swap_interval(1)                       # draw at display rate
        ctx = moderngl.create_context()
        fb_size = glfw.get_framebuffer_size(win)
        renderer = Renderer(ctx, head, size=fb_size, samples=0)
        last = None
        n = 0
        t_start = time.monotonic()
        try:
            while not glfw.window_should_close(win):
                if glfw.get_key(win, glfw.KEY_ESCAPE) == glfw.PRESS or glfw.get_key(win, glfw.KEY_Q) == glfw.PRESS:
                    break
                item = source.latest()
                if item is not None:
                    last = item
                if last is not None:
                    frame, t_audio_s, style = last
                    text = None
                    if style_overlay:
                        text = f"{t_audio_s:6.2f} s  {style}" if style else f"{t_audio_s:6.2f} s"
                    ctx.screen.use()
                    ctx.viewport = (0, 0, *fb_size)
                    renderer.draw(frame, text, fbo=ctx.screen)
                    n += 1
                else:
                    ctx.screen.use()
                    ctx.screen.clear(*renderer.background)
                if source.closed:
                    err = getattr(source, "error", None)
                    glfw.set_window_title(win, f"{title}  (ended{': ' + str(err) if err else ''})")
                glfw.swap_buffers(win)
                glfw.poll_events()
                if max_seconds is not None and time.monotonic() - t_start > max_seconds:
                    break
        finally:
            renderer.release()
            close = getattr(source, "close", None)
            if callable(close):
                close()
        return n
    finally:
        glfw.terminate()
