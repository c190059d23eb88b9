/* sbc_query: the subscriber's connection to the broker's query socket,
 * one DEALER kept for the subscriber's life (a fetch per gap would
 * otherwise cost a TCP connection each).
 *
 * One request is outstanding at a time. Each send gets a new request id;
 * a reply whose id is not the outstanding one is a late answer to a
 * request given up on, and is dropped (fetch and hello are read-only, so
 * asking again is always safe). When no reply came fetch_timeout_ms
 * after a send, the request is sent again: a reply can be lost when the
 * connection drops (ZeroMQ reconnects by itself) or when our receive
 * queue was full.
 *
 * Threading: the subscriber's. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "sbc_internal.h"
#include "sbc_query.h"
#include "snapbus.pb-c.h"

struct sbc_query {
    void *sock;
    int timeout_ms;
    uint64_t next_id;
    /* The outstanding request. */
    int kind; /* 0 none, 1 hello, 2 fetch */
    uint64_t id;
    uint64_t sent_ms;
    int sent; /* 0: the socket would not take it yet */
    sbc_fetch_req req;
    char *prefix; /* req.prefix points here */
    uint64_t fetches, timeouts;
};

sb_err
sbc_query_new(sbc_query **out, void *zctx, const char *endpoint,
              int timeout_ms, const sbc_curve *curve)
{
    sbc_query *q = calloc(1, sizeof *q);
    int linger = 0, hwm = 1000;

    if (q == NULL)
        return SB_ENOMEM;
    q->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    q->next_id = 1;
    if ((q->sock = zmq_socket(zctx, ZMQ_DEALER)) == NULL ||
        zmq_setsockopt(q->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(q->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        (curve != NULL && sbc_curve_apply(q->sock, curve) != SB_OK)) {
        sbc_query_destroy(&q);
        return SB_ESYS;
    }
    if (zmq_connect(q->sock, endpoint) != 0) {
        sb_err rc =
            errno == EINVAL || errno == EPROTONOSUPPORT ? SB_EINVAL : SB_ESYS;
        sbc_query_destroy(&q);
        return rc;
    }
    *out = q;
    return SB_OK;
}

void
sbc_query_destroy(sbc_query **qp)
{
    sbc_query *q;

    if (qp == NULL || (q = *qp) == NULL)
        return;
    if (q->sock != NULL)
        zmq_close(q->sock);
    free(q->prefix);
    free(q);
    *qp = NULL;
}

void
sbc_query_counts(const sbc_query *q, uint64_t *fetches, uint64_t *timeouts)
{
    *fetches = q->fetches;
    *timeouts = q->timeouts;
}

/* Encodes and sends the outstanding request with a new id. */
static sb_err
s_send(sbc_query *q)
{
    Snapbus__Request req = SNAPBUS__REQUEST__INIT;
    Snapbus__Fetch f = SNAPBUS__FETCH__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;

    q->id = q->next_id++;
    req.version = SB_PROTOCOL_VERSION;
    req.request_id = q->id;
    if (q->kind == 1) {
        h.client = "libsnapbus subscriber";
        req.body_case = SNAPBUS__REQUEST__BODY_HELLO;
        req.hello = &h;
    } else {
        f.prefix = q->prefix;
        f.exact = q->req.exact != 0;
        f.from_seq = q->req.from_seq;
        f.to_seq = q->req.to_seq;
        f.after_batch_id = q->req.after_batch_id;
        f.max_batches = q->req.max_batches;
        f.max_bytes = q->req.max_bytes;
        f.headers_only = q->req.headers_only != 0;
        req.body_case = SNAPBUS__REQUEST__BODY_FETCH;
        req.fetch = &f;
        q->fetches++;
    }
    size_t len = snapbus__request__get_packed_size(&req);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return SB_ENOMEM;
    snapbus__request__pack(&req, buf);
    /* Never block here: a DEALER with no connection queues up to its
     * high-water mark; if it is full we try again at the next wait. */
    int n = zmq_send(q->sock, buf, len, ZMQ_DONTWAIT);
    free(buf);
    q->sent_ms = sbc_now_ms();
    q->sent = n >= 0;
    if (n < 0 && errno != EAGAIN)
        return SB_ESYS;
    return SB_OK;
}

static void
s_drain(void *sock, zmq_msg_t *m)
{
    while (zmq_msg_more(m)) {
        zmq_msg_close(m);
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) < 0)
            return;
    }
}

