/* Wire codec: hand-written publish decoder and batch encoder, checked
 * against protobuf-c, and every refusal of bad input. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sb_msg.h"
#include "sb_wire.h"
#include "snapbus.pb-c.h"

static sb_limits lim;

/* Packs a Request{publish} with n events named agg[i]. */
static uint8_t *
s_pack_publish(uint32_t version, uint64_t id, int ack, Snapbus__Event **ev,
               size_t n, size_t *len)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Publish p = SNAPBUS__PUBLISH__INIT;
    uint8_t *buf;

    p.ack = (Snapbus__AckLevel) ack;
    p.n_events = n;
    p.events = ev;
    r.version = version;
    r.request_id = id;
    r.body_case = SNAPBUS__REQUEST__BODY_PUBLISH;
    r.publish = &p;
    *len = snapbus__request__get_packed_size(&r);
    buf = malloc(*len);
    snapbus__request__pack(&r, buf);
    return buf;
}

static void
s_event(Snapbus__Event *e, const char *agg, const char *type, const char *payload)
{
    snapbus__event__init(e);
    e->aggregate = (char *) agg;
    e->type = (char *) type;
    e->payload.data = (uint8_t *) payload;
    e->payload.len = strlen(payload);
}

static void
test_decode_publish_roundtrip(void **state)
{
    Snapbus__Event e[2], *ev[2] = {&e[0], &e[1]};
    size_t len;
    sb_wire_request w;

    s_event(&e[0], "e3/42", "Started", "hello");
    e[0].has_source_pos = 1;
    e[0].source_pos = 0; /* zero is a real position */
    e[0].event_id = "id-1";
    s_event(&e[1], "e3/7", "Done", "");
    e[1].caused_by = 12;
    e[1].producer_id = "node-a";
    e[1].producer_seq = 99;
    e[1].client_ts_ms = 1234;
    uint8_t *buf = s_pack_publish(1, 77, SB_ACK_SEQUENCED, ev, 2, &len);

    assert_int_equal(sb_wire_decode_request(buf, len, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.kind, SB_WREQ_PUBLISH);
    assert_int_equal(w.request_id, 77);
    assert_non_null(w.req);
    assert_int_equal(w.req->nevents, 2);
    assert_int_equal(w.req->naccepted, 2);
    assert_int_equal(w.req->ack, SB_ACK_SEQUENCED);
    sb_event *a = &w.req->ev[0], *b = &w.req->ev[1];
    assert_string_equal(a->agg, "e3/42");
    assert_int_equal(a->agg_len, 5);
    assert_string_equal(a->type, "Started");
    assert_memory_equal(a->payload, "hello", 5);
    assert_int_equal(a->has_source_pos, 1);
    assert_string_equal(a->event_id, "id-1");
    assert_int_equal(b->caused_by, 12);
    assert_string_equal(b->producer_id, "node-a");
    assert_int_equal(b->producer_seq, 99);
    assert_int_equal(b->client_ts_ms, 1234);
    assert_int_equal(b->payload_len, 0);
    sb_req_unref(w.req);
    free(buf);
}

static void
test_refuses_bad_version_and_garbage(void **state)
{
    Snapbus__Event e, *ev[1] = {&e};
    size_t len;
    sb_wire_request w;
    uint8_t junk[64];

    s_event(&e, "a", "t", "p");
    uint8_t *buf = s_pack_publish(2, 5, 0, ev, 1, &len);
    assert_int_equal(sb_wire_decode_request(buf, len, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_BAD_VERSION);
    assert_int_equal(w.request_id, 5);
    assert_null(w.req);
    free(buf);

    buf = s_pack_publish(0, 5, 0, ev, 1, &len); /* version missing */
    assert_int_equal(sb_wire_decode_request(buf, len, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_BAD_VERSION);
    /* Every truncation of a valid request is refused or decoded, never
     * read past its end (ASan watches). */
    buf[0] = 0x08, buf[1] = 0x01; /* make it version 1 again */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *t = malloc(cut ? cut : 1);
        memcpy(t, buf, cut);
        assert_int_equal(sb_wire_decode_request(t, cut, &lim, &w), SB_OK);
        if (w.req)
            sb_req_unref(w.req);
        free(t);
    }
    free(buf);

    srand(7);
    for (int i = 0; i < 20000; i++) {
        size_t n = (size_t) rand() % sizeof junk;
        for (size_t j = 0; j < n; j++)
            junk[j] = (uint8_t) rand();
        if (n > 2 && i % 2) { /* a plausible head to go deeper */
            junk[0] = 0x08, junk[1] = 0x01, junk[2] = 0x22;
        }
        assert_int_equal(sb_wire_decode_request(junk, n, &lim, &w), SB_OK);
        if (w.req)
            sb_req_unref(w.req);
    }
    assert_int_equal(sb_wire_decode_request("", 0, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_INVALID);
}

static void
test_refuses_bad_events(void **state)
{
    char longname[300];
    Snapbus__Event e[6], *ev[6];
    size_t len;
    sb_wire_request w;
    const char bad_utf8[] = {'a', (char) 0xc3, 0};

    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    s_event(&e[0], "", "t", "p");               /* empty aggregate */
    s_event(&e[1], longname, "t", "p");         /* too long */
    s_event(&e[2], bad_utf8, "t", "p");         /* not UTF-8 */
    s_event(&e[3], "ok", "", "p");              /* empty type */
    s_event(&e[4], "ok", "t", "p");             /* good */
    s_event(&e[5], "ok", "t", "p");
    e[5].payload.len = lim.max_payload_bytes + 1; /* too big */
    e[5].payload.data = calloc(1, e[5].payload.len);
    for (int i = 0; i < 6; i++)
        ev[i] = &e[i];
    uint8_t *buf = s_pack_publish(1, 1, SB_ACK_SEQUENCED, ev, 6, &len);
    assert_int_equal(sb_wire_decode_request(buf, len, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.req->naccepted, 1);
    assert_int_equal(w.req->ev[0].status, SB_EINVAL);
    assert_int_equal(w.req->ev[1].status, SB_ETOOBIG);
    assert_int_equal(w.req->ev[2].status, SB_EINVAL);
    assert_int_equal(w.req->ev[3].status, SB_EINVAL);
    assert_int_equal(w.req->ev[4].status, SB_OK);
    assert_int_equal(w.req->ev[5].status, SB_ETOOBIG);
    sb_req_unref(w.req);
    free(buf);
    free(e[5].payload.data);

    /* Whole-request refusals. */
    buf = s_pack_publish(1, 1, 9, ev + 4, 1, &len);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_INVALID); /* ack out of range */
    free(buf);
    buf = s_pack_publish(1, 1, SB_ACK_DURABLE, ev + 4, 1, &len);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_NONE); /* served by the on-disk log */
    assert_int_equal(w.req->ack, SB_ACK_DURABLE);
    sb_req_unref(w.req);
    free(buf);
    buf = s_pack_publish(1, 1, 0, ev, 0, &len);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_INVALID); /* no events */
    free(buf);
    sb_limits small = lim;
    small.max_events_per_request = 2;
    buf = s_pack_publish(1, 1, 0, ev, 3, &len);
    sb_wire_decode_request(buf, len, &small, &w);
    assert_int_equal(w.err, SB_WERR_TOO_LARGE);
    small.max_message_bytes = (uint32_t) len - 1;
    sb_wire_decode_request(buf, len, &small, &w);
    assert_int_equal(w.err, SB_WERR_TOO_LARGE);
    free(buf);
}

static void
test_name_utf8(void **state)
{
    assert_true(sb_wire_name_ok("e3/42", 5));
    assert_true(sb_wire_name_ok("caf\xc3\xa9", 5));
    assert_true(sb_wire_name_ok("\xf0\x9f\x98\x80", 4));
    assert_false(sb_wire_name_ok("a\0b", 3));
    assert_false(sb_wire_name_ok("\xc0\xaf", 2));         /* overlong */
    assert_false(sb_wire_name_ok("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(sb_wire_name_ok("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(sb_wire_name_ok("\xe2\x82", 2));         /* truncated */
    assert_false(sb_wire_name_ok("\xff", 1));
}

static void
test_fetch_and_hello_decode(void **state)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Fetch f = SNAPBUS__FETCH__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    uint8_t buf[512];
    size_t len;
    sb_wire_request w;

    r.version = 1;
    r.request_id = 3;
    r.body_case = SNAPBUS__REQUEST__BODY_FETCH;
    r.fetch = &f;
    f.prefix = "e3/";
    f.from_seq = 10;
    f.to_seq = 20;
    len = snapbus__request__pack(&r, buf);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.kind, SB_WREQ_FETCH);
    assert_string_equal(w.fetch.prefix, "e3/");
    assert_int_equal(w.fetch.from_seq, 10);
    f.to_seq = 5; /* reversed */
    len = snapbus__request__pack(&r, buf);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_INVALID);

    r.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    r.hello = &h;
    len = snapbus__request__pack(&r, buf);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.kind, SB_WREQ_HELLO);

    r.body_case = SNAPBUS__REQUEST__BODY__NOT_SET;
    len = snapbus__request__pack(&r, buf);
    sb_wire_decode_request(buf, len, &lim, &w);
    assert_int_equal(w.err, SB_WERR_INVALID);
}

