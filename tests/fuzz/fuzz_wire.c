/* Fuzzes the broker's request decoder (broker/sb_wire.c), the code every
 * byte from the ingest and query sockets goes through first.
 *
 * Each input is decoded three times: with the default limits, with small
 * ones (so the count, name, payload and size limits are reached by small
 * inputs) and with no limits at all (UINT32_MAX everywhere, so no check
 * may lean on the configuration's ranges). For every decode it checks the
 * decoder's contract, then does what the ingest does next: a refusal is
 * encoded as an error reply; an accepted publish becomes a reply
 * (sb_reply_from_req + sb_wire_encode_publish_reply) and its accepted
 * events are put into one batch and encoded as a SnapshotBatch, which
 * protobuf-c must read back with the same events. Everything is freed, so
 * a leak is a failure (LeakSanitizer). The same input also goes through
 * sb_wire_name_ok, checked against a plain reference UTF-8 validator. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "sb_msg.h"
#include "sb_wire.h"
#include "snapbus.pb-c.h"

/* RFC 3629 by its table of well-formed byte sequences (Unicode 15, table
 * 3-7), written independently of sb_wire_name_ok; plus "no NUL". */
static int
s_ref_name_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c == 0)
            return 0;
        if (c <= 0x7f) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            k = 1;
        else if (c == 0xe0)
            k = 2, lo = 0xa0;
        else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
            k = 2;
        else if (c == 0xed)
            k = 2, hi = 0x9f;
        else if (c == 0xf0)
            k = 3, lo = 0x90;
        else if (c >= 0xf1 && c <= 0xf3)
            k = 3;
        else if (c == 0xf4)
            k = 3, hi = 0x8f;
        else
            return 0;
        if (n - i <= k)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xbf)
                return 0;
        i += k + 1;
    }
    return 1;
}

static void
s_check_name(const char *s, uint32_t len, const sb_limits *lim, int required)
{
    FUZZ_CHECK(s != NULL || !required);
    if (s == NULL)
        return;
    FUZZ_CHECK(len > 0 || !required);
    FUZZ_CHECK(len <= lim->max_name_bytes);
    FUZZ_CHECK(s[len] == '\0');
    FUZZ_CHECK(strlen(s) == len);
    FUZZ_CHECK(s_ref_name_ok((const uint8_t *) s, len));
}

/* An accepted event is exactly what the broker promises downstream. */
static void
s_check_accepted(const sb_event *ev, const sb_limits *lim)
{
    s_check_name(ev->agg, ev->agg_len, lim, 1);
    s_check_name(ev->type, ev->type_len, lim, 1);
    if (ev->event_id != NULL)
        s_check_name(ev->event_id, ev->event_id_len, lim, 0);
    else
        FUZZ_CHECK(ev->event_id_len == 0);
    if (ev->producer_id != NULL)
        s_check_name(ev->producer_id, ev->producer_id_len, lim, 0);
    else
        FUZZ_CHECK(ev->producer_id_len == 0);
    FUZZ_CHECK(ev->payload_len <= lim->max_payload_bytes);
    FUZZ_CHECK(ev->payload_len == 0 || ev->payload != NULL);
    FUZZ_CHECK(ev->has_source_pos <= 1);
    if (lim->shard_count > 1) {
        uint32_t shard;
        FUZZ_CHECK(sb_shard_of(ev->agg, ev->agg_len, lim->shard_count,
                               &shard) == SB_OK &&
                   shard == lim->shard_index);
    }
}

