/*
 * metrics.c - the counters behind /metrics and their text exposition.
 *
 * Owns one struct rl_metrics: fixed counters in arrays indexed by the enums
 * generated from metrics.h's label maps, plus two lists keyed by name (one
 * entry per listener, one per upstream) whose entries are never freed
 * before the set itself, so a reload never loses or resets a counter.  The
 * exposition walks these in a fixed order and writes Prometheus text format
 * 0.0.4: one "# HELP" and "# TYPE" per family, every family once, label
 * values escaped.
 *
 * Never here: sockets, the event loop, sessions.  Nothing is read from
 * another module while rendering: what the endpoint shows is what was
 * counted.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "relabel/metrics.h"

#define METRICS_NAME_MAX 64

enum metrics_refuse {
#define METRICS_REFUSE_ENUM(e, s) METRICS_REFUSE_##e,
    RL_METRICS_REFUSE_MAP(METRICS_REFUSE_ENUM)
#undef METRICS_REFUSE_ENUM
        METRICS_REFUSE_COUNT
};

static const char *const metrics_refuse_names[] = {
#define METRICS_REFUSE_STR(e, s) s,
    RL_METRICS_REFUSE_MAP(METRICS_REFUSE_STR)
#undef METRICS_REFUSE_STR
};

enum metrics_tls_reason {
#define METRICS_TLS_ENUM(e, s) METRICS_TLS_##e,
    RL_METRICS_TLS_REASON_MAP(METRICS_TLS_ENUM)
#undef METRICS_TLS_ENUM
        METRICS_TLS_COUNT
};

static const char *const metrics_tls_names[] = {
#define METRICS_TLS_STR(e, s) s,
    RL_METRICS_TLS_REASON_MAP(METRICS_TLS_STR)
#undef METRICS_TLS_STR
};

/* relabel_messages_total{result}: the reply class, or aborted. */
enum metrics_result { METRICS_MSG_2XX, METRICS_MSG_4XX, METRICS_MSG_5XX, METRICS_MSG_ABORTED };
static const char *const metrics_result_names[] = {"2xx", "4xx", "5xx", "aborted"};

enum metrics_dir {
    METRICS_CLIENT_IN,
    METRICS_CLIENT_OUT,
    METRICS_UPSTREAM_IN,
    METRICS_UPSTREAM_OUT
};
static const char *const metrics_dir_names[] = {"client_in", "client_out", "upstream_in",
                                                "upstream_out"};

/* Session lengths: a quick submission takes well under a second, a client
 * that keeps its connection for several messages minutes; 600 s is
 * command_timeout's neighbourhood. */
static const double metrics_buckets[] = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
#define METRICS_NBUCKETS (sizeof(metrics_buckets) / sizeof(metrics_buckets[0]))

/* What listener and upstream entries share, first in both, so that one
 * function finds or adds either kind. */
struct metrics_named {
    struct metrics_named *next;
    char name[METRICS_NAME_MAX + 1];
};

struct metrics_listener {
    struct metrics_named n;
    uint64_t connections;
    uint64_t active;
    uint64_t refused[METRICS_REFUSE_COUNT];
};

struct metrics_upstream {
    struct metrics_named n;
    uint64_t connect_failures;
    uint64_t verify_failures;
    uint64_t fallbacks;         /* sessions that moved on to a fallback port */
    uint64_t skipped_addresses; /* addresses skipped as recently broken */
};

struct metrics_cert {
    char brand[METRICS_NAME_MAX + 1];
    double not_after;
};

struct rl_metrics {
    pthread_mutex_t lock; /* counted from every worker thread, shown from the main one */
    char version[32];
    double started;
    struct metrics_named *listeners; /* struct metrics_listener, in the order first seen */
    struct metrics_named *upstreams; /* struct metrics_upstream, likewise */
    struct metrics_cert *certs;      /* the running configuration's brands */
    size_t ncerts;

    uint64_t tls_failures[2][METRICS_TLS_COUNT]; /* [0] client leg, [1] upstream leg */
    uint64_t handshakes[2][2];                   /* [leg][resumed] */
    uint64_t messages[4];
    uint64_t bytes[4];
    uint64_t auth_ok, auth_failed, plaintext_auth;
    uint64_t local_auth[3]; /* enum rl_local_auth */
    uint64_t reloads_ok, reloads_failed;
    double last_reload_ok;

