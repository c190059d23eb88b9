/* The bounded link: exact bound, refusal without loss, fds that mirror the
 * state, and order under a concurrent producer. The byte credit: room
 * until the limit, a wake-up exactly when given back under it, and a
 * producer that waits for it and resumes without losing anything. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <string.h>

#include "sb_link.h"
#include "sb_msg.h"

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

static void
test_credit_room_until_limit_then_wakes_on_return(void **state)
{
    sb_credit *c;
    sb_credit_stats st;

    (void) state;
    assert_int_equal(sb_credit_new(&c, 1000), SB_OK);
    assert_true(sb_credit_room(c));
    sb_credit_take(c, 600);
    assert_true(sb_credit_room(c));
    sb_credit_take(c, 600); /* a take never fails: it may pass the limit */
    assert_false(sb_credit_room(c));
    assert_false(sb_credit_room(c)); /* one wait, however often asked */
    assert_false(s_readable(sb_credit_fd(c)));
    sb_credit_give(c, 200); /* 1000: still no room, no wake-up */
    assert_false(s_readable(sb_credit_fd(c)));
    assert_false(sb_credit_room(c));
    sb_credit_give(c, 1); /* 999: under the limit */
    assert_true(s_readable(sb_credit_fd(c)));
    sb_credit_clear(c);
    assert_false(s_readable(sb_credit_fd(c)));
    assert_true(sb_credit_room(c));
    sb_credit_give(c, 999);
    assert_false(s_readable(sb_credit_fd(c))); /* no crossing: no write */
    sb_credit_stats_get(c, &st);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.high, 1200);
    assert_int_equal(st.waits, 1);
    assert_int_equal(st.limit, 1000);
    sb_credit_destroy(&c);
    sb_credit_destroy(&c); /* harmless */
    assert_null(c);
}

static void
test_request_and_reply_give_their_charge_back(void **state)
{
    sb_credit *c;
    sb_req *r;
    sb_reply *rp;
    uint8_t *data;

    (void) state;
    assert_int_equal(sb_credit_new(&c, 1u << 20), SB_OK);
    assert_int_equal(sb_req_new(&r, 3, 100, &data), SB_OK);
    sb_req_charge(r, c, r->mem_bytes + 50);
    assert_int_equal(sb_credit_used(c), r->mem_bytes + 50);
    sb_req_ref(r); /* an event in a batch */
    assert_int_equal(sb_reply_from_req(&rp, r), SB_OK);
    assert_true(sb_credit_used(c) > r->mem_bytes + 50); /* the reply too */
    sb_req_unref(r);
    assert_true(sb_credit_used(c) > r->mem_bytes + 50); /* still held */
    sb_req_unref(r); /* the last reference: its charge comes back */
    assert_int_equal(sb_credit_used(c), rp->mem_bytes);
    sb_reply_free(rp); /* outlived its request, given back on its own */
    assert_int_equal(sb_credit_used(c), 0);
    sb_credit_destroy(&c);
}

/* A fake pipeline: the producer admits requests as the ingest does (room
 * first, charge, send), the consumer frees them. The consumer does not
 * start until the producer has found no room, so the wait is real. */
#define S_NREQ 20000
#define S_LIMIT (64u << 10)

typedef struct {
    sb_credit *c;
    sb_link *l;
    int waited;     /* times the producer slept on the credit's fd */
    uint64_t bad;   /* consumer: out of order */
    uint64_t got;
} s_pipe;

static void *
s_admit(void *arg)
{
    s_pipe *p = arg;

    for (uint64_t i = 0; i < S_NREQ;) {
        if (!sb_credit_room(p->c)) {
            struct pollfd pf = {sb_credit_fd(p->c), POLLIN, 0};
            if (poll(&pf, 1, 60000) == 1)
                p->waited++;
            sb_credit_clear(p->c);
            continue;
        }
        sb_req *r;
        uint8_t *data;
        size_t len = 100 + (size_t) (i % 7) * 300;
        assert_int_equal(sb_req_new(&r, 1, len, &data), SB_OK);
        memset(data, (int) (i & 0xff), len);
        r->request_id = i++;
        sb_req_charge(r, p->c, r->mem_bytes);
        sb_item it = {SB_ITEM_REQ, r};
        assert_int_equal(sb_link_send_wait(p->l, &it, 60000), SB_OK);
    }
    return NULL;
}

static void
test_credit_producer_waits_and_resumes_nothing_lost(void **state)
{
    s_pipe p = {0};
    pthread_t t;
    sb_credit_stats st;
    uint64_t max_charge = 0;

    (void) state;
    assert_int_equal(sb_credit_new(&p.c, S_LIMIT), SB_OK);
    /* Room for every request: only the credit can stop the producer. */
    assert_int_equal(sb_link_new(&p.l, "t", sizeof(sb_item), S_NREQ), SB_OK);
    pthread_create(&t, NULL, s_admit, &p);
    for (int i = 0; i < 60000; i++) { /* until it runs out: 60 s at most */
        sb_credit_stats_get(p.c, &st);
        if (st.waits > 0)
            break;
        poll(NULL, 0, 1);
    }
    sb_credit_stats_get(p.c, &st);
    assert_int_equal(st.waits, 1);
    assert_true(st.used >= S_LIMIT);
    /* It stays stopped: nothing is given back while nobody consumes. */
    size_t depth = sb_link_depth(p.l);
    assert_true(depth < S_NREQ);
    while (p.got < S_NREQ) {
        sb_item it;
        assert_int_equal(sb_link_recv_wait(p.l, &it, 60000), SB_OK);
        sb_req *r = it.ptr;
        if (r->request_id != p.got)
            p.bad++;
        if (r->mem_bytes > max_charge)
            max_charge = r->mem_bytes;
        p.got++;
        sb_req_unref(r);
    }
    pthread_join(t, NULL);
    sb_credit_stats_get(p.c, &st);
    assert_int_equal(p.got, S_NREQ); /* nothing lost */
    assert_int_equal(p.bad, 0);      /* nothing reordered */
    assert_int_equal(st.used, 0);    /* every byte given back */
    /* Never more than the limit plus the one request admitted last. */
    assert_true(st.high < S_LIMIT + max_charge);
    assert_true(p.waited >= 1); /* it slept, and was woken */
    sb_link_destroy(&p.l);
    sb_credit_destroy(&p.c);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_bound_is_exact),
        cmocka_unit_test(test_concurrent_order_tiny_bound),
        cmocka_unit_test(test_hold_fills_then_releases_in_order),
        cmocka_unit_test(test_credit_room_until_limit_then_wakes_on_return),
        cmocka_unit_test(test_request_and_reply_give_their_charge_back),
        cmocka_unit_test(test_credit_producer_waits_and_resumes_nothing_lost),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
