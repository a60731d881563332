/*
 * The watcher registry (see watch.h). One mutex guards the namespace table,
 * each namespace's list of watchers and the deadline heap; answers are built
 * and sent after the lock is dropped, by whoever removed the watcher from the
 * registry (notifier, timer or shutdown), so each is answered exactly once.
 */
#include "watch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "cloudevents.h"
#include "config_client.h"
#include "follower.h"
#include "http_server.h"
#include "json.h"
#include "kafka.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "service.h"
#include "store.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "xalloc.h"

#define WATCH_MAX_NS      16
#define MAX_NAMESPACES    256
#define MAX_TIMEOUT_S     60
#define REFRESH_EVERY_MS  5000
#define TIMER_MAX_WAIT_MS 250

struct slot;

struct watch_ent {
    struct slot *slot;
    int64_t known; /* the version the client has */
    int64_t now;   /* the version answered (filled when removed) */
    struct watcher *prev, *next;
};

struct watcher {
    struct http_request *req;
    int64_t deadline_ms;
    size_t heap_idx;
    struct watcher *done_next; /* answer chain once removed */
    size_t n;
    struct watch_ent ent[]; /* n of them: most watch one namespace, not WATCH_MAX_NS */
};

/* What a 200 says: the namespaces that moved and their versions, in the watcher's order. */
struct answer_key {
    size_t n;
    const struct slot *slot[WATCH_MAX_NS];
    int64_t now[WATCH_MAX_NS];
};

/* The body built for the last answer_key, reused while the next watcher has the same. */
struct shared_body {
    struct answer_key key;
    char *body;
    size_t len;
};

struct slot {
    char name[CONFIG_NS_MAX + 1];
    int64_t version;
    struct watcher *head; /* watchers of this namespace (through their ent) */
};

struct watch {
    struct service *svc;
    struct redis *redis;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct slot *slots[MAX_NAMESPACES];
    size_t nslots;
    struct watcher **heap;
    size_t nheap, heap_cap;
    struct watcher *changed; /* removed by a release, answered by the timer thread */
    bool stopping;

    pthread_t timer;
    bool timer_started;
    struct follower *follower;
    atomic_bool stop;
    int64_t next_refresh_ms;
    atomic_uint rnd;

    struct metric *m_watchers;
    struct metric *m_answers; /* {outcome} */
    struct metric_series *m_changed, *m_timeout;
};

/* ---- heap by deadline ---- */

static void heap_swap(struct watch *w, size_t a, size_t b)
{
    struct watcher *t = w->heap[a];
    w->heap[a] = w->heap[b];
    w->heap[b] = t;
    w->heap[a]->heap_idx = a;
    w->heap[b]->heap_idx = b;
}

