/*
 * ratelimit.h - new connections per client address per minute, in a table
 * of fixed size.
 *
 * One token bucket per address: it holds up to `rate` connections and
 * refills at `rate` per minute, so a client may open `rate` connections at
 * once and then one every 60/rate seconds.  The table never grows: a flood
 * of distinct addresses evicts the entries touched longest ago (first those
 * whose bucket has refilled completely, which carry no information), so
 * memory stays fixed and every operation is O(1).  The cost of that bound
 * is that under such a flood a limited address may be forgotten early and
 * get a fresh bucket.
 *
 * Pure: no clock, no I/O; the caller passes the time in milliseconds.
 */
#ifndef RELABEL_RATELIMIT_H
#define RELABEL_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relabel/cidr.h"

struct rl_ratelimit;

/* A table of `slots` entries (rounded up to a power of two, at least one
 * probe window); `seed` keys the hash so that a client cannot choose
 * addresses that collide.  NULL on allocation failure. */
struct rl_ratelimit *rl_ratelimit_new(size_t slots, uint64_t seed);
void rl_ratelimit_free(struct rl_ratelimit *t);

/*
 * One new connection from a at now_ms (a monotonic clock).  Returns true if
 * it is within `rate` per minute (and counts it), false if it is over
 * (counted against nothing: a refused attempt costs no token).  rate 0
 * means no limit; an AF_UNSPEC address is never limited.
 */
bool rl_ratelimit_allow(struct rl_ratelimit *t, const struct rl_cidr_addr *a, unsigned rate,
                        uint64_t now_ms);

/* Entries in the table (fixed) and entries in use, for tests and --check. */
size_t rl_ratelimit_slots(const struct rl_ratelimit *t);
size_t rl_ratelimit_used(const struct rl_ratelimit *t);

#endif
