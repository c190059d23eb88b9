#include "sb_config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdlib.h>
#include <string.h>

#include "sb_budget.h"
#include "sb_log.h"
#include "sb_metrics.h"

typedef enum { T_STR, T_U32, T_U64, T_LEVEL } s_type;

typedef struct {
    const char *section;
    const char *key;
    s_type type;
    size_t off;
    size_t size;   /* T_STR: buffer size */
    uint64_t min;
    uint64_t max;
    const char *help;
} s_key;

#define STR(sec, k, f, h) {sec, k, T_STR, offsetof(sb_config, f), sizeof(((sb_config *) 0)->f), 0, 0, h}
#define U32(sec, k, f, lo, hi, h) {sec, k, T_U32, offsetof(sb_config, f), 4, lo, hi, h}
#define U64(sec, k, f, lo, hi, h) {sec, k, T_U64, offsetof(sb_config, f), 8, lo, hi, h}

static const s_key s_keys[] = {
    STR("broker", "ingest", ingest, "publishers' endpoint (ROUTER); tcp://HOST:* picks a free port"),
    STR("broker", "pub", pub, "subscribers' endpoint (PUB)"),
    STR("broker", "query", query, "fetch endpoint (ROUTER) for gap fill and resume"),
    STR("broker", "data_dir", data_dir, "directory for the broker's files (created)"),
    STR("broker", "ready_file", ready_file, "after binding, write the bound endpoints here"),
    STR("broker", "metrics", metrics, "HTTP listen address for /metrics /healthz /readyz, HOST:PORT (port 0: a free one); empty = off"),
    {"broker", "log_level", T_LEVEL, offsetof(sb_config, log_level), 16, 0, 0, "err|warn|notice|info|debug"},
    STR("broker", "log_format", log_format, "logfmt|json: one key=value line, or one JSON object a line (docs/OPERATIONS.md)"),
    U32("broker", "log_rate", log_rate, 0, 1000000, "warning and error lines a second per event id, the rest counted in one log.suppressed line; 0 = no limit"),
    U32("broker", "hwm", hwm, 1, 10000000, "ZeroMQ high-water mark of every socket, messages"),
    U32("broker", "queue", queue, 1, 1000000, "bound of every queue between actors, items"),
    U32("broker", "handshake_ms", handshake_ms, 100, 600000, "a connection that has not finished its handshake (CURVE or not) by then is closed, ms"),
    U32("broker", "max_handshakes", max_handshakes, 1, 1000000, "connections in their handshake at once, all sockets; more are closed at once (docs/SECURITY.md)"),
    U64("broker", "memory_budget", memory_budget, 16u << 20, 1ull << 44, "bytes the broker holds for work in flight at most (requests, retention, fetches, de-duplication, ZeroMQ queues); suffixes k, M, G; full: the ingest stops reading"),
    U32("broker", "shutdown_linger_ms", shutdown_linger_ms, 0, 600000, "after the last batch at shutdown, the query socket stays open this long so subscribers fetch the tail, ms (longer while they still fetch, up to 55 s more; ends early once no subscriber is connected, without CURVE)"),
    U32("limits", "max_message_bytes", limits.max_message_bytes, 1024, 256u << 20, "largest request, bytes"),
    U32("limits", "max_events_per_request", limits.max_events_per_request, 1, 1000000, "events in one request"),
    U32("limits", "max_payload_bytes", limits.max_payload_bytes, 0, 256u << 20, "largest event payload, bytes"),
    U32("limits", "max_name_bytes", limits.max_name_bytes, 1, 255, "longest aggregate/type/id, bytes"),
    U32("shard", "count", limits.shard_count, 1, 65536, "brokers the aggregates are spread over (docs/SCALING.md)"),
    U32("shard", "index", limits.shard_index, 0, 65535, "this broker's shard, 0..count-1"),
    U32("batching", "default_delay_ms", router.default_delay_ms, 0, 86400000, "delay of aggregates no rule names, ms; 0 = at once"),
    U32("batching", "max_batch_events", router.max_batch_events, 1, 10000000, "a batch closes at this many events"),
    U32("batching", "max_batch_bytes", router.max_batch_bytes, 64, 256u << 20, "a batch closes at this size, bytes"),
    U32("batching", "max_open_batches", router.max_open_batches, 1, 10000000, "open batches at most; more waits"),
    U64("batching", "max_open_bytes", router.max_open_bytes, 1024, 1ull << 40, "bytes held in open batches at most; more waits"),
    U64("retention", "ring_batches", retain_batches, 1, 100000000, "batches kept in the memory ring for fetch (older ones are read from the log); was retention.batches"),
    U64("retention", "ring_bytes", retain_bytes, 1024, 1ull << 40, "bytes of batches kept in the memory ring for fetch (memory, not disk: the log's bound is storage.retain_bytes); was retention.bytes, --retain-bytes"),
    U32("retention", "fetch_max_batches", fetch_max_batches, 1, 100000, "batches in one fetch reply"),
    U32("retention", "fetch_max_bytes", fetch_max_bytes, 1024, 256u << 20, "bytes in one fetch reply"),
    U32("retention", "fetch_max_scan", fetch_max_scan, 1, 100000000, "retained batches one fetch looks at"),
    STR("storage", "dir", storage.dir, "directory of the on-disk log; empty = <data_dir>/log"),
    U64("storage", "segment_bytes", storage.segment_bytes, 4096, 1ull << 40, "a log segment is sealed past this size, bytes"),
    STR("storage", "sync", storage.sync, "always|interval|none: when the log is synced for durable acks"),
    U32("storage", "sync_interval_ms", storage.sync_interval_ms, 1, 60000, "sync period with sync = interval, ms"),
    U64("storage", "retain_bytes", storage.retain_bytes, 0, 1ull << 50, "log bytes kept on disk, whole oldest segments deleted past it; 0 = no bound; flag --log-retain-bytes"),
    U64("storage", "retain_age_s", storage.retain_age_s, 0, 1ull << 40, "log segments older than this are deleted, s; 0 = no bound; flag --log-retain-age-s"),
    U32("storage", "index_every", storage.index_every, 64, 1u << 30, "bytes between sparse index entries of a log segment"),
    STR("security", "secret_key_file", secret_key_file, "the broker's CURVE secret key (snapbus keygen); empty = no CURVE, loopback only"),
    STR("security", "publisher_keys", publisher_keys, "allowlist of publishers' public keys, one Z85 key a line; reread on SIGHUP"),
    STR("security", "subscriber_keys", subscriber_keys, "allowlist of subscribers' public keys (they may also fetch); reread on SIGHUP"),
    STR("security", "query_keys", query_keys, "allowlist of keys that may only fetch; empty = subscribers only; reread on SIGHUP"),
    U32("security", "insecure", insecure, 0, 1, "1: without CURVE, still bind beyond loopback (plaintext, anyone may connect); flag --insecure"),
    U32("security", "insecure_key_permissions", insecure_key_permissions, 0, 1, "1: use a secret key file that group or others may read (warns) instead of refusing it; flag --insecure-key-permissions"),
    U32("dedup", "producers", dedup.producers, 0, 10000000, "producers the de-duplication index remembers, least recently used evicted first; 0 = no de-duplication by producer"),
    U32("dedup", "producer_window", dedup.producer_window, 1, 100000000, "producer seqs remembered per producer: an older one is refused ERR_BEYOND_DEDUP_HORIZON"),
    U32("dedup", "tombstones", dedup.tombstones, 0, 100000000, "evicted producers remembered by their highest producer seq"),
    U32("dedup", "event_ids", dedup.event_ids, 0, 100000000, "event ids the de-duplication index remembers, oldest out first; 0 = no de-duplication by event id"),
    U32("dedup", "event_id_age_s", dedup.event_id_age_s, 0, 100000000, "event ids are forgotten after this long, s; 0 = only the count bounds them"),
    U64("dedup", "rebuild_events", dedup.rebuild_events, 0, 1ull << 50, "at start the index is rebuilt from at most this many of the log's last events; 0 = the whole log"),
    STR("debug", "hold", debug_hold, "test only: this link (e.g. logstore->router) starts held, as if its consumer stalled; SIGUSR1 releases it, SIGUSR2 holds it again; empty = off"),
};
#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

