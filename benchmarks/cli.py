"""``mm2face-bench``: latency, throughput and endurance benchmarks.

    mm2face-bench latency [--sessions N] [--seconds S] [--device cpu|cuda] [--backend NAME]
    mm2face-bench throughput [--device cuda --backend compile]
    mm2face-bench soak [--minutes M]
    mm2face-bench stress [--good N] [--seconds S]   # good clients against hostile ones (loopback)
    mm2face-bench backends [--device cuda]          # which backends can run here, and why not
    mm2face-bench outputs [--frames N]              # per-frame cost of the Live Link / VMC / WebSocket outputs

Every command writes JSON, a markdown table and a PNG plot into ``--out``
(default ``runs/bench/<name>-<time>``). See docs/benchmarks.md for the numbers and what they mean.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = ("latency", "throughput", "soak", "backends", "outputs", "stress")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in cmds:
        p = argparse.ArgumentParser(prog="mm2face-bench", description=__doc__.split("\n\n")[0],
                                    formatter_class=argparse.RawDescriptionHelpFormatter,
                                    epilog=__doc__.split("\n\n", 1)[1])
        p.add_argument("command", choices=cmds, help="which benchmark (then --help for its options)")
        p.parse_args(argv[:1] or ["--help"])
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "latency":
        from mm2face.benchmarks.latency import main as m
    elif cmd == "throughput":
        from mm2face.benchmarks.throughput import main as m
    elif cmd == "outputs":
        from mm2face.benchmarks.outputs import main as m
    elif cmd == "soak":
        from mm2face.benchmarks.soak import main as m
    elif cmd == "stress":
        from mm2face.benchmarks.stress import main as m
    else:
        def m(a):
            p = argparse.ArgumentParser(prog="mm2face-bench backends")
            p.add_argument("--device", default="cpu")
            args = p.parse_args(a)
            from mm2face.engine.backends import backend_status
            print(json.dumps(backend_status(args.device), indent=1))
            return 0
    return m(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
