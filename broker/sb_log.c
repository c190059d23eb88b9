/* The log writer (see sb_log.h for the line format, the escaping and the
 * rate limit). One mutex serialises the sink and guards the limiter's
 * table; a line is formatted outside it. */
#include "sb_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int sb_log_max_level = SB_LOG_INFO;

static sb_log_sink s_sink;
static void *s_sink_ctx;
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static int s_format = SB_LOG_LOGFMT;

static const char *s_names[] = {"emerg", "alert", "crit", "err",
                                "warn", "notice", "info", "debug"};

/* ---- rate limit --------------------------------------------------------- */

#define S_SLOTS 64

typedef struct {
    char event[64];
    uint64_t second;     /* monotonic second of the window */
    unsigned lines;      /* written in that second */
    uint64_t suppressed; /* held back since the last report */
    uint64_t since;      /* first second with something held back */
    int lvl;             /* the most severe level held back */
} s_slot;

static s_slot s_slots[S_SLOTS];
static unsigned s_rate = 10;

void
sb_log_set_level(sb_log_level lvl)
{
    sb_log_max_level = (int) lvl;
}

void
sb_log_set_sink(sb_log_sink sink, void *ctx)
{
    pthread_mutex_lock(&s_lock);
    s_sink = sink;
    s_sink_ctx = ctx;
    pthread_mutex_unlock(&s_lock);
}

int
sb_log_level_parse(const char *s)
{
    for (int i = 3; i <= 7; i++)
        if (strcmp(s, s_names[i]) == 0)
            return i;
    if (strcmp(s, "error") == 0)
        return SB_LOG_ERR;
    if (strcmp(s, "warning") == 0)
        return SB_LOG_WARN;
    return -1;
}

int
sb_log_format_parse(const char *s)
{
    if (strcmp(s, "logfmt") == 0)
        return SB_LOG_LOGFMT;
    if (strcmp(s, "json") == 0)
        return SB_LOG_JSON;
    return -1;
}

void
sb_log_set_format(sb_log_format f)
{
    pthread_mutex_lock(&s_lock);
    s_format = (int) f;
    pthread_mutex_unlock(&s_lock);
}

void
sb_log_set_rate(unsigned lines_per_s)
{
    pthread_mutex_lock(&s_lock);
    s_rate = lines_per_s;
    pthread_mutex_unlock(&s_lock);
}

/* ---- output buffer ------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap; /* cap keeps room for a closing quote, brace and NUL */
} s_out;

static void
s_putn(s_out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap)
        n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void
s_puts(s_out *o, const char *s)
{
    s_putn(o, s, strlen(s));
}

/* Length of a valid UTF-8 sequence at p (at most n bytes), 0 if invalid. */
static size_t
s_utf8_len(const unsigned char *p, size_t n)
{
    size_t len;
    uint32_t c;

    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0)
        len = 2, c = p[0] & 0x1f;
    else if ((p[0] & 0xf0) == 0xe0)
        len = 3, c = p[0] & 0x0f;
    else if ((p[0] & 0xf8) == 0xf0)
        len = 4, c = p[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if ((len == 2 && c < 0x80) || (len == 3 && c < 0x800) ||
        (len == 4 && (c < 0x10000 || c > 0x10ffff)) ||
        (c >= 0xd800 && c <= 0xdfff))
        return 0;
    return len;
}

/* logfmt needs quotes around an empty value and around anything with a
 * space, '=', '"', '\', a control character or invalid UTF-8. */
static int
s_needs_quotes(const char *v, size_t n)
{
    if (n == 0)
        return 1;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char) v[i];
        if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f)
            return 1;
        size_t l = s_utf8_len((const unsigned char *) v + i, n - i);
        if (l == 0)
            return 1;
        i += l;
    }
    return 0;
}

/* The one escaping function: every value of every line goes through it.
 * Inside quotes: \" \\ \n \r \t, other control bytes and bytes that are
 * not UTF-8 as \u00XX (the same in logfmt and JSON, so one parser reads
 * both). A value cut for room still gets its closing quote. */
