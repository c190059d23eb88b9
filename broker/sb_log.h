/* Structured logging: a level, a stable event id, then key=value pairs
 * (logfmt). The sink is a function pointer so tests can capture lines. */
#ifndef SB_LOG_H
#define SB_LOG_H

typedef enum {
    SB_LOG_ERR = 3,
    SB_LOG_WARN = 4,
    SB_LOG_NOTICE = 5,
    SB_LOG_INFO = 6,
    SB_LOG_DEBUG = 7
} sb_log_level;

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

void sb_log_write(sb_log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The level is checked before the arguments are evaluated. */
#define SB_LOG(lvl, event, ...)                                                \
    do {                                                                       \
        if ((int) (lvl) <= sb_log_max_level)                                   \
            sb_log_write((lvl), (event), __VA_ARGS__);                         \
    } while (0)

#endif