    uint64_t duration_buckets[METRICS_NBUCKETS]; /* not cumulative; summed when shown */
    uint64_t duration_count;
    double duration_sum;
};

double
rl_metrics_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct rl_metrics *
rl_metrics_new(const char *version)
{
    struct rl_metrics *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    snprintf(m->version, sizeof(m->version), "%s", version);
    m->started = rl_metrics_now();
    m->last_reload_ok = m->started;
    return m;
}

static void
metrics_named_free(struct metrics_named *e)
{
    while (e != NULL) {
        struct metrics_named *next = e->next;

        free(e);
        e = next;
    }
}

void
rl_metrics_free(struct rl_metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_destroy(&m->lock);
    metrics_named_free(m->listeners);
    metrics_named_free(m->upstreams);
    free(m->certs);
    free(m);
}

/* ---- entries by name ---------------------------------------------------- */

/* The entry for name in *list, appended (size bytes, zeroed) if new; NULL
 * if memory is short: the event is then not counted, since counting must
 * never fail a session. */
static void *
metrics_named(struct metrics_named **list, const char *name, size_t size)
{
    if (name == NULL)
        return NULL;
    for (; *list != NULL; list = &(*list)->next)
        if (strcmp((*list)->name, name) == 0)
            return *list;
    *list = calloc(1, size);
    if (*list != NULL)
        snprintf((*list)->name, sizeof((*list)->name), "%s", name);
    return *list;
}

static struct metrics_listener *
metrics_listener(struct rl_metrics *m, const char *name)
{
    return m == NULL ? NULL : metrics_named(&m->listeners, name, sizeof(struct metrics_listener));
}

static struct metrics_upstream *
metrics_upstream(struct rl_metrics *m, const char *name)
{
    return m == NULL ? NULL : metrics_named(&m->upstreams, name, sizeof(struct metrics_upstream));
}

static void
metrics_locked_configure(struct rl_metrics *m, const struct rl_config *cfg, const double *not_after)
{
    struct metrics_cert *certs;

    if (m == NULL)
        return;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        metrics_listener(m, cfg->listeners[i].name);
    for (size_t i = 0; i < cfg->nupstreams; i++)
        metrics_upstream(m, cfg->upstreams[i].name);
    certs = calloc(cfg->nbrands + 1, sizeof(*certs));
    if (certs == NULL)
        return; /* the previous brands stay shown */
    for (size_t i = 0; i < cfg->nbrands; i++) {
        snprintf(certs[i].brand, sizeof(certs[i].brand), "%s", cfg->brands[i].name);
        certs[i].not_after = not_after[i];
    }
    free(m->certs);
    m->certs = certs;
    m->ncerts = cfg->nbrands;
}

/* ---- counting ------------------------------------------------------------- */

static void
metrics_locked_session_start(struct rl_metrics *m, const char *listener)
{
    struct metrics_listener *l = metrics_listener(m, listener);

    if (l == NULL)
        return;
    l->connections++;
    l->active++;
}

static void
metrics_locked_session_end(struct rl_metrics *m, const char *listener, double seconds)
{
    struct metrics_listener *l = metrics_listener(m, listener);
    size_t i;

    if (l == NULL)
        return;
    if (l->active > 0)
        l->active--;
    if (!(seconds >= 0)) /* also NaN */
        seconds = 0;
    for (i = 0; i < METRICS_NBUCKETS && seconds > metrics_buckets[i]; i++)
        ;
    if (i < METRICS_NBUCKETS)
        m->duration_buckets[i]++;
    m->duration_count++;
    m->duration_sum += seconds;
}

static void
metrics_locked_refused(struct rl_metrics *m, const char *listener, const char *reason)
{
    struct metrics_listener *l = metrics_listener(m, listener);
    size_t r = METRICS_REFUSE_OTHER;

    if (l == NULL)
        return;
    for (size_t i = 0; i < METRICS_REFUSE_COUNT && reason != NULL; i++)
        if (strcmp(metrics_refuse_names[i], reason) == 0)
            r = i;
    l->refused[r]++;
}

