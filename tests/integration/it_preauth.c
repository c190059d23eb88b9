/* What a peer without a key can take from the real broker before it is
 * authenticated (docs/SECURITY.md, "Before authentication"):
 *
 *  - memory: 40 peers each send a CURVE greeting and most of a handshake
 *    frame as large as ZMQ_MAXMSGSIZE allows. The broker's resident set
 *    stays within the documented bound (max_handshakes frames) while they
 *    are connected, comes back near where it started once they are gone,
 *    and an authenticated publisher and subscriber beside them lose
 *    nothing;
 *  - descriptors: with RLIMIT_NOFILE at 256, hundreds of idle TCP
 *    connections, opened again as fast as the broker closes them. A
 *    durable publisher keeps getting acks or ERR_BUSY, never
 *    ERR_STORAGE_FULL; the log grows by a bounded number of lines;
 *    /metrics keeps answering.
 *
 * Every wait is for a condition, with a deadline far beyond what a loaded
 * machine needs; the deadlines only keep a broken build from hanging. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include <snapbus/snapbus.h>

/* The broker's resident set means something only without a sanitizer:
 * ASan's allocator keeps freed memory in quarantine and adds shadow
 * memory, so there the figures are printed, not asserted. */
#if defined(__SANITIZE_ADDRESS__)
#define S_RSS_CHECKS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_RSS_CHECKS 0
#endif
#endif
#ifndef S_RSS_CHECKS
#define S_RSS_CHECKS 1
#endif

#define S_PEERS 40
#define S_MAX_HANDSHAKES 8

typedef struct {
    char pub[41], sec[41];
} s_pair;

typedef struct {
    char dir[64];
    char secret_file[128], pubs[128], subs[128];
    s_pair server, publisher, subscriber;
    sbt_broker b;
    int running;
} fixture;

static void
s_write(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static int
s_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    char text[256];

    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sbt-preauth.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(zmq_curve_keypair(f->server.pub, f->server.sec), 0);
    assert_int_equal(zmq_curve_keypair(f->publisher.pub, f->publisher.sec), 0);
    assert_int_equal(zmq_curve_keypair(f->subscriber.pub, f->subscriber.sec), 0);
    snprintf(f->secret_file, sizeof f->secret_file, "%s/server.key", f->dir);
    snprintf(f->pubs, sizeof f->pubs, "%s/publishers.keys", f->dir);
    snprintf(f->subs, sizeof f->subs, "%s/subscribers.keys", f->dir);
    snprintf(text, sizeof text, "%s\n", f->server.sec);
    s_write(f->secret_file, text, 0600);
    snprintf(text, sizeof text, "%s\n", f->publisher.pub);
    s_write(f->pubs, text, 0644);
    snprintf(text, sizeof text, "%s\n", f->subscriber.pub);
    s_write(f->subs, text, 0644);
    *state = f;
    return 0;
}

