/* De-duplication index: the producer window slides and refuses what fell
 * out of it, producers and event ids are evicted by their bounds (count,
 * LRU, age on an injected clock), an evicted producer is not taken as new,
 * one request holding an event twice gets one seq, and a rebuild from the
 * on-disk log remembers what was accepted before. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_clock.h"
#include "sb_dedup.h"
#include "sb_log.h"
#include "sb_msg.h"
#include "sb_sequencer.h"
#include "sb_store.h"

typedef struct {
    sb_dedup_config cfg;
    sb_dedup *d;
    uint64_t now; /* the fake clock, ms */
    uint64_t next_seq;
    char ids[4][32];
    sb_event ev;
} fx;

static int
setup(void **state)
{
    fx *f = calloc(1, sizeof *f);

    sb_dedup_config_defaults(&f->cfg);
    f->cfg.producers = 4;
    f->cfg.producer_window = 100;
    f->cfg.tombstones = 8;
    f->cfg.event_ids = 10;
    f->cfg.event_id_age_s = 60;
    f->now = 1000;
    f->next_seq = 1;
    sbt_log_quiet();
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fx *f = *state;

    sb_dedup_destroy(&f->d);
    sbt_log_restore();
    free(f);
    return 0;
}

static void
s_open(fx *f)
{
    sb_dedup_destroy(&f->d);
    assert_int_equal(sb_dedup_new(&f->d, &f->cfg), SB_OK);
}

static sb_event *
s_pev(fx *f, const char *producer, uint64_t pseq)
{
    memset(&f->ev, 0, sizeof f->ev);
    f->ev.agg = "a";
    f->ev.agg_len = 1;
    f->ev.type = "t";
    f->ev.type_len = 1;
    f->ev.producer_id = producer;
    f->ev.producer_id_len = (uint32_t)strlen(producer);
    f->ev.producer_seq = pseq;
    return &f->ev;
}

static sb_event *
s_iev(fx *f, const char *id)
{
    memset(&f->ev, 0, sizeof f->ev);
    f->ev.agg = "a";
    f->ev.agg_len = 1;
    f->ev.type = "t";
    f->ev.type_len = 1;
    f->ev.event_id = id;
    f->ev.event_id_len = (uint32_t)strlen(id);
    return &f->ev;
}

/* What the sequencer does: ask, and on "new" give the next seq and record. */
static sb_dedup_verdict
s_offer(fx *f, sb_event *ev, sb_dedup_orig *o)
{
    sb_dedup_orig tmp;
    sb_dedup_verdict v = sb_dedup_check(f->d, ev, f->now, o ? o : &tmp);

    if (v == SB_DEDUP_NEW) {
        ev->seq = f->next_seq++;
        ev->agg_seq = ev->seq * 10;
        assert_int_equal(sb_dedup_record(f->d, ev, f->now), SB_OK);
    }
    return v;
}

static void
test_window_slides_and_refuses_what_fell_out(void **state)
{
    fx *f = *state;
    sb_dedup_orig o;

    s_open(f);
    for (uint64_t p = 1; p <= 250; p++)
        assert_int_equal(s_offer(f, s_pev(f, "P", p), NULL), SB_DEDUP_NEW);
    /* Window 100: 151..250 are remembered with their original seq. */
    for (uint64_t p = 151; p <= 250; p++) {
        assert_int_equal(s_offer(f, s_pev(f, "P", p), &o), SB_DEDUP_DUPLICATE);
        assert_int_equal(o.seq, p);
        assert_int_equal(o.agg_seq, p * 10);
    }
    /* 150 and older fell out: refused, never taken again. */
    assert_int_equal(s_offer(f, s_pev(f, "P", 150), NULL), SB_DEDUP_BEYOND);
    assert_int_equal(s_offer(f, s_pev(f, "P", 1), NULL), SB_DEDUP_BEYOND);
    assert_int_equal(atomic_load(&sb_dedup_stats_get(f->d)->beyond), 2);
    /* Sliding on: 251 is new, and 151 falls out. */
    assert_int_equal(s_offer(f, s_pev(f, "P", 251), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "P", 151), NULL), SB_DEDUP_BEYOND);
    assert_int_equal(s_offer(f, s_pev(f, "P", 152), NULL), SB_DEDUP_DUPLICATE);
    assert_int_equal(f->next_seq, 252); /* no seq went to a repeat */
    assert_int_equal(atomic_load(&sb_dedup_stats_get(f->d)->dup_producer), 101);
}

