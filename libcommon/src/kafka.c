/*
 * Kafka clients on librdkafka: the idempotent producer with its poll thread,
 * the transaction helpers, the group consumer and the topic admin helper.
 *
 * Error codes. Functions return 0 or a negative code:
 *   -EINVAL                 a caller mistake (NULL argument, txn call on a
 *                           non-transactional producer, error message to commit)
 *   KAFKA_ERR_TIMEOUT       librdkafka's __TIMED_OUT, __MSG_TIMED_OUT, REQUEST_TIMED_OUT
 *   KAFKA_ERR_QUEUE_FULL    __QUEUE_FULL (after the enqueue wait in send)
 *   KAFKA_ERR_FATAL         __FATAL, and fatal transactional errors
 *   KAFKA_ERR_RETRIABLE /   transactional errors, classified as in librdkafka's
 *   KAFKA_ERR_ABORTABLE     examples/transactions.c
 *   -(10000 + err)          any other rd_kafka_resp_err_t err: librdkafka's
 *                           internal errors (-200..-100) land in -9800..-9900,
 *                           broker errors (1..) below -10000; neither range
 *                           meets errno values or the KAFKA_ERR_* codes.
 * The same mapping is used for delivery reports and consumed error messages.
 *
 * Delivery reports are consumed as events (RD_KAFKA_EVENT_DR) rather than
 * through dr_msg_cb: in event mode rd_kafka_flush() and
 * rd_kafka_commit_transaction() wait for the poll thread instead of serving
 * callbacks themselves, so the user's callback really only ever runs on the
 * producer's poll thread, as kafka.h promises.
 */
#include "kafka.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "log.h"
#include "timeutil.h"
#include "xalloc.h"

/* How long kafka_producer_send waits for room in a full local queue. */
#define ENQUEUE_TIMEOUT_MS 1000
/* init_transactions needs the coordinator; a broker that cannot answer in this is down. */
#define INIT_TXN_TIMEOUT_MS 30000
/* After a flush timed out, how long purged messages get to report back. */
#define PURGE_WAIT_MS    1000
#define POLL_INTERVAL_MS 100

struct kafka_producer {
    rd_kafka_t *rk;
    rd_kafka_queue_t *mainq;
    kafka_delivery_fn cb;
    bool transactional;
    atomic_bool stop;
    pthread_t poller;
    rd_kafka_topic_t **topics; /* kafka_producer_prepare's */
    size_t ntopics;
};

struct kafka_consumer {
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue; /* the consumer queue, for batches (NULL until the first) */
    kafka_rebalance_fn rebalance_fn;
    void *rebalance_ud;
};

/*
 * A struct kafka_msg is librdkafka's message itself, never defined: the
 * pointer is converted back (no allocation per message).
 */
#define RKM(m) ((rd_kafka_message_t *)(m))

static void set_err(char *errbuf, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errbuf, size_t errsize, const char *fmt, ...)
{
    va_list ap;

    if (!errbuf || errsize == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errsize, fmt, ap);
    va_end(ap);
}

static int err_code(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return 0;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return KAFKA_ERR_TIMEOUT;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return KAFKA_ERR_QUEUE_FULL;
    case RD_KAFKA_RESP_ERR__FATAL:
        return KAFKA_ERR_FATAL;
    default:
        return -(10000 + (int)err);
    }
}

/* librdkafka logs with syslog levels from its own threads; log.h is thread-safe. */
static void log_from_rdkafka(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    enum log_level lvl = level <= 3   ? LOG_LEVEL_ERROR
                         : level == 4 ? LOG_LEVEL_WARN
                         : level <= 6 ? LOG_LEVEL_INFO
                                      : LOG_LEVEL_DEBUG;

    log_at(lvl, "rdkafka %s %s: %s", rd_kafka_name(rk), fac, buf);
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errbuf,
                    size_t errsize)
{
    char errstr[256];

    if (!name || !value) {
        set_err(errbuf, errsize, "kafka property with a NULL name or value");
        return -EINVAL;
    }
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        set_err(errbuf, errsize, "kafka property '%s': %s", name, errstr);
        return -EINVAL;
    }
    return 0;
}

