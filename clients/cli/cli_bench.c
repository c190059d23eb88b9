/* snapbus bench: throughput of the whole path on loopback, next to raw
 * ZeroMQ on the same machine, in one process tree.
 *
 * For each payload size:
 *   raw        a PUSH thread sends N messages to a PULL thread over
 *              tcp://127.0.0.1; rate = N / (first send .. last receive).
 *   none       a fresh snapbusd (delay 0); a publisher (this thread,
 *              fire-and-forget, aggregates round-robin) and a subscriber
 *              thread subscribed to everything, which keeps a bitmap of
 *              the seqs it saw, to count lost and duplicate events; rate =
 *              N / (first publish .. last event received).
 *   sequenced  a fresh snapbusd; acked publisher with a window; rate =
 *              N / (first publish .. last ack). Lost = events without an
 *              OK ack, dup = tokens acked twice.
 *   durable    the same with `durable` acks: each ack waits for the
 *              fdatasync of the on-disk log that covers it (group commit;
 *              pass --broker-arg --sync --broker-arg none to compare).
 *
 * Seqs of the measured run. The subscriber must be connected before the
 * run, and must know which seqs the run gets. A warm-up publisher sends
 * single acked events to "bench.warmup" until the subscriber has seen
 * one: then the subscription is live, and as the warm-up ack came before
 * the run starts and nobody else publishes, the run's events get exactly
 * the seqs base+1 .. base+N, base = the last warm-up seq.
 *
 * Each broker run gets its own snapbusd (so retention from one run never
 * weighs on the next), started with --ready-file in a temp dir and
 * stopped with SIGTERM + waitpid. Its output goes to broker-K.log there;
 * --keep leaves the dir.
 *
 * --curve runs every broker mode a second time right after the first,
 * with CURVE on every socket (docs/SECURITY.md): fresh keys in the temp
 * dir, one client key on both allowlists. The "vs plain" column is the
 * CURVE run's rate over the plain run's: the cost of encryption.
 *
 * --producer-ids does the same with a producer id and producer seq on
 * every event (docs/PUBLISHING.md): its "vs plain" is the cost of
 * de-duplication. The client's resend copies are off in those runs, so
 * the figure is the broker's index, not the client's bookkeeping. */
#define _GNU_SOURCE /* nftw */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "cli.h"
#include <snapbus/snapbus.h>

#define BENCH_MAX_SIZES 16
#define BENCH_MAX_EXTRA 32

typedef struct {
    uint64_t events;
    size_t sizes[BENCH_MAX_SIZES];
    int nsizes;
    uint32_t window;
    uint32_t batch_events;
    uint32_t batch_bytes;
    int aggregates;
    int stall_ms; /* a run with no progress this long ends */
    const char *broker;
    const char *extra[BENCH_MAX_EXTRA]; /* --broker-arg */
    int nextra;
    int keep;
    int json;
    int modes;          /* bit set of MODE_ */
    char dir[PATH_MAX]; /* temp dir */
    int runs;           /* brokers started, to name files */
    int curve;          /* --curve: each broker mode again with CURVE */
    int pids;           /* --producer-ids: again with producer ids */
    int curve_now;      /* the broker being started runs CURVE */
    char key_file[PATH_MAX + 16], list_file[PATH_MAX + 16];
} bench;

/* The client keys of the current run (all NULL: plain). Set by the main
 * thread before a run starts any thread, read by every client the run
 * makes; one global rather than a field threaded through each helper. */
static sb_curve_opts s_curve_now;
/* Likewise the producer id of the current run's publisher (NULL: none). */
static const char *s_producer_now;
static char s_curve_keys[3][41]; /* server public, client public, secret */

enum { MODE_RAW = 1, MODE_NONE = 2, MODE_SEQ = 4, MODE_DURABLE = 8 };

typedef struct {
    const char *mode;
    size_t size;
    uint64_t events;
    double seconds;
    double rate;
    double ratio;
    uint64_t lost; /* neither delivered (or acked) nor refused */
    uint64_t dup;
    uint64_t refused; /* refused by the broker, with the reason on stderr */
    int ok;           /* the run completed (else rate is what was measured) */
    double vs_plain;  /* --curve rows: rate / the plain run's rate */
} result;

/* ---- Raw ZeroMQ baseline ------------------------------------------- */

typedef struct {
    void *zctx;
    char endpoint[256];
    void *pull;
    uint64_t n;
    size_t size;
    _Atomic uint64_t t_first;
    uint64_t t_last;
    uint64_t got;
} raw_run;

