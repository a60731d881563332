/*
 * /healthz, /readyz and /metrics (see health.h). Checks run on their own thread
 * so probes answer from cached results in microseconds.
 */
#include "health.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "buf.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "str.h"
#include "xalloc.h"

#define HEALTH_MAX_CHECKS  8
#define METRICS_RENDER_MAX (8 * 1024 * 1024)

struct health_check {
    char name[32];
    health_check_fn fn;
    void *ud;
    atomic_bool ok;
};

struct health {
    struct health_check checks[HEALTH_MAX_CHECKS];
    size_t nchecks;
    int interval_ms;
    atomic_bool draining;
    atomic_bool stop;
    bool thread_started;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct metrics *metrics;
};

struct health *health_new(int interval_ms)
{
    struct health *h = xcalloc(1, sizeof(*h));
    h->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    return h;
}

int health_add_check(struct health *h, const char *name, health_check_fn fn, void *ud)
{
    if (h->nchecks == HEALTH_MAX_CHECKS || h->thread_started)
        return -ENOSPC;
    struct health_check *c = &h->checks[h->nchecks++];
    str_copy(c->name, name, sizeof(c->name));
    c->fn = fn;
    c->ud = ud;
    atomic_init(&c->ok, false);
    return 0;
}

static void run_checks(struct health *h)
{
    for (size_t i = 0; i < h->nchecks; i++) {
        bool ok = h->checks[i].fn(h->checks[i].ud);
        bool was = atomic_exchange(&h->checks[i].ok, ok);
        if (ok != was)
            LOG_INFO("readiness check '%s' is now %s", h->checks[i].name, ok ? "ok" : "failing");
    }
}

static void *check_loop(void *arg)
{
    struct health *h = arg;
    while (!atomic_load(&h->stop)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += h->interval_ms / 1000;
        ts.tv_nsec += (long)(h->interval_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&h->lock);
        if (!atomic_load(&h->stop))
            pthread_cond_timedwait(&h->cond, &h->lock, &ts);
        pthread_mutex_unlock(&h->lock);
        if (!atomic_load(&h->stop))
            run_checks(h);
    }
    return NULL;
}

int health_start(struct health *h)
{
    run_checks(h);
    int rc = pthread_create(&h->thread, NULL, check_loop, h);
    if (rc)
        return -rc;
    h->thread_started = true;
    return 0;
}

void health_set_draining(struct health *h, bool draining)
{
    atomic_store(&h->draining, draining);
}

bool health_ready(struct health *h)
{
    if (atomic_load(&h->draining))
        return false;
    for (size_t i = 0; i < h->nchecks; i++)
        if (!atomic_load(&h->checks[i].ok))
            return false;
    return true;
}

static void handle_healthz(struct http_request *req, void *ud)
{
    (void)ud;
    http_respond(req, 200, "application/json", xstrdup("{\"status\":\"ok\"}"), 15);
}

static void handle_readyz(struct http_request *req, void *ud)
{
    struct health *h = ud;
    bool ready = health_ready(h);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "status", ready ? "ready" : "not ready");
    cJSON *checks = cJSON_AddObjectToObject(body, "checks");
    for (size_t i = 0; i < h->nchecks; i++)
        cJSON_AddBoolToObject(checks, h->checks[i].name, atomic_load(&h->checks[i].ok));
    cJSON_AddBoolToObject(body, "draining", atomic_load(&h->draining));
    http_respond_json(req, ready ? 200 : 503, body);
    cJSON_Delete(body);
}

static void handle_metrics(struct http_request *req, void *ud)
{
    struct health *h = ud;
    struct buf b;
    buf_init(&b, METRICS_RENDER_MAX);
    if (metrics_render(h->metrics, &b) != 0) {
        buf_release(&b);
        http_respond_problem(req, 500, NULL, "metrics exposition exceeds %d bytes",
                             METRICS_RENDER_MAX);
        return;
    }
    size_t len;
    char *text = buf_detach(&b, &len);
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

int health_register_routes(struct health *h, struct http_server *s, struct metrics *m)
{
    h->metrics = m;
    int rc = http_server_route(s, "GET", "/healthz", handle_healthz, h);
    if (!rc)
        rc = http_server_route(s, "GET", "/readyz", handle_readyz, h);
    if (!rc)
        rc = http_server_route(s, "GET", "/metrics", handle_metrics, h);
    return rc;
}

void health_free(struct health *h)
{
    if (!h)
        return;
    if (h->thread_started) {
        pthread_mutex_lock(&h->lock);
        atomic_store(&h->stop, true);
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->thread, NULL);
    }
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
