/*
 * conn.c - one leg of a session over libuv, with optional TLS.
 *
 * Owns a uv_tcp_t, an idle timer, a "kick" idle handle, the plaintext input
 * buffer `in`, the plaintext output buffer `out` (used before TLS starts and
 * on plaintext legs), `inflight` (owned by libuv between uv_write and its
 * callback) and the rl_tls engine it drives.  Knows nothing about SMTP.
 *
 * Invariants:
 *  - one uv_write in flight; the buffer being written is `inflight`, swapped
 *    with the queue (out, or the TLS engine's cout), never copied;
 *  - reading stops as soon as the buffer it would read into is full, or the
 *    owner paused: a slow consumer never makes memory grow;
 *  - every event emission is followed by a check of `closing`: the owner may
 *    have closed the conn from inside its callback;
 *  - memory is freed only after the last handle's close callback (libuv);
 *  - an idle leg holds no buffer storage: `in` is given back once the owner
 *    has consumed it, TLS's cin once mbedTLS has drained it or a read found
 *    nothing, and the write buffers after a small write that left nothing
 *    queued (CONN_QUIET_WRITE).
 */
#include <stdlib.h>
#include <string.h>

#include "relabel/conn.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/tls.h"

/* How long a graceful close may wait for queued bytes to be written. */
#define CONN_LINGER_MS 5000
/* Storage kept by an emptied write buffer; larger bursts are freed. */
#define CONN_BUF_KEEP (64 * 1024)
/* A completed write this small (a reply, a command, a handshake flight)
 * with nothing queued behind it means the leg has gone quiet: its write
 * buffers are given back.  While a message streams, writes are whole
 * records (16 KiB and more) and the two buffers keep being swapped, so
 * they are neither freed nor regrown (regrowing copies). */
#define CONN_QUIET_WRITE 4096

struct rl_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_idle_t kick;
    uv_write_t wreq;
    uv_connect_t creq;
    uv_loop_t *loop;

    rl_conn_event_cb cb;
    void *arg;

    struct rl_tls *tls;
    struct rl_buf in;
    struct rl_buf out;
    struct rl_buf inflight;

    unsigned timeout_ms;
    bool deadline; /* the timer is a deadline: reads do not restart it */
    int err;
    int write_err; /* first failed rl_conn_write(); every later one fails */
    int handles;   /* open handles; freed when it drops to 0 */
    unsigned long long bytes_in;
    unsigned long long bytes_out;

    bool connected;   /* tcp usable */
    bool reading;     /* uv_read_start active */
    bool paused;      /* owner asked us not to read */
    bool peer_eof;    /* TCP EOF from the peer */
    bool eof_sent;    /* RL_CONN_EOF emitted */
    bool hs_done;     /* TLS handshake finished */
    bool writing;     /* a uv_write is in flight */
    bool above_hiwat; /* DRAINED owed once below low water */
    bool closing;
    bool close_started; /* uv_close called */

    char peer[64];
    struct sockaddr_storage peer_ss;
};

static void conn_pump(struct rl_conn *c);
static void conn_flush(struct rl_conn *c);
static void conn_update_reading(struct rl_conn *c);
static void conn_close_handles(struct rl_conn *c);

const char *
rl_conn_event_str(enum rl_conn_event ev)
{
    switch (ev) {
#define RL_CONN_EVENT_STR(name)                                                                    \
    case RL_CONN_##name:                                                                           \
        return #name;
        RL_CONN_EVENT_MAP(RL_CONN_EVENT_STR)
#undef RL_CONN_EVENT_STR
    }
    return "?";
}

static void
conn_emit(struct rl_conn *c, enum rl_conn_event ev)
{
    c->cb(c, ev, c->arg);
}

/* Reports a failure once; the owner is expected to close. */
static void
conn_fail(struct rl_conn *c, int err)
{
    if (c->closing)
        return;
    c->err = err;
    conn_emit(c, RL_CONN_ERROR);
}

