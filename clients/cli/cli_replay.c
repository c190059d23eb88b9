/* snapbus replay: publishes a recorded history (docs/REPLAY.md) as fast
 * as the broker takes it: the tool a node runs at start-up.
 *
 * Every publish blocks (no SB_DONTWAIT): when the broker applies
 * backpressure the tool waits, it never drops or gives up on an event.
 * A progress line (events, rate, ETA from the bytes read) is redrawn on
 * stdout when stdout is a terminal; a summary (sent, acked, refused,
 * elapsed) always ends the run. The replay file format's code is here
 * too (cli_rec.h), shared with `snapbus record`. Single-threaded. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cli_rec.h"
#include "sb_pbwire.h"
#include <snapbus/snapbus.h>

/* ---- the file format -------------------------------------------------- */

/* A record's body is a protobuf Event (proto/snapbus.proto). */

static size_t
s_str_size(uint32_t field, const char *s)
{
    return sb_pb_bytes_size(field, s ? strlen(s) : 0);
}

size_t
cli_rec_size(const sb_pub_event *ev)
{
    return s_str_size(SB_PB_EVENT_AGGREGATE, ev->aggregate) +
           s_str_size(SB_PB_EVENT_TYPE, ev->type) +
           sb_pb_bytes_size(SB_PB_EVENT_PAYLOAD, ev->payload_len) +
           s_str_size(SB_PB_EVENT_EVENT_ID, ev->event_id) +
           sb_pb_uint_size(SB_PB_EVENT_SOURCE_POS,
                           ev->has_source_pos ? ev->source_pos : 0) +
           sb_pb_uint_size(SB_PB_EVENT_CAUSED_BY, ev->caused_by) +
           s_str_size(SB_PB_EVENT_PRODUCER_ID, ev->producer_id) +
           sb_pb_uint_size(SB_PB_EVENT_PRODUCER_SEQ, ev->producer_seq) +
           sb_pb_uint_size(SB_PB_EVENT_CLIENT_TS_MS, ev->client_ts_ms) +
           sb_pb_uint_size(SB_PB_EVENT_HAS_SOURCE_POS, ev->has_source_pos != 0);
}

static uint8_t *
s_put_str(uint8_t *p, uint32_t field, const char *s)
{
    return sb_pb_put_bytes(p, field, s, s ? strlen(s) : 0);
}

