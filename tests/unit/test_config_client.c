/*
 * Unit tests for config_client.c: layering (file < namespaces < env), only
 * reloadable keys changing at run time, refused documents, sealed values
 * opened with the right key only, the atomic cache file, and a client started
 * from the cache file while Redis is unreachable, with acquire/release across
 * a swap.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "config_client.h"
#include "keyring.h"
#include "log.h"

#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "//////////////////////////////////////////8="

static const struct cfg_key KEYS[] = {
    {"svc.limit", CFG_INT, "10", 1, 100, true, NULL, "reloadable"},
    {"svc.port", CFG_INT, "80", 1, 65535, false, NULL, "not reloadable"},
    {"svc.name", CFG_STRING, "a", 0, 0, true, "TEST_CC_NAME", "env override"},
};

static struct cfg *base_cfg(void)
{
    struct cfg *c = cfg_new();
    assert_int_equal(cfg_declare(c, KEYS, 3), 0);
    char err[256] = "";
    assert_int_equal(cfg_load_string(c, "file", "svc: {limit: 20}\n", 16, err, sizeof(err)), 0);
    return c;
}

static char restarted[256];

static void on_restart(void *ud, const char *key)
{
    (void)ud;
    strncat(restarted, key, sizeof(restarted) - strlen(restarted) - 2);
    strncat(restarted, ";", sizeof(restarted) - strlen(restarted) - 1);
}

static void test_build_layers_and_reloadable(void **state)
{
    (void)state;
    struct cfg *file = base_cfg();
    const char *names[] = {"common", "svc"};
    const char *docs[] = {"{\"svc\":{\"limit\":30,\"port\":81}}", "{\"svc\":{\"limit\":40}}"};
    struct cfg *start = NULL, *next = NULL;
    char err[256] = "";
    setenv("TEST_CC_NAME", "from-env", 1);
    assert_int_equal(
        config_build(file, NULL, names, docs, 2, on_restart, NULL, &start, err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(start, "svc.limit"), 40); /* service namespace wins */
    assert_int_equal(cfg_get_int(start, "svc.port"), 81);  /* at start every key applies */
    assert_string_equal(cfg_get_str(start, "svc.name"), "from-env");

    const char *docs2[] = {"{\"svc\":{\"port\":82,\"name\":\"doc\"}}", "{\"svc\":{\"limit\":50}}"};
    restarted[0] = '\0';
    assert_int_equal(
        config_build(file, start, names, docs2, 2, on_restart, NULL, &next, err, sizeof(err)), 0);
    assert_int_equal(cfg_get_int(next, "svc.limit"), 50);
    assert_int_equal(cfg_get_int(next, "svc.port"), 81);            /* kept: needs restart */
    assert_string_equal(cfg_get_str(next, "svc.name"), "from-env"); /* env stays final */
    assert_string_equal(restarted, "svc.port;");
    cfg_free(next);

    const char *bad[] = {NULL, "{\"svc\":{\"limit\":500}}"};
    assert_int_equal(config_build(file, start, names, bad, 2, NULL, NULL, &next, err, sizeof(err)),
                     -EINVAL);
    assert_null(next);
    assert_non_null(strstr(err, "svc.limit"));
    const char *unknown[] = {"{\"nope\":{\"x\":1}}", NULL};
    assert_true(config_build(file, start, names, unknown, 2, NULL, NULL, &next, err, sizeof(err)) <
                0);
    assert_non_null(strstr(err, "nope"));
    unsetenv("TEST_CC_NAME");
    cfg_free(start);
    cfg_free(file);
}