static void
conn_on_close(uv_handle_t *h)
{
    struct rl_conn *c = h->data;

    if (--c->handles > 0)
        return;
    /* The engine goes first: mbedtls_ssl_free() still reads the TLS
     * configuration, which the owner may release in its CLOSED callback
     * (the last session of a snapshot replaced by a reload). */
    rl_tls_free(c->tls);
    c->tls = NULL;
    conn_emit(c, RL_CONN_CLOSED);
    rl_buf_free(&c->in);
    rl_buf_free(&c->out);
    rl_buf_free(&c->inflight);
    free(c);
}

static void
conn_on_timer(uv_timer_t *t)
{
    struct rl_conn *c = t->data;

    if (c->closing) {
        /* The linger expired: give up on the queued bytes. */
        conn_close_handles(c);
        return;
    }
    conn_emit(c, RL_CONN_TIMEOUT);
}

static void
conn_on_kick(uv_idle_t *k)
{
    struct rl_conn *c = k->data;

    uv_idle_stop(k);
    conn_pump(c);
}

struct rl_conn *
rl_conn_new(uv_loop_t *loop, rl_conn_event_cb cb, void *arg)
{
    struct rl_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->cb = cb;
    c->arg = arg;
    rl_buf_init(&c->in, RL_CONN_IN_MAX);
    rl_buf_init(&c->out, RL_CONN_OUT_MAX);
    rl_buf_init(&c->inflight, RL_CONN_OUT_MAX);
    /* These cannot fail on a valid loop. */
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    uv_idle_init(loop, &c->kick);
    c->tcp.data = c->timer.data = c->kick.data = c;
    c->wreq.data = c->creq.data = c;
    c->handles = 3;
    strcpy(c->peer, "-");
    return c;
}

static void
conn_set_peer(struct rl_conn *c, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, ntohs(s4->sin_port));
    }
}

int
rl_conn_accept(struct rl_conn *c, uv_stream_t *server)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int rc;

    rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc < 0)
        return rc;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        conn_set_peer(c, (struct sockaddr *)&ss);
        c->peer_ss = ss;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->connected = true;
    conn_update_reading(c);
    return 0;
}