static int
s_teardown(void **state)
{
    fixture *f = *state;
    char cmd[128];
    int rc = 0;

    if (f->running && (rc = sbt_broker_stop(&f->b, 30)) != 0)
        fprintf(stderr, "snapbusd exit status %d; log: %s/broker.log\n", rc,
                f->b.dir);
    sbt_set_broker_nofile(0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void
s_start(fixture *f, const char *const *more)
{
    const char *extra[40] = {"--secret-key-file", f->secret_file,
                             "--publisher-keys", f->pubs,
                             "--subscriber-keys", f->subs,
                             "--metrics", "127.0.0.1:0",
                             "--default-delay-ms", "0"};
    int n = 10;

    for (int i = 0; more != NULL && more[i] != NULL && n < 39; i++)
        extra[n++] = more[i];
    extra[n] = NULL;
    assert_int_equal(sbt_broker_start(&f->b, extra), 0);
    f->running = 1;
}

static sb_curve_opts
s_curve(const fixture *f, const s_pair *client)
{
    sb_curve_opts c = {f->server.pub, client->pub, client->sec};
    return c;
}

/* A sample of /metrics; -1 if the scrape did not answer. */
static double
s_metric(fixture *f, const char *sample)
{
    static char body[1 << 18];
    char want[256];
    const char *p;

    if (sbt_http_get(f->b.metrics, "/metrics", body, sizeof body, 5000) != 200)
        return -1;
    snprintf(want, sizeof want, "\n%s ", sample);
    if ((p = strstr(body, want)) == NULL)
        fail_msg("no sample \"%s\" in the scrape", sample);
    return strtod(p + strlen(want), NULL);
}

static double
s_refused(fixture *f, const char *role, const char *reason)
{
    char s[160];
    snprintf(s, sizeof s, "snapbus_conn_refused_total{role=\"%s\",reason=\"%s\"}",
             role, reason);
    return s_metric(f, s);
}

/* The ingest's ZMQ_MAXMSGSIZE, as the broker logs it at start. */
static uint64_t
s_ingest_maxmsg(const fixture *f)
{
    char path[160], line[2048];
    const char *p;
    uint64_t v = 0;
    FILE *lf;

    snprintf(path, sizeof path, "%s/broker.log", f->b.dir);
    assert_non_null(lf = fopen(path, "r"));
    while (v == 0 && fgets(line, sizeof line, lf) != NULL)
        if ((p = strstr(line, " ingest_maxmsgsize=")) != NULL)
            v = strtoull(p + 19, NULL, 10);
    fclose(lf);
    assert_true(v > (1u << 20));
    return v;
}

static long
s_log_lines(const fixture *f, long *bytes)
{
    char path[160];
    long lines = 0, n = 0;
    int c;
    FILE *lf;

    snprintf(path, sizeof path, "%s/broker.log", f->b.dir);
    assert_non_null(lf = fopen(path, "r"));
    while ((c = fgetc(lf)) != EOF) {
        n++;
        lines += c == '\n';
    }
    fclose(lf);
    if (bytes != NULL)
        *bytes = n;
    return lines;
}

/* A raw TCP connection to a tcp://127.0.0.1:PORT endpoint, non-blocking;
 * -1 if the connect itself failed. */
static int
s_tcp(const char *endpoint)
{
    const char *colon = strrchr(endpoint, ':');
    struct sockaddr_in sa = {0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0 && colon != NULL);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) atoi(colon + 1));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *) &sa, sizeof sa) != 0 &&
        errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* 1 when the broker closed this connection (EOF or reset). */
static int
s_closed(int fd)
{
    char buf[256];

    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0)
            continue; /* the broker's greeting */
        return r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

/* ---- the legitimate clients ----------------------------------------- */

typedef struct {
    int ok, busy, storage_full, other;
} s_outcomes;

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    s_outcomes *o = ctx;

    if (a->err == SB_OK)
        o->ok++;
    else if (a->err == SB_EBUSY)
        o->busy++;
    else if (a->err == SB_ESTORAGE)
        o->storage_full++;
    else
        o->other++;
}

static sb_publisher *
s_publisher(fixture *f, sb_ack ack, s_outcomes *out)
{
    sb_publisher_opts o;
    sb_publisher *p;
    sb_curve_opts c = s_curve(f, &f->publisher);

    sb_publisher_opts_defaults(&o);
    o.endpoint = f->b.ingest;
    o.ack = ack;
    o.window = 16;
    o.timeout_ms = 60000;
    o.reply_timeout_ms = 60000;
    o.curve = c;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, out);
    return p;
}

static void
s_publish(sb_publisher *p, const char *agg, int i, size_t payload)
{
    static char buf[4096];
    sb_pub_event ev = {.aggregate = agg, .type = "t", .payload = buf,
                       .payload_len = payload};

    snprintf(buf, sizeof buf, "%d", i);
    assert_int_equal(sb_publisher_publish(p, &ev, 0, NULL), SB_OK);
}

static sb_subscriber *
s_subscriber(fixture *f)
{
    sb_subscriber_opts o;
    sb_subscriber *s;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = f->b.pub;
    o.query_endpoint = f->b.query;
    o.fetch_timeout_ms = 10000;
    o.curve = s_curve(f, &f->subscriber);
    assert_int_equal(sb_subscriber_new(&s, &o), SB_OK);
    assert_int_equal(sb_subscriber_subscribe(s, "pa/"), SB_OK);
    assert_int_equal(sb_subscriber_start(s, 60000), SB_OK);
    return s;
}

