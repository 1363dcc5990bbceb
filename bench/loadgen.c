/*
 * loadgen.c - the benchmark's SMTP clients (OpenSSL, blocking sockets, one
 * thread per concurrent session).
 *
 *   loadgen MODE -p PORT [-t implicit|starttls] [-n N] [-P PARALLEL]
 *           [-s BYTES] [-a CAFILE] [-h NAME] [-S SOURCES] [-3]
 *
 * MODE:
 *   sessions  N sessions, PARALLEL at a time: TLS, EHLO, AUTH PLAIN (when
 *             offered), MAIL, RCPT, DATA with a BYTES message, QUIT
 *   bulk      PARALLEL sessions sending N messages of BYTES between them
 *   idle      open N sessions (TLS, EHLO, AUTH) with PARALLEL threads,
 *             print "idle OPENED", hold them until standard input closes,
 *             then QUIT them all
 *   latency   PARALLEL sessions each send N NOOPs one at a time; prints
 *             the round-trip time percentiles in microseconds
 *
 * -a CAFILE and -h NAME: verify the server's certificate (chain and
 * name), as a real client does.  -S K: spread the client side over
 * 127.0.0.2 .. 127.0.0.(K+1) (idle mode, many sessions).  -3: allow TLS
 * 1.3 (default: TLS 1.2 at most, all that relabel's mbedTLS 2.28 speaks,
 * so every front end does the same handshake).  Sessions are never
 * resumed: every handshake is a full one.
 *
 * The last line printed is "result key=value ...", with the client's own
 * CPU time, so the bench can check that the client was not the
 * bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct conn {
    int fd;
    SSL *ssl;
    size_t off, len;
    char buf[8192];
};

static struct {
    const char *mode, *tls, *ca, *name;
    int port, parallel, sources, tls13;
    long n;
    size_t size;
} opt = {.tls = "implicit", .name = "smtp.example.com", .parallel = 1, .n = 1, .size = 1024};

static SSL_CTX *ctx;
static char *body;
static atomic_long next_job, ok, failed, opened;
static char cipher[80];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static double *rtts;
static const struct timeval io_timeout = {.tv_sec = 30};

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
c_write(struct conn *c, const void *p, size_t n)
{
    while (n > 0) {
        ssize_t w;

        if (c->ssl != NULL) {
            int r = SSL_write(c->ssl, p, n > (1 << 30) ? 1 << 30 : (int)n);

            if (r <= 0)
                return -1;
            w = r;
        } else {
            w = write(c->fd, p, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
        }
        p = (const char *)p + w;
        n -= (size_t)w;
    }
    return 0;
}

static int
c_fill(struct conn *c)
{
    ssize_t r;

    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == sizeof(c->buf))
        return -1;
    if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len));

        r = n > 0 ? n : -1;
    } else {
        do
            r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
        while (r < 0 && errno == EINTR);
    }
    if (r <= 0)
        return -1;
    c->len += (size_t)r;
    return 0;
}

/* Reads one reply (all its lines); returns its code, or -1. */
static int
c_reply(struct conn *c, char *text, size_t textsz)
{
    for (;;) {
        char *lf = memchr(c->buf + c->off, '\n', c->len - c->off);

        if (lf == NULL) {
            if (c_fill(c) < 0)
                return -1;
            continue;
        }
        char *line = c->buf + c->off;
        size_t n = (size_t)(lf - line) + 1;

        c->off += n;
        if (n < 4)
            return -1;
        if (text != NULL) {
            size_t have = strlen(text), add = n < textsz - have - 1 ? n : textsz - have - 1;

            memcpy(text + have, line, add);
            text[have + add] = '\0';
        }
        if (line[3] != '-')
            return atoi(line);
    }
}

static int
c_cmd(struct conn *c, const char *cmd, char *text, size_t textsz)
{
    if (c_write(c, cmd, strlen(cmd)) < 0)
        return -1;
    return c_reply(c, text, textsz);
}

static int
c_tls(struct conn *c)
{
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, opt.name);
    if (opt.ca != NULL)
        SSL_set1_host(c->ssl, opt.name);
    if (SSL_connect(c->ssl) != 1)
        return -1;
    if (cipher[0] == '\0') {
        pthread_mutex_lock(&lock);
        snprintf(cipher, sizeof(cipher), "%s/%s", SSL_get_version(c->ssl),
                 SSL_get_cipher_name(c->ssl));
        pthread_mutex_unlock(&lock);
    }
    return 0;
}

