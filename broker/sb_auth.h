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
 * socket), see docs/SECURITY.md. */
#ifndef SB_AUTH_H
#define SB_AUTH_H

#include <stdatomic.h>
#include <stdint.h>

#include "sb_err.h"

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
} sb_auth_stats;

typedef struct {
    void *zmq_ctx;
    /* Allowlist files per role; NULL or "": that list is empty. */
    const char *lists[SB_ROLE_COUNT];
} sb_auth_args;

typedef struct sb_auth sb_auth;

/* Reads every list in the calling thread (a bad one: SB_EINVAL, or SB_ESYS
 * when unreadable, with "file:line: what" in why), then starts the handler
 * thread and binds the ZAP endpoint. Call before any CURVE socket is bound:
 * libzmq admits every CURVE client while no ZAP handler is bound. */
sb_err sb_auth_new(sb_auth **out, const sb_auth_args *a, char *why, size_t n);
/* Asks the handler to re-read the lists. Returns at once; the outcome is
 * logged (auth.reloaded or auth.reload_failed) and counted. Any thread. */
sb_err sb_auth_reload(sb_auth *a);
const sb_auth_stats *sb_auth_stats_get(const sb_auth *a);
/* Stops the handler. After every CURVE socket is closed. */
void sb_auth_destroy(sb_auth **ap);

/* Makes sock a CURVE server of role r with the broker's secret key (Z85),
 * monitored for failed handshakes. From the socket's own thread, before
 * bind. SB_ESYS when libzmq refuses (no CURVE in this libzmq). */
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
