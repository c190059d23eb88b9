/* snapbus bench: the baselines, measured in the same run as the broker so
 * that a busy machine weighs on both (cli_bench.h).
 *
 *   raw             a PUSH thread sends N messages to a PULL thread over
 *                   tcp://127.0.0.1; rate = N / (first send .. last
 *                   receive).
 *   forwarder       PUSH thread -> forwarder thread (zmq_proxy's loop: PULL
 *                   in, PUB out) -> SUB thread, all over tcp://127.0.0.1: the
 *                   shape of a broker that only forwards. The PUB and SUB
 *                   high-water marks are off, so it loses nothing (as the
 *                   broker's lossless fire-and-forget mode must not);
 *                   rate = N / (first send .. last receive).
 *   echo-pipelined  a DEALER sends N messages to a ROUTER thread that
 *                   sends each back, with W in flight; rate = N / time.
 *   echo            the same, one at a time (window 1): the round trip of
 *                   ZeroMQ alone, p50/p99/p99.9 over --lat-events.
 *   fsync           4 KiB appended to a file in the data directory, then
 *                   fdatasync, repeated: what one group commit costs at
 *                   least on this file system.
 *
 * The threads are this file's: each run starts and joins its own. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "cli.h"
#include "cli_bench.h"

/* Options are set before the bind: a listener copies the socket's options
 * when it is made, and the connections it accepts get that copy. */
static void *
s_socket(void *zctx, int type, const char *bind_to, char *endpoint, size_t len)
{
    void *s = zmq_socket(zctx, type);
    int zero = 0;

    if (s == NULL)
        return NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (type == ZMQ_PUB) /* the forwarder's: lossless, as snapbus must be */
        zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
    if (bind_to != NULL &&
        (zmq_bind(s, bind_to) != 0 ||
         zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, endpoint, &len) != 0)) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* ---- raw PUSH -> PULL ---------------------------------------------- */

typedef struct {
    void *zctx;
    char endpoint[256];
    void *pull;
    uint64_t n;
    size_t size;
    _Atomic uint64_t t_first;
    uint64_t t_last;
    uint64_t got;
    int stall_ms;
} raw_run;

/* Sends n messages of size bytes; with a warm-up of messages one byte
 * longer first when warm is set (a SUB ignores them by their length). */
static void *
s_pusher(void *arg)
{
    raw_run *r = arg;
    void *push = zmq_socket(r->zctx, ZMQ_PUSH);
    char *buf = calloc(1, r->size + 1);

    if (push == NULL || buf == NULL || zmq_connect(push, r->endpoint) != 0) {
        free(buf);
        if (push)
            zmq_close(push);
        return NULL;
    }
    memset(buf, 'x', r->size);
    atomic_store(&r->t_first, cli_now_ns());
    for (uint64_t i = 0; i < r->n; i++) {
        while (zmq_send(push, buf, r->size, 0) < 0 && errno == EINTR)
            ;
    }
    zmq_close(push);
    free(buf);
    return NULL;
}

