/* snapbus log info|dump|verify DIR: looks at a broker's on-disk log
 * directly, through the broker's own log reader (broker/sb_store.h), so
 * it needs no running broker and sees exactly what recovery would. It only
 * reads: it is safe next to a running broker (a record being written reads
 * as the end of the log). This is the one CLI file that uses broker
 * internals rather than libsnapbus. Single-threaded. */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "sb_log.h"
#include "sb_store.h"

static const char *const s_reasons[] = {"delay", "immediate", "max_events",
                                        "max_bytes", "shutdown"};

static void
s_help(FILE *f)
{
    fprintf(
        f,
        "usage: snapbus log info DIR\n"
        "       snapbus log dump [OPTIONS] DIR\n"
        "       snapbus log verify [--strict] DIR\n"
        "\n"
        "Reads a broker's on-disk log (DIR is <data_dir>/log, or "
        "storage.dir).\n"
        "Read-only: safe beside a running broker (they never write and "
        "never\n"
        "take the broker's LOCK); a record being written at that moment "
        "may\n"
        "show as a torn tail (a warning of verify, not damage).\n"
        "\n"
        "  info     segments, their seq and batch id ranges, sizes, totals\n"
        "  dump     one line per record (event or batch), logfmt\n"
        "  verify   checks every record's CRC32C, that seqs are gap-free and\n"
        "           increasing, batch ids increasing, and that every batch "
        "names\n"
        "           events that are in the log, each in one batch only. Exit "
        "0:\n"
        "           sound; 1: damaged. A torn record at the very end of the "
        "last\n"
        "           segment (a crash mid-write; the broker truncates it at "
        "its\n"
        "           next start) is a warning, or damage with --strict.\n"
        "\n"
        "dump options:\n"
        "  -f, --from-seq N      start at the record holding seq N\n"
        "  -b, --from-batch ID   start at the batch record ID\n"
        "  -n, --limit N         at most N records\n"
        "  -k, --kind K          events|batches|all (default all)\n"
        "  -p, --payload P       text|hex|none (default text: JSON-escaped if\n"
        "                        it is UTF-8 text, else hex)\n"
        "\n"
        "Reads the log files only: safe beside a running broker.\n"
        "exit codes: 0 done (verify: sound), 1 verify: damaged, 2 usage,\n"
        "3 the log could not be read.\n");
}

static void
s_time(FILE *f, const char *key, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    char buf[32];

    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(f, " %s=%s.%03uZ", key, buf, (unsigned)(ms % 1000));
}

static void
s_str(FILE *f, const char *key, const char *s, uint32_t n)
{
    fprintf(f, " %s=\"", key);
    cli_json_escape(f, s, n);
    fputc('"', f);
}

/* 1-3,7,9-10 */
static void
s_seqs(FILE *f, const uint64_t *s, uint32_t n)
{
    fputs(" seqs=", f);
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i;
        while (j + 1 < n && s[j + 1] == s[j] + 1)
            j++;
        fprintf(f, "%s%" PRIu64, i ? "," : "", s[i]);
        if (j > i)
            fprintf(f, "-%" PRIu64, s[j]);
        i = j + 1;
    }
}

static void
s_print(FILE *f, const sb_store_rec *r, int payload)
{
    if (r->type == SB_REC_EVENT) {
        const sb_event *e = &r->ev;
        fprintf(f, "event seq=%" PRIu64 " agg_seq=%" PRIu64, e->seq,
                e->agg_seq);
        s_str(f, "agg", e->agg, e->agg_len);
        s_str(f, "type", e->type, e->type_len);
        if (e->event_id_len)
            s_str(f, "event_id", e->event_id, e->event_id_len);
        if (e->producer_id_len) {
            s_str(f, "producer_id", e->producer_id, e->producer_id_len);
            fprintf(f, " producer_seq=%" PRIu64, e->producer_seq);
        }
        if (e->caused_by)
            fprintf(f, " caused_by=%" PRIu64, e->caused_by);
        if (e->has_source_pos)
            fprintf(f, " source_pos=%" PRIu64, e->source_pos);
        if (e->client_ts_ms)
            fprintf(f, " client_ts_ms=%" PRIu64, e->client_ts_ms);
        fprintf(f, " len=%u", e->payload_len);
        if (payload == 't' && cli_is_text(e->payload, e->payload_len)) {
            s_str(f, "payload", (const char *)e->payload, e->payload_len);
        } else if (payload != 'n') {
            fputs(" payload_hex=", f);
            cli_hex(f, e->payload, e->payload_len);
        }
    } else {
        const sb_store_batch_rec *b = &r->batch;
        fprintf(f, "batch id=%" PRIu64, b->id);
        s_str(f, "agg", b->agg, b->agg_len);
        fprintf(f,
                " n=%u first=%" PRIu64 " last=%" PRIu64 " prev_last=%" PRIu64
                " agg_last=%" PRIu64 " reason=%s",
                b->n, b->seqs[0], b->seqs[b->n - 1], b->prev_last_seq,
                b->agg_last_seq, s_reasons[b->close_reason]);
        if (b->has_source_pos)
            fprintf(f, " source_pos=%" PRIu64, b->source_pos);
        s_time(f, "ts", b->timestamp_ms);
        s_seqs(f, b->seqs, b->n);
    }
    fprintf(f, " seg=%" PRIu64 " off=%" PRIu64 "\n", r->seg_no, r->offset);
}

