/* Batch router: every batching rule driven through the core with a mock
 * clock (a uint64_t the test moves), a real timelock core standing in for
 * the timelock actor, and one end-to-end test of the router and timelock
 * actors over links of capacity 1 with a fake clock. No test sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_clock.h"
#include "sb_link.h"
#include "sb_msg.h"
#include "sb_router.h"
#include "sb_timelock.h"

#define MAX_AGGS 128
#define MAX_OUT 4096

typedef struct {
    const char *agg;
    uint64_t caused_by;
    uint32_t payload_len;
    uint8_t has_pos;
    uint64_t pos;
    uint8_t status; /* SB_OK unless a test says otherwise */
} ev_spec;

typedef struct {
    sb_router_config cfg;
    sb_router *r;
    uint64_t now;    /* the mock clock */
    sb_timelock *tl; /* plays the timelock actor */
    uint64_t seq;
    char names[MAX_AGGS][64];
    uint64_t agg_seq[MAX_AGGS];
    int naggs;
    uint64_t arms, disarms;
    sb_batch *out[MAX_OUT]; /* every batch taken, in order */
    size_t nout;
} fixture;

static int
setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);

    if (f == NULL)
        return -1;
    sb_router_config_defaults(&f->cfg);
    f->cfg.default_delay_ms = 500;
    f->now = 1000;
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fixture *f = *state;

    sb_router_destroy(&f->r);
    assert_null(f->r);
    sb_router_destroy(&f->r);
    for (size_t i = 0; i < f->nout; i++)
        sb_batch_destroy(&f->out[i]);
    sb_timelock_destroy(&f->tl);
    free(f);
    return 0;
}

/* Creates the router from f->cfg (tests tweak the config first). */
static void
s_start(fixture *f)
{
    assert_int_equal(sb_router_new(&f->r, &f->cfg), SB_OK);
    assert_int_equal(sb_timelock_new(&f->tl, f->cfg.max_open_batches), SB_OK);
}

static uint64_t
s_next_agg_seq(fixture *f, const char *agg)
{
    for (int i = 0; i < f->naggs; i++)
        if (strcmp(f->names[i], agg) == 0)
            return ++f->agg_seq[i];
    assert_true(f->naggs < MAX_AGGS);
    snprintf(f->names[f->naggs], sizeof f->names[0], "%s", agg);
    f->agg_seq[f->naggs] = 1;
    return f->agg_seq[f->naggs++];
}

/* A request as the sequencer hands it over: seqs assigned, one pipeline
 * reference. Names are copied into the request without a NUL, as on the
 * wire. */
static sb_req *
s_req(fixture *f, const ev_spec *spec, uint32_t n)
{
    size_t data = 0;
    uint8_t *p;
    sb_req *req;

    for (uint32_t i = 0; i < n; i++)
        data += strlen(spec[i].agg) + spec[i].payload_len;
    assert_int_equal(sb_req_new(&req, n, data, &p), SB_OK);
    for (uint32_t i = 0; i < n; i++) {
        sb_event *ev = &req->ev[i];
        size_t len = strlen(spec[i].agg);
        memcpy(p, spec[i].agg, len);
        ev->agg = (const char *) p;
        ev->agg_len = (uint32_t) len;
        p += len;
        memset(p, 'x', spec[i].payload_len);
        ev->payload = p;
        ev->payload_len = spec[i].payload_len;
        p += spec[i].payload_len;
        ev->caused_by = spec[i].caused_by;
        ev->has_source_pos = spec[i].has_pos;
        ev->source_pos = spec[i].pos;
        ev->status = spec[i].status;
        if (ev->status == SB_OK) {
            ev->seq = ++f->seq;
            ev->agg_seq = s_next_agg_seq(f, spec[i].agg);
            req->naccepted++;
        }
    }
    atomic_store(&req->refs, 1);
    return req;
}

/* What the shell does with a request: add each accepted event, end the
 * request, drop the pipeline reference. */
static void
s_feed(fixture *f, const ev_spec *spec, uint32_t n)
{
    sb_req *req = s_req(f, spec, n);

    for (uint32_t i = 0; i < n; i++)
        if (req->ev[i].status == SB_OK)
            assert_int_equal(sb_router_add(f->r, &req->ev[i], f->now), SB_OK);
    sb_router_end_request(f->r, f->now);
    sb_req_unref(req);
}

/* One-event request; returns its seq. */
static uint64_t
s_one(fixture *f, const char *agg, uint64_t caused_by)
{
    ev_spec s = {.agg = agg, .caused_by = caused_by, .payload_len = 10};

    s_feed(f, &s, 1);
    return f->seq;
}

/* Moves timer commands into the stand-in timelock and batches into
 * f->out; returns how many batches came out. */
static size_t
s_drain(fixture *f)
{
    sb_timer_cmd c;
    sb_batch *b;
    size_t n = 0;

    while (sb_router_take_timer(f->r, &c) == SB_OK) {
        if (c.op == SB_TIMER_ARM) {
            f->arms++;
            assert_int_equal(sb_timelock_arm(f->tl, c.key, c.deadline_ms),
                             SB_OK);
        } else {
            assert_int_equal(c.op, SB_TIMER_DISARM);
            f->disarms++;
            assert_int_equal(sb_timelock_disarm(f->tl, c.key), SB_OK);
        }
    }
    while (sb_router_take_batch(f->r, &b) == SB_OK) {
        assert_true(f->nout < MAX_OUT);
        f->out[f->nout++] = b;
        n++;
    }
    return n;
}

/* Sets the clock, delivers every DUE, and drains. */
static size_t
s_tick(fixture *f, uint64_t now)
{
    uint64_t key;

    f->now = now;
    s_drain(f);
    while (sb_timelock_pop_due(f->tl, now, &key) == SB_OK)
        sb_router_due(f->r, key, now);
    return s_drain(f);
}

