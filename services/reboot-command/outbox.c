/*
 * The transactional outbox of robot.command-status.v1. Every Lua script that
 * changes a command's state (store.c) also appends the transition's status
 * event to the Redis stream reboot:outbox, so a stored transition always has
 * its event stored too. This relay produces the entries in stream order (the
 * shared idempotent acks=all producer) and deletes an entry only after Kafka
 * acknowledged it and every entry before it: a kill -9 or a Kafka outage
 * delays a status event, never loses it (at-least-once; the event id
 * "{command id}.{history index}" lets readers drop a repeat).
 *
 * Several replicas: one relays at a time, the holder of reboot:outbox:lease
 * (SET NX PX reboot.lease_ttl_ms, renewed while it works, deleted on stop).
 * The same design as robot-registry's outbox (services/robot-registry/outbox.c);
 * that one also answers HTTP requests once their entry is out, which this
 * service does not need, so each service keeps its own small relay.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cloudevents.h"
#include "crypto.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "reboot.h"
#include "redis.h"
#include "service.h"
#include "timeutil.h"
#include "topics.h"
#include "trace.h"
#include "xalloc.h"

#define OUTBOX_KEY    "reboot:outbox"
#define LEASE_KEY     "reboot:outbox:lease"
#define BATCH         512
#define POLL_MS       100
#define BACKOFF_MS    500
#define STOP_FLUSH_MS 3000
#define EVENT_MAX     (64 * 1024)

static const char RENEW_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                "end\n"
                                "return 0\n";
static const char RELEASE_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                  "  return redis.call('DEL', KEYS[1])\n"
                                  "end\n"
                                  "return 0\n";

/* One relayed batch; shared with the delivery callbacks, freed by the last holder. */
struct batch {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    size_t remaining;
    int *err; /* per entry: 1 pending, 0 acknowledged, else failed */
};

struct slot {
    struct delivery d; /* first: the producer's opaque */
    struct batch *b;
    size_t idx;
};

struct outbox {
    struct reboot *rb;
    struct redis *r;
    char token[CRYPTO_UUID_LEN];
    bool holder;
    int64_t renewed_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop, kicked, started;
    pthread_t thread;
    struct metric *m_relayed;
    struct metric *m_pending;
};

/* ---- lease ---- */

static int64_t lease_ms(struct outbox *ob)
{
    struct reboot_settings set;
    reboot_settings_get(ob->rb, &set);
    return set.lease_ttl_ms;
}

static bool lease_hold(struct outbox *ob)
{
    int64_t ttl = lease_ms(ob), now = time_mono_ms();
    char ms[24];
    snprintf(ms, sizeof(ms), "%lld", (long long)ttl);
    if (ob->holder && now - ob->renewed_ms < ttl / 3)
        return true;
    redisReply *rep;
    if (ob->holder) {
        const char *argv[] = {"EVAL", RENEW_LUA, "1", LEASE_KEY, ob->token, ms};
        rep = redis_command(ob->r, 6, argv, NULL);
        ob->holder = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
        if (!ob->holder)
            LOG_WARN("lost the status outbox lease; another replica relays now");
    } else {
        rep = redis_cmd(ob->r, "SET", LEASE_KEY, ob->token, "NX", "PX", ms, (char *)NULL);
        ob->holder = rep && rep->type == REDIS_REPLY_STATUS;
        if (ob->holder)
            LOG_INFO("status outbox lease taken; relaying status events to kafka");
    }
    if (rep)
        freeReplyObject(rep);
    if (ob->holder)
        ob->renewed_ms = now;
    return ob->holder;
}

static void lease_release(struct outbox *ob)
{
    if (!ob->holder)
        return;
    const char *argv[] = {"EVAL", RELEASE_LUA, "1", LEASE_KEY, ob->token};
    redisReply *rep = redis_command(ob->r, 5, argv, NULL);
    if (rep)
        freeReplyObject(rep);
    ob->holder = false;
}

/* ---- relaying ---- */

static void batch_unref(struct batch *b)
{
    pthread_mutex_lock(&b->lock);
    int left = --b->refs;
    pthread_mutex_unlock(&b->lock);
    if (left)
        return;
    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->lock);
    free(b->err);
    free(b);
}

static void slot_done(struct delivery *d, int err)
{
    struct slot *s = (struct slot *)d;
    struct batch *b = s->b;
    if (err)
        LOG_WARN("kafka did not acknowledge a status event (%d); the outbox keeps it", err);
    pthread_mutex_lock(&b->lock);
    b->err[s->idx] = err;
    if (--b->remaining == 0)
        pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    free(s);
    batch_unref(b);
}