int
cli_rec_write(FILE *f, const sb_pub_event *ev)
{
    size_t n = cli_rec_size(ev);
    uint8_t stackbuf[1024], *buf = stackbuf, *p;

    if (n == 0 || n > CLI_REC_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (n + 4 > sizeof stackbuf && (buf = malloc(n + 4)) == NULL)
        return -1;
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    p = buf + 4;
    p = s_put_str(p, SB_PB_EVENT_AGGREGATE, ev->aggregate);
    p = s_put_str(p, SB_PB_EVENT_TYPE, ev->type);
    p = sb_pb_put_bytes(p, SB_PB_EVENT_PAYLOAD, ev->payload, ev->payload_len);
    p = s_put_str(p, SB_PB_EVENT_EVENT_ID, ev->event_id);
    p = sb_pb_put_uint(p, SB_PB_EVENT_SOURCE_POS,
                       ev->has_source_pos ? ev->source_pos : 0);
    p = sb_pb_put_uint(p, SB_PB_EVENT_CAUSED_BY, ev->caused_by);
    p = s_put_str(p, SB_PB_EVENT_PRODUCER_ID, ev->producer_id);
    p = sb_pb_put_uint(p, SB_PB_EVENT_PRODUCER_SEQ, ev->producer_seq);
    p = sb_pb_put_uint(p, SB_PB_EVENT_CLIENT_TS_MS, ev->client_ts_ms);
    p = sb_pb_put_uint(p, SB_PB_EVENT_HAS_SOURCE_POS, ev->has_source_pos != 0);
    int rc = fwrite(buf, 1, n + 4, f) == n + 4 ? 0 : -1;
    if (buf != stackbuf)
        free(buf);
    return rc;
}

/* Copies a string field into r->text (NUL-terminated). */
static const char *
s_text(cli_rec *r, size_t *used, const uint8_t *s, size_t n)
{
    char *t = r->text + *used;

    if (memchr(s, 0, n) != NULL)
        return NULL; /* names never hold a NUL */
    memcpy(t, s, n);
    t[n] = '\0';
    *used += n + 1;
    return t;
}

static int
s_decode(cli_rec *r, size_t len, const char **why)
{
    sb_pb_reader rd;
    sb_pb_field f = {0}; /* gcc -O3 cannot see the reader always fills it */
    int got;
    size_t used = 0;
    sb_pub_event *ev = &r->ev;

    /* Strings take at most len bytes plus a NUL each (<= len / 2). */
    if (r->textcap < len + len / 2 + 8) {
        size_t cap = len + len / 2 + 8;
        char *t = realloc(r->text, cap);
        if (t == NULL) {
            *why = "out of memory";
            return -1;
        }
        r->text = t;
        r->textcap = cap;
    }
    memset(ev, 0, sizeof *ev);
    sb_pb_reader_init(&rd, r->buf, len);
    while ((got = sb_pb_next(&rd, &f)) == 1) {
        const char **str = NULL;
        if (f.wt == SB_PB_VARINT) {
            switch (f.num) {
            case SB_PB_EVENT_SOURCE_POS: ev->source_pos = f.v; break;
            case SB_PB_EVENT_CAUSED_BY: ev->caused_by = f.v; break;
            case SB_PB_EVENT_PRODUCER_SEQ: ev->producer_seq = f.v; break;
            case SB_PB_EVENT_CLIENT_TS_MS: ev->client_ts_ms = f.v; break;
            case SB_PB_EVENT_HAS_SOURCE_POS: ev->has_source_pos = f.v != 0; break;
            default: break; /* unknown: skipped, as protobuf does */
            }
            continue;
        }
        if (f.wt != SB_PB_LEN)
            continue;
        switch (f.num) {
        case SB_PB_EVENT_PAYLOAD:
            ev->payload = f.ptr;
            ev->payload_len = f.len;
            continue;
        case SB_PB_EVENT_AGGREGATE: str = &ev->aggregate; break;
        case SB_PB_EVENT_TYPE: str = &ev->type; break;
        case SB_PB_EVENT_EVENT_ID: str = &ev->event_id; break;
        case SB_PB_EVENT_PRODUCER_ID: str = &ev->producer_id; break;
        default: continue;
        }
        if ((*str = s_text(r, &used, f.ptr, f.len)) == NULL)
            goto bad;
    }
    if (got < 0)
        goto bad;
    if (ev->aggregate == NULL || ev->type == NULL) {
        *why = "an event without aggregate or type";
        return -1;
    }
    return 1;
bad:
    *why = "a record that is not a protobuf Event";
    return -1;
}

int
cli_rec_read(FILE *f, cli_rec *r, const char **why)
{
    uint8_t h[4];
    size_t got = fread(h, 1, 4, f);

    if (got == 0 && feof(f))
        return 0;
    if (got != 4) {
        *why = ferror(f) ? "read error" : "truncated record length";
        return -1;
    }
    size_t n = (size_t)h[0] | (size_t)h[1] << 8 | (size_t)h[2] << 16 |
               (size_t)h[3] << 24;
    if (n == 0 || n > CLI_REC_MAX) {
        *why = "record length out of range";
        return -1;
    }
    if (r->cap < n) {
        uint8_t *b = realloc(r->buf, n);
        if (b == NULL) {
            *why = "out of memory";
            return -1;
        }
        r->buf = b;
        r->cap = n;
    }
    if (fread(r->buf, 1, n, f) != n) {
        *why = ferror(f) ? "read error" : "truncated record";
        return -1;
    }
    return s_decode(r, n, why);
}

void
cli_rec_free(cli_rec *r)
{
    free(r->buf);
    free(r->text);
    memset(r, 0, sizeof *r);
}

/* ---- replay ---------------------------------------------------------- */

typedef struct {
    uint64_t acked;
    uint64_t duplicates; /* of acked: the broker had them already */
    uint64_t refused;
    uint64_t closed;     /* of refused: the broker said it is shutting down */
    uint64_t unknown;    /* no answer in time: fate unknown */
    sb_err first_err;
} s_count;

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    s_count *c = ctx;

    if (a->err == SB_OK || a->err == SB_EDUP) {
        /* A duplicate was taken before (docs/PUBLISHING.md): replaying a
         * file twice is idempotent, not a refusal. */
        c->acked++;
        c->duplicates += a->err == SB_EDUP;
    } else if (a->err == SB_ETIMEDOUT) {
        c->unknown++;
    } else {
        c->closed += a->err == SB_ECLOSED;
        if (c->refused++ == 0)
            c->first_err = a->err;
    }
}

