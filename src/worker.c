/*
 * worker.c - worker threads, one libuv loop each.
 *
 * The main thread talks to a worker through one uv_async_t and a small
 * command slot under the worker's mutex.  Listener changes are commands
 * the main thread waits for (prepare, then commit or rollback, so that a
 * reload is all or nothing across workers); shutdown is a flag it does not
 * wait for.  A worker's loop ends once it was told to stop and its last
 * session has closed; it then reports to the main loop and its thread
 * returns.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "relabel/auth.h"
#include "relabel/errors.h"
#include "relabel/listener.h"
#include "relabel/log.h"
#include "relabel/session.h"
#include "relabel/worker.h"

/* More would only add contention on the shared lock; a front end this
 * size is bound by its two cores' worth of crypto long before. */
#define WORKERS_MAX 64

enum worker_cmd { CMD_NONE, CMD_PREPARE, CMD_COMMIT, CMD_ROLLBACK };

struct worker {
    struct rl_workers *pool;
    unsigned index;
    uv_thread_t thread;
    bool thread_started;
    uv_loop_t loop;
    uv_async_t async;
    struct rl_ctx ctx;
    struct rl_listeners *listeners;

    uv_mutex_t mu; /* guards the fields below */
    uv_cond_t cond;
    enum worker_cmd cmd;
    struct rl_snapshot *cmd_snap;
    bool cmd_done;
    int cmd_rc;
    char *cmd_err; /* what prepare printed */
    size_t cmd_errlen;
    bool stop, force, stopped;
    bool finished; /* the loop has ended: no more async sends */
};

struct rl_workers {
    unsigned n;
    struct worker *w;
    struct rl_shared *sh;
    uv_async_t done; /* on the main loop: a worker finished */
    unsigned nfinished;
    rl_workers_done_cb done_cb;
    void *arg;
};

unsigned
rl_workers_auto(void)
{
    unsigned n = uv_available_parallelism();

    return n < 1 ? 1 : n > WORKERS_MAX ? WORKERS_MAX : n;
}

/* ---- on the worker's thread ------------------------------------------- */

static void
worker_run_cmd(struct worker *w, enum worker_cmd cmd, struct rl_snapshot *snap)
{
    char *text = NULL;
    size_t len = 0;
    FILE *err;
    int rc = 0;

    switch (cmd) {
    case CMD_PREPARE:
        err = open_memstream(&text, &len);
        if (err == NULL) {
            rc = RL_E_NOMEM;
            break;
        }
        rc = rl_listeners_prepare(w->listeners, snap, err);
        fclose(err);
        break;
    case CMD_COMMIT:
        rl_listeners_commit(w->listeners);
        break;
    case CMD_ROLLBACK:
        rl_listeners_rollback(w->listeners);
        break;
    case CMD_NONE:
        return;
    }
    uv_mutex_lock(&w->mu);
    w->cmd = CMD_NONE;
    w->cmd_rc = rc;
    w->cmd_err = text;
    w->cmd_errlen = len;
    w->cmd_done = true;
    uv_cond_signal(&w->cond);
    uv_mutex_unlock(&w->mu);
}

static void
worker_on_async(uv_async_t *a)
{
    struct worker *w = a->data;
    enum worker_cmd cmd;
    struct rl_snapshot *snap;
    bool stop, force;

    uv_mutex_lock(&w->mu);
    cmd = w->cmd;
    snap = w->cmd_snap;
    stop = w->stop && !w->stopped;
    force = w->force;
    w->force = false;
    if (stop)
        w->stopped = true;
    uv_mutex_unlock(&w->mu);

    worker_run_cmd(w, cmd, snap);
    if (stop) {
        /* Stop accepting, drain, and let the loop end with the last
         * session: this handle no longer keeps it alive. */
        w->ctx.stopping = true;
        rl_listeners_close(w->listeners);
        w->listeners = NULL;
        uv_unref((uv_handle_t *)&w->async);
        rl_session_shutdown_all(&w->ctx, false);
    }
    if (force)
        rl_session_shutdown_all(&w->ctx, true);
}

static void
worker_main(void *arg)
{
    struct worker *w = arg;
    char name[16];

    snprintf(name, sizeof(name), "relabel-w%u", w->index);
    pthread_setname_np(pthread_self(), name);
    uv_run(&w->loop, UV_RUN_DEFAULT);

    uv_mutex_lock(&w->mu);
    w->finished = true;
    uv_cond_signal(&w->cond); /* a command still waited for is not coming */
    uv_mutex_unlock(&w->mu);
    rl_auth_close(&w->ctx);
    uv_close((uv_handle_t *)&w->async, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_async_send(&w->pool->done);
}

/* ---- on the main thread ------------------------------------------------ */

static void
workers_on_done(uv_async_t *a)
{
    struct rl_workers *p = a->data;
    unsigned finished = 0;

    for (unsigned i = 0; i < p->n; i++) {
        uv_mutex_lock(&p->w[i].mu);
        finished += p->w[i].finished;
        uv_mutex_unlock(&p->w[i].mu);
    }
    if (finished < p->n || p->nfinished == p->n)
        return;
    p->nfinished = p->n;
    uv_close((uv_handle_t *)&p->done, NULL);
    p->done_cb(p->arg);
}

/* Wakes worker w unless its loop has ended. */
static void
worker_poke(struct worker *w)
{
    if (!w->finished)
        uv_async_send(&w->async);
}

/* Sends cmd to every worker, then waits for each answer.  Returns the
 * first failure (its text printed to err), or 0. */
static int
workers_command(struct rl_workers *p, enum worker_cmd cmd, struct rl_snapshot *snap, FILE *err)
{
    int first = 0;

    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];

        uv_mutex_lock(&w->mu);
        w->cmd = cmd;
        w->cmd_snap = snap;
        w->cmd_done = false;
        worker_poke(w);
        uv_mutex_unlock(&w->mu);
    }
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];

        uv_mutex_lock(&w->mu);
        while (!w->cmd_done && !w->finished)
            uv_cond_wait(&w->cond, &w->mu);
        if (!w->cmd_done)
            w->cmd_rc = RL_E_CONFIG;
        if (w->cmd_rc < 0 && first == 0) {
            first = w->cmd_rc;
            if (err != NULL && w->cmd_err != NULL)
                fwrite(w->cmd_err, 1, w->cmd_errlen, err);
        }
        free(w->cmd_err);
        w->cmd_err = NULL;
        w->cmd_done = false;
        uv_mutex_unlock(&w->mu);
    }
    return first;
}

