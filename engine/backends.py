"""Inference backends: which :class:`~mm2face.engine.runners.Runner` runs a model's per-hop work.

    model = apply_backend(MM2Face.load(path), "onnx", device="cpu")    # sets model.runner
    s = StreamSession(model)                                          # its hops run on model.runner

Backends (``BACKENDS``), each a runner class in :mod:`mm2face.engine.runners`:

* ``eager``: :class:`EagerRunner`, plain PyTorch (the reference).
* ``static``: :class:`StaticRunner`, eager PyTorch with *static shapes*: batches padded to a bucket
  (1, 2, 4, 8 ... rows); the cache is always the ring's ``ctx_tokens - 1`` slots. It is the shape
  discipline that ``compile`` / ``onnx`` / ``tensorrt`` build on; on its own it shows its cost.
* ``compile``: :class:`CompileRunner`, ``torch.compile`` of the static-shape step (inductor;
  ``mode="reduce-overhead"`` on CUDA, i.e. CUDA graphs). The first hop of each bucket compiles.
* ``int8``: dynamic int8 quantisation of every ``nn.Linear`` (CPU only; a copy of the model) run by
  an :class:`EagerRunner`.
* ``onnx``: :class:`OnnxRunner`, ONNX Runtime sessions of the three static-shape parts, exported here.
* ``tensorrt``: :class:`TensorRTRunner`, Torch-TensorRT (``pip install 'mm2face-live[tensorrt]'``,
  CUDA only) of the static-shape parts, one engine per batch bucket.

:func:`apply_backend` builds the runner and sets it as ``model.runner`` (weights stay shared; ``int8``
works on a copy); nothing of the model is replaced, and :func:`mm2face.engine.runners.runner_for` is
how the session, the batcher and offline generation find it. The optional stage-3 refiner runs eager
under every backend. ``TOLERANCE`` documents how far each backend's guided logits and decoded frames
may drift from eager (checked by ``tests/test_backends_*.py`` where the backend runs on CPU).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from mm2face.engine.runners import (BackendUnavailable, CompileRunner, EagerRunner, OnnxRunner, StaticRunner,
                                    TensorRTRunner, bucket, have_cxx)

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "TOLERANCE", "BackendUnavailable", "apply_backend", "backend_status",
           "bucket", "default_backend"]

BACKENDS = ("eager", "static", "compile", "int8", "onnx", "tensorrt")

# max |difference| to eager on CPU: (guided logits, decoded normalised frames).
TOLERANCE = {
    "eager": (0.0, 0.0),
    "static": (1e-4, 1e-5),       # padding only reorders float sums
    "compile": (1e-3, 1e-4),      # fused kernels
    "onnx": (1e-3, 1e-4),         # ORT kernels
    "int8": (0.5, 0.1),           # quantised weights: tokens may differ; see docs/benchmarks.md
    "tensorrt": (5e-2, 1e-2),     # fp16/tf32 kernels on GPU
}


# The default per device, chosen by measurement (docs/benchmarks.md, "Backends"): on this project's
# 2-core CPU, ONNX Runtime runs a hop about twice as fast as eager PyTorch with the same outputs, while
# int8 dynamic quantisation is no faster for a model this small and changes tokens. CUDA stays on
# eager until GPU numbers say otherwise (compile costs a long warm-up at start).
DEFAULT_BACKEND = {"cpu": "onnx", "cuda": "eager"}


def default_backend(device="cpu") -> str:
    """The backend to use on ``device`` by default (falls back to eager if its library is missing)."""
    dev = torch.device(device)
    name = DEFAULT_BACKEND.get(dev.type, "eager")
    if name == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "eager"
    return name


# ----------------------------------------------------------------------------- choosing one

RUNNERS = {"static": StaticRunner, "compile": CompileRunner, "onnx": OnnxRunner, "tensorrt": TensorRTRunner}


def apply_backend(model, name: str = "eager", device="cpu", **opts):
    """Make ``model`` run its per-hop work on backend ``name`` (``opts`` go to the runner class, e.g.
    ``workdir`` for onnx, ``compiler`` for compile). Returns the model to use (the same object, except
    ``int8`` which returns a quantised copy), with ``model.runner`` and ``model.backend`` set.
    Raises :class:`BackendUnavailable` (what to install, which device to use) or ValueError."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    model = model.to(dev).eval()
    model.runner = None
    if name == "int8":
        if dev.type != "cpu":
            raise BackendUnavailable("int8 dynamic quantisation runs on CPU only; use --backend compile on CUDA")
        te, model._text_encoder = model._text_encoder, None       # shared, not copied
        try:
            q = copy.deepcopy(model)
        finally:
            model._text_encoder = te
        q._text_encoder = te
        for part in ("gpt", "audio"):
            setattr(q, part, torch.ao.quantization.quantize_dynamic(getattr(q, part), {nn.Linear}, dtype=torch.qint8))
        model = q
    runner = EagerRunner(model) if name in ("eager", "int8") else RUNNERS[name](model, device=dev, **opts)
    model.eval()         # whatever a build toggled: inference only (eager fallbacks would run dropout)
    model.runner = runner
    model.backend = name
    return model


def backend_status(device="cpu") -> dict[str, str]:
    """``{backend: "ok" | why it cannot run here}`` without building anything."""
    dev = torch.device(device)
    out = {"eager": "ok", "static": "ok"}
    out["compile"] = "ok" if (dev.type == "cuda" or have_cxx()) else "needs a C++ compiler for CPU inductor"
    out["int8"] = "ok" if dev.type == "cpu" else "CPU only"
    try:
        import onnxruntime as ort
        if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            out["onnx"] = "onnxruntime has no CUDA provider here"
        else:
            out["onnx"] = "ok"
    except ImportError:
        out["onnx"] = "onnxruntime not installed"
    if dev.type != "cuda" or not torch.cuda.is_available():
        out["tensorrt"] = "needs CUDA"
    else:
        try:
            import torch_tensorrt  # noqa: F401
            out["tensorrt"] = "ok"
        except ImportError:
            out["tensorrt"] = "torch-tensorrt not installed (pip install 'mm2face-live[tensorrt]')"
    return out
