/*
 * snapshot.c - joins a parsed config with the TLS configurations built from
 * it.  The only place where config values meet the TLS layer: config.c
 * stays free of TLS calls, tls.c free of config knowledge.
 *
 * Per snapshot: each brand's certificates (one or two, and its session
 * ticket keys), one server configuration per listener serving every brand
 * by SNI, one client configuration per upstream.  Everything is built anew
 * on reload, so a new certificate is read and old sessions keep theirs.
 */
#include <stdlib.h>

#include "relabel/snapshot.h"

/* Loads a brand's certificates: cert/key, then the optional RSA pair.
 * Problems go to err as "PATH:LINE: brand "NAME": ...". */
static struct rl_tls_certs *
snapshot_brand_certs(const struct rl_config *cfg, const struct rl_brand_conf *b, FILE *err)
{
    struct rl_tls_certs *c;
    char msg[512];
    bool rsa = false;

    msg[0] = '\0';
    c = rl_tls_certs_new(msg, sizeof(msg));
    if (c == NULL || rl_tls_certs_add(c, b->cert, b->key, NULL, msg, sizeof(msg)) != 0) {
        fprintf(err, "%s:%d: brand \"%s\": %s\n", cfg->path, b->cert_line, b->name, msg);
        rl_tls_certs_free(c);
        return NULL;
    }
    if (b->cert_rsa == NULL)
        return c;
    if (rl_tls_certs_add(c, b->cert_rsa, b->key_rsa, &rsa, msg, sizeof(msg)) != 0) {
        fprintf(err, "%s:%d: brand \"%s\": %s\n", cfg->path, b->cert_rsa_line, b->name, msg);
        rl_tls_certs_free(c);
        return NULL;
    }
    if (!rsa) {
        fprintf(err,
                "%s:%d: brand \"%s\": cert_rsa %s holds an EC key; cert_rsa is for an RSA "
                "certificate next to the ECDSA one in cert\n",
                cfg->path, b->cert_rsa_line, b->name, b->cert_rsa);
        rl_tls_certs_free(c);
        return NULL;
    }
    return c;
}

/* --check: warns about every name of the brand a certificate does not
 * cover, since a client asking for it would fail to verify that
 * certificate. */
static void
snapshot_check_names(const struct rl_config *cfg, const struct rl_brand_conf *b,
                     const struct rl_tls_certs *c, FILE *out)
{
    for (size_t i = 0; i < rl_tls_certs_count(c); i++) {
        const char *path = i == 0 ? b->cert : b->cert_rsa;
        int line = i == 0 ? b->cert_line : b->cert_rsa_line;

        if (!rl_tls_certs_covers(c, i, b->hostname))
            fprintf(out, "    warning: %s:%d: certificate %s does not cover hostname %s\n",
                    cfg->path, line, path, b->hostname);
        for (size_t j = 0; j < b->naliases; j++)
            if (!rl_tls_certs_covers(c, i, b->aliases[j].name))
                fprintf(out, "    warning: %s:%d: certificate %s does not cover alias %s\n",
                        cfg->path, b->aliases[j].line, path, b->aliases[j].name);
    }
}

/* Loads every brand's certificates; with describe, prints what --check
 * shows of each.  Returns the number of problems. */
static int
snapshot_brands(struct rl_snapshot *snap, FILE *err, FILE *describe)
{
    const struct rl_config *cfg = snap->cfg;
    char msg[512];
    int problems = 0;

    for (size_t i = 0; i < cfg->nbrands; i++) {
        const struct rl_brand_conf *b = &cfg->brands[i];
        struct rl_tls_certs *c = snapshot_brand_certs(cfg, b, err);

        snap->brand_certs[i] = c;
        if (c == NULL) {
            problems++;
            continue;
        }
        if (describe != NULL) {
            fprintf(describe, "  brand %s: hostname %s, upstream %s\n", b->name, b->hostname,
                    b->upstream->name);
            for (size_t j = 0; j < b->naliases; j++)
                fprintf(describe, "%s%s", j == 0 ? "    aliases " : ", ", b->aliases[j].name);
            if (b->naliases > 0)
                fprintf(describe, "\n");
        }
        /* An expired certificate fails every client's verification: it is
         * refused at start and on reload, as --check refuses it. */
        for (size_t j = 0; j < rl_tls_certs_count(c); j++) {
            const char *path = j == 0 ? b->cert : b->cert_rsa;
            long days = rl_tls_certs_describe(c, j, msg, sizeof(msg));

            if (describe != NULL) {
                fprintf(describe, "    certificate %s: %s\n", path, msg);
                if (days >= 0 && days < 14)
                    fprintf(describe, "    warning: certificate expires in %ld days\n", days);
            }
            if (days < 0) {
                fprintf(err, "%s:%d: brand \"%s\": certificate %s has expired\n", cfg->path,
                        j == 0 ? b->cert_line : b->cert_rsa_line, b->name, path);
                problems++;
            }
        }
        if (describe != NULL)
            snapshot_check_names(cfg, b, c, describe);
    }
    return problems;
}

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
    snap->brand_certs = calloc(cfg->nbrands + 1, sizeof(*snap->brand_certs));
    snap->listener_tls = calloc(cfg->nlisteners + 1, sizeof(*snap->listener_tls));
    snap->upstream_tls = calloc(cfg->nupstreams + 1, sizeof(*snap->upstream_tls));
    if (snap->brand_certs == NULL || snap->listener_tls == NULL || snap->upstream_tls == NULL) {
        rl_snapshot_unref(snap);
        return NULL;
    }
    problems += snapshot_brands(snap, err, describe);
    for (size_t i = 0; problems == 0 && i < cfg->nlisteners; i++) {
        const struct rl_listener_conf *lc = &cfg->listeners[i];

        msg[0] = '\0';
        snap->listener_tls[i] = rl_tls_conf_server_sni(snap->brand_certs, cfg->nbrands, &cfg->sni,
                                                       (size_t)(lc->brand - cfg->brands),
                                                       lc->sni_refuse, msg, sizeof(msg));
        if (snap->listener_tls[i] == NULL) {
            fprintf(err, "%s:%d: listener \"%s\": %s\n", cfg->path, lc->line, lc->name, msg);
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
    /* The listeners' confs point at the brands' certificates: they go
     * first. */
    if (snap->listener_tls != NULL)
        for (size_t i = 0; i < snap->cfg->nlisteners; i++)
            rl_tls_conf_free(snap->listener_tls[i]);
    if (snap->brand_certs != NULL)
        for (size_t i = 0; i < snap->cfg->nbrands; i++)
            rl_tls_certs_free(snap->brand_certs[i]);
    if (snap->upstream_tls != NULL)
        for (size_t i = 0; i < snap->cfg->nupstreams; i++)
            rl_tls_conf_free(snap->upstream_tls[i]);
    free(snap->listener_tls);
    free(snap->brand_certs);
    free(snap->upstream_tls);
    rl_config_unref(snap->cfg);
    free(snap);
}

struct rl_tls_conf *
rl_snapshot_listener_tls(const struct rl_snapshot *snap, const struct rl_listener_conf *lc)
{
    return snap->listener_tls[lc - snap->cfg->listeners];
}

struct rl_tls_conf *
rl_snapshot_upstream_tls(const struct rl_snapshot *snap, const struct rl_upstream_conf *up)
{
    return snap->upstream_tls[up - snap->cfg->upstreams];
}
