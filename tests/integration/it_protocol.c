/* Protocol edges against the real broker, over raw ZeroMQ + protobuf-c:
 * hello, versions, per-event and whole-request errors, REQ peers, fetch
 * and its refusals. Each refusal leaves the broker serving. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "harness.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

static sbt_broker broker;
static void *ctx;

typedef struct {
    void *s;
    uint8_t buf[1 << 20];
    size_t len;
} conn;

static conn *
s_connect(const char *ep, int type)
{
    conn *c = calloc(1, sizeof *c);
    int t = 10000, zero = 0;
    c->s = zmq_socket(ctx, type);
    zmq_setsockopt(c->s, ZMQ_RCVTIMEO, &t, sizeof t);
    zmq_setsockopt(c->s, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(c->s, ep), 0);
    return c;
}

static void
s_close(conn *c)
{
    zmq_close(c->s);
    free(c);
}

static void
s_send_req(conn *c, Snapbus__Request *r)
{
    size_t n = snapbus__request__get_packed_size(r);
    uint8_t *b = malloc(n + 1);
    snapbus__request__pack(r, b);
    assert_int_equal(zmq_send(c->s, b, n, 0), (int) n);
    free(b);
}

/* Receives a reply; *extra gets the number of frames after it. */
static Snapbus__Reply *
s_recv_reply(conn *c, int *extra)
{
    int n = zmq_recv(c->s, c->buf, sizeof c->buf, 0), more = 0;
    size_t sz = sizeof more;
    assert_true(n >= 0);
    Snapbus__Reply *r = snapbus__reply__unpack(NULL, (size_t) n, c->buf);
    assert_non_null(r);
    if (extra)
        *extra = 0;
    zmq_getsockopt(c->s, ZMQ_RCVMORE, &more, &sz);
    while (more) {
        /* Every frame after a fetch reply is one whole SnapshotBatch. */
        int m = zmq_recv(c->s, c->buf, sizeof c->buf, 0);
        assert_true(m > 0);
        Snapbus__SnapshotBatch *b = snapbus__snapshot_batch__unpack(NULL, (size_t) m, c->buf);
        assert_non_null(b);
        assert_int_equal(b->version, 1);
        assert_true(b->batch_id > 0);
        assert_true(b->n_events > 0);
        assert_int_equal(b->events[0]->seq, b->first_seq);
        snapbus__snapshot_batch__free_unpacked(b, NULL);
        if (extra)
            (*extra)++;
        zmq_getsockopt(c->s, ZMQ_RCVMORE, &more, &sz);
    }
    return r;
}

static Snapbus__Reply *
s_publish(conn *c, uint32_t version, int ack, Snapbus__Event **ev, size_t n)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Publish p = SNAPBUS__PUBLISH__INIT;
    static uint64_t id = 100;

    p.ack = (Snapbus__AckLevel) ack;
    p.events = ev;
    p.n_events = n;
    r.version = version;
    r.request_id = ++id;
    r.body_case = SNAPBUS__REQUEST__BODY_PUBLISH;
    r.publish = &p;
    s_send_req(c, &r);
    Snapbus__Reply *rep = s_recv_reply(c, NULL);
    assert_int_equal(rep->request_id, id);
    return rep;
}

static void
s_ev(Snapbus__Event *e, const char *agg)
{
    snapbus__event__init(e);
    e->aggregate = (char *) agg;
    e->type = "T";
    e->payload.data = (uint8_t *) "payload";
    e->payload.len = 7;
}

static void
test_hello_and_versions(void **state)
{
    conn *c = s_connect(broker.ingest, ZMQ_DEALER);
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    Snapbus__Event e, *ev[1] = {&e};

    r.version = 1;
    r.request_id = 1;
    r.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    r.hello = &h;
    h.client = "it_protocol";
    s_send_req(c, &r);
    Snapbus__Reply *rep = s_recv_reply(c, NULL);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_int_equal(rep->body_case, SNAPBUS__REPLY__BODY_HELLO);
    assert_int_equal(rep->hello->max_name_bytes, 255);
    assert_true(rep->hello->max_message_bytes >= 1024);
    snapbus__reply__free_unpacked(rep, NULL);

    s_ev(&e, "v/1");
    rep = s_publish(c, 2, 1, ev, 1);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_BAD_VERSION);
    assert_int_equal(rep->version, 1); /* tells what it speaks */
    snapbus__reply__free_unpacked(rep, NULL);
    rep = s_publish(c, 1, 2, ev, 1); /* durable: served by the on-disk log */
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_int_equal(rep->body_case, SNAPBUS__REPLY__BODY_PUBLISH);
    assert_int_equal(rep->publish->ack, SNAPBUS__ACK_LEVEL__ACK_DURABLE);
    assert_true(rep->publish->results[0]->seq > 0);
    snapbus__reply__free_unpacked(rep, NULL);
    rep = s_publish(c, 1, 7, ev, 1);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);
}

