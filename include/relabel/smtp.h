/*
 * smtp.h - pure, streaming SMTP parsers: command lines, replies, the DATA
 * body scanner, EHLO capability filtering and provider-name hiding.
 *
 * Nothing here allocates, logs or does I/O.  Results point into the caller's
 * bytes and die with them.  Every function works on pointer+length and never
 * relies on NUL termination.
 */
#ifndef RELABEL_SMTP_H
#define RELABEL_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parser results that are not errors (errors are negative RL_E_*). */
#define RL_SMTP_OK 0
#define RL_SMTP_MORE 1 /* no complete line/reply yet: wait for more bytes */

/* ---- command lines (RFC 5321 §4.1) ---------------------------------- */

#define RL_SMTP_VERB_MAP(X)                                                                        \
    X(UNKNOWN, "")                                                                                 \
    X(HELO, "HELO")                                                                                \
    X(EHLO, "EHLO")                                                                                \
    X(MAIL, "MAIL")                                                                                \
    X(RCPT, "RCPT")                                                                                \
    X(DATA, "DATA")                                                                                \
    X(BDAT, "BDAT")                                                                                \
    X(RSET, "RSET")                                                                                \
    X(NOOP, "NOOP")                                                                                \
    X(QUIT, "QUIT")                                                                                \
    X(VRFY, "VRFY")                                                                                \
    X(EXPN, "EXPN")                                                                                \
    X(HELP, "HELP")                                                                                \
    X(AUTH, "AUTH")                                                                                \
    X(STARTTLS, "STARTTLS")

enum rl_smtp_verb {
#define RL_SMTP_VERB_ENUM(name, str) RL_SMTP_##name,
    RL_SMTP_VERB_MAP(RL_SMTP_VERB_ENUM)
#undef RL_SMTP_VERB_ENUM
};

const char *rl_smtp_verb_str(enum rl_smtp_verb verb);

struct rl_smtp_cmd {
    enum rl_smtp_verb verb;
    const char *line; /* whole line, without its terminator */
    size_t line_len;
    const char *arg; /* after the verb and the spaces following it; may be empty */
    size_t arg_len;
};

/*
 * Finds one line at the start of p[0..len).  A line ends with CRLF or with a
 * bare LF (commands are re-emitted with CRLF, so a bare LF in a command line
 * cannot smuggle anything).  The terminator is not part of the line.
 *
 * Returns RL_SMTP_OK with *line and *line_len set and *used = bytes including
 * the terminator; RL_SMTP_MORE when no terminator is present yet and len < max;
 * RL_E_LINE_TOO_LONG when no terminator is found within max bytes: *used is
 * then through the next LF if p[0..len) holds one (the long line is skipped
 * whole and any pipelined command after it is kept), else len, and the
 * caller discards up to and including the next LF still to come; tell the
 * two apart by p[*used - 1] == '\n';
 * RL_E_BAD_BYTE when the complete line holds a NUL or a CR that is not part
 * of the final CRLF (*used = the whole line with its terminator, so the
 * caller can skip it and answer 500).  `max` counts the terminator.
 */
int rl_smtp_line(const char *p, size_t len, size_t max, const char **line, size_t *line_len,
                 size_t *used);

/*
 * rl_smtp_line() plus verb recognition (case-insensitive; the verb ends at a
 * space or the end of the line; an unknown word gives RL_SMTP_UNKNOWN).  Same
 * return values and *used.
 */
int rl_smtp_cmd_parse(const char *p, size_t len, size_t max, struct rl_smtp_cmd *cmd, size_t *used);

/* ---- replies (RFC 5321 §4.2) ----------------------------------------- */

struct rl_smtp_reply {
    int code;     /* 200..599 */
    size_t len;   /* bytes of the whole reply, all lines, with terminators */
    size_t lines; /* number of lines */
};

