/* A burst through tiny queues, and a shutdown with batches still open.
 * Nothing may be lost, nothing may crash, and the broker must exit 0. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include <snapbus/snapbus.h>

typedef struct {
    const char *endpoint;
    const char *query; /* the broker's query socket: hello and gap fill */
    uint64_t want;
    uint8_t *seen;   /* [want+1] */
    atomic_uint_fast64_t events; /* the test thread watches it grow */
    uint64_t dups;
    uint64_t shutdown_batches;
    atomic_int stop;
    atomic_int ready;
} sub_ctx;

static void *
s_sub(void *arg)
{
    sub_ctx *s = arg;
    sb_subscriber_opts o;
    sb_subscriber *sub;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = s->endpoint;
    o.query_endpoint = s->query;
    o.rcvhwm = 1000000;
    if (sb_subscriber_new(&sub, &o) != SB_OK || sb_subscriber_subscribe(sub, "") != SB_OK)
        return NULL;
    /* Said hello: what is published from here on is not missed. */
    while (sb_subscriber_start(sub, 1000) == SB_ETIMEDOUT && !atomic_load(&s->stop))
        ;
    atomic_store(&s->ready, 1);
    while (!atomic_load(&s->stop) && atomic_load(&s->events) < s->want) {
        sb_snapshot *b;
        if (sb_subscriber_recv(sub, &b, 100) != SB_OK)
            continue;
        if (sb_snapshot_close_reason(b) == SB_CLOSE_SHUTDOWN)
            s->shutdown_batches++;
        for (size_t i = 0; i < sb_snapshot_count(b); i++) {
            sb_snapshot_event e;
            sb_snapshot_event_get(b, i, &e);
            if (e.seq >= 1 && e.seq <= s->want && s->seen[e.seq]++ == 0)
                atomic_fetch_add(&s->events, 1);
            else
                s->dups++;
        }
        sb_snapshot_destroy(&b);
    }
    sb_subscriber_destroy(&sub);
    return NULL;
}

static void
s_wait_ready(sub_ctx *s)
{
    while (!atomic_load(&s->ready))
        usleep(1000);
}

typedef struct {
    const char *endpoint;
    sb_ack ack;
    int n;
    int aggs;
    int rc;
    atomic_uint_fast64_t acked; /* by the ack callback; the test reads it */
    uint64_t waits;
} pub_ctx;

static void
s_count(const sb_ack_info *a, void *arg)
{
    pub_ctx *p = arg;
    if (a->err == SB_OK)
        atomic_fetch_add(&p->acked, 1);
}

static void *
s_pub(void *arg)
{
    pub_ctx *p = arg;
    sb_publisher_opts o;
    sb_publisher *pub;
    sb_publisher_stats st;
    char agg[32], payload[100];

    memset(payload, 'x', sizeof payload);
    sb_publisher_opts_defaults(&o);
    o.endpoint = p->endpoint;
    o.ack = p->ack;
    if ((p->rc = sb_publisher_new(&pub, &o)) != SB_OK)
        return NULL;
    sb_publisher_on_ack(pub, s_count, p);
    for (int i = 0; i < p->n && p->rc == SB_OK; i++) {
        sb_pub_event ev = {0};
        snprintf(agg, sizeof agg, "burst/%d", i % p->aggs);
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = payload;
        ev.payload_len = sizeof payload;
        p->rc = sb_publisher_publish(pub, &ev, 0, NULL);
    }
    if (p->rc == SB_OK)
        p->rc = sb_publisher_wait_all(pub, 300000);
    sb_publisher_stats_get(pub, &st);
    p->waits = st.waits;
    sb_publisher_destroy(&pub);
    return NULL;
}

/* Every internal queue holds 4 items; 100,000 fire-and-forget events plus
 * 100,000 acked ones arrive as fast as two publishers can send them. */
