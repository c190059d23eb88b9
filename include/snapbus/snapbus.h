/* libsnapbus: the C client of the snapbus event-bus broker.
 *
 * Objects are opaque, made with _new and freed with _destroy(&p). Every
 * function that can fail returns an sb_err. No function keeps a pointer
 * to caller memory after it returns. Objects are not thread-safe: use one
 * from one thread at a time.
 *
 * Publishing: events are gathered into requests (up to batch_events,
 * batch_bytes, or linger_ms old) and sent to the broker's ingest socket.
 * For acked levels at most `window` requests wait for their reply; when the
 * window is full, publish waits for a reply (or returns SB_EAGAIN with
 * SB_DONTWAIT). When the broker is busy, ZeroMQ's high-water mark fills and
 * publish waits likewise: that is the broker's backpressure reaching you.
 * Linger and replies are handled inside publish, flush and poll calls:
 * call sb_publisher_poll() when idle.
 *
 * Option structs (sb_publisher_opts, sb_subscriber_opts, sb_fetch_opts)
 * start with struct_size and must be filled by their _defaults function
 * first, then changed field by field. Later versions append fields: a
 * program built against this header keeps working with them (the fields
 * it does not know keep their defaults). A struct_size that is not set
 * (0) or larger than the library knows is SB_EINVAL. */
#ifndef SNAPBUS_H
#define SNAPBUS_H

#include <stddef.h>
#include <stdint.h>

#include "snapbus_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SB_PROTOCOL_VERSION 1
#define SB_DONTWAIT 1 /* flag: return SB_EAGAIN rather than wait */

/* ---- CURVE (docs/SECURITY.md) ---------------------------------------- */

/* Keys of an encrypted, authenticated connection: the broker's public key
 * and this client's key pair, each as 40 Z85 characters (what `snapbus
 * keygen` writes). All NULL: a plain connection, which a broker running
 * CURVE refuses. With server_key set, secret_key is required; public_key
 * may be NULL (it is derived from secret_key). The strings are copied. A
 * key that is not 40 Z85 characters makes _new (or sb_fetch) SB_EINVAL. */
typedef struct {
    const char *server_key;
    const char *public_key;
    const char *secret_key;
} sb_curve_opts;

/* A key given as itself (40 Z85 characters) or as the path of a key file
 * (`snapbus keygen` output: one key line, '#' comment lines) into
 * z85[41]. SB_EINVAL (bad key or file) or SB_ESYS (unreadable), with the
 * reason in why. */
SB_EXPORT sb_err sb_curve_key_load(const char *arg, char *z85, char *why,
                                   size_t n);

/* ---- Publisher ---------------------------------------------------- */

typedef struct sb_publisher sb_publisher;

typedef struct {
    size_t struct_size;    /* set by sb_publisher_opts_defaults */
    const char *endpoint;  /* broker ingest, e.g. "tcp://127.0.0.1:7701" */
    sb_ack ack;            /* for every event of this publisher */
    uint32_t window;       /* requests awaiting a reply, at most */
    uint32_t batch_events; /* events per request, at most */
    uint32_t batch_bytes;  /* encoded bytes per request, about */
    uint32_t linger_ms;    /* a partial request is sent after this long */
    int sndhwm;            /* ZeroMQ send high-water mark, in messages */
    /* Longest a blocking call waits (default 60000); -1: forever, which
     * hangs for good if the broker is gone: not recommended. */
    int timeout_ms;
    /* An acked request without a reply after this long has its events
     * reported SB_ETIMEDOUT (fate unknown: they may have been accepted)
     * and leaves the window; a late reply is then counted in bad_replies.
     * Needed because a reply can be lost (reconnect, or a request the
     * broker could not read answers request_id 0). -1: never. */
    int reply_timeout_ms;
    /* Largest request built, in encoded bytes: the broker's
     * max_message_bytes. A single event that cannot fit is SB_ETOOBIG at
     * publish. 0: no client-side limit. */
    uint32_t max_request_bytes;
    sb_curve_opts curve; /* on the ingest socket; default: none */
    /* Idempotent publishing (docs/PUBLISHING.md). A name for this
     * publisher that stays the same across its restarts (copied); NULL:
     * none. When set, every event that names no producer of its own is
     * sent with this producer id and the next producer seq, counting from
     * producer_seq_start (0 reads as 1): the event with token t gets
     * producer_seq_start + t - 1. A resend, or a replay after a restart
     * from the same start, is then answered SB_EDUP with the original seq
     * instead of becoming a second event. */
    const char *producer_id;
    uint64_t producer_seq_start;
    /* How often an acked request whose reply did not come is sent again
     * (after reply_timeout_ms, or at once when the connection to the
     * broker was lost and made again) before its events are reported
     * SB_ETIMEDOUT. A request the broker refused as shutting down is
     * kept and sent again too (after a backoff of 250 ms doubling to
     * 2 s, only while connected; at once on a reconnect), counted the
     * same way, before its events are reported SB_ECLOSED. Only safe
     * when the broker can recognise the events (producer or event ids).
     * -1: 3 with producer_id set, else 0. */
    int resend;
} sb_publisher_opts;

