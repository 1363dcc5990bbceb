/*
 * worker.h - the worker threads: one libuv loop each, with its own
 * listening sockets on every configured address (SO_REUSEPORT when there
 * are several, so the kernel spreads connections) and its own sessions,
 * which never leave it.  The main thread starts them, changes their
 * listeners all or nothing on reload, and tells them to stop.
 */
#ifndef RELABEL_WORKER_H
#define RELABEL_WORKER_H

#include <stdbool.h>
#include <stdio.h>
#include <uv.h>

#include "relabel/ctx.h"
#include "relabel/snapshot.h"

struct rl_workers;

/* Called on the main loop once every worker's loop has ended. */
typedef void (*rl_workers_done_cb)(void *arg);

/*
 * Makes n workers sharing sh (whose workers[] it fills) and binds snap's
 * listeners on each; no thread runs yet (so privileges can be dropped
 * first).  All or nothing: on failure the reasons are printed to err
 * ("PATH:LINE: ..."), nothing stays bound and a negative code is returned.
 * metrics and the id seed are given to every worker's context.
 */
int rl_workers_start(unsigned n, uv_loop_t *main_loop, struct rl_shared *sh,
                     struct rl_metrics *metrics, uint64_t id_seed, struct rl_snapshot *snap,
                     FILE *err, rl_workers_done_cb done, void *arg, struct rl_workers **out);

/* Instead of running them: closes what rl_workers_start() bound and frees
 * it (the main loop must run once more for its own handle to close). */
void rl_workers_discard(struct rl_workers *w);

/* Starts the threads: from now on each worker accepts and serves. */
void rl_workers_run(struct rl_workers *w);

/* Moves every worker's listeners to snap, all or nothing (see
 * rl_listeners_prepare); blocks until every worker has answered. */
int rl_workers_update(struct rl_workers *w, struct rl_snapshot *snap, FILE *err);

/* Stops accepting and drains (rl_session_shutdown_all); with force, every
 * session ends now.  Does not wait. */
void rl_workers_shutdown(struct rl_workers *w, bool force);

/* After the done callback: joins the threads and frees everything. */
void rl_workers_join(struct rl_workers *w);

/* Workers for `workers = auto`: the CPUs this process may run on. */
unsigned rl_workers_auto(void);

#endif
