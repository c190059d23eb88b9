/* snapbus record: writes a replay file (docs/REPLAY.md), either from a
 * live subscription (every event of every batch, each under its own
 * aggregate, with the lossless subscriber when --query is given) or, with
 * --generate, synthetic events for load tests. The file goes to stdout or
 * -o FILE; binary, so a terminal is refused. Single-threaded. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_rec.h"
#include <snapbus/snapbus.h>

static void
s_help(FILE *f)
{
    fprintf(
        f,
        "usage: snapbus record [OPTIONS] > FILE\n"
        "       snapbus record --generate N [--aggregates K] [--size S] > FILE\n"
        "\n"
        "Writes a replay file (docs/REPLAY.md) for 'snapbus replay'.\n"
        "From a subscription: every event of every batch received, in order,\n"
        "until --count events or SIGINT/SIGTERM. With --generate: N events\n"
        "of S payload bytes over K aggregates (gen/0 .. gen/K-1, round\n"
        "robin), payload = the event's index (8 bytes, little-endian) then\n"
        "filler.\n"
        "\n"
        "options:\n"
        "  -o, --output FILE     write here instead of stdout\n"
        "  -e, --endpoint EP     broker PUB (default tcp://127.0.0.1:7702)\n"
        "  -Q, --query EP        broker query socket: fill gaps (lossless)\n"
        "  -p, --prefix P        aggregates starting with P (repeatable)\n"
        "  -x, --exact NAME      exactly aggregate NAME (repeatable)\n"
        "  -r, --resume SEQ      from every batch holding a seq >= SEQ\n"
        "  -n, --count N         stop after N events\n"
        "  -T, --timeout-ms MS   stop after MS without a batch (exit 3);\n"
        "                        also the wait for the broker's hello\n"
        "  -H, --rcvhwm N        receive high-water mark, batches (default\n"
        "                        10000); past it the PUB socket drops and\n"
        "                        --query fills the gap\n"
        "  -g, --generate N      write N synthetic events; no broker\n"
        "  -k, --aggregates K    with --generate (default 16)\n"
        "  -s, --size S          with --generate: payload bytes (default 100)\n"
        CLI_CURVE_HELP
        "  -h, --help            this help\n"
        "\n"
        "A replay file holds what to publish again (aggregate, type, payload,\n"
        "...), not the seqs, aggregate seqs and batch ids the broker gave\n"
        "them: replaying assigns new ones. For those, 'snapbus sub --json'.\n"
        "\n"
        "When the broker stops, the batches its end-of-epoch marker names are\n"
        "fetched (with --query) while it keeps its query socket open; batches\n"
        "not fetched by then, or when record is stopped, count as lost.\n"
        "\n"
        "exit codes: 0 ok, 2 usage, 3 a loss, no broker answered, no batch\n"
        "within -T, or a write error.\n");
}

static int
s_generate(FILE *out, uint64_t n, uint64_t k, uint64_t size)
{
    char agg[48];
    uint8_t *payload = malloc(size ? size : 1);

    if (payload == NULL)
        return CLI_FAILED;
    for (uint64_t i = 0; i < size; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    for (uint64_t i = 0; i < n; i++) {
        sb_pub_event ev = {0};
        snprintf(agg, sizeof agg, "gen/%" PRIu64, i % k);
        for (unsigned b = 0; b < 8 && b < size; b++)
            payload[b] = (uint8_t)(i >> (8 * b));
        ev.aggregate = agg;
        ev.type = "gen";
        ev.payload = payload;
        ev.payload_len = (size_t)size;
        if (cli_rec_write(out, &ev) != 0) {
            fprintf(stderr, "snapbus record: write: %s\n", strerror(errno));
            free(payload);
            return CLI_FAILED;
        }
    }
    free(payload);
    return CLI_OK;
}

/* Writes the events of b; 0 or -1. */
static int
s_write_batch(FILE *out, const sb_snapshot *b, uint64_t *events,
              uint64_t count)
{
    for (size_t i = 0; i < sb_snapshot_count(b); i++) {
        sb_snapshot_event e;
        sb_pub_event ev = {0};
        if (count != 0 && *events >= count)
            return 0;
        if (sb_snapshot_event_get(b, i, &e) != SB_OK)
            continue;
        ev.aggregate = e.aggregate;
        ev.type = e.type;
        ev.payload = e.payload;
        ev.payload_len = e.payload_len;
        ev.event_id = e.event_id[0] ? e.event_id : NULL;
        ev.caused_by = e.caused_by;
        ev.source_pos = e.source_pos;
        ev.has_source_pos = e.has_source_pos;
        ev.client_ts_ms = e.client_ts_ms;
        ev.producer_id = e.producer_id[0] ? e.producer_id : NULL;
        ev.producer_seq = e.producer_seq;
        if (cli_rec_write(out, &ev) != 0)
            return -1;
        (*events)++;
    }
    return 0;
}