void
sb_config_defaults(sb_config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->ingest, "tcp://127.0.0.1:7701");
    strcpy(c->pub, "tcp://127.0.0.1:7702");
    strcpy(c->query, "tcp://127.0.0.1:7703");
    strcpy(c->data_dir, "./snapbus-data");
    strcpy(c->log_level, "info");
    strcpy(c->log_format, "logfmt");
    c->log_rate = 10;
    c->hwm = 10000;
    c->queue = 1024;
    c->handshake_ms = 5000;
    c->max_handshakes = 32;
    c->memory_budget = 256u << 20;
    c->shutdown_linger_ms = 5000;
    sb_limits_defaults(&c->limits);
    sb_router_config_defaults(&c->router);
    c->retain_batches = 100000;
    c->retain_bytes = 64u << 20;
    c->fetch_max_batches = 1000;
    c->fetch_max_bytes = 4u << 20;
    c->fetch_max_scan = 200000;
    sb_store_config_defaults(&c->storage);
    sb_dedup_config_defaults(&c->dedup);
}

static sb_err
s_refuse(char *why, size_t n, const char *sec, const char *key,
         const char *value, const char *allowed)
{
    snprintf(why, n, "%s.%s = \"%s\": %s", sec, key, value, allowed);
    return SB_EINVAL;
}

