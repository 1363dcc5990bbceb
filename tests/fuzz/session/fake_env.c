/*
 * fake_env.c - conn.h, the tls.h accessors, snapshot.h and upstream.h in
 * memory, for the session fuzzer.  See fake_env.h and README.md.
 *
 * The rules of the real conn (conn.c) that the session relies on are kept:
 * no event from inside an rl_conn_* call, nothing but CLOSED after close or
 * abort, CLOSED last and the conn freed right after it, EOF only after a
 * DATA event offered every buffered byte, resume and consumed act on the
 * next loop iteration.  Where the real conn would merely return an error
 * for something the session must never do (start TLS with plaintext
 * buffered, write after closing, write during a handshake), the fake
 * reports a finding.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_env.h"
#include "relabel/auth.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/snapshot.h"
#include "relabel/tls.h"

struct fake_env fake;

struct rl_tls {
    int unused;
};
struct rl_tls_conf {
    int unused;
};
struct rl_upstream_req {
    rl_upstream_resolved_cb cb;
    void *arg;
};

static struct rl_tls fake_tls_engine;
static struct rl_tls_conf fake_brand_conf, fake_up_conf;

/* The fuzzer's own stderr, kept while the session's log is redirected. */
int fake_stderr_fd = 2;

void
fake_fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof(msg) - 2)
        n = (int)sizeof(msg) - 2;
    msg[n++] = '\n';
    if (fake_stderr_fd != 2)
        dup2(fake_stderr_fd, 2);
    if (write(2, "fuzz_session: INVARIANT VIOLATED: ", 34) < 0 || write(2, msg, (size_t)n) < 0)
        abort();
    abort();
}

void
fake_reset(void)
{
    memset(&fake, 0, sizeof(fake));
}

void
fake_enter(void)
{
    if (fake.on_enter != NULL)
        fake.on_enter();
}

void
fake_leave(void)
{
    if (fake.on_leave != NULL)
        fake.on_leave();
}

static void
fake_unlink(struct rl_conn *c)
{
    for (struct rl_conn **pp = &fake.conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            return;
        }
    }
    fake_fail("conn %u not in the list", c->id);
}

void
fake_emit(struct rl_conn *c, enum rl_conn_event ev)
{
    if (c->closing && ev != RL_CONN_CLOSED)
        fake_fail("event %s delivered after close (driver bug)", rl_conn_event_str(ev));
    if (fake.emit_depth++ > 0)
        fake_fail("re-entrant event delivery (driver bug)");
    fake_enter();
    c->cb(c, ev, c->arg);
    fake_leave();
    fake.emit_depth--;
    if (ev == RL_CONN_CLOSED) {
        fake_unlink(c);
        if (fake.on_free != NULL)
            fake.on_free(c);
        rl_buf_free(&c->in);
        rl_buf_free(&c->wire);
        rl_buf_free(&c->up.rx);
        free(c);
    }
}

const char *
rl_conn_event_str(enum rl_conn_event ev)
{
    switch (ev) {
#define FAKE_EVENT_STR(name)                                                                       \
    case RL_CONN_##name:                                                                           \
        return #name;
        RL_CONN_EVENT_MAP(FAKE_EVENT_STR)
#undef FAKE_EVENT_STR
    }
    return "?";
}

bool
fake_readable(const struct rl_conn *c)
{
    return c->connected && !c->closing && !c->paused && !c->tls_pending;
}

/* conn_pump: bytes into `in` as room allows, DATA, then EOF once the wire
 * is empty. */
