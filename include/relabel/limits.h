/*
 * limits.h - compile-time limits and defaults, each with the rule it follows.
 * Runtime-configurable values take these as defaults; config.c enforces the
 * ranges given here.
 */
#ifndef RELABEL_LIMITS_H
#define RELABEL_LIMITS_H

/* RFC 5321 §4.5.3.1.4: a command line is at least 512 octets including CRLF;
 * AUTH lines with long tokens need more, so the default is generous. */
#define RL_SMTP_LINE_MIN 512
#define RL_SMTP_LINE_DEFAULT 4096
#define RL_SMTP_LINE_MAX 65536

/* A whole (multi-line) reply from the upstream, e.g. a long EHLO list. */
#define RL_SMTP_REPLY_MAX 16384

/* Commands relayed but not yet answered (RFC 2920 pipelining). */
#define RL_PIPELINE_MAX 128

/* Errors (5xx answered locally or relayed) before the session is closed. */
#define RL_MAX_ERRORS_DEFAULT 10
/* Commands that move no mail (NOOP, RSET, VRFY, EXPN, HELP) between two
 * accepted messages: clients need a few; Postfix allows 100. */
#define RL_MAX_JUNK_COMMANDS_DEFAULT 100

/* Sessions at once (each costs two TLS contexts, about 100 KiB), and from
 * one client address (a mail server or an office NAT rarely needs more). */
#define RL_MAX_CONNECTIONS_DEFAULT 2000
#define RL_MAX_CONNECTIONS_PER_IP_DEFAULT 50

/* New connections per client address per minute (a token bucket: this many
 * at once, then one every 60/N seconds).  A mail client opens one
 * connection per message batch, but an application server often opens one
 * per message: 600 (10 a second, sustained) leaves room for that while a
 * single address can no longer make relabel do a TLS handshake hundreds of
 * times a second (each costs far more CPU than the connection).  0 turns
 * the limit off. */
#define RL_MAX_CONNECTION_RATE_DEFAULT 600
/* Client addresses the rate table remembers (about 40 bytes each).  It
 * needs to hold the addresses seen in the last minute; under a flood of
 * more distinct addresses than this, the longest idle are forgotten. */
#define RL_RATELIMIT_SLOTS 8192

/* Timeouts, milliseconds.  RFC 5321 §4.5.3.2 gives the server 5 minutes for
 * a command and 3 minutes per data block; 10 minutes for the reply to the
 * end of data. */
#define RL_TIMEOUT_HANDSHAKE_DEFAULT 15000
#define RL_TIMEOUT_COMMAND_DEFAULT 300000
#define RL_TIMEOUT_DATA_DEFAULT 180000
#define RL_TIMEOUT_UP_CONNECT_DEFAULT 15000
#define RL_TIMEOUT_UP_REPLY_DEFAULT 600000
/* Slow clients.  The idle timeouts above restart on every byte, so a client
 * trickling one byte at a time could hold a session for ever.  Deadlines do
 * not restart: a command line must be complete this long after its first
 * byte, and a TLS handshake within handshake_timeout of its start.  During
 * DATA the deadline is data_timeout after the 354 plus one second per
 * min_data_rate bytes received (Postfix's smtpd_min_data_rate rule), time
 * spent waiting for a slow upstream not counted. */
#define RL_COMMAND_DEADLINE_DEFAULT 60000
#define RL_MIN_DATA_RATE_DEFAULT 500

/* Worker threads (workers = auto | N): more than the CPUs only adds
 * contention; auto takes the CPUs this process may run on, up to this. */
#define RL_WORKERS_MAX 64

/* Password checks of local users (crypt, on the libuv threadpool) running
 * at once in the whole process: the threadpool's other work (resolving
 * upstream names) keeps its threads.  A failed check is answered this
 * long after it ended, so guessing costs the guesser time. */
#define RL_AUTH_VERIFY_MAX 2
#define RL_AUTH_FAIL_DELAY 1500

/* Shutdown: transactions in progress may finish for this long. */
#define RL_TIMEOUT_DRAIN_DEFAULT 30000
/* Certificate files changed: reload once they have been quiet this long
 * (certbot and Kubernetes write several files in a row). */
#define RL_WATCH_DEBOUNCE_DEFAULT 2000

/* Upstream checks behind /readyz: how often each upstream in use is
 * checked, and how recent its last success must be (three intervals by
 * default, so that one failed check alone does not take relabel out of
 * rotation).  A check never waits longer than RL_CHECK_STEP_MAX for one
 * step, whatever upstream_connect_timeout and upstream_timeout say. */
#define RL_CHECK_INTERVAL_DEFAULT 30000
#define RL_READY_MAX_AGE_FACTOR 3
#define RL_CHECK_STEP_MAX 30000

/* Upstream resolution and connections (upstream.h): how long a resolved
 * name is reused, how many names are kept, how long an address that
 * refused or timed out is skipped, how many such addresses are kept, and
 * how many fallback ports an upstream may list. */
#define RL_RESOLVE_CACHE_MS 60000
#define RL_RESOLVE_CACHE_ENTRIES 32
#define RL_BROKEN_ADDR_MS 30000
#define RL_BROKEN_ADDR_MAX 64
#define RL_UPSTREAM_FALLBACK_MAX 4

/* The metrics endpoint (HTTP/1.x): clients served at once (more are closed
 * at accept), the largest request head, and how long a client may take to
 * send its request and then to read the answer. */
#define RL_HTTP_CLIENTS_MAX 16
#define RL_HTTP_HEAD_MAX 4096
#define RL_HTTP_TIMEOUT 5000

/* Buffers.  `in` holds plaintext waiting for the session; `out` is capped
 * softly by the high-water mark: above it the session stops reading the
 * other leg until the write queue falls below the low-water mark. */
#define RL_CONN_IN_MAX (64 * 1024)
#define RL_CONN_OUT_HIWAT (256 * 1024)
#define RL_CONN_OUT_LOWAT (64 * 1024)
#define RL_CONN_OUT_MAX (4 * 1024 * 1024)

/* mbedTLS 2.28: one record is at most 16 KiB of plaintext plus expansion. */
#define RL_TLS_RECORD_MAX (16384 + 2048)

/* Mailgun documents 25 MB per message even though it advertises 50 MB. */
#define RL_MAILGUN_MAX_MESSAGE (25u * 1024u * 1024u)
/* SendGrid documents a total message size of 20,480,000 bytes (headers,
 * body and attachments); its newer web API allows 30 MB, but no SMTP
 * figure beyond the first is published. */
#define RL_SENDGRID_MAX_MESSAGE 20480000u
/* Amazon SES: 40 MB per message over SMTP, counted after encoding. */
#define RL_SES_MAX_MESSAGE (40u * 1024u * 1024u)
/* Postmark: 10 MB per message, attachments included, after encoding. */
#define RL_POSTMARK_MAX_MESSAGE (10u * 1024u * 1024u)

#endif
