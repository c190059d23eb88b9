/* sb_fetch: one request/reply on the broker's query socket, for retained
 * snapshot batches (gap fill, resume, replay).
 *
 * A DEALER made for the call sends one frame, Request{fetch}; the reply
 * is one message of 1 + count frames: Reply{fetch=FetchReply}, then count
 * encoded SnapshotBatch frames. Each batch that decodes is handed to the
 * caller's fn, which owns it; one that does not is skipped, and the call
 * then returns SB_EPROTO after delivering the rest, so the caller knows
 * the page is incomplete (as it does when the frame count is not `count`).
 *
 * The socket and its context live only for the call: a fetch is rare
 * next to live traffic, and this keeps sb_fetch free of shared state, so
 * any thread may call it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "sbc_curve.h"
#include "sbc_internal.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

#define SBC_FETCH_REQUEST_ID 1 /* one request per socket */

static sb_err
s_send_request(void *sock, const sb_fetch_opts *o)
{
    Snapbus__Request req = SNAPBUS__REQUEST__INIT;
    Snapbus__Fetch f = SNAPBUS__FETCH__INIT;

    req.version = SB_PROTOCOL_VERSION;
    req.request_id = SBC_FETCH_REQUEST_ID;
    req.body_case = SNAPBUS__REQUEST__BODY_FETCH;
    req.fetch = &f;
    if (o->prefix != NULL)
        f.prefix = (char *)o->prefix; /* only read by pack */
    f.from_seq = o->from_seq;
    f.to_seq = o->to_seq;
    f.after_batch_id = o->after_batch_id;
    f.max_batches = o->max_batches;
    f.max_bytes = o->max_bytes;
    f.exact = o->exact != 0;
    f.headers_only = o->headers_only != 0;

    size_t len = snapbus__request__get_packed_size(&req);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return SB_ENOMEM;
    snapbus__request__pack(&req, buf);
    int n = zmq_send(sock, buf, len, 0);
    free(buf);
    return n < 0 ? SB_ESYS : SB_OK;
}

static void
s_drain_frames(void *sock, zmq_msg_t *m)
{
    while (zmq_msg_more(m)) {
        zmq_msg_close(m);
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) < 0)
            return;
    }
}

/* Reads the reply message whose first frame is here. */
static sb_err
s_read_reply(void *sock, sb_snapshot_fn fn, void *ctx, sb_fetch_info *info)
{
    sb_err rc = SB_OK;
    sbc_arena arena;
    zmq_msg_t m;
    Snapbus__Reply *rep;

    sbc_arena_init(&arena, 4096);
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        rc = SB_ESYS;
        goto out;
    }
    rep =
        snapbus__reply__unpack(&arena.pbc, zmq_msg_size(&m), zmq_msg_data(&m));
    if (rep == NULL || rep->version != SB_PROTOCOL_VERSION ||
        rep->request_id != SBC_FETCH_REQUEST_ID) {
        rc = SB_EPROTO;
        goto drain;
    }
    if (rep->body_case == SNAPBUS__REPLY__BODY_FETCH && rep->fetch != NULL) {
        /* Filled on refusals too: out of retention says where it starts. */
        info->last_batch_id = rep->fetch->last_batch_id;
        info->more = rep->fetch->more;
        info->retained_first_seq = rep->fetch->retained_first_seq;
        info->last_seq = rep->fetch->last_seq;
    } else if (rep->error == SNAPBUS__ERROR_CODE__ERR_NONE) {
        rc = SB_EPROTO;
        goto drain;
    }
    if (rep->error != SNAPBUS__ERROR_CODE__ERR_NONE) {
        rc = sbc_err_from_wire(rep->error);
        goto drain;
    }
    uint32_t want = rep->fetch->count, got = 0;
    while (zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            rc = SB_EPROTO;
            goto out;
        }
        sb_snapshot *b;
        got++;
        if (sb_snapshot_decode(&b, zmq_msg_data(&m), zmq_msg_size(&m)) !=
            SB_OK) {
            rc = SB_EPROTO; /* skip it, deliver the rest, then say so */
            continue;
        }
        if (fn != NULL)
            fn(b, ctx);
        else
            sb_snapshot_destroy(&b);
    }
    if (got != want)
        rc = SB_EPROTO;
    goto out;
drain:
    s_drain_frames(sock, &m);
out:
    zmq_msg_close(&m);
    sbc_arena_fini(&arena);
    return rc;
}

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
    sb_fetch_opts opts, *o = &opts;
    sb_fetch_info scratch;
    sb_err rc = SB_ESYS;
    void *zctx = NULL, *sock = NULL;
    int linger = 0;
    sbc_curve curve;

    if (query_endpoint == NULL || query_endpoint[0] == '\0')
        return SB_EINVAL;
    sb_fetch_opts_defaults(&opts);
    if (in != NULL && sbc_opts_take(&opts, sizeof opts, S_OPTS_V1, in) != SB_OK)
        return SB_EINVAL;
    if (info == NULL)
        info = &scratch;
    memset(info, 0, sizeof *info);
    if (sbc_curve_set(&curve, &o->curve) != SB_OK)
        return SB_EINVAL;
    uint64_t deadline = sbc_deadline(timeout_ms);

    if ((zctx = zmq_ctx_new()) == NULL ||
        (sock = zmq_socket(zctx, ZMQ_DEALER)) == NULL ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        sbc_curve_apply(sock, &curve) != SB_OK)
        goto out;
    if (zmq_connect(sock, query_endpoint) != 0) {
        rc = errno == EINVAL || errno == EPROTONOSUPPORT ? SB_EINVAL : SB_ESYS;
        goto out;
    }
    if ((rc = s_send_request(sock, o)) != SB_OK)
        goto out;
    for (;;) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, sbc_remaining_ms(deadline));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = SB_ESYS;
            break;
        }
        if (n == 0) {
            rc = SB_ETIMEDOUT;
            break;
        }
        rc = s_read_reply(sock, fn, ctx, info);
        break;
    }
out:
    sbc_curve_wipe(&curve);
    if (sock != NULL)
        zmq_close(sock);
    if (zctx != NULL)
        zmq_ctx_term(zctx);
    return rc;
}
