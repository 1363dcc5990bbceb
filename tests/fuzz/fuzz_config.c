/*
 * fuzz_config.c - rl_config_load() on arbitrary files.
 *
 * The input is written to one temporary file (created once per process and
 * rewritten for each input) and loaded with problems printed to /dev/null.
 * A failed load must return a positive count and leave *out NULL.  A loaded
 * config must hold what the contract and the example file promise: at least
 * one listener, each with at least one address (IPv4 or IPv6, port set,
 * text NUL-terminated), no address used twice, a brand inside
 * cfg->brands; every brand a hostname and an upstream inside
 * cfg->upstreams; every upstream a host, a port, verify_name non-NULL and
 * hide names non-NULL; [relabel] values inside their documented ranges.
 * LeakSanitizer checks that every load, failed or not, frees everything.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include "fuzz_common.h"

#include "relabel/config.h"
#include "relabel/limits.h"

static char config_path[64];
static int config_fd = -1;
static FILE *config_null;

static void
config_cleanup(void)
{
    if (config_fd >= 0)
        unlink(config_path);
}

static void
config_setup(void)
{
    const char *dir = getenv("TMPDIR");

    if (config_fd >= 0)
        return;
    if (dir == NULL || dir[0] == '\0' || strlen(dir) > sizeof(config_path) - 32)
        dir = "/tmp";
    snprintf(config_path, sizeof(config_path), "%s/fuzz_config.XXXXXX", dir);
    config_fd = mkstemp(config_path);
    FUZZ_CHECK(config_fd >= 0);
    atexit(config_cleanup);
    config_null = fopen("/dev/null", "w");
    FUZZ_CHECK(config_null != NULL);
}

static bool
config_in(const void *p, const void *base, size_t n, size_t size)
{
    const char *c = p, *b = base;

    return b != NULL && c >= b && c < b + n * size && (size_t)(c - b) % size == 0;
}

static void
config_check_addr(const struct rl_addr *a)
{
    FUZZ_CHECK(memchr(a->text, '\0', sizeof(a->text)) != NULL);
    FUZZ_CHECK(a->text[0] != '\0');
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;

        FUZZ_CHECK(a->len == sizeof(*sin));
        FUZZ_CHECK(sin->sin_port != 0);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->ss;

        FUZZ_CHECK(a->ss.ss_family == AF_INET6);
        FUZZ_CHECK(a->len == sizeof(*sin6));
        FUZZ_CHECK(sin6->sin6_port != 0);
    }
}

static void
config_check(const struct rl_config *cfg)
{
    size_t i, j, k, l;

    FUZZ_CHECK(cfg->refs == 1);
    FUZZ_CHECK(cfg->path != NULL && strcmp(cfg->path, config_path) == 0);
    FUZZ_CHECK(cfg->log_format == RL_LOG_TEXT || cfg->log_format == RL_LOG_JSON);
    FUZZ_CHECK(cfg->banner != NULL && strlen(cfg->banner) <= 200);
    for (const char *b = cfg->banner; *b != '\0'; b++)
        FUZZ_CHECK(*b >= 0x20 && *b < 0x7f);
    FUZZ_CHECK(cfg->handshake_timeout_ms >= 1000 && cfg->handshake_timeout_ms <= 3600000);
    FUZZ_CHECK(cfg->command_timeout_ms >= 1000 && cfg->command_timeout_ms <= 3600000);
    FUZZ_CHECK(cfg->data_timeout_ms >= 1000 && cfg->data_timeout_ms <= 3600000);
    FUZZ_CHECK(cfg->upstream_connect_timeout_ms >= 1000 &&
               cfg->upstream_connect_timeout_ms <= 3600000);
    FUZZ_CHECK(cfg->upstream_timeout_ms >= 1000 && cfg->upstream_timeout_ms <= 3600000);
    FUZZ_CHECK(cfg->max_line >= RL_SMTP_LINE_MIN && cfg->max_line <= RL_SMTP_LINE_MAX);
    FUZZ_CHECK(cfg->max_errors >= 1 && cfg->max_errors <= 1000);

    FUZZ_CHECK(cfg->nupstreams >= 1 && cfg->upstreams != NULL);
    for (i = 0; i < cfg->nupstreams; i++) {
        const struct rl_upstream_conf *u = &cfg->upstreams[i];

        FUZZ_CHECK(u->name != NULL);
        FUZZ_CHECK(u->host != NULL && u->host[0] != '\0');
        FUZZ_CHECK(u->port != 0);
        FUZZ_CHECK(u->tls == RL_TLS_IMPLICIT || u->tls == RL_TLS_STARTTLS);
        FUZZ_CHECK(u->verify_name != NULL && u->verify_name[0] != '\0');
        FUZZ_CHECK(u->nhide == 0 || u->hide != NULL);
        for (j = 0; j < u->nhide; j++)
            FUZZ_CHECK(u->hide[j] != NULL);
    }

    FUZZ_CHECK(cfg->nbrands >= 1 && cfg->brands != NULL);
    for (i = 0; i < cfg->nbrands; i++) {
        const struct rl_brand_conf *b = &cfg->brands[i];

        FUZZ_CHECK(b->name != NULL);
        FUZZ_CHECK(b->hostname != NULL && b->hostname[0] != '\0');
        FUZZ_CHECK(b->cert != NULL && b->key != NULL);
        FUZZ_CHECK(config_in(b->upstream, cfg->upstreams, cfg->nupstreams, sizeof(*b->upstream)));
        FUZZ_CHECK((b->cert_rsa == NULL) == (b->key_rsa == NULL));
        FUZZ_CHECK(b->naliases == 0 || b->aliases != NULL);
        /* Every name a brand answers to is in the SNI map, for that brand. */
        {
            const struct rl_sni_name *hit =
                rl_sni_lookup(&cfg->sni, b->hostname, strlen(b->hostname));

            FUZZ_CHECK(hit != NULL && hit->brand == i);
        }
    }

    /* The SNI map: sorted, each name once, lower case, brands in range. */
    for (i = 0; i < cfg->sni.n; i++) {
        const struct rl_sni_name *e = &cfg->sni.items[i];

        FUZZ_CHECK(e->name != NULL && e->brand < cfg->nbrands);
        FUZZ_CHECK(i == 0 || strcmp(cfg->sni.items[i - 1].name, e->name) < 0);
        for (const char *p = e->name; *p != '\0'; p++)
            FUZZ_CHECK(*p < 'A' || *p > 'Z');
    }

    FUZZ_CHECK(cfg->nlisteners >= 1 && cfg->listeners != NULL);
    for (i = 0; i < cfg->nlisteners; i++) {
        const struct rl_listener_conf *lc = &cfg->listeners[i];

        FUZZ_CHECK(lc->name != NULL);
        FUZZ_CHECK(lc->naddrs >= 1 && lc->addrs != NULL);
        FUZZ_CHECK(lc->tls == RL_TLS_IMPLICIT || lc->tls == RL_TLS_STARTTLS);
        /* require_tls = no exists only on STARTTLS listeners. */
        FUZZ_CHECK(lc->require_tls || lc->tls == RL_TLS_STARTTLS);
        FUZZ_CHECK(config_in(lc->brand, cfg->brands, cfg->nbrands, sizeof(*lc->brand)));
        for (j = 0; j < lc->naddrs; j++) {
            config_check_addr(&lc->addrs[j]);
            /* An address and port belong to one listener, once. */
            for (k = i; k < cfg->nlisteners; k++) {
                const struct rl_listener_conf *lk = &cfg->listeners[k];

                for (l = k == i ? j + 1 : 0; l < lk->naddrs; l++)
                    FUZZ_CHECK(strcmp(lc->addrs[j].text, lk->addrs[l].text) != 0);
            }
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rl_config *cfg = (struct rl_config *)&cfg;
    int rc;

    config_setup();
    FUZZ_CHECK(ftruncate(config_fd, 0) == 0);
    FUZZ_CHECK(size == 0 || pwrite(config_fd, data, size, 0) == (ssize_t)size);

    rc = rl_config_load(config_path, config_null, &cfg);
    FUZZ_CHECK(rc >= 0);
    if (rc > 0) {
        FUZZ_CHECK(cfg == NULL);
        return 0;
    }
    FUZZ_CHECK(cfg != NULL);
    config_check(cfg);
    /* The reference count: a second holder keeps it alive. */
    FUZZ_CHECK(rl_config_ref(cfg) == cfg && cfg->refs == 2);
    rl_config_unref(cfg);
    FUZZ_CHECK(cfg->refs == 1);
    rl_config_unref(cfg);
    return 0;
}
