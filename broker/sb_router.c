/* Batch router: owns the open batches and decides which batch each
 * sequenced event joins. The rules are in sb_router.h and, for users, in
 * docs/BATCHING.md.
 *
 * Core (sb_router_*), plain functions on one struct, time as an argument:
 * - aggregates: an sb_map from name to s_agg, never freed before the router
 *   (it remembers the last seq flushed per topic, the highest source_pos
 *   and the cached delay). The last one looked up is cached, since
 *   consecutive events are usually of the same aggregate.
 * - open batches: s_open wrappers from a pool of max_open_batches, so
 *   opening a batch allocates only its sb_batch. They sit on a list in open
 *   order (flush_all is oldest first) and delay-0 ones also on a second
 *   list that sb_router_end_request empties. A batch's timelock key is
 *   counter * pool + slot, so a DUE finds its wrapper in O(1) and a stale
 *   DUE (the batch closed early) finds the slot holding another key.
 * - seq index: which open batch holds seq X, for caused_by. Entries are
 *   removed when their batch closes. Seqs arrive in order, so it is paged:
 *   an sb_map from seq / S_PAGE to a page of S_PAGE slots, with the last
 *   page cached. Consecutive events then touch the same page and add()
 *   rarely hashes at all. A map keyed by each seq cost a cache miss per
 *   insert and per delete: on a 100-aggregate mix the core ran at 3-5 M
 *   events/s with it and 8-10 M with pages.
 *   A page is freed when its last open event closes, so the memory follows
 *   the events held open.
 * - invariant: an aggregate's events in open batches are all in one batch,
 *   s_agg.cur. That is what keeps every aggregate in seq order: its next
 *   batch can only open once cur has flushed.
 * - outboxes: flushed batches (sb_batch *, in flush order) and timelock
 *   commands, two rings. The batch ring always has room for every open
 *   batch, so closing (on a DUE, at end_request, at shutdown) never has to
 *   allocate; add() reserves before it changes anything.
 * Ownership: an open batch is the router's; a batch in the outbox is the
 * router's until sb_router_take_batch hands it over. Each batched event
 * holds a reference on its request (sb_batch_push).
 *
 * Shell (sb_router_actor_*): one thread, see the comment above s_run. */
#include "sb_router.h"

#include <assert.h>
#include <errno.h>
#include <fnmatch.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_actor.h"
#include "sb_log.h"
#include "sb_map.h"

/* The pool is allocated up front: keep a typo in the config from asking
 * for gigabytes. */
#define S_MAX_OPEN_BATCHES (1u << 22)

typedef struct s_agg s_agg;
typedef struct s_open s_open;

struct s_agg {
    s_open *cur;         /* open batch holding our events, or NULL */
    s_agg *next_member;  /* in cur->members */
    uint64_t last_seq;   /* last seq of the last batch flushed on our topic */
    uint64_t source_pos; /* highest seen, if has_source_pos */
    uint8_t has_source_pos;
    uint32_t delay_ms;
    uint32_t len;
    char name[]; /* the aggs map's key bytes */
};

struct s_open {
    sb_batch *b; /* NULL while the wrapper is free */
    s_agg *owner;
    s_agg *members;        /* every aggregate whose cur is this batch */
    s_open *prev, *next;   /* open list, oldest first */
    s_open *iprev, *inext; /* delay-0 list */
    s_open *free_next;
    uint8_t armed;     /* the timelock was (or will be) told about it */
    uint8_t immediate; /* on the delay-0 list */
};

/* A FIFO of fixed-size items that can also push back at the front (for
 * untake). */
typedef struct {
    unsigned char *buf;
    size_t item;
    size_t cap;
    size_t head;
    size_t count;
} s_ring;

#define S_PAGE_BITS 5
#define S_PAGE (1u << S_PAGE_BITS)
#define S_MAX_FREE_PAGES 1024

typedef struct s_page s_page;
struct s_page {
    uint64_t no;   /* seq >> S_PAGE_BITS; the pages map's key bytes */
    uint32_t live; /* non-NULL slots */
    s_page *next_free;
    s_open *slot[S_PAGE];
};

struct sb_router {
    sb_router_config cfg;
    sb_map *aggs;
    sb_map *pages; /* seq index: page number → s_page */
    s_page *last_page;
    s_page *free_pages; /* kept for reuse, up to S_MAX_FREE_PAGES */
    size_t nfree_pages;
    s_agg *last_agg;
    s_open *pool; /* max_open_batches wrappers */
    s_open *free;
    s_open *oldest, *newest;
    s_open *imm_first, *imm_last;
    uint64_t opened; /* batches opened so far, for keys */
    uint64_t next_id;
    s_ring batches; /* sb_batch *, flush order */
    s_ring timers;  /* sb_timer_cmd */
    sb_router_stats st;
};

