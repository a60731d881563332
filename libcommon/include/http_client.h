/*
 * Outbound HTTP on libcurl, for calls to the vendor platform: connect and total
 * timeouts per attempt, retries with exponential backoff and full jitter on
 * network errors, 5xx and 429 (honouring Retry-After up to a cap), no retry on
 * other 4xx, a cap on the response body, and a circuit breaker per host
 * (closed -> open when the error ratio over a time window passes a threshold ->
 * half-open after a pause, where one probe decides between closed and open).
 *
 * A struct http_client is thread-safe: each call takes a curl handle of its own
 * from the client's pool of idle handles and gives it back afterwards, so the
 * next call to the same host reuses its open keep-alive connection (no new TCP
 * or TLS handshake); the pool and the breakers are guarded by a mutex.
 */
#ifndef HTTP_CLIENT_H
#define HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Results of http_client_do besides 0 (an HTTP answer arrived, whatever its status). */
#define HTTP_CLIENT_ERR_NETWORK (-12001) /* connection refused, reset, DNS, ... */
#define HTTP_CLIENT_ERR_TIMEOUT (-12002) /* connect or total timeout of the last attempt */
#define HTTP_CLIENT_ERR_OPEN    (-12003) /* the host's circuit breaker is open: not called */
#define HTTP_CLIENT_ERR_TOOBIG  (-12004) /* the response body passed max_body */
#define HTTP_CLIENT_ERR_INVALID (-12005) /* a bad URL or request */

struct http_client;

struct http_client_options {
    int connect_timeout_ms; /* 0 = 2000 */
    int timeout_ms;         /* whole attempt; 0 = 10000 */
    int max_retries;        /* retries after the first attempt; negative = 0 */
    int backoff_base_ms;    /* first backoff; 0 = 100 */
    int backoff_max_ms;     /* longest backoff; 0 = 5000 */
    int retry_after_max_ms; /* longest Retry-After honoured; 0 = 30000 */
    size_t max_body;        /* response body cap in bytes; 0 = 8 MiB */
    /* circuit breaker */
    int breaker_window_ms;      /* error ratio measured over this window; 0 = 30000 */
    int breaker_min_requests;   /* fewer attempts in a window never open it; 0 = 10 */
    double breaker_error_ratio; /* failures / attempts that opens it; 0 = 0.5 */
    int breaker_open_ms;        /* pause before a half-open probe; 0 = 10000 */
    const char *user_agent;     /* NULL = "robot-fleet/0.1" */
    int max_idle;               /* idle handles (with their connections) kept; 0 = 64, <0 = none */
};

struct http_client_request {
    const char *method; /* "GET", "POST", "DELETE", ... */
    const char *url;
    const char *bearer_token;   /* Authorization: Bearer ..., or NULL */
    const char *content_type;   /* for a body; NULL = application/json */
    const char *body;           /* may be NULL */
    size_t len;                 /* body length */
    const char *const *headers; /* extra "Name: value" lines, NULL-terminated, or NULL */
    int max_retries;            /* -1 = the client's setting */
};

struct http_client_response {
    long status; /* HTTP status of the last attempt (0 when none answered) */
    char *body;  /* NUL-terminated, yours: http_client_response_release() */
    size_t len;
    int attempts;      /* how many attempts were made */
    int retry_after_s; /* the last answer's Retry-After in seconds, -1 if none */
};

enum http_breaker_state { HTTP_BREAKER_CLOSED, HTTP_BREAKER_OPEN, HTTP_BREAKER_HALF_OPEN };

/* Never NULL (allocation failure aborts). opt may be NULL for the defaults. */
struct http_client *http_client_new(const struct http_client_options *opt);
void http_client_free(struct http_client *c); /* NULL-safe */

/*
 * Performs the request with retries. 0 when an HTTP answer arrived (look at
 * resp->status: it may be a 4xx or, after the last retry, a 5xx); otherwise one
 * of the HTTP_CLIENT_ERR_* values. resp is always filled and must be released.
 * Never logs the token or the bodies.
 */
int http_client_do(struct http_client *c, const struct http_client_request *req,
                   struct http_client_response *resp);
void http_client_response_release(struct http_client_response *resp);

/* The breaker state for the host of url ("scheme://host:port"), CLOSED if never seen. */
enum http_breaker_state http_client_breaker_state(struct http_client *c, const char *url);
const char *http_client_strerror(int err);
/* How many TCP connections the client's calls have opened so far (reused ones not counted). */
uint64_t http_client_connects(struct http_client *c);

#endif
