/*
 * session.h - one SMTP session: the client leg, the upstream leg and the
 * state machine between them.  See session.c for the states.
 */
#ifndef RELABEL_SESSION_H
#define RELABEL_SESSION_H

#include <uv.h>

#include "relabel/config.h"
#include "relabel/ctx.h"

/*
 * Accepts one pending connection from server for listener lc and starts its
 * session with the context's current snapshot.  Returns 0, or a negative
 * code if the connection could not be accepted (it is then closed).
 */
int rl_session_accept(struct rl_ctx *ctx, const struct rl_listener_conf *lc, uv_stream_t *server);

/* Ends every session: clients get "421 4.3.2 ... shutting down". */
void rl_session_shutdown_all(struct rl_ctx *ctx);

#endif
