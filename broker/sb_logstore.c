/* Log store actor (see sb_logstore.h for its place in the pipeline) and
 * the log side of fetch.
 *
 * One thread. It owns the store writer and everything in its queues:
 *   held     requests (and the EOF) read from `in`: encoded into the store,
 *            not yet written;
 *   hbatches batches (and the EOF) read from `batch_in`, likewise;
 *   fwd      written requests, and re-batched ones, for the router;
 *   bsync    written batches waiting for the fdatasync (sync "always");
 *   bfwd     batches for the fan-out;
 *   acks     durable replies waiting for the fdatasync;
 *   ackout   replies for the ingest.
 * Each turn: commands; send what the outboxes hold; feed re-batched events;
 * read inputs (only where the outbox they fill is empty); write everything
 * pending with one call; sync per policy; move what the sync covers on.
 * It sleeps in poll(2) only when a turn moved nothing.
 *
 * Why nothing waits forever: the ingest always reads `replies`; the fan-out
 * reads `batch_out` whenever its own reply outbox is empty, which the
 * ingest drains; the router reads `out` whenever its batch outbox is
 * empty, which we drain whenever `bfwd` is empty. The store refusing only
 * delays: the write is retried on a timer. */
#include "sb_logstore.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "sb_actor.h"
#include "sb_log.h"
#include "sb_msg.h"
#include "sb_os.h"
#include "sb_wire.h"

#define S_GROUP 4096               /* items read from one input per turn */
#define S_RETRY_MS 200             /* while the store refuses */
#define S_RETAIN_MS 1000           /* retention check period */
#define S_REBATCH_EVENTS 256       /* events per re-batched request */
#define S_MAX_UNSYNCED (64u << 20) /* interval: sync early past this */
#define S_MAX_ACKS 65536           /* interval: sync early past this */

/* ---- a FIFO of items ---------------------------------------------------- */

typedef struct {
    sb_item *v;
    size_t cap, head, n;
} s_fifo;

static int
s_push(s_fifo *q, sb_item it)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        sb_item *v = malloc(cap * sizeof *v);
        if (v == NULL)
            return -1;
        for (size_t i = 0; i < q->n; i++)
            v[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = v;
        q->cap = cap;
        q->head = 0;
    }
    q->v[(q->head + q->n) % q->cap] = it;
    q->n++;
    return 0;
}

/* Never fails: bounded queues are grown before anything is taken. */
static void
s_push_wait(s_fifo *q, sb_item it)
{
    while (s_push(q, it) != 0) {
        SB_LOG(SB_LOG_ERR, "logstore.nomem", "queue=%zu", q->n);
        poll(NULL, 0, 10);
    }
}

static sb_item *
s_front(s_fifo *q)
{
    return q->n ? &q->v[q->head] : NULL;
}

static sb_item
s_pop(s_fifo *q)
{
    sb_item it = q->v[q->head];

    q->head = (q->head + 1) % q->cap;
    q->n--;
    return it;
}

static void
s_item_free(sb_item it)
{
    if (it.kind == SB_ITEM_REQ) {
        sb_req_unref(it.ptr);
    } else if (it.kind == SB_ITEM_BATCH) {
        sb_batch *b = it.ptr;
        sb_batch_destroy(&b);
    } else if (it.kind == SB_ITEM_REPLY) {
        sb_reply_free(it.ptr);
    }
}

static void
s_fifo_free(s_fifo *q)
{
    while (q->n > 0)
        s_item_free(s_pop(q));
    free(q->v);
    q->v = NULL;
    q->cap = 0;
}

/* ---- actor -------------------------------------------------------------- */

struct sb_logstore {
    sb_actor *actor;
    sb_logstore_args args;
    sb_store *store;
    uint64_t *rebatch;
    size_t nrebatch, rebatch_pos;
    sb_store_reader *reader; /* for re-batching, closed once done */
    sb_logstore_stats st;
    atomic_int full;
    s_fifo held, hbatches, fwd, bsync, bfwd, acks, ackout;
    int blocked[3]; /* outbox full: counted once per episode */
    uint64_t held_bytes; /* mem_bytes of the requests in `held` */
    uint64_t unsynced_events;
    int in_eof;    /* EOF read from `in` */
    int reply_eof; /* 1: written, waits for its acks; 2: queued */
    int batch_eof; /* EOF read from `batch_in` */
    int refusing;  /* a write or sync failed: what is read is held */
    int low_space; /* no room reserved for the next segment */
    uint64_t retry_at;
    uint64_t reserve_at;
    uint64_t last_sync_ms;
    uint64_t next_retain_ms;
    int finished;
};

