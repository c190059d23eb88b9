/* Operations against the real broker: the metrics endpoint counts exactly
 * what a test did (events accepted and refused by reason, batches and
 * their sizes, queue bounds), the probes answer, `snapbus stat` reads it,
 * and SIGTERM in the middle of a burst loses nothing that was acked: every
 * event acked `sequenced` reaches the subscriber, and the broker exits 0. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include <snapbus/snapbus.h>

#define S_BODY (256 * 1024)

/* The broker of the running test, stopped by the teardown if a failed
 * assertion left it running (so no broker outlives a failed test). */
static sbt_broker *s_running;

static int
s_teardown(void **state)
{
    if (s_running != NULL && s_running->pid > 0)
        sbt_broker_stop(s_running, 10);
    s_running = NULL;
    return 0;
}

/* The value of one sample line ("name{labels} value"); fails if absent. */
static double
s_metric(const char *text, const char *sample)
{
    char want[256];
    const char *p;

    snprintf(want, sizeof want, "\n%s ", sample);
    p = strstr(text, want);
    if (p == NULL)
        fail_msg("no sample \"%s\" in the scrape", sample);
    return strtod(p + strlen(want), NULL);
}

static int
s_count_lines(const char *text, const char *prefix)
{
    int n = 0;
    char want[256];

    snprintf(want, sizeof want, "\n%s", prefix);
    for (const char *p = text; (p = strstr(p, want)) != NULL; p++)
        n++;
    return n;
}

/* Bucket bounds the broker uses (sb_fanout_size_bounds). */
static const unsigned s_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500,
                                    1000, 2000, 5000, 10000};
#define S_NB (sizeof s_bounds / sizeof s_bounds[0])

typedef struct {
    const char *endpoint;
    uint64_t want;        /* stop once this many events arrived */
    uint8_t *seen;        /* by seq, [cap] */
    uint64_t cap;
    atomic_uint_fast64_t events; /* read by the test's thread meanwhile */
    uint64_t batches, dups, shutdown_batches;
    uint64_t by_size[S_NB + 1];
    atomic_int stop, ready;
} sub_ctx;

static void *
s_sub(void *arg)
{
    sub_ctx *s = arg;
    sb_subscriber_opts o;
    sb_subscriber *sub;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = s->endpoint;
    o.rcvhwm = 1000000;
    if (sb_subscriber_new(&sub, &o) != SB_OK || sb_subscriber_subscribe(sub, "") != SB_OK)
        return NULL;
    atomic_store(&s->ready, 1);
    while (!atomic_load(&s->stop) && (s->want == 0 || s->events < s->want)) {
        sb_snapshot *b;
        if (sb_subscriber_recv(sub, &b, 100) != SB_OK)
            continue;
        size_t n = sb_snapshot_count(b), k = 0;
        while (k < S_NB && n > s_bounds[k])
            k++;
        s->by_size[k]++;
        s->batches++;
        if (sb_snapshot_close_reason(b) == SB_CLOSE_SHUTDOWN)
            s->shutdown_batches++;
        for (size_t i = 0; i < n; i++) {
            sb_snapshot_event e;
            sb_snapshot_event_get(b, i, &e);
            if (e.seq < s->cap && s->seen[e.seq]++ == 0)
                s->events++;
            else
                s->dups++;
        }
        sb_snapshot_destroy(&b);
    }
    sb_subscriber_destroy(&sub);
    return NULL;
}

static void
s_wait_ready(sub_ctx *s)
{
    while (!atomic_load(&s->ready))
        usleep(1000);
    usleep(300000); /* the SUB's subscription reaches the PUB */
}

typedef struct {
    atomic_uint_fast64_t ok; /* read by the test's thread meanwhile */
    uint64_t too_large, closed, other;
    uint8_t *acked; /* by seq */
    uint64_t cap;
} ack_ctx;

