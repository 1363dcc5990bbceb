/*
 * listener.h - the listening sockets: bind every address of every listener,
 * accept, and hand each connection to a new session with the snapshot the
 * listener belongs to.
 */
#ifndef RELABEL_LISTENER_H
#define RELABEL_LISTENER_H

#include <stdbool.h>
#include <stdio.h>

#include "relabel/ctx.h"
#include "relabel/snapshot.h"

struct rl_listeners;

/* Binds and listens on every address of snap's listeners, on ctx's loop
 * (with SO_REUSEPORT when several workers listen on the same addresses).
 * On failure prints "PATH:LINE: listener NAME: cannot listen on ADDR:
 * reason" to err, closes what was opened and returns a negative code. */
int rl_listeners_open(struct rl_ctx *ctx, struct rl_snapshot *snap, bool reuseport, FILE *err,
                      struct rl_listeners **out);

/*
 * Moves the set to a new snapshot, all or nothing: sockets whose address is
 * in both keep listening (no connection is refused during a reload) and
 * take the new listener settings; new addresses are bound first, and if
 * one cannot be, nothing changes and a negative code is returned (reasons
 * printed to err); addresses no longer configured are closed.  Sessions
 * already running are not touched.
 */
int rl_listeners_update(struct rl_listeners *ls, struct rl_snapshot *snap, FILE *err);

/* The same in two steps, so that several workers' sets change all or
 * nothing: prepare() binds the new addresses (on failure: nothing bound,
 * reasons printed, negative code); then exactly one of commit() (cannot
 * fail) or rollback(). */
int rl_listeners_prepare(struct rl_listeners *ls, struct rl_snapshot *snap, FILE *err);
void rl_listeners_commit(struct rl_listeners *ls);
void rl_listeners_rollback(struct rl_listeners *ls);

/* Stops accepting; the handles close on the next loop iteration and the
 * set frees itself. */
void rl_listeners_close(struct rl_listeners *ls);

#endif
