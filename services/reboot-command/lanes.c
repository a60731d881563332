/*
 * The consumers. The command lane reads robot.commands.v1 in the group
 * reboot.consumer_group: Kafka gives each partition to one replica and the
 * lane handles its messages one after another, so a robot's commands are
 * decided in order by one replica. A message is acted on only while its
 * command is still "requested" (or "scheduled" for a fire), so a replay after a
 * crash or a rebalance changes nothing. The event lane reads robot.events.v1
 * (group <consumer_group>-events) for command.ack, command.result and
 * robot.booted. Offsets are committed after the Redis transition, and a Redis
 * outage holds the lane (retrying) rather than skipping a message.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cloudevents.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "reboot.h"
#include "redis.h"
#include "service.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "xalloc.h"

#define COMMIT_EVERY_MS 200
#define READY_AFTER_MS  20000
#define WORKER_QUEUE    512
#define PARTITIONS_MAX  1024

struct lane;

/* One worker of a lane: the partitions p with p % nworkers == index, in order. */
struct lane_worker {
    struct lane *ln;
    struct redis *redis;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct kafka_msg *q[WORKER_QUEUE];
    size_t head, count;
    bool busy;
    bool stop;
    int waiters; /* threads waiting for room or for the worker to go idle */
    struct kafka_msg *done[PARTITIONS_MAX]; /* last processed per partition, to commit */
};

struct lane {
    struct lanes *l;
    struct kafka_consumer *consumer;
    pthread_t thread;
    bool started;
    atomic_bool assigned;
    void (*handle)(struct lane *ln, struct redis *r, struct kafka_msg *m);
    struct lane_worker *workers;
    int nworkers;
};

struct lanes {
    struct reboot *rb;
    atomic_bool stop;
    int64_t started_mono;
    struct lane commands;
    struct lane events;
};

static void skipped(struct reboot *rb, const char *why)
{
    const char *v[] = {why};
    metric_series_add(metric_series(rb->m_skipped, v), 1);
}

/* Runs fn until it stops reporting -EIO (Redis unreachable) or the service stops. */
static void retry_io(struct lanes *l, int (*fn)(void *), void *arg)
{
    for (int attempt = 0; fn(arg) == -EIO && !atomic_load(&l->stop); attempt++) {
        if (attempt % 20 == 0)
            LOG_WARN("Redis unreachable; the lane waits and retries");
        time_sleep_ms(250);
    }
}

/* ---- command lane ---- */

struct command_msg {
    struct lane *ln;
    struct redis *r;
    const cJSON *data;
    const char *id;
    const char *robot_id;
    const char *origin;
    int64_t msg_ms;
};

/*
 * A command not in Redis yet: 1 created (c filled; v, when not NULL, read in
 * the same round trip), 2 it existed, 0 skipped, -EIO.
 */
static int create_unseen(struct command_msg *cm, struct command *c, struct robot_view *v)
{
    struct reboot *rb = cm->ln->l->rb;
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    int64_t now = time_now_ms();
    if (strcmp(cm->origin, "scheduled") == 0) {
        skipped(rb, "unknown_command");
        return 0;
    }
    if (cm->msg_ms > 0 && now - cm->msg_ms > set.max_request_age_s * 1000) {
        skipped(rb, "stale");
        return 0;
    }
    const char *mode = json_get_str(cm->data, "mode");
    const char *reason = json_get_str(cm->data, "reason");
    bool force = false;
    json_get_bool(cm->data, "force", &force);
    memset(c, 0, sizeof(*c));
    str_copy(c->id, cm->id, sizeof(c->id));
    str_copy(c->robot_id, cm->robot_id, sizeof(c->robot_id));
    str_copy(c->mode, mode, sizeof(c->mode));
    str_copy(c->reason, reason ? reason : "", sizeof(c->reason));
    bool automatic = strcmp(cm->origin, "automatic") == 0;
    str_copy(c->origin, automatic ? "automatic" : "api", sizeof(c->origin));
    str_copy(c->requested_by, automatic ? "stream-processor" : "unknown", sizeof(c->requested_by));
    c->force = automatic ? false : force;
    c->created_ms = now;
    str_copy(c->state, "requested", sizeof(c->state));
    char existing[CMD_ID_MAX + 1];
    int rc =
        v ? store_create_viewing(cm->r, c, existing, v) : store_create(cm->r, c, NULL, 0, existing);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return 2;
    reboot_announced(rb, c, "requested");
    return 1;
}

