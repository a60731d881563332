/*
 * A small JSON Schema validator for configuration documents: the subset the
 * platform's namespace schemas use (type, properties, required,
 * additionalProperties, enum, const, minimum/maximum, exclusiveMinimum/
 * exclusiveMaximum, minLength/maxLength, pattern as a POSIX extended regex,
 * items, minItems/maxItems) plus the vendor keyword "x-secret": true that marks
 * a value to be stored sealed. Other keywords are ignored, as JSON Schema says.
 *
 * Errors name the offending value by its JSON Pointer: "/ingest/max_batch: must
 * be <= 10000" ("/" is the whole document).
 */
#ifndef JSONSCHEMA_H
#define JSONSCHEMA_H

#include <stddef.h>

#include <cjson/cJSON.h>

#define JSONSCHEMA_PATH_MAX 512

struct jsonschema;

/*
 * Checks that schema is a usable schema (keyword types, patterns compile) and
 * keeps a copy. NULL with errbuf naming the schema location on failure.
 */
struct jsonschema *jsonschema_new(const cJSON *schema, char *errbuf, size_t errsize);
void jsonschema_free(struct jsonschema *s); /* NULL-safe */

/* 0 when doc is valid, else -EINVAL with the first error ("/path: problem") in errbuf. */
int jsonschema_validate(const struct jsonschema *s, const cJSON *doc, char *errbuf, size_t errsize);

/*
 * Calls fn for every value of doc whose schema says "x-secret": true, with its
 * JSON Pointer and its parent (NULL for the whole document). fn may replace
 * the value with jsonschema_replace; a non-zero return stops the walk and is
 * returned.
 */
typedef int (*jsonschema_secret_fn)(void *ud, const char *path, cJSON *parent, cJSON *value);
int jsonschema_foreach_secret(const struct jsonschema *s, cJSON *doc, jsonschema_secret_fn fn,
                              void *ud);

/* Puts replacement (which parent now owns) where value was, keeping its member name; frees value.
 */
void jsonschema_replace(cJSON *parent, cJSON *value, cJSON *replacement);

/* Appends "/" + the escaped token (~ -> ~0, / -> ~1) to a JSON Pointer; -E2BIG when full. */
int jsonschema_path_push(char *path, size_t size, const char *token);

#endif
