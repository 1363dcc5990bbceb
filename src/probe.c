/*
 * probe.c - periodic deep checks of the upstreams in use (see probe.h).
 *
 * Two kinds of object.  A target is one upstream in use with the results
 * of its checks; targets are replaced on reload (results carried over when
 * nothing that matters changed).  A run is one check in progress: it holds
 * its own snapshot reference (the TLS configuration its connection uses)
 * and its own copy of what it needs, so that a reload or shutdown can
 * abandon it at any point: an abandoned run only drops its connection and
 * frees itself once that connection has closed.  At most one run per
 * target at a time; a round that finds one still going skips that target.
 *
 * The dialogue is the session's establishment (session_up_*), kept apart
 * because it ends differently (EHLO then QUIT, instead of waiting for a
 * client): implicit TLS: connect, TLS, 220, EHLO, 250; STARTTLS: connect,
 * 220, EHLO, 250 with STARTTLS, STARTTLS, 220 with nothing after it, TLS,
 * EHLO, 250.  A check succeeds at that last 250: encrypted, verified and
 * answering.  Each wait has a timeout (upstream_connect_timeout for
 * connecting and each handshake, upstream_timeout for each reply, both
 * capped at RL_CHECK_STEP_MAX; name resolution: the next round).  Connection failures move on to
 * the next address, then to the next fallback port, as sessions do;
 * anything after that fails the check.  Broken addresses are not skipped
 * here: a check looks at every address it needs to.
 *
 * Never here: mbedTLS (conn.c and tls.c do TLS), sessions, counters of
 * sessions.  Failure texts are the same diagnostics sessions log (reply
 * codes, TLS and verification reasons), never credentials.
 */
#include <stdlib.h>
#include <string.h>

#include "relabel/conn.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/log.h"
#include "relabel/metrics.h"
#include "relabel/probe.h"
#include "relabel/smtp.h"
#include "relabel/upstream.h"

#define PROBE_STATE_MAP(X)                                                                         \
    X(RESOLVE)                                                                                     \
    X(CONNECT)                                                                                     \
    X(TLS)                                                                                         \
    X(GREETING)                                                                                    \
    X(EHLO)                                                                                        \
    X(STARTTLS)                                                                                    \
    X(TLS2)                                                                                        \
    X(EHLO2)                                                                                       \
    X(QUIT)

enum probe_state {
#define PROBE_ENUM(name) PROBE_##name,
    PROBE_STATE_MAP(PROBE_ENUM)
#undef PROBE_ENUM
};

static const char *const probe_state_names[] = {
#define PROBE_STR(name) #name,
    PROBE_STATE_MAP(PROBE_STR)
#undef PROBE_STR
};

#define PROBE_WHY_MAX 240

struct probe_run;

struct probe_target {
    const struct rl_upstream_conf *uc; /* in the probe's snapshot */
    const char *helo;                  /* helo_name, or a brand's hostname */
    struct probe_run *run;             /* the check in progress, or NULL */
    bool checked;                      /* a check has finished */
    bool ok;                           /* the last one succeeded */
    bool ever_ok;
    uint64_t ok_at;  /* uv_now() of the last success */
    double ok_wall;  /* the same on the wall clock */
    uint64_t why_at; /* uv_now() of the last failure */
    char why[PROBE_WHY_MAX];
};

struct probe_run {
    uv_loop_t *loop;
    struct probe_target *t; /* NULL once abandoned */
    struct rl_snapshot *snap;
    const struct rl_upstream_conf *uc;
    char helo[256];
    unsigned connect_ms, step_ms;
    uint64_t started; /* uv_now() at the start */
    struct rl_upstream_req *resolve;
    struct rl_upstream_addrs addrs;
    size_t next_addr;
    size_t port_idx;       /* 0: the upstream's port, else fallback[port_idx - 1] */
    enum rl_tls_mode mode; /* of that port */
    struct rl_conn *c;     /* the current connection attempt */
    int nconns;            /* conns not yet CLOSED, failed attempts included */
    enum probe_state st;
    bool done;
    char why[PROBE_WHY_MAX]; /* why the last address failed */
};

struct rl_probe {
    uv_loop_t *loop;
    struct rl_snapshot *snap;
    uv_timer_t timer;
    struct probe_target *targets;
    size_t ntargets;
};

static void probe_next_addr(struct probe_run *run);

static unsigned
probe_cap(unsigned ms)
{
    return ms < RL_CHECK_STEP_MAX ? ms : RL_CHECK_STEP_MAX;
}

