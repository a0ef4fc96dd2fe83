/*
 * transport: see transport.h. Everything here is plain POSIX sockets (what differs
 * between systems, such as making them close-on-exec or asking for the peer's uid, is
 * in platform/platform.h); libuv is not involved, because connections are read and
 * written by whichever thread holds a connection's reader role (see conn/link.h), which
 * needs raw file descriptors.
 */
#define _GNU_SOURCE
#include "conn/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn/hostfile.h"
#include "platform/platform.h"
#include "tether.h"
#include "util/alloc.h"

int
tether__runtime_dir(const char *explicit_dir, char **ret)
{
    char buf[512];
    const char *env;
    if (explicit_dir && *explicit_dir) {
        snprintf(buf, sizeof(buf), "%s", explicit_dir);
    } else if ((env = getenv("TETHER_RUNTIME_DIR")) && *env) {
        snprintf(buf, sizeof(buf), "%s", env);
    } else if ((env = getenv("XDG_RUNTIME_DIR")) && *env) {
        snprintf(buf, sizeof(buf), "%s/tether", env);
    } else {
        snprintf(buf, sizeof(buf), "/tmp/tether-%u", (unsigned)geteuid());
    }
    *ret = tether__strdup(buf);
    return *ret ? 0 : -ENOMEM;
}

int
tether__runtime_dir_ensure(const char *dir)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        return -errno;
    }
    struct stat st;
    if (lstat(dir, &st) < 0) {
        return -errno;
    }
    if (!S_ISDIR(st.st_mode)) {
        return -ENOTDIR;
    }
    /* Another user's directory, or one others may enter, could hold their sockets and
     * read our token: refuse it rather than "fix" it behind the user's back. */
    if (st.st_uid != geteuid() || (st.st_mode & 0077) != 0) {
        return -EACCES;
    }
    return 0;
}

int
tether__addr_parse(const char *address, const char *runtime_dir, tether__addr *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (!address || !*address) {
        return -EINVAL;
    }
    if (strncmp(address, "unix:", 5) == 0) {
        const char *path = address + 5;
        if (!*path || strlen(path) >= sizeof(ret->path)) {
            return -EINVAL;
        }
        ret->kind = TETHER__ADDR_UNIX;
        snprintf(ret->path, sizeof(ret->path), "%s", path);
        return 0;
    }
    if (strncmp(address, "tcp:", 4) == 0) {
        const char *hp = address + 4;
        const char *colon = strrchr(hp, ':');
        if (!colon || colon == hp || (size_t)(colon - hp) >= sizeof(ret->host)) {
            return -EINVAL;
        }
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end || colon[1] == '\0' || port < 0 || port > 65535) {
            return -EINVAL;
        }
        ret->kind = TETHER__ADDR_TCP;
        memcpy(ret->host, hp, (size_t)(colon - hp));
        ret->host[colon - hp] = '\0';
        if (strcmp(ret->host, "localhost") == 0) {
            snprintf(ret->host, sizeof(ret->host), "127.0.0.1");
        }
        struct in_addr in;
        if (inet_pton(AF_INET, ret->host, &in) != 1) {
            return -EINVAL;
        }
        ret->port = (int)port;
        return 0;
    }
    if (!tether__host_name_valid(address) || !runtime_dir) {
        return -EINVAL;
    }
    ret->kind = TETHER__ADDR_UNIX;
    int n = snprintf(ret->path, sizeof(ret->path), "%s/%s.sock", runtime_dir, address);
    return n > 0 && (size_t)n < sizeof(ret->path) ? 0 : -ENAMETOOLONG;
}

