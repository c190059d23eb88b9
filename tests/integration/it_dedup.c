/* Idempotent publishing against the real snapbusd:
 * - a resend after a lost ack (the client drops the reply, then resends
 *   after its reply timeout) gets ERR_DUPLICATE with the original seq, and
 *   the log and the subscribers hold the event once;
 * - a request mixing a duplicate with new events is answered correctly at
 *   every ack level, and one made only of duplicates too;
 * - a producer that restarts and replays its last 100,000 events gets zero
 *   new seqs, and every reply carries the event's original seq;
 * - the broker killed (SIGKILL) between the original and the resend, then
 *   restarted on its log: still no duplicate (index rebuilt from the log);
 * - a producer seq older than the window is refused with the typed
 *   ERR_BEYOND_DEDUP_HORIZON (SB_EHORIZON), counted on /metrics;
 * - a client whose broker died holding its replies resends them by itself
 *   when it reconnects, and gets the originals back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include "sbc_testing.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

#define REPLAY 100000

static sbt_broker s_broker;
static char s_data[128];

typedef struct {
    uint64_t n, ok, dup, horizon, other;
    uint64_t *seq; /* by token */
    sb_err *err;   /* by token */
    uint64_t cap;
} acks;

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    acks *k = ctx;

    k->n++;
    if (a->err == SB_OK)
        k->ok++;
    else if (a->err == SB_EDUP)
        k->dup++;
    else if (a->err == SB_EHORIZON)
        k->horizon++;
    else
        k->other++;
    if (a->token < k->cap) {
        k->seq[a->token] = a->seq;
        k->err[a->token] = a->err;
    }
}

static void
s_acks_init(acks *k, uint64_t cap)
{
    memset(k, 0, sizeof *k);
    k->cap = cap + 1;
    k->seq = calloc(k->cap, sizeof *k->seq);
    k->err = calloc(k->cap, sizeof *k->err);
    assert_non_null(k->seq);
    assert_non_null(k->err);
}

static void
s_acks_free(acks *k)
{
    free(k->seq);
    free(k->err);
}

static int
s_start(const char *const *more)
{
    const char *extra[32] = {"--default-delay-ms", "0",
                             "--log-level",        "notice",
                             "--metrics",          "127.0.0.1:0"};
    int n = 6;

    if (s_data[0] != '\0') {
        extra[n++] = "--data-dir";
        extra[n++] = s_data;
    }
    for (int i = 0; more != NULL && more[i] != NULL && n < 30; i++)
        extra[n++] = more[i];
    extra[n] = NULL;
    return sbt_broker_start(&s_broker, extra);
}

static void
s_forget(void)
{
    char cmd[160];

    snprintf(cmd, sizeof cmd, "rm -rf %s", s_broker.dir);
    if (s_broker.dir[0] != '\0')
        (void)system(cmd);
}

static int
setup(void **state)
{
    (void)state;
    s_data[0] = '\0';
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    /* A clean stop must be clean (exit 0): under ASan that includes no
     * leak in the broker. On failure the broker's dir and log are kept. */
    if (s_broker.pid > 0 && sbt_broker_stop(&s_broker, 30) != 0) {
        fprintf(stderr, "snapbusd did not stop cleanly; log in %s\n",
                s_broker.dir);
        return -1;
    }
    s_forget();
    if (s_data[0] != '\0') {
        char cmd[160];
        snprintf(cmd, sizeof cmd, "rm -rf %s", s_data);
        (void)system(cmd);
        s_data[0] = '\0';
    }
    return 0;
}

static sb_publisher *
s_pub(const char *producer, sb_ack ack, acks *k)
{
    sb_publisher_opts o;
    sb_publisher *p;

    sb_publisher_opts_defaults(&o);
    o.endpoint = s_broker.ingest;
    o.ack = ack;
    o.producer_id = producer;
    o.timeout_ms = 60000;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, k);
    return p;
}

