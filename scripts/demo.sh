#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed (idempotent), then run the live demo on the
# embedded defaults (bundled speech, default checkpoint, stand-in head). With a display a viewer window
# opens; without one an MP4 (with the speech muxed in) is written to out/ and its path printed.
# Extra arguments go to mm2face-live, e.g. `bash scripts/demo.sh --style "The portrait frowns"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/mm2face-live" --demo "$@"
