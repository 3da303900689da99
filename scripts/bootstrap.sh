#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, a venv in .venv,
# the CPU build of torch (never the multi-GB CUDA build), and this project.
# Usage: source scripts/bootstrap.sh   (or run it; it only installs what is missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PKGS=(ffmpeg espeak-ng libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libportaudio2
          pulseaudio pulseaudio-utils mosquitto sox xvfb xauth)
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
stamp=".venv/.mm2face-installed"
want="$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # Pin the CPU wheel first so that no dependency can pull a CUDA build of torch.
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch==2.13.0"
  fi
  "$VPY" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "[bootstrap] ready: $VPY"
