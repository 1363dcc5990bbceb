/*
 * main.c - the composition root: command line, configuration, TLS
 * snapshot, listeners, the metrics endpoint and upstream checks, privilege
 * drop, signals and the shutdown order.  No protocol work happens here.
 */
#define _GNU_SOURCE /* setresuid, setresgid */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "relabel/config.h"
#include "relabel/ctx.h"
#include "relabel/limits.h"
#include "relabel/listener.h"
#include "relabel/log.h"
#include "relabel/proxy.h"
#include "relabel/ratelimit.h"
#include "relabel/metrics.h"
#include "relabel/metrics_http.h"
#include "relabel/probe.h"
#include "relabel/session.h"
#include "relabel/snapshot.h"
#include "relabel/users.h"
#include "relabel/worker.h"
#include "version.h"

/* One watched directory (of a certificate, key or CA file). */
struct main_watch {
    uv_fs_event_t ev;
    struct main_state *m;
    struct main_watch *next;
};

struct main_state {
    struct rl_ctx ctx; /* the main thread's: no sessions of its own */
    struct rl_shared shared;
    const char *path;
    struct rl_workers *pool;    /* the worker threads */
    struct rl_workers *workers; /* the same, NULL once told to stop */
    unsigned nworkers;
    struct rl_metrics_http *http; /* NULL: no [metrics] listen */
    struct rl_probe *probe;       /* upstream checks; only with the endpoint */
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_signal_t sighup;
    uv_timer_t drain;    /* SIGTERM: end of the grace period */
    uv_timer_t debounce; /* watched files changed: reload when quiet */
    struct main_watch *watches;
};

static void
main_usage(FILE *out)
{
    fprintf(out, "usage: relabel [-c FILE] [--check] [--version] [--help]\n"
                 "       relabel hash-password\n"
                 "\n"
                 "A branded TLS front end for a mail provider's SMTP service.\n"
                 "\n"
                 "  -c, --config FILE  configuration file (default /etc/relabel/relabel.ini)\n"
                 "  -t, --check        validate the configuration, certificates and keys,\n"
                 "                     print what would run, and exit\n"
                 "  -V, --version      print the version and exit\n"
                 "  -h, --help         print this help and exit\n"
                 "  hash-password      read a password (standard input, or the terminal\n"
                 "                     without echo) and print its yescrypt hash for a\n"
                 "                     brand's users file\n"
                 "\n"
                 "relabel runs in the foreground and logs to standard error.\n"
                 "SIGTERM or SIGINT stops it.\n");
}

static const char *
main_tls_mode(enum rl_tls_mode m)
{
    return m == RL_TLS_IMPLICIT ? "implicit" : "starttls";
}

/* --check: a private key others can read is a finding; one the daemon
 * cannot read after dropping privileges breaks the next reload. */
static void
main_check_secret(const struct rl_config *cfg, const char *what, const char *key, int key_line)
{
    struct passwd *pw = cfg->user ? getpwnam(cfg->user) : NULL;
    struct stat st;

    if (stat(key, &st) < 0)
        return;
    if (st.st_mode & S_IROTH)
        printf("  warning: %s:%d: %s %s is readable by every user (chmod 600)\n", cfg->path,
               key_line, what, key);
    if (pw != NULL && pw->pw_uid != 0) {
        bool owner = st.st_uid == pw->pw_uid && (st.st_mode & S_IRUSR);
        bool group = st.st_gid == pw->pw_gid && (st.st_mode & S_IRGRP);

        if (!owner && !group && !(st.st_mode & S_IROTH))
            printf("  warning: %s:%d: %s %s will not be readable by user %s after the "
                   "privilege drop, so reloads will fail\n",
                   cfg->path, key_line, what, key, cfg->user);
    }
}

static void
main_check_key(const struct rl_config *cfg, const char *key, int key_line)
{
    main_check_secret(cfg, "key", key, key_line);
}

