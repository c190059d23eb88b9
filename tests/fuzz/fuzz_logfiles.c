/* Fuzzes what reads the durable log's files (broker/sb_store_reader.c,
 * sb_store_recovery.c): the reader (sb_store_reader_*, which a fetch from
 * the log and the CLI use)
 * and recovery (sb_store_open), over a segment file and a checkpoint made
 * of fuzzed bytes. Whatever is in the log directory after a crash, a bad
 * disk or a hostile hand must at worst be refused (SB_EPROTO) or cut off
 * as a torn tail, never crash, hang or leak. The record codec alone is
 * fuzzed, much faster, by fuzz_store.c.
 *
 * The first input byte picks what runs; the rest is file content:
 *   bit 0 clear  a reader over the bytes as segment 1: every record in
 *                turn, each batch rebuilt from its events
 *                (sb_store_reader_batch) and encoded as the SnapshotBatch
 *                a fetch would send, then seeks by seq and by batch id
 *                and a load of two events;
 *   bit 0 set    recovery (sb_store_open) over the bytes as segment 1,
 *                plus a checkpoint file when the input holds its magic
 *                "SBLOGCKP" (the checkpoint is that magic and everything
 *                after it).
 * Record CRCs would stop nearly every mutation at the first check, so with
 * bit 2 set the harness fixes them up (and the segment header, and the
 * checkpoint's trailing CRC) before reading. Files go to a private
 * directory under /dev/shm (or $TMPDIR), emptied after every input. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "fuzz_log.h"
#include "sb_crc32c.h"
#include "sb_log.h"
#include "sb_store.h"
#include "sb_wire.h"
#include "snapbus.pb-c.h"

#define S_SEG_NAME "00000000000000000001.seg"

static char s_dir[256];

/* Segment 1's header, valid, with the base seq and batch id it held. */
static void
s_fix_seghdr(uint8_t *buf, size_t len)
{
    if (len < SB_STORE_SEG_HDR)
        return;
    uint64_t base_seq = buf[24] ? buf[24] : 1, base_batch = buf[32] ? buf[32] : 1;
    memcpy(buf, "SBLOGSEG", 8);
    fuzz_put32(buf + 8, 1);
    fuzz_put32(buf + 12, SB_STORE_SEG_HDR);
    fuzz_put64(buf + 16, 1);
    fuzz_put64(buf + 24, base_seq);
    fuzz_put64(buf + 32, base_batch);
    fuzz_put32(buf + 60, sb_crc32c(0, buf, 60));
}

static void
s_write(const char *name, const uint8_t *p, size_t n)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FUZZ_CHECK((f = fopen(path, "wb")) != NULL);
    FUZZ_CHECK(n == 0 || fwrite(p, 1, n, f) == n);
    FUZZ_CHECK(fclose(f) == 0);
}

static void
s_clean(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            s_clean(path);
            rmdir(path);
        } else {
            unlink(path);
        }
    }
    closedir(d);
}

/* A batch rebuilt from the log encodes to what was published: protobuf-c
 * reads it back, and every event keeps its own aggregate (written when
 * it is not the batch's, as for an event that joined through caused_by). */
static void
s_check_encoded(const sb_batch *b)
{
    uint8_t *out;
    size_t n;

    if (sb_wire_encode_batch(b, 0, &out, &n) != SB_OK)
        return;
    Snapbus__SnapshotBatch *m = snapbus__snapshot_batch__unpack(NULL, n, out);
    FUZZ_CHECK(m != NULL && m->n_events == b->n);
    for (uint32_t i = 0; i < b->n; i++) {
        const sb_event *ev = b->ev[i];
        const char *agg = m->events[i]->aggregate && m->events[i]->aggregate[0]
                              ? m->events[i]->aggregate
                              : m->aggregate;
        FUZZ_CHECK(m->events[i]->seq == ev->seq);
        /* Names are compared up to a NUL: the log may hold anything. */
        FUZZ_CHECK(strncmp(agg, ev->agg, ev->agg_len) == 0 ||
                   memchr(ev->agg, 0, ev->agg_len) != NULL);
    }
    snapbus__snapshot_batch__free_unpacked(m, NULL);
    free(out);
}

