/*
 * POST /v1/webhooks/{source} (see ingest.h).
 *
 * The request's life: verify the signature on the raw bytes, parse and validate,
 * suspend the connection; the claim worker claims the webhook id in Redis
 * ("pending", many requests per pipelined round trip, so HTTP threads never
 * wait on Redis) and produces every event; the producer's delivery reports
 * count down and the last one answers 202 (and marks the id "done") or 503 with
 * Retry-After (and releases the id so the sender's retry is accepted). Nothing
 * is acknowledged before Kafka has it with acks=all, and Redis being down never
 * refuses a webhook.
 */
#include "ingest.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "buf.h"
#include "cloudevents.h"
#include "crypto.h"
#include "events.h"
#include "follower.h"
#include "health.h"
#include "http_server.h"
#include "json.h"
#include "kafka.h"
#include "keyring.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "service.h"
#include "sources.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "trace.h"
#include "verify.h"
#include "xalloc.h"

#define DEDUPE_ID_MAX   200
#define DEDUPE_KEY_MAX  (DEDUPE_ID_MAX + SOURCE_ID_MAX + 16)
#define EVENT_MAX_BYTES (1024 * 1024)
#define FINALIZE_BATCH  256
#define CLAIM_BATCH     256
/*
 * The finalizer, woken from idle, waits this long before taking its batch, so
 * one Redis round trip carries the "done" marks of that window rather than one
 * each: every round trip costs syscalls and wake-ups here and in Redis, on the
 * same cores as the requests. It is off the request's path (the 202 does not
 * wait for it). The claim worker does not wait: it is on the path, and under
 * load requests queue up behind its round trip anyway.
 */
#define FINALIZE_COALESCE_US 2000

const struct cfg_key ingest_config_keys[] = {
    {"ingest.signature_tolerance_s", CFG_INT, "300", 1, 86400, true, NULL,
     "accepted clock difference for webhook-timestamp"},
    {"ingest.max_batch", CFG_INT, "500", 1, 10000, true, NULL, "most events in one request"},
    {"ingest.dedupe_ttl_s", CFG_INT, "86400", 60, 2592000, false, NULL,
     "how long a webhook id is remembered"},
    {"ingest.pending_ttl_s", CFG_INT, "60", 10, 3600, false, NULL,
     "how long an unfinished webhook id is held (must exceed message.timeout.ms)"},
    {"ingest.dedupe_timeout_ms", CFG_INT, "100", 5, 5000, false, NULL,
     "Redis timeout for the dedupe check; slower means accept without dedupe"},
    {"ingest.retry_after_s", CFG_INT, "5", 1, 3600, true, NULL,
     "Retry-After sent with 503 when Kafka cannot take events"},
    {"ingest.ack_timeout_ms", CFG_INT, "5000", 100, 600000, true, NULL,
     "answer 503 when Kafka has not acknowledged by then (the events stay queued)"},
    {"ingest.sources_refresh_s", CFG_INT, "30", 1, 3600, false, NULL,
     "full reload of vendor sources from Redis"},
    {"ingest.unknown_source_ttl_ms", CFG_INT, "2000", 0, 600000, false, NULL,
     "how long an unknown source id is remembered as unknown"},
};
const size_t ingest_config_nkeys = sizeof(ingest_config_keys) / sizeof(ingest_config_keys[0]);

/*
 * An event may wait this long for the broker (a webhook is answered 503 long
 * before, at ingest.ack_timeout_ms); it must end before the webhook id's
 * pending claim expires, or a retry could be produced while it still waits.
 */
#define INGEST_MESSAGE_TIMEOUT_MS "45000"
const struct kafka_prop ingest_producer_defaults[] = {
    {"message.timeout.ms", INGEST_MESSAGE_TIMEOUT_MS},
    {"queue.buffering.max.kbytes", "32768"},
    /* 5 ms would mean fewer syscalls per webhook (bigger produce requests), but every
     * request waits for it: with a bounded number of senders that caps the rate (measured,
     * runs interleaved: 192 senders 24.6k/s at 2 ms, 23.6k/s at 5 ms; 64 senders 15k/s at
     * 2 ms, 10.7k/s at 5 ms) */
    {"linger.ms", "2"},
};
const size_t ingest_producer_ndefaults =
    sizeof(ingest_producer_defaults) / sizeof(ingest_producer_defaults[0]);

/* The message timeout in force: the config's kafka.properties win over our default. */
static int64_t message_timeout_ms(struct service *svc)
{
    const struct kafka_prop *props;
    size_t n = service_kafka_props(svc, &props);
    int64_t v = 0;
    str_to_int64(INGEST_MESSAGE_TIMEOUT_MS, &v);
    for (size_t i = 0; i < n; i++)
        if (strcmp(props[i].name, "message.timeout.ms") == 0 &&
            str_to_int64(props[i].value, &v) != 0)
            v = -1;
    return v;
}