static const char *
main_proxy_versions(unsigned versions)
{
    switch (versions) {
    case RL_PROXY_V1:
        return "proxy_protocol v1 from";
    case RL_PROXY_V2:
        return "proxy_protocol v2 from";
    default:
        return "proxy_protocol v1 or v2 from";
    }
}

/* One line per non-empty list of networks: "    allow 10.0.0.0/8, ::1/128". */
static void
main_print_cidrs(const char *label, const struct rl_cidr_list *l)
{
    char text[RL_CIDR_TEXT_MAX];

    if (l->n == 0)
        return;
    printf("    %s", label);
    for (size_t i = 0; i < l->n; i++)
        printf("%s %s", i ? "," : "", rl_cidr_text(&l->items[i], text, sizeof(text)));
    printf("\n");
}

static void
main_print_summary(const struct rl_config *cfg)
{
    printf("%s: configuration ok\n", cfg->path);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct rl_listener_conf *lc = &cfg->listeners[i];

        printf("  listener %s: tls %s%s, brand %s (no SNI%s), on", lc->name, main_tls_mode(lc->tls),
               lc->tls == RL_TLS_STARTTLS ? (lc->require_tls ? " (required)" : " (optional)") : "",
               lc->brand->name, lc->sni_refuse ? "; unknown SNI refused" : " or unknown SNI");
        for (size_t j = 0; j < lc->naddrs; j++)
            printf("%s %s", j ? "," : "", lc->addrs[j].text);
        printf("\n");
        if (lc->proxy_protocol != 0)
            main_print_cidrs(main_proxy_versions(lc->proxy_protocol), &lc->proxy_trusted);
        main_print_cidrs("allow", &lc->allow);
        main_print_cidrs("deny", &lc->deny);
    }
    /* The same names choose the brand on every listener. */
    printf("  SNI names (every listener, exact names before wildcards):\n");
    for (size_t i = 0; i < cfg->sni.n; i++)
        printf("    %s -> brand %s\n", cfg->sni.items[i].name,
               cfg->brands[cfg->sni.items[i].brand].name);
    printf("  max_connection_rate: ");
    if (cfg->max_connection_rate == 0)
        printf("off\n");
    else
        printf("%u per minute per client address\n", cfg->max_connection_rate);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct rl_upstream_conf *u = &cfg->upstreams[i];

        printf("  upstream %s: %s:%u tls %s, verify %s against %s", u->name, u->host, u->port,
               main_tls_mode(u->tls), u->verify_name, u->ca_file ? u->ca_file : "system CAs");
        if (u->max_message_size)
            printf(", max message %llu bytes", (unsigned long long)u->max_message_size);
        printf("\n");
    }
    if (cfg->metrics_naddrs > 0) {
        printf("  metrics: HTTP (no authentication) on");
        for (size_t j = 0; j < cfg->metrics_naddrs; j++)
            printf("%s %s", j ? "," : "", cfg->metrics_addrs[j].text);
        printf(", upstream checks every %gs, ready while the last success is at most %gs old\n",
               cfg->upstream_check_interval_ms / 1e3, cfg->ready_max_age_ms / 1e3);
    } else {
        printf("  metrics: off (no [metrics] listen)\n");
    }
    for (size_t i = 0; i < cfg->nbrands; i++) {
        const struct rl_brand_conf *b = &cfg->brands[i];

        if (b->users != NULL)
            printf("  brand %s: own users (%zu in %s), AUTH PLAIN LOGIN over TLS only, upstream "
                   "login as %s\n",
                   b->name, b->users->n, b->users_file, b->upstream_user);
        else
            printf("  brand %s: AUTH relayed to the upstream\n", b->name);
    }
    for (size_t i = 0; i < cfg->nbrands; i++) {
        const struct rl_brand_conf *b = &cfg->brands[i];

        main_check_key(cfg, b->key, b->key_line);
        if (b->key_rsa != NULL)
            main_check_key(cfg, b->key_rsa, b->key_rsa_line);
        if (b->upstream_password_file != NULL)
            main_check_secret(cfg, "upstream_password_file", b->upstream_password_file,
                              b->upstream_password_line);
        if (b->users_file != NULL)
            main_check_secret(cfg, "users", b->users_file, b->users_line);
    }
}