static void *
s_raw_pusher(void *arg)
{
    raw_run *r = arg;
    void *push = zmq_socket(r->zctx, ZMQ_PUSH);
    char *buf = calloc(1, r->size ? r->size : 1);

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
s_raw_puller(void *arg)
{
    raw_run *r = arg;
    zmq_msg_t m;

    zmq_msg_init(&m);
    int timeout = 10000;
    zmq_setsockopt(r->pull, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    while (r->got < r->n) {
        if (zmq_msg_recv(&m, r->pull, 0) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        r->got++;
    }
    r->t_last = cli_now_ns();
    zmq_msg_close(&m);
    return NULL;
}

static int
s_run_raw(const bench *bn, size_t size, result *res)
{
    raw_run r = {0};
    pthread_t tp, tq;
    size_t len = sizeof r.endpoint;
    int linger = 0;

    r.n = bn->events;
    r.size = size;
    if ((r.zctx = zmq_ctx_new()) == NULL ||
        (r.pull = zmq_socket(r.zctx, ZMQ_PULL)) == NULL ||
        zmq_setsockopt(r.pull, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(r.pull, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(r.pull, ZMQ_LAST_ENDPOINT, r.endpoint, &len) != 0) {
        fprintf(stderr, "snapbus bench: raw: %s\n", zmq_strerror(errno));
        if (r.pull)
            zmq_close(r.pull);
        if (r.zctx)
            zmq_ctx_term(r.zctx);
        return -1;
    }
    pthread_create(&tq, NULL, s_raw_puller, &r);
    pthread_create(&tp, NULL, s_raw_pusher, &r);
    pthread_join(tp, NULL);
    pthread_join(tq, NULL);
    zmq_close(r.pull);
    zmq_ctx_term(r.zctx);

    res->mode = "raw";
    res->size = size;
    res->events = r.n;
    res->seconds = (double)(r.t_last - atomic_load(&r.t_first)) / 1e9;
    res->rate = res->seconds > 0 ? (double)r.got / res->seconds : 0;
    res->lost = r.n - r.got;
    res->ok = r.got == r.n;
    return 0;
}

/* ---- The broker ---------------------------------------------------- */

typedef struct {
    pid_t pid;
    char ingest[256];
    char pub[256];
    char query[256];
    char log[PATH_MAX + 32];
} broker;

static int
s_find_broker(const bench *bn, char *path, size_t n)
{
    if (bn->broker != NULL) {
        snprintf(path, n, "%s", bn->broker);
        return access(path, X_OK) == 0 ? 0 : -1;
    }
    char self[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0)
        return -1;
    self[k] = '\0';
    snprintf(path, n, "%s/snapbusd", dirname(self));
    return access(path, X_OK) == 0 ? 0 : -1;
}

/* Reads the ready file: "key=value" lines. It is written atomically, so
 * once it exists it is whole. */
static int
s_read_ready(const char *file, broker *br)
{
    FILE *f = fopen(file, "r");
    char line[512];
    int got = 0;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        const char *v = eq + 1;
        if (!strcmp(line, "ingest"))
            got |= 1, snprintf(br->ingest, sizeof br->ingest, "%s", v);
        else if (!strcmp(line, "pub"))
            got |= 2, snprintf(br->pub, sizeof br->pub, "%s", v);
        else if (!strcmp(line, "query"))
            got |= 4, snprintf(br->query, sizeof br->query, "%s", v);
    }
    fclose(f);
    return got == 7 ? 0 : -1;
}

static void
s_show_log(const char *log)
{
    FILE *f = fopen(log, "r");
    char line[512];
    int n = 0;

    if (f == NULL)
        return;
    fprintf(stderr, "--- %s ---\n", log);
    while (fgets(line, sizeof line, f) != NULL && n++ < 40)
        fputs(line, stderr);
    fclose(f);
}

static int
s_broker_start(bench *bn, broker *br)
{
    char path[PATH_MAX], ready[PATH_MAX + 32], data[32];
    const char *argv[24 + BENCH_MAX_EXTRA];
    int k = 0, run = ++bn->runs;

    memset(br, 0, sizeof *br);
    if (s_find_broker(bn, path, sizeof path) != 0) {
        fprintf(stderr, "snapbus bench: no snapbusd at '%s' (--broker PATH)\n",
                path);
        return -1;
    }
    snprintf(ready, sizeof ready, "%s/ready-%d", bn->dir, run);
    snprintf(br->log, sizeof br->log, "%s/broker-%d.log", bn->dir, run);
    argv[k++] = path;
    argv[k++] = "--ingest";
    argv[k++] = "tcp://127.0.0.1:*";
    argv[k++] = "--pub";
    argv[k++] = "tcp://127.0.0.1:*";
    argv[k++] = "--query";
    argv[k++] = "tcp://127.0.0.1:*";
    argv[k++] = "--ready-file";
    argv[k++] = ready;
    argv[k++] = "--default-delay-ms";
    argv[k++] = "0";
    /* Its own on-disk log (relative to the dir it runs in), so no run
     * starts by recovering the one before. */
    snprintf(data, sizeof data, "data-%d", run);
    argv[k++] = "--data-dir";
    argv[k++] = data;
    if (bn->curve_now) {
        argv[k++] = "--secret-key-file";
        argv[k++] = bn->key_file;
        argv[k++] = "--publisher-keys";
        argv[k++] = bn->list_file;
        argv[k++] = "--subscriber-keys";
        argv[k++] = bn->list_file;
    }
    for (int i = 0; i < bn->nextra; i++)
        argv[k++] = bn->extra[i];
    argv[k] = NULL;

    /* Opened before fork: the child only dup2s, chdirs and execs. */
    int logfd = open(br->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) {
        perror("snapbus bench: broker log");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("snapbus bench: fork");
        close(logfd);
        return -1;
    }
    if (pid == 0) {
        /* In the child only async-signal-safe calls until exec. */
        if (dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0 || chdir(bn->dir) != 0)
            _exit(127);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(logfd);
    br->pid = pid;
    /* Wait for the ready file, or for the broker to die trying. */
    for (int i = 0; i < 1000; i++) {
        int st;
        if (s_read_ready(ready, br) == 0)
            return 0;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "snapbus bench: snapbusd exited at start\n");
            s_show_log(br->log);
            br->pid = 0;
            return -1;
        }
        usleep(10000);
    }
    fprintf(stderr, "snapbus bench: snapbusd not ready after 10 s\n");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s_show_log(br->log);
    br->pid = 0;
    return -1;
}

static int
s_broker_stop(broker *br)
{
    int st = 0;

    if (br->pid <= 0)
        return 0;
    kill(br->pid, SIGTERM);
    for (int i = 0; i < 1500; i++) { /* 15 s to flush and exit */
        pid_t w = waitpid(br->pid, &st, WNOHANG);
        if (w == br->pid) {
            br->pid = 0;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "snapbus bench: snapbusd exit status %d\n", st);
                s_show_log(br->log);
                return -1;
            }
            return 0;
        }
        if (w < 0 && errno != EINTR)
            break;
        usleep(10000);
    }
    fprintf(stderr, "snapbus bench: snapbusd ignored SIGTERM; killing\n");
    kill(br->pid, SIGKILL);
    waitpid(br->pid, NULL, 0);
    br->pid = 0;
    return -1;
}

/* ---- Fire-and-forget through the broker ---------------------------- */

typedef struct {
    const bench *bn;
    const char *endpoint;
    uint64_t n;
    _Atomic uint64_t base;     /* UINT64_MAX until the warm-up is done */
    _Atomic uint64_t seen_max; /* highest seq seen, for the warm-up */
    _Atomic int pub_done;
    _Atomic int stop;
    _Atomic int ready; /* the subscriber socket exists */
    uint8_t *bitmap;
    uint64_t got; /* distinct events of the run */
    uint64_t dup;
    uint64_t stray; /* seqs beyond the run */
    uint64_t t_last;
    sb_subscriber_stats st;
} sub_run;

static void *
s_sub_thread(void *arg)
{
    sub_run *r = arg;
    sb_subscriber_opts so;
    sb_subscriber *s;

    sb_subscriber_opts_defaults(&so);
    so.curve = s_curve_now;
    so.endpoint = r->endpoint;
    so.query_endpoint = NULL;
    so.rcvhwm = 0; /* measure the broker, not our queue: take it all */
    if (sb_subscriber_new(&s, &so) != SB_OK ||
        sb_subscriber_subscribe(s, "") != SB_OK) {
        atomic_store(&r->ready, -1);
        return NULL;
    }
    atomic_store(&r->ready, 1);
    uint64_t last_progress = cli_now_ns();
    while (!atomic_load(&r->stop) && r->got < r->n) {
        sb_snapshot *b;
        sb_err e = sb_subscriber_recv(s, &b, 100);
        uint64_t now = cli_now_ns();
        if (e != SB_OK) {
            if (atomic_load(&r->pub_done) &&
                now - last_progress > (uint64_t)r->bn->stall_ms * 1000000u)
                break;
            continue;
        }
        uint64_t base = atomic_load(&r->base);
        size_t n = sb_snapshot_count(b);
        for (size_t i = 0; i < n; i++) {
            sb_snapshot_event ev;
            if (sb_snapshot_event_get(b, i, &ev) != SB_OK)
                continue;
            if (ev.seq > atomic_load(&r->seen_max))
                atomic_store(&r->seen_max, ev.seq);
            if (base == UINT64_MAX || ev.seq <= base)
                continue; /* warm-up */
            uint64_t k = ev.seq - base - 1;
            if (k >= r->n) {
                r->stray++;
                continue;
            }
            uint8_t bit = (uint8_t)(1u << (k & 7));
            if (r->bitmap[k >> 3] & bit) {
                r->dup++;
                continue;
            }
            r->bitmap[k >> 3] |= bit;
            r->got++;
            r->t_last = now;
            last_progress = now;
        }
        sb_snapshot_destroy(&b);
    }
    sb_subscriber_stats_get(s, &r->st);
    sb_subscriber_destroy(&s);
    return NULL;
}

typedef struct {
    uint64_t seq;
    sb_err err;
    int n;
} warm_ack;

static void
s_warm_ack(const sb_ack_info *a, void *ctx)
{
    warm_ack *w = ctx;
    w->seq = a->seq;
    w->err = a->err;
    w->n++;
}

/* Prints the first few runs of seqs the subscriber never saw, to tell a
 * dropped batch (a run) from a tail never flushed (one run at the end). */
static void
s_count_batch(sb_snapshot *b, void *ctx)
{
    uint64_t *n = ctx;

    *n += sb_snapshot_count(b);
    sb_snapshot_destroy(&b);
}

static void
s_show_missing(const sub_run *r, const broker *br)
{
    uint64_t base = atomic_load(&r->base);
    int runs = 0;

    for (uint64_t k = 0; k < r->n && runs < 5; k++) {
        if (r->bitmap[k >> 3] & (1u << (k & 7)))
            continue;
        uint64_t end = k;
        while (end + 1 < r->n &&
               !(r->bitmap[(end + 1) >> 3] & (1u << ((end + 1) & 7))))
            end++;
        /* Did the broker publish them? Its ring says. */
        sb_fetch_opts fo;
        sb_fetch_opts_defaults(&fo);
        fo.from_seq = base + 1 + k;
        fo.to_seq = base + 1 + end;
        fo.curve = s_curve_now;
        sb_fetch_info fi;
        uint64_t held = 0;
        sb_err fe = sb_fetch(br->query, &fo, s_count_batch, &held, &fi, 2000);
        fprintf(stderr,
                "snapbus bench: missing seq %" PRIu64 "..%" PRIu64
                " (broker: %s, last_seq=%" PRIu64 ", %" PRIu64
                " events in batches holding them)\n",
                base + 1 + k, base + 1 + end, sb_strerror(fe), fi.last_seq,
                held);
        runs++;
        k = end;
    }
    /* One acked probe: its seq tells whether the broker sequenced the
     * missing events (stuck inside it) or never got them. */
    sb_publisher_opts po;
    sb_publisher *p;
    warm_ack w = {0};
    sb_publisher_opts_defaults(&po);
    po.curve = s_curve_now;
    po.endpoint = br->ingest;
    po.timeout_ms = 2000;
    if (sb_publisher_new(&p, &po) != SB_OK)
        return;
    sb_publisher_on_ack(p, s_warm_ack, &w);
    sb_pub_event ev = {.aggregate = "bench.probe", .type = "probe"};
    if (sb_publisher_publish(p, &ev, 0, NULL) == SB_OK &&
        sb_publisher_wait_all(p, 2000) == SB_OK && w.n == 1)
        fprintf(stderr,
                "snapbus bench: probe event got seq %" PRIu64
                " (run ends at %" PRIu64 ")\n",
                w.seq, base + r->n);
    sb_publisher_destroy(&p);
}

/* Until the subscriber sees a warm-up event; returns its seq, 0 on
 * failure. */
static uint64_t
s_warm_up(const broker *br, sub_run *r)
{
    sb_publisher_opts po;
    sb_publisher *p;
    warm_ack w = {0};
    uint64_t seq = 0;

    sb_publisher_opts_defaults(&po);
    po.curve = s_curve_now;
    po.endpoint = br->ingest;
    po.ack = SB_ACK_SEQUENCED;
    po.timeout_ms = 5000;
    if (sb_publisher_new(&p, &po) != SB_OK)
        return 0;
    sb_publisher_on_ack(p, s_warm_ack, &w);
    sb_pub_event ev = {.aggregate = "bench.warmup", .type = "warmup"};
    for (int i = 0; i < 200 && seq == 0; i++) {
        w.n = 0;
        if (sb_publisher_publish(p, &ev, 0, NULL) != SB_OK ||
            sb_publisher_wait_all(p, 5000) != SB_OK || w.n != 1 ||
            w.err != SB_OK) {
            fprintf(stderr, "snapbus bench: warm-up publish failed: %s\n",
                    sb_strerror(w.n ? w.err : SB_ETIMEDOUT));
            break;
        }
        for (int k = 0; k < 20; k++) { /* up to 100 ms for it to arrive */
            if (atomic_load(&r->seen_max) >= w.seq) {
                seq = w.seq;
                break;
            }
            usleep(5000);
        }
    }
    sb_publisher_destroy(&p);
    return seq;
}

static void
s_fill_names(char names[][32], int n)
{
    for (int i = 0; i < n; i++)
        snprintf(names[i], 32, "bench.%d", i);
}

/* ---- Acked (sequenced) through the broker ---------------------------- */

typedef struct {
    uint64_t n;
    uint8_t *bitmap; /* tokens acked OK */
    uint64_t ok;
    uint64_t refused;
    uint64_t dup;
    sb_err first_err;
} ack_run;

static void
s_bench_ack(const sb_ack_info *a, void *ctx)
{
    ack_run *r = ctx;

    if (a->err != SB_OK) {
        if (r->refused++ == 0)
            r->first_err = a->err;
        return;
    }
    if (a->token == 0 || a->token > r->n) {
        r->dup++;
        return;
    }
    uint64_t k = a->token - 1;
    uint8_t bit = (uint8_t)(1u << (k & 7));
    if (r->bitmap[k >> 3] & bit) {
        r->dup++;
        return;
    }
    r->bitmap[k >> 3] |= bit;
    r->ok++;
}

static int
s_run_none(bench *bn, size_t size, result *res)
{
    broker br;
    sub_run r = {0};
    pthread_t ts;
    int rc = -1;
    char(*names)[32] = calloc((size_t)bn->aggregates, sizeof *names);
    char *payload = malloc(size ? size : 1);

    res->mode = "none";
    res->size = size;
    res->events = bn->events;
    r.bn = bn;
    r.n = bn->events;
    r.bitmap = calloc((size_t)(bn->events / 8 + 1), 1);
    atomic_store(&r.base, UINT64_MAX);
    if (names == NULL || payload == NULL || r.bitmap == NULL)
        goto out_free;
    s_fill_names(names, bn->aggregates);
    memset(payload, 'x', size);
    if (s_broker_start(bn, &br) != 0)
        goto out_free;
    r.endpoint = br.pub;
    pthread_create(&ts, NULL, s_sub_thread, &r);
    while (atomic_load(&r.ready) == 0)
        usleep(1000);
    uint64_t base = atomic_load(&r.ready) > 0 ? s_warm_up(&br, &r) : 0;
    if (base == 0) {
        fprintf(stderr, "snapbus bench: subscriber never saw the warm-up\n");
        atomic_store(&r.stop, 1);
        pthread_join(ts, NULL);
        s_broker_stop(&br);
        goto out_free;
    }
    atomic_store(&r.base, base);

    sb_publisher_opts po;
    sb_publisher *p = NULL;
    sb_publisher_opts_defaults(&po);
    po.curve = s_curve_now;
    po.endpoint = br.ingest;
    po.ack = SB_ACK_NONE;
    po.batch_events = bn->batch_events;
    po.batch_bytes = bn->batch_bytes;
    po.timeout_ms = 30000;
    po.producer_id = s_producer_now;
    ack_run refusals = {0};
    sb_err e = sb_publisher_new(&p, &po);
    uint64_t t0 = cli_now_ns();
    if (e == SB_OK) {
        sb_publisher_on_ack(p, s_bench_ack, &refusals);
        sb_pub_event ev = {
            .type = "bench", .payload = payload, .payload_len = size};
        for (uint64_t i = 0; i < bn->events && e == SB_OK; i++) {
            ev.aggregate = names[i % (uint64_t)bn->aggregates];
            e = sb_publisher_publish(p, &ev, 0, NULL);
        }
        if (e == SB_OK)
            e = sb_publisher_wait_all(p, po.timeout_ms);
    }
    if (e != SB_OK)
        fprintf(stderr, "snapbus bench: publish: %s\n", sb_strerror(e));
    atomic_store(&r.pub_done, 1);
    pthread_join(ts, NULL);
    if (p != NULL) {
        /* Refusals of fire-and-forget requests come back late, if at
         * all: by now every event has been through the broker. */
        (void)sb_publisher_poll(p, 100);
        sb_publisher_stats pst;
        sb_publisher_stats_get(p, &pst);
        if (pst.refused > 0)
            fprintf(stderr,
                    "snapbus bench: broker refused %" PRIu64
                    " events (first: %s)\n",
                    pst.refused, sb_strerror(refusals.first_err));
        if (pst.bad_replies > 0)
            fprintf(stderr, "snapbus bench: %" PRIu64 " bad replies\n",
                    pst.bad_replies);
        res->refused = pst.refused;
        sb_publisher_destroy(&p);
    }
    if (r.got < r.n)
        s_show_missing(&r, &br);
    if (s_broker_stop(&br) == 0 && e == SB_OK)
        rc = 0;

    res->seconds = r.got ? (double)(r.t_last - t0) / 1e9 : 0;
    res->rate = res->seconds > 0 ? (double)r.got / res->seconds : 0;
    res->lost = r.n - r.got > res->refused ? r.n - r.got - res->refused : 0;
    res->dup = r.dup + r.stray;
    res->ok = rc == 0 && r.got == r.n;
    if (r.st.malformed)
        fprintf(stderr, "snapbus bench: %" PRIu64 " malformed batches\n",
                r.st.malformed);
out_free:
    free(names);
    free(payload);
    free(r.bitmap);
    return rc;
}

static int
s_run_seq(bench *bn, size_t size, sb_ack ack, result *res)
{
    broker br;
    ack_run r = {0};
    int rc = -1;
    char(*names)[32] = calloc((size_t)bn->aggregates, sizeof *names);
    char *payload = malloc(size ? size : 1);

    res->mode = ack == SB_ACK_DURABLE ? "durable" : "sequenced";
    res->size = size;
    res->events = bn->events;
    r.n = bn->events;
    r.bitmap = calloc((size_t)(bn->events / 8 + 1), 1);
    if (names == NULL || payload == NULL || r.bitmap == NULL)
        goto out_free;
    s_fill_names(names, bn->aggregates);
    memset(payload, 'x', size);
    if (s_broker_start(bn, &br) != 0)
        goto out_free;

    sb_publisher_opts po;
    sb_publisher *p;
    sb_publisher_opts_defaults(&po);
    po.curve = s_curve_now;
    po.endpoint = br.ingest;
    po.ack = ack;
    po.window = bn->window;
    po.batch_events = bn->batch_events;
    po.batch_bytes = bn->batch_bytes;
    po.timeout_ms = 30000;
    po.producer_id = s_producer_now;
    po.resend = 0;
    sb_err e = sb_publisher_new(&p, &po);
    uint64_t t0 = cli_now_ns(), t1 = t0;
    if (e == SB_OK) {
        sb_publisher_on_ack(p, s_bench_ack, &r);
        sb_pub_event ev = {
            .type = "bench", .payload = payload, .payload_len = size};
        for (uint64_t i = 0; i < bn->events && e == SB_OK; i++) {
            ev.aggregate = names[i % (uint64_t)bn->aggregates];
            e = sb_publisher_publish(p, &ev, 0, NULL);
        }
        if (e == SB_OK)
            e = sb_publisher_wait_all(p, po.timeout_ms);
        t1 = cli_now_ns();
        sb_publisher_destroy(&p);
    }
    if (e != SB_OK)
        fprintf(stderr, "snapbus bench: publish: %s\n", sb_strerror(e));
    if (r.refused)
        fprintf(stderr, "snapbus bench: %" PRIu64 " refused (first: %s)\n",
                r.refused, sb_strerror(r.first_err));
    if (s_broker_stop(&br) == 0 && e == SB_OK)
        rc = 0;
    res->seconds = (double)(t1 - t0) / 1e9;
    res->rate = res->seconds > 0 ? (double)r.ok / res->seconds : 0;
    res->refused = r.refused;
    res->lost = r.n - r.ok - r.refused;
    res->dup = r.dup;
    res->ok = rc == 0 && r.ok == r.n;
out_free:
    free(names);
    free(payload);
    free(r.bitmap);
    return rc;
}

/* ---- Command ------------------------------------------------------- */

static void
s_help(FILE *f)
{
    fprintf(
        f,
        "usage: snapbus bench [OPTIONS]\n"
        "\n"
        "Measures events/s on loopback: raw ZeroMQ PUSH->PULL, then through\n"
        "a fresh snapbusd fire-and-forget (publisher -> broker -> subscriber)\n"
        "and acked 'sequenced' (publisher -> broker -> ack), per size.\n"
        "\n"
        "options:\n"
        "  -n, --events N        events per run (default 1000000)\n"
        "  -s, --sizes LIST      payload sizes, comma separated (default "
        "100,1000)\n"
        "  -w, --window W        requests in flight, acked run (default 64)\n"
        "  -b, --broker PATH     snapbusd to run (default: next to snapbus)\n"
        "  -A, --broker-arg ARG  extra snapbusd argument (repeatable)\n"
        "  -m, --modes LIST      of raw,none,sequenced,durable (default all)\n"
        "  -g, --aggregates K    aggregates, round-robin (default 16)\n"
        "  -E, --batch-events N  events per request (default 1000)\n"
        "  -B, --batch-bytes N   bytes per request (default 262144)\n"
        "  -k, --keep            keep the temp dir with the broker logs\n"
        "  -C, --curve           run each broker mode again with CURVE and\n"
        "                        show its rate over the plain run's\n"
        "  -P, --producer-ids    run each broker mode again with a producer\n"
        "                        id and seq on every event (de-duplication)\n"
        "                        and show its rate over the plain run's\n"
        "  -j, --json            print JSON instead of a table\n"
        "  -h, --help            this help\n"
        "\n"
        "exit codes: 0 every run delivered every event once, 1 a run lost\n"
        "or duplicated events, 2 usage, 3 a run failed (a broker did not\n"
        "start or answer).\n");
}

/* Fresh keys for the --curve runs, in the temp dir: the broker's secret
 * key file and one allowlist holding the one client key. */
static int
s_curve_setup(bench *bn)
{
    char sec[41], text[64];
    int fd, len;

    if (zmq_curve_keypair(s_curve_keys[0], sec) != 0 ||
        zmq_curve_keypair(s_curve_keys[1], s_curve_keys[2]) != 0) {
        fprintf(stderr, "snapbus bench: --curve: %s\n", zmq_strerror(errno));
        return -1;
    }
    snprintf(bn->key_file, sizeof bn->key_file, "%s/server.key", bn->dir);
    snprintf(bn->list_file, sizeof bn->list_file, "%s/clients.keys", bn->dir);
    len = snprintf(text, sizeof text, "%s\n", sec);
    fd = open(bn->key_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    explicit_bzero(sec, sizeof sec);
    if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) != 0) {
        perror("snapbus bench: --curve: server key");
        explicit_bzero(text, sizeof text);
        return -1;
    }
    explicit_bzero(text, sizeof text);
    len = snprintf(text, sizeof text, "%s\n", s_curve_keys[1]);
    fd = open(bn->list_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) != 0) {
        perror("snapbus bench: --curve: allowlist");
        return -1;
    }
    return 0;
}

