/* Fan-out (the publisher actor): sends each flushed batch to subscribers and keeps recent
 * batches for gap fill.
 *
 * For every batch from the router it encodes one SnapshotBatch, sends it on
 * the PUB socket as [aggregate + NUL][batch], and keeps the encoded bytes in
 * a retention ring bounded by count and bytes (the same buffer is shared
 * with ZeroMQ, refcounted: no copy). Requests that asked for a `published`
 * ack get their reply, via the ingest, once their last event is sent.
 *
 * A PUB socket never waits: a subscriber that falls behind its high-water
 * mark loses live batches and fills the gap from the ring over the query
 * socket (ROUTER), so one slow subscriber never stalls the broker. Fetches
 * are answered in bounded pages so catching up cannot starve publishing. */
#ifndef SB_FANOUT_H
#define SB_FANOUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"
#include "sb_link.h"
#include "sb_wire.h"

#define SB_FANOUT_SIZE_BUCKETS 14
/* The shutdown linger can be drawn out this much by subscribers still
 * catching up (sb_fanout_wait must allow for it). */
#define SB_FANOUT_LINGER_CAP_MS 55000
extern const uint32_t sb_fanout_size_bounds[SB_FANOUT_SIZE_BUCKETS - 1];

typedef struct {
    atomic_uint_fast64_t batches;      /* sent on PUB */
    atomic_uint_fast64_t events;
    atomic_uint_fast64_t bytes;
    atomic_uint_fast64_t last_batch_id;
    atomic_uint_fast64_t last_seq;     /* highest seq published */
    atomic_uint_fast64_t fetches;
    atomic_uint_fast64_t fetch_batches;
    atomic_uint_fast64_t fetch_refused;
    atomic_uint_fast64_t fetch_lost;   /* query replies the peer did not take */
    atomic_uint_fast64_t retained_batches;
    atomic_uint_fast64_t retained_bytes;
    atomic_uint_fast64_t evicted;
    atomic_uint_fast64_t parked;       /* times the ack link was full */
    /* Encoded batches alive, bytes (sb_blob header and data), whoever
     * holds them: the ring, ZeroMQ's queues (PUB, fetch replies), a page
     * being built. Given back by the last unref, on any thread. */
    atomic_uint_fast64_t blob_bytes;
    atomic_uint_fast64_t pub_skipped;     /* batches not sent live: outgoing full */
    atomic_uint_fast64_t fetch_shortened; /* pages cut to one batch: outgoing full */
    sb_hist batch_hold; /* a batch's first event in the router -> sent on PUB */
    sb_hist fetch;      /* a fetch request read -> its reply sent */
    /* Published batches by event count, one bucket per batch (not
     * cumulative: one add per batch); bucket i holds sizes up to
     * sb_fanout_size_bounds[i], the last one everything larger. */
    atomic_uint_fast64_t size_buckets[SB_FANOUT_SIZE_BUCKETS];
} sb_fanout_stats;

typedef struct {
    void *zmq_ctx;
    const char *pub_endpoint;
    const char *query_endpoint;
    int hwm;
    uint64_t retain_batches;     /* ring bound by count */
    uint64_t retain_bytes;       /* and by bytes */
    uint32_t fetch_max_batches;  /* page bound */
    uint32_t fetch_max_bytes;
    uint32_t fetch_max_scan;     /* ring entries looked at per fetch */
    sb_limits limits;            /* for decoding query requests */
    const char *broker_name;     /* for hello replies */
    uint64_t epoch;
    sb_link *in;                 /* router →: SB_ITEM_BATCH, SB_ITEM_EOF */
    sb_link *replies;            /* → ingest: SB_ITEM_REPLY, SB_ITEM_EOF */
    /* The on-disk log (NULL: none): fetches that reach before the ring are
     * read from it, with a reader of our own. What earlier runs of the
     * broker published: the ring starts after it, the counters from it. */
    const char *log_dir;
    uint64_t prior_last_seq;
    uint64_t prior_last_batch_id;
    /* The broker's CURVE secret key (Z85) for both sockets; NULL: no
     * CURVE. Read only before sb_fanout_new returns. */
    const char *curve_secret;
    /* The memory budget's share for encoded batches held only by ZeroMQ
     * (evicted from the ring, or read from the log for a fetch); 0: no
     * bound. At it, a new batch is not sent live (subscribers see the gap
     * and fetch it from the ring) and fetch pages hold one batch. */
    uint64_t outgoing_max;
    /* After the last batch of a drain: how long the query socket is still
     * served (EpochEnd markers on PUB meanwhile), ms. */
    uint32_t shutdown_linger_ms;
} sb_fanout_args;