void
fake_pump(struct rl_conn *c)
{
    size_t n;

    if (!fake_readable(c))
        return;
    n = rl_buf_len(&c->wire);
    if (n > rl_buf_room(&c->in))
        n = rl_buf_room(&c->in);
    if (n > 0) {
        if (rl_buf_append(&c->in, rl_buf_data(&c->wire), n) != 0)
            fake_fail("fake: cannot buffer input");
        rl_buf_consume(&c->wire, n);
        c->bytes_in += n;
    }
    if (rl_buf_len(&c->in) > 0) {
        fake_emit(c, RL_CONN_DATA);
        if (c->closing)
            return;
    }
    if (!c->paused && !c->eof_sent && c->peer_eof && rl_buf_len(&c->wire) == 0) {
        c->eof_sent = true;
        fake_emit(c, RL_CONN_EOF);
    }
}

void
fake_peer_send(struct rl_conn *c, const void *p, size_t n)
{
    if (c->closing || c->peer_eof || n == 0)
        return;
    if (rl_buf_append(&c->wire, p, n) != 0)
        return; /* the peer's socket buffer is full: the bytes are lost to it */
    fake_pump(c);
}

void
fake_peer_eof(struct rl_conn *c)
{
    if (c->closing || c->peer_eof)
        return;
    c->peer_eof = true;
    fake_pump(c);
}

size_t
fake_pending_list(struct fake_pending *out, size_t cap)
{
    size_t n = 0;

#define FAKE_ADD(k, conn)                                                                          \
    do {                                                                                           \
        if (n < cap)                                                                               \
            out[n++] = (struct fake_pending){.kind = (k), .c = (conn)};                            \
    } while (0)
    for (struct rl_conn *c = fake.conns; c != NULL; c = c->next) {
        if (c->closing) {
            FAKE_ADD(PEND_CLOSED, c);
            continue;
        }
        if (c->connect_pending)
            FAKE_ADD(PEND_CONNECT, c);
        if (c->tls_pending)
            FAKE_ADD(PEND_TLS, c);
        if (c->kick_pending)
            FAKE_ADD(PEND_KICK, c);
        if (c->drained_pending)
            FAKE_ADD(PEND_DRAINED, c);
    }
    if (fake.resolve != NULL)
        FAKE_ADD(PEND_RESOLVE, NULL);
#undef FAKE_ADD
    return n;
}

static void
fake_deliver_resolve(unsigned outcome)
{
    struct rl_upstream_req *req = fake.resolve;
    struct rl_upstream_addrs addrs;
    rl_upstream_resolved_cb cb = req->cb;
    void *arg = req->arg;
    int status = 0;

    fake.resolve = NULL;
    free(req); /* the real request frees itself before calling back */
    memset(&addrs, 0, sizeof(addrs));
    switch (outcome % 4) {
    case 0:
        status = UV_EAI_NONAME;
        break;
    case 3:
        fake.connect_fail_next = true;
        /* fall through */
    case 2:
        addrs.n = 2;
        break;
    default:
        addrs.n = 1;
        break;
    }
    for (size_t i = 0; i < addrs.n; i++) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&addrs.a[i];

        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)(465 + i));
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    if (fake.emit_depth++ > 0)
        fake_fail("re-entrant resolve callback (driver bug)");
    fake_enter();
    cb(arg, status, status == 0 ? &addrs : NULL);
    fake_leave();
    fake.emit_depth--;
}

void
fake_pending_deliver(const struct fake_pending *p, unsigned outcome)
{
    struct rl_conn *c = p->c;

    switch (p->kind) {
    case PEND_RESOLVE:
        fake_deliver_resolve(outcome);
        return;
    case PEND_CLOSED:
        fake_emit(c, RL_CONN_CLOSED);
        return;
    case PEND_CONNECT:
        c->connect_pending = false;
        if (outcome % 4 == 0) {
            c->err = UV_ECONNREFUSED;
            fake_emit(c, RL_CONN_ERROR);
        } else {
            c->connected = true;
            fake_emit(c, RL_CONN_CONNECTED);
            fake_pump(c);
        }
        return;
    case PEND_TLS:
        c->tls_pending = false;
        if (c->tls_garbage || c->peer_eof || outcome % 8 == 0) {
            c->err = c->peer_eof ? RL_E_TLS_TRUNCATED : RL_E_TLS;
            rl_buf_reset(&c->wire, 0);
            fake_emit(c, RL_CONN_ERROR);
            return;
        }
        c->tls_on = true;
        fake_emit(c, RL_CONN_TLS_READY);
        /* Application data may have arrived in the same flight. */
        fake_pump(c);
        return;
    case PEND_KICK:
        c->kick_pending = false;
        fake_pump(c);
        return;
    case PEND_DRAINED:
        c->drained_pending = false;
        fake_emit(c, RL_CONN_DRAINED);
        return;
    }
}

