/*
 * test_tls.c - the sans-I/O TLS engine, with no sockets: a client and a
 * server rl_tls are joined by moving the cout of one into the cin of the
 * other, whole, byte by byte and at random split points.  Certificates come
 * from certs/gen-test-certs.sh (run by meson into $RL_TEST_CERTS).
 *
 * The refusal tests need a peer that relabel's policy would never build
 * (CBC suites, TLS 1.0), so they drive a raw mbedTLS client directly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>

#include "relabel/buf.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/tls.h"

#define CHUNK_ALL SIZE_MAX
#define CHUNK_RANDOM 0

static const char *
cert(const char *name)
{
    static char paths[8][512];
    static unsigned next;
    const char *dir = getenv("RL_TEST_CERTS");
    char *p = paths[next++ % 8];

    if (dir == NULL)
        dir = RL_BUILD_ROOT "/tests/test-certs";
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static struct rl_tls_conf *
server_conf(const char *crt, const char *key)
{
    char err[256] = "";
    struct rl_tls_conf *conf = rl_tls_conf_server(cert(crt), cert(key), err, sizeof err);

    if (conf == NULL)
        fail_msg("rl_tls_conf_server(%s): %s", crt, err);
    return conf;
}

static struct rl_tls_conf *
client_conf(void)
{
    char err[256] = "";
    struct rl_tls_conf *conf = rl_tls_conf_client(cert("ca.crt"), err, sizeof err);

    if (conf == NULL)
        fail_msg("rl_tls_conf_client: %s", err);
    return conf;
}

/* Deterministic split sizes: the same sequence on every run. */
static unsigned long rng_state = 20240601;

static size_t
rng_next(size_t max)
{
    rng_state = rng_state * 6364136223846793005ul + 1442695040888963407ul;
    return (size_t)((rng_state >> 33) % max);
}

/* Moves up to `chunk` bytes (CHUNK_RANDOM: 1..1500) of src's ciphertext
 * output into dst's input.  Returns the number moved. */
static size_t
move(struct rl_tls *src, struct rl_tls *dst, size_t chunk)
{
    struct rl_buf *out = rl_tls_out(src);
    size_t n = rl_buf_len(out), avail = 0;
    char *p;

    if (chunk == CHUNK_RANDOM)
        chunk = 1 + rng_next(1500);
    if (n > chunk)
        n = chunk;
    if (n == 0)
        return 0;
    p = rl_tls_in_reserve(dst, &avail);
    if (p == NULL)
        return 0;
    if (n > avail)
        n = avail;
    memcpy(p, rl_buf_data(out), n);
    rl_tls_in_commit(dst, n);
    rl_buf_consume(out, n);
    return n;
}

/* Runs both handshakes until each side has finished or failed and nothing
 * is left to deliver. */
static void
handshake(struct rl_tls *c, struct rl_tls *s, size_t chunk, int *crc, int *src)
{
    int i;

    *crc = *src = RL_TLS_WANT;
    for (i = 0; i < 200000; i++) {
        size_t moved;

        if (*crc == RL_TLS_WANT)
            *crc = rl_tls_handshake(c);
        if (*src == RL_TLS_WANT)
            *src = rl_tls_handshake(s);
        moved = move(c, s, chunk) + move(s, c, chunk);
        if (moved == 0 && rl_buf_len(rl_tls_out(c)) == 0 && rl_buf_len(rl_tls_out(s)) == 0) {
            /* One more turn lets each side see the last bytes it got. */
            if (*crc == RL_TLS_WANT)
                *crc = rl_tls_handshake(c);
            if (*src == RL_TLS_WANT)
                *src = rl_tls_handshake(s);
            if (rl_buf_len(rl_tls_out(c)) == 0 && rl_buf_len(rl_tls_out(s)) == 0)
                return;
        }
    }
    fail_msg("handshake did not settle");
}

struct pair {
    struct rl_tls_conf *sconf, *cconf;
    struct rl_tls *s, *c;
    int src, crc;
};

static void
pair_open(struct pair *p, const char *crt, const char *key, const char *host, size_t chunk)
{
    p->sconf = server_conf(crt, key);
    p->cconf = client_conf();
    p->s = rl_tls_new(p->sconf, NULL);
    p->c = rl_tls_new(p->cconf, host);
    assert_non_null(p->s);
    assert_non_null(p->c);
    handshake(p->c, p->s, chunk, &p->crc, &p->src);
}

static void
pair_close(struct pair *p)
{
    rl_tls_free(p->c);
    rl_tls_free(p->s);
    rl_tls_conf_free(p->cconf);
    rl_tls_conf_free(p->sconf);
}

static void
assert_policy(struct rl_tls *t)
{
    const char *suite = rl_tls_cipher(t);

    assert_string_equal(rl_tls_version(t), "TLSv1.2");
    assert_non_null(strstr(suite, "ECDHE"));
    assert_true(strstr(suite, "GCM") != NULL || strstr(suite, "CHACHA20") != NULL);
}

static void
assert_ok_pair(struct pair *p)
{
    char msg[256];

    if (p->crc != 0)
        fail_msg("client: %d %s", p->crc, rl_tls_strerror(p->c, msg, sizeof msg));
    if (p->src != 0)
        fail_msg("server: %d %s", p->src, rl_tls_strerror(p->s, msg, sizeof msg));
    assert_true(rl_tls_handshake_done(p->c));
    assert_true(rl_tls_handshake_done(p->s));
    assert_policy(p->c);
    assert_policy(p->s);
    assert_string_equal(rl_tls_cipher(p->c), rl_tls_cipher(p->s));
    assert_non_null(rl_tls_sni(p->s));
    assert_string_equal(rl_tls_sni(p->s), "smtp.example.com");
}