static int process_command(void *arg)
{
    struct command_msg *cm = arg;
    struct reboot *rb = cm->ln->l->rb;
    struct redis *r = cm->r;
    struct command c;
    int rc;
    if (strcmp(cm->origin, "automatic") == 0) {
        /* an automatic request is new but on a replay: create first, one round trip less */
        struct robot_view v;
        rc = create_unseen(cm, &c, &v);
        if (rc != 2)
            return rc == 1 ? reboot_decide(rb, r, &c, false, &v) : rc;
    }
    rc = store_get(r, cm->id, &c);
    if (rc == -EIO)
        return rc;
    if (rc == 0) {
        if (strcmp(c.state, "requested") == 0)
            return reboot_decide(rb, r, &c, false, NULL);
        if (strcmp(c.state, "scheduled") == 0 && strcmp(cm->origin, "scheduled") == 0)
            return reboot_decide(rb, r, &c, true, NULL);
        skipped(rb, "already_handled");
        return 0;
    }
    /* a command we have never seen (an API one whose record expired, or a lost race) */
    rc = create_unseen(cm, &c, NULL);
    if (rc == 1)
        return reboot_decide(rb, r, &c, false, NULL);
    if (rc == 2 && store_get(r, cm->id, &c) == 0 && strcmp(c.state, "requested") == 0)
        return reboot_decide(rb, r, &c, false, NULL);
    return rc < 0 ? rc : 0;
}

static bool id_ok(const char *s, size_t max)
{
    return s && s[0] && strlen(s) <= max;
}

static void handle_command(struct lane *ln, struct redis *r, struct kafka_msg *m)
{
    struct reboot *rb = ln->l->rb;
    size_t len = 0;
    const char *value = kafka_msg_value(m, &len);
    struct cloudevent ev;
    cJSON *root = value ? ce_parse(value, len, &ev, NULL, 0) : NULL;
    if (!root || strcmp(ev.type, "robot.reboot.requested") != 0) {
        skipped(rb, root ? "other_type" : "invalid");
        cJSON_Delete(root);
        return;
    }
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    struct command_msg cm = {.ln = ln, .r = r, .data = data, .msg_ms = kafka_msg_timestamp(m)};
    cm.id = json_get_str(data, "command_id") ? json_get_str(data, "command_id") : ev.id;
    cm.robot_id = json_get_str(data, "robot_id") ? json_get_str(data, "robot_id") : ev.subject;
    cm.origin = json_get_str(data, "origin") ? json_get_str(data, "origin") : "automatic";
    const char *mode = json_get_str(data, "mode");
    if (!id_ok(cm.id, CMD_ID_MAX) || !id_ok(cm.robot_id, ROBOT_ID_MAX) || !mode ||
        (strcmp(mode, "soft") != 0 && strcmp(mode, "hard") != 0)) {
        LOG_WARN("ignoring a malformed reboot request at offset %lld",
                 (long long)kafka_msg_offset(m));
        skipped(rb, "invalid");
        cJSON_Delete(root);
        return;
    }
    /*
     * A fresh group reads the topic from its start: an automatic request that
     * old is stale whatever its record says, so skip it without asking Redis.
     */
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    if (strcmp(cm.origin, "automatic") == 0 && cm.msg_ms > 0 &&
        time_now_ms() - cm.msg_ms > set.max_request_age_s * 1000)
        skipped(rb, "stale");
    else
        retry_io(ln->l, process_command, &cm);
    cJSON_Delete(root);
}

/* ---- event lane ---- */

struct event_msg {
    struct lane *ln;
    struct redis *r;
    const char *type;
    const char *robot_id;
    const char *command_id;
    const char *status;
    const char *message;
};

