/* sb_publisher: gathers events into Publish requests and sends them to the
 * broker's ingest ROUTER over one DEALER socket.
 *
 * Encoding. Events are encoded straight into the protobuf wire format as
 * they are published, into one growing buffer per request, behind
 * SBC_HEADROOM bytes left free at its front. Sealing a request writes the
 * Request and Publish headers backwards into that room (their lengths are
 * only known then), so the whole request is one contiguous buffer made
 * without a copy or a per-event allocation. The buffer then goes to
 * ZeroMQ with zmq_msg_init_data; ZeroMQ's I/O thread hands it back after
 * sending (s_free_buf) to a small pool, and the next request takes one
 * from there: a fresh 256 KiB buffer per request costs page faults that,
 * on a small machine, are a tenth of the cost of publishing. The pool is
 * the only state two threads touch, under its mutex.
 *
 * States of a request: gathering (p->buf) -> sealed but not yet taken by
 * the socket (p->parked, at most one) -> sent. A sent request is
 * remembered until its reply: acked levels keep it in p->inflight (at most
 * `window`); fire-and-forget keeps it in the p->recent ring, so that a
 * refusal can be mapped back to tokens. The ring holds the last
 * SBC_RECENT requests; a refusal of an older one is counted in
 * bad_replies and its tokens are not reported.
 *
 * A reply can be lost (a reconnect drops the replies owed on the old
 * connection; a request the broker could not read is answered with
 * request_id 0), so an acked request that has no reply after
 * reply_timeout_ms has its events reported SB_ETIMEDOUT and leaves the
 * window (s_expire); otherwise one lost reply would hold a slot forever.
 *
 * Resending (opts.resend, docs/PUBLISHING.md). With it, an acked request
 * keeps a copy of its bytes (s_rec.copy) until its reply, and is sent
 * again, with the same request_id, when its reply is overdue or when the
 * socket monitor reports that the connection was made again after a loss
 * (ZeroMQ drops what the old connection still owed in both directions).
 * A reply to the first copy that turns up after all is unmatched and
 * counted in bad_replies. Only worth it with producer ids (or event ids),
 * which let the broker answer a resend with the original seq.
 *
 * Tokens are 1, 2, 3... in publish order; a request holds the tokens
 * first_token .. first_token + count - 1, in order, which is how the i-th
 * EventResult of a reply finds its token.
 *
 * Backpressure. Every send is ZMQ_DONTWAIT. When the socket is at its HWM
 * or the window is full, a blocking call waits in zmq_poll for POLLOUT or
 * for replies (reading replies while it waits, so that a full window
 * drains); SB_DONTWAIT returns SB_EAGAIN instead and the sealed request
 * stays parked for the next call. Replies are read in publish, flush,
 * poll and wait_all, and the ack callback runs from inside those calls.
 *
 * Linger and timeouts use the coarse monotonic clock (sbc_coarse_ms): it
 * is read once per publish, and a kernel tick (1-4 ms) of slack on a
 * linger of a few ms is a fair price for a clock four times cheaper.
 *
 * Threading: none of its own. The object is used from one thread at a
 * time; ZeroMQ's I/O thread only returns sent buffers to the pool. */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "sb_utf8.h"
#include "sbc_curve.h"
#include "sb_pbwire.h"
#include "sbc_internal.h"
#include "sbc_testing.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

/* Room for the Request and Publish headers: version (2 bytes), request_id
 * (1 + 10), the publish field's tag and length (1 + 5) and ack (2). */
#define SBC_HEADROOM 32
#define SBC_MAX_NAME 255 /* the broker's max_name_bytes never exceeds it */
/* Fire-and-forget requests remembered to map a refusal back to tokens. */
#define SBC_RECENT 4096
/* Largest encoded event or request we build: protobuf's 2 GiB limit. */
#define SBC_MAX_ENCODED ((size_t)INT32_MAX)
/* Sent request buffers kept for reuse. */
#define SBC_POOL_MAX 8


typedef struct s_pool s_pool;

/* In front of every request buffer, so that the free callback, which gets
 * only this pointer, knows where the buffer goes back to. */
typedef struct {
    s_pool *pool;
    size_t cap; /* bytes after this header */
} s_bufhdr;

struct s_pool {
    pthread_mutex_t mu;
    size_t cap; /* buffers of this size are pooled */
    int n;
    s_bufhdr *free[SBC_POOL_MAX];
};

typedef struct {
    uint64_t id; /* request_id; 0: free slot */
    uint64_t first_token;
    uint64_t sent_ms; /* for the reply timeout */
    /* Refused ERR_SHUTTING_DOWN and kept to send again (with resend): not
     * before this, and only while connected. 0: not waiting. */
    uint64_t retry_ms;
    uint32_t count;
    uint32_t tries;   /* resends so far */
    uint8_t *copy;    /* with resend: the request's bytes, ours */
    size_t copy_len;
} s_rec;

struct sb_publisher {
    void *zctx;
    void *sock;
    char *endpoint;
    sb_publisher_opts o;
    sb_ack_fn ack_fn;
    void *ack_ctx;

    /* The request being gathered. */
    s_bufhdr *hdr; /* its buffer; NULL until the first event */
    uint8_t *buf;  /* after hdr: SBC_HEADROOM bytes, then events */
    size_t cap;    /* bytes at buf */
    size_t len;    /* bytes of encoded events after the headroom */
    uint32_t nev;  /* events in it */
    uint64_t first_token;
    uint64_t started_ms; /* when its first event came: linger counts from it */
    size_t max_events_len; /* most event bytes per request: batch_bytes,
                              capped by max_request_bytes */

    /* A sealed request the socket has not taken yet. */
    int parked;
    zmq_msg_t pmsg;
    s_rec prec;

    s_rec *inflight; /* acked levels: `window` slots, unordered */
    uint32_t ninflight;
    s_rec *recent; /* SB_ACK_NONE: SBC_RECENT slots, by id */