static void
test_per_event_errors(void **state)
{
    conn *c = s_connect(broker.ingest, ZMQ_DEALER);
    Snapbus__Event e[3], *ev[3] = {&e[0], &e[1], &e[2]};

    s_ev(&e[0], "");        /* no aggregate */
    s_ev(&e[1], "good/1");
    s_ev(&e[2], "bad\xff"); /* not UTF-8 */
    Snapbus__Reply *rep = s_publish(c, 1, 1, ev, 3);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_int_equal(rep->publish->n_results, 3);
    assert_int_equal(rep->publish->results[0]->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    assert_int_equal(rep->publish->results[1]->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_true(rep->publish->results[1]->seq > 0);
    assert_int_equal(rep->publish->results[2]->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    uint64_t seq = rep->publish->results[1]->seq;
    snapbus__reply__free_unpacked(rep, NULL);

    /* Fire-and-forget hears of refusals too, at once. */
    rep = s_publish(c, 1, 0, ev, 1);
    assert_int_equal(rep->publish->results[0]->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(rep, NULL);

    /* The refused events took no seq: the next one follows directly. */
    rep = s_publish(c, 1, 1, ev + 1, 1);
    assert_int_equal(rep->publish->results[0]->seq, seq + 1);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);
}

typedef struct {
    int batches, events, other_aggs, bad_headers;
} fetched;

static void
s_take(sb_snapshot *b, void *ctx)
{
    fetched *f = ctx;

    f->batches++;
    f->events += (int) sb_snapshot_count(b);
    if (strcmp(sb_snapshot_aggregate(b), "fx/a") != 0)
        f->other_aggs++;
    if (sb_snapshot_last_seq(b) < sb_snapshot_first_seq(b) ||
        sb_snapshot_first_seq(b) == 0)
        f->bad_headers++;
    sb_snapshot_destroy(&b);
}

/* libsnapbus's one-shot fetch: a prefix, exactly one aggregate, and the
 * headers alone. */
static void
test_fetch_exact_and_headers_only(void **state)
{
    conn *c = s_connect(broker.ingest, ZMQ_DEALER);
    Snapbus__Event e[3], *ev[3] = {&e[0], &e[1], &e[2]};
    sb_fetch_opts o;
    sb_fetch_info info;
    fetched all = {0}, exact = {0}, heads = {0};

    (void) state;
    sb_fetch_opts_defaults(&o);
    s_ev(&e[0], "fx/a");
    s_ev(&e[1], "fx/ab");
    s_ev(&e[2], "fx/a");
    Snapbus__Reply *rep = s_publish(c, 1, 3, ev, 3); /* ack published */
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rep->publish->results[i]->error,
                         SNAPBUS__ERROR_CODE__ERR_NONE);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);

    o.prefix = "fx/a";
    assert_int_equal(sb_fetch(broker.query, &o, s_take, &all, &info, 10000), SB_OK);
    assert_int_equal(all.events, 3); /* fx/a and fx/ab */
    assert_int_equal(all.other_aggs, 1);
    o.exact = 1;
    assert_int_equal(sb_fetch(broker.query, &o, s_take, &exact, &info, 10000), SB_OK);
    assert_int_equal(exact.events, 2);
    assert_int_equal(exact.other_aggs, 0);
    o.exact = 0;
    o.headers_only = 1;
    assert_int_equal(sb_fetch(broker.query, &o, s_take, &heads, &info, 10000), SB_OK);
    assert_int_equal(heads.batches, all.batches);
    assert_int_equal(heads.events, 0);
    assert_int_equal(heads.bad_headers, 0);
}

/* A broker that is shard 2 of 4 takes only the aggregates sb_shard_of
 * gives it, refuses the others one by one, and says which shard it is. */
static void
test_wrong_shard(void **state)
{
    static const char *const extra[] = {"--set", "shard.count=4", "--set",
                                        "shard.index=2", NULL};
    enum { N = 64 };
    sbt_broker b;
    Snapbus__Event e[N], *ev[N];
    char names[N][16];
    uint32_t shard[N];
    int mine = 0;

    (void) state;
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    conn *c = s_connect(b.ingest, ZMQ_DEALER);
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    r.version = 1;
    r.request_id = 1;
    r.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    r.hello = &h;
    s_send_req(c, &r);
    Snapbus__Reply *rep = s_recv_reply(c, NULL);
    assert_int_equal(rep->hello->shard_index, 2);
    assert_int_equal(rep->hello->shard_count, 4);
    snapbus__reply__free_unpacked(rep, NULL);

    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "sh/%d", i);
        s_ev(&e[i], names[i]);
        ev[i] = &e[i];
        assert_int_equal(sb_shard_of(names[i], strlen(names[i]), 4, &shard[i]),
                         SB_OK);
        mine += shard[i] == 2;
    }
    assert_true(mine > 0 && mine < N);
    rep = s_publish(c, 1, 1, ev, N);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_int_equal(rep->publish->n_results, N);
    uint64_t next = 0;
    for (int i = 0; i < N; i++) {
        Snapbus__EventResult *res = rep->publish->results[i];
        if (shard[i] != 2) {
            assert_int_equal(res->error, SNAPBUS__ERROR_CODE__ERR_WRONG_SHARD);
            assert_int_equal(res->seq, 0);
            continue;
        }
        /* Owned events are sequenced gap-free, as if alone. */
        assert_int_equal(res->error, SNAPBUS__ERROR_CODE__ERR_NONE);
        assert_true(next == 0 || res->seq == next);
        next = res->seq + 1;
    }
    assert_int_equal(next - 1, (uint64_t) mine);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);
    assert_int_equal(sbt_broker_stop(&b, 30), 0);
}

