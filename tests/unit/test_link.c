/* The bounded link: exact bound, refusal without loss, fds that mirror the
 * state, and order under a concurrent producer. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>

#include "sb_link.h"

static int
s_readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

static void
test_bound_is_exact(void **state)
{
    sb_link *l;
    uint64_t v;
    sb_link_stats st;

    assert_int_equal(sb_link_new(&l, "t", sizeof v, 4), SB_OK);
    assert_false(s_readable(sb_link_recv_fd(l)));
    assert_true(s_readable(sb_link_send_fd(l)));
    for (v = 1; v <= 4; v++)
        assert_int_equal(sb_link_send(l, &v), SB_OK);
    assert_int_equal(sb_link_send(l, &v), SB_EAGAIN); /* the fifth waits */
    assert_int_equal(sb_link_send(l, &v), SB_EAGAIN);
    assert_false(s_readable(sb_link_send_fd(l)));
    assert_true(s_readable(sb_link_recv_fd(l)));
    sb_link_stats_get(l, &st);
    assert_int_equal(st.depth, 4);
    assert_int_equal(st.capacity, 4);
    assert_int_equal(st.full, 2);
    assert_int_equal(st.sent, 4);

    assert_int_equal(sb_link_recv(l, &v), SB_OK);
    assert_int_equal(v, 1);
    assert_true(s_readable(sb_link_send_fd(l)));
    v = 5;
    assert_int_equal(sb_link_send(l, &v), SB_OK);
    for (uint64_t want = 2; want <= 5; want++) {
        assert_int_equal(sb_link_recv(l, &v), SB_OK);
        assert_int_equal(v, want);
    }
    assert_int_equal(sb_link_recv(l, &v), SB_EAGAIN);
    assert_false(s_readable(sb_link_recv_fd(l)));
    sb_link_destroy(&l);
    assert_null(l);
    sb_link_destroy(&l); /* harmless twice */
}

#define N 200000

static void *
s_producer(void *arg)
{
    sb_link *l = arg;
    for (uint64_t v = 1; v <= N; v++)
        if (sb_link_send_wait(l, &v, -1) != SB_OK)
            return (void *) 1;
    return NULL;
}

static void
test_concurrent_order_tiny_bound(void **state)
{
    sb_link *l;
    pthread_t t;
    uint64_t v, want = 1;
    sb_link_stats st;

    assert_int_equal(sb_link_new(&l, "t", sizeof v, 2), SB_OK);
    pthread_create(&t, NULL, s_producer, l);
    while (want <= N) {
        assert_int_equal(sb_link_recv_wait(l, &v, -1), SB_OK);
        assert_int_equal(v, want);
        want++;
    }
    pthread_join(t, NULL);
    sb_link_stats_get(l, &st);
    assert_int_equal(st.sent, N);
    assert_true(st.high <= 2);
    sb_link_destroy(&l);
}

/* [debug] hold: a held link looks empty to its consumer (recv and
 * recv_fd) while it fills, refuses the producer at the bound exactly as a
 * slow consumer would, and on release gives back every item in order. */
static void
test_hold_fills_then_releases_in_order(void **state)
{
    sb_link *l;
    uint64_t v;
    sb_link_stats st;

    assert_int_equal(sb_link_new(&l, "a->b", sizeof v, 3), SB_OK);
    assert_string_equal(sb_link_name(l), "a->b");
    v = 1;
    assert_int_equal(sb_link_send(l, &v), SB_OK); /* queued before the hold */
    assert_true(s_readable(sb_link_recv_fd(l)));
    sb_link_set_hold(l, 1);
    assert_false(s_readable(sb_link_recv_fd(l)));
    assert_int_equal(sb_link_recv(l, &v), SB_EAGAIN);
    assert_int_equal(sb_link_recv_wait(l, &v, 0), SB_EAGAIN);
    for (v = 2; v <= 3; v++)
        assert_int_equal(sb_link_send(l, &v), SB_OK);
    assert_false(s_readable(sb_link_recv_fd(l)));
    assert_false(s_readable(sb_link_send_fd(l))); /* full: producer parks */
    assert_int_equal(sb_link_send(l, &v), SB_EAGAIN);
    sb_link_stats_get(l, &st);
    assert_int_equal(st.depth, 3);
    assert_int_equal(st.full, 1);
    sb_link_set_hold(l, 1); /* idempotent */
    assert_false(s_readable(sb_link_recv_fd(l)));

    sb_link_set_hold(l, 0);
    assert_true(s_readable(sb_link_recv_fd(l)));
    for (uint64_t want = 1; want <= 3; want++) {
        assert_int_equal(sb_link_recv(l, &v), SB_OK);
        assert_int_equal(v, want);
    }
    assert_false(s_readable(sb_link_recv_fd(l)));
    assert_true(s_readable(sb_link_send_fd(l)));

    /* Held while empty: an item sent then stays invisible, and appears
     * (fd readable) on release. */
    sb_link_set_hold(l, 1);
    v = 4;
    assert_int_equal(sb_link_send(l, &v), SB_OK);
    assert_false(s_readable(sb_link_recv_fd(l)));
    assert_int_equal(sb_link_recv(l, &v), SB_EAGAIN);
    sb_link_set_hold(l, 0);
    sb_link_set_hold(l, 0); /* idempotent */
    assert_true(s_readable(sb_link_recv_fd(l)));
    assert_int_equal(sb_link_recv(l, &v), SB_OK);
    assert_int_equal(v, 4);
    assert_false(s_readable(sb_link_recv_fd(l)));
    sb_link_destroy(&l);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_bound_is_exact),
        cmocka_unit_test(test_concurrent_order_tiny_bound),
        cmocka_unit_test(test_hold_fills_then_releases_in_order),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
