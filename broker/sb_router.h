/* Batch router: owns the open batches, one per aggregate, and decides which
 * batch each sequenced event joins.
 *
 * Rules (docs/BATCHING.md):
 * - an event joins its aggregate's open batch, or opens one whose deadline
 *   is now + the aggregate's delay (exact name rule, else the first
 *   matching glob rule, else the default);
 * - a batch closes early when it reaches max_batch_events or
 *   max_batch_bytes;
 * - delay 0 batches close when the request that opened them has been
 *   processed (sb_router_end_request), so one request's events of one
 *   aggregate travel in one batch;
 * - an event whose caused_by names an event still in an open batch joins
 *   that batch (even of another aggregate), provided its own aggregate has
 *   no events waiting in a different open batch, so every aggregate's events
 *   still reach subscribers in seq order; later events of its aggregate
 *   follow it there while that batch is open;
 * - an event too late for its batch (the batch already flushed) goes into
 *   the next one: nothing is ever dropped;
 * - on shutdown every open batch is flushed, oldest first.
 *
 * Core only: no threads, time as an argument. Flushed batches wait in an
 * outbox (sb_router_take_batch) and timelock commands in another
 * (sb_router_take_timer); the shell drains both before feeding more
 * input. Both outboxes are bounded by max_open_batches. */
#ifndef SB_ROUTER_H
#define SB_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "sb_clock.h"
#include "sb_err.h"
#include "sb_link.h"
#include "sb_msg.h"
#include "sb_timelock.h"

#define SB_MAX_DELAY_RULES 64
#define SB_MAX_PATTERN 256

typedef struct {
    char pattern[SB_MAX_PATTERN]; /* exact name, or fnmatch(3) glob */
    uint32_t delay_ms;
} sb_delay_rule;

typedef struct {
    uint32_t default_delay_ms;
    uint32_t nrules;
    sb_delay_rule rules[SB_MAX_DELAY_RULES];
    uint32_t max_batch_events;
    uint32_t max_batch_bytes;
    uint32_t max_open_batches; /* at this many, new batches wait */
    uint64_t max_open_bytes;   /* at this many bytes held open, input waits */
} sb_router_config;

void sb_router_config_defaults(sb_router_config *cfg);
sb_err sb_router_config_check(const sb_router_config *cfg, char *why,
                              size_t n);
/* The delay that applies to an aggregate name. */
uint32_t sb_router_config_delay(const sb_router_config *cfg, const char *agg,
                                size_t len);

typedef struct {
    uint64_t events;
    uint64_t batches;
    uint64_t by_reason[5]; /* indexed by sb_close_reason */
    uint64_t caused_by_joins;
    uint64_t waits;        /* sb_router_add answered SB_EAGAIN */
    uint64_t open_batches;
    uint64_t open_bytes;
    uint64_t aggregates;
} sb_router_stats;

typedef struct sb_router sb_router;

sb_err sb_router_new(sb_router **out, const sb_router_config *cfg);
/* Batch ids continue from here (1 on a new broker). */
void sb_router_set_next_batch_id(sb_router *r, uint64_t id);
/* Restores what a topic's next batch continues from after a restart: the
 * last seq published on it (its next prev_last_seq) and its highest
 * source position. Call before the first sb_router_add. */
sb_err sb_router_set_agg(sb_router *r, const char *agg, uint32_t len,
                         uint64_t last_seq, uint64_t source_pos,
                         int has_source_pos);
/* Frees open and outbox batches (dropping their request references). */
void sb_router_destroy(sb_router **rp);

/* SB_OK: ev is in a batch (which took a reference on ev->req). SB_EAGAIN:
 * the open batch/byte limits are reached; nothing changed; feed dues and
 * drain the outboxes, then try the same event again. */
sb_err sb_router_add(sb_router *r, sb_event *ev, uint64_t now_ms);
/* Closes the delay-0 batches opened or joined since the last call. */
void sb_router_end_request(sb_router *r, uint64_t now_ms);
/* The timelock says key's deadline passed. Unknown keys are ignored. */
void sb_router_due(sb_router *r, uint64_t key, uint64_t now_ms);
/* Shutdown: closes every open batch, oldest first. */
void sb_router_flush_all(sb_router *r, uint64_t now_ms);

/* Next flushed batch, in flush order, with its id, timestamp and
 * prev_last_seq filled in. SB_EAGAIN if none. */
sb_err sb_router_take_batch(sb_router *r, sb_batch **out);
/* Next ARM/DISARM for the timelock. SB_EAGAIN if none. */
sb_err sb_router_take_timer(sb_router *r, sb_timer_cmd *out);
/* Undo a take when the link refused it: it goes back to the front. */
void sb_router_untake_batch(sb_router *r, sb_batch *b);
void sb_router_untake_timer(sb_router *r, const sb_timer_cmd *cmd);

void sb_router_stats_get(const sb_router *r, sb_router_stats *st);

/* Actor shell: reads SB_ITEM_REQ / SB_ITEM_EOF from `in` (requests from the
 * sequencer; the router drops the pipeline reference on each request once
 * all its events are batched), DUEs from `due_in`, sends ARM/DISARM on
 * `timer_out`, and SB_ITEM_BATCH (then SB_ITEM_EOF) on `out`. Stops reading
 * `in` while an outbox is not empty or add() answered SB_EAGAIN; never stops
 * reading `due_in`. On EOF: flush_all, forward everything, send
 * SB_TIMER_EOF, then SB_ITEM_EOF on `out`, and exit. */
typedef struct sb_router_actor sb_router_actor;

typedef struct {
    sb_router_config cfg;
    sb_clock clock;
    uint64_t first_batch_id; /* ids continue from here (1 on a new broker) */
    sb_link *in;
    sb_link *due_in;
    sb_link *timer_out;
    sb_link *out;
    /* Optional: called once on the new core before the thread starts, to
     * restore per-topic state found by the log's recovery. */
    sb_err (*restore)(sb_router *core, void *ctx);
    void *restore_ctx;
} sb_router_actor_args;

sb_err sb_router_actor_new(sb_router_actor **out,
                           const sb_router_actor_args *args);
void sb_router_actor_destroy(sb_router_actor **ap);
sb_err sb_router_actor_wait(sb_router_actor *a, int timeout_ms);
/* Snapshot of the core's counters, safe from any thread. */
void sb_router_actor_stats(sb_router_actor *a, sb_router_stats *st);

#endif