static void
conn_on_connect(uv_connect_t *req, int status)
{
    struct rl_conn *c = req->data;

    if (c->closing)
        return;
    if (status < 0) {
        conn_fail(c, status);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->connected = true;
    conn_emit(c, RL_CONN_CONNECTED);
    if (c->closing)
        return;
    conn_update_reading(c);
    conn_flush(c);
}

int
rl_conn_connect(struct rl_conn *c, const struct sockaddr *sa)
{
    conn_set_peer(c, sa);
    return uv_tcp_connect(&c->creq, &c->tcp, sa, conn_on_connect);
}

/* Puts a fresh TLS engine on the conn. */
static int
conn_tls_attach(struct rl_conn *c, const struct rl_tls_conf *conf, const char *hostname)
{
    if (c->tls != NULL)
        return RL_E_PROTO;
    c->tls = rl_tls_new(conf, hostname);
    if (c->tls == NULL)
        return RL_E_NOMEM;
    c->hs_done = false;
    return 0;
}

int
rl_conn_start_tls(struct rl_conn *c, const struct rl_tls_conf *conf, const char *hostname)
{
    int rc;

    if (rl_buf_len(&c->in) > 0)
        return RL_E_PROTO;
    rc = conn_tls_attach(c, conf, hostname);
    if (rc < 0)
        return rc;
    /* A client speaks first: its hello goes out now.  A server waits. */
    if (hostname != NULL) {
        rc = rl_tls_handshake(c->tls);
        if (rc < 0)
            return rc;
        conn_flush(c);
    }
    conn_update_reading(c);
    return 0;
}

/*
 * The bytes in `in` arrived in the same reads as a PROXY header, before
 * anything was said to the client: on an implicit TLS listener they can
 * only be the start of its handshake, so they move to the engine's
 * ciphertext input as they are.  The handshake is stepped from the loop,
 * not from inside this call, so no event reaches the owner before it
 * returns.
 */
int
rl_conn_start_tls_after_proxy(struct rl_conn *c, const struct rl_tls_conf *conf)
{
    int rc = conn_tls_attach(c, conf, NULL);

    if (rc < 0)
        return rc;
    while (rl_buf_len(&c->in) > 0) {
        size_t avail = 0, n;
        char *p = rl_tls_in_reserve(c->tls, &avail);

        if (p == NULL)
            return RL_E_FULL;
        n = rl_buf_len(&c->in) < avail ? rl_buf_len(&c->in) : avail;
        memcpy(p, rl_buf_data(&c->in), n);
        rl_tls_in_commit(c->tls, n);
        rl_buf_consume(&c->in, n);
    }
    if (c->peer_eof)
        rl_tls_in_eof(c->tls);
    conn_update_reading(c);
    uv_idle_start(&c->kick, conn_on_kick);
    return 0;
}

struct rl_buf *
rl_conn_in(struct rl_conn *c)
{
    return &c->in;
}

static size_t
conn_queued(struct rl_conn *c)
{
    size_t n = rl_buf_len(&c->out) + rl_buf_len(&c->inflight);

    if (c->tls != NULL)
        n += rl_buf_len(rl_tls_out(c->tls));
    return n;
}

int
rl_conn_write(struct rl_conn *c, const void *p, size_t n)
{
    int rc;

    if (c->closing)
        return RL_E_PROTO;
    if (c->write_err != 0)
        return c->write_err; /* sticky: no byte may follow a lost one */
    if (c->tls != NULL && c->hs_done)
        rc = rl_tls_write(c->tls, p, n);
    else
        rc = rl_buf_append(&c->out, p, n);
    if (rc < 0) {
        c->write_err = rc;
        return rc;
    }
    conn_flush(c);
    return 0;
}

bool
rl_conn_write_blocked(struct rl_conn *c)
{
    if (conn_queued(c) > RL_CONN_OUT_HIWAT)
        c->above_hiwat = true;
    return c->above_hiwat;
}

static void
conn_on_write(uv_write_t *req, int status)
{
    struct rl_conn *c = req->data;

    size_t done = rl_buf_len(&c->inflight);

    c->writing = false;
    c->bytes_out += done;
    rl_buf_reset(&c->inflight, CONN_BUF_KEEP);
    if (status < 0) {
        if (c->closing)
            conn_close_handles(c);
        else
            conn_fail(c, status);
        return;
    }
    conn_flush(c);
    if (!c->writing && done <= CONN_QUIET_WRITE) {
        rl_buf_trim(&c->inflight);
        rl_buf_trim(&c->out);
        if (c->tls != NULL)
            rl_buf_trim(rl_tls_out(c->tls));
    }
    if (c->closing)
        return;
    if (c->above_hiwat && conn_queued(c) < RL_CONN_OUT_LOWAT) {
        c->above_hiwat = false;
        conn_emit(c, RL_CONN_DRAINED);
    }
}

/* Starts writing the next queued bytes: plaintext queued before TLS started
 * goes first (the "220 Ready to start TLS" line), then the TLS output. */
static void
conn_flush(struct rl_conn *c)
{
    struct rl_buf *q;
    uv_buf_t b;
    int rc;

    if (c->writing || !c->connected || c->close_started)
        return;
    q = &c->out;
    if (rl_buf_len(q) == 0 && c->tls != NULL)
        q = rl_tls_out(c->tls);
    if (rl_buf_len(q) == 0) {
        if (c->closing)
            conn_close_handles(c);
        return;
    }
    rl_buf_swap(q, &c->inflight);
    b = uv_buf_init(rl_buf_data(&c->inflight), (unsigned)rl_buf_len(&c->inflight));
    rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
    if (rc < 0) {
        rl_buf_reset(&c->inflight, CONN_BUF_KEEP);
        if (c->closing)
            conn_close_handles(c);
        else
            conn_fail(c, rc);
        return;
    }
    c->writing = true;
}

static void
conn_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct rl_conn *c = h->data;
    size_t avail = 0;
    char *p;

    if (c->tls != NULL)
        p = rl_tls_in_reserve(c->tls, &avail);
    else
        p = rl_buf_reserve(&c->in, 16384, &avail);
    /* A NULL buffer makes libuv report UV_ENOBUFS: reading pauses. */
    *buf = uv_buf_init(p, p ? (unsigned)avail : 0);
}

