/*
 * tls.c - every mbedTLS call in relabel, and nothing else.
 *
 * Owns three kinds of object:
 *  - struct rl_tls_certs: one brand's certificate chains with their keys
 *    (one, or an ECDSA and an RSA one) and the brand's session ticket keys.
 *  - struct rl_tls_conf: an mbedtls_ssl_config with its own entropy source
 *    and CTR_DRBG.  A server conf belongs to a listener: it serves every
 *    brand, chosen by SNI in tls_on_sni(), with the listener's default brand
 *    for clients that name none (or an unknown one, unless refused).  A
 *    client conf carries the CA set used to verify the upstream.  Built
 *    once per configuration, then only read (one event loop, so the DRBG
 *    needs no lock of ours); it must outlive every engine made from it, and
 *    the brands' rl_tls_certs must outlive the server confs using them.
 *  - struct rl_tls: a sans-I/O engine, one mbedtls_ssl_context between two
 *    byte buffers.  cin holds ciphertext the socket delivered and mbedTLS
 *    has not yet pulled; cout holds ciphertext mbedTLS produced and the
 *    connection has not yet taken.  The BIO callbacks only move bytes
 *    between mbedTLS and these buffers.
 *
 * Invariants:
 *  - tls_bio_send() never returns MBEDTLS_ERR_SSL_WANT_WRITE: it appends all
 *    it is given to cout or fails the engine.  mbedtls_ssl_write() therefore
 *    never needs its "call again with the same arguments" retry, and a
 *    close_notify is complete as soon as it is queued.
 *  - tls_bio_recv() returns MBEDTLS_ERR_SSL_WANT_READ only when cin is
 *    empty, so whenever mbedTLS reports WANT_READ all received ciphertext
 *    has been consumed (a partial record sits inside mbedTLS, not in cin).
 *  - After mbedTLS returns a fatal error the context is never used again;
 *    the result is remembered (t->end) and returned by every later call.
 *
 * Never here: sockets, libuv, logging.  Failures come back as RL_E_* codes
 * plus rl_tls_error()/rl_tls_strerror(), whose text never contains key
 * material.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include "relabel/buf.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/sni.h"
#include "relabel/tls.h"

/* Debian's bundle; other systems pass ca_file explicitly. */
#define TLS_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

/* cin holds at most two records: enough that the socket can read ahead
 * while mbedTLS works on one, small enough that a peer cannot make us
 * buffer much ciphertext.  mbedTLS pulls partial records into its own
 * buffer, so any cap of at least one byte can never deadlock. */
#define TLS_CIN_MAX (2 * RL_TLS_RECORD_MAX)

/* A DNS name is at most 253 octets (RFC 1035 §2.3.4); SNI allows 255. */
#define TLS_NAME_MAX 256

/* The way back from the mbedtls_ssl_context that mbedTLS hands to the SNI
 * callback to the engine that embeds it. */
#define TLS_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/*
 * Resumption (RFC 5077 tickets, or the server's session cache) saves the
 * ECDHE exchange and the signature on each side, which is most of a
 * session's CPU.  The client side keeps the last session a full, verified
 * handshake with this upstream produced and offers it to the next
 * connection; a resumed session carries the certificate that was verified
 * then, under the same CA set and name (a conf belongs to one upstream and
 * one snapshot: a reload starts afresh).  Kept for TLS_RESUME_MAX_AGE
 * seconds at most.  The server side issues tickets under keys held in
 * memory only, rotated every TLS_TICKET_LIFETIME seconds, and kept per
 * brand: a ticket issued under one brand never resumes a session under
 * another (RFC 6066 §3 asks a server not to resume across names), so a
 * client always sees the certificate of the brand it asked for at least
 * once.
 */
#define TLS_RESUME_MAX_AGE 3600
#define TLS_TICKET_LIFETIME 3600

struct tls_resume {
    pthread_mutex_t lock; /* engines of every worker thread share it */
    mbedtls_ssl_session session;
    time_t saved; /* 0: nothing to offer */
};

/* One certificate chain (leaf first) and its private key. */
struct tls_chain {
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
    bool rsa;
};

/* A brand serves at most one chain per key type: mbedTLS picks the first
 * that fits a cipher suite, so a second of the same type would never be
 * chosen. */
#define TLS_CHAINS_MAX 2

struct rl_tls_certs {
    struct tls_chain chains[TLS_CHAINS_MAX];
    size_t n;
    mbedtls_entropy_context entropy; /* for the ticket keys */
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_ticket_context tickets;
};

struct rl_tls_conf {
    mbedtls_ssl_config ssl;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt certs;    /* client only: trusted CAs */
    struct tls_resume *resume; /* client only: the session to offer */
    /* Server only: the brands (not owned, except `own`), the names that
     * choose them, the default and what an unknown name gets. */
    struct rl_tls_certs *const *brands;
    size_t nbrands;
    const struct rl_sni_map *names;
    size_t dflt;
    bool refuse_unknown;
    struct rl_tls_certs *own; /* rl_tls_conf_server(): its one brand */
    bool server;
};

struct rl_tls {
    mbedtls_ssl_context ssl;
    const struct rl_tls_conf *conf;
    struct rl_buf cin;
    struct rl_buf cout;
    int err;       /* mbedTLS code that ended the engine, 0 while healthy */
    int end;       /* RL_E_* result once the engine has ended, else 0 */
    int bio_err;   /* RL_E_FULL or RL_E_NOMEM when cout refused bytes */
    int alert;     /* fatal alert received from the peer, -1 if none */
    bool eof;      /* the peer's TCP stream has ended */
    bool done;     /* handshake finished */
    bool closed;   /* our close_notify is queued */
    bool reported; /* `end` has been returned to the caller */
    bool offered;  /* client: a saved session was offered */
    bool resumed;  /* the handshake resumed a session */
    bool refused;  /* server: the client's SNI was refused (sni_unknown = refuse) */
    size_t brand;  /* server: index of the brand serving this client */
    unsigned char offered_master[48];
    char host[TLS_NAME_MAX]; /* client: the name verified and sent as SNI */
    char sni[TLS_NAME_MAX];  /* server: the name the client asked for */
    /* Client side, filled by tls_on_verify() so that a failed verification
     * can be explained after mbedTLS has discarded the peer's chain. */
    char peer_names[160];
    char peer_issuer[128];
    char peer_dates[64];
};

/* The policy (see tls.h).  mbedTLS keeps pointers to these lists, so they
 * are static.  ChaCha20 comes first: without AES-NI it is the faster AEAD,
 * and with it the difference is small.  The server's order decides, since
 * MBEDTLS_SSL_SRV_RESPECT_CLIENT_PREFERENCE is off in Debian's build. */
static const int tls_suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

/* Key exchange groups.  The list also limits the curve of an ECDSA
 * certificate key, so a brand certificate must be P-256 or P-384 (checked
 * at load). */
static const mbedtls_ecp_group_id tls_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};

