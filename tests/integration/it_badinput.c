/* Bad input never hurts: hostile and broken input against the real broker
 * on loopback, while a well-behaved publisher and subscriber run alongside.
 *
 * Every case sends something a network peer can send (random bytes, empty
 * and truncated messages, wrong frame counts, other message types, unknown
 * versions, oversized frames, bad names and payloads, out-of-range ack
 * levels and fetch ranges, garbage on the subscriber side, thousands of
 * connections opened and dropped) and checks three things:
 *
 *  - the reply: the typed error PROTOCOL.md promises, where a reply is
 *    possible, or no reply where ZeroMQ drops the connection;
 *  - the counters: /metrics (snapbus_refusals_total by reason,
 *    snapbus_bad_requests_total, snapbus_bad_frames_total,
 *    snapbus_events_refused_total, snapbus_fetch_refused_total) moved by
 *    exactly what was refused, and nothing else moved (the subscriber's
 *    own fetch refusals are counted on its way to the broker: the relay);
 *  - nobody else noticed: a publisher (acked, through libsnapbus) and a
 *    subscriber (prefix "good/", with gap fill from the query socket) run
 *    from the first case to the last, and at the end every event acked to
 *    the publisher reached the subscriber exactly once.
 *
 * Raw TCP garbage is the one case whose refusals cannot be predicted
 * (ZeroMQ may read the bytes as ZMTP 1.0 frames): there, every refusal
 * must be counted once, whatever they are. Two cases are regressions of
 * bugs this suite and the fuzzers found in fetches served from the
 * on-disk log (docs/FUZZING.md).
 *
 * The broker runs with small limits (64 KiB messages, 1 KiB payloads, 100
 * events per request, 3,000 retained batches, a 1 MiB log) so that the
 * limits are reached cheaply. The number of cases and of bad messages
 * sent is printed at the end.
 *
 * One file of about 2,200 lines, on purpose: the cases share one broker,
 * one bystander publisher and subscriber, and one running tally of what
 * each counter should read, and the final check (every acked event
 * delivered once, every refusal counted exactly) covers all of them
 * together. Split into files, each would need its own broker and its own
 * bystanders, and the claim "nothing else moved" would cover less. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

#define MAX_MSG 65536u
#define MAX_PAYLOAD 1024u
#define MAX_EVENTS 100u
#define MAX_NAME 255u
#define RETAIN_BATCHES 3000

/* ErrorCode values (plain ints: replies carry protobuf-c's enum). */
#define E_NONE 0
#define E_INVALID 1
#define E_TOO_LARGE 2
#define E_UNSUPPORTED 7
#define E_BAD_VERSION 8
#define E_OUT_OF_RETENTION 9
#define E_NREASONS 12

static sbt_broker broker;
static void *ctx;
static int s_cases;        /* scenarios tried */
static long s_bad_inputs;  /* bad messages (or connections) sent */

static void
s_case(const char *name)
{
    s_cases++;
    printf("  case %d: %s\n", s_cases, name);
}

/* ---- a few protobuf bytes by hand ---------------------------------------
 * protobuf-c cannot write what a broken or hostile peer writes (wrong wire
 * types, NUL bytes in strings, zeros where proto3 would omit them), so
 * the cases build their bytes here. */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} pb;

