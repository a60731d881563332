/*
 * Small cJSON helpers used by handlers and consumers.
 */
#ifndef JSON_H
#define JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Parses exactly len bytes; NULL with errbuf saying where it failed. Caller deletes. */
cJSON *json_parse(const char *text, size_t len, char *errbuf, size_t errsize);
/* Compact serialisation; you own the result (free()). *len may be NULL. */
char *json_print(const cJSON *v, size_t *len);
/* The string member key of obj, or NULL when missing or not a string. */
const char *json_get_str(const cJSON *obj, const char *key);
/* Integer member (a JSON number with no fraction): 0, -ENOENT, or -EINVAL. */
int json_get_int(const cJSON *obj, const char *key, int64_t *out);
/* Boolean member: 0, -ENOENT, or -EINVAL. */
int json_get_bool(const cJSON *obj, const char *key, bool *out);

#endif