/* Hashes for handshake signatures (signature_algorithms, ServerKeyExchange). */
static const int tls_sig_hashes[] = {
    MBEDTLS_MD_SHA256,
    MBEDTLS_MD_SHA384,
    MBEDTLS_MD_SHA512,
    MBEDTLS_MD_NONE,
};

/* Certificate chains: mbedTLS's default profile minus SHA-224, with the
 * curves public CAs use.  RSA keys of at least 2048 bits. */
static const mbedtls_x509_crt_profile tls_crt_profile = {
    MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA256) | MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA384) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA512),
    0xFFFFFFF, /* any public-key algorithm */
    MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP256R1) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP384R1) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP521R1),
    2048,
};

/* ---- small string helpers ---------------------------------------------- */

/* Appends formatted text to out[0..cap), keeping it NUL-terminated and
 * silently truncating: these strings are diagnostics. */
__attribute__((format(printf, 4, 5))) static void
tls_append(char *out, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (cap == 0 || *len >= cap - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(out + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    *len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

/* Appends bytes taken from a certificate.  They come from the peer, so
 * anything but printable ASCII becomes '?' to keep log lines single and
 * unambiguous. */
static void
tls_append_raw(char *out, size_t cap, size_t *len, const unsigned char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n && cap > 0 && *len < cap - 1; i++)
        out[(*len)++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    if (cap > 0)
        out[*len] = '\0';
}

/* "CN=a DNS=b,c" for a certificate. */
static void
tls_crt_names(const mbedtls_x509_crt *crt, char *out, size_t cap)
{
    const mbedtls_x509_name *name;
    const mbedtls_x509_sequence *san;
    size_t len = 0;
    bool first = true;

    if (cap > 0)
        out[0] = '\0';
    for (name = &crt->subject; name != NULL; name = name->next) {
        if (name->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &name->oid) == 0) {
            tls_append(out, cap, &len, "CN=");
            tls_append_raw(out, cap, &len, name->val.p, name->val.len);
            break;
        }
    }
    /* The raw SAN list keeps each entry's context tag; only dNSName [2]
     * entries matter for host name checks (mbedTLS 2.28 ignores IP SANs). */
    for (san = &crt->subject_alt_names; san != NULL; san = san->next) {
        if (san->buf.p == NULL ||
            san->buf.tag != (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME))
            continue;
        tls_append(out, cap, &len, first ? "%sDNS=" : ",", len > 0 ? " " : "");
        tls_append_raw(out, cap, &len, san->buf.p, san->buf.len);
        first = false;
    }
}

static void
tls_format_time(const mbedtls_x509_time *tm, char *out, size_t cap)
{
    snprintf(out, cap, "%04d-%02d-%02d %02d:%02d:%02dZ", tm->year, tm->mon, tm->day, tm->hour,
             tm->min, tm->sec);
}

/* A certificate time (UTC) as seconds since the epoch. */
static time_t
tls_epoch(const mbedtls_x509_time *tm)
{
    struct tm when;

    memset(&when, 0, sizeof when);
    when.tm_year = tm->year - 1900;
    when.tm_mon = tm->mon - 1;
    when.tm_mday = tm->day;
    when.tm_hour = tm->hour;
    when.tm_min = tm->min;
    when.tm_sec = tm->sec;
    return timegm(&when);
}

/* Whole days from now until `tm` (UTC), rounded down, so an expired
 * certificate gives a negative number even on the day it expired. */
static long
tls_days_until(const mbedtls_x509_time *tm)
{
    double secs = difftime(tls_epoch(tm), time(NULL));

    if (secs >= 0)
        return (long)(secs / 86400);
    return -(long)((-secs + 86399) / 86400);
}

/* The text of an mbedTLS error code; mbedTLS's own text names the module
 * ("X509 - ...", "PK - ..."), which is what an operator needs. */
static const char *
tls_mbedtls_text(int rc, char *buf, size_t len)
{
    mbedtls_strerror(rc, buf, len);
    return buf;
}

/* An error for rl_tls_conf_*: "what path: why". */
__attribute__((format(printf, 3, 4))) static void
tls_conf_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* mbedTLS reports a missing file as a generic "read/write failed"; say
 * which file and what the system said instead. */
static bool
tls_check_readable(const char *what, const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");

    if (fp == NULL) {
        tls_conf_error(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return false;
    }
    fclose(fp);
    return true;
}

/* ---- configurations ---------------------------------------------------- */

/* A conf with the common policy applied and its own seeded DRBG. */
static struct rl_tls_conf *
tls_conf_new(int endpoint, char *err, size_t errlen)
{
    static const char pers_server[] = "relabel tls server";
    static const char pers_client[] = "relabel tls client";
    struct rl_tls_conf *conf;
    const char *pers = endpoint == MBEDTLS_SSL_IS_SERVER ? pers_server : pers_client;
    char msg[128];
    int rc;

    conf = calloc(1, sizeof *conf);
    if (conf == NULL) {
        tls_conf_error(err, errlen, "out of memory");
        return NULL;
    }
    conf->server = endpoint == MBEDTLS_SSL_IS_SERVER;
    mbedtls_ssl_config_init(&conf->ssl);
    mbedtls_entropy_init(&conf->entropy);
    mbedtls_ctr_drbg_init(&conf->drbg);
    mbedtls_x509_crt_init(&conf->certs);

    rc = mbedtls_ctr_drbg_seed(&conf->drbg, mbedtls_entropy_func, &conf->entropy,
                               (const unsigned char *)pers, strlen(pers));
    if (rc != 0) {
        tls_conf_error(err, errlen, "seeding the random generator: %s",
                       tls_mbedtls_text(rc, msg, sizeof msg));
        goto fail;
    }
    rc = mbedtls_ssl_config_defaults(&conf->ssl, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                     MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) {
        tls_conf_error(err, errlen, "TLS defaults: %s", tls_mbedtls_text(rc, msg, sizeof msg));
        goto fail;
    }
    mbedtls_ssl_conf_rng(&conf->ssl, mbedtls_ctr_drbg_random, &conf->drbg);

    /* TLS 1.2 only: the newest version 2.28 speaks; 1.0 and 1.1 are
     * compiled into Debian's library and must be shut out here. */
    mbedtls_ssl_conf_min_version(&conf->ssl, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&conf->ssl, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&conf->ssl, tls_suites);
    mbedtls_ssl_conf_curves(&conf->ssl, tls_curves);
    mbedtls_ssl_conf_sig_hashes(&conf->ssl, tls_sig_hashes);
    mbedtls_ssl_conf_cert_profile(&conf->ssl, &tls_crt_profile);
    mbedtls_ssl_conf_extended_master_secret(&conf->ssl, MBEDTLS_SSL_EXTENDED_MS_ENABLED);

    /* No renegotiation at all (an SMTP relay has no use for it), and no
     * handshake with a peer that does not support RFC 5746, so a
     * renegotiation splice cannot be made through us either. */
    mbedtls_ssl_conf_renegotiation(&conf->ssl, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    mbedtls_ssl_conf_legacy_renegotiation(&conf->ssl, MBEDTLS_SSL_LEGACY_BREAK_HANDSHAKE);

    /* A client asks for tickets; a server issues them once
     * rl_tls_conf_server_sni() has set the ticket callbacks. */
    mbedtls_ssl_conf_session_tickets(&conf->ssl, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    return conf;

fail:
    rl_tls_conf_free(conf);
    return NULL;
}

/*
 * SNI (RFC 6066 §3): records the name the client asked for and chooses the
 * brand that answers to it (sni.h), handing mbedTLS that brand's chains;
 * mbedTLS then picks among them by the client's cipher suites, signature
 * algorithms and curves (ssl_pick_cert: an ECDSA suite needs an EC key on
 * a curve the client offered).  A name no brand answers to gets the
 * conf's own chains, the default brand's, or with refuse_unknown fails the
 * handshake: mbedTLS then sends the unrecognized_name alert.  A name that
 * cannot be a host name (empty, too long, NUL, non-ASCII) is unknown.
 * Without SNI this is never called and the default brand serves.
 */
static int
tls_on_sni(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    struct rl_tls *t = TLS_CONTAINER_OF(ssl, struct rl_tls, ssl);
    const struct rl_tls_conf *conf = arg;
    const struct rl_sni_name *hit;
    struct rl_tls_certs *c;

    if (len > 0 && len < sizeof t->sni && memchr(name, '\0', len) == NULL) {
        memcpy(t->sni, name, len);
        t->sni[len] = '\0';
    }
    hit = rl_sni_lookup(conf->names, (const char *)name, len);
    if (hit == NULL || hit->brand >= conf->nbrands) {
        t->refused = conf->refuse_unknown;
        return conf->refuse_unknown ? -1 : 0;
    }
    /* A ticket read before the name (extensions come in the client's
     * order) was one of the default brand's: it must not resume a session
     * of another brand. */
    if (t->resumed && hit->brand != t->brand) {
        t->refused = true;
        return -1;
    }
    t->brand = hit->brand;
    if (t->brand == conf->dflt)
        return 0;
    c = conf->brands[t->brand];
    for (size_t i = 0; i < c->n; i++)
        if (mbedtls_ssl_set_hs_own_cert(ssl, &c->chains[i].crt, &c->chains[i].key) != 0)
            return -1;
    return 0;
}

/*
 * Client side: called by mbedTLS for each certificate of the peer's chain,
 * highest depth first.  It changes no verdict; it keeps what
 * rl_tls_strerror() needs to explain one, because mbedTLS frees the peer's
 * chain when the handshake fails.
 */
static int
tls_on_verify(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    struct rl_tls *t = arg;
    char from[32], to[32];

    if ((*flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) && t->peer_issuer[0] == '\0') {
        /* The first untrusted certificate seen is the top of the chain the
         * peer sent: its issuer is the CA we would have needed. */
        if (mbedtls_x509_dn_gets(t->peer_issuer, sizeof t->peer_issuer, &crt->issuer) < 0)
            t->peer_issuer[0] = '\0';
    }
    if (depth == 0) {
        tls_crt_names(crt, t->peer_names, sizeof t->peer_names);
        tls_format_time(&crt->valid_from, from, sizeof from);
        tls_format_time(&crt->valid_to, to, sizeof to);
        snprintf(t->peer_dates, sizeof t->peer_dates, "%.10s to %.10s", from, to);
    }
    return 0;
}

void
rl_tls_conf_free(struct rl_tls_conf *conf)
{
    if (conf == NULL)
        return;
    mbedtls_ssl_config_free(&conf->ssl);
    if (conf->resume != NULL) {
        mbedtls_ssl_session_free(&conf->resume->session);
        pthread_mutex_destroy(&conf->resume->lock);
        free(conf->resume);
    }
    mbedtls_x509_crt_free(&conf->certs);
    rl_tls_certs_free(conf->own);
    mbedtls_ctr_drbg_free(&conf->drbg);
    mbedtls_entropy_free(&conf->entropy);
    free(conf);
}

/* Checks that the brand's key and leaf can actually serve our policy, so
 * that a bad pair fails at start-up (and in --check), not at every
 * handshake. */
static bool
tls_check_server_key(struct tls_chain *ch, const char *cert_path, const char *key_path, char *err,
                     size_t errlen)
{
    mbedtls_pk_type_t type = mbedtls_pk_get_type(&ch->key);
    int rc;

    if (type == MBEDTLS_PK_ECKEY || type == MBEDTLS_PK_ECKEY_DH || type == MBEDTLS_PK_ECDSA) {
        mbedtls_ecp_group_id gid = mbedtls_pk_ec(ch->key)->grp.id;

        if (gid != MBEDTLS_ECP_DP_SECP256R1 && gid != MBEDTLS_ECP_DP_SECP384R1) {
            tls_conf_error(err, errlen, "private key %s: EC keys must be on P-256 or P-384",
                           key_path);
            return false;
        }
        ch->rsa = false;
    } else if (type == MBEDTLS_PK_RSA) {
        if (mbedtls_pk_get_bitlen(&ch->key) < 2048) {
            tls_conf_error(err, errlen, "private key %s: RSA keys must have at least 2048 bits",
                           key_path);
            return false;
        }
        ch->rsa = true;
    } else {
        tls_conf_error(err, errlen, "private key %s: not an RSA or EC key", key_path);
        return false;
    }

    rc = mbedtls_pk_check_pair(&ch->crt.pk, &ch->key);
    if (rc != 0) {
        tls_conf_error(err, errlen,
                       "private key %s does not match the certificate in %s (the first "
                       "certificate in the file must be the server's own)",
                       key_path, cert_path);
        return false;
    }
    if (mbedtls_x509_crt_check_key_usage(&ch->crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE) != 0) {
        tls_conf_error(err, errlen,
                       "certificate %s: keyUsage does not allow digitalSignature, which "
                       "ECDHE needs",
                       cert_path);
        return false;
    }
    if (mbedtls_x509_crt_check_extended_key_usage(&ch->crt, MBEDTLS_OID_SERVER_AUTH,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)) != 0) {
        tls_conf_error(err, errlen, "certificate %s: extendedKeyUsage does not allow serverAuth",
                       cert_path);
        return false;
    }
    return true;
}

/* The engine whose handshake is being stepped (engines of one thread are
 * stepped one at a time), so that the ticket callbacks know the brand and
 * can note that the client resumed. */
static _Thread_local struct rl_tls *tls_stepping;

/* Tickets are sealed and opened with the keys of the brand serving the
 * handshake at that moment (see tls_on_sni() for a ticket read before the
 * name). */
static int
tls_ticket_write(void *arg, const mbedtls_ssl_session *session, unsigned char *start,
                 const unsigned char *end, size_t *tlen, uint32_t *lifetime)
{
    const struct rl_tls_conf *conf = arg;
    struct rl_tls *t = tls_stepping;

    if (t == NULL || t->conf != conf)
        return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
    return mbedtls_ssl_ticket_write(&conf->brands[t->brand]->tickets, session, start, end, tlen,
                                    lifetime);
}

static int
tls_ticket_parse(void *arg, mbedtls_ssl_session *session, unsigned char *buf, size_t len)
{
    const struct rl_tls_conf *conf = arg;
    struct rl_tls *t = tls_stepping;
    int rc;

    if (t == NULL || t->conf != conf)
        return MBEDTLS_ERR_SSL_INVALID_MAC; /* a full handshake then */
    rc = mbedtls_ssl_ticket_parse(&conf->brands[t->brand]->tickets, session, buf, len);
    if (rc == 0)
        t->resumed = true;
    return rc;
}

struct rl_tls_certs *
rl_tls_certs_new(char *err, size_t errlen)
{
    static const char pers[] = "relabel tls tickets";
    struct rl_tls_certs *c = calloc(1, sizeof *c);
    char msg[128];
    int rc;

    if (c == NULL) {
        tls_conf_error(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < TLS_CHAINS_MAX; i++) {
        mbedtls_x509_crt_init(&c->chains[i].crt);
        mbedtls_pk_init(&c->chains[i].key);
    }
    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);
    mbedtls_ssl_ticket_init(&c->tickets);
    rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                               (const unsigned char *)pers, strlen(pers));
    if (rc == 0)
        rc = mbedtls_ssl_ticket_setup(&c->tickets, mbedtls_ctr_drbg_random, &c->drbg,
                                      MBEDTLS_CIPHER_AES_256_GCM, TLS_TICKET_LIFETIME);
    if (rc != 0) {
        tls_conf_error(err, errlen, "session tickets: %s", tls_mbedtls_text(rc, msg, sizeof msg));
        rl_tls_certs_free(c);
        return NULL;
    }
    return c;
}

void
rl_tls_certs_free(struct rl_tls_certs *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < TLS_CHAINS_MAX; i++) {
        mbedtls_x509_crt_free(&c->chains[i].crt);
        mbedtls_pk_free(&c->chains[i].key); /* zeroizes the key */
    }
    mbedtls_ssl_ticket_free(&c->tickets); /* zeroizes the ticket keys */
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    free(c);
}

int
rl_tls_certs_add(struct rl_tls_certs *c, const char *cert_path, const char *key_path, bool *rsa,
                 char *err, size_t errlen)
{
    struct tls_chain *ch;
    char msg[128];
    int rc;

    if (!tls_check_readable("certificate", cert_path, err, errlen) ||
        !tls_check_readable("private key", key_path, err, errlen))
        return -1;
    if (c->n == TLS_CHAINS_MAX) {
        tls_conf_error(err, errlen, "certificate %s: a brand has at most %d certificates",
                       cert_path, TLS_CHAINS_MAX);
        return -1;
    }
    ch = &c->chains[c->n];

    /* Every certificate in the file, in file order: mbedTLS sends the list
     * as it is, so the leaf must come first (as in certbot's fullchain). */
    rc = mbedtls_x509_crt_parse_file(&ch->crt, cert_path);
    if (rc < 0) {
        tls_conf_error(err, errlen, "certificate %s: %s", cert_path,
                       tls_mbedtls_text(rc, msg, sizeof msg));
        goto fail;
    }
    if (rc > 0) {
        tls_conf_error(err, errlen,
                       "certificate %s: %d certificate(s) in the file could not be "
                       "parsed",
                       cert_path, rc);
        goto fail;
    }

    rc = mbedtls_pk_parse_keyfile(&ch->key, key_path, NULL);
    if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
        tls_conf_error(err, errlen, "private key %s is encrypted; relabel needs it unencrypted",
                       key_path);
        goto fail;
    }
    if (rc != 0) {
        tls_conf_error(err, errlen, "private key %s: %s", key_path,
                       tls_mbedtls_text(rc, msg, sizeof msg));
        goto fail;
    }
    if (!tls_check_server_key(ch, cert_path, key_path, err, errlen))
        goto fail;
    for (size_t i = 0; i < c->n; i++) {
        if (c->chains[i].rsa == ch->rsa) {
            tls_conf_error(err, errlen,
                           "certificate %s: the brand already has an %s certificate, and a "
                           "second one would never be chosen",
                           cert_path, ch->rsa ? "RSA" : "ECDSA");
            goto fail;
        }
    }
    if (rsa != NULL)
        *rsa = ch->rsa;
    c->n++;
    return 0;

fail:
    mbedtls_x509_crt_free(&ch->crt);
    mbedtls_pk_free(&ch->key);
    mbedtls_x509_crt_init(&ch->crt);
    mbedtls_pk_init(&ch->key);
    return -1;
}

size_t
rl_tls_certs_count(const struct rl_tls_certs *c)
{
    return c->n;
}

/* "CN=... DNS=... notAfter=... days_left=N chain=N" for one chain. */
static long
tls_describe_chain(const struct tls_chain *ch, char *out, size_t cap)
{
    const mbedtls_x509_crt *crt;
    char names[256], when[32];
    size_t len = 0;
    long days;
    int n = 0;

    if (cap > 0)
        out[0] = '\0';
    for (crt = &ch->crt; crt != NULL && crt->version != 0; crt = crt->next)
        n++;
    crt = &ch->crt;
    tls_crt_names(crt, names, sizeof names);
    tls_format_time(&crt->valid_to, when, sizeof when);
    days = tls_days_until(&crt->valid_to);
    tls_append(out, cap, &len, "%s notAfter=%s days_left=%ld chain=%d%s", names, when, days, n,
               days < 0 ? " EXPIRED" : "");
    return days;
}

long
rl_tls_certs_describe(const struct rl_tls_certs *c, size_t i, char *out, size_t cap)
{
    size_t len;
    long days;

    if (i >= c->n) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    days = tls_describe_chain(&c->chains[i], out, cap);
    len = strlen(out);
    tls_append(out, cap, &len, " key=%s", c->chains[i].rsa ? "RSA" : "ECDSA");
    return days;
}

double
rl_tls_certs_not_after(const struct rl_tls_certs *c)
{
    double first = 0;

    for (size_t i = 0; i < c->n; i++) {
        double t = (double)tls_epoch(&c->chains[i].crt.valid_to);

        if (i == 0 || t < first)
            first = t;
    }
    return first;
}

bool
rl_tls_certs_covers(const struct rl_tls_certs *c, size_t i, const char *name)
{
    const mbedtls_x509_crt *crt;
    const mbedtls_x509_sequence *san;
    const mbedtls_x509_name *cn;
    bool any_dns = false;

    if (i >= c->n)
        return false;
    crt = &c->chains[i].crt;
    for (san = &crt->subject_alt_names; san != NULL; san = san->next) {
        if (san->buf.p == NULL ||
            san->buf.tag != (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME))
            continue;
        any_dns = true;
        if (rl_sni_covers((const char *)san->buf.p, san->buf.len, name))
            return true;
    }
    if (any_dns)
        return false;
    /* No DNS names at all: clients that still read the subject's CN (as
     * mbedTLS itself does) match that. */
    for (cn = &crt->subject; cn != NULL; cn = cn->next)
        if (cn->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &cn->oid) == 0)
            return rl_sni_covers((const char *)cn->val.p, cn->val.len, name);
    return false;
}

