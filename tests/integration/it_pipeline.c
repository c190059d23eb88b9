/* The whole path against the real broker: 4 publishers x 100,000 events
 * over 1,000 aggregates with mixed delays, two subscribers (all, and a
 * prefix). Every event arrives exactly once, in seq order per aggregate,
 * gap-free, in batches that obey the rules; acks carry the right seqs; a
 * malformed request gets a typed error and nobody else notices. */
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
#include "snapbus.pb-c.h"

#define PUBS 4
#define PER_PUB 100000
#define AGGS 1000
#define TOTAL (PUBS * PER_PUB)
#define MAX_BATCH 64

static sbt_broker broker;

typedef struct {
    int id;
    sb_ack ack;
    uint64_t *seq_of; /* [PER_PUB] from acks, by token */
    atomic_int acked;
    atomic_int refused;
    int rc;
} pub_ctx;

typedef struct {
    const char *prefix;
    uint32_t *who;        /* [TOTAL+1]: publisher*PER_PUB+i+1 of each seq */
    atomic_uint_fast64_t events; /* the test thread watches it grow */
    uint64_t batches;
    uint64_t want;
    atomic_int stop;
    atomic_int ready; /* said hello: nothing published from here is missed */
    int violations;
    char first_violation[256];
} sub_ctx;

static void
s_on_ack(const sb_ack_info *a, void *arg)
{
    pub_ctx *p = arg;

    if (a->err != SB_OK) {
        atomic_fetch_add(&p->refused, 1);
        return;
    }
    if (a->token >= 1 && a->token <= PER_PUB)
        p->seq_of[a->token - 1] = a->seq;
    if (p->ack == SB_ACK_PUBLISHED && a->batch_id == 0)
        atomic_fetch_add(&p->refused, 1); /* must name its batch */
    atomic_fetch_add(&p->acked, 1);
}

static void *
s_publisher(void *arg)
{
    pub_ctx *p = arg;
    sb_publisher_opts o;
    sb_publisher *pub;
    char agg[32], payload[32];

    sb_publisher_opts_defaults(&o);
    o.endpoint = broker.ingest;
    o.ack = p->ack;
    o.window = 16;
    o.batch_events = 256;
    if ((p->rc = sb_publisher_new(&pub, &o)) != SB_OK)
        return NULL;
    sb_publisher_on_ack(pub, s_on_ack, p);
    for (int i = 0; i < PER_PUB; i++) {
        sb_pub_event ev = {0};
        uint64_t token;
        snprintf(agg, sizeof agg, "a/%d", (p->id * PER_PUB + i) % AGGS);
        int n = snprintf(payload, sizeof payload, "%d:%d", p->id, i);
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = payload;
        ev.payload_len = (size_t) n;
        if ((p->rc = sb_publisher_publish(pub, &ev, 0, &token)) != SB_OK)
            break;
        if (token != (uint64_t) i + 1)
            p->rc = SB_EINVAL;
    }
    if (p->rc == SB_OK)
        p->rc = sb_publisher_wait_all(pub, 120000);
    sb_publisher_destroy(&pub);
    return NULL;
}

static void
s_violation(sub_ctx *s, const char *fmt, ...)
{
    va_list ap;
    if (s->violations++ == 0) {
        va_start(ap, fmt);
        vsnprintf(s->first_violation, sizeof s->first_violation, fmt, ap);
        va_end(ap);
    }
}

