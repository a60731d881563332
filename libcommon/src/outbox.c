/*
 * The relay of a Redis transactional outbox (outbox.h): the lease, the
 * in-order produce of a batch, and the deletion of its acknowledged prefix.
 */
#include "outbox.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "timeutil.h"
#include "xalloc.h"

#define LEASE_SUFFIX ":lease"
#define VALUE_MAX    (1024 * 1024)

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
    struct outbox_delivery d; /* first: the producer's opaque */
    struct batch *b;
    size_t idx;
};

struct outbox {
    struct outbox_config cfg;
    char *lease_key;
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

void outbox_on_delivery(void *opaque, int err, const char *errstr, int32_t partition,
                        int64_t offset)
{
    (void)partition;
    (void)offset;
    struct outbox_delivery *d = opaque;
    if (d) {
        d->done(d, err);
        return;
    }
    if (err)
        LOG_WARN("message not delivered: %s", errstr ? errstr : "unknown error");
}

/* ---- lease ---- */

static int64_t lease_ms(const struct outbox *ob)
{
    return ob->cfg.lease_fn ? ob->cfg.lease_fn(ob->cfg.ud) : ob->cfg.lease_ms;
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
        const char *argv[] = {"EVAL", RENEW_LUA, "1", ob->lease_key, ob->token, ms};
        rep = redis_command(ob->r, 6, argv, NULL);
        ob->holder = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
        if (!ob->holder)
            LOG_WARN("lost the %s lease; another replica relays now", ob->cfg.name);
    } else {
        rep = redis_cmd(ob->r, "SET", ob->lease_key, ob->token, "NX", "PX", ms, (char *)NULL);
        ob->holder = rep && rep->type == REDIS_REPLY_STATUS;
        if (ob->holder)
            LOG_INFO("%s lease taken; relaying to kafka", ob->cfg.name);
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
    const char *argv[] = {"EVAL", RELEASE_LUA, "1", ob->lease_key, ob->token};
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

static void slot_done(struct outbox_delivery *d, int err)
{
    struct slot *s = (struct slot *)d;
    struct batch *b = s->b;
    if (err)
        LOG_WARN("kafka did not acknowledge an outbox entry (%d); the outbox keeps it", err);
    pthread_mutex_lock(&b->lock);
    b->err[s->idx] = err;
    if (--b->remaining == 0)
        pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    free(s);
    batch_unref(b);
}

const redisReply *outbox_field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            return fields->element[i + 1];
    return NULL;
}

/* Maps entry i and queues it: 1 queued, 0 unusable (skipped, counts as done), -1 not queued. */
static int send_entry(struct outbox *ob, const redisReply *entry, struct batch *b, size_t i)
{
    const char *id = entry->element[0]->str;
    struct outbox_msg m;
    memset(&m, 0, sizeof(m));
    buf_init(&m.scratch, VALUE_MAX);
    if (!ob->cfg.map(ob->cfg.ud, id, entry->element[1], &m) || !m.topic || !m.key ||
        m.nheaders > OUTBOX_HEADERS_MAX) {
        buf_release(&m.scratch);
        LOG_ERROR("%s entry '%s' cannot be relayed; skipped", ob->cfg.name, id);
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
    int rc = kafka_producer_send(ob->cfg.producer, m.topic, -1, m.key, m.key_len, m.value,
                                 m.value ? m.value_len : 0, m.headers, m.nheaders, &s->d);
    buf_release(&m.scratch);
    if (rc == 0)
        return 1;
    LOG_WARN("cannot queue a %s entry for kafka (%d); retrying later", ob->cfg.name, rc);
    pthread_mutex_lock(&b->lock);
    b->refs--;
    b->remaining--;
    pthread_mutex_unlock(&b->lock);
    free(s);
    return -1;
}

bool outbox_stopping(struct outbox *ob)
{
    pthread_mutex_lock(&ob->lock);
    bool stop = ob->stop;
    pthread_mutex_unlock(&ob->lock);
    return stop;
}

static void tick(struct outbox *ob, bool stopping)
{
    if (ob->cfg.on_tick)
        ob->cfg.on_tick(ob->cfg.ud, ob->r, stopping);
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
        if (outbox_stopping(ob)) {
            if (ob->cfg.stop_flush_ms <= 0)
                return false;
            if (!stop_deadline)
                stop_deadline = time_mono_ms() + ob->cfg.stop_flush_ms;
            else if (time_mono_ms() > stop_deadline)
                return false;
        }
        lease_hold(ob);
        tick(ob, false); /* Kafka may take long: the service's deadlines go on meanwhile */
    }
}

/* Deletes the first n entries of rep; false on a Redis failure. */
static bool delete_prefix(struct outbox *ob, const redisReply *rep, size_t n)
{
    const char **argv = xcalloc(n + 2, sizeof(*argv));
    argv[0] = "XDEL";
    argv[1] = ob->cfg.stream;
    for (size_t i = 0; i < n; i++)
        argv[i + 2] = rep->element[i]->element[0]->str;
    redisReply *d = redis_command(ob->r, (int)n + 2, argv, NULL);
    free(argv);
    bool ok = d && d->type == REDIS_REPLY_INTEGER;
    if (ok)
        metric_series_add(metric_series(ob->m_relayed, NULL), (double)n);
    if (d)
        freeReplyObject(d);
    return ok;
}

/*
 * Relays up to a batch of the oldest entries and deletes the acknowledged
 * prefix: a later entry never overtakes a failed one, it is produced again
 * after it. Returns how many were deleted, or -1.
 */
static int relay_batch(struct outbox *ob)
{
    char count[24];
    snprintf(count, sizeof(count), "%zu", ob->cfg.batch);
    redisReply *rep =
        redis_cmd(ob->r, "XRANGE", ob->cfg.stream, "-", "+", "COUNT", count, (char *)NULL);
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
        int rc = send_entry(ob, e, b, i);
        if (rc < 0)
            break;
        if (rc == 0)
            b->err[i] = 0;
        tried = i + 1;
    }
    int deleted = -1;
    if (await_batch(ob, b)) {
        size_t acked = 0;
        while (acked < tried && b->err[acked] == 0)
            acked++;
        deleted = 0;
        if (acked > 0)
            deleted = delete_prefix(ob, rep, acked) ? (int)acked : -1;
        if (acked < n)
            deleted = -1;
    }
    batch_unref(b);
    freeReplyObject(rep);
    return deleted;
}

