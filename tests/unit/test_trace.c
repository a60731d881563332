/*
 * Unit tests for trace.c: traceparent generation, W3C validation rules and
 * child spans that keep the trace id.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "trace.h"

#define SAMPLE "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void check_shape(const char *tp)
{
    assert_int_equal(strlen(tp), 55);
    assert_int_equal(trace_parent_parse(tp, NULL), 0);
    assert_memory_equal(tp, "00-", 3);
}

static void test_new(void **state)
{
    (void)state;
    char a[TRACE_PARENT_LEN], b[TRACE_PARENT_LEN];
    assert_int_equal(trace_parent_new(a), 0);
    assert_int_equal(trace_parent_new(b), 0);
    check_shape(a);
    check_shape(b);
    assert_string_equal(a + 53, "01"); /* sampled */
    assert_memory_not_equal(a + 3, b + 3, 32);
    assert_memory_not_equal(a + 36, b + 36, 16);
}

static void test_parse_valid(void **state)
{
    (void)state;
    char id[TRACE_ID_LEN] = "";
    assert_int_equal(trace_parent_parse(SAMPLE, id), 0);
    assert_string_equal(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_int_equal(
        trace_parent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", NULL), 0);
    /* A later version may carry more fields after the flags. */
    assert_int_equal(
        trace_parent_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abcd", id), 0);
    assert_string_equal(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_int_equal(
        trace_parent_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", NULL), 0);
}

static void test_parse_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",      /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",    /* v00 too long */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",    /* v00 too long */
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",     /* trace id 31 */
        "00-4bf92f3577b34da6a3ce929d0e0e47366-0f067aa0ba902b7-01",     /* trace id 33 */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",     /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",     /* zero span id */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",     /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",     /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",     /* uppercase */
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     /* uppercase */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     /* version ff */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",     /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",     /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",     /* not hex */
        "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",     /* not hex */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01abcd", /* no dash after flags */
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    /* leading space */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char id[TRACE_ID_LEN] = "untouched";
        int rc = trace_parent_parse(bad[i], id);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d, want -EINVAL", bad[i], rc);
        assert_string_equal(id, "untouched");
    }
    assert_int_equal(trace_parent_parse(NULL, NULL), -EINVAL);
}

static void test_child(void **state)
{
    (void)state;
    char child[TRACE_PARENT_LEN], id[TRACE_ID_LEN];

    assert_int_equal(trace_parent_child(SAMPLE, child), 0);
    check_shape(child);
    assert_int_equal(trace_parent_parse(child, id), 0);
    assert_string_equal(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_memory_not_equal(child + 36, SAMPLE + 36, 16); /* new span */
    assert_string_equal(child + 53, "01");

    /* Not sampled stays not sampled; unknown flag bits are not echoed. */
    assert_int_equal(
        trace_parent_child("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", child), 0);
    assert_string_equal(child + 53, "00");
    assert_int_equal(
        trace_parent_child("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", child), 0);
    assert_string_equal(child + 53, "01");

    /* A later version's parent yields a version 00 child of the same trace. */
    assert_int_equal(
        trace_parent_child("05-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", child),
        0);
    check_shape(child);
    assert_memory_equal(child + 3, "4bf92f3577b34da6a3ce929d0e0e4736", 32);

    /* No or a bad parent starts a new trace. */
    assert_int_equal(trace_parent_child(NULL, child), 0);
    check_shape(child);
    assert_int_equal(trace_parent_child("garbage", child), 0);
    check_shape(child);
    assert_memory_not_equal(child + 3, "4bf92f3577b34da6a3ce929d0e0e4736", 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new),
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_child),
    };
    return cmocka_run_group_tests_name("trace", tests, NULL, NULL);
}