static void *
s_subscriber(void *arg)
{
    sub_ctx *s = arg;
    sb_subscriber_opts o;
    sb_subscriber *sub;
    uint64_t last_seq[AGGS] = {0}, last_agg_seq[AGGS] = {0}, last_batch = 0;
    size_t plen = strlen(s->prefix);

    sb_subscriber_opts_defaults(&o);
    o.endpoint = broker.pub;
    /* The query socket for the hello that fixes the start point (a gap
     * fill, which this test does not count on, would also come from it). */
    o.query_endpoint = broker.query;
    o.rcvhwm = 1000000;
    if (sb_subscriber_new(&sub, &o) != SB_OK ||
        sb_subscriber_subscribe(sub, s->prefix) != SB_OK) {
        s_violation(s, "subscriber setup failed");
        atomic_store(&s->ready, 1);
        return NULL;
    }
    while (sb_subscriber_start(sub, 1000) == SB_ETIMEDOUT && !atomic_load(&s->stop))
        ;
    atomic_store(&s->ready, 1);
    while (!atomic_load(&s->stop) && atomic_load(&s->events) < s->want) {
        sb_snapshot *b;
        if (sb_subscriber_recv(sub, &b, 100) != SB_OK)
            continue;
        const char *agg = sb_snapshot_aggregate(b);
        size_t n = sb_snapshot_count(b);
        int a = atoi(agg + 2);
        if (strncmp(agg, s->prefix, plen) != 0)
            s_violation(s, "batch %s outside prefix %s", agg, s->prefix);
        if (n == 0 || n > MAX_BATCH)
            s_violation(s, "batch of %zu events", n);
        if (sb_snapshot_batch_id(b) <= last_batch)
            s_violation(s, "batch id %llu after %llu",
                        (unsigned long long) sb_snapshot_batch_id(b),
                        (unsigned long long) last_batch);
        last_batch = sb_snapshot_batch_id(b);
        if (sb_snapshot_prev_last_seq(b) != last_seq[a])
            s_violation(s, "%s prev_last_seq %llu, last seen %llu", agg,
                        (unsigned long long) sb_snapshot_prev_last_seq(b),
                        (unsigned long long) last_seq[a]);
        for (size_t i = 0; i < n; i++) {
            sb_snapshot_event e;
            int p, k;
            sb_snapshot_event_get(b, i, &e);
            if (strcmp(e.aggregate, agg) != 0)
                s_violation(s, "event of %s in batch of %s", e.aggregate, agg);
            if (e.seq <= last_seq[a])
                s_violation(s, "%s seq %llu after %llu", agg,
                            (unsigned long long) e.seq, (unsigned long long) last_seq[a]);
            if (e.agg_seq != last_agg_seq[a] + 1)
                s_violation(s, "%s agg_seq %llu after %llu", agg,
                            (unsigned long long) e.agg_seq,
                            (unsigned long long) last_agg_seq[a]);
            last_seq[a] = e.seq;
            last_agg_seq[a] = e.agg_seq;
            char text[32];
            snprintf(text, sizeof text, "%.*s", (int) e.payload_len, (const char *) e.payload);
            if (e.seq == 0 || e.seq > TOTAL || sscanf(text, "%d:%d", &p, &k) != 2) {
                s_violation(s, "bad event seq=%llu", (unsigned long long) e.seq);
                continue;
            }
            if (s->who[e.seq] != 0)
                s_violation(s, "seq %llu twice", (unsigned long long) e.seq);
            s->who[e.seq] = (uint32_t) (p * PER_PUB + k + 1);
            if ((p * PER_PUB + k) % AGGS != a)
                s_violation(s, "event %d:%d in aggregate %s", p, k, agg);
        }
        if (sb_snapshot_agg_last_seq(b) != last_agg_seq[a])
            s_violation(s, "%s aggregate_last_seq %llu, events end at %llu", agg,
                        (unsigned long long) sb_snapshot_agg_last_seq(b),
                        (unsigned long long) last_agg_seq[a]);
        if (sb_snapshot_last_seq(b) != last_seq[a])
            s_violation(s, "last_seq mismatch in %s", agg);
        atomic_fetch_add(&s->events, n);
        s->batches++;
        sb_snapshot_destroy(&b);
    }
    sb_subscriber_destroy(&sub);
    return NULL;
}

static Snapbus__Reply *
s_raw(const void *const *frames, const size_t *lens, int n)
{
    static uint8_t buf[4096];
    size_t len;

    if (sbt_raw_request(broker.ingest, frames, lens, n, buf, sizeof buf, &len, 10000) < 1)
        return NULL;
    return snapbus__reply__unpack(NULL, len, buf);
}

