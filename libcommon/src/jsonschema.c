/*
 * The JSON Schema subset of jsonschema.h. Patterns are compiled once by
 * jsonschema_new into a table keyed by the schema node, so validating a
 * document never compiles a regex.
 */
#include "jsonschema.h"

#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define MAX_DEPTH 32

struct pattern {
    const cJSON *node; /* the "pattern" string node in the kept schema */
    regex_t re;
};

struct jsonschema {
    cJSON *root;
    struct pattern *patterns;
    size_t npatterns, cap;
};

static void set_err(char *errbuf, size_t errsize, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void set_err(char *errbuf, size_t errsize, const char *path, const char *fmt, ...)
{
    if (!errbuf || !errsize)
        return;
    int n = snprintf(errbuf, errsize, "%s: ", path[0] ? path : "/");
    if (n < 0 || (size_t)n >= errsize)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf + n, errsize - (size_t)n, fmt, ap);
    va_end(ap);
}

int jsonschema_path_push(char *path, size_t size, const char *token)
{
    size_t len = strlen(path);
    if (len + 1 >= size)
        return -E2BIG;
    path[len++] = '/';
    for (const char *p = token; *p; p++) {
        const char *esc = *p == '~' ? "~0" : *p == '/' ? "~1" : NULL;
        size_t need = esc ? 2 : 1;
        if (len + need >= size) {
            path[len] = '\0';
            return -E2BIG;
        }
        if (esc) {
            memcpy(path + len, esc, 2);
        } else {
            path[len] = *p;
        }
        len += need;
    }
    path[len] = '\0';
    return 0;
}

/* ---- checking the schema itself ---- */

static const char *const TYPES[] = {"object",  "array",   "string", "number",
                                    "integer", "boolean", "null"};

static bool known_type(const char *t)
{
    for (size_t i = 0; i < sizeof(TYPES) / sizeof(TYPES[0]); i++)
        if (strcmp(t, TYPES[i]) == 0)
            return true;
    return false;
}

static int check_schema(struct jsonschema *s, const cJSON *node, char *path, size_t pathsize,
                        int depth, char *errbuf, size_t errsize);

static int check_sub(struct jsonschema *s, const cJSON *sub, char *path, size_t pathsize,
                     const char *kw, const char *name, int depth, char *errbuf, size_t errsize)
{
    size_t mark = strlen(path);
    int rc = jsonschema_path_push(path, pathsize, kw);
    if (rc == 0 && name)
        rc = jsonschema_path_push(path, pathsize, name);
    if (rc == 0)
        rc = check_schema(s, sub, path, pathsize, depth + 1, errbuf, errsize);
    else
        set_err(errbuf, errsize, path, "schema nested too deeply");
    path[mark] = '\0';
    return rc;
}

static int check_number_kw(const cJSON *node, const char *kw, const char *path, char *errbuf,
                           size_t errsize)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(node, kw);
    if (v && !cJSON_IsNumber(v)) {
        set_err(errbuf, errsize, path, "\"%s\" must be a number", kw);
        return -EINVAL;
    }
    return 0;
}

