/*
 * object: local objects, proxies, and the per-connection tables that count the
 * references crossing a connection (object.h explains the model).
 */
#define _GNU_SOURCE
#include "rpc/object.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "codec/ext.h"
#include "codec/msgpack.h"
#include "conn/pool.h"
#include "rpc/call.h"
#include "rpc/conn.h"
#include "rpc/endpoint.h"
#include "rpc/value.h"
#include "util/alloc.h"

#define DESCRIBE_METHOD "__tether_describe__"
/* Entries of one RELEASE frame: keeps a huge batch well under any frame limit. */
#define RELEASE_CHUNK 4096u

/* Ids are unique in the process, so a stale id never names another object. */
static atomic_uint_fast64_t next_object_id = 1;

/* ---- objects --------------------------------------------------------------------- */

int
tether__object_new(tether__endpoint *ep, const tether_class *cls, void *userdata,
                   tether_object **ret)
{
    if (!ret) {
        return -EINVAL;
    }
    *ret = NULL;
    if (!ep || !cls || !cls->name || !*cls->name) {
        return -EINVAL;
    }
    tether_object *obj = tether__calloc(1, sizeof(*obj));
    if (!obj) {
        return -ENOMEM;
    }
    atomic_init(&obj->refs, 1);
    obj->id = atomic_fetch_add_explicit(&next_object_id, 1, memory_order_relaxed);
    obj->ep = tether__endpoint_ref(ep);
    obj->cls = cls;
    obj->userdata = userdata;
    *ret = obj;
    return 0;
}

int
tether_conn_new_object(tether_conn *c, const tether_class *cls, void *userdata,
                       tether_object **ret)
{
    if (!c) {
        if (ret) {
            *ret = NULL;
        }
        return -EINVAL;
    }
    return tether__object_new(c->ep, cls, userdata, ret);
}

static tether_object *
proxy_new(tether_conn *c, uint64_t id, tether__span type)
{
    tether_object *obj = tether__calloc(1, sizeof(*obj) + type.len + 1);
    if (!obj) {
        return NULL;
    }
    atomic_init(&obj->refs, 1);
    obj->remote = true;
    obj->id = id;
    obj->conn = tether_conn_ref(c);
    memcpy(obj->type_name, type.ptr, type.len);
    return obj;
}

tether_object *
tether_object_ref(tether_object *obj)
{
    if (obj) {
        atomic_fetch_add_explicit(&obj->refs, 1, memory_order_relaxed);
    }
    return obj;
}

tether_object *
tether_object_ref_live(tether_object *obj)
{
    if (!obj) {
        return NULL;
    }
    unsigned n = atomic_load_explicit(&obj->refs, memory_order_relaxed);
    while (n != 0) {
        if (atomic_compare_exchange_weak_explicit(&obj->refs, &n, n + 1, memory_order_acquire,
                                                  memory_order_relaxed)) {
            return obj;
        }
    }
    return NULL;
}

static void
local_free(tether_object *obj)
{
    if (obj->cls->release) {
        obj->cls->release(obj->userdata);
    }
    tether__endpoint_unref(obj->ep);
    tether__free(obj);
}

static void
run_main_release(tether__work *work)
{
    local_free((tether_object *)((char *)work - offsetof(tether_object, release.work)));
}

static void
run_pool_release(tether__task *task)
{
    local_free((tether_object *)((char *)task - offsetof(tether_object, release.task)));
}

static void proxy_died(tether_object *obj);

