#!/bin/sh
# The symbols libsnapbus.so exports are its API and nothing else: every one
# starts with sb_, and the set is the committed list (libsnapbus.exports).
# A new API function is added to the list in the same change; a symbol
# that leaks (a helper without static, a library linked in unhidden) or
# one that disappears (an ABI break) fails here.
# Usage: check_exports.sh LIBSNAPBUS.so EXPECTED_LIST
set -eu
lib=$1
want=$2
# Sanitizer builds add their own instrumentation symbols: not ours.
got=$(nm -D --defined-only "$lib" | awk '{print $3}' |
      grep -v -E '^(__asan|__odr_asan|__ubsan|__tsan|__sanitizer|_init$|_fini$)' |
      sed 's/@.*//' | sort -u)
bad=$(printf '%s\n' "$got" | grep -v '^sb_' || true)
if [ -n "$bad" ]; then
    echo "libsnapbus.so exports symbols outside the sb_ API:" >&2
    printf '  %s\n' $bad >&2
    echo "Make them static, or build them with hidden visibility." >&2
    exit 1
fi
if ! printf '%s\n' "$got" | diff -u "$want" - >&2; then
    echo "libsnapbus.so's exports differ from $want (- listed, + exported)." >&2
    echo "An added API function: add it to the list. A removed one breaks" >&2
    echo "the ABI: keep it, or raise the SOVERSION in CMakeLists.txt." >&2
    exit 1
fi
echo "libsnapbus.so exports exactly the $(printf '%s\n' "$got" | wc -l) listed sb_ symbols"
