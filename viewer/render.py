"""moderngl renderer of a FLAME-format head: one 56-number frame (or a vertex array) in, one image out.

    ctx = create_headless_context()
    r = Renderer(ctx, load_head("standin"), size=(512, 512))
    rgb = r.render(frame56)              # (H, W, 3) uint8
    r.release(); ctx.release()

The renderer does not know where frames come from (see :mod:`mm2face.viewer.source`). It draws
into its own off-screen framebuffer (:meth:`Renderer.render`) or into any framebuffer you pass
(:meth:`Renderer.draw`, used by the window). Vertex normals are recomputed on the CPU every frame.
"""
from __future__ import annotations

import math
from pathlib import Path

import moderngl
import numpy as np
import scipy.sparse as sp

from mm2face.engine.flame import HeadModel, head_vertices

SHADER_DIR = Path(__file__).with_name("shaders")
EGL_HELP = ("headless OpenGL needs EGL and Mesa: on Debian/Ubuntu run "
            "`sudo apt-get install -y libegl1 libgl1-mesa-dri libegl-mesa0` (software rendering works; "
            "no GPU needed)")

# albedo of the head's parts (sRGB 0..1) and specular strength; parts come from head.masks
SKIN = (0.87, 0.66, 0.54)
PALETTE = {                      # mask name -> (sRGB colour, specular, border softening in mesh rings)
    "hair": ((0.20, 0.13, 0.09), 0.06, 4),
    "brows": ((0.30, 0.20, 0.14), 0.05, 2),
    "lashes": ((0.16, 0.10, 0.08), 0.05, 1),
    "lips": ((0.70, 0.34, 0.34), 0.30, 2),
    "nostrils": ((0.35, 0.18, 0.15), 0.0, 1),
    "lip_inner": ((0.62, 0.30, 0.31), 0.35, 0),
    "teeth": ((0.93, 0.91, 0.84), 0.45, 0),
    "tongue": ((0.60, 0.26, 0.27), 0.35, 0),
}
SCLERA, IRIS, PUPIL = (0.93, 0.91, 0.88), (0.33, 0.22, 0.13), (0.03, 0.03, 0.03)


def create_headless_context() -> moderngl.Context:
    """An OpenGL 3.3+ context without a display, through EGL (works on CPU-only machines via Mesa)."""
    try:
        return moderngl.create_context(standalone=True, backend="egl")
    except Exception as exc:  # noqa: BLE001 - moderngl/glcontext raise various types here
        raise RuntimeError(f"could not create a headless EGL OpenGL context ({exc}); {EGL_HELP}") from exc


def load_program(ctx: moderngl.Context, name: str) -> moderngl.Program:
    """Compile ``viewer/shaders/<name>.glsl`` (one file with VERTEX_SHADER / FRAGMENT_SHADER sections)."""
    src = (SHADER_DIR / f"{name}.glsl").read_text()
    return ctx.program(vertex_shader=f"#version 330\n#define VERTEX_SHADER\n{src}",
                       fragment_shader=f"#version 330\n#define FRAGMENT_SHADER\n{src}")


# ----------------------------------------------------------------------------- geometry helpers

def vertex_normal_matrix(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """(V, F) sparse matrix that sums face normals into the vertices of each face."""
    F = len(faces)
    rows = faces.reshape(-1)
    cols = np.repeat(np.arange(F), 3)
    return sp.csr_matrix((np.ones(3 * F, np.float32), (rows, cols)), shape=(n_vertices, F))


def vertex_normals(verts: np.ndarray, faces: np.ndarray, acc: sp.csr_matrix | None = None) -> np.ndarray:
    """Area-weighted unit vertex normals. verts: (V, 3), faces: (F, 3) -> (V, 3) float32."""
    v = np.asarray(verts, np.float32)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])      # (F, 3), |fn| = 2 area
    if acc is None:
        acc = vertex_normal_matrix(faces, len(v))
    vn = acc @ fn
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    return vn.astype(np.float32)


def _srgb_to_linear(c) -> np.ndarray:
    return np.power(np.asarray(c, np.float32), 2.2)


