/* CURVE on the client's sockets (sbc_curve.h). No state of its own: the
 * caller keeps an sbc_curve only for as long as it creates sockets. */
#include "sbc_curve.h"

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
