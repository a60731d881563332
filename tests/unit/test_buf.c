/*
 * Unit tests for buf.c: the size cap (exact boundary, failure leaves the buffer
 * unchanged), formatted appends, JSON string escaping and detach/reset.
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

static void test_append_and_cap(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 10);
    assert_null(b.data);
    assert_int_equal(b.len, 0);

    assert_int_equal(buf_append(&b, "hello", 5), 0);
    assert_string_equal(b.data, "hello");
    assert_int_equal(buf_append_str(&b, "world"), 0); /* exactly at the cap */
    assert_string_equal(b.data, "helloworld");
    assert_int_equal(b.len, 10);

    assert_int_equal(buf_append(&b, "!", 1), -E2BIG);
    assert_string_equal(b.data, "helloworld");
    assert_int_equal(b.len, 10);
    assert_int_equal(buf_appendf(&b, "%d", 1), -E2BIG);
    assert_string_equal(b.data, "helloworld");
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_int_equal(b.len, 10);

    /* A huge length must not wrap the arithmetic. */
    assert_int_equal(buf_append(&b, "x", SIZE_MAX), -E2BIG);
    assert_int_equal(b.len, 10);
    buf_release(&b);
    assert_null(b.data);

    /* Growth past the first allocation keeps the content. */
    char chunk[100];
    memset(chunk, 'a', sizeof(chunk));
    buf_init(&b, 1000);
    for (int i = 0; i < 10; i++)
        assert_int_equal(buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_int_equal(b.len, 1000);
    assert_int_equal(strlen(b.data), 1000);
    assert_int_equal(buf_append(&b, "a", 1), -E2BIG);
    buf_release(&b);

    /* A zero cap takes nothing but the empty string. */
    buf_init(&b, 0);
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_string_equal(b.data, "");
    assert_int_equal(buf_append(&b, "a", 1), -E2BIG);
    buf_release(&b);

    /* An "unlimited" cap must not wrap max + 1. */
    buf_init(&b, SIZE_MAX);
    assert_int_equal(buf_append_str(&b, "abc"), 0);
    assert_string_equal(b.data, "abc");
    buf_release(&b);
}

static void test_appendf(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(buf_appendf(&b, "%s=%d", "n", 42), 0);
    assert_int_equal(buf_appendf(&b, ",%05.1f", 3.14159), 0);
    assert_string_equal(b.data, "n=42,003.1");
    assert_int_equal(b.len, strlen("n=42,003.1"));

    char big[100];
    memset(big, 'z', sizeof(big) - 1);
    big[99] = '\0';
    assert_int_equal(buf_appendf(&b, "%s", big), -E2BIG);
    assert_string_equal(b.data, "n=42,003.1");
    buf_release(&b);
}

static void test_json_escaping(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 256);
    assert_int_equal(buf_append_json_str(&b, "plain"), 0);
    assert_string_equal(b.data, "plain");
    buf_reset(&b);

    assert_int_equal(buf_append_json_str(&b, "q\"b\\s/n\nr\rt\tb\bf\f"), 0);
    assert_string_equal(b.data, "q\\\"b\\\\s/n\\nr\\rt\\tb\\bf\\f");
    buf_reset(&b);

    /* Other control characters become \u00XX; DEL and UTF-8 pass through. */
    assert_int_equal(buf_append_json_str(&b, "\x01\x1f\x7f caf\xc3\xa9 \x1b[0m"), 0);
    assert_string_equal(b.data, "\\u0001\\u001f\x7f caf\xc3\xa9 \\u001b[0m");
    buf_reset(&b);

    assert_int_equal(buf_append_json_str(&b, ""), 0);
    assert_string_equal(b.data, "");
    buf_release(&b);
}

static void test_json_escaping_cap(void **state)
{
    (void)state;
    struct buf b;
    /* "ab\n" escapes to 4 bytes. */
    buf_init(&b, 6);
    assert_int_equal(buf_append_str(&b, "xy"), 0);
    assert_int_equal(buf_append_json_str(&b, "ab\n"), 0);
    assert_string_equal(b.data, "xyab\\n");
    buf_release(&b);

    /* Fails on the escape after "ab" fitted: nothing of it may stay behind. */
    buf_init(&b, 5);
    assert_int_equal(buf_append_str(&b, "xy"), 0);
    assert_int_equal(buf_append_json_str(&b, "ab\n"), -E2BIG);
    assert_string_equal(b.data, "xy");
    assert_int_equal(b.len, 2);
    /* Fails on the trailing run after an escape fitted. */
    assert_int_equal(buf_append_json_str(&b, "\tabc"), -E2BIG);
    assert_string_equal(b.data, "xy");
    assert_int_equal(b.len, 2);
    buf_release(&b);
}

static void test_reset_detach(void **state)
{
    (void)state;
    struct buf b;
    size_t len = 99;

    buf_init(&b, 32);
    char *s = buf_detach(&b, &len); /* never appended: still a real string */
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    free(s);

    assert_int_equal(buf_append_str(&b, "abc"), 0);
    buf_reset(&b);
    assert_string_equal(b.data, "");
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append_str(&b, "def"), 0);
    s = buf_detach(&b, &len);
    assert_string_equal(s, "def");
    assert_int_equal(len, 3);
    assert_null(b.data);
    assert_int_equal(b.len, 0);

    /* The buffer is reusable after detach and keeps its cap. */
    assert_int_equal(buf_append_str(&b, "0123456789"), 0);
    assert_int_equal(buf_append(&b, s, 3), 0);
    free(s);
    s = buf_detach(&b, NULL);
    assert_string_equal(s, "0123456789def");
    free(s);
    char over[40];
    memset(over, 'o', sizeof(over));
    assert_int_equal(buf_append(&b, over, sizeof(over)), -E2BIG);
    buf_release(&b);
    buf_release(&b); /* twice is harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_cap), cmocka_unit_test(test_appendf),
        cmocka_unit_test(test_json_escaping),  cmocka_unit_test(test_json_escaping_cap),
        cmocka_unit_test(test_reset_detach),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
