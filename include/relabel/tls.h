/*
 * tls.h - every mbedTLS call lives behind this header.
 *
 * Three parts:
 *  - brand certificates (struct rl_tls_certs): one brand's chains and keys,
 *    an ECDSA and/or an RSA one, with the brand's session ticket keys;
 *  - configurations (struct rl_tls_conf): a server one per listener, serving
 *    every brand by SNI, and a client one per upstream; built once per
 *    configuration, shared read-only by all sessions;
 *  - a sans-I/O TLS engine (struct rl_tls): ciphertext in through cin,
 *    ciphertext out through cout, plaintext through rl_tls_read() and
 *    rl_tls_write().  No sockets, no libuv, no logging.
 *
 * Policy, set explicitly on every configuration (the mbedTLS 2.28 defaults
 * are unsafe for this job): TLS 1.2 only (the newest 2.28 speaks), ECDHE key
 * exchange with AES-GCM or ChaCha20-Poly1305 only (ChaCha20 first in the
 * server's preference: it is the faster one here), curves x25519, P-256,
 * P-384, renegotiation disabled, the full chain from the PEM file sent,
 * client side: certificate and host name verification required.  Session
 * resumption on both sides (see tls.c).
 */
#ifndef RELABEL_TLS_H
#define RELABEL_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "relabel/buf.h"
#include "relabel/sni.h"

struct rl_tls_certs;
struct rl_tls_conf;
struct rl_tls;

/* Results of rl_tls_handshake(): 0 done, RL_TLS_WANT more input needed,
 * negative: RL_E_TLS (see rl_tls_error()) or RL_E_TLS_TRUNCATED. */
#define RL_TLS_WANT 1

/* An empty set of certificates for one brand, with fresh session ticket
 * keys of its own.  NULL (reason in err) if the random generator fails. */
struct rl_tls_certs *rl_tls_certs_new(char *err, size_t errlen);
void rl_tls_certs_free(struct rl_tls_certs *c);

/*
 * Adds a PEM certificate file (leaf first, then the chain) and its PEM
 * private key (RSA of 2048 bits or more, or EC on P-256 or P-384).  Fails
 * if either cannot be read or parsed, if the key does not match the
 * certificate or cannot serve relabel's suites, or if the brand already
 * has a certificate with a key of the same type (mbedTLS would never
 * choose the second).  Returns 0 and sets *rsa (may be NULL) to whether
 * the key is RSA, or -1 with a one-line reason (no key material) in err.
 */
int rl_tls_certs_add(struct rl_tls_certs *c, const char *cert_path, const char *key_path, bool *rsa,
                     char *err, size_t errlen);

/* How many certificates the brand has (0..2). */
size_t rl_tls_certs_count(const struct rl_tls_certs *c);

/* For `relabel --check`: the i-th certificate's subject CN, DNS names,
 * expiry, days left, chain length and key type.  Returns the days left
 * (negative if expired). */
long rl_tls_certs_describe(const struct rl_tls_certs *c, size_t i, char *out, size_t cap);

/* The earliest notAfter of the brand's certificates (seconds since the
 * epoch; 0 with none). */
double rl_tls_certs_not_after(const struct rl_tls_certs *c);

/* Whether the i-th certificate names `name` (a DNS name or "*.x"): its DNS
 * subjectAltNames, or its CN when it has none; see rl_sni_covers(). */
bool rl_tls_certs_covers(const struct rl_tls_certs *c, size_t i, const char *name);

/*
 * A listener's server configuration: brands[names' index] for a client
 * naming it by SNI (sni.h), brands[dflt] for a client naming none, and
 * for an unknown name brands[dflt] or, with refuse_unknown, a failed
 * handshake (unrecognized_name alert).  Each brand's certificates are
 * chosen among by the client's suites and signature algorithms.  brands,
 * the certificates and names (may be NULL: no names) are not copied and
 * must outlive the conf.  NULL with a reason in err on failure.
 */
struct rl_tls_conf *rl_tls_conf_server_sni(struct rl_tls_certs *const *brands, size_t nbrands,
                                           const struct rl_sni_map *names, size_t dflt,
                                           bool refuse_unknown, char *err, size_t errlen);

/* A server configuration with one brand from one certificate and key, as
 * rl_tls_certs_add() checks them; the conf owns the certificates. */
struct rl_tls_conf *rl_tls_conf_server(const char *cert_path, const char *key_path, char *err,
                                       size_t errlen);

/* Client configuration verifying peers against ca_path (a PEM bundle or a
 * directory of PEM files; NULL = the system bundle
 * /etc/ssl/certs/ca-certificates.crt). */
