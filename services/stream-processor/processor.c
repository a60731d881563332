/*
 * The exactly-once engine (see processor.h).
 *
 * Partitions. The group subscribes to robot.events.v1 only; when it assigns
 * events partition N, partition N of robot.command-status.v1 and of
 * robot.registry.v1 are assigned alongside (kafka_consumer_assign), their
 * offsets committed to the same group. All three are keyed by robot id with
 * the same partition count and librdkafka's partitioner, so partition N holds
 * the same robots in each: one instance owns a robot's whole input. (A
 * cooperative-sticky subscription to all three could hand a robot's events and
 * its registry record to different instances.)
 *
 * A cycle. The first change opens a transaction. Every change to a robot saves
 * its pre-image once per cycle (the undo log) and marks it dirty. Reboot
 * requests and dead letters are produced as they happen; at the end of the
 * cycle each dirty robot's changelog record (and its robot.state.v1 message if
 * the derived state changed) is produced, the processed positions are sent to
 * the transaction and it commits. Abortable error: abort, put every pre-image
 * back, seek each partition back to its committed position. Fatal (fenced):
 * stop and exit non-zero.
 *
 * Rebalance. On assignment the state of the new partitions is rebuilt from the
 * changelog (read_committed, to its end) before the callback returns, so no
 * event of those partitions is processed before. On revocation the open
 * transaction commits first (or aborts if the assignment was lost), then the
 * partitions' robots are dropped.
 *
 * Locking. One mutex guards the state; the processing thread holds it while it
 * handles a message, fires timers or commits, HTTP readers hold it briefly.
 */
#include "processor.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "cloudevents.h"
#include "crypto.h"
#include "http_server.h"
#include "json.h"
#include "kafka.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "rules.h"
#include "service.h"
#include "state.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "trace.h"
#include "xalloc.h"

#define NTOPICS         3 /* events, command status, registry */
#define T_EVENTS        0
#define T_STATUS        1
#define T_REGISTRY      2
#define OUT_MAX_BYTES   (64 * 1024)
#define DLQ_MAX_PAYLOAD (256 * 1024)
#define TXN_TIMEOUT_MS  30000
#define COMMIT_RETRIES  3
#define MIRROR_BATCH    1000
#define INSTANCE_MAX    96

static const char *const topic_names[NTOPICS] = {TOPIC_ROBOT_EVENTS, TOPIC_ROBOT_COMMAND_STATUS,
                                                 TOPIC_ROBOT_REGISTRY};

const struct cfg_key processor_config_keys[] = {
    {"stream.offline_after_s", CFG_INT, "60", 1, 86400, true, NULL,
     "a robot silent this long becomes offline (and may get a hard reboot request)"},
    {"stream.fault_threshold", CFG_INT, "5", 1, FAULT_SLOTS, true, NULL,
     "faults within stream.fault_window_s that make a fault storm"},
    {"stream.fault_window_s", CFG_INT, "60", 1, 86400, true, NULL,
     "longest occurred_at span of a fault storm"},
    {"stream.allowed_lateness_s", CFG_INT, "30", 0, 86400, true, NULL,
     "events this far behind the robot's newest event still count; older ones are ignored"},
    {"stream.reboot_grace_s", CFG_INT, "600", 0, 86400, true, NULL,
     "no new automatic request this long after one, unless a terminal command status ends it"},
    {"stream.cycle_ms", CFG_INT, "100", 5, 1000, true, NULL,
     "longest time between transaction commits"},
    {"stream.cycle_max_events", CFG_INT, "5000", 1, 100000, true, NULL,
     "most input messages per transaction"},
    {"stream.default_auto_reboot", CFG_BOOL, "true", 0, 0, true, NULL,
     "whether robots the registry has not described may be rebooted automatically"},
    {"stream.mirror_heartbeat_s", CFG_INT, "10", 0, 3600, true, NULL,
     "heartbeat-only changes reach the Redis mirror at most this often per robot (0 = always)"},
    {"stream.group_id", CFG_STRING, "stream-processor", 1, 200, false, "STREAM_GROUP_ID",
     "consumer group of the instances"},
    {"stream.instance_id", CFG_STRING, "", 0, INSTANCE_MAX, false, "STREAM_INSTANCE_ID",
     "stable per instance (default: host name); names the transactional id"},
    {"stream.restore_timeout_s", CFG_INT, "120", 1, 3600, false, NULL,
     "longest rebuild of a partition's state from the changelog"},
};
const size_t processor_config_nkeys =
    sizeof(processor_config_keys) / sizeof(processor_config_keys[0]);

struct settings {
    struct rules_settings rules;
    int64_t cycle_ms;
    int64_t cycle_max_events;
    int64_t mirror_heartbeat_ms;
};

struct position {
    bool assigned;
    int64_t committed; /* next offset as of the last commit, -1 unknown */
    int64_t next;      /* next offset after what was processed, -1 none */
};

struct undo {
    struct robot *r;
    bool created;
    struct robot saved;
};

struct mirror_item {
    bool del;
    char key[ROBOT_ID_MAX + 16];
    char version[24], status[16], heartbeat[TIME_RFC3339_LEN], updated[TIME_RFC3339_LEN];
    char offset[24], in_progress[8], faults[8];
};

struct processor {
    struct service *svc;
    struct kafka_consumer *consumer;
    struct kafka_producer *producer;
    struct redis *redis;
    char bootstrap[512];
    char group[208];
    char txn_id[INSTANCE_MAX + 32];
    char client_id[INSTANCE_MAX + 40];
    const struct kafka_prop *props;
    size_t nprops;
    int64_t restore_timeout_ms;

    /* settings: written by the reload hook, copied by the thread each cycle */
    pthread_mutex_t settings_mu;
    struct settings pending;
    atomic_uint settings_gen;
    unsigned seen_gen;
    struct settings set;

    /* state (mu) */
    pthread_mutex_t mu;
    struct robot_table *table;
    struct deadline_heap *heap;
    struct position *pos[NTOPICS];
    size_t npos;
    struct undo *undo;
    size_t nundo, undo_cap;
    struct robot **dirty;
    size_t ndirty, dirty_cap;
    struct mirror_item *mirror;
    size_t nmirror, mirror_cap;
    bool txn_open;
    int64_t cycle_start_ms;
    int64_t cycle_events;

    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_bool failed;
    atomic_bool running;

    /* metrics */
    struct metric *m_events, *m_late, *m_dupes, *m_dlq, *m_commit, *m_commits, *m_aborts;
    struct metric *m_robots, *m_state_bytes, *m_by_status, *m_timers, *m_lag, *m_requests;
    struct metric *m_suppressed, *m_restored, *m_mirror_errors;
    struct metric_series *s_events[EVENT_KIND_COUNT + 2];
    int64_t next_gauges_ms;
};

/* ---- helpers ---- */

static void count1(struct metric *m, const char *label)
{
    const char *v[] = {label};
    metric_series_add(metric_series(m, v), 1);
}

static void settings_read(const struct cfg *c, struct settings *s)
{
    s->rules.offline_after_ms = cfg_get_int(c, "stream.offline_after_s") * 1000;
    s->rules.fault_threshold = (int)cfg_get_int(c, "stream.fault_threshold");
    s->rules.fault_window_ms = cfg_get_int(c, "stream.fault_window_s") * 1000;
    s->rules.allowed_lateness_ms = cfg_get_int(c, "stream.allowed_lateness_s") * 1000;
    s->rules.reboot_grace_ms = cfg_get_int(c, "stream.reboot_grace_s") * 1000;
    s->rules.default_auto_reboot = cfg_get_bool(c, "stream.default_auto_reboot");
    s->cycle_ms = cfg_get_int(c, "stream.cycle_ms");
    s->cycle_max_events = cfg_get_int(c, "stream.cycle_max_events");
    s->mirror_heartbeat_ms = cfg_get_int(c, "stream.mirror_heartbeat_s") * 1000;
}

static void fail_fatal(struct processor *p, const char *what)
{
    LOG_ERROR("fatal kafka error in %s: the producer is fenced or broken, exiting", what);
    atomic_store(&p->failed, true);
    atomic_store(&p->stop, true);
    lifecycle_request_stop();
}

