/*
 * Unit tests for json.c: length-bounded parsing (inputs without a NUL, trailing
 * data, error offsets), compact printing and typed member access.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

/* A heap copy without a terminating NUL, so ASan catches any read past len. */
static char *unterminated(const char *s, size_t *len)
{
    *len = strlen(s);
    char *p = malloc(*len ? *len : 1);
    assert_non_null(p);
    memcpy(p, s, *len);
    return p;
}

static void test_parse_exact_length(void **state)
{
    (void)state;
    char err[128] = "";
    size_t len;
    char *text = unterminated(" {\"a\": [1, 2, {\"b\": null}], \"s\": \"x\\n\"} \r\n", &len);
    cJSON *v = json_parse(text, len, err, sizeof(err));
    assert_non_null(v);
    assert_string_equal(err, "");
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(v, "a")));
    assert_string_equal(json_get_str(v, "s"), "x\n");
    cJSON_Delete(v);
    free(text);

    /* Scalars at the very end of the buffer. */
    static const char *const tail[] = {"true", "null", "12345", "\"str\"", "[]"};
    for (size_t i = 0; i < 5; i++) {
        text = unterminated(tail[i], &len);
        v = json_parse(text, len, err, sizeof(err));
        if (!v)
            fail_msg("\"%s\" failed: %s", tail[i], err);
        cJSON_Delete(v);
        free(text);
    }

    /* Only the first len bytes count: a prefix that is a whole document parses. */
    v = json_parse("{\"a\":1}garbage", 7, err, sizeof(err));
    assert_non_null(v);
    cJSON_Delete(v);
}

static void test_parse_errors(void **state)
{
    (void)state;
    char err[128];
    size_t len;

    assert_null(json_parse("", 0, err, sizeof(err)));
    assert_string_equal(err, "empty document at byte offset 0");

    assert_null(json_parse("{\"a\":1} x", 9, err, sizeof(err)));
    assert_string_equal(err, "unexpected data after json value at byte offset 8");

    assert_null(json_parse("{\"a\":1}{}", 9, err, sizeof(err)));
    assert_string_equal(err, "unexpected data after json value at byte offset 7");

    /* An embedded NUL inside len is not whitespace. */
    assert_null(json_parse("{}\0", 3, err, sizeof(err)));
    assert_string_equal(err, "unexpected data after json value at byte offset 2");

    assert_null(json_parse("{\"a\":tru}", 9, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid json at byte offset"));

    /* The offset points into the document, near the mistake. */
    assert_null(json_parse("[1, 2, @]", 9, err, sizeof(err)));
    assert_string_equal(err, "invalid json at byte offset 7");

    /* Cut short: the closing brace lies beyond len. */
    char *text = unterminated("{\"a\": \"abc", &len);
    assert_null(json_parse(text, len, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid json"));
    free(text);

    /* A tiny errbuf is truncated, not overrun; a NULL one is allowed. */
    char small[8];
    assert_null(json_parse("x", 1, small, sizeof(small)));
    assert_string_equal(small, "invalid");
    assert_null(json_parse("x", 1, NULL, 0));
}

static void test_print(void **state)
{
    (void)state;
    char err[64];
    size_t len = 0;
    const char *in = "{ \"b\" : [ 1 , true , null ] , \"q\" : \"say \\\"hi\\\"\" }";
    cJSON *v = json_parse(in, strlen(in), err, sizeof(err));
    assert_non_null(v);
    char *s = json_print(v, &len);
    assert_string_equal(s, "{\"b\":[1,true,null],\"q\":\"say \\\"hi\\\"\"}");
    assert_int_equal(len, strlen(s));
    free(s);
    s = json_print(v, NULL);
    assert_non_null(s);
    free(s);
    cJSON_Delete(v);
    assert_null(json_print(NULL, &len));
}

static void test_getters(void **state)
{
    (void)state;
    char err[64];
    const char *in = "{\"s\":\"v\",\"n\":42,\"neg\":-7,\"f\":1.5,\"big\":1e300,"
                     "\"max\":9007199254740992,\"over\":9007199254740994,"
                     "\"t\":true,\"fa\":false,\"nul\":null,\"ns\":\"12\",\"Case\":1}";
    cJSON *v = json_parse(in, strlen(in), err, sizeof(err));
    assert_non_null(v);
    int64_t i = 1234;
    bool b = false;

    assert_string_equal(json_get_str(v, "s"), "v");
    assert_null(json_get_str(v, "n"));
    assert_null(json_get_str(v, "missing"));
    assert_null(json_get_str(v, "nul"));

    assert_int_equal(json_get_int(v, "n", &i), 0);
    assert_int_equal(i, 42);
    assert_int_equal(json_get_int(v, "neg", &i), 0);
    assert_int_equal(i, -7);
    assert_int_equal(json_get_int(v, "max", &i), 0);
    assert_int_equal(i, 9007199254740992LL);
    i = 1234;
    assert_int_equal(json_get_int(v, "f", &i), -EINVAL);
    assert_int_equal(json_get_int(v, "big", &i), -EINVAL);
    assert_int_equal(json_get_int(v, "over", &i), -EINVAL);
    assert_int_equal(json_get_int(v, "ns", &i), -EINVAL);
    assert_int_equal(json_get_int(v, "t", &i), -EINVAL);
    assert_int_equal(json_get_int(v, "missing", &i), -ENOENT);
    assert_int_equal(json_get_int(v, "case", &i), -ENOENT); /* keys are case-sensitive */
    assert_int_equal(i, 1234);

    assert_int_equal(json_get_bool(v, "t", &b), 0);
    assert_true(b);
    assert_int_equal(json_get_bool(v, "fa", &b), 0);
    assert_false(b);
    b = true;
    assert_int_equal(json_get_bool(v, "n", &b), -EINVAL);
    assert_int_equal(json_get_bool(v, "nul", &b), -EINVAL);
    assert_int_equal(json_get_bool(v, "missing", &b), -ENOENT);
    assert_true(b);

    /* Not an object at all. */
    assert_int_equal(json_get_int(NULL, "n", &i), -ENOENT);
    assert_null(json_get_str(NULL, "s"));
    cJSON_Delete(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_exact_length),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_getters),
    };
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
