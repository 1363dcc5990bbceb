/*
 * test_config.c - rl_config_load() on files written into a temporary
 * directory: every value of a full file, presets and defaults, one test per
 * class of error with the exact "PATH:LINE: message" text, several errors in
 * one run, the shipped config/relabel.ini, and reference counting.
 *
 * Config texts say "@D@" where the temporary directory goes, so that cert,
 * key and ca_file point at files the group setup created.
 */
#define _GNU_SOURCE /* nftw's FTW_DEPTH and FTW_PHYS */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "relabel/config.h"
#include "relabel/limits.h"
#include "relabel/log.h"

static char tmpdir[PATH_MAX];
static char ini_path[PATH_MAX + 16];

/* The output of the last load_text(): everything printed to err. */
static char *errtext;
static size_t errlen;

static void
write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* Writes text (with @D@ replaced by tmpdir) to tmpdir/test.ini. */
static void
write_ini(const char *text)
{
    FILE *fp = fopen(ini_path, "w");
    const char *p, *mark;

    assert_non_null(fp);
    for (p = text; (mark = strstr(p, "@D@")) != NULL; p = mark + 3) {
        fwrite(p, 1, (size_t)(mark - p), fp);
        fputs(tmpdir, fp);
    }
    fputs(p, fp);
    assert_int_equal(fclose(fp), 0);
}

static int
load_path(const char *path, struct rl_config **cfg)
{
    FILE *err;
    int rc;

    free(errtext);
    errtext = NULL;
    err = open_memstream(&errtext, &errlen);
    assert_non_null(err);
    rc = rl_config_load(path, err, cfg);
    assert_int_equal(fclose(err), 0);
    return rc;
}

static int
load_text(const char *text, struct rl_config **cfg)
{
    write_ini(text);
    return load_path(ini_path, cfg);
}

/* Asserts that errtext holds exactly these lines, each "test.ini:LINE: msg"
 * given as "LINE: msg" (or "msg" for LINE 0), in this order. */
static void
expect_errors(int count, ...)
{
    char want[8192];
    size_t len = 0;
    va_list ap;

    want[0] = '\0';
    va_start(ap, count);
    for (int i = 0; i < count; i++) {
        const char *line = va_arg(ap, const char *);
        const char *sep = (line[0] >= '0' && line[0] <= '9') ? ":" : ": ";

        len += (size_t)snprintf(want + len, sizeof(want) - len, "%s%s%s\n", ini_path, sep, line);
        assert_true(len < sizeof(want));
    }
    va_end(ap);
    assert_non_null(errtext);
    assert_string_equal(errtext, want);
}

/* Loads text that must fail with exactly the given errors. */
#define EXPECT_FAIL(text, ...)                                                                     \
    do {                                                                                           \
        struct rl_config *cfg_ = (struct rl_config *)1;                                            \
        const char *lines_[] = {__VA_ARGS__};                                                      \
        int n_ = (int)(sizeof(lines_) / sizeof(lines_[0]));                                        \
        int rc_ = load_text((text), &cfg_);                                                        \
        assert_null(cfg_);                                                                         \
        check_lines(lines_, n_);                                                                   \
        assert_int_equal(rc_, n_);                                                                 \
    } while (0)

static void
check_lines(const char **lines, int n)
{
    switch (n) {
    case 1:
        expect_errors(1, lines[0]);
        break;
    case 2:
        expect_errors(2, lines[0], lines[1]);
        break;
    case 3:
        expect_errors(3, lines[0], lines[1], lines[2]);
        break;
    case 4:
        expect_errors(4, lines[0], lines[1], lines[2], lines[3]);
        break;
    default:
        fail_msg("check_lines: %d lines not supported", n);
    }
}

/* A brand that loads, to put after a section under test. */
#define BRAND_OK                                                                                   \
    "[brand \"b\"]\n"                                                                              \
    "hostname = smtp.example.com\n"                                                                \
    "cert = @D@/cert.pem\n"                                                                        \
    "key = @D@/key.pem\n"

