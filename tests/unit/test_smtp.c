/*
 * test_smtp.c - the pure SMTP parsers: command lines, replies, provider-name
 * hiding, EHLO rendering and the DATA scanner.  Inputs are fed whole, split
 * at every position, byte by byte and at random points, and the short ones
 * also sit at the very end of a page followed by a PROT_NONE page, so that
 * any read past the given length crashes the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "relabel/errors.h"
#include "relabel/smtp.h"

#define S(lit) (lit), (sizeof(lit) - 1)
/* The literal at the end of the guard page, and its length. */
#define G(lit) guard_place(S(lit)), (sizeof(lit) - 1)

/* ---- guard page ------------------------------------------------------ */

static char *guard_base;
static size_t guard_psz;

/* Copies s to the last n bytes of a page whose successor is PROT_NONE. */
static const char *
guard_place(const char *s, size_t n)
{
    char *p;

    if (guard_base == NULL) {
        void *m;

        guard_psz = (size_t)sysconf(_SC_PAGESIZE);
        m = mmap(NULL, 2 * guard_psz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(m != MAP_FAILED);
        guard_base = m;
        assert_int_equal(mprotect(guard_base + guard_psz, guard_psz, PROT_NONE), 0);
    }
    assert_true(n <= guard_psz);
    p = guard_base + guard_psz - n;
    if (n > 0)
        memcpy(p, s, n);
    return p;
}

/* ---- command lines --------------------------------------------------- */

static void
test_verb_str(void **state)
{
    assert_string_equal(rl_smtp_verb_str(RL_SMTP_UNKNOWN), "");
    assert_string_equal(rl_smtp_verb_str(RL_SMTP_EHLO), "EHLO");
    assert_string_equal(rl_smtp_verb_str(RL_SMTP_STARTTLS), "STARTTLS");
    assert_string_equal(rl_smtp_verb_str(RL_SMTP_QUIT), "QUIT");
    assert_string_equal(rl_smtp_verb_str((enum rl_smtp_verb)999), "");
}

static void
test_cmd_verbs(void **state)
{
    static const enum rl_smtp_verb all[] = {
        RL_SMTP_HELO, RL_SMTP_EHLO, RL_SMTP_MAIL, RL_SMTP_RCPT,     RL_SMTP_DATA,
        RL_SMTP_BDAT, RL_SMTP_RSET, RL_SMTP_NOOP, RL_SMTP_QUIT,     RL_SMTP_VRFY,
        RL_SMTP_EXPN, RL_SMTP_HELP, RL_SMTP_AUTH, RL_SMTP_STARTTLS,
    };
    struct rl_smtp_cmd cmd;
    char line[64];
    size_t i, k, used;

    for (i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        const char *v = rl_smtp_verb_str(all[i]);
        size_t n = strlen(v);

        for (k = 0; k < 3; k++) {
            size_t j;

            /* k = 0: as is, 1: lower case, 2: alternating case */
            for (j = 0; j < n; j++) {
                char c = v[j];

                if ((k == 1 || (k == 2 && j % 2 == 1)) && c >= 'A' && c <= 'Z')
                    c = (char)(c - 'A' + 'a');
                line[j] = c;
            }
            memcpy(line + n, " x\r\n", 4);
            assert_int_equal(rl_smtp_cmd_parse(line, n + 4, 512, &cmd, &used), RL_SMTP_OK);
            assert_int_equal(cmd.verb, all[i]);
            assert_int_equal(used, n + 4);
            assert_int_equal(cmd.arg_len, 1);
            assert_memory_equal(cmd.arg, "x", 1);
            /* And with nothing after the verb. */
            memcpy(line + n, "\r\n", 2);
            assert_int_equal(rl_smtp_cmd_parse(line, n + 2, 512, &cmd, &used), RL_SMTP_OK);
            assert_int_equal(cmd.verb, all[i]);
            assert_int_equal(cmd.arg_len, 0);
        }
    }
}

static void
test_cmd_args(void **state)
{
    struct rl_smtp_cmd cmd;
    size_t used;

    assert_int_equal(rl_smtp_cmd_parse(S("MAIL   FROM:<a@b> SIZE=10\r\n"), 512, &cmd, &used),
                     RL_SMTP_OK);
    assert_int_equal(cmd.verb, RL_SMTP_MAIL);
    assert_int_equal(cmd.line_len, 25);
    assert_memory_equal(cmd.line, "MAIL   FROM:<a@b> SIZE=10", 25);
    assert_int_equal(cmd.arg_len, 18);
    assert_memory_equal(cmd.arg, "FROM:<a@b> SIZE=10", 18);

    assert_int_equal(rl_smtp_cmd_parse(S("QUIT\r\n"), 512, &cmd, &used), RL_SMTP_OK);
    assert_int_equal(cmd.verb, RL_SMTP_QUIT);
    assert_int_equal(cmd.arg_len, 0);
    assert_true(cmd.arg == cmd.line + 4);

    assert_int_equal(rl_smtp_cmd_parse(S("rcpt TO:<x>  \r\n"), 512, &cmd, &used), RL_SMTP_OK);
    assert_int_equal(cmd.verb, RL_SMTP_RCPT);
    assert_int_equal(cmd.arg_len, 8);

    /* The verb ends only at a space or the end of the line. */
    static const char *const unknown[] = {
        "MAILFROM:<x>\r\n", "STARTTLSX\r\n", " NOOP\r\n",  "\r\n",
        "XYZZY 1\r\n",      "EHL\r\n",       "NOOP\t\r\n", "HELOx y\r\n",
    };
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        assert_int_equal(rl_smtp_cmd_parse(unknown[i], strlen(unknown[i]), 512, &cmd, &used),
                         RL_SMTP_OK);
        assert_int_equal(cmd.verb, RL_SMTP_UNKNOWN);
        assert_int_equal(used, strlen(unknown[i]));
    }
}

static void
test_cmd_terminators(void **state)
{
    static const char in[] = "EHLO a\r\nMAIL FROM:<>\nRCPT TO:<b>\r\nDATA\n";
    static const enum rl_smtp_verb want[] = {RL_SMTP_EHLO, RL_SMTP_MAIL, RL_SMTP_RCPT,
                                             RL_SMTP_DATA};
    static const size_t want_used[] = {8, 13, 13, 5};
    static const size_t want_len[] = {6, 12, 11, 4};
    struct rl_smtp_cmd cmd;
    size_t off = 0, used, i;

    for (i = 0; i < 4; i++) {
        assert_int_equal(rl_smtp_cmd_parse(in + off, sizeof(in) - 1 - off, 512, &cmd, &used),
                         RL_SMTP_OK);
        assert_int_equal(cmd.verb, want[i]);
        assert_int_equal(used, want_used[i]);
        assert_int_equal(cmd.line_len, want_len[i]);
        off += used;
    }
    assert_int_equal(off, sizeof(in) - 1);
}

