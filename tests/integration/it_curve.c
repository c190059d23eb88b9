/* CURVE against the real broker on loopback (docs/SECURITY.md): allowed
 * keys publish and subscribe end to end; a client with no key, a wrong
 * server key or a key on no list gets nothing in (nothing sequenced) and
 * nothing out (no batch), and the refusal counters rise; the lists are
 * per role; SIGHUP applies an edited list to new connections and keeps the
 * old lists when the new file is bad; the broker refuses to start on a bad
 * list or a plaintext bind beyond loopback; `snapbus keygen` writes its
 * files safely.
 *
 * Every negative check runs next to a positive control through the same
 * broker at the same time (an allowed publisher is acked, an allowed
 * subscriber receives), so "nothing arrived" cannot pass because nothing
 * was sent. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include <snapbus/snapbus.h>

typedef struct {
    char pub[41], sec[41];
} s_pair;

typedef struct {
    char dir[64];
    char secret_file[128], pubs[128], subs[128], queries[128];
    s_pair server, publisher, subscriber, querier, stranger, publisher2;
    sbt_broker b;
    int running;
} fixture;

static void
s_pair_new(s_pair *p)
{
    assert_int_equal(zmq_curve_keypair(p->pub, p->sec), 0);
}

static void
s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* An allowlist of the given public keys, with the comments and blank
 * lines a person would write. */
static void
s_write_list(const char *path, const s_pair *const *keys, int n)
{
    char text[4096];
    size_t len = (size_t) snprintf(text, sizeof text, "# snapbus allowlist\n\n");

    for (int i = 0; i < n; i++)
        len += (size_t) snprintf(text + len, sizeof text - len, "%s  # key %d\n",
                                 keys[i]->pub, i);
    s_write(path, text);
}

static int
s_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    char text[256];

    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sbt-curve.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    s_pair_new(&f->server);
    s_pair_new(&f->publisher);
    s_pair_new(&f->publisher2);
    s_pair_new(&f->subscriber);
    s_pair_new(&f->querier);
    s_pair_new(&f->stranger);
    snprintf(f->secret_file, sizeof f->secret_file, "%s/server.key", f->dir);
    snprintf(f->pubs, sizeof f->pubs, "%s/publishers.keys", f->dir);
    snprintf(f->subs, sizeof f->subs, "%s/subscribers.keys", f->dir);
    snprintf(f->queries, sizeof f->queries, "%s/queries.keys", f->dir);
    snprintf(text, sizeof text, "# the broker's secret\n%s\n", f->server.sec);
    s_write(f->secret_file, text);
    const s_pair *pubs[] = {&f->publisher, &f->publisher2};
    const s_pair *subs[] = {&f->subscriber};
    const s_pair *qs[] = {&f->querier};
    s_write_list(f->pubs, pubs, 2);
    s_write_list(f->subs, subs, 1);
    s_write_list(f->queries, qs, 1);
    *state = f;
    return 0;
}

static int
s_teardown(void **state)
{
    fixture *f = *state;
    char cmd[128];
    int rc = 0;

    /* Every broker must drain and exit 0, also after refusing clients
     * (under ASan that includes no leak at exit). */
    if (f->running && (rc = sbt_broker_stop(&f->b, 10)) != 0)
        fprintf(stderr, "snapbusd exit status %d; log: %s/broker.log\n", rc,
                f->b.dir);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void
s_start(fixture *f)
{
    const char *extra[] = {"--secret-key-file", f->secret_file,
                           "--publisher-keys", f->pubs,
                           "--subscriber-keys", f->subs,
                           "--query-keys", f->queries,
                           "--metrics", "127.0.0.1:0",
                           "--default-delay-ms", "0", NULL};
    assert_int_equal(sbt_broker_start(&f->b, extra), 0);
    f->running = 1;
}

static sb_curve_opts
s_curve(const s_pair *server, const s_pair *client)
{
    sb_curve_opts c = {server->pub, client->pub, client->sec};
    return c;
}

static double
s_metric(fixture *f, const char *sample)
{
    static char body[1 << 18];
    char want[256];
    const char *p;

    assert_int_equal(sbt_http_get(f->b.metrics, "/metrics", body, sizeof body, 5000), 200);
    snprintf(want, sizeof want, "\n%s ", sample);
    if ((p = strstr(body, want)) == NULL)
        fail_msg("no sample \"%s\" in the scrape", sample);
    return strtod(p + strlen(want), NULL);
}

static double
s_refused(fixture *f, const char *role, const char *reason)
{
    char s[128];
    snprintf(s, sizeof s, "snapbus_auth_refused_total{role=\"%s\",reason=\"%s\"}",
             role, reason);
    return s_metric(f, s);
}

/* Waits (bounded, so a broken build cannot hang the suite) until the
 * counter passes `above`. */
static void
s_wait_refused_above(fixture *f, const char *role, const char *reason,
                     double above)
{
    for (int i = 0; i < 500; i++) {
        if (s_refused(f, role, reason) > above)
            return;
        usleep(10000);
    }
    fail_msg("auth refusals %s/%s did not rise above %.0f", role, reason, above);
}

typedef struct {
    int acked, refused;
} s_acks;

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    s_acks *k = ctx;
    if (a->err == SB_OK)
        k->acked++;
    else
        k->refused++;
}

