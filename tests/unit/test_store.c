/* The on-disk log core: record codec, append/write/sync, recovery of a torn
 * tail at every byte of the last record, index seeking, retention, failing
 * writes and syncs, checkpoints, rebuilding published batches. Each test
 * works in its own temporary directory. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "sb_clock.h"
#include "sb_log.h"
#include "sb_os.h"
#include "sb_store.h"
#include "sb_wire.h"

#define NAGGS 7

typedef struct {
    char dir[64];
    sb_store_config cfg;
    uint64_t next_seq;
    uint64_t next_batch;
    uint64_t agg_seq[NAGGS];
    sb_req **reqs; /* every request made, freed at teardown */
    size_t nreqs, capreqs;
} fx;

static int
setup(void **state)
{
    fx *f = calloc(1, sizeof *f);

    sbt_tmpdir(f->dir, sizeof f->dir, "store");
    sb_store_config_defaults(&f->cfg);
    snprintf(f->cfg.dir, sizeof f->cfg.dir, "%s/log", f->dir);
    f->cfg.segment_bytes = 1u << 20;
    f->cfg.index_every = 256;
    f->cfg.retain_age_s = 0;
    f->next_seq = 1;
    f->next_batch = 1;
    sbt_log_quiet();
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fx *f = *state;

    for (size_t i = 0; i < f->nreqs; i++)
        sb_req_unref(f->reqs[i]);
    free(f->reqs);
    sbt_rmtree(f->dir);
    sb_os_set_fault(NULL, NULL);
    sbt_log_restore();
    free(f);
    return 0;
}

/* n events with the next seqs; event i of aggregate "a/<seq % NAGGS>",
 * every optional field used on some. */
static sb_req *
s_events(fx *f, uint32_t n, size_t payload)
{
    sb_req *req;
    uint8_t *data;
    size_t per = 16 + 8 + 16 + 16 + payload;

    assert_int_equal(sb_req_new(&req, n, (size_t)n * per, &data), SB_OK);
    for (uint32_t i = 0; i < n; i++) {
        sb_event *ev = &req->ev[i];
        uint64_t seq = f->next_seq++;
        int a = (int)(seq % NAGGS);
        char *p = (char *)data;
        ev->agg = p;
        ev->agg_len = (uint32_t)sprintf(p, "a/%d", a);
        p += ev->agg_len + 1;
        ev->type = p;
        ev->type_len = (uint32_t)sprintf(p, "T%d", (int)(seq % 3));
        p += ev->type_len + 1;
        if (seq % 5 == 0) {
            ev->event_id = p;
            ev->event_id_len =
                (uint32_t)sprintf(p, "id-%llu", (unsigned long long)seq);
            p += ev->event_id_len + 1;
        }
        if (seq % 4 == 0) {
            ev->producer_id = p;
            ev->producer_id_len = (uint32_t)sprintf(p, "prod");
            p += ev->producer_id_len + 1;
            ev->producer_seq = seq * 3;
        }
        ev->payload = (uint8_t *)p;
        for (size_t k = 0; k < payload; k++)
            p[k] = (char)('a' + (seq + k) % 26);
        ev->payload_len = (uint32_t)payload;
        data = (uint8_t *)p + payload;
        ev->has_source_pos = seq % 2;
        ev->source_pos = ev->has_source_pos ? seq * 10 : 0;
        ev->caused_by = seq > 3 && seq % 3 == 0 ? seq - 2 : 0;
        ev->client_ts_ms = 1700000000000ull + seq;
        ev->seq = seq;
        ev->agg_seq = ++f->agg_seq[a];
    }
    req->naccepted = n;
    if (f->nreqs == f->capreqs) {
        f->capreqs = f->capreqs ? f->capreqs * 2 : 64;
        f->reqs = realloc(f->reqs, f->capreqs * sizeof *f->reqs);
    }
    f->reqs[f->nreqs++] = req;
    return req;
}

static void
s_add_events(fx *f, sb_store *s, sb_req *req)
{
    for (uint32_t i = 0; i < req->nevents; i++)
        assert_int_equal(sb_store_add_event(s, &req->ev[i]), SB_OK);
}

