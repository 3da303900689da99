"""mm2face.viewer: draw FLAME-format heads from 56-number frames, in a window or headless.

Modules (imported on demand, so ``mm2face-view --help`` stays fast):

* :mod:`.render`: ``Renderer(ctx, head, size)`` (``render(frame56) -> (H, W, 3) uint8``) and
  ``create_headless_context()`` (EGL);
* :mod:`.source`: the ``FrameSource`` protocol (``latest()``, ``closed``) and ``ClipSource``;
* :mod:`.window`: ``run_window(source, head)`` (GLFW);
* :mod:`.output`: ``write_png``, ``write_pngs``, ``write_mp4`` (imageio-ffmpeg, optional audio);
* :mod:`.demo_clip`: ``demo_motion(seconds)``, the built-in clip;
* :mod:`.gallery`: regenerates the pictures in ``docs/img``;
* :mod:`.cli`: ``mm2face-view``.
"""
