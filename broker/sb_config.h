/* The broker's configuration: one struct, filled only here, from the
 * defaults, then a file, then SNAPBUS_* environment variables, then flags.
 * Every key is listed with its default, unit and range by `snapbusd --help`
 * and in docs/CONFIGURATION.md. */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sb_dedup.h"
#include "sb_err.h"
#include "sb_router.h"
#include "sb_store.h"
#include "sb_wire.h"

typedef struct {
    char ingest[256];
    char pub[256];
    char query[256];
    char data_dir[512];
    char ready_file[512];
    char log_level[16];
    char log_format[8];   /* logfmt | json */
    uint32_t log_rate;    /* warning/error lines a second per event; 0: no limit */
    char metrics[256]; /* HTTP listen address HOST:PORT; "" = off */
    uint32_t hwm;
    uint32_t queue;
    uint64_t memory_budget; /* bytes: docs/ARCHITECTURE.md, "Memory budget" */
    uint32_t shutdown_linger_ms; /* query socket kept open after the drain */
    sb_limits limits;
    sb_router_config router;
    uint64_t retain_batches; /* [retention] ring_batches: the memory ring */
    uint64_t retain_bytes;   /* [retention] ring_bytes */
    uint32_t fetch_max_batches;
    uint32_t fetch_max_bytes;
    uint32_t fetch_max_scan;
    sb_store_config storage; /* [storage]: the on-disk log */
    sb_dedup_config dedup;   /* [dedup]: docs/PUBLISHING.md */
    /* [debug] hold: fault injection for tests. The named link (e.g.
     * "logstore->router") starts held: its consumer sees nothing until
     * SIGUSR1 releases it (SIGUSR2 holds it again). "" = off. */
    char debug_hold[32];
    /* [security]: CURVE (docs/SECURITY.md). secret_key_file "" = off. */
    char secret_key_file[512];
    char publisher_keys[512];
    char subscriber_keys[512];
    char query_keys[512];
    uint32_t insecure; /* 1: plaintext beyond loopback is allowed */
    /* 1: a secret key file readable by group or others is used anyway
     * (with a warning) instead of refused. */
    uint32_t insecure_key_permissions;
    /* Before authentication (docs/SECURITY.md): ZMQ_HANDSHAKE_IVL of every
     * socket, and how many connections may be in their handshake at once. */
    uint32_t handshake_ms;
    uint32_t max_handshakes;
    /* Deprecated spellings that were used, space-separated (e.g.
     * "--retain-bytes retention.bytes"): main warns about them. */
    char deprecated[256];
} sb_config;

void sb_config_defaults(sb_config *c);
/* One key: section "broker", key "hwm". Refusals name key, value, range. */
sb_err sb_config_set(sb_config *c, const char *section, const char *key,
                     const char *value, char *why, size_t n);
sb_err sb_config_load_file(sb_config *c, const char *path, char *why, size_t n);
/* INI text in memory, parsed as a file would be (line numbers in why). */
sb_err sb_config_load_string(sb_config *c, const char *text, char *why,
                             size_t n);
/* Every SNAPBUS_<SECTION>_<KEY> in envp. */
sb_err sb_config_load_env(sb_config *c, char *const *envp, char *why, size_t n);
/* Why the environment entry "NAME=VALUE" is not configuration although it
 * starts with SNAPBUS_ (a Kubernetes service link, a client's variable),
 * or NULL if it is. */
const char *sb_config_env_ignored(const char *entry);
/* A debug line for each ignored entry (once the log level is set). */
void sb_config_log_ignored_env(char *const *envp);
/* Flags (argv[1..]). Sets *config_path from --config (read first by the
 * caller), *check from --check-config, *help from --help. */
sb_err sb_config_load_args(sb_config *c, int argc, char *const *argv,
                           char *why, size_t n);
/* Whole-struct checks across keys. */
sb_err sb_config_check(const sb_config *c, char *why, size_t n);
/* 1: no CURVE and an endpoint beyond loopback (only with insecure = 1). */
int sb_config_exposed(const sb_config *c);
/* 1: broker.metrics is on a loopback address (or off). */
int sb_config_metrics_local(const sb_config *c);
void sb_config_usage(FILE *out);
/* What to say about c->deprecated: which spelling replaces which. */
const char *sb_config_deprecated_hint(void);
/* The file given with --config in argv, or NULL. */
const char *sb_config_file_arg(int argc, char *const *argv);

#endif