static void
metrics_locked_bytes(struct rl_metrics *m, bool client, unsigned long long in,
                     unsigned long long out)
{
    if (m == NULL)
        return;
    m->bytes[client ? METRICS_CLIENT_IN : METRICS_UPSTREAM_IN] += in;
    m->bytes[client ? METRICS_CLIENT_OUT : METRICS_UPSTREAM_OUT] += out;
}

static void
metrics_locked_message(struct rl_metrics *m, int code)
{
    if (m == NULL)
        return;
    if (code >= 200 && code < 300)
        m->messages[METRICS_MSG_2XX]++;
    else if (code >= 400 && code < 500)
        m->messages[METRICS_MSG_4XX]++;
    else if (code >= 500 && code < 600)
        m->messages[METRICS_MSG_5XX]++;
    else
        m->messages[METRICS_MSG_ABORTED]++;
}

static void
metrics_locked_auth(struct rl_metrics *m, int code)
{
    if (m == NULL)
        return;
    if (code == 235)
        m->auth_ok++;
    else if (code >= 500 && code < 600)
        m->auth_failed++;
}

static const char *const metrics_local_auth_names[] = {"success", "failure", "upstream_refused"};

static void
metrics_locked_plaintext_auth(struct rl_metrics *m)
{
    if (m != NULL)
        m->plaintext_auth++;
}

static void
metrics_locked_handshake(struct rl_metrics *m, bool upstream, bool resumed)
{
    if (m != NULL)
        m->handshakes[upstream][resumed]++;
}

static void
metrics_tls_failure(struct rl_metrics *m, int leg, const char *reason)
{
    size_t r = METRICS_TLS_PROTOCOL;

    for (size_t i = 0; i < METRICS_TLS_COUNT && reason != NULL; i++)
        if (strcmp(metrics_tls_names[i], reason) == 0)
            r = i;
    m->tls_failures[leg][r]++;
}

static void
metrics_locked_client_tls_failure(struct rl_metrics *m, const char *reason)
{
    if (m != NULL)
        metrics_tls_failure(m, 0, reason);
}

static void
metrics_locked_upstream_tls_failure(struct rl_metrics *m, const char *upstream, const char *reason)
{
    struct metrics_upstream *u = metrics_upstream(m, upstream);

    if (m == NULL)
        return;
    metrics_tls_failure(m, 1, reason);
    if (u != NULL && reason != NULL && strcmp(reason, "verify") == 0)
        u->verify_failures++;
}

static void
metrics_locked_upstream_connect_failure(struct rl_metrics *m, const char *upstream)
{
    struct metrics_upstream *u = metrics_upstream(m, upstream);

    if (u != NULL)
        u->connect_failures++;
}

static void
metrics_locked_upstream_fallback(struct rl_metrics *m, const char *upstream)
{
    struct metrics_upstream *u = metrics_upstream(m, upstream);

    if (u != NULL)
        u->fallbacks++;
}

static void
metrics_locked_upstream_skipped(struct rl_metrics *m, const char *upstream, unsigned n)
{
    struct metrics_upstream *u = metrics_upstream(m, upstream);

    if (u != NULL)
        u->skipped_addresses += n;
}

static void
metrics_locked_reload(struct rl_metrics *m, bool ok, double when)
{
    if (m == NULL)
        return;
    if (ok) {
        m->reloads_ok++;
        m->last_reload_ok = when;
    } else {
        m->reloads_failed++;
    }
}

/* ---- exposition ----------------------------------------------------------- */

/* Writes s with the given characters escaped: label values escape \, " and
 * line feed; HELP text escapes \ and line feed (format 0.0.4). */
static void
metrics_escaped(FILE *out, const char *s, bool quote)
{
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\\')
            fputs("\\\\", out);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '"' && quote)
            fputs("\\\"", out);
        else
            fputc(*p, out);
    }
}

void
rl_metrics_label_value(FILE *out, const char *value)
{
    fputc('"', out);
    metrics_escaped(out, value, true);
    fputc('"', out);
}

void
rl_metrics_family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s ", name);
    metrics_escaped(out, help, false);
    fprintf(out, "\n# TYPE %s %s\n", name, type);
}

/* A float as the format reads it: integers without a fraction, others with
 * enough digits to round-trip, and the special values spelled out. */
