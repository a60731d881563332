/*
 * Unit tests for http_client against a real HTTP server on 127.0.0.1 (the
 * libcommon http_server with scripted handlers): retries on 5xx and 429 with
 * Retry-After, no retry on 4xx, timeouts, network errors, the body cap, the
 * bearer token and body on the wire, the circuit breaker's three states, and
 * keep-alive connection reuse through the client's handle pool.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_client.h"
#include "http_server.h"
#include "log.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

static struct http_server *srv;
static char base[64];
static atomic_int hits;
static atomic_int fail_first; /* /flaky answers 503 this many times, then 200 */
static char seen_auth[256];
static char seen_body[256];

static void h_flaky(struct http_request *r, void *ud)
{
    (void)ud;
    int n = atomic_fetch_add(&hits, 1);
    if (n < atomic_load(&fail_first)) {
        http_respond_problem(r, 503, NULL, "try later");
        return;
    }
    http_respond(r, 200, "application/json", xstrdup("{\"ok\":true}"), 11);
}

static void h_status(struct http_request *r, void *ud)
{
    (void)ud;
    atomic_fetch_add(&hits, 1);
    int64_t code = 500;
    str_to_int64(http_request_param(r, "code"), &code);
    if (code == 429)
        http_response_header(r, "Retry-After", "1");
    http_respond_problem(r, (unsigned)code, NULL, "scripted");
}

static void h_echo(struct http_request *r, void *ud)
{
    (void)ud;
    atomic_fetch_add(&hits, 1);
    const char *auth = http_request_header(r, "Authorization");
    size_t len;
    const char *body = http_request_body(r, &len);
    str_copy(seen_auth, auth ? auth : "", sizeof(seen_auth));
    str_copy(seen_body, body ? body : "", sizeof(seen_body));
    http_respond(r, 201, "application/json", xstrdup("{}"), 2);
}

static void h_slow(struct http_request *r, void *ud)
{
    (void)ud;
    atomic_fetch_add(&hits, 1);
    time_sleep_ms(600);
    http_respond(r, 200, "application/json", xstrdup("{}"), 2);
}

static void h_big(struct http_request *r, void *ud)
{
    (void)ud;
    atomic_fetch_add(&hits, 1);
    char *b = xmalloc(10000);
    memset(b, 'x', 10000);
    http_respond(r, 200, "text/plain", b, 10000);
}

static int setup(void **state)
{
    (void)state;
    log_init("test_http_client", LOG_LEVEL_ERROR);
    char err[160];
    struct http_server_options o = {.bind = "127.0.0.1", .port = 0, .threads = 4};
    srv = http_server_new(&o, err, sizeof(err));
    if (!srv)
        return -1;
    http_server_route(srv, "GET", "/flaky", h_flaky, NULL);
    http_server_route(srv, "GET", "/status/{code}", h_status, NULL);
    http_server_route(srv, "POST", "/echo", h_echo, NULL);
    http_server_route(srv, "GET", "/slow", h_slow, NULL);
    http_server_route(srv, "GET", "/big", h_big, NULL);
    if (http_server_start(srv, err, sizeof(err)) != 0)
        return -1;
    snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)http_server_port(srv));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    http_server_free(srv);
    return 0;
}

static int do_get(struct http_client *c, const char *path, struct http_client_response *resp)
{
    char url[128];
    snprintf(url, sizeof(url), "%s%s", base, path);
    struct http_client_request req = {.method = "GET", .url = url, .max_retries = -1};
    return http_client_do(c, &req, resp);
}

static struct http_client *client(int retries)
{
    struct http_client_options o = {.max_retries = retries,
                                    .backoff_base_ms = 10,
                                    .backoff_max_ms = 40,
                                    .timeout_ms = 300,
                                    .connect_timeout_ms = 300,
                                    .max_body = 4096,
                                    .breaker_min_requests = 1000};
    return http_client_new(&o);
}

