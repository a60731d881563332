/*
 * HTTP server on libmicrohttpd (see http_server.h).
 *
 * One struct http_request per request, allocated on the first access-handler call
 * and released from MHD_OPTION_NOTIFY_COMPLETED. Responses are never queued from
 * the caller's thread: http_respond* builds the MHD_Response and stores it in the
 * request, and the access handler (always on an MHD worker thread) queues it,
 * either right after the handler returns or when MHD calls it again after
 * MHD_resume_connection. A per-request mutex guards the small state machine
 * HANDLING -> SUSPENDED -> RESPONDED (or CANCELLED at shutdown) so a response
 * given from another thread while the handler is still running is never lost and
 * a connection is resumed exactly once.
 *
 * A request is reference counted: MHD holds one reference until the request
 * completes, and a suspended request holds one more for whoever answers it, so an
 * answer arriving after the server was freed finds the request alive and cancelled.
 */
#include "http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/rand.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "str.h"
#include "xalloc.h"

#define DEFAULT_THREADS         2
#define DEFAULT_MAX_BODY        (1024u * 1024u)
#define DEFAULT_CONN_TIMEOUT_S  30
#define DEFAULT_MAX_CONNECTIONS 10000
#define MAX_SEGMENTS            16 /* path segments a route pattern may have */
#define MAX_PARAMS              8  /* "{name}" captures per pattern */
#define MAX_EXTRA_HEADERS       16
#define PATH_INLINE             256 /* paths up to this long need no allocation for params */
#define REQUEST_ID_MAX          128
#define PROBLEM_MAX             (64u * 1024u)
#define DETAIL_MAX              1024
#define ALLOW_MAX               128
#define DRAIN_POLL_MS           2
/*
 * Per-connection memory pool (request line, headers, read and write buffers).
 * MHD zeroes the whole pool before each request on a kept-alive connection,
 * so its default 32 KiB costs a 32 KiB memset per request; 16 KiB still takes
 * any sane header set (larger ones get 431) and bodies stream through it.
 */
#define CONN_MEMORY_LIMIT (16u * 1024u)

struct route_seg {
    const char *text; /* literal text, or the parameter name */
    size_t len;
    bool param;
};

struct route {
    char *method;
    char *pattern; /* as registered; the metrics label */
    char *segbuf;  /* pattern split in place; route_seg.text points here */
    struct route_seg segs[MAX_SEGMENTS];
    size_t nsegs;
    http_handler_fn fn;
    void *ud;
};

enum req_phase { PHASE_BODY, PHASE_DISPATCHED };

enum req_state {
    REQ_HANDLING,  /* no response yet, connection running */
    REQ_SUSPENDED, /* connection suspended, waiting for http_respond* */
    REQ_RESPONDED, /* a response is stored (or already queued) */
    REQ_CANCELLED, /* server shutting down: a late answer is dropped */
};

struct path_seg {
    size_t off;
    size_t len;
};

struct param {
    const char *name;
    const char *value;
};

struct extra_header {
    char *name;
    char *value;
};

struct http_server {
    struct MHD_Daemon *daemon;
    char bind[INET_ADDRSTRLEN];
    uint16_t port;
    unsigned threads;
    size_t max_body;
    unsigned conn_timeout_s;
    unsigned max_connections;
    struct route *routes;
    size_t nroutes;
    size_t routes_cap;
    atomic_bool quiesced; /* set by the stopping thread, read by the MHD workers */
    atomic_size_t inflight;
    struct metric *m_requests; /* NULL without opt->metrics */
    struct metric *m_duration;
    http_guard_fn guard; /* runs before every handler; NULL = none */
    void *guard_ud;

    /* Suspended requests, so free can resume them: MHD panics on stop otherwise. */
    pthread_mutex_t lock;
    struct http_request *suspended;
    bool stopping;
};

struct http_request {
    struct http_server *server;
    struct MHD_Connection *conn;
    const char *method; /* MHD's strings, valid until the request completes */
    const char *path;
    const struct route *route;
    enum req_phase phase;
    bool counted; /* included in server->inflight */
    bool linked;  /* on server->suspended (guarded by server->lock) */
    struct timespec started;

