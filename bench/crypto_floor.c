/*
 * crypto_floor.c - the physical floor of relabel's relay cost on this
 * machine: how fast the mbedTLS build relabel links against seals data
 * with the AEADs relabel negotiates.  Every relayed byte is opened once
 * (client leg) and sealed once (upstream leg), so no relay built on this
 * library can spend less CPU per byte than the sum of the two.
 *
 * Prints one line per cipher: "cipher NAME MB_per_s".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/chachapoly.h>
#include <mbedtls/gcm.h>

#define CHUNK 16384 /* one TLS record */
#define TOTAL (256u * 1024u * 1024u)

static double
now_cpu(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
bench_gcm(const char *name, unsigned keybits, unsigned char *in, unsigned char *out)
{
    mbedtls_gcm_context gcm;
    unsigned char key[32] = {1}, iv[12] = {2}, tag[16];
    double t0, t1;

    mbedtls_gcm_init(&gcm);
    mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, keybits);
    t0 = now_cpu();
    for (unsigned done = 0; done < TOTAL; done += CHUNK) {
        iv[0]++;
        mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, CHUNK, iv, sizeof(iv), NULL, 0, in,
                                  out, sizeof(tag), tag);
    }
    t1 = now_cpu();
    mbedtls_gcm_free(&gcm);
    printf("cipher %s %.1f\n", name, TOTAL / (1024.0 * 1024.0) / (t1 - t0));
}

static void
bench_chacha(unsigned char *in, unsigned char *out)
{
    mbedtls_chachapoly_context cp;
    unsigned char key[32] = {1}, nonce[12] = {2}, tag[16];
    double t0, t1;

    mbedtls_chachapoly_init(&cp);
    mbedtls_chachapoly_setkey(&cp, key);
    t0 = now_cpu();
    for (unsigned done = 0; done < TOTAL; done += CHUNK) {
        nonce[0]++;
        mbedtls_chachapoly_encrypt_and_tag(&cp, CHUNK, nonce, NULL, 0, in, out, tag);
    }
    t1 = now_cpu();
    mbedtls_chachapoly_free(&cp);
    printf("cipher CHACHA20-POLY1305 %.1f\n", TOTAL / (1024.0 * 1024.0) / (t1 - t0));
}

int
main(void)
{
    unsigned char *in = malloc(CHUNK), *out = malloc(CHUNK);

    if (in == NULL || out == NULL)
        return 1;
    memset(in, 'x', CHUNK);
    bench_chacha(in, out);
    bench_gcm("AES-128-GCM", 128, in, out);
    bench_gcm("AES-256-GCM", 256, in, out);
    free(in);
    free(out);
    return 0;
}