static struct position *position_of(struct processor *p, int t, int32_t partition)
{
    if (partition < 0)
        return NULL;
    if ((size_t)partition >= p->npos) {
        size_t n = (size_t)partition + 16;
        for (int i = 0; i < NTOPICS; i++) {
            p->pos[i] = xrealloc(p->pos[i], n * sizeof(struct position));
            for (size_t j = p->npos; j < n; j++)
                p->pos[i][j] = (struct position){false, -1, -1};
        }
        p->npos = n;
    }
    return &p->pos[t][partition];
}

static int topic_index(const char *topic)
{
    for (int i = 0; i < NTOPICS; i++)
        if (topic && strcmp(topic, topic_names[i]) == 0)
            return i;
    return -1;
}

/* ---- the transaction ---- */

static int txn_ensure(struct processor *p)
{
    if (p->txn_open)
        return 0;
    int rc = kafka_txn_begin(p->producer);
    if (rc == KAFKA_ERR_FATAL) {
        fail_fatal(p, "begin_transaction");
        return rc;
    }
    if (rc)
        return rc;
    p->txn_open = true;
    p->cycle_start_ms = time_mono_ms();
    p->cycle_events = 0;
    return 0;
}

/* Saves r's pre-image once per transaction and marks it dirty. */
static void touch(struct processor *p, struct robot *r, bool created)
{
    if (!(r->flags & ROBOT_F_UNDO)) {
        if (p->nundo == p->undo_cap) {
            p->undo_cap = p->undo_cap ? p->undo_cap * 2 : 1024;
            p->undo = xrealloc(p->undo, p->undo_cap * sizeof(*p->undo));
        }
        struct undo *u = &p->undo[p->nundo++];
        u->r = r;
        u->created = created;
        u->saved = *r;
        r->flags |= ROBOT_F_UNDO;
    }
    if (!(r->flags & ROBOT_F_DIRTY)) {
        if (p->ndirty == p->dirty_cap) {
            p->dirty_cap = p->dirty_cap ? p->dirty_cap * 2 : 1024;
            p->dirty = xrealloc(p->dirty, p->dirty_cap * sizeof(*p->dirty));
        }
        p->dirty[p->ndirty++] = r;
        r->flags |= ROBOT_F_DIRTY;
    }
}

struct derived {
    uint8_t status;
    bool in_progress;
    int faults;
};

static struct derived derive(const struct processor *p, const struct robot *r, int64_t now)
{
    return (struct derived){r->status, rules_in_progress(r, &p->set.rules, now),
                            rules_faults_in_window(r, &p->set.rules)};
}

static void changed(struct processor *p, struct robot *r, struct derived before, int64_t now)
{
    struct derived after = derive(p, r, now);
    r->version++;
    r->updated_ms = time_now_ms();
    if (after.status != before.status || after.in_progress != before.in_progress ||
        after.faults != before.faults)
        r->flags |= ROBOT_F_EMIT;
}

static void arm(struct processor *p, struct robot *r)
{
    int64_t due = rules_offline_deadline(r, &p->set.rules);
    if (due == 0)
        deadline_heap_remove(p->heap, r);
    else if (r->heap_idx == HEAP_NONE || due < r->heap_key)
        deadline_heap_set(p->heap, r, due);
    /* a later deadline is picked up lazily when the earlier one comes due */
}

static void rollback(struct processor *p)
{
    int64_t now = time_now_ms();
    for (size_t i = p->nundo; i-- > 0;) {
        struct undo *u = &p->undo[i];
        struct robot *r = u->r;
        if (u->created) {
            deadline_heap_remove(p->heap, r);
            robot_table_remove(p->table, r);
            continue;
        }
        uint32_t idx = r->heap_idx;
        int64_t key = r->heap_key;
        *r = u->saved;
        r->heap_idx = idx;
        r->heap_key = key;
        r->flags = 0;
        /* the replay will bring its heartbeats back: no offline verdict before that */
        r->grace_ms = time_now_ms() + p->set.rules.offline_after_ms;
        int64_t due = rules_offline_deadline(r, &p->set.rules);
        if (due)
            deadline_heap_set(p->heap, r, due);
        else
            deadline_heap_remove(p->heap, r);
    }
    (void)now;
    p->nundo = 0;
    p->ndirty = 0;
    p->nmirror = 0;
    for (int t = 0; t < NTOPICS; t++) {
        for (size_t i = 0; i < p->npos; i++) {
            struct position *ps = &p->pos[t][i];
            if (!ps->assigned || ps->committed < 0 || ps->next == ps->committed)
                continue;
            if (kafka_consumer_seek(p->consumer, topic_names[t], (int32_t)i, ps->committed, 5000) !=
                0)
                LOG_WARN("cannot rewind '%s' [%zu] to %lld", topic_names[t], i,
                         (long long)ps->committed);
            ps->next = ps->committed;
        }
    }
}

static int abort_cycle(struct processor *p)
{
    int rc;
    for (int i = 0; i < COMMIT_RETRIES; i++) {
        rc = kafka_txn_abort(p->producer, TXN_TIMEOUT_MS);
        if (rc != KAFKA_ERR_RETRIABLE && rc != KAFKA_ERR_TIMEOUT)
            break;
    }
    p->txn_open = false;
    metric_add(p->m_aborts, 1);
    if (rc) {
        fail_fatal(p, "abort_transaction");
        return rc;
    }
    rollback(p);
    LOG_WARN("transaction aborted: rewound to the committed offsets and state");
    return 0;
}

static int produce(struct processor *p, const char *topic, int32_t partition, const char *key,
                   const void *value, size_t len, const char *traceparent)
{
    struct kafka_header h = {"traceparent", traceparent, traceparent ? strlen(traceparent) : 0};
    int rc = kafka_producer_send(p->producer, topic, partition, key, strlen(key), value, len,
                                 traceparent ? &h : NULL, traceparent ? 1 : 0, NULL);
    if (rc == KAFKA_ERR_FATAL)
        fail_fatal(p, "produce");
    return rc;
}

static void add_time(cJSON *o, const char *name, int64_t ms)
{
    char t[TIME_RFC3339_LEN];
    if (ms > 0 && time_format_rfc3339(ms, t, sizeof(t)) == 0)
        cJSON_AddStringToObject(o, name, t);
    else
        cJSON_AddNullToObject(o, name);
}

static void command_id(const struct robot *r, char *out, size_t size)
{
    if (r->last_reason == REASON_NONE)
        out[0] = '\0';
    else
        snprintf(out, size, "sp-%s-%s-%lld", r->id,
                 request_reason_name((enum request_reason)r->last_reason),
                 (long long)r->last_trigger_ms);
}

static int produce_cloudevent(struct processor *p, const char *topic, int32_t partition,
                              const char *id, const char *type, const char *subject,
                              int64_t time_ms, cJSON *data, const char *parent)
{
    char t[TIME_RFC3339_LEN], tp[TRACE_PARENT_LEN];
    struct buf b;
    time_format_rfc3339(time_ms, t, sizeof(t));
    trace_parent_child(parent, tp);
    struct cloudevent ce = {.id = id,
                            .source = "/stream-processor",
                            .type = type,
                            .subject = subject,
                            .time = t,
                            .data = data};
    buf_init(&b, OUT_MAX_BYTES);
    int rc = ce_build(&ce, &b);
    if (rc == 0)
        rc = produce(p, topic, partition, subject, b.data, b.len, tp);
    buf_release(&b);
    cJSON_Delete(data);
    return rc;
}

