/* The retention ring behind fetch: bounds by count and bytes, paging by
 * batch id, seq ranges, prefixes, and the out-of-retention refusal. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sb_fanout.h"

static sb_blob *
s_blob(uint64_t id, uint64_t first, uint64_t last, const char *topic, uint32_t len)
{
    sb_blob *b = calloc(1, sizeof *b + len);
    atomic_init(&b->refs, 1);
    b->len = len;
    b->batch_id = id;
    b->first_seq = first;
    b->last_seq = last;
    b->topic_len = (uint32_t) strlen(topic) + 1;
    strcpy(b->topic, topic);
    return b;
}

static void
s_fill(sb_ring *r, int n)
{
    for (int i = 1; i <= n; i++) {
        sb_blob *b = s_blob((uint64_t) i, (uint64_t) i * 10, (uint64_t) i * 10 + 9,
                            i % 2 ? "odd/x" : "even/y", 100);
        sb_ring_add(r, b);
        sb_blob_unref(b);
    }
}

static void
s_release(sb_blob **out, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        sb_blob_unref(out[i]);
}

static void
test_bounds_and_horizon(void **state)
{
    sb_ring *r;
    sb_blob *out[16];
    sb_ring_result res;
    sb_ring_query q = {"", 0, 0, 0, 0, 16, 1 << 20, 1000, 0};

    assert_int_equal(sb_ring_new(&r, 5, 1 << 20), SB_OK);
    s_fill(r, 8); /* ids 1..8, only 4..8 stay */
    assert_int_equal(sb_ring_count(r), 5);
    /* Memory counted: the bytes and each batch's header. */
    assert_int_equal(sb_ring_bytes(r), 5 * (sizeof(sb_blob) + 100));
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 5);
    assert_int_equal(out[0]->batch_id, 4);
    assert_int_equal(res.retained_first_seq, 40); /* batch 3 held 30..39 */
    assert_int_equal(res.retained_first_batch_id, 4);
    s_release(out, res.count);

    q.from_seq = 35; /* before the horizon */
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_ENOENT);
    q.from_seq = 0;
    q.after_batch_id = 2; /* cursor older than the ring */
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_ENOENT);
    q.after_batch_id = 3; /* exactly at the edge is fine */
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 5);
    s_release(out, res.count);
    sb_ring_destroy(&r);

    /* By bytes: room for three 100-byte batches with their headers. */
    assert_int_equal(sb_ring_new(&r, 100, 3 * (sizeof(sb_blob) + 100) + 50),
                     SB_OK);
    s_fill(r, 6);
    assert_int_equal(sb_ring_count(r), 3);
    sb_ring_destroy(&r);
    assert_null(r);
}

static void
test_paging_prefix_range(void **state)
{
    sb_ring *r;
    sb_blob *out[16];
    sb_ring_result res;
    sb_ring_query q = {"odd/", 4, 0, 0, 0, 2, 1 << 20, 1000, 0};

    assert_int_equal(sb_ring_new(&r, 100, 1 << 20), SB_OK);
    s_fill(r, 10);
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 2);
    assert_int_equal(out[0]->batch_id, 1);
    assert_int_equal(out[1]->batch_id, 3);
    assert_true(res.more);
    s_release(out, res.count);
    q.after_batch_id = res.last_batch_id;
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(out[0]->batch_id, 5);
    s_release(out, res.count);

    /* Seq range [45, 71] touches batches 4..7; with prefix odd: 5 and 7. */
    q = (sb_ring_query){"odd/", 4, 45, 71, 0, 16, 1 << 20, 1000, 0};
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 2);
    assert_int_equal(out[0]->batch_id, 5);
    assert_int_equal(out[1]->batch_id, 7);
    assert_false(res.more);
    s_release(out, res.count);

    /* A byte bound still returns at least one batch, and says more. */
    q = (sb_ring_query){"", 0, 0, 0, 0, 16, 150, 1000, 0};
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 1);
    assert_true(res.more);
    s_release(out, res.count);

    /* Exact names only: "odd/x" but not a longer name sharing the prefix. */
    sb_blob *longer = s_blob(11, 110, 119, "odd/xy", 100);
    sb_ring_add(r, longer);
    sb_blob_unref(longer);
    q = (sb_ring_query){"odd/x", 5, 0, 0, 0, 16, 1 << 20, 1000, 1};
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 5);
    for (uint32_t i = 0; i < res.count; i++)
        assert_string_equal(out[i]->topic, "odd/x");
    s_release(out, res.count);
    q.exact = 0;
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 6);
    s_release(out, res.count);

    /* The scan bound pages even when nothing matches. */
    q = (sb_ring_query){"none/", 5, 0, 0, 0, 16, 1 << 20, 3, 0};
    assert_int_equal(sb_ring_find(r, &q, out, &res), SB_OK);
    assert_int_equal(res.count, 0);
    assert_true(res.more);
    assert_int_equal(res.last_batch_id, 3);
    sb_ring_destroy(&r);
}

/* low_seq per retained batch: what a fetch reply reports for its cursor
 * (FetchReply.cursor_low_seq); 0 for a batch the ring does not hold. */
static void
test_low_seq_of_retained_batches(void **state)
{
    sb_ring *r;

    assert_int_equal(sb_ring_new(&r, 3, 1 << 20), SB_OK);
    assert_int_equal(sb_ring_low_seq(r, 1), 0); /* empty */
    for (int i = 1; i <= 5; i++) {
        sb_blob *b = s_blob((uint64_t) i, (uint64_t) i * 10,
                            (uint64_t) i * 10 + 9, "a/b", 10);
        b->low_seq = (uint64_t) i * 10 - 5; /* an older batch still open */
        sb_ring_add(r, b);
        sb_blob_unref(b);
    }
    assert_int_equal(sb_ring_low_seq(r, 2), 0); /* evicted */
    assert_int_equal(sb_ring_low_seq(r, 3), 25);
    assert_int_equal(sb_ring_low_seq(r, 5), 45);
    assert_int_equal(sb_ring_low_seq(r, 6), 0); /* not published yet */
    sb_ring_destroy(&r);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_bounds_and_horizon),
        cmocka_unit_test(test_paging_prefix_range),
        cmocka_unit_test(test_low_seq_of_retained_batches),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