static void
test_gaps_inside_the_window_are_new_once(void **state)
{
    fx *f = *state;
    sb_dedup_orig o;

    s_open(f);
    /* Every third producer seq, with a jump: the ring grows from its small
     * start and keeps every remembered seq in place. */
    for (uint64_t p = 3; p <= 90; p += 3)
        assert_int_equal(s_offer(f, s_pev(f, "P", p), NULL), SB_DEDUP_NEW);
    for (uint64_t p = 3; p <= 90; p += 3) {
        assert_int_equal(s_offer(f, s_pev(f, "P", p), &o), SB_DEDUP_DUPLICATE);
        assert_int_equal(o.seq, p / 3);
    }
    /* The gaps were never accepted: new, once. */
    assert_int_equal(s_offer(f, s_pev(f, "P", 4), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "P", 4), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 31);
    /* Recording a producer seq already below the window (as a rebuild
     * may, meeting it after newer ones) must not take the slot of one
     * still inside it. */
    f->cfg.producer_window = 16;
    s_open(f);
    for (uint64_t p = 100; p <= 115; p++)
        assert_int_equal(s_offer(f, s_pev(f, "R", p), NULL), SB_DEDUP_NEW);
    sb_event *old = s_pev(f, "R", 84); /* 84 % 16 == 100 % 16 */
    old->seq = 999;
    assert_int_equal(sb_dedup_record(f->d, old, f->now), SB_OK);
    assert_int_equal(s_offer(f, s_pev(f, "R", 100), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(s_offer(f, s_pev(f, "R", 84), NULL), SB_DEDUP_BEYOND);
    /* Producer seq 0 is a valid seq too. */
    assert_int_equal(s_offer(f, s_pev(f, "Q", 0), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "Q", 0), NULL), SB_DEDUP_DUPLICATE);
}

static void
test_producers_lru_evicted_and_not_taken_as_new(void **state)
{
    fx *f = *state;
    sb_dedup_stats *st;
    char id[8];

    s_open(f);
    st = sb_dedup_stats_get(f->d);
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "P%d", i);
        assert_int_equal(s_offer(f, s_pev(f, id, 10), NULL), SB_DEDUP_NEW);
    }
    /* P0 used again: P1 is now the least recently used. */
    assert_int_equal(s_offer(f, s_pev(f, "P0", 11), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "P4", 1), NULL), SB_DEDUP_NEW);
    assert_int_equal(atomic_load(&st->prod_evicted), 1);
    assert_int_equal(atomic_load(&st->producers), 4);
    assert_int_equal(atomic_load(&st->tombs), 1);
    assert_int_equal(s_offer(f, s_pev(f, "P0", 10), NULL), SB_DEDUP_DUPLICATE);
    /* P1 is gone from the index, but its tombstone says it reached 10. */
    assert_int_equal(s_offer(f, s_pev(f, "P1", 10), NULL), SB_DEDUP_BEYOND);
    assert_int_equal(s_offer(f, s_pev(f, "P1", 11), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "P1", 11), NULL), SB_DEDUP_DUPLICATE);
    assert_int_equal(s_offer(f, s_pev(f, "P1", 9), NULL), SB_DEDUP_BEYOND);
    assert_true(sb_dedup_complete(f->d));

    /* Without tombstones an eviction loses the producer's past: from then
     * on an unknown producer vouches only from its first seq seen. */
    f->cfg.tombstones = 0;
    s_open(f);
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "P%d", i);
        assert_int_equal(s_offer(f, s_pev(f, id, 10), NULL), SB_DEDUP_NEW);
    }
    assert_false(sb_dedup_complete(f->d));
    assert_int_equal(s_offer(f, s_pev(f, "N", 50), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "N", 49), NULL), SB_DEDUP_BEYOND);
}

