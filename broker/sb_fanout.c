#include "sb_fanout.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "sb_actor.h"
#include "sb_auth.h"
#include "sb_clock.h"
#include "sb_log.h"
#include "sb_logstore.h"
#include "sb_msg.h"
#include "sb_wire.h"
#include "sb_zmq.h"

/* ---- retention ring ---------------------------------------------------- */

struct sb_ring {
    sb_blob **slot;
    uint64_t cap;       /* max_batches */
    uint64_t head;      /* index of the oldest */
    uint64_t count;
    uint64_t bytes;
    uint64_t max_bytes;
    uint64_t horizon;   /* seqs below this may have been evicted */
    uint64_t base_id;   /* while empty: the first batch id it may hold */
};

void
sb_blob_unref(sb_blob *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) {
        if (b->acct != NULL)
            atomic_fetch_sub(b->acct, sizeof *b + b->len);
        free(b);
    }
}

sb_err
sb_ring_new(sb_ring **out, uint64_t max_batches, uint64_t max_bytes)
{
    sb_ring *r = calloc(1, sizeof *r);

    if (r == NULL)
        return SB_ENOMEM;
    r->cap = max_batches ? max_batches : 1;
    if ((r->slot = calloc(r->cap, sizeof *r->slot)) == NULL) {
        free(r);
        return SB_ENOMEM;
    }
    r->max_bytes = max_bytes;
    r->horizon = 1;
    *out = r;
    return SB_OK;
}

/* What a retained batch costs in memory: its bytes and its header (the
 * topic alone is 256 bytes). Counting only the encoded bytes let a ring of
 * small batches exceed retention.bytes by a third. */
static uint64_t
s_mem(const sb_blob *b)
{
    return sizeof *b + b->len;
}

static void
s_evict(sb_ring *r)
{
    sb_blob *b = r->slot[r->head];

    if (b->last_seq + 1 > r->horizon)
        r->horizon = b->last_seq + 1;
    r->bytes -= s_mem(b);
    r->slot[r->head] = NULL;
    r->head = (r->head + 1) % r->cap;
    r->count--;
    sb_blob_unref(b);
}

void
sb_ring_destroy(sb_ring **rp)
{
    sb_ring *r = *rp;

    if (r == NULL)
        return;
    while (r->count > 0)
        s_evict(r);
    free(r->slot);
    free(r);
    *rp = NULL;
}

sb_err
sb_ring_add(sb_ring *r, sb_blob *b)
{
    while (r->count > 0 && (r->count == r->cap || r->bytes + s_mem(b) > r->max_bytes))
        s_evict(r);
    atomic_fetch_add(&b->refs, 1);
    r->slot[(r->head + r->count) % r->cap] = b;
    r->count++;
    r->bytes += s_mem(b);
    return SB_OK;
}

void
sb_ring_set_start(sb_ring *r, uint64_t next_seq, uint64_t next_batch_id)
{
    if (next_seq > r->horizon)
        r->horizon = next_seq;
    r->base_id = next_batch_id;
}

uint64_t
sb_ring_count(const sb_ring *r)
{
    return r->count;
}

uint64_t
sb_ring_bytes(const sb_ring *r)
{
    return r->bytes;
}

uint64_t
sb_ring_low_seq(const sb_ring *r, uint64_t batch_id)
{
    uint64_t first_id;

    if (r->count == 0)
        return 0;
    first_id = r->slot[r->head]->batch_id;
    if (batch_id < first_id || batch_id - first_id >= r->count)
        return 0;
    return r->slot[(r->head + (batch_id - first_id)) % r->cap]->low_seq;
}

