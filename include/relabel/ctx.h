/*
 * ctx.h - the process-wide context passed down from main: the loop, the
 * current configuration snapshot, the list of live sessions, the
 * per-address connection rate table and the counters.  Passed explicitly;
 * there is no global singleton.
 */
#ifndef RELABEL_CTX_H
#define RELABEL_CTX_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct rl_snapshot;
struct rl_session;
struct rl_ratelimit;
struct rl_metrics;

struct rl_ctx {
    uv_loop_t *loop;
    struct rl_snapshot *snap; /* new sessions take a reference */
    struct rl_session *sessions;
    unsigned long nsessions;
    unsigned long nupstreams;   /* sessions holding an upstream leg (max_upstream_connections) */
    struct rl_metrics *metrics; /* counters; NULL counts nothing */
    uint64_t id_seed;
    uint64_t id_next;
    /* New connections per client address (max_connection_rate); it
     * outlives reloads, which only change the rate.  NULL: no limit. */
    struct rl_ratelimit *rate;
    bool stopping;
};

#endif
