#include "sb_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_pbwire.h"
#include "sb_utf8.h"
#include "snapbus.pb-c.h"

void
sb_limits_defaults(sb_limits *l)
{
    l->max_message_bytes = 4u << 20;
    l->max_events_per_request = 8192;
    l->max_payload_bytes = 1u << 20;
    l->max_name_bytes = 255;
    l->shard_index = 0;
    l->shard_count = 1;
}

sb_werr
sb_wire_err_of(sb_err e)
{
    switch (e) {
    case SB_OK: return SB_WERR_NONE;
    case SB_ETOOBIG: return SB_WERR_TOO_LARGE;
    case SB_EUNAUTH: return SB_WERR_UNAUTHORIZED;
    case SB_EDUP: return SB_WERR_DUPLICATE;
    case SB_ESTORAGE: return SB_WERR_STORAGE_FULL;
    case SB_ECLOSED: return SB_WERR_SHUTTING_DOWN;
    case SB_ENOTSUP: return SB_WERR_UNSUPPORTED;
    case SB_EPROTO: return SB_WERR_BAD_VERSION;
    case SB_ENOENT: return SB_WERR_OUT_OF_RETENTION;
    case SB_EWRONGSHARD: return SB_WERR_WRONG_SHARD;
    case SB_EHORIZON: return SB_WERR_BEYOND_DEDUP_HORIZON;
    case SB_EBUSY: return SB_WERR_BUSY;
    default: return SB_WERR_INVALID;
    }
}

/* ---- protobuf reading (common/sb_pbwire.h) ------------------------------ */

size_t
sb_wire_name_bad_at(const char *s, size_t n)
{
    return sb_utf8_bad_at(s, n);
}

int
sb_wire_name_ok(const char *s, size_t n)
{
    return sb_wire_name_bad_at(s, n) == SIZE_MAX;
}

/* Fields of Event this broker knows: 1 to the last one. */
#define S_EV_LAST_FIELD SB_PB_EVENT_HAS_SOURCE_POS

/* The Event fields that are strings or bytes. */
static int
s_ev_is_len(uint32_t num)
{
    return num == SB_PB_EVENT_AGGREGATE || num == SB_PB_EVENT_TYPE ||
           num == SB_PB_EVENT_PAYLOAD || num == SB_PB_EVENT_EVENT_ID ||
           num == SB_PB_EVENT_PRODUCER_ID;
}

/* First pass over one Event: bytes it needs (strings get a NUL). */
static int
s_event_size(const uint8_t *p, size_t n, size_t *bytes)
{
    sb_pb_reader r;
    sb_pb_field f = {0};

    sb_pb_reader_init(&r, p, n);
    int rc;

    while ((rc = sb_pb_next(&r, &f)) == 1) {
        if (f.num <= S_EV_LAST_FIELD && (f.wt == SB_PB_LEN) != s_ev_is_len(f.num))
            return -1;
        if (f.wt == SB_PB_LEN && s_ev_is_len(f.num))
            *bytes += f.len + 1;
    }
    return rc;
}

static void
s_set_status(sb_event *ev, sb_err e)
{
    if (ev->status == SB_OK)
        ev->status = (uint8_t) e;
}

/* The first failing check is the event's error, and what its reply's
 * detail describes. */
static void
s_refuse_ev(sb_event *ev, sb_err e, uint8_t why, uint32_t arg)
{
    if (ev->status != SB_OK)
        return;
    ev->status = (uint8_t) e;
    ev->why = why;
    ev->why_arg = arg;
}

static void
s_check_name(sb_event *ev, const char *s, uint32_t n, const sb_limits *lim,
             int required, uint8_t why)
{
    size_t at;

    if (n == 0) {
        if (required)
            s_refuse_ev(ev, SB_EINVAL, why, 0);
    } else if (n > lim->max_name_bytes) {
        s_refuse_ev(ev, SB_ETOOBIG, why, lim->max_name_bytes);
    } else if ((at = sb_wire_name_bad_at(s, n)) != SIZE_MAX) {
        s_refuse_ev(ev, SB_EINVAL, why, (uint32_t) at);
    }
}