/* ---- config ----------------------------------------------------------- */

void
sb_router_config_defaults(sb_router_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->default_delay_ms = 100;
    cfg->max_batch_events = 1000;
    cfg->max_batch_bytes = 1u << 20;
    cfg->max_open_batches = 4096;
    cfg->max_open_bytes = 64u << 20;
}

sb_err
sb_router_config_check(const sb_router_config *cfg, char *why, size_t n)
{
    const char *msg = NULL;
    uint32_t bad = 0;

    if (cfg->nrules > SB_MAX_DELAY_RULES)
        msg = "too many delay rules";
    for (uint32_t i = 0; msg == NULL && i < cfg->nrules; i++) {
        size_t len = strnlen(cfg->rules[i].pattern, SB_MAX_PATTERN);
        if (len == 0 || len == SB_MAX_PATTERN) {
            msg = "delay rule pattern empty or too long";
            bad = i;
        }
    }
    if (msg == NULL && cfg->max_batch_events == 0)
        msg = "max_batch_events must be at least 1";
    if (msg == NULL && cfg->max_batch_bytes == 0)
        msg = "max_batch_bytes must be at least 1";
    if (msg == NULL && cfg->max_open_batches == 0)
        msg = "max_open_batches must be at least 1";
    if (msg == NULL && cfg->max_open_batches > S_MAX_OPEN_BATCHES)
        msg = "max_open_batches too large";
    if (msg == NULL && cfg->max_open_bytes == 0)
        msg = "max_open_bytes must be at least 1";
    if (msg == NULL)
        return SB_OK;
    if (why != NULL && n > 0) {
        if (strncmp(msg, "delay rule", 10) == 0)
            snprintf(why, n, "%s (rule %u)", msg, bad);
        else
            snprintf(why, n, "%s", msg);
    }
    return SB_EINVAL;
}

uint32_t
sb_router_config_delay(const sb_router_config *cfg, const char *agg, size_t len)
{
    char stackbuf[512];
    char *name = stackbuf;
    uint32_t delay = cfg->default_delay_ms;
    uint32_t i;

    /* An exact name wins over any glob, wherever it is in the list. */
    for (i = 0; i < cfg->nrules; i++) {
        const char *p = cfg->rules[i].pattern;
        if (strnlen(p, SB_MAX_PATTERN) == len && memcmp(p, agg, len) == 0)
            return cfg->rules[i].delay_ms;
    }
    if (cfg->nrules == 0)
        return delay;
    /* fnmatch wants a C string; names are not NUL-terminated on the wire.
     * This runs once per aggregate, not per event. */
    if (len >= sizeof stackbuf && (name = malloc(len + 1)) == NULL)
        return delay;
    memcpy(name, agg, len);
    name[len] = '\0';
    for (i = 0; i < cfg->nrules; i++) {
        if (fnmatch(cfg->rules[i].pattern, name, 0) == 0) {
            delay = cfg->rules[i].delay_ms;
            break;
        }
    }
    if (name != stackbuf)
        free(name);
    return delay;
}

/* ---- rings ------------------------------------------------------------ */

static sb_err
s_ring_init(s_ring *q, size_t item, size_t cap)
{
    q->item = item;
    q->cap = cap;
    q->head = q->count = 0;
    q->buf = calloc(cap, item);
    return q->buf == NULL ? SB_ENOMEM : SB_OK;
}

/* Makes room for `more` items; the only step that can fail. */
static sb_err
s_ring_reserve(s_ring *q, size_t more)
{
    size_t cap = q->cap;
    unsigned char *buf;

    if (q->count + more <= q->cap)
        return SB_OK;
    while (cap < q->count + more)
        cap *= 2;
    if ((buf = malloc(cap * q->item)) == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < q->count; i++)
        memcpy(buf + i * q->item, q->buf + ((q->head + i) % q->cap) * q->item,
               q->item);
    free(q->buf);
    q->buf = buf;
    q->cap = cap;
    q->head = 0;
    return SB_OK;
}

static void
s_ring_push(s_ring *q, const void *x)
{
    assert(q->count < q->cap); /* reserved by the caller */
    memcpy(q->buf + ((q->head + q->count) % q->cap) * q->item, x, q->item);
    q->count++;
}

static void
s_ring_push_front(s_ring *q, const void *x)
{
    assert(q->count < q->cap);
    q->head = (q->head + q->cap - 1) % q->cap;
    memcpy(q->buf + q->head * q->item, x, q->item);
    q->count++;
}