/* A batch of the events of req that belong to aggregate `a`. */
static sb_batch *
s_batch(fx *f, sb_req *req, int a, uint64_t prev_last)
{
    char agg[16];
    sb_batch *b;
    int n = sprintf(agg, "a/%d", a);

    assert_int_equal(sb_batch_new(&b, agg, (uint32_t)n), SB_OK);
    for (uint32_t i = 0; i < req->nevents; i++)
        if ((int)(req->ev[i].seq % NAGGS) == a) {
            assert_int_equal(sb_batch_push(b, &req->ev[i]), SB_OK);
            b->agg_last_seq = req->ev[i].agg_seq;
        }
    b->id = f->next_batch++;
    b->timestamp_ms = 1700000000123ull + b->id;
    b->prev_last_seq = prev_last;
    b->close_reason = (uint8_t)(b->id % 5);
    b->has_source_pos = b->id % 2;
    b->source_pos = b->has_source_pos ? b->id * 7 : 0;
    return b;
}

static void
s_event_eq(const sb_event *a, const sb_event *b)
{
    assert_int_equal(a->seq, b->seq);
    assert_int_equal(a->agg_seq, b->agg_seq);
    assert_int_equal(a->agg_len, b->agg_len);
    assert_memory_equal(a->agg, b->agg, a->agg_len);
    assert_int_equal(a->type_len, b->type_len);
    assert_memory_equal(a->type, b->type, a->type_len);
    assert_int_equal(a->payload_len, b->payload_len);
    if (a->payload_len)
        assert_memory_equal(a->payload, b->payload, a->payload_len);
    assert_int_equal(a->event_id_len, b->event_id_len);
    if (a->event_id_len)
        assert_memory_equal(a->event_id, b->event_id, a->event_id_len);
    assert_int_equal(a->producer_id_len, b->producer_id_len);
    if (a->producer_id_len)
        assert_memory_equal(a->producer_id, b->producer_id, a->producer_id_len);
    assert_int_equal(a->producer_seq, b->producer_seq);
    assert_int_equal(a->has_source_pos, b->has_source_pos);
    assert_int_equal(a->source_pos, b->source_pos);
    assert_int_equal(a->caused_by, b->caused_by);
    assert_int_equal(a->client_ts_ms, b->client_ts_ms);
}

static void
s_seg_file(const fx *f, uint64_t no, char *path, size_t n)
{
    snprintf(path, n, "%s/%020llu.seg", f->cfg.dir, (unsigned long long)no);
}