static void test_open_secrets(void **state)
{
    (void)state;
    char err[256] = "";
    struct keyring *a = keyring_new(KEY_A, err, sizeof(err));
    struct keyring *b = keyring_new(KEY_B, err, sizeof(err));
    char *sealed = keyring_seal(a, "config:svc:/svc/name", "\"s3cret\"", 8);
    char doc_text[512];
    snprintf(doc_text, sizeof(doc_text), "{\"svc\":{\"name\":\"%s\",\"plain\":\"v1:x\"}}", sealed);

    cJSON *doc = cJSON_Parse(doc_text);
    assert_int_equal(config_open_secrets(a, "svc", doc, err, sizeof(err)), 0);
    char *out = cJSON_PrintUnformatted(doc);
    assert_string_equal(out, "{\"svc\":{\"name\":\"s3cret\",\"plain\":\"v1:x\"}}");
    free(out);
    cJSON_Delete(doc);

    doc = cJSON_Parse(doc_text); /* another key */
    assert_int_equal(config_open_secrets(b, "svc", doc, err, sizeof(err)), -EBADMSG);
    assert_string_equal(err, "/svc/name: sealed value does not open (wrong key or tampered)");
    cJSON_Delete(doc);
    doc = cJSON_Parse(doc_text); /* bound to another namespace */
    assert_int_equal(config_open_secrets(a, "other", doc, err, sizeof(err)), -EBADMSG);
    cJSON_Delete(doc);
    doc = cJSON_Parse(doc_text); /* no key */
    assert_int_equal(config_open_secrets(NULL, "svc", doc, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "SECRETS_KEY"));
    cJSON_Delete(doc);
    free(sealed);
    keyring_free(a);
    keyring_free(b);
}

static void test_names_and_keys(void **state)
{
    (void)state;
    assert_true(config_ns_valid("webhook-ingest"));
    assert_true(config_ns_valid("common"));
    assert_false(config_ns_valid(""));
    assert_false(config_ns_valid("-x"));
    assert_false(config_ns_valid("A"));
    assert_false(config_ns_valid("a:b"));
    char k[32];
    assert_int_equal(config_key(k, sizeof(k), "common", "released"), 0);
    assert_string_equal(k, "config:common:released");
    assert_int_equal(config_key(k, 10, "common", "released"), -E2BIG);
}

static void test_cache_start_without_redis(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_config_client_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/svc.json", dir);
    const char cache[] = "{\"service\":\"svc\",\"namespaces\":{"
                         "\"common\":{\"version\":3,\"checksum\":\"c\",\"content\":"
                         "\"{\\\"svc\\\":{\\\"limit\\\":33}}\"},"
                         "\"svc\":{\"version\":7,\"checksum\":\"d\",\"content\":"
                         "\"{\\\"svc\\\":{\\\"port\\\":8080}}\"}}}";
    assert_int_equal(config_write_atomic(path, cache, strlen(cache)), 0);

    FILE *devnull = fopen("/dev/null", "w");
    log_set_output(devnull);
    struct cfg *file = base_cfg();
    char err[256] = "";
    struct config_client_options o = {
        .service = "svc",
        .file_cfg = file,
        .start_cfg = file,
        .redis_url = "redis://127.0.0.1:1/0", /* nothing listens */
        .redis_timeout_ms = 200,
        .cache_dir = dir,
        .resync_s = 30,
    };
    struct config_client *c = config_client_new(&o, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(config_client_version(c, "common"), 3);
    assert_int_equal(config_client_version(c, "svc"), 7);
    assert_true(config_client_following(c));
    const struct cfg *cur = config_client_acquire(c);
    assert_int_equal(cfg_get_int(cur, "svc.limit"), 33);
    assert_int_equal(cfg_get_int(cur, "svc.port"), 8080);
    assert_int_equal(cfg_get_int(config_client_initial(c), "svc.port"), 8080);
    assert_int_equal(config_client_resync(c), -EIO); /* Redis still down: nothing changes */
    const struct cfg *again = config_client_acquire(c);
    assert_ptr_equal(cur, again);
    config_client_release(c, again);
    config_client_release(c, cur);
    config_client_free(c);
    log_set_output(NULL);
    fclose(devnull);
    cfg_free(file);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_layers_and_reloadable),
        cmocka_unit_test(test_open_secrets),
        cmocka_unit_test(test_names_and_keys),
        cmocka_unit_test(test_cache_start_without_redis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
