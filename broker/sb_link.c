#include "sb_link.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "sb_clock.h"

struct sb_link {
    pthread_mutex_t lock;
    char name[32];
    size_t item_size;
    size_t capacity;
    size_t head; /* next to read */
    size_t count;
    size_t high;
    uint64_t sent;
    uint64_t full;
    uint64_t wait_ns;
    uint64_t full_since_ns; /* 0 unless the producer holds a refused item */
    sb_hist wait_hist;      /* one observation per wait that ended */
    int hold;               /* sb_link_set_hold: recv sees nothing */
    int recv_fd;            /* eventfd: counter 1 while count > 0 */
    int send_fd;            /* eventfd: counter 1 while count < capacity */
    unsigned char *ring;
};

/* The eventfds mirror the queue's state exactly, and only change on the
 * empty/non-empty and full/non-full edges, so a busy link costs no system
 * call per item. Both edges are taken under the lock, so the fds can never
 * disagree with `count`. */
static void
s_fd_set(int fd)
{
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(fd, &one, sizeof one);
    while (n < 0 && errno == EINTR);
}

static void
s_fd_clear(int fd)
{
    uint64_t v;
    ssize_t n;
    do
        n = read(fd, &v, sizeof v);
    while (n < 0 && errno == EINTR);
}

sb_err
sb_link_new(sb_link **out, const char *name, size_t item_size, size_t capacity)
{
    sb_link *self;

    if (item_size == 0 || capacity == 0)
        return SB_EINVAL;
    if ((self = calloc(1, sizeof *self)) == NULL)
        return SB_ENOMEM;
    self->recv_fd = self->send_fd = -1;
    pthread_mutex_init(&self->lock, NULL);
    if ((self->ring = calloc(capacity, item_size)) == NULL)
        goto nomem;
    self->recv_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->send_fd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->recv_fd < 0 || self->send_fd < 0) {
        sb_link_destroy(&self);
        return SB_ESYS;
    }
    strncpy(self->name, name != NULL ? name : "link", sizeof self->name - 1);
    self->item_size = item_size;
    self->capacity = capacity;
    *out = self;
    return SB_OK;
nomem:
    sb_link_destroy(&self);
    return SB_ENOMEM;
}

void
sb_link_destroy(sb_link **linkp)
{
    sb_link *self = *linkp;

    if (self == NULL)
        return;
    if (self->recv_fd >= 0)
        close(self->recv_fd);
    if (self->send_fd >= 0)
        close(self->send_fd);
    pthread_mutex_destroy(&self->lock);
    free(self->ring);
    free(self);
    *linkp = NULL;
}

sb_err
sb_link_send(sb_link *self, const void *item)
{
    size_t tail;

    pthread_mutex_lock(&self->lock);
    if (self->count == self->capacity) {
        self->full++;
        if (self->full_since_ns == 0)
            self->full_since_ns = sb_clock_mono_ns();
        pthread_mutex_unlock(&self->lock);
        return SB_EAGAIN;
    }
    if (self->full_since_ns != 0) {
        uint64_t waited = sb_clock_mono_ns() - self->full_since_ns;
        self->wait_ns += waited;
        sb_hist_observe_ns(&self->wait_hist, waited);
        self->full_since_ns = 0;
    }
    tail = (self->head + self->count) % self->capacity;
    memcpy(self->ring + tail * self->item_size, item, self->item_size);
    if (self->count++ == 0 && !self->hold)
        s_fd_set(self->recv_fd);
    if (self->count == self->capacity)
        s_fd_clear(self->send_fd);
    if (self->count > self->high)
        self->high = self->count;
    self->sent++;
    pthread_mutex_unlock(&self->lock);
    return SB_OK;
}

sb_err
sb_link_recv(sb_link *self, void *item)
{
    pthread_mutex_lock(&self->lock);
    if (self->count == 0 || self->hold) {
        pthread_mutex_unlock(&self->lock);
        return SB_EAGAIN;
    }
    memcpy(item, self->ring + self->head * self->item_size, self->item_size);
    self->head = (self->head + 1) % self->capacity;
    if (self->count-- == self->capacity)
        s_fd_set(self->send_fd);
    if (self->count == 0)
        s_fd_clear(self->recv_fd);
    pthread_mutex_unlock(&self->lock);
    return SB_OK;
}

