/* sb_shard_of: fixed vectors (the Python client's tests check the same
 * table, so every client and broker agrees on the owner of an aggregate),
 * an even spread, and growth by one shard moving aggregates only to the
 * new shard. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "sb_err.h"

static const uint32_t s_counts[8] = {1, 2, 3, 4, 7, 16, 100, 1000};
static const struct {
    const char *name;
    uint32_t shard[8];
} s_vectors[] = {
    {"", {0, 1, 1, 1, 1, 13, 90, 266}},
    {"a", {0, 1, 2, 2, 2, 12, 31, 163}},
    {"order/1", {0, 0, 2, 2, 4, 14, 61, 881}},
    {"order/2", {0, 1, 2, 2, 2, 2, 41, 661}},
    {"customer/42", {0, 1, 1, 1, 1, 13, 90, 579}},
    {"\xc3\xa9", {0, 1, 2, 2, 5, 5, 19, 393}},
    {"a/very/long/aggregate/name/with/parts", {0, 1, 1, 3, 3, 14, 67, 631}},
};

static uint32_t
s_of(const char *name, uint32_t n)
{
    uint32_t shard = UINT32_MAX;

    assert_int_equal(sb_shard_of(name, strlen(name), n, &shard), SB_OK);
    assert_true(shard < n);
    return shard;
}

static void
test_vectors(void **state)
{
    (void)state;
    for (size_t v = 0; v < sizeof s_vectors / sizeof s_vectors[0]; v++)
        for (int i = 0; i < 8; i++)
            assert_int_equal(s_of(s_vectors[v].name, s_counts[i]),
                             s_vectors[v].shard[i]);
}

static void
test_refuses_bad_arguments(void **state)
{
    uint32_t shard;

    (void)state;
    assert_int_equal(sb_shard_of("a", 1, 0, &shard), SB_EINVAL);
    assert_int_equal(sb_shard_of(NULL, 1, 4, &shard), SB_EINVAL);
    assert_int_equal(sb_shard_of("a", 1, 4, NULL), SB_EINVAL);
    assert_int_equal(sb_shard_of(NULL, 0, 4, &shard), SB_OK);
}

static void
test_even_spread(void **state)
{
    enum { N = 100000 };
    static const uint32_t counts[] = {2, 3, 4, 16};
    char name[32];

    (void)state;
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        uint32_t per[16] = {0}, n = counts[c];
        for (int i = 0; i < N; i++) {
            snprintf(name, sizeof name, "agg/%d", i);
            per[s_of(name, n)]++;
        }
        /* Within 3% of a fair share (the observed spread is under 2%). */
        for (uint32_t s = 0; s < n; s++) {
            assert_true(per[s] > N / n * 97 / 100);
            assert_true(per[s] < N / n * 103 / 100);
        }
    }
}

static void
test_growth_moves_only_to_the_new_shard(void **state)
{
    enum { N = 100000 };
    char name[32];

    (void)state;
    for (uint32_t n = 1; n < 9; n++) {
        int moved = 0;
        for (int i = 0; i < N; i++) {
            snprintf(name, sizeof name, "agg/%d", i);
            uint32_t before = s_of(name, n), after = s_of(name, n + 1);
            if (before != after) {
                assert_int_equal(after, n);
                moved++;
            }
        }
        /* About 1/(n+1) of them move: the new shard's fair share. */
        assert_true(moved > N / (int)(n + 1) * 95 / 100);
        assert_true(moved < N / (int)(n + 1) * 105 / 100);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_refuses_bad_arguments),
        cmocka_unit_test(test_even_spread),
        cmocka_unit_test(test_growth_moves_only_to_the_new_shard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
