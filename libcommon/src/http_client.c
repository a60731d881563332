/*
 * Outbound HTTP with retries and per-host circuit breakers (see http_client.h).
 * Curl easy handles are pooled per client: a handle keeps its connection cache
 * across curl_easy_reset, so a call that takes an idle handle reuses the
 * keep-alive connection its last call left open.
 */
#include "http_client.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "buf.h"
#include "crypto.h"
#include "log.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define HOST_MAX     256
#define MAX_HEADERS  16
#define AUTH_MAX     1024
#define MAX_BREAKERS 256

struct breaker {
    char host[HOST_MAX];
    enum http_breaker_state state;
    int64_t window_start_ms;
    int total, failures;
    int64_t open_until_ms;
    bool probing;
};

struct http_client {
    struct http_client_options o;
    char user_agent[128];
    pthread_mutex_t lock;
    struct breaker *breakers;
    size_t nbreakers;
    CURL **idle; /* handles not in use, their connections still open */
    size_t nidle, max_idle;
    uint64_t connects;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_global(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct http_client *http_client_new(const struct http_client_options *opt)
{
    pthread_once(&curl_once, curl_global);
    struct http_client *c = xcalloc(1, sizeof(*c));
    if (opt)
        c->o = *opt;
    struct http_client_options *o = &c->o;
    o->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 2000;
    o->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
    o->max_retries = o->max_retries > 0 ? o->max_retries : 0;
    o->backoff_base_ms = o->backoff_base_ms > 0 ? o->backoff_base_ms : 100;
    o->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 5000;
    o->retry_after_max_ms = o->retry_after_max_ms > 0 ? o->retry_after_max_ms : 30000;
    o->max_body = o->max_body > 0 ? o->max_body : 8u * 1024 * 1024;
    o->breaker_window_ms = o->breaker_window_ms > 0 ? o->breaker_window_ms : 30000;
    o->breaker_min_requests = o->breaker_min_requests > 0 ? o->breaker_min_requests : 10;
    o->breaker_error_ratio = o->breaker_error_ratio > 0 ? o->breaker_error_ratio : 0.5;
    o->breaker_open_ms = o->breaker_open_ms > 0 ? o->breaker_open_ms : 10000;
    str_copy(c->user_agent, o->user_agent ? o->user_agent : "robot-fleet/0.1",
             sizeof(c->user_agent));
    o->user_agent = NULL;
    c->max_idle = o->max_idle < 0 ? 0 : o->max_idle > 0 ? (size_t)o->max_idle : 64;
    c->idle = xcalloc(c->max_idle ? c->max_idle : 1, sizeof(*c->idle));
    pthread_mutex_init(&c->lock, NULL);
    c->breakers = xcalloc(MAX_BREAKERS, sizeof(*c->breakers));
    return c;
}

void http_client_free(struct http_client *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nidle; i++)
        curl_easy_cleanup(c->idle[i]);
    free(c->idle);
    pthread_mutex_destroy(&c->lock);
    free(c->breakers);
    free(c);
}

void http_client_response_release(struct http_client_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->len = 0;
}

const char *http_client_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case HTTP_CLIENT_ERR_NETWORK:
        return "network error";
    case HTTP_CLIENT_ERR_TIMEOUT:
        return "timed out";
    case HTTP_CLIENT_ERR_OPEN:
        return "circuit breaker open";
    case HTTP_CLIENT_ERR_TOOBIG:
        return "response body too large";
    case HTTP_CLIENT_ERR_INVALID:
        return "invalid request";
    default:
        return "unknown error";
    }
}

/* "scheme://host:port" of url, the breaker's key. */
static int host_key(const char *url, char *out, size_t size)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = -EINVAL;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
        goto out;
    snprintf(out, size, "%s://%s:%s", scheme, host, port);
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

/* The breaker of host, created on first use. Caller holds the lock. */
static struct breaker *breaker_get(struct http_client *c, const char *host)
{
    for (size_t i = 0; i < c->nbreakers; i++)
        if (strcmp(c->breakers[i].host, host) == 0)
            return &c->breakers[i];
    /* A full table recycles the oldest slot: a breaker is advice, not state to keep. */
    size_t i = c->nbreakers < MAX_BREAKERS ? c->nbreakers++ : 0;
    struct breaker *b = &c->breakers[i];
    memset(b, 0, sizeof(*b));
    str_copy(b->host, host, sizeof(b->host));
    b->window_start_ms = time_mono_ms();
    return b;
}

