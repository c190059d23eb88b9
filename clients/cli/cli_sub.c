/* snapbus sub: prints snapshot batches from the broker's PUB socket, as
 * text or as one JSON object per line, until --count batches or SIGINT /
 * SIGTERM (checked between waits: recv returns SB_EAGAIN on a signal).
 * Lossless (gaps filled over the query socket) unless told otherwise. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include <snapbus/snapbus.h>

static const char *
s_close_name(int r)
{
    switch (r) {
    case 0:
        return "delay";
    case 1:
        return "immediate";
    case 2:
        return "max_events";
    case 3:
        return "max_bytes";
    case 4:
        return "shutdown";
    }
    return "unknown";
}

static void
s_print_text(const sb_snapshot *b)
{
    uint64_t pos;
    size_t n = sb_snapshot_count(b);

    printf("batch=%" PRIu64 " aggregate=%s seq=%" PRIu64 "..%" PRIu64
           " agg_last_seq=%" PRIu64 " prev_last_seq=%" PRIu64
           " events=%zu close=%s ts_ms=%" PRIu64,
           sb_snapshot_batch_id(b), sb_snapshot_aggregate(b),
           sb_snapshot_first_seq(b), sb_snapshot_last_seq(b),
           sb_snapshot_agg_last_seq(b), sb_snapshot_prev_last_seq(b), n,
           s_close_name(sb_snapshot_close_reason(b)),
           sb_snapshot_timestamp_ms(b));
    if (sb_snapshot_source_pos(b, &pos))
        printf(" source_pos=%" PRIu64, pos);
    putchar('\n');
    for (size_t i = 0; i < n; i++) {
        sb_snapshot_event e;
        if (sb_snapshot_event_get(b, i, &e) != SB_OK)
            continue;
        printf("  seq=%" PRIu64 " agg_seq=%" PRIu64, e.seq, e.agg_seq);
        if (strcmp(e.aggregate, sb_snapshot_aggregate(b)) != 0)
            printf(" aggregate=%s", e.aggregate);
        printf(" type=%s", e.type);
        if (e.event_id[0])
            printf(" event_id=%s", e.event_id);
        if (e.caused_by)
            printf(" caused_by=%" PRIu64, e.caused_by);
        if (e.has_source_pos)
            printf(" source_pos=%" PRIu64, e.source_pos);
        if (e.producer_id[0])
            printf(" producer=%s/%" PRIu64, e.producer_id, e.producer_seq);
        if (cli_is_text(e.payload, e.payload_len)) {
            printf(" payload=%.*s\n", (int)e.payload_len,
                   (const char *)e.payload);
        } else {
            fputs(" payload_hex=", stdout);
            cli_hex(stdout, e.payload, e.payload_len);
            putchar('\n');
        }
    }
}

static void
s_json_str(const char *key, const char *v)
{
    printf(",\"%s\":\"", key);
    cli_json_escape(stdout, v, strlen(v));
    putchar('"');
}

static void
s_print_json(const sb_snapshot *b)
{
    uint64_t pos;
    size_t n = sb_snapshot_count(b);

    printf("{\"batch_id\":%" PRIu64, sb_snapshot_batch_id(b));
    s_json_str("aggregate", sb_snapshot_aggregate(b));
    printf(",\"first_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64
           ",\"aggregate_last_seq\":%" PRIu64 ",\"prev_last_seq\":%" PRIu64
           ",\"timestamp_ms\":%" PRIu64 ",\"close_reason\":\"%s\"",
           sb_snapshot_first_seq(b), sb_snapshot_last_seq(b),
           sb_snapshot_agg_last_seq(b), sb_snapshot_prev_last_seq(b),
           sb_snapshot_timestamp_ms(b),
           s_close_name(sb_snapshot_close_reason(b)));
    if (sb_snapshot_source_pos(b, &pos))
        printf(",\"source_pos\":%" PRIu64, pos);
    fputs(",\"events\":[", stdout);
    for (size_t i = 0; i < n; i++) {
        sb_snapshot_event e;
        if (sb_snapshot_event_get(b, i, &e) != SB_OK)
            continue;
        printf("%s{\"seq\":%" PRIu64 ",\"agg_seq\":%" PRIu64, i ? "," : "",
               e.seq, e.agg_seq);
        s_json_str("aggregate", e.aggregate);
        s_json_str("type", e.type);
        if (e.event_id[0])
            s_json_str("event_id", e.event_id);
        if (e.caused_by)
            printf(",\"caused_by\":%" PRIu64, e.caused_by);
        if (e.has_source_pos)
            printf(",\"source_pos\":%" PRIu64, e.source_pos);
        if (e.producer_id[0]) {
            s_json_str("producer_id", e.producer_id);
            printf(",\"producer_seq\":%" PRIu64, e.producer_seq);
        }
        if (e.client_ts_ms)
            printf(",\"client_ts_ms\":%" PRIu64, e.client_ts_ms);
        if (cli_is_text(e.payload, e.payload_len)) {
            fputs(",\"payload\":\"", stdout);
            cli_json_escape(stdout, e.payload, e.payload_len);
        } else {
            fputs(",\"payload_hex\":\"", stdout);
            cli_hex(stdout, e.payload, e.payload_len);
        }
        fputs("\"}", stdout);
    }
    fputs("]}\n", stdout);
}

static void
s_help(FILE *f)
{
    fprintf(f,
            "usage: snapbus sub [OPTIONS]\n"
            "\n"
            "Prints each snapshot batch the broker publishes: a line for the\n"
            "batch (aggregate, batch id, seq range), then a line per event\n"
            "(seq, type, payload as text if printable, else hex).\n"
            "\n"
            "options:\n"
            "  -e, --endpoint EP    broker PUB (default tcp://127.0.0.1:7702)\n"
            "  -Q, --query EP       broker query socket, to fill gaps (default\n"
            "                       tcp://127.0.0.1:7703 when -e is not given)\n"
            "      --no-fill        no gap fill: a missed batch is reported as\n"
            "                       lost (stderr) instead of fetched\n"
            "  -p, --prefix P       aggregates whose name starts with P\n"
            "                       (default: all; repeatable)\n"
            "  -x, --exact NAME     exactly aggregate NAME (repeatable)\n"
            "  -n, --count N        stop after N batches\n"
            "  -T, --timeout-ms MS  stop after MS without a batch (exit 3);\n"
            "                       also the wait for the broker's hello\n"
            "  -j, --json           one JSON object per batch per line\n"
            "      --from-seq N     start with every batch holding a seq >= N\n"
            "                       (fetched from the broker, then live)\n"
            "      --resume FILE    start from the position saved in FILE (if\n"
            "                       it exists) and keep saving the position\n"
            "                       there: restarting with the same FILE loses\n"
            "                       nothing (a batch may come twice)\n"
            "      --exit-at-end    exit 0 once every batch published before\n"
            "                       the start has been printed\n"
            "      --ready-file F   write F once subscribed (the broker has\n"
            "                       answered hello): publish after that\n"
            CLI_CURVE_HELP
            "  -h, --help           this help\n"
            "\n"
            "Batches the PUB socket dropped (a slow terminal, a burst) are\n"
            "fetched from the broker and printed in order; what the broker no\n"
            "longer retains is reported on stderr and skipped. When the broker\n"
            "stops, the batches it names in its end-of-epoch marker are fetched\n"
            "before it closes; any not fetched are reported as lost.\n"
            "--prefix is a plain prefix, not a pattern: 'e3/*' matches only\n"
            "names that start with the characters e3/* (use 'e3/').\n"
            "\n"
            "exit codes: 0 done (--count, --exit-at-end, SIGINT/SIGTERM),\n"
            "2 usage, 3 no broker answered, no batch (or not caught up)\n"
            "within -T, or batches were lost.\n");
}

/* The position file of --resume: one decimal seq and a newline. */
static int
s_read_position(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "r");
    char line[64];

    *out = 0;
    if (f == NULL)
        return errno == ENOENT ? 0 : -1;
    if (fgets(line, sizeof line, f) == NULL) { /* empty: no position yet */
        fclose(f);
        return 0;
    }
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    return cli_parse_u64(line, out);
}

