/*
 * ratelimit.c - per-address token buckets in a fixed open-addressing table.
 *
 * Credit is kept in integer units where one connection costs one minute in
 * milliseconds (60000) and a bucket refills by `rate` units per millisecond:
 * `rate` connections per minute without fractions, and a bucket is full
 * again at most one minute after its last use, whatever the rate.
 *
 * An address lives in one of RATELIMIT_WINDOW slots after its hash; lookups
 * scan that window only.  Entries are never deleted, only replaced, so the
 * window never holds an address twice and needs no tombstones.  The slot a
 * new address takes is, in order of preference: an empty one, one whose
 * bucket has refilled completely (forgetting it changes nothing), else the
 * one touched longest ago, which is the fullest.
 */
#include <stdlib.h>
#include <string.h>

#include "relabel/ratelimit.h"

#define RATELIMIT_WINDOW 8
#define RATELIMIT_MINUTE_MS 60000u

struct ratelimit_slot {
    struct rl_cidr_addr addr; /* family AF_UNSPEC: empty */
    uint64_t credit;
    uint64_t last_ms;
};

struct rl_ratelimit {
    struct ratelimit_slot *slots;
    size_t mask;
    uint64_t seed;
};

struct rl_ratelimit *
rl_ratelimit_new(size_t slots, uint64_t seed)
{
    struct rl_ratelimit *t = calloc(1, sizeof(*t));
    size_t n = RATELIMIT_WINDOW;

    if (t == NULL)
        return NULL;
    while (n < slots)
        n *= 2;
    t->slots = calloc(n, sizeof(*t->slots));
    if (t->slots == NULL) {
        free(t);
        return NULL;
    }
    t->mask = n - 1;
    t->seed = seed;
    return t;
}

void
rl_ratelimit_free(struct rl_ratelimit *t)
{
    if (t == NULL)
        return;
    free(t->slots);
    free(t);
}

/* A seeded multiply-xorshift over the address; the final step is
 * splitmix64's, so every input bit reaches the low bits used as index. */
static uint64_t
ratelimit_hash(const struct rl_ratelimit *t, const struct rl_cidr_addr *a)
{
    uint64_t h = t->seed ^ a->family, w;

    for (size_t i = 0; i < sizeof(a->bytes); i += sizeof(w)) {
        memcpy(&w, a->bytes + i, sizeof(w));
        h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 32;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

/* The bucket of s brought up to now_ms. */
static uint64_t
ratelimit_credit(const struct ratelimit_slot *s, unsigned rate, uint64_t now_ms)
{
    uint64_t full = (uint64_t)rate * RATELIMIT_MINUTE_MS;
    uint64_t elapsed = now_ms > s->last_ms ? now_ms - s->last_ms : 0;

    if (elapsed >= RATELIMIT_MINUTE_MS)
        return full;
    return s->credit + elapsed * rate >= full ? full : s->credit + elapsed * rate;
}

bool
rl_ratelimit_allow(struct rl_ratelimit *t, const struct rl_cidr_addr *a, unsigned rate,
                   uint64_t now_ms)
{
    struct ratelimit_slot *victim = NULL;
    size_t h;
    uint64_t credit;

    if (rate == 0 || a->family == AF_UNSPEC)
        return true;
    h = (size_t)ratelimit_hash(t, a);
    for (size_t i = 0; i < RATELIMIT_WINDOW; i++) {
        struct ratelimit_slot *s = &t->slots[(h + i) & t->mask];

        if (s->addr.family == AF_UNSPEC) {
            if (victim == NULL || victim->addr.family != AF_UNSPEC)
                victim = s;
            continue;
        }
        if (rl_cidr_addr_equal(&s->addr, a)) {
            credit = ratelimit_credit(s, rate, now_ms);
            s->last_ms = now_ms;
            if (credit < RATELIMIT_MINUTE_MS) {
                s->credit = credit;
                return false;
            }
            s->credit = credit - RATELIMIT_MINUTE_MS;
            return true;
        }
        /* An empty slot, else the oldest: a bucket refills with time, so
         * the oldest is the fullest, and one untouched for a minute is
         * full, which is the same as no entry at all. */
        if (victim == NULL || (victim->addr.family != AF_UNSPEC && s->last_ms < victim->last_ms))
            victim = s;
    }
    victim->addr = *a;
    victim->credit = (uint64_t)rate * RATELIMIT_MINUTE_MS - RATELIMIT_MINUTE_MS;
    victim->last_ms = now_ms;
    return true;
}

size_t
rl_ratelimit_slots(const struct rl_ratelimit *t)
{
    return t->mask + 1;
}

size_t
rl_ratelimit_used(const struct rl_ratelimit *t)
{
    size_t n = 0;

    for (size_t i = 0; i <= t->mask; i++)
        n += t->slots[i].addr.family != AF_UNSPEC;
    return n;
}
