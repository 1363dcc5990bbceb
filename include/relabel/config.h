/*
 * config.h - the ini file (read with inih) as an immutable structure.
 *
 * rl_config_load() parses, applies presets and defaults, resolves the
 * references between sections and validates every value it can check
 * without TLS or sockets.  Problems are printed as "FILE:LINE: message", all
 * of them, not only the first.  After load nothing is mutated: a reload
 * builds a new config and swaps it.  Certificates and keys are checked by
 * the TLS layer (snapshot.c), with the FILE:LINE kept here.
 */
#ifndef RELABEL_CONFIG_H
#define RELABEL_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "relabel/cidr.h"
#include "relabel/limits.h"
#include "relabel/sni.h"

struct rl_users;

enum rl_tls_mode { RL_TLS_IMPLICIT, RL_TLS_STARTTLS };
enum rl_log_format { RL_LOG_TEXT, RL_LOG_JSON };

struct rl_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[64]; /* "127.0.0.1:465", "[::1]:465" */
};

/* A port to try with its own TLS mode (never plaintext). */
struct rl_upstream_port {
    uint16_t port;
    enum rl_tls_mode tls;
};

struct rl_upstream_conf {
    char *name; /* section name, or the preset's name */
    int line;   /* line of the section header (0 for a preset used by name) */
    char *host;
    uint16_t port;
    enum rl_tls_mode tls;
    char *verify_name; /* never NULL after load: defaults to host */
    char *ca_file;     /* NULL: system bundle */
    int ca_line;
    char *helo_name;           /* NULL: the brand's hostname */
    uint64_t max_message_size; /* 0: the upstream's own SIZE */
    char **hide;               /* provider names never shown to clients */
    size_t nhide;
    /* Tried in this order, each on every address, when every address
     * failed to connect or to start TLS on the port before (never after a
     * certificate that did not verify); same verify_name and CA. */
    struct rl_upstream_port fallback[RL_UPSTREAM_FALLBACK_MAX];
    size_t nfallback;
};

/* A name a brand answers to besides its hostname, with its config line. */
struct rl_brand_alias {
    char *name; /* a DNS name, or "*.example.net" */
    int line;
};

struct rl_brand_conf {
    char *name;
    int line;
    char *hostname;
    int hostname_line;
    struct rl_brand_alias *aliases; /* further names clients may ask for (SNI) */
    size_t naliases;
    char *cert; /* any key type */
    int cert_line;
    char *key;
    int key_line;
    /* Optional second pair, an RSA certificate next to an ECDSA `cert`:
     * each client gets the one its cipher suites and signature algorithms
     * allow.  NULL when not given. */
    char *cert_rsa;
    int cert_rsa_line;
    char *key_rsa;
    int key_rsa_line;
    struct rl_upstream_conf *upstream; /* points into rl_config.upstreams */
    /* Own users (users = FILE): relabel answers AUTH itself (TLS only)
     * and logs in upstream as upstream_user with the password read from
     * upstream_password_file.  NULL: AUTH is relayed as it is. */
    struct rl_users *users;
    char *users_file;
    int users_line;
    char *upstream_user;
    int upstream_user_line;
    char *upstream_password_file;
    int upstream_password_line;
    char *upstream_password; /* the file's first line; never logged */
};

struct rl_listener_conf {
    char *name;
    int line;
    struct rl_addr *addrs;
    size_t naddrs;
    int listen_line; /* line of the listen key (0 for a default listener) */
    enum rl_tls_mode tls;
    bool require_tls; /* STARTTLS listeners: nothing but EHLO/HELO/NOOP/RSET/QUIT before TLS */
    /* The default brand (points into rl_config.brands): its name is in the
     * greeting before STARTTLS, and it serves clients that send no SNI or,
     * unless sni_refuse, a name no brand answers to. */
    struct rl_brand_conf *brand;
    bool sni_refuse; /* a name no brand answers to fails the handshake (unrecognized_name) */
    /* PROXY protocol: the versions accepted (RL_PROXY_V1 | RL_PROXY_V2, see
     * proxy.h), 0 for none.  When set, every connection must come from
     * proxy_trusted (never empty then) and start with a header. */
    unsigned proxy_protocol;
    struct rl_cidr_list proxy_trusted;
    /* Access to the listener by client address: refused if deny matches,
     * else refused if allow is not empty and does not match. */
    struct rl_cidr_list allow;
    struct rl_cidr_list deny;
};

struct rl_config {
    char *path;
    atomic_int refs; /* shared by snapshots on every worker thread */

    /* [relabel] */
    char *user;  /* NULL: keep the current user */
    char *group; /* NULL: the user's primary group */
    enum rl_log_format log_format;
    int log_level; /* RL_LOG_ERROR .. RL_LOG_DEBUG (log.h) */
    char *banner;  /* greeting text after "220 <hostname> ", default "ESMTP ready" */
    unsigned handshake_timeout_ms;
    unsigned command_timeout_ms;
    unsigned data_timeout_ms;
    unsigned command_deadline_ms; /* a whole command line, however it trickles in */
    unsigned min_data_rate;       /* bytes/s a message must average after data_timeout; 0 off */
    unsigned upstream_connect_timeout_ms;
    unsigned upstream_timeout_ms;
    unsigned drain_timeout_ms;  /* SIGTERM: how long transactions may finish */
    unsigned watch_debounce_ms; /* certificate files changed: wait this long, then reload */
    size_t max_line;
    unsigned max_errors;
    unsigned max_junk_commands;        /* NOOP/RSET/VRFY/EXPN/HELP between messages */
    unsigned max_connections;          /* sessions at once, all listeners */
    unsigned max_connections_per_ip;   /* sessions at once from one client address */
    unsigned max_connection_rate;      /* new sessions per client address per minute, 0: off */
    unsigned max_upstream_connections; /* upstream legs at once; 0: max_connections bounds them */
    unsigned workers;                  /* event loops, one thread each; 0: one per CPU */
    bool bare_newline_reject;          /* bare_newline = normalize (default) | reject */

    struct rl_listener_conf *listeners;
    size_t nlisteners;
    struct rl_brand_conf *brands;
    size_t nbrands;
    struct rl_upstream_conf *upstreams; /* sections and presets in use */
    size_t nupstreams;
    /* Every brand's hostname and aliases, for choosing a brand by SNI on
     * every listener; see sni.h.  No name belongs to two brands. */
    struct rl_sni_map sni;

    /* [metrics] */
    struct rl_addr *metrics_addrs; /* none: no HTTP endpoint and no upstream checks */
    size_t metrics_naddrs;
    int metrics_listen_line;
    unsigned upstream_check_interval_ms; /* deep check of each upstream in use */
    unsigned ready_max_age_ms;           /* /readyz: how recent a successful check must be */
};

/*
 * Loads path.  On success returns 0 and *out (refs = 1).  On failure prints
 * every problem to err as "PATH:LINE: message" (LINE 0 when no line applies,
 * printed as "PATH: message") and returns the (positive) number of problems;
 * *out is left NULL.
 */
int rl_config_load(const char *path, FILE *err, struct rl_config **out);

struct rl_config *rl_config_ref(struct rl_config *cfg);
void rl_config_unref(struct rl_config *cfg);

#endif
