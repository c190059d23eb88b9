/* The one protobuf wire helper (common/sb_pbwire.h): its named field
 * numbers are the schema's (checked against protobuf-c's descriptors, so a
 * renumbered or renamed field fails here, not on the wire), what its
 * writers write protobuf-c reads back, the _size functions count exactly
 * what is written, and the reader takes every wire type and refuses what
 * is cut off or malformed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "sb_pbwire.h"
#include "snapbus.pb-c.h"

static int
s_number(const ProtobufCMessageDescriptor *d, const char *field)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(d, field);
    return f ? (int)f->id : -1;
}

#define CHECK(desc, name, macro)                                               \
    assert_int_equal(s_number(&desc, name), macro)

static void
test_field_numbers_are_the_schemas(void **state)
{
    (void)state;
    CHECK(snapbus__event__descriptor, "aggregate", SB_PB_EVENT_AGGREGATE);
    CHECK(snapbus__event__descriptor, "type", SB_PB_EVENT_TYPE);
    CHECK(snapbus__event__descriptor, "payload", SB_PB_EVENT_PAYLOAD);
    CHECK(snapbus__event__descriptor, "event_id", SB_PB_EVENT_EVENT_ID);
    CHECK(snapbus__event__descriptor, "source_pos", SB_PB_EVENT_SOURCE_POS);
    CHECK(snapbus__event__descriptor, "caused_by", SB_PB_EVENT_CAUSED_BY);
    CHECK(snapbus__event__descriptor, "producer_id", SB_PB_EVENT_PRODUCER_ID);
    CHECK(snapbus__event__descriptor, "producer_seq",
          SB_PB_EVENT_PRODUCER_SEQ);
    CHECK(snapbus__event__descriptor, "client_ts_ms",
          SB_PB_EVENT_CLIENT_TS_MS);
    CHECK(snapbus__event__descriptor, "has_source_pos",
          SB_PB_EVENT_HAS_SOURCE_POS);

    CHECK(snapbus__sequenced_event__descriptor, "seq",
          SB_PB_SEQUENCED_EVENT_SEQ);
    CHECK(snapbus__sequenced_event__descriptor, "aggregate_seq",
          SB_PB_SEQUENCED_EVENT_AGGREGATE_SEQ);
    CHECK(snapbus__sequenced_event__descriptor, "aggregate",
          SB_PB_SEQUENCED_EVENT_AGGREGATE);
    CHECK(snapbus__sequenced_event__descriptor, "type",
          SB_PB_SEQUENCED_EVENT_TYPE);
    CHECK(snapbus__sequenced_event__descriptor, "payload",
          SB_PB_SEQUENCED_EVENT_PAYLOAD);
    CHECK(snapbus__sequenced_event__descriptor, "event_id",
          SB_PB_SEQUENCED_EVENT_EVENT_ID);
    CHECK(snapbus__sequenced_event__descriptor, "source_pos",
          SB_PB_SEQUENCED_EVENT_SOURCE_POS);
    CHECK(snapbus__sequenced_event__descriptor, "caused_by",
          SB_PB_SEQUENCED_EVENT_CAUSED_BY);
    CHECK(snapbus__sequenced_event__descriptor, "producer_id",
          SB_PB_SEQUENCED_EVENT_PRODUCER_ID);
    CHECK(snapbus__sequenced_event__descriptor, "producer_seq",
          SB_PB_SEQUENCED_EVENT_PRODUCER_SEQ);
    CHECK(snapbus__sequenced_event__descriptor, "client_ts_ms",
          SB_PB_SEQUENCED_EVENT_CLIENT_TS_MS);
    CHECK(snapbus__sequenced_event__descriptor, "has_source_pos",
          SB_PB_SEQUENCED_EVENT_HAS_SOURCE_POS);

    CHECK(snapbus__snapshot_batch__descriptor, "version",
          SB_PB_SNAPSHOT_BATCH_VERSION);
    CHECK(snapbus__snapshot_batch__descriptor, "aggregate",
          SB_PB_SNAPSHOT_BATCH_AGGREGATE);
    CHECK(snapbus__snapshot_batch__descriptor, "batch_id",
          SB_PB_SNAPSHOT_BATCH_BATCH_ID);
    CHECK(snapbus__snapshot_batch__descriptor, "first_seq",
          SB_PB_SNAPSHOT_BATCH_FIRST_SEQ);
    CHECK(snapbus__snapshot_batch__descriptor, "last_seq",
          SB_PB_SNAPSHOT_BATCH_LAST_SEQ);
    CHECK(snapbus__snapshot_batch__descriptor, "aggregate_last_seq",
          SB_PB_SNAPSHOT_BATCH_AGGREGATE_LAST_SEQ);
    CHECK(snapbus__snapshot_batch__descriptor, "source_pos",
          SB_PB_SNAPSHOT_BATCH_SOURCE_POS);
    CHECK(snapbus__snapshot_batch__descriptor, "timestamp_ms",
          SB_PB_SNAPSHOT_BATCH_TIMESTAMP_MS);
    CHECK(snapbus__snapshot_batch__descriptor, "prev_last_seq",
          SB_PB_SNAPSHOT_BATCH_PREV_LAST_SEQ);
    CHECK(snapbus__snapshot_batch__descriptor, "close_reason",
          SB_PB_SNAPSHOT_BATCH_CLOSE_REASON);
    CHECK(snapbus__snapshot_batch__descriptor, "events",
          SB_PB_SNAPSHOT_BATCH_EVENTS);
    CHECK(snapbus__snapshot_batch__descriptor, "has_source_pos",
          SB_PB_SNAPSHOT_BATCH_HAS_SOURCE_POS);

    CHECK(snapbus__publish__descriptor, "ack", SB_PB_PUBLISH_ACK);
    CHECK(snapbus__publish__descriptor, "events", SB_PB_PUBLISH_EVENTS);
    CHECK(snapbus__request__descriptor, "version", SB_PB_REQUEST_VERSION);
    CHECK(snapbus__request__descriptor, "request_id",
          SB_PB_REQUEST_REQUEST_ID);
    CHECK(snapbus__request__descriptor, "hello", SB_PB_REQUEST_HELLO);
    CHECK(snapbus__request__descriptor, "publish", SB_PB_REQUEST_PUBLISH);
    CHECK(snapbus__request__descriptor, "fetch", SB_PB_REQUEST_FETCH);
    CHECK(snapbus__fetch_reply__descriptor, "cursor_low_seq",
          SB_PB_FETCH_REPLY_CURSOR_LOW_SEQ);
    CHECK(snapbus__reply__descriptor, "fetch", SB_PB_REPLY_FETCH);
}

/* An Event written by hand, read by protobuf-c; sizes exact. Field 1000
 * (two-byte key) and large values exercise the longer forms. */