static void
s_curve_use(bench *bn, int on)
{
    bn->curve_now = on;
    if (on) {
        s_curve_now.server_key = s_curve_keys[0];
        s_curve_now.public_key = s_curve_keys[1];
        s_curve_now.secret_key = s_curve_keys[2];
    } else {
        memset(&s_curve_now, 0, sizeof s_curve_now);
    }
}

static int
s_run_broker_mode(bench *bn, int mode, size_t size, result *r)
{
    memset(r, 0, sizeof *r);
    if (mode == MODE_NONE)
        return s_run_none(bn, size, r);
    return s_run_seq(bn, size,
                     mode == MODE_SEQ ? SB_ACK_SEQUENCED : SB_ACK_DURABLE, r);
}

static int
s_parse_sizes(bench *bn, const char *arg)
{
    char *copy = strdup(arg), *save = NULL;
    uint64_t v;

    if (copy == NULL)
        return -1;
    bn->nsizes = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (bn->nsizes == BENCH_MAX_SIZES || cli_parse_u64(t, &v) != 0 ||
            v > 64 * 1024 * 1024) {
            free(copy);
            return -1;
        }
        bn->sizes[bn->nsizes++] = (size_t)v;
    }
    free(copy);
    return bn->nsizes > 0 ? 0 : -1;
}

