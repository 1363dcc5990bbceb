/*
 * users.h - a brand's own users (the `users = FILE` key): one
 * "name:hash[:domain,domain...]" per line, hashes from libxcrypt's crypt()
 * (yescrypt "$y$", bcrypt "$2b$", sha512crypt "$6$"; nothing weaker).
 *
 * The parser is pure (a buffer in, a sorted table out, problems printed as
 * "FILE:LINE: message"); rl_users_verify() runs crypt(), which is slow by
 * design, so it is called on the threadpool (auth.c), never on an event
 * loop.  A table is immutable once loaded and belongs to a config.
 */
#ifndef RELABEL_USERS_H
#define RELABEL_USERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Longest user name, hash and domain list accepted (bytes). */
#define RL_USER_NAME_MAX 255
#define RL_USER_HASH_MAX 255
#define RL_USER_PASSWORD_MAX 1024

struct rl_user {
    char *name;
    char *hash;
    char **domains; /* envelope sender domains allowed; none: any */
    size_t ndomains;
    int line;
};

struct rl_users {
    char *path;
    struct rl_user *items; /* sorted by name, no duplicates */
    size_t n;
};

/*
 * Parses a users file held in text/len (path is only for messages).  Empty
 * lines and lines starting with '#' are skipped.  Every problem is printed
 * to err as "PATH:LINE: message"; returns the number of problems (0: *out
 * is set, else *out is NULL).
 */
int rl_users_parse(const char *path, const char *text, size_t len, FILE *err,
                   struct rl_users **out);

/* Reads and parses path; a file that cannot be read is one problem
 * ("PATH: cannot read: ..."). */
int rl_users_load(const char *path, FILE *err, struct rl_users **out);

void rl_users_free(struct rl_users *u);

/* The user called name (exact, case-sensitive), or NULL. */
const struct rl_user *rl_users_find(const struct rl_users *u, const char *name, size_t len);

/* Whether user may use the envelope sender addr (the text between < and >):
 * always with no domains listed; else addr's domain (after the last '@',
 * compared ignoring case) must be one of them. */
bool rl_user_sender_ok(const struct rl_user *user, const char *addr, size_t len);

/*
 * Checks password against hash with crypt (slow: call it off the event
 * loop).  With hash NULL (an unknown user) it still spends the time of a
 * yescrypt check and returns false, so timing does not tell whether a user
 * exists.  The result of crypt is compared in constant time.
 */
bool rl_users_verify(const char *hash, const char *password, size_t plen);

/* A new yescrypt hash of password with a random salt into out; returns 0,
 * or -1 (errno set) if crypt failed. */
int rl_users_hash(const char *password, char *out, size_t cap);

#endif