def head_colors(head: HeadModel) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex albedo (V, 3) linear RGB and specular (V,) from the head's masks.

    Parts without a mask (e.g. the real FLAME without its masks file) stay skin-coloured.
    Eyeball vertices (masks ``left_eyeball`` / ``right_eyeball``) get sclera, iris and pupil by the
    angle between the vertex direction from the eyeball centre and +z.
    """
    V = head.n_vertices
    col = np.tile(np.asarray(SKIN, np.float32), (V, 1))
    spec = np.full(V, 0.18, np.float32)
    adj = None
    for name, (c, s, soften) in PALETTE.items():
        idx = head.masks.get(name)
        if idx is None or not len(idx):
            continue
        w = np.zeros(V, np.float32)
        w[np.asarray(idx)] = 1.0
        if soften:                                  # blur the part's border so grid steps do not show
            adj = _adjacency(head.faces, V) if adj is None else adj
            for _ in range(soften):
                w = adj @ w
            if soften <= 2:                                # small parts: keep them solid, border at ~0.3
                w = np.clip((w - 0.1) / 0.45, 0.0, 1.0)
        col = col * (1 - w[:, None]) + np.asarray(c, np.float32) * w[:, None]
        spec = spec * (1 - w) + s * w
    for name in ("left_eyeball", "right_eyeball"):
        idx = head.masks.get(name)
        if idx is None or not len(idx):
            continue
        idx = np.asarray(idx)
        p = head.v_template[idx]
        d = p - 0.5 * (p.min(0) + p.max(0))            # the sphere's centre
        ang = np.arccos(np.clip(d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-12), -1, 1))
        col[idx] = np.where((ang < 0.21)[:, None], PUPIL, np.where((ang < 0.49)[:, None], IRIS, SCLERA))
        spec[idx] = 0.9
    return _srgb_to_linear(col), spec


def _adjacency(faces: np.ndarray, V: int) -> sp.csr_matrix:
    """Row-normalised (V, V) matrix averaging each vertex with its mesh neighbours (itself included)."""
    f = np.asarray(faces, np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0], np.arange(V)])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2], np.arange(V)])
    A = sp.csr_matrix((np.ones(len(i), np.float32), (i, j)), shape=(V, V))
    A.data[:] = 1.0                                            # duplicate edges count once
    deg = np.asarray(A.sum(1)).ravel()
    return sp.diags(1.0 / deg).astype(np.float32) @ A


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    f = target - eye
    f /= np.linalg.norm(f)
    s = np.cross(f, up)
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = s, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def perspective(fov_y_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(math.radians(fov_y_deg) / 2)
    m = np.zeros((4, 4))
    m[0, 0], m[1, 1] = f / aspect, f
    m[2, 2], m[2, 3] = (far + near) / (near - far), 2 * far * near / (near - far)
    m[3, 2] = -1.0
    return m


def face_camera(head: HeadModel, aspect: float, fov_y_deg: float = 22.0,
                zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed camera in front of the face that frames forehead to chin with some margin.

    Returns (view_proj (4, 4) float32, eye position (3,)). Uses the "face" mask if the head has one.
    """
    v = head.v_template
    face = head.masks.get("face")
    pts = v[np.asarray(face)] if face is not None and len(face) else v
    lo, hi = pts.min(0), pts.max(0)
    target = np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]) + 0.15 * (hi[1] - lo[1]), 0.5 * (lo[2] + hi[2])])
    half_h = 0.5 * (hi[1] - lo[1]) * 1.5
    half_w = 0.5 * (hi[0] - lo[0]) * 1.45
    half = max(half_h, half_w / aspect) / zoom
    dist = half / math.tan(math.radians(fov_y_deg) / 2)
    eye = target + np.array([0.0, 0.0, dist + hi[2] - target[2]])
    vp = perspective(fov_y_deg, aspect, 0.05, dist * 4) @ look_at(eye, target)
    return vp.astype(np.float32), eye


# ----------------------------------------------------------------------------- text overlay

