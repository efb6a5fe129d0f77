#!/usr/bin/env bash
# The GPU benchmark in one command, on a bare GPU machine with the device kit carried:
#   bash benchmarks/device/run.sh            # OFA-large architecture, 480 px, fp16
#   bash benchmarks/device/run.sh --smoke    # the same steps on a CPU with the tiny checkpoint
# Options: --kit DIR (default .device-kit, from `make device-kit`), --budget SECONDS.
# Results go to $OUT when set (what a GPU machine sends back), else benchmarks/results/device/.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=gpu
kit=.device-kit
extra=()
while (($#)); do
    case "$1" in
        --smoke) profile=smoke ;;
        --kit) kit=$2; shift ;;
        --budget) extra+=(--budget "$2"); shift ;;
        *) echo "run.sh: unknown argument $1 (--smoke, --kit DIR, --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done
python=${PYTHON:-python3}
out=${OUT:-benchmarks/results/device}
work=${TMPDIR:-/tmp}/ofa-device-run-$profile
if [[ ! -f $kit/KIT.json ]]; then
    echo "no device kit at $kit: run 'make device-kit' on a machine with the package index, and carry it" >&2
    exit 2
fi
mkdir -p "$out" "$work"
exec > >(tee "$out/run.log") 2>&1
echo "[$(date +%T)] device run ($profile) at $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $($python --version)"

# The kit: tritonserver with the Python backend, perf_analyzer, tritonclient, numpy<2.
$python -m benchmarks.device.kit unpack --kit "$kit" --dest "$work/kit" > "$work/kit.env"
# shellcheck disable=SC1091
source "$work/kit.env"
export OFA_DEVICE_KIT_RECORD=$kit/KIT.json
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec $python -m benchmarks.device.run --profile "$profile" --out "$out" --work "$work" "${extra[@]}"
