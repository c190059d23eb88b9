/* Thin wrappers over open/pwrite/fdatasync/rename/unlink for the on-disk
 * log (see sb_os.h for the error mapping and the test hooks).
 *
 * Owns no state but the fault hook (process-wide, set by tests before any
 * writer runs) and a thread-local copy of the last errno. Any thread. */
#define _GNU_SOURCE /* fallocate */
#include "sb_os.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static _Thread_local int s_errno;

static sb_os_fault_fn s_fault;
static void *s_fault_ctx;

/* The environment hook, read once. */
static pthread_once_t s_env_once = PTHREAD_ONCE_INIT;
static char s_env_flag[512];

static void
s_env_init(void)
{
    const char *p = getenv("SBTEST_ENOSPC_FILE");

    if (p != NULL && *p != '\0' && strlen(p) < sizeof s_env_flag)
        strcpy(s_env_flag, p);
}

/* 0, or the errno an injected fault asks for. */
static int
s_injected(sb_os_op op, size_t *len)
{
    pthread_once(&s_env_once, s_env_init);
    if (s_fault != NULL) {
        int e = s_fault(op, len, s_fault_ctx);
        if (e != 0)
            return e;
    }
    if (s_env_flag[0] != '\0' &&
        (op == SB_OS_OP_CREATE || op == SB_OS_OP_RESERVE) &&
        access(s_env_flag, F_OK) == 0)
        return ENOSPC;
    return 0;
}

void
sb_os_set_fault(sb_os_fault_fn fn, void *ctx)
{
    s_fault = fn;
    s_fault_ctx = ctx;
}

int
sb_os_errno(void)
{
    return s_errno;
}

sb_err
sb_os_err_of(int errnum)
{
    switch (errnum) {
    case 0:
        return SB_OK;
    case ENOSPC:
    case EDQUOT:
    case EIO:
    case EROFS:
    case EFBIG:
        return SB_ESTORAGE;
    case ENOENT:
        return SB_ENOENT;
    case ENOMEM:
        return SB_ENOMEM;
    default:
        return SB_ESYS;
    }
}

static sb_err
s_fail(int errnum)
{
    s_errno = errnum;
    return sb_os_err_of(errnum);
}

static sb_err
s_open(int *fd, const char *path, int flags, mode_t mode)
{
    int f;

    do
        f = open(path, flags | O_CLOEXEC, mode);
    while (f < 0 && errno == EINTR);
    if (f < 0)
        return s_fail(errno);
    *fd = f;
    return SB_OK;
}

sb_err
sb_os_open_read(int *fd, const char *path)
{
    return s_open(fd, path, O_RDONLY, 0);
}

sb_err
sb_os_open_write(int *fd, const char *path)
{
    return s_open(fd, path, O_WRONLY, 0);
}

sb_err
sb_os_create(int *fd, const char *path)
{
    int e = s_injected(SB_OS_OP_CREATE, NULL);

    if (e != 0)
        return s_fail(e);
    return s_open(fd, path, O_WRONLY | O_CREAT | O_EXCL, 0644);
}

void
sb_os_close(int *fd)
{
    if (*fd >= 0) {
        /* Linux releases the descriptor even when close reports an error,
         * so retrying on EINTR could close someone else's. */
        close(*fd);
        *fd = -1;
    }
}

sb_err
sb_os_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    size_t allowed = len;
    int e = s_injected(SB_OS_OP_WRITE, &allowed);

    if (e != 0 && allowed > len)
        allowed = len;
    if (e == 0)
        allowed = len;
    while (allowed > 0) {
        ssize_t n = pwrite(fd, p, allowed, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return s_fail(errno);
        }
        if (n == 0)
            return s_fail(EIO); /* a regular file never writes 0 bytes */
        p += n;
        off += (uint64_t)n;
        allowed -= (size_t)n;
    }
    return e != 0 ? s_fail(e) : SB_OK;
}

sb_err
sb_os_pread_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    uint8_t *p = buf;
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *got = done;
            return s_fail(errno);
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    *got = done;
    return SB_OK;
}

sb_err
sb_os_fdatasync(int fd)
{
    int e = s_injected(SB_OS_OP_SYNC, NULL);

    if (e != 0)
        return s_fail(e);
    /* No retry on EINTR-like failures: after a failed fsync the kernel may
     * have dropped the dirty pages, so the caller must rewrite, not just
     * sync again (sb_store_writer.c does). */
    if (fdatasync(fd) != 0)
        return s_fail(errno);
    return SB_OK;
}

sb_err
sb_os_ftruncate(int fd, uint64_t len)
{
    int rc;

    do
        rc = ftruncate(fd, (off_t)len);
    while (rc != 0 && errno == EINTR);
    return rc != 0 ? s_fail(errno) : SB_OK;
}

sb_err
sb_os_preallocate(int fd, uint64_t len)
{
    int e = s_injected(SB_OS_OP_RESERVE, NULL), rc;

    if (e != 0)
        return s_fail(e);
    do
        rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)len);
    while (rc != 0 && errno == EINTR);
    if (rc == 0)
        return SB_OK;
    if (errno == EOPNOTSUPP || errno == ENOSYS) {
        s_errno = errno;
        return SB_ENOTSUP;
    }
    return s_fail(errno);
}

