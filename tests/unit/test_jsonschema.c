/*
 * Unit tests for jsonschema.c: every supported keyword accepts and refuses,
 * errors name the JSON Pointer of the offending value, bad schemas are refused
 * at load, and the x-secret walk finds exactly the marked values.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jsonschema.h"

static const char SCHEMA[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"ingest\":{\"type\":\"object\",\"required\":[\"max_batch\"],\"properties\":{"
    "\"max_batch\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10000},"
    "\"ratio\":{\"type\":\"number\",\"exclusiveMaximum\":1}}},"
    "\"log\":{\"type\":\"object\",\"properties\":{\"level\":{\"enum\":[\"debug\",\"info\"]}}},"
    "\"vendor\":{\"type\":\"object\",\"properties\":{"
    "\"token\":{\"type\":\"string\",\"x-secret\":true,\"minLength\":4},"
    "\"name\":{\"type\":\"string\",\"pattern\":\"^[a-z]+$\",\"maxLength\":5}}},"
    "\"hosts\":{\"type\":\"array\",\"maxItems\":2,\"items\":{\"type\":\"string\"}},"
    "\"a/b\":{\"type\":[\"string\",\"null\"]}}}";

static struct jsonschema *load(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    char err[256] = "";
    struct jsonschema *s = jsonschema_new(j, err, sizeof(err));
    cJSON_Delete(j);
    if (!s)
        fail_msg("jsonschema_new: %s", err);
    return s;
}

static void expect(const struct jsonschema *s, const char *doc, const char *want_err)
{
    cJSON *d = cJSON_Parse(doc);
    assert_non_null(d);
    char err[256] = "";
    int rc = jsonschema_validate(s, d, err, sizeof(err));
    cJSON_Delete(d);
    if (!want_err) {
        if (rc != 0)
            fail_msg("%s: unexpected error %s", doc, err);
        return;
    }
    assert_int_equal(rc, -EINVAL);
    assert_string_equal(err, want_err);
}

static void test_valid_documents(void **state)
{
    (void)state;
    struct jsonschema *s = load(SCHEMA);
    expect(s, "{}", NULL);
    expect(s, "{\"ingest\":{\"max_batch\":200,\"ratio\":0.5}}", NULL);
    expect(s, "{\"log\":{\"level\":\"debug\"},\"hosts\":[\"a\",\"b\"],\"a/b\":null}", NULL);
    expect(s, "{\"vendor\":{\"token\":\"s3cret\",\"name\":\"acme\"}}", NULL);
    jsonschema_free(s);
}

static void test_errors_name_the_path(void **state)
{
    (void)state;
    struct jsonschema *s = load(SCHEMA);
    expect(s, "{\"ingest\":{\"max_batch\":20000}}", "/ingest/max_batch: must be <= 10000");
    expect(s, "{\"ingest\":{\"max_batch\":0}}", "/ingest/max_batch: must be >= 1");
    expect(s, "{\"ingest\":{\"max_batch\":1.5}}",
           "/ingest/max_batch: must be of type integer, not number");
    expect(s, "{\"ingest\":{}}", "/ingest/max_batch: is required");
    expect(s, "{\"ingest\":{\"max_batch\":1,\"ratio\":1}}", "/ingest/ratio: must be < 1");
    expect(s, "{\"nope\":1}", "/nope: is not an allowed property");
    expect(s, "{\"log\":{\"level\":\"loud\"}}",
           "/log/level: must be one of the values the schema lists");
    expect(s, "{\"vendor\":{\"token\":\"abc\"}}",
           "/vendor/token: must be at least 4 characters long");
    expect(s, "{\"vendor\":{\"name\":\"ACME\"}}",
           "/vendor/name: does not match the pattern of the schema");
    expect(s, "{\"vendor\":{\"name\":\"abcdef\"}}",
           "/vendor/name: must be at most 5 characters long");
    expect(s, "{\"hosts\":[\"a\",2]}", "/hosts/1: must be of type string, not number");
    expect(s, "{\"hosts\":[\"a\",\"b\",\"c\"]}", "/hosts: must have at most 2 items");
    expect(s, "{\"a/b\":1}", "/a~1b: has the wrong type (number)");
    expect(s, "[]", "/: must be of type object, not array");
    jsonschema_free(s);
}

static void test_bad_schemas(void **state)
{
    (void)state;
    static const struct {
        const char *schema, *err;
    } cases[] = {
        {"[]", "/: a schema must be an object or a boolean"},
        {"{\"type\":\"thing\"}", "/: \"type\" must name JSON types"},
        {"{\"properties\":{\"a\":{\"minimum\":\"1\"}}}",
         "/properties/a: \"minimum\" must be a number"},
        {"{\"properties\":{\"a\":{\"pattern\":\"(\"}}}",
         "/properties/a: \"pattern\" is not a valid POSIX extended regex"},
        {"{\"required\":\"a\"}", "/: \"required\" must be an array of strings"},
        {"{\"items\":{\"x-secret\":1}}", "/items: \"x-secret\" must be a boolean"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *j = cJSON_Parse(cases[i].schema);
        assert_non_null(j);
        char err[256] = "";
        assert_null(jsonschema_new(j, err, sizeof(err)));
        assert_string_equal(err, cases[i].err);
        cJSON_Delete(j);
    }
}

static int collect(void *ud, const char *path, cJSON *parent, cJSON *value)
{
    (void)parent;
    char *out = ud;
    strncat(out, path, 255 - strlen(out));
    strncat(out, "=", 255 - strlen(out));
    strncat(out, cJSON_IsString(value) ? value->valuestring : "?", 255 - strlen(out));
    strncat(out, ";", 255 - strlen(out));
    return 0;
}

static int replace(void *ud, const char *path, cJSON *parent, cJSON *value)
{
    (void)ud;
    (void)path;
    jsonschema_replace(parent, value, cJSON_CreateString("******"));
    return 0;
}

static void test_secrets_walk(void **state)
{
    (void)state;
    struct jsonschema *s =
        load("{\"properties\":{\"v\":{\"properties\":{\"token\":{\"x-secret\":true}}},"
             "\"keys\":{\"items\":{\"x-secret\":true}},\"any\":{\"additionalProperties\":"
             "{\"x-secret\":true}}}}");
    cJSON *d = cJSON_Parse("{\"v\":{\"token\":\"t1\",\"name\":\"n\"},\"keys\":[\"k0\",\"k1\"],"
                           "\"any\":{\"x\":\"ax\"},\"plain\":\"p\"}");
    char out[256] = "";
    assert_int_equal(jsonschema_foreach_secret(s, d, collect, out), 0);
    assert_string_equal(out, "/v/token=t1;/keys/0=k0;/keys/1=k1;/any/x=ax;");
    assert_int_equal(jsonschema_foreach_secret(s, d, replace, NULL), 0);
    char *text = cJSON_PrintUnformatted(d);
    assert_string_equal(text, "{\"v\":{\"token\":\"******\",\"name\":\"n\"},\"keys\":[\"******\","
                              "\"******\"],\"any\":{\"x\":\"******\"},\"plain\":\"p\"}");
    free(text);
    cJSON_Delete(d);
    jsonschema_free(s);
}

static void test_path_push(void **state)
{
    (void)state;
    char p[8] = "";
    assert_int_equal(jsonschema_path_push(p, sizeof(p), "a~/"), 0);
    assert_string_equal(p, "/a~0~1");
    assert_int_equal(jsonschema_path_push(p, sizeof(p), "xyz"), -E2BIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_documents), cmocka_unit_test(test_errors_name_the_path),
        cmocka_unit_test(test_bad_schemas),     cmocka_unit_test(test_secrets_walk),
        cmocka_unit_test(test_path_push),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