/* Sends the front of q on l until it refuses. Returns 1 if anything went. */
static int
s_flush(sb_logstore *a, s_fifo *q, sb_link *l, int which)
{
    int moved = 0;

    while (q->n > 0) {
        if (sb_link_send(l, s_front(q)) != SB_OK) {
            if (!a->blocked[which]) {
                a->blocked[which] = 1;
                atomic_fetch_add(&a->st.parked, 1);
            }
            return moved;
        }
        sb_item it = s_pop(q);
        if (it.kind == SB_ITEM_REPLY)
            atomic_fetch_add(&a->st.acks, 1);
        moved = 1;
    }
    a->blocked[which] = 0;
    return moved;
}

/* The ingest refuses publishes while either holds. */
static void
s_update_full(sb_logstore *a)
{
    int full = a->refusing || a->low_space;

    if (full != atomic_load(&a->full)) {
        atomic_store(&a->full, full);
        atomic_store(&a->st.storage_full, (uint64_t)full);
        if (full)
            atomic_fetch_add(&a->st.storage_episodes, 1);
    }
}

static void
s_refuse(sb_logstore *a, sb_err rc, const char *what, uint64_t now)
{
    atomic_fetch_add(&a->st.storage_refusals, 1);
    a->retry_at = now + S_RETRY_MS;
    if (a->refusing)
        return;
    a->refusing = 1;
    s_update_full(a);
    SB_LOG(SB_LOG_WARN, "logstore.storage_refused",
           "op=%s err=%s errno=%d held=%zu retry_ms=%d", what, sb_strerror(rc),
           sb_os_errno(), a->held.n, S_RETRY_MS);
}

static void
s_accepted(sb_logstore *a)
{
    if (!a->refusing)
        return;
    a->refusing = 0;
    s_update_full(a);
    SB_LOG(SB_LOG_NOTICE, "logstore.storage_ok", "refusals=%llu",
           (unsigned long long)atomic_load(&a->st.storage_refusals));
}

/* The spare segment: without one the disk has less than a segment free,
 * so new publishes are refused while what is already in flight still
 * fits in the active segment (its space is reserved too). Retried until
 * there is room again. */
static void
s_check_reserve(sb_logstore *a, uint64_t now)
{
    int low;

    if (!sb_store_reserved(a->store) && now >= a->reserve_at) {
        sb_err rc = sb_store_reserve(a->store);
        a->reserve_at = now + S_RETRY_MS;
        if (rc != SB_OK && !a->low_space)
            SB_LOG(SB_LOG_WARN, "logstore.low_space",
                   "err=%s errno=%d why=\"no room for the next segment: "
                   "publishes are refused until there is; free space, or lower "
                   "storage.segment_bytes (the log needs 2 segments free)\"",
                   sb_strerror(rc), sb_os_errno());
    }
    low = !sb_store_reserved(a->store);
    if (low != a->low_space) {
        if (!low)
            SB_LOG(SB_LOG_NOTICE, "logstore.space_ok", "reserved=1");
        else
            atomic_fetch_add(&a->st.storage_refusals, 1);
        a->low_space = low;
        s_update_full(a);
    }
}

/* Encodes a request's accepted events into the store. */
static void
s_add_req(sb_logstore *a, sb_req *req)
{
    for (uint32_t i = 0; i < req->nevents; i++) {
        sb_event *ev = &req->ev[i];
        sb_err rc;
        if (ev->status != SB_OK)
            continue;
        while ((rc = sb_store_add_event(a->store, ev)) == SB_ENOMEM)
            poll(NULL, 0, 10); /* wait for memory rather than lose it */
        if (rc != SB_OK)
            /* Our own numbering broke (a bug upstream): say so loudly; the
             * event still goes on, but is not in the log. */
            SB_LOG(SB_LOG_ERR, "logstore.add_event", "seq=%" PRIu64 " err=%s",
                   ev->seq, sb_strerror(rc));
    }
}