static const redisReply *field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            return fields->element[i + 1];
    return NULL;
}

/*
 * Builds the CloudEvent of an entry (fields key, id, time, data) and queues
 * it. 1 queued, 0 unusable (skipped, counts as done), -1 not queued.
 */
static int send_entry(struct outbox *ob, const redisReply *fields, struct batch *b, size_t i)
{
    const redisReply *key = field(fields, "key"), *id = field(fields, "id");
    const redisReply *t = field(fields, "time"), *data = field(fields, "data");
    cJSON *doc = data ? json_parse(data->str, data->len, NULL, 0) : NULL;
    if (!key || !id || !t || !doc) {
        LOG_ERROR("status outbox entry without key, id, time or data; skipped");
        cJSON_Delete(doc);
        return 0;
    }
    char tp[TRACE_PARENT_LEN];
    trace_parent_new(tp);
    struct cloudevent ce = {.id = id->str,
                            .source = "/reboot-command",
                            .type = "command.status",
                            .subject = key->str,
                            .time = t->str,
                            .data = doc};
    struct kafka_header h = {"traceparent", tp, strlen(tp)};
    struct buf out;
    buf_init(&out, EVENT_MAX);
    int rc = ce_build(&ce, &out);
    cJSON_Delete(doc);
    if (rc != 0) {
        buf_release(&out);
        LOG_ERROR("status outbox entry '%s' cannot be built; skipped", id->str);
        return 0;
    }
    struct slot *s = xcalloc(1, sizeof(*s));
    s->d.done = slot_done;
    s->b = b;
    s->idx = i;
    pthread_mutex_lock(&b->lock);
    b->refs++;
    b->remaining++;
    pthread_mutex_unlock(&b->lock);
    rc = kafka_producer_send(ob->rb->producer, TOPIC_ROBOT_COMMAND_STATUS, -1, key->str, key->len,
                             out.data, out.len, &h, 1, &s->d);
    buf_release(&out);
    if (rc == 0)
        return 1;
    LOG_WARN("cannot queue a status event for kafka (%d); retrying later", rc);
    pthread_mutex_lock(&b->lock);
    b->refs--;
    b->remaining--;
    pthread_mutex_unlock(&b->lock);
    free(s);
    return -1;
}

static bool stopping(struct outbox *ob)
{
    pthread_mutex_lock(&ob->lock);
    bool stop = ob->stop;
    pthread_mutex_unlock(&ob->lock);
    return stop;
}

/* Waits for the batch's acknowledgements, renewing the lease; false when it gave up. */
static bool await_batch(struct outbox *ob, struct batch *b)
{
    int64_t stop_deadline = 0;
    for (;;) {
        pthread_mutex_lock(&b->lock);
        if (b->remaining > 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&b->cond, &b->lock, &ts);
        }
        bool finished = b->remaining == 0;
        pthread_mutex_unlock(&b->lock);
        if (finished)
            return true;
        if (stopping(ob)) {
            if (!stop_deadline)
                stop_deadline = time_mono_ms() + STOP_FLUSH_MS;
            else if (time_mono_ms() > stop_deadline)
                return false;
        }
        lease_hold(ob);
    }
}

/* Relays up to BATCH of the oldest entries; returns how many were deleted, or -1. */
static int relay_batch(struct outbox *ob)
{
    char count[16];
    snprintf(count, sizeof(count), "%d", BATCH);
    redisReply *rep =
        redis_cmd(ob->r, "XRANGE", OUTBOX_KEY, "-", "+", "COUNT", count, (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return -1;
    }
    size_t n = rep->elements;
    if (n == 0) {
        freeReplyObject(rep);
        return 0;
    }
    struct batch *b = xcalloc(1, sizeof(*b));
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    b->refs = 1;
    b->err = xcalloc(n, sizeof(*b->err));
    size_t tried = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
            break;
        b->err[i] = 1;
        int rc = send_entry(ob, e->element[1], b, i);
        if (rc < 0)
            break;
        if (rc == 0)
            b->err[i] = 0;
        tried = i + 1;
    }
    int deleted = -1;
    if (await_batch(ob, b)) {
        /* only an acknowledged prefix goes: a later entry never overtakes a failed one */
        size_t acked = 0;
        while (acked < tried && b->err[acked] == 0)
            acked++;
        deleted = 0;
        if (acked > 0) {
            const char **argv = xcalloc(acked + 2, sizeof(*argv));
            argv[0] = "XDEL";
            argv[1] = OUTBOX_KEY;
            for (size_t i = 0; i < acked; i++)
                argv[i + 2] = rep->element[i]->element[0]->str;
            redisReply *d = redis_command(ob->r, (int)acked + 2, argv, NULL);
            free(argv);
            if (d && d->type == REDIS_REPLY_INTEGER) {
                metric_series_add(metric_series(ob->m_relayed, NULL), (double)acked);
                deleted = (int)acked;
            } else {
                deleted = -1;
            }
            if (d)
                freeReplyObject(d);
        }
        if (acked < n)
            deleted = -1;
    }
    batch_unref(b);
    freeReplyObject(rep);
    return deleted;
}

