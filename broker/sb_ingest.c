#include "sb_ingest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "sb_actor.h"
#include "sb_auth.h"
#include "sb_budget.h"
#include "sb_clock.h"
#include "sb_log.h"
#include "sb_metrics.h"
#include "sb_msg.h"
#include "sb_zmq.h"

struct sb_ingest {
    sb_actor *actor;
    sb_ingest_args args;
    char endpoint[256];
    void *sock;
    sb_ingest_stats st;
    sb_item pending[2]; /* FIFO of items refused by `out`: a request, EOF */
    int npending;
    int draining;
    int eofs; /* EOFs seen on the reply links */
    uint64_t lost_logged_ns;
    uint64_t refused_logged_ns;
    uint64_t refused_unlogged; /* refusals since the last ingest.refused */
};

#define S_MAX_READS 256 /* messages per wake-up, so replies are not starved */

static void
s_count_refusal(sb_ingest *in, sb_werr e)
{
    if ((unsigned) e < SB_WERR_COUNT)
        atomic_fetch_add(&in->st.refused_by[e], 1);
    /* Every refusal is counted, but logged at most once a second: a flood
     * of bad input must not become a flood of log lines. */
    uint64_t now = sb_clock_mono_ns();
    if (in->refused_logged_ns != 0 && now - in->refused_logged_ns < 1000000000ull) {
        in->refused_unlogged++;
        return;
    }
    SB_LOG(SB_LOG_WARN, "ingest.refused", "reason=%s suppressed=%llu",
           sb_metrics_reason_name(e), (unsigned long long) in->refused_unlogged);
    in->refused_logged_ns = now;
    in->refused_unlogged = 0;
}

static void
s_send(sb_ingest *in, const uint8_t *peer, size_t peer_len, int delim,
       uint8_t *body, size_t len)
{
    if (sb_zmq_route_reply(in->sock, peer, peer_len, delim, body, len, 0) == SB_OK) {
        atomic_fetch_add(&in->st.replies, 1);
        return;
    }
    /* The peer left or stopped reading its replies past its high-water
     * mark. A reply cannot wait without stalling every other publisher, so
     * it is counted; the publisher sees a timeout and may resend. */
    atomic_fetch_add(&in->st.replies_lost, 1);
    uint64_t now = sb_clock_mono_ns();
    if (now - in->lost_logged_ns > 1000000000ull) {
        in->lost_logged_ns = now;
        SB_LOG(SB_LOG_WARN, "ingest.reply_lost", "total=%llu",
               (unsigned long long) atomic_load(&in->st.replies_lost));
    }
}

static void
s_send_error(sb_ingest *in, const sb_zmq_env *env, uint64_t id, sb_werr e,
             const char *detail)
{
    uint8_t *buf;
    size_t len;

    s_count_refusal(in, e);
    if (sb_wire_encode_error(id, e, detail, &buf, &len) == SB_OK)
        s_send(in, env->peer, env->peer_len, env->delimiter, buf, len);
}

static void
s_send_reply(sb_ingest *in, sb_reply *rp)
{
    uint8_t *buf;
    size_t len;

    if (sb_wire_encode_publish_reply(rp, &buf, &len) == SB_OK)
        s_send(in, rp->peer, rp->peer_len, rp->delimiter, buf, len);
    if (rp->ack < 4 && rp->recv_ns != 0)
        sb_hist_observe_ns(&in->st.ack_latency[rp->ack], sb_clock_mono_ns() - rp->recv_ns);
}

/* Replies built here from a request that never went downstream. */
static void
s_reply_now(sb_ingest *in, sb_req *req)
{
    sb_reply *rp;

    if (sb_reply_from_req(&rp, req) == SB_OK) {
        s_send_reply(in, rp);
        sb_reply_free(rp);
    }
}

static void
s_hello(sb_ingest *in, const sb_zmq_env *env, uint64_t id)
{
    sb_hello_info h = {in->args.broker_name, in->args.limits,
                       in->args.last_seq ? atomic_load(in->args.last_seq) : 0,
                       in->args.last_batch_id ? atomic_load(in->args.last_batch_id) : 0,
                       in->args.epoch, 0};
    uint8_t *buf;
    size_t len;

    atomic_fetch_add(&in->st.hellos, 1);
    if (sb_wire_encode_hello_reply(id, &h, &buf, &len) == SB_OK)
        s_send(in, env->peer, env->peer_len, env->delimiter, buf, len);
}

static void
s_push(sb_ingest *in, sb_item it)
{
    if (in->npending == 0 && sb_link_send(in->args.out, &it) == SB_OK)
        return;
    if (in->npending == 0)
        atomic_fetch_add(&in->st.parked, 1);
    in->pending[in->npending++] = it;
}

static void
s_flush_pending(sb_ingest *in)
{
    while (in->npending > 0 && sb_link_send(in->args.out, &in->pending[0]) == SB_OK) {
        in->pending[0] = in->pending[1];
        in->npending--;
    }
}

