/* The subscriber's gap engine (clients/c/src/sbc_sub.c) against a fake
 * broker: a list of published batches with the broker's fetch rules
 * (prefix/exact, seq range, cursor, page and scan bounds, retention),
 * hello, an epoch, a live stream the test feeds (dropping what it wants),
 * and a clock the test moves. No network, no sleep.
 *
 * Behaviours: in order, duplicate, missing (middle and last batch of an
 * aggregate), late joiner (new aggregate whose predecessor is before or
 * after the start), resume from a seq, out of retention (reported, then
 * carried on; sticky with SB_LOSS_STOP), restart (new epoch), the resume
 * position with a batch held open across it, a mass gap filled in a
 * few fetches rather than one per aggregate, and a stopping broker's end
 * of epoch (its tail fetched while its query socket is open; reported
 * lost when it closed first, then fetched from the restarted broker). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbc_sub.h"
#include "snapbus.pb-c.h"

#define FB_MAX 20000

typedef struct {
    char agg[32];
    uint64_t bid, first, last, prev, low;
} fb_batch;

typedef struct {
    fb_batch b[FB_MAX]; /* b[i].bid == i + 1 */
    size_t n;
    size_t first;      /* retained: b[first..n) */
    uint64_t horizon;  /* retained_first_seq */
    uint64_t seq;      /* last seq assigned */
    uint64_t epoch;
    uint64_t now;
    uint32_t max_scan; /* ring entries looked at per fetch */
    size_t live[FB_MAX];
    size_t lhead, ln;
    int fetches, hellos, header_fetches;
    int down; /* the broker is gone: hello and fetch get no answer */
    sbc_sub *sub;
} fb;

/* Publishes one batch of n events of agg; returns its index. low is the
 * batch's low_seq (0: last + 1, nothing else open). */
static size_t
fb_publish_at(fb *f, const char *agg, uint64_t first, uint64_t last,
              uint64_t low)
{
    fb_batch *b = &f->b[f->n];
    uint64_t prev = 0;

    for (size_t i = f->n; i-- > 0;)
        if (strcmp(f->b[i].agg, agg) == 0) {
            prev = f->b[i].last;
            break;
        }
    snprintf(b->agg, sizeof b->agg, "%s", agg);
    b->bid = f->n + 1;
    b->first = first;
    b->last = last;
    b->prev = prev;
    b->low = low ? low : last + 1;
    if (last > f->seq)
        f->seq = last;
    return f->n++;
}

static size_t
fb_publish(fb *f, const char *agg, uint64_t n)
{
    return fb_publish_at(f, agg, f->seq + 1, f->seq + n, 0);
}

/* The live stream delivers b[i]. */
static void
fb_live(fb *f, size_t i)
{
    f->live[(f->lhead + f->ln++) % FB_MAX] = i;
}

static void
fb_evict(fb *f, size_t upto)
{
    for (; f->first < upto; f->first++)
        if (f->b[f->first].last + 1 > f->horizon)
            f->horizon = f->b[f->first].last + 1;
}

static sb_snapshot *
fb_encode(const fb_batch *b, int headers_only)
{
    Snapbus__SnapshotBatch m = SNAPBUS__SNAPSHOT_BATCH__INIT;
    Snapbus__SequencedEvent e = SNAPBUS__SEQUENCED_EVENT__INIT;
    Snapbus__SequencedEvent *ev[1] = {&e};
    uint8_t buf[512];
    sb_snapshot *s;

    m.version = 1;
    m.aggregate = (char *)b->agg;
    m.batch_id = b->bid;
    m.first_seq = b->first;
    m.last_seq = b->last;
    m.prev_last_seq = b->prev;
    e.seq = b->last;
    e.type = "T";
    if (!headers_only) {
        m.n_events = 1;
        m.events = ev;
    }
    size_t len = snapbus__snapshot_batch__pack(&m, buf);
    assert_int_equal(sb_snapshot_decode(&s, buf, len), SB_OK);
    return s;
}

static sb_err
fb_t_live(void *ctx, sb_snapshot **out, int wait_ms)
{
    fb *f = ctx;

    if (f->ln > 0) {
        *out = fb_encode(&f->b[f->live[f->lhead]], 0);
        f->lhead = (f->lhead + 1) % FB_MAX;
        f->ln--;
        return SB_OK;
    }
    if (wait_ms < 0)
        return SB_EAGAIN; /* as a signal would: never block a test */
    f->now += (uint64_t)wait_ms; /* the wait passes, instantly */
    return SB_ETIMEDOUT;
}