tether_object *
tether_object_unref(tether_object *obj)
{
    if (!obj || atomic_fetch_sub_explicit(&obj->refs, 1, memory_order_acq_rel) != 1) {
        return NULL;
    }
    if (obj->remote) {
        proxy_died(obj);
        return NULL;
    }
    switch (obj->cls->release ? obj->cls->release_context : TETHER_CONTEXT_IO) {
    case TETHER_CONTEXT_MAIN: {
        /* Once the owner is gone nobody dispatches: release here instead. */
        pthread_rwlock_rdlock(&obj->ep->owner_lock);
        bool owned = obj->ep->owner != NULL;
        pthread_rwlock_unlock(&obj->ep->owner_lock);
        if (!owned) {
            local_free(obj);
            break;
        }
        obj->release.work.run = run_main_release;
        obj->release.work.discard = run_main_release;
        tether__mainq_push(obj->ep->mainq, &obj->ep->objects_lane, &obj->release.work);
        break;
    }
    case TETHER_CONTEXT_POOL:
        obj->release.task.run = run_pool_release;
        if (tether__pool_post(&obj->release.task) < 0) {
            local_free(obj); /* no worker could start: here, rather than never */
        }
        break;
    default:
        local_free(obj);
        break;
    }
    return NULL;
}

int
tether_object_is_remote(const tether_object *obj)
{
    return obj && obj->remote;
}

void *
tether_object_get_userdata(const tether_object *obj)
{
    return obj && !obj->remote ? obj->userdata : NULL;
}

const char *
tether_object_get_type_name(const tether_object *obj)
{
    return !obj ? "" : obj->remote ? obj->type_name : obj->cls->name;
}

uint64_t
tether_object_get_id(const tether_object *obj)
{
    return obj ? obj->id : 0;
}

tether_conn *
tether_object_get_conn(const tether_object *obj)
{
    return obj && obj->remote ? obj->conn : NULL;
}

/* ---- object vectors and REF exts ----------------------------------------------------- */

int
tether__objvec_push(tether__objvec *vec, size_t off, tether_object *obj)
{
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? 2 * vec->cap : 4;
        tether__objref *v = tether__realloc(vec->v, cap * sizeof(*v));
        if (!v) {
            return -ENOMEM;
        }
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n++] = (tether__objref){off, tether_object_ref(obj)};
    return 0;
}

void
tether__objvec_clear(tether__objvec *vec)
{
    for (size_t i = 0; i < vec->n; i++) {
        tether_object_unref(vec->v[i].obj);
    }
    tether__free(vec->v);
    *vec = TETHER__OBJVEC_INIT;
}

int
tether__ref_encode(tether__buf *out, const tether_object *obj)
{
    const char *type = tether_object_get_type_name(obj);
    return tether__ext_ref_write(out, obj->remote ? 1 : 0, obj->id, type, strlen(type));
}

int
tether_object_get_msgpack(const tether_object *obj, void *buf, size_t size, size_t *ret_len)
{
    if (!obj || !ret_len || (!buf && size)) {
        return TETHER_EINVAL;
    }
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__ref_encode(&b, obj);
    if (r == 0) {
        *ret_len = tether__buf_pending(&b);
        if (*ret_len > size) {
            r = TETHER_EMSGSIZE;
        } else {
            memcpy(buf, tether__buf_head(&b), *ret_len);
        }
    }
    tether__buf_done(&b);
    return r;
}

/* ---- id maps ------------------------------------------------------------------------ */

/* Move a table's reference on obj into dead, to be dropped once the lock is released
 * (a release callback may run then). Out of memory, the reference is leaked: the
 * object then lives on, which is safe where dropping it under the lock is not. */
static void
move_to_dead(tether__objvec *dead, tether_object *obj)
{
    if (tether__objvec_push(dead, 0, obj) == 0) {
        atomic_fetch_sub_explicit(&obj->refs, 1, memory_order_relaxed); /* dead holds one */
    }
}

static tether__idnode **
idmap_slot(tether__idmap *m, uint64_t id)
{
    uint64_t h = id * 0x9e3779b97f4a7c15ull;
    return &m->slots[(h >> 32) & m->mask];
}

static tether__idnode *
idmap_find(tether__idmap *m, uint64_t id)
{
    if (!m->slots) {
        return NULL;
    }
    for (tether__idnode *n = *idmap_slot(m, id); n; n = n->next) {
        if (n->id == id) {
            return n;
        }
    }
    return NULL;
}

