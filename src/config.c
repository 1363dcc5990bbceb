/*
 * config.c - the ini file as an immutable, ref-counted struct rl_config.
 *
 * Loading has three steps.  (1) Parse: inih splits "key = value" lines and
 * strips inline comments; every value goes through a parse function chosen
 * from one directive table and lands in a "raw" per-section struct whose
 * fields start out unset (nginx's create_conf).  (2) Merge: explicit value,
 * else the upstream preset's value, else the built-in default (nginx's
 * merge_conf).  (3) Resolve and check what needs more than one key: brand and
 * upstream references, default listeners, overlapping listen addresses.
 *
 * Every problem is collected with its line and printed at the end, sorted by
 * line, as "PATH:LINE: message"; nothing is half-built on failure.  Files
 * named by cert, key and ca_file are only opened to prove they are readable;
 * their content is the TLS layer's business.  No sockets, no DNS, no TLS.
 * Relative paths are kept as written and so resolve against the working
 * directory, both here and when the TLS layer opens them later: whoever
 * loads the config must not chdir() in between (or before a reload).
 *
 * Line numbers.  Debian's inih is built without INI_HANDLER_LINENO, so the
 * handler is not told the line.  We feed inih through our own reader
 * (ini_parse_stream): inih asks the reader for exactly one physical line per
 * line it counts and calls the handler for that line before asking for the
 * next, so the reader's counter is the line of the key being handled.  The
 * reader also:
 *   - parses section headers itself, because inih never calls the handler
 *     for a header (INI_CALL_HANDLER_ON_NEW_SECTION is 0), yet an empty
 *     [brand "x"] must still be seen and its line is needed for "missing key"
 *     messages; inih only gets a short "[s]" in their place;
 *   - strips leading whitespace, which turns off inih's continuation lines
 *     (an indented line would otherwise be glued to the previous value);
 *   - reads lines of any length with getline() and reports those that do not
 *     fit inih's buffer (INI_MAX_LINE, 200 in Debian's build) instead of
 *     letting inih split them silently;
 *   - notices a "key = value" line the handler was never called for, which
 *     is how inih's syntax errors (no '=' or ':') are found, all of them
 *     rather than only the first that inih's return value names.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <netinet/in.h>

#include <ini.h>
#include <uv.h>

#include "relabel/config.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/log.h"
#include "relabel/proxy.h"
#include "relabel/users.h"

#define CONFIG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Every scalar in a raw section is an int64_t; real values are never
 * negative, so -1 can mean "not given in the file". */
#define CONFIG_UNSET ((int64_t)-1)

#define CONFIG_SEC_MS 1000
#define CONFIG_NAME_MAX 64
#define CONFIG_BANNER_MAX 200
#define CONFIG_SIZE_MAX ((int64_t)4 << 30)

enum config_stype {
    CONFIG_S_RELABEL,
    CONFIG_S_LISTENER,
    CONFIG_S_BRAND,
    CONFIG_S_UPSTREAM,
    CONFIG_S_METRICS,
};

static const struct {
    const char *name;
    bool named;
} config_stypes[] = {
    [CONFIG_S_RELABEL] = {"relabel", false}, [CONFIG_S_LISTENER] = {"listener", true},
    [CONFIG_S_BRAND] = {"brand", true},      [CONFIG_S_UPSTREAM] = {"upstream", true},
    [CONFIG_S_METRICS] = {"metrics", false},
};

struct config_list {
    char **items;
    size_t n;
    bool set; /* an explicit empty list ("hide =") is still "set" */
};

/* Raw sections: what the file said, unset fields left at NULL/CONFIG_UNSET. */
struct config_raw_relabel {
    char *user;
    char *group;
    char *banner;
    int64_t log_level;
    int64_t log_format;
    int64_t handshake_timeout;
    int64_t command_timeout;
    int64_t data_timeout;
    int64_t command_deadline;
    int64_t min_data_rate;
    int64_t upstream_connect_timeout;
    int64_t upstream_timeout;
    int64_t drain_timeout;
    int64_t watch_debounce;
    int64_t max_line;
    int64_t max_errors;
    int64_t max_junk_commands;
    int64_t max_connections;
    int64_t max_connections_per_ip;
    int64_t max_upstream_connections;
    int64_t max_connection_rate;
    int64_t workers;
    int64_t bare_newline;
};

struct config_addrs {
    struct rl_addr *items;
    size_t n;
};

struct config_raw_listener {
    struct config_addrs listen;
    int64_t tls;
    int64_t require_tls;
    char *brand;
    int64_t sni_unknown;
    int64_t proxy_protocol;
    struct rl_cidr_list proxy_trusted;
    struct rl_cidr_list allow;
    struct rl_cidr_list deny;
};

/* Names with the line of each (aliases may span several lines). */
struct config_names {
    struct rl_brand_alias *items;
    size_t n;
};

struct config_raw_brand {
    char *hostname;
    struct config_names aliases;
    char *cert;
    char *key;
    char *cert_rsa;
    char *key_rsa;
    char *upstream;
    char *users;
    char *upstream_user;
    char *upstream_password_file;
};

struct config_raw_upstream {
    char *preset;
    char *host;
    int64_t port;
    int64_t tls;
    char *verify_name;
    char *ca_file;
    char *helo_name;
    int64_t max_message_size;
    struct config_list hide;
    struct rl_upstream_port fallback[RL_UPSTREAM_FALLBACK_MAX];
    size_t nfallback;
};

struct config_raw_metrics {
    struct config_addrs listen;
    int64_t upstream_check_interval;
    int64_t ready_max_age;
};

union config_raw {
    struct config_raw_relabel relabel;
    struct config_raw_listener listener;
    struct config_raw_brand brand;
    struct config_raw_upstream upstream;
    struct config_raw_metrics metrics;
};

/* Names accepted by an enumerated key, with the value stored for each. */
struct config_name {
    const char *name;
    int value;
};

static const struct config_name config_names_log_format[] = {
    {"text", RL_LOG_TEXT}, {"json", RL_LOG_JSON}, {NULL, 0}};
static const struct config_name config_names_tls[] = {
    {"implicit", RL_TLS_IMPLICIT}, {"starttls", RL_TLS_STARTTLS}, {NULL, 0}};
static const struct config_name config_names_bare_newline[] = {
    {"normalize", 0}, {"normalise", 0}, {"reject", 1}, {NULL, 0}};
static const struct config_name config_names_proxy[] = {{"no", 0},
                                                        {"v1", RL_PROXY_V1},
                                                        {"v2", RL_PROXY_V2},
                                                        {"any", RL_PROXY_V1 | RL_PROXY_V2},
                                                        {NULL, 0}};
static const struct config_name config_names_sni_unknown[] = {
    {"default", 0}, {"refuse", 1}, {NULL, 0}};

/*
 * Upstream presets: what each provider's public SMTP documentation says
 * about its submission service (config/relabel.ini and the README list the
 * facts and their sources).  The mode is the default; the port follows the
 * mode unless the section sets one, and a mode the provider does not
 * document has no port (0), so choosing it needs an explicit port.  The
 * expected certificate name is the host.  A size of 0 leaves the limit to
 * the upstream's own SIZE, for providers that document none for SMTP.
 * "ses-REGION" is a family: its host is built from the region.
 */
static const char *const config_mailgun_hide[] = {"mailgun.org", "postgun.com", "mailgun"};
static const char *const config_sendgrid_hide[] = {"sendgrid.net", "sendgrid", "twilio"};
static const char *const config_ses_hide[] = {"amazonses.com", "amazonaws.com",
                                              "SimpleEmailService"};
static const char *const config_postmark_hide[] = {"postmarkapp.com", "postmark"};
static const char *const config_brevo_hide[] = {"brevo.com", "sendinblue.com", "brevo",
                                                "sendinblue"};

struct config_preset {
    const char *name; /* "ses-" for the family */
    const char *host; /* NULL: built from the name (ses-REGION) */
    enum rl_tls_mode tls;
    uint16_t implicit_port; /* 0: no implicit TLS port documented */
    uint16_t starttls_port; /* 0: no STARTTLS port documented */
    uint64_t max_message_size;
    const char *const *hide;
    size_t nhide;
};

#define CONFIG_PRESET_HIDE(list) (list), CONFIG_ARRAY_SIZE(list)

static const struct config_preset config_presets[] = {
    {"mailgun-us", "smtp.mailgun.org", RL_TLS_IMPLICIT, 465, 587, RL_MAILGUN_MAX_MESSAGE,
     CONFIG_PRESET_HIDE(config_mailgun_hide)},
    {"mailgun-eu", "smtp.eu.mailgun.org", RL_TLS_IMPLICIT, 465, 587, RL_MAILGUN_MAX_MESSAGE,
     CONFIG_PRESET_HIDE(config_mailgun_hide)},
    {"sendgrid", "smtp.sendgrid.net", RL_TLS_IMPLICIT, 465, 587, RL_SENDGRID_MAX_MESSAGE,
     CONFIG_PRESET_HIDE(config_sendgrid_hide)},
    {"ses-", NULL, RL_TLS_IMPLICIT, 465, 587, RL_SES_MAX_MESSAGE,
     CONFIG_PRESET_HIDE(config_ses_hide)},
    {"postmark", "smtp.postmarkapp.com", RL_TLS_STARTTLS, 0, 587, RL_POSTMARK_MAX_MESSAGE,
     CONFIG_PRESET_HIDE(config_postmark_hide)},
    {"brevo", "smtp-relay.brevo.com", RL_TLS_STARTTLS, 465, 587, 0,
     CONFIG_PRESET_HIDE(config_brevo_hide)},
};

#define CONFIG_NPRESETS CONFIG_ARRAY_SIZE(config_presets)
#define CONFIG_DEFAULT_PRESET "mailgun-us"
#define CONFIG_PRESETS_TEXT "mailgun-us, mailgun-eu, sendgrid, ses-REGION, postmark, brevo"

/* A preset found by name: the table entry, with the host (and the name)
 * filled in for a family member. */
struct config_preset_use {
    struct config_preset p;
    char name[CONFIG_NAME_MAX + 1];
    char host[CONFIG_NAME_MAX + 32];
};

struct config_error {
    int line;
    unsigned seq; /* keeps errors on one line in the order found */
    char *msg;
    bool raw; /* printed as it is (a users file's own "FILE:LINE: message") */
};

struct config_section;
struct config_directive;

struct config_ctx {
    const char *path;
    FILE *fp;
    char *buf; /* getline() buffer */
    size_t bufcap;
    int lineno;      /* the line inih is processing; see the file comment */
    int pending_key; /* a key line the handler has not been called for yet */
    bool eof;
    int read_errno;

    struct config_section **sections;
    size_t nsections;
    struct config_section *cur; /* section keys go to; NULL before any */
    bool cur_ignored;           /* the header was bad: skip its keys quietly */

    struct config_error *errors;
    size_t nerrors;
    bool oom;
};

typedef bool (*config_parse_fn)(struct config_ctx *ctx, const struct config_directive *d,
                                const char *value, void *field);

struct config_directive {
    enum config_stype section;
    const char *key;
    config_parse_fn parse;
    size_t offset; /* into the section's member of union config_raw */
    int64_t min, max;
    const struct config_name *names;
    bool empty_ok;
    bool repeat; /* may be given on several lines, each adding to the value */
};

static bool config_parse_string(struct config_ctx *, const struct config_directive *, const char *,
                                void *);
static bool config_parse_workers(struct config_ctx *, const struct config_directive *, const char *,
                                 void *);
static bool config_parse_banner(struct config_ctx *, const struct config_directive *, const char *,
                                void *);
static bool config_parse_ref(struct config_ctx *, const struct config_directive *, const char *,
                             void *);
static bool config_parse_hostname(struct config_ctx *, const struct config_directive *,
                                  const char *, void *);
static bool config_parse_host(struct config_ctx *, const struct config_directive *, const char *,
                              void *);
static bool config_parse_file(struct config_ctx *, const struct config_directive *, const char *,
                              void *);
static bool config_parse_enum(struct config_ctx *, const struct config_directive *, const char *,
                              void *);
static bool config_parse_bool(struct config_ctx *, const struct config_directive *, const char *,
                              void *);
static bool config_parse_log_level(struct config_ctx *, const struct config_directive *,
                                   const char *, void *);