    struct buf body;
    bool body_too_big;

    struct param params[MAX_PARAMS];
    size_t nparams;
    char *pathcopy; /* param values point here: pathbuf or heap */
    char pathbuf[PATH_INLINE];

    /* copied: a late answer after shutdown must not read MHD's freed headers */
    char id[REQUEST_ID_MAX + 1];

    struct extra_header headers[MAX_EXTRA_HEADERS];
    size_t nheaders;

    void *data;
    void (*data_free)(void *);

    atomic_int refs;
    pthread_mutex_t lock; /* guards state, resp, status, suspend_ref */
    enum req_state state;
    bool suspend_ref; /* the answerer's reference is held */
    struct MHD_Response *resp;
    unsigned status;

    struct http_request *prev; /* server->suspended list */
    struct http_request *next;
};

const char *http_status_title(unsigned status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        break;
    }
    if (status >= 500)
        return "Server Error";
    if (status >= 400)
        return "Client Error";
    return "Unknown";
}

/* ---- routes ---- */

/* Splits "/a/{b}/c" in place into segments; -EINVAL for a malformed pattern. */
static int route_split(struct route *rt)
{
    char *p = rt->segbuf;
    size_t nparams = 0;
    rt->nsegs = 0;
    if (*p == '\0')
        return 0; /* "/" has no segments */
    for (;;) {
        char *slash = strchr(p, '/');
        if (slash)
            *slash = '\0';
        if (rt->nsegs == MAX_SEGMENTS)
            return -EINVAL;
        struct route_seg *seg = &rt->segs[rt->nsegs++];
        size_t len = strlen(p);
        if (len > 0 && p[0] == '{') {
            if (len < 3 || p[len - 1] != '}' || ++nparams > MAX_PARAMS)
                return -EINVAL;
            p[len - 1] = '\0';
            seg->text = p + 1;
            seg->len = len - 2;
            seg->param = true;
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len))
                return -EINVAL;
            seg->text = p;
            seg->len = len;
            seg->param = false;
        }
        if (!slash)
            return 0;
        p = slash + 1;
    }
}

static void route_release(struct route *rt)
{
    free(rt->method);
    free(rt->pattern);
    free(rt->segbuf);
}

int http_server_route(struct http_server *s, const char *method, const char *pattern,
                      http_handler_fn fn, void *ud)
{
    if (!s || !method || !*method || !pattern || pattern[0] != '/' || !fn)
        return -EINVAL;
    if (s->daemon)
        return -EBUSY;
    for (size_t i = 0; i < s->nroutes; i++) {
        if (strcmp(s->routes[i].method, method) == 0 && strcmp(s->routes[i].pattern, pattern) == 0)
            return -EEXIST;
    }
    struct route rt = {0};
    rt.method = xstrdup(method);
    rt.pattern = xstrdup(pattern);
    rt.segbuf = xstrdup(pattern + 1);
    rt.fn = fn;
    rt.ud = ud;
    int rc = route_split(&rt);
    if (rc < 0) {
        route_release(&rt);
        return rc;
    }
    if (s->nroutes == s->routes_cap) {
        s->routes_cap = s->routes_cap ? s->routes_cap * 2 : 8;
        s->routes = xrealloc(s->routes, s->routes_cap * sizeof(*s->routes));
    }
    s->routes[s->nroutes++] = rt;
    return 0;
}

/* Segments of a request path; false when it cannot match any pattern. */
static bool path_split(const char *path, struct path_seg *segs, size_t *nsegs)
{
    *nsegs = 0;
    if (path[0] != '/')
        return false;
    if (path[1] == '\0')
        return true;
    size_t off = 1;
    for (;;) {
        if (*nsegs == MAX_SEGMENTS)
            return false;
        const char *slash = strchr(path + off, '/');
        size_t len = slash ? (size_t)(slash - (path + off)) : strlen(path + off);
        segs[*nsegs].off = off;
        segs[*nsegs].len = len;
        (*nsegs)++;
        if (!slash)
            return true;
        off += len + 1;
    }
}

