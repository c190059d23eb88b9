/* snapbus bench: the modes that go through a broker (cli_bench.h). Each
 * run gets a fresh snapbusd (delay 0), so retention from one run never
 * weighs on the next, started with --ready-file in the bench's temp dir
 * and stopped with SIGTERM + waitpid; its output goes to broker-K.log
 * there (--keep leaves the dir).
 *
 * Throughput, N events per run, aggregates round-robin:
 *   none        publisher (ack none, this thread) -> broker -> a subscriber
 *               thread with gap fill over the query socket (the library's
 *               lossless sb_subscriber), subscribed to everything; it
 *               keeps a bitmap of the seqs it saw to count lost and
 *               duplicate events. rate = N / (first publish .. last event
 *               received). Must lose nothing.
 *   none-lossy  the same with a PUB-only subscriber (no query socket): the
 *               rate of the PUB path alone; batches the PUB socket drops at
 *               its high-water mark are counted as lost, by design.
 *   sequenced, published, durable
 *               acked publisher with a window of W requests; rate = N /
 *               (first publish .. last ack). Lost = events without an OK
 *               ack, dup = tokens acked twice. durable acks wait for the
 *               fdatasync that covers them (group commit; pass
 *               --broker-arg --sync --broker-arg none to compare).
 * Latency, one event per request and one request at a time, over
 * --lat-events events, p50/p99/p99.9 of:
 *   lat-sequenced, lat-published, lat-durable
 *               publish .. its ack, at that level.
 *   lat-deliver publish (ack none) .. the lossless subscriber, on this
 *               same thread (one clock), returns the batch holding it.
 *
 * Broker CPU: the CPU time of snapbusd, all its threads (utime + stime,
 * read from /proc, see s_broker_cpu_ns), over the measured part of the
 * run only, divided by its events.
 *
 * Seqs of a throughput run. The subscriber must be connected before the
 * run, and must know which seqs the run gets. A warm-up publisher sends
 * single acked events to "bench.warmup" until the subscriber has seen
 * one: then the subscription is live, and as the warm-up ack came before
 * the run starts and nobody else publishes, the run's events get exactly
 * the seqs base+1 .. base+N, base = the last warm-up seq.
 *
 * --curve and --producer-ids (cli_bench.c) reach the clients here through
 * bn->curve_opts and bn->producer_now. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "cli_bench.h"

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
    int k = 0, run = ++bn->brokers;

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
    for (int i = 0; i < 3000; i++) {
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
    fprintf(stderr, "snapbus bench: snapbusd not ready after 30 s\n");
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
    for (int i = 0; i < 3000; i++) { /* 30 s to flush and exit */
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

/* CPU time snapbusd has used so far, all threads, in ns; 0 if unknown.
 * The sum of each thread's run time in /proc/PID/task/TID/schedstat (ns)
 * where the kernel keeps it; else utime + stime of /proc/PID/stat, the
 * same time in clock ticks (10 ms: coarse for a short run). A thread that
 * exits mid-run would take its time out of the first sum: the broker's
 * threads live as long as it does. */
static uint64_t
s_broker_cpu_ns(const broker *br)
{
    char path[64], buf[1024];
    unsigned long long ut = 0, stime = 0, sum = 0, one;
    long hz = sysconf(_SC_CLK_TCK);
    int threads = 0;

    snprintf(path, sizeof path, "/proc/%d/task", (int)br->pid);
    DIR *d = opendir(path);
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL) {
        char file[sizeof path + sizeof de->d_name + 16];
        if (de->d_name[0] == '.')
            continue;
        snprintf(file, sizeof file, "%s/%s/schedstat", path, de->d_name);
        FILE *f = fopen(file, "r");
        if (f == NULL)
            continue;
        if (fscanf(f, "%llu", &one) == 1)
            sum += one, threads++;
        fclose(f);
    }
    if (d != NULL)
        closedir(d);
    if (threads > 0)
        return sum;
    /* Fields 14 and 15 (utime, stime) come 12 and 13 after the ')' that
     * ends the command name. */
    snprintf(path, sizeof path, "/proc/%d/stat", (int)br->pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL || hz <= 0 ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &stime) != 2)
        return 0;
    return (ut + stime) * 1000000000ull / (unsigned long long)hz;
}

