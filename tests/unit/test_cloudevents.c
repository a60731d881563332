/*
 * Unit tests for cloudevents.c: envelope building (exact compact JSON, caps,
 * missing fields) and parsing with errors that name the offending field.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "cloudevents.h"

static void test_build_full(void **state)
{
    (void)state;
    struct buf b;
    cJSON *data = cJSON_Parse("{ \"battery\" : 87, \"ok\" : true }");
    assert_non_null(data);
    struct cloudevent ev = {
        .id = "018f0c1e-7b1a-7cc0-8e1f-3a2b4c5d6e7f",
        .source = "/webhook-ingest/acme",
        .type = "robot.heartbeat",
        .subject = "r-17",
        .time = "2026-11-22T10:03:56.123Z",
        .data = data,
    };
    buf_init(&b, 4096);
    assert_int_equal(ce_build(&ev, &b), 0);
    assert_string_equal(b.data,
                        "{\"specversion\":\"1.0\",\"id\":\"018f0c1e-7b1a-7cc0-8e1f-3a2b4c5d6e7f\","
                        "\"source\":\"/webhook-ingest/acme\",\"type\":\"robot.heartbeat\","
                        "\"subject\":\"r-17\",\"time\":\"2026-11-22T10:03:56.123Z\","
                        "\"datacontenttype\":\"application/json\","
                        "\"data\":{\"battery\":87,\"ok\":true}}");

    /* What ce_build writes, ce_parse reads back. */
    struct cloudevent back;
    char err[128] = "";
    cJSON *root = ce_parse(b.data, b.len, &back, err, sizeof(err));
    assert_non_null(root);
    assert_string_equal(back.id, ev.id);
    assert_string_equal(back.source, ev.source);
    assert_string_equal(back.type, ev.type);
    assert_string_equal(back.subject, ev.subject);
    assert_string_equal(back.time, ev.time);
    assert_non_null(back.data);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(back.data, "battery")->valueint, 87);
    cJSON_Delete(root);
    cJSON_Delete(data);
    buf_release(&b);
}

/* Raw data is copied byte for byte (spacing kept), with the same envelope and checks. */
static void test_build_raw(void **state)
{
    (void)state;
    static const char data[] = "{ \"battery\" : 87 , \"pad\":\"\\u00e9\" }";
    struct cloudevent ev = {
        .id = "e-1",
        .source = "/webhook-ingest/acme",
        .type = "robot.heartbeat",
        .subject = "r-17",
        .time = "2026-11-22T10:03:56.123Z",
    };
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(ce_build_raw(&ev, data, strlen(data), &b), 0);
    assert_string_equal(b.data, "{\"specversion\":\"1.0\",\"id\":\"e-1\","
                                "\"source\":\"/webhook-ingest/acme\",\"type\":\"robot.heartbeat\","
                                "\"subject\":\"r-17\",\"time\":\"2026-11-22T10:03:56.123Z\","
                                "\"datacontenttype\":\"application/json\","
                                "\"data\":{ \"battery\" : 87 , \"pad\":\"\\u00e9\" }}");
    struct cloudevent back;
    cJSON *root = ce_parse(b.data, b.len, &back, NULL, 0);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(back.data, "battery")->valueint, 87);
    cJSON_Delete(root);

    /* no data, a missing id, a bad time: refused, the buffer left as it was */
    size_t len = b.len;
    assert_int_equal(ce_build_raw(&ev, NULL, 0, &b), -EINVAL);
    ev.id = NULL;
    assert_int_equal(ce_build_raw(&ev, data, strlen(data), &b), -EINVAL);
    ev.id = "e-1";
    ev.time = "yesterday";
    assert_int_equal(ce_build_raw(&ev, data, strlen(data), &b), -EINVAL);
    assert_int_equal(b.len, len);
    buf_release(&b);

    /* over the cap: -E2BIG and no half envelope */
    ev.time = NULL;
    buf_init(&b, 64);
    assert_int_equal(ce_build_raw(&ev, data, strlen(data), &b), -E2BIG);
    assert_true(b.len == 0);
    buf_release(&b);
}

static void test_build_minimal_and_escaping(void **state)
{
    (void)state;
    struct buf b;
    struct cloudevent ev = {.id = "a\"b", .source = "/s\\x", .type = "t\n"};
    buf_init(&b, 1024);
    assert_int_equal(buf_append_str(&b, "prefix:"), 0);
    assert_int_equal(ce_build(&ev, &b), 0);
    /* No data: no datacontenttype; appended after what was there. */
    assert_string_equal(b.data, "prefix:{\"specversion\":\"1.0\",\"id\":\"a\\\"b\",\"source\":\"/"
                                "s\\\\x\",\"type\":\"t\\n\"}");

    struct cloudevent back;
    char err[128];
    cJSON *root = ce_parse(b.data + 7, b.len - 7, &back, err, sizeof(err));
    assert_non_null(root);
    assert_string_equal(back.id, "a\"b");
    assert_string_equal(back.type, "t\n");
    assert_null(back.subject);
    assert_null(back.time);
    assert_null(back.data);
    cJSON_Delete(root);

    /* Scalar data is printed as JSON too. */
    cJSON *num = cJSON_CreateNumber(5);
    buf_reset(&b);
    ev.data = num;
    assert_int_equal(ce_build(&ev, &b), 0);
    assert_non_null(strstr(b.data, "\"datacontenttype\":\"application/json\",\"data\":5}"));
    cJSON_Delete(num);
    buf_release(&b);
}

