/*
 * reboot-command's context and its decision core: the config keys and their
 * hot reload, the lifecycle transitions (one Redis script that also puts the
 * status event in the outbox, which outbox.c relays to
 * robot.command-status.v1), the policy decision for a requested or fired
 * command, and the fleet queue pump. The lanes, the leader, the dispatcher
 * workers and the API all come through here, so every transition is applied
 * and announced the same way.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "cloudevents.h"
#include "crypto.h"
#include "health.h"
#include "json.h"
#include "keyring.h"
#include "log.h"
#include "metrics.h"
#include "reboot.h"
#include "redis.h"
#include "service.h"
#include "sources.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "trace.h"
#include "xalloc.h"

#define EVENT_MAX (64 * 1024)

const struct cfg_key reboot_config_keys[] = {
    {"reboot.cooldown_s", CFG_INT, "600", 0, 604800, true, NULL,
     "least time between two reboots of one robot"},
    {"reboot.max_per_robot_per_day", CFG_INT, "3", 1, 1000, true, NULL,
     "most reboots of one robot per UTC day"},
    {"reboot.fleet_max_concurrent", CFG_INT, "20", 1, 1000000, true, NULL,
     "most robots rebooting at once fleet-wide; more wait queued in order"},
    {"reboot.fleet_queue_max", CFG_INT, "10000", 1, 10000000, true, NULL,
     "most commands waiting for a fleet slot; the API refuses more (rule fleet_cap)"},
    {"reboot.ack_timeout_s", CFG_INT, "60", 1, 86400, true, NULL,
     "a dispatched command without command.ack by then is timed_out"},
    {"reboot.completion_timeout_s", CFG_INT, "600", 1, 86400, true, NULL,
     "an acknowledged command without result or boot by then is timed_out"},
    {"reboot.abort_failure_ratio", CFG_DOUBLE, "0.5", 0.01, 1, true, NULL,
     "failed / finished reboots in the window that pauses automatic reboots"},
    {"reboot.abort_min_count", CFG_INT, "10", 1, 1000000, true, NULL,
     "fewer finished reboots in the window never pause automation"},
    {"reboot.abort_window_s", CFG_INT, "3600", 10, 604800, true, NULL,
     "how far back the abort switch looks"},
    {"reboot.lease_ttl_ms", CFG_INT, "5000", 300, 120000, true, NULL,
     "scheduler lease; a crashed holder is replaced within this time"},
    {"reboot.schedule_poll_ms", CFG_INT, "200", 20, 10000, true, NULL,
     "how often the lease holder fires due commands and timeouts"},
    {"reboot.idempotency_ttl_s", CFG_INT, "86400", 60, 2592000, true, NULL,
     "how long an Idempotency-Key keeps returning its command"},
    {"reboot.record_ttl_s", CFG_INT, "2592000", 0, 31536000, true, NULL,
     "how long a finished command's record stays (0 = forever)"},
    {"reboot.stuck_after_s", CFG_INT, "120", 1, 86400, true, NULL,
     "a dispatch without vendor answer this long (its replica died) is sent again, same key"},
    {"reboot.max_request_age_s", CFG_INT, "900", 10, 604800, true, NULL,
     "automatic requests older than this when first seen are ignored (stale)"},
    {"reboot.consumer_group", CFG_STRING, "reboot-command", 1, 200, false, "REBOOT_CONSUMER_GROUP",
     "Kafka consumer group of the lanes (-events for robot.events.v1)"},
    {"reboot.lanes", CFG_INT, "8", 1, 64, false, NULL,
     "workers per consumed topic; partition p is always handled by worker p % lanes, in order"},
    {"dispatch.workers", CFG_INT, "16", 1, 512, false, NULL, "vendor dispatch worker threads"},
    {"dispatch.per_vendor_max", CFG_INT, "8", 1, 512, true, NULL,
     "most dispatches in flight to one vendor, so a slow one cannot take every worker"},
    {"dispatch.connect_timeout_ms", CFG_INT, "2000", 50, 60000, true, NULL, "vendor connect"},
    {"dispatch.timeout_ms", CFG_INT, "5000", 100, 120000, true, NULL, "one vendor attempt"},
    {"dispatch.max_retries", CFG_INT, "3", 0, 20, true, NULL, "retries on 5xx/429/network"},
    {"dispatch.backoff_base_ms", CFG_INT, "100", 1, 60000, true, NULL, "first backoff"},
    {"dispatch.backoff_max_ms", CFG_INT, "2000", 1, 300000, true, NULL, "longest backoff"},
    {"dispatch.retry_after_max_ms", CFG_INT, "10000", 0, 300000, true, NULL,
     "longest Retry-After honoured"},
    {"breaker.window_ms", CFG_INT, "30000", 100, 3600000, true, NULL, "error ratio window"},
    {"breaker.min_requests", CFG_INT, "10", 1, 100000, true, NULL, "fewer never open it"},
    {"breaker.error_ratio", CFG_DOUBLE, "0.5", 0.01, 1, true, NULL, "ratio that opens it"},
    {"breaker.open_ms", CFG_INT, "10000", 50, 3600000, true, NULL, "pause before a probe"},
};
const size_t reboot_config_nkeys = sizeof(reboot_config_keys) / sizeof(reboot_config_keys[0]);

const struct kafka_prop reboot_producer_defaults[] = {
    {"linger.ms", "2"},
    {"message.timeout.ms", "30000"},
};
const size_t reboot_producer_ndefaults =
    sizeof(reboot_producer_defaults) / sizeof(reboot_producer_defaults[0]);

const char *origin_name(enum cmd_origin o)
{
    return o == ORIGIN_API ? "api" : o == ORIGIN_AUTOMATIC ? "automatic" : "scheduled";
}

static void load_settings(struct reboot_settings *s, const struct cfg *c)
{
    s->cooldown_s = cfg_get_int(c, "reboot.cooldown_s");
    s->max_per_day = cfg_get_int(c, "reboot.max_per_robot_per_day");
    s->fleet_max = cfg_get_int(c, "reboot.fleet_max_concurrent");
    s->fleet_queue_max = cfg_get_int(c, "reboot.fleet_queue_max");
    s->ack_timeout_s = cfg_get_int(c, "reboot.ack_timeout_s");
    s->completion_timeout_s = cfg_get_int(c, "reboot.completion_timeout_s");
    s->abort_ratio = cfg_get_double(c, "reboot.abort_failure_ratio");
    s->abort_min_count = cfg_get_int(c, "reboot.abort_min_count");
    s->abort_window_s = cfg_get_int(c, "reboot.abort_window_s");
    s->lease_ttl_ms = cfg_get_int(c, "reboot.lease_ttl_ms");
    s->poll_ms = cfg_get_int(c, "reboot.schedule_poll_ms");
    s->idempotency_ttl_s = cfg_get_int(c, "reboot.idempotency_ttl_s");
    s->record_ttl_s = cfg_get_int(c, "reboot.record_ttl_s");
    s->stuck_after_s = cfg_get_int(c, "reboot.stuck_after_s");
    s->max_request_age_s = cfg_get_int(c, "reboot.max_request_age_s");
}

void reboot_settings_get(struct reboot *rb, struct reboot_settings *out)
{
    pthread_rwlock_rdlock(&rb->set_lock);
    *out = rb->set;
    pthread_rwlock_unlock(&rb->set_lock);
}

static void on_reload(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg)
{
    (void)old_cfg;
    struct reboot *rb = ud;
    struct reboot_settings s;
    load_settings(&s, new_cfg);
    pthread_rwlock_wrlock(&rb->set_lock);
    rb->set = s;
    pthread_rwlock_unlock(&rb->set_lock);
    dispatcher_reconfigure(rb->dispatch, new_cfg);
    LOG_INFO("reboot policy reloaded (cooldown %llds, daily cap %lld, fleet cap %lld)",
             (long long)s.cooldown_s, (long long)s.max_per_day, (long long)s.fleet_max);
}

/* ---- delivery ---- */