/* What becomes of a claimed webhook id once its events' fate is known. */
enum finalize_kind {
    FINALIZE_DONE,    /* every event is in Kafka: later copies are duplicates */
    FINALIZE_RELEASE, /* nothing was stored: the sender's retry must be accepted */
};

/* A queued Redis update of a webhook id. */
struct finalize_op {
    struct finalize_op *next;
    enum finalize_kind kind;
    char key[DEDUPE_KEY_MAX];
};

struct ingest {
    struct service *svc;
    struct kafka_producer *producer;
    struct keyring *keyring;
    struct source_cache *sources;
    struct redis_options dedupe_opts;

    /* settings */
    atomic_llong tolerance_s;
    atomic_llong max_batch;
    atomic_llong retry_after_s;
    int64_t dedupe_ttl_s;
    int64_t pending_ttl_s;
    int64_t refresh_s;
    int64_t next_refresh_ms;
    atomic_llong ack_timeout_ms;

    /* requests awaiting their answer, oldest first: the finalizer answers 503 at the deadline */
    pthread_mutex_t list_lock;
    struct pending *list_head, *list_tail;

    struct redis *shared_redis;

    /* claim worker: dedupe claims for queued requests, then produces them */
    struct redis *claim_redis;
    pthread_mutex_t claim_lock;
    pthread_cond_t claim_cond;
    struct pending *claim_head, *claim_tail;
    bool claim_waiting;
    bool claim_stop;
    bool claim_started;
    pthread_t claim_thread;

    /* finalizer: applies dedupe outcomes off the delivery thread */
    pthread_mutex_t fin_lock;
    pthread_cond_t fin_cond;
    struct finalize_op *fin_head, *fin_tail;
    bool fin_waiting;
    bool fin_stop;
    bool fin_started;
    pthread_t fin_thread;

    /* registry watcher: invalidates cached sources on robot.registry.v1 */
    struct follower *watch;
    atomic_bool watch_assigned; /* partitions assigned at least once: changes are followed */

    atomic_long inflight;

    struct metric *m_requests;   /* {source,outcome} */
    struct metric *m_events;     /* {source} */
    struct metric *m_rejected;   /* {source,reason} */
    struct metric *m_duplicates; /* {source} */
    struct metric *m_produce;    /* histogram */
    struct metric *m_degraded;   /* redis degraded */
};

/* One verified request, from suspension until its answer. */
struct pending {
    struct ingest *in;
    struct http_request *req;
    struct pending *next;          /* claim queue */
    struct pending *lprev, *lnext; /* awaiting-answer list */
    bool linked;                   /* in that list (under list_lock) */
    atomic_int refs;               /* the list + the outstanding deliveries */
    atomic_bool answered;          /* the HTTP answer was given */
    int64_t deadline_ms;           /* monotonic: answer 503 if Kafka is slower */
    atomic_int remaining;
    atomic_int failed;
    atomic_int uncertain; /* failures the broker may nevertheless have stored */
    int64_t started_ms;
    struct event_batch batch; /* released once every event is queued */
    char **ids;               /* CloudEvent id per event */
    size_t nevents;
    bool has_dedupe;
    char source[SOURCE_ID_MAX + 1];
    char ce_source[SOURCE_ID_MAX + 32]; /* "/webhook-ingest/<source>" */
    char dedupe_key[DEDUPE_KEY_MAX];
    char traceparent[TRACE_PARENT_LEN];
    char received_at[TIME_RFC3339_LEN];
    char *ids_json; /* ["id1","id2",...] for the 202 body */
};

static void reap_overdue(struct ingest *in);

/* ---- metrics helpers ---- */

static void count2(struct metric *m, const char *a, const char *b)
{
    const char *v[] = {a, b};
    metric_series_add(metric_series(m, v), 1);
}

static void count1(struct metric *m, const char *a, double n)
{
    const char *v[] = {a};
    metric_series_add(metric_series(m, v), n);
}

static double inflight_value(void *ud)
{
    struct ingest *in = ud;
    return (double)atomic_load(&in->inflight);
}

/* ---- Redis dedupe ---- */

enum claim { CLAIM_NEW, CLAIM_DONE, CLAIM_PENDING, CLAIM_DEGRADED };

/* What SET key pending NX GET said: nil = ours now, "done" = duplicate, else in flight. */
static enum claim claim_result(const redisReply *r)
{
    if (!r)
        return CLAIM_DEGRADED;
    if (r->type == REDIS_REPLY_NIL)
        return CLAIM_NEW;
    if (r->type == REDIS_REPLY_STRING)
        return strcmp(r->str, "done") == 0 ? CLAIM_DONE : CLAIM_PENDING;
    if (r->type == REDIS_REPLY_ERROR)
        LOG_WARN("dedupe claim failed: %s", r->str);
    return CLAIM_DEGRADED;
}