static void
conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct rl_conn *c = s->data;

    if (nread <= 0 && nread != UV_ENOBUFS) {
        /* The buffer conn_on_alloc() handed out got no bytes (EAGAIN, EOF,
         * an error): an empty one is given back. */
        if (c->tls != NULL)
            rl_tls_in_commit(c->tls, 0);
        else
            rl_buf_trim(&c->in);
    }
    if (nread == 0 || c->closing)
        return;
    if (nread == UV_ENOBUFS) {
        c->reading = false;
        uv_read_stop(s);
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF) {
            conn_fail(c, (int)nread);
            return;
        }
        c->peer_eof = true;
        c->reading = false;
        uv_read_stop(s);
        if (c->tls != NULL)
            rl_tls_in_eof(c->tls);
    } else {
        c->bytes_in += (unsigned long long)nread;
        if (c->tls != NULL)
            rl_tls_in_commit(c->tls, (size_t)nread);
        else
            rl_buf_commit(&c->in, (size_t)nread);
        if (c->timeout_ms > 0 && !c->deadline)
            uv_timer_start(&c->timer, conn_on_timer, c->timeout_ms, 0);
    }
    conn_pump(c);
}

/* Reads are wanted when the owner has not paused us, the peer has not ended
 * and there is room for what would arrive. */