static uint64_t
s_file_size(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

/* ---- codec -------------------------------------------------------------- */

static void
test_record_roundtrip(void **state)
{
    fx *f = *state;
    sb_req *req = s_events(f, 20, 33);
    uint64_t *seqs = NULL;
    size_t cap = 0, need;
    sb_store_rec rec;

    for (uint32_t i = 0; i < req->nevents; i++) {
        size_t n = sb_store_event_size(&req->ev[i]);
        uint8_t *buf = malloc(n);
        sb_store_encode_event(buf, &req->ev[i]);
        assert_int_equal(sb_store_decode(buf, n, &rec, &seqs, &cap, &need),
                         SB_OK);
        assert_int_equal(rec.type, SB_REC_EVENT);
        assert_int_equal(rec.size, n);
        s_event_eq(&rec.ev, &req->ev[i]);
        /* Every prefix is incomplete, never "valid". */
        for (size_t k = 0; k < n; k++)
            assert_int_equal(sb_store_decode(buf, k, &rec, &seqs, &cap, &need),
                             SB_EAGAIN);
        /* Every flipped byte is caught. */
        for (size_t k = 0; k < n; k++) {
            buf[k] ^= 0x20;
            sb_err rc = sb_store_decode(buf, n, &rec, &seqs, &cap, &need);
            assert_true(rc == SB_EPROTO || rc == SB_EAGAIN);
            buf[k] ^= 0x20;
        }
        free(buf);
    }

    sb_batch *b = s_batch(f, req, 3, 0);
    size_t n = sb_store_batch_size(b);
    uint8_t *buf = malloc(n);
    sb_store_encode_batch(buf, b);
    assert_int_equal(sb_store_decode(buf, n, &rec, &seqs, &cap, &need), SB_OK);
    assert_int_equal(rec.type, SB_REC_BATCH);
    assert_int_equal(rec.batch.id, b->id);
    assert_int_equal(rec.batch.n, b->n);
    for (uint32_t i = 0; i < b->n; i++)
        assert_int_equal(rec.batch.seqs[i], b->ev[i]->seq);
    assert_int_equal(rec.batch.timestamp_ms, b->timestamp_ms);
    assert_int_equal(rec.batch.prev_last_seq, b->prev_last_seq);
    assert_int_equal(rec.batch.agg_last_seq, b->agg_last_seq);
    assert_int_equal(rec.batch.close_reason, b->close_reason);
    assert_int_equal(rec.batch.bytes, b->bytes);
    assert_int_equal(rec.batch.has_source_pos, b->has_source_pos);
    assert_int_equal(rec.batch.agg_len, 3);
    assert_memory_equal(rec.batch.agg, "a/3", 3);
    for (size_t k = 0; k < n; k++) {
        buf[k] ^= 0x01;
        sb_err rc = sb_store_decode(buf, n, &rec, &seqs, &cap, &need);
        assert_true(rc == SB_EPROTO || rc == SB_EAGAIN);
        buf[k] ^= 0x01;
    }
    free(buf);
    free(seqs);
    sb_batch_destroy(&b);
}

/* ---- append, reopen, read back ----------------------------------------- */

/* Writes `rounds` requests of `per` events, batching each aggregate's
 * events of a request except in the last `open_rounds` rounds. Returns the
 * seqs left unbatched in *unbatched (count). */
static void
s_fill(fx *f, sb_store *s, int rounds, uint32_t per, int open_rounds,
       size_t payload, uint64_t *topic_last)
{
    for (int r = 0; r < rounds; r++) {
        sb_req *req = s_events(f, per, payload + (size_t)r % 17);
        s_add_events(f, s, req);
        if (r < rounds - open_rounds)
            for (int a = 0; a < NAGGS; a++) {
                sb_batch *b = s_batch(f, req, a, topic_last[a]);
                if (b->n > 0) {
                    assert_int_equal(sb_store_add_batch(s, b), SB_OK);
                    topic_last[a] = b->ev[b->n - 1]->seq;
                } else {
                    f->next_batch--;
                }
                sb_batch_destroy(&b);
            }
        assert_int_equal(sb_store_write(s), SB_OK);
        if (r % 3 == 0)
            assert_int_equal(sb_store_sync(s), SB_OK);
    }
    assert_int_equal(sb_store_sync(s), SB_OK);
}

static void
s_check_all(fx *f, uint64_t first)
{
    sb_store_reader *r;
    sb_store_rec rec;
    uint64_t want = first;
    size_t k = 0;

    assert_int_equal(sb_store_reader_open(&r, f->cfg.dir), SB_OK);
    sb_store_reader_set_strict(r, 1);
    assert_int_equal(sb_store_reader_seek_start(r), SB_OK);
    sb_err rc;
    while ((rc = sb_store_reader_next(r, &rec)) == SB_OK) {
        if (rec.type != SB_REC_EVENT)
            continue;
        assert_int_equal(rec.key, want);
        /* Find the original. */
        while (k < f->nreqs &&
               f->reqs[k]->ev[f->reqs[k]->nevents - 1].seq < want)
            k++;
        assert_true(k < f->nreqs);
        sb_req *req = f->reqs[k];
        s_event_eq(&rec.ev, &req->ev[want - req->ev[0].seq]);
        want++;
    }
    assert_int_equal(rc, SB_ENOENT);
    assert_int_equal(want, f->next_seq);
    sb_store_reader_close(&r);
}

static void
test_append_reopen_recovers_state(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_store_recovery rec;
    uint64_t topic_last[NAGGS] = {0};

    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.last_seq, 0);
    assert_int_equal(rec.last_batch_id, 0);
    sb_store_recovery_free(&rec);
    s_fill(f, s, 40, 25, 2, 40, topic_last);
    sb_store_close(&s); /* like a crash: no checkpoint */

    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    assert_int_equal(rec.last_batch_id, f->next_batch - 1);
    assert_int_equal(rec.torn, 0);
    assert_int_equal(rec.naggs, NAGGS);
    for (size_t i = 0; i < rec.naggs; i++) {
        int a = atoi(rec.aggs[i].name + 2);
        assert_int_equal(rec.aggs[i].agg_seq, f->agg_seq[a]);
        assert_int_equal(rec.aggs[i].topic_last_seq, topic_last[a]);
    }
    /* The last two requests were never batched. */
    assert_int_equal(rec.nunbatched, 50);
    for (size_t i = 0; i < rec.nunbatched; i++)
        assert_int_equal(rec.unbatched[i], f->next_seq - 50 + i);
    sb_store_recovery_free(&rec);
    sb_store_close(&s);
    s_check_all(f, 1);
}

