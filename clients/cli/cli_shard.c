/* snapbus shard: which of N brokers owns each aggregate (sb_shard_of, the
 * function every client and broker shares; docs/SCALING.md). For scripts
 * and for checking a deployment's routing by hand. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include <snapbus/snapbus.h>

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: snapbus shard -n COUNT [AGGREGATE ...]\n"
            "\n"
            "Prints \"SHARD<TAB>AGGREGATE\" for each aggregate (the arguments,\n"
            "or stdin lines): the broker, 0..COUNT-1, that owns it when\n"
            "aggregates are spread over COUNT brokers (docs/SCALING.md).\n"
            "\n"
            "options:\n"
            "  -n, --count COUNT   number of brokers (shard.count), 1..65536\n"
            "  -h, --help          this help\n"
            "\n"
            "exit codes: 0 done, 2 usage (a bad COUNT, or an empty name).\n");
}

static int
s_one(const char *name, size_t len, uint32_t n)
{
    uint32_t shard;

    if (sb_shard_of(name, len, n, &shard) != SB_OK)
        return CLI_USAGE;
    printf("%u\t%.*s\n", shard, (int)len, name);
    return CLI_OK;
}

int
cli_shard(int argc, char **argv)
{
    static const struct option opts[] = {{"count", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c, n = 0, rc = CLI_OK;

    optind = 1;
    while ((c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (cli_parse_int(optarg, 1, 65536, &n) != 0) {
                fprintf(stderr, "snapbus shard: bad count '%s'\n", optarg);
                return CLI_USAGE;
            }
            break;
        case 'h':
            s_usage(stdout);
            return CLI_OK;
        default:
            s_usage(stderr);
            return CLI_USAGE;
        }
    }
    if (n == 0) {
        fprintf(stderr, "snapbus shard: -n COUNT is required\n");
        return CLI_USAGE;
    }
    if (optind < argc) {
        for (int i = optind; i < argc && rc == CLI_OK; i++)
            rc = s_one(argv[i], strlen(argv[i]), (uint32_t)n);
        return rc;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (rc == CLI_OK && (len = getline(&line, &cap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n')
            len--;
        rc = s_one(line, (size_t)len, (uint32_t)n);
    }
    free(line);
    return rc;
}
