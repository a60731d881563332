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
 * the transaction and it commits.
 *
 * The commit overlaps the next cycle. At the end of a cycle the processing
 * thread only stages each dirty robot's binary record (and, if its derived
 * state changed, the two figures of its state message that depend on the
 * settings); the committer thread sends the offsets, builds the changelog and
 * state CloudEvents from those, produces them and commits (commit_job),
 * waiting on the broker for most of that, while the processing thread goes
 * on with the next cycle, whose Kafka transaction can only begin once the
 * commit is in: its outputs wait in the deferred queue until then
 * (txn_begin_deferred). At most one commit is in flight; the end of the next
 * cycle waits for it. Its pre-images stay apart (the hand-off) until it
 * committed, so a failed commit rolls back both
 * cycles, newest first, to the last committed state and offsets; its
 * positions count as committed, and robots it deleted go, only once it is in
 * (commit_finish). Rebalances, shutdown and producer replacement wait for the
 * commit in flight first.
 *
 * Heartbeat checkpoints. A change made only by heartbeats and status reports
 * (no derived state change, no request) is not written to the changelog at once: the robot
 * joins its events partition's queue of unsaved robots (struct unsaved_q) and
 * its record goes out once the oldest of those events not saved is
 * stream.changelog_heartbeat_s old (unsaved_due), with any other change of
 * the robot, or when the partition is flushed. Meanwhile the offset committed
 * for that partition stays at the oldest unsaved event (events_target),
 * so a restart, a rebalance or an abort replays them. Each robot keeps the
 * events offset of the last event it applied (saved in its record), and an
 * event at or below it is skipped (stream_replayed_events_total): the replay
 * applies exactly what the changelog lacks, in the same order, with the same
 * versions. Outputs of a replayed range are never made twice: a request or a
 * state change saves the robot with it (its offset passes the event); a dead
 * letter of an events partition, and a robot deleted by the registry (whose
 * older heartbeats a replay would bring back), flush the partition in the same
 * transaction. Revocation and shutdown flush what they give away. Most input
 * is heartbeats of robots already online: at 100k robots this writes one
 * record per robot per few seconds instead of ~0.9 records per event.
 *
 * Abortable error: abort, put every pre-image back, seek each partition back
 * to its committed position. Fatal: fenced (an
 * instance with the same transactional id took over), stop and exit non-zero;
 * any other fatal error (say INVALID_TXN_STATE, the broker having expired a
 * transaction while it was away), or an abort that cannot finish: roll back
 * the same way and replace the producer by one with the same transactional id
 * (recover_producer), with backoff while the broker is still away. A fence
 * that ends a transaction open for longer than transaction.timeout.ms is the
 * coordinator's own doing (it aborts an expired transaction by bumping the
 * producer epoch, which fences the producer that opened it, typically after a
 * broker outage): it is recovered like the other fatal errors, at most
 * FENCE_RECOVERIES times within FENCE_WINDOW_MS; past that, or for a fence of
 * a young transaction, another instance has our transactional id and we exit.
 *
 * Offline verdicts. A robot's heartbeat deadline, and the end of its reboot
 * grace, only fire once its events partition has caught up: what was processed
 * (or the partition end the consumer reported since it last started reading
 * there) has reached the high watermark librdkafka saw (no round trip). No
 * slack: a robot that heartbeats every few seconds on a quiet partition has
 * only a handful of messages there, so "a few messages behind" can be many
 * seconds of its heartbeats unread. Behind a backlog (a restore, a rollback, a
 * broker back from an outage) the robot's newer heartbeats may still be unread:
 * its deadline is put off by DEFER_MS and looked at again. A broker that does
 * not answer (asked when nothing was read for QUIET_MS while deadlines are
 * due), a consumer error or a replaced producer makes every partition unknown
 * until a message or a partition end arrives, or the broker answered two
 * metadata requests PING_MS apart; then every robot's offline clock restarts
 * (its heartbeats could not arrive meanwhile), and once more when the first
 * event arrives (upstream producers may reconnect later than we do).
 *
 * Rebalance. On assignment the state of the new partitions is rebuilt from the
 * changelog (read_committed, to its end) before the callback returns, so no
 * event of those partitions is processed before. On revocation the open
 * transaction commits first (or aborts if the assignment was lost), then the
 * partitions' robots are dropped.
 *
 * Locking. One mutex guards the state; the processing thread holds it while it
 * handles a message, fires timers or commits, HTTP readers hold it briefly.
 * The Redis mirror has a thread, a connection and a queue (mq_mu) of its own;
 * the fetch waker (wake_fetcher) a thread and a one-partition slot (wk_mu).
 *
 * Hot path. Messages come from the consumer POLL_BATCH at a time (one queue
 * lock, state lock and clock reading a batch, not a message; no offset store,
 * the positions go to the transaction); a rollback seeks back, so what is left
 * of the batch is dropped (rewinds). Heartbeats, faults and boots are read by
 * evscan (no cJSON tree), event times and output times go through small
 * per-thread caches, and the changelog and state CloudEvents are written
 * straight into a buffer on the committer thread.
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
#include "evscan.h"
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

#define NTOPICS          3 /* events, command status, registry */
#define T_EVENTS         0
#define T_STATUS         1
#define T_REGISTRY       2
#define OUT_MAX_BYTES    (64 * 1024)
#define DLQ_MAX_PAYLOAD  (256 * 1024)
#define TXN_TIMEOUT_MS   30000
#define TXN_EXPIRY_MS    10000 /* transaction.timeout.ms: the coordinator aborts after this */
#define FENCE_RECOVERIES 3
#define FENCE_WINDOW_MS  (10 * 60 * 1000)
#define COMMIT_RETRIES   3
#define MIRROR_BATCH     1000
#define MIRROR_KEYS      100 /* robots a mirror script call */
#define MIRROR_QUEUE_MAX 200000
#define INSTANCE_MAX     96
#define DEFER_MS         250 /* a deadline of a partition that lags is looked at again after this */
#define PING_MS          1000
#define WAKE_MS          3    /* wake_fetcher asks at most this often */
#define WAKE_LOW         1000 /* messages left in the consumer queue that wake the fetcher */
#define POLL_BATCH       256  /* messages taken from the consumer at once */
#define QUIET_MS         1500 /* nothing read this long while deadlines are due: ask the broker */

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
    {"stream.changelog_heartbeat_s", CFG_INT, "2", 0, 300, true, NULL,
     "changes by heartbeats and status reports alone (no derived state change) reach the "
     "changelog at most this often per robot (0 = every "
     "cycle); the committed robot.events.v1 offset waits for them, so a restart replays up to "
     "this much"},
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
    int64_t changelog_heartbeat_ms;
};

struct position {
    bool assigned;
    int64_t committed; /* next offset as of the last commit, -1 unknown */
    int64_t next;      /* next offset after what was processed, -1 none */
    int64_t eof;       /* where the partition's end was last seen since reading (re)started, -1 */
};

struct undo {
    struct robot *r;
    bool created;
    struct robot saved;
};

/*
 * The robots of one events partition whose heartbeats are not in the changelog
 * yet (see "Heartbeat checkpoints" at the top), in the order they got unsaved.
 * An entry is stale once the robot's record was written (r->unsaved no longer
 * names its offset); stale entries are dropped as they reach the head.
 */
struct unsaved_ent {
    struct robot *r;
    int64_t offset;   /* of the robot's first heartbeat not saved */
    int64_t since_ms; /* monotonic: when that heartbeat was applied */
};

struct unsaved_q {
    struct unsaved_ent *e;
    size_t head, n, cap;
    bool flush; /* save all of them in the open cycle */
};

/* An output made while the previous cycle's commit is in flight: produced at the next begin. */
struct deferred_out {
    const char *topic; /* a topic name constant */
    int32_t partition;
    size_t klen, vlen;
    bool tombstone;
    char traceparent[TRACE_PARENT_LEN]; /* "" = none */
    char *data;                         /* key, NUL, value */
};

/* A record the committer produces for the handed-off cycle; its bytes are in the arena. */
enum cl_kind {
    CL_RECORD, /* a changelog record (the payload: the binary record) */
    CL_STATE,  /* a robot.state.v1 message (the payload: struct state_extra), of the robot
                  whose CL_RECORD comes right before it */
    CL_DELETE, /* tombstones on the changelog and robot.state.v1 (no payload) */
};

/* What a robot.state.v1 message says beyond the robot's record: read under the settings of its
 * cycle. */
struct state_extra {
    int64_t faults_in_window;
    bool reboot_in_progress;
};

struct cl_item {
    size_t off; /* in the arena: the robot id, NUL, the payload */
    uint32_t len, idlen;
    uint8_t kind;
    uint8_t sent; /* produced (produce_items) */
    int32_t partition;
    uint64_t version;
    int64_t updated_ms;
};

/*
 * The cycle handed to the committer thread: the records it produces, the
 * positions it sends to its transaction, what to do once it committed (mirror
 * items, robots to drop) and, should it fail, its pre-images.
 */
struct handoff {
    struct kafka_partition *parts;
    int64_t *offsets;
    int *topics;
    size_t nparts, parts_cap;
    struct cl_item *items;
    size_t nitems, items_cap;
    uint8_t *opened; /* by partition: the topics produce_items opened (1 changelog, 2 state) */
    size_t opened_cap;
    char *arena;
    size_t arena_len, arena_cap;
    struct undo *undo;
    size_t nundo, undo_cap;
    struct robot **gone; /* deleted in the cycle: dropped once it committed */
    size_t ngone, gone_cap;
    struct mirror_item *mirror;
    size_t nmirror, mirror_cap;
    int64_t opened_ms; /* monotonic: when its transaction began */
    int64_t started_ms;
};

/*
 * RFC 3339 times without a gmtime and a printf per call: the text of the last
 * few seconds formatted is kept (event times and the wall clock alternate) and
 * only the milliseconds change. One cache per thread.
 */
#define TIME_CACHE_SLOTS 4

struct time_cache {
    int64_t sec[TIME_CACHE_SLOTS]; /* -1: empty */
    char text[TIME_CACHE_SLOTS][TIME_RFC3339_LEN];
    unsigned next; /* the slot to replace */
};

/* One Redis mirror update: the numbers, formatted by the mirror thread. */
struct mirror_item {
    bool del;
    bool reset; /* a DEL of the key came before this update */
    bool in_progress;
    uint8_t status;
    uint8_t faults;
    uint64_t version;
    int64_t heartbeat_ms, updated_ms, offset;
    size_t keylen;
    char key[ROBOT_ID_MAX + 16];
};

struct processor {
    struct service *svc;
    struct kafka_consumer *consumer;
    struct kafka_producer *producer;
    struct redis *redis;
    char bootstrap[512];
    char group[208];
    char *group_json; /* group, JSON-escaped */
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
    struct unsaved_q *uq; /* by events partition, npos of them */
    size_t npos;
    struct undo *undo;
    size_t nundo, undo_cap;
    struct robot **dirty;
    size_t ndirty, dirty_cap;
    struct mirror_item *mirror; /* staged in the open cycle */
    size_t nmirror, mirror_cap;

    /* the mirror thread's queue (mq_mu) */
    pthread_mutex_t mq_mu;
    pthread_cond_t mq_ready, mq_drained;
    struct mirror_item *mq;
    size_t mq_n, mq_cap;
    bool mirror_stop, mirror_running;
    pthread_t mirror_thread;
    char mirror_sha[48]; /* the mirror thread's */

    /* the committer thread (cm_mu): commits the handed-off cycle while the next one runs */
    pthread_mutex_t cm_mu;
    pthread_cond_t cm_cond;
    bool cm_job, cm_done, cm_quit;
    int cm_rc;
    atomic_bool cm_finished; /* cm_done, read without the lock */
    pthread_t committer;
    bool committer_running;
    bool inflight; /* a handed-off cycle awaits its commit (the processing thread's view) */

    /* the fetch waker thread (wk_mu): asks for the high watermark of the partition wake_fetcher
     * chose, so the processing thread goes on meanwhile */
    pthread_mutex_t wk_mu;
    pthread_cond_t wk_cond;
    int32_t wk_part; /* the partition to ask about, -1: none */
    bool wk_quit, waker_running;
    atomic_bool wk_failed; /* the last question got no answer */
    pthread_t waker;
    struct handoff ho;
    struct deferred_out *outq;
    size_t nout, out_cap;
    struct buf out_buf;      /* the state records being built */
    struct buf cm_buf;       /* the committer's changelog records being built */
    struct time_cache cm_tc; /* the committer's format_time cache */