/* Defaults first, then the caller's props, so a prop overrides a default. */
static rd_kafka_conf_t *conf_build(const char *bootstrap, const struct kafka_prop *defaults,
                                   size_t ndefaults, const struct kafka_prop *props, size_t nprops,
                                   char *errbuf, size_t errsize)
{
    rd_kafka_conf_t *conf;
    size_t i;

    if (!bootstrap || !*bootstrap) {
        set_err(errbuf, errsize, "kafka bootstrap servers missing");
        return NULL;
    }
    if (nprops > 0 && !props) {
        set_err(errbuf, errsize, "kafka properties missing");
        return NULL;
    }
    conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", bootstrap, errbuf, errsize) < 0)
        goto out_conf;
    for (i = 0; i < ndefaults; i++)
        if (conf_set(conf, defaults[i].name, defaults[i].value, errbuf, errsize) < 0)
            goto out_conf;
    for (i = 0; i < nprops; i++)
        if (conf_set(conf, props[i].name, props[i].value, errbuf, errsize) < 0)
            goto out_conf;
    rd_kafka_conf_set_log_cb(conf, log_from_rdkafka);
    return conf;

out_conf:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* ---- producer ---- */

static void deliver(struct kafka_producer *p, const rd_kafka_message_t *m)
{
    /* Not rd_kafka_message_errstr: on a delivery report that returns the
     * payload, which is not NUL-terminated. */
    const char *errstr = m->err ? rd_kafka_err2str(m->err) : "";

    int err = err_code(m->err);
    /* A failure the broker certainly never stored can be retried without duplicates. */
    if (m->err && rd_kafka_message_status(m) == RD_KAFKA_MSG_STATUS_NOT_PERSISTED)
        err = KAFKA_ERR_NOT_PERSISTED;
    if (p->cb)
        p->cb(m->_private, err, errstr, m->partition, m->offset);
}

static void handle_error_event(struct kafka_producer *p, rd_kafka_event_t *ev)
{
    char reason[512];
    rd_kafka_resp_err_t err;

    if (!rd_kafka_event_error_is_fatal(ev)) {
        LOG_WARN("kafka producer error: %s", rd_kafka_event_error_string(ev));
        return;
    }
    err = rd_kafka_fatal_error(p->rk, reason, sizeof(reason));
    LOG_ERROR("kafka producer fatal error %s: %s", rd_kafka_err2name(err), reason);
}

static void *producer_poll_thread(void *arg)
{
    struct kafka_producer *p = arg;

    while (!atomic_load(&p->stop)) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(p->mainq, POLL_INTERVAL_MS);
        const rd_kafka_message_t *m;

        if (!ev)
            continue;
        switch (rd_kafka_event_type(ev)) {
        case RD_KAFKA_EVENT_DR:
            while ((m = rd_kafka_event_message_next(ev)) != NULL)
                deliver(p, m);
            break;
        case RD_KAFKA_EVENT_ERROR:
            handle_error_event(p, ev);
            break;
        default:
            break;
        }
        rd_kafka_event_destroy(ev);
    }
    return NULL;
}

/* Classifies a transactional error the way examples/transactions.c does. */
static int txn_error(const char *what, rd_kafka_error_t *error)
{
    int rc;

    if (!error)
        return 0;
    if (rd_kafka_error_is_fatal(error))
        rc = KAFKA_ERR_FATAL;
    else if (rd_kafka_error_txn_requires_abort(error))
        rc = KAFKA_ERR_ABORTABLE;
    else if (rd_kafka_error_is_retriable(error))
        rc = KAFKA_ERR_RETRIABLE;
    else
        rc = err_code(rd_kafka_error_code(error));
    log_at(rc == KAFKA_ERR_FATAL ? LOG_LEVEL_ERROR : LOG_LEVEL_WARN, "kafka %s failed: %s", what,
           rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
    return rc;
}

struct kafka_producer *kafka_producer_new(const char *bootstrap, const struct kafka_prop *props,
                                          size_t nprops, const char *transactional_id,
                                          kafka_delivery_fn cb, char *errbuf, size_t errsize)
{
    static const struct kafka_prop defaults[] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"linger.ms", "5"},
        {"compression.type", "none"},
    };
    struct kafka_producer *p;
    rd_kafka_conf_t *conf;
    rd_kafka_error_t *error;
    char errstr[512];

    conf = conf_build(bootstrap, defaults, sizeof(defaults) / sizeof(defaults[0]), props, nprops,
                      errbuf, errsize);
    if (!conf)
        return NULL;
    if (transactional_id &&
        conf_set(conf, "transactional.id", transactional_id, errbuf, errsize) < 0)
        goto out_conf;
    /* Event mode: see the top of the file. Without a callback a delivery
     * report is of no use: only failures make one (the poll thread drops
     * them; a transaction learns of them at its commit). */
    if (!cb && conf_set(conf, "delivery.report.only.error", "true", errbuf, errsize) < 0)
        goto out_conf;
    rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR);

    p = xcalloc(1, sizeof(*p));
    p->cb = cb;
    p->transactional = transactional_id != NULL;
    atomic_init(&p->stop, false);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!p->rk) {
        set_err(errbuf, errsize, "kafka producer: %s", errstr);
        goto out_free;
    }
    conf = NULL; /* owned by rk now */
    p->mainq = rd_kafka_queue_get_main(p->rk);
    if (pthread_create(&p->poller, NULL, producer_poll_thread, p) != 0) {
        set_err(errbuf, errsize, "kafka producer: cannot start the poll thread");
        goto out_destroy;
    }
    if (p->transactional) {
        error = rd_kafka_init_transactions(p->rk, INIT_TXN_TIMEOUT_MS);
        if (error) {
            set_err(errbuf, errsize, "kafka init_transactions '%s': %s", transactional_id,
                    rd_kafka_error_string(error));
            rd_kafka_error_destroy(error);
            goto out_thread;
        }
    }
    return p;