static void
pb_raw(pb *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void
pb_varint(pb *b, uint64_t v)
{
    uint8_t t[10];
    size_t n = 0;
    while (v >= 0x80) {
        t[n++] = (uint8_t) (v | 0x80);
        v >>= 7;
    }
    t[n++] = (uint8_t) v;
    pb_raw(b, t, n);
}

static void
pb_uint(pb *b, uint32_t field, uint64_t v)
{
    pb_varint(b, (uint64_t) field << 3 | 0);
    pb_varint(b, v);
}

static void
pb_bytes(pb *b, uint32_t field, const void *p, size_t n)
{
    pb_varint(b, (uint64_t) field << 3 | 2);
    pb_varint(b, n);
    pb_raw(b, p, n);
}

static void
pb_str(pb *b, uint32_t field, const char *s)
{
    pb_bytes(b, field, s, strlen(s));
}

static void
pb_msg(pb *b, uint32_t field, const pb *sub)
{
    pb_bytes(b, field, sub->p, sub->len);
}

static void
pb_free(pb *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* An Event; names given with their lengths, so they may hold NUL. */
typedef struct {
    const char *agg;
    size_t agg_len;
    const char *type;
    size_t type_len;
    size_t payload_len;
    const char *event_id; /* NULL: absent */
    size_t event_id_len;
    const char *producer_id;
    size_t producer_id_len;
} ev_spec;

static ev_spec
ev(const char *agg, const char *type)
{
    ev_spec e = {agg, strlen(agg), type, strlen(type), 3, NULL, 0, NULL, 0};
    return e;
}

static void
pb_event(pb *b, const ev_spec *e)
{
    static uint8_t payload[1 << 17];
    pb sub = {0};

    pb_bytes(&sub, 1, e->agg, e->agg_len);
    pb_bytes(&sub, 2, e->type, e->type_len);
    pb_bytes(&sub, 3, payload, e->payload_len);
    if (e->event_id != NULL)
        pb_bytes(&sub, 4, e->event_id, e->event_id_len);
    if (e->producer_id != NULL)
        pb_bytes(&sub, 7, e->producer_id, e->producer_id_len);
    pb_msg(b, 2, &sub);
    pb_free(&sub);
}

/* Request{version, request_id, publish{ack, events}}. */
static void
pb_publish(pb *b, uint64_t version, uint64_t id, uint64_t ack,
           const ev_spec *evs, size_t n)
{
    pb pub = {0};
    pb_uint(&pub, 1, ack);
    for (size_t i = 0; i < n; i++)
        pb_event(&pub, &evs[i]);
    pb_uint(b, 1, version);
    pb_uint(b, 2, id);
    pb_msg(b, 4, &pub);
    pb_free(&pub);
}

typedef struct {
    const char *prefix;
    size_t prefix_len;
    uint64_t from_seq, to_seq, after_batch_id;
    uint32_t max_batches;
} fetch_spec;

static void
pb_fetch(pb *b, uint64_t id, const fetch_spec *f)
{
    pb sub = {0};
    if (f->prefix != NULL)
        pb_bytes(&sub, 1, f->prefix, f->prefix_len);
    pb_uint(&sub, 2, f->from_seq);
    pb_uint(&sub, 3, f->to_seq);
    pb_uint(&sub, 4, f->after_batch_id);
    pb_uint(&sub, 5, f->max_batches);
    pb_uint(b, 1, 1);
    pb_uint(b, 2, id);
    pb_msg(b, 5, &sub);
    pb_free(&sub);
}

/* ---- the subscriber's own accounting ------------------------------------
 * The broker counts every fetch it refuses in one counter, and the
 * well-behaved subscriber fetches too: its gap fill starts from the last
 * batch id it checked, and after a flood of "ret/" batches that cursor is
 * out of retention, so the broker refuses it (OUT_OF_RETENTION) and the
 * subscriber carries on from where retention starts, having lost nothing.
 * Its query socket therefore goes through this relay, which counts the
 * refusals the broker sends it, so that the cases can expect exactly
 * their own refusals plus the relay's (s_end). The relay is a DEALER on
 * each side: the subscriber's one query socket is its only peer. */

static struct {
    pthread_t thread;
    int running;
    atomic_int stop;
    void *front, *back;
    char endpoint[64];
    /* Error replies the broker sent the good subscriber, counted before
     * they are passed on (and the subscriber's own sb_fetch refusals). */
    atomic_uint_fast64_t refused;
    atomic_uint_fast64_t replies, garbled;
} relay;

/* ---- counters from /metrics ------------------------------------------- */

typedef struct {
    uint64_t refused[E_NREASONS]; /* snapbus_refusals_total{reason} */
    uint64_t bad_requests;
    uint64_t bad_frames;
    uint64_t events_refused;
    uint64_t fetch_refused;
    uint64_t replies_lost;
    uint64_t fetches; /* for the failure messages */
} counters;

static const char *const s_reason[E_NREASONS] = {
    "none", "invalid", "too_large", "unauthorized", "duplicate",
    "storage_full", "shutting_down", "unsupported", "bad_version",
    "out_of_retention", "beyond_dedup_horizon", "wrong_shard"};

static uint64_t
s_value(const char *body, const char *sample)
{
    size_t n = strlen(sample);
    for (const char *p = body; (p = strstr(p, sample)) != NULL; p += n)
        if ((p == body || p[-1] == '\n') && p[n] == ' ')
            return strtoull(p + n + 1, NULL, 10);
    fail_msg("metric %s not found", sample);
    return 0;
}

static void
s_scrape(counters *c)
{
    static char body[1 << 18];
    char name[128];

    assert_int_equal(sbt_http_get(broker.metrics, "/metrics", body, sizeof body, 10000), 200);
    memset(c, 0, sizeof *c);
    for (int i = 1; i < E_NREASONS; i++) {
        snprintf(name, sizeof name, "snapbus_refusals_total{reason=\"%s\"}", s_reason[i]);
        c->refused[i] = s_value(body, name);
    }
    c->bad_requests = s_value(body, "snapbus_bad_requests_total");
    c->bad_frames = s_value(body, "snapbus_bad_frames_total");
    c->events_refused = s_value(body, "snapbus_events_refused_total");
    c->fetch_refused = s_value(body, "snapbus_fetch_refused_total");
    c->replies_lost = s_value(body, "snapbus_replies_lost_total");
    c->fetches = s_value(body, "snapbus_fetches_total");
}

/* What a case expects the refusal counters to move by. */
static counters s_before, s_want;
/* Fetch refusals expected so far, the good subscriber's aside: every
 * case's, and what raw TCP garbage made the query socket refuse. */
static uint64_t s_fetch_refusals;

static void
s_begin(const char *name)
{
    s_case(name);
    s_scrape(&s_before);
    memset(&s_want, 0, sizeof s_want);
}

/* The fetch refusal counter is the sum of what the cases expect and what
 * the relay has passed to the good subscriber. A refusal the broker has
 * counted may still be on its way to the relay, so the relay's count is
 * read before each scrape and the wait is for it to catch up (bounded);
 * the broker counting fewer than that sum is a failure at once. */
static void
s_check_fetch_refusals(counters *after)
{
    for (int i = 0;; i++) {
        uint64_t relayed = atomic_load(&relay.refused);
        s_scrape(after);
        uint64_t want = s_fetch_refusals + relayed;
        if (after->fetch_refused == want)
            return;
        if (after->fetch_refused < want || i == 200)
            fail_msg("fetch refusals: %llu counted, expected %llu: this case's "
                     "%llu (moved by %llu, fetches %llu) + %llu relayed to the "
                     "good subscriber + %llu before",
                     (unsigned long long) after->fetch_refused,
                     (unsigned long long) want,
                     (unsigned long long) s_want.fetch_refused,
                     (unsigned long long) (after->fetch_refused - s_before.fetch_refused),
                     (unsigned long long) (after->fetches - s_before.fetches),
                     (unsigned long long) relayed,
                     (unsigned long long) (s_fetch_refusals - s_want.fetch_refused));
        usleep(50000);
    }
}

static void
s_end(void)
{
    counters after;
    s_fetch_refusals += s_want.fetch_refused;
    s_check_fetch_refusals(&after);
    for (int i = 1; i < E_NREASONS; i++)
        if (after.refused[i] - s_before.refused[i] != s_want.refused[i])
            fail_msg("refusals{%s}: moved by %llu, expected %llu", s_reason[i],
                     (unsigned long long) (after.refused[i] - s_before.refused[i]),
                     (unsigned long long) s_want.refused[i]);
    assert_int_equal(after.bad_requests - s_before.bad_requests, s_want.bad_requests);
    assert_int_equal(after.bad_frames - s_before.bad_frames, s_want.bad_frames);
    assert_int_equal(after.events_refused - s_before.events_refused, s_want.events_refused);
}

/* For input whose effect cannot be predicted (raw TCP bytes, which ZeroMQ
 * may read as ZMTP 1.0 frames): waits until the counters settle, then
 * checks only that every refusal was counted as a bad request, a bad
 * frame or a refused event. */
static void
s_end_settled(void)
{
    counters a, b;
    uint64_t sum = 0, relayed, relayed_b;

    /* Settled: no counter moved for a second (bounded: 60 s). */
    relayed = atomic_load(&relay.refused);
    s_scrape(&a);
    for (int i = 0, still = 0; i < 600 && still < 10; i++) {
        usleep(100000);
        relayed_b = atomic_load(&relay.refused);
        s_scrape(&b);
        still = memcmp(&a, &b, sizeof a) == 0 && relayed == relayed_b ? still + 1 : 0;
        a = b;
        relayed = relayed_b;
    }
    for (int i = 1; i < E_NREASONS; i++)
        sum += a.refused[i] - s_before.refused[i];
    /* What the query socket refused of the garbage cannot be predicted
     * either; from here on it is part of what is expected. */
    s_fetch_refusals += s_want.fetch_refused;
    assert_true(a.fetch_refused >= s_fetch_refusals + relayed);
    uint64_t garbage = a.fetch_refused - (s_fetch_refusals + relayed);
    s_fetch_refusals += garbage;
    printf("  %llu refusals counted by the ingest, %llu by the query socket\n",
           (unsigned long long) sum, (unsigned long long) garbage);
    assert_int_equal(sum, (a.bad_requests - s_before.bad_requests) +
                              (a.bad_frames - s_before.bad_frames) +
                              (a.events_refused - s_before.events_refused));
}

/* Bookkeeping for one reply from the ingest. */
static void
s_want_whole(int err)
{
    s_want.refused[err]++;
    s_want.bad_requests++;
}

/* ---- sockets ------------------------------------------------------------ */

static int s_open_socks; /* 0 at the end unless a case failed midway */

static void
s_close(void *s)
{
    zmq_close(s);
    s_open_socks--;
}

static void *
s_sock(int type, const char *ep, int rcvtimeo)
{
    void *s = zmq_socket(ctx, type);
    s_open_socks++;
    int zero = 0;
    assert_non_null(s);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}

static void
s_send_frames(void *s, const void *const *f, const size_t *n, int nf)
{
    for (int i = 0; i < nf; i++)
        assert_true(zmq_send(s, f[i], n[i], i + 1 < nf ? ZMQ_SNDMORE : 0) >= 0);
    s_bad_inputs++;
}

static void
s_send1(void *s, const void *p, size_t n)
{
    s_send_frames(s, &p, &n, 1);
}

/* Receives one reply message: a leading empty delimiter frame (if the
 * request had one) is skipped; *extra gets the frames after the reply.
 * NULL on timeout. */
static Snapbus__Reply *
s_recv_reply(void *s, int *extra)
{
    static uint8_t buf[1 << 20];
    int n, more = 0;
    size_t sz = sizeof more;

    if (extra)
        *extra = 0;
    if ((n = zmq_recv(s, buf, sizeof buf, 0)) < 0)
        return NULL;
    zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
    if (n == 0 && more) {
        n = zmq_recv(s, buf, sizeof buf, 0);
        assert_true(n >= 0);
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
    }
    Snapbus__Reply *r = snapbus__reply__unpack(NULL, (size_t) n, buf);
    assert_non_null(r);
    assert_int_equal(r->version, 1);
    while (more) {
        assert_true(zmq_recv(s, buf, sizeof buf, 0) >= 0);
        if (extra)
            (*extra)++;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
    }
    return r;
}

/* Sends one frame and expects a whole-request refusal `err`; request_id
 * is checked when want_id != UINT64_MAX. Counts it as the ingest does. */
static void
s_expect_whole(void *s, const void *p, size_t n, int err, uint64_t want_id)
{
    s_send1(s, p, n);
    Snapbus__Reply *r = s_recv_reply(s, NULL);
    assert_non_null(r);
    if ((int) r->error != err)
        fail_msg("expected error %d, got %d (%s)", err, r->error, r->detail);
    assert_true(r->detail != NULL && r->detail[0] != '\0');
    if (want_id != UINT64_MAX)
        assert_int_equal(r->request_id, want_id);
    snapbus__reply__free_unpacked(r, NULL);
    s_want_whole(err);
}

static void
s_expect_whole_pb(void *s, pb *b, int err, uint64_t want_id)
{
    s_expect_whole(s, b->p, b->len, err, want_id);
    pb_free(b);
}

/* The broker still answers a hello on this socket. */
static void
s_hello_ok(void *s)
{
    pb b = {0}, h = {0};
    pb_str(&h, 1, "it_badinput");
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 424242);
    pb_msg(&b, 3, &h);
    assert_true(zmq_send(s, b.p, b.len, 0) >= 0);
    Snapbus__Reply *r = s_recv_reply(s, NULL);
    assert_non_null(r);
    assert_int_equal(r->error, 0);
    assert_int_equal(r->request_id, 424242);
    assert_int_equal(r->body_case, SNAPBUS__REPLY__BODY_HELLO);
    snapbus__reply__free_unpacked(r, NULL);
    pb_free(&b);
    pb_free(&h);
}

/* A fixed-seed generator: the same "random" bytes on every run. */
static uint64_t s_rng = 0x9e3779b97f4a7c15ull;

static uint64_t
s_rand(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

static void
s_random_bytes(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t) s_rand();
}

/* ---- the relay ---------------------------------------------------------- */

/* Moves one whole message from src to dst; replies (to_sub) are looked
 * at first. Never waits on dst: a message it will not take is dropped,
 * as a lost reply would be (the subscriber asks again). */
static int
s_relay_msg(void *src, void *dst, int to_sub)
{
    int more = 1, first = 1, drop = 0;
    size_t sz = sizeof more;

    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, src, 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
        zmq_getsockopt(src, ZMQ_RCVMORE, &more, &sz);
        if (to_sub && first && zmq_msg_size(&m) > 0) {
            Snapbus__Reply *r = snapbus__reply__unpack(NULL, zmq_msg_size(&m),
                                                       zmq_msg_data(&m));
            atomic_fetch_add(&relay.replies, 1);
            if (r == NULL)
                atomic_fetch_add(&relay.garbled, 1);
            else if (r->error != 0)
                atomic_fetch_add(&relay.refused, 1);
            if (r != NULL)
                snapbus__reply__free_unpacked(r, NULL);
            first = 0;
        }
        if (!drop && zmq_msg_send(&m, dst, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0)
            drop = 1;
        zmq_msg_close(&m);
    }
    return 0;
}

static void *
s_relay(void *arg)
{
    zmq_pollitem_t it[2] = {{relay.front, 0, ZMQ_POLLIN, 0},
                            {relay.back, 0, ZMQ_POLLIN, 0}};
    (void) arg;

    while (!atomic_load(&relay.stop)) {
        if (zmq_poll(it, 2, 100) < 0) {
            if (errno == EINTR)
                continue;
            break; /* the context is being shut down */
        }
        if ((it[0].revents & ZMQ_POLLIN) && s_relay_msg(relay.front, relay.back, 0) < 0)
            break;
        if ((it[1].revents & ZMQ_POLLIN) && s_relay_msg(relay.back, relay.front, 1) < 0)
            break;
    }
    zmq_close(relay.front);
    zmq_close(relay.back);
    return NULL;
}

static int
s_relay_start(void)
{
    int zero = 0;
    size_t n = sizeof relay.endpoint;

    relay.front = zmq_socket(ctx, ZMQ_DEALER);
    relay.back = zmq_socket(ctx, ZMQ_DEALER);
    if (relay.front == NULL || relay.back == NULL)
        return -1;
    zmq_setsockopt(relay.front, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(relay.back, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(relay.front, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(relay.front, ZMQ_LAST_ENDPOINT, relay.endpoint, &n) != 0 ||
        zmq_connect(relay.back, broker.query) != 0)
        return -1;
    /* The sockets move to the relay's thread here, and stay there. */
    if (pthread_create(&relay.thread, NULL, s_relay, NULL) != 0)
        return -1;
    relay.running = 1;
    return 0;
}

static void
s_relay_stop(void)
{
    if (!relay.running)
        return;
    atomic_store(&relay.stop, 1);
    pthread_join(relay.thread, NULL);
    relay.running = 0;
}

/* ---- the well-behaved clients ------------------------------------------
 * A publisher thread (ACK_SEQUENCED, libsnapbus) publishes to good/g0..g3
 * the whole time; a subscriber thread (prefix "good/") records every seq
 * it receives, detecting gaps per topic from prev_last_seq and filling
 * them with sb_fetch. Threads report problems in counters; the last test
 * checks them. */

#define GOOD_TOPICS 4
#define SEQ_MAX (1u << 22)

static struct {
    pthread_t pub_thread, sub_thread;
    atomic_int stop_pub, stop_sub;
    atomic_int sub_ready;
    atomic_int probe_seen; /* the subscriber received a good/probe batch */
    atomic_uint_fast64_t published, acked, ack_errors;
    atomic_uint_fast64_t received, dup, foreign, fetched_batches, fetch_errors;
    atomic_uint_fast64_t live_batches, topic_errors, losses;
    uint8_t *seen;  /* per seq: times the subscriber saw it */
    uint8_t *acked_seq; /* per seq: acked to the publisher */
    sb_subscriber_stats lib; /* the library's figures, at the end */
} good;

static void
s_on_ack(const sb_ack_info *a, void *c)
{
    (void) c;
    if (a->err != SB_OK || a->seq == 0 || a->seq >= SEQ_MAX) {
        atomic_fetch_add(&good.ack_errors, 1);
        return;
    }
    good.acked_seq[a->seq] = 1;
    atomic_fetch_add(&good.acked, 1);
}

static void *
s_publisher(void *arg)
{
    sb_publisher_opts o;
    sb_publisher *p;
    uint64_t i = 0;
    char agg[32], id[32];
    (void) arg;

    sb_publisher_opts_defaults(&o);
    o.endpoint = broker.ingest;
    o.ack = SB_ACK_SEQUENCED;
    o.window = 32;
    o.linger_ms = 1;
    o.batch_events = 16;
    o.batch_bytes = 8192;
    o.max_request_bytes = MAX_MSG;
    o.timeout_ms = 30000;
    o.reply_timeout_ms = 60000;
    if (sb_publisher_new(&p, &o) != SB_OK) {
        atomic_fetch_add(&good.ack_errors, 1);
        return NULL;
    }
    sb_publisher_on_ack(p, s_on_ack, NULL);
    while (!atomic_load(&good.stop_pub)) {
        sb_pub_event e = {0};
        snprintf(agg, sizeof agg, "good/g%d", (int) (i % GOOD_TOPICS));
        snprintf(id, sizeof id, "good-%llu", (unsigned long long) i);
        e.aggregate = agg;
        e.type = "Good";
        e.payload = &i;
        e.payload_len = sizeof i;
        e.event_id = id;
        if (sb_publisher_publish(p, &e, 0, NULL) != SB_OK) {
            atomic_fetch_add(&good.ack_errors, 1);
            break;
        }
        atomic_fetch_add(&good.published, 1);
        i++;
        sb_publisher_poll(p, 1); /* about a thousand events a second */
    }
    if (sb_publisher_wait_all(p, 60000) != SB_OK)
        atomic_fetch_add(&good.ack_errors, 1);
    sb_publisher_destroy(&p);
    return NULL;
}

typedef struct {
    char name[64];
    uint64_t last; /* last_seq of the last batch handled */
} topic;

static topic s_topics[GOOD_TOPICS + 1];

static topic *
s_topic(const char *name)
{
    for (int i = 0; i <= GOOD_TOPICS; i++) {
        if (strcmp(s_topics[i].name, name) == 0)
            return &s_topics[i];
        if (s_topics[i].name[0] == '\0') {
            snprintf(s_topics[i].name, sizeof s_topics[i].name, "%s", name);
            return &s_topics[i];
        }
    }
    return NULL;
}

static void
s_handle(sb_snapshot *b)
{
    topic *t = s_topic(sb_snapshot_aggregate(b));
    size_t n = sb_snapshot_count(b);

    if (t == NULL) {
        atomic_fetch_add(&good.topic_errors, 1);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        sb_snapshot_event e;
        sb_snapshot_event_get(b, i, &e);
        if (strncmp(e.aggregate, "good/g", 6) != 0)
            continue; /* the probe */
        if (e.seq == 0 || e.seq >= SEQ_MAX) {
            atomic_fetch_add(&good.foreign, 1);
            continue;
        }
        if (good.seen[e.seq]++ > 0)
            atomic_fetch_add(&good.dup, 1);
        atomic_fetch_add(&good.received, 1);
    }
    t->last = sb_snapshot_last_seq(b);
    if (strcmp(t->name, "good/probe") == 0)
        atomic_store(&good.probe_seen, 1);
}

typedef struct {
    topic *t;
    uint64_t upto; /* handle batches up to this last_seq */
} fill_ctx;

static void
s_on_fetched(sb_snapshot *b, void *c)
{
    fill_ctx *f = c;
    if (strcmp(sb_snapshot_aggregate(b), f->t->name) == 0 &&
        sb_snapshot_last_seq(b) > f->t->last &&
        (f->upto == 0 || sb_snapshot_last_seq(b) <= f->upto)) {
        atomic_fetch_add(&good.fetched_batches, 1);
        s_handle(b);
    }
    sb_snapshot_destroy(&b);
}

/* Fills topic t from the query socket: batches with a seq in
 * (t->last, upto] (upto 0: everything retained after t->last). */
static void
s_fill(topic *t, uint64_t upto)
{
    sb_fetch_opts o;
    sb_fetch_info info;
    fill_ctx f = {t, upto};

    sb_fetch_opts_defaults(&o);
    o.prefix = t->name;
    o.from_seq = t->last + 1;
    o.to_seq = upto;
    for (int page = 0; page < 10000; page++) {
        sb_err rc = sb_fetch(broker.query, &o, s_on_fetched, &f, &info, 10000);
        if (rc == SB_ENOENT) /* refused: the broker counted it too */
            atomic_fetch_add(&relay.refused, 1);
        if (rc != SB_OK) {
            atomic_fetch_add(&good.fetch_errors, 1);
            return;
        }
        if (!info.more || (upto != 0 && t->last >= upto))
            return;
        o.after_batch_id = info.last_batch_id;
    }
}

static void *
s_subscriber(void *arg)
{
    sb_subscriber_opts o;
    sb_subscriber *s;
    (void) arg;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = broker.pub;
    o.query_endpoint = relay.endpoint; /* counted (see the relay) */
    o.rcvhwm = 1000000;
    /* No periodic header probe: after the floods of "ret/" batches below,
     * a probe would find batches it never checked evicted, and report
     * them as a possible loss (it cannot know they were not "good/"). Gaps
     * in a topic's chain are still filled; the tail is checked at the end. */
    o.probe_ms = 0;
    if (sb_subscriber_new(&s, &o) != SB_OK || sb_subscriber_subscribe(s, "good/") != SB_OK) {
        atomic_fetch_add(&good.topic_errors, 1);
        atomic_store(&good.sub_ready, 1);
        return NULL;
    }
    atomic_store(&good.sub_ready, 1);
    while (!atomic_load(&good.stop_sub)) {
        sb_snapshot *b;
        sb_err rc = sb_subscriber_recv(s, &b, 100);
        if (rc == SB_ENOENT) { /* the library reports a loss */
            sb_loss l;
            if (sb_subscriber_loss(s, &l) == SB_OK && atomic_fetch_add(&good.losses, 1) < 5)
                fprintf(stderr, "  subscriber: loss of \"%s\" seqs %llu-%llu batches %llu-%llu "
                        "(retention from seq %llu)\n", l.aggregate,
                        (unsigned long long) l.from_seq, (unsigned long long) l.to_seq,
                        (unsigned long long) l.from_batch_id,
                        (unsigned long long) l.to_batch_id,
                        (unsigned long long) l.retained_first_seq);
            continue;
        }
        if (rc != SB_OK)
            continue;
        atomic_fetch_add(&good.live_batches, 1);
        topic *t = s_topic(sb_snapshot_aggregate(b));
        if (t == NULL) {
            atomic_fetch_add(&good.topic_errors, 1);
        } else if (sb_snapshot_last_seq(b) <= t->last) {
            /* already handled (it came by a fetch) */
        } else if (t->last == 0 && strcmp(t->name, "good/probe") == 0) {
            s_handle(b); /* probes: published before we listened, maybe */
        } else {
            if (sb_snapshot_prev_last_seq(b) != t->last)
                s_fill(t, sb_snapshot_prev_last_seq(b)); /* a gap */
            if (sb_snapshot_prev_last_seq(b) != t->last)
                atomic_fetch_add(&good.topic_errors, 1); /* not filled */
            s_handle(b);
        }
        sb_snapshot_destroy(&b);
    }
    /* The tail: batches published after the last one received, if the
     * last ones were dropped (nothing later shows the gap). */
    for (int i = 0; i <= GOOD_TOPICS; i++)
        if (s_topics[i].name[0] != '\0' && strcmp(s_topics[i].name, "good/probe") != 0)
            s_fill(&s_topics[i], 0);
    sb_subscriber_stats_get(s, &good.lib); /* read after the join */
    sb_subscriber_destroy(&s);
    return NULL;
}

/* Publishes to good/probe until the subscriber has seen it: its
 * subscription has then reached the broker, and nothing of good/g* can be
 * missed for lack of it. */
static void
s_wait_subscribed(void)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    uint64_t deadline = sbt_now_ms() + 60000;
    while (!atomic_load(&good.probe_seen) && sbt_now_ms() < deadline) {
        pb b = {0};
        ev_spec e = ev("good/probe", "Probe");
        pb_publish(&b, 1, 1, 3, &e, 1); /* published ack: it went out */
        assert_true(zmq_send(s, b.p, b.len, 0) >= 0);
        Snapbus__Reply *r = s_recv_reply(s, NULL);
        assert_non_null(r);
        assert_int_equal(r->error, 0);
        snapbus__reply__free_unpacked(r, NULL);
        pb_free(&b);
        usleep(20000);
    }
    assert_true(atomic_load(&good.probe_seen));
    s_close(s);
}

/* ---- the cases: ingest --------------------------------------------------- */

static void
test_empty_messages(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    const void *f[3] = {"", "", ""};
    size_t n[3] = {0, 0, 0};
    Snapbus__Reply *r;

    s_begin("one empty frame");
    s_expect_whole(s, "", 0, E_INVALID, 0);
    s_end();

    s_begin("an empty delimiter, then an empty body");
    s_send_frames(s, f, n, 2);
    assert_non_null(r = s_recv_reply(s, NULL));
    assert_int_equal(r->error, E_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    s_want_whole(E_INVALID);
    s_end();

    s_begin("three empty frames");
    s_send_frames(s, f, n, 3);
    assert_non_null(r = s_recv_reply(s, NULL));
    assert_int_equal(r->error, E_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.refused[E_INVALID]++;
    s_want.bad_frames++;
    s_end();
    s_hello_ok(s);
    s_close(s);
}

static void
test_wrong_frame_counts(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    pb good = {0};
    ev_spec e = ev("bi/frames", "T");
    static const void *f[100];
    static size_t n[100];

    pb_publish(&good, 1, 5, 1, &e, 1);
    s_begin("wrong frame counts: 2, 3, 10, 100 frames; delimiter + 2");
    int counts[] = {2, 3, 10, 100};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        for (int i = 0; i < counts[c]; i++) {
            f[i] = good.p; /* each a valid request: still refused whole */
            n[i] = good.len;
        }
        s_send_frames(s, f, n, counts[c]);
        Snapbus__Reply *r = s_recv_reply(s, NULL);
        assert_non_null(r);
        assert_int_equal(r->error, E_INVALID);
        assert_int_equal(r->request_id, 0); /* not read */
        snapbus__reply__free_unpacked(r, NULL);
        s_want.refused[E_INVALID]++;
        s_want.bad_frames++;
    }
    f[0] = "";
    n[0] = 0;
    f[1] = f[2] = good.p;
    n[1] = n[2] = good.len;
    s_send_frames(s, f, n, 3);
    Snapbus__Reply *r = s_recv_reply(s, NULL);
    assert_non_null(r);
    assert_int_equal(r->error, E_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.refused[E_INVALID]++;
    s_want.bad_frames++;
    s_end();
    pb_free(&good);
    s_hello_ok(s);
    s_close(s);
}

static void
test_random_bytes(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    static uint8_t buf[4096];
    enum { N = 500, PIPELINED = 1000 };

    s_begin("random bytes: 500 frames of 1 to 4096 bytes, one at a time");
    for (int i = 0; i < N; i++) {
        size_t len = 1 + s_rand() % sizeof buf;
        s_random_bytes(buf, len);
        s_send1(s, buf, len);
        Snapbus__Reply *r = s_recv_reply(s, NULL);
        assert_non_null(r);
        assert_true(r->error != E_NONE); /* none of these is a request */
        assert_true(r->error == E_INVALID || r->error == E_BAD_VERSION);
        s_want_whole((int) r->error);
        snapbus__reply__free_unpacked(r, NULL);
    }
    s_end();

    s_begin("random bytes: 1000 frames sent back to back, then read");
    for (int i = 0; i < PIPELINED; i++) {
        size_t len = 1 + s_rand() % 64;
        s_random_bytes(buf, len);
        s_send1(s, buf, len);
    }
    for (int i = 0; i < PIPELINED; i++) {
        Snapbus__Reply *r = s_recv_reply(s, NULL);
        assert_non_null(r);
        assert_true(r->error == E_INVALID || r->error == E_BAD_VERSION);
        s_want_whole((int) r->error);
        snapbus__reply__free_unpacked(r, NULL);
    }
    s_end();

    s_begin("random bytes behind a valid version and request id");
    for (int i = 0; i < 200; i++) {
        pb b = {0};
        pb_uint(&b, 1, 1);
        pb_uint(&b, 2, 1000 + (uint64_t) i);
        size_t len = 1 + s_rand() % 256;
        s_random_bytes(buf, len);
        pb_raw(&b, buf, len);
        s_send1(s, b.p, b.len);
        Snapbus__Reply *r = s_recv_reply(s, NULL);
        assert_non_null(r);
        /* Random fields may make a hello, a fetch or a publish with bad
         * events; any whole refusal is counted as one bad request. */
        if (r->error != E_NONE) {
            s_want_whole((int) r->error);
        } else if (r->body_case == SNAPBUS__REPLY__BODY_PUBLISH) {
            for (size_t k = 0; k < r->publish->n_results; k++)
                if (r->publish->results[k]->error != 0) {
                    s_want.refused[r->publish->results[k]->error]++;
                    s_want.events_refused++;
                }
        }
        snapbus__reply__free_unpacked(r, NULL);
        pb_free(&b);
    }
    s_end();
    s_hello_ok(s);
    s_close(s);
}

static void
test_truncated(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    pb b = {0};
    ev_spec e[3] = {ev("bi/trunc/1", "T"), ev("bi/trunc/2", "T"), ev("bi/trunc/3", "T")};

    e[1].event_id = "id";
    e[1].event_id_len = 2;
    pb_publish(&b, 1, 77, 1, e, 3);
    s_begin("truncated protobuf: every strict prefix of a publish");
    for (size_t len = 1; len < b.len; len++)
        s_expect_whole(s, b.p, len, E_INVALID, len >= 4 ? 77 : UINT64_MAX);
    s_end();
    pb_free(&b);

    /* A varint that never ends, and a length past the end. */
    s_begin("truncated protobuf: an endless varint, a length past the end");
    static const uint8_t endless[] = {0x08, 0x01, 0x10, 0xff, 0xff, 0xff, 0xff,
                                      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    s_expect_whole(s, endless, sizeof endless, E_INVALID, UINT64_MAX);
    static const uint8_t past[] = {0x08, 0x01, 0x10, 0x05, 0x22, 0xff, 0xff, 0x03, 0x08};
    s_expect_whole(s, past, sizeof past, E_INVALID, 5);
    s_end();
    s_hello_ok(s);
    s_close(s);
}

static void
test_wrong_message_types(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    pb b = {0}, sub = {0}, sub2 = {0};

    s_begin("a valid protobuf of another message type, as a request");
    /* SnapshotBatch: aggregate (field 2) is where request_id is. */
    pb_uint(&b, 1, 1);
    pb_str(&b, 2, "e3/42");
    pb_uint(&b, 3, 1);
    pb_uint(&sub, 1, 1);
    pb_str(&sub, 4, "Commit");
    pb_msg(&b, 11, &sub);
    pb_free(&sub);
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    /* Reply{error}: field 3 is a varint where a hello body goes. */
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 3);
    pb_uint(&b, 3, 1);
    pb_str(&b, 4, "bad");
    s_expect_whole_pb(s, &b, E_INVALID, 3);
    /* Reply{publish}: an unknown field 6, so no body at all. */
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 4);
    pb_uint(&sub2, 2, 1);
    pb_msg(&sub, 2, &sub2);
    pb_free(&sub2);
    pb_msg(&b, 6, &sub);
    pb_free(&sub);
    s_expect_whole_pb(s, &b, E_INVALID, 4);
    /* Hello, Event, Fetch alone: field 1 is a string, not the version. */
    pb_str(&b, 1, "client");
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    pb_str(&b, 1, "e3/42");
    pb_str(&b, 2, "Commit");
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    /* Publish alone: ack 1 reads as version 1, then events is field 2. */
    pb_uint(&b, 1, 1);
    pb_str(&sub, 1, "e3/42");
    pb_msg(&b, 2, &sub);
    pb_free(&sub);
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    /* FetchReply alone: count 1 and last_batch_id 2 read as version and
     * request id, then `more` is a varint where a hello body goes. */
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 2);
    pb_uint(&b, 3, 7);
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    /* Reply{hello: HelloReply}: field 5 is where a fetch goes, and a
     * HelloReply's fields happen to read as a valid Fetch: a fetch on the
     * ingest socket. */
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 9);
    pb_str(&sub, 1, "snapbusd");
    pb_uint(&sub, 2, 4194304);
    pb_msg(&b, 5, &sub);
    pb_free(&sub);
    s_expect_whole_pb(s, &b, E_UNSUPPORTED, 9);
    /* A real fetch on the ingest socket. */
    fetch_spec f = {0};
    pb_fetch(&b, 10, &f);
    s_expect_whole_pb(s, &b, E_UNSUPPORTED, 10);
    s_end();
    s_hello_ok(s);
    s_close(s);
}

static void
test_versions_and_bodies(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    pb b = {0}, sub = {0};
    ev_spec e = ev("bi/version", "T");

    s_begin("unknown protocol versions: none, 0, 2, 255, 2^32 + 1, 2^64 - 1");
    pb_uint(&b, 2, 11); /* no version at all */
    pb_str(&sub, 1, "x");
    pb_msg(&b, 3, &sub);
    pb_free(&sub);
    s_expect_whole_pb(s, &b, E_BAD_VERSION, 11);
    uint64_t versions[] = {0, 2, 255, (1ull << 32) + 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        pb_publish(&b, versions[i], 12 + i, 1, &e, 1);
        s_expect_whole_pb(s, &b, E_BAD_VERSION, 12 + i);
    }
    s_end();

    s_begin("request fields of the wrong wire type, and no body");
    pb_bytes(&b, 1, "\x01", 1); /* version as bytes */
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    pb_uint(&b, 1, 1);
    pb_bytes(&b, 2, "\x01", 1); /* request_id as bytes */
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 20);
    pb_uint(&b, 4, 1); /* publish as a varint */
    s_expect_whole_pb(s, &b, E_INVALID, 20);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 21);
    s_expect_whole_pb(s, &b, E_INVALID, 21); /* no body */
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 22);
    pb_varint(&b, 3 << 3 | 3); /* a group */
    pb_varint(&b, 3 << 3 | 4);
    s_expect_whole_pb(s, &b, E_INVALID, 22);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 23);
    pb_bytes(&b, 3, "\xff", 1); /* a hello that does not parse */
    s_expect_whole_pb(s, &b, E_INVALID, UINT64_MAX);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 24);
    pb_varint(&b, 0); /* field number 0 */
    pb_varint(&b, 0);
    s_expect_whole_pb(s, &b, E_INVALID, 24);
    s_end();
    s_hello_ok(s);
    s_close(s);
}

