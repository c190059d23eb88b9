/* A bounded single-producer single-consumer queue between two actors.
 *
 * The bound is exact: `capacity` items, no more. A full link refuses with
 * SB_EAGAIN and the producer keeps its item (it parks it and waits on
 * sb_link_send_fd). Both ends can be waited on with poll(2) or zmq_poll():
 * recv_fd is readable exactly while the link holds an item, send_fd exactly
 * while it has room. Items are copied by value (`item_size` bytes); to move
 * an object, send its pointer. */
#ifndef SB_LINK_H
#define SB_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"

#include "sb_hist.h"

typedef struct sb_link sb_link;

typedef struct {
    const char *name;
    size_t depth;     /* items queued now */
    size_t capacity;  /* the bound */
    size_t high;      /* highest depth seen */
    uint64_t sent;    /* items accepted */
    uint64_t full;    /* sends refused because the link was full */
    uint64_t wait_ns; /* time the producer spent with a refused item */
    const sb_hist *wait_hist; /* each of those waits; lives as long as the link */
} sb_link_stats;

sb_err sb_link_new(sb_link **out, const char *name, size_t item_size,
                   size_t capacity);
void sb_link_destroy(sb_link **linkp);

/* SB_OK: copied in. SB_EAGAIN: full, nothing changed. */
sb_err sb_link_send(sb_link *link, const void *item);
/* SB_OK: copied out. SB_EAGAIN: empty. */
sb_err sb_link_recv(sb_link *link, void *item);
/* Waits up to timeout_ms (-1: forever) for room, then sends. */
sb_err sb_link_send_wait(sb_link *link, const void *item, int timeout_ms);
/* Waits up to timeout_ms (-1: forever) for an item. */
sb_err sb_link_recv_wait(sb_link *link, void *item, int timeout_ms);

int sb_link_recv_fd(const sb_link *link);
int sb_link_send_fd(const sb_link *link);
size_t sb_link_depth(sb_link *link);
void sb_link_stats_get(sb_link *link, sb_link_stats *st);

/* Fault injection, for tests: while held, the consumer sees an empty link
 * (recv answers SB_EAGAIN, recv_fd is not readable) although items stay
 * queued, so the link fills and the producer parks exactly as if the
 * consumer were slow. Releasing makes the queued items visible again, in
 * order. Nothing is lost either way. Any thread may call it. */
void sb_link_set_hold(sb_link *link, int on);
const char *sb_link_name(const sb_link *link);

/* ---- byte credit ---------------------------------------------------------
 *
 * The links bound items; a credit bounds the bytes behind them. One credit
 * is shared along the pipeline: the stage that admits work takes the
 * bytes it allocated (sb_credit_take), whichever thread frees that memory
 * gives them back (sb_credit_give). The admitting stage asks
 * sb_credit_room() before it admits more; with no room it stops reading
 * its input and waits on sb_credit_fd(), which becomes readable when a
 * give brings the use back under the limit (then it calls
 * sb_credit_clear() and asks again). Nothing is refused or dropped: a take
 * always succeeds, so the use can pass the limit by what one admission
 * takes (the caller's bound on one item); the limit only stops the next.
 *
 * Take and give are lock-free atomics, callable from any thread; the fd is
 * written only when a give crosses the limit downwards, so a busy pipeline
 * under its limit costs no system call. One waiter at a time. */
typedef struct sb_credit sb_credit;

typedef struct {
    uint64_t limit;   /* bytes */
    uint64_t used;    /* bytes taken and not given back */
    uint64_t high;    /* highest use seen */
    uint64_t waits;   /* times the admitting stage found no room */
    uint64_t wait_ns; /* time it spent without room */
} sb_credit_stats;

sb_err sb_credit_new(sb_credit **out, uint64_t limit);
void sb_credit_destroy(sb_credit **cp);
void sb_credit_take(sb_credit *c, uint64_t bytes);
void sb_credit_give(sb_credit *c, uint64_t bytes);
/* 1 while the use is under the limit. The first 0 after a 1 is counted
 * as a wait (and times it, until the next 1). Call from the waiter only. */
int sb_credit_room(sb_credit *c);
int sb_credit_fd(const sb_credit *c);
void sb_credit_clear(sb_credit *c);
uint64_t sb_credit_used(sb_credit *c);
void sb_credit_stats_get(sb_credit *c, sb_credit_stats *st);

#endif
