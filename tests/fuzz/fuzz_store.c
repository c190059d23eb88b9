/* Fuzzes the durable log's record codec (broker/sb_store_format.c,
 * sb_store_decode): the bytes of a log segment after a crash, a bad disk
 * or a hostile hand must at worst be refused (SB_EPROTO) or read as
 * incomplete (SB_EAGAIN), never crash, hang or leak. The files around the
 * records (segment headers, index, checkpoint) and the reader and
 * recovery that walk them are fuzzed by fuzz_logfiles.c.
 *
 * The input, after its first byte, is read as a run of records, the way a
 * reader walks a segment: each record decoded is checked (lengths,
 * pointers inside the record, batch seqs ascending) and encoded again,
 * and the re-encoding must decode to the same record. Record CRCs would
 * stop nearly every mutation at the first check, so with bit 2 of the
 * first byte set the harness fixes every header's magic and CRC up
 * before decoding: the fuzzer then reaches the code behind the checks. */
#include <string.h>

#include "fuzz.h"
#include "fuzz_log.h"
#include "sb_crc32c.h"
#include "sb_store.h"

static void
s_check_rec(const sb_store_rec *rec, const uint8_t *base, size_t avail)
{
    const uint8_t *body = base + SB_STORE_REC_HDR, *end = base + rec->size;

    FUZZ_CHECK(rec->size >= SB_STORE_REC_HDR && rec->size <= avail);
    FUZZ_CHECK(rec->key != 0);
    if (rec->type == SB_REC_EVENT) {
        const sb_event *ev = &rec->ev;
        FUZZ_CHECK(ev->seq == rec->key);
        FUZZ_CHECK(ev->agg_len > 0);
        FUZZ_CHECK((const uint8_t *) ev->agg >= body &&
                   (const uint8_t *) ev->agg + ev->agg_len <= end);
        FUZZ_CHECK((const uint8_t *) ev->type + ev->type_len <= end);
        FUZZ_CHECK(ev->payload >= body && ev->payload + ev->payload_len == end);
        FUZZ_CHECK(ev->event_id_len == 0 || ev->event_id != NULL);
        FUZZ_CHECK(ev->producer_id_len == 0 || ev->producer_id != NULL);
        FUZZ_CHECK(ev->has_source_pos <= 1);
    } else {
        const sb_store_batch_rec *b = &rec->batch;
        FUZZ_CHECK(rec->type == SB_REC_BATCH);
        FUZZ_CHECK(b->id == rec->key);
        FUZZ_CHECK(b->n > 0 && b->agg_len > 0);
        FUZZ_CHECK(b->close_reason <= SB_CLOSE_SHUTDOWN);
        FUZZ_CHECK((const uint8_t *) b->agg >= body &&
                   (const uint8_t *) b->agg + b->agg_len <= end);
        for (uint32_t i = 1; i < b->n; i++)
            FUZZ_CHECK(b->seqs[i] > b->seqs[i - 1]);
        FUZZ_CHECK(b->seqs[0] > 0);
    }
}

/* Encodes what was decoded again; it must decode to the same. */
static void
s_reencode(const sb_store_rec *rec)
{
    uint8_t *buf;
    size_t n;
    sb_store_rec again;
    uint64_t *seqs = NULL;
    size_t cap = 0;

    if (rec->type == SB_REC_EVENT) {
        n = sb_store_event_size(&rec->ev);
        FUZZ_CHECK(n <= rec->size);
        if ((buf = malloc(n)) == NULL)
            return;
        sb_store_encode_event(buf, &rec->ev);
        FUZZ_CHECK(sb_store_decode(buf, n, &again, &seqs, &cap, NULL) == SB_OK);
        FUZZ_CHECK(again.type == SB_REC_EVENT && again.size == n);
        FUZZ_CHECK(again.ev.seq == rec->ev.seq);
        FUZZ_CHECK(again.ev.agg_seq == rec->ev.agg_seq);
        FUZZ_CHECK(again.ev.agg_len == rec->ev.agg_len &&
                   memcmp(again.ev.agg, rec->ev.agg, rec->ev.agg_len) == 0);
        FUZZ_CHECK(again.ev.payload_len == rec->ev.payload_len);
        FUZZ_CHECK(rec->ev.payload_len == 0 ||
                   memcmp(again.ev.payload, rec->ev.payload,
                          rec->ev.payload_len) == 0);
        free(buf);
        free(seqs);
        return;
    }
    /* A batch: the encoder reads only the events' seqs. */
    const sb_store_batch_rec *br = &rec->batch;
    sb_batch *b;
    sb_event *evs = calloc(br->n, sizeof *evs);
    sb_event **ptrs = calloc(br->n, sizeof *ptrs);
    if (evs == NULL || ptrs == NULL || sb_batch_new(&b, br->agg, br->agg_len) != SB_OK) {
        free(evs);
        free(ptrs);
        return;
    }
    for (uint32_t i = 0; i < br->n; i++) {
        evs[i].seq = br->seqs[i];
        ptrs[i] = &evs[i];
    }
    b->ev = ptrs;
    b->n = br->n;
    b->id = br->id;
    b->timestamp_ms = br->timestamp_ms;
    b->prev_last_seq = br->prev_last_seq;
    b->agg_last_seq = br->agg_last_seq;
    b->source_pos = br->source_pos;
    b->has_source_pos = br->has_source_pos;
    b->close_reason = br->close_reason;
    n = sb_store_batch_size(b);
    if ((buf = malloc(n)) != NULL) {
        sb_store_encode_batch(buf, b);
        FUZZ_CHECK(sb_store_decode(buf, n, &again, &seqs, &cap, NULL) == SB_OK);
        FUZZ_CHECK(again.type == SB_REC_BATCH && again.size == n);
        FUZZ_CHECK(again.batch.id == br->id && again.batch.n == br->n);
        FUZZ_CHECK(memcmp(again.batch.seqs, br->seqs, br->n * sizeof *seqs) == 0);
        free(buf);
    }
    b->ev = NULL; /* not the batch's: no request references to drop */
    b->n = 0;
    sb_batch_destroy(&b);
    free(ptrs);
    free(evs);
    free(seqs);
}

static void
s_decode_run(const uint8_t *buf, size_t len)
{
    uint64_t *seqs = NULL;
    size_t cap = 0, off = 0;

    while (off < len) {
        sb_store_rec rec;
        size_t need = 0;
        sb_err rc = sb_store_decode(buf + off, len - off, &rec, &seqs, &cap, &need);
        if (rc == SB_EAGAIN) {
            FUZZ_CHECK(need == 0 || need > len - off);
            break;
        }
        if (rc != SB_OK) {
            FUZZ_CHECK(rc == SB_EPROTO || rc == SB_ENOMEM);
            break;
        }
        s_check_rec(&rec, buf + off, len - off);
        uint64_t *mine = NULL;
        if (rec.type == SB_REC_BATCH) { /* s_reencode reuses nothing of ours */
            mine = malloc(rec.batch.n * sizeof *mine);
            if (mine == NULL)
                break;
            memcpy(mine, rec.batch.seqs, rec.batch.n * sizeof *mine);
            rec.batch.seqs = mine;
        }
        s_reencode(&rec);
        free(mine);
        off += rec.size;
    }
    free(seqs);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf;
    size_t len;

    if (size < 1 || size > (1u << 20))
        return 0;
    len = size - 1;
    if ((buf = malloc(len ? len : 1)) == NULL)
        return 0;
    memcpy(buf, data + 1, len);
    if (data[0] & 4)
        fuzz_fix_records(buf, len, 0);
    s_decode_run(buf, len);
    free(buf);
    return 0;
}
