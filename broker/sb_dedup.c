/* De-duplication index (design in sb_dedup.h, user-facing rules in
 * docs/PUBLISHING.md).
 *
 * Owns: the producer entries (map by id + an LRU list), their rings, the
 * tombstones of evicted producers (map + FIFO), the event-id entries (map
 * + FIFO by insertion, which is also age order since time only grows).
 * Keys live inside their entries, as sb_map wants. One thread. */
#include "sb_dedup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_clock.h"
#include "sb_log.h"
#include "sb_map.h"
#include "sb_store.h"

/* One remembered producer seq. seq 0 marks an empty slot: seqs start at 1. */
typedef struct {
    uint64_t pseq;
    uint64_t seq;
    uint64_t agg_seq;
} s_slot;

typedef struct s_prod {
    struct s_prod *prev, *next; /* LRU list, most recent at the head */
    uint64_t hi;                /* highest producer seq recorded */
    uint64_t lo;                /* lowest producer seq it can vouch for */
    s_slot *ring;               /* cap slots; pseq lives at pseq % cap */
    uint32_t cap;
    uint32_t len;
    char id[];
} s_prod;

typedef struct s_tomb {
    struct s_tomb *prev, *next; /* FIFO, oldest at the head */
    uint64_t hi;
    uint32_t len;
    char id[];
} s_tomb;

typedef struct s_eid {
    struct s_eid *next; /* FIFO, oldest at the head */
    uint64_t seq;
    uint64_t agg_seq;
    uint64_t at_ms;
    uint32_t len;
    char id[];
} s_eid;

struct sb_dedup {
    sb_dedup_config cfg;
    sb_map *prods;
    s_prod *lru_head, *lru_tail;
    sb_map *tombs;
    s_tomb *tomb_head, *tomb_tail;
    sb_map *eids;
    s_eid *eid_head, *eid_tail;
    int lossy; /* some producer's history is lost for good */
    uint64_t mem;
    sb_dedup_stats st;
};

#define S_RING_MIN 16
/* Bytes of hash table per entry: a 32-byte sb_map slot at the map's
 * highest load (1/2); up to twice that just after it doubles. */
#define S_MAP_SLOT 64

void
sb_dedup_config_defaults(sb_dedup_config *c)
{
    /* A window of 65536 covers what a default C client can have in flight
     * (64 requests of 1000 events), so a resend after a reconnect is
     * always recognised. 1.5 MiB per producer whose window is full. */
    c->producers = 256;
    c->producer_window = 65536;
    c->tombstones = 65536;
    c->event_ids = 262144;
    c->event_id_age_s = 3600;
    c->rebuild_events = 10000000;
}

sb_err
sb_dedup_config_check(const sb_dedup_config *c, char *why, size_t n)
{
    if (c->producers > 0 && c->producer_window == 0) {
        snprintf(why, n, "dedup.producer_window must be at least 1");
        return SB_EINVAL;
    }
    return SB_OK;
}

static void
s_mem(sb_dedup *d, int64_t delta)
{
    d->mem += (uint64_t)delta;
    atomic_store(&d->st.mem_bytes, d->mem);
}

/* ---- lists -------------------------------------------------------------- */

static void
s_lru_unlink(sb_dedup *d, s_prod *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        d->lru_head = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    else
        d->lru_tail = p->prev;
    p->prev = p->next = NULL;
}

static void
s_lru_front(sb_dedup *d, s_prod *p)
{
    p->next = d->lru_head;
    p->prev = NULL;
    if (d->lru_head != NULL)
        d->lru_head->prev = p;
    d->lru_head = p;
    if (d->lru_tail == NULL)
        d->lru_tail = p;
}

static void
s_touch(sb_dedup *d, s_prod *p)
{
    if (d->lru_head == p)
        return;
    s_lru_unlink(d, p);
    s_lru_front(d, p);
}

/* ---- tombstones --------------------------------------------------------- */

static void
s_tomb_drop_oldest(sb_dedup *d)
{
    s_tomb *t = d->tomb_head;

    d->tomb_head = t->next;
    if (d->tomb_head == NULL)
        d->tomb_tail = NULL;
    else
        d->tomb_head->prev = NULL;
    sb_map_del(d->tombs, t->id, t->len);
    s_mem(d, -(int64_t)(sizeof *t + t->len + S_MAP_SLOT));
    free(t);
    /* From here on an unknown producer may be one whose history went with
     * this tombstone: it can no longer be presumed new from its first seq. */
    d->lossy = 1;
    atomic_fetch_add(&d->st.tomb_evicted, 1);
    atomic_store(&d->st.tombs, sb_map_size(d->tombs));
}