int
tether__addr_resolve(const char *address, const char *runtime_dir, tether__addr *ret)
{
    int r = tether__addr_parse(address, runtime_dir, ret);
    if (r < 0 || strncmp(address, "unix:", 5) == 0 || strncmp(address, "tcp:", 4) == 0) {
        return r;
    }
    char *path = NULL;
    tether__hostfile info;
    if (tether__hostfile_path(runtime_dir, address, &path) < 0) {
        return r; /* only a name too long for a file: NAME.sock says no host is there */
    }
    /* A file that is missing, not ours, or names a process that ended leaves NAME.sock,
     * where a host that wrote none (an older one) listens. */
    bool use = tether__hostfile_read(path, &info) == 0 && tether__hostfile_live(&info);
    tether__free(path);
    if (!use) {
        return r;
    }
    tether__addr found = {0};
    if (info.unix_path[0]) {
        found.kind = TETHER__ADDR_UNIX;
        snprintf(found.path, sizeof(found.path), "%s", info.unix_path);
    } else {
        char text[200];
        snprintf(text, sizeof(text), "tcp:%s:%d", info.tcp_host, info.tcp_port);
        if (tether__addr_parse(text, NULL, &found) < 0) {
            return r;
        }
        snprintf(found.token_path, sizeof(found.token_path), "%s", info.token_path);
    }
    *ret = found;
    return 0;
}

void
tether__addr_format(const tether__addr *addr, char *buf, size_t size)
{
    if (addr->kind == TETHER__ADDR_UNIX) {
        snprintf(buf, size, "unix:%s", addr->path);
    } else {
        snprintf(buf, size, "tcp:%s:%d", addr->host, addr->port);
    }
}

static int
make_sockaddr(const tether__addr *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (addr->kind == TETHER__ADDR_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        un->sun_family = AF_UNIX;
        if (strlen(addr->path) >= sizeof(un->sun_path)) {
            return -ENAMETOOLONG;
        }
        memcpy(un->sun_path, addr->path, strlen(addr->path) + 1);
        *len = (socklen_t)sizeof(*un);
        return 0;
    }
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)addr->port);
    if (inet_pton(AF_INET, addr->host, &in->sin_addr) != 1) {
        return -EINVAL;
    }
    *len = (socklen_t)sizeof(*in);
    return 0;
}

static int
new_socket(const tether__addr *addr)
{
    int family = addr->kind == TETHER__ADDR_UNIX ? AF_UNIX : AF_INET;
    return tether__socket_open(family, SOCK_STREAM);
}

/* A Unix socket file nobody accepts on is left over by a dead host. Anything that is
 * not a socket (a file named by mistake) is never taken for one. */
static bool
unix_socket_is_stale(const tether__addr *addr)
{
    struct stat st;
    if (lstat(addr->path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        return false;
    }
    int fd = new_socket(addr);
    if (fd < 0) {
        return false;
    }
    struct sockaddr_storage ss;
    socklen_t len;
    bool stale = false;
    if (make_sockaddr(addr, &ss, &len) == 0 && connect(fd, (struct sockaddr *)&ss, len) < 0) {
        stale = errno == ECONNREFUSED;
    }
    close(fd);
    return stale;
}

/* A fresh socket for addr and its socket address; returns the fd or a negative errno. */
static int
socket_for(const tether__addr *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    int r = make_sockaddr(addr, ss, len);
    return r < 0 ? r : new_socket(addr);
}

int
tether__listen(tether__addr *addr, int backlog, int *ret_fd)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int r;
    int fd = socket_for(addr, &ss, &len);
    if (fd < 0) {
        return fd;
    }
    if (addr->kind == TETHER__ADDR_TCP) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        r = -errno;
        if (r == -EADDRINUSE && addr->kind == TETHER__ADDR_UNIX && unix_socket_is_stale(addr)) {
            unlink(addr->path);
            r = bind(fd, (struct sockaddr *)&ss, len) < 0 ? -errno : 0;
        }
        if (r < 0) {
            close(fd);
            return r;
        }
    }
    if (addr->kind == TETHER__ADDR_UNIX) {
        chmod(addr->path, 0600);
    }
    if (listen(fd, backlog) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    if (addr->kind == TETHER__ADDR_TCP) {
        struct sockaddr_in in;
        socklen_t inlen = sizeof(in);
        if (getsockname(fd, (struct sockaddr *)&in, &inlen) == 0) {
            addr->port = ntohs(in.sin_port);
        }
    }
    *ret_fd = fd;
    return 0;
}