sb_err
sb_ring_find(sb_ring *r, const sb_ring_query *q, sb_blob **out,
             sb_ring_result *res)
{
    uint64_t first_id = r->count ? r->slot[r->head]->batch_id : r->base_id;
    uint64_t start = 0, bytes = 0;

    memset(res, 0, sizeof *res);
    res->retained_first_seq = r->horizon;
    res->retained_first_batch_id = first_id;
    /* Batch ids in the ring are consecutive, so a cursor is an index. */
    if (q->after_batch_id != 0) {
        /* after + 1 < first, written so that a cursor of UINT64_MAX (at or
         * past the newest batch: an empty page) cannot wrap to 0. */
        int evicted = first_id > 0 && q->after_batch_id < first_id - 1;
        if (r->count == 0 || evicted)
            return evicted ? SB_ENOENT : SB_OK;
        start = q->after_batch_id - (first_id - 1);
    } else if (q->from_seq != 0 && q->from_seq < r->horizon) {
        return SB_ENOENT;
    }
    res->last_batch_id = q->after_batch_id;
    for (uint64_t i = start, scanned = 0; i < r->count; i++, scanned++) {
        sb_blob *b = r->slot[(r->head + i) % r->cap];
        if (res->count == q->max_batches || scanned == q->max_scan ||
            (res->count > 0 && bytes + b->len > q->max_bytes)) {
            res->more = 1;
            return SB_OK;
        }
        res->last_batch_id = b->batch_id;
        if (b->last_seq < q->from_seq ||
            (q->to_seq != 0 && b->first_seq > q->to_seq) ||
            b->topic_len - 1 < q->prefix_len ||
            (q->exact && b->topic_len - 1 != q->prefix_len) ||
            memcmp(b->topic, q->prefix, q->prefix_len) != 0)
            continue;
        atomic_fetch_add(&b->refs, 1);
        out[res->count++] = b;
        bytes += b->len;
    }
    return SB_OK;
}

/* ---- actor ------------------------------------------------------------- */

#define S_LINGER_CAP_MS SB_FANOUT_LINGER_CAP_MS

struct sb_fanout {
    sb_actor *actor;
    sb_fanout_args args;
    char pub_ep[256];
    char query_ep[256];
    void *pub;
    void *query;
    sb_ring *ring;
    sb_fanout_stats st;
    sb_item *outbox; /* replies for the ingest that its link refused */
    size_t nout, capout;
    int eof;
    sb_blob **found;
    sb_store_reader *log; /* NULL: no on-disk log */
    uint64_t low_seq; /* highest low_seq published: for the query hello */
    /* The PUB socket's monitor (PAIR; NULL with CURVE, whose monitor is
     * the auth actor's) and the subscriber connections it counts, so the
     * shutdown linger can end once nobody is left to fetch the tail. */
    void *mon;
    int subscribers;
    /* Draining, everything published: the epoch's last batch id (0: not
     * yet), and when a fetch last stopped short of it (a subscriber still
     * catching up, which keeps the linger going). */
    int ending;
    uint64_t end_bid;
    uint64_t behind_ms;
};

/* Counts a new blob's bytes for as long as it lives. */
static void
s_account(sb_fanout *p, sb_blob *b)
{
    b->acct = &p->st.blob_bytes;
    atomic_fetch_add(&p->st.blob_bytes, sizeof *b + b->len);
}

/* Bytes of batches held only by ZeroMQ or a page being built: all that
 * live, less what the ring holds. */
static uint64_t
s_outgoing(sb_fanout *p)
{
    uint64_t all = atomic_load(&p->st.blob_bytes), ring = sb_ring_bytes(p->ring);

    return all > ring ? all - ring : 0;
}

static int
s_outgoing_full(sb_fanout *p)
{
    return p->args.outgoing_max != 0 && s_outgoing(p) >= p->args.outgoing_max;
}

static void
s_blob_free(void *data, void *hint)
{
    (void) data;
    sb_blob_unref(hint);
}

static void
s_queue_reply(sb_fanout *p, sb_item it)
{
    if (p->nout == 0 && sb_link_send(p->args.replies, &it) == SB_OK)
        return;
    if (p->nout == p->capout) {
        size_t cap = p->capout ? p->capout * 2 : 64;
        sb_item *o;
        /* The outbox holds at most the requests one batch completes, and
         * batches are not read while it is non-empty: bounded. */
        while ((o = realloc(p->outbox, cap * sizeof *o)) == NULL)
            zmq_poll(NULL, 0, 10);
        p->outbox = o;
        p->capout = cap;
    }
    if (p->nout == 0)
        atomic_fetch_add(&p->st.parked, 1);
    p->outbox[p->nout++] = it;
}

static void
s_flush_outbox(sb_fanout *p)
{
    size_t i = 0;

    if (p->nout == 0)
        return; /* outbox may still be NULL: memmove(NULL, ...) is UB */
    while (i < p->nout && sb_link_send(p->args.replies, &p->outbox[i]) == SB_OK)
        i++;
    memmove(p->outbox, p->outbox + i, (p->nout - i) * sizeof *p->outbox);
    p->nout -= i;
}