/* Remembers an evicted producer's hi. Replaces an older tombstone of the
 * same id in place (its FIFO position stays: an approximation that only
 * makes it go sooner). */
static void
s_tomb_add(sb_dedup *d, const char *id, uint32_t len, uint64_t hi)
{
    s_tomb *t = sb_map_get(d->tombs, id, len);

    if (t != NULL) {
        if (hi > t->hi)
            t->hi = hi;
        return;
    }
    if (d->cfg.tombstones == 0) {
        d->lossy = 1;
        atomic_fetch_add(&d->st.tomb_evicted, 1);
        return;
    }
    if (sb_map_size(d->tombs) >= d->cfg.tombstones)
        s_tomb_drop_oldest(d);
    if ((t = malloc(sizeof *t + len)) == NULL) {
        d->lossy = 1;
        return;
    }
    t->next = NULL;
    t->prev = d->tomb_tail;
    t->hi = hi;
    t->len = len;
    memcpy(t->id, id, len);
    if (sb_map_put(d->tombs, t->id, len, t) != SB_OK) {
        free(t);
        d->lossy = 1;
        return;
    }
    if (d->tomb_tail != NULL)
        d->tomb_tail->next = t;
    else
        d->tomb_head = t;
    d->tomb_tail = t;
    s_mem(d, (int64_t)(sizeof *t + len + S_MAP_SLOT));
    atomic_store(&d->st.tombs, sb_map_size(d->tombs));
}

/* Takes the tombstone of id out (its hi into *hi). 1 if there was one. */
static int
s_tomb_take(sb_dedup *d, const char *id, uint32_t len, uint64_t *hi)
{
    s_tomb *t = sb_map_get(d->tombs, id, len);

    if (t == NULL)
        return 0;
    *hi = t->hi;
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        d->tomb_head = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    else
        d->tomb_tail = t->prev;
    sb_map_del(d->tombs, id, len);
    s_mem(d, -(int64_t)(sizeof *t + len + S_MAP_SLOT));
    free(t);
    atomic_store(&d->st.tombs, sb_map_size(d->tombs));
    return 1;
}

/* ---- producers ---------------------------------------------------------- */

static void
s_prod_free(sb_dedup *d, s_prod *p)
{
    s_mem(d, -(int64_t)(sizeof *p + p->len + S_MAP_SLOT +
                        (size_t)p->cap * sizeof(s_slot)));
    free(p->ring);
    free(p);
}

static void
s_prod_evict(sb_dedup *d)
{
    s_prod *p = d->lru_tail;

    s_lru_unlink(d, p);
    sb_map_del(d->prods, p->id, p->len);
    s_tomb_add(d, p->id, p->len, p->hi);
    s_prod_free(d, p);
    atomic_fetch_add(&d->st.prod_evicted, 1);
    atomic_store(&d->st.producers, sb_map_size(d->prods));
}

/* The lowest producer seq the entry answers for; below it: the horizon. */
static uint64_t
s_floor(const sb_dedup *d, const s_prod *p)
{
    uint64_t w = d->cfg.producer_window;
    uint64_t f = p->hi >= w ? p->hi - w + 1 : 0;

    return f > p->lo ? f : p->lo;
}

static s_slot *
s_find(const s_prod *p, uint64_t pseq)
{
    s_slot *s;

    if (p->cap == 0)
        return NULL;
    s = &p->ring[pseq % p->cap];
    return s->seq != 0 && s->pseq == pseq ? s : NULL;
}

static sb_dedup_verdict
s_check_producer(sb_dedup *d, const sb_event *ev, sb_dedup_orig *orig)
{
    s_prod *p = sb_map_get(d->prods, ev->producer_id, ev->producer_id_len);
    uint64_t pseq = ev->producer_seq;

    if (p == NULL) {
        s_tomb *t = sb_map_get(d->tombs, ev->producer_id, ev->producer_id_len);
        /* An evicted producer: what it had reached is known, not which. */
        return t != NULL && pseq <= t->hi ? SB_DEDUP_BEYOND : SB_DEDUP_NEW;
    }
    s_touch(d, p);
    if (pseq > p->hi)
        return SB_DEDUP_NEW;
    if (pseq < s_floor(d, p))
        return SB_DEDUP_BEYOND;
    s_slot *s = s_find(p, pseq);
    if (s == NULL)
        return SB_DEDUP_NEW; /* a gap, never accepted: see sb_dedup.h */
    orig->seq = s->seq;
    orig->agg_seq = s->agg_seq;
    return SB_DEDUP_DUPLICATE;
}