static uint64_t
fb_t_drain(void *ctx)
{
    fb *f = ctx;
    uint64_t n = f->ln;

    f->ln = 0;
    return n;
}

static uint64_t
fb_last_seq(const fb *f)
{
    uint64_t m = 0;

    for (size_t i = 0; i < f->n; i++)
        if (f->b[i].last > m)
            m = f->b[i].last;
    return m;
}

static sb_err
fb_t_hello(void *ctx, sbc_hello_info *h, int wait_ms, int fresh)
{
    fb *f = ctx;

    if (f->down) {
        f->now += wait_ms > 0 ? (uint64_t)wait_ms : 0;
        return SB_ETIMEDOUT;
    }
    f->hellos++;
    h->epoch = f->epoch;
    h->last_seq = fb_last_seq(f);
    h->last_batch_id = f->n;
    h->low_seq = f->n ? f->b[f->n - 1].low : 1;
    return SB_OK;
}

/* The broker's ring walk (docs/PROTOCOL.md section 9). */
static sb_err
fb_t_fetch(void *ctx, const sbc_fetch_req *q, sb_fetch_page *info,
           sb_snapshot **out, int wait_ms, int fresh)
{
    fb *f = ctx;
    size_t plen = strlen(q->prefix);
    uint64_t first_id = f->first < f->n ? f->first + 1 : f->n + 1;
    size_t start;

    if (f->down) {
        f->now += wait_ms > 0 ? (uint64_t)wait_ms : 0;
        return SB_ETIMEDOUT;
    }
    f->fetches++;
    f->header_fetches += q->headers_only;
    memset(info, 0, sizeof *info);
    info->epoch = f->epoch;
    info->retained_first_seq = f->horizon ? f->horizon : 1;
    info->retained_first_batch_id = f->first < f->n ? first_id : 0;
    info->last_seq = fb_last_seq(f);
    info->last_batch_id_published = f->n;
    if (q->after_batch_id != 0) {
        if (q->after_batch_id + 1 < first_id)
            return SB_ENOENT;
        start = (size_t)q->after_batch_id;
    } else {
        if (q->from_seq != 0 && q->from_seq < info->retained_first_seq)
            return SB_ENOENT;
        start = f->first;
    }
    info->last_batch_id = q->after_batch_id;
    uint32_t scanned = 0;
    for (size_t i = start; i < f->n; i++, scanned++) {
        const fb_batch *b = &f->b[i];
        if (info->count == q->max_batches || scanned == f->max_scan) {
            info->more = 1;
            break;
        }
        info->last_batch_id = b->bid;
        if (b->last < q->from_seq || (q->to_seq && b->first > q->to_seq) ||
            strncmp(b->agg, q->prefix, plen) != 0 ||
            (q->exact && strlen(b->agg) != plen))
            continue;
        out[info->count++] = fb_encode(b, q->headers_only);
    }
    if (info->last_batch_id != 0 && info->last_batch_id <= f->n)
        info->cursor_low_seq = f->b[info->last_batch_id - 1].low;
    return SB_OK;
}

static uint64_t
fb_t_now(void *ctx)
{
    return ((fb *)ctx)->now;
}

static fb *
fb_new(uint64_t resume, sb_loss_policy pol)
{
    fb *f = calloc(1, sizeof *f);
    sbc_transport t = {f,          fb_t_live,  fb_t_drain, fb_t_hello,
                       fb_t_fetch, fb_t_now};
    sbc_sub_config c = {resume, 500, pol};

    f->epoch = 77;
    f->now = 1000;
    f->max_scan = 1000000;
    assert_int_equal(sbc_sub_new(&f->sub, &t, &c), SB_OK);
    assert_int_equal(sbc_sub_add(f->sub, "", 0), SB_OK);
    return f;
}

static void
fb_free(fb *f)
{
    sbc_sub_destroy(&f->sub);
    free(f);
}

/* What recv returns until it has nothing: batch ids, -1 for SB_ENOENT,
 * -2 for SB_ERESTART. */
typedef struct {
    long v[FB_MAX];
    size_t n;
} got;

