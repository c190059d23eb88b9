#!/usr/bin/env bash
# The Python client installs offline with pip and Debian's setuptools, its
# protobuf module generated at build time; a missing protoc is a clear
# error, not a traceback. Works on a copy of clients/python and proto/ (an
# in-tree pip build writes build/ and *.egg-info next to the sources).
# Usage: python.sh SOURCE_DIR
set -euo pipefail
src=$(cd "$1" && pwd)
py=/usr/bin/python3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-pyinstall.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tree/clients"
cp -r "$src/clients/python" "$tmp/tree/clients/python"
cp -r "$src/proto" "$tmp/tree/proto"
rm -f "$tmp/tree/clients/python/snapbus/snapbus_pb2.py"
# Debian's python3-zmq and python3-protobuf satisfy the dependencies.
"$py" -m venv --system-site-packages "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip --disable-pip-version-check --no-input)
export PIP_NO_INDEX=1 # offline: nothing may come from PyPI

echo "== a missing protoc"
if PYSNAPBUS_PROTOC=/nonexistent/protoc "${pip[@]}" install --no-build-isolation \
        "$tmp/tree/clients/python" >"$tmp/noprotoc.log" 2>&1; then
    echo "installed without protoc" >&2; exit 1
fi
grep -q "snapbus: protoc not found" "$tmp/noprotoc.log" ||
    { echo "no clear error for a missing protoc:" >&2; cat "$tmp/noprotoc.log" >&2; exit 1; }
if grep -q "^Traceback" "$tmp/noprotoc.log"; then
    echo "a traceback for a missing protoc:" >&2; cat "$tmp/noprotoc.log" >&2; exit 1
fi
grep "snapbus: protoc not found" "$tmp/noprotoc.log" | head -1
rm -rf "$tmp/tree/clients/python/build" "$tmp/tree/clients/python/"*.egg-info

echo "== pip install --no-build-isolation ./clients/python"
"${pip[@]}" install --no-build-isolation "$tmp/tree/clients/python" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; exit 1; }
# Imported away from the tree, with no protoc to run and no hint where the
# .proto is: the generated module must come with the package.
cd "$tmp"
PATH=/nonexistent PYSNAPBUS_PROTO= PYSNAPBUS_PB2_DIR= "$tmp/venv/bin/python" - <<'PY'
import os, snapbus
from snapbus._pb import pb
here = os.path.dirname(snapbus.__file__)
assert os.path.isfile(os.path.join(here, "snapbus_pb2.py")), here
assert "venv" in here, here
print("installed:", here, "SnapshotBatch fields:", len(pb.SnapshotBatch.DESCRIPTOR.fields))
PY
echo "python install test: passed"