static void
test_gap_and_order_refused(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_req *req = s_events(f, 3, 4);

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    assert_int_equal(sb_store_add_event(s, &req->ev[1]), SB_EINVAL);
    assert_int_equal(sb_store_add_event(s, &req->ev[0]), SB_OK);
    assert_int_equal(sb_store_add_event(s, &req->ev[0]), SB_EINVAL);
    /* A batch naming an event not yet in the log. */
    sb_batch *b = s_batch(f, req, (int)(req->ev[2].seq % NAGGS), 0);
    assert_int_equal(sb_store_add_batch(s, b), SB_EINVAL);
    sb_batch_destroy(&b);
    sb_store_close(&s);
}

/* ---- torn tail ---------------------------------------------------------- */

static void
s_write_bytes(const char *path, const uint8_t *buf, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
    close(fd);
}

static void
test_torn_tail_at_every_offset(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_store_recovery rec;
    char path[600];
    uint64_t prev_end, full;
    uint8_t *pristine;
    uint64_t topic_last[NAGGS] = {0};

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 3, 10, 0, 20, topic_last);
    s_seg_file(f, 1, path, sizeof path);
    prev_end = s_file_size(path);
    /* The last record: one event. */
    sb_req *req = s_events(f, 1, 57);
    s_add_events(f, s, req);
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_sync(s), SB_OK);
    sb_store_close(&s);
    full = s_file_size(path);
    assert_true(full > prev_end);
    pristine = malloc(full);
    int fd = open(path, O_RDONLY);
    assert_int_equal(read(fd, pristine, full), (ssize_t)full);
    close(fd);

    /* Cut at every offset inside the last record. */
    for (uint64_t cut = prev_end; cut < full; cut++) {
        s_write_bytes(path, pristine, cut);
        assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
        assert_int_equal(rec.torn, cut > prev_end);
        assert_int_equal(rec.last_seq, f->next_seq - 2);
        assert_int_equal(sb_store_last_seq(s), f->next_seq - 2);
        sb_store_recovery_free(&rec);
        sb_store_close(&s);
        assert_int_equal(s_file_size(path), prev_end);
    }
    /* Damage every byte of it instead (a torn write can leave garbage). */
    for (uint64_t at = prev_end; at < full; at++) {
        pristine[at] ^= 0x5a;
        s_write_bytes(path, pristine, full);
        pristine[at] ^= 0x5a;
        assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
        assert_int_equal(rec.torn, 1);
        assert_int_equal(rec.torn_bytes, full - prev_end);
        assert_int_equal(rec.last_seq, f->next_seq - 2);
        sb_store_recovery_free(&rec);
        sb_store_close(&s);
        assert_int_equal(s_file_size(path), prev_end);
    }
    /* Intact: nothing truncated, and the numbering goes on after it. */
    s_write_bytes(path, pristine, full);
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.torn, 0);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    sb_store_recovery_free(&rec);
    sb_store_close(&s);
    free(pristine);
    s_check_all(f, 1);
}

static void
test_damage_in_sealed_segment_refuses_open(void **state)
{
    fx *f = *state;
    sb_store *s;
    char path[600];
    uint64_t topic_last[NAGGS] = {0};

    f->cfg.segment_bytes = 4096;
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 30, 10, 0, 30, topic_last);
    sb_store_close(&s);
    /* No checkpoint: recovery scans everything, sealed segments too. */
    snprintf(path, sizeof path, "%s/checkpoint", f->cfg.dir);
    assert_int_equal(unlink(path), 0);
    s_seg_file(f, 2, path, sizeof path);
    int fd = open(path, O_RDWR);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, 200), 1);
    b ^= 0xff;
    assert_int_equal(pwrite(fd, &b, 1, 200), 1);
    close(fd);
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_EPROTO);
}