/*
 * Parses one complete, possibly multi-line reply at the start of p[0..len).
 * Each line is three digits, then '-' (more lines follow) or ' ' or nothing
 * (last line), then text, then CRLF (a bare LF is accepted as terminator).
 * All lines must carry the same code; the first digit must be 2..5.
 *
 * Returns RL_SMTP_OK (r filled, r->len bytes consumed), RL_SMTP_MORE (the
 * reply is incomplete and shorter than max), RL_E_LINE_TOO_LONG (the reply
 * reached max bytes without ending), or RL_E_PROTO (a malformed line, a code
 * mismatch, a NUL or a bare CR).
 */
int rl_smtp_reply_parse(const char *p, size_t len, size_t max, struct rl_smtp_reply *r);

/*
 * Takes the next complete reply (at most RL_SMTP_REPLY_MAX bytes) off the
 * front of in: RL_SMTP_OK with r filled and *p pointing at its bytes, which
 * are already consumed from in (so a STARTTLS can see in empty) and stay
 * valid until in is written to again; RL_SMTP_MORE if it is incomplete;
 * negative (see rl_smtp_reply_parse) if it is malformed.
 */
struct rl_buf;
int rl_smtp_reply_take(struct rl_buf *in, struct rl_smtp_reply *r, const char **p);

/*
 * Iterates the lines of a reply that rl_smtp_reply_parse() accepted
 * (reply/len = its bytes).  Start with *off = 0; each call sets *text and
 * *text_len to the line's text (after "DDD-" / "DDD ", without terminator)
 * and *last, and returns false after the last line.
 */
bool rl_smtp_reply_line(const char *reply, size_t len, size_t *off, const char **text,
                        size_t *text_len, bool *last);

/*
 * Copies text to out (capacity cap), replacing every token that names the
 * provider by `repl`.  A token is a maximal run of [A-Za-z0-9._-]; it names
 * the provider when one of names[] occurs in it as a run of whole labels
 * (labels separated by '.', '-' or '_'), compared case-insensitively: so
 * "mailgun.org" hides "smtp.mailgun.org", "mailgun" hides "Mailgun" and
 * "mailgun-eu", while "notmailgun.org" and "mailgunner" stay.  Trailing dots
 * of a token are not compared but kept ("smtp.mailgun.org." at the end of a
 * sentence becomes repl + ".").  Output is truncated at cap, before the
 * first token that does not fit whole (a token cut short could name the
 * provider: "mailgunx" cut to "mailgun").  Returns the number of bytes
 * written.
 */
size_t rl_smtp_hide(const char *text, size_t len, const char *const *names, size_t nnames,
                    const char *repl, char *out, size_t cap);

/* ---- EHLO capabilities (RFC 5321 §4.1.1.1) ---------------------------- */

#define RL_EHLO_STARTTLS 0x01u
#define RL_EHLO_PIPELINING 0x02u
#define RL_EHLO_AUTH 0x04u
#define RL_EHLO_SIZE 0x08u
#define RL_EHLO_CHUNKING 0x10u
#define RL_EHLO_8BITMIME 0x20u
#define RL_EHLO_SMTPUTF8 0x40u

/* Capability flags found in a complete EHLO reply (the lines after the
 * first); *size gets the SIZE value (0 if absent or "SIZE" alone). */
unsigned rl_smtp_ehlo_caps(const char *reply, size_t len, uint64_t *size);

struct rl_smtp_ehlo_opts {
    const char *hostname; /* first line: "250-<hostname>" */
    bool starttls;        /* append STARTTLS */
    bool auth;            /* keep AUTH (never "AUTH=") */
    uint64_t size_cap;    /* 0: none; else SIZE is min(upstream, cap), added if absent */
    /* Non-NULL (with auth): relabel answers AUTH itself; this whole line
     * ("AUTH PLAIN LOGIN") replaces whatever AUTH the upstream offers. */
    const char *auth_line;
};