static void finalize_enqueue(struct ingest *in, const char *key, enum finalize_kind kind)
{
    struct finalize_op *op = xmalloc(sizeof(*op));
    op->next = NULL;
    op->kind = kind;
    str_copy(op->key, key, sizeof(op->key));
    pthread_mutex_lock(&in->fin_lock);
    if (in->fin_tail)
        in->fin_tail->next = op;
    else
        in->fin_head = op;
    in->fin_tail = op;
    /* A busy finalizer finds the op on its next pass: no wake-up per delivery. */
    if (in->fin_waiting)
        pthread_cond_signal(&in->fin_cond);
    pthread_mutex_unlock(&in->fin_lock);
}

static void finalize_batch(struct ingest *in, struct finalize_op *ops)
{
    struct redis_cmd cmds[FINALIZE_BATCH];
    const char *argv[FINALIZE_BATCH][5];
    redisReply *replies[FINALIZE_BATCH];
    char ttl[24];
    size_t n = 0;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)in->dedupe_ttl_s);
    for (struct finalize_op *op = ops; op; op = op->next) {
        const char **a = argv[n];
        if (op->kind == FINALIZE_DONE) {
            a[0] = "SET", a[1] = op->key, a[2] = "done", a[3] = "EX", a[4] = ttl;
            cmds[n] = (struct redis_cmd){5, a, NULL};
        } else {
            a[0] = "DEL", a[1] = op->key;
            cmds[n] = (struct redis_cmd){2, a, NULL};
        }
        n++;
    }
    if (redis_pipeline(in->shared_redis, n, cmds, replies) != 0) {
        /* A "pending" claim then simply expires: the sender's retries are accepted after it. */
        metric_add(in->m_degraded, (double)n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (replies[i])
            freeReplyObject(replies[i]);
}

static void sleep_us(long us)
{
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

static void *finalizer_main(void *arg)
{
    struct ingest *in = arg;
    pthread_mutex_lock(&in->fin_lock);
    for (;;) {
        bool idle = !in->fin_head;
        while (!in->fin_head && !in->fin_stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            in->fin_waiting = true;
            int rc = pthread_cond_timedwait(&in->fin_cond, &in->fin_lock, &ts);
            in->fin_waiting = false;
            if (rc != 0) {
                pthread_mutex_unlock(&in->fin_lock);
                reap_overdue(in);
                pthread_mutex_lock(&in->fin_lock);
            }
        }
        if (!in->fin_head && in->fin_stop)
            break;
        if (idle && !in->fin_stop) {
            pthread_mutex_unlock(&in->fin_lock);
            sleep_us(FINALIZE_COALESCE_US);
            pthread_mutex_lock(&in->fin_lock);
        }
        struct finalize_op *head = in->fin_head, *tail = head;
        size_t n = 1;
        while (tail->next && n < FINALIZE_BATCH) {
            tail = tail->next;
            n++;
        }
        in->fin_head = tail->next;
        if (!in->fin_head)
            in->fin_tail = NULL;
        tail->next = NULL;
        pthread_mutex_unlock(&in->fin_lock);
        finalize_batch(in, head);
        reap_overdue(in);
        while (head) {
            struct finalize_op *next = head->next;
            free(head);
            head = next;
        }
        pthread_mutex_lock(&in->fin_lock);
    }
    pthread_mutex_unlock(&in->fin_lock);
    return NULL;
}

/* ---- registry watcher ---- */

/*
 * The watcher starts at the end of robot.registry.v1, so a change made before
 * its partitions were assigned would be missed: reload every source then.
 * Runs on the watcher thread (from kafka_consumer_poll).
 */
static void on_watch_rebalance(void *ud, bool assigned, bool lost,
                               const struct kafka_partition *parts, size_t nparts)
{
    (void)lost;
    (void)parts;
    struct ingest *in = ud;
    if (!assigned || nparts == 0)
        return;
    if (source_cache_refresh(in->sources) != 0)
        LOG_WARN("cannot reload vendor sources after joining %s", TOPIC_ROBOT_REGISTRY);
    atomic_store(&in->watch_assigned, true);
}

static bool check_sources_followed(void *ud)
{
    struct ingest *in = ud;
    return atomic_load(&in->watch_assigned);
}

static void on_source_event(void *ud, const struct cloudevent *ev)
{
    struct ingest *in = ud;
    if (str_has_prefix(ev->type, "source.") && ev->subject) {
        LOG_INFO("source '%s' changed (%s), reloading it", ev->subject, ev->type);
        source_cache_invalidate(in->sources, ev->subject);
    }
}

/* Every replica must see every change: a follower (a group of its own, from the end). */
static int start_watch(struct ingest *in, char *errbuf, size_t errsize)
{
    struct follower_options o = {
        .bootstrap = cfg_get_str(service_cfg(in->svc), "kafka.bootstrap_servers"),
        .group_prefix = "webhook-ingest-sources",
        .topic = TOPIC_ROBOT_REGISTRY,
        .on_event = on_source_event,
        .on_rebalance = on_watch_rebalance,
        .ud = in,
    };
    o.nprops = service_kafka_props(in->svc, &o.props);
    in->watch = follower_start(&o, errbuf, errsize);
    return in->watch ? 0 : -EINVAL;
}

/* ---- the request ---- */

static void respond_problem(struct ingest *in, struct http_request *req, const char *source,
                            unsigned status, const char *reason, const char *field,
                            const char *detail)
{
    count2(in->m_rejected, source, reason);
    count2(in->m_requests, source, "rejected");
    http_respond_problem(req, status, field, "%s", detail);
}

static void pending_unref(struct pending *p)
{
    if (atomic_fetch_sub(&p->refs, 1) == 1) {
        free(p->ids_json);
        free(p);
    }
}

/* Takes the request off the awaiting-answer list (if still there) and drops the list's ref. */
static void pending_unlink(struct pending *p)
{
    struct ingest *in = p->in;
    bool was = false;
    pthread_mutex_lock(&in->list_lock);
    if (p->linked) {
        if (p->lprev)
            p->lprev->lnext = p->lnext;
        else
            in->list_head = p->lnext;
        if (p->lnext)
            p->lnext->lprev = p->lprev;
        else
            in->list_tail = p->lprev;
        p->linked = false;
        was = true;
    }
    pthread_mutex_unlock(&in->list_lock);
    if (was)
        pending_unref(p);
}

static void pending_link(struct pending *p)
{
    struct ingest *in = p->in;
    p->deadline_ms = time_mono_ms() + atomic_load(&in->ack_timeout_ms);
    atomic_store(&p->refs, 1);
    pthread_mutex_lock(&in->list_lock);
    p->lprev = in->list_tail;
    p->lnext = NULL;
    if (in->list_tail)
        in->list_tail->lnext = p;
    else
        in->list_head = p;
    in->list_tail = p;
    p->linked = true;
    pthread_mutex_unlock(&in->list_lock);
}

/* Answers 503 once (the answered flag decides between racing threads); true if it did. */
static bool answer_unavailable(struct pending *p, const char *why)
{
    struct ingest *in = p->in;
    if (atomic_exchange(&p->answered, true))
        return false;
    char retry[24];
    snprintf(retry, sizeof(retry), "%lld", (long long)atomic_load(&in->retry_after_s));
    count2(in->m_requests, p->source, "unavailable");
    http_response_header(p->req, "Retry-After", retry);
    http_respond_problem(p->req, 503, NULL, "%s; nothing was accepted, retry after %s s", why,
                         retry);
    atomic_fetch_sub(&in->inflight, 1);
    return true;
}

/*
 * The last delivery report of a request (on the producer's thread). If the
 * deadline already answered 503, the events may still have landed: then the
 * id is marked done so the sender's retry is a duplicate, not a second copy.
 */
static void pending_delivered(struct pending *p)
{
    struct ingest *in = p->in;
    bool ok = atomic_load(&p->failed) == 0;
    double secs = (double)(time_mono_ms() - p->started_ms) / 1000.0;
    metric_observe(in->m_produce, secs);
    if (p->has_dedupe) {
        if (ok)
            finalize_enqueue(in, p->dedupe_key, FINALIZE_DONE);
        else if (atomic_load(&p->uncertain) == 0)
            finalize_enqueue(in, p->dedupe_key, FINALIZE_RELEASE);
        /* else: maybe stored, maybe not; the pending claim expires and a retry is accepted
         * then (consumers dedupe by the CloudEvent id, which the retry repeats) */
    }
    if (ok && !atomic_exchange(&p->answered, true)) {
        struct buf b;
        buf_init(&b, (size_t)EVENT_MAX_BYTES);
        buf_appendf(&b, "{\"accepted\":%zu,\"ids\":%s}", p->nevents, p->ids_json);
        size_t len;
        char *body = buf_detach(&b, &len);
        count1(in->m_events, p->source, (double)p->nevents);
        count2(in->m_requests, p->source, "accepted");
        http_respond(p->req, 202, "application/json", body, len);
        atomic_fetch_sub(&in->inflight, 1);
    } else if (!ok) {
        answer_unavailable(p, "kafka did not acknowledge the events");
    }
    pending_unlink(p);
    pending_unref(p);
}

void ingest_on_delivery(void *opaque, int err, const char *errstr, int32_t partition,
                        int64_t offset)
{
    (void)partition;
    (void)offset;
    struct pending *p = opaque;
    if (!p)
        return;
    if (err) {
        if (err != KAFKA_ERR_NOT_PERSISTED)
            atomic_fetch_add(&p->uncertain, 1);
        if (atomic_fetch_add(&p->failed, 1) == 0)
            LOG_WARN("kafka delivery failed for a webhook from source '%s': %s", p->source,
                     errstr ? errstr : "unknown error");
    }
    if (atomic_fetch_sub(&p->remaining, 1) == 1)
        pending_delivered(p);
}

/* Answers 503 to every request whose deadline passed; its events stay queued. */
static void reap_overdue(struct ingest *in)
{
    int64_t now = time_mono_ms();
    for (;;) {
        pthread_mutex_lock(&in->list_lock);
        struct pending *p = in->list_head;
        if (!p || p->deadline_ms > now) {
            pthread_mutex_unlock(&in->list_lock);
            return;
        }
        atomic_fetch_add(&p->refs, 1); /* keep it while answering outside the lock */
        pthread_mutex_unlock(&in->list_lock);
        answer_unavailable(p, "kafka has not acknowledged the events in time");
        pending_unlink(p);
        pending_unref(p);
    }
}

/*
 * The event's data: its own validated bytes with "source" and "received_at"
 * appended before the closing brace (no parse, no re-print).
 */
static int event_data(const struct pending *p, const struct event *ev, struct buf *out)
{
    int rc = buf_append(out, ev->raw, ev->raw_len - 1);
    if (!rc)
        rc = buf_append_str(out, ev->raw_empty ? "\"source\":\"" : ",\"source\":\"");
    if (!rc)
        rc = buf_append_json_str(out, p->source);
    if (!rc)
        rc = buf_append_str(out, "\",\"received_at\":\"");
    if (!rc)
        rc = buf_append_str(out, p->received_at);
    if (!rc)
        rc = buf_append_str(out, "\"}");
    return rc;
}

/* Builds the CloudEvent for one event and queues it; 0 or negative. */
static int produce_event(struct ingest *in, struct pending *p, const struct event *ev,
                         const char *ce_id)
{
    struct buf data, b;
    buf_init(&data, EVENT_MAX_BYTES + 256);
    buf_init(&b, EVENT_MAX_BYTES + 1024);
    int rc = event_data(p, ev, &data);
    if (rc == 0) {
        struct cloudevent ce = {
            .id = ce_id,
            .source = p->ce_source,
            .type = ev->type,
            .subject = ev->robot_id,
            .time = ev->occurred_at,
        };
        rc = ce_build_raw(&ce, data.data, data.len, &b);
    }
    if (rc == 0) {
        struct kafka_header h = {"traceparent", p->traceparent, strlen(p->traceparent)};
        rc = kafka_producer_send(in->producer, TOPIC_ROBOT_EVENTS, -1, ev->robot_id,
                                 strlen(ev->robot_id), b.data, b.len, &h, 1, p);
    }
    buf_release(&data);
    buf_release(&b);
    return rc;
}

/* Drops what a request holds once its events are queued or it was answered early. */
static void pending_release_batch(struct pending *p)
{
    for (size_t i = 0; p->ids && i < p->nevents; i++)
        free(p->ids[i]);
    free(p->ids);
    p->ids = NULL;
    event_batch_release(&p->batch);
}

/* Answers a request that produced nothing (duplicate, in progress) and frees it. */
static void pending_finish_early(struct pending *p)
{
    atomic_store(&p->answered, true);
    atomic_fetch_sub(&p->in->inflight, 1);
    pending_release_batch(p);
    pending_unlink(p);
}

/* Queues every event of the request; the last delivery report answers it. */
static void produce_pending(struct pending *p)
{
    struct ingest *in = p->in;
    size_t n = p->nevents;
    atomic_fetch_add(&p->refs, 1); /* dropped by pending_delivered */
    /* One extra count held while queueing, so no delivery completes the request early. */
    atomic_store(&p->remaining, (int)n + 1);
    for (size_t i = 0; i < n; i++) {
        if (produce_event(in, p, &p->batch.events[i], p->ids[i]) != 0) {
            if (atomic_fetch_add(&p->failed, 1) == 0)
                LOG_WARN("cannot queue events for kafka (source '%s')", p->source);
            atomic_fetch_sub(&p->remaining, (int)(n - i));
            break;
        }
    }
    pending_release_batch(p);
    if (atomic_fetch_sub(&p->remaining, 1) == 1)
        pending_delivered(p);
}

static void claim_enqueue(struct ingest *in, struct pending *p)
{
    pthread_mutex_lock(&in->claim_lock);
    p->next = NULL;
    if (in->claim_tail)
        in->claim_tail->next = p;
    else
        in->claim_head = p;
    in->claim_tail = p;
    if (in->claim_waiting)
        pthread_cond_signal(&in->claim_cond);
    pthread_mutex_unlock(&in->claim_lock);
}

/* Claims a batch of webhook ids in one pipelined round trip, then acts on each. */
static void claim_batch(struct ingest *in, struct pending *head)
{
    struct redis_cmd cmds[CLAIM_BATCH];
    const char *argv[CLAIM_BATCH][8];
    redisReply *replies[CLAIM_BATCH] = {0};
    struct pending *ps[CLAIM_BATCH];
    char ttl[24];
    size_t n = 0;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)in->pending_ttl_s);
    for (struct pending *p = head; p; p = p->next) {
        const char **a = argv[n];
        a[0] = "SET", a[1] = p->dedupe_key, a[2] = "pending", a[3] = "NX", a[4] = "GET",
        a[5] = "EX", a[6] = ttl;
        cmds[n] = (struct redis_cmd){7, a, NULL};
        ps[n++] = p;
    }
    int rc = redis_pipeline(in->claim_redis, n, cmds, replies);
    for (size_t i = 0; i < n; i++) {
        struct pending *p = ps[i];
        enum claim c = rc == 0 ? claim_result(replies[i]) : CLAIM_DEGRADED;
        if (replies[i])
            freeReplyObject(replies[i]);
        switch (c) {
        case CLAIM_NEW:
            p->has_dedupe = true;
            produce_pending(p);
            break;
        case CLAIM_DEGRADED:
            /* Redis never costs a webhook: accept without dedupe, consumers dedupe by id. */
            metric_add(in->m_degraded, 1);
            produce_pending(p);
            break;
        case CLAIM_DONE:
            count1(in->m_duplicates, p->source, 1);
            count2(in->m_requests, p->source, "duplicate");
            http_respond(p->req, 200, "application/json", xstrdup("{\"duplicate\":true}"), 18);
            pending_finish_early(p);
            break;
        case CLAIM_PENDING:
            count2(in->m_requests, p->source, "in_progress");
            http_response_header(p->req, "Retry-After", "1");
            http_respond_problem(p->req, 409, "webhook-id",
                                 "a webhook with this id is being processed; retry shortly");
            pending_finish_early(p);
            break;
        }
    }
}