static void
test_four_publishers_two_subscribers(void **state)
{
    pthread_t pt[PUBS], st[2];
    pub_ctx pubs[PUBS];
    sub_ctx subs[2] = {{.prefix = ""}, {.prefix = "a/1"}};
    const sb_ack acks[PUBS] = {SB_ACK_SEQUENCED, SB_ACK_PUBLISHED, SB_ACK_SEQUENCED, SB_ACK_NONE};
    uint64_t want_prefix = 0;

    for (int i = 0; i < TOTAL; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "a/%d", i % AGGS);
        want_prefix += strncmp(agg, "a/1", 3) == 0;
    }
    for (int i = 0; i < 2; i++) {
        subs[i].who = calloc(TOTAL + 1, sizeof(uint32_t));
        subs[i].want = i == 0 ? TOTAL : want_prefix;
        pthread_create(&st[i], NULL, s_subscriber, &subs[i]);
    }
    /* Both subscribers have said hello before anything is published. */
    for (int i = 0; i < 2; i++)
        while (!atomic_load(&subs[i].ready))
            usleep(1000);

    for (int i = 0; i < PUBS; i++) {
        pubs[i] = (pub_ctx){.id = i, .ack = acks[i]};
        pubs[i].seq_of = calloc(PER_PUB, sizeof(uint64_t));
        pthread_create(&pt[i], NULL, s_publisher, &pubs[i]);
    }

    /* Bad input while they publish: garbage, wrong frame count. */
    const char garbage[] = "\xff\xfe not a protobuf";
    const void *f1[] = {garbage};
    size_t l1[] = {sizeof garbage};
    Snapbus__Reply *r = s_raw(f1, l1, 1);
    assert_non_null(r);
    assert_int_equal(r->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(r, NULL);
    const void *f2[] = {"a", "b"};
    size_t l2[] = {1, 1};
    r = s_raw(f2, l2, 2);
    assert_non_null(r);
    assert_int_equal(r->error, SNAPBUS__ERROR_CODE__ERR_INVALID);
    snapbus__reply__free_unpacked(r, NULL);

    for (int i = 0; i < PUBS; i++) {
        pthread_join(pt[i], NULL);
        assert_int_equal(pubs[i].rc, SB_OK);
        assert_int_equal(pubs[i].refused, 0);
        if (acks[i] != SB_ACK_NONE)
            assert_int_equal(pubs[i].acked, PER_PUB);
    }
    /* The subscribers stop when they have everything; the bound only keeps
     * a broken broker from hanging the suite. */
    uint64_t deadline = sbt_now_ms() + 120000;
    while ((atomic_load(&subs[0].events) < subs[0].want ||
            atomic_load(&subs[1].events) < subs[1].want) &&
           sbt_now_ms() < deadline)
        usleep(20000);
    for (int i = 0; i < 2; i++) {
        atomic_store(&subs[i].stop, 1);
        pthread_join(st[i], NULL);
        if (subs[i].violations)
            fail_msg("subscriber '%s': %d violations, first: %s", subs[i].prefix,
                     subs[i].violations, subs[i].first_violation);
    }
    assert_int_equal(atomic_load(&subs[0].events), TOTAL);
    assert_int_equal(atomic_load(&subs[1].events), want_prefix);
    /* Gap-free: every seq 1..TOTAL seen exactly once (twice was caught). */
    for (uint64_t s = 1; s <= TOTAL; s++)
        if (subs[0].who[s] == 0)
            fail_msg("seq %llu never arrived", (unsigned long long) s);
    /* Acks name the seq the event really got. */
    for (int p = 0; p < PUBS; p++) {
        if (acks[p] == SB_ACK_NONE)
            continue;
        for (int i = 0; i < PER_PUB; i++) {
            uint64_t s = pubs[p].seq_of[i];
            if (s == 0 || s > TOTAL || subs[0].who[s] != (uint32_t) (p * PER_PUB + i + 1))
                fail_msg("publisher %d event %d acked with seq %llu", p, i,
                         (unsigned long long) s);
        }
    }
    printf("# %llu events in %llu batches (all), %llu in %llu (prefix a/1)\n",
           (unsigned long long) atomic_load(&subs[0].events),
           (unsigned long long) subs[0].batches,
           (unsigned long long) atomic_load(&subs[1].events),
           (unsigned long long) subs[1].batches);
    for (int i = 0; i < PUBS; i++)
        free(pubs[i].seq_of);
    for (int i = 0; i < 2; i++)
        free(subs[i].who);
}

static int
setup(void **state)
{
    const char *args[] = {"--max-batch-events", "64", "--default-delay-ms", "0",
                          "--delay", "a/1*=30", "--delay", "a/2*=80",
                          "--delay", "a/999=150", "--hwm", "1000000", NULL};
    return sbt_broker_start(&broker, args);
}

static int
teardown(void **state)
{
    return sbt_broker_stop(&broker, 60) == 0 ? 0 : -1;
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_four_publishers_two_subscribers),
    };
    return cmocka_run_group_tests(t, setup, teardown);
}