/* Publishes n events on aggregate agg with curve (NULL: plain) and waits
 * up to wait_ms for their acks; returns how many were acked. */
static int
s_publish(fixture *f, const sb_curve_opts *curve, const char *agg, int n,
          int wait_ms)
{
    sb_publisher_opts o;
    sb_publisher *p;
    s_acks k = {0, 0};

    sb_publisher_opts_defaults(&o);
    o.endpoint = f->b.ingest;
    o.ack = SB_ACK_SEQUENCED;
    o.timeout_ms = wait_ms;
    o.reply_timeout_ms = wait_ms;
    if (curve != NULL)
        o.curve = *curve;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, &k);
    for (int i = 0; i < n; i++) {
        sb_pub_event ev = {.aggregate = agg, .type = "t", .payload = "x",
                           .payload_len = 1};
        assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
    }
    sb_publisher_wait_all(p, wait_ms);
    sb_publisher_destroy(&p);
    return k.acked;
}

static sb_subscriber *
s_subscribe(fixture *f, const sb_curve_opts *curve, int with_query)
{
    sb_subscriber_opts o;
    sb_subscriber *s;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = f->b.pub;
    o.query_endpoint = with_query ? f->b.query : NULL;
    o.probe_ms = 0;
    if (curve != NULL)
        o.curve = *curve;
    assert_int_equal(sb_subscriber_new(&s, &o), SB_OK);
    assert_int_equal(sb_subscriber_subscribe(s, ""), SB_OK);
    return s;
}

/* Events of aggregate agg received within wait_ms (whole batches). */
static int
s_receive(sb_subscriber *s, const char *agg, int want, int wait_ms)
{
    int got = 0;
    uint64_t end = sbt_now_ms() + (uint64_t) wait_ms;

    while (got < want && sbt_now_ms() < end) {
        sb_snapshot *b;
        if (sb_subscriber_recv(s, &b, 50) != SB_OK)
            continue;
        if (strcmp(sb_snapshot_aggregate(b), agg) == 0)
            got += (int) sb_snapshot_count(b);
        sb_snapshot_destroy(&b);
    }
    return got;
}

/* A SUB socket's subscription travels after its handshake: give an
 * admitted one time to arrive before anything is published. Measured by
 * a probe batch rather than a sleep. */
static void
s_settle(fixture *f, sb_subscriber *control, const char *agg)
{
    sb_curve_opts pc = s_curve(&f->server, &f->publisher);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(s_publish(f, &pc, agg, 1, 5000), 1);
        if (s_receive(control, agg, 1, 200) == 1)
            return;
    }
    fail_msg("the control subscriber never received");
}

static void
s_drop_batch(sb_snapshot *b, void *ctx)
{
    (*(int *) ctx)++;
    sb_snapshot_destroy(&b);
}

