/*
 * Unit tests for metrics.c: values, the exact exposition text, escaping,
 * concurrent updates, callback gauges, the render cap, aborts on programming
 * errors, and `promtool check metrics` on a rendered registry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "metrics.h"

static char *render(struct metrics *m)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(metrics_render(m, &b), 0);
    return buf_detach(&b, NULL);
}

static void test_exact_text(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    const char *const req_labels[] = {"method", "code"};
    struct metric *c = metrics_counter(m, "app_requests_total", "Requests handled.", 2, req_labels);
    const char *const get200[] = {"GET", "200"};
    const char *const post500[] = {"POST", "500"};
    struct metric_series *s1 = metric_series(c, get200);
    metric_series_add(s1, 1);
    metric_series_add(s1, 2);
    metric_series_add(metric_series(c, post500), 1.5);
    assert_ptr_equal(metric_series(c, get200), s1);
    assert_true(metric_series_value(s1) == 3.0);

    struct metric *g = metrics_gauge(m, "app_temperature_celsius", "Temperature.", 0, NULL);
    metric_set(g, 4);
    metric_add(g, -6.5);

    const double bounds[] = {0.1, 0.5, 1};
    struct metric *h = metrics_histogram(m, "app_latency_seconds", "Latency.", 0, NULL, 3, bounds);
    metric_observe(h, 0.0625);
    metric_observe(h, 0.25);
    metric_observe(h, 0.5); /* le is inclusive */
    metric_observe(h, 2);

    const char *const robot[] = {"robot"};
    metrics_gauge(m, "app_battery_ratio", "Battery level per robot.", 1, robot);

    char *text = render(m);
    assert_string_equal(text, "# HELP app_requests_total Requests handled.\n"
                              "# TYPE app_requests_total counter\n"
                              "app_requests_total{method=\"GET\",code=\"200\"} 3\n"
                              "app_requests_total{method=\"POST\",code=\"500\"} 1.5\n"
                              "# HELP app_temperature_celsius Temperature.\n"
                              "# TYPE app_temperature_celsius gauge\n"
                              "app_temperature_celsius -2.5\n"
                              "# HELP app_latency_seconds Latency.\n"
                              "# TYPE app_latency_seconds histogram\n"
                              "app_latency_seconds_bucket{le=\"0.1\"} 1\n"
                              "app_latency_seconds_bucket{le=\"0.5\"} 3\n"
                              "app_latency_seconds_bucket{le=\"1\"} 3\n"
                              "app_latency_seconds_bucket{le=\"+Inf\"} 4\n"
                              "app_latency_seconds_sum 2.8125\n"
                              "app_latency_seconds_count 4\n"
                              "# HELP app_battery_ratio Battery level per robot.\n"
                              "# TYPE app_battery_ratio gauge\n");
    free(text);
    metrics_free(m);
}

static void test_histogram_labels_and_defaults(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    const char *const lbl[] = {"route"};
    struct metric *h =
        metrics_histogram(m, "http_request_duration_seconds", "Duration.", 1, lbl, 0, NULL);
    const char *const v[] = {"/robots"};
    struct metric_series *s = metric_series(h, v);
    metric_series_observe(s, 0.003);
    metric_series_observe(s, 100);
    metric_series_observe(s, NAN);
    assert_true(metric_series_value(s) == 3.0);
    char *text = render(m);
    assert_non_null(
        strstr(text, "http_request_duration_seconds_bucket{route=\"/robots\",le=\"0.0005\"} 0\n"
                     "http_request_duration_seconds_bucket{route=\"/robots\",le=\"0.001\"} 0\n"
                     "http_request_duration_seconds_bucket{route=\"/robots\",le=\"0.0025\"} 0\n"
                     "http_request_duration_seconds_bucket{route=\"/robots\",le=\"0.005\"} 1\n"));
    assert_non_null(strstr(text,
                           "http_request_duration_seconds_bucket{route=\"/robots\",le=\"10\"} 1\n"
                           "http_request_duration_seconds_bucket{route=\"/robots\",le=\"+Inf\"} 3\n"
                           "http_request_duration_seconds_sum{route=\"/robots\"} NaN\n"
                           "http_request_duration_seconds_count{route=\"/robots\"} 3\n"));
    /* 14 default bounds + the +Inf bucket. */
    int buckets = 0;
    for (const char *p = text; (p = strstr(p, "_bucket{")) != NULL; p++)
        buckets++;
    assert_int_equal(buckets, 15);
    free(text);
    metrics_free(m);
}

