/*
 * session.h - one SMTP session: the client leg, the upstream leg and the
 * state machine between them.  See session.c for the states.
 */
#ifndef RELABEL_SESSION_H
#define RELABEL_SESSION_H

#include <uv.h>

#include "relabel/config.h"
#include "relabel/ctx.h"

struct rl_snapshot;

/*
 * Accepts one pending connection from server for listener lc (part of
 * snap) and starts its session, which keeps a reference on snap for its
 * whole life.  Returns 0, or a negative code if the connection could not be
 * accepted (it is then closed).
 */
int rl_session_accept(struct rl_ctx *ctx, struct rl_snapshot *snap,
                      const struct rl_listener_conf *lc, uv_stream_t *server);

/*
 * Shutdown.  Sessions between transactions get "421 4.3.2 ... shutting
 * down" and close at once.  Without `force`, a session inside a transaction
 * (MAIL accepted, message streaming, or its end of data unanswered) may
 * finish it: it is closed the same way right after the reply to its end of
 * data.  With `force` every session ends now, and a message in progress
 * never reaches its end upstream.
 */
void rl_session_shutdown_all(struct rl_ctx *ctx, bool force);

#endif