static int
wait_fd(int fd, short events, uint64_t deadline_usec)
{
    for (;;) {
        uint64_t now = tether_now_usec();
        if (now >= deadline_usec) {
            return -ETIMEDOUT;
        }
        uint64_t left_ms = (deadline_usec - now + 999) / 1000;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            return -errno;
        }
    }
}

void
tether__socket_tune(int fd)
{
    int one = 1;
    /* Fails harmlessly with EOPNOTSUPP on Unix sockets. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int
tether__connect(const tether__addr *addr, uint64_t timeout_usec, int *ret_fd)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int r;
    int fd = socket_for(addr, &ss, &len);
    if (fd < 0) {
        return fd;
    }
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) {
            r = -errno;
            close(fd);
            return r;
        }
        r = wait_fd(fd, POLLOUT, tether_now_usec() + timeout_usec);
        int err = 0;
        socklen_t elen = sizeof(err);
        if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err) {
            r = -err;
        }
        if (r < 0) {
            close(fd);
            return r;
        }
    }
    tether__socket_tune(fd);
    *ret_fd = fd;
    return 0;
}

int
tether__accept(int listen_fd)
{
    int fd = tether__socket_accept(listen_fd);
    if (fd < 0) {
        return fd;
    }
    tether__socket_tune(fd);
    return fd;
}

int
tether__check_peer_uid(int fd)
{
    uid_t uid;
    int r = tether__socket_peer_uid(fd, &uid);
    if (r == -ENOTSUP) {
        return 0; /* the socket's mode (0600) and the runtime directory's keep others out */
    }
    if (r < 0) {
        return r;
    }
    return uid == geteuid() ? 0 : -EACCES;
}

int
tether__token_path(const char *runtime_dir, int port, char **ret)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s/tcp-%d.token", runtime_dir, port);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        return -ENAMETOOLONG;
    }
    *ret = tether__strdup(buf);
    return *ret ? 0 : -ENOMEM;
}

int
tether__token_create(const char *path, char token[TETHER__TOKEN_HEX_LEN + 1])
{
    uint8_t raw[TETHER__TOKEN_HEX_LEN / 2];
    int r = tether__random_bytes(raw, sizeof(raw));
    if (r < 0) {
        return r;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        token[2 * i] = hex[raw[i] >> 4];
        token[2 * i + 1] = hex[raw[i] & 15];
    }
    token[TETHER__TOKEN_HEX_LEN] = '\0';
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        return -errno;
    }
    r = tether__write_all(fd, token, TETHER__TOKEN_HEX_LEN, UINT64_MAX);
    close(fd);
    return r;
}

int
tether__token_read(const char *path, char token[TETHER__TOKEN_HEX_LEN + 1])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        return -errno;
    }
    ssize_t n = read(fd, token, TETHER__TOKEN_HEX_LEN);
    int r = n < 0 ? -errno : 0;
    close(fd);
    if (r == 0 && n != TETHER__TOKEN_HEX_LEN) {
        r = -EINVAL;
    }
    token[r == 0 ? TETHER__TOKEN_HEX_LEN : 0] = '\0';
    return r;
}

bool
tether__token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned diff = (unsigned)(la ^ lb);
    for (size_t i = 0; i < la && i < lb; i++) {
        diff |= (unsigned)(a[i] ^ b[i]);
    }
    return diff == 0 && la > 0;
}

int
tether__write_all(int fd, const void *p, size_t len, uint64_t deadline_usec)
{
    const uint8_t *b = p;
    while (len > 0) {
        ssize_t n = write(fd, b, len);
        if (n > 0) {
            b += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            int r = wait_fd(fd, POLLOUT, deadline_usec);
            if (r < 0) {
                return r;
            }
            continue;
        }
        return n < 0 ? -errno : -EIO;
    }
    return 0;
}

int
tether__read_some(int fd, void *p, size_t len, uint64_t deadline_usec)
{
    for (;;) {
        ssize_t n = read(fd, p, len);
        if (n >= 0) {
            return (int)n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN) {
            return -errno;
        }
        int r = wait_fd(fd, POLLIN, deadline_usec);
        if (r < 0) {
            return r;
        }
    }
}
