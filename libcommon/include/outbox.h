/*
 * The relay of a transactional outbox in Redis. A service's write script
 * appends the messages of a change to a Redis stream in the same script that
 * stores the change; this relay produces the entries in stream order with the
 * service's producer (idempotent, acks=all) and XDELs an entry only once Kafka
 * acknowledged it and every entry before it: a kill -9 or a Kafka outage
 * delays a message, never loses or reorders it (at-least-once).
 *
 * Several replicas: one relays at a time, the holder of the lease
 * "{stream}:lease" (SET NX PX lease_ms with a random token, renewed every
 * third of it while relaying, deleted on stop). The others only poll, so
 * on_tick still runs for them.
 *
 * What an entry becomes on Kafka is the service's map callback. Delivery
 * reports: every message the relay produces carries a struct outbox_delivery
 * as its opaque; the producer's delivery callback calls d->done(d, err)
 * (outbox_on_delivery does exactly that).
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "kafka.h"
#include "trace.h"

struct redis;
struct metrics;

/* The opaque of a produced message, handled by a function (first member of the caller's record). */
struct outbox_delivery {
    void (*done)(struct outbox_delivery *d, int err);
};

/* A kafka_delivery_fn for a producer whose every opaque is a struct outbox_delivery (or NULL). */
void outbox_on_delivery(void *opaque, int err, const char *errstr, int32_t partition,
                        int64_t offset);

#define OUTBOX_HEADERS_MAX 4

/* The message an entry becomes; map fills it. */
struct outbox_msg {
    const char *topic;
    const char *key;
    size_t key_len;
    const void *value; /* NULL: a tombstone (null value) */
    size_t value_len;
    struct kafka_header headers[OUTBOX_HEADERS_MAX];
    size_t nheaders;
    struct buf scratch;                 /* room for a built value; released after queueing */
    char traceparent[TRACE_PARENT_LEN]; /* room for a header value */
};

/*
 * Maps entry id with its fields (a flat array reply: name, value, ...) to m.
 * Strings may point into fields. false: the entry is unusable and skipped
 * (deleted as if acknowledged).
 */
/* The string value of field name in an entry's fields, or NULL (points into fields). */
const redisReply *outbox_field(const redisReply *fields, const char *name);
typedef bool (*outbox_map_fn)(void *ud, const char *id, const redisReply *fields,
                              struct outbox_msg *m);
/* Runs on the relay thread every round, while it waits for Kafka, and once with stopping. */
typedef void (*outbox_tick_fn)(void *ud, struct redis *r, bool stopping);
/* The current lease in ms (read every round, so it may be reloadable). */
typedef int64_t (*outbox_lease_fn)(void *ud);

struct outbox_config {
    const char *name;   /* in logs: "status outbox" */
    const char *stream; /* the Redis stream; the lease key is "{stream}:lease" */
    struct kafka_producer *producer;
    int64_t lease_ms;         /* unless lease_fn */
    outbox_lease_fn lease_fn; /* may be NULL */
    int64_t poll_ms;          /* the nap between rounds when nothing is waiting */
    int64_t backoff_ms;       /* the nap after a failed round */
    size_t batch;             /* entries per round */
    int64_t stop_flush_ms;    /* on stop, keep relaying up to this long (0: stop at once) */
    struct metrics *metrics;
    const char *relayed_metric, *relayed_help; /* counter of acknowledged, deleted entries */
    const char *pending_metric, *pending_help; /* gauge of the stream's length */
    outbox_map_fn map;
    outbox_tick_fn on_tick; /* may be NULL */
    void *ud;
};

struct outbox;

/*
 * Starts the relay thread on r (taken over, freed by outbox_free, also on
 * failure). NULL with errbuf filled on failure.
 */
struct outbox *outbox_new(const struct outbox_config *cfg, struct redis *r, char *errbuf,
                          size_t errsize);
/* Wakes the relay now (a local write appended an entry). NULL-safe. */
void outbox_kick(struct outbox *ob);
/* Whether the relay is stopping (for the service's waiters). */
bool outbox_stopping(struct outbox *ob);
/* Stops the relay (flushing up to stop_flush_ms), runs the last tick, releases the lease. */
void outbox_stop(struct outbox *ob);
void outbox_free(struct outbox *ob); /* NULL-safe */

#endif