    bool txn_open;   /* a cycle is open: changes since the last hand-off */
    bool kafka_txn;  /* its Kafka transaction began (not while a commit is in flight) */
    bool broken;     /* a fatal producer error: recover_producer replaces the producer */
    bool fetch_ok;   /* no consumer error since the last sign that the broker answers */
    bool await_flow; /* since the broker came back, no event was read yet */
    int64_t next_ping_ms;
    int64_t next_wake_ms;    /* earliest next wake_fetcher round trip */
    int64_t next_unsaved_ms; /* next look for due heartbeat checkpoints while idle */
    size_t wake_next;        /* the events partition wake_fetcher looks at first */
    int64_t last_read_ms;    /* monotonic: the consumer's last message or partition end */
    int pings_ok;
    int8_t *catchup; /* by partition, within one fire_timers: 0 unknown, 1 caught up, 2 lagging */
    size_t catchup_cap;
    int64_t cycle_start_ms;
    int64_t cycle_events;
    unsigned rewinds;        /* +1 per seek back: the rest of a polled batch is stale */
    int64_t mono;            /* the run loop's monotonic clock reading for the message at hand */
    int64_t fence_window_ms; /* monotonic start of the window counting fence recoveries */
    int fence_recoveries;

    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_bool failed;
    atomic_bool running;

    /* metrics */
    struct metric *m_events, *m_late, *m_dupes, *m_dlq, *m_commit, *m_commits, *m_aborts;
    struct metric *m_robots, *m_state_bytes, *m_by_status, *m_timers, *m_lag, *m_requests;
    struct metric *m_suppressed, *m_restored, *m_mirror_errors, *m_deferred, *m_wakes;
    struct metric *m_replayed;
    struct metric_series *s_events[EVENT_KIND_COUNT + 2];
    int64_t next_gauges_ms;

    /* event_time's cache (processing thread only) */
    struct time_cache tc; /* format_time's */
    char time_cache[20];
    int64_t time_cache_base;
    bool time_cache_ok;
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
    s->changelog_heartbeat_ms = cfg_get_int(c, "stream.changelog_heartbeat_s") * 1000;
}

/* Monotonic start of the oldest transaction not committed yet, 0 = none. */
static int64_t oldest_open_ms(const struct processor *p)
{
    if (p->inflight)
        return p->ho.opened_ms;
    return p->kafka_txn ? p->cycle_start_ms : 0;
}

/*
 * Whether a fence is the coordinator expiring our own open transaction (see
 * the top of the file), and may be recovered once more.
 */
static bool fence_expired_txn(struct processor *p)
{
    int64_t mono = time_mono_ms(), since = oldest_open_ms(p);
    if (since == 0 || mono - since < TXN_EXPIRY_MS)
        return false;
    if (p->fence_recoveries == 0 || mono - p->fence_window_ms > FENCE_WINDOW_MS) {
        p->fence_window_ms = mono;
        p->fence_recoveries = 0;
    }
    return ++p->fence_recoveries <= FENCE_RECOVERIES;
}

/*
 * The producer returned KAFKA_ERR_FATAL. Fenced: another instance owns the
 * transactional id now, exit non-zero, unless the transaction had expired
 * (fence_expired_txn). Any other fatal error: the caller rolls back and the
 * thread replaces the producer (recover_producer).
 */
static void producer_fatal(struct processor *p, const char *what)
{
    if (p->broken)
        return;
    p->broken = true;
    bool fenced = kafka_producer_fenced(p->producer);
    if (fenced && fence_expired_txn(p)) {
        LOG_WARN("fatal kafka error in %s: fenced after the transaction outlived its timeout "
                 "(%lld ms open), the coordinator expired it: the producer will be replaced",
                 what, (long long)(time_mono_ms() - oldest_open_ms(p)));
        return;
    }
    if (fenced) {
        LOG_ERROR("fatal kafka error in %s: the producer is fenced, exiting", what);
        atomic_store(&p->failed, true);
        atomic_store(&p->stop, true);
        lifecycle_request_stop();
        return;
    }
    LOG_WARN("fatal kafka error in %s (not a fence): the producer will be replaced", what);
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
                p->pos[i][j] = (struct position){false, -1, -1, -1};
        }
        p->uq = xrealloc(p->uq, n * sizeof(*p->uq));
        memset(p->uq + p->npos, 0, (n - p->npos) * sizeof(*p->uq));
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

static int txn_begin(struct processor *p)
{
    int rc = kafka_txn_begin(p->producer);
    if (rc == KAFKA_ERR_FATAL)
        producer_fatal(p, "begin_transaction");
    if (rc == 0)
        p->kafka_txn = true;
    return rc;
}

/*
 * Opens a cycle before a change. Its Kafka transaction begins now, or, while
 * the previous cycle's commit is in flight, once that commit is done
 * (commit_finish); outputs wait in the deferred queue meanwhile.
 */
static int txn_ensure(struct processor *p)
{
    if (p->txn_open)
        return 0;
    if (p->broken)
        return KAFKA_ERR_FATAL;
    if (!p->inflight) {
        int rc = txn_begin(p);
        if (rc)
            return rc;
    }
    p->txn_open = true;
    p->cycle_start_ms = time_mono_ms();
    p->cycle_events = 0;
    return 0;
}

/*
 * Saves r's pre-image once per transaction and marks it dirty; its changelog
 * record goes into the cycle unless the change is light (a heartbeat or a
 * status report, see apply_event).
 */
static void touch_as(struct processor *p, struct robot *r, bool created, bool light)
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
    if (!light)
        r->flags |= ROBOT_F_SAVE;
}

static void touch(struct processor *p, struct robot *r, bool created)
{
    touch_as(p, r, created, false);
}

/* ---- heartbeat checkpoints (see the top of the file) ---- */

/* r's heartbeat at offset is applied and not saved: r joins its partition's queue. */
static void unsaved_push(struct processor *p, struct robot *r, int64_t offset, int64_t mono)
{
    struct unsaved_q *q = &p->uq[r->partition];
    if (q->n == q->cap && q->head > 0) {
        memmove(q->e, q->e + q->head, (q->n - q->head) * sizeof(*q->e));
        q->n -= q->head;
        q->head = 0;
    }
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 1024;
        q->e = xrealloc(q->e, q->cap * sizeof(*q->e));
    }
    q->e[q->n++] = (struct unsaved_ent){r, offset, mono};
    r->unsaved = offset + 1;
}

/* The queue's oldest live entry (dropping stale ones), or NULL. */
static const struct unsaved_ent *unsaved_head(struct unsaved_q *q)
{
    while (q->head < q->n && q->e[q->head].r->unsaved != q->e[q->head].offset + 1)
        q->head++;
    if (q->head == q->n) {
        q->head = q->n = 0;
        return NULL;
    }
    return &q->e[q->head];
}

/* Whether a partition's queue has robots to save now (unsaved_due would touch one). */
static bool unsaved_pending(struct processor *p, int64_t mono)
{
    for (size_t i = 0; i < p->npos; i++) {
        const struct unsaved_ent *e = unsaved_head(&p->uq[i]);
        if (e && (p->uq[i].flush || mono - e->since_ms >= p->set.changelog_heartbeat_ms))
            return true;
    }
    return false;
}

/*
 * In the open cycle, before its records are staged: marks for saving the
 * robots whose oldest unsaved heartbeat waited changelog_heartbeat_s, and all
 * of a partition's when it is to be flushed.
 */
static void unsaved_due(struct processor *p, int64_t mono)
{
    for (size_t i = 0; i < p->npos; i++) {
        struct unsaved_q *q = &p->uq[i];
        const struct unsaved_ent *e;
        while ((e = unsaved_head(q)) &&
               (q->flush || mono - e->since_ms >= p->set.changelog_heartbeat_ms)) {
            touch(p, e->r, false);
            q->head++;
        }
        q->flush = false;
    }
}

/* Flushes the queues of the given events partitions in the open cycle (opened if needed). */
static void unsaved_flush(struct processor *p, const struct kafka_partition *parts, size_t n)
{
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (parts && strcmp(parts[i].topic, TOPIC_ROBOT_EVENTS) != 0)
            continue;
        size_t k = parts ? (size_t)parts[i].partition : i;
        if (k < p->npos && unsaved_head(&p->uq[k])) {
            p->uq[k].flush = true;
            any = true;
        }
    }
    if (any && !p->txn_open)
        txn_ensure(p);
}

static void unsaved_clear(struct processor *p, size_t partition)
{
    if (partition < p->npos) {
        p->uq[partition].head = p->uq[partition].n = 0;
        p->uq[partition].flush = false;
    }
}

static void unsaved_collect(void *ud, struct robot *r)
{
    struct processor *p = ud;
    if (r->unsaved && r->partition >= 0 && (size_t)r->partition < p->npos) {
        unsaved_push(p, r, r->unsaved - 1, 0);
        p->uq[r->partition].flush = true;
    }
}

/*
 * After a rollback: the queues may name robots the undo removed, and the
 * robots' unsaved offsets went back. Rebuilt from the table, all flushed at
 * the next commit (the replay adds entries out of offset order meanwhile).
 */
static void unsaved_rebuild(struct processor *p)
{
    for (size_t i = 0; i < p->npos; i++)
        unsaved_clear(p, i);
    robot_table_foreach(p->table, unsaved_collect, p);
}

/* The offset to commit for events partition i: its first heartbeat not saved, if any. */
static int64_t events_target(struct processor *p, size_t i)
{
    const struct unsaved_ent *e = unsaved_head(&p->uq[i]);
    int64_t next = p->pos[T_EVENTS][i].next;
    return e && e->offset < next ? e->offset : next;
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
    r->updated_ms = now;
    if (after.status != before.status || after.in_progress != before.in_progress ||
        after.faults != before.faults)
        r->flags |= ROBOT_F_EMIT;
}

static void arm(struct processor *p, struct robot *r)
{
    int64_t due = rules_next_deadline(r, &p->set.rules);
    if (due == 0)
        deadline_heap_remove(p->heap, r);
    else if (r->heap_idx == HEAP_NONE || due < r->heap_key)
        deadline_heap_set(p->heap, r, due);
    /* a later deadline is picked up lazily when the earlier one comes due */
}

static void outq_clear(struct processor *p)
{
    for (size_t i = 0; i < p->nout; i++)
        free(p->outq[i].data);
    p->nout = 0;
}

/* Puts the pre-images of one cycle back, newest first. */
static void undo_apply(struct processor *p, struct undo *undo, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        struct undo *u = &undo[i];
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
        int64_t due = rules_next_deadline(r, &p->set.rules);
        if (due)
            deadline_heap_set(p->heap, r, due);
        else
            deadline_heap_remove(p->heap, r);
    }
}

/*
 * Puts every pre-image back, of the open cycle and then of the one whose
 * commit failed, and seeks each partition to its committed offset: those with
 * processed messages, or all of them (all: messages may have been read
 * without being processed, as when the producer broke).
 */
static void rollback(struct processor *p, bool all)
{
    undo_apply(p, p->undo, p->nundo);
    undo_apply(p, p->ho.undo, p->ho.nundo);
    unsaved_rebuild(p);
    p->nundo = 0;
    p->ndirty = 0;
    p->nmirror = 0;
    p->ho.nundo = 0;
    p->ho.nitems = 0;
    p->ho.arena_len = 0;
    p->ho.ngone = 0;
    p->ho.nmirror = 0;
    p->ho.nparts = 0;
    outq_clear(p);
    for (int t = 0; t < NTOPICS; t++) {
        for (size_t i = 0; i < p->npos; i++) {
            struct position *ps = &p->pos[t][i];
            if (!ps->assigned || ps->committed < 0 || (!all && ps->next == ps->committed))
                continue;
            if (kafka_consumer_seek(p->consumer, topic_names[t], (int32_t)i, ps->committed, 5000) !=
                0)
                LOG_WARN("cannot rewind '%s' [%zu] to %lld", topic_names[t], i,
                         (long long)ps->committed);
            ps->next = ps->committed;
            ps->eof = -1; /* behind again until its end is seen */
        }
    }
    p->rewinds++;
}

