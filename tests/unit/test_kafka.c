/*
 * Unit tests for kafka.c against a real Apache Kafka broker
 * (scripts/kafka-local.sh, KAFKA_BOOTSTRAP_SERVERS): topic creation,
 * produce/consume with keys and headers, commits and resume, seek,
 * transactions (commit, abort, consume-transform-produce), rebalance
 * callbacks, and the failure paths of a dead broker and a full queue.
 * Topic and group names carry the pid and the time so reruns never collide.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "unit_kafka.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "kafka.h"
#include "log.h"
#include "str.h"
#include "timeutil.h"

#define NMSG 100

static void unique_name(char *out, size_t size, const char *prefix)
{
    static int seq;
    snprintf(out, size, "%s-%d-%lld-%d", prefix, (int)getpid(), (long long)time_now_ms(), ++seq);
}

static void create_topic(const char *name, int partitions)
{
    char err[256] = "";
    struct kafka_topic_spec t = {.name = name, .partitions = partitions};
    int rc = kafka_ensure_topics(bootstrap(), NULL, 0, &t, 1, 10000, err, sizeof(err));
    if (rc != 0)
        fail_msg("kafka_ensure_topics(%s) = %d: %s", name, rc, err);
}

/* ---- delivery reports ---- */

struct delivery {
    atomic_int done;
    int err;
    int32_t partition;
    int64_t offset;
    char errstr[160];
};

static atomic_int deliveries;

static void on_delivery(void *opaque, int err, const char *errstr, int32_t partition,
                        int64_t offset)
{
    struct delivery *d = opaque;

    atomic_fetch_add(&deliveries, 1);
    if (!d)
        return;
    d->err = err;
    d->partition = partition;
    d->offset = offset;
    snprintf(d->errstr, sizeof(d->errstr), "%s", errstr ? errstr : "(null)");
    atomic_fetch_add(&d->done, 1);
}

static struct kafka_producer *producer(const struct kafka_prop *props, size_t nprops,
                                       const char *txn_id)
{
    char err[256] = "";
    struct kafka_producer *p =
        kafka_producer_new(bootstrap(), props, nprops, txn_id, on_delivery, err, sizeof(err));
    if (!p)
        fail_msg("kafka_producer_new: %s", err);
    return p;
}

static struct kafka_consumer *consumer(const char *group, const char *topic,
                                       const struct kafka_prop *props, size_t nprops)
{
    char err[256] = "";
    struct kafka_consumer *c =
        kafka_consumer_new(bootstrap(), group, props, nprops, err, sizeof(err));
    if (!c)
        fail_msg("kafka_consumer_new: %s", err);
    if (topic)
        assert_int_equal(kafka_consumer_subscribe(c, &topic, 1), 0);
    return c;
}

/* Next data message within timeout_ms; fails the test on an error message. */
static struct kafka_msg *next_msg(struct kafka_consumer *c, int timeout_ms)
{
    int64_t deadline = time_mono_ms() + timeout_ms;

    while (time_mono_ms() < deadline) {
        struct kafka_msg *m = kafka_consumer_poll(c, 100);
        if (!m)
            continue;
        if (kafka_msg_error(m) != 0)
            fail_msg("consumer error %d: %s", kafka_msg_error(m), kafka_msg_errstr(m));
        return m;
    }
    return NULL;
}

static void send_str(struct kafka_producer *p, const char *topic, const char *value,
                     struct delivery *d)
{
    assert_int_equal(kafka_producer_send(p, topic, -1, NULL, 0, value, strlen(value), NULL, 0, d),
                     0);
}

static bool value_is(const struct kafka_msg *m, const char *want)
{
    size_t len;
    const char *v = kafka_msg_value(m, &len);
    return len == strlen(want) && memcmp(v, want, len) == 0;
}

static bool value_has_prefix(const struct kafka_msg *m, const char *prefix)
{
    size_t len;
    const char *v = kafka_msg_value(m, &len);
    return len >= strlen(prefix) && memcmp(v, prefix, strlen(prefix)) == 0;
}

/* ---- admin ---- */

