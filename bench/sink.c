/*
 * sink.c - the benchmark's upstream: a fast SMTP sink with TLS (OpenSSL)
 * on loopback, standing in for the provider.  It accepts everything and
 * keeps nothing.
 *
 *   sink -c CERT -k KEY [-i PORT] [-s PORT] [-m STATSFILE] [-3] [-r]
 *
 *   -i PORT   implicit TLS listener (465 style) on 127.0.0.1
 *   -s PORT   STARTTLS listener (587 style) on 127.0.0.1
 *   -m FILE   counters, updated in place (see struct stats): the bench
 *             reads them to know when a queueing relay has delivered
 *   -3        allow TLS 1.3 (default: TLS 1.2 at most, as relabel's
 *             mbedTLS 2.28 speaks, so every front end does the same work)
 *   -r        allow session resumption (default: none, every upstream
 *             handshake is a full one, for every front end alike)
 *
 * Dialogue: 220 greeting; EHLO with AUTH PLAIN LOGIN, SIZE, 8BITMIME,
 * PIPELINING (and STARTTLS before TLS on the -s port); AUTH → 235 (LOGIN
 * with its two 334 steps); MAIL, RCPT, RSET, NOOP → 250; DATA → 354, then
 * bytes are discarded up to CRLF.CRLF → 250; QUIT → 221.
 *
 * One thread, one epoll loop, non-blocking sockets and OpenSSL: a sink
 * that holds 10 000 idle sessions must not need 10 000 threads, and with
 * OpenSSL's AES-NI/ChaCha code its CPU per byte is a small fraction of the
 * front end's (the bench prints both so this can be checked).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define RBUF 65536
#define LINE_MAX_LEN 4096
#define OUT_MAX 4096

/* The counters file: read by the bench while the sink runs. */
struct stats {
    volatile uint64_t sessions; /* accepted */
    volatile uint64_t handshakes;
    volatile uint64_t resumed;
    volatile uint64_t messages; /* ended with CRLF.CRLF */
    volatile uint64_t bytes;    /* message bytes, after DATA's 354 */
    volatile uint64_t open;     /* sessions open now */
    char cipher[64];            /* of the latest handshake: "TLSv1.2 NAME" */
};

enum state { S_HANDSHAKE, S_CMD, S_DATA, S_AUTH_PLAIN, S_AUTH_USER, S_AUTH_PASS, S_CLOSING };

struct sess {
    int fd;
    SSL *ssl;     /* NULL while plaintext */
    int starttls; /* listener kind: plaintext first */
    int want_out; /* EPOLLOUT armed */
    enum state st;
    unsigned eod; /* bytes of "\r\n.\r\n" matched so far */
    size_t llen;  /* bytes in line */
    size_t olen;  /* bytes in out */
    char line[LINE_MAX_LEN];
    char out[OUT_MAX];
};

static struct stats dummy_stats;
static struct stats *st = &dummy_stats;
static SSL_CTX *ctx;
static int ep;
static volatile sig_atomic_t stop;
static unsigned char rbuf[RBUF];

static void
on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int
listen_on(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4096) < 0) {
        perror("sink: listen");
        exit(1);
    }
    return fd;
}

static void
sess_free(struct sess *s)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    if (s->ssl != NULL) {
        SSL_free(s->ssl);
    }
    close(s->fd);
    free(s);
    st->open--;
}

/* Queue a reply; sent by flush(). */
static void
say(struct sess *s, const char *text)
{
    size_t n = strlen(text);

    if (s->olen + n <= OUT_MAX) {
        memcpy(s->out + s->olen, text, n);
        s->olen += n;
    }
}

static void
arm(struct sess *s, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = s};

    if (s->want_out != out) {
        s->want_out = out;
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
    }
}

/* Returns -1 if the session is dead. */
static int
flush(struct sess *s)
{
    while (s->olen > 0) {
        ssize_t n;

        if (s->ssl != NULL) {
            int r = SSL_write(s->ssl, s->out, (int)s->olen);

            if (r <= 0) {
                int e = SSL_get_error(s->ssl, r);

                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    arm(s, 1);
                    return 0;
                }
                return -1;
            }
            n = r;
        } else {
            n = write(s->fd, s->out, s->olen);
            if (n < 0) {
                if (errno == EAGAIN) {
                    arm(s, 1);
                    return 0;
                }
                return -1;
            }
        }
        memmove(s->out, s->out + n, s->olen - (size_t)n);
        s->olen -= (size_t)n;
    }
    arm(s, 0);
    return s->st == S_CLOSING ? -1 : 0;
}