/* The robot's newest command, for a robot.booted without a command id. */
static int latest_command(struct redis *r, const char *robot_id, char *out, size_t n)
{
    char key[ROBOT_ID_MAX + 16];
    snprintf(key, sizeof(key), "cmds:robot:%s", robot_id);
    redisReply *rep = redis_cmd(r, "ZREVRANGE", key, "0", "0", (char *)NULL);
    int rc = -EIO;
    if (rep && rep->type == REDIS_REPLY_ARRAY) {
        rc = rep->elements == 1 ? 0 : -ENOENT;
        if (rc == 0)
            str_copy(out, rep->element[0]->str, n);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static int process_event(void *arg)
{
    struct event_msg *em = arg;
    struct reboot *rb = em->ln->l->rb;
    struct redis *r = em->r;
    char id[CMD_ID_MAX + 1];
    if (em->command_id) {
        str_copy(id, em->command_id, sizeof(id));
    } else if (strcmp(em->type, "robot.booted") == 0) {
        int rc = latest_command(r, em->robot_id, id, sizeof(id));
        if (rc != 0)
            return rc == -ENOENT ? 0 : rc;
    } else {
        skipped(rb, "no_command_id");
        return 0;
    }
    struct command c;
    int rc = store_get(r, id, &c);
    if (rc != 0)
        return rc == -ENOENT ? 0 : rc;
    if (strcmp(c.robot_id, em->robot_id) != 0) {
        skipped(rb, "robot_mismatch");
        return 0;
    }
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    struct transition t = {.actor = "vendor"};
    char detail[REASON_MAX + 32];
    if (strcmp(em->type, "command.ack") == 0) {
        t.to = "acknowledged";
        t.from = "dispatched";
        t.deadline_ms = time_now_ms() + set.completion_timeout_s * 1000;
    } else if (strcmp(em->type, "command.result") == 0) {
        if (!em->status ||
            (strcmp(em->status, "succeeded") != 0 && strcmp(em->status, "failed") != 0)) {
            skipped(rb, "invalid");
            return 0;
        }
        t.to = em->status;
        t.from = "dispatched,acknowledged";
        if (em->message) {
            snprintf(detail, sizeof(detail), "%s", em->message);
            t.detail = detail;
        }
    } else {
        t.to = "succeeded";
        t.from = "dispatched,acknowledged";
        t.detail = "the robot booted";
    }
    rc = reboot_transition(rb, r, &c, &t);
    return rc < 0 ? rc : 0;
}

static void handle_event(struct lane *ln, struct redis *r, struct kafka_msg *m)
{
    struct lanes *l = ln->l;
    struct reboot_settings set;
    reboot_settings_get(l->rb, &set);
    int64_t ts = kafka_msg_timestamp(m);
    /* a fresh group starts at the beginning: old events cannot concern live commands */
    if (ts > 0 && ts < l->rb->started_ms - set.max_request_age_s * 1000)
        return;
    size_t len = 0;
    const char *value = kafka_msg_value(m, &len);
    if (!value || len == 0)
        return;
    /* cheap filter before parsing: most events are heartbeats */
    if (!memmem(value, len, "command.", 8) && !memmem(value, len, "robot.booted", 12))
        return;
    struct cloudevent ev;
    cJSON *root = ce_parse(value, len, &ev, NULL, 0);
    if (!root)
        return;
    if (strcmp(ev.type, "command.ack") != 0 && strcmp(ev.type, "command.result") != 0 &&
        strcmp(ev.type, "robot.booted") != 0) {
        cJSON_Delete(root);
        return;
    }
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(data, "data");
    struct event_msg em = {.ln = ln, .r = r, .type = ev.type};
    em.robot_id = json_get_str(data, "robot_id") ? json_get_str(data, "robot_id") : ev.subject;
    em.command_id = json_get_str(inner, "command_id");
    em.status = json_get_str(inner, "status");
    em.message = json_get_str(inner, "message");
    if (id_ok(em.robot_id, ROBOT_ID_MAX) && (!em.command_id || id_ok(em.command_id, CMD_ID_MAX)))
        retry_io(l, process_event, &em);
    else
        skipped(l->rb, "invalid");
    cJSON_Delete(root);
}

/* ---- threads ---- */

/*
 * The consumer thread polls and hands each message to the worker of its
 * partition; workers keep the last message they finished per partition, and
 * the consumer thread commits those (never a message not yet handled).
 */
static void commit_done(struct lane *ln, bool async)
{
    for (int i = 0; i < ln->nworkers; i++) {
        struct lane_worker *w = &ln->workers[i];
        struct kafka_msg *batch[PARTITIONS_MAX];
        size_t n = 0;
        pthread_mutex_lock(&w->lock);
        for (size_t p = 0; p < PARTITIONS_MAX; p++)
            if (w->done[p]) {
                batch[n++] = w->done[p];
                w->done[p] = NULL;
            }
        pthread_mutex_unlock(&w->lock);
        for (size_t k = 0; k < n; k++) {
            kafka_consumer_commit_msg(ln->consumer, batch[k], async);
            kafka_msg_free(batch[k]);
        }
    }
}

/* Waits until every worker has finished everything handed to it. */
static void drain_workers(struct lane *ln)
{
    for (int i = 0; i < ln->nworkers; i++) {
        struct lane_worker *w = &ln->workers[i];
        pthread_mutex_lock(&w->lock);
        while ((w->count > 0 || w->busy) && w->started) {
            w->waiters++;
            pthread_cond_wait(&w->cond, &w->lock);
            w->waiters--;
        }
        pthread_mutex_unlock(&w->lock);
    }
}

static void on_rebalance(void *ud, bool assigned, bool lost, const struct kafka_partition *parts,
                         size_t nparts)
{
    (void)lost;
    (void)parts;
    (void)nparts;
    struct lane *ln = ud;
    if (assigned) {
        atomic_store(&ln->assigned, true);
        return;
    }
    /* partitions leave: finish their messages and commit before another replica takes them */
    drain_workers(ln);
    commit_done(ln, false);
}

static void *worker_main(void *arg)
{
    struct lane_worker *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->count == 0 && !w->stop)
            pthread_cond_wait(&w->cond, &w->lock);
        if (w->count == 0)
            break;
        struct kafka_msg *m = w->q[w->head];
        w->head = (w->head + 1) % WORKER_QUEUE;
        w->count--;
        w->busy = true;
        if (w->waiters)
            pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);

        w->ln->handle(w->ln, w->redis, m);

        int32_t p = kafka_msg_partition(m);
        pthread_mutex_lock(&w->lock);
        w->busy = false;
        if (p >= 0 && p < PARTITIONS_MAX) {
            kafka_msg_free(w->done[p]);
            w->done[p] = m;
        } else {
            kafka_msg_free(m); /* beyond the table: committed with the next one below it */
        }
        if (w->waiters)
            pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void hand_over(struct lane *ln, struct kafka_msg *m)
{
    int32_t p = kafka_msg_partition(m);
    struct lane_worker *w = &ln->workers[(p < 0 ? 0 : p) % ln->nworkers];
    pthread_mutex_lock(&w->lock);
    while (w->count == WORKER_QUEUE) {
        w->waiters++;
        pthread_cond_wait(&w->cond, &w->lock);
        w->waiters--;
    }
    w->q[(w->head + w->count) % WORKER_QUEUE] = m;
    w->count++;
    /* the worker and the waiters share the condition: wake them all, rarely more than one */
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void *lane_main(void *arg)
{
    struct lane *ln = arg;
    int64_t last_commit = time_mono_ms();
    while (!atomic_load(&ln->l->stop)) {
        struct kafka_msg *m = kafka_consumer_poll(ln->consumer, 100);
        if (m && !kafka_msg_error(m)) {
            hand_over(ln, m);
        } else if (m) {
            if (!kafka_msg_is_eof(m))
                LOG_WARN("consumer error on %s: %s", kafka_msg_topic(m), kafka_msg_errstr(m));
            kafka_msg_free(m);
        }
        if (time_mono_ms() - last_commit >= COMMIT_EVERY_MS) {
            commit_done(ln, true);
            last_commit = time_mono_ms();
        }
    }
    drain_workers(ln);
    commit_done(ln, false);
    return NULL;
}

static void workers_stop(struct lane *ln)
{
    for (int i = 0; i < ln->nworkers; i++) {
        struct lane_worker *w = &ln->workers[i];
        pthread_mutex_lock(&w->lock);
        w->stop = true;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        if (w->started)
            pthread_join(w->thread, NULL);
        w->started = false;
    }
}

static int lane_start(struct lanes *l, struct lane *ln, const char *group, const char *topic,
                      void (*handle)(struct lane *, struct redis *, struct kafka_msg *),
                      char *errbuf, size_t errsize)
{
    struct reboot *rb = l->rb;
    const struct cfg *c = service_cfg(rb->svc);
    const struct kafka_prop *base;
    size_t nbase = service_kafka_props(rb->svc, &base);
    struct kafka_prop props[72];
    size_t n = 0;
    props[n++] = (struct kafka_prop){"fetch.wait.max.ms", "20"};
    /* a killed replica's lanes move to the others after this, not librdkafka's 45 s */
    props[n++] = (struct kafka_prop){"session.timeout.ms", "6000"};
    props[n++] = (struct kafka_prop){"heartbeat.interval.ms", "1000"};
    for (size_t i = 0; i < nbase && n < 72; i++)
        props[n++] = base[i];
    ln->l = l;
    ln->handle = handle;
    ln->nworkers = (int)cfg_get_int(c, "reboot.lanes");
    ln->workers = xcalloc((size_t)ln->nworkers, sizeof(*ln->workers));
    for (int i = 0; i < ln->nworkers; i++) {
        struct lane_worker *w = &ln->workers[i];
        w->ln = ln;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        w->redis = reboot_redis_new(rb);
        if (!w->redis) {
            snprintf(errbuf, errsize, "cannot open a Redis connection for the lanes");
            return -EINVAL;
        }
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            snprintf(errbuf, errsize, "cannot start a %s lane worker", topic);
            return -EINVAL;
        }
        w->started = true;
    }
    ln->consumer = kafka_consumer_new(cfg_get_str(c, "kafka.bootstrap_servers"), group, props, n,
                                      errbuf, errsize);
    if (!ln->consumer)
        return -EINVAL;
    kafka_consumer_on_rebalance(ln->consumer, on_rebalance, ln);
    const char *topics[] = {topic};
    if (kafka_consumer_subscribe(ln->consumer, topics, 1) != 0) {
        snprintf(errbuf, errsize, "cannot subscribe to %s", topic);
        return -EINVAL;
    }
    if (pthread_create(&ln->thread, NULL, lane_main, ln) != 0) {
        snprintf(errbuf, errsize, "cannot start the %s lane", topic);
        return -EINVAL;
    }
    ln->started = true;
    return 0;
}

struct lanes *lanes_new(struct reboot *rb, char *errbuf, size_t errsize)
{
    struct lanes *l = xcalloc(1, sizeof(*l));
    l->rb = rb;
    l->started_mono = time_mono_ms();
    const char *group = cfg_get_str(service_cfg(rb->svc), "reboot.consumer_group");
    char events_group[256];
    snprintf(events_group, sizeof(events_group), "%s-events", group);
    if (lane_start(l, &l->commands, group, TOPIC_ROBOT_COMMANDS, handle_command, errbuf, errsize) !=
            0 ||
        lane_start(l, &l->events, events_group, TOPIC_ROBOT_EVENTS, handle_event, errbuf,
                   errsize) != 0) {
        lanes_stop(l);
        lanes_free(l);
        return NULL;
    }
    return l;
}

bool lanes_ready(void *ud)
{
    struct lanes *l = ud;
    if (time_mono_ms() - l->started_mono > READY_AFTER_MS)
        return true; /* a replica with no partitions is still ready */
    return atomic_load(&l->commands.assigned) && atomic_load(&l->events.assigned);
}

void lanes_stop(struct lanes *l)
{
    if (!l)
        return;
    atomic_store(&l->stop, true);
    struct lane *all[] = {&l->commands, &l->events};
    for (int i = 0; i < 2; i++) {
        if (all[i]->started) {
            pthread_join(all[i]->thread, NULL);
            all[i]->started = false;
        }
        workers_stop(all[i]);
    }
}

void lanes_free(struct lanes *l)
{
    if (!l)
        return;
    struct lane *all[] = {&l->commands, &l->events};
    for (int i = 0; i < 2; i++) {
        struct lane *ln = all[i];
        /* closing revokes the partitions: the rebalance callback still sees the workers */
        kafka_consumer_free(ln->consumer);
        for (int k = 0; k < ln->nworkers; k++) {
            struct lane_worker *w = &ln->workers[k];
            for (size_t n = 0; n < w->count; n++)
                kafka_msg_free(w->q[(w->head + n) % WORKER_QUEUE]);
            for (size_t p = 0; p < PARTITIONS_MAX; p++)
                kafka_msg_free(w->done[p]);
            redis_free(w->redis);
            pthread_mutex_destroy(&w->lock);
            pthread_cond_destroy(&w->cond);
        }
        free(ln->workers);
    }
    free(l);
}