/* -T bounds the wait between two signs of progress (an answer came, or a
 * request went out), not the run: the library's calls wait in slices of
 * a quarter of it, and after each slice that ended in SB_ETIMEDOUT this
 * says whether to wait on (1) or give up (0). */
typedef struct {
    uint64_t mark;    /* answers + requests at the last move */
    uint64_t last_ns; /* when it moved */
    int wait_ms;
} s_progress_t;

static int
s_moved(const sb_publisher *p, s_progress_t *g)
{
    sb_publisher_stats st;
    uint64_t now = cli_now_ns();

    sb_publisher_stats_get(p, &st);
    uint64_t m = st.acked + st.refused + st.requests + st.resends;
    if (m != g->mark) {
        g->mark = m;
        g->last_ns = now;
        return 1;
    }
    return g->wait_ms < 0 ||
           now - g->last_ns < (uint64_t)g->wait_ms * 1000000ull;
}

static void
s_progress(uint64_t sent, uint64_t bytes, uint64_t total, uint64_t t0,
           int final)
{
    double el = (double)(cli_now_ns() - t0) / 1e9;
    double rate = el > 0 ? (double)sent / el : 0;
    double frac = total ? (double)bytes / (double)total : 0;
    char bar[31];
    int fill = (int)(frac * 30 + 0.5);

    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    printf("\r[%s] %3.0f%% %" PRIu64 " events  %.0f ev/s", bar, frac * 100,
           sent, rate);
    if (!final && frac > 0 && frac < 1)
        printf("  ETA %.0fs ", el * (1 - frac) / frac);
    else
        printf("          ");
    if (final)
        putchar('\n');
    fflush(stdout);
}

static void
s_help(FILE *f)
{
    fprintf(
        f,
        "usage: snapbus replay [OPTIONS] FILE\n"
        "\n"
        "Publishes every event of FILE (a replay file: docs/REPLAY.md; '-'\n"
        "for stdin), in order, as fast as the broker takes them. Waits while\n"
        "the broker applies backpressure; never drops an event. Shows a\n"
        "progress line on a terminal and ends with a summary.\n"
        "\n"
        "options:\n"
        "  -e, --endpoint EP     broker ingest (default tcp://127.0.0.1:7701)\n"
        "  -a, --ack LEVEL       none|sequenced|published (default sequenced)\n"
        "  -w, --window N        requests awaiting their ack (default 64)\n"
        "  -b, --batch N         events per request, at most (default 1000)\n"
        "  -T, --timeout-ms MS   longest wait without progress (no answer\n"
        "                        from the broker, no request taken), also for\n"
        "                        its hello at the start (default 60000)\n"
        "  -P, --producer-id ID  idempotent publishing (or SNAPBUS_PRODUCER_ID):\n"
        "                        events without a producer id of their own get\n"
        "                        this one and seqs from --producer-seq-start N\n"
        "                        (default 1), so a replay run again is answered\n"
        "                        with the original seqs (docs/PUBLISHING.md)\n"
        "  -R, --retry           when the broker stops or vanishes, keep what\n"
        "                        it did not take and send it again once a\n"
        "                        broker answers (needs --producer-id); gives up\n"
        "                        after --timeout-ms without a broker\n"
        "  -q, --quiet           no progress line\n"
        CLI_CURVE_HELP
        "  -h, --help            this help\n"
        "\n"
        "The summary line: sent (taken from the file), acked, refused, and\n"
        "fate unknown (no answer: the broker may or may not have them).\n"
        "exit codes: 0 all taken, 1 the broker refused some event,\n"
        "2 usage, 3 the file is unreadable, no broker answered, the broker\n"
        "stopped (without --retry), or a fate is unknown.\n");
}