struct rl_tls_conf *
rl_tls_conf_server_sni(struct rl_tls_certs *const *brands, size_t nbrands,
                       const struct rl_sni_map *names, size_t dflt, bool refuse_unknown, char *err,
                       size_t errlen)
{
    struct rl_tls_conf *conf;
    char msg[128];
    int rc;

    if (dflt >= nbrands || brands[dflt] == NULL || brands[dflt]->n == 0) {
        tls_conf_error(err, errlen, "no certificate for the default brand");
        return NULL;
    }
    conf = tls_conf_new(MBEDTLS_SSL_IS_SERVER, err, errlen);
    if (conf == NULL)
        return NULL;
    conf->brands = brands;
    conf->nbrands = nbrands;
    conf->names = names;
    conf->dflt = dflt;
    conf->refuse_unknown = refuse_unknown;

    /* The default brand's chains serve clients without SNI (and unknown
     * names); mbedTLS keeps them as a list and picks per cipher suite. */
    for (size_t i = 0; i < brands[dflt]->n; i++) {
        struct tls_chain *ch = &brands[dflt]->chains[i];

        rc = mbedtls_ssl_conf_own_cert(&conf->ssl, &ch->crt, &ch->key);
        if (rc != 0) {
            tls_conf_error(err, errlen, "certificate: %s", tls_mbedtls_text(rc, msg, sizeof msg));
            rl_tls_conf_free(conf);
            return NULL;
        }
    }
    /* SMTP clients are not asked for certificates. */
    mbedtls_ssl_conf_authmode(&conf->ssl, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_sni(&conf->ssl, tls_on_sni, conf);
    mbedtls_ssl_conf_session_tickets_cb(&conf->ssl, tls_ticket_write, tls_ticket_parse, conf);
    return conf;
}

struct rl_tls_conf *
rl_tls_conf_server(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    struct rl_tls_certs *one[1] = {rl_tls_certs_new(err, errlen)};
    struct rl_tls_conf *conf = NULL;

    if (one[0] == NULL)
        return NULL;
    if (rl_tls_certs_add(one[0], cert_path, key_path, NULL, err, errlen) == 0)
        conf = rl_tls_conf_server_sni(one, 1, NULL, 0, false, err, errlen);
    if (conf == NULL) {
        rl_tls_certs_free(one[0]);
        return NULL;
    }
    /* The conf owns its one brand; its brand list must outlive this call. */
    conf->own = one[0];
    conf->brands = &conf->own;
    return conf;
}

struct rl_tls_conf *
rl_tls_conf_client(const char *ca_path, char *err, size_t errlen)
{
    struct rl_tls_conf *conf;
    const char *path = ca_path != NULL ? ca_path : TLS_SYSTEM_CA;
    struct stat st;
    char msg[128];
    int rc;

    if (stat(path, &st) != 0) {
        tls_conf_error(err, errlen, "CA certificates %s: %s", path, strerror(errno));
        return NULL;
    }
    conf = tls_conf_new(MBEDTLS_SSL_IS_CLIENT, err, errlen);
    if (conf == NULL)
        return NULL;

    /* A bundle or a hashed directory may hold a few certificates mbedTLS
     * cannot parse (unusual extensions or curves); those CAs are simply not
     * trusted.  Only a result with no CA at all is an error. */
    if (S_ISDIR(st.st_mode))
        rc = mbedtls_x509_crt_parse_path(&conf->certs, path);
    else
        rc = mbedtls_x509_crt_parse_file(&conf->certs, path);
    if (rc < 0 && conf->certs.version == 0) {
        tls_conf_error(err, errlen, "CA certificates %s: %s", path,
                       tls_mbedtls_text(rc, msg, sizeof msg));
        goto fail;
    }
    if (conf->certs.version == 0) {
        tls_conf_error(err, errlen, "CA certificates %s: no certificate found", path);
        goto fail;
    }

    mbedtls_ssl_conf_ca_chain(&conf->ssl, &conf->certs, NULL);
    mbedtls_ssl_conf_authmode(&conf->ssl, MBEDTLS_SSL_VERIFY_REQUIRED);
    conf->resume = calloc(1, sizeof *conf->resume);
    if (conf->resume == NULL) {
        tls_conf_error(err, errlen, "out of memory");
        goto fail;
    }
    mbedtls_ssl_session_init(&conf->resume->session);
    pthread_mutex_init(&conf->resume->lock, NULL);
    return conf;

fail:
    rl_tls_conf_free(conf);
    return NULL;
}

long
rl_tls_conf_describe(const struct rl_tls_conf *conf, char *out, size_t cap)
{
    const mbedtls_x509_crt *crt;
    size_t len = 0;
    int n = 0;

    if (cap > 0)
        out[0] = '\0';
    if (conf->server)
        return tls_describe_chain(&conf->brands[conf->dflt]->chains[0], out, cap);
    for (crt = &conf->certs; crt != NULL && crt->version != 0; crt = crt->next)
        n++;
    tls_append(out, cap, &len, "client: %d trusted CA certificates", n);
    return 0;
}

double
rl_tls_conf_not_after(const struct rl_tls_conf *conf)
{
    if (!conf->server)
        return 0;
    return rl_tls_certs_not_after(conf->brands[conf->dflt]);
}

/* ---- the engine -------------------------------------------------------- */

/* mbedTLS's recv callback: ciphertext from cin.  "No bytes yet" is
 * WANT_READ; 0 (transport closed) only once the TCP EOF has been recorded
 * and cin is drained. */
static int
tls_bio_recv(void *ctx, unsigned char *p, size_t len)
{
    struct rl_tls *t = ctx;
    size_t n = rl_buf_len(&t->cin);

    if (n == 0)
        return t->eof ? 0 : MBEDTLS_ERR_SSL_WANT_READ;
    if (n > len)
        n = len;
    if (n > INT_MAX)
        n = INT_MAX;
    memcpy(p, rl_buf_data(&t->cin), n);
    rl_buf_consume(&t->cin, n);
    /* Drained: an idle engine holds no ciphertext buffer (mbedTLS keeps a
     * partial record in its own). */
    rl_buf_trim(&t->cin);
    return (int)n;
}

/* mbedTLS's send callback: everything goes into cout, or the engine fails.
 * Never WANT_WRITE (see the top of this file).  cout is bounded one level
 * up: the connection stops producing plaintext above its high-water mark,
 * so reaching the hard cap here means something is badly wrong. */
static int
tls_bio_send(void *ctx, const unsigned char *p, size_t len)
{
    struct rl_tls *t = ctx;
    int rc;

    if (len > INT_MAX)
        len = INT_MAX;
    rc = rl_buf_append(&t->cout, p, len);
    if (rc != 0) {
        t->bio_err = rc;
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    }
    return (int)len;
}

/* Ends the engine after mbedTLS returned rc (a failure or end of stream):
 * remembers why and returns the RL_E_* code for it.  A failure may replace
 * an end of stream (a write can still fail after the peer's EOF); nothing
 * replaces a failure. */
static int
tls_end(struct rl_tls *t, int rc)
{
    int end;

    if (t->end == RL_E_TLS || t->end == RL_E_NOMEM)
        return t->end;
    if (rc == 0)
        rc = MBEDTLS_ERR_SSL_CONN_EOF; /* mbedtls_ssl_read()'s spelling of it */
    if (t->bio_err != 0)
        end = RL_E_NOMEM;
    else if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY && t->done)
        end = RL_E_TLS_EOF;
    else if (rc == MBEDTLS_ERR_SSL_CONN_EOF)
        end = RL_E_TLS_TRUNCATED;
    else
        end = RL_E_TLS;
    if (t->end != 0 && end != RL_E_TLS && end != RL_E_NOMEM)
        return t->end;
    t->err = rc;
    if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE && t->ssl.in_msg != NULL)
        t->alert = t->ssl.in_msg[1]; /* 2.28 leaves the alert's description there */
    t->end = end;
    return end;
}