/* ---- one run -------------------------------------------------------------- */

static void
probe_run_free(struct probe_run *run)
{
    rl_snapshot_unref(run->snap);
    free(run);
}

/* Ends the run with its result (once): the target learns it, the
 * connection goes (politely after a success), and the run frees itself as
 * soon as no connection of it is left. */
/* Records the check's result on its target, once. */
static void
probe_report(struct probe_run *run, bool ok, const char *why)
{
    struct probe_target *t = run->t;

    if (t != NULL) {
        bool was = t->checked ? t->ok : true;

        t->run = NULL;
        t->checked = true;
        t->ok = ok;
        if (ok) {
            t->ever_ok = true;
            t->ok_at = uv_now(run->loop);
            t->ok_wall = rl_metrics_now();
            t->why[0] = '\0';
            if (!was)
                rl_log(RL_LOG_INFO, "upstream check ok upstream=%s", run->uc->name);
        } else {
            t->why_at = uv_now(run->loop);
            snprintf(t->why, sizeof(t->why), "%s", why);
            rl_log(was ? RL_LOG_WARN : RL_LOG_DEBUG,
                   "upstream check failed upstream=%s reason=\"%s\"", run->uc->name, why);
        }
        run->t = NULL;
    }
}

static void
probe_finish(struct probe_run *run, bool ok, const char *why)
{
    if (run->done)
        return;
    run->done = true;
    probe_report(run, ok, why);
    if (run->resolve != NULL) {
        rl_upstream_cancel(run->resolve);
        run->resolve = NULL;
    }
    if (run->c != NULL) {
        if (ok)
            rl_conn_close(run->c);
        else
            rl_conn_abort(run->c);
    }
    if (run->nconns == 0)
        probe_run_free(run);
}

static void
probe_send(struct probe_run *run, const char *line, enum probe_state next)
{
    run->st = next;
    rl_conn_set_timeout(run->c, run->step_ms);
    if (rl_conn_write(run->c, line, strlen(line)) < 0)
        probe_finish(run, false, "write failed");
}

static void
probe_start_tls(struct probe_run *run, enum probe_state next)
{
    int rc;

    run->st = next;
    rl_conn_set_timeout(run->c, run->connect_ms);
    rc = rl_conn_start_tls(run->c, rl_snapshot_upstream_tls(run->snap, run->uc),
                           run->uc->verify_name);
    if (rc < 0)
        probe_finish(run, false, rl_strerror(rc));
}

static void
probe_ehlo(struct probe_run *run, enum probe_state next)
{
    char line[300];

    snprintf(line, sizeof(line), "EHLO %s\r\n", run->helo);
    probe_send(run, line, next);
}

/* One complete reply in state run->st.  Returns false when the run has
 * stopped reading replies (it finished, or TLS starts). */
static bool
probe_reply(struct probe_run *run, const struct rl_smtp_reply *r, const char *p)
{
    const char *text = NULL;
    char why[PROBE_WHY_MAX], esc[80];
    size_t off = 0, tlen = 0;
    bool last;
    int want = run->st == PROBE_GREETING || run->st == PROBE_STARTTLS ? 220 : 250;

    if (r->code != want) {
        rl_smtp_reply_line(p, r->len, &off, &text, &tlen, &last);
        rl_log_escape(text, tlen < 60 ? tlen : 60, esc, sizeof(esc));
        snprintf(why, sizeof(why), "%s refused: %d %s",
                 run->st == PROBE_GREETING   ? "greeting"
                 : run->st == PROBE_STARTTLS ? "STARTTLS"
                                             : "EHLO",
                 r->code, esc);
        probe_finish(run, false, why);
        return false;
    }
    switch (run->st) {
    case PROBE_GREETING:
        probe_ehlo(run, run->mode == RL_TLS_IMPLICIT ? PROBE_EHLO2 : PROBE_EHLO);
        return !run->done;
    case PROBE_EHLO: {
        uint64_t size;

        if (!(rl_smtp_ehlo_caps(p, r->len, &size) & RL_EHLO_STARTTLS)) {
            probe_finish(run, false, "STARTTLS not offered");
            return false;
        }
        probe_send(run, "STARTTLS\r\n", PROBE_STARTTLS);
        return !run->done;
    }
    case PROBE_STARTTLS:
        if (rl_buf_len(rl_conn_in(run->c)) > 0)
            probe_finish(run, false, "data after STARTTLS reply (response injection)");
        else
            probe_start_tls(run, PROBE_TLS2);
        return false;
    case PROBE_EHLO2:
        /* Encrypted, verified and answering: the check succeeded.  QUIT
         * then, and its reply is waited for (briefly), so the upstream
         * sees a whole, polite dialogue rather than a QUIT cut off by our
         * close. */
        probe_report(run, true, NULL);
        if (rl_conn_write(run->c, "QUIT\r\n", 6) < 0)
            probe_finish(run, true, NULL);
        else
            run->st = PROBE_QUIT;
        return false;
    case PROBE_QUIT:
        probe_finish(run, true, NULL);
        return false;
    default:
        snprintf(why, sizeof(why), "unexpected reply %d in state %s", r->code,
                 probe_state_names[run->st]);
        probe_finish(run, false, why);
        return false;
    }
}