static sb_batch *
s_last(fixture *f)
{
    assert_true(f->nout > 0);
    return f->out[f->nout - 1];
}

static void
s_assert_agg(const sb_batch *b, const char *agg)
{
    assert_int_equal(b->agg_len, strlen(agg));
    assert_string_equal(b->agg, agg);
}

/* ---- config ----------------------------------------------------------- */

static void
test_config_defaults_pass_check(void **state)
{
    fixture *f = *state;
    char why[128] = "";

    assert_int_equal(sb_router_config_check(&f->cfg, why, sizeof why), SB_OK);
    f->cfg.max_batch_events = 0;
    assert_int_equal(sb_router_config_check(&f->cfg, why, sizeof why),
                     SB_EINVAL);
    assert_non_null(strstr(why, "max_batch_events"));
    assert_int_equal(sb_router_new(&f->r, &f->cfg), SB_EINVAL);
    assert_null(f->r);
    sb_router_config_defaults(&f->cfg);
    f->cfg.nrules = 1; /* empty pattern */
    assert_int_equal(sb_router_config_check(&f->cfg, why, sizeof why),
                     SB_EINVAL);
    f->cfg.nrules = SB_MAX_DELAY_RULES + 1;
    assert_int_equal(sb_router_config_check(&f->cfg, NULL, 0), SB_EINVAL);
}

static void
s_rule(sb_router_config *cfg, const char *pattern, uint32_t delay_ms)
{
    sb_delay_rule *r = &cfg->rules[cfg->nrules++];

    snprintf(r->pattern, sizeof r->pattern, "%s", pattern);
    r->delay_ms = delay_ms;
}

static void
test_delay_exact_then_glob_then_default(void **state)
{
    fixture *f = *state;
    sb_router_config *c = &f->cfg;

    c->default_delay_ms = 1000;
    s_rule(c, "e3/*", 200);
    s_rule(c, "e?/1*", 300);
    s_rule(c, "e3/42", 50); /* exact: wins though listed after a glob */
    s_rule(c, "e4/[ab]", 0);
    assert_int_equal(sb_router_config_delay(c, "e3/42", 5), 50);
    assert_int_equal(sb_router_config_delay(c, "e3/7", 4), 200);
    assert_int_equal(sb_router_config_delay(c, "e3/17", 5), 200); /* 1st */
    assert_int_equal(sb_router_config_delay(c, "e5/17", 5), 300);
    assert_int_equal(sb_router_config_delay(c, "e4/a", 4), 0);
    assert_int_equal(sb_router_config_delay(c, "e4/c", 4), 1000);
    assert_int_equal(sb_router_config_delay(c, "x", 1), 1000);
    /* The length counts, not a NUL: "e3/421" cut to 5 is "e3/42". */
    assert_int_equal(sb_router_config_delay(c, "e3/421", 5), 50);
    assert_int_equal(sb_router_config_delay(c, "e3/421", 6), 200);

    /* The router arms each batch for opened + its aggregate's delay. */
    s_start(f);
    s_one(f, "e3/42", 0);
    s_one(f, "e3/7", 0);
    s_one(f, "x", 0);
    s_drain(f);
    assert_int_equal(f->arms, 3);
    assert_int_equal(s_tick(f, 1049), 0);
    assert_int_equal(s_tick(f, 1050), 1);
    s_assert_agg(s_last(f), "e3/42");
    assert_int_equal(s_last(f)->opened_ms, 1000);
    assert_int_equal(s_last(f)->deadline_ms, 1050);
    assert_int_equal(s_tick(f, 1199), 0);
    assert_int_equal(s_tick(f, 1200), 1);
    s_assert_agg(s_last(f), "e3/7");
    assert_int_equal(s_tick(f, 1999), 0);
    assert_int_equal(s_tick(f, 2000), 1);
    s_assert_agg(s_last(f), "x");
}

/* ---- timing ----------------------------------------------------------- */

static void
test_batch_flushes_when_delay_ends(void **state)
{
    fixture *f = *state;
    sb_batch *b;

    s_start(f);
    s_one(f, "a/1", 0);
    f->now = 1200;
    s_one(f, "a/1", 0); /* joins: the deadline stays opened + delay */
    assert_int_equal(s_tick(f, 1499), 0);
    assert_int_equal(s_tick(f, 1500), 1);
    b = s_last(f);
    s_assert_agg(b, "a/1");
    assert_int_equal(b->n, 2);
    assert_int_equal(b->ev[0]->seq, 1);
    assert_int_equal(b->ev[1]->seq, 2);
    assert_int_equal(b->close_reason, SB_CLOSE_DELAY);
    assert_int_equal(b->opened_ms, 1000);
    assert_int_equal(b->deadline_ms, 1500);
    /* The next event opens a new batch with its own deadline. */
    s_one(f, "a/1", 0);
    assert_int_equal(s_tick(f, 1999), 0);
    assert_int_equal(s_tick(f, 2000), 1);
    assert_int_equal(s_last(f)->n, 1);
    assert_int_equal(s_last(f)->opened_ms, 1500);
    assert_int_equal(sb_timelock_size(f->tl), 0);
}

