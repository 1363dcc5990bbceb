/*
 * log.h - log lines to stderr, as text or JSON.
 *
 * rl_log() tests the level before its arguments are evaluated.  Session lines
 * have the shape "<session-id> <leg> <event> key=value ...".  Untrusted text
 * (anything a peer sent) goes through rl_log_escape() first: non-printable
 * bytes become \xNN, and the result is bounded.  AUTH payloads and key
 * material are never passed to the logger at all.
 */
#ifndef RELABEL_LOG_H
#define RELABEL_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum rl_log_level { RL_LOG_ERROR = 0, RL_LOG_WARN, RL_LOG_INFO, RL_LOG_DEBUG };

extern _Atomic int rl_log_level_current;

void rl_log_setup(int level, int json);

void rl_log_emit(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define rl_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= rl_log_level_current)                                                       \
            rl_log_emit((level), __VA_ARGS__);                                                     \
    } while (0)

/* Copies at most len bytes of untrusted text into out (cap bytes, always
 * NUL-terminated), escaping '\\', '"', spaces-as-is, and non-printable bytes
 * as \xNN; returns out. */
char *rl_log_escape(const char *p, size_t len, char *out, size_t cap);

/* Parses "error" | "warn" | "info" | "debug"; -1 if unknown. */
int rl_log_level_parse(const char *s);

#endif