static int
s_bytes_eq(const void *a, size_t an, const void *b, size_t bn)
{
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static int
s_str_eq(const char *pb, const char *s, uint32_t len)
{
    if (len == 0)
        return pb == NULL || pb[0] == '\0';
    return pb != NULL && strlen(pb) == len && memcmp(pb, s, len) == 0;
}

/* The accepted events, sequenced 1..n into one batch (the first one's
 * aggregate), encoded by the broker and read back by protobuf-c. */
static void
s_batch_roundtrip(sb_req *req)
{
    sb_batch *b = NULL;
    uint32_t first = req->nevents;

    for (uint32_t i = 0; i < req->nevents && first == req->nevents; i++)
        if (req->ev[i].status == SB_OK)
            first = i;
    if (first == req->nevents)
        return;
    if (sb_batch_new(&b, req->ev[first].agg, req->ev[first].agg_len) != SB_OK)
        return;
    uint64_t seq = 0;
    for (uint32_t i = 0; i < req->nevents; i++) {
        sb_event *ev = &req->ev[i];
        if (ev->status != SB_OK)
            continue;
        ev->seq = ++seq;
        ev->agg_seq = seq;
        /* As the router marks an event that joined another aggregate's
         * batch (caused_by). */
        ev->joined = ev->agg_len != b->agg_len ||
                     memcmp(ev->agg, b->agg, b->agg_len) != 0;
        if (sb_batch_push(b, ev) != SB_OK) {
            sb_batch_destroy(&b);
            return;
        }
        if (ev->has_source_pos) {
            b->has_source_pos = 1;
            b->source_pos = ev->source_pos;
        }
    }
    b->id = 1;
    b->agg_last_seq = seq;
    b->timestamp_ms = 1;
    b->close_reason = SB_CLOSE_IMMEDIATE;

    uint8_t *buf;
    size_t len;
    const size_t hdr = 24;
    if (sb_wire_encode_batch(b, hdr, &buf, &len) == SB_OK) {
        Snapbus__SnapshotBatch *m =
            snapbus__snapshot_batch__unpack(NULL, len, buf + hdr);
        FUZZ_CHECK(m != NULL);
        FUZZ_CHECK(m->version == SB_WIRE_VERSION);
        FUZZ_CHECK(m->n_events == b->n);
        FUZZ_CHECK(m->first_seq == 1 && m->last_seq == seq);
        FUZZ_CHECK(s_str_eq(m->aggregate, b->agg, b->agg_len));
        for (uint32_t i = 0; i < b->n; i++) {
            const sb_event *ev = b->ev[i];
            const Snapbus__SequencedEvent *se = m->events[i];
            int foreign = ev->agg_len != b->agg_len ||
                          memcmp(ev->agg, b->agg, b->agg_len) != 0;
            FUZZ_CHECK(se->seq == ev->seq);
            FUZZ_CHECK(s_str_eq(se->aggregate, ev->agg,
                                foreign ? ev->agg_len : 0));
            FUZZ_CHECK(s_str_eq(se->type, ev->type, ev->type_len));
            FUZZ_CHECK(s_str_eq(se->event_id, ev->event_id, ev->event_id_len));
            FUZZ_CHECK(s_str_eq(se->producer_id, ev->producer_id,
                                ev->producer_id_len));
            FUZZ_CHECK(s_bytes_eq(se->payload.data, se->payload.len,
                                  ev->payload, ev->payload_len));
            FUZZ_CHECK(se->caused_by == ev->caused_by);
            FUZZ_CHECK(se->producer_seq == ev->producer_seq);
            FUZZ_CHECK(se->client_ts_ms == ev->client_ts_ms);
            FUZZ_CHECK(se->has_source_pos == ev->has_source_pos);
            FUZZ_CHECK(!ev->has_source_pos || se->source_pos == ev->source_pos);
        }
        snapbus__snapshot_batch__free_unpacked(m, NULL);
        free(buf);
    }
    sb_batch_destroy(&b);
}

static void
s_publish(sb_wire_request *w, const sb_limits *lim)
{
    sb_req *req = w->req;
    uint32_t ok = 0;

    FUZZ_CHECK(req != NULL);
    FUZZ_CHECK(req->nevents >= 1);
    FUZZ_CHECK(req->nevents <= lim->max_events_per_request);
    FUZZ_CHECK(req->ack <= SB_ACK_PUBLISHED);
    FUZZ_CHECK(req->request_id == w->request_id);
    for (uint32_t i = 0; i < req->nevents; i++) {
        const sb_event *ev = &req->ev[i];
        FUZZ_CHECK(ev->req == req);
        FUZZ_CHECK(ev->agg != NULL && ev->type != NULL);
        if (ev->status == SB_OK) {
            s_check_accepted(ev, lim);
            ok++;
        } else {
            FUZZ_CHECK(ev->status == SB_EINVAL || ev->status == SB_ETOOBIG ||
                       (ev->status == SB_EWRONGSHARD && lim->shard_count > 1));
        }
    }
    FUZZ_CHECK(ok == req->naccepted);

    /* What the ingest sends back for it. */
    sb_reply *rp;
    if (sb_reply_from_req(&rp, req) == SB_OK) {
        uint8_t *buf;
        size_t len;
        FUZZ_CHECK(rp->n == req->nevents);
        if (sb_wire_encode_publish_reply(rp, &buf, &len) == SB_OK) {
            Snapbus__Reply *m = snapbus__reply__unpack(NULL, len, buf);
            FUZZ_CHECK(m != NULL);
            FUZZ_CHECK(m->request_id == w->request_id);
            FUZZ_CHECK(m->body_case == SNAPBUS__REPLY__BODY_PUBLISH);
            FUZZ_CHECK(m->publish->n_results == req->nevents);
            for (uint32_t i = 0; i < req->nevents; i++)
                FUZZ_CHECK((m->publish->results[i]->error == 0) ==
                           (req->ev[i].status == SB_OK));
            snapbus__reply__free_unpacked(m, NULL);
            free(buf);
        }
        free(rp);
    }
    s_batch_roundtrip(req);
}

static void
s_one(const uint8_t *data, size_t size, const sb_limits *lim)
{
    sb_wire_request w;
    uint8_t *buf;
    size_t len;

    if (sb_wire_decode_request(data, size, lim, &w) != SB_OK)
        return; /* SB_ENOMEM, the only failure */
    if (w.err != SB_WERR_NONE) {
        FUZZ_CHECK(w.err <= SB_WERR_OUT_OF_RETENTION);
        FUZZ_CHECK(w.detail != NULL && w.detail[0] != '\0');
        FUZZ_CHECK(w.req == NULL);
        if (size > lim->max_message_bytes)
            FUZZ_CHECK(w.err == SB_WERR_TOO_LARGE);
        if (sb_wire_encode_error(w.request_id, w.err, w.detail, &buf, &len) ==
            SB_OK) {
            Snapbus__Reply *m = snapbus__reply__unpack(NULL, len, buf);
            FUZZ_CHECK(m != NULL && (unsigned) m->error == (unsigned) w.err);
            snapbus__reply__free_unpacked(m, NULL);
            free(buf);
        }
        return;
    }
    FUZZ_CHECK(size > 0 && size <= lim->max_message_bytes);
    switch (w.kind) {
    case SB_WREQ_PUBLISH:
        s_publish(&w, lim);
        sb_req_unref(w.req);
        break;
    case SB_WREQ_FETCH:
        FUZZ_CHECK(w.req == NULL);
        FUZZ_CHECK(w.fetch.prefix_len < sizeof w.fetch.prefix);
        FUZZ_CHECK(w.fetch.prefix_len <= lim->max_name_bytes);
        FUZZ_CHECK(w.fetch.prefix[w.fetch.prefix_len] == '\0');
        FUZZ_CHECK(strlen(w.fetch.prefix) == w.fetch.prefix_len);
        FUZZ_CHECK(s_ref_name_ok((const uint8_t *) w.fetch.prefix,
                                 w.fetch.prefix_len));
        FUZZ_CHECK(w.fetch.to_seq == 0 || w.fetch.to_seq >= w.fetch.from_seq);
        break;
    case SB_WREQ_HELLO:
        FUZZ_CHECK(w.req == NULL);
        break;
    default:
        FUZZ_CHECK(!"accepted request of no kind");
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* `small` is also shard 1 of 3, so misrouted events are refused. */
    sb_limits def, small = {256, 3, 8, 4, 1, 3},
                   none = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, 0, 1};

    sb_limits_defaults(&def);
    s_one(data, size, &def);
    s_one(data, size, &small);
    s_one(data, size, &none);
    FUZZ_CHECK(sb_wire_name_ok((const char *) data, size) ==
               s_ref_name_ok(data, size));
    return 0;
}
