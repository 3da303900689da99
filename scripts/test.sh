#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs (idempotent), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k flame`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The test extras: PyAudio (built from source against portaudio19-dev) for the mic tests' second backend.
MM2FACE_BOOTSTRAP_EXTRAS="${MM2FACE_BOOTSTRAP_EXTRAS:+$MM2FACE_BOOTSTRAP_EXTRAS,}test" bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$ROOT/.venv/bin/python" -m pytest -ra --durations=15 "$@"