static sb_err
s_parse_u64(const char *v, uint64_t *out)
{
    char *end;
    unsigned long long x;
    int shift = 0;

    if (*v == '\0' || *v == '-' || isspace((unsigned char) *v))
        return SB_EINVAL;
    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno != 0 || end == v)
        return SB_EINVAL;
    /* Size suffixes, since byte limits are easier to read that way. */
    if (*end == 'k' || *end == 'K')
        shift = 10, end++;
    else if (*end == 'M')
        shift = 20, end++;
    else if (*end == 'G')
        shift = 30, end++;
    /* A value that does not fit after its suffix is refused: shifted, it
     * would wrap around into range ("17179869185G" read as 1G). */
    if (*end != '\0' || x > (UINT64_MAX >> shift))
        return SB_EINVAL;
    *out = (uint64_t) x << shift;
    return SB_OK;
}

static sb_err
s_set_delay(sb_config *c, const char *pattern, const char *value, char *why,
            size_t n)
{
    sb_router_config *r = &c->router;
    uint64_t ms;
    uint32_t i;

    if (s_parse_u64(value, &ms) != SB_OK || ms > 86400000)
        return s_refuse(why, n, "delays", pattern, value, "a delay in ms, 0 to 86400000");
    if (*pattern == '\0' || strlen(pattern) >= SB_MAX_PATTERN)
        return s_refuse(why, n, "delays", pattern, value, "a pattern of 1 to 255 bytes");
    for (i = 0; i < r->nrules; i++)
        if (strcmp(r->rules[i].pattern, pattern) == 0)
            break;
    if (i == SB_MAX_DELAY_RULES)
        return s_refuse(why, n, "delays", pattern, value, "at most 64 delay rules");
    if (i == r->nrules)
        r->nrules++;
    strcpy(r->rules[i].pattern, pattern);
    r->rules[i].delay_ms = (uint32_t) ms;
    return SB_OK;
}

static void
s_note_deprecated(sb_config *c, const char *spelling)
{
    size_t len = strlen(c->deprecated);

    if (strstr(c->deprecated, spelling) != NULL)
        return;
    snprintf(c->deprecated + len, sizeof c->deprecated - len, "%s%s",
             len ? " " : "", spelling);
}

const char *
sb_config_deprecated_hint(void)
{
    return "these set the in-memory retention ring, not the disk: use "
           "retention.ring_bytes (--ring-bytes) and retention.ring_batches "
           "(--ring-batches); the on-disk log's bounds are "
           "storage.retain_bytes (--log-retain-bytes) and "
           "storage.retain_age_s (--log-retain-age-s)";
}

sb_err
sb_config_set(sb_config *c, const char *section, const char *key,
              const char *value, char *why, size_t n)
{
    char allowed[128];

    if (strcmp(section, "delays") == 0)
        return s_set_delay(c, key, value, why, n);
    /* The ring's keys had names that read like a disk bound. */
    if (strcmp(section, "retention") == 0 &&
        (strcmp(key, "bytes") == 0 || strcmp(key, "batches") == 0)) {
        s_note_deprecated(c, key[1] == 'y' ? "retention.bytes"
                                           : "retention.batches");
        key = key[1] == 'y' ? "ring_bytes" : "ring_batches";
    }
    for (size_t i = 0; i < S_NKEYS; i++) {
        const s_key *k = &s_keys[i];
        uint64_t x;
        if (strcmp(k->section, section) != 0 || strcmp(k->key, key) != 0)
            continue;
        char *field = (char *) c + k->off;
        switch (k->type) {
        case T_LEVEL:
            if (sb_log_level_parse(value) < 0)
                return s_refuse(why, n, section, key, value, "one of err, warn, notice, info, debug");
            /* fall through */
        case T_STR:
            if (strlen(value) >= k->size) {
                snprintf(allowed, sizeof allowed, "at most %zu bytes", k->size - 1);
                return s_refuse(why, n, section, key, value, allowed);
            }
            strcpy(field, value);
            return SB_OK;
        case T_U32:
        case T_U64:
            if (s_parse_u64(value, &x) != SB_OK || x < k->min || x > k->max) {
                snprintf(allowed, sizeof allowed, "a whole number from %llu to %llu",
                         (unsigned long long) k->min, (unsigned long long) k->max);
                return s_refuse(why, n, section, key, value, allowed);
            }
            if (k->type == T_U32)
                *(uint32_t *) field = (uint32_t) x;
            else
                *(uint64_t *) field = x;
            return SB_OK;
        }
    }
    return s_refuse(why, n, section, key, value, "no such key");
}