static void
s_cpu(result *res, uint64_t before, uint64_t after, uint64_t events)
{
    res->cpu_us = before > 0 && after >= before && events > 0
                      ? (double)(after - before) / 1e3 / (double)events
                      : -1;
}

static void
s_fill_names(char names[][32], int n)
{
    for (int i = 0; i < n; i++)
        snprintf(names[i], 32, "bench.%d", i);
}

/* ---- Fire-and-forget through the broker ---------------------------- */

typedef struct {
    const bench *bn;
    const char *endpoint;
    const char *query; /* NULL: PUB only */
    uint64_t n;
    _Atomic uint64_t base;     /* UINT64_MAX until the warm-up is done */
    _Atomic uint64_t seen_max; /* highest seq seen, for the warm-up */
    _Atomic int pub_done;
    _Atomic int stop;
    _Atomic int ready; /* the subscriber socket exists */
    uint8_t *bitmap;
    _Atomic uint64_t got; /* distinct events of the run */
    uint64_t dup;
    uint64_t stray;  /* seqs beyond the run */
    uint64_t losses; /* SB_ENOENT from recv */
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
    so.curve = r->bn->curve_opts;
    so.endpoint = r->endpoint;
    so.query_endpoint = r->query;
    /* The end of the run is only known once the last batch is in; a tail
     * the PUB dropped shows at the next probe, so probe often. */
    so.probe_ms = 100;
    so.rcvhwm = 0; /* measure the broker, not our queue: take it all */
    if (sb_subscriber_new(&s, &so) != SB_OK ||
        sb_subscriber_subscribe(s, "") != SB_OK) {
        atomic_store(&r->ready, -1);
        return NULL;
    }
    atomic_store(&r->ready, 1);
    uint64_t last_progress = cli_now_ns();
    while (!atomic_load(&r->stop) && atomic_load(&r->got) < r->n) {
        sb_snapshot *b;
        sb_err e = sb_subscriber_recv(s, &b, 100);
        uint64_t now = cli_now_ns();
        if (e == SB_ENOENT)
            r->losses++;
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
            atomic_fetch_add(&r->got, 1);
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

static void
s_count_batch(sb_snapshot *b, void *ctx)
{
    uint64_t *n = ctx;

    *n += sb_snapshot_count(b);
    sb_snapshot_destroy(&b);
}

/* Prints the first few runs of seqs the subscriber never saw, to tell a
 * dropped batch (a run) from a tail never flushed (one run at the end). */
static void
s_show_missing(const bench *bn, const sub_run *r, const broker *br)
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
        /* Did the broker publish them? Its retention says. */
        sb_fetch_opts fo;
        sb_fetch_opts_defaults(&fo);
        fo.from_seq = base + 1 + k;
        fo.to_seq = base + 1 + end;
        fo.curve = bn->curve_opts;
        sb_fetch_info fi;
        uint64_t held = 0;
        sb_err fe = sb_fetch(br->query, &fo, s_count_batch, &held, &fi, 2000);
        fprintf(stderr,
                "snapbus bench: missing seq %" PRIu64 "..%" PRIu64
                " (broker: %s, %" PRIu64
                " events in the first page of batches holding them)\n",
                base + 1 + k, base + 1 + end, sb_strerror(fe), held);
        runs++;
        k = end;
    }
    /* One acked probe: its seq tells whether the broker sequenced the
     * missing events (stuck inside it) or never got them. */
    sb_publisher_opts po;
    sb_publisher *p;
    warm_ack w = {0};
    sb_publisher_opts_defaults(&po);
    po.curve = bn->curve_opts;
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
s_warm_up(const bench *bn, const broker *br, sub_run *r)
{
    sb_publisher_opts po;
    sb_publisher *p;
    warm_ack w = {0};
    uint64_t seq = 0;

    sb_publisher_opts_defaults(&po);
    po.curve = bn->curve_opts;
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

/* ---- Acks ---------------------------------------------------------- */

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

/* What every run of this file needs: names, a payload, a bitmap of n
 * events, and the broker. */
typedef struct {
    broker br;
    char (*names)[32];
    char *payload;
    uint8_t *bitmap;
} run_env;

static int
s_env_open(bench *bn, run_env *env, size_t size, int aggs, uint64_t n)
{
    memset(env, 0, sizeof *env);
    env->names = calloc((size_t)aggs, sizeof *env->names);
    env->payload = malloc(size ? size : 1);
    env->bitmap = calloc((size_t)(n / 8 + 1), 1);
    if (env->names == NULL || env->payload == NULL || env->bitmap == NULL)
        return -1;
    s_fill_names(env->names, aggs);
    memset(env->payload, 'x', size);
    return s_broker_start(bn, &env->br);
}

static void
s_env_close(run_env *env)
{
    free(env->names);
    free(env->payload);
    free(env->bitmap);
}

static int
s_run_none(bench *bn, size_t size, int aggs, int lossless, result *res)
{
    run_env env;
    sub_run r = {0};
    pthread_t ts;
    int rc = -1;

    res->mode = lossless ? "none" : "none-lossy";
    res->lossy = !lossless;
    r.bn = bn;
    r.n = bn->events;
    atomic_store(&r.base, UINT64_MAX);
    if (s_env_open(bn, &env, size, aggs, r.n) != 0)
        goto out_free;
    r.bitmap = env.bitmap;
    r.endpoint = env.br.pub;
    r.query = lossless ? env.br.query : NULL;
    pthread_create(&ts, NULL, s_sub_thread, &r);
    while (atomic_load(&r.ready) == 0)
        usleep(1000);
    uint64_t base = atomic_load(&r.ready) > 0 ? s_warm_up(bn, &env.br, &r) : 0;
    if (base == 0) {
        fprintf(stderr, "snapbus bench: subscriber never saw the warm-up\n");
        atomic_store(&r.stop, 1);
        pthread_join(ts, NULL);
        s_broker_stop(&env.br);
        goto out_free;
    }
    atomic_store(&r.base, base);

    sb_publisher_opts po;
    sb_publisher *p = NULL;
    sb_publisher_opts_defaults(&po);
    po.curve = bn->curve_opts;
    po.endpoint = env.br.ingest;
    po.ack = SB_ACK_NONE;
    po.batch_events = bn->batch_events;
    po.batch_bytes = bn->batch_bytes;
    po.timeout_ms = 30000;
    po.producer_id = bn->producer_now;
    ack_run refusals = {0};
    sb_err e = sb_publisher_new(&p, &po);
    uint64_t cpu0 = s_broker_cpu_ns(&env.br);
    uint64_t t0 = cli_now_ns();
    if (e == SB_OK) {
        sb_publisher_on_ack(p, s_bench_ack, &refusals);
        sb_pub_event ev = {
            .type = "bench", .payload = env.payload, .payload_len = size};
        for (uint64_t i = 0; i < bn->events && e == SB_OK; i++) {
            ev.aggregate = env.names[i % (uint64_t)aggs];
            e = sb_publisher_publish(p, &ev, 0, NULL);
            if ((i & 65535) == 0)
                cli_bench_progress(atomic_load(&r.got), r.n);
        }
        if (e == SB_OK)
            e = sb_publisher_wait_all(p, po.timeout_ms);
    }
    if (e != SB_OK)
        fprintf(stderr, "snapbus bench: publish: %s\n", sb_strerror(e));
    atomic_store(&r.pub_done, 1);
    while (atomic_load(&r.got) < r.n) { /* the subscriber ends by itself */
        struct timespec ts50 = {0, 50 * 1000000};
        if (pthread_tryjoin_np(ts, NULL) == 0)
            goto joined;
        cli_bench_progress(atomic_load(&r.got), r.n);
        nanosleep(&ts50, NULL);
    }
    pthread_join(ts, NULL);
joined:;
    uint64_t cpu1 = s_broker_cpu_ns(&env.br);
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
    uint64_t got = atomic_load(&r.got);
    if (got < r.n && lossless)
        s_show_missing(bn, &r, &env.br);
    if (r.losses > 0)
        fprintf(stderr,
                "snapbus bench: the subscriber reported %" PRIu64
                " losses (out of the broker's retention)\n",
                r.losses);
    if (s_broker_stop(&env.br) == 0 && e == SB_OK)
        rc = 0;

    res->seconds = got ? (double)(r.t_last - t0) / 1e9 : 0;
    res->rate = res->seconds > 0 ? (double)got / res->seconds : 0;
    res->lost = r.n - got > res->refused ? r.n - got - res->refused : 0;
    res->dup = r.dup + r.stray;
    res->ok = rc == 0 && (got == r.n || !lossless);
    s_cpu(res, cpu0, cpu1, got);
    if (r.st.malformed)
        fprintf(stderr, "snapbus bench: %" PRIu64 " malformed batches\n",
                r.st.malformed);
out_free:
    s_env_close(&env);
    return rc;
}

static const char *
s_ack_name(sb_ack ack)
{
    return ack == SB_ACK_DURABLE     ? "durable"
           : ack == SB_ACK_PUBLISHED ? "published"
                                     : "sequenced";
}

static int
s_run_acked(bench *bn, size_t size, int aggs, sb_ack ack, result *res)
{
    run_env env;
    ack_run r = {0};
    int rc = -1;

    res->mode = s_ack_name(ack);
    r.n = bn->events;
    if (s_env_open(bn, &env, size, aggs, r.n) != 0)
        goto out_free;
    r.bitmap = env.bitmap;

    sb_publisher_opts po;
    sb_publisher *p;
    sb_publisher_opts_defaults(&po);
    po.curve = bn->curve_opts;
    po.endpoint = env.br.ingest;
    po.ack = ack;
    po.window = bn->window;
    po.batch_events = bn->batch_events;
    po.batch_bytes = bn->batch_bytes;
    po.timeout_ms = 30000;
    po.producer_id = bn->producer_now;
    po.resend = 0;
    sb_err e = sb_publisher_new(&p, &po);
    uint64_t cpu0 = s_broker_cpu_ns(&env.br);
    uint64_t t0 = cli_now_ns(), t1 = t0;
    if (e == SB_OK) {
        sb_publisher_on_ack(p, s_bench_ack, &r);
        sb_pub_event ev = {
            .type = "bench", .payload = env.payload, .payload_len = size};
        for (uint64_t i = 0; i < bn->events && e == SB_OK; i++) {
            ev.aggregate = env.names[i % (uint64_t)aggs];
            e = sb_publisher_publish(p, &ev, 0, NULL);
            if ((i & 65535) == 0)
                cli_bench_progress(r.ok, r.n);
        }
        if (e == SB_OK)
            e = sb_publisher_wait_all(p, po.timeout_ms);
        t1 = cli_now_ns();
        sb_publisher_destroy(&p);
    }
    uint64_t cpu1 = s_broker_cpu_ns(&env.br);
    if (e != SB_OK)
        fprintf(stderr, "snapbus bench: publish: %s\n", sb_strerror(e));
    if (r.refused)
        fprintf(stderr, "snapbus bench: %" PRIu64 " refused (first: %s)\n",
                r.refused, sb_strerror(r.first_err));
    if (s_broker_stop(&env.br) == 0 && e == SB_OK)
        rc = 0;
    res->seconds = (double)(t1 - t0) / 1e9;
    res->rate = res->seconds > 0 ? (double)r.ok / res->seconds : 0;
    res->refused = r.refused;
    res->lost = r.n - r.ok - r.refused;
    res->dup = r.dup;
    res->ok = rc == 0 && r.ok == r.n;
    s_cpu(res, cpu0, cpu1, r.ok);
out_free:
    s_env_close(&env);
    return rc;
}

/* ---- Latency: one event at a time ------------------------------------ */

/* Acked at one level, window 1: each sample is publish .. its ack. */
static int
s_run_lat_acked(bench *bn, size_t size, int aggs, sb_ack ack, result *res)
{
    static const char *const names[] = {"", "lat-sequenced", "lat-durable",
                                        "lat-published"};
    run_env env;
    ack_run r = {0};
    uint64_t n = bn->lat_events, warm = n / 10 < 100 ? n / 10 : 100;
    uint64_t *ns = malloc(n * sizeof *ns), got = 0;
    sb_publisher *p = NULL;
    int rc = -1;

    res->mode = names[ack];
    r.n = n + warm;
    if (ns == NULL || s_env_open(bn, &env, size, aggs, r.n) != 0)
        goto out_free;
    r.bitmap = env.bitmap;

    sb_publisher_opts po;
    sb_publisher_opts_defaults(&po);
    po.endpoint = env.br.ingest;
    po.ack = ack;
    po.window = 1;
    po.batch_events = 1;
    po.timeout_ms = 30000;
    po.resend = 0;
    sb_err e = sb_publisher_new(&p, &po);
    sb_pub_event ev = {
        .type = "bench", .payload = env.payload, .payload_len = size};
    uint64_t cpu0 = 0, t0 = 0;
    if (e == SB_OK)
        sb_publisher_on_ack(p, s_bench_ack, &r);
    for (uint64_t i = 0; e == SB_OK && i < n + warm; i++) {
        if (i == warm) {
            cpu0 = s_broker_cpu_ns(&env.br);
            t0 = cli_now_ns();
        }
        ev.aggregate = env.names[i % (uint64_t)aggs];
        uint64_t a = cli_now_ns();
        e = sb_publisher_publish(p, &ev, 0, NULL);
        if (e == SB_OK)
            e = sb_publisher_wait_all(p, po.timeout_ms);
        if (e == SB_OK && i >= warm)
            ns[got++] = cli_now_ns() - a;
        if ((i & 255) == 0)
            cli_bench_progress(i, n + warm);
    }
    uint64_t t1 = cli_now_ns(), cpu1 = s_broker_cpu_ns(&env.br);
    sb_publisher_destroy(&p);
    if (e != SB_OK)
        fprintf(stderr, "snapbus bench: %s: publish: %s\n", res->mode,
                sb_strerror(e));
    if (r.refused)
        fprintf(stderr, "snapbus bench: %" PRIu64 " refused (first: %s)\n",
                r.refused, sb_strerror(r.first_err));
    if (s_broker_stop(&env.br) == 0 && e == SB_OK)
        rc = 0;
    res->events = n;
    res->seconds = (double)(t1 - t0) / 1e9;
    res->refused = r.refused;
    res->lost = r.n - r.ok - r.refused;
    res->dup = r.dup;
    res->ok = rc == 0 && r.ok == r.n;
    cli_bench_latency(res, ns, got);
    s_cpu(res, cpu0, cpu1, got);
out_free:
    s_env_close(&env);
    free(ns);
    return rc;
}

/* Publish (ack none) .. the lossless subscriber returns the batch: both
 * on this thread, so one clock and no hand-over of ours in between. With
 * delay 0 each one-event request is a batch of its own. */
static int
s_run_lat_deliver(bench *bn, size_t size, int aggs, result *res)
{
    run_env env;
    uint64_t n = bn->lat_events, warm = n / 10 < 100 ? n / 10 : 100;
    uint64_t *ns = malloc(n * sizeof *ns), got = 0, seen = 0;
    sb_publisher *p = NULL;
    sb_subscriber *s = NULL;
    int rc = -1, timeout = bn->stall_ms;
    sb_err e;

    res->mode = "lat-deliver";
    if (ns == NULL || s_env_open(bn, &env, size, aggs, 1) != 0)
        goto out_free;

    sb_subscriber_opts so;
    sb_subscriber_opts_defaults(&so);
    so.endpoint = env.br.pub;
    so.query_endpoint = env.br.query;
    sb_publisher_opts po;
    sb_publisher_opts_defaults(&po);
    po.endpoint = env.br.ingest;
    po.ack = SB_ACK_NONE;
    po.batch_events = 1;
    po.timeout_ms = 30000;
    if ((e = sb_subscriber_new(&s, &so)) != SB_OK ||
        (e = sb_subscriber_subscribe(s, "")) != SB_OK ||
        (e = sb_subscriber_start(s, 10000)) != SB_OK ||
        (e = sb_publisher_new(&p, &po)) != SB_OK) {
        fprintf(stderr, "snapbus bench: lat-deliver: %s\n", sb_strerror(e));
        s_broker_stop(&env.br);
        goto out_free;
    }
    sb_pub_event ev = {
        .type = "bench", .payload = env.payload, .payload_len = size};
    uint64_t cpu0 = 0, t0 = 0, i;
    for (i = 0; i < n + warm; i++) {
        if (i == warm) {
            cpu0 = s_broker_cpu_ns(&env.br);
            t0 = cli_now_ns();
        }
        ev.aggregate = env.names[i % (uint64_t)aggs];
        uint64_t a = cli_now_ns();
        if ((e = sb_publisher_publish(p, &ev, 0, NULL)) != SB_OK ||
            (e = sb_publisher_flush(p, 0)) != SB_OK)
            break;
        /* The subscription was live before the first publish (start),
         * and this subscriber fills gaps: every event arrives, in order
         * per aggregate, one batch each. */
        while (seen <= i) {
            sb_snapshot *b;
            e = sb_subscriber_recv(s, &b, timeout);
            if (e == SB_OK) {
                seen += sb_snapshot_count(b);
                sb_snapshot_destroy(&b);
            } else if (e != SB_ERESTART) {
                break;
            }
        }
        if (seen <= i)
            break;
        if (i >= warm)
            ns[got++] = cli_now_ns() - a;
        if ((i & 255) == 0)
            cli_bench_progress(i, n + warm);
    }
    uint64_t t1 = cli_now_ns(), cpu1 = s_broker_cpu_ns(&env.br);
    if (i < n + warm)
        fprintf(stderr,
                "snapbus bench: lat-deliver: event %" PRIu64
                " not delivered: %s\n",
                i + 1, sb_strerror(e));
    sb_publisher_stats pst;
    sb_publisher_stats_get(p, &pst);
    res->refused = pst.refused;
    sb_publisher_destroy(&p);
    sb_subscriber_destroy(&s);
    if (s_broker_stop(&env.br) == 0 && i == n + warm)
        rc = 0;
    res->events = n;
    res->seconds = (double)(t1 - t0) / 1e9;
    res->lost = n - got;
    res->ok = rc == 0 && got == n;
    cli_bench_latency(res, ns, got);
    s_cpu(res, cpu0, cpu1, got);
out_free:
    s_env_close(&env);
    free(ns);
    return rc;
}

int
cli_bench_broker_mode(bench *bn, int mode, size_t size, int aggs, result *res)
{
    res->size = size;
    res->aggregates = aggs;
    res->events = bn->events;
    res->cpu_us = -1;
    switch (mode) {
    case MODE_NONE:
        return s_run_none(bn, size, aggs, 1, res);
    case MODE_NONE_LOSSY:
        return s_run_none(bn, size, aggs, 0, res);
    case MODE_SEQ:
        return s_run_acked(bn, size, aggs, SB_ACK_SEQUENCED, res);
    case MODE_PUBD:
        return s_run_acked(bn, size, aggs, SB_ACK_PUBLISHED, res);
    case MODE_DURABLE:
        return s_run_acked(bn, size, aggs, SB_ACK_DURABLE, res);
    case MODE_LAT_SEQ:
        return s_run_lat_acked(bn, size, aggs, SB_ACK_SEQUENCED, res);
    case MODE_LAT_PUBD:
        return s_run_lat_acked(bn, size, aggs, SB_ACK_PUBLISHED, res);
    case MODE_LAT_DURABLE:
        return s_run_lat_acked(bn, size, aggs, SB_ACK_DURABLE, res);
    case MODE_LAT_DELIVER:
        return s_run_lat_deliver(bn, size, aggs, res);
    }
    return -1;
}