static void
s_reader(uint64_t probe)
{
    sb_store_reader *r;
    sb_store_rec rec;
    int batches = 0;

    if (sb_store_reader_open(&r, s_dir) != SB_OK)
        return;
    if (sb_store_reader_seek_start(r) == SB_OK) {
        for (int i = 0; i < 4096; i++) {
            sb_err rc = sb_store_reader_next(r, &rec);
            if (rc != SB_OK) {
                FUZZ_CHECK(rc == SB_ENOENT || rc == SB_EPROTO || rc == SB_ENOMEM);
                break;
            }
            if (rec.type != SB_REC_BATCH || batches++ >= 16)
                continue;
            /* What a fetch of this batch from the log would do; the
             * reader moves on, so carry on from a fresh seek after. */
            sb_batch *b;
            uint64_t id = rec.batch.id;
            if (sb_store_reader_batch(r, &rec.batch, &b) == SB_OK) {
                FUZZ_CHECK(b->id == id && b->n > 0);
                s_check_encoded(b);
                sb_batch_destroy(&b);
            }
            if (sb_store_reader_seek_batch(r, id) != SB_OK)
                break;
            /* Past the batch just read (records at or before it). */
            int k = 0;
            while (k++ < 4096 && sb_store_reader_next(r, &rec) == SB_OK &&
                   !(rec.type == SB_REC_BATCH && rec.key == id))
                ;
        }
    }
    if (sb_store_reader_seek_seq(r, probe) == SB_OK)
        (void) sb_store_reader_next(r, &rec);
    if (sb_store_reader_seek_batch(r, probe) == SB_OK)
        (void) sb_store_reader_next(r, &rec);
    if (probe > 0) {
        sb_req *req;
        uint64_t seqs[2] = {probe, probe + 1};
        if (sb_store_reader_load(r, seqs, probe < UINT64_MAX ? 2 : 1, &req) == SB_OK)
            sb_req_unref(req);
    }
    sb_store_reader_close(&r);
    FUZZ_CHECK(r == NULL);
}

static void
s_recover(void)
{
    sb_store_config cfg;
    sb_store_recovery rec;
    sb_store *s = NULL;

    sb_store_config_defaults(&cfg);
    snprintf(cfg.dir, sizeof cfg.dir, "%s", s_dir);
    strcpy(cfg.sync, "none");
    cfg.retain_age_s = 0;
    /* The smallest segment: the store preallocates a new one, and 64 MiB
     * per input would be most of the time spent. */
    cfg.segment_bytes = 4096;
    if (sb_store_open(&s, &cfg, &rec) == SB_OK) {
        FUZZ_CHECK(s != NULL);
        FUZZ_CHECK(rec.naggs == 0 || rec.aggs != NULL);
        for (size_t i = 0; i < rec.naggs; i++)
            FUZZ_CHECK(rec.aggs[i].len > 0 &&
                       strlen(rec.aggs[i].name) <= rec.aggs[i].len);
        for (size_t i = 1; i < rec.nunbatched; i++)
            FUZZ_CHECK(rec.unbatched[i] > rec.unbatched[i - 1]);
        sb_store_close(&s);
        sb_store_recovery_free(&rec);
    }
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");

    (void) argc, (void) argv;
    snprintf(s_dir, sizeof s_dir, "%s/sb-fuzz-store.XXXXXX", tmp ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(s_dir) != NULL);
    /* Log lines are still formatted (their arguments come from the
     * input), then dropped. */
    sb_log_set_sink(sb_log_discard, NULL);
    return 0;
}

static void
s_cleanup(void)
{
    s_clean(s_dir);
    rmdir(s_dir);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int registered;
    uint8_t *buf;
    size_t len;

    if (!registered) {
        registered = 1;
        atexit(s_cleanup);
    }
    if (size < 1 || size > (1u << 20))
        return 0;
    int recover = data[0] & 1, fix = data[0] & 4;
    len = size - 1;
    if ((buf = malloc(len ? len : 1)) == NULL)
        return 0;
    memcpy(buf, data + 1, len);
    /* Segment bytes, then maybe a checkpoint from its magic on. */
    size_t seg_len = len, ckp_len = 0;
    uint8_t *ckp = NULL;
    for (size_t i = 0; recover && i + 8 <= len; i++)
        if (memcmp(buf + i, "SBLOGCKP", 8) == 0) {
            seg_len = i;
            ckp = buf + i;
            ckp_len = len - i;
            break;
        }
    if (fix) {
        s_fix_seghdr(buf, seg_len);
        if (seg_len > SB_STORE_SEG_HDR)
            fuzz_fix_records(buf, seg_len, SB_STORE_SEG_HDR);
        if (ckp_len >= 68)
            fuzz_put32(ckp + ckp_len - 4, sb_crc32c(0, ckp, ckp_len - 4));
    }
    s_write(S_SEG_NAME, buf, seg_len);
    if (ckp != NULL)
        s_write("checkpoint", ckp, ckp_len);
    uint64_t probe = 0;
    for (size_t i = 0; i < 8 && i < len; i++)
        probe = probe << 8 | buf[len - 1 - i];
    probe %= 1024; /* near the base seqs the fix-up writes */
    if (recover)
        s_recover();
    else
        s_reader(probe);
    s_clean(s_dir);
    free(buf);
    return 0;
}
