/* sbc_sub: the subscriber's gap detection and fill (docs/SUBSCRIBING.md
 * has the design and the reasons; this comment is the map).
 *
 * State:
 *   last[A]   per aggregate: last_seq (and batch id) of the last batch
 *             queued for the application;
 *   start     live: C0, the newest batch id at hello (wanted: id > C0),
 *             and W0, hello's low_seq; resume: R (wanted: last_seq >= R);
 *   C         checked through: every wanted batch with id <= C has been
 *             queued (or reported lost). Raised only by a probe or the
 *             start-up catch-up, which look at every batch up to it;
 *   WC        a low_seq valid for C: every seq below it is in a batch
 *             with id <= C. max(start, WC) is the resume position;
 *   L         the highest batch id received live.
 *
 * Live batch B of aggregate A, prev = B.prev_last_seq:
 *   - A known: B.last_seq <= last[A] duplicate; prev == last[A] deliver;
 *     prev > last[A] gap: probe through B.id - 1 (fills every missed
 *     batch below B, of every aggregate), then deliver B or report what
 *     stayed missing as lost.
 *   - A unknown: prev == 0 or prev below the start's seq (W0 or R): its
 *     predecessor is before the start, deliver. Otherwise probe through
 *     B.id - 1 first: afterwards A is known (chain as above) or its
 *     predecessor is before the start.
 * Probe through T: for each subscription, fetch headers_only pages after
 * C; every header that is wanted and beyond last[] needs a fill; runs of
 * consecutive ones are fetched whole with after_batch_id = first - 1 and
 * max_batches = run length, so a mass gap costs one scan, not one per
 * aggregate. Then C = T. Periodic probes (T = L under load, the end of
 * the ring when idle) find a lost last batch, which no chain shows.
 *
 * Everything for the application goes through one FIFO: batches, loss
 * reports, position updates, the restart notice. A position update is
 * queued behind the batches it covers, so the position never runs ahead
 * of what the application has been given. The FIFO holds at most one
 * fetched page plus a few markers: the engine fetches nothing while it is
 * not empty.
 *
 * Memory: the FIFO and one page of headers (bounded by SBC_PAGE), one
 * parked live batch, and one map entry per aggregate seen. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbc_internal.h"
#include "sbc_sub.h"

/* ---- per-aggregate map: open addressing, FNV-1a ----------------------- */

typedef struct {
    char *name; /* NULL: empty slot */
    uint64_t hash;
    uint64_t last_seq;
    uint64_t last_bid;
} s_ent;

typedef struct {
    s_ent *v;
    size_t cap; /* power of two */
    size_t n;
} s_map;

static uint64_t
s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static s_ent *
s_map_get(s_map *m, const char *name)
{
    uint64_t h;

    if (m->n == 0)
        return NULL;
    h = s_hash(name);
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        s_ent *e = &m->v[i];
        if (e->name == NULL)
            return NULL;
        if (e->hash == h && strcmp(e->name, name) == 0)
            return e;
    }
}

static sb_err
s_map_grow(s_map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    s_ent *v = calloc(cap, sizeof *v);

    if (v == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        s_ent *e = &m->v[i];
        if (e->name == NULL)
            continue;
        size_t j = e->hash & (cap - 1);
        while (v[j].name != NULL)
            j = (j + 1) & (cap - 1);
        v[j] = *e;
    }
    free(m->v);
    m->v = v;
    m->cap = cap;
    return SB_OK;
}

/* Sets name's entry; NULL only when out of memory. */
static s_ent *
s_map_put(s_map *m, const char *name, uint64_t last_seq, uint64_t last_bid)
{
    s_ent *e = s_map_get(m, name);

    if (e == NULL) {
        /* Keep the load under 3/4 so probing stays short. */
        if ((m->n + 1) * 4 > m->cap * 3 && s_map_grow(m) != SB_OK)
            return NULL;
        uint64_t h = s_hash(name);
        size_t i = h & (m->cap - 1);
        while (m->v[i].name != NULL)
            i = (i + 1) & (m->cap - 1);
        if ((m->v[i].name = sbc_strdup(name)) == NULL)
            return NULL;
        e = &m->v[i];
        e->hash = h;
        m->n++;
    }
    e->last_seq = last_seq;
    e->last_bid = last_bid;
    return e;
}

static void
s_map_clear(s_map *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->v[i].name);
    free(m->v);
    memset(m, 0, sizeof *m);
}

/* ---- the FIFO to the application ---------------------------------------- */

enum { IT_BATCH, IT_LOSS, IT_POS, IT_RESTART };

typedef struct {
    char aggregate[256];
    int several; /* more than one aggregate, or not known which */
    sb_loss l;
} s_loss;

typedef struct {
    int kind;
    sb_snapshot *b; /* IT_BATCH */
    s_loss *loss;   /* IT_LOSS */
    uint64_t pos;   /* IT_POS, IT_RESTART: the position from then on */
    int filled;     /* IT_BATCH: came from a fetch */
} s_item;

typedef struct {
    s_item *v;
    size_t cap, head, n;
} s_fifo;

