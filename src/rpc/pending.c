/*
 * pending: the table of a connection's outgoing calls waiting for their responses, by
 * id (a hash table that doubles as calls outnumber its buckets). Every function here
 * runs with the conn lock held.
 */
#define _GNU_SOURCE
#include "rpc/call.h"
#include "util/alloc.h"

/* Double the buckets once calls outnumber them; on allocation failure keep chaining. */
static void
pending_grow(tether_conn *c)
{
    uint32_t mask = c->pending_mask * 2 + 1;
    tether__pending **table = tether__calloc((size_t)mask + 1, sizeof(*table));
    if (!table) {
        return;
    }
    for (uint32_t i = 0; i <= c->pending_mask; i++) {
        while (c->pending[i]) {
            tether__pending *p = c->pending[i];
            c->pending[i] = p->next;
            p->next = table[(uint32_t)p->id & mask];
            table[(uint32_t)p->id & mask] = p;
        }
    }
    tether__free(c->pending);
    c->pending = table;
    c->pending_mask = mask;
}

void
tether__pending_insert(tether_conn *c, tether__pending *p)
{
    if (c->pending_count > c->pending_mask && c->pending_mask < 65535) {
        pending_grow(c);
    }
    uint32_t h = (uint32_t)p->id & c->pending_mask;
    p->next = c->pending[h];
    c->pending[h] = p;
    c->pending_count++;
}

tether__pending *
tether__pending_take(tether_conn *c, uint64_t id)
{
    tether__pending **pp = &c->pending[(uint32_t)id & c->pending_mask];
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            tether__pending *p = *pp;
            *pp = p->next;
            c->pending_count--;
            if (p->future) {
                c->async_count--;
            }
            c->sent_count -= p->sent; /* room in the peer's window (window.c) */
            return p;
        }
    }
    return NULL;
}

tether__pending *
tether__pending_find(tether_conn *c, uint64_t id)
{
    for (tether__pending *p = c->pending[(uint32_t)id & c->pending_mask]; p; p = p->next) {
        if (p->id == id) {
            return p;
        }
    }
    return NULL;
}