static void *claim_main(void *arg)
{
    struct ingest *in = arg;
    pthread_mutex_lock(&in->claim_lock);
    for (;;) {
        while (!in->claim_head && !in->claim_stop) {
            in->claim_waiting = true;
            pthread_cond_wait(&in->claim_cond, &in->claim_lock);
            in->claim_waiting = false;
        }
        if (!in->claim_head)
            break;
        struct pending *head = in->claim_head, *tail = head;
        size_t n = 1;
        while (tail->next && n < CLAIM_BATCH) {
            tail = tail->next;
            n++;
        }
        in->claim_head = tail->next;
        if (!in->claim_head)
            in->claim_tail = NULL;
        tail->next = NULL;
        pthread_mutex_unlock(&in->claim_lock);
        claim_batch(in, head);
        pthread_mutex_lock(&in->claim_lock);
    }
    pthread_mutex_unlock(&in->claim_lock);
    return NULL;
}

struct verify_ctx {
    struct verify_input in;
    enum source_scheme scheme;
};

static int verify_with_source(void *ud, const struct source *src)
{
    struct verify_ctx *v = ud;
    v->scheme = src->scheme;
    return (int)verify_request(src, &v->in);
}

/* The header a failed signature check is about, for the problem's "field". */
static const char *verify_field(const struct verify_ctx *v, enum verify_result r)
{
    if (v->scheme == SOURCE_SCHEME_GITHUB_SHA256)
        return "X-Signature-256";
    if (r == VERIFY_BAD_TIMESTAMP || r == VERIFY_STALE)
        return "webhook-timestamp";
    if (r == VERIFY_MISSING && !v->in.webhook_id)
        return "webhook-id";
    if (r == VERIFY_MISSING && !v->in.webhook_timestamp)
        return "webhook-timestamp";
    return "webhook-signature";
}

