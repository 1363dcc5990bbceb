/*
 * session.c - the per-connection state machine joining the client leg and
 * the upstream leg.
 *
 * The client leg speaks to an SMTP client with the brand's name; the
 * upstream leg is a verified TLS connection to the provider.  relabel
 * answers locally only what must not reach the provider (the greeting, the
 * pre-TLS dialogue, STARTTLS, QUIT's 221) and relays everything else, so
 * every reply that matters (MAIL, RCPT, DATA, AUTH, the end of data) is the
 * upstream's own.  Nothing is queued: a message is acknowledged only if the
 * upstream acknowledged it.
 *
 * Client leg:    [PROXY] -> TLS_ACCEPT -> COMMAND <-> DATA, COMMAND ->
 *                STARTTLS -> TLS_ACCEPT, COMMAND -> AUTH (one continuation
 *                line) -> COMMAND, COMMAND -> DISCARD (over-long line) ->
 *                COMMAND
 *
 * Behind a load balancer (proxy_protocol) the client leg starts in PROXY:
 * the connection must come from proxy_trusted and begin with a PROXY
 * header, whose source address is the client's from then on.  Access
 * lists, the connection rate and the connection limits are checked on
 * that address (or the socket's, without a header) before any TLS work.
 * Upstream leg:  RESOLVE -> CONNECT -> [TLS] -> GREETING -> [EHLO ->
 *                STARTTLS -> TLS] -> READY; FAILED; ABORTED
 *                READY -> (535 to AUTH) -> RESOLVE -> ... -> REHELLO -> READY
 *
 * Establishing the upstream leg tries every address of the name (families
 * interleaved, addresses recently broken skipped unless all are), each
 * with its own connect timeout, on the upstream's port and then on each
 * fallback port in turn.  A failure before READY moves on to the next
 * address, and after the last address to the next port, except a
 * certificate that did not verify or a protocol violation (bytes after
 * STARTTLS's 220, unsolicited data, a malformed reply): those end the leg
 * at once, so nothing ever works around a failed verification.  Every
 * port uses the same verify_name and CA, and TLS in any case.
 *
 * A 535 to AUTH (Mailgun closes the connection after one) replaces the
 * upstream leg: the 535 is relayed, the old leg gets QUIT and is closed,
 * and a new one is established at once.  Once it is ready relabel replays
 * the client's last EHLO (or HELO) line on it (REHELLO) and swallows the
 * reply, so the upstream sees the same dialogue as on the first leg and
 * the client can send AUTH again on the same connection.  AUTH is never
 * pipelined (parsing stops after it), so no other command is pending then.
 *
 * Brands: the listener's default brand names the greeting and the pre-TLS
 * dialogue; once the client's TLS is up, the brand its SNI chose (tls.c)
 * names every reply and decides the upstream, which is started only then
 * (or, with require_tls = no, at a plaintext client's first command, for
 * the default brand; a STARTTLS naming a brand with another upstream moves
 * the session to that one).
 *
 * Pipelining (RFC 2920): relayed commands enter a FIFO; each complete
 * upstream reply pops one entry and is answered to the client in order.
 * Local answers given while relayed commands are pending are queued in the
 * same FIFO so the order holds.  Parsing stops after a command whose reply
 * changes how the following bytes are read (EHLO/HELO, DATA, AUTH and its
 * continuations, QUIT, STARTTLS) until that reply has been relayed.
 *
 * The session never calls uv_* or mbedtls_* itself (only through conn and
 * upstream) and never frees itself inside a callback: it is freed when the
 * last of its conns reports RL_CONN_CLOSED.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relabel/auth.h"
#include "relabel/cidr.h"
#include "relabel/conn.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/log.h"
#include "relabel/proxy.h"
#include "relabel/ratelimit.h"
#include "relabel/metrics.h"
#include "relabel/session.h"
#include "relabel/smtp.h"
#include "relabel/snapshot.h"
#include "relabel/tls.h"
#include "relabel/upstream.h"
#include "relabel/users.h"

#define CL_STATE_MAP(X)                                                                            \
    X(PROXY)                                                                                       \
    X(TLS_ACCEPT)                                                                                  \
    X(COMMAND)                                                                                     \
    X(AUTH)                                                                                        \
    X(DATA)                                                                                        \
    X(DISCARD)                                                                                     \
    X(STARTTLS)                                                                                    \
    X(DONE)

#define UP_STATE_MAP(X)                                                                            \
    X(IDLE)                                                                                        \
    X(RESOLVE)                                                                                     \
    X(CONNECT)                                                                                     \
    X(TLS)                                                                                         \
    X(GREETING)                                                                                    \
    X(EHLO)                                                                                        \
    X(STARTTLS)                                                                                    \
    X(TLS2)                                                                                        \
    X(REHELLO)                                                                                     \
    X(READY)                                                                                       \
    X(FAILED)                                                                                      \
    X(ABORTED)

enum cl_state {
#define SESSION_ENUM_CL(name) CL_##name,
    CL_STATE_MAP(SESSION_ENUM_CL)
#undef SESSION_ENUM_CL
};

enum up_state {
#define SESSION_ENUM_UP(name) UP_##name,
    UP_STATE_MAP(SESSION_ENUM_UP)
#undef SESSION_ENUM_UP
};

static const char *const cl_state_names[] = {
#define SESSION_STR(name) #name,
    CL_STATE_MAP(SESSION_STR)};
static const char *const up_state_names[] = {UP_STATE_MAP(SESSION_STR)
#undef SESSION_STR
};

/* What a FIFO entry is waiting for.  Relayed commands use their verb;
 * P_EOD is the end of a message; P_LOCAL entries carry relabel's own reply. */
enum pending_kind { P_CMD, P_EOD, P_AUTH_CONT, P_LOCAL, P_AUTH_UP };

/* AUTH answered locally for a brand's own users: the response awaited,
 * the password check on the threadpool, then relabel's own AUTH with the
 * provider's credential, whose reply decides. */
enum lauth_state { LA_NONE, LA_PLAIN, LA_LOGIN_USER, LA_LOGIN_PASS, LA_VERIFY, LA_UPSTREAM };

struct pending {
    enum pending_kind kind;
    enum rl_smtp_verb verb;
    const char *local;     /* P_LOCAL: the reply, with CRLF, "%s" = hostname */
    const char *close_why; /* P_LOCAL: close once it is sent, for this reason */
};

static const char REPLY_SHUTDOWN[] = "421 4.3.2 %s Service shutting down\r\n";

/* Refusals at connect, before any TLS work (STARTTLS listeners only; an
 * implicit TLS listener just closes). */
static const char REPLY_DENIED[] = "554 5.7.1 %s Access denied\r\n";
static const char REPLY_TOO_MANY[] = "421 4.7.0 %s Too many connections, try again later\r\n";

/* The 421s a client gets when the upstream leg fails (RFC 5321 §3.8). */
static const char REPLY_UP_UNAVAILABLE[] =
    "421 4.4.1 %s Mail service temporarily unavailable, closing connection\r\n";
static const char REPLY_UP_LOST[] =
    "421 4.4.2 %s Connection to the mail service lost, closing connection\r\n";
static const char REPLY_UP_TLS[] =
    "421 4.7.0 %s Mail service could not be verified, closing connection\r\n";
static const char REPLY_UP_BUSY[] = "421 4.3.2 %s Too busy, try again later\r\n";

/* Small writes are gathered into one buffer per leg and written once per
 * event, so pipelined replies leave as one TLS record, not one each. */
#define BATCH_MAX 16384

struct batch {
    struct rl_conn *c;
    struct rl_buf b;
    int err; /* first write failure, acted on by session_flush() */
};

struct rl_session {
    struct rl_ctx *ctx;
    struct rl_snapshot *snap;
    const struct rl_listener_conf *lc;
    const struct rl_brand_conf *brand;
    const struct rl_upstream_conf *uc;
    struct rl_session *next, *prev;
    char id[17];

    struct rl_conn *cl;
    struct rl_conn *up;
    int nconns; /* conns not yet CLOSED, including failed attempts */
    /* The client: the PROXY header's source behind a load balancer, else
     * the socket's peer; AF_UNSPEC until known.  Limits, access lists and
     * log lines use this, never the conn's own peer. */
    struct sockaddr_storage cl_addr;
    struct rl_cidr_addr cl_ip;
    char cl_peer[RL_CIDR_PEER_MAX];
    /* PROXY protocol: the version of the header (0: none), whether it was
     * LOCAL/UNKNOWN (the balancer's own connection), the balancer's
     * address and the v2 AUTHORITY TLV (the name the client asked for). */
    unsigned proxy_version;
    bool proxy_local;
    char proxy_via[RL_CIDR_PEER_MAX];
    char proxy_authority[sizeof(((struct rl_proxy_hdr *)0)->authority)];
    struct batch cl_out;
    struct batch up_out;

    enum cl_state cl_state;
    enum up_state up_state;
    bool closing;
    bool cl_tls;          /* the client leg is encrypted */
    bool relay;           /* commands go upstream (TLS done, or require_tls = no) */
    bool up_started;      /* the upstream leg has been started */
    bool data_abort;      /* the message being received is refused */
    bool close_after;     /* close once the client output is flushed */
    bool auth_plain_cont; /* last relayed AUTH was PLAIN without initial response */
    bool auth_login_user; /* next AUTH LOGIN continuation is the user name */
    bool auth_plain_user; /* next AUTH PLAIN continuation holds the user name */
    bool discard_quiet;   /* CL_DISCARD of an AUTH response: "*" already answers it */
    bool relayed_state;   /* AUTH or MAIL went upstream (login or transaction there) */
    bool quit_sent;       /* QUIT went upstream: no courtesy QUIT on close */
    bool in_tx;           /* a transaction is open: MAIL relayed, not yet ended */
    bool draining;        /* shutting down: close once the transaction ends */
    bool up_counted;      /* holds one of max_upstream_connections */
    bool ip_counted;      /* counts for max_connections_per_ip (shared lock) */
    bool cl_deadline;     /* the client's timer is a deadline, not an idle timeout */
    bool up_resumed;      /* the upstream's TLS session was resumed */

    /* Local AUTH (the brand has users). */
    enum lauth_state lauth;
    bool auth_up_cancelled;            /* the upstream asked for more: answered "*" */
    struct rl_auth_req *auth_req;      /* the password check running */
    const struct rl_user *auth_user;   /* logged in as (points into the snapshot) */
    const struct rl_user *auth_trying; /* the user being checked, NULL if unknown */
    char auth_name[RL_USER_NAME_MAX + 1];
    size_t auth_name_len;

    struct rl_upstream_req *resolve;
    struct rl_upstream_addrs addrs;    /* with the port being tried */
    size_t try[RL_UPSTREAM_ADDRS_MAX]; /* indices into addrs, in order, for this port */
    size_t ntry, next_try;
    size_t cur_addr;          /* index into addrs of the attempt in progress */
    size_t port_idx;          /* 0: the upstream's port, else fallback[port_idx - 1] */
    uint16_t up_port;         /* the port being tried */
    enum rl_tls_mode up_mode; /* and its TLS mode */
    bool up_replay;           /* new leg after a 535: replay the client's EHLO first */
    char ehlo_line[512];      /* the client's last EHLO/HELO line, without CRLF */
    size_t ehlo_len;

    struct pending fifo[RL_PIPELINE_MAX];
    size_t fifo_head, fifo_len;

    struct rl_smtp_data data;
    struct rl_smtp_msgid msgid;

    unsigned errors;
    unsigned junk; /* NOOP, RSET, VRFY, EXPN, HELP since the last message */
    unsigned messages;
    unsigned rcpts;
    char mail_from[200];
    const char *fail_reply; /* the 421 the client gets once the upstream failed */
    char reason[240];
    char up_peer[64];   /* the upstream address last connected */
    char up_tls[16];    /* its TLS version and suite, kept for the session */
    char up_cipher[64]; /* line after the connection is gone */
    unsigned cl_timeout_ms;
    uint64_t started_ms;

    /* Deadlines (limits.h): when the client's handshake or message began,
     * when the incomplete command line in `in` was first seen, and time the
     * client spent paused because the upstream did not keep up. */
    uint64_t step_ms;
    unsigned long long step_bytes; /* client bytes received before step_ms */
    uint64_t line_ms;
    uint64_t paused_at;
    uint64_t paused_ms;
};

static void session_on_event(struct rl_conn *c, enum rl_conn_event ev, void *arg);
static void session_client_process(struct rl_session *s);
static void session_client_proxy(struct rl_session *s);
static void session_close(struct rl_session *s, const char *why);
static void session_up_next_addr(struct rl_session *s);
static void session_drain_check(struct rl_session *s);
static void session_lauth_upstream_reply(struct rl_session *s, const struct rl_smtp_reply *r,
                                         const char *p);

/* ---- small helpers -------------------------------------------------- */

static uint64_t
session_now_ms(struct rl_session *s)
{
    return uv_now(s->ctx->loop);
}

static void
session_enter_cl(struct rl_session *s, enum cl_state st)
{
    rl_log(RL_LOG_DEBUG, "%s client state %s -> %s", s->id, cl_state_names[s->cl_state],
           cl_state_names[st]);
    s->cl_state = st;
    if (st == CL_PROXY || st == CL_TLS_ACCEPT || st == CL_DATA) {
        s->step_ms = session_now_ms(s);
        s->step_bytes = s->cl != NULL ? rl_conn_bytes_in(s->cl) : 0;
        s->paused_ms = 0;
    }
}