static sb_err
s_ring_pop(s_ring *q, void *x)
{
    if (q->count == 0)
        return SB_EAGAIN;
    memcpy(x, q->buf + q->head * q->item, q->item);
    q->head = (q->head + 1) % q->cap;
    q->count--;
    return SB_OK;
}

/* The last item pushed, or NULL. */
static void *
s_ring_back(s_ring *q)
{
    if (q->count == 0)
        return NULL;
    return q->buf + ((q->head + q->count - 1) % q->cap) * q->item;
}

/* ---- new / destroy ---------------------------------------------------- */

sb_err
sb_router_new(sb_router **out, const sb_router_config *cfg)
{
    sb_router *self;
    sb_err rc = SB_ENOMEM;
    char why[128];

    if ((rc = sb_router_config_check(cfg, why, sizeof why)) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "router.config", "why=\"%s\"", why);
        return rc;
    }
    if ((self = calloc(1, sizeof *self)) == NULL)
        return SB_ENOMEM;
    self->cfg = *cfg;
    self->next_id = 1;
    rc = SB_ENOMEM;
    if ((self->pool = calloc(cfg->max_open_batches, sizeof *self->pool)) ==
        NULL)
        goto fail;
    for (uint32_t i = cfg->max_open_batches; i-- > 0;) {
        self->pool[i].free_next = self->free;
        self->free = &self->pool[i];
    }
    if ((rc = sb_map_new(&self->aggs, 1024)) != SB_OK ||
        (rc = sb_map_new(&self->pages, 1024)) != SB_OK ||
        (rc = s_ring_init(&self->batches, sizeof(sb_batch *),
                          (size_t) cfg->max_open_batches + 1)) != SB_OK ||
        (rc = s_ring_init(&self->timers, sizeof(sb_timer_cmd),
                          (size_t) cfg->max_open_batches + 2)) != SB_OK)
        goto fail;
    *out = self;
    return SB_OK;
fail:
    sb_router_destroy(&self);
    return rc;
}

void
sb_router_set_next_batch_id(sb_router *r, uint64_t id)
{
    r->next_id = id;
}

static void
s_free_agg(void *value, void *ctx)
{
    (void) ctx;
    free(value);
}

static void
s_free_page(void *value, void *ctx)
{
    (void) ctx;
    free(value);
}

/* ---- seq index -------------------------------------------------------- */

static s_page *
s_page_find(sb_router *r, uint64_t no)
{
    s_page *p = r->last_page;

    if (p != NULL && p->no == no)
        return p;
    if ((p = sb_map_get(r->pages, &no, sizeof no)) != NULL)
        r->last_page = p;
    return p;
}

static s_open *
s_seq_get(sb_router *r, uint64_t seq)
{
    s_page *p = s_page_find(r, seq >> S_PAGE_BITS);

    return p != NULL ? p->slot[seq & (S_PAGE - 1)] : NULL;
}

static sb_err
s_seq_put(sb_router *r, uint64_t seq, s_open *o)
{
    uint64_t no = seq >> S_PAGE_BITS;
    s_page *p = s_page_find(r, no);
    s_open **slot;

    if (p == NULL) {
        if ((p = r->free_pages) != NULL) {
            r->free_pages = p->next_free;
            r->nfree_pages--;
        } else if ((p = malloc(sizeof *p)) == NULL) {
            return SB_ENOMEM;
        }
        memset(p, 0, sizeof *p);
        p->no = no;
        if (sb_map_put(r->pages, &p->no, sizeof p->no, p) != SB_OK) {
            free(p);
            return SB_ENOMEM;
        }
        r->last_page = p;
    }
    slot = &p->slot[seq & (S_PAGE - 1)];
    p->live += *slot == NULL;
    *slot = o;
    return SB_OK;
}

static void
s_seq_del(sb_router *r, uint64_t seq)
{
    s_page *p = s_page_find(r, seq >> S_PAGE_BITS);
    s_open **slot;

    if (p == NULL || *(slot = &p->slot[seq & (S_PAGE - 1)]) == NULL)
        return;
    *slot = NULL;
    if (--p->live > 0)
        return;
    sb_map_del(r->pages, &p->no, sizeof p->no);
    if (r->last_page == p)
        r->last_page = NULL;
    if (r->nfree_pages < S_MAX_FREE_PAGES) {
        p->next_free = r->free_pages;
        r->free_pages = p;
        r->nfree_pages++;
    } else {
        free(p);
    }
}

