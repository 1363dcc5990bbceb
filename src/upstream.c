/*
 * upstream.c - resolving the upstream's name to addresses, a shared cache
 * of the answers, and the addresses to skip for a while (see upstream.h).
 *
 * Three kinds of object.  A cache entry (a static table, so its address
 * never changes) holds one name's addresses and, while a lookup for it is
 * in flight, that lookup.  A lookup is one uv_getaddrinfo on the loop of
 * the request that started it; it outlives every request (cancelling one
 * only takes it off the lookup's waiters) and frees itself when libuv is
 * done.  A request belongs to one caller on one loop: it is answered
 * through its own uv_async, so the answer always comes later and on the
 * caller's loop, whichever loop's lookup produced it, and it frees itself
 * once that handle has closed.
 *
 * Every shared field is guarded by upstream_lock.  uv_async_send() is
 * called with it held, so a request cannot be cancelled (and freed) between
 * being taken off the waiters and being signalled.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/upstream.h"

struct upstream_lookup;

struct rl_upstream_req {
    uv_async_t async;
    rl_upstream_resolved_cb cb; /* NULL once cancelled or answered */
    void *arg;
    uint16_t port;
    struct upstream_lookup *lookup; /* waiting on it (under the lock) */
    struct rl_upstream_req *next;   /* the lookup's next waiter */
    int status;
    struct rl_upstream_addrs addrs;
};

struct upstream_entry {
    char host[256]; /* "" for a free slot */
    uint64_t expires_ns;
    struct rl_upstream_addrs addrs; /* ports 0; n == 0 until a lookup succeeded */
    struct upstream_lookup *pending;
};

struct upstream_lookup {
    uv_getaddrinfo_t gai;
    struct upstream_entry *entry; /* NULL: no slot was free, nothing is cached */
    struct rl_upstream_req *waiters;
};

struct upstream_broken {
    struct sockaddr_storage sa;
    uint64_t until_ns; /* 0: free */
};

static pthread_mutex_t upstream_lock = PTHREAD_MUTEX_INITIALIZER;
static struct upstream_entry upstream_cache[RL_RESOLVE_CACHE_ENTRIES];
static struct upstream_broken upstream_broken[RL_BROKEN_ADDR_MAX];

#define UPSTREAM_NS_PER_MS 1000000ULL

/* ---- addresses -------------------------------------------------------- */

void
rl_upstream_interleave(struct rl_upstream_addrs *a)
{
    struct sockaddr_storage fam[2][RL_UPSTREAM_ADDRS_MAX];
    size_t nfam[2] = {0, 0}, n = 0;

    if (a->n < 2)
        return;
    /* fam[0]: the family of the first (preferred) address, fam[1]: the
     * other, each in the original order. */
    for (size_t i = 0; i < a->n; i++) {
        int f = a->a[i].ss_family == a->a[0].ss_family ? 0 : 1;

        fam[f][nfam[f]++] = a->a[i];
    }
    for (size_t i = 0; n < a->n; i++) {
        if (i < nfam[0])
            a->a[n++] = fam[0][i];
        if (i < nfam[1])
            a->a[n++] = fam[1][i];
    }
}

void
rl_upstream_set_port(struct rl_upstream_addrs *a, uint16_t port)
{
    for (size_t i = 0; i < a->n; i++) {
        if (a->a[i].ss_family == AF_INET)
            ((struct sockaddr_in *)&a->a[i])->sin_port = htons(port);
        else if (a->a[i].ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&a->a[i])->sin6_port = htons(port);
    }
}

static bool
upstream_same_addr(const struct sockaddr_storage *x, const struct sockaddr_storage *y)
{
    if (x->ss_family != y->ss_family)
        return false;
    if (x->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)x;
        const struct sockaddr_in *b = (const struct sockaddr_in *)y;

        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    if (x->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)x;
        const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)y;

        return a->sin6_port == b->sin6_port && a->sin6_scope_id == b->sin6_scope_id &&
               memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
    }
    return false;
}

/* ---- broken addresses ------------------------------------------------- */

