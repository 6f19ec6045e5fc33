#!/usr/bin/env bash
# The GPU check, in one go on a CUDA machine without network:
#   1. installs what the machine lacks of hydra-core, omegaconf, antlr4, the joblib launcher,
#      pytest (with xdist and timeout) and matplotlib from the carried wheels in .whl/,
#   2. unpacks MNIST from .whl/mnist-raw.tar.gz where data/MNIST/raw is missing (nothing is
#      downloaded; make the archive with: tar -C data -czf .whl/mnist-raw.tar.gz MNIST/raw),
#   3. runs the GPU-marked tests (pytest -m gpu): CUDA graphs against eager steps among them,
#   4. runs one default training run on the GPU (CUDA graphs: module.cuda_graphs=auto),
#   5. runs the CUDA-graphs benchmark (scripts/bench_graphs.py; --cpu: the epoch benchmark,
#      scripts/bench_epoch.py, as there are no CUDA graphs on a CPU): eager and
#      graphed steps side by side, a graphed plain-PyTorch floor beside the eager one, the
#      18-member ablation group and the commands of `make sweep`,
#   6. on CUDA (or with STUDIES=1), times whole studies within 6 minutes
#      (scripts/study_times.py: ablation, lr_fair at max_members 64, 128 and one group, depth,
#      optimizers; whatever would pass the budget is skipped and named),
#   7. prints a short table.
# Every step runs even when an earlier one fails; the exit status says whether all passed.
# It is meant to take under 5 minutes on an H200, so that it can run twice in a 15-minute
# device budget.
#
#   scripts/gpu_check.sh           on the GPU machine
#   scripts/gpu_check.sh --cpu     dry run of the same steps on the CPU, tiny settings
#
# Environment: OUT (results folder; default logs/gpu_check/<time>), DATA (dataset folder;
# default data), PYTHON (default python3), EPOCHS (training run; default 3),
# BENCH_ARGS (extra bench options, e.g. "--repeats 3").
set -uo pipefail
cd "$(dirname "$0")/.."

mode=cuda
case "${1:-}" in
  --cpu) mode=cpu ;;
  "") ;;
  *) echo "usage: $0 [--cpu]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
DATA=${DATA:-data}
OUT=${OUT:-logs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONWARNINGS=ignore

if [[ $mode == cuda ]]; then
  epochs=${EPOCHS:-3}
  accelerator=gpu
  data_args=("data.dir=$DATA" "data.online=false")
  train_args=()
  bench=scripts/bench_graphs.py
  bench_args=(--device cuda --repeats 2 --warmup 1)
  # The wheels of the modules that the machine's Python lacks (import name, wheel name).
  wheels=()
  while read -r module wheel; do
    "$PYTHON" -c "import $module" 2>/dev/null || wheels+=(.whl/"$wheel"-*.whl)
  done <<'EOF'
hydra hydra_core
omegaconf omegaconf
antlr4 antlr4_python3_runtime
hydra_plugins.hydra_joblib_launcher hydra_joblib_launcher
joblib joblib
pytest pytest
pluggy pluggy
iniconfig iniconfig
xdist pytest_xdist
execnet execnet
pytest_timeout pytest_timeout
filelock filelock
matplotlib matplotlib
contourpy contourpy
cycler cycler
fontTools fonttools
kiwisolver kiwisolver
PIL pillow
pyparsing pyparsing
dateutil python_dateutil
six six
packaging packaging
EOF
  if (( ${#wheels[@]} )); then
    echo "installing from .whl/: ${wheels[*]}"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${wheels[@]}" || { echo "error: installing the wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [[ ! -d $DATA/MNIST/raw && -f .whl/mnist-raw.tar.gz ]]; then
    mkdir -p "$DATA" && tar -C "$DATA" -xzf .whl/mnist-raw.tar.gz
  fi
else  # the tiny dry run: val_size fits the tests' small data sets too
  epochs=${EPOCHS:-1}
  accelerator=cpu
  data_args=("data.dir=$DATA" "data.online=false" "data.val_size=100")
  train_args=(threads=1)
  bench=scripts/bench_epoch.py
  bench_args=(--device cpu --threads 1 --repeats 1 --warmup 0 --batch-sizes 512 --models default)
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
read -r -a extra_bench_args <<< "${BENCH_ARGS:-}"

for file in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
    t10k-labels-idx1-ubyte; do
  if [[ ! -f $DATA/MNIST/raw/$file ]]; then
    echo "error: $DATA/MNIST/raw/$file is missing: carry data/MNIST/raw or .whl" >&2
    exit 1
  fi
done

steps=()
failed=0
run_step() {  # run_step NAME COMMAND...: output to $OUT/NAME.log and the screen
  local name=$1 started=$SECONDS status result
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  status=${PIPESTATUS[0]}
  if [[ $status == 0 ]]; then result=ok; else result="FAILED ($status)"; failed=1; fi
  steps+=("| $name | $result | $((SECONDS - started)) |")
}

# Each step has a time limit, so that one that hangs leaves the others their time.
run_step gpu_tests timeout 200 "$PYTHON" -m pytest -m gpu -q -rs -s -p no:cacheprovider \
  -o addopts="" --timeout 120 tests/test_gpu.py
run_step train timeout 150 "$PYTHON" -m slowlearn.train "${data_args[@]}" "${train_args[@]}" \
  "trainer.max_epochs=$epochs" "trainer.accelerator=$accelerator" "hydra.run.dir=$OUT/train" \
  "+trainer.enable_progress_bar=false"
run_step bench timeout 330 "$PYTHON" "$bench" "${bench_args[@]}" \
  "${extra_bench_args[@]}" --out "$OUT/bench" "${data_args[@]}"

if [[ $mode == cuda || ${STUDIES:-0} == 1 ]]; then
  tiny=(); [[ $mode == cpu ]] && tiny=(--tiny threads=1)
  run_step studies timeout 400 "$PYTHON" scripts/study_times.py --out "$OUT/studies" \
    --budget "${STUDY_BUDGET:-360}" "${tiny[@]}" "${data_args[@]}"
fi

{
  echo "## GPU check, $(date -u +%Y-%m-%dT%H:%MZ), mode $mode"
  echo
  command -v nvidia-smi > /dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader && echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${steps[@]}"
  echo
  "$PYTHON" - "$OUT/train/metrics.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(0)
m = r.get("metrics", {})
def listed(key):
    return ", ".join(f"{s:.3f}" for s in m.get(key) or [])
accuracy = m.get("test_acc") or float("nan")
print(f"Training run: {r['status']} on {r.get('device')}, test accuracy {accuracy:.4f}, "
      f"epoch seconds {listed('epoch_seconds')}, of which training steps "
      f"{listed('epoch_training_seconds')}\n")
EOF
  [[ -f $OUT/bench/bench.md ]] && cat "$OUT/bench/bench.md"
  [[ -f $OUT/studies/studies.md ]] && echo && cat "$OUT/studies/studies.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT"
exit $failed