/*
 * Aborts the Kafka transaction (if one began) and rolls back all that is not
 * committed. An abort that cannot finish (the broker away for all the
 * retries, or a fatal error) leaves the producer to be replaced: the new
 * one's init_transactions aborts what this one left open.
 */
static int abort_now(struct processor *p)
{
    int rc = 0;
    for (int i = 0; p->kafka_txn && !p->broken && i < COMMIT_RETRIES; i++) {
        rc = kafka_txn_abort(p->producer, TXN_TIMEOUT_MS);
        if (rc != KAFKA_ERR_RETRIABLE && rc != KAFKA_ERR_TIMEOUT)
            break;
    }
    metric_add(p->m_aborts, 1);
    if (rc == KAFKA_ERR_FATAL) {
        producer_fatal(p, "abort_transaction");
    } else if (rc) {
        LOG_WARN("the transaction cannot be aborted: the producer will be replaced");
        p->broken = true;
    }
    p->txn_open = false;
    p->kafka_txn = false;
    rollback(p, p->broken);
    LOG_WARN("transaction aborted: rewound to the committed offsets and state");
    return rc;
}

static int commit_wait(struct processor *p);

/* Aborts the open cycle, once the commit in flight (if any) is done. */
static int abort_cycle(struct processor *p)
{
    if (p->inflight) {
        int rc = commit_wait(p);
        if (!p->txn_open)
            return rc; /* that commit failed: everything is rolled back already */
    }
    return abort_now(p);
}

/* Keeps an output for the next begin (txn_begin_deferred). */
static int defer_output(struct processor *p, const char *topic, int32_t partition, const char *key,
                        const void *value, size_t len, const char *traceparent)
{
    if (p->nout == p->out_cap) {
        p->out_cap = p->out_cap ? p->out_cap * 2 : 64;
        p->outq = xrealloc(p->outq, p->out_cap * sizeof(*p->outq));
    }
    struct deferred_out *o = &p->outq[p->nout++];
    o->topic = topic;
    o->partition = partition;
    o->klen = strlen(key);
    o->vlen = value ? len : 0;
    o->tombstone = !value;
    o->data = xmalloc(o->klen + 1 + o->vlen);
    memcpy(o->data, key, o->klen + 1);
    if (o->vlen)
        memcpy(o->data + o->klen + 1, value, o->vlen);
    str_copy(o->traceparent, traceparent ? traceparent : "", sizeof(o->traceparent));
    return 0;
}

static int produce(struct processor *p, const char *topic, int32_t partition, const char *key,
                   const void *value, size_t len, const char *traceparent)
{
    if (!p->kafka_txn)
        return defer_output(p, topic, partition, key, value, len, traceparent);
    struct kafka_header h = {"traceparent", traceparent, traceparent ? strlen(traceparent) : 0};
    int rc = kafka_producer_send(p->producer, topic, partition, key, strlen(key), value, len,
                                 traceparent ? &h : NULL, traceparent ? 1 : 0, NULL);
    if (rc == KAFKA_ERR_FATAL)
        producer_fatal(p, "produce");
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

#define RFC3339_MS_LEN 24 /* "YYYY-MM-DDTHH:MM:SS.mmmZ" */

static void time_cache_init(struct time_cache *c)
{
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < TIME_CACHE_SLOTS; i++)
        c->sec[i] = -1;
}

static void format_time(struct time_cache *c, int64_t ms, char out[TIME_RFC3339_LEN])
{
    int64_t sec = ms >= 0 ? ms / 1000 : -1;
    int slot = -1;
    for (int i = 0; sec >= 0 && i < TIME_CACHE_SLOTS && slot < 0; i++)
        if (c->sec[i] == sec)
            slot = i;
    if (slot < 0) {
        if (time_format_rfc3339(ms, out, TIME_RFC3339_LEN) != 0)
            out[0] = '\0';
        if (sec >= 0 && strlen(out) == RFC3339_MS_LEN) {
            unsigned i = c->next++ % TIME_CACHE_SLOTS;
            memcpy(c->text[i], out, RFC3339_MS_LEN + 1);
            c->sec[i] = sec;
        }
        return;
    }
    int frac = (int)(ms % 1000);
    memcpy(out, c->text[slot], RFC3339_MS_LEN + 1);
    out[20] = (char)('0' + frac / 100);
    out[21] = (char)('0' + frac / 10 % 10);
    out[22] = (char)('0' + frac % 10);
}

static int append_i64(struct buf *b, int64_t v)
{
    char t[24];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        t[sizeof(t) - ++n] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        t[sizeof(t) - ++n] = '-';
    return buf_append(b, t + sizeof(t) - n, n);
}