static void
metrics_float(FILE *out, double v)
{
    if (isnan(v))
        fputs("NaN", out);
    else if (isinf(v))
        fputs(v > 0 ? "+Inf" : "-Inf", out);
    else
        fprintf(out, "%.15g", v);
}

/* One sample: name{k1="v1",k2="v2"} value, labels optional (NULL). */
static void
metrics_sample(FILE *out, const char *name, const char *k1, const char *v1, const char *k2,
               const char *v2)
{
    fputs(name, out);
    if (k1 != NULL) {
        fprintf(out, "{%s=", k1);
        rl_metrics_label_value(out, v1);
        if (k2 != NULL) {
            fprintf(out, ",%s=", k2);
            rl_metrics_label_value(out, v2);
        }
        fputc('}', out);
    }
    fputc(' ', out);
}

static void
metrics_u64(FILE *out, const char *name, const char *k1, const char *v1, const char *k2,
            const char *v2, uint64_t value)
{
    metrics_sample(out, name, k1, v1, k2, v2);
    fprintf(out, "%llu\n", (unsigned long long)value);
}

static void
metrics_f64(FILE *out, const char *name, const char *k1, const char *v1, double value)
{
    metrics_sample(out, name, k1, v1, NULL, NULL);
    metrics_float(out, value);
    fputc('\n', out);
}

/* Entries are walked through their shared head; these give the whole. */
static const struct metrics_listener *
metrics_as_listener(const struct metrics_named *e)
{
    return (const struct metrics_listener *)e;
}

static const struct metrics_upstream *
metrics_as_upstream(const struct metrics_named *e)
{
    return (const struct metrics_upstream *)e;
}

static void
metrics_render_listeners(const struct rl_metrics *m, FILE *out)
{
    const struct metrics_named *e;

    rl_metrics_family(out, "relabel_connections_total", "counter",
                      "Client connections accepted, refused ones included.");
    for (e = m->listeners; e != NULL; e = e->next)
        metrics_u64(out, "relabel_connections_total", "listener", e->name, NULL, NULL,
                    metrics_as_listener(e)->connections);
    rl_metrics_family(out, "relabel_sessions_active", "gauge", "Client sessions open now.");
    for (e = m->listeners; e != NULL; e = e->next)
        metrics_u64(out, "relabel_sessions_active", "listener", e->name, NULL, NULL,
                    metrics_as_listener(e)->active);
    rl_metrics_family(out, "relabel_connections_refused_total", "counter",
                      "Client connections refused before their session began, by reason.");
    for (e = m->listeners; e != NULL; e = e->next)
        for (size_t r = 0; r < METRICS_REFUSE_COUNT; r++)
            metrics_u64(out, "relabel_connections_refused_total", "listener", e->name, "reason",
                        metrics_refuse_names[r], metrics_as_listener(e)->refused[r]);
}

static void
metrics_render_upstreams(const struct rl_metrics *m, FILE *out)
{
    const struct metrics_named *e;

    rl_metrics_family(out, "relabel_upstream_connect_failures_total", "counter",
                      "Sessions that could not connect to the upstream (resolution or every "
                      "address failed).");
    for (e = m->upstreams; e != NULL; e = e->next)
        metrics_u64(out, "relabel_upstream_connect_failures_total", "upstream", e->name, NULL, NULL,
                    metrics_as_upstream(e)->connect_failures);
    rl_metrics_family(out, "relabel_upstream_verify_failures_total", "counter",
                      "Sessions whose upstream certificate did not verify.");
    for (e = m->upstreams; e != NULL; e = e->next)
        metrics_u64(out, "relabel_upstream_verify_failures_total", "upstream", e->name, NULL, NULL,
                    metrics_as_upstream(e)->verify_failures);
    rl_metrics_family(out, "relabel_upstream_fallbacks_total", "counter",
                      "Times a session moved on to the upstream's next fallback port.");
    for (e = m->upstreams; e != NULL; e = e->next)
        metrics_u64(out, "relabel_upstream_fallbacks_total", "upstream", e->name, NULL, NULL,
                    metrics_as_upstream(e)->fallbacks);
    rl_metrics_family(out, "relabel_upstream_skipped_addresses_total", "counter",
                      "Upstream addresses a session skipped because they recently refused or "
                      "timed out.");
    for (e = m->upstreams; e != NULL; e = e->next)
        metrics_u64(out, "relabel_upstream_skipped_addresses_total", "upstream", e->name, NULL,
                    NULL, metrics_as_upstream(e)->skipped_addresses);
}