/* Returns the engine's end result to the caller, once noted as reported
 * (rl_tls_pending() stops asking for another call after that). */
static int
tls_report(struct rl_tls *t)
{
    t->reported = true;
    return t->end;
}

/* Client: offers the saved session, if it is recent enough. */
static void
tls_offer_session(struct rl_tls *t)
{
    struct tls_resume *r = t->conf->resume;

    pthread_mutex_lock(&r->lock);
    if (r->saved != 0 && time(NULL) - r->saved > TLS_RESUME_MAX_AGE) {
        mbedtls_ssl_session_free(&r->session);
        mbedtls_ssl_session_init(&r->session);
        r->saved = 0;
    }
    /* On failure, a full handshake then. */
    if (r->saved != 0 && mbedtls_ssl_set_session(&t->ssl, &r->session) == 0) {
        t->offered = true;
        memcpy(t->offered_master, r->session.master, sizeof t->offered_master);
    }
    pthread_mutex_unlock(&r->lock);
}

/*
 * Client, after a handshake: a session with the master secret that was
 * offered is a resumed one; a full handshake's session is saved for the
 * next connection.  A failed handshake forgets the saved session, so a
 * server that no longer knows it costs one failure at most.
 */
static void
tls_after_handshake(struct rl_tls *t, bool ok)
{
    struct tls_resume *r = t->conf->resume;

    if (t->conf->server)
        return;
    if (ok && t->offered &&
        memcmp(t->ssl.session->master, t->offered_master, sizeof t->offered_master) == 0) {
        t->resumed = true;
        return;
    }
    pthread_mutex_lock(&r->lock);
    mbedtls_ssl_session_free(&r->session);
    mbedtls_ssl_session_init(&r->session);
    r->saved = 0;
    if (ok && mbedtls_ssl_get_session(&t->ssl, &r->session) == 0)
        r->saved = time(NULL);
    pthread_mutex_unlock(&r->lock);
}

