/* Error codes and ack levels, shared by the snapbus client library and
 * the broker. */
#ifndef SNAPBUS_COMMON_H
#define SNAPBUS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the library's API. Building libsnapbus (SB_BUILDING_LIBRARY):
 * exported from the shared library; everything else in it stays hidden.
 * Using it: a plain declaration, or a DLL import where there are DLLs
 * (define SB_STATIC to link libsnapbus statically there). */
#if defined(_WIN32) || defined(__CYGWIN__)
#if defined(SB_BUILDING_LIBRARY)
#define SB_EXPORT __declspec(dllexport)
#elif defined(SB_STATIC)
#define SB_EXPORT
#else
#define SB_EXPORT __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define SB_EXPORT __attribute__((visibility("default")))
#else
#define SB_EXPORT
#endif

/* Every value is pinned: the numbers are part of the ABI. New codes are
 * appended, never renumbered or reused. */
typedef enum {
    SB_OK = 0,
    SB_EAGAIN = 1,   /* full (or empty) right now; retry later. Not a failure */
    SB_ENOMEM = 2,
    SB_EINVAL = 3,   /* invalid argument or event (ERR_INVALID) */
    SB_ETOOBIG = 4,  /* over a size or count limit (ERR_TOO_LARGE) */
    SB_EPROTO = 5,   /* malformed wire input or unknown version */
    SB_EDUP = 6,     /* duplicate (ERR_DUPLICATE) */
    SB_EUNAUTH = 7,  /* unauthorized (ERR_UNAUTHORIZED) */
    SB_ESTORAGE = 8, /* storage full (ERR_STORAGE_FULL) */
    SB_ECLOSED = 9,  /* shutting down (ERR_SHUTTING_DOWN) or closed */
    SB_ESYS = 10,    /* an OS or ZeroMQ call failed */
    SB_ENOTSUP = 11, /* well formed but not served (ERR_UNSUPPORTED) */
    SB_ENOENT = 12,  /* not found; out of retention (ERR_OUT_OF_RETENTION) */
    SB_ETIMEDOUT = 13,
    SB_ERESTART = 14, /* the broker restarted (new epoch): see SUBSCRIBING.md */
    SB_EWRONGSHARD = 15, /* the aggregate belongs to another shard (ERR_WRONG_SHARD) */
    SB_EHORIZON = 16 /* older than the broker's de-duplication horizon: it
                      * cannot tell whether the event was accepted, so it
                      * took nothing (ERR_BEYOND_DEDUP_HORIZON,
                      * docs/PUBLISHING.md) */
} sb_err;

SB_EXPORT const char *sb_strerror(sb_err e);

/* The shard (0..nshards-1) that owns aggregate `name` when aggregates are
 * spread over `nshards` brokers: publish its events to that broker only.
 * The same function runs in every broker and client (docs/SCALING.md).
 * SB_EINVAL if nshards is 0. */
SB_EXPORT sb_err sb_shard_of(const char *name, size_t len, uint32_t nshards,
                             uint32_t *shard);

typedef enum {
    SB_ACK_NONE = 0,      /* fire-and-forget */
    SB_ACK_SEQUENCED = 1, /* the broker assigned a seq */
    SB_ACK_DURABLE = 2,   /* in the synced on-disk log */
    SB_ACK_PUBLISHED = 3  /* sent to subscribers in a snapshot batch */
} sb_ack;

/* Why a batch was closed (SnapshotBatch.close_reason, docs/PROTOCOL.md).
 * Pinned like sb_err; a broker of a later version may send a value not
 * listed here, which is passed on as it is. */
typedef enum {
    SB_CLOSE_DELAY = 0,      /* the aggregate's delay ended */
    SB_CLOSE_IMMEDIATE = 1,  /* delay 0: flushed with its request */
    SB_CLOSE_MAX_EVENTS = 2, /* reached max_batch_events */
    SB_CLOSE_MAX_BYTES = 3,  /* reached max_batch_bytes */
    SB_CLOSE_SHUTDOWN = 4    /* the broker was stopping */
} sb_close_reason;

#ifdef __cplusplus
}
#endif
#endif