static bool config_parse_number(struct config_ctx *, const struct config_directive *, const char *,
                                void *);
static bool config_parse_duration(struct config_ctx *, const struct config_directive *,
                                  const char *, void *);
static bool config_parse_size(struct config_ctx *, const struct config_directive *, const char *,
                              void *);
static bool config_parse_list(struct config_ctx *, const struct config_directive *, const char *,
                              void *);
static bool config_parse_listen(struct config_ctx *, const struct config_directive *, const char *,
                                void *);
static bool config_parse_cidrs(struct config_ctx *, const struct config_directive *, const char *,
                               void *);
static bool config_parse_names(struct config_ctx *, const struct config_directive *, const char *,
                               void *);
static bool config_parse_login(struct config_ctx *, const struct config_directive *, const char *,
                               void *);
static bool config_parse_preset(struct config_ctx *, const struct config_directive *, const char *,
                                void *);
static bool config_parse_fallback(struct config_ctx *, const struct config_directive *,
                                  const char *, void *);

/* Indices into config_directives, for the checks that need to know whether
 * (and on which line) a particular key was given. */
enum config_dindex {
    CONFIG_D_USER,
    CONFIG_D_GROUP,
    CONFIG_D_LOG_LEVEL,
    CONFIG_D_LOG_FORMAT,
    CONFIG_D_BANNER,
    CONFIG_D_HANDSHAKE_TIMEOUT,
    CONFIG_D_COMMAND_TIMEOUT,
    CONFIG_D_DATA_TIMEOUT,
    CONFIG_D_COMMAND_DEADLINE,
    CONFIG_D_MIN_DATA_RATE,
    CONFIG_D_UPSTREAM_CONNECT_TIMEOUT,
    CONFIG_D_UPSTREAM_TIMEOUT,
    CONFIG_D_DRAIN_TIMEOUT,
    CONFIG_D_WATCH_DEBOUNCE,
    CONFIG_D_MAX_LINE,
    CONFIG_D_MAX_ERRORS,
    CONFIG_D_MAX_JUNK_COMMANDS,
    CONFIG_D_MAX_CONNECTIONS,
    CONFIG_D_MAX_CONNECTIONS_PER_IP,
    CONFIG_D_MAX_UPSTREAM_CONNECTIONS,
    CONFIG_D_MAX_CONNECTION_RATE,
    CONFIG_D_WORKERS,
    CONFIG_D_BARE_NEWLINE,
    CONFIG_D_LISTEN,
    CONFIG_D_LISTENER_TLS,
    CONFIG_D_LISTENER_BRAND,
    CONFIG_D_REQUIRE_TLS,
    CONFIG_D_PROXY_PROTOCOL,
    CONFIG_D_PROXY_TRUSTED,
    CONFIG_D_ALLOW,
    CONFIG_D_DENY,
    CONFIG_D_SNI_UNKNOWN,
    CONFIG_D_HOSTNAME,
    CONFIG_D_ALIASES,
    CONFIG_D_CERT,
    CONFIG_D_KEY,
    CONFIG_D_CERT_RSA,
    CONFIG_D_KEY_RSA,
    CONFIG_D_BRAND_UPSTREAM,
    CONFIG_D_USERS,
    CONFIG_D_UPSTREAM_USER,
    CONFIG_D_UPSTREAM_PASSWORD_FILE,
    CONFIG_D_PRESET,
    CONFIG_D_HOST,
    CONFIG_D_PORT,
    CONFIG_D_UPSTREAM_TLS,
    CONFIG_D_VERIFY_NAME,
    CONFIG_D_CA_FILE,
    CONFIG_D_HELO_NAME,
    CONFIG_D_MAX_MESSAGE_SIZE,
    CONFIG_D_HIDE,
    CONFIG_D_FALLBACK,
    CONFIG_D_METRICS_LISTEN,
    CONFIG_D_CHECK_INTERVAL,
    CONFIG_D_READY_MAX_AGE,
    CONFIG_D_COUNT
};

/* Designated initializers throughout, so that an entry names only what it
 * uses and clang's -Wmissing-field-initializers stays quiet. */
#define CONFIG_DIRECTIVE(sec, type, k, fn)                                                         \
    .section = (sec), .key = #k, .parse = (fn), .offset = offsetof(struct type, k)
#define CONFIG_R(k, fn) CONFIG_DIRECTIVE(CONFIG_S_RELABEL, config_raw_relabel, k, fn)
#define CONFIG_L(k, fn) CONFIG_DIRECTIVE(CONFIG_S_LISTENER, config_raw_listener, k, fn)
#define CONFIG_B(k, fn) CONFIG_DIRECTIVE(CONFIG_S_BRAND, config_raw_brand, k, fn)
#define CONFIG_U(k, fn) CONFIG_DIRECTIVE(CONFIG_S_UPSTREAM, config_raw_upstream, k, fn)
#define CONFIG_M(k, fn) CONFIG_DIRECTIVE(CONFIG_S_METRICS, config_raw_metrics, k, fn)
#define CONFIG_TIMEOUT(k)                                                                          \
    {                                                                                              \
        CONFIG_R(k, config_parse_duration), .min = CONFIG_SEC_MS, .max = 3600 * CONFIG_SEC_MS      \
    }

static const struct config_directive config_directives[CONFIG_D_COUNT] = {
    [CONFIG_D_USER] = {CONFIG_R(user, config_parse_string)},
    [CONFIG_D_GROUP] = {CONFIG_R(group, config_parse_string)},
    [CONFIG_D_LOG_LEVEL] = {CONFIG_R(log_level, config_parse_log_level)},
    [CONFIG_D_LOG_FORMAT] = {CONFIG_R(log_format, config_parse_enum),
                             .names = config_names_log_format},
    [CONFIG_D_BANNER] = {CONFIG_R(banner, config_parse_banner)},
    [CONFIG_D_HANDSHAKE_TIMEOUT] = CONFIG_TIMEOUT(handshake_timeout),
    [CONFIG_D_COMMAND_TIMEOUT] = CONFIG_TIMEOUT(command_timeout),
    [CONFIG_D_DATA_TIMEOUT] = CONFIG_TIMEOUT(data_timeout),
    [CONFIG_D_COMMAND_DEADLINE] = CONFIG_TIMEOUT(command_deadline),
    [CONFIG_D_MIN_DATA_RATE] = {CONFIG_R(min_data_rate, config_parse_number), .min = 0,
                                .max = 1000000000},
    [CONFIG_D_UPSTREAM_CONNECT_TIMEOUT] = CONFIG_TIMEOUT(upstream_connect_timeout),
    [CONFIG_D_UPSTREAM_TIMEOUT] = CONFIG_TIMEOUT(upstream_timeout),
    [CONFIG_D_DRAIN_TIMEOUT] = CONFIG_TIMEOUT(drain_timeout),
    [CONFIG_D_WATCH_DEBOUNCE] = {CONFIG_R(watch_debounce, config_parse_duration), .min = 100,
                                 .max = 60 * CONFIG_SEC_MS},
    [CONFIG_D_MAX_LINE] = {CONFIG_R(max_line, config_parse_number), .min = RL_SMTP_LINE_MIN,
                           .max = RL_SMTP_LINE_MAX},
    [CONFIG_D_MAX_ERRORS] = {CONFIG_R(max_errors, config_parse_number), .min = 1, .max = 1000},
    [CONFIG_D_MAX_JUNK_COMMANDS] = {CONFIG_R(max_junk_commands, config_parse_number), .min = 1,
                                    .max = 1000000},
    [CONFIG_D_MAX_CONNECTIONS] = {CONFIG_R(max_connections, config_parse_number), .min = 1,
                                  .max = 1000000},
    [CONFIG_D_MAX_CONNECTIONS_PER_IP] = {CONFIG_R(max_connections_per_ip, config_parse_number),
                                         .min = 1, .max = 1000000},
    [CONFIG_D_MAX_UPSTREAM_CONNECTIONS] = {CONFIG_R(max_upstream_connections, config_parse_number),
                                           .min = 0, .max = 1000000},
    [CONFIG_D_MAX_CONNECTION_RATE] = {CONFIG_R(max_connection_rate, config_parse_number), .min = 0,
                                      .max = 1000000},
    [CONFIG_D_WORKERS] = {CONFIG_R(workers, config_parse_workers), .min = 1, .max = RL_WORKERS_MAX},
    [CONFIG_D_BARE_NEWLINE] = {CONFIG_R(bare_newline, config_parse_enum),
                               .names = config_names_bare_newline},

    [CONFIG_D_LISTEN] = {CONFIG_L(listen, config_parse_listen)},
    [CONFIG_D_LISTENER_TLS] = {CONFIG_L(tls, config_parse_enum), .names = config_names_tls},
    [CONFIG_D_LISTENER_BRAND] = {CONFIG_L(brand, config_parse_ref)},
    [CONFIG_D_REQUIRE_TLS] = {CONFIG_L(require_tls, config_parse_bool)},
    [CONFIG_D_PROXY_PROTOCOL] = {CONFIG_L(proxy_protocol, config_parse_enum),
                                 .names = config_names_proxy},
    [CONFIG_D_PROXY_TRUSTED] = {CONFIG_L(proxy_trusted, config_parse_cidrs), .repeat = true},
    [CONFIG_D_ALLOW] = {CONFIG_L(allow, config_parse_cidrs), .repeat = true},
    [CONFIG_D_DENY] = {CONFIG_L(deny, config_parse_cidrs), .repeat = true},
    [CONFIG_D_SNI_UNKNOWN] = {CONFIG_L(sni_unknown, config_parse_enum),
                              .names = config_names_sni_unknown},

    [CONFIG_D_HOSTNAME] = {CONFIG_B(hostname, config_parse_hostname)},
    [CONFIG_D_ALIASES] = {CONFIG_B(aliases, config_parse_names), .repeat = true},
    [CONFIG_D_CERT] = {CONFIG_B(cert, config_parse_file)},
    [CONFIG_D_KEY] = {CONFIG_B(key, config_parse_file)},
    [CONFIG_D_CERT_RSA] = {CONFIG_B(cert_rsa, config_parse_file)},
    [CONFIG_D_KEY_RSA] = {CONFIG_B(key_rsa, config_parse_file)},
    [CONFIG_D_BRAND_UPSTREAM] = {CONFIG_B(upstream, config_parse_ref)},
    [CONFIG_D_USERS] = {CONFIG_B(users, config_parse_file)},
    [CONFIG_D_UPSTREAM_USER] = {CONFIG_B(upstream_user, config_parse_login)},
    [CONFIG_D_UPSTREAM_PASSWORD_FILE] = {CONFIG_B(upstream_password_file, config_parse_file)},

    [CONFIG_D_PRESET] = {CONFIG_U(preset, config_parse_preset)},
    [CONFIG_D_HOST] = {CONFIG_U(host, config_parse_host)},
    [CONFIG_D_PORT] = {CONFIG_U(port, config_parse_number), .min = 1, .max = 65535},
    [CONFIG_D_UPSTREAM_TLS] = {CONFIG_U(tls, config_parse_enum), .names = config_names_tls},
    [CONFIG_D_VERIFY_NAME] = {CONFIG_U(verify_name, config_parse_hostname)},
    [CONFIG_D_CA_FILE] = {CONFIG_U(ca_file, config_parse_file)},
    [CONFIG_D_HELO_NAME] = {CONFIG_U(helo_name, config_parse_hostname)},
    [CONFIG_D_MAX_MESSAGE_SIZE] = {CONFIG_U(max_message_size, config_parse_size), .min = 0,
                                   .max = CONFIG_SIZE_MAX},
    [CONFIG_D_HIDE] = {CONFIG_U(hide, config_parse_list), .empty_ok = true},
    [CONFIG_D_FALLBACK] = {CONFIG_U(fallback, config_parse_fallback)},

    [CONFIG_D_METRICS_LISTEN] = {CONFIG_M(listen, config_parse_listen)},
    [CONFIG_D_CHECK_INTERVAL] = {CONFIG_M(upstream_check_interval, config_parse_duration),
                                 .min = CONFIG_SEC_MS, .max = 3600 * CONFIG_SEC_MS},
    [CONFIG_D_READY_MAX_AGE] = {CONFIG_M(ready_max_age, config_parse_duration),
                                .min = CONFIG_SEC_MS, .max = 24 * 3600 * CONFIG_SEC_MS},
};