static void
s_publish(sb_publisher *p, int i)
{
    char payload[32];
    sb_pub_event ev = {0};
    int n = snprintf(payload, sizeof payload, "event %d", i);

    ev.aggregate = i % 2 ? "dd/a" : "dd/b";
    ev.type = "T";
    ev.payload = payload;
    ev.payload_len = (size_t)n;
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
}

/* ---- raw requests ------------------------------------------------------ */

typedef struct {
    const char *producer;
    uint64_t pseq;
    const char *event_id;
} raw_ev;

/* One publish on a fresh DEALER; the reply (to be freed by the caller),
 * or NULL if none came within wait_ms. */
static Snapbus__Reply *
s_raw_try(int ack, const raw_ev *evs, size_t n, int wait_ms)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Publish p = SNAPBUS__PUBLISH__INIT;
    Snapbus__Event e[8], *ep[8];
    static uint64_t id = 1000;
    uint8_t buf[4096], rep[4096];
    size_t rep_len = 0;

    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        snapbus__event__init(&e[i]);
        e[i].aggregate = "dd/raw";
        e[i].type = "T";
        e[i].producer_id = (char *)(evs[i].producer ? evs[i].producer : "");
        e[i].producer_seq = evs[i].pseq;
        e[i].event_id = (char *)(evs[i].event_id ? evs[i].event_id : "");
        ep[i] = &e[i];
    }
    p.ack = (Snapbus__AckLevel)ack;
    p.events = ep;
    p.n_events = n;
    r.version = 1;
    r.request_id = ++id;
    r.body_case = SNAPBUS__REQUEST__BODY_PUBLISH;
    r.publish = &p;
    size_t len = snapbus__request__pack(&r, buf);
    const void *frames[1] = {buf};
    size_t lens[1] = {len};
    int nf = sbt_raw_request(s_broker.ingest, frames, lens, 1, rep, sizeof rep,
                             &rep_len, wait_ms);
    if (nf < 0)
        return NULL;
    assert_int_equal(nf, 1);
    Snapbus__Reply *out = snapbus__reply__unpack(NULL, rep_len, rep);
    assert_non_null(out);
    assert_int_equal(out->request_id, id);
    assert_int_equal(out->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_int_equal(out->body_case, SNAPBUS__REPLY__BODY_PUBLISH);
    assert_int_equal(out->publish->n_results, n);
    return out;
}

static Snapbus__Reply *
s_raw_publish(int ack, const raw_ev *evs, size_t n)
{
    Snapbus__Reply *r = s_raw_try(ack, evs, n, 10000);

    assert_non_null(r);
    return r;
}

static uint64_t
s_last_seq(void)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    uint8_t buf[256], rep[1024];
    size_t rep_len = 0;

    r.version = 1;
    r.request_id = 7;
    r.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    r.hello = &h;
    size_t len = snapbus__request__pack(&r, buf);
    const void *frames[1] = {buf};
    size_t lens[1] = {len};
    assert_int_equal(sbt_raw_request(s_broker.ingest, frames, lens, 1, rep,
                                     sizeof rep, &rep_len, 10000),
                     1);
    Snapbus__Reply *h2 = snapbus__reply__unpack(NULL, rep_len, rep);
    assert_non_null(h2);
    assert_non_null(h2->hello);
    uint64_t last = h2->hello->last_seq;
    snapbus__reply__free_unpacked(h2, NULL);
    return last;
}