/* Second pass: fills ev, copying bytes to *data. Fields repeated on the wire
 * take the last value, as protobuf says. */
static void
s_event_fill(sb_event *ev, const uint8_t *p, size_t n, uint8_t **data,
             const sb_limits *lim)
{
    sb_pb_reader r;
    sb_pb_field f = {0};

    sb_pb_reader_init(&r, p, n);

    while (sb_pb_next(&r, &f) == 1) {
        if (f.wt == SB_PB_LEN && s_ev_is_len(f.num)) {
            uint8_t *d = *data;
            memcpy(d, f.ptr, f.len);
            d[f.len] = 0;
            *data += f.len + 1;
            uint32_t len = f.len > UINT32_MAX ? UINT32_MAX : (uint32_t) f.len;
            switch (f.num) {
            case SB_PB_EVENT_AGGREGATE: ev->agg = (char *) d, ev->agg_len = len; break;
            case SB_PB_EVENT_TYPE: ev->type = (char *) d, ev->type_len = len; break;
            case SB_PB_EVENT_PAYLOAD: ev->payload = d, ev->payload_len = len; break;
            case SB_PB_EVENT_EVENT_ID: ev->event_id = (char *) d, ev->event_id_len = len; break;
            case SB_PB_EVENT_PRODUCER_ID: ev->producer_id = (char *) d, ev->producer_id_len = len; break;
            }
        } else if (f.wt == SB_PB_VARINT) {
            switch (f.num) {
            case SB_PB_EVENT_SOURCE_POS: ev->source_pos = f.v; break;
            case SB_PB_EVENT_CAUSED_BY: ev->caused_by = f.v; break;
            case SB_PB_EVENT_PRODUCER_SEQ: ev->producer_seq = f.v; break;
            case SB_PB_EVENT_CLIENT_TS_MS: ev->client_ts_ms = f.v; break;
            case SB_PB_EVENT_HAS_SOURCE_POS: ev->has_source_pos = f.v != 0; break;
            }
        }
    }
    if (ev->agg == NULL)
        ev->agg = "";
    if (ev->type == NULL)
        ev->type = "";
    s_check_name(ev, ev->agg, ev->agg_len, lim, 1, SB_WHY_AGGREGATE);
    s_check_name(ev, ev->type, ev->type_len, lim, 1, SB_WHY_TYPE);
    if (ev->event_id != NULL)
        s_check_name(ev, ev->event_id, ev->event_id_len, lim, 0,
                     SB_WHY_EVENT_ID);
    if (ev->producer_id != NULL)
        s_check_name(ev, ev->producer_id, ev->producer_id_len, lim, 0,
                     SB_WHY_PRODUCER_ID);
    if (ev->payload_len > lim->max_payload_bytes)
        s_refuse_ev(ev, SB_ETOOBIG, SB_WHY_PAYLOAD, lim->max_payload_bytes);
    if (lim->shard_count > 1 && ev->status == SB_OK) {
        /* Two brokers taking one aggregate would split its order in two:
         * a misrouted event is refused, never sequenced here. */
        uint32_t shard;
        if (sb_shard_of(ev->agg, ev->agg_len, lim->shard_count, &shard) ==
                SB_OK &&
            shard != lim->shard_index)
            s_set_status(ev, SB_EWRONGSHARD);
    }
}

static void
s_refuse(sb_wire_request *out, sb_werr e, const char *detail)
{
    out->err = e;
    out->detail = detail;
}