static void
test_publish_structure(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    pb b = {0}, pub = {0};
    static ev_spec many[MAX_EVENTS + 1];

    s_begin("publish: ack levels out of range (4, 100, 2^31, 2^63, 2^64 - 1)");
    ev_spec e = ev("bi/ack", "T");
    uint64_t acks[] = {4, 100, 1ull << 31, 1ull << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof acks / sizeof acks[0]; i++) {
        pb_publish(&b, 1, 30 + i, acks[i], &e, 1);
        s_expect_whole_pb(s, &b, E_INVALID, 30 + i);
    }
    s_end();

    s_begin("publish: no events; too many events");
    pb_publish(&b, 1, 40, 1, &e, 0);
    s_expect_whole_pb(s, &b, E_INVALID, 40);
    for (size_t i = 0; i <= MAX_EVENTS; i++)
        many[i] = ev("bi/many", "T");
    pb_publish(&b, 1, 41, 1, many, MAX_EVENTS + 1);
    s_expect_whole_pb(s, &b, E_TOO_LARGE, 41);
    pb_publish(&b, 1, 42, 0, many, MAX_EVENTS + 1);
    s_expect_whole_pb(s, &b, E_TOO_LARGE, 42); /* fire-and-forget too */
    s_end();

    s_begin("publish: malformed events (truncated, wrong wire types, a group)");
    struct {
        const void *p;
        size_t n;
    } bad[] = {
        {"\x0a\x05" "ab", 4},           /* aggregate longer than the event */
        {"\x08\x01\x12\x01T", 5},       /* aggregate as a varint */
        {"\x0a\x01" "a\x12\x01T\x28", 7}, /* source_pos without its value */
        {"\x0a\x01" "a\x12\x01T\x2a\x00", 8}, /* source_pos as bytes */
        {"\x0a\x01" "a\x12\x01T\x1b\x1c", 8}, /* a group */
        {"\x0a\x01" "a\x12\x01T\x50\xff", 7}, /* has_source_pos truncated */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pb_uint(&pub, 1, 1);
        pb_event(&pub, &e); /* a good event first: still all refused */
        pb_bytes(&pub, 2, bad[i].p, bad[i].n);
        pb_uint(&b, 1, 1);
        pb_uint(&b, 2, 50 + i);
        pb_msg(&b, 4, &pub);
        pb_free(&pub);
        s_expect_whole_pb(s, &b, E_INVALID, 50 + i);
    }
    /* Publish fields of the wrong wire type. */
    pb_bytes(&pub, 1, "\x01", 1);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 60);
    pb_msg(&b, 4, &pub);
    pb_free(&pub);
    s_expect_whole_pb(s, &b, E_INVALID, 60);
    pb_uint(&pub, 2, 1);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 61);
    pb_msg(&b, 4, &pub);
    pb_free(&pub);
    s_expect_whole_pb(s, &b, E_INVALID, 61);
    s_end();
    s_hello_ok(s);
    s_close(s);
}