static void
s_on_ack(const sb_ack_info *a, void *arg)
{
    ack_ctx *c = arg;

    if (a->err == SB_OK) {
        c->ok++;
        if (a->seq < c->cap)
            c->acked[a->seq] = 1;
    } else if (a->err == SB_ETOOBIG) {
        c->too_large++;
    } else if (a->err == SB_ECLOSED) {
        c->closed++;
    } else {
        c->other++;
    }
}

static void
test_metrics_count_what_happened(void **state)
{
    enum { N = 1000, M = 7, Q = 16 };
    const char *args[] = {"--metrics", "127.0.0.1:0", "--queue", "16",
                          "--default-delay-ms", "0", "--max-batch-events", "10",
                          "--max-payload-bytes", "1000", NULL};
    static sbt_broker b; /* static: the teardown may still need it */
    sub_ctx s = {.want = N, .cap = N + M + 1};
    ack_ctx ac = {.cap = N + M + 1};
    pthread_t st;
    char *body = malloc(S_BODY);
    char small[1000], big[2000], agg[32];

    assert_int_equal(sbt_broker_start(&b, args), 0);
    s_running = &b;
    assert_true(strncmp(b.metrics, "http://127.0.0.1:", 17) == 0);
    assert_int_equal(sbt_http_get(b.metrics, "/healthz", body, S_BODY, 5000), 200);
    assert_string_equal(body, "ok\n");
    assert_int_equal(sbt_http_get(b.metrics, "/readyz", body, S_BODY, 5000), 200);
    assert_string_equal(body, "ready\n");
    assert_int_equal(sbt_http_get(b.metrics, "/nope", body, S_BODY, 5000), 404);

    s.endpoint = b.pub;
    s.seen = calloc(s.cap, 1);
    ac.acked = calloc(ac.cap, 1);
    pthread_create(&st, NULL, s_sub, &s);
    s_wait_ready(&s);

    /* N good events over 5 aggregates, and M whose payload is over
     * limits.max_payload_bytes, mixed into the same requests. */
    sb_publisher_opts o;
    sb_publisher *pub;
    sb_publisher_stats ps;
    sb_publisher_opts_defaults(&o);
    o.endpoint = b.ingest;
    o.ack = SB_ACK_SEQUENCED;
    o.timeout_ms = 30000;
    assert_int_equal(sb_publisher_new(&pub, &o), SB_OK);
    sb_publisher_on_ack(pub, s_on_ack, &ac);
    memset(small, 's', sizeof small);
    memset(big, 'b', sizeof big);
    for (int i = 0, bad = 0; i < N; i++) {
        sb_pub_event ev = {0};
        snprintf(agg, sizeof agg, "ops/%d", i % 5);
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = small;
        ev.payload_len = 1 + (size_t) i % 100;
        assert_int_equal(sb_publisher_publish(pub, &ev, 0, NULL), SB_OK);
        if (i % 140 == 0 && bad < M) {
            ev.payload = big;
            ev.payload_len = sizeof big;
            assert_int_equal(sb_publisher_publish(pub, &ev, 0, NULL), SB_OK);
            bad++;
        }
    }
    assert_int_equal(sb_publisher_wait_all(pub, 30000), SB_OK);
    sb_publisher_stats_get(pub, &ps);
    sb_publisher_destroy(&pub);
    assert_int_equal(ac.ok, N);
    assert_int_equal(ac.too_large, M);

    uint64_t deadline = sbt_now_ms() + 30000;
    while (s.events < N && sbt_now_ms() < deadline)
        usleep(10000);
    atomic_store(&s.stop, 1);
    pthread_join(st, NULL);
    assert_int_equal(s.events, N);
    assert_int_equal(s.dups, 0);

    /* The fan-out counts a batch just after sending it: wait for the count
     * to catch up with what the subscriber already holds. */
    do {
        assert_int_equal(sbt_http_get(b.metrics, "/metrics", body, S_BODY, 5000), 200);
    } while (s_metric(body, "snapbus_events_published_total") < N &&
             sbt_now_ms() < deadline && usleep(10000) == 0);

    assert_non_null(strstr(body, "# TYPE snapbus_events_accepted_total counter\n"));
    assert_non_null(strstr(body, "# TYPE snapbus_batch_events histogram\n"));
    assert_int_equal(s_metric(body, "snapbus_ready"), 1);
    assert_int_equal(s_metric(body, "snapbus_events_accepted_total"), N);
    assert_int_equal(s_metric(body, "snapbus_events_refused_total"), M);
    assert_int_equal(s_metric(body, "snapbus_refusals_total{reason=\"too_large\"}"), M);
    assert_int_equal(s_metric(body, "snapbus_refusals_total{reason=\"invalid\"}"), 0);
    assert_int_equal(s_metric(body, "snapbus_refusals_total{reason=\"shutting_down\"}"), 0);
    assert_int_equal(s_metric(body, "snapbus_requests_total"), ps.requests);
    assert_int_equal(s_metric(body, "snapbus_replies_sent_total"),
                     ps.requests + s_metric(body, "snapbus_hellos_total"));
    assert_int_equal(s_metric(body, "snapbus_replies_lost_total"), 0);
    assert_int_equal(s_metric(body, "snapbus_last_seq"), N);
    assert_int_equal(s_metric(body, "snapbus_last_published_seq"), N);
    assert_int_equal(s_metric(body, "snapbus_events_published_total"), N);
    assert_int_equal(s_metric(body, "snapbus_router_events_total"), N);

    /* Batches: the router's count by reason, the fan-out's count, the
     * histogram and the subscriber all agree, bucket by bucket. */
    double flushed = 0;
    const char *reasons[] = {"delay", "immediate", "max_events", "max_bytes", "shutdown"};
    for (int i = 0; i < 5; i++) {
        char sample[128];
        snprintf(sample, sizeof sample, "snapbus_batches_flushed_total{reason=\"%s\"}", reasons[i]);
        flushed += s_metric(body, sample);
    }
    assert_int_equal(s_metric(body, "snapbus_batches_flushed_total{reason=\"delay\"}"), 0);
    assert_int_equal(s_metric(body, "snapbus_batches_flushed_total{reason=\"shutdown\"}"), 0);
    assert_int_equal(flushed, s.batches);
    assert_int_equal(s_metric(body, "snapbus_batches_published_total"), s.batches);
    assert_int_equal(s_metric(body, "snapbus_batch_events_count"), s.batches);
    assert_int_equal(s_metric(body, "snapbus_batch_events_sum"), N);
    uint64_t cum = 0;
    for (size_t k = 0; k <= S_NB; k++) {
        char sample[128];
        cum += s.by_size[k];
        if (k < S_NB)
            snprintf(sample, sizeof sample, "snapbus_batch_events_bucket{le=\"%u\"}", s_bounds[k]);
        else
            snprintf(sample, sizeof sample, "snapbus_batch_events_bucket{le=\"+Inf\"}");
        assert_int_equal(s_metric(body, sample), cum);
    }
    /* max_batch_events = 10: no batch is larger. */
    assert_int_equal(s_metric(body, "snapbus_batch_events_bucket{le=\"10\"}"), s.batches);

    /* Every queue between actors has the configured bound, and each
     * family has one sample per queue. */
    int nq = s_count_lines(body, "snapbus_queue_capacity{");
    assert_true(nq >= 7);
    assert_int_equal(s_count_lines(body, "snapbus_queue_depth{"), nq);
    assert_int_equal(s_count_lines(body, "snapbus_queue_wait_seconds_total{"), nq);
    for (const char *p = body; (p = strstr(p, "\nsnapbus_queue_capacity{")) != NULL; p++) {
        char sample[160], high[200];
        int len = (int) strcspn(p + 1, " ");
        snprintf(sample, sizeof sample, "%.*s", len, p + 1);
        assert_int_equal(s_metric(body, sample), Q);
        snprintf(high, sizeof high, "snapbus_queue_high_water%s", sample + strlen("snapbus_queue_capacity"));
        assert_true(s_metric(body, high) <= Q);
    }
    assert_int_equal(s_metric(body, "snapbus_queue_sent_total{queue=\"ingest->sequencer\"}"),
                     ps.requests);

    /* Bad input is counted where it belongs and changes nothing else. */
    const void *frames[2] = {"x", "y"};
    size_t lens[2] = {1, 1};
    char reply[512];
    size_t rlen;
    assert_true(sbt_raw_request(b.ingest, frames, lens, 2, reply, sizeof reply, &rlen, 5000) >= 1);
    assert_int_equal(sbt_http_get(b.metrics, "/metrics", body, S_BODY, 5000), 200);
    assert_int_equal(s_metric(body, "snapbus_bad_frames_total"), 1);
    assert_int_equal(s_metric(body, "snapbus_refusals_total{reason=\"invalid\"}"), 1);
    assert_int_equal(s_metric(body, "snapbus_events_accepted_total"), N);

#ifdef SNAPBUS_CLI_PATH
    /* snapbus stat reads the same endpoint, as a table and as JSON. */
    char cmd[512], out[65536];
    size_t n;
    FILE *p;
    snprintf(cmd, sizeof cmd, "%s stat --url %s --json", SNAPBUS_CLI_PATH, b.metrics);
    assert_non_null(p = popen(cmd, "r"));
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(out, "\"snapbus_events_accepted_total\":1000,"));
    assert_non_null(strstr(out, "{\"labels\":{\"reason\":\"too_large\"},\"value\":7}"));
    snprintf(cmd, sizeof cmd, "%s stat --url %s", SNAPBUS_CLI_PATH, b.metrics);
    assert_non_null(p = popen(cmd, "r"));
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(out, "accepted 1000"));
    assert_non_null(strstr(out, "too_large 7"));
    assert_non_null(strstr(out, "ingest->sequencer"));
    snprintf(cmd, sizeof cmd, "%s stat --url %s --ready >/dev/null", SNAPBUS_CLI_PATH, b.metrics);
    assert_int_equal(system(cmd), 0);
