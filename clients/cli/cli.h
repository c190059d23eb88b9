/* The snapbus command-line tool: one file per subcommand, this header for
 * what they share. Only libsnapbus's public API is used here. */
#ifndef SB_CLI_H
#define SB_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes. */
enum {
    CLI_OK = 0,
    CLI_REFUSED = 1, /* the broker refused some event */
    CLI_USAGE = 2,
    CLI_FAILED = 3 /* could not talk to the broker, or timed out */
};

int cli_pub(int argc, char **argv);
int cli_sub(int argc, char **argv);
int cli_bench(int argc, char **argv);
/* Reads the on-disk log itself (cli_log.c), through the broker's reader. */
int cli_log(int argc, char **argv);
int cli_stat(int argc, char **argv);
int cli_shard(int argc, char **argv);
/* Replay files (docs/REPLAY.md): cli_replay.c, cli_record.c. */
int cli_replay(int argc, char **argv);
int cli_record(int argc, char **argv);

/* Strict decimal parse: the whole string, no sign, no overflow. */
int cli_parse_u64(const char *s, uint64_t *out);
int cli_parse_int(const char *s, int min, int max, int *out);

/* 1 if the bytes are valid UTF-8 with no control characters but tab, so
 * they can be shown as text. */
int cli_is_text(const void *p, size_t n);
/* Writes the bytes as a JSON string body (no quotes), escaped. */
void cli_json_escape(FILE *f, const void *p, size_t n);
void cli_hex(FILE *f, const void *p, size_t n);

uint64_t cli_now_ns(void);

#endif