struct rl_tls *
rl_tls_new(const struct rl_tls_conf *conf, const char *hostname)
{
    struct rl_tls *t;

    if (!conf->server && (hostname == NULL || hostname[0] == '\0'))
        return NULL; /* an unverified upstream is never an option */
    if (!conf->server && strlen(hostname) >= TLS_NAME_MAX)
        return NULL;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->conf = conf;
    t->alert = -1;
    t->brand = conf->dflt;
    rl_buf_init(&t->cin, TLS_CIN_MAX);
    rl_buf_init(&t->cout, RL_CONN_OUT_MAX);
    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, &conf->ssl) != 0)
        goto fail;
    if (!conf->server) {
        /* Sets both the SNI sent and the name the certificate must match. */
        if (mbedtls_ssl_set_hostname(&t->ssl, hostname) != 0)
            goto fail;
        snprintf(t->host, sizeof t->host, "%s", hostname);
        mbedtls_ssl_set_verify(&t->ssl, tls_on_verify, t);
        tls_offer_session(t);
    }
    mbedtls_ssl_set_bio(&t->ssl, t, tls_bio_send, tls_bio_recv, NULL);
    return t;

fail:
    rl_tls_free(t);
    return NULL;
}

void
rl_tls_free(struct rl_tls *t)
{
    if (t == NULL)
        return;
    mbedtls_ssl_free(&t->ssl);
    rl_buf_free(&t->cin);
    rl_buf_free(&t->cout);
    free(t);
}