    char *producer_id;   /* opts.producer_id, ours; NULL: none */
    /* Why the last publish was refused here (sb_publisher_last_error);
     * the broker's text for the outcome being reported (ack detail). */
    char last_error[192];
    const char *cur_detail;
    uint64_t next_pseq;  /* the next event's producer seq */
    int resend;          /* resends per request at most; 0: off */
    void *mon;           /* with resend: PAIR reading the socket monitor */
    int conn_lost;       /* the monitor saw a disconnect */
    int unauth;          /* the broker refused our key (sbc_curve.h) */
    int connected;       /* the monitor saw a handshake, no disconnect since */
    uint64_t hello_id;   /* request_id of the hello awaited; 0: none */
    int hello_done;      /* its reply came */
    sb_err hello_err;    /* what it said */
    uint32_t drop_replies; /* tests: replies still to drop */

    uint64_t next_token;
    uint64_t next_id;
    sb_publisher_stats st;
    sbc_arena arena; /* replies are decoded here, reset after each */
    s_pool pool;
    int pool_ok; /* pool.mu initialised */
};

/* ---- Clock and buffers -------------------------------------------- */

static uint64_t
s_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? UINT64_MAX : sbc_coarse_ms() + (uint64_t)timeout_ms;
}

static long
s_remaining(uint64_t deadline)
{
    if (deadline == UINT64_MAX)
        return -1;
    uint64_t now = sbc_coarse_ms();
    return now >= deadline ? 0 : (long)(deadline - now);
}