static bool content_type_json(const char *ct)
{
    if (!ct)
        return false;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return n == strlen("application/json") && strncasecmp(ct, "application/json", n) == 0;
}

/* The id that makes a webhook a duplicate: webhook-id, a delivery id, or the single event's id. */
static const char *dedupe_id(struct http_request *req, const struct event_batch *b)
{
    const char *id = http_request_header(req, "webhook-id");
    if (!id)
        id = http_request_header(req, "X-GitHub-Delivery");
    if (!id && b->n == 1)
        id = b->events[0].id;
    return id;
}

static void handle_webhook(struct http_request *req, void *ud)
{
    struct ingest *in = ud;
    const char *source = http_request_param(req, "source");
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    int64_t now = time_now_ms();

    if (!content_type_json(http_request_header(req, "Content-Type"))) {
        respond_problem(in, req, "unknown", 415, "content_type", "Content-Type",
                        "Content-Type must be application/json");
        return;
    }
    struct verify_ctx v = {.in = {
                               .webhook_id = http_request_header(req, "webhook-id"),
                               .webhook_timestamp = http_request_header(req, "webhook-timestamp"),
                               .webhook_signature = http_request_header(req, "webhook-signature"),
                               .signature_256 = http_request_header(req, "X-Signature-256"),
                               .body = body,
                               .len = len,
                               .now_ms = now,
                               .tolerance_s = atomic_load(&in->tolerance_s),
                           }};
    int rc = source_cache_use(in->sources, source, verify_with_source, &v);
    if (rc == -ENOENT) {
        respond_problem(in, req, "unknown", 404, "unknown_source", "source",
                        "no vendor source is registered under this id");
        return;
    }
    if (rc < 0) {
        /* Redis down and the source not cached yet: the sender must retry. */
        count2(in->m_requests, "unknown", "unavailable");
        http_response_header(req, "Retry-After", "5");
        http_respond_problem(req, 503, NULL, "vendor source cannot be loaded right now");
        return;
    }
    if (rc != VERIFY_OK) {
        const char *reason = verify_reason((enum verify_result)rc);
        char detail[160];
        snprintf(detail, sizeof(detail), "signature check failed: %s", reason);
        respond_problem(in, req, source, 401, reason, verify_field(&v, (enum verify_result)rc),
                        detail);
        return;
    }

    struct event_batch batch;
    struct event_error perr;
    if (event_batch_parse(body, len, (size_t)atomic_load(&in->max_batch), &batch, &perr) != 0) {
        respond_problem(in, req, source, 400, "invalid_body", perr.field, perr.detail);
        return;
    }

    struct pending *p = xcalloc(1, sizeof(*p));
    p->in = in;
    p->req = req;
    p->batch = batch;
    p->nevents = batch.n;
    p->started_ms = time_mono_ms();
    str_copy(p->source, source, sizeof(p->source));
    snprintf(p->ce_source, sizeof(p->ce_source), "/webhook-ingest/%s", p->source);
    trace_parent_child(http_request_header(req, "traceparent"), p->traceparent);
    time_format_rfc3339(now, p->received_at, sizeof(p->received_at));

    /* Event ids are stable across the sender's retries so consumers can dedupe. */
    const char *did = dedupe_id(req, &p->batch);
    if (did && strlen(did) > DEDUPE_ID_MAX)
        did = NULL;
    p->ids = xcalloc(p->nevents, sizeof(*p->ids));
    struct buf idj;
    buf_init(&idj, EVENT_MAX_BYTES);
    buf_append_str(&idj, "[");
    for (size_t i = 0; i < p->nevents; i++) {
        if (p->batch.events[i].id) {
            p->ids[i] = xstrdup(p->batch.events[i].id);
        } else if (did) {
            p->ids[i] = xasprintf("%s-%zu", did, i);
        } else {
            char u[CRYPTO_UUID_LEN];
            crypto_uuid_v7(u);
            p->ids[i] = xstrdup(u);
        }
        buf_append_str(&idj, i ? ",\"" : "\"");
        buf_append_json_str(&idj, p->ids[i]);
        buf_append_str(&idj, "\"");
    }
    buf_append_str(&idj, "]");
    p->ids_json = buf_detach(&idj, NULL);

    atomic_fetch_add(&in->inflight, 1);
    pending_link(p);
    http_request_suspend(req);
    if (did) {
        snprintf(p->dedupe_key, sizeof(p->dedupe_key), "dedupe:%s:%s", source, did);
        claim_enqueue(in, p);
    } else {
        produce_pending(p);
    }
}