/* Reads one line of at most cap - 1 bytes into buf without its line end;
 * with prompt, from the terminal with echo off.  Returns the length, or -1
 * at end of input or if the line is too long. */
static long
main_read_password(FILE *in, const char *prompt, char *buf, size_t cap)
{
    struct termios old, quiet;
    bool tty = prompt != NULL && tcgetattr(fileno(in), &old) == 0;
    size_t n;
    long rc = -1;

    if (tty) {
        fputs(prompt, stderr);
        fflush(stderr);
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(fileno(in), TCSAFLUSH, &quiet);
    }
    if (fgets(buf, (int)cap, in) != NULL) {
        n = strlen(buf);
        if (n > 0 && buf[n - 1] == '\n') {
            buf[--n] = '\0';
            if (n > 0 && buf[n - 1] == '\r')
                buf[--n] = '\0';
            rc = (long)n;
        } else if (feof(in)) {
            rc = (long)n; /* the last line, without a line end */
        }
    }
    if (tty)
        tcsetattr(fileno(in), TCSAFLUSH, &old);
    return rc;
}

/* relabel hash-password: a yescrypt hash for a users file line. */
static int
main_hash_password(void)
{
    char pw[RL_USER_PASSWORD_MAX + 2], again[RL_USER_PASSWORD_MAX + 2], hash[256];
    bool tty = isatty(STDIN_FILENO);
    long n = main_read_password(stdin, tty ? "Password: " : NULL, pw, sizeof(pw));
    int rc = 1;

    if (n < 0 || (size_t)n > RL_USER_PASSWORD_MAX) {
        fprintf(stderr, "relabel: hash-password: no password read (one line, at most %d bytes)\n",
                RL_USER_PASSWORD_MAX);
    } else if (n == 0) {
        fprintf(stderr, "relabel: hash-password: the password is empty\n");
    } else if (tty && (main_read_password(stdin, "Again: ", again, sizeof(again)) != n ||
                       strcmp(pw, again) != 0)) {
        fprintf(stderr, "relabel: hash-password: the passwords differ\n");
    } else if (rl_users_hash(pw, hash, sizeof(hash)) != 0) {
        fprintf(stderr, "relabel: hash-password: crypt failed: %s\n", strerror(errno));
    } else {
        printf("%s\n", hash);
        rc = 0;
    }
    explicit_bzero(pw, sizeof(pw));
    explicit_bzero(again, sizeof(again));
    return rc;
}

/* Drops root after the sockets are bound and the keys are read. */
static int
main_drop_privileges(const struct rl_config *cfg)
{
    struct passwd *pw;
    gid_t gid;

    if (cfg->user == NULL)
        return 0;
    errno = 0;
    pw = getpwnam(cfg->user);
    if (pw == NULL) {
        rl_log(RL_LOG_ERROR, "user %s: %s", cfg->user, errno ? strerror(errno) : "no such user");
        return -1;
    }
    gid = pw->pw_gid;
    if (cfg->group != NULL) {
        struct group *gr = getgrnam(cfg->group);

        if (gr == NULL) {
            rl_log(RL_LOG_ERROR, "group %s: no such group", cfg->group);
            return -1;
        }
        gid = gr->gr_gid;
    }
    if (getuid() == pw->pw_uid && getgid() == gid)
        return 0;
    /* Real, effective and saved ids all change: nothing to switch back to. */
    if (setgroups(1, &gid) < 0 || setresgid(gid, gid, gid) < 0 ||
        setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) {
        rl_log(RL_LOG_ERROR, "cannot switch to user %s: %s", cfg->user, strerror(errno));
        return -1;
    }
    /* Regaining root must be impossible now. */
    if (pw->pw_uid != 0 && setuid(0) == 0) {
        rl_log(RL_LOG_ERROR, "privileges could be regained after dropping them");
        return -1;
    }
    rl_log(RL_LOG_INFO, "running as user %s", cfg->user);
    return 0;
}