typedef struct {
    sb_config *c;
    char *why;
    size_t n;
    sb_err rc;
} s_ini_ctx;

static int
s_ini_line(void *user, const char *section, const char *name, const char *value)
{
    s_ini_ctx *x = user;

    if (x->rc != SB_OK)
        return 0;
    x->rc = sb_config_set(x->c, section, name, value, x->why, x->n);
    return x->rc == SB_OK;
}

sb_err
sb_config_load_file(sb_config *c, const char *path, char *why, size_t n)
{
    s_ini_ctx x = {c, why, n, SB_OK};
    int rc = ini_parse(path, s_ini_line, &x);

    if (rc == -1) {
        snprintf(why, n, "cannot open configuration file %s: %s", path, strerror(errno));
        return SB_EINVAL;
    }
    if (x.rc != SB_OK) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", why);
        snprintf(why, n, "%s line %d: %s", path, rc, inner);
        return x.rc;
    }
    if (rc != 0) {
        snprintf(why, n, "%s line %d: not a [section] or key = value line", path, rc);
        return SB_EINVAL;
    }
    return SB_OK;
}

/* The same rules as a file, for text already in memory (tests, fuzzing). */
sb_err
sb_config_load_string(sb_config *c, const char *text, char *why, size_t n)
{
    s_ini_ctx x = {c, why, n, SB_OK};
    int rc = ini_parse_string(text, s_ini_line, &x);

    if (x.rc != SB_OK) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", why);
        snprintf(why, n, "line %d: %s", rc, inner);
        return x.rc;
    }
    if (rc != 0) {
        snprintf(why, n, "line %d: not a [section] or key = value line", rc);
        return SB_EINVAL;
    }
    return SB_OK;
}

/* The variables Kubernetes injects for every Service in the namespace
 * (enableServiceLinks): for a Service "snapbus" (or "snapbus-x"),
 * SNAPBUS[_X]_SERVICE_HOST, _SERVICE_PORT, _SERVICE_PORT_<NAME>, _PORT,
 * _PORT_<N>_<PROTO> and _PORT_<N>_<PROTO>_{PROTO,PORT,ADDR}. No broker key
 * has these shapes (none ends in "port" or holds "service" or "port_"). */
static int
s_service_link(const char *e, size_t len)
{
    static const char *const protos[] = {"TCP", "UDP", "SCTP"};
    static const char *const tails[] = {"", "_PROTO", "_PORT", "_ADDR"};
    char name[256], *p;

    if (len >= sizeof name)
        return 0;
    memcpy(name, e, len);
    name[len] = '\0';
    if (strstr(name, "_SERVICE_HOST") != NULL || strstr(name, "_SERVICE_PORT") != NULL ||
        (len >= 5 && strcmp(name + len - 5, "_PORT") == 0))
        return 1;
    for (p = name; (p = strstr(p, "_PORT_")) != NULL; p++) {
        char *q = p + 6, *d = q;
        while (*q >= '0' && *q <= '9')
            q++;
        if (q == d || *q != '_')
            continue;
        for (size_t i = 0; i < 3; i++) {
            size_t pl = strlen(protos[i]);
            if (strncmp(q + 1, protos[i], pl) != 0)
                continue;
            for (size_t t = 0; t < 4; t++)
                if (strcmp(q + 1 + pl, tails[t]) == 0)
                    return 1;
        }
    }
    return 0;
}

/* The command-line client's own variables (snapbus --help), which may
 * share an environment with the broker. */
static const char *const s_client_vars[] = {"SNAPBUS_SERVER_KEY", "SNAPBUS_CLIENT_KEY",
                                            "SNAPBUS_PRODUCER_ID"};

