/* Recovery: sb_store_open, in steps. Find the segments and check their
 * headers, load the checkpoint if it points into them, replay what follows
 * it (truncating a torn tail of the last segment), open the last segment
 * for appending, reserve the spare, report. Runs on the opening thread,
 * before the writer is handed to its owner. */
#include "sb_store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_clock.h"
#include "sb_log.h"
#include "sb_os.h"

/* ---- recovery ----------------------------------------------------------- */

void
sb_store_recovery_free(sb_store_recovery *rec)
{
    if (rec == NULL)
        return;
    free(rec->aggs);
    free(rec->unbatched);
    free(rec->mem);
    memset(rec, 0, sizeof *rec);
}

typedef struct {
    sb_store_agg *out;
    char *names;
    size_t i;
} s_aggcopy;

static void
s_copy_agg(void *v, void *ctx)
{
    const sbs_agg *a = v;
    s_aggcopy *c = ctx;

    memcpy(c->names, a->name, a->len + 1);
    c->out[c->i++] =
        (sb_store_agg){c->names,          a->len,        a->agg_seq,
                       a->topic_last_seq, a->source_pos, a->has_source_pos};
    c->names += a->len + 1;
}

static sb_err
s_fill_recovery(sb_store *s, sb_store_recovery *rec)
{
    size_t naggs = sb_map_size(s->st.aggs);
    s_aggcopy c;

    rec->last_seq = s->st.last_seq;
    rec->last_batch_id = s->st.last_batch;
    rec->first_seq = s->segs[0].h.base_seq;
    rec->segments = s->nsegs;
    rec->bytes = sbs_total_bytes(s);
    rec->aggs = calloc(naggs ? naggs : 1, sizeof *rec->aggs);
    rec->mem = malloc(s->st.agg_name_bytes + 1);
    if (rec->aggs == NULL || rec->mem == NULL)
        return SB_ENOMEM;
    c = (s_aggcopy){rec->aggs, rec->mem, 0};
    sb_map_each(s->st.aggs, s_copy_agg, &c);
    rec->naggs = c.i;
    return sbs_ub_list(&s->st, &rec->unbatched, &rec->nunbatched);
}

/* Truncates a torn tail of the last segment at off. */
static sb_err
s_truncate_tail(sb_store *s, uint64_t no, uint64_t off, uint64_t size,
                sb_store_recovery *rec, const char *why)
{
    char path[1100];
    int fd = -1;
    sb_err rc;

    sbs_seg_path(path, sizeof path, s->dir, no, "seg");
    SB_LOG(SB_LOG_WARN, "store.torn_tail",
           "seg=%" PRIu64 " offset=%" PRIu64 " dropped_bytes=%" PRIu64
           " why=%s",
           no, off, size - off, why);
    if ((rc = sb_os_open_write(&fd, path)) != SB_OK)
        return rc;
    if ((rc = sb_os_ftruncate(fd, off)) == SB_OK)
        rc = sb_os_fdatasync(fd);
    sb_os_close(&fd);
    rec->torn++;
    rec->torn_bytes += size - off;
    return rc;
}

/* Scans from (start_no, start_off) to the end, applying records at or past
 * (apply_no, apply_off) and indexing the last segment. */