#endif

    assert_int_equal(sbt_broker_stop(&b, 60), 0);
    printf("# metrics: %d accepted, %d refused too_large, %llu batches, %llu requests: all counted\n",
           N, M, (unsigned long long) s.batches, (unsigned long long) ps.requests);
    free(s.seen);
    free(ac.acked);
    free(body);
}

typedef struct {
    const char *endpoint;
    ack_ctx ac;
    uint64_t sent;
    int rc;
    atomic_int stop;
} burst_ctx;

static void *
s_burst(void *arg)
{
    burst_ctx *c = arg;
    sb_publisher_opts o;
    sb_publisher *pub;
    char agg[32], payload[64];

    memset(payload, 'p', sizeof payload);
    sb_publisher_opts_defaults(&o);
    o.endpoint = c->endpoint;
    o.ack = SB_ACK_SEQUENCED;
    o.timeout_ms = 5000; /* the broker exits under it: do not wait long */
    if ((c->rc = sb_publisher_new(&pub, &o)) != SB_OK)
        return NULL;
    sb_publisher_on_ack(pub, s_on_ack, &c->ac);
    /* Publish until the broker says it is shutting down (or is gone). */
    for (uint64_t i = 0; i + 1 < c->ac.cap && c->ac.closed == 0 && !atomic_load(&c->stop); i++) {
        sb_pub_event ev = {0};
        snprintf(agg, sizeof agg, "burst/%llu", (unsigned long long) (i % 50));
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = payload;
        ev.payload_len = sizeof payload;
        if ((c->rc = sb_publisher_publish(pub, &ev, 0, NULL)) != SB_OK)
            break;
        c->sent++;
    }
    (void) sb_publisher_wait_all(pub, 5000);
    sb_publisher_destroy(&pub); /* reports what is still unanswered */
    return NULL;
}

