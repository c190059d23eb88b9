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
 * call sb_publisher_poll() when idle. */
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

/* ---- Publisher ---------------------------------------------------- */

typedef struct sb_publisher sb_publisher;

typedef struct {
    const char *endpoint;  /* broker ingest, e.g. "tcp://127.0.0.1:7701" */
    sb_ack ack;            /* for every event of this publisher */
    uint32_t window;       /* requests awaiting a reply, at most */
    uint32_t batch_events; /* events per request, at most */
    uint32_t batch_bytes;  /* encoded bytes per request, about */
    uint32_t linger_ms;    /* a partial request is sent after this long */
    int sndhwm;            /* ZeroMQ send high-water mark, in messages */
    int timeout_ms;        /* longest a blocking call waits; -1: forever */
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
 * carries. SB_EAGAIN only with SB_DONTWAIT: nothing was taken. */
SB_EXPORT sb_err sb_publisher_publish(sb_publisher *p, const sb_pub_event *ev,
                                      int flags, uint64_t *token);
/* Sends the current request now. */
SB_EXPORT sb_err sb_publisher_flush(sb_publisher *p, int flags);

typedef struct {
    uint64_t token;    /* from sb_publisher_publish */
    sb_err err;        /* SB_OK: accepted */
    uint64_t seq;
    uint64_t agg_seq;
    uint64_t batch_id; /* with SB_ACK_PUBLISHED */
} sb_ack_info;

typedef void (*sb_ack_fn)(const sb_ack_info *a, void *ctx);
/* Called from publish/flush/poll/wait for every event's outcome (for
 * SB_ACK_NONE: only refusals). */
SB_EXPORT void sb_publisher_on_ack(sb_publisher *p, sb_ack_fn fn, void *ctx);
/* Handles replies and linger for up to timeout_ms. */
SB_EXPORT sb_err sb_publisher_poll(sb_publisher *p, int timeout_ms);
/* Flushes, then waits until every request has its reply. */
SB_EXPORT sb_err sb_publisher_wait_all(sb_publisher *p, int timeout_ms);

typedef struct {
    uint64_t events;    /* taken by publish */
    uint64_t requests;  /* sent */
    uint64_t acked;     /* events with SB_OK outcome */
    uint64_t refused;   /* events with an error outcome */
    uint64_t inflight;  /* requests awaiting a reply */
    uint64_t waits;     /* times publish had to wait (window or HWM) */
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
SB_EXPORT int sb_snapshot_close_reason(const sb_snapshot *b);
SB_EXPORT size_t sb_snapshot_count(const sb_snapshot *b);
SB_EXPORT sb_err sb_snapshot_event_get(const sb_snapshot *b, size_t i,
                                       sb_snapshot_event *out);
/* Decodes one encoded SnapshotBatch (e.g. a fetched one). */
SB_EXPORT sb_err sb_snapshot_decode(sb_snapshot **out, const void *data,
                                    size_t len);
SB_EXPORT void sb_snapshot_destroy(sb_snapshot **bp);

/* ---- Subscriber ---------------------------------------------------- */

typedef struct sb_subscriber sb_subscriber;

typedef struct {
    const char *endpoint;       /* broker PUB, e.g. "tcp://127.0.0.1:7702" */
    const char *query_endpoint; /* broker query (fetch), may be NULL */
    int rcvhwm;                 /* ZeroMQ receive high-water mark */
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
/* Next batch; SB_EAGAIN when none came within timeout_ms (-1: forever),
 * or early when a signal interrupted the wait. Malformed messages are
 * counted and skipped. */
SB_EXPORT sb_err sb_subscriber_recv(sb_subscriber *s, sb_snapshot **out,
                                    int timeout_ms);

typedef struct {
    uint64_t batches;   /* returned by recv */
    uint64_t malformed; /* messages skipped: wrong frames or bad batch */
} sb_subscriber_stats;

SB_EXPORT void sb_subscriber_stats_get(const sb_subscriber *s,
                                       sb_subscriber_stats *st);

/* ---- Query (fetch from the broker's retained batches) --------------- */

typedef struct {
    const char *prefix;      /* topic prefix; NULL or "" for all */
    uint64_t from_seq;
    uint64_t to_seq;         /* 0: no bound */
    uint64_t after_batch_id; /* paging cursor; 0: from the start */
    uint32_t max_batches;    /* 0: broker default */
    uint32_t max_bytes;      /* 0: broker default */
} sb_fetch_opts;

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
