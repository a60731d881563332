/*
 * Dispatch to the vendor: a bounded pool of worker threads, each with its own
 * Redis connection, calling POST {base_url}/v1/robots/{id}/commands through
 * libcommon's http_client (timeouts, retries with backoff and jitter honouring
 * Retry-After, per-host circuit breaker) with the command id as
 * Idempotency-Key. A worker never takes a job for a vendor that already has
 * dispatch.per_vendor_max calls in flight, so one slow vendor holds at most
 * that many workers and the others keep going. The lanes never wait on HTTP.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_client.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "reboot.h"
#include "redis.h"
#include "service.h"
#include "sources.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define VENDORS_MAX 256
#define DETAIL_MAX  300

struct job {
    struct job *next;
    struct command c;
    char source[72];
    int64_t queued_mono_ms;
};

/* A client shared by the workers; a reload swaps in a new one, the last user frees the old. */
struct client_ref {
    struct http_client *client;
    int refs;
    bool retired;
};

struct vendor_slot {
    char source[72];
    int inflight;
};

struct dispatcher {
    struct reboot *rb;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *head, *tail;
    bool stop;
    int per_vendor_max;
    struct client_ref *client;
    struct vendor_slot vendors[VENDORS_MAX];
    int nvendors;
    pthread_t *threads;
    struct redis **redis;
    int nthreads;
    int started;
};

static struct client_ref *client_build(const struct cfg *c)
{
    struct http_client_options o = {
        .connect_timeout_ms = (int)cfg_get_int(c, "dispatch.connect_timeout_ms"),
        .timeout_ms = (int)cfg_get_int(c, "dispatch.timeout_ms"),
        .max_retries = (int)cfg_get_int(c, "dispatch.max_retries"),
        .backoff_base_ms = (int)cfg_get_int(c, "dispatch.backoff_base_ms"),
        .backoff_max_ms = (int)cfg_get_int(c, "dispatch.backoff_max_ms"),
        .retry_after_max_ms = (int)cfg_get_int(c, "dispatch.retry_after_max_ms"),
        .max_body = 64 * 1024,
        .breaker_window_ms = (int)cfg_get_int(c, "breaker.window_ms"),
        .breaker_min_requests = (int)cfg_get_int(c, "breaker.min_requests"),
        .breaker_error_ratio = cfg_get_double(c, "breaker.error_ratio"),
        .breaker_open_ms = (int)cfg_get_int(c, "breaker.open_ms"),
        .user_agent = "robot-fleet-reboot-command/0.1",
    };
    struct client_ref *ref = xcalloc(1, sizeof(*ref));
    ref->client = http_client_new(&o);
    return ref;
}

void dispatcher_reconfigure(struct dispatcher *d, const struct cfg *cfg)
{
    if (!d)
        return;
    struct client_ref *fresh = client_build(cfg);
    pthread_mutex_lock(&d->lock);
    struct client_ref *old = d->client;
    d->client = fresh;
    d->per_vendor_max = (int)cfg_get_int(cfg, "dispatch.per_vendor_max");
    old->retired = true;
    bool free_old = old->refs == 0;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (free_old) {
        http_client_free(old->client);
        free(old);
    }
}

static struct vendor_slot *vendor_of(struct dispatcher *d, const char *source)
{
    for (int i = 0; i < d->nvendors; i++)
        if (strcmp(d->vendors[i].source, source) == 0)
            return &d->vendors[i];
    if (d->nvendors == VENDORS_MAX)
        return NULL; /* more vendors than slots: the rest share no limit */
    struct vendor_slot *v = &d->vendors[d->nvendors++];
    str_copy(v->source, source, sizeof(v->source));
    v->inflight = 0;
    return v;
}

void dispatcher_submit(struct dispatcher *d, const struct command *c, const char *source)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->c = *c;
    str_copy(j->source, source ? source : "", sizeof(j->source));
    j->queued_mono_ms = time_mono_ms();
    pthread_mutex_lock(&d->lock);
    if (d->tail)
        d->tail->next = j;
    else
        d->head = j;
    d->tail = j;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

/* The first job whose vendor has room, unlinked; NULL when none may run now. */
static struct job *take_job(struct dispatcher *d, struct vendor_slot **slot)
{
    struct job *prev = NULL;
    for (struct job *j = d->head; j; prev = j, j = j->next) {
        struct vendor_slot *v = vendor_of(d, j->source);
        if (v && v->inflight >= d->per_vendor_max)
            continue;
        if (prev)
            prev->next = j->next;
        else
            d->head = j->next;
        if (d->tail == j)
            d->tail = prev;
        j->next = NULL;
        *slot = v;
        return j;
    }
    return NULL;
}

