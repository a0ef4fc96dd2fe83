/*
 * platform, Linux, the inline part: the changes of a poll set's interests, which a
 * synchronous call makes twice (pause input when it takes the reader role, resume it
 * when it gives the role back). Each is one epoll_ctl on the private set, done in place
 * so that the call path costs what it did before the platform layer existed. Included
 * by platform.h only; the rest of the Linux implementation is linux.c.
 */
#ifndef TETHER_PLATFORM_LINUX_H
#define TETHER_PLATFORM_LINUX_H

#include <sys/epoll.h>

/* Input can be paused from any thread: the set is the kernel's. */
#define TETHER__POLLSET_CAN_PAUSE 1

/* epoll user data of the two registrations in a set. */
enum {
    TETHER__EPOLL_READ = 1,
    TETHER__EPOLL_WRITE = 2
};

static inline void
tether__pollset_set_read(tether__pollset *ps, bool on)
{
    struct epoll_event ev = {.events = on ? EPOLLIN | EPOLLRDHUP : 0,
                             .data.u32 = TETHER__EPOLL_READ};
    epoll_ctl(ps->watch_fd, EPOLL_CTL_MOD, ps->fd, &ev);
    atomic_store_explicit(&ps->read_on, on, memory_order_relaxed);
}

static inline void
tether__pollset_set_write(tether__pollset *ps, bool on)
{
    struct epoll_event ev = {.events = on ? EPOLLOUT : 0, .data.u32 = TETHER__EPOLL_WRITE};
    epoll_ctl(ps->watch_fd, EPOLL_CTL_MOD, ps->aux_fd, &ev);
    atomic_store_explicit(&ps->write_on, on, memory_order_relaxed);
}

#endif
