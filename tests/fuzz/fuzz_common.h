/*
 * fuzz_common.h - helpers shared by the libFuzzer targets: a check that
 * aborts with the failing condition (libFuzzer then saves the input), and
 * small byte helpers.  Header-only so each target stays one source file.
 */
#ifndef RELABEL_FUZZ_COMMON_H
#define RELABEL_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Not assert(): must also hold in builds with NDEBUG. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static inline int
fuzz_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static inline bool
fuzz_ieq(const char *a, size_t n, const char *b)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (b[i] == '\0' || fuzz_lower((unsigned char)a[i]) != fuzz_lower((unsigned char)b[i]))
            return false;
    }
    return b[n] == '\0';
}

/* p[0..n) is inside [base, base + len). */
static inline bool
fuzz_within(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && p <= base + len && n <= (size_t)(base + len - p);
}

static inline bool
fuzz_has(const char *p, size_t n, char c)
{
    return n > 0 && memchr(p, c, n) != NULL;
}

/* A copy of p[0..n) in its own heap block of exactly n bytes, so that
 * AddressSanitizer catches any read past p[n - 1] (ASan's malloc(0) gives a
 * block with no readable byte). */
static inline char *
fuzz_dup(const void *p, size_t n)
{
    char *q = malloc(n);

    if (q == NULL && n == 0)
        q = malloc(1);

    FUZZ_CHECK(q != NULL);
    if (n > 0)
        memcpy(q, p, n);
    return q;
}

#endif
