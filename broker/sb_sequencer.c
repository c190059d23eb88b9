#include "sb_sequencer.h"

#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sb_actor.h"
#include "sb_log.h"
#include "sb_map.h"

typedef struct {
    uint64_t last;
    uint32_t len;
    char name[]; /* the map's key */
} s_agg;

struct sb_sequencer {
    uint64_t next_seq;
    sb_map *aggs;
    s_agg *cached; /* consecutive events are usually of one aggregate */
};

sb_err
sb_sequencer_new(sb_sequencer **out, uint64_t next_seq)
{
    sb_sequencer *self = calloc(1, sizeof *self);

    if (self == NULL)
        return SB_ENOMEM;
    if (sb_map_new(&self->aggs, 1024) != SB_OK) {
        free(self);
        return SB_ENOMEM;
    }
    self->next_seq = next_seq ? next_seq : 1;
    *out = self;
    return SB_OK;
}

static void
s_free_agg(void *v, void *ctx)
{
    (void) ctx;
    free(v);
}

void
sb_sequencer_destroy(sb_sequencer **sp)
{
    sb_sequencer *self = *sp;

    if (self == NULL)
        return;
    if (self->aggs != NULL)
        sb_map_each(self->aggs, s_free_agg, NULL);
    sb_map_destroy(&self->aggs);
    free(self);
    *sp = NULL;
}

static s_agg *
s_lookup(sb_sequencer *s, const char *name, uint32_t len)
{
    s_agg *a = s->cached;

    if (a != NULL && a->len == len && memcmp(a->name, name, len) == 0)
        return a;
    if ((a = sb_map_get(s->aggs, name, len)) == NULL) {
        if ((a = malloc(sizeof *a + len + 1)) == NULL)
            return NULL;
        a->last = 0;
        a->len = len;
        memcpy(a->name, name, len);
        a->name[len] = 0;
        if (sb_map_put(s->aggs, a->name, len, a) != SB_OK) {
            free(a);
            return NULL;
        }
    }
    s->cached = a;
    return a;
}

sb_err
sb_sequencer_assign(sb_sequencer *s, sb_req *req)
{
    /* Look every aggregate up first, so a failed allocation leaves no
     * seq given out: the numbering stays gap-free. */
    for (uint32_t i = 0; i < req->nevents; i++)
        if (req->ev[i].status == SB_OK &&
            s_lookup(s, req->ev[i].agg, req->ev[i].agg_len) == NULL)
            return SB_ENOMEM;
    for (uint32_t i = 0; i < req->nevents; i++) {
        sb_event *ev = &req->ev[i];
        if (ev->status != SB_OK)
            continue;
        s_agg *a = s_lookup(s, ev->agg, ev->agg_len);
        ev->seq = s->next_seq++;
        ev->agg_seq = ++a->last;
    }
    return SB_OK;
}

uint64_t
sb_sequencer_last_seq(const sb_sequencer *s)
{
    return s->next_seq - 1;
}

uint64_t
sb_sequencer_aggregates(const sb_sequencer *s)
{
    return sb_map_size(s->aggs);
}

sb_err
sb_sequencer_set_agg(sb_sequencer *s, const char *agg, uint32_t len,
                     uint64_t last)
{
    s_agg *a = s_lookup(s, agg, len);

    if (a == NULL)
        return SB_ENOMEM;
    a->last = last;
    return SB_OK;
}

/* ---- actor shell ------------------------------------------------------- */

struct sb_sequencer_actor {
    sb_actor *actor;
    sb_sequencer_actor_args args;
    sb_sequencer *core;
    atomic_uint_fast64_t last_seq;
    sb_item parked_reply; /* kind 0: none */
    sb_item parked_fwd;
};

/* Sends a parked item if it can; 1 when the slot is free afterwards. */
static int
s_flush_slot(sb_link *l, sb_item *slot)
{
    if (slot->kind == 0)
        return 1;
    if (sb_link_send(l, slot) != SB_OK)
        return 0;
    slot->kind = 0;
    return 1;
}

static void
s_drop_slot(sb_item *slot)
{
    if (slot->kind == SB_ITEM_REQ)
        sb_req_unref(slot->ptr);
    else if (slot->kind == SB_ITEM_REPLY)
        free(slot->ptr);
    slot->kind = 0;
}

