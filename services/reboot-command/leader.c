/*
 * The scheduler: exactly one replica at a time holds the Redis lease
 * reboot:lease (value "<instance>:<epoch>", epoch from INCR reboot:lease:epoch
 * on every new holder, PX = reboot.lease_ttl_ms, renewed every poll). The
 * holder fires due scheduled commands (a robot.reboot.requested with origin
 * "scheduled" into the robot's lane, then removes the entry only while its
 * fencing token still holds the lease), times out commands whose ack or result
 * deadline passed, resends dispatches whose replica died before the vendor
 * answered (same Idempotency-Key), and lets queued commands in when fleet slots
 * are free. A holder that cannot renew stops acting when its own lease time
 * runs out, counted from before the renewal was sent, so two holders never act
 * at once; a crashed holder is replaced within the lease time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "reboot.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define BATCH 100

static const char ACQUIRE_LUA[] = "local v = redis.call('GET', KEYS[1])\n"
                                  "if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then\n"
                                  "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                  "  return v\n"
                                  "end\n"
                                  "if v then return false end\n"
                                  "local nv = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])\n"
                                  "redis.call('SET', KEYS[1], nv, 'PX', ARGV[2])\n"
                                  "return nv\n";

/* Removes a fired entry only while the caller's token holds the lease. */
static const char FENCED_ZREM_LUA[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end\n"
    "return redis.call('ZREM', KEYS[2], ARGV[2])\n";

static const char RELEASE_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                  "  return redis.call('DEL', KEYS[1])\n"
                                  "end\n"
                                  "return 0\n";

struct leader {
    struct reboot *rb;
    struct redis *redis;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_bool holder;
    char token[160];
    int64_t held_until_mono;
};

bool leader_is_holder(struct leader *l)
{
    return l && atomic_load(&l->holder);
}

static void acquire(struct leader *l, const struct reboot_settings *set)
{
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)set->lease_ttl_ms);
    int64_t sent = time_mono_ms();
    redisReply *rep = redis_cmd(l->redis, "EVAL", ACQUIRE_LUA, "2", "reboot:lease",
                                "reboot:lease:epoch", l->rb->instance, ttl, (char *)NULL);
    bool was = atomic_load(&l->holder);
    if (rep && rep->type == REDIS_REPLY_STRING) {
        if (!was || strcmp(l->token, rep->str) != 0)
            LOG_INFO("holding the scheduler lease (%s)", rep->str);
        str_copy(l->token, rep->str, sizeof(l->token));
        l->held_until_mono = sent + set->lease_ttl_ms;
        atomic_store(&l->holder, true);
    } else if (rep && rep->type == REDIS_REPLY_NIL) {
        if (was)
            LOG_WARN("lost the scheduler lease to another replica");
        atomic_store(&l->holder, false);
    } else if (was && time_mono_ms() >= l->held_until_mono) {
        LOG_WARN("scheduler lease expired while Redis was unreachable");
        atomic_store(&l->holder, false);
    }
    if (rep)
        freeReplyObject(rep);
    metric_set(l->rb->m_lease, atomic_load(&l->holder) ? 1 : 0);
}

static bool acting(struct leader *l)
{
    return atomic_load(&l->holder) && time_mono_ms() < l->held_until_mono && !atomic_load(&l->stop);
}

static redisReply *due(struct leader *l, const char *key, int64_t until_ms)
{
    char max[24], lim[16];
    snprintf(max, sizeof(max), "%lld", (long long)until_ms);
    snprintf(lim, sizeof(lim), "%d", BATCH);
    redisReply *rep =
        redis_cmd(l->redis, "ZRANGEBYSCORE", key, "-inf", max, "LIMIT", "0", lim, (char *)NULL);
    if (rep && rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        rep = NULL;
    }
    return rep;
}