char *
rl_tls_in_reserve(struct rl_tls *t, size_t *len)
{
    /* One record's worth at a time: cin then grows only as far as the peer
     * actually sends, up to its two-record cap. */
    return rl_buf_reserve(&t->cin, RL_TLS_RECORD_MAX, len);
}

void
rl_tls_in_commit(struct rl_tls *t, size_t n)
{
    rl_buf_commit(&t->cin, n);
    if (n == 0)
        rl_buf_trim(&t->cin); /* the read found nothing: EAGAIN */
}

bool
rl_tls_in_room(const struct rl_tls *t)
{
    return rl_buf_room(&t->cin) > 0;
}

void
rl_tls_in_eof(struct rl_tls *t)
{
    t->eof = true;
}

int
rl_tls_handshake(struct rl_tls *t)
{
    int rc;

    if (t->done)
        return 0;
    if (t->end != 0)
        return tls_report(t);
    tls_stepping = t;
    rc = mbedtls_ssl_handshake(&t->ssl);
    tls_stepping = NULL;
    if (rc == 0) {
        t->done = true;
        tls_after_handshake(t, true);
        return 0;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ)
        return RL_TLS_WANT;
    tls_after_handshake(t, false);
    /* WANT_WRITE cannot happen (tls_bio_send), nor can the async and
     * restartable-ECC results (neither is configured): everything else
     * ends the handshake.  A fatal alert for the peer is already in cout. */
    tls_end(t, rc);
    return tls_report(t);
}

