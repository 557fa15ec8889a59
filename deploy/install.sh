#!/usr/bin/env bash
# Installs stembeam and what it needs on a fresh Debian/Ubuntu machine (run as root or with sudo).
#   bash deploy/install.sh          runtime: system audio tools, Python packages, the `stembeam` command
#   bash deploy/install.sh --test   also what the test suite needs (PostgreSQL, Chromium, FluidSynth)
# Idempotent: a second run only checks. Downloads are cached (~/.cache/pip, apt's cache).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

runtime_debs=(ffmpeg libsndfile1 libtcmalloc-minimal4 fluidsynth fluid-soundfont-gm fretsonfire-songs-muldjord freedoom planetblupi-music-midi)
test_debs=(postgresql chromium espeak-ng sox shellcheck)
debs=("${runtime_debs[@]}")
((with_tests)) && debs+=("${test_debs[@]}")

missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -r requirements.txt
((with_tests)) && python3 -m pip install -q --disable-pip-version-check -r requirements-test.txt
python3 -m pip install -q --disable-pip-version-check --no-deps -e .
echo "stembeam installed: $(command -v stembeam)"
