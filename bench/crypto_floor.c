/*
 * crypto_floor.c - the physical floor of relabel's cost on this machine:
 * how fast the mbedTLS build relabel links against runs the primitives a
 * relayed session cannot avoid.
 *
 *   crypto_floor [SECONDS]      (CPU time spent on each figure; default 1)
 *
 * Data: every relayed byte is opened once (client leg) and sealed once
 * (upstream leg) with the AEAD each leg negotiated, so no relay on this
 * library can spend less CPU per byte than the sum of the two speeds.
 * Prints "cipher NAME MB_per_s" (16 KB records, one core).
 *
 * Handshakes: a new session costs one server handshake (ECDHE key pair
 * and shared secret, one signature with the brand's key) and one client
 * handshake (ECDHE key pair and shared secret, the upstream's signature
 * and its certificate's signature verified).  Prints "op NAME ops_per_s"
 * for ECDSA P-256 sign and verify (bare, and through the pk layer as TLS
 * calls them), ECDH (key pair + shared secret) on x25519 and P-256, and
 * RSA-2048 sign and verify (for RSA certificates).
 *
 * Memory: an established session holds two mbedtls_ssl_context, each with
 * an input and an output record buffer of fixed size in this build (no
 * MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH).  Prints "mem SSL-RECORD-BUFFERS
 * bytes": the four buffers of one relayed session, the floor for an idle
 * session's memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/chachapoly.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/gcm.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
/* The record buffer sizes (MBEDTLS_SSL_IN/OUT_BUFFER_LEN) are defined only
 * in this header of 2.28's. */
#include <mbedtls/ssl_internal.h>

#define CHUNK 16384 /* one TLS record */

static double budget = 1.0;
static mbedtls_ctr_drbg_context drbg;

static double
now_cpu(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
fail(const char *what, int rc)
{
    fprintf(stderr, "crypto_floor: %s failed: -0x%04x\n", what, (unsigned)-rc);
    exit(1);
}

/* The loops below run until the budget of CPU time is spent. */
#define TIMED(count, t, body)                                                                      \
    do {                                                                                           \
        double t0_ = now_cpu();                                                                    \
        (count) = 0;                                                                               \
        do {                                                                                       \
            body;                                                                                  \
            (count)++;                                                                             \
        } while (((t) = now_cpu() - t0_) < budget);                                                \
    } while (0)

static void
bench_gcm(const char *name, unsigned keybits, unsigned char *in, unsigned char *out)
{
    mbedtls_gcm_context gcm;
    unsigned char key[32] = {1}, iv[12] = {2}, tag[16];
    unsigned long n;
    double t;

    mbedtls_gcm_init(&gcm);
    mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, keybits);
    TIMED(n, t, {
        iv[0]++;
        mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, CHUNK, iv, sizeof(iv), NULL, 0, in,
                                  out, sizeof(tag), tag);
    });
    mbedtls_gcm_free(&gcm);
    printf("cipher %s %.1f\n", name, (double)n * CHUNK / (1024.0 * 1024.0) / t);
}

static void
bench_chacha(unsigned char *in, unsigned char *out)
{
    mbedtls_chachapoly_context cp;
    unsigned char key[32] = {1}, nonce[12] = {2}, tag[16];
    unsigned long n;
    double t;

    mbedtls_chachapoly_init(&cp);
    mbedtls_chachapoly_setkey(&cp, key);
    TIMED(n, t, {
        nonce[0]++;
        mbedtls_chachapoly_encrypt_and_tag(&cp, CHUNK, nonce, NULL, 0, in, out, tag);
    });
    mbedtls_chachapoly_free(&cp);
    printf("cipher CHACHA20-POLY1305 %.1f\n", (double)n * CHUNK / (1024.0 * 1024.0) / t);
}

/* ECDSA P-256 signatures, called bare (via_pk 0) or through the pk layer
 * (via_pk 1), which is what mbedTLS's TLS code calls: the brand's key
 * signs the key exchange, the upstream's key and its issuer's verify it.
 * The pk layer works on a fresh copy of the key's curve for every
 * operation, so it apparently redoes the base point's precomputation each
 * time: the difference between the two is a cost relabel's handshakes pay
 * that the bare primitive does not. */
static int
ecdsa_sign(mbedtls_pk_context *pk, int via_pk, const unsigned char *hash, unsigned char *sig,
           size_t *slen)
{
    /* Deterministic (RFC 6979) where the build enables it, as in TLS. */
    if (via_pk)
        return mbedtls_pk_sign(pk, MBEDTLS_MD_SHA256, hash, 32, sig, slen, mbedtls_ctr_drbg_random,
                               &drbg);
    return mbedtls_ecdsa_write_signature(mbedtls_pk_ec(*pk), MBEDTLS_MD_SHA256, hash, 32, sig, slen,
                                         mbedtls_ctr_drbg_random, &drbg);
}

static int
ecdsa_verify(mbedtls_pk_context *pk, int via_pk, const unsigned char *hash,
             const unsigned char *sig, size_t slen)
{
    if (via_pk)
        return mbedtls_pk_verify(pk, MBEDTLS_MD_SHA256, hash, 32, sig, slen);
    return mbedtls_ecdsa_read_signature(mbedtls_pk_ec(*pk), hash, 32, sig, slen);
}