static int
s_open(const char *dir, sb_store_reader **r)
{
    sb_err rc = sb_store_reader_open(r, dir);

    if (rc != SB_OK) {
        fprintf(stderr, "snapbus log: %s: %s\n", dir, sb_strerror(rc));
        return CLI_FAILED;
    }
    if (sb_store_reader_segments(*r) == 0) {
        fprintf(stderr, "snapbus log: %s: no log segments here\n", dir);
        sb_store_reader_close(r);
        return CLI_FAILED;
    }
    return CLI_OK;
}

static int
s_info(const char *dir)
{
    sb_store_reader *r;
    sb_store_seg_info g, last;
    sb_store_rec rec;
    uint64_t bytes = 0, last_seq, last_batch;
    size_t n;
    int rc;

    if ((rc = s_open(dir, &r)) != CLI_OK)
        return rc;
    n = sb_store_reader_segments(r);
    printf("%-20s %-14s %-14s %12s  %-24s %s\n", "segment", "first_seq",
           "first_batch", "bytes", "created", "index");
    for (size_t i = 0; i < n; i++) {
        char created[32];
        time_t t;
        struct tm tm;
        sb_store_reader_segment(r, i, &g);
        t = (time_t)(g.created_ms / 1000);
        gmtime_r(&t, &tm);
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
        printf("%020" PRIu64 " %-14" PRIu64 " %-14" PRIu64 " %12" PRIu64
               "  %-24s %s\n",
               g.no, g.base_seq, g.base_batch, g.bytes, created,
               g.has_index_file ? "file" : (i + 1 == n ? "active" : "none"));
        bytes += g.bytes;
    }
    /* The last seq and batch id: scan the last segment only. */
    sb_store_reader_segment(r, n - 1, &last);
    last_seq = last.base_seq - 1;
    last_batch = last.base_batch - 1;
    if (sb_store_reader_seek_seq(r, last.base_seq) == SB_OK)
        while (sb_store_reader_next(r, &rec) == SB_OK) {
            if (rec.type == SB_REC_EVENT && rec.key > last_seq)
                last_seq = rec.key;
            if (rec.type == SB_REC_BATCH && rec.key > last_batch)
                last_batch = rec.key;
        }
    sb_store_reader_segment(r, 0, &g);
    printf("\nsegments=%zu bytes=%" PRIu64 " first_seq=%" PRIu64
           " last_seq=%" PRIu64 " first_batch_id=%" PRIu64
           " last_batch_id=%" PRIu64 "\n",
           n, bytes, g.base_seq, last_seq, g.base_batch, last_batch);
    sb_store_reader_close(&r);
    return CLI_OK;
}