/* ---- conn.h ------------------------------------------------------------ */

struct rl_conn *
rl_conn_new(uv_loop_t *loop, rl_conn_event_cb cb, void *arg)
{
    struct rl_conn *c = calloc(1, sizeof(*c));

    (void)loop;
    if (c == NULL)
        return NULL;
    c->id = fake.nconns_made++;
    c->cb = cb;
    c->arg = arg;
    rl_buf_init(&c->in, RL_CONN_IN_MAX);
    rl_buf_init(&c->wire, 1u << 20);
    rl_buf_init(&c->up.rx, 1u << 22);
    c->up.at_line_start = true;
    c->next = fake.conns;
    fake.conns = c;
    snprintf(c->peer, sizeof(c->peer), "-");
    return c;
}

int
rl_conn_accept(struct rl_conn *c, uv_stream_t *server)
{
    (void)server;
    c->role = FAKE_CLIENT;
    c->connected = true;
    snprintf(c->peer, sizeof(c->peer), "198.51.100.7:40000");
    return 0;
}

int
rl_conn_connect(struct rl_conn *c, const struct sockaddr *sa)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    char ip[INET_ADDRSTRLEN] = "?";

    if (c->role != FAKE_UNKNOWN || c->connect_pending || c->connected)
        fake_fail("rl_conn_connect on a conn already in use");
    c->role = FAKE_UPSTREAM;
    /* The modelled server speaks first. */
    c->up.fifo[0] = K_GREETING;
    c->up.fifo_len = 1;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
    if (fake.connect_fail_next) {
        fake.connect_fail_next = false;
        return UV_ENETUNREACH;
    }
    c->connect_pending = true;
    return 0;
}

int
rl_conn_start_tls(struct rl_conn *c, const struct rl_tls_conf *conf, const char *hostname)
{
    (void)conf;
    if (c->closing)
        fake_fail("rl_conn_start_tls on a closing conn %u", c->id);
    if (c->tls_on || c->tls_pending)
        fake_fail("rl_conn_start_tls twice on conn %u", c->id);
    if (c->role == FAKE_CLIENT && hostname != NULL)
        fake_fail("client leg started as a TLS client");
    if (c->role == FAKE_UPSTREAM && hostname == NULL)
        fake_fail("upstream leg started as a TLS server");
    if (rl_buf_len(&c->in) > 0)
        fake_fail("STARTTLS boundary: rl_conn_start_tls on conn %u (%s) with %zu plaintext "
                  "bytes in `in`",
                  c->id, c->role == FAKE_CLIENT ? "client" : "upstream", rl_buf_len(&c->in));
    c->tls_pending = true;
    /* Plaintext already on the wire would be read as handshake records. */
    c->tls_garbage = rl_buf_len(&c->wire) > 0;
    return 0;
}

int
rl_conn_start_tls_after_proxy(struct rl_conn *c, const struct rl_tls_conf *conf)
{
    if (c->role != FAKE_CLIENT)
        fake_fail("rl_conn_start_tls_after_proxy on an upstream leg");
    if (c->tls_on || c->tls_pending)
        fake_fail("rl_conn_start_tls_after_proxy twice on conn %u", c->id);
    /* The bytes after the header are the start of the handshake. */
    rl_buf_consume(&c->in, rl_buf_len(&c->in));
    return rl_conn_start_tls(c, conf, NULL);
}