/*
 * Renders the EHLO reply relabel sends the client from the upstream's
 * complete 250 EHLO reply (reply/len, may be NULL/0 for a local reply).
 * Keeps only PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN, SMTPUTF8
 * and (if opts->auth) AUTH with its mechanisms, in the upstream's order;
 * drops everything else (STARTTLS, CHUNKING, BINARYMIME, unknown
 * extensions); appends STARTTLS if opts->starttls.  Output lines end in
 * CRLF, "250-" on all but the last, "250 " on the last.
 * Returns RL_SMTP_OK and *out_len, or RL_E_FULL if cap is too small.
 */
int rl_smtp_ehlo_render(const char *reply, size_t len, const struct rl_smtp_ehlo_opts *opts,
                        char *out, size_t cap, size_t *out_len);

/* ---- DATA body (RFC 5321 §4.1.1.4, §4.5.2) ---------------------------- */

/*
 * The scanner reads the client's message body as a stream, carrying state
 * across calls, and produces exactly the bytes the upstream must receive.
 *
 * - Only CRLF "." CRLF ends the message (the start of the body counts as
 *   following a CRLF, so ".\r\n" first is an empty message).
 * - The output never contains a bare CR, a bare LF or a NUL.  In normalise
 *   mode each bare CR or bare LF becomes CRLF; a line that starts after such
 *   a bare terminator and begins with "." gets one more "." (the client did
 *   not stuff it, since for SMTP it was not at the start of a line); a line
 *   that is exactly "." ended by a bare terminator becomes ".." CRLF.
 *   Client dot-stuffing on proper lines is forwarded unchanged.
 * - In reject mode a bare CR/LF sets error RL_E_BARE_NEWLINE; a NUL sets
 *   RL_E_NUL in both modes; output beyond max_size (if non-zero) sets
 *   RL_E_TOO_BIG.  Once an error is set nothing more is emitted, but the
 *   scanner keeps looking for the end so the client can be answered.
 * - The emitted stream includes the final ".\r\n" (only if no error).
 */
typedef int (*rl_smtp_data_emit_cb)(void *arg, const char *p, size_t n);

struct rl_smtp_data {
    unsigned state;
    bool reject_bare;
    uint64_t max_size;
    uint64_t size; /* bytes emitted so far, not counting the final ".\r\n" */
    int error;     /* 0 or RL_E_BARE_NEWLINE / RL_E_NUL / RL_E_TOO_BIG */
};

void rl_smtp_data_init(struct rl_smtp_data *d, bool reject_bare, uint64_t max_size);

/*
 * Consumes p[0..len), emitting output through emit(arg, ...) in as few
 * calls as possible (runs of input bytes are emitted in place, inserted
 * bytes from constant strings).  Returns the number of bytes consumed: len,
 * or fewer when the end of data was reached, in which case *done is set and
 * the bytes after the end are left for the caller (the next command).  A
 * non-zero return from emit stops the scan and is returned (negative).
 * Once *done, further calls consume nothing and return 0.  Bytes held back
 * (a CR, a "." at a line start) count as consumed: the scanner emits them
 * later, so the caller never keeps them.
 */
long rl_smtp_data_scan(struct rl_smtp_data *d, const char *p, size_t len, rl_smtp_data_emit_cb emit,
                       void *arg, bool *done);

/*
 * Finds the Message-ID header field (RFC 5322 §3.6.4) in a message as it
 * streams, so the message log line can be joined with the provider's own
 * event log.  Fed the bytes sent upstream; looks only at the header section
 * and at most RL_SMTP_MSGID_SCAN bytes of it, and keeps at most
 * sizeof(value) - 1 bytes of the value (a folded value is joined).
 */
#define RL_SMTP_MSGID_SCAN (64 * 1024)

struct rl_smtp_msgid {
    size_t seen;     /* bytes looked at */
    size_t line_len; /* bytes of the current line kept in line[] */
    bool done;       /* end of the header section, or the scan limit */
    bool in_field;   /* the current field is Message-ID: continuation lines belong to it */
    char line[256];
    char value[200];
};

void rl_smtp_msgid_init(struct rl_smtp_msgid *m);
void rl_smtp_msgid_feed(struct rl_smtp_msgid *m, const char *p, size_t n);

#endif
