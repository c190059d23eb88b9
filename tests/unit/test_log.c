/* The log writer: whatever a call site puts in a value (spaces, quotes,
 * newlines, bytes that are not UTF-8, words without a key), every line is
 * strict logfmt, or a JSON object in json mode; errno gets its text; and
 * warnings and errors are limited per event id, what is held back counted
 * in one log.suppressed line. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../logfmt_strict.h"
#include "sb_log.h"

#define S_MAX 4096

static char *s_lines[S_MAX];
static int s_n;

static void
s_capture(sb_log_level lvl, const char *line, void *ctx)
{
    (void) lvl;
    (void) ctx;
    if (s_n < S_MAX)
        s_lines[s_n++] = strdup(line);
}

static int
s_setup(void **state)
{
    (void) state;
    s_n = 0;
    sb_log_set_sink(s_capture, NULL);
    sb_log_set_level(SB_LOG_DEBUG);
    sb_log_set_format(SB_LOG_LOGFMT);
    sb_log_set_rate(10);
    sb_log_flush();
    return 0;
}

static int
s_teardown(void **state)
{
    (void) state;
    sb_log_flush();
    for (int i = 0; i < s_n; i++)
        free(s_lines[i]);
    s_n = 0;
    sb_log_set_sink(NULL, NULL);
    sb_log_set_format(SB_LOG_LOGFMT);
    return 0;
}

static void
s_strict(const char *line)
{
    char why[200];
    int k;

    if (sbt_logfmt_check(line, &k, why, sizeof why) != 0)
        fail_msg("not strict logfmt (%s): %s", why, line);
}

/* The text after "ts=... " of the last line. */
static const char *
s_last(void)
{
    const char *p;

    assert_true(s_n > 0);
    p = strstr(s_lines[s_n - 1], " level=");
    assert_non_null(p);
    return p + 1;
}

static void
test_every_value_is_escaped(void **state)
{
    (void) state;
    SB_LOG(SB_LOG_ERR, "t.err", "dir=%s err=%s", "/var/lib/my data", "storage full");
    assert_string_equal(s_last(), "level=err event=t.err dir=\"/var/lib/my data\" err=\"storage full\"");
    SB_LOG(SB_LOG_WARN, "t.quote", "why=\"%s\" n=%d", "a \"quoted\" word\nand a line", 3);
    assert_string_equal(s_last(),
                        "level=warn event=t.quote why=\"a \\\"quoted\\\" word\\nand a line\" n=3");
    SB_LOG(SB_LOG_INFO, "t.bytes", "agg=%s empty=%s eq=%s", "a\xff\x01z", "", "k=v");
    assert_string_equal(s_last(),
                        "level=info event=t.bytes agg=\"a\\u00ff\\u0001z\" empty=\"\" eq=\"k=v\"");
    SB_LOG(SB_LOG_INFO, "t.words", "just some words x=1");
    assert_string_equal(s_last(), "level=info event=t.words msg=\"just some words\" x=1");
    SB_LOG(SB_LOG_INFO, "t.utf8", "name=%s", "caf\xc3\xa9");
    assert_string_equal(s_last(), "level=info event=t.utf8 name=café");
    SB_LOG(SB_LOG_ERR, "t.errno", "path=%s errno=%d", "/x", EACCES);
    assert_string_equal(s_last(),
                        "level=err event=t.errno path=/x errno=13 errstr=\"Permission denied\"");
    for (int i = 0; i < s_n; i++)
        s_strict(s_lines[i]);
}

static void
test_json_lines(void **state)
{
    (void) state;
    sb_log_set_format(SB_LOG_JSON);
    SB_LOG(SB_LOG_ERR, "t.json", "err=%s n=%d ratio=%.2f id=%s", "storage full", 7, 0.5,
           "007");
    const char *l = s_lines[s_n - 1];
    assert_true(strncmp(l, "{\"ts\":\"", 7) == 0);
    assert_non_null(strstr(l, ",\"level\":\"err\",\"event\":\"t.json\",\"err\":\"storage full\","
                              "\"n\":7,\"ratio\":0.50,\"id\":\"007\"}"));
    assert_int_equal(l[strlen(l) - 1], '}');
}

static void
test_warnings_are_rate_limited_per_event(void **state)
{
    (void) state;
    struct timespec t0, t1;
    sb_log_set_rate(5);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 1000; i++) {
        SB_LOG(SB_LOG_WARN, "t.flood", "i=%d", i);
        SB_LOG(SB_LOG_INFO, "t.info", "i=%d", i); /* not limited */
        if (i < 3)
            SB_LOG(SB_LOG_ERR, "t.other", "i=%d", i); /* its own budget */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    sb_log_flush();
    int flood = 0, info = 0, other = 0, summary = 0;
    unsigned long long suppressed = 0;
    for (int i = 0; i < s_n; i++) {
        s_strict(s_lines[i]);
        flood += strstr(s_lines[i], "event=t.flood ") != NULL;
        info += strstr(s_lines[i], "event=t.info ") != NULL;
        other += strstr(s_lines[i], "event=t.other ") != NULL;
        const char *p = strstr(s_lines[i], "event=log.suppressed of=t.flood suppressed=");
        if (p != NULL) {
            summary++;
            suppressed += strtoull(p + strlen("event=log.suppressed of=t.flood suppressed="),
                                   NULL, 10);
        }
    }
    assert_int_equal(info, 1000);
    assert_int_equal(other, 3);
    /* At most 5 in each second the loop touched. */
    assert_true(flood >= 5 && flood <= 5 * (int) (t1.tv_sec - t0.tv_sec + 1));
    assert_true(summary >= 1);
    assert_int_equal(flood + (int) suppressed, 1000);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_every_value_is_escaped, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_json_lines, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_warnings_are_rate_limited_per_event, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