static int
remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int
group_setup(void **state)
{
    char path[PATH_MAX + 32];

    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "%s/relabel-config-XXXXXX",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    snprintf(ini_path, sizeof(ini_path), "%s/test.ini", tmpdir);
    /* Content does not matter here: config.c only checks readability. */
    snprintf(path, sizeof(path), "%s/cert.pem", tmpdir);
    write_file(path, "cert\n");
    snprintf(path, sizeof(path), "%s/key.pem", tmpdir);
    write_file(path, "key\n");
    snprintf(path, sizeof(path), "%s/ca.pem", tmpdir);
    write_file(path, "ca\n");
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    free(errtext);
    errtext = NULL;
    return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *
addr_text(const struct rl_listener_conf *l, size_t i)
{
    assert_true(i < l->naddrs);
    return l->addrs[i].text;
}

/* ---- good files ------------------------------------------------------------- */

static const char full_file[] = "# a full file\n"
                                "[relabel]\n"
                                "user = relabel\n"
                                "group = mail\n"
                                "log_level = debug\n"
                                "log_format = json\n"
                                "banner = Branded ESMTP\n"
                                "handshake_timeout = 1500ms\n"
                                "command_timeout = 2m\n"
                                "data_timeout = 90\n"
                                "upstream_connect_timeout = 7s\n"
                                "upstream_timeout = 1h\n"
                                "max_line = 8192\n"
                                "max_errors = 3\n"
                                "max_junk_commands = 7\n"
                                "command_deadline = 45s\n"
                                "min_data_rate = 0\n"
                                "max_upstream_connections = 12\n"
                                "bare_newline = reject\n"
                                "\n"
                                "[listener \"smtps\"]\n"
                                "listen = 127.0.0.1:465, [::1]:465\n"
                                "brand = one\n"
                                "\n"
                                "[listener submission]\n"
                                "  listen = 0.0.0.0:587 ; indented, inline comment\n"
                                "  brand = two\n"
                                "  require_tls = off\n"
                                "\n"
                                "[listener \"legacy\"]\n"
                                "listen = *:2525\n"
                                "tls = starttls\n"
                                "brand = one\n"
                                "require_tls = 0\n"
                                "\n"
                                "[brand \"one\"]\n"
                                "hostname = smtp.one.example\n"
                                "cert = @D@/cert.pem\n"
                                "key = @D@/key.pem\n"
                                "upstream = eu-test\n"
                                "\n"
                                "[brand \"two\"]\n"
                                "hostname = mail.two.example\n"
                                "cert = @D@/cert.pem\n"
                                "key = @D@/key.pem\n"
                                "\n"
                                "[upstream \"eu-test\"]\n"
                                "host = 127.0.0.1\n"
                                "preset = mailgun-eu\n"
                                "port = 2465\n"
                                "ca_file = @D@/ca.pem\n"
                                "helo_name = relay.one.example\n"
                                "hide = foo, bar.example\n"
                                "\n"
                                "[upstream \"plain\"]\n"
                                "host = mx.other.example\n"
                                "tls = starttls\n"
                                "max_message_size = 10M\n";

static void
test_full_file(void **state)
{
    struct rl_config *cfg = NULL;
    const struct rl_upstream_conf *u;
    const struct rl_listener_conf *l;
    const struct rl_brand_conf *b;
    char cert[PATH_MAX + 32];

    (void)state;
    assert_int_equal(load_text(full_file, &cfg), 0);
    assert_string_equal(errtext, "");
    assert_non_null(cfg);
    assert_int_equal(cfg->refs, 1);
    assert_string_equal(cfg->path, ini_path);

    assert_string_equal(cfg->user, "relabel");
    assert_string_equal(cfg->group, "mail");
    assert_int_equal(cfg->log_level, RL_LOG_DEBUG);
    assert_int_equal(cfg->log_format, RL_LOG_JSON);
    assert_string_equal(cfg->banner, "Branded ESMTP");
    assert_int_equal(cfg->handshake_timeout_ms, 1500);
    assert_int_equal(cfg->command_timeout_ms, 120000);
    assert_int_equal(cfg->data_timeout_ms, 90000);
    assert_int_equal(cfg->upstream_connect_timeout_ms, 7000);
    assert_int_equal(cfg->upstream_timeout_ms, 3600000);
    assert_int_equal(cfg->max_line, 8192);
    assert_int_equal(cfg->max_errors, 3);
    assert_int_equal(cfg->max_junk_commands, 7);
    assert_int_equal(cfg->command_deadline_ms, 45000);
    assert_int_equal(cfg->min_data_rate, 0);
    assert_int_equal(cfg->max_upstream_connections, 12);
    assert_true(cfg->bare_newline_reject);

    assert_int_equal(cfg->nbrands, 2);
    b = &cfg->brands[0];
    snprintf(cert, sizeof(cert), "%s/cert.pem", tmpdir);
    assert_string_equal(b->name, "one");
    assert_int_equal(b->line, 36);
    assert_string_equal(b->hostname, "smtp.one.example");
    assert_string_equal(b->cert, cert);
    assert_int_equal(b->cert_line, 38);
    assert_int_equal(b->key_line, 39);
    assert_non_null(strstr(b->key, "/key.pem"));
    assert_non_null(b->upstream);
    assert_string_equal(b->upstream->name, "eu-test");
    b = &cfg->brands[1];
    assert_string_equal(b->name, "two");
    assert_non_null(b->upstream);
    assert_string_equal(b->upstream->name, "mailgun-us"); /* the default */

    /* Sections first, then the presets brands use. */
    assert_int_equal(cfg->nupstreams, 3);
    u = &cfg->upstreams[0];
    assert_ptr_equal(cfg->brands[0].upstream, u);
    assert_string_equal(u->name, "eu-test");
    assert_int_equal(u->line, 47);
    assert_string_equal(u->host, "127.0.0.1");
    assert_int_equal(u->port, 2465);
    assert_int_equal(u->tls, RL_TLS_IMPLICIT);
    assert_string_equal(u->verify_name, "smtp.eu.mailgun.org"); /* the preset's name survives */
    assert_non_null(strstr(u->ca_file, "/ca.pem"));
    assert_int_equal(u->ca_line, 51);
    assert_string_equal(u->helo_name, "relay.one.example");
    assert_int_equal(u->max_message_size, RL_MAILGUN_MAX_MESSAGE);
    assert_int_equal(u->nhide, 2); /* hide replaces the preset's list */
    assert_string_equal(u->hide[0], "foo");
    assert_string_equal(u->hide[1], "bar.example");

    u = &cfg->upstreams[1];
    assert_string_equal(u->name, "plain");
    assert_string_equal(u->host, "mx.other.example");
    assert_int_equal(u->tls, RL_TLS_STARTTLS);
    assert_int_equal(u->port, 587);
    assert_string_equal(u->verify_name, "mx.other.example");
    assert_null(u->ca_file);
    assert_int_equal(u->ca_line, 0);
    assert_null(u->helo_name);
    assert_int_equal(u->max_message_size, 10u * 1024 * 1024);
    assert_int_equal(u->nhide, 0);

    u = &cfg->upstreams[2];
    assert_ptr_equal(cfg->brands[1].upstream, u);
    assert_string_equal(u->name, "mailgun-us");
    assert_int_equal(u->line, 0);
    assert_string_equal(u->host, "smtp.mailgun.org");
    assert_int_equal(u->port, 465);
    assert_int_equal(u->tls, RL_TLS_IMPLICIT);
    assert_string_equal(u->verify_name, "smtp.mailgun.org");
    assert_null(u->ca_file);
    assert_int_equal(u->max_message_size, RL_MAILGUN_MAX_MESSAGE);
    assert_int_equal(u->nhide, 3);
    assert_string_equal(u->hide[0], "mailgun.org");
    assert_string_equal(u->hide[1], "postgun.com");
    assert_string_equal(u->hide[2], "mailgun");

    assert_int_equal(cfg->nlisteners, 3);
    l = &cfg->listeners[0];
    assert_string_equal(l->name, "smtps");
    assert_int_equal(l->line, 21);
    assert_int_equal(l->listen_line, 22);
    assert_int_equal(l->naddrs, 2);
    assert_string_equal(addr_text(l, 0), "127.0.0.1:465");
    assert_string_equal(addr_text(l, 1), "[::1]:465");
    assert_int_equal(l->addrs[0].ss.ss_family, AF_INET);
    assert_int_equal(l->addrs[0].len, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(((struct sockaddr_in *)&l->addrs[0].ss)->sin_port), 465);
    assert_int_equal(l->addrs[1].ss.ss_family, AF_INET6);
    assert_int_equal(l->addrs[1].len, sizeof(struct sockaddr_in6));
    assert_int_equal(l->tls, RL_TLS_IMPLICIT); /* every port is 465 */
    assert_true(l->require_tls);
    assert_ptr_equal(l->brand, &cfg->brands[0]);

    l = &cfg->listeners[1];
    assert_string_equal(l->name, "submission"); /* unquoted name */
    assert_int_equal(l->naddrs, 1);
    assert_string_equal(addr_text(l, 0), "0.0.0.0:587");
    assert_int_equal(l->tls, RL_TLS_STARTTLS);
    assert_false(l->require_tls);
    assert_ptr_equal(l->brand, &cfg->brands[1]);

    l = &cfg->listeners[2];
    assert_int_equal(l->naddrs, 2); /* "*" is both wildcards */
    assert_string_equal(addr_text(l, 0), "0.0.0.0:2525");
    assert_string_equal(addr_text(l, 1), "[::]:2525");
    assert_false(l->require_tls);

    rl_config_unref(cfg);
}

static void
test_defaults(void **state)
{
    struct rl_config *cfg = NULL;
    const struct rl_listener_conf *l;
    const struct rl_upstream_conf *u;

    (void)state;
    assert_int_equal(load_text(BRAND_OK, &cfg), 0);
    assert_string_equal(errtext, "");

    assert_null(cfg->user);
    assert_null(cfg->group);
    assert_int_equal(cfg->log_level, RL_LOG_INFO);
    assert_int_equal(cfg->log_format, RL_LOG_TEXT);
    assert_string_equal(cfg->banner, "ESMTP ready");
    assert_int_equal(cfg->handshake_timeout_ms, RL_TIMEOUT_HANDSHAKE_DEFAULT);
    assert_int_equal(cfg->command_timeout_ms, RL_TIMEOUT_COMMAND_DEFAULT);
    assert_int_equal(cfg->data_timeout_ms, RL_TIMEOUT_DATA_DEFAULT);
    assert_int_equal(cfg->upstream_connect_timeout_ms, RL_TIMEOUT_UP_CONNECT_DEFAULT);
    assert_int_equal(cfg->upstream_timeout_ms, RL_TIMEOUT_UP_REPLY_DEFAULT);
    assert_int_equal(cfg->max_line, RL_SMTP_LINE_DEFAULT);
    assert_int_equal(cfg->max_errors, RL_MAX_ERRORS_DEFAULT);
    assert_int_equal(cfg->max_junk_commands, RL_MAX_JUNK_COMMANDS_DEFAULT);
    assert_int_equal(cfg->command_deadline_ms, RL_COMMAND_DEADLINE_DEFAULT);
    assert_int_equal(cfg->min_data_rate, RL_MIN_DATA_RATE_DEFAULT);
    assert_int_equal(cfg->max_upstream_connections, 0);
    assert_false(cfg->bare_newline_reject);

    assert_int_equal(cfg->nupstreams, 1);
    u = &cfg->upstreams[0];
    assert_ptr_equal(cfg->brands[0].upstream, u);
    assert_string_equal(u->name, "mailgun-us");
    assert_string_equal(u->host, "smtp.mailgun.org");

    /* The drop-in default listeners. */
    assert_int_equal(cfg->nlisteners, 2);
    l = &cfg->listeners[0];
    assert_string_equal(l->name, "smtps");
    assert_int_equal(l->line, 0);
    assert_int_equal(l->naddrs, 2);
    assert_string_equal(addr_text(l, 0), "0.0.0.0:465");
    assert_string_equal(addr_text(l, 1), "[::]:465");
    assert_int_equal(l->tls, RL_TLS_IMPLICIT);
    assert_true(l->require_tls);
    assert_ptr_equal(l->brand, &cfg->brands[0]);
    l = &cfg->listeners[1];
    assert_string_equal(l->name, "submission");
    assert_string_equal(addr_text(l, 0), "0.0.0.0:587");
    assert_string_equal(addr_text(l, 1), "[::]:587");
    assert_int_equal(l->tls, RL_TLS_STARTTLS);
    assert_true(l->require_tls);
    assert_ptr_equal(l->brand, &cfg->brands[0]);
    rl_config_unref(cfg);
}

static void
test_presets(void **state)
{
    struct rl_config *cfg = NULL;
    const struct rl_upstream_conf *u;

    (void)state;
    /* Two brands on one preset share one instance; a section named like a
     * preset shadows it; a section may clear the preset's hide list. */
    assert_int_equal(load_text("[listener \"a\"]\n"
                               "listen = 127.0.0.1:1465\n"
                               "brand = b1\n"
                               "[brand b1]\n"
                               "hostname = a.example\n"
                               "cert = @D@/cert.pem\n"
                               "key = @D@/key.pem\n"
                               "upstream = mailgun-eu\n"
                               "[brand b2]\n"
                               "hostname = b.example\n"
                               "cert = @D@/cert.pem\n"
                               "key = @D@/key.pem\n"
                               "upstream = mailgun-eu\n"
                               "[brand b3]\n"
                               "hostname = c.example\n"
                               "cert = @D@/cert.pem\n"
                               "key = @D@/key.pem\n"
                               "[upstream \"mailgun-us\"]\n"
                               "preset = mailgun-us\n"
                               "tls = starttls\n"
                               "hide =\n"
                               "max_message_size = 0\n",
                               &cfg),
                     0);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->nupstreams, 2);
    u = cfg->brands[0].upstream;
    assert_ptr_equal(cfg->brands[1].upstream, u);
    assert_string_equal(u->name, "mailgun-eu");
    assert_string_equal(u->host, "smtp.eu.mailgun.org");
    assert_string_equal(u->verify_name, "smtp.eu.mailgun.org");
    assert_int_equal(u->port, 465);
    assert_int_equal(u->nhide, 3);

    u = cfg->brands[2].upstream;
    assert_ptr_equal(u, &cfg->upstreams[0]);
    assert_int_equal(u->line, 18);
    assert_string_equal(u->host, "smtp.mailgun.org");
    assert_int_equal(u->tls, RL_TLS_STARTTLS);
    assert_int_equal(u->port, 587); /* the port follows tls */
    assert_int_equal(u->nhide, 0);
    assert_int_equal(u->max_message_size, 0);
    assert_ptr_equal(cfg->listeners[0].brand, &cfg->brands[0]);
    rl_config_unref(cfg);
}