void
sb_router_destroy(sb_router **rp)
{
    sb_router *self = *rp;
    sb_batch *b;

    if (self == NULL)
        return;
    for (s_open *o = self->oldest; o != NULL; o = o->next)
        sb_batch_destroy(&o->b);
    if (self->batches.buf != NULL)
        while (s_ring_pop(&self->batches, &b) == SB_OK)
            sb_batch_destroy(&b);
    if (self->aggs != NULL)
        sb_map_each(self->aggs, s_free_agg, NULL);
    sb_map_destroy(&self->aggs);
    if (self->pages != NULL)
        sb_map_each(self->pages, s_free_page, NULL);
    sb_map_destroy(&self->pages);
    while (self->free_pages != NULL) {
        s_page *p = self->free_pages;
        self->free_pages = p->next_free;
        free(p);
    }
    free(self->batches.buf);
    free(self->timers.buf);
    free(self->pool);
    free(self);
    *rp = NULL;
}

/* ---- batches ---------------------------------------------------------- */

static void
s_timer_push(sb_router *r, uint32_t op, uint64_t key, uint64_t deadline_ms)
{
    sb_timer_cmd c = {op, key, deadline_ms};
    sb_timer_cmd *last;

    /* A batch that closes before its ARM left needs neither: take the ARM
     * back instead of sending ARM then DISARM. */
    if (op == SB_TIMER_DISARM && (last = s_ring_back(&r->timers)) != NULL &&
        last->op == SB_TIMER_ARM && last->key == key) {
        r->timers.count--;
        return;
    }
    s_ring_push(&r->timers, &c);
}

/* Moves an open batch to the outbox, filling what is known only now.
 * Cannot fail: the batch ring has room for every open batch. */
static void
s_close(sb_router *r, s_open *o, sb_close_reason reason, int disarm)
{
    sb_batch *b = o->b;
    s_agg *owner = o->owner;

    if (o->prev != NULL)
        o->prev->next = o->next;
    else
        r->oldest = o->next;
    if (o->next != NULL)
        o->next->prev = o->prev;
    else
        r->newest = o->prev;
    if (o->immediate) {
        if (o->iprev != NULL)
            o->iprev->inext = o->inext;
        else
            r->imm_first = o->inext;
        if (o->inext != NULL)
            o->inext->iprev = o->iprev;
        else
            r->imm_last = o->iprev;
    }
    /* From now on these aggregates' events go to a batch that flushes
     * after this one: late is never lost, and order holds. */
    for (s_agg *a = o->members, *next; a != NULL; a = next) {
        next = a->next_member;
        a->cur = NULL;
        a->next_member = NULL;
    }
    for (uint32_t i = 0; i < b->n; i++)
        s_seq_del(r, b->ev[i]->seq);
    if (disarm && o->armed)
        s_timer_push(r, SB_TIMER_DISARM, b->key, 0);

    b->id = r->next_id++;
    b->timestamp_ms = sb_clock_wall_ms();
    b->prev_last_seq = owner->last_seq;
    owner->last_seq = b->ev[b->n - 1]->seq;
    b->source_pos = owner->source_pos;
    b->has_source_pos = owner->has_source_pos;
    b->close_reason = (uint8_t) reason;
    /* Open batches hold the only seqs routed but not flushed, and the
     * oldest open one the lowest of them (events are routed in seq order).
     * With none open, this batch's last seq + 1 is a safe lower bound. */
    b->low_seq = r->oldest != NULL && r->oldest->b->n > 0
                     ? r->oldest->b->ev[0]->seq
                     : b->ev[b->n - 1]->seq + 1;
    s_ring_push(&r->batches, &b);

    r->st.batches++;
    r->st.by_reason[reason]++;
    r->st.open_batches--;
    r->st.open_bytes -= b->bytes;
    *o = (s_open){.free_next = r->free};
    r->free = o;
}

static void
s_close_immediate(sb_router *r)
{
    while (r->imm_first != NULL)
        s_close(r, r->imm_first, SB_CLOSE_IMMEDIATE, 0);
}

static s_agg *
s_agg_find(sb_router *r, const sb_event *ev)
{
    s_agg *a = r->last_agg;

    if (a != NULL && a->len == ev->agg_len &&
        memcmp(a->name, ev->agg, ev->agg_len) == 0)
        return a;
    if ((a = sb_map_get(r->aggs, ev->agg, ev->agg_len)) != NULL)
        r->last_agg = a;
    return a;
}