static void
session_enter_up(struct rl_session *s, enum up_state st)
{
    rl_log(RL_LOG_DEBUG, "%s upstream state %s -> %s", s->id, up_state_names[s->up_state],
           up_state_names[st]);
    s->up_state = st;
}

static const char *
session_host(const struct rl_session *s)
{
    return s->brand->hostname;
}

static void
batch_flush(struct batch *bt)
{
    if (bt->c != NULL && bt->err == 0 && rl_buf_len(&bt->b) > 0 && !rl_conn_closing(bt->c)) {
        int rc = rl_conn_write(bt->c, rl_buf_data(&bt->b), rl_buf_len(&bt->b));

        if (rc < 0 && bt->err == 0)
            bt->err = rc;
    }
    rl_buf_reset(&bt->b, 0); /* written: an idle session keeps no batch storage */
}

/* Queues bytes for a leg: small pieces are gathered, large ones written
 * directly (after what was gathered, to keep the order). */
static int
batch_send(struct batch *bt, const char *p, size_t n)
{
    int rc;

    /* After a failed write nothing more goes to that leg: bytes written
     * after a lost piece would reach the peer in a different order than
     * relabel meant (a lost "\r\n." turns a body line into an end of
     * data). */
    if (bt->err != 0)
        return bt->err;
    if (bt->c == NULL || rl_conn_closing(bt->c))
        return RL_E_PROTO;
    /* What was gathered goes first, also before a large piece that is
     * written directly: letting a body run overtake the "\r\n" or "."
     * gathered before it would rewrite the message (a bare LF plus 8 KiB
     * of body turned into an early end of data: SMTP smuggling). */
    if (n > rl_buf_room(&bt->b) || n >= BATCH_MAX / 2) {
        batch_flush(bt);
        if (bt->err != 0)
            return bt->err;
    }
    if (n >= BATCH_MAX / 2)
        rc = rl_conn_write(bt->c, p, n);
    else
        rc = rl_buf_append(&bt->b, p, n);
    if (rc < 0 && bt->err == 0)
        bt->err = rc;
    return rc;
}

static void session_up_fail(struct rl_session *s, const char *reply, const char *what);

/* Writes what was gathered for both legs.  A failed write ends the leg:
 * silently dropping a reply would pair every later one with the wrong
 * command. */
static void
session_flush(struct rl_session *s)
{
    char why[120];

    batch_flush(&s->up_out);
    batch_flush(&s->cl_out);
    if (s->up_out.err != 0 && s->up != NULL && !s->closing) {
        snprintf(why, sizeof(why), "write failed: %s", rl_strerror(s->up_out.err));
        s->up_out.err = 0;
        session_up_fail(s, REPLY_UP_LOST, why);
    }
    if (s->cl_out.err != 0 && !s->closing) {
        snprintf(why, sizeof(why), "client write failed: %s", rl_strerror(s->cl_out.err));
        session_close(s, why);
    }
}

/* Sends relabel's own reply to the client.  Every "%s" in text stands for
 * the brand's hostname; nothing else is interpreted (the banner comes from
 * the config and may hold any character). */
static void
session_reply(struct rl_session *s, const char *text)
{
    const char *host = session_host(s);
    size_t hlen = strlen(host), n = 0;
    char line[1024];

    for (const char *p = text; *p != '\0' && n < sizeof(line) - 2; p++) {
        if (p[0] == '%' && p[1] == 's' && n + hlen < sizeof(line) - 2) {
            memcpy(line + n, host, hlen);
            n += hlen;
            p++;
        } else {
            line[n++] = *p;
        }
    }
    if (line[0] >= '5')
        s->errors++;
    batch_send(&s->cl_out, line, n);
}

/* Answers and then closes once the answer is written. */
static void
session_reply_close(struct rl_session *s, const char *fmt, const char *why)
{
    session_reply(s, fmt);
    session_close(s, why);
}

static bool
fifo_full(const struct rl_session *s)
{
    return s->fifo_len == RL_PIPELINE_MAX;
}

static struct pending *
fifo_head(struct rl_session *s)
{
    return s->fifo_len ? &s->fifo[s->fifo_head] : NULL;
}

static struct pending *
fifo_tail(struct rl_session *s)
{
    return s->fifo_len ? &s->fifo[(s->fifo_head + s->fifo_len - 1) % RL_PIPELINE_MAX] : NULL;
}

static void
fifo_push(struct rl_session *s, struct pending p)
{
    s->fifo[(s->fifo_head + s->fifo_len) % RL_PIPELINE_MAX] = p;
    s->fifo_len++;
}

static void
fifo_pop(struct rl_session *s)
{
    s->fifo_head = (s->fifo_head + 1) % RL_PIPELINE_MAX;
    s->fifo_len--;
}

/* Sends the local replies now at the head of the FIFO. */
static void
session_fifo_locals(struct rl_session *s)
{
    struct pending *p;

    while (!s->closing && (p = fifo_head(s)) != NULL && p->kind == P_LOCAL) {
        const char *text = p->local;
        const char *close_why = p->close_why;

        fifo_pop(s);
        if (close_why != NULL)
            session_reply_close(s, text, close_why);
        else
            session_reply(s, text);
    }
}

/* A local answer in relay mode: in order behind the pending replies. */
static void
session_local(struct rl_session *s, const char *fmt, const char *close_why)
{
    if (s->fifo_len == 0) {
        if (close_why != NULL)
            session_reply_close(s, fmt, close_why);
        else
            session_reply(s, fmt);
        return;
    }
    fifo_push(s, (struct pending){.kind = P_LOCAL, .local = fmt, .close_why = close_why});
}

/* Commands whose reply decides how the bytes after them are read. */
static bool
session_blocked(struct rl_session *s)
{
    struct pending *t = fifo_tail(s);

    if (s->lauth == LA_VERIFY || s->lauth == LA_UPSTREAM)
        return true;
    if (t == NULL)
        return false;
    if (t->kind == P_AUTH_CONT || t->kind == P_AUTH_UP)
        return true;
    if (t->kind != P_CMD)
        return false;
    switch (t->verb) {
    case RL_SMTP_EHLO:
    case RL_SMTP_HELO:
    case RL_SMTP_DATA:
    case RL_SMTP_AUTH:
    case RL_SMTP_QUIT:
    case RL_SMTP_STARTTLS:
        return true;
    default:
        return false;
    }
}

/*
 * The client's deadline for its current step (limits.h), 0 if none: a TLS
 * handshake, a command line that has begun, or a message, which must
 * average min_data_rate once data_timeout has passed.  Time the session
 * itself holds the client back (the upstream is slow) does not count.
 */
static uint64_t
session_deadline(const struct rl_session *s)
{
    const struct rl_config *cfg = s->snap->cfg;

    switch (s->cl_state) {
    case CL_PROXY:
    case CL_TLS_ACCEPT:
        return s->step_ms + cfg->handshake_timeout_ms;
    case CL_DATA:
        if (cfg->min_data_rate == 0 || s->paused_at != 0 || s->cl == NULL)
            return 0;
        return s->step_ms + s->paused_ms + cfg->data_timeout_ms +
               (rl_conn_bytes_in(s->cl) - s->step_bytes) * 1000 / cfg->min_data_rate;
    case CL_COMMAND:
    case CL_AUTH:
    case CL_DISCARD:
        return s->line_ms != 0 ? s->line_ms + cfg->command_deadline_ms : 0;
    default:
        return 0;
    }
}

/*
 * Arms the timers for what each leg is waiting for.  A client waiting for
 * replies is not idle: while relayed commands are unanswered only the
 * upstream's timer runs (RFC 5321 §4.5.3.2: a client waits up to 10
 * minutes for the reply to the end of data), so a slow final reply is
 * never cut short by the client's command timeout.  With `force` the
 * client's idle timer restarts (a new state); otherwise it changes only
 * when its duration does, so events from the upstream do not extend a
 * silent client's time.  When the client's deadline comes before its idle
 * timeout, the deadline is armed instead, with the time left, so bytes
 * trickling in never push it back.
 */
static void
session_set_timeouts(struct rl_session *s, bool force)
{
    const struct rl_config *cfg = s->snap->cfg;
    bool waiting = s->fifo_len > 0 && s->cl_state == CL_COMMAND;
    unsigned ms;

    switch (s->cl_state) {
    case CL_PROXY:
    case CL_TLS_ACCEPT:
        ms = cfg->handshake_timeout_ms;
        break;
    case CL_DATA:
        ms = cfg->data_timeout_ms;
        break;
    default:
        ms = waiting ? 0 : cfg->command_timeout_ms;
        break;
    }
    if (s->cl != NULL) {
        uint64_t deadline = session_deadline(s), now = session_now_ms(s);
        unsigned left = deadline == 0 ? 0 : deadline > now ? (unsigned)(deadline - now) : 1;

        if (left != 0 && (ms == 0 || left <= ms)) {
            s->cl_deadline = true;
            s->cl_timeout_ms = left;
            rl_conn_set_deadline(s->cl, left);
        } else if (force || s->cl_deadline || ms != s->cl_timeout_ms) {
            s->cl_deadline = false;
            s->cl_timeout_ms = ms;
            rl_conn_set_timeout(s->cl, ms);
        }
    }
    if (s->up != NULL && s->up_state == UP_READY)
        rl_conn_set_timeout(s->up, s->fifo_len ? cfg->upstream_timeout_ms : 0);
}

/* ---- closing -------------------------------------------------------- */

/* " proxy=v2 via=ADDR proxy_authority=\"NAME\"" for the session end line;
 * " via=ADDR" on a PROXY listener that got no valid header, "" elsewhere.
 * A LOCAL (v2) or UNKNOWN (v1) header is logged as proxy=v2-local /
 * proxy=v1-unknown: the client is the balancer itself. */
static const char *
session_proxy_fields(const struct rl_session *s, char *out, size_t cap)
{
    char auth[sizeof(s->proxy_authority) * 4];
    int n;

    out[0] = '\0';
    if (s->proxy_version == 0) {
        if (s->proxy_via[0] != '\0')
            snprintf(out, cap, " via=%s", s->proxy_via);
        return out;
    }
    n = snprintf(out, cap, " proxy=v%c%s via=%s", s->proxy_version == RL_PROXY_V1 ? '1' : '2',
                 !s->proxy_local                   ? ""
                 : s->proxy_version == RL_PROXY_V1 ? "-unknown"
                                                   : "-local",
                 s->proxy_via);
    if (s->proxy_authority[0] != '\0' && n > 0 && (size_t)n < cap)
        snprintf(out + n, cap - (size_t)n, " proxy_authority=\"%s\"",
                 rl_log_escape(s->proxy_authority, strlen(s->proxy_authority), auth, sizeof(auth)));
    return out;
}

static void
session_log_end(struct rl_session *s)
{
    struct rl_tls *ct = s->cl ? rl_conn_tls(s->cl) : NULL;
    char sni[300] = "-", proxy[1200];

    if (ct != NULL && rl_tls_sni(ct) != NULL) {
        const char *v = rl_tls_sni(ct);

        rl_log_escape(v, strlen(v), sni, sizeof(sni));
    }
    rl_log(RL_LOG_INFO,
           "%s session end client=%s%s listener=%s worker=%u brand=%s sni=%s tls=%s cipher=%s "
           "resumed=%s upstream=%s up_tls=%s up_cipher=%s up_resumed=%s messages=%u in=%llu "
           "out=%llu duration=%.3fs reason=\"%s\"",
           s->id, s->cl_peer, session_proxy_fields(s, proxy, sizeof(proxy)), s->lc->name,
           s->ctx->index, s->brand->name, sni, ct ? rl_tls_version(ct) : "none",
           ct ? rl_tls_cipher(ct) : "none", ct && rl_tls_resumed(ct) ? "yes" : "no",
           s->up_peer[0] ? s->up_peer : "-", s->up_tls[0] ? s->up_tls : "none",
           s->up_cipher[0] ? s->up_cipher : "none", s->up_resumed ? "yes" : "no", s->messages,
           s->cl ? rl_conn_bytes_in(s->cl) : 0ULL, s->cl ? rl_conn_bytes_out(s->cl) : 0ULL,
           (double)(session_now_ms(s) - s->started_ms) / 1000.0, s->reason);
}

/*
 * Ends the session: what is queued for the client is still written (the
 * conn lingers briefly), the upstream is closed without an end of data if a
 * message was in progress.  Memory goes in the last RL_CONN_CLOSED.
 */
static void
session_close(struct rl_session *s, const char *why)
{
    if (s->closing)
        return;
    bool mid_message = s->cl_state == CL_DATA || s->data_abort;

    s->closing = true;
    if (mid_message)
        rl_metrics_message(s->ctx->metrics, 0);
    snprintf(s->reason, sizeof(s->reason), "%s", why);
    /* Over for its client: another session from the same address may
     * start now, on any worker, while this one's sockets wind down. */
    pthread_mutex_lock(&s->ctx->shared->lock);
    s->ip_counted = false;
    pthread_mutex_unlock(&s->ctx->shared->lock);
    if (s->up != NULL && s->up_state == UP_READY && !mid_message && s->fifo_len == 0 &&
        !s->quit_sent)
        batch_send(&s->up_out, "QUIT\r\n", 6); /* courtesy; its reply is not awaited */
    session_flush(s);
    session_log_end(s);
    session_enter_cl(s, CL_DONE);
    if (s->resolve != NULL) {
        rl_upstream_cancel(s->resolve);
        s->resolve = NULL;
    }
    if (s->auth_req != NULL) {
        rl_auth_cancel(s->auth_req);
        s->auth_req = NULL;
    }
    if (s->up != NULL) {
        /* Mid-message the upstream must never see an end of data: drop the
         * connection, so it discards what it has. */
        if (mid_message || s->up_state != UP_READY)
            rl_conn_abort(s->up);
        else
            rl_conn_close(s->up);
    }
    if (s->cl != NULL)
        rl_conn_close(s->cl);
}

