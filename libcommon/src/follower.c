/*
 * The follower (see follower.h): a consumer group of its own per process, so
 * that Kafka hands every replica the whole topic, read from the end.
 */
#include "follower.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cloudevents.h"
#include "crypto.h"
#include "timeutil.h"
#include "xalloc.h"

#define POLL_MS_DEFAULT 200

struct follower {
    struct kafka_consumer *consumer; /* NULL without bootstrap */
    int poll_ms;
    follower_event_fn on_event;
    follower_poll_fn on_poll;
    void *ud;
    pthread_t thread;
    bool started;
    atomic_bool stop;
};

static void deliver(struct follower *f, struct kafka_msg *m)
{
    size_t len = 0;
    const char *value = kafka_msg_error(m) ? NULL : kafka_msg_value(m, &len);
    struct cloudevent ev;
    cJSON *root = value ? ce_parse(value, len, &ev, NULL, 0) : NULL;
    if (root && f->on_event)
        f->on_event(f->ud, &ev);
    cJSON_Delete(root);
}

static void *follow_main(void *arg)
{
    struct follower *f = arg;
    while (!atomic_load(&f->stop)) {
        if (f->consumer) {
            struct kafka_msg *m = kafka_consumer_poll(f->consumer, f->poll_ms);
            if (m)
                deliver(f, m);
            kafka_msg_free(m);
        } else {
            time_sleep_ms(f->poll_ms);
        }
        if (f->on_poll)
            f->on_poll(f->ud);
    }
    return NULL;
}

static int open_consumer(struct follower *f, const struct follower_options *o, char *errbuf,
                         size_t errsize)
{
    struct kafka_prop props[FOLLOWER_PROPS_MAX + 1];
    size_t n = 0;
    char host[64] = "host", group[200];
    uint8_t rnd[4] = {0};
    gethostname(host, sizeof(host) - 1);
    crypto_random_bytes(rnd, sizeof(rnd));
    snprintf(group, sizeof(group), "%s-%s-%ld-%02x%02x%02x%02x", o->group_prefix, host,
             (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3]);
    /* the caller's properties come after, so they may say otherwise */
    props[n++] = (struct kafka_prop){"auto.offset.reset", "latest"};
    for (size_t i = 0; i < o->nprops && i < FOLLOWER_PROPS_MAX; i++)
        props[n++] = o->props[i];
    f->consumer = kafka_consumer_new(o->bootstrap, group, props, n, errbuf, errsize);
    if (!f->consumer)
        return -1;
    if (o->on_rebalance)
        kafka_consumer_on_rebalance(f->consumer, o->on_rebalance, o->ud);
    const char *topics[] = {o->topic};
    if (kafka_consumer_subscribe(f->consumer, topics, 1) != 0) {
        snprintf(errbuf, errsize, "cannot subscribe to %s", o->topic);
        return -1;
    }
    return 0;
}

struct follower *follower_start(const struct follower_options *o, char *errbuf, size_t errsize)
{
    struct follower *f = xcalloc(1, sizeof(*f));
    f->poll_ms = o->poll_ms > 0 ? o->poll_ms : POLL_MS_DEFAULT;
    f->on_event = o->on_event;
    f->on_poll = o->on_poll;
    f->ud = o->ud;
    atomic_init(&f->stop, false);
    if (o->bootstrap && open_consumer(f, o, errbuf, errsize) != 0)
        goto out_free;
    if (pthread_create(&f->thread, NULL, follow_main, f) != 0) {
        snprintf(errbuf, errsize, "cannot start the thread following %s", o->topic);
        goto out_free;
    }
    f->started = true;
    return f;
out_free:
    follower_free(f);
    return NULL;
}

void follower_stop(struct follower *f)
{
    if (!f || !f->started)
        return;
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    f->started = false;
}

void follower_free(struct follower *f)
{
    if (!f)
        return;
    follower_stop(f);
    kafka_consumer_free(f->consumer);
    free(f);
}