/* Grows p's ring to at least `want` slots (up to the window), keeping
 * every remembered producer seq at its new place. */
static sb_err
s_grow(sb_dedup *d, s_prod *p, uint32_t want)
{
    uint32_t cap = p->cap ? p->cap : S_RING_MIN;
    s_slot *ring;

    while (cap < want)
        cap = cap > UINT32_MAX / 2 ? UINT32_MAX : cap * 2;
    if (cap > d->cfg.producer_window)
        cap = d->cfg.producer_window;
    if (cap <= p->cap)
        return SB_OK;
    if ((ring = calloc(cap, sizeof *ring)) == NULL)
        return SB_ENOMEM;
    for (uint32_t i = 0; i < p->cap; i++)
        if (p->ring[i].seq != 0)
            ring[p->ring[i].pseq % cap] = p->ring[i];
    s_mem(d, (int64_t)((size_t)(cap - p->cap) * sizeof(s_slot)));
    free(p->ring);
    p->ring = ring;
    p->cap = cap;
    return SB_OK;
}

static s_prod *
s_prod_get(sb_dedup *d, const sb_event *ev)
{
    s_prod *p = sb_map_get(d->prods, ev->producer_id, ev->producer_id_len);
    uint32_t len = ev->producer_id_len;
    uint64_t thi;

    if (p != NULL)
        return p;
    if ((p = calloc(1, sizeof *p + len)) == NULL)
        return NULL;
    p->len = len;
    memcpy(p->id, ev->producer_id, len);
    if (sb_map_put(d->prods, p->id, len, p) != SB_OK) {
        free(p);
        return NULL;
    }
    /* What this entry can vouch for: everything, while the index has lost
     * nothing; above an evicted entry's hi; else only from here on. */
    if (s_tomb_take(d, p->id, len, &thi))
        p->lo = thi + 1;
    else
        p->lo = d->lossy ? ev->producer_seq : 0;
    s_lru_front(d, p);
    s_mem(d, (int64_t)(sizeof *p + len + S_MAP_SLOT));
    if (sb_map_size(d->prods) > d->cfg.producers)
        s_prod_evict(d); /* the tail: never p, which is at the head */
    atomic_store(&d->st.producers, sb_map_size(d->prods));
    return p;
}

static sb_err
s_record_producer(sb_dedup *d, const sb_event *ev)
{
    s_prod *p = s_prod_get(d, ev);
    uint64_t pseq = ev->producer_seq;
    s_slot *s;

    if (p == NULL)
        return SB_ENOMEM;
    s_touch(d, p);
    /* Below the window already (a rebuild meeting an old producer seq
     * after newer ones): it could only take the slot of one still inside.
     * Refused if it comes again, which is what the horizon promises. */
    if (pseq < s_floor(d, p))
        return SB_OK;
    for (;;) {
        if (p->cap == 0 && s_grow(d, p, S_RING_MIN) != SB_OK)
            return SB_ENOMEM;
        s = &p->ring[pseq % p->cap];
        /* Would this overwrite a producer seq still inside the window?
         * Only while the ring is smaller than the window: grow first. */
        uint64_t hi = pseq > p->hi ? pseq : p->hi;
        uint64_t w = d->cfg.producer_window;
        uint64_t floor = hi >= w ? hi - w + 1 : 0;
        if (s->seq == 0 || s->pseq == pseq || s->pseq < floor ||
            p->cap >= d->cfg.producer_window)
            break;
        if (s_grow(d, p, p->cap + 1) != SB_OK)
            return SB_ENOMEM;
    }
    *s = (s_slot){pseq, ev->seq, ev->agg_seq};
    if (pseq > p->hi)
        p->hi = pseq;
    return SB_OK;
}

/* ---- event ids ---------------------------------------------------------- */

static void
s_eid_drop_oldest(sb_dedup *d)
{
    s_eid *e = d->eid_head;

    d->eid_head = e->next;
    if (d->eid_head == NULL)
        d->eid_tail = NULL;
    sb_map_del(d->eids, e->id, e->len);
    s_mem(d, -(int64_t)(sizeof *e + e->len + S_MAP_SLOT));
    free(e);
}

