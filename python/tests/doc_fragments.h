/* What the C and C++ fragments of the docs assume, for python/tests/test_docs_code.py,
 * which compiles each fragment inside a function taking DOC_FRAGMENT_ASSUMES (the
 * variables a fragment uses without declaring them) after this header. The functions
 * below stand for the application around a fragment: its frame, its scene, its own
 * sockets; they are declared only, since a fragment is compiled, not linked. */
#ifndef DOC_FRAGMENTS_H
#define DOC_FRAGMENTS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <tether.h>

#ifdef DOC_FRAGMENT_GLIB
#include <glib-unix.h>
#endif

#ifdef __cplusplus
#include <tether.hpp> /* docs/cpp-guide.md */
#ifdef DOC_FRAGMENT_QT
#include <QCoreApplication>
#include <QObject>
#include <QSocketNotifier>
#endif
extern "C" {
#endif

/* An application's loop and sockets (embedding.md). */
int next_timer_ms(void);
void serve_my_socket(void);
void simulate_and_render(void);
void render_into(void *pixels); /* fills a frame's pixels */
void wait_for_next_frame(void);
extern volatile sig_atomic_t stop_requested;

/* A game's units and scene (embedding.md, ref-engine-api.md). */
struct unit;
void unit_follow(struct unit *unit, tether_value *route);
struct scene {
    int actors;
};
bool scene_find(struct scene *scene, const char *name);
void scene_add(struct scene *scene, const char *name);
void update_and_render(struct scene *scene);

/* An actor exported by reference, and a job queue of the host's own (c-guide.md). */
struct actor {
    double x, y;
};
void actor_free(void *actor);
struct job;
struct job *job_new(tether_request *req);
void queue_push(void *queue, struct job *job);

#ifdef __cplusplus
}
#endif

#if defined(__cplusplus) && defined(DOC_FRAGMENT_QT)
#define DOC_FRAGMENT_MORE , QCoreApplication &app /* the application object */
#else
#define DOC_FRAGMENT_MORE
#endif

/* The variables fragments use as given: the host or client at hand, a connection, the
 * request being served, a result and error, and the values they pass. */
#define DOC_FRAGMENT_ASSUMES                                                                       \
    tether_host *host, tether_client *client, tether_conn *conn, tether_conn *script,              \
        tether_request *req, tether_value *result, tether_error error, tether_value *n, int r,     \
        int64_t id, const void *data, size_t size, int my_socket, int epfd, int x, int y,          \
        struct unit *unit, struct scene scene, struct actor *actor, int tick DOC_FRAGMENT_MORE

#endif
