/*
 * hostfile: see hostfile.h; the format is specified in docs/protocol.md, section 2.
 *
 *     tether-host 1
 *     name demo
 *     pid 4242
 *     versions 1 1
 *     unix /run/user/1000/tether/demo.sock
 *     tcp 127.0.0.1:45678
 *     token /run/user/1000/tether/tcp-45678.token
 */
#define _GNU_SOURCE
#include "conn/hostfile.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn/transport.h"
#include "util/alloc.h"

/* Larger than any file a host writes (its paths are bounded): more is not ours. */
#define HOSTFILE_MAX 4096

bool
tether__host_name_valid(const char *name)
{
    if (!name || !*name || strlen(name) > 64 || name[0] == '.') {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.')) {
            return false;
        }
    }
    return true;
}

int
tether__hostfile_path(const char *runtime_dir, const char *name, char **ret)
{
    if (!tether__host_name_valid(name)) {
        return -EINVAL;
    }
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s/%s.host", runtime_dir, name);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        return -ENAMETOOLONG;
    }
    *ret = tether__strdup(buf);
    return *ret ? 0 : -ENOMEM;
}

static int
format(const tether__hostfile *info, char *buf, size_t size)
{
    /* A line break inside a value would make a line of its own: such a path (legal on
     * POSIX) cannot be written, and the host runs without its file. */
    const char *values[] = {info->name, info->unix_path, info->tcp_host, info->token_path};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        if (strpbrk(values[i], "\n\r")) {
            return -EINVAL;
        }
    }
    int n = snprintf(buf, size, "tether-host %d\nname %s\npid %lld\nversions %u %u\n",
                     TETHER__HOSTFILE_FORMAT, info->name, (long long)info->pid, info->min_version,
                     info->max_version);
    if (n > 0 && (size_t)n < size && info->unix_path[0]) {
        n += snprintf(buf + n, size - (size_t)n, "unix %s\n", info->unix_path);
    }
    if (n > 0 && (size_t)n < size && info->tcp_host[0]) {
        n += snprintf(buf + n, size - (size_t)n, "tcp %s:%d\ntoken %s\n", info->tcp_host,
                      info->tcp_port, info->token_path);
    }
    return n > 0 && (size_t)n < size ? n : -ENAMETOOLONG;
}

int
tether__hostfile_write(const char *path, const tether__hostfile *info)
{
    char text[HOSTFILE_MAX];
    int len = format(info, text, sizeof(text));
    if (len < 0) {
        return len;
    }
    /* Readers see the old file or the new one, never half of one: write a temporary
     * file of our own beside it, then rename it over. */
    char tmp[600];
    int n = snprintf(tmp, sizeof(tmp), "%s.%lld.tmp", path, (long long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        return -ENAMETOOLONG;
    }
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        return -errno;
    }
    int r = tether__write_all(fd, text, (size_t)len, UINT64_MAX);
    if (close(fd) < 0 && r == 0) {
        r = -errno;
    }
    if (r == 0 && rename(tmp, path) < 0) {
        r = -errno;
    }
    if (r < 0) {
        unlink(tmp);
    }
    return r;
}

static int
parse_int(const char *s, long long min, long long max, long long *ret)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

static int
copy_value(char *dst, size_t size, const char *value)
{
    size_t len = strlen(value);
    if (len == 0 || len >= size) {
        return -EINVAL;
    }
    memcpy(dst, value, len + 1);
    return 0;
}

/* One "key value" line into ret; unknown keys are skipped (a later format may add some). */
static int
parse_line(char *line, tether__hostfile *ret, unsigned *seen)
{
    char *value = strchr(line, ' ');
    if (!value) {
        return -EINVAL;
    }
    *value++ = '\0';
    long long a = 0, b = 0; /* set by parse_int when it succeeds */
    if (strcmp(line, "name") == 0) {
        *seen |= 1;
        return tether__host_name_valid(value) ? copy_value(ret->name, sizeof(ret->name), value)
                                              : -EINVAL;
    }
    if (strcmp(line, "pid") == 0) {
        *seen |= 2;
        int r = parse_int(value, 1, INT64_MAX, &a);
        ret->pid = a;
        return r;
    }
    if (strcmp(line, "versions") == 0) {
        char *space = strchr(value, ' ');
        if (!space) {
            return -EINVAL;
        }
        *space = '\0';
        if (parse_int(value, 1, UINT32_MAX, &a) < 0 ||
            parse_int(space + 1, a, UINT32_MAX, &b) < 0) {
            return -EINVAL;
        }
        ret->min_version = (uint32_t)a;
        ret->max_version = (uint32_t)b;
        *seen |= 4;
        return 0;
    }
    if (strcmp(line, "unix") == 0) {
        return copy_value(ret->unix_path, sizeof(ret->unix_path), value);
    }
    if (strcmp(line, "tcp") == 0) {
        char *colon = strrchr(value, ':');
        if (!colon || colon == value || parse_int(colon + 1, 1, 65535, &a) < 0) {
            return -EINVAL;
        }
        *colon = '\0';
        ret->tcp_port = (int)a;
        return copy_value(ret->tcp_host, sizeof(ret->tcp_host), value);
    }
    if (strcmp(line, "token") == 0) {
        return copy_value(ret->token_path, sizeof(ret->token_path), value);
    }
    return 0;
}

int
tether__hostfile_read(const char *path, tether__hostfile *ret)
{
    memset(ret, 0, sizeof(*ret));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        return -errno;
    }
    char text[HOSTFILE_MAX + 1];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, text + len, sizeof(text) - 1 - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
        if (len == sizeof(text) - 1) {
            close(fd);
            return -EINVAL;
        }
    }
    close(fd);
    text[len] = '\0';
    static const char magic[] = "tether-host 1\n";
    if (strncmp(text, magic, sizeof(magic) - 1) != 0 || text[len - 1] != '\n' ||
        memchr(text, '\0', len)) {
        return -EINVAL;
    }
    unsigned seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(text + sizeof(magic) - 1, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (parse_line(line, ret, &seen) < 0) {
            return -EINVAL;
        }
    }
    /* name, pid and versions are required; so is a way in, and a token with TCP. */
    if (seen != 7 || (!ret->unix_path[0] && !ret->tcp_host[0]) ||
        (ret->tcp_host[0] && !ret->token_path[0])) {
        return -EINVAL;
    }
    return 0;
}

bool
tether__hostfile_live(const tether__hostfile *info)
{
    /* EPERM: a process of another user has the pid now, so not the host (the runtime
     * directory is ours): stale. */
    return info->pid > 0 && (kill((pid_t)info->pid, 0) == 0);
}

void
tether__hostfile_remove(const char *path, const tether__hostfile *info)
{
    tether__hostfile now;
    if (tether__hostfile_read(path, &now) < 0 || now.pid != info->pid ||
        strcmp(now.unix_path, info->unix_path) != 0 || now.tcp_port != info->tcp_port ||
        strcmp(now.name, info->name) != 0) {
        return;
    }
    unlink(path);
}