/* Runs in ZeroMQ's I/O thread once a sent request is done with. */
static void
s_free_buf(void *data, void *hint)
{
    s_bufhdr *h = hint;
    s_pool *pool = h->pool;

    (void)data;
    pthread_mutex_lock(&pool->mu);
    if (h->cap == pool->cap && pool->n < SBC_POOL_MAX) {
        pool->free[pool->n++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&pool->mu);
    free(h);
}

/* A buffer for a new request with room for need bytes. */
static sb_err
s_buf_new(sb_publisher *p, size_t need)
{
    s_bufhdr *h = NULL;
    size_t cap = p->pool.cap;

    if (need <= cap) {
        pthread_mutex_lock(&p->pool.mu);
        if (p->pool.n > 0)
            h = p->pool.free[--p->pool.n];
        pthread_mutex_unlock(&p->pool.mu);
    } else {
        cap = need; /* one event larger than a request: not pooled */
    }
    if (h == NULL) {
        if ((h = malloc(sizeof *h + cap)) == NULL)
            return SB_ENOMEM;
        h->pool = &p->pool;
        h->cap = cap;
    }
    p->hdr = h;
    p->buf = (uint8_t *)(h + 1);
    p->cap = h->cap;
    return SB_OK;
}

/* ---- Options ------------------------------------------------------ */

void
sb_publisher_opts_defaults(sb_publisher_opts *o)
{
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->endpoint = "tcp://127.0.0.1:7701";
    o->ack = SB_ACK_SEQUENCED;
    o->window = 64;
    o->batch_events = 1000;
    o->batch_bytes = 256 * 1024;
    o->linger_ms = 5;
    o->sndhwm = 100;
    o->timeout_ms = 60000;
    o->reply_timeout_ms = 30000;
    o->max_request_bytes = 4 * 1024 * 1024; /* the broker's default */
    o->resend = -1;
}

static sb_err
s_opts_check(const sb_publisher_opts *o)
{
    if (o->endpoint == NULL || o->endpoint[0] == '\0')
        return SB_EINVAL;
    if ((int)o->ack < SB_ACK_NONE || o->ack > SB_ACK_PUBLISHED)
        return SB_EINVAL;
    if (o->window == 0 || o->batch_events == 0 || o->batch_bytes == 0)
        return SB_EINVAL;
    if (o->sndhwm < 0)
        return SB_EINVAL;
    if (o->max_request_bytes != 0 && o->max_request_bytes < 1024)
        return SB_EINVAL; /* the broker's own floor */
    if (o->producer_id != NULL &&
        (o->producer_id[0] == '\0' || strlen(o->producer_id) > 255))
        return SB_EINVAL; /* the broker's max_name_bytes never exceeds 255 */
    if (o->resend < -1)
        return SB_EINVAL;
    return SB_OK;
}

/* ---- Life cycle --------------------------------------------------- */

static int
s_setopt_int(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

static int s_monitor_start(sb_publisher *p);

/* The first version of sb_publisher_opts ended with `resend`: a caller's
 * struct is at least that long. Fields appended later keep their defaults
 * for callers built before them. */
#define S_OPTS_V1                                                              \
    (offsetof(sb_publisher_opts, resend) + sizeof(int))

void
sbc_publisher_test_drop_replies(sb_publisher *p, uint32_t n)
{
    p->drop_replies = n;
}

sb_err
sb_publisher_new(sb_publisher **out, const sb_publisher_opts *in)
{
    sb_err rc;
    sb_publisher *p;
    sbc_curve curve;
    sb_publisher_opts opts, *o = &opts;

    sb_publisher_opts_defaults(&opts);
    if (out == NULL || sbc_opts_take(&opts, sizeof opts, S_OPTS_V1, in) != SB_OK)
        return SB_EINVAL;
    if ((rc = s_opts_check(o)) != SB_OK)
        return rc;
    if ((rc = sbc_curve_set(&curve, &o->curve)) != SB_OK)
        return rc;
    if ((p = calloc(1, sizeof *p)) == NULL) {
        sbc_curve_wipe(&curve);
        return SB_ENOMEM;
    }
    p->o = *o;
    memset(&p->o.curve, 0, sizeof p->o.curve); /* caller memory: not kept */
    p->next_token = 1;
    p->next_id = 1;
    sbc_arena_init(&p->arena, 16 * 1024);
    /* A request never passes batch_bytes but for a single larger event
     * (s_append), so this size fits all but those. */
    p->max_events_len = o->batch_bytes;
    if (o->max_request_bytes != 0 &&
        p->max_events_len > o->max_request_bytes - SBC_HEADROOM)
        p->max_events_len = o->max_request_bytes - SBC_HEADROOM;
    p->pool.cap = SBC_HEADROOM + p->max_events_len + 64;
    rc = SB_ESYS;
    if (pthread_mutex_init(&p->pool.mu, NULL) != 0)
        goto fail;
    p->pool_ok = 1;
    rc = SB_ENOMEM;
    if ((p->endpoint = sbc_strdup(o->endpoint)) == NULL)
        goto fail;
    p->o.endpoint = p->endpoint;
    if (o->producer_id != NULL &&
        (p->producer_id = sbc_strdup(o->producer_id)) == NULL)
        goto fail;
    p->o.producer_id = p->producer_id;
    p->next_pseq = o->producer_seq_start ? o->producer_seq_start : 1;
    p->resend = o->resend >= 0 ? o->resend : o->producer_id != NULL ? 3 : 0;
    if (o->ack == SB_ACK_NONE)
        p->resend = 0; /* nothing is remembered to resend */
    if (o->ack == SB_ACK_NONE)
        p->recent = calloc(SBC_RECENT, sizeof *p->recent);
    else
        p->inflight = calloc(o->window, sizeof *p->inflight);
    if (p->recent == NULL && p->inflight == NULL)
        goto fail;

    rc = SB_ESYS;
    if ((p->zctx = zmq_ctx_new()) == NULL)
        goto fail;
    if ((p->sock = zmq_socket(p->zctx, ZMQ_DEALER)) == NULL)
        goto fail;
    /* Linger bounds how long destroy waits to hand queued requests to a
     * broker that is slow or gone: the caller's timeout, else a minute. */
    int linger = o->timeout_ms >= 0 ? o->timeout_ms : 60000;
    /* Replies must never be dropped for want of room: the broker's ROUTER
     * drops a reply our pipe cannot take, and a lost ack would hold a
     * window slot forever. Room for a full window plus the refusals
     * of every request that can be queued covers what can arrive. */
    int rcvhwm = (int)(o->window > 100000 ? 100000 : o->window) +
                 (o->sndhwm > 100000 ? 100000 : o->sndhwm) + SBC_RECENT;
    if (s_setopt_int(p->sock, ZMQ_SNDHWM, o->sndhwm) != 0 ||
        s_setopt_int(p->sock, ZMQ_RCVHWM, rcvhwm) != 0 ||
        s_setopt_int(p->sock, ZMQ_LINGER, linger) != 0 ||
        sbc_curve_apply(p->sock, &curve) != SB_OK)
        goto fail;
    /* The monitor also tells a refused key from a slow broker. */
    if ((p->resend > 0 || curve.on) && s_monitor_start(p) != 0)
        goto fail;
    if (zmq_connect(p->sock, p->endpoint) != 0) {
        rc = errno == EINVAL || errno == EPROTONOSUPPORT ? SB_EINVAL : SB_ESYS;
        goto fail;
    }
    sbc_curve_wipe(&curve);
    *out = p;
    return SB_OK;
fail:
    sbc_curve_wipe(&curve);
    sb_publisher_destroy(&p);
    return rc;
}

static void s_fail_pending(sb_publisher *p);

/* Watches the ingest connection so that a reconnect resends at once what
 * the lost connection still owed, rather than after reply_timeout_ms. */
static int
s_monitor_start(sb_publisher *p)
{
    char addr[64];

    snprintf(addr, sizeof addr, "inproc://sbpub-mon-%p", (void *)p);
    if (zmq_socket_monitor(p->sock, addr,
                           ZMQ_EVENT_DISCONNECTED |
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                               SBC_CURVE_REFUSAL_EVENTS) != 0)
        return -1;
    if ((p->mon = zmq_socket(p->zctx, ZMQ_PAIR)) == NULL)
        return -1;
    s_setopt_int(p->mon, ZMQ_LINGER, 0);
    return zmq_connect(p->mon, addr);
}

void
sb_publisher_destroy(sb_publisher **pp)
{
    sb_publisher *p;

    if (pp == NULL || (p = *pp) == NULL)
        return;
    if (p->sock != NULL)
        (void)sb_publisher_wait_all(p, p->o.timeout_ms >= 0 ? p->o.timeout_ms
                                                            : 60000);
    s_fail_pending(p);
    if (p->parked) {
        zmq_msg_close(&p->pmsg); /* back to the pool through s_free_buf */
        free(p->prec.copy);
    }
    free(p->hdr);
    /* The monitor stops before its reader closes: libzmq's I/O thread
     * sends events blocking, holding the lock zmq_socket_monitor takes,
     * and with no reader left it would wait for ever. */
    if (p->sock != NULL && p->mon != NULL)
        zmq_socket_monitor(p->sock, NULL, 0);
    if (p->mon != NULL)
        zmq_close(p->mon);
    if (p->sock != NULL && p->unauth) /* refused: nothing can go out now */
        s_setopt_int(p->sock, ZMQ_LINGER, 0);
    if (p->sock != NULL)
        zmq_close(p->sock);
    /* Waits up to ZMQ_LINGER for queued sends; once it returns, ZeroMQ
     * has released every message, so no s_free_buf can run any more. */
    if (p->zctx != NULL)
        zmq_ctx_term(p->zctx);
    if (p->pool_ok) {
        while (p->pool.n > 0)
            free(p->pool.free[--p->pool.n]);
        pthread_mutex_destroy(&p->pool.mu);
    }
    sbc_arena_fini(&p->arena);
    free(p->inflight);
    free(p->recent);
    free(p->endpoint);
    free(p->producer_id);
    free(p);
    *pp = NULL;
}

void
sb_publisher_on_ack(sb_publisher *p, sb_ack_fn fn, void *ctx)
{
    if (p == NULL)
        return;
    p->ack_fn = fn;
    p->ack_ctx = ctx;
}

void
sb_publisher_stats_get(const sb_publisher *p, sb_publisher_stats *st)
{
    if (p == NULL || st == NULL)
        return;
    *st = p->st;
    st->inflight = p->ninflight;
}

/* ---- Outcomes ----------------------------------------------------- */

static void
s_report(sb_publisher *p, uint64_t token, sb_err err, uint64_t seq,
         uint64_t agg_seq, uint64_t batch_id)
{
    if (err == SB_OK) {
        p->st.acked++;
    } else if (err == SB_EDUP) {
        /* Accepted before, under the seq reported: a success. */
        p->st.acked++;
        p->st.duplicates++;
    } else {
        p->st.refused++;
    }
    if (p->ack_fn != NULL) {
        sb_ack_info a = {token, err, seq, agg_seq, batch_id,
                         p->cur_detail != NULL ? p->cur_detail : ""};
        p->ack_fn(&a, p->ack_ctx);
    }
}

static void
s_report_all(sb_publisher *p, const s_rec *r, sb_err err)
{
    for (uint32_t i = 0; i < r->count; i++)
        s_report(p, r->first_token + i, err, 0, 0, 0);
}

/* At destroy: sent requests whose reply did not come in time, and events
 * that could not be sent in time, are SB_ETIMEDOUT: "timed out, fate
 * unknown" from the caller's side. SB_ECLOSED is kept for what the broker
 * itself refused as shutting down. Fire-and-forget requests have no
 * outcome to report. */
static void
s_fail_pending(sb_publisher *p)
{
    for (uint32_t i = 0; i < p->ninflight; i++) {
        s_report_all(p, &p->inflight[i], p->unauth ? SB_EUNAUTH : SB_ETIMEDOUT);
        free(p->inflight[i].copy);
    }
    p->ninflight = 0;
    if (p->parked)
        s_report_all(p, &p->prec, SB_ETIMEDOUT);
    if (p->nev > 0) {
        s_rec r = {.first_token = p->first_token, .count = p->nev};
        s_report_all(p, &r, SB_ETIMEDOUT);
        p->nev = 0;
        p->len = 0;
    }
}

/* Finds and forgets the request a reply answers. */
static int
s_take_rec(sb_publisher *p, uint64_t id, s_rec *out)
{
    if (id == 0)
        return 0;
    if (p->recent != NULL) {
        s_rec *r = &p->recent[id % SBC_RECENT];
        if (r->id != id)
            return 0;
        *out = *r;
        r->id = 0;
        return 1;
    }
    for (uint32_t i = 0; i < p->ninflight; i++) {
        if (p->inflight[i].id == id) {
            *out = p->inflight[i];
            p->inflight[i] = p->inflight[--p->ninflight];
            return 1;
        }
    }
    return 0;
}

static void
s_on_reply(sb_publisher *p, const void *data, size_t len)
{
    Snapbus__Reply *rep;
    s_rec r;

    r.copy = NULL;
    if (p->drop_replies > 0) {
        p->drop_replies--;
        return;
    }
    rep = snapbus__reply__unpack(&p->arena.pbc, len, data);
    if (rep != NULL && p->hello_id != 0 && rep->request_id == p->hello_id) {
        p->hello_id = 0;
        p->hello_done = 1;
        p->hello_err = rep->version != SB_PROTOCOL_VERSION ? SB_EPROTO
                       : rep->error != SNAPBUS__ERROR_CODE__ERR_NONE
                           ? sbc_err_from_wire(rep->error)
                       : rep->body_case != SNAPBUS__REPLY__BODY_HELLO ? SB_EPROTO
                                                                      : SB_OK;
        goto out;
    }
    if (rep == NULL || rep->version != SB_PROTOCOL_VERSION ||
        !s_take_rec(p, rep->request_id, &r)) {
        p->st.bad_replies++;
        goto out;
    }
    int acked = p->o.ack != SB_ACK_NONE;
    if (rep->error == SNAPBUS__ERROR_CODE__ERR_SHUTTING_DOWN &&
        r.copy != NULL && r.tries < (uint32_t)p->resend) {
        /* Nothing was taken; the broker is stopping. Keep the request
         * and send it again once a broker answers (the same or a
         * restarted one, whose de-duplication recognises what it has
         * already), with a backoff while this one is still draining. */
        uint64_t backoff = 250ull << (r.tries < 3 ? r.tries : 3);
        r.retry_ms = sbc_coarse_ms() + backoff;
        p->inflight[p->ninflight++] = r; /* s_take_rec made the room */
        r.copy = NULL;
        goto out;
    }
    if (rep->error != SNAPBUS__ERROR_CODE__ERR_NONE) {
        p->cur_detail = rep->detail;
        s_report_all(p, &r, sbc_err_from_wire(rep->error));
        p->cur_detail = NULL;
        goto out;
    }
    if (rep->body_case != SNAPBUS__REPLY__BODY_PUBLISH ||
        rep->publish == NULL) {
        /* An acked request must get its results; without them its
         * events' fate is unknown, which we report as a protocol error
         * rather than leave the caller waiting for acks forever. */
        p->st.bad_replies++;
        if (acked)
            s_report_all(p, &r, SB_EPROTO);
        goto out;
    }
    const Snapbus__PublishReply *pr = rep->publish;
    if (pr->n_results != r.count)
        p->st.bad_replies++; /* still report what we can */
    for (uint32_t i = 0; i < r.count; i++) {
        uint64_t token = r.first_token + i;
        if (i >= pr->n_results) {
            if (acked)
                s_report(p, token, SB_EPROTO, 0, 0, 0);
            continue;
        }
        const Snapbus__EventResult *er = pr->results[i];
        sb_err err = sbc_err_from_wire(er->error);
        /* Fire-and-forget reports refusals only: an SB_OK there does not
         * mean the others were accepted, as no reply means that too. */
        p->cur_detail = er->detail;
        if (acked || err != SB_OK)
            s_report(p, token, err, er->seq, er->aggregate_seq, er->batch_id);
        p->cur_detail = NULL;
    }
out:
    free(r.copy);
    sbc_arena_reset(&p->arena);
}

/* Sends r's bytes again. A full socket leaves it for the next expiry. */
static void
s_resend(sb_publisher *p, s_rec *r, uint64_t now)
{
    r->sent_ms = now;
    r->retry_ms = 0;
    if (zmq_send(p->sock, r->copy, r->copy_len, ZMQ_DONTWAIT) >= 0) {
        r->tries++;
        p->st.resends++;
    }
}

/* Resends, or reports and drops, acked requests whose reply is overdue. */
static void
s_expire(sb_publisher *p, uint64_t now)
{
    for (uint32_t i = 0; i < p->ninflight;) {
        s_rec *r = &p->inflight[i];
        if (r->retry_ms != 0) {
            /* Refused as shutting down: again once due and connected (a
             * reconnect resends it at once, s_watch). */
            if (now >= r->retry_ms && p->connected)
                s_resend(p, r, now);
            i++;
        } else if (p->o.reply_timeout_ms < 0 ||
                   now - r->sent_ms < (uint64_t)p->o.reply_timeout_ms) {
            i++;
        } else if (r->copy != NULL && r->tries < (uint32_t)p->resend) {
            s_resend(p, r, now);
            i++;
        } else {
            s_rec gone = *r;
            p->inflight[i] = p->inflight[--p->ninflight];
            s_report_all(p, &gone, p->unauth ? SB_EUNAUTH : SB_ETIMEDOUT);
            free(gone.copy);
        }
    }
}

/* Reads the socket monitor: after a lost connection is made again, every
 * request still owed a reply goes again now. */
static void
s_watch(sb_publisher *p)
{
    zmq_msg_t m;

    if (p->mon == NULL)
        return;
    for (;;) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&m) >= 6) {
            memcpy(&ev, zmq_msg_data(&m), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&m) + 2, 4);
        }
        if (sbc_curve_refusal_event(ev, value))
            p->unauth = 1; /* libzmq will not reconnect this socket */
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, p->mon, ZMQ_DONTWAIT) < 0)
                more = 0;
            else
                more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ev == ZMQ_EVENT_DISCONNECTED) {
            p->conn_lost = 1;
            p->connected = 0;
        } else if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            p->connected = 1;
        }
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED && p->conn_lost) {
            p->conn_lost = 0;
            uint64_t now = sbc_coarse_ms();
            for (uint32_t i = 0; i < p->ninflight; i++)
                if (p->inflight[i].copy != NULL &&
                    p->inflight[i].tries < (uint32_t)p->resend)
                    s_resend(p, &p->inflight[i], now);
        }
    }
}