struct config_section {
    enum config_stype type;
    char *name; /* NULL for [relabel] */
    int line;
    bool duplicate;                /* checked, but not built */
    int key_lines[CONFIG_D_COUNT]; /* 0: key not given */
    union config_raw raw;
};

/* ---- errors -------------------------------------------------------------- */

static void config_error(struct config_ctx *ctx, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
config_error(struct config_ctx *ctx, int line, const char *fmt, ...)
{
    struct config_error *errs;
    va_list ap;
    char *msg;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    /* On allocation failure the message is lost but still counted: the load
     * fails either way, and "out of memory" is added at the end. */
    errs = realloc(ctx->errors, (ctx->nerrors + 1) * sizeof(*errs));
    if (errs == NULL) {
        ctx->oom = true;
        return;
    }
    ctx->errors = errs;
    msg = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (msg != NULL) {
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    } else {
        ctx->oom = true;
    }
    errs[ctx->nerrors].line = line;
    errs[ctx->nerrors].seq = (unsigned)ctx->nerrors;
    errs[ctx->nerrors].msg = msg;
    errs[ctx->nerrors].raw = false;
    ctx->nerrors++;
}

/* A message printed as it is, sorted at line. */
static void
config_error_raw(struct config_ctx *ctx, int line, const char *text, size_t n)
{
    config_error(ctx, line, "%.*s", (int)n, text);
    if (ctx->nerrors > 0 && ctx->errors[ctx->nerrors - 1].line == line)
        ctx->errors[ctx->nerrors - 1].raw = true;
}

/* Line 0 ("no line applies") sorts after every real line. */
static int
config_compare_errors(const void *a, const void *b)
{
    const struct config_error *ea = a, *eb = b;
    unsigned la = ea->line > 0 ? (unsigned)ea->line : UINT_MAX;
    unsigned lb = eb->line > 0 ? (unsigned)eb->line : UINT_MAX;

    if (la != lb)
        return la < lb ? -1 : 1;
    return ea->seq < eb->seq ? -1 : ea->seq > eb->seq;
}

static void
config_print_errors(struct config_ctx *ctx, FILE *err)
{
    if (ctx->nerrors > 0)
        qsort(ctx->errors, ctx->nerrors, sizeof(*ctx->errors), config_compare_errors);
    for (size_t i = 0; i < ctx->nerrors; i++) {
        const struct config_error *e = &ctx->errors[i];

        if (err == NULL || e->msg == NULL)
            continue;
        if (e->raw)
            fprintf(err, "%s\n", e->msg);
        else if (e->line > 0)
            fprintf(err, "%s:%d: %s\n", ctx->path, e->line, e->msg);
        else
            fprintf(err, "%s: %s\n", ctx->path, e->msg);
    }
    if (ctx->oom && err != NULL)
        fprintf(err, "%s: out of memory\n", ctx->path);
}

/* ---- small helpers --------------------------------------------------------- */

static char *
config_strdup(struct config_ctx *ctx, const char *s)
{
    char *copy;

    if (s == NULL)
        return NULL;
    copy = strdup(s);
    if (copy == NULL)
        ctx->oom = true;
    return copy;
}

static void *
config_calloc(struct config_ctx *ctx, size_t n, size_t size)
{
    /* calloc(0, ...) may return NULL legitimately; ask for one element. */
    void *p = calloc(n > 0 ? n : 1, size);

    if (p == NULL)
        ctx->oom = true;
    return p;
}

static char *
config_trim(char *s)
{
    char *end;

    while (*s == ' ' || *s == '\t')
        s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n'))
        *--end = '\0';
    return s;
}

/* Writes "a, b or c" for a name table into buf. */
static const char *
config_names_expected(const struct config_name *names, char *buf, size_t cap)
{
    size_t len = 0;

    buf[0] = '\0';
    for (size_t i = 0; names[i].name != NULL && len < cap; i++) {
        const char *sep = i == 0 ? "" : names[i + 1].name == NULL ? " or " : ", ";
        int n = snprintf(buf + len, cap - len, "%s%s", sep, names[i].name);

        if (n < 0)
            break;
        len += (size_t)n;
    }
    return buf;
}

/* Section names end up in logs and in error messages: keep them plain. */
static bool
config_valid_name(const char *s)
{
    size_t len = strlen(s);

    if (len == 0 || len > CONFIG_NAME_MAX)
        return false;
    for (const char *p = s; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

/*
 * A host name as RFC 1123 §2.1 allows it: dot-separated labels of 1..63
 * letters, digits and hyphens, not starting or ending with a hyphen, at most
 * 253 characters, no trailing dot.  The last label may not be all digits
 * (RFC 3696 §2), which keeps IP addresses out.
 */
static bool
config_valid_dns_name(const char *s)
{
    size_t len = strlen(s), label = 0;
    bool all_digits = true;

    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i <= len; i++) {
        char ch = s[i];

        if (ch == '.' || ch == '\0') {
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return false;
            if (ch == '\0')
                return !all_digits;
            label = 0;
            all_digits = true;
            continue;
        }
        if (label == 0 && ch == '-')
            return false;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-'))
            return false;
        if (ch < '0' || ch > '9')
            all_digits = false;
        label++;
    }
    return false;
}

static bool
config_is_ip_literal(const char *s)
{
    unsigned char tmp[sizeof(struct in6_addr)];

    return uv_inet_pton(AF_INET, s, tmp) == 0 || uv_inet_pton(AF_INET6, s, tmp) == 0;
}

/* An AWS region name as AWS writes them: a two-letter area, one or two
 * words and a number ("eu-west-1", "ap-southeast-2", "us-gov-west-1"). */
static bool
config_valid_aws_region(const char *s)
{
    const char *p = s;
    int words = 0;

    for (int i = 0; i < 2; i++, p++)
        if (*p < 'a' || *p > 'z')
            return false;
    while (*p == '-' && p[1] >= 'a' && p[1] <= 'z') {
        for (p++; *p >= 'a' && *p <= 'z'; p++)
            ;
        words++;
    }
    if (words < 1 || words > 2 || *p != '-' || p[1] < '0' || p[1] > '9')
        return false;
    p += 2;
    if (*p >= '0' && *p <= '9')
        p++;
    return *p == '\0';
}

/*
 * Finds the preset called name (case is ignored; a family member such as
 * "ses-eu-west-1" gets its host from the region) and fills *use.  Returns
 * false for an unknown name.
 */
static bool
config_preset_find(const char *name, struct config_preset_use *use)
{
    size_t len = strlen(name);

    if (len > CONFIG_NAME_MAX)
        return false;
    for (size_t i = 0; i < CONFIG_NPRESETS; i++) {
        const struct config_preset *p = &config_presets[i];
        size_t plen = strlen(p->name);

        if (p->host != NULL ? strcasecmp(name, p->name) != 0
                            : len <= plen || strncasecmp(name, p->name, plen) != 0)
            continue;
        use->p = *p;
        for (size_t j = 0; j <= len; j++)
            use->name[j] = (char)(name[j] >= 'A' && name[j] <= 'Z' ? name[j] - 'A' + 'a' : name[j]);
        if (p->host == NULL) {
            /* Amazon SES: one endpoint per region. */
            if (!config_valid_aws_region(use->name + plen))
                return false;
            snprintf(use->host, sizeof(use->host), "email-smtp.%s.amazonaws.com", use->name + plen);
            use->p.host = use->host;
        }
        use->p.name = use->name;
        return true;
    }
    return false;
}

/* The error for a name that is not a preset, in the words of the key. */
static void
config_preset_error(struct config_ctx *ctx, int line, const char *key, const char *name,
                    const char *what)
{
    if (strncasecmp(name, "ses-", 4) == 0)
        config_error(ctx, line,
                     "%s \"%s\": \"%s\" is not an AWS region name such as eu-west-1 or "
                     "us-east-1",
                     what, name, name + 4);
    else if (strcmp(key, "preset") == 0)
        config_error(ctx, line, "%s \"%s\" (expected one of %s)", what, name, CONFIG_PRESETS_TEXT);
    else
        config_error(ctx, line,
                     "%s \"%s\" (expected a preset: %s; or the name of an [upstream \"NAME\"] "
                     "section)",
                     what, name, CONFIG_PRESETS_TEXT);
}

static void
config_list_free(struct config_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* ---- parse functions: one value, reported at ctx->lineno on error ------- */

static bool
config_parse_string(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                    void *field)
{
    char **dst = field;

    (void)d;
    *dst = config_strdup(ctx, value);
    return *dst != NULL;
}

static bool
config_parse_banner(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                    void *field)
{
    /* The banner goes verbatim into the 220 greeting line. */
    for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
        if (*p < 0x20 || *p > 0x7e) {
            config_error(ctx, ctx->lineno, "invalid %s: only printable ASCII is allowed", d->key);
            return false;
        }
    }
    if (strlen(value) > CONFIG_BANNER_MAX) {
        config_error(ctx, ctx->lineno, "invalid %s: longer than %d characters", d->key,
                     CONFIG_BANNER_MAX);
        return false;
    }
    return config_parse_string(ctx, d, value, field);
}

static bool
config_parse_ref(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                 void *field)
{
    if (!config_valid_name(value)) {
        config_error(ctx, ctx->lineno,
                     "invalid %s \"%s\" (expected a section name: 1 to %d letters, digits, '-', "
                     "'_' or '.')",
                     d->key, value, CONFIG_NAME_MAX);
        return false;
    }
    return config_parse_string(ctx, d, value, field);
}

/* A user name for the provider: printable ASCII, no spaces (it goes into
 * an AUTH PLAIN payload). */
static bool
config_parse_login(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                   void *field)
{
    for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
        if (*p <= 0x20 || *p > 0x7e) {
            config_error(ctx, ctx->lineno, "invalid %s: only printable ASCII without spaces",
                         d->key);
            return false;
        }
    }
    if (strlen(value) > RL_USER_NAME_MAX) {
        config_error(ctx, ctx->lineno, "invalid %s: longer than %d characters", d->key,
                     RL_USER_NAME_MAX);
        return false;
    }
    return config_parse_string(ctx, d, value, field);
}

static bool
config_parse_hostname(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                      void *field)
{
    if (!config_valid_dns_name(value)) {
        config_error(ctx, ctx->lineno, "invalid %s \"%s\" (expected a DNS name such as %s)", d->key,
                     value, "smtp.example.com");
        return false;
    }
    return config_parse_string(ctx, d, value, field);
}

static bool
config_parse_host(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                  void *field)
{
    if (!config_valid_dns_name(value) && !config_is_ip_literal(value)) {
        config_error(ctx, ctx->lineno, "invalid %s \"%s\" (expected a DNS name or an IP address)",
                     d->key, value);
        return false;
    }
    return config_parse_string(ctx, d, value, field);
}

/*
 * Proves that the file can be opened for reading now, as the user loading
 * the config.  O_NONBLOCK so that a FIFO cannot hang the load.
 */
static bool
config_parse_file(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                  void *field)
{
    struct stat st;
    int fd = open(value, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);

    if (fd < 0) {
        config_error(ctx, ctx->lineno, "cannot read %s \"%s\": %s", d->key, value, strerror(errno));
        return false;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        config_error(ctx, ctx->lineno, "cannot read %s \"%s\": not a regular file", d->key, value);
        return false;
    }
    close(fd);
    return config_parse_string(ctx, d, value, field);
}

static bool
config_parse_enum(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                  void *field)
{
    int64_t *dst = field;
    char expected[128];

    for (const struct config_name *n = d->names; n->name != NULL; n++) {
        if (strcasecmp(value, n->name) == 0) {
            *dst = n->value;
            return true;
        }
    }
    config_error(ctx, ctx->lineno, "invalid %s \"%s\" (expected %s)", d->key, value,
                 config_names_expected(d->names, expected, sizeof(expected)));
    return false;
}

static bool
config_parse_bool(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                  void *field)
{
    static const struct config_name bools[] = {
        {"yes", 1}, {"true", 1}, {"on", 1}, {"1", 1}, {"no", 0}, {"false", 0}, {"off", 0}, {"0", 0},
    };
    int64_t *dst = field;

    for (size_t i = 0; i < CONFIG_ARRAY_SIZE(bools); i++) {
        if (strcasecmp(value, bools[i].name) == 0) {
            *dst = bools[i].value;
            return true;
        }
    }
    config_error(ctx, ctx->lineno, "invalid %s \"%s\" (expected yes or no)", d->key, value);
    return false;
}

static bool
config_parse_log_level(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                       void *field)
{
    int64_t *dst = field;
    int level = rl_log_level_parse(value);

    if (level < 0) {
        config_error(ctx, ctx->lineno, "invalid %s \"%s\" (expected error, warn, info or debug)",
                     d->key, value);
        return false;
    }
    *dst = level;
    return true;
}

/*
 * Reads the decimal digits at *pp into *out; false if there are none or the
 * number exceeds limit.  Signs are not accepted: no value here is negative.
 */
static bool
config_digits(const char **pp, int64_t limit, int64_t *out)
{
    const char *p = *pp;
    int64_t v = 0;

    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (limit - (*p - '0')) / 10)
            return false;
        v = v * 10 + (*p - '0');
    }
    *pp = p;
    *out = v;
    return true;
}