static sb_err
s_fifo_push(s_fifo *q, s_item it)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        s_item *v = malloc(cap * sizeof *v);
        if (v == NULL)
            return SB_ENOMEM;
        for (size_t i = 0; i < q->n; i++)
            v[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = v;
        q->cap = cap;
        q->head = 0;
    }
    q->v[(q->head + q->n) % q->cap] = it;
    q->n++;
    return SB_OK;
}

static s_item *
s_fifo_back(s_fifo *q)
{
    return q->n ? &q->v[(q->head + q->n - 1) % q->cap] : NULL;
}

static int
s_fifo_pop(s_fifo *q, s_item *it)
{
    if (q->n == 0)
        return 0;
    *it = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->n--;
    return 1;
}

/* ---- engine --------------------------------------------------------------- */

enum { J_NONE, J_HELLO_START, J_HELLO_CHECK, J_CATCHUP, J_PROBE };

/* How far a parked live batch got through s_live. */
enum { ST_NEW = 0, ST_EPOCH_OK = 1, ST_PROBED = 2 };

typedef struct {
    char *prefix;
    int exact;
} s_subn;

typedef struct {
    int kind;
    int inflight;   /* the current request was sent (fresh = 0 next) */
    size_t sub;     /* subscription being walked */
    uint64_t c;     /* its cursor */
    uint64_t T;     /* probe: through this batch id; UINT64_MAX: the end */
    uint64_t c_min; /* lowest final cursor over the subscriptions */
    uint64_t w_min; /* low_seq at c_min */
    uint64_t w_best; /* best low_seq seen for a cursor <= T */
    /* header page of a probe */
    sb_snapshot *hdr[SBC_PAGE];
    uint32_t nhdr, k;
    int have_page;
    sb_fetch_page page;
    /* a run of headers being fetched whole */
    int in_run;
    uint32_t run_pos, run_end; /* hdr[run_pos..run_end) still to come */
    uint64_t run_after;
} s_job;

struct sbc_sub {
    sbc_transport t;
    sbc_sub_config cfg;
    s_subn *subs;
    size_t nsubs;

    int started;
    int resume;         /* start by seq (R) rather than by batch id (C0) */
    uint64_t R;         /* resume: wanted = last_seq >= R */
    uint64_t R_eff;     /* R raised past what retention reported lost */
    uint64_t C0;        /* live: wanted = batch id > C0 */
    uint64_t W0;        /* live: hello's low_seq */
    uint64_t epoch;
    uint64_t C, WC, L;
    uint64_t max_seq;   /* highest last_seq queued: restart decision */
    /* Seqs below this may have been in batches evicted before a probe
     * looked at them (0: none). An aggregate first seen after that, whose
     * predecessor is below it, is reported as maybe lost. */
    uint64_t evicted_below;
    uint64_t position;  /* what the application may save */
    uint64_t next_probe_ms;
    uint64_t last_live_ms;

    s_map map;
    s_fifo fifo;
    sb_snapshot *parked;
    int parked_stage;
    s_job job;
    sb_snapshot *page[SBC_PAGE]; /* full batches of one fetch */

    /* The broker's end of epoch (its EpochEnd marker): batch ids up to
     * end_bid exist; the query socket is open until about end_ms. While
     * C < end_bid they are fetched (a probe through end_bid); if the
     * broker is gone first, what was not checked is reported lost. */
    uint64_t end_epoch, end_bid, end_seq, end_ms;
    int end_state; /* 0: none, 1: pending, 2: checked or reported */

    s_loss loss; /* the last reported */
    int have_loss;
    int stopped; /* SB_LOSS_STOP after a loss */
    sb_subscriber_stats st;
};

sb_err
sbc_sub_new(sbc_sub **out, const sbc_transport *t, const sbc_sub_config *cfg)
{
    sbc_sub *s;

    if (out == NULL || t == NULL || cfg == NULL || t->live == NULL ||
        t->now_ms == NULL || cfg->probe_ms < 0 ||
        (t->hello == NULL) != (t->fetch == NULL) ||
        (cfg->resume_from_seq != 0 && t->fetch == NULL))
        return SB_EINVAL;
    if ((s = calloc(1, sizeof *s)) == NULL)
        return SB_ENOMEM;
    s->t = *t;
    s->cfg = *cfg;
    *out = s;
    return SB_OK;
}

static void
s_job_reset(sbc_sub *s)
{
    for (uint32_t i = 0; i < s->job.nhdr; i++)
        sb_snapshot_destroy(&s->job.hdr[i]);
    memset(&s->job, 0, sizeof s->job);
}

void
sbc_sub_destroy(sbc_sub **sp)
{
    sbc_sub *s;
    s_item it;

    if (sp == NULL || (s = *sp) == NULL)
        return;
    while (s_fifo_pop(&s->fifo, &it)) {
        sb_snapshot_destroy(&it.b);
        free(it.loss);
    }
    free(s->fifo.v);
    s_job_reset(s);
    sb_snapshot_destroy(&s->parked);
    s_map_clear(&s->map);
    for (size_t i = 0; i < s->nsubs; i++)
        free(s->subs[i].prefix);
    free(s->subs);
    free(s);
    *sp = NULL;
}