static bool route_matches(const struct route *rt, const char *path, const struct path_seg *segs,
                          size_t nsegs)
{
    if (rt->nsegs != nsegs)
        return false;
    for (size_t i = 0; i < nsegs; i++) {
        const struct route_seg *rs = &rt->segs[i];
        if (rs->param) {
            if (segs[i].len == 0)
                return false;
        } else if (rs->len != segs[i].len || memcmp(rs->text, path + segs[i].off, rs->len) != 0) {
            return false;
        }
    }
    return true;
}

/* Copies the path once and cuts it at the end of each captured segment. */
static void request_capture_params(struct http_request *r, const struct path_seg *segs)
{
    const struct route *rt = r->route;
    bool any = false;
    for (size_t i = 0; i < rt->nsegs; i++)
        any = any || rt->segs[i].param;
    if (!any)
        return;
    size_t len = strlen(r->path);
    r->pathcopy = len < sizeof(r->pathbuf) ? r->pathbuf : xmalloc(len + 1);
    memcpy(r->pathcopy, r->path, len + 1);
    for (size_t i = 0; i < rt->nsegs; i++) {
        if (!rt->segs[i].param)
            continue;
        r->pathcopy[segs[i].off + segs[i].len] = '\0';
        r->params[r->nparams].name = rt->segs[i].text;
        r->params[r->nparams].value = r->pathcopy + segs[i].off;
        r->nparams++;
    }
}

/* ---- responses ---- */

static char *problem_body(unsigned status, const char *field, const char *detail, size_t *len)
{
    struct buf b;
    buf_init(&b, PROBLEM_MAX);
    int rc = buf_appendf(&b, "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%u",
                         http_status_title(status), status);
    if (rc == 0 && detail) {
        rc = buf_append_str(&b, ",\"detail\":\"");
        rc = rc ? rc : buf_append_json_str(&b, detail);
        rc = rc ? rc : buf_append_str(&b, "\"");
    }
    if (rc == 0 && field) {
        rc = buf_append_str(&b, ",\"field\":\"");
        rc = rc ? rc : buf_append_json_str(&b, field);
        rc = rc ? rc : buf_append_str(&b, "\"");
    }
    rc = rc ? rc : buf_append_str(&b, "}");
    if (rc < 0) {
        /* only an absurdly long field can get here: answer without the extras */
        buf_reset(&b);
        buf_appendf(&b, "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%u}",
                    http_status_title(status), status);
    }
    return buf_detach(&b, len);
}

/*
 * Builds a response carrying X-Request-ID, Content-Type and (with_extra) the
 * headers from http_response_header. Takes body; NULL when MHD has no memory.
 */
static struct MHD_Response *response_build(const struct http_request *r, const char *content_type,
                                           char *body, size_t len, bool with_extra)
{
    struct MHD_Response *resp;
    if (body)
        resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    else
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return NULL;
    }
    bool ok = MHD_add_response_header(resp, "X-Request-ID", r->id) == MHD_YES;
    if (ok && content_type)
        ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES;
    for (size_t i = 0; ok && with_extra && i < r->nheaders; i++)
        ok = MHD_add_response_header(resp, r->headers[i].name, r->headers[i].value) == MHD_YES;
    if (!ok) {
        LOG_WARN("cannot add response header for request '%s'", r->id);
        MHD_destroy_response(resp);
        return NULL;
    }
    return resp;
}

static struct MHD_Response *problem_build(const struct http_request *r, unsigned status,
                                          const char *field, const char *detail)
{
    size_t len;
    char *body = problem_body(status, field, detail, &len);
    return response_build(r, "application/problem+json", body, len, false);
}

static void request_release(struct http_request *r);

/*
 * Stores a response given through http_respond*. Resumes the connection when it
 * is suspended; drops the answerer's reference. Runs on any thread.
 */