static void
probe_data(struct probe_run *run)
{
    struct rl_buf *in = rl_conn_in(run->c);

    while (!run->done && rl_buf_len(in) > 0) {
        struct rl_smtp_reply r;
        const char *p;
        int rc = rl_smtp_reply_take(in, &r, &p);

        if (rc == RL_SMTP_MORE)
            break;
        if (rc < 0) {
            probe_finish(run, false, "malformed reply");
            return;
        }
        if (!probe_reply(run, &r, p))
            break;
    }
    if (!run->done)
        rl_conn_consumed(run->c);
}

static void
probe_on_event(struct rl_conn *c, enum rl_conn_event ev, void *arg)
{
    struct probe_run *run = arg;
    char why[PROBE_WHY_MAX], msg[200];

    if (ev == RL_CONN_CLOSED) {
        if (c == run->c)
            run->c = NULL;
        if (--run->nconns == 0 && run->done)
            probe_run_free(run);
        return;
    }
    if (run->done || c != run->c)
        return; /* an abandoned attempt */
    switch (ev) {
    case RL_CONN_CONNECTED:
        if (run->mode == RL_TLS_IMPLICIT) {
            probe_start_tls(run, PROBE_TLS);
        } else {
            run->st = PROBE_GREETING;
            rl_conn_set_timeout(c, run->step_ms);
        }
        break;
    case RL_CONN_TLS_READY:
        if (run->st == PROBE_TLS) {
            run->st = PROBE_GREETING;
            rl_conn_set_timeout(c, run->step_ms);
            probe_data(run);
        } else if (rl_buf_len(rl_conn_in(c)) > 0) {
            probe_finish(run, false, "unsolicited data after the TLS handshake");
        } else {
            probe_ehlo(run, PROBE_EHLO2);
        }
        break;
    case RL_CONN_DATA:
        probe_data(run);
        break;
    case RL_CONN_EOF:
    case RL_CONN_ERROR:
    case RL_CONN_TIMEOUT:
        if (ev == RL_CONN_TIMEOUT)
            snprintf(msg, sizeof(msg), "timeout");
        else if (ev == RL_CONN_EOF)
            snprintf(msg, sizeof(msg), "connection closed");
        else
            rl_conn_strerror(c, msg, sizeof(msg));
        if (run->st == PROBE_QUIT) {
            probe_finish(run, true, NULL); /* reported already */
            break;
        }
        if (run->st == PROBE_CONNECT) {
            snprintf(run->why, sizeof(run->why), "connect to %s: %s", rl_conn_peer(c), msg);
            probe_next_addr(run);
            break;
        }
        snprintf(why, sizeof(why), "%s with %s: %s",
                 run->st == PROBE_TLS || run->st == PROBE_TLS2 ? "TLS" : probe_state_names[run->st],
                 rl_conn_peer(c), msg);
        probe_finish(run, false, why);
        break;
    default:
        break;
    }
}

/* Tries the next address; when none is left the check failed. */
static void
probe_next_addr(struct probe_run *run)
{
    int rc;

    if (run->c != NULL) {
        rl_conn_abort(run->c);
        run->c = NULL;
    }
    if (run->next_addr >= run->addrs.n) {
        if (run->port_idx >= run->uc->nfallback) {
            probe_finish(run, false, run->why[0] ? run->why : "no address");
            return;
        }
        /* Every address failed to connect: the next fallback port. */
        run->mode = run->uc->fallback[run->port_idx].tls;
        rl_upstream_set_port(&run->addrs, run->uc->fallback[run->port_idx].port);
        run->port_idx++;
        run->next_addr = 0;
    }
    run->c = rl_conn_new(run->loop, probe_on_event, run);
    if (run->c == NULL) {
        probe_finish(run, false, "out of memory");
        return;
    }
    run->nconns++;
    run->st = PROBE_CONNECT;
    rl_conn_set_timeout(run->c, run->connect_ms);
    rc = rl_conn_connect(run->c, (const struct sockaddr *)&run->addrs.a[run->next_addr++]);
    if (rc < 0) {
        snprintf(run->why, sizeof(run->why), "connect: %s", uv_strerror(rc));
        probe_next_addr(run);
    }
}