sb_err
sbc_sub_add(sbc_sub *s, const char *prefix, int exact)
{
    s_subn *v = realloc(s->subs, (s->nsubs + 1) * sizeof *v);

    if (v == NULL)
        return SB_ENOMEM;
    s->subs = v;
    if ((v[s->nsubs].prefix = sbc_strdup(prefix ? prefix : "")) == NULL)
        return SB_ENOMEM;
    v[s->nsubs].exact = exact;
    s->nsubs++;
    return SB_OK;
}

uint64_t
sbc_sub_position(const sbc_sub *s)
{
    return s->position;
}

sb_err
sbc_sub_loss(const sbc_sub *s, sb_loss *out)
{
    if (!s->have_loss)
        return SB_ENOENT;
    *out = s->loss.l;
    out->aggregate = s->loss.several ? "" : s->loss.aggregate;
    return SB_OK;
}

static uint64_t
s_floor_c(const sbc_sub *s)
{
    return s->resume ? s->R : s->W0;
}

void
sbc_sub_stats(const sbc_sub *s, sb_subscriber_stats *st)
{
    *st = s->st;
}

void
sbc_sub_epoch_end(sbc_sub *s, uint64_t epoch, uint64_t last_bid,
                  uint64_t last_seq, uint32_t linger_ms)
{
    /* Repeats of the marker, and markers of an epoch we have not said
     * hello to, change nothing (a restart's catch-up covers those). */
    if (!s->started || epoch != s->epoch || s->end_epoch == epoch)
        return;
    s->end_epoch = epoch;
    s->end_bid = last_bid;
    s->end_seq = last_seq;
    s->end_ms = s->t.now_ms(s->t.ctx) + linger_ms;
    s->end_state = last_bid > s->C ? 1 : 2;
}

/* A query reply from a stopping broker (end_bid != 0): it names the end
 * too, for a subscriber whose queue was too full for every marker. A
 * stopping broker that still answers is given SBC_END_PATIENCE_MS more
 * before what is unchecked counts as lost. */
#define SBC_END_PATIENCE_MS 5000

static void
s_note_end(sbc_sub *s, uint64_t epoch, uint64_t end_bid, uint64_t last_seq)
{
    uint64_t until = s->t.now_ms(s->t.ctx) + SBC_END_PATIENCE_MS;

    if (end_bid == 0 || epoch != s->epoch || !s->started)
        return;
    if (s->end_epoch != epoch) {
        sbc_sub_epoch_end(s, epoch, end_bid, last_seq, SBC_END_PATIENCE_MS);
        return;
    }
    if (s->end_state == 1 && until > s->end_ms)
        s->end_ms = until;
}

sb_err
sbc_sub_unchecked(const sbc_sub *s, sb_loss *out)
{
    if (s->end_state != 1 || s->end_bid <= s->C)
        return SB_ENOENT;
    memset(out, 0, sizeof *out);
    out->aggregate = "";
    out->from_seq = s->WC > s_floor_c(s) ? s->WC : s_floor_c(s);
    out->to_seq = s->end_seq;
    out->from_batch_id = s->C + 1;
    out->to_batch_id = s->end_bid;
    return SB_OK;
}

/* Out of memory while queueing for the application: nothing may be lost,
 * so wait for memory rather than drop (as the broker does). */
static void
s_push(sbc_sub *s, s_item it)
{
    while (s_fifo_push(&s->fifo, it) != SB_OK)
        sbc_sleep_ms(10);
}

static uint64_t
s_floor(const sbc_sub *s)
{
    return s->resume ? s->R : s->W0;
}

static void
s_push_pos(sbc_sub *s)
{
    uint64_t pos = s->WC > s_floor(s) ? s->WC : s_floor(s);
    s_item *back = s_fifo_back(&s->fifo);

    if (back != NULL && back->kind == IT_POS)
        back->pos = pos > back->pos ? pos : back->pos;
    else if (back == NULL)
        s->position = pos > s->position ? pos : s->position;
    else
        s_push(s, (s_item){.kind = IT_POS, .pos = pos});
}

/* Reports seqs [from, to] (and batch ids [fb, tb], 0 if unknown) of agg
 * ("" or NULL: several or unknown) as lost. Consecutive reports with
 * nothing delivered between them merge into one. */
static void
s_lost(sbc_sub *s, const char *agg, uint64_t from, uint64_t to, uint64_t fb,
       uint64_t tb, uint64_t retained_first_seq)
{
    s_item *back = s_fifo_back(&s->fifo);
    s_loss *l;

    if (back != NULL && back->kind == IT_LOSS) {
        l = back->loss;
        if (agg == NULL || agg[0] == '\0' || strcmp(agg, l->aggregate) != 0)
            l->several = 1;
        if (from < l->l.from_seq)
            l->l.from_seq = from;
        if (to > l->l.to_seq)
            l->l.to_seq = to;
        if (fb != 0 && (l->l.from_batch_id == 0 || fb < l->l.from_batch_id))
            l->l.from_batch_id = fb;
        if (tb > l->l.to_batch_id)
            l->l.to_batch_id = tb;
        if (retained_first_seq > l->l.retained_first_seq)
            l->l.retained_first_seq = retained_first_seq;
        return;
    }
    while ((l = calloc(1, sizeof *l)) == NULL)
        sbc_sleep_ms(10);
    if (agg == NULL || agg[0] == '\0')
        l->several = 1;
    else
        snprintf(l->aggregate, sizeof l->aggregate, "%s", agg);
    l->l.from_seq = from;
    l->l.to_seq = to;
    l->l.from_batch_id = fb;
    l->l.to_batch_id = tb;
    l->l.retained_first_seq = retained_first_seq;
    s_push(s, (s_item){.kind = IT_LOSS, .loss = l});
}