static void
test_handshake_whole(void **state)
{
    struct pair p;

    pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", CHUNK_ALL);
    assert_ok_pair(&p);
    /* Server preference: ChaCha20 first. */
    assert_string_equal(rl_tls_cipher(p.s), "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256");
    assert_false(rl_tls_pending(p.c));
    assert_false(rl_tls_pending(p.s));
    pair_close(&p);
}

static void
test_handshake_bytewise(void **state)
{
    struct pair p;

    pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", 1);
    assert_ok_pair(&p);
    pair_close(&p);
}

static void
test_handshake_random(void **state)
{
    int round;

    for (round = 0; round < 8; round++) {
        struct pair p;

        pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", CHUNK_RANDOM);
        assert_ok_pair(&p);
        pair_close(&p);
    }
}

static void
test_handshake_rsa_and_chain(void **state)
{
    struct pair p;

    pair_open(&p, "brand-rsa.crt", "brand-rsa.key", "smtp.example.com", CHUNK_RANDOM);
    assert_ok_pair(&p);
    assert_string_equal(rl_tls_cipher(p.s), "TLS-ECDHE-RSA-WITH-CHACHA20-POLY1305-SHA256");
    pair_close(&p);

    pair_open(&p, "brand-chain.crt", "brand.key", "smtp.example.com", CHUNK_ALL);
    assert_ok_pair(&p);
    pair_close(&p);
}

/* Reads everything available from t into dst (at *have), with reads of
 * random size so that the "caller's buffer full" path is taken often. */
static int
drain(struct rl_tls *t, char *dst, size_t *have, size_t total)
{
    int rc = 0;

    do {
        size_t cap = 1 + rng_next(20000), got = 0;

        if (cap > total - *have)
            cap = total - *have;
        if (cap == 0)
            break;
        rc = rl_tls_read(t, dst + *have, cap, &got);
        if (rc < 0)
            return rc;
        *have += got;
    } while (rl_tls_pending(t));
    return rc;
}

/* Sends `total` bytes from a to b, and the same amount from b to a at the
 * same time, in random pieces, and checks both arrive intact. */
static void
transfer(struct rl_tls *a, struct rl_tls *b, size_t total)
{
    char *src_ab = malloc(total), *src_ba = malloc(total);
    char *dst_ab = malloc(total), *dst_ba = malloc(total);
    size_t sent_ab = 0, sent_ba = 0, got_ab = 0, got_ba = 0, i;
    int guard = 0;

    assert_non_null(src_ab);
    assert_non_null(src_ba);
    assert_non_null(dst_ab);
    assert_non_null(dst_ba);
    for (i = 0; i < total; i++) {
        src_ab[i] = (char)(i * 7 + 1);
        src_ba[i] = (char)(i * 13 + 5);
    }
    while (got_ab < total || got_ba < total) {
        assert_true(++guard < 1000000);
        /* Write only below a high-water mark, as rl_conn does. */
        if (sent_ab < total && rl_buf_len(rl_tls_out(a)) < 64 * 1024) {
            size_t n = 1 + rng_next(40000);

            if (n > total - sent_ab)
                n = total - sent_ab;
            assert_int_equal(rl_tls_write(a, src_ab + sent_ab, n), 0);
            sent_ab += n;
        }
        if (sent_ba < total && rl_buf_len(rl_tls_out(b)) < 64 * 1024) {
            size_t n = 1 + rng_next(40000);

            if (n > total - sent_ba)
                n = total - sent_ba;
            assert_int_equal(rl_tls_write(b, src_ba + sent_ba, n), 0);
            sent_ba += n;
        }
        move(a, b, CHUNK_RANDOM);
        move(b, a, 1 + rng_next(20000));
        assert_int_equal(drain(b, dst_ab, &got_ab, total), 0);
        assert_int_equal(drain(a, dst_ba, &got_ba, total), 0);
    }
    assert_memory_equal(src_ab, dst_ab, total);
    assert_memory_equal(src_ba, dst_ba, total);
    assert_false(rl_tls_pending(a));
    assert_false(rl_tls_pending(b));
    free(src_ab);
    free(src_ba);
    free(dst_ab);
    free(dst_ba);
}

static void
test_data_both_ways(void **state)
{
    struct pair p;
    char buf[64];
    size_t got;

    pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", CHUNK_ALL);
    assert_ok_pair(&p);

    /* A small message in each direction, whole. */
    assert_int_equal(rl_tls_write(p.c, "EHLO x\r\n", 8), 0);
    move(p.c, p.s, CHUNK_ALL);
    assert_true(rl_tls_pending(p.s));
    assert_int_equal(rl_tls_read(p.s, buf, sizeof buf, &got), 0);
    assert_int_equal(got, 8);
    assert_memory_equal(buf, "EHLO x\r\n", 8);
    assert_false(rl_tls_pending(p.s));
    /* Nothing more: 0 bytes, not an error. */
    assert_int_equal(rl_tls_read(p.s, buf, sizeof buf, &got), 0);
    assert_int_equal(got, 0);

    /* Two records, read into a buffer smaller than one: the rest stays
     * pending until the caller comes back. */
    assert_int_equal(rl_tls_write(p.s, "250 first\r\n", 11), 0);
    assert_int_equal(rl_tls_write(p.s, "250 second\r\n", 12), 0);
    move(p.s, p.c, CHUNK_ALL);
    assert_int_equal(rl_tls_read(p.c, buf, 5, &got), 0);
    assert_int_equal(got, 5);
    assert_true(rl_tls_pending(p.c));
    assert_int_equal(rl_tls_read(p.c, buf + 5, sizeof buf - 5, &got), 0);
    assert_int_equal(got, 18);
    assert_memory_equal(buf, "250 first\r\n250 second\r\n", 23);
    assert_false(rl_tls_pending(p.c));

    /* 1 MB each way at once, in random pieces. */
    transfer(p.c, p.s, 1024 * 1024);
    pair_close(&p);
}