static void
s_publish(sb_ingest *in, const sb_zmq_env *env, sb_wire_request *w)
{
    sb_req *req = w->req;
    uint32_t refused = req->nevents - req->naccepted;

    atomic_fetch_add(&in->st.requests, 1);
    if (in->draining) {
        sb_req_unref(req);
        s_send_error(in, env, w->request_id, SB_WERR_SHUTTING_DOWN,
                     "the broker is shutting down");
        return;
    }
    memcpy(req->peer, env->peer, env->peer_len);
    req->peer_len = (uint8_t) env->peer_len;
    req->delimiter = (uint8_t) env->delimiter;
    req->recv_ns = sb_clock_mono_ns();
    if (in->args.storage_full != NULL && atomic_load(in->args.storage_full)) {
        /* The log cannot take more: a typed refusal now, rather than a
         * publisher waiting on a pipeline that cannot move. The flag
         * clears by itself when the disk has room again. */
        for (uint32_t i = 0; i < req->nevents; i++)
            if (req->ev[i].status == SB_OK)
                req->ev[i].status = SB_ESTORAGE;
        req->naccepted = 0;
        refused = req->nevents;
    }
    if (refused > 0) {
        atomic_fetch_add(&in->st.events_refused, refused);
        for (uint32_t i = 0; i < req->nevents; i++)
            if (req->ev[i].status != SB_OK)
                s_count_refusal(in, sb_wire_err_of(req->ev[i].status));
    }
    /* Fire-and-forget publishers hear only of refusals, and at once;
     * acked ones hear everything in one reply from downstream. */
    if (req->naccepted == 0 || (refused > 0 && req->ack == SB_ACK_NONE)) {
        s_reply_now(in, req);
        req->replied = 1;
    }
    if (req->naccepted == 0) {
        sb_req_unref(req);
        return;
    }
    if (in->args.credit != NULL) {
        size_t charge = req->mem_bytes;
        for (uint32_t i = 0; i < req->nevents; i++)
            if (req->ev[i].status == SB_OK)
                charge += SB_BUDGET_EVENT_RESERVE(req->ev[i].agg_len);
        sb_req_charge(req, in->args.credit, charge);
    }
    atomic_init(&req->unpublished, req->naccepted);
    atomic_fetch_add(&in->st.events_in, req->naccepted);
    s_push(in, (sb_item){SB_ITEM_REQ, req});
}

static void
s_read_one(sb_ingest *in, zmq_msg_t *body, const sb_zmq_env *env)
{
    sb_wire_request w;

    if (env->frames != 1) {
        atomic_fetch_add(&in->st.bad_frames, 1);
        s_send_error(in, env, 0, SB_WERR_INVALID,
                     "a request is exactly one frame after the envelope");
        return;
    }
    if (sb_wire_decode_request(zmq_msg_data(body), zmq_msg_size(body),
                               &in->args.limits, &w) != SB_OK) {
        s_send_error(in, env, w.request_id, SB_WERR_INVALID, "out of memory");
        return;
    }
    if (w.err != SB_WERR_NONE) {
        atomic_fetch_add(&in->st.bad_requests, 1);
        s_send_error(in, env, w.request_id, w.err, w.detail);
        if (w.req != NULL)
            sb_req_unref(w.req);
        return;
    }
    switch (w.kind) {
    case SB_WREQ_HELLO:
        s_hello(in, env, w.request_id);
        break;
    case SB_WREQ_PUBLISH:
        s_publish(in, env, &w);
        break;
    default:
        atomic_fetch_add(&in->st.bad_requests, 1);
        s_send_error(in, env, w.request_id, SB_WERR_UNSUPPORTED,
                     "fetch is served on the query socket");
    }
}

/* May the socket be read? Not while a request is parked, nor while the
 * credit for requests in flight is used up; while draining always, since
 * every publish is then answered at once and nothing is kept. */
static int
s_may_read(sb_ingest *in)
{
    if (in->draining)
        return 1;
    return in->npending == 0 &&
           (in->args.credit == NULL || sb_credit_room(in->args.credit));
}

static void
s_read_socket(sb_ingest *in)
{
    for (int i = 0; i < S_MAX_READS && s_may_read(in); i++) {
        sb_zmq_env env;
        zmq_msg_t body;
        if (sb_zmq_route_recv(in->sock, &env, &body) != SB_OK)
            return;
        s_read_one(in, &body, &env);
        zmq_msg_close(&body);
    }
}

static void
s_read_replies(sb_ingest *in, sb_link *l)
{
    sb_item it;

    for (int i = 0; i < S_MAX_READS && sb_link_recv(l, &it) == SB_OK; i++) {
        if (it.kind == SB_ITEM_EOF) {
            in->eofs++;
            return;
        }
        s_send_reply(in, it.ptr);
        sb_reply_free(it.ptr);
    }
}

