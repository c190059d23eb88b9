/* Log store actor: the on-disk log's thread, between the sequencer and the
 * router, and again between the router and the fan-out.
 *
 *   sequencer -req-> logstore -req-> router -batch-> logstore -batch-> fan-out
 *                       |
 *                       +-durable acks-> ingest
 *
 * Requests: the accepted events of every request read are appended to the
 * log; all requests queued at that moment share one write(2) and, with
 * sync "always", one fdatasync (group commit). A request goes on to the
 * router as soon as it is written; its `durable` reply goes to the ingest
 * only after the fdatasync that covers it.
 *
 * Batches: every flushed batch gets a batch record (id, aggregate, fields,
 * its seqs) and goes on to the fan-out only once that record is written
 * (with "always": synced). So every published batch can be rebuilt from
 * the log with the same id and bytes, and after a crash the events in no
 * batch record are exactly the ones never published: they are fed to the
 * router again at start (`rebatch`), and published once.
 *
 * Backpressure: every output has an outbox; while one is not empty the
 * actor stops reading the input that fills it (the router's link: `in`;
 * the fan-out's link: `batch_in`). The ingest reads the reply link always,
 * so replies never wait for long. The router → logstore → router pair is a
 * cycle: it cannot deadlock because the logstore's reading of `batch_in`
 * depends only on the fan-out, which never waits on the logstore.
 *
 * Disk full: `full` is set, and the ingest answers new publishes
 * ERR_STORAGE_FULL, as soon as no space can be reserved for the next
 * segment (sb_store_reserved), while the active segment's reserved room
 * still takes what is in flight. If a write or sync fails anyway (ENOSPC,
 * EIO...), what was read stays in memory (bounded by max_held requests;
 * past that the actor parks), `full` is set, and the write is retried
 * every 200 ms. When space is back, `full` clears and everything held
 * goes on, in order. Nothing is dropped.
 *
 * Threads: the actor's thread owns the store writer. The stats and `full`
 * are atomics, readable from any thread. */
#ifndef SB_LOGSTORE_H
#define SB_LOGSTORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_clock.h"
#include "sb_err.h"
#include "sb_fanout.h"
#include "sb_link.h"
#include "sb_store.h"

typedef struct {
    atomic_uint_fast64_t fsyncs;           /* covering acks or batches */
    atomic_uint_fast64_t fsync_ns;         /* time spent in them */
    atomic_uint_fast64_t events_synced;    /* events those fsyncs covered */
    atomic_uint_fast64_t events;           /* event records written */
    atomic_uint_fast64_t batches;          /* batch records written */
    atomic_uint_fast64_t bytes;            /* bytes written */
    atomic_uint_fast64_t writes;           /* write calls */
    atomic_uint_fast64_t segments;         /* now */
    atomic_uint_fast64_t log_bytes;        /* now */
    atomic_uint_fast64_t segments_deleted; /* by retention */
    atomic_uint_fast64_t torn_truncations; /* at the last start */
    atomic_uint_fast64_t storage_refusals; /* failed write or sync attempts */
    atomic_uint_fast64_t storage_episodes; /* times the store began refusing */
    atomic_uint_fast64_t storage_full;     /* 1 while publishes are refused */
    atomic_uint_fast64_t acks;             /* durable replies sent */
    atomic_uint_fast64_t rebatched;        /* events fed again at start */
    atomic_uint_fast64_t parked;           /* times an output was full */
    sb_hist fsync;                         /* each of those fsyncs */
} sb_logstore_stats;

typedef struct {
    sb_store *store;         /* taken: closed by sb_logstore_destroy */
    const uint64_t *rebatch; /* copied: seqs to feed to the router first */
    size_t nrebatch;
    sb_sync_policy sync;
    uint32_t sync_interval_ms;
    uint32_t max_held; /* requests held while the store refuses */
    /* Request bytes (mem_bytes) encoded into the store's buffer and not
     * yet written, at most, while the store takes writes: the write group
     * and so the buffer stay this size whatever the burst (the memory
     * budget's log_buffer term). 0: only max_held bounds it. */
    uint64_t max_held_bytes;
    sb_clock clock;
    sb_link *in;        /* sequencer →: SB_ITEM_REQ, SB_ITEM_EOF */
    sb_link *out;       /* → router: SB_ITEM_REQ, SB_ITEM_EOF */
    sb_link *batch_in;  /* router →: SB_ITEM_BATCH, SB_ITEM_EOF */
    sb_link *batch_out; /* → fan-out: SB_ITEM_BATCH, SB_ITEM_EOF */
    sb_link *replies;   /* → ingest: SB_ITEM_REPLY, SB_ITEM_EOF */
} sb_logstore_args;

typedef struct sb_logstore sb_logstore;

/* Starts the thread. On failure the store is still closed (it was taken). */
sb_err sb_logstore_new(sb_logstore **out, const sb_logstore_args *args);
/* Stops (STOP, join), frees what is held and what is left in `in` and
 * `batch_in`, closes the store. After a drain (both EOFs through) the
 * thread has already synced the log and written a checkpoint. */
void sb_logstore_destroy(sb_logstore **lp);
/* Waits for the thread to exit after both EOFs (SB_ETIMEDOUT if not yet). */
sb_err sb_logstore_wait(sb_logstore *l, int timeout_ms);
sb_logstore_stats *sb_logstore_stats_get(sb_logstore *l);
/* 1 while the store refuses writes: the ingest refuses publishes. */
atomic_int *sb_logstore_full_flag(sb_logstore *l);

/* Fetch from the log, for the fan-out's query socket when its memory ring
 * no longer holds the range: the same query and answer as sb_ring_find
 * (out[] gets one reference each), read from `r` (the caller's reader, of
 * the same directory). Only batches up to `published` (the last batch id
 * the caller has published) are returned, so a reader never sees what the
 * writer is still writing. SB_ENOENT: the range starts before the log. */
sb_err sb_logstore_find(sb_store_reader *r, const sb_ring_query *q,
                        uint64_t published, sb_blob **out, sb_ring_result *res);

#endif
