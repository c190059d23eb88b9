/* The ZAP handler actor (see sb_auth.h).
 *
 * Owns: the allowlists (one sb_keyset per role, replaced whole on reload),
 * the ZAP REP socket and one PAIR socket per role reading that socket's
 * monitor. All of it belongs to the handler thread once sb_auth_new has
 * returned; the lists are read in the caller's thread first only so that a
 * bad file stops the broker before it binds anything. Counters are atomics
 * read by the metrics thread. */
#include "sb_auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "sb_actor.h"
#include "sb_clock.h"
#include "sb_keys.h"
#include "sb_log.h"

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_MON_PREFIX "inproc://snapbus.auth.monitor."
#define S_LOG_PER_S 5 /* refusal lines a second at most, all roles */
#define S_CMD_RELOAD (SB_CMD_USER + 1)

static const char *const s_roles[SB_ROLE_COUNT] = {"publish", "subscribe",
                                                   "query"};

struct sb_auth {
    sb_actor *actor;
    void *ctx;
    char *paths[SB_ROLE_COUNT];
    sb_keyset *lists[SB_ROLE_COUNT];
    void *zap;
    void *mon[SB_ROLE_COUNT];
    sb_auth_limit limit;
    sb_auth_stats st;
};

const char *
sb_auth_role_name(sb_auth_role r)
{
    return (unsigned) r < SB_ROLE_COUNT ? s_roles[r] : "unknown";
}

int
sb_auth_limit_take(sb_auth_limit *l, uint64_t now_ms, unsigned per_s,
                   uint64_t *suppressed)
{
    uint64_t sec = now_ms / 1000;

    if (sec != l->second) {
        l->second = sec;
        l->lines = 0;
    }
    if (l->lines >= per_s) {
        l->suppressed++;
        return 0;
    }
    l->lines++;
    *suppressed = l->suppressed;
    l->suppressed = 0;
    return 1;
}

/* Every list, or none: a reload that fails half-way must not leave one
 * role on its new list and another on its old one. */
static sb_err
s_load_all(char *const *paths, sb_keyset **out, char *why, size_t n)
{
    sb_keyset *fresh[SB_ROLE_COUNT] = {NULL};
    sb_err rc = SB_OK;

    for (int i = 0; i < SB_ROLE_COUNT && rc == SB_OK; i++)
        if (paths[i] != NULL)
            rc = sb_keyset_load(&fresh[i], paths[i], why, n);
    if (rc != SB_OK) {
        for (int i = 0; i < SB_ROLE_COUNT; i++)
            sb_keyset_destroy(&fresh[i]);
        return rc;
    }
    for (int i = 0; i < SB_ROLE_COUNT; i++) {
        sb_keyset_destroy(&out[i]);
        out[i] = fresh[i];
    }
    return SB_OK;
}

static void
s_count_keys(sb_auth *a)
{
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        atomic_store(&a->st.keys[i], sb_keyset_count(a->lists[i]));
}

static int
s_admits(const sb_auth *a, int role, const uint8_t *key)
{
    if (sb_keyset_has(a->lists[role], key))
        return 1;
    /* A subscriber fills its gaps over the query socket with its own key. */
    return role == SB_ROLE_QUERY && sb_keyset_has(a->lists[SB_ROLE_SUBSCRIBE], key);
}

static void
s_log_refusal(sb_auth *a, int role, const char *what, const char *key_z85,
              const char *address, const char *detail)
{
    uint64_t suppressed;

    if (!sb_auth_limit_take(&a->limit, sb_clock_mono_ns() / 1000000,
                            S_LOG_PER_S, &suppressed))
        return;
    SB_LOG(SB_LOG_WARN, "auth.refused",
           "role=%s reason=%s key=%s address=%s detail=%s suppressed=%llu",
           s_roles[role], what, key_z85, address, detail,
           (unsigned long long) suppressed);
}

static int
s_role_of(zmq_msg_t *domain)
{
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        if (zmq_msg_size(domain) == strlen(s_roles[i]) &&
            memcmp(zmq_msg_data(domain), s_roles[i], strlen(s_roles[i])) == 0)
            return i;
    return -1;
}

/* Copies a frame as printable text (addresses come from the peer's
 * socket, but keep the log line one line whatever they hold). */
static void
s_text(zmq_msg_t *m, char *out, size_t n)
{
    size_t len = zmq_msg_size(m), i;
    const char *p = zmq_msg_data(m);

    for (i = 0; i < len && i + 1 < n; i++)
        out[i] = (p[i] > 32 && p[i] < 127 && p[i] != '"') ? p[i] : '?';
    out[i] = '\0';
}

/* One ZAP request (RFC 27): version, request id, domain, address,
 * identity, mechanism, credentials. The reply must always go out, or the
 * REP socket (and every later handshake) would be stuck. */
