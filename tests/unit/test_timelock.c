/* Timelock: the heap core (order, ties, disarm, re-arm, capacity) driven
 * with explicit times, and the actor with a fake clock the test moves. No
 * test sleeps; actor tests wait on links with generous timeouts that only
 * matter if something is broken. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>

#include "sb_link.h"
#include "sb_timelock.h"

#define WAIT_MS 10000 /* only reached when the code under test is broken */

static sb_timelock *
s_new(size_t cap)
{
    sb_timelock *tl = NULL;

    assert_int_equal(sb_timelock_new(&tl, cap), SB_OK);
    assert_non_null(tl);
    return tl;
}

static uint64_t
s_pop(sb_timelock *tl, uint64_t now)
{
    uint64_t key = UINT64_MAX;

    assert_int_equal(sb_timelock_pop_due(tl, now, &key), SB_OK);
    return key;
}

static void
test_new_rejects_zero_capacity(void **state)
{
    sb_timelock *tl = NULL;

    (void) state;
    assert_int_equal(sb_timelock_new(&tl, 0), SB_EINVAL);
    assert_null(tl);
    sb_timelock_destroy(&tl); /* NULL is fine */
}

static void
test_empty_has_no_next_and_nothing_due(void **state)
{
    sb_timelock *tl = s_new(4);
    uint64_t x;

    (void) state;
    assert_int_equal(sb_timelock_next(tl, &x), SB_EAGAIN);
    assert_int_equal(sb_timelock_pop_due(tl, UINT64_MAX, &x), SB_EAGAIN);
    assert_int_equal(sb_timelock_size(tl), 0);
    sb_timelock_destroy(&tl);
    assert_null(tl);
    sb_timelock_destroy(&tl);
}

static void
test_due_exactly_at_deadline(void **state)
{
    sb_timelock *tl = s_new(4);
    uint64_t x;

    (void) state;
    assert_int_equal(sb_timelock_arm(tl, 7, 500), SB_OK);
    assert_int_equal(sb_timelock_next(tl, &x), SB_OK);
    assert_int_equal(x, 500);
    assert_int_equal(sb_timelock_pop_due(tl, 499, &x), SB_EAGAIN);
    assert_int_equal(sb_timelock_size(tl), 1);
    assert_int_equal(s_pop(tl, 500), 7);
    assert_int_equal(sb_timelock_size(tl), 0);
    sb_timelock_destroy(&tl);
}

static void
test_pops_earliest_first(void **state)
{
    sb_timelock *tl = s_new(64);
    uint64_t deadlines[] = {50, 10, 40, 30, 20, 60, 5, 45};
    uint64_t want[] = {6, 1, 4, 3, 2, 7, 0, 5}; /* key = index */
    uint64_t x;

    (void) state;
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(sb_timelock_arm(tl, i, deadlines[i]), SB_OK);
    /* Only what is due comes out, earliest first. */
    assert_int_equal(s_pop(tl, 20), 6);
    assert_int_equal(s_pop(tl, 20), 1);
    assert_int_equal(s_pop(tl, 20), 4);
    assert_int_equal(sb_timelock_pop_due(tl, 20, &x), SB_EAGAIN);
    for (int i = 3; i < 8; i++)
        assert_int_equal(s_pop(tl, 1000), want[i]);
    assert_int_equal(sb_timelock_size(tl), 0);
    sb_timelock_destroy(&tl);
}

static void
test_ties_come_out_in_arm_order(void **state)
{
    sb_timelock *tl = s_new(64);

    (void) state;
    /* Interleave so heap shape alone would not give arm order. */
    for (uint64_t i = 0; i < 40; i++)
        assert_int_equal(sb_timelock_arm(tl, 1000 - i, 100 + (i % 2)), SB_OK);
    for (uint64_t i = 0; i < 40; i += 2)
        assert_int_equal(s_pop(tl, 100), 1000 - i);
    for (uint64_t i = 1; i < 40; i += 2)
        assert_int_equal(s_pop(tl, 101), 1000 - i);
    sb_timelock_destroy(&tl);
}