static void
fb_recv_all(fb *f, got *g)
{
    for (;;) {
        sb_snapshot *b;
        sb_err rc = sbc_sub_recv(f->sub, &b, 0);
        if (rc == SB_EAGAIN)
            return;
        assert_true(g->n < FB_MAX);
        if (rc == SB_ENOENT) {
            g->v[g->n++] = -1;
            continue;
        }
        if (rc == SB_ERESTART) {
            g->v[g->n++] = -2;
            continue;
        }
        assert_int_equal(rc, SB_OK);
        g->v[g->n++] = (long)sb_snapshot_batch_id(b);
        sb_snapshot_destroy(&b);
    }
}

static sb_subscriber_stats
fb_stats(fb *f)
{
    sb_subscriber_stats st;
    sbc_sub_stats(f->sub, &st);
    return st;
}

/* ---- tests ---------------------------------------------------------------- */

static void
test_in_order_live_needs_no_fetch(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    fb_recv_all(f, &g); /* hello: live start at batch 0 */
    for (int i = 0; i < 6; i++)
        fb_live(f, fb_publish(f, i % 2 ? "a" : "b", 3));
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(g.v[i], (long)i + 1);
    assert_int_equal(f->fetches, 0);
    assert_int_equal(f->hellos, 1);
    fb_free(f);
}

static void
test_duplicate_and_old_batch_dropped(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    fb_recv_all(f, &g);
    size_t a1 = fb_publish(f, "a", 1), a2 = fb_publish(f, "a", 1);
    fb_live(f, a1);
    fb_live(f, a2);
    fb_live(f, a2); /* the same batch again */
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(fb_stats(f).duplicates, 1);
    fb_free(f);
}

static void
test_missing_middle_batch_filled_in_order(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    fb_recv_all(f, &g);
    size_t a1 = fb_publish(f, "a", 2);
    size_t b1 = fb_publish(f, "b", 2);
    (void)fb_publish(f, "a", 2); /* a2: dropped on the way */
    size_t b2 = fb_publish(f, "b", 2);
    size_t a3 = fb_publish(f, "a", 2);
    fb_live(f, a1);
    fb_live(f, b1);
    fb_live(f, b2);
    fb_live(f, a3);
    fb_recv_all(f, &g);
    long want[] = {1, 2, 4, 3, 5}; /* a2 (id 3) before a3 */
    assert_int_equal(g.n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(g.v[i], want[i]);
    sb_subscriber_stats st = fb_stats(f);
    assert_int_equal(st.gaps, 1);
    assert_int_equal(st.filled, 1);
    assert_int_equal(st.duplicates, 0);
    /* a2 arrives live after all (it was only late): a duplicate. */
    fb_live(f, 2);
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 5);
    assert_int_equal(fb_stats(f).duplicates, 1);
    fb_free(f);
}

static void
test_lost_last_batch_found_by_idle_probe(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    fb_recv_all(f, &g);
    fb_live(f, fb_publish(f, "a", 1));
    (void)fb_publish(f, "a", 1); /* the last one: nothing follows it */
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 1);
    f->now += 499; /* the probe is due after 500 ms without a batch */
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 1);
    f->now += 1;
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.v[1], 2);
    assert_true(fb_stats(f).probes >= 1);
    assert_true(f->header_fetches >= 1);
    fb_free(f);
}

/* Joining while publishing: aggregate c's predecessor was published
 * before hello (not wanted), d's after it and dropped (wanted). */