static void
test_req_peer_and_frames(void **state)
{
    conn *c = s_connect(broker.ingest, ZMQ_REQ); /* sends an empty delimiter */
    Snapbus__Event e, *ev[1] = {&e};

    s_ev(&e, "req/1");
    Snapbus__Reply *rep = s_publish(c, 1, 3, ev, 1); /* published ack */
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_NONE);
    assert_true(rep->publish->results[0]->batch_id > 0);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);

    c = s_connect(broker.ingest, ZMQ_DEALER);
    zmq_send(c->s, "", 0, 0); /* an empty message */
    rep = s_recv_reply(c, NULL);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(rep, NULL);
    zmq_send(c->s, "x", 1, ZMQ_SNDMORE);
    zmq_send(c->s, "y", 1, ZMQ_SNDMORE);
    zmq_send(c->s, "z", 1, 0);
    rep = s_recv_reply(c, NULL);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(rep, NULL);
    /* Fetch belongs on the query socket. */
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Fetch f = SNAPBUS__FETCH__INIT;
    r.version = 1;
    r.body_case = SNAPBUS__REQUEST__BODY_FETCH;
    r.fetch = &f;
    s_send_req(c, &r);
    rep = s_recv_reply(c, NULL);
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_UNSUPPORTED);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);
}

static Snapbus__Reply *
s_fetch(conn *q, const char *prefix, uint64_t from, uint64_t to, uint64_t after,
        uint32_t max, int *frames)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Fetch f = SNAPBUS__FETCH__INIT;
    r.version = 1;
    r.request_id = 9;
    r.body_case = SNAPBUS__REQUEST__BODY_FETCH;
    r.fetch = &f;
    f.prefix = (char *) prefix;
    f.from_seq = from;
    f.to_seq = to;
    f.after_batch_id = after;
    f.max_batches = max;
    s_send_req(q, &r);
    return s_recv_reply(q, frames);
}