static int
verb_is(const char *line, const char *verb)
{
    return strncasecmp(line, verb, strlen(verb)) == 0;
}

/* One command line (CRLF stripped).  Returns 1 when STARTTLS begins. */
static int
command(struct sess *s, char *line)
{
    switch (s->st) {
    case S_AUTH_PLAIN:
    case S_AUTH_PASS:
        s->st = S_CMD;
        say(s, "235 2.7.0 Authentication successful\r\n");
        return 0;
    case S_AUTH_USER:
        s->st = S_AUTH_PASS;
        say(s, "334 UGFzc3dvcmQ6\r\n");
        return 0;
    default:
        break;
    }
    if (verb_is(line, "EHLO")) {
        say(s, "250-smtp.mailgun.org\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
               "250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n");
        if (s->starttls && s->ssl == NULL)
            say(s, "250-STARTTLS\r\n");
        say(s, "250 AUTH PLAIN LOGIN\r\n");
    } else if (verb_is(line, "HELO")) {
        say(s, "250 smtp.mailgun.org\r\n");
    } else if (verb_is(line, "STARTTLS") && s->starttls && s->ssl == NULL) {
        say(s, "220 2.0.0 Ready to start TLS\r\n");
        return 1;
    } else if (verb_is(line, "AUTH PLAIN")) {
        if (strlen(line) > 11) {
            say(s, "235 2.7.0 Authentication successful\r\n");
        } else {
            s->st = S_AUTH_PLAIN;
            say(s, "334 \r\n");
        }
    } else if (verb_is(line, "AUTH LOGIN")) {
        s->st = S_AUTH_USER;
        say(s, "334 VXNlcm5hbWU6\r\n");
    } else if (verb_is(line, "MAIL") || verb_is(line, "RCPT") || verb_is(line, "RSET") ||
               verb_is(line, "NOOP")) {
        say(s, "250 2.0.0 OK\r\n");
    } else if (verb_is(line, "DATA")) {
        s->st = S_DATA;
        s->eod = 2; /* the DATA line's CRLF counts as the first two */
        say(s, "354 Go ahead\r\n");
    } else if (verb_is(line, "QUIT")) {
        say(s, "221 2.0.0 Bye\r\n");
        s->st = S_CLOSING;
    } else {
        say(s, "502 5.5.2 Command not recognised\r\n");
    }
    return 0;
}

static void
start_tls(struct sess *s)
{
    s->ssl = SSL_new(ctx);
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_accept_state(s->ssl);
    s->st = S_HANDSHAKE;
    s->llen = 0;
}

/* Feed received plaintext.  Returns -1 to close, 1 if STARTTLS began
 * (remaining bytes are dropped: a client must wait for the handshake). */
static int
feed(struct sess *s, const unsigned char *p, size_t n)
{
    static const char eod[] = "\r\n.\r\n";
    size_t i = 0;

    while (i < n) {
        if (s->st == S_DATA) {
            size_t start = i;

            /* Skip fast to the next CR while nothing is matched. */
            while (i < n) {
                unsigned char c = p[i];

                if (s->eod == 0) {
                    const unsigned char *cr = memchr(p + i, '\r', n - i);

                    if (cr == NULL) {
                        i = n;
                        break;
                    }
                    i = (size_t)(cr - p);
                    c = '\r';
                }
                i++;
                if (c == (unsigned char)eod[s->eod])
                    s->eod++;
                else
                    s->eod = c == '\r' ? 1 : 0;
                if (s->eod == 5)
                    break;
            }
            st->bytes += i - start;
            if (s->eod == 5) {
                s->st = S_CMD;
                s->eod = 0;
                st->messages++;
                say(s, "250 2.0.0 OK queued\r\n");
            }
            continue;
        }
        const unsigned char *lf = memchr(p + i, '\n', n - i);
        size_t take = lf != NULL ? (size_t)(lf - (p + i)) + 1 : n - i;

        if (s->llen + take > LINE_MAX_LEN - 1)
            return -1;
        memcpy(s->line + s->llen, p + i, take);
        s->llen += take;
        i += take;
        if (lf == NULL)
            break;
        s->line[s->llen] = '\0';
        while (s->llen > 0 && (s->line[s->llen - 1] == '\n' || s->line[s->llen - 1] == '\r'))
            s->line[--s->llen] = '\0';
        s->llen = 0;
        if (command(s, s->line) == 1)
            return 1;
        if (s->st == S_CLOSING)
            return 0;
    }
    return 0;
}