static void
test_delay_zero_flushes_at_end_of_request(void **state)
{
    fixture *f = *state;
    sb_req *req;
    ev_spec s[] = {
        {.agg = "now/1"}, {.agg = "now/2"}, {.agg = "now/1"}, {.agg = "now/1"}};
    sb_router_stats st;

    s_rule(&f->cfg, "now/*", 0);
    s_start(f);
    req = s_req(f, s, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(sb_router_add(f->r, &req->ev[i], f->now), SB_OK);
        assert_int_equal(s_drain(f), 0); /* nothing before the end */
    }
    sb_router_end_request(f->r, f->now);
    sb_req_unref(req);
    assert_int_equal(s_drain(f), 2);
    assert_int_equal(f->arms, 0); /* never armed */
    s_assert_agg(f->out[0], "now/1");
    assert_int_equal(f->out[0]->n, 3);
    assert_int_equal(f->out[0]->close_reason, SB_CLOSE_IMMEDIATE);
    s_assert_agg(f->out[1], "now/2");
    assert_int_equal(f->out[1]->n, 1);
    /* A second request gets its own batch. */
    s_one(f, "now/1", 0);
    assert_int_equal(s_drain(f), 1);
    assert_int_equal(s_last(f)->n, 1);
    sb_router_stats_get(f->r, &st);
    assert_int_equal(st.by_reason[SB_CLOSE_IMMEDIATE], 3);
    assert_int_equal(st.open_batches, 0);
    assert_int_equal(st.open_bytes, 0);
}

/* ---- early close ------------------------------------------------------ */

static void
test_max_events_closes_early_and_disarms(void **state)
{
    fixture *f = *state;
    sb_router_stats st;

    f->cfg.max_batch_events = 3;
    s_start(f);
    s_one(f, "a/1", 0);
    assert_int_equal(s_drain(f), 0);
    assert_int_equal(f->arms, 1);
    assert_int_equal(sb_timelock_size(f->tl), 1);
    s_one(f, "a/1", 0);
    s_one(f, "a/1", 0);
    assert_int_equal(s_drain(f), 1);
    assert_int_equal(s_last(f)->n, 3);
    assert_int_equal(s_last(f)->close_reason, SB_CLOSE_MAX_EVENTS);
    assert_int_equal(f->disarms, 1);
    assert_int_equal(sb_timelock_size(f->tl), 0);
    /* The 4th event opens the next batch. */
    s_one(f, "a/1", 0);
    assert_int_equal(s_tick(f, 1500), 1);
    assert_int_equal(s_last(f)->n, 1);
    assert_int_equal(s_last(f)->ev[0]->seq, 4);
    sb_router_stats_get(f->r, &st);
    assert_int_equal(st.by_reason[SB_CLOSE_MAX_EVENTS], 1);
    assert_int_equal(st.by_reason[SB_CLOSE_DELAY], 1);
}

static void
test_batch_closed_before_its_arm_left_sends_no_timer(void **state)
{
    fixture *f = *state;
    sb_timer_cmd c;

    f->cfg.max_batch_events = 1;
    s_start(f);
    s_one(f, "a/1", 0);
    s_one(f, "a/2", 0);
    /* ARM and DISARM cancel out inside the outbox. */
    assert_int_equal(sb_router_take_timer(f->r, &c), SB_EAGAIN);
    assert_int_equal(s_drain(f), 2);
}

static void
test_max_bytes_closes_early(void **state)
{
    fixture *f = *state;
    ev_spec s = {.agg = "b/1", .payload_len = 100}; /* 3 + 100 + 48 bytes */
    ev_spec big = {.agg = "b/1", .payload_len = 5000};

    f->cfg.max_batch_bytes = 400;
    s_start(f);
    s_feed(f, &s, 1);
    s_feed(f, &s, 1);
    assert_int_equal(s_drain(f), 0);
    s_feed(f, &s, 1); /* 453 >= 400 */
    assert_int_equal(s_drain(f), 1);
    assert_int_equal(s_last(f)->n, 3);
    assert_int_equal(s_last(f)->bytes, 453);
    assert_int_equal(s_last(f)->close_reason, SB_CLOSE_MAX_BYTES);
    assert_int_equal(f->disarms, 1);
    /* Alone over the limit: a batch of one, not an error. */
    s_feed(f, &big, 1);
    assert_int_equal(s_drain(f), 1);
    assert_int_equal(s_last(f)->n, 1);
    assert_int_equal(s_last(f)->close_reason, SB_CLOSE_MAX_BYTES);
    assert_int_equal(sb_timelock_size(f->tl), 0);
}

/* Reaching max_batch_bytes exactly closes the batch (docs/BATCHING.md). */
static void
test_max_bytes_reached_exactly_closes(void **state)
{
    fixture *f = *state;
    ev_spec s = {.agg = "b/1", .payload_len = 100}; /* 151 bytes */

    f->cfg.max_batch_bytes = 302;
    s_start(f);
    s_feed(f, &s, 1);
    assert_int_equal(s_drain(f), 0);
    s_feed(f, &s, 1); /* 302 == 302 */
    assert_int_equal(s_drain(f), 1);
    assert_int_equal(s_last(f)->n, 2);
    assert_int_equal(s_last(f)->bytes, 302);
    assert_int_equal(s_last(f)->close_reason, SB_CLOSE_MAX_BYTES);
}

/* ---- caused_by -------------------------------------------------------- */

static void
test_caused_by_joins_and_aggregate_follows(void **state)
{
    fixture *f = *state;
    sb_router_stats st;
    sb_batch *b;
    uint64_t cause;

    s_start(f);
    cause = s_one(f, "order/1", 0); /* seq 1, opens order/1 */
    f->now = 1100;
    s_one(f, "stock/9", cause); /* seq 2, joins order/1 */
    s_one(f, "stock/9", 0);     /* seq 3, follows (sticky) */
    s_one(f, "order/1", 0);     /* seq 4 */
    s_drain(f);
    assert_int_equal(f->arms, 1); /* stock/9 opened nothing */
    assert_int_equal(s_tick(f, 1500), 1);
    b = s_last(f);
    s_assert_agg(b, "order/1");
    assert_int_equal(b->n, 4);
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(b->ev[i]->seq, i + 1);
    assert_int_equal(b->agg_last_seq, 2); /* order/1's own agg_seq */
    sb_router_stats_get(f->r, &st);
    assert_int_equal(st.caused_by_joins, 1);
    /* That batch is gone: stock/9 now opens its own, with its own delay. */
    s_one(f, "stock/9", 0);
    assert_int_equal(s_tick(f, 1999), 0);
    assert_int_equal(s_tick(f, 2000), 1);
    s_assert_agg(s_last(f), "stock/9");
    assert_int_equal(s_last(f)->ev[0]->seq, 5);
    assert_int_equal(s_last(f)->agg_last_seq, 3);
}