/* ---- index -------------------------------------------------------------- */

static void
s_seek_all(fx *f)
{
    sb_store_reader *r;
    sb_store_rec rec;
    sb_store_seg_info last;

    assert_int_equal(sb_store_reader_open(&r, f->cfg.dir), SB_OK);
    assert_true(sb_store_reader_segments(r) > 10);
    assert_int_equal(
        sb_store_reader_segment(r, sb_store_reader_segments(r) - 1, &last),
        SB_OK);
    for (uint64_t seq = 1; seq < f->next_seq; seq++) {
        int steps = 0;
        assert_int_equal(sb_store_reader_seek_seq(r, seq), SB_OK);
        do {
            assert_int_equal(sb_store_reader_next(r, &rec), SB_OK);
            assert_true(rec.type != SB_REC_EVENT || rec.key <= seq);
            steps++;
        } while (rec.type != SB_REC_EVENT || rec.key != seq);
        /* The index keeps the scan short: index_every is 256 bytes. (The
         * active segment has no index file yet: a reader indexes it more
         * coarsely by itself.) */
        if (seq < last.base_seq) {
            sb_store_seg_info g = {0};
            for (size_t i = 0; i < sb_store_reader_segments(r); i++) {
                sb_store_seg_info x;
                sb_store_reader_segment(r, i, &x);
                if (x.base_seq <= seq)
                    g = x;
            }
            if (g.has_index_file)
                assert_true(steps <= 12);
        }
    }
    for (uint64_t id = 1; id < f->next_batch; id++) {
        assert_int_equal(sb_store_reader_seek_batch(r, id), SB_OK);
        do
            assert_int_equal(sb_store_reader_next(r, &rec), SB_OK);
        while (rec.type != SB_REC_BATCH || rec.key != id);
    }
    /* Past the end: only batch records may follow, then the end. */
    assert_int_equal(sb_store_reader_seek_seq(r, f->next_seq), SB_OK);
    sb_err rc;
    while ((rc = sb_store_reader_next(r, &rec)) == SB_OK)
        assert_true(rec.type == SB_REC_BATCH || rec.key < f->next_seq);
    assert_int_equal(rc, SB_ENOENT);
    sb_store_reader_close(&r);
}

static void
test_index_seeks_every_seq_and_batch(void **state)
{
    fx *f = *state;
    sb_store *s;
    uint64_t topic_last[NAGGS] = {0};
    char path[600];

    f->cfg.segment_bytes = 8192;
    f->cfg.index_every = 256;
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 60, 13, 0, 24, topic_last);
    /* With the writer still open (the active segment has no index file). */
    s_seek_all(f);
    sb_store_close(&s);
    /* Index files of sealed segments gone or damaged: rebuilt by scan. */
    snprintf(path, sizeof path, "%s/%020d.idx", f->cfg.dir, 2);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof path, "%s/%020d.idx", f->cfg.dir, 3);
    s_write_bytes(path, (const uint8_t *)"garbage", 7);
    s_seek_all(f);
    s_check_all(f, 1);
}

/* ---- retention ---------------------------------------------------------- */