static int produce_request(struct processor *p, const struct robot *r,
                           const struct rules_request *req, const char *parent)
{
    char id[ROBOT_ID_MAX + 64];
    int64_t now = time_now_ms();
    command_id(r, id, sizeof(id));
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "command_id", id);
    cJSON_AddStringToObject(d, "robot_id", r->id);
    cJSON_AddStringToObject(d, "mode", req->hard ? "hard" : "soft");
    cJSON_AddStringToObject(d, "reason", request_reason_name(req->reason));
    cJSON_AddStringToObject(d, "origin", "automatic");
    add_time(d, "requested_at", now);
    add_time(d, "trigger_at", req->trigger_ms);
    cJSON_AddBoolToObject(d, "force", false);
    const char *labels[] = {request_reason_name(req->reason)};
    metric_series_add(metric_series(p->m_requests, labels), 1);
    struct log_field f[] = {{"robot.id", r->id}, {"command.id", id}};
    log_fields(LOG_LEVEL_INFO, f, 2, "reboot requested (%s, %s)", request_reason_name(req->reason),
               req->hard ? "hard" : "soft");
    return produce_cloudevent(p, TOPIC_ROBOT_COMMANDS, r->partition, id, "robot.reboot.requested",
                              r->id, now, d, parent);
}

static cJSON *state_json(const struct processor *p, const struct robot *r, int64_t now)
{
    char id[ROBOT_ID_MAX + 64];
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "robot_id", r->id);
    cJSON_AddStringToObject(d, "status", robot_status_name((enum robot_status)r->status));
    add_time(d, "last_heartbeat_at", r->last_heartbeat_ms);
    cJSON_AddNumberToObject(d, "faults_in_window", rules_faults_in_window(r, &p->set.rules));
    cJSON_AddBoolToObject(d, "reboot_in_progress", rules_in_progress(r, &p->set.rules, now));
    add_time(d, "reboot_since", r->reboot_since_ms);
    command_id(r, id, sizeof(id));
    if (id[0])
        cJSON_AddStringToObject(d, "last_command_id", id);
    else
        cJSON_AddNullToObject(d, "last_command_id");
    add_time(d, "last_request_at", r->last_request_ms);
    add_time(d, "updated_at", r->updated_ms);
    cJSON_AddNumberToObject(d, "version", (double)r->version);
    cJSON_AddNumberToObject(d, "partition", r->partition);
    cJSON_AddNumberToObject(d, "offset", (double)r->last_offset);
    return d;
}

/*
 * A changelog record is a CloudEvent (type stream-processor.state) whose data
 * carries the binary record of state.h in base64: built by hand, it is on the
 * hot path (one per robot changed per cycle).
 */
static int produce_changelog(struct processor *p, const struct robot *r, uint8_t *rec,
                             struct buf *b, const char *trace)
{
    char t[TIME_RFC3339_LEN], b64[4 * ((CHANGELOG_MAX + 2) / 3) + 1];
    size_t len = changelog_encode(r, rec);
    if (crypto_base64_encode(rec, len, b64, sizeof(b64)) < 0)
        return -E2BIG;
    time_format_rfc3339(r->updated_ms, t, sizeof(t));
    buf_reset(b);
    buf_append_str(b, "{\"specversion\":\"1.0\",\"id\":\"sp-");
    buf_append_json_str(b, r->id);
    buf_appendf(b, "-cl-%llu\",\"source\":\"/stream-processor/", (unsigned long long)r->version);
    buf_append_json_str(b, p->group);
    buf_append_str(b, "\",\"type\":\"stream-processor.state\",\"subject\":\"");
    buf_append_json_str(b, r->id);
    int rc = buf_appendf(b,
                         "\",\"time\":\"%s\",\"datacontenttype\":\"application/json\","
                         "\"data\":{\"format\":%d,\"record\":\"%s\"}}",
                         t, CHANGELOG_FORMAT, b64);
    if (rc)
        return rc;
    return produce(p, TOPIC_SP_CHANGELOG, r->partition, r->id, b->data, b->len, trace);
}

/*
 * The binary record inside a changelog CloudEvent; 0, -ENOENT for a record of
 * another group (source "/stream-processor/<group>"), or -EINVAL.
 */
static int changelog_record(const struct processor *p, const char *value, size_t vlen, uint8_t *rec,
                            size_t *len)
{
    struct cloudevent ev;
    int64_t format = 0;
    cJSON *root = ce_parse(value, vlen, &ev, NULL, 0);
    const cJSON *data = root ? cJSON_GetObjectItemCaseSensitive(root, "data") : NULL;
    const char *b64 = json_get_str(data, "record");
    int rc = -EINVAL;
    if (root && (!str_has_prefix(ev.source, "/stream-processor/") ||
                 strcmp(ev.source + strlen("/stream-processor/"), p->group) != 0))
        rc = -ENOENT;
    else if (b64 && json_get_int(data, "format", &format) == 0 && format == CHANGELOG_FORMAT &&
             crypto_base64_decode(b64, strlen(b64), rec, CHANGELOG_MAX, len) == 0)
        rc = 0;
    cJSON_Delete(root);
    return rc;
}

static void mirror_add(struct processor *p, const struct robot *r, bool del, int64_t now)
{
    if (p->nmirror == p->mirror_cap) {
        p->mirror_cap = p->mirror_cap ? p->mirror_cap * 2 : 256;
        p->mirror = xrealloc(p->mirror, p->mirror_cap * sizeof(*p->mirror));
    }
    struct mirror_item *m = &p->mirror[p->nmirror++];
    m->del = del;
    snprintf(m->key, sizeof(m->key), "state:robot:%s", r->id);
    if (del)
        return;
    snprintf(m->version, sizeof(m->version), "%llu", (unsigned long long)r->version);
    str_copy(m->status, robot_status_name((enum robot_status)r->status), sizeof(m->status));
    m->heartbeat[0] = '\0';
    if (r->last_heartbeat_ms > 0)
        time_format_rfc3339(r->last_heartbeat_ms, m->heartbeat, sizeof(m->heartbeat));
    time_format_rfc3339(r->updated_ms, m->updated, sizeof(m->updated));
    snprintf(m->offset, sizeof(m->offset), "%lld", (long long)r->last_offset);
    str_copy(m->in_progress, rules_in_progress(r, &p->set.rules, now) ? "1" : "0",
             sizeof(m->in_progress));
    snprintf(m->faults, sizeof(m->faults), "%d", rules_faults_in_window(r, &p->set.rules));
}

/* Only a newer version replaces the mirror, so a replay never moves it backwards. */
static const char MIRROR_SCRIPT[] =
    "local v = redis.call('HGET', KEYS[1], 'version')\n"
    "if v and tonumber(v) >= tonumber(ARGV[1]) then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'version', ARGV[1], 'status', ARGV[2], 'last_heartbeat_at', "
    "ARGV[3], 'updated_at', ARGV[4], 'offset', ARGV[5], 'reboot_in_progress', ARGV[6], "
    "'faults_in_window', ARGV[7])\n"
    "return 1\n";

static void mirror_flush(struct processor *p)
{
    for (size_t from = 0; from < p->nmirror; from += MIRROR_BATCH) {
        size_t n = p->nmirror - from < MIRROR_BATCH ? p->nmirror - from : MIRROR_BATCH;
        struct redis_cmd *cmds = xcalloc(n, sizeof(*cmds));
        const char **argv = xcalloc(n * 11, sizeof(*argv));
        redisReply **replies = xcalloc(n, sizeof(*replies));
        for (size_t i = 0; i < n; i++) {
            struct mirror_item *m = &p->mirror[from + i];
            const char **a = argv + i * 11;
            if (m->del) {
                a[0] = "DEL";
                a[1] = m->key;
                cmds[i] = (struct redis_cmd){2, a, NULL};
                continue;
            }
            const char *args[] = {"EVAL",     MIRROR_SCRIPT,  "1",          m->key,
                                  m->version, m->status,      m->heartbeat, m->updated,
                                  m->offset,  m->in_progress, m->faults};
            memcpy(a, args, sizeof(args));
            cmds[i] = (struct redis_cmd){11, a, NULL};
        }
        if (redis_pipeline(p->redis, n, cmds, replies) != 0) {
            metric_add(p->m_mirror_errors, (double)n);
            LOG_WARN("redis mirror update failed: %s", redis_last_error(p->redis));
        }
        for (size_t i = 0; i < n; i++) {
            if (replies[i] && replies[i]->type == REDIS_REPLY_ERROR) {
                metric_add(p->m_mirror_errors, 1);
                LOG_WARN("redis mirror update failed: %s", replies[i]->str);
            }
            if (replies[i])
                freeReplyObject(replies[i]);
        }
        free(replies);
        free(argv);
        free(cmds);
    }
    p->nmirror = 0;
}

