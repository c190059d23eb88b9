/* Small ZeroMQ helpers shared by the actors that own sockets. */
#ifndef SB_ZMQ_H
#define SB_ZMQ_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"

/* zmq_msg free callback for malloc'd buffers. */
void sb_zmq_free(void *data, void *hint);

/* Binds, and writes the bound endpoint (resolved port) to buf. */
sb_err sb_zmq_bind(void *sock, const char *endpoint, char *buf, size_t n);

/* Sends a reply to a ROUTER peer: routing id, optional empty delimiter,
 * then `body` (taken: freed whatever happens). Never waits. SB_EAGAIN: the
 * peer is not reading or gone; the reply is lost and the caller counts it. */
sb_err sb_zmq_route_reply(void *router, const uint8_t *peer, size_t peer_len,
                          int delimiter, uint8_t *body, size_t len, int more);

/* Reads one whole multipart message from a ROUTER: routing id, an optional
 * empty delimiter, and the body frame. *frames counts body frames (1 is the
 * only valid count); on anything else the rest is read and dropped.
 * SB_EAGAIN: nothing to read. The caller closes *body. */
typedef struct {
    uint8_t peer[255];
    size_t peer_len;
    int delimiter;
    int frames;
} sb_zmq_env;

sb_err sb_zmq_route_recv(void *router, sb_zmq_env *env, void *body_msg);

#endif