/* When the oldest acked request's reply becomes overdue; UINT64_MAX if
 * never. */
static uint64_t
s_next_expiry(const sb_publisher *p)
{
    uint64_t t = UINT64_MAX;

    for (uint32_t i = 0; i < p->ninflight; i++) {
        uint64_t e = UINT64_MAX;
        if (p->inflight[i].retry_ms != 0) {
            /* Disconnected: the monitor's handshake event wakes us. */
            if (p->connected)
                e = p->inflight[i].retry_ms;
        } else if (p->o.reply_timeout_ms >= 0) {
            e = p->inflight[i].sent_ms + (uint64_t)p->o.reply_timeout_ms;
        }
        if (e < t)
            t = e;
    }
    return t;
}

/* Reads every reply that is already here. Returns how many were read. */
static int
s_drain(sb_publisher *p)
{
    int n = 0;
    zmq_msg_t m;

    s_watch(p);
    for (;;) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (errno == EINTR)
                continue;
            return n;
        }
        n++;
        if (zmq_msg_more(&m)) {
            /* A reply is one frame; skip the whole multi-frame message. */
            p->st.bad_replies++;
            do {
                zmq_msg_close(&m);
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, p->sock, ZMQ_DONTWAIT) < 0)
                    break;
            } while (zmq_msg_more(&m));
            zmq_msg_close(&m);
            continue;
        }
        s_on_reply(p, zmq_msg_data(&m), zmq_msg_size(&m));
        zmq_msg_close(&m);
    }
}

