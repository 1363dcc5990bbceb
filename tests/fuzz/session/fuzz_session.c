/*
 * fuzz_session.c - drives the real session state machine (src/session.c)
 * in memory: a fake client and a fake upstream exchange fuzzer-chosen
 * bytes and events with it through fake_env.c, and every byte the session
 * writes is checked against the invariants in README.md.
 *
 * Input: 3 configuration bytes, then operations (see README.md and
 * drive_op()).  At most OPS_MAX operations run; then the client hangs up
 * and the loop is drained until the session has freed itself.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fake_env.h"
#include "relabel/config.h"
#include "relabel/ctx.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/log.h"
#include "relabel/session.h"
#include "relabel/snapshot.h"

#define OPS_MAX 400
#define TOK_MAX 8192
#define CLIENT_STREAM_MAX (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Sanitizer runtime: where reports go while stderr holds the session log. */
void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

/* ---- the world -------------------------------------------------------- */

static char s_brand_name[] = "example";
static char s_hostname[] = "smtp.example.com";
/* A second brand, chosen by SNI, with an upstream entry of its own (the
 * same fake provider), so that a plaintext relay followed by STARTTLS
 * moves to another upstream leg. */
static char s_brand_b_name[] = "b";
static char s_hostname_b[] = "mail.brand-b.test";
static char s_up_b_name[] = "mailgun-eu";
static char s_up_name[] = "mailgun-us";
static char s_up_host[] = "smtp.mailgun.org";
static char s_listener_name[] = "fuzz";
static char s_banner[] = "ESMTP ready";
static char s_hide0[] = "mailgun.org", s_hide1[] = "postgun.com", s_hide2[] = "mailgun";
static char *s_hide[] = {s_hide0, s_hide1, s_hide2};
static char s_path[] = "fuzz.ini";

static struct rl_upstream_conf g_ups[2];
static struct rl_brand_conf g_brands[2];
static struct rl_listener_conf g_lc;
static struct rl_config g_cfg;
static struct rl_snapshot g_snap;
static uv_loop_t g_loop;
static struct rl_ctx g_ctx;
static struct rl_ctx *g_workers[1] = {&g_ctx};
static struct rl_shared g_shared = {
    .lock = PTHREAD_MUTEX_INITIALIZER, .workers = g_workers, .nworkers = 1};

/* ---- per-input state -------------------------------------------------- */

static unsigned char g_tok[TOK_MAX]; /* 0 unknown, 1 sent in a 2xx, 2 seen by the client */
static unsigned g_tok_next;
static unsigned long g_up_eods; /* ends of data the upstream received */
static unsigned long g_cl_eods; /* ends of data the client sent */
static char *g_cs;              /* every byte the client sent */
static size_t g_cs_len;
static struct rl_conn *g_client;
static bool g_debug;
static int g_log_fd = -1;
static int g_saved_stderr = -1;
static bool g_trace; /* FUZZ_SESSION_TRACE=1: print both dialogues */

