/* CURVE on the client's sockets (sbc_curve.h). No state of its own: the
 * caller keeps an sbc_curve only for as long as it creates sockets. */
#include "sbc_curve.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "sb_keys.h"

static sb_err
s_copy(char *dst, const char *z85)
{
    uint8_t raw[SB_KEY_BYTES];

    if (z85 == NULL || strlen(z85) != SB_KEY_Z85_LEN ||
        sb_key_decode(z85, SB_KEY_Z85_LEN, raw) != SB_OK)
        return SB_EINVAL;
    memcpy(dst, z85, SB_KEY_Z85_LEN + 1);
    return SB_OK;
}

sb_err
sbc_curve_set(sbc_curve *c, const sb_curve_opts *o)
{
    memset(c, 0, sizeof *c);
    if (o == NULL || (o->server_key == NULL && o->public_key == NULL &&
                      o->secret_key == NULL))
        return SB_OK;
    if (s_copy(c->server, o->server_key) != SB_OK ||
        s_copy(c->sec, o->secret_key) != SB_OK)
        goto bad;
    if (o->public_key != NULL) {
        if (s_copy(c->pub, o->public_key) != SB_OK)
            goto bad;
    } else if (zmq_curve_public(c->pub, c->sec) != 0) {
        goto bad;
    }
    c->on = 1;
    return SB_OK;
bad:
    sbc_curve_wipe(c);
    return SB_EINVAL;
}

sb_err
sbc_curve_apply(void *sock, const sbc_curve *c)
{
    if (!c->on)
        return SB_OK;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, c->server, sizeof c->server) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, c->pub, sizeof c->pub) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->sec, sizeof c->sec) != 0)
        return SB_ESYS;
    return SB_OK;
}

void
sbc_curve_wipe(sbc_curve *c)
{
    explicit_bzero(c, sizeof *c);
}

int
sbc_curve_refusal_event(unsigned ev, unsigned value)
{
    /* The broker's ZAP handler said no; the value is its status code
     * (400). Only a CURVE socket watches, so a mechanism mismatch there
     * means a broker without CURVE: a wrong endpoint, not a refusal. */
    (void) value;
    return ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
}

sb_err
sbc_curve_watch_start(sbc_curve_watch *w, void *zctx, void *sock,
                      const sbc_curve *c)
{
    char addr[64];
    int linger = 0;

    memset(w, 0, sizeof *w);
    if (c == NULL || !c->on)
        return SB_OK;
    snprintf(addr, sizeof addr, "inproc://sbc-curve-watch-%p", sock);
    if (zmq_socket_monitor(sock, addr, SBC_CURVE_REFUSAL_EVENTS) != 0)
        return SB_ESYS;
    if ((w->mon = zmq_socket(zctx, ZMQ_PAIR)) == NULL ||
        zmq_setsockopt(w->mon, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(w->mon, addr) != 0) {
        sbc_curve_watch_stop(w, sock);
        return SB_ESYS;
    }
    return SB_OK;
}

int
sbc_curve_refused(sbc_curve_watch *w)
{
    zmq_msg_t m;

    while (w->mon != NULL && !w->refused) {
        uint16_t ev = 0;
        uint32_t value = 0;
        int more;

        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, w->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        if (zmq_msg_size(&m) >= 6) {
            memcpy(&ev, zmq_msg_data(&m), 2);
            memcpy(&value, (uint8_t *) zmq_msg_data(&m) + 2, 4);
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, w->mon, ZMQ_DONTWAIT) >= 0 &&
                   zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        w->refused = sbc_curve_refusal_event(ev, value);
    }
    return w->refused;
}

void
sbc_curve_watch_stop(sbc_curve_watch *w, void *sock)
{
    if (w->mon == NULL)
        return;
    /* The monitor first: libzmq's I/O thread sends events blocking, under
     * the lock zmq_socket_monitor takes; without a reader it would wait
     * for ever. */
    if (sock != NULL)
        zmq_socket_monitor(sock, NULL, 0);
    zmq_close(w->mon);
    w->mon = NULL;
}