int ingest_register_routes(struct ingest *in)
{
    return http_server_route(service_http(in->svc), "POST", "/v1/webhooks/{source}", handle_webhook,
                             in);
}

/* ---- lifecycle ---- */

/* config-center changed a reloadable key: new requests use the new limits. */
static void ingest_reload(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg)
{
    (void)old_cfg;
    struct ingest *in = ud;
    atomic_store(&in->tolerance_s, cfg_get_int(new_cfg, "ingest.signature_tolerance_s"));
    atomic_store(&in->max_batch, cfg_get_int(new_cfg, "ingest.max_batch"));
    atomic_store(&in->retry_after_s, cfg_get_int(new_cfg, "ingest.retry_after_s"));
    atomic_store(&in->ack_timeout_ms, cfg_get_int(new_cfg, "ingest.ack_timeout_ms"));
}

struct ingest *ingest_new(struct service *svc, char *errbuf, size_t errsize)
{
    const struct cfg *c = service_cfg(svc);
    struct ingest *in = xcalloc(1, sizeof(*in));
    in->svc = svc;
    in->producer = service_producer(svc);
    pthread_mutex_init(&in->list_lock, NULL);
    pthread_mutex_init(&in->claim_lock, NULL);
    pthread_cond_init(&in->claim_cond, NULL);
    pthread_mutex_init(&in->fin_lock, NULL);
    pthread_cond_init(&in->fin_cond, NULL);
    atomic_init(&in->tolerance_s, cfg_get_int(c, "ingest.signature_tolerance_s"));
    atomic_init(&in->max_batch, cfg_get_int(c, "ingest.max_batch"));
    atomic_init(&in->retry_after_s, cfg_get_int(c, "ingest.retry_after_s"));
    in->dedupe_ttl_s = cfg_get_int(c, "ingest.dedupe_ttl_s");
    in->pending_ttl_s = cfg_get_int(c, "ingest.pending_ttl_s");
    in->refresh_s = cfg_get_int(c, "ingest.sources_refresh_s");
    atomic_init(&in->ack_timeout_ms, cfg_get_int(c, "ingest.ack_timeout_ms"));

