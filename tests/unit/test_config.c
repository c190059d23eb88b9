/* Configuration: file, then environment, then flags; every bad value is
 * refused with the key, the value and what is allowed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_config.h"

static char path[64];

static void
s_write(const char *text)
{
    FILE *f;
    strcpy(path, "/tmp/sbcfg.XXXXXX");
    int fd = mkstemp(path);
    f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
}

static void
test_precedence(void **state)
{
    sb_config c;
    char why[512];
    char *env[] = {"SNAPBUS_BROKER_HWM=200", "SNAPBUS_BATCHING_MAX_BATCH_EVENTS=77",
                   "PATH=/bin", NULL};
    char *argv[] = {"snapbusd", "--hwm", "300", "--delay", "e3/*=250",
                    "--set", "limits.max_name_bytes=100", "--retain-bytes", "2M", NULL};

    s_write("[broker]\nhwm = 100\nqueue = 8\n[batching]\ndefault_delay_ms = 40\n"
            "[delays]\ne3/* = 500\nexact/name = 5\n");
    sb_config_defaults(&c);
    assert_int_equal(c.hwm, 10000);
    assert_int_equal(sb_config_load_file(&c, path, why, sizeof why), SB_OK);
    assert_int_equal(c.hwm, 100);
    assert_int_equal(c.queue, 8);
    assert_int_equal(c.router.default_delay_ms, 40);
    assert_int_equal(c.router.nrules, 2);
    assert_int_equal(sb_config_load_env(&c, env, why, sizeof why), SB_OK);
    assert_int_equal(c.hwm, 200);
    assert_int_equal(c.router.max_batch_events, 77);
    assert_int_equal(sb_config_load_args(&c, 9, argv, why, sizeof why), SB_OK);
    assert_int_equal(c.hwm, 300);
    assert_int_equal(c.limits.max_name_bytes, 100);
    assert_int_equal(c.retain_bytes, 2u << 20);
    /* The flag replaced the file's rule for the same pattern. */
    assert_int_equal(c.router.nrules, 2);
    assert_int_equal(sb_router_config_delay(&c.router, "e3/42", 5), 250);
    assert_int_equal(sb_router_config_delay(&c.router, "exact/name", 10), 5);
    assert_int_equal(sb_router_config_delay(&c.router, "other", 5), 40);
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_OK);
    unlink(path);
}

/* The memory ring and the on-disk log's bound have names apart; the old
 * spellings of the ring's still work, and are noted for a warning. */
static void
test_ring_and_log_retention_apart(void **state)
{
    sb_config c;
    char why[512];
    char *env[] = {"SNAPBUS_RETENTION_BATCHES=7", NULL};
    char *argv[] = {"snapbusd", "--ring-bytes", "3M", "--log-retain-bytes",
                    "10G", "--log-retain-age-s", "60", NULL};
    char *old[] = {"snapbusd", "--retain-bytes", "5M", NULL};

    (void) state;
    sb_config_defaults(&c);
    assert_int_equal(sb_config_load_args(&c, 7, argv, why, sizeof why), SB_OK);
    assert_int_equal(c.retain_bytes, 3u << 20);
    assert_int_equal(c.storage.retain_bytes, 10ull << 30);
    assert_int_equal(c.storage.retain_age_s, 60);
    assert_string_equal(c.deprecated, "");
    assert_int_equal(sb_config_load_args(&c, 3, old, why, sizeof why), SB_OK);
    assert_int_equal(c.retain_bytes, 5u << 20);
    assert_int_equal(c.storage.retain_bytes, 10ull << 30); /* untouched */
    assert_string_equal(c.deprecated, "--retain-bytes");
    assert_int_equal(sb_config_load_env(&c, env, why, sizeof why), SB_OK);
    assert_int_equal(c.retain_batches, 7);
    assert_int_equal(sb_config_load_string(&c, "[retention]\nring_batches = 9\n"
                                               "bytes = 1M\n", why, sizeof why),
                     SB_OK);
    assert_int_equal(c.retain_batches, 9);
    assert_int_equal(c.retain_bytes, 1u << 20);
    assert_string_equal(c.deprecated,
                        "--retain-bytes retention.batches retention.bytes");
}