static void
test_caused_by_refused_when_aggregate_is_in_another_batch(void **state)
{
    fixture *f = *state;
    sb_router_stats st;
    uint64_t cause;

    s_start(f);
    s_one(f, "stock/9", 0); /* seq 1, stock/9's own batch */
    f->now = 1100;
    cause = s_one(f, "order/1", 0);  /* seq 2 */
    s_one(f, "stock/9", cause);      /* seq 3: stays with seq 1 */
    s_one(f, "stock/9", cause + 99); /* unknown cause: own batch */
    sb_router_stats_get(f->r, &st);
    assert_int_equal(st.caused_by_joins, 0);
    assert_int_equal(s_tick(f, 1500), 1);
    s_assert_agg(s_last(f), "stock/9");
    assert_int_equal(s_last(f)->n, 3);
    assert_int_equal(s_last(f)->ev[1]->seq, 3);
    assert_int_equal(s_tick(f, 1600), 1);
    s_assert_agg(s_last(f), "order/1");
    assert_int_equal(s_last(f)->n, 1);
}

static void
test_caused_by_chain_within_one_batch(void **state)
{
    fixture *f = *state;
    uint64_t s1, s2;

    s_start(f);
    s1 = s_one(f, "a/1", 0);
    s2 = s_one(f, "b/1", s1); /* joins a/1 */
    s_one(f, "c/1", s2);      /* cause is in a/1's batch too */
    s_one(f, "a/1", s2);      /* own batch is the cause's batch */
    assert_int_equal(s_tick(f, 1500), 1);
    assert_int_equal(s_last(f)->n, 4);
    assert_int_equal(f->nout, 1);
}

static void
test_caused_by_found_across_seq_pages(void **state)
{
    fixture *f = *state;
    sb_router_stats st;
    uint64_t old, flushed;

    s_rule(&f->cfg, "a/1", 100000);
    s_rule(&f->cfg, "now/*", 0);
    s_start(f);
    old = s_one(f, "a/1", 0);
    /* Many seqs later (index pages come and go meanwhile) the open event
     * is still found, and a flushed one is not. */
    for (int i = 0; i < 1000; i++)
        s_one(f, "now/1", 0);
    flushed = f->seq;
    assert_int_equal(s_drain(f), 1000);
    s_one(f, "b/1", old);     /* joins a/1 */
    s_one(f, "c/1", flushed); /* too late: its own batch */
    sb_router_stats_get(f->r, &st);
    assert_int_equal(st.caused_by_joins, 1);
    assert_int_equal(st.open_batches, 2);
    sb_router_flush_all(f->r, f->now);
    assert_int_equal(s_drain(f), 2);
    s_assert_agg(f->out[1000], "a/1");
    assert_int_equal(f->out[1000]->n, 2);
    s_assert_agg(f->out[1001], "c/1");
}

static void
test_late_event_goes_to_next_batch(void **state)
{
    fixture *f = *state;
    uint64_t cause;

    s_start(f);
    cause = s_one(f, "a/1", 0);
    assert_int_equal(s_tick(f, 1500), 1);
    /* Its cause has flushed: it cannot join, it is not dropped. */
    s_one(f, "b/1", cause);
    s_one(f, "a/1", cause);
    assert_int_equal(s_tick(f, 2000), 2);
    s_assert_agg(f->out[1], "b/1");
    assert_int_equal(f->out[1]->n, 1);
    assert_int_equal(f->out[1]->ev[0]->seq, 2);
    s_assert_agg(f->out[2], "a/1");
    assert_int_equal(f->out[2]->ev[0]->seq, 3);
}

static void
test_delayed_aggregate_joining_delay_zero_batch(void **state)
{
    fixture *f = *state;
    ev_spec s[2] = {{.agg = "now/1"}, {.agg = "slow/1"}};
    sb_req *req;

    s_rule(&f->cfg, "now/*", 0);
    s_start(f);
    req = s_req(f, s, 2);
    req->ev[1].caused_by = req->ev[0].seq;
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_OK);
    assert_int_equal(sb_router_add(f->r, &req->ev[1], f->now), SB_OK);
    sb_router_end_request(f->r, f->now);
    sb_req_unref(req);
    assert_int_equal(s_drain(f), 1);
    assert_int_equal(s_last(f)->n, 2);
    assert_int_equal(f->arms, 0);
}

/* ---- shutdown and fields ---------------------------------------------- */

static void
test_flush_all_oldest_first(void **state)
{
    fixture *f = *state;
    sb_router_stats st;

    s_rule(&f->cfg, "x/3", 10);
    s_rule(&f->cfg, "x/2", 1000);
    s_start(f);
    s_one(f, "x/1", 0);
    f->now = 1001;
    s_one(f, "x/2", 0);
    f->now = 1002;
    s_one(f, "x/3", 0);
    s_one(f, "x/1", 0);
    s_drain(f);
    sb_router_flush_all(f->r, 1003);
    assert_int_equal(s_drain(f), 3);
    s_assert_agg(f->out[0], "x/1");
    s_assert_agg(f->out[1], "x/2");
    s_assert_agg(f->out[2], "x/3");
    assert_int_equal(f->out[0]->n, 2);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f->out[i]->close_reason, SB_CLOSE_SHUTDOWN);
        assert_int_equal(f->out[i]->id, (uint64_t) i + 1);
    }
    sb_router_stats_get(f->r, &st);
    assert_int_equal(st.open_batches, 0);
    assert_int_equal(st.by_reason[SB_CLOSE_SHUTDOWN], 3);
    /* Stale DUEs after shutdown are ignored. */
    assert_int_equal(s_tick(f, 5000), 0);
}

