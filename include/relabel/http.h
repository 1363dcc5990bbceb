/*
 * http.h - a strict parser for the head of an HTTP/1.0 or HTTP/1.1 request
 * (RFC 9112), as much as the metrics endpoint needs: the request line, the
 * header fields, the empty line that ends them.  Sans-I/O and allocation
 * free: the caller's bytes in, pointers into them out.
 *
 * Strict means: what RFC 9112 lets a server refuse is refused, at the
 * first byte that makes the head impossible, without waiting for the rest
 * (a TLS hello or binary junk is refused at once).  Line ends are CRLF or a
 * lone LF (RFC 9112 §2.2); a CR anywhere else, whitespace before a field's
 * colon, folded lines, control characters, a second Host, a missing Host
 * in HTTP/1.1, and any request body (Transfer-Encoding, a Content-Length
 * other than 0) are errors.
 */
#ifndef RELABEL_HTTP_H
#define RELABEL_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define RL_HTTP_MORE 1

struct rl_http_req {
    const char *method; /* a token, e.g. "GET"; case matters (RFC 9110 §9.1) */
    size_t method_len;
    const char *path; /* the target up to '?' (origin-form: starts with '/') */
    size_t path_len;
    int minor;   /* HTTP/1.<minor>: 0 or 1 */
    size_t used; /* length of the head, its empty line included */
};

/*
 * Parses the request head at p[0..len).  Returns 0 with *req filled,
 * RL_HTTP_MORE if the bytes so far may still become a valid head and len <
 * max, or a negative HTTP status: -400 (malformed), -431 (no end of head
 * within max bytes), -505 (a version other than 1.0 and 1.1).
 */
int rl_http_parse_request(const char *p, size_t len, size_t max, struct rl_http_req *req);

/* The reason phrase for a status relabel answers with ("Not Found"), or
 * "Error" for any other. */
const char *rl_http_reason(int status);

#endif
