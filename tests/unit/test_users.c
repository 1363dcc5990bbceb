/*
 * test_users.c - a brand's users file: lines, comments, sender domains,
 * the hash methods accepted and refused with their FILE:LINE, duplicates,
 * lookup by exact name, sender domains, and crypt verification of a hash
 * made by rl_users_hash().
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <crypt.h>

#include "relabel/users.h"

static char yes_hash[256]; /* yescrypt of "s3cret", made once */
static char bcrypt_hash[256];
static char sha512_hash[256];

static void
make_hash(const char *prefix, unsigned long cost, const char *pw, char *out, size_t cap)
{
    char *salt = crypt_gensalt_ra(prefix, cost, NULL, 0);
    void *data = NULL;
    int size = 0;
    const char *h;

    assert_non_null(salt);
    h = crypt_ra(pw, salt, &data, &size);
    assert_non_null(h);
    assert_true(strlen(h) < cap);
    strcpy(out, h);
    free(data);
    free(salt);
}

static int
setup(void **state)
{
    (void)state;
    assert_int_equal(rl_users_hash("s3cret", yes_hash, sizeof(yes_hash)), 0);
    make_hash("$2b$", 4, "s3cret", bcrypt_hash, sizeof(bcrypt_hash));
    make_hash("$6$", 1000, "s3cret", sha512_hash, sizeof(sha512_hash));
    return 0;
}

/* Parses text; returns the number of problems and what was printed. */
static int
parse(const char *text, char **printed, struct rl_users **out)
{
    size_t len = 0;
    FILE *err = open_memstream(printed, &len);
    int rc;

    assert_non_null(err);
    rc = rl_users_parse("users.txt", text, strlen(text), err, out);
    fclose(err);
    return rc;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

static char *
fmt(const char *f, ...)
{
    static char buf[4096];
    va_list ap;

    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return buf;
}

static void
test_good_file(void **state)
{
    struct rl_users *u = NULL;
    char *printed = NULL;
    const struct rl_user *a;
    char text[2048];

    (void)state;
    snprintf(text, sizeof(text),
             "# customers of brand a\n"
             "\n"
             "zoe:%s\n"
             "  alice:%s:example.com, example.org\r\n"
             "bob@example.net:%s:\n"
             "carol:%s",
             yes_hash, bcrypt_hash, sha512_hash, yes_hash);
    assert_int_equal(parse(text, &printed, &u), 0);
    assert_string_equal(printed, "");
    assert_non_null(u);
    assert_int_equal(u->n, 4);
    /* Sorted, found by exact name only. */
    assert_string_equal(u->items[0].name, "alice");
    a = rl_users_find(u, "alice", 5);
    assert_non_null(a);
    assert_int_equal(a->line, 4);
    assert_int_equal(a->ndomains, 2);
    assert_string_equal(a->domains[0], "example.com");
    assert_string_equal(a->domains[1], "example.org");
    assert_string_equal(a->hash, bcrypt_hash);
    assert_null(rl_users_find(u, "Alice", 5));
    assert_null(rl_users_find(u, "alic", 4));
    assert_null(rl_users_find(u, "alicex", 6));
    assert_null(rl_users_find(u, "", 0));
    assert_non_null(rl_users_find(u, "bob@example.net", 15));
    assert_int_equal(rl_users_find(u, "bob@example.net", 15)->ndomains, 0);
    assert_non_null(rl_users_find(u, "carol", 5));
    assert_non_null(rl_users_find(u, "zoe", 3));
    rl_users_free(u);
    free(printed);
}

static void
test_weak_hashes_refused(void **state)
{
    static const char *const weak[] = {
        "abJnggxhB/yWI",                                              /* DES */
        "$1$abcdefgh$abcdefghijklmnopqrstuv",                         /* MD5 */
        "$5$abcdefgh$abcdefghijklmnopqrstuvwxyz",                     /* sha256crypt */
        "$2a$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz012", /* old bcrypt */
        "",
        "plaintext-password",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(weak) / sizeof(weak[0]); i++) {
        struct rl_users *u = (struct rl_users *)1;
        char *printed = NULL;

        assert_int_equal(parse(fmt("ok:%s\nweak:%s\n", yes_hash, weak[i]), &printed, &u), 1);
        assert_null(u);
        assert_non_null(strstr(printed, "users.txt:2: user \"weak\": hash method not accepted"));
        /* The hash itself is never printed. */
        if (weak[i][0] != '\0')
            assert_null(strstr(printed, weak[i]));
        free(printed);
    }
}

static void
test_malformed_hash(void **state)
{
    struct rl_users *u = NULL;
    char *printed = NULL;

    static const char *const bad[] = {"$y$",      "$y$j9T$",      "$y$j9T$abc$",
                                      "$6$salt$", "$2b$04$short", "$6$salt$has space"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse(fmt("x:%s\n", bad[i]), &printed, &u), 1);
        assert_non_null(strstr(printed, "users.txt:1: user \"x\": malformed hash"));
        free(printed);
        printed = NULL;
    }
    (void)state;
}

