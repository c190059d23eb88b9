#!/usr/bin/env bash
# The Debian package without installing it: `cpack -G DEB` into a
# temporary directory, then its contents: the systemd unit starting
# /usr/bin/snapbusd, a loopback-only configuration that the packaged
# snapbusd accepts, the library with its SOVERSION link, headers,
# pkg-config and CMake files, and the maintainer scripts. (The container
# test, deploy/test-container.sh, installs it with apt-get and runs it.)
# Usage: deb.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for v in $(env | awk -F= '/^SNAPBUS_/{print $1}'); do unset "$v"; done

cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/out" >"$tmp/cpack.log" 2>&1 ||
    { cat "$tmp/cpack.log" >&2; exit 1; }
deb=$(ls "$tmp"/out/snapbus_*.deb)
dpkg-deb -c "$deb" | awk '{print $6}' >"$tmp/files"
for f in ./usr/bin/snapbusd ./usr/bin/snapbus ./usr/lib/libsnapbus.so.1 \
         ./usr/lib/libsnapbus.a ./usr/include/snapbus/snapbus.h \
         ./usr/lib/pkgconfig/snapbus.pc ./usr/lib/cmake/snapbus/snapbusConfig.cmake \
         ./lib/systemd/system/snapbusd.service ./etc/snapbus/snapbus.ini; do
    grep -qx -- "$f" "$tmp/files" || { echo "not in the package: $f" >&2; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/snapbus/snapbus.ini ||
    { echo "snapbus.ini is not a conffile" >&2; exit 1; }
for s in postinst prerm postrm; do
    dpkg-deb -I "$deb" "$s" >/dev/null || { echo "no $s script" >&2; exit 1; }
done
dpkg-deb -x "$deb" "$tmp/root"
grep -q '^ExecStart=/usr/bin/snapbusd --config /etc/snapbus/snapbus.ini ' \
    "$tmp/root/lib/systemd/system/snapbusd.service" ||
    { echo "the unit does not start /usr/bin/snapbusd" >&2; exit 1; }
ini=$tmp/root/etc/snapbus/snapbus.ini
if grep -Eq '^[^;]*(0\.0\.0\.0|insecure)' "$ini"; then
    echo "the packaged configuration binds beyond loopback or is insecure" >&2; exit 1
fi
[ "$(grep -Ec '^(ingest|pub|query) = tcp://127\.0\.0\.1:' "$ini")" = 3 ] ||
    { echo "the packaged configuration does not bind all three sockets to loopback" >&2; exit 1; }
# The packaged broker (RUNPATH $ORIGIN/../lib finds the packaged library
# for the CLI) accepts the packaged configuration.
"$tmp/root/usr/bin/snapbusd" --config "$ini" --check-config
"$tmp/root/usr/bin/snapbus" --help >/dev/null
echo "package $(basename "$deb"): $(wc -l <"$tmp/files") entries, checked"
