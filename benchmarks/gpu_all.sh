#!/usr/bin/env bash
# Every GPU figure in docs/benchmarks.md, on one GPU, without Ray:
#
#   bash benchmarks/gpu_all.sh speed  LOGDIR   # platform step vs bare loop, MFU (PaliGemma-3B, Kosmos-2),
#                                              # what compile buys with and without activation checkpointing
#   bash benchmarks/gpu_all.sh memory LOGDIR   # peak memory against windows per step, with and without
#                                              # activation checkpointing
#
# Each run's full output goes to LOGDIR/<name>.log; the last lines of each are echoed.
set -u
phase=${1:?speed or memory}
logs=${2:-gpu_logs}
mkdir -p "$logs"

run() {
    local name=$1
    shift
    echo "== $name: python -m benchmarks.gpu_step $*"
    timeout 420 python -m benchmarks.gpu_step "$@" >"$logs/$name.log" 2>&1 || echo "(exit $?)"
    tail -n 7 "$logs/$name.log"
}

case $phase in
speed)
    run small --small
    run paligemma --family paligemma
    run kosmos2 --family kosmos2 --frames 16 --chunk 10
    run kosmos2-nocompile-full --family kosmos2 --frames 16 --chunk 10 --compile false
    checkpointed=(--activation-checkpointing --skip-bare --warmup 3 --steps 10)
    for compile in true false; do
        run "kosmos2-ac-compile-$compile" --family kosmos2 --frames 16 --chunk 10 --compile "$compile" "${checkpointed[@]}"
        run "paligemma-w8-ac-compile-$compile" --family paligemma --windows 8 --compile "$compile" "${checkpointed[@]}"
    done
    ;;
memory)
    quick=(--skip-bare --warmup 1 --steps 3)
    run paligemma-nocompile --family paligemma --compile false "${quick[@]}"
    run paligemma-w3 --family paligemma --windows 3 "${quick[@]}"
    for windows in 2 8; do
        run "paligemma-w$windows-nocompile" --family paligemma --windows "$windows" --compile false "${quick[@]}"
    done
    for windows in 8 32; do
        run "paligemma-w$windows-ac" --family paligemma --windows "$windows" --activation-checkpointing --compile false "${quick[@]}"
    done
    run paligemma-w4-bf16weights --family paligemma --weights bf16 --compile false "${quick[@]}"
    kosmos2=(--family kosmos2 --frames 16 --chunk 10)
    run kosmos2-nocompile "${kosmos2[@]}" --compile false "${quick[@]}"
    for windows in 2 8; do
        run "kosmos2-w$windows-nocompile" "${kosmos2[@]}" --windows "$windows" --compile false "${quick[@]}"
    done
    run kosmos2-w8-ac "${kosmos2[@]}" --windows 8 --activation-checkpointing --compile false "${quick[@]}"
    ;;
*)
    echo "unknown phase $phase: speed or memory" >&2
    exit 2
    ;;
esac
