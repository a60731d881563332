/*
 * Kafka on librdkafka: an idempotent acks=all producer with a delivery callback
 * per message, a group consumer (cooperative-sticky, manual commits,
 * read_committed), transactional producer helpers (the three error classes of
 * librdkafka's examples/transactions.c), and an admin helper that creates
 * missing topics. Extra librdkafka properties pass through untouched.
 */
#ifndef KAFKA_H
#define KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Transaction results besides 0. */
#define KAFKA_ERR_RETRIABLE  (-11001) /* retry the same call */
#define KAFKA_ERR_ABORTABLE  (-11002) /* abort the transaction, rewind, go on */
#define KAFKA_ERR_FATAL      (-11003) /* the producer is unusable (fenced): exit */
#define KAFKA_ERR_TIMEOUT    (-11004)
#define KAFKA_ERR_QUEUE_FULL (-11005)
/* Delivery failed and the broker certainly did not store the message. */
#define KAFKA_ERR_NOT_PERSISTED (-11006)

struct kafka_prop {
    const char *name;
    const char *value;
};

struct kafka_header {
    const char *name;
    const void *value;
    size_t len;
};

struct kafka_partition {
    const char *topic;
    int32_t partition;
};

struct kafka_producer;
struct kafka_consumer;
struct kafka_msg;

/*
 * Called once per message from the producer's poll thread. err is 0 when the
 * broker acknowledged it (acks=all), else negative with errstr saying why:
 * KAFKA_ERR_NOT_PERSISTED when the message certainly was not stored, any other
 * code when it may have been (e.g. timed out while in flight).
 */
typedef void (*kafka_delivery_fn)(void *opaque, int err, const char *errstr, int32_t partition,
                                  int64_t offset);

/* ---- producer ---- */
/*
 * Idempotent producer with acks=all; props override or extend librdkafka's
 * configuration. When transactional_id is not NULL the producer is
 * transactional and init_transactions has run. A background thread polls for
 * delivery reports and calls cb. NULL with errbuf filled on failure.
 */
struct kafka_producer *kafka_producer_new(const char *bootstrap, const struct kafka_prop *props,
                                          size_t nprops, const char *transactional_id,
                                          kafka_delivery_fn cb, char *errbuf, size_t errsize);
/*
 * Queues a copy of the message; partition -1 lets the key choose. opaque comes
 * back in the delivery callback. On a full queue it waits up to the configured
 * enqueue timeout, then returns KAFKA_ERR_QUEUE_FULL. 0 or negative.
 */
int kafka_producer_send(struct kafka_producer *p, const char *topic, int32_t partition,
                        const void *key, size_t keylen, const void *value, size_t len,
                        const struct kafka_header *headers, size_t nheaders, void *opaque);
/* Waits until every queued message has a delivery report. 0 or KAFKA_ERR_TIMEOUT. */
int kafka_producer_flush(struct kafka_producer *p, int timeout_ms);
/* Messages queued or in flight without a delivery report yet. */
size_t kafka_producer_outstanding(const struct kafka_producer *p);
/* Asks the cluster for metadata; true when a broker answered within timeout_ms. */
bool kafka_producer_ping(struct kafka_producer *p, int timeout_ms);
/*
 * Learns where the partitions of topics the producer will write are, before
 * its first message to them (else that message waits for the next metadata
 * refresh, up to a second): keeps a handle per topic for the producer's life.
 * 0, or negative when a topic's metadata did not arrive within timeout_ms.
 */
int kafka_producer_prepare(struct kafka_producer *p, const char *const *topics, size_t ntopics,
                           int timeout_ms);
/* Flushes (up to flush_timeout_ms), stops the poll thread, destroys. NULL-safe. */
void kafka_producer_free(struct kafka_producer *p, int flush_timeout_ms);

/* ---- transactions (producer created with a transactional_id) ---- */
int kafka_txn_begin(struct kafka_producer *p);
/* Adds the consumer's current positions to the transaction. */
int kafka_txn_send_offsets(struct kafka_producer *p, struct kafka_consumer *c, int timeout_ms);
/*
 * Adds explicit next-offsets (offsets[i] is the next message to read of
 * parts[i]) to the transaction, with the consumer's group metadata (KIP-447
 * fencing), for a caller that tracks what it processed itself. 0 or negative.
 */
int kafka_txn_send_positions(struct kafka_producer *p, struct kafka_consumer *c,
                             const struct kafka_partition *parts, const int64_t *offsets,
                             size_t nparts, int timeout_ms);
int kafka_txn_commit(struct kafka_producer *p, int timeout_ms);
int kafka_txn_abort(struct kafka_producer *p, int timeout_ms);
/*
 * After KAFKA_ERR_FATAL: true when the producer was fenced (another producer
 * took its transactional.id over, or the id is no longer authorised), so this
 * instance must stop; false for any other fatal error (e.g. INVALID_TXN_STATE
 * when the broker expired a transaction during an outage), after which a new
 * producer with the same transactional.id may carry on. False when no fatal
 * error was raised. NULL-safe.
 */
bool kafka_producer_fenced(struct kafka_producer *p);

/* ---- consumer ---- */
/*
 * Group consumer: cooperative-sticky assignment, enable.auto.commit=false,
 * isolation.level=read_committed, auto.offset.reset=earliest unless props say otherwise.
 */