static int topic_partitions(const char *topic)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt;
    rd_kafka_t *rk;
    int n = -1;

    assert_int_equal(
        rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap(), errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(rk);
    rkt = rd_kafka_topic_new(rk, topic, NULL);
    assert_int_equal(rd_kafka_metadata(rk, 0, rkt, &md, 5000), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(md->topic_cnt, 1);
    if (md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return n;
}

/* The topic's cleanup.policy as the broker reports it, in out. */
static void topic_cleanup_policy(const char *topic, char *out, size_t size)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_ConfigResource_t *res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
    const rd_kafka_ConfigResource_t **rres;
    const rd_kafka_ConfigEntry_t **entries;
    rd_kafka_queue_t *q;
    rd_kafka_event_t *ev;
    rd_kafka_t *rk;
    size_t nres = 0, nent = 0, i;

    snprintf(out, size, "(not found)");
    assert_int_equal(
        rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap(), errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(rk);
    q = rd_kafka_queue_new(rk);
    rd_kafka_DescribeConfigs(rk, &res, 1, NULL, q);
    ev = rd_kafka_queue_poll(q, 10000);
    assert_non_null(ev);
    assert_int_equal(rd_kafka_event_error(ev), RD_KAFKA_RESP_ERR_NO_ERROR);
    rres =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &nres);
    assert_int_equal(nres, 1);
    entries = rd_kafka_ConfigResource_configs(rres[0], &nent);
    for (i = 0; i < nent; i++)
        if (strcmp(rd_kafka_ConfigEntry_name(entries[i]), "cleanup.policy") == 0)
            snprintf(out, size, "%s", rd_kafka_ConfigEntry_value(entries[i]));
    rd_kafka_event_destroy(ev);
    rd_kafka_ConfigResource_destroy(res);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}

static void test_ensure_topics(void **state)
{
    char plain[128], compact[128], err[256] = "", policy[64];
    (void)state;

    unique_name(plain, sizeof(plain), "t-plain");
    unique_name(compact, sizeof(compact), "t-compact");
    struct kafka_topic_spec specs[] = {
        {.name = plain, .partitions = 3},
        {.name = compact, .partitions = 2, .compacted = true},
    };
    assert_int_equal(kafka_ensure_topics(bootstrap(), NULL, 0, specs, 2, 10000, err, sizeof(err)),
                     0);
    /* Existing topics are left alone, not an error. */
    assert_int_equal(kafka_ensure_topics(bootstrap(), NULL, 0, specs, 2, 10000, err, sizeof(err)),
                     0);
    assert_int_equal(topic_partitions(plain), 3);
    assert_int_equal(topic_partitions(compact), 2);
    topic_cleanup_policy(compact, policy, sizeof(policy));
    assert_string_equal(policy, "compact");
    topic_cleanup_policy(plain, policy, sizeof(policy));
    assert_string_equal(policy, "delete");
    assert_int_equal(kafka_ensure_topics(bootstrap(), NULL, 0, NULL, 0, 1000, err, sizeof(err)), 0);
}

static void test_ensure_topics_failures(void **state)
{
    char ok[128], dead[64], err[256] = "";
    int64_t t0;
    (void)state;

    unique_name(ok, sizeof(ok), "t-ok");
    struct kafka_topic_spec specs[] = {
        {.name = ok, .partitions = 1},
        {.name = "bad topic name!", .partitions = 1},
    };
    int rc = kafka_ensure_topics(bootstrap(), NULL, 0, specs, 2, 10000, err, sizeof(err));
    assert_true(rc < 0);
    if (!strstr(err, "'bad topic name!'"))
        fail_msg("errbuf does not name the failed topic: %s", err);

    struct kafka_prop bad_prop = {"no.such.property", "1"};
    err[0] = '\0';
    assert_int_equal(
        kafka_ensure_topics(bootstrap(), &bad_prop, 1, specs, 1, 1000, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "no.such.property"));

    dead_bootstrap(dead, sizeof(dead));
    err[0] = '\0';
    t0 = time_mono_ms();
    rc = kafka_ensure_topics(dead, NULL, 0, specs, 1, 1500, err, sizeof(err));
    assert_true(rc < 0);
    assert_true(err[0] != '\0');
    assert_in_range(time_mono_ms() - t0, 0, 5000);
}

/* ---- produce and consume ---- */

static void test_produce_consume(void **state)
{
    static struct delivery d[NMSG];
    char topic[128], group[128], key[32], value[64], seq[16];
    int32_t key_partition[10];
    int i, got = 0;
    bool seen[NMSG] = {false};
    (void)state;

    memset(d, 0, sizeof(d));
    unique_name(topic, sizeof(topic), "t-pc");
    unique_name(group, sizeof(group), "g-pc");
    create_topic(topic, 3);

    struct kafka_producer *p = producer(NULL, 0, NULL);
    assert_true(kafka_producer_ping(p, 5000));
    for (i = 0; i < NMSG; i++) {
        snprintf(key, sizeof(key), "robot-%d", i % 10);
        snprintf(value, sizeof(value), "value-%d", i);
        snprintf(seq, sizeof(seq), "%d", i);
        struct kafka_header h[] = {
            {"seq", seq, strlen(seq)},
            {"ce_type", "robot.event", 11},
            {"ce_type", "robot.heartbeat", 15}, /* the last one wins */
        };
        assert_int_equal(
            kafka_producer_send(p, topic, -1, key, strlen(key), value, strlen(value), h, 3, &d[i]),
            0);
    }
    assert_int_equal(kafka_producer_flush(p, 15000), 0);
    assert_int_equal(kafka_producer_outstanding(p), 0);
    for (i = 0; i < NMSG; i++) {
        assert_int_equal(atomic_load(&d[i].done), 1);
        if (d[i].err != 0)
            fail_msg("message %d: delivery error %d: %s", i, d[i].err, d[i].errstr);
        assert_in_range(d[i].partition, 0, 2);
        assert_true(d[i].offset >= 0);
    }
    /* Same key, same partition. */
    for (i = 0; i < NMSG; i++) {
        if (i < 10)
            key_partition[i] = d[i].partition;
        else
            assert_int_equal(d[i].partition, key_partition[i % 10]);
    }
    kafka_producer_free(p, 1000);

    struct kafka_consumer *c = consumer(group, topic, NULL, 0);
    while (got < NMSG) {
        struct kafka_msg *m = next_msg(c, 20000);
        size_t len;
        const char *h;
        int64_t idx;

        if (!m)
            fail_msg("only %d of %d messages consumed", got, NMSG);
        assert_string_equal(kafka_msg_topic(m), topic);
        assert_false(kafka_msg_is_eof(m));
        assert_string_equal(kafka_msg_errstr(m), "");
        h = kafka_msg_header(m, "seq", &len);
        assert_non_null(h);
        assert_in_range(len, 1, sizeof(seq) - 1);
        memcpy(seq, h, len);
        seq[len] = '\0';
        assert_int_equal(str_to_int64(seq, &idx), 0);
        assert_in_range(idx, 0, NMSG - 1);
        assert_false(seen[idx]);
        seen[idx] = true;

        snprintf(key, sizeof(key), "robot-%d", (int)(idx % 10));
        snprintf(value, sizeof(value), "value-%d", (int)idx);
        h = kafka_msg_key(m, &len);
        assert_int_equal(len, strlen(key));
        assert_memory_equal(h, key, len);
        assert_true(value_is(m, value));
        h = kafka_msg_header(m, "ce_type", &len);
        assert_int_equal(len, 15);
        assert_memory_equal(h, "robot.heartbeat", len);
        assert_null(kafka_msg_header(m, "missing", &len));
        assert_int_equal(len, 0);
        assert_int_equal(kafka_msg_partition(m), d[idx].partition);
        assert_int_equal(kafka_msg_offset(m), d[idx].offset);
        assert_in_range(kafka_msg_timestamp(m), time_now_ms() - 120000, time_now_ms() + 1000);
        kafka_msg_free(m);
        got++;
    }
    kafka_consumer_free(c);
}

/*
 * Without a delivery callback (the stream-processor's producer: librdkafka
 * reports failures only), a flush still waits for every message; a prepared
 * topic is written through its kept handle, another one by name, and an
 * unknown partition of a prepared topic is refused at once.
 */
static void test_produce_without_callback(void **state)
{
    char prepared[128], other[128], group[128], value[64], err[256] = "";
    int got[2] = {0, 0}, next[2] = {0, 1};
    (void)state;

    unique_name(prepared, sizeof(prepared), "t-nocb-prep");
    unique_name(other, sizeof(other), "t-nocb-other");
    unique_name(group, sizeof(group), "g-nocb");
    create_topic(prepared, 2);
    create_topic(other, 2);
    struct kafka_producer *p =
        kafka_producer_new(bootstrap(), NULL, 0, NULL, NULL, err, sizeof(err));
    if (!p)
        fail_msg("kafka_producer_new: %s", err);
    const char *topics[] = {prepared};
    assert_int_equal(kafka_producer_prepare(p, topics, 1, 10000), 0);
    for (int i = 0; i < NMSG; i++) {
        snprintf(value, sizeof(value), "value-%d", i);
        assert_int_equal(
            kafka_producer_send(p, prepared, i % 2, "k", 1, value, strlen(value), NULL, 0, NULL),
            0);
        assert_int_equal(
            kafka_producer_send(p, other, -1, "k", 1, value, strlen(value), NULL, 0, NULL), 0);
    }
    assert_true(kafka_producer_send(p, prepared, 99, "k", 1, "x", 1, NULL, 0, NULL) < 0);
    assert_int_equal(kafka_producer_flush(p, 15000), 0);
    assert_int_equal(kafka_producer_outstanding(p), 0);
    kafka_producer_free(p, 1000);

    const char *both[] = {prepared, other};
    struct kafka_consumer *c = consumer(group, NULL, NULL, 0);
    assert_int_equal(kafka_consumer_subscribe(c, both, 2), 0);
    while (got[0] + got[1] < 2 * NMSG) {
        struct kafka_msg *m = next_msg(c, 20000);
        if (!m)
            fail_msg("only %d + %d of %d messages consumed", got[0], got[1], 2 * NMSG);
        int t = strcmp(kafka_msg_topic(m), prepared) == 0 ? 0 : 1;
        if (t == 1) { /* one key: one partition, in order */
            assert_string_equal(kafka_msg_topic(m), other);
            snprintf(value, sizeof(value), "value-%d", got[1]);
            assert_true(value_is(m, value));
        } else { /* value-i went to partition i % 2, in order there */
            int32_t part = kafka_msg_partition(m);
            assert_in_range(part, 0, 1);
            snprintf(value, sizeof(value), "value-%d", next[part]);
            assert_true(value_is(m, value));
            next[part] += 2;
        }
        got[t]++;
        kafka_msg_free(m);
    }
    assert_int_equal(got[0], NMSG);
    assert_int_equal(got[1], NMSG);
    assert_null(next_msg(c, 1000)); /* nothing more: the refused message never went out */
    kafka_consumer_free(c);
}

/* commit_msg, resume in a new member of the group, commit of positions, seek. */
static void test_commit_resume_seek(void **state)
{
    char topic[128], group[128], value[32];
    struct kafka_msg *m;
    int i;
    (void)state;

    unique_name(topic, sizeof(topic), "t-commit");
    unique_name(group, sizeof(group), "g-commit");
    create_topic(topic, 1);
    struct kafka_producer *p = producer(NULL, 0, NULL);
    for (i = 0; i < 10; i++) {
        snprintf(value, sizeof(value), "v%d", i);
        send_str(p, topic, value, NULL);
    }
    assert_int_equal(kafka_producer_flush(p, 10000), 0);

    struct kafka_consumer *c = consumer(group, topic, NULL, 0);
    for (i = 0; i < 5; i++) {
        m = next_msg(c, 15000);
        assert_non_null(m);
        assert_int_equal(kafka_msg_offset(m), i);
        if (i == 4)
            assert_int_equal(kafka_consumer_commit_msg(c, m, false), 0);
        kafka_msg_free(m);
    }
    assert_int_equal(kafka_consumer_commit_msg(c, NULL, false), -EINVAL);
    kafka_consumer_free(c);

    /* A new member resumes after the committed message. */
    c = consumer(group, topic, NULL, 0);
    for (i = 5; i < 10; i++) {
        m = next_msg(c, 15000);
        assert_non_null(m);
        assert_int_equal(kafka_msg_offset(m), i);
        snprintf(value, sizeof(value), "v%d", i);
        assert_true(value_is(m, value));
        kafka_msg_free(m);
    }
    assert_int_equal(kafka_consumer_commit(c, false), 0); /* position 10 */
    assert_int_equal(kafka_consumer_seek(c, topic, 0, 2, 5000), 0);
    m = next_msg(c, 10000);
    assert_non_null(m);
    assert_int_equal(kafka_msg_offset(m), 2);
    assert_true(value_is(m, "v2"));
    kafka_msg_free(m);
    kafka_consumer_free(c);

    /* The position commit (10) holds, not the seek. */
    send_str(p, topic, "v10", NULL);
    assert_int_equal(kafka_producer_flush(p, 10000), 0);
    c = consumer(group, topic, NULL, 0);
    m = next_msg(c, 15000);
    assert_non_null(m);
    assert_int_equal(kafka_msg_offset(m), 10);
    assert_true(value_is(m, "v10"));
    kafka_msg_free(m);
    kafka_consumer_free(c);
    kafka_producer_free(p, 1000);
}

/* A consumer that never subscribed reads partitions it assigns itself, from the
 * beginning or from the end, and stops reading one it unassigns. */
static void test_assign_unassign_watermark(void **state)
{
    char topic[128], group[128];
    struct kafka_msg *m;
    int64_t high = 0;
    (void)state;

    unique_name(topic, sizeof(topic), "t-assign");
    unique_name(group, sizeof(group), "g-assign");
    create_topic(topic, 2);
    struct kafka_producer *p = producer(NULL, 0, NULL);
    for (int32_t part = 0; part < 2; part++)
        for (int i = 0; i < 3; i++)
            assert_int_equal(kafka_producer_send(p, topic, part, NULL, 0, "x", 1, NULL, 0, NULL),
                             0);
    assert_int_equal(kafka_producer_flush(p, 10000), 0);

    struct kafka_consumer *c = consumer(group, NULL, NULL, 0);
    struct kafka_partition parts[] = {{topic, 0}, {topic, 1}};
    int64_t from[] = {KAFKA_OFFSET_BEGINNING, KAFKA_OFFSET_END};
    assert_int_equal(kafka_consumer_assign(c, parts, from, 2), 0);
    for (int i = 0; i < 3; i++) {
        m = next_msg(c, 15000);
        assert_non_null(m);
        assert_int_equal(kafka_msg_partition(m), 0);
        assert_int_equal(kafka_msg_offset(m), i);
        kafka_msg_free(m);
    }
    assert_int_equal(kafka_consumer_high_watermark(c, topic, 0, &high), 0);
    assert_int_equal(high, 3);
    /* Partition 1 started at its end: only what is produced now arrives. */
    assert_int_equal(kafka_producer_send(p, topic, 1, NULL, 0, "y", 1, NULL, 0, NULL), 0);
    assert_int_equal(kafka_producer_flush(p, 10000), 0);
    m = next_msg(c, 15000);
    assert_non_null(m);
    assert_int_equal(kafka_msg_partition(m), 1);
    assert_int_equal(kafka_msg_offset(m), 3);
    kafka_msg_free(m);

    /* Unassigned, partition 0 is not read any more. */
    assert_int_equal(kafka_consumer_unassign(c, parts, 1), 0);
    assert_int_equal(kafka_producer_send(p, topic, 0, NULL, 0, "z", 1, NULL, 0, NULL), 0);
    assert_int_equal(kafka_producer_flush(p, 10000), 0);
    assert_null(next_msg(c, 1500));

    assert_int_equal(kafka_consumer_assign(NULL, parts, from, 1), -EINVAL);
    assert_int_equal(kafka_consumer_assign(c, NULL, NULL, 1), -EINVAL);
    assert_int_equal(kafka_consumer_assign(c, parts, NULL, 0), 0);
    assert_int_equal(kafka_consumer_high_watermark(c, NULL, 0, &high), -EINVAL);
    kafka_consumer_free(c);
    kafka_producer_free(p, 1000);
}

/* ---- rebalance ---- */

struct rebalance_log {
    int assigned_calls, revoked_calls, lost_calls;
    unsigned assigned_mask, revoked_mask;
    char topic[128];
    bool wrong_topic;
};

static void on_rebalance(void *ud, bool assigned, bool lost, const struct kafka_partition *parts,
                         size_t nparts)
{
    struct rebalance_log *r = ud;
    size_t i;

    if (assigned)
        r->assigned_calls++;
    else
        r->revoked_calls++;
    if (lost)
        r->lost_calls++;
    for (i = 0; i < nparts; i++) {
        if (strcmp(parts[i].topic, r->topic) != 0)
            r->wrong_topic = true;
        if (assigned)
            r->assigned_mask |= 1u << parts[i].partition;
        else
            r->revoked_mask |= 1u << parts[i].partition;
    }
}

static void test_rebalance_callback(void **state)
{
    struct rebalance_log r = {0};
    char group[128];
    const char *topic = r.topic;
    int64_t deadline;
    (void)state;

    unique_name(r.topic, sizeof(r.topic), "t-rebalance");
    unique_name(group, sizeof(group), "g-rebalance");
    create_topic(r.topic, 3);
    struct kafka_consumer *c = consumer(group, NULL, NULL, 0);
    kafka_consumer_on_rebalance(c, on_rebalance, &r);
    assert_int_equal(kafka_consumer_subscribe(c, &topic, 1), 0);
    deadline = time_mono_ms() + 15000;
    while (r.assigned_mask != 7u && time_mono_ms() < deadline)
        kafka_msg_free(kafka_consumer_poll(c, 100));
    assert_int_equal(r.assigned_mask, 7u);
    assert_true(r.assigned_calls >= 1);
    assert_int_equal(r.revoked_calls, 0);
    assert_false(r.wrong_topic);
    /* Leaving the group revokes everything, through the same callback. */
    kafka_consumer_free(c);
    assert_int_equal(r.revoked_mask, 7u);
    assert_int_equal(r.lost_calls, 0);
}

/* An unknown topic shows up as an error message, not as data. */
static void test_consumer_error_message(void **state)
{
    char group[128], topic[128], err[256] = "";
    struct kafka_prop fast = {"topic.metadata.propagation.max.ms", "10"};
    struct kafka_msg *m = NULL;
    int64_t deadline;
    (void)state;

    assert_null(kafka_consumer_new(bootstrap(), NULL, NULL, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "group"));
    struct kafka_prop bad = {"isolation.level", "sometimes"};
    assert_null(kafka_consumer_new(bootstrap(), "g", &bad, 1, err, sizeof(err)));
    assert_non_null(strstr(err, "isolation.level"));

    unique_name(group, sizeof(group), "g-missing");
    unique_name(topic, sizeof(topic), "t-missing");
    struct kafka_consumer *c = consumer(group, topic, &fast, 1);
    deadline = time_mono_ms() + 15000;
    while (!m && time_mono_ms() < deadline)
        m = kafka_consumer_poll(c, 100);
    assert_non_null(m);
    assert_true(kafka_msg_error(m) < 0);
    assert_false(kafka_msg_is_eof(m));
    assert_true(strlen(kafka_msg_errstr(m)) > 0);
    assert_int_equal(kafka_consumer_commit_msg(c, m, false), -EINVAL);
    kafka_msg_free(m);
    kafka_consumer_free(c);
    kafka_msg_free(NULL);
    kafka_consumer_free(NULL);
}

/* ---- transactions ---- */

static void test_txn_commit_abort(void **state)
{
    char topic[128], txn_id[128], group[128], group2[128], value[32];
    struct kafka_prop uncommitted = {"isolation.level", "read_uncommitted"};
    int i, committed = 0, aborted = 0, aborted_uncommitted = 0;
    bool done = false, done2 = false;
    int64_t deadline;
    (void)state;

    unique_name(topic, sizeof(topic), "t-txn");
    unique_name(txn_id, sizeof(txn_id), "txn");
    unique_name(group, sizeof(group), "g-txn");
    unique_name(group2, sizeof(group2), "g-txn-ru");
    create_topic(topic, 1);
    struct kafka_producer *p = producer(NULL, 0, txn_id);

    assert_int_equal(kafka_txn_begin(p), 0);
    for (i = 0; i < 5; i++) {
        snprintf(value, sizeof(value), "committed-%d", i);
        send_str(p, topic, value, NULL);
    }
    assert_int_equal(kafka_txn_commit(p, 10000), 0);
    assert_int_equal(kafka_txn_begin(p), 0);
    for (i = 0; i < 5; i++) {
        snprintf(value, sizeof(value), "aborted-%d", i);
        send_str(p, topic, value, NULL);
    }
    assert_int_equal(kafka_producer_flush(p, 10000), 0); /* on the broker, then aborted */
    assert_int_equal(kafka_txn_abort(p, 10000), 0);
    assert_int_equal(kafka_txn_begin(p), 0);
    send_str(p, topic, "marker", NULL);
    assert_int_equal(kafka_txn_commit(p, 10000), 0);
    /* Committing twice is a state error, not one of the three classes. */
    int rc = kafka_txn_commit(p, 1000);
    assert_true(rc < 0);
    kafka_producer_free(p, 1000);

    /* read_committed (the default) skips the aborted batch; read_uncommitted sees it. */
    struct kafka_consumer *c = consumer(group, topic, NULL, 0);
    struct kafka_consumer *c2 = consumer(group2, topic, &uncommitted, 1);
    deadline = time_mono_ms() + 20000;
    while ((!done || !done2) && time_mono_ms() < deadline) {
        struct kafka_msg *m;
        if (!done && (m = kafka_consumer_poll(c, 50)) != NULL) {
            assert_int_equal(kafka_msg_error(m), 0);
            if (value_is(m, "marker"))
                done = true;
            else if (value_has_prefix(m, "aborted-"))
                aborted++;
            else
                committed++;
            kafka_msg_free(m);
        }
        if (!done2 && (m = kafka_consumer_poll(c2, 50)) != NULL) {
            assert_int_equal(kafka_msg_error(m), 0);
            if (value_is(m, "marker"))
                done2 = true;
            else if (value_has_prefix(m, "aborted-"))
                aborted_uncommitted++;
            kafka_msg_free(m);
        }
    }
    assert_true(done);
    assert_true(done2);
    assert_int_equal(committed, 5);
    assert_int_equal(aborted, 0);
    assert_int_equal(aborted_uncommitted, 5);
    kafka_consumer_free(c);
    kafka_consumer_free(c2);
}

/* Consume, transform, produce, and commit the input offsets in the transaction. */
static void test_txn_send_offsets(void **state)
{
    char in[128], out[128], txn_id[128], group[128], group_out[128], value[64], want[64];
    struct kafka_msg *m;
    int i;
    (void)state;

    unique_name(in, sizeof(in), "t-in");
    unique_name(out, sizeof(out), "t-out");
    unique_name(txn_id, sizeof(txn_id), "txn-ctp");
    unique_name(group, sizeof(group), "g-ctp");
    unique_name(group_out, sizeof(group_out), "g-ctp-out");
    create_topic(in, 1);
    create_topic(out, 1);

    struct kafka_producer *plain = producer(NULL, 0, NULL);
    for (i = 0; i < 10; i++) {
        snprintf(value, sizeof(value), "in-%d", i);
        send_str(plain, in, value, NULL);
    }
    assert_int_equal(kafka_producer_flush(plain, 10000), 0);
    /* Transaction calls need a transactional producer. */
    assert_int_equal(kafka_txn_begin(plain), -EINVAL);

    struct kafka_producer *tp = producer(NULL, 0, txn_id);
    struct kafka_consumer *idle = consumer(group, NULL, NULL, 0);
    assert_int_equal(kafka_txn_begin(tp), 0);
    assert_int_equal(kafka_txn_send_offsets(tp, idle, 5000), 0); /* nothing assigned */
    kafka_consumer_free(idle);

    struct kafka_consumer *c = consumer(group, in, NULL, 0);
    for (i = 0; i < 10; i++) {
        size_t len;
        const char *v;

        m = next_msg(c, 15000);
        assert_non_null(m);
        v = kafka_msg_value(m, &len);
        snprintf(value, sizeof(value), "out-%.*s", (int)len, v);
        send_str(tp, out, value, NULL);
        kafka_msg_free(m);
    }
    assert_int_equal(kafka_txn_send_offsets(tp, c, 10000), 0);
    assert_int_equal(kafka_txn_commit(tp, 10000), 0);
    kafka_consumer_free(c); /* commits nothing by itself */
    kafka_producer_free(tp, 1000);

    send_str(plain, in, "in-10", NULL);
    assert_int_equal(kafka_producer_flush(plain, 10000), 0);
    kafka_producer_free(plain, 1000);

    struct kafka_consumer *again = consumer(group, in, NULL, 0);
    struct kafka_consumer *reader = consumer(group_out, out, NULL, 0);
    m = next_msg(again, 15000);
    assert_non_null(m);
    assert_int_equal(kafka_msg_offset(m), 10);
    assert_true(value_is(m, "in-10"));
    kafka_msg_free(m);
    for (i = 0; i < 10; i++) {
        m = next_msg(reader, 15000);
        assert_non_null(m);
        snprintf(want, sizeof(want), "out-in-%d", i);
        assert_true(value_is(m, want));
        kafka_msg_free(m);
    }
    kafka_consumer_free(again);
    kafka_consumer_free(reader);
}

/* Explicit positions go into the transaction as they are, not the consumer's. */
static void test_txn_send_positions(void **state)
{
    char in[128], txn_id[128], group[128];
    struct kafka_msg *m;
    (void)state;

    unique_name(in, sizeof(in), "t-pos");
    unique_name(txn_id, sizeof(txn_id), "txn-pos");
    unique_name(group, sizeof(group), "g-pos");
    create_topic(in, 1);
    struct kafka_producer *plain = producer(NULL, 0, NULL);
    for (int i = 0; i < 8; i++)
        send_str(plain, in, "v", NULL);
    assert_int_equal(kafka_producer_flush(plain, 10000), 0);
    kafka_producer_free(plain, 1000);

    struct kafka_producer *tp = producer(NULL, 0, txn_id);
    struct kafka_consumer *c = consumer(group, in, NULL, 0);
    for (int i = 0; i < 8; i++) {
        m = next_msg(c, 15000);
        assert_non_null(m);
        kafka_msg_free(m);
    }
    struct kafka_partition part = {in, 0};
    int64_t next = 4, bad = -1;
    assert_int_equal(kafka_txn_begin(tp), 0);
    assert_int_equal(kafka_txn_send_positions(tp, c, &part, &bad, 1, 5000), -EINVAL);
    assert_int_equal(kafka_txn_send_positions(tp, c, &part, NULL, 0, 5000), 0);
    assert_int_equal(kafka_txn_send_positions(tp, c, &part, &next, 1, 10000), 0);
    assert_int_equal(kafka_txn_commit(tp, 10000), 0);
    kafka_consumer_free(c);
    kafka_producer_free(tp, 1000);

    c = consumer(group, in, NULL, 0);
    m = next_msg(c, 15000);
    assert_non_null(m);
    assert_int_equal(kafka_msg_offset(m), 4);
    kafka_msg_free(m);
    kafka_consumer_free(c);
}

/* A second producer with the same transactional.id fences the first: fatal. */
static void test_txn_fenced(void **state)
{
    char topic[128], txn_id[128];
    struct delivery d = {0};
    int rc;
    (void)state;

    unique_name(topic, sizeof(topic), "t-fenced");
    unique_name(txn_id, sizeof(txn_id), "txn-fenced");
    create_topic(topic, 1);
    struct kafka_producer *old = producer(NULL, 0, txn_id);
    struct kafka_producer *new_one = producer(NULL, 0, txn_id);

    rc = kafka_txn_begin(old);
    if (rc == 0) {
        send_str(old, topic, "zombie", &d);
        rc = kafka_txn_commit(old, 10000);
    }
    assert_int_equal(rc, KAFKA_ERR_FATAL);
    /* ... and says it was fenced, unlike a producer without a fatal error */
    assert_true(kafka_producer_fenced(old));
    assert_false(kafka_producer_fenced(new_one));
    assert_false(kafka_producer_fenced(NULL));
    /* The fenced producer refuses new work with the same class. */
    assert_int_equal(kafka_producer_send(old, topic, -1, NULL, 0, "x", 1, NULL, 0, NULL),
                     KAFKA_ERR_FATAL);
    kafka_producer_free(old, 1000);

    assert_int_equal(kafka_txn_begin(new_one), 0);
    send_str(new_one, topic, "alive", NULL);
    assert_int_equal(kafka_txn_commit(new_one, 10000), 0);
    kafka_producer_free(new_one, 1000);
}

/* ---- broker down ---- */

static void test_dead_broker(void **state)
{
    char dead[64], err[256] = "";
    struct delivery d = {0};
    struct kafka_prop props[] = {{"message.timeout.ms", "2000"}};
    int64_t t0, deadline;
    (void)state;

    dead_bootstrap(dead, sizeof(dead));
    struct kafka_producer *p =
        kafka_producer_new(dead, props, 1, NULL, on_delivery, err, sizeof(err));
    assert_non_null(p);
    t0 = time_mono_ms();
    assert_int_equal(kafka_producer_send(p, "nowhere", -1, "k", 1, "v", 1, NULL, 0, &d), 0);
    assert_false(kafka_producer_ping(p, 300));
    assert_int_equal(kafka_producer_flush(p, 100), KAFKA_ERR_TIMEOUT);
    assert_int_equal(kafka_producer_outstanding(p), 1);
    deadline = t0 + 8000;
    while (!atomic_load(&d.done) && time_mono_ms() < deadline)
        time_sleep_ms(20);
    assert_int_equal(atomic_load(&d.done), 1);
    /* never sent anywhere: the broker certainly did not store it */
    assert_int_equal(d.err, KAFKA_ERR_NOT_PERSISTED);
    assert_true(strlen(d.errstr) > 0);
    assert_int_equal(kafka_producer_outstanding(p), 0);
    kafka_producer_free(p, 0);

    struct kafka_prop bad = {"acks", "most"};
    assert_null(kafka_producer_new(dead, &bad, 1, NULL, on_delivery, err, sizeof(err)));
    assert_non_null(strstr(err, "acks"));
    assert_null(kafka_producer_new(NULL, NULL, 0, NULL, on_delivery, err, sizeof(err)));
    kafka_producer_free(NULL, 0);
}

/* A full queue waits about a second, then gives up; free fails what is left. */
static void test_queue_full(void **state)
{
    char dead[64], err[256] = "";
    struct delivery d1 = {0}, d2 = {0};
    struct kafka_prop props[] = {{"queue.buffering.max.messages", "1"}};
    int64_t t0;
    (void)state;

    dead_bootstrap(dead, sizeof(dead));
    struct kafka_producer *p =
        kafka_producer_new(dead, props, 1, NULL, on_delivery, err, sizeof(err));
    assert_non_null(p);
    assert_int_equal(kafka_producer_send(p, "nowhere", -1, NULL, 0, "a", 1, NULL, 0, &d1), 0);
    t0 = time_mono_ms();
    struct kafka_header h = {"x", "y", 1};
    assert_int_equal(kafka_producer_send(p, "nowhere", -1, NULL, 0, "b", 1, &h, 1, &d2),
                     KAFKA_ERR_QUEUE_FULL);
    assert_in_range(time_mono_ms() - t0, 900, 3000);
    assert_int_equal(kafka_producer_send(p, NULL, -1, NULL, 0, "b", 1, NULL, 0, NULL), -EINVAL);
    kafka_producer_free(p, 100);
    assert_int_equal(atomic_load(&d1.done), 1);
    assert_true(d1.err < 0);
    assert_int_equal(atomic_load(&d2.done), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ensure_topics),      cmocka_unit_test(test_ensure_topics_failures),
        cmocka_unit_test(test_produce_consume),    cmocka_unit_test(test_commit_resume_seek),
        cmocka_unit_test(test_rebalance_callback), cmocka_unit_test(test_consumer_error_message),
        cmocka_unit_test(test_txn_commit_abort),   cmocka_unit_test(test_txn_send_offsets),
        cmocka_unit_test(test_txn_fenced),         cmocka_unit_test(test_dead_broker),
        cmocka_unit_test(test_queue_full),         cmocka_unit_test(test_assign_unassign_watermark),
        cmocka_unit_test(test_txn_send_positions), cmocka_unit_test(test_produce_without_callback),
    };
    log_set_level(LOG_LEVEL_WARN);
    return cmocka_run_group_tests_name("kafka", tests, NULL, NULL);
}
