#include "sb_clock.h"

#include <time.h>

static uint64_t
s_mono_ms(void *ctx)
{
    (void) ctx;
    return sb_clock_mono_ns() / 1000000u;
}

sb_clock
sb_clock_system(void)
{
    sb_clock c = {s_mono_ms, NULL};
    return c;
}

uint64_t
sb_clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

uint64_t
sb_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}