bool
rl_tls_handshake_done(const struct rl_tls *t)
{
    return t->done;
}

bool
rl_tls_resumed(const struct rl_tls *t)
{
    return t->done && t->resumed;
}

int
rl_tls_read(struct rl_tls *t, char *p, size_t cap, size_t *got)
{
    int rc;

    *got = 0;
    if (t->end != 0)
        return tls_report(t);
    if (!t->done) {
        /* A caller bug: refuse, rather than let mbedtls_ssl_read() run the
         * handshake behind the caller's back. */
        t->err = MBEDTLS_ERR_SSL_BAD_INPUT_DATA;
        t->end = RL_E_TLS;
        return tls_report(t);
    }
    /* Loop until mbedTLS wants more ciphertext: one call decrypts at most
     * one record, and records left in cin would otherwise wait for a
     * socket read that may never come. */
    while (*got < cap) {
        rc = mbedtls_ssl_read(&t->ssl, (unsigned char *)p + *got, cap - *got);
        if (rc > 0) {
            *got += (size_t)rc;
            continue;
        }
        if (rc == MBEDTLS_ERR_SSL_WANT_READ)
            break;
        /* close_notify (RL_E_TLS_EOF), transport EOF without it (0 or
         * CONN_EOF: RL_E_TLS_TRUNCATED), or a failure. */
        tls_end(t, rc);
        if (*got > 0)
            return 0; /* the data first; the end on the next call */
        return tls_report(t);
    }
    return 0;
}

bool
rl_tls_pending(const struct rl_tls *t)
{
    if (t->end != 0)
        return !t->reported;
    if (!t->done)
        return false;
    /* Decrypted bytes not yet returned, or a record already inside mbedTLS
     * (check_pending), or ciphertext still in cin.  cin is never left
     * non-empty by a read that ended in WANT_READ, so this is true only
     * when rl_tls_read() can make progress.  A recorded TCP EOF that has
     * not yet been reported is progress too. */
    return mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 || mbedtls_ssl_check_pending(&t->ssl) != 0 ||
           rl_buf_len(&t->cin) > 0 || t->eof;
}

int
rl_tls_write(struct rl_tls *t, const void *p, size_t n)
{
    const unsigned char *cursor = p;
    int rc;

    if (t->end == RL_E_TLS || t->end == RL_E_NOMEM)
        return t->end;
    if (!t->done || t->closed) {
        t->err = MBEDTLS_ERR_SSL_BAD_INPUT_DATA;
        return RL_E_TLS;
    }
    /* mbedtls_ssl_write() takes at most one record per call; since sending
     * never blocks, each call consumes its whole record. */
    while (n > 0) {
        rc = mbedtls_ssl_write(&t->ssl, cursor, n);
        if (rc <= 0) {
            /* 0 cannot happen for n > 0; treat it as the bug it would be
             * rather than loop forever. */
            rc = tls_end(t, rc == 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : rc);
            t->reported = true;
            return rc;
        }
        cursor += rc;
        n -= (size_t)rc;
    }
    return 0;
}

int
rl_tls_close_notify(struct rl_tls *t)
{
    int rc;

    if (t->end == RL_E_TLS || t->end == RL_E_NOMEM)
        return t->end;
    if (!t->done || t->closed)
        return 0;
    rc = mbedtls_ssl_close_notify(&t->ssl);
    if (rc != 0) {
        rc = tls_end(t, rc);
        t->reported = true;
        return rc;
    }
    t->closed = true;
    return 0;
}

struct rl_buf *
rl_tls_out(struct rl_tls *t)
{
    return &t->cout;
}

const char *
rl_tls_version(const struct rl_tls *t)
{
    return t->done ? mbedtls_ssl_get_version(&t->ssl) : "none";
}

const char *
rl_tls_cipher(const struct rl_tls *t)
{
    const char *name = t->done ? mbedtls_ssl_get_ciphersuite(&t->ssl) : NULL;

    return name != NULL ? name : "none";
}

const char *
rl_tls_sni(const struct rl_tls *t)
{
    return t->sni[0] != '\0' ? t->sni : NULL;
}

size_t
rl_tls_brand(const struct rl_tls *t)
{
    return t->brand;
}

int
rl_tls_error(const struct rl_tls *t)
{
    return t->err;
}

