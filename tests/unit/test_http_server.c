/*
 * Unit tests for http_server: a real server on 127.0.0.1 (port 0) driven by
 * libcurl. Covers routing, errors as problem+json, body caps, request ids,
 * suspend/resume from other threads (including the race with the handler),
 * many concurrent suspended requests, drain, quiesce and shutdown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "buf.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "timeutil.h"
#include "xalloc.h"

#define MAX_BODY     1024
#define MAX_PENDING  512
#define MANY         200
#define RESP_CAP     (256 * 1024)
#define CURL_TIMEOUT 20L

/* ---- a thread that answers suspended requests later ---- */

struct pending {
    struct http_request *req;
    char *text;
};

struct responder {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct pending items[MAX_PENDING];
    size_t n;
    size_t hold_until; /* answer nothing until this many are queued */
    int delay_ms;
    bool stop;
    pthread_t thread;
    atomic_int answered;
};

static void *responder_main(void *arg)
{
    struct responder *rs = arg;
    struct pending batch[MAX_PENDING];
    pthread_mutex_lock(&rs->lock);
    for (;;) {
        while (!rs->stop && (rs->n == 0 || rs->n < rs->hold_until))
            pthread_cond_wait(&rs->cond, &rs->lock);
        if (rs->n == 0 && rs->stop)
            break;
        size_t n = rs->n;
        memcpy(batch, rs->items, n * sizeof(batch[0]));
        rs->n = 0;
        int delay = rs->delay_ms;
        pthread_mutex_unlock(&rs->lock);
        if (delay > 0)
            time_sleep_ms(delay);
        for (size_t i = 0; i < n; i++) {
            char *body = xasprintf("later-%s", batch[i].text);
            http_response_header(batch[i].req, "X-Answered-By", "responder");
            http_respond(batch[i].req, 200, "text/plain", body, strlen(body));
            free(batch[i].text);
            atomic_fetch_add(&rs->answered, 1);
        }
        pthread_mutex_lock(&rs->lock);
    }
    pthread_mutex_unlock(&rs->lock);
    return NULL;
}

static void responder_start(struct responder *rs)
{
    memset(rs, 0, sizeof(*rs));
    pthread_mutex_init(&rs->lock, NULL);
    pthread_cond_init(&rs->cond, NULL);
    atomic_init(&rs->answered, 0);
    assert_int_equal(pthread_create(&rs->thread, NULL, responder_main, rs), 0);
}

static void responder_push(struct responder *rs, struct http_request *req, const char *text)
{
    pthread_mutex_lock(&rs->lock);
    assert_true(rs->n < MAX_PENDING);
    rs->items[rs->n].req = req;
    rs->items[rs->n].text = xstrdup(text);
    rs->n++;
    pthread_cond_broadcast(&rs->cond);
    pthread_mutex_unlock(&rs->lock);
}

static void responder_set_hold(struct responder *rs, size_t hold_until)
{
    pthread_mutex_lock(&rs->lock);
    rs->hold_until = hold_until;
    pthread_cond_broadcast(&rs->cond);
    pthread_mutex_unlock(&rs->lock);
}

static void responder_stop(struct responder *rs)
{
    pthread_mutex_lock(&rs->lock);
    rs->stop = true;
    rs->hold_until = 0;
    pthread_cond_broadcast(&rs->cond);
    pthread_mutex_unlock(&rs->lock);
    pthread_join(rs->thread, NULL);
    pthread_cond_destroy(&rs->cond);
    pthread_mutex_destroy(&rs->lock);
}

/* ---- fixture ---- */

struct fixture {
    struct http_server *srv;
    struct responder rs;
    struct metrics *metrics;
    atomic_int handler_calls;
    atomic_int data_freed;
    bool race_sleep; /* the race handler sleeps after handing off */
};