static void
test_cmd_more(void **state)
{
    static const char in[] = "NOOP\r\n";
    struct rl_smtp_cmd cmd;
    size_t k, used;

    for (k = 0; k < sizeof(in) - 1; k++) {
        const char *p = guard_place(in, k);

        assert_int_equal(rl_smtp_cmd_parse(p, k, 512, &cmd, &used), RL_SMTP_MORE);
        assert_int_equal(used, 0);
    }
    assert_int_equal(rl_smtp_cmd_parse(G(in), 512, &cmd, &used), RL_SMTP_OK);
    assert_int_equal(cmd.verb, RL_SMTP_NOOP);
    assert_int_equal(used, 6);
    /* A NUL or stray CR in a line that is not complete yet is not decided. */
    assert_int_equal(rl_smtp_cmd_parse(G("NO\0OP"), 512, &cmd, &used), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_cmd_parse(G("NOOP\r\r"), 512, &cmd, &used), RL_SMTP_MORE);
}

static void
test_cmd_too_long(void **state)
{
    struct rl_smtp_cmd cmd;
    const char *line;
    size_t used, n;

    /* max counts the terminator. */
    assert_int_equal(rl_smtp_cmd_parse(S("0123456789abcd\r\n"), 16, &cmd, &used), RL_SMTP_OK);
    assert_int_equal(used, 16);
    assert_int_equal(rl_smtp_line(S("0123456789abcde\n"), 16, &line, &n, &used), RL_SMTP_OK);
    assert_int_equal(n, 15);
    assert_int_equal(rl_smtp_cmd_parse(S("0123456789abcde\r\n"), 16, &cmd, &used),
                     RL_E_LINE_TOO_LONG);
    assert_int_equal(used, 17);
    assert_int_equal(rl_smtp_cmd_parse(S("0123456789abcdef\n"), 16, &cmd, &used),
                     RL_E_LINE_TOO_LONG);
    assert_int_equal(used, 17);

    /* Not ended yet: everything is discarded, the caller skips to the LF. */
    assert_int_equal(rl_smtp_cmd_parse(G("0123456789abcdef"), 16, &cmd, &used), RL_E_LINE_TOO_LONG);
    assert_int_equal(used, 16);
    assert_int_equal(rl_smtp_cmd_parse(G("0123456789abcdefgh"), 16, &cmd, &used),
                     RL_E_LINE_TOO_LONG);
    assert_int_equal(used, 18);
    assert_int_equal(rl_smtp_cmd_parse(G("0123456789abcde"), 16, &cmd, &used), RL_SMTP_MORE);

    /* Ended in the buffer: skip exactly that line, keep the next command. */
    static const char two[] = "MAIL FROM:<aaaaaaaaaaaaaaaaaaaaaaaa>\r\nNOOP\r\n";
    assert_int_equal(rl_smtp_cmd_parse(S(two), 16, &cmd, &used), RL_E_LINE_TOO_LONG);
    assert_int_equal(used, sizeof(two) - 1 - 6);
    assert_int_equal(two[used - 1], '\n');
    assert_int_equal(rl_smtp_cmd_parse(two + used, 6, 16, &cmd, &used), RL_SMTP_OK);
    assert_int_equal(cmd.verb, RL_SMTP_NOOP);
}

static void
test_cmd_bad_bytes(void **state)
{
    static const struct {
        const char *in;
        size_t len, used;
    } bad[] = {
        {"NO\0OP\r\nQUIT\r\n", 13, 7}, {"NO\rOP\r\nQUIT\r\n", 13, 7}, {"NOOP\r\r\nQUIT\r\n", 13, 7},
        {"\0\nQUIT\r\n", 8, 2},        {"\r\r\nQUIT\r\n", 9, 3},      {"NOOP\rQUIT\n", 10, 10},
        {"MAIL FROM:<a\0>\n", 15, 15},
    };
    struct rl_smtp_cmd cmd;
    size_t i, used;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *p = guard_place(bad[i].in, bad[i].len);

        assert_int_equal(rl_smtp_cmd_parse(p, bad[i].len, 512, &cmd, &used), RL_E_BAD_BYTE);
        assert_int_equal(used, bad[i].used);
        if (used < bad[i].len) {
            assert_int_equal(rl_smtp_cmd_parse(p + used, bad[i].len - used, 512, &cmd, &used),
                             RL_SMTP_OK);
            assert_int_equal(cmd.verb, RL_SMTP_QUIT);
        }
    }
}

/* ---- replies ----------------------------------------------------------- */

static const char mailgun_ehlo[] = "250-smtp-a1.mailgun.org\r\n"
                                   "250-AUTH PLAIN LOGIN\r\n"
                                   "250-SIZE 52428800\r\n"
                                   "250-8BITMIME\r\n"
                                   "250-SMTPUTF8\r\n"
                                   "250-PIPELINING\r\n"
                                   "250 STARTTLS\r\n";

static void
test_reply_single(void **state)
{
    struct rl_smtp_reply r;

    assert_int_equal(rl_smtp_reply_parse(S("250 OK\r\n"), 512, &r), RL_SMTP_OK);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.len, 8);
    assert_int_equal(r.lines, 1);
    assert_int_equal(rl_smtp_reply_parse(S("221\r\n"), 512, &r), RL_SMTP_OK);
    assert_int_equal(r.code, 221);
    assert_int_equal(r.len, 5);
    assert_int_equal(rl_smtp_reply_parse(S("354 go ahead\n"), 512, &r), RL_SMTP_OK);
    assert_int_equal(r.code, 354);
    assert_int_equal(r.len, 13);
    /* The next reply stays in the buffer (RFC 2920 pipelining). */
    assert_int_equal(rl_smtp_reply_parse(S("250 2.1.0 Ok\r\n550 5.1.1 No\r\n"), 512, &r),
                     RL_SMTP_OK);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.len, 14);
}

static void
test_reply_multi(void **state)
{
    char buf[512];
    struct rl_smtp_reply r;
    size_t n = sizeof(mailgun_ehlo) - 1;

    assert_int_equal(rl_smtp_reply_parse(mailgun_ehlo, n, 512, &r), RL_SMTP_OK);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.len, n);
    assert_int_equal(r.lines, 7);
    memcpy(buf, mailgun_ehlo, n);
    memcpy(buf + n, "221 bye\r\n", 9);
    assert_int_equal(rl_smtp_reply_parse(buf, n + 9, 512, &r), RL_SMTP_OK);
    assert_int_equal(r.len, n);
    assert_int_equal(rl_smtp_reply_parse(S("250-a\n250-\r\n250\r\n"), 512, &r), RL_SMTP_OK);
    assert_int_equal(r.lines, 3);
    assert_int_equal(r.len, 17);
}