static void response_store(struct http_request *r, unsigned status, struct MHD_Response *resp)
{
    pthread_mutex_lock(&r->lock);
    enum req_state prev = r->state;
    bool drop_ref = r->suspend_ref;
    r->suspend_ref = false;
    if (prev == REQ_HANDLING || prev == REQ_SUSPENDED) {
        r->resp = resp;
        r->status = status;
        r->state = REQ_RESPONDED;
        resp = NULL;
        /*
         * Resume under the lock: http_server_free takes it before deciding whether
         * this connection still needs resuming, so it never stops the daemon between
         * our state change and the resume.
         */
        if (prev == REQ_SUSPENDED)
            MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&r->lock);
    if (resp) {
        if (prev == REQ_RESPONDED)
            LOG_ERROR("http response given twice for request '%s'", r->id);
        MHD_destroy_response(resp);
    }
    if (drop_ref)
        request_release(r);
}

void http_response_header(struct http_request *r, const char *name, const char *value)
{
    if (!name || !value)
        return;
    if (r->nheaders == MAX_EXTRA_HEADERS) {
        LOG_WARN("too many response headers for request '%s', dropping '%s'", r->id, name);
        return;
    }
    r->headers[r->nheaders].name = xstrdup(name);
    r->headers[r->nheaders].value = xstrdup(value);
    r->nheaders++;
}

void http_respond(struct http_request *r, unsigned status, const char *content_type, char *body,
                  size_t len)
{
    struct MHD_Response *resp = response_build(r, content_type, body, len, true);
    if (!resp) {
        LOG_ERROR("cannot build http response for request '%s'", r->id);
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        resp = response_build(r, NULL, NULL, 0, false);
        /* without even that the access handler closes the connection */
    }
    response_store(r, status, resp);
}

void http_respond_json(struct http_request *r, unsigned status, const cJSON *json)
{
    char *body = json ? cJSON_PrintUnformatted(json) : NULL;
    if (!body) {
        LOG_ERROR("cannot serialise json response for request '%s'", r->id);
        http_respond_problem(r, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "cannot serialise response");
        return;
    }
    http_respond(r, status, "application/json", body, strlen(body));
}

void http_respond_problem(struct http_request *r, unsigned status, const char *field,
                          const char *fmt, ...)
{
    char detail[DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    size_t len;
    char *body = problem_body(status, field, detail, &len);
    http_respond(r, status, "application/problem+json", body, len);
}

void http_request_suspend(struct http_request *r)
{
    pthread_mutex_lock(&r->lock);
    /* once answered there is nothing to wait for */
    if (r->state == REQ_HANDLING && !r->suspend_ref) {
        r->suspend_ref = true;
        atomic_fetch_add(&r->refs, 1);
    }
    pthread_mutex_unlock(&r->lock);
}

/* ---- request lifetime ---- */

static void request_id_init(struct http_request *r)
{
    const char *given = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-ID");
    if (given) {
        size_t n = 0;
        while (n <= REQUEST_ID_MAX && given[n] > 0x20 && given[n] < 0x7f)
            n++;
        if (n > 0 && n <= REQUEST_ID_MAX && given[n] == '\0') {
            memcpy(r->id, given, n + 1);
            return;
        }
    }
    /*
     * Ids only correlate logs, they are not secrets: a per-thread generator
     * seeded once from RAND_bytes spares every request OpenSSL's DRBG lock and
     * fork check (a getpid syscall).
     */
    static _Thread_local uint64_t state[2];
    static atomic_uint_fast64_t fallback;
    if (!state[0] && !state[1]) {
        if (RAND_bytes((unsigned char *)state, sizeof(state)) != 1) {
            state[0] = (uint64_t)time(NULL) ^ ((uint64_t)(uintptr_t)&state << 16);
            state[1] = atomic_fetch_add(&fallback, 1) + 1;
        }
    }
    unsigned char raw[16];
    for (size_t i = 0; i < 2; i++) {
        /* splitmix64 over a counter: distinct outputs for distinct counters */
        uint64_t z = (state[i] += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        memcpy(raw + 8 * i, &z, 8);
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        r->id[2 * i] = hex[raw[i] >> 4];
        r->id[2 * i + 1] = hex[raw[i] & 0x0f];
    }
    r->id[2 * sizeof(raw)] = '\0';
}

static struct http_request *request_new(struct http_server *s, struct MHD_Connection *conn,
                                        const char *method, const char *url)
{
    struct http_request *r = xcalloc(1, sizeof(*r));
    r->server = s;
    r->conn = conn;
    r->method = method;
    r->path = url;
    r->phase = PHASE_BODY;
    r->state = REQ_HANDLING;
    clock_gettime(CLOCK_MONOTONIC, &r->started);
    buf_init(&r->body, s->max_body);
    atomic_init(&r->refs, 1);
    pthread_mutex_init(&r->lock, NULL);
    request_id_init(r);
    return r;
}

static void request_release(struct http_request *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->resp)
        MHD_destroy_response(r->resp);
    if (r->data_free)
        r->data_free(r->data);
    buf_release(&r->body);
    if (r->pathcopy && r->pathcopy != r->pathbuf)
        free(r->pathcopy);
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static void inflight_done(struct http_request *r)
{
    if (r->counted) {
        r->counted = false;
        atomic_fetch_sub(&r->server->inflight, 1);
    }
}

/* Bounded label values: a client must not be able to mint new series. */
static const char *method_label(const char *method)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(method, known[i]) == 0)
            return known[i];
    }
    return "OTHER";
}