int
rl_workers_update(struct rl_workers *p, struct rl_snapshot *snap, FILE *err)
{
    int rc = workers_command(p, CMD_PREPARE, snap, err);

    /* A worker that prepared nothing rolls back nothing: harmless. */
    workers_command(p, rc < 0 ? CMD_ROLLBACK : CMD_COMMIT, NULL, NULL);
    return rc;
}

void
rl_workers_shutdown(struct rl_workers *p, bool force)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];

        uv_mutex_lock(&w->mu);
        w->stop = true;
        w->force = w->force || force;
        worker_poke(w);
        uv_mutex_unlock(&w->mu);
    }
}

/* A worker whose thread never ran: its handles close on one last turn of
 * its loop, here on the main thread. */
static void
worker_close_unstarted(struct worker *w)
{
    if (w->listeners != NULL)
        rl_listeners_close(w->listeners);
    w->listeners = NULL;
    rl_auth_close(&w->ctx);
    uv_close((uv_handle_t *)&w->async, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

static void
worker_destroy(struct worker *w)
{
    uv_loop_close(&w->loop);
    uv_mutex_destroy(&w->mu);
    uv_cond_destroy(&w->cond);
}

int
rl_workers_start(unsigned n, uv_loop_t *main_loop, struct rl_shared *sh, struct rl_metrics *metrics,
                 uint64_t id_seed, struct rl_snapshot *snap, FILE *err, rl_workers_done_cb done,
                 void *arg, struct rl_workers **out)
{
    struct rl_workers *p = calloc(1, sizeof(*p));
    unsigned made = 0;
    int rc = 0;

    if (p != NULL) {
        p->w = calloc(n, sizeof(*p->w));
        sh->workers = calloc(n, sizeof(*sh->workers));
    }
    if (p == NULL || p->w == NULL || sh->workers == NULL) {
        fprintf(err, "%s: out of memory starting %u workers\n", snap->cfg->path, n);
        if (p != NULL)
            free(p->w);
        free(p);
        free(sh->workers);
        sh->workers = NULL;
        return RL_E_NOMEM;
    }
    p->n = n;
    p->sh = sh;
    p->done_cb = done;
    p->arg = arg;
    /* Every worker's loop and listeners are made here, before any thread
     * runs (and before privileges are dropped). */
    for (; made < n && rc == 0; made++) {
        struct worker *w = &p->w[made];

        w->pool = p;
        w->index = made;
        uv_loop_init(&w->loop);
        uv_mutex_init(&w->mu);
        uv_cond_init(&w->cond);
        uv_async_init(&w->loop, &w->async, worker_on_async);
        w->async.data = w;
        w->ctx.loop = &w->loop;
        w->ctx.index = made;
        w->ctx.shared = sh;
        w->ctx.metrics = metrics;
        /* Distinct session ids per worker from the same seed. */
        w->ctx.id_seed = id_seed ^ ((uint64_t)made * 0xd6e8feb86659fd93ULL);
        sh->workers[made] = &w->ctx;
        rc = rl_auth_init(&w->ctx);
        if (rc < 0)
            fprintf(err, "%s: cannot start worker %u: %s\n", snap->cfg->path, made,
                    uv_strerror(rc));
        else
            rc = rl_listeners_open(&w->ctx, snap, n > 1, err, &w->listeners);
        if (rc < 0)
            w->listeners = NULL;
    }
    if (rc < 0) {
        for (unsigned i = 0; i < made; i++) {
            worker_close_unstarted(&p->w[i]);
            worker_destroy(&p->w[i]);
        }
        free(sh->workers);
        sh->workers = NULL;
        free(p->w);
        free(p);
        return rc;
    }
    sh->nworkers = n;
    uv_async_init(main_loop, &p->done, workers_on_done);
    p->done.data = p;
    *out = p;
    return 0;
}

void
rl_workers_run(struct rl_workers *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];

        if (uv_thread_create(&w->thread, worker_main, w) == 0) {
            w->thread_started = true;
            continue;
        }
        /* Only short of a resource limit: the workers that run serve,
         * this one's sockets are closed. */
        rl_log(RL_LOG_ERROR, "cannot start worker %u", i);
        worker_close_unstarted(w);
        uv_mutex_lock(&w->mu);
        w->finished = true;
        uv_mutex_unlock(&w->mu);
    }
}

void
rl_workers_join(struct rl_workers *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];

        if (w->thread_started)
            uv_thread_join(&w->thread);
        worker_destroy(w);
    }
    p->sh->nworkers = 0;
    free(p->sh->workers);
    p->sh->workers = NULL;
    free(p->w);
    free(p);
}

void
rl_workers_discard(struct rl_workers *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        worker_close_unstarted(&p->w[i]);
        worker_destroy(&p->w[i]);
    }
    uv_close((uv_handle_t *)&p->done, NULL);
    p->sh->nworkers = 0;
    free(p->sh->workers);
    p->sh->workers = NULL;
    free(p->w);
    free(p);
}