int
cli_record(int argc, char **argv)
{
    static const struct option lo[] = {
        {"output", required_argument, NULL, 'o'},
        {"endpoint", required_argument, NULL, 'e'},
        {"query", required_argument, NULL, 'Q'},
        {"prefix", required_argument, NULL, 'p'},
        {"exact", required_argument, NULL, 'x'},
        {"resume", required_argument, NULL, 'r'},
        {"count", required_argument, NULL, 'n'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"generate", required_argument, NULL, 'g'},
        {"aggregates", required_argument, NULL, 'k'},
        {"size", required_argument, NULL, 's'},
        {"rcvhwm", required_argument, NULL, 'H'},
        CLI_CURVE_LONGOPTS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    sb_subscriber_opts so;
    cli_curve ck = {0};
    const char *outpath = NULL;
    cli_topics t;
    int c, rc = CLI_OK, timeout_ms = -1, gen = 0;
    uint64_t count = 0, ngen = 0, k = 16, size = 100, v;

    if (cli_topics_init(&t, argc) != 0)
        return CLI_FAILED;
    sb_subscriber_opts_defaults(&so);
    while (rc == CLI_OK &&
           (c = getopt_long(argc, argv, "o:e:Q:p:x:r:n:T:g:k:s:H:h", lo,
                            NULL)) != -1) {
        if (cli_curve_opt(&ck, c, optarg))
            continue;
        switch (c) {
        case 'o':
            outpath = optarg;
            break;
        case 'e':
            so.endpoint = optarg;
            break;
        case 'Q':
            so.query_endpoint = optarg;
            break;
        case 'p':
            t.prefix[t.np++] = optarg;
            break;
        case 'x':
            t.exact[t.nx++] = optarg;
            break;
        case 'r':
            if (cli_parse_u64(optarg, &so.resume_from_seq) != 0 ||
                so.resume_from_seq == 0)
                rc = CLI_USAGE;
            break;
        case 'n':
            if (cli_parse_u64(optarg, &count) != 0)
                rc = CLI_USAGE;
            break;
        case 'T':
            if (cli_parse_int(optarg, 0, 86400000, &timeout_ms) != 0)
                rc = CLI_USAGE;
            break;
        case 'g':
            if (cli_parse_u64(optarg, &ngen) != 0)
                rc = CLI_USAGE;
            gen = 1;
            break;
        case 'k':
            if (cli_parse_u64(optarg, &k) != 0 || k == 0)
                rc = CLI_USAGE;
            break;
        case 's':
            if (cli_parse_u64(optarg, &v) != 0 || v > (16u << 20))
                rc = CLI_USAGE;
            size = v;
            break;
        case 'H':
            if (cli_parse_int(optarg, 1, 100000000, &so.rcvhwm) != 0)
                rc = CLI_USAGE;
            break;
        case 'h':
            s_help(stdout);
            cli_topics_free(&t);
            return CLI_OK;
        default:
            rc = CLI_USAGE;
        }
    }
    if (rc == CLI_OK && cli_curve_load(&ck, "snapbus record", &so.curve) != 0)
        rc = CLI_USAGE;
    if (rc != CLI_OK || optind < argc ||
        (so.resume_from_seq && so.query_endpoint == NULL)) {
        if (so.resume_from_seq && so.query_endpoint == NULL)
            fprintf(stderr, "snapbus record: --resume needs --query\n");
        else
            s_help(stderr);
        cli_topics_free(&t);
        return CLI_USAGE;
    }
    FILE *out = stdout;
    if (outpath != NULL && (out = fopen(outpath, "wb")) == NULL) {
        fprintf(stderr, "snapbus record: %s: %s\n", outpath, strerror(errno));
        cli_topics_free(&t);
        return CLI_FAILED;
    }
    if (outpath == NULL && isatty(STDOUT_FILENO)) {
        fprintf(stderr, "snapbus record: the replay file is binary: "
                        "redirect stdout or use -o FILE\n");
        cli_topics_free(&t);
        return CLI_USAGE;
    }
    static char iobuf[1 << 20];
    setvbuf(out, iobuf, _IOFBF, sizeof iobuf);
    if (fwrite(CLI_REC_MAGIC, 1, CLI_REC_MAGIC_LEN, out) != CLI_REC_MAGIC_LEN)
        rc = CLI_FAILED;
    if (rc == CLI_OK && gen) {
        rc = s_generate(out, ngen, k, size);
        goto done;
    }

    sb_subscriber *s = NULL;
    sb_err e = rc == CLI_OK ? cli_subscriber_open(&s, &so, &t) : SB_OK;
    if (e != SB_OK) {
        fprintf(stderr, "snapbus record: %s: %s\n", so.endpoint,
                sb_strerror(e));
        rc = e == SB_EINVAL ? CLI_USAGE : CLI_FAILED;
    }
    cli_stop_on_signals();
    if (rc == CLI_OK && cli_subscriber_start("snapbus record", s, &so, timeout_ms) != 0)
        rc = CLI_FAILED;
    uint64_t events = 0;
    while (rc == CLI_OK && !cli_stop && (count == 0 || events < count)) {
        sb_snapshot *b;
        e = sb_subscriber_recv(s, &b, timeout_ms);
        if (e == SB_EAGAIN) {
            if (timeout_ms >= 0 && !cli_stop) {
                fprintf(stderr, "snapbus record: no batch for %d ms\n",
                        timeout_ms);
                rc = CLI_FAILED;
            }
            continue;
        }
        if (e == SB_ENOENT) {
            cli_report_loss("snapbus record", s);
            rc = CLI_FAILED; /* a recording with a hole is not a history */
            break;
        }
        if (e == SB_ERESTART) {
            fprintf(stderr, "snapbus record: the broker restarted\n");
            continue;
        }
        if (e != SB_OK) {
            fprintf(stderr, "snapbus record: %s\n", sb_strerror(e));
            rc = CLI_FAILED;
            break;
        }
        if (s_write_batch(out, b, &events, count) != 0) {
            fprintf(stderr, "snapbus record: write: %s\n", strerror(errno));
            rc = CLI_FAILED;
        }
        sb_snapshot_destroy(&b);
    }
    if (s != NULL) {
        sb_subscriber_stats st;
        sb_subscriber_stats_get(s, &st);
        /* Stopped before the tail a stopping broker named was fetched:
         * that is a loss too, never "lost 0". */
        if (cli_report_unchecked("snapbus record", s)) {
            st.lost++;
            rc = CLI_FAILED;
        }
        fprintf(stderr,
                "snapbus record: %" PRIu64 " events, %" PRIu64
                " batches (gaps %" PRIu64 ", filled %" PRIu64
                ", duplicates %" PRIu64 ", probes %" PRIu64
                ", fetches %" PRIu64 ", lost %" PRIu64 "), position %" PRIu64
                "\n",
                events, st.batches, st.gaps, st.filled, st.duplicates,
                st.probes, st.fetches, st.lost, sb_subscriber_position(s));
    }
    sb_subscriber_destroy(&s);
done:
    if (fflush(out) != 0 || (out != stdout && fclose(out) != 0)) {
        fprintf(stderr, "snapbus record: write: %s\n", strerror(errno));
        rc = CLI_FAILED;
    }
    cli_topics_free(&t);
    return rc;
}