static void
probe_on_resolved(void *arg, int status, const struct rl_upstream_addrs *addrs)
{
    struct probe_run *run = arg;
    char why[PROBE_WHY_MAX];

    run->resolve = NULL;
    if (status < 0) {
        snprintf(why, sizeof(why), "cannot resolve %s: %s", run->uc->host, uv_strerror(status));
        probe_finish(run, false, why);
        return;
    }
    run->addrs = *addrs;
    run->port_idx = 0;
    run->mode = run->uc->tls;
    probe_next_addr(run);
}

static void
probe_run_start(struct rl_probe *p, struct probe_target *t)
{
    const struct rl_config *cfg = p->snap->cfg;
    struct probe_run *run = calloc(1, sizeof(*run));
    int err = 0;

    if (run == NULL)
        return; /* tried again next round */
    run->loop = p->loop;
    run->t = t;
    run->snap = rl_snapshot_ref(p->snap);
    run->uc = t->uc;
    snprintf(run->helo, sizeof(run->helo), "%s", t->helo);
    run->connect_ms = probe_cap(cfg->upstream_connect_timeout_ms);
    run->step_ms = probe_cap(cfg->upstream_timeout_ms);
    run->st = PROBE_RESOLVE;
    run->started = uv_now(p->loop);
    t->run = run;
    run->resolve = rl_upstream_resolve(p->loop, run->uc, probe_on_resolved, run, &err);
    if (run->resolve == NULL)
        probe_finish(run, false, rl_strerror(err));
}

/* ---- the probe -------------------------------------------------------------- */

/* A round: every target without a check in progress gets one.  Name
 * resolution runs on libuv's thread pool without a timeout of its own; one
 * still unanswered when a round comes after upstream_connect_timeout fails
 * here, so that no wait is unbounded (past resolution a check has a timer
 * at every step). */
static void
probe_on_timer(uv_timer_t *timer)
{
    struct rl_probe *p = timer->data;
    char why[PROBE_WHY_MAX];

    for (size_t i = 0; i < p->ntargets; i++) {
        struct probe_run *run = p->targets[i].run;

        if (run != NULL && run->st == PROBE_RESOLVE &&
            uv_now(p->loop) - run->started >= run->connect_ms) {
            snprintf(why, sizeof(why), "cannot resolve %s: no answer", run->uc->host);
            probe_finish(run, false, why);
        }
        if (p->targets[i].run == NULL)
            probe_run_start(p, &p->targets[i]);
    }
}

