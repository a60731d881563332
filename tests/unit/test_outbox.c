/*
 * Unit tests for outbox.c against a real Redis (REDIS_URL) and a real Apache
 * Kafka (KAFKA_BOOTSTRAP_SERVERS): entries are relayed in stream order and
 * deleted once acknowledged, unusable ones are skipped, one relay holds the
 * lease (a second one on the same stream relays nothing until the first
 * stops), a foreign lease is taken over once it expires, and entries survive
 * a broker nobody can reach without loss or reordering. Stream and topic
 * names carry the pid and the time so reruns never collide.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "unit_kafka.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "kafka.h"
#include "metrics.h"
#include "outbox.h"
#include "redis.h"
#include "timeutil.h"

#define NMSG 30

static const char *env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("%s is not set: start scripts/redis-local.sh and scripts/kafka-local.sh "
                 "and export what they print",
                 name);
    return v;
}

static struct redis *redis_open(void)
{
    char err[256] = "";
    struct redis_options opt = {.url = env("REDIS_URL")};
    struct redis *r = redis_new(&opt, err, sizeof(err));
    if (!r)
        fail_msg("redis_new: %s", err);
    return r;
}

static void unique_name(char *out, size_t size, const char *prefix)
{
    static int seq;
    snprintf(out, size, "%s-%d-%lld-%d", prefix, (int)getpid(), (long long)time_now_ms(), ++seq);
}

static void create_topic(const char *name)
{
    char err[256] = "";
    struct kafka_topic_spec t = {.name = name, .partitions = 1};
    if (kafka_ensure_topics(env("KAFKA_BOOTSTRAP_SERVERS"), NULL, 0, &t, 1, 10000, err,
                            sizeof(err)) != 0)
        fail_msg("kafka_ensure_topics(%s): %s", name, err);
}

static struct kafka_producer *producer(const char *bootstrap)
{
    char err[256] = "";
    struct kafka_prop props[] = {{"message.timeout.ms", "1500"}};
    struct kafka_producer *p =
        kafka_producer_new(bootstrap, props, 1, NULL, outbox_on_delivery, err, sizeof(err));
    if (!p)
        fail_msg("kafka_producer_new: %s", err);
    return p;
}

static void xadd(struct redis *r, const char *stream, const char *key, const char *value)
{
    redisReply *rep =
        value ? redis_cmd(r, "XADD", stream, "*", "key", key, "value", value, (char *)NULL)
              : redis_cmd(r, "XADD", stream, "*", "nokey", "x", (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    freeReplyObject(rep);
}

static long long xlen(struct redis *r, const char *stream)
{
    redisReply *rep = redis_cmd(r, "XLEN", stream, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    long long n = rep->integer;
    freeReplyObject(rep);
    return n;
}

static bool wait_xlen(struct redis *r, const char *stream, long long want, int timeout_ms)
{
    int64_t deadline = time_mono_ms() + timeout_ms;
    while (time_mono_ms() < deadline) {
        if (xlen(r, stream) == want)
            return true;
        time_sleep_ms(50);
    }
    return xlen(r, stream) == want;
}

/* ---- the relay under test ---- */

struct relay {
    char topic[128];
    atomic_int ticks, last_ticks;
    struct outbox *ob;
};