static void
test_late_joiner_tells_before_start_from_missed(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    size_t c1 = fb_publish(f, "c", 1);
    (void)c1;
    fb_recv_all(f, &g); /* hello: start after batch 1 */
    (void)fb_publish(f, "d", 1); /* d1: after the start, dropped */
    size_t c2 = fb_publish(f, "c", 1), d2 = fb_publish(f, "d", 1);
    fb_live(f, c2);
    fb_live(f, d2);
    fb_recv_all(f, &g);
    long want[] = {3, 2, 4}; /* c2; d1 (filled) then d2 */
    assert_int_equal(g.n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(g.v[i], want[i]);
    assert_int_equal(fb_stats(f).filled, 1);
    fb_free(f);
}

static void
test_resume_from_seq_then_live_without_duplicates(void **state)
{
    fb *f = fb_new(5, SB_LOSS_FAIL); /* every batch holding a seq >= 5 */
    got g = {0};

    for (int i = 0; i < 5; i++)
        fb_publish(f, i % 2 ? "a" : "b", 2); /* seqs 1-2, 3-4, 5-6, ... */
    fb_live(f, 3);                           /* also seen live: id 4 */
    f->max_scan = 2;                         /* pages of 2 */
    fb_recv_all(f, &g);
    long want[] = {3, 4, 5};
    assert_int_equal(g.n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(g.v[i], want[i]);
    assert_int_equal(fb_stats(f).duplicates, 1);
    assert_true(sbc_sub_position(f->sub) >= 5);
    fb_live(f, fb_publish(f, "a", 1));
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 4);
    assert_int_equal(g.v[3], 6);
    fb_free(f);
}

static void
test_resume_out_of_retention_is_reported_then_carries_on(void **state)
{
    fb *f = fb_new(1, SB_LOSS_FAIL);
    got g = {0};
    sb_loss l;

    for (int i = 0; i < 6; i++)
        fb_publish(f, "a", 10); /* seqs 1-10, ..., 51-60 */
    fb_evict(f, 2);             /* 1-20 gone */
    assert_int_equal(sbc_sub_loss(f->sub, &l), SB_ENOENT);
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 5);
    assert_int_equal(g.v[0], -1); /* first the loss, then what is left */
    for (size_t i = 1; i < 5; i++)
        assert_int_equal(g.v[i], (long)i + 2);
    assert_int_equal(sbc_sub_loss(f->sub, &l), SB_OK);
    assert_int_equal(l.from_seq, 1);
    assert_int_equal(l.to_seq, 20);
    assert_int_equal(l.retained_first_seq, 21);
    assert_int_equal(fb_stats(f).lost, 1);
    fb_free(f);
}

static void
test_stop_policy_is_sticky(void **state)
{
    fb *f = fb_new(1, SB_LOSS_STOP);
    got g = {0};

    fb_publish(f, "a", 10);
    fb_publish(f, "a", 10);
    fb_evict(f, 1);
    sb_snapshot *b;
    assert_int_equal(sbc_sub_recv(f->sub, &b, 0), SB_ENOENT);
    assert_int_equal(sbc_sub_recv(f->sub, &b, 0), SB_ENOENT);
    fb_live(f, fb_publish(f, "a", 1));
    assert_int_equal(sbc_sub_recv(f->sub, &b, 0), SB_ENOENT);
    (void)g;
    fb_free(f);
}

/* A live gap whose missing batch was already evicted: reported with the
 * aggregate and seq range, then the batch itself is delivered. */
static void
test_gap_out_of_retention_names_the_aggregate(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};
    sb_loss l;

    fb_recv_all(f, &g);
    fb_live(f, fb_publish(f, "a", 1)); /* seq 1 */
    fb_recv_all(f, &g);
    (void)fb_publish(f, "a", 3); /* seqs 2-4, dropped */
    fb_evict(f, 2);              /* and evicted */
    fb_live(f, fb_publish(f, "a", 1));
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 3);
    assert_int_equal(g.v[1], -1);
    assert_int_equal(g.v[2], 3);
    assert_int_equal(sbc_sub_loss(f->sub, &l), SB_OK);
    assert_int_equal(l.from_seq <= 2, 1);
    assert_int_equal(l.to_seq >= 4, 1);
    fb_free(f);
}

/* The probe's own cursor was evicted before it looked: each aggregate
 * reports what it lost, by name: a known one from its chain, one first
 * seen afterwards because its predecessor is below the eviction horizon
 * (not a blanket report that would also name batches received live). */
static void
test_probe_cursor_evicted_reports_each_aggregate(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};
    sb_loss l;

    fb_recv_all(f, &g);
    fb_live(f, fb_publish(f, "a", 1)); /* id 1, seen */
    fb_recv_all(f, &g);
    for (int i = 0; i < 6; i++)         /* ids 2-7: b a b a b a, dropped */
        (void)fb_publish(f, i % 2 ? "a" : "b", 1);
    fb_evict(f, 4);                     /* ids 1-4 gone (seqs 1-4) */
    f->now += 500;                      /* idle probe */
    fb_recv_all(f, &g);
    long want[] = {1, -1, 5, -1, 6, 7}; /* a's loss, a5, b's loss, b6, a7 */
    assert_int_equal(g.n, 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(g.v[i], want[i]);
    assert_int_equal(sbc_sub_loss(f->sub, &l), SB_OK);
    assert_string_equal(l.aggregate, "b"); /* the last one reported */
    assert_int_equal(l.to_seq, 4);
    assert_int_equal(fb_stats(f).lost, 2);
    fb_free(f);
}

