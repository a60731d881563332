/*
 * Webhook delivery as a vendor does it: registered endpoints with their
 * whsec_ secrets and event types, events cut into batches per endpoint, a
 * bounded queue, and sender threads that sign each delivery (Standard
 * Webhooks) and post it with libcommon's http_client, which retries 5xx, 429
 * and network errors with backoff, honouring Retry-After, with the same
 * headers and so the same webhook-id. Misbehaviour (duplicates, out-of-order,
 * bad signatures) is applied when a batch is queued.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "crypto.h"
#include "http_client.h"
#include "log.h"
#include "sim.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define KEY_MAX        64
#define DRAIN_MS       3000 /* how long shutdown keeps sending what is queued */
#define BATCH_BODY_MAX (16 * 1024 * 1024)

struct hook {
    char id[32];
    char *url;
    uint8_t key[KEY_MAX];
    size_t keylen;
    uint32_t mask;
};

struct job {
    struct job *next;
    char *url;
    uint8_t key[KEY_MAX];
    size_t keylen;
    char wid[48];
    char *body;
    size_t len;
    unsigned nevents;
    bool bad_sig;
};

struct deliver {
    const struct sim_options *o;
    struct sim_stats *st;
    struct http_client *http;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct hook hooks[SIM_MAX_WEBHOOKS];
    size_t nhooks;
    struct job *head, *tail;
    size_t qlen;
    struct job *held; /* out-of-order: sent after the next delivery */
    bool stop;
    int64_t drain_until;
    pthread_t *threads;
    unsigned nthreads;
};

static void job_free(struct job *j)
{
    if (!j)
        return;
    free(j->url);
    free(j->body);
    free(j);
}

static struct job *job_dup(const struct job *j)
{
    struct job *c = xmalloc(sizeof(*c));
    *c = *j;
    c->next = NULL;
    c->url = xstrdup(j->url);
    c->body = xstrndup(j->body, j->len);
    return c;
}

/* Called with mu held. */
static void enqueue_locked(struct deliver *d, struct job *j)
{
    if (d->qlen >= d->o->queue_max) {
        atomic_fetch_add_explicit(&d->st->dropped, 1, memory_order_relaxed);
        job_free(j);
        return;
    }
    j->next = NULL;
    if (d->tail)
        d->tail->next = j;
    else
        d->head = j;
    d->tail = j;
    d->qlen++;
    pthread_cond_signal(&d->cv);
}