static void *
s_puller(void *arg)
{
    raw_run *r = arg;
    zmq_msg_t m;
    int timeout = r->stall_ms;

    zmq_msg_init(&m);
    zmq_setsockopt(r->pull, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    while (r->got < r->n) {
        if (zmq_msg_recv(&m, r->pull, 0) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (zmq_msg_size(&m) == r->size) /* not a warm-up message */
            r->got++;
    }
    r->t_last = cli_now_ns();
    zmq_msg_close(&m);
    return NULL;
}

static void
s_rate(result *res, const char *mode, size_t size, uint64_t n, uint64_t got,
       uint64_t t0, uint64_t t1)
{
    res->mode = mode;
    res->size = size;
    res->events = n;
    res->seconds = (double)(t1 - t0) / 1e9;
    res->rate = res->seconds > 0 ? (double)got / res->seconds : 0;
    res->lost = n - got;
    res->ok = got == n;
    res->cpu_us = -1;
}

int
cli_bench_raw(const bench *bn, size_t size, result *res)
{
    raw_run r = {.n = bn->events, .size = size, .stall_ms = bn->stall_ms};
    pthread_t tp, tq;

    if ((r.zctx = zmq_ctx_new()) == NULL ||
        (r.pull = s_socket(r.zctx, ZMQ_PULL, "tcp://127.0.0.1:*", r.endpoint,
                           sizeof r.endpoint)) == NULL) {
        fprintf(stderr, "snapbus bench: raw: %s\n", zmq_strerror(errno));
        if (r.zctx)
            zmq_ctx_term(r.zctx);
        return -1;
    }
    pthread_create(&tq, NULL, s_puller, &r);
    pthread_create(&tp, NULL, s_pusher, &r);
    pthread_join(tp, NULL);
    pthread_join(tq, NULL);
    zmq_close(r.pull);
    zmq_ctx_term(r.zctx);
    s_rate(res, "raw", size, r.n, r.got, atomic_load(&r.t_first), r.t_last);
    return 0;
}

/* ---- PUSH -> forwarder -> PUB -> SUB --------------------------------- */

typedef struct {
    void *zctx;
    void *pull, *pub; /* the forwarder's, bound here, used by its thread */
    char control[64];
} fwd_run;

/* What zmq_proxy does for PULL -> PUB, in a loop that also watches the
 * control socket, and sends with a blocking zmq_msg_send: the PUB's
 * high-water mark is off, so nothing is dropped. */
static void *
s_forwarder(void *arg)
{
    fwd_run *f = arg;
    void *ctl = zmq_socket(f->zctx, ZMQ_PAIR);
    zmq_msg_t m;

    if (ctl == NULL || zmq_connect(ctl, f->control) != 0) {
        if (ctl != NULL)
            zmq_close(ctl);
        return NULL;
    }
    zmq_msg_init(&m);
    for (;;) {
        zmq_pollitem_t it[] = {{f->pull, 0, ZMQ_POLLIN, 0},
                               {ctl, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, 2, -1) < 0 && errno != EINTR)
            break;
        if (it[1].revents & ZMQ_POLLIN)
            break;
        /* Drain what is there before polling again, as zmq_proxy does. */
        while (zmq_msg_recv(&m, f->pull, ZMQ_DONTWAIT) >= 0) {
            int more = zmq_msg_more(&m);
            while (zmq_msg_send(&m, f->pub, more ? ZMQ_SNDMORE : 0) < 0 &&
                   errno == EINTR)
                ;
        }
    }
    zmq_msg_close(&m);
    zmq_close(ctl);
    return NULL;
}

int
cli_bench_forwarder(const bench *bn, size_t size, result *res)
{
    fwd_run f = {0};
    raw_run r = {.n = bn->events, .size = size, .stall_ms = bn->stall_ms};
    char pub_ep[256];
    void *ctl = NULL, *sub = NULL, *warm = NULL;
    pthread_t tf, tp, tq;
    int zero = 0, started = 0, rc = -1;

    snprintf(f.control, sizeof f.control, "inproc://bench-fwd-%p", (void *)&f);
    if ((f.zctx = r.zctx = zmq_ctx_new()) == NULL)
        goto out;
    f.pull = s_socket(f.zctx, ZMQ_PULL, "tcp://127.0.0.1:*", r.endpoint,
                      sizeof r.endpoint);
    f.pub =
        s_socket(f.zctx, ZMQ_PUB, "tcp://127.0.0.1:*", pub_ep, sizeof pub_ep);
    ctl = s_socket(f.zctx, ZMQ_PAIR, f.control, f.control, sizeof f.control);
    sub = s_socket(f.zctx, ZMQ_SUB, NULL, NULL, 0);
    warm = s_socket(f.zctx, ZMQ_PUSH, NULL, NULL, 0);
    if (f.pull == NULL || f.pub == NULL || ctl == NULL || sub == NULL ||
        warm == NULL ||
        zmq_setsockopt(sub, ZMQ_RCVHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0) != 0 ||
        zmq_connect(sub, pub_ep) != 0 || zmq_connect(warm, r.endpoint) != 0)
        goto out;
    pthread_create(&tf, NULL, s_forwarder, &f);
    started = 1;
    /* A SUB gets nothing until its subscription reached the PUB: send
     * warm-up messages (one byte longer than the run's) until one comes
     * through; the run's puller skips any still on the way. */
    char *wbuf = calloc(1, size + 1);
    int seen = 0;
    int t100 = 100;
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &t100, sizeof t100);
    for (int i = 0; wbuf != NULL && i < 100 && !seen; i++) {
        zmq_msg_t m;
        zmq_send(warm, wbuf, size + 1, 0);
        zmq_msg_init(&m);
        seen = zmq_msg_recv(&m, sub, 0) >= 0;
        zmq_msg_close(&m);
    }
    free(wbuf);
    if (!seen) {
        fprintf(stderr, "snapbus bench: forwarder: subscription never "
                        "reached the PUB\n");
        goto out;
    }
    r.pull = sub;
    pthread_create(&tq, NULL, s_puller, &r);
    pthread_create(&tp, NULL, s_pusher, &r);
    pthread_join(tp, NULL);
    pthread_join(tq, NULL);
    s_rate(res, "forwarder", size, r.n, r.got, atomic_load(&r.t_first),
           r.t_last);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "snapbus bench: forwarder: %s\n", zmq_strerror(errno));
    if (started) {
        zmq_send(ctl, "TERMINATE", 9, 0);
        pthread_join(tf, NULL);
    }
    void *socks[] = {f.pull, f.pub, ctl, sub, warm};
    for (size_t i = 0; i < sizeof socks / sizeof socks[0]; i++)
        if (socks[i] != NULL)
            zmq_close(socks[i]);
    if (f.zctx != NULL)
        zmq_ctx_term(f.zctx);
    return rc;
}

