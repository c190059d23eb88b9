#define _GNU_SOURCE /* pthread_setname_np */
#include "sb_actor.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_link.h"
#include "sb_log.h"

struct sb_actor {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ready;     /* sb_actor_ready was called */
    int finished;  /* the thread function returned */
    int joined;
    sb_err rc;
    sb_link *cmd;
    sb_actor_fn fn;
    void *args;
    char name[32];
};

static void *
s_thread_shim(void *arg)
{
    sb_actor *self = arg;
    char tname[16];

    /* Named threads let `top -H`, perf and gdb tell the actors apart. */
    snprintf(tname, sizeof tname, "sb-%.12s", self->name);
    (void)pthread_setname_np(pthread_self(), tname);
    self->fn(self, self->args);
    pthread_mutex_lock(&self->lock);
    if (!self->ready) { /* returned without saying: count it as a failure */
        self->ready = 1;
        self->rc = SB_ESYS;
    }
    self->finished = 1;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

sb_err
sb_actor_new(sb_actor **out, const char *name, sb_actor_fn fn, void *args)
{
    sb_actor *self = calloc(1, sizeof *self);
    sb_err rc;

    if (self == NULL)
        return SB_ENOMEM;
    if ((rc = sb_link_new(&self->cmd, name, sizeof(int), 8)) != SB_OK) {
        free(self);
        return rc;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);
    strncpy(self->name, name, sizeof self->name - 1);
    self->fn = fn;
    self->args = args;
    if (pthread_create(&self->thread, NULL, s_thread_shim, self) != 0) {
        sb_link_destroy(&self->cmd);
        free(self);
        return SB_ESYS;
    }
    pthread_mutex_lock(&self->lock);
    while (!self->ready)
        pthread_cond_wait(&self->cond, &self->lock);
    rc = self->rc;
    pthread_mutex_unlock(&self->lock);
    if (rc != SB_OK) {
        sb_actor_destroy(&self);
        return rc;
    }
    *out = self;
    return SB_OK;
}

void
sb_actor_destroy(sb_actor **actorp)
{
    sb_actor *self = *actorp;
    int stop = SB_CMD_STOP;

    if (self == NULL)
        return;
    if (!self->joined) {
        /* The command link is private to us; if it is full the actor is not
         * reading it and has finished or will read it soon. */
        pthread_mutex_lock(&self->lock);
        int finished = self->finished;
        pthread_mutex_unlock(&self->lock);
        if (!finished)
            sb_link_send_wait(self->cmd, &stop, -1);
        pthread_join(self->thread, NULL);
    }
    sb_link_destroy(&self->cmd);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *actorp = NULL;
}

void
sb_actor_ready(sb_actor *self, sb_err rc)
{
    pthread_mutex_lock(&self->lock);
    self->ready = 1;
    self->rc = rc;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
}

int
sb_actor_cmd_fd(const sb_actor *self)
{
    return sb_link_recv_fd(self->cmd);
}

sb_err
sb_actor_cmd_recv(sb_actor *self, int *cmd)
{
    return sb_link_recv(self->cmd, cmd);
}

sb_err
sb_actor_send(sb_actor *self, int cmd)
{
    return sb_link_send_wait(self->cmd, &cmd, -1);
}

sb_err
sb_actor_wait(sb_actor *self, int timeout_ms)
{
    struct timespec ts;
    int rc = 0;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (timeout_ms >= 0) {
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&self->lock);
    while (!self->finished && rc != ETIMEDOUT)
        rc = timeout_ms < 0 ? pthread_cond_wait(&self->cond, &self->lock)
                            : pthread_cond_timedwait(&self->cond, &self->lock, &ts);
    int finished = self->finished;
    pthread_mutex_unlock(&self->lock);
    if (!finished)
        return SB_ETIMEDOUT;
    if (!self->joined) {
        pthread_join(self->thread, NULL);
        self->joined = 1;
    }
    return SB_OK;
}

const char *
sb_actor_name(const sb_actor *self)
{
    return self->name;
}