/* Queues b for the application and moves its aggregate's chain on. */
static void
s_deliver(sbc_sub *s, sb_snapshot *b, int filled)
{
    uint64_t ls = sb_snapshot_last_seq(b);

    while (s_map_put(&s->map, sb_snapshot_aggregate(b), ls,
                     sb_snapshot_batch_id(b)) == NULL)
        sbc_sleep_ms(10);
    if (ls > s->max_seq)
        s->max_seq = ls;
    s_push(s, (s_item){.kind = IT_BATCH, .b = b, .filled = filled});
}

static int
s_wanted(const sbc_sub *s, const sb_snapshot *b)
{
    return s->resume ? sb_snapshot_last_seq(b) >= s->R
                     : sb_snapshot_batch_id(b) > s->C0;
}

/* A fetched batch (catch-up or fill), in batch id order. */
static void
s_accept_fetched(sbc_sub *s, sb_snapshot *b)
{
    const char *agg = sb_snapshot_aggregate(b);
    s_ent *e = s_map_get(&s->map, agg);
    uint64_t prev = sb_snapshot_prev_last_seq(b), ls = sb_snapshot_last_seq(b);

    if (!s_wanted(s, b)) {
        s->st.before_start++;
        sb_snapshot_destroy(&b);
        return;
    }
    if (e != NULL) {
        if (ls <= e->last_seq) {
            s->st.duplicates++;
            sb_snapshot_destroy(&b);
            return;
        }
        if (prev < e->last_seq) { /* overlaps what was delivered */
            s->st.malformed++;
            sb_snapshot_destroy(&b);
            return;
        }
        if (prev > e->last_seq) /* its predecessors are gone */
            s_lost(s, agg, e->last_seq + 1, prev, 0,
                   sb_snapshot_batch_id(b) - 1, 0);
    } else if (prev != 0 && prev >= s_floor(s) &&
               ((s->resume && prev >= s->R_eff) || prev < s->evicted_below)) {
        /* A wanted predecessor that neither the catch-up nor a probe
         * found (resume), or that may have been evicted unseen: gone. */
        s_lost(s, agg, s_floor(s), prev, 0, sb_snapshot_batch_id(b) - 1, 0);
    }
    s_deliver(s, b, 1);
}

static void
s_probe_start(sbc_sub *s, uint64_t T)
{
    s_job_reset(s);
    s->job.kind = J_PROBE;
    s->job.T = T;
    s->job.c = s->C;
    s->job.c_min = UINT64_MAX;
    s->st.probes++;
}

/* Live batch b; stage says how far it got before it was parked. */
static void
s_live(sbc_sub *s, sb_snapshot *b, int stage)
{
    uint64_t bid = sb_snapshot_batch_id(b);
    uint64_t prev = sb_snapshot_prev_last_seq(b), ls = sb_snapshot_last_seq(b);
    const char *agg = sb_snapshot_aggregate(b);
    int query = s->t.fetch != NULL;

    if (stage < ST_EPOCH_OK && query && s->L != 0 && bid <= s->L) {
        /* One connection delivers batch ids in increasing order: a lower
         * one means a restarted broker. Ask it (hello) before believing
         * this batch. */
        s->parked = b;
        s->parked_stage = ST_EPOCH_OK;
        s_job_reset(s);
        s->job.kind = J_HELLO_CHECK;
        return;
    }
    if (bid > s->L)
        s->L = bid;
    s->last_live_ms = s->t.now_ms(s->t.ctx);
    if (!s_wanted(s, b)) {
        s->st.before_start++;
        sb_snapshot_destroy(&b);
        return;
    }
    s_ent *e = s_map_get(&s->map, agg);
    if (e != NULL) {
        if (ls <= e->last_seq) {
            s->st.duplicates++; /* a fetch delivered it already */
            sb_snapshot_destroy(&b);
            return;
        }
        if (prev == e->last_seq) {
            s_deliver(s, b, 0);
            return;
        }
        if (prev < e->last_seq) {
            s->st.malformed++; /* overlaps: not a batch of this chain */
            sb_snapshot_destroy(&b);
            return;
        }
        if (stage < ST_PROBED)
            s->st.gaps++;
        if (stage < ST_PROBED && query && bid - 1 > s->C) {
            s->parked = b;
            s->parked_stage = ST_PROBED;
            s_probe_start(s, bid - 1);
            return;
        }
        /* Everything below b was checked: its predecessors are gone. */
        s_lost(s, agg, e->last_seq + 1, prev, e->last_bid + 1, bid - 1, 0);
        s_deliver(s, b, 0);
        return;
    }
    if (prev == 0 || prev < (s->resume ? s->R_eff : s->W0)) {
        s_deliver(s, b, 0); /* its predecessor is before the start */
        return;
    }
    if (stage < ST_PROBED && query && bid - 1 > s->C) {
        s->parked = b;
        s->parked_stage = ST_PROBED;
        s_probe_start(s, bid - 1);
        return;
    }
    /* Checked through bid - 1 and still unknown: live, the predecessor is
     * at or before C0 (not wanted) unless it may have been evicted before
     * a probe saw it; resume, a wanted one is gone. */
    if (s->resume || (prev >= s_floor(s) && prev < s->evicted_below))
        s_lost(s, agg, s->resume ? s->R_eff : s_floor(s), prev, 0, bid - 1,
               0);
    s_deliver(s, b, 0);
}