/* One publish of `n` events (acked: sequenced), the i-th expected to get
 * want[i]; counts what the ingest counts. */
static void
s_per_event(void *s, int ack, const ev_spec *e, size_t n, const int *want)
{
    static uint64_t id = 1000;
    pb b = {0};
    size_t refused = 0;

    pb_publish(&b, 1, ++id, (uint64_t) ack, e, n);
    s_send1(s, b.p, b.len);
    pb_free(&b);
    for (size_t i = 0; i < n; i++)
        refused += want[i] != E_NONE;
    if (ack == 0 && refused == 0)
        return; /* fire-and-forget, all accepted: no reply */
    Snapbus__Reply *r = s_recv_reply(s, NULL);
    assert_non_null(r);
    assert_int_equal(r->request_id, id);
    assert_int_equal(r->error, E_NONE);
    assert_int_equal(r->body_case, SNAPBUS__REPLY__BODY_PUBLISH);
    assert_int_equal(r->publish->n_results, n);
    for (size_t i = 0; i < n; i++) {
        const Snapbus__EventResult *res = r->publish->results[i];
        if ((int) res->error != want[i])
            fail_msg("event %zu: error %d, expected %d", i, res->error, want[i]);
        if (want[i] != E_NONE) {
            assert_int_equal(res->seq, 0);
            s_want.refused[want[i]]++;
            s_want.events_refused++;
        } else {
            assert_true(ack == 0 ? res->seq == 0 : res->seq > 0);
        }
    }
    snapbus__reply__free_unpacked(r, NULL);
}