/* Events in every published batch, read back with fetch pages. */
static uint64_t
s_published_events(void)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, to = 10000;
    uint64_t after = 0, events = 0;
    static uint8_t buf[1 << 20];

    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &to, sizeof to);
    assert_int_equal(zmq_connect(s, s_broker.query), 0);
    for (;;) {
        Snapbus__Request r = SNAPBUS__REQUEST__INIT;
        Snapbus__Fetch f = SNAPBUS__FETCH__INIT;
        uint8_t req[128];
        f.after_batch_id = after;
        r.version = 1;
        r.request_id = after + 1;
        r.body_case = SNAPBUS__REQUEST__BODY_FETCH;
        r.fetch = &f;
        size_t len = snapbus__request__pack(&r, req);
        assert_int_equal(zmq_send(s, req, len, 0), (int)len);
        int n = zmq_recv(s, buf, sizeof buf, 0);
        assert_true(n > 0);
        Snapbus__Reply *rep = snapbus__reply__unpack(NULL, (size_t)n, buf);
        assert_non_null(rep);
        assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
        for (uint32_t i = 0; i < rep->fetch->count; i++) {
            int m = zmq_recv(s, buf, sizeof buf, 0);
            assert_true(m > 0);
            Snapbus__SnapshotBatch *b =
                snapbus__snapshot_batch__unpack(NULL, (size_t)m, buf);
            assert_non_null(b);
            events += b->n_events;
            snapbus__snapshot_batch__free_unpacked(b, NULL);
        }
        int more = rep->fetch->more;
        after = rep->fetch->last_batch_id;
        snapbus__reply__free_unpacked(rep, NULL);
        if (!more)
            break;
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    return events;
}

/* Published events once the count reaches want (acks at `sequenced` come
 * before publishing), or what there is after 60 s; then a moment more, so
 * a surplus would show too. */
static uint64_t
s_published_settled(uint64_t want)
{
    uint64_t n = 0;

    for (uint64_t deadline = sbt_now_ms() + 60000;
         (n = s_published_events()) < want && sbt_now_ms() < deadline;)
        usleep(20000);
    usleep(200000);
    return s_published_events();
}

/* The value of a metric line that starts with `name` on /metrics. */
static uint64_t
s_metric(const char *name)
{
    static char body[1 << 18];
    char *at;

    assert_int_equal(
        sbt_http_get(s_broker.metrics, "/metrics", body, sizeof body, 5000),
        200);
    size_t nl = strlen(name);
    for (at = body; (at = strstr(at, name)) != NULL; at += nl)
        if ((at == body || at[-1] == '\n') && at[nl] == ' ')
            return strtoull(at + nl + 1, NULL, 10);
    fail_msg("metric %s not found", name);
    return 0;
}

/* ---- tests ------------------------------------------------------------- */

static void
test_resend_after_lost_ack_gets_the_original(void **state)
{
    sb_publisher_opts o;
    sb_publisher *p;
    sb_publisher_stats st;
    acks k;

    (void)state;
    assert_int_equal(s_start(NULL), 0);
    /* The reply timeout must outlast a `published` round trip however
     * loaded the machine is (a timed-out resend would be a second resend):
     * measure one (seq 1), and allow fifty times that, 2 s at least. */
    s_acks_init(&k, 16);
    sb_publisher_opts_defaults(&o);
    o.endpoint = s_broker.ingest;
    o.ack = SB_ACK_PUBLISHED;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    uint64_t t0 = sbt_now_ms();
    s_publish(p, 0);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    uint64_t rtt = sbt_now_ms() - t0;
    sb_publisher_destroy(&p);
    s_acks_free(&k);
    int timeout_ms = (int)(rtt * 50 < 2000 ? 2000 : rtt * 50 > 30000 ? 30000 : rtt * 50);

    s_acks_init(&k, 16);
    sb_publisher_opts_defaults(&o);
    o.endpoint = s_broker.ingest;
    o.ack = SB_ACK_PUBLISHED;
    o.producer_id = "lost-ack";
    o.reply_timeout_ms = timeout_ms;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sbc_publisher_test_drop_replies(p, 1); /* the first reply is "lost" */
    sb_publisher_on_ack(p, s_on_ack, &k);
    s_publish(p, 1);
    assert_int_equal(sb_publisher_wait_all(p, 4 * timeout_ms + 60000), SB_OK);
    sb_publisher_stats_get(p, &st);
    print_message("published round trip %llu ms: reply timeout %d ms\n",
                  (unsigned long long)rtt, timeout_ms);
    assert_int_equal(st.resends, 1);
    assert_int_equal(st.duplicates, 1);
    assert_int_equal(k.n, 1);
    assert_int_equal(k.err[1], SB_EDUP);
    assert_int_equal(k.seq[1], 2); /* the original's seq */
    sb_publisher_destroy(&p);

    assert_int_equal(s_last_seq(), 2);
    assert_int_equal(s_published_settled(2), 2);
    assert_int_equal(
        s_metric("snapbus_dedup_duplicates_total{by=\"producer_seq\"}"), 1);
    s_acks_free(&k);
}