/* Waits for `events` on the socket until the deadline, reading replies
 * that arrive; wakes up early to expire an overdue request (which may
 * free the window). SB_OK: something happened, the caller re-checks;
 * SB_ETIMEDOUT when the deadline passed first. */
static sb_err
s_wait(sb_publisher *p, short events, uint64_t deadline)
{
    /* The monitor too: a reconnect is a reason to resend, not to wait. */
    zmq_pollitem_t it[2] = {{p->sock, 0, events, 0},
                            {p->mon, 0, ZMQ_POLLIN, 0}};
    uint64_t expiry = s_next_expiry(p);

    if (p->unauth) /* seen before: nothing more will come */
        return SB_EUNAUTH;
    uint64_t until = expiry < deadline ? expiry : deadline;
    int n = zmq_poll(it, p->mon != NULL ? 2 : 1, s_remaining(until));

    if (n < 0)
        return errno == EINTR ? SB_OK : SB_ESYS; /* the caller loops */
    if (n > 0) {
        if ((it[0].revents | it[1].revents) & ZMQ_POLLIN)
            s_drain(p);
        return p->unauth ? SB_EUNAUTH : SB_OK;
    }
    uint64_t now = sbc_coarse_ms();
    if (expiry != UINT64_MAX && now >= expiry) {
        s_expire(p, now);
        return SB_OK;
    }
    if (deadline != UINT64_MAX && now >= deadline)
        return p->unauth ? SB_EUNAUTH : SB_ETIMEDOUT;
    return SB_OK;
}

/* ---- Sending ------------------------------------------------------ */

/* Writes the headers in front of the gathered events and parks the
 * request as a ZeroMQ message that owns the buffer. */