static sb_err
s_decode_publish(const uint8_t *p, size_t n, const sb_limits *lim,
                 sb_wire_request *out)
{
    sb_pb_reader r;
    sb_pb_field f = {0};

    sb_pb_reader_init(&r, p, n);
    uint64_t ack = 0, nev = 0;
    size_t bytes = 0;
    int rc;
    sb_req *req;
    uint8_t *data;

    sb_pb_reader_init(&r, p, n);
    while ((rc = sb_pb_next(&r, &f)) == 1) {
        if (f.num == SB_PB_PUBLISH_ACK) {
            if (f.wt != SB_PB_VARINT)
                return s_refuse(out, SB_WERR_INVALID, "publish.ack has the wrong wire type"), SB_OK;
            ack = f.v;
        } else if (f.num == SB_PB_PUBLISH_EVENTS) {
            if (f.wt != SB_PB_LEN)
                return s_refuse(out, SB_WERR_INVALID, "publish.events has the wrong wire type"), SB_OK;
            if (++nev > lim->max_events_per_request)
                return s_refuse(out, SB_WERR_TOO_LARGE, "too many events in one request"), SB_OK;
            if (s_event_size(f.ptr, f.len, &bytes) < 0)
                return s_refuse(out, SB_WERR_INVALID, "malformed event"), SB_OK;
        }
    }
    if (rc < 0)
        return s_refuse(out, SB_WERR_INVALID, "malformed publish"), SB_OK;
    if (nev == 0)
        return s_refuse(out, SB_WERR_INVALID, "publish without events"), SB_OK;
    if (ack > SB_ACK_PUBLISHED)
        return s_refuse(out, SB_WERR_INVALID, "unknown ack level"), SB_OK;

    if (sb_req_new(&req, (uint32_t) nev, bytes, &data) != SB_OK)
        return SB_ENOMEM;
    req->request_id = out->request_id;
    req->ack = (uint8_t) ack;
    sb_pb_reader_init(&r, p, n);
    uint32_t i = 0;
    while (sb_pb_next(&r, &f) == 1)
        if (f.num == SB_PB_PUBLISH_EVENTS)
            s_event_fill(&req->ev[i++], f.ptr, f.len, &data, lim);
    for (i = 0; i < req->nevents; i++)
        req->naccepted += req->ev[i].status == SB_OK;
    out->req = req;
    return SB_OK;
}

static void
s_decode_other(const uint8_t *p, size_t n, const sb_limits *lim,
               sb_wire_request *out)
{
    Snapbus__Request *m = snapbus__request__unpack(NULL, n, p);

    if (m == NULL) {
        s_refuse(out, SB_WERR_INVALID, "malformed request");
        return;
    }
    if (m->body_case == SNAPBUS__REQUEST__BODY_HELLO) {
        out->kind = SB_WREQ_HELLO;
    } else if (m->body_case == SNAPBUS__REQUEST__BODY_FETCH) {
        Snapbus__Fetch *f = m->fetch;
        size_t plen = f->prefix ? strlen(f->prefix) : 0;
        out->kind = SB_WREQ_FETCH;
        if (plen > lim->max_name_bytes || plen >= sizeof out->fetch.prefix)
            s_refuse(out, SB_WERR_TOO_LARGE, "fetch prefix too long");
        else if (plen > 0 && !sb_wire_name_ok(f->prefix, plen))
            s_refuse(out, SB_WERR_INVALID, "fetch prefix is not UTF-8");
        else if (f->to_seq != 0 && f->to_seq < f->from_seq)
            s_refuse(out, SB_WERR_INVALID, "fetch range is reversed");
        else {
            memcpy(out->fetch.prefix, f->prefix ? f->prefix : "", plen + 1);
            out->fetch.prefix_len = (uint32_t) plen;
            out->fetch.from_seq = f->from_seq;
            out->fetch.to_seq = f->to_seq;
            out->fetch.after_batch_id = f->after_batch_id;
            out->fetch.max_batches = f->max_batches;
            out->fetch.max_bytes = f->max_bytes;
            out->fetch.exact = f->exact != 0;
            out->fetch.headers_only = f->headers_only != 0;
        }
    } else {
        s_refuse(out, SB_WERR_INVALID, "request without a body");
    }
    snapbus__request__free_unpacked(m, NULL);
}