void
rl_upstream_mark_broken(const struct sockaddr_storage *sa)
{
    uint64_t now = uv_hrtime();
    struct upstream_broken *slot = NULL;

    pthread_mutex_lock(&upstream_lock);
    for (size_t i = 0; i < RL_BROKEN_ADDR_MAX; i++) {
        struct upstream_broken *b = &upstream_broken[i];

        if (b->until_ns != 0 && upstream_same_addr(&b->sa, sa)) {
            slot = b;
            break;
        }
        /* Else the first free or expired slot, else the one expiring first. */
        if (slot == NULL || (slot->until_ns > now && b->until_ns < slot->until_ns))
            slot = b;
    }
    slot->sa = *sa;
    slot->until_ns = now + (uint64_t)RL_BROKEN_ADDR_MS * UPSTREAM_NS_PER_MS;
    pthread_mutex_unlock(&upstream_lock);
}

void
rl_upstream_mark_ok(const struct sockaddr_storage *sa)
{
    pthread_mutex_lock(&upstream_lock);
    for (size_t i = 0; i < RL_BROKEN_ADDR_MAX; i++)
        if (upstream_broken[i].until_ns != 0 && upstream_same_addr(&upstream_broken[i].sa, sa))
            upstream_broken[i].until_ns = 0;
    pthread_mutex_unlock(&upstream_lock);
}

bool
rl_upstream_is_broken(const struct sockaddr_storage *sa)
{
    uint64_t now = uv_hrtime();
    bool broken = false;

    pthread_mutex_lock(&upstream_lock);
    for (size_t i = 0; i < RL_BROKEN_ADDR_MAX && !broken; i++)
        broken =
            upstream_broken[i].until_ns > now && upstream_same_addr(&upstream_broken[i].sa, sa);
    pthread_mutex_unlock(&upstream_lock);
    return broken;
}

void
rl_upstream_reset(void)
{
    pthread_mutex_lock(&upstream_lock);
    for (size_t i = 0; i < RL_RESOLVE_CACHE_ENTRIES; i++)
        if (upstream_cache[i].pending == NULL)
            memset(&upstream_cache[i], 0, sizeof(upstream_cache[i]));
    memset(upstream_broken, 0, sizeof(upstream_broken));
    pthread_mutex_unlock(&upstream_lock);
}

/* ---- requests --------------------------------------------------------- */

static void
upstream_req_closed(uv_handle_t *h)
{
    free(h->data);
}

/* On the request's own loop: the answer is there. */
static void
upstream_on_async(uv_async_t *async)
{
    struct rl_upstream_req *req = async->data;
    rl_upstream_resolved_cb cb = req->cb;

    req->cb = NULL;
    uv_close((uv_handle_t *)&req->async, upstream_req_closed);
    if (cb != NULL)
        cb(req->arg, req->status, &req->addrs);
}

/* Under the lock: gives req its answer and wakes its loop. */
static void
upstream_answer(struct rl_upstream_req *req, int status, const struct rl_upstream_addrs *addrs,
                bool cached)
{
    req->status = status;
    req->addrs.n = 0;
    if (status == 0) {
        req->addrs = *addrs;
        req->addrs.cached = cached;
        rl_upstream_set_port(&req->addrs, req->port);
    }
    req->lookup = NULL;
    uv_async_send(&req->async);
}

static void
upstream_on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    struct upstream_lookup *lk = gai->data;
    struct rl_upstream_addrs addrs;

    memset(&addrs, 0, sizeof(addrs));
    if (status == 0) {
        for (struct addrinfo *ai = res; ai != NULL && addrs.n < RL_UPSTREAM_ADDRS_MAX;
             ai = ai->ai_next) {
            bool dup = false;

            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            if (ai->ai_addrlen > sizeof(addrs.a[0]))
                continue;
            memset(&addrs.a[addrs.n], 0, sizeof(addrs.a[0]));
            memcpy(&addrs.a[addrs.n], ai->ai_addr, ai->ai_addrlen);
            for (size_t i = 0; i < addrs.n && !dup; i++)
                dup = upstream_same_addr(&addrs.a[i], &addrs.a[addrs.n]);
            if (!dup)
                addrs.n++;
        }
        if (addrs.n == 0)
            status = UV_EAI_NODATA;
    }
    uv_freeaddrinfo(res);
    rl_upstream_interleave(&addrs);
    rl_upstream_set_port(&addrs, 0);

    pthread_mutex_lock(&upstream_lock);
    if (lk->entry != NULL) {
        lk->entry->pending = NULL;
        if (status == 0) {
            lk->entry->addrs = addrs;
            lk->entry->expires_ns =
                uv_hrtime() + (uint64_t)RL_RESOLVE_CACHE_MS * UPSTREAM_NS_PER_MS;
        }
    }
    while (lk->waiters != NULL) {
        struct rl_upstream_req *req = lk->waiters;

        lk->waiters = req->next;
        upstream_answer(req, status, &addrs, false);
    }
    pthread_mutex_unlock(&upstream_lock);
    free(lk);
}