/* Room for one more node: grows at load factor 1. Returns 0 or -ENOMEM. */
static int
idmap_reserve(tether__idmap *m)
{
    if (m->slots && m->count < m->mask + 1) {
        return 0;
    }
    uint32_t size = m->slots ? 2 * (m->mask + 1) : 16;
    tether__idnode **slots = tether__calloc(size, sizeof(*slots));
    if (!slots) {
        return -ENOMEM;
    }
    tether__idmap grown = {slots, size - 1, m->count};
    for (uint32_t i = 0; m->slots && i <= m->mask; i++) {
        for (tether__idnode *n = m->slots[i], *next; n; n = next) {
            next = n->next;
            tether__idnode **s = idmap_slot(&grown, n->id);
            n->next = *s;
            *s = n;
        }
    }
    tether__free(m->slots);
    *m = grown;
    return 0;
}

static tether__idnode *
idmap_add(tether__idmap *m, uint64_t id, tether_object *obj)
{
    tether__idnode *n = tether__malloc(sizeof(*n));
    if (!n || idmap_reserve(m) < 0) {
        tether__free(n);
        return NULL;
    }
    *n = (tether__idnode){.id = id, .obj = obj};
    tether__idnode **s = idmap_slot(m, id);
    n->next = *s;
    *s = n;
    m->count++;
    return n;
}

static void
idmap_remove(tether__idmap *m, tether__idnode *node)
{
    for (tether__idnode **pp = idmap_slot(m, node->id); *pp; pp = &(*pp)->next) {
        if (*pp == node) {
            *pp = node->next;
            m->count--;
            tether__free(node);
            return;
        }
    }
}

/* Empty the map; the exports' references move to vec (NULL for imports, which hold none). */
static void
idmap_clear(tether__idmap *m, tether__objvec *vec)
{
    for (uint32_t i = 0; m->slots && i <= m->mask; i++) {
        for (tether__idnode *n = m->slots[i], *next; n; n = next) {
            next = n->next;
            if (vec) {
                move_to_dead(vec, n->obj);
            }
            tether__free(n);
        }
    }
    tether__free(m->slots);
    *m = (tether__idmap){0};
}

/* ---- releases to the peer --------------------------------------------------------- */

typedef struct release_arg {
    const uint64_t *ids, *counts;
    size_t n;
} release_arg;

static int
encode_release(tether__buf *out, void *argp)
{
    release_arg *a = argp;
    return tether__encode_release(out, a->ids, a->counts, a->n);
}

static void
run_release_flush(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, objects.release_task));
    pthread_mutex_lock(&c->link.lock);
    uint64_t *ids = c->objects.release_ids, *counts = c->objects.release_counts;
    size_t n = c->objects.release_n;
    c->objects.release_ids = c->objects.release_counts = NULL;
    c->objects.release_n = c->objects.release_cap = 0;
    c->objects.release_posted = false;
    pthread_mutex_unlock(&c->link.lock);
    for (size_t at = 0; at < n; at += RELEASE_CHUNK) {
        release_arg a = {ids + at, counts + at, n - at < RELEASE_CHUNK ? n - at : RELEASE_CHUNK};
        /* Behind calls waiting for room in the peer's window, which may name these
         * objects (window.c). */
        if (tether__window_send(c, encode_release, &a, false, NULL, 0) == -ENOBUFS) {
            tether__conn_drop_slow_reader(c);
            break;
        }
    }
    tether__free(ids);
    tether__free(counts);
    tether_conn_unref(c);
}