/* A new epoch: the broker restarted. Start again from the position if the
 * broker's seqs went on (its log kept them), else from its first seq. */
static void
s_restart(sbc_sub *s, uint64_t epoch, uint64_t last_seq)
{
    uint64_t pos;

    s->st.restarts++;
    s_job_reset(s);
    sb_snapshot_destroy(&s->parked);
    s->st.discarded += s->t.live_drain != NULL ? s->t.live_drain(s->t.ctx) : 0;
    if (s->max_seq != 0 && last_seq >= s->max_seq) {
        /* Counters continued: resume where we are; the map drops what is
         * fetched again. */
        pos = s->WC > s_floor(s) ? s->WC : s_floor(s);
        if (pos == 0)
            pos = 1;
    } else {
        s_map_clear(&s->map); /* seqs start again: nothing to compare */
        s->max_seq = 0;
        pos = 1;
    }
    s->epoch = epoch;
    s->end_state = 0; /* the new epoch's catch-up fetches any tail */
    s->resume = 1;
    s->R = s->R_eff = pos;
    s->C = s->WC = s->L = 0;
    s->job.kind = J_CATCHUP;
    s->job.c_min = UINT64_MAX;
    s_push(s, (s_item){.kind = IT_RESTART, .pos = pos});
}

/* Wait for a reply as long as the caller allows. */
static int
s_wait(uint64_t deadline)
{
    long w = sbc_remaining_ms(deadline);
    return w > 0x7fffffff ? 0x7fffffff : (int)w;
}

/* A step of the hello jobs. */
static sb_err
s_step_hello(sbc_sub *s, uint64_t deadline)
{
    /* Zeroed: a transport that predates a field leaves it unset. */
    sbc_hello_info h = {0};
    sb_err rc =
        s->t.hello(s->t.ctx, &h, s_wait(deadline), !s->job.inflight);

    s->job.inflight = 1;
    if (rc == SB_ETIMEDOUT || rc == SB_EAGAIN)
        return rc;
    s->job.inflight = 0;
    if (rc != SB_OK)
        return rc;
    s_note_end(s, h.epoch, h.end_bid, h.last_seq);
    if (s->job.kind == J_HELLO_CHECK) {
        s->job.kind = J_NONE;
        if (h.epoch != s->epoch)
            s_restart(s, h.epoch, h.last_seq);
        return SB_OK;
    }
    s->epoch = h.epoch;
    s->started = 1;
    s->next_probe_ms = s->t.now_ms(s->t.ctx) + (uint64_t)s->cfg.probe_ms;
    if (s->resume) {
        s->job.kind = J_CATCHUP;
        s->job.c_min = UINT64_MAX;
    } else {
        s->job.kind = J_NONE;
        s->C0 = s->C = h.last_batch_id;
        s->W0 = s->WC = h.low_seq;
    }
    s->position = s_floor(s);
    return SB_OK;
}

/* A fetch for the current job; SB_OK with the page in s->page. */
static sb_err
s_fetch(sbc_sub *s, const sbc_fetch_req *q, sb_fetch_page *info,
        uint64_t deadline)
{
    sb_err rc = s->t.fetch(s->t.ctx, q, info, q->headers_only ? s->job.hdr
                                                               : s->page,
                           s_wait(deadline), !s->job.inflight);

    s->job.inflight = 1;
    if (rc == SB_ETIMEDOUT || rc == SB_EAGAIN)
        return rc;
    s->job.inflight = 0;
    if ((rc == SB_OK || rc == SB_ENOENT) && info->epoch != 0 &&
        info->epoch != s->epoch) {
        if (rc == SB_OK)
            for (uint32_t i = 0; i < info->count; i++)
                sb_snapshot_destroy(q->headers_only ? &s->job.hdr[i]
                                                    : &s->page[i]);
        s_restart(s, info->epoch, info->last_seq);
        return SB_ERESTART;
    }
    if (rc == SB_OK || rc == SB_ENOENT)
        s_note_end(s, info->epoch, info->end_batch_id, info->last_seq);
    return rc;
}

/* End of a subscription's walk at cursor c with low_seq w. */
static void
s_sub_done(sbc_sub *s, uint64_t c, uint64_t w)
{
    if (c < s->job.c_min) {
        s->job.c_min = c;
        s->job.w_min = w;
    }
    s->job.sub++;
    s->job.c = s->job.kind == J_CATCHUP ? 0 : s->C;
}

