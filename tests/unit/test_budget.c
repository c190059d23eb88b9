/* The memory budget's plan: the defaults fit, the terms add up to the
 * budget, a budget too small is refused with every term named, and the
 * sizes derived from it (ZeroMQ HWMs, the largest frame) follow it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "sb_budget.h"
#include "sb_config.h"

static uint64_t
s_sum(const sb_budget_plan *p)
{
    uint64_t v, sum = 0;

    for (size_t i = 0; sb_budget_term(p, i, &v, NULL) != NULL; i++)
        sum += v;
    return sum + p->requests + p->replies;
}

static void
test_defaults_fit_and_add_up(void **state)
{
    sb_config c;
    sb_budget_plan p;
    char why[1024];

    (void) state;
    sb_config_defaults(&c);
    assert_int_equal(c.memory_budget, 256u << 20);
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_OK);
    assert_int_equal(sb_budget_plan_make(&p, &c, why, sizeof why), SB_OK);
    assert_true(s_sum(&p) <= p.budget);
    assert_true(p.budget - s_sum(&p) < 64); /* only rounding is left over */
    assert_true(p.requests >= 2 * p.req_max);
    assert_int_equal(p.ring, c.retain_bytes);
    /* One request's frame fits; ZeroMQ's cut is just past the limit, not
     * twice it. */
    assert_true(p.ingest_maxmsgsize > (int64_t) c.limits.max_message_bytes);
    assert_true(p.ingest_maxmsgsize <=
                (int64_t) c.limits.max_message_bytes + (64 << 10));
    assert_true(p.ingest_rcvhwm >= 4 && p.ingest_rcvhwm <= (int) c.hwm);
    assert_true((uint64_t) p.ingest_rcvhwm * (uint64_t) p.ingest_maxmsgsize <= p.zmq);
}

static void
test_too_small_is_refused_naming_every_term(void **state)
{
    sb_config c;
    sb_budget_plan p;
    char why[2048];

    (void) state;
    sb_config_defaults(&c);
    assert_int_equal(sb_config_set(&c, "broker", "memory_budget", "64M", why,
                                   sizeof why), SB_OK);
    assert_int_equal(c.memory_budget, 64u << 20);
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "broker.memory_budget = 67108864"));
    static const char *const terms[] = {"ring (retention.bytes) 64.0 MiB",
                                        "outgoing", "fetch", "dedup",
                                        "log_buffer", "zmq", "requests_over",
                                        "for requests in flight"};
    for (size_t i = 0; i < sizeof terms / sizeof terms[0]; i++)
        assert_non_null(strstr(why, terms[i]));
    /* Smaller parts make it fit. */
    assert_int_equal(sb_config_set(&c, "limits", "max_message_bytes", "256k",
                                   why, sizeof why), SB_OK);
    assert_int_equal(sb_config_set(&c, "limits", "max_events_per_request",
                                   "1000", why, sizeof why), SB_OK);
    assert_int_equal(sb_config_set(&c, "limits", "max_payload_bytes", "64k",
                                   why, sizeof why), SB_OK);
    assert_int_equal(sb_config_set(&c, "retention", "bytes", "16M", why,
                                   sizeof why), SB_OK);
    assert_int_equal(sb_config_set(&c, "retention", "fetch_max_bytes", "1M",
                                   why, sizeof why), SB_OK);
    assert_int_equal(sb_config_check(&c, why, sizeof why), SB_OK);
    assert_int_equal(sb_budget_plan_make(&p, &c, why, sizeof why), SB_OK);
    assert_true(s_sum(&p) <= p.budget);
    assert_true(p.requests >= 16u << 20);
}

static void
test_below_the_least_budget_is_refused(void **state)
{
    sb_config c;
    char why[512];

    (void) state;
    sb_config_defaults(&c);
    assert_int_equal(sb_config_set(&c, "broker", "memory_budget", "1M", why,
                                   sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "broker.memory_budget"));
    assert_int_equal(sb_config_set(&c, "broker", "memory_budget", "1G", why,
                                   sizeof why), SB_OK);
    assert_int_equal(c.memory_budget, 1ull << 30);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_defaults_fit_and_add_up),
        cmocka_unit_test(test_too_small_is_refused_naming_every_term),
        cmocka_unit_test(test_below_the_least_budget_is_refused),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