typedef struct sb_fanout sb_fanout;

sb_err sb_fanout_new(sb_fanout **out, const sb_fanout_args *args);
const char *sb_fanout_pub_endpoint(const sb_fanout *p);
const char *sb_fanout_query_endpoint(const sb_fanout *p);
sb_fanout_stats *sb_fanout_stats_get(sb_fanout *p);
/* Waits until the actor exited after EOF and its shutdown linger
 * (SB_ETIMEDOUT if not yet). */
sb_err sb_fanout_wait(sb_fanout *p, int timeout_ms);
/* Stops the actor and closes its sockets; the object stays. Encoded
 * batches still queued in ZeroMQ give their bytes back to the fan-out's
 * counters when libzmq frees them, which can be as late as zmq_ctx_term:
 * so the process stops the fan-out, terminates the context, and only then
 * destroys it. */
void sb_fanout_stop(sb_fanout *p);
/* Stops it (if not yet) and frees it. Call after zmq_ctx_term of its
 * context when encoded batches may still sit in ZeroMQ's queues. */
void sb_fanout_destroy(sb_fanout **pp);

/* ---- retention ring (core, used by the actor and by tests) ---------- */

typedef struct sb_ring sb_ring;

/* An encoded batch, shared by the ring and ZeroMQ messages. */
typedef struct sb_blob {
    atomic_uint refs;
    uint32_t len;        /* encoded SnapshotBatch length */
    uint64_t batch_id;
    uint64_t first_seq;
    uint64_t last_seq;
    uint32_t topic_len;  /* aggregate + NUL */
    /* Bytes before the first event: data[0..hdr_len) is the batch without
     * its events, sent as is for a headers_only fetch. 0: not computed
     * (sb_wire_batch_header_len then gives it). */
    uint32_t hdr_len;
    uint64_t low_seq;    /* sb_batch.low_seq; 0: unknown */
    /* Where its bytes are counted while it lives (sb_fanout_stats
     * blob_bytes); NULL: nowhere. */
    atomic_uint_fast64_t *acct;
    char topic[256];
    uint8_t data[];      /* encoded SnapshotBatch */
} sb_blob;

void sb_blob_unref(sb_blob *b);

typedef struct {
    const char *prefix;
    size_t prefix_len;
    uint64_t from_seq;
    uint64_t to_seq;         /* 0: none */
    uint64_t after_batch_id; /* 0: from the oldest */
    uint32_t max_batches;
    uint32_t max_bytes;
    uint32_t max_scan;
    int exact;               /* name == prefix, not just starts with it */
} sb_ring_query;

typedef struct {
    uint32_t count;
    uint64_t last_batch_id; /* cursor: last batch looked at */
    int more;
    uint64_t retained_first_seq; /* seqs below this may be gone */
    uint64_t retained_first_batch_id;
} sb_ring_result;

sb_err sb_ring_new(sb_ring **out, uint64_t max_batches, uint64_t max_bytes);
void sb_ring_destroy(sb_ring **rp);
/* Takes one reference on b. Evicts the oldest entries past the bounds. */
sb_err sb_ring_add(sb_ring *r, sb_blob *b);
/* Fills out[] (each with a reference taken) for the query. SB_ENOENT: the
 * query reaches before what is retained. */
sb_err sb_ring_find(sb_ring *r, const sb_ring_query *q, sb_blob **out,
                    sb_ring_result *res);
uint64_t sb_ring_count(const sb_ring *r);
/* For a restarted broker: seqs below next_seq and batch ids below
 * next_batch_id were published by an earlier run, so a query reaching
 * them is SB_ENOENT here (and the log answers it). */
void sb_ring_set_start(sb_ring *r, uint64_t next_seq, uint64_t next_batch_id);
uint64_t sb_ring_bytes(const sb_ring *r);
/* low_seq of the retained batch batch_id (every seq below it is in that
 * batch or an older one); 0 when that batch is not in the ring. */
uint64_t sb_ring_low_seq(const sb_ring *r, uint64_t batch_id);

#endif