/* Produces the cycle's state outputs, sends the offsets and commits. 0 or negative. */
static int commit_cycle(struct processor *p)
{
    uint8_t rec[CHANGELOG_MAX];
    char trace[TRACE_PARENT_LEN];
    int64_t now = time_now_ms(), t0 = time_mono_ms();
    struct buf cl;
    int rc = 0;

    if (!p->txn_open)
        return 0;
    trace_parent_new(trace); /* one trace for the cycle's changelog records */
    buf_init(&cl, OUT_MAX_BYTES);
    for (size_t i = 0; i < p->ndirty && rc == 0; i++) {
        struct robot *r = p->dirty[i];
        if (r->flags & ROBOT_F_DELETED) {
            rc = produce(p, TOPIC_SP_CHANGELOG, r->partition, r->id, NULL, 0, trace);
            if (rc == 0)
                rc = produce(p, TOPIC_ROBOT_STATE, r->partition, r->id, NULL, 0, trace);
            mirror_add(p, r, true, now);
            continue;
        }
        rc = produce_changelog(p, r, rec, &cl, trace);
        if (rc == 0 && (r->flags & ROBOT_F_EMIT)) {
            char id[ROBOT_ID_MAX + 48];
            snprintf(id, sizeof(id), "sp-%s-state-%llu", r->id, (unsigned long long)r->version);
            rc = produce_cloudevent(p, TOPIC_ROBOT_STATE, r->partition, id, "robot.state", r->id,
                                    r->updated_ms, state_json(p, r, now), NULL);
        }
        if ((r->flags & ROBOT_F_EMIT) || now - r->mirrored_ms >= p->set.mirror_heartbeat_ms) {
            r->mirrored_ms = now;
            mirror_add(p, r, false, now);
        }
    }

    buf_release(&cl);
    struct kafka_partition parts[64];
    int64_t offs[64];
    size_t n = 0;
    for (int t = 0; t < NTOPICS && rc == 0; t++) {
        for (size_t i = 0; i < p->npos && rc == 0; i++) {
            struct position *ps = &p->pos[t][i];
            if (!ps->assigned || ps->next < 0 || ps->next == ps->committed)
                continue;
            parts[n] = (struct kafka_partition){topic_names[t], (int32_t)i};
            offs[n++] = ps->next;
            if (n == 64) {
                rc = kafka_txn_send_positions(p->producer, p->consumer, parts, offs, n,
                                              TXN_TIMEOUT_MS);
                n = 0;
            }
        }
    }
    if (rc == 0 && n > 0)
        rc = kafka_txn_send_positions(p->producer, p->consumer, parts, offs, n, TXN_TIMEOUT_MS);
    for (int i = 0; rc == 0 && i < COMMIT_RETRIES; i++) {
        rc = kafka_txn_commit(p->producer, TXN_TIMEOUT_MS);
        if (rc != KAFKA_ERR_RETRIABLE && rc != KAFKA_ERR_TIMEOUT)
            break;
        rc = 0; /* librdkafka: a timed-out commit may be retried */
        if (i == COMMIT_RETRIES - 1)
            rc = KAFKA_ERR_TIMEOUT;
    }
    if (rc == KAFKA_ERR_FATAL || atomic_load(&p->failed)) {
        fail_fatal(p, "commit_transaction");
        p->txn_open = false;
        p->nmirror = 0;
        return KAFKA_ERR_FATAL;
    }
    if (rc != 0) {
        p->nmirror = 0;
        abort_cycle(p);
        return rc;
    }
    p->txn_open = false;
    for (int t = 0; t < NTOPICS; t++)
        for (size_t i = 0; i < p->npos; i++)
            if (p->pos[t][i].next >= 0)
                p->pos[t][i].committed = p->pos[t][i].next;
    for (size_t i = 0; i < p->ndirty; i++) {
        struct robot *r = p->dirty[i];
        if (r->flags & ROBOT_F_DELETED) {
            deadline_heap_remove(p->heap, r);
            robot_table_remove(p->table, r);
        } else {
            r->flags = 0;
        }
    }
    p->nundo = 0; /* every robot with an undo record was dirty: flags are clear */
    p->ndirty = 0;
    metric_observe(p->m_commit, (double)(time_mono_ms() - t0) / 1000.0);
    metric_add(p->m_commits, 1);
    mirror_flush(p);
    return 0;
}

/* ---- inputs ---- */

static int dead_letter(struct processor *p, const struct kafka_msg *m, const char *error,
                       const char *parent)
{
    size_t klen = 0, vlen = 0;
    const char *key = kafka_msg_key(m, &klen);
    const char *value = kafka_msg_value(m, &vlen);
    char id[160], keybuf[ROBOT_ID_MAX + 1];
    const char *topic = kafka_msg_topic(m);
    int tix = topic_index(topic);

    snprintf(id, sizeof(id), "sp-dlq-%s-%d-%lld", topic ? topic : "?", (int)kafka_msg_partition(m),
             (long long)kafka_msg_offset(m));
    if (key && klen > 0 && klen <= ROBOT_ID_MAX && !memchr(key, '\0', klen)) {
        memcpy(keybuf, key, klen);
        keybuf[klen] = '\0';
    } else {
        str_copy(keybuf, "unknown", sizeof(keybuf));
    }
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "error", error);
    cJSON_AddStringToObject(d, "topic", topic ? topic : "");
    cJSON_AddNumberToObject(d, "partition", kafka_msg_partition(m));
    cJSON_AddNumberToObject(d, "offset", (double)kafka_msg_offset(m));
    cJSON_AddStringToObject(d, "key", keybuf);
    if (vlen > DLQ_MAX_PAYLOAD)
        vlen = DLQ_MAX_PAYLOAD;
    char *b64 = xmalloc(4 * ((vlen + 2) / 3) + 1);
    if (crypto_base64_encode(value ? value : "", value ? vlen : 0, b64, 4 * ((vlen + 2) / 3) + 1) >=
        0)
        cJSON_AddStringToObject(d, "payload_base64", b64);
    free(b64);
    count1(p->m_dlq, tix >= 0 ? topic_names[tix] : "unknown");
    struct log_field f[] = {{"robot.id", keybuf}};
    log_fields(LOG_LEVEL_WARN, f, 1, "poison message at '%s' [%d] %lld sent to the dlq: %s",
               topic ? topic : "?", (int)kafka_msg_partition(m), (long long)kafka_msg_offset(m),
               error);
    return produce_cloudevent(p, TOPIC_ROBOT_EVENTS_DLQ, -1, id, "robot.event.poison", keybuf,
                              time_now_ms(), d, parent);
}

/* The robot id: the CloudEvent subject, else the message key. NULL if neither is usable. */
static const char *robot_id_of(const struct cloudevent *ev, const struct kafka_msg *m, size_t *len)
{
    if (ev->subject && *ev->subject) {
        *len = strlen(ev->subject);
    } else {
        const char *k = kafka_msg_key(m, len);
        if (!k || *len == 0 || memchr(k, '\0', *len))
            return NULL;
        return *len <= ROBOT_ID_MAX ? k : NULL;
    }
    return *len <= ROBOT_ID_MAX ? ev->subject : NULL;
}

static struct robot *robot_for(struct processor *p, const char *id, size_t len, int32_t partition)
{
    struct robot *r = robot_table_get(p->table, id, len);
    if (r) {
        touch(p, r, false);
        if (r->flags & ROBOT_F_DELETED)
            r->flags &= (uint8_t)~ROBOT_F_DELETED;
        return r;
    }
    r = robot_table_add(p->table, id, len, partition);
    touch(p, r, true);
    return r;
}