static sb_err
s_seal(sb_publisher *p)
{
    uint8_t ack = (uint8_t)p->o.ack;
    size_t ack_len = sb_pb_uint_size(SB_PB_PUBLISH_ACK, ack);
    size_t pub_len = p->len + ack_len;
    uint64_t id = p->next_id;
    size_t hdr = sb_pb_uint_size(SB_PB_REQUEST_VERSION, SB_PROTOCOL_VERSION) +
                 sb_pb_uint_size(SB_PB_REQUEST_REQUEST_ID, id) +
                 sb_pb_key_size(SB_PB_REQUEST_PUBLISH) +
                 sb_varint_len(pub_len) + ack_len;

    assert(p->nev > 0 && !p->parked && hdr <= SBC_HEADROOM);
    uint8_t *start = p->buf + SBC_HEADROOM - hdr;
    uint8_t *w = start;
    w = sb_pb_put_uint(w, SB_PB_REQUEST_VERSION, SB_PROTOCOL_VERSION);
    w = sb_pb_put_uint(w, SB_PB_REQUEST_REQUEST_ID, id);
    w = sb_pb_put_msg_head(w, SB_PB_REQUEST_PUBLISH, pub_len);
    w = sb_pb_put_uint(w, SB_PB_PUBLISH_ACK, ack);
    assert(w == p->buf + SBC_HEADROOM);
    uint8_t *copy = NULL;
    if (p->resend > 0) {
        if ((copy = malloc(hdr + p->len)) == NULL)
            return SB_ENOMEM;
        memcpy(copy, start, hdr + p->len);
    }
    if (zmq_msg_init_data(&p->pmsg, start, hdr + p->len, s_free_buf, p->hdr) !=
        0) {
        free(copy);
        return SB_ENOMEM; /* still gathering: nothing changed */
    }
    p->next_id++;
    p->prec.id = id;
    p->prec.first_token = p->first_token;
    p->prec.count = p->nev;
    p->prec.tries = 0;
    p->prec.copy = copy;
    p->prec.copy_len = hdr + p->len;
    p->parked = 1;
    p->hdr = NULL;
    p->buf = NULL;
    p->cap = 0;
    p->len = 0;
    p->nev = 0;
    return SB_OK;
}

static void
s_record_sent(sb_publisher *p)
{
    p->st.requests++;
    p->prec.sent_ms = sbc_coarse_ms();
    if (p->recent != NULL)
        p->recent[p->prec.id % SBC_RECENT] = p->prec;
    else
        p->inflight[p->ninflight++] = p->prec;
}

/* Sends the parked request: SB_OK when the socket took it, SB_EAGAIN with
 * SB_DONTWAIT when the window or the HWM is full (still parked),
 * SB_ETIMEDOUT when the deadline passed (still parked). */