static bool map_entry(void *ud, const char *id, const redisReply *fields, struct outbox_msg *m)
{
    struct relay *rl = ud;
    (void)id;
    const redisReply *key = outbox_field(fields, "key"), *value = outbox_field(fields, "value");
    if (!key || !value)
        return false;
    m->topic = rl->topic;
    m->key = key->str;
    m->key_len = key->len;
    assert_int_equal(buf_append(&m->scratch, value->str, value->len), 0);
    m->value = m->scratch.data;
    m->value_len = m->scratch.len;
    snprintf(m->traceparent, sizeof(m->traceparent), "%s",
             "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    m->headers[0] = (struct kafka_header){"traceparent", m->traceparent, strlen(m->traceparent)};
    m->nheaders = 1;
    return true;
}

static void on_tick(void *ud, struct redis *r, bool stopping)
{
    struct relay *rl = ud;
    assert_non_null(r);
    if (stopping)
        atomic_fetch_add(&rl->last_ticks, 1);
    else
        atomic_fetch_add(&rl->ticks, 1);
}

static void relay_start(struct relay *rl, const char *stream, struct kafka_producer *p,
                        struct metrics *m, int64_t lease_ms)
{
    char err[256] = "";
    const struct outbox_config cfg = {
        .name = "test outbox",
        .stream = stream,
        .producer = p,
        .lease_ms = lease_ms,
        .poll_ms = 50,
        .backoff_ms = 100,
        .batch = 7, /* several rounds for NMSG */
        .metrics = m,
        .relayed_metric = "test_outbox_relayed_total",
        .relayed_help = "relayed",
        .pending_metric = "test_outbox_pending",
        .pending_help = "pending",
        .map = map_entry,
        .on_tick = on_tick,
        .ud = rl,
    };
    rl->ob = outbox_new(&cfg, redis_open(), err, sizeof(err));
    if (!rl->ob)
        fail_msg("outbox_new: %s", err);
}

/* Reads n messages of topic from its start and checks they are key k, values v0..v{n-1}. */
static void expect_topic(const char *topic, int first, int n)
{
    char err[256] = "";
    struct kafka_prop props[] = {{"auto.offset.reset", "earliest"}};
    char group[160];
    unique_name(group, sizeof(group), "test-outbox-g");
    struct kafka_consumer *c =
        kafka_consumer_new(env("KAFKA_BOOTSTRAP_SERVERS"), group, props, 1, err, sizeof(err));
    if (!c)
        fail_msg("kafka_consumer_new: %s", err);
    assert_int_equal(kafka_consumer_subscribe(c, &topic, 1), 0);
    int got = 0;
    int64_t deadline = time_mono_ms() + 20000;
    while (got < n && time_mono_ms() < deadline) {
        struct kafka_msg *m = kafka_consumer_poll(c, 100);
        if (!m)
            continue;
        if (kafka_msg_error(m) != 0 || kafka_msg_is_eof(m)) {
            kafka_msg_free(m);
            continue;
        }
        size_t len, klen, hlen;
        const char *v = kafka_msg_value(m, &len);
        const char *k = kafka_msg_key(m, &klen);
        char want[32];
        snprintf(want, sizeof(want), "v%d", first + got);
        assert_int_equal(len, strlen(want));
        assert_memory_equal(v, want, len);
        assert_int_equal(klen, 1);
        assert_memory_equal(k, "k", 1);
        assert_non_null(kafka_msg_header(m, "traceparent", &hlen));
        assert_int_equal(hlen, 55);
        got++;
        kafka_msg_free(m);
    }
    assert_int_equal(got, n);
    /* nothing more: no entry was produced twice in this run */
    struct kafka_msg *extra = NULL;
    int64_t quiet = time_mono_ms() + 1000;
    while (!extra && time_mono_ms() < quiet) {
        extra = kafka_consumer_poll(c, 100);
        if (extra && (kafka_msg_error(extra) != 0 || kafka_msg_is_eof(extra))) {
            kafka_msg_free(extra);
            extra = NULL;
        }
    }
    assert_null(extra);
    kafka_consumer_free(c);
}

static void add_values(struct redis *r, const char *stream, int first, int n)
{
    char v[32];
    for (int i = first; i < first + n; i++) {
        snprintf(v, sizeof(v), "v%d", i);
        xadd(r, stream, "k", v);
    }
}

static bool rendered(struct metrics *m, const char *line)
{
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(metrics_render(m, &out), 0);
    bool found = out.data && strstr(out.data, line) != NULL;
    buf_release(&out);
    return found;
}

/* ---- tests ---- */

static void test_relays_in_order_and_deletes(void **state)
{
    (void)state;
    char stream[128];
    struct relay rl = {0};
    unique_name(stream, sizeof(stream), "test:outbox");
    unique_name(rl.topic, sizeof(rl.topic), "test-outbox");
    create_topic(rl.topic);
    struct redis *r = redis_open();
    add_values(r, stream, 0, 10);
    xadd(r, stream, NULL, NULL); /* unusable: skipped, deleted, not produced */
    add_values(r, stream, 10, NMSG - 10);
    struct kafka_producer *p = producer(env("KAFKA_BOOTSTRAP_SERVERS"));
    struct metrics *m = metrics_new();
    relay_start(&rl, stream, p, m, 5000);
    assert_true(wait_xlen(r, stream, 0, 20000));
    expect_topic(rl.topic, 0, NMSG);
    assert_true(rendered(m, "test_outbox_relayed_total 31"));
    /* a later write is relayed after a kick, without waiting for anything else */
    add_values(r, stream, NMSG, 1);
    outbox_kick(rl.ob);
    assert_true(wait_xlen(r, stream, 0, 10000));
    assert_true(atomic_load(&rl.ticks) > 0);
    outbox_free(rl.ob);
    assert_int_equal(atomic_load(&rl.last_ticks), 1);
    /* the lease was released on stop */
    char lease[160];
    snprintf(lease, sizeof(lease), "%s:lease", stream);
    redisReply *rep = redis_cmd(r, "EXISTS", lease, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    kafka_producer_free(p, 2000);
    metrics_free(m);
    redis_free(r);
}

static void test_one_relay_holds_the_lease(void **state)
{
    (void)state;
    char stream[128];
    struct relay a = {0}, b = {0};
    unique_name(stream, sizeof(stream), "test:outbox");
    unique_name(a.topic, sizeof(a.topic), "test-outbox-a");
    unique_name(b.topic, sizeof(b.topic), "test-outbox-b");
    create_topic(a.topic);
    create_topic(b.topic);
    struct redis *r = redis_open();
    struct kafka_producer *p = producer(env("KAFKA_BOOTSTRAP_SERVERS"));
    struct metrics *ma = metrics_new(), *mb = metrics_new();
    relay_start(&a, stream, p, ma, 5000);
    time_sleep_ms(300); /* a holds the lease */
    relay_start(&b, stream, p, mb, 5000);
    add_values(r, stream, 0, 10);
    assert_true(wait_xlen(r, stream, 0, 10000));
    time_sleep_ms(300);
    assert_true(atomic_load(&b.ticks) > 0); /* b runs, it only does not relay */
    /* a stops and releases the lease: b takes over */
    outbox_free(a.ob);
    add_values(r, stream, 10, 10);
    assert_true(wait_xlen(r, stream, 0, 10000));
    outbox_free(b.ob);
    expect_topic(a.topic, 0, 10);
    expect_topic(b.topic, 10, 10);
    kafka_producer_free(p, 2000);
    metrics_free(ma);
    metrics_free(mb);
    redis_free(r);
}

static void test_takes_over_an_expired_lease(void **state)
{
    (void)state;
    char stream[128], lease[160];
    struct relay rl = {0};
    unique_name(stream, sizeof(stream), "test:outbox");
    unique_name(rl.topic, sizeof(rl.topic), "test-outbox");
    create_topic(rl.topic);
    snprintf(lease, sizeof(lease), "%s:lease", stream);
    struct redis *r = redis_open();
    /* a holder that was killed: its lease runs out by itself */
    redisReply *rep = redis_cmd(r, "SET", lease, "dead-replica", "PX", "1500", (char *)NULL);
    assert_non_null(rep);
    freeReplyObject(rep);
    add_values(r, stream, 0, 5);
    struct kafka_producer *p = producer(env("KAFKA_BOOTSTRAP_SERVERS"));
    struct metrics *m = metrics_new();
    int64_t t0 = time_mono_ms();
    relay_start(&rl, stream, p, m, 1000);
    time_sleep_ms(700);
    assert_int_equal(xlen(r, stream), 5); /* not while the other holds it */
    assert_true(wait_xlen(r, stream, 0, 10000));
    assert_true(time_mono_ms() - t0 >= 1000);
    /* and it renews its own lease while it runs (ttl 1 s, now well past it) */
    time_sleep_ms(1500);
    rep = redis_cmd(r, "GET", lease, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_not_equal(rep->str, "dead-replica");
    freeReplyObject(rep);
    outbox_free(rl.ob);
    expect_topic(rl.topic, 0, 5);
    kafka_producer_free(p, 2000);
    metrics_free(m);
    redis_free(r);
}

static void test_survives_a_broker_outage(void **state)
{
    (void)state;
    char stream[128], dead[64];
    struct relay rl = {0};
    unique_name(stream, sizeof(stream), "test:outbox");
    unique_name(rl.topic, sizeof(rl.topic), "test-outbox");
    create_topic(rl.topic);
    struct redis *r = redis_open();
    add_values(r, stream, 0, 12);
    /* Kafka unreachable: nothing is acknowledged, nothing deleted */
    dead_bootstrap(dead, sizeof(dead));
    struct kafka_producer *down = producer(dead);
    struct metrics *m = metrics_new();
    relay_start(&rl, stream, down, m, 5000);
    time_sleep_ms(3500); /* past message.timeout.ms: the deliveries failed */
    assert_int_equal(xlen(r, stream), 12);
    assert_false(rendered(m, "test_outbox_relayed_total 1"));
    outbox_free(rl.ob);
    kafka_producer_free(down, 0);
    metrics_free(m);
    /* Kafka back: everything goes, in order, once */
    add_values(r, stream, 12, 3);
    struct kafka_producer *up = producer(env("KAFKA_BOOTSTRAP_SERVERS"));
    m = metrics_new();
    relay_start(&rl, stream, up, m, 5000);
    assert_true(wait_xlen(r, stream, 0, 20000));
    outbox_free(rl.ob);
    expect_topic(rl.topic, 0, 15);
    kafka_producer_free(up, 2000);
    metrics_free(m);
    redis_free(r);
}

static void test_bad_config(void **state)
{
    (void)state;
    char err[256] = "";
    struct outbox_config cfg = {.stream = "test:outbox:none"};
    assert_null(outbox_new(&cfg, redis_open(), err, sizeof(err)));
    assert_true(strlen(err) > 0);
    outbox_kick(NULL);
    outbox_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relays_in_order_and_deletes),
        cmocka_unit_test(test_one_relay_holds_the_lease),
        cmocka_unit_test(test_takes_over_an_expired_lease),
        cmocka_unit_test(test_survives_a_broker_outage),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests_name("outbox", tests, NULL, NULL);
}