    int64_t mto = message_timeout_ms(svc);
    if (mto <= 0 || mto >= in->pending_ttl_s * 1000) {
        snprintf(errbuf, errsize,
                 "kafka.properties message.timeout.ms (%lld) must be below ingest.pending_ttl_s "
                 "(%lld s), or a retried webhook could be produced twice",
                 (long long)mto, (long long)in->pending_ttl_s);
        goto out_free;
    }
    in->keyring = keyring_from_env("SECRETS_KEY", errbuf, errsize);
    if (!in->keyring)
        goto out_free;
    /* The shared client's URL, with the tighter timeouts of the dedupe path. */
    in->dedupe_opts = *service_redis_options(svc);
    in->dedupe_opts.connect_timeout_ms = (int)cfg_get_int(c, "ingest.dedupe_timeout_ms");
    in->dedupe_opts.command_timeout_ms = in->dedupe_opts.connect_timeout_ms;
    in->dedupe_opts.backoff_max_ms = 2000;
    in->shared_redis = service_redis(svc);
    in->claim_redis = redis_new(&in->dedupe_opts, errbuf, errsize);
    if (!in->claim_redis)
        goto out_free;
    in->sources = source_cache_new(in->shared_redis, in->keyring,
                                   (int)cfg_get_int(c, "ingest.unknown_source_ttl_ms"));
    if (source_cache_refresh(in->sources) != 0)
        LOG_WARN("cannot load vendor sources from redis yet; they load on first use");
    in->next_refresh_ms = time_mono_ms() + in->refresh_s * 1000;