/* Under the lock: the entry for host, a free one, or the one that expired
 * first; NULL if every slot has a lookup in flight. */
static struct upstream_entry *
upstream_slot(const char *host)
{
    struct upstream_entry *slot = NULL;

    for (size_t i = 0; i < RL_RESOLVE_CACHE_ENTRIES; i++) {
        struct upstream_entry *e = &upstream_cache[i];

        if (strcmp(e->host, host) == 0)
            return e;
        if (e->pending != NULL)
            continue;
        if (slot == NULL || e->host[0] == '\0' ||
            (slot->host[0] != '\0' && e->expires_ns < slot->expires_ns))
            slot = e;
    }
    if (slot != NULL) {
        memset(slot, 0, sizeof(*slot));
        snprintf(slot->host, sizeof(slot->host), "%s", host);
    }
    return slot;
}

struct rl_upstream_req *
rl_upstream_resolve(uv_loop_t *loop, const struct rl_upstream_conf *u, rl_upstream_resolved_cb cb,
                    void *arg, int *err)
{
    struct rl_upstream_req *req = calloc(1, sizeof(*req));
    struct upstream_lookup *lk = NULL;
    struct upstream_entry *e;
    struct addrinfo hints;
    uint64_t now = uv_hrtime();
    int rc;

    if (req == NULL) {
        *err = RL_E_NOMEM;
        return NULL;
    }
    if (strlen(u->host) >= sizeof(upstream_cache[0].host)) {
        free(req);
        *err = UV_EINVAL;
        return NULL;
    }
    rc = uv_async_init(loop, &req->async, upstream_on_async);
    if (rc < 0) {
        free(req);
        *err = rc;
        return NULL;
    }
    req->async.data = req;
    req->cb = cb;
    req->arg = arg;
    req->port = u->port;

    pthread_mutex_lock(&upstream_lock);
    e = upstream_slot(u->host);
    if (e != NULL && e->pending == NULL && e->addrs.n > 0 && e->expires_ns > now) {
        upstream_answer(req, 0, &e->addrs, true);
        pthread_mutex_unlock(&upstream_lock);
        return req;
    }
    if (e != NULL && e->pending != NULL) {
        /* One lookup per name: wait for the one in flight. */
        req->lookup = e->pending;
        req->next = e->pending->waiters;
        e->pending->waiters = req;
        pthread_mutex_unlock(&upstream_lock);
        return req;
    }
    lk = calloc(1, sizeof(*lk));
    if (lk == NULL) {
        pthread_mutex_unlock(&upstream_lock);
        *err = RL_E_NOMEM;
        goto fail;
    }
    lk->entry = e;
    lk->gai.data = lk;
    lk->waiters = req;
    req->lookup = lk;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = uv_getaddrinfo(loop, &lk->gai, upstream_on_resolved, u->host, NULL, &hints);
    if (rc < 0) {
        req->lookup = NULL;
        pthread_mutex_unlock(&upstream_lock);
        free(lk);
        *err = rc;
        goto fail;
    }
    if (e != NULL)
        e->pending = lk;
    pthread_mutex_unlock(&upstream_lock);
    return req;

fail:
    req->cb = NULL;
    uv_close((uv_handle_t *)&req->async, upstream_req_closed);
    return NULL;
}

void
rl_upstream_cancel(struct rl_upstream_req *req)
{
    pthread_mutex_lock(&upstream_lock);
    if (req->lookup != NULL) {
        struct rl_upstream_req **pp = &req->lookup->waiters;

        while (*pp != NULL && *pp != req)
            pp = &(*pp)->next;
        if (*pp == req)
            *pp = req->next;
        req->lookup = NULL;
    }
    pthread_mutex_unlock(&upstream_lock);
    req->cb = NULL;
    req->arg = NULL;
    if (!uv_is_closing((uv_handle_t *)&req->async))
        uv_close((uv_handle_t *)&req->async, upstream_req_closed);
}