/* Queue (id, count) for the next RELEASE frame. Lock held. */
static void
release_later_locked(tether_conn *c, uint64_t id, uint64_t count)
{
    tether__conn_objects *o = &c->objects;
    if (tether__conn_state(c) == TETHER__LINK_CLOSED || count == 0) {
        return; /* closing released everything */
    }
    if (o->release_n == o->release_cap) {
        size_t cap = o->release_cap ? 2 * o->release_cap : 16;
        uint64_t *ids = tether__realloc(o->release_ids, cap * sizeof(*ids));
        if (ids) {
            o->release_ids = ids;
        }
        uint64_t *counts = ids ? tether__realloc(o->release_counts, cap * sizeof(*counts)) : NULL;
        if (!counts) {
            return; /* out of memory: the peer keeps the object until the connection closes */
        }
        o->release_counts = counts;
        o->release_cap = cap;
    }
    o->release_ids[o->release_n] = id;
    o->release_counts[o->release_n] = count;
    o->release_n++;
    if (!o->release_posted) {
        /* One task per batch: proxies dropped together leave in one frame. */
        o->release_posted = true;
        tether_conn_ref(c);
        o->release_task.run = run_release_flush;
        tether__ioloop_post(c->link.loop, &o->release_task);
    }
}

static void
proxy_died(tether_object *obj)
{
    tether_conn *c = obj->conn;
    pthread_mutex_lock(&c->link.lock);
    tether__idnode *n = idmap_find(&c->objects.imports, obj->id);
    if (n && n->obj == obj) {
        release_later_locked(c, obj->id, n->count);
        idmap_remove(&c->objects.imports, n);
    }
    pthread_mutex_unlock(&c->link.lock);
    tether_conn_unref(c);
    tether__free(obj);
}

/* ---- binding received REFs ----------------------------------------------------------- */

typedef struct bind_arg {
    tether_conn *c;
    tether__objvec *vec;
    char *err;
    size_t errlen;
} bind_arg;

/* Lock held. */
static int
bind_one(void *argp, const tether__ref *ref)
{
    bind_arg *a = argp;
    tether_conn *c = a->c;
    tether_object *obj = NULL;
    if (ref->owner == 1) {
        tether__idnode *n = idmap_find(&c->objects.exports, ref->id);
        if (!n) {
            snprintf(a->err, a->errlen, "no object %llu here (it was released)",
                     (unsigned long long)ref->id);
            return -ENOENT;
        }
        obj = tether_object_ref(n->obj);
    } else {
        tether__idnode *n = idmap_find(&c->objects.imports, ref->id);
        obj = n ? tether_object_ref_live(n->obj) : NULL;
        if (obj) {
            n->count++;
        } else {
            obj = proxy_new(c, ref->id, ref->type);
            if (!obj) {
                return -ENOMEM;
            }
            if (n) {
                /* Its proxy is dying: hand back what it held, the new proxy starts over. */
                release_later_locked(c, ref->id, n->count);
                n->obj = obj;
                n->count = 1;
            } else if (!(n = idmap_add(&c->objects.imports, ref->id, obj))) {
                obj->conn = NULL;
                tether_conn_unref(c);
                tether__free(obj);
                return -ENOMEM;
            } else {
                n->count = 1;
            }
        }
    }
    int r = tether__objvec_push(a->vec, ref->off, obj);
    tether_object_unref(obj); /* the vector holds it now, or it goes */
    return r;
}

static int
flip_owner(void *argp, const tether__ref *ref)
{
    ((uint8_t *)argp)[ref->owner_at] ^= 1;
    return 0;
}

int
tether__conn_bind_refs(tether_conn *c, uint8_t *p, size_t len, tether__objvec *vec, char *err,
                       size_t errlen)
{
    bind_arg a = {c, vec, err, errlen};
    pthread_mutex_lock(&c->link.lock);
    int r = tether__refs_scan(p, len, bind_one, &a);
    pthread_mutex_unlock(&c->link.lock);
    if (r == 0) {
        tether__refs_scan(p, len, flip_owner, p);
    }
    if (r == -EPROTO) {
        snprintf(err, errlen, "malformed object reference");
    }
    if (r < 0) {
        tether__objvec_clear(vec); /* unref outside the lock: proxies may die */
    }
    return r;
}

/* ---- exports ---------------------------------------------------------------------- */

/* Undo the first k objects of values (in the order export added them). Lock held;
 * objects whose count reaches zero move to dead. */