/* ,"name":"time" or ,"name":null for 0 */
static void append_time_member(struct time_cache *tc, struct buf *b, const char *name, int64_t ms)
{
    char t[TIME_RFC3339_LEN];
    buf_append_str(b, ",\"");
    buf_append_str(b, name);
    if (ms <= 0) {
        buf_append_str(b, "\":null");
        return;
    }
    format_time(tc, ms, t);
    buf_append_str(b, "\":\"");
    buf_append_str(b, t);
    buf_append_str(b, "\"");
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
 * The robot.state CloudEvent, the same document ce_build makes of state_json:
 * built by hand, it is on the hot path (one per robot whose derived state
 * changed in the cycle). Called on the committer thread, with its time cache,
 * from the robot's changelog record and what the cycle added (x).
 */
static int state_event(struct time_cache *tc, const struct robot *r, const struct state_extra *x,
                       struct buf *b)
{
    char t[TIME_RFC3339_LEN], cmd[ROBOT_ID_MAX + 64];
    format_time(tc, r->updated_ms, t);
    command_id(r, cmd, sizeof(cmd));
    buf_reset(b);
    buf_append_str(b, "{\"specversion\":\"1.0\",\"id\":\"sp-");
    buf_append_json_str(b, r->id);
    buf_append_str(b, "-state-");
    append_i64(b, (int64_t)r->version);
    buf_append_str(b,
                   "\",\"source\":\"/stream-processor\",\"type\":\"robot.state\",\"subject\":\"");
    buf_append_json_str(b, r->id);
    buf_append_str(b, "\",\"time\":\"");
    buf_append_str(b, t);
    buf_append_str(b, "\",\"datacontenttype\":\"application/json\",\"data\":{\"robot_id\":\"");
    buf_append_json_str(b, r->id);
    buf_append_str(b, "\",\"status\":\"");
    buf_append_str(b, robot_status_name((enum robot_status)r->status));
    buf_append_str(b, "\"");
    append_time_member(tc, b, "last_heartbeat_at", r->last_heartbeat_ms);
    buf_append_str(b, ",\"faults_in_window\":");
    append_i64(b, x->faults_in_window);
    buf_append_str(b, x->reboot_in_progress ? ",\"reboot_in_progress\":true"
                                            : ",\"reboot_in_progress\":false");
    append_time_member(tc, b, "reboot_since", r->reboot_since_ms);
    if (cmd[0]) {
        buf_append_str(b, ",\"last_command_id\":\"");
        buf_append_json_str(b, cmd);
        buf_append_str(b, "\"");
    } else {
        buf_append_str(b, ",\"last_command_id\":null");
    }
    append_time_member(tc, b, "last_request_at", r->last_request_ms);
    append_time_member(tc, b, "updated_at", r->updated_ms);
    buf_append_str(b, ",\"version\":");
    append_i64(b, (int64_t)r->version);
    buf_append_str(b, ",\"partition\":");
    append_i64(b, r->partition);
    buf_append_str(b, ",\"offset\":");
    append_i64(b, r->last_offset);
    return buf_append_str(b, "}}");
}

/*
 * A changelog record is a CloudEvent (type stream-processor.state) whose data
 * carries the binary record of state.h in base64: built by hand, it is on the
 * hot path (one per robot changed per cycle). Called on the committer thread,
 * with its time cache.
 */
static int changelog_event(const char *group_json, struct time_cache *tc, const char *id,
                           uint64_t version, int64_t updated_ms, const uint8_t *rec, size_t len,
                           struct buf *b)
{
    char t[TIME_RFC3339_LEN], b64[4 * ((CHANGELOG_MAX + 2) / 3) + 1];
    if (crypto_base64_encode(rec, len, b64, sizeof(b64)) < 0)
        return -E2BIG;
    format_time(tc, updated_ms, t);
    buf_reset(b);
    buf_append_str(b, "{\"specversion\":\"1.0\",\"id\":\"sp-");
    buf_append_json_str(b, id);
    buf_append_str(b, "-cl-");
    append_i64(b, (int64_t)version);
    buf_append_str(b, "\",\"source\":\"/stream-processor/");
    buf_append_str(b, group_json);
    buf_append_str(b, "\",\"type\":\"stream-processor.state\",\"subject\":\"");
    buf_append_json_str(b, id);
    buf_append_str(b, "\",\"time\":\"");
    buf_append_str(b, t);
    buf_append_str(b, "\",\"datacontenttype\":\"application/json\",\"data\":{\"format\":");
    append_i64(b, CHANGELOG_FORMAT);
    buf_append_str(b, ",\"record\":\"");
    buf_append_str(b, b64);
    return buf_append_str(b, "\"}}");
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

/*
 * The Redis mirror. The processing thread stages one item per robot at commit
 * (the numbers only) and, once the transaction committed, hands the cycle's
 * items to the mirror thread (mirror_submit); that thread formats them and
 * writes them on its own connection, pipelined, MIRROR_BATCH at a time in
 * script calls of MIRROR_KEYS robots, the newest item of each robot only when
 * it fell behind. Redis is never waited for on the processing thread, unless
 * more than MIRROR_QUEUE_MAX items wait.
 */
static void mirror_add(struct processor *p, const struct robot *r, bool del, int64_t now)
{
    if (p->nmirror == p->mirror_cap) {
        p->mirror_cap = p->mirror_cap ? p->mirror_cap * 2 : 256;
        p->mirror = xrealloc(p->mirror, p->mirror_cap * sizeof(*p->mirror));
    }
    struct mirror_item *m = &p->mirror[p->nmirror++];
    size_t idlen = strlen(r->id);
    m->del = del;
    m->reset = false;
    memcpy(m->key, "state:robot:", 12);
    memcpy(m->key + 12, r->id, idlen + 1);
    m->keylen = 12 + idlen;
    if (del)
        return;
    m->version = r->version;
    m->status = r->status;
    m->heartbeat_ms = r->last_heartbeat_ms;
    m->updated_ms = r->updated_ms;
    m->offset = r->last_offset;
    m->in_progress = rules_in_progress(r, &p->set.rules, now);
    m->faults = (uint8_t)rules_faults_in_window(r, &p->set.rules);
}

/*
 * Hands staged items to the mirror thread (after a commit or a restore); the
 * array may be swapped for the queue's.
 */
static void mirror_hand(struct processor *p, struct mirror_item **items, size_t *nitems,
                        size_t *cap)
{
    if (*nitems == 0)
        return;
    pthread_mutex_lock(&p->mq_mu);
    while (p->mq_n > MIRROR_QUEUE_MAX && p->mirror_running && !p->mirror_stop)
        pthread_cond_wait(&p->mq_drained, &p->mq_mu);
    if (p->mq_n == 0) {
        /* swap: no copy in the common case */
        struct mirror_item *t = p->mq;
        size_t c = p->mq_cap;
        p->mq = *items;
        p->mq_cap = *cap;
        *items = t;
        *cap = c;
        p->mq_n = *nitems;
    } else {
        if (p->mq_n + *nitems > p->mq_cap) {
            p->mq_cap = (p->mq_n + *nitems) * 2;
            p->mq = xrealloc(p->mq, p->mq_cap * sizeof(*p->mq));
        }
        memcpy(p->mq + p->mq_n, *items, *nitems * sizeof(**items));
        p->mq_n += *nitems;
    }
    pthread_cond_signal(&p->mq_ready);
    pthread_mutex_unlock(&p->mq_mu);
    *nitems = 0;
}

static void mirror_submit(struct processor *p)
{
    mirror_hand(p, &p->mirror, &p->nmirror, &p->mirror_cap);
}

/*
 * Only a newer version replaces the mirror, so a replay never moves it
 * backwards. One call writes MIRROR_KEYS robots (eight arguments each, the
 * last "1" when the hash is to be deleted first): a script call per robot cost
 * Redis more than the writes themselves.
 */
static const char MIRROR_SCRIPT[] =
    "local n = 0\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local a = (i - 1) * 8\n"
    "  if ARGV[a + 8] == '1' then redis.call('DEL', k) end\n"
    "  local v = redis.call('HGET', k, 'version')\n"
    "  if not v or tonumber(v) < tonumber(ARGV[a + 1]) then\n"
    "    redis.call('HSET', k, 'version', ARGV[a + 1], 'status', ARGV[a + 2], "
    "'last_heartbeat_at', ARGV[a + 3], 'updated_at', ARGV[a + 4], 'offset', ARGV[a + 5], "
    "'reboot_in_progress', ARGV[a + 6], 'faults_in_window', ARGV[a + 7])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/* Keeps the newest item of each key (the items are in commit order). */
static size_t mirror_coalesce(struct mirror_item *v, size_t n)
{
    size_t nslots = 16;
    while (nslots < n * 2)
        nslots *= 2;
    uint32_t *slots = xmalloc(nslots * sizeof(*slots)); /* index + 1, 0 = empty */
    memset(slots, 0, nslots * sizeof(*slots));
    bool *keep = xcalloc(n, sizeof(*keep));
    for (size_t i = n; i-- > 0;) {
        size_t h = (size_t)state_hash(v[i].key, v[i].keylen) & (nslots - 1);
        while (slots[h] && strcmp(v[slots[h] - 1].key, v[i].key) != 0)
            h = (h + 1) & (nslots - 1);
        if (!slots[h]) {
            slots[h] = (uint32_t)i + 1;
            keep[i] = true;
        } else if (v[i].del && !v[slots[h] - 1].del) {
            /* an older DEL: the newer record starts from a fresh hash */
            v[slots[h] - 1].reset = true;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i])
            v[k++] = v[i];
    free(keep);
    free(slots);
    return k;
}

struct mirror_text {
    char version[24], status[16], heartbeat[TIME_RFC3339_LEN], updated[TIME_RFC3339_LEN];
    char offset[24], faults[8];
};

/* The arguments of one robot's update (8, see MIRROR_SCRIPT) into a. */
static void mirror_args(const struct mirror_item *m, struct mirror_text *t, struct time_cache *tc,
                        const char **a)
{
    snprintf(t->version, sizeof(t->version), "%llu", (unsigned long long)m->version);
    str_copy(t->status, robot_status_name((enum robot_status)m->status), sizeof(t->status));
    t->heartbeat[0] = '\0';
    if (m->heartbeat_ms > 0)
        format_time(tc, m->heartbeat_ms, t->heartbeat);
    format_time(tc, m->updated_ms, t->updated);
    snprintf(t->offset, sizeof(t->offset), "%lld", (long long)m->offset);
    snprintf(t->faults, sizeof(t->faults), "%d", m->faults);
    const char *args[] = {t->version, t->status,           t->heartbeat,
                          t->updated, t->offset,           m->in_progress ? "1" : "0",
                          t->faults,  m->reset ? "1" : "0"};
    memcpy(a, args, sizeof(args));
}

/*
 * Writes MIRROR_BATCH items a pipeline: a DEL per deleted robot, a script call
 * per MIRROR_KEYS updated ones (argv: the command, the script, the key count,
 * the keys, then their arguments).
 */
static void mirror_write(struct processor *p, struct mirror_item *v, size_t n,
                         struct time_cache *tc)
{
    enum { CALLS = MIRROR_BATCH / MIRROR_KEYS + 1 };
    size_t cap = MIRROR_BATCH + CALLS;
    struct redis_cmd *cmds = xcalloc(cap, sizeof(*cmds));
    const char **dels = xcalloc(MIRROR_BATCH * 2, sizeof(*dels));
    const char **argv = xcalloc(CALLS * (3 + 9 * MIRROR_KEYS), sizeof(*argv));
    const char **keyv = xcalloc(MIRROR_KEYS * 9, sizeof(*keyv)), **argb = keyv + MIRROR_KEYS;
    char nkeys[CALLS][24];
    redisReply **replies = xcalloc(cap, sizeof(*replies));
    struct mirror_text *txt = xcalloc(MIRROR_BATCH, sizeof(*txt));
    for (size_t from = 0; from < n; from += MIRROR_BATCH) {
        size_t batch = n - from < MIRROR_BATCH ? n - from : MIRROR_BATCH, nc = 0, call = 0;
        size_t keys = 0; /* in the call being built */
        const char **a = argv;
        for (size_t i = 0; i <= batch; i++) {
            if (keys > 0 && (i == batch || keys == MIRROR_KEYS)) {
                snprintf(nkeys[call], sizeof(nkeys[call]), "%zu", keys);
                a[0] = p->mirror_sha[0] ? "EVALSHA" : "EVAL";
                a[1] = p->mirror_sha[0] ? p->mirror_sha : MIRROR_SCRIPT;
                a[2] = nkeys[call++];
                memcpy(a + 3, keyv, keys * sizeof(*a));
                memcpy(a + 3 + keys, argb, 8 * keys * sizeof(*a));
                cmds[nc++] = (struct redis_cmd){(int)(3 + 9 * keys), a, NULL};
                a += 3 + 9 * keys;
                keys = 0;
            }
            if (i == batch)
                break;
            const struct mirror_item *m = &v[from + i];
            if (m->del) {
                dels[2 * i] = "DEL";
                dels[2 * i + 1] = m->key;
                cmds[nc++] = (struct redis_cmd){2, dels + 2 * i, NULL};
                continue;
            }
            keyv[keys] = m->key;
            mirror_args(m, &txt[i], tc, argb + 8 * keys);
            keys++;
        }
        int err = 0;
        if (redis_pipeline(p->redis, nc, cmds, replies) != 0) {
            err = (int)batch;
            LOG_WARN("redis mirror update failed: %s", redis_last_error(p->redis));
        }
        for (size_t i = 0; i < nc; i++) {
            if (replies[i] && replies[i]->type == REDIS_REPLY_ERROR) {
                err += cmds[i].argc == 2 ? 1 : (cmds[i].argc - 3) / 9; /* robots it wrote */
                if (strncmp(replies[i]->str, "NOSCRIPT", 8) == 0)
                    p->mirror_sha[0] = '\0'; /* flushed scripts: EVAL from now on */
                else
                    LOG_WARN("redis mirror update failed: %s", replies[i]->str);
            }
            if (replies[i])
                freeReplyObject(replies[i]);
            replies[i] = NULL;
        }
        if (err)
            metric_add(p->m_mirror_errors, (double)err);
    }
    free(txt);
    free(replies);
    free(argv);
    free(keyv);
    free(dels);
    free(cmds);
}

static void mirror_load_script(struct processor *p)
{
    redisReply *rep = redis_cmd(p->redis, "SCRIPT", "LOAD", MIRROR_SCRIPT, (char *)NULL);
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len < sizeof(p->mirror_sha))
        str_copy(p->mirror_sha, rep->str, sizeof(p->mirror_sha));
    else
        p->mirror_sha[0] = '\0';
    if (rep)
        freeReplyObject(rep);
}

static void *mirror_run(void *arg)
{
    struct processor *p = arg;
    pthread_setname_np(pthread_self(), "sp-mirror");
    struct mirror_item *work = NULL;
    size_t work_cap = 0;
    struct time_cache tc;
    time_cache_init(&tc);
    int64_t next_load_ms = 0;
    pthread_mutex_lock(&p->mq_mu);
    for (;;) {
        while (p->mq_n == 0 && !p->mirror_stop)
            pthread_cond_wait(&p->mq_ready, &p->mq_mu);
        if (p->mq_n == 0)
            break; /* stopping and drained */
        struct mirror_item *t = work;
        size_t cap = work_cap, n = p->mq_n;
        work = p->mq;
        work_cap = p->mq_cap;
        p->mq = t;
        p->mq_cap = cap;
        p->mq_n = 0;
        pthread_cond_broadcast(&p->mq_drained);
        pthread_mutex_unlock(&p->mq_mu);
        if (!p->mirror_sha[0] && time_mono_ms() >= next_load_ms) {
            mirror_load_script(p);
            next_load_ms = time_mono_ms() + 5000;
        }
        mirror_write(p, work, mirror_coalesce(work, n), &tc);
        pthread_mutex_lock(&p->mq_mu);
    }
    pthread_mutex_unlock(&p->mq_mu);
    free(work);
    return NULL;
}

static int mirror_start(struct processor *p)
{
    int rc = pthread_create(&p->mirror_thread, NULL, mirror_run, p);
    if (rc)
        return -rc;
    p->mirror_running = true;
    return 0;
}

/* Tells a helper thread waiting on cond to quit and joins it, if it is running. */
static void thread_end(bool *running, pthread_mutex_t *mu, pthread_cond_t *cond, bool *quit,
                       pthread_t thread)
{
    if (!*running)
        return;
    pthread_mutex_lock(mu);
    *quit = true;
    pthread_cond_broadcast(cond);
    pthread_mutex_unlock(mu);
    pthread_join(thread, NULL);
    *running = false;
}

/* Writes what is queued, then stops the mirror thread. */
static void mirror_stop(struct processor *p)
{
    if (!p->mirror_running)
        return;
    pthread_mutex_lock(&p->mq_mu);
    p->mirror_stop = true;
    pthread_cond_signal(&p->mq_ready);
    pthread_cond_broadcast(&p->mq_drained);
    pthread_mutex_unlock(&p->mq_mu);
    pthread_join(p->mirror_thread, NULL);
    p->mirror_running = false;
}

/*
 * Produces item i of the hand-off (with the robot.state.v1 message right after it, if any):
 * the changelog record or the two tombstones. Marks what it produced as sent. 0 or negative.
 */
static int produce_group(struct processor *p, size_t i, const struct kafka_header *cycle)
{
    struct handoff *h = &p->ho;
    struct cl_item *it = &h->items[i];
    const char *id = h->arena + it->off;
    const uint8_t *rec = (const uint8_t *)id + it->idlen + 1;
    int rc;
    it->sent = 1;
    if (it->kind == CL_DELETE) {
        rc = kafka_producer_send(p->producer, TOPIC_SP_CHANGELOG, it->partition, id, it->idlen,
                                 NULL, 0, cycle, 1, NULL);
        if (rc == 0)
            rc = kafka_producer_send(p->producer, TOPIC_ROBOT_STATE, it->partition, id, it->idlen,
                                     NULL, 0, cycle, 1, NULL);
        return rc;
    }
    rc = changelog_event(p->group_json, &p->cm_tc, id, it->version, it->updated_ms, rec, it->len,
                         &p->cm_buf);
    if (rc == 0)
        rc = kafka_producer_send(p->producer, TOPIC_SP_CHANGELOG, it->partition, id, it->idlen,
                                 p->cm_buf.data, p->cm_buf.len, cycle, 1, NULL);
    if (rc || i + 1 >= h->nitems || h->items[i + 1].kind != CL_STATE)
        return rc;
    /* its state message: the robot as the record just produced has it */
    struct cl_item *st = &h->items[i + 1];
    struct robot r = {.id = (char *)id, .partition = it->partition};
    struct state_extra x;
    char tp[TRACE_PARENT_LEN];
    st->sent = 1;
    memcpy(&x, h->arena + st->off + st->idlen + 1, sizeof(x));
    rc = changelog_decode(&r, rec, it->len) == 0 ? 0 : -EINVAL;
    if (rc == 0)
        rc = state_event(&p->cm_tc, &r, &x, &p->cm_buf);
    trace_parent_child(NULL, tp);
    struct kafka_header own = {"traceparent", tp, TRACE_PARENT_LEN - 1};
    if (rc == 0)
        rc = kafka_producer_send(p->producer, TOPIC_ROBOT_STATE, it->partition, id, it->idlen,
                                 p->cm_buf.data, p->cm_buf.len, &own, 1, NULL);
    return rc;
}

/*
 * The committer's side: produces the handed-off cycle's records. librdkafka
 * registers a partition with the transaction (AddPartitionsToTxn) 1 ms after
 * the first record to it, and a partition that shows up while that request is
 * out waits for it and for a round of its own before its records can go: so
 * the first record of each partition of each topic goes first, and one round
 * registers them all while the rest are built. Records of one robot keep their
 * order (a robot has one group of items a cycle). 0 or negative.
 */
static int produce_items(struct processor *p)
{
    struct handoff *h = &p->ho;
    char trace[TRACE_PARENT_LEN];
    int rc = 0;
    trace_parent_new(trace); /* one trace for the cycle's changelog records */
    struct kafka_header cycle = {"traceparent", trace, TRACE_PARENT_LEN - 1};
    int32_t top = -1;
    for (size_t i = 0; i < h->nitems; i++)
        top = h->items[i].partition > top ? h->items[i].partition : top;
    if ((size_t)(top + 1) > h->opened_cap) {
        h->opened_cap = (size_t)top + 1;
        h->opened = xrealloc(h->opened, h->opened_cap);
    }
    if (top >= 0)
        memset(h->opened, 0, (size_t)top + 1);
    for (size_t i = 0; i < h->nitems && rc == 0; i++) {
        const struct cl_item *it = &h->items[i];
        if (it->kind == CL_STATE || it->partition < 0)
            continue;
        /* the changelog always; robot.state.v1 with a tombstone or a state message */
        bool state =
            it->kind == CL_DELETE || (i + 1 < h->nitems && h->items[i + 1].kind == CL_STATE);
        uint8_t topics = state ? 3 : 1;
        uint8_t *o = &h->opened[it->partition];
        if ((topics & ~*o) == 0)
            continue;
        *o |= topics;
        rc = produce_group(p, i, &cycle);
    }
    for (size_t i = 0; i < h->nitems && rc == 0; i++) {
        if (!h->items[i].sent && h->items[i].kind != CL_STATE)
            rc = produce_group(p, i, &cycle);
    }
    return rc;
}

/*
 * The committer thread's part, with nothing of the processor's but the
 * hand-off (and the producer, which the processing thread leaves alone while
 * a commit is in flight): the handed-off cycle's positions go to its
 * transaction (64 partitions a request; first, so their round trips go out on
 * an idle connection rather than behind the records), its changelog and
 * state records are produced, and it commits. 0 or negative.
 */
static int commit_job(struct processor *p)
{
    const struct handoff *h = &p->ho;
    int rc = 0;
    for (size_t i = 0; i < h->nparts && rc == 0; i += 64) {
        size_t n = h->nparts - i < 64 ? h->nparts - i : 64;
        rc = kafka_txn_send_positions(p->producer, p->consumer, h->parts + i, h->offsets + i, n,
                                      TXN_TIMEOUT_MS);
    }
    if (rc == 0)
        rc = produce_items(p);
    for (int i = 0; rc == 0 && i < COMMIT_RETRIES; i++) {
        rc = kafka_txn_commit(p->producer, TXN_TIMEOUT_MS);
        if (rc != KAFKA_ERR_RETRIABLE && rc != KAFKA_ERR_TIMEOUT)
            break;
        rc = 0; /* librdkafka: a timed-out commit may be retried */
        if (i == COMMIT_RETRIES - 1)
            rc = KAFKA_ERR_TIMEOUT;
    }
    return rc;
}

static void *committer_run(void *arg)
{
    struct processor *p = arg;
    pthread_setname_np(pthread_self(), "sp-commit");
    pthread_mutex_lock(&p->cm_mu);
    for (;;) {
        while (!p->cm_job && !p->cm_quit)
            pthread_cond_wait(&p->cm_cond, &p->cm_mu);
        if (!p->cm_job)
            break;
        pthread_mutex_unlock(&p->cm_mu);
        int rc = commit_job(p);
        pthread_mutex_lock(&p->cm_mu);
        p->cm_job = false;
        p->cm_rc = rc;
        p->cm_done = true;
        atomic_store(&p->cm_finished, true);
        pthread_cond_broadcast(&p->cm_cond);
    }
    pthread_mutex_unlock(&p->cm_mu);
    return NULL;
}

static int committer_start(struct processor *p)
{
    int rc = pthread_create(&p->committer, NULL, committer_run, p);
    if (rc)
        return -rc;
    p->committer_running = true;
    return 0;
}

/* After the processing thread ended: nothing is in flight any more. */
static void committer_stop(struct processor *p)
{
    thread_end(&p->committer_running, &p->cm_mu, &p->cm_cond, &p->cm_quit, p->committer);
}

/*
 * Begins the open cycle's transaction once the commit before it is done and
 * produces the outputs that waited for it. 0, or negative after a rollback.
 */
static int txn_begin_deferred(struct processor *p)
{
    if (!p->txn_open || p->kafka_txn || p->inflight)
        return 0;
    int rc = txn_begin(p);
    for (size_t i = 0; rc == 0 && i < p->nout; i++) {
        const struct deferred_out *o = &p->outq[i];
        rc =
            produce(p, o->topic, o->partition, o->data, o->tombstone ? NULL : o->data + o->klen + 1,
                    o->vlen, o->traceparent[0] ? o->traceparent : NULL);
    }
    outq_clear(p);
    if (rc)
        abort_now(p);
    return rc;
}

/*
 * Settles the commit the committer finished: on success the positions count
 * as committed, robots deleted in that cycle (and not changed since) go, its
 * mirror items go to Redis and the open cycle's transaction begins; on failure
 * that cycle and the open one roll back together. 0 or negative.
 */
static int commit_finish(struct processor *p, int rc)
{
    struct handoff *h = &p->ho;
    if (rc == KAFKA_ERR_FATAL)
        producer_fatal(p, "commit_transaction");
    p->inflight = false;
    if (rc != 0 || p->broken || atomic_load(&p->failed)) {
        p->kafka_txn = true; /* the failed cycle's transaction is the one to abort */
        abort_now(p);        /* no abort call on a broken producer: the rollback only */
        return rc ? rc : KAFKA_ERR_FATAL;
    }
    for (size_t i = 0; i < h->nparts; i++) {
        struct position *ps = &p->pos[h->topics[i]][h->parts[i].partition];
        if (ps->assigned)
            ps->committed = h->offsets[i];
    }
    for (size_t i = 0; i < h->ngone; i++) {
        struct robot *r = h->gone[i];
        if ((r->flags & ROBOT_F_DELETED) && !(r->flags & ROBOT_F_DIRTY)) {
            deadline_heap_remove(p->heap, r);
            robot_table_remove(p->table, r);
        }
    }
    h->nundo = 0;
    h->ngone = 0;
    h->nparts = 0;
    metric_observe(p->m_commit, (double)(time_mono_ms() - h->started_ms) / 1000.0);
    metric_add(p->m_commits, 1);
    mirror_hand(p, &h->mirror, &h->nmirror, &h->mirror_cap);
    return txn_begin_deferred(p);
}

/* Waits for the commit in flight, if any, and settles it. 0 or negative. */
static int commit_wait(struct processor *p)
{
    if (!p->inflight)
        return 0;
    pthread_mutex_lock(&p->cm_mu);
    while (!p->cm_done)
        pthread_cond_wait(&p->cm_cond, &p->cm_mu);
    p->cm_done = false;
    atomic_store(&p->cm_finished, false);
    int rc = p->cm_rc;
    pthread_mutex_unlock(&p->cm_mu);
    return commit_finish(p, rc);
}

/* Moves what the open cycle's commit needs into the hand-off (empty: nothing in flight). */
static void handoff_fill(struct processor *p, int64_t started_ms)
{
    struct handoff *h = &p->ho;
    size_t need = NTOPICS * p->npos;
    if (need > h->parts_cap) {
        h->parts_cap = need;
        h->parts = xrealloc(h->parts, need * sizeof(*h->parts));
        h->offsets = xrealloc(h->offsets, need * sizeof(*h->offsets));
        h->topics = xrealloc(h->topics, need * sizeof(*h->topics));
    }
    h->nparts = 0;
    for (int t = 0; t < NTOPICS; t++) {
        for (size_t i = 0; i < p->npos; i++) {
            const struct position *ps = &p->pos[t][i];
            if (!ps->assigned || ps->next < 0)
                continue;
            int64_t to = t == T_EVENTS ? events_target(p, i) : ps->next;
            if (to <= ps->committed)
                continue;
            h->parts[h->nparts] = (struct kafka_partition){topic_names[t], (int32_t)i};
            h->offsets[h->nparts] = to;
            h->topics[h->nparts++] = t;
        }
    }
    /* swaps, no copies: the open cycle starts with the other (empty) arrays */
    struct undo *u = h->undo;
    size_t ucap = h->undo_cap;
    h->undo = p->undo;
    h->undo_cap = p->undo_cap;
    h->nundo = p->nundo;
    p->undo = u;
    p->undo_cap = ucap;
    p->nundo = 0;
    struct mirror_item *m = h->mirror;
    size_t mcap = h->mirror_cap;
    h->mirror = p->mirror;
    h->mirror_cap = p->mirror_cap;
    h->nmirror = p->nmirror;
    p->mirror = m;
    p->mirror_cap = mcap;
    p->nmirror = 0;
    h->ngone = 0;
    for (size_t i = 0; i < p->ndirty; i++) {
        struct robot *r = p->dirty[i];
        if (r->flags & ROBOT_F_DELETED) {
            if (h->ngone == h->gone_cap) {
                h->gone_cap = h->gone_cap ? h->gone_cap * 2 : 64;
                h->gone = xrealloc(h->gone, h->gone_cap * sizeof(*h->gone));
            }
            h->gone[h->ngone++] = r;
            r->flags = ROBOT_F_DELETED; /* dropped when the commit is in, unless changed again */
        } else {
            r->flags = 0;
        }
    }
    p->ndirty = 0;
    h->opened_ms = p->cycle_start_ms;
    h->started_ms = started_ms;
}

/* Appends a record of r for the committer (the hand-off is not in flight). */
static void item_add(struct handoff *h, enum cl_kind kind, const struct robot *r,
                     const void *payload, size_t len)
{
    size_t idlen = strlen(r->id), need = idlen + 1 + len;
    if (h->nitems == h->items_cap) {
        h->items_cap = h->items_cap ? h->items_cap * 2 : 1024;
        h->items = xrealloc(h->items, h->items_cap * sizeof(*h->items));
    }
    if (h->arena_len + need > h->arena_cap) {
        h->arena_cap = (h->arena_len + need) * 2;
        h->arena = xrealloc(h->arena, h->arena_cap);
    }
    h->items[h->nitems++] =
        (struct cl_item){h->arena_len, (uint32_t)len, (uint32_t)idlen, (uint8_t)kind, 0,
                         r->partition, r->version,    r->updated_ms};
    memcpy(h->arena + h->arena_len, r->id, idlen + 1);
    if (len)
        memcpy(h->arena + h->arena_len + idlen + 1, payload, len);
    h->arena_len += need;
}

/*
 * Ends the open cycle: stages each dirty robot's binary changelog record (and
 * what its robot.state.v1 message needs besides, if its derived state
 * changed: struct state_extra), then hands them,
 * the positions and the commit to the committer thread and returns: the next
 * cycle runs while the committer produces the records and the broker commits
 * this one (commit_finish settles it). Waits first for the commit in flight,
 * if any. 0 or negative.
 */
static int commit_cycle(struct processor *p)
{
    uint8_t rec[CHANGELOG_MAX];
    struct handoff *h = &p->ho;
    int rc = commit_wait(p);
    if (rc || !p->txn_open)
        return rc;
    rc = txn_begin_deferred(p);
    if (rc)
        return rc;
    int64_t now = time_now_ms(), t0 = time_mono_ms();
    unsaved_due(p, t0);
    h->nitems = 0;
    h->arena_len = 0;
    for (size_t i = 0; i < p->ndirty && rc == 0; i++) {
        struct robot *r = p->dirty[i];
        if (r->flags & ROBOT_F_DELETED) {
            item_add(h, CL_DELETE, r, NULL, 0);
            mirror_add(p, r, true, now);
            continue;
        }
        if (r->flags & (ROBOT_F_SAVE | ROBOT_F_EMIT)) {
            item_add(h, CL_RECORD, r, rec, changelog_encode(r, rec));
            r->unsaved = 0;
        }
        if (r->flags & ROBOT_F_EMIT) {
            const struct state_extra x = {rules_faults_in_window(r, &p->set.rules),
                                          rules_in_progress(r, &p->set.rules, now)};
            item_add(h, CL_STATE, r, &x, sizeof(x));
        }
        if ((r->flags & ROBOT_F_EMIT) || now - r->mirrored_ms >= p->set.mirror_heartbeat_ms) {
            r->mirrored_ms = now;
            mirror_add(p, r, false, now);
        }
    }
    if (rc == 0 && (p->broken || atomic_load(&p->failed)))
        rc = KAFKA_ERR_FATAL;
    if (rc) {
        abort_now(p);
        return rc;
    }
    handoff_fill(p, t0);
    p->txn_open = false;
    p->kafka_txn = false;
    p->inflight = true;
    pthread_mutex_lock(&p->cm_mu);
    p->cm_job = true;
    pthread_cond_broadcast(&p->cm_cond);
    pthread_mutex_unlock(&p->cm_mu);
    return 0;
}

/* Ends the open cycle and waits until it committed (revocation, shutdown). */
static int commit_sync(struct processor *p)
{
    int rc = commit_cycle(p);
    int rc2 = commit_wait(p);
    return rc ? rc : rc2;
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

/* The robot of id (r: its table entry, NULL if none), created if new, touched (light: see
 * touch_as). */
static struct robot *robot_found(struct processor *p, struct robot *r, const char *id, size_t len,
                                 int32_t partition, bool light)
{
    if (r) {
        touch_as(p, r, false, light);
        if (r->flags & ROBOT_F_DELETED)
            r->flags &= (uint8_t)~ROBOT_F_DELETED;
        return r;
    }
    r = robot_table_add(p->table, id, len, partition);
    touch_as(p, r, true, light);
    return r;
}

static struct robot *robot_for(struct processor *p, const char *id, size_t len, int32_t partition,
                               bool light)
{
    return robot_found(p, robot_table_get(p->table, id, len), id, len, partition, light);
}

/*
 * Event time in ms. Events arrive in bursts that share their second, and
 * timegm (under time_parse_rfc3339) is slow: the base of the last second seen
 * in the common "YYYY-MM-DDTHH:MM:SS[.fff]Z" form is kept, and a time of the
 * same second only adds its milliseconds. Anything else goes to
 * time_parse_rfc3339, which also validated the cached second.
 */
static int event_time(struct processor *p, const char *t, size_t len, int64_t *ms)
{
    char buf[64];
    const size_t sec_len = 19; /* YYYY-MM-DDTHH:MM:SS */
    bool simple = (len == sec_len + 1 || len == sec_len + 5) && t[len - 1] == 'Z';
    int frac = 0;
    if (simple && len == sec_len + 5) {
        simple = t[sec_len] == '.';
        for (size_t i = sec_len + 1; simple && i < sec_len + 4; i++) {
            simple = t[i] >= '0' && t[i] <= '9';
            frac = frac * 10 + (t[i] - '0');
        }
    }
    if (simple && p->time_cache_ok && memcmp(t, p->time_cache, sec_len) == 0) {
        *ms = p->time_cache_base + frac;
        return 0;
    }
    if (len >= sizeof(buf) || memchr(t, '\0', len))
        return -EINVAL;
    memcpy(buf, t, len);
    buf[len] = '\0';
    int rc = time_parse_rfc3339(buf, ms);
    if (rc == 0 && simple) {
        memcpy(p->time_cache, t, sec_len);
        p->time_cache_base = *ms - frac;
        p->time_cache_ok = true;
    }
    return rc;
}

/*
 * The message's traceparent in out, NULL if it has none: read only for an
 * output (librdkafka parses all of a message's headers on the first look).
 */
static const char *msg_parent(const struct kafka_msg *m, char out[TRACE_PARENT_LEN])
{
    size_t len = 0;
    const char *v = kafka_msg_header(m, "traceparent", &len);
    if (!v || len != TRACE_PARENT_LEN - 1)
        return NULL;
    memcpy(out, v, len);
    out[len] = '\0';
    return out;
}

/* Applies one robot event (already read) to its robot. 0 or negative (abort). */
static int apply_event(struct processor *p, const struct kafka_msg *m, const char *id, size_t len,
                       const struct robot_event *re, int64_t now)
{
    metric_series_add(p->s_events[re->kind], 1);
    if (re->kind == EVENT_OTHER || re->kind == EVENT_COMMAND_ACK ||
        re->kind == EVENT_COMMAND_RESULT)
        return 0; /* nothing of the robot's state depends on them */

    struct robot *r = robot_table_get(p->table, id, len);
    if (r && !(r->flags & ROBOT_F_DELETED)) {
        if (kafka_msg_offset(m) <= r->last_offset) {
            metric_add(p->m_replayed, 1); /* in the state already: a replay */
            return 0;
        }
        enum rules_check c = rules_check_event(r, re, &p->set.rules);
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
    /* a heartbeat or status report changes what a replay brings back the same way (times,
     * the dedupe ring, the version) unless it changes the derived state or makes a request */
    bool light = (re->kind == EVENT_HEARTBEAT || re->kind == EVENT_STATUS) &&
                 p->set.changelog_heartbeat_ms > 0;
    r = robot_found(p, r, id, len, kafka_msg_partition(m), light);
    struct derived before = derive(p, r, now);
    struct rules_request req = {0};
    rules_apply_event(r, re, &p->set.rules, now, &req);
    r->last_offset = kafka_msg_offset(m);
    changed(p, r, before, now);
    arm(p, r);
    if (light && !(r->flags & ROBOT_F_SAVE)) {
        if ((r->flags & ROBOT_F_EMIT) || req.reason != REASON_NONE)
            r->flags |= ROBOT_F_SAVE; /* outputs: the robot is saved with them */
        else if (!r->unsaved)
            unsaved_push(p, r, r->last_offset, p->mono);
    }
    if (req.suppressed) {
        const char *labels[] = {request_reason_name(req.suppressed_reason), req.suppressed};
        metric_series_add(metric_series(p->m_suppressed, labels), 1);
    }
    if (req.reason != REASON_NONE) {
        char parent[TRACE_PARENT_LEN];
        return produce_request(p, r, &req, msg_parent(m, parent));
    }
    return 0;
}

/*
 * The fast path for the events whose envelope says all the rules need
 * (heartbeats, most of the input, faults and boots): read without a cJSON
 * tree. True when it handled the message (*rc says how); false sends it down
 * the full path, which also finds and names anything wrong with it.
 */
static bool event_fast(struct processor *p, const struct kafka_msg *m, const char *value,
                       size_t len, int64_t now, int *rc)
{
    struct evscan_envelope env;
    struct robot_event re = {.kind = EVENT_OTHER};
    if (!evscan_envelope(value, len, &env))
        return false;
    if (evscan_is(&env.type, "robot.heartbeat"))
        re.kind = EVENT_HEARTBEAT;
    else if (evscan_is(&env.type, "robot.fault"))
        re.kind = EVENT_FAULT;
    else if (evscan_is(&env.type, "robot.booted"))
        re.kind = EVENT_BOOTED;
    if (re.kind == EVENT_OTHER || !env.subject.s || env.subject.len > ROBOT_ID_MAX || !env.time.s ||
        event_time(p, env.time.s, env.time.len, &re.occurred_ms) != 0)
        return false;
    re.id_hash = state_hash(env.id.s, env.id.len);
    *rc = apply_event(p, m, env.subject.s, env.subject.len, &re, now);
    return true;
}

static int handle_event(struct processor *p, const struct kafka_msg *m, const cJSON *root,
                        const struct cloudevent *ev, const char **error)
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
    if (!t || event_time(p, t, strlen(t), &re.occurred_ms) != 0) {
        *error = "time (occurred_at) missing or not RFC 3339";
        return -EINVAL;
    }
    if (ev->id)
        re.id_hash = state_hash(ev->id, strlen(ev->id));
    if (re.kind == EVENT_STATUS) {
        const cJSON *inner = cJSON_GetObjectItemCaseSensitive(data, "data");
        re.vendor_status = json_get_str(inner, "status");
    }
    return apply_event(p, m, id, len, &re, now);
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
    struct robot *r = robot_for(p, id, len, kafka_msg_partition(m), false);
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
    r = robot_for(p, id, len, kafka_msg_partition(m), false);
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
    /* Deleted: forget everything now; tombstones go out at commit. Its heartbeats before this
     * must never be replayed (they would bring it back): the partition's unsaved robots are saved
     * with the tombstone, so the committed events offset passes them. */
    if ((size_t)r->partition < p->npos)
        p->uq[r->partition].flush = true;
    deadline_heap_remove(p->heap, r);
    struct robot fresh = {.id = r->id,
                          .idlen = r->idlen,
                          .partition = r->partition,
                          .heap_idx = HEAP_NONE,
                          .last_offset = -1,
                          .flags = r->flags | ROBOT_F_DELETED};
    *r = fresh;
    return 0;
}

/* One message of topic t (topic_index), read at wall-clock now. */
static void handle_message(struct processor *p, struct kafka_msg *m, int t, int64_t now)
{
    int32_t part = kafka_msg_partition(m);
    struct position *ps = t >= 0 ? position_of(p, t, part) : NULL;
    size_t len = 0;
    const char *value = kafka_msg_value(m, &len);
    char parent[TRACE_PARENT_LEN];
    const char *error = NULL;
    struct cloudevent ev;
    char err[160] = "";
    int rc = 0;

    if (!ps || !ps->assigned)
        return; /* a late message of a partition already given away */
    if (ps->committed < 0)
        ps->committed = kafka_msg_offset(m);
    if (!value || len == 0) {
        ps->next = kafka_msg_offset(m) + 1; /* tombstones of compacted inputs */
        return;
    }
    if (t == T_EVENTS && event_fast(p, m, value, len, now, &rc)) {
        if (rc && p->txn_open) {
            abort_cycle(p);
            return;
        }
        ps->next = kafka_msg_offset(m) + 1;
        p->cycle_events++;
        return;
    }
    cJSON *root = ce_parse(value, len, &ev, err, sizeof(err));
    if (!root) {
        error = err[0] ? err : "not a CloudEvent";
    } else if (t == T_EVENTS) {
        rc = handle_event(p, m, root, &ev, &error);
    } else if (t == T_STATUS) {
        rc = handle_status(p, m, root, &ev, &error);
    } else {
        rc = handle_registry(p, m, root, &ev, &error);
    }
    cJSON_Delete(root);
    if (error) {
        if (txn_ensure(p) != 0)
            return;
        rc = dead_letter(p, m, error, msg_parent(m, parent));
        /* a replay would send it again: the committed events offset must pass it */
        if (t == T_EVENTS && (size_t)part < p->npos)
            p->uq[part].flush = true;
    }
    if (rc && p->txn_open) {
        abort_cycle(p);
        return;
    }
    ps->next = kafka_msg_offset(m) + 1;
    p->cycle_events++;
}

static void restart_clock(void *ud, struct robot *r)
{
    struct processor *p = ud;
    r->grace_ms = time_now_ms() + p->set.rules.offline_after_ms;
    int64_t due = rules_next_deadline(r, &p->set.rules);
    if (due)
        deadline_heap_set(p->heap, r, due);
    else
        deadline_heap_remove(p->heap, r);
}

/* The consumer reported an error, or the producer is replaced: the broker may be away. */
static void fetch_lost(struct processor *p)
{
    p->fetch_ok = false;
    p->await_flow = true;
    p->pings_ok = 0;
}

/*
 * A sign that the consumer fetches again after fetch_lost: no heartbeat could
 * arrive meanwhile, so every robot's offline clock restarts, as after a
 * restore; and once more at the first event read after that (event_flows),
 * for the producers upstream may take longer to reconnect than we did.
 */
static void fetch_back(struct processor *p)
{
    if (p->fetch_ok)
        return;
    p->fetch_ok = true;
    p->pings_ok = 0;
    robot_table_foreach(p->table, restart_clock, p);
}

static void event_flows(struct processor *p)
{
    fetch_back(p);
    if (!p->await_flow)
        return;
    p->await_flow = false;
    robot_table_foreach(p->table, restart_clock, p);
}

/*
 * Asks the leader of events partition i for its high watermark; the request
 * wakes the fetcher (wake_fetcher). 0 or negative (no answer).
 */
static int ask_high(struct processor *p, int32_t i)
{
    int64_t high = -1;
    int rc = kafka_consumer_query_high(p->consumer, TOPIC_ROBOT_EVENTS, i, 200, &high);
    if (rc == 0)
        metric_add(p->m_wakes, 1);
    return rc;
}

static void *waker_run(void *arg)
{
    struct processor *p = arg;
    pthread_setname_np(pthread_self(), "sp-fetch");
    pthread_mutex_lock(&p->wk_mu);
    for (;;) {
        while (p->wk_part < 0 && !p->wk_quit)
            pthread_cond_wait(&p->wk_cond, &p->wk_mu);
        if (p->wk_quit)
            break;
        int32_t i = p->wk_part;
        pthread_mutex_unlock(&p->wk_mu);
        if (ask_high(p, i) != 0)
            atomic_store(&p->wk_failed, true);
        pthread_mutex_lock(&p->wk_mu);
        p->wk_part = -1;
    }
    pthread_mutex_unlock(&p->wk_mu);
    return NULL;
}

/* Once the consumer exists; without the thread wake_fetcher asks itself. */
static void waker_start(struct processor *p)
{
    p->wk_part = -1;
    p->wk_quit = false;
    int rc = pthread_create(&p->waker, NULL, waker_run, p);
    if (rc)
        LOG_WARN("no fetch waker thread (%s): the processing thread wakes the fetcher",
                 strerror(rc));
    p->waker_running = rc == 0;
}

/* Before the consumer goes. */
static void waker_stop(struct processor *p)
{
    thread_end(&p->waker_running, &p->wk_mu, &p->wk_cond, &p->wk_quit, p->waker);
}

/*
 * The consumer's queue runs low (fewer than WAKE_LOW messages) or dry while
 * an events partition is known to have more (its last fetched high watermark
 * is beyond what was read). With librdkafka 2.0 that is the fetcher resting
 * after the prefetch queue filled (during a commit, or while processing was
 * slower than fetching): it would look again only within a second. A
 * ListOffsets request to the leader wakes it now; the waker thread sends it,
 * so the next fetch is under way while the rest of the queue is processed.
 */
static void wake_fetcher(struct processor *p)
{
    int64_t mono = time_mono_ms();
    if (mono < p->next_wake_ms || !p->fetch_ok)
        return;
    p->next_wake_ms = mono + WAKE_MS;
    if (atomic_exchange(&p->wk_failed, false)) {
        p->next_wake_ms = mono + 1000; /* the broker does not answer: the errors path acts */
        return;
    }
    /* one partition per call, round robin: one request wakes its leader's fetcher for all the
     * partitions it leads */
    for (size_t k = 0; k < p->npos; k++) {
        size_t i = (p->wake_next + k) % p->npos;
        const struct position *ps = &p->pos[T_EVENTS][i];
        int64_t high = -1;
        if (!ps->assigned || ps->next < 0 || ps->eof >= ps->next ||
            kafka_consumer_high_watermark(p->consumer, TOPIC_ROBOT_EVENTS, (int32_t)i, &high) ||
            high <= ps->next)
            continue;
        p->wake_next = i + 1;
        if (!p->waker_running) {
            if (ask_high(p, (int32_t)i) != 0)
                p->next_wake_ms = mono + 1000;
            return;
        }
        pthread_mutex_lock(&p->wk_mu);
        if (p->wk_part < 0) { /* else the last question is still out: it wakes the fetcher */
            p->wk_part = (int32_t)i;
            pthread_cond_signal(&p->wk_cond);
        }
        pthread_mutex_unlock(&p->wk_mu);
        return;
    }
}

/* A partition's end as the consumer saw it (enable.partition.eof). */
static void note_eof(struct processor *p, const struct kafka_msg *m)
{
    int t = topic_index(kafka_msg_topic(m));
    struct position *ps = t >= 0 ? position_of(p, t, kafka_msg_partition(m)) : NULL;
    fetch_back(p);
    if (ps && ps->assigned)
        ps->eof = kafka_msg_offset(m);
}

/*
 * Whether the robots' heartbeats of an events partition are all read: where
 * the consumer is (the next offset to process, or the partition end it saw
 * since reading (re)started; unknown after an assignment until either) has
 * reached the high watermark the consumer last fetched.
 */
static bool caught_up(struct processor *p, int32_t partition)
{
    if (partition < 0 || (size_t)partition >= p->npos)
        return false;
    if ((size_t)partition >= p->catchup_cap) {
        size_t n = p->npos;
        p->catchup = xrealloc(p->catchup, n);
        memset(p->catchup + p->catchup_cap, 0, n - p->catchup_cap);
        p->catchup_cap = n;
    }
    int8_t *c = &p->catchup[partition];
    if (*c == 0) {
        const struct position *ps = &p->pos[T_EVENTS][partition];
        int64_t high = -1, at = ps->next > ps->eof ? ps->next : ps->eof;
        bool ok =
            p->fetch_ok && ps->assigned && at >= 0 &&
            kafka_consumer_high_watermark(p->consumer, TOPIC_ROBOT_EVENTS, partition, &high) == 0 &&
            high >= 0 && at >= high;
        *c = ok ? 1 : 2;
    }
    return *c == 1;
}

/*
 * Each robot has one heap entry, at the earlier of its two deadlines: the
 * offline deadline (silence) and the end of its reboot grace. Neither fires
 * before the robot's partition has caught up (see the top of the file).
 */
static void fire_timers(struct processor *p, int64_t now)
{
    const struct rules_settings *s = &p->set.rules;
    struct robot *r;
    bool checked = false;
    while ((r = deadline_heap_top(p->heap)) && r->heap_key <= now && !atomic_load(&p->stop)) {
        int64_t due = rules_next_deadline(r, s);
        if (due == 0) {
            deadline_heap_remove(p->heap, r);
            continue;
        }
        if (due > now) {
            deadline_heap_set(p->heap, r, due);
            continue;
        }
        if (!checked) {
            /* once per call: what the consumer knows does not change meanwhile */
            if (p->catchup_cap)
                memset(p->catchup, 0, p->catchup_cap);
            int64_t mono = time_mono_ms();
            if (p->fetch_ok && mono - p->last_read_ms >= QUIET_MS && mono >= p->next_ping_ms) {
                /* nothing read for a while (librdkafka keeps its errors to the log): is the
                 * broker still there? */
                p->next_ping_ms = mono + PING_MS;
                if (!kafka_producer_ping(p->producer, 500)) {
                    LOG_WARN("the broker does not answer: offline verdicts wait for it");
                    fetch_lost(p);
                }
            } else if (!p->fetch_ok && mono >= p->next_ping_ms) {
                /* two answers PING_MS apart: the consumer had time to fetch meanwhile */
                p->next_ping_ms = mono + PING_MS;
                p->pings_ok = kafka_producer_ping(p->producer, 500) ? p->pings_ok + 1 : 0;
                if (p->pings_ok >= 2)
                    fetch_back(p);
            }
            checked = true;
        }
        if (!caught_up(p, r->partition)) {
            metric_add(p->m_deferred, 1);
            deadline_heap_set(p->heap, r, now + DEFER_MS);
            continue;
        }
        if (txn_ensure(p) != 0)
            return;
        touch(p, r, false);
        struct derived before = derive(p, r, now);
        struct rules_request req = {0};
        deadline_heap_remove(p->heap, r);
        metric_add(p->m_timers, 1);
        bool expired = rules_expire_grace(r, s, now, &req);
        int64_t off = rules_offline_deadline(r, s);
        bool silent = off != 0 && off <= now;
        bool fired = silent && rules_fire_offline(r, s, now, &req);
        if (expired || fired) {
            changed(p, r, before, now);
            if (expired)
                r->flags |= ROBOT_F_EMIT; /* reboot_in_progress ended, whatever the status */
        }
        int64_t next = rules_next_deadline(r, s);
        if (silent && !fired) {
            /* silent while a command is in progress: look again later */
            int64_t grace = rules_grace_deadline(r, s);
            next = now + s->offline_after_ms;
            if (grace > now && grace < next)
                next = grace;
        }
        if (next)
            deadline_heap_set(p->heap, r, next);
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
    int64_t due = rules_next_deadline(r, &c->p->set.rules);
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
                    r->unsaved = 0;
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
        mirror_submit(p);
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
    for (size_t i = 0; i < n; i++) {
        if ((size_t)parts[i].partition < p->npos)
            gone[parts[i].partition] = true;
        unsaved_clear(p, (size_t)parts[i].partition);
    }
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
    commit_wait(p); /* the partitions of the commit in flight stay put until it is settled */
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
        for (size_t i = 0; i < nparts; i++) {
            position_of(p, T_EVENTS, parts[i].partition);
            unsaved_clear(p, (size_t)parts[i].partition);
        }
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
                *position_of(p, t, parts[i].partition) = (struct position){true, -1, -1, -1};
        if (kafka_consumer_assign(p->consumer, comp, stored, ncomp) != 0)
            LOG_ERROR("cannot assign the command-status and registry partitions");
    } else {
        LOG_INFO("%s %zu partitions of %s", lost ? "lost" : "revoked", nparts, TOPIC_ROBOT_EVENTS);
        if (!lost && !atomic_load(&p->failed))
            unsaved_flush(p, parts, nparts); /* the next owner starts at their end */
        if (p->txn_open) {
            if (lost)
                abort_cycle(p);
            else
                commit_sync(p);
        }
        drop_partitions(p, parts, nparts);
        for (size_t i = 0; i < nparts; i++)
            for (int t = 0; t < NTOPICS; t++)
                *position_of(p, t, parts[i].partition) = (struct position){false, -1, -1, -1};
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
    bool retime = next.rules.offline_after_ms != p->set.rules.offline_after_ms ||
                  next.rules.reboot_grace_ms != p->set.rules.reboot_grace_ms;
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

/* The transactional producer (init_transactions needs the broker); NULL with errbuf filled. */
static struct kafka_producer *new_producer(struct processor *p, char *errbuf, size_t errsize)
{
    struct kafka_prop props[80];
    size_t np = 0;
    props[np++] = (struct kafka_prop){"client.id", p->client_id};
    char expiry[24];
    snprintf(expiry, sizeof(expiry), "%d", TXN_EXPIRY_MS);
    props[np++] = (struct kafka_prop){"transaction.timeout.ms", expiry};
    props[np++] = (struct kafka_prop){"linger.ms", "1"};
    /* A cycle's first AddPartitionsToTxn/AddOffsetsToTxn often meets CONCURRENT_TRANSACTIONS
     * (the broker still writes the last commit's markers): librdkafka 2.0 retries those after
     * retry.backoff.ms, whose 100 ms default is a whole cycle. */
    props[np++] = (struct kafka_prop){"retry.backoff.ms", "5"};
    /* the changelog and state records are JSON envelopes that compress several times */
    props[np++] = (struct kafka_prop){"compression.type", "lz4"};
    for (size_t i = 0; i < p->nprops && np < 80; i++)
        if (strcmp(p->props[i].name, "session.timeout.ms") != 0 &&
            strcmp(p->props[i].name, "heartbeat.interval.ms") != 0)
            props[np++] = p->props[i]; /* consumer-only: CONFWARN on a producer */
    struct kafka_producer *kp =
        kafka_producer_new(p->bootstrap, props, np, p->txn_id, NULL, errbuf, errsize);
    /* a topic's first record would otherwise wait for its metadata in the commit, up to 1 s */
    const char *outputs[] = {TOPIC_SP_CHANGELOG, TOPIC_ROBOT_STATE, TOPIC_ROBOT_COMMANDS,
                             TOPIC_ROBOT_EVENTS_DLQ};
    if (kp)
        kafka_producer_prepare(kp, outputs, sizeof(outputs) / sizeof(outputs[0]), 2000);
    return kp;
}

/*
 * Creates the transactional producer and the consumer, and subscribes. 0, or
 * negative with errbuf saying why.
 */
static int connect_kafka(struct processor *p, char *errbuf, size_t errsize)
{
    struct kafka_prop props[80];
    size_t np = 0;
    if (!p->producer) {
        p->producer = new_producer(p, errbuf, errsize);
        if (!p->producer)
            return -EAGAIN;
    }
    props[np++] = (struct kafka_prop){"client.id", p->client_id};
    /* librdkafka's 45 s would leave a dead instance's partitions unread that long */
    props[np++] = (struct kafka_prop){"session.timeout.ms", "6000"};
    /* librdkafka prefetches up to 64 MiB by default; 8 MiB keeps the process within its
     * memory budget. More is faster under backlog (librdkafka 2.0 stops fetching for 1 s
     * when the queue fills during a commit): raise it in kafka.properties if memory allows. */
    props[np++] = (struct kafka_prop){"queued.max.messages.kbytes", "8192"};
    /* Partition-aligned cycles. A fetch brings up to 1 MiB per partition by default, so the
     * consumer queue holds runs of ~2,000 messages per partition and a 10,000-event cycle spans
     * 6-7 partitions, each a produce request per output topic, a transaction verification and
     * a commit marker. Runs of up to 4 MiB (a response still at most 8 MiB) bring a cycle down
     * to ~2.5 partitions: ~25 % shorter commits, ~10 % more events/s in the bench. */
    props[np++] = (struct kafka_prop){"max.partition.fetch.bytes", "4194304"};
    props[np++] = (struct kafka_prop){"fetch.max.bytes", "8388608"};
    for (size_t i = 0; i < p->nprops && np < 76; i++)
        props[np++] = p->props[i];
    /* partition ends tell when a partition has caught up (offline verdicts wait for it) */
    props[np++] = (struct kafka_prop){"enable.partition.eof", "true"};
    /* positions go to the transaction: no offset store per message */
    props[np++] = (struct kafka_prop){"enable.auto.offset.store", "false"};
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

/*
 * Replaces a producer that hit a fatal error other than a fence: the state of
 * the open transaction is rolled back and every partition rewound to its
 * committed offset, then a producer with the same transactional id takes over
 * (its init_transactions bumps the epoch and aborts what the old one left
 * open), with backoff while the broker is away. 0, or -ECANCELED when the
 * service stops first.
 */
static int recover_producer(struct processor *p)
{
    int64_t backoff_ms = 500;
    pthread_mutex_lock(&p->mu);
    commit_wait(p);
    rollback(p, true);
    p->txn_open = false;
    p->kafka_txn = false;
    struct kafka_producer *old = p->producer;
    p->producer = NULL;
    pthread_mutex_unlock(&p->mu);
    kafka_producer_free(old, 0);
    for (;;) {
        char err[256] = "";
        struct kafka_producer *np = new_producer(p, err, sizeof(err));
        if (np) {
            pthread_mutex_lock(&p->mu);
            p->producer = np;
            p->broken = false;
            fetch_lost(p); /* verdicts wait for a sign of the broker */
            pthread_mutex_unlock(&p->mu);
            LOG_INFO("producer replaced: processing resumes from the committed offsets");
            return 0;
        }
        LOG_WARN("cannot replace the producer yet, retrying in %lld ms: %s", (long long)backoff_ms,
                 err);
        for (int64_t t = 0; t < backoff_ms && !atomic_load(&p->stop); t += 100)
            time_sleep_ms(100);
        if (atomic_load(&p->stop))
            return -ECANCELED;
        backoff_ms = backoff_ms < 8000 ? backoff_ms * 2 : 8000;
    }
}

/*
 * One turn of the processing loop with the lock held: settles a finished
 * commit, handles m (NULL: none), fires due timers and ends the cycle when due.
 */
static void step(struct processor *p, struct kafka_msg *m, int64_t mono, int64_t now)
{
    if (p->inflight && atomic_load(&p->cm_finished))
        commit_wait(p); /* done: settle it and begin the open cycle's transaction */
    if (m) {
        if (kafka_msg_is_eof(m) || !kafka_msg_error(m))
            p->last_read_ms = mono;
        if (kafka_msg_is_eof(m)) {
            note_eof(p, m);
        } else if (kafka_msg_error(m)) {
            LOG_WARN("kafka consumer error: %s", kafka_msg_errstr(m));
            fetch_lost(p); /* the broker may be gone: no verdicts until it answers */
        } else {
            int t = topic_index(kafka_msg_topic(m));
            if (t == T_EVENTS)
                event_flows(p);
            else
                fetch_back(p);
            p->mono = mono;
            handle_message(p, m, t, now);
        }
        kafka_msg_free(m);
    }
    fire_timers(p, now);
    if (!p->txn_open && !p->inflight && mono >= p->next_unsaved_ms) {
        p->next_unsaved_ms = mono + 100; /* quiet: heartbeats due for the changelog */
        if (unsaved_pending(p, mono))
            txn_ensure(p);
    }
    if (p->txn_open &&
        (p->cycle_events >= p->set.cycle_max_events || mono - p->cycle_start_ms >= p->set.cycle_ms))
        commit_cycle(p);
}

/*
 * Cache hints for a message two ahead (its table slot by its key, the robot's
 * id, and the first KiB of its payload), then one ahead (the robot the slot
 * holds, read by now). At 100k robots each is a cache miss; overlapped with
 * the messages before, they cut the processing thread's CPU per event by
 * ~20 % (1.62-1.66 to 1.29 µs in the bench).
 */
static void prefetch_robot(const struct processor *p, const struct kafka_msg *m, bool robot)
{
    size_t klen = 0, vlen = 0;
    const char *key = kafka_msg_key(m, &klen);
    if (key && klen > 0 && klen <= ROBOT_ID_MAX)
        robot_table_prefetch(p->table, key, klen, robot);
    if (!robot) {
        const char *v = kafka_msg_value(m, &vlen);
        for (size_t off = 0; v && off < vlen && off < 1024; off += 64)
            __builtin_prefetch(v + off);
    }
}

static void *run(void *arg)
{
    struct processor *p = arg;
    pthread_setname_np(pthread_self(), "sp-events");
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
    waker_start(p);
    struct kafka_msg *batch[POLL_BATCH];
    size_t nbatch = 0, next = 0;
    while (!atomic_load(&p->stop)) {
        refresh_settings(p);
        if (next == nbatch) {
            int wait = p->inflight ? 5 : 20; /* a commit in flight: begin the next soon after */
            if (p->txn_open) {
                int64_t left = p->cycle_start_ms + p->set.cycle_ms - time_mono_ms();
                wait = left < 0 ? 0 : left < wait ? (int)left : wait;
            }
            nbatch = kafka_consumer_poll_batch(p->consumer, wait, batch, POLL_BATCH);
            next = 0;
            /* reads only what this thread writes: no lock */
            if (nbatch == 0 || kafka_consumer_queued(p->consumer) < WAKE_LOW)
                wake_fetcher(p);
        }
        unsigned rewinds = p->rewinds;
        /* one reading of each clock and one lock of the state a batch, not a message: a
         * batch takes well under a millisecond */
        int64_t mono = time_mono_ms(), now = time_now_ms();
        pthread_mutex_lock(&p->mu);
        do {
            if (next + 2 < nbatch)
                prefetch_robot(p, batch[next + 2], false);
            if (next + 1 < nbatch)
                prefetch_robot(p, batch[next + 1], true);
            struct kafka_msg *m = next < nbatch ? batch[next++] : NULL;
            step(p, m, mono, now);
        } while (next < nbatch && p->rewinds == rewinds && !p->broken && !atomic_load(&p->stop));
        pthread_mutex_unlock(&p->mu);
        if (p->broken && !atomic_load(&p->stop) && recover_producer(p) != 0)
            break;
        if (p->rewinds != rewinds) {
            /* rewound (an abort, a failed commit, a replaced producer): the rest of the
             * batch comes again from the broker */
            while (next < nbatch)
                kafka_msg_free(batch[next++]);
        }
        if (mono >= p->next_gauges_ms) {
            update_gauges(p);
            p->next_gauges_ms = mono + 1000;
        }
    }
    while (next < nbatch)
        kafka_msg_free(batch[next++]); /* not processed: their positions were not sent */
    pthread_mutex_lock(&p->mu);
    if (!atomic_load(&p->failed))
        unsaved_flush(p, NULL, p->npos); /* a restart need not replay */
    if (p->txn_open && !atomic_load(&p->failed))
        commit_sync(p);
    else
        commit_wait(p);
    pthread_mutex_unlock(&p->mu);
    waker_stop(p);
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
    p->m_replayed = metrics_counter(
        m, "stream_replayed_events_total",
        "Events read again that the state already holds (replay after a restart or abort)", 0,
        NULL);
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
    p->m_deferred = metrics_counter(
        m, "stream_timers_deferred_total",
        "Heartbeat deadlines put off because the robot's partition had not caught up", 0, NULL);
    p->m_wakes = metrics_counter(
        m, "stream_fetch_wakes_total",
        "Times the consumer's queue ran low behind the high watermark and the fetcher was woken", 0,
        NULL);
}

struct processor *processor_new(struct service *svc, char *errbuf, size_t errsize)
{
    const struct cfg *c = service_config_acquire(svc);
    struct processor *p = xcalloc(1, sizeof(*p));
    char instance[INSTANCE_MAX + 1] = "", txn_id[INSTANCE_MAX + 32];

    p->svc = svc;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->settings_mu, NULL);
    pthread_mutex_init(&p->mq_mu, NULL);
    pthread_cond_init(&p->mq_ready, NULL);
    pthread_cond_init(&p->mq_drained, NULL);
    pthread_mutex_init(&p->cm_mu, NULL);
    pthread_cond_init(&p->cm_cond, NULL);
    pthread_mutex_init(&p->wk_mu, NULL);
    pthread_cond_init(&p->wk_cond, NULL);
    buf_init(&p->out_buf, OUT_MAX_BYTES);
    buf_init(&p->cm_buf, OUT_MAX_BYTES);
    time_cache_init(&p->cm_tc);
    settings_read(c, &p->set);
    p->pending = p->set;
    p->table = robot_table_new();
    p->heap = deadline_heap_new();
    time_cache_init(&p->tc);
    position_of(p, 0, 0);
    str_copy(p->bootstrap, cfg_get_str(c, "kafka.bootstrap_servers"), sizeof(p->bootstrap));
    str_copy(p->group, cfg_get_str(c, "stream.group_id"), sizeof(p->group));
    struct buf gj;
    buf_init(&gj, sizeof(p->group) * 6 + 1);
    buf_append_json_str(&gj, p->group);
    p->group_json = buf_detach(&gj, NULL);
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
    int rc = mirror_start(p);
    if (rc)
        return rc;
    rc = committer_start(p);
    if (rc) {
        mirror_stop(p);
        return rc;
    }
    rc = pthread_create(&p->thread, NULL, run, p);
    if (rc) {
        committer_stop(p);
        mirror_stop(p);
        return -rc;
    }
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
    committer_stop(p);
    mirror_stop(p); /* after the last commit: its items reach Redis */
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
    for (size_t i = 0; i < p->npos; i++)
        free(p->uq[i].e);
    free(p->uq);
    free(p->undo);
    free(p->dirty);
    outq_clear(p);
    free(p->outq);
    free(p->ho.parts);
    free(p->ho.offsets);
    free(p->ho.topics);
    free(p->ho.undo);
    free(p->ho.gone);
    free(p->ho.mirror);
    buf_release(&p->out_buf);
    buf_release(&p->cm_buf);
    free(p->ho.items);
    free(p->ho.opened);
    free(p->ho.arena);
    free(p->catchup);
    free(p->mirror);
    free(p->mq);
    free(p->group_json);
    pthread_cond_destroy(&p->mq_ready);
    pthread_cond_destroy(&p->mq_drained);
    pthread_mutex_destroy(&p->mq_mu);
    pthread_cond_destroy(&p->cm_cond);
    pthread_mutex_destroy(&p->cm_mu);
    pthread_cond_destroy(&p->wk_cond);
    pthread_mutex_destroy(&p->wk_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->settings_mu);
    free(p);
}
