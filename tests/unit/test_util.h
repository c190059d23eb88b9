/* What the unit tests share: a log sink that keeps quiet, and temporary
 * directories made and removed for a fixture. Include after cmocka.h
 * (and the four headers it needs). Header-only, so every test stays one
 * file and one executable. */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_log.h"

/* The broker's log goes nowhere until sbt_log_restore: tests provoke
 * errors on purpose, and their lines would bury the test output. */
static inline void
sbt_log_quiet(void)
{
    sb_log_set_sink(sb_log_discard, NULL);
}

static inline void
sbt_log_restore(void)
{
    sb_log_set_sink(NULL, NULL);
}

/* A new empty directory /tmp/sbtest-<name>.XXXXXX into dir[n]. */
static inline void
sbt_tmpdir(char *dir, size_t n, const char *name)
{
    assert_true((size_t)snprintf(dir, n, "/tmp/sbtest-%s.XXXXXX", name) < n);
    assert_non_null(mkdtemp(dir));
}

/* Removes path and everything below it (links are removed, not
 * followed). 0 or -1. */
static inline int
sbt_rm(const char *path)
{
    struct stat st;
    char sub[1024];
    struct dirent *e;
    DIR *d;
    int rc = 0;

    if (lstat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode))
        return unlink(path);
    if ((d = opendir(path)) == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >=
                sizeof sub ||
            sbt_rm(sub) != 0)
            rc = -1;
    }
    closedir(d);
    return rc == 0 ? rmdir(path) : rc;
}

/* Removes a directory sbt_tmpdir made, with what the test left in it. */
static inline void
sbt_rmtree(const char *dir)
{
    assert_int_equal(sbt_rm(dir), 0);
}

#endif
