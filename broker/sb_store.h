/* The embedded durable log: append-only segment files in one directory.
 *
 * What is stored (docs/STORAGE.md has the byte layout):
 * - an EVENT record per accepted event: its seq, aggregate seq and every
 *   field a SnapshotBatch's SequencedEvent carries, with its aggregate name;
 * - a BATCH record per flushed batch, after all of its events: batch id,
 *   aggregate, timestamp, prev_last_seq, aggregate_last_seq, source_pos,
 *   close reason and the seqs of its events. From both, a batch read back
 *   from the log encodes to the very bytes that were published.
 * Each record is a 24-byte header (magic, body length, key = seq or batch
 * id, type, CRC32C over header and body) and its body. Records never span
 * segments; a segment is sealed (synced, its sparse index written) when the
 * next record would take it past segment_bytes.
 *
 * Core (sb_store_*): no threads; one owner thread appends. Appending is
 * two steps, so many records share one write(2) and one fdatasync:
 * sb_store_add_event / sb_store_add_batch encode into a buffer (memory
 * only), sb_store_write writes all of it with one positioned write per
 * segment touched, sb_store_sync makes it durable. A failed write or sync
 * (ENOSPC, EDQUOT, EIO...) returns SB_ESTORAGE and leaves the log exactly
 * as it was after the last success: a partial write is truncated back, and
 * after a failed fdatasync the unsynced tail is truncated and kept in
 * memory to be written again (the kernel may have dropped those pages).
 * Nothing added is ever lost while the store is open: the next
 * sb_store_write retries it.
 *
 * Recovery at open: a checkpoint file (written at each seal and at clean
 * shutdown) holds the state up to a log position; the records after it are
 * scanned and applied. A torn or corrupt record in the last segment is
 * truncated away with everything after it (counted, logged); one in a
 * sealed segment is real damage and makes the open fail. The state is: the
 * last seq and batch id, for every aggregate its last aggregate seq, the
 * last seq and source position published on its topic, and the seqs that
 * are in the log but in no batch record (open batches at crash time).
 *
 * Reader (sb_store_reader_*): read-only, its own descriptors, any thread
 * (one reader per thread). It sees whatever complete records are in the
 * files; a record half-written by the appender fails its CRC and reads as
 * the end of the log. */
#ifndef SB_STORE_H
#define SB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"
#include "sb_msg.h"

#define SB_STORE_SEG_HDR 64
#define SB_STORE_REC_HDR 24
/* Larger records are refused when appended and read as corrupt: no disk
 * content can make a reader allocate more than this for one record. */
#define SB_STORE_MAX_RECORD (512u << 20)

enum { SB_REC_EVENT = 1, SB_REC_BATCH = 2 };

typedef enum {
    SB_SYNC_ALWAYS = 0,   /* fdatasync before every durable ack */
    SB_SYNC_INTERVAL = 1, /* every sync_interval_ms */
    SB_SYNC_NONE = 2      /* never for acks (only when a segment seals) */
} sb_sync_policy;

/* The [storage] section of the configuration. */
typedef struct {
    char dir[512];             /* "" = <broker.data_dir>/log */
    uint64_t segment_bytes;    /* a segment is sealed past this */
    char sync[16];             /* always | interval | none */
    uint32_t sync_interval_ms; /* for interval */
    uint64_t retain_bytes;     /* total segment bytes kept; 0 = no bound */
    uint64_t retain_age_s;     /* segments older are deleted; 0 = no bound */
    uint32_t index_every;      /* bytes between sparse index entries */
} sb_store_config;

void sb_store_config_defaults(sb_store_config *cfg);
sb_err sb_store_config_check(const sb_store_config *cfg, char *why, size_t n);
/* -1 if not one of always, interval, none. */
int sb_store_sync_parse(const char *s);

/* ---- recovery result ---------------------------------------------------- */

typedef struct {
    const char *name; /* NUL-terminated, in sb_store_recovery's memory */
    uint32_t len;
    uint64_t agg_seq;        /* last aggregate seq given */
    uint64_t topic_last_seq; /* last seq of the last batch on its topic */
    uint64_t source_pos;     /* highest published, if has_source_pos */
    uint8_t has_source_pos;
} sb_store_agg;