static void
conn_update_reading(struct rl_conn *c)
{
    bool want = c->connected && !c->closing && !c->paused && !c->peer_eof;

    if (want) {
        if (c->tls != NULL)
            want = rl_tls_in_room(c->tls);
        else
            want = rl_buf_room(&c->in) > 0;
    }
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* Decrypts what is buffered into `in`.  Returns 0, or an RL_E_TLS* code
 * after any plaintext that preceded it has been stored. */
static int
conn_decrypt(struct rl_conn *c)
{
    for (;;) {
        size_t avail = 0, got = 0;
        char *p = rl_buf_reserve(&c->in, RL_CONN_IN_MAX, &avail);
        int rc;

        if (p == NULL)
            return 0; /* `in` is full: the owner must consume first */
        rc = rl_tls_read(c->tls, p, avail, &got);
        rl_buf_commit(&c->in, got);
        if (rc < 0)
            return rc;
        if (got == 0)
            return 0;
    }
}

/* Moves received bytes as far as they can go: handshake, decryption, the
 * owner.  Called after every read, after resume, after STARTTLS. */
static void
conn_pump(struct rl_conn *c)
{
    int tls_rc = 0;

    if (c->closing)
        return;
    if (c->tls != NULL && !c->hs_done) {
        int rc = rl_tls_handshake(c->tls);

        conn_flush(c);
        if (rc < 0) {
            conn_fail(c, rc);
            return;
        }
        if (rc == RL_TLS_WANT) {
            if (c->peer_eof)
                conn_fail(c, RL_E_TLS_TRUNCATED);
            else
                conn_update_reading(c);
            return;
        }
        c->hs_done = true;
        conn_emit(c, RL_CONN_TLS_READY);
        if (c->closing)
            return;
        /* Application data may have arrived in the same flight. */
    }
    if (c->paused) {
        conn_update_reading(c);
        return;
    }
    if (c->tls != NULL) {
        tls_rc = conn_decrypt(c);
        conn_flush(c); /* alerts */
    }
    if (rl_buf_len(&c->in) > 0) {
        conn_emit(c, RL_CONN_DATA);
        if (c->closing)
            return;
    }
    if (tls_rc < 0 && tls_rc != RL_E_TLS_EOF && tls_rc != RL_E_TLS_TRUNCATED) {
        conn_fail(c, tls_rc);
        return;
    }
    if (!c->paused && !c->eof_sent &&
        (tls_rc == RL_E_TLS_EOF || tls_rc == RL_E_TLS_TRUNCATED ||
         (c->tls == NULL && c->peer_eof))) {
        c->eof_sent = true;
        if (tls_rc == RL_E_TLS_TRUNCATED)
            c->err = tls_rc;
        conn_emit(c, RL_CONN_EOF);
        if (c->closing)
            return;
    }
    rl_buf_trim(&c->in); /* consumed: an idle leg holds no plaintext buffer */
    conn_update_reading(c);
}

void
rl_conn_pause(struct rl_conn *c)
{
    c->paused = true;
    conn_update_reading(c);
}

void
rl_conn_resume(struct rl_conn *c)
{
    if (!c->paused || c->closing)
        return;
    c->paused = false;
    conn_update_reading(c);
    /* Bytes may already be buffered (in `in` or as undecrypted records, or
     * an EOF already seen): libuv will not report them again, so pump on
     * the next loop iteration rather than re-entering the owner now. */
    uv_idle_start(&c->kick, conn_on_kick);
}

void
rl_conn_consumed(struct rl_conn *c)
{
    rl_buf_trim(&c->in);
    if (c->paused || c->closing)
        return;
    conn_update_reading(c);
    if (c->tls != NULL && c->hs_done && rl_tls_pending(c->tls))
        uv_idle_start(&c->kick, conn_on_kick);
}

bool
rl_conn_paused(const struct rl_conn *c)
{
    return c->paused;
}

void
rl_conn_set_timeout(struct rl_conn *c, unsigned ms)
{
    if (c->closing)
        return;
    c->timeout_ms = ms;
    c->deadline = false;
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

void
rl_conn_set_deadline(struct rl_conn *c, unsigned ms)
{
    rl_conn_set_timeout(c, ms);
    c->deadline = ms > 0;
}

static void
conn_close_handles(struct rl_conn *c)
{
    if (c->close_started)
        return;
    c->close_started = true;
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    uv_close((uv_handle_t *)&c->kick, conn_on_close);
}

void
rl_conn_close(struct rl_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    uv_idle_stop(&c->kick);
    if (!c->connected) {
        conn_close_handles(c);
        return;
    }
    if (c->tls != NULL && c->hs_done)
        rl_tls_close_notify(c->tls);
    uv_timer_start(&c->timer, conn_on_timer, CONN_LINGER_MS, 0);
    conn_flush(c); /* closes the handles once nothing is left to write */
}

void
rl_conn_abort(struct rl_conn *c)
{
    c->closing = true;
    conn_close_handles(c);
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
    if (c->tls != NULL && c->err == RL_E_TLS)
        return rl_tls_strerror(c->tls, buf, len);
    snprintf(buf, len, "%s", rl_strerror(c->err));
    return buf;
}

const char *
rl_conn_tls_failure(const struct rl_conn *c)
{
    if (c->err == 0)
        return "timeout";
    if (c->err == RL_E_TLS && c->tls != NULL)
        return rl_tls_failure_class(c->tls);
    if (c->err == RL_E_TLS_TRUNCATED || c->err == RL_E_TLS_EOF || c->err == UV_ECONNRESET ||
        c->err == UV_EPIPE || c->err == UV_EOF)
        return "closed";
    return "protocol";
}

const char *
rl_conn_peer(const struct rl_conn *c)
{
    return c->peer;
}

const struct sockaddr_storage *
rl_conn_peer_addr(const struct rl_conn *c)
{
    return &c->peer_ss;
}

struct rl_tls *
rl_conn_tls(const struct rl_conn *c)
{
    return c->tls;
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
