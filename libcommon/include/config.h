/*
 * Service configuration: a YAML file checked against a schema the service
 * declares (key, type, bounds, default, reloadable, environment override), plus
 * pass-through maps (e.g. kafka.producer.* handed to librdkafka untouched).
 *
 * A struct cfg is immutable once loaded: a reload builds a new one and swaps
 * the pointer (see cfg_reload in the config-center client), so readers never
 * see a half-applied configuration. Strings returned by the getters live as
 * long as the struct cfg they came from.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cfg_type {
    CFG_INT,    /* int64, bounds in min/max */
    CFG_DOUBLE, /* double, bounds in min/max */
    CFG_BOOL,
    CFG_STRING, /* bounds on the length in min/max when max > 0 */
    CFG_MAP,    /* a mapping of scalar values under this key, kept as strings */
};

struct cfg_key {
    const char *key; /* dotted path: "http.port" */
    enum cfg_type type;
    const char *def;  /* default as text; NULL means required */
    double min, max;  /* inclusive bounds; ignored when min == max == 0 */
    bool reloadable;  /* may change at run time through config-center */
    const char *env;  /* environment variable that overrides the file, or NULL */
    const char *help; /* one line, shown in errors and docs */
};

struct cfg;

/* Creates an empty configuration; declare keys before loading. */
struct cfg *cfg_new(void);
/* Adds keys to the schema (the array must outlive the cfg). -EEXIST on a duplicate key. */
int cfg_declare(struct cfg *c, const struct cfg_key *keys, size_t nkeys);
/*
 * Loads a YAML file over the defaults. Errors are "path:line: message" in errbuf:
 * unknown keys, wrong types, out-of-range values, YAML syntax. 0 or negative.
 */
int cfg_load_file(struct cfg *c, const char *path, char *errbuf, size_t errsize);
/* Same for a YAML (or JSON) document in memory; name stands in for the path in errors. */
int cfg_load_string(struct cfg *c, const char *name, const char *text, size_t len, char *errbuf,
                    size_t errsize);
/* Applies the declared environment overrides; errors name the variable. */
int cfg_apply_env(struct cfg *c, char *errbuf, size_t errsize);
/* Sets one value from text, validated as a file value would be. */
int cfg_set(struct cfg *c, const char *key, const char *value, char *errbuf, size_t errsize);
/* Checks that every required key has a value; errors name the key. */
int cfg_validate(const struct cfg *c, char *errbuf, size_t errsize);
/* Deep copy (schema shared), used to build the next version for a reload. */
struct cfg *cfg_clone(const struct cfg *c);
/* Keys whose values differ between a and b, and which of them are not reloadable. */
typedef void (*cfg_diff_fn)(void *ud, const struct cfg_key *key, const char *old_value,
                            const char *new_value);
void cfg_diff(const struct cfg *a, const struct cfg *b, cfg_diff_fn fn, void *ud);
/* Accessors; asking for an undeclared key or the wrong type aborts (a programming error). */
int64_t cfg_get_int(const struct cfg *c, const char *key);
double cfg_get_double(const struct cfg *c, const char *key);
bool cfg_get_bool(const struct cfg *c, const char *key);
const char *cfg_get_str(const struct cfg *c, const char *key); /* NULL if unset */
/* Visits each entry of a CFG_MAP key in file order. */
typedef void (*cfg_map_fn)(void *ud, const char *name, const char *value);
void cfg_map_foreach(const struct cfg *c, const char *key, cfg_map_fn fn, void *ud);
size_t cfg_map_count(const struct cfg *c, const char *key);
/* NULL-safe. */
void cfg_free(struct cfg *c);

#endif
