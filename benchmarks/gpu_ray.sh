#!/usr/bin/env bash
# The product's GPU path through Ray on one GPU, as users run it: pipelines/train.py on a Ray
# Train GPU worker group (NCCL at world size 1: every collective goes through it), FSDP2, the
# window stream from Parquet, DCP checkpoints, a resume to more steps, the export, then
# pipelines/evaluate.py --device cuda on the export. Prints one table (benchmarks/gpu_ray_table.py):
# step time and frames/s of the Ray path against benchmarks/gpu_step.py for the same model and
# batch, data wait per step, checkpoint save / persist / load time and size, export time,
# Policy.act latency; and gpu_step.py's step at the published depth.
#
#   bash benchmarks/gpu_ray.sh pack CARRY [3.12]   # here, with network: CARRY/ holds what the GPU machine lacks
#   bash benchmarks/gpu_ray.sh run CARRY OUT       # on the GPU machine: about 6 minutes
#   bash benchmarks/gpu_ray.sh cpu CARRY OUT       # the same chain on a CPU (pack with this Python's version)
#
# Packing (`pack`). The GPU machine (Python 3.12, torch 2.11, transformers 5.17, no Ray, no
# network; at most 64 MiB of files travel with a command) lacks Ray, transformers 5.24,
# jsonschema and pydantic (Ray Train V2's state schema imports it) with their dependencies;
# everything else Ray Train, Ray Data and vla import is there (pandas, pyarrow, fsspec, aiohttp,
# grpcio, protobuf, msgpack, requests, pyyaml, click, filelock). Ray's optional dashboard and
# metrics packages (aiohttp_cors, colorful, opencensus, opentelemetry) are not carried.
#   1. pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#        --platform manylinux2014_x86_64 ray==2.60.0        (a 79 MB wheel: over the limit)
#   2. unzip it, delete ray/jars (Java, unused) and ray/rllib (unused), then
#        tar cf - . | xz -9  ->  CARRY/ray-2.60.0-cpXY.tar.xz, a plain site-packages tree
#   3. pip download the wheels transformers==5.24.0 jsonschema==4.26.0 referencing==0.37.0
#        jsonschema-specifications==2025.9.1 pydantic==2.14.4 annotated-types==0.8.0
#        typing-inspection==0.4.5 (pure Python), rpds-py==2026.9.1 and pydantic-core==2.50.5 (cpXY)
# `run` unpacks the tarball into OUT/site, installs the wheels there with
# pip install --no-index --no-deps --target, and puts OUT/site first on PYTHONPATH.
#
# Disk (64 GiB there): a checkpoint holds ~12 bytes per parameter (fp32 weights + AdamW's two
# moments), and Ray copies each one from the worker's folder to the run folder. So the Ray legs
# train the published config cut to LAYERS vision and LM blocks (default 4: PaliGemma 1.1B,
# ~13 GB per checkpoint, keep_checkpoints 1), gpu_step.py times the same cut model for the
# comparison, and the published depth separately (no checkpoint).
#
# Settings (environment): FAMILY (paligemma | kosmos2), LAYERS, STEPS (first leg; the resume runs
# to twice as many), LOG_EVERY, EPISODES (closed-loop episodes per policy).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
RAY_VERSION=2.60.0
PY_WHEELS=(transformers==5.24.0 jsonschema==4.26.0 referencing==0.37.0 jsonschema-specifications==2025.9.1
           pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5)
BINARY_WHEELS=(rpds-py==2026.9.1 pydantic-core==2.50.5)