static void
s_add_batch(sb_logstore *a, sb_batch *b)
{
    sb_err rc;

    while ((rc = sb_store_add_batch(a->store, b)) == SB_ENOMEM)
        poll(NULL, 0, 10);
    if (rc != SB_OK)
        SB_LOG(SB_LOG_ERR, "logstore.add_batch", "id=%" PRIu64 " err=%s", b->id,
               sb_strerror(rc));
}

/* May `in` be read? Not while an outbox it fills is full, nor past the
 * held bounds. The byte bound holds only while the store takes writes:
 * while it refuses, everything in flight is held (by count), so that the
 * pipeline never parks and the ingest goes on answering ERR_STORAGE_FULL. */
static int
s_may_read_in(const sb_logstore *a)
{
    return !a->in_eof && a->fwd.n == 0 && a->ackout.n == 0 &&
           a->held.n < a->args.max_held && a->rebatch_pos == a->nrebatch &&
           (a->args.max_held_bytes == 0 || a->refusing ||
            a->held_bytes < a->args.max_held_bytes);
}

/* Reads up to S_GROUP items from each input whose outbox is free. */
static int
s_read_inputs(sb_logstore *a)
{
    sb_item it;
    int moved = 0;

    for (int i = 0;
         i < S_GROUP && s_may_read_in(a) && sb_link_recv(a->args.in, &it) == SB_OK;
         i++) {
        moved = 1;
        if (it.kind == SB_ITEM_EOF) {
            a->in_eof = 1;
        } else if (it.kind == SB_ITEM_REQ) {
            s_add_req(a, it.ptr);
            a->held_bytes += ((sb_req *) it.ptr)->mem_bytes;
        } else {
            SB_LOG(SB_LOG_ERR, "logstore.bad_item", "kind=%u", it.kind);
            continue;
        }
        s_push_wait(&a->held, it);
    }
    for (int i = 0; i < S_GROUP && !a->batch_eof && a->bfwd.n == 0 &&
                    a->hbatches.n < a->args.max_held &&
                    sb_link_recv(a->args.batch_in, &it) == SB_OK;
         i++) {
        moved = 1;
        if (it.kind == SB_ITEM_EOF) {
            a->batch_eof = 1;
        } else if (it.kind == SB_ITEM_BATCH) {
            s_add_batch(a, it.ptr);
        } else {
            SB_LOG(SB_LOG_ERR, "logstore.bad_item", "kind=%u", it.kind);
            continue;
        }
        s_push_wait(&a->hbatches, it);
    }
    return moved;
}

/* Everything held is written: move it on. */
static void
s_written(sb_logstore *a)
{
    int always = a->args.sync == SB_SYNC_ALWAYS;

    while (a->held.n > 0) {
        sb_item it = s_pop(&a->held);
        if (it.kind == SB_ITEM_EOF) {
            a->reply_eof = 1;
            s_push_wait(&a->fwd, it);
            continue;
        }
        sb_req *req = it.ptr;
        a->held_bytes -= req->mem_bytes;
        atomic_fetch_add(&a->st.events, req->naccepted);
        a->unsynced_events += req->naccepted;
        if (req->ack == SB_ACK_DURABLE) {
            sb_reply *rp;
            while (sb_reply_from_req(&rp, req) != SB_OK)
                poll(NULL, 0, 10);
            s_push_wait(a->args.sync == SB_SYNC_NONE ? &a->ackout : &a->acks,
                        (sb_item){SB_ITEM_REPLY, rp});
        }
        /* On to the router now: it batches while we sync. A batch cannot
         * be published before its own record is synced (below). */
        s_push_wait(&a->fwd, it);
    }
    while (a->hbatches.n > 0) {
        sb_item it = s_pop(&a->hbatches);
        if (it.kind == SB_ITEM_BATCH)
            atomic_fetch_add(&a->st.batches, 1);
        s_push_wait(always ? &a->bsync : &a->bfwd, it);
    }
}

/* The sync covered everything written: release acks and batches. */
static void
s_synced(sb_logstore *a)
{
    atomic_fetch_add(&a->st.events_synced, a->unsynced_events);
    a->unsynced_events = 0;
    while (a->acks.n > 0)
        s_push_wait(&a->ackout, s_pop(&a->acks));
    while (a->bsync.n > 0)
        s_push_wait(&a->bfwd, s_pop(&a->bsync));
}

