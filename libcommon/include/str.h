/*
 * Small string helpers that replace the banned libc calls (atoi, strcpy, ...):
 * every conversion reports failure instead of returning 0.
 */
#ifndef STR_H
#define STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a whole decimal integer (no trailing garbage). 0 or -EINVAL / -ERANGE. */
int str_to_int64(const char *s, int64_t *out);
/* Parses a whole floating point number. 0 or -EINVAL / -ERANGE. */
int str_to_double(const char *s, double *out);
/* Parses true/false/yes/no/on/off/1/0 (case-insensitive). 0 or -EINVAL. */
int str_to_bool(const char *s, bool *out);
/* Copies src into dst of size n, always NUL-terminated; returns strlen(src) (truncated if >= n). */
size_t str_copy(char *dst, const char *src, size_t n);
/* True when s starts with prefix. */
bool str_has_prefix(const char *s, const char *prefix);
/* ASCII case-insensitive equality. */
bool str_eq_nocase(const char *a, const char *b);

#endif
