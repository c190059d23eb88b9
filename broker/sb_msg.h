/* The objects that move between the broker's actors. Only pointers move
 * between threads; an object belongs to one actor at a time, except a
 * request, whose events may sit in several batches (it is refcounted). */
#ifndef SB_MSG_H
#define SB_MSG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"

#define SB_PEER_MAX 255 /* ZeroMQ routing ids are at most 255 bytes */

struct sb_req;
struct sb_credit; /* sb_link.h: the memory budget's byte credit */

typedef struct sb_event {
    struct sb_req *req; /* owner of the bytes below */
    const char *agg;
    const char *type;
    const uint8_t *payload;
    const char *event_id;
    const char *producer_id;
    uint32_t agg_len;
    uint32_t type_len;
    uint32_t payload_len;
    uint32_t event_id_len;
    uint32_t producer_id_len;
    uint8_t has_source_pos;
    uint8_t status;      /* sb_err; SB_OK while the event is accepted */
    uint8_t joined;      /* in a batch of another aggregate (caused_by) */
    uint8_t why;         /* SB_WHY_*: the field a refusal is about */
    uint32_t why_arg;    /* with why: the limit passed, or the byte where
                          * the name stops being UTF-8 */
    uint64_t producer_seq;
    uint64_t source_pos;
    uint64_t caused_by;  /* 0: none */
    uint64_t client_ts_ms;
    /* Assigned by the broker. */
    uint64_t seq;
    uint64_t agg_seq;
    uint64_t batch_id;
} sb_event;

/* One publish request: header, events, then the bytes they point to, in a
 * single allocation. */
typedef struct sb_req {
    uint64_t request_id;
    uint64_t recv_ns;
    atomic_uint refs;        /* holders: the pipeline + each batched event */
    atomic_uint unpublished; /* accepted events not yet sent in a batch */
    uint32_t nevents;
    uint32_t naccepted;
    size_t mem_bytes;
    /* The credit `charged` bytes were taken from (sb_req_charge), given
     * back when the last reference goes; NULL: not charged. */
    struct sb_credit *credit;
    size_t charged;
    uint8_t ack;
    uint8_t delimiter; /* the request came behind an empty frame (REQ peer) */
    uint8_t replied;   /* the ingest answered it at once (ACK_NONE refusal):
                        * no later stage may answer it again */
    uint8_t peer_len;
    uint8_t peer[SB_PEER_MAX];
    sb_event ev[];
} sb_req;

/* Allocates a request for `nevents` events and `data_bytes` of strings and
 * payloads; *data points at that area. refs starts at 1 (the creator's,
 * which becomes the pipeline's), unpublished at 0. */
sb_err sb_req_new(sb_req **out, uint32_t nevents, size_t data_bytes,
                  uint8_t **data);
void sb_req_ref(sb_req *req);
/* Drops one reference; frees at zero (giving its credit back). */
void sb_req_unref(sb_req *req);
/* Takes bytes (its mem_bytes and what its events will cost downstream)
 * from credit for the life of the request: once, by the stage that admits
 * it. */
void sb_req_charge(sb_req *req, struct sb_credit *credit, size_t bytes);

/* The size an event counts for against batch byte limits: its bytes on
 * the wire, near enough. */
static inline size_t
sb_event_size(const sb_event *ev)
{
    return (size_t) ev->agg_len + ev->type_len + ev->payload_len +
           ev->event_id_len + ev->producer_id_len + 48;
}

/* sb_close_reason (SB_CLOSE_*) is the public one, from sb_err.h. */

/* A batch of one aggregate (the topic it is published under). Events of
 * other aggregates may have joined it through caused_by. */
typedef struct sb_batch {
    uint64_t id;        /* global, gap-free; assigned when flushed */
    uint64_t key;       /* the router's handle while open (timelock key) */
    uint64_t opened_ms;
    uint64_t deadline_ms;
    uint64_t timestamp_ms;  /* wall clock at flush */
    uint64_t prev_last_seq; /* last seq of this aggregate's previous batch */
    uint64_t agg_last_seq;
    uint64_t source_pos;
    uint8_t has_source_pos;
    uint8_t close_reason; /* sb_close_reason */
    /* Set when flushed: every seq below it is in this batch or one flushed
     * before it (the oldest open batch's first seq). Lets a subscriber
     * turn "seen every batch up to this one" into a safe resume seq. */
    uint64_t low_seq;
    uint32_t n;
    uint32_t cap;
    size_t bytes;       /* sum of sb_event_size() */
    sb_event **ev;      /* in seq order; each holds a ref on its request */
    uint32_t agg_len;
    char agg[];         /* NUL-terminated copy */
} sb_batch;

sb_err sb_batch_new(sb_batch **out, const char *agg, uint32_t agg_len);
/* Appends; the batch takes one reference on ev->req. */
sb_err sb_batch_push(sb_batch *b, sb_event *ev);
/* Drops the batch's request references and frees it. */
void sb_batch_destroy(sb_batch **bp);

/* Which field a per-event refusal is about, so that its reply can say
 * the field, the value and the limit (sb_wire_encode_publish_reply). */
enum {
    SB_WHY_NONE = 0,
    SB_WHY_AGGREGATE,
    SB_WHY_TYPE,
    SB_WHY_EVENT_ID,
    SB_WHY_PRODUCER_ID,
    SB_WHY_PAYLOAD
};

/* Per-event outcome in a reply. */
typedef struct {
    uint64_t seq;
    uint64_t agg_seq;
    uint64_t batch_id;
    uint8_t status; /* sb_err */
    uint8_t why;    /* SB_WHY_*, with the event's why_arg and the length
                     * of the field it names */
    uint32_t why_arg;
    uint32_t why_len;
} sb_result;

/* A reply for the ingest to send back to a publisher. */
typedef struct sb_reply {
    struct sb_credit *credit; /* its request's, charged with its size */
    size_t mem_bytes;
    uint64_t request_id;
    uint64_t recv_ns; /* the request's, for the ack latency */
    uint8_t ack;
    uint8_t delimiter;
    uint8_t peer_len;
    uint8_t peer[SB_PEER_MAX];
    uint32_t n;
    sb_result r[];
} sb_reply;

/* Copies the request's envelope and per-event outcome. A reply outlives
 * its request, so it is charged to the request's credit too. */
sb_err sb_reply_from_req(sb_reply **out, const sb_req *req);
/* Frees (NULL: nothing) and gives its credit back. */
void sb_reply_free(sb_reply *rp);

/* What a data link carries. */
typedef enum {
    SB_ITEM_REQ = 1,   /* sb_req */
    SB_ITEM_BATCH,     /* sb_batch */
    SB_ITEM_REPLY,     /* sb_reply */
    SB_ITEM_EOF        /* drain marker: nothing follows */
} sb_item_kind;

typedef struct {
    uint32_t kind;
    void *ptr;
} sb_item;

#endif