static int handle_event(struct processor *p, const struct kafka_msg *m, const cJSON *root,
                        const struct cloudevent *ev, const char *parent, const char **error)
{
    size_t len;
    const char *id = robot_id_of(ev, m, &len);
    int64_t now = time_now_ms();
    struct robot_event re = {.kind = rules_event_kind(ev->type)};
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    const char *t = ev->time ? ev->time : json_get_str(data, "occurred_at");

    if (!id) {
        *error = "robot id (subject or key) missing or longer than 128 bytes";
        return -EINVAL;
    }
    if (!t || time_parse_rfc3339(t, &re.occurred_ms) != 0) {
        *error = "time (occurred_at) missing or not RFC 3339";
        return -EINVAL;
    }
    if (ev->id)
        re.id_hash = state_hash(ev->id, strlen(ev->id));
    if (re.kind == EVENT_STATUS) {
        const cJSON *inner = cJSON_GetObjectItemCaseSensitive(data, "data");
        re.vendor_status = json_get_str(inner, "status");
    }
    metric_series_add(p->s_events[re.kind], 1);
    if (re.kind == EVENT_OTHER || re.kind == EVENT_COMMAND_ACK || re.kind == EVENT_COMMAND_RESULT)
        return 0; /* nothing of the robot's state depends on them */

    struct robot *r = robot_table_get(p->table, id, len);
    if (r && !(r->flags & ROBOT_F_DELETED)) {
        enum rules_check c = rules_check_event(r, &re, &p->set.rules);
        if (c == RULES_DUPLICATE) {
            metric_add(p->m_dupes, 1);
            return 0;
        }
        if (c == RULES_LATE) {
            metric_add(p->m_late, 1);
            return 0;
        }
    }
    int rc = txn_ensure(p);
    if (rc)
        return rc;
    r = robot_for(p, id, len, kafka_msg_partition(m));
    struct derived before = derive(p, r, now);
    struct rules_request req = {0};
    rules_apply_event(r, &re, &p->set.rules, now, &req);
    r->last_offset = kafka_msg_offset(m);
    changed(p, r, before, now);
    arm(p, r);
    if (req.suppressed) {
        const char *labels[] = {request_reason_name(req.suppressed_reason), req.suppressed};
        metric_series_add(metric_series(p->m_suppressed, labels), 1);
    }
    if (req.reason != REASON_NONE)
        return produce_request(p, r, &req, parent);
    return 0;
}

static int handle_status(struct processor *p, const struct kafka_msg *m, const cJSON *root,
                         const struct cloudevent *ev, const char **error)
{
    size_t len;
    const char *id = robot_id_of(ev, m, &len);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    const char *state = json_get_str(data, "state");
    int64_t now = time_now_ms();

    metric_series_add(p->s_events[EVENT_KIND_COUNT], 1);
    if (!ev->type || strcmp(ev->type, "command.status") != 0)
        return 0;
    if (!id) {
        *error = "robot id (subject or key) missing or longer than 128 bytes";
        return -EINVAL;
    }
    struct robot probe = {0};
    if (rules_apply_command_status(&probe, state, now) != 0) {
        *error = "data.state is not a command lifecycle state";
        return -EINVAL;
    }
    int rc = txn_ensure(p);
    if (rc)
        return rc;
    struct robot *r = robot_for(p, id, len, kafka_msg_partition(m));
    struct derived before = derive(p, r, now);
    rules_apply_command_status(r, state, now);
    changed(p, r, before, now);
    arm(p, r);
    return 0;
}

static bool mode_listed(const cJSON *modes, const char *mode)
{
    const cJSON *it;
    if (!cJSON_IsArray(modes))
        return true;
    cJSON_ArrayForEach(it, modes)
    {
        if (cJSON_IsString(it) && strcmp(it->valuestring, mode) == 0)
            return true;
    }
    return false;
}

static int handle_registry(struct processor *p, const struct kafka_msg *m, const cJSON *root,
                           const struct cloudevent *ev, const char **error)
{
    size_t len;
    const char *id = robot_id_of(ev, m, &len);
    int64_t now = time_now_ms();

    metric_series_add(p->s_events[EVENT_KIND_COUNT + 1], 1);
    if (!ev->type || str_has_prefix(ev->type, "source."))
        return 0;
    bool upsert = strcmp(ev->type, "robot.upserted") == 0;
    if (!upsert && strcmp(ev->type, "robot.deleted") != 0)
        return 0;
    if (!id) {
        *error = "robot id (subject or key) missing or longer than 128 bytes";
        return -EINVAL;
    }
    struct robot *r = robot_table_get(p->table, id, len);
    if (!upsert && !r)
        return 0;
    int rc = txn_ensure(p);
    if (rc)
        return rc;
    r = robot_for(p, id, len, kafka_msg_partition(m));
    struct derived before = derive(p, r, now);
    if (upsert) {
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
        const cJSON *policy = cJSON_GetObjectItemCaseSensitive(data, "policy");
        const cJSON *modes = cJSON_GetObjectItemCaseSensitive(policy, "modes");
        bool auto_reboot = p->set.rules.default_auto_reboot;
        if (policy && json_get_bool(policy, "auto_reboot", &auto_reboot) == -EINVAL) {
            *error = "data.policy.auto_reboot is not a boolean";
            return -EINVAL;
        }
        rules_apply_policy(r, auto_reboot, mode_listed(modes, "soft"), mode_listed(modes, "hard"));
        changed(p, r, before, now);
        return 0;
    }
    /* Deleted: forget everything now; tombstones go out at commit. */
    deadline_heap_remove(p->heap, r);
    struct robot fresh = {.id = r->id,
                          .partition = r->partition,
                          .heap_idx = HEAP_NONE,
                          .last_offset = -1,
                          .flags = r->flags | ROBOT_F_DELETED};
    *r = fresh;
    return 0;
}

static void handle_message(struct processor *p, struct kafka_msg *m)
{
    const char *topic = kafka_msg_topic(m);
    int t = topic_index(topic);
    int32_t part = kafka_msg_partition(m);
    struct position *ps = t >= 0 ? position_of(p, t, part) : NULL;
    size_t len = 0, tplen = 0;
    const char *value = kafka_msg_value(m, &len);
    const char *tpv = kafka_msg_header(m, "traceparent", &tplen);
    char parent[TRACE_PARENT_LEN] = "";
    const char *error = NULL;
    struct cloudevent ev;
    char err[160] = "";
    int rc = 0;

    if (!ps || !ps->assigned)
        return; /* a late message of a partition already given away */
    if (ps->committed < 0)
        ps->committed = kafka_msg_offset(m);
    if (tpv && tplen == TRACE_PARENT_LEN - 1) {
        memcpy(parent, tpv, tplen);
        parent[tplen] = '\0';
    }
    if (!value || len == 0) {
        ps->next = kafka_msg_offset(m) + 1; /* tombstones of compacted inputs */
        return;
    }
    cJSON *root = ce_parse(value, len, &ev, err, sizeof(err));
    if (!root) {
        error = err[0] ? err : "not a CloudEvent";
    } else if (t == T_EVENTS) {
        rc = handle_event(p, m, root, &ev, parent[0] ? parent : NULL, &error);
    } else if (t == T_STATUS) {
        rc = handle_status(p, m, root, &ev, &error);
    } else {
        rc = handle_registry(p, m, root, &ev, &error);
    }
    cJSON_Delete(root);
    if (error) {
        if (txn_ensure(p) != 0)
            return;
        rc = dead_letter(p, m, error, parent[0] ? parent : NULL);
    }
    if (rc && p->txn_open) {
        abort_cycle(p);
        return;
    }
    ps->next = kafka_msg_offset(m) + 1;
    p->cycle_events++;
}

static void fire_timers(struct processor *p)
{
    int64_t now = time_now_ms();
    struct robot *r;
    while ((r = deadline_heap_top(p->heap)) && r->heap_key <= now && !atomic_load(&p->stop)) {
        int64_t due = rules_offline_deadline(r, &p->set.rules);
        if (due == 0) {
            deadline_heap_remove(p->heap, r);
            continue;
        }
        if (due > now) {
            deadline_heap_set(p->heap, r, due);
            continue;
        }
        if (txn_ensure(p) != 0)
            return;
        touch(p, r, false);
        struct derived before = derive(p, r, now);
        struct rules_request req = {0};
        deadline_heap_remove(p->heap, r);
        metric_add(p->m_timers, 1);
        if (!rules_fire_offline(r, &p->set.rules, now, &req)) {
            /* rebooting: look again when the grace period is over */
            deadline_heap_set(p->heap, r, now + p->set.rules.offline_after_ms);
            continue;
        }
        changed(p, r, before, now);
        if (req.suppressed) {
            const char *labels[] = {request_reason_name(req.suppressed_reason), req.suppressed};
            metric_series_add(metric_series(p->m_suppressed, labels), 1);
        }
        if (req.reason != REASON_NONE && produce_request(p, r, &req, NULL) != 0) {
            abort_cycle(p);
            return;
        }
    }
}

