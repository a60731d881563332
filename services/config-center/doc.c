/*
 * Documents (see doc.h). YAML goes through libyaml's document API with a cap
 * on depth and node count, so an alias bomb or a deep nest is refused rather
 * than expanded.
 */
#include "doc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "config_client.h"
#include "crypto.h"
#include "jsonschema.h"
#include "keyring.h"
#include "str.h"
#include "xalloc.h"

#define MAX_DEPTH 32
#define MAX_NODES 20000

struct conv {
    yaml_document_t *doc;
    size_t nodes;
    char *errbuf;
    size_t errsize;
};

static cJSON *scalar_value(const yaml_node_t *n)
{
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return cJSON_CreateString(s);
    if (len == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
        strcmp(s, "NULL") == 0)
        return cJSON_CreateNull();
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0)
        return cJSON_CreateTrue();
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0)
        return cJSON_CreateFalse();
    int64_t i;
    double d;
    if (str_to_int64(s, &i) == 0)
        return cJSON_CreateNumber((double)i);
    if (str_to_double(s, &d) == 0 && strspn(s, "0123456789+-.eE") == len)
        return cJSON_CreateNumber(d);
    return cJSON_CreateString(s);
}

static cJSON *convert(struct conv *x, const yaml_node_t *n, int depth)
{
    if (!n || ++x->nodes > MAX_NODES || depth > MAX_DEPTH) {
        snprintf(x->errbuf, x->errsize, "line %zu: document too large or nested too deeply",
                 n ? n->start_mark.line + 1 : 0);
        return NULL;
    }
    if (n->type == YAML_SCALAR_NODE)
        return scalar_value(n);
    if (n->type == YAML_SEQUENCE_NODE) {
        cJSON *arr = cJSON_CreateArray();
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
             it++) {
            cJSON *v = convert(x, yaml_document_get_node(x->doc, *it), depth + 1);
            if (!v) {
                cJSON_Delete(arr);
                return NULL;
            }
            cJSON_AddItemToArray(arr, v);
        }
        return arr;
    }
    cJSON *obj = cJSON_CreateObject();
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
        if (!k || k->type != YAML_SCALAR_NODE) {
            snprintf(x->errbuf, x->errsize, "line %zu: mapping keys must be scalars",
                     k ? k->start_mark.line + 1 : 0);
            cJSON_Delete(obj);
            return NULL;
        }
        const char *name = (const char *)k->data.scalar.value;
        if (cJSON_GetObjectItemCaseSensitive(obj, name)) {
            snprintf(x->errbuf, x->errsize, "line %zu: duplicate key '%.64s'",
                     k->start_mark.line + 1, name);
            cJSON_Delete(obj);
            return NULL;
        }
        cJSON *v = convert(x, yaml_document_get_node(x->doc, p->value), depth + 1);
        if (!v) {
            cJSON_Delete(obj);
            return NULL;
        }
        cJSON_AddItemToObject(obj, name, v);
    }
    return obj;
}

cJSON *doc_parse(const char *text, size_t len, char *errbuf, size_t errsize)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    cJSON *out = NULL;
    if (!yaml_parser_initialize(&parser)) {
        snprintf(errbuf, errsize, "cannot initialise the YAML parser");
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(errbuf, errsize, "line %zu, column %zu: %s", parser.problem_mark.line + 1,
                 parser.problem_mark.column + 1, parser.problem ? parser.problem : "syntax error");
        yaml_parser_delete(&parser);
        return NULL;
    }
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || root->type != YAML_MAPPING_NODE) {
        snprintf(errbuf, errsize, "line 1: the document must be a mapping of keys");
    } else {
        struct conv x = {&doc, 0, errbuf, errsize};
        out = convert(&x, root, 0);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return out;
}

bool doc_is_sealed(const char *s)
{
    if (!str_has_prefix(s, "v1:"))
        return false;
    s += 3;
    size_t id = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    if (id == 0 || s[id] != ':')
        return false;
    s += id + 1;
    size_t b64 = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=");
    return b64 > 0 && s[b64] == '\0';
}