static bool
config_parse_number(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                    void *field)
{
    int64_t *dst = field, v;
    const char *p = value;

    if (!config_digits(&p, INT64_MAX / 2, &v) || *p != '\0' || v < d->min || v > d->max) {
        config_error(ctx, ctx->lineno, "invalid %s \"%s\" (expected a number from %lld to %lld)",
                     d->key, value, (long long)d->min, (long long)d->max);
        return false;
    }
    *dst = v;
    return true;
}

/* "auto" (stored as 0: one per CPU, decided at start) or a number. */
static bool
config_parse_workers(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                     void *field)
{
    int64_t *dst = field, v;
    const char *p = value;

    if (strcasecmp(value, "auto") == 0) {
        *dst = 0;
        return true;
    }
    if (!config_digits(&p, INT64_MAX / 2, &v) || *p != '\0' || v < d->min || v > d->max) {
        config_error(ctx, ctx->lineno,
                     "invalid %s \"%s\" (expected auto or a number from %lld to %lld)", d->key,
                     value, (long long)d->min, (long long)d->max);
        return false;
    }
    *dst = v;
    return true;
}

/* "30", "30s", "500ms", "5m", "1h"; a plain number is seconds.  Stored in
 * milliseconds, range-checked against d->min..d->max (milliseconds). */
static bool
config_parse_duration(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                      void *field)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    int64_t *dst = field, v;
    const char *p = value;

    if (config_digits(&p, INT64_MAX / 3600000, &v)) {
        while (*p == ' ')
            p++;
        for (size_t i = 0; i < CONFIG_ARRAY_SIZE(units); i++) {
            if (strcasecmp(p, units[i].unit) == 0) {
                v *= units[i].ms;
                if (v >= d->min && v <= d->max) {
                    *dst = v;
                    return true;
                }
                break;
            }
        }
    }
    config_error(ctx, ctx->lineno,
                 "invalid %s \"%s\" (expected a duration from %llds to %lldh, such as 30s, "
                 "1500ms, 5m or 1h; a plain number is seconds)",
                 d->key, value, (long long)(d->min / 1000), (long long)(d->max / 3600000));
    return false;
}

/* Bytes with an optional K, M or G suffix, 1024-based. */
static bool
config_parse_size(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                  void *field)
{
    int64_t *dst = field, v, mult = 1;
    const char *p = value;

    if (config_digits(&p, INT64_MAX >> 31, &v)) {
        switch (*p) {
        case 'k':
        case 'K':
            mult = (int64_t)1 << 10;
            p++;
            break;
        case 'm':
        case 'M':
            mult = (int64_t)1 << 20;
            p++;
            break;
        case 'g':
        case 'G':
            mult = (int64_t)1 << 30;
            p++;
            break;
        default:
            break;
        }
        v *= mult;
        if (*p == '\0' && v >= d->min && v <= d->max) {
            *dst = v;
            return true;
        }
    }
    config_error(ctx, ctx->lineno,
                 "invalid %s \"%s\" (expected a size in bytes with an optional K, M or G suffix, "
                 "at most 4G; 0 means the upstream's own limit)",
                 d->key, value);
    return false;
}

/* A comma-separated list of non-empty items; an empty value is an empty
 * list, which differs from "not given" when a preset supplies one. */
static bool
config_parse_list(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                  void *field)
{
    struct config_list *dst = field;
    char *copy = config_strdup(ctx, value), *save = NULL, *item;
    size_t cap = 1;
    bool ok = true;

    if (copy == NULL)
        return false;
    for (const char *p = value; *p != '\0'; p++)
        cap += *p == ',';
    dst->items = config_calloc(ctx, cap, sizeof(*dst->items));
    if (dst->items == NULL) {
        free(copy);
        return false;
    }
    dst->set = true;
    if (*config_trim(copy) == '\0') {
        free(copy);
        return true;
    }
    /* strtok_r would merge ",," silently; walk the commas by hand. */
    for (item = copy; item != NULL; item = save) {
        save = strchr(item, ',');
        if (save != NULL)
            *save++ = '\0';
        item = config_trim(item);
        if (*item == '\0') {
            config_error(ctx, ctx->lineno, "invalid %s: empty item in the list", d->key);
            ok = false;
            continue;
        }
        dst->items[dst->n] = config_strdup(ctx, item);
        if (dst->items[dst->n] != NULL)
            dst->n++;
    }
    free(copy);
    if (!ok) {
        config_list_free(dst);
        dst->set = false;
    }
    return ok;
}

static bool
config_addr_set(struct rl_addr *a, int family, const char *host, int port)
{
    char name[INET6_ADDRSTRLEN];

    memset(a, 0, sizeof(*a));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;

        if (uv_ip4_addr(host, port, sin) != 0)
            return false;
        a->len = sizeof(*sin);
        uv_ip4_name(sin, name, sizeof(name));
        snprintf(a->text, sizeof(a->text), "%s:%d", name, port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;

        if (uv_ip6_addr(host, port, sin6) != 0)
            return false;
        a->len = sizeof(*sin6);
        uv_ip6_name(sin6, name, sizeof(name));
        snprintf(a->text, sizeof(a->text), "[%s]:%d", name, port);
    }
    return true;
}

/*
 * One listen item: "IPV4:PORT", "[IPV6]:PORT" or "*:PORT" (both wildcards).
 * Appends one or two addresses to out; false if the item does not parse.
 */
static bool
config_listen_item(const char *item, struct rl_addr *out, size_t *n)
{
    char host[INET6_ADDRSTRLEN + 32];
    const char *colon, *p;
    int64_t port;
    size_t hlen;
    int family;

    if (item[0] == '[') {
        const char *close = strchr(item, ']');

        if (close == NULL || close[1] != ':')
            return false;
        hlen = (size_t)(close - item - 1);
        if (hlen == 0 || hlen >= sizeof(host))
            return false;
        memcpy(host, item + 1, hlen);
        colon = close + 1;
        family = AF_INET6;
    } else {
        colon = strrchr(item, ':');
        if (colon == NULL)
            return false;
        hlen = (size_t)(colon - item);
        if (hlen == 0 || hlen >= sizeof(host) || memchr(item, ':', hlen) != NULL)
            return false;
        memcpy(host, item, hlen);
        family = AF_INET;
    }
    host[hlen] = '\0';
    p = colon + 1;
    if (!config_digits(&p, 65535, &port) || *p != '\0' || port == 0)
        return false;

    if (strcmp(host, "*") == 0 && family == AF_INET)
        return config_addr_set(&out[(*n)++], AF_INET, "0.0.0.0", (int)port) &&
               config_addr_set(&out[(*n)++], AF_INET6, "::", (int)port);
    return config_addr_set(&out[(*n)++], family, host, (int)port);
}

/*
 * "fallback = 587 starttls, 2525 starttls": ports to try in order, each
 * with its TLS mode (implicit or starttls: there is no plaintext mode).
 */
static bool
config_parse_fallback(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                      void *field)
{
    struct config_raw_upstream *u =
        (struct config_raw_upstream *)((char *)field -
                                       offsetof(struct config_raw_upstream, fallback));
    char *copy = config_strdup(ctx, value), *save = NULL, *item;
    bool ok = true;

    if (copy == NULL)
        return false;
    u->nfallback = 0;
    for (item = copy; item != NULL; item = save) {
        char *mode, *end;
        unsigned long port;
        int tls = -1;

        save = strchr(item, ',');
        if (save != NULL)
            *save++ = '\0';
        item = config_trim(item);
        mode = item + strcspn(item, " \t");
        if (*mode != '\0')
            *mode++ = '\0';
        mode = config_trim(mode);
        port = strtoul(item, &end, 10);
        for (size_t i = 0; config_names_tls[i].name != NULL; i++)
            if (strcasecmp(mode, config_names_tls[i].name) == 0)
                tls = config_names_tls[i].value;
        if (*item < '0' || *item > '9' || *end != '\0' || port < 1 || port > 65535 || tls < 0) {
            config_error(ctx, ctx->lineno,
                         "invalid %s item \"%s%s%s\" (expected PORT MODE, e.g. \"587 starttls\"; "
                         "MODE is implicit or starttls)",
                         d->key, item, *mode != '\0' ? " " : "", mode);
            ok = false;
            continue;
        }
        if (u->nfallback == RL_UPSTREAM_FALLBACK_MAX) {
            config_error(ctx, ctx->lineno, "invalid %s: at most %d ports", d->key,
                         RL_UPSTREAM_FALLBACK_MAX);
            ok = false;
            break;
        }
        for (size_t i = 0; i < u->nfallback; i++)
            if (u->fallback[i].port == port) {
                config_error(ctx, ctx->lineno, "invalid %s: port %lu listed twice", d->key, port);
                ok = false;
            }
        u->fallback[u->nfallback].port = (uint16_t)port;
        u->fallback[u->nfallback].tls = (enum rl_tls_mode)tls;
        u->nfallback++;
    }
    free(copy);
    if (!ok)
        u->nfallback = 0;
    return ok;
}

static bool
config_parse_listen(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                    void *field)
{
    struct config_addrs *l = field;
    char *copy = config_strdup(ctx, value), *save, *item;
    size_t cap = 2;
    bool ok = true;

    if (copy == NULL)
        return false;
    for (const char *p = value; *p != '\0'; p++)
        cap += 2 * (*p == ',');
    l->items = config_calloc(ctx, cap, sizeof(*l->items));
    if (l->items == NULL) {
        free(copy);
        return false;
    }
    for (item = copy; item != NULL; item = save) {
        size_t before = l->n;

        save = strchr(item, ',');
        if (save != NULL)
            *save++ = '\0';
        item = config_trim(item);
        if (!config_listen_item(item, l->items, &l->n)) {
            l->n = before;
            config_error(ctx, ctx->lineno,
                         "invalid %s address \"%s\" (expected IPV4:PORT, [IPV6]:PORT or *:PORT, "
                         "such as 0.0.0.0:465, [::1]:587 or *:25; no host names)",
                         d->key, item);
            ok = false;
        }
    }
    free(copy);
    if (!ok) {
        free(l->items);
        l->items = NULL;
        l->n = 0;
    }
    return ok;
}

/* Networks, separated by commas and/or spaces; a repeated key adds to the
 * list, since one line (inih's buffer) holds only a dozen or so. */
static bool
config_parse_cidrs(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                   void *field)
{
    char why[160];
    int rc = rl_cidr_list_parse(value, field, why, sizeof(why));

    if (rc == RL_E_NOMEM) {
        ctx->oom = true;
        return false;
    }
    if (rc < 0) {
        config_error(ctx, ctx->lineno,
                     "invalid %s: %s (expected networks such as 10.0.0.0/8, 192.0.2.7 or "
                     "2001:db8::/32, separated by commas or spaces)",
                     d->key, why);
        return false;
    }
    return true;
}

/* Host names a brand answers to (SNI), separated by commas and/or spaces;
 * a repeated key adds to the list.  Each is a DNS name or a wildcard
 * "*.example.net" (sni.h). */