/* ---- rebalance ---- */

struct restore_ctx {
    struct processor *p;
    const bool *mine; /* by partition */
    size_t nmine;
    int64_t now;
    size_t count;
};

static void after_restore(void *ud, struct robot *r)
{
    struct restore_ctx *c = ud;
    if (r->partition < 0 || (size_t)r->partition >= c->nmine || !c->mine[r->partition])
        return;
    /* Nobody watched while the partition was away: the offline clock restarts. */
    r->grace_ms = c->now + c->p->set.rules.offline_after_ms;
    int64_t due = rules_offline_deadline(r, &c->p->set.rules);
    if (due)
        deadline_heap_set(c->p->heap, r, due);
    r->mirrored_ms = c->now;
    mirror_add(c->p, r, false, c->now);
    c->count++;
}

static int restore(struct processor *p, const struct kafka_partition *parts, size_t n)
{
    struct kafka_prop props[80];
    size_t np = 0;
    char err[256] = "", group[224];
    props[np++] = (struct kafka_prop){"enable.partition.eof", "true"};
    for (size_t i = 0; i < p->nprops && np < 80; i++)
        props[np++] = p->props[i];
    snprintf(group, sizeof(group), "%s-restore", p->group);
    struct kafka_consumer *c = kafka_consumer_new(p->bootstrap, group, props, np, err, sizeof(err));
    if (!c) {
        LOG_ERROR("cannot create the changelog reader: %s", err);
        return -EINVAL;
    }
    struct kafka_partition *cl = xcalloc(n, sizeof(*cl));
    int64_t *from = xcalloc(n, sizeof(*from));
    bool *mine = xcalloc(p->npos + 1, sizeof(*mine)), *done = xcalloc(p->npos + 1, sizeof(*done));
    for (size_t i = 0; i < n; i++) {
        cl[i] = (struct kafka_partition){TOPIC_SP_CHANGELOG, parts[i].partition};
        from[i] = KAFKA_OFFSET_BEGINNING;
        mine[parts[i].partition] = true;
    }
    int rc = kafka_consumer_assign(c, cl, from, n);
    size_t remaining = n, records = 0;
    int64_t deadline = time_mono_ms() + p->restore_timeout_ms;
    while (rc == 0 && remaining > 0) {
        if (time_mono_ms() > deadline || atomic_load(&p->stop)) {
            rc = KAFKA_ERR_TIMEOUT;
            break;
        }
        struct kafka_msg *m = kafka_consumer_poll(c, 200);
        if (!m)
            continue;
        int32_t part = kafka_msg_partition(m);
        if (kafka_msg_is_eof(m)) {
            if (part >= 0 && (size_t)part < p->npos && mine[part] && !done[part]) {
                done[part] = true;
                remaining--;
            }
        } else if (kafka_msg_error(m)) {
            LOG_WARN("changelog read error: %s", kafka_msg_errstr(m));
        } else if (part >= 0 && (size_t)part < p->npos && mine[part]) {
            size_t klen = 0, vlen = 0;
            const char *key = kafka_msg_key(m, &klen);
            const char *val = kafka_msg_value(m, &vlen);
            uint8_t rec[CHANGELOG_MAX];
            size_t rlen = 0;
            struct robot *r = key && klen > 0 && klen <= ROBOT_ID_MAX
                                  ? robot_table_get(p->table, key, klen)
                                  : NULL;
            records++;
            int crc = val && vlen > 0 ? changelog_record(p, val, vlen, rec, &rlen) : 0;
            if (crc == -ENOENT) {
                records--; /* another group's */
            } else if (!val || vlen == 0) {
                if (r) {
                    deadline_heap_remove(p->heap, r);
                    robot_table_remove(p->table, r);
                }
            } else if (key && klen > 0 && klen <= ROBOT_ID_MAX) {
                bool created = !r;
                if (created)
                    r = robot_table_add(p->table, key, klen, part);
                struct robot saved = *r;
                if (crc != 0 || changelog_decode(r, rec, rlen) != 0) {
                    LOG_WARN("changelog record at offset %lld is unreadable, skipped",
                             (long long)kafka_msg_offset(m));
                    if (created)
                        robot_table_remove(p->table, r);
                    else
                        *r = saved;
                } else {
                    r->partition = part;
                }
            }
        }
        kafka_msg_free(m);
    }
    kafka_consumer_free(c);
    if (rc == 0) {
        struct restore_ctx ctx = {p, mine, p->npos, time_now_ms(), 0};
        robot_table_foreach(p->table, after_restore, &ctx);
        metric_add(p->m_restored, (double)ctx.count);
        LOG_INFO("restored %zu robots of %zu partitions from %zu changelog records", ctx.count, n,
                 records);
        mirror_flush(p);
    }
    free(done);
    free(mine);
    free(from);
    free(cl);
    return rc;
}

struct drop_ctx {
    const bool *gone;
    size_t ngone;
    struct robot **list;
    size_t n, cap;
};

static void collect_gone(void *ud, struct robot *r)
{
    struct drop_ctx *c = ud;
    if (r->partition < 0 || (size_t)r->partition >= c->ngone || !c->gone[r->partition])
        return;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->list = xrealloc(c->list, c->cap * sizeof(*c->list));
    }
    c->list[c->n++] = r;
}

static void drop_partitions(struct processor *p, const struct kafka_partition *parts, size_t n)
{
    struct drop_ctx c = {.gone = NULL};
    bool *gone = xcalloc(p->npos + 1, sizeof(*gone));
    for (size_t i = 0; i < n; i++)
        if ((size_t)parts[i].partition < p->npos)
            gone[parts[i].partition] = true;
    c.gone = gone;
    c.ngone = p->npos;
    robot_table_foreach(p->table, collect_gone, &c);
    for (size_t i = 0; i < c.n; i++) {
        deadline_heap_remove(p->heap, c.list[i]);
        robot_table_remove(p->table, c.list[i]);
    }
    free(c.list);
    free(gone);
}

static void on_rebalance(void *ud, bool assigned, bool lost, const struct kafka_partition *parts,
                         size_t nparts)
{
    struct processor *p = ud;
    struct kafka_partition *comp = xcalloc(nparts * 2 + 1, sizeof(*comp));
    int64_t *stored = xcalloc(nparts * 2 + 1, sizeof(*stored));
    size_t ncomp = 0;

    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < nparts; i++) {
        if (strcmp(parts[i].topic, TOPIC_ROBOT_EVENTS) != 0)
            continue;
        for (int t = T_STATUS; t <= T_REGISTRY; t++) {
            comp[ncomp] = (struct kafka_partition){topic_names[t], parts[i].partition};
            stored[ncomp++] = KAFKA_OFFSET_STORED;
        }
    }
    if (assigned) {
        LOG_INFO("assigned %zu partitions of %s", nparts, TOPIC_ROBOT_EVENTS);
        for (size_t i = 0; i < nparts; i++)
            position_of(p, T_EVENTS, parts[i].partition);
        bool stopping = atomic_load(&p->stop);
        int rc = restore(p, parts, nparts);
        /* Interrupted by our own shutdown: nothing failed, the next owner restores. */
        if (rc && !stopping && atomic_load(&p->stop))
            LOG_INFO("state restore interrupted by shutdown");
        else if (rc) {
            LOG_ERROR("cannot rebuild state from %s: exiting so another instance can take over",
                      TOPIC_SP_CHANGELOG);
            atomic_store(&p->failed, true);
            atomic_store(&p->stop, true);
            lifecycle_request_stop();
        }
        for (size_t i = 0; i < nparts; i++)
            for (int t = 0; t < NTOPICS; t++)
                *position_of(p, t, parts[i].partition) = (struct position){true, -1, -1};
        if (kafka_consumer_assign(p->consumer, comp, stored, ncomp) != 0)
            LOG_ERROR("cannot assign the command-status and registry partitions");
    } else {
        LOG_INFO("%s %zu partitions of %s", lost ? "lost" : "revoked", nparts, TOPIC_ROBOT_EVENTS);
        if (p->txn_open) {
            if (lost)
                abort_cycle(p);
            else
                commit_cycle(p);
        }
        drop_partitions(p, parts, nparts);
        for (size_t i = 0; i < nparts; i++)
            for (int t = 0; t < NTOPICS; t++)
                *position_of(p, t, parts[i].partition) = (struct position){false, -1, -1};
        kafka_consumer_unassign(p->consumer, comp, ncomp);
    }
    pthread_mutex_unlock(&p->mu);
    free(stored);
    free(comp);
}