static sb_err
s_agg_new(sb_router *r, const sb_event *ev, s_agg **out)
{
    s_agg *a = calloc(1, sizeof *a + ev->agg_len + 1);

    if (a == NULL)
        return SB_ENOMEM;
    memcpy(a->name, ev->agg, ev->agg_len);
    a->len = ev->agg_len;
    a->delay_ms = sb_router_config_delay(&r->cfg, a->name, a->len);
    if (sb_map_put(r->aggs, a->name, a->len, a) != SB_OK) {
        free(a);
        return SB_ENOMEM;
    }
    r->st.aggregates++;
    r->last_agg = a;
    *out = a;
    return SB_OK;
}

sb_err
sb_router_set_agg(sb_router *r, const char *agg, uint32_t len,
                  uint64_t last_seq, uint64_t source_pos, int has_source_pos)
{
    sb_event ev = {.agg = agg, .agg_len = len};
    s_agg *a = s_agg_find(r, &ev);
    sb_err rc;

    if (a == NULL && (rc = s_agg_new(r, &ev, &a)) != SB_OK)
        return rc;
    a->last_seq = last_seq;
    a->source_pos = source_pos;
    a->has_source_pos = has_source_pos != 0;
    return SB_OK;
}

/* The open batch ev must join, or NULL for "open a new one". Sets
 * *via_cause when it is a join through caused_by. */
static s_open *
s_target(sb_router *r, const s_agg *a, const sb_event *ev, int *via_cause)
{
    s_open *cur = a != NULL ? a->cur : NULL;
    s_open *cause;

    *via_cause = 0;
    if (ev->caused_by != 0 && (cause = s_seq_get(r, ev->caused_by)) != NULL) {
        /* Join the cause only if that keeps our aggregate in one open
         * batch; otherwise our earlier events would flush in one batch and
         * this one in another, and a subscriber could see them out of
         * order. */
        if (cur == NULL) {
            *via_cause = 1;
            return cause;
        }
        if (cur == cause)
            return cur;
    }
    return cur;
}

static int
s_must_wait(const sb_router *r, const s_open *target)
{
    if (r->st.open_bytes >= r->cfg.max_open_bytes)
        return 1;
    return target == NULL && r->st.open_batches >= r->cfg.max_open_batches;
}

/* Links a new open batch; the wrapper comes from the pool (there is one:
 * open_batches < max_open_batches was checked). */
static s_open *
s_open_batch(sb_router *r, s_agg *a, sb_batch *b, uint64_t now_ms)
{
    s_open *o = r->free;
    uint64_t slot = (uint64_t) (o - r->pool);

    r->free = o->free_next;
    *o = (s_open){.b = b, .owner = a, .prev = r->newest};
    if (r->newest != NULL)
        r->newest->next = o;
    else
        r->oldest = o;
    r->newest = o;
    b->key = r->opened++ * r->cfg.max_open_batches + slot;
    b->opened_ms = now_ms;
    b->deadline_ms = now_ms + a->delay_ms;
    if (a->delay_ms == 0) {
        o->immediate = 1;
        o->iprev = r->imm_last;
        if (r->imm_last != NULL)
            r->imm_last->inext = o;
        else
            r->imm_first = o;
        r->imm_last = o;
    } else {
        o->armed = 1;
        s_timer_push(r, SB_TIMER_ARM, b->key, b->deadline_ms);
    }
    r->st.open_batches++;
    return o;
}

