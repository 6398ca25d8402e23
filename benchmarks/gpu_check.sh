#!/usr/bin/env bash
# The GPU check of issue 14: every figure in one call of at most 8 minutes on one H100/H200.
#
#   benchmarks/gpu_check.sh --prepare   # here, once: fills .gpu_data/ (git-ignored, ~40 MB)
#   benchmarks/gpu_check.sh             # on the GPU machine: every part, then the summary
#   benchmarks/gpu_check.sh --dry-run   # any machine: every part at tiny sizes (tests do this)
#   benchmarks/gpu_check.sh --parts eval,onnx   # only these parts (e.g. a rerun of one)
#
# --prepare (on a machine with ../shared and pip access) writes what the bare device machine
# lacks into .gpu_data/: CUHK03 resized to 128x64 (benchmarks/pack_cuhk03.py, ~27 MB), the
# ImageNet MobileNetV2 weights (9 MB), and wheels for its Python 3.12 of the packages reidkit
# imports that the device image lacks (pydantic and its core, a typing-extensions as new as
# pydantic needs, cryptography and cffi; ~8 MB); the script installs them there only when
# `import pydantic, cryptography` fails. The device image has torch, torchvision, lightning,
# timm, onnx, onnxruntime (CPU provider only: onnxruntime-gpu is ~300 MB and cannot travel),
# onnxscript, PyYAML, matplotlib and Pillow. The whole call sends ~45 MB of the 64 MiB allowed.
#
# The lead's device call, from the repository root after `benchmarks/gpu_check.sh --prepare`:
#
#   run(command="bash benchmarks/gpu_check.sh --out $OUT",
#       carry=[".gpu_data"], timeout_s=540)          # kind left out: an H100 (or an H200)
#
# It prints each figure as it comes and a summary table last (the reply's output_tail), and
# leaves under $OUT: gpu_check.log (everything), the parts' JSON files and results.csv (this
# run's rows appended to benchmarks/results.csv, to copy back into the repository).
#
# Each part runs in its own process under `timeout`, with its own share of the 450 s budget
# (the machine's start and the transfers come on top), so one that fails or hangs costs only
# its own figures. The exit status is 1 if any part failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# The project's .venv where it exists (`make install`): the system python3 there lacks reidkit's
# dependencies. Else (the bare device machine) python3, whose gaps the wheels below fill.
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $ROOT/.venv/bin/python ]] && PYTHON=$ROOT/.venv/bin/python
fi
GPU_DATA=${GPU_DATA:-$ROOT/.gpu_data}
ARCHIVE=$GPU_DATA/cuhk03_128x64.tar.gz
WEIGHTS=$GPU_DATA/mobilenet_v2_imagenet_features.pth
WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12)

DRY=() OUT=${OUT:-/tmp/reidkit-gpu-check} PARTS=env,train,eval,onnx,cuhk03
while (($#)); do
  case $1 in
    --prepare)
      mkdir -p "$GPU_DATA/wheels"
      "$PYTHON" benchmarks/pack_cuhk03.py --out "$ARCHIVE" || exit 1
      cp "$ROOT/../shared/weights/mobilenet_v2_imagenet_features.pth" "$WEIGHTS" || exit 1
      "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$GPU_DATA/wheels" "${WHEELS[@]}" || exit 1
      du -sh "$GPU_DATA"
      exit 0 ;;
    --dry-run) DRY=(--dry-run); shift ;;
    --out) OUT=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    *) echo "usage: $0 [--prepare | --dry-run] [--out DIR] [--parts env,train,...]" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/failures.txt"
exec > >(tee "$OUT/gpu_check.log") 2>&1

export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ! "$PYTHON" -c 'import pydantic, cryptography' 2>/dev/null; then
  if compgen -G "$GPU_DATA/wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/reidkit-site "$GPU_DATA"/wheels/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/reidkit-site
  else
    echo "pydantic/cryptography missing and no wheels in $GPU_DATA/wheels: run --prepare" >&2
  fi
fi
if ((${#DRY[@]})); then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

# part:seconds; the budget (450 s in all) follows the expected cost on an H100.
PLAN=(env:60 train:150 eval:60 onnx:90 cuhk03:240)
BUDGET=450 START=$SECONDS
for item in "${PLAN[@]}"; do
  part=${item%%:*} limit=${item##*:}
  [[ ,$PARTS, == *,$part,* ]] || continue
  left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    echo "$part: skipped, the 450 s budget is spent" | tee -a "$OUT/failures.txt"
    continue
  fi
  echo "== $part (limit ${limit} s) =="
  timeout -k 10 "$limit" "$PYTHON" benchmarks/gpu_check.py "$part" --out "$OUT" "${DRY[@]}" \
    --data "$ARCHIVE" --weights "$WEIGHTS"
  status=$?
  if ((status == 124 || status == 137)); then
    echo "$part: stopped at its ${limit} s limit (figures so far kept)" >>"$OUT/failures.txt"
  elif ((status != 0)); then
    echo "$part: exit status $status (see gpu_check.log)" >>"$OUT/failures.txt"
  fi
  echo "== $part done in $((SECONDS - START)) s so far (exit $status) =="
done

RECORD=()
((${#DRY[@]})) || RECORD=(--record)
"$PYTHON" benchmarks/gpu_check.py summary --out "$OUT" "${DRY[@]}" "${RECORD[@]}"
status=$?
((${#DRY[@]})) || cp benchmarks/results.csv "$OUT/results.csv"
echo "total $((SECONDS - START)) s"
exit $status
