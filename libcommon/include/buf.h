/*
 * Growable byte buffer with a hard size cap (curl's dynbuf idea): every body,
 * payload or rendered document the platform builds goes through one, so no
 * input can make it grow without bound. The data is always NUL-terminated.
 */
#ifndef BUF_H
#define BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
    size_t max; /* appends that would pass this fail with -E2BIG */
};

/* Initialises an empty buffer that may hold up to max bytes. */
void buf_init(struct buf *b, size_t max);
/* 0, or -E2BIG when the cap would be exceeded (the buffer is then unchanged). */
int buf_append(struct buf *b, const void *data, size_t len);
int buf_append_str(struct buf *b, const char *s);
int buf_appendf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vappendf(struct buf *b, const char *fmt, va_list ap);
/* Appends s as the body of a JSON string (without the quotes), escaping as RFC 8259 says. */
int buf_append_json_str(struct buf *b, const char *s);
/* Empties the buffer and keeps its storage. */
void buf_reset(struct buf *b);
/* Frees the storage; the buffer can be reused after buf_init. */
void buf_release(struct buf *b);
/* Hands over the storage (never NULL; "" for an empty buffer): you now own it and free() it. */
char *buf_detach(struct buf *b, size_t *len);

#endif