static void main_watch_update(struct main_state *m);

/* ---- metrics endpoint and upstream checks ------------------------------ */

/* /readyz: listening, not draining, and every upstream in use checked
 * recently enough.  Reasons go to why (may be NULL), one per line. */
static bool
main_ready(void *arg, FILE *why)
{
    struct main_state *m = arg;
    bool ready = true;

    if (m->ctx.stopping) {
        if (why != NULL)
            fputs("draining: relabel is shutting down\n", why);
        return false;
    }
    if (m->workers == NULL) {
        if (why != NULL)
            fputs("listeners: not listening\n", why);
        ready = false;
    }
    if (m->probe == NULL) {
        /* Only when starting the checks ran out of memory. */
        if (why != NULL)
            fputs("upstream checks: not running\n", why);
        ready = false;
    } else if (!rl_probe_ready(m->probe, why)) {
        ready = false;
    }
    return ready;
}

static void
main_metrics_body(void *arg, FILE *out)
{
    struct main_state *m = arg;

    rl_metrics_render(m->ctx.metrics, main_ready(m, NULL), out);
    if (m->probe != NULL)
        rl_probe_render(m->probe, out);
}

/* Binds the [metrics] addresses of snap that are new (see
 * rl_metrics_http_prepare); the caller then commits or rolls back. */
static int
main_metrics_prepare(struct main_state *m, const struct rl_snapshot *snap, FILE *err)
{
    const struct rl_config *cfg = snap->cfg;
    const struct rl_metrics_http_ops ops = {main_metrics_body, main_ready, m};

    if (m->http == NULL && cfg->metrics_naddrs > 0) {
        m->http = rl_metrics_http_new(m->ctx.loop, &ops);
        if (m->http == NULL) {
            fprintf(err, "%s: [metrics] out of memory\n", cfg->path);
            return -1;
        }
    }
    if (m->http == NULL)
        return 0;
    return rl_metrics_http_prepare(m->http, cfg->metrics_addrs, cfg->metrics_naddrs, cfg->path,
                                   cfg->metrics_listen_line, err);
}

/* Forgets what main_metrics_prepare() bound: `running` is the
 * configuration that stays. */
static void
main_metrics_rollback(struct main_state *m, const struct rl_config *running)
{
    if (m->http == NULL)
        return;
    rl_metrics_http_rollback(m->http);
    if (running == NULL || running->metrics_naddrs == 0) {
        rl_metrics_http_close(m->http);
        m->http = NULL;
    }
}

/* snap is now the running snapshot: the endpoint keeps only its
 * addresses, the checks follow its upstreams (and run only while there is
 * an endpoint to show them), the counters learn its names and brand
 * certificates. */
static void
main_metrics_commit(struct main_state *m, struct rl_snapshot *snap)
{
    const struct rl_config *cfg = snap->cfg;
    double *not_after = calloc(cfg->nbrands + 1, sizeof(*not_after));

    if (m->http != NULL) {
        rl_metrics_http_commit(m->http);
        if (cfg->metrics_naddrs == 0) {
            rl_metrics_http_close(m->http);
            m->http = NULL;
        }
    }
    if (cfg->metrics_naddrs > 0 && m->probe == NULL)
        m->probe = rl_probe_start(m->ctx.loop, snap);
    else if (cfg->metrics_naddrs > 0)
        rl_probe_update(m->probe, snap);
    else if (m->probe != NULL) {
        rl_probe_stop(m->probe);
        m->probe = NULL;
    }
    if (not_after != NULL) {
        for (size_t i = 0; i < cfg->nbrands; i++)
            not_after[i] = rl_tls_certs_not_after(snap->brand_certs[i]);
        rl_metrics_configure(m->ctx.metrics, cfg, not_after);
        free(not_after);
    }
}

