/*
 * The transactional outbox of robot.registry.v1. Every write script appends
 * its change events to the Redis stream registry:outbox in the same script
 * that changes the record, so a stored change always has its event stored
 * too. The libcommon relay (outbox.h) produces the entries in stream order
 * (idempotent producer, acks=all) and deletes each one only after Kafka
 * acknowledged it and every entry before it: a Kafka outage or a kill -9
 * delays an event, never loses it (at-least-once; records carry their
 * version). One replica relays at a time, the holder of registry:outbox:lease.
 *
 * What is particular to the registry: an entry (key, value or tombstone,
 * traceparent) is produced as it is, and the HTTP requests wait until their
 * entry was announced. Every replica watches the stream for its own requests'
 * entries (on the relay's tick): an entry is announced once it is gone.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "outbox.h"
#include "redis.h"
#include "registry.h"
#include "service.h"
#include "timeutil.h"
#include "topics.h"
#include "xalloc.h"

#define BACKOFF_MS 1000

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

struct registry_outbox {
    struct outbox *relay;
    int64_t wait_ms;
    pthread_mutex_t lock;
    bool stopped;
    struct waiter *waiters;
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

void registry_outbox_wait(struct registry_outbox *ob, const char *entry_id,
                          registry_announced_fn done, void *ud)
{
    struct waiter *w = xcalloc(1, sizeof(*w));
    if (!entry_id_parse(entry_id, &w->id)) {
        free(w);
        done(ud, false);
        return;
    }
    w->deadline_ms = time_mono_ms() + ob->wait_ms;
    w->done = done;
    w->ud = ud;
    pthread_mutex_lock(&ob->lock);
    if (ob->stopped || outbox_stopping(ob->relay)) {
        pthread_mutex_unlock(&ob->lock);
        free(w);
        done(ud, false);
        return;
    }
    w->next = ob->waiters;
    ob->waiters = w;
    pthread_mutex_unlock(&ob->lock);
    outbox_kick(ob->relay);
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

int registry_outbox_wait_sync(struct registry_outbox *ob, const char *entry_id)
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
static void resolve_waiters(struct registry_outbox *ob, const struct entry_id *first, bool stopping)
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

static bool have_waiters(struct registry_outbox *ob)
{
    pthread_mutex_lock(&ob->lock);
    bool any = ob->waiters != NULL;
    pthread_mutex_unlock(&ob->lock);
    return any;
}

/* The oldest entry's id into *first: 1 found, 0 stream empty, -EIO. */
static int oldest_entry(struct redis *r, struct entry_id *first)
{
    redisReply *rep =
        redis_cmd(r, "XRANGE", REGISTRY_OUTBOX_KEY, "-", "+", "COUNT", "1", (char *)NULL);
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
static void check_waiters(struct registry_outbox *ob, struct redis *r)
{
    if (!have_waiters(ob))
        return;
    struct entry_id first;
    int rc = oldest_entry(r, &first);
    if (rc >= 0)
        resolve_waiters(ob, rc == 1 ? &first : NULL, false);
    else
        resolve_waiters(ob, &(struct entry_id){0, 0}, false); /* only deadlines */
}

/* ---- the relay's particular parts ---- */

/* The relay's tick: answers the waiters (all of them once it stops). */
static void on_tick(void *ud, struct redis *r, bool stopping)
{
    struct registry_outbox *ob = ud;
    if (stopping) {
        pthread_mutex_lock(&ob->lock);
        ob->stopped = true;
        pthread_mutex_unlock(&ob->lock);
        resolve_waiters(ob, NULL, true);
        return;
    }
    check_waiters(ob, r);
}

/* An entry is produced as it is: key, value (none for a tombstone), traceparent header. */
static bool map_entry(void *ud, const char *id, const redisReply *fields, struct outbox_msg *m)
{
    (void)ud;
    const redisReply *key = outbox_field(fields, "key"), *value = outbox_field(fields, "value");
    const redisReply *tp = outbox_field(fields, "traceparent");
    if (!key) {
        /* Not ours to announce; dropping it keeps the relay moving. */
        LOG_ERROR("outbox entry '%s' has no key", id);
        return false;
    }
    m->topic = TOPIC_ROBOT_REGISTRY;
    m->key = key->str;
    m->key_len = key->len;
    m->value = value ? value->str : NULL;
    m->value_len = value ? value->len : 0;
    if (tp) {
        m->headers[0] = (struct kafka_header){"traceparent", tp->str, tp->len};
        m->nheaders = 1;
    }
    return true;
}

/* ---- lifecycle ---- */

struct registry_outbox *registry_outbox_new(struct service *svc, const struct redis_options *ropts,
                                            const struct registry_outbox_settings *set,
                                            char *errbuf, size_t errsize)
{
    struct redis *r = redis_new(ropts, errbuf, errsize);
    if (!r)
        return NULL;
    struct registry_outbox *ob = xcalloc(1, sizeof(*ob));
    ob->wait_ms = set->wait_ms;
    pthread_mutex_init(&ob->lock, NULL);
    const struct outbox_config cfg = {
        .name = "registry outbox",
        .stream = REGISTRY_OUTBOX_KEY,
        .producer = service_producer(svc),
        .lease_ms = set->lease_ms,
        .poll_ms = set->poll_ms,
        .backoff_ms = BACKOFF_MS,
        .batch = (size_t)set->batch,
        .stop_flush_ms = 0, /* waiting requests are answered at once on stop */
        .metrics = service_metrics(svc),
        .relayed_metric = "registry_outbox_relayed_total",
        .relayed_help = "Outbox entries acknowledged by Kafka and removed",
        .pending_metric = "registry_outbox_pending",
        .pending_help = "Outbox entries not yet acknowledged by Kafka",
        .map = map_entry,
        .on_tick = on_tick,
        .ud = ob,
    };
    ob->relay = outbox_new(&cfg, r, errbuf, errsize);
    if (!ob->relay) {
        pthread_mutex_destroy(&ob->lock);
        free(ob);
        return NULL;
    }
    return ob;
}

void registry_outbox_stop(struct registry_outbox *ob)
{
    if (ob)
        outbox_stop(ob->relay);
}

void registry_outbox_free(struct registry_outbox *ob)
{
    if (!ob)
        return;
    outbox_free(ob->relay);
    pthread_mutex_destroy(&ob->lock);
    free(ob);
}
