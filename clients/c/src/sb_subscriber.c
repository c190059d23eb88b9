/* sb_subscriber: live snapshot batches from the broker's PUB socket over
 * one SUB socket, made lossless by the gap engine (sbc_sub.c) and a
 * DEALER on the broker's query socket (sbc_query.c).
 *
 * This file is the shell: it owns the ZeroMQ context and sockets, turns
 * them into the engine's transport, and keeps the public API. Each live
 * message is [topic][SnapshotBatch], topic = aggregate name + one zero
 * byte, so a prefix subscription is the prefix's bytes and an exact one
 * is the name plus its zero byte. A message with the wrong number of
 * frames, a batch that does not decode, or a topic that is not the
 * batch's aggregate plus its zero byte (the filter and the content would
 * disagree) is counted in `malformed` and skipped.
 *
 * Gap detection and fill happen inside recv (sbc_sub.c; the design is
 * docs/SUBSCRIBING.md): s_live below is the one place every live batch
 * passes on its way to the engine.
 *
 * Threading: none of its own; one thread at a time. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "sbc_internal.h"
#include "sbc_query.h"
#include "sbc_sub.h"
#include "snapbus.pb-c.h"
#include <snapbus/snapbus.h>

struct sb_subscriber {
    void *zctx;
    void *sock;
    char *endpoint;
    char *query_endpoint; /* for gap fill; may be NULL */
    sbc_query *query;
    sbc_sub *engine;
    uint64_t malformed;
    int ended; /* an EpochEnd marker was just handed to the engine */
};

/* The broker's end-of-epoch marker: ["\0"][EpochEnd] (docs/PROTOCOL.md
 * section 10.8). Handed to the engine, which fetches the tail. */
static void
s_epoch_end(sb_subscriber *s, zmq_msg_t *body)
{
    Snapbus__EpochEnd *m =
        snapbus__epoch_end__unpack(NULL, zmq_msg_size(body), zmq_msg_data(body));

    if (m == NULL || m->version != SB_PROTOCOL_VERSION) {
        s->malformed++;
    } else {
        sbc_sub_epoch_end(s->engine, m->epoch, m->last_batch_id, m->last_seq,
                          m->linger_ms);
        s->ended = 1;
    }
    if (m != NULL)
        snapbus__epoch_end__free_unpacked(m, NULL);
}

void
sb_subscriber_opts_defaults(sb_subscriber_opts *o)
{
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->endpoint = "tcp://127.0.0.1:7702";
    /* No default: a broker's query endpoint cannot be guessed from its PUB
     * endpoint, and hello to the wrong one would stall the start. */
    o->query_endpoint = NULL;
    o->rcvhwm = 10000;
    o->resume_from_seq = 0;
    o->probe_ms = 500;
    o->fetch_timeout_ms = 5000;
    o->on_loss = SB_LOSS_FAIL;
}

/* Checks one batch message's framing and decodes it. */
static sb_err
s_accept(zmq_msg_t *topic, zmq_msg_t *batch, sb_snapshot **out)
{
    sb_snapshot *b;
    sb_err rc =
        sb_snapshot_decode(&b, zmq_msg_data(batch), zmq_msg_size(batch));
    if (rc != SB_OK)
        return rc;
    const char *agg = sb_snapshot_aggregate(b);
    size_t n = strlen(agg) + 1; /* with its zero byte */
    if (zmq_msg_size(topic) != n || memcmp(zmq_msg_data(topic), agg, n)) {
        sb_snapshot_destroy(&b);
        return SB_EPROTO;
    }
    *out = b;
    return SB_OK;
}

/* Reads one whole message that zmq_poll said is here. SB_ETIMEDOUT when
 * it was not a well-formed batch (counted), so the caller waits on. */
static sb_err
s_recv_one(sb_subscriber *s, sb_snapshot **out)
{
    zmq_msg_t topic, batch;
    sb_err rc = SB_ETIMEDOUT;

    zmq_msg_init(&topic);
    zmq_msg_init(&batch);
    if (zmq_msg_recv(&topic, s->sock, ZMQ_DONTWAIT) < 0) {
        rc = errno == EAGAIN ? SB_ETIMEDOUT
             : errno == EINTR ? SB_EAGAIN
                              : SB_ESYS;
        goto out;
    }
    if (!zmq_msg_more(&topic) ||
        zmq_msg_recv(&batch, s->sock, ZMQ_DONTWAIT) < 0) {
        s->malformed++;
        goto out;
    }
    if (zmq_msg_more(&batch)) {
        /* Too many frames: skip the rest of this message. */
        zmq_msg_t rest;
        int more = 1;
        while (more) {
            zmq_msg_init(&rest);
            more = zmq_msg_recv(&rest, s->sock, ZMQ_DONTWAIT) >= 0 &&
                   zmq_msg_more(&rest);
            zmq_msg_close(&rest);
        }
        s->malformed++;
        goto out;
    }
    if (zmq_msg_size(&topic) == 1 && *(const char *)zmq_msg_data(&topic) == 0) {
        s_epoch_end(s, &batch);
        goto out;
    }
    if ((rc = s_accept(&topic, &batch, out)) != SB_OK) {
        s->malformed++;
        rc = SB_ETIMEDOUT;
    }
out:
    zmq_msg_close(&topic);
    zmq_msg_close(&batch);
    return rc;
}

