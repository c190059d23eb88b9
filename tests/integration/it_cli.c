/* The snapbus command's subscribing options against the real broker:
 * --from-seq, --exit-at-end, --resume FILE (a restart misses nothing),
 * --ready-file (publish after it exists and the batch is seen), the
 * warning for a prefix that looks like a pattern, --version, and `stat`
 * against a broker without metrics. Each command runs through the shell
 * with its output captured; waits are for conditions, with generous
 * deadlines. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#ifdef SNAPBUS_CLI_PATH

static sbt_broker s_b;
static char s_out[65536];

/* Runs cmd through sh, output (stdout and stderr) in s_out; its status. */
static int
s_run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    FILE *p;
    size_t n;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    assert_non_null(p = popen(cmd, "r"));
    n = fread(s_out, 1, sizeof s_out - 1, p);
    s_out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int
s_setup(void **state)
{
    const char *extra[] = {"--default-delay-ms", "0", NULL};

    (void) state;
    return sbt_broker_start(&s_b, extra);
}

static int
s_teardown(void **state)
{
    (void) state;
    return sbt_broker_stop(&s_b, 60) == 0 ? 0 : -1;
}

#define CLI SNAPBUS_CLI_PATH

static void
test_from_seq_exit_at_end_and_resume(void **state)
{
    char pos[128];

    (void) state;
    snprintf(pos, sizeof pos, "%s/position", s_b.dir);
    /* --ack published: --exit-at-end waits for what was published when it
     * started, so the batches must be out before it starts. */
    assert_int_equal(s_run("%s pub -e %s -g r/1 --ack published a b c 2>&1", CLI, s_b.ingest), 0);
    /* Everything so far, then exit 0. */
    assert_int_equal(s_run("%s sub -e %s -Q %s --from-seq 1 --exit-at-end "
                           "-T 60000 2>&1", CLI, s_b.pub, s_b.query), 0);
    assert_non_null(strstr(s_out, "aggregate=r/1 seq=1..3"));
    /* --resume with no file: live, caught up at once, position saved. */
    assert_int_equal(s_run("%s sub -e %s -Q %s --resume %s --exit-at-end "
                           "-T 60000 2>&1", CLI, s_b.pub, s_b.query, pos), 0);
    assert_null(strstr(s_out, "batch="));
    assert_int_equal(s_run("cat %s", pos), 0);
    assert_string_equal(s_out, "4\n");
    /* Published while it was stopped: the next start prints only that. */
    assert_int_equal(s_run("%s pub -e %s -g r/1 --ack published d e 2>&1", CLI, s_b.ingest), 0);
    assert_int_equal(s_run("%s sub -e %s -Q %s --resume %s --exit-at-end "
                           "-T 60000 2>&1", CLI, s_b.pub, s_b.query, pos), 0);
    assert_non_null(strstr(s_out, "aggregate=r/1 seq=4..5"));
    assert_null(strstr(s_out, "seq=1..3"));
    /* A bad position file is a usage error, not a silent live start. */
    assert_int_equal(s_run("echo seven > %s; %s sub -e %s -Q %s --resume %s "
                           "--exit-at-end 2>&1", pos, CLI, s_b.pub, s_b.query,
                           pos), 2);
    assert_non_null(strstr(s_out, "expected one decimal seq"));
}

static void
test_ready_file_then_publish_is_seen(void **state)
{
    char ready[128], out[128];

    (void) state;
    snprintf(ready, sizeof ready, "%s/sub.ready", s_b.dir);
    snprintf(out, sizeof out, "%s/sub.out", s_b.dir);
    /* The subscriber in the background; publish once it said hello. */
    assert_int_equal(
        s_run("%s sub -e %s -Q %s -p rf/ -n 1 -T 60000 --ready-file %s "
              ">%s 2>&1 & sub=$!; "
              "i=0; while [ ! -f %s ] && [ $i -lt 1200 ]; do sleep 0.05; "
              "i=$((i+1)); done; "
              "%s pub -e %s -g rf/1 hello >/dev/null && wait $sub",
              CLI, s_b.pub, s_b.query, ready, out, ready, CLI, s_b.ingest),
        0);
    assert_int_equal(s_run("cat %s", out), 0);
    assert_non_null(strstr(s_out, "aggregate=rf/1"));
    assert_non_null(strstr(s_out, "payload=hello"));
    assert_int_equal(s_run("cat %s", ready), 0);
    assert_non_null(strstr(s_out, "pub=tcp://"));
}

static void
test_messages_that_say_what_to_do(void **state)
{
    (void) state;
    /* A prefix that looks like a glob matches only itself: warned. */
    assert_int_equal(s_run("%s sub -e %s -Q %s -p 'r/*' --exit-at-end "
                           "-T 60000 2>&1", CLI, s_b.pub, s_b.query), 0);
    assert_non_null(strstr(s_out, "warning: --prefix 'r/*' is a plain prefix"));
    assert_int_equal(s_run("%s --version", CLI), 0);
    assert_non_null(strstr(s_out, "(protocol 1)"));
    /* This broker runs without metrics: stat says how to turn them on. */
    assert_int_equal(s_run("%s stat --url http://127.0.0.1:1 -T 2000 2>&1",
                           CLI), 3);
    assert_non_null(strstr(s_out, "off by default"));
    assert_non_null(strstr(s_out, "--metrics"));
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_from_seq_exit_at_end_and_resume),
        cmocka_unit_test(test_ready_file_then_publish_is_seen),
        cmocka_unit_test(test_messages_that_say_what_to_do),
    };
    return cmocka_run_group_tests(t, s_setup, s_teardown);
}

#else

int
main(void)
{
    printf("1..0 # SKIP the snapbus CLI is not built\n");
    return 0;
}

#endif