SB_EXPORT void sb_publisher_opts_defaults(sb_publisher_opts *o);
SB_EXPORT sb_err sb_publisher_new(sb_publisher **out,
                                  const sb_publisher_opts *o);
/* Sends what is gathered and waits up to timeout_ms for replies first. */
SB_EXPORT void sb_publisher_destroy(sb_publisher **pp);

typedef struct {
    const char *aggregate;   /* required */
    const char *type;        /* required */
    const void *payload;
    size_t payload_len;
    const char *event_id;    /* optional */
    uint64_t caused_by;      /* 0: none */
    uint64_t source_pos;
    int has_source_pos;
    uint64_t client_ts_ms;
    const char *producer_id; /* optional */
    uint64_t producer_seq;
} sb_pub_event;

/* Copies the event into the current request. *token (optional) receives
 * this publisher's number for the event (1, 2, ...), which its ack
 * carries.
 * SB_EAGAIN (only with SB_DONTWAIT) and SB_ETIMEDOUT (blocking, after
 * timeout_ms): the window or the socket is full; nothing was taken, so
 * retry the same event. A request the socket would not take stays inside,
 * sealed, and goes first on the next call. Once the event is taken,
 * publish returns SB_OK even if the request it completed could not be
 * sent yet; the next publish/flush/poll/wait_all sends it.
 * SB_EINVAL: aggregate or type missing or empty, or a name (aggregate,
 * type, event id, producer id) that is not UTF-8. SB_ETOOBIG: a name over
 * 255 bytes, or the event alone over max_request_bytes (an event larger
 * than batch_bytes is sent in a request of its own; the broker's
 * max_payload_bytes, 1 MiB by default, is its own check, refused per
 * event with a detail). sb_publisher_last_error says which. */
SB_EXPORT sb_err sb_publisher_publish(sb_publisher *p, const sb_pub_event *ev,
                                      int flags, uint64_t *token);
/* Why the last sb_publisher_publish on p was refused before sending
 * (SB_EINVAL, SB_ETOOBIG): the field, the value and the limit, e.g.
 * "aggregate 300 B > limit 255 (no broker takes longer names)" or
 * "aggregate is not valid UTF-8 at byte 3 (from 0)". "" after a publish
 * that took its event. The string belongs to p and changes at its next
 * publish. */
SB_EXPORT const char *sb_publisher_last_error(const sb_publisher *p);
/* Sends the current request now. */
SB_EXPORT sb_err sb_publisher_flush(sb_publisher *p, int flags);

typedef struct {
    uint64_t token;    /* from sb_publisher_publish */
    sb_err err;        /* SB_OK: accepted. SB_EDUP: accepted before, and
                        * seq/agg_seq are the original's (a success).
                        * SB_EHORIZON: older than the broker's
                        * de-duplication horizon, not taken */
    uint64_t seq;
    uint64_t agg_seq;
    uint64_t batch_id; /* with SB_ACK_PUBLISHED */
    /* The broker's reason for a refusal, naming the field, its value and
     * the limit ("payload 2000000 B > limit 1048576
     * (limits.max_payload_bytes)"); "" when there is none. Valid during
     * the callback only. Appended: read it only from a library that has
     * it. */
    const char *detail;
} sb_ack_info;

typedef void (*sb_ack_fn)(const sb_ack_info *a, void *ctx);
/* Called from publish/flush/poll/wait_all/destroy for every event's
 * outcome, once per token (for SB_ACK_NONE: only refusals, and only for
 * the last 4096 requests; an older refusal is counted in bad_replies).
 * At destroy, events that could not be sent in time and acked ones still
 * without a reply are reported SB_ETIMEDOUT: their fate is unknown (the
 * former were never handed to the broker). SB_ECLOSED means the broker
 * said it is shutting down, and took nothing. The callback must not call
 * this publisher's functions other than sb_publisher_stats_get. */
