/*
 * probe.h - the deep check of every upstream in use, behind /readyz.
 *
 * A check does what a session does to reach its upstream, with the same
 * layers (upstream.c to resolve, conn.c legs, the snapshot's TLS client
 * configuration): connect (each address in turn), implicit TLS or EHLO +
 * STARTTLS, certificate verification against verify_name and ca_file, then
 * EHLO on the encrypted connection and QUIT.  It runs at start-up and then
 * every upstream_check_interval; every step has a timeout.  "In use" means
 * the upstream of a brand that a listener serves.
 */
#ifndef RELABEL_PROBE_H
#define RELABEL_PROBE_H

#include <stdbool.h>
#include <stdio.h>
#include <uv.h>

#include "relabel/snapshot.h"

struct rl_probe;

/* Starts checking snap's upstreams: a first round at once.  NULL on
 * allocation failure. */
struct rl_probe *rl_probe_start(uv_loop_t *loop, struct rl_snapshot *snap);

/*
 * A reload: from now on snap's upstreams are checked, and a round starts
 * at once.  An upstream whose settings (name, host, port, tls,
 * verify_name, ca_file, helo_name) did not change keeps its results; any
 * other starts without a success.
 */
void rl_probe_update(struct rl_probe *p, struct rl_snapshot *snap);

/* True when each upstream's last success is at most ready_max_age old;
 * otherwise writes one line per upstream that is not to why (if not NULL):
 * "upstream NAME: reason". */
bool rl_probe_ready(const struct rl_probe *p, FILE *why);

/* relabel_upstream_check_success and
 * relabel_upstream_check_last_success_timestamp_seconds. */
void rl_probe_render(const struct rl_probe *p, FILE *out);

/* Stops: checks in progress are abandoned (their connections dropped); the
 * probe frees itself once libuv has closed its timer. */
void rl_probe_stop(struct rl_probe *p);

#endif