/* ---- the thread ---- */

static void refresh_settings(struct processor *p)
{
    unsigned gen = atomic_load(&p->settings_gen);
    if (gen == p->seen_gen)
        return;
    pthread_mutex_lock(&p->settings_mu);
    struct settings next = p->pending;
    pthread_mutex_unlock(&p->settings_mu);
    bool retime = next.rules.offline_after_ms != p->set.rules.offline_after_ms;
    pthread_mutex_lock(&p->mu);
    p->set = next;
    p->seen_gen = gen;
    if (retime) {
        /* Every armed deadline is re-timed: earlier ones too. */
        struct robot *r;
        struct robot **armed = NULL;
        size_t n = 0, cap = 0;
        while ((r = deadline_heap_top(p->heap))) {
            if (n == cap) {
                cap = cap ? cap * 2 : 256;
                armed = xrealloc(armed, cap * sizeof(*armed));
            }
            armed[n++] = r;
            deadline_heap_remove(p->heap, r);
        }
        for (size_t i = 0; i < n; i++)
            arm(p, armed[i]);
        free(armed);
    }
    pthread_mutex_unlock(&p->mu);
    LOG_INFO("settings applied: offline_after_s=%lld fault_threshold=%d fault_window_s=%lld",
             (long long)(p->set.rules.offline_after_ms / 1000), p->set.rules.fault_threshold,
             (long long)(p->set.rules.fault_window_ms / 1000));
}

struct status_count {
    double n[ROBOT_STATUS_COUNT];
};

static void count_status(void *ud, struct robot *r)
{
    struct status_count *c = ud;
    c->n[r->status < ROBOT_STATUS_COUNT ? r->status : 0]++;
}

static void update_gauges(struct processor *p)
{
    struct status_count c = {{0}};
    pthread_mutex_lock(&p->mu);
    robot_table_foreach(p->table, count_status, &c);
    metric_set(p->m_robots, (double)robot_table_count(p->table));
    metric_set(p->m_state_bytes, (double)robot_table_bytes(p->table));
    for (int s = 0; s < ROBOT_STATUS_COUNT; s++) {
        const char *v[] = {robot_status_name((enum robot_status)s)};
        metric_series_set(metric_series(p->m_by_status, v), c.n[s]);
    }
    for (size_t i = 0; i < p->npos; i++) {
        struct position *ps = &p->pos[T_EVENTS][i];
        int64_t high = -1;
        if (!ps->assigned || ps->next < 0 ||
            kafka_consumer_high_watermark(p->consumer, TOPIC_ROBOT_EVENTS, (int32_t)i, &high) ||
            high < 0)
            continue;
        char part[24];
        snprintf(part, sizeof(part), "%zu", i);
        const char *v[] = {part};
        metric_series_set(metric_series(p->m_lag, v),
                          (double)(high > ps->next ? high - ps->next : 0));
    }
    pthread_mutex_unlock(&p->mu);
}

/*
 * Creates the transactional producer (init_transactions needs the broker) and
 * the consumer, and subscribes. 0, or negative with errbuf saying why.
 */
static int connect_kafka(struct processor *p, char *errbuf, size_t errsize)
{
    struct kafka_prop props[80];
    size_t np = 0;
    props[np++] = (struct kafka_prop){"client.id", p->client_id};
    props[np++] = (struct kafka_prop){"transaction.timeout.ms", "10000"};
    props[np++] = (struct kafka_prop){"linger.ms", "5"};
    for (size_t i = 0; i < p->nprops && np < 80; i++)
        props[np++] = p->props[i];
    if (!p->producer) {
        p->producer = kafka_producer_new(p->bootstrap, props, np, p->txn_id, NULL, errbuf, errsize);
        if (!p->producer)
            return -EAGAIN;
    }
    np = 1;
    for (size_t i = 0; i < p->nprops && np < 80; i++)
        props[np++] = p->props[i];
    p->consumer = kafka_consumer_new(p->bootstrap, p->group, props, np, errbuf, errsize);
    if (!p->consumer)
        return -EINVAL;
    kafka_consumer_on_rebalance(p->consumer, on_rebalance, p);
    const char *topics[] = {TOPIC_ROBOT_EVENTS};
    int rc = kafka_consumer_subscribe(p->consumer, topics, 1);
    if (rc) {
        snprintf(errbuf, errsize, "cannot subscribe to %s", TOPIC_ROBOT_EVENTS);
        kafka_consumer_free(p->consumer);
        p->consumer = NULL;
    }
    return rc;
}

static void *run(void *arg)
{
    struct processor *p = arg;
    /* A broker that is down at start delays processing; it is no reason to exit. */
    int64_t backoff_ms = 500;
    for (;;) {
        char err[256] = "";
        if (atomic_load(&p->stop))
            return NULL;
        if (connect_kafka(p, err, sizeof(err)) == 0)
            break;
        LOG_WARN("kafka is not ready for the processor, retrying in %lld ms: %s",
                 (long long)backoff_ms, err);
        for (int64_t t = 0; t < backoff_ms && !atomic_load(&p->stop); t += 100)
            time_sleep_ms(100);
        backoff_ms = backoff_ms < 8000 ? backoff_ms * 2 : 8000;
    }
    atomic_store(&p->running, true);
    while (!atomic_load(&p->stop)) {
        refresh_settings(p);
        int wait = 20;
        if (p->txn_open) {
            int64_t left = p->cycle_start_ms + p->set.cycle_ms - time_mono_ms();
            wait = left < 0 ? 0 : left < wait ? (int)left : wait;
        }
        struct kafka_msg *m = kafka_consumer_poll(p->consumer, wait);
        pthread_mutex_lock(&p->mu);
        if (m) {
            if (kafka_msg_error(m) && !kafka_msg_is_eof(m))
                LOG_WARN("kafka consumer error: %s", kafka_msg_errstr(m));
            else if (!kafka_msg_is_eof(m))
                handle_message(p, m);
            kafka_msg_free(m);
        }
        fire_timers(p);
        if (p->txn_open && (p->cycle_events >= p->set.cycle_max_events ||
                            time_mono_ms() - p->cycle_start_ms >= p->set.cycle_ms))
            commit_cycle(p);
        pthread_mutex_unlock(&p->mu);
        if (time_mono_ms() >= p->next_gauges_ms) {
            update_gauges(p);
            p->next_gauges_ms = time_mono_ms() + 1000;
        }
    }
    pthread_mutex_lock(&p->mu);
    if (p->txn_open && !atomic_load(&p->failed))
        commit_cycle(p);
    pthread_mutex_unlock(&p->mu);
    /* Leaving the group revokes everything through on_rebalance on this thread. */
    kafka_consumer_free(p->consumer);
    p->consumer = NULL;
    atomic_store(&p->running, false);
    return NULL;
}

/* ---- HTTP ---- */