struct sync_delivery {
    struct outbox_delivery d;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int err;
};

static void sync_done(struct outbox_delivery *d, int err)
{
    struct sync_delivery *s = (struct sync_delivery *)d;
    pthread_mutex_lock(&s->lock);
    s->done = true;
    s->err = err;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* The waiter gave up: the late callback frees the record. */
static void sync_abandoned(struct outbox_delivery *d, int err)
{
    (void)err;
    struct sync_delivery *s = (struct sync_delivery *)d;
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

static int produce_event(struct reboot *rb, const char *topic, const char *id, const char *type,
                         const char *subject, cJSON *data, void *opaque)
{
    char t[TIME_RFC3339_LEN], tp[TRACE_PARENT_LEN];
    struct buf b;
    time_format_rfc3339(time_now_ms(), t, sizeof(t));
    trace_parent_new(tp);
    struct cloudevent ce = {.id = id,
                            .source = "/reboot-command",
                            .type = type,
                            .subject = subject,
                            .time = t,
                            .data = data};
    struct kafka_header h = {"traceparent", tp, strlen(tp)};
    buf_init(&b, EVENT_MAX);
    int rc = ce_build(&ce, &b);
    if (rc == 0)
        rc = kafka_producer_send(rb->producer, topic, -1, subject, strlen(subject), b.data, b.len,
                                 &h, 1, opaque);
    buf_release(&b);
    return rc;
}

int reboot_produce_command(struct reboot *rb, const struct command *c, const char *origin,
                           void *opaque)
{
    char t[TIME_RFC3339_LEN];
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "command_id", c->id);
    cJSON_AddStringToObject(d, "robot_id", c->robot_id);
    cJSON_AddStringToObject(d, "mode", c->mode);
    cJSON_AddStringToObject(d, "reason", c->reason);
    cJSON_AddStringToObject(d, "origin", origin);
    time_format_rfc3339(c->created_ms, t, sizeof(t));
    cJSON_AddStringToObject(d, "requested_at", t);
    cJSON_AddBoolToObject(d, "force", c->force);
    int rc = produce_event(rb, TOPIC_ROBOT_COMMANDS, c->id, "robot.reboot.requested", c->robot_id,
                           d, opaque);
    cJSON_Delete(d);
    return rc;
}

int reboot_produce_command_sync(struct reboot *rb, const struct command *c, const char *origin,
                                int timeout_ms)
{
    struct sync_delivery *s = xcalloc(1, sizeof(*s));
    s->d.done = sync_done;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    int rc = reboot_produce_command(rb, c, origin, &s->d);
    if (rc != 0) {
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        free(s);
        return rc;
    }
    int64_t deadline = time_mono_ms() + timeout_ms;
    pthread_mutex_lock(&s->lock);
    while (!s->done && time_mono_ms() < deadline) {
        pthread_mutex_unlock(&s->lock);
        kafka_producer_flush(rb->producer, 50);
        pthread_mutex_lock(&s->lock);
    }
    bool done = s->done;
    rc = done ? s->err : -ETIMEDOUT;
    pthread_mutex_unlock(&s->lock);
    if (!done) {
        /* the callback will still come: it owns s now (message.timeout.ms bounds it) */
        s->d.done = sync_abandoned;
        return rc;
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
    return rc;
}

static const char *metric_origin(const struct command *c)
{
    if (c->at_ms > 0 || c->window_next)
        return "scheduled";
    return strcmp(c->origin, "automatic") == 0 ? "automatic" : "api";
}

void reboot_announced(struct reboot *rb, const struct command *c, const char *state)
{
    const char *labels[] = {state, metric_origin(c)};
    metric_series_add(metric_series(rb->m_commands, labels), 1);
    outbox_kick(rb->outbox);
}

int reboot_transition(struct reboot *rb, struct redis *r, const struct command *c,
                      const struct transition *t)
{
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    int64_t now = time_now_ms();
    char iso[TIME_RFC3339_LEN], prev[16] = "";
    time_format_rfc3339(now, iso, sizeof(iso));
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "state", t->to);
    cJSON_AddStringToObject(e, "at", iso);
    cJSON_AddStringToObject(e, "actor", t->actor ? t->actor : "reboot-command");
    if (t->detail)
        cJSON_AddStringToObject(e, "detail", t->detail);
    if (t->rule)
        cJSON_AddStringToObject(e, "rule", t->rule);
    char *entry = json_print(e, NULL);
    cJSON_Delete(e);
    bool terminal = false, released = false;
    int seq = 0;
    struct command cur = *c;
    if (strcmp(t->to, "scheduled") == 0)
        cur.at_ms = t->deadline_ms;
    int rc = store_transition(r, c->id, t, entry, now, set.record_ttl_s, &terminal, &released, prev,
                              sizeof(prev), &seq, &cur);
    free(entry);
    if (rc != 1)
        return rc;
    struct log_field f[] = {{"robot.id", c->robot_id}, {"command.id", c->id}};
    log_fields(LOG_LEVEL_INFO, f, 2, "command %s -> %s%s%s", prev, t->to, t->detail ? ": " : "",
               t->detail ? t->detail : "");
    reboot_announced(rb, &cur, t->to);
    if (terminal && (strcmp(prev, "dispatched") == 0 || strcmp(prev, "acknowledged") == 0))
        policy_record_outcome(rb, r, c->id, strcmp(t->to, "succeeded") == 0);
    if (released)
        reboot_pump_queue(rb, r);
    return 1;
}

/* ---- decisions ---- */

/* queued -> dispatched and hand it to a worker; false when the command moved on meanwhile. */
static bool start_dispatch(struct reboot *rb, struct redis *r, struct command *c,
                           const char *source)
{
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    int64_t now = time_now_ms();
    struct transition t = {
        .to = "dispatched", .from = "queued", .deadline_ms = now + set.ack_timeout_s * 1000};
    if (reboot_transition(rb, r, c, &t) != 1)
        return false;
    policy_count_dispatch(r, c->robot_id, now);
    dispatcher_submit(rb->dispatch, c, source);
    return true;
}

void reboot_pump_queue(struct reboot *rb, struct redis *r)
{
    char ids[16][CMD_ID_MAX + 1];
    for (int round = 0; round < 64; round++) {
        int n = policy_release(rb, r, ids, 16);
        if (n <= 0)
            return;
        for (int i = 0; i < n; i++) {
            struct command c;
            struct robot_view v;
            if (store_get(r, ids[i], &c) != 0 || policy_robot(r, c.robot_id, &v) != 0 ||
                !start_dispatch(rb, r, &c, v.source))
                policy_slot_free(r, ids[i]);
        }
    }
}

static int reject(struct reboot *rb, struct redis *r, const struct command *c, const char *from,
                  const char *rule, const char *detail)
{
    struct transition t = {.to = "rejected", .from = from, .rule = rule, .detail = detail};
    int rc = reboot_transition(rb, r, c, &t);
    return rc < 0 ? rc : 0;
}

/* Whether c waits for a time: *fire_ms set (0 = now). 0, or 1 rejected, -EIO. */
static int schedule_time(struct reboot *rb, struct redis *r, struct command *c,
                         const struct robot_view *v, int64_t *fire_ms)
{
    int64_t now = time_now_ms();
    *fire_ms = 0;
    if (c->at_ms > now) {
        *fire_ms = c->at_ms;
        return 0;
    }
    bool want_window = c->window_next || (strcmp(c->origin, "automatic") == 0 &&
                                          strcmp(c->mode, "soft") == 0 && v->window_s > 0);
    if (!want_window)
        return 0;
    int64_t start = 0;
    if (v->window_s == 0 || policy_next_window(v->cron, v->window_s, now, &start) != 0) {
        int rc = reject(rb, r, c, "requested", "maintenance_window",
                        "the robot has no maintenance window");
        return rc < 0 ? rc : 1;
    }
    if (start > now)
        *fire_ms = start;
    return 0;
}

int reboot_decide(struct reboot *rb, struct redis *r, struct command *c, bool fired,
                  const struct robot_view *known)
{
    const char *from = fired ? "scheduled" : "requested";
    struct robot_view v;
    if (known)
        v = *known;
    else if (policy_robot(r, c->robot_id, &v) != 0)
        return -EIO;
    if (!v.found)
        return reject(rb, r, c, from, "unknown_robot", "the robot is not in the registry");
    if (!fired) {
        int64_t fire = 0;
        int rc = schedule_time(rb, r, c, &v, &fire);
        if (rc != 0)
            return rc < 0 ? rc : 0;
        if (fire > 0) {
            char detail[96], iso[TIME_RFC3339_LEN];
            time_format_rfc3339(fire, iso, sizeof(iso));
            snprintf(detail, sizeof(detail), "fires at %s", iso);
            struct transition t = {
                .to = "scheduled", .from = from, .detail = detail, .deadline_ms = fire};
            rc = reboot_transition(rb, r, c, &t);
            return rc < 0 ? rc : 0;
        }
    }
    const char *rule = NULL;
    char detail[256];
    int rc = policy_check(rb, c, &v, &rule, detail, sizeof(detail));
    if (rc == 1)
        return reject(rb, r, c, from, rule, detail);
    /* slot or queue place, queued and (with a slot) dispatched: one script, one round trip */
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    int64_t now = time_now_ms();
    bool admitted = false;
    char prev[16] = "";
    rc = store_enter_fleet(r, c, from, set.fleet_max, now, now + set.ack_timeout_s * 1000,
                           &admitted, prev, sizeof(prev));
    if (rc != 1)
        return rc < 0 ? rc : 0;
    struct log_field f[] = {{"robot.id", c->robot_id}, {"command.id", c->id}};
    log_fields(LOG_LEVEL_INFO, f, 2, "command %s -> queued%s", prev,
               admitted ? " -> dispatched" : ": waiting for a fleet-wide reboot slot");
    reboot_announced(rb, c, "queued");
    if (admitted) {
        reboot_announced(rb, c, "dispatched");
        dispatcher_submit(rb->dispatch, c, v.source);
    }
    return 0;
}

/* ---- context ---- */

struct redis *reboot_redis_new(struct reboot *rb)
{
    const struct cfg *c = service_cfg(rb->svc);
    struct redis_options o = {
        .url = cfg_get_str(c, "redis.url"),
        .connect_timeout_ms = (int)cfg_get_int(c, "redis.connect_timeout_ms"),
        .command_timeout_ms = (int)cfg_get_int(c, "redis.command_timeout_ms"),
    };
    char err[256];
    struct redis *r = redis_new(&o, err, sizeof(err));
    if (!r)
        LOG_ERROR("cannot open a Redis connection: %s", err);
    return r;
}

static double queue_depth_value(void *ud)
{
    struct reboot *rb = ud;
    return (double)policy_queue_depth(rb->redis);
}

struct reboot *reboot_new(struct service *s, char *errbuf, size_t errsize)
{
    struct reboot *rb = xcalloc(1, sizeof(*rb));
    rb->svc = s;
    rb->redis = service_redis(s);
    rb->producer = service_producer(s);
    rb->started_ms = time_now_ms();
    pthread_rwlock_init(&rb->set_lock, NULL);
    load_settings(&rb->set, service_cfg(s));
    char host[64] = "host";
    uint8_t rnd[4] = {0};
    gethostname(host, sizeof(host) - 1);
    crypto_random_bytes(rnd, sizeof(rnd));
    snprintf(rb->instance, sizeof(rb->instance), "%s-%ld-%02x%02x%02x%02x", host, (long)getpid(),
             rnd[0], rnd[1], rnd[2], rnd[3]);
    rb->keyring = keyring_from_env("SECRETS_KEY", errbuf, errsize);
    if (!rb->keyring)
        goto fail;
    rb->sources = source_cache_new(rb->redis, rb->keyring, 2000);

    struct metrics *m = service_metrics(s);
    const char *sl[] = {"state", "origin"};
    rb->m_commands = metrics_counter(m, "reboot_commands_total",
                                     "Command lifecycle transitions by state and origin", 2, sl);
    rb->m_latency =
        metrics_histogram(m, "reboot_dispatch_latency_seconds",
                          "From the decision to dispatch to the vendor's answer", 0, NULL, 0, NULL);
    const char *cl[] = {"code"};
    rb->m_vendor_errors = metrics_counter(
        m, "reboot_vendor_errors_total", "Vendor dispatch failures by HTTP status or error", 1, cl);
    const char *vl[] = {"vendor"};
    rb->m_breaker = metrics_gauge(m, "reboot_breaker_state",
                                  "Vendor circuit breaker: 0 closed, 1 open, 2 half-open", 1, vl);
    metrics_gauge_fn(m, "reboot_queue_depth", "Commands waiting for a fleet slot",
                     queue_depth_value, rb);
    rb->m_active =
        metrics_gauge(m, "reboot_active", "Robots rebooting now (fleet slots in use)", 0, NULL);
    rb->m_lease = metrics_gauge(m, "reboot_lease_holder",
                                "1 when this replica holds the scheduler lease", 0, NULL);
    const char *rl[] = {"reason"};
    rb->m_skipped = metrics_counter(m, "reboot_messages_skipped_total",
                                    "Consumed messages not acted on, by reason", 1, rl);
    service_on_reload(s, on_reload, rb);
    return rb;
fail:
    reboot_free(rb);
    return NULL;
}

int reboot_start(struct reboot *rb, char *errbuf, size_t errsize)
{
    rb->dispatch = dispatcher_new(rb, errbuf, errsize);
    if (!rb->dispatch)
        return -EINVAL;
    rb->leader = leader_new(rb, errbuf, errsize);
    if (!rb->leader)
        return -EINVAL;
    rb->outbox = reboot_outbox_new(rb, errbuf, errsize);
    if (!rb->outbox)
        return -EINVAL;
    rb->lanes = lanes_new(rb, errbuf, errsize);
    if (!rb->lanes)
        return -EINVAL;
    health_add_check(service_health(rb->svc), "lanes", lanes_ready, rb->lanes);
    return 0;
}

void reboot_stop(void *ud)
{
    struct reboot *rb = ud;
    lanes_stop(rb->lanes);
    leader_stop(rb->leader);
    dispatcher_stop(rb->dispatch);
    outbox_stop(rb->outbox); /* after every writer: it relays their last events */
}

void reboot_free(struct reboot *rb)
{
    if (!rb)
        return;
    lanes_free(rb->lanes);
    leader_free(rb->leader);
    dispatcher_free(rb->dispatch);
    outbox_free(rb->outbox);
    source_cache_free(rb->sources);
    keyring_free(rb->keyring);
    pthread_rwlock_destroy(&rb->set_lock);
    free(rb);
}