static void
test_disarm_removes_only_that_key(void **state)
{
    sb_timelock *tl = s_new(8);
    uint64_t x;

    (void) state;
    assert_int_equal(sb_timelock_arm(tl, 1, 10), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 2, 20), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 3, 30), SB_OK);
    assert_int_equal(sb_timelock_disarm(tl, 2), SB_OK);
    assert_int_equal(sb_timelock_disarm(tl, 2), SB_ENOENT);
    assert_int_equal(sb_timelock_disarm(tl, 99), SB_ENOENT);
    assert_int_equal(sb_timelock_size(tl), 2);
    /* Disarming the head moves the next deadline. */
    assert_int_equal(sb_timelock_disarm(tl, 1), SB_OK);
    assert_int_equal(sb_timelock_next(tl, &x), SB_OK);
    assert_int_equal(x, 30);
    assert_int_equal(s_pop(tl, 100), 3);
    assert_int_equal(sb_timelock_pop_due(tl, 100, &x), SB_EAGAIN);
    /* A popped key is no longer armed. */
    assert_int_equal(sb_timelock_disarm(tl, 3), SB_ENOENT);
    sb_timelock_destroy(&tl);
}

static void
test_rearm_moves_the_key(void **state)
{
    sb_timelock *tl = s_new(2);
    uint64_t x;

    (void) state;
    assert_int_equal(sb_timelock_arm(tl, 1, 100), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 2, 50), SB_OK);
    /* Earlier. Works at capacity: it is a move, not a new timer. */
    assert_int_equal(sb_timelock_arm(tl, 1, 10), SB_OK);
    assert_int_equal(sb_timelock_size(tl), 2);
    assert_int_equal(sb_timelock_next(tl, &x), SB_OK);
    assert_int_equal(x, 10);
    assert_int_equal(s_pop(tl, 10), 1);
    /* Later. */
    assert_int_equal(sb_timelock_arm(tl, 2, 80), SB_OK);
    assert_int_equal(sb_timelock_pop_due(tl, 50, &x), SB_EAGAIN);
    assert_int_equal(s_pop(tl, 80), 2);
    /* A re-arm to the same deadline goes behind keys armed before it. */
    assert_int_equal(sb_timelock_arm(tl, 1, 200), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 2, 200), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 1, 200), SB_OK);
    assert_int_equal(s_pop(tl, 200), 2);
    assert_int_equal(s_pop(tl, 200), 1);
    sb_timelock_destroy(&tl);
}

static void
test_capacity_refuses_without_change(void **state)
{
    sb_timelock *tl = s_new(3);
    uint64_t x;

    (void) state;
    assert_int_equal(sb_timelock_arm(tl, 1, 30), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 2, 20), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 3, 10), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 4, 5), SB_EAGAIN);
    assert_int_equal(sb_timelock_size(tl), 3);
    assert_int_equal(sb_timelock_next(tl, &x), SB_OK);
    assert_int_equal(x, 10);
    assert_int_equal(sb_timelock_disarm(tl, 4), SB_ENOENT);
    /* Room again after a pop, and after a disarm. */
    assert_int_equal(s_pop(tl, 10), 3);
    assert_int_equal(sb_timelock_arm(tl, 4, 5), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 5, 5), SB_EAGAIN);
    assert_int_equal(sb_timelock_disarm(tl, 1), SB_OK);
    assert_int_equal(sb_timelock_arm(tl, 5, 5), SB_OK);
    assert_int_equal(s_pop(tl, 100), 4);
    assert_int_equal(s_pop(tl, 100), 5);
    assert_int_equal(s_pop(tl, 100), 2);
    assert_int_equal(sb_timelock_size(tl), 0);
    sb_timelock_destroy(&tl);
}

/* Random arms, re-arms, disarms and pops against a plain array model. */
typedef struct {
    int armed;
    uint64_t deadline;
    uint64_t order;
} s_model;