const char *
sb_config_env_ignored(const char *e)
{
    const char *eq = strchr(e, '=');
    size_t len = eq != NULL ? (size_t) (eq - e) : strlen(e);

    if (strncmp(e, "SNAPBUS_", 8) != 0)
        return NULL;
    for (size_t i = 0; i < sizeof s_client_vars / sizeof s_client_vars[0]; i++)
        if (strlen(s_client_vars[i]) == len && strncmp(e, s_client_vars[i], len) == 0)
            return "a variable of the snapbus client";
    if (s_service_link(e, len))
        return "a Kubernetes service link (enableServiceLinks)";
    return NULL;
}

void
sb_config_log_ignored_env(char *const *envp)
{
    for (; envp != NULL && *envp != NULL; envp++) {
        const char *why = sb_config_env_ignored(*envp);
        const char *eq = strchr(*envp, '=');
        if (why != NULL)
            SB_LOG(SB_LOG_DEBUG, "config.env_ignored", "name=%.*s why=\"%s\"",
                   (int) (eq != NULL ? eq - *envp : (long) strlen(*envp)), *envp, why);
    }
}

sb_err
sb_config_load_env(sb_config *c, char *const *envp, char *why, size_t n)
{
    for (; envp != NULL && *envp != NULL; envp++) {
        const char *e = *envp, *eq = strchr(e, '=');
        char name[128];
        if (strncmp(e, "SNAPBUS_", 8) != 0 || eq == NULL)
            continue;
        if (sb_config_env_ignored(e) != NULL)
            continue;
        size_t len = (size_t) (eq - e) - 8;
        if (len >= sizeof name)
            continue;
        for (size_t i = 0; i < len; i++)
            name[i] = (char) tolower((unsigned char) e[8 + i]);
        name[len] = '\0';
        /* SNAPBUS_<SECTION>_<KEY>: the section is the first word. */
        int found = 0;
        if (strcmp(name, "retention_bytes") == 0 ||
            strcmp(name, "retention_batches") == 0) {
            sb_err rc = sb_config_set(c, "retention", name + 10, eq + 1, why, n);
            if (rc != SB_OK)
                return rc;
            found = 1;
        }
        for (size_t i = 0; i < S_NKEYS && !found; i++) {
            size_t sl = strlen(s_keys[i].section);
            if (strncmp(name, s_keys[i].section, sl) == 0 && name[sl] == '_' &&
                strcmp(name + sl + 1, s_keys[i].key) == 0) {
                sb_err rc = sb_config_set(c, s_keys[i].section, s_keys[i].key, eq + 1, why, n);
                if (rc != SB_OK)
                    return rc;
                found = 1;
            }
        }
        if (!found && strncmp(name, "delays_", 7) != 0) {
            snprintf(why, n, "environment variable %.*s: no such key", (int) (eq - e), e);
            return SB_EINVAL;
        }
    }
    return SB_OK;
}

/* Flags are the keys themselves: --hwm 100, --default-delay-ms 5, with '-'
 * for '_'; a few more stand apart. */
