/* sb_fetch: one fetch on the broker's query socket, for retained snapshot
 * batches (gap fill, resume, replay); a thin wrapper over sbc_query, the
 * connection the subscriber keeps, made and dropped for the call.
 *
 * The reply is one message of 1 + count frames: Reply{fetch=FetchReply},
 * then count encoded SnapshotBatch frames. Each batch that decodes is
 * handed to the caller's fn, which owns it; one that does not is skipped,
 * and the call then returns SB_EPROTO after delivering the rest, so the
 * caller knows the page is incomplete (as it does when the frame count is
 * not `count`).
 *
 * The socket and its context live only for the call: a fetch is rare
 * next to live traffic, and this keeps sb_fetch free of shared state, so
 * any thread may call it. */
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "sbc_curve.h"
#include "sbc_internal.h"
#include "sbc_query.h"
#include <snapbus/snapbus.h>

/* The first version of sb_fetch_opts ended with `headers_only`. */
#define S_OPTS_V1 (offsetof(sb_fetch_opts, headers_only) + sizeof(int))

void
sb_fetch_opts_defaults(sb_fetch_opts *o)
{
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
}

sb_err
sb_fetch(const char *query_endpoint, const sb_fetch_opts *in, sb_snapshot_fn fn,
         void *ctx, sb_fetch_info *info, int timeout_ms)
{
    sb_fetch_opts opts;
    sb_fetch_page page;
    sbc_query *q = NULL;
    sbc_curve curve;
    void *zctx;
    sb_err rc;

    if (query_endpoint == NULL || query_endpoint[0] == '\0')
        return SB_EINVAL;
    sb_fetch_opts_defaults(&opts);
    if (in != NULL && sbc_opts_take(&opts, sizeof opts, S_OPTS_V1, in) != SB_OK)
        return SB_EINVAL;
    if (info != NULL)
        memset(info, 0, sizeof *info);
    if (sbc_curve_set(&curve, &opts.curve) != SB_OK)
        return SB_EINVAL;
    if ((zctx = zmq_ctx_new()) == NULL) {
        sbc_curve_wipe(&curve);
        return SB_ESYS;
    }
    /* The resend interval is the whole call: one request, one wait. */
    rc = sbc_query_new(&q, zctx, query_endpoint, timeout_ms, &curve);
    if (rc == SB_OK) {
        sbc_fetch_req r = {opts.prefix,         opts.exact,
                           opts.from_seq,       opts.to_seq,
                           opts.after_batch_id, opts.max_batches,
                           opts.headers_only,   opts.max_bytes};
        uint64_t deadline = sbc_deadline(timeout_ms);
        int fresh = 1;
        memset(&page, 0, sizeof page);
        /* A signal interrupts the wait (SB_EAGAIN): go on waiting. */
        do {
            long left = sbc_remaining_ms(deadline);
            rc = sbc_query_fetch_each(q, &r, &page, fn, ctx, (int)left, fresh);
            fresh = 0;
        } while (rc == SB_EAGAIN && sbc_remaining_ms(deadline) != 0);
        if (rc == SB_EAGAIN)
            rc = SB_ETIMEDOUT;
        if (info != NULL) {
            /* Filled on refusals too: out of retention says where it
             * starts. */
            info->last_batch_id = page.last_batch_id;
            info->more = page.more;
            info->retained_first_seq = page.retained_first_seq;
            info->last_seq = page.last_seq;
        }
    }
    sbc_query_destroy(&q);
    sbc_curve_wipe(&curve);
    zmq_ctx_term(zctx);
    return rc;
}