static void test_escaping_and_numbers(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    const char *const lbl[] = {"name"};
    struct metric *g = metrics_gauge(m, "odd_values", "Back\\slash and\nnewline \"kept\".", 1, lbl);
    const char *const v1[] = {"a\"b\\c\nd"};
    const char *const v2[] = {"nan"};
    const char *const v3[] = {"pinf"};
    const char *const v4[] = {"ninf"};
    const char *const v5[] = {"big"};
    const char *const v6[] = {"tenth"};
    const char *const v7[] = {"tiny"};
    const char *const v8[] = {"negzero"};
    metric_series_set(metric_series(g, v1), 123456789);
    metric_series_set(metric_series(g, v2), NAN);
    metric_series_set(metric_series(g, v3), INFINITY);
    metric_series_set(metric_series(g, v4), -INFINITY);
    metric_series_set(metric_series(g, v5), 1e20);
    metric_series_set(metric_series(g, v6), 0.1);
    metric_series_set(metric_series(g, v7), 1e-7);
    metric_series_set(metric_series(g, v8), -0.0);
    char *text = render(m);
    assert_string_equal(text, "# HELP odd_values Back\\\\slash and\\nnewline \"kept\".\n"
                              "# TYPE odd_values gauge\n"
                              "odd_values{name=\"a\\\"b\\\\c\\nd\"} 123456789\n"
                              "odd_values{name=\"nan\"} NaN\n"
                              "odd_values{name=\"pinf\"} +Inf\n"
                              "odd_values{name=\"ninf\"} -Inf\n"
                              "odd_values{name=\"big\"} 1e+20\n"
                              "odd_values{name=\"tenth\"} 0.1\n"
                              "odd_values{name=\"tiny\"} 1e-07\n"
                              "odd_values{name=\"negzero\"} 0\n");
    free(text);
    metrics_free(m);
}

static void test_counter_ignores_negative(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    struct metric *c = metrics_counter(m, "jobs_total", "Jobs.", 0, NULL);
    struct metric_series *s = metric_series(c, NULL);
    metric_add(c, 2);
    metric_add(c, -1);
    metric_add(c, NAN);
    assert_true(metric_series_value(s) == 2.0);
    metrics_free(m);
}

struct worker_arg {
    struct metric *counter;
    struct metric *hist;
    int id;
};

enum { THREADS = 4, PER_THREAD = 100000 };

