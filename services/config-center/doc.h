/*
 * Configuration documents as config-center handles them: YAML or JSON text
 * parsed into cJSON, schema secrets sealed for storage (and "******" kept as
 * "the value already stored"), sealed values masked for every answer, and the
 * path-by-path diff of two versions.
 */
#ifndef CONFIG_CENTER_DOC_H
#define CONFIG_CENTER_DOC_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#define DOC_MASK "******"

struct jsonschema;
struct keyring;

/* Parses YAML (JSON is YAML) into cJSON; the root must be a mapping. NULL + "line L, column C:
 * problem". */
cJSON *doc_parse(const char *text, size_t len, char *errbuf, size_t errsize);
/*
 * Every schema secret of doc that is DOC_MASK is replaced by the clear value
 * stored at the same place in previous (a stored document, sealed values
 * opened with k). -ENOENT with errbuf naming the path when there is none.
 */
int doc_unmask(const struct jsonschema *schema, const struct keyring *k, const char *ns, cJSON *doc,
               const cJSON *previous, char *errbuf, size_t errsize);
/* Seals every schema secret of doc in place (aad config:<ns>:<pointer>). 0 or negative. */
int doc_seal(const struct jsonschema *schema, const struct keyring *k, const char *ns, cJSON *doc,
             char *errbuf, size_t errsize);
/* True when s has the keyring's sealed form "v1:<id>:<base64>". */
bool doc_is_sealed(const char *s);
/* Replaces every sealed value of doc by DOC_MASK. */
void doc_mask(cJSON *doc);
/* The value at a JSON Pointer, or NULL. */
const cJSON *doc_at(const cJSON *doc, const char *pointer);
/*
 * The changes from a to b (either may be NULL = empty) as an array of
 * {"path","op":"added"|"removed"|"changed","from","to"}, leaves compared by
 * their JSON Pointer; sealed values are compared opened and shown masked.
 * You own the result.
 */
cJSON *doc_diff(const cJSON *a, const cJSON *b, const struct keyring *k, const char *ns);
/* sha256 hex of text (65 bytes with the NUL). */
void doc_checksum(const char *text, size_t len, char out[65]);

#endif
