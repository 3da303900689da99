#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, a venv in .venv,
# the CPU build of torch (never the multi-GB CUDA build), and this project.
# Usage: source scripts/bootstrap.sh   (or run it; it only installs what is missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PKGS=(ffmpeg espeak-ng libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libportaudio2
          pulseaudio pulseaudio-utils mosquitto sox xvfb xauth)
# Opt-in extras, comma-separated in MM2FACE_BOOTSTRAP_EXTRAS (the demo needs none):
#   test  what the test suite needs beyond the demo (scripts/test.sh sets it): PyAudio, the second
#         PortAudio binding of `mm2face-live --mic --audio-backend pyaudio`. PyPI serves it as a source
#         archive only, so it is built against PortAudio's headers with a C compiler (and Python's headers);
#         and Chromium for the browser viewer's headless test.
PIP_EXTRAS="dev"
if [[ ",${MM2FACE_BOOTSTRAP_EXTRAS:-}," == *,test,* ]]; then
  APT_PKGS+=(portaudio19-dev gcc libc6-dev chromium fonts-dejavu-core)
  hdr_py=".venv/bin/python"; [ -x "$hdr_py" ] || hdr_py="${PYTHON:-python3}"
  "$hdr_py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    2>/dev/null || APT_PKGS+=(python3-dev)
  PIP_EXTRAS="dev,pyaudio"
fi
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[bootstrap] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
stamp=".venv/.mm2face-installed"   # one stamp per extras set; [dev,pyaudio] also satisfies [dev]
[ "$PIP_EXTRAS" = dev ] || stamp="$stamp-${PIP_EXTRAS//,/-}"
want="$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # Pin the CPU wheel first so that no dependency can pull a CUDA build of torch.
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch==2.13.0"
  fi
  "$VPY" -m pip install -q -e ".[$PIP_EXTRAS]"
  echo "$want" > "$stamp"
  echo "$want" > .venv/.mm2face-installed
fi
# Node tooling (web/package.json, pinned): three.js for the browser viewer and the Khronos glTF
# validator for the tests, into the ignored web/node_modules. The viewer's three.js files are then
# copied into the ignored realtime/web/vendor/, which mm2face-live --serve serves (no CDN at run time).
if command -v npm >/dev/null 2>&1; then
  nstamp="web/node_modules/.mm2face-installed"
  nwant="$(sha1sum web/package-lock.json | cut -c1-12)"
  if [ ! -f "$nstamp" ] || [ "$(cat "$nstamp")" != "$nwant" ]; then
    echo "[bootstrap] installing web/node_modules (npm ci)"
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
    echo "$nwant" > "$nstamp"
  fi
  for f in LICENSE build/three.module.js build/three.core.js examples/jsm/loaders/GLTFLoader.js \
           examples/jsm/utils/BufferGeometryUtils.js examples/jsm/utils/SkeletonUtils.js \
           examples/jsm/controls/OrbitControls.js; do
    src="web/node_modules/three/$f" dst="realtime/web/vendor/three/$f"
    cmp -s "$src" "$dst" || install -D -m 644 "$src" "$dst"
  done
else
  echo "[bootstrap] npm not found: the browser viewer (mm2face-live --serve) and the glTF/browser tests need Node 20+"
fi
echo "[bootstrap] ready: $VPY"