out_thread:
    atomic_store(&p->stop, true);
    pthread_join(p->poller, NULL);
out_destroy:
    rd_kafka_queue_destroy(p->mainq);
    rd_kafka_destroy(p->rk);
out_free:
    free(p);
out_conf:
    if (conf)
        rd_kafka_conf_destroy(conf);
    return NULL;
}

static rd_kafka_headers_t *headers_build(const struct kafka_header *headers, size_t nheaders)
{
    rd_kafka_headers_t *hdrs;
    size_t i;

    if (nheaders == 0)
        return NULL;
    hdrs = rd_kafka_headers_new(nheaders);
    for (i = 0; i < nheaders; i++) {
        if (!headers[i].name ||
            rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                headers[i].value ? (ssize_t)headers[i].len : 0) != 0) {
            rd_kafka_headers_destroy(hdrs);
            return NULL;
        }
    }
    return hdrs;
}

int kafka_producer_send(struct kafka_producer *p, const char *topic, int32_t partition,
                        const void *key, size_t keylen, const void *value, size_t len,
                        const struct kafka_header *headers, size_t nheaders, void *opaque)
{
    rd_kafka_headers_t *hdrs = NULL;
    rd_kafka_resp_err_t err;
    int64_t deadline;

    if (!p || !topic || (nheaders > 0 && !headers))
        return -EINVAL;
    if (nheaders > 0) {
        hdrs = headers_build(headers, nheaders);
        if (!hdrs)
            return -EINVAL;
    }
    /* A prepared topic's handle saves librdkafka a lookup by name (and its lock). */
    rd_kafka_topic_t *rkt = NULL;
    for (size_t i = 0; i < p->ntopics && !rkt; i++)
        if (strcmp(rd_kafka_topic_name(p->topics[i]), topic) == 0)
            rkt = p->topics[i];
    bool own = !rkt;
    if (own && !(rkt = rd_kafka_topic_new(p->rk, topic, NULL))) {
        if (hdrs)
            rd_kafka_headers_destroy(hdrs);
        return err_code(rd_kafka_last_error());
    }
    deadline = time_mono_ms() + ENQUEUE_TIMEOUT_MS;
    for (;;) {
        /* librdkafka takes the headers only when producev succeeds. */
        err = rd_kafka_producev(
            p->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY((void *)key, key ? keylen : 0),
            RD_KAFKA_V_VALUE((void *)value, value ? len : 0), RD_KAFKA_V_HEADERS(hdrs),
            RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
        /* The poll thread drains delivery reports meanwhile; only wait here. */
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || time_mono_ms() >= deadline)
            break;
        time_sleep_ms(10);
    }
    if (own)
        rd_kafka_topic_destroy(rkt); /* queued messages hold their own reference */
    if (err) {
        if (hdrs)
            rd_kafka_headers_destroy(hdrs);
        LOG_WARN("kafka produce to '%s' failed: %s", topic, rd_kafka_err2str(err));
        return err_code(err);
    }
    return 0;
}