static bool
config_parse_names(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                   void *field)
{
    struct config_names *dst = field;
    char *copy = config_strdup(ctx, value), *save = NULL, *item;
    size_t cap = dst->n + 1;
    struct rl_brand_alias *grown;
    bool ok = true;

    if (copy == NULL)
        return false;
    for (const char *p = value; *p != '\0'; p++)
        cap += *p == ',' || *p == ' ' || *p == '\t';
    grown = realloc(dst->items, cap * sizeof(*dst->items));
    if (grown == NULL) {
        ctx->oom = true;
        free(copy);
        return false;
    }
    dst->items = grown;
    for (item = strtok_r(copy, ", \t", &save); item != NULL; item = strtok_r(NULL, ", \t", &save)) {
        bool wild = item[0] == '*';

        if (wild ? !rl_sni_is_wildcard(item) || !config_valid_dns_name(item + 2)
                 : !config_valid_dns_name(item)) {
            config_error(ctx, ctx->lineno,
                         wild ? "invalid %s \"%s\" (a wildcard is \"*.\" and at least two labels, "
                                "such as *.example.com; it stands for exactly one label)"
                              : "invalid %s \"%s\" (expected DNS names such as mail.example.com "
                                "or wildcards such as *.example.com)",
                         d->key, item);
            ok = false;
            continue;
        }
        dst->items[dst->n].name = config_strdup(ctx, item);
        dst->items[dst->n].line = ctx->lineno;
        if (dst->items[dst->n].name != NULL)
            dst->n++;
    }
    free(copy);
    return ok;
}

static bool
config_parse_preset(struct config_ctx *ctx, const struct config_directive *d, const char *value,
                    void *field)
{
    struct config_preset_use use;

    if (!config_preset_find(value, &use)) {
        config_preset_error(ctx, ctx->lineno, d->key, value, "invalid preset");
        return false;
    }
    return config_parse_string(ctx, d, use.name, field);
}

/* ---- the reader and handler fed to inih ------------------------------------- */

static void
config_raw_init(struct config_section *sec)
{
    memset(&sec->raw, 0, sizeof(sec->raw));
    switch (sec->type) {
    case CONFIG_S_RELABEL: {
        struct config_raw_relabel *r = &sec->raw.relabel;

        r->log_level = r->log_format = r->bare_newline = CONFIG_UNSET;
        r->handshake_timeout = r->command_timeout = r->data_timeout = CONFIG_UNSET;
        r->command_deadline = r->min_data_rate = r->max_upstream_connections = CONFIG_UNSET;
        r->upstream_connect_timeout = r->upstream_timeout = CONFIG_UNSET;
        r->drain_timeout = r->watch_debounce = CONFIG_UNSET;
        r->max_line = r->max_errors = r->max_junk_commands = CONFIG_UNSET;
        r->max_connections = r->max_connections_per_ip = r->max_connection_rate = CONFIG_UNSET;
        r->workers = CONFIG_UNSET;
        break;
    }
    case CONFIG_S_LISTENER:
        sec->raw.listener.tls = sec->raw.listener.require_tls = CONFIG_UNSET;
        sec->raw.listener.proxy_protocol = sec->raw.listener.sni_unknown = CONFIG_UNSET;
        break;
    case CONFIG_S_BRAND:
        break;
    case CONFIG_S_UPSTREAM: {
        struct config_raw_upstream *u = &sec->raw.upstream;

        u->port = u->tls = u->max_message_size = CONFIG_UNSET;
        break;
    }
    case CONFIG_S_METRICS:
        sec->raw.metrics.upstream_check_interval = sec->raw.metrics.ready_max_age = CONFIG_UNSET;
        break;
    }
}

static void
config_raw_free(struct config_section *sec)
{
    switch (sec->type) {
    case CONFIG_S_RELABEL:
        free(sec->raw.relabel.user);
        free(sec->raw.relabel.group);
        free(sec->raw.relabel.banner);
        break;
    case CONFIG_S_LISTENER:
        free(sec->raw.listener.listen.items);
        free(sec->raw.listener.brand);
        rl_cidr_list_free(&sec->raw.listener.proxy_trusted);
        rl_cidr_list_free(&sec->raw.listener.allow);
        rl_cidr_list_free(&sec->raw.listener.deny);
        break;
    case CONFIG_S_BRAND:
        free(sec->raw.brand.hostname);
        for (size_t i = 0; i < sec->raw.brand.aliases.n; i++)
            free(sec->raw.brand.aliases.items[i].name);
        free(sec->raw.brand.aliases.items);
        free(sec->raw.brand.cert);
        free(sec->raw.brand.key);
        free(sec->raw.brand.cert_rsa);
        free(sec->raw.brand.key_rsa);
        free(sec->raw.brand.upstream);
        free(sec->raw.brand.users);
        free(sec->raw.brand.upstream_user);
        free(sec->raw.brand.upstream_password_file);
        break;
    case CONFIG_S_UPSTREAM:
        free(sec->raw.upstream.preset);
        free(sec->raw.upstream.host);
        free(sec->raw.upstream.verify_name);
        free(sec->raw.upstream.ca_file);
        free(sec->raw.upstream.helo_name);
        config_list_free(&sec->raw.upstream.hide);
        break;
    case CONFIG_S_METRICS:
        free(sec->raw.metrics.listen.items);
        break;
    }
}

static struct config_section *
config_find_section(struct config_ctx *ctx, enum config_stype type, const char *name)
{
    for (size_t i = 0; i < ctx->nsections; i++) {
        struct config_section *sec = ctx->sections[i];

        if (sec->type == type && !sec->duplicate &&
            (name == NULL ? sec->name == NULL : sec->name != NULL && strcmp(sec->name, name) == 0))
            return sec;
    }
    return NULL;
}

/* Prints a section's header the way the user would write it. */
static const char *
config_section_label(const struct config_section *sec, char *buf, size_t cap)
{
    if (sec->name != NULL)
        snprintf(buf, cap, "[%s \"%s\"]", config_stypes[sec->type].name, sec->name);
    else
        snprintf(buf, cap, "[%s]", config_stypes[sec->type].name);
    return buf;
}

/*
 * Parses a section header line (s starts with '[', is trimmed) and makes it
 * the current section.  On any problem the keys that follow are skipped
 * quietly: one error for a bad header is enough.
 */
static void
config_section_begin(struct config_ctx *ctx, char *s)
{
    struct config_section *sec, *first, **grown;
    char *close = strchr(s, ']'), *after, *inner, *name;
    size_t tlen;
    int type = -1;

    ctx->cur = NULL;
    ctx->cur_ignored = true;
    if (close == NULL) {
        config_error(ctx, ctx->lineno, "section header without a closing ']'");
        return;
    }
    *close = '\0';
    after = config_trim(close + 1);
    if (*after != '\0' && *after != ';' && *after != '#') {
        config_error(ctx, ctx->lineno, "unexpected text after the section header: \"%s\"", after);
        return;
    }
    inner = config_trim(s + 1);
    tlen = strcspn(inner, " \t\"");
    name = config_trim(inner + tlen);
    for (size_t i = 0; i < CONFIG_ARRAY_SIZE(config_stypes); i++)
        if (strlen(config_stypes[i].name) == tlen &&
            strncmp(inner, config_stypes[i].name, tlen) == 0)
            type = (int)i;
    inner[tlen] = '\0';
    if (type < 0) {
        config_error(ctx, ctx->lineno,
                     "unknown section type [%s] (expected [relabel], [listener \"NAME\"], "
                     "[brand \"NAME\"], [upstream \"NAME\"] or [metrics])",
                     inner);
        return;
    }
    if (*name == '"') {
        size_t nlen = strlen(name);

        if (nlen < 2 || name[nlen - 1] != '"' || memchr(name + 1, '"', nlen - 2) != NULL) {
            config_error(ctx, ctx->lineno, "badly quoted section name: %s", name);
            return;
        }
        name[nlen - 1] = '\0';
        name++;
    }
    if (!config_stypes[type].named && *name != '\0') {
        config_error(ctx, ctx->lineno, "[%s] takes no name", inner);
        return;
    }
    if (config_stypes[type].named && *name == '\0') {
        config_error(ctx, ctx->lineno, "[%s] needs a name: [%s \"NAME\"]", inner, inner);
        return;
    }
    if (config_stypes[type].named && !config_valid_name(name)) {
        config_error(ctx, ctx->lineno,
                     "invalid section name \"%s\" (expected 1 to %d letters, digits, '-', '_' "
                     "or '.')",
                     name, CONFIG_NAME_MAX);
        return;
    }

    sec = config_calloc(ctx, 1, sizeof(*sec));
    grown = realloc(ctx->sections, (ctx->nsections + 1) * sizeof(*grown));
    if (sec == NULL || grown == NULL) {
        ctx->oom = true;
        free(sec);
        if (grown != NULL)
            ctx->sections = grown;
        return;
    }
    ctx->sections = grown;
    sec->type = (enum config_stype)type;
    sec->line = ctx->lineno;
    sec->name = config_stypes[type].named ? config_strdup(ctx, name) : NULL;
    config_raw_init(sec);
    first = config_find_section(ctx, sec->type, sec->name);
    if (first != NULL) {
        char label[CONFIG_NAME_MAX + 32];

        config_error(ctx, ctx->lineno, "duplicate section %s (first at line %d)",
                     config_section_label(sec, label, sizeof(label)), first->line);
        sec->duplicate = true;
    }
    ctx->sections[ctx->nsections++] = sec;
    ctx->cur = sec;
    ctx->cur_ignored = false;
}

/*
 * inih's line reader.  Returns one physical line per call (see the file
 * comment for why), rewritten so that inih sees only what it should parse.
 */