static void *worker(void *p)
{
    const struct worker_arg *a = p;
    const char *const shared[] = {"shared"};
    char own_name[16];
    snprintf(own_name, sizeof(own_name), "t%d", a->id);
    const char *const own[] = {own_name};
    /* Look-ups race with each other and with series creation in other threads. */
    struct metric_series *s = metric_series(a->counter, shared);
    struct metric_series *mine = metric_series(a->counter, own);
    struct metric_series *h = metric_series(a->hist, shared);
    for (int i = 0; i < PER_THREAD; i++) {
        metric_series_add(s, 1);
        metric_series_add(mine, 0.5);
        metric_series_observe(h, (i % 2) ? 0.25 : 4);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    const char *const lbl[] = {"worker"};
    const double bounds[] = {1};
    struct worker_arg args[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i].counter = metrics_counter(m, "work_items_total", "Items.", 1, lbl);
        args[i].hist = metrics_histogram(m, "work_size_bytes", "Sizes.", 1, lbl, 1, bounds);
        args[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    const char *const shared[] = {"shared"};
    assert_int_equal((long long)metric_series_value(metric_series(args[0].counter, shared)),
                     THREADS * PER_THREAD);
    const char *const t2[] = {"t2"};
    assert_true(metric_series_value(metric_series(args[0].counter, t2)) == PER_THREAD * 0.5);
    struct metric_series *h = metric_series(args[0].hist, shared);
    assert_int_equal((long long)metric_series_value(h), THREADS * PER_THREAD);
    char *text = render(m);
    char expect[256];
    snprintf(expect, sizeof(expect),
             "work_size_bytes_bucket{worker=\"shared\",le=\"1\"} %d\n"
             "work_size_bytes_bucket{worker=\"shared\",le=\"+Inf\"} %d\n"
             "work_size_bytes_sum{worker=\"shared\"} %d\n",
             THREADS * PER_THREAD / 2, THREADS * PER_THREAD,
             THREADS * PER_THREAD / 2 * 4 + THREADS * PER_THREAD / 2 / 4);
    if (!strstr(text, expect))
        fail_msg("missing:\n%s\nin:\n%s", expect, text);
    /* Five series: shared + one per thread. */
    int series = 0;
    for (const char *p = text; (p = strstr(p, "\nwork_items_total{")) != NULL; p++)
        series++;
    assert_int_equal(series, THREADS + 1);
    free(text);
    metrics_free(m);
}

static double read_double(void *ud)
{
    return *(const double *)ud;
}

static void test_gauge_fn(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    double depth = 7;
    assert_int_equal(metrics_gauge_fn(m, "queue_depth", "Queued jobs.", read_double, &depth), 0);
    assert_int_equal(metrics_gauge_fn(m, "queue_depth", "Again.", read_double, &depth), -EEXIST);
    char *text = render(m);
    assert_string_equal(text, "# HELP queue_depth Queued jobs.\n"
                              "# TYPE queue_depth gauge\n"
                              "queue_depth 7\n");
    free(text);
    depth = 0.25;
    text = render(m);
    assert_non_null(strstr(text, "\nqueue_depth 0.25\n"));
    free(text);
    metrics_free(m);
}

static void test_reregister(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    const char *const lbl[] = {"robot"};
    struct metric *a = metrics_counter(m, "moves_total", "Moves.", 1, lbl);
    const char *const r1[] = {"r1"};
    metric_series_add(metric_series(a, r1), 5);
    struct metric *b = metrics_counter(m, "moves_total", "Other help.", 1, lbl);
    assert_ptr_equal(a, b);
    assert_true(metric_series_value(metric_series(b, r1)) == 5.0);
    char *text = render(m);
    assert_string_equal(text, "# HELP moves_total Moves.\n"
                              "# TYPE moves_total counter\n"
                              "moves_total{robot=\"r1\"} 5\n");
    free(text);
    metrics_free(m);
    metrics_free(NULL);
}

static void test_render_cap(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    struct metric *g = metrics_gauge(m, "a_rather_long_gauge_name", "Some help text.", 0, NULL);
    metric_set(g, 1);
    struct buf b;
    buf_init(&b, 40);
    assert_int_equal(metrics_render(m, &b), -E2BIG);
    assert_true(b.len <= 40);
    buf_release(&b);
    buf_init(&b, 4096);
    assert_int_equal(metrics_render(m, &b), 0);
    buf_release(&b);
    metrics_free(m);
}

/* Runs fn in a child and expects it to abort (a programming error). */
static void expect_abort(void (*fn)(struct metrics *))
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDERR_FILENO);
        signal(SIGABRT, SIG_DFL);
        fn(metrics_new());
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void bad_name(struct metrics *m)
{
    metrics_gauge(m, "1starts_with_digit", "x", 0, NULL);
}

static void bad_char(struct metrics *m)
{
    metrics_gauge(m, "has-dash", "x", 0, NULL);
}

static void counter_without_total(struct metrics *m)
{
    metrics_counter(m, "requests", "x", 0, NULL);
}

static void bad_label(struct metrics *m)
{
    const char *const lbl[] = {"ok", "no:colon"};
    metrics_gauge(m, "fine_name", "x", 2, lbl);
}

static void reserved_label(struct metrics *m)
{
    const char *const lbl[] = {"__name"};
    metrics_gauge(m, "fine_name", "x", 1, lbl);
}

static void le_on_histogram(struct metrics *m)
{
    const char *const lbl[] = {"le"};
    metrics_histogram(m, "fine_seconds", "x", 1, lbl, 0, NULL);
}

static void unsorted_bounds(struct metrics *m)
{
    const double b[] = {1, 0.5};
    metrics_histogram(m, "fine_seconds", "x", 0, NULL, 2, b);
}

static void type_clash(struct metrics *m)
{
    metrics_gauge(m, "clash_total", "x", 0, NULL);
    metrics_counter(m, "clash_total", "x", 0, NULL);
}

static void set_on_counter(struct metrics *m)
{
    metric_set(metrics_counter(m, "c_total", "x", 0, NULL), 1);
}

static void shorthand_with_labels(struct metrics *m)
{
    const char *const lbl[] = {"a"};
    metric_add(metrics_counter(m, "c_total", "x", 1, lbl), 1);
}

static void test_aborts_on_misuse(void **state)
{
    (void)state;
    expect_abort(bad_name);
    expect_abort(bad_char);
    expect_abort(counter_without_total);
    expect_abort(bad_label);
    expect_abort(reserved_label);
    expect_abort(le_on_histogram);
    expect_abort(unsorted_bounds);
    expect_abort(type_clash);
    expect_abort(set_on_counter);
    expect_abort(shorthand_with_labels);
}

static double constant_fn(void *ud)
{
    (void)ud;
    return 42;
}

static void test_promtool_accepts(void **state)
{
    (void)state;
    FILE *which = popen("command -v promtool", "r");
    assert_non_null(which);
    char path[256] = "";
    bool found = fgets(path, sizeof(path), which) != NULL;
    pclose(which);
    if (!found)
        fail_msg("promtool not found: run 'make deps' (Debian package prometheus)");

    struct metrics *m = metrics_new();
    const char *const lbl[] = {"robot_id", "status"};
    struct metric *c = metrics_counter(m, "fleet_commands_total", "Commands sent.", 2, lbl);
    const char *const v1[] = {"r-1", "ok"};
    const char *const v2[] = {"r \"2\"\\\nx", "failed"};
    metric_series_add(metric_series(c, v1), 3);
    metric_series_add(metric_series(c, v2), 1);
    metric_set(metrics_gauge(m, "fleet_robots_online", "Robots online.\nSecond line \\.", 0, NULL),
               12);
    struct metric *g = metrics_gauge(m, "fleet_odd_values", "Odd values.", 1, lbl);
    const char *const nanv[] = {"nan"};
    metric_series_set(metric_series(g, nanv), NAN);
    const char *const one[] = {"route"};
    struct metric *h = metrics_histogram(m, "fleet_http_request_duration_seconds",
                                         "Request duration.", 1, one, 0, NULL);
    const char *const route[] = {"/robots"};
    metric_series_observe(metric_series(h, route), 0.02);
    metric_observe(metrics_histogram(m, "fleet_payload_bytes", "Payload sizes.", 0, NULL, 0, NULL),
                   512);
    metrics_counter(m, "fleet_unused_total", "No series yet.", 1, one);
    assert_int_equal(metrics_gauge_fn(m, "fleet_answer", "Computed at scrape.", constant_fn, NULL),
                     0);
    char *text = render(m);
    metrics_free(m);

    char tmpl[] = "/tmp/test_metrics_XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", tmpl);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    unlink(tmpl);
    if (status != 0 || n != 0)
        fail_msg("promtool check metrics failed (status %d):\n%s\non:\n%s", status, out, text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_text),
        cmocka_unit_test(test_histogram_labels_and_defaults),
        cmocka_unit_test(test_escaping_and_numbers),
        cmocka_unit_test(test_counter_ignores_negative),
        cmocka_unit_test(test_concurrent_updates),
        cmocka_unit_test(test_gauge_fn),
        cmocka_unit_test(test_reregister),
        cmocka_unit_test(test_render_cap),
        cmocka_unit_test(test_aborts_on_misuse),
        cmocka_unit_test(test_promtool_accepts),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