sb_err
sb_router_add(sb_router *r, sb_event *ev, uint64_t now_ms)
{
    s_agg *a = s_agg_find(r, ev);
    s_open *o;
    sb_batch *b, *fresh = NULL;
    int via_cause;
    sb_err rc;

    o = s_target(r, a, ev, &via_cause);
    if (s_must_wait(r, o)) {
        /* Delay-0 batches wait only for the end of their request, which
         * cannot come while this event waits: flush them now rather than
         * wait forever (they were due at the end of the request anyway).
         * Beyond that, an EAGAIN leaves everything as it was. */
        if (r->imm_first == NULL) {
            r->st.waits++;
            return SB_EAGAIN;
        }
        s_close_immediate(r);
        o = s_target(r, a, ev, &via_cause);
        if (s_must_wait(r, o)) {
            r->st.waits++;
            return SB_EAGAIN;
        }
    }
    /* Everything that can fail comes before the first change. */
    if ((rc = s_ring_reserve(&r->timers, 2)) != SB_OK)
        return rc;
    if (o == NULL &&
        (rc = s_ring_reserve(&r->batches, r->st.open_batches + 1)) != SB_OK)
        return rc;
    if (a == NULL && (rc = s_agg_new(r, ev, &a)) != SB_OK)
        return rc;
    if (o == NULL && (rc = sb_batch_new(&fresh, a->name, a->len)) != SB_OK)
        return rc;
    b = o != NULL ? o->b : fresh;
    if ((rc = sb_batch_push(b, ev)) != SB_OK) {
        sb_batch_destroy(&fresh);
        return rc;
    }
    if (o == NULL)
        o = s_open_batch(r, a, b, now_ms);
    if ((rc = s_seq_put(r, ev->seq, o)) != SB_OK) {
        /* Rare: tell no one where it is; caused_by on it will open the
         * next batch instead of joining. Order and delivery still hold. */
        SB_LOG(SB_LOG_WARN, "router.seq_index", "seq=%llu err=%s",
               (unsigned long long) ev->seq, sb_strerror(rc));
    }
    if (a->cur != o) {
        a->cur = o;
        a->next_member = o->members;
        o->members = a;
        if (via_cause)
            r->st.caused_by_joins++;
    }
    ev->joined = a != o->owner;
    if (a == o->owner && ev->agg_seq > b->agg_last_seq)
        b->agg_last_seq = ev->agg_seq;
    if (ev->has_source_pos &&
        (!a->has_source_pos || ev->source_pos > a->source_pos)) {
        a->source_pos = ev->source_pos;
        a->has_source_pos = 1;
    }
    r->st.events++;
    r->st.open_bytes += sb_event_size(ev);

    if (b->n >= r->cfg.max_batch_events)
        s_close(r, o, SB_CLOSE_MAX_EVENTS, 1);
    else if (b->bytes >= r->cfg.max_batch_bytes)
        s_close(r, o, SB_CLOSE_MAX_BYTES, 1);
    return SB_OK;
}

void
sb_router_end_request(sb_router *r, uint64_t now_ms)
{
    (void) now_ms;
    s_close_immediate(r);
}

void
sb_router_due(sb_router *r, uint64_t key, uint64_t now_ms)
{
    s_open *o = &r->pool[key % r->cfg.max_open_batches];

    (void) now_ms;
    /* A DUE can cross a DISARM on the links: the batch closed early and
     * the slot is free or holds a newer batch. */
    if (o->b == NULL || o->b->key != key)
        return;
    o->armed = 0;
    s_close(r, o, SB_CLOSE_DELAY, 0);
}

void
sb_router_flush_all(sb_router *r, uint64_t now_ms)
{
    (void) now_ms;
    /* No DISARMs: the timelock is told EOF next, and a DUE for a flushed
     * batch is ignored anyway. */
    while (r->oldest != NULL)
        s_close(r, r->oldest, SB_CLOSE_SHUTDOWN, 0);
}

sb_err
sb_router_take_batch(sb_router *r, sb_batch **out)
{
    return s_ring_pop(&r->batches, out);
}

sb_err
sb_router_take_timer(sb_router *r, sb_timer_cmd *out)
{
    return s_ring_pop(&r->timers, out);
}

void
sb_router_untake_batch(sb_router *r, sb_batch *b)
{
    /* The take left a free slot, so this cannot need to grow. */
    s_ring_push_front(&r->batches, &b);
}

void
sb_router_untake_timer(sb_router *r, const sb_timer_cmd *cmd)
{
    s_ring_push_front(&r->timers, cmd);
}

void
sb_router_stats_get(const sb_router *r, sb_router_stats *st)
{
    *st = r->st;
}

static int
s_outbox_empty(const sb_router *r)
{
    return r->batches.count == 0 && r->timers.count == 0;
}

/* ---- actor shell ------------------------------------------------------ */

struct sb_router_actor {
    sb_actor *actor;
    sb_router *r;
    sb_clock clock;
    sb_link *in;
    sb_link *due_in;
    sb_link *timer_out;
    sb_link *out;
    /* Owned by the thread while it runs. */
    sb_req *req;  /* the request being batched */
    uint32_t idx; /* its next event */
    int waiting;  /* add() answered EAGAIN: retry after a DUE */
    int nomem;    /* add() failed to allocate: retry after a pause */
    int eof;      /* SB_ITEM_EOF read and flush_all done */
    int timer_eof_sent;
    uint64_t parks;
    /* Read from other threads. */
    pthread_mutex_t lock;
    sb_router_stats st;
};

/* Sends what the outboxes hold until a link refuses. Returns 1 if anything
 * moved. */