static char *
config_reader(char *str, int num, void *stream)
{
    struct config_ctx *ctx = stream;
    char *s;
    ssize_t n;
    size_t len;

    /* inih has asked for the next line, so it is done with the previous
     * one: a key line the handler was not called for had no '=' or ':'. */
    if (ctx->pending_key > 0)
        config_error(ctx, ctx->pending_key, "expected \"key = value\", a [section] or a comment");
    ctx->pending_key = 0;
    if (ctx->eof || num < 8)
        return NULL;

    n = getline(&ctx->buf, &ctx->bufcap, ctx->fp);
    if (n < 0) {
        if (ferror(ctx->fp))
            ctx->read_errno = errno;
        ctx->eof = true;
        return NULL;
    }
    ctx->lineno++;
    s = ctx->buf;
    if (ctx->lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3; /* UTF-8 byte order mark */
    if (strlen(s) != (size_t)(n - (s - ctx->buf))) {
        config_error(ctx, ctx->lineno, "NUL byte in line");
        str[0] = '\0';
        return str;
    }
    s = config_trim(s);

    if (*s == '\0' || *s == ';' || *s == '#') {
        str[0] = '\0'; /* comments may be as long as they like */
    } else if (*s == '[') {
        config_section_begin(ctx, s);
        /* inih tracks its own section name; ours is ctx->cur. */
        memcpy(str, "[s]\n", 5);
    } else {
        len = strlen(s);
        if (len + 2 > (size_t)num) {
            config_error(ctx, ctx->lineno, "line too long (%zu characters, at most %d)", len,
                         num - 2);
            str[0] = '\0';
        } else {
            memcpy(str, s, len);
            memcpy(str + len, "\n", 2);
            ctx->pending_key = ctx->lineno;
        }
    }
    return str;
}

static int
config_handler(void *user, const char *section, const char *name, const char *value)
{
    struct config_ctx *ctx = user;
    struct config_section *sec = ctx->cur;
    const struct config_directive *d = NULL;
    size_t idx;
    char label[CONFIG_NAME_MAX + 32];

    (void)section; /* inih's idea of the section; ours is ctx->cur */
    ctx->pending_key = 0;
    /* A build with INI_CALL_HANDLER_ON_NEW_SECTION reports headers here
     * too; the reader has already handled them. */
    if (name == NULL && value == NULL)
        return 1;
    /* Returning 1 always: errors are collected here, not by inih. */
    if (name == NULL || *name == '\0') {
        config_error(ctx, ctx->lineno, "missing key name before '='");
        return 1;
    }
    if (value == NULL) {
        config_error(ctx, ctx->lineno, "expected \"key = value\", a [section] or a comment");
        return 1;
    }
    if (sec == NULL) {
        if (!ctx->cur_ignored)
            config_error(ctx, ctx->lineno,
                         "key \"%s\" outside any section (global keys go under [relabel])", name);
        return 1;
    }
    for (idx = 0; idx < CONFIG_D_COUNT; idx++) {
        if (config_directives[idx].section == sec->type &&
            strcmp(config_directives[idx].key, name) == 0) {
            d = &config_directives[idx];
            break;
        }
    }
    if (d == NULL) {
        config_error(ctx, ctx->lineno, "unknown key \"%s\" in %s", name,
                     config_section_label(sec, label, sizeof(label)));
        return 1;
    }
    if (sec->key_lines[idx] != 0 && !d->repeat) {
        config_error(ctx, ctx->lineno, "duplicate key \"%s\" (first at line %d)", name,
                     sec->key_lines[idx]);
        return 1;
    }
    if (sec->key_lines[idx] == 0)
        sec->key_lines[idx] = ctx->lineno;
    if (*value == '\0' && !d->empty_ok) {
        config_error(ctx, ctx->lineno, "empty value for \"%s\"", name);
        return 1;
    }
    d->parse(ctx, d, value, (char *)&sec->raw + d->offset);
    return 1;
}

/* ---- merge and resolve ---------------------------------------------------------- */

static int64_t
config_merge(int64_t value, int64_t dflt)
{
    return value != CONFIG_UNSET ? value : dflt;
}

static void
config_merge_relabel(struct config_ctx *ctx, struct config_section *sec, struct rl_config *cfg)
{
    struct config_raw_relabel dflt, *r = &dflt;

    if (sec != NULL) {
        r = &sec->raw.relabel;
    } else {
        struct config_section tmp = {.type = CONFIG_S_RELABEL};

        config_raw_init(&tmp);
        dflt = tmp.raw.relabel;
    }
    cfg->user = config_strdup(ctx, r->user);
    cfg->group = config_strdup(ctx, r->group);
    cfg->banner = config_strdup(ctx, r->banner != NULL ? r->banner : "ESMTP ready");
    cfg->log_level = (int)config_merge(r->log_level, RL_LOG_INFO);
    cfg->log_format = (enum rl_log_format)config_merge(r->log_format, RL_LOG_TEXT);
    cfg->handshake_timeout_ms =
        (unsigned)config_merge(r->handshake_timeout, RL_TIMEOUT_HANDSHAKE_DEFAULT);
    cfg->command_timeout_ms =
        (unsigned)config_merge(r->command_timeout, RL_TIMEOUT_COMMAND_DEFAULT);
    cfg->data_timeout_ms = (unsigned)config_merge(r->data_timeout, RL_TIMEOUT_DATA_DEFAULT);
    cfg->command_deadline_ms =
        (unsigned)config_merge(r->command_deadline, RL_COMMAND_DEADLINE_DEFAULT);
    cfg->min_data_rate = (unsigned)config_merge(r->min_data_rate, RL_MIN_DATA_RATE_DEFAULT);
    cfg->upstream_connect_timeout_ms =
        (unsigned)config_merge(r->upstream_connect_timeout, RL_TIMEOUT_UP_CONNECT_DEFAULT);
    cfg->upstream_timeout_ms =
        (unsigned)config_merge(r->upstream_timeout, RL_TIMEOUT_UP_REPLY_DEFAULT);
    cfg->drain_timeout_ms = (unsigned)config_merge(r->drain_timeout, RL_TIMEOUT_DRAIN_DEFAULT);
    cfg->watch_debounce_ms = (unsigned)config_merge(r->watch_debounce, RL_WATCH_DEBOUNCE_DEFAULT);
    cfg->max_line = (size_t)config_merge(r->max_line, RL_SMTP_LINE_DEFAULT);
    cfg->max_connections = (unsigned)config_merge(r->max_connections, RL_MAX_CONNECTIONS_DEFAULT);
    cfg->max_connections_per_ip =
        (unsigned)config_merge(r->max_connections_per_ip, RL_MAX_CONNECTIONS_PER_IP_DEFAULT);
    cfg->max_upstream_connections = (unsigned)config_merge(r->max_upstream_connections, 0);
    cfg->max_connection_rate =
        (unsigned)config_merge(r->max_connection_rate, RL_MAX_CONNECTION_RATE_DEFAULT);
    cfg->workers = (unsigned)config_merge(r->workers, 0);
    cfg->max_errors = (unsigned)config_merge(r->max_errors, RL_MAX_ERRORS_DEFAULT);
    cfg->max_junk_commands =
        (unsigned)config_merge(r->max_junk_commands, RL_MAX_JUNK_COMMANDS_DEFAULT);
    cfg->bare_newline_reject = config_merge(r->bare_newline, 0) != 0;
}

/*
 * Fills u from a raw [upstream] section (sec, may be NULL) and a preset
 * (may be NULL): explicit keys win over the preset, the preset over the
 * defaults, whatever the order of the keys in the file.
 */
static void
config_merge_upstream(struct config_ctx *ctx, const struct config_section *sec,
                      const struct config_preset *preset, struct rl_upstream_conf *u)
{
    struct config_raw_upstream none = {
        .port = CONFIG_UNSET, .tls = CONFIG_UNSET, .max_message_size = CONFIG_UNSET};
    const struct config_raw_upstream *r = sec != NULL ? &sec->raw.upstream : &none;
    const char *host = r->host != NULL ? r->host : preset != NULL ? preset->host : NULL;
    uint16_t port;

    /* Callers pass a section, a preset or both. */
    u->name = config_strdup(ctx, sec != NULL ? sec->name : preset != NULL ? preset->name : "");
    u->line = sec != NULL ? sec->line : 0;
    u->host = config_strdup(ctx, host);
    u->tls = (enum rl_tls_mode)config_merge(r->tls, preset != NULL ? preset->tls : RL_TLS_IMPLICIT);
    /* The port follows the mode: the preset's port for it, else the
     * submission ports of RFC 8314 (465) and RFC 6409 (587). */
    port = u->tls == RL_TLS_IMPLICIT ? 465 : 587;
    if (preset != NULL)
        port = u->tls == RL_TLS_IMPLICIT ? preset->implicit_port : preset->starttls_port;
    if (port == 0 && r->port == CONFIG_UNSET) {
        /* Only a section's tls can pick a mode its preset has no port for. */
        config_error(ctx,
                     sec == NULL ? 0
                     : sec->key_lines[CONFIG_D_UPSTREAM_TLS] != 0
                         ? sec->key_lines[CONFIG_D_UPSTREAM_TLS]
                         : sec->line,
                     "preset %s documents no %s port: set port, or use tls = %s", preset->name,
                     u->tls == RL_TLS_IMPLICIT ? "implicit TLS" : "STARTTLS",
                     u->tls == RL_TLS_IMPLICIT ? "starttls" : "implicit");
        port = u->tls == RL_TLS_IMPLICIT ? 465 : 587;
    }
    u->port = (uint16_t)config_merge(r->port, port);
    /* A preset's certificate name survives a host override: that is how a
     * test points host at 127.0.0.1 and still checks smtp.mailgun.org. */
    u->verify_name = config_strdup(ctx, r->verify_name != NULL ? r->verify_name
                                        : preset != NULL       ? preset->host
                                                               : host);
    u->ca_file = config_strdup(ctx, r->ca_file);
    u->ca_line = sec != NULL ? sec->key_lines[CONFIG_D_CA_FILE] : 0;
    u->helo_name = config_strdup(ctx, r->helo_name);
    u->max_message_size = (uint64_t)config_merge(
        r->max_message_size, preset != NULL ? (int64_t)preset->max_message_size : 0);

    for (size_t i = 0; i < r->nfallback; i++) {
        if (r->fallback[i].port == u->port)
            config_error(ctx, sec->key_lines[CONFIG_D_FALLBACK],
                         "fallback port %u is the upstream's own port", u->port);
        u->fallback[u->nfallback++] = r->fallback[i];
    }

    if (r->hide.set || preset != NULL) {
        size_t n = r->hide.set ? r->hide.n : preset->nhide;

        u->hide = config_calloc(ctx, n, sizeof(*u->hide));
        for (size_t i = 0; u->hide != NULL && i < n; i++) {
            u->hide[i] = config_strdup(ctx, r->hide.set ? r->hide.items[i] : preset->hide[i]);
            if (u->hide[i] != NULL)
                u->nhide++;
        }
    }
}

static void
config_check_upstream(struct config_ctx *ctx, const struct config_section *sec)
{
    const struct config_raw_upstream *r = &sec->raw.upstream;

    if (sec->key_lines[CONFIG_D_HOST] == 0 && sec->key_lines[CONFIG_D_PRESET] == 0)
        config_error(ctx, sec->line, "[upstream \"%s\"] needs host, or a preset (%s)", sec->name,
                     CONFIG_PRESETS_TEXT);
    /* mbedTLS 2.28 checks DNS names only, so there must be one to check. */
    if (r->host != NULL && sec->key_lines[CONFIG_D_VERIFY_NAME] == 0 &&
        sec->key_lines[CONFIG_D_PRESET] == 0 && config_is_ip_literal(r->host))
        config_error(ctx, sec->key_lines[CONFIG_D_HOST],
                     "host %s is an IP address: set verify_name to the name in the upstream's "
                     "certificate",
                     r->host);
}

/* Finds or builds the upstream named by a brand: a section first, so that a
 * section may shadow a preset's name, then a preset used as it is. */
static struct rl_upstream_conf *
config_resolve_upstream(struct config_ctx *ctx, struct rl_config *cfg, const char *name)
{
    struct config_preset_use use;
    struct rl_upstream_conf *u;

    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].line > 0 && cfg->upstreams[i].name != NULL &&
            strcmp(cfg->upstreams[i].name, name) == 0)
            return &cfg->upstreams[i];
    if (!config_preset_find(name, &use))
        return NULL;
    /* A preset in use is built once, whatever the case it was named in. */
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].line == 0 && cfg->upstreams[i].name != NULL &&
            strcmp(cfg->upstreams[i].name, use.name) == 0)
            return &cfg->upstreams[i];
    u = &cfg->upstreams[cfg->nupstreams++];
    config_merge_upstream(ctx, NULL, &use.p, u);
    return u;
}

/* Moves a raw brand's aliases into b (the raw section lets go of them). */
static void
config_brand_aliases(struct config_raw_brand *r, struct rl_brand_conf *b)
{
    b->aliases = r->aliases.items;
    b->naliases = r->aliases.n;
    r->aliases.items = NULL;
    r->aliases.n = 0;
}

/* The first line of the provider's password file, into b.  Never printed. */
static void
config_read_upstream_password(struct config_ctx *ctx, struct rl_brand_conf *b)
{
    char buf[RL_USER_PASSWORD_MAX + 2], *nl;
    size_t n;
    FILE *f = fopen(b->upstream_password_file, "re");

    if (f == NULL) {
        config_error(ctx, b->upstream_password_line,
                     "cannot read upstream_password_file \"%s\": %s", b->upstream_password_file,
                     strerror(errno));
        return;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    nl = memchr(buf, '\n', n);
    if (nl != NULL)
        n = (size_t)(nl - buf);
    if (n > RL_USER_PASSWORD_MAX) {
        config_error(ctx, b->upstream_password_line,
                     "upstream_password_file \"%s\": longer than %d bytes",
                     b->upstream_password_file, RL_USER_PASSWORD_MAX);
        n = 0;
    } else {
        if (n > 0 && buf[n - 1] == '\r')
            n--;
        buf[n] = '\0';
        if (n == 0 || strlen(buf) != n)
            config_error(ctx, b->upstream_password_line,
                         "upstream_password_file \"%s\": the first line must hold the password "
                         "(not empty, no NUL)",
                         b->upstream_password_file);
        else
            b->upstream_password = config_strdup(ctx, buf);
    }
    explicit_bzero(buf, sizeof(buf));
}

/* Adds each line a users file printed as an error of this config (they
 * already read "USERSFILE:LINE: message"), sorted at the users key. */
static void
config_users_errors(struct config_ctx *ctx, int line, const char *text, size_t len)
{
    const char *p = text, *end = text + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        if (n > 0)
            config_error_raw(ctx, line, p, n);
        p += n + 1;
    }
}

/*
 * users, upstream_user and upstream_password_file: all three or none.
 * The users file is read now, so a reload takes it all or nothing, with
 * the certificates.
 */
