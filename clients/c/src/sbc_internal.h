/* Helpers shared by libsnapbus's source files and not exported: a bump
 * arena that protobuf-c decodes into, a monotonic clock, the mapping from
 * wire error codes to sb_err, and the taking of option structs. The
 * protobuf field writer and reader are common/sb_pbwire.h. Every name here is sbc_ (library-internal); the library
 * is built with hidden visibility, so none of them leaves the .so. */
#ifndef SBC_INTERNAL_H
#define SBC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "sb_varint.h"
#include <snapbus/snapbus.h>

/* ---- Arena ----------------------------------------------------------
 * protobuf-c allocates every sub-message, string and bytes field of a
 * decoded message separately. A snapshot batch of a thousand events would
 * cost a few thousand malloc calls; decoding into an arena costs one or
 * two, and freeing the batch is one free per chunk. The arena never frees
 * single allocations (protobuf-c's free on a failed decode is a no-op);
 * sbc_arena_reset/fini release everything at once. */
typedef struct sbc_chunk sbc_chunk;

typedef struct {
    sbc_chunk *head;        /* newest chunk; allocations come from it */
    size_t next_cap;        /* size of the next chunk to allocate */
    ProtobufCAllocator pbc; /* hands this arena to protobuf-c */
} sbc_arena;

void sbc_arena_init(sbc_arena *a, size_t first_cap);
void *sbc_arena_alloc(sbc_arena *a, size_t size);
/* Frees every chunk but the largest, which is kept for the next use. */
void sbc_arena_reset(sbc_arena *a);
void sbc_arena_fini(sbc_arena *a);

/* ---- Time ----------------------------------------------------------- */

uint64_t sbc_now_ms(void);
/* CLOCK_MONOTONIC_COARSE: a few ns rather than a few tens, at the price
 * of the kernel tick's resolution (1-4 ms). For the publisher's per-event
 * linger check and its timeouts, where a tick does not matter. */
uint64_t sbc_coarse_ms(void);
/* Milliseconds left until deadline_ms as a zmq_poll timeout: -1 when
 * deadline_ms is UINT64_MAX (no deadline), else >= 0. */
long sbc_remaining_ms(uint64_t deadline_ms);
/* now + timeout_ms, or UINT64_MAX for a negative timeout (forever). */
uint64_t sbc_deadline(int timeout_ms);
/* Sleeps; only to wait for memory, never for a timing rule. */
void sbc_sleep_ms(int ms);

/* ---- Wire ----------------------------------------------------------- */

/* ErrorCode (proto) to sb_err; an unknown code is SB_EPROTO. */
sb_err sbc_err_from_wire(int code);


/* Takes a caller's option struct (one that starts with struct_size) into
 * dst, which holds the defaults: the caller's struct_size bytes replace
 * the start of dst, the fields it does not know keep their defaults.
 * SB_EINVAL if src is NULL or its struct_size is below min_size (the
 * first version's struct: _defaults was not called) or above dst_size (a
 * newer struct than this library knows). */
sb_err sbc_opts_take(void *dst, size_t dst_size, size_t min_size,
                     const void *src);

/* Duplicates a string, NULL for NULL; used for endpoints in opts so that
 * no object keeps a pointer to caller memory. */
char *sbc_strdup(const char *s);

#endif