static void
test_writers_are_read_by_protobuf_c(void **state)
{
    uint8_t buf[256], *p = buf;
    const char agg[] = "orders/42";
    size_t want = sb_pb_bytes_size(SB_PB_EVENT_AGGREGATE, strlen(agg)) +
                  sb_pb_bytes_size(SB_PB_EVENT_TYPE, 1) +
                  sb_pb_bytes_size(SB_PB_EVENT_PAYLOAD, 0) +
                  sb_pb_uint_size(SB_PB_EVENT_CAUSED_BY, 0) +
                  sb_pb_uint_size(SB_PB_EVENT_PRODUCER_SEQ, UINT64_MAX) +
                  sb_pb_uint_size(SB_PB_EVENT_CLIENT_TS_MS, 300) +
                  sb_pb_uint_size(1000, 7);

    (void)state;
    p = sb_pb_put_bytes(p, SB_PB_EVENT_AGGREGATE, agg, strlen(agg));
    p = sb_pb_put_bytes(p, SB_PB_EVENT_TYPE, "T", 1);
    p = sb_pb_put_bytes(p, SB_PB_EVENT_PAYLOAD, "", 0); /* left out */
    p = sb_pb_put_uint(p, SB_PB_EVENT_CAUSED_BY, 0);    /* left out */
    p = sb_pb_put_uint(p, SB_PB_EVENT_PRODUCER_SEQ, UINT64_MAX);
    p = sb_pb_put_uint(p, SB_PB_EVENT_CLIENT_TS_MS, 300);
    p = sb_pb_put_uint(p, 1000, 7); /* unknown to the schema: skipped */
    assert_int_equal((size_t)(p - buf), want);

    Snapbus__Event *e = snapbus__event__unpack(NULL, (size_t)(p - buf), buf);
    assert_non_null(e);
    assert_string_equal(e->aggregate, agg);
    assert_string_equal(e->type, "T");
    assert_int_equal(e->payload.len, 0);
    assert_true(e->producer_seq == UINT64_MAX);
    assert_int_equal(e->client_ts_ms, 300);
    snapbus__event__free_unpacked(e, NULL);

    /* An embedded message: head + body = msg_size. */
    uint8_t m[64], *q = sb_pb_put_msg_head(m, SB_PB_PUBLISH_EVENTS, 3);
    memcpy(q, "\x08\x01\x10", 3);
    assert_int_equal((size_t)(q + 3 - m),
                     sb_pb_msg_size(SB_PB_PUBLISH_EVENTS, 3));
}

