/* Private to the on-disk log (sb_store_*.c): the record and file format
 * constants, the byte helpers, the in-memory state and the reader's and
 * writer's structs. Nothing outside those files includes it; the contract
 * is sb_store.h, the byte layout docs/STORAGE.md.
 *
 * The log is split by concern, one file each:
 *   sb_store_format.c    configuration, record codec, segment headers,
 *                        index files, the directory listing
 *   sb_store_state.c     in-memory state: aggregates, unbatched seqs
 *   sb_store_reader.c    sb_store_reader_*: seek, iterate, load, rebuild
 *   sb_store_writer.c    append, write, sync, seal, checkpoint, retention
 *   sb_store_recovery.c  sb_store_open: the steps of recovery
 *
 * Files in the log directory:
 *   NNNNNNNNNNNNNNNNNNNN.seg  segments, numbered from 1 (the number, not a
 *                             seq, names them: a segment may hold no event)
 *   NNNNNNNNNNNNNNNNNNNN.idx  sparse index of a sealed segment; a cache
 *                             (checked by CRC, rebuilt by scanning if bad)
 *   checkpoint               the state at a log position
 *   spare                    the next segment, its space reserved ahead
 *                            (fallocate), renamed into place at a seal
 *
 * Functions shared between these files are named sbs_*; each file's own
 * helpers stay static (s_*). */
#ifndef SB_STORE_INT_H
#define SB_STORE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "sb_map.h"
#include "sb_store.h"
#include "sb_varint.h"

#define SBS_SEG_MAGIC "SBLOGSEG"
#define SBS_IDX_MAGIC "SBLOGIDX"
#define SBS_CKP_MAGIC "SBLOGCKP"
#define SBS_REC_MAGIC 0x4C425352u /* "RSBL" little-endian: 'R','S','B','L' */
#define SBS_VERSION 1u
#define SBS_CKP_NAME "checkpoint"
#define SBS_SPARE_NAME "spare"
#define SBS_EV_FIXED 5 /* flags, four name lengths; then varints */
/* Event flags: which optional varints follow (zeros are left out). */
#define SBS_EVF_SOURCE_POS 0x01 /* has_source_pos: source_pos follows */
#define SBS_EVF_CAUSED_BY 0x02
#define SBS_EVF_PRODUCER_SEQ 0x04
#define SBS_EVF_CLIENT_TS 0x08
#define SBS_EVF_ALL 0x0f
#define SBS_BATCH_FIXED 48
#define SBS_READ_CHUNK (256u << 10)
#define SBS_READER_INDEX_EVERY (64u << 10)
#define SBS_MAX_CKP (1u << 30)
#define SBS_UB_SHIFT 8 /* 256 seqs per page of the unbatched set */
#define SBS_UB_WORDS ((1u << SBS_UB_SHIFT) / 64)

/* ---- little-endian and varint helpers ---------------------------------- */

static inline void
sbs_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void
sbs_put64(uint8_t *p, uint64_t v)
{
    sbs_put32(p, (uint32_t)v);
    sbs_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t
sbs_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t
sbs_get64(const uint8_t *p)
{
    return (uint64_t)sbs_get32(p) | (uint64_t)sbs_get32(p + 4) << 32;
}

/* 0 on success; -1 on a truncated or over-long varint. Our own files
 * never hold bits past the 64th: such a record is damage. */
static inline int
sbs_get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *start = *pp;

    if (sb_varint_get(pp, end, v) != 0)
        return -1;
    if (*pp - start == 10 && start[9] > 1) {
        *pp = start;
        return -1;
    }
    return 0;
}

/* ---- types -------------------------------------------------------------- */

typedef struct {
    uint64_t agg_seq;
    uint64_t topic_last_seq;
    uint64_t source_pos;
    uint8_t has_source_pos;
    uint32_t len;
    char name[]; /* NUL-terminated; the map's key bytes */
} sbs_agg;

typedef struct {
    uint64_t no;
    uint32_t live;
    uint64_t bits[SBS_UB_WORDS];
} sbs_ubpage;

typedef struct {
    uint64_t last_seq;
    uint64_t last_batch;
    sb_map *aggs;
    sbs_agg *cached;
    size_t agg_name_bytes;
    sb_map *ub; /* page number → sbs_ubpage */
    sbs_ubpage *ub_cached;
    uint64_t ub_count;
    uint64_t ub_low; /* no page below this holds a seq */
} sbs_state;

typedef struct {
    uint64_t seq_next;   /* every event before `off` has a smaller seq */
    uint64_t batch_next; /* every batch record before `off` a smaller id */
    uint64_t off;
} sbs_ient;

typedef struct {
    uint64_t no;
    uint64_t base_seq;
    uint64_t base_batch;
    uint64_t created_ms;
} sbs_seghdr;

typedef struct {
    sbs_seghdr h;
    uint64_t size;
    uint64_t mtime_ms;
    int fd;
    int has_idx_file;
    int idx_loaded; /* idx covers the whole sealed segment */
    sbs_ient *idx;
    size_t nidx, capidx;
    uint64_t indexed_to; /* records up to here are checked and indexed */
    uint64_t ix_seq_next, ix_batch_next;
    int seen;
} sbs_rseg;

