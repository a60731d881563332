/*
 * Service configuration (see config.h): a schema of declared keys, values taken
 * from defaults, then a YAML/JSON document, then the environment, each checked
 * against the schema with errors that point at the file and line.
 *
 * Documents are read with libyaml's document API so every node keeps its
 * position. Nested mappings become dotted keys ("http: {port: 1}" is
 * "http.port"); below a CFG_MAP key every scalar is collected under its dotted
 * sub-name, in document order, for handing to a library untouched.
 *
 * Every operation that applies several values (a document, the environment)
 * works on a clone and swaps it in only on success, so a failed load leaves
 * the configuration exactly as it was.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "log.h"
#include "str.h"
#include "xalloc.h"

/* Caps: a config document is small; anything bigger is a mistake or an attack. */
#define CFG_MAX_DOC_BYTES   (1024 * 1024)
#define CFG_MAX_DEPTH       32    /* nesting of mappings (also stops alias cycles) */
#define CFG_MAX_NODES       10000 /* keys visited per document (stops alias expansion bombs) */
#define CFG_MAX_MAP_ENTRIES 1024
#define CFG_MAX_KEY_LEN     256
#define CFG_ECHO_MAX        64 /* how much of a bad value an error message repeats */
#define CFG_MSG_MAX         512

/* A string -> index table with open addressing; keys are borrowed unless owns_keys. */
struct strtab_slot {
    const char *key;
    size_t len;
    size_t val;
};

struct strtab {
    struct strtab_slot *slots;
    size_t cap; /* power of two, or 0 */
    size_t n;
    bool owns_keys;
};

struct map_item {
    char *name;
    char *value;
};

union cfg_value {
    int64_t i;
    double d;
    bool b;
};

struct cfg_entry {
    const struct cfg_key *key;
    char *text; /* NULL when unset; unused for CFG_MAP */
    union cfg_value v;
    struct map_item *items; /* CFG_MAP only, document order */
    size_t nitems;
    size_t itemcap;
};

struct cfg {
    struct cfg_entry *entries;
    size_t n;
    size_t cap;
    struct strtab index;    /* declared key -> position in entries */
    struct strtab prefixes; /* proper dotted prefixes of declared keys: "http" for "http.port" */
};

/* State of one document load. */
struct load_ctx {
    struct cfg *c; /* the working copy */
    yaml_document_t *doc;
    const char *name;
    char *errbuf;
    size_t errsize;
    struct strtab seen; /* every path set by this document -> its line, for duplicates */
    size_t nodes;
};