static void
test_retention_by_bytes_keeps_active_and_needed(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_store_stats st;
    uint32_t deleted;
    uint64_t topic_last[NAGGS] = {0};

    f->cfg.segment_bytes = 4096;
    f->cfg.retain_bytes = 5 * 4096;
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    /* The first request's events stay unbatched: they pin segment 1. */
    sb_req *first = s_events(f, 5, 10);
    s_add_events(f, s, first);
    s_fill(f, s, 80, 10, 0, 30, topic_last);
    assert_int_equal(sb_store_retain(s, 0, &deleted), SB_OK);
    assert_int_equal(deleted, 0);
    sb_store_stats_get(s, &st);
    assert_true(st.segments > 10);
    /* Batch them; the next seal's checkpoint lets retention go on. */
    for (int a = 0; a < NAGGS; a++) {
        sb_batch *b = s_batch(f, first, a, 0);
        if (b->n > 0)
            assert_int_equal(sb_store_add_batch(s, b), SB_OK);
        else
            f->next_batch--;
        sb_batch_destroy(&b);
    }
    s_fill(f, s, 5, 10, 0, 30, topic_last);
    assert_int_equal(sb_store_retain(s, 0, &deleted), SB_OK);
    assert_true(deleted > 0);
    sb_store_stats_get(s, &st);
    assert_true(st.bytes <= f->cfg.retain_bytes + 4096);
    assert_true(st.segments >= 1);
    assert_true(st.first_seq > 1);
    uint64_t first_kept = st.first_seq;
    sb_store_close(&s);

    /* Reopen: the checkpoint carries what the deleted segments knew. */
    sb_store_recovery rec;
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    assert_int_equal(rec.first_seq, first_kept);
    assert_int_equal(rec.naggs, NAGGS);
    for (size_t i = 0; i < rec.naggs; i++)
        assert_int_equal(rec.aggs[i].agg_seq,
                         f->agg_seq[atoi(rec.aggs[i].name + 2)]);
    sb_store_recovery_free(&rec);
    sb_store_close(&s);

    sb_store_reader *r;
    assert_int_equal(sb_store_reader_open(&r, f->cfg.dir), SB_OK);
    assert_int_equal(sb_store_reader_first_seq(r), first_kept);
    assert_int_equal(sb_store_reader_seek_seq(r, first_kept - 1), SB_ENOENT);
    assert_int_equal(sb_store_reader_seek_seq(r, first_kept), SB_OK);
    sb_store_reader_close(&r);
}

static void
test_retention_by_age(void **state)
{
    fx *f = *state;
    sb_store *s;
    uint32_t deleted;
    uint64_t topic_last[NAGGS] = {0};
    sb_store_stats st;

    f->cfg.segment_bytes = 4096;
    f->cfg.retain_age_s = 3600;
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 30, 10, 0, 30, topic_last);
    sb_store_stats_get(s, &st);
    uint64_t nsegs = st.segments;
    /* Nothing is an hour old yet. */
    assert_int_equal(sb_store_retain(s, sb_clock_wall_ms(), &deleted), SB_OK);
    assert_int_equal(deleted, 0);
    /* A checkpoint at the end: no event is waiting for its batch, so no
     * sealed segment is needed by recovery any more. */
    assert_int_equal(sb_store_checkpoint(s), SB_OK);
    /* Two hours later every sealed segment is too old; the active stays. */
    assert_int_equal(sb_store_retain(s, sb_clock_wall_ms() + 7200000, &deleted),
                     SB_OK);
    assert_int_equal(deleted, nsegs - 1);
    sb_store_stats_get(s, &st);
    assert_int_equal(st.segments, 1);
    sb_store_close(&s);

    sb_store_recovery rec;
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    assert_int_equal(rec.last_batch_id, f->next_batch - 1);
    sb_store_recovery_free(&rec);
    sb_store_close(&s);
}

/* ---- failing writes and syncs ------------------------------------------- */

typedef struct {
    int fail_op; /* sb_os_op to fail, 0: none */
    size_t partial;
    int err;
    int calls;
} fault;

static int
s_fault(sb_os_op op, size_t *len, void *ctx)
{
    fault *x = ctx;

    if ((int)op != x->fail_op)
        return 0;
    x->calls++;
    if (len != NULL && *len > x->partial)
        *len = x->partial;
    return x->err;
}

static void
test_full_disk_write_changes_nothing_then_retry(void **state)
{
    fx *f = *state;
    sb_store *s;
    char path[600];
    uint64_t topic_last[NAGGS] = {0};
    fault x = {SB_OS_OP_WRITE, 100, ENOSPC, 0};

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 3, 10, 0, 20, topic_last);
    s_seg_file(f, 1, path, sizeof path);
    uint64_t before = s_file_size(path);

    sb_req *req = s_events(f, 20, 50);
    s_add_events(f, s, req);
    sb_os_set_fault(s_fault, &x);
    /* A partial write, then ENOSPC: the part is cut off again. */
    assert_int_equal(sb_store_write(s), SB_ESTORAGE);
    assert_int_equal(s_file_size(path), before);
    assert_true(sb_store_pending(s) > 0);
    x.err = EDQUOT;
    x.partial = 0;
    assert_int_equal(sb_store_write(s), SB_ESTORAGE);
    x.err = EIO;
    assert_int_equal(sb_store_write(s), SB_ESTORAGE);
    assert_int_equal(s_file_size(path), before);
    /* More arrives while full: it waits with the rest. */
    sb_req *more = s_events(f, 5, 10);
    s_add_events(f, s, more);
    /* Space is back. */
    sb_os_set_fault(NULL, NULL);
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_pending(s), 0);
    assert_int_equal(sb_store_sync(s), SB_OK);
    sb_store_close(&s);
    s_check_all(f, 1);

    sb_store_recovery rec;
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.torn, 0);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    sb_store_recovery_free(&rec);
    sb_store_close(&s);
}

