/* sb_map: what five modules rely on. Put, get, replace and delete agree
 * with a plain array model through growth and heavy churn (backward-shift
 * deletion must never lose an entry that probed past the removed one);
 * keys are byte strings (embedded zeros, the empty key, prefixes of each
 * other); a NULL value is refused; sb_map_each visits every entry once;
 * destroy is NULL-safe. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_map.h"

#define NKEYS 5000

typedef struct {
    char key[16];
    size_t len;
    int in;     /* in the model */
    void *value; /* what the map should hold */
} entry;

static entry s_keys[NKEYS];

static void
s_make_keys(void)
{
    for (int i = 0; i < NKEYS; i++) {
        s_keys[i].len = (size_t)snprintf(s_keys[i].key,
                                         sizeof s_keys[i].key, "k%d", i);
        s_keys[i].in = 0;
        s_keys[i].value = NULL;
    }
}

static void
s_check_model(const sb_map *m)
{
    size_t n = 0;

    for (int i = 0; i < NKEYS; i++) {
        void *v = sb_map_get(m, s_keys[i].key, s_keys[i].len);
        if (s_keys[i].in) {
            n++;
            assert_ptr_equal(v, s_keys[i].value);
        } else {
            assert_null(v);
        }
    }
    assert_int_equal(sb_map_size(m), n);
}

static void
test_put_get_del_agree_with_a_model_through_churn(void **state)
{
    sb_map *m = NULL;
    uint64_t x = 88172645463325252ull; /* xorshift: a fixed, varied order */

    (void)state;
    s_make_keys();
    assert_int_equal(sb_map_new(&m, 4), SB_OK); /* grows many times */
    for (int round = 0; round < 40; round++) {
        for (int k = 0; k < 2000; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            entry *e = &s_keys[x % NKEYS];
            if ((x >> 20) % 3 == 0) {
                void *old = sb_map_del(m, e->key, e->len);
                assert_ptr_equal(old, e->in ? e->value : NULL);
                e->in = 0;
                e->value = NULL;
            } else {
                void *v = (void *)(uintptr_t)(x | 1);
                assert_int_equal(sb_map_put(m, e->key, e->len, v), SB_OK);
                e->in = 1;
                e->value = v; /* a put on a present key replaces */
            }
        }
        s_check_model(m);
    }
    for (int i = 0; i < NKEYS; i++) /* empty it: nothing left behind */
        if (s_keys[i].in)
            assert_non_null(sb_map_del(m, s_keys[i].key, s_keys[i].len));
    assert_int_equal(sb_map_size(m), 0);
    sb_map_destroy(&m);
    assert_null(m);
}

static void
test_keys_are_bytes_not_strings(void **state)
{
    sb_map *m = NULL;
    static const char a[] = {'a', 0, 'b'}, b[] = {'a', 0, 'c'};
    int va, vb, vpre, vempty;

    (void)state;
    assert_int_equal(sb_map_new(&m, 0), SB_OK);
    assert_int_equal(sb_map_put(m, a, 3, &va), SB_OK);
    assert_int_equal(sb_map_put(m, b, 3, &vb), SB_OK);
    assert_int_equal(sb_map_put(m, "a", 1, &vpre), SB_OK);
    assert_int_equal(sb_map_put(m, "", 0, &vempty), SB_OK);
    assert_int_equal(sb_map_size(m), 4);
    assert_int_equal(sb_map_put(m, "x", 1, NULL), SB_EINVAL);
    assert_int_equal(sb_map_size(m), 4);
    assert_ptr_equal(sb_map_get(m, a, 3), &va);
    assert_ptr_equal(sb_map_get(m, b, 3), &vb);
    assert_ptr_equal(sb_map_get(m, "a", 1), &vpre);
    assert_ptr_equal(sb_map_get(m, "", 0), &vempty);
    assert_null(sb_map_get(m, "a\0", 2));
    assert_ptr_equal(sb_map_del(m, "", 0), &vempty);
    assert_null(sb_map_get(m, "", 0));
    assert_ptr_equal(sb_map_get(m, "a", 1), &vpre);
    sb_map_destroy(&m);
}

static void
s_count(void *value, void *ctx)
{
    int *seen = ctx;

    seen[(int)(intptr_t)value - 1]++;
}

static void
test_each_visits_every_entry_once(void **state)
{
    sb_map *m = NULL;
    static int seen[NKEYS];

    (void)state;
    s_make_keys();
    memset(seen, 0, sizeof seen);
    assert_int_equal(sb_map_new(&m, 16), SB_OK);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(
            sb_map_put(m, s_keys[i].key, s_keys[i].len,
                       (void *)(intptr_t)(i + 1)),
            SB_OK);
    for (int i = 0; i < NKEYS; i += 2) /* half removed: holes everywhere */
        assert_ptr_equal(sb_map_del(m, s_keys[i].key, s_keys[i].len),
                         (void *)(intptr_t)(i + 1));
    sb_map_each(m, s_count, seen);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(seen[i], i % 2); /* odd ones stayed */
    sb_map_destroy(&m);
}

static void
test_destroy_is_null_safe_and_hash_is_stable(void **state)
{
    sb_map *m = NULL;

    (void)state;
    sb_map_destroy(&m);
    sb_map_destroy(NULL);
    /* Others persist nothing hashed, but shard routing and the broker's
     * tables rely on one input giving one hash. */
    assert_true(sb_hash("abc", 3) == sb_hash("abc", 3));
    assert_true(sb_hash("abc", 3) != sb_hash("abd", 3));
    assert_true(sb_hash("", 0) == sb_hash("", 0));
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_put_get_del_agree_with_a_model_through_churn),
        cmocka_unit_test(test_keys_are_bytes_not_strings),
        cmocka_unit_test(test_each_visits_every_entry_once),
        cmocka_unit_test(test_destroy_is_null_safe_and_hash_is_stable),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