static void
config_build_brand_users(struct config_ctx *ctx, struct config_section *sec,
                         struct rl_brand_conf *b)
{
    struct config_raw_brand *r = &sec->raw.brand;
    int lu = sec->key_lines[CONFIG_D_USERS], lup = sec->key_lines[CONFIG_D_UPSTREAM_USER];
    int lpw = sec->key_lines[CONFIG_D_UPSTREAM_PASSWORD_FILE];
    char *text = NULL;
    size_t len = 0;
    FILE *err;

    b->users_line = lu;
    b->upstream_user_line = lup;
    b->upstream_password_line = lpw;
    if (lu == 0 && lup == 0 && lpw == 0)
        return;
    if (lu == 0) {
        config_error(ctx, lup ? lup : lpw,
                     "upstream_user and upstream_password_file apply only with users (the "
                     "brand's own users file)");
        return;
    }
    if (lup == 0 || lpw == 0) {
        config_error(ctx, lu,
                     "users needs upstream_user and upstream_password_file (the provider's "
                     "credential relabel logs in with)");
        return;
    }
    /* A key given but not valid has been reported already. */
    if (r->users == NULL || r->upstream_user == NULL || r->upstream_password_file == NULL)
        return;
    b->users_file = config_strdup(ctx, r->users);
    b->upstream_user = config_strdup(ctx, r->upstream_user);
    b->upstream_password_file = config_strdup(ctx, r->upstream_password_file);
    if (b->upstream_password_file != NULL)
        config_read_upstream_password(ctx, b);
    err = open_memstream(&text, &len);
    if (err == NULL) {
        ctx->oom = true;
        return;
    }
    rl_users_load(r->users, err, &b->users);
    fclose(err);
    config_users_errors(ctx, lu, text, len);
    free(text);
}

static void
config_build_brand(struct config_ctx *ctx, struct config_section *sec, struct rl_config *cfg)
{
    struct config_raw_brand *r = &sec->raw.brand;
    struct rl_brand_conf *b = &cfg->brands[cfg->nbrands++];
    const char *up;

    b->name = config_strdup(ctx, sec->name);
    b->line = sec->line;
    b->hostname = config_strdup(ctx, r->hostname);
    b->hostname_line = sec->key_lines[CONFIG_D_HOSTNAME];
    config_brand_aliases(r, b);
    b->cert = config_strdup(ctx, r->cert);
    b->cert_line = sec->key_lines[CONFIG_D_CERT];
    b->key = config_strdup(ctx, r->key);
    b->key_line = sec->key_lines[CONFIG_D_KEY];
    b->cert_rsa = config_strdup(ctx, r->cert_rsa);
    b->cert_rsa_line = sec->key_lines[CONFIG_D_CERT_RSA];
    b->key_rsa = config_strdup(ctx, r->key_rsa);
    b->key_rsa_line = sec->key_lines[CONFIG_D_KEY_RSA];

    /* A key that was given but did not parse has been reported already. */
    if (sec->key_lines[CONFIG_D_HOSTNAME] == 0)
        config_error(ctx, sec->line, "[brand \"%s\"] needs hostname", sec->name);
    if (sec->key_lines[CONFIG_D_CERT] == 0)
        config_error(ctx, sec->line, "[brand \"%s\"] needs cert (the certificate file)", sec->name);
    if (sec->key_lines[CONFIG_D_KEY] == 0)
        config_error(ctx, sec->line, "[brand \"%s\"] needs key (the private key file)", sec->name);
    if (b->cert_rsa_line != 0 && b->key_rsa_line == 0)
        config_error(ctx, b->cert_rsa_line, "cert_rsa needs key_rsa (its private key file)");
    if (b->key_rsa_line != 0 && b->cert_rsa_line == 0)
        config_error(ctx, b->key_rsa_line, "key_rsa needs cert_rsa (its certificate file)");

    config_build_brand_users(ctx, sec, b);

    if (r->upstream == NULL && sec->key_lines[CONFIG_D_BRAND_UPSTREAM] != 0)
        return;
    up = r->upstream != NULL ? r->upstream : CONFIG_DEFAULT_PRESET;
    b->upstream = config_resolve_upstream(ctx, cfg, up);
    if (b->upstream == NULL)
        config_preset_error(ctx, sec->key_lines[CONFIG_D_BRAND_UPSTREAM], "upstream", up,
                            "unknown upstream");
}

static void
config_build_upstreams_brands(struct config_ctx *ctx, struct rl_config *cfg)
{
    size_t nup = 0, nbrand = 0;

    for (size_t i = 0; i < ctx->nsections; i++) {
        nup += ctx->sections[i]->type == CONFIG_S_UPSTREAM && !ctx->sections[i]->duplicate;
        nbrand += ctx->sections[i]->type == CONFIG_S_BRAND && !ctx->sections[i]->duplicate;
    }
    /* Sized once: brands keep pointers into this array.  Each brand adds
     * at most one preset. */
    cfg->upstreams = config_calloc(ctx, nup + nbrand, sizeof(*cfg->upstreams));
    cfg->brands = config_calloc(ctx, nbrand, sizeof(*cfg->brands));
    if (cfg->upstreams == NULL || cfg->brands == NULL)
        return;

    for (size_t i = 0; i < ctx->nsections; i++) {
        struct config_section *sec = ctx->sections[i];
        struct config_preset_use use;
        const struct config_preset *preset = NULL;

        if (sec->type != CONFIG_S_UPSTREAM || sec->duplicate)
            continue;
        /* config_parse_preset() accepted only names that are found. */
        if (sec->raw.upstream.preset != NULL && config_preset_find(sec->raw.upstream.preset, &use))
            preset = &use.p;
        config_merge_upstream(ctx, sec, preset, &cfg->upstreams[cfg->nupstreams]);
        config_check_upstream(ctx, sec);
        cfg->nupstreams++;
    }

    for (size_t i = 0; i < ctx->nsections; i++)
        if (ctx->sections[i]->type == CONFIG_S_BRAND && !ctx->sections[i]->duplicate)
            config_build_brand(ctx, ctx->sections[i], cfg);
}

/* Adds one name of brand `bi` to the SNI map (capacity checked by the
 * caller), lower case. */
static void
config_sni_add(struct config_ctx *ctx, struct rl_config *cfg, const char *name, size_t bi, int line)
{
    struct rl_sni_name *e = &cfg->sni.items[cfg->sni.n];

    e->name = config_strdup(ctx, name);
    if (e->name == NULL)
        return;
    for (char *p = e->name; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    e->brand = bi;
    e->line = line;
    cfg->sni.n++;
}

/*
 * The names clients may ask for, to choose a brand by SNI: every brand's
 * hostname and aliases, sorted.  The same name (ignoring case) twice in
 * one brand is kept once; in two brands it is an error at the later line,
 * since the brand a client gets must not depend on the order of the file.
 * A wildcard and an exact name below it may belong to different brands:
 * the exact name wins (sni.h).
 */
static void
config_build_sni(struct config_ctx *ctx, struct rl_config *cfg)
{
    size_t n = 0, kept = 0;

    for (size_t i = 0; i < cfg->nbrands; i++)
        n += 1 + cfg->brands[i].naliases;
    cfg->sni.items = config_calloc(ctx, n, sizeof(*cfg->sni.items));
    if (cfg->sni.items == NULL)
        return;
    for (size_t i = 0; i < cfg->nbrands; i++) {
        const struct rl_brand_conf *b = &cfg->brands[i];

        if (b->hostname != NULL)
            config_sni_add(ctx, cfg, b->hostname, i, b->hostname_line);
        for (size_t j = 0; j < b->naliases; j++)
            config_sni_add(ctx, cfg, b->aliases[j].name, i, b->aliases[j].line);
    }
    rl_sni_sort(&cfg->sni);
    for (size_t i = 0; i < cfg->sni.n; i++) {
        struct rl_sni_name *e = &cfg->sni.items[i], *prev = kept ? &cfg->sni.items[kept - 1] : NULL;

        if (prev == NULL || strcmp(prev->name, e->name) != 0) {
            cfg->sni.items[kept++] = *e;
            continue;
        }
        if (prev->brand != e->brand) {
            const struct rl_sni_name *first = prev->line <= e->line ? prev : e;
            const struct rl_sni_name *later = first == prev ? e : prev;

            config_error(ctx, later->line,
                         "name %s is already claimed by brand \"%s\" (line %d): the brand a "
                         "client gets must not depend on the order of the file",
                         later->name, cfg->brands[first->brand].name, first->line);
        }
        if (e->line < prev->line)
            prev->line = e->line;
        free(e->name);
    }
    cfg->sni.n = kept;
}

static bool
config_addr_is_any(const struct rl_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr, &in6addr_any,
                  sizeof(in6addr_any)) == 0;
}

static uint16_t
config_addr_port(const struct rl_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

/* 0: independent; 1: the same address; 2: one is the wildcard of the same
 * family and port, which bind() refuses on Linux just the same.  IPv6
 * sockets are expected to be IPV6_V6ONLY, so 0.0.0.0 and [::] coexist. */
static int
config_addr_conflict(const struct rl_addr *a, const struct rl_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family || config_addr_port(a) != config_addr_port(b))
        return 0;
    if (strcmp(a->text, b->text) == 0)
        return 1;
    return config_addr_is_any(a) != config_addr_is_any(b) ? 2 : 0;
}

static void
config_check_addrs(struct config_ctx *ctx, struct rl_config *cfg, size_t li)
{
    struct rl_listener_conf *l = &cfg->listeners[li];

    for (size_t ai = 0; ai < l->naddrs; ai++) {
        for (size_t lj = 0; lj <= li; lj++) {
            const struct rl_listener_conf *other = &cfg->listeners[lj];
            size_t end = lj == li ? ai : other->naddrs;

            for (size_t aj = 0; aj < end; aj++) {
                int c = config_addr_conflict(&l->addrs[ai], &other->addrs[aj]);

                if (c == 0)
                    continue;
                if (lj == li && c == 1)
                    config_error(ctx, l->listen_line, "%s is listed twice", l->addrs[ai].text);
                else if (c == 1)
                    config_error(ctx, l->listen_line,
                                 "%s is already used by listener \"%s\" (line %d)",
                                 l->addrs[ai].text, other->name, other->listen_line);
                else
                    config_error(ctx, l->listen_line, "%s overlaps %s of listener \"%s\" (line %d)",
                                 l->addrs[ai].text, other->addrs[aj].text, other->name,
                                 other->listen_line);
                goto next_addr;
            }
        }
    next_addr:;
    }
}

static void
config_default_listener(struct config_ctx *ctx, struct rl_listener_conf *l, const char *name,
                        int port, enum rl_tls_mode tls, struct rl_brand_conf *brand)
{
    l->name = config_strdup(ctx, name);
    l->addrs = config_calloc(ctx, 2, sizeof(*l->addrs));
    if (l->addrs != NULL) {
        config_addr_set(&l->addrs[0], AF_INET, "0.0.0.0", port);
        config_addr_set(&l->addrs[1], AF_INET6, "::", port);
        l->naddrs = 2;
    }
    l->tls = tls;
    l->require_tls = true;
    l->brand = brand;
}

/* PROXY protocol and access lists: the lists move from the raw section to
 * the listener.  A header is only ever accepted from proxy_trusted, so
 * proxy_protocol without it could never accept a connection. */
static void
config_listener_access(struct config_ctx *ctx, struct config_section *sec,
                       struct rl_listener_conf *l)
{
    struct config_raw_listener *r = &sec->raw.listener;

    l->proxy_protocol = (unsigned)config_merge(r->proxy_protocol, 0);
    l->proxy_trusted = r->proxy_trusted;
    l->allow = r->allow;
    l->deny = r->deny;
    r->proxy_trusted = r->allow = r->deny = (struct rl_cidr_list){0};
    if (l->proxy_protocol != 0 && sec->key_lines[CONFIG_D_PROXY_TRUSTED] == 0)
        config_error(ctx, sec->key_lines[CONFIG_D_PROXY_PROTOCOL],
                     "proxy_protocol needs proxy_trusted: the networks of the load balancers "
                     "allowed to send the PROXY header");
    if (sec->key_lines[CONFIG_D_PROXY_TRUSTED] != 0 && sec->key_lines[CONFIG_D_PROXY_PROTOCOL] == 0)
        config_error(ctx, sec->key_lines[CONFIG_D_PROXY_TRUSTED],
                     "proxy_trusted needs proxy_protocol = v1, v2 or any");
}

