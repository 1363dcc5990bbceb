/*
 * conn.h - one leg of a session: a libuv TCP handle, an idle timer, bounded
 * buffers and an optional TLS engine.
 *
 * The owner (a session) sees plaintext only: it reads from rl_conn_in(),
 * writes with rl_conn_write(), and is told what happened through one event
 * callback.  conn knows nothing about SMTP.
 *
 * Rules the owner relies on:
 *  - events are delivered from libuv callbacks; after the owner calls
 *    rl_conn_close()/rl_conn_abort() inside a callback, no further events
 *    but RL_CONN_CLOSED arrive;
 *  - RL_CONN_CLOSED is the last event; the conn frees itself right after
 *    the callback returns, so the owner must forget the pointer there;
 *  - RL_CONN_EOF comes only after a DATA event has offered every buffered
 *    byte (whatever is left in `in` then is an incomplete line).
 */
#ifndef RELABEL_CONN_H
#define RELABEL_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "relabel/buf.h"
#include "relabel/tls.h"

#define RL_CONN_EVENT_MAP(X)                                                                       \
    X(CONNECTED)                                                                                   \
    X(TLS_READY)                                                                                   \
    X(DATA)                                                                                        \
    X(DRAINED)                                                                                     \
    X(EOF)                                                                                         \
    X(ERROR)                                                                                       \
    X(TIMEOUT)                                                                                     \
    X(CLOSED)

enum rl_conn_event {
#define RL_CONN_EVENT_ENUM(name) RL_CONN_##name,
    RL_CONN_EVENT_MAP(RL_CONN_EVENT_ENUM)
#undef RL_CONN_EVENT_ENUM
};

struct rl_conn;

typedef void (*rl_conn_event_cb)(struct rl_conn *c, enum rl_conn_event ev, void *arg);

const char *rl_conn_event_str(enum rl_conn_event ev);

/* A new, unconnected conn; NULL on allocation failure. */
struct rl_conn *rl_conn_new(uv_loop_t *loop, rl_conn_event_cb cb, void *arg);

/* Accepts a pending connection from server and starts reading.  On failure
 * the conn must still be closed with rl_conn_abort(). */
int rl_conn_accept(struct rl_conn *c, uv_stream_t *server);

/* Starts connecting; RL_CONN_CONNECTED or RL_CONN_ERROR follows. */
int rl_conn_connect(struct rl_conn *c, const struct sockaddr *sa);

/* Starts TLS on the conn (server side if hostname is NULL).  Legal only
 * when `in` is empty: bytes read before the handshake are never carried
 * into TLS.  RL_CONN_TLS_READY follows, or RL_CONN_ERROR. */
int rl_conn_start_tls(struct rl_conn *c, const struct rl_tls_conf *conf, const char *hostname);

/*
 * Starts server-side TLS right after a PROXY protocol header on an
 * implicit-TLS listener, keeping the bytes already in `in`: a client
 * behind a load balancer sends its ClientHello without waiting, so it
 * often arrives in the same read as the header, and those bytes are
 * handed to the TLS engine as ciphertext.  Never use it after STARTTLS:
 * there, bytes read before the handshake were sent in plaintext and may
 * be an attacker's (rl_conn_start_tls() refuses them).  RL_CONN_TLS_READY
 * or RL_CONN_ERROR follows from the event loop, never from inside this
 * call.  Returns 0, RL_E_PROTO (TLS already on), RL_E_NOMEM or RL_E_FULL.
 */
int rl_conn_start_tls_after_proxy(struct rl_conn *c, const struct rl_tls_conf *conf);

/* Plaintext received and not yet consumed by the owner. */
struct rl_buf *rl_conn_in(struct rl_conn *c);

/* Queues plaintext for the peer (encrypted if TLS is on) and starts writing.
 * Returns 0, or RL_E_FULL / RL_E_NOMEM / RL_E_TLS (the owner closes).  A
 * failure is sticky: every later call fails too, so no byte is ever sent
 * after one that was lost. */
int rl_conn_write(struct rl_conn *c, const void *p, size_t n);

/* True when the write queue is above its high-water mark: stop feeding this
 * conn; RL_CONN_DRAINED follows when it falls below the low-water mark. */
bool rl_conn_write_blocked(struct rl_conn *c);

/* Stops / resumes reading from the peer (backpressure, or an owner that is
 * waiting for the other leg).  Resuming also processes bytes that were
 * already received, on the next loop iteration. */
void rl_conn_pause(struct rl_conn *c);
void rl_conn_resume(struct rl_conn *c);
bool rl_conn_paused(const struct rl_conn *c);

/* The owner consumed bytes from `in` outside a DATA event: reading restarts
 * if it had stopped for lack of room, and buffered records are decrypted on
 * the next loop iteration. */
void rl_conn_consumed(struct rl_conn *c);

/* Idle timeout: RL_CONN_TIMEOUT after ms without bytes from the peer.
 * 0 disables.  Re-armed on every read. */
void rl_conn_set_timeout(struct rl_conn *c, unsigned ms);
/* Deadline: RL_CONN_TIMEOUT ms from now, whatever the peer sends meanwhile
 * (a peer trickling bytes cannot push it back).  Replaced by the next
 * rl_conn_set_timeout() or rl_conn_set_deadline(). */
void rl_conn_set_deadline(struct rl_conn *c, unsigned ms);

/* Closes after writing what is queued (bounded by a short linger), with a
 * TLS close_notify if a handshake finished. */
void rl_conn_close(struct rl_conn *c);
/* Closes at once, discarding anything queued. */
void rl_conn_abort(struct rl_conn *c);

bool rl_conn_closing(const struct rl_conn *c);

/* The last error (UV_E* or RL_E_*), and text for it including TLS detail. */
int rl_conn_error(const struct rl_conn *c);
const char *rl_conn_strerror(const struct rl_conn *c, char *buf, size_t len);

/* Why the TLS handshake on this conn failed, one word for counting (see
 * rl_tls_failure_class()): the peer's closing or resetting the TCP
 * connection is "closed"; no error recorded yet (the owner gave up
 * waiting) is "timeout". */
const char *rl_conn_tls_failure(const struct rl_conn *c);

/* "ip:port" of the peer. */
const char *rl_conn_peer(const struct rl_conn *c);
/* The peer's address (family AF_UNSPEC if unknown). */
const struct sockaddr_storage *rl_conn_peer_addr(const struct rl_conn *c);

/* The TLS engine, or NULL while the conn is plaintext. */
struct rl_tls *rl_conn_tls(const struct rl_conn *c);

/* Bytes received from / sent to the peer on the wire. */
unsigned long long rl_conn_bytes_in(const struct rl_conn *c);
unsigned long long rl_conn_bytes_out(const struct rl_conn *c);

#endif