static void update_pending_gauge(struct outbox *ob)
{
    redisReply *rep = redis_cmd(ob->r, "XLEN", OUTBOX_KEY, (char *)NULL);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        metric_series_set(metric_series(ob->m_pending, NULL), (double)rep->integer);
    if (rep)
        freeReplyObject(rep);
}

/* Sleeps up to ms unless a local transition or stop wakes it; true when stopping. */
static bool nap(struct outbox *ob, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&ob->lock);
    if (!ob->kicked && !ob->stop)
        pthread_cond_timedwait(&ob->cond, &ob->lock, &ts);
    ob->kicked = false;
    bool stop = ob->stop;
    pthread_mutex_unlock(&ob->lock);
    return stop;
}

static void *relay_main(void *arg)
{
    struct outbox *ob = arg;
    int64_t last_gauge = 0;
    for (;;) {
        int moved = 0;
        if (lease_hold(ob))
            moved = relay_batch(ob);
        if (time_mono_ms() - last_gauge >= 1000) {
            update_pending_gauge(ob);
            last_gauge = time_mono_ms();
        }
        if (moved == BATCH)
            continue; /* more waiting */
        if (stopping(ob))
            break;
        if (nap(ob, moved < 0 ? BACKOFF_MS : POLL_MS))
            break;
    }
    /* the lanes and workers have stopped: relay what they wrote last, briefly */
    int64_t deadline = time_mono_ms() + STOP_FLUSH_MS;
    while (ob->holder && time_mono_ms() < deadline && relay_batch(ob) > 0)
        ;
    lease_release(ob);
    return NULL;
}

/* ---- lifecycle ---- */

void outbox_kick(struct outbox *ob)
{
    if (!ob)
        return;
    pthread_mutex_lock(&ob->lock);
    if (!ob->kicked) {
        ob->kicked = true;
        pthread_cond_signal(&ob->cond);
    }
    pthread_mutex_unlock(&ob->lock);
}

struct outbox *outbox_new(struct reboot *rb, char *errbuf, size_t errsize)
{
    struct outbox *ob = xcalloc(1, sizeof(*ob));
    ob->rb = rb;
    pthread_mutex_init(&ob->lock, NULL);
    pthread_cond_init(&ob->cond, NULL);
    crypto_uuid_v7(ob->token);
    struct metrics *m = service_metrics(rb->svc);
    ob->m_relayed = metrics_counter(m, "reboot_outbox_relayed_total",
                                    "Status events acknowledged by Kafka and removed", 0, NULL);
    ob->m_pending = metrics_gauge(m, "reboot_outbox_pending",
                                  "Status events not yet acknowledged by Kafka", 0, NULL);
    ob->r = reboot_redis_new(rb);
    if (!ob->r) {
        snprintf(errbuf, errsize, "cannot open a Redis connection for the status outbox");
        goto fail;
    }
    if (pthread_create(&ob->thread, NULL, relay_main, ob) != 0) {
        snprintf(errbuf, errsize, "cannot start the status outbox relay");
        goto fail;
    }
    ob->started = true;
    return ob;
fail:
    outbox_free(ob);
    return NULL;
}

void outbox_stop(struct outbox *ob)
{
    if (!ob || !ob->started)
        return;
    pthread_mutex_lock(&ob->lock);
    ob->stop = true;
    pthread_cond_signal(&ob->cond);
    pthread_mutex_unlock(&ob->lock);
    pthread_join(ob->thread, NULL);
    ob->started = false;
}

void outbox_free(struct outbox *ob)
{
    if (!ob)
        return;
    outbox_stop(ob);
    redis_free(ob->r);
    pthread_cond_destroy(&ob->cond);
    pthread_mutex_destroy(&ob->lock);
    free(ob);
}