/* One fetch from seq 1 with curve; its result code, batches into *n. */
static sb_err
s_fetch(fixture *f, const sb_curve_opts *curve, int *n)
{
    sb_fetch_opts o;

    sb_fetch_opts_defaults(&o);
    o.from_seq = 1;
    if (curve != NULL)
        o.curve = *curve;
    *n = 0;
    return sb_fetch(f->b.query, &o, s_drop_batch, n, NULL, 1500);
}

/* ---- tests --------------------------------------------------------- */

static void
test_allowed_keys_publish_subscribe_and_fetch(void **state)
{
    fixture *f = *state;
    sb_curve_opts pc = s_curve(&f->server, &f->publisher);
    sb_curve_opts sc = s_curve(&f->server, &f->subscriber);
    sb_curve_opts qc = s_curve(&f->server, &f->querier);
    int n;

    s_start(f);
    /* With the query socket: hello over CURVE with the subscriber's key. */
    sb_subscriber *s = s_subscribe(f, &sc, 1);
    assert_int_equal(sb_subscriber_start(s, 5000), SB_OK);
    s_settle(f, s, "warmup");
    assert_int_equal(s_publish(f, &pc, "e2e/1", 200, 10000), 200);
    assert_int_equal(s_receive(s, "e2e/1", 200, 10000), 200);
    sb_subscriber_destroy(&s);

    /* Fetch: the subscriber's key and the query-only key are admitted. */
    assert_int_equal(s_fetch(f, &sc, &n), SB_OK);
    assert_true(n >= 1);
    assert_int_equal(s_fetch(f, &qc, &n), SB_OK);
    assert_true(n >= 1);
    assert_int_equal(s_refused(f, "query", "key"), 0);
    assert_true(s_metric(f, "snapbus_auth_admitted_total{role=\"publish\"}") >= 1);
    assert_true(s_metric(f, "snapbus_auth_admitted_total{role=\"subscribe\"}") >= 1);
    assert_true(s_metric(f, "snapbus_auth_admitted_total{role=\"query\"}") >= 3);
    assert_int_equal(s_metric(f, "snapbus_auth_keys{role=\"publish\"}"), 2);
    assert_int_equal(sbt_broker_stop(&f->b, 10), 0);
    f->running = 0;
}

/* One refused client kind: its publisher gets no ack and sequences
 * nothing, its subscriber receives nothing while an allowed subscriber
 * does, and the counters named rise. */
static void
s_check_refused(fixture *f, const sb_curve_opts *bad_pub,
                const sb_curve_opts *bad_sub, const char *reason)
{
    sb_curve_opts pc = s_curve(&f->server, &f->publisher);
    sb_curve_opts sc = s_curve(&f->server, &f->subscriber);
    double pub0 = s_refused(f, "publish", reason);
    double sub0 = s_refused(f, "subscribe", reason);
    double seq0 = s_metric(f, "snapbus_last_seq");

    /* Nothing in. */
    assert_int_equal(s_publish(f, bad_pub, "bad/in", 20, 1500), 0);
    assert_true(s_metric(f, "snapbus_last_seq") == seq0);
    s_wait_refused_above(f, "publish", reason, pub0);

    /* Nothing out, while the same batches reach an allowed subscriber. */
    sb_subscriber *good = s_subscribe(f, &sc, 0);
    sb_subscriber *bad = s_subscribe(f, bad_sub, 0);
    s_settle(f, good, "settle");
    s_wait_refused_above(f, "subscribe", reason, sub0);
    assert_int_equal(s_publish(f, &pc, "bad/out", 50, 5000), 50);
    assert_int_equal(s_receive(good, "bad/out", 50, 5000), 50);
    assert_int_equal(s_receive(bad, "bad/out", 1, 1000), 0);
    sb_subscriber_destroy(&bad);
    sb_subscriber_destroy(&good);
}

static void
test_no_key_gets_nothing_in_or_out(void **state)
{
    fixture *f = *state;

    s_start(f);
    s_check_refused(f, NULL, NULL, "handshake");
}

static void
test_wrong_server_key_gets_nothing_in_or_out(void **state)
{
    fixture *f = *state;
    /* Keys on the lists, but the server key of another broker. */
    sb_curve_opts bp = s_curve(&f->stranger, &f->publisher);
    sb_curve_opts bs = s_curve(&f->stranger, &f->subscriber);

    s_start(f);
    s_check_refused(f, &bp, &bs, "handshake");
}

