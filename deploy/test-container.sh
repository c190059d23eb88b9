#!/usr/bin/env bash
# Container smoke test with a real engine (Debian's podman, runc), offline:
#
#  1. lint: yamllint (compose + k8s), a schema check of the Kubernetes
#     objects, docker-compose config, shellcheck of the deploy scripts;
#  2. base image made here with mmdebstrap and `podman import` (no registry);
#  3. build deploy/Containerfile (multi-stage, compiles inside);
#  4. run it read-only with loopback port publishing, publish and subscribe
#     through it with the host's CLI, stop it with SIGTERM under load: exit
#     code 0, and the batch that was still open reached the subscriber;
#  5. `podman kube play` the Kubernetes manifests (adapted to one host by
#     deploy/tools/kube-pod.cjs): probes' endpoints, publish and subscribe,
#     stop with exit code 0, then the pod again on the same claim, which
#     still holds the log.
#  6. the Debian package (`cpack -G DEB`): installed with apt-get in a
#     container of the base image, the broker started from it with the
#     packaged loopback configuration, publish, subscribe, SIGTERM, exit 0.
#
# Needs root (rootful podman). Installs what it needs with apt-get and npm
# (both idempotent). Leaves nothing behind: a private podman store under a
# temporary directory is removed at the end (KEEP=1 keeps it for a look).
# The host CLI comes from $SNAPBUS_CLI, else build/snapbus, else it is built.
# Prints "N passed, N failed" last; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=localhost/snapbus:test
T_START=$(date +%s)

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
# Runs a check quietly; its output is shown only when it fails.
check() {
    local what=$1
    shift
    if "$@" >"$W/check.out" 2>&1; then
        ok "$what"
    else
        bad "$what"
        tail -20 "$W/check.out" | sed 's/^/    /'
    fi
}
step() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - T_START))"; }
now_ms() { date +%s%3N; }

# ---- tools -------------------------------------------------------------

step "tools"
export DEBIAN_FRONTEND=noninteractive
# docker-compose only validates the compose file here; without recommends
# it does not pull in a Docker engine.
# catatonit is the pause process kube play builds its infra image from.
want=(podman runc catatonit mmdebstrap uidmap yamllint shellcheck docker-compose)
# A Node.js that is already there (maybe not Debian's) is used as it is.
command -v node >/dev/null && command -v npm >/dev/null || want+=(nodejs npm)
missing=()
for p in "${want[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