    struct metrics *m = service_metrics(svc);
    const char *src_outcome[] = {"source", "outcome"};
    const char *src_reason[] = {"source", "reason"};
    const char *src[] = {"source"};
    in->m_requests = metrics_counter(m, "webhook_requests_total",
                                     "Webhook requests by source and outcome", 2, src_outcome);
    in->m_events = metrics_counter(m, "webhook_events_accepted_total",
                                   "Events acknowledged by Kafka and answered 202", 1, src);
    in->m_rejected =
        metrics_counter(m, "webhook_rejected_total",
                        "Webhook requests refused, by source and reason", 2, src_reason);
    in->m_duplicates =
        metrics_counter(m, "webhook_duplicates_total",
                        "Webhooks answered as duplicates, not produced again", 1, src);
    in->m_produce = metrics_histogram(m, "webhook_produce_duration_seconds",
                                      "From the first produce to the last Kafka acknowledgement", 0,
                                      NULL, 0, NULL);
    in->m_degraded =
        metrics_counter(m, "webhook_redis_degraded_total",
                        "Dedupe operations skipped because Redis did not answer", 0, NULL);
    metrics_gauge_fn(m, "webhook_inflight_requests", "Requests waiting for Kafka acknowledgement",
                     inflight_value, in);

    if (pthread_create(&in->fin_thread, NULL, finalizer_main, in) != 0) {
        snprintf(errbuf, errsize, "cannot start the dedupe finalizer thread");
        goto out_free;
    }
    in->fin_started = true;
    if (pthread_create(&in->claim_thread, NULL, claim_main, in) != 0) {
        snprintf(errbuf, errsize, "cannot start the dedupe claim thread");
        goto out_free;
    }
    in->claim_started = true;
    if (start_watch(in, errbuf, errsize) != 0)
        goto out_free;
    health_add_check(service_health(svc), "sources", check_sources_followed, in);
    if (service_on_reload(svc, ingest_reload, in) != 0) {
        snprintf(errbuf, errsize, "cannot register the config reload callback");
        goto out_free;
    }
    return in;

out_free:
    ingest_stop(in);
    ingest_free(in);
    return NULL;
}

void ingest_tick(void *ud)
{
    struct ingest *in = ud;
    if (time_mono_ms() < in->next_refresh_ms)
        return;
    in->next_refresh_ms = time_mono_ms() + in->refresh_s * 1000;
    if (source_cache_refresh(in->sources) != 0)
        LOG_WARN("cannot refresh vendor sources from redis; using the cached ones");
}

void ingest_stop(void *ud)
{
    struct ingest *in = ud;
    follower_stop(in->watch);
    if (in->claim_started) {
        /* HTTP has drained, so nothing is queued; the flag ends the wait. */
        pthread_mutex_lock(&in->claim_lock);
        in->claim_stop = true;
        pthread_cond_signal(&in->claim_cond);
        pthread_mutex_unlock(&in->claim_lock);
        pthread_join(in->claim_thread, NULL);
        in->claim_started = false;
    }
    if (in->fin_started) {
        pthread_mutex_lock(&in->fin_lock);
        in->fin_stop = true;
        pthread_cond_signal(&in->fin_cond);
        pthread_mutex_unlock(&in->fin_lock);
        pthread_join(in->fin_thread, NULL);
        in->fin_started = false;
    }
}

void ingest_free(struct ingest *in)
{
    if (!in)
        return;
    follower_free(in->watch);
    redis_free(in->claim_redis);
    while (in->fin_head) {
        struct finalize_op *next = in->fin_head->next;
        free(in->fin_head);
        in->fin_head = next;
    }
    source_cache_free(in->sources);
    keyring_free(in->keyring);
    pthread_cond_destroy(&in->fin_cond);
    pthread_mutex_destroy(&in->fin_lock);
    pthread_cond_destroy(&in->claim_cond);
    pthread_mutex_destroy(&in->claim_lock);
    pthread_mutex_destroy(&in->list_lock);
    free(in);
}