static void
test_key_not_on_list_gets_nothing_in_or_out(void **state)
{
    fixture *f = *state;
    sb_curve_opts bad = s_curve(&f->server, &f->stranger);
    char log[128], line[1024];
    int logged = 0;

    s_start(f);
    s_check_refused(f, &bad, &bad, "key");
    /* The offending public key is logged; its secret never is. */
    snprintf(log, sizeof log, "%s/broker.log", f->b.dir);
    FILE *lf = fopen(log, "r");
    assert_non_null(lf);
    while (fgets(line, sizeof line, lf) != NULL) {
        assert_null(strstr(line, f->stranger.sec));
        assert_null(strstr(line, f->server.sec));
        if (strstr(line, "event=auth.refused") != NULL &&
            strstr(line, f->stranger.pub) != NULL)
            logged++;
    }
    fclose(lf);
    assert_true(logged >= 1);
}

static void
test_roles_are_separate(void **state)
{
    fixture *f = *state;
    sb_curve_opts as_pub = s_curve(&f->server, &f->subscriber);
    sb_curve_opts as_sub = s_curve(&f->server, &f->publisher);
    sb_curve_opts qc = s_curve(&f->server, &f->querier);
    int n;

    s_start(f);
    /* A subscriber's key cannot publish, a publisher's cannot subscribe. */
    s_check_refused(f, &as_pub, &as_sub, "key");
    /* Neither can a query-only key, and a publisher's key cannot fetch. */
    double pub0 = s_refused(f, "publish", "key");
    assert_int_equal(s_publish(f, &qc, "bad/q", 5, 1500), 0);
    s_wait_refused_above(f, "publish", "key", pub0);
    double q0 = s_refused(f, "query", "key");
    assert_int_equal(s_fetch(f, &as_sub, &n), SB_ETIMEDOUT);
    assert_int_equal(n, 0);
    s_wait_refused_above(f, "query", "key", q0);
}

static void
test_sighup_applies_edited_list_to_new_connections(void **state)
{
    fixture *f = *state;
    sb_curve_opts p1 = s_curve(&f->server, &f->publisher);
    sb_curve_opts p2 = s_curve(&f->server, &f->publisher2);
    sb_curve_opts st = s_curve(&f->server, &f->stranger);

    s_start(f);
    assert_int_equal(s_publish(f, &p1, "hup/1", 10, 5000), 10);
    assert_int_equal(s_publish(f, &st, "hup/x", 1, 1000), 0);

    /* Remove publisher, add stranger. */
    const s_pair *now[] = {&f->publisher2, &f->stranger};
    s_write_list(f->pubs, now, 2);
    assert_int_equal(kill(f->b.pid, SIGHUP), 0);
    for (int i = 0; i < 500 && s_metric(f, "snapbus_auth_reloads_total") < 1; i++)
        usleep(10000);
    assert_int_equal(s_metric(f, "snapbus_auth_reloads_total"), 1);

    double seq0 = s_metric(f, "snapbus_last_seq");
    double k0 = s_refused(f, "publish", "key");
    assert_int_equal(s_publish(f, &p1, "hup/2", 10, 1500), 0);
    s_wait_refused_above(f, "publish", "key", k0);
    assert_true(s_metric(f, "snapbus_last_seq") == seq0);
    assert_int_equal(s_publish(f, &st, "hup/3", 10, 5000), 10);
    assert_int_equal(s_publish(f, &p2, "hup/4", 10, 5000), 10);

    /* A bad file on reload: the old lists stay, and say so. */
    s_write(f->pubs, "not a key\n");
    assert_int_equal(kill(f->b.pid, SIGHUP), 0);
    for (int i = 0; i < 500 && s_metric(f, "snapbus_auth_reload_failures_total") < 1; i++)
        usleep(10000);
    assert_int_equal(s_metric(f, "snapbus_auth_reload_failures_total"), 1);
    assert_int_equal(s_publish(f, &p2, "hup/5", 10, 5000), 10);
    assert_int_equal(s_metric(f, "snapbus_auth_keys{role=\"publish\"}"), 2);
    assert_int_equal(sbt_broker_stop(&f->b, 10), 0);
    f->running = 0;
}

