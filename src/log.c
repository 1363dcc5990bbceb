/*
 * log.c - log lines to stderr, text or JSON, one write(2) per line so lines
 * from a busy process never interleave.  Formatting happens into a stack
 * buffer: the logger never allocates.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "relabel/log.h"

/* Set by the main thread (start, reload), read by every worker. */
_Atomic int rl_log_level_current = RL_LOG_INFO;
static _Atomic int log_json;

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

void
rl_log_setup(int level, int json)
{
    rl_log_level_current = level;
    log_json = json;
}

int
rl_log_level_parse(const char *s)
{
    for (size_t i = 0; i < sizeof(log_level_names) / sizeof(log_level_names[0]); i++)
        if (strcasecmp(s, log_level_names[i]) == 0)
            return (int)i;
    return -1;
}

/* JSON-escapes msg[0..len) into out; returns the bytes written. */
static size_t
log_json_escape(const char *msg, size_t len, char *out, size_t cap)
{
    size_t o = 0;

    for (size_t i = 0; i < len && o + 7 < cap; i++) {
        unsigned char ch = (unsigned char)msg[i];

        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    return o;
}

void
rl_log_emit(int level, const char *fmt, ...)
{
    char msg[2048], line[4600];
    struct timespec ts;
    struct tm tm;
    char stamp[40];
    va_list ap;
    int n;
    size_t mlen, len;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    mlen = (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);

    if (log_json) {
        len = (size_t)snprintf(line, sizeof(line),
                               "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"", stamp,
                               ts.tv_nsec / 1000000, log_level_names[level]);
        len += log_json_escape(msg, mlen, line + len, sizeof(line) - len - 4);
        memcpy(line + len, "\"}\n", 3);
        len += 3;
    } else {
        len = (size_t)snprintf(line, sizeof(line), "%s.%03ldZ %s %.*s\n", stamp,
                               ts.tv_nsec / 1000000, log_level_names[level], (int)mlen, msg);
        if (len >= sizeof(line))
            len = sizeof(line) - 1;
    }
    /* A failed log write has nowhere to be reported. */
    if (write(STDERR_FILENO, line, len) < 0)
        return;
}

char *
rl_log_escape(const char *p, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    if (cap == 0)
        return out;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];

        if (ch >= 0x21 && ch < 0x7f && ch != '\\' && ch != '"') {
            if (o + 1 >= cap)
                break;
            out[o++] = (char)ch;
        } else if (ch == ' ') {
            if (o + 1 >= cap)
                break;
            out[o++] = ' ';
        } else {
            if (o + 4 >= cap)
                break;
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return out;
}
