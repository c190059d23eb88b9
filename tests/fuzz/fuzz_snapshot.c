/* Fuzzes the client library's SnapshotBatch decoder, sb_snapshot_decode
 * (clients/c/src/sb_snapshot.c), which reads every batch a subscriber
 * receives and every batch a fetch returns. Its sources are compiled into
 * this program (the library hides them behind default visibility).
 *
 * Beyond memory safety, a decoded snapshot must be usable: every accessor
 * and every event is read, each string is walked to its end and each
 * payload byte touched. And it is checked against protobuf-c, the
 * reference reader of the same .proto: whatever protobuf-c reads as a
 * version 1 batch, sb_snapshot_decode must read too, with the same
 * fields and events, as long as every known field has its schema's wire
 * type. (With another wire type the two differ by design: the hand
 * decoder skips the field, as Google's parsers do, where protobuf-c
 * refuses the message or, for some scalars, reads it anyway.) */
#include <string.h>

#include "fuzz.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

/* ---- wire types: is every known field of the schema's type? ---------- */

static int
s_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        x |= (uint64_t) (b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Expected wire type of field f: 0 varint, 2 bytes, -1 unknown field. */
static int
s_batch_wt(uint64_t f)
{
    return f == 2 || f == 11 ? 2 : f >= 1 && f <= 12 ? 0 : -1;
}

static int
s_event_wt(uint64_t f)
{
    return (f >= 3 && f <= 6) || f == 9 ? 2 : f >= 1 && f <= 12 ? 0 : -1;
}

/* 1 if every known field (and every known field of every event) has the
 * schema's wire type; 0 otherwise or if the bytes do not parse. */
static int
s_types_match(const uint8_t *p, size_t n, int (*wt_of)(uint64_t))
{
    const uint8_t *end = p + n;
    while (p < end) {
        uint64_t key, v;
        /* Field numbers are 1 to 2^29 - 1; protobuf-c reads bigger tags
         * modulo 2^32 where the hand decoder (and Google's) refuses. */
        if (s_varint(&p, end, &key) != 0 || key >> 3 == 0 || key >> 3 > 0x1fffffff)
            return 0;
        int wt = (int) (key & 7), want = wt_of(key >> 3);
        if (want >= 0 && wt != want)
            return 0;
        switch (wt) {
        case 0:
            if (s_varint(&p, end, &v) != 0)
                return 0;
            break;
        case 1:
        case 5:
            if ((size_t) (end - p) < (wt == 1 ? 8u : 4u))
                return 0;
            p += wt == 1 ? 8 : 4;
            break;
        case 2:
            if (s_varint(&p, end, &v) != 0 || v > (uint64_t) (end - p))
                return 0;
            if (wt_of == s_batch_wt && key >> 3 == 11 &&
                !s_types_match(p, (size_t) v, s_event_wt))
                return 0;
            p += v;
            break;
        default:
            return 0;
        }
    }
    return 1;
}

static size_t
s_touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    size_t sum = 0;

    for (size_t i = 0; i < n; i++)
        sum += b[i];
    return sum;
}

/* protobuf-c leaves an absent string as "" and cuts nothing; the hand
 * decoder copies bytes up to the field's length and adds a NUL, so the two
 * agree up to the first NUL byte. */