static void
s_publish_store_stats(sb_logstore *a)
{
    sb_store_stats ss;

    sb_store_stats_get(a->store, &ss);
    atomic_store(&a->st.segments, ss.segments);
    atomic_store(&a->st.log_bytes, ss.bytes);
    atomic_store(&a->st.writes, ss.writes);
    atomic_store(&a->st.bytes, ss.bytes_written);
    atomic_store(&a->st.segments_deleted, ss.segments_deleted);
}

/* Feeds the next run of re-batched events to the router. */
static int
s_rebatch(sb_logstore *a)
{
    size_t k = a->nrebatch - a->rebatch_pos;
    sb_req *req;
    sb_err rc;

    if (k == 0 || a->fwd.n > 0)
        return 0;
    if (k > S_REBATCH_EVENTS)
        k = S_REBATCH_EVENTS;
    rc = sb_store_reader_load(a->reader, a->rebatch + a->rebatch_pos,
                              (uint32_t)k, &req);
    if (rc == SB_ENOMEM) {
        poll(NULL, 0, 10);
        return 0;
    }
    if (rc != SB_OK) {
        /* Recovery just read these events: only damage since then could
         * hide them. They cannot be published; say which. */
        SB_LOG(SB_LOG_ERR, "logstore.rebatch_failed",
               "first_seq=%" PRIu64 " count=%zu err=%s",
               a->rebatch[a->rebatch_pos], k, sb_strerror(rc));
        a->rebatch_pos += k;
    } else {
        a->rebatch_pos += k;
        atomic_fetch_add(&a->st.rebatched, k);
        s_push_wait(&a->fwd, (sb_item){SB_ITEM_REQ, req});
    }
    if (a->rebatch_pos == a->nrebatch) {
        sb_store_reader_close(&a->reader);
        SB_LOG(SB_LOG_INFO, "logstore.rebatched", "events=%zu", a->nrebatch);
    }
    return 1;
}

static int
s_want_sync(sb_logstore *a, uint64_t now)
{
    if (sb_store_unsynced(a->store) == 0)
        return 0;
    switch (a->args.sync) {
    case SB_SYNC_ALWAYS:
        return 1;
    case SB_SYNC_INTERVAL:
        return now - a->last_sync_ms >= a->args.sync_interval_ms ||
               a->acks.n >= S_MAX_ACKS ||
               sb_store_unsynced(a->store) >= S_MAX_UNSYNCED ||
               a->reply_eof == 1 || a->batch_eof;
    default:
        return a->reply_eof == 1 && a->batch_eof; /* the final one */
    }
}

/* One turn's storage work: write, then sync. Returns 1 if anything moved. */
static int
s_storage(sb_logstore *a, uint64_t now)
{
    int moved = 0;
    sb_err rc;

    if ((sb_store_pending(a->store) > 0 || a->held.n > 0 ||
         a->hbatches.n > 0) &&
        (!a->refusing || now >= a->retry_at)) {
        if ((rc = sb_store_write(a->store)) == SB_OK) {
            s_accepted(a);
            s_written(a);
            s_publish_store_stats(a);
            /* The router batches while we sync: hand the requests over
             * before the fdatasync blocks this thread. */
            (void) s_flush(a, &a->fwd, a->args.out, 2);
            moved = 1;
        } else {
            s_refuse(a, rc, "write", now);
        }
    }
    if (!a->refusing && s_want_sync(a, now)) {
        uint64_t t0 = sb_clock_mono_ns();
        if ((rc = sb_store_sync(a->store)) == SB_OK) {
            atomic_fetch_add(&a->st.fsyncs, 1);
            uint64_t took = sb_clock_mono_ns() - t0;
            atomic_fetch_add(&a->st.fsync_ns, took);
            sb_hist_observe_ns(&a->st.fsync, took);
            a->last_sync_ms = now;
            s_synced(a);
            moved = 1;
        } else {
            /* The store truncated the unsynced tail: it is pending again
             * and the next write puts it back. */
            s_refuse(a, rc, "sync", now);
        }
    } else if (!a->refusing && sb_store_unsynced(a->store) == 0 &&
               (a->acks.n > 0 || a->bsync.n > 0)) {
        s_synced(a); /* already covered (sync none, or nothing new) */
        moved = 1;
    }
    if (a->reply_eof == 1 && a->acks.n == 0 && a->held.n == 0) {
        s_push_wait(&a->ackout, (sb_item){SB_ITEM_EOF, NULL});
        a->reply_eof = 2;
        moved = 1;
    }
    return moved;
}