static void
s_zap(sb_auth *a)
{
    zmq_msg_t f[8];
    int nf = 0, more = 1;
    const char *status = "400", *text = "not allowed";
    char user[SB_KEY_Z85_LEN + 1] = "";

    while (more) {
        zmq_msg_t tmp, *m = nf < 8 ? &f[nf] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, a->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(m);
            if (nf == 0)
                return; /* nothing there after all */
            break;
        }
        more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        else
            nf++;
    }
    if (nf >= 6 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0) {
        int role = s_role_of(&f[2]);
        char addr[64];
        s_text(&f[3], addr, sizeof addr);
        if (role >= 0 && zmq_msg_size(&f[5]) == 5 &&
            memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0 && nf >= 7 &&
            zmq_msg_size(&f[6]) == SB_KEY_BYTES) {
            const uint8_t *key = zmq_msg_data(&f[6]);
            zmq_z85_encode(user, key, SB_KEY_BYTES);
            if (s_admits(a, role, key)) {
                status = "200";
                text = "OK";
                atomic_fetch_add(&a->st.admitted[role], 1);
                SB_LOG(SB_LOG_DEBUG, "auth.admitted", "role=%s key=%s address=%s",
                       s_roles[role], user, addr);
            } else {
                atomic_fetch_add(&a->st.refused_key[role], 1);
                s_log_refusal(a, role, "key", user, addr, "not_on_list");
                user[0] = '\0';
            }
        } else if (role >= 0) {
            /* Only CURVE sockets name a domain; anything else is refused. */
            atomic_fetch_add(&a->st.refused_key[role], 1);
            s_log_refusal(a, role, "mechanism", "-", addr, "not_curve");
        }
    }
    /* Reply: version, request id, status code, status text, user id,
     * metadata. The user id is the client's key: libzmq attaches it to
     * the peer's messages as "User-Id". */
    zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
    if (nf >= 2)
        zmq_send(a->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else
        zmq_send(a->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(a->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, 0);
    for (int i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
}

static const char *
s_protocol_error(uint32_t v)
{
    switch (v) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "mechanism_mismatch"; /* e.g. a client without CURVE */
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "cryptographic"; /* e.g. a wrong server key */
    case ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE:
        return "key_exchange";
    default:
        return (v & 0xf0000000u) == 0x10000000u ? "malformed" : "other";
    }
}

/* A monitor event: [uint16 event, uint32 value][endpoint]. The value of a
 * failed handshake is a protocol error code; the endpoint is our own. */
static void
s_monitor(sb_auth *a, int role)
{
    zmq_msg_t m;
    uint16_t ev = 0;
    uint32_t value = 0;
    int more;

    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, a->mon[role], ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return;
    }
    if (zmq_msg_size(&m) >= 6) {
        memcpy(&ev, zmq_msg_data(&m), 2);
        memcpy(&value, (uint8_t *) zmq_msg_data(&m) + 2, 4);
    }
    more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a->mon[role], 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
        ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
        atomic_fetch_add(&a->st.refused_handshake[role], 1);
        s_log_refusal(a, role, "handshake", "-", "-",
                      ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                          ? s_protocol_error(value) : "no_detail");
    }
}

static void
s_reload(sb_auth *a)
{
    char why[512];

    if (s_load_all(a->paths, a->lists, why, sizeof why) != SB_OK) {
        atomic_fetch_add(&a->st.reload_failures, 1);
        SB_LOG(SB_LOG_ERR, "auth.reload_failed", "why=\"%s\" kept=old_lists", why);
        return;
    }
    s_count_keys(a);
    atomic_fetch_add(&a->st.reloads, 1);
    SB_LOG(SB_LOG_NOTICE, "auth.reloaded", "publish=%zu subscribe=%zu query=%zu",
           sb_keyset_count(a->lists[0]), sb_keyset_count(a->lists[1]),
           sb_keyset_count(a->lists[2]));
}