typedef struct {
    uint64_t last_seq;      /* 0 on a new log */
    uint64_t last_batch_id; /* 0 on a new log */
    uint64_t first_seq;     /* oldest seq still retained */
    uint64_t segments;
    uint64_t bytes;
    uint64_t records_scanned;
    uint64_t torn;       /* 1 if a torn/corrupt tail was truncated */
    uint64_t torn_bytes; /* bytes it held */
    uint64_t recovery_ns;
    int from_checkpoint; /* 0: the whole log was scanned */
    sb_store_agg *aggs;
    size_t naggs;
    uint64_t *unbatched; /* ascending: events no batch record names */
    size_t nunbatched;
    void *mem; /* owns the names */
} sb_store_recovery;

void sb_store_recovery_free(sb_store_recovery *rec);

/* ---- writer ------------------------------------------------------------- */

typedef struct sb_store sb_store;

typedef struct {
    uint64_t segments;      /* now */
    uint64_t bytes;         /* now, all segments */
    uint64_t first_seq;     /* oldest retained */
    uint64_t last_seq;      /* last added */
    uint64_t last_batch_id; /* last added */
    uint64_t writes;        /* write calls that succeeded */
    uint64_t bytes_written;
    uint64_t syncs; /* fdatasync calls that succeeded */
    uint64_t seals;
    uint64_t write_failures;
    uint64_t sync_failures;
    uint64_t segments_deleted;
    uint64_t checkpoints;
    uint64_t unbatched; /* events in no batch record yet */
} sb_store_stats;

/* Opens (creating) the log in cfg->dir and recovers it; *rec (optional)
 * receives what was found, to be freed with sb_store_recovery_free.
 * SB_EPROTO: a sealed segment or the checkpoint is damaged beyond a torn
 * tail (logged with its file and offset); SB_ESTORAGE/SB_ESYS: the OS
 * refused. */
sb_err sb_store_open(sb_store **out, const sb_store_config *cfg,
                     sb_store_recovery *rec);
/* Closes without syncing or writing a checkpoint (what a crash leaves);
 * records added but not written are lost. */
void sb_store_close(sb_store **sp);

/* Encodes one record into the append buffer and updates the state. No I/O.
 * An event's seq must be the last seq + 1 (SB_EINVAL otherwise: the
 * numbering must stay gap-free); a batch's id must be above the last one,
 * and its events must be in the log. SB_ETOOBIG: over the record limit. */
sb_err sb_store_add_event(sb_store *s, const sb_event *ev);
sb_err sb_store_add_batch(sb_store *s, const sb_batch *b);
/* Writes everything added (one pwrite per segment touched; sealing and
 * creating segments as needed). SB_OK: all written. On failure nothing
 * changed on disk since the last success, and everything stays pending. */
sb_err sb_store_write(sb_store *s);
/* fdatasync of the active segment. SB_OK: everything written is durable.
 * On failure the unsynced bytes are truncated and pending again. */
sb_err sb_store_sync(sb_store *s);
/* Bytes added and not yet written / written and not yet synced. */
size_t sb_store_pending(const sb_store *s);
uint64_t sb_store_unsynced(const sb_store *s);
/* Reserves the next segment's disk space ahead (a spare file, fallocate'd).
 * The store does it by itself at open and after each seal; this retries.
 * sb_store_reserved() is 0 while there is no room for it: the disk is
 * about to be full, and the log store refuses new publishes. */
sb_err sb_store_reserve(sb_store *s);
int sb_store_reserved(const sb_store *s);
/* With sync policy none, written bytes are not kept for a rewrite after a
 * failed sync (there is none); the default keeps them until synced. */
void sb_store_set_keep_unsynced(sb_store *s, int keep);
/* Writes the checkpoint for the current position (everything must be
 * written and synced: SB_EAGAIN otherwise). Used at clean shutdown, so
 * the next open has nothing to scan. */
sb_err sb_store_checkpoint(sb_store *s);
/* Deletes whole oldest segments past retain_bytes / retain_age_s (never the
 * active one, nor one whose events may still be needed by recovery).
 * now_ms: wall clock. *deleted (optional): how many went. */
sb_err sb_store_retain(sb_store *s, uint64_t now_ms, uint32_t *deleted);
void sb_store_stats_get(const sb_store *s, sb_store_stats *st);
const char *sb_store_dir(const sb_store *s);
uint64_t sb_store_last_seq(const sb_store *s);
uint64_t sb_store_last_batch_id(const sb_store *s);

/* ---- reader ------------------------------------------------------------- */

typedef struct sb_store_reader sb_store_reader;