/* The session's upstream leg no longer counts against
 * max_upstream_connections: it failed, or the session is gone. */
static void
session_up_release(struct rl_session *s)
{
    struct rl_shared *sh = s->ctx->shared;

    if (s->up_counted) {
        pthread_mutex_lock(&sh->lock);
        s->up_counted = false;
        sh->nupstreams--;
        pthread_mutex_unlock(&sh->lock);
    }
}

static void
session_free(struct rl_session *s)
{
    struct rl_ctx *ctx = s->ctx;
    struct rl_shared *sh = ctx->shared;

    session_up_release(s);
    pthread_mutex_lock(&sh->lock);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        ctx->sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    ctx->nsessions--;
    sh->nsessions--;
    pthread_mutex_unlock(&sh->lock);
    rl_metrics_session_end(ctx->metrics, s->lc->name,
                           (double)(session_now_ms(s) - s->started_ms) / 1e3);
    rl_buf_free(&s->cl_out.b);
    rl_buf_free(&s->up_out.b);
    rl_snapshot_unref(s->snap);
    free(s);
}

/* ---- upstream failures ---------------------------------------------- */

/* Counts a failure to reach or verify the upstream, by the state it
 * happened in.  Later failures (a lost connection) are not counted here. */
static void
session_count_up_fail(struct rl_session *s)
{
    struct rl_metrics *m = s->ctx->metrics;

    if (s->up_state == UP_RESOLVE || s->up_state == UP_CONNECT)
        rl_metrics_upstream_connect_failure(m, s->uc->name);
    else if ((s->up_state == UP_TLS || s->up_state == UP_TLS2) && s->up != NULL)
        rl_metrics_upstream_tls_failure(m, s->uc->name, rl_conn_tls_failure(s->up));
}

/*
 * The upstream leg is gone or never came up.  The client learns it with a
 * 421 at once if it is waiting for an answer (or in the middle of a
 * message), otherwise at its next command.  Never a 2xx, never a fallback.
 */
static void
session_up_fail(struct rl_session *s, const char *reply, const char *what)
{
    char why[200];

    if (s->closing || s->up_state == UP_FAILED)
        return;
    snprintf(why, sizeof(why), "upstream: %s", what);
    rl_log(RL_LOG_WARN, "%s upstream failed state=%s host=%s reason=\"%s\"", s->id,
           up_state_names[s->up_state], s->uc->host, what);
    session_count_up_fail(s);
    session_enter_up(s, UP_FAILED);
    s->fail_reply = reply;
    session_up_release(s);
    if (s->up != NULL) {
        rl_conn_abort(s->up);
        s->up = NULL;
        s->up_out.c = NULL;
    }
    if (s->fifo_len > 0 || s->cl_state == CL_DATA || s->lauth == LA_VERIFY ||
        rl_buf_len(rl_conn_in(s->cl)) > 0)
        session_reply_close(s, reply, why);
    else
        snprintf(s->reason, sizeof(s->reason), "%s", why);
}

/* ---- upstream establishment ----------------------------------------- */

/* Starts on port i (0: the upstream's own, else fallback[i - 1]): its
 * addresses in order, those recently broken left out unless all are. */
static void
session_up_port(struct rl_session *s, size_t i)
{
    const struct rl_upstream_conf *uc = s->uc;
    unsigned skipped = 0;
    char peer[RL_CIDR_PEER_MAX];

    s->port_idx = i;
    s->up_port = i == 0 ? uc->port : uc->fallback[i - 1].port;
    s->up_mode = i == 0 ? uc->tls : uc->fallback[i - 1].tls;
    rl_upstream_set_port(&s->addrs, s->up_port);
    s->ntry = s->next_try = 0;
    for (size_t k = 0; k < s->addrs.n; k++) {
        if (!rl_upstream_is_broken(&s->addrs.a[k])) {
            s->try[s->ntry++] = k;
            continue;
        }
        skipped++;
        rl_cidr_peer_text((const struct sockaddr *)&s->addrs.a[k], peer, sizeof(peer));
        rl_log(RL_LOG_DEBUG, "%s upstream skipping broken address peer=%s", s->id, peer);
    }
    if (s->ntry == 0) {
        /* Every address failed lately: try them all anyway. */
        rl_log(RL_LOG_DEBUG, "%s upstream every address of port %u is marked broken, trying all",
               s->id, s->up_port);
        for (size_t k = 0; k < s->addrs.n; k++)
            s->try[s->ntry++] = k;
        skipped = 0;
    }
    rl_metrics_upstream_skipped(s->ctx->metrics, uc->name, skipped);
}

static bool
session_up_has_next(const struct rl_session *s)
{
    return s->next_try < s->ntry || s->port_idx < s->uc->nfallback;
}

static void
session_on_resolved(void *arg, int status, const struct rl_upstream_addrs *addrs)
{
    struct rl_session *s = arg;
    char why[160];

    s->resolve = NULL;
    if (status < 0) {
        snprintf(why, sizeof(why), "cannot resolve %s: %s", s->uc->host, uv_strerror(status));
        session_up_fail(s, REPLY_UP_UNAVAILABLE, why);
        return;
    }
    rl_log(RL_LOG_DEBUG, "%s upstream resolved%s host=%s addresses=%zu", s->id,
           addrs->cached ? " (cached)" : "", s->uc->host, addrs->n);
    s->addrs = *addrs;
    session_up_port(s, 0);
    session_up_next_addr(s);
    session_flush(s);
}

/* Connects to the next address, or the first of the next fallback port;
 * when none is left the upstream failed. */
static void
session_up_next_addr(struct rl_session *s)
{
    struct rl_conn *c;
    int rc;

    if (s->up != NULL) {
        rl_conn_abort(s->up);
        s->up = NULL;
        s->up_out.c = NULL;
        s->up_out.err = 0;
    }
    if (s->next_try >= s->ntry) {
        if (s->port_idx >= s->uc->nfallback) {
            session_up_fail(s, REPLY_UP_UNAVAILABLE, s->reason[0] ? s->reason : "no address left");
            return;
        }
        session_up_port(s, s->port_idx + 1);
        rl_log(RL_LOG_INFO, "%s upstream fallback upstream=%s port=%u tls=%s after=\"%s\"", s->id,
               s->uc->name, s->up_port, s->up_mode == RL_TLS_IMPLICIT ? "implicit" : "starttls",
               s->reason);
        rl_metrics_upstream_fallback(s->ctx->metrics, s->uc->name);
    }
    c = rl_conn_new(s->ctx->loop, session_on_event, s);
    if (c == NULL) {
        session_up_fail(s, REPLY_UP_UNAVAILABLE, "out of memory");
        return;
    }
    s->nconns++;
    s->up = c;
    s->up_out.c = c;
    session_enter_up(s, UP_CONNECT);
    rl_conn_set_timeout(c, s->snap->cfg->upstream_connect_timeout_ms);
    s->cur_addr = s->try[s->next_try++];
    rc = rl_conn_connect(c, (const struct sockaddr *)&s->addrs.a[s->cur_addr]);
    if (rc < 0) {
        snprintf(s->reason, sizeof(s->reason), "connect: %s", uv_strerror(rc));
        session_up_next_addr(s);
    }
}

/*
 * One attempt failed before the leg was ready: the next address (or port)
 * is tried if there is one, else the leg failed with reply.  An address
 * that refused the connection or timed out is marked broken for later
 * sessions.  Never for a certificate that did not verify (session_up_fail
 * directly).
 */
static void
session_up_attempt_failed(struct rl_session *s, const char *reply, const char *why)
{
    char peer[RL_CIDR_PEER_MAX];

    if (s->up_state == UP_CONNECT && s->cur_addr < s->addrs.n)
        rl_upstream_mark_broken(&s->addrs.a[s->cur_addr]);
    if (!session_up_has_next(s)) {
        session_up_fail(s, reply, why);
        return;
    }
    rl_cidr_peer_text((const struct sockaddr *)&s->addrs.a[s->cur_addr], peer, sizeof(peer));
    rl_log(RL_LOG_INFO, "%s upstream attempt failed peer=%s state=%s reason=\"%s\"", s->id, peer,
           up_state_names[s->up_state], why);
    snprintf(s->reason, sizeof(s->reason), "%s", why);
    session_up_next_addr(s);
}

static void
session_up_start(struct rl_session *s)
{
    int err = 0;

    unsigned max = s->snap->cfg->max_upstream_connections;
    struct rl_shared *sh = s->ctx->shared;
    bool busy;
    char why[80];

    if (s->up_started)
        return;
    s->up_started = true;
    pthread_mutex_lock(&sh->lock);
    /* A leg replacing one closed after a 535 keeps the place it had. */
    busy = !s->up_counted && max != 0 && sh->nupstreams >= max;
    if (!busy && !s->up_counted) {
        sh->nupstreams++;
        s->up_counted = true;
    }
    pthread_mutex_unlock(&sh->lock);
    if (busy) {
        snprintf(why, sizeof(why), "too many upstream connections (max_upstream_connections=%u)",
                 max);
        rl_metrics_refused(s->ctx->metrics, s->lc->name, "max_upstream_connections");
        session_up_fail(s, REPLY_UP_BUSY, why);
        return;
    }
    session_enter_up(s, UP_RESOLVE);
    s->resolve = rl_upstream_resolve(s->ctx->loop, s->uc, session_on_resolved, s, &err);
    if (s->resolve == NULL)
        session_up_fail(s, REPLY_UP_UNAVAILABLE, rl_strerror(err));
}

static void
session_up_start_tls(struct rl_session *s, enum up_state next)
{
    int rc;

    session_enter_up(s, next);
    rl_conn_set_timeout(s->up, s->snap->cfg->upstream_connect_timeout_ms);
    rc = rl_conn_start_tls(s->up, rl_snapshot_upstream_tls(s->snap, s->uc), s->uc->verify_name);
    if (rc < 0)
        session_up_fail(s, REPLY_UP_TLS, rl_strerror(rc));
}

static void
session_up_send_line(struct rl_session *s, const char *line)
{
    batch_send(&s->up_out, line, strlen(line));
    batch_flush(&s->up_out);
}

/* The upstream is encrypted, verified and waiting for the client's EHLO. */
static void
session_up_ready(struct rl_session *s)
{
    struct rl_tls *t = rl_conn_tls(s->up);

    if (rl_buf_len(rl_conn_in(s->up)) > 0) {
        /* Bytes nothing asked for (after the greeting, or right after the
         * handshake): taken as a reply, they would answer the client's
         * first command. */
        session_up_fail(s, REPLY_UP_LOST, "unsolicited data before the first command");
        return;
    }
    snprintf(s->up_tls, sizeof(s->up_tls), "%s", rl_tls_version(t));
    snprintf(s->up_cipher, sizeof(s->up_cipher), "%s", rl_tls_cipher(t));
    s->up_resumed = rl_tls_resumed(t);
    rl_metrics_handshake(s->ctx->metrics, true, s->up_resumed);
    if (s->up_replay) {
        /* A leg replacing one closed after a failed AUTH: the upstream
         * must hear the client's EHLO again before its next AUTH. */
        char line[sizeof(s->ehlo_line) + 2];

        s->up_replay = false;
        if (s->ehlo_len > 0)
            snprintf(line, sizeof(line), "%.*s\r\n", (int)s->ehlo_len, s->ehlo_line);
        else
            snprintf(line, sizeof(line), "EHLO %s\r\n",
                     s->uc->helo_name ? s->uc->helo_name : session_host(s));
        rl_log(RL_LOG_DEBUG, "%s upstream replaying the client's EHLO on the new leg", s->id);
        session_enter_up(s, UP_REHELLO);
        rl_conn_set_timeout(s->up, s->snap->cfg->upstream_timeout_ms);
        session_up_send_line(s, line);
        return;
    }
    session_enter_up(s, UP_READY);
    rl_conn_set_timeout(s->up, 0);
    rl_log(RL_LOG_DEBUG, "%s upstream ready peer=%s tls=%s cipher=%s", s->id, rl_conn_peer(s->up),
           rl_tls_version(t), rl_tls_cipher(t));
    session_client_process(s);
}

/*
 * Replies during establishment: the greeting, our EHLO, our STARTTLS.
 * None of them is ever shown to the client.
 */