int
cli_replay(int argc, char **argv)
{
    static const struct option lo[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"ack", required_argument, NULL, 'a'},
        {"window", required_argument, NULL, 'w'},
        {"batch", required_argument, NULL, 'b'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"quiet", no_argument, NULL, 'q'},
        {"producer-id", required_argument, NULL, 'P'},
        {"producer-seq-start", required_argument, NULL, 'S'},
        {"retry", no_argument, NULL, 'R'},
        CLI_CURVE_LONGOPTS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    sb_publisher_opts po;
    cli_curve ck = {0};
    int c, quiet = 0, wait_ms = 60000, n, retry = 0;
    s_count cnt = {0};

    sb_publisher_opts_defaults(&po);
    /* An ack is waited for as long as the broker makes progress: under
     * backpressure a reply can take longer than any fixed timeout, and a
     * timeout would report events of unknown fate. -T bounds the wait
     * between two signs of progress instead (s_moved). */
    po.reply_timeout_ms = -1;
    po.producer_id = getenv("SNAPBUS_PRODUCER_ID");
    if (po.producer_id != NULL && po.producer_id[0] == '\0')
        po.producer_id = NULL;
    while ((c = getopt_long(argc, argv, "e:a:w:b:T:P:S:Rqh", lo, NULL)) != -1) {
        if (cli_curve_opt(&ck, c, optarg))
            continue;
        switch (c) {
        case 'e':
            po.endpoint = optarg;
            break;
        case 'a':
            if (!strcmp(optarg, "none"))
                po.ack = SB_ACK_NONE;
            else if (!strcmp(optarg, "sequenced"))
                po.ack = SB_ACK_SEQUENCED;
            else if (!strcmp(optarg, "published"))
                po.ack = SB_ACK_PUBLISHED;
            else {
                fprintf(stderr, "snapbus replay: bad --ack '%s'\n", optarg);
                return CLI_USAGE;
            }
            break;
        case 'w':
            if (cli_parse_int(optarg, 1, 1000000, &n) != 0) {
                fprintf(stderr, "snapbus replay: bad --window\n");
                return CLI_USAGE;
            }
            po.window = (uint32_t)n;
            break;
        case 'b':
            if (cli_parse_int(optarg, 1, 1000000, &n) != 0) {
                fprintf(stderr, "snapbus replay: bad --batch\n");
                return CLI_USAGE;
            }
            po.batch_events = (uint32_t)n;
            break;
        case 'T':
            if (cli_parse_int(optarg, -1, 86400000, &wait_ms) != 0) {
                fprintf(stderr, "snapbus replay: bad --timeout-ms\n");
                return CLI_USAGE;
            }
            break;
        case 'q':
            quiet = 1;
            break;
        case 'P':
            po.producer_id = optarg;
            break;
        case 'S':
            if (cli_parse_u64(optarg, &po.producer_seq_start) != 0) {
                fprintf(stderr, "snapbus replay: bad --producer-seq-start\n");
                return CLI_USAGE;
            }
            break;
        case 'R':
            retry = 1;
            break;
        case 'h':
            s_help(stdout);
            return CLI_OK;
        default:
            s_help(stderr);
            return CLI_USAGE;
        }
    }
    if (optind + 1 != argc) {
        s_help(stderr);
        return CLI_USAGE;
    }
    if (cli_curve_load(&ck, "snapbus replay", &po.curve) != 0)
        return CLI_USAGE;
    if (retry && (po.producer_id == NULL || po.ack == SB_ACK_NONE)) {
        fprintf(stderr, "snapbus replay: --retry needs --producer-id (or "
                        "SNAPBUS_PRODUCER_ID) and an acked level: without "
                        "them a resend could publish an event twice\n");
        return CLI_USAGE;
    }
    /* A resend is answered with the original seq: with --retry, keep
     * trying for as long as -T allows between signs of progress. */
    if (retry)
        po.resend = 1000000;
    po.timeout_ms = wait_ms;
    const char *path = argv[optind];
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (f == NULL) {
        fprintf(stderr, "snapbus replay: %s: %s\n", path, strerror(errno));
        return CLI_FAILED;
    }
    static char iobuf[1 << 20];
    setvbuf(f, iobuf, _IOFBF, sizeof iobuf);
    char magic[CLI_REC_MAGIC_LEN];
    if (fread(magic, 1, sizeof magic, f) != sizeof magic ||
        memcmp(magic, CLI_REC_MAGIC, sizeof magic) != 0) {
        fprintf(stderr, "snapbus replay: %s: not a replay file\n", path);
        if (f != stdin)
            fclose(f);
        return CLI_FAILED;
    }
    struct stat sbuf;
    uint64_t total = f != stdin && fstat(fileno(f), &sbuf) == 0
                         ? (uint64_t)sbuf.st_size
                         : 0;
    int bar = !quiet && isatty(STDOUT_FILENO);

    sb_publisher *p;
    sb_err e = sb_publisher_new(&p, &po);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus replay: %s: %s\n", po.endpoint, sb_strerror(e));
        if (f != stdin)
            fclose(f);
        return e == SB_EINVAL ? CLI_USAGE : CLI_FAILED;
    }
    sb_publisher_on_ack(p, s_on_ack, &cnt);

    cli_rec r = {0};
    const char *why = NULL;
    uint64_t sent = 0, bytes = CLI_REC_MAGIC_LEN, t0 = cli_now_ns();
    uint64_t next_draw = t0;
    s_progress_t mark = {0, 0, wait_ms};
    int rc = CLI_OK, got = 0, told = 0; /* told: the broker said it stops */
    /* A broker that is not there is told apart from a slow one first. */
    if ((e = sb_publisher_hello(p, wait_ms)) != SB_OK) {
        if (e == SB_ETIMEDOUT)
            fprintf(stderr, "snapbus replay: no broker answered at %s within %d ms\n",
                    po.endpoint, wait_ms);
        else
            fprintf(stderr, "snapbus replay: %s: %s\n", po.endpoint, sb_strerror(e));
        rc = CLI_FAILED;
    }
    s_moved(p, &mark);
    mark.last_ns = cli_now_ns();
    /* Slices of a quarter of -T (s_moved): a broker gone shows within
     * about 1.25 x -T. */
    sb_publisher_set_timeout(p, wait_ms < 0 ? -1 : wait_ms / 4 + 1);
    while (rc == CLI_OK && (got = cli_rec_read(f, &r, &why)) == 1) {
        /* Blocking: waits out the broker's backpressure, as long as it
         * makes progress. */
        while ((e = sb_publisher_publish(p, &r.ev, 0, NULL)) == SB_ETIMEDOUT &&
               s_moved(p, &mark))
            ;
        if (e != SB_OK) {
            if (e == SB_EINVAL || e == SB_ETOOBIG) {
                /* This event can never be taken: count it, go on. */
                cnt.refused++;
                if (cnt.first_err == SB_OK)
                    cnt.first_err = e;
            } else {
                fprintf(stderr, "\nsnapbus replay: %s\n",
                        e == SB_ETIMEDOUT
                            ? "timed out, fate unknown: no answer from the "
                              "broker and nothing taken within --timeout-ms"
                            : sb_strerror(e));
                rc = CLI_FAILED;
                break;
            }
        }
        if (cnt.closed > 0 && !retry) {
            /* The broker said so: what follows would be refused too. */
            fprintf(stderr, "\nsnapbus replay: the broker is shutting down "
                            "(it refused %" PRIu64 " events); run again with "
                            "--retry --producer-id to resume without "
                            "duplicates\n",
                    cnt.closed);
            rc = CLI_FAILED;
            told = 1;
            sent++;
            break;
        }
        sent++;
        bytes += 4 + cli_rec_size(&r.ev);
        if (bar && (sent & 1023) == 0 && cli_now_ns() >= next_draw) {
            s_progress(sent, bytes, total, t0, 0);
            next_draw = cli_now_ns() + 200000000ull;
        }
    }
    if (rc == CLI_OK && got < 0) {
        fprintf(stderr, "\nsnapbus replay: %s: record %" PRIu64 ": %s\n", path,
                sent + 1, why);
        rc = CLI_FAILED;
    }
    if (f != stdin)
        fclose(f);
    cli_rec_free(&r);
    /* The answers still owed come at once from a broker that is stopping
     * (refusals): wait for them too, so they are counted, not unknown. */
    if (rc != CLI_FAILED || told) {
        while ((e = sb_publisher_wait_all(p, wait_ms < 0 ? -1 : wait_ms / 4 + 1)) ==
                   SB_ETIMEDOUT &&
               s_moved(p, &mark))
            ;
        if (e == SB_OK && po.ack == SB_ACK_NONE)
            e = sb_publisher_hello(p, wait_ms); /* the broker read them */
        if (e != SB_OK && !told) {
            fprintf(stderr, "\nsnapbus replay: waiting for acks: %s\n",
                    e == SB_ETIMEDOUT ? "timed out, fate unknown"
                                      : sb_strerror(e));
            rc = CLI_FAILED;
        }
    }
    /* Given up: destroy waits no more; it reports what never got an
     * answer (fate unknown). */
    if (rc == CLI_FAILED)
        sb_publisher_set_timeout(p, 0);
    sb_publisher_destroy(&p);
    double el = (double)(cli_now_ns() - t0) / 1e9;
    if (bar)
        s_progress(sent, total ? total : bytes, total ? total : bytes, t0, 1);
    /* Taken but neither acked nor refused: reported SB_ETIMEDOUT, or
     * (fire-and-forget) sent without the broker's hello after them. */
    uint64_t unknown = sent - cnt.acked - cnt.refused;
    if (po.ack == SB_ACK_NONE) {
        unknown = rc == CLI_FAILED ? sent - cnt.refused : 0;
        printf("sent=%" PRIu64 " acked=- refused=%" PRIu64, sent, cnt.refused);
    } else {
        printf("sent=%" PRIu64 " acked=%" PRIu64 " refused=%" PRIu64, sent,
               cnt.acked, cnt.refused);
    }
    if (unknown > 0)
        printf(" fate_unknown=%" PRIu64, unknown);
    if (cnt.duplicates > 0)
        printf(" duplicates=%" PRIu64, cnt.duplicates);
    printf(" elapsed=%.3fs rate=%.0f ev/s\n", el, el > 0 ? sent / el : 0.0);
    if (cnt.refused)
        fprintf(stderr, "snapbus replay: %" PRIu64 " events refused (first: %s)\n",
                cnt.refused, sb_strerror(cnt.first_err));
    fflush(stdout);
    if (rc == CLI_OK && unknown > 0)
        rc = CLI_FAILED;
    if (rc == CLI_OK && cnt.refused)
        rc = CLI_REFUSED;
    return rc;
}