static int
s_parse_modes(bench *bn, const char *arg)
{
    char *copy = strdup(arg), *save = NULL;

    if (copy == NULL)
        return -1;
    bn->modes = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "raw"))
            bn->modes |= MODE_RAW;
        else if (!strcmp(t, "none"))
            bn->modes |= MODE_NONE;
        else if (!strcmp(t, "sequenced"))
            bn->modes |= MODE_SEQ;
        else if (!strcmp(t, "durable"))
            bn->modes |= MODE_DURABLE;
        else {
            free(copy);
            return -1;
        }
    }
    free(copy);
    return bn->modes ? 0 : -1;
}

static void
s_print(const bench *bn, const result *res, int n)
{
    if (bn->json) {
        printf("{\"events\":%" PRIu64 ",\"window\":%u,\"aggregates\":%d,"
               "\"results\":[",
               bn->events, bn->window, bn->aggregates);
        for (int i = 0; i < n; i++) {
            const result *r = &res[i];
            printf("%s\n {\"mode\":\"%s\",\"size\":%zu,\"events\":%" PRIu64
                   ",\"seconds\":%.6f,\"rate\":%.0f,\"ratio\":%.4f,"
                   "\"lost\":%" PRIu64 ",\"dup\":%" PRIu64
                   ",\"refused\":%" PRIu64 ",\"ok\":%s",
                   i ? "," : "", r->mode, r->size, r->events, r->seconds,
                   r->rate, r->ratio, r->lost, r->dup, r->refused,
                   r->ok ? "true" : "false");
            if (r->vs_plain > 0)
                printf(",\"vs_plain\":%.4f", r->vs_plain);
            printf("}");
        }
        printf("\n]}\n");
        return;
    }
    printf("%-16s %7s %10s %14s %8s %10s %8s %8s%s\n", "mode", "size",
           "events", "rate (ev/s)", "vs raw", "lost", "dup", "refused",
           bn->curve || bn->pids ? "  vs plain" : "");
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        char ratio[16] = "-";
        if (r->ratio > 0)
            snprintf(ratio, sizeof ratio, "%.2f", r->ratio);
        char vs[24] = "";
        if (r->vs_plain > 0)
            snprintf(vs, sizeof vs, "  %8.2f", r->vs_plain);
        printf("%-16s %7zu %10" PRIu64 " %14.0f %8s %10" PRIu64 " %8" PRIu64
               " %8" PRIu64 "%s%s\n",
               r->mode, r->size, r->events, r->rate, ratio, r->lost, r->dup,
               r->refused, vs, r->ok ? "" : "  (incomplete)");
    }
}