static void
session_up_setup_reply(struct rl_session *s, const struct rl_smtp_reply *r, const char *p)
{
    char why[200], text[80];
    size_t off = 0, tlen = 0;
    const char *t = NULL;
    bool last;

    rl_smtp_reply_line(p, r->len, &off, &t, &tlen, &last);
    rl_log_escape(t, tlen < 60 ? tlen : 60, text, sizeof(text));
    switch (s->up_state) {
    case UP_GREETING:
        if (r->code != 220) {
            snprintf(why, sizeof(why), "greeting %d %s", r->code, text);
            session_up_attempt_failed(s, REPLY_UP_UNAVAILABLE, why);
            return;
        }
        if (s->up_mode == RL_TLS_IMPLICIT) {
            session_up_ready(s);
            return;
        }
        snprintf(why, sizeof(why), "EHLO %s\r\n",
                 s->uc->helo_name ? s->uc->helo_name : session_host(s));
        session_enter_up(s, UP_EHLO);
        rl_conn_set_timeout(s->up, s->snap->cfg->upstream_timeout_ms);
        session_up_send_line(s, why);
        return;
    case UP_EHLO: {
        uint64_t size = 0;

        if (r->code != 250) {
            snprintf(why, sizeof(why), "EHLO refused: %d %s", r->code, text);
            session_up_attempt_failed(s, REPLY_UP_UNAVAILABLE, why);
            return;
        }
        if (!(rl_smtp_ehlo_caps(p, r->len, &size) & RL_EHLO_STARTTLS)) {
            /* Fail closed: never a plaintext upstream (another address
             * or port, with TLS all the same, may be tried). */
            session_up_attempt_failed(s, REPLY_UP_TLS, "STARTTLS not offered");
            return;
        }
        session_enter_up(s, UP_STARTTLS);
        session_up_send_line(s, "STARTTLS\r\n");
        return;
    }
    case UP_STARTTLS:
        if (r->code != 220) {
            snprintf(why, sizeof(why), "STARTTLS refused: %d %s", r->code, text);
            session_up_attempt_failed(s, REPLY_UP_TLS, why);
            return;
        }
        if (rl_buf_len(rl_conn_in(s->up)) > 0) {
            /* Response injection: bytes after the 220 would be read as
             * if they came through TLS. */
            session_up_fail(s, REPLY_UP_TLS, "data after STARTTLS reply (response injection)");
            return;
        }
        session_up_start_tls(s, UP_TLS2);
        return;
    case UP_REHELLO:
        if (r->code / 100 != 2) {
            snprintf(why, sizeof(why), "replayed EHLO refused: %d %s", r->code, text);
            session_up_fail(s, REPLY_UP_UNAVAILABLE, why);
            return;
        }
        session_enter_up(s, UP_READY);
        rl_conn_set_timeout(s->up, 0);
        rl_log(RL_LOG_DEBUG, "%s upstream ready again after a failed AUTH peer=%s", s->id,
               rl_conn_peer(s->up));
        session_client_process(s);
        return;
    default:
        snprintf(why, sizeof(why), "unexpected reply %d in state %s", r->code,
                 up_state_names[s->up_state]);
        session_up_fail(s, REPLY_UP_LOST, why);
        return;
    }
}

/* ---- relaying replies ------------------------------------------------ */

/* Relays a reply with the provider's names hidden in every line. */
static void
session_relay_reply(struct rl_session *s, const struct rl_smtp_reply *r, const char *p)
{
    const char *const *names = (const char *const *)s->uc->hide;
    char line[RL_SMTP_REPLY_MAX];
    size_t off = 0, tlen, n;
    const char *text;
    bool last;

    while (rl_smtp_reply_line(p, r->len, &off, &text, &tlen, &last)) {
        n = (size_t)snprintf(line, sizeof(line), "%03d%c", r->code, last ? ' ' : '-');
        n += rl_smtp_hide(text, tlen, names, s->uc->nhide, session_host(s), line + n,
                          sizeof(line) - n - 2);
        line[n++] = '\r';
        line[n++] = '\n';
        batch_send(&s->cl_out, line, n);
    }
    if (r->code >= 500)
        s->errors++;
}

static void
session_relay_ehlo(struct rl_session *s, const struct rl_smtp_reply *r, const char *p)
{
    struct rl_smtp_ehlo_opts o = {
        .hostname = session_host(s),
        /* Offered before TLS on a STARTTLS listener (require_tls = no). */
        .starttls = s->lc->tls == RL_TLS_STARTTLS && !s->cl_tls,
        /* Relay mode in plaintext exists only with require_tls = no, where
         * old clients must still log in during the migration; a brand's
         * own users log in over TLS only. */
        .auth = s->cl_tls || s->brand->users == NULL,
        .auth_line = s->brand->users != NULL ? "AUTH PLAIN LOGIN" : NULL,
        .size_cap = s->uc->max_message_size,
    };
    char out[RL_SMTP_REPLY_MAX];
    size_t n = 0;

    if (rl_smtp_ehlo_render(p, r->len, &o, out, sizeof(out), &n) != RL_SMTP_OK) {
        /* Never the upstream's list unfiltered (it may offer STARTTLS or
         * CHUNKING): without a list that fits, the client gets none. */
        rl_log(RL_LOG_WARN, "%s upstream EHLO reply too large to filter, no extensions offered",
               s->id);
        session_reply(s, "250 %s\r\n");
        return;
    }
    batch_send(&s->cl_out, out, n);
}

/* The text of a reply's first line, provider names hidden, escaped for a
 * log line. */
static const char *
session_reply_text(const struct rl_session *s, const struct rl_smtp_reply *r, const char *p,
                   char *text, size_t cap)
{
    const char *const *names = (const char *const *)s->uc->hide;
    char hidden[200];
    size_t off = 0, tlen = 0, n;
    const char *t = NULL;
    bool last;

    rl_smtp_reply_line(p, r->len, &off, &t, &tlen, &last);
    n = rl_smtp_hide(t, tlen, names, s->uc->nhide, session_host(s), hidden, sizeof(hidden));
    return rl_log_escape(hidden, n, text, cap);
}

static void
session_log_message(struct rl_session *s, const struct rl_smtp_reply *r, const char *p)
{
    char text[240], mid[240];

    session_reply_text(s, r, p, text, sizeof(text));
    rl_log_escape(s->msgid.value, strlen(s->msgid.value), mid, sizeof(mid));
    rl_log(RL_LOG_INFO,
           "%s message from=<%s> rcpts=%u size=%" PRIu64 " message_id=\"%s\" result=\"%d %s\"",
           s->id, s->mail_from, s->rcpts, s->data.size, mid, r->code, text);
}

/*
 * After a 535 to AUTH: the leg is replaced by a fresh one (see the top of
 * this file), so that the client's next AUTH does not meet the closed
 * connection Mailgun leaves behind.  The old leg gets a courtesy QUIT; its
 * events are ignored from now on (it is no longer s->up).
 */
static void
session_up_recycle(struct rl_session *s)
{
    rl_log(RL_LOG_INFO, "%s upstream leg replaced after a failed AUTH", s->id);
    if (s->up != NULL) {
        batch_send(&s->up_out, "QUIT\r\n", 6);
        batch_flush(&s->up_out);
        rl_conn_close(s->up);
        s->up = NULL;
        s->up_out.c = NULL;
        s->up_out.err = 0;
    }
    s->up_started = false;
    s->up_replay = true;
    session_enter_up(s, UP_IDLE);
    session_up_start(s);
}

/* An upstream reply answers the command at the head of the FIFO. */
static void
session_up_reply(struct rl_session *s, const struct rl_smtp_reply *r, const char *p)
{
    struct pending *head = fifo_head(s);
    struct pending e;
    bool recycle = false;

    if (head == NULL || head->kind == P_LOCAL) {
        /* Nothing asked: a reply we cannot pair would shift every later
         * answer onto the wrong command. */
        session_up_fail(s, REPLY_UP_LOST, "unsolicited reply");
        return;
    }
    e = *head;
    fifo_pop(s);

    if (e.kind == P_EOD) {
        s->in_tx = false;
        rl_metrics_message(s->ctx->metrics, r->code);
        session_log_message(s, r, p);
        if (r->code / 100 == 2) {
            s->messages++;
            s->junk = 0;
        }
        s->rcpts = 0;
        s->mail_from[0] = '\0';
        session_relay_reply(s, r, p);
    } else if (e.kind == P_AUTH_UP) {
        session_lauth_upstream_reply(s, r, p);
        /* Mailgun closes after a 535 to the provider credential too: a
         * fresh leg, so the client's next try is not met by a dead one. */
        recycle = r->code == 535 && s->fifo_len == 0 && !s->in_tx;
    } else if (e.kind == P_AUTH_CONT || e.verb == RL_SMTP_AUTH) {
        if (r->code == 334) {
            s->cl_state = CL_AUTH;
            if (s->auth_plain_cont) {
                /* RFC 4954 §4: the challenge is base64; for PLAIN it is
                 * empty.  Some providers send prose here ("Go ahead"),
                 * which strict clients try to decode. */
                batch_send(&s->cl_out, "334 \r\n", 6);
                s->auth_plain_cont = false;
            } else {
                session_relay_reply(s, r, p);
            }
        } else {
            s->auth_plain_cont = s->auth_login_user = s->auth_plain_user = false;
            rl_metrics_auth(s->ctx->metrics, r->code);
            if (r->code == 235)
                rl_log(RL_LOG_INFO, "%s client authenticated", s->id);
            else
                rl_log(RL_LOG_INFO, "%s client authentication failed code=%d", s->id, r->code);
            session_relay_reply(s, r, p);
            /* Mailgun closes the connection after a 535: the client may
             * try again on a fresh leg.  Nothing else is pending (parsing
             * stops after AUTH and its continuations). */
            recycle = r->code == 535 && s->fifo_len == 0 && !s->in_tx;
        }
    } else {
        switch (e.verb) {
        case RL_SMTP_EHLO:
            s->in_tx = false; /* RFC 5321 §4.1.4: EHLO also resets */
            if (r->code == 250)
                session_relay_ehlo(s, r, p);
            else
                session_relay_reply(s, r, p);
            break;
        case RL_SMTP_HELO:
            if (r->code == 250)
                session_reply(s, "250 %s\r\n");
            else
                session_relay_reply(s, r, p);
            break;
        case RL_SMTP_QUIT:
            session_reply_close(s, "221 2.0.0 %s closing connection\r\n", "quit");
            return;
        case RL_SMTP_DATA:
            session_relay_reply(s, r, p);
            if (r->code == 354) {
                rl_smtp_data_init(&s->data, s->snap->cfg->bare_newline_reject,
                                  s->uc->max_message_size);
                rl_smtp_msgid_init(&s->msgid);
                s->data_abort = false;
                session_enter_cl(s, CL_DATA);
                session_set_timeouts(s, true);
            } else if (rl_buf_len(rl_conn_in(s->cl)) > 0) {
                /* The client sent its message before the 354: without it
                 * those bytes would be read as commands. */
                session_reply_close(s, "554 5.5.0 %s Message sent before the go-ahead, closing\r\n",
                                    "data before 354");
                return;
            }
            break;
        case RL_SMTP_MAIL:
            if (r->code / 100 != 2)
                s->in_tx = false;
            session_relay_reply(s, r, p);
            break;
        case RL_SMTP_RCPT:
            if (r->code / 100 == 2)
                s->rcpts++;
            session_relay_reply(s, r, p);
            break;
        case RL_SMTP_RSET:
            s->in_tx = false;
            s->rcpts = 0;
            s->mail_from[0] = '\0';
            session_relay_reply(s, r, p);
            break;
        default:
            session_relay_reply(s, r, p);
            break;
        }
    }
    if (r->code == 421) {
        /* RFC 5321 §3.8: the upstream is closing; so does the session. */
        session_close(s, "upstream sent 421");
        return;
    }
    session_fifo_locals(s);
    if (recycle && !s->closing)
        session_up_recycle(s);
}

/* Parses every complete reply in the upstream's input. */
static void
session_up_data(struct rl_session *s)
{
    struct rl_conn *c = s->up;
    struct rl_buf *in = rl_conn_in(c);

    /* s->up changes when an attempt fails and the next one starts, or
     * when a 535 replaces the leg: the bytes left belong to the old one. */
    while (!s->closing && s->up == c && rl_buf_len(in) > 0) {
        struct rl_smtp_reply r;
        const char *p;
        int rc = rl_smtp_reply_take(in, &r, &p);

        if (rc == RL_SMTP_MORE)
            break;
        if (rc < 0) {
            session_up_fail(s, REPLY_UP_LOST, "malformed reply");
            break;
        }
        if (s->up_state == UP_READY) {
            session_up_reply(s, &r, p);
            continue;
        }
        session_up_setup_reply(s, &r, p);
        if (s->up_state != UP_GREETING && s->up_state != UP_EHLO && s->up_state != UP_STARTTLS &&
            s->up_state != UP_REHELLO && s->up_state != UP_READY)
            break;
    }
    if (s->closing)
        return;
    if (s->up != NULL && s->up == c)
        rl_conn_consumed(s->up);
    session_set_timeouts(s, false);
    if (s->up_state == UP_READY)
        session_client_process(s);
}

/* ---- client commands -------------------------------------------------- */

/* Decodes standard base64 into out; returns the length or -1. */
static long
session_b64_decode(const char *p, size_t len, char *out, size_t cap)
{
    unsigned acc = 0, bits = 0;
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        const char *tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *q;

        if (p[i] == '=')
            break;
        q = memchr(tbl, p[i], 64);
        if (q == NULL)
            return -1;
        acc = (acc << 6) | (unsigned)(q - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= cap)
                return -1;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    return (long)n;
}

/* Drop-in migration: a plaintext login is logged with the user name (never
 * the password) so the operator sees who still has to move to TLS. */