static void
s_value(s_out *o, const char *v, size_t n, int quote)
{
    char esc[8];

    if (!quote) {
        s_putn(o, v, n);
        return;
    }
    s_puts(o, "\"");
    for (size_t i = 0; i < n && o->len + 6 <= o->cap;) {
        unsigned char c = (unsigned char) v[i];
        size_t l = c < 0x80 ? 1 : s_utf8_len((const unsigned char *) v + i, n - i);
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char) c;
            s_putn(o, esc, 2);
        } else if (c == '\n') {
            s_puts(o, "\\n");
        } else if (c == '\r') {
            s_puts(o, "\\r");
        } else if (c == '\t') {
            s_puts(o, "\\t");
        } else if (c < 0x20 || c == 0x7f || l == 0) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            s_puts(o, esc);
            l = 1;
        } else {
            s_putn(o, v + i, l);
        }
        i += l;
    }
    o->cap += 1; /* the reserved room: the closing quote always fits */
    s_puts(o, "\"");
    o->cap -= 1;
    if (o->len > o->cap)
        o->len = o->cap;
}

/* A JSON number as it stands ("12", "-3", "0.25"): written unquoted. */
static int
s_json_number(const char *v, size_t n)
{
    size_t i = 0;

    if (i < n && v[i] == '-')
        i++;
    if (i == n || v[i] < '0' || v[i] > '9' || n - i > 20)
        return 0;
    if (v[i] == '0' && i + 1 < n && v[i + 1] != '.')
        return 0;
    while (i < n && v[i] >= '0' && v[i] <= '9')
        i++;
    if (i < n && v[i] == '.') {
        if (++i == n)
            return 0;
        while (i < n && v[i] >= '0' && v[i] <= '9')
            i++;
    }
    return i == n;
}

static void
s_pair(s_out *o, const char *k, size_t kl, const char *v, size_t vl, int first)
{
    if (s_format == SB_LOG_JSON) {
        s_puts(o, first ? "{" : ",");
        s_value(o, k, kl, 1);
        s_puts(o, ":");
        s_value(o, v, vl, !s_json_number(v, vl));
    } else {
        if (!first)
            s_puts(o, " ");
        s_putn(o, k, kl);
        s_puts(o, "=");
        s_value(o, v, vl, s_needs_quotes(v, vl));
    }
}

/* ---- splitting the call site's text into pairs ---------------------------- */

/* Length of "key" if p starts "key=" (key: [a-z_][a-z0-9_.]*), else 0. */
static size_t
s_key_at(const char *p)
{
    size_t i = 0;

    if (!((p[0] >= 'a' && p[0] <= 'z') || p[0] == '_'))
        return 0;
    while ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') ||
           p[i] == '_' || p[i] == '.')
        i++;
    return p[i] == '=' ? i : 0;
}

/* Where the value starting at p ends: at the first space that is
 * followed (after more spaces) by "key=", or at the end. */
static const char *
s_bare_end(const char *p)
{
    for (; *p; p++) {
        if (*p != ' ')
            continue;
        const char *q = p;
        while (*q == ' ')
            q++;
        if (*q == '\0' || s_key_at(q) > 0)
            return p;
    }
    return p;
}

/* The closing quote of a value opened at p[-1]: a '"' followed by the end
 * or by spaces and "key=". NULL if there is none. */
static const char *
s_quote_end(const char *p)
{
    for (; *p; p++) {
        if (*p != '"')
            continue;
        const char *q = p + 1;
        while (*q == ' ')
            q++;
        if (*q == '\0' || (q > p + 1 && s_key_at(q) > 0))
            return p;
    }
    return NULL;
}

static void
s_errstr(s_out *o, const char *v, size_t vl)
{
    char num[16], *end;
    long e;

    if (vl == 0 || vl >= sizeof num)
        return;
    memcpy(num, v, vl);
    num[vl] = '\0';
    e = strtol(num, &end, 10);
    if (*end != '\0' || e <= 0 || e > 4095)
        return;
    /* glibc's strerror of a known errno is a constant string. */
    const char *t = strerror((int) e);
    s_pair(o, "errstr", 6, t, strlen(t), 0);
}

/* Writes every pair of body (see sb_log.h) through s_pair. */
static void
s_pairs(s_out *o, const char *body)
{
    const char *p = body, *k, *v, *e;
    size_t kl;

    while (*p) {
        while (*p == ' ')
            p++;
        if (*p == '\0')
            break;
        kl = s_key_at(p);
        if (kl == 0) { /* words without a key: keep them, as msg */
            k = "msg", kl = 3, v = p, e = s_bare_end(p);
            p = e;
        } else {
            k = p;
            v = p + kl + 1;
            if (*v == '"' && (e = s_quote_end(v + 1)) != NULL) {
                v++;
                p = e + 1;
            } else {
                e = s_bare_end(v);
                p = e;
            }
        }
        while (e > v && e[-1] == ' ')
            e--;
        s_pair(o, k, kl, v, (size_t) (e - v), 0);
        if (kl == 5 && memcmp(k, "errno", 5) == 0)
            s_errstr(o, v, (size_t) (e - v));
    }
}