static int
s_dump(int argc, char **argv)
{
    static const struct option lo[] = {
        {"from-seq", required_argument, NULL, 'f'},
        {"from-batch", required_argument, NULL, 'b'},
        {"limit", required_argument, NULL, 'n'},
        {"kind", required_argument, NULL, 'k'},
        {"payload", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    uint64_t from_seq = 0, from_batch = 0, limit = UINT64_MAX, shown = 0;
    int kind = 'a', payload = 't', c, rc;
    sb_store_reader *r;
    sb_store_rec rec;
    sb_err e;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:b:n:k:p:h", lo, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (cli_parse_u64(optarg, &from_seq) != 0 || from_seq == 0)
                goto usage;
            break;
        case 'b':
            if (cli_parse_u64(optarg, &from_batch) != 0 || from_batch == 0)
                goto usage;
            break;
        case 'n':
            if (cli_parse_u64(optarg, &limit) != 0)
                goto usage;
            break;
        case 'k':
            if (strcmp(optarg, "events") && strcmp(optarg, "batches") &&
                strcmp(optarg, "all"))
                goto usage;
            kind = optarg[0];
            break;
        case 'p':
            if (strcmp(optarg, "text") && strcmp(optarg, "hex") &&
                strcmp(optarg, "none"))
                goto usage;
            payload = optarg[0] == 'h' ? 'x' : optarg[0];
            break;
        case 'h':
            s_help(stdout);
            return CLI_OK;
        default:
            goto usage;
        }
    }
    if (optind + 1 != argc)
        goto usage;
    if ((rc = s_open(argv[optind], &r)) != CLI_OK)
        return rc;
    e = from_batch ? sb_store_reader_seek_batch(r, from_batch)
        : from_seq ? sb_store_reader_seek_seq(r, from_seq)
                   : sb_store_reader_seek_start(r);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus log: that is before the oldest segment\n");
        sb_store_reader_close(&r);
        return CLI_FAILED;
    }
    int started = from_seq == 0 && from_batch == 0;
    while (shown < limit && (e = sb_store_reader_next(r, &rec)) == SB_OK) {
        /* The index lands at or before the key: skip up to the record
         * asked for, then show everything from there on. */
        if (!started)
            started = from_seq
                          ? rec.type == SB_REC_EVENT && rec.key >= from_seq
                          : rec.type == SB_REC_BATCH && rec.key >= from_batch;
        if (!started)
            continue;
        if ((kind == 'e' && rec.type != SB_REC_EVENT) ||
            (kind == 'b' && rec.type != SB_REC_BATCH))
            continue;
        s_print(stdout, &rec, payload);
        shown++;
    }
    sb_store_reader_close(&r);
    if (e == SB_EPROTO) {
        fprintf(stderr,
                "snapbus log: damaged record at seg=%" PRIu64 " off=%" PRIu64
                " (see snapbus log verify)\n",
                rec.seg_no, rec.offset);
        return CLI_REFUSED;
    }
    return CLI_OK;
usage:
    s_help(stderr);
    return CLI_USAGE;
}

typedef struct {
    uint64_t base;
    uint8_t *bits;
    size_t nbits;
} s_bitset;

/* 1 if set already; grows to cover seq. -1: out of memory. */
static int
s_test_and_set(s_bitset *b, uint64_t seq)
{
    uint64_t i = seq - b->base;

    if (i >= b->nbits) {
        size_t n = b->nbits ? b->nbits : 1 << 16;
        while (n <= i)
            n *= 2;
        uint8_t *v = realloc(b->bits, n / 8);
        if (v == NULL)
            return -1;
        memset(v + b->nbits / 8, 0, (n - b->nbits) / 8);
        b->bits = v;
        b->nbits = n;
    }
    int was = (b->bits[i / 8] >> (i % 8)) & 1;
    b->bits[i / 8] |= (uint8_t)(1u << (i % 8));
    return was;
}