static void
s_walk_done(sbc_sub *s, uint64_t C, uint64_t W)
{
    if (C != UINT64_MAX && C > s->C) /* UINT64_MAX: no subscription */
        s->C = C;
    if (W > s->WC)
        s->WC = W;
    s_push_pos(s);
    s_job_reset(s);
    s->next_probe_ms = s->t.now_ms(s->t.ctx) + (uint64_t)s->cfg.probe_ms;
}

/* Start-up catch-up (resume): every wanted batch, subscription by
 * subscription, one full page per step. */
static sb_err
s_step_catchup(sbc_sub *s, uint64_t deadline)
{
    s_job *j = &s->job;
    sb_fetch_page info;
    sb_err rc;

    if (j->sub == s->nsubs) {
        s_walk_done(s, j->c_min, j->w_min);
        return SB_OK;
    }
    sbc_fetch_req q = {s->subs[j->sub].prefix, s->subs[j->sub].exact,
                       s->R_eff, 0, j->c, SBC_PAGE, 0, 0};
    if ((rc = s_fetch(s, &q, &info, deadline)) == SB_ENOENT) {
        if (j->c == 0 && info.retained_first_seq > s->R_eff) {
            /* Seqs from R_eff up to where retention starts are gone. */
            s_lost(s, NULL, s->R_eff, info.retained_first_seq - 1, 0, 0,
                   info.retained_first_seq);
            s->R_eff = info.retained_first_seq;
        } else if (j->c != 0 && info.retained_first_batch_id > j->c + 1) {
            s_lost(s, NULL, s->R_eff, info.retained_first_seq - 1, j->c + 1,
                   info.retained_first_batch_id - 1, info.retained_first_seq);
            j->c = info.retained_first_batch_id - 1;
        } else {
            /* A refusal that names no later start: asking again would
             * repeat it. Report and end this walk; probes go on. */
            s_lost(s, NULL, s->R_eff, s->R_eff, j->c + 1, 0,
                   info.retained_first_seq);
            s_sub_done(s, j->c, 0);
        }
        return SB_OK;
    }
    if (rc != SB_OK)
        return rc == SB_ERESTART ? SB_OK : rc;
    for (uint32_t i = 0; i < info.count; i++) {
        s_accept_fetched(s, s->page[i]);
        s->page[i] = NULL;
    }
    if (!info.more || info.last_batch_id <= j->c)
        s_sub_done(s, info.last_batch_id, info.cursor_low_seq);
    else
        j->c = info.last_batch_id;
    return SB_OK;
}

/* Does header h need a fill? */
static int
s_needs(sbc_sub *s, const sb_snapshot *h)
{
    s_ent *e;

    if (!s_wanted(s, h))
        return 0;
    e = s_map_get(&s->map, sb_snapshot_aggregate(h));
    return e == NULL || sb_snapshot_last_seq(h) > e->last_seq;
}