static void
c_close(struct conn *c)
{
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* Connect, TLS (either way), EHLO, AUTH when offered.  0 on success. */
static int
c_open(struct conn *c, int source)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    char ehlo[1024] = "";
    int one = 1;

    c->off = c->len = 0;
    c->ssl = NULL;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* A front end that stops answering fails the session, never hangs it. */
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &io_timeout, sizeof(io_timeout));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &io_timeout, sizeof(io_timeout));
    if (source > 0) {
        struct sockaddr_in b = {.sin_family = AF_INET};

        b.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + (unsigned)source);
        if (bind(c->fd, (struct sockaddr *)&b, sizeof(b)) < 0)
            return -1;
    }
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        return -1;
    if (strcmp(opt.tls, "starttls") == 0) {
        if (c_reply(c, NULL, 0) != 220 || c_cmd(c, "EHLO client.example\r\n", NULL, 0) != 250 ||
            c_cmd(c, "STARTTLS\r\n", NULL, 0) != 220 || c->off != c->len || c_tls(c) < 0)
            return -1;
    } else {
        if (c_tls(c) < 0 || c_reply(c, NULL, 0) != 220)
            return -1;
    }
    if (c_cmd(c, "EHLO client.example\r\n", ehlo, sizeof(ehlo)) != 250)
        return -1;
    if (strstr(ehlo, "AUTH") != NULL &&
        c_cmd(c, "AUTH PLAIN AHVzZXJAZXhhbXBsZS5jb20Ac2VjcmV0\r\n", NULL, 0) != 235)
        return -1;
    return 0;
}

static int
c_message(struct conn *c)
{
    if (c_cmd(c, "MAIL FROM:<bench@example.com>\r\n", NULL, 0) != 250 ||
        c_cmd(c, "RCPT TO:<sink@example.net>\r\n", NULL, 0) != 250 ||
        c_cmd(c, "DATA\r\n", NULL, 0) != 354 || c_write(c, body, opt.size) < 0 ||
        c_cmd(c, ".\r\n", NULL, 0) != 250)
        return -1;
    return 0;
}

static int
c_quit(struct conn *c)
{
    int code = c_cmd(c, "QUIT\r\n", NULL, 0);

    c_close(c);
    return code == 221 ? 0 : -1;
}

static void *
run_sessions(void *arg)
{
    struct conn *c = malloc(sizeof(*c));

    (void)arg;
    while (atomic_fetch_add(&next_job, 1) < opt.n) {
        if (c_open(c, 0) == 0 && c_message(c) == 0 && c_quit(c) == 0) {
            ok++;
        } else {
            failed++;
            c_close(c);
        }
    }
    free(c);
    return NULL;
}

static void *
run_bulk(void *arg)
{
    struct conn *c = malloc(sizeof(*c));

    (void)arg;
    if (c_open(c, 0) < 0) {
        failed++;
        c_close(c);
        free(c);
        return NULL;
    }
    while (atomic_fetch_add(&next_job, 1) < opt.n) {
        if (c_message(c) < 0) {
            failed++;
            break;
        }
        ok++;
    }
    if (c_quit(c) < 0)
        c_close(c);
    free(c);
    return NULL;
}

struct idle_part {
    int index;
    long count;
    struct conn *conns;
};

static void *
run_idle_open(void *arg)
{
    struct idle_part *p = arg;
    int source = opt.sources > 0 ? 1 + p->index % opt.sources : 0;

    int in_a_row = 0;

    /* Once the front end refuses sessions in a row, it is full: stop. */
    for (long i = 0; i < p->count; i++) {
        p->conns[i].fd = -1;
        if (in_a_row >= 10) {
            failed++;
        } else if (c_open(&p->conns[i], source) < 0) {
            failed++;
            in_a_row++;
            c_close(&p->conns[i]);
        } else {
            opened++;
            in_a_row = 0;
        }
    }
    return NULL;
}

static void *
run_idle_close(void *arg)
{
    struct idle_part *p = arg;

    for (long i = 0; i < p->count; i++) {
        if (p->conns[i].fd >= 0 && c_quit(&p->conns[i]) < 0)
            c_close(&p->conns[i]);
    }
    return NULL;
}

