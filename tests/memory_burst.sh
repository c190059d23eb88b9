#!/bin/sh
# The memory budget under the two bursts it is measured with
# (docs/ARCHITECTURE.md, "Memory budget"); prints the broker's peak RSS.
#
#   1. burst: `snapbus replay` of N events of 100 B over K aggregates
#      (batching delay 0, gen/1* held 200 ms), one lossless subscriber
#      stopped (SIGSTOP) for STOP seconds, one live, one joining halfway
#      from seq 1. Every subscriber must get N events (`snapbus record
#      -n N` exits 0; a loss the broker reports makes it exit 3). The
#      exact-once and order checks are it_stress's.
#   2. publishers: P concurrent `snapbus replay` processes, M acked
#      (`sequenced`) events each, against a fresh broker.
#
# usage: tests/memory_burst.sh [-n N] [-k K] [-s STOP] [-P P] [-m M]
#                              [-b BUILD_DIR] [-- SNAPBUSD_ARGS...]
# Defaults: N 10000000, K 10000, STOP 10, P 16, M 200000, BUILD_DIR build.
# -P 0 runs the burst alone. With --metrics 127.0.0.1:0 among SNAPBUSD_ARGS
# the budget's metrics are printed before each broker stops.
# SNAPBUSD_ARGS go to both brokers (e.g. --memory-budget 256M).
# Needs about 1.3 GB of free disk in ${TMPDIR:-/tmp} at the defaults.
set -eu

n=10000000 k=10000 stop=10 p=16 m=200000 build=build
while [ $# -gt 0 ]; do
    case "$1" in
    -n) n=$2; shift 2 ;;
    -k) k=$2; shift 2 ;;
    -s) stop=$2; shift 2 ;;
    -P) p=$2; shift 2 ;;
    -m) m=$2; shift 2 ;;
    -b) build=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-n N] [-k K] [-s STOP] [-P P] [-m M] [-b BUILD] [-- ARGS]" >&2
       exit 2 ;;
    esac
done
cli=$build/snapbus
daemon=$build/snapbusd
work=$(mktemp -d "${TMPDIR:-/tmp}/sbmem.XXXXXX")
bpid=
cleanup() {
    [ -n "$bpid" ] && kill -CONT "$bpid" 2>/dev/null; [ -n "$bpid" ] && kill "$bpid" 2>/dev/null
    for j in $(jobs -p); do kill -CONT "$j" 2>/dev/null; kill "$j" 2>/dev/null; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Starts a broker on free ports; sets bpid and the endpoints.
start_broker() {
    rm -rf "$work/data" "$work/ready"
    "$daemon" --ingest 'tcp://127.0.0.1:*' --pub 'tcp://127.0.0.1:*' \
        --query 'tcp://127.0.0.1:*' --data-dir "$work/data" \
        --ready-file "$work/ready" --log-level warn "$@" 2>"$work/broker.err" &
    bpid=$!
    i=0
    while [ ! -s "$work/ready" ]; do
        i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 "$bpid" 2>/dev/null; then
            echo "broker did not start:" >&2; cat "$work/broker.err" >&2; exit 3
        fi
        sleep 0.1
    done
    ingest=$(sed -n 's/^ingest=//p' "$work/ready")
    pub=$(sed -n 's/^pub=//p' "$work/ready")
    query=$(sed -n 's/^query=//p' "$work/ready")
}

stop_broker() {
    hwm=$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$bpid/status")
    # With --metrics among the broker's arguments: the budget's figures.
    url=$(sed -n 's/^metrics=//p' "$work/ready")
    if [ -n "$url" ] && command -v curl >/dev/null; then
        curl -s "$url/metrics" | grep -E '^snapbus_(memory|pub_skipped|fetch_shortened)' || true
    fi
    kill "$bpid"
    rc=0; wait "$bpid" || rc=$?
    bpid=
    [ "$rc" -eq 0 ] || { echo "broker exited $rc" >&2; cat "$work/broker.err" >&2; exit 1; }
}

echo "# generating $n events of 100 B over $k aggregates"
"$cli" record --generate "$n" --aggregates "$k" --size 100 -o "$work/burst.rec"

# A subscriber that notes when it ended and how.
sub() { # name, record options...
    name=$1; shift
    rc=0
    "$cli" record -e "$pub" -Q "$query" -n "$n" -T 120000 -o /dev/null "$@" || rc=$?
    echo "$rc $(date +%s.%N)" >"$work/$name.done"
}

start_broker --default-delay-ms 0 --delay 'gen/1*=200' "$@"
sub stopped &
s1=$!
sub live &
s2=$!
sleep 1 # the subscribers' hello (they would fill from retention anyway)
t0=$(date +%s.%N)
"$cli" replay -e "$ingest" -q -T 600000 "$work/burst.rec" >"$work/replay.out" &
rp=$!
kill -STOP "$s1"
sleep "$stop"
kill -CONT "$s1"
# The late subscriber joins once the replay is about half done.
while kill -0 "$rp" 2>/dev/null; do
    now=$(date +%s.%N)
    if awk -v a="$t0" -v b="$now" -v s="$stop" 'BEGIN { exit !(b - a > s + 5) }'; then
        break
    fi
    sleep 1
done
sub late -r 1 &
s3=$!
wait "$rp"
cat "$work/replay.out"
fail=0
for s in "$s1:stopped" "$s2:live" "$s3:late"; do
    wait "${s%%:*}" || true
    name=${s#*:}
    read -r rc at <"$work/$name.done"
    echo "subscriber $name: exit $rc, done $(awk -v a="$t0" -v b="$at" 'BEGIN { printf "%.1f", b - a }') s after the replay started"
    [ "$rc" -eq 0 ] || fail=1
done
stop_broker
echo "burst: N=$n K=$k stop=${stop}s broker VmHWM ${hwm} MiB"

[ "$p" -gt 0 ] || exit $fail
echo "# $p publishers x $m acked events"
"$cli" record --generate "$m" --aggregates "$k" --size 100 -o "$work/pub.rec"
start_broker "$@"
pids=
i=0
while [ $i -lt "$p" ]; do
    "$cli" replay -e "$ingest" -q -T 600000 "$work/pub.rec" >"$work/pub$i.out" &
    pids="$pids $!"
    i=$((i + 1))
done
for x in $pids; do wait "$x" || fail=1; done
acked=$(cat "$work"/pub*.out | sed -n 's/.*acked=\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s}')
stop_broker
echo "publishers: $p x $m acked=$acked (want $((p * m))) broker VmHWM ${hwm} MiB"
[ "$acked" -eq $((p * m)) ] || fail=1
exit $fail