static void heap_up(struct watch *w, size_t i)
{
    while (i > 0 && w->heap[(i - 1) / 2]->deadline_ms > w->heap[i]->deadline_ms) {
        heap_swap(w, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(struct watch *w, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < w->nheap && w->heap[l]->deadline_ms < w->heap[m]->deadline_ms)
            m = l;
        if (r < w->nheap && w->heap[r]->deadline_ms < w->heap[m]->deadline_ms)
            m = r;
        if (m == i)
            return;
        heap_swap(w, i, m);
        i = m;
    }
}

static void heap_push(struct watch *w, struct watcher *x)
{
    if (w->nheap == w->heap_cap) {
        w->heap_cap = w->heap_cap ? w->heap_cap * 2 : 1024;
        w->heap = xrealloc(w->heap, w->heap_cap * sizeof(*w->heap));
    }
    x->heap_idx = w->nheap;
    w->heap[w->nheap++] = x;
    heap_up(w, x->heap_idx);
}

static void heap_remove(struct watch *w, struct watcher *x)
{
    size_t i = x->heap_idx;
    w->nheap--;
    if (i != w->nheap) {
        w->heap[i] = w->heap[w->nheap];
        w->heap[i]->heap_idx = i;
        heap_up(w, i);
        heap_down(w, w->heap[i]->heap_idx);
    }
}

/* ---- registry (lock held) ---- */

static struct slot *slot_find(struct watch *w, const char *ns)
{
    for (size_t i = 0; i < w->nslots; i++)
        if (strcmp(w->slots[i]->name, ns) == 0)
            return w->slots[i];
    return NULL;
}

static struct slot *slot_add(struct watch *w, const char *ns, int64_t version)
{
    struct slot *s = slot_find(w, ns);
    if (s) {
        if (version > s->version)
            s->version = version;
        return s;
    }
    if (w->nslots == MAX_NAMESPACES)
        return NULL;
    s = xcalloc(1, sizeof(*s));
    str_copy(s->name, ns, sizeof(s->name));
    s->version = version;
    w->slots[w->nslots++] = s;
    return s;
}

/* Takes x out of every list and the heap, recording the versions it is answered with. */
static void unlink_watcher(struct watch *w, struct watcher *x)
{
    for (size_t i = 0; i < x->n; i++) {
        struct watch_ent *e = &x->ent[i];
        e->now = e->slot->version;
        /* the neighbours' entries for the same namespace point past x */
        struct watcher *p = e->prev, *nx = e->next;
        if (p) {
            for (size_t j = 0; j < p->n; j++)
                if (p->ent[j].slot == e->slot)
                    p->ent[j].next = nx;
        } else {
            e->slot->head = nx;
        }
        if (nx)
            for (size_t j = 0; j < nx->n; j++)
                if (nx->ent[j].slot == e->slot)
                    nx->ent[j].prev = p;
        e->prev = e->next = NULL;
    }
    heap_remove(w, x);
    metric_add(w->m_watchers, -1);
}

static void link_watcher(struct watch *w, struct watcher *x)
{
    for (size_t i = 0; i < x->n; i++) {
        struct watch_ent *e = &x->ent[i];
        struct watcher *h = e->slot->head;
        e->prev = NULL;
        e->next = h;
        if (h)
            for (size_t j = 0; j < h->n; j++)
                if (h->ent[j].slot == e->slot)
                    h->ent[j].prev = x;
        e->slot->head = x;
    }
    heap_push(w, x);
    metric_add(w->m_watchers, 1);
}

static bool any_newer(const struct watcher *x)
{
    for (size_t i = 0; i < x->n; i++)
        if (x->ent[i].slot->version > x->ent[i].known)
            return true;
    return false;
}

/* ---- answering (no lock) ---- */

static void answer_key_of(const struct watcher *x, struct answer_key *k)
{
    k->n = 0;
    for (size_t i = 0; i < x->n; i++) {
        const struct watch_ent *e = &x->ent[i];
        if (e->now <= e->known)
            continue;
        k->slot[k->n] = e->slot;
        k->now[k->n++] = e->now;
    }
}

static bool answer_key_equal(const struct answer_key *a, const struct answer_key *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (a->slot[i] != b->slot[i] || a->now[i] != b->now[i])
            return false;
    return true;
}

/* A copy of the 200 body for x (the caller owns it), built once per distinct answer_key. */
static char *answer_body(const struct watcher *x, struct shared_body *sb, size_t *len)
{
    struct answer_key k;
    answer_key_of(x, &k);
    if (!sb->body || !answer_key_equal(&k, &sb->key)) {
        struct buf b;
        buf_init(&b, 64 * 1024);
        buf_append_str(&b, "[");
        for (size_t i = 0; i < k.n; i++)
            buf_appendf(&b, "%s{\"namespace\":\"%s\",\"version\":%lld}", i ? "," : "",
                        k.slot[i]->name, (long long)k.now[i]);
        buf_append_str(&b, "]");
        free(sb->body);
        sb->body = buf_detach(&b, &sb->len);
        sb->key = k;
    }
    char *body = xmalloc(sb->len + 1);
    memcpy(body, sb->body, sb->len + 1);
    *len = sb->len;
    return body;
}

/*
 * Answers a chain of removed watchers. A release wakes every watcher of a
 * namespace with the same body: it is built once and copied.
 */
static void answer_chain(struct watch *w, struct watcher *chain, bool changed)
{
    struct shared_body sb = {.body = NULL};
    while (chain) {
        struct watcher *x = chain;
        chain = x->done_next;
        /*
         * The client polls again soon; closing costs one handshake per poll, while
         * keeping thousands of idle connections alive costs a reset memory pool each.
         */
        http_response_header(x->req, "Connection", "close");
        /* counted before answering: a client that got its answer sees it counted */
        metric_series_add(changed ? w->m_changed : w->m_timeout, 1);
        if (changed) {
            size_t len = 0;
            char *body = answer_body(x, &sb, &len);
            http_respond(x->req, 200, "application/json", body, len);
        } else {
            http_respond(x->req, 304, NULL, NULL, 0);
        }
        free(x);
    }
    free(sb.body);
}

static void answer(struct watch *w, struct watcher *x, bool changed)
{
    x->done_next = NULL;
    answer_chain(w, x, changed);
}

/*
 * The caller (a release handler or the Kafka follower) only unlinks; the
 * timer thread answers, so an HTTP worker is not busy answering thousands.
 */
void watch_notify(struct watch *w, const char *ns, int64_t version)
{
    pthread_mutex_lock(&w->lock);
    struct slot *s = slot_find(w, ns);
    if (s && version > s->version) {
        s->version = version;
        while (s->head) {
            struct watcher *x = s->head;
            unlink_watcher(w, x);
            x->done_next = w->changed;
            w->changed = x;
        }
        pthread_cond_signal(&w->cond);
    } else if (!s) {
        slot_add(w, ns, version);
    }
    pthread_mutex_unlock(&w->lock);
}

/* ---- the request ---- */

static unsigned jitter(struct watch *w, unsigned range)
{
    unsigned x = atomic_load(&w->rnd);
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    atomic_store(&w->rnd, x);
    return range ? x % range : 0;
}

/* Parses "a:3,b:7" into x (slots resolved later). 0 or -EINVAL with errbuf. */
static int parse_ns(const char *spec, char names[][CONFIG_NS_MAX + 1], int64_t *known, size_t *n,
                    char *errbuf, size_t errsize)
{
    *n = 0;
    const char *p = spec;
    while (*p) {
        size_t len = strcspn(p, ",");
        char item[CONFIG_NS_MAX + 32];
        if (len == 0 || len >= sizeof(item) || *n == WATCH_MAX_NS) {
            snprintf(errbuf, errsize, "expected up to %d items name[:version] separated by commas",
                     WATCH_MAX_NS);
            return -EINVAL;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        char *colon = strchr(item, ':');
        int64_t v = 0;
        if (colon) {
            *colon = '\0';
            if (str_to_int64(colon + 1, &v) != 0 || v < 0) {
                snprintf(errbuf, errsize, "version of '%.64s' is not a whole number >= 0", item);
                return -EINVAL;
            }
        }
        if (!config_ns_valid(item)) {
            snprintf(errbuf, errsize, "'%.64s' is not a namespace name", item);
            return -EINVAL;
        }
        str_copy(names[*n], item, CONFIG_NS_MAX + 1);
        known[(*n)++] = v;
        p += len;
        if (*p == ',')
            p++;
    }
    if (*n == 0) {
        snprintf(errbuf, errsize, "at least one namespace is required");
        return -EINVAL;
    }
    return 0;
}

void watch_handle(struct http_request *req, void *ud)
{
    struct watch *w = ud;
    char names[WATCH_MAX_NS][CONFIG_NS_MAX + 1], err[160] = "";
    int64_t known[WATCH_MAX_NS];
    size_t n = 0;
    const char *spec = http_request_query(req, "ns");
    if (!spec || parse_ns(spec, names, known, &n, err, sizeof(err)) != 0) {
        http_respond_problem(req, 400, "ns", "%s", spec ? err : "ns is required, e.g. ns=common:3");
        return;
    }
    int64_t timeout_s = MAX_TIMEOUT_S;
    const char *t = http_request_query(req, "timeout");
    if (t && (str_to_int64(t, &timeout_s) != 0 || timeout_s < 1 || timeout_s > MAX_TIMEOUT_S)) {
        http_respond_problem(req, 400, "timeout", "timeout must be 1..%d seconds", MAX_TIMEOUT_S);
        return;
    }
    /* Namespaces seen for the first time: their version comes from Redis. */
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&w->lock);
        bool have = slot_find(w, names[i]) != NULL;
        pthread_mutex_unlock(&w->lock);
        if (have)
            continue;
        int64_t v = store_current_version(w->redis, names[i]);
        if (v < 0) {
            http_respond_problem(req, 503, NULL, "configuration store unavailable");
            return;
        }
        pthread_mutex_lock(&w->lock);
        struct slot *s = slot_add(w, names[i], v);
        pthread_mutex_unlock(&w->lock);
        if (!s) {
            http_respond_problem(req, 400, "ns", "too many namespaces");
            return;
        }
    }
    struct watcher *x = xcalloc(1, sizeof(*x) + n * sizeof(x->ent[0]));
    x->req = req;
    x->n = n;
    int64_t span = timeout_s * 1000;
    x->deadline_ms = time_mono_ms() + span - jitter(w, (unsigned)(span / 10));
    http_request_suspend(req);
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < n; i++) {
        x->ent[i].slot = slot_find(w, names[i]);
        x->ent[i].known = known[i];
        x->ent[i].now = x->ent[i].slot->version;
    }
    bool now = any_newer(x) || w->stopping;
    if (!now) {
        link_watcher(w, x);
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    if (now)
        answer(w, x, any_newer(x));
}

