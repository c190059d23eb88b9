/* Ingest: the publishers' ROUTER socket.
 *
 * Reads requests, decodes and validates them (sb_wire), answers bad input
 * with a typed error, and hands accepted requests to the sequencer. When
 * the sequencer's link is full it parks the request it holds and stops
 * reading the socket: ZeroMQ's receive high-water mark then fills, then the
 * TCP buffers, then the publisher's send high-water mark, so the
 * publisher's send waits (or says "try again"). It never stops sending
 * replies, which arrive on three links (from the sequencer, the log store
 * and the publisher): those stages can therefore never wait on the ingest.
 * The same happens when the memory budget's credit for requests in flight
 * is used up (sb_credit): the socket is not read until freed requests
 * give their bytes back, while replies keep flowing.
 * While the log store says the disk refuses writes (`storage_full`), every
 * publish is answered ERR_STORAGE_FULL at once, and nothing else changes. */
#ifndef SB_INGEST_H
#define SB_INGEST_H

#include <stdatomic.h>
#include <stdint.h>

#include "sb_err.h"
#include "sb_link.h"
#include "sb_wire.h"

typedef struct {
    atomic_uint_fast64_t requests;      /* publish requests decoded */
    atomic_uint_fast64_t events_in;     /* events handed to the sequencer */
    atomic_uint_fast64_t events_refused;/* events answered with an error */
    atomic_uint_fast64_t bad_requests;  /* requests refused whole */
    atomic_uint_fast64_t bad_frames;    /* wrong frame counts */
    atomic_uint_fast64_t replies;       /* replies sent */
    atomic_uint_fast64_t replies_lost;  /* peer gone or not reading */
    atomic_uint_fast64_t hellos;
    atomic_uint_fast64_t parked;        /* times the sequencer link was full */
    atomic_uint_fast64_t refused_by[SB_WERR_COUNT];/* by sb_werr */
    sb_hist ack_latency[4]; /* request in -> reply out, by ack level */
} sb_ingest_stats;

typedef struct {
    void *zmq_ctx;
    const char *endpoint; /* bind address */
    int hwm;
    sb_limits limits;
    const char *broker_name;
    uint64_t epoch;
    sb_link *out;            /* → sequencer */
    sb_link *seq_replies;    /* sequencer → */
    sb_link *pub_replies;    /* publisher → */
    /* For hello replies: read-only views of other actors' counters. */
    atomic_uint_fast64_t *last_seq;
    atomic_uint_fast64_t *last_batch_id;
    sb_link *log_replies;    /* log store → (durable acks); NULL: none */
    atomic_int *storage_full;/* set by the log store; NULL: never */
    /* The broker's CURVE secret key (Z85); NULL: no CURVE. Read only
     * while the socket is set up, before sb_ingest_new returns. */
    const char *curve_secret;
    /* The memory budget's byte credit for requests in flight (NULL: no
     * bound but the links'). Every accepted request is charged its
     * allocation until freed; with the credit used up the socket is not
     * read, exactly as with a full link. */
    sb_credit *credit;
    /* ZeroMQ sizing from the budget (0: `hwm` and twice
     * limits.max_message_bytes): messages per publisher pipe each way,
     * and the largest frame accepted. */
    int rcvhwm;
    int sndhwm;
    int64_t maxmsgsize;
} sb_ingest_args;

typedef struct sb_ingest sb_ingest;

sb_err sb_ingest_new(sb_ingest **out, const sb_ingest_args *args);
/* The endpoint actually bound (with the port when "*" was asked). */
const char *sb_ingest_endpoint(const sb_ingest *in);
const sb_ingest_stats *sb_ingest_stats_get(const sb_ingest *in);
/* Stops intake (publishes are answered ERR_SHUTTING_DOWN), sends EOF down
 * the pipeline and returns once every reply link has delivered its EOF,
 * i.e. every accepted event was published and acked, or timeout_ms passed
 * (SB_ETIMEDOUT). */
sb_err sb_ingest_drain(sb_ingest *in, int timeout_ms);
void sb_ingest_destroy(sb_ingest **inp);

#endif