/* The broker restarted without its history: a typed notice, then every
 * batch of the new epoch from its first seq. */
static void
test_restart_new_epoch_starts_over(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    fb_recv_all(f, &g);
    for (int i = 0; i < 3; i++)
        fb_live(f, fb_publish(f, "a", 5));
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 3);
    /* New broker: ids and seqs from 1, new epoch. */
    f->n = f->first = 0;
    f->seq = f->horizon = 0;
    f->epoch = 78;
    size_t n1 = fb_publish(f, "a", 1);
    (void)n1;
    fb_live(f, fb_publish(f, "a", 1)); /* id 2 <= 3: suspicious */
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 6);
    assert_int_equal(g.v[3], -2);
    assert_int_equal(g.v[4], 1);
    assert_int_equal(g.v[5], 2);
    assert_int_equal(fb_stats(f).restarts, 1);
    fb_free(f);
}

/* A batch held open (long delay) keeps the position below its seqs even
 * though later seqs were delivered; a new subscriber resumed from the
 * position gets it. */
static void
test_position_covers_batch_open_across_it(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};

    fb_recv_all(f, &g);
    /* Seqs 1-2 sit in slow's open batch while fast publishes 3..8. */
    fb_live(f, fb_publish_at(f, "fast", 3, 4, 1));
    fb_live(f, fb_publish_at(f, "fast", 5, 8, 1));
    fb_recv_all(f, &g);
    f->now += 500; /* idle probe: checked through batch 2 */
    fb_recv_all(f, &g);
    uint64_t pos = sbc_sub_position(f->sub);
    assert_true(pos >= 1 && pos <= 1);
    /* slow flushes; this subscriber is gone (never saw it); resume. */
    fb_publish_at(f, "slow", 1, 2, 9);
    fb *f2 = fb_new(pos, SB_LOSS_FAIL);
    memcpy(f2->b, f->b, sizeof f->b);
    f2->n = f->n;
    f2->seq = f->seq;
    got g2 = {0};
    fb_recv_all(f2, &g2);
    int saw_slow = 0;
    for (size_t i = 0; i < g2.n; i++)
        saw_slow |= g2.v[i] == 3;
    assert_true(saw_slow);
    fb_free(f2);
    fb_free(f);
}

/* 100 aggregates each lose 20 batches in a row: filled with a handful of
 * fetches (header pages plus runs), not one fetch per aggregate. */
static void
test_mass_gap_filled_in_few_fetches(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};
    char agg[16];

    fb_recv_all(f, &g);
    for (int a = 0; a < 100; a++) {
        snprintf(agg, sizeof agg, "g/%d", a);
        fb_live(f, fb_publish(f, agg, 1));
    }
    for (int r = 0; r < 20; r++)
        for (int a = 0; a < 100; a++) {
            snprintf(agg, sizeof agg, "g/%d", a);
            (void)fb_publish(f, agg, 1); /* 2000 dropped */
        }
    for (int a = 0; a < 100; a++) {
        snprintf(agg, sizeof agg, "g/%d", a);
        fb_live(f, fb_publish(f, agg, 1));
    }
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 2200);
    /* Per aggregate in seq order, every batch once. */
    uint64_t last[100] = {0};
    for (size_t i = 0; i < g.n; i++) {
        const fb_batch *b = &f->b[g.v[i] - 1];
        int a = atoi(b->agg + 2);
        assert_int_equal(b->prev, last[a]);
        last[a] = b->last;
    }
    sb_subscriber_stats st = fb_stats(f);
    assert_int_equal(st.filled, 2000);
    assert_int_equal(st.duplicates, 0);
    assert_true(f->fetches <= 10);
    fb_free(f);
}

/* The broker stops: its EpochEnd names its last batch; the tail the live
 * stream dropped is fetched at once, not at the next idle probe. */
