/*
 * test_ratelimit.c - the per-address connection rate table: the burst and
 * the refill, addresses kept apart, the table's fixed size under a flood of
 * distinct addresses, and which entry a full window gives up.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <cmocka.h>

#include "relabel/ratelimit.h"

static struct rl_cidr_addr
v4(uint32_t ip)
{
    struct rl_cidr_addr a;

    memset(&a, 0, sizeof(a));
    a.family = AF_INET;
    a.bytes[0] = (uint8_t)(ip >> 24);
    a.bytes[1] = (uint8_t)(ip >> 16);
    a.bytes[2] = (uint8_t)(ip >> 8);
    a.bytes[3] = (uint8_t)ip;
    return a;
}

/* How many connections in a row are allowed at now_ms. */
static unsigned
burst(struct rl_ratelimit *t, const struct rl_cidr_addr *a, unsigned rate, uint64_t now_ms)
{
    unsigned n = 0;

    while (n < 10 * rate + 10 && rl_ratelimit_allow(t, a, rate, now_ms))
        n++;
    return n;
}

static void
test_burst_then_refill(void **state)
{
    struct rl_ratelimit *t = rl_ratelimit_new(64, 1);
    struct rl_cidr_addr a = v4(0xc0000201), b = v4(0xc0000202);

    assert_non_null(t);
    /* rate connections at once, the next refused. */
    assert_int_equal(burst(t, &a, 5, 1000), 5);
    assert_false(rl_ratelimit_allow(t, &a, 5, 1000));
    /* Another address has its own bucket. */
    assert_int_equal(burst(t, &b, 5, 1000), 5);
    /* 5 per minute: one more every 12 s. */
    assert_false(rl_ratelimit_allow(t, &a, 5, 1000 + 11999));
    assert_true(rl_ratelimit_allow(t, &a, 5, 1000 + 12000));
    assert_false(rl_ratelimit_allow(t, &a, 5, 1000 + 12000));
    /* Refused attempts cost nothing: 24 s after the last success, two. */
    assert_int_equal(burst(t, &a, 5, 1000 + 12000 + 24000), 2);
    /* A minute of quiet refills the whole bucket, never more. */
    assert_int_equal(burst(t, &a, 5, 1000 + 36000 + 600000), 5);
    rl_ratelimit_free(t);
}

static void
test_off_and_unknown(void **state)
{
    struct rl_ratelimit *t = rl_ratelimit_new(8, 1);
    struct rl_cidr_addr a = v4(0x0a000001), none;

    memset(&none, 0, sizeof(none));
    for (int i = 0; i < 1000; i++)
        assert_true(rl_ratelimit_allow(t, &a, 0, 0));
    for (int i = 0; i < 1000; i++)
        assert_true(rl_ratelimit_allow(t, &none, 1, 0));
    assert_int_equal(rl_ratelimit_used(t), 0);
    rl_ratelimit_free(t);
}

static void
test_rate_lowered(void **state)
{
    struct rl_ratelimit *t = rl_ratelimit_new(8, 1);
    struct rl_cidr_addr a = v4(0x0a000001);

    /* A reload that lowers the rate: the bucket is capped to the new rate. */
    assert_true(rl_ratelimit_allow(t, &a, 1000, 0));
    assert_int_equal(burst(t, &a, 3, 1), 3);
    rl_ratelimit_free(t);
}

static void
test_flood_stays_bounded(void **state)
{
    struct rl_ratelimit *t = rl_ratelimit_new(1000, 42);
    struct rl_cidr_addr hot = v4(0xcb007101);
    size_t slots = rl_ratelimit_slots(t);

    assert_int_equal(slots, 1024);
    assert_int_equal(burst(t, &hot, 3, 0), 3);
    /* 100000 distinct addresses, each allowed once: the table keeps its
     * size and every new address gets a bucket. */
    for (uint32_t i = 0; i < 100000; i++) {
        struct rl_cidr_addr a = v4(0x0a000000 + i);

        assert_true(rl_ratelimit_allow(t, &a, 3, 10));
    }
    assert_int_equal(rl_ratelimit_slots(t), slots);
    assert_true(rl_ratelimit_used(t) <= slots);
    assert_true(rl_ratelimit_used(t) > slots / 2);
    rl_ratelimit_free(t);
}

static void
test_eviction_order(void **state)
{
    /* One window: every address competes for the same eight slots. */
    struct rl_ratelimit *t = rl_ratelimit_new(8, 7);
    struct rl_cidr_addr a[9];

    assert_int_equal(rl_ratelimit_slots(t), 8);
    for (int i = 0; i < 9; i++)
        a[i] = v4(0xc6336400u + (uint32_t)i);
    /* Eight addresses, each at its limit of 1, touched at times 0..7. */
    for (int i = 0; i < 8; i++)
        assert_true(rl_ratelimit_allow(t, &a[i], 1, (uint64_t)i));
    assert_int_equal(rl_ratelimit_used(t), 8);
    /* a[0] is touched again (and refused), so a[1] is now the oldest. */
    assert_false(rl_ratelimit_allow(t, &a[0], 1, 100));
    assert_true(rl_ratelimit_allow(t, &a[8], 1, 200));
    assert_int_equal(rl_ratelimit_used(t), 8);
    /* a[0] is still limited, a[1] was forgotten and starts afresh. */
    assert_false(rl_ratelimit_allow(t, &a[0], 1, 300));
    assert_true(rl_ratelimit_allow(t, &a[1], 1, 300));
    rl_ratelimit_free(t);
}

static void
test_v6_and_v4_apart(void **state)
{
    struct rl_ratelimit *t = rl_ratelimit_new(64, 3);
    struct rl_cidr_addr a4 = v4(1), a6;

    /* The same bytes in another family are another address. */
    a6 = a4;
    a6.family = AF_INET6;
    assert_int_equal(burst(t, &a4, 2, 0), 2);
    assert_int_equal(burst(t, &a6, 2, 0), 2);
    rl_ratelimit_free(t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill), cmocka_unit_test(test_off_and_unknown),
        cmocka_unit_test(test_rate_lowered),      cmocka_unit_test(test_flood_stays_bounded),
        cmocka_unit_test(test_eviction_order),    cmocka_unit_test(test_v6_and_v4_apart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