/* Both EOFs through and every queue empty: the log is synced and a
 * checkpoint written, so the next start scans nothing. */
static int
s_done(sb_logstore *a)
{
    if (!(a->reply_eof == 2 && a->batch_eof && a->held.n == 0 &&
          a->hbatches.n == 0 && a->fwd.n == 0 && a->bsync.n == 0 &&
          a->bfwd.n == 0 && a->acks.n == 0 && a->ackout.n == 0 &&
          sb_store_pending(a->store) == 0))
        return 0;
    if (sb_store_sync(a->store) != SB_OK ||
        sb_store_checkpoint(a->store) != SB_OK)
        SB_LOG(SB_LOG_WARN, "logstore.final_sync", "errno=%d", sb_os_errno());
    s_publish_store_stats(a);
    uint64_t fs = atomic_load(&a->st.fsyncs);
    SB_LOG(SB_LOG_INFO, "logstore.stopped",
           "events=%llu batches=%llu bytes=%llu fsyncs=%llu "
           "events_per_fsync=%.1f fsync_ms_avg=%.3f",
           (unsigned long long)atomic_load(&a->st.events),
           (unsigned long long)atomic_load(&a->st.batches),
           (unsigned long long)atomic_load(&a->st.bytes),
           (unsigned long long)fs,
           fs ? (double)atomic_load(&a->st.events_synced) / (double)fs : 0.0,
           fs ? (double)atomic_load(&a->st.fsync_ns) / (double)fs / 1e6 : 0.0);
    return 1;
}

