/*
 * metrics_http.c - the metrics endpoint: listening sockets, HTTP clients,
 * answers.
 *
 * A client is read into a fixed buffer of RL_HTTP_HEAD_MAX bytes and
 * parsed by http.c after every read; it is answered once, as soon as the
 * head is complete or cannot become valid, and then closed: the answer is
 * written, the write side shut down, and whatever the client still sends
 * is read and dropped until it closes too (closing with unread bytes would
 * reset the connection and could destroy the answer in flight).  One
 * deadline per phase (RL_HTTP_TIMEOUT for the request, again for the
 * answer) bounds how long a client is kept; RL_HTTP_CLIENTS_MAX bounds how
 * many.  So a slow or hostile client costs a few KiB for a few seconds and
 * never delays anyone else, and nothing here grows with what a client
 * sends.
 *
 * Memory is freed only in close callbacks (libuv's rule); the endpoint
 * itself goes once its last handle has closed.  It knows nothing about
 * sessions or counters: the bodies come from the callbacks main gave it.
 */
#include <stdlib.h>
#include <string.h>

#include "relabel/errors.h"
#include "relabel/http.h"
#include "relabel/limits.h"
#include "relabel/log.h"
#include "relabel/metrics_http.h"

#define HTTP_BACKLOG 64

struct http_sock {
    uv_tcp_t tcp;
    struct rl_metrics_http *h;
    struct http_sock *next;
    bool listed; /* named by the last prepare() */
    char text[sizeof(((struct rl_addr *)0)->text)];
};

enum http_state { HTTP_READING, HTTP_WRITING, HTTP_LINGER, HTTP_CLOSING };

struct http_client {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct rl_metrics_http *h;
    struct http_client *next, *prev;
    enum http_state state;
    bool peer_eof;
    int handles;
    char *out; /* the answer, owned by libuv while it is written */
    size_t len;
    char in[RL_HTTP_HEAD_MAX];
};

struct rl_metrics_http {
    uv_loop_t *loop;
    struct rl_metrics_http_ops ops;
    struct http_sock *socks; /* listening and committed */
    struct http_sock *fresh; /* bound by prepare(), not yet committed */
    struct http_client *clients;
    unsigned nclients;
    unsigned handles; /* open handles of sockets and clients */
    bool unref;
    bool closing;
};

static void
http_maybe_free(struct rl_metrics_http *h)
{
    if (h->closing && h->handles == 0)
        free(h);
}

/* ---- clients ---------------------------------------------------------- */

static void
http_on_client_close(uv_handle_t *handle)
{
    struct http_client *cl = handle->data;
    struct rl_metrics_http *h = cl->h;

    h->handles--;
    if (--cl->handles == 0) {
        free(cl->out);
        free(cl);
    }
    http_maybe_free(h);
}

/* Closes a client at once; pending write and shutdown requests are
 * cancelled by libuv before the close callbacks run. */
static void
http_client_close(struct http_client *cl)
{
    struct rl_metrics_http *h = cl->h;

    if (cl->state == HTTP_CLOSING)
        return;
    cl->state = HTTP_CLOSING;
    if (cl->prev != NULL)
        cl->prev->next = cl->next;
    else
        h->clients = cl->next;
    if (cl->next != NULL)
        cl->next->prev = cl->prev;
    h->nclients--;
    uv_close((uv_handle_t *)&cl->tcp, http_on_client_close);
    uv_close((uv_handle_t *)&cl->timer, http_on_client_close);
}

static void
http_on_shutdown(uv_shutdown_t *req, int status)
{
    struct http_client *cl = req->data;

    /* Now only the client's own close (EOF) or the deadline ends it. */
    if (cl->state != HTTP_CLOSING && (status < 0 || cl->peer_eof))
        http_client_close(cl);
}

static void
http_on_write(uv_write_t *req, int status)
{
    struct http_client *cl = req->data;

    if (cl->state == HTTP_CLOSING)
        return;
    if (status < 0) {
        http_client_close(cl);
        return;
    }
    cl->state = HTTP_LINGER;
    if (uv_shutdown(&cl->sreq, (uv_stream_t *)&cl->tcp, http_on_shutdown) < 0)
        http_client_close(cl);
}

static void http_on_timer(uv_timer_t *t);

/* Queues status + body as the whole answer.  The body is taken over. */
static void
http_send(struct http_client *cl, int status, const char *type, char *body, size_t blen)
{
    char head[320];
    uv_buf_t b;
    int n;

    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "%s"
                 "Cache-Control: no-store\r\n"
                 "Connection: close\r\n\r\n",
                 status, rl_http_reason(status), type, blen, status == 405 ? "Allow: GET\r\n" : "");
    if (n > 0 && (size_t)n < sizeof(head))
        cl->out = malloc((size_t)n + blen);
    if (cl->out == NULL) {
        free(body);
        http_client_close(cl);
        return;
    }
    memcpy(cl->out, head, (size_t)n);
    if (blen > 0)
        memcpy(cl->out + n, body, blen);
    free(body);
    cl->state = HTTP_WRITING;
    uv_timer_start(&cl->timer, http_on_timer, RL_HTTP_TIMEOUT, 0);
    b = uv_buf_init(cl->out, (unsigned)((size_t)n + blen));
    if (uv_write(&cl->wreq, (uv_stream_t *)&cl->tcp, &b, 1, http_on_write) < 0)
        http_client_close(cl);
}