static void
s_expire(sb_dedup *d, uint64_t now_ms)
{
    uint64_t age = (uint64_t)d->cfg.event_id_age_s * 1000;
    uint64_t n = 0;

    if (age == 0)
        return;
    while (d->eid_head != NULL && now_ms - d->eid_head->at_ms >= age) {
        s_eid_drop_oldest(d);
        n++;
    }
    if (n > 0) {
        atomic_fetch_add(&d->st.id_expired, n);
        atomic_store(&d->st.ids, sb_map_size(d->eids));
    }
}

static sb_err
s_record_eid(sb_dedup *d, const sb_event *ev, uint64_t now_ms)
{
    uint32_t len = ev->event_id_len;
    s_eid *e = sb_map_get(d->eids, ev->event_id, len);

    if (e != NULL)
        return SB_OK; /* the first one stays the original */
    if (sb_map_size(d->eids) >= d->cfg.event_ids) {
        s_eid_drop_oldest(d);
        atomic_fetch_add(&d->st.id_evicted, 1);
    }
    if ((e = malloc(sizeof *e + len)) == NULL)
        return SB_ENOMEM;
    e->next = NULL;
    e->seq = ev->seq;
    e->agg_seq = ev->agg_seq;
    e->at_ms = now_ms;
    e->len = len;
    memcpy(e->id, ev->event_id, len);
    if (sb_map_put(d->eids, e->id, len, e) != SB_OK) {
        free(e);
        return SB_ENOMEM;
    }
    if (d->eid_tail != NULL)
        d->eid_tail->next = e;
    else
        d->eid_head = e;
    d->eid_tail = e;
    s_mem(d, (int64_t)(sizeof *e + len + S_MAP_SLOT));
    atomic_store(&d->st.ids, sb_map_size(d->eids));
    return SB_OK;
}

/* ---- public ------------------------------------------------------------- */

sb_err
sb_dedup_new(sb_dedup **out, const sb_dedup_config *cfg)
{
    char why[128];
    sb_dedup *d;

    if (sb_dedup_config_check(cfg, why, sizeof why) != SB_OK)
        return SB_EINVAL;
    if ((d = calloc(1, sizeof *d)) == NULL)
        return SB_ENOMEM;
    d->cfg = *cfg;
    if (sb_map_new(&d->prods, 64) != SB_OK ||
        sb_map_new(&d->tombs, 64) != SB_OK ||
        sb_map_new(&d->eids, 1024) != SB_OK) {
        sb_dedup_destroy(&d);
        return SB_ENOMEM;
    }
    *out = d;
    return SB_OK;
}

void
sb_dedup_destroy(sb_dedup **dp)
{
    sb_dedup *d = *dp;

    if (d == NULL)
        return;
    while (d->lru_head != NULL) {
        s_prod *p = d->lru_head;
        d->lru_head = p->next;
        free(p->ring);
        free(p);
    }
    while (d->tomb_head != NULL) {
        s_tomb *t = d->tomb_head;
        d->tomb_head = t->next;
        free(t);
    }
    while (d->eid_head != NULL) {
        s_eid *e = d->eid_head;
        d->eid_head = e->next;
        free(e);
    }
    sb_map_destroy(&d->prods);
    sb_map_destroy(&d->tombs);
    sb_map_destroy(&d->eids);
    free(d);
    *dp = NULL;
}

sb_dedup_verdict
sb_dedup_check(sb_dedup *d, const sb_event *ev, uint64_t now_ms,
               sb_dedup_orig *orig)
{
    sb_dedup_verdict v = SB_DEDUP_NEW;

    if (ev->producer_id_len > 0 && d->cfg.producers > 0) {
        v = s_check_producer(d, ev, orig);
        if (v == SB_DEDUP_DUPLICATE) {
            atomic_fetch_add(&d->st.dup_producer, 1);
            return v;
        }
    }
    /* An event id can still prove a duplicate that the producer's window
     * has let go: the better answer, so it is asked either way. */
    if (ev->event_id_len > 0 && d->cfg.event_ids > 0) {
        s_expire(d, now_ms);
        s_eid *e = sb_map_get(d->eids, ev->event_id, ev->event_id_len);
        if (e != NULL) {
            orig->seq = e->seq;
            orig->agg_seq = e->agg_seq;
            atomic_fetch_add(&d->st.dup_event_id, 1);
            return SB_DEDUP_DUPLICATE;
        }
    }
    if (v == SB_DEDUP_BEYOND)
        atomic_fetch_add(&d->st.beyond, 1);
    return v;
}