static void metrics_record(const struct http_request *r, unsigned status)
{
    const struct http_server *s = r->server;
    if (!s->m_requests)
        return;
    char code[12];
    snprintf(code, sizeof(code), "%u", status);
    const char *route = r->route ? r->route->pattern : "unmatched";
    const char *labels[] = {route, method_label(r->method), code};
    struct metric_series *ser = metric_series(s->m_requests, labels);
    if (ser)
        metric_series_add(ser, 1);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double secs =
        (double)(now.tv_sec - r->started.tv_sec) + (double)(now.tv_nsec - r->started.tv_nsec) / 1e9;
    const char *dlabels[] = {route};
    ser = metric_series(s->m_duration, dlabels);
    if (ser)
        metric_series_observe(ser, secs);
}

/* Queues the stored response; on an MHD worker thread. */
static enum MHD_Result response_queue(struct http_request *r)
{
    pthread_mutex_lock(&r->lock);
    struct MHD_Response *resp = r->resp;
    unsigned status = r->status;
    r->resp = NULL;
    pthread_mutex_unlock(&r->lock);
    inflight_done(r);
    if (!resp) {
        LOG_ERROR("no http response to send for request '%s', closing the connection", r->id);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    if (ret != MHD_YES)
        LOG_WARN("cannot queue http response %u for request '%s'", status, r->id);
    else
        metrics_record(r, status);
    return ret;
}

/* Stores a response the server itself produces, whatever the state. */
static enum MHD_Result respond_now(struct http_request *r, unsigned status,
                                   struct MHD_Response *resp)
{
    pthread_mutex_lock(&r->lock);
    if (r->resp)
        MHD_destroy_response(r->resp);
    r->resp = resp;
    r->status = status;
    if (r->state == REQ_HANDLING)
        r->state = REQ_RESPONDED;
    pthread_mutex_unlock(&r->lock);
    return response_queue(r);
}

static enum MHD_Result respond_problem_now(struct http_request *r, unsigned status,
                                           const char *detail)
{
    return respond_now(r, status, problem_build(r, status, NULL, detail));
}

static enum MHD_Result respond_not_allowed(struct http_request *r, const char *allow)
{
    struct MHD_Response *resp =
        problem_build(r, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, "method not allowed for this path");
    if (resp && MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES) {
        MHD_destroy_response(resp);
        resp = NULL;
    }
    return respond_now(r, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
}

/* After the handler returned: queue its answer, or suspend until it comes. */
static enum MHD_Result after_handler(struct http_request *r)
{
    struct http_server *s = r->server;
    pthread_mutex_lock(&s->lock);
    pthread_mutex_lock(&r->lock);
    if (r->state == REQ_HANDLING && r->suspend_ref) {
        if (!s->stopping) {
            r->state = REQ_SUSPENDED;
            MHD_suspend_connection(r->conn);
            r->linked = true;
            r->prev = NULL;
            r->next = s->suspended;
            if (s->suspended)
                s->suspended->prev = r;
            s->suspended = r;
            pthread_mutex_unlock(&r->lock);
            pthread_mutex_unlock(&s->lock);
            return MHD_YES;
        }
        r->state = REQ_CANCELLED;
    }
    enum req_state state = r->state;
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_unlock(&s->lock);