struct rl_tls_conf *rl_tls_conf_client(const char *ca_path, char *err, size_t errlen);

void rl_tls_conf_free(struct rl_tls_conf *conf);

/* One line describing the default brand's first certificate (subject CN,
 * DNS names, expiry date, days left), or a client conf's CA count.
 * Returns the days left (negative if expired) and fills out. */
long rl_tls_conf_describe(const struct rl_tls_conf *conf, char *out, size_t cap);

/* The default brand's earliest notAfter in seconds since the epoch (0 for
 * a client configuration). */
double rl_tls_conf_not_after(const struct rl_tls_conf *conf);

/*
 * A new engine.  Server engines take `hostname` = NULL.  Client engines must
 * be given the name to send as SNI and to check the peer certificate
 * against (mbedtls_ssl_set_hostname); NULL is refused for a client.
 * Returns NULL on allocation failure.
 */
struct rl_tls *rl_tls_new(const struct rl_tls_conf *conf, const char *hostname);
void rl_tls_free(struct rl_tls *t);

/* Ciphertext input, h2o style: reserve space in cin, let the socket read
 * into it, commit what arrived (0 when the read brought nothing: an empty
 * cin then gives its storage back).  Reserve returns NULL when cin is
 * full; rl_tls_in_room() says whether it would, without allocating. */
char *rl_tls_in_reserve(struct rl_tls *t, size_t *len);
void rl_tls_in_commit(struct rl_tls *t, size_t n);
bool rl_tls_in_room(const struct rl_tls *t);
/* The peer's TCP stream ended: once cin is drained, reads report EOF. */
void rl_tls_in_eof(struct rl_tls *t);

/* Steps the handshake as far as cin allows.  Output goes to cout. */
int rl_tls_handshake(struct rl_tls *t);
bool rl_tls_handshake_done(const struct rl_tls *t);

/* True once a handshake has finished by resuming an earlier session (a
 * client engine offers the last session its conf saw verified; a server
 * engine accepts tickets it issued). */
bool rl_tls_resumed(const struct rl_tls *t);

/*
 * Decrypts into p[0..cap) until no complete record is left in cin or p is
 * full (then data stays buffered: call again after making room; see
 * rl_tls_pending()).  Returns 0 with *got bytes (maybe 0), RL_E_TLS_EOF
 * after the peer's close_notify, RL_E_TLS_TRUNCATED when TCP ended without
 * one, RL_E_TLS on any other failure.  Bytes decrypted before an EOF are
 * returned first, with 0; the EOF comes on the next call.
 */
int rl_tls_read(struct rl_tls *t, char *p, size_t cap, size_t *got);

/* True if decrypted bytes or unprocessed ciphertext are still buffered. */
bool rl_tls_pending(const struct rl_tls *t);

/* Encrypts all n bytes into cout (never "would block": cout grows; the
 * caller bounds it by not writing while it is above its high-water mark).
 * Returns 0 or RL_E_TLS / RL_E_NOMEM. */
int rl_tls_write(struct rl_tls *t, const void *p, size_t n);

/* Queues a close_notify alert in cout (after a finished handshake). */
int rl_tls_close_notify(struct rl_tls *t);

/* The ciphertext output buffer: the caller takes bytes from it (or swaps it
 * with another rl_buf of the same cap) and writes them to the socket. */
struct rl_buf *rl_tls_out(struct rl_tls *t);

/* After a handshake: "TLSv1.2", the suite name, the SNI the client sent
 * (server side, NULL if none). */
const char *rl_tls_version(const struct rl_tls *t);
const char *rl_tls_cipher(const struct rl_tls *t);
const char *rl_tls_sni(const struct rl_tls *t);

/* Server: the index (into the conf's brands) of the brand serving this
 * client: chosen by SNI during the handshake, else the default. */
size_t rl_tls_brand(const struct rl_tls *t);

/* The last mbedTLS error code, and a one-line text for it (for client
 * engines with a failed verification the text names the reason: expired,
 * name mismatch, unknown CA, ...). */
int rl_tls_error(const struct rl_tls *t);
const char *rl_tls_strerror(const struct rl_tls *t, char *buf, size_t len);

/* The kind of failure that ended the engine, one word for counting:
 * "verify" (the peer's certificate), "alert" (the peer sent a fatal
 * alert), "closed" (the peer closed during the handshake), "sni" (the
 * client's SNI was refused) or "protocol" (anything else). */
const char *rl_tls_failure_class(const struct rl_tls *t);

#endif