/* 1 removed, 0 already gone, -1 the lease is no longer ours, -EIO. */
static int fenced_zrem(struct leader *l, const char *key, const char *id)
{
    redisReply *rep = redis_cmd(l->redis, "EVAL", FENCED_ZREM_LUA, "2", "reboot:lease", key,
                                l->token, id, (char *)NULL);
    int rc = rep && rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -EIO;
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static void fire_due(struct leader *l)
{
    redisReply *ids = due(l, "reboot:sched", time_now_ms());
    for (size_t i = 0; ids && i < ids->elements && acting(l); i++) {
        const char *id = ids->element[i]->str;
        struct command c;
        int rc = store_get(l->redis, id, &c);
        if (rc == -EIO)
            break;
        if (rc == 0 && strcmp(c.state, "scheduled") == 0) {
            if (reboot_produce_command_sync(l->rb, &c, "scheduled", 10000) != 0) {
                LOG_WARN("cannot fire scheduled command '%s' (Kafka); retrying", id);
                break;
            }
            struct log_field f[] = {{"robot.id", c.robot_id}, {"command.id", c.id}};
            log_fields(LOG_LEVEL_INFO, f, 2, "scheduled command fired");
        }
        if (fenced_zrem(l, "reboot:sched", id) == -1) {
            LOG_WARN("scheduler lease lost while firing");
            atomic_store(&l->holder, false);
            break;
        }
    }
    if (ids)
        freeReplyObject(ids);
}

static void sweep_deadlines(struct leader *l, const struct reboot_settings *set)
{
    redisReply *ids = due(l, "reboot:deadlines", time_now_ms());
    for (size_t i = 0; ids && i < ids->elements && acting(l); i++) {
        const char *id = ids->element[i]->str;
        struct command c;
        int rc = store_get(l->redis, id, &c);
        if (rc == -EIO)
            break;
        char detail[96];
        struct transition t = {.to = "timed_out", .detail = detail};
        if (rc == 0 && strcmp(c.state, "dispatched") == 0) {
            t.from = "dispatched";
            snprintf(detail, sizeof(detail), "no acknowledgement within %llds",
                     (long long)set->ack_timeout_s);
        } else if (rc == 0 && strcmp(c.state, "acknowledged") == 0) {
            t.from = "acknowledged";
            snprintf(detail, sizeof(detail), "no result within %llds",
                     (long long)set->completion_timeout_s);
        } else {
            fenced_zrem(l, "reboot:deadlines", id);
            continue;
        }
        reboot_transition(l->rb, l->redis, &c, &t);
    }
    if (ids)
        freeReplyObject(ids);
}

/* Dispatches whose replica died before the vendor answered: send again with the same key. */
static void sweep_stuck(struct leader *l, const struct reboot_settings *set)
{
    int64_t now = time_now_ms();
    redisReply *ids = due(l, "reboot:sending", now - set->stuck_after_s * 1000);
    char snow[24];
    snprintf(snow, sizeof(snow), "%lld", (long long)now);
    for (size_t i = 0; ids && i < ids->elements && acting(l); i++) {
        const char *id = ids->element[i]->str;
        struct command c;
        struct robot_view v;
        int rc = store_get(l->redis, id, &c);
        if (rc == -EIO)
            break;
        if (rc != 0 || strcmp(c.state, "dispatched") != 0) {
            fenced_zrem(l, "reboot:sending", id);
            continue;
        }
        if (policy_robot(l->redis, c.robot_id, &v) != 0)
            break;
        redisReply *rep = redis_cmd(l->redis, "ZADD", "reboot:sending", snow, id, (char *)NULL);
        if (rep)
            freeReplyObject(rep);
        struct log_field f[] = {{"robot.id", c.robot_id}, {"command.id", c.id}};
        log_fields(LOG_LEVEL_WARN, f, 2, "dispatch never answered; sending again (same key)");
        dispatcher_submit(l->rb->dispatch, &c, v.source);
    }
    if (ids)
        freeReplyObject(ids);
}

static void update_active(struct leader *l)
{
    redisReply *rep = redis_cmd(l->redis, "SCARD", "reboot:active", (char *)NULL);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        metric_set(l->rb->m_active, (double)rep->integer);
    if (rep)
        freeReplyObject(rep);
}

static void *leader_main(void *arg)
{
    struct leader *l = arg;
    while (!atomic_load(&l->stop)) {
        struct reboot_settings set;
        reboot_settings_get(l->rb, &set);
        int64_t start = time_mono_ms();
        acquire(l, &set);
        if (acting(l))
            fire_due(l);
        if (acting(l))
            sweep_deadlines(l, &set);
        if (acting(l))
            sweep_stuck(l, &set);
        if (acting(l)) {
            reboot_pump_queue(l->rb, l->redis);
            update_active(l);
        }
        int64_t wait = set.poll_ms - (time_mono_ms() - start);
        for (; wait > 0 && !atomic_load(&l->stop); wait -= 50)
            time_sleep_ms(wait < 50 ? wait : 50);
    }
    if (atomic_load(&l->holder)) {
        redisReply *rep =
            redis_cmd(l->redis, "EVAL", RELEASE_LUA, "1", "reboot:lease", l->token, (char *)NULL);
        if (rep)
            freeReplyObject(rep);
        atomic_store(&l->holder, false);
    }
    return NULL;
}

struct leader *leader_new(struct reboot *rb, char *errbuf, size_t errsize)
{
    struct leader *l = xcalloc(1, sizeof(*l));
    l->rb = rb;
    l->redis = reboot_redis_new(rb);
    if (!l->redis) {
        snprintf(errbuf, errsize, "cannot open a Redis connection for the scheduler");
        goto fail;
    }
    if (pthread_create(&l->thread, NULL, leader_main, l) != 0) {
        snprintf(errbuf, errsize, "cannot start the scheduler thread");
        goto fail;
    }
    l->started = true;
    return l;
fail:
    leader_free(l);
    return NULL;
}

void leader_stop(struct leader *l)
{
    if (!l || !l->started)
        return;
    atomic_store(&l->stop, true);
    pthread_join(l->thread, NULL);
    l->started = false;
}

void leader_free(struct leader *l)
{
    if (!l)
        return;
    redis_free(l->redis);
    free(l);
}