static void
test_close_notify(void **state)
{
    struct pair p;
    char buf[64];
    size_t got;

    pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", CHUNK_ALL);
    assert_ok_pair(&p);
    assert_int_equal(rl_tls_write(p.s, "221 bye\r\n", 9), 0);
    assert_int_equal(rl_tls_close_notify(p.s), 0);
    assert_int_equal(rl_tls_close_notify(p.s), 0); /* once only, no error */
    assert_int_equal(rl_tls_write(p.s, "x", 1), RL_E_TLS);
    move(p.s, p.c, CHUNK_ALL);
    /* Data and close_notify in one flight: the data first, with 0. */
    assert_int_equal(rl_tls_read(p.c, buf, sizeof buf, &got), 0);
    assert_int_equal(got, 9);
    assert_memory_equal(buf, "221 bye\r\n", 9);
    assert_true(rl_tls_pending(p.c)); /* the EOF is still to be reported */
    assert_int_equal(rl_tls_read(p.c, buf, sizeof buf, &got), RL_E_TLS_EOF);
    assert_int_equal(got, 0);
    assert_false(rl_tls_pending(p.c));
    assert_int_equal(rl_tls_read(p.c, buf, sizeof buf, &got), RL_E_TLS_EOF);
    /* The client answers with its own close_notify. */
    assert_int_equal(rl_tls_close_notify(p.c), 0);
    move(p.c, p.s, CHUNK_ALL);
    assert_int_equal(rl_tls_read(p.s, buf, sizeof buf, &got), RL_E_TLS_EOF);
    pair_close(&p);
}

static void
test_truncated(void **state)
{
    struct pair p;
    char buf[64], msg[128];
    size_t got;

    /* Whole records, then TCP EOF without close_notify. */
    pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", CHUNK_ALL);
    assert_ok_pair(&p);
    assert_int_equal(rl_tls_write(p.s, "250 ok\r\n", 8), 0);
    move(p.s, p.c, CHUNK_ALL);
    rl_tls_in_eof(p.c);
    assert_true(rl_tls_pending(p.c));
    assert_int_equal(rl_tls_read(p.c, buf, sizeof buf, &got), 0);
    assert_int_equal(got, 8);
    assert_int_equal(rl_tls_read(p.c, buf, sizeof buf, &got), RL_E_TLS_TRUNCATED);
    assert_int_equal(got, 0);
    assert_false(rl_tls_pending(p.c));
    assert_non_null(strstr(rl_tls_strerror(p.c, msg, sizeof msg), "close_notify"));

    /* EOF in the middle of a record. */
    assert_int_equal(rl_tls_write(p.c, "QUIT\r\n", 6), 0);
    move(p.c, p.s, 10);
    rl_tls_in_eof(p.s);
    assert_int_equal(rl_tls_read(p.s, buf, sizeof buf, &got), RL_E_TLS_TRUNCATED);
    assert_int_equal(got, 0);
    pair_close(&p);

    /* EOF during the handshake. */
    {
        struct rl_tls_conf *sconf = server_conf("brand.crt", "brand.key");
        struct rl_tls *s = rl_tls_new(sconf, NULL);

        assert_int_equal(rl_tls_handshake(s), RL_TLS_WANT);
        rl_tls_in_eof(s);
        assert_int_equal(rl_tls_handshake(s), RL_E_TLS_TRUNCATED);
        assert_false(rl_tls_handshake_done(s));
        assert_string_equal(rl_tls_version(s), "none");
        rl_tls_free(s);
        rl_tls_conf_free(sconf);
    }
}

/* A client handshake that must fail verification; returns its text. */
static void
expect_verify_failure(const char *crt, const char *key, const char *host, const char *needle1,
                      const char *needle2)
{
    struct pair p;
    char msg[512];

    pair_open(&p, crt, key, host, CHUNK_RANDOM);
    assert_int_equal(p.crc, RL_E_TLS);
    assert_false(rl_tls_handshake_done(p.c));
    rl_tls_strerror(p.c, msg, sizeof msg);
    if (strstr(msg, needle1) == NULL || (needle2 != NULL && strstr(msg, needle2) == NULL))
        fail_msg("'%s' lacks '%s' / '%s'", msg, needle1, needle2 ? needle2 : "");
    assert_null(strchr(msg, '\n'));
    /* The server hears about it through the client's alert. */
    assert_int_equal(p.src, RL_E_TLS);
    rl_tls_strerror(p.s, msg, sizeof msg);
    assert_non_null(strstr(msg, "alert"));
    pair_close(&p);
}

static void
test_wrong_name(void **state)
{
    /* The brand certificate is for smtp.example.com. */
    expect_verify_failure("brand.crt", "brand.key", "smtp.wrong.example", "smtp.wrong.example",
                          "mismatch");
    /* The upstream presents a certificate for another name. */
    expect_verify_failure("wrongname.crt", "wrongname.key", "smtp.mailgun.org", "smtp.mailgun.org",
                          "smtp.other.org");
}

static void
test_expired(void **state)
{
    expect_verify_failure("expired.crt", "expired.key", "smtp.mailgun.org", "expired",
                          "2021-01-01");
}

