#!/usr/bin/env bash
# Build the ModelScope reference environment in .venv-ref (about 10 minutes; 6 GB).
# Usage: bash export/reference/setup.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=export/reference
python3.11 -m venv .venv-ref 2>/dev/null || python3 -m venv .venv-ref
py=.venv-ref/bin/python
"$py" -m pip install -q --upgrade pip setuptools wheel
echo "[1/3] torch, torchvision, numpy (from the local wheel cache where there is one)"
"$py" -m pip install -q -c "$here/requirements.txt" torch torchvision numpy cython
echo "[2/3] fairseq-fixed (builds from source, about 4 minutes)"
"$py" -m pip install -q --no-build-isolation -c "$here/requirements.txt" fairseq-fixed
echo "[3/3] modelscope and the rest"
"$py" -m pip install -q -r "$here/requirements.txt"
"$py" -c "from modelscope.pipelines import pipeline; from modelscope.models.multi_modal import ofa_for_all_tasks; print('reference environment ready')"