static int
s_verify(int argc, char **argv)
{
    int strict = 0, rc, damaged = 0;
    const char *dir = NULL;
    sb_store_reader *r;
    sb_store_rec rec;
    sb_store_seg_info g;
    s_bitset batched = {0};
    uint64_t events = 0, batches = 0, last_seq = 0, last_batch = 0, first_seq,
             cur_seg = 0, in_batches = 0;
    sb_err e;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--strict") == 0)
            strict = 1;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            s_help(stdout);
            return CLI_OK;
        } else if (dir == NULL && argv[i][0] != '-')
            dir = argv[i];
        else {
            s_help(stderr);
            return CLI_USAGE;
        }
    }
    if (dir == NULL) {
        s_help(stderr);
        return CLI_USAGE;
    }
    if ((rc = s_open(dir, &r)) != CLI_OK)
        return rc;
    sb_store_reader_set_strict(r, 1);
    sb_store_reader_segment(r, 0, &g);
    first_seq = g.base_seq;
    last_seq = g.base_seq - 1;
    last_batch = g.base_batch - 1;
    batched.base = first_seq;
    sb_store_reader_seek_start(r);
    while ((e = sb_store_reader_next(r, &rec)) == SB_OK || e == SB_EPROTO) {
        if (e == SB_EPROTO) {
            size_t n = sb_store_reader_segments(r);
            sb_store_reader_segment(r, n - 1, &g);
            int tail = rec.seg_no == g.no;
            uint64_t size = g.bytes;
            if (!tail)
                for (size_t i = 0; i < n; i++) {
                    sb_store_seg_info x;
                    sb_store_reader_segment(r, i, &x);
                    if (x.no == rec.seg_no)
                        size = x.bytes;
                }
            printf(
                "%s: seg=%" PRIu64 " off=%" PRIu64 " %s (%" PRIu64
                " bytes to the end of the segment)\n",
                tail && !strict ? "warning" : "DAMAGED", rec.seg_no, rec.offset,
                tail ? "torn or damaged record at the end of the log; the "
                       "broker truncates it at its next start"
                     : "bad record (CRC, length or format) in a sealed segment",
                size - rec.offset);
            if (!tail || strict)
                damaged++;
            break;
        }
        if (rec.seg_no != cur_seg) {
            for (size_t i = 0; i < sb_store_reader_segments(r); i++) {
                sb_store_reader_segment(r, i, &g);
                if (g.no != rec.seg_no)
                    continue;
                if (g.base_seq != last_seq + 1 ||
                    g.base_batch != last_batch + 1) {
                    printf("DAMAGED: seg=%" PRIu64 " starts at seq %" PRIu64
                           " batch %" PRIu64
                           ", the log before it ends at seq %" PRIu64
                           " batch %" PRIu64 "\n",
                           g.no, g.base_seq, g.base_batch, last_seq,
                           last_batch);
                    damaged++;
                }
            }
            cur_seg = rec.seg_no;
        }
        if (rec.type == SB_REC_EVENT) {
            if (rec.key != last_seq + 1) {
                printf("DAMAGED: seg=%" PRIu64 " off=%" PRIu64 " seq %" PRIu64
                       " follows %" PRIu64 " (seqs must be gap-free)\n",
                       rec.seg_no, rec.offset, rec.key, last_seq);
                damaged++;
            }
            if (rec.key > last_seq)
                last_seq = rec.key;
            events++;
            continue;
        }
        const sb_store_batch_rec *b = &rec.batch;
        if (b->id <= last_batch) {
            printf("DAMAGED: seg=%" PRIu64 " off=%" PRIu64 " batch %" PRIu64
                   " after batch %" PRIu64 "\n",
                   rec.seg_no, rec.offset, b->id, last_batch);
            damaged++;
        }
        last_batch = b->id;
        batches++;
        for (uint32_t i = 0; i < b->n; i++) {
            uint64_t s = b->seqs[i];
            if (s > last_seq) {
                printf("DAMAGED: batch %" PRIu64 " names seq %" PRIu64
                       ", not yet in the log there\n",
                       b->id, s);
                damaged++;
                continue;
            }
            if (s < first_seq)
                continue; /* its event went with an older segment */
            int was = s_test_and_set(&batched, s);
            if (was < 0) {
                fprintf(stderr, "snapbus log: out of memory\n");
                sb_store_reader_close(&r);
                free(batched.bits);
                return CLI_FAILED;
            }
            if (was) {
                printf("DAMAGED: seq %" PRIu64 " is in batch %" PRIu64
                       " and in an earlier one\n",
                       s, b->id);
                damaged++;
            }
            in_batches++;
        }
    }
    sb_store_reader_close(&r);
    free(batched.bits);
    uint64_t open = events > in_batches ? events - in_batches : 0;
    printf("%s: segments checked, events=%" PRIu64 " (seqs %" PRIu64
           "..%" PRIu64 ") batches=%" PRIu64 " (ids up to %" PRIu64
           ") events_in_no_batch=%" PRIu64 "%s\n",
           damaged ? "DAMAGED" : "ok", events, first_seq, last_seq, batches,
           last_batch, open,
           open
               ? " (open batches at a crash: published again at the next start)"
               : "");
    return damaged ? CLI_REFUSED : CLI_OK;
}

int
cli_log(int argc, char **argv)
{
    /* The reader logs what it finds odd; the output here says it better. */
    sb_log_set_level(SB_LOG_ERR);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        s_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    if (!strcmp(argv[1], "info") && argc == 3)
        return s_info(argv[2]);
    if (!strcmp(argv[1], "dump"))
        return s_dump(argc - 1, argv + 1);
    if (!strcmp(argv[1], "verify"))
        return s_verify(argc - 1, argv + 1);
    s_help(stderr);
    return CLI_USAGE;
}