static void
test_mixed_requests_at_every_ack_level(void **state)
{
    (void)state;
    assert_int_equal(s_start(NULL), 0);
    /* The originals: seqs 1..3. */
    raw_ev first[3] = {{"mix", 1, NULL}, {"mix", 2, NULL}, {NULL, 0, "id-x"}};
    Snapbus__Reply *r =
        s_raw_publish(SNAPBUS__ACK_LEVEL__ACK_SEQUENCED, first, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r->publish->results[i]->error, 0);
        assert_int_equal(r->publish->results[i]->seq, (uint64_t)i + 1);
    }
    snapbus__reply__free_unpacked(r, NULL);

    uint64_t next = 4;
    for (int ack = 1; ack <= 3; ack++) {
        /* A duplicate by producer seq, a new event, a duplicate by event
         * id, and the new event again (a repeat inside one request). */
        raw_ev mixed[4] = {{"mix", 2, NULL},
                           {"mix", 10 + (uint64_t)ack, NULL},
                           {NULL, 0, "id-x"},
                           {"mix", 10 + (uint64_t)ack, NULL}};
        r = s_raw_publish(ack, mixed, 4);
        Snapbus__EventResult **res = r->publish->results;
        assert_int_equal(res[0]->error, SNAPBUS__ERROR_CODE__ERR_DUPLICATE);
        assert_int_equal(res[0]->seq, 2);
        assert_int_equal(res[0]->aggregate_seq, 2);
        assert_int_equal(res[1]->error, 0);
        assert_int_equal(res[1]->seq, next);
        if (ack == SNAPBUS__ACK_LEVEL__ACK_PUBLISHED)
            assert_true(res[1]->batch_id > 0);
        assert_int_equal(res[2]->error, SNAPBUS__ERROR_CODE__ERR_DUPLICATE);
        assert_int_equal(res[2]->seq, 3);
        assert_int_equal(res[3]->error, SNAPBUS__ERROR_CODE__ERR_DUPLICATE);
        assert_int_equal(res[3]->seq, next);
        snapbus__reply__free_unpacked(r, NULL);
        next++;
    }
    /* Only duplicates, at each level: answered, nothing new. */
    for (int ack = 1; ack <= 3; ack++) {
        raw_ev dups[2] = {{"mix", 1, NULL}, {NULL, 0, "id-x"}};
        r = s_raw_publish(ack, dups, 2);
        assert_int_equal(r->publish->results[0]->error,
                         SNAPBUS__ERROR_CODE__ERR_DUPLICATE);
        assert_int_equal(r->publish->results[0]->seq, 1);
        assert_int_equal(r->publish->results[1]->seq, 3);
        snapbus__reply__free_unpacked(r, NULL);
    }
    assert_int_equal(s_last_seq(), 6);
    assert_int_equal(s_published_settled(6), 6);
}

