/* snapbus sub: prints snapshot batches from the broker's PUB socket, as
 * text or as one JSON object per line, until --count batches or SIGINT /
 * SIGTERM (checked between waits: recv returns SB_EAGAIN on a signal). */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "snapbus.h"

static volatile sig_atomic_t s_stop;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

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
            "  -p, --prefix P       aggregates whose name starts with P\n"
            "                       (default: all; repeatable)\n"
            "  -x, --exact NAME     exactly aggregate NAME (repeatable)\n"
            "  -n, --count N        stop after N batches\n"
            "  -T, --timeout-ms MS  stop after MS without a batch (exit 3)\n"
            "  -j, --json           one JSON object per batch per line\n"
            CLI_CURVE_HELP
            "  -h, --help           this help\n");
}

int
cli_sub(int argc, char **argv)
{
    static const struct option lo[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"prefix", required_argument, NULL, 'p'},
        {"exact", required_argument, NULL, 'x'},
        {"count", required_argument, NULL, 'n'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"json", no_argument, NULL, 'j'},
        CLI_CURVE_LONGOPTS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    sb_subscriber_opts so;
    cli_curve ck = {0};
    uint64_t count = 0, got = 0;
    int c, json = 0, timeout_ms = -1, nsubs = 0;
    /* Subscriptions are set after the socket exists; remember them. */
    char **prefixes = calloc((size_t)argc, sizeof *prefixes);
    char **exacts = calloc((size_t)argc, sizeof *exacts);
    int np = 0, nx = 0, rc = CLI_OK;

    if (prefixes == NULL || exacts == NULL) {
        free(prefixes);
        free(exacts);
        return CLI_FAILED;
    }
    sb_subscriber_opts_defaults(&so);
    so.query_endpoint = NULL;
    while ((c = getopt_long(argc, argv, "e:p:x:n:T:jh", lo, NULL)) != -1) {
        if (cli_curve_opt(&ck, c, optarg))
            continue;
        switch (c) {
        case 'e':
            so.endpoint = optarg;
            break;
        case 'p':
            prefixes[np++] = optarg;
            break;
        case 'x':
            exacts[nx++] = optarg;
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
        free(prefixes);
        free(exacts);
        return rc < 0 ? CLI_OK : rc;
    }

    if (cli_curve_load(&ck, "snapbus sub", &so.curve) != 0) {
        free(prefixes);
        free(exacts);
        return CLI_USAGE;
    }
    sb_subscriber *s;
    sb_err e = sb_subscriber_new(&s, &so);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus sub: %s: %s\n", so.endpoint, sb_strerror(e));
        free(prefixes);
        free(exacts);
        return e == SB_EINVAL ? CLI_USAGE : CLI_FAILED;
    }
    for (int i = 0; i < np && e == SB_OK; i++, nsubs++)
        e = sb_subscriber_subscribe(s, prefixes[i]);
    for (int i = 0; i < nx && e == SB_OK; i++, nsubs++)
        e = sb_subscriber_subscribe_exact(s, exacts[i]);
    if (e == SB_OK && nsubs == 0)
        e = sb_subscriber_subscribe(s, "");
    free(prefixes);
    free(exacts);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus sub: subscribe: %s\n", sb_strerror(e));
        sb_subscriber_destroy(&s);
        return CLI_USAGE;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal; /* no SA_RESTART: the wait must end */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    while (!s_stop && (count == 0 || got < count)) {
        sb_snapshot *b;
        e = sb_subscriber_recv(s, &b, timeout_ms);
        if (e == SB_EAGAIN) {
            if (timeout_ms >= 0 && !s_stop) {
                fprintf(stderr, "snapbus sub: no batch for %d ms\n",
                        timeout_ms);
                rc = CLI_FAILED;
                break;
            }
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
    sb_subscriber_destroy(&s);
    return rc;
}
