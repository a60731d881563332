/*
 * Unit tests for the stream-processor's robot table (services/stream-processor/
 * state.c): lookups by id and length, removal with its backward shift, and
 * the cache hint, which must leave the table as it was.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "state.h"

#define N 5000

static struct robot *get(const struct robot_table *t, const char *id)
{
    return robot_table_get(t, id, strlen(id));
}

static void test_ids_by_length(void **state)
{
    (void)state;
    struct robot_table *t = robot_table_new();
    struct robot *ab = robot_table_add(t, "ab", 2, 3);
    assert_non_null(ab);
    assert_string_equal(ab->id, "ab");
    assert_int_equal(ab->idlen, 2);
    assert_int_equal(ab->partition, 3);
    assert_ptr_equal(get(t, "ab"), ab);
    /* a prefix, a longer id and one with a NUL inside are other robots */
    assert_null(get(t, "a"));
    assert_null(get(t, "abc"));
    assert_null(robot_table_get(t, "ab\0x", 4));
    assert_null(robot_table_get(t, "ab\0", 3));
    struct robot *abc = robot_table_add(t, "abc", 3, 0);
    assert_ptr_equal(get(t, "abc"), abc);
    assert_ptr_equal(get(t, "ab"), ab);
    assert_int_equal(robot_table_count(t), 2);
    robot_table_free(t);
}

/*
 * An id and its prefix that share a slot (the low 16 bits of their hashes
 * agree): the lookup of the one meets the other, and only the length tells
 * them apart.
 */
static void test_prefix_in_the_same_slot(void **state)
{
    (void)state;
    const char *shorter = "robot-7";
    char longer[32] = "";
    for (unsigned i = 0; i < 10000000 && !longer[0]; i++) {
        snprintf(longer, sizeof(longer), "%s.%u", shorter, i);
        if (((state_hash(shorter, strlen(shorter)) ^ state_hash(longer, strlen(longer))) &
             0xffff) != 0)
            longer[0] = '\0';
    }
    assert_true(longer[0] != '\0');
    struct robot_table *t = robot_table_new();
    struct robot *r = robot_table_add(t, longer, strlen(longer), 0);
    assert_null(get(t, shorter));
    assert_ptr_equal(get(t, longer), r);
    struct robot *s = robot_table_add(t, shorter, strlen(shorter), 0);
    assert_ptr_equal(get(t, shorter), s);
    assert_ptr_equal(get(t, longer), r);
    robot_table_free(t);
}

static void test_many_and_remove(void **state)
{
    (void)state;
    struct robot_table *t = robot_table_new();
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "robot-%d", i);
        assert_non_null(robot_table_add(t, id, strlen(id), i % 12));
    }
    assert_int_equal(robot_table_count(t), N);
    /* every other robot goes: the backward shift must keep the rest reachable */
    for (int i = 0; i < N; i += 2) {
        snprintf(id, sizeof(id), "robot-%d", i);
        struct robot *r = get(t, id);
        assert_non_null(r);
        robot_table_remove(t, r);
    }
    assert_int_equal(robot_table_count(t), N / 2);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "robot-%d", i);
        struct robot *r = get(t, id);
        if (i % 2 == 0) {
            assert_null(r);
        } else {
            assert_non_null(r);
            assert_string_equal(r->id, id);
            assert_int_equal(r->partition, i % 12);
        }
    }
    robot_table_free(t);
}

static void test_prefetch_is_only_a_hint(void **state)
{
    (void)state;
    struct robot_table *t = robot_table_new();
    char id[32];
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        robot_table_add(t, id, strlen(id), 0);
    }
    for (int i = 0; i < 200; i++) { /* present and absent ids, both stages */
        snprintf(id, sizeof(id), "r%d", i);
        robot_table_prefetch(t, id, strlen(id), false);
        robot_table_prefetch(t, id, strlen(id), true);
    }
    assert_int_equal(robot_table_count(t), 100);
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        if (i < 100)
            assert_non_null(get(t, id));
        else
            assert_null(get(t, id));
    }
    robot_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_by_length),
        cmocka_unit_test(test_prefix_in_the_same_slot),
        cmocka_unit_test(test_many_and_remove),
        cmocka_unit_test(test_prefetch_is_only_a_hint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