/* Logs every line a failed load printed. */
static void
main_log_problems(const char *text, size_t len)
{
    const char *p = text, *end = text + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        if (n > 0)
            rl_log(RL_LOG_ERROR, "reload failed: %.*s", (int)n, p);
        p += n + 1;
    }
}

/*
 * Re-reads the config file and every certificate and key, all or nothing:
 * a problem anywhere leaves the running configuration, its certificates and
 * its listeners exactly as they were.  Running sessions keep the snapshot
 * they started with; new ones get the new one.
 */
static void
main_reload(struct main_state *m, const char *reason)
{
    struct rl_config *cfg = NULL;
    struct rl_snapshot *snap = NULL, *old;
    char *text = NULL;
    size_t len = 0;
    FILE *err = open_memstream(&text, &len);

    if (err == NULL) {
        rl_log(RL_LOG_ERROR, "reload failed reason=\"%s\": %s", reason, strerror(errno));
        rl_metrics_reload(m->ctx.metrics, false, rl_metrics_now());
        return;
    }
    if (rl_config_load(m->path, err, &cfg) == 0) {
        snap = rl_snapshot_build(cfg, err, NULL);
        rl_config_unref(cfg);
    }
    if (snap != NULL && main_metrics_prepare(m, snap, err) < 0) {
        main_metrics_rollback(m, m->ctx.snap->cfg);
        rl_snapshot_unref(snap);
        snap = NULL;
    }
    if (snap != NULL && rl_workers_update(m->workers, snap, err) < 0) {
        main_metrics_rollback(m, m->ctx.snap->cfg);
        rl_snapshot_unref(snap);
        snap = NULL;
    }
    fclose(err);
    if (snap == NULL) {
        main_log_problems(text, len);
        rl_log(RL_LOG_ERROR, "reload failed reason=\"%s\": the running configuration is kept",
               reason);
        rl_metrics_reload(m->ctx.metrics, false, rl_metrics_now());
        free(text);
        return;
    }
    free(text);
    old = m->ctx.snap;
    m->ctx.snap = snap;
    rl_snapshot_unref(old);
    main_metrics_commit(m, snap);
    rl_metrics_reload(m->ctx.metrics, true, rl_metrics_now());
    rl_log_setup(snap->cfg->log_level, snap->cfg->log_format == RL_LOG_JSON);
    main_watch_update(m);
    if (snap->cfg->workers != 0 && snap->cfg->workers != m->nworkers)
        rl_log(RL_LOG_WARN, "workers = %u takes effect at the next start; running with %u",
               snap->cfg->workers, m->nworkers);
    rl_log(RL_LOG_INFO, "reload ok reason=\"%s\" config=%s listeners=%zu brands=%zu", reason,
           m->path, snap->cfg->nlisteners, snap->cfg->nbrands);
}

static void
main_on_sighup(uv_signal_t *sig, int signum)
{
    struct main_state *m = sig->data;

    if (!m->ctx.stopping)
        main_reload(m, "SIGHUP");
}

static void
main_on_debounce(uv_timer_t *t)
{
    struct main_state *m = t->data;

    if (!m->ctx.stopping)
        main_reload(m, "files changed");
}

/* Certificate renewals come as several renames and symlink swaps in a
 * row: wait until the directory has been quiet for watch_debounce. */
static void
main_on_fs_event(uv_fs_event_t *ev, const char *name, int events, int status)
{
    struct main_watch *w = ev->data;
    struct main_state *m = w->m;

    if (m->ctx.stopping)
        return;
    rl_log(RL_LOG_DEBUG, "watched file changed: %s", name ? name : "?");
    uv_timer_start(&m->debounce, main_on_debounce, m->ctx.snap->cfg->watch_debounce_ms, 0);
}

