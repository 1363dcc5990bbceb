/*
 * test_cidr.c - CIDR rules: parsing (IPv4, IPv6, mapped, host rules, the
 * malformed forms with their reasons), matching at prefix boundaries,
 * IPv4-mapped clients against IPv4 rules, lists with commas and spaces,
 * and the address texts used in log lines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>

#include "relabel/cidr.h"
#include "relabel/errors.h"

static struct rl_cidr
rule(const char *text)
{
    struct rl_cidr c;
    const char *why = NULL;
    /* An exactly sized copy without a NUL, so ASan sees a read past len. */
    size_t len = strlen(text);
    char *copy = malloc(len ? len : 1);

    memcpy(copy, text, len);
    assert_int_equal(rl_cidr_parse(copy, len, &c, &why), 0);
    free(copy);
    return c;
}

static const char *
bad(const char *text)
{
    struct rl_cidr c;
    const char *why = NULL;

    assert_int_equal(rl_cidr_parse(text, strlen(text), &c, &why), RL_E_PROTO);
    assert_non_null(why);
    return why;
}

static struct rl_cidr_addr
addr(const char *ip)
{
    struct sockaddr_storage ss;
    struct rl_cidr_addr a;

    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
        ss.ss_family = AF_INET6;
    }
    rl_cidr_addr_set(&a, (struct sockaddr *)&ss);
    return a;
}

static bool
matches(const char *r, const char *ip)
{
    struct rl_cidr c = rule(r);
    struct rl_cidr_addr a = addr(ip);

    return rl_cidr_match(&c, &a);
}

static void
test_parse_text(void **state)
{
    char out[RL_CIDR_TEXT_MAX];
    struct rl_cidr c;

    c = rule("10.0.0.0/8");
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "10.0.0.0/8");
    c = rule("127.0.0.2");
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "127.0.0.2/32");
    c = rule("::1");
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "::1/128");
    c = rule("2001:db8::/32");
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "2001:db8::/32");
    c = rule("0.0.0.0/0");
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "0.0.0.0/0");
    /* An IPv4-mapped network is the IPv4 network. */
    c = rule("::ffff:10.0.0.0/104");
    assert_int_equal(c.net.family, AF_INET);
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "10.0.0.0/8");
    c = rule("::ffff:192.0.2.7");
    assert_string_equal(rl_cidr_text(&c, out, sizeof(out)), "192.0.2.7/32");
}

static void
test_parse_bad(void **state)
{
    assert_non_null(strstr(bad("10.0.0.1/8"), "after the prefix"));
    assert_non_null(strstr(bad("2001:db8::1/32"), "after the prefix"));
    assert_non_null(strstr(bad("10.0.0.0/33"), "0 to 32"));
    assert_non_null(strstr(bad("::/129"), "0 to 128"));
    assert_non_null(strstr(bad("10.0.0.0/"), "prefix"));
    assert_non_null(strstr(bad("10.0.0.0/-1"), "prefix"));
    assert_non_null(strstr(bad("10.0.0.0/8x"), "prefix"));
    assert_non_null(strstr(bad("10.0.0.0/0008"), "prefix"));
    assert_non_null(strstr(bad("10.0.0/8"), "not an IP"));
    assert_non_null(strstr(bad("example.com"), "not an IP"));
    assert_non_null(strstr(bad("/8"), "not an IP"));
    assert_non_null(strstr(bad(""), "not an IP"));
    assert_non_null(strstr(bad("fe80::1%eth0"), "not an IP"));
    assert_non_null(
        strstr(bad("01234567890123456789012345678901234567890123456789/8"), "not an IP"));
}

static void
test_match_boundaries(void **state)
{
    assert_true(matches("10.0.0.0/8", "10.255.255.255"));
    assert_false(matches("10.0.0.0/8", "11.0.0.0"));
    assert_true(matches("192.168.4.0/22", "192.168.7.1"));
    assert_false(matches("192.168.4.0/22", "192.168.8.1"));
    assert_false(matches("192.168.4.0/22", "192.168.3.255"));
    assert_true(matches("127.0.0.2/32", "127.0.0.2"));
    assert_false(matches("127.0.0.2/32", "127.0.0.3"));
    assert_true(matches("0.0.0.0/0", "203.0.113.9"));
    assert_true(matches("2001:db8::/33", "2001:db8:7fff::1"));
    assert_false(matches("2001:db8::/33", "2001:db8:8000::1"));
    assert_true(matches("::1/128", "::1"));
    assert_false(matches("::1/128", "::2"));
    /* Families never mix: ::/0 is every IPv6 client, no IPv4 one. */
    assert_false(matches("::/0", "10.0.0.1"));
    assert_false(matches("0.0.0.0/0", "::1"));
}

