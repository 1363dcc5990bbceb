/*
 * snapshot.h - an immutable, ref-counted view of everything a session
 * needs: the parsed config plus the TLS objects built from it (each brand's
 * certificates, one server configuration per listener serving every brand
 * by SNI, one client configuration per upstream).
 * A session holds a reference for its whole life, so a later reload can
 * swap in a new snapshot without touching running sessions.
 */
#ifndef RELABEL_SNAPSHOT_H
#define RELABEL_SNAPSHOT_H

#include <stdatomic.h>
#include <stdio.h>

#include "relabel/config.h"
#include "relabel/tls.h"

struct rl_snapshot {
    atomic_int refs; /* sessions on every worker thread hold references */
    struct rl_config *cfg;
    struct rl_tls_certs **brand_certs; /* parallel to cfg->brands */
    struct rl_tls_conf **listener_tls; /* parallel to cfg->listeners */
    struct rl_tls_conf **upstream_tls; /* parallel to cfg->upstreams */
};

/*
 * Builds the TLS configurations for cfg (taking a reference on it).  Every
 * certificate, key and CA problem is printed to err as "PATH:LINE: message";
 * returns NULL if there was any.  With `describe`, prints each brand with
 * its certificates (subject, names, expiry, key type) to it, and a warning
 * for every name of the brand a certificate does not cover.
 */
struct rl_snapshot *rl_snapshot_build(struct rl_config *cfg, FILE *err, FILE *describe);

struct rl_snapshot *rl_snapshot_ref(struct rl_snapshot *snap);
void rl_snapshot_unref(struct rl_snapshot *snap);

/* The server configuration of a listener: its default brand, every other
 * brand by SNI.  rl_tls_brand() of an engine made from it indexes
 * snap->cfg->brands. */
struct rl_tls_conf *rl_snapshot_listener_tls(const struct rl_snapshot *snap,
                                             const struct rl_listener_conf *lc);
struct rl_tls_conf *rl_snapshot_upstream_tls(const struct rl_snapshot *snap,
                                             const struct rl_upstream_conf *up);

#endif