static void
test_unknown_ca(void **state)
{
    expect_verify_failure("otherca.crt", "otherca.key", "smtp.mailgun.org", "unknown CA",
                          "relabel other CA");
    expect_verify_failure("unknownca.crt", "unknownca.key", "smtp.mailgun.org", "unknown CA", NULL);
}

static void
test_conf_errors(void **state)
{
    char err[256];
    struct rl_tls_conf *conf;

    err[0] = '\0';
    conf = rl_tls_conf_server(cert("brand.crt"), cert("mismatch.key"), err, sizeof err);
    assert_null(conf);
    assert_non_null(strstr(err, "does not match"));
    assert_non_null(strstr(err, "mismatch.key"));

    err[0] = '\0';
    conf = rl_tls_conf_server(cert("nonexistent.crt"), cert("brand.key"), err, sizeof err);
    assert_null(conf);
    assert_non_null(strstr(err, "nonexistent.crt"));
    assert_non_null(strstr(err, "No such file"));

    /* A key where the certificate should be. */
    err[0] = '\0';
    conf = rl_tls_conf_server(cert("brand.key"), cert("brand.key"), err, sizeof err);
    assert_null(conf);
    assert_non_null(strstr(err, "certificate"));

    /* A certificate where the key should be: no PEM key material to show. */
    err[0] = '\0';
    conf = rl_tls_conf_server(cert("brand.crt"), cert("brand.crt"), err, sizeof err);
    assert_null(conf);
    assert_non_null(strstr(err, "private key"));
    assert_null(strstr(err, "BEGIN"));

    err[0] = '\0';
    conf = rl_tls_conf_client(cert("nonexistent-ca.crt"), err, sizeof err);
    assert_null(conf);
    assert_non_null(strstr(err, "nonexistent-ca.crt"));

    err[0] = '\0';
    conf = rl_tls_conf_client(cert("ca.key"), err, sizeof err);
    assert_null(conf);
    assert_true(err[0] != '\0');

    /* A client engine without a name to verify is refused. */
    conf = client_conf();
    assert_null(rl_tls_new(conf, NULL));
    assert_null(rl_tls_new(conf, ""));
    rl_tls_conf_free(conf);
}

static void
test_system_bundle(void **state)
{
    char err[256] = "", line[256];
    struct rl_tls_conf *conf;

    if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) != 0) {
        skip();
        return;
    }
    conf = rl_tls_conf_client(NULL, err, sizeof err);
    if (conf == NULL)
        fail_msg("system bundle: %s", err);
    rl_tls_conf_describe(conf, line, sizeof line);
    assert_non_null(strstr(line, "trusted CA"));
    rl_tls_conf_free(conf);

    /* A directory of PEM files works too. */
    conf = rl_tls_conf_client("/etc/ssl/certs", err, sizeof err);
    if (conf == NULL)
        fail_msg("/etc/ssl/certs: %s", err);
    rl_tls_conf_free(conf);
}

static void
test_describe(void **state)
{
    struct rl_tls_conf *conf;
    char line[256];
    long days;

    conf = server_conf("brand.crt", "brand.key");
    days = rl_tls_conf_describe(conf, line, sizeof line);
    assert_non_null(strstr(line, "CN=smtp.example.com"));
    assert_non_null(strstr(line, "DNS=smtp.example.com"));
    assert_non_null(strstr(line, "notAfter=20"));
    assert_non_null(strstr(line, "days_left="));
    assert_null(strchr(line, '\n'));
    /* Two-year leaves, reused by the script until 30 days before expiry. */
    assert_true(days >= 29 && days <= 731);
    rl_tls_conf_free(conf);

    conf = server_conf("brand-chain.crt", "brand.key");
    rl_tls_conf_describe(conf, line, sizeof line);
    assert_non_null(strstr(line, "chain=2"));
    rl_tls_conf_free(conf);

    conf = server_conf("expired.crt", "expired.key");
    days = rl_tls_conf_describe(conf, line, sizeof line);
    assert_true(days < 0);
    assert_non_null(strstr(line, "notAfter=2021-01-01"));
    assert_non_null(strstr(line, "EXPIRED"));
    rl_tls_conf_free(conf);
}

static void
test_cout_cap(void **state)
{
    struct pair p;
    char *big = calloc(1, RL_CONN_OUT_MAX + 1);
    char msg[128];

    assert_non_null(big);
    pair_open(&p, "brand.crt", "brand.key", "smtp.example.com", CHUNK_ALL);
    assert_ok_pair(&p);
    /* The caller is expected to stop at its high-water mark; ignoring it
     * runs into the hard cap, which ends the engine instead of growing. */
    assert_int_equal(rl_tls_write(p.c, big, RL_CONN_OUT_MAX + 1), RL_E_NOMEM);
    assert_true(rl_buf_len(rl_tls_out(p.c)) <= RL_CONN_OUT_MAX);
    assert_non_null(strstr(rl_tls_strerror(p.c, msg, sizeof msg), "buffer"));
    assert_int_equal(rl_tls_write(p.c, "x", 1), RL_E_NOMEM);
    free(big);
    pair_close(&p);
}