/* Written to a temporary name and renamed, so a crash mid-write leaves
 * the previous position, never half a number. */
static int
s_write_file(const char *path, const char *text)
{
    char tmp[4096];
    FILE *f;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    if ((f = fopen(tmp, "w")) == NULL)
        return -1;
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        return -1;
    }
    return 0;
}

static int
s_save_position(const char *path, uint64_t pos)
{
    char line[32];

    snprintf(line, sizeof line, "%" PRIu64 "\n", pos);
    return s_write_file(path, line);
}

/* The highest seq the broker has published: an empty page past the
 * newest batch carries it. */
static sb_err
s_broker_last_seq(const sb_subscriber_opts *so, int timeout_ms,
                  uint64_t *out)
{
    sb_fetch_opts fo;
    sb_fetch_info info;

    sb_fetch_opts_defaults(&fo);
    fo.after_batch_id = UINT64_MAX;
    fo.headers_only = 1;
    fo.curve = so->curve;
    sb_err e = sb_fetch(so->query_endpoint, &fo, NULL, NULL, &info,
                        timeout_ms);
    if (e == SB_OK)
        *out = info.last_seq;
    return e;
}

int
cli_sub(int argc, char **argv)
{
    static const struct option lo[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"query", required_argument, NULL, 'Q'},
        {"no-fill", no_argument, NULL, 'F'},
        {"prefix", required_argument, NULL, 'p'},
        {"exact", required_argument, NULL, 'x'},
        {"count", required_argument, NULL, 'n'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"json", no_argument, NULL, 'j'},
        {"from-seq", required_argument, NULL, 'f'},
        {"resume", required_argument, NULL, 'r'},
        {"exit-at-end", no_argument, NULL, 'E'},
        {"ready-file", required_argument, NULL, 'R'},
        CLI_CURVE_LONGOPTS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    sb_subscriber_opts so;
    cli_curve ck = {0};
    uint64_t count = 0, got = 0;
    int c, json = 0, timeout_ms = -1, no_fill = 0, endpoint_given = 0;
    const char *query = NULL, *resume = NULL, *ready = NULL;
    int exit_at_end = 0, from_given = 0;
    /* Subscriptions are set after the socket exists; remember them. */
    cli_topics t;
    int rc = CLI_OK, lost = 0;

    if (cli_topics_init(&t, argc) != 0)
        return CLI_FAILED;
    sb_subscriber_opts_defaults(&so);
    while ((c = getopt_long(argc, argv, "e:Q:p:x:n:T:jh", lo, NULL)) != -1) {
        if (cli_curve_opt(&ck, c, optarg))
            continue;
        switch (c) {
        case 'e':
            so.endpoint = optarg;
            endpoint_given = 1;
            break;
        case 'Q':
            query = optarg;
            break;
        case 'F':
            no_fill = 1;
            break;
        case 'p':
            t.prefix[t.np++] = optarg;
            break;
        case 'x':
            t.exact[t.nx++] = optarg;
            break;
        case 'n':
            if (cli_parse_u64(optarg, &count) != 0 || count == 0) {
                fprintf(stderr, "snapbus sub: bad --count\n");
                rc = CLI_USAGE;
            }
            break;
        case 'T':
            if (cli_parse_int(optarg, 0, 86400000, &timeout_ms) != 0) {
                fprintf(stderr, "snapbus sub: bad --timeout-ms\n");
                rc = CLI_USAGE;
            }
            break;
        case 'j':
            json = 1;
            break;
        case 'f':
            if (cli_parse_u64(optarg, &so.resume_from_seq) != 0) {
                fprintf(stderr, "snapbus sub: bad --from-seq '%s'\n", optarg);
                rc = CLI_USAGE;
            }
            from_given = 1;
            break;
        case 'r':
            resume = optarg;
            break;
        case 'E':
            exit_at_end = 1;
            break;
        case 'R':
            ready = optarg;
            break;
        case 'h':
            s_help(stdout);
            rc = -1;
            break;
        default:
            s_help(stderr);
            rc = CLI_USAGE;
        }
        if (rc != CLI_OK)
            break;
    }
    if (rc != CLI_OK || optind < argc) {
        if (rc == CLI_OK) {
            fprintf(stderr, "snapbus sub: unexpected argument '%s'\n",
                    argv[optind]);
            rc = CLI_USAGE;
        }
        cli_topics_free(&t);
        return rc < 0 ? CLI_OK : rc;
    }

    for (int i = 0; i < t.np; i++)
        if (strpbrk(t.prefix[i], "*?[") != NULL)
            fprintf(stderr,
                    "snapbus sub: warning: --prefix '%s' is a plain prefix, "
                    "not a pattern: it matches only names that start with "
                    "these characters\n",
                    t.prefix[i]);
    if (resume != NULL) {
        uint64_t pos;
        if (from_given) {
            fprintf(stderr, "snapbus sub: --from-seq and --resume exclude "
                            "each other\n");
            cli_topics_free(&t);
            return CLI_USAGE;
        }
        if (s_read_position(resume, &pos) != 0) {
            fprintf(stderr,
                    "snapbus sub: --resume %s: expected one decimal seq "
                    "(or no file to start live)\n",
                    resume);
            cli_topics_free(&t);
            return CLI_USAGE;
        }
        so.resume_from_seq = pos;
    }
    if (cli_curve_load(&ck, "snapbus sub", &so.curve) != 0) {
        cli_topics_free(&t);
        return CLI_USAGE;
    }
    /* A broker's query endpoint cannot be guessed from another PUB
     * endpoint; the defaults are one broker's pair. */
    if (!no_fill)
        so.query_endpoint =
            query ? query : endpoint_given ? NULL : "tcp://127.0.0.1:7703";
    if (!no_fill && so.query_endpoint == NULL)
        fprintf(stderr, "snapbus sub: no --query: missed batches are "
                        "reported, not fetched\n");
    if (so.query_endpoint == NULL &&
        (exit_at_end || resume != NULL || so.resume_from_seq != 0)) {
        fprintf(stderr, "snapbus sub: --exit-at-end, --from-seq and --resume "
                        "need the query socket (--query, no --no-fill)\n");
        cli_topics_free(&t);
        return CLI_USAGE;
    }
    sb_subscriber *s;
    sb_err e = cli_subscriber_open(&s, &so, &t);
    cli_topics_free(&t);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus sub: %s: %s\n", so.endpoint, sb_strerror(e));
        return e == SB_EINVAL ? CLI_USAGE : CLI_FAILED;
    }

    /* Hello now, not at the first recv, so that --ready-file and
     * --exit-at-end know where the subscription starts. */
    int start_ms = timeout_ms >= 0 ? timeout_ms : 10000;
    uint64_t end_seq = 0, saved = so.resume_from_seq;
    if (ready != NULL || exit_at_end || resume != NULL) {
        e = sb_subscriber_start(s, start_ms);
        if (e == SB_OK && exit_at_end)
            e = s_broker_last_seq(&so, start_ms, &end_seq);
        if (e != SB_OK) {
            fprintf(stderr,
                    "snapbus sub: no broker answered at %s within %d ms (%s)\n",
                    so.query_endpoint, start_ms, sb_strerror(e));
            sb_subscriber_destroy(&s);
            return CLI_FAILED;
        }
    }
    if (ready != NULL) {
        char text[600];
        snprintf(text, sizeof text, "pub=%s\nquery=%s\n", so.endpoint,
                 so.query_endpoint ? so.query_endpoint : "");
        if (s_write_file(ready, text) != 0) {
            fprintf(stderr, "snapbus sub: --ready-file %s: %s\n", ready,
                    strerror(errno));
            sb_subscriber_destroy(&s);
            return CLI_FAILED;
        }
    }

    cli_stop_on_signals();
    uint64_t t0_ns = cli_now_ns();
    if (cli_subscriber_start("snapbus sub", s, &so, timeout_ms) != 0)
        rc = CLI_FAILED;
    while (rc == CLI_OK && !cli_stop && (count == 0 || got < count)) {
        sb_snapshot *b;
        uint64_t pos = sb_subscriber_position(s);
        if (resume != NULL && pos > saved) {
            if (s_save_position(resume, pos) != 0)
                fprintf(stderr, "snapbus sub: --resume %s: %s\n", resume,
                        strerror(errno));
            saved = pos;
        }
        /* The position passes end_seq once every batch holding a seq up
         * to it has been returned (the subscriber's probe confirms it). */
        if (exit_at_end && (end_seq == 0 || pos > end_seq))
            break;
        e = sb_subscriber_recv(s, &b, exit_at_end ? 100 : timeout_ms);
        if (e == SB_EAGAIN && exit_at_end) {
            if (timeout_ms >= 0 && !cli_stop) {
                /* -T bounds the whole catch-up here. */
                if (cli_now_ns() - t0_ns >= (uint64_t)timeout_ms * 1000000u) {
                    fprintf(stderr,
                            "snapbus sub: not caught up (seq %" PRIu64
                            ") within %d ms\n",
                            end_seq, timeout_ms);
                    rc = CLI_FAILED;
                    break;
                }
            }
            continue;
        }
        if (e == SB_EAGAIN) {
            if (timeout_ms >= 0 && !cli_stop) {
                fprintf(stderr, "snapbus sub: no batch for %d ms\n",
                        timeout_ms);
                rc = CLI_FAILED;
                break;
            }
            continue;
        }
        if (e == SB_ENOENT) { /* reported; the next recv goes on */
            cli_report_loss("snapbus sub", s);
            lost = 1;
            continue;
        }
        if (e == SB_ERESTART) {
            fprintf(stderr, "snapbus sub: the broker restarted\n");
            continue;
        }
        if (e != SB_OK) {
            fprintf(stderr, "snapbus sub: %s\n", sb_strerror(e));
            rc = CLI_FAILED;
            break;
        }
        if (json)
            s_print_json(b);
        else
            s_print_text(b);
        fflush(stdout);
        sb_snapshot_destroy(&b);
        got++;
    }
    if (resume != NULL && sb_subscriber_position(s) > saved &&
        s_save_position(resume, sb_subscriber_position(s)) != 0)
        fprintf(stderr, "snapbus sub: --resume %s: %s\n", resume,
                strerror(errno));
    /* A loss, reported or found at exit, is the run's outcome too. */
    if ((cli_report_unchecked("snapbus sub", s) || lost) && rc == CLI_OK)
        rc = CLI_FAILED;
    sb_subscriber_destroy(&s);
    return rc;
}
