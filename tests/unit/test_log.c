/*
 * Unit tests for log.c: every line is one ECS JSON object (checked by parsing
 * it with cJSON), level filtering skips argument evaluation, escaping, trace
 * ids per thread, the line cap and concurrent writers.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "log.h"
#include "timeutil.h"

#define TRACE_A "4bf92f3577b34da6a3ce929d0e0e4736"

struct capture {
    FILE *fp;
    char *data;
    size_t size;
    size_t pos; /* next unread byte */
};

static struct capture cap;

static int setup(void **state)
{
    (void)state;
    memset(&cap, 0, sizeof(cap));
    cap.fp = open_memstream(&cap.data, &cap.size);
    if (!cap.fp)
        return -1;
    log_init("test-svc", LOG_LEVEL_INFO);
    log_set_trace_id(NULL);
    log_set_output(cap.fp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    log_set_output(NULL);
    fclose(cap.fp);
    free(cap.data);
    return 0;
}

/* The next captured line parsed as JSON (the caller deletes it), or NULL if none. */
static cJSON *next_line(void)
{
    fflush(cap.fp);
    if (cap.pos >= cap.size)
        return NULL;
    const char *start = cap.data + cap.pos;
    const char *nl = memchr(start, '\n', cap.size - cap.pos);
    if (!nl)
        fail_msg("unterminated log line: %s", start);
    size_t len = (size_t)(nl - start);
    cap.pos += len + 1;
    cJSON *v = cJSON_ParseWithLength(start, len);
    if (!v)
        fail_msg("log line is not JSON: %.*s", (int)len, start);
    if (!cJSON_IsObject(v))
        fail_msg("log line is not an object: %.*s", (int)len, start);
    return v;
}

static const char *str_field(const cJSON *v, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(v, key);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void test_ecs_fields(void **state)
{
    (void)state;
    int64_t before = time_now_ms();
    LOG_INFO("robot \"%s\" online", "r-17");
    int64_t after = time_now_ms();

    cJSON *v = next_line();
    assert_non_null(v);
    int64_t ts = 0;
    assert_non_null(str_field(v, "@timestamp"));
    assert_int_equal(time_parse_rfc3339(str_field(v, "@timestamp"), &ts), 0);
    assert_in_range(ts, before, after);
    assert_string_equal(str_field(v, "log.level"), "info");
    assert_string_equal(str_field(v, "message"), "robot \"r-17\" online");
    assert_string_equal(str_field(v, "ecs.version"), "8.11.0");
    assert_string_equal(str_field(v, "service.name"), "test-svc");
    assert_null(cJSON_GetObjectItemCaseSensitive(v, "trace.id"));
    cJSON_Delete(v);
    assert_null(next_line());

    LOG_WARN("w");
    LOG_ERROR("e");
    v = next_line();
    assert_string_equal(str_field(v, "log.level"), "warn");
    cJSON_Delete(v);
    v = next_line();
    assert_string_equal(str_field(v, "log.level"), "error");
    cJSON_Delete(v);
}

static void test_trace_and_domain_fields(void **state)
{
    (void)state;
    log_set_trace_id(TRACE_A);
    assert_string_equal(log_get_trace_id(), TRACE_A);
    struct log_field fields[] = {{"robot.id", "r-17"}, {"command.id", "c\"1\n"}};
    log_fields(LOG_LEVEL_INFO, fields, 2, "reboot accepted");

    cJSON *v = next_line();
    assert_string_equal(str_field(v, "trace.id"), TRACE_A);
    assert_string_equal(str_field(v, "robot.id"), "r-17");
    assert_string_equal(str_field(v, "command.id"), "c\"1\n");
    assert_string_equal(str_field(v, "message"), "reboot accepted");
    cJSON_Delete(v);

    log_set_trace_id(NULL);
    assert_null(log_get_trace_id());
    LOG_INFO("after clear");
    v = next_line();
    assert_null(cJSON_GetObjectItemCaseSensitive(v, "trace.id"));
    cJSON_Delete(v);
}

static void *log_from_thread(void *arg)
{
    (void)arg;
    /* The trace id is per thread: the main thread's must not leak in here. */
    LOG_INFO("from thread");
    return (void *)(log_get_trace_id() ? "leaked" : NULL);
}

static void test_trace_id_per_thread(void **state)
{
    (void)state;
    pthread_t t;
    void *ret = NULL;
    log_set_trace_id(TRACE_A);
    assert_int_equal(pthread_create(&t, NULL, log_from_thread, NULL), 0);
    assert_int_equal(pthread_join(t, &ret), 0);
    assert_null(ret);
    cJSON *v = next_line();
    assert_string_equal(str_field(v, "message"), "from thread");
    assert_null(cJSON_GetObjectItemCaseSensitive(v, "trace.id"));
    cJSON_Delete(v);
    assert_string_equal(log_get_trace_id(), TRACE_A);
    log_set_trace_id(NULL);
}

static int evaluations;

static int bump(void)
{
    return ++evaluations;
}

static void test_level_filter_skips_arguments(void **state)
{
    (void)state;
    evaluations = 0;
    log_set_level(LOG_LEVEL_WARN);
    assert_int_equal(log_get_level(), LOG_LEVEL_WARN);
    assert_false(log_enabled(LOG_LEVEL_INFO));
    assert_true(log_enabled(LOG_LEVEL_ERROR));
    LOG_DEBUG("n=%d", bump());
    LOG_INFO("n=%d", bump());
    struct log_field f = {"k", "v"};
    log_fields(LOG_LEVEL_INFO, &f, 1, "n=%d", bump());
    assert_int_equal(evaluations, 0);
    assert_null(next_line());

    LOG_WARN("n=%d", bump());
    assert_int_equal(evaluations, 1);
    cJSON *v = next_line();
    assert_string_equal(str_field(v, "message"), "n=1");
    cJSON_Delete(v);

    log_set_level(LOG_LEVEL_DEBUG);
    LOG_DEBUG("n=%d", bump());
    assert_int_equal(evaluations, 2);
    v = next_line();
    assert_string_equal(str_field(v, "log.level"), "debug");
    cJSON_Delete(v);
}

static void test_escaping(void **state)
{
    (void)state;
    const char *msg = "quote \" backslash \\ newline \n tab \t cr \r bell \a esc \x1b end";
    LOG_INFO("%s", msg);
    fflush(cap.fp);
    /* Exactly one physical line. */
    assert_non_null(memchr(cap.data, '\n', cap.size));
    assert_ptr_equal(memchr(cap.data, '\n', cap.size), cap.data + cap.size - 1);
    cJSON *v = next_line();
    assert_string_equal(str_field(v, "message"), msg);
    cJSON_Delete(v);
}

static void test_long_lines(void **state)
{
    (void)state;
    /* The message is cut at 4095 bytes but the line stays valid. */
    char *big = malloc(10001);
    assert_non_null(big);
    memset(big, 'm', 10000);
    big[10000] = '\0';
    LOG_INFO("%s", big);
    cJSON *v = next_line();
    assert_int_equal(strlen(str_field(v, "message")), 4095);
    cJSON_Delete(v);

    /* A field past the 16 KiB line cap: a short valid line instead of a cut one. */
    char *huge = malloc(20001);
    assert_non_null(huge);
    memset(huge, 'v', 20000);
    huge[20000] = '\0';
    struct log_field fields[] = {{"robot.id", "r-1"}, {"payload", huge}, {"after", "x"}};
    log_fields(LOG_LEVEL_ERROR, fields, 3, "too much");
    v = next_line();
    assert_string_equal(str_field(v, "message"), "log line too long");
    assert_string_equal(str_field(v, "log.level"), "error");
    assert_string_equal(str_field(v, "service.name"), "test-svc");
    assert_null(cJSON_GetObjectItemCaseSensitive(v, "payload"));
    cJSON_Delete(v);
    free(huge);
    free(big);
}

static void test_service_name_and_levels(void **state)
{
    (void)state;
    char longname[100];
    memset(longname, 's', 99);
    longname[99] = '\0';
    log_init(longname, LOG_LEVEL_INFO);
    LOG_INFO("x");
    cJSON *v = next_line();
    assert_int_equal(strlen(str_field(v, "service.name")), 63);
    cJSON_Delete(v);

    enum log_level l = LOG_LEVEL_ERROR;
    assert_int_equal(log_level_parse("debug", &l), 0);
    assert_int_equal(l, LOG_LEVEL_DEBUG);
    assert_int_equal(log_level_parse("INFO", &l), 0);
    assert_int_equal(l, LOG_LEVEL_INFO);
    assert_int_equal(log_level_parse("warning", &l), 0);
    assert_int_equal(l, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("Warn", &l), 0);
    assert_int_equal(l, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("error", &l), 0);
    assert_int_equal(l, LOG_LEVEL_ERROR);
    assert_int_equal(log_level_parse("fatal", &l), -EINVAL);
    assert_int_equal(log_level_parse("", &l), -EINVAL);
    assert_int_equal(log_level_parse(NULL, &l), -EINVAL);
    assert_int_equal(l, LOG_LEVEL_ERROR);
}

#define THREADS          4
#define LINES_PER_THREAD 200

static void *log_many(void *arg)
{
    char id[8];
    snprintf(id, sizeof(id), "t%d", (int)(intptr_t)arg);
    struct log_field f = {"thread", id};
    for (int i = 0; i < LINES_PER_THREAD; i++)
        log_fields(LOG_LEVEL_INFO, &f, 1, "line %d with some padding to make it longer", i);
    return NULL;
}

static void test_concurrent_lines_do_not_mix(void **state)
{
    (void)state;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, log_many, (void *)(intptr_t)i), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    int count = 0;
    cJSON *v;
    while ((v = next_line()) != NULL) {
        assert_non_null(str_field(v, "thread"));
        count++;
        cJSON_Delete(v);
    }
    assert_int_equal(count, THREADS * LINES_PER_THREAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ecs_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trace_and_domain_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trace_id_per_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_filter_skips_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_name_and_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_lines_do_not_mix, setup, teardown),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