static sb_err
s_replay(sb_store *s, uint64_t start_no, uint64_t apply_no, uint64_t apply_off,
         sb_store_recovery *rec)
{
    sb_store_reader *r = NULL;
    sb_store_rec x;
    uint64_t cur_no = 0, last_no = sbs_active(s)->h.no;
    sb_err rc;

    if ((rc = sb_store_reader_open(&r, s->dir)) != SB_OK)
        return rc;
    sb_store_reader_set_strict(r, 1);
    if ((rc = sbs_seek_pos(r, start_no, SB_STORE_SEG_HDR)) != SB_OK)
        goto out;
    for (;;) {
        rc = sb_store_reader_next(r, &x);
        if (rc == SB_ENOENT) {
            rc = SB_OK;
            break;
        }
        uint64_t no = x.seg_no;
        if (no != cur_no && no != 0) {
            /* Entering a segment: its base must continue the state. */
            const sbs_rseg *g = NULL;
            for (size_t i = 0; i < r->nsegs; i++)
                if (r->segs[i].h.no == no)
                    g = &r->segs[i];
            cur_no = no;
            if (g != NULL && no > apply_no &&
                (g->h.base_seq != s->st.last_seq + 1 ||
                 g->h.base_batch != s->st.last_batch + 1)) {
                SB_LOG(SB_LOG_ERR, "store.corrupt",
                       "seg=%" PRIu64 " why=\"base seq %" PRIu64
                       " does not follow %" PRIu64 "\"",
                       no, g->h.base_seq, s->st.last_seq);
                rc = SB_EPROTO;
                goto out;
            }
            if (no == last_no)
                sbs_reset_index(s, &g->h);
        }
        const char *why = "bad record";
        if (rc == SB_OK) {
            rec->records_scanned++;
            int apply =
                no > apply_no || (no == apply_no && x.offset >= apply_off);
            if (apply && (rc = sbs_apply(&s->st, &x)) == SB_OK) {
                s->add_seq = s->st.last_seq;
                s->add_batch = s->st.last_batch;
            } else if (apply && rc == SB_EPROTO) {
                why = x.type == SB_REC_EVENT ? "seq out of order"
                                             : "batch id out of order";
            } else if (apply) {
                goto out; /* ENOMEM */
            }
            if (rc == SB_OK) {
                if (no == last_no) {
                    if (x.offset - s->ix_last >= s->cfg.index_every &&
                        sbs_ient_push(&s->idx, &s->nidx, &s->capidx,
                                      (sbs_ient){s->ix_seq_next,
                                                 s->ix_batch_next, x.offset}) ==
                            SB_OK)
                        s->ix_last = x.offset;
                    if (x.type == SB_REC_EVENT)
                        s->ix_seq_next = x.key + 1;
                    else
                        s->ix_batch_next = x.key + 1;
                }
                continue;
            }
        } else if (rc != SB_EPROTO) {
            goto out;
        }
        /* A damaged record at x.seg_no / x.offset. */
        if (no != last_no) {
            SB_LOG(SB_LOG_ERR, "store.corrupt",
                   "seg=%" PRIu64 " offset=%" PRIu64 " why=\"%s in a sealed "
                   "segment\" hint=\"snapbus log verify %s\"",
                   no, x.offset, why, s->dir);
            rc = SB_EPROTO;
            goto out;
        }
        uint64_t size = 0;
        for (size_t i = 0; i < r->nsegs; i++)
            if (r->segs[i].h.no == no)
                size = r->segs[i].size;
        rc = s_truncate_tail(s, no, x.offset, size, rec, why);
        break;
    }
out:
    sb_store_reader_close(&r);
    return rc;
}