/* True when an attempt may go to host now (a half-open breaker lets one probe through). */
static bool breaker_allow(struct http_client *c, const char *host)
{
    pthread_mutex_lock(&c->lock);
    struct breaker *b = breaker_get(c, host);
    bool ok = true;
    int64_t now = time_mono_ms();
    if (b->state == HTTP_BREAKER_OPEN && now >= b->open_until_ms) {
        b->state = HTTP_BREAKER_HALF_OPEN;
        b->probing = false;
    }
    if (b->state == HTTP_BREAKER_OPEN)
        ok = false;
    else if (b->state == HTTP_BREAKER_HALF_OPEN)
        ok = !b->probing ? (b->probing = true) : false;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

static void breaker_record(struct http_client *c, const char *host, bool failed)
{
    pthread_mutex_lock(&c->lock);
    struct breaker *b = breaker_get(c, host);
    int64_t now = time_mono_ms();
    if (b->state == HTTP_BREAKER_HALF_OPEN) {
        b->probing = false;
        if (failed) {
            b->state = HTTP_BREAKER_OPEN;
            b->open_until_ms = now + c->o.breaker_open_ms;
            LOG_WARN("circuit breaker for '%s' open again after a failed probe", host);
        } else {
            b->state = HTTP_BREAKER_CLOSED;
            b->total = b->failures = 0;
            b->window_start_ms = now;
            LOG_INFO("circuit breaker for '%s' closed", host);
        }
    } else if (b->state == HTTP_BREAKER_CLOSED) {
        if (now - b->window_start_ms >= c->o.breaker_window_ms) {
            b->window_start_ms = now;
            b->total = b->failures = 0;
        }
        b->total++;
        b->failures += failed ? 1 : 0;
        if (b->total >= c->o.breaker_min_requests &&
            (double)b->failures / (double)b->total >= c->o.breaker_error_ratio) {
            b->state = HTTP_BREAKER_OPEN;
            b->open_until_ms = now + c->o.breaker_open_ms;
            LOG_WARN("circuit breaker for '%s' open: %d of %d attempts failed", host, b->failures,
                     b->total);
        }
    }
    pthread_mutex_unlock(&c->lock);
}

enum http_breaker_state http_client_breaker_state(struct http_client *c, const char *url)
{
    char host[HOST_MAX];
    if (host_key(url, host, sizeof(host)) != 0)
        return HTTP_BREAKER_CLOSED;
    pthread_mutex_lock(&c->lock);
    enum http_breaker_state st = HTTP_BREAKER_CLOSED;
    for (size_t i = 0; i < c->nbreakers; i++) {
        struct breaker *b = &c->breakers[i];
        if (strcmp(b->host, host) != 0)
            continue;
        st = b->state;
        if (st == HTTP_BREAKER_OPEN && time_mono_ms() >= b->open_until_ms)
            st = HTTP_BREAKER_HALF_OPEN;
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

uint64_t http_client_connects(struct http_client *c)
{
    pthread_mutex_lock(&c->lock);
    uint64_t n = c->connects;
    pthread_mutex_unlock(&c->lock);
    return n;
}

/* ---- the handle pool ---- */

/* An idle handle reset to defaults (its connection cache kept), or a new one; NULL when out of
 * memory. */
static CURL *handle_take(struct http_client *c)
{
    CURL *h = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->nidle > 0)
        h = c->idle[--c->nidle];
    pthread_mutex_unlock(&c->lock);
    if (h) {
        curl_easy_reset(h);
        return h;
    }
    return curl_easy_init();
}

/* Back to the pool after a call; connects = connections the call opened. */
static void handle_give(struct http_client *c, CURL *h, long connects, bool reusable)
{
    pthread_mutex_lock(&c->lock);
    c->connects += connects > 0 ? (uint64_t)connects : 0;
    if (reusable && c->nidle < c->max_idle) {
        c->idle[c->nidle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (h)
        curl_easy_cleanup(h);
}

/* ---- one attempt ---- */

struct attempt {
    struct buf body;
    int retry_after_s;
    bool toobig;
};

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    struct attempt *a = ud;
    if (buf_append(&a->body, data, size * n) != 0) {
        a->toobig = true;
        return 0;
    }
    return size * n;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    struct attempt *a = ud;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof(name) - 1 && len < 64 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        char val[64];
        size_t vlen = len - (sizeof(name) - 1);
        memcpy(val, data + sizeof(name) - 1, vlen);
        val[vlen] = '\0';
        char *p = val;
        while (*p == ' ' || *p == '\t')
            p++;
        p[strcspn(p, "\r\n ")] = '\0';
        int64_t secs;
        if (str_to_int64(p, &secs) == 0 && secs >= 0 && secs < 86400)
            a->retry_after_s = (int)secs;
    }
    return len;
}

/* One HTTP exchange. 0 with *status, or an HTTP_CLIENT_ERR_* value. */
static int attempt_once(struct http_client *c, const struct http_client_request *req,
                        struct attempt *a, long *status)
{
    CURL *h = handle_take(c);
    struct curl_slist *hdrs = NULL;
    char auth[AUTH_MAX];
    char ctype[160];
    int rc = 0;
    if (!h)
        return HTTP_CLIENT_ERR_NETWORK;
    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->o.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->o.timeout_ms);
    curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
    if (strcmp(req->method, "GET") == 0)
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    if (req->body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->len);
        snprintf(ctype, sizeof(ctype), "Content-Type: %s",
                 req->content_type ? req->content_type : "application/json");
        hdrs = curl_slist_append(hdrs, ctype);
    }
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (req->bearer_token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", req->bearer_token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    for (size_t i = 0; req->headers && req->headers[i] && i < MAX_HEADERS; i++)
        hdrs = curl_slist_append(hdrs, req->headers[i]);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);

    CURLcode cc = curl_easy_perform(h);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    } else if (a->toobig) {
        rc = HTTP_CLIENT_ERR_TOOBIG;
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
        rc = HTTP_CLIENT_ERR_TIMEOUT;
    } else if (cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL) {
        rc = HTTP_CLIENT_ERR_INVALID;
    } else {
        rc = HTTP_CLIENT_ERR_NETWORK;
    }
    if (rc && rc != HTTP_CLIENT_ERR_TOOBIG)
        LOG_DEBUG("http %s to '%s' failed: %s", req->method, req->url, curl_easy_strerror(cc));
    long connects = 0;
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects);
    memset(auth, 0, sizeof(auth));
    curl_slist_free_all(hdrs);
    /* the handle keeps the token only in its options, which the next take resets */
    handle_give(c, h, connects, rc == 0 || rc == HTTP_CLIENT_ERR_TOOBIG);
    return rc;
}