struct rl_buf *
rl_conn_in(struct rl_conn *c)
{
    return &c->in;
}

int
rl_conn_write(struct rl_conn *c, const void *p, size_t n)
{
    if (c->closing)
        fake_fail("write of %zu bytes to conn %u after close/abort", n, c->id);
    if (c->tls_pending)
        fake_fail("write of %zu bytes to conn %u during its TLS handshake", n, c->id);
    if (c->role == FAKE_UNKNOWN || (c->role == FAKE_UPSTREAM && !c->connected))
        fake_fail("write to conn %u before it is connected", c->id);
    /* Like the real conn: a failed write is sticky, every later one fails. */
    if (c->fail_write)
        return RL_E_NOMEM;
    c->bytes_out += n;
    if (fake.on_write != NULL)
        fake.on_write(c, p, n);
    return 0;
}

bool
rl_conn_write_blocked(struct rl_conn *c)
{
    if (c->blocked)
        c->hiwat_seen = true;
    return c->blocked;
}

void
rl_conn_pause(struct rl_conn *c)
{
    c->paused = true;
}

void
rl_conn_resume(struct rl_conn *c)
{
    if (!c->paused || c->closing)
        return;
    c->paused = false;
    c->kick_pending = true;
}

bool
rl_conn_paused(const struct rl_conn *c)
{
    return c->paused;
}

void
rl_conn_consumed(struct rl_conn *c)
{
    if (c->paused || c->closing)
        return;
    /* Reading restarts if it had stopped for lack of room (and only if
     * there is room now: a full `in` stays full until the owner eats). */
    if (rl_buf_len(&c->wire) > 0 && rl_buf_room(&c->in) > 0)
        c->kick_pending = true;
}

void
rl_conn_set_timeout(struct rl_conn *c, unsigned ms)
{
    if (c->closing)
        return;
    c->timeout_ms = ms;
}

void
rl_conn_set_deadline(struct rl_conn *c, unsigned ms)
{
    rl_conn_set_timeout(c, ms);
}

static void
fake_close(struct rl_conn *c)
{
    c->closing = true;
    c->connect_pending = c->tls_pending = c->kick_pending = c->drained_pending = false;
}

void
rl_conn_close(struct rl_conn *c)
{
    if (c->closing)
        return;
    fake_close(c);
}

void
rl_conn_abort(struct rl_conn *c)
{
    fake_close(c);
}

bool
rl_conn_closing(const struct rl_conn *c)
{
    return c->closing;
}

int
rl_conn_error(const struct rl_conn *c)
{
    return c->err;
}

const char *
rl_conn_strerror(const struct rl_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->err ? rl_strerror(c->err) : "no error");
    return buf;
}

const char *
rl_conn_tls_failure(const struct rl_conn *c)
{
    return c->err == 0 ? "timeout" : "protocol";
}

const char *
rl_conn_peer(const struct rl_conn *c)
{
    return c->peer;
}

const struct sockaddr_storage *
rl_conn_peer_addr(const struct rl_conn *c)
{
    static struct sockaddr_storage loopback;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&loopback;

    (void)c;
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(0x7f000001);
    return &loopback;
}

struct rl_tls *
rl_conn_tls(const struct rl_conn *c)
{
    return c->tls_on || c->tls_pending ? &fake_tls_engine : NULL;
}

unsigned long long
rl_conn_bytes_in(const struct rl_conn *c)
{
    return c->bytes_in;
}

unsigned long long
rl_conn_bytes_out(const struct rl_conn *c)
{
    return c->bytes_out;
}

/* ---- tls.h accessors --------------------------------------------------- */

const char *
rl_tls_version(const struct rl_tls *t)
{
    (void)t;
    return "TLSv1.2";
}

const char *
rl_tls_cipher(const struct rl_tls *t)
{
    (void)t;
    return "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256";
}

