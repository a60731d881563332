/*
 * Redis client on hiredis 0.14 (see redis.h). One blocking connection per
 * struct redis, guarded by a mutex. When the connection breaks, the context is
 * dropped and the next connect attempt waits for an exponential backoff, so a
 * dead Redis costs callers a quick NULL instead of a connect timeout each call.
 *
 * Reply size: the hiredis 0.14 reader has no cap on a reply's size (only
 * `maxbuf`, which bounds idle buffer space). We only talk to our own Redis and
 * only read keys we wrote ourselves, so reply sizes are bounded by what our
 * services store; callers must not GET/LRANGE unbounded data.
 */
#include "redis.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "log.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_MAX_VARARGS    64
#define REDIS_URL_MAX        2048

struct redis {
    pthread_mutex_t mu;
    char *host;
    int port;
    char *user;     /* NULL: AUTH with the password only */
    char *password; /* NULL: no AUTH */
    int db;
    int connect_timeout_ms;
    int command_timeout_ms;
    int backoff_max_ms;

    redisContext *ctx;       /* NULL while disconnected */
    int backoff_ms;          /* current wait between attempts, 0 after a success */
    int64_t next_attempt_ms; /* monotonic; no connect attempt before this */
    bool was_connected;      /* log a lost connection once, not every attempt */
    bool pipe_ignored;       /* SIGPIPE ignored when created: no guard needed */
    char last_error[256];
};

static _Thread_local char last_error_copy[256];

static void set_error(struct redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_error(struct redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->last_error, sizeof(r->last_error), fmt, ap);
    va_end(ap);
}

static struct timeval ms_to_timeval(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* ---- URL parsing ---------------------------------------------------------- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes %XX escapes so passwords may hold ':', '@' or '/'. NULL on a bad escape or %00. */
static char *percent_decode(const char *s, size_t len)
{
    char *out = xmalloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 1 < len ? hex_value(s[i + 1]) : -1;
        int lo = i + 2 < len ? hex_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[o] = '\0';
    return out;
}

static int parse_int_range(const char *s, size_t len, int64_t lo, int64_t hi, int *out)
{
    char *tmp = xstrndup(s, len);
    int64_t v;
    int rc = str_to_int64(tmp, &v);
    free(tmp);
    if (rc || v < lo || v > hi)
        return -EINVAL;
    *out = (int)v;
    return 0;
}

/* Fills r->host/port/user/password/db. The URL itself is never echoed: it may hold a password. */
static int parse_url(struct redis *r, const char *url, char *errbuf, size_t errsize)
{
    static const char scheme[] = "redis://";
    if (!url || strlen(url) > REDIS_URL_MAX) {
        snprintf(errbuf, errsize, "redis url: missing or longer than %d bytes", REDIS_URL_MAX);
        return -EINVAL;
    }
    if (strncasecmp(url, scheme, sizeof(scheme) - 1) != 0) {
        snprintf(errbuf, errsize, "redis url: scheme must be redis://");
        return -EINVAL;
    }
    const char *rest = url + sizeof(scheme) - 1;
    /* The path (db number) never holds '@', so the last '@' ends the userinfo. */
    const char *at = strrchr(rest, '@');
    const char *hostport = rest;
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        if (!colon) {
            snprintf(errbuf, errsize, "redis url: userinfo must be [user]:password");
            return -EINVAL;
        }
        if (colon > rest) {
            r->user = percent_decode(rest, (size_t)(colon - rest));
            if (!r->user) {
                snprintf(errbuf, errsize, "redis url: bad percent escape in user");
                return -EINVAL;
            }
        }
        r->password = percent_decode(colon + 1, (size_t)(at - colon - 1));
        if (!r->password || !r->password[0]) {
            snprintf(errbuf, errsize, "redis url: empty password or bad percent escape in it");
            return -EINVAL;
        }
        hostport = at + 1;
    }

    const char *slash = strchr(hostport, '/');
    const char *hp_end = slash ? slash : hostport + strlen(hostport);
    const char *host_end;
    const char *port_start = NULL;
    const char *host_start = hostport;
    if (*hostport == '[') { /* IPv6 literal */
        const char *close = memchr(hostport, ']', (size_t)(hp_end - hostport));
        if (!close) {
            snprintf(errbuf, errsize, "redis url: unterminated '[' in host");
            return -EINVAL;
        }
        host_start = hostport + 1;
        host_end = close;
        if (close + 1 < hp_end) {
            if (close[1] != ':') {
                snprintf(errbuf, errsize, "redis url: junk after ']' in host");
                return -EINVAL;
            }
            port_start = close + 2;
        }
    } else {
        const char *colon = memchr(hostport, ':', (size_t)(hp_end - hostport));
        host_end = colon ? colon : hp_end;
        if (colon)
            port_start = colon + 1;
    }
    if (host_end == host_start) {
        snprintf(errbuf, errsize, "redis url: empty host");
        return -EINVAL;
    }
    r->host = xstrndup(host_start, (size_t)(host_end - host_start));

    r->port = 6379;
    if (port_start &&
        parse_int_range(port_start, (size_t)(hp_end - port_start), 1, 65535, &r->port) != 0) {
        snprintf(errbuf, errsize, "redis url: port must be 1..65535");
        return -EINVAL;
    }

    r->db = 0;
    if (slash && slash[1] && parse_int_range(slash + 1, strlen(slash + 1), 0, INT_MAX, &r->db)) {
        snprintf(errbuf, errsize, "redis url: database must be a number >= 0");
        return -EINVAL;
    }
    return 0;
}

