/* Aggregates spread over three real brokers (docs/SCALING.md): publishers
 * route each event by sb_shard_of, one lossless subscriber per broker.
 * Every event arrives exactly once, from the broker that owns its
 * aggregate, in order per aggregate; each broker's seqs are its own and
 * gap-free; a publisher that sends everything to one broker gets
 * SB_EWRONGSHARD for each event of the other shards, and nothing of them
 * is sequenced. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include <snapbus/snapbus.h>

#define SHARDS 3
#define AGGS 300
#define EVENTS 30000

static sbt_broker brokers[SHARDS];

typedef struct {
    int acked, refused, wrong_shard;
} acks;

static void
s_on_ack(const sb_ack_info *a, void *arg)
{
    acks *k = arg;

    if (a->err == SB_OK)
        k->acked++;
    else if (a->err == SB_EWRONGSHARD)
        k->wrong_shard++;
    else
        k->refused++;
}

static sb_publisher *
s_publisher(const char *endpoint, acks *k)
{
    sb_publisher_opts o;
    sb_publisher *p;

    sb_publisher_opts_defaults(&o);
    o.endpoint = endpoint;
    o.ack = SB_ACK_SEQUENCED;
    o.window = 16;
    o.batch_events = 256;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, k);
    return p;
}

static sb_subscriber *
s_subscriber(const sbt_broker *b)
{
    sb_subscriber_opts o;
    sb_subscriber *s;

    sb_subscriber_opts_defaults(&o);
    o.endpoint = b->pub;
    o.query_endpoint = b->query;
    assert_int_equal(sb_subscriber_new(&s, &o), SB_OK);
    assert_int_equal(sb_subscriber_subscribe(s, ""), SB_OK);
    assert_int_equal(sb_subscriber_start(s, 10000), SB_OK);
    return s;
}

static uint32_t
s_shard(const char *agg)
{
    uint32_t k;

    assert_int_equal(sb_shard_of(agg, strlen(agg), SHARDS, &k), SB_OK);
    return k;
}

static void
test_spread_over_three_brokers(void **state)
{
    sb_publisher *pub[SHARDS];
    sb_subscriber *sub[SHARDS];
    acks k[SHARDS] = {{0}};
    int *seen = calloc(EVENTS, sizeof *seen);
    uint64_t last_agg_seq[AGGS] = {0}, max_seq[SHARDS] = {0}, got = 0;
    static uint8_t seq_seen[SHARDS][EVENTS + AGGS + 1];
    int per_shard[SHARDS] = {0};
    char agg[32], payload[16];

    (void) state;
    assert_non_null(seen);
    for (int s = 0; s < SHARDS; s++) {
        pub[s] = s_publisher(brokers[s].ingest, &k[s]);
        sub[s] = s_subscriber(&brokers[s]);
    }
    for (int i = 0; i < EVENTS; i++) {
        sb_pub_event ev = {0};
        uint64_t token;
        snprintf(agg, sizeof agg, "s/%d", i % AGGS);
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = payload;
        ev.payload_len = (size_t) snprintf(payload, sizeof payload, "%d", i);
        uint32_t owner = s_shard(agg);
        per_shard[owner]++;
        assert_int_equal(sb_publisher_publish(pub[owner], &ev, 0, &token), SB_OK);
    }
    for (int s = 0; s < SHARDS; s++) {
        assert_int_equal(sb_publisher_wait_all(pub[s], 120000), SB_OK);
        assert_int_equal(k[s].acked, per_shard[s]);
        assert_int_equal(k[s].refused + k[s].wrong_shard, 0);
        assert_true(per_shard[s] > EVENTS / SHARDS / 2); /* all are used */
    }

    /* Bounded so that a broken build cannot hang the suite; a slow machine
     * only waits longer. */
    uint64_t deadline = sbt_now_ms() + 300000;
    int idle = 0;
    while (got < EVENTS && sbt_now_ms() < deadline) {
        /* Poll all three; wait only when none had anything. */
        int wait_ms = idle == SHARDS ? 20 : 0;
        idle = 0;
        for (int s = 0; s < SHARDS; s++) {
            sb_snapshot *b;
            sb_err rc = sb_subscriber_recv(sub[s], &b, wait_ms);
            if (rc == SB_EAGAIN) {
                idle++;
                continue;
            }
            assert_int_equal(rc, SB_OK);
            assert_int_equal(s_shard(sb_snapshot_aggregate(b)), (uint32_t) s);
            for (size_t j = 0; j < sb_snapshot_count(b); j++) {
                sb_snapshot_event e;
                assert_int_equal(sb_snapshot_event_get(b, j, &e), SB_OK);
                char text[16] = {0};
                assert_true(e.payload_len > 0 && e.payload_len < sizeof text);
                memcpy(text, e.payload, e.payload_len);
                int id = atoi(text), a = id % AGGS;
                assert_true(id >= 0 && id < EVENTS);
                assert_int_equal(seen[id]++, 0);
                assert_int_equal(s_shard(e.aggregate), (uint32_t) s);
                /* Each broker numbers its own events 1, 2, 3, ...
                 * (batches of different aggregates interleave). */
                assert_true(e.seq >= 1 && e.seq <= EVENTS);
                assert_int_equal(seq_seen[s][e.seq]++, 0);
                max_seq[s] = e.seq > max_seq[s] ? e.seq : max_seq[s];
                assert_int_equal(e.agg_seq, last_agg_seq[a] + 1);
                last_agg_seq[a] = e.agg_seq;
                got++;
            }
            sb_snapshot_destroy(&b);
        }
    }
    assert_int_equal(got, EVENTS);
    for (int s = 0; s < SHARDS; s++) /* every seq once: gap-free */
        assert_int_equal(max_seq[s], (uint64_t) per_shard[s]);

    /* Misrouted: everything to shard 0. Only its own aggregates are taken,
     * and they continue its seqs with no gap. */
    acks wrong = {0};
    sb_publisher *all0 = s_publisher(brokers[0].ingest, &wrong);
    int mine = 0;
    for (int a = 0; a < AGGS; a++) {
        sb_pub_event ev = {0};
        uint64_t token;
        snprintf(agg, sizeof agg, "s/%d", a);
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = "x";
        ev.payload_len = 1;
        mine += s_shard(agg) == 0;
        assert_int_equal(sb_publisher_publish(all0, &ev, 0, &token), SB_OK);
    }
    assert_int_equal(sb_publisher_wait_all(all0, 60000), SB_OK);
    assert_int_equal(wrong.acked, mine);
    assert_int_equal(wrong.wrong_shard, AGGS - mine);
    assert_int_equal(wrong.refused, 0);
    int extra = 0;
    deadline = sbt_now_ms() + 120000;
    while (extra < mine && sbt_now_ms() < deadline) {
        sb_snapshot *b;
        if (sb_subscriber_recv(sub[0], &b, 100) != SB_OK)
            continue;
        for (size_t j = 0; j < sb_snapshot_count(b); j++) {
            sb_snapshot_event e;
            assert_int_equal(sb_snapshot_event_get(b, j, &e), SB_OK);
            assert_true(e.seq > max_seq[0] && e.seq <= max_seq[0] + (uint64_t) mine);
            assert_int_equal(seq_seen[0][e.seq]++, 0);
            extra++;
        }
        sb_snapshot_destroy(&b);
    }
    assert_int_equal(extra, mine);

    sb_publisher_destroy(&all0);
    for (int s = 0; s < SHARDS; s++) {
        sb_publisher_destroy(&pub[s]);
        sb_subscriber_destroy(&sub[s]);
    }
    free(seen);
}

static int
setup(void **state)
{
    static char count[32], index[SHARDS][32];

    (void) state;
    snprintf(count, sizeof count, "shard.count=%d", SHARDS);
    for (int s = 0; s < SHARDS; s++) {
        snprintf(index[s], sizeof index[s], "shard.index=%d", s);
        const char *const extra[] = {"--set", count, "--set", index[s],
                                     "--default-delay-ms", "0", NULL};
        if (sbt_broker_start(&brokers[s], extra) != 0)
            return -1;
    }
    return 0;
}

static int
teardown(void **state)
{
    int rc = 0;

    (void) state;
    for (int s = 0; s < SHARDS; s++)
        rc |= sbt_broker_stop(&brokers[s], 30) != 0;
    return rc ? -1 : 0;
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_spread_over_three_brokers),
    };
    return cmocka_run_group_tests(t, setup, teardown);
}