int kafka_producer_flush(struct kafka_producer *p, int timeout_ms)
{
    if (!p)
        return -EINVAL;
    return rd_kafka_flush(p->rk, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : KAFKA_ERR_TIMEOUT;
}

size_t kafka_producer_outstanding(const struct kafka_producer *p)
{
    int n;

    if (!p)
        return 0;
    n = rd_kafka_outq_len(p->rk);
    return n > 0 ? (size_t)n : 0;
}

bool kafka_producer_ping(struct kafka_producer *p, int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;

    if (!p)
        return false;
    if (rd_kafka_metadata(p->rk, 0, NULL, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return false;
    rd_kafka_metadata_destroy(md);
    return true;
}

int kafka_producer_prepare(struct kafka_producer *p, const char *const *topics, size_t ntopics,
                           int timeout_ms)
{
    int rc = 0;

    if (!p || (ntopics > 0 && !topics))
        return -EINVAL;
    for (size_t i = 0; i < ntopics; i++) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, topics[i], NULL);
        if (!rkt)
            return err_code(rd_kafka_last_error());
        p->topics = xrealloc(p->topics, (p->ntopics + 1) * sizeof(*p->topics));
        p->topics[p->ntopics++] = rkt;
        rd_kafka_resp_err_t err = rd_kafka_metadata(p->rk, 0, rkt, &md, timeout_ms);
        if (!err && (md->topic_cnt != 1 || md->topics[0].err))
            err = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
        if (md)
            rd_kafka_metadata_destroy(md);
        if (err) {
            LOG_WARN("no metadata for kafka topic '%s': %s", topics[i], rd_kafka_err2str(err));
            rc = err_code(err);
            break; /* the broker is likely away: the rest would wait as long */
        }
    }
    return rc;
}

void kafka_producer_free(struct kafka_producer *p, int flush_timeout_ms)
{
    int left;

    if (!p)
        return;
    if (rd_kafka_flush(p->rk, flush_timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        /*
         * rd_kafka_destroy would drop the rest silently; purging fails them
         * through the delivery callback, so every opaque comes back once.
         */
        left = rd_kafka_outq_len(p->rk);
        LOG_WARN("kafka producer closing with %d undelivered messages", left);
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, PURGE_WAIT_MS);
    }
    atomic_store(&p->stop, true);
    pthread_join(p->poller, NULL);
    for (size_t i = 0; i < p->ntopics; i++)
        rd_kafka_topic_destroy(p->topics[i]);
    free(p->topics);
    rd_kafka_queue_destroy(p->mainq);
    rd_kafka_destroy(p->rk);
    free(p);
}

/* ---- transactions ---- */

bool kafka_producer_fenced(struct kafka_producer *p)
{
    if (!p)
        return false;
    switch (rd_kafka_fatal_error(p->rk, NULL, 0)) {
    case RD_KAFKA_RESP_ERR__FENCED:
    case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return true;
    default:
        return false;
    }
}

int kafka_txn_begin(struct kafka_producer *p)
{
    if (!p || !p->transactional)
        return -EINVAL;
    return txn_error("begin_transaction", rd_kafka_begin_transaction(p->rk));
}

int kafka_txn_send_offsets(struct kafka_producer *p, struct kafka_consumer *c, int timeout_ms)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_consumer_group_metadata_t *cgmd;
    rd_kafka_resp_err_t err;
    int rc;

    if (!p || !p->transactional || !c)
        return -EINVAL;
    err = rd_kafka_assignment(c->rk, &parts);
    if (err) {
        LOG_WARN("kafka assignment failed: %s", rd_kafka_err2str(err));
        return err_code(err);
    }
    if (parts->cnt == 0) {
        rc = 0;
        goto out_parts;
    }
    /* Positions are the next offsets to read; partitions not read yet stay
     * at OFFSET_INVALID, which send_offsets_to_transaction ignores. */
    err = rd_kafka_position(c->rk, parts);
    if (err) {
        LOG_WARN("kafka position failed: %s", rd_kafka_err2str(err));
        rc = err_code(err);
        goto out_parts;
    }
    cgmd = rd_kafka_consumer_group_metadata(c->rk);
    if (!cgmd) {
        rc = -EINVAL;
        goto out_parts;
    }
    rc = txn_error("send_offsets_to_transaction",
                   rd_kafka_send_offsets_to_transaction(p->rk, parts, cgmd, timeout_ms));
    rd_kafka_consumer_group_metadata_destroy(cgmd);
out_parts:
    rd_kafka_topic_partition_list_destroy(parts);
    return rc;
}