static void h_echo(struct http_request *r, void *ud)
{
    struct fixture *fx = ud;
    atomic_fetch_add(&fx->handler_calls, 1);
    size_t len;
    const char *body = http_request_body(r, &len);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "method", http_request_method(r));
    cJSON_AddStringToObject(o, "path", http_request_path(r));
    cJSON_AddStringToObject(o, "route", http_request_route(r));
    cJSON_AddStringToObject(o, "id", http_request_id(r));
    const char *v;
    if ((v = http_request_param(r, "id")))
        cJSON_AddStringToObject(o, "p_id", v);
    if ((v = http_request_param(r, "ev")))
        cJSON_AddStringToObject(o, "p_ev", v);
    if ((v = http_request_param(r, "missing")))
        cJSON_AddStringToObject(o, "p_missing", v);
    if ((v = http_request_query(r, "a")))
        cJSON_AddStringToObject(o, "q_a", v);
    if ((v = http_request_query(r, "b")))
        cJSON_AddStringToObject(o, "q_b", v);
    if ((v = http_request_header(r, "x-foo")))
        cJSON_AddStringToObject(o, "h_foo", v);
    cJSON_AddNumberToObject(o, "body_len", (double)len);
    cJSON_AddBoolToObject(o, "body_nul", body[len] == '\0');
    if (len > 0 && len < 64)
        cJSON_AddStringToObject(o, "body", body);
    http_response_header(r, "X-Extra", "yes");
    http_respond_json(r, 201, o);
    cJSON_Delete(o);
}

static void h_problem(struct http_request *r, void *ud)
{
    (void)ud;
    http_respond_problem(r, 422, "robot_id", "bad value \"%s\"\n", "r/17");
}

static void h_silent(struct http_request *r, void *ud)
{
    (void)r;
    (void)ud; /* a buggy handler: neither answers nor suspends */
}

static void h_twice(struct http_request *r, void *ud)
{
    (void)ud;
    http_respond(r, 200, "text/plain", xstrdup("first"), 5);
    http_respond(r, 202, "text/plain", xstrdup("second"), 6);
}

static void count_free(void *p)
{
    struct fixture *fx = p;
    atomic_fetch_add(&fx->data_freed, 1);
}

static void h_data(struct http_request *r, void *ud)
{
    struct fixture *fx = ud;
    http_request_set_data(r, fx, count_free);
    assert_ptr_equal(http_request_data(r), fx);
    http_respond(r, 204, NULL, NULL, 0);
}

static void h_suspend(struct http_request *r, void *ud)
{
    struct fixture *fx = ud;
    atomic_fetch_add(&fx->handler_calls, 1);
    http_request_suspend(r);
    responder_push(&fx->rs, r, http_request_param(r, "id"));
}

static void h_race(struct http_request *r, void *ud)
{
    struct fixture *fx = ud;
    http_request_suspend(r);
    responder_push(&fx->rs, r, http_request_param(r, "id"));
    /* answered while the handler still runs, before suspension can take effect */
    if (fx->race_sleep)
        time_sleep_ms(1);
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    responder_start(&fx->rs);
    fx->metrics = metrics_new();
    struct http_server_options opt = {
        .bind = "127.0.0.1",
        .max_body = MAX_BODY,
        .conn_timeout_s = 10,
        .metrics = fx->metrics,
    };
    char err[256] = "";
    fx->srv = http_server_new(&opt, err, sizeof(err));
    assert_non_null(fx->srv);
    struct http_server *s = fx->srv;
    assert_int_equal(http_server_route(s, "GET", "/v1/robots/{id}/events/{ev}", h_echo, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/v1/robots/list", h_echo, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/v1/robots/{id}", h_echo, fx), 0);
    assert_int_equal(http_server_route(s, "DELETE", "/v1/robots/{id}", h_echo, fx), 0);
    assert_int_equal(http_server_route(s, "POST", "/echo", h_echo, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/", h_echo, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/problem", h_problem, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/silent", h_silent, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/twice", h_twice, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/data", h_data, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/slow/{id}", h_suspend, fx), 0);
    assert_int_equal(http_server_route(s, "GET", "/race/{id}", h_race, fx), 0);
    assert_int_equal(http_server_start(s, err, sizeof(err)), 0);
    assert_true(http_server_port(s) != 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    http_server_free(fx->srv);
    responder_stop(&fx->rs);
    metrics_free(fx->metrics);
    free(fx);
    return 0;
}

/* ---- client ---- */

struct result {
    CURLcode rc;
    long status;
    struct buf body;
    struct buf headers;
    int64_t elapsed_ms;
};

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;
    return buf_append(b, p, size * n) == 0 ? size * n : 0;
}

struct upload {
    size_t left;
};

static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
    struct upload *u = ud;
    size_t k = size * n < u->left ? size * n : u->left;
    memset(p, 'x', k);
    u->left -= k;
    return k;
}

static void result_init(struct result *res)
{
    memset(res, 0, sizeof(*res));
    buf_init(&res->body, RESP_CAP);
    buf_init(&res->headers, RESP_CAP);
}

static void result_release(struct result *res)
{
    buf_release(&res->body);
    buf_release(&res->headers);
}

