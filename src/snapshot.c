/*
 * snapshot.c - joins a parsed config with the TLS configurations built from
 * it.  The only place where config values meet the TLS layer: config.c
 * stays free of TLS calls, tls.c free of config knowledge.
 */
#include <stdlib.h>

#include "relabel/snapshot.h"

struct rl_snapshot *
rl_snapshot_build(struct rl_config *cfg, FILE *err, FILE *describe)
{
    struct rl_snapshot *snap = calloc(1, sizeof(*snap));
    char msg[512];
    int problems = 0;

    if (snap == NULL)
        return NULL;
    atomic_init(&snap->refs, 1);
    snap->cfg = rl_config_ref(cfg);
    snap->brand_tls = calloc(cfg->nbrands + 1, sizeof(*snap->brand_tls));
    snap->upstream_tls = calloc(cfg->nupstreams + 1, sizeof(*snap->upstream_tls));
    if (snap->brand_tls == NULL || snap->upstream_tls == NULL) {
        rl_snapshot_unref(snap);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nbrands; i++) {
        const struct rl_brand_conf *b = &cfg->brands[i];
        long days;

        msg[0] = '\0';
        snap->brand_tls[i] = rl_tls_conf_server(b->cert, b->key, msg, sizeof(msg));
        if (snap->brand_tls[i] == NULL) {
            fprintf(err, "%s:%d: brand \"%s\": %s\n", cfg->path, b->cert_line, b->name, msg);
            problems++;
            continue;
        }
        /* An expired certificate fails every client's verification: it is
         * refused at start and on reload, as --check refuses it. */
        days = rl_tls_conf_describe(snap->brand_tls[i], msg, sizeof(msg));
        if (describe != NULL) {
            fprintf(describe, "  brand %s: hostname %s, upstream %s\n    certificate %s: %s\n",
                    b->name, b->hostname, b->upstream->name, b->cert, msg);
            if (days >= 0 && days < 14)
                fprintf(describe, "    warning: certificate expires in %ld days\n", days);
        }
        if (days < 0) {
            fprintf(err, "%s:%d: brand \"%s\": certificate %s has expired\n", cfg->path,
                    b->cert_line, b->name, b->cert);
            problems++;
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct rl_upstream_conf *u = &cfg->upstreams[i];

        msg[0] = '\0';
        snap->upstream_tls[i] = rl_tls_conf_client(u->ca_file, msg, sizeof(msg));
        if (snap->upstream_tls[i] == NULL) {
            fprintf(err, "%s:%d: upstream \"%s\": %s\n", cfg->path,
                    u->ca_file ? u->ca_line : u->line, u->name, msg);
            problems++;
        }
    }
    if (problems > 0) {
        rl_snapshot_unref(snap);
        return NULL;
    }
    return snap;
}

struct rl_snapshot *
rl_snapshot_ref(struct rl_snapshot *snap)
{
    atomic_fetch_add_explicit(&snap->refs, 1, memory_order_relaxed);
    return snap;
}

void
rl_snapshot_unref(struct rl_snapshot *snap)
{
    if (snap == NULL || atomic_fetch_sub_explicit(&snap->refs, 1, memory_order_acq_rel) > 1)
        return;
    if (snap->brand_tls != NULL)
        for (size_t i = 0; i < snap->cfg->nbrands; i++)
            rl_tls_conf_free(snap->brand_tls[i]);
    if (snap->upstream_tls != NULL)
        for (size_t i = 0; i < snap->cfg->nupstreams; i++)
            rl_tls_conf_free(snap->upstream_tls[i]);
    free(snap->brand_tls);
    free(snap->upstream_tls);
    rl_config_unref(snap->cfg);
    free(snap);
}

struct rl_tls_conf *
rl_snapshot_brand_tls(const struct rl_snapshot *snap, const struct rl_brand_conf *brand)
{
    return snap->brand_tls[brand - snap->cfg->brands];
}

struct rl_tls_conf *
rl_snapshot_upstream_tls(const struct rl_snapshot *snap, const struct rl_upstream_conf *up)
{
    return snap->upstream_tls[up - snap->cfg->upstreams];
}