static void
test_batch_fields_filled_at_flush(void **state)
{
    fixture *f = *state;
    ev_spec a1 = {.agg = "a/1", .has_pos = 1, .pos = 70};
    ev_spec a1_low = {.agg = "a/1", .has_pos = 1, .pos = 60};
    ev_spec a1_none = {.agg = "a/1"};
    ev_spec b1 = {.agg = "b/1"};
    uint64_t before = sb_clock_wall_ms();
    sb_batch *b;

    s_start(f);
    sb_router_set_next_batch_id(f->r, 100);
    s_feed(f, &b1, 1);     /* seq 1 */
    s_feed(f, &a1, 1);     /* seq 2 */
    s_feed(f, &a1_low, 1); /* seq 3: lower pos, highest stays 70 */
    assert_int_equal(s_tick(f, 1500), 2);
    b = f->out[0];
    s_assert_agg(b, "b/1");
    assert_int_equal(b->id, 100);
    assert_int_equal(b->prev_last_seq, 0);
    assert_int_equal(b->has_source_pos, 0);
    assert_true(b->timestamp_ms >= before);
    assert_true(b->timestamp_ms <= sb_clock_wall_ms());
    b = f->out[1];
    s_assert_agg(b, "a/1");
    assert_int_equal(b->id, 101);
    assert_int_equal(b->prev_last_seq, 0);
    assert_int_equal(b->agg_last_seq, 2);
    assert_int_equal(b->has_source_pos, 1);
    assert_int_equal(b->source_pos, 70);

    /* Next a/1 batch: prev_last_seq chains; a b/1 event that joined it
     * (caused_by) is not counted in a/1's agg_last_seq. */
    s_feed(f, &a1_none, 1); /* seq 4, agg_seq 3 */
    b1.caused_by = 4;
    s_feed(f, &b1, 1); /* seq 5, joins */
    b1.caused_by = 0;
    assert_int_equal(s_tick(f, 2000), 1);
    b = s_last(f);
    assert_int_equal(b->id, 102);
    assert_int_equal(b->n, 2);
    assert_int_equal(b->prev_last_seq, 3);
    assert_int_equal(b->agg_last_seq, 3);
    assert_int_equal(b->source_pos, 70); /* highest seen so far */
    assert_int_equal(b->has_source_pos, 1);

    /* b/1's next batch chains to b/1's previous topic batch (seq 1). */
    s_feed(f, &b1, 1); /* seq 6 */
    assert_int_equal(s_tick(f, 2500), 1);
    b = s_last(f);
    s_assert_agg(b, "b/1");
    assert_int_equal(b->id, 103);
    assert_int_equal(b->prev_last_seq, 1);
    assert_int_equal(b->agg_last_seq, 3); /* b/1 events: seq 1, 5, 6 */
}

/* ---- limits ----------------------------------------------------------- */

static void
s_assert_same_stats(const sb_router_stats *a, const sb_router_stats *b)
{
    assert_int_equal(a->events, b->events);
    assert_int_equal(a->batches, b->batches);
    assert_int_equal(a->open_batches, b->open_batches);
    assert_int_equal(a->open_bytes, b->open_bytes);
    assert_int_equal(a->aggregates, b->aggregates);
    assert_int_equal(a->caused_by_joins, b->caused_by_joins);
}

static void
test_open_batches_limit_waits_then_resumes(void **state)
{
    fixture *f = *state;
    ev_spec c = {.agg = "c/1"};
    sb_router_stats st0, st1;
    sb_timer_cmd t;
    sb_req *req;

    f->cfg.max_open_batches = 2;
    s_start(f);
    s_one(f, "a/1", 0);
    f->now = 1100;
    s_one(f, "b/1", 0);
    s_one(f, "a/1", 0); /* at the limit, joining an open batch is fine */
    s_drain(f);
    req = s_req(f, &c, 1);
    sb_router_stats_get(f->r, &st0);
    assert_int_equal(st0.open_batches, 2);
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_EAGAIN);
    sb_router_stats_get(f->r, &st1);
    s_assert_same_stats(&st0, &st1);
    assert_int_equal(st1.waits, st0.waits + 1);
    assert_int_equal(sb_router_take_timer(f->r, &t), SB_EAGAIN);
    assert_int_equal(sb_router_take_batch(f->r, &f->out[0]), SB_EAGAIN);
    assert_int_equal(s_tick(f, 1499), 0);
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_EAGAIN);
    assert_int_equal(s_tick(f, 1500), 1); /* a/1's DUE frees a slot */
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_OK);
    sb_router_end_request(f->r, f->now);
    sb_req_unref(req);
    assert_int_equal(s_tick(f, 1600), 1);
    s_assert_agg(s_last(f), "b/1");
    assert_int_equal(s_tick(f, 1999), 0);
    assert_int_equal(s_tick(f, 2000), 1);
    s_assert_agg(s_last(f), "c/1");
    assert_int_equal(s_last(f)->opened_ms, 1500);
    sb_router_stats_get(f->r, &st1);
    assert_int_equal(st1.waits, 2);
    assert_int_equal(st1.aggregates, 3);
}

static void
test_open_bytes_limit_waits_then_resumes(void **state)
{
    fixture *f = *state;
    ev_spec s = {.agg = "a/1", .payload_len = 100}; /* 151 bytes */
    sb_router_stats st0, st1;
    sb_req *req;

    f->cfg.max_open_bytes = 300;
    s_start(f);
    s_feed(f, &s, 1);
    s_feed(f, &s, 1); /* 302 held open */
    req = s_req(f, &s, 1);
    sb_router_stats_get(f->r, &st0);
    assert_int_equal(st0.open_bytes, 302);
    /* Even into the same open batch. */
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_EAGAIN);
    sb_router_stats_get(f->r, &st1);
    s_assert_same_stats(&st0, &st1);
    assert_int_equal(s_tick(f, 1500), 1);
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_OK);
    sb_router_end_request(f->r, f->now);
    sb_req_unref(req);
    assert_int_equal(s_tick(f, 2000), 1);
    assert_int_equal(s_last(f)->n, 1);
}