static void
test_names_and_payloads(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    static char longname[1001];
    const ev_spec okev = ev("bi/ok", "T");
    static const struct {
        const char *s;
        size_t n;
        const char *what;
    } bad_utf8[] = {
        {"a\xc0\xaf", 3, "overlong 2-byte"},
        {"\xe0\x80\xaf", 3, "overlong 3-byte"},
        {"\xf0\x80\x80\xaf", 4, "overlong 4-byte"},
        {"\xed\xa0\x80", 3, "surrogate"},
        {"\xed\xbf\xbf", 3, "low surrogate"},
        {"\xf4\x90\x80\x80", 4, "above U+10FFFF"},
        {"\xf5\x80\x80\x80", 4, "lead byte F5"},
        {"\xff", 1, "byte FF"},
        {"\xfe\xfe", 2, "bytes FE"},
        {"\x80", 1, "lone continuation"},
        {"ab\xe2\x82", 4, "cut at the end"},
        {"\xc3", 1, "lead byte alone"},
        {"\xe2\x28\xa1", 3, "bad continuation"},
        {"a\0b", 3, "NUL inside"},
        {"\0", 1, "NUL alone"},
    };
    ev_spec e[2];
    int want[2];

    memset(longname, 'x', sizeof longname - 1);
    s_begin("aggregate: empty, 256, 1000 bytes; 255 bytes is fine");
    e[1] = okev;
    want[1] = E_NONE;
    e[0] = ev("", "T");
    want[0] = E_INVALID;
    s_per_event(s, 1, e, 2, want);
    e[0] = ev("bi/", "T");
    e[0].agg = longname;
    e[0].agg_len = MAX_NAME + 1;
    want[0] = E_TOO_LARGE;
    s_per_event(s, 1, e, 2, want);
    e[0].agg_len = 1000;
    s_per_event(s, 1, e, 2, want);
    e[0].agg_len = MAX_NAME;
    want[0] = E_NONE;
    s_per_event(s, 1, e, 2, want);
    s_end();

    s_begin("aggregate: 15 kinds of invalid UTF-8 or NUL");
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        e[0] = ev("", "T");
        e[0].agg = bad_utf8[i].s;
        e[0].agg_len = bad_utf8[i].n;
        want[0] = E_INVALID;
        s_per_event(s, 1, e, 2, want);
    }
    s_end();

    s_begin("type: empty, too long, 15 kinds of invalid UTF-8 or NUL");
    e[0] = ev("bi/type", "");
    want[0] = E_INVALID;
    s_per_event(s, 1, e, 2, want);
    e[0].type = longname;
    e[0].type_len = MAX_NAME + 1;
    want[0] = E_TOO_LARGE;
    s_per_event(s, 1, e, 2, want);
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        e[0].type = bad_utf8[i].s;
        e[0].type_len = bad_utf8[i].n;
        want[0] = E_INVALID;
        s_per_event(s, 1, e, 2, want);
    }
    s_end();

    s_begin("event_id and producer_id: too long, invalid UTF-8; empty is fine");
    e[0] = ev("bi/ids", "T");
    e[0].event_id = longname;
    e[0].event_id_len = MAX_NAME + 1;
    want[0] = E_TOO_LARGE;
    s_per_event(s, 1, e, 2, want);
    e[0].event_id = "\xed\xa0\x80";
    e[0].event_id_len = 3;
    want[0] = E_INVALID;
    s_per_event(s, 1, e, 2, want);
    e[0].event_id = "";
    e[0].event_id_len = 0;
    want[0] = E_NONE;
    s_per_event(s, 1, e, 2, want);
    e[0].producer_id = longname;
    e[0].producer_id_len = MAX_NAME + 1;
    want[0] = E_TOO_LARGE;
    s_per_event(s, 1, e, 2, want);
    e[0].producer_id = "a\0";
    e[0].producer_id_len = 2;
    want[0] = E_INVALID;
    s_per_event(s, 1, e, 2, want);
    s_end();

    s_begin("payload: one byte over the limit; at the limit is fine");
    e[0] = ev("bi/payload", "T");
    e[0].payload_len = MAX_PAYLOAD + 1;
    want[0] = E_TOO_LARGE;
    s_per_event(s, 1, e, 2, want);
    e[0].payload_len = 60000;
    s_per_event(s, 1, e, 2, want);
    e[0].payload_len = MAX_PAYLOAD;
    want[0] = E_NONE;
    s_per_event(s, 1, e, 2, want);
    s_end();

    s_begin("the first failing check decides; every ack level answers");
    e[0] = ev("", "");
    e[0].payload_len = MAX_PAYLOAD + 1;
    want[0] = E_INVALID; /* aggregate first */
    s_per_event(s, 1, e, 2, want);
    e[0] = ev("bi/order", "");
    e[0].agg = longname;
    e[0].agg_len = MAX_NAME + 1;
    want[0] = E_TOO_LARGE;
    s_per_event(s, 0, e, 2, want); /* ACK_NONE: answered at once */
    s_per_event(s, 3, e, 2, want); /* ACK_PUBLISHED: after publishing */
    s_per_event(s, 0, e, 1, want); /* every event refused */
    s_per_event(s, 3, e, 1, want);
    s_end();
    s_hello_ok(s);
    s_close(s);
}

