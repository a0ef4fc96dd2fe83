/*
 * object: values that travel by reference (tether.h, "Objects"; docs/protocol.md,
 * "Remote references").
 *
 * A tether_object is a local object (a class description and userdata, owned by an
 * endpoint) or a proxy (the peer's object id on one connection). Values hold the
 * objects their REF exts name, in an array of (offset, object) sorted by offset, so the
 * bytes stay plain msgpack that any thread may send.
 *
 * Each connection keeps two tables, guarded by its lock:
 * - exports: our objects the peer holds, with the number of REFs sent for each. A
 *   local object is entered when a value naming it is queued for sending, and leaves
 *   when the peer's RELEASE brings its count to zero or the connection closes; the
 *   table holds one reference on it meanwhile.
 * - imports: the peer's objects we hold proxies for, with the number of REFs received,
 *   which the proxy gives back in a RELEASE when its last reference goes. The table
 *   does not keep the proxy alive; a proxy that is dying while a new REF for its id
 *   arrives is replaced, and its count released at once.
 */
#ifndef TETHER_OBJECT_H
#define TETHER_OBJECT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codec/frame.h"
#include "conn/ioloop.h"
#include "rpc/mainq.h"
#include "tether.h"
#include "util/buf.h"

struct tether__endpoint;

struct tether_object {
    atomic_uint refs;
    bool remote;
    uint64_t id;
    /* Local objects. */
    struct tether__endpoint *ep; /* a reference */
    const tether_class *cls;
    void *userdata;
    union {
        tether__work work; /* MAIN release */
        tether__task task; /* POOL release (conn/pool.h) */
    } release;
    /* Proxies. */
    tether_conn *conn; /* a reference */
    char type_name[];  /* the type name the owner sent */
};

/* One object a value names, at the byte offset of its REF ext in the value. */
typedef struct tether__objref {
    size_t off;
    tether_object *obj; /* a reference */
} tether__objref;

typedef struct tether__objvec {
    tether__objref *v;
    size_t n, cap;
} tether__objvec;

#define TETHER__OBJVEC_INIT ((tether__objvec){NULL, 0, 0})

/* Append (off, obj), taking a new reference to obj. Returns 0 or -ENOMEM. */
int tether__objvec_push(tether__objvec *vec, size_t off, tether_object *obj);
/* Release every reference and the array. */
void tether__objvec_clear(tether__objvec *vec);

/* Append obj as a REF ext: [0, id, class name] for a local object, [1, id, type] for a
 * proxy (it goes back to its owner). Returns 0, -ENOMEM, -EMSGSIZE. */
int tether__ref_encode(tether__buf *out, const tether_object *obj);

/* A conn's object table: id -> (object, count), chained hash. */
typedef struct tether__idnode {
    struct tether__idnode *next;
    uint64_t id;
    tether_object *obj;
    uint64_t count;
} tether__idnode;

typedef struct tether__idmap {
    tether__idnode **slots; /* NULL until first use */
    uint32_t mask;
    uint32_t count;
} tether__idmap;

/* Per-connection state, embedded in tether_conn; every field guarded by its lock. */
typedef struct tether__conn_objects {
    tether__idmap exports, imports;
    uint64_t *release_ids, *release_counts; /* RELEASE batch not sent yet */
    size_t release_n, release_cap;
    bool release_posted;
    tether__task release_task;
} tether__conn_objects;

/*
 * Received bytes [p, p+len) (a value of a frame from c, checked, in memory of our own):
 * resolve its REFs into vec, with offsets relative to p. A REF owned by the peer becomes
 * a proxy (counted in imports), one owned by us the local object it names. Then every
 * REF's owner is flipped in place to our point of view, the one values are sent with
 * (0: ours, 1: the peer's), so a value passed on unchanged names the same objects.
 * Returns 0, -ENOMEM, or -ENOENT when it names an object of ours that the connection
 * does not hold (message in err).
 */
int tether__conn_bind_refs(tether_conn *c, uint8_t *p, size_t len, tether__objvec *vec,
                           char *err, size_t errlen);

/* Objects of one value, or of a caller's array, in order (borrowed). */
typedef struct tether__objlist {
    tether_object *const *objs;
    size_t n;
} tether__objlist;
/* The objects v holds (none for NULL). */
tether__objlist tether__objlist_of(const tether_value *v);
/*
 * Account for sending these objects on c: each local object once more in exports;
 * proxies must be c's own. Call before the frame is queued; undo with
 * tether__conn_unexport_lists if it is not. Returns 0, -ENOTCONN, -EINVAL (a proxy of
 * another connection), -ENOMEM; nothing is counted then.
 */
int tether__conn_export_lists(tether_conn *c, const tether__objlist *lists, size_t nlists);
void tether__conn_unexport_lists(tether_conn *c, const tether__objlist *lists, size_t nlists);
/* The local object exported on c as id, a new reference; NULL if none. */
tether_object *tether__conn_find_export(tether_conn *c, uint64_t id);

/* A RELEASE frame arrived. */
void tether__conn_on_release(tether_conn *c, const tether__frame *f);

/* The connection closed (or is freed): every reference that crossed it is released. */
void tether__conn_drop_objects(tether_conn *c);

/* The method of obj's class called name, or its fallback: 0 and the handler and
 * context, or -ENOENT. "__tether_describe__" finds tether__describe_handler. */
int tether__object_method(const tether_object *obj, const char *name, size_t len,
                          tether_handler_fn *ret_handler, tether_context *ret_context);

/* Make a local object owned by ep. */
int tether__object_new(struct tether__endpoint *ep, const tether_class *cls, void *userdata,
                       tether_object **ret);

#endif