static void
unexport_locked(tether_conn *c, const tether__objlist *lists, size_t nlists, size_t k,
                tether__objvec *dead)
{
    for (size_t i = 0; i < nlists && k > 0; i++) {
        for (size_t j = 0; j < lists[i].n && k > 0; j++, k--) {
            tether_object *obj = lists[i].objs[j];
            if (obj->remote) {
                continue;
            }
            tether__idnode *node = idmap_find(&c->objects.exports, obj->id);
            if (node && --node->count == 0) {
                move_to_dead(dead, node->obj);
                idmap_remove(&c->objects.exports, node);
            }
        }
    }
}

/* Count obj once more as sent on c. Conn lock held. */
static int
export_one_locked(tether_conn *c, tether_object *obj)
{
    if (obj->remote) {
        /* A proxy goes back to its own connection only. */
        return obj->conn == c ? 0 : -EINVAL;
    }
    tether__idnode *node = idmap_find(&c->objects.exports, obj->id);
    if (!node) {
        node = idmap_add(&c->objects.exports, obj->id, obj);
        if (!node) {
            return -ENOMEM;
        }
        tether_object_ref(obj);
    }
    node->count++;
    return 0;
}

int
tether__conn_export_lists(tether_conn *c, const tether__objlist *lists, size_t nlists)
{
    size_t total = 0;
    for (size_t i = 0; i < nlists; i++) {
        total += lists[i].n;
    }
    if (total == 0) {
        return 0;
    }
    tether__objvec dead = TETHER__OBJVEC_INIT;
    int r = 0;
    size_t done = 0;
    pthread_mutex_lock(&c->link.lock);
    if (tether__conn_state(c) == TETHER__LINK_CLOSED) {
        r = -ENOTCONN;
    }
    for (size_t i = 0; i < nlists && r == 0; i++) {
        for (size_t j = 0; j < lists[i].n && r == 0; j++) {
            r = export_one_locked(c, lists[i].objs[j]);
            done += r == 0;
        }
    }
    if (r < 0) {
        unexport_locked(c, lists, nlists, done, &dead);
    }
    pthread_mutex_unlock(&c->link.lock);
    tether__objvec_clear(&dead);
    return r;
}

void
tether__conn_unexport_lists(tether_conn *c, const tether__objlist *lists, size_t nlists)
{
    tether__objvec dead = TETHER__OBJVEC_INIT;
    pthread_mutex_lock(&c->link.lock);
    unexport_locked(c, lists, nlists, SIZE_MAX, &dead);
    pthread_mutex_unlock(&c->link.lock);
    tether__objvec_clear(&dead);
}

tether__objlist
tether__objlist_of(const tether_value *v)
{
    tether__objlist list = {NULL, 0};
    if (v) {
        list.objs = tether__value_objects(v, &list.n);
    }
    return list;
}

tether_object *
tether__conn_find_export(tether_conn *c, uint64_t id)
{
    pthread_mutex_lock(&c->link.lock);
    tether__idnode *n = idmap_find(&c->objects.exports, id);
    tether_object *obj = n ? tether_object_ref(n->obj) : NULL;
    pthread_mutex_unlock(&c->link.lock);
    return obj;
}

void
tether__conn_on_release(tether_conn *c, const tether__frame *f)
{
    /* The decoder checked the list: [[id:uint, count:uint, ...], ...]. */
    tether__mp_reader rd = {f->value.ptr, f->value.ptr + f->value.len};
    uint32_t n;
    if (tether__mp_read_array(&rd, &n) < 0) {
        return;
    }
    tether__objvec dead = TETHER__OBJVEC_INIT;
    pthread_mutex_lock(&c->link.lock);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k;
        uint64_t id, count;
        if (tether__mp_read_array(&rd, &k) < 0 || tether__mp_read_uint(&rd, &id) < 0 ||
            tether__mp_read_uint(&rd, &count) < 0) {
            break;
        }
        for (uint32_t j = 2; j < k; j++) {
            tether__mp_skip(&rd, NULL);
        }
        tether__idnode *node = idmap_find(&c->objects.exports, id);
        if (!node) {
            continue; /* not ours, or released already: nothing to give back */
        }
        node->count = count < node->count ? node->count - count : 0;
        if (node->count == 0) {
            move_to_dead(&dead, node->obj);
            idmap_remove(&c->objects.exports, node);
        }
    }
    pthread_mutex_unlock(&c->link.lock);
    tether__objvec_clear(&dead); /* release callbacks run outside the lock */
}