static void queue_batch(struct deliver *d, struct job *j, const struct sim_misbehave *m)
{
    char uuid[CRYPTO_UUID_LEN];
    crypto_uuid_v7(uuid);
    snprintf(j->wid, sizeof(j->wid), "msg_%s", uuid);
    if (m->bad_signature > 0 && sim_rand() < m->bad_signature) {
        j->bad_sig = true;
        atomic_fetch_add_explicit(&d->st->bad_signatures, 1, memory_order_relaxed);
    }
    bool dup = m->duplicate_webhooks > 0 && sim_rand() < m->duplicate_webhooks;
    bool late = m->out_of_order > 0 && sim_rand() < m->out_of_order;
    pthread_mutex_lock(&d->mu);
    struct job *copy = dup ? job_dup(j) : NULL;
    if (late && !d->held) {
        d->held = j;
        atomic_fetch_add_explicit(&d->st->out_of_order, 1, memory_order_relaxed);
    } else {
        enqueue_locked(d, j);
        if (d->held) {
            enqueue_locked(d, d->held);
            d->held = NULL;
        }
    }
    if (copy) {
        enqueue_locked(d, copy);
        atomic_fetch_add_explicit(&d->st->duplicates_sent, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&d->mu);
}

void deliver_events(struct deliver *d, char **events, const uint8_t *types, size_t n,
                    const struct sim_misbehave *m)
{
    struct hook hooks[SIM_MAX_WEBHOOKS];
    pthread_mutex_lock(&d->mu);
    size_t nh = d->nhooks;
    for (size_t h = 0; h < nh; h++) {
        hooks[h] = d->hooks[h];
        hooks[h].url = xstrdup(d->hooks[h].url);
    }
    pthread_mutex_unlock(&d->mu);

    for (size_t i = 0; i < n; i++) {
        bool wanted = false;
        for (size_t h = 0; h < nh && !wanted; h++)
            wanted = hooks[h].mask & (1u << types[i]);
        if (!wanted)
            atomic_fetch_add_explicit(&d->st->events_unrouted, 1, memory_order_relaxed);
    }
    for (size_t h = 0; h < nh; h++) {
        struct buf body;
        buf_init(&body, BATCH_BODY_MAX);
        unsigned in_batch = 0;
        for (size_t i = 0; i <= n; i++) {
            bool take = i < n && (hooks[h].mask & (1u << types[i]));
            if (take) {
                buf_append_str(&body, in_batch ? "," : "[");
                buf_append_str(&body, events[i]);
                in_batch++;
            }
            if (in_batch == 0 || (i < n && in_batch < d->o->max_batch))
                continue;
            buf_append_str(&body, "]");
            struct job *j = xcalloc(1, sizeof(*j));
            j->url = xstrdup(hooks[h].url);
            memcpy(j->key, hooks[h].key, hooks[h].keylen);
            j->keylen = hooks[h].keylen;
            j->nevents = in_batch;
            if (in_batch == 1) { /* a lone event goes as an object, not a batch */
                j->body = xstrndup(body.data + 1, body.len - 2);
                j->len = body.len - 2;
            } else {
                j->body = buf_detach(&body, &j->len);
            }
            buf_reset(&body);
            in_batch = 0;
            queue_batch(d, j, m);
        }
        buf_release(&body);
        free(hooks[h].url);
    }
    for (size_t i = 0; i < n; i++)
        free(events[i]);
}

static bool stopping(struct deliver *d)
{
    pthread_mutex_lock(&d->mu);
    bool stop = d->stop;
    pthread_mutex_unlock(&d->mu);
    return stop;
}

static void send_one(struct deliver *d, struct job *j)
{
    char ts[24], sig[64], hdr_id[80], hdr_ts[48], hdr_sig[96];
    uint8_t key[KEY_MAX], mac[CRYPTO_SHA256_LEN];
    snprintf(ts, sizeof(ts), "%lld", (long long)(time_now_ms() / 1000));
    memcpy(key, j->key, j->keylen);
    if (j->bad_sig)
        key[0] ^= 0x5a;
    struct crypto_part parts[] = {
        {j->wid, strlen(j->wid)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {j->body, j->len}};
    crypto_hmac_sha256(key, j->keylen, parts, 5, mac);
    crypto_base64_encode(mac, sizeof(mac), sig, sizeof(sig));
    snprintf(hdr_id, sizeof(hdr_id), "webhook-id: %s", j->wid);
    snprintf(hdr_ts, sizeof(hdr_ts), "webhook-timestamp: %s", ts);
    snprintf(hdr_sig, sizeof(hdr_sig), "webhook-signature: v1,%s", sig);
    const char *headers[] = {hdr_id, hdr_ts, hdr_sig, NULL};
    struct http_client_request req = {.method = "POST",
                                      .url = j->url,
                                      .body = j->body,
                                      .len = j->len,
                                      .headers = headers,
                                      .max_retries = -1};
    struct http_client_response resp;
    int rc, attempts = 0;
    for (int round = 0;; round++) {
        rc = http_client_do(d->http, &req, &resp);
        attempts += resp.attempts;
        /* 409 with Retry-After: the receiver still handles an earlier attempt of this
         * webhook-id (webhook-ingest while Kafka has not answered it): send it again
         * later, like 5xx, within the same retry budget. */
        if (rc != 0 || resp.status != 409 || resp.retry_after_s < 0 || round >= d->o->max_retries ||
            stopping(d))
            break;
        int64_t wait_ms = resp.retry_after_s > 30 ? 30000 : (int64_t)resp.retry_after_s * 1000;
        http_client_response_release(&resp);
        time_sleep_ms(wait_ms > 0 ? wait_ms : 200);
    }
    resp.attempts = attempts;
    atomic_fetch_add_explicit(&d->st->deliveries, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->st->attempts, (uint_fast64_t)resp.attempts, memory_order_relaxed);
    if (rc != 0) {
        atomic_fetch_add_explicit(&d->st->failed, 1, memory_order_relaxed);
        LOG_WARN("%s: webhook delivery '%s' failed after %d attempts", http_client_strerror(rc),
                 j->wid, resp.attempts);
    } else {
        if (resp.status > 0 && resp.status < SIM_MAX_STATUS)
            atomic_fetch_add_explicit(&d->st->by_status[resp.status], 1, memory_order_relaxed);
        if (resp.status >= 200 && resp.status < 300) {
            atomic_fetch_add_explicit(&d->st->accepted, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&d->st->events_accepted, j->nevents, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&d->st->rejected, 1, memory_order_relaxed);
            LOG_WARN("webhook delivery '%s' refused with %ld after %d attempts", j->wid,
                     resp.status, resp.attempts);
        }
    }
    http_client_response_release(&resp);
}

static void *sender_main(void *arg)
{
    struct deliver *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->head && !d->stop)
            pthread_cond_wait(&d->cv, &d->mu);
        if (!d->head || (d->stop && time_mono_ms() > d->drain_until))
            break;
        struct job *j = d->head;
        d->head = j->next;
        if (!d->head)
            d->tail = NULL;
        d->qlen--;
        pthread_mutex_unlock(&d->mu);
        send_one(d, j);
        job_free(j);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- registrations ---- */
int deliver_add(struct deliver *d, const char *url, uint32_t types_mask, const char *secret,
                char *id_out, size_t idsize, char *secret_out, size_t secretsize)
{
    struct hook h = {.mask = types_mask};
    if (secret) {
        if (!str_has_prefix(secret, "whsec_") ||
            crypto_base64_decode(secret + 6, strlen(secret) - 6, h.key, sizeof(h.key), &h.keylen) !=
                0 ||
            h.keylen == 0)
            return -EINVAL;
        str_copy(secret_out, secret, secretsize);
    } else {
        char b64[48];
        h.keylen = 24;
        crypto_random_bytes(h.key, h.keylen);
        crypto_base64_encode(h.key, h.keylen, b64, sizeof(b64));
        snprintf(secret_out, secretsize, "whsec_%s", b64);
    }
    uint8_t rnd[6];
    char hex[16];
    crypto_random_bytes(rnd, sizeof(rnd));
    crypto_hex_encode(rnd, sizeof(rnd), hex, sizeof(hex));
    snprintf(h.id, sizeof(h.id), "wh_%s", hex);
    pthread_mutex_lock(&d->mu);
    if (d->nhooks == SIM_MAX_WEBHOOKS) {
        pthread_mutex_unlock(&d->mu);
        return -ENOSPC;
    }
    h.url = xstrdup(url);
    d->hooks[d->nhooks++] = h;
    pthread_mutex_unlock(&d->mu);
    str_copy(id_out, h.id, idsize);
    LOG_INFO("webhook '%s' registered", h.id);
    return 0;
}

int deliver_remove(struct deliver *d, const char *id)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->nhooks; i++) {
        if (strcmp(d->hooks[i].id, id) != 0)
            continue;
        free(d->hooks[i].url);
        d->hooks[i] = d->hooks[--d->nhooks];
        rc = 0;
        break;
    }
    pthread_mutex_unlock(&d->mu);
    if (rc == 0)
        LOG_INFO("webhook '%s' deleted", id);
    return rc;
}