/* Header probe: one request per step (a header page or a run). */
static sb_err
s_step_probe(sbc_sub *s, uint64_t deadline)
{
    s_job *j = &s->job;
    sb_fetch_page info;
    sb_err rc;

    if (j->in_run) {
        const s_subn *sn = &s->subs[j->sub];
        uint32_t left = j->run_end - j->run_pos;
        /* from_seq 1 matches every batch; it only makes a fetch from
         * cursor 0 check the broker's horizon (section 9.3), so an
         * eviction there is refused rather than skipped. */
        sbc_fetch_req q = {sn->prefix, sn->exact, 1, 0, j->run_after, left, 0, 0};
        if ((rc = s_fetch(s, &q, &info, deadline)) == SB_ENOENT) {
            /* Evicted since the header page came: those are lost. (A
             * refusal that names no later start would repeat forever:
             * then the whole rest of the run is given up as lost.) */
            uint64_t rf = info.retained_first_batch_id;
            if (rf <= j->run_after + 1)
                rf = UINT64_MAX;
            while (j->run_pos < j->run_end &&
                   sb_snapshot_batch_id(j->hdr[j->run_pos]) < rf) {
                sb_snapshot *h = j->hdr[j->run_pos++];
                const char *agg = sb_snapshot_aggregate(h);
                s_ent *e = s_map_get(&s->map, agg);
                /* Already past it (a broker whose run differed from its
                 * headers): the chain must never move back. */
                if (e != NULL && sb_snapshot_last_seq(h) <= e->last_seq)
                    continue;
                uint64_t from = e ? e->last_seq + 1 : sb_snapshot_first_seq(h);
                s_lost(s, agg, from, sb_snapshot_last_seq(h),
                       sb_snapshot_batch_id(h), sb_snapshot_batch_id(h),
                       info.retained_first_seq);
                while (s_map_put(&s->map, agg, sb_snapshot_last_seq(h),
                                 sb_snapshot_batch_id(h)) == NULL)
                    sbc_sleep_ms(10);
            }
            j->in_run = j->run_pos < j->run_end;
            if (j->in_run)
                j->run_after = rf - 1;
            return SB_OK;
        }
        if (rc != SB_OK)
            return rc == SB_ERESTART ? SB_OK : rc;
        for (uint32_t i = 0; i < info.count; i++) {
            s_accept_fetched(s, s->page[i]);
            s->page[i] = NULL;
        }
        j->run_pos += info.count;
        j->run_after = info.last_batch_id;
        /* A run ends when all of it came, or (should not happen) when the
         * broker has nothing more: the next probe would see the rest. */
        if (j->run_pos >= j->run_end || (!info.more && info.count == 0))
            j->in_run = 0;
        return SB_OK;
    }
    if (j->have_page && j->k < j->nhdr) {
        /* Find the next run of headers needing a fill (no I/O). */
        while (j->k < j->nhdr) {
            sb_snapshot *h = j->hdr[j->k];
            if (sb_snapshot_batch_id(h) > j->T) {
                j->k = j->nhdr; /* beyond the target: next probe's */
                break;
            }
            if (!s_needs(s, h)) {
                j->k++;
                continue;
            }
            uint32_t e = j->k + 1;
            while (e < j->nhdr && sb_snapshot_batch_id(j->hdr[e]) <= j->T &&
                   s_needs(s, j->hdr[e]))
                e++;
            j->in_run = 1;
            j->run_pos = j->k;
            j->run_end = e;
            j->run_after = sb_snapshot_batch_id(h) - 1;
            j->k = e;
            return SB_OK;
        }
        return SB_OK;
    }
    if (j->have_page) {
        /* Page done: on to the next page, subscription, or the end. */
        uint64_t cur = j->page.last_batch_id;
        for (uint32_t i = 0; i < j->nhdr; i++)
            sb_snapshot_destroy(&j->hdr[i]);
        j->nhdr = j->k = 0;
        j->have_page = 0;
        if (cur <= j->T && j->page.cursor_low_seq > j->w_best)
            j->w_best = j->page.cursor_low_seq;
        if (!j->page.more || cur >= j->T || cur <= j->c)
            s_sub_done(s, cur, j->page.cursor_low_seq);
        else
            j->c = cur;
    }
    if (j->sub == s->nsubs) {
        if (j->T == UINT64_MAX)
            s_walk_done(s, j->c_min, j->w_min);
        else
            s_walk_done(s, j->T, j->w_best);
        return SB_OK;
    }
    if (j->c >= j->T) { /* nothing to look at for this one */
        s_sub_done(s, j->T, 0);
        return SB_OK;
    }
    const s_subn *sn = &s->subs[j->sub];
    sbc_fetch_req q = {sn->prefix, sn->exact, 1, 0, j->c, SBC_PAGE, 1, 0};
    if ((rc = s_fetch(s, &q, &info, deadline)) == SB_ENOENT) {
        /* Batches after our cursor were evicted before this probe looked
         * at them. Not reported as such: some were received live. Each
         * known aggregate's chain will show exactly what it lost; an
         * aggregate first seen later whose predecessor is below the
         * horizon is reported then (evicted_below). */
        uint64_t rf = info.retained_first_batch_id;
        if (info.retained_first_seq > s->evicted_below)
            s->evicted_below = info.retained_first_seq;
        if (rf <= j->c + 1) {
            s_lost(s, NULL, s->WC ? s->WC : s_floor(s),
                   info.retained_first_seq ? info.retained_first_seq - 1 : 0,
                   j->c + 1, 0, info.retained_first_seq);
            /* No later start to go on from: end this walk here rather
             * than ask the same again; the next probe tries anew. */
            s_sub_done(s, j->c, 0);
            return SB_OK;
        }
        if (rf - 1 > s->C)
            s->C = rf - 1;
        j->c = rf - 1;
        return SB_OK;
    }
    if (rc != SB_OK)
        return rc == SB_ERESTART ? SB_OK : rc;
    j->page = info;
    j->nhdr = info.count;
    j->k = 0;
    j->have_page = 1;
    return SB_OK;
}

/* The stopping broker's query socket closed before the tail was checked:
 * batch ids C+1 .. end_bid may hold batches of ours that we never saw.
 * Reported as a loss now; when the broker comes back (a new epoch) the
 * restart's catch-up reads them from its log (delivered after all). */
static void
s_end_lost(sbc_sub *s)
{
    uint64_t from = s->WC > s_floor(s) ? s->WC : s_floor(s);

    s_job_reset(s);
    if (s->end_bid > s->C)
        s_lost(s, NULL, from, s->end_seq, s->C + 1, s->end_bid, 0);
    s->end_state = 2;
    s->next_probe_ms = s->t.now_ms(s->t.ctx) + (uint64_t)s->cfg.probe_ms;
}

static sb_err
s_step(sbc_sub *s, uint64_t deadline)
{
    switch (s->job.kind) {
    case J_HELLO_START:
    case J_HELLO_CHECK:
        return s_step_hello(s, deadline);
    case J_CATCHUP:
        return s_step_catchup(s, deadline);
    case J_PROBE:
        return s_step_probe(s, deadline);
    }
    return SB_OK;
}

static void
s_start(sbc_sub *s)
{
    s->resume = s->cfg.resume_from_seq != 0;
    s->R = s->R_eff = s->cfg.resume_from_seq;
    if (s->t.hello == NULL) {
        /* No query socket: everything from now on, live only. */
        s->started = 1;
        return;
    }
    s->job.kind = J_HELLO_START;
}