static bool
http_is(const char *p, size_t n, const char *s)
{
    return strlen(s) == n && memcmp(p, s, n) == 0;
}

/*
 * Answers a request: rc is rl_http_parse_request()'s result (or -408 when
 * the client was too slow); req is valid when rc is 0.
 */
static void
http_answer(struct http_client *cl, int rc, const struct rl_http_req *req)
{
    struct rl_metrics_http *h = cl->h;
    const char *type = "text/plain; charset=utf-8";
    char *body = NULL, what[80] = "-";
    size_t blen = 0;
    FILE *b = open_memstream(&body, &blen);
    int status;

    if (b == NULL) {
        http_client_close(cl);
        return;
    }
    if (rc < 0) {
        status = -rc;
        fprintf(b, "%s\n", rl_http_reason(status));
    } else {
        rl_log_escape(req->path, req->path_len < 64 ? req->path_len : 64, what, sizeof(what));
        if (!http_is(req->method, req->method_len, "GET")) {
            status = 405;
            fprintf(b, "%s\n", rl_http_reason(status));
        } else if (http_is(req->path, req->path_len, "/metrics")) {
            status = 200;
            type = "text/plain; version=0.0.4; charset=utf-8";
            h->ops.metrics(h->ops.arg, b);
        } else if (http_is(req->path, req->path_len, "/healthz")) {
            status = 200;
            fputs("ok\n", b);
        } else if (http_is(req->path, req->path_len, "/readyz")) {
            status = h->ops.ready(h->ops.arg, b) ? 200 : 503;
            if (status == 200)
                fputs("ok\n", b);
        } else {
            status = 404;
            fprintf(b, "%s\n", rl_http_reason(status));
        }
    }
    if (fclose(b) != 0) {
        free(body);
        http_client_close(cl);
        return;
    }
    rl_log(RL_LOG_DEBUG, "metrics request path=\"%s\" status=%d", what, status);
    http_send(cl, status, type, body, blen);
}

static void
http_on_timer(uv_timer_t *t)
{
    struct http_client *cl = t->data;

    if (cl->state == HTTP_READING)
        http_answer(cl, -408, NULL);
    else
        http_client_close(cl);
}

static void
http_on_alloc(uv_handle_t *handle, size_t hint, uv_buf_t *buf)
{
    struct http_client *cl = handle->data;

    /* Once answered, what still comes is read over the same buffer and
     * dropped. */
    if (cl->state == HTTP_READING)
        *buf = uv_buf_init(cl->in + cl->len, (unsigned)(sizeof(cl->in) - cl->len));
    else
        *buf = uv_buf_init(cl->in, sizeof(cl->in));
}

static void
http_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct http_client *cl = stream->data;
    struct rl_http_req req;
    int rc;

    if (nread == 0 || cl->state == HTTP_CLOSING)
        return;
    if (nread < 0) {
        /* Before the answer: a client that gives up gets none.  While it
         * is written: finish writing, then close. */
        if (nread == UV_EOF && cl->state == HTTP_WRITING) {
            cl->peer_eof = true;
            uv_read_stop(stream);
            return;
        }
        http_client_close(cl);
        return;
    }
    if (cl->state != HTTP_READING)
        return;
    cl->len += (size_t)nread;
    rc = rl_http_parse_request(cl->in, cl->len, sizeof(cl->in), &req);
    if (rc != RL_HTTP_MORE)
        http_answer(cl, rc, &req);
}

static void
http_on_connection(uv_stream_t *server, int status)
{
    struct http_sock *hs = server->data;
    struct rl_metrics_http *h = hs->h;
    struct http_client *cl;

    if (status < 0) {
        rl_log(RL_LOG_WARN, "metrics accept error on %s: %s", hs->text, uv_strerror(status));
        return;
    }
    cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return;
    cl->h = h;
    uv_tcp_init(h->loop, &cl->tcp);
    uv_timer_init(h->loop, &cl->timer);
    cl->tcp.data = cl->timer.data = cl->wreq.data = cl->sreq.data = cl;
    cl->handles = 2;
    h->handles += 2;
    cl->next = h->clients;
    if (h->clients != NULL)
        h->clients->prev = cl;
    h->clients = cl;
    h->nclients++;
    if (h->unref) {
        uv_unref((uv_handle_t *)&cl->tcp);
        uv_unref((uv_handle_t *)&cl->timer);
    }
    /* Over the cap the connection is closed at once: a flood of clients
     * costs nothing but accept() and close(). */
    if (uv_accept(server, (uv_stream_t *)&cl->tcp) < 0 || h->closing ||
        h->nclients > RL_HTTP_CLIENTS_MAX ||
        uv_read_start((uv_stream_t *)&cl->tcp, http_on_alloc, http_on_read) < 0) {
        http_client_close(cl);
        return;
    }
    uv_timer_start(&cl->timer, http_on_timer, RL_HTTP_TIMEOUT, 0);
}

