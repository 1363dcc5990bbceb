/*
 * listener.h - the listening sockets: bind every address of every listener,
 * accept, and hand each connection to a new session.
 */
#ifndef RELABEL_LISTENER_H
#define RELABEL_LISTENER_H

#include <stdio.h>

#include "relabel/config.h"
#include "relabel/ctx.h"

struct rl_listeners;

/* Binds and listens on every address of cfg's listeners.  On failure prints
 * "PATH:LINE: listener NAME: cannot listen on ADDR: reason" to err, closes
 * what was opened and returns a negative code. */
int rl_listeners_open(struct rl_ctx *ctx, const struct rl_config *cfg, FILE *err,
                      struct rl_listeners **out);

/* Stops accepting; the handles close on the next loop iteration and the
 * set frees itself. */
void rl_listeners_close(struct rl_listeners *ls);

#endif
