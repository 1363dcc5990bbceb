/*
 * fake_env.h - the in-memory world session.c runs in for fuzz_session.
 *
 * fake_env.c implements conn.h, the tls.h accessors, snapshot.h and
 * upstream.h without sockets, TLS or threads.  Nothing in it ever calls
 * back into the session from inside an rl_conn_* call: every event is
 * delivered by the driver (fuzz_session.c) through fake_emit() and the
 * fake_pending_*() functions, the way libuv would from its loop.
 *
 * The driver's models of both peers live inside the fake conn so that
 * every byte the session writes is checked as it is written.
 */
#ifndef RELABEL_FAKE_ENV_H
#define RELABEL_FAKE_ENV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relabel/buf.h"
#include "relabel/conn.h"
#include "relabel/limits.h"
#include "relabel/upstream.h"

enum fake_role { FAKE_UNKNOWN, FAKE_CLIENT, FAKE_UPSTREAM };

#define UPM_FIFO 1024

/* What the modelled upstream server thinks it was asked, in order. */
enum upm_kind {
    K_GREETING,
    K_CMD,
    K_EHLO,
    K_DATA,
    K_STARTTLS,
    K_AUTH_IR,    /* AUTH with an initial response */
    K_AUTH_PLAIN, /* AUTH PLAIN, response follows */
    K_AUTH_LOGIN, /* AUTH LOGIN, user name follows */
    K_AUTH_CONT,  /* a SASL response line */
    K_AUTH_STAR,  /* "*": the exchange cancelled */
    K_QUIT,
    K_EOD
};

enum upm_mode { UPM_CMD, UPM_DATA, UPM_HOLD };

/* The upstream server as the session's peer: reads what the session
 * writes (commands, then message data after a 354 it was given), and
 * parses what the driver sends back as replies. */
struct up_model {
    struct rl_buf rx; /* every byte the session wrote to this upstream conn */
    size_t parse_pos;
    enum upm_mode mode;
    unsigned data_state;
    bool prev_cr;
    unsigned char fifo[UPM_FIFO];
    size_t fifo_head, fifo_len;
    bool auth_cont_next; /* the last reply was a 334 to an AUTH exchange */
    bool desync;         /* a reply was sent with nothing asked: pairing unknown */
    char last334;        /* 'U'sername, 'P'assword, 'E'mpty prompt */
    /* replies the driver sent, parsed as a server writes them */
    char line[RL_SMTP_REPLY_MAX + 64];
    size_t line_len;
    bool line_trunc;
    bool at_line_start; /* for sanitising raw bytes */
    int reply_code;     /* code of the first line of the reply in progress */
};

/* The client as the session's peer: parses every reply it receives. */
struct cl_model {
    char line[RL_SMTP_REPLY_MAX + 64];
    size_t line_len;
    bool line_trunc;
    bool prev_cr;
    int reply_code;
    size_t reply_lines;
    char first[128]; /* the first line of the reply in progress */
    bool first_trunc;
    bool tls_at_start; /* client leg encrypted when the reply began */
    bool ok_token;     /* a valid upstream token was found in the reply */
    bool awaiting_334; /* reply was a 334 and the client has not answered */
    char last334;
};

struct rl_conn {
    struct rl_conn *next;
    enum fake_role role;
    unsigned id;
    rl_conn_event_cb cb;
    void *arg;
    struct rl_buf in;
    struct rl_buf wire; /* sent by the peer, not yet read */
    bool connected;
    bool connect_pending;
    bool peer_eof;
    bool eof_sent;
    bool paused;
    bool closing;
    bool tls_pending;
    bool tls_on;
    bool tls_garbage; /* plaintext was on the wire when TLS started */
    bool kick_pending;
    bool blocked;
    bool hiwat_seen;
    bool drained_pending;
    bool fail_write;
    unsigned timeout_ms;
    int err;
    unsigned long long bytes_in, bytes_out;
    char peer[64];
    struct up_model up;
    struct cl_model cl;
};

enum fake_pending_kind {
    PEND_CLOSED,
    PEND_CONNECT,
    PEND_TLS,
    PEND_KICK,
    PEND_DRAINED,
    PEND_RESOLVE
};

struct fake_pending {
    enum fake_pending_kind kind;
    struct rl_conn *c; /* NULL for PEND_RESOLVE */
};

struct fake_env {
    struct rl_conn *conns;
    unsigned nconns_made;
    struct rl_upstream_req *resolve;
    int snap_refs_extra; /* references taken by sessions */
    bool sni_null;
    size_t brand; /* rl_tls_brand(): the brand the client's SNI chose */
    bool resolve_fail_start;
    bool connect_fail_next;
    int emit_depth;
    /* hooks into the driver's models */
    void (*on_write)(struct rl_conn *c, const char *p, size_t n);
    void (*on_free)(struct rl_conn *c);
    void (*on_enter)(void); /* around every call into the session */
    void (*on_leave)(void);
};

extern struct fake_env fake;

/* The fuzzer's own stderr (the session's log may be redirected). */
extern int fake_stderr_fd;

/* Prints to the real stderr and aborts: a finding. */
void fake_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

void fake_reset(void);

/* Delivers one event to the session.  CLOSED frees the conn afterwards. */
void fake_emit(struct rl_conn *c, enum rl_conn_event ev);

/* Bytes from the peer: appended to the wire, read at once if the conn is
 * reading (one TCP segment), else later. */
void fake_peer_send(struct rl_conn *c, const void *p, size_t n);
/* The peer closed its side. */
void fake_peer_eof(struct rl_conn *c);
/* What libuv's read callback / the conn's pump would do now. */
void fake_pump(struct rl_conn *c);
bool fake_readable(const struct rl_conn *c);

/* Events waiting to be delivered; returns how many (at most cap). */
size_t fake_pending_list(struct fake_pending *out, size_t cap);
/* Delivers one; `outcome` picks success or failure where there is a choice. */
void fake_pending_deliver(const struct fake_pending *p, unsigned outcome);

/* Calls an rl_session_* entry point inside the logging window. */
void fake_enter(void);
void fake_leave(void);

#endif
