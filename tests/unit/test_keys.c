/* Allowlist and key-file parsing (sb_keys), and the refusal log's rate
 * limit (sb_auth_limit_take): the rules of docs/SECURITY.md, one by one. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "sb_auth.h"
#include "sb_keys.h"

typedef struct {
    char pub[3][41], sec[3][41];
    uint8_t raw[3][32];
    char dir[64];
} fixture;

static int
setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);

    for (int i = 0; i < 3; i++) {
        zmq_curve_keypair(f->pub[i], f->sec[i]);
        zmq_z85_decode(f->raw[i], f->pub[i]);
    }
    sbt_tmpdir(f->dir, sizeof f->dir, "keys");
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fixture *f = *state;

    sbt_rmtree(f->dir);
    free(f);
    return 0;
}

static sb_err
s_parse(const char *text, sb_keyset **ks, char *why, size_t n)
{
    return sb_keyset_parse(ks, text, strlen(text), "list.keys", why, n);
}

static void
test_comments_blanks_crlf_and_repeats(void **state)
{
    fixture *f = *state;
    char text[1024], why[256] = "";
    sb_keyset *ks = NULL;

    snprintf(text, sizeof text,
             "# publishers\n\n   \t\n%s\r\n  %s   # bob, indented\n%s\n# end",
             f->pub[0], f->pub[1], f->pub[0]);
    assert_int_equal(s_parse(text, &ks, why, sizeof why), SB_OK);
    assert_int_equal(sb_keyset_count(ks), 2); /* the repeat counts once */
    assert_true(sb_keyset_has(ks, f->raw[0]));
    assert_true(sb_keyset_has(ks, f->raw[1]));
    assert_false(sb_keyset_has(ks, f->raw[2]));
    sb_keyset_destroy(&ks);
    assert_null(ks);
    sb_keyset_destroy(&ks); /* twice is harmless */
}

static void
test_empty_list_admits_nobody(void **state)
{
    fixture *f = *state;
    char why[256];
    sb_keyset *ks = NULL;

    assert_int_equal(s_parse("", &ks, why, sizeof why), SB_OK);
    assert_int_equal(sb_keyset_count(ks), 0);
    assert_false(sb_keyset_has(ks, f->raw[0]));
    sb_keyset_destroy(&ks);
    assert_false(sb_keyset_has(NULL, f->raw[0]));
}

/* '#' is a Z85 character, but no key begins with it (its index, 84, is
 * past the largest first digit a 32-bit group can have): so a line that
 * begins with '#' is a comment even when it looks like a key. */
static void
test_line_starting_with_hash_is_a_comment(void **state)
{
    fixture *f = *state;
    uint8_t raw[32];
    char z85[41], text[256], why[256];
    sb_keyset *ks = NULL;

    memset(raw, 0xff, sizeof raw);
    zmq_z85_encode(z85, raw, sizeof raw);
    assert_true(z85[0] != '#' && z85[0] != '$'); /* the largest group */
    snprintf(text, sizeof text, "#%.39s\n%s\n", f->pub[1] + 1, f->pub[0]);
    assert_int_equal(s_parse(text, &ks, why, sizeof why), SB_OK);
    assert_int_equal(sb_keyset_count(ks), 1);
    assert_true(sb_keyset_has(ks, f->raw[0]));
    sb_keyset_destroy(&ks);
}