static void
test_fire_and_forget_hears_only_of_refusals(void **state)
{
    const char *more[] = {"--set", "dedup.producer_window=4", NULL};
    Snapbus__Reply *r;

    (void)state;
    assert_int_equal(s_start(more), 0);
    raw_ev first[8] = {{"ff", 1, NULL}, {"ff", 2, NULL}, {"ff", 3, NULL},
                       {"ff", 4, NULL}, {"ff", 5, NULL}, {"ff", 6, NULL},
                       {"ff", 7, NULL}, {"ff", 8, NULL}};
    r = s_raw_publish(SNAPBUS__ACK_LEVEL__ACK_SEQUENCED, first, 8);
    snapbus__reply__free_unpacked(r, NULL);
    /* Duplicates are no error: fire-and-forget hears nothing of them. */
    raw_ev dups[2] = {{"ff", 7, NULL}, {"ff", 9, NULL}};
    assert_null(s_raw_try(SNAPBUS__ACK_LEVEL__ACK_NONE, dups, 2, 500));
    /* Beyond the window (9 - 4 + 1 = 6): a refusal, so one reply, at once,
     * listing every event. */
    raw_ev old[2] = {{"ff", 2, NULL}, {"ff", 10, NULL}};
    r = s_raw_try(SNAPBUS__ACK_LEVEL__ACK_NONE, old, 2, 10000);
    assert_non_null(r);
    assert_int_equal(r->publish->results[0]->error,
                     SNAPBUS__ERROR_CODE__ERR_BEYOND_DEDUP_HORIZON);
    assert_int_equal(r->publish->results[0]->seq, 0);
    assert_int_equal(r->publish->results[1]->error, 0);
    assert_int_equal(r->publish->results[1]->seq, 0); /* as ACK_NONE says */
    snapbus__reply__free_unpacked(r, NULL);
    assert_int_equal(s_last_seq(), 10);
}