/* snapbusd's exit status and first stderr line for these flags. */
static int
s_run_broker(const char *flags, char *out, size_t n)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "env -u SNAPBUS_SERVER_KEY %s %s 2>&1", SNAPBUSD_PATH, flags);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    out[0] = '\0';
    if (fgets(out, (int) n, p) == NULL)
        out[0] = '\0';
    char sink[512];
    while (fgets(sink, sizeof sink, p) != NULL)
        ;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void
test_start_refuses_bad_lists_and_open_plaintext(void **state)
{
    fixture *f = *state;
    char flags[1024], out[1024];

    s_write(f->subs, "# two good lines, then a bad one\n\n"
                     "0123456789012345678901234567890123456789x\n");
    snprintf(flags, sizeof flags,
             "--data-dir %s/d --secret-key-file %s --publisher-keys %s "
             "--subscriber-keys %s --check-config",
             f->dir, f->secret_file, f->pubs, f->subs);
    assert_int_equal(s_run_broker(flags, out, sizeof out), 2);
    char where[160];
    snprintf(where, sizeof where, "%s:3:", f->subs);
    assert_non_null(strstr(out, where));

    /* A list without the broker's key, and the broker's key without lists. */
    snprintf(flags, sizeof flags, "--data-dir %s/d --publisher-keys %s --check-config",
             f->dir, f->pubs);
    assert_int_equal(s_run_broker(flags, out, sizeof out), 2);
    snprintf(flags, sizeof flags, "--data-dir %s/d --secret-key-file %s --check-config",
             f->dir, f->secret_file);
    assert_int_equal(s_run_broker(flags, out, sizeof out), 2);

    /* Plaintext beyond loopback: refused unless --insecure. */
    snprintf(flags, sizeof flags, "--data-dir %s/d --ingest tcp://0.0.0.0:0 --check-config",
             f->dir);
    assert_int_equal(s_run_broker(flags, out, sizeof out), 2);
    assert_non_null(strstr(out, "--insecure"));
    snprintf(flags, sizeof flags,
             "--data-dir %s/d --pub tcp://0.0.0.0:0 --insecure --check-config", f->dir);
    assert_int_equal(s_run_broker(flags, out, sizeof out), 0);
    snprintf(flags, sizeof flags, "--data-dir %s/d --check-config", f->dir);
    assert_int_equal(s_run_broker(flags, out, sizeof out), 0);
}

static void
test_keygen_writes_private_secret_once(void **state)
{
    fixture *f = *state;
    char cmd[512], path[256], z85[41], why[256];
    struct stat st;

    snprintf(cmd, sizeof cmd, "cd %s && umask 022 && %s keygen alice >/dev/null",
             f->dir, SNAPBUS_CLI_PATH);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/alice.key", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(sb_curve_key_load(path, z85, why, sizeof why), SB_OK);
    char pub[41];
    assert_int_equal(zmq_curve_public(pub, z85), 0);
    snprintf(path, sizeof path, "%s/alice.pub", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    char pz[41];
    assert_int_equal(sb_curve_key_load(path, pz, why, sizeof why), SB_OK);
    assert_string_equal(pz, pub);
    /* Never overwritten. */
    snprintf(cmd, sizeof cmd, "cd %s && %s keygen alice 2>/dev/null", f->dir,
             SNAPBUS_CLI_PATH);
    assert_int_not_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/alice.key", f->dir);
    char again[41];
    assert_int_equal(sb_curve_key_load(path, again, why, sizeof why), SB_OK);
    assert_string_equal(again, z85);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_allowed_keys_publish_subscribe_and_fetch, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_no_key_gets_nothing_in_or_out, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_server_key_gets_nothing_in_or_out, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_key_not_on_list_gets_nothing_in_or_out, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_roles_are_separate, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sighup_applies_edited_list_to_new_connections, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_start_refuses_bad_lists_and_open_plaintext, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_keygen_writes_private_secret_once, s_setup, s_teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(t, NULL, NULL);
}