static void
s_run(sb_actor *self, void *arg)
{
    sb_auth *a = arg;
    int linger = 0;

    if ((a->zap = zmq_socket(a->ctx, ZMQ_REP)) == NULL ||
        zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(a->zap, S_ZAP_ENDPOINT) != 0) {
        SB_LOG(SB_LOG_ERR, "auth.zap_bind", "endpoint=%s error=\"%s\"",
               S_ZAP_ENDPOINT, zmq_strerror(errno));
        if (a->zap != NULL)
            zmq_close(a->zap);
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    for (int i = 0; i < SB_ROLE_COUNT; i++) {
        char ep[64];
        snprintf(ep, sizeof ep, S_MON_PREFIX "%s", s_roles[i]);
        /* Connected before the monitored socket exists: inproc allows it,
         * and so no event of its first connections is missed. */
        if ((a->mon[i] = zmq_socket(a->ctx, ZMQ_PAIR)) != NULL) {
            zmq_setsockopt(a->mon[i], ZMQ_LINGER, &linger, sizeof linger);
            zmq_connect(a->mon[i], ep);
        }
    }
    sb_actor_ready(self, SB_OK);
    for (;;) {
        zmq_pollitem_t it[2 + SB_ROLE_COUNT] = {
            {NULL, sb_actor_cmd_fd(self), ZMQ_POLLIN, 0},
            {a->zap, 0, ZMQ_POLLIN, 0},
        };
        for (int i = 0; i < SB_ROLE_COUNT; i++)
            it[2 + i] = (zmq_pollitem_t){a->mon[i], 0, a->mon[i] ? ZMQ_POLLIN : 0, 0};
        /* While lines are held back, wake once a second to report them. */
        if (zmq_poll(it, 2 + SB_ROLE_COUNT, a->limit.suppressed ? 1000 : -1) < 0 &&
            errno != EINTR)
            break;
        if (it[0].revents & ZMQ_POLLIN) {
            int cmd;
            if (sb_actor_cmd_recv(self, &cmd) == SB_OK) {
                if (cmd == SB_CMD_STOP)
                    break;
                if (cmd == S_CMD_RELOAD)
                    s_reload(a);
            }
        }
        for (int k = 0; k < 64 && (it[1].revents & ZMQ_POLLIN); k++) {
            zmq_pollitem_t z = {a->zap, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&z, 1, 0) <= 0)
                break;
            s_zap(a);
        }
        for (int i = 0; i < SB_ROLE_COUNT; i++)
            if (it[2 + i].revents & ZMQ_POLLIN)
                s_monitor(a, i);
        uint64_t now = sb_clock_mono_ns() / 1000000;
        if (a->limit.suppressed && now / 1000 != a->limit.second) {
            uint64_t k;
            if (sb_auth_limit_take(&a->limit, now, S_LOG_PER_S, &k))
                SB_LOG(SB_LOG_WARN, "auth.refused_suppressed", "suppressed=%llu",
                       (unsigned long long) k);
        }
    }
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        if (a->mon[i] != NULL)
            zmq_close(a->mon[i]);
    zmq_close(a->zap);
}

sb_err
sb_auth_new(sb_auth **out, const sb_auth_args *args, char *why, size_t n)
{
    sb_auth *a = calloc(1, sizeof *a);
    sb_err rc = SB_ENOMEM;

    if (a == NULL)
        return SB_ENOMEM;
    a->ctx = args->zmq_ctx;
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        if (args->lists[i] != NULL && args->lists[i][0] != '\0' &&
            (a->paths[i] = strdup(args->lists[i])) == NULL)
            goto fail;
    if ((rc = s_load_all(a->paths, a->lists, why, n)) != SB_OK)
        goto fail;
    s_count_keys(a);
    if ((rc = sb_actor_new(&a->actor, "auth", s_run, a)) != SB_OK) {
        snprintf(why, n, "cannot serve ZAP on %s", S_ZAP_ENDPOINT);
        goto fail;
    }
    *out = a;
    return SB_OK;
fail:
    sb_auth_destroy(&a);
    return rc;
}

sb_err
sb_auth_reload(sb_auth *a)
{
    return sb_actor_send(a->actor, S_CMD_RELOAD);
}

const sb_auth_stats *
sb_auth_stats_get(const sb_auth *a)
{
    return &a->st;
}

void
sb_auth_destroy(sb_auth **ap)
{
    sb_auth *a = *ap;

    if (a == NULL)
        return;
    sb_actor_destroy(&a->actor);
    for (int i = 0; i < SB_ROLE_COUNT; i++) {
        sb_keyset_destroy(&a->lists[i]);
        free(a->paths[i]);
    }
    free(a);
    *ap = NULL;
}

sb_err
sb_auth_server_socket(void *sock, const char *secret_z85, sb_auth_role r)
{
    int one = 1;
    char ep[64];

    if ((unsigned) r >= SB_ROLE_COUNT || secret_z85 == NULL ||
        strlen(secret_z85) != SB_KEY_Z85_LEN)
        return SB_EINVAL;
    snprintf(ep, sizeof ep, S_MON_PREFIX "%s", s_roles[r]);
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_z85,
                       SB_KEY_Z85_LEN + 1) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, s_roles[r], strlen(s_roles[r])) != 0 ||
        zmq_socket_monitor(sock, ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0) {
        SB_LOG(SB_LOG_ERR, "auth.curve_socket", "role=%s error=\"%s\"",
               s_roles[r], zmq_strerror(errno));
        return SB_ESYS;
    }
    return SB_OK;
}