static bool retryable(int rc, long status)
{
    if (rc == HTTP_CLIENT_ERR_NETWORK || rc == HTTP_CLIENT_ERR_TIMEOUT)
        return true;
    return rc == 0 && (status >= 500 || status == 429);
}

/* Full jitter: a random wait in [0, min(max, base * 2^attempt)]. */
static int64_t backoff_ms(const struct http_client *c, int attempt)
{
    int64_t cap = c->o.backoff_base_ms;
    for (int i = 0; i < attempt && cap < c->o.backoff_max_ms; i++)
        cap *= 2;
    if (cap > c->o.backoff_max_ms)
        cap = c->o.backoff_max_ms;
    uint32_t r = 0;
    crypto_random_bytes(&r, sizeof(r));
    return (int64_t)(r % (uint32_t)(cap + 1));
}

int http_client_do(struct http_client *c, const struct http_client_request *req,
                   struct http_client_response *resp)
{
    char host[HOST_MAX];
    memset(resp, 0, sizeof(*resp));
    resp->retry_after_s = -1;
    if (!req->url || !req->method || host_key(req->url, host, sizeof(host)) != 0)
        return HTTP_CLIENT_ERR_INVALID;
    int retries = req->max_retries >= 0 ? req->max_retries : c->o.max_retries;
    int rc = HTTP_CLIENT_ERR_NETWORK;
    for (int attempt = 0; attempt <= retries; attempt++) {
        if (!breaker_allow(c, host))
            return resp->attempts ? rc : HTTP_CLIENT_ERR_OPEN;
        struct attempt a = {.retry_after_s = -1};
        long status = 0;
        buf_init(&a.body, c->o.max_body);
        rc = attempt_once(c, req, &a, &status);
        resp->attempts++;
        breaker_record(c, host,
                       rc == HTTP_CLIENT_ERR_NETWORK || rc == HTTP_CLIENT_ERR_TIMEOUT ||
                           (rc == 0 && status >= 500));
        free(resp->body);
        resp->body = buf_detach(&a.body, &resp->len);
        resp->status = rc == 0 ? status : 0;
        resp->retry_after_s = a.retry_after_s;
        if (!retryable(rc, status) || attempt == retries)
            break;
        int64_t wait = backoff_ms(c, attempt);
        if (a.retry_after_s >= 0) {
            int64_t ra = (int64_t)a.retry_after_s * 1000;
            if (ra > c->o.retry_after_max_ms)
                ra = c->o.retry_after_max_ms;
            if (ra > wait)
                wait = ra;
        }
        LOG_DEBUG("http %s to '%s': attempt %d failed (%s, status %ld), retrying in %lld ms",
                  req->method, host, attempt + 1, http_client_strerror(rc), status,
                  (long long)wait);
        time_sleep_ms(wait);
    }
    return rc;
}
