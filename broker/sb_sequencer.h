/* Sequencer: gives every accepted event the next global seq (gap-free,
 * strictly increasing, never reused) and its aggregate's next seq.
 *
 * Core: sb_sequencer_assign() on a request. Shell: an actor that reads
 * SB_ITEM_REQ from the ingest, assigns, sends a `sequenced` reply back to
 * the ingest when the request asked for one, and forwards the request to
 * the router. With either output full it parks what it holds and stops
 * reading: the ingest then stops reading its socket. */
#ifndef SB_SEQUENCER_H
#define SB_SEQUENCER_H

#include <stdatomic.h>
#include <stdint.h>

#include "sb_clock.h"
#include "sb_dedup.h"
#include "sb_err.h"
#include "sb_link.h"
#include "sb_msg.h"

typedef struct sb_sequencer sb_sequencer;

/* next_seq: the first seq to give (1 on a new broker). */
sb_err sb_sequencer_new(sb_sequencer **out, uint64_t next_seq);
void sb_sequencer_destroy(sb_sequencer **sp);
/* Assigns seq and agg_seq to every event whose status is SB_OK. */
sb_err sb_sequencer_assign(sb_sequencer *s, sb_req *req);
/* The same, first asking the de-duplication index (if set) about each
 * event: a duplicate gets status SB_EDUP and the original's seq and
 * agg_seq, an event beyond the index's horizon SB_EHORIZON; neither takes
 * a seq. req->naccepted and req->unpublished drop by their number. Each
 * new event is recorded in the index at once, so a request that holds one
 * event twice gets it once. now_ms: the index's clock (event-id age). */
sb_err sb_sequencer_assign_at(sb_sequencer *s, sb_req *req, uint64_t now_ms);
/* Takes the index (NULL: no de-duplication). */
void sb_sequencer_set_dedup(sb_sequencer *s, sb_dedup **dp);
uint64_t sb_sequencer_last_seq(const sb_sequencer *s);
uint64_t sb_sequencer_aggregates(const sb_sequencer *s);
/* Restores an aggregate's last seq (for recovery and tests). */
sb_err sb_sequencer_set_agg(sb_sequencer *s, const char *agg, uint32_t len,
                            uint64_t last);

typedef struct sb_sequencer_actor sb_sequencer_actor;

typedef struct {
    uint64_t next_seq;
    sb_link *in;        /* ingest → sequencer: SB_ITEM_REQ, SB_ITEM_EOF */
    sb_link *reply_out; /* sequencer → ingest: SB_ITEM_REPLY, SB_ITEM_EOF */
    sb_link *out;       /* sequencer → router: SB_ITEM_REQ, SB_ITEM_EOF */
    /* Optional: called once on the new core before the thread starts, to
     * restore per-aggregate seqs found by the log's recovery. */
    sb_err (*restore)(sb_sequencer *core, void *ctx);
    void *restore_ctx;
    /* Optional: the de-duplication index. The actor owns it from the
     * call on, and frees it even when the constructor fails. */
    sb_dedup *dedup;
    sb_clock clock; /* for the index; now_ms NULL: the system clock */
} sb_sequencer_actor_args;

sb_err sb_sequencer_actor_new(sb_sequencer_actor **out,
                              const sb_sequencer_actor_args *args);
void sb_sequencer_actor_destroy(sb_sequencer_actor **ap);
/* Highest seq assigned so far, from any thread. */
uint64_t sb_sequencer_actor_last_seq(sb_sequencer_actor *a);
/* The same counter, for readers that keep a pointer (hello replies). */
atomic_uint_fast64_t *sb_sequencer_actor_last_seq_ref(sb_sequencer_actor *a);

#endif