static void
test_syntax_errors(void **state)
{
    struct rl_users *u = NULL;
    char *printed = NULL;

    (void)state;
    assert_int_equal(parse(fmt("justaname\n"
                               "bad name:%s\n"
                               ":%s\n"
                               "d:%s:exa_mple.com\n"
                               "e:%s:.example.com\n"
                               "ok:%s\n",
                               yes_hash, yes_hash, yes_hash, yes_hash, yes_hash),
                           &printed, &u),
                     5);
    assert_null(u);
    assert_non_null(strstr(printed, "users.txt:1: expected \"user:hash\""));
    assert_non_null(strstr(printed, "users.txt:2: invalid user name"));
    assert_non_null(strstr(printed, "users.txt:3: invalid user name"));
    assert_non_null(strstr(printed, "users.txt:4: invalid sender domain \"exa_mple.com\""));
    assert_non_null(strstr(printed, "users.txt:5: invalid sender domain \".example.com\""));
    assert_null(strstr(printed, "users.txt:6"));
    free(printed);
}

static void
test_duplicate(void **state)
{
    struct rl_users *u = NULL;
    char *printed = NULL;

    (void)state;
    assert_int_equal(
        parse(fmt("a:%s\nb:%s\n\na:%s\n", yes_hash, yes_hash, bcrypt_hash), &printed, &u), 1);
    assert_null(u);
    assert_non_null(strstr(printed, "users.txt:4: user \"a\" already defined on line 1"));
    free(printed);
}

static void
test_empty_file(void **state)
{
    struct rl_users *u = NULL;
    char *printed = NULL;

    (void)state;
    assert_int_equal(parse("# nobody yet\n", &printed, &u), 0);
    assert_non_null(u);
    assert_int_equal(u->n, 0);
    assert_null(rl_users_find(u, "a", 1));
    rl_users_free(u);
    free(printed);
}

static void
test_load_missing(void **state)
{
    struct rl_users *u = (struct rl_users *)1;
    char *printed = NULL;
    size_t len = 0;
    FILE *err = open_memstream(&printed, &len);

    (void)state;
    assert_int_equal(rl_users_load("/nonexistent/users", err, &u), 1);
    fclose(err);
    assert_null(u);
    assert_non_null(strstr(printed, "/nonexistent/users: cannot read:"));
    free(printed);
}

static void
test_sender_domains(void **state)
{
    static char d1[] = "example.com", d2[] = "example.org";
    static char *doms[] = {d1, d2};
    struct rl_user any = {0}, some = {.domains = doms, .ndomains = 2};

    (void)state;
    assert_true(rl_user_sender_ok(&any, "", 0));
    assert_true(rl_user_sender_ok(&any, "x@y.z", 5));
    assert_true(rl_user_sender_ok(&some, "a@example.com", 13));
    assert_true(rl_user_sender_ok(&some, "a@EXAMPLE.org", 13));
    assert_true(rl_user_sender_ok(&some, "\"a@b\"@example.com", 17));
    assert_false(rl_user_sender_ok(&some, "a@example.net", 13));
    assert_false(rl_user_sender_ok(&some, "a@sub.example.com", 17));
    assert_false(rl_user_sender_ok(&some, "a@example.com.evil", 18));
    assert_false(rl_user_sender_ok(&some, "", 0)); /* the null sender */
    assert_false(rl_user_sender_ok(&some, "example.com", 11));
}

static void
test_verify(void **state)
{
    (void)state;
    assert_true(rl_users_verify(yes_hash, "s3cret", 6));
    assert_false(rl_users_verify(yes_hash, "s3cre", 5));
    assert_false(rl_users_verify(yes_hash, "s3cret!", 7));
    assert_false(rl_users_verify(yes_hash, "s3cret\0x", 8));
    assert_true(rl_users_verify(bcrypt_hash, "s3cret", 6));
    assert_true(rl_users_verify(sha512_hash, "s3cret", 6));
    assert_false(rl_users_verify(sha512_hash, "", 0));
    /* An unknown user never matches, whatever the password. */
    assert_false(rl_users_verify(NULL, "s3cret", 6));
    assert_false(rl_users_verify(NULL, "", 0));
    /* Each hash has its own salt. */
    {
        char again[256];

        assert_int_equal(rl_users_hash("s3cret", again, sizeof(again)), 0);
        assert_string_not_equal(again, yes_hash);
        assert_memory_equal(again, "$y$", 3);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),      cmocka_unit_test(test_weak_hashes_refused),
        cmocka_unit_test(test_malformed_hash), cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_duplicate),      cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_load_missing),   cmocka_unit_test(test_sender_domains),
        cmocka_unit_test(test_verify),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
