/*
 * platform, shared: what both implementations (linux.c, posix.c) do the same way,
 * because POSIX says how. Included by them only.
 */
#ifndef TETHER_PLATFORM_UNIX_H
#define TETHER_PLATFORM_UNIX_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

/* The most descriptors one message carries. */
#define TETHER__MSG_MAX_FDS 4

/* Room for one SCM_RIGHTS record of up to TETHER__MSG_MAX_FDS descriptors. */
typedef union tether__fd_record {
    char bytes[CMSG_SPACE(TETHER__MSG_MAX_FDS * sizeof(int))];
    struct cmsghdr align;
} tether__fd_record;

/* Attach nfds descriptors to msg, in record; nothing for none. */
static inline void
tether__msg_attach_fds(struct msghdr *msg, tether__fd_record *record, const int *fds, size_t nfds)
{
    if (nfds == 0) {
        return;
    }
    memset(record, 0, sizeof(*record));
    msg->msg_control = record->bytes;
    msg->msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
}

/* Make fd close-on-exec, and non-blocking if asked. */
static inline int
tether__fd_set_flags(int fd, bool nonblock)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (nonblock && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        return -errno;
    }
    return 0;
}

#endif