/* ---- threads ---- */

static void *timer_main(void *arg)
{
    struct watch *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!atomic_load(&w->stop) || w->changed) {
        if (w->changed) {
            struct watcher *ready = w->changed;
            w->changed = NULL;
            pthread_mutex_unlock(&w->lock);
            answer_chain(w, ready, true);
            pthread_mutex_lock(&w->lock);
            continue;
        }
        struct watcher *chain = NULL;
        bool flush = lifecycle_stopping() || w->stopping;
        if (flush)
            w->stopping = true;
        int64_t now = time_mono_ms();
        while (w->nheap && (flush || w->heap[0]->deadline_ms <= now)) {
            struct watcher *x = w->heap[0];
            unlink_watcher(w, x);
            x->done_next = chain;
            chain = x;
        }
        if (chain) {
            pthread_mutex_unlock(&w->lock);
            answer_chain(w, chain, false);
            pthread_mutex_lock(&w->lock);
            continue;
        }
        int64_t wait = TIMER_MAX_WAIT_MS;
        if (w->nheap && w->heap[0]->deadline_ms - now < wait)
            wait = w->heap[0]->deadline_ms - now;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += wait / 1000;
        ts.tv_nsec += (wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void on_release(void *ud, const struct cloudevent *ev)
{
    struct watch *w = ud;
    int64_t version = 0;
    if (ev->subject && config_ns_valid(ev->subject) &&
        json_get_int(ev->data, "version", &version) == 0)
        watch_notify(w, ev->subject, version);
}

void watch_tick(struct watch *w)
{
    if (time_mono_ms() < w->next_refresh_ms)
        return;
    w->next_refresh_ms = time_mono_ms() + REFRESH_EVERY_MS;
    char names[MAX_NAMESPACES][CONFIG_NS_MAX + 1];
    size_t n = 0;
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < w->nslots; i++)
        str_copy(names[n++], w->slots[i]->name, CONFIG_NS_MAX + 1);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t v = store_current_version(w->redis, names[i]);
        if (v < 0)
            return;
        watch_notify(w, names[i], v);
    }
}