/* Where a fetch's batches go: into an array of cap (all or none: a batch
 * that does not decode fails the page), or one by one to fn, which owns
 * each (a batch that does not decode is skipped, the rest delivered, and
 * the page then fails SB_EPROTO, so the caller knows it is incomplete). */
typedef struct {
    sb_snapshot **out;
    uint32_t cap;
    sb_snapshot_fn fn;
    void *ctx;
} s_sink;

/* Takes the reply's batch frames after m; *gotp: how many were taken
 * (stored in the array, or given to fn). */
static sb_err
s_take_batches(sbc_query *q, zmq_msg_t *m, uint32_t count, const s_sink *k,
               uint32_t *gotp)
{
    sb_err rc = SB_OK;
    uint32_t frames = 0, taken = 0;

    while (zmq_msg_more(m)) {
        sb_snapshot *b;
        zmq_msg_close(m);
        zmq_msg_init(m);
        if (zmq_msg_recv(m, q->sock, ZMQ_DONTWAIT) < 0 || frames == count) {
            rc = SB_EPROTO;
            break;
        }
        frames++;
        if (sb_snapshot_decode(&b, zmq_msg_data(m), zmq_msg_size(m)) !=
            SB_OK) {
            rc = SB_EPROTO;
            if (k->fn == NULL)
                break;
            continue; /* skip it, deliver the rest, then say so */
        }
        if (k->fn != NULL)
            k->fn(b, k->ctx);
        else
            k->out[taken] = b;
        taken++;
    }
    if (rc == SB_OK && frames != count)
        rc = SB_EPROTO;
    if (rc != SB_OK && k->fn == NULL) {
        for (uint32_t i = 0; i < taken; i++)
            sb_snapshot_destroy(&k->out[i]);
        taken = 0;
    }
    *gotp = taken;
    return rc;
}

/* Reads one reply message. SB_ETIMEDOUT: it was not ours (dropped).
 * Otherwise the outstanding request's answer (hello or fetch). */
static sb_err
s_read(sbc_query *q, sbc_hello_info *h, sb_fetch_page *info, const s_sink *k)
{
    sbc_arena arena;
    zmq_msg_t m;
    sb_err rc = SB_OK;
    Snapbus__Reply *rep;

    sbc_arena_init(&arena, 1024);
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, q->sock, ZMQ_DONTWAIT) < 0) {
        rc = errno == EAGAIN || errno == EINTR ? SB_ETIMEDOUT : SB_ESYS;
        goto out;
    }
    rep =
        snapbus__reply__unpack(&arena.pbc, zmq_msg_size(&m), zmq_msg_data(&m));
    if (rep == NULL || rep->request_id != q->id) {
        rc = SB_ETIMEDOUT; /* a late reply, or garbage: not ours */
        goto drain;
    }
    if (rep->version != SB_PROTOCOL_VERSION) {
        rc = SB_EPROTO;
        goto drain;
    }
    if (q->kind == 1) {
        if (rep->error != SNAPBUS__ERROR_CODE__ERR_NONE) {
            rc = sbc_err_from_wire(rep->error);
        } else if (rep->body_case != SNAPBUS__REPLY__BODY_HELLO) {
            rc = SB_EPROTO;
        } else {
            h->epoch = rep->hello->epoch;
            h->last_seq = rep->hello->last_seq;
            h->last_batch_id = rep->hello->last_batch_id;
            h->low_seq = rep->hello->low_seq;
            h->end_bid = rep->hello->end_batch_id;
        }
        goto drain;
    }
    if (rep->body_case != SNAPBUS__REPLY__BODY_FETCH || rep->fetch == NULL) {
        rc = rep->error != SNAPBUS__ERROR_CODE__ERR_NONE
                 ? sbc_err_from_wire(rep->error)
                 : SB_EPROTO;
        goto drain;
    }
    const Snapbus__FetchReply *f = rep->fetch;
    memset(info, 0, sizeof *info);
    info->last_batch_id = f->last_batch_id;
    info->more = f->more;
    info->retained_first_seq = f->retained_first_seq;
    info->retained_first_batch_id = f->retained_first_batch_id;
    info->last_seq = f->last_seq;
    info->last_batch_id_published = f->last_batch_id_published;
    info->epoch = f->epoch;
    info->cursor_low_seq = f->cursor_low_seq;
    info->end_batch_id = f->end_batch_id;
    if (rep->error != SNAPBUS__ERROR_CODE__ERR_NONE) {
        rc = sbc_err_from_wire(rep->error); /* SB_ENOENT: out of retention */
        goto drain;
    }
    if (k->fn == NULL && f->count > k->cap) {
        rc = SB_EPROTO; /* more than asked for: cannot hold them */
        goto drain;
    }
    uint32_t got = 0;
    rc = s_take_batches(q, &m, f->count, k, &got);
    info->count = got;
    if (rc != SB_OK)
        goto drain;
    goto out;
