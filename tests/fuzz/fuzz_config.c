/*
 * Fuzzes the configuration loader (cfg_load_string) with a schema covering
 * every type, bounds, a required key, nested keys and a pass-through map.
 * Any document may be rejected; none may crash, leak, or leave a loaded
 * configuration whose values break the schema.
 */
#include <stdbool.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

static const struct cfg_key schema[] = {
    {.key = "http.port", .type = CFG_INT, .def = "8081", .min = 1, .max = 65535},
    {.key = "http.host", .type = CFG_STRING, .def = "0.0.0.0"},
    {.key = "http.timeout_s", .type = CFG_DOUBLE, .def = "2.5", .min = 0.1, .max = 60},
    {.key = "kafka.bootstrap_servers", .type = CFG_STRING, .min = 1, .max = 64},
    {.key = "kafka.producer", .type = CFG_MAP},
    {.key = "rules.enabled", .type = CFG_BOOL, .def = "true", .reloadable = true},
    {.key = "rules.offline_after_s", .type = CFG_INT, .def = "60"},
    {.key = "api.token", .type = CFG_STRING, .def = ""},
};

struct map_walk {
    size_t n;
};

static void count_entry(void *ud, const char *name, const char *value)
{
    struct map_walk *w = ud;
    FUZZ_ASSERT(name && *name && value);
    w->n++;
}

static void diff_entry(void *ud, const struct cfg_key *key, const char *old_value,
                       const char *new_value)
{
    size_t *n = ud;
    FUZZ_ASSERT(key && key->key);
    (void)old_value;
    (void)new_value;
    (*n)++;
}

/* What a successful load guarantees: every value inside its declared bounds. */
static void check_loaded(const struct cfg *c, const struct cfg *defaults)
{
    int64_t port = cfg_get_int(c, "http.port");
    FUZZ_ASSERT(port >= 1 && port <= 65535);
    double timeout = cfg_get_double(c, "http.timeout_s");
    FUZZ_ASSERT(timeout >= 0.1 && timeout <= 60);
    (void)cfg_get_bool(c, "rules.enabled");
    (void)cfg_get_int(c, "rules.offline_after_s");
    FUZZ_ASSERT(cfg_get_str(c, "http.host") != NULL);
    FUZZ_ASSERT(cfg_get_str(c, "api.token") != NULL);
    char err[256];
    if (cfg_validate(c, err, sizeof(err)) == 0) {
        const char *servers = cfg_get_str(c, "kafka.bootstrap_servers");
        FUZZ_ASSERT(servers && strlen(servers) >= 1 && strlen(servers) <= 64);
    }
    struct map_walk w = {0};
    cfg_map_foreach(c, "kafka.producer", count_entry, &w);
    FUZZ_ASSERT(w.n == cfg_map_count(c, "kafka.producer"));

    struct cfg *copy = cfg_clone(c);
    size_t ndiff = 0;
    cfg_diff(c, copy, diff_entry, &ndiff);
    FUZZ_ASSERT(ndiff == 0);
    cfg_diff(defaults, c, diff_entry, &ndiff);
    cfg_free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct cfg *c = cfg_new();
    struct cfg *defaults = cfg_new();
    FUZZ_ASSERT(cfg_declare(c, schema, sizeof(schema) / sizeof(schema[0])) == 0);
    FUZZ_ASSERT(cfg_declare(defaults, schema, sizeof(schema) / sizeof(schema[0])) == 0);

    err[0] = '\0';
    int rc = cfg_load_string(c, "fuzz.yaml", (const char *)data, size, err, sizeof(err));
    if (rc == 0) {
        check_loaded(c, defaults);
        /* Loading the same document over itself must behave the same way. */
        rc = cfg_load_string(c, "fuzz.yaml", (const char *)data, size, err, sizeof(err));
        FUZZ_ASSERT(rc == 0);
        check_loaded(c, defaults);
    } else {
        FUZZ_ASSERT(rc < 0);
        FUZZ_ASSERT(err[0] != '\0');
        /* A failed load leaves the configuration exactly as it was. */
        size_t ndiff = 0;
        cfg_diff(defaults, c, diff_entry, &ndiff);
        FUZZ_ASSERT(ndiff == 0);
        check_loaded(c, defaults);
    }
    cfg_free(defaults);
    cfg_free(c);
    return 0;
}