size_t deliver_count(struct deliver *d)
{
    pthread_mutex_lock(&d->mu);
    size_t n = d->nhooks;
    pthread_mutex_unlock(&d->mu);
    return n;
}

size_t deliver_queue_len(struct deliver *d)
{
    pthread_mutex_lock(&d->mu);
    size_t n = d->qlen;
    pthread_mutex_unlock(&d->mu);
    return n;
}

struct deliver *deliver_new(const struct sim_options *opt, struct sim_stats *st)
{
    struct deliver *d = xcalloc(1, sizeof(*d));
    d->o = opt;
    d->st = st;
    struct http_client_options ho = {
        .connect_timeout_ms = 2000,
        .timeout_ms = opt->timeout_ms,
        .max_retries = opt->max_retries,
        .backoff_base_ms = 200,
        .backoff_max_ms = 5000,
        .retry_after_max_ms = 30000,
        .max_body = 64 * 1024,
        .breaker_min_requests = INT_MAX, /* a vendor keeps retrying; no breaker */
        .user_agent = "robot-sim/0.1",
    };
    d->http = http_client_new(&ho);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->threads = xcalloc(opt->senders, sizeof(*d->threads));
    for (unsigned i = 0; i < opt->senders; i++) {
        if (pthread_create(&d->threads[i], NULL, sender_main, d) != 0) {
            LOG_ERROR("cannot start sender thread %u", i);
            break;
        }
        d->nthreads++;
    }
    return d;
}

void deliver_free(struct deliver *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->mu);
    if (d->held) {
        enqueue_locked(d, d->held);
        d->held = NULL;
    }
    d->stop = true;
    d->drain_until = time_mono_ms() + DRAIN_MS;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (unsigned i = 0; i < d->nthreads; i++)
        pthread_join(d->threads[i], NULL);
    for (struct job *j = d->head, *next; j; j = next) {
        next = j->next;
        atomic_fetch_add_explicit(&d->st->dropped, 1, memory_order_relaxed);
        job_free(j);
    }
    for (size_t i = 0; i < d->nhooks; i++)
        free(d->hooks[i].url);
    http_client_free(d->http);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    free(d->threads);
    free(d);
}
