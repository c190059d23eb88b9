/* De-duplication index: what makes a resend or a producer's replay come
 * back with the original seq instead of a second event.
 *
 * Two bounded indexes, both consulted only by the sequencer's thread, so
 * that "is it a duplicate?" and "give it the next seq" are one atomic,
 * gap-free step:
 *
 *   producers  producer id -> the highest producer seq recorded (hi), the
 *              lowest one the entry can vouch for (lo), and a ring of the
 *              last `producer_window` producer seqs -> (seq, agg_seq).
 *              At most `producers` entries, least recently used evicted
 *              first; an evicted producer leaves a tombstone (its hi), so
 *              a replay of its old events is refused, not taken again.
 *   event ids  event id -> (seq, agg_seq), at most `event_ids` entries and
 *              `event_id_age_ms` old, oldest first out (a FIFO).
 *
 * The verdict for an event with a producer id (docs/PUBLISHING.md):
 *   producer seq above hi                          -> new
 *   inside [max(lo, hi - window + 1), hi], in ring -> duplicate (original)
 *   inside it, not in the ring                     -> new (a gap filled)
 *   below it                                       -> beyond the horizon
 * An unknown producer is new, with lo = 0 while the index has never lost
 * anything (so every older producer seq is provably new too), else with
 * lo = its first producer seq. An event id is a duplicate while remembered,
 * else new: ids carry no order, so nothing can be proven about an id the
 * index has forgotten.
 *
 * Persisted by being rebuilt: at start the sequencer reads the log's most
 * recent events (sb_dedup_rebuild) and records them as if just accepted.
 *
 * Not thread-safe: one owner thread (the sequencer). Time comes in as an
 * argument (monotonic ms), so tests drive age eviction without sleeping.
 * The stats are atomics, read by the metrics thread. */
#ifndef SB_DEDUP_H
#define SB_DEDUP_H

#include <stdatomic.h>
#include <stdint.h>

#include "sb_err.h"
#include "sb_msg.h"

typedef struct {
    uint32_t producers;       /* producer entries at most; 0: off */
    uint32_t producer_window; /* producer seqs remembered per producer */
    uint32_t tombstones;      /* evicted producers remembered (their hi) */
    uint32_t event_ids;       /* event ids remembered at most; 0: off */
    uint32_t event_id_age_s;  /* and for at most this long; 0: no bound */
    uint64_t rebuild_events;  /* at start, read at most this many of the
                               * log's last events; 0: the whole log */
    /* Memory cap, bytes (the memory budget's share; not a key of its
     * own); 0: only the counts bound it. Past it the oldest event ids go
     * first, then least recently used producers (leaving tombstones),
     * then the oldest tombstones: counted as evictions, as at the count
     * bounds. */
    uint64_t max_bytes;
} sb_dedup_config;

void sb_dedup_config_defaults(sb_dedup_config *c);
sb_err sb_dedup_config_check(const sb_dedup_config *c, char *why, size_t n);

typedef enum {
    SB_DEDUP_NEW = 0,
    SB_DEDUP_DUPLICATE, /* *orig is the original's seq and agg_seq */
    SB_DEDUP_BEYOND     /* older than the horizon: cannot tell */
} sb_dedup_verdict;

typedef struct {
    uint64_t seq;
    uint64_t agg_seq;
} sb_dedup_orig;

typedef struct {
    atomic_uint_fast64_t dup_producer; /* duplicates found by producer seq */
    atomic_uint_fast64_t dup_event_id; /* ... by event id */
    atomic_uint_fast64_t beyond;       /* refused: beyond the horizon */
    atomic_uint_fast64_t prod_evicted; /* producer entries evicted (LRU) */
    atomic_uint_fast64_t tomb_evicted; /* tombstones dropped: index lossy */
    atomic_uint_fast64_t id_evicted; /* event ids dropped at the count bound */
    atomic_uint_fast64_t id_expired; /* event ids dropped at the age bound */
    atomic_uint_fast64_t nomem;      /* events accepted but not indexed */
    atomic_uint_fast64_t producers;  /* entries now */
    atomic_uint_fast64_t tombs;      /* tombstones now */
    atomic_uint_fast64_t ids;        /* event ids now */
    atomic_uint_fast64_t mem_bytes;  /* memory held, near enough */
    atomic_uint_fast64_t rebuild_events; /* read from the log at start */
    atomic_uint_fast64_t rebuild_ms;
} sb_dedup_stats;

typedef struct sb_dedup sb_dedup;

/* SB_EINVAL: a bad config (sb_dedup_config_check). */
sb_err sb_dedup_new(sb_dedup **out, const sb_dedup_config *cfg);
void sb_dedup_destroy(sb_dedup **dp);

/* The verdict on one event (which must be valid: status SB_OK). Changes
 * nothing but LRU order, age eviction and counters; an event without a
 * producer id or event id is always new. */
sb_dedup_verdict sb_dedup_check(sb_dedup *d, const sb_event *ev,
                                uint64_t now_ms, sb_dedup_orig *orig);
/* Records an event just accepted (ev->seq, ev->agg_seq set). SB_ENOMEM:
 * not indexed (counted in nomem); the event stays accepted. */
sb_err sb_dedup_record(sb_dedup *d, const sb_event *ev, uint64_t now_ms);

/* Rebuilds from the log in dir: records its last rebuild_events events
 * (all if 0) in seq order, up to last_seq (what the log's recovery found;
 * 0: a new log, nothing to read). The index stays "complete" (unknown
 * producers get lo = 0) only if the rebuild starts at seq 1: not when the
 * log is longer than rebuild_events or retention deleted its start. Runs
 * before the sequencer starts. The reader's error if the log cannot be
 * read; an event that cannot be indexed (no memory) is only counted. */
sb_err sb_dedup_rebuild(sb_dedup *d, const char *dir, uint64_t last_seq,
                        uint64_t now_ms);

/* 1 while nothing was ever forgotten in a way that loses producers. */
int sb_dedup_complete(const sb_dedup *d);
sb_dedup_stats *sb_dedup_stats_get(sb_dedup *d);

/* Memory of one producer entry with a full window, and of one event id,
 * for ids of name_len bytes: what docs/PUBLISHING.md quotes. */
size_t sb_dedup_producer_bytes(const sb_dedup_config *c, uint32_t name_len);
size_t sb_dedup_event_id_bytes(uint32_t name_len);

#endif