sb_err
sb_wire_decode_request(const void *buf, size_t len, const sb_limits *lim,
                       sb_wire_request *out)
{
    sb_pb_reader r;
    sb_pb_field f = {0}, body = {0};
    uint64_t version = 0;
    int rc;

    memset(out, 0, sizeof *out);
    if (len == 0) {
        s_refuse(out, SB_WERR_INVALID, "empty message");
        return SB_OK;
    }
    if (len > lim->max_message_bytes) {
        s_refuse(out, SB_WERR_TOO_LARGE, "message larger than max_message_bytes");
        return SB_OK;
    }
    /* Version and request id first, so even a refusal can be matched. */
    sb_pb_reader_init(&r, buf, len);
    while ((rc = sb_pb_next(&r, &f)) == 1) {
        int is_body = f.num == SB_PB_REQUEST_HELLO ||
                      f.num == SB_PB_REQUEST_PUBLISH ||
                      f.num == SB_PB_REQUEST_FETCH;
        if (f.num == SB_PB_REQUEST_VERSION && f.wt == SB_PB_VARINT)
            version = f.v;
        else if (f.num == SB_PB_REQUEST_REQUEST_ID && f.wt == SB_PB_VARINT)
            out->request_id = f.v;
        else if (is_body && f.wt == SB_PB_LEN)
            body = f;
        else if (f.num <= SB_PB_REQUEST_FETCH) /* a known field, mistyped */
            rc = -1;
        if (rc < 0)
            break;
    }
    if (rc < 0) {
        s_refuse(out, SB_WERR_INVALID, "malformed request");
        return SB_OK;
    }
    if (version != SB_WIRE_VERSION) {
        s_refuse(out, SB_WERR_BAD_VERSION, "unsupported protocol version");
        return SB_OK;
    }
    if (body.num == SB_PB_REQUEST_PUBLISH) {
        out->kind = SB_WREQ_PUBLISH;
        return s_decode_publish(body.ptr, body.len, lim, out);
    }
    if (body.num == 0) {
        s_refuse(out, SB_WERR_INVALID, "request without a body");
        return SB_OK;
    }
    s_decode_other(buf, len, lim, out);
    return SB_OK;
}

/* ---- protobuf writing -------------------------------------------------- */

/* The router marks events that joined another aggregate's batch, so the
 * encoder need not compare names per event. */
static int
s_foreign(const sb_batch *b, const sb_event *ev)
{
    (void) b;
    return ev->joined;
}

static size_t
s_sev_size(const sb_batch *b, const sb_event *ev)
{
    return sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_SEQ, ev->seq) +
           sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_AGGREGATE_SEQ, ev->agg_seq) +
           (s_foreign(b, ev)
                ? sb_pb_bytes_size(SB_PB_SEQUENCED_EVENT_AGGREGATE, ev->agg_len)
                : 0) +
           sb_pb_bytes_size(SB_PB_SEQUENCED_EVENT_TYPE, ev->type_len) +
           sb_pb_bytes_size(SB_PB_SEQUENCED_EVENT_PAYLOAD, ev->payload_len) +
           sb_pb_bytes_size(SB_PB_SEQUENCED_EVENT_EVENT_ID, ev->event_id_len) +
           sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_SOURCE_POS,
                           ev->has_source_pos ? ev->source_pos : 0) +
           sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_CAUSED_BY, ev->caused_by) +
           sb_pb_bytes_size(SB_PB_SEQUENCED_EVENT_PRODUCER_ID,
                            ev->producer_id_len) +
           sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_PRODUCER_SEQ,
                           ev->producer_seq) +
           sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_CLIENT_TS_MS,
                           ev->client_ts_ms) +
           sb_pb_uint_size(SB_PB_SEQUENCED_EVENT_HAS_SOURCE_POS,
                           ev->has_source_pos);
}