static int check_schema(struct jsonschema *s, const cJSON *node, char *path, size_t pathsize,
                        int depth, char *errbuf, size_t errsize)
{
    if (cJSON_IsBool(node))
        return 0;
    if (!cJSON_IsObject(node)) {
        set_err(errbuf, errsize, path, "a schema must be an object or a boolean");
        return -EINVAL;
    }
    if (depth > MAX_DEPTH) {
        set_err(errbuf, errsize, path, "schema nested deeper than %d levels", MAX_DEPTH);
        return -EINVAL;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (type) {
        bool ok = cJSON_IsString(type) && known_type(type->valuestring);
        if (cJSON_IsArray(type)) {
            ok = cJSON_GetArraySize(type) > 0;
            const cJSON *t;
            cJSON_ArrayForEach(t, type) ok = ok && cJSON_IsString(t) && known_type(t->valuestring);
        }
        if (!ok) {
            set_err(errbuf, errsize, path, "\"type\" must name JSON types");
            return -EINVAL;
        }
    }
    static const char *const numeric[] = {"minimum",          "maximum",   "exclusiveMinimum",
                                          "exclusiveMaximum", "minLength", "maxLength",
                                          "minItems",         "maxItems"};
    for (size_t i = 0; i < sizeof(numeric) / sizeof(numeric[0]); i++)
        if (check_number_kw(node, numeric[i], path, errbuf, errsize))
            return -EINVAL;
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(node, "required");
    if (req) {
        bool ok = cJSON_IsArray(req);
        const cJSON *r;
        cJSON_ArrayForEach(r, req) ok = ok && cJSON_IsString(r);
        if (!ok) {
            set_err(errbuf, errsize, path, "\"required\" must be an array of strings");
            return -EINVAL;
        }
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(node, "enum");
    if (en && !cJSON_IsArray(en)) {
        set_err(errbuf, errsize, path, "\"enum\" must be an array");
        return -EINVAL;
    }
    const cJSON *secret = cJSON_GetObjectItemCaseSensitive(node, "x-secret");
    if (secret && !cJSON_IsBool(secret)) {
        set_err(errbuf, errsize, path, "\"x-secret\" must be a boolean");
        return -EINVAL;
    }
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(node, "pattern");
    if (pat) {
        if (!cJSON_IsString(pat)) {
            set_err(errbuf, errsize, path, "\"pattern\" must be a string");
            return -EINVAL;
        }
        if (s->npatterns == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 8;
            s->patterns = xrealloc(s->patterns, s->cap * sizeof(*s->patterns));
        }
        struct pattern *p = &s->patterns[s->npatterns];
        if (regcomp(&p->re, pat->valuestring, REG_EXTENDED | REG_NOSUB) != 0) {
            set_err(errbuf, errsize, path, "\"pattern\" is not a valid POSIX extended regex");
            return -EINVAL;
        }
        p->node = pat;
        s->npatterns++;
    }
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(node, "properties");
    if (props) {
        if (!cJSON_IsObject(props)) {
            set_err(errbuf, errsize, path, "\"properties\" must be an object");
            return -EINVAL;
        }
        const cJSON *p;
        cJSON_ArrayForEach(p, props)
        {
            int rc =
                check_sub(s, p, path, pathsize, "properties", p->string, depth, errbuf, errsize);
            if (rc)
                return rc;
        }
    }
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(node, "additionalProperties");
    if (addl) {
        int rc = check_sub(s, addl, path, pathsize, "additionalProperties", NULL, depth, errbuf,
                           errsize);
        if (rc)
            return rc;
    }
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(node, "items");
    if (items) {
        int rc = check_sub(s, items, path, pathsize, "items", NULL, depth, errbuf, errsize);
        if (rc)
            return rc;
    }
    return 0;
}

struct jsonschema *jsonschema_new(const cJSON *schema, char *errbuf, size_t errsize)
{
    struct jsonschema *s = xcalloc(1, sizeof(*s));
    s->root = cJSON_Duplicate(schema, true);
    if (!s->root) {
        set_err(errbuf, errsize, "", "cannot copy the schema");
        goto out_free;
    }
    char path[JSONSCHEMA_PATH_MAX] = "";
    if (check_schema(s, s->root, path, sizeof(path), 0, errbuf, errsize))
        goto out_free;
    return s;

out_free:
    jsonschema_free(s);
    return NULL;
}

void jsonschema_free(struct jsonschema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->npatterns; i++)
        regfree(&s->patterns[i].re);
    free(s->patterns);
    cJSON_Delete(s->root);
    free(s);
}

/* ---- validating a document ---- */

static const char *json_type(const cJSON *v)
{
    if (cJSON_IsObject(v))
        return "object";
    if (cJSON_IsArray(v))
        return "array";
    if (cJSON_IsString(v))
        return "string";
    if (cJSON_IsNumber(v))
        return "number";
    if (cJSON_IsBool(v))
        return "boolean";
    return "null";
}

static bool is_integer(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && floor(v->valuedouble) == v->valuedouble;
}

static bool type_matches(const char *t, const cJSON *v)
{
    if (strcmp(t, "integer") == 0)
        return is_integer(v);
    return strcmp(t, json_type(v)) == 0;
}

static size_t utf8_length(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static const regex_t *find_pattern(const struct jsonschema *s, const cJSON *node)
{
    for (size_t i = 0; i < s->npatterns; i++)
        if (s->patterns[i].node == node)
            return &s->patterns[i].re;
    return NULL;
}

static int validate(const struct jsonschema *s, const cJSON *sch, const cJSON *v, char *path,
                    size_t pathsize, char *errbuf, size_t errsize);

static int validate_child(const struct jsonschema *s, const cJSON *sch, const cJSON *v,
                          const char *token, char *path, size_t pathsize, char *errbuf,
                          size_t errsize)
{
    size_t mark = strlen(path);
    int rc = jsonschema_path_push(path, pathsize, token);
    if (rc == 0)
        rc = validate(s, sch, v, path, pathsize, errbuf, errsize);
    else
        set_err(errbuf, errsize, path, "document nested too deeply");
    path[mark] = '\0';
    return rc;
}

static int validate_object(const struct jsonschema *s, const cJSON *sch, const cJSON *v, char *path,
                           size_t pathsize, char *errbuf, size_t errsize)
{
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(sch, "required");
    const cJSON *r;
    cJSON_ArrayForEach(r, req)
    {
        if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) {
            size_t mark = strlen(path);
            jsonschema_path_push(path, pathsize, r->valuestring);
            set_err(errbuf, errsize, path, "is required");
            path[mark] = '\0';
            return -EINVAL;
        }
    }
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(sch, "properties");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(sch, "additionalProperties");
    const cJSON *m;
    cJSON_ArrayForEach(m, v)
    {
        const cJSON *sub = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
        if (!sub && addl && cJSON_IsFalse(addl)) {
            size_t mark = strlen(path);
            jsonschema_path_push(path, pathsize, m->string);
            set_err(errbuf, errsize, path, "is not an allowed property");
            path[mark] = '\0';
            return -EINVAL;
        }
        if (!sub)
            sub = addl;
        if (sub) {
            int rc = validate_child(s, sub, m, m->string, path, pathsize, errbuf, errsize);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int validate_array(const struct jsonschema *s, const cJSON *sch, const cJSON *v, char *path,
                          size_t pathsize, char *errbuf, size_t errsize)
{
    int n = cJSON_GetArraySize(v);
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(sch, "minItems");
    const cJSON *hi = cJSON_GetObjectItemCaseSensitive(sch, "maxItems");
    if (lo && n < lo->valuedouble) {
        set_err(errbuf, errsize, path, "must have at least %g items", lo->valuedouble);
        return -EINVAL;
    }
    if (hi && n > hi->valuedouble) {
        set_err(errbuf, errsize, path, "must have at most %g items", hi->valuedouble);
        return -EINVAL;
    }
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(sch, "items");
    if (!items)
        return 0;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        char tok[16];
        snprintf(tok, sizeof(tok), "%d", i++);
        int rc = validate_child(s, items, e, tok, path, pathsize, errbuf, errsize);
        if (rc)
            return rc;
    }
    return 0;
}

static int validate_scalar(const struct jsonschema *s, const cJSON *sch, const cJSON *v,
                           const char *path, char *errbuf, size_t errsize)
{
    if (cJSON_IsNumber(v)) {
        double x = v->valuedouble;
        const cJSON *k;
        if ((k = cJSON_GetObjectItemCaseSensitive(sch, "minimum")) && x < k->valuedouble) {
            set_err(errbuf, errsize, path, "must be >= %g", k->valuedouble);
            return -EINVAL;
        }
        if ((k = cJSON_GetObjectItemCaseSensitive(sch, "maximum")) && x > k->valuedouble) {
            set_err(errbuf, errsize, path, "must be <= %g", k->valuedouble);
            return -EINVAL;
        }
        if ((k = cJSON_GetObjectItemCaseSensitive(sch, "exclusiveMinimum")) &&
            x <= k->valuedouble) {
            set_err(errbuf, errsize, path, "must be > %g", k->valuedouble);
            return -EINVAL;
        }
        if ((k = cJSON_GetObjectItemCaseSensitive(sch, "exclusiveMaximum")) &&
            x >= k->valuedouble) {
            set_err(errbuf, errsize, path, "must be < %g", k->valuedouble);
            return -EINVAL;
        }
    }
    if (cJSON_IsString(v)) {
        size_t n = utf8_length(v->valuestring);
        const cJSON *k;
        if ((k = cJSON_GetObjectItemCaseSensitive(sch, "minLength")) &&
            (double)n < k->valuedouble) {
            set_err(errbuf, errsize, path, "must be at least %g characters long", k->valuedouble);
            return -EINVAL;
        }
        if ((k = cJSON_GetObjectItemCaseSensitive(sch, "maxLength")) &&
            (double)n > k->valuedouble) {
            set_err(errbuf, errsize, path, "must be at most %g characters long", k->valuedouble);
            return -EINVAL;
        }
        const regex_t *re = find_pattern(s, cJSON_GetObjectItemCaseSensitive(sch, "pattern"));
        if (re && regexec(re, v->valuestring, 0, NULL, 0) != 0) {
            set_err(errbuf, errsize, path, "does not match the pattern of the schema");
            return -EINVAL;
        }
    }
    return 0;
}

static int validate(const struct jsonschema *s, const cJSON *sch, const cJSON *v, char *path,
                    size_t pathsize, char *errbuf, size_t errsize)
{
    if (cJSON_IsFalse(sch)) {
        set_err(errbuf, errsize, path, "is not allowed");
        return -EINVAL;
    }
    if (!cJSON_IsObject(sch))
        return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(sch, "type");
    if (cJSON_IsString(type) && !type_matches(type->valuestring, v)) {
        set_err(errbuf, errsize, path, "must be of type %s, not %s", type->valuestring,
                json_type(v));
        return -EINVAL;
    }
    if (cJSON_IsArray(type)) {
        bool any = false;
        const cJSON *t;
        cJSON_ArrayForEach(t, type) any = any || type_matches(t->valuestring, v);
        if (!any) {
            set_err(errbuf, errsize, path, "has the wrong type (%s)", json_type(v));
            return -EINVAL;
        }
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(sch, "enum");
    if (en) {
        bool any = false;
        const cJSON *e;
        cJSON_ArrayForEach(e, en) any = any || cJSON_Compare(e, v, true);
        if (!any) {
            set_err(errbuf, errsize, path, "must be one of the values the schema lists");
            return -EINVAL;
        }
    }
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(sch, "const");
    if (cn && !cJSON_Compare(cn, v, true)) {
        set_err(errbuf, errsize, path, "must equal the schema's constant");
        return -EINVAL;
    }
    if (cJSON_IsObject(v))
        return validate_object(s, sch, v, path, pathsize, errbuf, errsize);
    if (cJSON_IsArray(v))
        return validate_array(s, sch, v, path, pathsize, errbuf, errsize);
    return validate_scalar(s, sch, v, path, errbuf, errsize);
}

int jsonschema_validate(const struct jsonschema *s, const cJSON *doc, char *errbuf, size_t errsize)
{
    char path[JSONSCHEMA_PATH_MAX] = "";
    return validate(s, s->root, doc, path, sizeof(path), errbuf, errsize);
}

/* ---- secrets ---- */

void jsonschema_replace(cJSON *parent, cJSON *value, cJSON *replacement)
{
    if (value->string && cJSON_IsObject(parent)) {
        replacement->string = xstrdup(value->string);
        replacement->type &= ~cJSON_StringIsConst;
    }
    cJSON_ReplaceItemViaPointer(parent, value, replacement);
}

static int walk_secrets(const cJSON *sch, cJSON *parent, cJSON *v, char *path, size_t pathsize,
                        jsonschema_secret_fn fn, void *ud)
{
    if (!cJSON_IsObject(sch))
        return 0;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sch, "x-secret")))
        return fn(ud, path[0] ? path : "/", parent, v);
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(sch, "properties");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(sch, "additionalProperties");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(sch, "items");
    int rc = 0;
    if (cJSON_IsObject(v)) {
        cJSON *m = v->child;
        while (m && rc == 0) {
            cJSON *next = m->next; /* fn may replace m */
            const cJSON *sub = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
            size_t mark = strlen(path);
            if (jsonschema_path_push(path, pathsize, m->string) == 0)
                rc = walk_secrets(sub ? sub : addl, v, m, path, pathsize, fn, ud);
            path[mark] = '\0';
            m = next;
        }
    } else if (cJSON_IsArray(v) && items) {
        int i = 0;
        cJSON *e = v->child;
        while (e && rc == 0) {
            cJSON *next = e->next;
            char tok[16];
            snprintf(tok, sizeof(tok), "%d", i++);
            size_t mark = strlen(path);
            if (jsonschema_path_push(path, pathsize, tok) == 0)
                rc = walk_secrets(items, v, e, path, pathsize, fn, ud);
            path[mark] = '\0';
            e = next;
        }
    }
    return rc;
}

int jsonschema_foreach_secret(const struct jsonschema *s, cJSON *doc, jsonschema_secret_fn fn,
                              void *ud)
{
    char path[JSONSCHEMA_PATH_MAX] = "";
    return walk_secrets(s->root, NULL, doc, path, sizeof(path), fn, ud);
}
