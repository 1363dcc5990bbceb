/*
 * metrics.h - relabel's counters and their Prometheus text exposition
 * (format 0.0.4).
 *
 * Counters are plain integers bumped where the state changes (a session
 * starts, a message ends, a handshake fails); the HTTP endpoint only reads
 * them.  Every function accepts m == NULL and then does nothing, so code
 * that runs without an endpoint (tests, fuzzing) needs no special case.
 * Nothing here allocates on the data path except the first time a
 * listener or upstream name is seen, and no value ever holds message data
 * or a secret: labels are configuration names and fixed words.
 *
 * Per-listener and per-upstream series are keyed by name, so they survive a
 * reload that keeps the name; a name that a reload removes keeps its last
 * values (its sessions still end and count).
 */
#ifndef RELABEL_METRICS_H
#define RELABEL_METRICS_H

#include <stdbool.h>
#include <stdio.h>

#include "relabel/config.h"

/*
 * Why a connection was refused before its session began, the `reason`
 * label of relabel_connections_refused_total.  rl_metrics_refused() takes
 * the string; any other string counts as "other".
 */
#define RL_METRICS_REFUSE_MAP(X)                                                                   \
    X(MAX_CONNECTIONS, "max_connections")               /* the global limit */                     \
    X(MAX_CONNECTIONS_PER_IP, "max_connections_per_ip") /* the per-address limit */                \
    X(DENIED, "denied")                                 /* an allow/deny rule */                   \
    X(RATE, "rate")                                     /* a per-address connection rate */        \
    X(PROXY, "proxy") /* PROXY header missing, bad or untrusted */                                 \
    X(MAX_UPSTREAM_CONNECTIONS, "max_upstream_connections") /* no upstream connection left */      \
    X(SHUTDOWN, "shutdown")                                 /* relabel is stopping */              \
    X(OTHER, "other")

/* Why a TLS handshake failed, the `reason` label of
 * relabel_tls_handshake_failures_total (rl_conn_tls_failure() gives one). */
#define RL_METRICS_TLS_REASON_MAP(X)                                                               \
    X(VERIFY, "verify")     /* the peer's certificate did not verify (upstream leg) */             \
    X(ALERT, "alert")       /* the peer sent a fatal alert */                                      \
    X(CLOSED, "closed")     /* the peer closed or reset the connection */                          \
    X(TIMEOUT, "timeout")   /* the handshake did not finish in time */                             \
    X(SNI, "sni")           /* the client's SNI named no brand, and sni_unknown = refuse */        \
    X(PROTOCOL, "protocol") /* anything else: no common cipher or version, bad records */

struct rl_metrics;

/* A new set, all zero; `version` goes into relabel_build_info.  NULL on
 * allocation failure. */
struct rl_metrics *rl_metrics_new(const char *version);
void rl_metrics_free(struct rl_metrics *m);

/*
 * The running configuration: its listeners and upstreams get series (at 0)
 * before anything happens to them, and relabel_certificate_not_after_...
 * shows exactly its brands, with not_after[i] (seconds since the epoch) for
 * cfg->brands[i].  Names of an earlier configuration keep their counters.
 */
void rl_metrics_configure(struct rl_metrics *m, const struct rl_config *cfg,
                          const double *not_after);

/* A client connection was accepted on `listener` / its session ended after
 * `seconds`.  Each start is matched by one end. */
void rl_metrics_session_start(struct rl_metrics *m, const char *listener);
void rl_metrics_session_end(struct rl_metrics *m, const char *listener, double seconds);

/* A connection on `listener` was refused; reason: see RL_METRICS_REFUSE_MAP. */
void rl_metrics_refused(struct rl_metrics *m, const char *listener, const char *reason);

/* Bytes on the wire of one closed connection of either leg. */
void rl_metrics_bytes(struct rl_metrics *m, bool client, unsigned long long in,
                      unsigned long long out);

/* A message ended: `code` is the upstream's final reply to its end of data,
 * 0 when the message never reached its end upstream (aborted). */
void rl_metrics_message(struct rl_metrics *m, int code);

/* The upstream's final reply to AUTH: 235 counts as success, 5xx as
 * failure, anything else not at all.  Plaintext: an AUTH over a plaintext
 * client leg (require_tls = no). */
void rl_metrics_auth(struct rl_metrics *m, int code);
void rl_metrics_plaintext_auth(struct rl_metrics *m);
/* AUTH answered by relabel for a brand's own users. */
enum rl_local_auth { RL_LOCAL_AUTH_SUCCESS, RL_LOCAL_AUTH_FAILURE, RL_LOCAL_AUTH_UPSTREAM_REFUSED };
void rl_metrics_local_auth(struct rl_metrics *m, enum rl_local_auth result);
/* A finished TLS handshake on the client or the upstream leg. */
void rl_metrics_handshake(struct rl_metrics *m, bool upstream, bool resumed);

/* Handshake failures; reason: see RL_METRICS_TLS_REASON_MAP (others count
 * as "protocol").  On the upstream leg "verify" also counts in
 * relabel_upstream_verify_failures_total{upstream}. */
void rl_metrics_client_tls_failure(struct rl_metrics *m, const char *reason);
void rl_metrics_upstream_tls_failure(struct rl_metrics *m, const char *upstream,
                                     const char *reason);

/* A session could not connect to `upstream` (resolution or every address). */
void rl_metrics_upstream_connect_failure(struct rl_metrics *m, const char *upstream);
/* A session moved on to the upstream's next fallback port. */
void rl_metrics_upstream_fallback(struct rl_metrics *m, const char *upstream);
/* A session skipped n of the upstream's addresses as recently broken. */
void rl_metrics_upstream_skipped(struct rl_metrics *m, const char *upstream, unsigned n);

/* A reload finished; `when` is the wall clock (rl_metrics_now()).  The
 * start-up load counts as the first successful one (not in the total). */
void rl_metrics_reload(struct rl_metrics *m, bool ok, double when);

/* Seconds since the epoch, with fractions. */
double rl_metrics_now(void);

/* The whole exposition, relabel_ready set from `ready`. */
void rl_metrics_render(const struct rl_metrics *m, bool ready, FILE *out);

/* For other modules' series: "# HELP" and "# TYPE" lines (help escaped), and
 * a label value in quotes, escaped as the format requires (\\, \", \n). */
void rl_metrics_family(FILE *out, const char *name, const char *type, const char *help);
void rl_metrics_label_value(FILE *out, const char *value);

#endif