static void
test_reply_malformed(void **state)
{
    static const char *const bad[] = {
        "25 x\r\n",
        "abc\r\n",
        "250xhello\r\n",
        "199 x\r\n",
        "600 x\r\n",
        "2a0 x\r\n",
        "\r\n",
        "\n",
        "250 a\rb\r\n",
        "250-a\r\n\r\n",
        "250\t\r\n",
        "HTTP/1.1 400\r\n",
        "250-a\r\n251 b\r\n",
        "250-a\r\n251-b\r\n250 c\r\n",
        "250 a\r\r\n",
        /* Decided before the line is complete. */
        "HTTP",
        "1",
        "250x",
        "250-a\r\n251",
        "25\r",
    };
    struct rl_smtp_reply r;
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = strlen(bad[i]);

        assert_int_equal(rl_smtp_reply_parse(guard_place(bad[i], n), n, 512, &r), RL_E_PROTO);
    }
    assert_int_equal(rl_smtp_reply_parse(G("250 a\0b\r\n"), 512, &r), RL_E_PROTO);
    assert_int_equal(rl_smtp_reply_parse(G("250-\0\r\n250 x\r\n"), 512, &r), RL_E_PROTO);
}

static void
test_reply_incomplete(void **state)
{
    static const char *const good[] = {
        mailgun_ehlo, "250 OK\r\n", "221\r\n", "354 go\n", "250-a\n250 b\n", "250-\r\n250\r\n",
    };
    struct rl_smtp_reply r;
    size_t i, k;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        size_t n = strlen(good[i]);

        for (k = 0; k < n; k++) {
            assert_int_equal(rl_smtp_reply_parse(guard_place(good[i], k), k, 512, &r),
                             RL_SMTP_MORE);
        }
        assert_int_equal(rl_smtp_reply_parse(guard_place(good[i], n), n, 512, &r), RL_SMTP_OK);
        assert_int_equal(r.len, n);
    }
}

static void
test_reply_too_long(void **state)
{
    struct rl_smtp_reply r;
    size_t n = sizeof(mailgun_ehlo) - 1;

    assert_int_equal(rl_smtp_reply_parse(mailgun_ehlo, n, n, &r), RL_SMTP_OK);
    assert_int_equal(rl_smtp_reply_parse(mailgun_ehlo, n, n - 1, &r), RL_E_LINE_TOO_LONG);
    assert_int_equal(rl_smtp_reply_parse(mailgun_ehlo, n - 1, n - 1, &r), RL_E_LINE_TOO_LONG);
    assert_int_equal(rl_smtp_reply_parse(mailgun_ehlo, n - 2, n - 1, &r), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_reply_parse(G("250 aaaaaaaa"), 8, &r), RL_E_LINE_TOO_LONG);
}

static void
test_reply_lines(void **state)
{
    static const char *const want[] = {
        "smtp-a1.mailgun.org", "AUTH PLAIN LOGIN", "SIZE 52428800", "8BITMIME", "SMTPUTF8",
        "PIPELINING",          "STARTTLS"};
    size_t off = 0, tlen, i = 0;
    const char *text;
    bool last;

    while (rl_smtp_reply_line(mailgun_ehlo, sizeof(mailgun_ehlo) - 1, &off, &text, &tlen, &last)) {
        assert_true(i < 7);
        assert_int_equal(tlen, strlen(want[i]));
        assert_memory_equal(text, want[i], tlen);
        assert_int_equal(last, i == 6);
        i++;
    }
    assert_int_equal(i, 7);

    off = 0;
    assert_true(rl_smtp_reply_line(S("250-\n250\r\n"), &off, &text, &tlen, &last));
    assert_int_equal(tlen, 0);
    assert_false(last);
    assert_true(rl_smtp_reply_line(S("250-\n250\r\n"), &off, &text, &tlen, &last));
    assert_int_equal(tlen, 0);
    assert_true(last);
    assert_false(rl_smtp_reply_line(S("250-\n250\r\n"), &off, &text, &tlen, &last));

    /* At the end of a page, without a final LF. */
    off = 0;
    const char *p = guard_place("250-a\r\n250 bc", 13);
    assert_true(rl_smtp_reply_line(p, 13, &off, &text, &tlen, &last));
    assert_true(rl_smtp_reply_line(p, 13, &off, &text, &tlen, &last));
    assert_int_equal(tlen, 2);
    assert_memory_equal(text, "bc", 2);
    assert_true(last);
    assert_false(rl_smtp_reply_line(p, 13, &off, &text, &tlen, &last));
}

/* ---- hiding the provider --------------------------------------------- */

static const char *const mg_names[] = {"mailgun.org", "postgun.com", "mailgun"};

static void
hide_check(const char *in, const char *want)
{
    char out[256];
    size_t n = strlen(in);
    size_t w =
        rl_smtp_hide(guard_place(in, n), n, mg_names, 3, "smtp.example.com", out, sizeof(out));

    assert_int_equal(w, strlen(want));
    assert_memory_equal(out, want, w);
}

static void
test_hide(void **state)
{
    hide_check("smtp-a1.mailgun.org", "smtp.example.com");
    hide_check("x.postgun.com", "smtp.example.com");
    hide_check("Mailgun", "smtp.example.com");
    hide_check("220 Mailgun Influx ready", "220 smtp.example.com Influx ready");
    hide_check("See you later. Yours truly, Mailgun",
               "See you later. Yours truly, smtp.example.com");
    hide_check("SMTP.MailGun.ORG ESMTP", "smtp.example.com ESMTP");
    hide_check("MAILGUN.ORG", "smtp.example.com");
    hide_check("<postmaster@mailgun.org>", "<postmaster@smtp.example.com>");
    hide_check("Hello from smtp.mailgun.org.", "Hello from smtp.example.com.");
    hide_check("a1.mailgun.org, x.postgun.com; mailgun",
               "smtp.example.com, smtp.example.com; smtp.example.com");
    /* A name anywhere as whole labels ('.', '-', '_' separate them) hides
     * the whole token. */
    hide_check("mailgun.organic", "smtp.example.com");
    hide_check("mailgun-smtp", "smtp.example.com");
    hide_check("relay-mailgun-eu.example.net", "smtp.example.com");
    hide_check("mx_mailgun.org.internal", "smtp.example.com");
    /* Only whole labels: these merely contain the pattern. */
    hide_check("notmailgun.organic", "notmailgun.organic");
    hide_check("notmailgun.org", "notmailgun.org");
    hide_check("mailgunner", "mailgunner");
    hide_check("xpostgun.com", "xpostgun.com");
    hide_check("postgun.community", "postgun.community");
    hide_check("", "");
    hide_check("...", "...");

    /* Truncated at cap, before a token that does not fit whole: a token
     * cut short could name the provider ("mailgunx" -> "mailgun"). */
    char out[16];
    assert_int_equal(rl_smtp_hide(S("220 Mailgun ready"), mg_names, 3, "example", out, 6), 4);
    assert_memory_equal(out, "220 ", 4);
    assert_int_equal(rl_smtp_hide(S("250 mailgunxxxx ok"), mg_names, 3, "ex", out, 11), 4);
    assert_memory_equal(out, "250 ", 4);
    assert_int_equal(rl_smtp_hide(S("250 ab mailgun"), mg_names, 3, "ex", out, 9), 9);
    assert_memory_equal(out, "250 ab ex", 9);
    assert_int_equal(rl_smtp_hide(S("Mailgun"), mg_names, 0, "x", out, sizeof(out)), 7);
    assert_memory_equal(out, "Mailgun", 7);
}