static void
test_value_forms(void **state)
{
    struct rl_config *cfg = NULL;

    (void)state;
    /* Mixed ports: starttls by default.  Enumerations ignore case, a
     * CRLF file and a byte order mark are fine, ':' works like '='. */
    assert_int_equal(load_text("\xEF\xBB\xBF[relabel]\r\n"
                               "log_level = WARN\r\n"
                               "bare_newline = normalise\r\n"
                               "handshake_timeout = 1 h\r\n"
                               "command_timeout: 60000ms\r\n"
                               "max_line = 512\r\n"
                               "max_errors = 1000\r\n"
                               "[listener l]\r\n"
                               "listen = 127.0.0.1:465, 127.0.0.1:587\r\n"
                               "[upstream u]\r\n"
                               "host = 2001:db8::1\r\n"
                               "verify_name = up.example\r\n"
                               "max_message_size = 1g\r\n" BRAND_OK "upstream = u\r\n",
                               &cfg),
                     0);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->log_level, RL_LOG_WARN);
    assert_false(cfg->bare_newline_reject);
    assert_int_equal(cfg->handshake_timeout_ms, 3600000);
    assert_int_equal(cfg->command_timeout_ms, 60000);
    assert_int_equal(cfg->max_line, 512);
    assert_int_equal(cfg->max_errors, 1000);
    assert_int_equal(cfg->listeners[0].tls, RL_TLS_STARTTLS);
    assert_true(cfg->listeners[0].require_tls);
    assert_ptr_equal(cfg->listeners[0].brand, &cfg->brands[0]); /* the only brand */
    assert_string_equal(cfg->upstreams[0].host, "2001:db8::1");
    assert_int_equal(cfg->upstreams[0].max_message_size, 1024u * 1024 * 1024);
    assert_int_equal(cfg->upstreams[0].nhide, 0);
    rl_config_unref(cfg);
}

/* ---- one test per class of error ------------------------------------------- */

static void
test_err_cannot_open(void **state)
{
    struct rl_config *cfg = (struct rl_config *)1;
    char path[PATH_MAX + 32], want[PATH_MAX + 128];

    (void)state;
    snprintf(path, sizeof(path), "%s/missing.ini", tmpdir);
    assert_int_equal(load_path(path, &cfg), 1);
    assert_null(cfg);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory\n", path);
    assert_string_equal(errtext, want);

    assert_int_equal(load_path(tmpdir, &cfg), 1);
    snprintf(want, sizeof(want), "%s: cannot open: Is a directory\n", tmpdir);
    assert_string_equal(errtext, want);
}

static void
test_err_unknown_section(void **state)
{
    (void)state;
    /* Keys of an unknown section are skipped: one error is enough. */
    EXPECT_FAIL(BRAND_OK "[frontend \"x\"]\n"
                         "listen = 1.2.3.4:25\n",
                "5: unknown section type [frontend] (expected [relabel], [listener \"NAME\"], "
                "[brand \"NAME\"], [upstream \"NAME\"] or [metrics])");
}

static void
test_err_bad_headers(void **state)
{
    (void)state;
    EXPECT_FAIL("[brand \"b\"\n"
                "[brand]\n"
                "[relabel \"x\"]\n" BRAND_OK,
                "1: section header without a closing ']'",
                "2: [brand] needs a name: [brand \"NAME\"]", "3: [relabel] takes no name");
    EXPECT_FAIL("[brand \"b c\"]\n"
                "[listener \"x]\n"
                "[relabel] junk\n" BRAND_OK,
                "1: invalid section name \"b c\" (expected 1 to 64 letters, digits, '-', '_' or "
                "'.')",
                "2: badly quoted section name: \"x",
                "3: unexpected text after the section header: \"junk\"");
}

static void
test_err_unknown_key(void **state)
{
    (void)state;
    EXPECT_FAIL(BRAND_OK "listen = 1.2.3.4:25\n", "5: unknown key \"listen\" in [brand \"b\"]");
}

static void
test_err_key_outside_section(void **state)
{
    (void)state;
    EXPECT_FAIL("user = relabel\n" BRAND_OK,
                "1: key \"user\" outside any section (global keys go under [relabel])");
}

static void
test_err_duplicate_section(void **state)
{
    (void)state;
    /* Keys of the duplicate are still checked. */
    EXPECT_FAIL(BRAND_OK "[relabel]\n"
                         "[brand b]\n"
                         "hostname = -bad\n"
                         "[relabel]\n",
                "6: duplicate section [brand \"b\"] (first at line 1)",
                "7: invalid hostname \"-bad\" (expected a DNS name such as smtp.example.com)",
                "8: duplicate section [relabel] (first at line 5)");
}

static void
test_err_duplicate_key(void **state)
{
    (void)state;
    EXPECT_FAIL(BRAND_OK "hostname = other.example\n",
                "5: duplicate key \"hostname\" (first at line 2)");
}

static void
test_err_bad_values_relabel(void **state)
{
    struct rl_config *cfg = (struct rl_config *)1;

    (void)state;
    assert_int_equal(load_text("[relabel]\n"
                               "log_level = loud\n"
                               "log_format = xml\n"
                               "banner = caf\xc3\xa9\n"
                               "handshake_timeout = 500ms\n"
                               "command_timeout = 2h\n"
                               "data_timeout = 5x\n"
                               "upstream_timeout = -5\n"
                               "max_line = 100\n"
                               "max_errors = 0\n"
                               "bare_newline = keep\n"
                               "user =\n"
                               "max_junk_commands = 0\n"
                               "command_deadline = 0\n"
                               "min_data_rate = -1\n"
                               "max_upstream_connections = 2000000\n" BRAND_OK,
                               &cfg),
                     15);
    assert_null(cfg);
    expect_errors(15, "2: invalid log_level \"loud\" (expected error, warn, info or debug)",
                  "3: invalid log_format \"xml\" (expected text or json)",
                  "4: invalid banner: only printable ASCII is allowed",
                  "5: invalid handshake_timeout \"500ms\" (expected a duration from 1s to 1h, such "
                  "as 30s, 1500ms, 5m or 1h; a plain number is seconds)",
                  "6: invalid command_timeout \"2h\" (expected a duration from 1s to 1h, such as "
                  "30s, 1500ms, 5m or 1h; a plain number is seconds)",
                  "7: invalid data_timeout \"5x\" (expected a duration from 1s to 1h, such as 30s, "
                  "1500ms, 5m or 1h; a plain number is seconds)",
                  "8: invalid upstream_timeout \"-5\" (expected a duration from 1s to 1h, such as "
                  "30s, 1500ms, 5m or 1h; a plain number is seconds)",
                  "9: invalid max_line \"100\" (expected a number from 512 to 65536)",
                  "10: invalid max_errors \"0\" (expected a number from 1 to 1000)",
                  "11: invalid bare_newline \"keep\" (expected normalize, normalise or reject)",
                  "12: empty value for \"user\"",
                  "13: invalid max_junk_commands \"0\" (expected a number from 1 to 1000000)",
                  "14: invalid command_deadline \"0\" (expected a duration from 1s to 1h, such as "
                  "30s, 1500ms, 5m or 1h; a plain number is seconds)",
                  "15: invalid min_data_rate \"-1\" (expected a number from 0 to 1000000000)",
                  "16: invalid max_upstream_connections \"2000000\" (expected a number from 0 to "
                  "1000000)");
}

