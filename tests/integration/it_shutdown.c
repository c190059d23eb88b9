/* Stopping and losing the broker, against the real snapbusd and CLI:
 *
 * - SIGTERM in the middle of a burst, with a live lossless subscriber on a
 *   small receive high-water mark: every acked event reaches it, or it
 *   reports exactly the batches it could not fetch (the broker's EpochEnd
 *   marker and shutdown linger, docs/SUBSCRIBING.md). Never "lost 0" with
 *   events missing.
 * - No call hangs: `replay` while the broker is stopped exits within its
 *   -T with a reason and a summary; `pub --ack none` with no broker exits
 *   non-zero ("no broker answered"); after `kill -9` the CLI says "timed
 *   out, fate unknown", never "shutting down"; `replay --retry` across a
 *   broker restart leaves the log with every event once, no gap.
 *
 * Every wait is for a condition (a metric, a process exit) with a generous
 * deadline; the elapsed times asserted are the -T each command was given,
 * plus a wide margin for a loaded machine. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include <snapbus/snapbus.h>

#define S_MAX_SEQ (4u << 20)
#define S_BODY (256 * 1024)

static sbt_broker *s_running;

static int
s_teardown(void **state)
{
    (void)state;
    if (s_running != NULL && s_running->pid > 0)
        sbt_broker_stop(s_running, 30);
    s_running = NULL;
    return 0;
}

/* A counter of the broker's /metrics; -1 if the scrape failed. */
static double
s_metric(const sbt_broker *b, const char *name)
{
    static char body[S_BODY];
    char want[128];
    const char *p;

    if (sbt_http_get(b->metrics, "/metrics", body, sizeof body, 5000) != 200)
        return -1;
    snprintf(want, sizeof want, "\n%s ", name);
    if ((p = strstr(body, want)) == NULL)
        return -1;
    return strtod(p + strlen(want), NULL);
}

/* Waits (bounded, generously) until the counter reaches v. */
static void
s_wait_metric(const sbt_broker *b, const char *name, double v)
{
    uint64_t end = sbt_now_ms() + 120000;

    while (s_metric(b, name) < v) {
        if (sbt_now_ms() > end)
            fail_msg("%s never reached %.0f", name, v);
        usleep(20000);
    }
}

/* ---- a CLI run in the background ---------------------------------------- */

typedef struct {
    pid_t pid;
    char out[256]; /* stdout + stderr */
} s_proc;