static void
s_run(sb_actor *self, void *arg)
{
    sb_logstore *a = arg;

    if (a->nrebatch > 0 &&
        sb_store_reader_open(&a->reader, sb_store_dir(a->store)) != SB_OK) {
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    a->last_sync_ms = sb_clock_now(&a->args.clock);
    sb_actor_ready(self, SB_OK);
    for (;;) {
        uint64_t now = sb_clock_now(&a->args.clock);
        int cmd, moved = 0;

        while (sb_actor_cmd_recv(self, &cmd) == SB_OK)
            if (cmd == SB_CMD_STOP)
                goto out;
        moved |= s_flush(a, &a->ackout, a->args.replies, 0);
        moved |= s_flush(a, &a->bfwd, a->args.batch_out, 1);
        moved |= s_flush(a, &a->fwd, a->args.out, 2);
        if (a->rebatch_pos < a->nrebatch)
            moved |= s_rebatch(a);
        moved |= s_read_inputs(a);
        moved |= s_storage(a, now);
        s_check_reserve(a, now);
        if (now >= a->next_retain_ms) {
            uint32_t deleted = 0;
            (void)sb_store_retain(a->store, sb_clock_wall_ms(), &deleted);
            s_publish_store_stats(a);
            a->next_retain_ms = now + S_RETAIN_MS;
        }
        if (s_done(a)) {
            a->finished = 1;
            goto out;
        }
        if (moved)
            continue;

        int read_in = s_may_read_in(a);
        int read_b =
            !a->batch_eof && a->bfwd.n == 0 && a->hbatches.n < a->args.max_held;
        struct pollfd p[6] = {
            {sb_actor_cmd_fd(self), POLLIN, 0},
            {sb_link_recv_fd(a->args.in), read_in ? POLLIN : 0, 0},
            {sb_link_recv_fd(a->args.batch_in), read_b ? POLLIN : 0, 0},
            {sb_link_send_fd(a->args.replies), a->ackout.n ? POLLIN : 0, 0},
            {sb_link_send_fd(a->args.batch_out), a->bfwd.n ? POLLIN : 0, 0},
            {sb_link_send_fd(a->args.out), a->fwd.n ? POLLIN : 0, 0},
        };
        /* Sleep until an fd, the retry, the interval sync or retention. */
        uint64_t wake = a->next_retain_ms;
        if (a->refusing && a->retry_at < wake)
            wake = a->retry_at;
        if (a->low_space && a->reserve_at < wake)
            wake = a->reserve_at;
        if (a->args.sync == SB_SYNC_INTERVAL &&
            sb_store_unsynced(a->store) > 0 &&
            a->last_sync_ms + a->args.sync_interval_ms < wake)
            wake = a->last_sync_ms + a->args.sync_interval_ms;
        int timeout = wake > now ? (int)(wake - now) : 0;
        if (poll(p, 6, timeout) < 0 && errno != EINTR) {
            SB_LOG(SB_LOG_ERR, "logstore.poll", "errno=%d", errno);
            goto out;
        }
    }
out:
    s_publish_store_stats(a);
}

sb_err
sb_logstore_new(sb_logstore **out, const sb_logstore_args *args)
{
    sb_logstore *a;
    sb_store *store = args->store;
    sb_err rc = SB_ENOMEM;

    if (args->in == NULL || args->out == NULL || args->batch_in == NULL ||
        args->batch_out == NULL || args->replies == NULL ||
        args->clock.now_ms == NULL || store == NULL) {
        sb_store_close(&store);
        return SB_EINVAL;
    }
    if ((a = calloc(1, sizeof *a)) == NULL) {
        sb_store_close(&store);
        return SB_ENOMEM;
    }
    a->args = *args;
    a->store = store;
    if (a->args.max_held == 0)
        a->args.max_held = 4096;
    if (args->nrebatch > 0) {
        if ((a->rebatch = malloc(args->nrebatch * sizeof *a->rebatch)) == NULL)
            goto fail;
        memcpy(a->rebatch, args->rebatch, args->nrebatch * sizeof *a->rebatch);
        a->nrebatch = args->nrebatch;
    }
    atomic_init(&a->full, 0);
    sb_store_set_keep_unsynced(store, args->sync != SB_SYNC_NONE);
    s_publish_store_stats(a);
    if ((rc = sb_actor_new(&a->actor, "logstore", s_run, a)) != SB_OK)
        goto fail;
    *out = a;
    return SB_OK;
fail:
    sb_logstore_destroy(&a);
    return rc;
}

void
sb_logstore_destroy(sb_logstore **lp)
{
    sb_logstore *a = *lp;
    sb_item it;

    if (a == NULL)
        return;
    sb_actor_destroy(&a->actor);
    s_fifo_free(&a->held);
    s_fifo_free(&a->hbatches);
    s_fifo_free(&a->fwd);
    s_fifo_free(&a->bsync);
    s_fifo_free(&a->bfwd);
    s_fifo_free(&a->acks);
    s_fifo_free(&a->ackout);
    /* What is still in our inputs belongs to nobody else now. */
    while (sb_link_recv(a->args.in, &it) == SB_OK)
        s_item_free(it);
    while (sb_link_recv(a->args.batch_in, &it) == SB_OK)
        s_item_free(it);
    sb_store_reader_close(&a->reader);
    sb_store_close(&a->store);
    free(a->rebatch);
    free(a);
    *lp = NULL;
}

sb_err
sb_logstore_wait(sb_logstore *a, int timeout_ms)
{
    return sb_actor_wait(a->actor, timeout_ms);
}

sb_logstore_stats *
sb_logstore_stats_get(sb_logstore *a)
{
    return &a->st;
}

atomic_int *
sb_logstore_full_flag(sb_logstore *a)
{
    return &a->full;
}

/* ---- fetch from the log ------------------------------------------------- */

typedef struct {
    uint64_t id;
    sb_store_batch_rec rec; /* seqs point into cand_seqs at build time */
    size_t seq_at;
    uint64_t bytes;
} s_cand;

static int
s_prefix_ok(const sb_ring_query *q, const char *agg, uint32_t len)
{
    return len >= q->prefix_len && (!q->exact || len == q->prefix_len) &&
           memcmp(agg, q->prefix, q->prefix_len) == 0;
}

static sb_event *
s_find_event(sb_req *req, uint64_t seq)
{
    uint32_t lo = 0, hi = req->nevents;

    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (req->ev[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < req->nevents && req->ev[lo].seq == seq ? &req->ev[lo] : NULL;
}

static int
s_u64cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;

    return a < b ? -1 : a > b;
}

/* Encodes a batch into a blob as the fan-out does when it publishes. */
static sb_err
s_blob(const sb_batch *b, sb_blob **out)
{
    uint8_t *buf;
    size_t len;
    sb_blob *blob;
    sb_err rc;

    if ((rc = sb_wire_encode_batch(b, offsetof(sb_blob, data), &buf, &len)) !=
        SB_OK)
        return rc;
    blob = (sb_blob *)buf;
    /* Fields the fan-out adds to its blobs default to "unknown" (0). */
    memset(blob, 0, offsetof(sb_blob, data));
    atomic_init(&blob->refs, 1);
    blob->len = (uint32_t)len;
    blob->batch_id = b->id;
    blob->first_seq = b->ev[0]->seq;
    blob->last_seq = b->ev[b->n - 1]->seq;
    blob->topic_len = b->agg_len + 1;
    memcpy(blob->topic, b->agg, b->agg_len);
    blob->topic[b->agg_len] = 0;
    *out = blob;
    return SB_OK;
}

/* Two passes, so one page costs one scan of the log it covers: first the
 * batch records (which bound the page by count, scan and estimated bytes),
 * then every event those batches name, loaded in one ordered sweep. A
 * batch's events are spread over the time it was open, interleaved with
 * other aggregates', so loading batch by batch would scan the same stretch
 * of the log once per batch. */
sb_err
sb_logstore_find(sb_store_reader *r, const sb_ring_query *q, uint64_t published,
                 sb_blob **out, sb_ring_result *res)
{
    s_cand *cand = NULL;
    uint64_t *seqs = NULL, *all = NULL, first_seq, est = 0;
    size_t ncand = 0, nseqs = 0, capseqs = 0;
    uint32_t scanned = 0;
    sb_store_rec rec;
    sb_req *req = NULL;
    sb_err rc;

    memset(res, 0, sizeof *res);
    if ((rc = sb_store_reader_refresh(r)) != SB_OK)
        return rc;
    first_seq = sb_store_reader_first_seq(r);
    res->retained_first_seq = first_seq;
    res->retained_first_batch_id = sb_store_reader_first_batch(r);
    res->last_batch_id = q->after_batch_id;
    if (q->after_batch_id != 0) {
        uint64_t first = sb_store_reader_first_batch(r);
        /* after + 1 < first, without wrapping at UINT64_MAX. */
        if (first > 0 && q->after_batch_id < first - 1)
            return SB_ENOENT;
        if (q->after_batch_id == UINT64_MAX)
            return SB_OK; /* past every batch: an empty page */
        rc = sb_store_reader_seek_batch(r, q->after_batch_id + 1);
    } else if (q->from_seq != 0) {
        if (q->from_seq < first_seq)
            return SB_ENOENT;
        rc = sb_store_reader_seek_seq(r, q->from_seq);
    } else {
        rc = sb_store_reader_seek_start(r);
    }
    if (rc != SB_OK)
        return rc;
    if ((cand = calloc(q->max_batches ? q->max_batches : 1, sizeof *cand)) ==
        NULL)
        return SB_ENOMEM;

    /* Pass 1: which batches. */
    for (;;) {
        rc = sb_store_reader_next(r, &rec);
        if (rc == SB_ENOENT) {
            rc = SB_OK;
            break;
        }
        if (rc != SB_OK) {
            SB_LOG(SB_LOG_ERR, "logstore.fetch_damaged",
                   "seg=%" PRIu64 " offset=%" PRIu64 " err=%s", rec.seg_no,
                   rec.offset, sb_strerror(rc));
            if (ncand == 0)
                goto out;
            rc = SB_OK;
            break;
        }
        if (rec.type != SB_REC_BATCH || rec.key <= q->after_batch_id)
            continue;
        if (rec.key > published)
            break; /* not published yet: the ring has the rest */
        if (ncand == q->max_batches || scanned == q->max_scan) {
            res->more = 1;
            break;
        }
        scanned++;
        const sb_store_batch_rec *br = &rec.batch;
        if (br->seqs[br->n - 1] < q->from_seq ||
            (q->to_seq != 0 && br->seqs[0] > q->to_seq) ||
            !s_prefix_ok(q, br->agg, br->agg_len)) {
            res->last_batch_id = rec.key;
            continue;
        }
        if (br->seqs[0] < first_seq) {
            /* Its first events went with an older segment. */
            if (ncand == 0) {
                /* Then it is evicted: say where retention starts after
                 * it, as the ring's horizon does, so that the client's
                 * next cursor (or from_seq) steps past it. Reporting the
                 * log's first batch instead would refuse that same cursor
                 * again, for ever. */
                res->retained_first_batch_id = rec.key + 1;
                if (br->seqs[br->n - 1] + 1 > res->retained_first_seq)
                    res->retained_first_seq = br->seqs[br->n - 1] + 1;
                rc = SB_ENOENT;
                goto out;
            }
            res->more = 1;
            break;
        }
        if (ncand > 0 && est + br->bytes > q->max_bytes) {
            res->more = 1;
            break;
        }
        if (nseqs + br->n > capseqs) {
            size_t c = capseqs ? capseqs * 2 : 1024;
            while (c < nseqs + br->n)
                c *= 2;
            uint64_t *s2 = realloc(seqs, c * sizeof *s2);
            if (s2 == NULL) {
                rc = SB_ENOMEM;
                goto out;
            }
            seqs = s2;
            capseqs = c;
        }
        memcpy(seqs + nseqs, br->seqs, (size_t)br->n * sizeof *seqs);
        cand[ncand] = (s_cand){rec.key, *br, nseqs, br->bytes};
        /* The record's strings live in the reader: keep the aggregate. */
        char *agg = malloc(br->agg_len);
        if (agg == NULL) {
            rc = SB_ENOMEM;
            goto out;
        }
        memcpy(agg, br->agg, br->agg_len);
        cand[ncand].rec.agg = agg;
        nseqs += br->n;
        est += br->bytes;
        ncand++;
        res->last_batch_id = rec.key;
    }
    if (ncand == 0)
        goto out;

    /* Pass 2: the events, in seq order, in one request. */
    rc = SB_ENOMEM;
    if ((all = malloc(nseqs * sizeof *all)) == NULL)
        goto out;
    memcpy(all, seqs, nseqs * sizeof *all);
    qsort(all, nseqs, sizeof *all, s_u64cmp);
    if ((rc = sb_store_reader_load(r, all, (uint32_t)nseqs, &req)) != SB_OK)
        goto out;
    uint64_t bytes = 0;
    for (size_t i = 0; i < ncand; i++) {
        const s_cand *c = &cand[i];
        sb_batch *b;
        sb_blob *blob;
        if ((rc = sb_batch_new(&b, c->rec.agg, c->rec.agg_len)) != SB_OK)
            goto out;
        for (uint32_t k = 0; k < c->rec.n && rc == SB_OK; k++) {
            sb_event *ev = s_find_event(req, seqs[c->seq_at + k]);
            /* Not in the log: an event of another aggregate joined this
             * batch (caused_by); the encoder writes its aggregate only
             * when marked. */
            if (ev != NULL)
                ev->joined = ev->agg_len != b->agg_len ||
                             memcmp(ev->agg, b->agg, b->agg_len) != 0;
            rc = ev != NULL ? sb_batch_push(b, ev) : SB_ENOENT;
        }
        if (rc == SB_OK) {
            b->id = c->id;
            b->timestamp_ms = c->rec.timestamp_ms;
            b->prev_last_seq = c->rec.prev_last_seq;
            b->agg_last_seq = c->rec.agg_last_seq;
            b->source_pos = c->rec.source_pos;
            b->has_source_pos = c->rec.has_source_pos;
            b->close_reason = c->rec.close_reason;
            rc = s_blob(b, &blob);
        }
        sb_batch_destroy(&b);
        if (rc != SB_OK)
            goto out;
        if (res->count > 0 && bytes + blob->len > q->max_bytes) {
            /* The estimate let one too many in: it starts the next page. */
            sb_blob_unref(blob);
            res->more = 1;
            res->last_batch_id = c->id - 1;
            break;
        }
        out[res->count++] = blob;
        bytes += blob->len;
    }
    rc = SB_OK;
out:
    if (rc != SB_OK) {
        for (uint32_t i = 0; i < res->count; i++)
            sb_blob_unref(out[i]);
        res->count = 0;
    }
    if (req != NULL)
        sb_req_unref(req);
    for (size_t i = 0; i < ncand; i++)
        free((void *)cand[i].rec.agg);
    free(cand);
    free(seqs);
    free(all);
    return rc;
}