class TextOverlay:
    """Draws a line of text (e.g. the current style) into an RGBA texture and composites it."""

    def __init__(self, ctx: moderngl.Context, size: tuple[int, int]):
        self.ctx, self.size = ctx, size
        self.prog = load_program(ctx, "overlay")
        self.tex = None
        self.vao = None
        self.vbo = None
        self.text = None

    def _make(self, text: str):
        from PIL import Image, ImageDraw, ImageFont
        W, H = self.size
        font_px = max(10, H // 30)
        try:
            font = ImageFont.load_default(size=font_px)
        except TypeError:              # Pillow < 10.1 has one fixed-size bitmap font
            font = ImageFont.load_default()
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        words, lines = text.split(), [""]
        for w in words:                # wrap to the image width
            trial = (lines[-1] + " " + w).strip()
            if probe.textlength(trial, font=font) > W - 2 * font_px and lines[-1]:
                lines.append(w)
            else:
                lines[-1] = trial
        lines = lines[:3]
        line_h = int(font_px * 1.3)
        h = line_h * len(lines) + font_px
        img = Image.new("RGBA", (W, h), (0, 0, 0, 0))
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, W, h], fill=(0, 0, 0, 130))
        for i, line in enumerate(lines):
            d.text((font_px, font_px // 2 + i * line_h), line, font=font, fill=(255, 255, 255, 235))
        if self.tex is not None:
            self.tex.release()
            self.vao.release()
            self.vbo.release()
        self.tex = self.ctx.texture((W, h), 4, img.tobytes())
        self.tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
        y0 = -1.0 + 2.0 * h / H          # a strip along the bottom edge; image row 0 is the top
        quad = np.array([-1, -1, 0, 1, 1, -1, 1, 1, -1, y0, 0, 0, 1, y0, 1, 0], np.float32)
        self.vbo = self.ctx.buffer(quad.tobytes())
        self.vao = self.ctx.vertex_array(self.prog, [(self.vbo, "2f 2f", "in_pos", "in_uv")])
        self.text = text

    def draw(self, text: str):
        if not text:
            return
        if text != self.text:
            self._make(text)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        self.ctx.disable(moderngl.DEPTH_TEST)
        self.tex.use(0)
        self.vao.render(moderngl.TRIANGLE_STRIP)
        self.ctx.disable(moderngl.BLEND)

    def release(self):
        for obj in (self.tex, self.vao, self.vbo, self.prog):
            if obj is not None:
                obj.release()


# ----------------------------------------------------------------------------- the renderer

class Renderer:
    """Draws ``head`` from 56-number frames or vertex arrays with a fixed, face-framing camera.

    ctx: a moderngl context (headless from :func:`create_headless_context`, or a window's);
    size: (W, H) pixels of :meth:`render`'s images; samples: MSAA samples (0 = off);
    zoom: > 1 frames the face tighter.
    """

    background = (0.13, 0.14, 0.17)        # sRGB
    interior = (0.10, 0.025, 0.03)         # mouth cavity, sRGB-ish dark red

    def __init__(self, ctx: moderngl.Context, head: HeadModel, size=(512, 512), samples: int = 4,
                 fov_y_deg: float = 22.0, zoom: float = 1.0):
        self.ctx, self.head = ctx, head
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"size must be positive (W, H), got {size}")
        self.faces = np.ascontiguousarray(head.faces, dtype=np.int32)
        self._acc = vertex_normal_matrix(self.faces, head.n_vertices)
        self.prog = load_program(ctx, "head")
        color, spec = head_colors(head)
        V = head.n_vertices
        self.vbo_pos = ctx.buffer(reserve=V * 12, dynamic=True)
        self.vbo_nrm = ctx.buffer(reserve=V * 12, dynamic=True)
        self.vbo_col = ctx.buffer(np.ascontiguousarray(color, np.float32).tobytes())
        self.vbo_spec = ctx.buffer(np.ascontiguousarray(spec, np.float32).tobytes())
        self.ibo = ctx.buffer(self.faces.tobytes())
        self.vao = ctx.vertex_array(self.prog, [(self.vbo_pos, "3f", "in_position"),
                                                (self.vbo_nrm, "3f", "in_normal"),
                                                (self.vbo_col, "3f", "in_color"),
                                                (self.vbo_spec, "1f", "in_spec")], self.ibo)
        self.fov_y_deg, self.zoom = fov_y_deg, zoom
        self._set_camera(self.size[0] / self.size[1])
        self.prog["u_key_dir"].value = tuple(_unit((0.5, 0.4, 0.8)))
        self.prog["u_fill_dir"].value = tuple(_unit((-0.8, 0.05, 0.55)))
        self.prog["u_rim_dir"].value = tuple(_unit((-0.4, 0.5, -0.8)))
        self.prog["u_interior"].value = tuple(float(c) for c in _srgb_to_linear(self.interior))
        self.overlay = TextOverlay(ctx, self.size)
        self._fbo, self._fbo_resolve, self._attachments = None, None, []
        self.samples = samples
        self._make_fbo(samples)

    def _set_camera(self, aspect: float):
        vp, eye = face_camera(self.head, aspect, self.fov_y_deg, self.zoom)
        self.prog["u_view_proj"].write(vp.T.copy().tobytes())   # GL expects column-major
        self.prog["u_eye"].value = tuple(float(e) for e in eye)

    def _make_fbo(self, samples: int):
        ctx, size = self.ctx, self.size
        samples = min(samples, ctx.max_samples) if samples else 0
        try:
            color = ctx.renderbuffer(size, 4, samples=samples)
            depth = ctx.depth_renderbuffer(size, samples=samples)
        except moderngl.Error:
            samples = 0
            color, depth = ctx.renderbuffer(size, 4), ctx.depth_renderbuffer(size)
        self._fbo = ctx.framebuffer([color], depth)
        self._attachments = [color, depth]
        if samples:
            resolve = ctx.renderbuffer(size, 4)
            self._fbo_resolve = ctx.framebuffer([resolve])
            self._attachments.append(resolve)
        self.samples = samples

    def vertices_for(self, frame) -> np.ndarray:
        """A 56-number frame (or (1, 56)) -> (V, 3) vertices; (V, 3) or (1, V, 3) vertex arrays pass through."""
        a = np.asarray(frame, np.float32)
        if a.shape[-2:] == (self.head.n_vertices, 3) and a.size == self.head.n_vertices * 3:
            return a.reshape(-1, 3)
        if a.shape[-1] == 56 and a.size == 56:
            return head_vertices(self.head, a.reshape(1, 56))[0]
        raise ValueError(f"expected a 56-number frame or ({self.head.n_vertices}, 3) vertices, got shape {a.shape}")

    def draw(self, frame, style: str | None = None, fbo: moderngl.Framebuffer | None = None,
             clear: bool = True):
        """Draw one frame into ``fbo`` (default: the renderer's own off-screen framebuffer)."""
        verts = self.vertices_for(frame)
        normals = vertex_normals(verts, self.faces, self._acc)
        self.vbo_pos.write(np.ascontiguousarray(verts, np.float32).tobytes())
        self.vbo_nrm.write(normals.tobytes())
        target = fbo if fbo is not None else self._fbo
        target.use()
        if clear:
            target.clear(*self.background, 1.0, depth=1.0)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        self.vao.render(moderngl.TRIANGLES)
        if style:
            self.overlay.draw(style)

    def render(self, frame, style: str | None = None) -> np.ndarray:
        """Render one frame (56 numbers or (V, 3) vertices) -> (H, W, 3) uint8 RGB, row 0 at the top."""
        self.draw(frame, style)
        src = self._fbo
        if self._fbo_resolve is not None:
            self.ctx.copy_framebuffer(self._fbo_resolve, self._fbo)
            src = self._fbo_resolve
        W, H = self.size
        img = np.frombuffer(src.read(components=3, alignment=1), np.uint8).reshape(H, W, 3)
        return img[::-1].copy()

    def render_clip(self, clip, style: str | None = None) -> np.ndarray:
        """Render every frame of ``clip``: (T, 56) frames or (T, V, 3) vertices -> (T, H, W, 3) uint8."""
        a = np.asarray(clip, np.float32)
        if a.ndim == 2 and a.shape[1] == 56:
            a = head_vertices(self.head, a)
        if a.ndim != 3 or a.shape[1:] != (self.head.n_vertices, 3):
            raise ValueError(f"expected (T, 56) frames or (T, {self.head.n_vertices}, 3) vertices, got {a.shape}")
        W, H = self.size
        return np.stack([self.render(v, style) for v in a]) if len(a) else np.zeros((0, H, W, 3), np.uint8)

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> pixel coordinates (N, 2) as (col, row) in :meth:`render`'s images."""
        vp, _ = face_camera(self.head, self.size[0] / self.size[1], self.fov_y_deg, self.zoom)
        p = np.c_[np.asarray(points, np.float64), np.ones(len(points))] @ vp.T.astype(np.float64)
        ndc = p[:, :2] / p[:, 3:4]
        W, H = self.size
        return np.stack([(ndc[:, 0] + 1) * 0.5 * W, (1 - ndc[:, 1]) * 0.5 * H], axis=1)

    def release(self):
        for obj in [self.vao, self.vbo_pos, self.vbo_nrm, self.vbo_col, self.vbo_spec, self.ibo, self.prog,
                    self._fbo, self._fbo_resolve, *self._attachments]:
            if obj is not None:
                obj.release()
        self.overlay.release()


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)
