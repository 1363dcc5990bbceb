/*
 * test_buf.c - the capped, growable byte buffer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "relabel/buf.h"
#include "relabel/errors.h"

static void
test_append_consume(void **state)
{
    struct rl_buf b;

    rl_buf_init(&b, 16);
    assert_int_equal(rl_buf_append(&b, "hello", 5), 0);
    assert_int_equal(rl_buf_len(&b), 5);
    assert_memory_equal(rl_buf_data(&b), "hello", 5);
    rl_buf_consume(&b, 2);
    assert_memory_equal(rl_buf_data(&b), "llo", 3);
    assert_int_equal(rl_buf_append(&b, "0123456789abc", 13), 0);
    assert_int_equal(rl_buf_len(&b), 16);
    assert_memory_equal(rl_buf_data(&b), "llo0123456789abc", 16);
    assert_int_equal(rl_buf_append(&b, "x", 1), RL_E_FULL);
    rl_buf_free(&b);
}

static void
test_reserve_caps(void **state)
{
    struct rl_buf b;
    size_t avail;
    char *p;

    rl_buf_init(&b, 10000);
    p = rl_buf_reserve(&b, 100, &avail);
    assert_non_null(p);
    assert_true(avail >= 100);
    memset(p, 'a', 100);
    rl_buf_commit(&b, 100);
    p = rl_buf_reserve(&b, 20000, &avail);
    assert_non_null(p);
    assert_int_equal(avail, 10000 - 100);
    rl_buf_commit(&b, avail);
    assert_null(rl_buf_reserve(&b, 1, &avail));
    assert_int_equal(avail, 0);
    rl_buf_reset(&b, 0);
    assert_int_equal(rl_buf_len(&b), 0);
    assert_null(b.base);
    rl_buf_free(&b);
}

static void
test_swap_keeps_caps(void **state)
{
    struct rl_buf a, b;

    rl_buf_init(&a, 100);
    rl_buf_init(&b, 200);
    assert_int_equal(rl_buf_append(&a, "abc", 3), 0);
    rl_buf_swap(&a, &b);
    assert_int_equal(rl_buf_len(&a), 0);
    assert_int_equal(rl_buf_len(&b), 3);
    assert_int_equal(a.max, 100);
    assert_int_equal(b.max, 200);
    rl_buf_free(&a);
    rl_buf_free(&b);
}

/* An emptied buffer gives its storage back on trim, keeps it (and its
 * data) while anything is left, and works as new afterwards. */
static void
test_trim(void **state)
{
    struct rl_buf b;

    rl_buf_init(&b, 1 << 20);
    rl_buf_trim(&b); /* never allocated: nothing to do */
    assert_null(b.base);
    assert_int_equal(rl_buf_append(&b, "hello", 5), 0);
    rl_buf_consume(&b, 4);
    rl_buf_trim(&b);
    assert_non_null(b.base);
    assert_int_equal(rl_buf_len(&b), 1);
    assert_memory_equal(rl_buf_data(&b), "o", 1);
    rl_buf_consume(&b, 1);
    rl_buf_trim(&b);
    assert_null(b.base);
    assert_int_equal(b.size, 0);
    assert_int_equal(rl_buf_len(&b), 0);
    assert_int_equal(rl_buf_append(&b, "again", 5), 0);
    assert_memory_equal(rl_buf_data(&b), "again", 5);
    rl_buf_free(&b);
}

/* Growing an empty buffer allocates the size asked for at once (no copy of
 * stale bytes); growing a non-empty one keeps its data. */
static void
test_grow_from_empty(void **state)
{
    struct rl_buf b;
    size_t avail;
    char *p;

    rl_buf_init(&b, 1 << 20);
    assert_int_equal(rl_buf_append(&b, "abc", 3), 0);
    rl_buf_consume(&b, 3);
    assert_int_equal(b.size, 4096);
    p = rl_buf_reserve(&b, 40000, &avail);
    assert_non_null(p);
    assert_int_equal(b.size, 65536);
    assert_int_equal(avail, 65536);
    memset(p, 'x', 40000);
    rl_buf_commit(&b, 40000);
    p = rl_buf_reserve(&b, 40000, &avail);
    assert_non_null(p);
    assert_int_equal(b.size, 131072);
    assert_int_equal(rl_buf_len(&b), 40000);
    assert_int_equal(rl_buf_data(&b)[0], 'x');
    assert_int_equal(rl_buf_data(&b)[39999], 'x');
    rl_buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_consume),  cmocka_unit_test(test_reserve_caps),
        cmocka_unit_test(test_swap_keeps_caps), cmocka_unit_test(test_trim),
        cmocka_unit_test(test_grow_from_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