SB_EXPORT void sb_publisher_on_ack(sb_publisher *p, sb_ack_fn fn, void *ctx);
/* Handles replies, reply timeouts and linger for up to timeout_ms;
 * returns SB_OK early once it has read a reply. */
SB_EXPORT sb_err sb_publisher_poll(sb_publisher *p, int timeout_ms);
/* Flushes, then waits until every request has its reply. */
SB_EXPORT sb_err sb_publisher_wait_all(sb_publisher *p, int timeout_ms);

/* Sends what is gathered, then says hello on the ingest socket and waits
 * for the answer, handling replies meanwhile: SB_OK proves a broker is
 * there, and (ZeroMQ keeps one connection's messages in order) that it
 * has read every request sent before, unless the connection was lost in
 * between. For SB_ACK_NONE, the only way to know that. SB_ETIMEDOUT: no
 * answer within timeout_ms (-1: forever); another error: the broker's. */
SB_EXPORT sb_err sb_publisher_hello(sb_publisher *p, int timeout_ms);
/* Changes timeout_ms for the calls that follow, destroy included (its
 * wait for replies and for queued requests to leave). */
SB_EXPORT void sb_publisher_set_timeout(sb_publisher *p, int timeout_ms);

typedef struct {
    uint64_t events;    /* taken by publish */
    uint64_t requests;  /* sent */
    uint64_t acked;     /* events with SB_OK outcome */
    uint64_t refused;   /* events with an error outcome */
    uint64_t inflight;  /* requests awaiting a reply */
    uint64_t waits;     /* times publish had to wait (window or HWM) */
    uint64_t duplicates;  /* events answered SB_EDUP (original seq) */
    uint64_t resends;     /* requests sent again (see resend) */
    uint64_t bad_replies; /* replies that were malformed or matched no
                           * request: counted and dropped */
} sb_publisher_stats;

SB_EXPORT void sb_publisher_stats_get(const sb_publisher *p,
                                      sb_publisher_stats *st);

/* ---- Snapshot batches ---------------------------------------------- */

typedef struct sb_snapshot sb_snapshot;

typedef struct {
    uint64_t seq;
    uint64_t agg_seq;
    const char *aggregate; /* the event's own aggregate */
    const char *type;
    const void *payload;
    size_t payload_len;
    const char *event_id;
    uint64_t caused_by;
    uint64_t source_pos;
    int has_source_pos;
    const char *producer_id;
    uint64_t producer_seq;
    uint64_t client_ts_ms;
} sb_snapshot_event;

/* Accessors; the strings live as long as the snapshot and are "" (never
 * NULL) when absent. */
SB_EXPORT const char *sb_snapshot_aggregate(const sb_snapshot *b);
SB_EXPORT uint64_t sb_snapshot_batch_id(const sb_snapshot *b);
SB_EXPORT uint64_t sb_snapshot_first_seq(const sb_snapshot *b);
SB_EXPORT uint64_t sb_snapshot_last_seq(const sb_snapshot *b);
SB_EXPORT uint64_t sb_snapshot_agg_last_seq(const sb_snapshot *b);
SB_EXPORT uint64_t sb_snapshot_prev_last_seq(const sb_snapshot *b);
SB_EXPORT uint64_t sb_snapshot_timestamp_ms(const sb_snapshot *b);
SB_EXPORT int sb_snapshot_source_pos(const sb_snapshot *b, uint64_t *pos);
SB_EXPORT sb_close_reason sb_snapshot_close_reason(const sb_snapshot *b);
SB_EXPORT size_t sb_snapshot_count(const sb_snapshot *b);
SB_EXPORT sb_err sb_snapshot_event_get(const sb_snapshot *b, size_t i,
                                       sb_snapshot_event *out);
/* Decodes one encoded SnapshotBatch (e.g. a fetched one). */
SB_EXPORT sb_err sb_snapshot_decode(sb_snapshot **out, const void *data,
                                    size_t len);
SB_EXPORT void sb_snapshot_destroy(sb_snapshot **bp);

/* ---- Subscriber ---------------------------------------------------- */