static sb_err
s_send_parked(sb_publisher *p, int flags, uint64_t deadline)
{
    int waited = 0;

    while (p->parked) {
        short want = 0;

        if (p->inflight != NULL && p->ninflight >= p->o.window) {
            s_drain(p);
            s_expire(p, sbc_coarse_ms());
            if (p->ninflight >= p->o.window)
                want = ZMQ_POLLIN;
        }
        if (want == 0) {
            if (zmq_msg_send(&p->pmsg, p->sock, ZMQ_DONTWAIT) >= 0) {
                /* zmq_msg_send emptied pmsg: the buffer is ZeroMQ's. */
                p->parked = 0;
                s_record_sent(p);
                s_drain(p);
                return SB_OK;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return SB_ESYS;
            want = ZMQ_POLLIN | ZMQ_POLLOUT;
        }
        if (flags & SB_DONTWAIT)
            return SB_EAGAIN;
        if (!waited) {
            p->st.waits++;
            waited = 1;
        }
        sb_err rc = s_wait(p, want, deadline);
        if (rc != SB_OK)
            return rc;
    }
    return SB_OK;
}

static sb_err
s_seal_and_send(sb_publisher *p, int flags, uint64_t deadline)
{
    sb_err rc;

    if (p->parked && (rc = s_send_parked(p, flags, deadline)) != SB_OK)
        return rc;
    if (p->nev == 0)
        return SB_OK;
    if ((rc = s_seal(p)) != SB_OK)
        return rc;
    return s_send_parked(p, flags, deadline);
}

/* ---- Encoding ----------------------------------------------------- */

typedef struct {
    size_t agg, type, event_id, producer_id; /* string lengths */
    size_t body;                             /* encoded Event */
    size_t item;                             /* with its tag and length */
} s_sizes;


static sb_err
s_measure(const sb_pub_event *ev, s_sizes *z)
{
    if (ev->aggregate == NULL || ev->type == NULL ||
        (ev->payload == NULL && ev->payload_len > 0))
        return SB_EINVAL;
    z->agg = strlen(ev->aggregate);
    z->type = strlen(ev->type);
    if (z->agg == 0 || z->type == 0)
        return SB_EINVAL;
    /* What no broker takes (its max_name_bytes is at most 255). */
    const char *names[] = {ev->aggregate, ev->type, ev->event_id,
                           ev->producer_id};
    for (int i = 0; i < 4; i++) {
        size_t n = names[i] ? strlen(names[i]) : 0;
        if (n > SBC_MAX_NAME)
            return SB_ETOOBIG;
        if (sb_utf8_bad_at(names[i], n) != SIZE_MAX)
            return SB_EINVAL;
    }
    if (ev->payload_len > SBC_MAX_ENCODED)
        return SB_ETOOBIG;
    z->event_id = ev->event_id ? strlen(ev->event_id) : 0;
    z->producer_id = ev->producer_id ? strlen(ev->producer_id) : 0;
    z->body =
        sb_pb_bytes_size(SB_PB_EVENT_AGGREGATE, z->agg) +
        sb_pb_bytes_size(SB_PB_EVENT_TYPE, z->type) +
        sb_pb_bytes_size(SB_PB_EVENT_PAYLOAD, ev->payload_len) +
        sb_pb_bytes_size(SB_PB_EVENT_EVENT_ID, z->event_id) +
        sb_pb_uint_size(SB_PB_EVENT_SOURCE_POS,
                        ev->has_source_pos ? ev->source_pos : 0) +
        sb_pb_uint_size(SB_PB_EVENT_HAS_SOURCE_POS, ev->has_source_pos != 0) +
        sb_pb_uint_size(SB_PB_EVENT_CAUSED_BY, ev->caused_by) +
        sb_pb_bytes_size(SB_PB_EVENT_PRODUCER_ID, z->producer_id) +
        sb_pb_uint_size(SB_PB_EVENT_PRODUCER_SEQ, ev->producer_seq) +
        sb_pb_uint_size(SB_PB_EVENT_CLIENT_TS_MS, ev->client_ts_ms);
    if (z->body > SBC_MAX_ENCODED)
        return SB_ETOOBIG;
    z->item = sb_pb_msg_size(SB_PB_PUBLISH_EVENTS, z->body);
    return SB_OK;
}

/* The event alone would make a request over max_request_bytes. Not
 * batch_bytes: that bounds how events are grouped, and an event larger
 * than it travels in a request of its own. */
static size_t
s_max_item(const sb_publisher *p)
{
    return p->o.max_request_bytes - SBC_HEADROOM;
}

static int
s_too_big(const sb_publisher *p, const s_sizes *z)
{
    return p->o.max_request_bytes != 0 && z->item > s_max_item(p);
}

/* The reason for sb_publisher_last_error: the field, the value, the
 * limit. Called after s_measure or s_too_big refused ev. */
static void
s_explain(sb_publisher *p, const sb_pub_event *ev, const s_sizes *z,
          sb_err rc)
{
    static const char *const field[] = {"aggregate", "type", "event_id",
                                        "producer_id"};
    const char *names[] = {ev->aggregate, ev->type, ev->event_id,
                           ev->producer_id};
    char *w = p->last_error;
    size_t n = sizeof p->last_error;

    if (ev->aggregate == NULL || ev->aggregate[0] == '\0' ||
        ev->type == NULL || ev->type[0] == '\0') {
        snprintf(w, n, "%s is missing or empty (it is required)",
                 ev->aggregate == NULL || ev->aggregate[0] == '\0'
                     ? "aggregate" : "type");
        return;
    }
    if (ev->payload == NULL && ev->payload_len > 0) {
        snprintf(w, n, "payload is NULL with payload_len %zu",
                 ev->payload_len);
        return;
    }
    for (int i = 0; i < 4; i++) {
        size_t len = names[i] ? strlen(names[i]) : 0, at;
        if (len > SBC_MAX_NAME) {
            snprintf(w, n, "%s %zu B > limit %d (no broker takes longer "
                     "names)", field[i], len, SBC_MAX_NAME);
            return;
        }
        if ((at = sb_utf8_bad_at(names[i], len)) != SIZE_MAX) {
            snprintf(w, n, "%s is not valid UTF-8 at byte %zu (from 0)",
                     field[i], at);
            return;
        }
    }
    if (rc == SB_ETOOBIG && p->o.max_request_bytes != 0)
        snprintf(w, n, "payload %zu B (event %zu B encoded) > limit %zu B "
                 "(max_request_bytes %u, the broker's max_message_bytes)",
                 ev->payload_len, z->item, s_max_item(p),
                 p->o.max_request_bytes);
    else
        snprintf(w, n, "%s", sb_strerror(rc));
}

static sb_err
s_append(sb_publisher *p, const sb_pub_event *ev, const s_sizes *z)
{
    size_t need = SBC_HEADROOM + p->len + z->item;

    if (need > SBC_MAX_ENCODED)
        return SB_ETOOBIG;
    if (p->hdr == NULL && s_buf_new(p, need) != SB_OK)
        return SB_ENOMEM;
    if (need > p->cap) {
        /* Only a first event larger than batch_bytes gets here (a request
         * with events is sealed before it would pass batch_bytes). */
        s_bufhdr *h = realloc(p->hdr, sizeof *h + need);
        if (h == NULL)
            return SB_ENOMEM;
        h->cap = need; /* no longer the pool's size: freed after use */
        p->hdr = h;
        p->buf = (uint8_t *)(h + 1);
        p->cap = need;
    }
    uint8_t *w = p->buf + SBC_HEADROOM + p->len;
    w = sb_pb_put_msg_head(w, SB_PB_PUBLISH_EVENTS, z->body);
    w = sb_pb_put_bytes(w, SB_PB_EVENT_AGGREGATE, ev->aggregate, z->agg);
    w = sb_pb_put_bytes(w, SB_PB_EVENT_TYPE, ev->type, z->type);
    w = sb_pb_put_bytes(w, SB_PB_EVENT_PAYLOAD, ev->payload, ev->payload_len);
    w = sb_pb_put_bytes(w, SB_PB_EVENT_EVENT_ID, ev->event_id, z->event_id);
    if (ev->has_source_pos)
        w = sb_pb_put_uint(w, SB_PB_EVENT_SOURCE_POS, ev->source_pos);
    w = sb_pb_put_uint(w, SB_PB_EVENT_CAUSED_BY, ev->caused_by);
    w = sb_pb_put_bytes(w, SB_PB_EVENT_PRODUCER_ID, ev->producer_id,
                        z->producer_id);
    w = sb_pb_put_uint(w, SB_PB_EVENT_PRODUCER_SEQ, ev->producer_seq);
    w = sb_pb_put_uint(w, SB_PB_EVENT_CLIENT_TS_MS, ev->client_ts_ms);
    /* Position 0 is valid, so presence travels in its own field. */
    w = sb_pb_put_uint(w, SB_PB_EVENT_HAS_SOURCE_POS, ev->has_source_pos != 0);
    assert(w == p->buf + SBC_HEADROOM + p->len + z->item);
    p->len += z->item;
    return SB_OK;
}

/* ---- Public calls ------------------------------------------------- */

/* SB_EAGAIN (SB_DONTWAIT) or SB_ETIMEDOUT (blocking) is only returned
 * before the event is taken, so the caller may simply retry it: a request
 * that the socket would not take stays parked and goes first next time.
 * Once the event is in, publish returns SB_OK even if the request it
 * completed could not be sent yet (it is parked, and sent by the next
 * publish/flush/poll/wait_all). */
sb_err
sb_publisher_publish(sb_publisher *p, const sb_pub_event *ev, int flags,
                     uint64_t *token)
{
    s_sizes z;
    sb_err rc;
    sb_pub_event own;

    if (p == NULL || ev == NULL)
        return SB_EINVAL;
    int auto_pseq = p->producer_id != NULL && ev->producer_id == NULL;
    if (auto_pseq) {
        own = *ev;
        own.producer_id = p->producer_id;
        own.producer_seq = p->next_pseq;
        ev = &own;
    }
    p->last_error[0] = '\0';
    if ((rc = s_measure(ev, &z)) != SB_OK) {
        s_explain(p, ev, &z, rc);
        return rc;
    }
    if (s_too_big(p, &z)) {
        s_explain(p, ev, &z, SB_ETOOBIG);
        return SB_ETOOBIG;
    }
    uint64_t now = sbc_coarse_ms();
    uint64_t deadline =
        p->o.timeout_ms < 0 ? UINT64_MAX : now + (uint64_t)p->o.timeout_ms;
    if (p->parked) {
        if ((rc = s_send_parked(p, flags, deadline)) != SB_OK)
            return rc;
        /* It may have waited: a stale `now` would start the next request
         * already old, and linger would cut it short. */
        now = sbc_coarse_ms();
    }
    if (p->nev > 0 && (now - p->started_ms >= p->o.linger_ms ||
                       p->len + z.item > p->max_events_len)) {
        if ((rc = s_seal_and_send(p, flags, deadline)) != SB_OK)
            return rc;
    }
    if ((rc = s_append(p, ev, &z)) != SB_OK)
        return rc;
    if (auto_pseq)
        p->next_pseq++; /* taken: a refused publish uses up no seq */
    if (p->nev++ == 0) {
        p->first_token = p->next_token;
        p->started_ms = now;
    }
    if (token != NULL)
        *token = p->next_token;
    p->next_token++;
    p->st.events++;
    if (p->nev >= p->o.batch_events || p->len >= p->max_events_len) {
        /* The event is taken: never wait here. Parked on EAGAIN. */
        (void)s_seal_and_send(p, SB_DONTWAIT, deadline);
    }
    return SB_OK;
}

const char *
sb_publisher_last_error(const sb_publisher *p)
{
    return p != NULL ? p->last_error : "";
}

sb_err
sb_publisher_flush(sb_publisher *p, int flags)
{
    if (p == NULL)
        return SB_EINVAL;
    return s_seal_and_send(p, flags, s_deadline(p->o.timeout_ms));
}

/* One pass of housekeeping: linger, a parked request, replies. Returns
 * how many replies it read. */
static int
s_service(sb_publisher *p, uint64_t now)
{
    s_expire(p, now);
    if (p->nev > 0 && now - p->started_ms >= p->o.linger_ms)
        (void)s_seal_and_send(p, SB_DONTWAIT, 0);
    else if (p->parked)
        (void)s_send_parked(p, SB_DONTWAIT, 0);
    return s_drain(p);
}

sb_err
sb_publisher_poll(sb_publisher *p, int timeout_ms)
{
    if (p == NULL)
        return SB_EINVAL;
    uint64_t deadline = s_deadline(timeout_ms);

    for (;;) {
        uint64_t now = sbc_coarse_ms();
        if (s_service(p, now) > 0)
            return SB_OK;
        uint64_t until = deadline;
        /* Linger can only act once no request is parked ahead of it;
         * until then the wait is for the socket (POLLIN/POLLOUT). */
        if (p->nev > 0 && !p->parked && p->started_ms + p->o.linger_ms < until)
            until = p->started_ms + p->o.linger_ms;
        uint64_t expiry = s_next_expiry(p);
        if (expiry < until)
            until = expiry;
        if (until != UINT64_MAX && now >= until) {
            if (until == deadline)
                return SB_OK;
            continue; /* linger or an expiry is due: service does it */
        }
        short events = ZMQ_POLLIN;
        /* POLLOUT only helps a parked request the window lets go. */
        if (p->parked && (p->inflight == NULL || p->ninflight < p->o.window))
            events |= ZMQ_POLLOUT;
        zmq_pollitem_t it[2] = {{p->sock, 0, events, 0},
                                {p->mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, p->mon != NULL ? 2 : 1, s_remaining(until)) < 0 &&
            errno != EINTR)
            return SB_ESYS;
    }
}

sb_err
sb_publisher_wait_all(sb_publisher *p, int timeout_ms)
{
    sb_err rc;

    if (p == NULL)
        return SB_EINVAL;
    uint64_t deadline = s_deadline(timeout_ms);
    if ((rc = s_seal_and_send(p, 0, deadline)) != SB_OK)
        return rc;
    while (p->ninflight > 0) {
        if ((rc = s_wait(p, ZMQ_POLLIN, deadline)) != SB_OK)
            return rc;
    }
    return SB_OK;
}

void
sb_publisher_set_timeout(sb_publisher *p, int timeout_ms)
{
    if (p == NULL)
        return;
    p->o.timeout_ms = timeout_ms;
    if (p->sock != NULL) {
        /* destroy's linger follows, as sb_publisher_new set it. */
        int linger = timeout_ms >= 0 ? timeout_ms : 60000;
        zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger);
    }
}