/* ---- EHLO ------------------------------------------------------------- */

static void
test_ehlo_caps(void **state)
{
    uint64_t size = 1;
    unsigned caps = rl_smtp_ehlo_caps(S(mailgun_ehlo), &size);

    assert_int_equal(caps, RL_EHLO_AUTH | RL_EHLO_SIZE | RL_EHLO_8BITMIME | RL_EHLO_SMTPUTF8 |
                               RL_EHLO_PIPELINING | RL_EHLO_STARTTLS);
    assert_int_equal(size, 52428800);

    caps = rl_smtp_ehlo_caps(S("250-STARTTLS\r\n250-size\r\n250-AUTH=PLAIN\r\n250-DSN\r\n"
                               "250 chunking\r\n"),
                             &size);
    assert_int_equal(caps, RL_EHLO_SIZE | RL_EHLO_CHUNKING);
    assert_int_equal(size, 0);

    caps = rl_smtp_ehlo_caps(G("250-x\r\n250 SIZE 99999999999999999999999"), &size);
    assert_int_equal(caps, RL_EHLO_SIZE);
    assert_true(size == UINT64_MAX);
}

static void
ehlo_check(const char *reply, const struct rl_smtp_ehlo_opts *o, const char *want)
{
    char out[1024];
    size_t n = reply != NULL ? strlen(reply) : 0, len = 0, want_len = strlen(want), cap;
    const char *p = reply != NULL ? guard_place(reply, n) : NULL;

    assert_int_equal(rl_smtp_ehlo_render(p, n, o, out, sizeof(out), &len), RL_SMTP_OK);
    assert_int_equal(len, want_len);
    assert_memory_equal(out, want, len);
    /* Exactly enough room works; one byte less is RL_E_FULL. */
    assert_int_equal(rl_smtp_ehlo_render(p, n, o, out, want_len, &len), RL_SMTP_OK);
    for (cap = 0; cap < want_len; cap++)
        assert_int_equal(rl_smtp_ehlo_render(p, n, o, out, cap, &len), RL_E_FULL);
}