sb_err
sb_config_load_args(sb_config *c, int argc, char *const *argv, char *why,
                    size_t n)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char flag[64];
        const char *val;
        if (strcmp(a, "--check-config") == 0 || strcmp(a, "--help") == 0 ||
            strcmp(a, "-h") == 0 || strcmp(a, "--version") == 0)
            continue;
        if (strcmp(a, "--insecure") == 0) { /* a switch: no value */
            c->insecure = 1;
            continue;
        }
        if (strcmp(a, "--insecure-key-permissions") == 0) { /* a switch */
            c->insecure_key_permissions = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(why, n, "unexpected argument \"%s\" (see --help)", a);
            return SB_EINVAL;
        }
        if (i + 1 >= argc) {
            snprintf(why, n, "%s needs a value", a);
            return SB_EINVAL;
        }
        val = argv[++i];
        if (strcmp(a, "--config") == 0)
            continue;
        if (strcmp(a, "--delay") == 0) {
            const char *eq = strrchr(val, '=');
            char pat[SB_MAX_PATTERN + 1];
            if (eq == NULL || (size_t) (eq - val) > SB_MAX_PATTERN) {
                snprintf(why, n, "--delay \"%s\": expected PATTERN=MS", val);
                return SB_EINVAL;
            }
            snprintf(pat, sizeof pat, "%.*s", (int) (eq - val), val);
            sb_err rc = s_set_delay(c, pat, eq + 1, why, n);
            if (rc != SB_OK)
                return rc;
            continue;
        }
        if (strcmp(a, "--set") == 0) {
            char sec[64], key[128];
            const char *dot = strchr(val, '.'), *eq = strchr(val, '=');
            if (dot == NULL || eq == NULL || dot > eq || dot - val >= 64 || eq - dot >= 128) {
                snprintf(why, n, "--set \"%s\": expected SECTION.KEY=VALUE", val);
                return SB_EINVAL;
            }
            snprintf(sec, sizeof sec, "%.*s", (int) (dot - val), val);
            snprintf(key, sizeof key, "%.*s", (int) (eq - dot - 1), dot + 1);
            sb_err rc = sb_config_set(c, sec, key, eq + 1, why, n);
            if (rc != SB_OK)
                return rc;
            continue;
        }
        snprintf(flag, sizeof flag, "%s", a + 2);
        for (char *p = flag; *p; p++)
            if (*p == '-')
                *p = '_';
        /* The on-disk log's bounds, named apart from the memory ring's. */
        if (strcmp(flag, "log_retain_bytes") == 0 ||
            strcmp(flag, "log_retain_age_s") == 0) {
            sb_err rc = sb_config_set(c, "storage", flag + 4, val, why, n);
            if (rc != SB_OK)
                return rc;
            continue;
        }
        /* Old spellings of the ring's flags (before storage.retain_bytes
         * existed); --retain-bytes 10G made a 10 GiB memory ring. */
        if (strcmp(flag, "retain_bytes") == 0 ||
            strcmp(flag, "retain_batches") == 0) {
            s_note_deprecated(c, a);
            sb_err rc = sb_config_set(c, "retention",
                                      flag[8] == 'y' ? "ring_bytes"
                                                     : "ring_batches",
                                      val, why, n);
            if (rc != SB_OK)
                return rc;
            continue;
        }
        int found = 0;
        for (size_t k = 0; k < S_NKEYS && !found; k++) {
            const char *key = s_keys[k].key;
            /* Retention keys also as --retain-KEY (--retain-fetch-max-scan). */
            char alias[64];
            snprintf(alias, sizeof alias, "retain_%s", key);
            if (strcmp(flag, key) == 0 ||
                (strcmp(s_keys[k].section, "retention") == 0 && strcmp(flag, alias) == 0)) {
                sb_err rc = sb_config_set(c, s_keys[k].section, key, val, why, n);
                if (rc != SB_OK)
                    return rc;
                found = 1;
            }
        }
        if (!found) {
            snprintf(why, n, "unknown flag %s (see --help)", a);
            return SB_EINVAL;
        }
    }
    return SB_OK;
}

const char *
sb_config_file_arg(int argc, char *const *argv)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--config") == 0)
            return argv[i + 1];
    return NULL;
}

/* Loopback (or not TCP at all: ipc and inproc stay on this host). An
 * interface name other than lo, a host name or a wildcard may reach the
 * network. */
static int
s_local_endpoint(const char *ep)
{
    static const char *const local[] = {"tcp://127.", "tcp://[::1]:",
                                        "tcp://localhost:", "tcp://lo:",
                                        "ipc://", "inproc://"};

    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        if (strncmp(ep, local[i], strlen(local[i])) == 0)
            return 1;
    return 0;
}

/* A ZeroMQ bind endpoint, checked here so that a mistake gets its own
 * message (not "binds beyond loopback", not a port libzmq picks itself):
 * tcp://HOST:PORT with HOST an IPv4 address, [IPv6], a name, an interface
 * or *, and PORT 1-65535 or * (0 too: libzmq reads it as *); ipc://PATH;
 * inproc://NAME. */