static void
test_oversized(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 3000);
    uint8_t *big = malloc(4u << 20);
    int t = 2000;

    assert_non_null(big);
    s_random_bytes(big, 4u << 20);
    s_begin("above max_message_bytes: 1 byte over, and exactly 2x");
    s_expect_whole(s, big, MAX_MSG + 1, E_TOO_LARGE, 0);
    s_expect_whole(s, big, 2 * MAX_MSG, E_TOO_LARGE, 0);
    /* A valid publish over the limit too: its id is not read. */
    pb b = {0};
    ev_spec e = ev("bi/big", "T");
    e.payload_len = MAX_MSG;
    pb_publish(&b, 1, 70, 1, &e, 1);
    s_expect_whole_pb(s, &b, E_TOO_LARGE, 0);
    s_end();

    s_begin("above ZMQ_MAXMSGSIZE (2x): dropped, no reply, broker unharmed");
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t);
    size_t sizes[] = {2 * MAX_MSG + 1, 1u << 20, 4u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        s_send1(s, big, sizes[i]);
        assert_null(s_recv_reply(s, NULL)); /* the connection was dropped */
        /* The DEALER reconnects by itself and is served again. */
        t = 10000;
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t);
        s_hello_ok(s);
        t = 2000;
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t);
    }
    s_end(); /* nothing counted: ZeroMQ closed them */
    s_close(s);

    s_begin("above 64 KiB on the query socket: dropped, no reply");
    s = s_sock(ZMQ_DEALER, broker.query, 2000);
    s_send1(s, big, (64u << 10) + 1);
    assert_null(s_recv_reply(s, NULL));
    t = 10000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t);
    s_hello_ok(s);
    s_end();
    s_close(s);
    free(big);
}

/* ---- the query socket ---------------------------------------------------- */

static Snapbus__Reply *
s_fetch(void *q, const fetch_spec *f, int *frames)
{
    static uint64_t id = 5000;
    pb b = {0};
    pb_fetch(&b, ++id, f);
    s_send1(q, b.p, b.len);
    pb_free(&b);
    Snapbus__Reply *r = s_recv_reply(q, frames);
    assert_non_null(r);
    assert_int_equal(r->request_id, id);
    return r;
}

static void
s_fetch_refused(void *q, const fetch_spec *f, int err)
{
    int frames;
    Snapbus__Reply *r = s_fetch(q, f, &frames);
    if ((int) r->error != err)
        fail_msg("fetch: error %d (%s), expected %d", r->error, r->detail, err);
    assert_int_equal(frames, 0);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.fetch_refused++;
}

static void
s_fetch_ok(void *q, const fetch_spec *f, int *frames)
{
    Snapbus__Reply *r = s_fetch(q, f, frames);
    if (r->error != 0)
        fail_msg("fetch: error %d (%s)", r->error, r->detail);
    assert_int_equal(r->body_case, SNAPBUS__REPLY__BODY_FETCH);
    assert_int_equal(r->fetch->count, (uint32_t) *frames);
    snapbus__reply__free_unpacked(r, NULL);
}

static void
test_query_bad_requests(void **state)
{
    void *q = s_sock(ZMQ_DEALER, broker.query, 10000);
    static uint8_t buf[2048];
    const void *f[3] = {"a", "b", "c"};
    size_t n[3] = {1, 1, 1};
    Snapbus__Reply *r;
    pb b = {0};

    s_begin("query socket: random bytes, empty, wrong frames, wrong types");
    for (int i = 0; i < 300; i++) {
        size_t len = 1 + s_rand() % sizeof buf;
        s_random_bytes(buf, len);
        s_send1(q, buf, len);
        assert_non_null(r = s_recv_reply(q, NULL));
        assert_true(r->error == E_INVALID || r->error == E_BAD_VERSION);
        snapbus__reply__free_unpacked(r, NULL);
        s_want.fetch_refused++;
    }
    s_send1(q, "", 0);
    assert_non_null(r = s_recv_reply(q, NULL));
    assert_int_equal(r->error, E_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.fetch_refused++;
    s_send_frames(q, f, n, 3);
    assert_non_null(r = s_recv_reply(q, NULL));
    assert_int_equal(r->error, E_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.fetch_refused++;
    /* A publish belongs on the ingest socket. */
    ev_spec e = ev("bi/query", "T");
    pb_publish(&b, 1, 80, 1, &e, 1);
    s_send1(q, b.p, b.len);
    pb_free(&b);
    assert_non_null(r = s_recv_reply(q, NULL));
    assert_int_equal(r->error, E_UNSUPPORTED);
    assert_int_equal(r->request_id, 80);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.fetch_refused++;
    /* A Fetch with wrong wire types. */
    pb sub = {0};
    pb_bytes(&sub, 2, "\x01", 1);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 81);
    pb_msg(&b, 5, &sub);
    pb_free(&sub);
    s_send1(q, b.p, b.len);
    pb_free(&b);
    assert_non_null(r = s_recv_reply(q, NULL));
    assert_int_equal(r->error, E_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.fetch_refused++;
    /* An unknown version. */
    pb_uint(&b, 1, 9);
    pb_uint(&b, 2, 82);
    s_send1(q, b.p, b.len);
    pb_free(&b);
    assert_non_null(r = s_recv_reply(q, NULL));
    assert_int_equal(r->error, E_BAD_VERSION);
    snapbus__reply__free_unpacked(r, NULL);
    s_want.fetch_refused++;
    s_end();
    s_hello_ok(q);
    s_close(q);
}

/* Publishes `batches` single-event batches (delay 0 for "ret/..."), so
 * that retention moves on. */
static void
s_flood_batches(int batches)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 30000);
    static ev_spec e[MAX_EVENTS];
    static char names[MAX_EVENTS][16];

    for (int i = 0; i < (int) MAX_EVENTS; i++) {
        snprintf(names[i], sizeof names[i], "ret/%d", i);
        e[i] = ev(names[i], "Flood");
    }
    for (int done = 0; done < batches; done += MAX_EVENTS) {
        pb b = {0};
        pb_publish(&b, 1, 90, 1, e, MAX_EVENTS); /* one batch per aggregate */
        assert_true(zmq_send(s, b.p, b.len, 0) >= 0);
        pb_free(&b);
        Snapbus__Reply *r = s_recv_reply(s, NULL);
        assert_non_null(r);
        assert_int_equal(r->error, 0);
        snapbus__reply__free_unpacked(r, NULL);
    }
    s_close(s);
}

/* Publishes one event (ACK_PUBLISHED when published, else sequenced);
 * returns its seq. */
static uint64_t
s_publish_one(void *s, const char *agg, uint64_t caused_by, int published)
{
    pb b = {0}, pub = {0}, e = {0};
    pb_str(&e, 1, agg);
    pb_str(&e, 2, "T");
    pb_uint(&e, 6, caused_by);
    pb_uint(&pub, 1, published ? 3 : 1);
    pb_msg(&pub, 2, &e);
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 600);
    pb_msg(&b, 4, &pub);
    assert_true(zmq_send(s, b.p, b.len, 0) >= 0);
    pb_free(&b);
    pb_free(&pub);
    pb_free(&e);
    Snapbus__Reply *r = s_recv_reply(s, NULL);
    assert_non_null(r);
    assert_int_equal(r->error, 0);
    assert_int_equal(r->publish->results[0]->error, 0);
    uint64_t seq = r->publish->results[0]->seq;
    snapbus__reply__free_unpacked(r, NULL);
    return seq;
}

/* Fetches prefix from from_seq and checks the batch of `cause_agg`: its
 * second event is the effect, of its own aggregate. */
static void
s_check_joined(void *q, const char *cause_agg, uint64_t from_seq,
               const char *effect_agg)
{
    static uint8_t buf[1 << 20];
    pb b = {0};
    fetch_spec f = {cause_agg, strlen(cause_agg), from_seq, 0, 0, 1};
    int more = 0, n, found = 0;
    size_t sz = sizeof more;

    pb_fetch(&b, 700, &f);
    assert_true(zmq_send(q, b.p, b.len, 0) >= 0);
    pb_free(&b);
    assert_true((n = zmq_recv(q, buf, sizeof buf, 0)) >= 0);
    Snapbus__Reply *r = snapbus__reply__unpack(NULL, (size_t) n, buf);
    assert_non_null(r);
    if (r->error != 0)
        fail_msg("fetch of the joined batch: error %d (%s)", r->error, r->detail);
    snapbus__reply__free_unpacked(r, NULL);
    zmq_getsockopt(q, ZMQ_RCVMORE, &more, &sz);
    while (more) {
        assert_true((n = zmq_recv(q, buf, sizeof buf, 0)) >= 0);
        zmq_getsockopt(q, ZMQ_RCVMORE, &more, &sz);
        Snapbus__SnapshotBatch *m = snapbus__snapshot_batch__unpack(NULL, (size_t) n, buf);
        assert_non_null(m);
        if (strcmp(m->aggregate, cause_agg) == 0 && m->first_seq == from_seq) {
            assert_int_equal(m->n_events, 2);
            assert_string_equal(m->events[0]->aggregate, ""); /* the batch's */
            assert_string_equal(m->events[1]->aggregate, effect_agg);
            found = 1;
        }
        snapbus__snapshot_batch__free_unpacked(m, NULL);
    }
    assert_true(found);
}

static void
test_fetch_from_log_keeps_joined_events(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    void *q = s_sock(ZMQ_DEALER, broker.query, 10000);

    /* Not bad input, but a regression found by fuzz_logfiles: a batch
     * rebuilt from the log lost the aggregate of an event that had joined
     * it through caused_by. Here: the ring's copy, then the log's. */
    s_case("an effect joined its cause's batch; fetched from ring and log");
    uint64_t cause = s_publish_one(s, "join/cause", 0, 0);
    s_publish_one(s, "join/effect", cause, 1); /* joins: the batch is open */
    s_check_joined(q, "join/cause", cause, "join/effect");
    s_flood_batches(RETAIN_BATCHES + 200); /* out of the ring, not the log */
    s_check_joined(q, "join/cause", cause, "join/effect");
    s_close(s);
    s_close(q);
}