static void
s_refused(const char *sec, const char *key, const char *val, const char *expect)
{
    sb_config c;
    char why[512];

    sb_config_defaults(&c);
    assert_int_equal(sb_config_set(&c, sec, key, val, why, sizeof why), SB_EINVAL);
    if (strstr(why, expect) == NULL || strstr(why, key) == NULL)
        fail_msg("refusal \"%s\" should name %s and say %s", why, key, expect);
}

static void
test_refusals(void **state)
{
    s_refused("broker", "hwm", "0", "from 1 to");
    s_refused("broker", "hwm", "-5", "whole number");
    s_refused("broker", "hwm", "12abc", "whole number");
    s_refused("broker", "hwm", "", "whole number");
    s_refused("broker", "hwm", "99999999999999999999999", "whole number");
    s_refused("broker", "queue", "2000000", "from 1 to 1000000");
    s_refused("broker", "log_level", "loud", "one of");
    s_refused("broker", "nope", "1", "no such key");
    s_refused("limits", "max_name_bytes", "256", "from 1 to 255");
    s_refused("delays", "e3/*", "soon", "delay in ms");
    s_refused("delays", "e3/*", "86400001", "delay in ms");

    sb_config c;
    char why[512];
    char *bad_env[] = {"SNAPBUS_BROKER_HWMM=1", NULL};
    sb_config_defaults(&c);
    assert_int_equal(sb_config_load_env(&c, bad_env, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "SNAPBUS_BROKER_HWMM"));

    char *argv1[] = {"snapbusd", "--frobnicate", "1", NULL};
    assert_int_equal(sb_config_load_args(&c, 3, argv1, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "--frobnicate"));
    char *argv2[] = {"snapbusd", "--hwm", NULL};
    assert_int_equal(sb_config_load_args(&c, 2, argv2, why, sizeof why), SB_EINVAL);
    char *argv3[] = {"snapbusd", "--delay", "nodelim", NULL};
    assert_int_equal(sb_config_load_args(&c, 3, argv3, why, sizeof why), SB_EINVAL);

    s_write("[broker]\nhwm = 100\nthis is not ini\n");
    assert_int_equal(sb_config_load_file(&c, path, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "line 3"));
    unlink(path);
    assert_int_equal(sb_config_load_file(&c, "/nonexistent/x.ini", why, sizeof why), SB_EINVAL);

    sb_config_defaults(&c);
    c.limits.max_payload_bytes = c.limits.max_message_bytes + 1;
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_EINVAL);
}

/* broker.metrics: off by default, file < env < flag, and an address that
 * cannot be bound as written is refused at start, naming the key. */
static void
test_metrics_address(void **state)
{
    sb_config c;
    char why[512];
    char *env[] = {"SNAPBUS_BROKER_METRICS=127.0.0.1:9200", NULL};
    char *argv[] = {"snapbusd", "--metrics", "0.0.0.0:0", NULL};

    sb_config_defaults(&c);
    assert_string_equal(c.metrics, "");
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_OK);
    s_write("[broker]\nmetrics = 127.0.0.1:7704\n");
    assert_int_equal(sb_config_load_file(&c, path, why, sizeof why), SB_OK);
    unlink(path);
    assert_string_equal(c.metrics, "127.0.0.1:7704");
    assert_int_equal(sb_config_load_env(&c, env, why, sizeof why), SB_OK);
    assert_string_equal(c.metrics, "127.0.0.1:9200");
    assert_int_equal(sb_config_load_args(&c, 3, argv, why, sizeof why), SB_OK);
    assert_string_equal(c.metrics, "0.0.0.0:0");
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_OK);

    const char *bad[] = {"7704", "localhost:7704", "127.0.0.1:99999",
                         "127.0.0.1:x", "[::1:7704"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(sb_config_set(&c, "broker", "metrics", bad[i], why, sizeof why), SB_OK);
        assert_int_equal(sb_config_check(&c, why, sizeof why), SB_EINVAL);
        if (strstr(why, "broker.metrics") == NULL || strstr(why, bad[i]) == NULL)
            fail_msg("refusal \"%s\" should name broker.metrics and %s", why, bad[i]);
    }
    /* Empty turns it off again. */
    assert_int_equal(sb_config_set(&c, "broker", "metrics", "", why, sizeof why), SB_OK);
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_OK);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_ring_and_log_retention_apart),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_metrics_address),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