static void
test_epoch_end_tail_fetched_while_open(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};
    sb_loss l;

    fb_recv_all(f, &g);
    fb_live(f, fb_publish(f, "a", 2));
    fb_live(f, fb_publish(f, "b", 2));
    (void)fb_publish(f, "a", 1); /* the tail: dropped by PUB */
    (void)fb_publish(f, "c", 1);
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 2);
    sbc_sub_epoch_end(f->sub, 77, 4, f->seq, 5000);
    assert_int_equal(sbc_sub_unchecked(f->sub, &l), SB_OK);
    assert_int_equal(l.from_batch_id, 1); /* nothing checked by a probe yet */
    assert_int_equal(l.to_batch_id, 4);
    fb_recv_all(f, &g); /* no time passes: fetched right away */
    assert_int_equal(g.n, 4);
    assert_int_equal(g.v[2], 3);
    assert_int_equal(g.v[3], 4);
    assert_int_equal(sbc_sub_unchecked(f->sub, &l), SB_ENOENT);
    assert_int_equal(fb_stats(f).lost, 0);
    /* A repeat of the marker changes nothing. */
    sbc_sub_epoch_end(f->sub, 77, 4, f->seq, 5000);
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 4);
    fb_free(f);
}

/* The query socket closed before the tail was fetched: reported lost
 * (never "lost 0"), with the batch ids; when the broker is back on its
 * log (a new epoch, counters carried on) the tail is delivered after all. */
static void
test_epoch_end_unfetched_tail_reported_then_fetched_after_restart(void **state)
{
    fb *f = fb_new(0, SB_LOSS_FAIL);
    got g = {0};
    sb_loss l;

    fb_recv_all(f, &g);
    fb_live(f, fb_publish(f, "a", 2));
    fb_recv_all(f, &g);
    f->now += 500; /* an idle probe checks through batch 1 */
    fb_recv_all(f, &g);
    (void)fb_publish(f, "a", 1); /* 2, 3: dropped, then the broker stops */
    (void)fb_publish(f, "b", 1);
    uint64_t last_seq = f->seq;
    f->down = 1;
    sbc_sub_epoch_end(f->sub, 77, 3, last_seq, 1000);
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 1);
    assert_int_equal(sbc_sub_unchecked(f->sub, &l), SB_OK);
    assert_int_equal(l.from_batch_id, 2);
    assert_int_equal(l.to_batch_id, 3);
    f->now += 1000; /* the linger is over */
    fb_recv_all(f, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.v[1], -1);
    assert_int_equal(sbc_sub_loss(f->sub, &l), SB_OK);
    assert_int_equal(l.from_batch_id, 2);
    assert_int_equal(l.to_batch_id, 3);
    assert_int_equal(l.to_seq, last_seq);
    assert_int_equal(sbc_sub_unchecked(f->sub, &l), SB_ENOENT);
    assert_int_equal(fb_stats(f).lost, 1);
    /* Back on its log: same batches, a new epoch, and one more batch. */
    f->down = 0;
    f->epoch = 78;
    fb_live(f, fb_publish(f, "a", 1));
    f->now += 500;
    fb_recv_all(f, &g);
    int seen[5] = {0};
    for (size_t i = 2; i < g.n; i++)
        if (g.v[i] > 0 && g.v[i] < 5)
            seen[g.v[i]]++;
    assert_int_equal(seen[2], 1);
    assert_int_equal(seen[3], 1);
    assert_int_equal(seen[4], 1);
    assert_int_equal(fb_stats(f).restarts, 1);
    fb_free(f);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_in_order_live_needs_no_fetch),
        cmocka_unit_test(test_duplicate_and_old_batch_dropped),
        cmocka_unit_test(test_missing_middle_batch_filled_in_order),
        cmocka_unit_test(test_lost_last_batch_found_by_idle_probe),
        cmocka_unit_test(test_late_joiner_tells_before_start_from_missed),
        cmocka_unit_test(test_resume_from_seq_then_live_without_duplicates),
        cmocka_unit_test(test_resume_out_of_retention_is_reported_then_carries_on),
        cmocka_unit_test(test_stop_policy_is_sticky),
        cmocka_unit_test(test_gap_out_of_retention_names_the_aggregate),
        cmocka_unit_test(test_probe_cursor_evicted_reports_each_aggregate),
        cmocka_unit_test(test_restart_new_epoch_starts_over),
        cmocka_unit_test(test_position_covers_batch_open_across_it),
        cmocka_unit_test(test_mass_gap_filled_in_few_fetches),
        cmocka_unit_test(test_epoch_end_tail_fetched_while_open),
        cmocka_unit_test(
            test_epoch_end_unfetched_tail_reported_then_fetched_after_restart),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