static void
test_misuse(void **state)
{
    struct rl_tls_conf *conf = server_conf("brand.crt", "brand.key");
    struct rl_tls *s = rl_tls_new(conf, NULL);
    char buf[16];
    size_t got, avail, total = 0;
    char *p;

    assert_null(rl_tls_sni(s));
    assert_string_equal(rl_tls_cipher(s), "none");
    /* Close before a handshake: nothing to send, no error. */
    assert_int_equal(rl_tls_close_notify(s), 0);
    assert_int_equal(rl_buf_len(rl_tls_out(s)), 0);
    assert_int_equal(rl_tls_write(s, "x", 1), RL_E_TLS);
    /* cin is capped: reserve returns NULL once it is full. */
    while ((p = rl_tls_in_reserve(s, &avail)) != NULL) {
        memset(p, 0, avail);
        rl_tls_in_commit(s, avail);
        total += avail;
        assert_true(total <= 4 * RL_TLS_RECORD_MAX);
    }
    assert_true(total >= RL_TLS_RECORD_MAX);
    /* Zeros are not a ClientHello. */
    assert_int_equal(rl_tls_handshake(s), RL_E_TLS);
    assert_int_equal(rl_tls_handshake(s), RL_E_TLS);
    assert_int_equal(rl_tls_read(s, buf, sizeof buf, &got), RL_E_TLS);
    assert_true(rl_tls_error(s) != 0);
    rl_tls_free(s);
    rl_tls_conf_free(conf);
}

/* ---- a raw mbedTLS client, for policies relabel would never build ------ */

struct raw_client {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    struct rl_buf in, out;
};

static int
raw_send(void *ctx, const unsigned char *p, size_t len)
{
    struct raw_client *rc = ctx;

    return rl_buf_append(&rc->out, p, len) == 0 ? (int)len : MBEDTLS_ERR_SSL_ALLOC_FAILED;
}

static int
raw_recv(void *ctx, unsigned char *p, size_t len)
{
    struct raw_client *rc = ctx;
    size_t n = rl_buf_len(&rc->in);

    if (n == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > len)
        n = len;
    memcpy(p, rl_buf_data(&rc->in), n);
    rl_buf_consume(&rc->in, n);
    return (int)n;
}

/* What the server made of a raw client's handshake. */
struct raw_result {
    char suite[80];
    size_t brand;
    const char *failure; /* rl_tls_failure_class(), if it failed */
};

/* Handshakes a raw client (suites may be NULL for the defaults, sni may be
 * NULL) against an engine of sconf; returns the raw client's result and
 * stores the server's, and what it chose in *res (may be NULL). */
static int
raw_handshake_with(struct rl_tls_conf *sconf, const int *suites, int minor_min, int minor_max,
                   const char *sni, int *src, char *sni_seen, size_t sni_cap,
                   struct raw_result *res)
{
    struct rl_tls *s = rl_tls_new(sconf, NULL);
    struct raw_client rc;
    int crc = MBEDTLS_ERR_SSL_WANT_READ, i;

