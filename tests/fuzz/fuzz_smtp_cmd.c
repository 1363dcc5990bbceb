/*
 * fuzz_smtp_cmd.c - rl_smtp_line() and rl_smtp_cmd_parse() against their
 * contract in smtp.h, at several line limits.
 *
 * Checked for every call: the return value is one of the documented ones;
 * *used <= len; an OK line lies inside the input, ends at the first LF,
 * has no CR/LF/NUL and is what is left after removing the terminator (LF or
 * CRLF); MORE only when there is no LF and len < max; LINE_TOO_LONG only
 * when no LF lies within max bytes, with *used through the next LF or the
 * whole input; BAD_BYTE only for a complete line holding a NUL or a stray
 * CR.  The verb is the first word compared case-insensitively with the verb
 * table, the argument starts after the verb and its spaces.  Parsing a
 * prefix that ends after the line gives the same answer; consuming
 * command after command terminates.
 */
#include "fuzz_common.h"

#include "relabel/errors.h"
#include "relabel/smtp.h"

static const enum rl_smtp_verb cmd_all_verbs[] = {
    RL_SMTP_HELO, RL_SMTP_EHLO, RL_SMTP_MAIL, RL_SMTP_RCPT,     RL_SMTP_DATA,
    RL_SMTP_BDAT, RL_SMTP_RSET, RL_SMTP_NOOP, RL_SMTP_QUIT,     RL_SMTP_VRFY,
    RL_SMTP_EXPN, RL_SMTP_HELP, RL_SMTP_AUTH, RL_SMTP_STARTTLS,
};

/* What the contract says the verb of this line must be. */
static enum rl_smtp_verb
cmd_expected_verb(const char *line, size_t n)
{
    size_t w, i;

    for (w = 0; w < n && line[w] != ' '; w++)
        ;
    for (i = 0; i < sizeof(cmd_all_verbs) / sizeof(cmd_all_verbs[0]); i++) {
        if (fuzz_ieq(line, w, rl_smtp_verb_str(cmd_all_verbs[i])))
            return cmd_all_verbs[i];
    }
    return RL_SMTP_UNKNOWN;
}

/* Checks one rl_smtp_line() result for p[0..len) against the contract. */
static void
cmd_check_line(const char *p, size_t len, size_t max, int rc, const char *line, size_t line_len,
               size_t used)
{
    size_t window = len < max ? len : max;
    const char *lf = window > 0 ? memchr(p, '\n', window) : NULL;

    FUZZ_CHECK(used <= len);
    switch (rc) {
    case RL_SMTP_OK:
        FUZZ_CHECK(lf != NULL);
        FUZZ_CHECK(used == (size_t)(lf - p) + 1);
        FUZZ_CHECK(used <= max);
        FUZZ_CHECK(line == p);
        FUZZ_CHECK(fuzz_within(line, line_len, p, len));
        FUZZ_CHECK(line_len + 1 == used || (line_len + 2 == used && p[line_len] == '\r'));
        /* A CRLF terminator is taken whole. */
        FUZZ_CHECK(line_len + 1 != used || line_len == 0 || p[line_len - 1] != '\r');
        FUZZ_CHECK(!fuzz_has(line, line_len, '\r'));
        FUZZ_CHECK(!fuzz_has(line, line_len, '\n'));
        FUZZ_CHECK(!fuzz_has(line, line_len, '\0'));
        break;
    case RL_SMTP_MORE:
        FUZZ_CHECK(len < max);
        FUZZ_CHECK(lf == NULL);
        FUZZ_CHECK(used == 0);
        break;
    case RL_E_LINE_TOO_LONG:
        FUZZ_CHECK(len >= max);
        FUZZ_CHECK(lf == NULL);
        FUZZ_CHECK(used > 0);
        if (fuzz_has(p, len, '\n')) {
            /* Skipped through the first LF (which lies beyond max). */
            FUZZ_CHECK(p[used - 1] == '\n');
            FUZZ_CHECK(!fuzz_has(p, used - 1, '\n'));
        } else {
            FUZZ_CHECK(used == len);
        }
        break;
    case RL_E_BAD_BYTE: {
        size_t n;

        FUZZ_CHECK(lf != NULL);
        FUZZ_CHECK(used == (size_t)(lf - p) + 1);
        n = used - 1;
        if (n > 0 && p[n - 1] == '\r')
            n--;
        FUZZ_CHECK(fuzz_has(p, n, '\r') || fuzz_has(p, n, '\0'));
        break;
    }
    default:
        FUZZ_CHECK(!"unexpected rl_smtp_line result");
    }
}