/* Step 0: the store object with its directory, before any file is read. */
static sb_err
s_new(sb_store **out, const sb_store_config *cfg)
{
    sb_store *s;
    sb_err rc;

    if (strlen(cfg->dir) >= sizeof s->dir)
        return SB_EINVAL;
    if ((s = calloc(1, sizeof *s)) == NULL)
        return SB_ENOMEM;
    s->cfg = *cfg;
    s->fd = -1;
    s->spare_fd = -1;
    s->keep_unsynced = 1;
    strcpy(s->dir, cfg->dir);
    if ((rc = sbs_state_init(&s->st)) != SB_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return SB_OK;
}

/* Step 1: every segment's header. A bad one is a torn creation if it is
 * the last segment (removed, counted), damage anywhere else. */
static sb_err
s_load_segments(sb_store *s, sb_store_recovery *rec)
{
    uint64_t *nos = NULL;
    size_t n = 0;
    char path[1100];
    sb_err rc;

    if ((rc = sbs_list_segments(s->dir, &nos, &n)) != SB_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        uint8_t hdr[SB_STORE_SEG_HDR];
        size_t got = 0;
        int fd = -1;
        sbs_wseg g = {0};
        sbs_seg_path(path, sizeof path, s->dir, nos[i], "seg");
        if ((rc = sb_os_open_read(&fd, path)) != SB_OK)
            goto out;
        rc = sb_os_pread_full(fd, hdr, sizeof hdr, 0, &got);
        if (rc == SB_OK)
            rc = sb_os_fstat(fd, &g.bytes, &g.mtime_ms);
        sb_os_close(&fd);
        if (rc != SB_OK)
            goto out;
        if (sbs_seghdr_decode(hdr, got, nos[i], &g.h) != 0) {
            if (i + 1 < n) {
                SB_LOG(SB_LOG_ERR, "store.corrupt",
                       "seg=%" PRIu64 " why=\"bad segment header\"", nos[i]);
                rc = SB_EPROTO;
                goto out;
            }
            SB_LOG(SB_LOG_WARN, "store.torn_segment",
                   "seg=%" PRIu64 " bytes=%" PRIu64
                   " why=\"header incomplete\"",
                   nos[i], g.bytes);
            (void)sb_os_unlink(path);
            (void)sb_os_sync_dir(s->dir);
            rec->torn++;
            rec->torn_bytes += g.bytes;
            continue;
        }
        if (s->nsegs > 0 && g.h.base_seq < sbs_active(s)->h.base_seq) {
            SB_LOG(SB_LOG_ERR, "store.corrupt",
                   "seg=%" PRIu64 " why=\"base seq goes back\"", nos[i]);
            rc = SB_EPROTO;
            goto out;
        }
        if ((rc = sbs_wseg_push(s, g)) != SB_OK)
            goto out;
    }
    rc = SB_OK;
out:
    free(nos);
    return rc;
}

/* Whether a checkpoint at (seg, off) points into what is here: its
 * segment, within its size (1), or the start of a segment that was never
 * created (2); 0 if it is beyond the log. */
static int
s_ckpt_fits(const sb_store *s, uint64_t seg, uint64_t off)
{
    for (size_t i = 0; i < s->nsegs; i++)
        if (s->segs[i].h.no == seg && off <= s->segs[i].bytes)
            return 1;
    if (s->nsegs > 0 && seg == s->segs[s->nsegs - 1].h.no + 1 &&
        off == SB_STORE_SEG_HDR)
        return 2;
    if (s->nsegs == 0 && off == SB_STORE_SEG_HDR)
        return 2;
    return 0;
}

/* Step 2: the checkpoint, if there is one that fits; otherwise the state
 * starts just before the first segment. *ckpt_seg is 0 without one. */
static sb_err
s_load_checkpoint(sb_store *s, sb_store_recovery *rec, uint64_t *ckpt_seg,
                  uint64_t *ckpt_off)
{
    sb_err rc = sbs_read_ckpt(s->dir, &s->st, ckpt_seg, ckpt_off);

    if (rc == SB_OK && s_ckpt_fits(s, *ckpt_seg, *ckpt_off)) {
        rec->from_checkpoint = 1;
        s->ckpt_seg = *ckpt_seg;
        s->ckpt_off = *ckpt_off;
        s->ckpt_min_ub = sbs_ub_min(&s->st);
    } else if (rc == SB_OK || rc == SB_EPROTO) {
        if (rc == SB_OK)
            SB_LOG(SB_LOG_WARN, "store.checkpoint_ignored",
                   "seg=%" PRIu64 " offset=%" PRIu64 " why=\"beyond the log\"",
                   *ckpt_seg, *ckpt_off);
        else
            SB_LOG(SB_LOG_WARN, "store.checkpoint_ignored", "why=damaged");
        sbs_state_fini(&s->st);
        if ((rc = sbs_state_init(&s->st)) != SB_OK)
            return rc;
        *ckpt_seg = *ckpt_off = 0;
    } else if (rc != SB_ENOENT) {
        return rc;
    } else {
        *ckpt_seg = *ckpt_off = 0;
    }
    if (!rec->from_checkpoint && s->nsegs > 0) {
        /* The whole log is scanned; what came before it is unknown. */
        s->st.last_seq = s->segs[0].h.base_seq - 1;
        s->st.last_batch = s->segs[0].h.base_batch - 1;
    }
    s->add_seq = s->st.last_seq;
    s->add_batch = s->st.last_batch;
    return SB_OK;
}

/* Step 3: bring the state and the active segment's index up to the end of
 * the log, reading as little as the checkpoint allows. */
static sb_err
s_catch_up(sb_store *s, sb_store_recovery *rec, uint64_t ckpt_seg,
           uint64_t ckpt_off)
{
    sbs_wseg *a = sbs_active(s);
    int from_ckpt = rec->from_checkpoint;
    uint64_t start =
        from_ckpt && ckpt_seg <= a->h.no ? ckpt_seg : s->segs[0].h.no;
    uint64_t apply_no = from_ckpt ? ckpt_seg : 0;
    uint64_t apply_off = from_ckpt ? ckpt_off : 0;
    sbs_ient *e = NULL;
    size_t ne = 0;

    if (from_ckpt && ckpt_seg > a->h.no)
        start = a->h.no; /* index only: nothing to apply */
    sbs_reset_index(s, &a->h);
    if (from_ckpt && ckpt_seg == a->h.no && ckpt_off == a->bytes &&
        sbs_idx_read(s->dir, ckpt_seg, ckpt_off, &e, &ne) == SB_OK) {
        /* A clean stop: the checkpoint is at the very end and the
         * active segment's index is whole. Nothing to read. */
        free(s->idx);
        s->idx = e;
        s->nidx = s->capidx = ne;
        s->ix_seq_next = s->st.last_seq + 1;
        s->ix_batch_next = s->st.last_batch + 1;
        s->ix_last = e[ne - 1].off;
        return SB_OK;
    }
    return s_replay(s, start, apply_no, apply_off, rec);
}

/* Step 4a: open the last segment for appending. */
static sb_err
s_open_active(sb_store *s)
{
    sbs_wseg *a = sbs_active(s);
    char path[1100];
    sb_err rc;

    sbs_seg_path(path, sizeof path, s->dir, a->h.no, "seg");
    if ((rc = sb_os_open_write(&s->fd, path)) != SB_OK ||
        (rc = sb_os_fstat(s->fd, &a->bytes, &a->mtime_ms)) != SB_OK)
        return rc;
    /* What a crash left in the page cache is made durable now, so the
     * re-published events of open batches are on disk too. */
    if ((rc = sb_os_fdatasync(s->fd)) != SB_OK)
        return rc;
    s->size = s->synced = a->bytes;
    (void)sb_os_preallocate(s->fd, s->cfg.segment_bytes);
    return SB_OK;
}

/* Step 4b: an empty directory gets its first segment (numbered after the
 * checkpoint's, if a checkpoint outlived its segments). */
static sb_err
s_create_first(sb_store *s, uint64_t ckpt_seg)
{
    sbs_seghdr h;
    sb_err rc;

    if ((rc = sbs_create_segment(s, ckpt_seg ? ckpt_seg : 1, &s->fd, &h)) !=
        SB_OK)
        return rc;
    if ((rc = sbs_wseg_push(
             s, (sbs_wseg){h, SB_STORE_SEG_HDR, h.created_ms})) != SB_OK)
        return rc;
    s->size = s->synced = SB_STORE_SEG_HDR;
    sbs_reset_index(s, &h);
    return SB_OK;
}

static void
s_log_recovered(const sb_store *s, const sb_store_recovery *rec)
{
    SB_LOG(SB_LOG_NOTICE, "store.recovered",
           "dir=%s segments=%" PRIu64 " bytes=%" PRIu64 " last_seq=%" PRIu64
           " last_batch_id=%" PRIu64 " aggregates=%zu unbatched=%zu "
           "scanned=%" PRIu64 " torn=%" PRIu64 " torn_bytes=%" PRIu64
           " checkpoint=%d ms=%.1f",
           s->dir, rec->segments, rec->bytes, rec->last_seq, rec->last_batch_id,
           rec->naggs, rec->nunbatched, rec->records_scanned, rec->torn,
           rec->torn_bytes, rec->from_checkpoint, rec->recovery_ns / 1e6);
}

sb_err
sb_store_open(sb_store **out, const sb_store_config *cfg,
              sb_store_recovery *recp)
{
    sb_store *s = NULL;
    sb_store_recovery rec_local, *rec = recp ? recp : &rec_local;
    uint64_t ckpt_seg = 0, ckpt_off = 0, t0 = sb_clock_mono_ns();
    sb_err rc;

    memset(rec, 0, sizeof *rec);
    if ((rc = s_new(&s, cfg)) != SB_OK)
        return rc;
    if ((rc = sb_os_mkdirs(s->dir)) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "store.mkdir", "dir=%s errno=%d", s->dir,
               sb_os_errno());
        goto fail;
    }
    if ((rc = s_load_segments(s, rec)) != SB_OK ||
        (rc = s_load_checkpoint(s, rec, &ckpt_seg, &ckpt_off)) != SB_OK)
        goto fail;
    if (s->nsegs > 0) {
        if ((rc = s_catch_up(s, rec, ckpt_seg, ckpt_off)) != SB_OK ||
            (rc = s_open_active(s)) != SB_OK)
            goto fail;
    } else if ((rc = s_create_first(s, ckpt_seg)) != SB_OK) {
        goto fail;
    }
    s->stats.segments = s->nsegs;
    if (sbs_prepare_spare(s) != SB_OK)
        SB_LOG(SB_LOG_WARN, "store.no_reserve",
               "dir=%s bytes=%" PRIu64 " errno=%d why=\"no room for the next "
               "segment: publishes are refused until there is; free space, or "
               "lower storage.segment_bytes (the log needs 2 segments free)\"",
               s->dir, s->cfg.segment_bytes, sb_os_errno());
    if ((rc = s_fill_recovery(s, rec)) != SB_OK)
        goto fail;
    rec->recovery_ns = sb_clock_mono_ns() - t0;
    s_log_recovered(s, rec);
    if (recp == NULL)
        sb_store_recovery_free(&rec_local);
    *out = s;
    return SB_OK;
fail:
    sb_store_recovery_free(rec);
    sb_store_close(&s);
    return rc;
}
