/*
 * ctx.h - the process-wide context passed down from main: the loop, the
 * current configuration snapshot, the list of live sessions and the
 * counters.  Passed explicitly; there is no global singleton.
 */
#ifndef RELABEL_CTX_H
#define RELABEL_CTX_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct rl_snapshot;
struct rl_session;
struct rl_metrics;

struct rl_ctx {
    uv_loop_t *loop;
    struct rl_snapshot *snap; /* new sessions take a reference */
    struct rl_session *sessions;
    unsigned long nsessions;
    struct rl_metrics *metrics; /* counters; NULL counts nothing */
    uint64_t id_seed;
    uint64_t id_next;
    bool stopping;
};

#endif