static void
s_spawn(s_proc *p, const char *dir, const char *const *argv)
{
    snprintf(p->out, sizeof p->out, "%s/cli.%d.out", dir, (int)sbt_now_ms() % 100000);
    p->pid = fork();
    assert_true(p->pid >= 0);
    if (p->pid == 0) {
        int fd = open(p->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int nul = open("/dev/null", O_RDONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        dup2(nul, 0);
        execv(SNAPBUS_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
}

/* Exit status, or fails after timeout_ms. */
static int
s_reap(s_proc *p, int timeout_ms)
{
    uint64_t end = sbt_now_ms() + (uint64_t)timeout_ms;
    int st;

    for (;;) {
        if (waitpid(p->pid, &st, WNOHANG) == p->pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (sbt_now_ms() > end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            fail_msg("%s still running after %d ms", SNAPBUS_CLI_PATH, timeout_ms);
        }
        usleep(10000);
    }
}

static char *
s_slurp(const char *path)
{
    static char buf[65536];
    FILE *f = fopen(path, "r");
    size_t n = 0;

    if (f != NULL) {
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

static void
s_generate(const char *path, int n)
{
    char cmd[512];

    snprintf(cmd, sizeof cmd, "%s record --generate %d --aggregates 500 -o %s",
             SNAPBUS_CLI_PATH, n, path);
    assert_int_equal(system(cmd), 0);
}

static void
s_dir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/sbt.sd.XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void
s_rmdir(const char *dir)
{
    char cmd[256];

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)system(cmd);
}

/* ---- SIGTERM during a burst: the tail reaches the subscriber ------------ */

typedef struct {
    const char *pub, *query;
    atomic_uchar *seen; /* by seq */
    atomic_int ready, broker_gone, done;
    uint64_t events, dups, losses;
    uint64_t loss_from[64], loss_to[64];
    sb_subscriber_stats st;
} s_sub;

static void *
s_subscriber(void *arg)
{
    s_sub *c = arg;
    sb_subscriber_opts o;
    sb_subscriber *s;
    uint64_t end = sbt_now_ms() + 300000;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = c->pub;
    o.query_endpoint = c->query;
    o.rcvhwm = 50; /* the PUB socket drops: the tail must be fetched */
    if (sb_subscriber_new(&s, &o) != SB_OK || sb_subscriber_subscribe(s, "") != SB_OK ||
        sb_subscriber_start(s, 60000) != SB_OK) {
        atomic_store(&c->done, -1);
        return NULL;
    }
    atomic_store(&c->ready, 1);
    while (sbt_now_ms() < end) {
        sb_snapshot *b;
        sb_loss l;
        sb_err rc = sb_subscriber_recv(s, &b, 200);
        if (rc == SB_EAGAIN) {
            /* Done once the broker is gone and nothing it named is left
             * unchecked (fetched, or reported below). */
            if (atomic_load(&c->broker_gone) && sb_subscriber_unchecked(s, &l) == SB_ENOENT)
                break;
            continue;
        }
        if (rc == SB_ENOENT) {
            if (sb_subscriber_loss(s, &l) == SB_OK && c->losses < 64) {
                c->loss_from[c->losses] = l.from_seq;
                c->loss_to[c->losses] = l.to_seq;
            }
            c->losses++;
            continue;
        }
        if (rc != SB_OK)
            continue;
        for (size_t i = 0; i < sb_snapshot_count(b); i++) {
            sb_snapshot_event e;
            sb_snapshot_event_get(b, i, &e);
            if (e.seq < S_MAX_SEQ && atomic_fetch_add(&c->seen[e.seq], 1) == 0)
                c->events++;
            else
                c->dups++;
        }
        sb_snapshot_destroy(&b);
    }
    sb_subscriber_stats_get(s, &c->st);
    sb_subscriber_destroy(&s);
    atomic_store(&c->done, 1);
    return NULL;
}

typedef struct {
    const char *endpoint;
    sb_ack ack;
    atomic_uchar *acked; /* by seq */
    atomic_uint_fast64_t n_acked;
    uint64_t closed, unknown;
    int id;
} s_pub;

static void
s_on_ack(const sb_ack_info *a, void *arg)
{
    s_pub *p = arg;

    if (a->err == SB_OK) {
        if (a->seq < S_MAX_SEQ)
            atomic_store(&p->acked[a->seq], 1);
        atomic_fetch_add(&p->n_acked, 1);
    } else if (a->err == SB_ECLOSED) {
        p->closed++;
    } else if (a->err == SB_ETIMEDOUT) {
        p->unknown++;
    }
}

static void *
s_publisher(void *arg)
{
    s_pub *p = arg;
    sb_publisher_opts o;
    sb_publisher *pub;
    char agg[32], payload[100];

    sb_publisher_opts_defaults(&o);
    o.endpoint = p->endpoint;
    o.ack = p->ack;
    o.timeout_ms = 10000;
    o.reply_timeout_ms = 30000;
    if (sb_publisher_new(&pub, &o) != SB_OK)
        return NULL;
    sb_publisher_on_ack(pub, s_on_ack, p);
    memset(payload, 'x', sizeof payload);
    for (uint64_t i = 0; p->closed == 0 && i < 3000000; i++) {
        snprintf(agg, sizeof agg, "p%d/%llu", p->id, (unsigned long long)i % 97);
        sb_pub_event ev = {.aggregate = agg, .type = "T", .payload = payload,
                           .payload_len = sizeof payload};
        if (sb_publisher_publish(pub, &ev, 0, NULL) != SB_OK)
            break; /* timed out: the broker is gone */
    }
    (void)sb_publisher_wait_all(pub, 10000);
    sb_publisher_destroy(&pub);
    return NULL;
}

static void
s_tail_round(int round)
{
    const char *extra[] = {"--metrics", "127.0.0.1:0", "--default-delay-ms", "5",
                           "--hwm", "500", "--log-level", "notice", NULL};
    static sbt_broker b;
    static s_sub sc;
    static s_pub pp[2];
    atomic_uchar *acked = calloc(S_MAX_SEQ, 1);
    pthread_t st, pt[2];

    memset(&sc, 0, sizeof sc);
    sc.seen = calloc(S_MAX_SEQ, 1);
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    s_running = &b;
    sc.pub = b.pub;
    sc.query = b.query;
    pthread_create(&st, NULL, s_subscriber, &sc);
    while (!atomic_load(&sc.ready) && atomic_load(&sc.done) == 0)
        usleep(1000);
    assert_int_equal(atomic_load(&sc.done), 0);
    for (int i = 0; i < 2; i++) {
        memset(&pp[i], 0, sizeof pp[i]);
        pp[i].endpoint = b.ingest;
        pp[i].ack = i ? SB_ACK_PUBLISHED : SB_ACK_SEQUENCED;
        pp[i].acked = acked;
        pp[i].id = i;
        pthread_create(&pt[i], NULL, s_publisher, &pp[i]);
    }
    /* In the middle of the burst. */
    s_wait_metric(&b, "snapbus_events_accepted_total", 60000);
    uint64_t t_term = sbt_now_ms();
    assert_int_equal(kill(b.pid, SIGTERM), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(pt[i], NULL);
    assert_int_equal(sbt_broker_stop(&b, 120), 0);
    uint64_t t_exit = sbt_now_ms();
    s_running = NULL;
    atomic_store(&sc.broker_gone, 1);
    pthread_join(st, NULL);
    assert_int_equal(atomic_load(&sc.done), 1);

    uint64_t n_acked = 0, missing = 0, explained = 0;
    for (uint64_t s = 1; s < S_MAX_SEQ; s++) {
        if (!atomic_load(&acked[s]))
            continue;
        n_acked++;
        if (atomic_load(&sc.seen[s]))
            continue;
        int covered = 0;
        for (uint64_t k = 0; k < sc.losses && k < 64; k++)
            covered |= s >= sc.loss_from[k] && s <= sc.loss_to[k];
        missing++;
        explained += covered;
    }
    printf("# round %d: acked %llu (sequenced %llu, published %llu), received %llu, "
           "missing %llu (reported lost %llu), losses %llu, gaps %llu, filled %llu, "
           "duplicates %llu; SIGTERM to exit %llu ms\n",
           round, (unsigned long long)n_acked,
           (unsigned long long)atomic_load(&pp[0].n_acked),
           (unsigned long long)atomic_load(&pp[1].n_acked),
           (unsigned long long)sc.events, (unsigned long long)missing,
           (unsigned long long)explained, (unsigned long long)sc.losses,
           (unsigned long long)sc.st.gaps, (unsigned long long)sc.st.filled,
           (unsigned long long)sc.dups, (unsigned long long)(t_exit - t_term));
    assert_true(n_acked >= 60000 / 2);
    assert_int_equal(sc.dups, 0);
    /* Every acked event arrived, or the subscriber said it lost it. */
    assert_int_equal(missing, explained);
    free(sc.seen);
    free(acked);
}

static void
test_sigterm_in_a_burst_every_acked_event_reaches_the_subscriber(void **state)
{
    (void)state;
    for (int round = 1; round <= 2; round++)
        s_tail_round(round);
}

/* ---- no hangs ----------------------------------------------------------- */

/* An endpoint where no broker listens: one that a broker had. */
static void
s_dead_endpoint(char *ep, size_t n)
{
    sbt_broker b;

    assert_int_equal(sbt_broker_start(&b, NULL), 0);
    snprintf(ep, n, "%s", b.ingest);
    assert_int_equal(sbt_broker_stop(&b, 60), 0);
}

static void
test_pub_without_broker_exits_non_zero_within_T(void **state)
{
    char ep[256], dir[64];
    s_proc p;

    (void)state;
    s_dir(dir, sizeof dir);
    s_dead_endpoint(ep, sizeof ep);
    for (int i = 0; i < 2; i++) {
        const char *ack = i ? "sequenced" : "none";
        const char *argv[] = {SNAPBUS_CLI_PATH, "pub", "-e", ep, "--ack", ack,
                              "-T", "2000", "hello", NULL};
        uint64_t t0 = sbt_now_ms();
        s_spawn(&p, dir, argv);
        int rc = s_reap(&p, 60000);
        uint64_t ms = sbt_now_ms() - t0;
        const char *out = s_slurp(p.out);
        printf("# pub --ack %s -T 2000, no broker: exit %d after %llu ms: %s", ack, rc,
               (unsigned long long)ms, out);
        assert_int_equal(rc, 3);
        assert_non_null(strstr(out, "no broker answered at"));
        assert_non_null(strstr(out, "within 2000 ms"));
        assert_non_null(strstr(out, "sent=0"));
        assert_true(ms < 2000 + 8000); /* -T is the whole wait */
    }
    s_rmdir(dir);
}

static void
test_replay_exits_within_T_when_the_broker_stops(void **state)
{
    const char *extra[] = {"--metrics", "127.0.0.1:0", NULL};
    static sbt_broker b;
    char dir[64], file[128];
    s_proc p;

    (void)state;
    s_dir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/burst.rec", dir);
    s_generate(file, 2000000);
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    s_running = &b;
    const char *argv[] = {SNAPBUS_CLI_PATH, "replay", "-q", "-T", "3000", "-e",
                          b.ingest, file, NULL};
    s_spawn(&p, dir, argv);
    s_wait_metric(&b, "snapbus_events_accepted_total", 20000);
    uint64_t t0 = sbt_now_ms();
    assert_int_equal(kill(b.pid, SIGTERM), 0);
    int rc = s_reap(&p, 120000);
    uint64_t ms = sbt_now_ms() - t0;
    const char *out = s_slurp(p.out);
    printf("# replay -T 3000, broker SIGTERMed: exit %d after %llu ms: %s", rc,
           (unsigned long long)ms, out);
    assert_int_equal(sbt_broker_stop(&b, 120), 0);
    s_running = NULL;
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "shutting down"));
    assert_non_null(strstr(out, "sent="));
    assert_true(ms < 3000 + 30000);

    /* kill -9 instead: nobody says "shutting down"; the fate is unknown. */
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    s_running = &b;
    const char *argv2[] = {SNAPBUS_CLI_PATH, "replay", "-q", "-T", "3000", "-e",
                           b.ingest, file, NULL};
    s_spawn(&p, dir, argv2);
    s_wait_metric(&b, "snapbus_events_accepted_total", 20000);
    t0 = sbt_now_ms();
    assert_int_equal(kill(b.pid, SIGKILL), 0);
    rc = s_reap(&p, 120000);
    ms = sbt_now_ms() - t0;
    out = s_slurp(p.out);
    printf("# replay -T 3000, broker killed: exit %d after %llu ms: %s", rc,
           (unsigned long long)ms, out);
    waitpid(b.pid, NULL, 0);
    b.pid = 0;
    s_running = NULL;
    assert_int_equal(rc, 3);
    assert_null(strstr(out, "shutting down"));
    assert_non_null(strstr(out, "fate unknown"));
    assert_true(ms < 3000 + 30000);
    s_rmdir(dir);
}

static void
test_pub_after_kill9_says_fate_unknown_not_shutting_down(void **state)
{
    /* Held: the request is read but never acked, as if in flight. */
    const char *extra[] = {"--metrics", "127.0.0.1:0", "--hold", "ingest->sequencer",
                           NULL};
    static sbt_broker b;
    char dir[64];
    s_proc p;

    (void)state;
    s_dir(dir, sizeof dir);
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    s_running = &b;
    const char *argv[] = {SNAPBUS_CLI_PATH, "pub", "-e", b.ingest, "--ack", "sequenced",
                          "-T", "3000", "a", "b", "c", NULL};
    s_spawn(&p, dir, argv);
    s_wait_metric(&b, "snapbus_requests_total", 1);
    uint64_t t0 = sbt_now_ms();
    assert_int_equal(kill(b.pid, SIGKILL), 0);
    int rc = s_reap(&p, 60000);
    uint64_t ms = sbt_now_ms() - t0;
    const char *out = s_slurp(p.out);
    printf("# pub after kill -9: exit %d after %llu ms: %s", rc, (unsigned long long)ms, out);
    waitpid(b.pid, NULL, 0);
    b.pid = 0;
    s_running = NULL;
    assert_int_equal(rc, 3);
    assert_null(strstr(out, "shutting down"));
    assert_non_null(strstr(out, "error: timed out, fate unknown"));
    assert_non_null(strstr(out, "fate unknown=3"));
    s_rmdir(dir);
}

/* ---- replay --retry across a restart ------------------------------------ */

typedef struct {
    uint64_t events, batches, max_seq, dups;
    uint8_t *pseq; /* by producer seq */
    uint64_t n;
    int bad;
} s_count;

static void
s_count_batch(sb_snapshot *b, void *arg)
{
    s_count *c = arg;

    c->batches++;
    for (size_t i = 0; i < sb_snapshot_count(b); i++) {
        sb_snapshot_event e;
        sb_snapshot_event_get(b, i, &e);
        c->events++;
        if (e.seq > c->max_seq)
            c->max_seq = e.seq;
        if (strcmp(e.producer_id, "it-retry") != 0 || e.producer_seq == 0 ||
            e.producer_seq > c->n)
            c->bad++;
        else if (c->pseq[e.producer_seq]++ != 0)
            c->dups++;
    }
    sb_snapshot_destroy(&b);
}

static void
test_replay_retry_across_a_restart_no_duplicates_no_gaps(void **state)
{
    enum { N = 300000 };
    static sbt_broker b;
    char dir[64], data[128], file[128];
    char ing[256], pub[256], qry[256];
    s_proc p;

    (void)state;
    s_dir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/burst.rec", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    s_generate(file, N);
    const char *extra[] = {"--metrics", "127.0.0.1:0", "--data-dir", data, NULL};
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    s_running = &b;
    snprintf(ing, sizeof ing, "%s", b.ingest);
    snprintf(pub, sizeof pub, "%s", b.pub);
    snprintf(qry, sizeof qry, "%s", b.query);
    const char *argv[] = {SNAPBUS_CLI_PATH, "replay", "-q", "--retry", "-P", "it-retry",
                          "-T", "60000", "-e", ing, file, NULL};
    s_spawn(&p, dir, argv);
    s_wait_metric(&b, "snapbus_events_accepted_total", N / 10);
    assert_int_equal(sbt_broker_stop(&b, 120), 0);
    assert_int_equal(waitpid(p.pid, NULL, WNOHANG), 0); /* still replaying */
    /* The same data directory and endpoints: the replay finds it again. */
    const char *again[] = {"--metrics", "127.0.0.1:0", "--data-dir", data,
                           "--ingest", ing, "--pub", pub, "--query", qry, NULL};
    assert_int_equal(sbt_broker_start(&b, again), 0);
    int rc = s_reap(&p, 300000);
    const char *out = s_slurp(p.out);
    double second = s_metric(&b, "snapbus_events_accepted_total");
    printf("# replay --retry across a restart: exit %d, %.0f events taken by the "
           "restarted broker: %s", rc, second, out);
    assert_true(second > 0 && second < N); /* the restart was mid-replay */
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "sent=300000 acked=300000 refused=0"));

    /* Everything, from the log: each producer seq once, seqs 1..N. */
    s_count c = {.n = N, .pseq = calloc(N + 1, 1)};
    sb_fetch_opts fo;
    sb_fetch_info fi;
    sb_fetch_opts_defaults(&fo);
    fo.from_seq = 1;
    for (;;) {
        assert_int_equal(sb_fetch(b.query, &fo, s_count_batch, &c, &fi, 30000), SB_OK);
        if (!fi.more)
            break;
        fo.after_batch_id = fi.last_batch_id;
    }
    printf("# log after the restart: %llu events in %llu batches, max seq %llu, "
           "duplicates %llu\n",
           (unsigned long long)c.events, (unsigned long long)c.batches,
           (unsigned long long)c.max_seq, (unsigned long long)c.dups);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.dups, 0);
    assert_int_equal(c.events, N);
    assert_int_equal(c.max_seq, N); /* no gap: seqs 1..N */
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(c.pseq[i], 1);
    free(c.pseq);
    assert_int_equal(sbt_broker_stop(&b, 120), 0);
    s_running = NULL;
    s_rmdir(dir);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_teardown(
            test_sigterm_in_a_burst_every_acked_event_reaches_the_subscriber, s_teardown),
        cmocka_unit_test_teardown(test_pub_without_broker_exits_non_zero_within_T,
                                  s_teardown),
        cmocka_unit_test_teardown(test_replay_exits_within_T_when_the_broker_stops,
                                  s_teardown),
        cmocka_unit_test_teardown(
            test_pub_after_kill9_says_fate_unknown_not_shutting_down, s_teardown),
        cmocka_unit_test_teardown(
            test_replay_retry_across_a_restart_no_duplicates_no_gaps, s_teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