/* ---- listening sockets -------------------------------------------------- */

static void
http_on_sock_close(uv_handle_t *handle)
{
    struct http_sock *hs = handle->data;
    struct rl_metrics_http *h = hs->h;

    free(hs);
    h->handles--;
    http_maybe_free(h);
}

static void
http_close_socks(struct http_sock *hs, bool quiet)
{
    while (hs != NULL) {
        struct http_sock *next = hs->next;

        if (!quiet)
            rl_log(RL_LOG_INFO, "metrics endpoint closed on %s", hs->text);
        uv_close((uv_handle_t *)&hs->tcp, http_on_sock_close);
        hs = next;
    }
}

/* Binds and listens on one address; NULL (reason printed) on failure. */
static struct http_sock *
http_bind(struct rl_metrics_http *h, const struct rl_addr *a, const char *path, int line, FILE *err)
{
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    struct http_sock *hs = calloc(1, sizeof(*hs));
    int rc;

    if (hs == NULL) {
        fprintf(err, "%s: [metrics] out of memory\n", path);
        return NULL;
    }
    hs->h = h;
    snprintf(hs->text, sizeof(hs->text), "%s", a->text);
    uv_tcp_init(h->loop, &hs->tcp);
    hs->tcp.data = hs;
    h->handles++;
    rc = uv_tcp_bind(&hs->tcp, sa, sa->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&hs->tcp, HTTP_BACKLOG, http_on_connection);
    if (rc < 0) {
        fprintf(err, "%s:%d: [metrics] cannot listen on %s: %s\n", path, line, a->text,
                uv_strerror(rc));
        http_close_socks(hs, true);
        return NULL;
    }
    if (h->unref)
        uv_unref((uv_handle_t *)&hs->tcp);
    rl_log(RL_LOG_INFO, "metrics endpoint listening on %s", a->text);
    return hs;
}

struct rl_metrics_http *
rl_metrics_http_new(uv_loop_t *loop, const struct rl_metrics_http_ops *ops)
{
    struct rl_metrics_http *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    h->loop = loop;
    h->ops = *ops;
    return h;
}

int
rl_metrics_http_prepare(struct rl_metrics_http *h, const struct rl_addr *addrs, size_t n,
                        const char *path, int line, FILE *err)
{
    rl_metrics_http_rollback(h);
    for (struct http_sock *hs = h->socks; hs != NULL; hs = hs->next)
        hs->listed = false;
    for (size_t i = 0; i < n; i++) {
        struct http_sock *hs;

        for (hs = h->socks; hs != NULL && strcmp(hs->text, addrs[i].text) != 0; hs = hs->next)
            ;
        if (hs != NULL) {
            hs->listed = true;
            continue;
        }
        hs = http_bind(h, &addrs[i], path, line, err);
        if (hs == NULL) {
            rl_metrics_http_rollback(h);
            return RL_E_CONFIG;
        }
        hs->listed = true;
        hs->next = h->fresh;
        h->fresh = hs;
    }
    return 0;
}

void
rl_metrics_http_commit(struct rl_metrics_http *h)
{
    struct http_sock *kept = NULL, *gone = NULL;

    while (h->socks != NULL) {
        struct http_sock *hs = h->socks;

        h->socks = hs->next;
        if (hs->listed) {
            hs->next = kept;
            kept = hs;
        } else {
            hs->next = gone;
            gone = hs;
        }
    }
    http_close_socks(gone, false);
    while (h->fresh != NULL) {
        struct http_sock *hs = h->fresh;

        h->fresh = hs->next;
        hs->next = kept;
        kept = hs;
    }
    h->socks = kept;
}

void
rl_metrics_http_rollback(struct rl_metrics_http *h)
{
    http_close_socks(h->fresh, false);
    h->fresh = NULL;
}

void
rl_metrics_http_unref(struct rl_metrics_http *h)
{
    h->unref = true;
    for (struct http_sock *hs = h->socks; hs != NULL; hs = hs->next)
        uv_unref((uv_handle_t *)&hs->tcp);
    for (struct http_client *cl = h->clients; cl != NULL; cl = cl->next) {
        uv_unref((uv_handle_t *)&cl->tcp);
        uv_unref((uv_handle_t *)&cl->timer);
    }
}

void
rl_metrics_http_close(struct rl_metrics_http *h)
{
    h->closing = true;
    rl_metrics_http_rollback(h);
    http_close_socks(h->socks, false);
    h->socks = NULL;
    while (h->clients != NULL)
        http_client_close(h->clients);
    http_maybe_free(h);
}
