/*
 * The registry object (see registry.h): settings, clients, metrics, answers
 * held until the outbox relay has the change's event acknowledged by Kafka,
 * and the worker thread that runs vendor calls off the HTTP threads.
 */
#include "registry.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "cloudevents.h"
#include "crypto.h"
#include "http_client.h"
#include "http_server.h"
#include "json.h"
#include "keyring.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "service.h"
#include "str.h"
#include "timeutil.h"
#include "trace.h"
#include "xalloc.h"

#define MAX_REDIS_THREADS 64
#define MAX_JOBS          64
#define EVENT_MAX_BYTES   (1024 * 1024)
#define IDENTITY_MAX      128

const struct cfg_key registry_config_keys[] = {
    {"registry.dev_mode", CFG_BOOL, "false", 0, 0, false, "REGISTRY_DEV_MODE",
     "allow starting without SECRETS_KEY (a random key is used; secrets are lost on restart)"},
    {"registry.public_ingest_url", CFG_STRING, "http://127.0.0.1:8081/v1/webhooks/{source}", 1, 400,
     false, "REGISTRY_PUBLIC_INGEST_URL",
     "URL the vendor delivers webhooks to; {source} becomes the source id"},
    {"registry.webhook_event_types", CFG_STRING,
     "robot.heartbeat,robot.status,robot.fault,robot.booted,command.ack,command.result", 1, 400,
     false, NULL, "event types subscribed at the vendor (comma-separated)"},
    {"registry.secret_grace_s", CFG_INT, "86400", 1, 2592000, false, NULL,
     "how long a rotated-out webhook secret stays valid"},
    {"registry.vendor_timeout_ms", CFG_INT, "10000", 100, 300000, false, NULL,
     "total timeout of one vendor HTTP attempt"},
    {"registry.vendor_connect_timeout_ms", CFG_INT, "2000", 50, 60000, false, NULL,
     "connect timeout of one vendor HTTP attempt"},
    {"registry.vendor_retries", CFG_INT, "3", 0, 10, false, NULL,
     "retries of a vendor call on 5xx, 429 and network errors"},
    {"registry.vendor_backoff_ms", CFG_INT, "200", 1, 60000, false, NULL,
     "first retry backoff (doubles, full jitter)"},
    {"registry.vendor_max_body_bytes", CFG_INT, "16777216", 1024, 268435456, false, NULL,
     "largest vendor response accepted"},
    {"registry.default_page_size", CFG_INT, "100", 1, 10000, false, NULL,
     "robots per list page when limit is absent"},
    {"registry.max_page_size", CFG_INT, "1000", 1, 10000, false, NULL,
     "largest limit accepted on GET /v1/robots"},
    {"registry.list_scan_budget", CFG_INT, "5000", 100, 1000000, false, NULL,
     "robots one filtered list page examines at most before returning a shorter page"},
    {"registry.sync_page_size", CFG_INT, "500", 1, 1000, false, NULL,
     "limit asked of the vendor per page during sync"},
    {"registry.sync_max_robots", CFG_INT, "200000", 1, 10000000, false, NULL,
     "most robots one sync accepts from the vendor"},
    {"registry.publish_wait_ms", CFG_INT, "10000", 100, 600000, false, NULL,
     "how long a write waits for Kafka to acknowledge its event before answering 503 "
     "(the change stays in the outbox and is announced later)"},
    {"registry.outbox_poll_ms", CFG_INT, "100", 10, 10000, false, NULL,
     "how often the relay looks for outbox entries written by other replicas"},
    {"registry.outbox_lease_ms", CFG_INT, "5000", 500, 600000, false, NULL,
     "lease of the one relay that produces the outbox; a dead holder is replaced after it"},
    {"registry.outbox_batch", CFG_INT, "500", 1, 10000, false, NULL,
     "outbox entries produced per relay round"},
};
const size_t registry_config_nkeys = sizeof(registry_config_keys) / sizeof(registry_config_keys[0]);

struct job {
    struct job *next;
    registry_job_fn fn;
    struct http_request *req;
    void *data;
    void (*free_fn)(void *);
};

struct registry {
    struct service *svc;
    struct registry_outbox *outbox;
    struct keyring *keyring;
    struct http_client *vendor;
    struct registry_settings set;

