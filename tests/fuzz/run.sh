#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, -DSB_FUZZ=ON) in build-fuzz and
# runs each of them for SECONDS (default 60), as many at a time as there
# are cores. Each one starts from its committed seeds (corpus/<name>) and
# regressions (regressions/<name>); what it finds goes to
# build-fuzz/fuzz-runs/corpus-<name>, which later runs reuse. Any crash,
# leak, timeout or failed check fails the run; the input that did it is
# left in build-fuzz/fuzz-runs/ (copy it to regressions/<name>/). Prints
# the executions of each harness (libFuzzer's stat::number_of_executed_units).
#
#   bash tests/fuzz/run.sh            # CI: 60 s each
#   bash tests/fuzz/run.sh 3600       # an hour each (docs/FUZZING.md)
#   bash tests/fuzz/run.sh 600 wire   # only some harnesses
#   SB_FUZZ_RUNS=10000000 bash tests/fuzz/run.sh 3600   # each stops at
#                                     # 10 million executions or an hour
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
shift || true
dir=${SB_FUZZ_BUILD:-build-fuzz}
jobs=${SB_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
runs=${SB_FUZZ_RUNS:--1}

cmake -S . -B "$dir" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DSB_FUZZ=ON >/dev/null
cmake --build "$dir" -j "$jobs" --target fuzzers
out=$dir/fuzz-runs
mkdir -p "$out"

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        n=${f##*/fuzz_}
        names+=("${n%.c}")
    done
fi

run_one() {
    local name=$1 dirs
    mkdir -p "$out/corpus-$name"
    dirs=("$out/corpus-$name")
    for d in "tests/fuzz/corpus/$name" "tests/fuzz/regressions/$name"; do
        if [ -d "$d" ]; then dirs+=("$d"); fi
    done
    "$dir/fuzz/fuzz_$name" -max_total_time="$secs" -runs="$runs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$out/$name-" "${dirs[@]}" >"$out/$name.log" 2>&1
}

declare -A pid_of
failed=0
for name in "${names[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    echo "fuzz_$name: ${secs}s"
    run_one "$name" &
    pid_of[$name]=$!
done
printf '\n%-10s %14s %10s %8s  %s\n' harness executions exec/s corpus result
for name in "${names[@]}"; do
    if wait "${pid_of[$name]}"; then result=ok; else result=FAILED; failed=1; fi
    log=$out/$name.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    units=$(find "$out/corpus-$name" -type f | wc -l)
    printf '%-10s %14s %10s %8s  %s\n' "$name" "${execs:-?}" "${rate:-?}" "$units" "$result"
    if [ "$result" = FAILED ]; then
        { grep -E 'ERROR|SUMMARY|check failed|Test unit written|No such' "$log" || true; } |
            head -20 | sed 's/^/    /'
    fi
done
exit $failed