static int
s_forward(sb_router_actor *a)
{
    sb_timer_cmd c;
    sb_batch *b;
    int moved = 0;

    while (sb_router_take_timer(a->r, &c) == SB_OK) {
        if (sb_link_send(a->timer_out, &c) != SB_OK) {
            sb_router_untake_timer(a->r, &c); /* parked, not dropped */
            a->parks++;
            break;
        }
        moved = 1;
    }
    while (sb_router_take_batch(a->r, &b) == SB_OK) {
        sb_item it = {SB_ITEM_BATCH, b};
        if (sb_link_send(a->out, &it) != SB_OK) {
            sb_router_untake_batch(a->r, b);
            a->parks++;
            break;
        }
        moved = 1;
    }
    return moved;
}

/* Feeds the current request's events, from where it stopped. Returns 1 if
 * anything was added. */
static int
s_feed(sb_router_actor *a, uint64_t now)
{
    sb_req *req = a->req;
    int moved = 0;

    while (a->idx < req->nevents) {
        sb_event *ev = &req->ev[a->idx];
        if (ev->status == SB_OK) {
            sb_err rc = sb_router_add(a->r, ev, now);
            if (rc == SB_EAGAIN) {
                a->waiting = 1;
                return moved;
            }
            if (rc != SB_OK) {
                if (!a->nomem)
                    SB_LOG(SB_LOG_ERR, "router.add_failed", "seq=%llu err=%s",
                           (unsigned long long) ev->seq, sb_strerror(rc));
                a->nomem = 1;
                return moved;
            }
            a->nomem = 0;
            moved = 1;
        }
        a->idx++;
        /* Keep the outboxes bounded: with one stuck, stop here and go on
         * from the next event once it has drained. */
        if (!s_outbox_empty(a->r) && (s_forward(a), !s_outbox_empty(a->r)))
            return moved;
    }
    sb_router_end_request(a->r, now);
    a->req = NULL;
    a->idx = 0;
    sb_req_unref(req); /* the pipeline's reference; batches hold theirs */
    return 1;
}

/* Returns 1 when the actor should exit (EOF sent on `out`). */
static int
s_finish(sb_router_actor *a)
{
    if (!a->timer_eof_sent && a->r->timers.count == 0) {
        sb_timer_cmd c = {SB_TIMER_EOF, 0, 0};
        if (sb_link_send(a->timer_out, &c) == SB_OK)
            a->timer_eof_sent = 1;
    }
    if (a->timer_eof_sent && a->r->batches.count == 0) {
        sb_item it = {SB_ITEM_EOF, NULL};
        if (sb_link_send(a->out, &it) == SB_OK)
            return 1;
    }
    return 0;
}

static void
s_publish_stats(sb_router_actor *a)
{
    pthread_mutex_lock(&a->lock);
    sb_router_stats_get(a->r, &a->st);
    pthread_mutex_unlock(&a->lock);
}

/* Reads one item from `in`. Returns 1 if one was read. */
static int
s_read_in(sb_router_actor *a, uint64_t now)
{
    sb_item it;

    if (sb_link_recv(a->in, &it) != SB_OK)
        return 0;
    switch (it.kind) {
    case SB_ITEM_REQ:
        a->req = it.ptr;
        a->idx = 0;
        break;
    case SB_ITEM_EOF:
        sb_router_flush_all(a->r, now);
        a->eof = 1;
        SB_LOG(SB_LOG_INFO, "router.eof", "open_flushed=%llu parks=%llu",
               (unsigned long long) a->r->batches.count,
               (unsigned long long) a->parks);
        break;
    default:
        /* Not ours to free: the sequencer sends only REQ and EOF. */
        SB_LOG(SB_LOG_ERR, "router.bad_item", "kind=%u", it.kind);
        break;
    }
    return 1;
}

/* The loop. Each turn: commands, DUEs, forward the outboxes, then (only
 * with both outboxes empty and no wait pending) the current request or the
 * next item from `in`. It sleeps in poll only when a turn moved nothing.
 *
 * Why this cannot deadlock, and why nothing is dropped:
 * - Every send is non-blocking. A refused item stays in its outbox (or, for
 *   the EOF markers, in a flag) and the loop waits on that link's send_fd;
 *   nothing is ever thrown away.
 * - `due_in` is read on every turn, parked or not. The timelock is the only
 *   stage that sends to us and also waits on us (for timer_out); since it
 *   always reads timer_out even while a DUE is parked, and we always read
 *   due_in even while a batch or ARM is parked, neither can wait for the
 *   other in a cycle.
 * - We stop reading `in` while an outbox is non-empty or add() said
 *   EAGAIN: that is how the wait travels back to the sequencer. The EAGAIN
 *   clears by itself: every open batch is either armed (a DUE will come,
 *   and we read DUEs) or delay-0 (add() flushes those before it answers
 *   EAGAIN), so open batches and bytes always go down.
 * - `out` is drained by the publisher, which does not wait on us.
 * - A request is fed event by event; if an outbox fills mid-request we stop
 *   and continue from the next event later, so the outboxes stay bounded
 *   (batches: open + outbox <= max_open_batches, since a new batch opens
 *   only when the outbox is empty). */
