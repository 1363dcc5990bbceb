/*
 * fuzz_proxy.c - the PROXY protocol v1/v2 header parser.
 *
 * Byte 0 of the input picks the accepted versions; the rest is the header.
 * Checks: a complete header never claims more bytes than it was given nor
 * more than the protocol's maximum; every strict prefix of an accepted
 * header asks for more (never fails), so a header split across reads is
 * never refused; parsing is deterministic; addresses have a family.
 */
#include <sys/socket.h>

#include "fuzz_common.h"
#include "relabel/errors.h"
#include "relabel/proxy.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rl_proxy_hdr h, again;
    unsigned versions;
    const char *p;
    size_t len;
    int rc;

    if (size < 1)
        return 0;
    versions = (data[0] & 3u) ? (data[0] & 3u) : (RL_PROXY_V1 | RL_PROXY_V2);
    p = (const char *)data + 1;
    len = size - 1;

    rc = rl_proxy_parse(p, len, versions, &h);
    FUZZ_CHECK(rc == 0 || rc == 1 || rc == RL_E_PROTO);
    if (rc == 1)
        FUZZ_CHECK(len < RL_PROXY_V2_MAX + 16);
    if (rc != 0)
        return 0;

    FUZZ_CHECK(h.used > 0 && h.used <= len);
    FUZZ_CHECK(h.version & versions);
    FUZZ_CHECK(h.used <=
               (h.version == RL_PROXY_V1 ? (size_t)RL_PROXY_V1_MAX : (size_t)RL_PROXY_V2_MAX));
    FUZZ_CHECK(memchr(h.authority, '\0', sizeof(h.authority)) != NULL);
    if (!h.local) {
        FUZZ_CHECK(h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6);
        FUZZ_CHECK(h.dst.ss_family == h.src.ss_family);
    }
    /* The header alone parses the same; each prefix of it wants more. */
    FUZZ_CHECK(rl_proxy_parse(p, h.used, versions, &again) == 0);
    FUZZ_CHECK(again.used == h.used && again.local == h.local);
    FUZZ_CHECK(memcmp(&again.src, &h.src, sizeof(h.src)) == 0);
    for (size_t i = 0; i < h.used; i++)
        FUZZ_CHECK(rl_proxy_parse(p, i, versions, &again) == 1);
    return 0;
}