static void
test_ehlo_render(void **state)
{
    struct rl_smtp_ehlo_opts o = {"smtp.example.com", false, true, 26214400, NULL};
    struct rl_smtp_reply r;

    ehlo_check(mailgun_ehlo, &o,
               "250-smtp.example.com\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 26214400\r\n"
               "250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n");
    o.starttls = true;
    o.auth = false;
    ehlo_check(mailgun_ehlo, &o,
               "250-smtp.example.com\r\n250-SIZE 26214400\r\n"
               "250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    /* No cap: the upstream's SIZE line as is; a larger cap: upstream's. */
    o.size_cap = 0;
    ehlo_check("250-mx\r\n250-SIZE 52428800\r\n250 PIPELINING\r\n", &o,
               "250-smtp.example.com\r\n250-SIZE 52428800\r\n250-PIPELINING\r\n"
               "250 STARTTLS\r\n");
    o.size_cap = 100000000;
    o.starttls = false;
    ehlo_check("250-mx\r\n250-SIZE 52428800\r\n250 PIPELINING\r\n", &o,
               "250-smtp.example.com\r\n250-SIZE 52428800\r\n250 PIPELINING\r\n");
    /* "SIZE" without a number means no limit: the cap applies. */
    ehlo_check("250-mx\r\n250 SIZE\r\n", &o, "250-smtp.example.com\r\n250 SIZE 100000000\r\n");
    /* Absent: added. */
    ehlo_check("250-mx\r\n250 8BITMIME\r\n", &o,
               "250-smtp.example.com\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n");

    /* relabel answers AUTH itself (a brand's own users): its line
     * replaces the upstream's, and is added when the upstream has none;
     * without auth (before TLS) there is none at all. */
    o.auth_line = "AUTH PLAIN LOGIN";
    o.auth = true;
    o.size_cap = 0;
    ehlo_check("250-mx\r\n250-AUTH CRAM-MD5 XOAUTH2\r\n250 PIPELINING\r\n", &o,
               "250-smtp.example.com\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n");
    ehlo_check("250-mx\r\n250 8BITMIME\r\n", &o,
               "250-smtp.example.com\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n");
    o.auth = false;
    ehlo_check("250-mx\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n", &o,
               "250-smtp.example.com\r\n250 8BITMIME\r\n");
    o.auth_line = NULL;

    /* Dropped: CHUNKING, BINARYMIME, STARTTLS, AUTH=, unknown, duplicates. */
    o.size_cap = 0;
    o.auth = true;
    ehlo_check("250-mx.mailgun.org Hello\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-X-FOO bar\r\n"
               "250-AUTH=PLAIN LOGIN\r\n250-auth plain\r\n250-ENHANCEDSTATUSCODES\r\n"
               "250-dsn\r\n250-PIPELINING\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 VRFY\r\n",
               &o,
               "250-smtp.example.com\r\n250-auth plain\r\n250-ENHANCEDSTATUSCODES\r\n"
               "250-dsn\r\n250 PIPELINING\r\n");

    /* Nothing kept: a single line. */
    ehlo_check("250-mx\r\n250-CHUNKING\r\n250 STARTTLS\r\n", &o, "250 smtp.example.com\r\n");
    ehlo_check("250 mx\r\n", &o, "250 smtp.example.com\r\n");
    ehlo_check(NULL, &o, "250 smtp.example.com\r\n");
    /* A local reply before TLS. */
    o.starttls = true;
    o.size_cap = 26214400;
    ehlo_check(NULL, &o, "250-smtp.example.com\r\n250-SIZE 26214400\r\n250 STARTTLS\r\n");

    /* The rendered reply is a reply. */
    char out[512];
    size_t len;
    o.starttls = false;
    assert_int_equal(rl_smtp_ehlo_render(S(mailgun_ehlo), &o, out, sizeof(out), &len), RL_SMTP_OK);
    assert_int_equal(rl_smtp_reply_parse(out, len, 512, &r), RL_SMTP_OK);
    assert_int_equal(r.len, len);
    assert_int_equal(r.lines, 6);
}

/* ---- DATA ------------------------------------------------------------- */

#define OUT_CAP (1u << 18)

struct result {
    char *out;
    size_t out_len;
    size_t calls;
    size_t used;
    bool done;
    int error;
    uint64_t size;
    int fail; /* the emit callback's return value */
};

static void
res_init(struct result *r)
{
    memset(r, 0, sizeof(*r));
    r->out = malloc(OUT_CAP);
    assert_non_null(r->out);
}

static void
res_free(struct result *r)
{
    free(r->out);
}

static int
res_emit(void *arg, const char *p, size_t n)
{
    struct result *r = arg;

    assert_true(n > 0);
    assert_true(r->out_len + n <= OUT_CAP);
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
    r->calls++;
    return r->fail;
}

/*
 * Scans in[0..len) cut into chunks at cuts[] (ascending), stopping at the
 * end of data as a session would.  Each chunk sits at the end of the guard
 * page when it fits.
 */
static void
data_run(const char *in, size_t len, const size_t *cuts, size_t ncuts, bool reject, uint64_t max,
         struct result *r)
{
    struct rl_smtp_data d;
    size_t from = 0, k;

    rl_smtp_data_init(&d, reject, max);
    r->out_len = r->calls = r->used = 0;
    r->done = false;
    for (k = 0; k <= ncuts && !r->done; k++) {
        size_t to = k < ncuts ? cuts[k] : len;
        size_t n = to - from;
        const char *p = n <= 4096 ? guard_place(in + from, n) : in + from;
        long got = rl_smtp_data_scan(&d, p, n, res_emit, r, &r->done);

        assert_true(got >= 0);
        assert_true((size_t)got <= n);
        if (!r->done)
            assert_int_equal((size_t)got, n);
        r->used += (size_t)got;
        from = to;
    }
    r->error = d.error;
    r->size = d.size;
}

static void
data_once(const char *in, size_t len, bool reject, uint64_t max, struct result *r)
{
    data_run(in, len, NULL, 0, reject, max, r);
}

static void
data_bytewise(const char *in, size_t len, bool reject, uint64_t max, struct result *r)
{
    size_t *cuts = malloc((len + 1) * sizeof(*cuts));
    size_t i;

    assert_non_null(cuts);
    for (i = 0; i < len; i++)
        cuts[i] = i + 1;
    data_run(in, len, cuts, len, reject, max, r);
    free(cuts);
}

/*
 * An independent, line-by-line reading of the rules in smtp.h, to check
 * the streaming scanner against: split at CRLF, bare CR and bare LF; end at
 * "." CRLF after CRLF; the first error stops output.
 */
static void
ref_put(struct result *r, uint64_t max, const char *p, size_t n)
{
    if (r->error != 0 || n == 0)
        return;
    if (max != 0 && r->size + n > max) {
        r->error = RL_E_TOO_BIG;
        return;
    }
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
    r->size += n;
}

static void
ref_fail(struct result *r, int err)
{
    if (r->error == 0)
        r->error = err;
}

static void
data_ref(const char *in, size_t len, bool reject, uint64_t max, struct result *r)
{
    bool proper = true; /* the line started after CRLF */
    size_t i = 0;

    r->out_len = r->used = 0;
    r->size = 0;
    r->error = 0;
    r->done = false;
    while (i < len) {
        size_t j = i, tl;
        bool bare, lone_dot;
        const char *nul;

        while (j < len && in[j] != '\r' && in[j] != '\n')
            j++;
        if (j == len || (in[j] == '\r' && j + 1 == len))
            break;
        bare = !(in[j] == '\r' && in[j + 1] == '\n');
        tl = bare ? 1 : 2;
        lone_dot = j - i == 1 && in[i] == '.';
        if (proper && !bare && lone_dot) {
            if (r->error == 0) {
                memcpy(r->out + r->out_len, ".\r\n", 3);
                r->out_len += 3;
            }
            r->used = j + 2;
            r->done = true;
            return;
        }
        if (proper && lone_dot && bare && reject) {
            /* Refused before anything of the line is sent. */
            ref_fail(r, RL_E_BARE_NEWLINE);
        } else if ((!proper && in[i] == '.') || (proper && lone_dot && bare)) {
            ref_put(r, max, ".", 1);
        }
        nul = memchr(in + i, '\0', j - i);
        if (nul != NULL) {
            ref_put(r, max, in + i, (size_t)(nul - (in + i)));
            ref_fail(r, RL_E_NUL);
        }
        ref_put(r, max, in + i, j - i);
        if (bare && reject)
            ref_fail(r, RL_E_BARE_NEWLINE);
        ref_put(r, max, "\r\n", 2);
        proper = !bare;
        i = j + tl;
    }
    r->used = len;
}

static void
data_same(const struct result *a, const struct result *b, bool output)
{
    assert_int_equal(a->done, b->done);
    assert_int_equal(a->used, b->used);
    assert_int_equal(a->error, b->error);
    if (output) {
        assert_int_equal(a->out_len, b->out_len);
        assert_memory_equal(a->out, b->out, a->out_len);
    }
}

/* What goes upstream: no NUL, CR and LF only as pairs, and exactly `ends`
 * lines that are "." alone, the last of them at the very end. */
static void
data_check_clean(const struct result *r, size_t ends)
{
    size_t i, start = 0, dots = 0;

    for (i = 0; i < r->out_len; i++) {
        char c = r->out[i];

        assert_true(c != '\0');
        if (c == '\r')
            assert_true(i + 1 < r->out_len && r->out[i + 1] == '\n');
        if (c == '\n') {
            assert_true(i > 0 && r->out[i - 1] == '\r');
            if (i - 1 - start == 1 && r->out[start] == '.') {
                dots++;
                assert_int_equal(i + 1, r->out_len);
            }
            start = i + 1;
        }
    }
    assert_int_equal(dots, ends);
}

/* One-shot, every two-chunk split, byte by byte and the reference agree. */
static void
data_check_splits(const char *in, size_t len, bool reject, uint64_t max, struct result *want)
{
    struct result got, ref;
    size_t k;

    res_init(&got);
    res_init(&ref);
    data_once(in, len, reject, max, want);
    data_ref(in, len, reject, max, &ref);
    data_same(want, &ref, want->error == 0);
    for (k = 0; k <= len; k++) {
        data_run(in, len, &k, 1, reject, max, &got);
        data_same(&got, want, want->error != RL_E_TOO_BIG);
    }
    data_bytewise(in, len, reject, max, &got);
    data_same(&got, want, want->error != RL_E_TOO_BIG);
    res_free(&got);
    res_free(&ref);
}

static void
data_expect(const char *in, size_t len, const char *out, size_t out_len, size_t used)
{
    struct result r;

    res_init(&r);
    data_check_splits(in, len, false, 0, &r);
    assert_true(r.done);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.used, used);
    assert_int_equal(r.out_len, out_len);
    assert_memory_equal(r.out, out, out_len);
    assert_int_equal(r.size, out_len - 3);
    data_check_clean(&r, 1);
    res_free(&r);
}