bool
rl_tls_resumed(const struct rl_tls *t)
{
    (void)t;
    return false;
}

const char *
rl_tls_sni(const struct rl_tls *t)
{
    (void)t;
    return fake.sni_null ? NULL : "smtp.example.com";
}

size_t
rl_tls_brand(const struct rl_tls *t)
{
    (void)t;
    return fake.brand;
}

/* ---- snapshot.h -------------------------------------------------------- */

struct rl_snapshot *
rl_snapshot_ref(struct rl_snapshot *snap)
{
    snap->refs++;
    return snap;
}

void
rl_snapshot_unref(struct rl_snapshot *snap)
{
    if (snap == NULL)
        return;
    if (--snap->refs <= 0)
        fake_fail("snapshot reference count dropped to %d", snap->refs);
}

struct rl_tls_conf *
rl_snapshot_listener_tls(const struct rl_snapshot *snap, const struct rl_listener_conf *lc)
{
    (void)snap;
    (void)lc;
    return &fake_brand_conf;
}

struct rl_tls_conf *
rl_snapshot_upstream_tls(const struct rl_snapshot *snap, const struct rl_upstream_conf *up)
{
    (void)snap;
    (void)up;
    return &fake_up_conf;
}

/* ---- upstream.h -------------------------------------------------------- */

struct rl_upstream_req *
rl_upstream_resolve(uv_loop_t *loop, const struct rl_upstream_conf *u, rl_upstream_resolved_cb cb,
                    void *arg, int *err)
{
    struct rl_upstream_req *req;

    (void)loop;
    (void)u;
    if (fake.resolve != NULL)
        fake_fail("a second resolve while one is pending");
    if (fake.resolve_fail_start) {
        *err = UV_ENOMEM;
        return NULL;
    }
    req = calloc(1, sizeof(*req));
    if (req == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    req->cb = cb;
    req->arg = arg;
    fake.resolve = req;
    return req;
}

/* Ports and broken addresses: the port is set for real (the session
 * connects to what it gets); no address is ever broken here, so the
 * session's walk over addresses and fallback ports is what the fuzzer's
 * connect failures make it. */
void
rl_upstream_set_port(struct rl_upstream_addrs *a, uint16_t port)
{
    for (size_t i = 0; i < a->n; i++)
        ((struct sockaddr_in *)&a->a[i])->sin_port = htons(port);
}

void
rl_upstream_interleave(struct rl_upstream_addrs *a)
{
    (void)a;
}

void
rl_upstream_mark_broken(const struct sockaddr_storage *sa)
{
    (void)sa;
}

void
rl_upstream_mark_ok(const struct sockaddr_storage *sa)
{
    (void)sa;
}

bool
rl_upstream_is_broken(const struct sockaddr_storage *sa)
{
    (void)sa;
    return false;
}

void
rl_upstream_reset(void)
{
}

void
rl_upstream_cancel(struct rl_upstream_req *req)
{
    if (req == NULL || req != fake.resolve)
        fake_fail("rl_upstream_cancel of an unknown request");
    fake.resolve = NULL;
    free(req);
}

/* ---- auth.h ------------------------------------------------------------- */

/* The fuzz config's brands have no users (AUTH is relayed), so the session
 * never starts a password check; one would be a finding. */
struct rl_auth_req *
rl_auth_verify(struct rl_ctx *ctx, const char *hash, const char *password, size_t plen,
               unsigned fail_delay_ms, rl_auth_cb cb, void *arg)
{
    (void)ctx;
    (void)hash;
    (void)password;
    (void)plen;
    (void)fail_delay_ms;
    (void)cb;
    (void)arg;
    fake_fail("a password check for a brand without users");
    return NULL;
}

void
rl_auth_cancel(struct rl_auth_req *req)
{
    (void)req;
    fake_fail("rl_auth_cancel without a password check");
}