static void
config_build_listeners(struct config_ctx *ctx, struct rl_config *cfg)
{
    size_t n = 0;

    for (size_t i = 0; i < ctx->nsections; i++)
        n += ctx->sections[i]->type == CONFIG_S_LISTENER && !ctx->sections[i]->duplicate;

    if (cfg->nbrands == 0) {
        config_error(ctx, 0, "no [brand \"NAME\"] section: at least one brand is required");
        return;
    }
    if (n == 0) {
        /* The drop-in default: the ports a CNAME to the provider served. */
        if (cfg->nbrands > 1) {
            config_error(ctx, 0,
                         "no [listener \"NAME\"] section: the default listeners need exactly one "
                         "brand, and there are %zu",
                         cfg->nbrands);
            return;
        }
        cfg->listeners = config_calloc(ctx, 2, sizeof(*cfg->listeners));
        if (cfg->listeners == NULL)
            return;
        config_default_listener(ctx, &cfg->listeners[0], "smtps", 465, RL_TLS_IMPLICIT,
                                &cfg->brands[0]);
        config_default_listener(ctx, &cfg->listeners[1], "submission", 587, RL_TLS_STARTTLS,
                                &cfg->brands[0]);
        cfg->nlisteners = 2;
        return;
    }

    cfg->listeners = config_calloc(ctx, n, sizeof(*cfg->listeners));
    if (cfg->listeners == NULL)
        return;
    for (size_t i = 0; i < ctx->nsections; i++) {
        struct config_section *sec = ctx->sections[i];
        struct config_raw_listener *r = &sec->raw.listener;
        struct rl_listener_conf *l;
        bool all_465 = r->listen.n > 0;

        if (sec->type != CONFIG_S_LISTENER || sec->duplicate)
            continue;
        l = &cfg->listeners[cfg->nlisteners++];
        l->name = config_strdup(ctx, sec->name);
        l->line = sec->line;
        l->listen_line = sec->key_lines[CONFIG_D_LISTEN];
        if (r->listen.n > 0) {
            l->addrs = config_calloc(ctx, r->listen.n, sizeof(*l->addrs));
            if (l->addrs != NULL) {
                memcpy(l->addrs, r->listen.items, r->listen.n * sizeof(*l->addrs));
                l->naddrs = r->listen.n;
            }
        }
        if (sec->key_lines[CONFIG_D_LISTEN] == 0)
            config_error(ctx, sec->line,
                         "[listener \"%s\"] needs listen (such as listen = 0.0.0.0:465, [::]:465)",
                         sec->name);

        for (size_t a = 0; a < r->listen.n; a++)
            all_465 = all_465 && config_addr_port(&r->listen.items[a]) == 465;
        l->tls =
            (enum rl_tls_mode)config_merge(r->tls, all_465 ? RL_TLS_IMPLICIT : RL_TLS_STARTTLS);
        l->require_tls = config_merge(r->require_tls, 1) != 0;
        if (l->tls == RL_TLS_IMPLICIT && r->require_tls == 0)
            config_error(ctx, sec->key_lines[CONFIG_D_REQUIRE_TLS],
                         "require_tls = no needs tls = starttls: an implicit TLS listener has no "
                         "plaintext phase");
        config_listener_access(ctx, sec, l);
        l->sni_refuse = config_merge(r->sni_unknown, 0) != 0;

        if (r->brand != NULL) {
            for (size_t b = 0; b < cfg->nbrands; b++)
                if (cfg->brands[b].name != NULL && strcmp(cfg->brands[b].name, r->brand) == 0)
                    l->brand = &cfg->brands[b];
            if (l->brand == NULL)
                config_error(ctx, sec->key_lines[CONFIG_D_LISTENER_BRAND],
                             "unknown brand \"%s\" (no [brand \"%s\"] section)", r->brand,
                             r->brand);
        } else if (sec->key_lines[CONFIG_D_LISTENER_BRAND] == 0) {
            if (cfg->nbrands == 1)
                l->brand = &cfg->brands[0];
            else
                config_error(ctx, sec->line,
                             "[listener \"%s\"] needs brand: there are %zu brands to choose from",
                             sec->name, cfg->nbrands);
        }
        config_check_addrs(ctx, cfg, cfg->nlisteners - 1);
    }
}

/*
 * [metrics]: the HTTP endpoint's addresses (none: no endpoint and no
 * upstream checks) and the timing of the checks behind /readyz.  An address
 * may not be one an SMTP listener uses, and the checks must come at least
 * as often as readiness expects a fresh success.
 */
static void
config_build_metrics(struct config_ctx *ctx, struct rl_config *cfg)
{
    const struct config_section *sec = config_find_section(ctx, CONFIG_S_METRICS, NULL);
    const struct config_raw_metrics *r;
    int64_t interval, max_age;

    cfg->upstream_check_interval_ms = RL_CHECK_INTERVAL_DEFAULT;
    cfg->ready_max_age_ms = RL_READY_MAX_AGE_FACTOR * RL_CHECK_INTERVAL_DEFAULT;
    if (sec == NULL)
        return;
    r = &sec->raw.metrics;
    interval = config_merge(r->upstream_check_interval, RL_CHECK_INTERVAL_DEFAULT);
    max_age = config_merge(r->ready_max_age, RL_READY_MAX_AGE_FACTOR * interval);
    cfg->upstream_check_interval_ms = (unsigned)interval;
    cfg->ready_max_age_ms = (unsigned)max_age;
    if (max_age < interval)
        config_error(ctx,
                     sec->key_lines[CONFIG_D_READY_MAX_AGE]
                         ? sec->key_lines[CONFIG_D_READY_MAX_AGE]
                         : sec->key_lines[CONFIG_D_CHECK_INTERVAL],
                     "ready_max_age is shorter than upstream_check_interval: readiness would be "
                     "lost between two checks");

    cfg->metrics_listen_line = sec->key_lines[CONFIG_D_METRICS_LISTEN];
    if (r->listen.n == 0)
        return;
    cfg->metrics_addrs = config_calloc(ctx, r->listen.n, sizeof(*cfg->metrics_addrs));
    if (cfg->metrics_addrs == NULL)
        return;
    for (size_t i = 0; i < r->listen.n; i++) {
        const struct rl_addr *a = &r->listen.items[i];
        bool clash = false;

        for (size_t j = 0; j < cfg->metrics_naddrs && !clash; j++) {
            clash = config_addr_conflict(a, &cfg->metrics_addrs[j]) != 0;
            if (clash)
                config_error(ctx, cfg->metrics_listen_line, "%s overlaps %s of [metrics]", a->text,
                             cfg->metrics_addrs[j].text);
        }
        for (size_t l = 0; l < cfg->nlisteners && !clash; l++) {
            const struct rl_listener_conf *lc = &cfg->listeners[l];

            for (size_t j = 0; j < lc->naddrs && !clash; j++) {
                clash = config_addr_conflict(a, &lc->addrs[j]) != 0;
                if (clash)
                    config_error(ctx, cfg->metrics_listen_line,
                                 "%s overlaps %s of listener \"%s\" (line %d)", a->text,
                                 lc->addrs[j].text, lc->name, lc->listen_line);
            }
        }
        if (!clash)
            cfg->metrics_addrs[cfg->metrics_naddrs++] = *a;
    }
}

/* ---- public ------------------------------------------------------------------- */

static void
config_free_upstream(struct rl_upstream_conf *u)
{
    free(u->name);
    free(u->host);
    free(u->verify_name);
    free(u->ca_file);
    free(u->helo_name);
    for (size_t i = 0; i < u->nhide; i++)
        free(u->hide[i]);
    free(u->hide);
}

static void
config_free(struct rl_config *cfg)
{
    free(cfg->path);
    free(cfg->user);
    free(cfg->group);
    free(cfg->banner);
    for (size_t i = 0; cfg->listeners != NULL && i < cfg->nlisteners; i++) {
        free(cfg->listeners[i].name);
        free(cfg->listeners[i].addrs);
        rl_cidr_list_free(&cfg->listeners[i].proxy_trusted);
        rl_cidr_list_free(&cfg->listeners[i].allow);
        rl_cidr_list_free(&cfg->listeners[i].deny);
    }
    free(cfg->listeners);
    free(cfg->metrics_addrs);
    for (size_t i = 0; cfg->brands != NULL && i < cfg->nbrands; i++) {
        struct rl_brand_conf *b = &cfg->brands[i];

        free(b->name);
        free(b->hostname);
        for (size_t j = 0; j < b->naliases; j++)
            free(b->aliases[j].name);
        free(b->aliases);
        free(b->cert);
        free(b->key);
        free(b->cert_rsa);
        free(b->key_rsa);
        rl_users_free(b->users);
        free(b->users_file);
        free(b->upstream_user);
        free(b->upstream_password_file);
        if (b->upstream_password != NULL) {
            explicit_bzero(b->upstream_password, strlen(b->upstream_password));
            free(b->upstream_password);
        }
    }
    free(cfg->brands);
    for (size_t i = 0; i < cfg->sni.n; i++)
        free(cfg->sni.items[i].name);
    free(cfg->sni.items);
    for (size_t i = 0; cfg->upstreams != NULL && i < cfg->nupstreams; i++)
        config_free_upstream(&cfg->upstreams[i]);
    free(cfg->upstreams);
    free(cfg);
}

static void
config_ctx_free(struct config_ctx *ctx)
{
    for (size_t i = 0; i < ctx->nsections; i++) {
        config_raw_free(ctx->sections[i]);
        free(ctx->sections[i]->name);
        free(ctx->sections[i]);
    }
    free(ctx->sections);
    for (size_t i = 0; i < ctx->nerrors; i++)
        free(ctx->errors[i].msg);
    free(ctx->errors);
    free(ctx->buf);
}

int
rl_config_load(const char *path, FILE *err, struct rl_config **out)
{
    struct config_ctx ctx = {.path = path};
    struct rl_config *cfg = NULL;
    struct stat st;
    int rc, nproblems;

    *out = NULL;
    ctx.fp = fopen(path, "re");
    if (ctx.fp == NULL || fstat(fileno(ctx.fp), &st) != 0 || S_ISDIR(st.st_mode)) {
        const char *why = ctx.fp == NULL ? strerror(errno) : strerror(EISDIR);

        if (err != NULL)
            fprintf(err, "%s: cannot open: %s\n", path, why);
        if (ctx.fp != NULL)
            fclose(ctx.fp);
        return 1;
    }

    rc = ini_parse_stream(config_reader, &ctx, config_handler, &ctx);
    fclose(ctx.fp);
    /* Our reader reports every syntax error inih can find; this only
     * catches a kind of error a different inih build might add. */
    if (rc > 0) {
        bool known = false;

        for (size_t i = 0; i < ctx.nerrors; i++)
            known = known || ctx.errors[i].line == rc;
        if (!known)
            config_error(&ctx, rc, "syntax error");
    } else if (rc < 0) {
        config_error(&ctx, 0, "cannot parse (inih error %d)", rc);
    }
    if (ctx.read_errno != 0)
        config_error(&ctx, 0, "cannot read: %s", strerror(ctx.read_errno));

    cfg = config_calloc(&ctx, 1, sizeof(*cfg));
    if (cfg != NULL) {
        atomic_init(&cfg->refs, 1);
        cfg->path = config_strdup(&ctx, path);
        config_merge_relabel(&ctx, config_find_section(&ctx, CONFIG_S_RELABEL, NULL), cfg);
        config_build_upstreams_brands(&ctx, cfg);
        config_build_sni(&ctx, cfg);
        config_build_listeners(&ctx, cfg);
        config_build_metrics(&ctx, cfg);
    }

    nproblems = (int)ctx.nerrors + (ctx.oom ? 1 : 0);
    config_print_errors(&ctx, err);
    config_ctx_free(&ctx);
    if (nproblems > 0) {
        if (cfg != NULL)
            config_free(cfg);
        return nproblems;
    }
    *out = cfg;
    return 0;
}

struct rl_config *
rl_config_ref(struct rl_config *cfg)
{
    if (cfg != NULL)
        atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void
rl_config_unref(struct rl_config *cfg)
{
    if (cfg != NULL && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
        config_free(cfg);
}