static void
test_err_bad_values_sections(void **state)
{
    struct rl_config *cfg = (struct rl_config *)1;

    (void)state;
    assert_int_equal(load_text("[listener l]\n"
                               "listen = 127.0.0.1:25\n"
                               "tls = ssl\n"
                               "require_tls = maybe\n"
                               "brand = no/such\n"
                               "[brand b]\n"
                               "hostname = 192.0.2.1\n"
                               "cert = @D@/cert.pem\n"
                               "key = @D@/key.pem\n"
                               "[upstream u]\n"
                               "preset = mandrill\n"
                               "host = bad_host\n"
                               "port = 70000\n"
                               "max_message_size = 5T\n"
                               "hide = a,,b\n",
                               &cfg),
                     9);
    expect_errors(
        9, "3: invalid tls \"ssl\" (expected implicit or starttls)",
        "4: invalid require_tls \"maybe\" (expected yes or no)",
        "5: invalid brand \"no/such\" (expected a section name: 1 to 64 letters, digits, '-', '_' "
        "or '.')",
        "7: invalid hostname \"192.0.2.1\" (expected a DNS name such as smtp.example.com)",
        "11: invalid preset \"mandrill\" (expected one of mailgun-us, mailgun-eu, sendgrid, "
        "ses-REGION, postmark, brevo)",
        "12: invalid host \"bad_host\" (expected a DNS name or an IP address)",
        "13: invalid port \"70000\" (expected a number from 1 to 65535)",
        "14: invalid max_message_size \"5T\" (expected a size in bytes with an optional K, M or G "
        "suffix, at most 4G; 0 means the upstream's own limit)",
        "15: invalid hide: empty item in the list");
}

static void
test_err_unknown_references(void **state)
{
    (void)state;
    EXPECT_FAIL(
        "[listener l]\n"
        "listen = 127.0.0.1:25\n"
        "brand = nosuch\n" BRAND_OK "upstream = nowhere\n",
        "3: unknown brand \"nosuch\" (no [brand \"nosuch\"] section)",
        "8: unknown upstream \"nowhere\" (expected a preset: mailgun-us, mailgun-eu, sendgrid, "
        "ses-REGION, postmark, brevo; or the name of an [upstream \"NAME\"] section)");
}

static void
test_err_listen_address(void **state)
{
    (void)state;
    EXPECT_FAIL(
        "[listener l]\n"
        "listen = 127.0.0.1:25, localhost:25, [::1:25, 10.0.0.1:0, 1.2.3:4, [::1]:465\n" BRAND_OK,
        "2: invalid listen address \"localhost:25\" (expected IPV4:PORT, [IPV6]:PORT or "
        "*:PORT, such as 0.0.0.0:465, [::1]:587 or *:25; no host names)",
        "2: invalid listen address \"[::1:25\" (expected IPV4:PORT, [IPV6]:PORT or *:PORT, "
        "such as 0.0.0.0:465, [::1]:587 or *:25; no host names)",
        "2: invalid listen address \"10.0.0.1:0\" (expected IPV4:PORT, [IPV6]:PORT or "
        "*:PORT, such as 0.0.0.0:465, [::1]:587 or *:25; no host names)",
        "2: invalid listen address \"1.2.3:4\" (expected IPV4:PORT, [IPV6]:PORT or *:PORT, "
        "such as 0.0.0.0:465, [::1]:587 or *:25; no host names)");
}

static void
test_err_listen_empty_item(void **state)
{
    (void)state;
    EXPECT_FAIL(
        "[listener l]\n"
        "listen = 127.0.0.1:25,\n" BRAND_OK,
        "2: invalid listen address \"\" (expected IPV4:PORT, [IPV6]:PORT or *:PORT, such as "
        "0.0.0.0:465, [::1]:587 or *:25; no host names)");
}

static void
test_err_same_address(void **state)
{
    (void)state;
    EXPECT_FAIL("[listener a]\n"
                "listen = 127.0.0.1:25, [::]:465\n"
                "[listener b]\n"
                "listen = [0::0]:465, 0.0.0.0:25\n"
                "[listener c]\n"
                "listen = 127.0.0.2:2525, 127.0.0.2:2525\n" BRAND_OK,
                "4: [::]:465 is already used by listener \"a\" (line 2)",
                "4: 0.0.0.0:25 overlaps 127.0.0.1:25 of listener \"a\" (line 2)",
                "6: 127.0.0.2:2525 is listed twice");
}

static void
test_err_missing_required(void **state)
{
    (void)state;
    EXPECT_FAIL("[listener l]\n"
                "tls = starttls\n"
                "[brand \"b\"]\n"
                "; nothing\n",
                "1: [listener \"l\"] needs listen (such as listen = 0.0.0.0:465, [::]:465)",
                "3: [brand \"b\"] needs hostname",
                "3: [brand \"b\"] needs cert (the certificate file)",
                "3: [brand \"b\"] needs key (the private key file)");
    EXPECT_FAIL(BRAND_OK "upstream = u\n"
                         "[upstream u]\n"
                         "port = 465\n",
                "6: [upstream \"u\"] needs host, or a preset (mailgun-us, mailgun-eu, sendgrid, "
                "ses-REGION, postmark, brevo)");
    EXPECT_FAIL(BRAND_OK "upstream = u\n"
                         "[upstream u]\n"
                         "host = 127.0.0.1\n",
                "7: host 127.0.0.1 is an IP address: set verify_name to the name in the "
                "upstream's certificate");
}

static void
test_err_unreadable_files(void **state)
{
    char want[6 * PATH_MAX + 512];
    struct rl_config *cfg = (struct rl_config *)1;

    (void)state;
    write_ini("[brand b]\n"
              "hostname = smtp.example.com\n"
              "cert = @D@/nocert.pem\n"
              "key = @D@\n"
              "upstream = u\n"
              "[upstream u]\n"
              "preset = mailgun-us\n"
              "ca_file = relative/ca.pem\n");
    assert_int_equal(load_path(ini_path, &cfg), 3);
    assert_null(cfg);
    snprintf(want, sizeof(want),
             "%s:3: cannot read cert \"%s/nocert.pem\": No such file or directory\n"
             "%s:4: cannot read key \"%s\": not a regular file\n"
             "%s:8: cannot read ca_file \"relative/ca.pem\": No such file or directory\n",
             ini_path, tmpdir, ini_path, tmpdir, ini_path);
    assert_string_equal(errtext, want);

    if (geteuid() != 0) { /* root reads a mode-0 file all the same */
        char path[PATH_MAX + 32];

        snprintf(path, sizeof(path), "%s/secret.pem", tmpdir);
        write_file(path, "x");
        assert_int_equal(chmod(path, 0), 0);
        write_ini("[brand b]\nhostname = a.example\ncert = @D@/cert.pem\nkey = @D@/secret.pem\n");
        assert_int_equal(load_path(ini_path, &cfg), 1);
        assert_non_null(strstr(errtext, ":4: cannot read key \""));
        assert_non_null(strstr(errtext, "Permission denied"));
        unlink(path);
    }
}

static void
test_err_syntax(void **state)
{
    (void)state;
    /* inih alone would name only the first of these. */
    EXPECT_FAIL("[relabel]\n"
                "log_level\n" BRAND_OK "= value\n"
                "just some words ; with a comment\n",
                "2: expected \"key = value\", a [section] or a comment",
                "7: missing key name before '='",
                "8: expected \"key = value\", a [section] or a comment");
}

static void
test_err_line_too_long(void **state)
{
    char text[1024];

    (void)state;
    /* Comments may be long; a key line must fit inih's 200-byte buffer. */
    snprintf(text, sizeof(text), "; %0300d\n[relabel]\nbanner = %0250d\n" BRAND_OK, 0, 0);
    EXPECT_FAIL(text, "3: line too long (259 characters, at most 198)");
}

static void
test_err_brands(void **state)
{
    (void)state;
    EXPECT_FAIL("[relabel]\n", "no [brand \"NAME\"] section: at least one brand is required");
    EXPECT_FAIL(BRAND_OK "[brand c]\n"
                         "hostname = c.example\n"
                         "cert = @D@/cert.pem\n"
                         "key = @D@/key.pem\n",
                "no [listener \"NAME\"] section: the default listeners need exactly one brand, and "
                "there are 2");
    EXPECT_FAIL("[listener x]\n"
                "listen = 127.0.0.1:25\n" BRAND_OK "[brand c]\n"
                "hostname = c.example\n"
                "cert = @D@/cert.pem\n"
                "key = @D@/key.pem\n",
                "1: [listener \"x\"] needs brand: there are 2 brands to choose from");
}

static void
test_err_require_tls_implicit(void **state)
{
    (void)state;
    EXPECT_FAIL(
        "[listener x]\n"
        "listen = 127.0.0.1:465\n"
        "require_tls = no\n" BRAND_OK,
        "3: require_tls = no needs tls = starttls: an implicit TLS listener has no plaintext "
        "phase");
}

