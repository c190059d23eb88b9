/* The burst the broker exists for (issue: lossless under any burst).
 *
 * `snapbus replay` publishes N events of 100 bytes (a file made by
 * `snapbus record --generate`) as fast as the broker takes them, while
 * three lossless subscribers, each a child process running a checker:
 *   1. subscribes live before the burst, and is stopped (SIGSTOP) for
 *      STOP_MS early in the burst, then resumed (SIGCONT);
 *   2. subscribes live before the burst and keeps up as it can;
 *   3. joins halfway (when subscriber 2 has half the events), resuming
 *      from seq 1.
 * A checker counts and compares, it does not read logs: a bitmap of seqs
 * (each of 1..N exactly once), and per aggregate the aggregate_seq of each
 * event (each aggregate's events in order, without a gap). Every
 * subscriber must end with every event exactly once and no loss reported;
 * the broker must never crash, must exit 0 on SIGTERM, and its peak RSS
 * (VmHWM) must stay under its memory budget + 64 MiB.
 *
 * Sizes. CI: N = 1,000,000, STOP_MS = 3000. The full run:
 *   SBT_STRESS_EVENTS=10000000 SBT_STRESS_STOP_MS=10000 ./it_stress
 * (docs/SUBSCRIBING.md, "Stress test"). SBT_STRESS_AGGREGATES sets K
 * (default 100). Retention: the memory ring keeps 128 MiB; what it no
 * longer has, the on-disk log serves, so the stopped subscriber catches
 * up whatever N is.
 *
 * Timing is used only to schedule (when to stop, resume and start the
 * third subscriber) and to bound the run so a broken build cannot hang
 * the suite; no assertion depends on it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include <snapbus/snapbus.h>

#ifndef SNAPBUS_CLI_PATH
#error "it_stress needs the snapbus command-line tool"
#endif

#define NSUB 3
#define NSLOT 4 /* the three, and a lone catch-up measured at the end */
#define MAX_AGGS 100000

/* One subscriber's shared record, written by the child, read by the
 * parent (MAP_SHARED). */
typedef struct {
    atomic_uint_fast64_t count; /* distinct seqs seen */
    atomic_int ready;           /* started (hello done) */
    atomic_int done;            /* 1 ok, -1 gave up */
    uint64_t dups, out_of_range, order_errors, lost, restarts, errors;
    uint64_t start_ms, done_ms, cont_ms, count_at_cont;
    sb_subscriber_stats st;
} s_slot;

typedef struct {
    uint64_t n;
    int k;
    int stop_ms;
    char dir[64];
    char file[128];
    sbt_broker b;
    s_slot *slot; /* [NSLOT], shared */
    pid_t pid[NSUB];
} s_run;

static uint64_t
s_env(const char *name, uint64_t def)
{
    const char *v = getenv(name);
    return v != NULL && *v ? strtoull(v, NULL, 10) : def;
}

/* ---- the checker (a child process) ------------------------------------- */

