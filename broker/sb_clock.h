/* The one source of time for timing rules. Tests replace it. */
#ifndef SB_CLOCK_H
#define SB_CLOCK_H

#include <stdint.h>

typedef struct sb_clock {
    uint64_t (*now_ms)(void *ctx); /* monotonic milliseconds */
    void *ctx;
} sb_clock;

/* CLOCK_MONOTONIC. */
sb_clock sb_clock_system(void);

static inline uint64_t
sb_clock_now(const sb_clock *c)
{
    return c->now_ms(c->ctx);
}

/* Wall clock in ms since the epoch, for timestamps shown to users only. */
uint64_t sb_clock_wall_ms(void);
/* Monotonic nanoseconds, for metrics (wait times), never for rules. */
uint64_t sb_clock_mono_ns(void);

#endif
