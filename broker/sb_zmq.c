#include "sb_zmq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "sb_log.h"

void
sb_zmq_free(void *data, void *hint)
{
    (void) hint;
    free(data);
}

sb_err
sb_zmq_bind(void *sock, const char *endpoint, char *buf, size_t n)
{
    size_t len = n;
    char local[300];

    /* libzmq reads the host of a bind as an interface name or a numeric
     * address, so "localhost" fails with "No such device"; it means the
     * IPv4 loopback, as the loopback check of the configuration takes it. */
    if (strncmp(endpoint, "tcp://localhost:", 16) == 0 &&
        (size_t) snprintf(local, sizeof local, "tcp://127.0.0.1:%s",
                          endpoint + 16) < sizeof local) {
        SB_LOG(SB_LOG_INFO, "zmq.bind_localhost", "endpoint=%s bind=%s",
               endpoint, local);
        endpoint = local;
    }
    if (zmq_bind(sock, endpoint) != 0) {
        SB_LOG(SB_LOG_ERR, "zmq.bind_failed", "endpoint=%s error=\"%s\"",
               endpoint, zmq_strerror(errno));
        return SB_ESYS;
    }
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &len) != 0)
        snprintf(buf, n, "%s", endpoint);
    return SB_OK;
}

sb_err
sb_zmq_route_reply(void *router, const uint8_t *peer, size_t peer_len,
                   int delimiter, uint8_t *body, size_t len, int more)
{
    zmq_msg_t m;

    if (zmq_send(router, peer, peer_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        free(body);
        return SB_EAGAIN;
    }
    /* After the routing frame the message is committed to one pipe, so the
     * remaining frames cannot be refused. */
    if (delimiter)
        zmq_send(router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (zmq_msg_init_data(&m, body, len, sb_zmq_free, NULL) != 0) {
        free(body);
        zmq_send(router, "", 0, ZMQ_DONTWAIT);
        return SB_ENOMEM;
    }
    if (zmq_msg_send(&m, router, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0) {
        zmq_msg_close(&m);
        return SB_EAGAIN;
    }
    return SB_OK;
}

static int
s_more(void *sock)
{
    int more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    return more;
}

sb_err
sb_zmq_route_recv(void *router, sb_zmq_env *env, void *body_msg)
{
    zmq_msg_t *body = body_msg;
    zmq_msg_t f;
    int n;

    zmq_msg_init(&f);
    if ((n = zmq_msg_recv(&f, router, ZMQ_DONTWAIT)) < 0) {
        zmq_msg_close(&f);
        return SB_EAGAIN;
    }
    env->peer_len = zmq_msg_size(&f) > sizeof env->peer ? sizeof env->peer
                                                        : zmq_msg_size(&f);
    memcpy(env->peer, zmq_msg_data(&f), env->peer_len);
    env->delimiter = 0;
    env->frames = 0;
    zmq_msg_close(&f);
    zmq_msg_init(body);
    while (s_more(router)) {
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, router, 0) < 0) {
            zmq_msg_close(&f);
            break;
        }
        if (env->frames == 0 && !env->delimiter && zmq_msg_size(&f) == 0 &&
            s_more(router)) {
            env->delimiter = 1; /* a REQ peer's envelope */
            zmq_msg_close(&f);
            continue;
        }
        if (env->frames++ == 0) {
            zmq_msg_move(body, &f);
        }
        zmq_msg_close(&f);
    }
    return SB_OK;
}