static void test_retries_5xx_until_success(void **state)
{
    (void)state;
    struct http_client *c = client(3);
    struct http_client_response resp;
    atomic_store(&hits, 0);
    atomic_store(&fail_first, 2);
    assert_int_equal(do_get(c, "/flaky", &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.attempts, 3);
    assert_string_equal(resp.body, "{\"ok\":true}");
    http_client_response_release(&resp);
    http_client_free(c);
}

static void test_gives_up_after_retries_with_last_status(void **state)
{
    (void)state;
    struct http_client *c = client(2);
    struct http_client_response resp;
    atomic_store(&hits, 0);
    assert_int_equal(do_get(c, "/status/502", &resp), 0);
    assert_int_equal(resp.status, 502);
    assert_int_equal(resp.attempts, 3);
    assert_int_equal(atomic_load(&hits), 3);
    http_client_response_release(&resp);
    http_client_free(c);
}

static void test_no_retry_on_4xx(void **state)
{
    (void)state;
    struct http_client *c = client(3);
    struct http_client_response resp;
    static const char *const codes[] = {"/status/400", "/status/401", "/status/404"};
    for (size_t i = 0; i < 3; i++) {
        atomic_store(&hits, 0);
        assert_int_equal(do_get(c, codes[i], &resp), 0);
        assert_int_equal(resp.attempts, 1);
        assert_int_equal(atomic_load(&hits), 1);
        http_client_response_release(&resp);
    }
    http_client_free(c);
}

static void test_429_honours_retry_after(void **state)
{
    (void)state;
    struct http_client *c = client(1);
    struct http_client_response resp;
    atomic_store(&hits, 0);
    int64_t t0 = time_mono_ms();
    assert_int_equal(do_get(c, "/status/429", &resp), 0);
    int64_t took = time_mono_ms() - t0;
    assert_int_equal(resp.status, 429);
    assert_int_equal(resp.attempts, 2);
    assert_int_equal(resp.retry_after_s, 1);
    assert_true(took >= 950); /* waited Retry-After: 1, not the 10-40 ms backoff */
    http_client_response_release(&resp);
    http_client_free(c);
}

static void test_timeout_and_network_error(void **state)
{
    (void)state;
    struct http_client *c = client(1);
    struct http_client_response resp;
    atomic_store(&hits, 0);
    assert_int_equal(do_get(c, "/slow", &resp), HTTP_CLIENT_ERR_TIMEOUT);
    assert_int_equal(resp.attempts, 2);
    assert_int_equal(resp.status, 0);
    http_client_response_release(&resp);

    struct http_client_request req = {
        .method = "GET", .url = "http://127.0.0.1:1/nothing", .max_retries = -1};
    assert_int_equal(http_client_do(c, &req, &resp), HTTP_CLIENT_ERR_NETWORK);
    assert_int_equal(resp.attempts, 2);
    http_client_response_release(&resp);
    req.url = "not a url";
    assert_int_equal(http_client_do(c, &req, &resp), HTTP_CLIENT_ERR_INVALID);
    http_client_response_release(&resp);
    http_client_free(c);
}

static void test_body_cap(void **state)
{
    (void)state;
    struct http_client *c = client(2);
    struct http_client_response resp;
    atomic_store(&hits, 0);
    assert_int_equal(do_get(c, "/big", &resp), HTTP_CLIENT_ERR_TOOBIG);
    assert_int_equal(atomic_load(&hits), 1); /* not retried */
    http_client_response_release(&resp);
    http_client_free(c);
}

static void test_sends_token_and_body(void **state)
{
    (void)state;
    struct http_client *c = client(0);
    struct http_client_response resp;
    char url[128];
    snprintf(url, sizeof(url), "%s/echo", base);
    struct http_client_request req = {.method = "POST",
                                      .url = url,
                                      .bearer_token = "tok-123",
                                      .body = "{\"a\":1}",
                                      .len = 7,
                                      .max_retries = -1};
    assert_int_equal(http_client_do(c, &req, &resp), 0);
    assert_int_equal(resp.status, 201);
    assert_string_equal(seen_auth, "Bearer tok-123");
    assert_string_equal(seen_body, "{\"a\":1}");
    http_client_response_release(&resp);
    http_client_free(c);
}

static void test_breaker_opens_half_opens_and_closes(void **state)
{
    (void)state;
    struct http_client_options o = {.max_retries = 0,
                                    .timeout_ms = 1000,
                                    .breaker_min_requests = 4,
                                    .breaker_error_ratio = 0.5,
                                    .breaker_window_ms = 10000,
                                    .breaker_open_ms = 300};
    struct http_client *c = http_client_new(&o);
    struct http_client_response resp;
    char url[128];
    snprintf(url, sizeof(url), "%s/flaky", base);
    assert_int_equal(http_client_breaker_state(c, url), HTTP_BREAKER_CLOSED);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(do_get(c, "/status/500", &resp), 0);
        http_client_response_release(&resp);
    }
    assert_int_equal(http_client_breaker_state(c, url), HTTP_BREAKER_OPEN);
    atomic_store(&hits, 0);
    assert_int_equal(do_get(c, "/flaky", &resp), HTTP_CLIENT_ERR_OPEN);
    assert_int_equal(resp.attempts, 0);
    assert_int_equal(atomic_load(&hits), 0); /* nothing reached the host */
    http_client_response_release(&resp);

    time_sleep_ms(350);
    assert_int_equal(http_client_breaker_state(c, url), HTTP_BREAKER_HALF_OPEN);
    /* a failed probe opens it again */
    assert_int_equal(do_get(c, "/status/503", &resp), 0);
    http_client_response_release(&resp);
    assert_int_equal(http_client_breaker_state(c, url), HTTP_BREAKER_OPEN);
    time_sleep_ms(350);
    /* a good probe closes it */
    atomic_store(&fail_first, 0);
    assert_int_equal(do_get(c, "/flaky", &resp), 0);
    assert_int_equal(resp.status, 200);
    http_client_response_release(&resp);
    assert_int_equal(http_client_breaker_state(c, url), HTTP_BREAKER_CLOSED);
    http_client_free(c);
}