const cJSON *doc_at(const cJSON *doc, const char *pointer)
{
    if (strcmp(pointer, "/") == 0 || pointer[0] == '\0')
        return doc;
    const cJSON *cur = doc;
    const char *p = pointer;
    while (cur && *p == '/') {
        p++;
        size_t n = strcspn(p, "/");
        char tok[256];
        size_t j = 0;
        for (size_t i = 0; i < n && j + 1 < sizeof(tok); i++) {
            if (p[i] == '~' && i + 1 < n && (p[i + 1] == '0' || p[i + 1] == '1')) {
                tok[j++] = p[i + 1] == '0' ? '~' : '/';
                i++;
            } else {
                tok[j++] = p[i];
            }
        }
        tok[j] = '\0';
        if (cJSON_IsArray(cur)) {
            int64_t idx;
            cur = str_to_int64(tok, &idx) == 0 && idx >= 0 && idx < INT32_MAX
                      ? cJSON_GetArrayItem(cur, (int)idx)
                      : NULL;
        } else {
            cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
        }
        p += n;
    }
    return cur;
}

/* Opens a sealed string into the JSON value it holds; NULL when it does not open. */
static cJSON *open_value(const struct keyring *k, const char *ns, const char *pointer,
                         const char *sealed)
{
    char aad[CONFIG_NS_MAX + JSONSCHEMA_PATH_MAX + 16];
    char *plain = NULL;
    size_t len = 0;
    if (!k || config_secret_aad(aad, sizeof(aad), ns, pointer) ||
        keyring_open(k, aad, sealed, &plain, &len) != 0)
        return NULL;
    cJSON *v = cJSON_ParseWithLength(plain, len);
    if (!v)
        v = cJSON_CreateString(plain);
    explicit_bzero(plain, len);
    free(plain);
    return v;
}

struct seal_ctx {
    const struct keyring *k;
    const char *ns;
    const cJSON *previous;
    char *errbuf;
    size_t errsize;
};

static int unmask_one(void *ud, const char *path, cJSON *parent, cJSON *value)
{
    struct seal_ctx *x = ud;
    if (!cJSON_IsString(value) || strcmp(value->valuestring, DOC_MASK) != 0)
        return 0;
    const cJSON *old = x->previous ? doc_at(x->previous, path) : NULL;
    cJSON *clear = cJSON_IsString(old) ? open_value(x->k, x->ns, path, old->valuestring) : NULL;
    if (!clear || !parent) {
        cJSON_Delete(clear);
        snprintf(x->errbuf, x->errsize, "%s: \"%s\" keeps the stored secret, but none is stored",
                 path, DOC_MASK);
        return -ENOENT;
    }
    jsonschema_replace(parent, value, clear);
    return 0;
}

int doc_unmask(const struct jsonschema *schema, const struct keyring *k, const char *ns, cJSON *doc,
               const cJSON *previous, char *errbuf, size_t errsize)
{
    struct seal_ctx x = {k, ns, previous, errbuf, errsize};
    return jsonschema_foreach_secret(schema, doc, unmask_one, &x);
}

static int seal_one(void *ud, const char *path, cJSON *parent, cJSON *value)
{
    struct seal_ctx *x = ud;
    char aad[CONFIG_NS_MAX + JSONSCHEMA_PATH_MAX + 16];
    if (!parent) {
        snprintf(x->errbuf, x->errsize, "/: the whole document cannot be a secret");
        return -EINVAL;
    }
    if (config_secret_aad(aad, sizeof(aad), x->ns, path)) {
        snprintf(x->errbuf, x->errsize, "%s: path too long", path);
        return -E2BIG;
    }
    char *text = cJSON_PrintUnformatted(value);
    char *sealed = text ? keyring_seal(x->k, aad, text, strlen(text)) : NULL;
    if (text) {
        explicit_bzero(text, strlen(text));
        free(text);
    }
    if (!sealed) {
        snprintf(x->errbuf, x->errsize, "%s: secret value too large to seal", path);
        return -E2BIG;
    }
    jsonschema_replace(parent, value, cJSON_CreateString(sealed));
    free(sealed);
    return 0;
}