/* ---- the engine's transport ------------------------------------------- */

static sb_err
s_live(void *ctx, sb_snapshot **out, int wait_ms)
{
    sb_subscriber *s = ctx;
    uint64_t deadline = sbc_deadline(wait_ms);

    for (;;) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, sbc_remaining_ms(deadline));
        if (n < 0)
            return errno == EINTR ? SB_EAGAIN : SB_ESYS;
        if (n == 0)
            return SB_ETIMEDOUT;
        s->ended = 0;
        sb_err rc = s_recv_one(s, out);
        if (rc != SB_ETIMEDOUT || s->ended)
            return rc; /* a marker: the engine acts on it at once */
        if (deadline != UINT64_MAX && sbc_now_ms() >= deadline)
            return SB_ETIMEDOUT;
    }
}

static uint64_t
s_live_drain(void *ctx)
{
    sb_subscriber *s = ctx;
    uint64_t n = 0;
    zmq_msg_t m;

    zmq_msg_init(&m);
    while (zmq_msg_recv(&m, s->sock, ZMQ_DONTWAIT) >= 0)
        if (!zmq_msg_more(&m))
            n++;
    zmq_msg_close(&m);
    return n;
}

static sb_err
s_hello(void *ctx, sbc_hello_info *h, int wait_ms, int fresh)
{
    sb_subscriber *s = ctx;
    return sbc_query_hello(s->query, h, wait_ms, fresh);
}

static sb_err
s_fetch(void *ctx, const sbc_fetch_req *q, sb_fetch_page *info,
        sb_snapshot **out, int wait_ms, int fresh)
{
    sb_subscriber *s = ctx;
    return sbc_query_fetch(s->query, q, info, out, wait_ms, fresh);
}

static uint64_t
s_now(void *ctx)
{
    (void)ctx;
    return sbc_now_ms();
}

/* ---- public API --------------------------------------------------------- */

/* The first version of sb_subscriber_opts ended with `curve`. */
#define S_OPTS_V1 (offsetof(sb_subscriber_opts, curve) + sizeof(sb_curve_opts))

sb_err
sb_subscriber_new(sb_subscriber **out, const sb_subscriber_opts *in)
{
    sb_err rc = SB_ENOMEM;
    sb_subscriber *s;
    sbc_curve curve;
    sb_subscriber_opts opts, *o = &opts;

    sb_subscriber_opts_defaults(&opts);
    if (sbc_opts_take(&opts, sizeof opts, S_OPTS_V1, in) != SB_OK)
        return SB_EINVAL;
    if (out == NULL || o->endpoint == NULL ||
        o->endpoint[0] == '\0' || o->rcvhwm < 0 || o->probe_ms < 0 ||
        (o->resume_from_seq != 0 &&
         (o->query_endpoint == NULL || o->query_endpoint[0] == '\0')) ||
        (unsigned)o->on_loss > SB_LOSS_STOP)
        return SB_EINVAL;
    if (sbc_curve_set(&curve, &o->curve) != SB_OK)
        return SB_EINVAL;
    if ((s = calloc(1, sizeof *s)) == NULL) {
        sbc_curve_wipe(&curve);
        return SB_ENOMEM;
    }
    if ((s->endpoint = sbc_strdup(o->endpoint)) == NULL)
        goto fail;
    if (o->query_endpoint != NULL && o->query_endpoint[0] != '\0' &&
        (s->query_endpoint = sbc_strdup(o->query_endpoint)) == NULL)
        goto fail;
    rc = SB_ESYS;
    if ((s->zctx = zmq_ctx_new()) == NULL ||
        (s->sock = zmq_socket(s->zctx, ZMQ_SUB)) == NULL)
        goto fail;
    int linger = 0; /* a SUB socket sends nothing worth waiting for */
    if (zmq_setsockopt(s->sock, ZMQ_RCVHWM, &o->rcvhwm, sizeof o->rcvhwm) ||
        zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        sbc_curve_apply(s->sock, &curve) != SB_OK)
        goto fail;
    if (zmq_connect(s->sock, s->endpoint) != 0) {
        rc = errno == EINVAL || errno == EPROTONOSUPPORT ? SB_EINVAL : SB_ESYS;
        goto fail;
    }
    if (s->query_endpoint != NULL &&
        (rc = sbc_query_new(&s->query, s->zctx, s->query_endpoint,
                            o->fetch_timeout_ms, &curve)) != SB_OK)
        goto fail;
    /* The end-of-epoch marker, whatever the topics: a lossless subscriber
     * fetches the tail a stopping broker names (without a query socket
     * there is nothing it could do with it). */
    rc = SB_ESYS;
    if (s->query != NULL && zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, "\0", 1) != 0)
        goto fail;
    sbc_transport t = {s, s_live, s_live_drain, NULL, NULL, s_now};
    if (s->query != NULL) {
        t.hello = s_hello;
        t.fetch = s_fetch;
    }
    sbc_sub_config cfg = {o->resume_from_seq, o->probe_ms, o->on_loss};
    if ((rc = sbc_sub_new(&s->engine, &t, &cfg)) != SB_OK)
        goto fail;
    sbc_curve_wipe(&curve);
    *out = s;
    return SB_OK;