static void
test_random_ops_match_a_model(void **state)
{
    enum { KEYS = 200, CAP = 64, OPS = 200000 };
    sb_timelock *tl = s_new(CAP);
    s_model m[KEYS] = {{0}};
    uint64_t order = 0, now = 0, armed = 0;
    unsigned seed = 12345;

    (void) state;
    for (int op = 0; op < OPS; op++) {
        uint64_t k = (uint64_t) (rand_r(&seed) % KEYS);
        int what = rand_r(&seed) % 10;
        if (what < 5) {
            uint64_t d = now + (uint64_t) (rand_r(&seed) % 50);
            sb_err rc = sb_timelock_arm(tl, k, d);
            if (!m[k].armed && armed == CAP) {
                assert_int_equal(rc, SB_EAGAIN);
            } else {
                assert_int_equal(rc, SB_OK);
                armed += !m[k].armed;
                m[k] = (s_model){1, d, order++};
            }
        } else if (what < 7) {
            sb_err rc = sb_timelock_disarm(tl, k);
            assert_int_equal(rc, m[k].armed ? SB_OK : SB_ENOENT);
            armed -= m[k].armed;
            m[k].armed = 0;
        } else {
            uint64_t key, best = KEYS;
            now += (uint64_t) (rand_r(&seed) % 5);
            for (uint64_t i = 0; i < KEYS; i++)
                if (m[i].armed && m[i].deadline <= now &&
                    (best == KEYS || m[i].deadline < m[best].deadline ||
                     (m[i].deadline == m[best].deadline &&
                      m[i].order < m[best].order)))
                    best = i;
            sb_err rc = sb_timelock_pop_due(tl, now, &key);
            if (best == KEYS) {
                assert_int_equal(rc, SB_EAGAIN);
            } else {
                assert_int_equal(rc, SB_OK);
                assert_int_equal(key, best);
                m[best].armed = 0;
                armed--;
            }
        }
        assert_int_equal(sb_timelock_size(tl), armed);
    }
    sb_timelock_destroy(&tl);
}

/* ---- actor ------------------------------------------------------------ */

typedef struct {
    _Atomic uint64_t now;
    sb_clock clock;
    sb_link *in;  /* to the timelock */
    sb_link *out; /* from the timelock */
    sb_timelock_actor *a;
} fixture;

static uint64_t
s_fake_now(void *ctx)
{
    return atomic_load((_Atomic uint64_t *) ctx);
}

static fixture *
s_fixture(size_t capacity, size_t link_cap)
{
    fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    atomic_init(&f->now, 1000);
    f->clock = (sb_clock){s_fake_now, (void *) &f->now};
    assert_int_equal(
        sb_link_new(&f->in, "tl.in", sizeof(sb_timer_cmd), link_cap), SB_OK);
    assert_int_equal(
        sb_link_new(&f->out, "tl.out", sizeof(sb_timer_cmd), link_cap), SB_OK);
    assert_int_equal(
        sb_timelock_actor_new(&f->a, &f->clock, capacity, f->in, f->out),
        SB_OK);
    return f;
}

static void
s_fixture_free(fixture *f)
{
    sb_timelock_actor_destroy(&f->a);
    assert_null(f->a);
    sb_link_destroy(&f->in);
    sb_link_destroy(&f->out);
    free(f);
}

static void
s_cmd(fixture *f, uint32_t op, uint64_t key, uint64_t deadline)
{
    sb_timer_cmd c = {op, key, deadline};

    assert_int_equal(sb_link_send_wait(f->in, &c, WAIT_MS), SB_OK);
}

static uint64_t
s_due(fixture *f)
{
    sb_timer_cmd c;

    assert_int_equal(sb_link_recv_wait(f->out, &c, WAIT_MS), SB_OK);
    assert_int_equal(c.op, SB_TIMER_DUE);
    return c.key;
}

static void
s_no_due(fixture *f)
{
    sb_timer_cmd c;

    /* A short look: passes the same whatever the machine's speed, it can
     * only miss a bug, never invent one. */
    assert_int_equal(sb_link_recv_wait(f->out, &c, 20), SB_EAGAIN);
}

static void
test_actor_sends_due_when_fake_clock_passes(void **state)
{
    fixture *f = s_fixture(8, 4);

    (void) state;
    /* Deadlines close to "now": the actor sleeps in real milliseconds
     * for the fake ones, so this keeps the test quick. */
    s_cmd(f, SB_TIMER_ARM, 42, 1015);
    s_cmd(f, SB_TIMER_ARM, 43, 1020);
    s_cmd(f, SB_TIMER_ARM, 44, 1017);
    s_cmd(f, SB_TIMER_DISARM, 44, 0);
    s_no_due(f);
    atomic_store(&f->now, 1014);
    s_no_due(f);
    atomic_store(&f->now, 1020);
    assert_int_equal(s_due(f), 42);
    assert_int_equal(s_due(f), 43);
    s_no_due(f);
    s_cmd(f, SB_TIMER_EOF, 0, 0);
    assert_int_equal(sb_timelock_actor_wait(f->a, WAIT_MS), SB_OK);
    s_fixture_free(f);
}