static void
test_fetch_ranges(void **state)
{
    void *q = s_sock(ZMQ_DEALER, broker.query, 10000);
    static char longp[300];
    int frames;

    memset(longp, 'p', sizeof longp);
    s_begin("fetch: reversed ranges");
    fetch_spec f = {"good/", 5, 10, 9, 0, 0};
    s_fetch_refused(q, &f, E_INVALID);
    f.from_seq = UINT64_MAX;
    f.to_seq = 1;
    s_fetch_refused(q, &f, E_INVALID);
    s_end();

    s_begin("fetch: prefix too long, not UTF-8; NUL cuts it");
    fetch_spec p = {longp, 256, 0, 0, 0, 0};
    s_fetch_refused(q, &p, E_TOO_LARGE);
    p.prefix_len = sizeof longp;
    s_fetch_refused(q, &p, E_TOO_LARGE);
    p.prefix = "good/\xff";
    p.prefix_len = 6;
    s_fetch_refused(q, &p, E_INVALID);
    p.prefix = "good/\xe2\x82";
    p.prefix_len = 7;
    s_fetch_refused(q, &p, E_INVALID);
    p.prefix = "good/\0\xff\xff";
    p.prefix_len = 8;
    p.max_batches = 1;
    s_fetch_ok(q, &p, &frames); /* everything from the NUL on is ignored */
    s_end();

    s_begin("fetch: huge ranges and cursors are bounded, not refused");
    fetch_spec h = {"", 0, 0, 0, 0, 0};
    h.to_seq = UINT64_MAX;
    h.max_batches = UINT32_MAX;
    s_fetch_ok(q, &h, &frames);
    assert_true(frames <= 1000); /* retention.fetch_max_batches */
    h.from_seq = UINT64_MAX;
    h.to_seq = UINT64_MAX;
    h.after_batch_id = 0;
    s_fetch_ok(q, &h, &frames);
    assert_int_equal(frames, 0);
    h.from_seq = 0;
    h.to_seq = 0;
    h.after_batch_id = UINT64_MAX;
    s_fetch_ok(q, &h, &frames);
    assert_int_equal(frames, 0);
    s_end();

    s_begin("fetch: outside retention, by seq and by batch cursor");
    /* More batches than the ring keeps, and more bytes than the log
     * keeps: its retention pass (once a second) deletes the oldest
     * segments. Wait for that (bounded), asking for seq 1. */
    s_flood_batches(3 * RETAIN_BATCHES);
    fetch_spec o = {"", 0, 1, 0, 0, 1};
    for (uint64_t deadline = sbt_now_ms() + 60000;;) {
        Snapbus__Reply *r = s_fetch(q, &o, &frames);
        int err = (int) r->error;
        snapbus__reply__free_unpacked(r, NULL);
        if (err == E_OUT_OF_RETENTION)
            break;
        assert_int_equal(err, E_NONE);
        assert_true(sbt_now_ms() < deadline);
        usleep(100000);
    }
    s_want.fetch_refused++;
    o.from_seq = 0;
    o.after_batch_id = 1;
    s_fetch_refused(q, &o, E_OUT_OF_RETENTION);
    o.from_seq = 1;
    o.to_seq = UINT64_MAX; /* huge and outside */
    o.after_batch_id = 0;
    s_fetch_refused(q, &o, E_OUT_OF_RETENTION);
    s_end();

    s_begin("fetch: a cursor right before the oldest retained batch is served");
    fetch_spec w = {"", 0, 0, 0, 0, 1};
    Snapbus__Reply *r = s_fetch(q, &w, &frames);
    assert_int_equal(r->error, 0);
    uint64_t oldest = r->fetch->retained_first_batch_id;
    snapbus__reply__free_unpacked(r, NULL);
    w.after_batch_id = oldest - 1;
    r = s_fetch(q, &w, &frames);
    if (r->error != 0)
        fail_msg("after_batch_id %llu (oldest retained %llu): error %d (%s), "
                 "retained_first_batch_id %llu",
                 (unsigned long long) w.after_batch_id, (unsigned long long) oldest,
                 r->error, r->detail,
                 (unsigned long long) (r->fetch ? r->fetch->retained_first_batch_id : 0));
    assert_int_equal(frames, 1);
    snapbus__reply__free_unpacked(r, NULL);
    s_end();
    s_close(q);
}

/* A fetch refused OUT_OF_RETENTION; returns the retention start it gives. */
static uint64_t
s_fetch_out(void *q, const fetch_spec *f, uint64_t *first_seq)
{
    int frames;
    Snapbus__Reply *r = s_fetch(q, f, &frames);
    uint64_t rf = 0;

    if (r->error == E_OUT_OF_RETENTION) {
        assert_int_equal(r->body_case, SNAPBUS__REPLY__BODY_FETCH);
        rf = r->fetch->retained_first_batch_id;
        if (first_seq)
            *first_seq = r->fetch->retained_first_seq;
        s_want.fetch_refused++;
    } else {
        assert_int_equal(r->error, 0);
    }
    snapbus__reply__free_unpacked(r, NULL);
    return rf;
}

static void
test_fetch_partly_evicted_batch(void **state)
{
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 30000);
    void *q = s_sock(ZMQ_DEALER, broker.query, 10000);
    uint64_t first_seq = 0;

    /* A regression found by this suite: a batch held open while the log
     * moved on has its first event in a segment that retention deletes
     * and its batch record in a later one. The log refused a cursor right
     * before it with OUT_OF_RETENTION and named, as the oldest retained
     * batch, the very batch after that cursor: the client's next cursor
     * was the same, refused again, for ever (a subscriber spun on it). */
    s_begin("a batch whose first events left the log: the cursor moves past it");
    uint64_t held = s_publish_one(s, "hold/x", 0, 0); /* open for 1.5 s */
    s_flood_batches(2 * RETAIN_BATCHES);
    /* Wait for it to close: its batch record is written then. */
    fetch_spec bys = {"hold/", 5, 0, 0, 0, 1};
    bys.from_seq = held;
    uint64_t deadline = sbt_now_ms() + 60000;
    for (int frames = 0;;) {
        s_fetch_ok(q, &bys, &frames);
        if (frames > 0)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("the held batch (seq %llu) never closed",
                     (unsigned long long) held);
        usleep(50000);
    }
    s_flood_batches(RETAIN_BATCHES + 500); /* out of the ring */
    /* Wait for log retention to delete its first event. */
    deadline = sbt_now_ms() + 60000;
    while (s_fetch_out(q, &bys, NULL) == 0) {
        if (sbt_now_ms() > deadline)
            fail_msg("retention never deleted seq %llu",
                     (unsigned long long) held);
        usleep(50000);
    }
    /* Follow what the refusals say, as a client does: each one must move
     * on, and the walk must end served. Retention may still be deleting,
     * so a refusal may name a later batch than the one before; naming the
     * same or an earlier one is the bug. */
    fetch_spec cur = {"hold/", 5, 0, 0, 1, 1};
    uint64_t rf = s_fetch_out(q, &cur, &first_seq), last = 0;
    for (int i = 0; rf != 0; i++) {
        if (rf <= last)
            fail_msg("OUT_OF_RETENTION with retained_first_batch_id %llu again: "
                     "no way past it", (unsigned long long) rf);
        assert_true(i < 1000);
        last = rf;
        cur.after_batch_id = rf - 1;
        rf = s_fetch_out(q, &cur, &first_seq);
    }
    /* And by seq: from where it says retention starts, served (or, if
     * retention moved meanwhile, a later start each time). */
    bys.from_seq = first_seq;
    for (int i = 0;; i++) {
        uint64_t next = 0;
        if (s_fetch_out(q, &bys, &next) == 0)
            break;
        if (next <= bys.from_seq)
            fail_msg("fetch from_seq %llu refused, naming retained_first_seq "
                     "%llu: no way past it", (unsigned long long) bys.from_seq,
                     (unsigned long long) next);
        assert_true(i < 1000);
        bys.from_seq = next;
    }
    s_end();
    s_close(s);
    s_close(q);
}

/* ---- the subscriber side ------------------------------------------------- */

static int
s_tcp_connect(const char *ep)
{
    char host[64];
    unsigned port;
    struct sockaddr_in a = {0};
    int fd;

    assert_int_equal(sscanf(ep, "tcp://%63[^:]:%u", host, &port), 2);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t) port);
    assert_int_equal(inet_pton(AF_INET, host, &a.sin_addr), 1);
    assert_true((fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *) &a, sizeof a), 0);
    return fd;
}

static void
test_subscriber_garbage(void **state)
{
    static uint8_t buf[100000];

    s_begin("XSUB to the PUB socket: random messages, odd subscriptions");
    void *x = s_sock(ZMQ_XSUB, broker.pub, 1000);
    for (int i = 0; i < 500; i++) {
        size_t len = 1 + s_rand() % 512;
        s_random_bytes(buf, len);
        if (buf[0] <= 1)
            buf[0] = 2; /* neither subscribe nor unsubscribe */
        s_send1(x, buf, len);
    }
    for (int i = 0; i < 200; i++) { /* 200 subscriptions, 200 unsubscribes */
        size_t len = 2 + s_rand() % 1000;
        s_random_bytes(buf, len);
        buf[0] = 1;
        s_send1(x, buf, len);
        buf[0] = 0;
        s_send1(x, buf, len);
    }
    buf[0] = 0;
    s_send1(x, "\0never-subscribed", 17);
    const void *mf[3] = {"\x01\x61", "b", "c"}; /* subscribe "a", then more */
    size_t mn[3] = {2, 1, 1};
    s_send_frames(x, mf, mn, 3); /* a multi-frame subscription */
    buf[0] = 1;
    s_send1(x, buf, 65000); /* a huge one, under the socket's limit */
    s_send1(x, buf, sizeof buf); /* over 64 KiB: dropped */
    s_end();

    s_begin("raw TCP garbage on every port (not ZMTP at all)");
    const char *eps[3] = {broker.pub, broker.ingest, broker.query};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 20; i++) {
            int fd = s_tcp_connect(eps[k]);
            size_t len = 1 + s_rand() % 4096;
            s_random_bytes(buf, len);
            if (i == 0)
                len = (size_t) snprintf((char *) buf, sizeof buf,
                                        "GET /metrics HTTP/1.0\r\n\r\n");
            if (i == 1) { /* a ZMTP greeting of version 9 */
                memset(buf, 0, 64);
                buf[0] = 0xff;
                buf[9] = 0x7f;
                buf[10] = 9;
                len = 64;
            }
            (void) !send(fd, buf, len, MSG_NOSIGNAL);
            close(fd);
            s_bad_inputs++;
        }
    }
    s_end_settled();
    s_close(x);
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    s_hello_ok(s);
    s_close(s);
}

/* ---- connections --------------------------------------------------------- */