static void
s_handle(sb_sequencer_actor *a, sb_item *it)
{
    if (it->kind == SB_ITEM_EOF) {
        a->parked_reply = *it;
        a->parked_fwd = *it;
        return;
    }
    sb_req *req = it->ptr;
    while (sb_sequencer_assign(a->core, req) != SB_OK) {
        /* Out of memory for a new aggregate: wait rather than lose it. */
        SB_LOG(SB_LOG_ERR, "sequencer.nomem", "request=%llu",
               (unsigned long long) req->request_id);
        poll(NULL, 0, 10);
    }
    atomic_store(&a->last_seq, sb_sequencer_last_seq(a->core));
    if (req->ack == SB_ACK_SEQUENCED) {
        sb_reply *rp;
        while (sb_reply_from_req(&rp, req) != SB_OK)
            poll(NULL, 0, 10);
        a->parked_reply = (sb_item){SB_ITEM_REPLY, rp};
    }
    a->parked_fwd = *it;
}

static void
s_run(sb_actor *self, void *arg)
{
    sb_sequencer_actor *a = arg;
    int eof = 0;

    sb_actor_ready(self, SB_OK);
    while (!(eof && a->parked_reply.kind == 0 && a->parked_fwd.kind == 0)) {
        int free_r = s_flush_slot(a->args.reply_out, &a->parked_reply);
        int free_f = free_r && s_flush_slot(a->args.out, &a->parked_fwd);
        struct pollfd p[3] = {{sb_actor_cmd_fd(self), POLLIN, 0},
                              {-1, POLLIN, 0},
                              {-1, POLLIN, 0}};
        if (free_r && free_f && !eof) {
            /* Both slots free: take a run of input without polling. */
            sb_item it;
            int got = 0;
            while (got < 64 && sb_link_recv(a->args.in, &it) == SB_OK) {
                got++;
                eof = it.kind == SB_ITEM_EOF;
                s_handle(a, &it);
                if (!s_flush_slot(a->args.reply_out, &a->parked_reply) ||
                    !s_flush_slot(a->args.out, &a->parked_fwd) || eof)
                    break;
            }
            if (got > 0)
                continue; /* re-evaluate: something may be parked now */
            p[1].fd = sb_link_recv_fd(a->args.in);
        } else if (!free_r) {
            p[2].fd = sb_link_send_fd(a->args.reply_out);
        } else if (!free_f) {
            p[2].fd = sb_link_send_fd(a->args.out);
        }
        if (poll(p, 3, -1) > 0 && (p[0].revents & POLLIN)) {
            int cmd;
            if (sb_actor_cmd_recv(self, &cmd) == SB_OK && cmd == SB_CMD_STOP)
                break;
        }
    }
    s_drop_slot(&a->parked_reply);
    s_drop_slot(&a->parked_fwd);
}

sb_err
sb_sequencer_actor_new(sb_sequencer_actor **out,
                       const sb_sequencer_actor_args *args)
{
    sb_sequencer_actor *a = calloc(1, sizeof *a);
    sb_err rc;

    if (a == NULL)
        return SB_ENOMEM;
    a->args = *args;
    if ((rc = sb_sequencer_new(&a->core, args->next_seq)) != SB_OK)
        goto fail;
    if (args->restore != NULL &&
        (rc = args->restore(a->core, args->restore_ctx)) != SB_OK)
        goto fail;
    atomic_init(&a->last_seq, sb_sequencer_last_seq(a->core));
    if ((rc = sb_actor_new(&a->actor, "sequencer", s_run, a)) != SB_OK)
        goto fail;
    *out = a;
    return SB_OK;
fail:
    sb_sequencer_actor_destroy(&a);
    return rc;
}

void
sb_sequencer_actor_destroy(sb_sequencer_actor **ap)
{
    sb_sequencer_actor *a = *ap;

    if (a == NULL)
        return;
    sb_actor_destroy(&a->actor);
    sb_sequencer_destroy(&a->core);
    free(a);
    *ap = NULL;
}

uint64_t
sb_sequencer_actor_last_seq(sb_sequencer_actor *a)
{
    return atomic_load(&a->last_seq);
}

atomic_uint_fast64_t *
sb_sequencer_actor_last_seq_ref(sb_sequencer_actor *a)
{
    return &a->last_seq;
}