static void
test_limit_flushes_delay_zero_batches_first(void **state)
{
    fixture *f = *state;
    ev_spec s[] = {{.agg = "z/1"}, {.agg = "z/2"}, {.agg = "z/3"}};
    sb_req *req;

    f->cfg.max_open_batches = 2;
    s_rule(&f->cfg, "z/*", 0);
    s_start(f);
    req = s_req(f, s, 3);
    assert_int_equal(sb_router_add(f->r, &req->ev[0], f->now), SB_OK);
    assert_int_equal(sb_router_add(f->r, &req->ev[1], f->now), SB_OK);
    /* The request cannot end while it waits, so its delay-0 batches go
     * now instead of blocking forever. */
    assert_int_equal(sb_router_add(f->r, &req->ev[2], f->now), SB_OK);
    assert_int_equal(s_drain(f), 2);
    assert_int_equal(f->out[0]->close_reason, SB_CLOSE_IMMEDIATE);
    sb_router_end_request(f->r, f->now);
    sb_req_unref(req);
    assert_int_equal(s_drain(f), 1);
    s_assert_agg(s_last(f), "z/3");
}

/* ---- outboxes and teardown -------------------------------------------- */

static void
test_untake_puts_items_back_in_front(void **state)
{
    fixture *f = *state;
    sb_batch *b1, *b2;
    sb_timer_cmd t1, t2;

    s_rule(&f->cfg, "now/*", 0);
    s_start(f);
    s_one(f, "now/1", 0);
    s_one(f, "now/2", 0);
    s_one(f, "a/1", 0);
    s_one(f, "a/2", 0);
    assert_int_equal(sb_router_take_batch(f->r, &b1), SB_OK);
    sb_router_untake_batch(f->r, b1);
    assert_int_equal(sb_router_take_batch(f->r, &b2), SB_OK);
    assert_ptr_equal(b1, b2);
    s_assert_agg(b1, "now/1");
    assert_int_equal(sb_router_take_timer(f->r, &t1), SB_OK);
    sb_router_untake_timer(f->r, &t1);
    assert_int_equal(sb_router_take_timer(f->r, &t2), SB_OK);
    assert_int_equal(t1.key, t2.key);
    sb_router_untake_timer(f->r, &t2);
    sb_router_untake_batch(f->r, b2);
    assert_int_equal(s_drain(f), 2);
    s_assert_agg(f->out[0], "now/1");
    s_assert_agg(f->out[1], "now/2");
    assert_int_equal(f->arms, 2);
}

static void
test_destroy_frees_open_and_outbox_batches(void **state)
{
    fixture *f = *state;
    ev_spec s[] = {{.agg = "a/1"}, {.agg = "b/1"}, {.agg = "now/1"}};

    s_rule(&f->cfg, "now/*", 0);
    s_start(f);
    s_feed(f, s, 3);
    /* a/1 and b/1 open, now/1 in the outbox: teardown destroys the router
     * with all three; ASan reports the requests if a reference leaks. */
}

/* The number at the end of an aggregate name ("g2/42" → 42). Event names
 * are not NUL-terminated, so go by the length. */
static int
s_num(const char *agg, uint32_t len)
{
    int n = 0, mul = 1;

    while (len > 0 && agg[len - 1] >= '0' && agg[len - 1] <= '9') {
        n += (agg[--len] - '0') * mul;
        mul *= 10;
    }
    return n;
}

static void
test_many_aggregates_in_order(void **state)
{
    fixture *f = *state;
    uint64_t next[MAX_AGGS] = {0};
    unsigned seed = 7;
    char name[16];

    f->cfg.max_batch_events = 5;
    f->cfg.max_open_batches = 16;
    s_rule(&f->cfg, "g1*", 0);
    s_rule(&f->cfg, "g2*", 30);
    s_start(f);
    for (int i = 0; i < 3000; i++) {
        ev_spec s = {.agg = name};
        snprintf(name, sizeof name, "g%d", rand_r(&seed) % 40);
        if (f->seq > 0 && rand_r(&seed) % 4 == 0)
            s.caused_by = f->seq - (uint64_t) (rand_r(&seed) % 5);
        sb_req *req = s_req(f, &s, 1);
        while (sb_router_add(f->r, &req->ev[0], f->now) == SB_EAGAIN)
            s_tick(f, f->now + 1);
        sb_router_end_request(f->r, f->now);
        sb_req_unref(req);
        s_drain(f);
        if (rand_r(&seed) % 3 == 0)
            s_tick(f, f->now + 1);
        if (f->nout > MAX_OUT - 64) {
            for (size_t k = 0; k < f->nout; k++) {
                for (uint32_t e = 0; e < f->out[k]->n; e++) {
                    const sb_event *ev = f->out[k]->ev[e];
                    int ai = s_num(ev->agg, ev->agg_len);
                    assert_int_equal(ev->agg_seq, ++next[ai]);
                }
                sb_batch_destroy(&f->out[k]);
            }
            f->nout = 0;
        }
    }
    sb_router_flush_all(f->r, f->now);
    s_drain(f);
    for (size_t k = 0; k < f->nout; k++)
        for (uint32_t e = 0; e < f->out[k]->n; e++) {
            const sb_event *ev = f->out[k]->ev[e];
            assert_int_equal(ev->agg_seq, ++next[s_num(ev->agg, ev->agg_len)]);
        }
    uint64_t total = 0;
    for (int i = 0; i < 40; i++)
        total += next[i];
    assert_int_equal(total, 3000);
}