/* ---- DEALER -> ROUTER echo ------------------------------------------- */

typedef struct {
    void *router;
    _Atomic int stop;
} echo_run;

static void *
s_echo(void *arg)
{
    echo_run *e = arg;
    int t100 = 100;

    zmq_setsockopt(e->router, ZMQ_RCVTIMEO, &t100, sizeof t100);
    while (!atomic_load(&e->stop)) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, e->router, 0) >= 0 &&
            zmq_msg_recv(&body, e->router, 0) >= 0) {
            zmq_msg_send(&id, e->router, ZMQ_SNDMORE);
            zmq_msg_send(&body, e->router, 0);
        }
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
    return NULL;
}

int
cli_bench_echo(const bench *bn, size_t size, uint32_t window, result *res)
{
    echo_run e = {0};
    char ep[256];
    void *zctx = zmq_ctx_new(), *dealer = NULL;
    pthread_t te;
    uint64_t n = window == 1 ? bn->lat_events : bn->events;
    uint64_t *ns = NULL, sent = 0, got = 0, t0 = 0, t1 = 0;
    char *buf = malloc(size + 1);
    int rc = -1, started = 0, timeout = bn->stall_ms;

    if (zctx == NULL || buf == NULL ||
        (window == 1 && (ns = malloc(n * sizeof *ns)) == NULL) ||
        (e.router = s_socket(zctx, ZMQ_ROUTER, "tcp://127.0.0.1:*", ep,
                             sizeof ep)) == NULL ||
        (dealer = s_socket(zctx, ZMQ_DEALER, NULL, NULL, 0)) == NULL ||
        zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        zmq_connect(dealer, ep) != 0) {
        fprintf(stderr, "snapbus bench: echo: %s\n", zmq_strerror(errno));
        goto out;
    }
    memset(buf, 'x', size);
    pthread_create(&te, NULL, s_echo, &e);
    started = 1;
    /* Connected and warm: a few round trips not measured. */
    for (int i = 0; i < 100; i++) {
        if (zmq_send(dealer, buf, size, 0) < 0 ||
            zmq_recv(dealer, buf, size, 0) < 0)
            goto out;
    }
    t0 = cli_now_ns();
    if (window == 1) {
        for (; got < n; got++) {
            uint64_t a = cli_now_ns();
            if (zmq_send(dealer, buf, size, 0) < 0 ||
                zmq_recv(dealer, buf, size, 0) < 0)
                break;
            ns[got] = cli_now_ns() - a;
            if ((got & 1023) == 0)
                cli_bench_progress(got, n);
        }
    } else {
        while (got < n) {
            while (sent < n && sent - got < window &&
                   zmq_send(dealer, buf, size, 0) >= 0)
                sent++;
            if (zmq_recv(dealer, buf, size, 0) < 0)
                break;
            got++;
            if ((got & 65535) == 0)
                cli_bench_progress(got, n);
        }
    }
    t1 = cli_now_ns();
    s_rate(res, window == 1 ? "echo" : "echo-pipelined", size, n, got, t0, t1);
    if (window == 1)
        cli_bench_latency(res, ns, got);
    rc = 0;
out:
    if (started) {
        atomic_store(&e.stop, 1);
        pthread_join(te, NULL);
    }
    if (dealer != NULL)
        zmq_close(dealer);
    if (e.router != NULL)
        zmq_close(e.router);
    if (zctx != NULL)
        zmq_ctx_term(zctx);
    free(buf);
    free(ns);
    return rc;
}

/* ---- fdatasync on the data directory's file system ------------------- */

int
cli_bench_fsync(const bench *bn, result *res)
{
    char path[PATH_MAX + 32], block[4096];
    uint64_t n = bn->lat_events < 2000 ? bn->lat_events : 2000;
    uint64_t *ns = malloc(n * sizeof *ns), got = 0;
    int fd;

    snprintf(path, sizeof path, "%s/fsync-probe", bn->dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ns == NULL || fd < 0) {
        fprintf(stderr, "snapbus bench: fsync probe: %s: %s\n", path,
                strerror(errno));
        free(ns);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memset(block, 'x', sizeof block);
    uint64_t t0 = cli_now_ns();
    /* Appends, as the log does: each sync carries the new size too. */
    for (; got < n; got++) {
        uint64_t a = cli_now_ns();
        if (write(fd, block, sizeof block) != (ssize_t)sizeof block ||
            fdatasync(fd) != 0) {
            fprintf(stderr, "snapbus bench: fsync probe: %s\n",
                    strerror(errno));
            break;
        }
        ns[got] = cli_now_ns() - a;
        if ((got & 63) == 0)
            cli_bench_progress(got, n);
    }
    uint64_t t1 = cli_now_ns();
    close(fd);
    unlink(path);
    s_rate(res, "fsync", sizeof block, n, got, t0, t1);
    cli_bench_latency(res, ns, got);
    free(ns);
    return 0;
}