pack() {
    local carry=$1 py=${2:-3.12} work
    local tag=cp${py/./}
    mkdir -p "$carry"
    work=$(mktemp -d)
    local platform=(--no-deps --only-binary=:all: --python-version "$py" --implementation cp
                    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
    python3 -m pip download -q "${platform[@]}" -d "$work" "ray==$RAY_VERSION"
    python3 -m pip download -q "${platform[@]}" -d "$carry" "${BINARY_WHEELS[@]}"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$carry" "${PY_WHEELS[@]}"
    mkdir "$work/tree"
    unzip -q "$work"/ray-*.whl -d "$work/tree"
    rm -rf "$work/tree/ray/jars" "$work/tree/ray/rllib"
    (cd "$work/tree" && tar cf - . | xz -T2 -9) >"$carry/ray-$RAY_VERSION-$tag.tar.xz"
    rm -rf "$work"
    ls -l "$carry"
    du -cb "$carry"/* | tail -1
}

install() {  # CARRY SITE: the tarball unpacked and the wheels installed into SITE
    local carry=$1 site=$2
    mkdir -p "$site"
    $PYTHON - "$carry" "$site" <<'EOF'
import sys, tarfile
from pathlib import Path
carry, site = map(Path, sys.argv[1:])
for tarball in carry.glob("ray-*.tar.xz"):
    with tarfile.open(tarball) as tar:
        tar.extractall(site, filter="tar")
EOF
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$carry"/*.whl
    export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    $PYTHON -c "import ray, transformers; print('ray', ray.__version__, 'from', ray.__file__); \
print('transformers', transformers.__version__, 'from', transformers.__file__)"
}

chain() {  # MODE OUT: the whole chain; MODE gpu or cpu
    local mode=$1 out=$2
    local family=${FAMILY:-paligemma} layers=${LAYERS:-4} steps=${STEPS:-20} log_every=${LOG_EVERY:-5}
    local episodes=${EPISODES:-8} device=cuda size=(--layers "$layers") batch=(4 8) gpu=true cpus=8
    if [ "$mode" = cpu ]; then
        steps=${STEPS:-4} log_every=${LOG_EVERY:-1} episodes=${EPISODES:-2} device=cpu size=(--small)
        batch=(2 2) gpu=false cpus=0.5
    fi
    local data=$out/data model=$out/model runs=$out/runs
    local run_dir=$runs/gpu_ray
    rm -rf "$data" "$model" "$runs" "$out/eval"
    echo "== data, model folder"
    $PYTHON "$REPO/pipelines/prepare_data.py" synthetic "$data" --episodes 40 --val-episodes 4 --image-size 224
    $PYTHON -m benchmarks.published_model "$family" "$model" "${size[@]}"
    local common=(--config "$REPO/configs/calvin_$family.yaml" "model.pretrained_path=$model"
        "model.window_size=${batch[1]}" model.fwd_pred_next_n=1 "data.path=$data" data.max_text_len=16
        "data.batch_size=${batch[0]}" train.num_workers=1 "train.use_gpu=$gpu" "train.cpus_per_worker=$cpus"
        train.activation_checkpointing=false train.warmup_steps=2 "train.log_every=$log_every"
        "train.checkpoint_every=$steps" train.keep_checkpoints=1 train.val_every=0 train.max_failures=0
        train.worker_start_retries=2 run.name=gpu_ray "run.storage_path=$runs" run.wandb_mode=disabled)
    echo "== train: $steps steps, a checkpoint"
    time $PYTHON "$REPO/pipelines/train.py" "${common[@]}" "train.max_steps=$steps" run.export=false
    echo "== resume to $((2 * steps)) steps, a checkpoint, the export"
    time $PYTHON "$REPO/pipelines/train.py" "${common[@]}" "train.max_steps=$((2 * steps))"
    echo "== evaluate the export on $device"
    time $PYTHON "$REPO/pipelines/evaluate.py" --export "$run_dir/export" --device "$device" \
        --episodes "$episodes" --tasks 2 --out "$out/eval"
    echo "== gpu_step.py: the same model and batch, without Ray"
    local bare=("${size[@]}" --family "$family" --windows "${batch[0]}" --frames "${batch[1]}" --text-len 16 --skip-bare)
    $PYTHON -m benchmarks.gpu_step "${bare[@]}" --json "$out/step.json" | tail -n 4
    local full=()
    if [ "$mode" = gpu ]; then
        echo "== gpu_step.py: the published depth"
        $PYTHON -m benchmarks.gpu_step --family "$family" --windows 4 --frames 8 --text-len 16 --skip-bare \
            --warmup 3 --steps 10 --json "$out/full.json" | tail -n 4
        full=(--full "$out/full.json")
    fi
    echo "== the Ray path on $device ($mode)"
    $PYTHON -m benchmarks.gpu_ray_table --run "$run_dir" --step "$out/step.json" "${full[@]}" \
        --eval "$out/eval/report.json" --device "$device"
}

command=${1:?pack, run or cpu}
case $command in
pack)
    pack "${2:?CARRY folder}" "${3:-3.12}"
    ;;
run | cpu)
    carry=${2:?CARRY folder} out=$(realpath -m "${3:-gpu_ray_out}")
    PYTHON=${PYTHON:-python3}
    # The raylet waits this long for its dashboard agent (30 s by default, overrun once on a loaded 2-core machine).
    export RAY_agent_register_timeout_ms=${RAY_agent_register_timeout_ms:-120000}
    cd "$REPO"
    install "$carry" "$out/site"
    chain "$([ "$command" = run ] && echo gpu || echo cpu)" "$out"
    ;;
*)
    echo "unknown command $command: pack, run or cpu" >&2
    exit 2
    ;;
esac