static CURL *easy_new(struct result *res, const char *method, uint16_t port, const char *path,
                      struct curl_slist *hdrs)
{
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", (unsigned)port, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &res->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &res->headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, CURL_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    if (hdrs)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    return c;
}

static void request_full(struct result *res, const char *method, uint16_t port, const char *path,
                         struct curl_slist *hdrs, const char *body, size_t body_len,
                         size_t chunked_len)
{
    result_init(res);
    CURL *c = easy_new(res, method, port, path, hdrs);
    struct upload up = {chunked_len};
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
    } else if (chunked_len) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, &up);
    }
    int64_t t0 = time_mono_ms();
    res->rc = curl_easy_perform(c);
    res->elapsed_ms = time_mono_ms() - t0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
    curl_easy_cleanup(c);
}

static void request(struct result *res, const char *method, uint16_t port, const char *path)
{
    request_full(res, method, port, path, NULL, NULL, 0, 0);
}

/* Copies a response header's value (last occurrence) into out; false when absent. */
static bool header_value(const struct result *res, const char *name, char *out, size_t size)
{
    bool found = false;
    const char *p = res->headers.data;
    size_t nlen = strlen(name);
    while (p && *p) {
        const char *eol = strstr(p, "\r\n");
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = (size_t)(p + len - v);
            if (vlen >= size)
                vlen = size - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            found = true;
        }
        if (!eol)
            break;
        p = eol + 2;
    }
    return found;
}

static cJSON *body_json(const struct result *res)
{
    assert_non_null(res->body.data);
    cJSON *j = cJSON_Parse(res->body.data);
    assert_non_null(j);
    return j;
}