static int
s_str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static void
s_compare(const sb_snapshot *s, const Snapbus__SnapshotBatch *m)
{
    FUZZ_CHECK(sb_snapshot_batch_id(s) == m->batch_id);
    FUZZ_CHECK(sb_snapshot_first_seq(s) == m->first_seq);
    FUZZ_CHECK(sb_snapshot_last_seq(s) == m->last_seq);
    FUZZ_CHECK(sb_snapshot_agg_last_seq(s) == m->aggregate_last_seq);
    FUZZ_CHECK(sb_snapshot_prev_last_seq(s) == m->prev_last_seq);
    FUZZ_CHECK(sb_snapshot_timestamp_ms(s) == m->timestamp_ms);
    FUZZ_CHECK((int) sb_snapshot_close_reason(s) == (int) m->close_reason);
    uint64_t pos = 0;
    FUZZ_CHECK(sb_snapshot_source_pos(s, &pos) == (m->has_source_pos != 0));
    FUZZ_CHECK(!m->has_source_pos || pos == m->source_pos);
    FUZZ_CHECK(s_str_eq(sb_snapshot_aggregate(s), m->aggregate));
    FUZZ_CHECK(sb_snapshot_count(s) == m->n_events);
    for (size_t i = 0; i < m->n_events; i++) {
        const Snapbus__SequencedEvent *pe = m->events[i];
        sb_snapshot_event e;
        FUZZ_CHECK(sb_snapshot_event_get(s, i, &e) == SB_OK);
        FUZZ_CHECK(e.seq == pe->seq);
        FUZZ_CHECK(e.agg_seq == pe->aggregate_seq);
        /* An event's aggregate is the batch's when the wire leaves it out. */
        FUZZ_CHECK(s_str_eq(e.aggregate, pe->aggregate && pe->aggregate[0]
                                             ? pe->aggregate
                                             : m->aggregate));
        FUZZ_CHECK(s_str_eq(e.type, pe->type));
        FUZZ_CHECK(s_str_eq(e.event_id, pe->event_id));
        FUZZ_CHECK(s_str_eq(e.producer_id, pe->producer_id));
        FUZZ_CHECK(e.payload_len == pe->payload.len);
        FUZZ_CHECK(e.payload_len == 0 ||
                   memcmp(e.payload, pe->payload.data, e.payload_len) == 0);
        FUZZ_CHECK(e.caused_by == pe->caused_by);
        FUZZ_CHECK(e.producer_seq == pe->producer_seq);
        FUZZ_CHECK(e.client_ts_ms == pe->client_ts_ms);
        FUZZ_CHECK((e.has_source_pos != 0) == (pe->has_source_pos != 0));
        FUZZ_CHECK(!pe->has_source_pos || e.source_pos == pe->source_pos);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_snapshot *s = NULL;
    sb_err rc = sb_snapshot_decode(&s, data, size);
    Snapbus__SnapshotBatch *m = snapbus__snapshot_batch__unpack(NULL, size, data);

    FUZZ_CHECK(rc == SB_OK || rc == SB_EPROTO || rc == SB_ENOMEM);
    FUZZ_CHECK((rc == SB_OK) == (s != NULL));
    int typed = m != NULL && s_types_match(data, size, s_batch_wt);
    if (typed && m->version == SB_PROTOCOL_VERSION)
        FUZZ_CHECK(rc == SB_OK);
    if (s != NULL) {
        const char *agg = sb_snapshot_aggregate(s);
        size_t n = sb_snapshot_count(s), sum = 0;
        sb_snapshot_event e;
        FUZZ_CHECK(agg != NULL);
        sum += s_touch(agg, strlen(agg));
        FUZZ_CHECK(n <= size / 2);
        for (size_t i = 0; i < n; i++) {
            FUZZ_CHECK(sb_snapshot_event_get(s, i, &e) == SB_OK);
            FUZZ_CHECK(e.aggregate && e.type && e.event_id && e.producer_id);
            sum += s_touch(e.aggregate, strlen(e.aggregate));
            sum += s_touch(e.type, strlen(e.type));
            sum += s_touch(e.event_id, strlen(e.event_id));
            sum += s_touch(e.producer_id, strlen(e.producer_id));
            FUZZ_CHECK(e.payload_len == 0 || e.payload != NULL);
            sum += s_touch(e.payload, e.payload_len);
            FUZZ_CHECK(e.has_source_pos || e.source_pos == 0);
        }
        FUZZ_CHECK(sb_snapshot_event_get(s, n, &e) == SB_EINVAL);
        (void) sum;
        if (typed)
            s_compare(s, m);
        sb_snapshot_destroy(&s);
        FUZZ_CHECK(s == NULL);
    }
    if (m != NULL)
        snapbus__snapshot_batch__free_unpacked(m, NULL);
    return 0;
}
