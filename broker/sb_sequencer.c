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
    sb_dedup *dedup; /* NULL: every valid event is new */
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
    sb_dedup_destroy(&self->dedup);
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

void
sb_sequencer_set_dedup(sb_sequencer *s, sb_dedup **dp)
{
    sb_dedup_destroy(&s->dedup);
    s->dedup = *dp;
    *dp = NULL;
}

sb_err
sb_sequencer_assign(sb_sequencer *s, sb_req *req)
{
    return sb_sequencer_assign_at(s, req, 0);
}

sb_err
sb_sequencer_assign_at(sb_sequencer *s, sb_req *req, uint64_t now_ms)
{
    uint32_t gone = 0;

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
        if (s->dedup != NULL &&
            (ev->producer_id_len > 0 || ev->event_id_len > 0)) {
            sb_dedup_orig o = {0, 0};
            sb_dedup_verdict v = sb_dedup_check(s->dedup, ev, now_ms, &o);
            if (v == SB_DEDUP_DUPLICATE) {
                ev->status = SB_EDUP;
                ev->seq = o.seq;
                ev->agg_seq = o.agg_seq;
                gone++;
                continue;
            }
            if (v == SB_DEDUP_BEYOND) {
                ev->status = SB_EHORIZON;
                gone++;
                continue;
            }
        }
        s_agg *a = s_lookup(s, ev->agg, ev->agg_len);
        ev->seq = s->next_seq++;
        ev->agg_seq = ++a->last;
        /* A failure here only loses the index entry (counted): the event
         * is accepted either way, so the numbering stays gap-free. */
        if (s->dedup != NULL)
            (void) sb_dedup_record(s->dedup, ev, now_ms);
    }
    if (gone > 0) {
        req->naccepted -= gone;
        atomic_fetch_sub(&req->unpublished, gone);
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
        sb_reply_free(slot->ptr);
    slot->kind = 0;
}

/* Whether the sequencer answers this request itself. Duplicates and
 * horizon refusals are decided here, so a request they emptied has no
 * event left to carry it to a later stage; see docs/PUBLISHING.md. */
static int
s_reply_here(const sb_req *req, uint32_t refused_here)
{
    switch (req->ack) {
    case SB_ACK_SEQUENCED:
        return 1;
    case SB_ACK_PUBLISHED:
        /* No event of its own left to publish: the fan-out would never
         * see it. The originals' batch ids are not known here (0). */
        return req->naccepted == 0;
    case SB_ACK_NONE:
        /* Fire-and-forget hears of refusals only, and at most once: not
         * when the ingest already answered its invalid events. */
        return refused_here > 0 && !req->replied;
    default:
        /* Durable: the log store answers after the sync that follows it,
         * which covers every earlier seq, the originals' too. */
        return 0;
    }
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
    uint32_t before = req->naccepted;
    uint64_t now = a->args.clock.now_ms(a->args.clock.ctx);
    while (sb_sequencer_assign_at(a->core, req, now) != SB_OK) {
        /* Out of memory for a new aggregate: wait rather than lose it. */
        SB_LOG(SB_LOG_ERR, "sequencer.nomem", "request=%llu",
               (unsigned long long) req->request_id);
        poll(NULL, 0, 10);
    }
    atomic_store(&a->last_seq, sb_sequencer_last_seq(a->core));
    uint32_t refused_here = 0;
    if (req->naccepted != before)
        for (uint32_t i = 0; i < req->nevents; i++)
            refused_here += req->ev[i].status == SB_EHORIZON;
    if (s_reply_here(req, refused_here)) {
        sb_reply *rp;
        while (sb_reply_from_req(&rp, req) != SB_OK)
            poll(NULL, 0, 10);
        if (req->ack == SB_ACK_NONE)
            /* As every fire-and-forget reply: accepted events show seq 0
             * (PROTOCOL.md 5.5), whichever stage sends it. */
            for (uint32_t i = 0; i < rp->n; i++)
                if (rp->r[i].status == SB_OK)
                    rp->r[i].seq = rp->r[i].agg_seq = 0;
        a->parked_reply = (sb_item){SB_ITEM_REPLY, rp};
    }
    if (req->naccepted == 0 && req->ack != SB_ACK_DURABLE)
        sb_req_unref(req); /* nothing new in it: it ends here */
    else
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

    if (a == NULL) {
        sb_dedup *d = args->dedup;
        sb_dedup_destroy(&d);
        return SB_ENOMEM;
    }
    a->args = *args;
    a->args.dedup = NULL;
    if (a->args.clock.now_ms == NULL)
        a->args.clock = sb_clock_system();
    sb_dedup *d = args->dedup;
    if ((rc = sb_sequencer_new(&a->core, args->next_seq)) != SB_OK) {
        sb_dedup_destroy(&d);
        goto fail;
    }
    if (d != NULL)
        sb_sequencer_set_dedup(a->core, &d);
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