static bool
probe_streq(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The same upstream as far as a check can tell. */
static bool
probe_same(const struct probe_target *a, const struct probe_target *b)
{
    const struct rl_upstream_conf *x = a->uc, *y = b->uc;

    return probe_streq(x->name, y->name) && probe_streq(x->host, y->host) && x->port == y->port &&
           x->tls == y->tls && probe_streq(x->verify_name, y->verify_name) &&
           probe_streq(x->ca_file, y->ca_file) && probe_streq(a->helo, b->helo) &&
           x->nfallback == y->nfallback &&
           memcmp(x->fallback, y->fallback, sizeof(x->fallback[0]) * x->nfallback) == 0;
}

/* The targets of snap: one per upstream that a brand uses (every brand is
 * served on every listener, by SNI), the listeners' default brands first.
 * NULL (and *n = 0) if there is none or memory is short. */
static struct probe_target *
probe_targets(const struct rl_snapshot *snap, size_t *n)
{
    const struct rl_config *cfg = snap->cfg;
    struct probe_target *ts = calloc(cfg->nupstreams + 1, sizeof(*ts));

    *n = 0;
    if (ts == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->nlisteners + cfg->nbrands; i++) {
        const struct rl_brand_conf *b =
            i < cfg->nlisteners ? cfg->listeners[i].brand : &cfg->brands[i - cfg->nlisteners];
        size_t k;

        for (k = 0; k < *n && ts[k].uc != b->upstream; k++)
            ;
        if (k < *n)
            continue;
        ts[k].uc = b->upstream;
        ts[k].helo = b->upstream->helo_name ? b->upstream->helo_name : b->hostname;
        (*n)++;
    }
    return ts;
}

/* Lets go of the current targets: their runs are abandoned. */
static void
probe_drop_targets(struct rl_probe *p)
{
    for (size_t i = 0; i < p->ntargets; i++) {
        struct probe_run *run = p->targets[i].run;

        if (run != NULL) {
            run->t = NULL;
            probe_finish(run, false, "abandoned");
        }
    }
    free(p->targets);
    p->targets = NULL;
    p->ntargets = 0;
}

struct rl_probe *
rl_probe_start(uv_loop_t *loop, struct rl_snapshot *snap)
{
    struct rl_probe *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->loop = loop;
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    rl_probe_update(p, snap);
    return p;
}

void
rl_probe_update(struct rl_probe *p, struct rl_snapshot *snap)
{
    size_t n;
    struct probe_target *ts = probe_targets(snap, &n);

    /* Results (and a run in progress) move to the same upstream in the new
     * set; the run keeps the snapshot it started with. */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < p->ntargets; j++) {
            struct probe_target *old = &p->targets[j];

            if (old->uc == NULL || !probe_same(old, &ts[i]))
                continue;
            ts[i].run = old->run;
            ts[i].checked = old->checked;
            ts[i].ok = old->ok;
            ts[i].ever_ok = old->ever_ok;
            ts[i].ok_at = old->ok_at;
            ts[i].ok_wall = old->ok_wall;
            ts[i].why_at = old->why_at;
            memcpy(ts[i].why, old->why, sizeof(ts[i].why));
            if (ts[i].run != NULL)
                ts[i].run->t = &ts[i];
            old->run = NULL;
            old->uc = NULL; /* taken */
            break;
        }
    }
    probe_drop_targets(p);
    rl_snapshot_unref(p->snap);
    p->snap = rl_snapshot_ref(snap);
    p->targets = ts;
    p->ntargets = n;
    uv_timer_start(&p->timer, probe_on_timer, 0, snap->cfg->upstream_check_interval_ms);
}

bool
rl_probe_ready(const struct rl_probe *p, FILE *why)
{
    uint64_t now = uv_now(p->loop), max_age = p->snap->cfg->ready_max_age_ms;
    bool ready = true;

    for (size_t i = 0; i < p->ntargets; i++) {
        const struct probe_target *t = &p->targets[i];

        if (t->ever_ok && now - t->ok_at <= max_age)
            continue;
        ready = false;
        if (why == NULL)
            continue;
        fprintf(why, "upstream %s: ", t->uc->name);
        if (!t->checked)
            fputs("not checked yet", why);
        else if (!t->ever_ok)
            fputs("no successful check yet", why);
        else
            fprintf(why, "last successful check %.1fs ago", (double)(now - t->ok_at) / 1e3);
        if (t->why[0] != '\0')
            fprintf(why, "; last check failed: %s", t->why);
        fputc('\n', why);
    }
    return ready;
}

void
rl_probe_render(const struct rl_probe *p, FILE *out)
{
    rl_metrics_family(out, "relabel_upstream_check_success", "gauge",
                      "1 if the last deep check of the upstream (connect, TLS, verification, "
                      "EHLO) succeeded.");
    for (size_t i = 0; i < p->ntargets; i++) {
        fputs("relabel_upstream_check_success{upstream=", out);
        rl_metrics_label_value(out, p->targets[i].uc->name);
        fprintf(out, "} %d\n", p->targets[i].checked && p->targets[i].ok ? 1 : 0);
    }
    rl_metrics_family(out, "relabel_upstream_check_last_success_timestamp_seconds", "gauge",
                      "When the last successful deep check of the upstream ended (0: never).");
    for (size_t i = 0; i < p->ntargets; i++) {
        fputs("relabel_upstream_check_last_success_timestamp_seconds{upstream=", out);
        rl_metrics_label_value(out, p->targets[i].uc->name);
        fprintf(out, "} %.3f\n", p->targets[i].ever_ok ? p->targets[i].ok_wall : 0.0);
    }
}

static void
probe_on_timer_close(uv_handle_t *h)
{
    free(h->data);
}

void
rl_probe_stop(struct rl_probe *p)
{
    probe_drop_targets(p);
    rl_snapshot_unref(p->snap);
    p->snap = NULL;
    uv_close((uv_handle_t *)&p->timer, probe_on_timer_close);
}