static void
test_actor_reads_input_while_due_parked(void **state)
{
    fixture *f = s_fixture(64, 1); /* links of one item */

    (void) state;
    /* Three due at once: one fits in `out`, one is parked, one waits. */
    s_cmd(f, SB_TIMER_ARM, 1, 900);
    s_cmd(f, SB_TIMER_ARM, 2, 901);
    s_cmd(f, SB_TIMER_ARM, 3, 902);
    /* Nobody reads `out`; the timelock must still take all of these, or
     * send_wait would time out. */
    for (uint64_t k = 10; k < 40; k++)
        s_cmd(f, SB_TIMER_ARM, k, 1010 + k);
    for (uint64_t k = 10; k < 40; k += 3)
        s_cmd(f, SB_TIMER_DISARM, k, 0);
    assert_int_equal(s_due(f), 1);
    assert_int_equal(s_due(f), 2);
    assert_int_equal(s_due(f), 3);
    atomic_store(&f->now, 1050);
    for (uint64_t k = 10; k < 40; k++)
        if ((k - 10) % 3 != 0)
            assert_int_equal(s_due(f), k);
    s_no_due(f);
    s_cmd(f, SB_TIMER_EOF, 0, 0);
    assert_int_equal(sb_timelock_actor_wait(f->a, WAIT_MS), SB_OK);
    s_fixture_free(f);
}

static void
test_actor_parks_arm_over_capacity(void **state)
{
    fixture *f = s_fixture(2, 1);

    (void) state;
    s_cmd(f, SB_TIMER_ARM, 1, 1010);
    s_cmd(f, SB_TIMER_ARM, 2, 1020);
    s_cmd(f, SB_TIMER_ARM, 3, 1030); /* refused by the heap: parked */
    s_cmd(f, SB_TIMER_ARM, 4, 1040); /* waits in the link */
    s_no_due(f);
    atomic_store(&f->now, 1010);
    assert_int_equal(s_due(f), 1); /* frees room for 3, then 4 gets read */
    s_no_due(f);
    atomic_store(&f->now, 1040);
    assert_int_equal(s_due(f), 2);
    assert_int_equal(s_due(f), 3);
    assert_int_equal(s_due(f), 4);
    s_cmd(f, SB_TIMER_EOF, 0, 0);
    assert_int_equal(sb_timelock_actor_wait(f->a, WAIT_MS), SB_OK);
    s_fixture_free(f);
}

static void
test_actor_stop_with_timers_pending(void **state)
{
    fixture *f = s_fixture(4, 1);

    (void) state;
    s_cmd(f, SB_TIMER_ARM, 1, 1050);
    s_cmd(f, SB_TIMER_ARM, 2, 900); /* due, sits in `out` */
    s_cmd(f, SB_TIMER_ARM, 3, 901); /* due, parked */
    assert_int_equal(sb_timelock_actor_wait(f->a, 20), SB_ETIMEDOUT);
    s_fixture_free(f); /* STOP while parked: must not hang or leak */
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_new_rejects_zero_capacity),
        cmocka_unit_test(test_empty_has_no_next_and_nothing_due),
        cmocka_unit_test(test_due_exactly_at_deadline),
        cmocka_unit_test(test_pops_earliest_first),
        cmocka_unit_test(test_ties_come_out_in_arm_order),
        cmocka_unit_test(test_disarm_removes_only_that_key),
        cmocka_unit_test(test_rearm_moves_the_key),
        cmocka_unit_test(test_capacity_refuses_without_change),
        cmocka_unit_test(test_random_ops_match_a_model),
        cmocka_unit_test(test_actor_sends_due_when_fake_clock_passes),
        cmocka_unit_test(test_actor_reads_input_while_due_parked),
        cmocka_unit_test(test_actor_parks_arm_over_capacity),
        cmocka_unit_test(test_actor_stop_with_timers_pending),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