/* ---- actors ----------------------------------------------------------- */

#define A_EVENTS 10000
#define A_AGGS 100

typedef struct {
    _Atomic uint64_t now;
    sb_clock clock;
    sb_link *in, *out, *timer, *due;
    sb_router_actor *router;
    sb_timelock_actor *timelock;
    sb_req **reqs;
    size_t nreqs;
} actors;

static uint64_t
s_fake_now(void *ctx)
{
    return atomic_load((_Atomic uint64_t *) ctx);
}

static void
test_actors_tiny_links_every_event_once_in_order(void **state)
{
    fixture *f = *state; /* only for s_req's seq bookkeeping */
    actors A = {0};
    sb_router_actor_args args;
    uint64_t next_agg_seq[A_AGGS + 1] = {0};
    uint64_t topic_last[A_AGGS + 1] = {0};
    uint64_t expect_id = 7, seen = 0, accepted = 0, batches = 0;
    unsigned seed = 2024;
    size_t sent = 0;
    int eof_sent = 0, eof_seen = 0;
    sb_router_stats st;
    sb_link_stats ls;

    atomic_init(&A.now, 1000);
    A.clock = (sb_clock){s_fake_now, (void *) &A.now};
    assert_int_equal(sb_link_new(&A.in, "in", sizeof(sb_item), 1), SB_OK);
    assert_int_equal(sb_link_new(&A.out, "out", sizeof(sb_item), 1), SB_OK);
    assert_int_equal(sb_link_new(&A.timer, "tmr", sizeof(sb_timer_cmd), 1),
                     SB_OK);
    assert_int_equal(sb_link_new(&A.due, "due", sizeof(sb_timer_cmd), 1),
                     SB_OK);

    memset(&args, 0, sizeof args);
    sb_router_config_defaults(&args.cfg);
    args.cfg.default_delay_ms = 3;
    s_rule(&args.cfg, "g0/*", 0);
    s_rule(&args.cfg, "g1/*", 1);
    s_rule(&args.cfg, "g2/5", 5);
    args.cfg.max_batch_events = 7;
    args.cfg.max_batch_bytes = 900;
    args.cfg.max_open_batches = 8;
    args.cfg.max_open_bytes = 4000;
    args.clock = A.clock;
    args.first_batch_id = 7;
    args.in = A.in;
    args.due_in = A.due;
    args.timer_out = A.timer;
    args.out = A.out;

    /* Requests of 1..8 events. Aggregates drift over a window so open
     * batches get reused, yet all 100 appear; some events name a recent
     * cause, some were refused upstream (not OK, no seq). */
    A.reqs = calloc(A_EVENTS, sizeof *A.reqs);
    assert_non_null(A.reqs);
    for (int made = 0; made < A_EVENTS;) {
        ev_spec s[8];
        char names[8][16];
        uint32_t n = 1 + (uint32_t) (rand_r(&seed) % 8);
        if (made + (int) n > A_EVENTS)
            n = (uint32_t) (A_EVENTS - made);
        for (uint32_t i = 0; i < n; i++) {
            int g = (made / 50 + rand_r(&seed) % 12) % A_AGGS;
            snprintf(names[i], sizeof names[i], "g%d/%d", g % 3, g);
            s[i] = (ev_spec){.agg = names[i],
                             .payload_len = (uint32_t) (rand_r(&seed) % 120),
                             .has_pos = 1,
                             .pos = (uint64_t) made};
            if (f->seq > 3 && rand_r(&seed) % 5 == 0)
                s[i].caused_by = f->seq - (uint64_t) (rand_r(&seed) % 3);
            if (rand_r(&seed) % 40 == 0)
                s[i].status = SB_EDUP;
            made++;
        }
        A.reqs[A.nreqs++] = s_req(f, s, n);
    }
    for (size_t i = 0; i < A.nreqs; i++)
        accepted += A.reqs[i]->naccepted;

    assert_int_equal(sb_timelock_actor_new(&A.timelock, &A.clock,
                                           args.cfg.max_open_batches, A.timer,
                                           A.due),
                     SB_OK);
    assert_int_equal(sb_router_actor_new(&A.router, &args), SB_OK);

    /* Feed and read with this thread; the fake clock moves one ms each
     * time a short look finds nothing to do. A broken pipeline shows as
     * the step limit, never as a timing accident. */
    for (long steps = 0; !eof_seen; steps++) {
        struct pollfd p[2] = {
            {sb_link_send_fd(A.in), eof_sent ? 0 : POLLIN, 0},
            {sb_link_recv_fd(A.out), POLLIN, 0},
        };
        sb_item it;
        int moved = 0;

        assert_true(steps < 2000000);
        poll(p, 2, 1);
        if (!eof_sent) {
            it = sent < A.nreqs ? (sb_item){SB_ITEM_REQ, A.reqs[sent]}
                                : (sb_item){SB_ITEM_EOF, NULL};
            if (sb_link_send(A.in, &it) == SB_OK) {
                moved = 1;
                if (sent++ == A.nreqs)
                    eof_sent = 1;
            }
        }
        while (sb_link_recv(A.out, &it) == SB_OK) {
            moved = 1;
            if (it.kind == SB_ITEM_EOF) {
                eof_seen = 1;
                assert_true(eof_sent);
                break;
            }
            assert_int_equal(it.kind, SB_ITEM_BATCH);
            sb_batch *b = it.ptr;
            int topic = s_num(b->agg, b->agg_len);
            uint64_t own_max = 0;
            assert_int_equal(b->id, expect_id++);
            assert_true(b->n > 0);
            assert_true(b->n <= args.cfg.max_batch_events);
            assert_int_equal(b->prev_last_seq, topic_last[topic]);
            topic_last[topic] = b->ev[b->n - 1]->seq;
            for (uint32_t e = 0; e < b->n; e++) {
                const sb_event *ev = b->ev[e];
                int g = s_num(ev->agg, ev->agg_len);
                assert_int_equal(ev->status, SB_OK);
                if (e > 0)
                    assert_true(ev->seq > b->ev[e - 1]->seq);
                assert_int_equal(ev->agg_seq, ++next_agg_seq[g]);
                if (g == topic && ev->agg_seq > own_max)
                    own_max = ev->agg_seq;
                seen++;
            }
            assert_int_equal(b->agg_last_seq, own_max);
            batches++;
            sb_batch_destroy(&b);
        }
        if (!moved)
            atomic_fetch_add(&A.now, 1);
    }
    assert_int_equal(sb_router_actor_wait(A.router, 10000), SB_OK);
    assert_int_equal(sb_timelock_actor_wait(A.timelock, 10000), SB_OK);
    assert_int_equal(seen, accepted);
    sb_router_actor_stats(A.router, &st);
    assert_int_equal(st.events, accepted);
    assert_int_equal(st.batches, batches);
    assert_int_equal(st.open_batches, 0);
    assert_int_equal(st.open_bytes, 0);
    assert_int_equal(st.aggregates, A_AGGS);
    assert_true(st.waits > 0); /* the limits were hit ... */
    sb_link_stats_get(A.out, &ls);
    assert_true(ls.full > 0); /* ... and so was a full link */
    print_message("actors: %llu events in %llu batches, %llu waits, "
                  "%llu caused_by joins, out full %llu times\n",
                  (unsigned long long) seen, (unsigned long long) batches,
                  (unsigned long long) st.waits,
                  (unsigned long long) st.caused_by_joins,
                  (unsigned long long) ls.full);

    sb_router_actor_destroy(&A.router);
    sb_timelock_actor_destroy(&A.timelock);
    assert_null(A.router);
    /* DUEs the timelock sent after the router left carry no pointers. */
    sb_link_destroy(&A.in);
    sb_link_destroy(&A.out);
    sb_link_destroy(&A.timer);
    sb_link_destroy(&A.due);
    free(A.reqs);
}

