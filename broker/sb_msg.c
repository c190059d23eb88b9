#include "sb_msg.h"

#include <stdlib.h>
#include <string.h>

#include "sb_link.h"

sb_err
sb_req_new(sb_req **out, uint32_t nevents, size_t data_bytes, uint8_t **data)
{
    size_t head = sizeof(sb_req) + (size_t) nevents * sizeof(sb_event);
    sb_req *r = malloc(head + data_bytes);

    if (r == NULL)
        return SB_ENOMEM;
    memset(r, 0, head);
    atomic_init(&r->refs, 1); /* the creator's */
    atomic_init(&r->unpublished, 0);
    r->nevents = nevents;
    r->mem_bytes = head + data_bytes;
    for (uint32_t i = 0; i < nevents; i++)
        r->ev[i].req = r;
    *data = (uint8_t *) r + head;
    *out = r;
    return SB_OK;
}

void
sb_req_ref(sb_req *req)
{
    atomic_fetch_add_explicit(&req->refs, 1, memory_order_relaxed);
}

void
sb_req_unref(sb_req *req)
{
    if (atomic_fetch_sub_explicit(&req->refs, 1, memory_order_acq_rel) == 1) {
        if (req->credit != NULL)
            sb_credit_give(req->credit, req->charged);
        free(req);
    }
}

void
sb_req_charge(sb_req *req, struct sb_credit *credit, size_t bytes)
{
    req->credit = credit;
    req->charged = bytes;
    if (credit != NULL)
        sb_credit_take(credit, bytes);
}

sb_err
sb_batch_new(sb_batch **out, const char *agg, uint32_t agg_len)
{
    sb_batch *b = calloc(1, sizeof *b + agg_len + 1);

    if (b == NULL)
        return SB_ENOMEM;
    memcpy(b->agg, agg, agg_len);
    b->agg_len = agg_len;
    *out = b;
    return SB_OK;
}

sb_err
sb_batch_push(sb_batch *b, sb_event *ev)
{
    if (b->n == b->cap) {
        /* Small first: with batching delay 0 most batches hold one or two
         * events, and the memory budget charges every event for its share
         * of the array (sb_budget.h). */
        uint32_t cap = b->cap ? b->cap * 2 : 4;
        sb_event **ev2 = realloc(b->ev, cap * sizeof *ev2);
        if (ev2 == NULL)
            return SB_ENOMEM;
        b->ev = ev2;
        b->cap = cap;
    }
    sb_req_ref(ev->req);
    b->ev[b->n++] = ev;
    b->bytes += sb_event_size(ev);
    return SB_OK;
}

void
sb_batch_destroy(sb_batch **bp)
{
    sb_batch *b = *bp;

    if (b == NULL)
        return;
    for (uint32_t i = 0; i < b->n; i++)
        sb_req_unref(b->ev[i]->req);
    free(b->ev);
    free(b);
    *bp = NULL;
}

sb_err
sb_reply_from_req(sb_reply **out, const sb_req *req)
{
    size_t mem = sizeof(sb_reply) + (size_t) req->nevents * sizeof(sb_result);
    sb_reply *rp = malloc(mem);

    if (rp == NULL)
        return SB_ENOMEM;
    rp->credit = req->credit;
    rp->mem_bytes = mem;
    if (rp->credit != NULL)
        sb_credit_take(rp->credit, mem);
    rp->request_id = req->request_id;
    rp->recv_ns = req->recv_ns;
    rp->ack = req->ack;
    rp->delimiter = req->delimiter;
    rp->peer_len = req->peer_len;
    memcpy(rp->peer, req->peer, req->peer_len);
    rp->n = req->nevents;
    for (uint32_t i = 0; i < req->nevents; i++) {
        const sb_event *ev = &req->ev[i];
        const uint32_t lens[] = {0, ev->agg_len, ev->type_len,
                                 ev->event_id_len, ev->producer_id_len,
                                 ev->payload_len};
        rp->r[i] = (sb_result){ev->seq, ev->agg_seq, ev->batch_id, ev->status,
                               ev->why, ev->why_arg,
                               ev->why < 6 ? lens[ev->why] : 0};
    }
    *out = rp;
    return SB_OK;
}

void
sb_reply_free(sb_reply *rp)
{
    if (rp == NULL)
        return;
    if (rp->credit != NULL)
        sb_credit_give(rp->credit, rp->mem_bytes);
    free(rp);
}