#define DATA_EXPECT(in, out) data_expect(S(in), S(out), sizeof(in) - 1)

static void
test_data_plain(void **state)
{
    struct result r;

    DATA_EXPECT("Subject: x\r\n\r\nhello\r\n.\r\n", "Subject: x\r\n\r\nhello\r\n.\r\n");
    DATA_EXPECT(".\r\n", ".\r\n");
    DATA_EXPECT("\r\n.\r\n", "\r\n.\r\n");
    /* Client dot-stuffing goes through unchanged (RFC 5321 §4.5.2). */
    DATA_EXPECT("..\r\n..foo\r\n.bar\r\n...\r\n.\r\n", "..\r\n..foo\r\n.bar\r\n...\r\n.\r\n");
    DATA_EXPECT("a.\r\n.\r\n", "a.\r\n.\r\n");

    /* Bytes after the end are the next command's. */
    res_init(&r);
    data_once(S("a\r\n.\r\nQUIT\r\n"), false, 0, &r);
    assert_true(r.done);
    assert_int_equal(r.used, 6);
    assert_int_equal(r.calls, 1);

    /* Once done, nothing more is consumed. */
    struct rl_smtp_data d;
    bool done;
    rl_smtp_data_init(&d, false, 0);
    assert_int_equal(rl_smtp_data_scan(&d, S(".\r\nQUIT\r\n"), res_emit, &r, &done), 3);
    assert_true(done);
    assert_int_equal(rl_smtp_data_scan(&d, S("QUIT\r\n"), res_emit, &r, &done), 0);
    assert_true(done);

    /* Not ended: everything consumed, nothing done. */
    data_once(S("a\r\n.\r"), false, 0, &r);
    assert_false(r.done);
    assert_int_equal(r.used, 5);
    assert_int_equal(r.out_len, 3);
    res_free(&r);
}

static void
test_data_normalise(void **state)
{
    DATA_EXPECT("a\nb\r\n.\r\n", "a\r\nb\r\n.\r\n");
    DATA_EXPECT("a\rb\r\n.\r\n", "a\r\nb\r\n.\r\n");
    DATA_EXPECT("a\r\rb\r\n.\r\n", "a\r\n\r\nb\r\n.\r\n");
    DATA_EXPECT("a\n\r\n.\r\n", "a\r\n\r\n.\r\n");
    DATA_EXPECT("a\r\r\n.\r\n", "a\r\n\r\n.\r\n");
    /* A dot after a bare newline was not stuffed by the client. */
    DATA_EXPECT("a\n.b\r\n.\r\n", "a\r\n..b\r\n.\r\n");
    DATA_EXPECT("a\n..b\r\n.\r\n", "a\r\n...b\r\n.\r\n");
    DATA_EXPECT("a\r.\r\n.\r\n", "a\r\n..\r\n.\r\n");
    /* A lone "." ended by a bare newline is a line, not the end. */
    DATA_EXPECT("a\r\n.\nb\r\n.\r\n", "a\r\n..\r\nb\r\n.\r\n");
    DATA_EXPECT(".\n.\r\n.\r\n", "..\r\n..\r\n.\r\n");
    DATA_EXPECT(".\r.\r\n\r\n.\r\n", "..\r\n..\r\n\r\n.\r\n");
    DATA_EXPECT("\n.\r\n.\r\n", "\r\n..\r\n.\r\n");
    DATA_EXPECT("x\r\n.\r\r\n.\r\n", "x\r\n..\r\n\r\n.\r\n");
}

static void
test_data_reject(void **state)
{
    static const char *const bad[] = {
        "a\nb\r\n.\r\n", "a\rb\r\n.\r\n", "a\r\n.\nb\r\n.\r\n", ".\r.\r\n\r\n.\r\n", "\n.\r\n.\r\n",
    };
    struct result r;
    size_t i;

    res_init(&r);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = strlen(bad[i]);

        data_check_splits(bad[i], n, true, 0, &r);
        assert_true(r.done);
        assert_int_equal(r.used, n);
        assert_int_equal(r.error, RL_E_BARE_NEWLINE);
        data_check_clean(&r, 0);
    }
    /* Proper input is forwarded as in normalise mode. */
    data_check_splits(S("..a\r\n\r\n.\r\n"), true, 0, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.out_len, 10);
    res_free(&r);
}

static void
test_data_nul(void **state)
{
    static const char *const in[] = {"a\0b\r\n.\r\n", "\0\r\n.\r\n", ".\0\r\n.\r\n",
                                     "a\r\n\0.\r\n.\r\n"};
    static const size_t len[] = {8, 6, 7, 10};
    struct result r;
    size_t i;
    int mode;

    res_init(&r);
    for (mode = 0; mode < 2; mode++) {
        for (i = 0; i < 4; i++) {
            data_check_splits(in[i], len[i], mode == 1, 0, &r);
            assert_true(r.done);
            assert_int_equal(r.used, len[i]);
            assert_int_equal(r.error, RL_E_NUL);
            data_check_clean(&r, 0);
        }
    }
    res_free(&r);
}

static void
test_data_max_size(void **state)
{
    struct result r;

    res_init(&r);
    data_check_splits(S("12345\r\n.\r\n"), false, 7, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.size, 7);
    assert_int_equal(r.out_len, 10);

    data_check_splits(S("12345\r\n.\r\nQUIT\r\n"), false, 6, &r);
    assert_true(r.done);
    assert_int_equal(r.used, 10);
    assert_int_equal(r.error, RL_E_TOO_BIG);
    assert_true(r.size <= 6);
    data_check_clean(&r, 0);

    /* Inserted bytes count too: "1\r\n2\r\n" is 6. */
    data_check_splits(S("1\n2\r\n.\r\n"), false, 6, &r);
    assert_int_equal(r.error, 0);
    data_check_splits(S("1\n2\r\n.\r\n"), false, 5, &r);
    assert_int_equal(r.error, RL_E_TOO_BIG);
    res_free(&r);
}

