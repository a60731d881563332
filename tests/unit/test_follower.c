/*
 * Unit tests for follower.c against a real Apache Kafka broker
 * (scripts/kafka-local.sh, KAFKA_BOOTSTRAP_SERVERS): two followers of one
 * topic each see every event published once they joined (a group of their
 * own), start at the end, skip what is not a CloudEvent; without a broker the
 * thread only ticks; a bad property fails the start with a message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "unit_kafka.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "cloudevents.h"
#include "follower.h"
#include "kafka.h"
#include "str.h"
#include "timeutil.h"

#define WAIT_MS 30000

/* What one follower saw, written on its thread. */
struct seen {
    atomic_int assigned;
    atomic_int events;
    atomic_int others; /* events of another type than test.changed */
    atomic_int polls;
    char type[64];
    char subject[64];
    char pid[16]; /* data.pid: which run published it */
};

static void on_event(void *ud, const struct cloudevent *ev)
{
    struct seen *s = ud;
    if (strcmp(ev->type, "test.changed") != 0) {
        atomic_fetch_add(&s->others, 1);
        return;
    }
    str_copy(s->type, ev->type, sizeof(s->type));
    str_copy(s->subject, ev->subject ? ev->subject : "", sizeof(s->subject));
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(ev->data, "pid");
    str_copy(s->pid, cJSON_IsString(pid) ? pid->valuestring : "", sizeof(s->pid));
    atomic_fetch_add(&s->events, 1);
}

static void on_poll(void *ud)
{
    struct seen *s = ud;
    atomic_fetch_add(&s->polls, 1);
}

static void on_rebalance(void *ud, bool assigned, bool lost, const struct kafka_partition *parts,
                         size_t nparts)
{
    (void)lost;
    (void)parts;
    struct seen *s = ud;
    if (assigned && nparts > 0)
        atomic_fetch_add(&s->assigned, 1);
}

static bool wait_for(atomic_int *v, int at_least)
{
    int64_t end = time_mono_ms() + WAIT_MS;
    while (atomic_load(v) < at_least && time_mono_ms() < end)
        time_sleep_ms(20);
    return atomic_load(v) >= at_least;
}

static void publish(struct kafka_producer *p, const char *topic, const char *value)
{
    assert_int_equal(kafka_producer_send(p, topic, -1, "k", 1, value, strlen(value), NULL, 0, NULL),
                     0);
    assert_int_equal(kafka_producer_flush(p, 10000), 0);
}

static void publish_event(struct kafka_producer *p, const char *topic, const char *type,
                          const char *subject)
{
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    cJSON *data = cJSON_CreateObject();
    cJSON_AddStringToObject(data, "pid", pid);
    struct cloudevent ce = {
        .id = "00000000-0000-7000-8000-000000000001",
        .source = "/test-follower",
        .type = type,
        .subject = subject,
        .data = data,
    };
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(ce_build(&ce, &b), 0);
    buf_append(&b, "", 1); /* NUL for publish */
    publish(p, topic, b.data);
    buf_release(&b);
    cJSON_Delete(data);
}

static struct follower *start(const char *topic, struct seen *s)
{
    char err[256] = "";
    struct follower_options o = {.bootstrap = bootstrap(),
                                 .group_prefix = "test-follower",
                                 .topic = topic,
                                 .poll_ms = 50,
                                 .on_event = on_event,
                                 .on_poll = on_poll,
                                 .on_rebalance = on_rebalance,
                                 .ud = s};
    struct follower *f = follower_start(&o, err, sizeof(err));
    if (!f)
        fail_msg("follower_start: %s", err);
    return f;
}

static void test_every_follower_sees_every_event_from_the_end(void **state)
{
    (void)state;
    char topic[96], err[256] = "";
    snprintf(topic, sizeof(topic), "test-follower-%d-%lld", (int)getpid(),
             (long long)time_now_ms());
    struct kafka_topic_spec t = {.name = topic, .partitions = 1};
    assert_int_equal(kafka_ensure_topics(bootstrap(), NULL, 0, &t, 1, 10000, err, sizeof(err)), 0);
    struct kafka_producer *p =
        kafka_producer_new(bootstrap(), NULL, 0, NULL, NULL, err, sizeof(err));
    assert_non_null(p);
    /* published before anyone follows: never seen */
    publish_event(p, topic, "test.before", "early");

    struct seen a = {0}, b = {0};
    struct follower *fa = start(topic, &a), *fb = start(topic, &b);
    assert_true(wait_for(&a.assigned, 1));
    assert_true(wait_for(&b.assigned, 1));
    /*
     * "From the end" is resolved after the assignment, so an event published
     * right then may fall before it: publish until both followers saw one.
     */
    int64_t end = time_mono_ms() + WAIT_MS;
    while ((atomic_load(&a.events) == 0 || atomic_load(&b.events) == 0) && time_mono_ms() < end) {
        publish(p, topic, "not a cloudevent");
        publish_event(p, topic, "test.changed", "robot-7");
        time_sleep_ms(300);
    }
    assert_true(atomic_load(&a.events) >= 1);
    assert_true(atomic_load(&b.events) >= 1);
    assert_int_equal(atomic_load(&a.others), 0); /* never test.before */
    assert_int_equal(atomic_load(&b.others), 0);
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    assert_string_equal(a.type, "test.changed");
    assert_string_equal(a.subject, "robot-7");
    assert_string_equal(a.pid, pid);
    assert_string_equal(b.type, "test.changed");
    assert_string_equal(b.subject, "robot-7");

    follower_stop(fa);
    follower_stop(fa); /* a second stop does nothing */
    int polls = atomic_load(&a.polls);
    time_sleep_ms(200);
    assert_int_equal(atomic_load(&a.polls), polls);
    follower_free(fa);
    follower_free(fb);
    kafka_producer_free(p, 5000);
}

static void test_without_a_broker_only_ticks(void **state)
{
    (void)state;
    char err[256] = "";
    struct seen s = {0};
    struct follower_options o = {
        .topic = "unused", .poll_ms = 10, .on_event = on_event, .on_poll = on_poll, .ud = &s};
    struct follower *f = follower_start(&o, err, sizeof(err));
    assert_non_null(f);
    assert_true(wait_for(&s.polls, 5));
    follower_free(f);
    assert_int_equal(atomic_load(&s.events), 0);
    follower_free(NULL);
    follower_stop(NULL);
}

static void test_bad_property_fails_the_start(void **state)
{
    (void)state;
    char err[256] = "";
    struct kafka_prop bad = {"no.such.property", "1"};
    struct follower_options o = {.bootstrap = bootstrap(),
                                 .group_prefix = "test-follower",
                                 .topic = "unused",
                                 .props = &bad,
                                 .nprops = 1};
    assert_null(follower_start(&o, err, sizeof(err)));
    if (!strstr(err, "no.such.property"))
        fail_msg("errbuf does not name the property: '%s'", err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_follower_sees_every_event_from_the_end),
        cmocka_unit_test(test_without_a_broker_only_ticks),
        cmocka_unit_test(test_bad_property_fails_the_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