static void
test_proxy_and_access(void **state)
{
    struct rl_config *cfg = NULL;
    const struct rl_listener_conf *l;
    char text[RL_CIDR_TEXT_MAX];

    (void)state;
    assert_int_equal(load_text("[relabel]\n"
                               "max_connection_rate = 0\n"
                               "[listener lb]\n"
                               "listen = 127.0.0.1:465\n"
                               "proxy_protocol = v2\n"
                               "proxy_trusted = 10.0.0.0/8, 127.0.0.2/32 ::1/128\n"
                               "proxy_trusted = ::ffff:192.0.2.0/120\n"
                               "allow = 192.0.2.0/24\n"
                               "deny = 192.0.2.7, 2001:db8::/32\n"
                               "[listener direct]\n"
                               "listen = 127.0.0.1:587\n"
                               "proxy_protocol = no\n"
                               "proxy_trusted = 10.0.0.0/8\n" BRAND_OK,
                               &cfg),
                     0);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->max_connection_rate, 0);
    l = &cfg->listeners[0];
    assert_int_equal(l->proxy_protocol, 2);
    assert_int_equal(l->proxy_trusted.n, 4);
    assert_string_equal(rl_cidr_text(&l->proxy_trusted.items[2], text, sizeof(text)), "::1/128");
    /* The repeated key added to the list; the mapped network is IPv4. */
    assert_string_equal(rl_cidr_text(&l->proxy_trusted.items[3], text, sizeof(text)),
                        "192.0.2.0/24");
    assert_int_equal(l->allow.n, 1);
    assert_int_equal(l->deny.n, 2);
    assert_string_equal(rl_cidr_text(&l->deny.items[0], text, sizeof(text)), "192.0.2.7/32");
    l = &cfg->listeners[1];
    assert_int_equal(l->proxy_protocol, 0);
    assert_int_equal(l->allow.n, 0);
    assert_int_equal(l->deny.n, 0);
    rl_config_unref(cfg);

    assert_int_equal(load_text("[listener x]\nlisten = 127.0.0.1:25\nproxy_protocol = any\n"
                               "proxy_trusted = 0.0.0.0/0\n" BRAND_OK,
                               &cfg),
                     0);
    assert_int_equal(cfg->listeners[0].proxy_protocol, 3);
    assert_int_equal(cfg->max_connection_rate, RL_MAX_CONNECTION_RATE_DEFAULT);
    rl_config_unref(cfg);
    assert_int_equal(load_text("[listener x]\nlisten = 127.0.0.1:25\nproxy_protocol = v1\n"
                               "proxy_trusted = 0.0.0.0/0\n" BRAND_OK,
                               &cfg),
                     0);
    assert_int_equal(cfg->listeners[0].proxy_protocol, 1);
    rl_config_unref(cfg);
}

static void
test_err_proxy_and_access(void **state)
{
    (void)state;
    EXPECT_FAIL("[listener x]\n"
                "listen = 127.0.0.1:465\n"
                "proxy_protocol = v2\n" BRAND_OK,
                "3: proxy_protocol needs proxy_trusted: the networks of the load balancers "
                "allowed to send the PROXY header");
    EXPECT_FAIL("[listener x]\n"
                "listen = 127.0.0.1:465\n"
                "proxy_trusted = 10.0.0.0/8\n" BRAND_OK,
                "3: proxy_trusted needs proxy_protocol = v1, v2 or any");
    EXPECT_FAIL("[listener x]\n"
                "listen = 127.0.0.1:465\n"
                "proxy_protocol = v3\n"
                "proxy_trusted = 10.0.0.0/8\n" BRAND_OK,
                "3: invalid proxy_protocol \"v3\" (expected no, v1, v2 or any)");
    EXPECT_FAIL("[listener x]\n"
                "listen = 127.0.0.1:465\n"
                "allow = 10.0.0.1/8\n"
                "deny = 10.0.0.0/8,,10.1.0.0/16\n"
                "deny = 2001:db8::/129\n" BRAND_OK,
                "3: invalid allow: \"10.0.0.1/8\": bits are set after the prefix (write the "
                "network address) (expected networks such as 10.0.0.0/8, 192.0.2.7 or "
                "2001:db8::/32, separated by commas or spaces)",
                "4: invalid deny: empty item in the list (expected networks such as 10.0.0.0/8, "
                "192.0.2.7 or 2001:db8::/32, separated by commas or spaces)",
                "5: invalid deny: \"2001:db8::/129\": the prefix length is not a number from 0 to "
                "128 (expected networks such as 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32, "
                "separated by commas or spaces)");
    EXPECT_FAIL("[relabel]\nmax_connection_rate = -1\n" BRAND_OK,
                "2: invalid max_connection_rate \"-1\" (expected a number from 0 to 1000000)");
    EXPECT_FAIL("[listener x]\n"
                "listen = 127.0.0.1:465\n"
                "allow =\n" BRAND_OK,
                "3: empty value for \"allow\"");
}

static void
test_several_errors(void **state)
{
    struct rl_config *cfg = (struct rl_config *)1;

    (void)state;
    /* Errors of every stage, printed sorted by line, line-less ones last. */
    assert_int_equal(load_text("[relabel]\n"
                               "max_line = 1\n"
                               "colour = blue\n"
                               "[listener a]\n"
                               "listen = nowhere\n"
                               "brand = b\n"
                               "[brand b]\n"
                               "cert = @D@/cert.pem\n"
                               "key = @D@/key.pem\n"
                               "upstream = mandrill\n"
                               "[upstream x]\n"
                               "[oops]\n",
                               &cfg),
                     7);
    assert_null(cfg);
    expect_errors(7, "2: invalid max_line \"1\" (expected a number from 512 to 65536)",
                  "3: unknown key \"colour\" in [relabel]",
                  "5: invalid listen address \"nowhere\" (expected IPV4:PORT, [IPV6]:PORT or "
                  "*:PORT, such as 0.0.0.0:465, [::1]:587 or *:25; no host names)",
                  "7: [brand \"b\"] needs hostname",
                  "10: unknown upstream \"mandrill\" (expected a preset: mailgun-us, mailgun-eu, "
                  "sendgrid, ses-REGION, postmark, brevo; or the name of an [upstream \"NAME\"] "
                  "section)",
                  "11: [upstream \"x\"] needs host, or a preset (mailgun-us, mailgun-eu, "
                  "sendgrid, ses-REGION, postmark, brevo)",
                  "12: unknown section type [oops] (expected [relabel], [listener \"NAME\"], "
                  "[brand \"NAME\"], [upstream \"NAME\"] or [metrics])");
}

/* ---- brands by SNI ------------------------------------------------------------ */

static const char brands_file[] = "[listener \"smtps\"]\n"                      /* 1 */
                                  "listen = 127.0.0.1:465\n"                    /* 2 */
                                  "brand = a\n"                                 /* 3 */
                                  "sni_unknown = refuse\n"                      /* 4 */
                                  "[listener \"sub\"]\n"                        /* 5 */
                                  "listen = 127.0.0.1:587\n"                    /* 6 */
                                  "brand = b\n"                                 /* 7 */
                                  "[brand a]\n"                                 /* 8 */
                                  "hostname = SMTP.Brand-A.com\n"               /* 9 */
                                  "aliases = mail.brand-a.com\n"                /* 10 */
                                  "cert = @D@/cert.pem\n"                       /* 11 */
                                  "key = @D@/key.pem\n"                         /* 12 */
                                  "cert_rsa = @D@/cert.pem\n"                   /* 13 */
                                  "key_rsa = @D@/key.pem\n"                     /* 14 */
                                  "[brand b]\n"                                 /* 15 */
                                  "hostname = mail.brand-b.net\n"               /* 16 */
                                  "aliases = *.brand-b.net, smtp.brand-b.net\n" /* 17 */
                                  "aliases = MAIL.brand-b.net x.example.org\n"  /* 18 */
                                  "cert = @D@/cert.pem\n"                       /* 19 */
                                  "key = @D@/key.pem\n"                         /* 20 */
                                  "upstream = sendgrid\n"                       /* 21 */
                                  "[brand c]\n"                                 /* 22 */
                                  "hostname = c.brand-b.net\n"                  /* 23 */
                                  "cert = @D@/cert.pem\n"                       /* 24 */
                                  "key = @D@/key.pem\n";                        /* 25 */

