#!/usr/bin/env bash
# The GPU engine's check on a lent GPU machine (issue 7), as one short run.
#
# That machine starts bare, reaches no registry, and gets the repository's
# tracked files plus at most 64 MiB of carried ones: TensorFlow's CUDA build
# (570 MB) and CUDA (1.5 GB) cannot be brought, so it is used only if the
# machine already has them (a Python TensorFlow with GPU support, or a
# tensorflow wheel on disk; CUDA 12 and cuDNN 9 from Python's nvidia-*
# packages or the system).
#
# 1. On the development machine (with a native engine set up there, for the
#    no-compiler fallback):
#      bash scripts/gpu-device-check.sh --prepare
#    fills scratch/gpu-check/ (about 30 MB): the bundled CLI, the npm tarballs
#    the engine is built from, a Node.js binary for a machine without one, the
#    GPU engine without its TensorFlow libraries (for a machine without a
#    compiler), and cellfinder's wheel (pure Python, for its Keras bench).
# 2. With the device tool:
#      run(command="bash scripts/gpu-device-check.sh", carry=["scratch/gpu-check"], timeout_s=560)
#    Phase 1 probes what the machine has (driver, CUDA, cuDNN, Python packages,
#    wheels, tools); phase 2 sets the GPU engine up from local files; phase 3
#    runs `engine status`, the gradient checks on the GPU, one seeded epoch on
#    real cubes on the GPU and on the CPU (losses and predictions compared),
#    the ResNet-18/-50 bench on both (and cellfinder's Keras + PyTorch when the
#    machine has keras and torch), and a real out-of-memory. Every result is a
#    file under $OUT (default scratch/gpu-check-out); summary.txt lists each
#    step with its exit code. A step that cannot run says why and the rest go
#    on. About 4 minutes on 2 CPU cores without a GPU (REHEARSE=1, below).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CARRY=$REPO/scratch/gpu-check

prepare() {
  set -e
  local engine_root=${CELLFINDER_RETRAIN_ENGINE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cellfinder-retrain/engine}
  rm -rf "$CARRY" && mkdir -p "$CARRY"
  npm run build >/dev/null
  xz -T2 -6 -c dist/cli.js >"$CARRY/cli.js.xz"
  # The tarballs `engine setup --gpu` builds from (it checks their npm integrity).
  (cd "$CARRY" && npm pack @tensorflow/tfjs-node-gpu@4.22.0 google-protobuf@3.21.4 --loglevel=error >/dev/null)
  xz -T2 -6 -c "$(readlink -f "$(command -v node)")" >"$CARRY/node.xz"
  python3 -m pip download cellfinder==1.10.1 --no-deps -q -d "$CARRY"
  # The GPU engine's folder without TensorFlow's libraries; the CPU engine's does as well (the same addon
  # sources, linking TensorFlow's C API by soname), so it stands in when no GPU engine is set up here.
  local folder
  folder=$(node -e "const a=require('$engine_root/active.json'); process.stdout.write(a.gpuFolder || a.folder || '')" 2>/dev/null || true)
  if [ -n "$folder" ]; then
    tar -C "$engine_root/$folder" --exclude='tfjs-node/deps/lib/*' -cJf "$CARRY/gpu-engine-without-libraries.tar.xz" engine.json tfjs-node
  else
    echo "no native engine in $engine_root: the no-compiler fallback will be missing" >&2
  fi
  du -sh "$CARRY"
  ls -la "$CARRY"
  [ "$(du -sm "$CARRY" | cut -f1)" -lt 60 ] || { echo "scratch/gpu-check is over 60 MB: too much to carry" >&2; exit 1; }
}

if [ "${1:-}" = "--prepare" ]; then
  prepare
  exit $?
fi