static void set_err(char *errbuf, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errbuf, size_t errsize, const char *fmt, ...)
{
    if (!errbuf || errsize == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errsize, fmt, ap);
    va_end(ap);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fatal(const char *fmt, ...)
{
    char msg[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    LOG_ERROR("%s", msg);
    abort();
}

/* ---- string table ---- */

static uint64_t strtab_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static bool strtab_get(const struct strtab *t, const char *s, size_t len, size_t *val)
{
    if (t->cap == 0)
        return false;
    size_t mask = t->cap - 1;
    for (size_t i = strtab_hash(s, len) & mask; t->slots[i].key; i = (i + 1) & mask) {
        if (t->slots[i].len == len && memcmp(t->slots[i].key, s, len) == 0) {
            if (val)
                *val = t->slots[i].val;
            return true;
        }
    }
    return false;
}

static void strtab_insert_slot(struct strtab_slot *slots, size_t cap, struct strtab_slot s)
{
    size_t mask = cap - 1;
    size_t i = strtab_hash(s.key, s.len) & mask;
    while (slots[i].key)
        i = (i + 1) & mask;
    slots[i] = s;
}

/* Adds key (absent by contract); the table takes key over when owns_keys. */
static void strtab_put(struct strtab *t, const char *key, size_t val)
{
    if ((t->n + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct strtab_slot *slots = xcalloc(cap, sizeof(*slots));
        for (size_t i = 0; i < t->cap; i++) {
            if (t->slots[i].key)
                strtab_insert_slot(slots, cap, t->slots[i]);
        }
        free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    strtab_insert_slot(t->slots, t->cap, (struct strtab_slot){key, strlen(key), val});
    t->n++;
}

static void strtab_release(struct strtab *t)
{
    if (t->owns_keys) {
        for (size_t i = 0; i < t->cap; i++)
            free((char *)t->slots[i].key);
    }
    free(t->slots);
    t->slots = NULL;
    t->cap = t->n = 0;
}

/* ---- schema lookup ---- */

static struct cfg_entry *find_n(const struct cfg *c, const char *key, size_t len)
{
    size_t pos;
    if (!strtab_get(&c->index, key, len, &pos))
        return NULL;
    return &c->entries[pos];
}

static struct cfg_entry *find(const struct cfg *c, const char *key)
{
    return find_n(c, key, strlen(key));
}

/* The CFG_MAP key that path lies below ("kafka.producer" for "kafka.producer.linger.ms"). */
static struct cfg_entry *find_map_prefix(const struct cfg *c, const char *path, size_t *prefix_len)
{
    for (const char *dot = strchr(path, '.'); dot; dot = strchr(dot + 1, '.')) {
        struct cfg_entry *e = find_n(c, path, (size_t)(dot - path));
        if (e && e->key->type == CFG_MAP) {
            *prefix_len = (size_t)(dot - path);
            return e;
        }
    }
    return NULL;
}

static bool is_prefix(const struct cfg *c, const char *path)
{
    return strtab_get(&c->prefixes, path, strlen(path), NULL);
}

static void index_entry(struct cfg *c, size_t pos)
{
    const char *key = c->entries[pos].key->key;
    strtab_put(&c->index, key, pos);
    for (const char *dot = strchr(key, '.'); dot; dot = strchr(dot + 1, '.')) {
        size_t len = (size_t)(dot - key);
        if (!strtab_get(&c->prefixes, key, len, NULL))
            strtab_put(&c->prefixes, xstrndup(key, len), 0);
    }
}

/* ---- values ---- */

static const char *type_name(enum cfg_type t)
{
    switch (t) {
    case CFG_INT:
        return "int";
    case CFG_DOUBLE:
        return "double";
    case CFG_BOOL:
        return "bool";
    case CFG_STRING:
        return "string";
    case CFG_MAP:
        return "map";
    }
    return "unknown";
}

static bool has_bounds(const struct cfg_key *k)
{
    return !(k->min == 0 && k->max == 0);
}

/* What a valid value looks like, for error messages: "an integer between 1 and 65535". */
static void describe(const struct cfg_key *k, char *out, size_t size)
{
    switch (k->type) {
    case CFG_INT:
        if (has_bounds(k))
            snprintf(out, size, "an integer between %.0f and %.0f", k->min, k->max);
        else
            snprintf(out, size, "an integer");
        break;
    case CFG_DOUBLE:
        if (has_bounds(k))
            snprintf(out, size, "a number between %g and %g", k->min, k->max);
        else
            snprintf(out, size, "a number");
        break;
    case CFG_BOOL:
        snprintf(out, size, "a boolean (true/false, yes/no, on/off)");
        break;
    case CFG_STRING:
        snprintf(out, size, "a string");
        break;
    case CFG_MAP:
        snprintf(out, size, "a mapping of names to values");
        break;
    }
}

/*
 * Checks text (len bytes, is_null for a YAML null or an empty override) against
 * k and parses it into out. The message names the key but not the source, which
 * the caller prepends.
 */
static int check_value(const struct cfg_key *k, const char *text, size_t len, bool is_null,
                       union cfg_value *out, char *msg, size_t msgsize)
{
    char want[128];
    describe(k, want, sizeof(want));
    if (memchr(text, '\0', len)) {
        set_err(msg, msgsize, "'%s' must not contain a NUL byte", k->key);
        return -EINVAL;
    }
    if (is_null && k->type != CFG_STRING) {
        set_err(msg, msgsize, "'%s' must be %s, got an empty value", k->key, want);
        return -EINVAL;
    }
    char *s = xstrndup(text, len);
    int rc = 0;
    switch (k->type) {
    case CFG_INT:
        if (str_to_int64(s, &out->i) < 0 ||
            (has_bounds(k) && ((double)out->i < k->min || (double)out->i > k->max)))
            rc = -EINVAL;
        break;
    case CFG_DOUBLE:
        if (str_to_double(s, &out->d) < 0 ||
            (has_bounds(k) && (out->d < k->min || out->d > k->max)))
            rc = -EINVAL;
        break;
    case CFG_BOOL:
        if (str_to_bool(s, &out->b) < 0)
            rc = -EINVAL;
        break;
    case CFG_STRING:
        /* The value itself is never repeated: strings carry secrets. */
        if (k->max > 0 && ((double)len < k->min || (double)len > k->max)) {
            set_err(msg, msgsize, "'%s' must be between %.0f and %.0f characters long, got %zu",
                    k->key, k->min, k->max, len);
            free(s);
            return -EINVAL;
        }
        break;
    case CFG_MAP:
        set_err(msg, msgsize, "'%s' is a map; set its entries as '%s.<name>'", k->key, k->key);
        free(s);
        return -EINVAL;
    }
    if (rc < 0)
        set_err(msg, msgsize, "'%s' must be %s, got '%.*s'%s", k->key, want, CFG_ECHO_MAX, s,
                len > CFG_ECHO_MAX ? "..." : "");
    free(s);
    return rc;
}

static void entry_set(struct cfg_entry *e, const char *text, size_t len, union cfg_value v)
{
    free(e->text);
    e->text = xstrndup(text, len);
    e->v = v;
}

/* Sets name in a CFG_MAP entry: an existing name keeps its place, a new one goes last. */
static int map_put(struct cfg_entry *e, const char *name, const char *value, size_t len)
{
    for (size_t i = 0; i < e->nitems; i++) {
        if (strcmp(e->items[i].name, name) == 0) {
            free(e->items[i].value);
            e->items[i].value = xstrndup(value, len);
            return 0;
        }
    }
    if (e->nitems == CFG_MAX_MAP_ENTRIES)
        return -E2BIG;
    if (e->nitems == e->itemcap) {
        e->itemcap = e->itemcap ? e->itemcap * 2 : 8;
        e->items = xrealloc(e->items, e->itemcap * sizeof(*e->items));
    }
    e->items[e->nitems].name = xstrdup(name);
    e->items[e->nitems].value = xstrndup(value, len);
    e->nitems++;
    return 0;
}

static void entry_release(struct cfg_entry *e)
{
    free(e->text);
    for (size_t i = 0; i < e->nitems; i++) {
        free(e->items[i].name);
        free(e->items[i].value);
    }
    free(e->items);
}

/* ---- lifecycle ---- */

struct cfg *cfg_new(void)
{
    struct cfg *c = xcalloc(1, sizeof(*c));
    c->prefixes.owns_keys = true;
    return c;
}

void cfg_free(struct cfg *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        entry_release(&c->entries[i]);
    free(c->entries);
    strtab_release(&c->index);
    strtab_release(&c->prefixes);
    free(c);
}

static bool key_name_valid(const char *key)
{
    size_t len = strlen(key);
    return len > 0 && len <= CFG_MAX_KEY_LEN && key[0] != '.' && key[len - 1] != '.' &&
           !strstr(key, "..");
}

/* Schema mistakes are programming errors: they abort with the reason. */
static void check_schema_key(const struct cfg *c, const struct cfg_key *k)
{
    if (!k->key || !key_name_valid(k->key))
        fatal("config schema: invalid key name '%s'", k->key ? k->key : "(null)");
    if ((unsigned)k->type > CFG_MAP)
        fatal("config schema: key '%s' has an invalid type %d", k->key, (int)k->type);
    /* A path cannot be both a value and a mapping holding other keys. */
    if (is_prefix(c, k->key))
        fatal("config schema: key '%s' is also the parent of other keys", k->key);
    for (const char *dot = strchr(k->key, '.'); dot; dot = strchr(dot + 1, '.')) {
        if (find_n(c, k->key, (size_t)(dot - k->key)))
            fatal("config schema: key '%s' lies below the key '%.*s'", k->key, (int)(dot - k->key),
                  k->key);
    }
    if (k->type == CFG_MAP) {
        if (k->def && *k->def)
            fatal("config schema: map key '%s' cannot have a default", k->key);
        if (k->env)
            fatal("config schema: map key '%s' cannot have an environment override", k->key);
    }
}

int cfg_declare(struct cfg *c, const struct cfg_key *keys, size_t nkeys)
{
    for (size_t i = 0; i < nkeys; i++) {
        if (keys[i].key && find(c, keys[i].key))
            return -EEXIST;
        for (size_t j = 0; j < i; j++) {
            if (keys[i].key && keys[j].key && strcmp(keys[i].key, keys[j].key) == 0)
                return -EEXIST;
        }
    }
    for (size_t i = 0; i < nkeys; i++) {
        const struct cfg_key *k = &keys[i];
        check_schema_key(c, k);
        struct cfg_entry e = {.key = k};
        if (k->def && k->type != CFG_MAP) {
            char msg[CFG_MSG_MAX];
            size_t len = strlen(k->def);
            if (check_value(k, k->def, len, len == 0, &e.v, msg, sizeof(msg)) < 0)
                fatal("config schema: default of '%s' is invalid: %s", k->key, msg);
            e.text = xstrndup(k->def, len);
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 16;
            c->entries = xrealloc(c->entries, c->cap * sizeof(*c->entries));
        }
        c->entries[c->n] = e;
        index_entry(c, c->n);
        c->n++;
    }
    return 0;
}

struct cfg *cfg_clone(const struct cfg *c)
{
    struct cfg *copy = cfg_new();
    copy->cap = c->n ? c->n : 1;
    copy->entries = xcalloc(copy->cap, sizeof(*copy->entries));
    for (size_t i = 0; i < c->n; i++) {
        const struct cfg_entry *src = &c->entries[i];
        struct cfg_entry *dst = &copy->entries[i];
        dst->key = src->key;
        dst->text = src->text ? xstrdup(src->text) : NULL;
        dst->v = src->v;
        if (src->nitems) {
            dst->items = xcalloc(src->nitems, sizeof(*dst->items));
            dst->itemcap = dst->nitems = src->nitems;
            for (size_t j = 0; j < src->nitems; j++) {
                dst->items[j].name = xstrdup(src->items[j].name);
                dst->items[j].value = xstrdup(src->items[j].value);
            }
        }
        copy->n++;
        index_entry(copy, i);
    }
    return copy;
}

/* Moves the contents of src into c; src is left holding c's old contents. */
static void swap_contents(struct cfg *c, struct cfg *src)
{
    struct cfg tmp = *c;
    *c = *src;
    *src = tmp;
}

/* ---- YAML loading ---- */

static int load_fail(struct load_ctx *ctx, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int load_fail(struct load_ctx *ctx, size_t line, const char *fmt, ...)
{
    char msg[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    set_err(ctx->errbuf, ctx->errsize, "%s:%zu: %s", ctx->name, line, msg);
    return -EINVAL;
}

static size_t node_line(const yaml_node_t *n)
{
    return n->start_mark.line + 1;
}

static bool scalar_is_null(const yaml_node_t *n)
{
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    return len == 0 || (len == 1 && s[0] == '~') ||
           (len == 4 &&
            (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 || memcmp(s, "NULL", 4) == 0));
}

/*
 * An empty value ("key:") has its mark on whatever follows, often the next
 * line; errors about it point at the key instead.
 */
static size_t value_line(const yaml_node_t *v, size_t keyline)
{
    if (v->type == YAML_SCALAR_NODE && v->data.scalar.length == 0)
        return keyline;
    return node_line(v);
}

static int walk_mapping(struct load_ctx *ctx, const yaml_node_t *node, const char *prefix,
                        int depth);

/* Sets the scalar v on the declared non-map key e. */
static int place_scalar(struct load_ctx *ctx, struct cfg_entry *e, const yaml_node_t *v,
                        size_t keyline)
{
    const char *text = (const char *)v->data.scalar.value;
    size_t len = v->data.scalar.length;
    bool is_null = scalar_is_null(v);
    if (is_null) {
        text = ""; /* "key: ~" on a string is an empty string, not the text "~" */
        len = 0;
    }
    char msg[CFG_MSG_MAX];
    union cfg_value val;
    if (check_value(e->key, text, len, is_null, &val, msg, sizeof(msg)) < 0)
        return load_fail(ctx, value_line(v, keyline), "%s", msg);
    entry_set(e, text, len, val);
    return 0;
}

/* Places the value v found at the dotted path (key on keyline) into the working config. */
static int place(struct load_ctx *ctx, const char *path, size_t keyline, const yaml_node_t *v,
                 int depth)
{
    struct cfg *c = ctx->c;
    size_t first;
    if (++ctx->nodes > CFG_MAX_NODES)
        return load_fail(ctx, keyline, "more than %d keys in the document", CFG_MAX_NODES);
    if (strtab_get(&ctx->seen, path, strlen(path), &first))
        return load_fail(ctx, keyline, "duplicate key '%s' (first set on line %zu)", path, first);
    strtab_put(&ctx->seen, xstrdup(path), keyline);
    if (v->type == YAML_SEQUENCE_NODE)
        return load_fail(ctx, node_line(v), "'%s': lists are not supported", path);

    struct cfg_entry *e = find(c, path);
    if (e && e->key->type != CFG_MAP) {
        if (v->type == YAML_MAPPING_NODE) {
            char want[128];
            describe(e->key, want, sizeof(want));
            return load_fail(ctx, node_line(v), "'%s' must be %s, got a mapping", path, want);
        }
        return place_scalar(ctx, e, v, keyline);
    }

    size_t prefix_len = 0;
    struct cfg_entry *map = e ? NULL : find_map_prefix(c, path, &prefix_len);
    if (map && v->type == YAML_SCALAR_NODE) {
        if (scalar_is_null(v))
            return load_fail(ctx, keyline, "'%s' has no value", path);
        const char *text = (const char *)v->data.scalar.value;
        size_t len = v->data.scalar.length;
        if (memchr(text, '\0', len))
            return load_fail(ctx, node_line(v), "'%s' must not contain a NUL byte", path);
        /* "kafka.producer.: x" or "a..b" would hand librdkafka a name with an empty part. */
        if (!key_name_valid(path + prefix_len + 1))
            return load_fail(ctx, keyline, "'%s' is not a valid name below '%s'", path,
                             map->key->key);
        if (map_put(map, path + prefix_len + 1, text, len) < 0)
            return load_fail(ctx, keyline, "'%s' has more than %d entries", map->key->key,
                             CFG_MAX_MAP_ENTRIES);
        return 0;
    }

    if (e || map || is_prefix(c, path)) {
        if (v->type == YAML_MAPPING_NODE)
            return walk_mapping(ctx, v, path, depth + 1);
        if (scalar_is_null(v)) /* "http:" with every child commented out */
            return 0;
        const char *text = (const char *)v->data.scalar.value;
        return load_fail(ctx, node_line(v), "'%s' must be a mapping, got '%.*s'", path,
                         CFG_ECHO_MAX, text);
    }
    return load_fail(ctx, keyline, "unknown key '%s'", path);
}

static int walk_mapping(struct load_ctx *ctx, const yaml_node_t *node, const char *prefix,
                        int depth)
{
    if (depth > CFG_MAX_DEPTH)
        return load_fail(ctx, node_line(node), "mappings nested more than %d deep", CFG_MAX_DEPTH);
    for (const yaml_node_pair_t *p = node->data.mapping.pairs.start;
         p < node->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = yaml_document_get_node(ctx->doc, p->key);
        const yaml_node_t *v = yaml_document_get_node(ctx->doc, p->value);
        if (!k || !v)
            return load_fail(ctx, node_line(node), "malformed mapping");
        if (k->type != YAML_SCALAR_NODE)
            return load_fail(ctx, node_line(k), "keys must be strings");
        const char *key = (const char *)k->data.scalar.value;
        size_t keylen = k->data.scalar.length;
        size_t plen = prefix ? strlen(prefix) + 1 : 0;
        if (keylen + plen > CFG_MAX_KEY_LEN)
            return load_fail(ctx, node_line(k), "key longer than %d characters", CFG_MAX_KEY_LEN);
        if (memchr(key, '\0', keylen))
            return load_fail(ctx, node_line(k), "keys must not contain a NUL byte");
        char *path =
            prefix ? xasprintf("%s.%.*s", prefix, (int)keylen, key) : xstrndup(key, keylen);
        int rc = place(ctx, path, node_line(k), v, depth);
        free(path);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Turns a libyaml failure into "name:line: YAML syntax error: problem". */
static int yaml_fail(struct load_ctx *ctx, const yaml_parser_t *parser, const char *text,
                     size_t len)
{
    if (parser->error == YAML_MEMORY_ERROR) {
        set_err(ctx->errbuf, ctx->errsize, "%s: out of memory parsing YAML", ctx->name);
        return -ENOMEM;
    }
    size_t line = parser->problem_mark.line + 1;
    if (parser->error == YAML_READER_ERROR) {
        /* Encoding errors carry a byte offset, not a mark. */
        line = 1;
        for (size_t i = 0; i < parser->problem_offset && i < len; i++)
            line += text[i] == '\n';
    }
    return load_fail(ctx, line, "YAML syntax error: %s",
                     parser->problem ? parser->problem : "unknown problem");
}

static int load_document(struct load_ctx *ctx, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_document_t extra;
    int rc = 0;

    if (!yaml_parser_initialize(&parser)) {
        set_err(ctx->errbuf, ctx->errsize, "%s: out of memory parsing YAML", ctx->name);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = yaml_fail(ctx, &parser, text, len);
        goto out_parser;
    }
    ctx->doc = &doc;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    /* An empty stream has no root; "---" alone has a null scalar: both mean defaults. */
    if (root && !(root->type == YAML_SCALAR_NODE && scalar_is_null(root))) {
        if (root->type != YAML_MAPPING_NODE) {
            rc = load_fail(ctx, node_line(root), "top level must be a mapping of keys");
            goto out_doc;
        }
        rc = walk_mapping(ctx, root, NULL, 0);
        if (rc < 0)
            goto out_doc;
    }
    /* A second document would silently be ignored otherwise. */
    if (!yaml_parser_load(&parser, &extra)) {
        rc = yaml_fail(ctx, &parser, text, len);
        goto out_doc;
    }
    const yaml_node_t *extra_root = yaml_document_get_root_node(&extra);
    if (extra_root)
        rc = load_fail(ctx, node_line(extra_root), "more than one YAML document");
    yaml_document_delete(&extra);
out_doc:
    yaml_document_delete(&doc);
    ctx->doc = NULL;
out_parser:
    yaml_parser_delete(&parser);
    return rc;
}

int cfg_load_string(struct cfg *c, const char *name, const char *text, size_t len, char *errbuf,
                    size_t errsize)
{
    if (len > CFG_MAX_DOC_BYTES) {
        set_err(errbuf, errsize, "%s: document larger than %d bytes", name, CFG_MAX_DOC_BYTES);
        return -EFBIG;
    }
    struct cfg *work = cfg_clone(c);
    struct load_ctx ctx = {
        .c = work,
        .name = name,
        .errbuf = errbuf,
        .errsize = errsize,
        .seen = {.owns_keys = true},
    };
    int rc = load_document(&ctx, text, len);
    if (rc == 0)
        swap_contents(c, work);
    strtab_release(&ctx.seen);
    cfg_free(work);
    return rc;
}

int cfg_load_file(struct cfg *c, const char *path, char *errbuf, size_t errsize)
{
    int rc = 0;
    char *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        rc = -errno;
        set_err(errbuf, errsize, "%s: %s", path, strerror(errno));
        return rc;
    }
    /* Read one byte past the cap to tell "exactly at the cap" from "too big". */
    data = xmalloc(CFG_MAX_DOC_BYTES + 1);
    size_t len = fread(data, 1, CFG_MAX_DOC_BYTES + 1, f);
    if (ferror(f)) {
        rc = -EIO;
        set_err(errbuf, errsize, "%s: read error", path);
        goto out_free_data;
    }
    if (len > CFG_MAX_DOC_BYTES) {
        rc = -EFBIG;
        set_err(errbuf, errsize, "%s: file larger than %d bytes", path, CFG_MAX_DOC_BYTES);
        goto out_free_data;
    }
    rc = cfg_load_string(c, path, data, len, errbuf, errsize);
out_free_data:
    free(data);
    fclose(f);
    return rc;
}

/* ---- other sources ---- */

int cfg_apply_env(struct cfg *c, char *errbuf, size_t errsize)
{
    struct cfg *work = cfg_clone(c);
    int rc = 0;
    for (size_t i = 0; i < work->n; i++) {
        struct cfg_entry *e = &work->entries[i];
        if (!e->key->env)
            continue;
        const char *value = getenv(e->key->env);
        if (!value || !*value)
            continue;
        char msg[CFG_MSG_MAX];
        union cfg_value v;
        size_t len = strlen(value);
        rc = check_value(e->key, value, len, false, &v, msg, sizeof(msg));
        if (rc < 0) {
            set_err(errbuf, errsize, "environment %s: %s", e->key->env, msg);
            goto out_free_work;
        }
        entry_set(e, value, len, v);
    }
    swap_contents(c, work);
out_free_work:
    cfg_free(work);
    return rc;
}

int cfg_set(struct cfg *c, const char *key, const char *value, char *errbuf, size_t errsize)
{
    size_t len = strlen(value);
    struct cfg_entry *e = find(c, key);
    if (e) {
        char msg[CFG_MSG_MAX];
        union cfg_value v;
        int rc = check_value(e->key, value, len, len == 0, &v, msg, sizeof(msg));
        if (rc < 0) {
            set_err(errbuf, errsize, "%s", msg);
            return rc;
        }
        entry_set(e, value, len, v);
        return 0;
    }
    size_t prefix_len;
    struct cfg_entry *map = find_map_prefix(c, key, &prefix_len);
    if (!map) {
        set_err(errbuf, errsize, "unknown key '%s'", key);
        return -ENOENT;
    }
    if (!key_name_valid(key + prefix_len + 1)) {
        set_err(errbuf, errsize, "'%s' is not a valid name below '%s'", key, map->key->key);
        return -EINVAL;
    }
    if (len == 0) {
        set_err(errbuf, errsize, "'%s' has no value", key);
        return -EINVAL;
    }
    if (map_put(map, key + prefix_len + 1, value, len) < 0) {
        set_err(errbuf, errsize, "'%s' has more than %d entries", map->key->key,
                CFG_MAX_MAP_ENTRIES);
        return -E2BIG;
    }
    return 0;
}

int cfg_validate(const struct cfg *c, char *errbuf, size_t errsize)
{
    for (size_t i = 0; i < c->n; i++) {
        const struct cfg_entry *e = &c->entries[i];
        if (e->key->type == CFG_MAP || e->key->def || e->text)
            continue;
        if (e->key->help)
            set_err(errbuf, errsize, "missing required key '%s' (%s)", e->key->key, e->key->help);
        else
            set_err(errbuf, errsize, "missing required key '%s'", e->key->key);
        return -EINVAL;
    }
    return 0;
}

/* ---- comparison ---- */

static bool str_eq_null(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Same names with the same values, in any order. */
static bool map_equal(const struct cfg_entry *a, const struct cfg_entry *b)
{
    if (a->nitems != b->nitems)
        return false;
    for (size_t i = 0; i < a->nitems; i++) {
        bool found = false;
        for (size_t j = 0; j < b->nitems && !found; j++) {
            found = strcmp(a->items[i].name, b->items[j].name) == 0 &&
                    strcmp(a->items[i].value, b->items[j].value) == 0;
        }
        if (!found)
            return false;
    }
    return true;
}

static bool entry_equal(const struct cfg_entry *a, const struct cfg_entry *b)
{
    if (a->key->type != b->key->type)
        return false;
    if (a->key->type == CFG_MAP)
        return map_equal(a, b);
    return str_eq_null(a->text, b->text);
}

void cfg_diff(const struct cfg *a, const struct cfg *b, cfg_diff_fn fn, void *ud)
{
    for (size_t i = 0; i < a->n; i++) {
        const struct cfg_entry *ea = &a->entries[i];
        const struct cfg_entry *eb = find(b, ea->key->key);
        if (eb && entry_equal(ea, eb))
            continue;
        bool map = ea->key->type == CFG_MAP;
        fn(ud, ea->key, map ? NULL : ea->text, map || !eb ? NULL : eb->text);
    }
    /* Keys only b declares (a newer schema) count as changed from nothing. */
    for (size_t i = 0; i < b->n; i++) {
        const struct cfg_entry *eb = &b->entries[i];
        if (find(a, eb->key->key))
            continue;
        if (eb->key->type == CFG_MAP ? eb->nitems == 0 : eb->text == NULL)
            continue;
        fn(ud, eb->key, NULL, eb->key->type == CFG_MAP ? NULL : eb->text);
    }
}

/* ---- accessors ---- */

static const struct cfg_entry *get_checked(const struct cfg *c, const char *key, enum cfg_type type)
{
    const struct cfg_entry *e = find(c, key);
    if (!e)
        fatal("config key '%s' is not declared", key);
    if (e->key->type != type)
        fatal("config key '%s' is a %s, read as a %s", key, type_name(e->key->type),
              type_name(type));
    return e;
}

static const struct cfg_entry *get_value(const struct cfg *c, const char *key, enum cfg_type type)
{
    const struct cfg_entry *e = get_checked(c, key, type);
    if (!e->text)
        fatal("config key '%s' has no value (cfg_validate not called?)", key);
    return e;
}

int64_t cfg_get_int(const struct cfg *c, const char *key)
{
    return get_value(c, key, CFG_INT)->v.i;
}

double cfg_get_double(const struct cfg *c, const char *key)
{
    return get_value(c, key, CFG_DOUBLE)->v.d;
}

bool cfg_get_bool(const struct cfg *c, const char *key)
{
    return get_value(c, key, CFG_BOOL)->v.b;
}

const char *cfg_get_str(const struct cfg *c, const char *key)
{
    return get_checked(c, key, CFG_STRING)->text;
}

void cfg_map_foreach(const struct cfg *c, const char *key, cfg_map_fn fn, void *ud)
{
    const struct cfg_entry *e = get_checked(c, key, CFG_MAP);
    for (size_t i = 0; i < e->nitems; i++)
        fn(ud, e->items[i].name, e->items[i].value);
}

size_t cfg_map_count(const struct cfg *c, const char *key)
{
    return get_checked(c, key, CFG_MAP)->nitems;
}
