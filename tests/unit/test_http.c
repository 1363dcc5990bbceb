/*
 * test_http.c - the metrics endpoint's request head parser: valid heads
 * (CRLF and LF line ends, HTTP/1.0 without Host, a query, bytes after the
 * head), every strict prefix of them (must ask for more, never fail or
 * read past the end), the malformed forms refused with their status, and
 * the size cap.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "relabel/http.h"

#define MAX 4096

/* Parses a copy placed in an exactly sized heap block, so ASan sees any
 * read past the end. */
static int
parse_max(const char *p, size_t len, size_t max, struct rl_http_req *req)
{
    char *copy = malloc(len ? len : 1);
    struct rl_http_req r;
    int rc;

    memcpy(copy, p, len);
    rc = rl_http_parse_request(copy, len, max, &r);
    if (rc == 0) {
        /* Pointers into the copy become offsets into p. */
        r.method = p + (r.method - copy);
        r.path = p + (r.path - copy);
        if (req != NULL)
            *req = r;
    }
    free(copy);
    return rc;
}

static int
parse(const char *s, struct rl_http_req *req)
{
    return parse_max(s, strlen(s), MAX, req);
}

/* Every strict prefix of a complete head asks for more. */
static void
assert_prefixes_want_more(const char *s, size_t head_len)
{
    for (size_t i = 0; i < head_len; i++)
        assert_int_equal(parse_max(s, i, MAX, NULL), RL_HTTP_MORE);
}

static void
assert_request(const char *s, const char *method, const char *path, int minor)
{
    struct rl_http_req req;

    assert_int_equal(parse(s, &req), 0);
    assert_int_equal(req.method_len, strlen(method));
    assert_memory_equal(req.method, method, req.method_len);
    assert_int_equal(req.path_len, strlen(path));
    assert_memory_equal(req.path, path, req.path_len);
    assert_int_equal(req.minor, minor);
    assert_int_equal(req.used, strlen(s));
    assert_prefixes_want_more(s, req.used);
}

static void
test_valid(void **state)
{
    (void)state;
    assert_request("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9465\r\n"
                   "User-Agent: Prometheus/2.42.0\r\nAccept: text/plain;version=0.0.4;q=1\r\n"
                   "Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
                   "GET", "/metrics", 1);
    assert_request("GET /healthz HTTP/1.0\r\n\r\n", "GET", "/healthz", 0);
    assert_request("GET /readyz HTTP/1.1\nHost: x\n\n", "GET", "/readyz", 1);
    assert_request("GET /readyz?verbose=1 HTTP/1.1\r\nhOsT:x\r\n\r\n", "GET", "/readyz", 1);
    assert_request("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "POST",
                   "/metrics", 1);
    assert_request("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\nX-Empty:\r\n"
                   "X-Tab:\tvalue\t\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
                   "GET", "/", 1);
    assert_request("M-SEARCH~ /x HTTP/1.0\r\n\r\n", "M-SEARCH~", "/x", 0);
}

static void
test_bytes_after_head(void **state)
{
    const char s[] = "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /other HTTP/1.1\r\n";
    struct rl_http_req req;

    (void)state;
    assert_int_equal(parse(s, &req), 0);
    assert_int_equal(req.used, strlen("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"));
}

static void
test_request_line_errors(void **state)
{
    static const char *const bad[] = {
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", /* no empty line before the request line */
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET metrics HTTP/1.1\r\nHost: a\r\n\r\n", /* origin-form only */
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
        "GET / HTTP/1\r\nHost: a\r\n\r\n",
        "GET /\r\n\r\n", /* HTTP/0.9 */
        "GET\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",
        "GET /\rx HTTP/1.1\r\nHost: a\r\n\r\n",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("case %zu\n", i);
        assert_int_equal(parse(bad[i], NULL), -400);
    }
    assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n", NULL), -505);
    assert_int_equal(parse("GET / HTTP/0.9\r\n\r\n", NULL), -505);
    assert_int_equal(parse("GET / HTTP/1.2\r\nHost: a\r\n\r\n", NULL), -505);
}

static void
test_field_errors(void **state)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n\r\n", /* HTTP/1.1 without Host */
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",
        "GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("case %zu\n", i);
        assert_int_equal(parse(bad[i], NULL), -400);
    }
    /* A NUL byte is a control character like any other. */
    assert_int_equal(parse_max("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 28, MAX, NULL), -400);
}

/* Junk is refused as soon as it cannot be a request any more, without
 * waiting for a line end or the size cap. */
static void
test_early_refusal(void **state)
{
    (void)state;
    assert_int_equal(parse_max("\x16\x03\x01\x02\x00", 5, MAX, NULL), -400);
    assert_int_equal(parse("GET x", NULL), -400);
    assert_int_equal(parse("GET / HTTX", NULL), -400);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHo st", NULL), -400);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: \x02", NULL), -400);
    assert_int_equal(parse("GET / HTTP/1.1\r\n folded", NULL), -400);
    /* ...while what may still become valid waits. */
    assert_int_equal(parse("GET / HTTP/1.1\r", NULL), RL_HTTP_MORE);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\n\r", NULL), RL_HTTP_MORE);
}

static void
test_size_cap(void **state)
{
    const char *start = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ";
    size_t n = strlen(start);
    char *s = malloc(MAX + 64);
    struct rl_http_req req;

    (void)state;
    memcpy(s, start, n);
    /* A head of exactly MAX bytes is accepted... */
    memset(s + n, 'a', MAX - n - 4);
    memcpy(s + MAX - 4, "\r\n\r\n", 4);
    assert_int_equal(parse_max(s, MAX, MAX, &req), 0);
    assert_int_equal(req.used, MAX);
    /* ...one byte more is not, complete or not. */
    memset(s + n, 'a', MAX - n - 3);
    memcpy(s + MAX - 3, "\r\n\r\n", 4);
    assert_int_equal(parse_max(s, MAX + 1, MAX, NULL), -431);
    assert_int_equal(parse_max(s, MAX, MAX, NULL), -431);
    assert_int_equal(parse_max(s, MAX - 1, MAX, NULL), RL_HTTP_MORE);
    /* A larger cap takes it. */
    assert_int_equal(parse_max(s, MAX + 1, 2 * MAX, &req), 0);
    /* Errors before the cap still say what they are. */
    memcpy(s + n, "\x01", 1);
    assert_int_equal(parse_max(s, MAX + 1, MAX, NULL), -400);
    free(s);
}

static void
test_reasons(void **state)
{
    (void)state;
    assert_string_equal(rl_http_reason(200), "OK");
    assert_string_equal(rl_http_reason(404), "Not Found");
    assert_string_equal(rl_http_reason(405), "Method Not Allowed");
    assert_string_equal(rl_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(rl_http_reason(503), "Service Unavailable");
    assert_string_equal(rl_http_reason(299), "Error");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_bytes_after_head),
        cmocka_unit_test(test_request_line_errors),
        cmocka_unit_test(test_field_errors),
        cmocka_unit_test(test_early_refusal),
        cmocka_unit_test(test_size_cap),
        cmocka_unit_test(test_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