static void
test_failed_sync_rewrites_tail(void **state)
{
    fx *f = *state;
    sb_store *s;
    char path[600];
    uint64_t topic_last[NAGGS] = {0};
    fault x = {SB_OS_OP_SYNC, 0, EIO, 0};

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 3, 10, 0, 20, topic_last);
    s_seg_file(f, 1, path, sizeof path);
    uint64_t synced = s_file_size(path);

    sb_req *req = s_events(f, 20, 50);
    s_add_events(f, s, req);
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_true(s_file_size(path) > synced);
    sb_os_set_fault(s_fault, &x);
    assert_int_equal(sb_store_sync(s), SB_ESTORAGE);
    /* Not durable, so not kept on disk: written again from memory. */
    assert_int_equal(s_file_size(path), synced);
    assert_true(sb_store_pending(s) > 0);
    assert_int_equal(sb_store_unsynced(s), 0);
    sb_os_set_fault(NULL, NULL);
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_sync(s), SB_OK);
    sb_store_close(&s);
    s_check_all(f, 1);
}

static void
test_failed_segment_creation_retries(void **state)
{
    fx *f = *state;
    sb_store *s;
    uint64_t topic_last[NAGGS] = {0};
    fault x = {SB_OS_OP_CREATE, 0, ENOSPC, 0};

    f->cfg.segment_bytes = 4096;
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 5, 10, 0, 30, topic_last);
    assert_int_equal(sb_store_reserved(s), 1);
    sb_req *req = s_events(f, 60, 40); /* needs a new segment */
    s_add_events(f, s, req);
    sb_os_set_fault(s_fault, &x);
    /* The reserved spare becomes the next segment; no new one can be
     * reserved: the store says so before it runs out. */
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_reserved(s), 0);
    assert_int_equal(sb_store_reserve(s), SB_ESTORAGE);
    /* Past that segment too, writes fail and nothing changes. */
    sb_req *more = s_events(f, 120, 40);
    s_add_events(f, s, more);
    assert_int_equal(sb_store_write(s), SB_ESTORAGE);
    assert_true(x.calls > 0);
    assert_true(sb_store_pending(s) > 0);
    sb_os_set_fault(NULL, NULL);
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_sync(s), SB_OK);
    assert_int_equal(sb_store_reserve(s), SB_OK);
    assert_int_equal(sb_store_reserved(s), 1);
    sb_store_close(&s);
    s_check_all(f, 1);
}

/* ---- checkpoints -------------------------------------------------------- */

static void
test_checkpoint_makes_recovery_short(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_store_recovery rec;
    uint64_t topic_last[NAGGS] = {0};

    f->cfg.segment_bytes = 4096;
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    s_fill(f, s, 50, 10, 3, 30, topic_last);
    sb_store_close(&s); /* crash: the last checkpoint is from a seal */
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.from_checkpoint, 1);
    assert_true(rec.records_scanned < 200);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    assert_int_equal(rec.nunbatched, 30);
    sb_store_recovery_free(&rec);
    /* Clean shutdown: write and sync everything, then the checkpoint. */
    assert_int_equal(sb_store_checkpoint(s), SB_OK);
    sb_store_close(&s);
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    assert_int_equal(rec.from_checkpoint, 1);
    assert_int_equal(rec.last_seq, f->next_seq - 1);
    assert_int_equal(rec.last_batch_id, f->next_batch - 1);
    assert_int_equal(rec.nunbatched, 30);
    for (size_t i = 0; i < rec.naggs; i++) {
        int a = atoi(rec.aggs[i].name + 2);
        assert_int_equal(rec.aggs[i].agg_seq, f->agg_seq[a]);
        assert_int_equal(rec.aggs[i].topic_last_seq, topic_last[a]);
    }
    sb_store_recovery_free(&rec);
    sb_store_close(&s);
}