static void
test_burst_through_tiny_queues(void **state)
{
    sbt_broker b;
    /* The internal queues are what this test squeezes; the PUB socket's
     * high-water mark is kept out of the way (a subscriber that falls
     * behind it loses live batches by design, and fills them by fetch). */
    const char *args[] = {"--queue", "4", "--max-batch-events", "50", "--hwm", "1000000", NULL};
    enum { N = 100000 };
    pthread_t st, pt[2];
    sub_ctx s = {.want = 2 * N};
    pub_ctx p[2];

    assert_int_equal(sbt_broker_start(&b, args), 0);
    s.endpoint = b.pub;
    s.query = b.query;
    s.seen = calloc(2 * N + 1, 1);
    pthread_create(&st, NULL, s_sub, &s);
    s_wait_ready(&s);
    p[0] = (pub_ctx){b.ingest, SB_ACK_NONE, N, 100, 0, 0, 0};
    p[1] = (pub_ctx){b.ingest, SB_ACK_SEQUENCED, N, 7, 0, 0, 0};
    for (int i = 0; i < 2; i++)
        pthread_create(&pt[i], NULL, s_pub, &p[i]);
    for (int i = 0; i < 2; i++) {
        pthread_join(pt[i], NULL);
        assert_int_equal(p[i].rc, SB_OK);
    }
    assert_int_equal(atomic_load(&p[1].acked), N);
    uint64_t deadline = sbt_now_ms() + 120000;
    while (atomic_load(&s.events) < s.want && sbt_now_ms() < deadline)
        usleep(10000);
    atomic_store(&s.stop, 1);
    pthread_join(st, NULL);
    long rss = sbt_broker_vmhwm_kb(&b);
    assert_int_equal(atomic_load(&s.events), 2 * N);
    assert_int_equal(s.dups, 0);
    assert_int_equal(sbt_broker_stop(&b, 60), 0);
    printf("# 200000 events through queues of 4: lost 0, dup 0, publisher waits %llu+%llu, broker VmHWM %ld KiB\n",
           (unsigned long long) p[0].waits, (unsigned long long) p[1].waits, rss);
    free(s.seen);
}

/* Batches held for a minute are flushed by SIGTERM, acks included. */
static void
test_shutdown_flushes_open_batches(void **state)
{
    sbt_broker b;
    const char *args[] = {"--default-delay-ms", "60000", NULL};
    enum { N = 1000 };
    pthread_t st, pt;
    sub_ctx s = {.want = N};
    pub_ctx p;

    assert_int_equal(sbt_broker_start(&b, args), 0);
    s.endpoint = b.pub;
    s.query = b.query;
    s.seen = calloc(N + 1, 1);
    pthread_create(&st, NULL, s_sub, &s);
    s_wait_ready(&s);
    /* `published` acks can only come once the batches go out. */
    p = (pub_ctx){b.ingest, SB_ACK_PUBLISHED, N, 10, 0, 0, 0};
    pthread_create(&pt, NULL, s_pub, &p);
    usleep(500000);
    assert_int_equal(atomic_load(&s.events), 0); /* still held: a minute to go */
    assert_int_equal(atomic_load(&p.acked), 0);
    assert_int_equal(sbt_broker_stop(&b, 60), 0);
    pthread_join(pt, NULL);
    assert_int_equal(p.rc, SB_OK);
    assert_int_equal(atomic_load(&p.acked), N);
    uint64_t deadline = sbt_now_ms() + 30000;
    while (atomic_load(&s.events) < s.want && sbt_now_ms() < deadline)
        usleep(10000);
    atomic_store(&s.stop, 1);
    pthread_join(st, NULL);
    assert_int_equal(atomic_load(&s.events), N);
    assert_int_equal(s.dups, 0);
    assert_int_equal(s.shutdown_batches, 10); /* one per aggregate */
    free(s.seen);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_burst_through_tiny_queues),
        cmocka_unit_test(test_shutdown_flushes_open_batches),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