static void
s_run(sb_actor *actor, void *args)
{
    sb_router_actor *a = args;

    sb_actor_ready(actor, SB_OK);
    for (;;) {
        uint64_t now = sb_clock_now(&a->clock);
        sb_timer_cmd due;
        int cmd, moved = 0;

        while (sb_actor_cmd_recv(actor, &cmd) == SB_OK)
            if (cmd == SB_CMD_STOP)
                goto out;
        while (sb_link_recv(a->due_in, &due) == SB_OK) {
            if (due.op == SB_TIMER_DUE)
                sb_router_due(a->r, due.key, now);
            a->waiting = 0;
            moved = 1;
        }
        moved |= s_forward(a);
        if (a->eof) {
            if (s_finish(a))
                goto out;
        } else if (s_outbox_empty(a->r) && !a->waiting) {
            if (a->req != NULL)
                moved |= s_feed(a, now);
            else
                moved |= s_read_in(a, now);
            moved |= s_forward(a);
        }
        if (moved) {
            s_publish_stats(a);
            continue;
        }

        int read_in = !a->eof && a->req == NULL && s_outbox_empty(a->r);
        int want_out = a->r->batches.count > 0 || (a->eof && a->timer_eof_sent);
        int want_timer =
            a->r->timers.count > 0 || (a->eof && !a->timer_eof_sent);
        struct pollfd p[5] = {
            {sb_actor_cmd_fd(actor), POLLIN, 0},
            {sb_link_recv_fd(a->due_in), POLLIN, 0},
            {sb_link_recv_fd(a->in), read_in ? POLLIN : 0, 0},
            {sb_link_send_fd(a->out), want_out ? POLLIN : 0, 0},
            {sb_link_send_fd(a->timer_out), want_timer ? POLLIN : 0, 0},
        };
        /* nomem: nothing to wake us, so retry after a pause. */
        if (poll(p, 5, a->nomem ? 10 : -1) < 0 && errno != EINTR) {
            SB_LOG(SB_LOG_ERR, "router.poll", "errno=%d", errno);
            goto out;
        }
        /* A request paused mid-way (outbox full) resumes at the top of
         * the loop once the outbox is empty. */
    }
out:
    s_publish_stats(a);
}

sb_err
sb_router_actor_new(sb_router_actor **out, const sb_router_actor_args *args)
{
    sb_router_actor *self;
    sb_err rc;

    if (args == NULL || args->in == NULL || args->due_in == NULL ||
        args->timer_out == NULL || args->out == NULL ||
        args->clock.now_ms == NULL)
        return SB_EINVAL;
    if ((self = calloc(1, sizeof *self)) == NULL)
        return SB_ENOMEM;
    self->clock = args->clock;
    self->in = args->in;
    self->due_in = args->due_in;
    self->timer_out = args->timer_out;
    self->out = args->out;
    pthread_mutex_init(&self->lock, NULL);
    if ((rc = sb_router_new(&self->r, &args->cfg)) != SB_OK)
        goto fail;
    sb_router_set_next_batch_id(
        self->r, args->first_batch_id != 0 ? args->first_batch_id : 1);
    if (args->restore != NULL &&
        (rc = args->restore(self->r, args->restore_ctx)) != SB_OK)
        goto fail;
    if ((rc = sb_actor_new(&self->actor, "router", s_run, self)) != SB_OK)
        goto fail;
    *out = self;
    return SB_OK;
fail:
    sb_router_destroy(&self->r);
    pthread_mutex_destroy(&self->lock);
    free(self);
    return rc;
}

void
sb_router_actor_destroy(sb_router_actor **ap)
{
    sb_router_actor *self = *ap;

    if (self == NULL)
        return;
    sb_actor_destroy(&self->actor); /* STOP + join; the thread is gone now */
    if (self->req != NULL)
        sb_req_unref(self->req);
    sb_router_destroy(&self->r);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *ap = NULL;
}

sb_err
sb_router_actor_wait(sb_router_actor *a, int timeout_ms)
{
    return sb_actor_wait(a->actor, timeout_ms);
}

void
sb_router_actor_stats(sb_router_actor *a, sb_router_stats *st)
{
    pthread_mutex_lock(&a->lock);
    *st = a->st;
    pthread_mutex_unlock(&a->lock);
}
