#include "sb_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int sb_log_max_level = SB_LOG_INFO;

static sb_log_sink s_sink;
static void *s_sink_ctx;
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *s_names[] = {"emerg", "alert", "crit", "err",
                                "warn", "notice", "info", "debug"};

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

void
sb_log_write(sb_log_level lvl, const char *event, const char *fmt, ...)
{
    char line[1024];
    struct timeval tv;
    struct tm tm;
    int n;
    va_list ap;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = snprintf(line, sizeof line,
                 "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, (long) tv.tv_usec / 1000,
                 s_names[(int) lvl & 7], event);
    if (n < 0 || (size_t) n >= sizeof line)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t) n, fmt, ap);
    va_end(ap);

    pthread_mutex_lock(&s_lock);
    if (s_sink != NULL)
        s_sink(lvl, line, s_sink_ctx);
    else
        fprintf(stderr, "%s\n", line);
    pthread_mutex_unlock(&s_lock);
}

void
sb_log_discard(sb_log_level lvl, const char *line, void *ctx)
{
    (void)lvl;
    (void)line;
    (void)ctx;
}