static sb_err
s_check_endpoint(const char *key, const char *ep, char *why, size_t n)
{
    const char *sep = strstr(ep, "://"), *rest, *colon;
    char reason[200];

    if (sep == NULL) {
        snprintf(reason, sizeof reason,
                 "the scheme is missing: write tcp://%s (or ipc://PATH, inproc://NAME)",
                 ep[0] != '\0' ? ep : "127.0.0.1:7701");
        return s_refuse(why, n, "broker", key, ep, reason);
    }
    rest = sep + 3;
    if ((size_t) (sep - ep) == 3 && strncmp(ep, "ipc", 3) == 0) {
        if (*rest == '\0')
            return s_refuse(why, n, "broker", key, ep, "ipc:// needs a path, e.g. ipc:///run/snapbus/ingest");
        return SB_OK;
    }
    if ((size_t) (sep - ep) == 6 && strncmp(ep, "inproc", 6) == 0) {
        if (*rest == '\0')
            return s_refuse(why, n, "broker", key, ep, "inproc:// needs a name");
        return SB_OK;
    }
    if ((size_t) (sep - ep) != 3 || strncmp(ep, "tcp", 3) != 0) {
        snprintf(reason, sizeof reason, "unknown scheme \"%.*s\": tcp://, ipc:// or inproc://",
                 (int) (sep - ep), ep);
        return s_refuse(why, n, "broker", key, ep, reason);
    }
    if (*rest == '[') {
        const char *close = strchr(rest, ']');
        if (close == NULL || close == rest + 1 || close[1] != ':')
            return s_refuse(why, n, "broker", key, ep, "expected tcp://[IPV6]:PORT");
        colon = close + 1;
    } else {
        colon = strrchr(rest, ':');
        if (colon == NULL)
            return s_refuse(why, n, "broker", key, ep,
                            "the port is missing: tcp://HOST:PORT, PORT 1 to 65535 or * for a free one");
        if (colon == rest)
            return s_refuse(why, n, "broker", key, ep,
                            "the host is missing: tcp://HOST:PORT, e.g. tcp://127.0.0.1:7701 (* for every interface)");
        if (memchr(rest, ':', (size_t) (colon - rest)) != NULL)
            return s_refuse(why, n, "broker", key, ep, "an IPv6 address goes in brackets: tcp://[::1]:7701");
    }
    if (strcmp(colon + 1, "*") == 0)
        return SB_OK;
    char *end;
    errno = 0;
    unsigned long port = colon[1] >= '0' && colon[1] <= '9' ? strtoul(colon + 1, &end, 10) : 0;
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 || port > 65535) {
        snprintf(reason, sizeof reason, "port \"%s\" is not a port: 1 to 65535, or * for a free one",
                 colon + 1);
        return s_refuse(why, n, "broker", key, ep, reason);
    }
    return SB_OK;
}

static sb_err
s_check_security(const sb_config *c, char *why, size_t n)
{
    const char *const eps[3][2] = {{"ingest", c->ingest}, {"pub", c->pub},
                                   {"query", c->query}};

    if (c->secret_key_file[0] != '\0') {
        if (c->publisher_keys[0] == '\0' || c->subscriber_keys[0] == '\0') {
            snprintf(why, n, "security.secret_key_file is set, so "
                     "security.publisher_keys and security.subscriber_keys "
                     "must name allowlist files too (an empty file admits nobody)");
            return SB_EINVAL;
        }
        return SB_OK;
    }
    if (c->publisher_keys[0] != '\0' || c->subscriber_keys[0] != '\0' ||
        c->query_keys[0] != '\0') {
        snprintf(why, n, "allowlists are set but security.secret_key_file is "
                 "not: without the broker's key there is no CURVE to check them");
        return SB_EINVAL;
    }
    for (int i = 0; i < 3 && !c->insecure; i++)
        if (!s_local_endpoint(eps[i][1]))
            return s_refuse(why, n, "broker", eps[i][0], eps[i][1],
                            "binds beyond loopback without CURVE: set "
                            "security.secret_key_file and the allowlists "
                            "(docs/SECURITY.md), or accept plaintext with "
                            "--insecure (security.insecure = 1)");
    return SB_OK;
}

/* 1 when the broker runs without CURVE on an address beyond loopback
 * (allowed by security.insecure): main warns at start. */
int
sb_config_exposed(const sb_config *c)
{
    return c->secret_key_file[0] == '\0' &&
           (!s_local_endpoint(c->ingest) || !s_local_endpoint(c->pub) ||
            !s_local_endpoint(c->query));
}