static const char *jstr(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static uint16_t port_of(void **state)
{
    struct fixture *fx = *state;
    return http_server_port(fx->srv);
}

static void wait_inflight(const struct http_server *s, size_t want)
{
    for (int i = 0; i < 2000 && http_server_inflight(s) != want; i++)
        time_sleep_ms(1);
    assert_int_equal(http_server_inflight(s), want);
}

/* A request performed on its own thread, for tests that act while it waits. */
struct bg_request {
    pthread_t thread;
    uint16_t port;
    const char *path;
    const char *header; /* optional request header */
    struct result res;
};

static void *bg_main(void *arg)
{
    struct bg_request *bg = arg;
    struct curl_slist *h = bg->header ? curl_slist_append(NULL, bg->header) : NULL;
    request_full(&bg->res, "GET", bg->port, bg->path, h, NULL, 0, 0);
    curl_slist_free_all(h);
    return NULL;
}

static void bg_start(struct bg_request *bg, uint16_t port, const char *path)
{
    bg->port = port;
    bg->path = path;
    assert_int_equal(pthread_create(&bg->thread, NULL, bg_main, bg), 0);
}

/* ---- tests ---- */

static void test_route_params(void **state)
{
    struct result res;
    request(&res, "GET", port_of(state), "/v1/robots/r-17/events/e9?a=1");
    assert_int_equal(res.rc, CURLE_OK);
    assert_int_equal(res.status, 201);
    char ct[128];
    assert_true(header_value(&res, "Content-Type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/json");
    assert_true(header_value(&res, "X-Extra", ct, sizeof(ct)));
    assert_string_equal(ct, "yes");
    cJSON *j = body_json(&res);
    assert_string_equal(jstr(j, "route"), "/v1/robots/{id}/events/{ev}");
    assert_string_equal(jstr(j, "path"), "/v1/robots/r-17/events/e9");
    assert_string_equal(jstr(j, "p_id"), "r-17");
    assert_string_equal(jstr(j, "p_ev"), "e9");
    assert_null(jstr(j, "p_missing"));
    cJSON_Delete(j);
    result_release(&res);

    /* registration order decides between a literal and a parameter */
    request(&res, "GET", port_of(state), "/v1/robots/list");
    assert_int_equal(res.status, 201);
    j = body_json(&res);
    assert_string_equal(jstr(j, "route"), "/v1/robots/list");
    assert_null(jstr(j, "p_id"));
    cJSON_Delete(j);
    result_release(&res);

    request(&res, "DELETE", port_of(state), "/v1/robots/abc");
    assert_int_equal(res.status, 201);
    j = body_json(&res);
    assert_string_equal(jstr(j, "route"), "/v1/robots/{id}");
    assert_string_equal(jstr(j, "method"), "DELETE");
    assert_string_equal(jstr(j, "p_id"), "abc");
    cJSON_Delete(j);
    result_release(&res);

    request(&res, "GET", port_of(state), "/");
    assert_int_equal(res.status, 201);
    j = body_json(&res);
    assert_string_equal(jstr(j, "route"), "/");
    cJSON_Delete(j);
    result_release(&res);
}

static void test_long_path_param(void **state)
{
    /* longer than the inline path buffer: params come from a heap copy */
    char id[400];
    memset(id, 'k', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    char *path = xasprintf("/v1/robots/%s", id);
    struct result res;
    request(&res, "GET", port_of(state), path);
    assert_int_equal(res.status, 201);
    cJSON *j = body_json(&res);
    assert_string_equal(jstr(j, "p_id"), id);
    cJSON_Delete(j);
    result_release(&res);
    free(path);
}

static void assert_problem(const struct result *res, unsigned status, const char *title)
{
    assert_int_equal(res->status, status);
    char ct[128];
    assert_true(header_value(res, "Content-Type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/problem+json");
    assert_true(header_value(res, "X-Request-ID", ct, sizeof(ct)));
    cJSON *j = body_json(res);
    assert_string_equal(jstr(j, "type"), "about:blank");
    assert_string_equal(jstr(j, "title"), title);
    assert_int_equal((int)jnum(j, "status"), (int)status);
    assert_non_null(jstr(j, "detail"));
    cJSON_Delete(j);
}

static void test_not_found(void **state)
{
    struct fixture *fx = *state;
    const char *paths[] = {
        "/nope",          "/v1/robots",     "/v1/robots//events/e1",
        "/v1/robots/a/b", "/v1/robots/r1/", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct result res;
        request(&res, "GET", port_of(state), paths[i]);
        assert_int_equal(res.rc, CURLE_OK);
        assert_problem(&res, 404, "Not Found");
        result_release(&res);
    }
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
}

static void test_method_not_allowed(void **state)
{
    struct result res;
    request(&res, "PUT", port_of(state), "/v1/robots/r1");
    assert_problem(&res, 405, "Method Not Allowed");
    char allow[128];
    assert_true(header_value(&res, "Allow", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, DELETE, HEAD");
    result_release(&res);

    request(&res, "GET", port_of(state), "/echo");
    assert_problem(&res, 405, "Method Not Allowed");
    assert_true(header_value(&res, "Allow", allow, sizeof(allow)));
    assert_string_equal(allow, "POST");
    result_release(&res);

    /* HEAD falls back to the GET route */
    request(&res, "HEAD", port_of(state), "/v1/robots/r1");
    assert_int_equal(res.rc, CURLE_OK);
    assert_int_equal(res.status, 201);
    assert_int_equal(res.body.len, 0);
    result_release(&res);
}

static void test_query_and_headers(void **state)
{
    struct curl_slist *h = curl_slist_append(NULL, "X-Foo: bar baz");
    struct result res;
    request_full(&res, "GET", port_of(state), "/v1/robots/r1?a=x%20y&b=&c=3", h, NULL, 0, 0);
    curl_slist_free_all(h);
    assert_int_equal(res.status, 201);
    cJSON *j = body_json(&res);
    assert_string_equal(jstr(j, "path"), "/v1/robots/r1");
    assert_string_equal(jstr(j, "p_id"), "r1");
    assert_string_equal(jstr(j, "q_a"), "x y");
    assert_string_equal(jstr(j, "q_b"), "");
    assert_string_equal(jstr(j, "h_foo"), "bar baz");
    cJSON_Delete(j);
    result_release(&res);
}

static void test_body(void **state)
{
    struct result res;
    request_full(&res, "POST", port_of(state), "/echo", NULL, "hello", 5, 0);
    assert_int_equal(res.status, 201);
    cJSON *j = body_json(&res);
    assert_int_equal((int)jnum(j, "body_len"), 5);
    assert_string_equal(jstr(j, "body"), "hello");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "body_nul")));
    cJSON_Delete(j);
    result_release(&res);

    /* exactly at the cap is accepted */
    char *big = xmalloc(MAX_BODY);
    memset(big, 'b', MAX_BODY);
    request_full(&res, "POST", port_of(state), "/echo", NULL, big, MAX_BODY, 0);
    assert_int_equal(res.status, 201);
    j = body_json(&res);
    assert_int_equal((int)jnum(j, "body_len"), MAX_BODY);
    cJSON_Delete(j);
    result_release(&res);

    /* streamed body exactly at the cap is accepted too */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    request_full(&res, "POST", port_of(state), "/echo", h, NULL, 0, MAX_BODY);
    assert_int_equal(res.status, 201);
    j = body_json(&res);
    assert_int_equal((int)jnum(j, "body_len"), MAX_BODY);
    cJSON_Delete(j);
    result_release(&res);
    curl_slist_free_all(h);
    free(big);
}

static void test_too_large_content_length(void **state)
{
    struct fixture *fx = *state;
    size_t n = 4 * MAX_BODY;
    char *big = xmalloc(n);
    memset(big, 'b', n);
    /* with Expect the client waits for the verdict before sending the body */
    struct curl_slist *h = curl_slist_append(NULL, "Expect: 100-continue");
    for (int i = 0; i < 20; i++) {
        struct result res;
        request_full(&res, "POST", port_of(state), "/echo", h, big, n, 0);
        assert_int_equal(res.rc, CURLE_OK);
        assert_problem(&res, 413, "Content Too Large");
        result_release(&res);
    }

    /* a declared terabyte is refused before a byte of it is read */
    struct result res;
    result_init(&res);
    CURL *c = easy_new(&res, "POST", port_of(state), "/echo", h);
    struct upload up = {(size_t)1 << 40};
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)up.left);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &up);
    curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res.status);
    curl_easy_cleanup(c);
    assert_problem(&res, 413, "Content Too Large");
    assert_true(((size_t)1 << 40) - up.left <= 64 * 1024);
    result_release(&res);

    curl_slist_free_all(h);
    free(big);
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
    assert_true(http_server_drain(fx->srv, 1000));
}

