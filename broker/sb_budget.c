/* The memory budget's plan (see sb_budget.h and docs/ARCHITECTURE.md,
 * "Memory budget"). Pure arithmetic on the configuration. */
#include "sb_budget.h"

#include <stdio.h>
#include <string.h>

#include "sb_dedup.h"
#include "sb_fanout.h"

#define S_MIB (1024.0 * 1024.0)

/* A PublishReply's bytes for one event result: tag and length, error,
 * seq, aggregate seq, batch id (varints of at most 10 bytes). */
#define S_REPLY_RESULT_WIRE 40

/* Replies a publisher that reads them holds: the client library's default
 * window. */
#define SB_BUDGET_REPLY_WINDOW 64

static uint64_t
s_clamp(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

sb_err
sb_budget_plan_make(sb_budget_plan *p, const sb_config *c, char *why,
                    size_t n)
{
    const sb_limits *l = &c->limits;
    uint64_t b = c->memory_budget;
    uint64_t msg = l->max_message_bytes;
    uint64_t fixed, reply_wire, reply_mem;

    memset(p, 0, sizeof *p);
    p->budget = b;
    /* The ingest refuses a frame over max_message_bytes with a typed
     * ERR_TOO_LARGE, and ZeroMQ drops the connection a little past it,
     * so nobody can make the broker allocate much more than the limit. */
    p->ingest_maxmsgsize = (int64_t) (msg + (msg < (64u << 10) ? msg : 64u << 10));
    /* The largest charge of one request: its allocation (header, events,
     * the bytes they point at: at most the frame) and the reservation for
     * its events' batch structures. */
    p->req_max = sizeof(sb_req) +
                 (uint64_t) l->max_events_per_request *
                     (sizeof(sb_event) + SB_BUDGET_EVENT_RESERVE(l->max_name_bytes)) +
                 msg;
    reply_mem = sizeof(sb_reply) + (uint64_t) l->max_events_per_request * sizeof(sb_result);
    reply_wire = 64 + (uint64_t) l->max_events_per_request * S_REPLY_RESULT_WIRE;
    /* A batch closes once it reaches max_batch_bytes, so it holds at most
     * that plus one event (no larger than a message). */
    p->blob_max = sizeof(sb_blob) + c->router.max_batch_bytes + msg + 1024;

    p->ring = c->retain_bytes;
    p->outgoing = b / 8;
    p->fetch = c->fetch_max_bytes + p->blob_max;
    p->dedup = b / 8;
    p->log_group = s_clamp(b / 32, 1u << 20, 64u << 20);
    p->log_buffer = 2 * (p->log_group + msg);
    /* libzmq queues up to RCVHWM whole messages per publisher connection
     * before it stops reading that connection: a sixteenth of the budget
     * in the largest frames (at least 4, at most broker.hwm). Replies
     * keep broker.hwm: a reply the pipe cannot take is lost, and the
     * ingest answers a whole window in a burst faster than libzmq's I/O
     * thread may drain it on a loaded machine. A publisher that reads its
     * replies holds at most its window of them (the client's default: 64
     * requests); one that does not can hold broker.hwm of them, which is
     * the per-connection term docs/ARCHITECTURE.md gives. */
    p->ingest_rcvhwm = (int) s_clamp(b / 16 / (uint64_t) p->ingest_maxmsgsize, 4,
                                     c->hwm > 4 ? c->hwm : 4);
    p->ingest_sndhwm = (int) c->hwm;
    p->zmq = (uint64_t) p->ingest_rcvhwm * (uint64_t) p->ingest_maxmsgsize +
             SB_BUDGET_REPLY_WINDOW * reply_wire + SB_BUDGET_CONN_BYTES;
    p->requests_over = p->req_max + reply_mem;

    fixed = p->ring + p->outgoing + p->fetch + p->dedup + p->log_buffer +
            p->zmq + p->requests_over;
    if (fixed < b) {
        /* credit + credit / 8 = the rest */
        p->requests = (b - fixed) / 9 * 8;
        p->replies = p->requests / 8;
    }
    if (p->requests < 2 * p->req_max) {
        char terms[768];
        size_t off = 0;
        uint64_t v;
        const char *name, *from;
        for (size_t i = 0; (name = sb_budget_term(p, i, &v, &from)) != NULL &&
                           off < sizeof terms; i++)
            off += (size_t) snprintf(terms + off, sizeof terms - off, "%s%s (%s) %.1f MiB",
                                     i ? " + " : "", name, from, (double) v / S_MIB);
        snprintf(why, n,
                 "broker.memory_budget = %llu (%.1f MiB) is too small: its fixed "
                 "parts %s = %.1f MiB leave %.1f MiB for requests in flight, "
                 "and they need at least %.1f MiB (two of the largest request, "
                 "from limits.max_message_bytes and limits.max_events_per_request). "
                 "Raise broker.memory_budget, or lower retention.bytes, "
                 "retention.fetch_max_bytes, batching.max_batch_bytes or "
                 "limits.max_message_bytes (docs/ARCHITECTURE.md, \"Memory budget\")",
                 (unsigned long long) b, (double) b / S_MIB, terms,
                 (double) fixed / S_MIB,
                 fixed < b ? (double) (b - fixed) / S_MIB : 0.0,
                 (double) (2 * p->req_max) * 9 / 8 / S_MIB);
        return SB_EINVAL;
    }
    if (c->dedup.producers > 0 &&
        sb_dedup_producer_bytes(&c->dedup, l->max_name_bytes) > p->dedup) {
        snprintf(why, n,
                 "dedup.producer_window = %u: one producer's full window takes "
                 "%.1f MiB, more than the de-duplication index's share of "
                 "broker.memory_budget (budget / 8 = %.1f MiB). Raise "
                 "broker.memory_budget or lower dedup.producer_window",
                 c->dedup.producer_window,
                 (double) sb_dedup_producer_bytes(&c->dedup, l->max_name_bytes) / S_MIB,
                 (double) p->dedup / S_MIB);
        return SB_EINVAL;
    }
    return SB_OK;
}

const char *
sb_budget_term(const sb_budget_plan *p, size_t i, uint64_t *value,
               const char **from)
{
    const struct {
        const char *name, *from;
        uint64_t v;
    } t[] = {
        {"ring", "retention.bytes", p->ring},
        {"outgoing", "budget/8", p->outgoing},
        {"fetch", "retention.fetch_max_bytes + one batch", p->fetch},
        {"dedup", "budget/8", p->dedup},
        {"log_buffer", "2 x (budget/32 + limits.max_message_bytes)", p->log_buffer},
        {"zmq", "one publisher connection's queues", p->zmq},
        {"requests_over", "one request past the credit", p->requests_over},
    };

    if (i >= sizeof t / sizeof t[0])
        return NULL;
    *value = t[i].v;
    if (from != NULL)
        *from = t[i].from;
    return t[i].name;
}