/* ---- connection ----------------------------------------------------------- */

/*
 * A write to a socket the peer closed raises SIGPIPE. Services ignore it
 * (lifecycle.c), but a library must not kill a process that did not, so the
 * calling thread blocks SIGPIPE around socket I/O and swallows one it caused.
 * In a process that ignores SIGPIPE the guard is skipped: it costs four system
 * calls per command.
 */
struct sigpipe_guard {
    sigset_t old_mask;
    bool was_pending;
    bool active;
};

static bool sigpipe_ignored(void)
{
    struct sigaction sa;
    return sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN;
}

static void sigpipe_block(struct sigpipe_guard *g, bool ignored)
{
    sigset_t pipe_set, pending;
    g->active = !ignored;
    if (ignored)
        return;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_set, &g->old_mask);
}

static void sigpipe_restore(const struct sigpipe_guard *g)
{
    sigset_t pipe_set, pending;
    if (!g->active)
        return;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) == -1 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &g->old_mask, NULL);
}

static void schedule_retry(struct redis *r)
{
    if (r->backoff_ms == 0)
        r->backoff_ms = REDIS_BACKOFF_MIN_MS;
    else if (r->backoff_ms < r->backoff_max_ms / 2)
        r->backoff_ms *= 2;
    else
        r->backoff_ms = r->backoff_max_ms;
    if (r->backoff_ms > r->backoff_max_ms)
        r->backoff_ms = r->backoff_max_ms;
    r->next_attempt_ms = time_mono_ms() + r->backoff_ms;
}

/* Drops a broken connection; the error was already recorded in last_error. */
static void drop_connection(struct redis *r)
{
    if (r->ctx) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
    if (r->was_connected) {
        LOG_WARN("redis connection to %s:%d lost: %s", r->host, r->port, r->last_error);
        r->was_connected = false;
    }
    schedule_retry(r);
}

/* Runs AUTH or SELECT on a fresh context; 0 or -1 with last_error set. */
static int setup_command(struct redis *r, redisContext *c, const char *what, int argc,
                         const char **argv)
{
    redisReply *reply = redisCommandArgv(c, argc, argv, NULL);
    if (!reply) {
        set_error(r, "%s: %s", what, c->errstr[0] ? c->errstr : "no reply");
        return -1;
    }
    int rc = 0;
    if (reply->type == REDIS_REPLY_ERROR) {
        set_error(r, "%s failed: %.*s", what, (int)reply->len, reply->str);
        rc = -1;
    }
    freeReplyObject(reply);
    return rc;
}

