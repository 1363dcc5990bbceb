/*
 * auth.h - password checks for a brand's own users, off the event loop.
 *
 * crypt() is slow by design (yescrypt: tens of milliseconds), so each
 * check runs on the libuv threadpool.  At most RL_AUTH_VERIFY_MAX checks
 * run at once in the whole process (the threadpool also resolves upstream
 * names); the others wait in their worker's queue, in order, and a worker
 * whose check ends wakes the others.  A failed check is reported only
 * after a delay, so guessing is slow.  The callback runs on the worker's
 * loop, never from inside rl_auth_verify() or rl_auth_cancel().
 */
#ifndef RELABEL_AUTH_H
#define RELABEL_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct rl_ctx;
struct rl_auth_req;

typedef void (*rl_auth_cb)(void *arg, bool ok);

/* Sets up the worker's queue (ctx->authq), on the worker's loop, before
 * its thread runs.  Returns 0 or a negative code. */
int rl_auth_init(struct rl_ctx *ctx);
/* Closes it, on the worker's loop, once no session is left. */
void rl_auth_close(struct rl_ctx *ctx);

/*
 * Checks password (plen bytes, copied) against hash (copied; NULL: an
 * unknown user, which fails in the time a real check takes).  cb(arg, ok)
 * follows once, ok at once, a failure after fail_delay_ms.  Returns the
 * request, or NULL without memory (cb is then never called).
 */
struct rl_auth_req *rl_auth_verify(struct rl_ctx *ctx, const char *hash, const char *password,
                                   size_t plen, unsigned fail_delay_ms, rl_auth_cb cb, void *arg);

/* The callback will not be called; the request is freed when the
 * threadpool lets go of it. */
void rl_auth_cancel(struct rl_auth_req *req);

#endif
