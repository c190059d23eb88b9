/* CURVE client settings of libsnapbus's sockets: the keys from
 * sb_curve_opts, checked and copied, and applied to a socket before it
 * connects. Library-internal (sbc_). */
#ifndef SBC_CURVE_H
#define SBC_CURVE_H

#include <snapbus/snapbus.h>
#include <zmq.h>

typedef struct {
    int on;
    char server[41]; /* Z85, NUL-terminated */
    char pub[41];
    char sec[41];
} sbc_curve;

/* Checks and copies o (NULL or all-NULL: off). SB_EINVAL: a key is not 40
 * Z85 characters, or server_key comes without secret_key or the other
 * way round. */
sb_err sbc_curve_set(sbc_curve *c, const sb_curve_opts *o);
/* Before zmq_connect. SB_ESYS when libzmq refuses (no CURVE built in). */
sb_err sbc_curve_apply(void *sock, const sbc_curve *c);
/* Forgets the secret. */
void sbc_curve_wipe(sbc_curve *c);

/* The broker refusing this client (docs/SECURITY.md): it answers a key on
 * no list of the socket's role with a CURVE ERROR, and libzmq then gives
 * up on the connection for good. That surfaces only on the socket's
 * monitor, so without one the caller would see nothing but a timeout. (A
 * wrong server key is not told apart: the broker just drops the
 * connection, and the client keeps trying.) */

/* The events that matter, for a socket that has a monitor already (a
 * socket has at most one): add them to its zmq_socket_monitor mask. */
#define SBC_CURVE_REFUSAL_EVENTS ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
/* 1 when a monitor event (event number, value) is such a refusal. */
int sbc_curve_refusal_event(unsigned ev, unsigned value);

/* A monitor of one socket, read only for refusals. */
typedef struct {
    void *mon; /* NULL: not watching */
    int refused;
} sbc_curve_watch;

/* Before zmq_connect; only when c is on (else w stays off). SB_ESYS when
 * libzmq refuses. */
sb_err sbc_curve_watch_start(sbc_curve_watch *w, void *zctx, void *sock,
                             const sbc_curve *c);
/* 1 once the broker refused this client; reads what the monitor holds,
 * never waits. Poll w->mon beside the socket to be woken by a refusal. */
int sbc_curve_refused(sbc_curve_watch *w);
/* Before the socket is closed. */
void sbc_curve_watch_stop(sbc_curve_watch *w, void *sock);

#endif