static void
cmd_check_cmd(const char *p, size_t len, size_t max)
{
    const char *line;
    size_t line_len, used, used2, prefix;
    struct rl_smtp_cmd cmd;
    int rc, rc2;

    rc = rl_smtp_line(p, len, max, &line, &line_len, &used);
    cmd_check_line(p, len, max, rc, line, line_len, used);

    rc2 = rl_smtp_cmd_parse(p, len, max, &cmd, &used2);
    FUZZ_CHECK(rc2 == rc);
    FUZZ_CHECK(used2 == used);
    if (rc == RL_SMTP_OK) {
        FUZZ_CHECK(cmd.line == line && cmd.line_len == line_len);
        FUZZ_CHECK(cmd.verb == cmd_expected_verb(line, line_len));
        FUZZ_CHECK(fuzz_within(cmd.arg, cmd.arg_len, line, line_len));
        FUZZ_CHECK(cmd.arg + cmd.arg_len == line + line_len);
        /* The argument starts after the first word and the spaces after it. */
        {
            size_t a = (size_t)(cmd.arg - line), w;

            for (w = 0; w < line_len && line[w] != ' '; w++)
                ;
            FUZZ_CHECK(a >= w);
            for (size_t k = w; k < a; k++)
                FUZZ_CHECK(line[k] == ' ');
            FUZZ_CHECK(a == line_len || line[a] != ' ');
        }
        if (cmd.verb != RL_SMTP_UNKNOWN) {
            const char *v = rl_smtp_verb_str(cmd.verb);

            FUZZ_CHECK(line_len >= strlen(v));
            FUZZ_CHECK(line_len == strlen(v) || line[strlen(v)] == ' ');
        }
    }

    /* The answer depends only on the bytes up to the end of the line: cut
     * the input right after it (in its own block, so over-reads show). */
    if (rc == RL_SMTP_OK || rc == RL_E_BAD_BYTE) {
        char *q = fuzz_dup(p, used);
        const char *line2;
        size_t line_len2;

        prefix = used;
        rc2 = rl_smtp_line(q, prefix, max, &line2, &line_len2, &used2);
        FUZZ_CHECK(rc2 == rc && used2 == used);
        if (rc == RL_SMTP_OK)
            FUZZ_CHECK(line2 == q && line_len2 == line_len);
        free(q);
    }
}

/* Consumes the input command after command as the session does. */
static void
cmd_consume(const char *p, size_t len, size_t max)
{
    size_t off = 0, steps = 0;

    while (off < len) {
        struct rl_smtp_cmd cmd;
        size_t used;
        int rc = rl_smtp_cmd_parse(p + off, len - off, max, &cmd, &used);

        FUZZ_CHECK(++steps <= len);
        if (rc == RL_SMTP_MORE)
            break;
        FUZZ_CHECK(used > 0 && used <= len - off);
        if (rc == RL_E_LINE_TOO_LONG && p[off + used - 1] != '\n') {
            /* The caller discards up to the next LF still to come. */
            FUZZ_CHECK(off + used == len);
        }
        off += used;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t maxes[] = {1, 2, 3, 8, 64, 512, 4096};
    const char *p = (const char *)data;
    size_t i;

    for (i = 0; i < sizeof(maxes) / sizeof(maxes[0]); i++) {
        cmd_check_cmd(p, size, maxes[i]);
        cmd_consume(p, size, maxes[i]);
    }
    /* A limit that is never reached. */
    cmd_check_cmd(p, size, size + 1);
    cmd_consume(p, size, size + 1);
    return 0;
}
