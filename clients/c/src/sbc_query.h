/* sbc_query: hello and fetch on the broker's query socket over one
 * long-lived DEALER, with resend on timeout (see sbc_query.c). Return
 * codes follow sbc_transport's (sbc_sub.h). */
#ifndef SBC_QUERY_H
#define SBC_QUERY_H

#include "sbc_curve.h"
#include "sbc_sub.h"

typedef struct sbc_query sbc_query;

/* curve: NULL or off for a plain connection. */
sb_err sbc_query_new(sbc_query **out, void *zctx, const char *endpoint,
                     int timeout_ms, const sbc_curve *curve);
void sbc_query_destroy(sbc_query **qp);
sb_err sbc_query_hello(sbc_query *q, sbc_hello_info *h, int wait_ms,
                       int fresh);
sb_err sbc_query_fetch(sbc_query *q, const sbc_fetch_req *r,
                       sb_fetch_page *info, sb_snapshot **out, int wait_ms,
                       int fresh);
/* The same, handing each batch to fn (which owns it) rather than into an
 * array: any number of batches (max_batches 0 asks for the broker's
 * default). A batch that does not decode is skipped and the call returns
 * SB_EPROTO after delivering the rest. What sb_fetch runs on. */
sb_err sbc_query_fetch_each(sbc_query *q, const sbc_fetch_req *r,
                            sb_fetch_page *info, sb_snapshot_fn fn, void *ctx,
                            int wait_ms, int fresh);
void sbc_query_counts(const sbc_query *q, uint64_t *fetches,
                      uint64_t *timeouts);

#endif