static atomic_int loop_failures;

/* A caller thread: 25 GETs; failures are counted (cmocka asserts only on the main thread). */
static void *get_loop(void *arg)
{
    struct http_client *c = arg;
    for (int i = 0; i < 25; i++) {
        struct http_client_response resp;
        if (do_get(c, "/flaky", &resp) != 0 || resp.status != 200)
            atomic_fetch_add(&loop_failures, 1);
        http_client_response_release(&resp);
    }
    return NULL;
}

/* Sequential and concurrent calls reuse pooled connections; max_idle < 0 opens one per call. */
static void test_reuses_connections(void **state)
{
    (void)state;
    struct http_client *c = client(0);
    struct http_client_response resp;
    atomic_store(&fail_first, 0);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(do_get(c, "/flaky", &resp), 0);
        assert_int_equal(resp.status, 200);
        http_client_response_release(&resp);
    }
    assert_int_equal(http_client_connects(c), 1);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, get_loop, c), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&loop_failures), 0);
    /* four callers at once need at most four connections, whatever the interleaving */
    assert_true(http_client_connects(c) <= 4);
    http_client_free(c);

    struct http_client_options o = {.max_idle = -1, .timeout_ms = 300};
    c = http_client_new(&o);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(do_get(c, "/flaky", &resp), 0);
        http_client_response_release(&resp);
    }
    assert_int_equal(http_client_connects(c), 5);
    http_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retries_5xx_until_success),
        cmocka_unit_test(test_gives_up_after_retries_with_last_status),
        cmocka_unit_test(test_no_retry_on_4xx),
        cmocka_unit_test(test_429_honours_retry_after),
        cmocka_unit_test(test_timeout_and_network_error),
        cmocka_unit_test(test_body_cap),
        cmocka_unit_test(test_sends_token_and_body),
        cmocka_unit_test(test_breaker_opens_half_opens_and_closes),
        cmocka_unit_test(test_reuses_connections),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
