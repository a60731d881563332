/*
 * The transactional outbox of robot.registry.v1. Every write script appends
 * its change events to the Redis stream registry:outbox in the same script
 * that changes the record, so a stored change always has its event stored
 * too. A relay thread produces the entries in stream order (idempotent
 * producer, acks=all) and deletes each one only after Kafka acknowledged it
 * and every entry before it: a Kafka outage or a kill -9 delays an event,
 * never loses it (at-least-once; records carry their version).
 *
 * Several replicas: one relay produces at a time, the holder of the lease
 * registry:outbox:lease (SET NX PX, renewed while it works, released on
 * stop). The others only watch the stream for the entries their own requests
 * wait on: an entry is announced once it is gone from the stream.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "http_server.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "registry.h"
#include "service.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "trace.h"
#include "xalloc.h"

#define LEASE_KEY    REGISTRY_OUTBOX_KEY ":lease"
#define BACKOFF_MS   1000
#define ENTRY_ID_MAX 48

static const char RENEW_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                "end\n"
                                "return 0\n";
static const char RELEASE_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                  "  return redis.call('DEL', KEYS[1])\n"
                                  "end\n"
                                  "return 0\n";

/* A stream entry id "ms-seq", comparable. */
struct entry_id {
    uint64_t ms, seq;
};

static bool entry_id_parse(const char *s, struct entry_id *out)
{
    char *end;
    if (!s || !*s)
        return false;
    out->ms = strtoull(s, &end, 10);
    if (*end != '-')
        return false;
    out->seq = strtoull(end + 1, &end, 10);
    return *end == '\0';
}

static bool entry_id_before(const struct entry_id *a, const struct entry_id *b)
{
    return a->ms < b->ms || (a->ms == b->ms && a->seq < b->seq);
}

struct waiter {
    struct waiter *next;
    struct entry_id id;
    int64_t deadline_ms;
    bool announced;
    registry_announced_fn done;
    void *ud;
};

/* One relayed batch; shared with the delivery callbacks, freed by the last holder. */
struct batch {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    size_t n, remaining;
    int *err; /* per entry: 1 pending, 0 acknowledged, <0 failed */
};

struct slot {
    struct batch *b;
    size_t idx;
};

struct outbox {
    struct service *svc;
    struct kafka_producer *producer;
    struct registry_outbox_settings set;
    struct redis_options ropts;
    struct redis *r;
    char token[CRYPTO_UUID_LEN];
    bool holder;
    int64_t renewed_ms;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop, kicked, started;
    struct waiter *waiters;
    pthread_t thread;

    struct metric *m_relayed;
    struct metric *m_pending;
};

/* ---- the write side ---- */

size_t registry_outbox_args(const struct registry_msg *msgs, size_t n, const char *traceparent,
                            const char **argv, size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 3 <= max; i++) {
        argv[k++] = msgs[i].key;
        argv[k++] = msgs[i].value ? msgs[i].value : "";
        argv[k++] = traceparent;
    }
    return k;
}

/* ---- waiting for an announcement ---- */

void registry_outbox_wait(struct outbox *ob, const char *entry_id, registry_announced_fn done,
                          void *ud)
{
    struct waiter *w = xcalloc(1, sizeof(*w));
    if (!entry_id_parse(entry_id, &w->id)) {
        free(w);
        done(ud, false);
        return;
    }
    w->deadline_ms = time_mono_ms() + ob->set.wait_ms;
    w->done = done;
    w->ud = ud;
    pthread_mutex_lock(&ob->lock);
    if (ob->stop) {
        pthread_mutex_unlock(&ob->lock);
        free(w);
        done(ud, false);
        return;
    }
    w->next = ob->waiters;
    ob->waiters = w;
    ob->kicked = true;
    pthread_cond_signal(&ob->cond);
    pthread_mutex_unlock(&ob->lock);
}

struct sync_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool finished, announced;
};