struct target {
    char *base_url;
    char *token;
};

static int copy_source(void *ud, const struct source *src)
{
    struct target *t = ud;
    t->base_url = xstrdup(src->base_url ? src->base_url : "");
    t->token = src->api_token ? xstrdup(src->api_token) : NULL;
    return 0;
}

/* A short, printable account of a vendor refusal (its problem detail when it sent one). */
static void vendor_message(const struct http_client_response *resp, char *out, size_t n)
{
    cJSON *doc = resp->body ? json_parse(resp->body, resp->len, NULL, 0) : NULL;
    const char *msg = NULL;
    if (doc)
        msg = json_get_str(doc, "detail")    ? json_get_str(doc, "detail")
              : json_get_str(doc, "message") ? json_get_str(doc, "message")
                                             : json_get_str(doc, "title");
    char clean[DETAIL_MAX];
    size_t k = 0;
    for (const char *p = msg ? msg : (resp->body ? resp->body : ""); *p && k + 1 < sizeof(clean);
         p++)
        clean[k++] = (*p >= 0x20 && *p < 0x7f) ? *p : ' ';
    clean[k] = '\0';
    snprintf(out, n, "vendor answered %ld: %s", resp->status, clean);
    cJSON_Delete(doc);
}

static void count_error(struct dispatcher *d, const char *code)
{
    const char *v[] = {code};
    metric_series_add(metric_series(d->rb->m_vendor_errors, v), 1);
}

static void fail(struct dispatcher *d, struct redis *r, const struct command *c, const char *detail)
{
    struct transition t = {.to = "failed", .from = "dispatched", .detail = detail};
    if (reboot_transition(d->rb, r, c, &t) < 0)
        LOG_WARN("cannot record the failed dispatch of '%s' (Redis); the sweep resends it", c->id);
}

/* The vendor answered: the dispatch is done (no resend after a crash). */
static void mark_sent(struct redis *r, const char *id, long status)
{
    char key[CMD_ID_MAX + 8], st[16];
    snprintf(key, sizeof(key), "cmd:%s", id);
    snprintf(st, sizeof(st), "%ld", status);
    const char *a0[] = {"ZREM", "reboot:sending", id};
    const char *a1[] = {"HSET", key, "vendor_status", st};
    struct redis_cmd cmds[] = {{3, a0, NULL}, {4, a1, NULL}};
    redisReply *rep[2] = {NULL, NULL};
    redis_pipeline(r, 2, cmds, rep);
    for (int i = 0; i < 2; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
}

static void run_job(struct dispatcher *d, struct http_client *client, struct redis *r,
                    const struct job *j)
{
    const struct command *c = &j->c;
    char detail[DETAIL_MAX + 64];
    struct target tgt = {NULL, NULL};
    if (!j->source[0]) {
        count_error(d, "no_source");
        fail(d, r, c, "the robot has no vendor source");
        return;
    }
    int rc = source_cache_use(d->rb->sources, j->source, copy_source, &tgt);
    if (rc != 0) {
        count_error(d, "source");
        snprintf(detail, sizeof(detail), "vendor source '%s' %s", j->source,
                 rc == -ENOENT ? "does not exist" : "cannot be read");
        fail(d, r, c, detail);
        return;
    }
    char *url = xasprintf("%s/v1/robots/%s/commands", tgt.base_url, c->robot_id);
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "command_id", c->id);
    cJSON_AddStringToObject(b, "type", "reboot");
    cJSON_AddStringToObject(b, "mode", c->mode);
    cJSON_AddStringToObject(b, "reason", c->reason);
    size_t blen = 0;
    char *body = json_print(b, &blen);
    cJSON_Delete(b);
    char *idem = xasprintf("Idempotency-Key: %s", c->id);
    const char *headers[] = {idem, NULL};
    struct http_client_request req = {.method = "POST",
                                      .url = url,
                                      .bearer_token = tgt.token,
                                      .body = body,
                                      .len = blen,
                                      .headers = headers,
                                      .max_retries = -1};
    struct http_client_response resp;
    rc = http_client_do(client, &req, &resp);
    enum http_breaker_state bs = http_client_breaker_state(client, tgt.base_url);
    const char *vl[] = {j->source};
    metric_series_set(metric_series(d->rb->m_breaker, vl), bs == HTTP_BREAKER_OPEN        ? 1
                                                           : bs == HTTP_BREAKER_HALF_OPEN ? 2
                                                                                          : 0);
    struct log_field f[] = {{"robot.id", c->robot_id}, {"command.id", c->id}};
    if (rc == 0 && resp.status >= 200 && resp.status < 300) {
        mark_sent(r, c->id, resp.status);
        metric_observe(d->rb->m_latency, (double)(time_mono_ms() - j->queued_mono_ms) / 1000.0);
        log_fields(LOG_LEVEL_DEBUG, f, 2, "vendor accepted the command (%ld, %d attempts)",
                   resp.status, resp.attempts);
    } else if (rc == 0) {
        char code[16];
        snprintf(code, sizeof(code), "%ld", resp.status);
        count_error(d, code);
        vendor_message(&resp, detail, sizeof(detail));
        mark_sent(r, c->id, resp.status);
        log_fields(LOG_LEVEL_WARN, f, 2, "vendor refused the command: %ld after %d attempts",
                   resp.status, resp.attempts);
        fail(d, r, c, detail);
    } else {
        count_error(d, rc == HTTP_CLIENT_ERR_OPEN      ? "breaker_open"
                       : rc == HTTP_CLIENT_ERR_TIMEOUT ? "timeout"
                                                       : "network");
        snprintf(detail, sizeof(detail), "vendor not reached: %s (%d attempts)",
                 http_client_strerror(rc), resp.attempts);
        mark_sent(r, c->id, 0);
        log_fields(LOG_LEVEL_WARN, f, 2, "dispatch failed: %s", detail);
        fail(d, r, c, detail);
    }
    http_client_response_release(&resp);
    free(idem);
    free(body);
    free(url);
    free(tgt.base_url);
    free(tgt.token);
}