static void *
run_latency(void *arg)
{
    struct conn *c = malloc(sizeof(*c));
    double *mine = arg;

    if (c_open(c, 0) < 0) {
        failed++;
        c_close(c);
        free(c);
        return NULL;
    }
    for (long i = 0; i < opt.n; i++) {
        double t0 = now();

        if (c_cmd(c, "NOOP\r\n", NULL, 0) != 250) {
            failed++;
            break;
        }
        mine[i] = now() - t0;
        ok++;
    }
    if (c_quit(c) < 0)
        c_close(c);
    free(c);
    return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void
make_body(void)
{
    static const char line[] =
        "The quick brown fox jumps over the lazy dog, relabel bench line 0123456789\r\n";
    size_t ll = sizeof(line) - 1, i = 0;

    body = malloc(opt.size + ll);
    if (body == NULL)
        exit(1);
    i = (size_t)snprintf(body, opt.size + ll, "Subject: bench\r\n\r\n");
    while (i + ll <= opt.size) {
        memcpy(body + i, line, ll);
        i += ll;
    }
    while (i + 2 < opt.size)
        body[i++] = 'x';
    body[opt.size - 2] = '\r';
    body[opt.size - 1] = '\n';
}

static void
usage(void)
{
    fprintf(stderr, "usage: loadgen sessions|bulk|idle|latency -p PORT [-t implicit|starttls] "
                    "[-n N] [-P PARALLEL] [-s BYTES] [-a CAFILE] [-h NAME] [-S SOURCES] [-3]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    int o;
    pthread_t *th;
    pthread_attr_t attr;
    struct idle_part *parts = NULL;
    double t0, t1;
    struct rusage ru;

    if (argc < 2)
        usage();
    opt.mode = argv[1];
    optind = 2;
    while ((o = getopt(argc, argv, "p:t:n:P:s:a:h:S:3")) != -1) {
        switch (o) {
        case 'p':
            opt.port = atoi(optarg);
            break;
        case 't':
            opt.tls = optarg;
            break;
        case 'n':
            opt.n = atol(optarg);
            break;
        case 'P':
            opt.parallel = atoi(optarg);
            break;
        case 's':
            opt.size = (size_t)atol(optarg);
            break;
        case 'a':
            opt.ca = optarg;
            break;
        case 'h':
            opt.name = optarg;
            break;
        case 'S':
            opt.sources = atoi(optarg);
            break;
        case '3':
            opt.tls13 = 1;
            break;
        default:
            usage();
        }
    }
    if (opt.port == 0 || opt.parallel < 1 || opt.size < 16)
        usage();
    signal(SIGPIPE, SIG_IGN);
    ctx = SSL_CTX_new(TLS_client_method());
    if (!opt.tls13)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (opt.ca != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, opt.ca, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    make_body();
    th = calloc((size_t)opt.parallel, sizeof(*th));
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (strcmp(opt.mode, "latency") == 0)
        rtts = calloc((size_t)(opt.n * opt.parallel), sizeof(double));
    if (strcmp(opt.mode, "idle") == 0) {
        parts = calloc((size_t)opt.parallel, sizeof(*parts));
        for (int i = 0; i < opt.parallel; i++) {
            parts[i].index = i;
            parts[i].count = opt.n / opt.parallel + (i < opt.n % opt.parallel);
            parts[i].conns = calloc((size_t)parts[i].count + 1, sizeof(struct conn));
        }
    }
    t0 = now();
    for (int i = 0; i < opt.parallel; i++) {
        void *(*fn)(void *);
        void *arg = NULL;

        if (strcmp(opt.mode, "sessions") == 0) {
            fn = run_sessions;
        } else if (strcmp(opt.mode, "bulk") == 0) {
            fn = run_bulk;
        } else if (strcmp(opt.mode, "idle") == 0) {
            fn = run_idle_open;
            arg = &parts[i];
        } else if (strcmp(opt.mode, "latency") == 0) {
            fn = run_latency;
            arg = rtts + (size_t)i * (size_t)opt.n;
        } else {
            usage();
            return 2;
        }
        pthread_create(&th[i], &attr, fn, arg);
    }
    for (int i = 0; i < opt.parallel; i++)
        pthread_join(th[i], NULL);
    t1 = now();
    if (parts != NULL) {
        char tmp[64];

        printf("idle %ld\n", (long)opened);
        fflush(stdout);
        while (fgets(tmp, sizeof(tmp), stdin) != NULL)
            ;
        for (int i = 0; i < opt.parallel; i++)
            pthread_create(&th[i], &attr, run_idle_close, &parts[i]);
        for (int i = 0; i < opt.parallel; i++)
            pthread_join(th[i], NULL);
    }
    getrusage(RUSAGE_SELF, &ru);
    printf("result ok=%ld failed=%ld opened=%ld wall=%.6f cpu=%.6f cipher=%s", (long)ok,
           (long)failed, (long)opened, t1 - t0,
           (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6,
           cipher[0] != '\0' ? cipher : "-");
    if (rtts != NULL && ok > 0) {
        long n = ok;

        qsort(rtts, (size_t)(opt.n * opt.parallel), sizeof(double), cmp_double);
        /* Unfilled slots (failed sessions) are zeros at the front. */
        double *r = rtts + (opt.n * opt.parallel - n);

        printf(" p50_us=%.1f p99_us=%.1f max_us=%.1f", r[n / 2] * 1e6, r[(n * 99) / 100] * 1e6,
               r[n - 1] * 1e6);
    }
    printf("\n");
    return failed > 0 ? 1 : 0;
}