/* One whole line into buf. */
static void
s_build(char *buf, size_t cap, sb_log_level lvl, const char *event,
        const char *body)
{
    s_out o = {buf, 0, cap - 4};
    struct timeval tv;
    struct tm tm;
    char ts[64];

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (long) tv.tv_usec / 1000);
    s_pair(&o, "ts", 2, ts, strlen(ts), 1);
    s_pair(&o, "level", 5, s_names[(int) lvl & 7], strlen(s_names[(int) lvl & 7]), 0);
    s_pair(&o, "event", 5, event, strlen(event), 0);
    s_pairs(&o, body);
    o.cap = cap - 1;
    if (s_format == SB_LOG_JSON)
        s_puts(&o, "}");
    buf[o.len] = '\0';
}

/* With s_lock held. */
static void
s_emit(sb_log_level lvl, const char *line)
{
    if (s_sink != NULL)
        s_sink(lvl, line, s_sink_ctx);
    else
        fprintf(stderr, "%s\n", line);
}

/* With s_lock held: the count of what a slot held back, as one line. */
static void
s_report(s_slot *sl, uint64_t now_s)
{
    char body[200], line[512];

    if (sl->suppressed == 0)
        return;
    snprintf(body, sizeof body,
             "of=%s suppressed=%llu seconds=%llu limit_per_s=%u", sl->event,
             (unsigned long long) sl->suppressed,
             (unsigned long long) (now_s - sl->since + 1), s_rate);
    s_build(line, sizeof line, (sb_log_level) sl->lvl, "log.suppressed", body);
    s_emit((sb_log_level) sl->lvl, line);
    sl->suppressed = 0;
}

static uint64_t
s_mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec;
}

/* With s_lock held: 1 if a line of event may be written now. */
static int
s_admit(sb_log_level lvl, const char *event, uint64_t now_s)
{
    s_slot *sl = NULL, *free_ = NULL, *lru = NULL;

    for (size_t i = 0; i < S_SLOTS; i++) {
        s_slot *x = &s_slots[i];
        /* Anything held back in a second that has ended is told now. */
        if (x->suppressed > 0 && x->second != now_s)
            s_report(x, now_s - 1);
        if (x->event[0] == '\0') {
            if (free_ == NULL)
                free_ = x;
            continue;
        }
        if (strcmp(x->event, event) == 0)
            sl = x;
        if (lru == NULL || x->second < lru->second)
            lru = x;
    }
    if (s_rate == 0 || lvl > SB_LOG_WARN)
        return 1;
    if (sl == NULL) {
        sl = free_ != NULL ? free_ : lru;
        s_report(sl, now_s);
        memset(sl, 0, sizeof *sl);
        snprintf(sl->event, sizeof sl->event, "%s", event);
    }
    if (sl->second != now_s) {
        sl->second = now_s;
        sl->lines = 0;
    }
    if (sl->lines < s_rate) {
        sl->lines++;
        return 1;
    }
    if (sl->suppressed++ == 0) {
        sl->since = now_s;
        sl->lvl = (int) lvl;
    } else if ((int) lvl < sl->lvl) {
        sl->lvl = (int) lvl;
    }
    return 0;
}

void
sb_log_flush(void)
{
    uint64_t now_s = s_mono_s();

    pthread_mutex_lock(&s_lock);
    for (size_t i = 0; i < S_SLOTS; i++)
        s_report(&s_slots[i], now_s);
    pthread_mutex_unlock(&s_lock);
}

void
sb_log_write(sb_log_level lvl, const char *event, const char *fmt, ...)
{
    char body[4096], line[16384];
    va_list ap;
    int ok;

    pthread_mutex_lock(&s_lock);
    ok = s_admit(lvl, event, s_mono_s());
    pthread_mutex_unlock(&s_lock);
    if (!ok)
        return;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&s_lock);
    s_build(line, sizeof line, lvl, event, body);
    s_emit(lvl, line);
    pthread_mutex_unlock(&s_lock);
}

void
sb_log_discard(sb_log_level lvl, const char *line, void *ctx)
{
    (void)lvl;
    (void)line;
    (void)ctx;
}