void
tether__conn_drop_objects(tether_conn *c)
{
    tether__objvec dead = TETHER__OBJVEC_INIT;
    pthread_mutex_lock(&c->link.lock);
    idmap_clear(&c->objects.exports, &dead);
    idmap_clear(&c->objects.imports, NULL);
    tether__free(c->objects.release_ids);
    tether__free(c->objects.release_counts);
    c->objects.release_ids = c->objects.release_counts = NULL;
    c->objects.release_n = c->objects.release_cap = 0;
    pthread_mutex_unlock(&c->link.lock);
    tether__objvec_clear(&dead);
}

/* ---- methods ---------------------------------------------------------------------- */

static int describe_handler(tether_request *req, void *userdata);

int
tether__object_method(const tether_object *obj, const char *name, size_t len,
                      tether_handler_fn *ret_handler, tether_context *ret_context)
{
    for (const tether_method *m = obj->cls->methods; m && m->name; m++) {
        if (strlen(m->name) == len && memcmp(m->name, name, len) == 0) {
            *ret_handler = m->handler;
            *ret_context = m->context ? m->context : TETHER_CONTEXT_IO;
            return 0;
        }
    }
    if (obj->cls->fallback) {
        *ret_handler = obj->cls->fallback;
        *ret_context = obj->cls->fallback_context ? obj->cls->fallback_context
                                                  : TETHER_CONTEXT_IO;
        return 0;
    }
    if (len == strlen(DESCRIBE_METHOD) && memcmp(name, DESCRIBE_METHOD, len) == 0) {
        *ret_handler = describe_handler;
        *ret_context = TETHER_CONTEXT_IO;
        return 0;
    }
    return -ENOENT;
}

/* "__name__": one of the protocol's operations, which every peer tries rather than
 * learns from a description (docs/protocol.md, "Object methods and operations"). */
static bool
is_operation(const char *name)
{
    size_t len = strlen(name);
    return len > 4 && strncmp(name, "__", 2) == 0 && strcmp(name + len - 2, "__") == 0;
}

/* Answers "__tether_describe__" for a class without a fallback (IO context). */
static int
describe_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    const tether_object *obj = tether_request_get_object(req);
    const tether_class *cls = obj->cls;
    uint32_t n = 0;
    for (const tether_method *m = cls->methods; m && m->name; m++) {
        n += !is_operation(m->name);
    }
    /* {"type": name, "methods": [...], "per_type": true}: every object of a C class
     * has the same methods, so a proxy may cache them per type. */
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__mp_map(&b, 3);
    r = r ? r : tether__mp_str(&b, "type", 4);
    r = r ? r : tether__mp_str(&b, cls->name, strlen(cls->name));
    r = r ? r : tether__mp_str(&b, "methods", 7);
    r = r ? r : tether__mp_array(&b, n);
    for (const tether_method *m = cls->methods; r == 0 && m && m->name; m++) {
        if (!is_operation(m->name)) {
            r = tether__mp_str(&b, m->name, strlen(m->name));
        }
    }
    r = r ? r : tether__mp_str(&b, "per_type", 8);
    r = r ? r : tether__mp_bool(&b, true);
    tether_value *v = NULL;
    if (r == 0) {
        r = tether__value_new_copy(tether__buf_head(&b), tether__buf_pending(&b), &v);
    }
    tether__buf_done(&b);
    if (r < 0) {
        return r;
    }
    r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}