/* Bounds of the batch-size histogram (events), for the metrics. */
const uint32_t sb_fanout_size_bounds[SB_FANOUT_SIZE_BUCKETS - 1] = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000};

static size_t
s_size_bucket(uint32_t n)
{
    size_t i = 0;

    while (i < SB_FANOUT_SIZE_BUCKETS - 1 && n > sb_fanout_size_bounds[i])
        i++;
    return i;
}

static void
s_publish(sb_fanout *p, sb_batch *b)
{
    sb_blob *blob;
    uint8_t *buf;
    size_t len;
    zmq_msg_t m;

    for (uint32_t i = 0; i < b->n; i++)
        b->ev[i]->batch_id = b->id;
    while (sb_wire_encode_batch(b, offsetof(sb_blob, data), &buf, &len) != SB_OK)
        zmq_poll(NULL, 0, 10); /* out of memory: wait, never lose it */
    blob = (sb_blob *) buf;
    atomic_init(&blob->refs, 1);
    blob->len = (uint32_t) len;
    blob->batch_id = b->id;
    blob->first_seq = b->n ? b->ev[0]->seq : 0;
    blob->last_seq = b->n ? b->ev[b->n - 1]->seq : 0;
    blob->topic_len = b->agg_len + 1;
    memcpy(blob->topic, b->agg, b->agg_len);
    blob->topic[b->agg_len] = 0;
    blob->hdr_len = (uint32_t) sb_wire_batch_header_len(blob->data, len);
    blob->low_seq = b->low_seq;
    s_account(p, blob);
    if (b->low_seq > p->low_seq)
        p->low_seq = b->low_seq;

    sb_ring_add(p->ring, blob); /* first: the outgoing share is then exact */
    /* PUB never blocks: at a subscriber's high-water mark it skips that
     * subscriber, which notices from the seqs and fetches from the ring.
     * While ZeroMQ holds the budget's share of batches the ring no longer
     * has (a stopped subscriber's queue), every subscriber is skipped the
     * same way: the batch is in the ring, so nothing is lost. */
    if (s_outgoing_full(p))
        atomic_fetch_add(&p->st.pub_skipped, 1);
    else if (zmq_send(p->pub, blob->topic, blob->topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) {
        atomic_fetch_add(&blob->refs, 1);
        zmq_msg_init_data(&m, blob->data, len, s_blob_free, blob);
        if (zmq_msg_send(&m, p->pub, ZMQ_DONTWAIT) < 0)
            zmq_msg_close(&m);
    }
    sb_blob_unref(blob);

    atomic_fetch_add(&p->st.batches, 1);
    atomic_fetch_add(&p->st.events, b->n);
    atomic_fetch_add(&p->st.bytes, len);
    atomic_store(&p->st.last_batch_id, b->id);
    if (blob->last_seq > atomic_load(&p->st.last_seq))
        atomic_store(&p->st.last_seq, blob->last_seq);
    atomic_store(&p->st.retained_batches, sb_ring_count(p->ring));
    atomic_store(&p->st.retained_bytes, sb_ring_bytes(p->ring));
    atomic_fetch_add(&p->st.size_buckets[s_size_bucket(b->n)], 1);
    /* opened_ms is the router's clock, CLOCK_MONOTONIC in the broker. */
    uint64_t now_ms = sb_clock_mono_ns() / 1000000;
    if (b->opened_ms != 0 && now_ms >= b->opened_ms)
        sb_hist_observe_ns(&p->st.batch_hold, (now_ms - b->opened_ms) * 1000000);

    for (uint32_t i = 0; i < b->n; i++) {
        sb_req *req = b->ev[i]->req;
        if (atomic_fetch_sub(&req->unpublished, 1) == 1 &&
            req->ack == SB_ACK_PUBLISHED) {
            sb_reply *rp;
            while (sb_reply_from_req(&rp, req) != SB_OK)
                zmq_poll(NULL, 0, 10);
            s_queue_reply(p, (sb_item){SB_ITEM_REPLY, rp});
        }
    }
    sb_batch_destroy(&b);
}

static void
s_route(sb_fanout *p, const sb_zmq_env *env, uint8_t *buf, size_t len, int more)
{
    if (sb_zmq_route_reply(p->query, env->peer, env->peer_len, env->delimiter,
                           buf, len, more) != SB_OK)
        atomic_fetch_add(&p->st.fetch_lost, 1);
}

static void
s_fetch(sb_fanout *p, const sb_zmq_env *env, const sb_wire_request *w)
{
    const sb_fetch_req *f = &w->fetch;
    sb_ring_query q = {f->prefix, f->prefix_len, f->from_seq, f->to_seq,
                       f->after_batch_id, f->max_batches, f->max_bytes,
                       p->args.fetch_max_scan, f->exact};
    sb_ring_result res;
    sb_fetch_info_w info;
    sb_werr err = SB_WERR_NONE;
    uint8_t *buf;
    size_t len;

    atomic_fetch_add(&p->st.fetches, 1);
    if (q.max_batches == 0 || q.max_batches > p->args.fetch_max_batches)
        q.max_batches = p->args.fetch_max_batches;
    if (q.max_bytes == 0 || q.max_bytes > p->args.fetch_max_bytes)
        q.max_bytes = p->args.fetch_max_bytes;
    /* While ZeroMQ holds the budget's share of batches, a page holds one
     * batch: the fetch still moves on, and a peer that does not read its
     * replies cannot pin more. */
    if (s_outgoing_full(p)) {
        q.max_batches = 1;
        atomic_fetch_add(&p->st.fetch_shortened, 1);
    }
    uint32_t log_max_bytes = q.max_bytes;
    /* Headers are a few dozen bytes: a headers_only page is bounded by
     * its count (and the scan), not by the size of the batches behind. */
    if (f->headers_only)
        q.max_bytes = UINT32_MAX;
    sb_err frc = sb_ring_find(p->ring, &q, p->found, &res);
    if (frc == SB_ENOENT && p->log != NULL) {
        /* Older than the ring: the log answers, as far back as it goes,
         * but no further than what we published (written for sure). It
         * reads whole batches even for headers_only, so its pages keep
         * the byte bound. */
        q.max_bytes = log_max_bytes;
        frc = sb_logstore_find(p->log, &q, atomic_load(&p->st.last_batch_id),
                               p->found, &res);
        for (uint32_t i = 0; frc == SB_OK && i < res.count; i++)
            if (p->found[i]->acct == NULL)
                s_account(p, p->found[i]);
        if (frc != SB_OK && frc != SB_ENOENT) {
            SB_LOG(SB_LOG_WARN, "fanout.log_fetch", "err=%s", sb_strerror(frc));
            frc = SB_ENOENT;
        }
    }
    if (frc == SB_ENOENT) {
        atomic_fetch_add(&p->st.fetch_refused, 1);
        err = SB_WERR_OUT_OF_RETENTION;
    }
    info = (sb_fetch_info_w){res.count, res.last_batch_id, res.more,
                             res.retained_first_seq, res.retained_first_batch_id,
                             atomic_load(&p->st.last_seq),
                             atomic_load(&p->st.last_batch_id), p->args.epoch,
                             sb_ring_low_seq(p->ring, res.last_batch_id),
                             p->end_bid};
    /* A subscriber still short of the end when the epoch is over: the
     * linger waits for it (s_run). */
    if (p->ending && err == SB_WERR_NONE && res.more)
        p->behind_ms = sb_clock_mono_ns() / 1000000;
    if (sb_wire_encode_fetch_reply(w->request_id, err,
                                   err ? "the range starts before the retained batches" : NULL,
                                   &info, &buf, &len) != SB_OK ||
        sb_zmq_route_reply(p->query, env->peer, env->peer_len, env->delimiter,
                           buf, len, res.count > 0) != SB_OK) {
        atomic_fetch_add(&p->st.fetch_lost, 1);
        for (uint32_t i = 0; i < res.count; i++)
            sb_blob_unref(p->found[i]);
        return;
    }
    for (uint32_t i = 0; i < res.count; i++) {
        zmq_msg_t m;
        sb_blob *b = p->found[i];
        size_t n = b->len;
        if (f->headers_only) /* a prefix of the same bytes: no copy */
            n = b->hdr_len ? b->hdr_len
                           : sb_wire_batch_header_len(b->data, b->len);
        zmq_msg_init_data(&m, b->data, n, s_blob_free, b);
        if (zmq_msg_send(&m, p->query, ZMQ_DONTWAIT | (i + 1 < res.count ? ZMQ_SNDMORE : 0)) < 0)
            zmq_msg_close(&m);
    }
    atomic_fetch_add(&p->st.fetch_batches, res.count);
}

static void
s_hello(sb_fanout *p, const sb_zmq_env *env, uint64_t id)
{
    sb_hello_info h = {p->args.broker_name, p->args.limits,
                       atomic_load(&p->st.last_seq),
                       atomic_load(&p->st.last_batch_id), p->args.epoch,
                       p->end_bid};
    uint8_t *buf;
    size_t len;

    /* low_seq: a starting subscriber's watermark (docs/SUBSCRIBING.md). */
    if (sb_wire_encode_hello_reply_low(id, &h, p->low_seq, &buf, &len) == SB_OK)
        s_route(p, env, buf, len, 0);
}

static void
s_query(sb_fanout *p)
{
    for (int i = 0; i < 64; i++) {
        sb_zmq_env env;
        zmq_msg_t body;
        sb_wire_request w;
        uint8_t *buf;
        size_t len;

        if (sb_zmq_route_recv(p->query, &env, &body) != SB_OK)
            return;
        memset(&w, 0, sizeof w);
        if (env.frames != 1) {
            w.request_id = 0;
            w.err = SB_WERR_INVALID;
            w.detail = "a request is exactly one frame after the envelope";
        } else if (sb_wire_decode_request(zmq_msg_data(&body), zmq_msg_size(&body),
                                          &p->args.limits, &w) != SB_OK) {
            w.err = SB_WERR_INVALID;
            w.detail = "out of memory";
        } else if (w.err == SB_WERR_NONE && w.kind == SB_WREQ_PUBLISH) {
            w.err = SB_WERR_UNSUPPORTED;
            w.detail = "publish on the ingest socket";
        }
        if (w.req != NULL && w.err == SB_WERR_NONE)
            w.err = SB_WERR_UNSUPPORTED;
        if (w.kind == SB_WREQ_PUBLISH && w.req != NULL)
            sb_req_unref(w.req);
        zmq_msg_close(&body);
        if (w.err == SB_WERR_NONE) {
            if (w.kind == SB_WREQ_HELLO)
                s_hello(p, &env, w.request_id);
            else {
                uint64_t t0 = sb_clock_mono_ns();
                s_fetch(p, &env, &w);
                sb_hist_observe_ns(&p->st.fetch, sb_clock_mono_ns() - t0);
            }
            continue;
        }
        atomic_fetch_add(&p->st.fetch_refused, 1);
        if (sb_wire_encode_error(w.request_id, w.err, w.detail, &buf, &len) == SB_OK)
            s_route(p, &env, buf, len, 0);
    }
}

static void
s_read_batches(sb_fanout *p)
{
    sb_item it;

    for (int i = 0; i < 256 && p->nout == 0 && !p->eof &&
                    sb_link_recv(p->args.in, &it) == SB_OK; i++) {
        if (it.kind == SB_ITEM_EOF) {
            p->eof = 1;
            s_queue_reply(p, it); /* tells the ingest everything is out */
        } else {
            s_publish(p, it.ptr);
        }
    }
}

/* The end of the epoch on the PUB socket: ["\0"][EpochEnd]. Sent again
 * during the linger, since a subscriber at its high-water mark misses
 * it like any batch; one that drains its queue gets a later copy. */
static void
s_epoch_end(sb_fanout *p)
{
    uint8_t *buf;
    size_t len;

    if (sb_wire_encode_epoch_end(p->args.epoch, atomic_load(&p->st.last_batch_id),
                                 atomic_load(&p->st.last_seq), p->low_seq,
                                 p->args.shutdown_linger_ms, &buf, &len) != SB_OK)
        return;
    if (zmq_send(p->pub, "", 1, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 1)
        zmq_send(p->pub, buf, len, ZMQ_DONTWAIT);
    free(buf);
}

/* Counts subscriber connections from the PUB socket's monitor. */
static void
s_watch(sb_fanout *p)
{
    zmq_msg_t m;

    for (;;) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&m) >= 2)
            memcpy(&ev, zmq_msg_data(&m), 2);
        int more = zmq_msg_more(&m);
        while (more) { /* the endpoint frame */
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, p->mon, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&m);
        }
        zmq_msg_close(&m);
        if (ev == ZMQ_EVENT_ACCEPTED)
            p->subscribers++;
        else if (ev == ZMQ_EVENT_DISCONNECTED && p->subscribers > 0)
            p->subscribers--;
    }
}

