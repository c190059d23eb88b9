/* sbc_sub: the subscriber's gap logic, apart from any socket.
 *
 * The engine decides what to deliver, what to fetch and what to report;
 * a transport (function pointers) does the I/O: the live stream of
 * batches, hello and fetch on the query socket, and the clock. The shell
 * (sb_subscriber.c) plugs ZeroMQ in; tests/unit/test_subscriber.c plugs
 * in a fake broker, so every rule is tested without a network or a sleep.
 * docs/SUBSCRIBING.md is the design; this header is the contract between
 * the engine and its transport.
 *
 * Threading: none; one thread at a time, like the subscriber. */
#ifndef SBC_SUB_H
#define SBC_SUB_H

#include <stdint.h>

#include <snapbus/snapbus.h>

#include "sb_fetch_page.h"

/* Batches asked for per fetch page (the broker may cap it lower). */
#define SBC_PAGE 1000

typedef struct {
    const char *prefix;
    int exact;
    uint64_t from_seq;
    uint64_t to_seq;
    uint64_t after_batch_id;
    uint32_t max_batches;
    int headers_only;
    uint32_t max_bytes; /* 0: the broker's default */
} sbc_fetch_req;


typedef struct {
    uint64_t epoch;
    uint64_t last_seq;      /* highest published */
    uint64_t last_batch_id; /* newest published */
    uint64_t low_seq;       /* every seq below it is published; 0: unknown */
    uint64_t end_bid;       /* stopping: the epoch's last batch; 0: no */
} sbc_hello_info;

/* Waits: wait_ms -1 is forever. Every function returns SB_ETIMEDOUT when
 * wait_ms passed with nothing, and SB_EAGAIN when a signal interrupted the
 * wait (recv then returns to its caller at once).
 * A request is "fresh" the first time the engine asks for it; later calls
 * with fresh = 0 go on waiting for the same request, which the transport
 * sends again (with a new request id) when fetch_timeout_ms passes without
 * a reply. */
typedef struct {
    void *ctx;
    /* Next live batch, decoded. Malformed messages are the transport's
     * to count and skip. */
    sb_err (*live)(void *ctx, sb_snapshot **out, int wait_ms);
    /* Drops every live message queued now; returns how many. */
    uint64_t (*live_drain)(void *ctx);
    /* NULL when there is no query endpoint: then gaps cannot be filled
     * and are reported as losses. */
    sb_err (*hello)(void *ctx, sbc_hello_info *h, int wait_ms, int fresh);
    /* SB_OK: info and out[0..info->count) (decoded, the caller owns
     * them; at most q->max_batches). SB_ENOENT: out of retention, info
     * filled (count 0). Other errors: the page is not usable. */
    sb_err (*fetch)(void *ctx, const sbc_fetch_req *q, sb_fetch_page *info,
                    sb_snapshot **out, int wait_ms, int fresh);
    uint64_t (*now_ms)(void *ctx);
} sbc_transport;

typedef struct {
    uint64_t resume_from_seq; /* 0: live */
    int probe_ms;             /* 0: no header probes */
    sb_loss_policy on_loss;
} sbc_sub_config;

typedef struct sbc_sub sbc_sub;

sb_err sbc_sub_new(sbc_sub **out, const sbc_transport *t,
                   const sbc_sub_config *cfg);
void sbc_sub_destroy(sbc_sub **sp);
/* A subscription's prefix (exact: one aggregate) for fetches. */
sb_err sbc_sub_add(sbc_sub *s, const char *prefix, int exact);
/* sb_subscriber_start's contract (snapbus.h). */
sb_err sbc_sub_start(sbc_sub *s, int timeout_ms);
/* sb_subscriber_recv's contract (snapbus.h). */
sb_err sbc_sub_recv(sbc_sub *s, sb_snapshot **out, int timeout_ms);
uint64_t sbc_sub_position(const sbc_sub *s);
sb_err sbc_sub_loss(const sbc_sub *s, sb_loss *out);
/* The broker's EpochEnd marker arrived (the transport saw it on the live
 * socket): batch ids up to last_bid exist in epoch `epoch`, fetchable for
 * linger_ms. The engine checks through last_bid while it can and reports
 * what it could not as lost. */
void sbc_sub_epoch_end(sbc_sub *s, uint64_t epoch, uint64_t last_bid,
                       uint64_t last_seq, uint32_t linger_ms);
/* sb_subscriber_unchecked's contract (snapbus.h). */
sb_err sbc_sub_unchecked(const sbc_sub *s, sb_loss *out);
/* Fills the engine's counters (every field but malformed). */
void sbc_sub_stats(const sbc_sub *s, sb_subscriber_stats *st);

#endif