static void
test_v4mapped_client(void **state)
{
    struct rl_cidr_addr a = addr("::ffff:10.1.2.3"), b = addr("10.1.2.3");

    assert_int_equal(a.family, AF_INET);
    assert_true(rl_cidr_addr_equal(&a, &b));
    assert_true(matches("10.0.0.0/8", "::ffff:10.1.2.3"));
    assert_true(matches("::ffff:10.0.0.0/104", "10.1.2.3"));
    assert_false(matches("::/0", "::ffff:10.1.2.3"));
}

static void
test_addr_equal(void **state)
{
    struct rl_cidr_addr a = addr("192.0.2.1"), b = addr("192.0.2.2"), u;
    struct sockaddr_storage ss;

    assert_true(rl_cidr_addr_equal(&a, &a));
    assert_false(rl_cidr_addr_equal(&a, &b));
    memset(&ss, 0, sizeof(ss));
    rl_cidr_addr_set(&u, (struct sockaddr *)&ss);
    assert_int_equal(u.family, AF_UNSPEC);
    assert_false(rl_cidr_addr_equal(&u, &u));
}

static void
test_list(void **state)
{
    struct rl_cidr_list l = {0};
    struct rl_cidr_addr a;
    char err[200], out[RL_CIDR_TEXT_MAX];

    assert_int_equal(
        rl_cidr_list_parse("10.0.0.0/8, 127.0.0.2/32  ::1/128,192.0.2.0/24", &l, err, sizeof(err)),
        0);
    assert_int_equal(l.n, 4);
    a = addr("127.0.0.2");
    assert_string_equal(rl_cidr_text(rl_cidr_list_match(&l, &a), out, sizeof(out)), "127.0.0.2/32");
    a = addr("::1");
    assert_non_null(rl_cidr_list_match(&l, &a));
    a = addr("198.51.100.1");
    assert_null(rl_cidr_list_match(&l, &a));
    /* A second line appends. */
    assert_int_equal(rl_cidr_list_parse("198.51.100.0/24", &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 5);
    assert_non_null(rl_cidr_list_match(&l, &a));
    /* A failure leaves the list as it was and names the item. */
    assert_int_equal(rl_cidr_list_parse("10.0.0.0/8, 300.0.0.0/8", &l, err, sizeof(err)),
                     RL_E_PROTO);
    assert_non_null(strstr(err, "\"300.0.0.0/8\""));
    assert_int_equal(l.n, 5);
    assert_int_equal(rl_cidr_list_parse("10.0.0.0/8,,::1", &l, err, sizeof(err)), RL_E_PROTO);
    assert_non_null(strstr(err, "empty item"));
    assert_int_equal(rl_cidr_list_parse("10.0.0.0/8,", &l, err, sizeof(err)), RL_E_PROTO);
    assert_non_null(strstr(err, "empty item"));
    assert_int_equal(rl_cidr_list_parse("  ", &l, err, sizeof(err)), RL_E_PROTO);
    assert_non_null(strstr(err, "empty list"));
    assert_int_equal(l.n, 5);
    rl_cidr_list_free(&l);
    assert_int_equal(l.n, 0);
}

static void
test_peer_text_and_unmap(void **state)
{
    struct sockaddr_storage ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    char out[RL_CIDR_PEER_MAX];

    memset(&ss, 0, sizeof(ss));
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(2525);
    inet_pton(AF_INET6, "2001:db8::7", &s6->sin6_addr);
    assert_string_equal(rl_cidr_peer_text((struct sockaddr *)&ss, out, sizeof(out)),
                        "[2001:db8::7]:2525");
    rl_cidr_sockaddr_unmap(&ss);
    assert_int_equal(ss.ss_family, AF_INET6);
    inet_pton(AF_INET6, "::ffff:203.0.113.5", &s6->sin6_addr);
    rl_cidr_sockaddr_unmap(&ss);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_string_equal(rl_cidr_peer_text((struct sockaddr *)&ss, out, sizeof(out)),
                        "203.0.113.5:2525");
    ss.ss_family = AF_UNSPEC;
    assert_string_equal(rl_cidr_peer_text((struct sockaddr *)&ss, out, sizeof(out)), "-");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_text),          cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_match_boundaries),    cmocka_unit_test(test_v4mapped_client),
        cmocka_unit_test(test_addr_equal),          cmocka_unit_test(test_list),
        cmocka_unit_test(test_peer_text_and_unmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