static void test_too_large_chunked(void **state)
{
    struct fixture *fx = *state;
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    struct result res;
    request_full(&res, "POST", port_of(state), "/echo", h, NULL, 0, 3 * MAX_BODY + 7);
    curl_slist_free_all(h);
    assert_int_equal(res.rc, CURLE_OK);
    assert_problem(&res, 413, "Content Too Large");
    result_release(&res);
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
}

static void test_problem_fields(void **state)
{
    struct result res;
    request(&res, "GET", port_of(state), "/problem");
    assert_problem(&res, 422, "Unprocessable Content");
    cJSON *j = body_json(&res);
    assert_string_equal(jstr(j, "detail"), "bad value \"r/17\"\n");
    assert_string_equal(jstr(j, "field"), "robot_id");
    cJSON_Delete(j);
    result_release(&res);

    /* server-made problems carry no field */
    request(&res, "GET", port_of(state), "/nope");
    j = body_json(&res);
    assert_null(cJSON_GetObjectItem(j, "field"));
    cJSON_Delete(j);
    result_release(&res);
}

static void test_request_id(void **state)
{
    char rid[256];
    struct result res;

    struct curl_slist *h = curl_slist_append(NULL, "X-Request-ID: abc-123_XYZ");
    request_full(&res, "GET", port_of(state), "/v1/robots/r1", h, NULL, 0, 0);
    curl_slist_free_all(h);
    assert_true(header_value(&res, "X-Request-ID", rid, sizeof(rid)));
    assert_string_equal(rid, "abc-123_XYZ");
    cJSON *j = body_json(&res);
    assert_string_equal(jstr(j, "id"), "abc-123_XYZ");
    cJSON_Delete(j);
    result_release(&res);

    /* generated: 32 lowercase hex chars, different each time */
    char first[64];
    request(&res, "GET", port_of(state), "/v1/robots/r1");
    assert_true(header_value(&res, "X-Request-ID", first, sizeof(first)));
    assert_int_equal(strlen(first), 32);
    assert_int_equal(strspn(first, "0123456789abcdef"), 32);
    result_release(&res);
    request(&res, "GET", port_of(state), "/v1/robots/r1");
    assert_true(header_value(&res, "X-Request-ID", rid, sizeof(rid)));
    assert_string_not_equal(rid, first);
    result_release(&res);

    /* too long or with spaces: replaced */
    char longid[160];
    memset(longid, 'a', 129);
    longid[129] = '\0';
    char *hv = xasprintf("X-Request-ID: %s", longid);
    h = curl_slist_append(NULL, hv);
    request_full(&res, "GET", port_of(state), "/nope", h, NULL, 0, 0);
    curl_slist_free_all(h);
    free(hv);
    assert_true(header_value(&res, "X-Request-ID", rid, sizeof(rid)));
    assert_int_equal(strlen(rid), 32);
    result_release(&res);

    h = curl_slist_append(NULL, "X-Request-ID: has space");
    request_full(&res, "GET", port_of(state), "/v1/robots/r1", h, NULL, 0, 0);
    curl_slist_free_all(h);
    assert_true(header_value(&res, "X-Request-ID", rid, sizeof(rid)));
    assert_int_equal(strlen(rid), 32);
    result_release(&res);
}