    struct redis_options ropts;
    pthread_mutex_t redis_lock;
    struct redis *thread_redis[MAX_REDIS_THREADS];
    size_t nthread_redis;

    pthread_mutex_t job_lock;
    pthread_cond_t job_cond;
    struct job *head, *tail;
    size_t njobs;
    bool stop;
    bool worker_started;
    pthread_t worker;

    struct metric *m_changes;
    struct metric *m_vendor;
    struct metric *m_sync;
};

static _Thread_local struct redis *tls_redis;

/* ---- accessors and metrics ---- */

const struct registry_settings *registry_settings(const struct registry *reg)
{
    return &reg->set;
}

const struct keyring *registry_keyring(const struct registry *reg)
{
    return reg->keyring;
}

struct http_client *registry_vendor(struct registry *reg)
{
    return reg->vendor;
}

struct http_server *registry_http(struct registry *reg)
{
    return service_http(reg->svc);
}

struct redis *registry_redis(struct registry *reg)
{
    if (tls_redis)
        return tls_redis;
    pthread_mutex_lock(&reg->redis_lock);
    if (reg->nthread_redis < MAX_REDIS_THREADS) {
        char err[128];
        tls_redis = redis_new(&reg->ropts, err, sizeof(err));
        if (tls_redis)
            reg->thread_redis[reg->nthread_redis++] = tls_redis;
    }
    pthread_mutex_unlock(&reg->redis_lock);
    return tls_redis ? tls_redis : service_redis(reg->svc);
}

static void count(struct metric *m, const char *a, const char *b, double n)
{
    const char *v[] = {a, b};
    metric_series_add(metric_series(m, v), n);
}

void registry_count_change(struct registry *reg, const char *kind, const char *type)
{
    count(reg->m_changes, kind, type, 1);
}

void registry_count_vendor(struct registry *reg, const char *op, const char *outcome)
{
    count(reg->m_vendor, op, outcome, 1);
}

void registry_count_sync(struct registry *reg, const char *result, double n)
{
    const char *v[] = {result};
    metric_series_add(metric_series(reg->m_sync, v), n);
}

/* ---- request helpers ---- */

const char *registry_identity(struct http_request *req)
{
    const char *who = http_request_header(req, "X-Consumer-Username");
    if (!who || !*who || strlen(who) > IDENTITY_MAX)
        return "anonymous";
    return who;
}

static bool content_type_json(const char *ct)
{
    if (!ct)
        return false;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return (n == 16 && strncasecmp(ct, "application/json", n) == 0) ||
           (n == 28 && strncasecmp(ct, "application/merge-patch+json", n) == 0);
}

cJSON *registry_body_object(struct http_request *req)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[128];
    if (!content_type_json(http_request_header(req, "Content-Type"))) {
        http_respond_problem(req, 415, "Content-Type", "Content-Type must be application/json");
        return NULL;
    }
    cJSON *root = json_parse(body ? body : "", len, err, sizeof(err));
    if (!root) {
        http_respond_problem(req, 400, "body", "body is not valid JSON: %s", err);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        http_respond_problem(req, 400, "body", "body must be a JSON object");
        return NULL;
    }
    return root;
}

char *registry_event(const char *type, const char *subject, const cJSON *data, size_t *len)
{
    char id[CRYPTO_UUID_LEN], now[TIME_RFC3339_LEN];
    crypto_uuid_v7(id);
    time_format_rfc3339(time_now_ms(), now, sizeof(now));
    struct cloudevent ce = {.id = id,
                            .source = "/robot-registry",
                            .type = type,
                            .subject = subject,
                            .time = now,
                            .data = data};
    struct buf b;
    buf_init(&b, EVENT_MAX_BYTES);
    if (ce_build(&ce, &b) != 0) {
        buf_release(&b);
        return NULL;
    }
    return buf_detach(&b, len);
}

/* ---- announcing (the outbox relay does the producing) ---- */

void registry_traceparent(struct http_request *req, char out[TRACE_PARENT_LEN])
{
    trace_parent_child(req ? http_request_header(req, "traceparent") : NULL, out);
}

struct http_wait {
    struct http_request *req;
    unsigned status;
    char *body;
    char etag[48];
};