/* One direction of a dialogue, escaped, on the fuzzer's stderr. */
static void
trace(const char *dir, unsigned id, const char *p, size_t n)
{
    char out[4096];
    size_t o = 0;

    if (!g_trace)
        return;
    for (size_t i = 0; i < n && o + 8 < sizeof(out); i++) {
        unsigned char ch = (unsigned char)p[i];

        if (ch == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
            if (i + 1 < n) {
                out[o++] = '\n';
                o += (size_t)snprintf(out + o, sizeof(out) - o, "%s%u   ", dir, id);
            }
        } else if (ch == '\r') {
            out[o++] = '\\';
            out[o++] = 'r';
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(out + o, sizeof(out) - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    dprintf(g_saved_stderr, "%s%u   %.*s\n", dir, id, (int)o, out);
}

/* ---- helpers ---------------------------------------------------------- */

static bool
ci_has(const char *p, size_t n, const char *needle)
{
    size_t k = strlen(needle);

    for (size_t i = 0; i + k <= n; i++) {
        size_t j = 0;

        while (j < k && tolower((unsigned char)p[i + j]) == needle[j])
            j++;
        if (j == k)
            return true;
    }
    return false;
}

static bool
line_is(const char *p, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

static bool
word_is(const char *p, size_t n, const char *w)
{
    size_t k = strlen(w);

    if (n < k || strncasecmp(p, w, k) != 0)
        return false;
    return n == k || p[k] == ' ';
}

/* Calls fn(token) for every "tok<digits>" in p[0..n). */
static void
each_token(const char *p, size_t n, void (*fn)(unsigned long, void *), void *arg)
{
    for (size_t i = 0; i + 3 < n; i++) {
        unsigned long v = 0;
        size_t j;

        if (memcmp(p + i, "tok", 3) != 0 || !isdigit((unsigned char)p[i + 3]))
            continue;
        for (j = i + 3; j < n && isdigit((unsigned char)p[j]) && v < 1000000; j++)
            v = v * 10 + (unsigned long)(p[j] - '0');
        fn(v, arg);
        i = j - 1;
    }
}

/* ---- the upstream server model --------------------------------------- */

static void up_model_parse(struct rl_conn *c);

static void
up_fifo_push(struct rl_conn *c, enum upm_kind k)
{
    struct up_model *m = &c->up;

    /* The session pairs replies through a FIFO of RL_PIPELINE_MAX entries;
     * one more for the courtesy QUIT. */
    if (m->fifo_len >= RL_PIPELINE_MAX + 1)
        fake_fail("upstream conn %u has %zu unanswered commands (pipeline bound %d)", c->id,
                  m->fifo_len + 1, RL_PIPELINE_MAX);
    m->fifo[(m->fifo_head + m->fifo_len) % UPM_FIFO] = (unsigned char)k;
    m->fifo_len++;
    if (g_trace)
        dprintf(g_saved_stderr, "    [model %u: push kind %d, %zu unanswered]\n", c->id, (int)k,
                m->fifo_len);
}

static int
up_fifo_head(const struct rl_conn *c)
{
    return c->up.fifo_len ? c->up.fifo[c->up.fifo_head] : -1;
}

static void
up_model_line(struct rl_conn *c, const char *p, size_t n)
{
    struct up_model *m = &c->up;
    enum upm_kind k = K_CMD;

    if (m->auth_cont_next) {
        m->auth_cont_next = false;
        k = line_is(p, n, "*") ? K_AUTH_STAR : K_AUTH_CONT;
    } else if (word_is(p, n, "DATA")) {
        k = K_DATA;
    } else if (word_is(p, n, "STARTTLS")) {
        k = K_STARTTLS;
    } else if (word_is(p, n, "QUIT")) {
        k = K_QUIT;
    } else if (word_is(p, n, "EHLO") || word_is(p, n, "HELO")) {
        k = K_EHLO;
    } else if (word_is(p, n, "AUTH")) {
        const char *mech = n > 5 ? p + 5 : p + n;
        size_t mlen = n > 5 ? n - 5 : 0;

        if (memchr(mech, ' ', mlen) != NULL)
            k = K_AUTH_IR;
        else if (mlen == 5 && strncasecmp(mech, "PLAIN", 5) == 0)
            k = K_AUTH_PLAIN;
        else if (mlen == 5 && strncasecmp(mech, "LOGIN", 5) == 0)
            k = K_AUTH_LOGIN;
        else
            k = K_AUTH_IR; /* another mechanism: a reply or a 334 follows all the same */
    }
    up_fifo_push(c, k);
    /* Commands whose reply decides how the next bytes are read (message
     * data, a SASL response, TLS) or that end a pipeline group (RFC 2920
     * §3.1, RFC 3207 §4): the session promises to send nothing after them
     * before their reply, and a server reads nothing further until then. */
    if (k != K_CMD)
        m->mode = UPM_HOLD;
}

/* Reads what the session wrote, as far as a server would before replying. */
static void
up_model_parse(struct rl_conn *c)
{
    struct up_model *m = &c->up;
    size_t len = rl_buf_len(&m->rx);
    const char *rx;

    if (m->desync) {
        /* The server sent a reply nobody asked for: the session will pair
         * it with its next command, which no real server would do.  What
         * the server would make of the following bytes is unknown, so
         * only the byte checks of up_model_rx() still apply. */
        m->parse_pos = len;
        return;
    }
    if (len == 0)
        return;
    rx = rl_buf_data(&m->rx);

    while (m->parse_pos < len && m->mode != UPM_HOLD) {
        if (m->mode == UPM_DATA) {
            char ch = rx[m->parse_pos++];

            /* 0 mid-line, 1 CR, 2 line start, 3 ".", 4 ".CR" */
            switch (m->data_state) {
            case 2:
                m->data_state = ch == '.' ? 3 : ch == '\r' ? 1 : 0;
                break;
            case 3:
                m->data_state = ch == '\r' ? 4 : 0;
                break;
            case 4:
                if (ch == '\n') {
                    g_up_eods++;
                    up_fifo_push(c, K_EOD);
                    m->mode = UPM_CMD;
                    if (g_up_eods > g_cl_eods)
                        fake_fail("upstream received end of data #%lu but the client sent only %lu",
                                  g_up_eods, g_cl_eods);
                } else {
                    m->data_state = 0;
                }
                break;
            case 1:
                m->data_state = ch == '\n' ? 2 : ch == '\r' ? 1 : 0;
                break;
            default:
                m->data_state = ch == '\r' ? 1 : 0;
                break;
            }
            continue;
        }
        const char *lf = memchr(rx + m->parse_pos, '\n', len - m->parse_pos);

        if (lf == NULL)
            return;
        size_t n = (size_t)(lf - (rx + m->parse_pos));

        if (n > 0 && rx[m->parse_pos + n - 1] == '\r')
            n--;
        up_model_line(c, rx + m->parse_pos, n);
        m->parse_pos = (size_t)(lf - rx) + 1;
    }
}

/* Bytes the session wrote to an upstream conn. */
static void
up_model_rx(struct rl_conn *c, const char *p, size_t n)
{
    struct up_model *m = &c->up;

    for (size_t i = 0; i < n; i++) {
        char ch = p[i];

        if (ch == '\0')
            fake_fail("NUL byte sent to the upstream (conn %u)", c->id);
        if (m->prev_cr && ch != '\n')
            fake_fail("bare CR sent to the upstream (conn %u)", c->id);
        if (ch == '\n' && !m->prev_cr)
            fake_fail("bare LF sent to the upstream (conn %u)", c->id);
        m->prev_cr = ch == '\r';
    }
    if (rl_buf_append(&m->rx, p, n) != 0)
        fake_fail("fake: upstream receive log full");
    up_model_parse(c);
    if (m->mode == UPM_HOLD && m->parse_pos < rl_buf_len(&m->rx))
        fake_fail(
            "session wrote \"%.*s\" upstream after a group-ending command, before its "
            "reply",
            (int)(rl_buf_len(&m->rx) - m->parse_pos > 60 ? 60 : rl_buf_len(&m->rx) - m->parse_pos),
            rl_buf_data(&m->rx) + m->parse_pos);
}

/* A complete reply the upstream sent: it answers the oldest command. */
static void
up_model_reply(struct rl_conn *c, int code, const char *text, size_t tlen)
{
    struct up_model *m = &c->up;
    int k = up_fifo_head(c);

    if (k < 0) {
        if (g_trace)
            dprintf(g_saved_stderr, "    [model %u: unsolicited reply %d: desync]\n", c->id, code);
        m->desync = true; /* unsolicited */
        return;
    }
    m->fifo_head = (m->fifo_head + 1) % UPM_FIFO;
    m->fifo_len--;
    m->auth_cont_next = false;
    if (g_trace)
        dprintf(g_saved_stderr, "    [model %u: reply %d answers kind %d, %zu left]\n", c->id, code,
                k, m->fifo_len);
    if (m->mode == UPM_HOLD && m->fifo_len == 0) {
        /* The command that stopped the reading was the last one. */
        m->mode = k == K_DATA && code == 354 ? UPM_DATA : UPM_CMD;
        m->data_state = 2;
    }
    switch (k) {
    case K_AUTH_IR:
    case K_AUTH_PLAIN:
    case K_AUTH_LOGIN:
    case K_AUTH_CONT:
        if (code == 334) {
            m->auth_cont_next = true;
            m->last334 = line_is(text, tlen, "VXNlcm5hbWU6")   ? 'U'
                         : line_is(text, tlen, "UGFzc3dvcmQ6") ? 'P'
                                                               : 'E';
        }
        break;
    default:
        break;
    }
    up_model_parse(c);
}

static void
tok_credit(unsigned long t, void *arg)
{
    (void)arg;
    if (t < TOK_MAX && g_tok[t] == 0)
        g_tok[t] = 1;
}

/* The driver sends bytes as the upstream: parsed as replies (crediting
 * tokens of 2xx lines), then handed to the fake conn. */
static void
up_send(struct rl_conn *c, char *p, size_t n, bool raw)
{
    struct up_model *m = &c->up;

    for (size_t i = 0; i < n; i++) {
        if (raw) {
            /* Raw bytes never form a 2xx line (only canned replies carry
             * tokens) and never spell a provider name (only canned replies
             * do, in the forms the session must hide). */
            if (m->at_line_start && p[i] == '2')
                p[i] = '4';
            if (p[i] == 'g' || p[i] == 'G')
                p[i] = 'q';
        }
        m->at_line_start = p[i] == '\n';
        if (p[i] != '\n') {
            if (m->line_len < sizeof(m->line))
                m->line[m->line_len++] = p[i];
            else
                m->line_trunc = true;
            continue;
        }
        size_t len = m->line_len;
        const char *l = m->line;
        int code = -1;

        if (len > 0 && l[len - 1] == '\r')
            len--;
        if (len >= 3 && isdigit((unsigned char)l[0]) && isdigit((unsigned char)l[1]) &&
            isdigit((unsigned char)l[2]))
            code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
        if (m->reply_code == 0)
            m->reply_code = code;
        if (code == m->reply_code && code / 100 == 2)
            each_token(l, len, tok_credit, NULL);
        if (len < 4 || l[3] != '-') {
            up_model_reply(c, m->reply_code, len > 4 ? l + 4 : l + len, len > 4 ? len - 4 : 0);
            m->reply_code = 0;
        }
        m->line_len = 0;
        m->line_trunc = false;
    }
    trace("U>S", c->id, p, n);
    fake_peer_send(c, p, n);
}

/* ---- the client model -------------------------------------------------- */

static void
tok_client(unsigned long t, void *arg)
{
    struct cl_model *m = arg;

    if (t >= TOK_MAX || g_tok[t] == 0)
        fake_fail("client got 2xx reply with token tok%lu the upstream never sent in a 2xx", t);
    if (g_tok[t] == 2)
        fake_fail("client got the upstream's 2xx reply with token tok%lu twice", t);
    g_tok[t] = 2;
    m->ok_token = true;
}

static bool
cl_local_form(const struct cl_model *m)
{
    const char *f = m->first;
    size_t n = strlen(f);
    bool local_dialogue = g_lc.tls == RL_TLS_STARTTLS && g_lc.require_tls && !m->tls_at_start;
    /* Before TLS the listener's default brand speaks; after it, the brand
     * the client's SNI chose, and never the other one. */
    const char *host = g_brands[m->tls_at_start ? fake.brand : 0].hostname;
    char want[3][128];

    if (m->first_trunc)
        return false;
    snprintf(want[0], sizeof(want[0]), "220 %s ESMTP ready", host);
    snprintf(want[1], sizeof(want[1]), "250-%s", host);
    snprintf(want[2], sizeof(want[2]), "250 %s", host);
    if (line_is(f, n, want[0]) || line_is(f, n, want[1]) || line_is(f, n, want[2]))
        return true;
    snprintf(want[0], sizeof(want[0]), "221 2.0.0 %s closing connection", host);
    if (line_is(f, n, want[0]) && m->reply_lines == 1)
        return true;
    if (line_is(f, n, "250 2.0.0 OK") && m->reply_lines == 1 && local_dialogue)
        return true;
    if (line_is(f, n, "220 2.0.0 Ready to start TLS") && m->reply_lines == 1 &&
        g_lc.tls == RL_TLS_STARTTLS && !m->tls_at_start)
        return true;
    return false;
}

static void
cl_model_line(struct rl_conn *c, const char *l, size_t len)
{
    struct cl_model *m = &c->cl;
    int code;
    bool last;

    if (ci_has(l, len, "mailgun") || ci_has(l, len, "postgun"))
        fake_fail("provider name shown to the client: \"%.*s\"", (int)len, l);
    if (len < 3 || !isdigit((unsigned char)l[0]) || !isdigit((unsigned char)l[1]) ||
        !isdigit((unsigned char)l[2]) || (len > 3 && l[3] != ' ' && l[3] != '-'))
        fake_fail("malformed reply line to the client: \"%.*s\"", (int)len, l);
    code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    last = len < 4 || l[3] != '-';
    if (m->reply_lines == 0) {
        m->reply_code = code;
        m->tls_at_start = c->tls_on;
        m->ok_token = false;
        m->first_trunc = len >= sizeof(m->first);
        memcpy(m->first, l, m->first_trunc ? sizeof(m->first) - 1 : len);
        m->first[m->first_trunc ? sizeof(m->first) - 1 : len] = '\0';
    } else if (code != m->reply_code) {
        fake_fail("reply to the client mixes codes %d and %d", m->reply_code, code);
    }
    m->reply_lines++;
    if (code / 100 == 2)
        each_token(l, len, tok_client, m);
    if (!last)
        return;
    if (code / 100 == 2 && !m->ok_token && !cl_local_form(m))
        fake_fail("invented acknowledgement: client got \"%s\" (%zu lines) without an upstream 2xx",
                  m->first, m->reply_lines);
    m->awaiting_334 = code == 334;
    if (code == 334) {
        const char *t = len > 4 ? l + 4 : "";
        size_t tl = len > 4 ? len - 4 : 0;

        m->last334 = line_is(t, tl, "VXNlcm5hbWU6")   ? 'U'
                     : line_is(t, tl, "UGFzc3dvcmQ6") ? 'P'
                     : tl == 0                        ? 'E'
                                                      : 'X';
    }
    m->reply_lines = 0;
}

static void
cl_model_rx(struct rl_conn *c, const char *p, size_t n)
{
    struct cl_model *m = &c->cl;

    for (size_t i = 0; i < n; i++) {
        bool cr = m->prev_cr;

        m->prev_cr = p[i] == '\r';
        if (p[i] != '\n') {
            if (m->line_len < sizeof(m->line))
                m->line[m->line_len++] = p[i];
            else
                m->line_trunc = true;
            continue;
        }
        if (!cr)
            fake_fail("reply line to the client not ended by CRLF");
        /* The line without its CR (a truncated one keeps its start). */
        cl_model_line(c, m->line, m->line_trunc ? m->line_len : m->line_len - 1);
        m->line_len = 0;
        m->line_trunc = false;
    }
}

static void
on_write(struct rl_conn *c, const char *p, size_t n)
{
    trace(c->role == FAKE_CLIENT ? "S>C" : "S>U", c->id, p, n);
    if (c->role == FAKE_CLIENT)
        cl_model_rx(c, p, n);
    else
        up_model_rx(c, p, n);
}

static void
on_free(struct rl_conn *c)
{
    if (c == g_client)
        g_client = NULL;
}

/* The client sends bytes; ends of data are counted on its whole stream. */
static void
cl_send(const char *p, size_t n)
{
    if (g_client == NULL || g_client->peer_eof || n == 0)
        return;
    if (g_cs_len + n > CLIENT_STREAM_MAX)
        return;
    memcpy(g_cs + g_cs_len, p, n);
    for (size_t i = g_cs_len; i < g_cs_len + n; i++) {
        size_t j; /* the "." */

        if (i < 2 || g_cs[i] != '\n' || g_cs[i - 1] != '\r' || g_cs[i - 2] != '.')
            continue;
        j = i - 2;
        if (j >= 2 && g_cs[j - 1] == '\n' && g_cs[j - 2] == '\r') {
            g_cl_eods++;
        } else if (j >= 1 && g_cs[j - 1] == '\n') {
            /* "DATA" ended by a bare LF, then "." CRLF: an empty message. */
            size_t k = j - 1;

            while (k > 0 && g_cs[k - 1] != '\n')
                k--;
            if (word_is(g_cs + k, j - 1 - k, "DATA"))
                g_cl_eods++;
        }
    }
    g_cs_len += n;
    g_client->cl.awaiting_334 = false;
    trace("C>S", g_client->id, p, n);
    fake_peer_send(g_client, p, n);
}

/* ---- logging window --------------------------------------------------- */

static void
log_enter(void)
{
    if (g_debug)
        dup2(g_log_fd, 2);
}

static void
log_leave(void)
{
    if (g_debug)
        dup2(g_saved_stderr, 2);
}

static const char *const secrets[] = {"s3cr3tPW", "czNjcjN0UFc", "AHVzZXIAczNjcjN0UFc"};

static void
log_check(void)
{
    off_t size = lseek(g_log_fd, 0, SEEK_END);
    char *buf;

    if (size <= 0)
        return;
    buf = malloc((size_t)size);
    if (buf == NULL)
        return;
    if (pread(g_log_fd, buf, (size_t)size, 0) == size) {
        for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
            if (ci_has(buf, (size_t)size, secrets[i])) {
                fake_fail("AUTH secret \"%s\" in the session log: %.*s", secrets[i],
                          (int)(size < 2000 ? size : 2000), buf);
            }
        }
    }
    free(buf);
}

/* ---- canned pieces ---------------------------------------------------- */

struct piece {
    const char *s;
    size_t n;
};
#define PIECE(lit)                                                                                 \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

#define CL_AUTH_RESPONSE 5
#define CL_LONG_LINE 23
#define CL_LONG_OPEN 32

static const struct piece cl_canned[] = {
    PIECE("EHLO client.example\r\n"),
    PIECE("STARTTLS\r\n"),
    PIECE("AUTH PLAIN AHVzZXIAczNjcjN0UFc=\r\n"),
    PIECE("AUTH LOGIN\r\n"),
    PIECE("AUTH PLAIN\r\n"),
    PIECE(""), /* CL_AUTH_RESPONSE: chosen from the last 334 */
    PIECE("MAIL FROM:<a@b.example>\r\n"),
    PIECE("RCPT TO:<c@d.example>\r\n"),
    PIECE("DATA\r\n"),
    PIECE("Subject: hello\r\nFrom: <a@b.example>\r\n\r\nbody line\r\n..stuffed dot\r\n"),
    PIECE("\r\n.\r\n"),
    PIECE("QUIT\r\n"),
    PIECE("NOOP\r\n"),
    PIECE("RSET\r\n"),
    PIECE("BDAT 3\r\nabc"),
    PIECE("HELO client.example\r\n"),
    PIECE("body\n.\nMAIL FROM:<evil@x.example>\r\n"),
    PIECE("body\r\n.\rMAIL FROM:<evil@x.example>\r\n"),
    PIECE(".\r\n"),
    PIECE("MAIL FROM:<a@b.example> SIZE=99999999\r\n"),
    PIECE("AUTH LOGIN dXNlcg==\r\n"),
    PIECE("line one\nline two\r\n"),
    PIECE("x\0y\r\n"),
    PIECE(""), /* CL_LONG_LINE */
    PIECE("VRFY postmaster\r\n"),
    PIECE("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"),
    PIECE("STARTTLS\r\nEHLO injected.example\r\n"),
    PIECE("*\r\n"),
    PIECE("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\n"),
    PIECE("\r\n.\r\nQUIT\r\n"),
    PIECE("data\n.\r\n"),
    PIECE("EHLO mailgun.org\r\n"),
    PIECE(""), /* CL_LONG_OPEN: 700 bytes, no line end yet */
};
#define CL_NCANNED (sizeof(cl_canned) / sizeof(cl_canned[0]))

enum {
    UP_GREET,
    UP_EHLO,
    UP_334_EMPTY,
    UP_334_USER,
    UP_334_PASS,
    UP_235,
    UP_535,
    UP_250,
    UP_250_QUEUED,
    UP_354,
    UP_421,
    UP_221,
    UP_GARBAGE,
    UP_550,
    UP_452,
    UP_250_MULTI,
    UP_220_TLS,
    UP_503,
    UP_250_TWICE,
    UP_220_INJECT,
    UP_554,
    UP_501,
};

static const char *const up_canned[] = {
    [UP_GREET] = "220 Mailgun Influx ready %T\r\n",
    [UP_EHLO] = "250-a1.mailgun.org %T\r\n250-AUTH PLAIN LOGIN\r\n250-PIPELINING\r\n"
                "250-SIZE 52428800\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-STARTTLS\r\n"
                "250 ENHANCEDSTATUSCODES\r\n",
    [UP_334_EMPTY] = "334 \r\n",
    [UP_334_USER] = "334 VXNlcm5hbWU6\r\n",
    [UP_334_PASS] = "334 UGFzc3dvcmQ6\r\n",
    [UP_235] = "235 2.7.0 Authentication successful %T\r\n",
    [UP_535] = "535 5.7.0 Mailgun is not loving your login or password\r\n",
    [UP_250] = "250 2.0.0 %T\r\n",
    [UP_250_QUEUED] = "250 2.0.0 Ok: queued as %T on smtp.mailgun.org\r\n",
    [UP_354] = "354 Start mail input; end with <CRLF>.<CRLF>\r\n",
    [UP_421] = "421 4.4.2 a1.mailgun.org Error: timeout exceeded\r\n",
    [UP_221] = "221 See you later. Yours truly, Mailgun %T\r\n",
    [UP_GARBAGE] = "garbage from postgun.com\r\n",
    [UP_550] = "550 5.7.1 Relaying denied\r\n",
    [UP_452] = "452 4.5.3 Too many recipients\r\n",
    [UP_250_MULTI] = "250-first line from postgun.com\r\n250 %T\r\n",
    [UP_220_TLS] = "220 2.0.0 Ready to start TLS %T\r\n",
    [UP_503] = "503 5.5.1 Bad sequence of commands\r\n",
    [UP_250_TWICE] = "250 2.0.0 %T\r\n250 2.0.0 %T\r\n",
    [UP_220_INJECT] = "220 2.0.0 Ready to start TLS %T\r\n250 injected %T\r\n",
    [UP_554] = "554 5.7.1 smtp.mailgun.org rejected\r\n",
    [UP_501] = "501 5.7.0 Authentication cancelled\r\n",
};
#define UP_NCANNED (sizeof(up_canned) / sizeof(up_canned[0]))

/* The newest upstream conn still open. */
static struct rl_conn *
cur_up(void)
{
    for (struct rl_conn *c = fake.conns; c != NULL; c = c->next)
        if (c->role == FAKE_UPSTREAM && !c->closing)
            return c;
    return NULL;
}

static void
up_send_canned(unsigned idx)
{
    struct rl_conn *c = cur_up();
    const char *t = up_canned[idx % UP_NCANNED];
    char buf[1024];
    size_t n = 0;

    if (c == NULL || !c->connected)
        return;
    /* A canned reply starts a line: a raw partial line before it is ended,
     * so it cannot swallow the line that carries the token. */
    if (!c->up.at_line_start) {
        buf[n++] = '\r';
        buf[n++] = '\n';
    }
    for (; *t != '\0' && n < sizeof(buf) - 16; t++) {
        if (t[0] == '%' && t[1] == 'T') {
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "tok%u", g_tok_next++);
            t++;
        } else {
            buf[n++] = *t;
        }
    }
    up_send(c, buf, n, false);
}

/* What a well-behaved upstream answers to the oldest unanswered command. */
static void
up_auto_reply(void)
{
    struct rl_conn *c = cur_up();
    int k;

    if (c == NULL || !c->connected)
        return;
    k = up_fifo_head(c);
    switch (k) {
    case K_GREETING:
        up_send_canned(UP_GREET);
        break;
    case K_EHLO:
        up_send_canned(UP_EHLO);
        break;
    case K_STARTTLS:
        up_send_canned(UP_220_TLS);
        break;
    case K_AUTH_PLAIN:
        up_send_canned(UP_334_EMPTY);
        break;
    case K_AUTH_LOGIN:
        up_send_canned(UP_334_USER);
        break;
    case K_AUTH_CONT:
        up_send_canned(c->up.last334 == 'U' ? UP_334_PASS : UP_235);
        break;
    case K_AUTH_IR:
        up_send_canned(UP_235);
        break;
    case K_AUTH_STAR:
        up_send_canned(UP_501);
        break;
    case K_QUIT:
        up_send_canned(UP_221);
        break;
    case K_DATA:
        up_send_canned(UP_354);
        break;
    case K_EOD:
        up_send_canned(UP_250_QUEUED);
        break;
    case K_CMD:
        up_send_canned(UP_250);
        break;
    default:
        break; /* nothing asked */
    }
}

static void
cl_send_canned(unsigned idx)
{
    static char longline[700];
    const struct piece *pc;

    if (g_client == NULL)
        return;
    idx %= CL_NCANNED;
    if (idx == CL_AUTH_RESPONSE) {
        /* A client answers a challenge it was given: the password only to
         * "Password:", the PLAIN response only to an empty 334. */
        const char *r = "dXNlcg==\r\n";

        if (g_client->cl.awaiting_334 && g_client->cl.last334 == 'P')
            r = "czNjcjN0UFc=\r\n";
        else if (g_client->cl.awaiting_334 && g_client->cl.last334 == 'E')
            r = "AHVzZXIAczNjcjN0UFc=\r\n";
        cl_send(r, strlen(r));
        return;
    }
    if (idx == CL_LONG_LINE || idx == CL_LONG_OPEN) {
        memset(longline, 'A', sizeof(longline));
        if (idx == CL_LONG_LINE) {
            longline[sizeof(longline) - 2] = '\r';
            longline[sizeof(longline) - 1] = '\n';
        }
        cl_send(longline, sizeof(longline));
        return;
    }
    pc = &cl_canned[idx];
    cl_send(pc->s, pc->n);
}

/* ---- the driver -------------------------------------------------------- */

struct reader {
    const uint8_t *p;
    size_t n;
};

static unsigned
rd_u8(struct reader *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

static void
deliver_pending(unsigned sel, unsigned outcome)
{
    struct fake_pending pend[64];
    size_t n = fake_pending_list(pend, 64);

    if (n > 0)
        fake_pending_deliver(&pend[sel % n], outcome);
}

static void
conn_error(struct rl_conn *c, int err)
{
    if (c == NULL || c->closing || !c->connected)
        return;
    c->err = err;
    fake_emit(c, RL_CONN_ERROR);
}

static void
check_eods(void)
{
    if (g_up_eods > g_cl_eods)
        fake_fail("upstream received %lu ends of data, client sent %lu", g_up_eods, g_cl_eods);
}

static void
drive_op(struct reader *r)
{
    unsigned op = rd_u8(r) % 16, a, b;
    struct rl_conn *c;
    uint8_t raw[256];

    switch (op) {
    case 0:
    case 1:
        cl_send_canned(rd_u8(r));
        break;
    case 2:
        a = rd_u8(r);
        if (a > r->n)
            a = (unsigned)r->n;
        cl_send((const char *)r->p, a);
        r->p += a;
        r->n -= a;
        break;
    case 3: {
        /* Several commands in one segment: pipelining, injection. */
        char seg[2048];
        size_t n = 0;

        a = 2 + rd_u8(r) % 4;
        for (unsigned i = 0; i < a; i++) {
            const struct piece *pc = &cl_canned[rd_u8(r) % CL_NCANNED];

            if (n + pc->n <= sizeof(seg)) {
                memcpy(seg + n, pc->s, pc->n);
                n += pc->n;
            }
        }
        cl_send(seg, n);
        break;
    }
    case 4:
    case 5:
        up_auto_reply();
        break;
    case 6:
        up_send_canned(rd_u8(r));
        break;
    case 7:
        a = rd_u8(r);
        if (a > r->n)
            a = (unsigned)r->n;
        memcpy(raw, r->p, a);
        r->p += a;
        r->n -= a;
        c = cur_up();
        if (c != NULL && c->connected)
            up_send(c, (char *)raw, a, true);
        break;
    case 8:
    case 9:
        a = rd_u8(r);
        b = rd_u8(r);
        deliver_pending(a, b);
        break;
    case 10:
        /* A loop turn: everything pending, in order, succeeding. */
        for (int i = 0; i < 64; i++) {
            struct fake_pending pend[1];

            if (fake_pending_list(pend, 1) == 0)
                break;
            fake_pending_deliver(&pend[0], 1);
        }
        break;
    case 11:
        if (rd_u8(r) & 1)
            conn_error(g_client, UV_ECONNRESET);
        else if (g_client != NULL)
            fake_peer_eof(g_client);
        break;
    case 12:
        c = cur_up();
        if (c == NULL)
            break;
        if (rd_u8(r) & 1)
            conn_error(c, UV_ECONNRESET);
        else if (c->connected)
            fake_peer_eof(c);
        break;
    case 13:
        c = rd_u8(r) & 1 ? cur_up() : g_client;
        if (c != NULL && !c->closing && c->timeout_ms > 0)
            fake_emit(c, RL_CONN_TIMEOUT);
        break;
    case 14:
        c = rd_u8(r) & 1 ? cur_up() : g_client;
        if (c == NULL || c->closing)
            break;
        c->blocked = !c->blocked;
        if (!c->blocked && c->hiwat_seen) {
            c->hiwat_seen = false;
            c->drained_pending = true;
        }
        break;
    case 15:
        a = rd_u8(r);
        if (a & 2) {
            /* The daemon is stopping: draining, or (bit 2) forced. */
            fake_enter();
            rl_session_shutdown_all(&g_ctx, (a & 4) != 0);
            fake_leave();
            break;
        }
        c = a & 1 ? cur_up() : g_client;
        if (c != NULL)
            c->fail_write = true;
        break;
    default:
        break;
    }
    check_eods();
}

/* Both peers go away; the session must free itself. */
static void
drain(void)
{
    for (struct rl_conn *c = fake.conns; c != NULL; c = c->next) {
        if (c->blocked) {
            c->blocked = false;
            if (c->hiwat_seen) {
                c->hiwat_seen = false;
                c->drained_pending = true;
            }
        }
    }
    if (g_client != NULL)
        fake_peer_eof(g_client);
    for (int iter = 0;; iter++) {
        struct fake_pending pend[1];
        bool progressed = false;

        if (iter > 10000)
            fake_fail("session did not finish after %d loop turns", iter);
        if (fake.conns == NULL && fake.resolve == NULL)
            break;
        if (fake_pending_list(pend, 1) > 0) {
            fake_pending_deliver(&pend[0], 0); /* failures: the quickest end */
            continue;
        }
        for (struct rl_conn *c = fake.conns; c != NULL && !progressed; c = c->next) {
            if (c->role == FAKE_UPSTREAM && c->connected && !c->closing && !c->peer_eof) {
                fake_peer_eof(c);
                progressed = true;
            }
        }
        for (struct rl_conn *c = fake.conns; c != NULL && !progressed; c = c->next) {
            if (!c->closing && c->timeout_ms > 0) {
                fake_emit(c, RL_CONN_TIMEOUT);
                progressed = true;
            }
        }
        if (!progressed)
            fake_fail("session stuck: both peers gone, no event can arrive, %s conn %u still open",
                      fake.conns->role == FAKE_CLIENT ? "client" : "upstream", fake.conns->id);
    }
}

static void
setup_world(struct reader *r)
{
    unsigned b0 = rd_u8(r), b1 = rd_u8(r), b2 = rd_u8(r);

    memset(g_ups, 0, sizeof(g_ups));
    g_ups[0].name = s_up_name;
    g_ups[0].host = s_up_host;
    g_ups[0].tls = b0 & 0x10 ? RL_TLS_STARTTLS : RL_TLS_IMPLICIT;
    g_ups[0].port = g_ups[0].tls == RL_TLS_IMPLICIT ? 465 : 587;
    g_ups[0].verify_name = s_up_host;
    g_ups[0].max_message_size = b0 & 0x08 ? 2000 : 0;
    g_ups[0].hide = s_hide;
    g_ups[0].nhide = 3;
    g_ups[1] = g_ups[0];
    g_ups[1].name = s_up_b_name;

    memset(g_brands, 0, sizeof(g_brands));
    g_brands[0].name = s_brand_name;
    g_brands[0].hostname = s_hostname;
    g_brands[0].upstream = &g_ups[0];
    g_brands[1].name = s_brand_b_name;
    g_brands[1].hostname = s_hostname_b;
    g_brands[1].upstream = &g_ups[1];

    memset(&g_lc, 0, sizeof(g_lc));
    g_lc.name = s_listener_name;
    g_lc.tls = b0 & 0x01 ? RL_TLS_IMPLICIT : RL_TLS_STARTTLS;
    g_lc.require_tls = (b0 & 0x02) != 0;
    g_lc.brand = &g_brands[0];

    memset(&g_cfg, 0, sizeof(g_cfg));
    g_cfg.path = s_path;
    g_cfg.refs = 1;
    g_cfg.banner = s_banner;
    g_cfg.log_level = RL_LOG_ERROR;
    g_cfg.handshake_timeout_ms = 1000;
    g_cfg.command_timeout_ms = 2000;
    g_cfg.data_timeout_ms = 3000;
    g_cfg.upstream_connect_timeout_ms = 1000;
    g_cfg.upstream_timeout_ms = 5000;
    g_cfg.max_line = RL_SMTP_LINE_MIN + (b1 * (4096 - RL_SMTP_LINE_MIN)) / 255;
    g_cfg.max_errors = 3 + b2 % 8;
    g_cfg.max_connections = 100;
    g_cfg.max_connections_per_ip = 100;
    g_cfg.bare_newline_reject = (b0 & 0x04) != 0;
    g_cfg.listeners = &g_lc;
    g_cfg.nlisteners = 1;
    g_cfg.brands = g_brands;
    g_cfg.nbrands = 2;
    g_cfg.upstreams = g_ups;
    g_cfg.nupstreams = 2;

    memset(&g_snap, 0, sizeof(g_snap));
    atomic_init(&g_snap.refs, 1);
    g_snap.cfg = &g_cfg;

    memset(&g_ctx, 0, sizeof(g_ctx));
    g_ctx.loop = &g_loop;
    g_ctx.snap = &g_snap;
    g_ctx.id_seed = 0x5eed;
    g_ctx.shared = &g_shared;
    g_shared.nsessions = g_shared.nupstreams = 0;

    fake_reset();
    fake.on_write = on_write;
    fake.on_free = on_free;
    fake.on_enter = log_enter;
    fake.on_leave = log_leave;
    fake.sni_null = (b0 & 0x40) != 0;
    /* The brand the client's SNI names; without SNI, the default. */
    fake.brand = !fake.sni_null && (b2 & 0x08) != 0 ? 1 : 0;
    fake.resolve_fail_start = (b2 & 0xf8) == 0xf8;

    g_debug = (b0 & 0x20) != 0;
    rl_log_setup(g_debug ? RL_LOG_DEBUG : RL_LOG_ERROR, (b0 & 0x80) != 0);
    if (g_debug) {
        if (ftruncate(g_log_fd, 0) != 0 || lseek(g_log_fd, 0, SEEK_SET) != 0)
            fake_fail("fake: cannot reset the log file");
    }

    memset(g_tok, 0, sizeof(g_tok));
    g_tok_next = 1;
    g_up_eods = g_cl_eods = 0;
    g_cs_len = 0;
    g_client = NULL;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[] = "/tmp/fuzz_session_log_XXXXXX";

    (void)argc;
    (void)argv;
    if (uv_loop_init(&g_loop) != 0)
        abort();
    g_cs = malloc(CLIENT_STREAM_MAX);
    g_saved_stderr = dup(2);
    g_log_fd = mkstemp(path);
    if (g_cs == NULL || g_saved_stderr < 0 || g_log_fd < 0)
        abort();
    unlink(path);
    fake_stderr_fd = g_saved_stderr;
    g_trace = getenv("FUZZ_SESSION_TRACE") != NULL;
    if (__sanitizer_set_report_fd != NULL)
        __sanitizer_set_report_fd((void *)(intptr_t)g_saved_stderr);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader r = {data, size};
    int rc;

    if (size < 3)
        return 0;
    setup_world(&r);

    fake_enter();
    rc = rl_session_accept(&g_ctx, &g_snap, &g_lc, NULL);
    fake_leave();
    if (rc != 0)
        fake_fail("rl_session_accept failed: %d", rc);
    for (struct rl_conn *c = fake.conns; c != NULL; c = c->next)
        if (c->role == FAKE_CLIENT)
            g_client = c;
    if (g_client == NULL)
        fake_fail("no client conn after accept");

    for (int ops = 0; ops < OPS_MAX && r.n > 0; ops++)
        drive_op(&r);

    drain();

    check_eods();
    if (g_ctx.nsessions != 0 || g_ctx.sessions != NULL)
        fake_fail("session not freed after both conns closed");
    if (g_snap.refs != 1)
        fake_fail("snapshot references leaked: %d", g_snap.refs);
    if (g_debug)
        log_check();
    return 0;
}