static void
metrics_render_histogram(const struct rl_metrics *m, FILE *out)
{
    static const char name[] = "relabel_session_duration_seconds";
    uint64_t cumulative = 0;
    char le[32], series[64];

    rl_metrics_family(out, name, "histogram", "Client session lengths, accept to close.");
    snprintf(series, sizeof(series), "%s_bucket", name);
    for (size_t i = 0; i < METRICS_NBUCKETS; i++) {
        cumulative += m->duration_buckets[i];
        snprintf(le, sizeof(le), "%g", metrics_buckets[i]);
        metrics_u64(out, series, "le", le, NULL, NULL, cumulative);
    }
    metrics_u64(out, series, "le", "+Inf", NULL, NULL, m->duration_count);
    snprintf(series, sizeof(series), "%s_sum", name);
    metrics_f64(out, series, NULL, NULL, m->duration_sum);
    snprintf(series, sizeof(series), "%s_count", name);
    metrics_u64(out, series, NULL, NULL, NULL, NULL, m->duration_count);
}

static void
metrics_locked_render(const struct rl_metrics *m, bool ready, FILE *out)
{
    if (m == NULL)
        return;
    rl_metrics_family(out, "relabel_build_info", "gauge", "The running version; always 1.");
    metrics_u64(out, "relabel_build_info", "version", m->version, NULL, NULL, 1);
    rl_metrics_family(out, "process_start_time_seconds", "gauge",
                      "Start time of the process since the epoch, in seconds.");
    metrics_f64(out, "process_start_time_seconds", NULL, NULL, m->started);
    rl_metrics_family(out, "relabel_ready", "gauge",
                      "1 while /readyz answers 200: listening, not draining, upstreams checked.");
    metrics_u64(out, "relabel_ready", NULL, NULL, NULL, NULL, ready ? 1 : 0);

    metrics_render_listeners(m, out);
    metrics_render_histogram(m, out);

    rl_metrics_family(out, "relabel_tls_handshakes_total", "counter",
                      "TLS handshakes that finished, by leg and whether a session was resumed.");
    for (int leg = 0; leg < 2; leg++)
        for (int res = 0; res < 2; res++)
            metrics_u64(out, "relabel_tls_handshakes_total", "leg",
                        leg == 0 ? "client" : "upstream", "resumed", res ? "yes" : "no",
                        m->handshakes[leg][res]);
    rl_metrics_family(out, "relabel_tls_handshake_failures_total", "counter",
                      "TLS handshakes that failed, by leg and reason.");
    for (int leg = 0; leg < 2; leg++)
        for (size_t r = 0; r < METRICS_TLS_COUNT; r++)
            metrics_u64(out, "relabel_tls_handshake_failures_total", "leg",
                        leg == 0 ? "client" : "upstream", "reason", metrics_tls_names[r],
                        m->tls_failures[leg][r]);
    metrics_render_upstreams(m, out);

    rl_metrics_family(out, "relabel_messages_total", "counter",
                      "Messages by the upstream's final reply to their end of data; aborted: "
                      "the message never reached its end upstream.");
    for (size_t i = 0; i < 4; i++)
        metrics_u64(out, "relabel_messages_total", "result", metrics_result_names[i], NULL, NULL,
                    m->messages[i]);
    rl_metrics_family(out, "relabel_bytes_total", "counter",
                      "Bytes on the wire (TLS included) from and to clients and upstreams.");
    for (size_t i = 0; i < 4; i++)
        metrics_u64(out, "relabel_bytes_total", "direction", metrics_dir_names[i], NULL, NULL,
                    m->bytes[i]);
    rl_metrics_family(out, "relabel_auth_total", "counter",
                      "The upstream's final replies to AUTH: 235 success, 5xx failure.");
    metrics_u64(out, "relabel_auth_total", "result", "success", NULL, NULL, m->auth_ok);
    metrics_u64(out, "relabel_auth_total", "result", "failure", NULL, NULL, m->auth_failed);
    rl_metrics_family(out, "relabel_plaintext_auth_total", "counter",
                      "AUTH commands over a plaintext client leg (require_tls = no).");
    metrics_u64(out, "relabel_plaintext_auth_total", NULL, NULL, NULL, NULL, m->plaintext_auth);
    rl_metrics_family(out, "relabel_local_auth_total", "counter",
                      "AUTH answered by relabel for a brand's own users: success, failure (bad "
                      "credentials), upstream_refused (the provider refused the brand's "
                      "credential).");
    for (size_t i = 0; i < 3; i++)
        metrics_u64(out, "relabel_local_auth_total", "result", metrics_local_auth_names[i], NULL,
                    NULL, m->local_auth[i]);

    rl_metrics_family(out, "relabel_reloads_total", "counter",
                      "Configuration reloads (SIGHUP, certificate changes), by result.");
    metrics_u64(out, "relabel_reloads_total", "result", "ok", NULL, NULL, m->reloads_ok);
    metrics_u64(out, "relabel_reloads_total", "result", "failed", NULL, NULL, m->reloads_failed);
    rl_metrics_family(out, "relabel_last_reload_success_timestamp_seconds", "gauge",
                      "When the running configuration was loaded (start-up or reload).");
    metrics_f64(out, "relabel_last_reload_success_timestamp_seconds", NULL, NULL,
                m->last_reload_ok);
    rl_metrics_family(out, "relabel_certificate_not_after_timestamp_seconds", "gauge",
                      "Expiry (notAfter) of each brand's certificate in the running "
                      "configuration.");
    for (size_t i = 0; i < m->ncerts; i++)
        metrics_f64(out, "relabel_certificate_not_after_timestamp_seconds", "brand",
                    m->certs[i].brand, m->certs[i].not_after);
}