static void
s_checker(const s_run *r, int idx, uint64_t resume)
{
    s_slot *sl = &r->slot[idx];
    uint8_t *seen = calloc(r->n + 1, 1);
    uint64_t *last = calloc((size_t)r->k, sizeof *last);
    sb_subscriber_opts o;
    sb_subscriber *s;

    sl->start_ms = sbt_now_ms();
    sb_subscriber_opts_defaults(&o);
    o.endpoint = r->b.pub;
    o.query_endpoint = r->b.query;
    o.rcvhwm = 1000;
    o.resume_from_seq = resume;
    if (seen == NULL || last == NULL || sb_subscriber_new(&s, &o) != SB_OK ||
        sb_subscriber_subscribe(s, "") != SB_OK ||
        sb_subscriber_start(s, 30000) != SB_OK) {
        atomic_store(&sl->done, -1);
        _exit(1);
    }
    atomic_store(&sl->ready, 1);
    uint64_t count = 0, idle_since = sbt_now_ms(), turn = idle_since;
    while (count < r->n) {
        sb_snapshot *b;
        sb_err rc = sb_subscriber_recv(s, &b, 1000);
        /* A turn that took far longer than the receive timeout means this
         * process was stopped (SIGSTOP): that time is not idleness. */
        if (sbt_now_ms() - turn > 10000)
            idle_since = sbt_now_ms();
        turn = sbt_now_ms();
        if (rc == SB_EAGAIN) {
            /* No progress for two minutes: give up (the parent fails). */
            if (sbt_now_ms() - idle_since > 120000)
                break;
            continue;
        }
        idle_since = sbt_now_ms();
        if (rc == SB_ENOENT) {
            sl->lost++;
            continue;
        }
        if (rc == SB_ERESTART) {
            sl->restarts++;
            continue;
        }
        if (rc != SB_OK) {
            sl->errors++;
            continue;
        }
        for (size_t i = 0; i < sb_snapshot_count(b); i++) {
            sb_snapshot_event e;
            sb_snapshot_event_get(b, i, &e);
            if (e.seq < 1 || e.seq > r->n ||
                strncmp(e.aggregate, "gen/", 4) != 0) {
                sl->out_of_range++;
                continue;
            }
            if (seen[e.seq]) {
                sl->dups++;
                continue;
            }
            seen[e.seq] = 1;
            count++;
            long a = strtol(e.aggregate + 4, NULL, 10);
            if (a < 0 || a >= r->k)
                sl->out_of_range++;
            else if (e.agg_seq != last[a] + 1)
                sl->order_errors++; /* out of order, or a gap */
            else
                last[a] = e.agg_seq;
        }
        sb_snapshot_destroy(&b);
        atomic_store(&sl->count, count);
    }
    sl->done_ms = sbt_now_ms();
    sb_subscriber_stats_get(s, &sl->st);
    sb_subscriber_destroy(&s);
    atomic_store(&sl->done, count == r->n ? 1 : -1);
    _exit(0);
}

static pid_t
s_fork_checker(s_run *r, int idx, uint64_t resume)
{
    pid_t pid = fork();
    if (pid == 0)
        s_checker(r, idx, resume);
    return pid;
}