static void
test_brands_sni(void **state)
{
    static const struct {
        const char *name;
        size_t brand;
        int line;
    } want[] = {
        {"*.brand-b.net", 1, 17},    {"c.brand-b.net", 2, 23},   {"mail.brand-a.com", 0, 10},
        {"mail.brand-b.net", 1, 16}, {"smtp.brand-a.com", 0, 9}, {"smtp.brand-b.net", 1, 17},
        {"x.example.org", 1, 18},
    };
    struct rl_config *cfg = NULL;
    const struct rl_brand_conf *b;
    const struct rl_sni_name *hit;

    (void)state;
    assert_int_equal(load_text(brands_file, &cfg), 0);
    assert_string_equal(errtext, "");

    b = &cfg->brands[0];
    assert_string_equal(b->hostname, "SMTP.Brand-A.com"); /* as written, for replies */
    assert_int_equal(b->hostname_line, 9);
    assert_int_equal(b->naliases, 1);
    assert_string_equal(b->aliases[0].name, "mail.brand-a.com");
    assert_int_equal(b->aliases[0].line, 10);
    assert_non_null(strstr(b->cert_rsa, "/cert.pem"));
    assert_int_equal(b->cert_rsa_line, 13);
    assert_non_null(strstr(b->key_rsa, "/key.pem"));
    assert_int_equal(b->key_rsa_line, 14);
    b = &cfg->brands[1];
    assert_int_equal(b->naliases, 4); /* a repeated key adds up */
    assert_string_equal(b->aliases[0].name, "*.brand-b.net");
    assert_string_equal(b->aliases[3].name, "x.example.org");
    assert_int_equal(b->aliases[3].line, 18);
    assert_null(b->cert_rsa);
    assert_int_equal(b->cert_rsa_line, 0);
    assert_string_equal(b->upstream->name, "sendgrid");

    /* Sorted, lower case, a brand's own repeat kept once (at its first
     * line); an exact name under another brand's wildcard is allowed. */
    assert_int_equal(cfg->sni.n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < cfg->sni.n; i++) {
        assert_string_equal(cfg->sni.items[i].name, want[i].name);
        assert_int_equal(cfg->sni.items[i].brand, want[i].brand);
        assert_int_equal(cfg->sni.items[i].line, want[i].line);
    }
    hit = rl_sni_lookup(&cfg->sni, "C.brand-b.net", 13);
    assert_non_null(hit);
    assert_int_equal(hit->brand, 2);
    hit = rl_sni_lookup(&cfg->sni, "d.brand-b.net", 13);
    assert_non_null(hit);
    assert_int_equal(hit->brand, 1);

    assert_ptr_equal(cfg->listeners[0].brand, &cfg->brands[0]);
    assert_true(cfg->listeners[0].sni_refuse);
    assert_ptr_equal(cfg->listeners[1].brand, &cfg->brands[1]);
    assert_false(cfg->listeners[1].sni_refuse); /* the default */
    rl_config_unref(cfg);
}

static void
test_err_brands_sni(void **state)
{
    (void)state;
    /* The same name in two brands, whatever its case; a wildcard too. */
    EXPECT_FAIL("[listener l]\n"
                "listen = 127.0.0.1:25\n"
                "brand = b\n" BRAND_OK "aliases = *.example.com\n"
                "[brand c]\n"
                "hostname = mail.example.net\n"
                "aliases = SMTP.example.com, mail.example.org\n"
                "aliases = *.Example.com\n"
                "cert = @D@/cert.pem\n"
                "key = @D@/key.pem\n",
                "11: name smtp.example.com is already claimed by brand \"b\" (line 5): the brand a "
                "client gets must not depend on the order of the file",
                "12: name *.example.com is already claimed by brand \"b\" (line 8): the brand a "
                "client gets must not depend on the order of the file");
    /* Names that are not names, wildcards that claim too much or too
     * little, an unknown sni_unknown. */
    EXPECT_FAIL("[listener l]\n"
                "listen = 127.0.0.1:25\n"
                "sni_unknown = ignore\n" BRAND_OK "aliases = *.com, mail*.example.com\n"
                "aliases = a..example.com\n",
                "3: invalid sni_unknown \"ignore\" (expected default or refuse)",
                "8: invalid aliases \"*.com\" (a wildcard is \"*.\" and at least two labels, such "
                "as *.example.com; it stands for exactly one label)",
                "8: invalid aliases \"mail*.example.com\" (expected DNS names such as "
                "mail.example.com or wildcards such as *.example.com)",
                "9: invalid aliases \"a..example.com\" (expected DNS names such as "
                "mail.example.com or wildcards such as *.example.com)");
    EXPECT_FAIL(BRAND_OK "aliases = *\n",
                "5: invalid aliases \"*\" (a wildcard is \"*.\" and at least two labels, such as "
                "*.example.com; it stands for exactly one label)");
    /* The RSA pair comes as a pair. */
    EXPECT_FAIL(BRAND_OK "cert_rsa = @D@/cert.pem\n",
                "5: cert_rsa needs key_rsa (its private key file)");
    EXPECT_FAIL(BRAND_OK "key_rsa = @D@/key.pem\n",
                "5: key_rsa needs cert_rsa (its certificate file)");
}

/* ---- provider presets ----------------------------------------------------------- */

/* A brand per preset, by name. */
#define PRESET_BRAND(name, host, up)                                                               \
    "[brand " name "]\n"                                                                           \
    "hostname = " host "\n"                                                                        \
    "cert = @D@/cert.pem\n"                                                                        \
    "key = @D@/key.pem\n"                                                                          \
    "upstream = " up "\n"

static const char presets_file[] =
    "[listener l]\n"
    "listen = 127.0.0.1:465\n"
    "brand = p0\n" PRESET_BRAND("p0", "a.example", "sendgrid")
        PRESET_BRAND("p1", "b.example", "ses-eu-west-1") PRESET_BRAND("p2", "c.example", "postmark")
            PRESET_BRAND("p3", "d.example", "brevo") PRESET_BRAND("p4", "e.example", "SendGrid")
                PRESET_BRAND("p5", "f.example", "ses-us-gov-west-1");

static void
check_upstream(const struct rl_upstream_conf *u, const char *name, const char *host,
               enum rl_tls_mode tls, unsigned port, uint64_t size, size_t nhide, const char *hide0)
{
    assert_string_equal(u->name, name);
    assert_int_equal(u->line, 0);
    assert_string_equal(u->host, host);
    assert_string_equal(u->verify_name, host); /* the certificate name is the host */
    assert_int_equal(u->tls, tls);
    assert_int_equal(u->port, port);
    assert_int_equal(u->max_message_size, size);
    assert_null(u->ca_file);
    assert_null(u->helo_name);
    assert_int_equal(u->nhide, nhide);
    assert_string_equal(u->hide[0], hide0);
}

static void
test_presets_providers(void **state)
{
    struct rl_config *cfg = NULL;

    (void)state;
    assert_int_equal(load_text(presets_file, &cfg), 0);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->nupstreams, 5); /* "SendGrid" is "sendgrid", built once */
    check_upstream(cfg->brands[0].upstream, "sendgrid", "smtp.sendgrid.net", RL_TLS_IMPLICIT, 465,
                   20480000, 3, "sendgrid.net");
    assert_ptr_equal(cfg->brands[4].upstream, cfg->brands[0].upstream);
    check_upstream(cfg->brands[1].upstream, "ses-eu-west-1", "email-smtp.eu-west-1.amazonaws.com",
                   RL_TLS_IMPLICIT, 465, 40u * 1024 * 1024, 3, "amazonses.com");
    check_upstream(cfg->brands[2].upstream, "postmark", "smtp.postmarkapp.com", RL_TLS_STARTTLS,
                   587, 10u * 1024 * 1024, 2, "postmarkapp.com");
    check_upstream(cfg->brands[3].upstream, "brevo", "smtp-relay.brevo.com", RL_TLS_STARTTLS, 587,
                   0, 4, "brevo.com");
    check_upstream(cfg->brands[5].upstream, "ses-us-gov-west-1",
                   "email-smtp.us-gov-west-1.amazonaws.com", RL_TLS_IMPLICIT, 465,
                   40u * 1024 * 1024, 3, "amazonses.com");
    rl_config_unref(cfg);
}