/* Lossless delivery (docs/SUBSCRIBING.md): every batch of the subscribed
 * topics once, in order per aggregate, from the start point on. Batches
 * the PUB socket dropped, or that were published while the subscription
 * was travelling to the broker, are detected (per-aggregate seq chain,
 * plus a periodic header probe for the last batches of an aggregate) and
 * fetched from the broker's retention over query_endpoint, inside recv.
 * What the broker no longer retains is reported, never skipped silently:
 * recv returns SB_ENOENT and sb_subscriber_loss() says what was lost. */

typedef struct sb_subscriber sb_subscriber;

typedef enum {
    /* recv returns SB_ENOENT once per loss; the next recv carries on with
     * what is retained. */
    SB_LOSS_FAIL = 0,
    /* recv returns SB_ENOENT from the first loss on, for good: for
     * applications that must rebuild from elsewhere before going on. */
    SB_LOSS_STOP = 1
} sb_loss_policy;

typedef struct {
    size_t struct_size;         /* set by sb_subscriber_opts_defaults */
    const char *endpoint;       /* broker PUB, e.g. "tcp://127.0.0.1:7702" */
    /* Broker query socket (hello, fetch), e.g. "tcp://127.0.0.1:7703".
     * Default NULL: no gap fill; a gap seen in the seqs is then reported
     * as a loss, and a lost last batch of an aggregate goes unnoticed.
     * Set it to make the subscriber lossless. */
    const char *query_endpoint;
    int rcvhwm;                 /* ZeroMQ receive high-water mark */
    /* Start point. 0: live, from the broker's newest batch at the first
     * recv. N: every batch holding a seq >= N (fetched from retention,
     * then live): a value sb_subscriber_position() returned. */
    uint64_t resume_from_seq;
    /* Header probe period: when no batch came for this long, and at least
     * this often under load, the subscriber asks for the headers of what
     * was published since its last check, to find the lost last batch of
     * an aggregate. 0: no probe (tail losses then stay unnoticed). */
    int probe_ms;
    /* A fetch without an answer after this long is sent again. */
    int fetch_timeout_ms;
    sb_loss_policy on_loss;
    sb_curve_opts curve; /* on both sockets (PUB and query); default: none */
} sb_subscriber_opts;

SB_EXPORT void sb_subscriber_opts_defaults(sb_subscriber_opts *o);
SB_EXPORT sb_err sb_subscriber_new(sb_subscriber **out,
                                   const sb_subscriber_opts *o);
SB_EXPORT void sb_subscriber_destroy(sb_subscriber **sp);
/* Every aggregate whose name starts with prefix ("" for all). */
SB_EXPORT sb_err sb_subscriber_subscribe(sb_subscriber *s, const char *prefix);
/* Exactly one aggregate. */
SB_EXPORT sb_err sb_subscriber_subscribe_exact(sb_subscriber *s,
                                               const char *aggregate);
/* Says hello on the query socket and sets the start point now (live: the
 * broker's newest batch; resume: resume_from_seq), rather than at the
 * first recv. For applications that must know they are subscribed before
 * something is published. SB_OK: started (also when already started, or
 * without a query endpoint); SB_ETIMEDOUT: no answer within timeout_ms
 * (call again). Subscribe first. */
SB_EXPORT sb_err sb_subscriber_start(sb_subscriber *s, int timeout_ms);

/* Next batch, in order per aggregate; the caller owns it. Subscribe before
 * the first recv (or sb_subscriber_start): that says hello to the broker
 * and sets the start point.
 * SB_EAGAIN: none within timeout_ms (-1: forever), or a signal interrupted
 * the wait; a gap fill in progress is resumed by the next call.
 * SB_ENOENT: batches were lost (out of the broker's retention); see
 * sb_subscriber_loss and on_loss. SB_ERESTART: the broker restarted (its
 * epoch changed); the subscriber has started again from its position in
 * the new epoch (docs/SUBSCRIBING.md), and the next recv goes on.
 * Malformed messages are counted and skipped. */
SB_EXPORT sb_err sb_subscriber_recv(sb_subscriber *s, sb_snapshot **out,
                                    int timeout_ms);

/* What the last SB_ENOENT from recv reported. Several losses reported at
 * once are merged into one range. */
