/*
 * Unit tests for config.c: defaults, file/env precedence, every error message
 * with its exact line, pass-through maps, JSON documents, clone/diff, and the
 * aborts on programming errors.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

#define ENV_PORT    "H2_TEST_HTTP_PORT"
#define ENV_KAFKA   "H2_TEST_KAFKA_BOOTSTRAP_SERVERS"
#define ENV_ENABLED "H2_TEST_RULES_ENABLED"

static const struct cfg_key schema[] = {
    {.key = "http.port", .type = CFG_INT, .def = "8081", .min = 1, .max = 65535, .env = ENV_PORT},
    {.key = "http.host", .type = CFG_STRING, .def = "0.0.0.0"},
    {.key = "http.timeout_s",
     .type = CFG_DOUBLE,
     .def = "2.5",
     .min = 0.1,
     .max = 60,
     .reloadable = true},
    {.key = "kafka.bootstrap_servers", .type = CFG_STRING, .min = 1, .max = 64, .env = ENV_KAFKA},
    {.key = "kafka.producer", .type = CFG_MAP},
    {.key = "rules.enabled",
     .type = CFG_BOOL,
     .def = "true",
     .reloadable = true,
     .env = ENV_ENABLED},
    {.key = "rules.offline_after_s", .type = CFG_INT, .def = "60", .reloadable = true},
    {.key = "api.token", .type = CFG_STRING, .def = ""},
};

static struct cfg *new_cfg(void)
{
    struct cfg *c = cfg_new();
    assert_non_null(c);
    assert_int_equal(cfg_declare(c, schema, sizeof(schema) / sizeof(schema[0])), 0);
    return c;
}

/* Writes yaml to a fresh temp file; the caller unlinks path. */
static void write_temp(const char *yaml, char *path, size_t pathsize)
{
    snprintf(path, pathsize, "/tmp/test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(yaml);
    assert_int_equal(write(fd, yaml, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

/* Loads yaml through a real file and checks the error is "path:line: msg". */
static void expect_file_error(const char *yaml, int line, const char *msg)
{
    char path[64];
    char err[512] = "";
    char want[700];
    struct cfg *c = new_cfg();
    write_temp(yaml, path, sizeof(path));
    int rc = cfg_load_file(c, path, err, sizeof(err));
    unlink(path);
    assert_int_equal(rc, -EINVAL);
    snprintf(want, sizeof(want), "%s:%d: %s", path, line, msg);
    assert_string_equal(err, want);
    /* A failed load leaves the defaults untouched. */
    assert_int_equal(cfg_get_int(c, "http.port"), 8081);
    cfg_free(c);
}

static int load_str(struct cfg *c, const char *text, char *err, size_t errsize)
{
    return cfg_load_string(c, "svc.yaml", text, strlen(text), err, errsize);
}

static void test_defaults(void **state)
{
    (void)state;
    struct cfg *c = new_cfg();
    assert_int_equal(cfg_get_int(c, "http.port"), 8081);
    assert_string_equal(cfg_get_str(c, "http.host"), "0.0.0.0");
    assert_true(cfg_get_double(c, "http.timeout_s") == 2.5);
    assert_true(cfg_get_bool(c, "rules.enabled"));
    assert_string_equal(cfg_get_str(c, "api.token"), "");
    assert_null(cfg_get_str(c, "kafka.bootstrap_servers"));
    assert_int_equal(cfg_map_count(c, "kafka.producer"), 0);
    cfg_free(c);
    cfg_free(NULL);
}

static void test_empty_documents_keep_defaults(void **state)
{
    (void)state;
    static const char *const docs[] = {"", "# only a comment\n", "---\n# nothing\n", "~\n"};
    char err[256] = "";
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        struct cfg *c = new_cfg();
        assert_int_equal(load_str(c, docs[i], err, sizeof(err)), 0);
        assert_int_equal(cfg_get_int(c, "http.port"), 8081);
        cfg_free(c);
    }
}

static void test_file_overrides_defaults(void **state)
{
    (void)state;
    char path[64];
    char err[256] = "";
    struct cfg *c = new_cfg();
    write_temp("# service config\n"
               "http:\n"
               "  port: 9090\n"
               "  timeout_s: 0.5\n"
               "rules.enabled: no\n"
               "kafka:\n"
               "  bootstrap_servers: \"127.0.0.1:9092\"\n"
               "api:\n"
               "  token: ~\n",
               path, sizeof(path));
    int rc = cfg_load_file(c, path, err, sizeof(err));
    unlink(path);
    assert_string_equal(err, "");
    assert_int_equal(rc, 0);
    assert_int_equal(cfg_get_int(c, "http.port"), 9090);
    assert_true(cfg_get_double(c, "http.timeout_s") == 0.5);
    assert_false(cfg_get_bool(c, "rules.enabled"));
    assert_string_equal(cfg_get_str(c, "kafka.bootstrap_servers"), "127.0.0.1:9092");
    assert_string_equal(cfg_get_str(c, "http.host"), "0.0.0.0");
    assert_string_equal(cfg_get_str(c, "api.token"), "");
    assert_int_equal(cfg_validate(c, err, sizeof(err)), 0);
    cfg_free(c);
}

static void test_env_overrides_file(void **state)
{
    (void)state;
    char err[256] = "";
    struct cfg *c = new_cfg();
    assert_int_equal(
        load_str(c, "http.port: 9090\nkafka.bootstrap_servers: file:9092\n", err, sizeof(err)), 0);
    setenv(ENV_PORT, "7070", 1);
    setenv(ENV_KAFKA, "env:9092", 1);
    setenv(ENV_ENABLED, "", 1); /* empty means not set */
    assert_int_equal(cfg_apply_env(c, err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(c, "http.port"), 7070);
    assert_string_equal(cfg_get_str(c, "kafka.bootstrap_servers"), "env:9092");
    assert_true(cfg_get_bool(c, "rules.enabled"));
    unsetenv(ENV_PORT);
    unsetenv(ENV_KAFKA);
    unsetenv(ENV_ENABLED);
    cfg_free(c);
}

static void test_env_error_names_variable(void **state)
{
    (void)state;
    char err[256] = "";
    struct cfg *c = new_cfg();
    setenv(ENV_KAFKA, "good:9092", 1);
    setenv(ENV_PORT, "80x", 1);
    assert_int_equal(cfg_apply_env(c, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "environment " ENV_PORT
                             ": 'http.port' must be an integer between 1 and 65535, got '80x'");
    /* Nothing applied: the good variable before the bad one is rolled back too. */
    assert_null(cfg_get_str(c, "kafka.bootstrap_servers"));
    assert_int_equal(cfg_get_int(c, "http.port"), 8081);
    setenv(ENV_PORT, "8000", 1);
    setenv(ENV_ENABLED, "maybe", 1);
    assert_int_equal(cfg_apply_env(c, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "environment " ENV_ENABLED ": 'rules.enabled' must be a boolean "
                             "(true/false, yes/no, on/off), got 'maybe'");
    unsetenv(ENV_PORT);
    unsetenv(ENV_KAFKA);
    unsetenv(ENV_ENABLED);
    cfg_free(c);
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_file_error("http:\n"
                      "  port: 8081\n"
                      "  host: localhost\n"
                      "rules:\n"
                      "  enabled: true\n"
                      "http:\n"
                      "  prot: 1\n",
                      6, "duplicate key 'http' (first set on line 1)");
    expect_file_error("# comment\n"
                      "\n"
                      "http:\n"
                      "  port: 8081\n"
                      "\n"
                      "  host: localhost\n"
                      "  prot: 8082\n",
                      7, "unknown key 'http.prot'");
    expect_file_error("nope: 1\n", 1, "unknown key 'nope'");
    expect_file_error("http: 5\n", 1, "'http' must be a mapping, got '5'");
}

static void test_type_errors(void **state)
{
    (void)state;
    expect_file_error("http:\n"
                      "  host: x\n"
                      "  port: abc\n",
                      3, "'http.port' must be an integer between 1 and 65535, got 'abc'");
    expect_file_error("rules:\n  offline_after_s: 1.5\n", 2,
                      "'rules.offline_after_s' must be an integer, got '1.5'");
    expect_file_error("http.timeout_s: fast\n", 1,
                      "'http.timeout_s' must be a number between 0.1 and 60, got 'fast'");
    expect_file_error("a: \n"
                      "rules.enabled: maybe\n",
                      1, "unknown key 'a'");
    expect_file_error("rules.enabled: maybe\n", 1,
                      "'rules.enabled' must be a boolean (true/false, yes/no, on/off), "
                      "got 'maybe'");
    /* An empty value points at its key, not at the next line. */
    expect_file_error("http:\n"
                      "  port:\n"
                      "  host: x\n",
                      2, "'http.port' must be an integer between 1 and 65535, got an empty value");
    expect_file_error("rules.enabled: ~\n", 1,
                      "'rules.enabled' must be a boolean (true/false, yes/no, on/off), "
                      "got an empty value");
    expect_file_error("http.port: \"\"\n", 1,
                      "'http.port' must be an integer between 1 and 65535, got ''");
    expect_file_error("http:\n  port:\n    inner: 1\n", 3,
                      "'http.port' must be an integer between 1 and 65535, got a mapping");
    expect_file_error("http.host: \"a\\0b\"\n", 1, "'http.host' must not contain a NUL byte");
}

static void test_bounds(void **state)
{
    (void)state;
    expect_file_error("http.port: 0\n", 1,
                      "'http.port' must be an integer between 1 and 65535, got '0'");
    expect_file_error("\nhttp.port: 65536\n", 2,
                      "'http.port' must be an integer between 1 and 65535, got '65536'");
    expect_file_error("http.timeout_s: 60.5\n", 1,
                      "'http.timeout_s' must be a number between 0.1 and 60, got '60.5'");
    expect_file_error("kafka.bootstrap_servers: \"\"\n", 1,
                      "'kafka.bootstrap_servers' must be between 1 and 64 characters long, got 0");

    char err[256] = "";
    struct cfg *c = new_cfg();
    assert_int_equal(load_str(c, "http.port: 65535\nhttp.timeout_s: 0.1\n", err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(c, "http.port"), 65535);
    /* Keys without bounds take any value of their type. */
    assert_int_equal(load_str(c, "rules.offline_after_s: -5\n", err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(c, "rules.offline_after_s"), -5);
    cfg_free(c);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_file_error("http:\n"
                      "  port: 1\n"
                      "  port: 2\n",
                      3, "duplicate key 'http.port' (first set on line 2)");
    /* The flat and the nested spelling name the same key. */
    expect_file_error("http.port: 1\n"
                      "http:\n"
                      "  host: x\n"
                      "  port: 2\n",
                      4, "duplicate key 'http.port' (first set on line 1)");
    expect_file_error("kafka.producer:\n"
                      "  linger.ms: 5\n"
                      "  linger:\n"
                      "    ms: 6\n",
                      4, "duplicate key 'kafka.producer.linger.ms' (first set on line 2)");
}

static void test_syntax_error(void **state)
{
    (void)state;
    expect_file_error("http:\n"
                      "  port: 8081\n"
                      "  host: [unclosed\n",
                      4, "YAML syntax error: did not find expected ',' or ']'");
    expect_file_error("http:\n"
                      "  port: 8081\n"
                      "  host: a: b\n",
                      3, "YAML syntax error: mapping values are not allowed in this context");
    expect_file_error("http.port: 1\n"
                      "http.host: \xff\xfe\n",
                      2, "YAML syntax error: invalid leading UTF-8 octet");
    expect_file_error("http.port: *nowhere\n", 1, "YAML syntax error: found undefined alias");
}

static void test_top_level_must_be_mapping(void **state)
{
    (void)state;
    expect_file_error("\njust a string\n", 2, "top level must be a mapping of keys");
    expect_file_error("- a\n- b\n", 1, "top level must be a mapping of keys");
    expect_file_error("http.port: 1\n---\nhttp.port: 2\n", 3, "more than one YAML document");
}

static void test_lists_rejected(void **state)
{
    (void)state;
    expect_file_error("http:\n"
                      "  port: 1\n"
                      "kafka:\n"
                      "  bootstrap_servers:\n"
                      "    - a:9092\n"
                      "    - b:9092\n",
                      5, "'kafka.bootstrap_servers': lists are not supported");
    expect_file_error("kafka.producer:\n  acks: [1, 2]\n", 2,
                      "'kafka.producer.acks': lists are not supported");
}

struct collected {
    char names[8][64];
    char values[8][64];
    size_t n;
};

static void collect(void *ud, const char *name, const char *value)
{
    struct collected *out = ud;
    assert_true(out->n < 8);
    snprintf(out->names[out->n], sizeof(out->names[0]), "%s", name);
    snprintf(out->values[out->n], sizeof(out->values[0]), "%s", value);
    out->n++;
}

static void test_map_pass_through(void **state)
{
    (void)state;
    char err[256] = "";
    struct collected got = {0};
    struct cfg *c = new_cfg();
    assert_int_equal(load_str(c,
                              "kafka:\n"
                              "  bootstrap_servers: k:9092\n"
                              "  producer:\n"
                              "    linger.ms: 5\n"
                              "    acks: all\n"
                              "    sasl:\n"
                              "      mechanism: PLAIN\n"
                              "    enable.idempotence: \"true\"\n"
                              "kafka.producer.compression.type: zstd\n",
                              err, sizeof(err)),
                     0);
    assert_string_equal(err, "");
    assert_int_equal(cfg_map_count(c, "kafka.producer"), 5);
    cfg_map_foreach(c, "kafka.producer", collect, &got);
    assert_int_equal(got.n, 5);
    assert_string_equal(got.names[0], "linger.ms");
    assert_string_equal(got.values[0], "5");
    assert_string_equal(got.names[1], "acks");
    assert_string_equal(got.values[1], "all");
    assert_string_equal(got.names[2], "sasl.mechanism");
    assert_string_equal(got.values[2], "PLAIN");
    assert_string_equal(got.names[3], "enable.idempotence");
    assert_string_equal(got.values[3], "true");
    assert_string_equal(got.names[4], "compression.type");
    assert_string_equal(got.values[4], "zstd");

    /* A later document overrides entries in place and appends new ones. */
    assert_int_equal(
        load_str(c, "kafka.producer: {acks: \"1\", batch.size: 1000}\n", err, sizeof(err)), 0);
    memset(&got, 0, sizeof(got));
    cfg_map_foreach(c, "kafka.producer", collect, &got);
    assert_int_equal(got.n, 6);
    assert_string_equal(got.names[1], "acks");
    assert_string_equal(got.values[1], "1");
    assert_string_equal(got.names[5], "batch.size");
    assert_string_equal(got.values[5], "1000");
    cfg_free(c);

    expect_file_error("kafka.producer: all\n", 1, "'kafka.producer' must be a mapping, got 'all'");
    expect_file_error("kafka.producer:\n  acks:\n", 2, "'kafka.producer.acks' has no value");
}

static void test_json_document(void **state)
{
    (void)state;
    char err[256] = "";
    struct collected got = {0};
    struct cfg *c = new_cfg();
    const char *json = "{\n"
                       "\t\"http\": {\"port\": 8443, \"host\": \"::\"},\n"
                       "\t\"rules\": {\"enabled\": false, \"offline_after_s\": 90},\n"
                       "\t\"kafka\": {\"producer\": {\"linger.ms\": \"10\", \"acks\": -1}}\n"
                       "}\n";
    assert_int_equal(
        cfg_load_string(c, "ns:stream-processor", json, strlen(json), err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_int_equal(cfg_get_int(c, "http.port"), 8443);
    assert_string_equal(cfg_get_str(c, "http.host"), "::");
    assert_false(cfg_get_bool(c, "rules.enabled"));
    assert_int_equal(cfg_get_int(c, "rules.offline_after_s"), 90);
    cfg_map_foreach(c, "kafka.producer", collect, &got);
    assert_int_equal(got.n, 2);
    assert_string_equal(got.names[0], "linger.ms");
    assert_string_equal(got.values[1], "-1");

    const char *bad = "{\"http\": {\"port\": \"x\"}}";
    assert_int_equal(cfg_load_string(c, "ns:sp", bad, strlen(bad), err, sizeof(err)), -EINVAL);
    assert_string_equal(err,
                        "ns:sp:1: 'http.port' must be an integer between 1 and 65535, got 'x'");
    /* Only len bytes are read: the text need not be NUL-terminated. */
    assert_int_equal(cfg_load_string(c, "ns:sp", "http.port: 1234567", 15, err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(c, "http.port"), 1234);
    cfg_free(c);
}

struct diff_seen {
    const char *keys[8];
    char old_values[8][64];
    char new_values[8][64];
    bool reloadable[8];
    size_t n;
};

static void on_diff(void *ud, const struct cfg_key *key, const char *old_value,
                    const char *new_value)
{
    struct diff_seen *d = ud;
    assert_true(d->n < 8);
    d->keys[d->n] = key->key;
    snprintf(d->old_values[d->n], 64, "%s", old_value ? old_value : "(null)");
    snprintf(d->new_values[d->n], 64, "%s", new_value ? new_value : "(null)");
    d->reloadable[d->n] = key->reloadable;
    d->n++;
}

static void test_clone_and_diff(void **state)
{
    (void)state;
    char err[256] = "";
    struct diff_seen d = {0};
    struct cfg *a = new_cfg();
    assert_int_equal(load_str(a, "kafka.producer: {acks: all, linger.ms: 5}\n", err, sizeof(err)),
                     0);
    struct cfg *b = cfg_clone(a);
    cfg_diff(a, b, on_diff, &d);
    assert_int_equal(d.n, 0);

    /* The same map in another order is not a change. */
    assert_int_equal(load_str(b,
                              "kafka.producer: {linger.ms: 5, acks: all}\n"
                              "rules.offline_after_s: 120\n"
                              "http.port: 9000\n"
                              "kafka.bootstrap_servers: k:1\n",
                              err, sizeof(err)),
                     0);
    /* The clone is independent of its source. */
    assert_int_equal(cfg_get_int(a, "http.port"), 8081);
    assert_int_equal(cfg_get_int(b, "http.port"), 9000);
    cfg_diff(a, b, on_diff, &d);
    assert_int_equal(d.n, 3);
    assert_string_equal(d.keys[0], "http.port");
    assert_string_equal(d.old_values[0], "8081");
    assert_string_equal(d.new_values[0], "9000");
    assert_false(d.reloadable[0]);
    assert_string_equal(d.keys[1], "kafka.bootstrap_servers");
    assert_string_equal(d.old_values[1], "(null)");
    assert_string_equal(d.new_values[1], "k:1");
    assert_string_equal(d.keys[2], "rules.offline_after_s");
    assert_string_equal(d.new_values[2], "120");
    assert_true(d.reloadable[2]);

    memset(&d, 0, sizeof(d));
    assert_int_equal(cfg_set(b, "kafka.producer.acks", "1", err, sizeof(err)), 0);
    struct cfg *c2 = cfg_clone(b);
    assert_int_equal(cfg_set(c2, "kafka.producer.acks", "all", err, sizeof(err)), 0);
    cfg_diff(b, c2, on_diff, &d);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.keys[0], "kafka.producer");
    assert_string_equal(d.old_values[0], "(null)");
    assert_string_equal(d.new_values[0], "(null)");
    cfg_free(c2);
    cfg_free(b);
    cfg_free(a);
}

static void test_required_missing(void **state)
{
    (void)state;
    char err[256] = "";
    struct cfg *c = new_cfg();
    assert_int_equal(cfg_validate(c, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "missing required key 'kafka.bootstrap_servers'");
    assert_int_equal(cfg_set(c, "kafka.bootstrap_servers", "k:9092", err, sizeof(err)), 0);
    assert_int_equal(cfg_validate(c, err, sizeof(err)), 0);
    cfg_free(c);

    static const struct cfg_key with_help[] = {
        {.key = "vendor.token", .type = CFG_STRING, .help = "bearer token for the vendor API"},
    };
    c = cfg_new();
    assert_int_equal(cfg_declare(c, with_help, 1), 0);
    assert_int_equal(cfg_validate(c, err, sizeof(err)), -EINVAL);
    assert_string_equal(err,
                        "missing required key 'vendor.token' (bearer token for the vendor API)");
    cfg_free(c);
}

static void test_missing_file(void **state)
{
    (void)state;
    char err[256] = "";
    struct cfg *c = new_cfg();
    assert_int_equal(cfg_load_file(c, "/nonexistent/h2/svc.yaml", err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "/nonexistent/h2/svc.yaml: No such file or directory");
    cfg_free(c);
}

static void test_set(void **state)
{
    (void)state;
    char err[256] = "";
    struct cfg *c = new_cfg();
    assert_int_equal(cfg_set(c, "http.port", "1234", err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(c, "http.port"), 1234);
    assert_int_equal(cfg_set(c, "http.port", "99999", err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "'http.port' must be an integer between 1 and 65535, got '99999'");
    assert_int_equal(cfg_get_int(c, "http.port"), 1234);
    assert_int_equal(cfg_set(c, "http.nope", "1", err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "unknown key 'http.nope'");
    assert_int_equal(cfg_set(c, "kafka.producer", "x", err, sizeof(err)), -EINVAL);
    assert_string_equal(err,
                        "'kafka.producer' is a map; set its entries as 'kafka.producer.<name>'");
    assert_int_equal(cfg_set(c, "kafka.producer.linger.ms", "3", err, sizeof(err)), 0);
    assert_int_equal(cfg_map_count(c, "kafka.producer"), 1);
    /* Messages never repeat a string value (it may be a secret). */
    static const struct cfg_key secret[] = {
        {.key = "vendor.secret",
         .type = CFG_STRING,
         .def = "0123456789abcdef",
         .min = 16,
         .max = 64},
    };
    assert_int_equal(cfg_declare(c, secret, 1), 0);
    assert_int_equal(cfg_set(c, "vendor.secret", "hunter2", err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "'vendor.secret' must be between 16 and 64 characters long, got 7");
    cfg_free(c);
}

static void test_declare_duplicate(void **state)
{
    (void)state;
    struct cfg *c = new_cfg();
    static const struct cfg_key again[] = {
        {.key = "extra.one", .type = CFG_INT, .def = "1"},
        {.key = "http.port", .type = CFG_INT, .def = "1"},
    };
    assert_int_equal(cfg_declare(c, again, 2), -EEXIST);
    static const struct cfg_key twice[] = {
        {.key = "extra.two", .type = CFG_INT, .def = "1"},
        {.key = "extra.two", .type = CFG_INT, .def = "2"},
    };
    assert_int_equal(cfg_declare(c, twice, 2), -EEXIST);
    /* A refused declaration adds nothing. */
    char err[256] = "";
    assert_int_equal(load_str(c, "extra.one: 5\n", err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "svc.yaml:1: unknown key 'extra.one'");
    cfg_free(c);
}

static void test_alias_cycle_is_bounded(void **state)
{
    (void)state;
    char err[256] = "";
    struct cfg *c = new_cfg();
    int rc = load_str(c, "kafka.producer: &loop {a: 1, b: *loop}\n", err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "svc.yaml:1: "));
    /* Plain aliases work. */
    assert_int_equal(load_str(c, "http: &h {port: 4242}\nkafka.producer: *h\n", err, sizeof(err)),
                     0);
    assert_int_equal(cfg_get_int(c, "http.port"), 4242);
    assert_int_equal(cfg_map_count(c, "kafka.producer"), 1);
    cfg_free(c);
}

/* Runs fn in a child and checks that it aborts. */
static void expect_abort(void (*fn)(void))
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *devnull = fopen("/dev/null", "w");
        if (devnull)
            log_set_output(devnull);
        fn();
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void get_undeclared(void)
{
    struct cfg *c = new_cfg();
    (void)cfg_get_int(c, "http.prot");
}

static void get_wrong_type(void)
{
    struct cfg *c = new_cfg();
    (void)cfg_get_bool(c, "http.port");
}

static void get_unset_required(void)
{
    struct cfg *c = new_cfg();
    static const struct cfg_key req[] = {{.key = "x.n", .type = CFG_INT}};
    (void)cfg_declare(c, req, 1);
    (void)cfg_get_int(c, "x.n");
}

static void declare_bad_default(void)
{
    static const struct cfg_key bad[] = {
        {.key = "x.port", .type = CFG_INT, .def = "http", .min = 1, .max = 10}};
    struct cfg *c = cfg_new();
    (void)cfg_declare(c, bad, 1);
}

static void declare_conflicting_keys(void)
{
    static const struct cfg_key bad[] = {
        {.key = "x.a", .type = CFG_INT, .def = "1"},
        {.key = "x.a.b", .type = CFG_INT, .def = "1"},
    };
    struct cfg *c = cfg_new();
    (void)cfg_declare(c, bad, 2);
}

static void test_programming_errors_abort(void **state)
{
    (void)state;
    expect_abort(get_undeclared);
    expect_abort(get_wrong_type);
    expect_abort(get_unset_required);
    expect_abort(declare_bad_default);
    expect_abort(declare_conflicting_keys);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_empty_documents_keep_defaults),
        cmocka_unit_test(test_file_overrides_defaults),
        cmocka_unit_test(test_env_overrides_file),
        cmocka_unit_test(test_env_error_names_variable),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_top_level_must_be_mapping),
        cmocka_unit_test(test_lists_rejected),
        cmocka_unit_test(test_map_pass_through),
        cmocka_unit_test(test_json_document),
        cmocka_unit_test(test_clone_and_diff),
        cmocka_unit_test(test_required_missing),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_declare_duplicate),
        cmocka_unit_test(test_alias_cycle_is_bounded),
        cmocka_unit_test(test_programming_errors_abort),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
