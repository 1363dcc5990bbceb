/*
 * test_proxy.c - PROXY protocol v1/v2 header parser: valid headers of both
 * versions, every prefix of them (must ask for more, never fail or read
 * past the end), and the malformed forms that must be refused at once.
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

#include "relabel/errors.h"
#include "relabel/proxy.h"

#define BOTH (RL_PROXY_V1 | RL_PROXY_V2)

/* Parses a copy placed in an exactly sized heap block, so ASan sees any
 * read past the end. */
static int
parse(const void *p, size_t len, unsigned versions, struct rl_proxy_hdr *h)
{
    char *copy = malloc(len ? len : 1);
    int rc;

    memcpy(copy, p, len);
    rc = rl_proxy_parse(copy, len, versions, h);
    free(copy);
    return rc;
}

/* Every strict prefix of a valid header asks for more. */
static void
assert_prefixes_want_more(const void *p, size_t len, unsigned versions)
{
    struct rl_proxy_hdr h;

    for (size_t i = 0; i < len; i++)
        assert_int_equal(parse(p, i, versions, &h), 1);
}

static void
assert_ipv4(const struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    char text[INET_ADDRSTRLEN];

    assert_int_equal(s4->sin_family, AF_INET);
    assert_non_null(inet_ntop(AF_INET, &s4->sin_addr, text, sizeof(text)));
    assert_string_equal(text, ip);
    assert_int_equal(ntohs(s4->sin_port), port);
}

static void
test_v1_tcp4(void **state)
{
    const char hdr[] = "PROXY TCP4 203.0.113.7 192.0.2.1 50122 465\r\nEHLO x\r\n";
    size_t hlen = strlen("PROXY TCP4 203.0.113.7 192.0.2.1 50122 465\r\n");
    struct rl_proxy_hdr h;

    assert_int_equal(parse(hdr, sizeof(hdr) - 1, BOTH, &h), 0);
    assert_int_equal(h.version, RL_PROXY_V1);
    assert_false(h.local);
    assert_int_equal(h.used, hlen);
    assert_ipv4(&h.src, "203.0.113.7", 50122);
    assert_ipv4(&h.dst, "192.0.2.1", 465);
    assert_prefixes_want_more(hdr, hlen, BOTH);
}

static void
test_v1_tcp6_and_unknown(void **state)
{
    const char v6[] = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    const char unk[] = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    struct rl_proxy_hdr h;
    char text[INET6_ADDRSTRLEN];

    assert_int_equal(parse(v6, sizeof(v6) - 1, RL_PROXY_V1, &h), 0);
    assert_int_equal(h.src.ss_family, AF_INET6);
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&h.src)->sin6_addr, text, sizeof(text));
    assert_string_equal(text, "2001:db8::1");
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&h.dst)->sin6_port), 65535);

    assert_int_equal(parse(unk, sizeof(unk) - 1, RL_PROXY_V1, &h), 0);
    assert_true(h.local);
    assert_int_equal(h.used, sizeof(unk) - 1);
    assert_int_equal(parse("PROXY UNKNOWN\r\n", 15, RL_PROXY_V1, &h), 0);
    assert_true(h.local);
}

static void
test_v1_malformed(void **state)
{
    static const char *const bad[] = {
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       /* bare LF */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       /* a field missing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",   /* one too many */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",    /* trailing space */
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",    /* double space */
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",   /* bad address */
        "PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", /* family mismatch */
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",     /* family mismatch */
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", /* port range */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",    /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",    /* sign */
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* protocol */
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* case */
        "EHLO example.com\r\n",                   /* no header at all */
        "\r\nX",                                  /* not the v2 signature */
    };
    struct rl_proxy_hdr h;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(parse(bad[i], strlen(bad[i]), BOTH, &h), RL_E_PROTO);
}

static void
test_v1_too_long(void **state)
{
    char line[200];
    struct rl_proxy_hdr h;

    memset(line, 'x', sizeof(line));
    memcpy(line, "PROXY TCP4 ", 11);
    assert_int_equal(parse(line, RL_PROXY_V1_MAX - 1, RL_PROXY_V1, &h), 1);
    assert_int_equal(parse(line, RL_PROXY_V1_MAX, RL_PROXY_V1, &h), RL_E_PROTO);
    assert_int_equal(parse(line, sizeof(line), RL_PROXY_V1, &h), RL_E_PROTO);
}