static void
test_presets_override(void **state)
{
    struct rl_config *cfg = NULL;
    const struct rl_upstream_conf *u;

    (void)state;
    /* Every key of a section wins over its preset, before or after the
     * preset line; the mode picks the preset's port for it. */
    assert_int_equal(load_text("[upstream sg]\n"
                               "tls = starttls\n"
                               "preset = sendgrid\n"
                               "[upstream ses]\n"
                               "preset = ses-ap-southeast-2\n"
                               "host = 127.0.0.1\n"
                               "port = 2465\n"
                               "ca_file = @D@/ca.pem\n"
                               "helo_name = relay.example\n"
                               "max_message_size = 1M\n"
                               "hide = aws\n"
                               "[upstream pm]\n"
                               "preset = postmark\n"
                               "tls = implicit\n"
                               "port = 2465\n"
                               "verify_name = smtp.example.net\n"
                               "[upstream br]\n"
                               "preset = brevo\n"
                               "tls = implicit\n"
                               "hide =\n" BRAND_OK "upstream = sg\n",
                               &cfg),
                     0);
    assert_string_equal(errtext, "");
    u = &cfg->upstreams[0];
    assert_string_equal(u->name, "sg");
    assert_string_equal(u->host, "smtp.sendgrid.net");
    assert_int_equal(u->tls, RL_TLS_STARTTLS);
    assert_int_equal(u->port, 587);
    assert_int_equal(u->max_message_size, 20480000);
    u = &cfg->upstreams[1];
    assert_string_equal(u->host, "127.0.0.1");
    assert_string_equal(u->verify_name, "email-smtp.ap-southeast-2.amazonaws.com");
    assert_int_equal(u->port, 2465);
    assert_non_null(strstr(u->ca_file, "/ca.pem"));
    assert_string_equal(u->helo_name, "relay.example");
    assert_int_equal(u->max_message_size, 1024 * 1024);
    assert_int_equal(u->nhide, 1);
    assert_string_equal(u->hide[0], "aws");
    u = &cfg->upstreams[2];
    assert_int_equal(u->tls, RL_TLS_IMPLICIT);
    assert_int_equal(u->port, 2465);
    assert_string_equal(u->verify_name, "smtp.example.net");
    u = &cfg->upstreams[3];
    assert_int_equal(u->tls, RL_TLS_IMPLICIT);
    assert_int_equal(u->port, 465);
    assert_int_equal(u->nhide, 0);
    rl_config_unref(cfg);
}

static void
test_err_presets(void **state)
{
    (void)state;
    /* A mode the provider documents no port for needs one. */
    EXPECT_FAIL("[upstream pm]\n"
                "preset = postmark\n"
                "tls = implicit\n" BRAND_OK "upstream = pm\n",
                "3: preset postmark documents no implicit TLS port: set port, or use tls = "
                "starttls");
    /* Amazon SES regions are checked for their form. */
    EXPECT_FAIL("[upstream a]\n"
                "preset = ses-europe\n"
                "[upstream b]\n"
                "preset = ses-eu-west-1a\n"
                "[upstream c]\n"
                "preset = ses-\n" BRAND_OK "upstream = ses-EU_WEST-1\n",
                "2: invalid preset \"ses-europe\": \"europe\" is not an AWS region name such as "
                "eu-west-1 or us-east-1",
                "4: invalid preset \"ses-eu-west-1a\": \"eu-west-1a\" is not an AWS region name "
                "such as eu-west-1 or us-east-1",
                "6: invalid preset \"ses-\": \"\" is not an AWS region name such as eu-west-1 or "
                "us-east-1",
                "11: unknown upstream \"ses-EU_WEST-1\": \"EU_WEST-1\" is not an AWS region name "
                "such as eu-west-1 or us-east-1");
}

/* ---- [metrics] ------------------------------------------------------------------- */

static void
test_metrics_section(void **state)
{
    struct rl_config *cfg = NULL;

    (void)state;
    /* Absent: no endpoint, the documented timing. */
    assert_int_equal(load_text("[listener l]\nlisten = 127.0.0.1:25\n" BRAND_OK, &cfg), 0);
    assert_int_equal(cfg->metrics_naddrs, 0);
    assert_int_equal(cfg->upstream_check_interval_ms, RL_CHECK_INTERVAL_DEFAULT);
    assert_int_equal(cfg->ready_max_age_ms, RL_READY_MAX_AGE_FACTOR * RL_CHECK_INTERVAL_DEFAULT);
    rl_config_unref(cfg);

    /* ready_max_age follows the interval unless given. */
    assert_int_equal(load_text("[metrics]\n"
                               "listen = 127.0.0.1:9465, [::1]:9465\n"
                               "upstream_check_interval = 10s\n"
                               "[listener l]\nlisten = 127.0.0.1:25\n" BRAND_OK,
                               &cfg),
                     0);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->metrics_naddrs, 2);
    assert_string_equal(cfg->metrics_addrs[0].text, "127.0.0.1:9465");
    assert_string_equal(cfg->metrics_addrs[1].text, "[::1]:9465");
    assert_int_equal(cfg->metrics_listen_line, 2);
    assert_int_equal(cfg->upstream_check_interval_ms, 10000);
    assert_int_equal(cfg->ready_max_age_ms, 30000);
    rl_config_unref(cfg);

    assert_int_equal(load_text("[metrics]\n"
                               "upstream_check_interval = 1s\n"
                               "ready_max_age = 2500ms\n"
                               "[listener l]\nlisten = 127.0.0.1:25\n" BRAND_OK,
                               &cfg),
                     0);
    assert_int_equal(cfg->metrics_naddrs, 0);
    assert_int_equal(cfg->upstream_check_interval_ms, 1000);
    assert_int_equal(cfg->ready_max_age_ms, 2500);
    rl_config_unref(cfg);
}

static void
test_err_metrics_section(void **state)
{
    (void)state;
    EXPECT_FAIL("[metrics]\n"
                "listen = 127.0.0.1:25, 127.0.0.1:9465, localhost:9465\n"
                "upstream_check_interval = 0s\n"
                "ready_max_age = 2d\n"
                "wait = 1s\n"
                "[listener l]\nlisten = *:25\n" BRAND_OK,
                "2: invalid listen address \"localhost:9465\" (expected IPV4:PORT, [IPV6]:PORT "
                "or *:PORT, such as 0.0.0.0:465, [::1]:587 or *:25; no host names)",
                "3: invalid upstream_check_interval \"0s\" (expected a duration from 1s to 1h, "
                "such as 30s, 1500ms, 5m or 1h; a plain number is seconds)",
                "4: invalid ready_max_age \"2d\" (expected a duration from 1s to 24h, such as "
                "30s, 1500ms, 5m or 1h; a plain number is seconds)",
                "5: unknown key \"wait\" in [metrics]");
    EXPECT_FAIL("[metrics]\n"
                "listen = 127.0.0.1:25, 127.0.0.1:9465, 0.0.0.0:9465\n"
                "upstream_check_interval = 1m\n"
                "ready_max_age = 30s\n"
                "[listener l]\nlisten = *:25\n" BRAND_OK,
                "2: 127.0.0.1:25 overlaps 0.0.0.0:25 of listener \"l\" (line 6)",
                "2: 0.0.0.0:9465 overlaps 127.0.0.1:9465 of [metrics]",
                "4: ready_max_age is shorter than upstream_check_interval: readiness would be "
                "lost between two checks");
    EXPECT_FAIL("[metrics \"m\"]\nlisten = 127.0.0.1:9465\n" BRAND_OK,
                "1: [metrics] takes no name");
}

/* ---- the shipped example ----------------------------------------------------- */

static void
test_example_config(void **state)
{
    struct rl_config *cfg = NULL;
    char cwd[PATH_MAX], path[PATH_MAX + 64];
    const struct rl_listener_conf *l;

    (void)state;
    /* Its cert and key are relative to the working directory: run from
     * the temporary directory with dummy files at those paths. */
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    snprintf(path, sizeof(path), "%s/certs", tmpdir);
    assert_true(mkdir(path, 0700) == 0 || errno == EEXIST);
    snprintf(path, sizeof(path), "%s/certs/dev", tmpdir);
    assert_true(mkdir(path, 0700) == 0 || errno == EEXIST);
    snprintf(path, sizeof(path), "%s/certs/dev/smtp.example.com.crt", tmpdir);
    write_file(path, "cert\n");
    snprintf(path, sizeof(path), "%s/certs/dev/smtp.example.com.key", tmpdir);
    write_file(path, "key\n");
    assert_int_equal(chdir(tmpdir), 0);

    assert_int_equal(load_path(RL_SOURCE_ROOT "/config/relabel.ini", &cfg), 0);
    assert_int_equal(chdir(cwd), 0);
    assert_string_equal(errtext, "");

    assert_int_equal(cfg->nbrands, 1);
    assert_string_equal(cfg->brands[0].name, "example");
    assert_string_equal(cfg->brands[0].hostname, "smtp.example.com");
    assert_string_equal(cfg->brands[0].cert, "certs/dev/smtp.example.com.crt");
    assert_string_equal(cfg->brands[0].key, "certs/dev/smtp.example.com.key");
    assert_string_equal(cfg->brands[0].upstream->name, "mailgun-us");
    assert_int_equal(cfg->nupstreams, 1);
    assert_false(cfg->bare_newline_reject);
    assert_string_equal(cfg->banner, "ESMTP ready");
    /* The documented defaults are the real ones. */
    assert_int_equal(cfg->handshake_timeout_ms, RL_TIMEOUT_HANDSHAKE_DEFAULT);
    assert_int_equal(cfg->command_timeout_ms, RL_TIMEOUT_COMMAND_DEFAULT);
    assert_int_equal(cfg->data_timeout_ms, RL_TIMEOUT_DATA_DEFAULT);
    assert_int_equal(cfg->upstream_connect_timeout_ms, RL_TIMEOUT_UP_CONNECT_DEFAULT);
    assert_int_equal(cfg->upstream_timeout_ms, RL_TIMEOUT_UP_REPLY_DEFAULT);
    assert_int_equal(cfg->max_line, RL_SMTP_LINE_DEFAULT);
    assert_int_equal(cfg->max_errors, RL_MAX_ERRORS_DEFAULT);
    /* No metrics endpoint unless asked for; the documented check timing. */
    assert_int_equal(cfg->metrics_naddrs, 0);
    assert_int_equal(cfg->upstream_check_interval_ms, RL_CHECK_INTERVAL_DEFAULT);
    assert_int_equal(cfg->ready_max_age_ms, RL_READY_MAX_AGE_FACTOR * RL_CHECK_INTERVAL_DEFAULT);

    /* All four drop-in ports. */
    assert_int_equal(cfg->nlisteners, 4);
    l = &cfg->listeners[0];
    assert_int_equal(l->tls, RL_TLS_IMPLICIT);
    assert_string_equal(addr_text(l, 0), "0.0.0.0:465");
    assert_string_equal(addr_text(l, 1), "[::]:465");
    for (size_t i = 1; i < 4; i++) {
        l = &cfg->listeners[i];
        assert_int_equal(l->tls, RL_TLS_STARTTLS);
        assert_true(l->require_tls);
        assert_ptr_equal(l->brand, &cfg->brands[0]);
    }
    assert_string_equal(addr_text(&cfg->listeners[1], 0), "0.0.0.0:587");
    assert_string_equal(addr_text(&cfg->listeners[2], 0), "0.0.0.0:25");
    assert_string_equal(addr_text(&cfg->listeners[3], 0), "0.0.0.0:2525");
    rl_config_unref(cfg);
}

