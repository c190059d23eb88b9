/* Fuzzes the broker's configuration readers (broker/sb_config.c): the
 * INI file parser (through sb_config_load_string, the same code as a file
 * without the file), single keys (sb_config_set, what the file, the
 * environment and --set all end in), flags (sb_config_load_args) and the
 * environment (sb_config_load_env), each followed by the whole-struct
 * check sb_config_check.
 *
 * The first input byte picks the reader; the rest is its input, split at
 * NUL bytes where the reader takes several strings. Error text goes into
 * a heap buffer of exactly the size passed, so a write past it is caught.
 * After every reader, the struct must still hold what its types promise:
 * every string NUL-terminated inside its array, every delay rule valid.
 * For numeric keys the stored value is checked against an independent
 * reading of the text (digits, then k, K, M or G): a value whose reading
 * does not fit in 64 bits must be refused, not wrap around. */
#include <string.h>

#include "fuzz.h"
#include "sb_config.h"

#define S_WHY 96

static void
s_check_struct(const sb_config *c)
{
    FUZZ_CHECK(memchr(c->ingest, 0, sizeof c->ingest) != NULL);
    FUZZ_CHECK(memchr(c->pub, 0, sizeof c->pub) != NULL);
    FUZZ_CHECK(memchr(c->query, 0, sizeof c->query) != NULL);
    FUZZ_CHECK(memchr(c->data_dir, 0, sizeof c->data_dir) != NULL);
    FUZZ_CHECK(memchr(c->ready_file, 0, sizeof c->ready_file) != NULL);
    FUZZ_CHECK(memchr(c->log_level, 0, sizeof c->log_level) != NULL);
    FUZZ_CHECK(memchr(c->metrics, 0, sizeof c->metrics) != NULL);
    FUZZ_CHECK(c->router.nrules <= SB_MAX_DELAY_RULES);
    for (uint32_t i = 0; i < c->router.nrules; i++) {
        const char *p = c->router.rules[i].pattern;
        FUZZ_CHECK(memchr(p, 0, SB_MAX_PATTERN) != NULL);
        FUZZ_CHECK(p[0] != '\0');
        FUZZ_CHECK(c->router.rules[i].delay_ms <= 86400000u);
    }
    FUZZ_CHECK(c->hwm >= 1);
    FUZZ_CHECK(c->limits.max_name_bytes >= 1 && c->limits.max_name_bytes <= 255);
}

static void
s_check_why(const char *why)
{
    FUZZ_CHECK(memchr(why, 0, S_WHY) != NULL);
}

/* Splits buf (NUL-terminated, len bytes before the NUL) at NULs. */
static size_t
s_split(char *buf, size_t len, char **out, size_t max)
{
    size_t n = 0;
    char *p = buf, *end = buf + len;

    while (n < max && p <= end) {
        out[n++] = p;
        p += strlen(p) + 1;
    }
    return n;
}

/* digits, then an optional k/K/M/G; -1 if not that shape, 1 if it does
 * not fit in 64 bits, 0 with *v otherwise. */
static int
s_ref_number(const char *s, uint64_t *v)
{
    unsigned __int128 x = 0;
    int shift = 0, digits = 0;

    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        x = x * 10 + (unsigned) (*s - '0');
        if (x > UINT64_MAX)
            x = (unsigned __int128) UINT64_MAX + 1; /* saturate */
    }
    if (digits == 0)
        return -1;
    if (*s == 'k' || *s == 'K')
        shift = 10, s++;
    else if (*s == 'M')
        shift = 20, s++;
    else if (*s == 'G')
        shift = 30, s++;
    if (*s != '\0')
        return -1;
    if (x > UINT64_MAX || (x << shift) > UINT64_MAX)
        return 1;
    *v = (uint64_t) (x << shift);
    return 0;
}

/* Numeric keys of each width, with where they live. */
static void
s_numeric(const char *value, unsigned pick)
{
    static const struct {
        const char *sec, *key;
    } keys[] = {
        {"broker", "hwm"},
        {"limits", "max_message_bytes"},
        {"batching", "max_open_bytes"},
        {"retention", "ring_bytes"},
    };
    sb_config c;
    char *why = malloc(S_WHY);
    unsigned k = pick % (sizeof keys / sizeof keys[0]);
    uint64_t ref = 0, got;

    if (why == NULL)
        return;
    sb_config_defaults(&c);
    sb_err rc = sb_config_set(&c, keys[k].sec, keys[k].key, value, why, S_WHY);
    int shape = s_ref_number(value, &ref);
    if (rc != SB_OK) {
        s_check_why(why);
    } else {
        switch (k) {
        case 0: got = c.hwm; break;
        case 1: got = c.limits.max_message_bytes; break;
        case 2: got = c.router.max_open_bytes; break;
        default: got = c.retain_bytes; break;
        }
        /* strtoull also takes a leading '+'; skip the comparison then. */
        if (value[0] != '+') {
            FUZZ_CHECK(shape == 0);
            FUZZ_CHECK(got == ref);
        }
    }
    free(why);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_config c;
    char *buf, *why;
    char *parts[66];
    size_t n;
    sb_err rc = SB_OK;

    if (size < 1 || size > 65536)
        return 0;
    if ((buf = malloc(size)) == NULL || (why = malloc(S_WHY)) == NULL) {
        free(buf);
        return 0;
    }
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    why[0] = '\0';
    sb_config_defaults(&c);

    switch (data[0] % 5) {
    case 0: /* an INI file */
        rc = sb_config_load_string(&c, buf, why, S_WHY);
        break;
    case 1: /* keys: section, key, value, section, key, value, ... */
        n = s_split(buf, size - 1, parts, 66);
        for (size_t i = 0; i + 2 < n; i += 3)
            if ((rc = sb_config_set(&c, parts[i], parts[i + 1], parts[i + 2],
                                    why, S_WHY)) != SB_OK)
                break;
        break;
    case 2: { /* flags: argv[1..] */
        char *argv[65];
        argv[0] = "snapbusd";
        n = s_split(buf, size - 1, argv + 1, 64);
        rc = sb_config_load_args(&c, (int) n + 1, argv, why, S_WHY);
        const char *f = sb_config_file_arg((int) n + 1, argv);
        FUZZ_CHECK(f == NULL || (f >= buf && f < buf + size));
        break;
    }
    case 3: { /* the environment */
        char *envp[65];
        n = s_split(buf, size - 1, envp, 64);
        envp[n] = NULL;
        rc = sb_config_load_env(&c, envp, why, S_WHY);
        break;
    }
    default: /* a key picked by the next byte, and its value */
        if (size > 1)
            s_numeric(buf + 1, data[1]);
        break;
    }
    if (rc != SB_OK)
        s_check_why(why);
    s_check_struct(&c);
    if (sb_config_check(&c, why, S_WHY) != SB_OK)
        s_check_why(why);
    free(why);
    free(buf);
    return 0;
}