static void
test_data_emit_error(void **state)
{
    struct rl_smtp_data d;
    struct result r;
    bool done;

    res_init(&r);
    r.fail = -7;
    rl_smtp_data_init(&d, false, 0);
    assert_int_equal(rl_smtp_data_scan(&d, S("abc\r\n"), res_emit, &r, &done), -7);
    rl_smtp_data_init(&d, false, 0);
    assert_int_equal(rl_smtp_data_scan(&d, S(".\r\n"), res_emit, &r, &done), -7);
    rl_smtp_data_init(&d, false, 0);
    assert_int_equal(rl_smtp_data_scan(&d, S("a\nb"), res_emit, &r, &done), -7);
    res_free(&r);
}

/* Runs are emitted in place, not byte by byte. */
static void
test_data_runs(void **state)
{
    char *in = malloc(64 * 1024);
    struct result r;
    size_t n = 0, i, cut[2];

    assert_non_null(in);
    res_init(&r);
    for (i = 0; i < 1000; i++)
        n += (size_t)sprintf(in + n, "line %04zu of the message body\r\n", i);
    memcpy(in + n, ".\r\nQUIT\r\n", 9);
    data_once(in, n + 9, false, 0, &r);
    assert_true(r.done);
    assert_int_equal(r.used, n + 3);
    assert_int_equal(r.calls, 1);
    assert_memory_equal(r.out, in, n + 3);

    /* A CR held at the end of a chunk costs one constant "\r\n". */
    cut[0] = (size_t)((const char *)memchr(in + 4000, '\r', 1000) - in) + 1;
    data_run(in, n + 9, cut, 1, false, 0, &r);
    assert_int_equal(r.calls, 3);
    assert_memory_equal(r.out, in, n + 3);

    /* A bare LF in the middle: run, "\r\n", run. */
    in[100] = '\n';
    in[99] = 'x';
    data_once(in, n + 9, false, 0, &r);
    assert_int_equal(r.calls, 3);
    assert_int_equal(r.out_len, n + 4);

    /* Dot-stuffed lines stay in the run. */
    cut[0] = 0;
    n = 0;
    for (i = 0; i < 100; i++)
        n += (size_t)sprintf(in + n, "..%zu\r\n", i);
    memcpy(in + n, ".\r\n", 3);
    data_run(in, n + 3, cut, 0, false, 0, &r);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.out_len, n + 3);
    res_free(&r);
    free(in);
}

static void
append(char *buf, size_t *n, const char *p, size_t len)
{
    memcpy(buf + *n, p, len);
    *n += len;
}

static bool
find(const char *hay, size_t n, const char *needle)
{
    size_t nl = strlen(needle), i;

    for (i = 0; i + nl <= n; i++) {
        if (memcmp(hay + i, needle, nl) == 0)
            return true;
    }
    return false;
}

/*
 * SMTP smuggling (CVE-2023-51764/5/6, hannob/smtpsmug): endings that some
 * parser may take for the end of data.  None may end the message here, and
 * what goes upstream must hold exactly one end, at the end.
 */
