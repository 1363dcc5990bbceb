/*
 * users.c - a brand's users file: parsing (pure), lookup, sender domains,
 * and the crypt() calls for verification and for `relabel hash-password`.
 * See users.h.
 */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "relabel/users.h"

/* A users file larger than this is refused (a million short lines). */
#define USERS_FILE_MAX (64u * 1024u * 1024u)

/* The hash methods accepted, by prefix: the ones libxcrypt rates strong.
 * DES, MD5 ("$1$"), sha256crypt ("$5$") and the like are refused. */
static const struct {
    const char *prefix;
    size_t tail; /* length of the hash after the last '$', 0: any */
} users_methods[] = {
    {"$y$", 43},
    {"$2b$", 53}, /* 22 characters of salt, then 31 of hash */
    {"$6$", 86},
};

static void users_error(const char *path, int line, FILE *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
users_error(const char *path, int line, FILE *err, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return;
    fprintf(err, "%s:%d: ", path, line);
    va_start(ap, fmt);
    vfprintf(err, fmt, ap);
    va_end(ap);
    fputc('\n', err);
}

static char *
users_strndup(const char *p, size_t n)
{
    char *s = malloc(n + 1);

    if (s != NULL) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static void
users_free_one(struct rl_user *u)
{
    free(u->name);
    if (u->hash != NULL) {
        explicit_bzero(u->hash, strlen(u->hash));
        free(u->hash);
    }
    for (size_t i = 0; i < u->ndomains; i++)
        free(u->domains[i]);
    free(u->domains);
}

void
rl_users_free(struct rl_users *u)
{
    if (u == NULL)
        return;
    for (size_t i = 0; i < u->n; i++)
        users_free_one(&u->items[i]);
    free(u->items);
    free(u->path);
    free(u);
}

/* A user name: printable ASCII or UTF-8, no ':' (the separator), no space
 * or control character. */
static bool
users_valid_name(const char *p, size_t n)
{
    if (n == 0 || n > RL_USER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        if (c <= 0x20 || c == 0x7f || c == ':')
            return false;
    }
    return true;
}

/* A domain: letters, digits, '-' and '.', not starting or ending with '.'. */
static bool
users_valid_domain(const char *p, size_t n)
{
    if (n == 0 || n > 253 || p[0] == '.' || p[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* NULL if hash is acceptable, else why not. */
static const char *
users_check_hash(const char *hash)
{
    const char *last = strrchr(hash, '$');
    size_t tail = 0;
    bool known = false;

    if (strlen(hash) > RL_USER_HASH_MAX)
        return "hash too long";
    for (size_t i = 0; i < sizeof(users_methods) / sizeof(users_methods[0]); i++) {
        if (strncmp(hash, users_methods[i].prefix, strlen(users_methods[i].prefix)) == 0) {
            known = true;
            tail = users_methods[i].tail;
        }
    }
    if (!known)
        return "hash method not accepted (use yescrypt \"$y$\", bcrypt \"$2b$\" or sha512crypt "
               "\"$6$\": relabel hash-password makes yescrypt)";
    /* The hash after the last '$' has its method's length, in crypt's
     * base64 alphabet: a truncated line is found now, not at the first
     * login. */
    if (strlen(last + 1) != tail ||
        strspn(last + 1, "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "abcdefghijklmnopqrstuvwxyz") != tail ||
        crypt_checksalt(hash) != CRYPT_SALT_OK)
        return "malformed hash (the whole output of crypt is needed)";
    return NULL;
}

/* The domains after the second ':' (commas and/or spaces). */
static int
users_parse_domains(const char *path, int line, FILE *err, const char *p, size_t n,
                    struct rl_user *u)
{
    size_t i = 0;

    while (i < n) {
        size_t start, len;
        char **grown, *d;

        while (i < n && (p[i] == ',' || p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i == n)
            break;
        start = i;
        while (i < n && p[i] != ',' && p[i] != ' ' && p[i] != '\t')
            i++;
        len = i - start;
        d = users_strndup(p + start, len);
        if (d == NULL)
            return -1;
        if (!users_valid_domain(d, len)) {
            users_error(path, line, err, "invalid sender domain \"%s\"", d);
            free(d);
            return 1;
        }
        grown = realloc(u->domains, (u->ndomains + 1) * sizeof(*grown));
        if (grown == NULL) {
            free(d);
            return -1;
        }
        u->domains = grown;
        u->domains[u->ndomains++] = d;
    }
    return 0;
}

static int
users_compare(const void *a, const void *b)
{
    return strcmp(((const struct rl_user *)a)->name, ((const struct rl_user *)b)->name);
}

/* One non-empty line; 0 ok (u filled), >0 problems reported, <0 no memory. */
static int
users_parse_line(const char *path, int line, FILE *err, const char *p, size_t n, struct rl_user *u)
{
    const char *c1 = memchr(p, ':', n), *c2, *why;
    char *name;

    if (c1 == NULL) {
        users_error(path, line, err, "%s", "expected \"user:hash\" or \"user:hash:domains\"");
        return 1;
    }
    c2 = memchr(c1 + 1, ':', (size_t)(p + n - c1 - 1));
    name = users_strndup(p, (size_t)(c1 - p));
    if (name == NULL)
        return -1;
    if (!users_valid_name(name, (size_t)(c1 - p))) {
        users_error(path, line, err, "%s",
                    "invalid user name (no spaces, ':' or control characters, at most 255 "
                    "bytes)");
        free(name);
        return 1;
    }
    u->name = name;
    u->line = line;
    u->hash = users_strndup(c1 + 1, (size_t)((c2 ? c2 : p + n) - c1 - 1));
    if (u->hash == NULL)
        return -1;
    /* The hash itself is never printed. */
    why = users_check_hash(u->hash);
    if (why != NULL) {
        users_error(path, line, err, "user \"%s\": %s", name, why);
        return 1;
    }
    if (c2 != NULL)
        return users_parse_domains(path, line, err, c2 + 1, (size_t)(p + n - c2 - 1), u);
    return 0;
}

int
rl_users_parse(const char *path, const char *text, size_t len, FILE *err, struct rl_users **out)
{
    struct rl_users *u = calloc(1, sizeof(*u));
    size_t off = 0, cap = 0;
    int problems = 0, line = 0;

    *out = NULL;
    if (u == NULL || (u->path = strdup(path)) == NULL) {
        free(u);
        if (err != NULL)
            fprintf(err, "%s: out of memory\n", path);
        return 1;
    }
    while (off < len) {
        const char *p = text + off, *nl = memchr(p, '\n', len - off);
        size_t n = nl ? (size_t)(nl - p) : len - off;
        struct rl_user one = {0};
        int rc;

        off += n + (nl != NULL);
        line++;
        if (n > 0 && p[n - 1] == '\r')
            n--;
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        while (n > 0 && (p[0] == ' ' || p[0] == '\t')) {
            p++;
            n--;
        }
        if (n == 0 || p[0] == '#')
            continue;
        if (memchr(p, '\0', n) != NULL) {
            users_error(path, line, err, "%s", "NUL byte in line");
            problems++;
            continue;
        }
        rc = users_parse_line(path, line, err, p, n, &one);
        if (rc != 0) {
            users_free_one(&one);
            if (rc < 0) {
                if (err != NULL)
                    fprintf(err, "%s: out of memory\n", path);
                problems++;
                break;
            }
            problems += rc;
            continue;
        }
        if (u->n == cap) {
            struct rl_user *grown;

            cap = cap ? cap * 2 : 16;
            grown = realloc(u->items, cap * sizeof(*grown));
            if (grown == NULL) {
                users_free_one(&one);
                if (err != NULL)
                    fprintf(err, "%s: out of memory\n", path);
                problems++;
                break;
            }
            u->items = grown;
        }
        u->items[u->n++] = one;
    }
    if (problems == 0 && u->n > 1) {
        qsort(u->items, u->n, sizeof(*u->items), users_compare);
        for (size_t i = 1; i < u->n; i++) {
            if (strcmp(u->items[i - 1].name, u->items[i].name) == 0) {
                const struct rl_user *a = &u->items[i - 1], *b = &u->items[i];
                const struct rl_user *later = a->line > b->line ? a : b;
                const struct rl_user *first = a->line > b->line ? b : a;

                if (err != NULL)
                    fprintf(err, "%s:%d: user \"%s\" already defined on line %d\n", path,
                            later->line, later->name, first->line);
                problems++;
            }
        }
    }
    if (problems > 0) {
        rl_users_free(u);
        return problems;
    }
    *out = u;
    return 0;
}

int
rl_users_load(const char *path, FILE *err, struct rl_users **out)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    char *text;
    size_t got = 0;
    int rc;

    *out = NULL;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > USERS_FILE_MAX) {
        const char *why = fd < 0                 ? strerror(errno)
                          : !S_ISREG(st.st_mode) ? "not a regular file"
                                                 : "larger than 64 MiB";

        if (err != NULL)
            fprintf(err, "%s: cannot read: %s\n", path, why);
        if (fd >= 0)
            close(fd);
        return 1;
    }
    text = malloc((size_t)st.st_size + 1);
    while (text != NULL && got < (size_t)st.st_size) {
        ssize_t n = read(fd, text + got, (size_t)st.st_size - got);

        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (text == NULL) {
        if (err != NULL)
            fprintf(err, "%s: out of memory\n", path);
        return 1;
    }
    rc = rl_users_parse(path, text, got, err, out);
    explicit_bzero(text, got);
    free(text);
    return rc;
}

const struct rl_user *
rl_users_find(const struct rl_users *u, const char *name, size_t len)
{
    size_t lo = 0, hi;

    if (u == NULL)
        return NULL;
    hi = u->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = u->items[mid].name;
        size_t mlen = strlen(m);
        int c = memcmp(name, m, len < mlen ? len : mlen);

        if (c == 0)
            c = len < mlen ? -1 : len > mlen;
        if (c == 0)
            return &u->items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool
rl_user_sender_ok(const struct rl_user *user, const char *addr, size_t len)
{
    const char *at = NULL;
    size_t dlen;

    if (user->ndomains == 0)
        return true;
    for (size_t i = len; i > 0; i--) {
        if (addr[i - 1] == '@') {
            at = addr + i - 1;
            break;
        }
    }
    if (at == NULL)
        return false; /* the null sender, or no domain */
    dlen = len - (size_t)(at + 1 - addr);
    for (size_t i = 0; i < user->ndomains; i++)
        if (strlen(user->domains[i]) == dlen && strncasecmp(user->domains[i], at + 1, dlen) == 0)
            return true;
    return false;
}

/* ---- crypt ------------------------------------------------------------ */

/* A hash nobody's password matches, for unknown users: made once, with a
 * random salt, at the default yescrypt cost. */
static char users_dummy[CRYPT_OUTPUT_SIZE];
static pthread_once_t users_dummy_once = PTHREAD_ONCE_INIT;

static void
users_make_dummy(void)
{
    if (rl_users_hash("relabel: no such user", users_dummy, sizeof(users_dummy)) != 0)
        users_dummy[0] = '\0';
}

bool
rl_users_verify(const char *hash, const char *password, size_t plen)
{
    struct crypt_data *data = calloc(1, sizeof(*data));
    char pw[RL_USER_PASSWORD_MAX + 1];
    const char *res, *setting = hash;
    unsigned char diff = 0;
    size_t hlen;
    bool ok = false;

    if (data == NULL)
        return false;
    if (setting == NULL) {
        pthread_once(&users_dummy_once, users_make_dummy);
        setting = users_dummy[0] != '\0' ? users_dummy : NULL;
    }
    /* A password with a NUL (possible with AUTH LOGIN) or too long never
     * matches; crypt still runs, so it costs the same. */
    if (plen > RL_USER_PASSWORD_MAX || memchr(password, '\0', plen) != NULL) {
        plen = 0;
        hash = NULL;
    }
    memcpy(pw, password, plen);
    pw[plen] = '\0';
    res = setting != NULL ? crypt_rn(pw, setting, data, (int)sizeof(*data)) : NULL;
    if (res != NULL && hash != NULL && res[0] != '*') {
        hlen = strlen(hash);
        if (strlen(res) == hlen) {
            for (size_t i = 0; i < hlen; i++)
                diff |= (unsigned char)(res[i] ^ hash[i]);
            ok = diff == 0;
        }
    }
    explicit_bzero(pw, sizeof(pw));
    explicit_bzero(data, sizeof(*data));
    free(data);
    return ok;
}

int
rl_users_hash(const char *password, char *out, size_t cap)
{
    char *salt = crypt_gensalt_ra("$y$", 0, NULL, 0);
    void *data = NULL;
    int size = 0;
    const char *res;
    int rc = -1;

    if (salt == NULL)
        return -1;
    res = crypt_ra(password, salt, &data, &size);
    if (res != NULL && res[0] != '*' && strlen(res) < cap) {
        memcpy(out, res, strlen(res) + 1);
        rc = 0;
    } else if (res != NULL) {
        errno = EINVAL;
    }
    if (data != NULL) {
        explicit_bzero(data, (size_t)size);
        free(data);
    }
    free(salt);
    return rc;
}