static int
s_broker_fds(void)
{
    char path[64];
    DIR *d;
    int n = 0;

    snprintf(path, sizeof path, "/proc/%d/fd", (int) broker.pid);
    if ((d = opendir(path)) == NULL)
        return -1;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 2;
}

static void
test_connection_churn(void **state)
{
    enum { ROUNDS = 20, PER_ROUND = 100 };
    void *socks[PER_ROUND];
    int fds_before = s_broker_fds();
    pb h = {0}, b = {0};

    pb_str(&h, 1, "churn");
    pb_uint(&b, 1, 1);
    pb_uint(&b, 2, 1);
    pb_msg(&b, 3, &h);
    s_begin("2,000 ingest connections opened and dropped (half mid-request)");
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < PER_ROUND; i++) {
            socks[i] = s_sock(ZMQ_DEALER, broker.ingest, 10000);
            assert_true(zmq_send(socks[i], b.p, b.len, 0) >= 0);
        }
        for (int i = 0; i < PER_ROUND; i++) {
            if (i % 2 == 0) { /* reads its reply, then goes */
                Snapbus__Reply *rep = s_recv_reply(socks[i], NULL);
                assert_non_null(rep);
                snapbus__reply__free_unpacked(rep, NULL);
            }
            s_close(socks[i]); /* the others go before their reply */
            s_bad_inputs++;
        }
    }
    s_end();

    s_begin("1,000 subscriber and 1,000 query connections opened and dropped");
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < PER_ROUND; i++) {
            socks[i] = s_sock(ZMQ_SUB, broker.pub, 1000);
            zmq_setsockopt(socks[i], ZMQ_SUBSCRIBE, "", 0);
        }
        for (int i = 0; i < PER_ROUND; i++) {
            s_close(socks[i]);
            s_bad_inputs++;
        }
        for (int i = 0; i < PER_ROUND; i++)
            socks[i] = s_sock(ZMQ_DEALER, broker.query, 1000);
        for (int i = 0; i < PER_ROUND; i++) {
            assert_true(zmq_send(socks[i], b.p, b.len, 0) >= 0);
            s_close(socks[i]);
            s_bad_inputs++;
        }
    }
    s_end();
    pb_free(&h);
    pb_free(&b);

    /* Every connection is gone on the broker's side too: its descriptors
     * come back to about where they were (waiting is bounded, not timed;
     * the log opens a segment now and then, hence the margin, far below
     * the 4,000 connections). */
    int fds = -1;
    for (uint64_t deadline = sbt_now_ms() + 60000; sbt_now_ms() < deadline;) {
        fds = s_broker_fds();
        if (fds <= fds_before + 32)
            break;
        usleep(20000);
    }
    printf("  broker descriptors: %d before, %d after\n", fds_before, fds);
    assert_true(fds <= fds_before + 32);
}

static void
test_peer_not_reading(void **state)
{
    enum { N = 10000 };
    void *s = s_sock(ZMQ_DEALER, broker.ingest, 10000);
    int hwm = 10;
    counters before, after;
    static ev_spec e[MAX_EVENTS];
    pb b = {0};

    /* Every event refused: each request is answered at once with a reply
     * of 100 results, a few KiB, until the peer's queues are full. */
    for (size_t i = 0; i < MAX_EVENTS; i++)
        e[i] = ev("", "T");
    pb_publish(&b, 1, 99, 1, e, MAX_EVENTS);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    s_begin("a peer that sends 10,000 bad requests and reads no reply");
    s_scrape(&before);
    for (int i = 0; i < N; i++) {
        s_send1(s, b.p, b.len);
        s_want.refused[E_INVALID] += MAX_EVENTS;
        s_want.events_refused += MAX_EVENTS;
    }
    pb_free(&b);
    /* Each was answered or its reply counted as lost: wait for all. */
    for (uint64_t deadline = sbt_now_ms() + 120000; sbt_now_ms() < deadline;) {
        s_scrape(&after);
        if (after.events_refused - before.events_refused >= (uint64_t) N * MAX_EVENTS)
            break;
        usleep(20000);
    }
    printf("  replies lost: %llu\n",
           (unsigned long long) (after.replies_lost - before.replies_lost));
    assert_true(after.replies_lost > before.replies_lost);
    s_end();
    s_close(s);
}

/* ---- the good clients, at the end --------------------------------------- */

static void
test_good_clients_intact(void **state)
{
    s_case("the publisher and subscriber that ran alongside");
    atomic_store(&good.stop_pub, 1);
    pthread_join(good.pub_thread, NULL);
    /* Everything acked is published within the batching delay; wait until
     * the subscriber has it (bounded), then stop it (it fills the tail). */
    for (uint64_t deadline = sbt_now_ms() + 120000;
         sbt_now_ms() < deadline && atomic_load(&good.received) < atomic_load(&good.acked);)
        usleep(20000);
    atomic_store(&good.stop_sub, 1);
    pthread_join(good.sub_thread, NULL);
    /* Every fetch refusal since the start is accounted for, to the last. */
    counters last;
    memset(&s_want, 0, sizeof s_want);
    s_scrape(&s_before);
    s_check_fetch_refusals(&last);
    s_relay_stop();

    uint64_t acked = atomic_load(&good.acked), missing = 0, extra = 0;
    for (uint64_t seq = 1; seq < SEQ_MAX; seq++) {
        if (good.acked_seq[seq] && good.seen[seq] != 1)
            missing++;
        if (!good.acked_seq[seq] && good.seen[seq] != 0)
            extra++;
    }
    printf("  good publisher: %llu published, %llu acked; subscriber: %llu "
           "events (%llu live batches, %llu batches by gap fill), %llu "
           "missing, %llu duplicated, %llu unexpected\n",
           (unsigned long long) atomic_load(&good.published),
           (unsigned long long) acked,
           (unsigned long long) atomic_load(&good.received),
           (unsigned long long) atomic_load(&good.live_batches),
           (unsigned long long) atomic_load(&good.fetched_batches),
           (unsigned long long) missing,
           (unsigned long long) atomic_load(&good.dup),
           (unsigned long long) extra);
    printf("  its library: %llu gaps, %llu batches filled, %llu fetches, %llu "
           "probes; %llu of %llu replies to its queries were refusals, of "
           "%llu fetch refusals in all\n",
           (unsigned long long) good.lib.gaps, (unsigned long long) good.lib.filled,
           (unsigned long long) good.lib.fetches, (unsigned long long) good.lib.probes,
           (unsigned long long) atomic_load(&relay.refused),
           (unsigned long long) atomic_load(&relay.replies),
           (unsigned long long) last.fetch_refused);
    assert_int_equal(atomic_load(&relay.garbled), 0);
    assert_int_equal(atomic_load(&good.ack_errors), 0);
    assert_true(acked > 1000);
    assert_int_equal(acked, atomic_load(&good.published));
    assert_int_equal(missing, 0);
    assert_int_equal(extra, 0);
    assert_int_equal(atomic_load(&good.dup), 0);
    assert_int_equal(atomic_load(&good.foreign), 0);
    assert_int_equal(atomic_load(&good.topic_errors), 0);
    assert_int_equal(atomic_load(&good.fetch_errors), 0);
    assert_int_equal(atomic_load(&good.losses), 0);
    assert_int_equal(atomic_load(&good.received), acked);
    printf("  %d cases, %ld bad messages or connections\n", s_cases, s_bad_inputs);
}

static int
setup(void **state)
{
    static char maxmsg[16], maxpay[16], maxev[16], retain[16];
    snprintf(maxmsg, sizeof maxmsg, "%u", MAX_MSG);
    snprintf(maxpay, sizeof maxpay, "%u", MAX_PAYLOAD);
    snprintf(maxev, sizeof maxev, "%u", MAX_EVENTS);
    snprintf(retain, sizeof retain, "%d", RETAIN_BATCHES);
    const char *args[] = {"--metrics", "127.0.0.1:0",
                          "--max-message-bytes", maxmsg,
                          "--max-payload-bytes", maxpay,
                          "--max-events-per-request", maxev,
                          "--retain-batches", retain,
                          "--delay", "ret/*=0",
                          "--hwm", "1000",
                          "--set", "storage.segment_bytes=65536",
                          "--set", "storage.retain_bytes=1048576",
                          "--delay", "join/*=300",
                          "--delay", "hold/*=1500",
                          "--log-level", "warn",
                          NULL};
    ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, 4096);
    if (sbt_broker_start(&broker, args) != 0 || broker.metrics[0] == '\0')
        return -1;
    printf("  broker: pid %d, files and log in %s\n", (int) broker.pid, broker.dir);
    good.seen = calloc(SEQ_MAX, 1);
    good.acked_seq = calloc(SEQ_MAX, 1);
    if (good.seen == NULL || good.acked_seq == NULL || s_relay_start() != 0)
        return -1;
    pthread_create(&good.sub_thread, NULL, s_subscriber, NULL);
    while (!atomic_load(&good.sub_ready))
        usleep(1000);
    s_wait_subscribed();
    pthread_create(&good.pub_thread, NULL, s_publisher, NULL);
    return 0;
}

static int
teardown(void **state)
{
    int rc = sbt_broker_stop(&broker, 60);
    /* After a failed case a socket may still be open, and zmq_ctx_term
     * would wait for it forever. */
    if (s_open_socks == 0) {
        s_relay_stop();
        zmq_ctx_term(ctx);
    } else {
        zmq_ctx_shutdown(ctx);
    }
    free(good.seen);
    free(good.acked_seq);
    return rc == 0 ? 0 : -1;
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_empty_messages),
        cmocka_unit_test(test_wrong_frame_counts),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_wrong_message_types),
        cmocka_unit_test(test_versions_and_bodies),
        cmocka_unit_test(test_publish_structure),
        cmocka_unit_test(test_names_and_payloads),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_query_bad_requests),
        cmocka_unit_test(test_fetch_from_log_keeps_joined_events),
        cmocka_unit_test(test_fetch_ranges),
        cmocka_unit_test(test_fetch_partly_evicted_batch),
        cmocka_unit_test(test_subscriber_garbage),
        cmocka_unit_test(test_connection_churn),
        cmocka_unit_test(test_peer_not_reading),
        cmocka_unit_test(test_good_clients_intact),
    };
    return cmocka_run_group_tests(t, setup, teardown);
}