/* Batches are held 100 ms, so SIGTERM always finds open ones. */
static void
test_sigterm_during_burst_loses_no_acked_event(void **state)
{
    enum { CAP = 2000000 };
    const char *args[] = {"--metrics", "127.0.0.1:0", "--default-delay-ms", "100",
                          "--max-batch-events", "200", NULL};
    static sbt_broker b; /* static: the teardown may still need it */
    sub_ctx s = {.cap = CAP};
    burst_ctx c = {0};
    pthread_t st, pt;
    char *body = malloc(S_BODY);

    assert_int_equal(sbt_broker_start(&b, args), 0);
    s_running = &b;
    s.endpoint = b.pub;
    s.seen = calloc(CAP, 1);
    pthread_create(&st, NULL, s_sub, &s);
    s_wait_ready(&s);

    c.endpoint = b.ingest;
    c.ac.cap = CAP;
    c.ac.acked = calloc(CAP, 1);
    pthread_create(&pt, NULL, s_burst, &c);
    uint64_t deadline = sbt_now_ms() + 60000;
    while (c.ac.ok < 20000 && sbt_now_ms() < deadline)
        usleep(1000);
    assert_true(c.ac.ok >= 20000);

    uint64_t t0 = sbt_now_ms();
    pid_t pid = b.pid;
    assert_int_equal(kill(pid, SIGTERM), 0);
    /* The harness waits for the exit (its own SIGTERM is then a no-op). */
    int code = sbt_broker_stop(&b, 60);
    uint64_t stop_ms = sbt_now_ms() - t0;
    assert_int_equal(code, 0);
    atomic_store(&c.stop, 1);
    pthread_join(pt, NULL);

    /* Everything acked was published before the exit: the subscriber reads
     * what is already in its socket, then nothing more comes. */
    uint64_t acked = 0, missing = 0, last = atomic_load(&s.events), idle = 0;
    deadline = sbt_now_ms() + 30000;
    while (idle < 1000 && sbt_now_ms() < deadline) {
        usleep(50000);
        uint64_t now = atomic_load(&s.events);
        idle = now == last ? idle + 50 : 0;
        last = now;
    }
    atomic_store(&s.stop, 1);
    pthread_join(st, NULL);
    for (uint64_t q = 1; q < CAP; q++)
        if (c.ac.acked[q]) {
            acked++;
            missing += s.seen[q] == 0;
        }
    assert_int_equal(acked, c.ac.ok);
    assert_int_equal(missing, 0);
    assert_int_equal(s.dups, 0);
    assert_int_equal(c.ac.too_large, 0);
    /* Nothing reached subscribers that was not accepted: every seen seq
     * was assigned (no gaps below the highest). */
    uint64_t high = 0;
    for (uint64_t q = 1; q < CAP; q++)
        if (s.seen[q])
            high = q;
    assert_int_equal(s.events, high);
    assert_true(s.shutdown_batches > 0);

    /* The log tells the story: stopping, then stopped with the drain. */
    char path[128], log[65536];
    snprintf(path, sizeof path, "%s/broker.log", b.dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(log, 1, sizeof log - 1, f);
    log[n] = '\0';
    fclose(f);
    assert_non_null(strstr(log, "event=broker.started "));
    assert_non_null(strstr(log, "event=broker.stopping signal=15"));
    assert_non_null(strstr(log, "event=broker.stopped "));
    printf("# SIGTERM after %llu acked: %llu acked in all, %llu published to the subscriber "
           "(%llu in shutdown batches), %llu refused shutting_down, exit 0 in %llu ms\n",
           (unsigned long long) 20000, (unsigned long long) atomic_load(&c.ac.ok),
           (unsigned long long) atomic_load(&s.events), (unsigned long long) s.shutdown_batches,
           (unsigned long long) c.ac.closed, (unsigned long long) stop_ms);
    free(s.seen);
    free(c.ac.acked);
    free(body);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_teardown(test_metrics_count_what_happened, s_teardown),
        cmocka_unit_test_teardown(test_sigterm_during_burst_loses_no_acked_event,
                                  s_teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