/* ---- batches read back -------------------------------------------------- */

static void
test_batch_rebuilt_encodes_identically(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_batch *orig[NAGGS];
    uint8_t *a, *b;
    size_t alen, blen;

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    sb_req *req = s_events(f, 50, 21);
    s_add_events(f, s, req);
    for (int i = 0; i < NAGGS; i++) {
        orig[i] = s_batch(f, req, i, 0);
        assert_int_equal(sb_store_add_batch(s, orig[i]), SB_OK);
    }
    assert_int_equal(sb_store_write(s), SB_OK);

    sb_store_reader *r;
    sb_store_rec rec;
    int seen = 0;
    uint64_t done = 0;
    assert_int_equal(sb_store_reader_open(&r, f->cfg.dir), SB_OK);
    assert_int_equal(sb_store_reader_seek_batch(r, orig[0]->id), SB_OK);
    while (sb_store_reader_next(r, &rec) == SB_OK) {
        if (rec.type != SB_REC_BATCH || rec.key <= done)
            continue;
        sb_batch *rb;
        sb_batch *o = orig[rec.key - orig[0]->id];
        uint64_t next = rec.key;
        assert_int_equal(sb_store_reader_batch(r, &rec.batch, &rb), SB_OK);
        assert_int_equal(sb_wire_encode_batch(o, 0, &a, &alen), SB_OK);
        assert_int_equal(sb_wire_encode_batch(rb, 0, &b, &blen), SB_OK);
        assert_int_equal(alen, blen);
        assert_memory_equal(a, b, alen);
        free(a);
        free(b);
        sb_batch_destroy(&rb);
        seen++;
        done = next;
        /* Loading moved the reader: go back to after this batch. */
        if (sb_store_reader_seek_batch(r, next + 1) != SB_OK)
            break;
    }
    assert_int_equal(seen, NAGGS);
    sb_store_reader_close(&r);
    for (int i = 0; i < NAGGS; i++)
        sb_batch_destroy(&orig[i]);
    sb_store_close(&s);
}

static void
test_reader_never_reads_half_a_record(void **state)
{
    fx *f = *state;
    sb_store *s;
    sb_store_reader *r;
    sb_store_rec rec;
    char path[600];

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    sb_req *req = s_events(f, 10, 30);
    s_add_events(f, s, req);
    assert_int_equal(sb_store_write(s), SB_OK);
    s_seg_file(f, 1, path, sizeof path);
    /* A writer in the middle of a record: append half of one by hand. */
    sb_req *more = s_events(f, 1, 300);
    size_t n = sb_store_event_size(&more->ev[0]);
    uint8_t *buf = malloc(n);
    sb_store_encode_event(buf, &more->ev[0]);
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_int_equal(write(fd, buf, n / 2), (ssize_t)(n / 2));
    close(fd);
    free(buf);
    assert_int_equal(sb_store_reader_open(&r, f->cfg.dir), SB_OK);
    assert_int_equal(sb_store_reader_seek_start(r), SB_OK);
    int events = 0;
    sb_err rc;
    while ((rc = sb_store_reader_next(r, &rec)) == SB_OK)
        events++;
    assert_int_equal(rc, SB_ENOENT);
    assert_int_equal(events, 10);
    sb_store_reader_set_strict(r, 1);
    assert_int_equal(sb_store_reader_next(r, &rec), SB_EPROTO);
    sb_store_reader_close(&r);
    sb_store_close(&s);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_record_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_reopen_recovers_state,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_gap_and_order_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_at_every_offset, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_damage_in_sealed_segment_refuses_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_seeks_every_seq_and_batch,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_retention_by_bytes_keeps_active_and_needed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_full_disk_write_changes_nothing_then_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_sync_rewrites_tail, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_segment_creation_retries,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_makes_recovery_short,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_rebuilt_encodes_identically,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_never_reads_half_a_record,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