/* Several body fields in one request (no conforming encoder writes that):
 * the last one on the wire is the body, as proto3 says for a oneof, and
 * two publish fields are not merged (docs/PROTOCOL.md section 5.1). */
static void
test_last_body_on_the_wire_wins(void **state)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    Snapbus__Event e[3], *ev1[1] = {&e[0]}, *ev2[2] = {&e[1], &e[2]};
    uint8_t hello[64], buf[1024];
    size_t hlen, l1, l2;
    sb_wire_request w;

    (void) state;
    r.version = 1;
    r.request_id = 9;
    r.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    r.hello = &h;
    hlen = snapbus__request__pack(&r, hello); /* version, id, hello */
    s_event(&e[0], "a/1", "T", "one");
    s_event(&e[1], "b/1", "T", "two");
    s_event(&e[2], "b/2", "T", "three");
    /* Version 0 and id 0 are not written: just the publish field. */
    uint8_t *p1 = s_pack_publish(0, 0, SB_ACK_SEQUENCED, ev1, 1, &l1);
    uint8_t *p2 = s_pack_publish(0, 0, SB_ACK_SEQUENCED, ev2, 2, &l2);

    /* hello, then publish: a publish. */
    memcpy(buf, hello, hlen);
    memcpy(buf + hlen, p1, l1);
    assert_int_equal(sb_wire_decode_request(buf, hlen + l1, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.kind, SB_WREQ_PUBLISH);
    assert_int_equal(w.request_id, 9);
    assert_int_equal(w.req->nevents, 1);
    sb_req_unref(w.req);

    /* publish, then hello: a hello. */
    memcpy(buf, p1, l1);
    memcpy(buf + l1, hello, hlen);
    assert_int_equal(sb_wire_decode_request(buf, hlen + l1, &lim, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.kind, SB_WREQ_HELLO);
    assert_null(w.req);

    /* Two publish fields: only the last one's events. */
    memcpy(buf, hello, hlen);
    memcpy(buf + hlen, p1, l1);
    memcpy(buf + hlen + l1, p2, l2);
    assert_int_equal(sb_wire_decode_request(buf, hlen + l1 + l2, &lim, &w),
                     SB_OK);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(w.kind, SB_WREQ_PUBLISH);
    assert_int_equal(w.req->nevents, 2);
    assert_string_equal(w.req->ev[0].agg, "b/1");
    sb_req_unref(w.req);
    free(p1);
    free(p2);
}

static void
test_encode_batch_matches_protobuf_c(void **state)
{
    uint8_t *data;
    sb_req *req;
    sb_batch *b;
    uint8_t *buf;
    size_t len;

    assert_int_equal(sb_req_new(&req, 3, 64, &data), SB_OK);
    for (int i = 0; i < 3; i++) {
        sb_event *ev = &req->ev[i];
        ev->agg = i == 2 ? "other" : "e3/1";
        ev->joined = i == 2; /* as the router marks it */
        ev->agg_len = (uint32_t) strlen(ev->agg);
        ev->type = "T";
        ev->type_len = 1;
        ev->payload = (const uint8_t *) "xyz";
        ev->payload_len = 3;
        ev->seq = 100 + (uint64_t) i;
        ev->agg_seq = 1 + (uint64_t) i;
        ev->has_source_pos = i == 1;
        ev->source_pos = 0;
        ev->caused_by = i == 2 ? 101 : 0;
        ev->client_ts_ms = 5;
    }
    assert_int_equal(sb_batch_new(&b, "e3/1", 4), SB_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sb_batch_push(b, &req->ev[i]), SB_OK);
    b->id = 9;
    b->agg_last_seq = 2;
    b->prev_last_seq = 50;
    b->timestamp_ms = 1700000000000ull;
    b->has_source_pos = 1;
    b->source_pos = 0;
    b->close_reason = SB_CLOSE_MAX_EVENTS;

    assert_int_equal(sb_wire_encode_batch(b, 16, &buf, &len), SB_OK);
    Snapbus__SnapshotBatch *m = snapbus__snapshot_batch__unpack(NULL, len, buf + 16);
    assert_non_null(m);
    assert_int_equal(m->version, 1);
    assert_string_equal(m->aggregate, "e3/1");
    assert_int_equal(m->batch_id, 9);
    assert_int_equal(m->first_seq, 100);
    assert_int_equal(m->last_seq, 102);
    assert_int_equal(m->aggregate_last_seq, 2);
    assert_int_equal(m->prev_last_seq, 50);
    assert_int_equal(m->close_reason, SNAPBUS__CLOSE_REASON__CLOSE_MAX_EVENTS);
    assert_true(m->has_source_pos);
    assert_int_equal(m->n_events, 3);
    assert_string_equal(m->events[0]->aggregate, ""); /* same as the batch */
    assert_string_equal(m->events[2]->aggregate, "other");
    assert_int_equal(m->events[2]->caused_by, 101);
    assert_true(m->events[1]->has_source_pos);
    assert_int_equal(m->events[1]->seq, 101);
    assert_int_equal(m->events[1]->aggregate_seq, 2);
    assert_memory_equal(m->events[0]->payload.data, "xyz", 3);
    /* protobuf-c packs the same message to the same length. */
    assert_int_equal(snapbus__snapshot_batch__get_packed_size(m), len);
    snapbus__snapshot_batch__free_unpacked(m, NULL);

    /* The header (what a headers_only fetch sends) is a prefix that is a
     * whole SnapshotBatch: every field but the events, has_source_pos
     * included; and the headroom is zeroed for the caller's fields. */
    size_t hl = sb_wire_batch_header_len(buf + 16, len);
    assert_true(hl > 0 && hl < len);
    for (int i = 0; i < 16; i++)
        assert_int_equal(buf[i], 0);
    m = snapbus__snapshot_batch__unpack(NULL, hl, buf + 16);
    assert_non_null(m);
    assert_int_equal(m->n_events, 0);
    assert_string_equal(m->aggregate, "e3/1");
    assert_int_equal(m->batch_id, 9);
    assert_int_equal(m->first_seq, 100);
    assert_int_equal(m->last_seq, 102);
    assert_int_equal(m->prev_last_seq, 50);
    assert_true(m->has_source_pos);
    snapbus__snapshot_batch__free_unpacked(m, NULL);
    assert_int_equal(sb_wire_batch_header_len(buf + 16, hl), hl);
    free(buf);
    sb_batch_destroy(&b);
    sb_req_unref(req);
}

static void
test_reply_encoding(void **state)
{
    uint8_t *buf;
    size_t len;
    sb_reply *rp = calloc(1, sizeof *rp + 2 * sizeof(sb_result));

    rp->request_id = 11;
    rp->ack = SB_ACK_PUBLISHED;
    rp->n = 2;
    rp->r[0] = (sb_result){5, 1, 3, SB_OK, SB_WHY_NONE, 0, 0};
    rp->r[1] = (sb_result){0, 0, 0, SB_ETOOBIG, SB_WHY_NONE, 0, 0};
    assert_int_equal(sb_wire_encode_publish_reply(rp, &buf, &len), SB_OK);
    Snapbus__Reply *m = snapbus__reply__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_int_equal(m->request_id, 11);
    assert_int_equal(m->body_case, SNAPBUS__REPLY__BODY_PUBLISH);
    assert_int_equal(m->publish->n_results, 2);
    assert_int_equal(m->publish->results[0]->seq, 5);
    assert_int_equal(m->publish->results[0]->batch_id, 3);
    assert_int_equal(m->publish->results[1]->error, SNAPBUS__ERROR_CODE__ERR_TOO_LARGE);
    snapbus__reply__free_unpacked(m, NULL);
    free(buf);
    free(rp);

    assert_int_equal(sb_wire_encode_error(4, SB_WERR_SHUTTING_DOWN, "bye", &buf, &len), SB_OK);
    m = snapbus__reply__unpack(NULL, len, buf);
    assert_int_equal(m->error, SNAPBUS__ERROR_CODE__ERR_SHUTTING_DOWN);
    assert_string_equal(m->detail, "bye");
    snapbus__reply__free_unpacked(m, NULL);
    free(buf);
}

/* A per-event refusal's detail names the field, its value and the limit
 * (or the byte where UTF-8 breaks), from decode to the encoded reply. */
static void
test_refusal_detail_names_field_value_limit(void **state)
{
    Snapbus__Event e[5], *ev[5];
    char agg[301], payload[2001];
    size_t len;
    uint8_t *buf, *out;
    sb_wire_request w;
    sb_reply *rp;
    sb_limits l = lim;

    (void) state;
    l.max_payload_bytes = 2000;
    memset(agg, 'a', 300);
    agg[300] = 0;
    memset(payload, 'p', 2000);
    payload[2000] = 0;
    for (int i = 0; i < 5; i++) {
        s_event(&e[i], "ok/1", "T", "x");
        ev[i] = &e[i];
    }
    e[0].aggregate = agg;          /* 300 B > 255 */
    e[1].aggregate = "e3\xff/1";   /* not UTF-8 at byte 2 */
    e[2].type = "";                /* empty */
    s_event(&e[3], "ok/1", "T", payload);
    e[3].payload.len = 2001;       /* 2001 B > 2000 */
    buf = s_pack_publish(1, 5, SB_ACK_SEQUENCED, ev, 5, &len);
    assert_int_equal(sb_wire_decode_request(buf, len, &l, &w), SB_OK);
    assert_int_equal(w.err, SB_WERR_NONE);
    assert_int_equal(sb_reply_from_req(&rp, w.req), SB_OK);
    assert_int_equal(sb_wire_encode_publish_reply(rp, &out, &len), SB_OK);
    Snapbus__Reply *m = snapbus__reply__unpack(NULL, len, out);
    assert_non_null(m);
    assert_string_equal(m->publish->results[0]->detail,
                        "aggregate 300 B > limit 255 (limits.max_name_bytes)");
    assert_string_equal(m->publish->results[1]->detail,
                        "aggregate is not valid UTF-8 (or holds 0x00) at "
                        "byte 2 (from 0)");
    assert_string_equal(m->publish->results[2]->detail,
                        "type is empty (it is required)");
    assert_string_equal(m->publish->results[3]->detail,
                        "payload 2001 B > limit 2000 (limits.max_payload_bytes)");
    assert_int_equal(m->publish->results[4]->error,
                     SNAPBUS__ERROR_CODE__ERR_NONE);
    snapbus__reply__free_unpacked(m, NULL);
    free(out);
    free(rp);
    sb_req_unref(w.req);
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_decode_publish_roundtrip),
        cmocka_unit_test(test_last_body_on_the_wire_wins),
        cmocka_unit_test(test_refuses_bad_version_and_garbage),
        cmocka_unit_test(test_refuses_bad_events),
        cmocka_unit_test(test_name_utf8),
        cmocka_unit_test(test_refusal_detail_names_field_value_limit),
        cmocka_unit_test(test_fetch_and_hello_decode),
        cmocka_unit_test(test_encode_batch_matches_protobuf_c),
        cmocka_unit_test(test_reply_encoding),
    };
    sb_limits_defaults(&lim);
    return cmocka_run_group_tests(t, NULL, NULL);
}