/* Receives until `want` events of the subscription arrived, each seq once
 * (seen[] marks them); returns how many did. */
static int
s_receive(sb_subscriber *s, int want, uint8_t *seen, size_t nseen)
{
    int got = 0;
    uint64_t end = sbt_now_ms() + 60000;

    while (got < want && sbt_now_ms() < end) {
        sb_snapshot *b;
        if (sb_subscriber_recv(s, &b, 200) != SB_OK)
            continue;
        for (size_t i = 0; i < sb_snapshot_count(b); i++) {
            sb_snapshot_event e;
            assert_int_equal(sb_snapshot_event_get(b, i, &e), SB_OK);
            assert_true(e.seq > 0 && e.seq < nseen);
            assert_int_equal(seen[e.seq], 0);
            seen[e.seq] = 1;
            got++;
        }
        sb_snapshot_destroy(&b);
    }
    return got;
}

/* ---- tests ---------------------------------------------------------- */

/* The CURVE greeting (ZMTP 3.0) and the header of a long command frame of
 * `size` bytes: libzmq allocates `size` when the header arrives, and the
 * bytes that follow fill it. */
static size_t
s_hostile_prefix(uint8_t *out, uint64_t size)
{
    size_t n = 0;

    memset(out, 0, 64);
    out[0] = 0xff;
    out[9] = 0x7f;
    out[10] = 3; /* version 3.0 */
    out[11] = 0;
    memcpy(out + 12, "CURVE", 5);
    n = 64;
    out[n++] = 0x06; /* command, long */
    for (int i = 7; i >= 0; i--)
        out[n++] = (uint8_t) (size >> (8 * i));
    return n;
}