/* Opens, authenticates and selects the db. Called with the mutex held. */
static bool redis_connect(struct redis *r)
{
    redisContext *c =
        redisConnectWithTimeout(r->host, r->port, ms_to_timeval(r->connect_timeout_ms));
    if (!c) {
        set_error(r, "connect %s:%d: cannot allocate context", r->host, r->port);
        goto out_retry;
    }
    if (c->err) {
        set_error(r, "connect %s:%d: %s", r->host, r->port, c->errstr);
        goto out_free_ctx;
    }
    if (redisSetTimeout(c, ms_to_timeval(r->command_timeout_ms)) != REDIS_OK) {
        set_error(r, "connect %s:%d: cannot set timeout: %s", r->host, r->port, c->errstr);
        goto out_free_ctx;
    }
    if (r->password) {
        const char *auth_user[] = {"AUTH", r->user, r->password};
        const char *auth_pass[] = {"AUTH", r->password};
        int rc = r->user ? setup_command(r, c, "AUTH", 3, auth_user)
                         : setup_command(r, c, "AUTH", 2, auth_pass);
        if (rc)
            goto out_free_ctx;
    }
    if (r->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        const char *argv[] = {"SELECT", db};
        if (setup_command(r, c, "SELECT", 2, argv))
            goto out_free_ctx;
    }
    r->ctx = c;
    r->backoff_ms = 0;
    r->was_connected = true;
    LOG_INFO("redis connected to %s:%d db %d", r->host, r->port, r->db);
    return true;

out_free_ctx:
    redisFree(c);
out_retry:
    LOG_DEBUG("redis connect failed: %s", r->last_error);
    schedule_retry(r);
    return false;
}

/* True when r->ctx is usable; reconnects once the backoff passed. Mutex held. */
static bool ensure_connected(struct redis *r)
{
    if (r->ctx)
        return true;
    if (time_mono_ms() < r->next_attempt_ms)
        return false;
    return redis_connect(r);
}

/* ---- public API ----------------------------------------------------------- */

struct redis *redis_new(const struct redis_options *opt, char *errbuf, size_t errsize)
{
    struct redis *r = xcalloc(1, sizeof(*r));
    if (parse_url(r, opt->url, errbuf, errsize) != 0)
        goto out_free;
    r->connect_timeout_ms = opt->connect_timeout_ms > 0 ? opt->connect_timeout_ms : 1000;
    r->command_timeout_ms = opt->command_timeout_ms > 0 ? opt->command_timeout_ms : 2000;
    r->backoff_max_ms = opt->backoff_max_ms > 0 ? opt->backoff_max_ms : 5000;
    if (r->backoff_max_ms < REDIS_BACKOFF_MIN_MS)
        r->backoff_max_ms = REDIS_BACKOFF_MIN_MS;
    pthread_mutex_init(&r->mu, NULL);
    r->pipe_ignored = sigpipe_ignored();

    struct sigpipe_guard g;
    sigpipe_block(&g, r->pipe_ignored);
    if (!redis_connect(r))
        LOG_WARN("redis not reachable yet, will retry: %s", r->last_error);
    sigpipe_restore(&g);
    return r;

out_free:
    free(r->host);
    free(r->user);
    free(r->password);
    free(r);
    return NULL;
}

void redis_free(struct redis *r)
{
    if (!r)
        return;
    if (r->ctx)
        redisFree(r->ctx);
    pthread_mutex_destroy(&r->mu);
    free(r->host);
    free(r->user);
    free(r->password);
    free(r);
}