static int
s_monitor(sb_fanout *p)
{
    char ep[64];
    int zero = 0;

    snprintf(ep, sizeof ep, "inproc://snapbus.fanout.monitor.%p", (void *) p);
    if (zmq_socket_monitor(p->pub, ep, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0 ||
        (p->mon = zmq_socket(p->args.zmq_ctx, ZMQ_PAIR)) == NULL)
        return -1;
    zmq_setsockopt(p->mon, ZMQ_LINGER, &zero, sizeof zero);
    return zmq_connect(p->mon, ep);
}

static sb_err
s_open(sb_fanout *p, void **sock, int type, const char *ep, char *bound)
{
    int hwm = p->args.hwm, linger = 1000, one = 1;
    int64_t maxmsg = 1 << 16; /* subscribers and queriers send little */

    if ((*sock = zmq_socket(p->args.zmq_ctx, type)) == NULL)
        return SB_ESYS;
    zmq_setsockopt(*sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(*sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(*sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(*sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (type == ZMQ_ROUTER)
        zmq_setsockopt(*sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    if (sb_auth_server_socket(*sock, p->args.curve_secret,
                              type == ZMQ_PUB ? SB_ROLE_SUBSCRIBE
                                              : SB_ROLE_QUERY) != SB_OK)
        return SB_ESYS;
    return sb_zmq_bind(*sock, ep, bound, 256);
}

static void
s_run(sb_actor *self, void *arg)
{
    sb_fanout *p = arg;

    if (s_open(p, &p->pub, ZMQ_PUB, p->args.pub_endpoint, p->pub_ep) != SB_OK ||
        s_open(p, &p->query, ZMQ_ROUTER, p->args.query_endpoint, p->query_ep) != SB_OK) {
        if (p->pub)
            zmq_close(p->pub);
        if (p->query)
            zmq_close(p->query);
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    /* Without CURVE (whose monitor belongs to the auth actor) the PUB
     * socket's connections are counted, so the linger can end early. */
    if (p->args.curve_secret == NULL && s_monitor(p) != 0 && p->mon != NULL) {
        zmq_close(p->mon);
        p->mon = NULL;
    }
    sb_actor_ready(self, SB_OK);
    /* After the last batch (EOF, its acks handed on) the query socket is
     * served for shutdown_linger_ms more, behind an EpochEnd marker on
     * PUB, so that lossless subscribers can fetch the tail they missed. */
    uint64_t end_ms = 0, mark_ms = 0, t0 = 0, fetches0 = 0;
    for (;;) {
        long wait = -1;
        if (p->eof && p->nout == 0) {
            uint64_t now = sb_clock_mono_ns() / 1000000;
            if (end_ms == 0) {
                end_ms = now + p->args.shutdown_linger_ms;
                p->end_bid = atomic_load(&p->st.last_batch_id);
                p->ending = 1;
                t0 = now;
                fetches0 = atomic_load(&p->st.fetches);
                SB_LOG(SB_LOG_NOTICE, "fanout.linger",
                       "last_batch_id=%llu linger_ms=%u subscribers=%d",
                       (unsigned long long) atomic_load(&p->st.last_batch_id),
                       p->args.shutdown_linger_ms,
                       p->mon != NULL ? p->subscribers : -1);
            }
            if (now >= mark_ms) {
                s_epoch_end(p);
                mark_ms = now + 100;
            }
            /* A fetch that stopped short of the end is a subscriber still
             * catching up: wait for it a linger more, but for no longer
             * than a drain may take in all (S_LINGER_CAP_MS). */
            if (p->behind_ms + p->args.shutdown_linger_ms > end_ms)
                end_ms = p->behind_ms + p->args.shutdown_linger_ms;
            if (end_ms > t0 + p->args.shutdown_linger_ms + S_LINGER_CAP_MS)
                end_ms = t0 + p->args.shutdown_linger_ms + S_LINGER_CAP_MS;
            if (now >= end_ms || (p->mon != NULL && p->subscribers == 0)) {
                SB_LOG(SB_LOG_NOTICE, "fanout.linger_end",
                       "ms=%llu fetches=%llu subscribers=%d",
                       (unsigned long long) (now - t0),
                       (unsigned long long) (atomic_load(&p->st.fetches) - fetches0),
                       p->mon != NULL ? p->subscribers : -1);
                break;
            }
            wait = (long) ((mark_ms < end_ms ? mark_ms : end_ms) - now);
        }
        zmq_pollitem_t it[5] = {
            {NULL, sb_actor_cmd_fd(self), ZMQ_POLLIN, 0},
            {p->query, 0, ZMQ_POLLIN, 0},
            {NULL, sb_link_recv_fd(p->args.in), (p->nout == 0 && !p->eof) ? ZMQ_POLLIN : 0, 0},
            {NULL, sb_link_send_fd(p->args.replies), p->nout ? ZMQ_POLLIN : 0, 0},
            {p->mon, 0, ZMQ_POLLIN, 0},
        };
        if (zmq_poll(it, p->mon != NULL ? 5 : 4, wait) < 0 && errno != EINTR)
            break;
        if (it[0].revents & ZMQ_POLLIN) {
            int cmd;
            if (sb_actor_cmd_recv(self, &cmd) == SB_OK && cmd == SB_CMD_STOP)
                break;
        }
        if (p->mon != NULL)
            s_watch(p);
        s_flush_outbox(p);
        s_read_batches(p);
        if (it[1].revents & ZMQ_POLLIN)
            s_query(p);
    }
    for (size_t i = 0; i < p->nout; i++)
        if (p->outbox[i].kind == SB_ITEM_REPLY)
            sb_reply_free(p->outbox[i].ptr);
    p->nout = 0;
    if (p->mon != NULL) {
        zmq_socket_monitor(p->pub, NULL, 0);
        zmq_close(p->mon);
    }
    zmq_close(p->pub);
    zmq_close(p->query);
}

sb_err
sb_fanout_new(sb_fanout **out, const sb_fanout_args *args)
{
    sb_fanout *p = calloc(1, sizeof *p);
    sb_err rc;

    if (p == NULL)
        return SB_ENOMEM;
    p->args = *args;
    if ((rc = sb_ring_new(&p->ring, args->retain_batches, args->retain_bytes)) != SB_OK)
        goto fail;
    sb_ring_set_start(p->ring, args->prior_last_seq + 1,
                      args->prior_last_batch_id + 1);
    atomic_store(&p->st.last_seq, args->prior_last_seq);
    atomic_store(&p->st.last_batch_id, args->prior_last_batch_id);
    if (args->log_dir != NULL &&
        (rc = sb_store_reader_open(&p->log, args->log_dir)) != SB_OK)
        goto fail;
    rc = SB_ENOMEM;
    if ((p->found = calloc(args->fetch_max_batches + 1, sizeof *p->found)) == NULL)
        goto fail;
    if ((rc = sb_actor_new(&p->actor, "fanout", s_run, p)) != SB_OK)
        goto fail;
    *out = p;
    return SB_OK;
fail:
    sb_fanout_destroy(&p);
    return rc;
}

const char *
sb_fanout_pub_endpoint(const sb_fanout *p)
{
    return p->pub_ep;
}

const char *
sb_fanout_query_endpoint(const sb_fanout *p)
{
    return p->query_ep;
}

sb_fanout_stats *
sb_fanout_stats_get(sb_fanout *p)
{
    return &p->st;
}

sb_err
sb_fanout_wait(sb_fanout *p, int timeout_ms)
{
    return sb_actor_wait(p->actor, timeout_ms);
}

void
sb_fanout_stop(sb_fanout *p)
{
    if (p == NULL)
        return;
    sb_actor_destroy(&p->actor);
    /* Batches still in the link belong to nobody else now; the link itself
     * may be gone by the time the fan-out is destroyed. */
    if (p->args.in != NULL) {
        sb_item it;
        while (sb_link_recv(p->args.in, &it) == SB_OK)
            if (it.kind == SB_ITEM_BATCH) {
                sb_batch *b = it.ptr;
                sb_batch_destroy(&b);
            }
        p->args.in = NULL;
    }
}

void
sb_fanout_destroy(sb_fanout **pp)
{
    sb_fanout *p = *pp;

    if (p == NULL)
        return;
    sb_fanout_stop(p);
    sb_ring_destroy(&p->ring);
    sb_store_reader_close(&p->log);
    free(p->outbox);
    free(p->found);
    free(p);
    *pp = NULL;
}
