/* Structured logging: a level, a stable event id, then key=value pairs,
 * written as strict logfmt (or one JSON object a line). The sink is a
 * function pointer so tests can capture lines.
 *
 * Call sites write their pairs with printf: "dir=%s err=%s". A value may
 * be written bare or in double quotes, and may hold anything (spaces,
 * quotes, newlines): the writer splits the text into pairs (a new pair
 * starts only at " key=", key being [a-z0-9_.]), then writes every value
 * through one escaping function, quoting it when logfmt needs it. So a
 * value can never break a line, whatever the call site forgot. A pair
 * "errno=N" (N > 0) is followed by "errstr=<strerror(N)>".
 *
 * Rate limit: warnings and errors are limited per event id, at most
 * sb_log_set_rate() lines a second each; what is held back is counted and
 * reported in one line, event=log.suppressed of=<event id> suppressed=N,
 * before the next line of that event, or when any other line is written
 * after its second ended, or at sb_log_flush(). So a flood of one failure
 * costs a bounded number of lines a second, and is still visible. */
#ifndef SB_LOG_H
#define SB_LOG_H

typedef enum {
    SB_LOG_ERR = 3,
    SB_LOG_WARN = 4,
    SB_LOG_NOTICE = 5,
    SB_LOG_INFO = 6,
    SB_LOG_DEBUG = 7
} sb_log_level;

typedef enum { SB_LOG_LOGFMT = 0, SB_LOG_JSON = 1 } sb_log_format;

typedef void (*sb_log_sink)(sb_log_level lvl, const char *line, void *ctx);

extern int sb_log_max_level;

void sb_log_set_level(sb_log_level lvl);
/* NULL restores the default sink, stderr. */
void sb_log_set_sink(sb_log_sink sink, void *ctx);
/* A sink that drops every line (after it was formatted): for tests and
 * fuzzers that provoke errors on purpose. */
void sb_log_discard(sb_log_level lvl, const char *line, void *ctx);
/* Parses "err|warn|notice|info|debug"; -1 if unknown. */
int sb_log_level_parse(const char *s);
/* Parses "logfmt|json"; -1 if unknown. */
int sb_log_format_parse(const char *s);
void sb_log_set_format(sb_log_format f);
/* Warning and error lines a second per event id; 0: no limit. */
void sb_log_set_rate(unsigned lines_per_s);
/* Writes the pending log.suppressed lines now (at exit). */
void sb_log_flush(void);

void sb_log_write(sb_log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The level is checked before the arguments are evaluated. */
#define SB_LOG(lvl, event, ...)                                                \
    do {                                                                       \
        if ((int) (lvl) <= sb_log_max_level)                                   \
            sb_log_write((lvl), (event), __VA_ARGS__);                         \
    } while (0)

#endif
