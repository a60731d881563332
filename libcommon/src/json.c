/*
 * cJSON helpers (see json.h): length-bounded parsing that reports where it
 * failed, compact printing and typed member access with errno-style results.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Doubles hold every integer up to 2^53 exactly; beyond that the text was rounded. */
#define JSON_MAX_EXACT_INT 9007199254740992.0

static void set_err(char *errbuf, size_t errsize, const char *what, size_t offset)
{
    if (errbuf && errsize)
        snprintf(errbuf, errsize, "%s at byte offset %zu", what, offset);
}

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

cJSON *json_parse(const char *text, size_t len, char *errbuf, size_t errsize)
{
    const char *end = NULL;

    if (!text || len == 0) {
        set_err(errbuf, errsize, "empty document", 0);
        return NULL;
    }
    /*
     * require_null_terminated is left off: cJSON then insists on a NUL inside
     * len, which a body read off the network does not have. Trailing bytes are
     * checked here instead.
     */
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end && end >= text ? (size_t)(end - text) : 0;
        set_err(errbuf, errsize, "invalid json", off);
        return NULL;
    }
    size_t off = (size_t)(end - text);
    while (off < len && is_json_space(text[off]))
        off++;
    if (off < len) {
        cJSON_Delete(root);
        set_err(errbuf, errsize, "unexpected data after json value", off);
        return NULL;
    }
    return root;
}

char *json_print(const cJSON *v, size_t *len)
{
    if (!v)
        return NULL;
    char *s = cJSON_PrintUnformatted(v);
    if (s && len)
        *len = strlen(s);
    return s;
}

const char *json_get_str(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

int json_get_int(const cJSON *obj, const char *key, int64_t *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item)
        return -ENOENT;
    if (!cJSON_IsNumber(item))
        return -EINVAL;
    double v = item->valuedouble;
    if (!isfinite(v) || v != trunc(v) || fabs(v) > JSON_MAX_EXACT_INT)
        return -EINVAL;
    *out = (int64_t)v;
    return 0;
}

int json_get_bool(const cJSON *obj, const char *key, bool *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item)
        return -ENOENT;
    if (!cJSON_IsBool(item))
        return -EINVAL;
    *out = cJSON_IsTrue(item);
    return 0;
}
