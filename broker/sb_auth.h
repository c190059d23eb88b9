/* Auth: CURVE on the broker's sockets and the ZAP handler that decides
 * which client keys get in (docs/SECURITY.md).
 *
 * Every broker socket is a CURVE server with the broker's secret key and
 * a ZAP domain naming its role. libzmq's I/O threads ask the ZAP handler
 * (a REP socket on inproc://zeromq.zap.01, served by this actor's own
 * thread) about each new connection, with the client's public key; the
 * handler answers from the allowlist of that role. The publish path never
 * waits on it: a handshake is asynchronous in libzmq, and the ingest only
 * sees peers that were admitted.
 *
 * Roles and lists: `publish` (ingest) admits the publishers' list,
 * `subscribe` (PUB) the subscribers' list, `query` (fetch) the queries'
 * list and the subscribers' list too, since a subscriber fills its gaps
 * over the query socket with the same key.
 *
 * Connections that fail before ZAP is asked (no key, a wrong server key:
 * the handshake itself fails) are seen through a socket monitor on each
 * CURVE socket, read by the same thread. Both kinds are counted per role
 * and logged with the client's public key where known (never a secret),
 * at most 5 lines a second with a count of what was not logged.
 *
 * Reload (SIGHUP): the actor re-reads every list; if any is bad, it keeps
 * all the old ones and logs why. A new list applies to new connections;
 * established ones are kept (libzmq cannot close one peer of a bound
 * socket), see docs/SECURITY.md.
 *
 * The connection guard, with or without CURVE: the same thread reads the
 * monitor of every broker socket (accepted, disconnected, handshake
 * succeeded or failed) and bounds what peers that have not finished the
 * handshake can hold (docs/SECURITY.md, "Before authentication"):
 *  - every socket has a handshake interval (ZMQ_HANDSHAKE_IVL): a peer
 *    that has not finished by then is dropped by libzmq;
 *  - at most max_handshakes connections may be in their handshake at
 *    once: one accepted beyond that is shut down at once;
 *  - a connection accepted on a descriptor within fd_headroom of the
 *    RLIMIT_NOFILE limit is shut down too, so the log always finds a
 *    descriptor (sb_os.c keeps a few spare ones behind this);
 *  - after peers drop out of their handshake, malloc_trim hands the
 *    memory their half-received frames took back to the kernel.
 * Every refusal is counted by role and reason, and logged (rate-limited).
 *
 * Which connection a "handshake succeeded" event belongs to, libzmq does
 * not say (its value is 0); accepts and disconnects carry the descriptor,
 * and a failure is always reported right before its disconnect. So the
 * count of connections in their handshake is exact, while which of them
 * is marked done after a success is a guess (the newest), corrected once
 * the handshake interval has passed: by then every connection still open
 * has finished its handshake. */
#ifndef SB_AUTH_H
#define SB_AUTH_H

#include <stdatomic.h>
#include <stdint.h>

#include "sb_err.h"

/* Why a connection was refused or dropped before it was authenticated:
 * the `reason` label of snapbus_conn_refused_total (sb_auth_reason_name). */
typedef enum {
    SB_CONN_KEY = 0,            /* ZAP: the key is on no list of the role */
    SB_CONN_MECHANISM,          /* ZAP: not CURVE */
    SB_CONN_MECHANISM_MISMATCH, /* no CURVE on the client (e.g. plaintext) */
    SB_CONN_CRYPTOGRAPHIC,      /* e.g. a wrong server key */
    SB_CONN_KEY_EXCHANGE,
    SB_CONN_MALFORMED,          /* a malformed handshake command */
    SB_CONN_PROTOCOL,           /* another ZMTP protocol error */
    SB_CONN_TIMEOUT,            /* no handshake within handshake_ms */
    SB_CONN_CLOSED,             /* the peer went away during the handshake */
    SB_CONN_DROPPED,            /* dropped by libzmq without detail: ZMTP
                                 * 1.0/2.0 or junk greeting, a frame over
                                 * ZMQ_MAXMSGSIZE */
    SB_CONN_HANDSHAKE_CAP,      /* max_handshakes were in progress */
    SB_CONN_FD_HEADROOM,        /* too few descriptors left */
    SB_CONN_NREASONS
} sb_conn_reason;