static void test_build_errors(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1024);
    assert_int_equal(buf_append_str(&b, "keep"), 0);

    struct cloudevent missing_id = {.source = "/s", .type = "t"};
    struct cloudevent empty_source = {.id = "1", .source = "", .type = "t"};
    struct cloudevent missing_type = {.id = "1", .source = "/s"};
    struct cloudevent bad_time = {.id = "1", .source = "/s", .type = "t", .time = "yesterday"};
    assert_int_equal(ce_build(&missing_id, &b), -EINVAL);
    assert_int_equal(ce_build(&empty_source, &b), -EINVAL);
    assert_int_equal(ce_build(&missing_type, &b), -EINVAL);
    assert_int_equal(ce_build(&bad_time, &b), -EINVAL);
    assert_int_equal(ce_build(NULL, &b), -EINVAL);
    assert_string_equal(b.data, "keep");
    buf_release(&b);

    /* Over the cap part-way through: -E2BIG and the buffer as it was. */
    cJSON *data = cJSON_CreateString("0123456789012345678901234567890123456789");
    struct cloudevent ev = {.id = "1", .source = "/s", .type = "t", .data = data};
    buf_init(&b, 80);
    assert_int_equal(buf_append_str(&b, "keep"), 0);
    assert_int_equal(ce_build(&ev, &b), -E2BIG);
    assert_string_equal(b.data, "keep");
    assert_int_equal(b.len, 4);
    buf_release(&b);
    cJSON_Delete(data);
}

static void expect_parse_error(const char *json, const char *want_in_err)
{
    struct cloudevent ev = {.id = "stale"};
    char err[160] = "";
    cJSON *root = ce_parse(json, strlen(json), &ev, err, sizeof(err));
    if (root) {
        cJSON_Delete(root);
        fail_msg("%s parsed, want an error naming %s", json, want_in_err);
    }
    if (!strstr(err, want_in_err))
        fail_msg("error \"%s\" does not contain \"%s\"", err, want_in_err);
    assert_null(ev.id);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":", "invalid json");
    expect_parse_error("[1]", "not a json object");
    expect_parse_error("{\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}", "\"specversion\"");
    expect_parse_error("{\"specversion\":\"0.3\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
                       "\"specversion\"");
    expect_parse_error("{\"specversion\":1.0,\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
                       "\"specversion\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"source\":\"/s\",\"type\":\"t\"}", "\"id\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":7,\"source\":\"/s\",\"type\":\"t\"}",
                       "\"id\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"\",\"type\":\"t\"}",
                       "\"source\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\"}", "\"type\"");
    expect_parse_error(
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"subject\":3}",
        "\"subject\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\","
                       "\"time\":\"2026-02-30T00:00:00Z\"}",
                       "\"time\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\","
                       "\"datacontenttype\":\"text/plain\",\"data\":\"x\"}",
                       "\"datacontenttype\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\","
                       "\"data_base64\":\"AAAA\"}",
                       "\"data_base64\"");
    expect_parse_error("{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"} x",
                       "unexpected data");

    /* A NULL errbuf is allowed. */
    struct cloudevent ev;
    assert_null(ce_parse("{}", 2, &ev, NULL, 0));
}

static void test_parse_accepts(void **state)
{
    (void)state;
    const char *json = "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\","
                       "\"time\":\"2026-11-22T11:03:56+01:00\","
                       "\"datacontenttype\":\"application/json; charset=utf-8\","
                       "\"data\":null,\"ext\":\"extension attributes are kept\"}";
    struct cloudevent ev;
    char err[128] = "";
    cJSON *root = ce_parse(json, strlen(json), &ev, err, sizeof(err));
    if (!root)
        fail_msg("parse failed: %s", err);
    assert_true(cJSON_IsNull(ev.data));
    assert_string_equal(ev.time, "2026-11-22T11:03:56+01:00");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(root, "ext")->valuestring,
                        "extension attributes are kept");
    cJSON_Delete(root);

    json = "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\","
           "\"datacontenttype\":\"application/vnd.fleet+json\",\"data\":[1]}";
    root = ce_parse(json, strlen(json), &ev, err, sizeof(err));
    if (!root)
        fail_msg("parse failed: %s", err);
    assert_true(cJSON_IsArray(ev.data));
    cJSON_Delete(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_full),
        cmocka_unit_test(test_build_raw),
        cmocka_unit_test(test_build_minimal_and_escaping),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_accepts),
    };
    return cmocka_run_group_tests_name("cloudevents", tests, NULL, NULL);
}