static int
s_run_cmd(char *const argv[], const char *out)
{
    pid_t pid = fork();
    int st;

    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static s_run g_run;

static int
s_teardown(void **state)
{
    s_run *r = &g_run;
    for (int i = 0; i < NSUB; i++)
        if (r->pid[i] > 0) {
            kill(r->pid[i], SIGCONT);
            kill(r->pid[i], SIGKILL);
            waitpid(r->pid[i], NULL, 0);
            r->pid[i] = 0;
        }
    if (r->b.pid > 0)
        sbt_broker_stop(&r->b, 120);
    if (r->dir[0] && !getenv("SBT_STRESS_KEEP")) {
        char p[192];
        unlink(r->file);
        snprintf(p, sizeof p, "%.63s/record.out", r->dir);
        unlink(p);
        snprintf(p, sizeof p, "%.63s/replay.out", r->dir);
        unlink(p);
        rmdir(r->dir);
    }
    return 0;
}

static void
test_burst_stopped_live_and_late_subscribers_lose_nothing(void **state)
{
    s_run *r = &g_run;
    char nbuf[32], kbuf[32], out[160];

    memset(r, 0, sizeof *r);
    r->n = s_env("SBT_STRESS_EVENTS", 1000000);
    r->k = (int)s_env("SBT_STRESS_AGGREGATES", 100);
    r->stop_ms = (int)s_env("SBT_STRESS_STOP_MS", 3000);
    assert_true(r->n > 0 && r->k > 0 && r->k <= MAX_AGGS);
    snprintf(r->dir, sizeof r->dir, "/tmp/sbstress.XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    snprintf(r->file, sizeof r->file, "%.63s/burst.rec", r->dir);

    /* The history to replay: N events of 100 bytes over K aggregates. */
    snprintf(nbuf, sizeof nbuf, "%llu", (unsigned long long)r->n);
    snprintf(kbuf, sizeof kbuf, "%d", r->k);
    char *gen[] = {SNAPBUS_CLI_PATH, "record", "--generate", nbuf,
                   "--aggregates", kbuf, "--size", "100", "-o", r->file,
                   NULL};
    snprintf(out, sizeof out, "%.63s/record.out", r->dir);
    assert_int_equal(s_run_cmd(gen, out), 0);

    /* The broker: small queues (so backpressure is real), delay 0 (many
     * small batches, the hard case for gap fill), a 128 MiB ring inside
     * the default 256 MiB memory budget. */
    const char *args[] = {"--queue", "16", "--hwm", "100",
                          "--max-message-bytes", "262144",
                          "--max-payload-bytes", "65536",
                          "--max-events-per-request", "1000",
                          "--default-delay-ms", "0", "--max-open-bytes",
                          "16M", "--retain-bytes", "128M", "--retain-batches",
                          "4000000", "--memory-budget", "256M",
                          "--log-level", "warn", NULL};
    assert_int_equal(sbt_broker_start(&r->b, args), 0);
    /* The budget, and 64 MiB for the process itself. */
    const uint64_t bound_kb = ((256ull << 20) + (64ull << 20)) / 1024;

    r->slot = mmap(NULL, NSLOT * sizeof *r->slot, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(r->slot != MAP_FAILED);
    memset(r->slot, 0, NSLOT * sizeof *r->slot);

    /* Subscribers 1 and 2, live: started before the burst. */
    for (int i = 0; i < 2; i++)
        assert_true((r->pid[i] = s_fork_checker(r, i, 0)) > 0);
    for (int i = 0; i < 2; i++)
        while (!atomic_load(&r->slot[i].ready)) {
            assert_int_not_equal(atomic_load(&r->slot[i].done), -1);
            usleep(1000);
        }

    /* The burst. */
    snprintf(out, sizeof out, "%.63s/replay.out", r->dir);
    pid_t rp = fork();
    if (rp == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            close(fd);
        }
        execl(SNAPBUS_CLI_PATH, SNAPBUS_CLI_PATH, "replay", "-e", r->b.ingest,
              "-q", "-T", "600000", r->file, (char *)NULL);
        _exit(127);
    }
    assert_true(rp > 0);
    uint64_t t0 = sbt_now_ms(), t_stop = 0, t_replay = 0;
    int stopped = 0, resumed = 0, replay_rc = -1, all = 0;
    uint64_t limit = t0 + 600000 + r->n / 10; /* a bound, not a measure */

    while (!all && sbt_now_ms() < limit) {
        uint64_t c2 = atomic_load(&r->slot[1].count);
        if (!stopped && c2 >= r->n / 20) {
            kill(r->pid[0], SIGSTOP);
            t_stop = sbt_now_ms();
            stopped = 1;
        }
        if (stopped && !resumed && sbt_now_ms() - t_stop >= (uint64_t)r->stop_ms) {
            r->slot[0].count_at_cont = atomic_load(&r->slot[0].count);
            r->slot[0].cont_ms = sbt_now_ms();
            kill(r->pid[0], SIGCONT);
            resumed = 1;
        }
        if (r->pid[2] == 0 &&
            (c2 >= r->n / 2 || atomic_load(&r->slot[1].done) != 0))
            assert_true((r->pid[2] = s_fork_checker(r, 2, 1)) > 0);
        int st;
        if (replay_rc < 0 && waitpid(rp, &st, WNOHANG) == rp) {
            replay_rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
            t_replay = sbt_now_ms();
        }
        all = replay_rc >= 0 && resumed && r->pid[2] != 0;
        for (int i = 0; i < NSUB && all; i++)
            all = atomic_load(&r->slot[i].done) != 0;
        /* The broker must be running all along. */
        assert_int_equal(waitpid(r->b.pid, &st, WNOHANG), 0);
        usleep(10000);
    }
    assert_true(all);
    long hwm_kb = sbt_broker_vmhwm_kb(&r->b);

    /* The replay: every event sent and acked, none refused. */
    char summary[256] = "";
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    assert_non_null(fgets(summary, sizeof summary, f));
    fclose(f);
    unsigned long long sent = 0, acked = 0, refused = 1;
    double elapsed = 0;
    assert_int_equal(sscanf(summary,
                            "sent=%llu acked=%llu refused=%llu elapsed=%lfs",
                            &sent, &acked, &refused, &elapsed),
                     4);
    printf("# stress: %llu events of 100 B, %d aggregates: replay %.2f s "
           "(%.0f ev/s); broker VmHWM %ld MiB (bound %llu MiB)\n",
           sent, r->k, elapsed, elapsed > 0 ? sent / elapsed : 0.0,
           hwm_kb / 1024, (unsigned long long)bound_kb / 1024);
    for (int i = 0; i < NSUB; i++) {
        s_slot *sl = &r->slot[i];
        int st;
        waitpid(r->pid[i], &st, 0);
        r->pid[i] = 0;
        double secs = (double)(sl->done_ms - sl->start_ms) / 1000;
        printf("# subscriber %d (%s): %llu events, dup %llu, order/gap "
               "errors %llu, lost %llu; batches %llu, gaps %llu, filled "
               "%llu, duplicates dropped %llu, probes %llu, fetches %llu; "
               "%.2f s",
               i + 1, i == 0 ? "stopped" : i == 1 ? "live" : "late, resume 1",
               (unsigned long long)atomic_load(&sl->count),
               (unsigned long long)sl->dups,
               (unsigned long long)sl->order_errors,
               (unsigned long long)sl->lost,
               (unsigned long long)sl->st.batches,
               (unsigned long long)sl->st.gaps,
               (unsigned long long)sl->st.filled,
               (unsigned long long)sl->st.duplicates,
               (unsigned long long)sl->st.probes,
               (unsigned long long)sl->st.fetches, secs);
        if (i == 0 && sl->done_ms > sl->cont_ms)
            printf(", after SIGCONT %llu events in %.2f s (%.0f ev/s)",
                   (unsigned long long)(r->n - sl->count_at_cont),
                   (double)(sl->done_ms - sl->cont_ms) / 1000,
                   (double)(r->n - sl->count_at_cont) * 1000 /
                       (double)(sl->done_ms - sl->cont_ms));
        if (i == 2 && secs > 0)
            printf(" (%.0f ev/s)", (double)r->n / secs);
        printf("\n");
    }
    printf("# replay finished %.2f s after start; subscriber 1 stopped %d ms\n",
           (double)(t_replay - t0) / 1000, r->stop_ms);
    fflush(stdout);
    assert_int_equal(replay_rc, 0);
    assert_int_equal(sent, r->n);
    assert_int_equal(acked, r->n);
    assert_int_equal(refused, 0);

    for (int i = 0; i < NSUB; i++) {
        s_slot *sl = &r->slot[i];
        assert_int_equal(atomic_load(&sl->done), 1);
        assert_int_equal(atomic_load(&sl->count), r->n);
        assert_int_equal(sl->dups, 0);
        assert_int_equal(sl->out_of_range, 0);
        assert_int_equal(sl->order_errors, 0);
        assert_int_equal(sl->lost, 0);
        assert_int_equal(sl->restarts, 0);
        assert_int_equal(sl->errors, 0);
    }
    assert_true(hwm_kb > 0);
#if defined(__SANITIZE_ADDRESS__)
    /* AddressSanitizer keeps freed memory in quarantine and adds shadow
     * memory, so its RSS says nothing about the broker's own bound; the
     * release build checks the bound. */
#else
    assert_true((uint64_t)hwm_kb < bound_kb);
#endif

    /* A figure, not an assertion: a fourth subscriber, alone, reads the
     * whole history back (resume from seq 1: retention, then the log). */
    pid_t lone = s_fork_checker(r, 3, 1);
    assert_true(lone > 0);
    int lst;
    waitpid(lone, &lst, 0);
    s_slot *l = &r->slot[3];
    if (atomic_load(&l->done) == 1 && l->done_ms > l->start_ms)
        printf("# catch-up alone from retention: %llu events in %.2f s "
               "(%.0f ev/s), %llu batches, %llu fetches\n",
               (unsigned long long)r->n,
               (double)(l->done_ms - l->start_ms) / 1000,
               (double)r->n * 1000 / (double)(l->done_ms - l->start_ms),
               (unsigned long long)l->st.batches,
               (unsigned long long)l->st.fetches);
    assert_int_equal(atomic_load(&l->done), 1);
    assert_int_equal(l->dups + l->order_errors + l->lost, 0);
    assert_int_equal(sbt_broker_stop(&r->b, 120), 0);
    munmap(r->slot, NSLOT * sizeof *r->slot);
    r->slot = NULL;
}

/* ---- the memory budget under a burst -----------------------------------
 *
 * `--memory-budget 64M` (with limits small enough that the fixed parts
 * fit), N events of 100 B over 10,000 aggregates replayed (batching delay
 * 0, gen/1* held 200 ms) while 16 publishers publish M acked events each
 * into the same aggregates, one lossless subscriber live and one stopped
 * (SIGSTOP) from before the burst until everything is acked. Every event
 * must reach both exactly once and in each aggregate's order (the stopped
 * one after SIGCONT, from the ring and the log), every publish must be
 * acked, the credit for requests in flight must never pass its bound, and
 * the broker's VmHWM must stay under the budget + 64 MiB (the process
 * itself: code, stacks, libzmq, per-aggregate state).
 *
 * CI: N = 1,000,000 (200,000 under ASan), M = 5,000. SBT_BUDGET_EVENTS, SBT_BUDGET_PUB_EVENTS
 * and SBT_BUDGET set them and the budget (e.g. 256M with the default
 * limits); the 10 M-event run is tests/memory_burst.sh. */
#define S_NPUB 16

typedef struct {
    const char *endpoint;
    int idx, k;
    uint64_t m;
    atomic_uint_fast64_t ok;
    atomic_int done; /* 1 ok, -1 failed */
} s_pub_ctx;

static void
s_count_ack(const sb_ack_info *a, void *ctx)
{
    s_pub_ctx *c = ctx;
    if (a->err == SB_OK)
        atomic_fetch_add(&c->ok, 1);
}

static void *
s_publisher(void *arg)
{
    s_pub_ctx *c = arg;
    sb_publisher_opts o;
    sb_publisher *p;
    uint8_t payload[100];
    char agg[32];
    int rc = 1;

    sb_publisher_opts_defaults(&o);
    o.endpoint = c->endpoint;
    o.ack = SB_ACK_SEQUENCED;
    o.timeout_ms = 300000;
    o.max_request_bytes = 256u << 10;
    if (sb_publisher_new(&p, &o) != SB_OK) {
        atomic_store(&c->done, -1);
        return NULL;
    }
    sb_publisher_on_ack(p, s_count_ack, c);
    memset(payload, 0x5a, sizeof payload);
    for (uint64_t i = 0; i < c->m && rc; i++) {
        snprintf(agg, sizeof agg, "gen/%d",
                 (int) ((uint64_t) c->idx * 613 + i * 7) % c->k);
        sb_pub_event ev = {.aggregate = agg, .type = "pub",
                           .payload = payload, .payload_len = sizeof payload};
        rc = sb_publisher_publish(p, &ev, 0, NULL) == SB_OK;
    }
    if (rc)
        rc = sb_publisher_wait_all(p, 300000) == SB_OK;
    sb_publisher_destroy(&p);
    atomic_store(&c->done, rc ? 1 : -1);
    return NULL;
}

/* The value of the first sample of `name` (with its labels) in a
 * /metrics page; -1 if absent. */
static double
s_metric_value(const char *page, const char *name)
{
    const char *at = page;
    size_t len = strlen(name);

    while ((at = strstr(at, name)) != NULL) {
        if ((at == page || at[-1] == '\n') && at[len] == ' ')
            return strtod(at + len + 1, NULL);
        at += len;
    }
    return -1;
}

static void
test_memory_budget_holds_under_burst_with_a_stopped_subscriber(void **state)
{
    s_run *r = &g_run;
    char nbuf[32], out[160];
    const char *budget = getenv("SBT_BUDGET") ? getenv("SBT_BUDGET") : "64M";
    uint64_t budget_bytes = strtoull(budget, NULL, 10) << 20;
    uint64_t nfile, m;
    s_pub_ctx pubs[S_NPUB];
    pthread_t tid[S_NPUB];

    (void) state;
    memset(r, 0, sizeof *r);
#if defined(__SANITIZE_ADDRESS__)
    nfile = s_env("SBT_BUDGET_EVENTS", 200000); /* ASan: 5 to 10 x slower */
#else
    nfile = s_env("SBT_BUDGET_EVENTS", 1000000);
#endif
    m = s_env("SBT_BUDGET_PUB_EVENTS", 5000);
    r->k = 10000;
    r->n = nfile + S_NPUB * m; /* every seq the subscribers must see */
    snprintf(r->dir, sizeof r->dir, "/tmp/sbbudget.XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    snprintf(r->file, sizeof r->file, "%.63s/burst.rec", r->dir);
    snprintf(nbuf, sizeof nbuf, "%llu", (unsigned long long) nfile);
    char *gen[] = {SNAPBUS_CLI_PATH, "record", "--generate", nbuf,
                   "--aggregates", "10000", "--size", "100", "-o", r->file,
                   NULL};
    snprintf(out, sizeof out, "%.63s/record.out", r->dir);
    assert_int_equal(s_run_cmd(gen, out), 0);

    const char *args[] = {"--memory-budget", budget,
                          "--max-message-bytes", "256k",
                          "--max-events-per-request", "1000",
                          "--max-payload-bytes", "64k",
                          "--retain-bytes", "16M", "--fetch-max-bytes", "1M",
                          "--default-delay-ms", "0", "--delay", "gen/1*=200",
                          "--metrics", "127.0.0.1:0", "--log-level", "warn",
                          NULL};
    assert_int_equal(sbt_broker_start(&r->b, args), 0);
    r->slot = mmap(NULL, NSLOT * sizeof *r->slot, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(r->slot != MAP_FAILED);
    memset(r->slot, 0, NSLOT * sizeof *r->slot);

    /* Subscriber 1 is stopped before the first event and stays stopped
     * until every publish is acked; subscriber 2 is live. */
    for (int i = 0; i < 2; i++)
        assert_true((r->pid[i] = s_fork_checker(r, i, 0)) > 0);
    for (int i = 0; i < 2; i++)
        while (!atomic_load(&r->slot[i].ready)) {
            assert_int_not_equal(atomic_load(&r->slot[i].done), -1);
            usleep(1000);
        }
    kill(r->pid[0], SIGSTOP);

    snprintf(out, sizeof out, "%.63s/replay.out", r->dir);
    pid_t rp = fork();
    if (rp == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            close(fd);
        }
        execl(SNAPBUS_CLI_PATH, SNAPBUS_CLI_PATH, "replay", "-e", r->b.ingest,
              "-q", "-T", "600000", r->file, (char *) NULL);
        _exit(127);
    }
    assert_true(rp > 0);
    uint64_t t0 = sbt_now_ms();
    for (int i = 0; i < S_NPUB; i++) {
        pubs[i] = (s_pub_ctx){.endpoint = r->b.ingest, .idx = i, .k = r->k, .m = m};
        assert_int_equal(pthread_create(&tid[i], NULL, s_publisher, &pubs[i]), 0);
    }

    /* Until the replay and every publisher are done and the live
     * subscriber has everything: a bound, not a measure. */
    int replay_rc = -1, st;
    uint64_t limit = t0 + 600000 + r->n / 10;
    for (;;) {
        int pubs_done = 1;
        for (int i = 0; i < S_NPUB; i++)
            pubs_done &= atomic_load(&pubs[i].done) != 0;
        if (replay_rc < 0 && waitpid(rp, &st, WNOHANG) == rp)
            replay_rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        if (replay_rc >= 0 && pubs_done && atomic_load(&r->slot[1].done) != 0)
            break;
        assert_int_equal(waitpid(r->b.pid, &st, WNOHANG), 0);
        assert_true(sbt_now_ms() < limit);
        usleep(10000);
    }
    uint64_t t_burst = sbt_now_ms();
    for (int i = 0; i < S_NPUB; i++)
        pthread_join(tid[i], NULL);

    /* What the budget's parts say, before the stopped one catches up. */
    static char page[1 << 16];
    assert_int_equal(sbt_http_get(r->b.metrics, "/metrics", page, sizeof page, 10000), 200);
    double mb = s_metric_value(page, "snapbus_memory_budget_bytes");
    double credit = s_metric_value(page, "snapbus_memory_term_bytes{part=\"requests\"}");
    double over = s_metric_value(page, "snapbus_memory_term_bytes{part=\"requests_over\"}");
    double high = s_metric_value(page, "snapbus_memory_requests_high_bytes");
    double waits = s_metric_value(page, "snapbus_memory_waits_total");
    double skipped = s_metric_value(page, "snapbus_pub_skipped_total");
    assert_true(s_metric_value(page, "snapbus_memory_used_bytes{part=\"ring\"}") >= 0);
    assert_true(s_metric_value(page, "snapbus_memory_used_bytes{part=\"requests\"}") >= 0);

    kill(r->pid[0], SIGCONT);
    while (atomic_load(&r->slot[0].done) == 0) {
        assert_int_equal(waitpid(r->b.pid, &st, WNOHANG), 0);
        assert_true(sbt_now_ms() < limit);
        usleep(10000);
    }
    long hwm_kb = sbt_broker_vmhwm_kb(&r->b);

    char summary[256] = "";
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    assert_non_null(fgets(summary, sizeof summary, f));
    fclose(f);
    unsigned long long sent = 0, acked = 0, refused = 1;
    double elapsed = 0;
    assert_int_equal(sscanf(summary, "sent=%llu acked=%llu refused=%llu elapsed=%lfs",
                            &sent, &acked, &refused, &elapsed), 4);
    uint64_t pub_ok = 0;
    for (int i = 0; i < S_NPUB; i++)
        pub_ok += atomic_load(&pubs[i].ok);
    printf("# budget %s: replay %llu events (%.0f ev/s) and %d publishers x "
           "%llu acked, 10000 aggregates, in %.2f s; broker VmHWM %ld MiB "
           "(bound %llu MiB); requests high %.1f MiB (credit %.1f MiB + one "
           "request %.1f MiB); credit waits %.0f; live batches skipped %.0f\n",
           budget, sent, elapsed > 0 ? sent / elapsed : 0.0, S_NPUB,
           (unsigned long long) m, (double) (t_burst - t0) / 1000,
           hwm_kb / 1024, (unsigned long long) (budget_bytes + (64u << 20)) >> 20,
           high / 1048576, credit / 1048576, over / 1048576, waits, skipped);
    for (int i = 0; i < 2; i++) {
        s_slot *sl = &r->slot[i];
        waitpid(r->pid[i], &st, 0);
        r->pid[i] = 0;
        printf("# subscriber %d (%s): %llu events, dup %llu, order/gap errors "
               "%llu, lost %llu; gaps %llu, fetches %llu\n", i + 1,
               i == 0 ? "stopped throughout" : "live",
               (unsigned long long) atomic_load(&sl->count),
               (unsigned long long) sl->dups,
               (unsigned long long) sl->order_errors,
               (unsigned long long) sl->lost,
               (unsigned long long) sl->st.gaps,
               (unsigned long long) sl->st.fetches);
    }
    fflush(stdout);
    assert_int_equal(replay_rc, 0);
    assert_int_equal(sent, nfile);
    assert_int_equal(acked, nfile);
    assert_int_equal(refused, 0);
    for (int i = 0; i < S_NPUB; i++)
        assert_int_equal(atomic_load(&pubs[i].done), 1);
    assert_int_equal(pub_ok, S_NPUB * m);
    for (int i = 0; i < 2; i++) {
        s_slot *sl = &r->slot[i];
        assert_int_equal(atomic_load(&sl->done), 1);
        assert_int_equal(atomic_load(&sl->count), r->n);
        assert_int_equal(sl->dups, 0);
        assert_int_equal(sl->out_of_range, 0);
        assert_int_equal(sl->order_errors, 0);
        assert_int_equal(sl->lost, 0);
        assert_int_equal(sl->errors, 0);
    }
    assert_true(mb == (double) budget_bytes);
    assert_true(credit > 0 && over > 0);
    /* The credit stops admission at its bound: past it by one request at
     * most (and the replies of what is in flight, charged too). */
    assert_true(high > 0);
    assert_true(high <= credit * 9 / 8 + over);
    assert_true(hwm_kb > 0);
#if defined(__SANITIZE_ADDRESS__)
    /* AddressSanitizer's quarantine and shadow memory: no bound to check. */
#else
    assert_true((uint64_t) hwm_kb * 1024 <= budget_bytes + (64u << 20));
#endif
    assert_int_equal(sbt_broker_stop(&r->b, 120), 0);
    munmap(r->slot, NSLOT * sizeof *r->slot);
    r->slot = NULL;
}

/* ---- the resume position, end to end ----------------------------------
 *
 * Seqs 1-2 sit in aggregate "slow"'s batch, held open by a 10-minute
 * delay, while seqs 3-102 of "fast" are published and delivered. The
 * position subscriber A reports must stay at 1 (the open batch's first
 * seq), not follow the seqs it has seen (103), or a resume would skip the
 * slow batch for good. The broker is then stopped (SIGTERM publishes the
 * slow batch) and started again on the same data directory; subscriber B
 * resumes from A's position and must get the slow batch, out of the
 * on-disk log. */
static sb_subscriber *
s_lossless(const sbt_broker *b, uint64_t resume)
{
    sb_subscriber_opts o;
    sb_subscriber *s;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = b->pub;
    o.query_endpoint = b->query;
    o.resume_from_seq = resume;
    assert_int_equal(sb_subscriber_new(&s, &o), SB_OK);
    assert_int_equal(sb_subscriber_subscribe(s, ""), SB_OK);
    assert_int_equal(sb_subscriber_start(s, 30000), SB_OK);
    return s;
}

static void
test_resume_position_covers_a_batch_held_open(void **state)
{
    s_run *r = &g_run;
    char data[128];
    const char *args[] = {"--default-delay-ms", "0", "--delay",
                          "slow=600000", NULL};
    sb_publisher_opts po;
    sb_publisher *p;

    memset(r, 0, sizeof *r);
    assert_int_equal(sbt_broker_start(&r->b, args), 0);
    snprintf(data, sizeof data, "%.63s/data", r->b.dir);
    sb_subscriber *a = s_lossless(&r->b, 0);
    sb_publisher_opts_defaults(&po);
    po.endpoint = r->b.ingest;
    assert_int_equal(sb_publisher_new(&p, &po), SB_OK);
    sb_pub_event ev = {.aggregate = "slow", .type = "T"};
    for (int i = 0; i < 2; i++)
        assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
    assert_int_equal(sb_publisher_wait_all(p, 30000), SB_OK); /* seqs 1-2 */
    ev.aggregate = "fast";
    for (int i = 0; i < 100; i++)
        assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
    assert_int_equal(sb_publisher_wait_all(p, 30000), SB_OK);
    sb_publisher_destroy(&p);

    /* A: the 100 fast events, then a probe (after probe_ms idle) sets its
     * position. Bounded waits; the assertions are on what came. */
    uint64_t got = 0, slow = 0, pos = 0;
    for (int i = 0; i < 600 && (got < 100 || pos == 0); i++) {
        sb_snapshot *b;
        if (sb_subscriber_recv(a, &b, 100) == SB_OK) {
            if (strcmp(sb_snapshot_aggregate(b), "slow") == 0)
                slow++;
            got += sb_snapshot_count(b);
            sb_snapshot_destroy(&b);
        }
        pos = sb_subscriber_position(a);
    }
    assert_int_equal(got, 100);
    assert_int_equal(slow, 0);
    assert_int_equal(pos, 1); /* not 103: seqs 1-2 are not published */
    sb_subscriber_destroy(&a);

    /* Restart on the same data: SIGTERM publishes the slow batch. */
    assert_int_equal(sbt_broker_stop(&r->b, 60), 0);
    const char *again[] = {"--data-dir", data, "--default-delay-ms", "0",
                           NULL};
    assert_int_equal(sbt_broker_start(&r->b, again), 0);
    sb_subscriber *b2 = s_lossless(&r->b, pos);
    uint64_t seen_1 = 0, seen_2 = 0, events = 0;
    for (int i = 0; i < 300 && events < 102; i++) {
        sb_snapshot *b;
        sb_err rc = sb_subscriber_recv(b2, &b, 100);
        assert_true(rc == SB_OK || rc == SB_EAGAIN); /* no loss */
        if (rc != SB_OK)
            continue;
        for (size_t k = 0; k < sb_snapshot_count(b); k++) {
            sb_snapshot_event e;
            sb_snapshot_event_get(b, k, &e);
            seen_1 += e.seq == 1;
            seen_2 += e.seq == 2;
            events++;
        }
        sb_snapshot_destroy(&b);
    }
    assert_int_equal(seen_1, 1);
    assert_int_equal(seen_2, 1);
    assert_int_equal(events, 102);
    sb_subscriber_destroy(&b2);
    assert_int_equal(sbt_broker_stop(&r->b, 60), 0);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_teardown(
            test_burst_stopped_live_and_late_subscribers_lose_nothing,
            s_teardown),
        cmocka_unit_test_teardown(test_resume_position_covers_a_batch_held_open,
                                  s_teardown),
        cmocka_unit_test_teardown(
            test_memory_budget_holds_under_burst_with_a_stopped_subscriber,
            s_teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