const char *sb_auth_reason_name(sb_conn_reason r);

typedef enum {
    SB_ROLE_PUBLISH = 0,
    SB_ROLE_SUBSCRIBE = 1,
    SB_ROLE_QUERY = 2,
    SB_ROLE_COUNT = 3
} sb_auth_role;

/* "publish", "subscribe", "query": ZAP domain, metric label, log value. */
const char *sb_auth_role_name(sb_auth_role r);

typedef struct {
    atomic_uint_fast64_t admitted[SB_ROLE_COUNT];
    /* ZAP said no: the key is on no list this role admits. */
    atomic_uint_fast64_t refused_key[SB_ROLE_COUNT];
    /* The CURVE handshake failed: no key (plain client), a wrong server
     * key, a malformed handshake. */
    atomic_uint_fast64_t refused_handshake[SB_ROLE_COUNT];
    atomic_uint_fast64_t keys[SB_ROLE_COUNT]; /* list sizes now */
    atomic_uint_fast64_t reloads;             /* applied */
    atomic_uint_fast64_t reload_failures;     /* old lists kept */
    /* The connection guard (any mechanism). */
    int curve;                                /* 1: the auth_* figures apply */
    atomic_uint_fast64_t accepted[SB_ROLE_COUNT];
    atomic_uint_fast64_t accept_failed[SB_ROLE_COUNT]; /* EMFILE and co. */
    atomic_uint_fast64_t refused[SB_ROLE_COUNT][SB_CONN_NREASONS];
    atomic_uint_fast64_t handshaking;         /* connections in handshake now */
    atomic_uint_fast64_t open;                /* connections open now */
    atomic_uint_fast64_t trims;               /* malloc_trim calls */
    uint32_t max_handshakes;
    uint32_t handshake_ms;
    uint32_t fd_headroom;
} sb_auth_stats;

typedef struct {
    void *zmq_ctx;
    /* Allowlist files per role; NULL or "": that list is empty. */
    const char *lists[SB_ROLE_COUNT];
    int curve;               /* 0: no ZAP handler, the guard only */
    uint32_t handshake_ms;   /* ZMQ_HANDSHAKE_IVL of every socket */
    uint32_t max_handshakes; /* connections in their handshake at most */
    uint32_t fd_headroom;    /* descriptors kept free of connections */
} sb_auth_args;

typedef struct sb_auth sb_auth;

/* Reads every list in the calling thread (a bad one: SB_EINVAL, or SB_ESYS
 * when unreadable, with "file:line: what" in why), then starts the handler
 * thread and binds the ZAP endpoint (with a->curve). Call before any broker
 * socket is made: libzmq admits every CURVE client while no ZAP handler is
 * bound, and sb_auth_server_socket reads the guard's settings from here.
 * One per process. */
sb_err sb_auth_new(sb_auth **out, const sb_auth_args *a, char *why, size_t n);
/* Asks the handler to re-read the lists. Returns at once; the outcome is
 * logged (auth.reloaded or auth.reload_failed) and counted. Any thread. */
sb_err sb_auth_reload(sb_auth *a);
const sb_auth_stats *sb_auth_stats_get(const sb_auth *a);
/* Stops the handler. After every CURVE socket is closed. */
void sb_auth_destroy(sb_auth **ap);

/* Sets the handshake interval of sock and has the guard watch it, as the
 * socket of role r; with secret_z85 (the broker's secret key, Z85) also
 * makes it a CURVE server. From the socket's own thread, before bind.
 * Without a running sb_auth (unit tests) and without a key: does nothing.
 * SB_ESYS when libzmq refuses (no CURVE in this libzmq). */
sb_err sb_auth_server_socket(void *sock, const char *secret_z85,
                             sb_auth_role r);

/* Log rate limit, a core function for tests: 1 when a line may be written
 * now (at most per_s lines in each second of now_ms); *suppressed then
 * receives how many were refused since the previous line written. */
typedef struct {
    uint64_t second;
    unsigned lines;
    uint64_t suppressed;
} sb_auth_limit;

int sb_auth_limit_take(sb_auth_limit *l, uint64_t now_ms, unsigned per_s,
                       uint64_t *suppressed);

#endif