sb_err
sb_publisher_hello(sb_publisher *p, int timeout_ms)
{
    Snapbus__Request req = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    uint8_t buf[64];
    sb_err rc;

    if (p == NULL)
        return SB_EINVAL;
    uint64_t deadline = s_deadline(timeout_ms);
    /* Everything published so far goes first: behind it on the same
     * connection, the hello's answer shows that the broker has read it. */
    if ((rc = s_seal_and_send(p, 0, deadline)) != SB_OK)
        return rc;
    h.client = "libsnapbus";
    req.version = SB_PROTOCOL_VERSION;
    req.request_id = p->next_id++;
    req.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    req.hello = &h;
    size_t n = snapbus__request__pack(&req, buf);
    p->hello_id = req.request_id;
    p->hello_done = 0;
    while (zmq_send(p->sock, buf, n, ZMQ_DONTWAIT) < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            p->hello_id = 0;
            return SB_ESYS;
        }
        if ((rc = s_wait(p, ZMQ_POLLIN | ZMQ_POLLOUT, deadline)) != SB_OK) {
            p->hello_id = 0;
            return rc;
        }
    }
    while (!p->hello_done) {
        if ((rc = s_wait(p, ZMQ_POLLIN, deadline)) != SB_OK) {
            p->hello_id = 0; /* a late answer is then just unmatched */
            return rc;
        }
    }
    return p->hello_err;
}