/* Every replica notifies its own watchers: a follower (a group of its own, from the end). */
static int start_follower(struct watch *w, char *errbuf, size_t errsize)
{
    struct follower_options o = {
        .bootstrap = cfg_get_str(service_cfg(w->svc), "kafka.bootstrap_servers"),
        .group_prefix = "config-center-watch",
        .topic = TOPIC_CONFIG_CHANGES,
        .on_event = on_release,
        .ud = w,
    };
    o.nprops = service_kafka_props(w->svc, &o.props);
    w->follower = follower_start(&o, errbuf, errsize);
    return w->follower ? 0 : -EINVAL;
}

struct watch *watch_new(struct service *svc, char *errbuf, size_t errsize)
{
    struct watch *w = xcalloc(1, sizeof(*w));
    w->svc = svc;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&w->rnd, (unsigned)time_now_ms() | 1u);
    w->redis = redis_new(service_redis_options(svc), errbuf, errsize);
    if (!w->redis)
        goto out_free;
    struct metrics *m = service_metrics(svc);
    const char *outcome[] = {"outcome"};
    w->m_watchers =
        metrics_gauge(m, "config_watchers", "Long-poll watch requests waiting", 0, NULL);
    w->m_answers = metrics_counter(m, "config_watch_answers_total",
                                   "Watch requests answered, by outcome", 1, outcome);
    const char *changed[] = {"changed"}, *timeout[] = {"timeout"};
    w->m_changed = metric_series(w->m_answers, changed);
    w->m_timeout = metric_series(w->m_answers, timeout);
    if (pthread_create(&w->timer, NULL, timer_main, w) != 0) {
        snprintf(errbuf, errsize, "cannot start the watch timer thread");
        goto out_free;
    }
    w->timer_started = true;
    if (start_follower(w, errbuf, errsize) != 0)
        goto out_free;
    return w;

out_free:
    watch_stop(w);
    watch_free(w);
    return NULL;
}

void watch_stop(struct watch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    follower_stop(w->follower);
    /* let the timer flush whoever still waits, then stop it */
    while (w->timer_started) {
        pthread_mutex_lock(&w->lock);
        bool empty = w->nheap == 0 && !w->changed;
        pthread_mutex_unlock(&w->lock);
        if (empty) {
            atomic_store(&w->stop, true);
            pthread_mutex_lock(&w->lock);
            pthread_cond_signal(&w->cond);
            pthread_mutex_unlock(&w->lock);
            pthread_join(w->timer, NULL);
            w->timer_started = false;
        } else {
            time_sleep_ms(20);
        }
    }
}

void watch_free(struct watch *w)
{
    if (!w)
        return;
    follower_free(w->follower);
    redis_free(w->redis);
    for (size_t i = 0; i < w->nslots; i++)
        free(w->slots[i]);
    free(w->heap);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