int kafka_txn_send_positions(struct kafka_producer *p, struct kafka_consumer *c,
                             const struct kafka_partition *parts, const int64_t *offsets,
                             size_t nparts, int timeout_ms)
{
    rd_kafka_topic_partition_list_t *list;
    rd_kafka_consumer_group_metadata_t *cgmd;
    int rc;

    if (!p || !p->transactional || !c || (nparts > 0 && (!parts || !offsets)) || nparts > INT_MAX)
        return -EINVAL;
    if (nparts == 0)
        return 0;
    list = rd_kafka_topic_partition_list_new((int)nparts);
    for (size_t i = 0; i < nparts; i++) {
        if (!parts[i].topic || offsets[i] < 0) {
            rd_kafka_topic_partition_list_destroy(list);
            return -EINVAL;
        }
        rd_kafka_topic_partition_list_add(list, parts[i].topic, parts[i].partition)->offset =
            offsets[i];
    }
    cgmd = rd_kafka_consumer_group_metadata(c->rk);
    if (!cgmd) {
        rd_kafka_topic_partition_list_destroy(list);
        return -EINVAL;
    }
    rc = txn_error("send_offsets_to_transaction",
                   rd_kafka_send_offsets_to_transaction(p->rk, list, cgmd, timeout_ms));
    rd_kafka_consumer_group_metadata_destroy(cgmd);
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

int kafka_txn_commit(struct kafka_producer *p, int timeout_ms)
{
    if (!p || !p->transactional)
        return -EINVAL;
    return txn_error("commit_transaction", rd_kafka_commit_transaction(p->rk, timeout_ms));
}

int kafka_txn_abort(struct kafka_producer *p, int timeout_ms)
{
    if (!p || !p->transactional)
        return -EINVAL;
    return txn_error("abort_transaction", rd_kafka_abort_transaction(p->rk, timeout_ms));
}

/* ---- consumer ---- */

static void rebalance_notify(struct kafka_consumer *c, bool assigned, bool lost,
                             const rd_kafka_topic_partition_list_t *list)
{
    struct kafka_partition *parts;
    int i;

    /* Cooperative rebalances often carry no change for this member. */
    if (!c->rebalance_fn || list->cnt <= 0)
        return;
    parts = xcalloc((size_t)list->cnt, sizeof(*parts));
    for (i = 0; i < list->cnt; i++) {
        parts[i].topic = list->elems[i].topic;
        parts[i].partition = list->elems[i].partition;
    }
    c->rebalance_fn(c->rebalance_ud, assigned, lost, parts, (size_t)list->cnt);
    free(parts);
}

static void log_assign_error(const char *what, rd_kafka_error_t *error)
{
    if (!error)
        return;
    LOG_ERROR("kafka %s failed: %s", what, rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
}

/*
 * The user hears about new partitions after they are assigned (so it may seek)
 * and about revoked ones before they go (so it may still commit).
 */
static void consumer_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                               rd_kafka_topic_partition_list_t *list, void *opaque)
{
    struct kafka_consumer *c = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_resp_err_t aerr;

    switch (err) {
    case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
        if (cooperative) {
            log_assign_error("incremental_assign", rd_kafka_incremental_assign(rk, list));
        } else if ((aerr = rd_kafka_assign(rk, list)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            LOG_ERROR("kafka assign failed: %s", rd_kafka_err2str(aerr));
        }
        rebalance_notify(c, true, false, list);
        break;
    case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
        rebalance_notify(c, false, rd_kafka_assignment_lost(rk) != 0, list);
        if (cooperative)
            log_assign_error("incremental_unassign", rd_kafka_incremental_unassign(rk, list));
        else if ((aerr = rd_kafka_assign(rk, NULL)) != RD_KAFKA_RESP_ERR_NO_ERROR)
            LOG_ERROR("kafka unassign failed: %s", rd_kafka_err2str(aerr));
        break;
    default:
        LOG_ERROR("kafka rebalance failed: %s", rd_kafka_err2str(err));
        rd_kafka_assign(rk, NULL);
        break;
    }
}

static void consumer_commit_result(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                   rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    (void)offsets;
    (void)opaque;
    /* NO_OFFSET only means there was nothing new to commit. */
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        LOG_WARN("kafka offset commit failed: %s", rd_kafka_err2str(err));
}

struct kafka_consumer *kafka_consumer_new(const char *bootstrap, const char *group_id,
                                          const struct kafka_prop *props, size_t nprops,
                                          char *errbuf, size_t errsize)
{
    static const struct kafka_prop defaults[] = {
        {"partition.assignment.strategy", "cooperative-sticky"},
        {"enable.auto.commit", "false"},
        {"isolation.level", "read_committed"},
        {"auto.offset.reset", "earliest"},
        {"enable.partition.eof", "false"},
    };
    struct kafka_consumer *c;
    rd_kafka_conf_t *conf;
    char errstr[512];

    if (!group_id || !*group_id) {
        set_err(errbuf, errsize, "kafka consumer group id missing");
        return NULL;
    }
    conf = conf_build(bootstrap, defaults, sizeof(defaults) / sizeof(defaults[0]), props, nprops,
                      errbuf, errsize);
    if (!conf)
        return NULL;
    if (conf_set(conf, "group.id", group_id, errbuf, errsize) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    c = xcalloc(1, sizeof(*c));
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_rebalance_cb(conf, consumer_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, consumer_commit_result);
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (!c->rk) {
        set_err(errbuf, errsize, "kafka consumer: %s", errstr);
        rd_kafka_conf_destroy(conf);
        free(c);
        return NULL;
    }
    /* One queue: errors and rebalances arrive through kafka_consumer_poll. */
    rd_kafka_poll_set_consumer(c->rk);
    return c;
}

int kafka_consumer_subscribe(struct kafka_consumer *c, const char *const *topics, size_t ntopics)
{
    rd_kafka_topic_partition_list_t *list;
    rd_kafka_resp_err_t err;
    size_t i;

    if (!c || !topics || ntopics == 0 || ntopics > INT_MAX)
        return -EINVAL;
    list = rd_kafka_topic_partition_list_new((int)ntopics);
    for (i = 0; i < ntopics; i++) {
        if (!topics[i]) {
            rd_kafka_topic_partition_list_destroy(list);
            return -EINVAL;
        }
        rd_kafka_topic_partition_list_add(list, topics[i], RD_KAFKA_PARTITION_UA);
    }
    err = rd_kafka_subscribe(c->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (err) {
        LOG_ERROR("kafka subscribe failed: %s", rd_kafka_err2str(err));
        return err_code(err);
    }
    return 0;
}

void kafka_consumer_on_rebalance(struct kafka_consumer *c, kafka_rebalance_fn fn, void *ud)
{
    if (!c)
        return;
    c->rebalance_fn = fn;
    c->rebalance_ud = ud;
}

struct kafka_msg *kafka_consumer_poll(struct kafka_consumer *c, int timeout_ms)
{
    if (!c)
        return NULL;
    return (struct kafka_msg *)rd_kafka_consumer_poll(c->rk, timeout_ms);
}

size_t kafka_consumer_poll_batch(struct kafka_consumer *c, int timeout_ms, struct kafka_msg **out,
                                 size_t max)
{
    if (!c || !out || max == 0)
        return 0;
    if (!c->queue)
        c->queue = rd_kafka_queue_get_consumer(c->rk);
    ssize_t n = rd_kafka_consume_batch_queue(c->queue, timeout_ms, (rd_kafka_message_t **)out, max);
    return n > 0 ? (size_t)n : 0;
}

size_t kafka_consumer_queued(struct kafka_consumer *c)
{
    if (!c || !c->queue)
        return 0;
    return rd_kafka_queue_length(c->queue);
}

static int commit_list(struct kafka_consumer *c, const rd_kafka_topic_partition_list_t *list,
                       bool async)
{
    rd_kafka_resp_err_t err = rd_kafka_commit(c->rk, list, async ? 1 : 0);

    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return 0;
    if (err) {
        LOG_WARN("kafka commit failed: %s", rd_kafka_err2str(err));
        return err_code(err);
    }
    return 0;
}

int kafka_consumer_commit_msg(struct kafka_consumer *c, const struct kafka_msg *m, bool async)
{
    rd_kafka_topic_partition_list_t *list;
    int rc;

    if (!c || !m || RKM(m)->err || !RKM(m)->rkt)
        return -EINVAL;
    list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(RKM(m)->rkt), RKM(m)->partition)
        ->offset = RKM(m)->offset + 1;
    rc = commit_list(c, list, async);
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

int kafka_consumer_commit(struct kafka_consumer *c, bool async)
{
    rd_kafka_topic_partition_list_t *assigned = NULL, *list;
    rd_kafka_resp_err_t err;
    int i, rc = 0;

    if (!c)
        return -EINVAL;
    err = rd_kafka_assignment(c->rk, &assigned);
    if (!err)
        err = rd_kafka_position(c->rk, assigned);
    if (err) {
        LOG_WARN("kafka position failed: %s", rd_kafka_err2str(err));
        rc = err_code(err);
        goto out_assigned;
    }
    /* Partitions with nothing consumed yet have no position to commit. */
    list = rd_kafka_topic_partition_list_new(assigned->cnt > 0 ? assigned->cnt : 1);
    for (i = 0; i < assigned->cnt; i++)
        if (assigned->elems[i].offset >= 0)
            rd_kafka_topic_partition_list_add(list, assigned->elems[i].topic,
                                              assigned->elems[i].partition)
                ->offset = assigned->elems[i].offset;
    if (list->cnt > 0)
        rc = commit_list(c, list, async);
    rd_kafka_topic_partition_list_destroy(list);
out_assigned:
    if (assigned)
        rd_kafka_topic_partition_list_destroy(assigned);
    return rc;
}

int kafka_consumer_seek(struct kafka_consumer *c, const char *topic, int32_t partition,
                        int64_t offset, int timeout_ms)
{
    rd_kafka_topic_partition_list_t *list;
    rd_kafka_error_t *error;
    rd_kafka_resp_err_t err;

    if (!c || !topic)
        return -EINVAL;
    list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, topic, partition)->offset = offset;
    error = rd_kafka_seek_partitions(c->rk, list, timeout_ms);
    if (error) {
        err = rd_kafka_error_code(error);
        LOG_WARN("kafka seek '%s' [%d] failed: %s", topic, (int)partition,
                 rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else {
        err = list->elems[0].err;
        if (err)
            LOG_WARN("kafka seek '%s' [%d] failed: %s", topic, (int)partition,
                     rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(list);
    return err_code(err);
}

/* kafka.h's special offsets are librdkafka's, so they pass through unchanged. */
_Static_assert(KAFKA_OFFSET_BEGINNING == RD_KAFKA_OFFSET_BEGINNING, "offset constant");
_Static_assert(KAFKA_OFFSET_END == RD_KAFKA_OFFSET_END, "offset constant");
_Static_assert(KAFKA_OFFSET_STORED == RD_KAFKA_OFFSET_STORED, "offset constant");

static int assign_incremental(struct kafka_consumer *c, const struct kafka_partition *parts,
                              const int64_t *offsets, size_t nparts, bool add)
{
    rd_kafka_topic_partition_list_t *list;
    rd_kafka_error_t *error;
    int rc = 0;

    if (!c || (nparts > 0 && !parts) || nparts > INT_MAX)
        return -EINVAL;
    if (nparts == 0)
        return 0;
    list = rd_kafka_topic_partition_list_new((int)nparts);
    for (size_t i = 0; i < nparts; i++) {
        if (!parts[i].topic) {
            rd_kafka_topic_partition_list_destroy(list);
            return -EINVAL;
        }
        rd_kafka_topic_partition_list_add(list, parts[i].topic, parts[i].partition)->offset =
            offsets ? offsets[i] : RD_KAFKA_OFFSET_INVALID;
    }
    error =
        add ? rd_kafka_incremental_assign(c->rk, list) : rd_kafka_incremental_unassign(c->rk, list);
    if (error) {
        LOG_WARN("kafka incremental %s failed: %s", add ? "assign" : "unassign",
                 rd_kafka_error_string(error));
        rc = err_code(rd_kafka_error_code(error));
        rd_kafka_error_destroy(error);
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

int kafka_consumer_assign(struct kafka_consumer *c, const struct kafka_partition *parts,
                          const int64_t *offsets, size_t nparts)
{
    return assign_incremental(c, parts, offsets, nparts, true);
}

int kafka_consumer_unassign(struct kafka_consumer *c, const struct kafka_partition *parts,
                            size_t nparts)
{
    return assign_incremental(c, parts, NULL, nparts, false);
}

int kafka_consumer_high_watermark(struct kafka_consumer *c, const char *topic, int32_t partition,
                                  int64_t *high)
{
    int64_t low = -1;
    rd_kafka_resp_err_t err;

    if (!c || !topic || !high)
        return -EINVAL;
    err = rd_kafka_get_watermark_offsets(c->rk, topic, partition, &low, high);
    if (err)
        *high = -1;
    return err_code(err);
}

int kafka_consumer_query_high(struct kafka_consumer *c, const char *topic, int32_t partition,
                              int timeout_ms, int64_t *high)
{
    int64_t low = -1;
    rd_kafka_resp_err_t err;

    if (!c || !topic || !high)
        return -EINVAL;
    err = rd_kafka_query_watermark_offsets(c->rk, topic, partition, &low, high, timeout_ms);
    if (err)
        *high = -1;
    return err_code(err);
}

void kafka_consumer_free(struct kafka_consumer *c)
{
    rd_kafka_resp_err_t err;

    if (!c)
        return;
    /* Leaves the group; the revoke reaches the rebalance callback first. */
    err = rd_kafka_consumer_close(c->rk);
    if (err)
        LOG_WARN("kafka consumer close failed: %s", rd_kafka_err2str(err));
    if (c->queue)
        rd_kafka_queue_destroy(c->queue);
    rd_kafka_destroy(c->rk);
    free(c);
}

/* ---- messages ---- */

/* The EOF notification is not data, so it also reports non-zero here. */
int kafka_msg_error(const struct kafka_msg *m)
{
    return m ? err_code(RKM(m)->err) : -EINVAL;
}

const char *kafka_msg_errstr(const struct kafka_msg *m)
{
    if (!m || !RKM(m)->err)
        return "";
    return rd_kafka_message_errstr(RKM(m));
}

bool kafka_msg_is_eof(const struct kafka_msg *m)
{
    return m && RKM(m)->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
}

const char *kafka_msg_topic(const struct kafka_msg *m)
{
    return m && RKM(m)->rkt ? rd_kafka_topic_name(RKM(m)->rkt) : NULL;
}

int32_t kafka_msg_partition(const struct kafka_msg *m)
{
    return m ? RKM(m)->partition : -1;
}

int64_t kafka_msg_offset(const struct kafka_msg *m)
{
    return m ? RKM(m)->offset : -1;
}

int64_t kafka_msg_timestamp(const struct kafka_msg *m)
{
    rd_kafka_timestamp_type_t type;

    return m ? rd_kafka_message_timestamp(RKM(m), &type) : -1;
}

const void *kafka_msg_key(const struct kafka_msg *m, size_t *len)
{
    if (len)
        *len = m ? RKM(m)->key_len : 0;
    return m ? RKM(m)->key : NULL;
}

const void *kafka_msg_value(const struct kafka_msg *m, size_t *len)
{
    if (len)
        *len = m ? RKM(m)->len : 0;
    return m ? RKM(m)->payload : NULL;
}

/* A header present with a null value returns NULL too, with *len 0. */
const void *kafka_msg_header(const struct kafka_msg *m, const char *name, size_t *len)
{
    rd_kafka_headers_t *hdrs;
    const void *value = NULL;
    size_t size = 0;

    if (len)
        *len = 0;
    if (!m || !name || rd_kafka_message_headers(RKM(m), &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    if (rd_kafka_header_get_last(hdrs, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    if (len)
        *len = size;
    return value;
}

void kafka_msg_free(struct kafka_msg *m)
{
    if (!m)
        return;
    rd_kafka_message_destroy(RKM(m));
}

/* ---- admin ---- */

static int topics_result(rd_kafka_event_t *ev, char *errbuf, size_t errsize)
{
    const rd_kafka_CreateTopics_result_t *res;
    const rd_kafka_topic_result_t **results;
    rd_kafka_resp_err_t err;
    size_t i, cnt = 0;
    int rc = 0;

    err = rd_kafka_event_error(ev);
    if (err) {
        set_err(errbuf, errsize, "kafka create topics: %s", rd_kafka_event_error_string(ev));
        return err_code(err);
    }
    res = rd_kafka_event_CreateTopics_result(ev);
    if (!res) {
        set_err(errbuf, errsize, "kafka create topics: unexpected event %s",
                rd_kafka_event_name(ev));
        return -EINVAL;
    }
    results = rd_kafka_CreateTopics_result_topics(res, &cnt);
    for (i = 0; i < cnt; i++) {
        err = rd_kafka_topic_result_error(results[i]);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            continue;
        /* Report the first failure; the others are logged. */
        LOG_ERROR("kafka create topic '%s' failed: %s", rd_kafka_topic_result_name(results[i]),
                  rd_kafka_topic_result_error_string(results[i]));
        if (rc == 0) {
            set_err(errbuf, errsize, "kafka create topic '%s': %s",
                    rd_kafka_topic_result_name(results[i]),
                    rd_kafka_topic_result_error_string(results[i]));
            rc = err_code(err);
        }
    }
    return rc;
}

/*
 * Fills missing with the specs whose topic the cluster does not know (every spec
 * when metadata cannot be read, so CreateTopics reports the real error).
 */
static size_t missing_topics(rd_kafka_t *rk, const struct kafka_topic_spec *topics, size_t ntopics,
                             int timeout_ms, const struct kafka_topic_spec **missing)
{
    const struct rd_kafka_metadata *md = NULL;
    size_t n = 0;
    bool have_md = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR;
    for (size_t i = 0; i < ntopics; i++) {
        bool found = false;
        for (int j = 0; have_md && topics[i].name && j < md->topic_cnt && !found; j++)
            found = md->topics[j].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
                    strcmp(md->topics[j].topic, topics[i].name) == 0;
        if (!found)
            missing[n++] = &topics[i];
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    return n;
}

int kafka_ensure_topics(const char *bootstrap, const struct kafka_prop *props, size_t nprops,
                        const struct kafka_topic_spec *topics, size_t ntopics, int timeout_ms,
                        char *errbuf, size_t errsize)
{
    rd_kafka_NewTopic_t **newt = NULL;
    rd_kafka_AdminOptions_t *opts = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev;
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;
    char errstr[512];
    size_t i, made = 0;
    int rc = 0;

    if (ntopics == 0)
        return 0;
    if (!topics) {
        set_err(errbuf, errsize, "kafka topics missing");
        return -EINVAL;
    }
    conf = conf_build(bootstrap, NULL, 0, props, nprops, errbuf, errsize);
    if (!conf)
        return -EINVAL;
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        set_err(errbuf, errsize, "kafka admin client: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }

    /*
     * Ask for metadata first and create only what is missing: the common case
     * (topics exist) then needs no admin rights, and brokers without the
     * CreateTopics API (librdkafka's mock cluster) work when topics exist.
     */
    const struct kafka_topic_spec **missing = xcalloc(ntopics, sizeof(*missing));
    size_t nmissing = missing_topics(rk, topics, ntopics, timeout_ms, missing);
    if (nmissing == 0) {
        free(missing);
        rd_kafka_destroy(rk);
        return 0;
    }
    newt = xcalloc(nmissing, sizeof(*newt));
    for (made = 0; made < nmissing; made++) {
        const struct kafka_topic_spec *t = missing[made];

        /* -1 leaves the partition count or replication factor to the broker. */
        newt[made] = t->name
                         ? rd_kafka_NewTopic_new(t->name, t->partitions > 0 ? t->partitions : -1,
                                                 -1, errstr, sizeof(errstr))
                         : NULL;
        if (!newt[made]) {
            set_err(errbuf, errsize, "kafka topic '%s': %s", t->name ? t->name : "(null)",
                    t->name ? errstr : "no name");
            rc = -EINVAL;
            goto out_topics;
        }
        if (t->compacted &&
            rd_kafka_NewTopic_set_config(newt[made], "cleanup.policy", "compact") != 0) {
            made++;
            set_err(errbuf, errsize, "kafka topic '%s': cannot set cleanup.policy", t->name);
            rc = -EINVAL;
            goto out_topics;
        }
    }

    opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    if (rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, errstr, sizeof(errstr)) ||
        rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, errstr, sizeof(errstr))) {
        set_err(errbuf, errsize, "kafka create topics: %s", errstr);
        rc = -EINVAL;
        goto out_opts;
    }
    q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, newt, nmissing, opts, q);
    /* The request times out by itself; the margin only covers queueing. */
    ev = rd_kafka_queue_poll(q, timeout_ms + 1000);
    if (!ev) {
        set_err(errbuf, errsize, "kafka create topics: no answer in %d ms", timeout_ms);
        rc = KAFKA_ERR_TIMEOUT;
        goto out_queue;
    }
    rc = topics_result(ev, errbuf, errsize);
    rd_kafka_event_destroy(ev);

out_queue:
    rd_kafka_queue_destroy(q);
out_opts:
    rd_kafka_AdminOptions_destroy(opts);
out_topics:
    for (i = 0; i < made; i++)
        rd_kafka_NewTopic_destroy(newt[i]);
    free(newt);
    free(missing);
    rd_kafka_destroy(rk);
    return rc;
}