static void
test_data_smuggling(void **state)
{
    static const struct {
        const char *seq;
        size_t len;
    } seqs[] = {
        {S("\n.\n")},       {S("\n.\r\n")},     {S("\r\n.\n")},     {S("\r.\r")},
        {S("\r\n.\r")},     {S("\r.\r\n")},     {S("\n.\r")},       {S("\r.\n")},
        {S("\n.\n\r\n")},   {S("\r\n.\r\r\n")}, {S("\r\n.\n\n")},   {S("\r\n\r\n.\n")},
        {S("\n\n.\n\n")},   {S("\r\n.\0\r\n")}, {S("\r\n\0.\r\n")}, {S("\r\n.\r\0\n")},
        {S("\r\0\n.\r\n")}, {S("\n\0.\n\r\n")},
    };
    static const char head[] = "From: a@example.com\r\nSubject: hi\r\n\r\nhello";
    static const char tail[] = "MAIL FROM:<x@evil.example>\r\nRCPT TO:<v@victim.example>\r\n"
                               "DATA\r\nFrom: ceo@victim.example\r\n\r\nsmuggled\r\n";
    static const char end[] = "\r\n.\r\nQUIT\r\n";
    char in[512];
    struct result r;
    size_t i, n;
    int mode;

    res_init(&r);
    for (i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        bool has_nul = memchr(seqs[i].seq, '\0', seqs[i].len) != NULL;

        n = 0;
        append(in, &n, head, sizeof(head) - 1);
        append(in, &n, seqs[i].seq, seqs[i].len);
        append(in, &n, tail, sizeof(tail) - 1);
        append(in, &n, end, sizeof(end) - 1);
        for (mode = 0; mode < 2; mode++) {
            data_check_splits(in, n, mode == 1, 0, &r);
            assert_true(r.done);
            assert_int_equal(r.used, n - 6);
            if (has_nul) {
                /* In reject mode a bare CR/LF before the NUL is found first. */
                assert_true(r.error == RL_E_NUL || (mode == 1 && r.error == RL_E_BARE_NEWLINE));
                data_check_clean(&r, 0);
            } else if (mode == 1) {
                assert_int_equal(r.error, RL_E_BARE_NEWLINE);
                data_check_clean(&r, 0);
            } else {
                assert_int_equal(r.error, 0);
                data_check_clean(&r, 1);
                /* The smuggled commands stay inside the message. */
                assert_true(find(r.out, r.out_len, "\r\nMAIL FROM:<x@evil"));
            }
        }
    }
    res_free(&r);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t
rng_next(void)
{
    /* xorshift64: deterministic, so a failure is reproducible. */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t
rng_body(char *in, size_t cap)
{
    static const char *const tok[] = {"a",     "bc", ".",  "\r", "\n",      "\r\n", "\r\n.",
                                      ".\r\n", "..", "\0", " ",  "\r\n.\r", "\n.",  "xyz"};
    size_t ntok = rng_next() % 60, n = 0, i;

    for (i = 0; i < ntok; i++) {
        size_t t = rng_next() % (sizeof(tok) / sizeof(tok[0]));
        size_t tl = t == 9 ? 1 : strlen(tok[t]);

        if (n + tl + 16 > cap)
            break;
        if (t == 9 && rng_next() % 4 != 0)
            t = 0; /* keep most bodies free of NUL */
        memcpy(in + n, tok[t], tl);
        n += tl;
    }
    memcpy(in + n, "\r\n.\r\nNEXT", 9);
    return n + 9;
}

static void
test_data_random(void **state)
{
    char in[512];
    struct result once, got, ref;
    size_t iter, k;

    res_init(&once);
    res_init(&got);
    res_init(&ref);
    for (iter = 0; iter < 20000; iter++) {
        size_t n = rng_body(in, sizeof(in));
        bool reject = rng_next() % 3 == 0;
        uint64_t max = rng_next() % 4 == 0 ? rng_next() % 200 + 1 : 0;
        size_t cuts[6], ncuts = rng_next() % 6;

        data_once(in, n, reject, max, &once);
        data_ref(in, n, reject, max, &ref);
        data_same(&once, &ref, once.error == 0);
        assert_true(once.done);
        data_check_clean(&once, once.error == 0 ? 1 : 0);
        for (k = 0; k < ncuts; k++)
            cuts[k] = rng_next() % (n + 1);
        /* Sort the few cuts. */
        for (k = 1; k < ncuts; k++) {
            size_t j = k, v = cuts[k];

            while (j > 0 && cuts[j - 1] > v) {
                cuts[j] = cuts[j - 1];
                j--;
            }
            cuts[j] = v;
        }
        data_run(in, n, cuts, ncuts, reject, max, &got);
        data_same(&got, &once, once.error != RL_E_TOO_BIG);
        if (iter % 50 == 0)
            data_check_splits(in, n, reject, max, &got);
    }
    res_free(&once);
    res_free(&got);
    res_free(&ref);
}

/* Each parser on short inputs that end exactly at an unreadable page. */
static void
test_guard_page(void **state)
{
    static const char *const data_in[] = {".", ".\r", "abc\r", "a\r\n.", "a\r\n.\r", "a\n", "\r"};
    struct rl_smtp_cmd cmd;
    struct rl_smtp_reply rep;
    struct rl_smtp_ehlo_opts o = {"h", true, true, 10, NULL};
    struct rl_smtp_data d;
    char out[256];
    size_t used, len, i;
    uint64_t size;
    bool done;
    struct result r;

    assert_int_equal(rl_smtp_cmd_parse(G("EHLO x.example"), 512, &cmd, &used), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_cmd_parse(G("EHLO x.example\r"), 512, &cmd, &used), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_cmd_parse(G("QUIT\n"), 512, &cmd, &used), RL_SMTP_OK);
    assert_int_equal(rl_smtp_cmd_parse(G("QUIT"), 2, &cmd, &used), RL_E_LINE_TOO_LONG);
    assert_int_equal(rl_smtp_reply_parse(G("250-a\r\n250 b"), 512, &rep), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_reply_parse(G("250-a\r\n25"), 512, &rep), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_reply_parse(G("250\r"), 512, &rep), RL_SMTP_MORE);
    assert_int_equal(rl_smtp_hide(G("a.mailgun.org"), mg_names, 3, "b", out, sizeof(out)), 1);
    assert_int_equal(rl_smtp_ehlo_caps(G("250-x\r\n250 SIZE 10"), &size), RL_EHLO_SIZE);
    assert_int_equal(size, 10);
    assert_int_equal(rl_smtp_ehlo_render(G("250-x\r\n250 PIPELINING"), &o, out, sizeof(out), &len),
                     RL_SMTP_OK);
    assert_int_equal(rl_smtp_ehlo_render(G("250-x\r\n250 AUTH"), &o, out, sizeof(out), &len),
                     RL_SMTP_OK);

    res_init(&r);
    for (i = 0; i < sizeof(data_in) / sizeof(data_in[0]); i++) {
        size_t n = strlen(data_in[i]);

        rl_smtp_data_init(&d, false, 0);
        assert_int_equal(rl_smtp_data_scan(&d, guard_place(data_in[i], n), n, res_emit, &r, &done),
                         (long)n);
        assert_false(done);
    }
    res_free(&r);
}

/* ---- Message-ID -------------------------------------------------------- */

/* Feeds msg whole and byte by byte; both must find want. */
static void
msgid_check(const char *msg, const char *want)
{
    struct rl_smtp_msgid m;

    rl_smtp_msgid_init(&m);
    rl_smtp_msgid_feed(&m, msg, strlen(msg));
    assert_string_equal(m.value, want);
    rl_smtp_msgid_init(&m);
    for (size_t i = 0; msg[i] != '\0'; i++)
        rl_smtp_msgid_feed(&m, msg + i, 1);
    assert_string_equal(m.value, want);
}

static void
test_msgid(void **state)
{
    char big[300];
    struct rl_smtp_msgid m;

    msgid_check("Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", "<a@b>");
    msgid_check("message-id:<a@b>  \r\n\r\n", "<a@b>");
    msgid_check("Message-ID:\r\n <folded@b>\r\nTo: c\r\n\r\n", "<folded@b>");
    msgid_check("Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n", "");
    msgid_check("X-Message-ID: <other@b>\r\n\r\n", "");
    msgid_check("Message-ID: <first@b>\r\nMessage-ID: <second@b>\r\n\r\n", "<first@b>");
    msgid_check("Subject: x\r\n", "");

    memset(big, 'x', sizeof(big));
    memcpy(big, "Message-ID: <", 13);
    memcpy(big + sizeof(big) - 4, ">\r\n", 3);
    big[sizeof(big) - 1] = '\0';
    rl_smtp_msgid_init(&m);
    rl_smtp_msgid_feed(&m, big, strlen(big));
    assert_int_equal(strlen(m.value), sizeof(m.value) - 1);
    assert_memory_equal(m.value, "<xxx", 4);

    /* Only the first RL_SMTP_MSGID_SCAN bytes are looked at. */
    rl_smtp_msgid_init(&m);
    for (size_t i = 0; i < RL_SMTP_MSGID_SCAN / 8; i++)
        rl_smtp_msgid_feed(&m, "X-A: b\r\n", 8);
    assert_true(m.done);
    rl_smtp_msgid_feed(&m, "Message-ID: <late@b>\r\n", 22);
    assert_string_equal(m.value, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verb_str),
        cmocka_unit_test(test_cmd_verbs),
        cmocka_unit_test(test_cmd_args),
        cmocka_unit_test(test_cmd_terminators),
        cmocka_unit_test(test_cmd_more),
        cmocka_unit_test(test_cmd_too_long),
        cmocka_unit_test(test_cmd_bad_bytes),
        cmocka_unit_test(test_reply_single),
        cmocka_unit_test(test_reply_multi),
        cmocka_unit_test(test_reply_malformed),
        cmocka_unit_test(test_reply_incomplete),
        cmocka_unit_test(test_reply_too_long),
        cmocka_unit_test(test_reply_lines),
        cmocka_unit_test(test_hide),
        cmocka_unit_test(test_msgid),
        cmocka_unit_test(test_ehlo_caps),
        cmocka_unit_test(test_ehlo_render),
        cmocka_unit_test(test_data_plain),
        cmocka_unit_test(test_data_normalise),
        cmocka_unit_test(test_data_reject),
        cmocka_unit_test(test_data_nul),
        cmocka_unit_test(test_data_max_size),
        cmocka_unit_test(test_data_emit_error),
        cmocka_unit_test(test_data_runs),
        cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_random),
        cmocka_unit_test(test_guard_page),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