OUT=${OUT:-$REPO/scratch/gpu-check-out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export CELLFINDER_RETRAIN_ENGINE_DIR=$WORK/engine
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
# step NAME SECONDS COMMAND...: runs it with a time limit, output to $OUT/NAME.log, exit code to the summary.
step() {
  local name=$1 seconds=$2
  shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
  local code=$?
  note "$(printf '%-28s exit %-3s %4ss' "$name" "$code" "$((SECONDS - start))")"
  return $code
}
CLI=(node "$REPO/bin/cellfinder-retrain.js")

note "gpu-device-check $(date -u +%FT%TZ) on $(hostname)"

# ---------------------------------------------------------------- phase 1: what is here
{
  echo "== uname / cpus / memory / disk"; uname -a; nproc; free -g; df -h / /tmp 2>/dev/null
  echo "== os"; cat /etc/os-release 2>/dev/null | head -3
  echo "== nvidia-smi"; timeout 30 nvidia-smi 2>&1 | head -40
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1
  echo "== /proc/driver/nvidia/version"; cat /proc/driver/nvidia/version 2>&1
  echo "== /dev/nvidia*"; ls -la /dev/nvidia* 2>&1 | head
  echo "== loader cache (CUDA, cuDNN, TensorFlow)"; ldconfig -p 2>/dev/null | grep -E 'libcuda\.|libcudart|libcublas|libcufft|libcusolver|libcusparse|libcudnn|libnvJitLink|libnvrtc|libnccl|libtensorflow' | head -40
  echo "== CUDA folders"; ls -d /usr/local/cuda* /opt/nvidia* /opt/conda* /usr/lib/x86_64-linux-gnu/libcudnn* 2>&1 | head -20
  echo "== tools"; for t in node npm python3 python pip3 g++ gcc make conda; do printf '%s: ' "$t"; (command -v "$t" && "$t" --version 2>&1 | head -1) | tr '\n' ' '; echo; done
  echo "== environment"; env | grep -E '^(CUDA|LD_LIBRARY_PATH|NVIDIA|PATH|CONDA)' | sort
} >"$OUT/probe-system.txt" 2>&1
note "probe-system: $(grep -c . "$OUT/probe-system.txt") lines"

# Files anywhere on this disk: TensorFlow's C library, CUDA and cuDNN runtimes, wheels.
timeout 90 find / -xdev \( -path /proc -o -path /sys -o -path "$REPO" -o -path "$WORK" \) -prune -o -type f \( -name 'libtensorflow_cc.so.2*' -o -name 'libtensorflow_framework.so.2*' -o -name 'libcudart.so.*' -o -name 'libcudnn.so.*' -o -name 'libcublas*.so.*' -o -name 'libcufft.so.*' -o -name 'libcusolver.so.*' -o -name 'libcusparse.so.*' -o -name 'libnvJitLink.so.*' -o -name 'libcuda.so.*' -o -name '*.whl' \) -print 2>/dev/null | grep -v -E '/(pip|site-packages/pip)/_vendor/' | head -400 >"$OUT/probe-files.txt"
note "probe-files: $(wc -l <"$OUT/probe-files.txt") files (TensorFlow libraries: $(grep -c libtensorflow_cc "$OUT/probe-files.txt"), libcudart: $(grep -c libcudart "$OUT/probe-files.txt"), libcudnn: $(grep -c 'libcudnn\.so' "$OUT/probe-files.txt"), wheels: $(grep -c '\.whl$' "$OUT/probe-files.txt"))"

# Every Python here (on PATH, conda, pyenv, and the environments the files above are in; a venv's
# python is kept as it is, not resolved to its base interpreter), with its TensorFlow / PyTorch /
# JAX / Keras and whether each sees a GPU.
PYTHONS=$( (command -v -a python3 python 2>/dev/null; ls /opt/conda/bin/python /opt/conda/envs/*/bin/python /usr/local/bin/python3* "$HOME"/.pyenv/versions/*/bin/python3 2>/dev/null
  grep -oE '^.*/lib/python3[0-9.]*/site-packages/' "$OUT/probe-files.txt" | sed -E 's#/lib/python3[0-9.]*/site-packages/$#/bin/python#' | sort -u) | while read -r py; do [ -x "$py" ] && echo "$py"; done | sort -u)
: >"$OUT/probe-python.txt"
for py in $PYTHONS; do
  {
    echo "== $py"
    timeout 150 "$py" - <<'PY'
import importlib.util, importlib.metadata as m, json, sys
print("python", sys.version.split()[0])
for dist in sorted({d.metadata["Name"] for d in m.distributions() if d.metadata["Name"]}, key=str.lower):
    low = dist.lower()
    if low.startswith(("tensorflow", "tf-nightly", "torch", "jax", "keras", "nvidia-", "cellfinder")):
        print("  package", dist, m.version(dist))
if importlib.util.find_spec("tensorflow"):
    try:
        import tensorflow as tf
        print("  tensorflow", tf.__version__, "built with CUDA:", tf.test.is_built_with_cuda(), "GPUs:", tf.config.list_physical_devices("GPU"), "build:", {k: v for k, v in tf.sysconfig.get_build_info().items() if "version" in k})
    except Exception as e:
        print("  tensorflow import failed:", repr(e)[:300])
if importlib.util.find_spec("torch"):
    try:
        import torch
        print("  torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "available:", torch.cuda.is_available(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    except Exception as e:
        print("  torch import failed:", repr(e)[:300])
if importlib.util.find_spec("jax"):
    try:
        import jax
        print("  jax", jax.__version__, jax.devices())
    except Exception as e:
        print("  jax failed:", repr(e)[:300])
PY
  } >>"$OUT/probe-python.txt" 2>&1
done
note "probe-python: $(echo "$PYTHONS" | grep -c .) interpreters"
grep -E 'tensorflow |torch |jax ' "$OUT/probe-python.txt" | tee -a "$SUMMARY"

# ---------------------------------------------------------------- phase 2: the GPU engine from local files
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 20 ]; then
  if [ -f "$CARRY/node.xz" ]; then
    mkdir -p "$WORK/bin" && xz -dc "$CARRY/node.xz" >"$WORK/bin/node" && chmod +x "$WORK/bin/node"
    export PATH=$WORK/bin:$PATH
    note "node: the carried $(node --version) (none, or older than 20, here)"
  else
    note "BLOCKED: no Node.js 20 here and none carried (run --prepare first)"; exit 0
  fi
fi
if [ ! -f "$REPO/dist/cli.js" ]; then
  mkdir -p "$REPO/dist" && xz -dc "$CARRY/cli.js.xz" >"$REPO/dist/cli.js" || { note "BLOCKED: dist/cli.js missing and not carried"; exit 0; }
fi
mkdir -p "$CELLFINDER_RETRAIN_ENGINE_DIR/downloads"
cp "$CARRY"/*.tgz "$CELLFINDER_RETRAIN_ENGINE_DIR/downloads/" 2>/dev/null

# A Python whose TensorFlow is the CUDA build (`tensorflow`, not `tensorflow-cpu`) with its C library,
# else a tensorflow wheel on disk.
TF_PYTHON=""
for py in $PYTHONS; do
  if "$py" -c 'import importlib.util as u, importlib.metadata as m, os, sys; m.version("tensorflow"); s = u.find_spec("tensorflow"); sys.exit(0 if s and s.origin and os.path.exists(os.path.join(os.path.dirname(s.origin), "libtensorflow_cc.so.2")) else 1)' 2>/dev/null; then TF_PYTHON=$py; break; fi
done
TF_WHEEL=$(grep -E '/tensorflow-2\.[0-9.]+-cp[0-9]+-cp[0-9]+-manylinux[^/]*x86_64\.whl$' "$OUT/probe-files.txt" | head -1)
# CUDA 12 / cuDNN 9 folders (and folders of CUDA 12 nvidia-* wheels) found on disk, for when neither
# Python's nvidia-* packages nor the loader cache have them all.
CUDA_DIRS=$(grep -E '/lib(cudart\.so\.12|cudnn\.so\.9|cublas\.so\.12|cusolver\.so\.11|cufft\.so\.11|cusparse\.so\.12|nvJitLink\.so\.12)(\.[0-9]+)*$|/nvidia_[a-z_]+_cu12-[^/]*\.whl$' "$OUT/probe-files.txt" | grep -v '/nvidia/cu1[3-9]/' | xargs -r -n1 dirname | sort -u | tr '\n' ' ')
if [ -n "$TF_PYTHON" ]; then TF_SOURCE="python $TF_PYTHON"; else TF_SOURCE=${TF_WHEEL:-none}; fi
note "TensorFlow source: $TF_SOURCE; CUDA folders on disk: ${CUDA_DIRS:-none}"

SETUP_ARGS=(engine setup --gpu)
# REHEARSE=1 runs the whole script on a machine without a GPU (the engine then runs on its CPU).
[ "${REHEARSE:-0}" = 1 ] && SETUP_ARGS+=(--skip-driver-check)
if [ -n "$TF_PYTHON" ]; then SETUP_ARGS+=(--from-python --python "$TF_PYTHON")
elif [ -n "$TF_WHEEL" ]; then SETUP_ARGS+=(--wheel "$TF_WHEEL")
else
  note "BLOCKED: no TensorFlow with GPU support on this machine (no Python tensorflow with libtensorflow_cc.so.2, no tensorflow wheel): the GPU engine cannot be set up here without the package index"
  exit 0
fi
# No package index here: pip must fail at once rather than retry (PIP_NO_INDEX), and then the CUDA
# folders found on disk are named instead of Python's nvidia-* packages or the loader cache.
TOOLS_MISSING='no C\+\+ compiler|`make` was not found|C headers|node-gyp was not found|Python 3 was not found'
PIP_NO_INDEX=1 step setup-gpu-engine 300 "${CLI[@]}" "${SETUP_ARGS[@]}" --json
if [ $? -ne 0 ] && [ -n "$CUDA_DIRS" ] && ! grep -qE "$TOOLS_MISSING" "$OUT/setup-gpu-engine.log"; then
  # shellcheck disable=SC2086
  PIP_NO_INDEX=1 step setup-gpu-engine-cuda-libs 300 "${CLI[@]}" "${SETUP_ARGS[@]}" --cuda-libs $CUDA_DIRS --json
fi
if ! node -e "const a=require('$CELLFINDER_RETRAIN_ENGINE_DIR/active.json'); process.exit(a.gpuFolder ? 0 : 1)" 2>/dev/null; then
  if grep -qE "$TOOLS_MISSING" "$OUT"/setup-gpu-engine*.log && [ -f "$CARRY/gpu-engine-without-libraries.tar.xz" ]; then
    # No compiler here: the addon built on the development machine from the same sources (it links
    # TensorFlow's C API by soname) with this machine's TensorFlow libraries and CUDA folders.
    if [ -n "$TF_PYTHON" ]; then
      TF_DIR=$("$TF_PYTHON" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("tensorflow").origin))')
    else
      TF_DIR=$WORK/tf/tensorflow
      python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract("tensorflow/" + n, sys.argv[2]) for n in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2")]' "$TF_WHEEL" "$WORK/tf"
    fi
    FOLDER=tfjs-node-gpu-4.22.0-tf-assembled-linux-x64
    mkdir -p "$CELLFINDER_RETRAIN_ENGINE_DIR/$FOLDER" && tar -C "$CELLFINDER_RETRAIN_ENGINE_DIR/$FOLDER" -xJf "$CARRY/gpu-engine-without-libraries.tar.xz"
    LIB=$CELLFINDER_RETRAIN_ENGINE_DIR/$FOLDER/tfjs-node/deps/lib
    for f in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do ln "$TF_DIR/$f" "$LIB/$f" 2>/dev/null || cp "$TF_DIR/$f" "$LIB/$f"; done
    NVIDIA_DIRS=$( [ -n "$TF_PYTHON" ] && "$TF_PYTHON" -c 'import importlib.util as u, glob, os; s = u.find_spec("nvidia"); print(" ".join(d for p in (s.submodule_search_locations if s else []) for d in glob.glob(os.path.join(p, "*", "lib"))))')
    node -e "
      const fs = require('fs'); const file = process.argv[1]; const m = JSON.parse(fs.readFileSync(file, 'utf8'));
      const dirs = process.argv[2].split(' ').filter(Boolean);
      Object.assign(m, { variant: 'gpu', source: { kind: 'python', from: process.argv[3] }, cuda: { source: { kind: 'folder', from: 'gpu-device-check.sh' }, libraryPath: dirs, versions: {} }, builtAt: new Date().toISOString() });
      fs.writeFileSync(file, JSON.stringify(m, null, 2));
      fs.writeFileSync(process.argv[4], JSON.stringify({ gpuFolder: process.argv[5] }));
    " "$CELLFINDER_RETRAIN_ENGINE_DIR/$FOLDER/engine.json" "$NVIDIA_DIRS $CUDA_DIRS" "$TF_DIR" "$CELLFINDER_RETRAIN_ENGINE_DIR/active.json" "$FOLDER"
    note "GPU engine assembled without a compiler: $FOLDER (TensorFlow from $TF_DIR)"
  else
    note "BLOCKED: the GPU engine could not be set up here (see setup-gpu-engine*.log)"
  fi
fi

# ---------------------------------------------------------------- phase 3: checks
if ! node -e "const a=require('$CELLFINDER_RETRAIN_ENGINE_DIR/active.json'); process.exit(a.gpuFolder ? 0 : 1)" 2>/dev/null; then
  step engine-status 120 "${CLI[@]}" engine status
  note "stopping: without a GPU engine the checks would only measure the pure-JavaScript engine"
  exit 0
fi
step engine-status 120 "${CLI[@]}" engine status
step engine-status-json 120 "${CLI[@]}" engine status --json
grep -E '^(NVIDIA driver|CUDA libraries|TensorFlow|GPU):' "$OUT/engine-status.log" | tee -a "$SUMMARY"
# Gradient checks of every op of the network, GPU against the pure-JavaScript engine (TF32 off).
step gradient-check-gpu 300 "${CLI[@]}" engine check --engine gpu
grep -m1 '^Checking' "$OUT/gradient-check-gpu.log" | cut -c1-300 | tee -a "$SUMMARY"
note "gradient checks: $(grep -cE ' yes$' "$OUT/gradient-check-gpu.log") passed, $(grep -cE ' NO$' "$OUT/gradient-check-gpu.log") failed"
tail -1 "$OUT/gradient-check-gpu.log" | tee -a "$SUMMARY"

# One seeded epoch on real cubes (cellfinder's four labelled cubes, each under four names), GPU vs CPU:
# the same engine, its GPU hidden for the CPU run; TF32 off for the comparison.
DATA=$WORK/data
for folder in cells non_cells; do
  mkdir -p "$DATA/$folder"
  for f in "$REPO"/test/fixtures/cellfinder-data/training/$folder/*.tif; do
    for copy in 0 1 2 3; do cp "$f" "$DATA/$folder/$(basename "$f" | sed -E "s/x([0-9]+)Ch/x\1${copy}Ch/")"; done
  done
done
printf "data:\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: cells\n  signal_channel: 0\n  type: cell\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells\n  signal_channel: 0\n  type: no_cell\n" >"$DATA/training.yaml"
for device in gpu cpu; do
  NVIDIA_TF32_OVERRIDE=0 step "epoch-$device" 300 "${CLI[@]}" train -y "$DATA/training.yaml" -o "$WORK/epoch-$device" --network-depth 18 --epochs 1 --batch-size 4 --seed 1 --test-fraction 0.25 --no-save-checkpoints --device "$device" --json
  NVIDIA_TF32_OVERRIDE=0 step "classify-$device" 300 "${CLI[@]}" classify --trained-model "$WORK/epoch-$device/model.keras" --signal "$REPO/test/fixtures/cellfinder-data/signal" --background "$REPO/test/fixtures/cellfinder-data/background" --points "$REPO/test/fixtures/cellfinder-data/candidates/candidates.xml" --voxel-sizes 5 2 2 -o "$WORK/classified-$device" --device "$device" --json
  cp "$WORK/classified-$device/classified_points.csv" "$OUT/classified-$device.csv" 2>/dev/null
done
node -e '
  const fs = require("fs");
  const events = (d) => fs.readFileSync(`${process.argv[1]}/epoch-${d}.log`, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  const [g, c] = [events("gpu"), events("cpu")];
  const started = (e) => e.find((x) => x.type === "started") || {};
  const losses = (e) => e.filter((x) => x.type === "batch").map((x) => x.loss).concat(e.filter((x) => x.type === "epoch").flatMap((x) => [x.loss, x.valLoss]));
  const [lg, lc] = [losses(g), losses(c)];
  const rel = lg.map((v, i) => Math.abs(v - lc[i]) / Math.max(Math.abs(lc[i]), 1e-12));
  const csv = (d) => { try { return fs.readFileSync(`${process.argv[1]}/classified-${d}.csv`, "utf8").trim().split("\n"); } catch { return []; } };
  const [pg, pc] = [csv("gpu"), csv("cpu")];
  const header = (pg[0] || "").split(",");
  const col = header.findIndex((h) => /probab/i.test(h));
  const probDiff = pg.slice(1).map((l, i) => Math.abs(Number(l.split(",")[col]) - Number((pc[i + 1] || "").split(",")[col])));
  const worst = (a) => (a.length ? Math.max(...a) : NaN);
  const ok = lg.length > 0 && lg.length === lc.length && worst(rel) <= 1e-3 && (probDiff.length === 0 || worst(probDiff) <= 1e-3);
  const result = { gpuBackend: started(g).backend, cpuBackend: started(c).backend, gpuNote: started(g).gpu, losses: { gpu: lg, cpu: lc }, worstRelativeLossDifference: worst(rel), probabilityColumn: header[col], candidates: probDiff.length, worstProbabilityDifference: worst(probDiff), tolerance: 1e-3, agree: ok };
  fs.writeFileSync(`${process.argv[1]}/epoch-gpu-vs-cpu.json`, JSON.stringify(result, null, 2));
  console.log(`epoch GPU vs CPU: ${result.gpuBackend} vs ${result.cpuBackend}; worst relative loss difference ${result.worstRelativeLossDifference}, worst probability difference ${result.worstProbabilityDifference} over ${result.candidates} candidates: ${ok ? "AGREE" : "DIFFER"} (tolerance 1e-3)`);
' "$OUT" 2>&1 | tee -a "$SUMMARY"

# The bench: ResNet-18 and -50 training (batch 16, Adam) and inference (batch 64) cubes/s, GPU and CPU.
for depth in 18 50; do
  for device in gpu cpu; do
    step "bench-resnet$depth-$device" 240 "${CLI[@]}" engine bench --network-depth "$depth" --train-batch 16 --infer-batch 64 --steps 5 --device "$device" --json
    grep '^{' "$OUT/bench-resnet$depth-$device.log" | tee -a "$SUMMARY"
  done
done
# cellfinder's own network under Keras + PyTorch on the same GPU, when this machine has keras and torch.
for py in $PYTHONS; do
  if "$py" -c 'import keras, torch, numpy' 2>/dev/null && ls "$CARRY"/cellfinder-*.whl >/dev/null 2>&1; then
    "$py" -m pip install --no-deps --no-index --quiet --target "$WORK/cellfinder" "$CARRY"/cellfinder-*.whl >"$OUT/keras-install.log" 2>&1
    for depth in 18 50; do
      PYTHONPATH=$WORK/cellfinder KERAS_BACKEND=torch step "bench-keras-torch-resnet$depth" 300 "$py" "$REPO/test/python/bench_keras.py" "$depth" 16 64 5
      grep '^{' "$OUT/bench-keras-torch-resnet$depth.log" | tee -a "$SUMMARY"
    done
    break
  fi
done
grep -q bench-keras "$SUMMARY" || note "cellfinder's Keras + PyTorch bench: no Python here has keras and torch"

# A real out-of-memory on the GPU: TensorFlow may use only 1.5 GB of it (TF_DEVICE_MIN_SYS_MEMORY_IN_MB
# keeps the rest back), and ResNet-50 at batch 16 needs more; the run must stop naming a batch size that fits.
TOTAL_MIB=$(timeout 30 nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -dc 0-9)
if [ -n "$TOTAL_MIB" ]; then
  TF_DEVICE_MIN_SYS_MEMORY_IN_MB=$((TOTAL_MIB - 1500)) TF_FORCE_GPU_ALLOW_GROWTH=false step out-of-memory-gpu 300 "${CLI[@]}" train -y "$DATA/training.yaml" -o "$WORK/oom" --network-depth 50 --epochs 1 --batch-size 16 --seed 1 --test-fraction 0 --no-save-checkpoints --device gpu --json
  grep '"type":"error"' "$OUT/out-of-memory-gpu.log" | tee -a "$SUMMARY"
  # The engine's raw error, for the classifier's tests.
  TF_DEVICE_MIN_SYS_MEMORY_IN_MB=$((TOTAL_MIB - 1500)) TF_FORCE_GPU_ALLOW_GROWTH=false step out-of-memory-gpu-raw 240 "${CLI[@]}" engine bench --network-depth 50 --train-batch 64 --steps 1 --device gpu
  grep -m2 -E 'OOM|RESOURCE_EXHAUSTED|out of memory' "$OUT/out-of-memory-gpu-raw.log" | cut -c1-400 | tee -a "$SUMMARY"
fi
cp "$CELLFINDER_RETRAIN_ENGINE_DIR"/logs/*.log "$OUT/" 2>/dev/null
cp "$CELLFINDER_RETRAIN_ENGINE_DIR"/*/engine.json "$OUT/" 2>/dev/null
note "done $(date -u +%FT%TZ); results in $OUT"