static void
test_bad_lines_name_file_and_line(void **state)
{
    fixture *f = *state;
    char text[512], why[256];
    sb_keyset *ks = NULL;
    char short_key[41], long_key[64], bad_char[41];

    snprintf(short_key, sizeof short_key, "%.39s", f->pub[0]);
    snprintf(long_key, sizeof long_key, "%sA", f->pub[0]);
    snprintf(bad_char, sizeof bad_char, "%s", f->pub[0]);
    bad_char[17] = '~'; /* not in Z85 */
    const char *bad[] = {short_key, long_key, bad_char, "hello world",
                         "; an INI comment is not ours"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "# ok\n%s\n%s\n", f->pub[1], bad[i]);
        why[0] = '\0';
        assert_int_equal(s_parse(text, &ks, why, sizeof why), SB_EINVAL);
        assert_null(ks);
        assert_non_null(strstr(why, "list.keys:3:"));
    }
    /* A key glued to its comment is not a key and a comment. */
    snprintf(text, sizeof text, "%s#x\n", f->pub[0]);
    assert_int_equal(s_parse(text, &ks, why, sizeof why), SB_EINVAL);
    /* Something after the key that is not a comment. */
    snprintf(text, sizeof text, "%s extra\n", f->pub[0]);
    assert_int_equal(s_parse(text, &ks, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "list.keys:1:"));
    /* A NUL byte: a binary file given by mistake. */
    assert_int_equal(sb_keyset_parse(&ks, "ab\0cd\n", 6, "bin", why, sizeof why),
                     SB_EINVAL);
    assert_non_null(strstr(why, "bin:1:"));
}

static void
test_files_and_key_arguments(void **state)
{
    fixture *f = *state;
    char path[128], two[128], missing[128], text[256], z85[41], why[256];
    FILE *fp;
    sb_keyset *ks = NULL;

    snprintf(path, sizeof path, "%s/one.key", f->dir);
    snprintf(two, sizeof two, "%s/two.keys", f->dir);
    snprintf(missing, sizeof missing, "%s/none", f->dir);
    fp = fopen(path, "w");
    fprintf(fp, "# a secret\n%s\n", f->sec[0]);
    fclose(fp);
    fp = fopen(two, "w");
    fprintf(fp, "%s\n%s # two\n", f->pub[0], f->pub[1]);
    fclose(fp);

    assert_int_equal(sb_key_read_file(path, z85, why, sizeof why), SB_OK);
    assert_string_equal(z85, f->sec[0]);
    assert_int_equal(sb_curve_key_load(path, z85, why, sizeof why), SB_OK);
    assert_string_equal(z85, f->sec[0]);
    /* A key given as itself. */
    assert_int_equal(sb_curve_key_load(f->pub[2], z85, why, sizeof why), SB_OK);
    assert_string_equal(z85, f->pub[2]);
    /* A key file holds one key. */
    assert_int_equal(sb_key_read_file(two, z85, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "2 keys"));
    assert_int_equal(sb_keyset_load(&ks, two, why, sizeof why), SB_OK);
    assert_int_equal(sb_keyset_count(ks), 2);
    sb_keyset_destroy(&ks);
    /* Unreadable: the path and the OS's reason. */
    assert_int_equal(sb_keyset_load(&ks, missing, why, sizeof why), SB_ESYS);
    assert_non_null(strstr(why, missing));
    assert_int_equal(sb_curve_key_load(missing, z85, why, sizeof why), SB_ESYS);
    assert_int_equal(sb_curve_key_load("", z85, why, sizeof why), SB_EINVAL);
    snprintf(text, sizeof text, "%s", f->pub[0]);
    text[39] = '\0';
    assert_int_not_equal(sb_curve_key_load(text, z85, why, sizeof why), SB_OK);
}

static void
test_refusal_log_is_rate_limited(void **state)
{
    (void) state;
    sb_auth_limit l = {0, 0, 0};
    uint64_t supp = 99;
    int written = 0;

    /* A flood in one second: 5 lines, the rest counted. */
    for (int i = 0; i < 1000; i++)
        written += sb_auth_limit_take(&l, 10000 + (uint64_t) i % 1000, 5, &supp);
    assert_int_equal(written, 5);
    assert_int_equal(supp, 0);
    /* The next second's first line reports what was held back. */
    assert_true(sb_auth_limit_take(&l, 11000, 5, &supp));
    assert_int_equal(supp, 995);
    assert_true(sb_auth_limit_take(&l, 11001, 5, &supp));
    assert_int_equal(supp, 0);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_comments_blanks_crlf_and_repeats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_list_admits_nobody, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_starting_with_hash_is_a_comment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_lines_name_file_and_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_and_key_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_log_is_rate_limited, setup, teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