/* Builds a v2 header into out; returns its length. */
static size_t
v2_build(unsigned char *out, unsigned cmd, unsigned fam, const unsigned char *body, size_t blen)
{
    static const unsigned char sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                          0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

    memcpy(out, sig, 12);
    out[12] = (unsigned char)(0x20 | cmd);
    out[13] = (unsigned char)fam;
    out[14] = (unsigned char)(blen >> 8);
    out[15] = (unsigned char)blen;
    if (blen > 0)
        memcpy(out + 16, body, blen);
    return 16 + blen;
}

static void
test_v2_tcp4_with_authority(void **state)
{
    unsigned char body[64], hdr[128];
    struct rl_proxy_hdr h;
    size_t n, blen = 0;

    memcpy(body, (unsigned char[]){203, 0, 113, 7, 192, 0, 2, 1, 0xc3, 0xca, 0x01, 0xd1}, 12);
    blen = 12;
    body[blen++] = 0x02; /* AUTHORITY */
    body[blen++] = 0;
    body[blen++] = 16;
    memcpy(body + blen, "smtp.example.com", 16);
    blen += 16;
    body[blen++] = 0x04; /* NOOP TLV, ignored */
    body[blen++] = 0;
    body[blen++] = 2;
    body[blen++] = 0;
    body[blen++] = 0;
    n = v2_build(hdr, 1, 0x11, body, blen);

    assert_int_equal(parse(hdr, n, BOTH, &h), 0);
    assert_int_equal(h.version, RL_PROXY_V2);
    assert_int_equal(h.used, n);
    assert_ipv4(&h.src, "203.0.113.7", 50122);
    assert_ipv4(&h.dst, "192.0.2.1", 465);
    assert_string_equal(h.authority, "smtp.example.com");
    assert_prefixes_want_more(hdr, n, BOTH);
}

static void
test_v2_tcp6_local_unspec(void **state)
{
    unsigned char body[36] = {0}, hdr[64];
    struct rl_proxy_hdr h;
    size_t n;

    body[15] = 1;  /* ::1 */
    body[31] = 2;  /* ::2 */
    body[33] = 25; /* port 25 */
    body[35] = 26;
    n = v2_build(hdr, 1, 0x21, body, sizeof(body));
    assert_int_equal(parse(hdr, n, RL_PROXY_V2, &h), 0);
    assert_int_equal(h.src.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&h.src)->sin6_port), 25);

    n = v2_build(hdr, 0, 0x00, NULL, 0); /* LOCAL */
    assert_int_equal(parse(hdr, n, RL_PROXY_V2, &h), 0);
    assert_true(h.local);
    n = v2_build(hdr, 1, 0x00, NULL, 0); /* PROXY, UNSPEC */
    assert_int_equal(parse(hdr, n, RL_PROXY_V2, &h), 0);
    assert_true(h.local);
}

static void
test_v2_malformed(void **state)
{
    unsigned char body[64] = {0}, hdr[2048];
    struct rl_proxy_hdr h;
    size_t n;

    n = v2_build(hdr, 1, 0x11, body, 11); /* short IPv4 block */
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);
    n = v2_build(hdr, 1, 0x21, body, 35); /* short IPv6 block */
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);
    n = v2_build(hdr, 2, 0x11, body, 12); /* command 2 */
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);
    n = v2_build(hdr, 1, 0x12, body, 12); /* UDP over IPv4 */
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);
    body[12] = 0x02; /* TLV longer than what is left */
    body[13] = 0;
    body[14] = 40;
    n = v2_build(hdr, 1, 0x11, body, 20);
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);
    body[14] = 1; /* TLV header cut short */
    n = v2_build(hdr, 1, 0x11, body, 14);
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);

    n = v2_build(hdr, 1, 0x11, body, 12);
    hdr[12] = 0x11; /* version 1 in the binary form */
    assert_int_equal(parse(hdr, n, BOTH, &h), RL_E_PROTO);

    memset(body, 0, sizeof(body));
    n = v2_build(hdr, 1, 0x11, body, 12);
    assert_int_equal(parse(hdr, n, RL_PROXY_V1, &h), RL_E_PROTO); /* v2 not accepted */
    assert_int_equal(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 32, RL_PROXY_V2, &h), RL_E_PROTO);

    hdr[14] = 0x04; /* declared length over the cap */
    hdr[15] = 0x00;
    assert_int_equal(parse(hdr, 16, BOTH, &h), RL_E_PROTO);
    hdr[4] = 'x'; /* broken signature */
    assert_int_equal(parse(hdr, 5, BOTH, &h), RL_E_PROTO);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4),
        cmocka_unit_test(test_v1_tcp6_and_unknown),
        cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_v1_too_long),
        cmocka_unit_test(test_v2_tcp4_with_authority),
        cmocka_unit_test(test_v2_tcp6_local_unspec),
        cmocka_unit_test(test_v2_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