static void
test_actor_stop_frees_what_it_holds(void **state)
{
    fixture *f = *state;
    sb_link *in, *out, *timer, *due;
    sb_router_actor *r;
    sb_router_actor_args args;
    _Atomic uint64_t now;
    ev_spec s[] = {{.agg = "a/1"}, {.agg = "b/1"}, {.agg = "c/1"}};
    sb_item it;
    sb_timer_cmd c;

    atomic_init(&now, 1000);
    assert_int_equal(sb_link_new(&in, "in", sizeof(sb_item), 1), SB_OK);
    assert_int_equal(sb_link_new(&out, "out", sizeof(sb_item), 1), SB_OK);
    assert_int_equal(sb_link_new(&timer, "tmr", sizeof(sb_timer_cmd), 1),
                     SB_OK);
    assert_int_equal(sb_link_new(&due, "due", sizeof(sb_timer_cmd), 1), SB_OK);
    memset(&args, 0, sizeof args);
    sb_router_config_defaults(&args.cfg);
    args.cfg.max_batch_events = 1;
    args.clock = (sb_clock){s_fake_now, (void *) &now};
    args.in = in;
    args.due_in = due;
    args.timer_out = timer;
    args.out = out;
    assert_int_equal(sb_router_actor_new(&r, &args), SB_OK);
    /* Three one-event batches for a link of one: one goes out, the rest
     * stay parked in the router, mid-request. */
    it = (sb_item){SB_ITEM_REQ, s_req(f, s, 3)};
    assert_int_equal(sb_link_send_wait(in, &it, 10000), SB_OK);
    assert_int_equal(sb_link_recv_wait(out, &it, 10000), SB_OK);
    sb_batch_destroy((sb_batch **) &it.ptr);
    assert_int_equal(sb_link_recv_wait(timer, &c, 20), SB_EAGAIN);
    sb_router_actor_destroy(&r); /* STOP: ASan checks nothing leaks */
    assert_null(r);
    while (sb_link_recv(out, &it) == SB_OK)
        sb_batch_destroy((sb_batch **) &it.ptr);
    sb_link_destroy(&in);
    sb_link_destroy(&out);
    sb_link_destroy(&timer);
    sb_link_destroy(&due);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int
main(void)
{
    const struct CMUnitTest t[] = {
        T(test_config_defaults_pass_check),
        T(test_delay_exact_then_glob_then_default),
        T(test_batch_flushes_when_delay_ends),
        T(test_delay_zero_flushes_at_end_of_request),
        T(test_max_events_closes_early_and_disarms),
        T(test_batch_closed_before_its_arm_left_sends_no_timer),
        T(test_max_bytes_closes_early),
        T(test_max_bytes_reached_exactly_closes),
        T(test_caused_by_joins_and_aggregate_follows),
        T(test_caused_by_refused_when_aggregate_is_in_another_batch),
        T(test_caused_by_chain_within_one_batch),
        T(test_caused_by_found_across_seq_pages),
        T(test_late_event_goes_to_next_batch),
        T(test_delayed_aggregate_joining_delay_zero_batch),
        T(test_flush_all_oldest_first),
        T(test_batch_fields_filled_at_flush),
        T(test_open_batches_limit_waits_then_resumes),
        T(test_open_bytes_limit_waits_then_resumes),
        T(test_limit_flushes_delay_zero_batches_first),
        T(test_untake_puts_items_back_in_front),
        T(test_destroy_frees_open_and_outbox_batches),
        T(test_many_aggregates_in_order),
        T(test_actors_tiny_links_every_event_once_in_order),
        T(test_actor_stop_frees_what_it_holds),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