W=$(mktemp -d /tmp/snapbus-ct.XXXXXX)
P=(podman --root "$W/store" --runroot "$W/run")
export CONTAINERS_CONF=$ROOT/deploy/podman/containers.conf
bg_pids=()
cleanup() {
    set +e
    for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $W (podman --root $W/store --runroot $W/run)"
        return
    fi
    "${P[@]}" pod rm -af -t 0 >/dev/null 2>&1
    "${P[@]}" rm -af -t 0 >/dev/null 2>&1
    "${P[@]}" volume rm -af >/dev/null 2>&1
    "${P[@]}" rmi -af >/dev/null 2>&1
    # Overlay mounts of the private store must go before the directory.
    grep " $W/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

CLI=${SNAPBUS_CLI:-$ROOT/build/snapbus}
unset SNAPBUS_CLI # snapbusd would refuse it as an unknown key
if [ ! -x "$CLI" ]; then
    echo "building the host CLI in $W/host-build"
    cmake -S "$ROOT" -B "$W/host-build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$W/host-build" -j "$(nproc)" --target snapbus_cli >/dev/null
    CLI=$W/host-build/snapbus
fi

# Free loopback ports, so a broker already running on 7701-7704 (or a
# second run of this test) does not get in the way.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        # shellcheck disable=SC2188 # the redirection is the probe
        if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# Waits until /readyz answers 200; prints the milliseconds it took.
wait_ready() {
    local url=$1 t0=$2 _
    for _ in $(seq 1 300); do
        if "$CLI" stat --url "$url" --ready --timeout-ms 1000 >/dev/null 2>&1; then
            echo $(($(now_ms) - t0))
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Waits up to $3 seconds for file $1 to contain $2.
wait_for() {
    local _
    for _ in $(seq 1 $(($3 * 10))); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# ---- 1. static checks --------------------------------------------------

step "static checks"
check "yamllint deploy/compose.yaml deploy/k8s" \
    yamllint -s -c deploy/.yamllint.yaml deploy/compose.yaml deploy/k8s
check "shellcheck deploy/*.sh" shellcheck deploy/*.sh
if command -v docker-compose >/dev/null; then
    check "docker-compose config" \
        docker-compose -f deploy/compose.yaml config -q
fi
# Pinned: the schemas bundled in kubernetes-models are what is checked.
if (cd "$W" && npm install --silent --no-audit --no-fund --no-save \
        js-yaml@4.1.0 kubernetes-models@5.1.0 \
        @kubernetes-models/prometheus-operator@6.0.0 >/dev/null 2>&1); then
    export NODE_PATH=$W/node_modules MODULES_DIR=$W/node_modules
    check "kubernetes schema check deploy/k8s" \
        node deploy/tools/k8s-validate.mjs deploy/k8s/*.yaml
else
    bad "npm install js-yaml kubernetes-models"
fi

# ---- 2. base image ------------------------------------------------------

step "base image (mmdebstrap, podman import)"
src=/etc/apt/sources.list.d/debian.sources
[ -f "$src" ] || src=/etc/apt/sources.list
t0=$(now_ms)
mmdebstrap --quiet --variant=minbase bookworm "$W/base.tar" "$src"
"${P[@]}" import -q "$W/base.tar" docker.io/library/debian:bookworm-slim >/dev/null
rm -f "$W/base.tar"
echo "base image in $(($(now_ms) - t0)) ms"

# ---- 3. build -----------------------------------------------------------

step "build deploy/Containerfile"
# Only the files the build reads: a local build/ must not bloat the context.
mkdir -p "$W/ctx"
cp -r CMakeLists.txt cmake proto common include broker clients tests deploy "$W/ctx/"
t0=$(now_ms)
if "${P[@]}" build -q --pull=never --network host --format docker \
        -t "$IMAGE" -f "$W/ctx/deploy/Containerfile" "$W/ctx" >"$W/build.log" 2>&1; then
    build_ms=$(($(now_ms) - t0))
    size=$("${P[@]}" image inspect -f '{{.Size}}' "$IMAGE")
    ok "image built in ${build_ms} ms, $((size / 1048576)) MiB"
else
    tail -30 "$W/build.log"
    bad "image build"
    echo "containers: $passed passed, $failed failed"
    exit 1
fi
check "image runs as a non-root user" \
    test "$("${P[@]}" image inspect -f '{{.Config.User}}' "$IMAGE")" = "10001:10001"

# ---- 4. run read-only, publish, subscribe, stop under load -------------

step "run read-only with loopback port publishing"
pi=$(free_port) pp=$(free_port) pq=$(free_port) pm=$(free_port)
ingest=tcp://127.0.0.1:$pi pub=tcp://127.0.0.1:$pp url=http://127.0.0.1:$pm
t0=$(now_ms)
"${P[@]}" run -d --name snapbus-ct --read-only --tmpfs /tmp \
    -v snapbus-ct-data:/var/lib/snapbus \
    -p "127.0.0.1:$pi:7701" -p "127.0.0.1:$pp:7702" \
    -p "127.0.0.1:$pq:7703" -p "127.0.0.1:$pm:7704" \
    --memory 512m --cpus 1 --pids-limit 200 --cap-drop all \
    --security-opt no-new-privileges \
    "$IMAGE" --delay 'held/*=600000' >/dev/null 2>"$W/run.err"
if ready_ms=$(wait_ready "$url" "$t0"); then
    ok "ready (/readyz 200) ${ready_ms} ms after podman run"
else
    bad "broker container ready"
    cat "$W/run.err"
    "${P[@]}" logs snapbus-ct | tail -20
fi
check "root file system is read-only" \
    test "$("${P[@]}" inspect -f '{{.HostConfig.ReadonlyRootfs}}' snapbus-ct)" = true
check "/healthz answers 200" "$CLI" stat --url "$url" --health --timeout-ms 2000
check "image HEALTHCHECK passes (podman healthcheck run)" \
    "${P[@]}" healthcheck run snapbus-ct

"$CLI" sub --endpoint "$pub" --prefix demo/ --prefix held/ >"$W/sub1.out" 2>"$W/sub1.err" &
bg_pids+=($!)
sub_pid=$!
sleep 0.5 # the subscription reaches the broker
check "publish through the container (ack published)" \
    "$CLI" pub --endpoint "$ingest" --aggregate demo/1 --ack published one two three
check "subscriber got the live batch" wait_for "$W/sub1.out" "aggregate=demo/1" 10
check "publish into a held batch (ack sequenced)" \
    "$CLI" pub --endpoint "$ingest" --aggregate held/1 --ack sequenced h1 h2
sleep 0.5
check "the held batch is still open" \
    bash -c "! grep -q aggregate=held/1 '$W/sub1.out'"
"$CLI" stat --url "$url" --json >"$W/stat1.json"
check "metrics count 5 accepted, 1 open batch" \
    grep -q '"snapbus_events_accepted_total":5,.*"snapbus_open_batches":1,' "$W/stat1.json"

# Load during the stop: fire-and-forget events as fast as the CLI sends,
# until the broker is gone.
yes load | "$CLI" pub --endpoint "$ingest" --aggregate load/1 --ack none \
    >/dev/null 2>&1 &
bg_pids+=($!)
load_pid=$!
sleep 1
t0=$(now_ms)
"${P[@]}" stop -t 90 snapbus-ct >/dev/null 2>>"$W/run.err"
stop_ms=$(($(now_ms) - t0))
code=$("${P[@]}" inspect -f '{{.State.ExitCode}}' snapbus-ct)
check "podman stop under load: exit code 0 (was $code) in ${stop_ms} ms" \
    test "$code" = 0
check "SIGTERM flushed the open batch to the subscriber" \
    wait_for "$W/sub1.out" "aggregate=held/1 .* close=shutdown" 10
"${P[@]}" logs snapbus-ct >"$W/broker1.log" 2>&1
check "log: broker.stopped after the drain" \
    grep -q 'event=broker.stopped .*drain_ms=' "$W/broker1.log"
grep 'event=broker.stopped' "$W/broker1.log" || true
kill "$load_pid" "$sub_pid" 2>/dev/null || true
"${P[@]}" rm snapbus-ct >/dev/null 2>>"$W/run.err"

# ---- 5. podman kube play of the Kubernetes manifests --------------------

# HTTP status of GET $2 on 127.0.0.1:$1, as a kubelet's httpGet probe asks.
http_status() {
    local line
    exec 9<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&9
    read -r -t 5 line <&9 || true
    exec 9<&-
    line=${line#* }
    echo "${line%% *}"
}

# One probe of the pod spec: "PATH" of its httpGet, or nothing.
probe_path() {
    node -e '
        const y = require("js-yaml");
        const docs = y.loadAll(require("fs").readFileSync(process.argv[1], "utf8"));
        const pod = docs.find((d) => d && d.kind === "Pod");
        const p = pod.spec.containers[0][process.argv[2]];
        if (p && p.httpGet) console.log(p.httpGet.path);' "$1" "$2"
}

# The broker Pod from deploy/k8s, run by podman as a kubelet would: the
# ConfigMap mounted, the claim as a volume, the probes' endpoints asked,
# a publish and a subscription through it, a stop (exit 0), and the pod
# made again on the same claim, which still holds what was published.
kube_play_checks() {
    local ki kp kq km kingest kpub kquery kurl t0 ms ctr code sub_pid p path
    ki=$(free_port) kp=$(free_port) kq=$(free_port) km=$(free_port)
    kingest=tcp://127.0.0.1:$ki kpub=tcp://127.0.0.1:$kp
    kquery=tcp://127.0.0.1:$kq kurl=http://127.0.0.1:$km
    ctr=snapbus-0-snapbusd
    if [ -z "${NODE_PATH:-}" ] ||
        ! node deploy/tools/kube-pod.cjs deploy/k8s "$IMAGE" "$ki" "$kp" "$kq" "$km" \
            >"$W/pod.yaml"; then
        bad "adapting deploy/k8s for kube play (needs node + js-yaml)"
        return
    fi
    check "adapted pod passes the schema check" \
        node deploy/tools/k8s-validate.mjs "$W/pod.yaml"
    # Otherwise kube-pod.cjs adds the kubelet's SNAPBUS_SERVICE_* variables.
    check "pod spec: enableServiceLinks false" \
        grep -q 'enableServiceLinks: false' "$W/pod.yaml"
    check "pod spec: the startupProbe asks /readyz (log recovered), not /healthz" \
        test "$(probe_path "$W/pod.yaml" startupProbe)" = /readyz
    t0=$(now_ms)
    if ! "${P[@]}" kube play "$W/pod.yaml" >"$W/kube.log" 2>&1; then
        cat "$W/kube.log"
        bad "podman kube play"
        return
    fi
    if ms=$(wait_ready "$kurl" "$t0"); then
        ok "kube play: ready ${ms} ms after kube play"
    else
        bad "kube play: broker ready"
        "${P[@]}" logs "$ctr" 2>&1 | tail -20
    fi
    check "kube play: read-only root, user 10001" \
        test "$("${P[@]}" inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}' "$ctr")" \
        = "true 10001:10001"
    for p in startupProbe readinessProbe livenessProbe; do
        path=$(probe_path "$W/pod.yaml" "$p")
        check "kube play: $p GET $path answers 200" \
            test "$(http_status "$km" "$path")" = 200
    done
    # Not `podman healthcheck run`: podman turns an httpGet probe into a
    # curl command, and the image has no curl (its HEALTHCHECK uses
    # `snapbus stat --ready`), so that says "unhealthy" whatever the
    # broker answers. The probes' own requests are the checks above.
    rm -f "$W/sub2.ready"
    "$CLI" sub --endpoint "$kpub" --query "$kquery" --prefix k8s/ \
        --ready-file "$W/sub2.ready" >"$W/sub2.out" 2>&1 &
    sub_pid=$!
    bg_pids+=("$sub_pid")
    check "kube play: subscriber said hello" wait_for "$W/sub2.ready" pub= 30
    check "kube play: publish (ack published)" \
        "$CLI" pub --endpoint "$kingest" --aggregate k8s/1 --ack published a b
    check "kube play: subscriber got the batch" \
        wait_for "$W/sub2.out" "aggregate=k8s/1" 30
    t0=$(now_ms)
    "${P[@]}" pod stop -t 90 snapbus-0 >/dev/null 2>>"$W/kube.log"
    ms=$(($(now_ms) - t0))
    code=$("${P[@]}" inspect -f '{{.State.ExitCode}}' "$ctr")
    check "kube play: pod stop, exit code 0 (was $code) in ${ms} ms" \
        test "$code" = 0
    kill "$sub_pid" 2>/dev/null || true
    "${P[@]}" logs "$ctr" >"$W/kube-broker1.log" 2>&1 || true
    "${P[@]}" kube down "$W/pod.yaml" >/dev/null 2>&1 || true

    # A rescheduled pod finds its log on the claim.
    t0=$(now_ms)
    if ! "${P[@]}" kube play "$W/pod.yaml" >>"$W/kube.log" 2>&1; then
        bad "podman kube play again, on the same claim"
        return
    fi
    if ms=$(wait_ready "$kurl" "$t0"); then
        ok "kube play again: ready ${ms} ms after kube play"
    else
        bad "kube play again: broker ready"
        "${P[@]}" logs "$ctr" 2>&1 | tail -20
    fi
    "$CLI" sub --endpoint "$kpub" --query "$kquery" --prefix k8s/ \
        --from-seq 1 --exit-at-end --timeout-ms 30000 >"$W/sub3.out" 2>&1 || true
    check "kube play again: the claim kept the batch (sub --from-seq 1)" \
        grep -q 'aggregate=k8s/1 seq=1..2' "$W/sub3.out"
    "${P[@]}" pod stop -t 90 snapbus-0 >/dev/null 2>>"$W/kube.log"
    code=$("${P[@]}" inspect -f '{{.State.ExitCode}}' "$ctr")
    check "kube play again: pod stop, exit code 0 (was $code)" test "$code" = 0
    "${P[@]}" kube down "$W/pod.yaml" >/dev/null 2>&1 || true
}

step "podman kube play deploy/k8s"
kube_play_checks

# ---- 6. the Debian package ----------------------------------------------

# Builds the .deb on the host, installs it with apt-get in a container of
# the base image (apt-get resolves libzmq5 and the rest; postinst makes the
# service user), then starts snapbusd as that user with the packaged
# /etc/snapbus/snapbus.ini. Host networking, because the packaged
# configuration binds loopback only; the flags move its ports to free ones.
deb_test() {
    step "Debian package: cpack -G DEB, apt-get install in a container"
    local deb dport_i dport_p dport_q dport_m dingest dpub durl code t0 bdir
    # The tree's release build when there is one (CI has just made it),
    # else a build of our own.
    bdir=$ROOT/build
    if [ ! -f "$bdir/CPackConfig.cmake" ]; then
        bdir=$W/deb-build
        cmake -S "$ROOT" -B "$bdir" -DCMAKE_BUILD_TYPE=Release >"$W/deb.log" 2>&1 || true
    fi
    if ! cpack -G DEB --config "$bdir/CPackConfig.cmake" -B "$W/deb-out" \
            >>"$W/deb.log" 2>&1; then
        tail -30 "$W/deb.log"
        bad "cpack -G DEB"
        return
    fi
    deb=$(ls "$W"/deb-out/snapbus_*.deb)
    ok "package $(basename "$deb"), $(($(stat -c %s "$deb") / 1024)) KiB"
    dpkg-deb -c "$deb" >"$W/deb.files"
    check "package holds the unit, the configuration, library, headers, pkg-config" \
        bash -c "grep -q ' ./lib/systemd/system/snapbusd.service$' '$W/deb.files' &&
                 grep -q ' ./etc/snapbus/snapbus.ini$' '$W/deb.files' &&
                 grep -q ' ./usr/lib/libsnapbus.so.1 -> ' '$W/deb.files' &&
                 grep -q ' ./usr/include/snapbus/snapbus.h$' '$W/deb.files' &&
                 grep -q ' ./usr/lib/pkgconfig/snapbus.pc$' '$W/deb.files'"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/snapbus/snapbus.ini >"$W/deb.ini"
    check "packaged configuration: loopback only, no insecure" \
        bash -c "! grep -Eq '^[^;]*(0\.0\.0\.0|insecure)' '$W/deb.ini' &&
                 [ \$(grep -Ec '^(ingest|pub|query) = tcp://127\.0\.0\.1:' '$W/deb.ini') = 3 ]"
    check "packaged unit starts /usr/bin/snapbusd" \
        bash -c "dpkg-deb --fsys-tarfile '$deb' | tar -xO ./lib/systemd/system/snapbusd.service |
                 grep -q '^ExecStart=/usr/bin/snapbusd --config /etc/snapbus/snapbus.ini'"

    mkdir -p "$W/deb"
    cp "$deb" "$W/deb/snapbus.deb"
    # The state directory is what systemd's StateDirectory= would make.
    if ! "${P[@]}" run --name snapbus-deb-install --network host \
            -v "$W/deb:/deb:ro" docker.io/library/debian:bookworm-slim \
            sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends /deb/snapbus.deb >/dev/null &&
                   install -d -o snapbus -g snapbus -m 0750 /var/lib/snapbus' \
            >"$W/deb-install.log" 2>&1; then
        tail -20 "$W/deb-install.log"
        bad "apt-get install ./snapbus.deb in a container"
        return
    fi
    ok "apt-get install ./snapbus.deb in a container"
    "${P[@]}" commit -q snapbus-deb-install localhost/snapbus-deb:test >/dev/null
    "${P[@]}" rm snapbus-deb-install >/dev/null
    check "postinst made the service user" \
        "${P[@]}" run --rm localhost/snapbus-deb:test id snapbus

    dport_i=$(free_port) dport_p=$(free_port) dport_q=$(free_port) dport_m=$(free_port)
    dingest=tcp://127.0.0.1:$dport_i dpub=tcp://127.0.0.1:$dport_p
    durl=http://127.0.0.1:$dport_m
    t0=$(now_ms)
    "${P[@]}" run -d --name snapbus-deb --network host --user snapbus \
        localhost/snapbus-deb:test \
        /usr/bin/snapbusd --config /etc/snapbus/snapbus.ini \
        --data-dir /var/lib/snapbus --ingest "$dingest" --pub "$dpub" \
        --query "tcp://127.0.0.1:$dport_q" --metrics "127.0.0.1:$dport_m" \
        >/dev/null 2>"$W/deb-run.err"
    if dready_ms=$(wait_ready "$durl" "$t0"); then
        ok "packaged snapbusd ready ${dready_ms} ms after podman run"
    else
        bad "packaged snapbusd ready"
        cat "$W/deb-run.err"
        "${P[@]}" logs snapbus-deb 2>&1 | tail -20
    fi
    "$CLI" sub --endpoint "$dpub" --prefix deb/ >"$W/sub3.out" 2>&1 &
    bg_pids+=($!)
    local dsub_pid=$!
    sleep 0.5 # the subscription reaches the broker
    check "packaged broker: publish (ack published)" \
        "$CLI" pub --endpoint "$dingest" --aggregate deb/1 --ack published x y
    check "packaged broker: subscriber got the batch" \
        wait_for "$W/sub3.out" "aggregate=deb/1" 10
    "${P[@]}" stop -t 60 snapbus-deb >/dev/null 2>>"$W/deb-run.err"
    code=$("${P[@]}" inspect -f '{{.State.ExitCode}}' snapbus-deb)
    check "packaged broker: SIGTERM, exit code 0 (was $code)" test "$code" = 0
    kill "$dsub_pid" 2>/dev/null || true
    "${P[@]}" rm snapbus-deb >/dev/null 2>&1 || true
}
deb_test

# ---- summary ------------------------------------------------------------

step "summary"
echo "image size: $((size / 1048576)) MiB; start to ready: ${ready_ms:-?} ms;" \
    "shutdown under load: ${stop_ms:-?} ms; total $(($(date +%s) - T_START)) s"
echo "containers: $passed passed, $failed failed"
[ "$failed" = 0 ]