static void
main_on_watch_close(uv_handle_t *h)
{
    free(h->data);
}

static void
main_watch_clear(struct main_state *m)
{
    while (m->watches != NULL) {
        struct main_watch *w = m->watches;

        m->watches = w->next;
        uv_close((uv_handle_t *)&w->ev, main_on_watch_close);
    }
}

/* Watches dir, once. */
static void
main_watch_dir(struct main_state *m, const char *dir)
{
    struct main_watch *w;

    for (w = m->watches; w != NULL; w = w->next) {
        char got[4096];
        size_t len = sizeof(got);

        if (uv_fs_event_getpath(&w->ev, got, &len) == 0 && strcmp(got, dir) == 0)
            return;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return;
    w->m = m;
    uv_fs_event_init(m->ctx.loop, &w->ev);
    w->ev.data = w;
    if (uv_fs_event_start(&w->ev, main_on_fs_event, dir, 0) < 0) {
        rl_log(RL_LOG_WARN, "cannot watch %s for certificate changes", dir);
        uv_close((uv_handle_t *)&w->ev, main_on_watch_close);
        return;
    }
    w->next = m->watches;
    m->watches = w;
}

/* Watches the directory that holds path. */
static void
main_watch_parent(struct main_state *m, const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];

    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else
        snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 : (int)(slash - path), path);
    main_watch_dir(m, dir);
}

/*
 * Watches what can change path: its directory, and the directory holding
 * each symlink on the way to it.  A swap of such a symlink (a Kubernetes
 * Secret's "..data", or "current -> v2") happens in the directory that
 * holds the link, which a watch on the file's own directory (inotify
 * follows the link to the old target) never sees.
 */
static void
main_watch_add(struct main_state *m, const char *path)
{
    char prefix[4096];
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(prefix))
        return;
    for (size_t i = 1; i <= n; i++) {
        struct stat st;

        if (path[i] != '/' && path[i] != '\0')
            continue;
        memcpy(prefix, path, i);
        prefix[i] = '\0';
        if (lstat(prefix, &st) == 0 && S_ISLNK(st.st_mode))
            main_watch_parent(m, prefix);
    }
    main_watch_parent(m, path);
}

/* Watches the directories of every certificate, key and CA file of the
 * running configuration. */
static void
main_watch_update(struct main_state *m)
{
    const struct rl_config *cfg = m->ctx.snap->cfg;

    main_watch_clear(m);
    for (size_t i = 0; i < cfg->nbrands; i++) {
        main_watch_add(m, cfg->brands[i].cert);
        main_watch_add(m, cfg->brands[i].key);
        if (cfg->brands[i].cert_rsa != NULL) {
            main_watch_add(m, cfg->brands[i].cert_rsa);
            main_watch_add(m, cfg->brands[i].key_rsa);
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].ca_file != NULL)
            main_watch_add(m, cfg->upstreams[i].ca_file);
    /* A brand's users and the provider's password: reloaded like keys. */
    for (size_t i = 0; i < cfg->nbrands; i++) {
        if (cfg->brands[i].users_file != NULL)
            main_watch_add(m, cfg->brands[i].users_file);
        if (cfg->brands[i].upstream_password_file != NULL)
            main_watch_add(m, cfg->brands[i].upstream_password_file);
    }
}

/* Sessions on every worker. */
static unsigned long
main_sessions(struct main_state *m)
{
    unsigned long n;

    pthread_mutex_lock(&m->shared.lock);
    n = m->shared.nsessions;
    pthread_mutex_unlock(&m->shared.lock);
    return n;
}

static void
main_on_drain_timeout(uv_timer_t *t)
{
    struct main_state *m = t->data;

    rl_log(RL_LOG_WARN, "drain timeout: ending the remaining sessions=%lu", main_sessions(m));
    rl_workers_shutdown(m->pool, true);
}

/* Every worker's loop has ended: so can the main one (its other handles
 * were unreferenced when the signal came). */