static void
test_unauthenticated_peers_hold_bounded_memory(void **state)
{
    fixture *f = *state;
    char hs[16];
    s_outcomes acks = {0, 0, 0, 0};
    static uint8_t seen[4096];
    int sent = 0;

    snprintf(hs, sizeof hs, "%d", S_MAX_HANDSHAKES);
    /* A long handshake interval keeps the held peers connected for as long
     * as the test looks at them, however slow the machine. */
    const char *more[] = {"--max-handshakes", hs, "--handshake-ms", "120000",
                          NULL};
    s_start(f, more);
    sb_subscriber *sub = s_subscriber(f);
    sb_publisher *p = s_publisher(f, SB_ACK_SEQUENCED, &acks);
    /* Traffic first, so the baseline holds what serving it costs. */
    for (int i = 0; i < 200; i++)
        s_publish(p, "pa/before", sent++, 512);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    assert_int_equal(s_receive(sub, 200, seen, sizeof seen), 200);
    long base = sbt_broker_rss_kb(&f->b);
    double cap0 = s_refused(f, "publish", "handshake_cap");

    /* 40 peers: greeting, a frame header announcing ZMQ_MAXMSGSIZE bytes,
     * and most of those bytes. */
    const uint64_t maxmsg = s_ingest_maxmsg(f);
    const uint64_t frame = maxmsg - 4096;
    const size_t fill = (size_t) (frame - (512u << 10));
    static uint8_t junk[1 << 16];
    int fds[S_PEERS];
    size_t done[S_PEERS];
    uint8_t prefix[80];
    size_t plen = s_hostile_prefix(prefix, frame);
    memset(junk, 0x5a, sizeof junk);
    for (int i = 0; i < S_PEERS; i++) {
        assert_true((fds[i] = s_tcp(f->b.ingest)) >= 0);
        done[i] = 0;
    }
    /* Write until every peer has sent its bytes or was closed. */
    uint64_t end = sbt_now_ms() + 120000;
    int busy = S_PEERS, closed = 0;
    long peak = base;
    while (busy > 0 && sbt_now_ms() < end) {
        struct pollfd pf[S_PEERS];
        int np = 0;
        for (int i = 0; i < S_PEERS; i++)
            if (fds[i] >= 0 && done[i] < plen + fill)
                pf[np++] = (struct pollfd){fds[i], POLLOUT, 0};
        poll(pf, (nfds_t) np, 100);
        busy = 0;
        for (int i = 0; i < S_PEERS; i++) {
            if (fds[i] < 0 || done[i] >= plen + fill)
                continue;
            const uint8_t *src = done[i] < plen ? prefix + done[i] : junk;
            size_t want = done[i] < plen ? plen - done[i] : plen + fill - done[i];
            if (want > sizeof junk)
                want = sizeof junk;
            ssize_t w = send(fds[i], src, want, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0)
                done[i] += (size_t) w;
            else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                close(fds[i]);
                fds[i] = -1;
                closed++;
                continue;
            }
            busy += done[i] < plen + fill;
        }
        /* The legitimate publisher goes on beside them. */
        if (sent < 400)
            s_publish(p, "pa/during", sent++, 512);
        long rss = sbt_broker_rss_kb(&f->b);
        if (rss > peak)
            peak = rss;
    }
    assert_int_equal(busy, 0);
    /* Every peer beyond the cap was refused at once... */
    SBT_WAIT_UNTIL(s_refused(f, "publish", "handshake_cap") >=
                       cap0 + S_PEERS - S_MAX_HANDSHAKES, 60000);
    assert_true(s_refused(f, "publish", "handshake_cap") >=
                cap0 + S_PEERS - S_MAX_HANDSHAKES);
    assert_int_equal(s_metric(f, "snapbus_conn_handshaking"), S_MAX_HANDSHAKES);
    /* ...and what the refused ones had sent before their accept was seen
     * is handed back once they are gone. Then, while the held peers stay
     * connected, the memory they hold is within the documented bound:
     * max_handshakes x (ZMQ_MAXMSGSIZE + 256 KiB), plus 16 MiB for the
     * legitimate traffic meanwhile. 40 uncapped peers would hold five
     * times as much. */
    SBT_WAIT_UNTIL(s_metric(f, "snapbus_conn_malloc_trims_total") >= 1, 60000);
    assert_true(s_metric(f, "snapbus_conn_malloc_trims_total") >= 1);
    long held = 0;
    for (int k = 0; k < 20; k++) {
        long rss = sbt_broker_rss_kb(&f->b);
        if (rss > held)
            held = rss;
        usleep(50000);
    }
    long bound_kb = S_MAX_HANDSHAKES * (long) ((maxmsg >> 10) + 256) + 16384;
    printf("# pre-auth RSS: base %ld KiB, %d peers held %ld KiB (+%ld), bound "
           "+%ld KiB; transient peak %ld KiB; %d peers closed by the broker "
           "while writing\n", base, S_MAX_HANDSHAKES, held, held - base,
           bound_kb, peak, closed);
    if (S_RSS_CHECKS) {
        assert_true(held - base <= bound_kb);
        assert_true(held - base >= S_MAX_HANDSHAKES * (long) (fill >> 10) / 2);
    }

    /* They go: the memory goes back, once the broker has seen them go
     * and trimmed. */
    double trims = s_metric(f, "snapbus_conn_malloc_trims_total");
    for (int i = 0; i < S_PEERS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    SBT_WAIT_UNTIL(s_metric(f, "snapbus_conn_handshaking") <= 0 &&
                       s_metric(f, "snapbus_conn_malloc_trims_total") > trims,
                   60000);
    assert_int_equal(s_metric(f, "snapbus_conn_handshaking"), 0);
    long after = -1;
    SBT_WAIT_UNTIL((after = sbt_broker_rss_kb(&f->b)) <= base + 8192 ||
                       !S_RSS_CHECKS,
                   60000);
    printf("# pre-auth RSS after the peers left: %ld KiB (base %ld)\n", after,
           base);
    if (S_RSS_CHECKS)
        assert_true(after <= base + 8192);

    /* The legitimate clients lost nothing, before, during and after. */
    for (int i = 0; i < 100; i++)
        s_publish(p, "pa/after", sent++, 512);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(acks.ok, sent);
    assert_int_equal(acks.busy + acks.storage_full + acks.other, 0);
    assert_int_equal(s_receive(sub, sent - 200, seen, sizeof seen), sent - 200);
    sb_subscriber_destroy(&sub);
}

/* Opens idle connections to endpoint until `want` are open, replacing the
 * ones the broker closed. Returns how many it (re)opened. */