static void update_pending_gauge(struct outbox *ob)
{
    redisReply *rep = redis_cmd(ob->r, "XLEN", ob->cfg.stream, (char *)NULL);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        metric_series_set(metric_series(ob->m_pending, NULL), (double)rep->integer);
    if (rep)
        freeReplyObject(rep);
}

/* Sleeps up to ms unless a kick or stop wakes it; true when stopping. */
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
        tick(ob, false);
        if (time_mono_ms() - last_gauge >= 1000) {
            update_pending_gauge(ob);
            last_gauge = time_mono_ms();
        }
        if (outbox_stopping(ob))
            break;
        if (moved > 0 && (size_t)moved == ob->cfg.batch)
            continue; /* more waiting */
        if (nap(ob, moved < 0 ? ob->cfg.backoff_ms : ob->cfg.poll_ms))
            break;
    }
    /* the writers have stopped: relay what they wrote last, briefly */
    if (ob->cfg.stop_flush_ms > 0) {
        int64_t deadline = time_mono_ms() + ob->cfg.stop_flush_ms;
        while (ob->holder && time_mono_ms() < deadline && relay_batch(ob) > 0)
            ;
    }
    tick(ob, true);
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

struct outbox *outbox_new(const struct outbox_config *cfg, struct redis *r, char *errbuf,
                          size_t errsize)
{
    struct outbox *ob = xcalloc(1, sizeof(*ob));
    ob->cfg = *cfg;
    ob->r = r;
    pthread_mutex_init(&ob->lock, NULL);
    pthread_cond_init(&ob->cond, NULL);
    if (!r || !cfg->stream || !cfg->map || !cfg->producer || !cfg->metrics || cfg->batch == 0) {
        snprintf(errbuf, errsize, "outbox: incomplete configuration");
        goto fail;
    }
    if (!ob->cfg.name)
        ob->cfg.name = cfg->stream;
    size_t len = strlen(cfg->stream) + sizeof(LEASE_SUFFIX);
    ob->lease_key = xmalloc(len);
    snprintf(ob->lease_key, len, "%s%s", cfg->stream, LEASE_SUFFIX);
    crypto_uuid_v7(ob->token);
    ob->m_relayed = metrics_counter(cfg->metrics, cfg->relayed_metric, cfg->relayed_help, 0, NULL);
    ob->m_pending = metrics_gauge(cfg->metrics, cfg->pending_metric, cfg->pending_help, 0, NULL);
    if (pthread_create(&ob->thread, NULL, relay_main, ob) != 0) {
        snprintf(errbuf, errsize, "cannot start the %s relay", ob->cfg.name);
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
    free(ob->lease_key);
    pthread_cond_destroy(&ob->cond);
    pthread_mutex_destroy(&ob->lock);
    free(ob);
}
