/*
 * errors.h - relabel's own error codes.  Functions return 0 on success and a
 * negative code on failure; socket errors pass libuv's UV_E* through
 * unchanged, so relabel's codes start well below libuv's range.
 */
#ifndef RELABEL_ERRORS_H
#define RELABEL_ERRORS_H

#define RL_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -10001, "out of memory")                                                              \
    X(LINE_TOO_LONG, -10002, "line too long")                                                      \
    X(BAD_BYTE, -10003, "NUL or bare CR in line")                                                  \
    X(PROTO, -10004, "protocol error")                                                             \
    X(TLS, -10005, "TLS error")                                                                    \
    X(TLS_EOF, -10006, "TLS closed by peer")                                                       \
    X(TLS_TRUNCATED, -10007, "connection closed without TLS close_notify")                         \
    X(BARE_NEWLINE, -10008, "bare CR or LF in message")                                            \
    X(NUL, -10009, "NUL byte in message")                                                          \
    X(TOO_BIG, -10010, "message exceeds size limit")                                               \
    X(CONFIG, -10011, "configuration error")                                                       \
    X(FULL, -10012, "buffer full")

enum rl_errno {
#define RL_ERRNO_ENUM(name, val, str) RL_E_##name = (val),
    RL_ERRNO_MAP(RL_ERRNO_ENUM)
#undef RL_ERRNO_ENUM
};

/* Human text / symbolic name for a relabel code or a libuv UV_E* code. */
const char *rl_strerror(int err);
const char *rl_err_name(int err);

#endif