static void
test_producer_restart_replays_without_new_seqs(void **state)
{
    const char *more[] = {"--set", "dedup.producer_window=131072", NULL};
    acks k1, k2;
    sb_publisher *p;

    (void)state;
    assert_int_equal(s_start(more), 0);
    s_acks_init(&k1, REPLAY);
    p = s_pub("replayer", SB_ACK_SEQUENCED, &k1);
    for (int i = 1; i <= REPLAY; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_wait_all(p, 120000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(k1.ok, REPLAY);
    uint64_t last = s_last_seq();
    assert_int_equal(last, REPLAY);

    /* The producer restarts and replays the same events from seq 1. */
    s_acks_init(&k2, REPLAY);
    p = s_pub("replayer", SB_ACK_SEQUENCED, &k2);
    uint64_t t0 = sbt_now_ms();
    for (int i = 1; i <= REPLAY; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_wait_all(p, 120000), SB_OK);
    sb_publisher_destroy(&p);
    fprintf(stderr, "# replay of %d duplicates: %llu ms\n", REPLAY,
            (unsigned long long)(sbt_now_ms() - t0));
    assert_int_equal(k2.n, REPLAY);
    assert_int_equal(k2.dup, REPLAY);
    for (uint64_t t = 1; t <= REPLAY; t++) {
        assert_int_equal(k2.err[t], SB_EDUP);
        assert_int_equal(k2.seq[t], k1.seq[t]);
    }
    assert_int_equal(s_last_seq(), last); /* zero new seqs */
    assert_int_equal(s_published_settled(REPLAY), REPLAY);
    s_acks_free(&k1);
    s_acks_free(&k2);
}

static void
test_broker_killed_between_original_and_resend(void **state)
{
    enum { N = 500 };
    acks k1, k2;
    sb_publisher *p;
    int st;

    (void)state;
    snprintf(s_data, sizeof s_data, "/tmp/sbt-dedup.XXXXXX");
    assert_non_null(mkdtemp(s_data));
    assert_int_equal(s_start(NULL), 0);
    s_acks_init(&k1, N);
    p = s_pub("survivor", SB_ACK_DURABLE, &k1);
    for (int i = 1; i <= N; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(k1.ok, N);

    /* No clean stop: what the index knew must come back from the log. */
    kill(s_broker.pid, SIGKILL);
    waitpid(s_broker.pid, &st, 0);
    s_broker.pid = 0;
    s_forget();
    assert_int_equal(s_start(NULL), 0);
    assert_int_equal(s_last_seq(), N);
    s_acks_init(&k2, N);
    p = s_pub("survivor", SB_ACK_DURABLE, &k2);
    for (int i = 1; i <= N; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(k2.dup, N);
    for (uint64_t t = 1; t <= N; t++)
        assert_int_equal(k2.seq[t], k1.seq[t]);
    assert_int_equal(s_last_seq(), N);
    assert_true(s_metric("snapbus_dedup_rebuild_events") >= N);
    s_acks_free(&k1);
    s_acks_free(&k2);
}

static void
test_beyond_the_horizon_is_a_typed_error(void **state)
{
    const char *more[] = {"--set", "dedup.producer_window=100", NULL};
    sb_publisher_opts o;
    sb_publisher *p;
    acks k;

    (void)state;
    assert_int_equal(s_start(more), 0);
    s_acks_init(&k, 400);
    p = s_pub("horizon", SB_ACK_SEQUENCED, &k);
    for (int i = 1; i <= 300; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(k.ok, 300);
    s_acks_free(&k);

    /* A replay from producer seq 150: 150..200 are below the window of
     * 300 (201..300) and refused, 201..300 are duplicates, 301.. new. */
    s_acks_init(&k, 400);
    sb_publisher_opts_defaults(&o);
    o.endpoint = s_broker.ingest;
    o.producer_id = "horizon";
    o.producer_seq_start = 150;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, &k);
    for (int i = 150; i <= 310; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(k.horizon, 51);
    assert_int_equal(k.dup, 100);
    assert_int_equal(k.ok, 10);
    assert_int_equal(k.err[1], SB_EHORIZON); /* token 1: producer seq 150 */
    assert_int_equal(k.seq[1], 0);
    assert_int_equal(k.err[52], SB_EDUP); /* producer seq 201 */
    assert_int_equal(s_last_seq(), 310);
    assert_int_equal(s_metric("snapbus_dedup_beyond_horizon_total"), 51);
    s_acks_free(&k);
}

static void
test_reconnect_resends_what_is_unacked(void **state)
{
    enum { N = 50 };
    const char *hold[] = {"--set", "debug.hold=logstore->ingest", NULL};
    sb_publisher_opts o;
    sb_publisher *p;
    sb_publisher_stats pst;
    char ingest[256], *more[4];
    acks k;
    int st;

    (void)state;
    snprintf(s_data, sizeof s_data, "/tmp/sbt-dedup.XXXXXX");
    assert_non_null(mkdtemp(s_data));
    /* Durable replies are held inside the broker: the requests stay in
     * flight although their events are in the synced log. */
    assert_int_equal(s_start(hold), 0);
    snprintf(ingest, sizeof ingest, "%s", s_broker.ingest);
    s_acks_init(&k, N);
    sb_publisher_opts_defaults(&o);
    o.endpoint = ingest;
    o.ack = SB_ACK_DURABLE;
    o.producer_id = "reconnecter";
    o.reply_timeout_ms = 120000; /* only the reconnect may trigger a resend */
    o.timeout_ms = 60000;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, &k);
    for (int i = 1; i <= N; i++)
        s_publish(p, i);
    assert_int_equal(sb_publisher_flush(p, 0), SB_OK);
    for (int i = 0; i < 1000 && s_metric("snapbus_log_durable_acks_total") == 0;
         i++)
        usleep(10000);
    assert_true(s_metric("snapbus_log_durable_acks_total") > 0);
    (void)sb_publisher_poll(p, 50);
    assert_int_equal(k.n, 0);

    /* The broker dies with the replies; it comes back on the same
     * endpoint and log. The client resends on reconnect, by itself. */
    kill(s_broker.pid, SIGKILL);
    waitpid(s_broker.pid, &st, 0);
    s_broker.pid = 0;
    s_forget();
    more[0] = "--ingest";
    more[1] = ingest;
    more[2] = NULL;
    assert_int_equal(s_start((const char *const *)more), 0);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_stats_get(p, &pst);
    assert_true(pst.resends >= 1);
    assert_int_equal(k.n, N);
    assert_int_equal(k.dup, N);
    for (uint64_t t = 1; t <= N; t++)
        assert_int_equal(k.seq[t], t);
    sb_publisher_destroy(&p);
    assert_int_equal(s_last_seq(), N);
    s_acks_free(&k);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(
            test_resend_after_lost_ack_gets_the_original, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_requests_at_every_ack_level,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_fire_and_forget_hears_only_of_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_producer_restart_replays_without_new_seqs, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_broker_killed_between_original_and_resend, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_beyond_the_horizon_is_a_typed_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_resends_what_is_unacked,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
