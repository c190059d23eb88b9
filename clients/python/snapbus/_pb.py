"""Loads the protobuf module generated from proto/snapbus.proto.

The generated module is never committed and never generated here: it is
made at build time from the ``.proto`` (the only source of the wire
format) by ``snapbus/_gen.py``. Where it is found, in this order:

1. Inside the package (``snapbus/snapbus_pb2.py``): what
   ``pip install ./clients/python`` installs.
2. ``PYSNAPBUS_PB2_DIR/snapbus_pb2.py``: a source-tree run; the C
   project's build writes ``<build>/python/snapbus_pb2.py`` and ctest
   points this variable there.
3. A ``snapbus_pb2`` module on ``sys.path``.

Environment variables deliberately do not start with ``SNAPBUS_``: the
broker refuses ``SNAPBUS_*`` variables that are not its own settings.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))


def _from_file(path):
    spec = importlib.util.spec_from_file_location("snapbus.snapbus_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _load():
    inside = os.path.join(_HERE, "snapbus_pb2.py")
    if os.path.isfile(inside):
        return _from_file(inside)
    out = os.environ.get("PYSNAPBUS_PB2_DIR")
    if out and os.path.isfile(os.path.join(out, "snapbus_pb2.py")):
        return _from_file(os.path.join(out, "snapbus_pb2.py"))
    try:
        import snapbus_pb2  # type: ignore  # generated, on sys.path
        return snapbus_pb2
    except ImportError:
        pass
    raise ImportError(
        "snapbus: the generated protobuf module snapbus_pb2 is missing. Install "
        "the package (pip install ./clients/python generates it), or in the "
        "source tree build the C project (cmake --build build writes "
        "build/python/snapbus_pb2.py) and set PYSNAPBUS_PB2_DIR=build/python")


pb = _load()

# Fields added after protocol version 1 was first written; a broker or a
# .proto without them still works (the client just does not use them).
FETCH_HAS_HEADERS_ONLY = "headers_only" in pb.Fetch.DESCRIPTOR.fields_by_name
FETCH_HAS_EXACT = "exact" in pb.Fetch.DESCRIPTOR.fields_by_name
