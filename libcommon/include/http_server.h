/*
 * HTTP server on libmicrohttpd: epoll with an internal thread pool, a router with
 * path parameters ("/v1/robots/{id}"), body size cap (413), method check (405),
 * per-connection timeout, request ids (X-Request-ID, generated when absent),
 * problem+json errors, request metrics, and suspend/resume so a handler can
 * answer later from another thread without holding a thread.
 *
 * A handler is called once per request, after the whole body has arrived. It
 * answers by calling one of the http_respond* functions exactly once, either
 * before returning or later from any thread after calling http_request_suspend.
 * Request accessors (headers, query, params, body) are valid until the response
 * is given; copy what a later thread needs before suspending.
 */
#ifndef HTTP_SERVER_H
#define HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

struct http_server;
struct http_request;
struct metrics;

typedef void (*http_handler_fn)(struct http_request *req, void *ud);

struct http_server_options {
    const char *bind;         /* address to listen on; NULL = 0.0.0.0 */
    uint16_t port;            /* 0 = any free port (see http_server_port) */
    unsigned threads;         /* thread pool size; 0 = 2 */
    size_t max_body;          /* bytes; larger bodies get 413 */
    unsigned conn_timeout_s;  /* idle connection timeout; 0 = 30 */
    unsigned max_connections; /* 0 = 10000 */
    struct metrics *metrics;  /* optional: http_requests_total / http_request_duration_seconds */
};

/* NULL with errbuf filled on failure. */
struct http_server *http_server_new(const struct http_server_options *opt, char *errbuf,
                                    size_t errsize);
/* Registers a route before start. pattern segments "{name}" capture one path segment. */
int http_server_route(struct http_server *s, const char *method, const char *pattern,
                      http_handler_fn fn, void *ud);
/*
 * A check run before every handler (after routing, with the body read): return
 * true to let the handler run, or answer the request (http_respond*) and
 * return false. Set before start.
 */
typedef bool (*http_guard_fn)(struct http_request *req, void *ud);
int http_server_set_guard(struct http_server *s, http_guard_fn fn, void *ud);
int http_server_start(struct http_server *s, char *errbuf, size_t errsize);
/* The port actually bound (useful when options asked for 0). */
uint16_t http_server_port(const struct http_server *s);
/* Stops accepting new connections; requests already in flight continue. */
void http_server_quiesce(struct http_server *s);
/* Requests received whose response has not been sent yet. */
size_t http_server_inflight(const struct http_server *s);
/* Waits up to timeout_ms for in-flight requests to be answered; true when none remain. */
bool http_server_drain(struct http_server *s, int timeout_ms);
/* Stops the daemon and frees everything. NULL-safe. */
void http_server_free(struct http_server *s);

/* ---- request accessors ---- */
const char *http_request_method(const struct http_request *r);
const char *http_request_path(const struct http_request *r);
/* The route pattern that matched ("/v1/robots/{id}"), used as a metrics label. */
const char *http_request_route(const struct http_request *r);
const char *http_request_param(const struct http_request *r, const char *name);
const char *http_request_query(const struct http_request *r, const char *name);
const char *http_request_header(const struct http_request *r, const char *name);
/* The raw body bytes (NUL-terminated for convenience); *len gets the length. */
const char *http_request_body(const struct http_request *r, size_t *len);
const char *http_request_id(const struct http_request *r);
/* Attaches handler state freed (with free_fn) when the request completes. */
void http_request_set_data(struct http_request *r, void *data, void (*free_fn)(void *));
void *http_request_data(const struct http_request *r);

/* ---- responses ---- */
/* Adds a header to the response about to be given (before http_respond*). */
void http_response_header(struct http_request *r, const char *name, const char *value);
/* Takes ownership of body (malloc'd, may be NULL when len is 0). */
void http_respond(struct http_request *r, unsigned status, const char *content_type, char *body,
                  size_t len);
/* Serialises json (which stays the caller's) as application/json. */
void http_respond_json(struct http_request *r, unsigned status, const cJSON *json);
/*
 * RFC 9457 problem: {"type","title","status","detail"} plus "field" when field is
 * not NULL, as application/problem+json.
 */
void http_respond_problem(struct http_request *r, unsigned status, const char *field,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Keeps the connection open after the handler returns; answer later with http_respond*. */
void http_request_suspend(struct http_request *r);

/* Reason phrase for a status ("Not Found"). */
const char *http_status_title(unsigned status);

#endif
