/* Timelock queue: knows when each open batch's delay ends and tells the
 * router to flush it.
 *
 * Core: a min-heap of (deadline_ms, key) with an index from key to heap
 * slot, so a batch that closes early is disarmed in O(log n) and the heap
 * never holds more than the router's open batches. No threads, no clock:
 * time comes in as an argument.
 *
 * Shell: an actor that reads sb_timer_cmd from the router (ARM, DISARM,
 * EOF), and sends sb_timer_cmd{SB_TIMER_DUE, key} back when a deadline
 * passes, using the injected clock for "now" and the next deadline for its
 * poll timeout. It always reads its input, even while a DUE is parked on a
 * full output, so the router and the timelock can never wait on each other:
 * the router in turn always reads DUEs (see docs/ARCHITECTURE.md). */
#ifndef SB_TIMELOCK_H
#define SB_TIMELOCK_H

#include <stddef.h>
#include <stdint.h>

#include "sb_clock.h"
#include "sb_err.h"
#include "sb_link.h"

typedef struct sb_timelock sb_timelock;

sb_err sb_timelock_new(sb_timelock **out, size_t capacity);
void sb_timelock_destroy(sb_timelock **tlp);
/* Arms key for deadline_ms; re-arming a key moves it. SB_EAGAIN at
 * capacity (nothing changed). */
sb_err sb_timelock_arm(sb_timelock *tl, uint64_t key, uint64_t deadline_ms);
/* SB_ENOENT if key is not armed. */
sb_err sb_timelock_disarm(sb_timelock *tl, uint64_t key);
/* Earliest deadline; SB_EAGAIN if nothing is armed. */
sb_err sb_timelock_next(const sb_timelock *tl, uint64_t *deadline_ms);
/* Pops one key whose deadline is <= now_ms, earliest first (ties: armed
 * first comes first); SB_EAGAIN if none is due. */
sb_err sb_timelock_pop_due(sb_timelock *tl, uint64_t now_ms, uint64_t *key);
size_t sb_timelock_size(const sb_timelock *tl);

typedef enum {
    SB_TIMER_ARM = 1,
    SB_TIMER_DISARM,
    SB_TIMER_DUE,
    SB_TIMER_EOF /* router → timelock: no more commands; timelock exits */
} sb_timer_op;

typedef struct {
    uint32_t op;
    uint64_t key;
    uint64_t deadline_ms;
} sb_timer_cmd;

typedef struct sb_timelock_actor sb_timelock_actor;

/* in: router → timelock, out: timelock → router; both carry sb_timer_cmd
 * and are owned by the caller. The clock is copied. */
sb_err sb_timelock_actor_new(sb_timelock_actor **out, const sb_clock *clock,
                             size_t capacity, sb_link *in, sb_link *outl);
/* Stops now (dropping pending timers: only at teardown). */
void sb_timelock_actor_destroy(sb_timelock_actor **ap);
/* Blocks until the actor exited after SB_TIMER_EOF. */
sb_err sb_timelock_actor_wait(sb_timelock_actor *a, int timeout_ms);

#endif