int doc_seal(const struct jsonschema *schema, const struct keyring *k, const char *ns, cJSON *doc,
             char *errbuf, size_t errsize)
{
    struct seal_ctx x = {k, ns, NULL, errbuf, errsize};
    return jsonschema_foreach_secret(schema, doc, seal_one, &x);
}

void doc_mask(cJSON *doc)
{
    for (cJSON *m = doc ? doc->child : NULL; m; m = m->next) {
        if (cJSON_IsString(m) && doc_is_sealed(m->valuestring))
            cJSON_SetValuestring(m, DOC_MASK);
        else
            doc_mask(m);
    }
}

/* ---- diff ---- */

static void add_change(cJSON *out, const char *path, const char *op, const cJSON *from,
                       const cJSON *to)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "path", path);
    cJSON_AddStringToObject(c, "op", op);
    if (from) {
        cJSON *f = cJSON_Duplicate(from, true);
        doc_mask(f);
        if (cJSON_IsString(f) && doc_is_sealed(f->valuestring))
            cJSON_SetValuestring(f, DOC_MASK);
        cJSON_AddItemToObject(c, "from", f);
    }
    if (to) {
        cJSON *t = cJSON_Duplicate(to, true);
        doc_mask(t);
        if (cJSON_IsString(t) && doc_is_sealed(t->valuestring))
            cJSON_SetValuestring(t, DOC_MASK);
        cJSON_AddItemToObject(c, "to", t);
    }
    cJSON_AddItemToArray(out, c);
}

static bool leaves_equal(const cJSON *a, const cJSON *b, const struct keyring *k, const char *ns,
                         const char *path)
{
    if (cJSON_IsString(a) && cJSON_IsString(b) && doc_is_sealed(a->valuestring) &&
        doc_is_sealed(b->valuestring)) {
        cJSON *pa = open_value(k, ns, path, a->valuestring);
        cJSON *pb = open_value(k, ns, path, b->valuestring);
        bool eq =
            pa && pb ? cJSON_Compare(pa, pb, true) : strcmp(a->valuestring, b->valuestring) == 0;
        cJSON_Delete(pa);
        cJSON_Delete(pb);
        return eq;
    }
    return cJSON_Compare(a, b, true);
}

static void diff_walk(const cJSON *a, const cJSON *b, char *path, size_t size,
                      const struct keyring *k, const char *ns, cJSON *out)
{
    if (cJSON_IsObject(a) && cJSON_IsObject(b)) {
        const cJSON *m;
        cJSON_ArrayForEach(m, a)
        {
            size_t mark = strlen(path);
            if (jsonschema_path_push(path, size, m->string) == 0)
                diff_walk(m, cJSON_GetObjectItemCaseSensitive(b, m->string), path, size, k, ns,
                          out);
            path[mark] = '\0';
        }
        cJSON_ArrayForEach(m, b)
        {
            if (cJSON_GetObjectItemCaseSensitive(a, m->string))
                continue;
            size_t mark = strlen(path);
            if (jsonschema_path_push(path, size, m->string) == 0)
                add_change(out, path, "added", NULL, m);
            path[mark] = '\0';
        }
        return;
    }
    if (!a && b)
        add_change(out, path, "added", NULL, b);
    else if (a && !b)
        add_change(out, path, "removed", a, NULL);
    else if (a && b && !leaves_equal(a, b, k, ns, path[0] ? path : "/"))
        add_change(out, path[0] ? path : "/", "changed", a, b);
}

cJSON *doc_diff(const cJSON *a, const cJSON *b, const struct keyring *k, const char *ns)
{
    cJSON *out = cJSON_CreateArray();
    cJSON *empty = cJSON_CreateObject();
    char path[JSONSCHEMA_PATH_MAX] = "";
    diff_walk(a ? a : empty, b ? b : empty, path, sizeof(path), k, ns, out);
    cJSON_Delete(empty);
    return out;
}

void doc_checksum(const char *text, size_t len, char out[65])
{
    uint8_t sum[CRYPTO_SHA256_LEN];
    crypto_sha256(text, len, sum);
    crypto_hex_encode(sum, sizeof(sum), out, 65);
}