struct sb_store_reader {
    char dir[512];
    sbs_rseg *segs;
    size_t nsegs, capsegs;
    int strict;
    /* cursor */
    size_t cur;
    uint64_t off;
    uint64_t last_event_seq; /* of the last event record returned */
    /* read window over one segment */
    uint8_t *buf;
    size_t bcap, blen;
    uint64_t boff;
    uint64_t bseg; /* segment number the window holds (0: none) */
    uint64_t *seqs;
    size_t seqs_cap;
    /* for sb_store_reader_load */
    uint8_t *tmp;
    size_t tcap;
    sb_event *tev;
    size_t tevcap;
    size_t nopen; /* segment descriptors open now */
};

typedef struct {
    sbs_seghdr h;
    uint64_t bytes;
    uint64_t mtime_ms;
} sbs_wseg;

struct sb_store {
    sb_store_config cfg;
    char dir[512];
    sbs_state st;
    /* what was added (validation); the state follows commits */
    uint64_t add_seq;
    uint64_t add_batch;
    /* segments, oldest first; the last is the active one */
    sbs_wseg *segs;
    size_t nsegs, capsegs;
    int fd;
    uint64_t size;   /* bytes in the active file */
    uint64_t synced; /* of which durable */
    sbs_ient *idx;   /* active segment's index (committed records) */
    size_t nidx, capidx;
    uint64_t ix_seq_next, ix_batch_next, ix_last;
    /* append buffer: [0, wlen) written, unsynced; [wlen, len) pending */
    uint8_t *buf;
    size_t len, cap, wlen;
    int keep_unsynced;
    /* last checkpoint */
    uint64_t ckpt_seg, ckpt_off, ckpt_min_ub;
    int need_ckpt;
    /* The next segment, reserved: -1 while the disk has no room for it. */
    int spare_fd;
    sb_store_stats stats;
};

/* ---- shared between the files ------------------------------------------- */

/* check_crc 0: bytes this process encoded a moment ago (commit), whose
 * CRC was just computed; everything read from disk is checked. */
sb_err sbs_decode(const uint8_t *buf, size_t avail, sb_store_rec *rec,
                  uint64_t **seqs, size_t *cap, size_t *need, int check_crc);

/* Positions at an exact place (recovery). */
sb_err sbs_seek_pos(sb_store_reader *r, uint64_t no, uint64_t off);

void sbs_seg_path(char *buf, size_t n, const char *dir, uint64_t no,
                  const char *ext);

void sbs_seghdr_encode(uint8_t *p, const sbs_seghdr *h);

int sbs_seghdr_decode(const uint8_t *p, size_t n, uint64_t no, sbs_seghdr *h);

sb_err sbs_list_segments(const char *dir, uint64_t **nos, size_t *n);

/* Index file: magic[8] | version u32 | reserved u32 | seg no u64 |
 * covered bytes u64 | count u64 | count × (seq_next, batch_next, off) |
 * crc32c u32 over all before it. */
sb_err sbs_idx_write(const char *dir, uint64_t no, uint64_t size,
                     const sbs_ient *e, size_t n);

/* Loads an index file if it is whole and matches the segment. */
sb_err sbs_idx_read(const char *dir, uint64_t no, uint64_t seg_size,
                    sbs_ient **out, size_t *nout);

sb_err sbs_ient_push(sbs_ient **v, size_t *n, size_t *cap, sbs_ient e);

sb_err sbs_state_init(sbs_state *st);

void sbs_state_fini(sbs_state *st);

sbs_agg *sbs_agg_get(sbs_state *st, const char *name, uint32_t len, int create);

sb_err sbs_ub_add(sbs_state *st, uint64_t seq);

/* The smallest unbatched seq, or last_seq + 1 if there is none. Pages
 * below ub_low are all empty, and ub_low only moves up, so the walk costs
 * one lookup per page over the whole run. */
uint64_t sbs_ub_min(sbs_state *st);

/* The unbatched seqs, ascending, in a malloc'd array. */
sb_err sbs_ub_list(sbs_state *st, uint64_t **out, size_t *n);

/* Applies one committed record. Wrong keys are damage (SB_EPROTO): seqs
 * are gap-free and batch ids increase. */
sb_err sbs_apply(sbs_state *st, const sb_store_rec *rec);

sbs_wseg *sbs_active(sb_store *s);

sb_err sbs_wseg_push(sb_store *s, sbs_wseg seg);

/* Loads a checkpoint into st. SB_ENOENT: none. SB_EPROTO: damaged. */
sb_err sbs_read_ckpt(const char *dir, sbs_state *st, uint64_t *seg,
                     uint64_t *off);

/* Reserves the next segment's space now, in a file of its own, so that a
 * disk filling up is noticed a whole segment before the log runs out: the
 * log store then refuses new publishes while what is in flight still
 * fits. Where the file system cannot reserve, the spare is just a file. */
sb_err sbs_prepare_spare(sb_store *s);

/* Creates segment `no` with the next seq/batch as its base, durably: the
 * spare renamed into place if there is one, a new file otherwise. */
sb_err sbs_create_segment(sb_store *s, uint64_t no, int *fdp, sbs_seghdr *h);

void sbs_reset_index(sb_store *s, const sbs_seghdr *h);

uint64_t sbs_total_bytes(const sb_store *s);

#endif