static void
test_reader_takes_every_wire_type(void **state)
{
    /* varint 150 in field 1; I64 in 2; LEN "ab" in 3; I32 in 4. */
    const uint8_t in[] = {0x08, 0x96, 0x01, 0x11, 1, 0, 0, 0,   0,   0,
                          0,    0x80, 0x1a, 2,    'a', 'b', 0x25, 1, 2, 3,
                          4};
    sb_pb_reader r;
    sb_pb_field f;

    (void)state;
    sb_pb_reader_init(&r, in, sizeof in);
    assert_int_equal(sb_pb_next(&r, &f), 1);
    assert_int_equal(f.num, 1);
    assert_int_equal(f.wt, SB_PB_VARINT);
    assert_int_equal(f.v, 150);
    assert_int_equal(sb_pb_next(&r, &f), 1);
    assert_int_equal(f.wt, SB_PB_I64);
    assert_true(f.v == (1ull | 1ull << 63));
    assert_int_equal(sb_pb_next(&r, &f), 1);
    assert_int_equal(f.wt, SB_PB_LEN);
    assert_int_equal(f.len, 2);
    assert_memory_equal(f.ptr, "ab", 2);
    assert_int_equal(sb_pb_next(&r, &f), 1);
    assert_int_equal(f.num, 4);
    assert_int_equal(f.wt, SB_PB_I32);
    assert_int_equal(sb_pb_next(&r, &f), 0);
}

static void
test_reader_refuses_malformed_input(void **state)
{
    static const struct {
        const char *why;
        uint8_t b[4];
        size_t n;
    } bad[] = {
        {"field number 0", {0x00, 0x01}, 2},
        {"a group", {0x0b}, 1},
        {"wire type 7", {0x0f}, 1},
        {"cut-off varint", {0x08, 0x80}, 2},
        {"length past the end", {0x1a, 0x05, 'a'}, 3},
        {"cut-off I64", {0x11, 1, 2}, 3},
        {"cut-off I32", {0x25, 1}, 2},
    };
    sb_pb_reader r;
    sb_pb_field f;

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sb_pb_reader_init(&r, bad[i].b, bad[i].n);
        if (sb_pb_next(&r, &f) != -1)
            fail_msg("accepted: %s", bad[i].why);
    }
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_field_numbers_are_the_schemas),
        cmocka_unit_test(test_writers_are_read_by_protobuf_c),
        cmocka_unit_test(test_reader_takes_every_wire_type),
        cmocka_unit_test(test_reader_refuses_malformed_input),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