static void http_wait_done(void *ud, bool announced)
{
    struct http_wait *w = ud;
    if (!announced) {
        free(w->body);
        http_response_header(w->req, "Retry-After", "5");
        http_respond_problem(w->req, 503, NULL,
                             "the change is stored but kafka has not acknowledged its event yet; "
                             "the outbox announces it on robot.registry.v1 once kafka is back");
    } else {
        if (w->etag[0])
            http_response_header(w->req, "ETag", w->etag);
        http_respond(w->req, w->status, w->body ? "application/json" : NULL, w->body,
                     w->body ? strlen(w->body) : 0);
    }
    free(w);
}

void registry_respond_announced(struct registry *reg, struct http_request *req,
                                const char *entry_id, unsigned status, char *body, const char *etag)
{
    struct http_wait *w = xcalloc(1, sizeof(*w));
    w->req = req;
    w->status = status;
    w->body = body;
    if (etag)
        str_copy(w->etag, etag, sizeof(w->etag));
    http_request_suspend(req);
    registry_outbox_wait(reg->outbox, entry_id, http_wait_done, w);
}

int registry_wait_announced(struct registry *reg, const char *entry_id)
{
    return registry_outbox_wait_sync(reg->outbox, entry_id);
}

/* ---- worker ---- */

static void *worker_main(void *arg)
{
    struct registry *reg = arg;
    pthread_mutex_lock(&reg->job_lock);
    for (;;) {
        while (!reg->head && !reg->stop)
            pthread_cond_wait(&reg->job_cond, &reg->job_lock);
        if (!reg->head)
            break;
        struct job *j = reg->head;
        reg->head = j->next;
        if (!reg->head)
            reg->tail = NULL;
        reg->njobs--;
        pthread_mutex_unlock(&reg->job_lock);
        j->fn(reg, j->req, j->data);
        if (j->free_fn)
            j->free_fn(j->data);
        free(j);
        pthread_mutex_lock(&reg->job_lock);
    }
    pthread_mutex_unlock(&reg->job_lock);
    return NULL;
}

void registry_enqueue(struct registry *reg, struct http_request *req, registry_job_fn fn,
                      void *data, void (*free_fn)(void *))
{
    pthread_mutex_lock(&reg->job_lock);
    if (reg->njobs >= MAX_JOBS || reg->stop) {
        pthread_mutex_unlock(&reg->job_lock);
        if (free_fn)
            free_fn(data);
        http_response_header(req, "Retry-After", "5");
        http_respond_problem(req, 503, NULL, "too many vendor operations queued; retry later");
        return;
    }
    struct job *j = xcalloc(1, sizeof(*j));
    j->fn = fn;
    j->req = req;
    j->data = data;
    j->free_fn = free_fn;
    http_request_suspend(req);
    if (reg->tail)
        reg->tail->next = j;
    else
        reg->head = j;
    reg->tail = j;
    reg->njobs++;
    pthread_cond_signal(&reg->job_cond);
    pthread_mutex_unlock(&reg->job_lock);
}

/* ---- lifecycle ---- */

static struct keyring *open_keyring(const struct cfg *c, char *errbuf, size_t errsize)
{
    struct keyring *k = keyring_from_env("SECRETS_KEY", errbuf, errsize);
    if (k || !cfg_get_bool(c, "registry.dev_mode"))
        return k;
    uint8_t raw[32];
    char spec[64];
    crypto_random_bytes(raw, sizeof(raw));
    crypto_base64_encode(raw, sizeof(raw), spec, sizeof(spec));
    k = keyring_new(spec, errbuf, errsize);
    memset(raw, 0, sizeof(raw));
    memset(spec, 0, sizeof(spec));
    LOG_WARN("dev mode: SECRETS_KEY is not usable (%s), sealing secrets under a random key "
             "that is lost on restart",
             errbuf);
    return k;
}

struct registry *registry_new(struct service *svc, char *errbuf, size_t errsize)
{
    const struct cfg *c = service_cfg(svc);
    struct registry *reg = xcalloc(1, sizeof(*reg));
    reg->svc = svc;
    pthread_mutex_init(&reg->redis_lock, NULL);
    pthread_mutex_init(&reg->job_lock, NULL);
    pthread_cond_init(&reg->job_cond, NULL);