static void
test_event_ids_bounded_by_count_and_age(void **state)
{
    fx *f = *state;
    sb_dedup_stats *st;
    sb_dedup_orig o;
    char id[16];

    s_open(f);
    st = sb_dedup_stats_get(f->d);
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof id, "e%d", i);
        assert_int_equal(s_offer(f, s_iev(f, id), NULL), SB_DEDUP_NEW);
        f->now += 1000;
    }
    /* Ten remembered: e0 and e1 went at the count bound. */
    assert_int_equal(atomic_load(&st->id_evicted), 2);
    assert_int_equal(s_offer(f, s_iev(f, "e2"), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 3);
    /* e0 comes back as new and pushes the oldest, e2, out. */
    assert_int_equal(s_offer(f, s_iev(f, "e0"), NULL), SB_DEDUP_NEW);
    assert_int_equal(atomic_load(&st->id_evicted), 3);
    /* e3 was recorded at 4000; age 60 s: kept at 63999, gone at 64000. */
    f->now = 63999;
    assert_int_equal(s_offer(f, s_iev(f, "e3"), NULL), SB_DEDUP_DUPLICATE);
    f->now = 64000;
    assert_int_equal(s_offer(f, s_iev(f, "e4"), NULL), SB_DEDUP_DUPLICATE);
    assert_int_equal(atomic_load(&st->id_expired), 1);
    assert_int_equal(s_offer(f, s_iev(f, "e3"), NULL), SB_DEDUP_NEW);
    f->now = 200000;
    assert_int_equal(s_offer(f, s_iev(f, "e4"), NULL), SB_DEDUP_NEW);
    assert_int_equal(atomic_load(&st->ids), 1);
}

