/*
 * fuzz_http.c - the metrics endpoint's HTTP request head parser.
 *
 * Byte 0 of the input picks the size cap (0: the endpoint's own,
 * RL_HTTP_HEAD_MAX); the rest is what a client sent.  Checks: the result
 * is one of the documented ones; an accepted head lies within the input
 * and the cap, its method is a token and its path starts with '/'; the
 * head alone parses the same; every strict prefix of it asks for more
 * (never fails), so a head split across reads is never refused; a
 * "more" never comes at or past the cap.
 */
#include "fuzz_common.h"
#include "relabel/http.h"
#include "relabel/limits.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rl_http_req req, again;
    size_t len, max, step;
    char *p;
    int rc;

    if (size < 1)
        return 0;
    max = data[0] == 0 ? RL_HTTP_HEAD_MAX : (size_t)data[0] * 16;
    len = size - 1;
    p = fuzz_dup(data + 1, len);

    rc = rl_http_parse_request(p, len, max, &req);
    FUZZ_CHECK(rc == 0 || rc == RL_HTTP_MORE || rc == -400 || rc == -431 || rc == -505);
    if (rc == RL_HTTP_MORE)
        FUZZ_CHECK(len < max);
    if (rc == -431)
        FUZZ_CHECK(len >= max);
    if (rc != 0) {
        FUZZ_CHECK(rl_http_parse_request(p, len, max, &again) == rc);
        free(p);
        return 0;
    }
    FUZZ_CHECK(req.used > 0 && req.used <= len && req.used <= max);
    FUZZ_CHECK(p[req.used - 1] == '\n');
    FUZZ_CHECK(fuzz_within(req.method, req.method_len, p, req.used) && req.method_len > 0);
    FUZZ_CHECK(!fuzz_has(req.method, req.method_len, ' '));
    FUZZ_CHECK(fuzz_within(req.path, req.path_len, p, req.used) && req.path_len > 0);
    FUZZ_CHECK(req.path[0] == '/' && !fuzz_has(req.path, req.path_len, '?'));
    FUZZ_CHECK(req.minor == 0 || req.minor == 1);

    /* The head alone, in a block of its own size. */
    {
        char *head = fuzz_dup(p, req.used);

        FUZZ_CHECK(rl_http_parse_request(head, req.used, max, &again) == 0);
        FUZZ_CHECK(again.used == req.used && again.minor == req.minor);
        FUZZ_CHECK(again.method_len == req.method_len && again.path_len == req.path_len);
        /* Every prefix asks for more (all of them for short heads, a
         * spread for long ones, to keep executions fast). */
        step = req.used <= 1024 ? 1 : req.used / 64;
        for (size_t i = 0; i < req.used; i += step)
            FUZZ_CHECK(rl_http_parse_request(head, i, max, &again) == RL_HTTP_MORE);
        FUZZ_CHECK(rl_http_parse_request(head, req.used - 1, max, &again) == RL_HTTP_MORE);
        free(head);
    }
    free(p);
    return 0;
}
