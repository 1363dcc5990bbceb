/*
 * healthcheck.c - the container image's HEALTHCHECK: one GET to relabel's
 * metrics endpoint, exit 0 only if the answer is "200".
 *
 *   relabel-healthcheck [http://ADDRESS:PORT/PATH]
 *
 * The runtime image has no curl and its HEALTHCHECK uses the exec form, so
 * no shell is involved either: the engine runs this binary directly.
 * ADDRESS is an IPv4 literal or a bracketed IPv6 literal; there is no name
 * resolution, so a broken resolver can never make relabel look unhealthy.
 * Without an argument the URL comes from RELABEL_HEALTHCHECK_URL, else
 * http://127.0.0.1:9465/healthz.  The whole check (connect, request,
 * answer) must finish within HC_TIMEOUT_MS.
 *
 * Exit status: 0 healthy, 1 unhealthy or unreachable, 2 a bad URL.  The
 * reason goes to standard error (engines keep it in the health log); a
 * non-200 answer's body is copied too, since /readyz explains itself there.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HC_TIMEOUT_MS 3000
#define HC_DEFAULT_URL "http://127.0.0.1:9465/healthz"
#define HC_ANSWER_MAX 4096
#define HC_PATH_MAX 256

struct hc_target {
    const char *url;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[INET6_ADDRSTRLEN + 2]; /* as written in the URL, brackets kept */
    char path[HC_PATH_MAX];
};

/* Parses "http://ADDRESS:PORT/PATH" into t.  Returns 0, or -1 with a
 * message on standard error. */
static int
hc_parse_url(const char *url, struct hc_target *t)
{
    const char *p = url, *host, *host_end;
    char text[INET6_ADDRSTRLEN], *port_end;
    unsigned long port;
    size_t n;

    memset(t, 0, sizeof(*t));
    t->url = url;
    if (strncmp(p, "http://", 7) != 0)
        goto bad;
    host = p + 7;
    if (*host == '[') {
        host_end = strchr(host, ']');
        if (host_end == NULL || host_end[1] != ':')
            goto bad;
        n = (size_t)(host_end - host - 1);
        p = host_end + 2;
        host_end++;
    } else {
        host_end = strchr(host, ':');
        if (host_end == NULL)
            goto bad;
        n = (size_t)(host_end - host);
        p = host_end + 1;
    }
    if (n == 0 || n >= sizeof(text))
        goto bad;
    memcpy(text, *host == '[' ? host + 1 : host, n);
    text[n] = '\0';
    snprintf(t->host, sizeof(t->host), "%.*s", (int)(host_end - host), host);

    errno = 0;
    port = strtoul(p, &port_end, 10);
    if (errno != 0 || *p < '0' || *p > '9' || port == 0 || port > 65535 || *port_end != '/')
        goto bad;
    n = strlen(port_end);
    if (n >= sizeof(t->path))
        goto bad;
    for (size_t i = 0; i < n; i++)
        if (port_end[i] <= 0x20 || port_end[i] >= 0x7f)
            goto bad;
    memcpy(t->path, port_end, n + 1);

    if (*host == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t->addr;

        if (inet_pton(AF_INET6, text, &a6->sin6_addr) != 1)
            goto bad;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        t->addrlen = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&t->addr;

        if (inet_pton(AF_INET, text, &a4->sin_addr) != 1)
            goto bad;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)port);
        t->addrlen = sizeof(*a4);
    }
    return 0;
bad:
    fprintf(stderr,
            "healthcheck: bad URL '%s' (want http://ADDRESS:PORT/PATH, "
            "ADDRESS an IPv4 or [IPv6] literal)\n",
            url);
    return -1;
}

static long long
hc_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or the deadline passes.  Returns 0,
 * or -1 with errno set (ETIMEDOUT at the deadline). */
static int
hc_wait(int fd, short events, long long deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        long long left = deadline - hc_now_ms();
        int rc;

        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        rc = poll(&pfd, 1, (int)left);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* Connects, sends the request and reads the whole answer (the endpoint
 * closes after it) into buf.  Returns the answer's length, or -1 with a
 * message on standard error. */
static ssize_t
hc_fetch(const struct hc_target *t, char *buf, size_t size)
{
    long long deadline = hc_now_ms() + HC_TIMEOUT_MS;
    char req[HC_PATH_MAX + 128];
    size_t len = 0, sent = 0;
    int fd, n, err = 0;
    socklen_t errlen = sizeof(err);
    const char *what = "connect";

    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                 t->path, t->host);
    fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        what = "socket";
        goto fail;
    }
    if (connect(fd, (const struct sockaddr *)&t->addr, t->addrlen) < 0) {
        if (errno != EINPROGRESS || hc_wait(fd, POLLOUT, deadline) < 0)
            goto fail;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0)
            goto fail;
        if (err != 0) {
            errno = err;
            goto fail;
        }
    }
    what = "send";
    while (sent < (size_t)n) {
        ssize_t w = send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);

        if (w > 0)
            sent += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            goto fail;
        else if (hc_wait(fd, POLLOUT, deadline) < 0)
            goto fail;
    }
    what = "receive";
    while (len < size - 1) {
        ssize_t r = recv(fd, buf + len, size - 1 - len, 0);

        if (r > 0)
            len += (size_t)r;
        else if (r == 0)
            break;
        else if (errno != EAGAIN && errno != EINTR)
            goto fail;
        else if (hc_wait(fd, POLLIN, deadline) < 0)
            goto fail;
    }
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
fail:
    fprintf(stderr, "healthcheck: %s %s: %s\n", what, t->url, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

int
main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : getenv("RELABEL_HEALTHCHECK_URL");
    char answer[HC_ANSWER_MAX];
    struct hc_target t;
    const char *body;
    ssize_t len;
    size_t line;

    if (argc > 2) {
        fprintf(stderr, "usage: relabel-healthcheck [http://ADDRESS:PORT/PATH]\n");
        return 2;
    }
    if (url == NULL || *url == '\0')
        url = HC_DEFAULT_URL;
    if (hc_parse_url(url, &t) < 0)
        return 2;
    len = hc_fetch(&t, answer, sizeof(answer));
    if (len < 0)
        return 1;

    /* "HTTP/1.1 200 ok": the version, one space, exactly three digits. */
    line = strcspn(answer, "\r\n");
    if (line >= 12 && strncmp(answer, "HTTP/1.", 7) == 0 && strncmp(answer + 8, " 200 ", 5) == 0)
        return 0;
    body = strstr(answer, "\r\n\r\n");
    body = body != NULL ? body + 4 : "";
    fprintf(stderr, "healthcheck: %s answered \"%.*s\"\n%s", t.url, (int)line, answer, body);
    if (*body != '\0' && body[strlen(body) - 1] != '\n')
        fputc('\n', stderr);
    return 1;
}
