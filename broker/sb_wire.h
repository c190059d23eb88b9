/* Wire codec: protobuf bytes <-> the broker's own structs. protobuf-c types
 * never leave this module.
 *
 * The two hot paths are hand-written against proto/snapbus.proto: decoding
 * a publish request straight into one sb_req allocation (so every length
 * is known and checked: names may not hold a NUL byte, must be UTF-8), and
 * encoding a snapshot batch into one buffer. Everything else goes through
 * protobuf-c. tests/unit/test_wire.c checks both against protobuf-c. */
#ifndef SB_WIRE_H
#define SB_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"
#include "sb_msg.h"
#include "sb_fetch_page.h"

#define SB_WIRE_VERSION 1

/* ErrorCode of the .proto. */
typedef enum {
    SB_WERR_NONE = 0,
    SB_WERR_INVALID = 1,
    SB_WERR_TOO_LARGE = 2,
    SB_WERR_UNAUTHORIZED = 3,
    SB_WERR_DUPLICATE = 4,
    SB_WERR_STORAGE_FULL = 5,
    SB_WERR_SHUTTING_DOWN = 6,
    SB_WERR_UNSUPPORTED = 7,
    SB_WERR_BAD_VERSION = 8,
    SB_WERR_OUT_OF_RETENTION = 9,
    SB_WERR_BEYOND_DEDUP_HORIZON = 10,
    SB_WERR_WRONG_SHARD = 11,
    SB_WERR_BUSY = 12
} sb_werr;
#define SB_WERR_COUNT 13 /* sizes tables indexed by sb_werr */

sb_werr sb_wire_err_of(sb_err e);

typedef struct {
    uint32_t max_message_bytes;
    uint32_t max_events_per_request;
    uint32_t max_payload_bytes;
    uint32_t max_name_bytes;
    /* This broker owns the aggregates sb_shard_of() maps to shard_index
     * of shard_count; count 1: all of them. */
    uint32_t shard_index;
    uint32_t shard_count;
} sb_limits;

void sb_limits_defaults(sb_limits *l);

typedef enum {
    SB_WREQ_NONE = 0,
    SB_WREQ_HELLO,
    SB_WREQ_PUBLISH,
    SB_WREQ_FETCH
} sb_wreq_kind;

typedef struct {
    char prefix[256];
    uint32_t prefix_len;
    uint64_t from_seq;
    uint64_t to_seq;
    uint64_t after_batch_id;
    uint32_t max_batches;
    uint32_t max_bytes;
    int exact; /* only the aggregate named prefix */
    int headers_only; /* batch frames cut to their header (no events) */
} sb_fetch_req;

/* A decoded request. On a request-level refusal, `err` says why (with a
 * short static `detail`) and request_id is set when it could be read. */
typedef struct {
    sb_wreq_kind kind;
    uint64_t request_id;
    sb_werr err;
    const char *detail;
    sb_req *req;       /* SB_WREQ_PUBLISH: ours; per-event status set */
    sb_fetch_req fetch;
} sb_wire_request;

/* Decodes one request frame. SB_OK: out->kind is set and out->err may still
 * refuse it; out->req (publish) is owned by the caller. Never fails for bad
 * input: bad input is an out->err. SB_ENOMEM only. */
sb_err sb_wire_decode_request(const void *buf, size_t len, const sb_limits *lim,
                              sb_wire_request *out);

/* Encoders return a malloc'd buffer in *buf, length in *len. */
sb_err sb_wire_encode_error(uint64_t request_id, sb_werr err, const char *detail,
                            uint8_t **buf, size_t *len);
sb_err sb_wire_encode_publish_reply(const sb_reply *rp, uint8_t **buf,
                                    size_t *len);

typedef struct {
    const char *broker;
    sb_limits limits;
    uint64_t last_seq;
    uint64_t last_batch_id;
    uint64_t epoch;
    uint64_t end_batch_id; /* stopping: the epoch's last batch; 0: running */
} sb_hello_info;

sb_err sb_wire_encode_hello_reply(uint64_t request_id, const sb_hello_info *h,
                                  uint8_t **buf, size_t *len);
/* The same, plus HelloReply.low_seq (every seq below it is in a published
 * batch; 0 = unknown), which only the query socket's hello carries. */
sb_err sb_wire_encode_hello_reply_low(uint64_t request_id,
                                      const sb_hello_info *h, uint64_t low_seq,
                                      uint8_t **buf, size_t *len);

/* The FetchReply's fields are sb_fetch_page (common/), the struct the
 * client reads replies into; sb_fetch_info_w is the fan-out's name for it. */
typedef sb_fetch_page sb_fetch_info_w;

/* EpochEnd: the marker a stopping broker publishes after its last batch
 * (docs/PROTOCOL.md section 10.8). */
sb_err sb_wire_encode_epoch_end(uint64_t epoch, uint64_t last_batch_id,
                                uint64_t last_seq, uint64_t low_seq,
                                uint32_t linger_ms, uint8_t **buf,
                                size_t *len);


/* err != SB_WERR_NONE: a refusal that still tells where retention is. */
sb_err sb_wire_encode_fetch_reply(uint64_t request_id, sb_werr err,
                                  const char *detail, const sb_fetch_page *f,
                                  uint8_t **buf, size_t *len);

/* A SnapshotBatch, with `hdr` bytes of headroom before it so a caller can
 * keep its own header in the same allocation: *buf points at the start of
 * the headroom (zeroed, so header fields a caller does not set read 0),
 * the message is (*buf + hdr, *len). Fields go out in number order except
 * that the events (11) come last, after has_source_pos (12): the batch's
 * header is then a prefix of its bytes (sb_wire_batch_header_len). */
sb_err sb_wire_encode_batch(const sb_batch *b, size_t hdr, uint8_t **buf,
                            size_t *len);

/* Length of the header of an encoded SnapshotBatch: the bytes before its
 * first event (field 11), or len if it has none or is malformed. With the
 * field order of sb_wire_encode_batch that prefix is itself a valid
 * SnapshotBatch holding every field but the events: what a headers_only
 * fetch sends, zero-copy. */
size_t sb_wire_batch_header_len(const uint8_t *p, size_t len);

/* Used by the decoders and by tests: is s[0..n) UTF-8 without NUL? */
int sb_wire_name_ok(const char *s, size_t n);
/* Where a name stops being UTF-8 without 0x00 (a byte offset), or
 * SIZE_MAX if it is one. */
size_t sb_wire_name_bad_at(const char *s, size_t n);

#endif
