/* snapbus: the command-line client of the snapbus broker. main only picks
 * the subcommand; each lives in its own file (cli_pub.c, cli_sub.c,
 * cli_bench.c). Helpers they share are here. Single-threaded except the
 * bench, which starts its own threads. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include <snapbus/snapbus.h>

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: snapbus COMMAND [OPTIONS]\n"
            "\n"
            "Client of the snapbus event-bus broker.\n"
            "\n"
            "commands:\n"
            "  pub     publish events (arguments or stdin lines)\n"
            "  sub     print snapshot batches as they are published\n"
            "  bench   measure throughput, latency, broker CPU (vs ZeroMQ)\n"
            "  log     inspect a broker's on-disk log: info, dump, verify\n"
            "  stat    live figures of a running broker (its /metrics)\n"
            "  replay  publish a recorded history file as a burst\n"
            "  record  write a history file (from a subscription, or generated)\n"
            "  keygen  make a CURVE key pair (docs/SECURITY.md)\n"
            "  shard   which broker owns an aggregate, when spread over several\n"
            "\n"
            "Run 'snapbus COMMAND --help' for a command's options;\n"
            "'snapbus --version' prints the version.\n"
            "\n"
            "exit codes (every command; each --help says which it uses):\n"
            "  0  done\n"
            "  1  the broker refused some event (pub, replay), a run lost or\n"
            "     duplicated events (bench), the log is damaged (log verify)\n"
            "  2  usage: a bad option or argument\n"
            "  3  failed: no broker answered, timed out, events lost (out of\n"
            "     retention), a file could not be read or written\n"
            "\n"
            "Protocol version %d.\n",
            SB_PROTOCOL_VERSION);
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        s_usage(stdout);
        return CLI_OK;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V") ||
        !strcmp(cmd, "version")) {
        printf("snapbus %s (protocol %d)\n", CLI_VERSION, SB_PROTOCOL_VERSION);
        return CLI_OK;
    }
    /* Each subcommand parses argv[1..] with getopt, argv[0] its name. */
    if (!strcmp(cmd, "pub"))
        return cli_pub(argc - 1, argv + 1);
    if (!strcmp(cmd, "sub"))
        return cli_sub(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return cli_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "log"))
        return cli_log(argc - 1, argv + 1);
    if (!strcmp(cmd, "replay"))
        return cli_replay(argc - 1, argv + 1);
    if (!strcmp(cmd, "record"))
        return cli_record(argc - 1, argv + 1);
    if (!strcmp(cmd, "stat"))
        return cli_stat(argc - 1, argv + 1);
    if (!strcmp(cmd, "keygen"))
        return cli_keygen(argc - 1, argv + 1);
    if (!strcmp(cmd, "shard"))
        return cli_shard(argc - 1, argv + 1);
    fprintf(stderr, "snapbus: unknown command '%s'\n", cmd);
    s_usage(stderr);
    return CLI_USAGE;
}

int
cli_parse_u64(const char *s, uint64_t *out)
{
    char *end;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

int
cli_parse_int(const char *s, int min, int max, int *out)
{
    char *end;

    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

int
cli_is_text(const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n;) {
        unsigned c = b[i];
        size_t k;
        if (c < 0x80) {
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return 0;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            k = 1;
        else if (c >= 0xe0 && c <= 0xef)
            k = 2;
        else if (c >= 0xf0 && c <= 0xf4)
            k = 3;
        else
            return 0;
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++)
            if ((b[i + j] & 0xc0) != 0x80)
                return 0;
        /* Overlongs and surrogates are not text either. */
        if ((c == 0xe0 && b[i + 1] < 0xa0) || (c == 0xed && b[i + 1] > 0x9f) ||
            (c == 0xf0 && b[i + 1] < 0x90) || (c == 0xf4 && b[i + 1] > 0x8f))
            return 0;
        i += k + 1;
    }
    return 1;
}

void
cli_json_escape(FILE *f, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        switch (c) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (c < 0x20 || c == 0x7f)
                fprintf(f, "\\u%04x", c);
            else
                fputc(c, f);
        }
    }
}

void
cli_hex(FILE *f, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
}

uint64_t
cli_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