    struct registry_settings *s = &reg->set;
    str_copy(s->public_ingest_url, cfg_get_str(c, "registry.public_ingest_url"),
             sizeof(s->public_ingest_url));
    str_copy(s->event_types, cfg_get_str(c, "registry.webhook_event_types"),
             sizeof(s->event_types));
    s->secret_grace_s = cfg_get_int(c, "registry.secret_grace_s");
    s->default_page = cfg_get_int(c, "registry.default_page_size");
    s->max_page = cfg_get_int(c, "registry.max_page_size");
    s->list_scan_budget = cfg_get_int(c, "registry.list_scan_budget");
    s->sync_page_size = cfg_get_int(c, "registry.sync_page_size");
    s->sync_max_robots = cfg_get_int(c, "registry.sync_max_robots");
    if (s->default_page > s->max_page) {
        snprintf(errbuf, errsize, "registry.default_page_size exceeds registry.max_page_size");
        goto out_free;
    }
    if (!strstr(s->public_ingest_url, "{source}")) {
        snprintf(errbuf, errsize, "registry.public_ingest_url must contain {source}");
        goto out_free;
    }

    reg->keyring = open_keyring(c, errbuf, errsize);
    if (!reg->keyring)
        goto out_free;

    reg->ropts = *service_redis_options(svc);
    struct registry_outbox_settings os = {
        .wait_ms = cfg_get_int(c, "registry.publish_wait_ms"),
        .poll_ms = cfg_get_int(c, "registry.outbox_poll_ms"),
        .lease_ms = cfg_get_int(c, "registry.outbox_lease_ms"),
        .batch = cfg_get_int(c, "registry.outbox_batch"),
    };
    reg->outbox = registry_outbox_new(svc, &reg->ropts, &os, errbuf, errsize);
    if (!reg->outbox)
        goto out_free;
    struct http_client_options ho = {
        .connect_timeout_ms = (int)cfg_get_int(c, "registry.vendor_connect_timeout_ms"),
        .timeout_ms = (int)cfg_get_int(c, "registry.vendor_timeout_ms"),
        .max_retries = (int)cfg_get_int(c, "registry.vendor_retries"),
        .backoff_base_ms = (int)cfg_get_int(c, "registry.vendor_backoff_ms"),
        .max_body = (size_t)cfg_get_int(c, "registry.vendor_max_body_bytes"),
        .user_agent = "robot-registry/0.1",
    };
    reg->vendor = http_client_new(&ho);

    struct metrics *m = service_metrics(svc);
    const char *kind_type[] = {"kind", "type"};
    const char *op_outcome[] = {"op", "outcome"};
    const char *result[] = {"result"};
    reg->m_changes = metrics_counter(m, "registry_changes_total",
                                     "Changes produced to robot.registry.v1", 2, kind_type);
    reg->m_vendor = metrics_counter(m, "registry_vendor_requests_total",
                                    "Vendor API operations by outcome", 2, op_outcome);
    reg->m_sync = metrics_counter(m, "registry_sync_robots_total", "Robots seen by sync, by result",
                                  1, result);

    if (pthread_create(&reg->worker, NULL, worker_main, reg) != 0) {
        snprintf(errbuf, errsize, "cannot start the vendor worker thread");
        goto out_free;
    }
    reg->worker_started = true;
    return reg;

out_free:
    registry_free(reg);
    return NULL;
}

int registry_register_routes(struct registry *reg)
{
    int rc = robots_register_routes(reg);
    return rc ? rc : sources_register_routes(reg);
}

void registry_stop(void *ud)
{
    struct registry *reg = ud;
    if (!reg->worker_started) {
        registry_outbox_stop(reg->outbox);
        return;
    }
    pthread_mutex_lock(&reg->job_lock);
    reg->stop = true;
    pthread_cond_signal(&reg->job_cond);
    pthread_mutex_unlock(&reg->job_lock);
    pthread_join(reg->worker, NULL);
    reg->worker_started = false;
    /* after the worker: a sync still waits on the relay until then */
    registry_outbox_stop(reg->outbox);
}

void registry_free(struct registry *reg)
{
    if (!reg)
        return;
    registry_stop(reg);
    registry_outbox_free(reg->outbox);
    for (size_t i = 0; i < reg->nthread_redis; i++)
        redis_free(reg->thread_redis[i]);
    http_client_free(reg->vendor);
    keyring_free(reg->keyring);
    pthread_cond_destroy(&reg->job_cond);
    pthread_mutex_destroy(&reg->job_lock);
    pthread_mutex_destroy(&reg->redis_lock);
    free(reg);
}
