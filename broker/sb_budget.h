/* The memory budget (broker.memory_budget): how the one figure the user
 * sets is shared out among everything the broker holds for work in flight.
 *
 * A plan is computed from the configuration once, before anything starts,
 * by sb_budget_plan(); sb_config_check() calls it, so --check-config and
 * start-up refuse a configuration whose fixed parts leave too little for
 * requests in flight, with a message naming every term. The terms are the
 * formula of docs/ARCHITECTURE.md ("Memory budget"), one field each:
 *
 *   budget = ring + outgoing + fetch + dedup + log_buffer + zmq
 *          + requests_over + requests + replies
 *
 * where requests is the byte credit (sb_credit, sb_link.h) the ingest
 * takes for every admitted request and replies is what the replies of the
 * requests in flight can add to it. Pure arithmetic: no threads. */
#ifndef SB_BUDGET_H
#define SB_BUDGET_H

#include <stddef.h>
#include <stdint.h>

#include "sb_config.h"
#include "sb_err.h"
#include "sb_msg.h"

/* Per-event reservation the ingest adds to a request's charge: what its
 * events can cost downstream in batch structures. A batch of n events has
 * an array of max(4, 2n) pointers at most (it starts at 4 and doubles) and
 * one header with its aggregate's name: 4 + 2 pointers and a header per
 * event cover it however the events are batched. A request outlives its
 * batches (each event in a batch holds a reference), so its charge covers
 * them. */
#define SB_BUDGET_EVENT_RESERVE(agg_len)                                       \
    (6 * sizeof(sb_event *) + sizeof(sb_batch) + (size_t) (agg_len) + 1)

/* The fixed per-connection cost of a ZeroMQ connection beyond its queued
 * messages (pipes, encoder and decoder buffers), near enough. */
#define SB_BUDGET_CONN_BYTES (64u << 10)

typedef struct {
    uint64_t budget;        /* broker.memory_budget */
    /* Fixed terms, bytes. */
    uint64_t ring;          /* retention.bytes */
    uint64_t outgoing;      /* encoded batches held only by ZeroMQ (PUB
                             * queues, fetch replies): budget / 8 */
    uint64_t fetch;         /* one fetch page being built */
    uint64_t dedup;         /* the de-duplication index's cap: budget / 8 */
    uint64_t log_buffer;    /* the log's append buffer: twice a write
                             * group (log_group) plus one message */
    uint64_t zmq;           /* one publisher connection's ZeroMQ queues */
    uint64_t requests_over; /* one request admitted past the credit */
    /* What is left, shared by requests in flight and their replies. */
    uint64_t requests;      /* the credit */
    uint64_t replies;       /* requests / 8: 32 bytes a result against at
                             * least 256 charged per event */
    /* Sizes derived from the budget. */
    uint64_t log_group;     /* request bytes the log store encodes at once */
    uint64_t req_max;       /* the largest charge of one request */
    uint64_t blob_max;      /* the largest encoded batch */
    int ingest_rcvhwm;      /* messages per publisher pipe, each way */
    int ingest_sndhwm;
    int64_t ingest_maxmsgsize; /* ZMQ_MAXMSGSIZE of the ingest socket */
} sb_budget_plan;

/* Fills *p from c. SB_EINVAL, with why naming each term, its value, the
 * budget and what to change, when the fixed terms leave less than two of
 * the largest request for the credit, or a part cannot hold the least it
 * needs. */
sb_err sb_budget_plan_make(sb_budget_plan *p, const sb_config *c, char *why,
                           size_t n);

/* The fixed terms by name ("ring"), in the formula's order, for metrics
 * and messages: *value is set, and *from (if not NULL) says where it
 * comes from ("retention.bytes"). NULL past the last. */
const char *sb_budget_term(const sb_budget_plan *p, size_t i,
                           uint64_t *value, const char **from);

#endif