drain:
    s_drain(q->sock, &m);
out:
    zmq_msg_close(&m);
    sbc_arena_fini(&arena);
    return rc;
}

/* Waits up to wait_ms for the outstanding request's reply, sending it
 * again each timeout_ms. */
static sb_err
s_wait(sbc_query *q, sbc_hello_info *h, sb_fetch_page *info, const s_sink *k,
       int wait_ms)
{
    uint64_t deadline = sbc_deadline(wait_ms);

    for (;;) {
        uint64_t now = sbc_now_ms();
        uint64_t resend = q->sent_ms + (uint64_t)q->timeout_ms;
        if (now >= resend || !q->sent) {
            if (q->sent)
                q->timeouts++;
            sb_err rc = s_send(q); /* a new id: the old reply is dropped */
            if (rc != SB_OK)
                return rc;
            resend = q->sent_ms + (uint64_t)q->timeout_ms;
        }
        long w = sbc_remaining_ms(deadline);
        long until = (long)(resend - now);
        if (!q->sent)
            until = 10; /* the socket was full: retry soon */
        if (w < 0 || w > until)
            w = until;
        zmq_pollitem_t it = {q->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, w);
        if (n < 0)
            return errno == EINTR ? SB_EAGAIN : SB_ESYS;
        if (n > 0) {
            sb_err rc = s_read(q, h, info, k);
            if (rc != SB_ETIMEDOUT) {
                q->kind = 0;
                return rc;
            }
            continue;
        }
        if (deadline != UINT64_MAX && sbc_now_ms() >= deadline)
            return SB_ETIMEDOUT;
    }
}

sb_err
sbc_query_hello(sbc_query *q, sbc_hello_info *h, int wait_ms, int fresh)
{
    if (fresh || q->kind != 1) {
        sb_err rc;
        q->kind = 1;
        if ((rc = s_send(q)) != SB_OK)
            return rc;
    }
    return s_wait(q, h, NULL, NULL, wait_ms);
}

/* Makes r the outstanding request (sent now) unless it already is. */
static sb_err
s_start_fetch(sbc_query *q, const sbc_fetch_req *r, int fresh)
{
    char *p;

    if (!fresh && q->kind == 2)
        return SB_OK;
    if ((p = sbc_strdup(r->prefix ? r->prefix : "")) == NULL)
        return SB_ENOMEM;
    free(q->prefix);
    q->prefix = p;
    q->req = *r;
    q->req.prefix = p;
    q->kind = 2;
    return s_send(q);
}

sb_err
sbc_query_fetch(sbc_query *q, const sbc_fetch_req *r, sb_fetch_page *info,
                sb_snapshot **out, int wait_ms, int fresh)
{
    s_sink k = {out, r->max_batches, NULL, NULL};
    sb_err rc = s_start_fetch(q, r, fresh);

    return rc != SB_OK ? rc : s_wait(q, NULL, info, &k, wait_ms);
}

sb_err
sbc_query_fetch_each(sbc_query *q, const sbc_fetch_req *r, sb_fetch_page *info,
                     sb_snapshot_fn fn, void *ctx, int wait_ms, int fresh)
{
    s_sink k = {NULL, 0, fn, ctx};
    sb_err rc = s_start_fetch(q, r, fresh);

    return rc != SB_OK ? rc : s_wait(q, NULL, info, &k, wait_ms);
}