static void
session_log_plain_auth(struct rl_session *s, const char *b64, size_t len, bool plain)
{
    char raw[512], user[200];
    long n;
    const char *u;
    size_t ulen;

    n = session_b64_decode(b64, len, raw, sizeof(raw));
    if (n < 0)
        n = 0;
    u = raw;
    ulen = (size_t)n;
    if (plain) {
        /* authzid NUL authcid NUL passwd: keep authcid only. */
        const char *z1 = memchr(raw, '\0', (size_t)n);
        const char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(raw + n - z1 - 1)) : NULL;

        u = z1 ? z1 + 1 : raw;
        ulen = z2 ? (size_t)(z2 - u) : 0;
    }
    rl_log_escape(u, ulen, user, sizeof(user));
    rl_metrics_plaintext_auth(s->ctx->metrics);
    rl_log(RL_LOG_WARN, "%s plaintext AUTH user=\"%s\" client=%s listener=%s", s->id, user,
           s->cl_peer, s->lc->name);
}

static void
session_relay_line(struct rl_session *s, const char *line, size_t len)
{
    batch_send(&s->up_out, line, len);
    batch_send(&s->up_out, "\r\n", 2);
}

/* ---- local AUTH: a brand's own users ---------------------------------- */

/* Encodes n bytes as standard base64 with padding; returns the length. */
static size_t
session_b64_encode(const unsigned char *p, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;

        if (i + 1 < n)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    return o;
}

/* The user name being tried, escaped for a log line. */
static const char *
session_auth_name(const struct rl_session *s, char *buf, size_t cap)
{
    return rl_log_escape(s->auth_name, s->auth_name_len, buf, cap);
}

/*
 * The check is over.  A failure is answered 535 (after the delay auth.c
 * already waited); a success logs in upstream with the brand's provider
 * credential, AUTH PLAIN with an initial response, whose reply decides
 * what the client gets.
 */
static void
session_on_verified(void *arg, bool ok)
{
    struct rl_session *s = arg;
    const struct rl_brand_conf *b = s->brand;
    char esc[RL_USER_NAME_MAX * 4 + 1];

    s->auth_req = NULL;
    if (s->closing)
        return;
    if (!ok) {
        s->lauth = LA_NONE;
        rl_metrics_local_auth(s->ctx->metrics, RL_LOCAL_AUTH_FAILURE);
        rl_metrics_auth(s->ctx->metrics, 535);
        rl_log(RL_LOG_INFO, "%s local authentication failed user=\"%s\" client=%s brand=%s", s->id,
               session_auth_name(s, esc, sizeof(esc)), s->cl_peer, b->name);
        session_local(s, "535 5.7.8 Authentication credentials invalid\r\n", NULL);
    } else if (s->up_state != UP_READY || s->up == NULL) {
        s->lauth = LA_NONE;
        session_reply_close(s, s->fail_reply != NULL ? s->fail_reply : REPLY_UP_LOST,
                            s->reason[0] ? s->reason : "upstream gone during AUTH");
    } else {
        size_t ulen = strlen(b->upstream_user), plen = strlen(b->upstream_password);
        unsigned char raw[RL_USER_NAME_MAX + RL_USER_PASSWORD_MAX + 2];
        char line[11 + (sizeof(raw) + 2) / 3 * 4 + 1];
        size_t n;

        /* authzid (empty) NUL authcid NUL passwd (RFC 4616); never logged. */
        raw[0] = '\0';
        memcpy(raw + 1, b->upstream_user, ulen);
        raw[1 + ulen] = '\0';
        memcpy(raw + 2 + ulen, b->upstream_password, plen);
        memcpy(line, "AUTH PLAIN ", 11);
        n = 11 + session_b64_encode(raw, 2 + ulen + plen, line + 11);
        session_relay_line(s, line, n);
        explicit_bzero(raw, sizeof(raw));
        explicit_bzero(line, sizeof(line));
        s->auth_up_cancelled = false;
        s->relayed_state = true;
        s->lauth = LA_UPSTREAM;
        fifo_push(s, (struct pending){.kind = P_AUTH_UP});
        rl_log(RL_LOG_DEBUG, "%s local user=\"%s\" verified, logging in upstream", s->id,
               session_auth_name(s, esc, sizeof(esc)));
    }
    if (s->closing)
        return;
    session_client_process(s);
    if (!s->closing) {
        session_flush(s);
        session_set_timeouts(s, false);
    }
    if (!s->closing)
        session_drain_check(s);
}

/* Hands user/password (plen bytes) to the threadpool; the session waits. */
static void
session_lauth_verify(struct rl_session *s, const char *user, size_t ulen, const char *pw,
                     size_t plen, bool allowed)
{
    const struct rl_user *u = NULL;

    if (ulen > RL_USER_NAME_MAX)
        ulen = RL_USER_NAME_MAX; /* kept for the log only: no such user */
    else if (allowed)
        u = rl_users_find(s->brand->users, user, ulen);
    memcpy(s->auth_name, user, ulen);
    s->auth_name_len = ulen;
    s->auth_trying = u;
    s->lauth = LA_VERIFY;
    /* An unknown user costs as much as a known one (users.c). */
    s->auth_req = rl_auth_verify(s->ctx, u != NULL ? u->hash : NULL, pw, plen, RL_AUTH_FAIL_DELAY,
                                 session_on_verified, s);
    if (s->auth_req == NULL) {
        s->lauth = LA_NONE;
        rl_log(RL_LOG_ERROR, "%s cannot start a password check: out of memory", s->id);
        session_local(s, "454 4.7.0 %s Temporary authentication failure\r\n", NULL);
    }
}

/* One SASL response line (base64) in a local exchange; never logged. */
static void
session_lauth_response(struct rl_session *s, const char *line, size_t len)
{
    char raw[RL_USER_NAME_MAX * 2 + RL_USER_PASSWORD_MAX + 4];
    long n;

    if (len == 1 && line[0] == '*') {
        s->lauth = LA_NONE;
        session_local(s, "501 5.0.0 Authentication cancelled\r\n", NULL);
        return;
    }
    n = session_b64_decode(line, len, raw, sizeof(raw));
    if (n < 0) {
        s->lauth = LA_NONE;
        session_local(s, "501 5.5.2 Cannot decode response\r\n", NULL);
        return;
    }
    switch (s->lauth) {
    case LA_LOGIN_USER:
        s->auth_name_len = (size_t)n < sizeof(s->auth_name) ? (size_t)n : sizeof(s->auth_name);
        memcpy(s->auth_name, raw, s->auth_name_len);
        /* A name too long to be anyone's: kept one byte over, so that it
         * matches no user. */
        s->lauth = LA_LOGIN_PASS;
        session_local(s, "334 UGFzc3dvcmQ6\r\n", NULL);
        break;
    case LA_LOGIN_PASS: {
        char user[sizeof(s->auth_name)];
        size_t ulen = s->auth_name_len;

        memcpy(user, s->auth_name, ulen);
        session_lauth_verify(s, user, ulen, raw, (size_t)n, true);
        break;
    }
    case LA_PLAIN: {
        /* authzid NUL authcid NUL passwd (RFC 4616 §2). */
        const char *z1 = memchr(raw, '\0', (size_t)n);
        const char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(raw + n - z1 - 1)) : NULL;

        if (z2 == NULL) {
            s->lauth = LA_NONE;
            session_local(s, "501 5.5.2 Malformed PLAIN response\r\n", NULL);
            break;
        }
        /* Acting for someone else (an authzid other than oneself) is not
         * offered: such a login fails like a bad password. */
        bool self = z1 == raw || ((size_t)(z1 - raw) == (size_t)(z2 - z1 - 1) &&
                                  memcmp(raw, z1 + 1, (size_t)(z1 - raw)) == 0);

        session_lauth_verify(s, z1 + 1, (size_t)(z2 - z1 - 1), z2 + 1, (size_t)(raw + n - z2 - 1),
                             self);
        break;
    }
    default:
        break;
    }
    explicit_bzero(raw, sizeof(raw));
}

/* AUTH for a brand with its own users: only over TLS, PLAIN or LOGIN. */
static bool
session_local_auth(struct rl_session *s, const struct rl_smtp_cmd *cmd)
{
    const char *sp = memchr(cmd->arg, ' ', cmd->arg_len);
    size_t mlen = sp != NULL ? (size_t)(sp - cmd->arg) : cmd->arg_len;
    bool plain = mlen == 5 && strncasecmp(cmd->arg, "PLAIN", 5) == 0;
    bool login = mlen == 5 && strncasecmp(cmd->arg, "LOGIN", 5) == 0;

    rl_log(RL_LOG_DEBUG, "%s client AUTH (local)", s->id);
    if (!s->cl_tls) {
        /* Never in plaintext, not even on a require_tls = no listener. */
        session_local(
            s, "538 5.7.11 Encryption required for requested authentication mechanism\r\n", NULL);
        return true;
    }
    if (s->auth_user != NULL) {
        session_local(s, "503 5.5.1 Already authenticated\r\n", NULL);
        return true;
    }
    if (s->in_tx) {
        session_local(s, "503 5.5.1 AUTH not permitted during a mail transaction\r\n", NULL);
        return true;
    }
    if (!plain && !login) {
        session_local(s, "504 5.5.4 Unrecognized authentication type\r\n", NULL);
        return true;
    }
    s->lauth = plain ? LA_PLAIN : LA_LOGIN_USER;
    if (sp != NULL)
        session_lauth_response(s, sp + 1, cmd->arg_len - mlen - 1);
    else
        session_local(s, plain ? "334 \r\n" : "334 VXNlcm5hbWU6\r\n", NULL);
    return true;
}

/* The upstream's reply to relabel's own AUTH with the provider credential. */
static void
session_lauth_upstream_reply(struct rl_session *s, const struct rl_smtp_reply *r, const char *p)
{
    char esc[RL_USER_NAME_MAX * 4 + 1], text[240];

    if (r->code == 334) {
        /* A challenge after an initial response: cancel the exchange and
         * report the failure once the upstream has answered the "*". */
        session_relay_line(s, "*", 1);
        fifo_push(s, (struct pending){.kind = P_AUTH_UP});
        s->auth_up_cancelled = true;
        return;
    }
    s->lauth = LA_NONE;
    if (r->code == 235 && !s->auth_up_cancelled) {
        s->auth_user = s->auth_trying;
        rl_metrics_local_auth(s->ctx->metrics, RL_LOCAL_AUTH_SUCCESS);
        rl_metrics_auth(s->ctx->metrics, 235);
        rl_log(RL_LOG_INFO, "%s client authenticated user=\"%s\" (local) brand=%s", s->id,
               session_auth_name(s, esc, sizeof(esc)), s->brand->name);
        session_reply(s, "235 2.7.0 Authentication successful\r\n");
        return;
    }
    /* The operator's problem, not the client's: a temporary failure. */
    rl_log(RL_LOG_WARN,
           "%s upstream refused the provider credential of brand %s (upstream_user %s): %d %s",
           s->id, s->brand->name, s->brand->upstream_user, r->code,
           session_reply_text(s, r, p, text, sizeof(text)));
    s->auth_up_cancelled = false;
    rl_metrics_local_auth(s->ctx->metrics, RL_LOCAL_AUTH_UPSTREAM_REFUSED);
    session_reply(s, "454 4.7.0 %s Temporary authentication failure\r\n");
}

/* The pre-TLS dialogue on a STARTTLS listener with require_tls = yes:
 * answered here, nothing reaches the upstream (RFC 3207 §4). */