/* A batch record, decoded. */
typedef struct {
    uint64_t id;
    uint64_t timestamp_ms;
    uint64_t prev_last_seq;
    uint64_t agg_last_seq;
    uint64_t source_pos;
    uint64_t bytes; /* the batch's sb_event_size() sum, for paging */
    uint8_t has_source_pos;
    uint8_t close_reason;
    uint32_t agg_len;
    const char *agg; /* not NUL-terminated */
    uint32_t n;
    const uint64_t *seqs; /* ascending */
} sb_store_batch_rec;

/* One record; pointers stay valid until the next call on the reader. */
typedef struct {
    uint8_t type; /* SB_REC_EVENT or SB_REC_BATCH */
    uint64_t key; /* seq or batch id */
    uint64_t seg_no;
    uint64_t offset;
    uint32_t size; /* header + body */
    sb_event ev;   /* SB_REC_EVENT: strings not NUL-terminated, req NULL */
    sb_store_batch_rec batch;
} sb_store_rec;

typedef struct {
    uint64_t no;
    uint64_t base_seq;   /* first seq it may hold */
    uint64_t base_batch; /* first batch id it may hold */
    uint64_t created_ms;
    uint64_t bytes;
    uint64_t mtime_ms;
    int has_index_file;
} sb_store_seg_info;

sb_err sb_store_reader_open(sb_store_reader **out, const char *dir);
void sb_store_reader_close(sb_store_reader **rp);
/* Re-lists the directory (segments come and go while the writer runs). */
sb_err sb_store_reader_refresh(sb_store_reader *r);
size_t sb_store_reader_segments(const sb_store_reader *r);
sb_err sb_store_reader_segment(const sb_store_reader *r, size_t i,
                               sb_store_seg_info *out);
/* Oldest retained seq and batch id (what the first segment may hold). */
uint64_t sb_store_reader_first_seq(const sb_store_reader *r);
uint64_t sb_store_reader_first_batch(const sb_store_reader *r);

/* Positions the reader: at the first record, or at or before the first
 * record that may hold event `seq` / batch `id` (via the sparse index).
 * SB_ENOENT: before what is retained, or the log is empty. */
sb_err sb_store_reader_seek_start(sb_store_reader *r);
sb_err sb_store_reader_seek_seq(sb_store_reader *r, uint64_t seq);
sb_err sb_store_reader_seek_batch(sb_store_reader *r, uint64_t id);
/* The next record. SB_ENOENT: the end of the log. SB_EPROTO: a damaged
 * record at rec->seg_no / rec->offset (the reader stays there). A damaged
 * record at the very end of the last segment reads as the end of the
 * log, unless the reader is strict (sb_store_reader_set_strict), as
 * `snapbus log verify` is. */
sb_err sb_store_reader_next(sb_store_reader *r, sb_store_rec *rec);
void sb_store_reader_set_strict(sb_store_reader *r, int strict);

/* Builds one request holding the events `seqs[0..n)` (ascending), read
 * from the log: status SB_OK, seq and agg_seq set, ack none, refs 1,
 * unpublished n. SB_ENOENT: one of them is not in the log. */
sb_err sb_store_reader_load(sb_store_reader *r, const uint64_t *seqs,
                            uint32_t n, sb_req **out);
/* Rebuilds a batch from its record: same id, aggregate, fields and events
 * as when it was published (the events in one request, which the batch
 * references). Destroy with sb_batch_destroy. */
sb_err sb_store_reader_batch(sb_store_reader *r, const sb_store_batch_rec *br,
                             sb_batch **out);

/* ---- record codec (exposed for tests and the inspection tool) ---------- */

/* Encoded size of an event / batch record, header included. */
size_t sb_store_event_size(const sb_event *ev);
size_t sb_store_batch_size(const sb_batch *b);
/* Encode at buf (of the size above). */
void sb_store_encode_event(uint8_t *buf, const sb_event *ev);
void sb_store_encode_batch(uint8_t *buf, const sb_batch *b);
/* Decodes one record at buf[0..avail). SB_OK: *rec filled, rec->size
 * consumed; the batch's seqs go to *seqs (grown with realloc, *cap its
 * size). SB_EAGAIN: incomplete, *need (if the header is readable) is the
 * record's full size. SB_EPROTO: not a valid record. */
sb_err sb_store_decode(const uint8_t *buf, size_t avail, sb_store_rec *rec,
                       uint64_t **seqs, size_t *cap, size_t *need);

#endif