static void test_handler_without_response(void **state)
{
    struct result res;
    request(&res, "GET", port_of(state), "/silent");
    assert_problem(&res, 500, "Internal Server Error");
    result_release(&res);

    request(&res, "GET", port_of(state), "/twice");
    assert_int_equal(res.status, 200);
    assert_string_equal(res.body.data, "first");
    result_release(&res);
}

static void test_request_data_freed(void **state)
{
    struct fixture *fx = *state;
    struct result res;
    request(&res, "GET", port_of(state), "/data");
    assert_int_equal(res.status, 204);
    result_release(&res);
    for (int i = 0; i < 1000 && atomic_load(&fx->data_freed) == 0; i++)
        time_sleep_ms(1);
    assert_int_equal(atomic_load(&fx->data_freed), 1);
}

static void test_suspend_respond_later(void **state)
{
    struct fixture *fx = *state;
    fx->rs.delay_ms = 50;
    struct result res;
    request(&res, "GET", port_of(state), "/slow/s1");
    assert_int_equal(res.rc, CURLE_OK);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.body.data, "later-s1");
    assert_true(res.elapsed_ms >= 50);
    char v[64];
    assert_true(header_value(&res, "X-Answered-By", v, sizeof(v)));
    assert_string_equal(v, "responder");
    assert_true(header_value(&res, "X-Request-ID", v, sizeof(v)));
    assert_int_equal(strlen(v), 32);
    result_release(&res);
    assert_true(http_server_drain(fx->srv, 1000));
}

static void test_respond_races_handler(void **state)
{
    struct fixture *fx = *state;
    /* one connection for all: keep-alive must survive the suspend/resume cycles */
    struct result res;
    result_init(&res);
    CURL *c = easy_new(&res, "GET", port_of(state), "/", NULL);
    for (int i = 0; i < 200; i++) {
        fx->race_sleep = (i % 2) == 1;
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/race/%d", (unsigned)port_of(state), i);
        curl_easy_setopt(c, CURLOPT_URL, url);
        buf_reset(&res.body);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        assert_int_equal(status, 200);
        char want[32];
        snprintf(want, sizeof(want), "later-%d", i);
        assert_string_equal(res.body.data, want);
    }
    curl_easy_cleanup(c);
    result_release(&res);
    assert_int_equal(atomic_load(&fx->rs.answered), 200);
    assert_true(http_server_drain(fx->srv, 1000));
}

static void test_many_suspended(void **state)
{
    struct fixture *fx = *state;
    /* nothing is answered until all are suspended at once */
    responder_set_hold(&fx->rs, MANY);
    CURLM *multi = curl_multi_init();
    struct result *res = xcalloc(MANY, sizeof(*res));
    CURL **easy = xcalloc(MANY, sizeof(*easy));
    for (int i = 0; i < MANY; i++) {
        result_init(&res[i]);
        char path[64];
        snprintf(path, sizeof(path), "/slow/m%d", i);
        easy[i] = easy_new(&res[i], "GET", port_of(state), path, NULL);
        curl_easy_setopt(easy[i], CURLOPT_PRIVATE, &res[i]);
        curl_multi_add_handle(multi, easy[i]);
    }
    int running = 1;
    int64_t deadline = time_mono_ms() + 30000;
    while (running && time_mono_ms() < deadline) {
        assert_int_equal(curl_multi_perform(multi, &running), CURLM_OK);
        if (running)
            curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    assert_int_equal(running, 0);
    int msgs;
    CURLMsg *m;
    while ((m = curl_multi_info_read(multi, &msgs))) {
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        struct result *r = (struct result *)(void *)priv;
        r->rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &r->status);
    }
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(res[i].rc, CURLE_OK);
        assert_int_equal(res[i].status, 200);
        char want[32];
        snprintf(want, sizeof(want), "later-m%d", i);
        assert_string_equal(res[i].body.data, want);
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
        result_release(&res[i]);
    }
    curl_multi_cleanup(multi);
    free(easy);
    free(res);
    assert_int_equal(atomic_load(&fx->rs.answered), MANY);
    assert_true(http_server_drain(fx->srv, 1000));
    assert_int_equal(http_server_inflight(fx->srv), 0);
}