static void
bench_ecdsa(int via_pk)
{
    mbedtls_pk_context pk;
    unsigned char hash[32] = {3}, sig[MBEDTLS_ECDSA_MAX_LEN];
    const char *suffix = via_pk ? "-pk" : "";
    size_t slen = 0;
    unsigned long n;
    double t;
    int rc;

    mbedtls_pk_init(&pk);
    rc = mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (rc == 0)
        rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk),
                                 mbedtls_ctr_drbg_random, &drbg);
    if (rc != 0)
        fail("ecdsa genkey", rc);
    TIMED(n, t, {
        hash[0]++;
        rc = ecdsa_sign(&pk, via_pk, hash, sig, &slen);
        if (rc != 0)
            fail("ecdsa sign", rc);
    });
    printf("op ECDSA-P256-sign%s %.1f\n", suffix, (double)n / t);
    TIMED(n, t, {
        rc = ecdsa_verify(&pk, via_pk, hash, sig, slen);
        if (rc != 0)
            fail("ecdsa verify", rc);
    });
    printf("op ECDSA-P256-verify%s %.1f\n", suffix, (double)n / t);
    mbedtls_pk_free(&pk);
}

/* One side of an ECDHE exchange: a fresh key pair, then the shared secret
 * with the peer's public point. */
static void
bench_ecdh(const char *name, mbedtls_ecp_group_id id)
{
    mbedtls_ecp_group grp;
    mbedtls_mpi d, peer_d, z;
    mbedtls_ecp_point q, peer_q;
    unsigned long n;
    double t;
    int rc;

    mbedtls_ecp_group_init(&grp);
    mbedtls_mpi_init(&d);
    mbedtls_mpi_init(&peer_d);
    mbedtls_mpi_init(&z);
    mbedtls_ecp_point_init(&q);
    mbedtls_ecp_point_init(&peer_q);
    rc = mbedtls_ecp_group_load(&grp, id);
    if (rc == 0)
        rc = mbedtls_ecdh_gen_public(&grp, &peer_d, &peer_q, mbedtls_ctr_drbg_random, &drbg);
    if (rc != 0)
        fail(name, rc);
    TIMED(n, t, {
        rc = mbedtls_ecdh_gen_public(&grp, &d, &q, mbedtls_ctr_drbg_random, &drbg);
        if (rc == 0)
            rc = mbedtls_ecdh_compute_shared(&grp, &z, &peer_q, &d, mbedtls_ctr_drbg_random, &drbg);
        if (rc != 0)
            fail(name, rc);
    });
    printf("op %s %.1f\n", name, (double)n / t);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_point_free(&peer_q);
    mbedtls_mpi_free(&d);
    mbedtls_mpi_free(&peer_d);
    mbedtls_mpi_free(&z);
    mbedtls_ecp_group_free(&grp);
}

static void
bench_rsa(void)
{
    mbedtls_rsa_context rsa;
    unsigned char hash[32] = {4}, sig[256];
    unsigned long n;
    double t;
    int rc;

    mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
    rc = mbedtls_rsa_gen_key(&rsa, mbedtls_ctr_drbg_random, &drbg, 2048, 65537);
    if (rc != 0)
        fail("rsa genkey", rc);
    TIMED(n, t, {
        rc = mbedtls_rsa_pkcs1_sign(&rsa, mbedtls_ctr_drbg_random, &drbg, MBEDTLS_RSA_PRIVATE,
                                    MBEDTLS_MD_SHA256, sizeof(hash), hash, sig);
        if (rc != 0)
            fail("rsa sign", rc);
    });
    printf("op RSA2048-sign %.1f\n", (double)n / t);
    TIMED(n, t, {
        rc = mbedtls_rsa_pkcs1_verify(&rsa, NULL, NULL, MBEDTLS_RSA_PUBLIC, MBEDTLS_MD_SHA256,
                                      sizeof(hash), hash, sig);
        if (rc != 0)
            fail("rsa verify", rc);
    });
    printf("op RSA2048-verify %.1f\n", (double)n / t);
    mbedtls_rsa_free(&rsa);
}

int
main(int argc, char **argv)
{
    unsigned char *in = malloc(CHUNK), *out = malloc(CHUNK);
    mbedtls_entropy_context entropy;

    if (argc > 1)
        budget = atof(argv[1]);
    if (in == NULL || out == NULL || budget <= 0)
        return 1;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, NULL, 0) != 0)
        return 1;
    memset(in, 'x', CHUNK);
    bench_chacha(in, out);
    bench_gcm("AES-128-GCM", 128, in, out);
    bench_gcm("AES-256-GCM", 256, in, out);
    bench_ecdsa(0);
    bench_ecdsa(1);
    bench_ecdh("ECDH-x25519", MBEDTLS_ECP_DP_CURVE25519);
    bench_ecdh("ECDH-P256", MBEDTLS_ECP_DP_SECP256R1);
    bench_rsa();
    printf("mem SSL-RECORD-BUFFERS %d\n",
           2 * ((int)MBEDTLS_SSL_IN_BUFFER_LEN + (int)MBEDTLS_SSL_OUT_BUFFER_LEN));
    fflush(stdout);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    free(in);
    free(out);
    return 0;
}