static void sync_done(void *ud, bool announced)
{
    struct sync_wait *w = ud;
    pthread_mutex_lock(&w->lock);
    w->finished = true;
    w->announced = announced;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int registry_outbox_wait_sync(struct outbox *ob, const char *entry_id)
{
    struct sync_wait w = {.finished = false};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    registry_outbox_wait(ob, entry_id, sync_done, &w);
    pthread_mutex_lock(&w.lock);
    while (!w.finished)
        pthread_cond_wait(&w.cond, &w.lock);
    bool ok = w.announced;
    pthread_mutex_unlock(&w.lock);
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    return ok ? 0 : -EPIPE;
}

/*
 * Completes the waiters whose entry is gone from the stream (first = the
 * oldest entry left, NULL when empty) and those past their deadline.
 */
static void resolve_waiters(struct outbox *ob, const struct entry_id *first, bool stopping)
{
    int64_t now = time_mono_ms();
    struct waiter *done = NULL;
    pthread_mutex_lock(&ob->lock);
    for (struct waiter **pp = &ob->waiters; *pp;) {
        struct waiter *w = *pp;
        bool announced = first ? entry_id_before(&w->id, first) : true;
        if (announced || stopping || now >= w->deadline_ms) {
            *pp = w->next;
            w->announced = announced;
            w->next = done;
            done = w;
        } else {
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&ob->lock);
    while (done) {
        struct waiter *next = done->next;
        done->done(done->ud, done->announced);
        free(done);
        done = next;
    }
}

static bool have_waiters(struct outbox *ob)
{
    pthread_mutex_lock(&ob->lock);
    bool any = ob->waiters != NULL;
    pthread_mutex_unlock(&ob->lock);
    return any;
}

/* The oldest entry's id into *first: 1 found, 0 stream empty, -EIO. */
static int oldest_entry(struct outbox *ob, struct entry_id *first)
{
    redisReply *rep =
        redis_cmd(ob->r, "XRANGE", REGISTRY_OUTBOX_KEY, "-", "+", "COUNT", "1", (char *)NULL);
    int rc = -EIO;
    if (rep && rep->type == REDIS_REPLY_ARRAY) {
        rc = 0;
        if (rep->elements == 1 && rep->element[0]->type == REDIS_REPLY_ARRAY &&
            rep->element[0]->elements == 2 &&
            rep->element[0]->element[0]->type == REDIS_REPLY_STRING &&
            entry_id_parse(rep->element[0]->element[0]->str, first))
            rc = 1;
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

/* Answers the waiters whose entry was announced (or whose time is up). */
static void check_waiters(struct outbox *ob)
{
    if (!have_waiters(ob))
        return;
    struct entry_id first;
    int rc = oldest_entry(ob, &first);
    if (rc >= 0)
        resolve_waiters(ob, rc == 1 ? &first : NULL, false);
    else
        resolve_waiters(ob, &(struct entry_id){0, 0}, false); /* only deadlines */
}

/* ---- the lease ---- */

static bool lease_hold(struct outbox *ob)
{
    char ms[24];
    int64_t now = time_mono_ms();
    snprintf(ms, sizeof(ms), "%lld", (long long)ob->set.lease_ms);
    if (ob->holder && now - ob->renewed_ms < ob->set.lease_ms / 3)
        return true;
    redisReply *rep;
    if (ob->holder) {
        const char *argv[] = {"EVAL", RENEW_LUA, "1", LEASE_KEY, ob->token, ms};
        rep = redis_command(ob->r, 6, argv, NULL);
        ob->holder = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
        if (!ob->holder)
            LOG_WARN("lost the outbox relay lease; another replica relays now");
    } else {
        rep = redis_cmd(ob->r, "SET", LEASE_KEY, ob->token, "NX", "PX", ms, (char *)NULL);
        ob->holder = rep && rep->type == REDIS_REPLY_STATUS;
        if (ob->holder)
            LOG_INFO("outbox relay lease taken; relaying registry changes to kafka");
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

void registry_on_delivery(void *opaque, int err, const char *errstr, int32_t partition,
                          int64_t offset)
{
    (void)partition;
    (void)offset;
    struct slot *s = opaque;
    if (!s)
        return;
    if (err)
        LOG_WARN("kafka did not acknowledge a registry change: %s (the outbox keeps it)",
                 errstr ? errstr : "?");
    struct batch *b = s->b;
    pthread_mutex_lock(&b->lock);
    b->err[s->idx] = err ? err : 0;
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

/* Queues entry i of rep to Kafka; false when it could not be queued. */
static bool send_entry(struct outbox *ob, const redisReply *entry, struct batch *b, size_t i)
{
    const redisReply *f = entry->element[1];
    const redisReply *key = field(f, "key"), *value = field(f, "value");
    const redisReply *tp = field(f, "traceparent");
    if (!key) {
        /* Not ours to announce; dropping it keeps the relay moving. */
        LOG_ERROR("outbox entry '%s' has no key; skipped", entry->element[0]->str);
        pthread_mutex_lock(&b->lock);
        b->err[i] = 0;
        b->remaining--;
        pthread_mutex_unlock(&b->lock);
        return true;
    }
    struct kafka_header h = {"traceparent", tp ? tp->str : "", tp ? tp->len : 0};
    struct slot *s = xcalloc(1, sizeof(*s));
    s->b = b;
    s->idx = i;
    pthread_mutex_lock(&b->lock);
    b->refs++;
    pthread_mutex_unlock(&b->lock);
    int rc =
        kafka_producer_send(ob->producer, TOPIC_ROBOT_REGISTRY, -1, key->str, key->len,
                            value ? value->str : NULL, value ? value->len : 0, &h, tp ? 1 : 0, s);
    if (rc == 0)
        return true;
    LOG_WARN("cannot queue outbox entry for kafka (key '%s'); retrying later", key->str);
    free(s);
    pthread_mutex_lock(&b->lock);
    b->refs--;
    pthread_mutex_unlock(&b->lock);
    return false;
}

/* Waits for the batch's acknowledgements, renewing the lease. false when stopping. */
static bool await_batch(struct outbox *ob, struct batch *b)
{
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
        pthread_mutex_lock(&ob->lock);
        bool stop = ob->stop;
        pthread_mutex_unlock(&ob->lock);
        if (stop)
            return false;
        lease_hold(ob);
        check_waiters(ob); /* Kafka may take long: answer the requests' deadlines meanwhile */
    }
}

/*
 * Produces up to a batch of the oldest entries and deletes the acknowledged
 * prefix. Entries after a failed one stay, so they are produced again after it
 * and a key's last message stays its newest. Returns entries deleted, or -1.
 */
static int relay_batch(struct outbox *ob)
{
    char count[24];
    snprintf(count, sizeof(count), "%lld", (long long)ob->set.batch);
    redisReply *rep =
        redis_cmd(ob->r, "XRANGE", REGISTRY_OUTBOX_KEY, "-", "+", "COUNT", count, (char *)NULL);
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
    b->n = n;
    b->err = xcalloc(n, sizeof(*b->err));
    size_t queued = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
            break;
        b->err[i] = 1;
        pthread_mutex_lock(&b->lock);
        b->remaining++;
        pthread_mutex_unlock(&b->lock);
        if (!send_entry(ob, e, b, i)) {
            pthread_mutex_lock(&b->lock);
            b->remaining--;
            b->err[i] = -1;
            pthread_mutex_unlock(&b->lock);
            break;
        }
        queued = i + 1;
    }
    int deleted = -1;
    if (await_batch(ob, b)) {
        size_t acked = 0;
        while (acked < queued && b->err[acked] == 0)
            acked++;
        if (acked > 0) {
            const char **argv = xcalloc(acked + 2, sizeof(*argv));
            argv[0] = "XDEL";
            argv[1] = REGISTRY_OUTBOX_KEY;
            for (size_t i = 0; i < acked; i++)
                argv[i + 2] = rep->element[i]->element[0]->str;
            redisReply *d = redis_command(ob->r, (int)acked + 2, argv, NULL);
            free(argv);
            if (d && d->type == REDIS_REPLY_INTEGER) {
                metric_series_add(metric_series(ob->m_relayed, NULL), (double)acked);
                deleted = (int)acked;
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
    redisReply *rep = redis_cmd(ob->r, "XLEN", REGISTRY_OUTBOX_KEY, (char *)NULL);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        metric_series_set(metric_series(ob->m_pending, NULL), (double)rep->integer);
    if (rep)
        freeReplyObject(rep);
}

/* Sleeps up to ms unless a local write or stop wakes it; true when stopping. */
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
        check_waiters(ob);
        if (time_mono_ms() - last_gauge >= 1000) {
            update_pending_gauge(ob);
            last_gauge = time_mono_ms();
        }
        pthread_mutex_lock(&ob->lock);
        bool stop = ob->stop;
        pthread_mutex_unlock(&ob->lock);
        if (stop)
            break;
        if (moved > 0 && moved == (int)ob->set.batch)
            continue; /* more waiting */
        if (nap(ob, moved < 0 ? BACKOFF_MS : ob->set.poll_ms))
            break;
    }
    resolve_waiters(ob, NULL, true);
    lease_release(ob);
    return NULL;
}

/* ---- lifecycle ---- */

struct outbox *registry_outbox_new(struct service *svc, const struct redis_options *ropts,
                                   const struct registry_outbox_settings *set, char *errbuf,
                                   size_t errsize)
{
    struct outbox *ob = xcalloc(1, sizeof(*ob));
    ob->svc = svc;
    ob->producer = service_producer(svc);
    ob->set = *set;
    ob->ropts = *ropts;
    pthread_mutex_init(&ob->lock, NULL);
    pthread_cond_init(&ob->cond, NULL);
    crypto_uuid_v7(ob->token);
    ob->r = redis_new(&ob->ropts, errbuf, errsize);
    if (!ob->r)
        goto out_free;
    struct metrics *m = service_metrics(svc);
    ob->m_relayed = metrics_counter(m, "registry_outbox_relayed_total",
                                    "Outbox entries acknowledged by Kafka and removed", 0, NULL);
    ob->m_pending = metrics_gauge(m, "registry_outbox_pending",
                                  "Outbox entries not yet acknowledged by Kafka", 0, NULL);
    if (pthread_create(&ob->thread, NULL, relay_main, ob) != 0) {
        snprintf(errbuf, errsize, "cannot start the outbox relay thread");
        goto out_free;
    }
    ob->started = true;
    return ob;
out_free:
    registry_outbox_free(ob);
    return NULL;
}

void registry_outbox_stop(struct outbox *ob)
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

void registry_outbox_free(struct outbox *ob)
{
    if (!ob)
        return;
    registry_outbox_stop(ob);
    redis_free(ob->r);
    pthread_cond_destroy(&ob->cond);
    pthread_mutex_destroy(&ob->lock);
    free(ob);
}