redisReply *redis_command(struct redis *r, int argc, const char **argv, const size_t *argvlen)
{
    redisReply *reply = NULL;
    pthread_mutex_lock(&r->mu);
    if (argc < 1 || !argv) {
        set_error(r, "redis command without arguments");
        goto out_unlock;
    }
    struct sigpipe_guard g;
    sigpipe_block(&g, r->pipe_ignored);
    if (ensure_connected(r)) {
        reply = redisCommandArgv(r->ctx, argc, argv, argvlen);
        if (!reply) {
            set_error(r, "%s: %s", argv[0], r->ctx->errstr[0] ? r->ctx->errstr : "no reply");
            drop_connection(r);
        }
    }
    sigpipe_restore(&g);
out_unlock:
    pthread_mutex_unlock(&r->mu);
    return reply;
}

redisReply *redis_cmd(struct redis *r, const char *arg0, ...)
{
    const char *argv[REDIS_MAX_VARARGS];
    int argc = 0;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a; a = va_arg(ap, const char *)) {
        if (argc == REDIS_MAX_VARARGS) {
            va_end(ap);
            pthread_mutex_lock(&r->mu);
            set_error(r, "redis_cmd: more than %d arguments", REDIS_MAX_VARARGS);
            pthread_mutex_unlock(&r->mu);
            return NULL;
        }
        argv[argc++] = a;
    }
    va_end(ap);
    return redis_command(r, argc, argv, NULL);
}

/*
 * On -EIO every replies[i] is NULL: after a broken round trip the caller cannot
 * tell which commands ran, so partial answers would only invite wrong guesses.
 * A command without arguments is a programming error: -EINVAL, nothing sent.
 */
int redis_pipeline(struct redis *r, size_t ncmds, const struct redis_cmd *cmds,
                   redisReply **replies)
{
    for (size_t i = 0; i < ncmds; i++)
        replies[i] = NULL;
    for (size_t i = 0; i < ncmds; i++) {
        if (cmds[i].argc < 1 || !cmds[i].argv)
            return -EINVAL;
    }
    if (ncmds == 0)
        return 0;

    int rc = -EIO;
    pthread_mutex_lock(&r->mu);
    struct sigpipe_guard g;
    sigpipe_block(&g, r->pipe_ignored);
    if (!ensure_connected(r))
        goto out_unlock;
    for (size_t i = 0; i < ncmds; i++) {
        if (redisAppendCommandArgv(r->ctx, cmds[i].argc, cmds[i].argv, cmds[i].argvlen) !=
            REDIS_OK) {
            set_error(r, "pipeline: cannot queue command: %s", r->ctx->errstr);
            goto out_drop;
        }
    }
    for (size_t i = 0; i < ncmds; i++) {
        void *reply = NULL;
        if (redisGetReply(r->ctx, &reply) != REDIS_OK || !reply) {
            set_error(r, "pipeline: %s", r->ctx->errstr[0] ? r->ctx->errstr : "no reply");
            goto out_drop;
        }
        replies[i] = reply;
    }
    rc = 0;
    goto out_unlock;

out_drop:
    /* Queued but unsent commands and unread replies live in the context: drop it whole. */
    drop_connection(r);
    for (size_t i = 0; i < ncmds; i++) {
        if (replies[i]) {
            freeReplyObject(replies[i]);
            replies[i] = NULL;
        }
    }
out_unlock:
    sigpipe_restore(&g);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

bool redis_ping(struct redis *r)
{
    redisReply *reply = redis_cmd(r, "PING", (char *)NULL);
    if (!reply)
        return false;
    bool ok = reply->type == REDIS_REPLY_STATUS && reply->str && strcmp(reply->str, "PONG") == 0;
    if (!ok && reply->type == REDIS_REPLY_ERROR) {
        pthread_mutex_lock(&r->mu);
        set_error(r, "PING: %.*s", (int)reply->len, reply->str);
        pthread_mutex_unlock(&r->mu);
    }
    freeReplyObject(reply);
    return ok;
}

/* Copied per thread under the mutex so another thread's failure cannot tear the text. */
const char *redis_last_error(struct redis *r)
{
    pthread_mutex_lock(&r->mu);
    str_copy(last_error_copy, r->last_error, sizeof(last_error_copy));
    pthread_mutex_unlock(&r->mu);
    return last_error_copy;
}