static void
test_event_id_answers_past_the_producer_window(void **state)
{
    fx *f = *state;
    sb_dedup_orig o;

    s_open(f);
    sb_event *ev = s_pev(f, "P", 1);
    ev->event_id = "x";
    ev->event_id_len = 1;
    assert_int_equal(s_offer(f, ev, NULL), SB_DEDUP_NEW);
    for (uint64_t p = 2; p <= 150; p++)
        assert_int_equal(s_offer(f, s_pev(f, "P", p), NULL), SB_DEDUP_NEW);
    ev = s_pev(f, "P", 1);
    ev->event_id = "x";
    ev->event_id_len = 1;
    assert_int_equal(s_offer(f, ev, &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 1);
}

static sb_req *
s_req(fx *f, uint32_t n, int ack)
{
    sb_req *r;
    uint8_t *data;

    (void)f;
    assert_int_equal(sb_req_new(&r, n, 0, &data), SB_OK);
    for (uint32_t i = 0; i < n; i++) {
        r->ev[i].agg = "a";
        r->ev[i].agg_len = 1;
        r->ev[i].type = "t";
        r->ev[i].type_len = 1;
        r->ev[i].producer_id = "P";
        r->ev[i].producer_id_len = 1;
    }
    r->naccepted = n;
    r->ack = (uint8_t)ack;
    atomic_store(&r->unpublished, n);
    return r;
}

static void
test_sequencer_gives_one_seq_to_a_repeat_in_one_request(void **state)
{
    fx *f = *state;
    sb_sequencer *s;
    sb_req *r = s_req(f, 4, SB_ACK_PUBLISHED);

    f->cfg.producer_window = 8;
    s_open(f);
    assert_int_equal(sb_sequencer_new(&s, 1), SB_OK);
    sb_sequencer_set_dedup(s, &f->d);
    assert_null(f->d);
    r->ev[0].producer_seq = 20;
    r->ev[1].producer_seq = 21;
    r->ev[2].producer_seq = 20; /* the same event twice in one request */
    r->ev[3].producer_seq = 12; /* below the window of 21 */
    assert_int_equal(sb_sequencer_assign_at(s, r, 0), SB_OK);
    assert_int_equal(r->ev[0].seq, 1);
    assert_int_equal(r->ev[1].seq, 2);
    assert_int_equal(r->ev[2].status, SB_EDUP);
    assert_int_equal(r->ev[2].seq, 1);
    assert_int_equal(r->ev[2].agg_seq, 1);
    assert_int_equal(r->ev[3].status, SB_EHORIZON);
    assert_int_equal(r->ev[3].seq, 0);
    assert_int_equal(r->naccepted, 2);
    assert_int_equal(atomic_load(&r->unpublished), 2);
    assert_int_equal(sb_sequencer_last_seq(s), 2);
    sb_req_unref(r);
    sb_sequencer_destroy(&s);
}

/* Writes events P/1..n (every `every`-th also with event id "id-<seq>")
 * to a new log in dir, then closes it as a crash would after a sync. */
static void
s_write_log_ids(const char *dir, uint64_t n, uint64_t every)
{
    sb_store_config cfg;
    sb_store *st;
    char buf[32];

    sb_store_config_defaults(&cfg);
    snprintf(cfg.dir, sizeof cfg.dir, "%s", dir);
    cfg.segment_bytes = 64u << 10;
    cfg.retain_age_s = 0;
    assert_int_equal(sb_store_open(&st, &cfg, NULL), SB_OK);
    for (uint64_t i = 1; i <= n; i++) {
        sb_event ev = {0};
        ev.agg = "a";
        ev.agg_len = 1;
        ev.type = "t";
        ev.type_len = 1;
        ev.producer_id = i % 2 ? "P" : "Q";
        ev.producer_id_len = 1;
        ev.producer_seq = (i + 1) / 2;
        if (i % every == 0) {
            ev.event_id = buf;
            ev.event_id_len = (uint32_t)snprintf(buf, sizeof buf, "id-%llu",
                                                 (unsigned long long)i);
        }
        ev.seq = i;
        ev.agg_seq = i;
        assert_int_equal(sb_store_add_event(st, &ev), SB_OK);
        if (i % 100 == 0)
            assert_int_equal(sb_store_write(st), SB_OK);
    }
    assert_int_equal(sb_store_write(st), SB_OK);
    assert_int_equal(sb_store_sync(st), SB_OK);
    sb_store_close(&st);
}

static void
s_write_log(const char *dir, uint64_t n)
{
    s_write_log_ids(dir, n, 5);
}

static void
test_rebuild_from_the_log_remembers(void **state)
{
    fx *f = *state;
    char dir[64];
    sb_dedup_orig o;

    sbt_tmpdir(dir, sizeof dir, "dedup");
    s_write_log(dir, 1000); /* P and Q: producer seqs 1..500 each */
    f->cfg.producer_window = 1000;
    f->cfg.event_ids = 1000;
    s_open(f);
    assert_int_equal(sb_dedup_rebuild(f->d, dir, 1000, f->now), SB_OK);
    assert_int_equal(atomic_load(&sb_dedup_stats_get(f->d)->rebuild_events),
                     1000);
    assert_true(sb_dedup_complete(f->d)); /* read from seq 1 */
    f->next_seq = 1001;
    assert_int_equal(s_offer(f, s_pev(f, "P", 1), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 1);
    assert_int_equal(s_offer(f, s_pev(f, "Q", 500), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 1000);
    assert_int_equal(s_offer(f, s_iev(f, "id-995"), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 995);
    assert_int_equal(s_offer(f, s_pev(f, "P", 501), NULL), SB_DEDUP_NEW);
    assert_int_equal(s_offer(f, s_pev(f, "R", 7), NULL), SB_DEDUP_NEW);

    /* A bounded rebuild (the last 200 events) knows P and Q only from
     * producer seq 401 on: older ones are refused, not taken again. */
    f->cfg.rebuild_events = 200;
    s_open(f);
    assert_int_equal(sb_dedup_rebuild(f->d, dir, 1000, f->now), SB_OK);
    assert_false(sb_dedup_complete(f->d));
    assert_int_equal(s_offer(f, s_pev(f, "P", 401), &o), SB_DEDUP_DUPLICATE);
    assert_int_equal(o.seq, 801);
    assert_int_equal(s_offer(f, s_pev(f, "P", 400), NULL), SB_DEDUP_BEYOND);
    assert_int_equal(s_offer(f, s_pev(f, "Q", 3), NULL), SB_DEDUP_BEYOND);

    sbt_rmtree(dir);
}

static void
test_memory_is_accounted(void **state)
{
    fx *f = *state;
    sb_dedup_stats *st;

    f->cfg.producers = 1000;
    f->cfg.producer_window = 1024;
    s_open(f);
    st = sb_dedup_stats_get(f->d);
    for (uint64_t p = 1; p <= 2048; p++)
        s_offer(f, s_pev(f, "P", p), NULL);
    uint64_t one = atomic_load(&st->mem_bytes);
    assert_int_equal(one, sb_dedup_producer_bytes(&f->cfg, 1));
    printf("# memory: %llu bytes per producer (window 1024, 1-byte id), "
           "%zu bytes per event id of 36 bytes\n",
           (unsigned long long)one, sb_dedup_event_id_bytes(36));
    sb_dedup_destroy(&f->d);
}

/* Not a pass/fail figure: what the index adds to the sequencer's work per
 * event, printed for docs/PUBLISHING.md. Requests of 1000 events, one
 * producer, 16 aggregates, with and without producer ids / event ids. */
static void
test_cost_per_event_printed(void **state)
{
    fx *f = *state;
    enum { REQ = 1000, NREQ = 1000 };
    static char ids[REQ][24];
    static const char *aggs[16] = {"b0",  "b1",  "b2",  "b3", "b4",  "b5",
                                   "b6",  "b7",  "b8",  "b9", "b10", "b11",
                                   "b12", "b13", "b14", "b15"};
    double ns[3];

    f->cfg.producers = 256;
    f->cfg.producer_window = 65536;
    f->cfg.event_ids = 262144;
    for (int mode = 0; mode < 3; mode++) {
        sb_sequencer *s;
        sb_req *r;
        uint8_t *data;
        uint64_t pseq = 1, t = 0;
        assert_int_equal(sb_sequencer_new(&s, 1), SB_OK);
        if (mode > 0) {
            s_open(f);
            sb_sequencer_set_dedup(s, &f->d);
        }
        assert_int_equal(sb_req_new(&r, REQ, 0, &data), SB_OK);
        for (int k = 0; k < NREQ; k++) {
            for (uint32_t i = 0; i < REQ; i++) {
                sb_event *ev = &r->ev[i];
                ev->agg = aggs[i % 16];
                ev->agg_len = (uint32_t)strlen(ev->agg);
                ev->type = "t";
                ev->type_len = 1;
                ev->status = SB_OK;
                if (mode == 1) {
                    ev->producer_id = "bench-producer";
                    ev->producer_id_len = 14;
                    ev->producer_seq = pseq++;
                } else if (mode == 2) {
                    ev->event_id = ids[i];
                    ev->event_id_len =
                        (uint32_t)snprintf(ids[i], sizeof ids[i], "ev-%llu",
                                           (unsigned long long)pseq++);
                }
            }
            r->naccepted = REQ;
            atomic_store(&r->unpublished, REQ);
            uint64_t t0 = sb_clock_mono_ns();
            assert_int_equal(sb_sequencer_assign_at(s, r, 0), SB_OK);
            t += sb_clock_mono_ns() - t0;
            assert_int_equal(r->naccepted, REQ);
        }
        ns[mode] = (double)t / (REQ * (double)NREQ);
        sb_req_unref(r);
        sb_sequencer_destroy(&s);
    }
    printf("# sequencer ns/event: plain %.1f, producer ids %.1f, event ids "
           "%.1f\n",
           ns[0], ns[1], ns[2]);

    /* Rebuild rate: 200,000 events, each with a producer id, then each
     * also with an event id. */
    for (int with_ids = 0; with_ids < 2; with_ids++) {
        char dir[64];
        sbt_tmpdir(dir, sizeof dir, "dedup");
        s_write_log_ids(dir, 200000, with_ids ? 1 : 1000000000);
        s_open(f);
        uint64_t t0 = sb_clock_mono_ns();
        assert_int_equal(sb_dedup_rebuild(f->d, dir, 200000, 0), SB_OK);
        double ms = (double)(sb_clock_mono_ns() - t0) / 1e6;
        printf("# rebuild of 200000 events%s: %.1f ms (%.0f events/s)\n",
               with_ids ? " with event ids" : "", ms, 200000 / (ms / 1e3));
        sbt_rmtree(dir);
    }
}

/* The memory budget's cap: past max_bytes the oldest event ids go first,
 * then least recently used producers (tombstones keep their horizon), and
 * the index never holds much more than the cap. */
static void
test_memory_cap_evicts_ids_then_producers(void **state)
{
    fx *f = *state;
    sb_dedup_stats *st;
    char id[16];

    f->cfg.producers = 1000;
    f->cfg.tombstones = 1000;
    f->cfg.event_ids = 1000;
    f->cfg.producer_window = 64;
    f->cfg.max_bytes = 16u << 10;
    s_open(f);
    st = sb_dedup_stats_get(f->d);
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        assert_int_equal(s_offer(f, s_iev(f, id), NULL), SB_DEDUP_NEW);
        assert_true(atomic_load(&st->mem_bytes) <= f->cfg.max_bytes);
    }
    assert_true(atomic_load(&st->id_evicted) > 0);
    assert_int_equal(s_offer(f, s_iev(f, "id-199"), NULL), SB_DEDUP_DUPLICATE);
    /* Producers with full windows: the ids go, then the oldest producers. */
    for (int p = 0; p < 20; p++) {
        snprintf(id, sizeof id, "P%d", p);
        for (uint64_t q = 1; q <= 64; q++)
            assert_int_equal(s_offer(f, s_pev(f, id, q), NULL), SB_DEDUP_NEW);
        assert_true(atomic_load(&st->mem_bytes) <= f->cfg.max_bytes);
    }
    assert_int_equal(atomic_load(&st->ids), 0);
    assert_true(atomic_load(&st->prod_evicted) > 0);
    /* The newest producer is still answered; an evicted one is refused
     * at its horizon rather than taken twice. */
    assert_int_equal(s_offer(f, s_pev(f, "P19", 64), NULL), SB_DEDUP_DUPLICATE);
    assert_int_equal(s_offer(f, s_pev(f, "P0", 64), NULL), SB_DEDUP_BEYOND);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(
            test_window_slides_and_refuses_what_fell_out, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_gaps_inside_the_window_are_new_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_producers_lru_evicted_and_not_taken_as_new, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_ids_bounded_by_count_and_age,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_event_id_answers_past_the_producer_window, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_sequencer_gives_one_seq_to_a_repeat_in_one_request, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_rebuild_from_the_log_remembers,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_is_accounted, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_memory_cap_evicts_ids_then_producers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cost_per_event_printed, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