static void
test_fetch(void **state)
{
    conn *c = s_connect(broker.ingest, ZMQ_DEALER);
    conn *q = s_connect(broker.query, ZMQ_DEALER);
    Snapbus__Event e, *ev[1] = {&e};
    uint64_t last = 0;
    int frames;

    for (int i = 0; i < 20; i++) { /* 20 batches: delay 0, one per request */
        s_ev(&e, i % 2 ? "f/odd" : "f/even");
        Snapbus__Reply *rep = s_publish(c, 1, 3, ev, 1);
        assert_int_equal(rep->publish->results[0]->error, 0);
        last = rep->publish->results[0]->seq;
        snapbus__reply__free_unpacked(rep, NULL);
    }
    /* Retention keeps 8 batches here: the last 8 published. */
    Snapbus__Reply *rep = s_fetch(q, "f/", 0, 0, 0, 0, &frames);
    assert_int_equal(rep->error, 0);
    assert_int_equal(rep->fetch->count, 8);
    assert_int_equal(frames, 8);
    assert_int_equal(rep->fetch->last_seq, last);
    uint64_t horizon = rep->fetch->retained_first_seq;
    snapbus__reply__free_unpacked(rep, NULL);

    rep = s_fetch(q, "f/odd", last - 3, 0, 0, 0, &frames);
    assert_int_equal(rep->error, 0);
    assert_int_equal(rep->fetch->count, 2);
    /* The batch frames decode, in publish order. */
    snapbus__reply__free_unpacked(rep, NULL);

    /* Before the memory ring: the on-disk log answers, as far back as it
     * goes (here, seq 1). */
    rep = s_fetch(q, "", 1, 0, 0, 0, &frames);
    assert_int_equal(rep->error, 0);
    assert_true(frames > 0);
    assert_int_equal((int) rep->fetch->count, frames);
    assert_int_equal(rep->body_case, SNAPBUS__REPLY__BODY_FETCH);
    assert_int_equal(rep->fetch->retained_first_seq, 1);
    snapbus__reply__free_unpacked(rep, NULL);
    rep = s_fetch(q, "", horizon, 0, 0, 0, &frames);
    assert_int_equal(rep->error, 0);
    snapbus__reply__free_unpacked(rep, NULL);
    rep = s_fetch(q, "", 10, 5, 0, 0, &frames); /* reversed */
    assert_int_equal(rep->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(rep, NULL);

    /* Paging: 3 at a time until `more` is false. */
    uint64_t after = 0;
    int pages = 0, total = 0;
    do {
        rep = s_fetch(q, "", horizon, 0, after, 3, &frames);
        assert_int_equal(rep->error, 0);
        assert_int_equal((int) rep->fetch->count, frames);
        total += frames;
        after = rep->fetch->last_batch_id;
        pages++;
        int more = rep->fetch->more;
        snapbus__reply__free_unpacked(rep, NULL);
        if (!more)
            break;
    } while (pages < 100);
    assert_int_equal(total, 8);
    assert_int_equal(pages, 3);

    /* Hello works on the query socket too, for subscribers. */
    Snapbus__Request hr = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    hr.version = 1;
    hr.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    hr.hello = &h;
    s_send_req(q, &hr);
    rep = s_recv_reply(q, NULL);
    assert_int_equal(rep->error, 0);
    assert_int_equal(rep->hello->last_seq, last);
    assert_true(rep->hello->epoch != 0);
    snapbus__reply__free_unpacked(rep, NULL);
    s_close(c);
    s_close(q);
}

static int
setup(void **state)
{
    const char *args[] = {"--retain-batches", "8", NULL};
    ctx = zmq_ctx_new();
    return sbt_broker_start(&broker, args);
}

static int
teardown(void **state)
{
    int rc = sbt_broker_stop(&broker, 30);
    zmq_ctx_term(ctx);
    return rc == 0 ? 0 : -1;
}

static void
s_count_batch(sb_snapshot *b, void *ctx)
{
    uint64_t *last = ctx;

    *last = sb_snapshot_last_seq(b);
    sb_snapshot_destroy(&b);
}

/* After a restart the memory ring is empty: a fetch with from_seq 0 and
 * after_batch_id 0 returns only what the ring holds (nothing), while
 * from_seq 1 reads the on-disk log (docs/PROTOCOL.md section 9.3). */
static void
test_fetch_from_seq_0_is_the_ring_1_the_log(void **state)
{
    char dir[] = "/tmp/sbt-ring.XXXXXX", cmd[64];
    const char *extra[] = {"--data-dir", dir, "--default-delay-ms", "0", NULL};
    sbt_broker b;
    sb_publisher_opts po;
    sb_publisher *p;
    sb_pub_event ev = {.aggregate = "r/1", .type = "T", .payload = "x",
                       .payload_len = 1};
    sb_fetch_opts fo;
    sb_fetch_info info;
    uint64_t last = 0;

    (void) state;
    sb_fetch_opts_defaults(&fo);
    assert_non_null(mkdtemp(dir));
    assert_int_equal(sbt_broker_start(&b, extra), 0);
    sb_publisher_opts_defaults(&po);
    po.endpoint = b.ingest;
    po.ack = SB_ACK_PUBLISHED;
    assert_int_equal(sb_publisher_new(&p, &po), SB_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
    assert_int_equal(sb_publisher_wait_all(p, 30000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(sb_fetch(b.query, &fo, s_count_batch, &last, &info,
                              30000), SB_OK);
    assert_int_equal(last, 3); /* before the restart: in the ring */
    assert_int_equal(sbt_broker_stop(&b, 30), 0);

    assert_int_equal(sbt_broker_start(&b, extra), 0);
    last = 0;
    assert_int_equal(sb_fetch(b.query, &fo, s_count_batch, &last, &info,
                              30000), SB_OK);
    assert_int_equal(last, 0); /* the ring is empty */
    assert_int_equal(info.last_seq, 3);
    fo.from_seq = 1;
    do {
        assert_int_equal(sb_fetch(b.query, &fo, s_count_batch, &last, &info,
                                  30000), SB_OK);
        fo.after_batch_id = info.last_batch_id;
    } while (info.more);
    assert_int_equal(last, 3); /* the log has them */
    assert_int_equal(sbt_broker_stop(&b, 30), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

typedef struct {
    int n;
    sb_err err[4];
    char detail[4][160];
} acks_seen;

static void
s_on_ack_seen(const sb_ack_info *a, void *ctx)
{
    acks_seen *k = ctx;

    /* By token: a refusal is answered before an earlier acceptance. */
    if (a->token >= 1 && a->token <= 4) {
        k->err[a->token - 1] = a->err;
        snprintf(k->detail[a->token - 1], sizeof k->detail[0], "%s",
                 a->detail);
    }
    k->n++;
}

/* One event may use the broker's whole max_payload_bytes (batch_bytes only
 * groups events); refusals name the field, the value and the limit, from
 * the library (sb_publisher_last_error) and from the broker (ack detail). */
static void
test_publish_limits_and_their_reasons(void **state)
{
    sb_publisher_opts po;
    sb_publisher *p;
    acks_seen k = {0};
    char agg[301];
    size_t big = 2000000, large = 300000;
    char *payload = malloc(big);
    sb_pub_event ev = {.aggregate = "lim/1", .type = "T", .payload = payload};

    (void) state;
    memset(payload, 'x', big);
    memset(agg, 'a', 300);
    agg[300] = '\0';
    sb_publisher_opts_defaults(&po);
    po.endpoint = broker.ingest;
    assert_int_equal(po.batch_bytes, 256 * 1024);
    assert_int_equal(sb_publisher_new(&p, &po), SB_OK);
    sb_publisher_on_ack(p, s_on_ack_seen, &k);

    ev.payload_len = large; /* > batch_bytes, < max_payload_bytes */
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
    assert_string_equal(sb_publisher_last_error(p), "");
    ev.payload_len = big;   /* > the broker's max_payload_bytes (1 MiB) */
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
    assert_int_equal(sb_publisher_wait_all(p, 30000), SB_OK);
    assert_int_equal(k.n, 2);
    assert_int_equal(k.err[0], SB_OK);
    assert_int_equal(k.err[1], SB_ETOOBIG);
    assert_string_equal(k.detail[1], "payload 2000000 B > limit 1048576 "
                                     "(limits.max_payload_bytes)");

    ev.payload_len = 1;
    ev.aggregate = agg;
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_ETOOBIG);
    assert_string_equal(sb_publisher_last_error(p),
                        "aggregate 300 B > limit 255 (no broker takes longer "
                        "names)");
    ev.aggregate = "e3\xff/1";
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_EINVAL);
    assert_string_equal(sb_publisher_last_error(p),
                        "aggregate is not valid UTF-8 at byte 2 (from 0)");
    ev.aggregate = "lim/1";
    ev.payload_len = 5u << 20; /* over max_request_bytes: never sent */
    payload = realloc(payload, ev.payload_len);
    ev.payload = payload;
    memset(payload, 'y', ev.payload_len);
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_ETOOBIG);
    assert_non_null(strstr(sb_publisher_last_error(p),
                           "payload 5242880 B (event 5242900 B encoded) > "
                           "limit 4194272 B (max_request_bytes 4194304"));
    sb_publisher_destroy(&p);
    free(payload);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_hello_and_versions),
        cmocka_unit_test(test_per_event_errors),
        cmocka_unit_test(test_req_peer_and_frames),
        cmocka_unit_test(test_wrong_shard),
        cmocka_unit_test(test_fetch_exact_and_headers_only),
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_fetch_from_seq_0_is_the_ring_1_the_log),
        cmocka_unit_test(test_publish_limits_and_their_reasons),
    };
    return cmocka_run_group_tests(t, setup, teardown);
}