/* ---- the public functions: one lock, taken by every worker thread ---- */

void
rl_metrics_configure(struct rl_metrics *m, const struct rl_config *cfg, const double *not_after)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_configure(m, cfg, not_after);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_session_start(struct rl_metrics *m, const char *listener)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_session_start(m, listener);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_session_end(struct rl_metrics *m, const char *listener, double seconds)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_session_end(m, listener, seconds);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_refused(struct rl_metrics *m, const char *listener, const char *reason)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_refused(m, listener, reason);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_bytes(struct rl_metrics *m, bool client, unsigned long long in, unsigned long long out)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_bytes(m, client, in, out);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_message(struct rl_metrics *m, int code)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_message(m, code);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_auth(struct rl_metrics *m, int code)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_auth(m, code);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_local_auth(struct rl_metrics *m, enum rl_local_auth result)
{
    if (m == NULL || (unsigned)result > RL_LOCAL_AUTH_UPSTREAM_REFUSED)
        return;
    pthread_mutex_lock(&m->lock);
    m->local_auth[result]++;
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_plaintext_auth(struct rl_metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_plaintext_auth(m);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_handshake(struct rl_metrics *m, bool upstream, bool resumed)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_handshake(m, upstream, resumed);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_client_tls_failure(struct rl_metrics *m, const char *reason)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_client_tls_failure(m, reason);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_upstream_tls_failure(struct rl_metrics *m, const char *upstream, const char *reason)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_upstream_tls_failure(m, upstream, reason);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_upstream_connect_failure(struct rl_metrics *m, const char *upstream)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_upstream_connect_failure(m, upstream);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_upstream_fallback(struct rl_metrics *m, const char *upstream)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_upstream_fallback(m, upstream);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_upstream_skipped(struct rl_metrics *m, const char *upstream, unsigned n)
{
    if (m == NULL || n == 0)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_upstream_skipped(m, upstream, n);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_reload(struct rl_metrics *m, bool ok, double when)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    metrics_locked_reload(m, ok, when);
    pthread_mutex_unlock(&m->lock);
}

void
rl_metrics_render(const struct rl_metrics *m, bool ready, FILE *out)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&((struct rl_metrics *)m)->lock);
    metrics_locked_render(m, ready, out);
    pthread_mutex_unlock(&((struct rl_metrics *)m)->lock);
}
