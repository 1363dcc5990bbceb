/*
 * ctx.h - the contexts passed down from main, explicitly (there is no
 * global singleton).
 *
 * Each worker thread runs one libuv loop with its own listening sockets and
 * its own sessions: a session never leaves its worker.  What the workers
 * share is in struct rl_shared, counted under its lock: the limits that
 * hold for the whole process (max_connections, max_connections_per_ip,
 * max_upstream_connections, max_connection_rate) and the counters (which
 * have their own lock).  The main thread's context has no sessions: it
 * runs signals, reloads, the metrics endpoint and the upstream checks.
 * upstream.c keeps the other process-wide state, the resolution cache and
 * the broken upstream addresses, under its own lock (see upstream.h).
 */
#ifndef RELABEL_CTX_H
#define RELABEL_CTX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct rl_snapshot;
struct rl_session;
struct rl_ratelimit;
struct rl_metrics;
struct rl_ctx;
struct rl_authq;

struct rl_shared {
    pthread_mutex_t lock;     /* guards every field below, and the sessions lists */
    unsigned long nsessions;  /* all workers */
    unsigned long nupstreams; /* sessions holding an upstream leg (max_upstream_connections) */
    struct rl_ctx **workers;  /* each worker's context, for counting per client address */
    size_t nworkers;
    /* New connections per client address (max_connection_rate); it
     * outlives reloads, which only change the rate.  NULL: no limit. */
    struct rl_ratelimit *rate;
    /* Password checks running on the threadpool (auth.c), at most
     * RL_AUTH_VERIFY_MAX. */
    unsigned nverify;
};

struct rl_ctx {
    uv_loop_t *loop;
    struct rl_shared *shared;
    struct rl_metrics *metrics;  /* counters (thread-safe); NULL counts nothing */
    struct rl_snapshot *snap;    /* main thread: the running configuration */
    struct rl_session *sessions; /* this worker's, linked under shared->lock */
    unsigned long nsessions;     /* this worker's */
    uint64_t id_seed;
    uint64_t id_next;
    struct rl_authq *authq; /* password checks waiting (auth.c); written under shared->lock */
    unsigned index;         /* the worker's number, from 0 */
    bool stopping;
};

#endif
