/* Metrics: the text rendered from known counters, the listen-address
 * parser, and the HTTP endpoints' answers through the states a broker goes
 * through (starting, ready, draining). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "sb_metrics.h"

static void
s_has(const char *text, const char *line)
{
    if (strstr(text, line) == NULL)
        fail_msg("missing \"%s\" in:\n%s", line, text);
}

static void
test_render_from_known_counters(void **state)
{
    static sb_ingest_stats in;
    static sb_fanout_stats fo;
    static sb_dedup_stats dd;
    sb_link *a, *b;
    sb_metrics_sources src = {0};
    atomic_uint_fast64_t last_seq = 42;
    char *text;
    size_t len;
    int item = 7;

    atomic_store(&in.events_in, 40);
    atomic_store(&in.events_refused, 3);
    atomic_store(&in.refused_by[2], 2); /* too_large */
    atomic_store(&in.refused_by[1], 1); /* invalid */
    atomic_store(&fo.batches, 4);
    atomic_store(&fo.events, 40);
    atomic_store(&fo.size_buckets[0], 1);  /* a batch of 1 */
    atomic_store(&fo.size_buckets[3], 2);  /* two of 6..10 */
    atomic_store(&fo.size_buckets[SB_FANOUT_SIZE_BUCKETS - 1], 1); /* > 10000 */
    assert_int_equal(sb_link_new(&a, "a->b", sizeof item, 5), SB_OK);
    assert_int_equal(sb_link_new(&b, "quote\"d", sizeof item, 9), SB_OK);
    assert_int_equal(sb_link_send(a, &item), SB_OK);
    src.ingest = &in;
    src.fanout = &fo;
    src.last_seq = &last_seq;
    src.links[0] = a;
    src.links[1] = b;
    src.nlinks = 2;
    atomic_store(&dd.dup_producer, 5);
    atomic_store(&dd.dup_event_id, 6);
    atomic_store(&dd.beyond, 7);
    atomic_store(&dd.prod_evicted, 8);
    atomic_store(&dd.mem_bytes, 4096);
    src.dedup = &dd;

    assert_int_equal(sb_metrics_render(&src, SB_METRICS_READY, "9.9.9", &text, &len), SB_OK);
    assert_int_equal(strlen(text), len);
    s_has(text, "snapbus_build_info{version=\"9.9.9\",protocol=\"1\"} 1\n");
    s_has(text, "snapbus_ready 1\n");
    s_has(text, "snapbus_draining 0\n");
    s_has(text, "# TYPE snapbus_events_accepted_total counter\n");
    s_has(text, "snapbus_events_accepted_total 40\n");
    s_has(text, "snapbus_events_refused_total 3\n");
    s_has(text, "snapbus_refusals_total{reason=\"too_large\"} 2\n");
    s_has(text, "snapbus_refusals_total{reason=\"invalid\"} 1\n");
    s_has(text, "snapbus_last_seq 42\n");
    s_has(text, "snapbus_dedup_duplicates_total{by=\"producer_seq\"} 5\n");
    s_has(text, "snapbus_dedup_duplicates_total{by=\"event_id\"} 6\n");
    s_has(text, "snapbus_dedup_beyond_horizon_total 7\n");
    s_has(text, "snapbus_dedup_evictions_total{kind=\"producer\"} 8\n");
    s_has(text, "snapbus_dedup_memory_bytes 4096\n");
    /* Buckets are cumulative, as the format asks. */
    s_has(text, "# TYPE snapbus_batch_events histogram\n");
    s_has(text, "snapbus_batch_events_bucket{le=\"1\"} 1\n");
    s_has(text, "snapbus_batch_events_bucket{le=\"5\"} 1\n");
    s_has(text, "snapbus_batch_events_bucket{le=\"10\"} 3\n");
    s_has(text, "snapbus_batch_events_bucket{le=\"10000\"} 3\n");
    s_has(text, "snapbus_batch_events_bucket{le=\"+Inf\"} 4\n");
    s_has(text, "snapbus_batch_events_sum 40\n");
    s_has(text, "snapbus_batch_events_count 4\n");
    s_has(text, "snapbus_queue_depth{queue=\"a->b\"} 1\n");
    s_has(text, "snapbus_queue_capacity{queue=\"a->b\"} 5\n");
    s_has(text, "snapbus_queue_capacity{queue=\"quote\\\"d\"} 9\n");
    s_has(text, "snapbus_queue_sent_total{queue=\"a->b\"} 1\n");
    /* No router given: its family is left out, not shown as zeros. */
    assert_null(strstr(text, "snapbus_batches_flushed_total"));
    /* Every sample line belongs to a family announced just before. */
    for (char *p = text; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        if (*p != '#') {
            char name[128];
            size_t n = strcspn(p, "{ ");
            snprintf(name, sizeof name, "%.*s", (int) n, p);
            /* A histogram's samples carry suffixes its family has not. */
            static const char *const sfx[] = {"_bucket", "_sum", "_count"};
            for (size_t i = 0; i < 3; i++) {
                size_t nl2 = strlen(name), sl = strlen(sfx[i]);
                char hist[180];
                if (nl2 <= sl || strcmp(name + nl2 - sl, sfx[i]) != 0)
                    continue;
                snprintf(hist, sizeof hist, "# TYPE %.*s histogram\n", (int) (nl2 - sl), name);
                if (strstr(text, hist) != NULL)
                    name[nl2 - sl] = '\0';
            }
            char want[160];
            snprintf(want, sizeof want, "# TYPE %s ", name);
            assert_non_null(strstr(text, want));
        }
        p = nl + 1;
    }
    free(text);

    assert_int_equal(sb_metrics_render(&src, SB_METRICS_DRAINING, "x", &text, &len), SB_OK);
    s_has(text, "snapbus_ready 0\n");
    s_has(text, "snapbus_draining 1\n");
    free(text);
    sb_link_destroy(&a);
    sb_link_destroy(&b);
}