sb_err
sb_wire_encode_batch(const sb_batch *b, size_t hdr, uint8_t **bufp, size_t *lenp)
{
    size_t n = 0;
    uint64_t first = b->n ? b->ev[0]->seq : 0, last = b->n ? b->ev[b->n - 1]->seq : 0;
    uint64_t spos = b->has_source_pos ? b->source_pos : 0;

    n += sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_VERSION, SB_WIRE_VERSION) +
         sb_pb_bytes_size(SB_PB_SNAPSHOT_BATCH_AGGREGATE, b->agg_len) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_BATCH_ID, b->id) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_FIRST_SEQ, first) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_LAST_SEQ, last) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_AGGREGATE_LAST_SEQ, b->agg_last_seq) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_SOURCE_POS, spos) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_TIMESTAMP_MS, b->timestamp_ms) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_PREV_LAST_SEQ, b->prev_last_seq) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_CLOSE_REASON, b->close_reason) +
         sb_pb_uint_size(SB_PB_SNAPSHOT_BATCH_HAS_SOURCE_POS, b->has_source_pos);
    for (uint32_t i = 0; i < b->n; i++)
        n += sb_pb_msg_size(SB_PB_SNAPSHOT_BATCH_EVENTS, s_sev_size(b, b->ev[i]));

    uint8_t *buf = malloc(hdr + n), *p;
    if (buf == NULL)
        return SB_ENOMEM;
    memset(buf, 0, hdr);
    p = buf + hdr;
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_VERSION, SB_WIRE_VERSION);
    p = sb_pb_put_bytes(p, SB_PB_SNAPSHOT_BATCH_AGGREGATE, b->agg, b->agg_len);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_BATCH_ID, b->id);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_FIRST_SEQ, first);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_LAST_SEQ, last);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_AGGREGATE_LAST_SEQ, b->agg_last_seq);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_SOURCE_POS, spos);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_TIMESTAMP_MS, b->timestamp_ms);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_PREV_LAST_SEQ, b->prev_last_seq);
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_CLOSE_REASON, b->close_reason);
    /* has_source_pos before the events (protobuf allows any order):
     * everything but the events is then a prefix, the header a
     * headers_only fetch sends without copying. */
    p = sb_pb_put_uint(p, SB_PB_SNAPSHOT_BATCH_HAS_SOURCE_POS, b->has_source_pos);
    for (uint32_t i = 0; i < b->n; i++) {
        const sb_event *ev = b->ev[i];
        p = sb_pb_put_msg_head(p, SB_PB_SNAPSHOT_BATCH_EVENTS, s_sev_size(b, ev));
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_SEQ, ev->seq);
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_AGGREGATE_SEQ, ev->agg_seq);
        if (s_foreign(b, ev))
            p = sb_pb_put_bytes(p, SB_PB_SEQUENCED_EVENT_AGGREGATE, ev->agg, ev->agg_len);
        p = sb_pb_put_bytes(p, SB_PB_SEQUENCED_EVENT_TYPE, ev->type, ev->type_len);
        p = sb_pb_put_bytes(p, SB_PB_SEQUENCED_EVENT_PAYLOAD, ev->payload, ev->payload_len);
        p = sb_pb_put_bytes(p, SB_PB_SEQUENCED_EVENT_EVENT_ID, ev->event_id, ev->event_id_len);
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_SOURCE_POS,
                           ev->has_source_pos ? ev->source_pos : 0);
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_CAUSED_BY, ev->caused_by);
        p = sb_pb_put_bytes(p, SB_PB_SEQUENCED_EVENT_PRODUCER_ID, ev->producer_id,
                            ev->producer_id_len);
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_PRODUCER_SEQ, ev->producer_seq);
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_CLIENT_TS_MS, ev->client_ts_ms);
        p = sb_pb_put_uint(p, SB_PB_SEQUENCED_EVENT_HAS_SOURCE_POS, ev->has_source_pos);
    }
    *bufp = buf;
    *lenp = (size_t) (p - buf) - hdr;
    return SB_OK;
}

/* ---- replies through protobuf-c ---------------------------------------- */