sb_err
sb_os_rename(const char *from, const char *to)
{
    return rename(from, to) != 0 ? s_fail(errno) : SB_OK;
}

static uint64_t
s_mtime_ms(const struct stat *st)
{
    return (uint64_t)st->st_mtim.tv_sec * 1000u +
           (uint64_t)st->st_mtim.tv_nsec / 1000000u;
}

sb_err
sb_os_fstat(int fd, uint64_t *size, uint64_t *mtime_ms)
{
    struct stat st;

    if (fstat(fd, &st) != 0)
        return s_fail(errno);
    if (size != NULL)
        *size = (uint64_t)st.st_size;
    if (mtime_ms != NULL)
        *mtime_ms = s_mtime_ms(&st);
    return SB_OK;
}

sb_err
sb_os_stat(const char *path, uint64_t *size, uint64_t *mtime_ms)
{
    struct stat st;

    if (stat(path, &st) != 0)
        return s_fail(errno);
    if (size != NULL)
        *size = (uint64_t)st.st_size;
    if (mtime_ms != NULL)
        *mtime_ms = s_mtime_ms(&st);
    return SB_OK;
}

sb_err
sb_os_sync_dir(const char *dir)
{
    int fd = -1;
    sb_err rc = s_open(&fd, dir, O_RDONLY | O_DIRECTORY, 0);
    int e;

    if (rc != SB_OK)
        return rc;
    if ((e = s_injected(SB_OS_OP_SYNC, NULL)) != 0)
        rc = s_fail(e);
    else if (fsync(fd) != 0)
        rc = s_fail(errno);
    sb_os_close(&fd);
    return rc;
}

sb_err
sb_os_write_file(const char *dir, const char *name, const void *buf, size_t len)
{
    char tmp[1024], dst[1024];
    int fd = -1;
    sb_err rc;

    if ((size_t)snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name) >=
            sizeof tmp ||
        (size_t)snprintf(dst, sizeof dst, "%s/%s", dir, name) >= sizeof dst)
        return SB_EINVAL;
    (void)unlink(tmp); /* left by a crash: it was never renamed, so unused */
    if ((rc = sb_os_create(&fd, tmp)) != SB_OK)
        return rc;
    if ((rc = sb_os_pwrite_all(fd, buf, len, 0)) != SB_OK ||
        (rc = sb_os_fdatasync(fd)) != SB_OK) {
        sb_os_close(&fd);
        (void)unlink(tmp);
        return rc;
    }
    sb_os_close(&fd);
    if (rename(tmp, dst) != 0) {
        rc = s_fail(errno);
        (void)unlink(tmp);
        return rc;
    }
    return sb_os_sync_dir(dir);
}

sb_err
sb_os_read_file(const char *path, size_t max, uint8_t **bufp, size_t *lenp)
{
    int fd = -1;
    uint64_t size;
    uint8_t *buf;
    size_t got;
    sb_err rc;

    if ((rc = sb_os_open_read(&fd, path)) != SB_OK)
        return rc;
    if ((rc = sb_os_fstat(fd, &size, NULL)) != SB_OK)
        goto out;
    rc = SB_ETOOBIG;
    if (size > max)
        goto out;
    rc = SB_ENOMEM;
    if ((buf = malloc(size ? (size_t)size : 1)) == NULL)
        goto out;
    if ((rc = sb_os_pread_full(fd, buf, (size_t)size, 0, &got)) != SB_OK) {
        free(buf);
        goto out;
    }
    *bufp = buf;
    *lenp = got;
out:
    sb_os_close(&fd);
    return rc;
}

sb_err
sb_os_unlink(const char *path)
{
    return unlink(path) != 0 ? s_fail(errno) : SB_OK;
}

sb_err
sb_os_mkdirs(const char *path)
{
    char buf[1024];
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof buf)
        return SB_EINVAL;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return s_fail(errno);
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return s_fail(errno);
    return SB_OK;
}

sb_err
sb_os_list_dir(const char *dir, int (*fn)(const char *name, void *ctx),
               void *ctx)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    if (d == NULL)
        return s_fail(errno);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (fn(e->d_name, ctx) != 0)
            break;
    }
    closedir(d);
    return SB_OK;
}

sb_err
sb_os_lock_dir(const char *dir, int *fd, long *holder)
{
    char path[1100], pid[32];
    int f;

    *holder = 0;
    if ((size_t) snprintf(path, sizeof path, "%s/LOCK", dir) >= sizeof path)
        return SB_EINVAL;
    if ((f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
        return s_fail(errno);
    while (flock(f, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EWOULDBLOCK) {
            ssize_t n = pread(f, pid, sizeof pid - 1, 0);
            pid[n > 0 ? n : 0] = '\0';
            *holder = strtol(pid, NULL, 10);
        }
        close(f);
        s_errno = e;
        return e == EWOULDBLOCK ? SB_EAGAIN : sb_os_err_of(e);
    }
    /* The PID is only for the message a second broker prints: the lock
     * itself is the flock, which the kernel drops when this process dies,
     * so a stale file never blocks a start. */
    int n = snprintf(pid, sizeof pid, "%ld\n", (long) getpid());
    if (ftruncate(f, 0) != 0 || pwrite(f, pid, (size_t) n, 0) != n) {
        int e = errno;
        close(f);
        return s_fail(e);
    }
    *fd = f;
    return SB_OK;
}