static void
s_listen_ok(const char *in, const char *host, unsigned port)
{
    char h[64], why[160];
    uint16_t p;

    assert_int_equal(sb_metrics_parse_listen(in, h, sizeof h, &p, why, sizeof why), SB_OK);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
}

static void
s_listen_bad(const char *in)
{
    char h[64], why[160];
    uint16_t p;

    if (sb_metrics_parse_listen(in, h, sizeof h, &p, why, sizeof why) != SB_EINVAL)
        fail_msg("\"%s\" should be refused", in);
    assert_true(strlen(why) > 0);
}

static void
test_listen_addresses(void **state)
{
    s_listen_ok("127.0.0.1:7704", "127.0.0.1", 7704);
    s_listen_ok("127.0.0.1:0", "127.0.0.1", 0);
    s_listen_ok("0.0.0.0:9100", "0.0.0.0", 9100);
    s_listen_ok("*:7704", "0.0.0.0", 7704);
    s_listen_ok(":7704", "0.0.0.0", 7704);
    s_listen_ok("[::1]:7704", "::1", 7704);
    s_listen_ok("[::]:0", "::", 0);
    s_listen_bad("7704");
    s_listen_bad("127.0.0.1");
    s_listen_bad("127.0.0.1:");
    s_listen_bad("127.0.0.1:65536");
    s_listen_bad("127.0.0.1:-1");
    s_listen_bad("127.0.0.1:77x");
    s_listen_bad("localhost:7704"); /* numeric only */
    s_listen_bad("300.1.1.1:7704");
    s_listen_bad("[::1:7704");
    s_listen_bad("::1:7704");
}