static sb_err
s_wait_fd(int fd, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    int rc;

    do
        rc = poll(&p, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return SB_ESYS;
    return rc == 0 ? SB_ETIMEDOUT : SB_OK;
}

sb_err
sb_link_send_wait(sb_link *self, const void *item, int timeout_ms)
{
    sb_err rc;

    while ((rc = sb_link_send(self, item)) == SB_EAGAIN)
        if ((rc = s_wait_fd(self->send_fd, timeout_ms)) != SB_OK)
            return rc == SB_ETIMEDOUT ? SB_EAGAIN : rc;
    return rc;
}

sb_err
sb_link_recv_wait(sb_link *self, void *item, int timeout_ms)
{
    sb_err rc;

    while ((rc = sb_link_recv(self, item)) == SB_EAGAIN)
        if ((rc = s_wait_fd(self->recv_fd, timeout_ms)) != SB_OK)
            return rc == SB_ETIMEDOUT ? SB_EAGAIN : rc;
    return rc;
}

void
sb_link_set_hold(sb_link *self, int on)
{
    pthread_mutex_lock(&self->lock);
    on = on != 0;
    /* recv_fd mirrors "an item is visible": flip it on the edges only. */
    if (on != self->hold && self->count > 0) {
        if (on)
            s_fd_clear(self->recv_fd);
        else
            s_fd_set(self->recv_fd);
    }
    self->hold = on;
    pthread_mutex_unlock(&self->lock);
}

const char *
sb_link_name(const sb_link *self)
{
    return self->name;
}

int
sb_link_recv_fd(const sb_link *self)
{
    return self->recv_fd;
}

int
sb_link_send_fd(const sb_link *self)
{
    return self->send_fd;
}

size_t
sb_link_depth(sb_link *self)
{
    size_t n;

    pthread_mutex_lock(&self->lock);
    n = self->count;
    pthread_mutex_unlock(&self->lock);
    return n;
}

void
sb_link_stats_get(sb_link *self, sb_link_stats *st)
{
    pthread_mutex_lock(&self->lock);
    st->name = self->name;
    st->depth = self->count;
    st->capacity = self->capacity;
    st->high = self->high;
    st->sent = self->sent;
    st->full = self->full;
    st->wait_ns = self->wait_ns;
    st->wait_hist = &self->wait_hist;
    if (self->full_since_ns != 0)
        st->wait_ns += sb_clock_mono_ns() - self->full_since_ns;
    pthread_mutex_unlock(&self->lock);
}

/* ---- byte credit ---------------------------------------------------------- */

struct sb_credit {
    uint64_t limit;
    _Atomic uint64_t used;
    _Atomic uint64_t high;
    _Atomic uint64_t waits;
    _Atomic uint64_t wait_ns;
    uint64_t waiting_since_ns; /* the waiter's own: 0 while it has room */
    int fd;                    /* eventfd: written when a give crosses */
};

sb_err
sb_credit_new(sb_credit **out, uint64_t limit)
{
    sb_credit *c;

    if (limit == 0)
        return SB_EINVAL;
    if ((c = calloc(1, sizeof *c)) == NULL)
        return SB_ENOMEM;
    if ((c->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        free(c);
        return SB_ESYS;
    }
    c->limit = limit;
    *out = c;
    return SB_OK;
}

void
sb_credit_destroy(sb_credit **cp)
{
    sb_credit *c = *cp;

    if (c == NULL)
        return;
    close(c->fd);
    free(c);
    *cp = NULL;
}

void
sb_credit_take(sb_credit *c, uint64_t bytes)
{
    uint64_t now = atomic_fetch_add(&c->used, bytes) + bytes;
    uint64_t high = atomic_load_explicit(&c->high, memory_order_relaxed);

    while (now > high && !atomic_compare_exchange_weak(&c->high, &high, now))
        ;
}

void
sb_credit_give(sb_credit *c, uint64_t bytes)
{
    uint64_t before = atomic_fetch_sub(&c->used, bytes);

    /* Only the step that brings the use under the limit wakes the waiter:
     * every way from "no room" to "room" passes through exactly such a
     * step, so a waiter that saw no room cannot miss its wake-up. */
    if (before >= c->limit && before - bytes < c->limit)
        s_fd_set(c->fd);
}

int
sb_credit_room(sb_credit *c)
{
    int room = atomic_load(&c->used) < c->limit;

    if (!room && c->waiting_since_ns == 0) {
        c->waiting_since_ns = sb_clock_mono_ns();
        atomic_fetch_add(&c->waits, 1);
    } else if (room && c->waiting_since_ns != 0) {
        atomic_fetch_add(&c->wait_ns, sb_clock_mono_ns() - c->waiting_since_ns);
        c->waiting_since_ns = 0;
    }
    return room;
}

int
sb_credit_fd(const sb_credit *c)
{
    return c->fd;
}

void
sb_credit_clear(sb_credit *c)
{
    s_fd_clear(c->fd);
}

uint64_t
sb_credit_used(sb_credit *c)
{
    return atomic_load(&c->used);
}

void
sb_credit_stats_get(sb_credit *c, sb_credit_stats *st)
{
    st->limit = c->limit;
    st->used = atomic_load(&c->used);
    st->high = atomic_load(&c->high);
    st->waits = atomic_load(&c->waits);
    st->wait_ns = atomic_load(&c->wait_ns);
}