static int
s_keep_open(int *fds, int want, const char *endpoint)
{
    int opened = 0;

    for (int i = 0; i < want; i++) {
        if (fds[i] >= 0 && s_closed(fds[i])) {
            close(fds[i]);
            fds[i] = -1;
        }
        if (fds[i] < 0 && (fds[i] = s_tcp(endpoint)) >= 0)
            opened++;
    }
    return opened;
}

static void
test_descriptor_flood_leaves_the_log_and_metrics_working(void **state)
{
    fixture *f = *state;
    enum { IDLE = 400 };
    s_outcomes acks = {0, 0, 0, 0};
    int fds[IDLE], opened = 0, scrapes = 0, sent = 0;
    long bytes0, bytes1;

    /* The broker gets 256 descriptors; the cap on handshakes is lifted so
     * that the descriptor headroom is what must hold. Small segments make
     * the log open files all through the flood. */
    sbt_set_broker_nofile(256);
    const char *more[] = {"--max-handshakes", "100000", "--handshake-ms", "2000",
                          "--segment-bytes", "65536", NULL};
    s_start(f, more);
    assert_int_equal(s_metric(f, "snapbus_fd_limit"), 256);
    sb_publisher *p = s_publisher(f, SB_ACK_DURABLE, &acks);
    for (int i = 0; i < 20; i++)
        s_publish(p, "pa/fd", sent++, 2000);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    assert_int_equal(acks.ok, 20);

    long lines0 = s_log_lines(f, &bytes0);
    for (int i = 0; i < IDLE; i++)
        fds[i] = -1;
    /* About 10 s of flood: hundreds of idle connections, replaced as soon
     * as the broker closes them, while the publisher publishes durable
     * events (each ~2 KB: a segment every ~30) and /metrics is scraped. */
    uint64_t start = sbt_now_ms();
    while (sbt_now_ms() - start < 10000) {
        opened += s_keep_open(fds, IDLE, f->b.ingest);
        for (int k = 0; k < 5; k++)
            s_publish(p, "pa/fd", sent++, 2000);
        sb_publisher_poll(p, 50);
        if (sbt_now_ms() - start > (uint64_t) scrapes * 2000 + 1000) {
            /* /metrics answers all through. */
            assert_true(s_metric(f, "snapbus_conn_open") >= 0);
            scrapes++;
        }
    }
    assert_true(opened >= IDLE);
    double headroom = s_refused(f, "publish", "fd_headroom");
    double timeouts = s_refused(f, "publish", "timeout");
    for (int i = 0; i < IDLE; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    assert_int_equal(sb_publisher_wait_all(p, 120000), SB_OK);
    sb_publisher_destroy(&p);
    long lines1 = s_log_lines(f, &bytes1);
    printf("# fd flood: %d connections opened, %d events: %d acked, %d busy, "
           "%d storage full, %d other; refused fd_headroom=%.0f timeout=%.0f; "
           "log +%ld lines, +%ld bytes in ~10 s\n",
           opened, sent, acks.ok, acks.busy, acks.storage_full, acks.other,
           headroom, timeouts, lines1 - lines0, bytes1 - bytes0);
    /* The defence was needed: the flood reached the headroom. */
    assert_true(headroom > 0);
    /* Acks or a typed "busy", never "storage full", nothing lost. */
    assert_int_equal(acks.storage_full, 0);
    assert_int_equal(acks.other, 0);
    assert_int_equal(acks.ok + acks.busy, sent);
    assert_true(acks.ok > 20);
    /* The log grew by a bounded number of lines: refusals are logged at
     * most 5 a second, whatever the flood. */
    assert_true(lines1 - lines0 <= 200);
    /* And afterwards all is as before. */
    SBT_WAIT_UNTIL(s_metric(f, "snapbus_conn_handshaking") <= 0, 60000);
    acks = (s_outcomes){0, 0, 0, 0};
    p = s_publisher(f, SB_ACK_DURABLE, &acks);
    for (int i = 0; i < 20; i++)
        s_publish(p, "pa/fd", i, 2000);
    assert_int_equal(sb_publisher_wait_all(p, 60000), SB_OK);
    sb_publisher_destroy(&p);
    assert_int_equal(acks.ok, 20);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_unauthenticated_peers_hold_bounded_memory,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_descriptor_flood_leaves_the_log_and_metrics_working, s_setup,
            s_teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