static void test_drain(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(http_server_inflight(fx->srv), 0);
    assert_true(http_server_drain(fx->srv, 0));
    responder_set_hold(&fx->rs, 1000);
    struct bg_request bg = {0};
    bg_start(&bg, port_of(state), "/slow/d1");
    wait_inflight(fx->srv, 1);
    int64_t t0 = time_mono_ms();
    assert_false(http_server_drain(fx->srv, 60));
    assert_true(time_mono_ms() - t0 >= 55); /* ms clocks truncate */
    responder_set_hold(&fx->rs, 0);
    assert_true(http_server_drain(fx->srv, 5000));
    assert_int_equal(http_server_inflight(fx->srv), 0);
    pthread_join(bg.thread, NULL);
    assert_int_equal(bg.res.rc, CURLE_OK);
    assert_int_equal(bg.res.status, 200);
    assert_string_equal(bg.res.body.data, "later-d1");
    result_release(&bg.res);
}

static void test_quiesce(void **state)
{
    struct fixture *fx = *state;
    uint16_t port = port_of(state);
    responder_set_hold(&fx->rs, 1000);
    struct bg_request bg = {0};
    bg_start(&bg, port, "/slow/q1");
    wait_inflight(fx->srv, 1);

    http_server_quiesce(fx->srv);
    http_server_quiesce(fx->srv); /* twice is harmless */
    assert_int_equal(http_server_port(fx->srv), port);
    struct result res;
    request(&res, "GET", port, "/v1/robots/r1");
    assert_int_equal(res.rc, CURLE_COULDNT_CONNECT);
    result_release(&res);

    /* the request in flight is still answered */
    responder_set_hold(&fx->rs, 0);
    pthread_join(bg.thread, NULL);
    assert_int_equal(bg.res.rc, CURLE_OK);
    assert_int_equal(bg.res.status, 200);
    assert_string_equal(bg.res.body.data, "later-q1");
    result_release(&bg.res);
    assert_true(http_server_drain(fx->srv, 1000));
}

/*
 * A keep-alive connection may start a request after quiesce (and after the
 * drain saw nothing in flight): it is refused with 503, and no handler takes
 * work that the shutdown would not wait for.
 */
static void test_quiesce_refuses_keepalive_requests(void **state)
{
    struct fixture *fx = *state;
    struct result res;
    result_init(&res);
    CURL *c = easy_new(&res, "GET", port_of(state), "/v1/robots/r1", NULL);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res.status);
    assert_int_equal(res.status, 201); /* h_echo's */
    int calls = atomic_load(&fx->handler_calls);
    long conns = -1;

    http_server_quiesce(fx->srv);
    buf_reset(&res.body);
    assert_int_equal(curl_easy_perform(c), CURLE_OK); /* the same connection */
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res.status);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns);
    assert_int_equal(conns, 0);
    assert_int_equal(res.status, 503);
    assert_non_null(strstr(res.body.data, "server shutting down"));
    assert_int_equal(atomic_load(&fx->handler_calls), calls);
    assert_true(http_server_drain(fx->srv, 1000));
    curl_easy_cleanup(c);
    result_release(&res);
}

static void test_free_with_suspended(void **state)
{
    struct fixture *fx = *state;
    responder_set_hold(&fx->rs, 1000);
    struct bg_request bg = {.header = "X-Request-ID: client-given-id"};
    bg_start(&bg, port_of(state), "/slow/f1");
    wait_inflight(fx->srv, 1);
    assert_int_equal(atomic_load(&fx->handler_calls), 1);

    /* the suspended connection is cancelled instead of making MHD abort */
    http_server_free(fx->srv);
    fx->srv = NULL;
    pthread_join(bg.thread, NULL);
    assert_true(bg.res.rc != CURLE_OK || bg.res.status == 503);
    result_release(&bg.res);

    /* the late answer finds a cancelled request and is dropped safely */
    responder_set_hold(&fx->rs, 0);
    for (int i = 0; i < 2000 && atomic_load(&fx->rs.answered) == 0; i++)
        time_sleep_ms(1);
    assert_int_equal(atomic_load(&fx->rs.answered), 1);
}