static void
s_run(sb_actor *self, void *arg)
{
    sb_ingest *in = arg;
    int zero = 0, one = 1, linger = 2000;
    int maxmsg_i;
    int64_t maxmsg;

    in->sock = zmq_socket(in->args.zmq_ctx, ZMQ_ROUTER);
    if (in->sock == NULL) {
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    /* ZeroMQ refuses (disconnects) past maxmsgsize, so the broker never
     * allocates for a giant message; between limits.max_message_bytes and
     * it the sender gets a typed ERR_TOO_LARGE. The budget sizes both
     * (docs/ARCHITECTURE.md, "Memory budget"). */
    maxmsg = in->args.maxmsgsize > 0
                 ? in->args.maxmsgsize
                 : (int64_t) in->args.limits.max_message_bytes * 2;
    maxmsg_i = in->args.rcvhwm > 0 ? in->args.rcvhwm : in->args.hwm;
    zmq_setsockopt(in->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(in->sock, ZMQ_RCVHWM, &maxmsg_i, sizeof maxmsg_i);
    maxmsg_i = in->args.sndhwm > 0 ? in->args.sndhwm : in->args.hwm;
    zmq_setsockopt(in->sock, ZMQ_SNDHWM, &maxmsg_i, sizeof maxmsg_i);
    zmq_setsockopt(in->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(in->sock, ZMQ_LINGER, &linger, sizeof linger);
    (void) zero;
    if (in->args.curve_secret != NULL &&
        sb_auth_server_socket(in->sock, in->args.curve_secret,
                              SB_ROLE_PUBLISH) != SB_OK) {
        zmq_close(in->sock);
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    if (sb_zmq_bind(in->sock, in->args.endpoint, in->endpoint,
                    sizeof in->endpoint) != SB_OK) {
        zmq_close(in->sock);
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    sb_actor_ready(self, SB_OK);

    while (in->eofs < (in->args.log_replies != NULL ? 3 : 2)) {
        int may_read = s_may_read(in);
        /* Out of credit: woken when freed requests give it back. */
        int credit_wait = !may_read && in->npending == 0;
        zmq_pollitem_t p[7] = {
            {NULL, sb_actor_cmd_fd(self), ZMQ_POLLIN, 0},
            {NULL, sb_link_recv_fd(in->args.seq_replies), ZMQ_POLLIN, 0},
            {NULL, sb_link_recv_fd(in->args.pub_replies), ZMQ_POLLIN, 0},
            /* The socket is read only while the sequencer has room and
             * the budget has credit: this is where backpressure reaches
             * the network. */
            {in->sock, 0, may_read ? ZMQ_POLLIN : 0, 0},
            {NULL, sb_link_send_fd(in->args.out), in->npending ? ZMQ_POLLIN : 0, 0},
            {NULL, in->args.log_replies ? sb_link_recv_fd(in->args.log_replies) : -1,
             in->args.log_replies ? ZMQ_POLLIN : 0, 0},
            {NULL, in->args.credit ? sb_credit_fd(in->args.credit) : -1,
             credit_wait ? ZMQ_POLLIN : 0, 0},
        };
        if (zmq_poll(p, 7, -1) < 0 && errno != EINTR)
            break;
        if (p[6].revents & ZMQ_POLLIN)
            sb_credit_clear(in->args.credit);
        if (p[0].revents & ZMQ_POLLIN) {
            int cmd;
            if (sb_actor_cmd_recv(self, &cmd) == SB_OK) {
                if (cmd == SB_CMD_STOP)
                    break;
                if (cmd == SB_CMD_DRAIN && !in->draining) {
                    in->draining = 1;
                    s_push(in, (sb_item){SB_ITEM_EOF, NULL});
                    SB_LOG(SB_LOG_INFO, "ingest.draining", "pending=%d", in->npending);
                }
            }
        }
        s_read_replies(in, in->args.seq_replies);
        s_read_replies(in, in->args.pub_replies);
        if (in->args.log_replies != NULL)
            s_read_replies(in, in->args.log_replies);
        s_flush_pending(in);
        s_read_socket(in);
    }
    for (int i = 0; i < in->npending; i++)
        if (in->pending[i].kind == SB_ITEM_REQ)
            sb_req_unref(in->pending[i].ptr);
    in->npending = 0;
    zmq_close(in->sock);
}

sb_err
sb_ingest_new(sb_ingest **out, const sb_ingest_args *args)
{
    sb_ingest *in = calloc(1, sizeof *in);
    sb_err rc;

    if (in == NULL)
        return SB_ENOMEM;
    in->args = *args;
    if ((rc = sb_actor_new(&in->actor, "ingest", s_run, in)) != SB_OK) {
        free(in);
        return rc;
    }
    *out = in;
    return SB_OK;
}

const char *
sb_ingest_endpoint(const sb_ingest *in)
{
    return in->endpoint;
}

const sb_ingest_stats *
sb_ingest_stats_get(const sb_ingest *in)
{
    return &in->st;
}

sb_err
sb_ingest_drain(sb_ingest *in, int timeout_ms)
{
    sb_err rc = sb_actor_send(in->actor, SB_CMD_DRAIN);

    if (rc != SB_OK)
        return rc;
    return sb_actor_wait(in->actor, timeout_ms);
}

void
sb_ingest_destroy(sb_ingest **inp)
{
    sb_ingest *in = *inp;

    if (in == NULL)
        return;
    sb_actor_destroy(&in->actor);
    free(in);
    *inp = NULL;
}