static int
s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

/* Removes the temp dir and whatever the brokers left in it (they ran with
 * it as their working directory). It is ours: mkdtemp made it. */
static int
s_rmdir(const char *dir)
{
    return nftw(dir, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int
cli_bench(int argc, char **argv)
{
    static const struct option lo[] = {
        {"events", required_argument, NULL, 'n'},
        {"sizes", required_argument, NULL, 's'},
        {"window", required_argument, NULL, 'w'},
        {"broker", required_argument, NULL, 'b'},
        {"broker-arg", required_argument, NULL, 'A'},
        {"modes", required_argument, NULL, 'm'},
        {"aggregates", required_argument, NULL, 'g'},
        {"batch-events", required_argument, NULL, 'E'},
        {"batch-bytes", required_argument, NULL, 'B'},
        {"keep", no_argument, NULL, 'k'},
        {"curve", no_argument, NULL, 'C'},
        {"producer-ids", no_argument, NULL, 'P'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    bench bn = {.events = 1000000,
                .sizes = {100, 1000},
                .nsizes = 2,
                .window = 64,
                .batch_events = 1000,
                .batch_bytes = 256 * 1024,
                .aggregates = 16,
                .stall_ms = 5000,
                .modes = MODE_RAW | MODE_NONE | MODE_SEQ | MODE_DURABLE};
    int c, v;
    uint64_t u;

    while ((c = getopt_long(argc, argv, "n:s:w:b:A:m:g:E:B:kCPjh", lo, NULL)) !=
           -1) {
        int bad = 0;
        switch (c) {
        case 'n':
            bad = cli_parse_u64(optarg, &bn.events) != 0 || bn.events == 0 ||
                  bn.events > ((uint64_t)1 << 36);
            break;
        case 's':
            bad = s_parse_sizes(&bn, optarg) != 0;
            break;
        case 'w':
            bad = cli_parse_int(optarg, 1, 1 << 20, &v) != 0;
            bn.window = (uint32_t)v;
            break;
        case 'b':
            bn.broker = optarg;
            break;
        case 'A':
            bad = bn.nextra == BENCH_MAX_EXTRA;
            if (!bad)
                bn.extra[bn.nextra++] = optarg;
            break;
        case 'm':
            bad = s_parse_modes(&bn, optarg) != 0;
            break;
        case 'g':
            bad = cli_parse_int(optarg, 1, 100000, &bn.aggregates);
            break;
        case 'E':
            bad = cli_parse_u64(optarg, &u) != 0 || u == 0 || u > UINT32_MAX;
            bn.batch_events = (uint32_t)u;
            break;
        case 'B':
            bad = cli_parse_u64(optarg, &u) != 0 || u == 0 || u > INT32_MAX;
            bn.batch_bytes = (uint32_t)u;
            break;
        case 'k':
            bn.keep = 1;
            break;
        case 'C':
            bn.curve = 1;
            break;
        case 'P':
            bn.pids = 1;
            break;
        case 'j':
            bn.json = 1;
            break;
        case 'h':
            s_help(stdout);
            return CLI_OK;
        default:
            s_help(stderr);
            return CLI_USAGE;
        }
        if (bad) {
            fprintf(stderr, "snapbus bench: bad value for option -%c\n", c);
            return CLI_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "snapbus bench: unexpected argument '%s'\n",
                argv[optind]);
        return CLI_USAGE;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(bn.dir, sizeof bn.dir, "%s/snapbus-bench-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if ((bn.modes & (MODE_NONE | MODE_SEQ | MODE_DURABLE)) &&
        mkdtemp(bn.dir) == NULL) {
        perror("snapbus bench: mkdtemp");
        return CLI_FAILED;
    }
    /* A subscriber that stops reading must not kill us through SIGPIPE
     * on a pipe we print to; and a broker that dies is seen via waitpid. */
    signal(SIGPIPE, SIG_IGN);
    if (bn.curve && !(bn.modes & (MODE_NONE | MODE_SEQ | MODE_DURABLE)))
        bn.curve = 0; /* raw ZeroMQ only: nothing to compare */
    if (bn.curve && s_curve_setup(&bn) != 0) {
        s_rmdir(bn.dir);
        return CLI_FAILED;
    }

    result res[10 * BENCH_MAX_SIZES];
    int n = 0, failed = 0, lossy = 0;
    for (int i = 0; i < bn.nsizes; i++) {
        size_t size = bn.sizes[i];
        double raw = 0;
        if (bn.modes & MODE_RAW) {
            memset(&res[n], 0, sizeof res[n]);
            if (s_run_raw(&bn, size, &res[n]) != 0)
                failed = 1;
            raw = res[n].rate;
            res[n].ratio = raw > 0 ? 1.0 : 0;
            n++;
        }
        static const int broker_modes[] = {MODE_NONE, MODE_SEQ, MODE_DURABLE};
        static const char *const curve_names[] = {
            "none+curve", "sequenced+curve", "durable+curve"};
        for (int m = 0; m < 3; m++) {
            if (!(bn.modes & broker_modes[m]))
                continue;
            /* With --curve, the CURVE run right after the plain one, so
             * both see the machine in the same state. */
            for (int cv = 0; cv <= bn.curve; cv++) {
                s_curve_use(&bn, cv);
                if (s_run_broker_mode(&bn, broker_modes[m], size, &res[n]) != 0)
                    failed = 1;
                res[n].ratio = raw > 0 ? res[n].rate / raw : 0;
                if (cv) {
                    res[n].mode = curve_names[m];
                    res[n].vs_plain =
                        res[n - 1].rate > 0 ? res[n].rate / res[n - 1].rate : 0;
                }
                n++;
            }
            s_curve_use(&bn, 0);
            if (bn.pids) {
                static const char *const pid_names[] = {
                    "none+pid", "sequenced+pid", "durable+pid"};
                int plain = n - 1 - bn.curve;
                s_producer_now = "bench-producer";
                if (s_run_broker_mode(&bn, broker_modes[m], size, &res[n]) != 0)
                    failed = 1;
                s_producer_now = NULL;
                res[n].ratio = raw > 0 ? res[n].rate / raw : 0;
                res[n].mode = pid_names[m];
                res[n].vs_plain =
                    res[plain].rate > 0 ? res[n].rate / res[plain].rate : 0;
                n++;
            }
        }
        if (!bn.json) {
            /* Progress on stderr: a full run takes a while. */
            fprintf(stderr, "snapbus bench: size %zu done\n", size);
        }
    }
    for (int i = 0; i < n; i++)
        lossy |= res[i].lost > 0 || res[i].dup > 0 || res[i].refused > 0;
    s_print(&bn, res, n);
    fflush(stdout);
    if (bn.modes & (MODE_NONE | MODE_SEQ | MODE_DURABLE)) {
        if (bn.keep)
            fprintf(stderr, "snapbus bench: broker logs kept in %s\n", bn.dir);
        else if (s_rmdir(bn.dir) != 0)
            fprintf(stderr, "snapbus bench: could not remove %s\n", bn.dir);
    }
    return failed ? CLI_FAILED : lossy ? CLI_REFUSED : CLI_OK;
}
