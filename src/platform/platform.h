/*
 * platform: the one place where the library uses what only some systems have. Every
 * other file asks for these things through this header, so a port is a new file here,
 * not a hunt through the tree.
 *
 * Today the Linux implementation (linux.c) is the only one.
 */
#ifndef TETHER_PLATFORM_H
#define TETHER_PLATFORM_H

/*
 * Thread wake-ups: each thread that waits (a synchronous caller, a waiter of a call
 * chain) sleeps on a pollable descriptor of its own, made on first use and closed when
 * the thread exits. Raising it is sticky until drained, so a wake-up sent before the
 * thread sleeps is never lost.
 */
/* The calling thread's wake descriptor. Returns it or a negative errno. */
int tether__thread_efd(void);
/* Make efd readable. Thread: any; async-signal-safe. */
void tether__efd_raise(int efd);
/* Make efd unreadable again. */
void tether__efd_drain(int efd);

#endif