int
sb_config_metrics_local(const sb_config *c)
{
    char host[64], reason[160];
    uint16_t port;

    if (c->metrics[0] == '\0')
        return 1;
    if (sb_metrics_parse_listen(c->metrics, host, sizeof host, &port, reason,
                                sizeof reason) != SB_OK)
        return 0;
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

sb_err
sb_config_check(const sb_config *c, char *why, size_t n)
{
    if (sb_log_format_parse(c->log_format) < 0)
        return s_refuse(why, n, "broker", "log_format", c->log_format, "logfmt or json");
    if (s_check_endpoint("ingest", c->ingest, why, n) != SB_OK ||
        s_check_endpoint("pub", c->pub, why, n) != SB_OK ||
        s_check_endpoint("query", c->query, why, n) != SB_OK)
        return SB_EINVAL;
    if (s_check_security(c, why, n) != SB_OK)
        return SB_EINVAL;
    if (c->metrics[0] != '\0') {
        char host[64], reason[160];
        uint16_t port;
        if (sb_metrics_parse_listen(c->metrics, host, sizeof host, &port,
                                    reason, sizeof reason) != SB_OK)
            return s_refuse(why, n, "broker", "metrics", c->metrics, reason);
    }
    if (sb_router_config_check(&c->router, why, n) != SB_OK)
        return SB_EINVAL;
    if (sb_store_config_check(&c->storage, why, n) != SB_OK)
        return SB_EINVAL;
    if (sb_dedup_config_check(&c->dedup, why, n) != SB_OK)
        return SB_EINVAL;
    sb_budget_plan plan;
    if (sb_budget_plan_make(&plan, c, why, n) != SB_OK)
        return SB_EINVAL;
    if (c->limits.shard_index >= c->limits.shard_count) {
        snprintf(why, n, "shard.index (%u) must be below shard.count (%u)",
                 c->limits.shard_index, c->limits.shard_count);
        return SB_EINVAL;
    }
    if (c->limits.max_payload_bytes > c->limits.max_message_bytes) {
        snprintf(why, n, "limits.max_payload_bytes (%u) is larger than limits.max_message_bytes (%u)",
                 c->limits.max_payload_bytes, c->limits.max_message_bytes);
        return SB_EINVAL;
    }
    return SB_OK;
}

void
sb_config_usage(FILE *out)
{
    sb_config d;
    const char *last = "";

    sb_config_defaults(&d);
    fprintf(out,
            "usage: snapbusd [--config FILE] [--check-config] [--FLAG VALUE ...]\n\n"
            "Runs the snapbus broker. Settings come from defaults, then the\n"
            "configuration file (INI), then SNAPBUS_<SECTION>_<KEY> environment\n"
            "variables (not the client's SNAPBUS_PRODUCER_ID, _SERVER_KEY,\n"
            "_CLIENT_KEY, nor Kubernetes service links such as SNAPBUS_SERVICE_HOST\n"
            "or SNAPBUS_PORT_7701_TCP: those are ignored), then flags. Every key\n"
            "below is also a flag: --KEY VALUE\n"
            "with '-' for '_' (--ring-bytes), or --set SECTION.KEY=VALUE.\n\n"
            "  --config FILE        read this INI file first\n"
            "  --check-config       check the configuration and exit (0: valid)\n"
            "  --delay PATTERN=MS   delay for aggregates matching PATTERN (exact name\n"
            "                       or fnmatch glob); repeatable; [delays] in the file\n"
            "  --insecure           allow plaintext beyond loopback (no value;\n"
            "                       security.insecure = 1)\n"
            "  --insecure-key-permissions\n"
            "                       use a secret key file others may read, with a\n"
            "                       warning (no value; security.insecure_key_permissions = 1)\n"
            "  --log-retain-bytes N, --log-retain-age-s S\n"
            "                       the on-disk log's bounds (storage.retain_*)\n"
            "  --retain-bytes, --retain-batches\n"
            "                       deprecated: the memory ring's --ring-bytes,\n"
            "                       --ring-batches (they never bounded the disk)\n"
            "  --help               this text\n"
            "  --version            print the version\n");
    for (size_t i = 0; i < S_NKEYS; i++) {
        const s_key *k = &s_keys[i];
        const char *field = (const char *) &d + k->off;
        char def[64];
        if (strcmp(k->section, last) != 0) {
            fprintf(out, "\n[%s]\n", k->section);
            last = k->section;
        }
        if (k->type == T_STR || k->type == T_LEVEL)
            snprintf(def, sizeof def, "\"%s\"", field);
        else if (k->type == T_U32)
            snprintf(def, sizeof def, "%u", *(const uint32_t *) field);
        else
            snprintf(def, sizeof def, "%llu", (unsigned long long) *(const uint64_t *) field);
        fprintf(out, "  %-24s %s (default %s)\n", k->key, k->help, def);
    }
    fprintf(out, "\nSignals: SIGTERM or SIGINT stop intake, flush every open batch to\n"
                 "subscribers, send the pending acks and exit 0. SIGHUP rereads the\n"
                 "[security] allowlists (new connections use them).\n"
                 "\n"
                 "exit codes: 0 stopped cleanly (drained), or --check-config found\n"
                 "the configuration valid; 1 could not start or run (a port in use,\n"
                 "the data directory or log unusable; the log line says which);\n"
                 "2 a configuration error (nothing was started; restarting will not\n"
                 "help).\n");
}
