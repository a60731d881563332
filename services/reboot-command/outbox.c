/*
 * The transactional outbox of robot.command-status.v1. Every Lua script that
 * changes a command's state (store.c) also appends the transition's status
 * event to the Redis stream reboot:outbox, so a stored transition always has
 * its event stored too. The libcommon relay (outbox.h) produces the entries in
 * stream order (the shared idempotent acks=all producer) and deletes an entry
 * only after Kafka acknowledged it and every entry before it: a kill -9 or a
 * Kafka outage delays a status event, never loses it (at-least-once; the event
 * id "{command id}.{history index}" lets readers drop a repeat). One replica
 * relays at a time, the holder of reboot:outbox:lease (reboot.lease_ttl_ms).
 *
 * This file is what is particular to the status events: an entry (fields key,
 * id, time, data) becomes a command.status CloudEvent keyed by robot id.
 */
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "cloudevents.h"
#include "json.h"
#include "log.h"
#include "outbox.h"
#include "reboot.h"
#include "service.h"
#include "topics.h"
#include "trace.h"

#define OUTBOX_KEY    "reboot:outbox"
#define BATCH         512
#define POLL_MS       100
#define BACKOFF_MS    500
#define STOP_FLUSH_MS 3000
#define EVENT_MAX     (64 * 1024)

/* The CloudEvent of an entry; false when it is unusable (skipped). */
static bool map_entry(void *ud, const char *entry_id, const redisReply *fields,
                      struct outbox_msg *m)
{
    (void)ud;
    const redisReply *key = outbox_field(fields, "key"), *id = outbox_field(fields, "id");
    const redisReply *t = outbox_field(fields, "time"), *data = outbox_field(fields, "data");
    cJSON *doc = data ? json_parse(data->str, data->len, NULL, 0) : NULL;
    if (!key || !id || !t || !doc) {
        LOG_ERROR("status outbox entry '%s' without key, id, time or data", entry_id);
        cJSON_Delete(doc);
        return false;
    }
    trace_parent_new(m->traceparent);
    buf_init(&m->scratch, EVENT_MAX);
    struct cloudevent ce = {.id = id->str,
                            .source = "/reboot-command",
                            .type = "command.status",
                            .subject = key->str,
                            .time = t->str,
                            .data = doc};
    int rc = ce_build(&ce, &m->scratch);
    cJSON_Delete(doc);
    if (rc != 0) {
        LOG_ERROR("status outbox entry '%s' cannot be built", id->str);
        return false;
    }
    m->topic = TOPIC_ROBOT_COMMAND_STATUS;
    m->key = key->str;
    m->key_len = key->len;
    m->value = m->scratch.data;
    m->value_len = m->scratch.len;
    m->headers[0] = (struct kafka_header){"traceparent", m->traceparent, strlen(m->traceparent)};
    m->nheaders = 1;
    return true;
}

static int64_t lease_ms(void *ud)
{
    struct reboot_settings set;
    reboot_settings_get(ud, &set);
    return set.lease_ttl_ms;
}

struct outbox *reboot_outbox_new(struct reboot *rb, char *errbuf, size_t errsize)
{
    struct redis *r = reboot_redis_new(rb);
    if (!r) {
        snprintf(errbuf, errsize, "cannot open a Redis connection for the status outbox");
        return NULL;
    }
    const struct outbox_config cfg = {
        .name = "status outbox",
        .stream = OUTBOX_KEY,
        .producer = rb->producer,
        .lease_fn = lease_ms,
        .poll_ms = POLL_MS,
        .backoff_ms = BACKOFF_MS,
        .batch = BATCH,
        .stop_flush_ms = STOP_FLUSH_MS, /* the lanes and workers have stopped: relay their last */
        .metrics = service_metrics(rb->svc),
        .relayed_metric = "reboot_outbox_relayed_total",
        .relayed_help = "Status events acknowledged by Kafka and removed",
        .pending_metric = "reboot_outbox_pending",
        .pending_help = "Status events not yet acknowledged by Kafka",
        .map = map_entry,
        .ud = rb,
    };
    return outbox_new(&cfg, r, errbuf, errsize);
}