fail:
    sbc_curve_wipe(&curve);
    sb_subscriber_destroy(&s);
    return rc;
}

void
sb_subscriber_destroy(sb_subscriber **sp)
{
    sb_subscriber *s;

    if (sp == NULL || (s = *sp) == NULL)
        return;
    sbc_sub_destroy(&s->engine);
    sbc_query_destroy(&s->query);
    if (s->sock != NULL)
        zmq_close(s->sock);
    if (s->zctx != NULL)
        zmq_ctx_term(s->zctx);
    free(s->endpoint);
    free(s->query_endpoint);
    free(s);
    *sp = NULL;
}

static sb_err
s_subscribe(sb_subscriber *s, const char *name, size_t len, int exact)
{
    sb_err rc;

    /* The engine first: it must know every prefix its probes cover. */
    if ((rc = sbc_sub_add(s->engine, name, exact)) != SB_OK)
        return rc;
    if (zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, name, len) != 0)
        return SB_ESYS;
    return SB_OK;
}

sb_err
sb_subscriber_subscribe(sb_subscriber *s, const char *prefix)
{
    if (s == NULL)
        return SB_EINVAL;
    return s_subscribe(s, prefix ? prefix : "", prefix ? strlen(prefix) : 0,
                       0);
}

sb_err
sb_subscriber_subscribe_exact(sb_subscriber *s, const char *aggregate)
{
    if (s == NULL || aggregate == NULL || aggregate[0] == '\0')
        return SB_EINVAL;
    /* The name and its terminating zero byte: the topic's exact bytes. */
    return s_subscribe(s, aggregate, strlen(aggregate) + 1, 1);
}

sb_err
sb_subscriber_start(sb_subscriber *s, int timeout_ms)
{
    if (s == NULL)
        return SB_EINVAL;
    return sbc_sub_start(s->engine, timeout_ms);
}

sb_err
sb_subscriber_recv(sb_subscriber *s, sb_snapshot **out, int timeout_ms)
{
    if (s == NULL || out == NULL)
        return SB_EINVAL;
    return sbc_sub_recv(s->engine, out, timeout_ms);
}

sb_err
sb_subscriber_loss(const sb_subscriber *s, sb_loss *out)
{
    if (s == NULL || out == NULL)
        return SB_EINVAL;
    return sbc_sub_loss(s->engine, out);
}

sb_err
sb_subscriber_unchecked(const sb_subscriber *s, sb_loss *out)
{
    if (s == NULL || out == NULL)
        return SB_EINVAL;
    return sbc_sub_unchecked(s->engine, out);
}

uint64_t
sb_subscriber_position(const sb_subscriber *s)
{
    return s != NULL ? sbc_sub_position(s->engine) : 0;
}

void
sb_subscriber_stats_get(const sb_subscriber *s, sb_subscriber_stats *st)
{
    if (s == NULL || st == NULL)
        return;
    sbc_sub_stats(s->engine, st);
    st->malformed += s->malformed;
    if (s->query != NULL)
        sbc_query_counts(s->query, &st->fetches, &st->fetch_timeouts);
}
