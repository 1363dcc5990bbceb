/*
 * metrics_http.h - the HTTP/1.x endpoint on its own listening sockets:
 *   GET /metrics  the Prometheus text exposition (what ops.metrics writes)
 *   GET /healthz  200 "ok" while the process runs
 *   GET /readyz   200 "ok" when ops.ready says so, else 503 with its reasons
 * Anything else is 404 (path), 405 (method), 400/431/505 (the request),
 * 408 (too slow).  Every answer ends the connection (Connection: close).
 *
 * There is no authentication: the endpoint belongs on a loopback or
 * private address.  It never shows message data or secrets.
 */
#ifndef RELABEL_METRICS_HTTP_H
#define RELABEL_METRICS_HTTP_H

#include <stdbool.h>
#include <stdio.h>
#include <uv.h>

#include "relabel/config.h"

struct rl_metrics_http_ops {
    /* Writes the /metrics body. */
    void (*metrics)(void *arg, FILE *out);
    /* True when ready; otherwise writes one line per reason to `why`. */
    bool (*ready)(void *arg, FILE *why);
    void *arg;
};

struct rl_metrics_http;

/* A new endpoint listening nowhere yet; NULL on allocation failure. */
struct rl_metrics_http *rl_metrics_http_new(uv_loop_t *loop, const struct rl_metrics_http_ops *ops);

/*
 * Changing the addresses is two steps, so that a reload can stay all or
 * nothing with the SMTP listeners: prepare() binds and starts listening on
 * every address of addrs[0..n) not already listened on, and on any failure
 * closes what it bound, prints "PATH:LINE: [metrics] cannot listen on ADDR:
 * reason" to err and returns a negative code.  Then commit() closes the
 * addresses that are no longer listed, or rollback() closes what prepare()
 * bound.  Sockets on addresses in both lists are kept as they are.
 */
int rl_metrics_http_prepare(struct rl_metrics_http *h, const struct rl_addr *addrs, size_t n,
                            const char *path, int line, FILE *err);
void rl_metrics_http_commit(struct rl_metrics_http *h);
void rl_metrics_http_rollback(struct rl_metrics_http *h);

/* Shutdown has begun: the endpoint keeps answering (/readyz says 503), but
 * no longer keeps the event loop alive. */
void rl_metrics_http_unref(struct rl_metrics_http *h);

/* Closes every socket and client; the endpoint frees itself once libuv has
 * closed its handles. */
void rl_metrics_http_close(struct rl_metrics_http *h);

#endif