    memset(&rc, 0, sizeof rc);
    rl_buf_init(&rc.in, 1 << 20);
    rl_buf_init(&rc.out, 1 << 20);
    mbedtls_entropy_init(&rc.entropy);
    mbedtls_ctr_drbg_init(&rc.drbg);
    mbedtls_ssl_config_init(&rc.conf);
    mbedtls_ssl_init(&rc.ssl);
    assert_int_equal(mbedtls_ctr_drbg_seed(&rc.drbg, mbedtls_entropy_func, &rc.entropy, NULL, 0),
                     0);
    assert_int_equal(mbedtls_ssl_config_defaults(&rc.conf, MBEDTLS_SSL_IS_CLIENT,
                                                 MBEDTLS_SSL_TRANSPORT_STREAM,
                                                 MBEDTLS_SSL_PRESET_DEFAULT),
                     0);
    mbedtls_ssl_conf_rng(&rc.conf, mbedtls_ctr_drbg_random, &rc.drbg);
    mbedtls_ssl_conf_authmode(&rc.conf, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_min_version(&rc.conf, MBEDTLS_SSL_MAJOR_VERSION_3, minor_min);
    mbedtls_ssl_conf_max_version(&rc.conf, MBEDTLS_SSL_MAJOR_VERSION_3, minor_max);
    if (suites != NULL)
        mbedtls_ssl_conf_ciphersuites(&rc.conf, suites);
    assert_int_equal(mbedtls_ssl_setup(&rc.ssl, &rc.conf), 0);
    if (sni != NULL)
        assert_int_equal(mbedtls_ssl_set_hostname(&rc.ssl, sni), 0);
    mbedtls_ssl_set_bio(&rc.ssl, &rc, raw_send, raw_recv, NULL);

    *src = RL_TLS_WANT;
    for (i = 0; i < 100; i++) {
        struct rl_buf *sout = rl_tls_out(s);
        size_t avail;
        char *p;

        if (crc == MBEDTLS_ERR_SSL_WANT_READ)
            crc = mbedtls_ssl_handshake(&rc.ssl);
        if (rl_buf_len(&rc.out) > 0) {
            p = rl_tls_in_reserve(s, &avail);
            assert_non_null(p);
            assert_true(avail >= rl_buf_len(&rc.out));
            memcpy(p, rl_buf_data(&rc.out), rl_buf_len(&rc.out));
            rl_tls_in_commit(s, rl_buf_len(&rc.out));
            rl_buf_consume(&rc.out, rl_buf_len(&rc.out));
        }
        if (*src == RL_TLS_WANT)
            *src = rl_tls_handshake(s);
        if (rl_buf_len(sout) > 0) {
            assert_int_equal(rl_buf_append(&rc.in, rl_buf_data(sout), rl_buf_len(sout)), 0);
            rl_buf_consume(sout, rl_buf_len(sout));
        }
        if (crc != MBEDTLS_ERR_SSL_WANT_READ && *src != RL_TLS_WANT)
            break;
    }
    if (sni_seen != NULL)
        snprintf(sni_seen, sni_cap, "%s", rl_tls_sni(s) ? rl_tls_sni(s) : "(none)");
    if (*src == 0)
        assert_policy(s);
    if (res != NULL) {
        snprintf(res->suite, sizeof res->suite, "%s", rl_tls_cipher(s));
        res->brand = rl_tls_brand(s);
        res->failure = *src != 0 ? rl_tls_failure_class(s) : NULL;
    }

    mbedtls_ssl_free(&rc.ssl);
    mbedtls_ssl_config_free(&rc.conf);
    mbedtls_ctr_drbg_free(&rc.drbg);
    mbedtls_entropy_free(&rc.entropy);
    rl_buf_free(&rc.in);
    rl_buf_free(&rc.out);
    rl_tls_free(s);
    return crc;
}

static int
raw_handshake(const int *suites, int minor_min, int minor_max, const char *sni, int *src,
              char *sni_seen, size_t sni_cap)
{
    struct rl_tls_conf *sconf = server_conf("brand.crt", "brand.key");
    int crc =
        raw_handshake_with(sconf, suites, minor_min, minor_max, sni, src, sni_seen, sni_cap, NULL);

    rl_tls_conf_free(sconf);
    return crc;
}

/* ---- several brands on one server conf --------------------------------- */

/* Three brands as a config would give them: "example" with an ECDSA and an
 * RSA certificate, "b" (mail.brand-b.test and *.brand-b.test), "c". */
struct brands {
    struct rl_tls_certs *certs[3];
    char names_text[4][32];
    struct rl_sni_name names[4];
    struct rl_sni_map map;
};

static void
brands_load(struct brands *b)
{
    static const struct {
        const char *name;
        size_t brand;
    } names[] = {{"smtp.example.com", 0},
                 {"mail.brand-b.test", 1},
                 {"*.brand-b.test", 1},
                 {"smtp.brand-c.test", 2}};
    static const char *const files[3][2][2] = {
        {{"brand.crt", "brand.key"}, {"brand-rsa.crt", "brand-rsa.key"}},
        {{"brand-b.crt", "brand-b.key"}, {NULL, NULL}},
        {{"brand-c.crt", "brand-c.key"}, {NULL, NULL}},
    };
    char err[256];

    for (size_t i = 0; i < 3; i++) {
        b->certs[i] = rl_tls_certs_new(err, sizeof err);
        assert_non_null(b->certs[i]);
        for (size_t j = 0; j < 2 && files[i][j][0] != NULL; j++) {
            bool rsa = !j;

            err[0] = '\0';
            if (rl_tls_certs_add(b->certs[i], cert(files[i][j][0]), cert(files[i][j][1]), &rsa, err,
                                 sizeof err) != 0)
                fail_msg("rl_tls_certs_add(%s): %s", files[i][j][0], err);
            assert_int_equal(rsa, j == 1);
        }
    }
    for (size_t i = 0; i < 4; i++) {
        snprintf(b->names_text[i], sizeof b->names_text[i], "%s", names[i].name);
        b->names[i].name = b->names_text[i];
        b->names[i].brand = names[i].brand;
    }
    b->map.items = b->names;
    b->map.n = 4;
    rl_sni_sort(&b->map);
}

static void
brands_free(struct brands *b)
{
    for (size_t i = 0; i < 3; i++)
        rl_tls_certs_free(b->certs[i]);
}

static struct rl_tls_conf *
brands_conf(struct brands *b, size_t dflt, bool refuse)
{
    char err[256] = "";
    struct rl_tls_conf *conf =
        rl_tls_conf_server_sni(b->certs, 3, &b->map, dflt, refuse, err, sizeof err);

    if (conf == NULL)
        fail_msg("rl_tls_conf_server_sni: %s", err);
    return conf;
}

/* A verifying relabel client asking for `host` (NULL: no SNI, by a raw
 * client) against sconf: the brand the server chose, -1 if the handshake
 * failed on either side. */
static long
brand_for(struct rl_tls_conf *sconf, const char *host)
{
    struct rl_tls_conf *cconf = client_conf();
    struct rl_tls *s = rl_tls_new(sconf, NULL), *c = rl_tls_new(cconf, host);
    long brand;
    int crc, src;

    handshake(c, s, CHUNK_RANDOM, &crc, &src);
    brand = crc == 0 && src == 0 ? (long)rl_tls_brand(s) : -1;
    rl_tls_free(c);
    rl_tls_free(s);
    rl_tls_conf_free(cconf);
    return brand;
}

static void
test_brands_by_sni(void **state)
{
    static const int any_gcm[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, 0};
    struct brands b;
    struct rl_tls_conf *conf;
    struct raw_result res;
    int src, crc;

    brands_load(&b);
    conf = brands_conf(&b, 0, false);
    /* Each name gets its brand's certificate: the client verifies it
     * against the name it asked for, so a wrong certificate fails. */
    assert_int_equal(brand_for(conf, "smtp.example.com"), 0);
    assert_int_equal(brand_for(conf, "mail.brand-b.test"), 1);
    assert_int_equal(brand_for(conf, "relay.brand-b.test"), 1); /* the wildcard */
    assert_int_equal(brand_for(conf, "smtp.brand-c.test"), 2);
    /* An unknown name gets the default's certificate, which does not
     * verify for it. */
    assert_int_equal(brand_for(conf, "smtp.unknown.test"), -1);
    crc = raw_handshake_with(conf, any_gcm, MBEDTLS_SSL_MINOR_VERSION_3,
                             MBEDTLS_SSL_MINOR_VERSION_3, "smtp.unknown.test", &src, NULL, 0, &res);
    assert_int_equal(crc, 0);
    assert_int_equal(src, 0);
    assert_int_equal(res.brand, 0);
    /* No SNI: the default. */
    crc = raw_handshake_with(conf, any_gcm, MBEDTLS_SSL_MINOR_VERSION_3,
                             MBEDTLS_SSL_MINOR_VERSION_3, NULL, &src, NULL, 0, &res);
    assert_int_equal(crc, 0);
    assert_int_equal(res.brand, 0);
    rl_tls_conf_free(conf);

    /* Another listener's default. */
    conf = brands_conf(&b, 2, false);
    crc = raw_handshake_with(conf, any_gcm, MBEDTLS_SSL_MINOR_VERSION_3,
                             MBEDTLS_SSL_MINOR_VERSION_3, NULL, &src, NULL, 0, &res);
    assert_int_equal(crc, 0);
    assert_int_equal(res.brand, 2);
    assert_int_equal(brand_for(conf, "smtp.example.com"), 0);
    rl_tls_conf_free(conf);
    brands_free(&b);
}

static void
test_brands_refuse_unknown(void **state)
{
    struct brands b;
    struct rl_tls_conf *sconf, *cconf;
    struct rl_tls *s, *c;
    struct raw_result res;
    char msg[256];
    int src, crc;

    brands_load(&b);
    sconf = brands_conf(&b, 0, true);
    cconf = client_conf();
    s = rl_tls_new(sconf, NULL);
    c = rl_tls_new(cconf, "smtp.unknown.test");
    handshake(c, s, CHUNK_ALL, &crc, &src);
    assert_int_equal(src, RL_E_TLS);
    assert_string_equal(rl_tls_failure_class(s), "sni");
    assert_non_null(strstr(rl_tls_strerror(s, msg, sizeof msg), "sni_unknown = refuse"));
    assert_string_equal(rl_tls_sni(s), "smtp.unknown.test");
    /* The client learns why: the unrecognized_name alert (RFC 6066 §3). */
    assert_int_equal(crc, RL_E_TLS);
    assert_non_null(strstr(rl_tls_strerror(c, msg, sizeof msg), "unrecognized_name"));
    rl_tls_free(c);
    rl_tls_free(s);
    rl_tls_conf_free(cconf);
    /* Known names and no SNI at all still work. */
    assert_int_equal(brand_for(sconf, "mail.brand-b.test"), 1);
    crc = raw_handshake_with(sconf, NULL, MBEDTLS_SSL_MINOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3,
                             NULL, &src, NULL, 0, &res);
    assert_int_equal(crc, 0);
    assert_int_equal(res.brand, 0);
    rl_tls_conf_free(sconf);
    brands_free(&b);
}

static void
test_brands_dual_certificate(void **state)
{
    static const int rsa_only[] = {MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, 0};
    static const int ecdsa_only[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 0};
    struct brands b;
    struct rl_tls_conf *conf;
    struct raw_result res;
    int src, crc;

    brands_load(&b);
    /* Brand "example" as the default and by name, "b" by name: only the
     * first has an RSA certificate for a client that takes nothing else. */
    for (size_t dflt = 0; dflt < 2; dflt++) {
        conf = brands_conf(&b, dflt, false);
        crc = raw_handshake_with(conf, rsa_only, MBEDTLS_SSL_MINOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3, "smtp.example.com", &src, NULL, 0,
                                 &res);
        assert_int_equal(crc, 0);
        assert_int_equal(res.brand, 0);
        assert_string_equal(res.suite, "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256");
        crc = raw_handshake_with(conf, ecdsa_only, MBEDTLS_SSL_MINOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3, "smtp.example.com", &src, NULL, 0,
                                 &res);
        assert_int_equal(crc, 0);
        assert_string_equal(res.suite, "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384");
        /* A client offering both gets the server's first choice, ECDSA. */
        crc =
            raw_handshake_with(conf, NULL, MBEDTLS_SSL_MINOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3,
                               "smtp.example.com", &src, NULL, 0, &res);
        assert_int_equal(crc, 0);
        assert_non_null(strstr(res.suite, "ECDHE-ECDSA"));
        crc = raw_handshake_with(conf, rsa_only, MBEDTLS_SSL_MINOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3, "mail.brand-b.test", &src, NULL, 0,
                                 &res);
        assert_int_not_equal(crc, 0);
        assert_int_equal(src, RL_E_TLS);
        rl_tls_conf_free(conf);
    }
    brands_free(&b);
}

/* One handshake of a client conf that keeps and offers its last session
 * (rl_tls_conf_client) against sconf: 1 resumed, 0 full, -1 failed. */
static int
resumed_for(struct rl_tls_conf *sconf, struct rl_tls_conf *cconf, const char *host, size_t *brand)
{
    struct rl_tls *s = rl_tls_new(sconf, NULL), *c = rl_tls_new(cconf, host);
    int crc, src, rc;

    handshake(c, s, CHUNK_ALL, &crc, &src);
    rc = crc != 0 || src != 0 ? -1 : rl_tls_resumed(s) ? 1 : 0;
    if (rc >= 0)
        assert_int_equal(rl_tls_resumed(c), rc);
    *brand = rl_tls_brand(s);
    rl_tls_free(c);
    rl_tls_free(s);
    return rc;
}

static void
test_brands_tickets(void **state)
{
    struct brands b;
    struct rl_tls_conf *sconf, *other, *cconf;
    size_t brand;

    brands_load(&b);
    sconf = brands_conf(&b, 0, false);
    other = brands_conf(&b, 2, true); /* another listener, same brands */
    cconf = client_conf();
    assert_int_equal(resumed_for(sconf, cconf, "smtp.example.com", &brand), 0);
    assert_int_equal(resumed_for(sconf, cconf, "smtp.example.com", &brand), 1);
    assert_int_equal(brand, 0);
    /* The ticket is the default brand's: offered under brand b's name it
     * is not accepted, and b's own certificate is verified in a full
     * handshake. */
    assert_int_equal(resumed_for(sconf, cconf, "mail.brand-b.test", &brand), 0);
    assert_int_equal(brand, 1);
    assert_int_equal(resumed_for(sconf, cconf, "mail.brand-b.test", &brand), 1);
    assert_int_equal(brand, 1);
    /* Ticket keys belong to the brand, not the listener. */
    assert_int_equal(resumed_for(other, cconf, "relay.brand-b.test", &brand), 1);
    assert_int_equal(brand, 1);
    rl_tls_conf_free(cconf);
    rl_tls_conf_free(other);
    rl_tls_conf_free(sconf);
    brands_free(&b);
}

static void
test_brands_certs(void **state)
{
    struct rl_tls_certs *c;
    char err[256], line[512];
    bool rsa = true;

    c = rl_tls_certs_new(err, sizeof err);
    assert_non_null(c);
    assert_int_equal(rl_tls_certs_count(c), 0);
    assert_int_equal(
        rl_tls_certs_add(c, cert("brand-b.crt"), cert("brand-b.key"), &rsa, err, sizeof err), 0);
    assert_false(rsa);
    /* A second ECDSA certificate would never be chosen. */
    err[0] = '\0';
    assert_int_equal(
        rl_tls_certs_add(c, cert("brand.crt"), cert("brand.key"), NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "already has an ECDSA certificate"));
    assert_int_equal(rl_tls_certs_count(c), 1);
    assert_int_equal(
        rl_tls_certs_add(c, cert("brand-rsa.crt"), cert("brand-rsa.key"), &rsa, err, sizeof err),
        0);
    assert_true(rsa);
    err[0] = '\0';
    assert_int_equal(
        rl_tls_certs_add(c, cert("brand-c.crt"), cert("brand-c.key"), NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "at most 2"));
    assert_int_equal(rl_tls_certs_count(c), 2);

    rl_tls_certs_describe(c, 0, line, sizeof line);
    assert_non_null(strstr(line, "DNS=mail.brand-b.test,*.brand-b.test"));
    assert_non_null(strstr(line, "key=ECDSA"));
    rl_tls_certs_describe(c, 1, line, sizeof line);
    assert_non_null(strstr(line, "CN=smtp.example.com"));
    assert_non_null(strstr(line, "key=RSA"));
    assert_true(rl_tls_certs_not_after(c) > 0);

    /* Coverage: the SAN names, a wildcard for one label. */
    assert_true(rl_tls_certs_covers(c, 0, "mail.brand-b.test"));
    assert_true(rl_tls_certs_covers(c, 0, "MAIL.brand-b.test"));
    assert_true(rl_tls_certs_covers(c, 0, "x.brand-b.test"));
    assert_true(rl_tls_certs_covers(c, 0, "*.brand-b.test"));
    assert_false(rl_tls_certs_covers(c, 0, "a.b.brand-b.test"));
    assert_false(rl_tls_certs_covers(c, 0, "brand-b.test"));
    assert_false(rl_tls_certs_covers(c, 0, "smtp.example.com"));
    assert_true(rl_tls_certs_covers(c, 1, "smtp.example.com"));
    assert_false(rl_tls_certs_covers(c, 2, "smtp.example.com"));
    rl_tls_certs_free(c);
}

static void
test_refuse_weak_clients(void **state)
{
    static const int cbc_only[] = {
        MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
        MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
        MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
        0,
    };
    static const int gcm_ecdsa[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 0};
    char sni[64];
    int src, crc;

    /* The control: the raw client with a policy suite succeeds, and a
     * client sending no SNI leaves rl_tls_sni() NULL. */
    crc = raw_handshake(gcm_ecdsa, MBEDTLS_SSL_MINOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3, NULL,
                        &src, sni, sizeof sni);
    assert_int_equal(crc, 0);
    assert_int_equal(src, 0);
    assert_string_equal(sni, "(none)");

    crc = raw_handshake(cbc_only, MBEDTLS_SSL_MINOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3,
                        "smtp.example.com", &src, sni, sizeof sni);
    assert_int_not_equal(crc, 0);
    assert_int_equal(src, RL_E_TLS);

    /* TLS 1.0 and 1.1 only, default suites. */
    crc = raw_handshake(NULL, MBEDTLS_SSL_MINOR_VERSION_1, MBEDTLS_SSL_MINOR_VERSION_1,
                        "smtp.example.com", &src, NULL, 0);
    assert_int_not_equal(crc, 0);
    assert_int_equal(src, RL_E_TLS);
    crc = raw_handshake(NULL, MBEDTLS_SSL_MINOR_VERSION_2, MBEDTLS_SSL_MINOR_VERSION_2,
                        "smtp.example.com", &src, NULL, 0);
    assert_int_not_equal(crc, 0);
    assert_int_equal(src, RL_E_TLS);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_whole),
        cmocka_unit_test(test_handshake_bytewise),
        cmocka_unit_test(test_handshake_random),
        cmocka_unit_test(test_handshake_rsa_and_chain),
        cmocka_unit_test(test_data_both_ways),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_wrong_name),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_unknown_ca),
        cmocka_unit_test(test_conf_errors),
        cmocka_unit_test(test_system_bundle),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_cout_cap),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_refuse_weak_clients),
        cmocka_unit_test(test_brands_by_sni),
        cmocka_unit_test(test_brands_refuse_unknown),
        cmocka_unit_test(test_brands_dual_certificate),
        cmocka_unit_test(test_brands_certs),
        cmocka_unit_test(test_brands_tickets),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
