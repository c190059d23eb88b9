/* Metrics: the broker's counters in the Prometheus text format over HTTP,
 * plus the liveness and readiness probes.
 *
 *   GET /metrics  Prometheus text exposition format 0.0.4
 *   GET /healthz  200 "ok" while the process serves HTTP at all
 *   GET /readyz   200 "ready" once every actor has started and intake is
 *                 open; 503 "starting" before, 503 "draining" after
 *                 SIGTERM (so a load balancer stops sending publishers)
 *
 * The HTTP server is libmicrohttpd with one internal thread of its own.
 * That thread only reads: the stats structs of other actors are atomics,
 * and the two snapshot calls it makes (sb_link_stats_get,
 * sb_router_actor_stats) take that object's own short lock for a copy and
 * nothing else. No actor ever waits on this module, and nothing here runs
 * on the publish path.
 *
 * Core: sb_metrics_render() turns sources into text (unit-tested without
 * HTTP). Shell: sb_metrics_new() binds and serves. */
#ifndef SB_METRICS_H
#define SB_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_auth.h"
#include "sb_budget.h"
#include "sb_dedup.h"
#include "sb_err.h"
#include "sb_fanout.h"
#include "sb_ingest.h"
#include "sb_link.h"
#include "sb_logstore.h"
#include "sb_router.h"

#define SB_METRICS_MAX_LINKS 16

typedef enum {
    SB_METRICS_STARTING = 0, /* /readyz 503: actors not all started */
    SB_METRICS_READY = 1,    /* /readyz 200 */
    SB_METRICS_DRAINING = 2  /* /readyz 503: SIGTERM, flushing */
} sb_metrics_state;

/* Where the figures come from. Every pointer may be NULL (that family of
 * metrics is then left out); all of them must stay valid until
 * sb_metrics_destroy() returns. */
typedef struct {
    const sb_ingest_stats *ingest;
    const sb_fanout_stats *fanout;
    sb_router_actor *router;
    const atomic_uint_fast64_t *last_seq; /* the sequencer's */
    sb_link *links[SB_METRICS_MAX_LINKS];
    size_t nlinks;
    const sb_logstore_stats *log; /* the on-disk log (docs/STORAGE.md) */
    const sb_auth_stats *auth;    /* CURVE (docs/SECURITY.md); NULL: off */
    const sb_dedup_stats *dedup;  /* the sequencer's index (PUBLISHING.md) */
    /* The memory budget (docs/ARCHITECTURE.md): its plan, copied, and the
     * credit of requests in flight. Both NULL: left out. */
    const sb_budget_plan *budget;
    sb_credit *credit;
    const char *log_dir;          /* storage.dir: its file system's free space */
} sb_metrics_sources;

/* Renders every metric of src as Prometheus text into a malloc'd,
 * NUL-terminated buffer (*out, *len without the NUL). The caller frees.
 * version goes into snapbus_build_info. SB_ENOMEM only. */
sb_err sb_metrics_render(const sb_metrics_sources *src, sb_metrics_state st,
                         const char *version, char **out, size_t *len);

/* Parses a listen address "HOST:PORT" ("127.0.0.1:7704", "[::1]:0",
 * "0.0.0.0:7704", "*:7704" for every interface; port 0 picks a free one).
 * Numeric addresses only, so a typo cannot silently resolve somewhere
 * else. SB_EINVAL with a reason in why. */
sb_err sb_metrics_parse_listen(const char *listen, char *host, size_t hostn,
                               uint16_t *port, char *why, size_t n);

/* The name of a wire ErrorCode as used in metric labels and log lines
 * ("too_large"); "unknown" past the table. */
const char *sb_metrics_reason_name(unsigned werr);

typedef struct sb_metrics sb_metrics;

/* Binds `listen` and starts serving, in state STARTING with no sources
 * (so /healthz answers during start-up). Call with signals blocked: the
 * server's thread inherits the mask. The bound URL, with the real port,
 * is sb_metrics_url(). SB_EINVAL: bad address; SB_ESYS: bind failed. */
sb_err sb_metrics_new(sb_metrics **out, const char *listen,
                      const char *version);
/* "http://127.0.0.1:PORT" as bound. */
const char *sb_metrics_url(const sb_metrics *m);
/* Publishes the sources (copied) to the server thread. Once only, before
 * the state becomes READY. */
void sb_metrics_attach(sb_metrics *m, const sb_metrics_sources *src);
void sb_metrics_set_state(sb_metrics *m, sb_metrics_state st);
/* Stops the server and waits for a request in progress to finish; after
 * this the sources are no longer read. */
void sb_metrics_destroy(sb_metrics **mp);

#endif
