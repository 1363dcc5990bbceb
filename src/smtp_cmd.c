/*
 * smtp_cmd.c - finds command lines in the client's bytes and recognises the
 * verb (RFC 5321 §4.1).  Owns nothing but the verb table: results point into
 * the caller's buffer.  Must not allocate, log or do I/O, and must never read
 * past p[len - 1] (the input is often the tail of a socket buffer).
 */
#include <string.h>

#include "relabel/errors.h"
#include "relabel/smtp.h"

static const char *const cmd_verbs[] = {
#define RL_SMTP_VERB_STR(name, str) str,
    RL_SMTP_VERB_MAP(RL_SMTP_VERB_STR)
#undef RL_SMTP_VERB_STR
};

#define CMD_NVERBS (sizeof(cmd_verbs) / sizeof(cmd_verbs[0]))

const char *
rl_smtp_verb_str(enum rl_smtp_verb verb)
{
    if ((size_t)verb >= CMD_NVERBS)
        return "";
    return cmd_verbs[verb];
}

/* ASCII-only on purpose: verbs are ASCII, and the C library's case folding
 * would follow the process locale. */
static int
cmd_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool
cmd_word_equal(const char *w, size_t n, const char *verb)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (verb[i] == '\0' || cmd_lower((unsigned char)w[i]) != cmd_lower((unsigned char)verb[i]))
            return false;
    }
    return verb[n] == '\0';
}

int
rl_smtp_line(const char *p, size_t len, size_t max, const char **line, size_t *line_len,
             size_t *used)
{
    size_t window = len < max ? len : max;
    const char *lf = memchr(p, '\n', window);
    size_t n, end;

    *line = NULL;
    *line_len = 0;
    if (lf == NULL) {
        if (len < max) {
            *used = 0;
            return RL_SMTP_MORE;
        }
        /* The line is over the limit.  If its end is already here, skip
         * exactly through it so that pipelined commands after it survive
         * (RFC 2920: each of them is owed a reply); otherwise the caller
         * keeps discarding until the next LF. */
        lf = len > max ? memchr(p + max, '\n', len - max) : NULL;
        *used = lf != NULL ? (size_t)(lf - p) + 1 : len;
        return RL_E_LINE_TOO_LONG;
    }
    end = (size_t)(lf - p);
    n = end > 0 && p[end - 1] == '\r' ? end - 1 : end;
    *used = end + 1;
    /* RFC 5321 §2.3.8: CR and LF only as the CRLF pair.  A stray CR or a NUL
     * inside a command could be read differently by the upstream, so the
     * whole line is refused. */
    if (memchr(p, '\r', n) != NULL || memchr(p, '\0', n) != NULL)
        return RL_E_BAD_BYTE;
    *line = p;
    *line_len = n;
    return RL_SMTP_OK;
}

int
rl_smtp_cmd_parse(const char *p, size_t len, size_t max, struct rl_smtp_cmd *cmd, size_t *used)
{
    const char *line;
    size_t n, w, a, v;
    int rc;

    memset(cmd, 0, sizeof(*cmd));
    cmd->verb = RL_SMTP_UNKNOWN;
    rc = rl_smtp_line(p, len, max, &line, &n, used);
    if (rc != RL_SMTP_OK)
        return rc;
    cmd->line = line;
    cmd->line_len = n;

    /* RFC 5321 §4.1.1: the verb is separated from its arguments by SP. */
    for (w = 0; w < n && line[w] != ' '; w++)
        ;
    for (a = w; a < n && line[a] == ' '; a++)
        ;
    cmd->arg = line + a;
    cmd->arg_len = n - a;
    for (v = 1; v < CMD_NVERBS; v++) {
        if (cmd_word_equal(line, w, cmd_verbs[v])) {
            cmd->verb = (enum rl_smtp_verb)v;
            break;
        }
    }
    return RL_SMTP_OK;
}