/* The commented-out [upstream "custom"] of the example, uncommented and
 * used by the brand, must load too: it is what people will copy. */
static void
test_example_custom_upstream(void **state)
{
    struct rl_config *cfg = NULL;
    char cwd[PATH_MAX], *line = NULL, *text = NULL;
    size_t cap = 0, len = 0;
    bool in_custom = false;
    FILE *in, *out;
    const struct rl_upstream_conf *u;

    (void)state;
    if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) != 0)
        skip(); /* the example's ca_file; ca-certificates is not installed */
    in = fopen(RL_SOURCE_ROOT "/config/relabel.ini", "r");
    assert_non_null(in);
    out = open_memstream(&text, &len);
    assert_non_null(out);
    while (getline(&line, &cap, in) > 0) {
        if (strncmp(line, ";[upstream \"custom\"]", 20) == 0)
            in_custom = true;
        if (in_custom && line[0] == ';' && line[1] != '\n' && line[1] != ' ')
            fputs(line + 1, out);
        else if (strncmp(line, "upstream = mailgun-us", 21) == 0)
            fputs("upstream = custom\n", out);
        else
            fputs(line, out);
    }
    free(line);
    fclose(in);
    assert_int_equal(fclose(out), 0);
    assert_true(in_custom);

    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(tmpdir), 0); /* certs/dev/ from test_example_config */
    assert_int_equal(load_text(text, &cfg), 0);
    assert_int_equal(chdir(cwd), 0);
    free(text);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->nupstreams, 1);
    u = cfg->brands[0].upstream;
    assert_string_equal(u->name, "custom");
    assert_string_equal(u->host, "smtp.eu.mailgun.org");
    assert_int_equal(u->port, 587);
    assert_int_equal(u->tls, RL_TLS_STARTTLS);
    assert_string_equal(u->ca_file, "/etc/ssl/certs/ca-certificates.crt");
    assert_string_equal(u->helo_name, "relay.example.com");
    assert_int_equal(u->max_message_size, 25u * 1024 * 1024);
    assert_int_equal(u->nhide, 3);
    rl_config_unref(cfg);
}

/* The example's second brand, uncommented, serves by SNI next to the
 * first, on its own preset. */
static void
test_example_second_brand(void **state)
{
    struct rl_config *cfg = NULL;
    char cwd[PATH_MAX], path[PATH_MAX + 64], *line = NULL, *text = NULL;
    size_t cap = 0, len = 0;
    bool in_brand = false, seen = false;
    const struct rl_sni_name *hit;
    FILE *in, *out;

    (void)state;
    in = fopen(RL_SOURCE_ROOT "/config/relabel.ini", "r");
    assert_non_null(in);
    out = open_memstream(&text, &len);
    assert_non_null(out);
    while (getline(&line, &cap, in) > 0) {
        if (strncmp(line, ";[brand \"brand-b\"]", 18) == 0)
            in_brand = seen = true;
        else if (line[0] != ';' || line[1] == ' ' || line[1] == '\n')
            in_brand = false;
        fputs(in_brand ? line + 1 : line, out);
    }
    free(line);
    fclose(in);
    assert_int_equal(fclose(out), 0);
    assert_true(seen);
    snprintf(path, sizeof(path), "%s/certs/dev/mail.brand-b.net.crt", tmpdir);
    write_file(path, "cert\n");
    snprintf(path, sizeof(path), "%s/certs/dev/mail.brand-b.net.key", tmpdir);
    write_file(path, "key\n");

    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(tmpdir), 0); /* certs/dev/ from test_example_config */
    assert_int_equal(load_text(text, &cfg), 0);
    assert_int_equal(chdir(cwd), 0);
    free(text);
    assert_string_equal(errtext, "");
    assert_int_equal(cfg->nbrands, 2);
    assert_string_equal(cfg->brands[1].upstream->name, "ses-eu-west-1");
    hit = rl_sni_lookup(&cfg->sni, "smtp.brand-b.net", 16);
    assert_non_null(hit);
    assert_int_equal(hit->brand, 1);
    hit = rl_sni_lookup(&cfg->sni, "smtp.example.com", 16);
    assert_non_null(hit);
    assert_int_equal(hit->brand, 0);
    assert_ptr_equal(cfg->listeners[0].brand, &cfg->brands[0]);
    assert_false(cfg->listeners[0].sni_refuse);
    rl_config_unref(cfg);
}

static void
test_refcount(void **state)
{
    struct rl_config *cfg = NULL;

    (void)state;
    assert_int_equal(load_text(BRAND_OK, &cfg), 0);
    assert_int_equal(cfg->refs, 1);
    assert_ptr_equal(rl_config_ref(cfg), cfg);
    assert_ptr_equal(rl_config_ref(cfg), cfg);
    assert_int_equal(cfg->refs, 3);
    rl_config_unref(cfg);
    rl_config_unref(cfg);
    assert_int_equal(cfg->refs, 1);
    assert_string_equal(cfg->brands[0].hostname, "smtp.example.com"); /* still alive */
    rl_config_unref(cfg); /* freed: ASan reports a leak otherwise */
    rl_config_unref(NULL);
    assert_null(rl_config_ref(NULL));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_value_forms),
        cmocka_unit_test(test_err_cannot_open),
        cmocka_unit_test(test_err_unknown_section),
        cmocka_unit_test(test_err_bad_headers),
        cmocka_unit_test(test_err_unknown_key),
        cmocka_unit_test(test_err_key_outside_section),
        cmocka_unit_test(test_err_duplicate_section),
        cmocka_unit_test(test_err_duplicate_key),
        cmocka_unit_test(test_err_bad_values_relabel),
        cmocka_unit_test(test_err_bad_values_sections),
        cmocka_unit_test(test_err_unknown_references),
        cmocka_unit_test(test_err_listen_address),
        cmocka_unit_test(test_err_listen_empty_item),
        cmocka_unit_test(test_err_same_address),
        cmocka_unit_test(test_err_missing_required),
        cmocka_unit_test(test_err_unreadable_files),
        cmocka_unit_test(test_err_syntax),
        cmocka_unit_test(test_err_line_too_long),
        cmocka_unit_test(test_err_brands),
        cmocka_unit_test(test_err_require_tls_implicit),
        cmocka_unit_test(test_proxy_and_access),
        cmocka_unit_test(test_err_proxy_and_access),
        cmocka_unit_test(test_several_errors),
        cmocka_unit_test(test_metrics_section),
        cmocka_unit_test(test_err_metrics_section),
        cmocka_unit_test(test_example_config),
        cmocka_unit_test(test_example_custom_upstream),
        cmocka_unit_test(test_example_second_brand),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_brands_sni),
        cmocka_unit_test(test_err_brands_sni),
        cmocka_unit_test(test_presets_providers),
        cmocka_unit_test(test_presets_override),
        cmocka_unit_test(test_err_presets),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
