/*
 * test_sni.c - host names to brands: normalising what a client sent, exact
 * names before wildcards, a wildcard standing for exactly one label, case
 * and a trailing dot ignored, junk never matching, and which certificate
 * names cover which configured names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "relabel/sni.h"

/* A map in the order a config file might list the names: unsorted. */
static char n_a[] = "smtp.brand-a.com", n_a2[] = "mail.brand-a.com", n_bw[] = "*.brand-b.net",
            n_b[] = "mail.brand-b.net", n_cw[] = "*.c.brand-b.net", n_d[] = "x.y";
static struct rl_sni_name names[] = {
    {n_bw, 1, 10}, {n_a, 0, 2}, {n_cw, 2, 20}, {n_b, 3, 30}, {n_a2, 0, 3}, {n_d, 4, 40},
};
static struct rl_sni_map map = {names, sizeof(names) / sizeof(names[0])};

/* The brand a client asking for `name` gets, -1 for none.  The name is
 * copied into an exactly sized buffer without a NUL, so that a read past
 * len shows up under ASan. */
static long
brand_of(const char *name)
{
    size_t len = strlen(name);
    char *copy = malloc(len ? len : 1);
    const struct rl_sni_name *hit;

    memcpy(copy, name, len);
    hit = rl_sni_lookup(&map, copy, len);
    free(copy);
    return hit != NULL ? (long)hit->brand : -1;
}

static int
setup(void **state)
{
    (void)state;
    rl_sni_sort(&map);
    return 0;
}

static void
test_sorted(void **state)
{
    (void)state;
    for (size_t i = 1; i < map.n; i++)
        assert_true(strcmp(map.items[i - 1].name, map.items[i].name) < 0);
}

static void
test_exact_and_case(void **state)
{
    (void)state;
    assert_int_equal(brand_of("smtp.brand-a.com"), 0);
    assert_int_equal(brand_of("mail.brand-a.com"), 0);
    assert_int_equal(brand_of("SMTP.Brand-A.COM"), 0);
    assert_int_equal(brand_of("smtp.brand-a.com."), 0); /* one trailing dot */
    assert_int_equal(brand_of("smtp.brand-a.com.."), -1);
    assert_int_equal(brand_of("x.y"), 4);
    assert_int_equal(brand_of("brand-a.com"), -1);
    assert_int_equal(brand_of("xsmtp.brand-a.com"), -1);
    assert_int_equal(brand_of("smtp.brand-a.co"), -1);
}

static void
test_exact_before_wildcard(void **state)
{
    (void)state;
    /* mail.brand-b.net is a brand of its own; its siblings fall to the
     * wildcard, whichever order the config listed them in. */
    assert_int_equal(brand_of("mail.brand-b.net"), 3);
    assert_int_equal(brand_of("smtp.brand-b.net"), 1);
    assert_int_equal(brand_of("Other.Brand-B.Net"), 1);
    /* The more specific wildcard for its own subtree. */
    assert_int_equal(brand_of("x.c.brand-b.net"), 2);
    assert_int_equal(brand_of("c.brand-b.net"), 1);
}

static void
test_wildcard_one_label(void **state)
{
    (void)state;
    assert_int_equal(brand_of("brand-b.net"), -1);       /* no label for the "*" */
    assert_int_equal(brand_of("a.b.brand-b.net"), -1);   /* two labels */
    assert_int_equal(brand_of(".brand-b.net"), -1);      /* an empty label */
    assert_int_equal(brand_of("*.brand-b.net"), -1);     /* a client's "*" is not a wildcard */
    assert_int_equal(brand_of("x.y.c.brand-b.net"), -1); /* two under *.c */
}

static void
test_junk(void **state)
{
    char longname[400];

    (void)state;
    assert_int_equal(brand_of(""), -1);
    assert_int_equal(brand_of("."), -1);
    assert_null(rl_sni_lookup(&map, "smtp.brand-a.com\0x", 18));
    assert_int_equal(brand_of("smtp.brand-a.com "), -1);
    assert_int_equal(brand_of("smtp.br\xc3\xa4nd-a.com"), -1);
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(brand_of(longname), -1);
    assert_null(rl_sni_lookup(NULL, "x.y", 3));
}

static void
test_normalize(void **state)
{
    char out[RL_SNI_NAME_MAX + 1], small[5];

    (void)state;
    assert_int_equal(rl_sni_normalize("Mail.Example.NET.", 17, out, sizeof(out)), 16);
    assert_string_equal(out, "mail.example.net");
    assert_int_equal(rl_sni_normalize("abcd", 4, small, sizeof(small)), 4);
    assert_int_equal(rl_sni_normalize("abcde", 5, small, sizeof(small)), 0);
    assert_int_equal(rl_sni_normalize("a\tb", 3, out, sizeof(out)), 0);
    assert_int_equal(rl_sni_normalize("", 0, out, sizeof(out)), 0);
}

static void
test_is_wildcard(void **state)
{
    (void)state;
    assert_true(rl_sni_is_wildcard("*.brand-b.net"));
    assert_true(rl_sni_is_wildcard("*.a.brand-b.net"));
    assert_false(rl_sni_is_wildcard("*.net"));
    assert_false(rl_sni_is_wildcard("*"));
    assert_false(rl_sni_is_wildcard("*."));
    assert_false(rl_sni_is_wildcard("a.*.net"));
    assert_false(rl_sni_is_wildcard("*mail.brand-b.net"));
    assert_false(rl_sni_is_wildcard("*.*.brand-b.net"));
    assert_false(rl_sni_is_wildcard("mail.brand-b.net"));
}

static void
test_covers(void **state)
{
    (void)state;
    assert_true(rl_sni_covers("mail.example.net", 16, "mail.example.net"));
    assert_true(rl_sni_covers("MAIL.example.net", 16, "mail.Example.net"));
    assert_true(rl_sni_covers("mail.example.net.", 17, "mail.example.net"));
    assert_true(rl_sni_covers("*.example.net", 13, "mail.example.net"));
    assert_true(rl_sni_covers("*.example.net", 13, "*.example.net"));
    assert_false(rl_sni_covers("*.example.net", 13, "example.net"));
    assert_false(rl_sni_covers("*.example.net", 13, "a.b.example.net"));
    assert_false(rl_sni_covers("mail.example.net", 16, "*.example.net"));
    assert_false(rl_sni_covers("*.example.net", 13, "*.a.example.net"));
    assert_false(rl_sni_covers("m*.example.net", 14, "mail.example.net"));
    assert_false(rl_sni_covers("", 0, "mail.example.net"));
    assert_false(rl_sni_covers("*.", 2, "a."));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sorted),
        cmocka_unit_test(test_exact_and_case),
        cmocka_unit_test(test_exact_before_wildcard),
        cmocka_unit_test(test_wildcard_one_label),
        cmocka_unit_test(test_junk),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_is_wildcard),
        cmocka_unit_test(test_covers),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