static void
main_on_workers_done(void *arg)
{
    struct main_state *m = arg;

    uv_timer_stop(&m->drain);
}

/*
 * SIGTERM/SIGINT: stop accepting, let transactions in progress finish for
 * drain_timeout, end everything else now.  A second signal ends everything
 * at once.  The handles that remain (signals, timers) are unreferenced, so
 * the loop ends as soon as the last session has closed.
 */
static void
main_on_signal(uv_signal_t *sig, int signum)
{
    struct main_state *m = sig->data;

    if (m->ctx.stopping) {
        rl_log(RL_LOG_WARN, "received %s again: ending the remaining sessions=%lu",
               strsignal(signum), main_sessions(m));
        rl_workers_shutdown(m->pool, true);
        return;
    }
    m->ctx.stopping = true;
    rl_log(RL_LOG_INFO, "received %s, draining sessions=%lu drain_timeout=%ums", strsignal(signum),
           main_sessions(m), m->ctx.snap->cfg->drain_timeout_ms);
    /* Each worker closes its listeners, ends its idle sessions and lets
     * transactions finish; /readyz says not ready from now on. */
    rl_workers_shutdown(m->pool, false);
    m->workers = NULL;
    /* /readyz answers 503 from now on, so orchestrators stop sending; the
     * endpoint stays up but no longer keeps the loop alive. */
    if (m->probe != NULL) {
        rl_probe_stop(m->probe);
        m->probe = NULL;
    }
    if (m->http != NULL)
        rl_metrics_http_unref(m->http);
    main_watch_clear(m);
    uv_timer_stop(&m->debounce);
    uv_unref((uv_handle_t *)&m->sigint);
    uv_unref((uv_handle_t *)&m->sigterm);
    uv_unref((uv_handle_t *)&m->sighup);
    uv_timer_start(&m->drain, main_on_drain_timeout, m->ctx.snap->cfg->drain_timeout_ms, 0);
    uv_unref((uv_handle_t *)&m->drain);
}