static void
session_local_command(struct rl_session *s, const struct rl_smtp_cmd *cmd)
{
    switch (cmd->verb) {
    case RL_SMTP_EHLO:
        session_reply(s, "250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                         "250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n");
        break;
    case RL_SMTP_HELO:
        session_reply(s, "250 %s\r\n");
        break;
    case RL_SMTP_NOOP:
    case RL_SMTP_RSET:
        session_reply(s, "250 2.0.0 OK\r\n");
        break;
    case RL_SMTP_QUIT:
        session_reply_close(s, "221 2.0.0 %s closing connection\r\n", "quit");
        break;
    default:
        session_reply(s, "530 5.7.0 Must issue a STARTTLS command first\r\n");
        break;
    }
}

/* STARTTLS from a plaintext client.  Returns false if the session ended. */
static bool
session_client_starttls(struct rl_session *s)
{
    int rc;

    if (rl_buf_len(rl_conn_in(s->cl)) > 0) {
        /* CVE-2011-0411 class: bytes pipelined after STARTTLS must never be
         * executed, neither now in plaintext nor later as if encrypted. */
        session_reply_close(s, "554 5.5.1 %s Data after STARTTLS refused, closing\r\n",
                            "data after STARTTLS (injection attempt)");
        return false;
    }
    if (s->fifo_len > 0) {
        session_local(s, "503 5.5.1 STARTTLS must not be pipelined\r\n", NULL);
        return true;
    }
    if (s->relayed_state) {
        /* require_tls = no: the upstream leg already holds a login or a
         * transaction from the plaintext part, which RFC 3207 §4.2 says
         * must not survive STARTTLS; the upstream cannot be told to forget
         * a login, so STARTTLS is only possible before AUTH and MAIL. */
        session_reply(s, "503 5.5.1 STARTTLS must come before AUTH and MAIL\r\n");
        return true;
    }
    session_reply(s, "220 2.0.0 Ready to start TLS\r\n");
    batch_flush(&s->cl_out);
    s->ehlo_len = 0; /* RFC 3207 §4.2: forgotten */
    session_enter_cl(s, CL_STARTTLS);
    rc = rl_conn_start_tls(s->cl, rl_snapshot_listener_tls(s->snap, s->lc), NULL);
    if (rc < 0) {
        session_close(s, "cannot start TLS");
        return false;
    }
    session_enter_cl(s, CL_TLS_ACCEPT);
    session_set_timeouts(s, true);
    return false;
}

/* The SIZE=n parameter of a MAIL command (RFC 1870 §3), 0 if absent. */
static uint64_t
session_mail_size(const char *arg, size_t len)
{
    for (size_t i = 0; i + 5 <= len; i++) {
        uint64_t v = 0;

        if ((i > 0 && arg[i - 1] != ' ') || strncasecmp(arg + i, "SIZE=", 5) != 0)
            continue;
        for (i += 5; i < len && arg[i] >= '0' && arg[i] <= '9'; i++)
            v = v > UINT64_MAX / 10 ? UINT64_MAX : v * 10 + (uint64_t)(arg[i] - '0');
        return v;
    }
    return 0;
}

/* One command in relay mode.  Returns false to stop parsing. */
static bool
session_relay_command(struct rl_session *s, const struct rl_smtp_cmd *cmd)
{
    switch (cmd->verb) {
    case RL_SMTP_STARTTLS:
        if (s->cl_tls) {
            session_local(s, "503 5.5.1 TLS already active\r\n", NULL);
            return true;
        }
        return session_client_starttls(s);
    case RL_SMTP_BDAT:
        /* CHUNKING is never offered; the chunk that follows cannot be
         * told apart from commands, so the session cannot continue. */
        session_local(s, "502 5.5.1 BDAT not supported, closing\r\n", "BDAT not supported");
        return false;
    case RL_SMTP_AUTH:
        if (s->brand->users != NULL)
            return session_local_auth(s, cmd);
        if (!s->cl_tls) {
            const char *sp = memchr(cmd->arg, ' ', cmd->arg_len);

            if (cmd->arg_len >= 5 && strncasecmp(cmd->arg, "PLAIN", 5) == 0 && sp != NULL)
                session_log_plain_auth(s, sp + 1, cmd->arg_len - (size_t)(sp + 1 - cmd->arg), true);
            else if (cmd->arg_len >= 5 && strncasecmp(cmd->arg, "LOGIN", 5) == 0 && sp != NULL)
                session_log_plain_auth(s, sp + 1, cmd->arg_len - (size_t)(sp + 1 - cmd->arg),
                                       false);
            else if (cmd->arg_len >= 5 && strncasecmp(cmd->arg, "LOGIN", 5) == 0)
                s->auth_login_user = true;
            else if (cmd->arg_len >= 5 && strncasecmp(cmd->arg, "PLAIN", 5) == 0)
                s->auth_plain_user = true;
        }
        s->auth_plain_cont = cmd->arg_len == 5 && strncasecmp(cmd->arg, "PLAIN", 5) == 0;
        /* The AUTH line carries credentials: it is relayed, never logged. */
        rl_log(RL_LOG_DEBUG, "%s client AUTH relayed", s->id);
        break;
    case RL_SMTP_MAIL: {
        const char *lt = memchr(cmd->arg, '<', cmd->arg_len);
        const char *gt = lt ? memchr(lt, '>', (size_t)(cmd->arg + cmd->arg_len - lt)) : NULL;
        uint64_t size = session_mail_size(cmd->arg, cmd->arg_len);

        if (s->brand->users != NULL && s->auth_user == NULL) {
            /* The brand's users log in here: without a login the upstream
             * leg has none either, so say so plainly (RFC 4954 §6). */
            session_local(s, "530 5.7.0 Authentication required\r\n", NULL);
            return true;
        }
        if (s->uc->max_message_size != 0 && size > s->uc->max_message_size) {
            /* RFC 1870 §6.1: refused before any byte is sent, since the
             * provider announces more than it really takes. */
            session_local(s, "552 5.3.4 Message size exceeds fixed maximum message size\r\n", NULL);
            return true;
        }
        if (s->auth_user != NULL && s->auth_user->ndomains > 0 &&
            (lt == NULL || gt == NULL ||
             !rl_user_sender_ok(s->auth_user, lt + 1, (size_t)(gt - lt - 1)))) {
            char who[RL_USER_NAME_MAX * 4 + 1], from[200];

            rl_log(RL_LOG_INFO, "%s sender refused user=\"%s\" from=<%s>: not in its domains",
                   s->id,
                   rl_log_escape(s->auth_user->name, strlen(s->auth_user->name), who, sizeof(who)),
                   lt != NULL && gt != NULL
                       ? rl_log_escape(lt + 1, (size_t)(gt - lt - 1), from, sizeof(from))
                       : "");
            session_local(s, "553 5.7.1 Sender address not allowed for this user\r\n", NULL);
            return true;
        }
        if (lt != NULL && gt != NULL)
            rl_log_escape(lt + 1, (size_t)(gt - lt - 1), s->mail_from, sizeof(s->mail_from));
        s->rcpts = 0;
        rl_log(RL_LOG_DEBUG, "%s client MAIL from=<%s>", s->id, s->mail_from);
        break;
    }
    default: {
        char esc[120];

        rl_log(
            RL_LOG_DEBUG, "%s client %s", s->id,
            rl_log_escape(cmd->line, cmd->line_len < 100 ? cmd->line_len : 100, esc, sizeof(esc)));
        break;
    }
    }
    if (cmd->verb == RL_SMTP_MAIL && s->draining) {
        /* Shutting down: no new transaction. */
        session_local(s, REPLY_SHUTDOWN, "shutdown");
        return false;
    }
    if (cmd->verb == RL_SMTP_EHLO || cmd->verb == RL_SMTP_HELO) {
        /* Replayed on a leg that replaces one closed after a 535; too
         * long to keep, relabel's own EHLO is used instead. */
        s->ehlo_len = cmd->line_len < sizeof(s->ehlo_line) ? cmd->line_len : 0;
        memcpy(s->ehlo_line, cmd->line, s->ehlo_len);
    }
    if (cmd->verb == RL_SMTP_AUTH || cmd->verb == RL_SMTP_MAIL)
        s->relayed_state = true;
    if (cmd->verb == RL_SMTP_MAIL)
        s->in_tx = true;
    if (cmd->verb == RL_SMTP_QUIT)
        s->quit_sent = true;
    session_relay_line(s, cmd->line, cmd->line_len);
    fifo_push(s, (struct pending){.kind = P_CMD, .verb = cmd->verb});
    return true;
}

static int
session_data_emit(void *arg, const char *p, size_t n)
{
    struct rl_session *s = arg;

    if (!s->msgid.done)
        rl_smtp_msgid_feed(&s->msgid, p, n);
    return batch_send(&s->up_out, p, n);
}

/* Message body bytes: scanned and streamed upstream, never re-buffered. */
static bool
session_client_data(struct rl_session *s, struct rl_buf *in)
{
    bool done = false;
    long used;
    int err_before = s->data.error;

    used =
        rl_smtp_data_scan(&s->data, rl_buf_data(in), rl_buf_len(in), session_data_emit, s, &done);
    if (used < 0) {
        session_up_fail(s, REPLY_UP_LOST, "write failed");
        return false;
    }
    rl_buf_consume(in, (size_t)used);
    if (s->data.error != 0 && err_before == 0) {
        /* The message is refused: the upstream must never see its end, so
         * its connection is dropped now (it discards the partial message);
         * the client is answered when its own end of data arrives. */
        rl_log(RL_LOG_INFO, "%s message refused from=<%s> reason=\"%s\"", s->id, s->mail_from,
               rl_strerror(s->data.error));
        s->data_abort = true;
        if (s->up != NULL) {
            rl_buf_reset(&s->up_out.b, BATCH_MAX);
            rl_conn_abort(s->up);
            s->up = NULL;
            s->up_out.c = NULL;
        }
        session_enter_up(s, UP_ABORTED);
    }
    if (!done)
        return false;
    session_enter_cl(s, CL_COMMAND);
    session_set_timeouts(s, true);
    if (s->data_abort) {
        switch (s->data.error) {
        case RL_E_TOO_BIG:
            session_reply_close(s, "552 5.3.4 %s Message too big, closing\r\n", "message too big");
            break;
        case RL_E_NUL:
            session_reply_close(s, "554 5.6.0 %s Message contains NUL bytes, closing\r\n",
                                "NUL in message");
            break;
        default:
            session_reply_close(s,
                                "554 5.6.0 %s Message contains bare CR or LF line endings, "
                                "closing\r\n",
                                "bare CR/LF in message");
            break;
        }
        return false;
    }
    fifo_push(s, (struct pending){.kind = P_EOD});
    return true;
}

/*
 * Commands that move no mail (NOOP, RSET, VRFY, EXPN, HELP) are counted;
 * past max_junk_commands since the last accepted message the session is
 * closed, so a client cannot hold a connection for ever with them.  True
 * if it was.
 */
static bool
session_junk(struct rl_session *s, enum rl_smtp_verb verb)
{
    switch (verb) {
    case RL_SMTP_NOOP:
    case RL_SMTP_RSET:
    case RL_SMTP_VRFY:
    case RL_SMTP_EXPN:
    case RL_SMTP_HELP:
        break;
    default:
        return false;
    }
    if (++s->junk <= s->snap->cfg->max_junk_commands)
        return false;
    /* In order: after the replies still owed. */
    session_local(s, "421 4.7.0 %s Too many commands without mail, closing connection\r\n",
                  "too many commands without mail (max_junk_commands)");
    return true;
}

/* After an over-long line: true if its end has not arrived yet, so the
 * bytes up to the next LF must still be discarded. */
static bool
session_skip_rest(struct rl_session *s, int rc, size_t used)
{
    return rc == RL_E_LINE_TOO_LONG &&
           (used == 0 || rl_buf_data(rl_conn_in(s->cl))[used - 1] != '\n');
}

/*
 * Works through the client's input as far as the protocol allows: commands
 * until one must be answered first, message bytes while the upstream keeps
 * up.  Called on client data, on upstream replies and when the upstream
 * drains.
 */
static void
session_client_process(struct rl_session *s)
{
    const struct rl_config *cfg = s->snap->cfg;
    struct rl_buf *in;
    bool owed = false; /* stopped inside a line the client has not finished */

    if (s->closing || s->cl == NULL)
        return;
    in = rl_conn_in(s->cl);
    while (!s->closing && rl_buf_len(in) > 0) {
        struct rl_smtp_cmd cmd;
        const char *line;
        size_t line_len, used = 0;
        int rc;

        if (s->cl_state == CL_PROXY || s->cl_state == CL_TLS_ACCEPT || s->cl_state == CL_STARTTLS ||
            s->cl_state == CL_DONE)
            break;
        if (s->relay && s->up_state == UP_FAILED) {
            session_reply_close(s, s->fail_reply, s->reason);
            break;
        }
        if (s->relay && s->up_state != UP_READY && s->up_state != UP_ABORTED) {
            session_up_start(s); /* waits for the upstream; resumed when ready */
            break;
        }
        if ((s->up != NULL && rl_conn_write_blocked(s->up)) || rl_conn_write_blocked(s->cl)) {
            /* Backpressure: the upstream does not take the message as fast
             * as the client sends it, or the client does not read its
             * replies.  Resumed on the blocked leg's DRAINED. */
            rl_conn_pause(s->cl);
            if (s->paused_at == 0)
                s->paused_at = session_now_ms(s);
            break;
        }
        if (s->cl_state == CL_DATA) {
            if (!session_client_data(s, in))
                break;
            continue;
        }
        if (s->cl_state == CL_DISCARD) {
            const char *lf = memchr(rl_buf_data(in), '\n', rl_buf_len(in));

            if (lf == NULL) {
                rl_buf_consume(in, rl_buf_len(in));
                owed = true;
                break;
            }
            rl_buf_consume(in, (size_t)(lf - rl_buf_data(in)) + 1);
            session_enter_cl(s, CL_COMMAND);
            if (!s->discard_quiet)
                session_local(s, "500 5.5.2 Line too long\r\n", NULL);
            s->discard_quiet = false;
            continue;
        }
        if (session_blocked(s) || fifo_full(s))
            break;
        if (s->errors >= cfg->max_errors) {
            /* Once the pending replies are out, so the order holds. */
            if (s->fifo_len == 0)
                session_reply_close(s, "421 4.7.0 %s Too many errors, closing connection\r\n",
                                    "too many errors");
            break;
        }
        if (s->lauth == LA_PLAIN || s->lauth == LA_LOGIN_USER || s->lauth == LA_LOGIN_PASS) {
            /* A response line of a local SASL exchange: never a command,
             * never logged. */
            rc = rl_smtp_line(rl_buf_data(in), rl_buf_len(in), cfg->max_line, &line, &line_len,
                              &used);
            if (rc == RL_SMTP_MORE) {
                owed = true;
                break;
            }
            if (rc == RL_SMTP_OK) {
                session_lauth_response(s, line, line_len);
                rl_buf_consume(in, used);
                continue;
            }
            s->lauth = LA_NONE;
            s->discard_quiet = session_skip_rest(s, rc, used);
            rl_buf_consume(in, used);
            session_local(s, "501 5.5.2 Invalid response, authentication cancelled\r\n", NULL);
            if (s->discard_quiet)
                session_enter_cl(s, CL_DISCARD);
            continue;
        }
        if (s->cl_state == CL_AUTH) {
            /* One response line of a SASL exchange (RFC 4954 §4): relayed
             * as it is, never parsed as a command, never logged. */
            rc = rl_smtp_line(rl_buf_data(in), rl_buf_len(in), cfg->max_line, &line, &line_len,
                              &used);
            if (rc == RL_SMTP_MORE) {
                owed = true;
                break;
            }
            if (rc == RL_SMTP_OK && !s->cl_tls && (s->auth_login_user || s->auth_plain_user))
                session_log_plain_auth(s, line, line_len, s->auth_plain_user);
            s->auth_login_user = s->auth_plain_user = false;
            /* A broken response line cancels the exchange ("*", RFC 4954
             * §4) rather than being passed on. */
            if (rc == RL_SMTP_OK)
                session_relay_line(s, line, line_len);
            else
                session_relay_line(s, "*", 1);
            s->discard_quiet = session_skip_rest(s, rc, used);
            session_enter_cl(s, s->discard_quiet ? CL_DISCARD : CL_COMMAND);
            rl_buf_consume(in, used);
            fifo_push(s, (struct pending){.kind = P_AUTH_CONT});
            continue;
        }

        rc = rl_smtp_cmd_parse(rl_buf_data(in), rl_buf_len(in), cfg->max_line, &cmd, &used);
        if (rc == RL_SMTP_MORE) {
            owed = true;
            break;
        }
        if (rc == RL_E_LINE_TOO_LONG) {
            rl_log(RL_LOG_INFO, "%s client line too long max=%zu", s->id, cfg->max_line);
            if (session_skip_rest(s, rc, used)) {
                rl_buf_consume(in, used);
                session_enter_cl(s, CL_DISCARD);
            } else {
                rl_buf_consume(in, used);
                session_local(s, "500 5.5.2 Line too long\r\n", NULL);
            }
            continue;
        }
        if (rc < 0) {
            rl_log(RL_LOG_INFO, "%s client bad command line: %s", s->id, rl_strerror(rc));
            rl_buf_consume(in, used);
            session_local(s, "500 5.5.2 Invalid characters in command\r\n", NULL);
            continue;
        }
        rl_buf_consume(in, used);
        if (session_junk(s, cmd.verb))
            break;
        if (!s->relay) {
            if (cmd.verb == RL_SMTP_STARTTLS) {
                if (!session_client_starttls(s))
                    break;
                continue;
            }
            session_local_command(s, &cmd);
        } else if (!session_relay_command(s, &cmd)) {
            break;
        }
    }
    if (s->closing)
        return;
    if (!owed)
        s->line_ms = 0;
    else if (s->line_ms == 0)
        s->line_ms = session_now_ms(s);
    session_flush(s);
    rl_conn_consumed(s->cl);
    session_set_timeouts(s, false);
}

/* ---- events ----------------------------------------------------------- */

/*
 * Forgets an upstream leg started for another brand's upstream: a
 * plaintext client of a require_tls = no listener was relayed to the
 * default brand's upstream, then its STARTTLS named a brand with another
 * one.  Nothing but EHLO-like commands reached that upstream (STARTTLS must
 * come before AUTH and MAIL, with nothing pending), so it gets a QUIT and
 * the session starts over on the new one.
 */
static void
session_up_reset(struct rl_session *s)
{
    if (!s->up_started)
        return;
    if (s->resolve != NULL) {
        rl_upstream_cancel(s->resolve);
        s->resolve = NULL;
    }
    if (s->up != NULL) {
        if (s->up_state == UP_READY && s->fifo_len == 0 && !s->quit_sent) {
            batch_send(&s->up_out, "QUIT\r\n", 6);
            batch_flush(&s->up_out);
            rl_conn_close(s->up);
        } else {
            rl_conn_abort(s->up);
        }
        s->up = NULL;
        s->up_out.c = NULL;
        s->up_out.err = 0;
    }
    session_up_release(s);
    s->up_started = false;
    s->up_replay = false;
    s->fail_reply = NULL;
    s->up_peer[0] = s->up_tls[0] = s->up_cipher[0] = '\0';
    s->up_resumed = false;
    session_enter_up(s, UP_IDLE);
}

/*
 * The client's TLS is up: the brand its SNI chose (tls.c; the listener's
 * default without SNI) names every reply from now on and decides the
 * upstream.  Before this only the default brand was shown (the greeting
 * and pre-TLS dialogue of a STARTTLS listener), and RFC 3207 §4.2 has the
 * client start over after STARTTLS anyway.
 */
static void
session_select_brand(struct rl_session *s, const struct rl_tls *t)
{
    const struct rl_config *cfg = s->snap->cfg;
    size_t i = rl_tls_brand(t);

    if (i >= cfg->nbrands || &cfg->brands[i] == s->brand)
        return;
    rl_log(RL_LOG_DEBUG, "%s brand %s -> %s", s->id, s->brand->name, cfg->brands[i].name);
    s->brand = &cfg->brands[i];
    if (s->brand->upstream != s->uc) {
        session_up_reset(s);
        s->uc = s->brand->upstream;
    }
}

static void
session_client_tls_ready(struct rl_session *s)
{
    struct rl_tls *t = rl_conn_tls(s->cl);
    const char *sni = rl_tls_sni(t);
    char esc[300];

    s->cl_tls = true;
    s->relay = true;
    rl_metrics_handshake(s->ctx->metrics, false, rl_tls_resumed(t));
    session_select_brand(s, t);
    rl_log(RL_LOG_DEBUG, "%s client TLS %s %s sni=%s brand=%s", s->id, rl_tls_version(t),
           rl_tls_cipher(t), sni ? rl_log_escape(sni, strlen(sni), esc, sizeof(esc)) : "-",
           s->brand->name);
    if (s->cl_state == CL_TLS_ACCEPT && s->lc->tls == RL_TLS_IMPLICIT) {
        char greet[300];

        snprintf(greet, sizeof(greet), "220 %%s %.200s\r\n", s->snap->cfg->banner);
        session_reply(s, greet);
    }
    /* RFC 3207 §4.2: after STARTTLS everything learnt before is forgotten;
     * the client must send EHLO again.  Nothing but EHLO, HELO, NOOP, RSET
     * or VRFY-like queries was relayed before (see session_client_starttls),
     * and the client's next EHLO resets the upstream's state as well. */
    session_enter_cl(s, CL_COMMAND);
    session_set_timeouts(s, true);
    session_up_start(s);
}

/* A write queue fell below its low-water mark (the upstream takes the
 * message again, or the client reads its replies again): the client's
 * input is read and processed again; it pauses itself if a leg is still
 * blocked. */
static void
session_drained(struct rl_session *s)
{
    if (!rl_conn_paused(s->cl))
        return;
    if (s->paused_at != 0) {
        s->paused_ms += session_now_ms(s) - s->paused_at;
        s->paused_at = 0;
    }
    rl_conn_resume(s->cl);
    session_client_process(s);
}

static void
session_client_event(struct rl_session *s, enum rl_conn_event ev)
{
    char why[300], msg[200];

    switch (ev) {
    case RL_CONN_TLS_READY:
        session_client_tls_ready(s);
        break;
    case RL_CONN_DATA:
        if (s->cl_state == CL_PROXY)
            session_client_proxy(s);
        else
            session_client_process(s);
        break;
    case RL_CONN_DRAINED:
        session_drained(s);
        break;
    case RL_CONN_EOF:
        session_close(s, s->cl_state == CL_DATA    ? "client closed during DATA"
                         : s->cl_state == CL_PROXY ? "closed before the end of the PROXY header"
                                                   : "client closed");
        break;
    case RL_CONN_ERROR:
        if (s->cl_state == CL_TLS_ACCEPT)
            rl_metrics_client_tls_failure(s->ctx->metrics, rl_conn_tls_failure(s->cl));
        snprintf(why, sizeof(why), "client %s: %s",
                 s->cl_state == CL_TLS_ACCEPT ? "TLS handshake failed" : "error",
                 rl_conn_strerror(s->cl, msg, sizeof(msg)));
        session_close(s, why);
        break;
    case RL_CONN_TIMEOUT:
        if (s->cl_state == CL_PROXY) {
            rl_metrics_refused(s->ctx->metrics, s->lc->name, "proxy");
            session_close(s, "no PROXY header within handshake_timeout");
        } else if (s->cl_state == CL_TLS_ACCEPT) {
            rl_metrics_client_tls_failure(s->ctx->metrics, "timeout");
            session_close(s, "client TLS handshake timeout");
        } else if (s->cl_state == CL_DATA && s->up != NULL && rl_conn_write_blocked(s->up)) {
            session_reply_close(s,
                                "421 4.4.2 %s Mail service not responding, closing connection\r\n",
                                "upstream stalled during DATA");
        } else if (s->cl_deadline && s->cl_state == CL_DATA) {
            snprintf(why, sizeof(why), "client data rate below min_data_rate=%u bytes/s",
                     s->snap->cfg->min_data_rate);
            session_reply_close(s, "421 4.4.2 %s Data rate too low, closing connection\r\n", why);
        } else if (s->cl_deadline) {
            snprintf(why, sizeof(why), "client command not completed within command_deadline=%ums",
                     s->snap->cfg->command_deadline_ms);
            session_reply_close(s, "421 4.4.2 %s Command too slow, closing connection\r\n", why);
        } else {
            snprintf(why, sizeof(why), "client timeout in %s", cl_state_names[s->cl_state]);
            session_reply_close(s, "421 4.4.2 %s Timeout, closing connection\r\n", why);
        }
        break;
    default:
        break;
    }
}

static void
session_upstream_event(struct rl_session *s, enum rl_conn_event ev)
{
    char why[300], msg[200];

    switch (ev) {
    case RL_CONN_CONNECTED:
        snprintf(s->up_peer, sizeof(s->up_peer), "%s", rl_conn_peer(s->up));
        rl_log(RL_LOG_DEBUG, "%s upstream connected peer=%s", s->id, s->up_peer);
        rl_upstream_mark_ok(&s->addrs.a[s->cur_addr]);
        if (s->up_mode == RL_TLS_IMPLICIT) {
            session_up_start_tls(s, UP_TLS);
        } else {
            session_enter_up(s, UP_GREETING);
            rl_conn_set_timeout(s->up, s->snap->cfg->upstream_timeout_ms);
        }
        break;
    case RL_CONN_TLS_READY:
        if (s->up_state == UP_TLS) {
            session_enter_up(s, UP_GREETING);
            rl_conn_set_timeout(s->up, s->snap->cfg->upstream_timeout_ms);
            if (rl_buf_len(rl_conn_in(s->up)) > 0)
                session_up_data(s);
        } else {
            session_up_ready(s);
        }
        break;
    case RL_CONN_DATA:
        session_up_data(s);
        break;
    case RL_CONN_DRAINED:
        session_drained(s);
        break;
    case RL_CONN_EOF:
    case RL_CONN_ERROR:
        if (s->up_state == UP_CONNECT) {
            snprintf(why, sizeof(why), "connect to %s: %s", rl_conn_peer(s->up),
                     rl_conn_strerror(s->up, msg, sizeof(msg)));
            session_up_attempt_failed(s, REPLY_UP_UNAVAILABLE, why);
            break;
        }
        if (s->up_state == UP_TLS || s->up_state == UP_TLS2) {
            const char *failure = rl_conn_tls_failure(s->up);

            snprintf(why, sizeof(why), "TLS with %s failed: %s", rl_conn_peer(s->up),
                     ev == RL_CONN_EOF ? "connection closed"
                                       : rl_conn_strerror(s->up, msg, sizeof(msg)));
            /* A certificate that does not verify is never worked around:
             * no other address, no other port. */
            if (failure != NULL && strcmp(failure, "verify") == 0)
                session_up_fail(s, REPLY_UP_TLS, why);
            else
                session_up_attempt_failed(s, REPLY_UP_TLS, why);
            break;
        }
        snprintf(why, sizeof(why), "connection lost in %s: %s", up_state_names[s->up_state],
                 ev == RL_CONN_EOF ? "closed by peer" : rl_conn_strerror(s->up, msg, sizeof(msg)));
        if (s->up_state == UP_READY)
            session_up_fail(s, REPLY_UP_LOST, why);
        else
            session_up_attempt_failed(s, REPLY_UP_UNAVAILABLE, why);
        break;
    case RL_CONN_TIMEOUT:
        if (s->up_state == UP_CONNECT) {
            snprintf(why, sizeof(why), "connect to %s: timeout", rl_conn_peer(s->up));
            session_up_attempt_failed(s, REPLY_UP_UNAVAILABLE, why);
            break;
        }
        snprintf(why, sizeof(why), "timeout in %s", up_state_names[s->up_state]);
        if (s->up_state == UP_READY)
            session_up_fail(s, REPLY_UP_LOST, why);
        else
            session_up_attempt_failed(s, REPLY_UP_UNAVAILABLE, why);
        break;
    default:
        break;
    }
}

static void
session_on_event(struct rl_conn *c, enum rl_conn_event ev, void *arg)
{
    struct rl_session *s = arg;

    if (ev == RL_CONN_CLOSED) {
        rl_metrics_bytes(s->ctx->metrics, c == s->cl, rl_conn_bytes_in(c), rl_conn_bytes_out(c));
        if (c == s->cl) {
            s->cl = NULL;
            s->cl_out.c = NULL;
        } else if (c == s->up) {
            s->up = NULL;
            s->up_out.c = NULL;
        }
        if (--s->nconns == 0)
            session_free(s);
        return;
    }
    if (s->closing)
        return;
    if (c == s->cl)
        session_client_event(s, ev);
    else if (c == s->up)
        session_upstream_event(s, ev);
    /* Events from an abandoned connection attempt are ignored. */
    if (!s->closing)
        session_flush(s);
    if (!s->closing)
        session_drain_check(s);
}

/* ---- start and shutdown ----------------------------------------------- */

/* Refuses the client before any TLS work: a STARTTLS listener answers
 * reply, an implicit TLS one closes (a plaintext reply means nothing to a
 * client waiting for a handshake). */
static void
session_refuse(struct rl_session *s, const char *reply, const char *why, const char *metric)
{
    rl_log(RL_LOG_INFO, "%s refused client=%s listener=%s reason=\"%s\"", s->id, s->cl_peer,
           s->lc->name, why);
    rl_metrics_refused(s->ctx->metrics, s->lc->name, metric);
    if (s->lc->tls == RL_TLS_STARTTLS)
        session_reply_close(s, reply, why);
    else
        session_close(s, why);
}
/* One more new connection from the client's address, if the rate allows. */
static bool
session_rate_allows(struct rl_session *s, unsigned rate)
{
    struct rl_shared *sh = s->ctx->shared;
    bool ok = true;

    pthread_mutex_lock(&sh->lock);
    if (sh->rate != NULL)
        ok = rl_ratelimit_allow(sh->rate, &s->cl_ip, rate, session_now_ms(s));
    pthread_mutex_unlock(&sh->lock);
    return ok;
}

/*
 * The listener's deny and allow lists, then max_connection_rate, on the
 * client's address.  An attempt over the rate takes no token, so a client
 * that keeps trying is let in again at the configured pace.  Returns true
 * if the session ended.
 */
static bool
session_refused(struct rl_session *s)
{
    const struct rl_listener_conf *lc = s->lc;
    unsigned rate = s->snap->cfg->max_connection_rate;
    const struct rl_cidr *hit = rl_cidr_list_match(&lc->deny, &s->cl_ip);
    char why[160], net[RL_CIDR_TEXT_MAX];

    if (hit != NULL) {
        snprintf(why, sizeof(why), "denied by deny %s", rl_cidr_text(hit, net, sizeof(net)));
        session_refuse(s, REPLY_DENIED, why, "denied");
        return true;
    }
    if (lc->allow.n > 0 && rl_cidr_list_match(&lc->allow, &s->cl_ip) == NULL) {
        session_refuse(s, REPLY_DENIED, "denied by allow (no network matches)", "denied");
        return true;
    }
    if (!session_rate_allows(s, rate)) {
        snprintf(why, sizeof(why), "too many new connections (max_connection_rate=%u per minute)",
                 rate);
        session_refuse(s, REPLY_TOO_MANY, why, "rate");
        return true;
    }
    return false;
}

/*
 * Connection limits over all workers: the total, and per client address (a
 * linear walk of every worker's sessions under the shared lock: the total
 * bounds it, and it costs far less than the handshake it saves).  Sessions
 * still waiting for their PROXY header have no address yet and count only
 * in the total.  Returns true if the session ended.
 */
static bool
session_over_limit(struct rl_session *s)
{
    const struct rl_config *cfg = s->snap->cfg;
    struct rl_shared *sh = s->ctx->shared;
    unsigned same = 0;
    unsigned long total;
    char why[160];

    pthread_mutex_lock(&sh->lock);
    total = sh->nsessions;
    if (total <= cfg->max_connections)
        for (size_t w = 0; w < sh->nworkers; w++)
            for (struct rl_session *o = sh->workers[w]->sessions; o != NULL; o = o->next)
                if (o->ip_counted && rl_cidr_addr_equal(&o->cl_ip, &s->cl_ip))
                    same++;
    pthread_mutex_unlock(&sh->lock);
    if (total > cfg->max_connections) {
        snprintf(why, sizeof(why), "too many connections (max_connections=%u)",
                 cfg->max_connections);
    } else {
        if (same <= cfg->max_connections_per_ip)
            return false;
        snprintf(why, sizeof(why), "too many connections from %s (max_connections_per_ip=%u)",
                 s->cl_peer, cfg->max_connections_per_ip);
    }
    session_refuse(s, REPLY_TOO_MANY, why,
                   same > cfg->max_connections_per_ip ? "max_connections_per_ip"
                                                      : "max_connections");
    return true;
}

/* Sets the client's address; an IPv4-mapped IPv6 address is its IPv4.
 * Other workers read cl_ip when they count per address, so it is written
 * under the shared lock. */
static void
session_set_client(struct rl_session *s, const struct sockaddr_storage *ss)
{
    struct rl_shared *sh = s->ctx->shared;

    s->cl_addr = *ss;
    rl_cidr_sockaddr_unmap(&s->cl_addr);
    pthread_mutex_lock(&sh->lock);
    rl_cidr_addr_set(&s->cl_ip, (const struct sockaddr *)&s->cl_addr);
    s->ip_counted = true;
    pthread_mutex_unlock(&sh->lock);
    rl_cidr_peer_text((const struct sockaddr *)&s->cl_addr, s->cl_peer, sizeof(s->cl_peer));
}

/*
 * The client's address is known: access, rate and limits, then the TLS
 * handshake (implicit) or the greeting (STARTTLS).  Bytes that came after
 * a PROXY header are the client's first TLS records, or commands sent
 * before the greeting, which are read like any pipelined commands.
 */
static void
session_client_start(struct rl_session *s)
{
    const struct rl_listener_conf *lc = s->lc;
    int rc;

    if (session_refused(s) || session_over_limit(s))
        return;
    /* The leg's first state, or its first change after a PROXY header. */
    if (s->proxy_version != 0)
        session_enter_cl(s, lc->tls == RL_TLS_IMPLICIT ? CL_TLS_ACCEPT : CL_COMMAND);
    else
        s->cl_state = lc->tls == RL_TLS_IMPLICIT ? CL_TLS_ACCEPT : CL_COMMAND;
    if (s->cl_state == CL_TLS_ACCEPT)
        s->step_ms = s->started_ms; /* the handshake deadline counts from accept */
    if (lc->tls == RL_TLS_IMPLICIT) {
        const struct rl_tls_conf *conf = rl_snapshot_listener_tls(s->snap, s->lc);

        if (s->proxy_version != 0)
            rc = rl_conn_start_tls_after_proxy(s->cl, conf);
        else
            rc = rl_conn_start_tls(s->cl, conf, NULL);
        if (rc < 0) {
            session_close(s, "cannot start TLS");
            return;
        }
    } else {
        char greet[300];

        /* require_tls = no: plaintext clients are relayed (the upstream leg
         * is still verified TLS), for the migration from the CNAME. */
        s->relay = !lc->require_tls;
        snprintf(greet, sizeof(greet), "220 %%s %.200s\r\n", s->snap->cfg->banner);
        session_reply(s, greet);
        session_flush(s);
        if (!s->closing && rl_buf_len(rl_conn_in(s->cl)) > 0)
            session_client_process(s);
    }
    if (!s->closing)
        session_set_timeouts(s, true);
}

/*
 * The PROXY header (HAProxy's proxy-protocol.txt), read before anything
 * else.  Bytes are gathered until a whole header is there; what follows it
 * stays in `in` for session_client_start().
 */
static void
session_client_proxy(struct rl_session *s)
{
    struct rl_buf *in = rl_conn_in(s->cl);
    unsigned allowed = s->lc->proxy_protocol;
    struct rl_proxy_hdr h;
    char why[160], start[80];
    int rc = rl_proxy_parse(rl_buf_data(in), rl_buf_len(in), allowed, &h);

    if (rc == 1)
        return; /* a valid prefix: wait for the rest */
    if (rc < 0) {
        /* A header (or the start of one) of the other version is told
         * apart from garbage, for the operator reading the log. */
        if (rl_proxy_parse(rl_buf_data(in), rl_buf_len(in), RL_PROXY_V1 | RL_PROXY_V2, &h) >= 0)
            snprintf(why, sizeof(why), "PROXY v%c header not allowed (proxy_protocol = v%c)",
                     rl_buf_data(in)[0] == '\r' ? '2' : '1', allowed == RL_PROXY_V1 ? '1' : '2');
        else
            snprintf(why, sizeof(why), "malformed PROXY header");
        rl_log(RL_LOG_INFO, "%s refused via=%s listener=%s reason=\"%s\" start=\"%s\"", s->id,
               s->proxy_via, s->lc->name, why,
               rl_log_escape(rl_buf_data(in), rl_buf_len(in) < 16 ? rl_buf_len(in) : 16, start,
                             sizeof(start)));
        rl_metrics_refused(s->ctx->metrics, s->lc->name, "proxy");
        session_close(s, why);
        return;
    }
    rl_buf_consume(in, h.used);
    s->proxy_version = h.version;
    s->proxy_local = h.local;
    memcpy(s->proxy_authority, h.authority, sizeof(s->proxy_authority));
    session_set_client(s, h.local ? rl_conn_peer_addr(s->cl) : &h.src);
    rl_log(RL_LOG_DEBUG, "%s proxy v%c%s client=%s via=%s", s->id,
           h.version == RL_PROXY_V1 ? '1' : '2', h.local ? " local" : "", s->cl_peer, s->proxy_via);
    session_client_start(s);
}

/*
 * A PROXY protocol listener: only its load balancers may connect, and each
 * connection must start with a header.  Anyone else is closed at once,
 * without a reply: a client that reaches the listener directly bypassed
 * the balancer, and anything it is told helps it probe.
 */
static void
session_proxy_begin(struct rl_session *s)
{
    const struct sockaddr_storage *ss = rl_conn_peer_addr(s->cl);
    struct rl_cidr_addr via;
    char why[160];

    rl_cidr_addr_set(&via, (const struct sockaddr *)ss);
    rl_cidr_peer_text((const struct sockaddr *)ss, s->proxy_via, sizeof(s->proxy_via));
    rl_log(RL_LOG_DEBUG, "%s session start via=%s listener=%s", s->id, s->proxy_via, s->lc->name);
    if (rl_cidr_list_match(&s->lc->proxy_trusted, &via) == NULL) {
        session_set_client(s, ss);
        snprintf(why, sizeof(why), "not a trusted PROXY protocol source (proxy_trusted)");
        rl_log(RL_LOG_INFO, "%s refused client=%s listener=%s reason=\"%s\"", s->id, s->cl_peer,
               s->lc->name, why);
        rl_metrics_refused(s->ctx->metrics, s->lc->name, "proxy");
        session_close(s, why);
        return;
    }
    session_enter_cl(s, CL_PROXY);
    session_set_timeouts(s, true);
}

int
rl_session_accept(struct rl_ctx *ctx, struct rl_snapshot *snap, const struct rl_listener_conf *lc,
                  uv_stream_t *server)
{
    struct rl_session *s = calloc(1, sizeof(*s));
    int rc;

    if (s == NULL)
        return RL_E_NOMEM;
    s->ctx = ctx;
    s->snap = rl_snapshot_ref(snap);
    s->lc = lc;
    s->brand = lc->brand;
    s->uc = lc->brand->upstream;
    s->started_ms = uv_now(ctx->loop);
    snprintf(s->id, sizeof(s->id), "%016" PRIx64,
             (uint64_t)(ctx->id_seed ^ (ctx->id_next++ * 0x9e3779b97f4a7c15ULL)));
    snprintf(s->cl_peer, sizeof(s->cl_peer), "-");
    rl_buf_init(&s->cl_out.b, BATCH_MAX);
    rl_buf_init(&s->up_out.b, BATCH_MAX);
    pthread_mutex_lock(&ctx->shared->lock);
    s->next = ctx->sessions;
    if (ctx->sessions != NULL)
        ctx->sessions->prev = s;
    ctx->sessions = s;
    ctx->nsessions++;
    ctx->shared->nsessions++;
    pthread_mutex_unlock(&ctx->shared->lock);
    rl_metrics_session_start(ctx->metrics, lc->name);

    s->cl = rl_conn_new(ctx->loop, session_on_event, s);
    if (s->cl == NULL) {
        session_free(s);
        return RL_E_NOMEM;
    }
    s->nconns = 1;
    s->cl_out.c = s->cl;
    rc = rl_conn_accept(s->cl, server);
    if (rc < 0) {
        session_close(s, "accept failed");
        return rc;
    }
    if (lc->proxy_protocol != 0) {
        session_proxy_begin(s);
        return 0;
    }
    session_set_client(s, rl_conn_peer_addr(s->cl));
    rl_log(RL_LOG_DEBUG, "%s session start client=%s listener=%s", s->id, s->cl_peer, lc->name);
    session_client_start(s);
    return 0;
}

/* A transaction is open, streaming, or waiting for its final reply. */
static bool
session_busy(const struct rl_session *s)
{
    return s->in_tx || s->cl_state == CL_DATA || s->fifo_len > 0;
}

/* A draining session whose transaction is over says goodbye. */
static void
session_drain_check(struct rl_session *s)
{
    if (s->draining && !s->closing && !session_busy(s))
        session_reply_close(s, REPLY_SHUTDOWN, "shutdown");
}

void
rl_session_shutdown_all(struct rl_ctx *ctx, bool force)
{
    for (struct rl_session *s = ctx->sessions; s != NULL; s = s->next) {
        if (s->closing)
            continue;
        if (s->cl_state == CL_PROXY || s->cl_state == CL_TLS_ACCEPT || s->cl_state == CL_STARTTLS) {
            session_close(s, "shutdown");
        } else if (force || !session_busy(s)) {
            /* session_close() drops the upstream without an end of data
             * if a message is still streaming. */
            session_reply_close(s, REPLY_SHUTDOWN, force ? "shutdown (forced)" : "shutdown");
        } else {
            s->draining = true;
            rl_log(RL_LOG_INFO, "%s draining: transaction in progress", s->id);
        }
    }
}