struct kafka_consumer *kafka_consumer_new(const char *bootstrap, const char *group_id,
                                          const struct kafka_prop *props, size_t nprops,
                                          char *errbuf, size_t errsize);
int kafka_consumer_subscribe(struct kafka_consumer *c, const char *const *topics, size_t ntopics);

/* assigned: true for newly assigned partitions, false for revoked or lost ones. */
typedef void (*kafka_rebalance_fn)(void *ud, bool assigned, bool lost,
                                   const struct kafka_partition *parts, size_t nparts);
/* Set before subscribing; called from kafka_consumer_poll. */
void kafka_consumer_on_rebalance(struct kafka_consumer *c, kafka_rebalance_fn fn, void *ud);
/* Next message or NULL on timeout; errors are returned as messages (see kafka_msg_error). */
struct kafka_msg *kafka_consumer_poll(struct kafka_consumer *c, int timeout_ms);
/*
 * Up to max next messages into out, waiting up to timeout_ms for the first;
 * their number (0 on timeout). Rebalances are served meanwhile, as by
 * kafka_consumer_poll. Each message is freed with kafka_msg_free.
 */
size_t kafka_consumer_poll_batch(struct kafka_consumer *c, int timeout_ms, struct kafka_msg **out,
                                 size_t max);
/* Messages (and events) waiting in the consumer queue, not yet polled. */
size_t kafka_consumer_queued(struct kafka_consumer *c);
/* Commits offset+1 of m for its partition (synchronously unless async). */
int kafka_consumer_commit_msg(struct kafka_consumer *c, const struct kafka_msg *m, bool async);
/* Commits the current positions of every assigned partition. */
int kafka_consumer_commit(struct kafka_consumer *c, bool async);
/* Moves a partition's position (used to rewind after an aborted transaction). */
int kafka_consumer_seek(struct kafka_consumer *c, const char *topic, int32_t partition,
                        int64_t offset, int timeout_ms);
/* Special offsets for kafka_consumer_assign. */
#define KAFKA_OFFSET_BEGINNING (-2)    /* the oldest message still in the log */
#define KAFKA_OFFSET_END       (-1)    /* only messages produced from now on */
#define KAFKA_OFFSET_STORED    (-1000) /* the group's committed offset (else auto.offset.reset) */
/*
 * Adds partitions to the consumer's assignment (incrementally; the existing
 * assignment stays), each starting at offsets[i]. Works on a consumer that never
 * subscribed (reading a partition directly) and, from the rebalance callback of
 * a cooperative group, to consume partitions alongside the group's assignment
 * whose offsets are still committed to the group. 0 or negative.
 */
int kafka_consumer_assign(struct kafka_consumer *c, const struct kafka_partition *parts,
                          const int64_t *offsets, size_t nparts);
/* Removes partitions added by kafka_consumer_assign (incrementally). 0 or negative. */
int kafka_consumer_unassign(struct kafka_consumer *c, const struct kafka_partition *parts,
                            size_t nparts);
/*
 * The last high watermark the consumer saw for a partition (no network round
 * trip; -1 before the first fetch). With read_committed it may include
 * messages of transactions still open. 0 or negative.
 */
int kafka_consumer_high_watermark(struct kafka_consumer *c, const char *topic, int32_t partition,
                                  int64_t *high);
/*
 * Asks the partition's leader for its high watermark (a ListOffsets round
 * trip, at most timeout_ms). A request to the leader also wakes the
 * consumer's fetcher for that broker: librdkafka 2.0 stops fetching a
 * partition whose prefetch queue is full and looks at it again only when its
 * broker thread wakes (at most 1 s later), not when the queue drains. 0 or
 * negative.
 */
int kafka_consumer_query_high(struct kafka_consumer *c, const char *topic, int32_t partition,
                              int timeout_ms, int64_t *high);
/* Leaves the group (committing nothing) and destroys. NULL-safe. */
void kafka_consumer_free(struct kafka_consumer *c);

/* ---- messages ---- */
int kafka_msg_error(const struct kafka_msg *m); /* 0 or negative */
const char *kafka_msg_errstr(const struct kafka_msg *m);
/* True for the "partition EOF" notification, which is not an error. */
bool kafka_msg_is_eof(const struct kafka_msg *m);
const char *kafka_msg_topic(const struct kafka_msg *m);
int32_t kafka_msg_partition(const struct kafka_msg *m);
int64_t kafka_msg_offset(const struct kafka_msg *m);
int64_t kafka_msg_timestamp(const struct kafka_msg *m); /* ms, -1 if none */
const void *kafka_msg_key(const struct kafka_msg *m, size_t *len);
const void *kafka_msg_value(const struct kafka_msg *m, size_t *len);
/* The last header of that name, or NULL; *len gets its length. */
const void *kafka_msg_header(const struct kafka_msg *m, const char *name, size_t *len);
void kafka_msg_free(struct kafka_msg *m); /* NULL-safe */

/* ---- admin ---- */
struct kafka_topic_spec {
    const char *name;
    int partitions;
    bool compacted;
};
/* Creates the topics that do not exist yet (existing ones are left alone). 0 or negative. */
int kafka_ensure_topics(const char *bootstrap, const struct kafka_prop *props, size_t nprops,
                        const struct kafka_topic_spec *topics, size_t ntopics, int timeout_ms,
                        char *errbuf, size_t errsize);

#endif