static void
handshake_done(struct sess *s)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(s->ssl);

    st->handshakes++;
    if (SSL_session_reused(s->ssl))
        st->resumed++;
    snprintf(st->cipher, sizeof(st->cipher), "%s %s", SSL_get_version(s->ssl),
             c != NULL ? SSL_CIPHER_get_name(c) : "?");
    s->st = S_CMD;
    if (!s->starttls)
        say(s, "220 smtp.mailgun.org ESMTP sink\r\n");
}

/* After an OpenSSL call returned r <= 0: 0 if it only has to wait for the
 * socket (EPOLLOUT armed if it waits to write), -1 if the session is over. */
static int
blocked(struct sess *s, int r)
{
    int e = SSL_get_error(s->ssl, r);

    if (e == SSL_ERROR_WANT_READ)
        return 0;
    if (e == SSL_ERROR_WANT_WRITE) {
        arm(s, 1);
        return 0;
    }
    return -1;
}

/* Readable (or writable after a blocked write).  Returns -1 to close. */
static int
service(struct sess *s)
{
    if (s->olen > 0 && flush(s) < 0)
        return -1;
    for (;;) {
        ssize_t n;

        if (s->ssl != NULL && s->st == S_HANDSHAKE) {
            int r = SSL_do_handshake(s->ssl);

            if (r != 1)
                return blocked(s, r);
            handshake_done(s);
            if (flush(s) < 0)
                return -1;
            continue;
        }
        if (s->ssl != NULL) {
            int r = SSL_read(s->ssl, rbuf, RBUF);

            if (r <= 0)
                return blocked(s, r);
            n = r;
        } else {
            n = read(s->fd, rbuf, RBUF);
            if (n < 0 && errno == EAGAIN)
                return 0;
            if (n <= 0)
                return -1;
        }
        int r = feed(s, rbuf, (size_t)n);

        if (r < 0 || flush(s) < 0)
            return -1;
        if (r == 1)
            start_tls(s);
    }
}

static void
accept_all(int lfd, int starttls)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK), one = 1;
        struct sess *s;

        if (fd < 0)
            return;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        s = calloc(1, sizeof(*s));
        if (s == NULL) {
            close(fd);
            continue;
        }
        s->fd = fd;
        s->starttls = starttls;
        st->sessions++;
        st->open++;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};

        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (starttls) {
            s->st = S_CMD;
            say(s, "220 smtp.mailgun.org ESMTP sink\r\n");
            if (flush(s) < 0)
                sess_free(s);
        } else {
            start_tls(s);
            if (service(s) < 0)
                sess_free(s);
        }
    }
}

static struct stats *
map_stats(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    void *p;

    if (fd < 0 || ftruncate(fd, sizeof(struct stats)) < 0) {
        perror(path);
        exit(1);
    }
    p = mmap(NULL, sizeof(struct stats), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

int
main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL;
    int iport = 0, sport = 0, tls13 = 0, resume = 0, opt, lfd[2] = {-1, -1};
    static int marks[2] = {0, 1};
    struct epoll_event evs[256];

    while ((opt = getopt(argc, argv, "c:k:i:s:m:3r")) != -1) {
        switch (opt) {
        case 'c':
            cert = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'i':
            iport = atoi(optarg);
            break;
        case 's':
            sport = atoi(optarg);
            break;
        case 'm':
            st = map_stats(optarg);
            break;
        case '3':
            tls13 = 1;
            break;
        case 'r':
            resume = 1;
            break;
        default:
            fprintf(stderr, "usage: sink -c CERT -k KEY [-i PORT] [-s PORT] [-m FILE] [-3] [-r]\n");
            return 2;
        }
    }
    if (cert == NULL || key == NULL || (iport == 0 && sport == 0)) {
        fprintf(stderr, "sink: -c, -k and a port are required\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    if (!tls13)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (!resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
    ep = epoll_create1(0);
    if (iport != 0)
        lfd[0] = listen_on(iport);
    if (sport != 0)
        lfd[1] = listen_on(sport);
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &marks[i]};

        if (lfd[i] >= 0)
            epoll_ctl(ep, EPOLL_CTL_ADD, lfd[i], &ev);
    }
    printf("sink ready\n");
    fflush(stdout);
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 500);

        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;

            if (p == &marks[0] || p == &marks[1]) {
                accept_all(lfd[p == &marks[1]], p == &marks[1]);
                continue;
            }
            if (service(p) < 0)
                sess_free(p);
        }
    }
    SSL_CTX_free(ctx);
    return 0;
}