static void test_free_idle(void **state)
{
    (void)state;
    http_server_free(NULL);

    char err[256] = "";
    struct http_server *s = http_server_new(NULL, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(http_server_route(s, "GET", "/x", h_silent, NULL), 0);
    http_server_free(s); /* never started */

    struct http_server_options opt = {.bind = "127.0.0.1", .threads = 1};
    s = http_server_new(&opt, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(http_server_route(s, "GET", "/x", h_echo, NULL), 0);
    assert_int_equal(http_server_start(s, err, sizeof(err)), 0);
    assert_int_equal(http_server_inflight(s), 0);
    assert_true(http_server_drain(s, 10));
    http_server_free(s);
}

static void test_failures(void **state)
{
    char err[256] = "";
    struct http_server_options bad = {.bind = "not-an-address"};
    assert_null(http_server_new(&bad, err, sizeof(err)));
    assert_non_null(strstr(err, "not-an-address"));

    struct http_server_options opt = {.bind = "127.0.0.1"};
    struct http_server *s = http_server_new(&opt, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(http_server_route(s, "GET", "no-slash", h_echo, NULL), -EINVAL);
    assert_int_equal(http_server_route(s, "GET", "/{}", h_echo, NULL), -EINVAL);
    assert_int_equal(http_server_route(s, "GET", "/a{b}", h_echo, NULL), -EINVAL);
    assert_int_equal(http_server_route(s, "GET", "/{a", h_echo, NULL), -EINVAL);
    assert_int_equal(http_server_route(s, "GET", "/a", NULL, NULL), -EINVAL);
    assert_int_equal(http_server_route(s, "", "/a", h_echo, NULL), -EINVAL);
    assert_int_equal(
        http_server_route(s, "GET", "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17", h_echo, NULL),
        -EINVAL);
    assert_int_equal(
        http_server_route(s, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", h_echo, NULL), -EINVAL);
    assert_int_equal(http_server_route(s, "GET", "/a", h_echo, NULL), 0);
    assert_int_equal(http_server_route(s, "GET", "/a", h_echo, NULL), -EEXIST);

    /* the port the fixture server holds is taken */
    opt.port = port_of(state);
    struct http_server *s2 = http_server_new(&opt, err, sizeof(err));
    assert_non_null(s2);
    err[0] = '\0';
    assert_true(http_server_start(s2, err, sizeof(err)) < 0);
    assert_true(err[0] != '\0');
    http_server_free(s2);

    assert_int_equal(http_server_start(s, err, sizeof(err)), 0);
    assert_int_equal(http_server_start(s, err, sizeof(err)), -EBUSY);
    assert_int_equal(http_server_route(s, "GET", "/b", h_echo, NULL), -EBUSY);
    http_server_free(s);
}

static void test_status_titles(void **state)
{
    (void)state;
    assert_string_equal(http_status_title(404), "Not Found");
    assert_string_equal(http_status_title(413), "Content Too Large");
    assert_string_equal(http_status_title(503), "Service Unavailable");
    assert_string_equal(http_status_title(499), "Client Error");
    assert_string_equal(http_status_title(599), "Server Error");
}

static void test_metrics(void **state)
{
    struct fixture *fx = *state;
    struct result res;
    for (int i = 0; i < 3; i++) {
        request(&res, "GET", port_of(state), "/v1/robots/r1");
        assert_int_equal(res.status, 201);
        result_release(&res);
    }
    request(&res, "GET", port_of(state), "/nope");
    result_release(&res);
    request(&res, "BREW", port_of(state), "/nope");
    result_release(&res);

    struct buf out;
    buf_init(&out, 1024 * 1024);
    assert_int_equal(metrics_render(fx->metrics, &out), 0);
    assert_non_null(strstr(out.data, "http_requests_total{route=\"/v1/robots/{id}\","
                                     "method=\"GET\",code=\"201\"} 3"));
    assert_non_null(
        strstr(out.data, "http_requests_total{route=\"unmatched\",method=\"GET\",code=\"404\"} 1"));
    assert_non_null(strstr(
        out.data, "http_requests_total{route=\"unmatched\",method=\"OTHER\",code=\"404\"} 1"));
    assert_non_null(
        strstr(out.data, "http_request_duration_seconds_count{route=\"/v1/robots/{id}\"} 3"));
    buf_release(&out);
}

int main(void)
{
    log_init("test_http_server", LOG_LEVEL_ERROR);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_route_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_path_param, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_and_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large_content_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_problem_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handler_without_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_data_freed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suspend_respond_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_respond_races_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_suspended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quiesce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quiesce_refuses_keepalive_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_suspended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures, setup, teardown),
        cmocka_unit_test(test_status_titles),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("http_server", tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