typedef struct {
    const char *aggregate;  /* the one aggregate, or "" (several/unknown);
                             * valid until the next recv */
    uint64_t from_seq;      /* seqs in [from_seq, to_seq] may be lost */
    uint64_t to_seq;
    uint64_t from_batch_id; /* batch ids in this range may be lost; */
    uint64_t to_batch_id;   /* 0, 0 when not known */
    uint64_t retained_first_seq; /* where the broker's retention starts */
} sb_loss;

/* SB_OK and *out filled after a recv returned SB_ENOENT; SB_ENOENT when
 * nothing was lost. */
SB_EXPORT sb_err sb_subscriber_loss(const sb_subscriber *s, sb_loss *out);

/* Batches a stopping broker said it published (its end-of-epoch marker:
 * docs/SUBSCRIBING.md, "When the broker stops") that this subscriber has
 * not checked yet: neither returned by recv nor reported lost. recv
 * fetches them while the broker keeps its query socket open, and reports
 * what it could not fetch in time as SB_ENOENT. An application that stops
 * before then would miss them: SB_OK and *out filled (batch ids
 * from_batch_id..to_batch_id, seqs up to to_seq, aggregate "") when there
 * are some, SB_ENOENT when none. */
SB_EXPORT sb_err sb_subscriber_unchecked(const sb_subscriber *s,
                                         sb_loss *out);

/* A seq to save and later pass as resume_from_seq: every batch that recv
 * has not returned yet (and that was not reported lost) holds only seqs
 * >= it, so resuming from it loses nothing. Batches around it may be
 * delivered again after a resume (at least once at the boundary). 0: no
 * position yet. Moves forward as the subscriber confirms, with its probe,
 * that it has seen everything up to a point (every probe_ms). */
SB_EXPORT uint64_t sb_subscriber_position(const sb_subscriber *s);

typedef struct {
    uint64_t batches;   /* returned by recv */
    uint64_t malformed; /* messages skipped: wrong frames or bad batch,
                         * or a batch that overlaps its predecessor */
    uint64_t gaps;       /* live batches whose predecessor was missing */
    uint64_t filled;     /* batches returned that came from a fetch */
    uint64_t duplicates; /* batches dropped: already returned */
    uint64_t before_start; /* batches dropped: before the start point */
    uint64_t probes;     /* header probes (and gap checks) run */
    uint64_t fetches;    /* fetch requests sent (also resends) */
    uint64_t fetch_timeouts; /* fetches sent again after no answer */
    uint64_t lost;       /* losses reported (SB_ENOENT) */
    uint64_t restarts;   /* broker restarts seen (SB_ERESTART) */
    uint64_t discarded;  /* live messages dropped at a restart, to be
                          * fetched again */
} sb_subscriber_stats;

SB_EXPORT void sb_subscriber_stats_get(const sb_subscriber *s,
                                       sb_subscriber_stats *st);

/* ---- Query (fetch from the broker's retained batches) --------------- */

typedef struct {
    size_t struct_size;      /* set by sb_fetch_opts_defaults */
    const char *prefix;      /* topic prefix; NULL or "" for all */
    uint64_t from_seq;
    uint64_t to_seq;         /* 0: no bound */
    uint64_t after_batch_id; /* paging cursor; 0: from the start */
    uint32_t max_batches;    /* 0: broker default */
    uint32_t max_bytes;      /* 0: broker default */
    sb_curve_opts curve;     /* default (zeroed): none */
    int exact;               /* only the aggregate named prefix */
    /* Each batch cut to its header (aggregate, ids, seq range, chain; no
     * events): a cheap look at what was published. */
    int headers_only;
} sb_fetch_opts;

/* Everything zero (all topics, from the start, broker limits, no CURVE)
 * and struct_size set. */
SB_EXPORT void sb_fetch_opts_defaults(sb_fetch_opts *o);

typedef struct {
    uint64_t last_batch_id;  /* cursor for the next page */
    int more;
    uint64_t retained_first_seq;
    uint64_t last_seq;
} sb_fetch_info;

typedef void (*sb_snapshot_fn)(sb_snapshot *b, void *ctx); /* takes b */

/* One request/reply on the query socket; fn gets each batch in publish
 * order and owns it. SB_ENOENT: from_seq is older than retention. */
SB_EXPORT sb_err sb_fetch(const char *query_endpoint, const sb_fetch_opts *o,
                          sb_snapshot_fn fn, void *ctx, sb_fetch_info *info,
                          int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