/* Next item for the application. 1: *ret is what recv returns. */
static int
s_pop(sbc_sub *s, sb_snapshot **out, sb_err *ret)
{
    s_item it;

    while (s_fifo_pop(&s->fifo, &it)) {
        switch (it.kind) {
        case IT_BATCH:
            s->st.batches++;
            s->st.filled += it.filled != 0;
            *out = it.b;
            *ret = SB_OK;
            return 1;
        case IT_POS:
            if (it.pos > s->position)
                s->position = it.pos;
            break;
        case IT_LOSS:
            s->loss = *it.loss;
            s->have_loss = 1;
            free(it.loss);
            s->st.lost++;
            if (s->cfg.on_loss == SB_LOSS_STOP)
                s->stopped = 1;
            *ret = SB_ENOENT;
            return 1;
        case IT_RESTART:
            s->position = it.pos;
            *ret = SB_ERESTART;
            return 1;
        }
    }
    return 0;
}

sb_err
sbc_sub_start(sbc_sub *s, int timeout_ms)
{
    uint64_t deadline = timeout_ms < 0
                            ? UINT64_MAX
                            : s->t.now_ms(s->t.ctx) + (uint64_t)timeout_ms;

    if (!s->started && s->job.kind == J_NONE)
        s_start(s);
    while (!s->started) {
        sb_err rc = s_step(s, deadline);
        if (rc == SB_ETIMEDOUT && s_wait(deadline) != 0)
            continue;
        if (rc != SB_OK)
            return rc == SB_EAGAIN ? SB_ETIMEDOUT : rc;
    }
    return SB_OK;
}

sb_err
sbc_sub_recv(sbc_sub *s, sb_snapshot **out, int timeout_ms)
{
    uint64_t deadline;
    sb_err rc;

    if (s == NULL || out == NULL)
        return SB_EINVAL;
    deadline = timeout_ms < 0 ? UINT64_MAX
                              : s->t.now_ms(s->t.ctx) + (uint64_t)timeout_ms;
    for (;;) {
        if (s->stopped)
            return SB_ENOENT;
        if (s_pop(s, out, &rc))
            return rc;
        if (!s->started && s->job.kind == J_NONE)
            s_start(s);
        if (s->job.kind != J_NONE) {
            /* A tail to fetch from a stopping broker: wait no longer than
             * its query socket stays open. */
            int ending = s->end_state == 1;
            uint64_t dl = ending && s->end_ms < deadline ? s->end_ms : deadline;
            rc = s_step(s, dl);
            if (rc == SB_ETIMEDOUT && ending &&
                s->t.now_ms(s->t.ctx) >= s->end_ms) {
                s_end_lost(s);
                continue;
            }
            if (rc == SB_ETIMEDOUT) { /* no answer yet: still waiting */
                if (s_wait(deadline) == 0)
                    return SB_EAGAIN;
                continue;
            }
            if (rc != SB_OK)
                return rc; /* the job stays: the next recv goes on */
            continue;
        }
        if (s->parked != NULL) {
            sb_snapshot *b = s->parked;
            s->parked = NULL;
            s_live(s, b, s->parked_stage);
            continue;
        }
        uint64_t now = s->t.now_ms(s->t.ctx);
        if (s->end_state == 1) {
            /* The broker said where its epoch ends: check through there
             * now, while its query socket is still open. */
            if (s->end_bid <= s->C) {
                s->end_state = 2;
            } else if (s->t.fetch == NULL || now >= s->end_ms) {
                s_end_lost(s);
                continue;
            } else {
                s_probe_start(s, s->end_bid);
                continue;
            }
        }
        if (s->t.fetch != NULL && s->cfg.probe_ms > 0 &&
            now >= s->next_probe_ms) {
            /* Idle: look at everything published. Under load: only up to
             * the newest batch received, since what follows may still be
             * on its way to us. */
            int idle = now - s->last_live_ms >= (uint64_t)s->cfg.probe_ms;
            uint64_t T = idle ? UINT64_MAX : s->L;
            if (T > s->C) {
                s_probe_start(s, T);
                continue;
            }
            s->next_probe_ms = now + (uint64_t)s->cfg.probe_ms;
        }
        int wait = s_wait(deadline);
        if (s->t.fetch != NULL && s->cfg.probe_ms > 0) {
            uint64_t until = s->next_probe_ms > now ? s->next_probe_ms - now : 0;
            if (deadline == UINT64_MAX || (uint64_t)wait > until)
                wait = (int)until;
        } else if (deadline == UINT64_MAX) {
            wait = -1;
        }
        sb_snapshot *b;
        rc = s->t.live(s->t.ctx, &b, wait);
        if (rc == SB_OK) {
            s_live(s, b, ST_NEW);
            continue;
        }
        if (rc != SB_ETIMEDOUT)
            return rc; /* SB_EAGAIN: a signal; or an error */
        if (deadline != UINT64_MAX && s->t.now_ms(s->t.ctx) >= deadline)
            return SB_EAGAIN;
    }
}