static sb_err
s_pack_reply(Snapbus__Reply *m, uint8_t **bufp, size_t *lenp)
{
    size_t n = snapbus__reply__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);

    if (buf == NULL)
        return SB_ENOMEM;
    *lenp = snapbus__reply__pack(m, buf);
    *bufp = buf;
    return SB_OK;
}

sb_err
sb_wire_encode_error(uint64_t request_id, sb_werr err, const char *detail,
                     uint8_t **buf, size_t *len)
{
    Snapbus__Reply m = SNAPBUS__REPLY__INIT;

    m.version = SB_WIRE_VERSION;
    m.request_id = request_id;
    m.error = (Snapbus__ErrorCode) err;
    m.detail = (char *) (detail ? detail : "");
    return s_pack_reply(&m, buf, len);
}

/* The detail of a per-event refusal: the field, its value and the limit
 * (docs/PROTOCOL.md section 5.5). 0 when there is nothing to add to the
 * generic text. */
static int
s_why_detail(const sb_result *r, char *out, size_t n)
{
    static const char *const field[] = {"", "aggregate", "type", "event_id",
                                        "producer_id", "payload"};
    static const char *const limit[] = {"", "max_name_bytes", "max_name_bytes",
                                        "max_name_bytes", "max_name_bytes",
                                        "max_payload_bytes"};

    if (r->why == SB_WHY_NONE || r->why > SB_WHY_PAYLOAD)
        return 0;
    if (r->status == SB_ETOOBIG)
        snprintf(out, n, "%s %u B > limit %u (limits.%s)", field[r->why],
                 r->why_len, r->why_arg, limit[r->why]);
    else if (r->why_len == 0)
        snprintf(out, n, "%s is empty (it is required)", field[r->why]);
    else
        snprintf(out, n, "%s is not valid UTF-8 (or holds 0x00) at byte %u "
                 "(from 0)", field[r->why], r->why_arg);
    return 1;
}

sb_err
sb_wire_encode_publish_reply(const sb_reply *rp, uint8_t **buf, size_t *len)
{
    Snapbus__Reply m = SNAPBUS__REPLY__INIT;
    Snapbus__PublishReply pr = SNAPBUS__PUBLISH_REPLY__INIT;
    Snapbus__EventResult *res = calloc(rp->n ? rp->n : 1, sizeof *res);
    Snapbus__EventResult **resp = calloc(rp->n ? rp->n : 1, sizeof *resp);
    char(*det)[160] = NULL;
    sb_err rc;

    for (uint32_t i = 0; i < rp->n && det == NULL; i++)
        if (rp->r[i].why != SB_WHY_NONE)
            det = calloc(rp->n, sizeof *det);
    if (res == NULL || resp == NULL) {
        free(res);
        free(resp);
        free(det);
        return SB_ENOMEM;
    }
    for (uint32_t i = 0; i < rp->n; i++) {
        snapbus__event_result__init(&res[i]);
        res[i].error = (Snapbus__ErrorCode) sb_wire_err_of(rp->r[i].status);
        res[i].seq = rp->r[i].seq;
        res[i].aggregate_seq = rp->r[i].agg_seq;
        res[i].batch_id = rp->r[i].batch_id;
        if (rp->r[i].status != SB_OK)
            res[i].detail = (char *) sb_strerror(rp->r[i].status);
        if (det != NULL && s_why_detail(&rp->r[i], det[i], sizeof det[i]))
            res[i].detail = det[i];
        resp[i] = &res[i];
    }
    pr.ack = (Snapbus__AckLevel) rp->ack;
    pr.n_results = rp->n;
    pr.results = resp;
    m.version = SB_WIRE_VERSION;
    m.request_id = rp->request_id;
    m.body_case = SNAPBUS__REPLY__BODY_PUBLISH;
    m.publish = &pr;
    rc = s_pack_reply(&m, buf, len);
    free(res);
    free(resp);
    free(det);
    return rc;
}