    if (state == REQ_CANCELLED)
        return respond_problem_now(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server shutting down");
    if (state == REQ_HANDLING) {
        LOG_ERROR("http handler for '%s %s' returned without responding or suspending", r->method,
                  r->route->pattern);
        return respond_problem_now(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "no response");
    }
    return response_queue(r);
}

/* True when a route before index i with the same method also matches the path. */
static bool method_listed(const struct http_server *s, size_t i, const char *path,
                          const struct path_seg *segs, size_t nsegs)
{
    for (size_t j = 0; j < i; j++) {
        if (strcmp(s->routes[j].method, s->routes[i].method) == 0 &&
            route_matches(&s->routes[j], path, segs, nsegs))
            return true;
    }
    return false;
}

/* Routes the complete request and runs its handler. */
static enum MHD_Result dispatch(struct http_request *r)
{
    const struct http_server *s = r->server;
    struct path_seg segs[MAX_SEGMENTS];
    size_t nsegs;
    const struct route *found = NULL;
    const struct route *head_get = NULL;
    bool path_known = false;
    bool split_ok = path_split(r->path, segs, &nsegs);
    for (size_t i = 0; split_ok && i < s->nroutes; i++) {
        const struct route *rt = &s->routes[i];
        if (!route_matches(rt, r->path, segs, nsegs))
            continue;
        path_known = true;
        if (strcmp(rt->method, r->method) == 0) {
            found = rt;
            break;
        }
        if (!head_get && strcmp(r->method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0)
            head_get = rt;
    }
    if (!found)
        found = head_get;
    if (!found && !path_known)
        return respond_problem_now(r, MHD_HTTP_NOT_FOUND, "no route for this path");
    if (!found) {
        struct buf allow;
        buf_init(&allow, ALLOW_MAX);
        bool has_get = false;
        bool has_head = false;
        for (size_t i = 0; i < s->nroutes; i++) {
            const struct route *rt = &s->routes[i];
            if (!route_matches(rt, r->path, segs, nsegs))
                continue;
            has_get = has_get || strcmp(rt->method, "GET") == 0;
            has_head = has_head || strcmp(rt->method, "HEAD") == 0;
            if (method_listed(s, i, r->path, segs, nsegs))
                continue; /* a method registered under two matching patterns */
            if (allow.len)
                buf_append_str(&allow, ", ");
            buf_append_str(&allow, rt->method);
        }
        if (has_get && !has_head)
            buf_append_str(&allow, ", HEAD");
        enum MHD_Result ret = respond_not_allowed(r, allow.data ? allow.data : "");
        buf_release(&allow);
        return ret;
    }
    r->route = found;
    request_capture_params(r, segs);
    if (!s->guard || s->guard(r, s->guard_ud))
        found->fn(r, found->ud);
    return after_handler(r);
}

static bool content_length_too_big(const struct http_request *r)
{
    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    int64_t n;
    if (!cl)
        return false;
    /* a malformed length is MHD's to reject; an overflow is certainly too big */
    int rc = str_to_int64(cl, &n);
    if (rc == -ERANGE)
        return true;
    return rc == 0 && n > 0 && (uint64_t)n > r->server->max_body;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    struct http_server *s = cls;
    struct http_request *r = *con_cls;
    (void)version;

    if (!r) {
        r = request_new(s, conn, method, url);
        *con_cls = r;
        r->counted = true;
        atomic_fetch_add(&s->inflight, 1);
        /* A keep-alive connection may start a request after the drain saw nothing in
         * flight: no handler may take work that the shutdown would not wait for. */
        if (atomic_load(&s->quiesced))
            return respond_problem_now(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server shutting down");
        if (content_length_too_big(r))
            return respond_problem_now(r, MHD_HTTP_CONTENT_TOO_LARGE,
                                       "request body larger than the limit");
        return MHD_YES;
    }
    if (r->phase == PHASE_BODY) {
        if (*upload_data_size) {
            /* past the cap the rest is read and dropped: MHD 0.9.75 cannot answer mid-body */
            if (!r->body_too_big && buf_append(&r->body, upload_data, *upload_data_size) < 0) {
                r->body_too_big = true;
                buf_release(&r->body);
            }
            *upload_data_size = 0;
            return MHD_YES;
        }
        r->phase = PHASE_DISPATCHED;
        if (r->body_too_big)
            return respond_problem_now(r, MHD_HTTP_CONTENT_TOO_LARGE,
                                       "request body larger than the limit");
        return dispatch(r);
    }
    /* called again after MHD_resume_connection */
    pthread_mutex_lock(&r->lock);
    bool cancelled = r->state == REQ_CANCELLED && !r->resp;
    pthread_mutex_unlock(&r->lock);
    if (cancelled)
        return respond_problem_now(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server shutting down");
    return response_queue(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_server *s = cls;
    struct http_request *r = *con_cls;
    (void)conn;
    if (!r)
        return;
    *con_cls = NULL;
    if (r->counted && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        LOG_DEBUG("http request '%s' ended without a response (code %d)", r->id, (int)toe);
    inflight_done(r);
    pthread_mutex_lock(&s->lock);
    if (r->linked) {
        if (r->prev)
            r->prev->next = r->next;
        else
            s->suspended = r->next;
        if (r->next)
            r->next->prev = r->prev;
        r->linked = false;
    }
    pthread_mutex_unlock(&s->lock);
    request_release(r);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    LOG_WARN("libmicrohttpd: %s", msg);
}

/* ---- server ---- */

struct http_server *http_server_new(const struct http_server_options *opt, char *errbuf,
                                    size_t errsize)
{
    static const struct http_server_options defaults = {0};
    if (!opt)
        opt = &defaults;
    const char *bind = opt->bind ? opt->bind : "0.0.0.0";
    struct in_addr addr;
    if (inet_pton(AF_INET, bind, &addr) != 1) {
        snprintf(errbuf, errsize, "invalid bind address '%s' (IPv4 expected)", bind);
        return NULL;
    }
    struct http_server *s = xcalloc(1, sizeof(*s));
    str_copy(s->bind, bind, sizeof(s->bind));
    s->port = opt->port;
    s->threads = opt->threads ? opt->threads : DEFAULT_THREADS;
    s->max_body = opt->max_body ? opt->max_body : DEFAULT_MAX_BODY;
    s->conn_timeout_s = opt->conn_timeout_s ? opt->conn_timeout_s : DEFAULT_CONN_TIMEOUT_S;
    s->max_connections = opt->max_connections ? opt->max_connections : DEFAULT_MAX_CONNECTIONS;
    atomic_init(&s->inflight, 0);
    atomic_init(&s->quiesced, false);
    pthread_mutex_init(&s->lock, NULL);
    if (opt->metrics) {
        static const char *const req_labels[] = {"route", "method", "code"};
        static const char *const dur_labels[] = {"route"};
        s->m_requests = metrics_counter(opt->metrics, "http_requests_total",
                                        "HTTP requests answered", 3, req_labels);
        s->m_duration = metrics_histogram(opt->metrics, "http_request_duration_seconds",
                                          "Time from request headers to queued response", 1,
                                          dur_labels, 0, NULL);
        if (!s->m_requests || !s->m_duration) {
            snprintf(errbuf, errsize, "cannot register http metrics");
            pthread_mutex_destroy(&s->lock);
            free(s);
            return NULL;
        }
    }
    return s;
}

int http_server_start(struct http_server *s, char *errbuf, size_t errsize)
{
    if (s->daemon) {
        snprintf(errbuf, errsize, "http server already started");
        return -EBUSY;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(s->port);
    inet_pton(AF_INET, s->bind, &sa.sin_addr);

    unsigned flags =
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    errno = 0;
    s->daemon = MHD_start_daemon(
        flags, s->port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_THREAD_POOL_SIZE, s->threads > 1 ? s->threads : 0u,
        MHD_OPTION_CONNECTION_TIMEOUT, s->conn_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        s->max_connections, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY_LIMIT,
        MHD_OPTION_END);
    if (!s->daemon) {
        int err = errno ? errno : EIO;
        snprintf(errbuf, errsize, "cannot start http server on %s:%u: %s", s->bind,
                 (unsigned)s->port, strerror(err));
        return -err;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (!info || info->port == 0) {
        snprintf(errbuf, errsize, "cannot read the bound http port");
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
        return -EIO;
    }
    s->port = info->port;
    LOG_INFO("http server listening on %s:%u", s->bind, (unsigned)s->port);
    return 0;
}

int http_server_set_guard(struct http_server *s, http_guard_fn fn, void *ud)
{
    if (s->daemon)
        return -EBUSY;
    s->guard = fn;
    s->guard_ud = ud;
    return 0;
}

uint16_t http_server_port(const struct http_server *s)
{
    return s->port;
}

void http_server_quiesce(struct http_server *s)
{
    if (!s || !s->daemon || atomic_load(&s->quiesced))
        return;
    atomic_store(&s->quiesced, true);
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

size_t http_server_inflight(const struct http_server *s)
{
    return atomic_load(&s->inflight);
}

bool http_server_drain(struct http_server *s, int timeout_ms)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (atomic_load(&s->inflight) == 0)
            return true;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t waited =
            (int64_t)(now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (waited >= timeout_ms)
            return false;
        struct timespec nap = {0, DRAIN_POLL_MS * 1000000L};
        nanosleep(&nap, NULL);
    }
}

/* Cancels and resumes every suspended request so MHD_stop_daemon can close them. */
static void cancel_suspended(struct http_server *s)
{
    struct MHD_Connection **conns = NULL;
    size_t n = 0;
    size_t cap = 0;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    for (struct http_request *r = s->suspended; r; r = r->next) {
        pthread_mutex_lock(&r->lock);
        if (r->state == REQ_SUSPENDED) {
            r->state = REQ_CANCELLED;
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                conns = xrealloc(conns, cap * sizeof(*conns));
            }
            conns[n++] = r->conn;
        }
        pthread_mutex_unlock(&r->lock);
    }
    pthread_mutex_unlock(&s->lock);
    if (n)
        LOG_WARN("http server stopping with %zu unanswered suspended requests", n);
    /* still suspended, and nobody else resumes a cancelled request */
    for (size_t i = 0; i < n; i++)
        MHD_resume_connection(conns[i]);
    free(conns);
}

void http_server_free(struct http_server *s)
{
    if (!s)
        return;
    if (s->daemon) {
        cancel_suspended(s);
        MHD_stop_daemon(s->daemon);
    }
    for (size_t i = 0; i < s->nroutes; i++)
        route_release(&s->routes[i]);
    free(s->routes);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- request accessors ---- */

const char *http_request_method(const struct http_request *r)
{
    return r->method;
}

const char *http_request_path(const struct http_request *r)
{
    return r->path;
}

const char *http_request_route(const struct http_request *r)
{
    return r->route ? r->route->pattern : "unmatched";
}

const char *http_request_param(const struct http_request *r, const char *name)
{
    for (size_t i = 0; i < r->nparams; i++) {
        if (strcmp(r->params[i].name, name) == 0)
            return r->params[i].value;
    }
    return NULL;
}

const char *http_request_query(const struct http_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_request_header(const struct http_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *http_request_body(const struct http_request *r, size_t *len)
{
    if (len)
        *len = r->body.len;
    return r->body.data ? r->body.data : "";
}

const char *http_request_id(const struct http_request *r)
{
    return r->id;
}

void http_request_set_data(struct http_request *r, void *data, void (*free_fn)(void *))
{
    r->data = data;
    r->data_free = free_fn;
}

void *http_request_data(const struct http_request *r)
{
    return r->data;
}