int
main(int argc, char **argv)
{
    const char *path = "/etc/relabel/relabel.ini";
    struct rl_config *cfg = NULL;
    struct rl_snapshot *snap;
    struct main_state m;
    uv_loop_t loop;
    bool check = false;
    int rc;

    if (argc == 2 && strcmp(argv[1], "hash-password") == 0)
        return main_hash_password();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (++i == argc) {
                fprintf(stderr, "relabel: %s needs a file name\n", a);
                return 2;
            }
            path = argv[i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            path = a + 9;
        } else if (strcmp(a, "-t") == 0 || strcmp(a, "--check") == 0) {
            check = true;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("relabel %s\n", RELABEL_VERSION);
            return 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            main_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "relabel: unknown argument '%s'\n", a);
            main_usage(stderr);
            return 2;
        }
    }

    rc = rl_config_load(path, stderr, &cfg);
    if (rc != 0) {
        fprintf(stderr, "relabel: %d problem%s in %s\n", rc, rc == 1 ? "" : "s", path);
        return 1;
    }
    rl_log_setup(cfg->log_level, cfg->log_format == RL_LOG_JSON);

    if (check)
        main_print_summary(cfg);
    snap = rl_snapshot_build(cfg, stderr, check ? stdout : NULL);
    rl_config_unref(cfg);
    if (snap == NULL) {
        fprintf(stderr, "relabel: %s: certificate or key problems, not started\n", path);
        return 1;
    }
    if (check) {
        rl_snapshot_unref(snap);
        return 0;
    }

    /* A client that vanishes must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);

    memset(&m, 0, sizeof(m));
    uv_loop_init(&loop);
    m.path = path;
    m.ctx.loop = &loop;
    m.ctx.snap = snap;
    m.ctx.shared = &m.shared;
    pthread_mutex_init(&m.shared.lock, NULL);
    m.nworkers = snap->cfg->workers != 0 ? snap->cfg->workers : rl_workers_auto();
    m.ctx.metrics = rl_metrics_new(RELABEL_VERSION);
    if (m.ctx.metrics == NULL) {
        fprintf(stderr, "relabel: out of memory\n");
        rl_snapshot_unref(snap);
        return 1;
    }
    if (uv_random(NULL, NULL, &m.ctx.id_seed, sizeof(m.ctx.id_seed), 0, NULL) < 0)
        m.ctx.id_seed = (uint64_t)getpid() * 0x100000001b3ULL ^ (uint64_t)uv_hrtime();
    /* Allocated once, whatever the rate, so a reload can turn it on. */
    m.shared.rate = rl_ratelimit_new(RL_RATELIMIT_SLOTS, m.ctx.id_seed ^ 0x5851f42d4c957f2dULL);
    if (m.shared.rate == NULL) {
        rl_log(RL_LOG_ERROR, "cannot allocate the connection rate table: out of memory");
        uv_loop_close(&loop);
        rl_snapshot_unref(snap);
        rl_metrics_free(m.ctx.metrics);
        return 1;
    }

    rc = rl_workers_start(m.nworkers, &loop, &m.shared, m.ctx.metrics, m.ctx.id_seed, snap, stderr,
                          main_on_workers_done, &m, &m.pool);
    if (rc == 0)
        rc = main_metrics_prepare(&m, snap, stderr);
    if (rc < 0 || main_drop_privileges(snap->cfg) < 0) {
        if (m.pool != NULL)
            rl_workers_discard(m.pool);
        main_metrics_rollback(&m, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        rl_snapshot_unref(snap);
        rl_ratelimit_free(m.shared.rate);
        rl_metrics_free(m.ctx.metrics);
        return 1;
    }
    m.workers = m.pool;
    main_metrics_commit(&m, snap);

    uv_signal_init(&loop, &m.sigint);
    uv_signal_init(&loop, &m.sigterm);
    uv_signal_init(&loop, &m.sighup);
    uv_timer_init(&loop, &m.drain);
    uv_timer_init(&loop, &m.debounce);
    m.sigint.data = m.sigterm.data = m.sighup.data = &m;
    m.drain.data = m.debounce.data = &m;
    uv_signal_start(&m.sigint, main_on_signal, SIGINT);
    uv_signal_start(&m.sigterm, main_on_signal, SIGTERM);
    uv_signal_start(&m.sighup, main_on_sighup, SIGHUP);
    main_watch_update(&m);

    rl_workers_run(m.pool);
    rl_log(RL_LOG_INFO, "relabel ready version=%s config=%s listeners=%zu workers=%u pid=%ld",
           RELABEL_VERSION, path, snap->cfg->nlisteners, m.nworkers, (long)getpid());
    uv_run(&loop, UV_RUN_DEFAULT);
    rl_workers_join(m.pool);

    /* Every session has ended: close what is left and let the close
     * callbacks run, so the loop closes with nothing open. */
    main_watch_clear(&m);
    if (m.probe != NULL)
        rl_probe_stop(m.probe);
    if (m.http != NULL)
        rl_metrics_http_close(m.http);
    uv_close((uv_handle_t *)&m.sigint, NULL);
    uv_close((uv_handle_t *)&m.sigterm, NULL);
    uv_close((uv_handle_t *)&m.sighup, NULL);
    uv_close((uv_handle_t *)&m.drain, NULL);
    uv_close((uv_handle_t *)&m.debounce, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&loop);
    if (rc != 0)
        rl_log(RL_LOG_ERROR, "event loop closed with handles open: %s", uv_strerror(rc));
    rl_snapshot_unref(m.ctx.snap);
    m.ctx.snap = NULL;
    rl_ratelimit_free(m.shared.rate);
    rl_metrics_free(m.ctx.metrics);
    pthread_mutex_destroy(&m.shared.lock);
    rl_log(RL_LOG_INFO, "relabel stopped");
    return rc == 0 ? 0 : 1;
}
