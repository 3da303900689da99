"""Helpers shared by the benchmark scripts: percentiles, machine description, JSON/markdown/PNG output.

Only numpy and the standard library at import time (the GPU machine may lack the server's deps);
matplotlib is imported lazily by :func:`save_plot`.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import socket
import sys
import time
from pathlib import Path

import numpy as np


def stats_ms(values_s) -> dict:
    """Summary of a list of durations in seconds -> ``{n, mean, p50, p95, p99, max}`` in milliseconds."""
    v = np.asarray([x for x in values_s if x is not None and np.isfinite(x)], np.float64) * 1000.0
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
            "p95": float(np.percentile(v, 95)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(device: str = "cpu") -> dict:
    """Where a number was measured: host, CPU model and count, torch version and, on CUDA, the card."""
    info = {"host": socket.gethostname(), "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpu": _cpu_model(), "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:   # other work on the machine skews timings: record how busy it was
        info["loadavg_1m"] = os.getloadavg()[0]
        info["nice"] = os.nice(0)
    except OSError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=_json_default))
    return path


def write_report(out, name: str, res: dict, markdown) -> None:
    """Write ``out/<name>.json`` and ``out/<name>.md`` (``markdown(res)``), print the table and the paths.
    The PNG ``out/<name>.png`` is the caller's, drawn before this."""
    write_json(out / f"{name}.json", res)
    table = markdown(res)
    (out / f"{name}.md").write_text(table)
    print(table)
    print(f"wrote {out}/{name}.json, {name}.md, {name}.png")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; floats are printed with 2 decimals."""
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.2f}"
        return str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def stats_rows(named: dict[str, dict]) -> list[list]:
    """Rows ``name, p50, p95, p99, max, n`` for :func:`md_table` from ``{name: stats_ms(...)}``."""
    rows = []
    for name, s in named.items():
        if s.get("n"):
            rows.append([name, s["p50"], s["p95"], s["p99"], s["max"], s["n"]])
    return rows


STATS_HEADER = ["quantity (ms)", "p50", "p95", "p99", "max", "n"]


def save_plot(path, series: dict[str, tuple], stages: dict[str, dict] | None = None, title: str = "") -> Path:
    """PNG: left, latency over time (``series``: ``{label: (t_s, values_ms)}``); right, stage p50/p95 bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ncols = 2 if stages else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 3.8), squeeze=False)
    ax = axes[0, 0]
    for label, (t, v) in series.items():
        ax.plot(t, v, lw=0.8, label=label)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "latency over time", fontsize=10)
    if stages:
        ax = axes[0, 1]
        names = [k for k, s in stages.items() if s.get("n")]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [stages[k]["p50"] for k in names], 0.4, label="p50")
        ax.bar(x + 0.2, [stages[k]["p95"] for k in names], 0.4, label="p95")
        ax.set_xticks(x, names, rotation=20, fontsize=8)
        ax.set_ylabel("ms per call")
        ax.set_title("per-stage time", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speech_like_audio(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Synthetic speech-like test audio ``(samples,)`` float32: voiced syllables with pauses.

    Used when no TTS voice or wav is at hand (e.g. on the GPU machine); the benchmark's timing does not
    depend on what the audio says.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syll = (np.sin(2 * np.pi * 4.0 * t) > -0.3).astype(np.float32)         # ~4 syllables per second
    pause = (np.sin(2 * np.pi * 0.2 * t + 1.0) > -0.8).astype(np.float32)  # a pause every 5 s
    x = 0.2 * voiced * syll * pause + 0.005 * rng.normal(size=n)
    return x.astype(np.float32)