size_t
sb_wire_batch_header_len(const uint8_t *p, size_t len)
{
    sb_pb_reader r;
    sb_pb_field f = {0}; /* gcc -O3 cannot see the reader always fills it */
    const uint8_t *at = p;

    /* sb_pb_next reads one field; stop in front of the first event. */
    sb_pb_reader_init(&r, p, len);
    while (sb_pb_next(&r, &f) == 1) {
        if (f.num == SB_PB_SNAPSHOT_BATCH_EVENTS)
            return (size_t) (at - p);
        at = r.p;
    }
    return len;
}

sb_err
sb_wire_encode_hello_reply(uint64_t request_id, const sb_hello_info *h,
                           uint8_t **buf, size_t *len)
{
    return sb_wire_encode_hello_reply_low(request_id, h, 0, buf, len);
}

sb_err
sb_wire_encode_hello_reply_low(uint64_t request_id, const sb_hello_info *h,
                               uint64_t low_seq, uint8_t **buf, size_t *len)
{
    Snapbus__Reply m = SNAPBUS__REPLY__INIT;
    Snapbus__HelloReply hr = SNAPBUS__HELLO_REPLY__INIT;

    hr.broker = (char *) h->broker;
    hr.max_message_bytes = h->limits.max_message_bytes;
    hr.max_events_per_request = h->limits.max_events_per_request;
    hr.max_payload_bytes = h->limits.max_payload_bytes;
    hr.max_name_bytes = h->limits.max_name_bytes;
    hr.last_seq = h->last_seq;
    hr.last_batch_id = h->last_batch_id;
    hr.epoch = h->epoch;
    hr.low_seq = low_seq;
    hr.shard_index = h->limits.shard_index;
    hr.shard_count = h->limits.shard_count;
    hr.end_batch_id = h->end_batch_id;
    m.version = SB_WIRE_VERSION;
    m.request_id = request_id;
    m.body_case = SNAPBUS__REPLY__BODY_HELLO;
    m.hello = &hr;
    return s_pack_reply(&m, buf, len);
}

sb_err
sb_wire_encode_epoch_end(uint64_t epoch, uint64_t last_batch_id,
                         uint64_t last_seq, uint64_t low_seq,
                         uint32_t linger_ms, uint8_t **buf, size_t *len)
{
    Snapbus__EpochEnd m = SNAPBUS__EPOCH_END__INIT;
    size_t n;

    m.version = SB_WIRE_VERSION;
    m.epoch = epoch;
    m.last_batch_id = last_batch_id;
    m.last_seq = last_seq;
    m.linger_ms = linger_ms;
    m.low_seq = low_seq;
    n = snapbus__epoch_end__get_packed_size(&m);
    if ((*buf = malloc(n ? n : 1)) == NULL)
        return SB_ENOMEM;
    *len = snapbus__epoch_end__pack(&m, *buf);
    return SB_OK;
}

sb_err
sb_wire_encode_fetch_reply(uint64_t request_id, sb_werr err, const char *detail,
                           const sb_fetch_page *f, uint8_t **buf, size_t *len)
{
    Snapbus__Reply m = SNAPBUS__REPLY__INIT;
    Snapbus__FetchReply fr = SNAPBUS__FETCH_REPLY__INIT;

    fr.count = f->count;
    fr.last_batch_id = f->last_batch_id;
    fr.more = f->more != 0;
    fr.retained_first_seq = f->retained_first_seq;
    fr.retained_first_batch_id = f->retained_first_batch_id;
    fr.last_seq = f->last_seq;
    fr.last_batch_id_published = f->last_batch_id_published;
    fr.epoch = f->epoch;
    fr.cursor_low_seq = f->cursor_low_seq;
    fr.end_batch_id = f->end_batch_id;
    m.version = SB_WIRE_VERSION;
    m.request_id = request_id;
    m.error = (Snapbus__ErrorCode) err;
    m.detail = (char *) (detail ? detail : "");
    m.body_case = SNAPBUS__REPLY__BODY_FETCH;
    m.fetch = &fr;
    return s_pack_reply(&m, buf, len);
}
