#!/usr/bin/env bash
# Builds snapbus twice (release-like, then AddressSanitizer +
# UndefinedBehaviorSanitizer) and runs the whole test suite in each; then
# the concurrency tests under ThreadSanitizer and a short run of every
# fuzz harness (clang).
# Dependencies come from the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
# Taken out of the environment: snapbusd refuses SNAPBUS_* variables that
# are not configuration keys, and the tests start snapbusd.
container_test=${SNAPBUS_CONTAINER_TEST:-0}
unset SNAPBUS_CONTAINER_TEST

run_suite() {
    local dir=$1; shift
    cmake -S . -B "$dir" "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
    ctest --test-dir "$dir" --output-on-failure --timeout 900
}

echo "== build and test: $PWD/build"
run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo
echo "== build and test with ASan+UBSan: $PWD/build-asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DSB_SANITIZE=ON

# ThreadSanitizer (the actors are threads): the unit tests, and the
# integration tests that are clean under it, against a TSan-built snapbusd
# (which inherits TSAN_OPTIONS, so a race in the broker fails its test).
# libzmq is not instrumented: tests/tsan.supp lists its internals, and
# nothing of ours. About 4 minutes on 2 cores. Left out: it_stress (its
# memory bound check; TSan's shadow memory inflates RSS) and it_crash (too
# slow under TSan for its fetch timeout). docs/FUZZING.md has the list.
echo "== concurrency tests with TSan: $PWD/build-tsan"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSB_TSAN=ON >/dev/null
cmake --build build-tsan -j "$jobs"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
    ctest --test-dir build-tsan --output-on-failure --timeout 900 \
    -R '^(unit\.|integration\.it_(badinput|ops|backpressure|pipeline|faults|diskfull|protocol|dedup|curve|shard)$)'

# libFuzzer (clang): every harness of tests/fuzz for 60 s, as many at a
# time as there are cores; a crash, leak or timeout fails. Prints the
# executions of each. Longer runs: docs/FUZZING.md.
echo "== fuzzing, 60 s per harness: $PWD/build-fuzz"
bash tests/fuzz/run.sh 60

# The container image, compose file and Kubernetes manifests, with a real
# engine (podman): about 4 minutes, needs root, installs its own packages.
# Always in CI; elsewhere on request.
if [ "${CI:-}" = true ] || [ "$container_test" = 1 ]; then
    echo "== container test: deploy/test-container.sh"
    SNAPBUS_CLI=$PWD/build/snapbus bash deploy/test-container.sh
fi
