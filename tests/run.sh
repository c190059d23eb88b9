#!/usr/bin/env bash
# Builds snapbus twice (release-like, then AddressSanitizer +
# UndefinedBehaviorSanitizer) and runs the whole test suite in each.
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

# The container image, compose file and Kubernetes manifests, with a real
# engine (podman): about 4 minutes, needs root, installs its own packages.
# Always in CI; elsewhere on request.
if [ "${CI:-}" = true ] || [ "$container_test" = 1 ]; then
    echo "== container test: deploy/test-container.sh"
    SNAPBUS_CLI=$PWD/build/snapbus bash deploy/test-container.sh
fi
