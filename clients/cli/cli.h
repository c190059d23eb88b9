/* The snapbus command-line tool: one file per subcommand, this header for
 * what they share. Only libsnapbus's public API is used here. */
#ifndef SB_CLI_H
#define SB_CLI_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <snapbus/snapbus.h>

/* The CLI's version; the same as snapbusd's. */
#define CLI_VERSION "0.1.0"

/* Exit codes, the same for every command (listed in each --help and in
 * docs/OPERATIONS.md). */
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

/* Subscribing, shared by sub and record (cli_subscribe.c). */
typedef struct {
    const char **prefix; /* -p, repeatable */
    const char **exact;  /* -x, repeatable */
    int np, nx;
} cli_topics;

int cli_topics_init(cli_topics *t, int argc);
void cli_topics_free(cli_topics *t);
/* A subscriber on every topic of t, or on everything if t has none. */
sb_err cli_subscriber_open(sb_subscriber **out, const sb_subscriber_opts *so,
                           const cli_topics *t);
/* Set by SIGINT/SIGTERM once cli_stop_on_signals was called; blocking
 * waits return early (no SA_RESTART). */
extern volatile sig_atomic_t cli_stop;
void cli_stop_on_signals(void);
/* After recv returned SB_ENOENT: one line on stderr saying what was lost. */
void cli_report_loss(const char *who, const sb_subscriber *s);
/* At exit: batches a stopping broker named that were never fetched
 * (sb_subscriber_unchecked) are a loss: one line on stderr, returns 1. */
int cli_report_unchecked(const char *who, const sb_subscriber *s);
/* With a query endpoint and timeout_ms >= 0: hello within timeout_ms;
 * -1 after "no broker answered at EP within N ms" on stderr. */
int cli_subscriber_start(const char *who, sb_subscriber *s,
                         const sb_subscriber_opts *so, int timeout_ms);

/* `snapbus keygen NAME` (cli_keys.c). */
int cli_keygen(int argc, char **argv);

/* CURVE options of every subcommand that connects (docs/SECURITY.md):
 * add CLI_CURVE_LONGOPTS to the getopt_long table, pass each option to
 * cli_curve_opt, then call cli_curve_load, which falls back on
 * SNAPBUS_SERVER_KEY and SNAPBUS_CLIENT_KEY. A value is a key (40 Z85
 * characters) or a key file (snapbus keygen). */
enum {
    CLI_OPT_SERVER_KEY = 0x1000,
    CLI_OPT_CLIENT_KEY,
    CLI_OPT_INSECURE_KEY_PERMISSIONS
};
#define CLI_CURVE_LONGOPTS                                                     \
    {"server-key", required_argument, NULL, CLI_OPT_SERVER_KEY},               \
        {"client-key", required_argument, NULL, CLI_OPT_CLIENT_KEY},           \
        {"insecure-key-permissions", no_argument, NULL,                        \
         CLI_OPT_INSECURE_KEY_PERMISSIONS}
#define CLI_CURVE_HELP                                                         \
    "  --server-key KEY|FILE  the broker's CURVE public key (or\n"             \
    "                         SNAPBUS_SERVER_KEY); see docs/SECURITY.md\n"     \
    "  --client-key FILE|KEY  this client's CURVE secret key (or\n"            \
    "                         SNAPBUS_CLIENT_KEY); a file must be mode 0600\n"\
    "  --insecure-key-permissions  use a client key file others may read\n"   \
    "                         (warns)\n"

typedef struct {
    const char *server_arg, *client_arg;
    int insecure_perms;
    char server[41], pub[41], sec[41]; /* what out points into */
} cli_curve;

/* 1 if getopt's c was one of the CURVE options (now noted in k). */
int cli_curve_opt(cli_curve *k, int c, const char *arg);
/* Fills out from the options or the environment (all NULL: no CURVE).
 * -1: a key is missing or bad; the reason went to stderr, prefixed with
 * who. out points into k, which must outlive its use. */
int cli_curve_load(cli_curve *k, const char *who, sb_curve_opts *out);

#endif
