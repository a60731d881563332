/*
 * Unit tests for str.c: the checked replacements for atoi/strtod/strcpy and
 * the small predicates, including every error path.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "str.h"

static void test_int64(void **state)
{
    (void)state;
    int64_t v = 0;
    assert_int_equal(str_to_int64("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(str_to_int64("42", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(str_to_int64("-17", &v), 0);
    assert_int_equal(v, -17);
    assert_int_equal(str_to_int64("+5", &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(str_to_int64("007", &v), 0); /* decimal, not octal */
    assert_int_equal(v, 7);
    assert_int_equal(str_to_int64("9223372036854775807", &v), 0);
    assert_int_equal(v, INT64_MAX);
    assert_int_equal(str_to_int64("-9223372036854775808", &v), 0);
    assert_true(v == INT64_MIN);

    v = 1234;
    assert_int_equal(str_to_int64("9223372036854775808", &v), -ERANGE);
    assert_int_equal(str_to_int64("-9223372036854775809", &v), -ERANGE);
    static const char *const bad[] = {"",    " 1", "1 ", "12a", "a12", "0x10",
                                      "1.5", "-",  "+",  "1e3", "\t7", "--1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = str_to_int64(bad[i], &v);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d, want -EINVAL", bad[i], rc);
    }
    assert_int_equal(str_to_int64(NULL, &v), -EINVAL);
    assert_int_equal(v, 1234); /* untouched on failure */
}

static void test_double(void **state)
{
    (void)state;
    double d = 0;
    assert_int_equal(str_to_double("1.5", &d), 0);
    assert_true(d == 1.5);
    assert_int_equal(str_to_double("-2e3", &d), 0);
    assert_true(d == -2000.0);
    assert_int_equal(str_to_double("0", &d), 0);
    assert_true(d == 0.0);

    d = 7.0;
    assert_int_equal(str_to_double("1e999", &d), -ERANGE);
    static const char *const bad[] = {"", " 1", "1.5x", "abc", "inf", "nan", "-infinity", "1 "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = str_to_double(bad[i], &d);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d, want -EINVAL", bad[i], rc);
    }
    assert_int_equal(str_to_double(NULL, &d), -EINVAL);
    assert_true(d == 7.0);
}

static void test_bool(void **state)
{
    (void)state;
    static const char *const yes[] = {"true", "TRUE", "Yes", "on", "1"};
    static const char *const no[] = {"false", "False", "NO", "off", "0"};
    bool b;
    for (size_t i = 0; i < 5; i++) {
        b = false;
        assert_int_equal(str_to_bool(yes[i], &b), 0);
        assert_true(b);
        b = true;
        assert_int_equal(str_to_bool(no[i], &b), 0);
        assert_false(b);
    }
    b = true;
    static const char *const bad[] = {"", "2", "tru", "truee", " true", "y", "enabled"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = str_to_bool(bad[i], &b);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d, want -EINVAL", bad[i], rc);
    }
    assert_int_equal(str_to_bool(NULL, &b), -EINVAL);
    assert_true(b);
}

static void test_copy(void **state)
{
    (void)state;
    char dst[6];
    memset(dst, 'X', sizeof(dst));
    assert_int_equal(str_copy(dst, "abc", sizeof(dst)), 3);
    assert_string_equal(dst, "abc");
    assert_int_equal(str_copy(dst, "abcdef", sizeof(dst)), 6); /* truncated */
    assert_string_equal(dst, "abcde");
    assert_int_equal(str_copy(dst, "abcde", sizeof(dst)), 5); /* exact fit */
    assert_string_equal(dst, "abcde");
    assert_int_equal(str_copy(dst, "", sizeof(dst)), 0);
    assert_string_equal(dst, "");
    dst[0] = 'Q';
    assert_int_equal(str_copy(dst, "abc", 0), 3); /* nothing written */
    assert_int_equal(dst[0], 'Q');
    assert_int_equal(str_copy(dst, "abc", 1), 3);
    assert_string_equal(dst, "");
}

static void test_predicates(void **state)
{
    (void)state;
    assert_true(str_has_prefix("robot.heartbeat", "robot."));
    assert_true(str_has_prefix("abc", ""));
    assert_true(str_has_prefix("abc", "abc"));
    assert_false(str_has_prefix("ab", "abc"));
    assert_false(str_has_prefix("Robot.x", "robot."));

    assert_true(str_eq_nocase("Content-Type", "content-type"));
    assert_true(str_eq_nocase("", ""));
    assert_false(str_eq_nocase("abc", "abcd"));
    assert_false(str_eq_nocase("abc", "abd"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int64),      cmocka_unit_test(test_double),
        cmocka_unit_test(test_bool),       cmocka_unit_test(test_copy),
        cmocka_unit_test(test_predicates),
    };
    return cmocka_run_group_tests_name("str", tests, NULL, NULL);
}