static void get_state(struct http_request *req, void *ud)
{
    struct processor *p = ud;
    const char *id = http_request_param(req, "robot_id");
    size_t len = id ? strlen(id) : 0;
    if (len == 0 || len > ROBOT_ID_MAX) {
        http_respond_problem(req, 400, "robot_id", "robot_id must be 1 to %d bytes", ROBOT_ID_MAX);
        return;
    }
    pthread_mutex_lock(&p->mu);
    struct robot *r = robot_table_get(p->table, id, len);
    cJSON *body = NULL;
    if (r && !(r->flags & ROBOT_F_DELETED)) {
        int64_t now = time_now_ms();
        body = state_json(p, r, now);
        cJSON_AddBoolToObject(body, "auto_reboot_allowed",
                              (r->policy & POLICY_KNOWN) ? (r->policy & POLICY_AUTO_REBOOT) != 0
                                                         : p->set.rules.default_auto_reboot);
        cJSON_AddBoolToObject(body, "policy_known", (r->policy & POLICY_KNOWN) != 0);
        add_time(body, "last_seen_at", r->last_seen_ms);
        int64_t due = rules_offline_deadline(r, &p->set.rules);
        add_time(body, "offline_deadline", due);
        cJSON_AddBoolToObject(body, "uncommitted", (r->flags & ROBOT_F_DIRTY) != 0);
    }
    pthread_mutex_unlock(&p->mu);
    if (!body) {
        http_respond_problem(req, 404, "robot_id",
                             "robot '%s' is not in the state of this instance (unknown, or its "
                             "partition is owned by another instance)",
                             id);
        return;
    }
    http_respond_json(req, 200, body);
    cJSON_Delete(body);
}

int processor_register_routes(struct processor *p)
{
    return http_server_route(service_http(p->svc), "GET", "/v1/state/{robot_id}", get_state, p);
}

/* ---- lifecycle ---- */

static void register_metrics(struct processor *p, struct metrics *m)
{
    const char *type[] = {"type"};
    const char *reason[] = {"reason"};
    const char *sup[] = {"reason", "why"};
    const char *topic[] = {"topic"};
    const char *status[] = {"status"};
    const char *part[] = {"partition"};
    const double commit_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,   0.25,   0.5,   1,    2.5};
    p->m_events = metrics_counter(m, "stream_events_total",
                                  "Input messages processed, by event type", 1, type);
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        const char *v[] = {rules_event_kind_name((enum event_kind)k)};
        p->s_events[k] = metric_series(p->m_events, v);
    }
    const char *vs[] = {"command.status"}, *vr[] = {"registry"};
    p->s_events[EVENT_KIND_COUNT] = metric_series(p->m_events, vs);
    p->s_events[EVENT_KIND_COUNT + 1] = metric_series(p->m_events, vr);
    p->m_late = metrics_counter(m, "stream_late_events_total",
                                "Events older than allowed_lateness_s, ignored", 0, NULL);
    p->m_dupes = metrics_counter(m, "stream_duplicate_events_total",
                                 "Events whose CloudEvent id was already applied", 0, NULL);
    p->m_dlq = metrics_counter(m, "stream_dead_letters_total", "Poison messages sent to the DLQ", 1,
                               topic);
    p->m_commit =
        metrics_histogram(m, "stream_txn_commit_seconds",
                          "Time to produce the cycle's state, send offsets and commit", 0, NULL,
                          sizeof(commit_bounds) / sizeof(commit_bounds[0]), commit_bounds);
    p->m_commits =
        metrics_counter(m, "stream_txn_commits_total", "Transactions committed", 0, NULL);
    p->m_aborts = metrics_counter(m, "stream_txn_aborts_total", "Transactions aborted", 0, NULL);
    p->m_robots = metrics_gauge(m, "stream_state_robots", "Robots held in state", 0, NULL);
    p->m_state_bytes = metrics_gauge(m, "stream_state_bytes",
                                     "Bytes of robot state (records, ids, table)", 0, NULL);
    p->m_by_status = metrics_gauge(m, "stream_robots", "Robots by derived status", 1, status);
    p->m_timers =
        metrics_counter(m, "stream_timers_fired_total", "Heartbeat deadlines that fired", 0, NULL);
    p->m_lag =
        metrics_gauge(m, "stream_consumer_lag",
                      "Messages of robot.events.v1 not processed yet, by partition", 1, part);
    p->m_requests = metrics_counter(m, "stream_reboot_requests_total",
                                    "Automatic reboot requests produced", 1, reason);
    p->m_suppressed = metrics_counter(m, "stream_reboot_suppressed_total",
                                      "Triggers that made no request, and why", 2, sup);
    p->m_restored = metrics_counter(m, "stream_restored_robots_total",
                                    "Robots rebuilt from the changelog", 0, NULL);
    p->m_mirror_errors = metrics_counter(m, "stream_mirror_errors_total",
                                         "Redis mirror updates that failed", 0, NULL);
}

struct processor *processor_new(struct service *svc, char *errbuf, size_t errsize)
{
    const struct cfg *c = service_config_acquire(svc);
    struct processor *p = xcalloc(1, sizeof(*p));
    char instance[INSTANCE_MAX + 1] = "", txn_id[INSTANCE_MAX + 32];

    p->svc = svc;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->settings_mu, NULL);
    settings_read(c, &p->set);
    p->pending = p->set;
    p->table = robot_table_new();
    p->heap = deadline_heap_new();
    position_of(p, 0, 0);
    str_copy(p->bootstrap, cfg_get_str(c, "kafka.bootstrap_servers"), sizeof(p->bootstrap));
    str_copy(p->group, cfg_get_str(c, "stream.group_id"), sizeof(p->group));
    p->restore_timeout_ms = cfg_get_int(c, "stream.restore_timeout_s") * 1000;
    p->nprops = service_kafka_props(svc, &p->props);
    register_metrics(p, service_metrics(svc));

    const char *inst = cfg_get_str(c, "stream.instance_id");
    if (inst && *inst)
        str_copy(instance, inst, sizeof(instance));
    else if (gethostname(instance, sizeof(instance) - 1) != 0 || !instance[0])
        str_copy(instance, "default", sizeof(instance));
    snprintf(txn_id, sizeof(txn_id), "stream-processor-%s", instance);

    struct redis_options ro = {
        .url = cfg_get_str(c, "redis.url"),
        .connect_timeout_ms = (int)cfg_get_int(c, "redis.connect_timeout_ms"),
        .command_timeout_ms = (int)cfg_get_int(c, "redis.command_timeout_ms"),
    };
    p->redis = redis_new(&ro, errbuf, errsize);
    if (!p->redis)
        goto out_free;

    str_copy(p->txn_id, txn_id, sizeof(p->txn_id));
    snprintf(p->client_id, sizeof(p->client_id), "stream-processor-%s", instance);
    LOG_INFO("stream processor '%s' in group '%s' (state record %zu bytes per robot)", txn_id,
             p->group, (size_t)STATE_ROBOT_BYTES);
    service_config_release(svc, c);
    return p;

out_free:
    service_config_release(svc, c);
    processor_free(p);
    return NULL;
}

int processor_start(struct processor *p)
{
    int rc = pthread_create(&p->thread, NULL, run, p);
    if (rc)
        return -rc;
    p->started = true;
    return 0;
}

void processor_reload(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg)
{
    struct processor *p = ud;
    struct settings s;
    (void)old_cfg;
    settings_read(new_cfg, &s);
    pthread_mutex_lock(&p->settings_mu);
    p->pending = s;
    pthread_mutex_unlock(&p->settings_mu);
    atomic_fetch_add(&p->settings_gen, 1);
}

void processor_stop(void *ud)
{
    struct processor *p = ud;
    if (!p || !p->started)
        return;
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    p->started = false;
}

bool processor_failed(const struct processor *p)
{
    return p && atomic_load(&p->failed);
}

void processor_free(struct processor *p)
{
    if (!p)
        return;
    processor_stop(p);
    kafka_consumer_free(p->consumer);
    kafka_producer_free(p->producer, 5000);
    redis_free(p->redis);
    robot_table_free(p->table);
    deadline_heap_free(p->heap);
    for (int t = 0; t < NTOPICS; t++)
        free(p->pos[t]);
    free(p->undo);
    free(p->dirty);
    free(p->mirror);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->settings_mu);
    free(p);
}