/* Back under max_bytes, in the order sb_dedup.h gives. The producer just
 * recorded is at the LRU head and stays: it is never evicted while it is
 * the only one. */
static void
s_trim(sb_dedup *d)
{
    while (d->cfg.max_bytes != 0 && d->mem > d->cfg.max_bytes) {
        if (d->eid_head != NULL) {
            s_eid_drop_oldest(d);
            atomic_fetch_add(&d->st.id_evicted, 1);
            atomic_store(&d->st.ids, sb_map_size(d->eids));
        } else if (d->lru_tail != NULL && d->lru_tail != d->lru_head) {
            s_prod_evict(d);
        } else if (d->tomb_head != NULL) {
            s_tomb_drop_oldest(d);
        } else {
            break;
        }
    }
}

sb_err
sb_dedup_record(sb_dedup *d, const sb_event *ev, uint64_t now_ms)
{
    sb_err rc = SB_OK;

    if (ev->producer_id_len > 0 && d->cfg.producers > 0 &&
        s_record_producer(d, ev) != SB_OK)
        rc = SB_ENOMEM;
    if (ev->event_id_len > 0 && d->cfg.event_ids > 0) {
        s_expire(d, now_ms);
        if (s_record_eid(d, ev, now_ms) != SB_OK)
            rc = SB_ENOMEM;
    }
    if (rc != SB_OK)
        atomic_fetch_add(&d->st.nomem, 1);
    s_trim(d);
    return rc;
}

sb_err
sb_dedup_rebuild(sb_dedup *d, const char *dir, uint64_t last_seq,
                 uint64_t now_ms)
{
    sb_store_reader *r = NULL;
    sb_store_rec rec;
    uint64_t from = 1, n = 0, t0 = sb_clock_mono_ns();
    sb_err rc;

    if (d->cfg.producers == 0 && d->cfg.event_ids == 0)
        return SB_OK;
    if (last_seq == 0)
        return SB_OK; /* a new log: nothing to forget */
    if ((rc = sb_store_reader_open(&r, dir)) != SB_OK)
        return rc;
    uint64_t first = sb_store_reader_first_seq(r);
    if (d->cfg.rebuild_events > 0 && last_seq >= d->cfg.rebuild_events)
        from = last_seq - d->cfg.rebuild_events + 1;
    if (from < first)
        from = first;
    /* Producers whose events are all before `from` are gone: an unknown
     * producer can no longer be presumed new from its very first seq. */
    if (from > 1)
        d->lossy = 1;
    rc = sb_store_reader_seek_seq(r, from);
    if (rc == SB_ENOENT)
        rc = sb_store_reader_seek_start(r);
    while (rc == SB_OK && (rc = sb_store_reader_next(r, &rec)) == SB_OK) {
        if (rec.type != SB_REC_EVENT || rec.key < from)
            continue;
        if (rec.ev.producer_id_len == 0 && rec.ev.event_id_len == 0)
            continue;
        rec.ev.seq = rec.key;
        (void)sb_dedup_record(d, &rec.ev, now_ms);
        n++;
    }
    sb_store_reader_close(&r);
    atomic_store(&d->st.rebuild_events, n);
    atomic_store(&d->st.rebuild_ms, (sb_clock_mono_ns() - t0) / 1000000);
    SB_LOG(SB_LOG_NOTICE, "dedup.rebuilt",
           "from_seq=%llu last_seq=%llu events=%llu producers=%zu "
           "event_ids=%zu complete=%d ms=%llu",
           (unsigned long long)from, (unsigned long long)last_seq,
           (unsigned long long)n, sb_map_size(d->prods), sb_map_size(d->eids),
           !d->lossy, (unsigned long long)atomic_load(&d->st.rebuild_ms));
    return rc == SB_ENOENT ? SB_OK : rc;
}

int
sb_dedup_complete(const sb_dedup *d)
{
    return !d->lossy;
}

sb_dedup_stats *
sb_dedup_stats_get(sb_dedup *d)
{
    return &d->st;
}

size_t
sb_dedup_producer_bytes(const sb_dedup_config *c, uint32_t name_len)
{
    return sizeof(s_prod) + name_len + S_MAP_SLOT +
           (size_t)c->producer_window * sizeof(s_slot);
}

size_t
sb_dedup_event_id_bytes(uint32_t name_len)
{
    return sizeof(s_eid) + name_len + S_MAP_SLOT;
}
