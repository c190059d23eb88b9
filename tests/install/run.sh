#!/usr/bin/env bash
# The install test: `cmake --install` into a temporary prefix, then
# tests/install/consumer.c built outside the tree against what was
# installed, three ways (pkg-config; find_package with the shared and with
# the static library), each run against the installed snapbusd: it
# publishes an event and reads its batch back.
# Usage: run.sh BUILD_DIR   (CFLAGS/LDFLAGS pass sanitizer flags through)
set -euo pipefail
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-install.XXXXXX")
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
prefix=$tmp/prefix
# snapbusd refuses SNAPBUS_* variables that are not configuration keys.
for v in $(env | awk -F= '/^SNAPBUS_/{print $1}'); do unset "$v"; done

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
for f in bin/snapbusd bin/snapbus include/snapbus/snapbus.h \
         include/snapbus/snapbus_common.h lib/libsnapbus.a \
         lib/pkgconfig/snapbus.pc lib/cmake/snapbus/snapbusConfig.cmake \
         lib/cmake/snapbus/snapbusConfigVersion.cmake; do
    [ -e "$prefix/$f" ] || { echo "not installed: $f" >&2; exit 1; }
done
so=$(readlink "$prefix/lib/libsnapbus.so")
case $so in libsnapbus.so.[0-9]*) ;; *) echo "libsnapbus.so -> $so: no SOVERSION link" >&2; exit 1 ;; esac
for b in snapbusd snapbus; do
    rp=$(readelf -d "$prefix/bin/$b" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p')
    [ "$rp" = '$ORIGIN/../lib' ] || { echo "$b: RUNPATH '$rp', want \$ORIGIN/../lib" >&2; exit 1; }
done
# The installed tree works on its own: moved away from the build tree.
mv "$prefix" "$tmp/moved"
prefix=$tmp/moved
"$prefix/bin/snapbus" --help >/dev/null

# The installed broker on free loopback ports; its ready file names them.
ready=$tmp/ready
"$prefix/bin/snapbusd" --ingest 'tcp://127.0.0.1:*' --pub 'tcp://127.0.0.1:*' \
    --query 'tcp://127.0.0.1:*' --ready-file "$ready" --data-dir "$tmp/data" \
    2>"$tmp/broker.log" &
pid=$!
# Bounded only so that a broken build cannot hang the suite.
for _ in $(seq 3000); do
    grep -q '^query=' "$ready" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/broker.log" >&2; exit 1; }
    sleep 0.01
done
ingest=$(sed -n 's/^ingest=//p' "$ready")
query=$(sed -n 's/^query=//p' "$ready")
[ -n "$ingest" ] && [ -n "$query" ] || { echo "snapbusd did not start" >&2; cat "$tmp/broker.log" >&2; exit 1; }

echo "== pkg-config --cflags --libs snapbus"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
# shellcheck disable=SC2046,SC2086
cc ${CFLAGS:-} -o "$tmp/consumer_pc" "$here/consumer.c" \
    $(pkg-config --cflags --libs snapbus) -Wl,-rpath,"$prefix/lib" ${LDFLAGS:-}
"$tmp/consumer_pc" "$ingest" "$query" install.pkgconfig

echo "== find_package(snapbus)"
cmake -S "$here" -B "$tmp/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" \
    >"$tmp/consumer-cmake.log" || { cat "$tmp/consumer-cmake.log" >&2; exit 1; }
cmake --build "$tmp/consumer-build" >"$tmp/consumer-build.log" 2>&1 ||
    { cat "$tmp/consumer-build.log" >&2; exit 1; }
"$tmp/consumer-build/consumer" "$ingest" "$query" install.cmake
"$tmp/consumer-build/consumer_static" "$ingest" "$query" install.cmake_static

kill -TERM "$pid"
st=0
wait "$pid" || st=$?
pid=
[ "$st" = 0 ] || { echo "snapbusd exited $st at SIGTERM" >&2; cat "$tmp/broker.log" >&2; exit 1; }
echo "install test: passed"
