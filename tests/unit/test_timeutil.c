/*
 * Unit tests for timeutil.c: RFC 3339 formatting and parsing (offsets,
 * fractions, calendar validity, leap years) and the clocks.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "timeutil.h"

#define T_2026 1795341836123LL /* 2026-11-22T10:03:56.123Z */

static void test_format(void **state)
{
    (void)state;
    char out[TIME_RFC3339_LEN];
    assert_int_equal(time_format_rfc3339(T_2026, out, sizeof(out)), 0);
    assert_string_equal(out, "2026-11-22T10:03:56.123Z");
    assert_int_equal(time_format_rfc3339(0, out, sizeof(out)), 0);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    assert_int_equal(time_format_rfc3339(1709164800007LL, out, sizeof(out)), 0);
    assert_string_equal(out, "2024-02-29T00:00:00.007Z");
    /* Before the epoch the fraction still counts forward from the second. */
    assert_int_equal(time_format_rfc3339(-1, out, sizeof(out)), 0);
    assert_string_equal(out, "1969-12-31T23:59:59.999Z");
    assert_int_equal(time_format_rfc3339(-1000, out, sizeof(out)), 0);
    assert_string_equal(out, "1969-12-31T23:59:59.000Z");

    /* 24 chars + NUL is the minimum. */
    assert_int_equal(time_format_rfc3339(T_2026, out, 25), 0);
    assert_int_equal(time_format_rfc3339(T_2026, out, 24), -E2BIG);
}

static void expect_ms(const char *s, int64_t want)
{
    int64_t ms = 0;
    int rc = time_parse_rfc3339(s, &ms);
    if (rc != 0)
        fail_msg("\"%s\" gave %d", s, rc);
    if (ms != want)
        fail_msg("\"%s\" parsed to %lld, want %lld", s, (long long)ms, (long long)want);
}

static void test_parse(void **state)
{
    (void)state;
    expect_ms("2026-11-22T10:03:56.123Z", T_2026);
    expect_ms("2026-11-22t10:03:56.123z", T_2026);
    expect_ms("2026-11-22 10:03:56.123Z", T_2026);
    expect_ms("2026-11-22T11:03:56.123+01:00", T_2026);
    expect_ms("2026-11-22T05:33:56.123-04:30", T_2026);
    expect_ms("2026-11-22T10:03:56.123+00:00", T_2026);
    expect_ms("2026-11-22T10:03:56.123-00:00", T_2026);
    /* Fractions: one digit is tenths, beyond milliseconds is dropped. */
    expect_ms("2026-11-22T10:03:56Z", T_2026 - 123);
    expect_ms("2026-11-22T10:03:56.1Z", T_2026 - 23);
    expect_ms("2026-11-22T10:03:56.12Z", T_2026 - 3);
    expect_ms("2026-11-22T10:03:56.123456789Z", T_2026);
    /* Offsets that cross a day and a year boundary. */
    expect_ms("2027-01-01T01:00:00+02:00", 1798758000000LL); /* 2026-12-31T23:00Z */
    expect_ms("1970-01-01T00:00:00Z", 0);
    expect_ms("1969-12-31T23:59:59Z", -1000);
    expect_ms("1900-03-01T00:00:00Z", -2203891200000LL);
    /* A leap second is held at :59. */
    expect_ms("2016-12-31T23:59:60Z", 1483228799000LL);
}

static void test_leap_years(void **state)
{
    (void)state;
    int64_t ms = 42;
    expect_ms("2024-02-29T00:00:00Z", 1709164800000LL);
    expect_ms("2000-02-29T23:59:59Z", 951868799000LL); /* divisible by 400 */
    assert_int_equal(time_parse_rfc3339("2026-02-29T00:00:00Z", &ms), -EINVAL);
    assert_int_equal(time_parse_rfc3339("1900-02-29T00:00:00Z", &ms), -EINVAL); /* by 100 */
    assert_int_equal(time_parse_rfc3339("2100-02-29T00:00:00Z", &ms), -EINVAL);
    assert_int_equal(ms, 42);
}

static void test_parse_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "2026-02-30T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:61Z",
        "2026-01-01T00:00:00",             /* no offset */
        "2026-01-01",                      /* date only */
        "2026-01-01T00:00Z",               /* no seconds */
        "2026-1-01T00:00:00Z",             /* one-digit month */
        "2026-01-01X00:00:00Z",            /* bad separator */
        "2026-01-01T00:00:00.Z",           /* empty fraction */
        "2026-01-01T00:00:00.1234567891Z", /* more than 9 fraction digits */
        "2026-01-01T00:00:00+0100",        /* offset without colon */
        "2026-01-01T00:00:00+24:00",       /* offset hours */
        "2026-01-01T00:00:00+01:60",       /* offset minutes */
        "2026-01-01T00:00:00+01",          /* offset cut short */
        "2026-01-01T00:00:00Z ",           /* trailing space */
        "2026-01-01T00:00:00ZZ",           /* trailing junk */
        " 2026-01-01T00:00:00Z",           /* leading space */
        "2026-01-01T00:00:00UTC",
    };
    int64_t ms = 42;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = time_parse_rfc3339(bad[i], &ms);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d, want -EINVAL", bad[i], rc);
    }
    assert_int_equal(time_parse_rfc3339(NULL, &ms), -EINVAL);
    assert_int_equal(ms, 42);
}

static void test_round_trip(void **state)
{
    (void)state;
    static const int64_t samples[] = {
        0, 1, 999, 1000, T_2026, 951868799123LL, 4102444799999LL, -1, -86400001LL};
    char out[TIME_RFC3339_LEN];
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        int64_t back = 0;
        assert_int_equal(time_format_rfc3339(samples[i], out, sizeof(out)), 0);
        assert_int_equal(time_parse_rfc3339(out, &back), 0);
        assert_int_equal(back, samples[i]);
    }
}

static void test_clocks(void **state)
{
    (void)state;
    int64_t now = time_now_ms();
    assert_true(now > 1700000000000LL); /* after 2023 */
    int64_t m0 = time_mono_ms();
    time_sleep_ms(20);
    int64_t m1 = time_mono_ms();
    assert_in_range(m1 - m0, 20, 2000);
    time_sleep_ms(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),     cmocka_unit_test(test_parse),
        cmocka_unit_test(test_leap_years), cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_round_trip), cmocka_unit_test(test_clocks),
    };
    return cmocka_run_group_tests_name("timeutil", tests, NULL, NULL);
}