struct worker_arg {
    struct dispatcher *d;
    int index;
};

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct dispatcher *d = wa->d;
    struct redis *r = d->redis[wa->index];
    free(wa);
    pthread_mutex_lock(&d->lock);
    for (;;) {
        struct vendor_slot *slot = NULL;
        struct job *j = NULL;
        while (!d->stop && !(j = take_job(d, &slot)))
            pthread_cond_wait(&d->cond, &d->lock);
        if (!j)
            break;
        if (slot)
            slot->inflight++;
        struct client_ref *ref = d->client;
        ref->refs++;
        pthread_mutex_unlock(&d->lock);

        run_job(d, ref->client, r, j);
        free(j);

        pthread_mutex_lock(&d->lock);
        /* only a job held back by its vendor's cap can become runnable now */
        if (slot && slot->inflight-- >= d->per_vendor_max && d->head)
            pthread_cond_broadcast(&d->cond);
        bool free_ref = --ref->refs == 0 && ref->retired;
        if (free_ref) {
            http_client_free(ref->client);
            free(ref);
        }
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

struct dispatcher *dispatcher_new(struct reboot *rb, char *errbuf, size_t errsize)
{
    const struct cfg *cfg = service_cfg(rb->svc);
    struct dispatcher *d = xcalloc(1, sizeof(*d));
    d->rb = rb;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    d->client = client_build(cfg);
    d->per_vendor_max = (int)cfg_get_int(cfg, "dispatch.per_vendor_max");
    d->nthreads = (int)cfg_get_int(cfg, "dispatch.workers");
    d->threads = xcalloc((size_t)d->nthreads, sizeof(*d->threads));
    d->redis = xcalloc((size_t)d->nthreads, sizeof(*d->redis));
    for (int i = 0; i < d->nthreads; i++) {
        d->redis[i] = reboot_redis_new(rb);
        if (!d->redis[i]) {
            snprintf(errbuf, errsize, "cannot open Redis connections for the dispatch workers");
            goto fail;
        }
    }
    for (int i = 0; i < d->nthreads; i++) {
        struct worker_arg *wa = xmalloc(sizeof(*wa));
        wa->d = d;
        wa->index = i;
        if (pthread_create(&d->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            snprintf(errbuf, errsize, "cannot start dispatch worker %d", i);
            goto fail;
        }
        d->started++;
    }
    return d;
fail:
    dispatcher_stop(d);
    dispatcher_free(d);
    return NULL;
}

void dispatcher_stop(struct dispatcher *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->lock);
    d->stop = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    for (int i = 0; i < d->started; i++)
        pthread_join(d->threads[i], NULL);
    d->started = 0;
}

void dispatcher_free(struct dispatcher *d)
{
    if (!d)
        return;
    /* jobs never run stay "dispatched" in Redis: the stuck-dispatch sweep resends them */
    while (d->head) {
        struct job *n = d->head->next;
        free(d->head);
        d->head = n;
    }
    for (int i = 0; i < d->nthreads; i++)
        redis_free(d->redis[i]);
    if (d->client) {
        http_client_free(d->client->client);
        free(d->client);
    }
    free(d->redis);
    free(d->threads);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->cond);
    free(d);
}
