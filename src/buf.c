/*
 * buf.c - growable, capped byte buffer.  See buf.h for the contract.
 */
#include <stdlib.h>
#include <string.h>

#include "relabel/buf.h"
#include "relabel/errors.h"

#define BUF_MIN_ALLOC 4096

void
rl_buf_init(struct rl_buf *b, size_t max)
{
    b->base = NULL;
    b->rpos = b->wpos = b->size = 0;
    b->max = max;
}

void
rl_buf_free(struct rl_buf *b)
{
    free(b->base);
    b->base = NULL;
    b->rpos = b->wpos = b->size = 0;
}

char *
rl_buf_reserve(struct rl_buf *b, size_t want, size_t *avail)
{
    size_t len = rl_buf_len(b);

    if (want > b->max - len)
        want = b->max - len;
    if (want == 0) {
        *avail = 0;
        return NULL;
    }
    if (b->size - b->wpos < want && b->rpos > 0) {
        /* Compacting is cheap compared with growing: the data left here is
         * a partial line or record, rarely more than a few KiB. */
        memmove(b->base, b->base + b->rpos, len);
        b->rpos = 0;
        b->wpos = len;
    }
    if (b->size - b->wpos < want) {
        size_t nsize = b->size ? b->size : BUF_MIN_ALLOC;
        char *p;

        while (nsize < len + want)
            nsize *= 2;
        if (nsize > b->max)
            nsize = b->max;
        if (len == 0) {
            /* Nothing to keep: realloc() would copy the stale bytes. */
            free(b->base);
            b->base = NULL;
            b->size = 0;
            p = malloc(nsize);
        } else {
            p = realloc(b->base, nsize);
        }
        if (p == NULL) {
            *avail = 0;
            return NULL;
        }
        b->base = p;
        b->size = nsize;
    }
    *avail = b->size - b->wpos;
    return b->base + b->wpos;
}

void
rl_buf_commit(struct rl_buf *b, size_t n)
{
    b->wpos += n;
}

void
rl_buf_consume(struct rl_buf *b, size_t n)
{
    b->rpos += n;
    if (b->rpos == b->wpos)
        b->rpos = b->wpos = 0;
}

int
rl_buf_append(struct rl_buf *b, const void *p, size_t n)
{
    size_t avail;
    char *dst;

    if (n == 0)
        return 0;
    if (n > rl_buf_room(b))
        return RL_E_FULL;
    dst = rl_buf_reserve(b, n, &avail);
    if (dst == NULL || avail < n)
        return RL_E_NOMEM;
    memcpy(dst, p, n);
    b->wpos += n;
    return 0;
}

void
rl_buf_swap(struct rl_buf *a, struct rl_buf *b)
{
    struct rl_buf tmp = *a;
    size_t amax = a->max, bmax = b->max;

    *a = *b;
    *b = tmp;
    a->max = amax;
    b->max = bmax;
}

void
rl_buf_trim(struct rl_buf *b)
{
    if (rl_buf_len(b) == 0 && b->base != NULL)
        rl_buf_free(b);
}

void
rl_buf_reset(struct rl_buf *b, size_t keep)
{
    b->rpos = b->wpos = 0;
    if (b->size > keep)
        rl_buf_free(b);
}