/* RFC 5246 §7.2 / RFC 8446 §6 names of the alerts a peer is likely to send. */
static const char *
tls_alert_name(int alert)
{
    switch (alert) {
    case MBEDTLS_SSL_ALERT_MSG_UNEXPECTED_MESSAGE:
        return "unexpected_message";
    case MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC:
        return "bad_record_mac";
    case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE:
        return "handshake_failure";
    case MBEDTLS_SSL_ALERT_MSG_BAD_CERT:
        return "bad_certificate";
    case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT:
        return "unsupported_certificate";
    case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED:
        return "certificate_revoked";
    case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED:
        return "certificate_expired";
    case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN:
        return "certificate_unknown";
    case MBEDTLS_SSL_ALERT_MSG_ILLEGAL_PARAMETER:
        return "illegal_parameter";
    case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA:
        return "unknown_ca";
    case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED:
        return "access_denied";
    case MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR:
        return "decode_error";
    case MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR:
        return "decrypt_error";
    case MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION:
        return "protocol_version";
    case MBEDTLS_SSL_ALERT_MSG_INSUFFICIENT_SECURITY:
        return "insufficient_security";
    case MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR:
        return "internal_error";
    case MBEDTLS_SSL_ALERT_MSG_INAPROPRIATE_FALLBACK:
        return "inappropriate_fallback";
    case MBEDTLS_SSL_ALERT_MSG_USER_CANCELED:
        return "user_canceled";
    case MBEDTLS_SSL_ALERT_MSG_NO_RENEGOTIATION:
        return "no_renegotiation";
    case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_EXT:
        return "unsupported_extension";
    case MBEDTLS_SSL_ALERT_MSG_UNRECOGNIZED_NAME:
        return "unrecognized_name";
    default:
        return "alert";
    }
}

/* "certificate verification failed for HOST: reason; reason" from the
 * flags mbedTLS kept and the details tls_on_verify() saved. */
static void
tls_verify_text(const struct rl_tls *t, char *buf, size_t len)
{
    uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
    const char *sep = "";
    size_t n = 0;

    tls_append(buf, len, &n, "certificate verification failed for %s: ", t->host);
    if (flags == 0 || flags == UINT32_MAX) {
        tls_append(buf, len, &n, "unknown reason");
        return;
    }
    if (flags & MBEDTLS_X509_BADCERT_EXPIRED) {
        tls_append(buf, len, &n, "%scertificate has expired (valid %s)", sep, t->peer_dates);
        sep = "; ";
    }
    if (flags & MBEDTLS_X509_BADCERT_FUTURE) {
        tls_append(buf, len, &n, "%scertificate is not yet valid (valid %s)", sep, t->peer_dates);
        sep = "; ";
    }
    if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) {
        tls_append(buf, len, &n, "%sname mismatch: certificate is for %s, not %s", sep,
                   t->peer_names[0] ? t->peer_names : "(no names)", t->host);
        sep = "; ";
    }
    if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) {
        tls_append(buf, len, &n, "%snot trusted: unknown CA (issuer %s)", sep,
                   t->peer_issuer[0] ? t->peer_issuer : "unknown");
        sep = "; ";
    }
    if (flags & MBEDTLS_X509_BADCERT_REVOKED) {
        tls_append(buf, len, &n, "%scertificate revoked", sep);
        sep = "; ";
    }
    if (flags & (MBEDTLS_X509_BADCERT_BAD_MD | MBEDTLS_X509_BADCERT_BAD_PK |
                 MBEDTLS_X509_BADCERT_BAD_KEY)) {
        tls_append(buf, len, &n, "%sweak or unsupported signature hash, algorithm or key", sep);
        sep = "; ";
    }
    if (flags & (MBEDTLS_X509_BADCERT_KEY_USAGE | MBEDTLS_X509_BADCERT_EXT_KEY_USAGE |
                 MBEDTLS_X509_BADCERT_NS_CERT_TYPE)) {
        tls_append(buf, len, &n, "%scertificate not valid for a TLS server", sep);
        sep = "; ";
    }
    if (flags & MBEDTLS_X509_BADCERT_MISSING) {
        tls_append(buf, len, &n, "%sno certificate sent", sep);
        sep = "; ";
    }
    if (flags & MBEDTLS_X509_BADCERT_OTHER) {
        tls_append(buf, len, &n, "%sother problem", sep);
        sep = "; ";
    }
    if (sep[0] == '\0')
        tls_append(buf, len, &n, "flags 0x%05x", (unsigned)flags);
}

const char *
rl_tls_failure_class(const struct rl_tls *t)
{
    if (t->refused)
        return "sni";
    switch (t->err) {
    case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
        return "verify";
    case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
        return "alert";
    case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
    case MBEDTLS_ERR_SSL_CONN_EOF:
        return "closed";
    default:
        return "protocol";
    }
}

const char *
rl_tls_strerror(const struct rl_tls *t, char *buf, size_t len)
{
    char msg[128];
    size_t n = 0;

    if (len == 0)
        return buf;
    buf[0] = '\0';
    if (t->bio_err != 0) {
        tls_append(buf, len, &n, "TLS output buffer: %s", rl_strerror(t->bio_err));
        return buf;
    }
    if (t->refused) {
        tls_append(buf, len, &n,
                   t->resumed ? "TLS handshake refused: a session ticket of another brand"
                              : "TLS handshake refused: no brand answers to the name asked for "
                                "(sni_unknown = refuse)");
        return buf;
    }
    switch (t->err) {
    case 0:
        tls_append(buf, len, &n, "%s", t->end != 0 ? rl_strerror(t->end) : "no error");
        break;
    case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
        tls_verify_text(t, buf, len);
        break;
    case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
        tls_append(buf, len, &n, "peer sent fatal alert %s (%d)%s", tls_alert_name(t->alert),
                   t->alert, t->done ? "" : " during the handshake");
        break;
    case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
        tls_append(buf, len, &n, "peer sent close_notify%s",
                   t->done ? "" : " during the handshake");
        break;
    case MBEDTLS_ERR_SSL_CONN_EOF:
        tls_append(buf, len, &n, "connection closed %s",
                   t->done ? "without TLS close_notify" : "during the TLS handshake");
        break;
    default:
        tls_append(buf, len, &n, "%s%s", t->done ? "" : "TLS handshake failed: ",
                   tls_mbedtls_text(t->err, msg, sizeof msg));
        break;
    }
    return buf;
}
