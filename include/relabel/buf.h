/*
 * buf.h - a byte buffer with a read and a write position and a hard cap.
 *
 * Storage is allocated on first use and grows (doubling) up to `max`;
 * rl_buf_trim() gives it back once the buffer is empty, so an idle session
 * holds none.  Data lives in base[rpos..wpos).  The
 * buffer never logs and never grows past its cap: callers decide what a full
 * buffer means (pause reading, refuse, close).
 */
#ifndef RELABEL_BUF_H
#define RELABEL_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct rl_buf {
    char *base;
    size_t rpos;
    size_t wpos;
    size_t size; /* allocated */
    size_t max;  /* hard cap on allocation */
};

void rl_buf_init(struct rl_buf *b, size_t max);
void rl_buf_free(struct rl_buf *b);

static inline size_t
rl_buf_len(const struct rl_buf *b)
{
    return b->wpos - b->rpos;
}

static inline char *
rl_buf_data(const struct rl_buf *b)
{
    return b->base + b->rpos;
}

/* Room that could still be added before the cap is reached. */
static inline size_t
rl_buf_room(const struct rl_buf *b)
{
    return b->max - rl_buf_len(b);
}

/* Makes at least min(want, room) bytes writable at the tail, compacting or
 * growing as needed.  Returns the tail pointer and sets *avail (which may be
 * larger than want); returns NULL with *avail = 0 when the buffer is at its
 * cap or memory is exhausted. */
char *rl_buf_reserve(struct rl_buf *b, size_t want, size_t *avail);
void rl_buf_commit(struct rl_buf *b, size_t n);
void rl_buf_consume(struct rl_buf *b, size_t n);

/* Appends n bytes; 0, or RL_E_FULL (cap) / RL_E_NOMEM, appending nothing. */
int rl_buf_append(struct rl_buf *b, const void *p, size_t n);

/* Exchanges the contents (not the caps) of two buffers. */
void rl_buf_swap(struct rl_buf *a, struct rl_buf *b);

/* Gives the storage back if the buffer is empty (an idle connection then
 * holds no buffer memory); the next reserve or append allocates afresh. */
void rl_buf_trim(struct rl_buf *b);

/* Empties the buffer; frees the storage if it grew beyond `keep` bytes. */
void rl_buf_reset(struct rl_buf *b, size_t keep);

#endif