/* A minimal GET, as a scraper or a probe sends. */
static int
s_get(const char *url, const char *path, const char *method, char *body,
      size_t cap)
{
    char host[64], req[256], resp[65536];
    unsigned port;
    struct sockaddr_in a = {0};
    struct timeval tv = {5, 0};
    size_t len = 0;
    ssize_t n;
    int fd, status = -1;

    assert_int_equal(sscanf(url, "http://%63[^:]:%u", host, &port), 2);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t) port);
    inet_pton(AF_INET, host, &a.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *) &a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    snprintf(req, sizeof req, "%s %s HTTP/1.0\r\n\r\n", method, path);
    assert_true(write(fd, req, strlen(req)) == (ssize_t) strlen(req));
    while (len + 1 < sizeof resp && (n = read(fd, resp + len, sizeof resp - 1 - len)) > 0)
        len += (size_t) n;
    resp[len] = '\0';
    close(fd);
    sscanf(resp, "HTTP/1.%*d %d", &status);
    char *b = strstr(resp, "\r\n\r\n");
    snprintf(body, cap, "%s", b ? b + 4 : "");
    return status;
}

static void
test_endpoints_follow_the_state(void **state)
{
    static sb_ingest_stats in;
    sb_metrics *m = NULL, *m2 = NULL;
    sb_metrics_sources src = {0};
    char body[32768];

    assert_int_equal(sb_metrics_new(&m, "127.0.0.1:0", "1.2.3"), SB_OK);
    const char *url = sb_metrics_url(m);
    assert_int_equal(strncmp(url, "http://127.0.0.1:", 17), 0);
    assert_true(atoi(url + 17) > 0);

    /* Alive but not ready while the actors start. */
    assert_int_equal(s_get(url, "/healthz", "GET", body, sizeof body), 200);
    assert_string_equal(body, "ok\n");
    assert_int_equal(s_get(url, "/readyz", "GET", body, sizeof body), 503);
    assert_string_equal(body, "starting\n");
    assert_int_equal(s_get(url, "/metrics", "GET", body, sizeof body), 200);
    s_has(body, "snapbus_ready 0\n");
    assert_null(strstr(body, "snapbus_events_accepted_total"));

    atomic_store(&in.events_in, 5);
    src.ingest = &in;
    sb_metrics_attach(m, &src);
    sb_metrics_set_state(m, SB_METRICS_READY);
    assert_int_equal(s_get(url, "/readyz", "GET", body, sizeof body), 200);
    assert_string_equal(body, "ready\n");
    assert_int_equal(s_get(url, "/metrics", "GET", body, sizeof body), 200);
    s_has(body, "snapbus_events_accepted_total 5\n");
    s_has(body, "snapbus_ready 1\n");
    s_has(body, "process_resident_memory_bytes ");
    /* Counters are read at each scrape, not cached. */
    atomic_store(&in.events_in, 6);
    assert_int_equal(s_get(url, "/metrics", "GET", body, sizeof body), 200);
    s_has(body, "snapbus_events_accepted_total 6\n");

    sb_metrics_set_state(m, SB_METRICS_DRAINING);
    assert_int_equal(s_get(url, "/readyz", "GET", body, sizeof body), 503);
    assert_string_equal(body, "draining\n");
    assert_int_equal(s_get(url, "/healthz", "GET", body, sizeof body), 200);

    assert_int_equal(s_get(url, "/nope", "GET", body, sizeof body), 404);
    assert_int_equal(s_get(url, "/metrics", "POST", body, sizeof body), 405);
    assert_int_equal(s_get(url, "/healthz", "HEAD", body, sizeof body), 200);
    assert_string_equal(body, "");

    /* The same port twice: refused, not a crash. */
    char again[64];
    snprintf(again, sizeof again, "127.0.0.1:%s", url + 17);
    assert_int_equal(sb_metrics_new(&m2, again, "x"), SB_ESYS);
    assert_null(m2);
    assert_int_equal(sb_metrics_new(&m2, "localhost:1", "x"), SB_EINVAL);

    sb_metrics_destroy(&m);
    assert_null(m);
    sb_metrics_destroy(&m); /* harmless twice */
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_render_from_known_counters),
        cmocka_unit_test(test_listen_addresses),
        cmocka_unit_test(test_endpoints_follow_the_state),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
