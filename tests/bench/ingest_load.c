/*
 * ingest-load: a closed-loop load generator for webhook-ingest's
 * POST /v1/webhooks/{source}. N keep-alive HTTP/1.1 connections on one epoll
 * loop each send one signed Standard Webhooks request, wait for the whole
 * response and send the next, so the rate measured is what the service
 * sustains at that concurrency. libcurl costs more per request than the
 * service itself, hence raw non-blocking sockets and a small response parser.
 *
 * Only 127.0.0.1 is a valid target: this tool exists to load our own service.
 * Latencies go into a fixed log-linear histogram (no per-request allocation).
 * Prints a table and one JSON summary line; exits 1 when fewer than 99% of
 * the responses were 202, 2 on usage errors or when the server is unreachable.
 * Its own CPU use over the measured window is reported too, so a run where
 * the generator starved the service on a small machine shows as such.
 *
 *   ingest-load --port P --source ID --secret whsec_... [--connections 64]
 *               [--duration 15] [--warmup 3] [--body-size 1024] [--robots 10000]
 *               [--max-requests N]
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define MAX_CONNECTIONS  4096
#define MAX_BODY_SIZE    (256 * 1024)
#define MAX_SOURCE_LEN   128
#define MAX_KEY_LEN      256
#define REQ_HEADROOM     1024 /* request line and headers besides the body */
#define RESP_BUF_SIZE    (64 * 1024)
#define MAX_STATUS       600
#define CONNECT_FAIL_MAX 200 /* consecutive failed connects before giving up */

/*
 * Histogram: values below 64 µs get a bucket each; above, every power of two
 * is split into 32 buckets, so a bucket is at most ~3% wide. 40 octaves reach
 * far beyond any latency a closed loop can produce.
 */
#define HIST_LINEAR  64
#define HIST_SUB     32
#define HIST_OCTAVES 40
#define HIST_BUCKETS (HIST_LINEAR + HIST_OCTAVES * HIST_SUB)

struct histogram {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max_us;
};

enum conn_state { CONN_CONNECTING, CONN_IDLE, CONN_WRITING, CONN_READING };

struct conn {
    int fd;
    enum conn_state state;
    bool measured;       /* the request in flight was sent after warm-up */
    uint64_t started_ns; /* when the request in flight was sent */
    char *out;           /* request bytes */
    size_t out_len, out_off;
    char *in; /* response bytes (RESP_BUF_SIZE) */
    size_t in_len;
};

struct options {
    int port;
    const char *source;
    const char *secret;
    int connections;
    double duration_s;
    double warmup_s;
    size_t body_size;
    unsigned robots;
    uint64_t max_requests;
};

struct run {
    struct options opt;
    uint8_t key[MAX_KEY_LEN];
    size_t keylen;
    char prefix[40]; /* makes webhook ids unique across runs */
    uint64_t counter;
    struct sockaddr_in addr;
    int epfd;
    struct conn *conns;
    char *body; /* scratch for the JSON body of the request being built */
    /* the timestamp strings change once a second */
    int64_t stamp_s;
    char ts[24];
    char occurred_at[40];
    /* results of the measured window */
    struct histogram hist;
    uint64_t status_counts[MAX_STATUS];
    uint64_t responses;
    uint64_t errors;
    uint64_t connect_failures; /* consecutive */
    bool measuring;
    bool unreachable;
    /* our own CPU over the measured window: on a small machine the load
     * generator competes with the service, so its share is reported */
    struct rusage ru_start, ru_end;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t hist_index(uint64_t v)
{
    if (v < HIST_LINEAR)
        return (size_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= 6 */
    unsigned octave = msb - 6u;
    if (octave >= HIST_OCTAVES)
        return HIST_BUCKETS - 1;
    unsigned shift = msb - 5u; /* keeps the top 6 bits: 32..63 */
    return HIST_LINEAR + (size_t)octave * HIST_SUB + (size_t)((v >> shift) - HIST_SUB);
}

/* The middle of bucket i, in µs. */
static double hist_value(size_t i)
{
    if (i < HIST_LINEAR)
        return (double)i;
    size_t octave = (i - HIST_LINEAR) / HIST_SUB;
    size_t sub = (i - HIST_LINEAR) % HIST_SUB;
    unsigned shift = (unsigned)octave + 1u;
    double low = (double)((uint64_t)(HIST_SUB + sub) << shift);
    return low + (double)((uint64_t)1 << shift) / 2.0;
}

static void hist_record(struct histogram *h, uint64_t us)
{
    h->counts[hist_index(us)]++;
    h->total++;
    if (us > h->max_us)
        h->max_us = us;
}

/* The p-quantile (0 < p <= 1) in milliseconds; never above the exact maximum. */
static double hist_quantile_ms(const struct histogram *h, double p)
{
    if (h->total == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(p * (double)h->total + 0.999999);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = hist_value(i);
            if (v > (double)h->max_us)
                v = (double)h->max_us;
            return v / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ingest-load --port PORT --source ID --secret SECRET [--host 127.0.0.1]\n"
               "       [--connections 64] [--duration 15] [--warmup 3] [--body-size 1024]\n"
               "       [--robots 10000] [--max-requests N]\n"
               "SECRET is whsec_<base64> or raw text; INGEST_LOAD_SECRET may hold it instead.\n");
}

static int parse_int(const char *name, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (str_to_int64(s, out) != 0 || *out < lo || *out > hi) {
        fprintf(stderr, "ingest-load: --%s must be an integer in %lld..%lld\n", name, (long long)lo,
                (long long)hi);
        return -EINVAL;
    }
    return 0;
}

static int parse_seconds(const char *name, const char *s, double lo, double *out)
{
    if (str_to_double(s, out) != 0 || *out < lo || *out > 86400.0) {
        fprintf(stderr, "ingest-load: --%s must be a number of seconds >= %g\n", name, lo);
        return -EINVAL;
    }
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"source", required_argument, NULL, 's'},
        {"secret", required_argument, NULL, 'k'},
        {"connections", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"body-size", required_argument, NULL, 'b'},
        {"robots", required_argument, NULL, 'r'},
        {"max-requests", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int64_t v;
    int c;

    *o = (struct options){.connections = 64,
                          .duration_s = 15.0,
                          .warmup_s = 3.0,
                          .body_size = 1024,
                          .robots = 10000,
                          .secret = getenv("INGEST_LOAD_SECRET")};
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'H':
            /* Loading anything but our own loopback service is not this tool's job. */
            if (strcmp(optarg, "127.0.0.1") != 0 && strcmp(optarg, "localhost") != 0) {
                fprintf(stderr, "ingest-load: refusing host '%s': only 127.0.0.1 is allowed\n",
                        optarg);
                return -EINVAL;
            }
            break;
        case 'p':
            if (parse_int("port", optarg, 1, 65535, &v))
                return -EINVAL;
            o->port = (int)v;
            break;
        case 's':
            o->source = optarg;
            break;
        case 'k':
            o->secret = optarg;
            break;
        case 'c':
            if (parse_int("connections", optarg, 1, MAX_CONNECTIONS, &v))
                return -EINVAL;
            o->connections = (int)v;
            break;
        case 'd':
            if (parse_seconds("duration", optarg, 0.1, &o->duration_s))
                return -EINVAL;
            break;
        case 'w':
            if (parse_seconds("warmup", optarg, 0.0, &o->warmup_s))
                return -EINVAL;
            break;
        case 'b':
            if (parse_int("body-size", optarg, 0, MAX_BODY_SIZE, &v))
                return -EINVAL;
            o->body_size = (size_t)v;
            break;
        case 'r':
            if (parse_int("robots", optarg, 1, 100000000, &v))
                return -EINVAL;
            o->robots = (unsigned)v;
            break;
        case 'n':
            if (parse_int("max-requests", optarg, 1, INT64_MAX, &v))
                return -EINVAL;
            o->max_requests = (uint64_t)v;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -EINVAL;
        }
    }
    if (optind < argc || !o->port || !o->source || !o->secret) {
        usage(stderr);
        return -EINVAL;
    }
    size_t n = strlen(o->source);
    if (n == 0 || n > MAX_SOURCE_LEN ||
        strspn(o->source, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          "0123456789-_.") != n) {
        fprintf(stderr, "ingest-load: --source must be 1-%d characters of [A-Za-z0-9._-]\n",
                MAX_SOURCE_LEN);
        return -EINVAL;
    }
    return 0;
}

/* The HMAC key as Standard Webhooks defines it: base64 after "whsec_", else the raw bytes. */
static int load_key(struct run *r)
{
    const char *s = r->opt.secret;
    if (str_has_prefix(s, "whsec_")) {
        s += strlen("whsec_");
        if (crypto_base64_decode(s, strlen(s), r->key, sizeof(r->key), &r->keylen) != 0) {
            fprintf(stderr, "ingest-load: the secret after whsec_ is not valid base64\n");
            return -EINVAL;
        }
        return 0;
    }
    r->keylen = strlen(s);
    if (r->keylen == 0 || r->keylen > sizeof(r->key)) {
        fprintf(stderr, "ingest-load: the secret must be 1-%zu bytes\n", sizeof(r->key));
        return -EINVAL;
    }
    memcpy(r->key, s, r->keylen);
    return 0;
}

static void refresh_stamps(struct run *r)
{
    int64_t ms = time_now_ms();
    if (ms / 1000 == r->stamp_s)
        return;
    r->stamp_s = ms / 1000;
    snprintf(r->ts, sizeof(r->ts), "%lld", (long long)r->stamp_s);
    if (time_format_rfc3339(r->stamp_s * 1000, r->occurred_at, sizeof(r->occurred_at)) != 0)
        str_copy(r->occurred_at, "2026-01-01T00:00:00Z", sizeof(r->occurred_at));
}

/* Builds the next signed request into c->out. */
static int build_request(struct run *r, struct conn *c)
{
    char wid[64];
    char sig[64];
    uint8_t mac[CRYPTO_SHA256_LEN];
    uint64_t n = r->counter++;
    size_t cap = r->opt.body_size + REQ_HEADROOM;

    refresh_stamps(r);
    snprintf(wid, sizeof(wid), "%s-%llu", r->prefix, (unsigned long long)n);
    int blen = snprintf(r->body, cap,
                        "{\"type\":\"robot.heartbeat\",\"robot_id\":\"bench-r-%06u\","
                        "\"occurred_at\":\"%s\",\"id\":\"ev-%s\",\"data\":{\"battery\":0.5,"
                        "\"pad\":\"",
                        (unsigned)(n % r->opt.robots), r->occurred_at, wid);
    if (blen < 0 || (size_t)blen + 4 >= cap)
        return -E2BIG;
    /* pad so the whole body is body_size bytes; the closing takes 4 */
    size_t pad = r->opt.body_size > (size_t)blen + 4 ? r->opt.body_size - (size_t)blen - 4 : 0;
    memset(r->body + blen, 'x', pad);
    memcpy(r->body + (size_t)blen + pad, "\"}}", 4); /* with the NUL */
    size_t body_len = (size_t)blen + pad + 3;

    struct crypto_part parts[] = {
        {wid, strlen(wid)}, {".", 1}, {r->ts, strlen(r->ts)}, {".", 1}, {r->body, body_len},
    };
    if (crypto_hmac_sha256(r->key, r->keylen, parts, sizeof(parts) / sizeof(parts[0]), mac) != 0)
        return -EIO;
    if (crypto_base64_encode(mac, sizeof(mac), sig, sizeof(sig)) < 0)
        return -E2BIG;

    int hlen = snprintf(c->out, cap,
                        "POST /v1/webhooks/%s HTTP/1.1\r\n"
                        "Host: 127.0.0.1:%d\r\n"
                        "Content-Type: application/json\r\n"
                        "Content-Length: %zu\r\n"
                        "webhook-id: %s\r\n"
                        "webhook-timestamp: %s\r\n"
                        "webhook-signature: v1,%s\r\n"
                        "\r\n",
                        r->opt.source, r->opt.port, body_len, wid, r->ts, sig);
    if (hlen < 0 || (size_t)hlen + body_len > cap)
        return -E2BIG;
    memcpy(c->out + hlen, r->body, body_len);
    c->out_len = (size_t)hlen + body_len;
    c->out_off = 0;
    return 0;
}

static int conn_watch(struct run *r, struct conn *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(r->epfd, op, c->fd, &ev) == 0 ? 0 : -errno;
}

static void conn_close(struct run *r, struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->in_len = 0;
    c->state = CONN_IDLE;
}

static int conn_open(struct run *r, struct conn *c)
{
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -errno;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->in_len = 0;
    if (connect(c->fd, (struct sockaddr *)&r->addr, sizeof(r->addr)) != 0 && errno != EINPROGRESS) {
        int err = -errno;
        close(c->fd);
        c->fd = -1;
        return err;
    }
    /* a loopback connect may finish at once; EPOLLOUT tells either way */
    c->state = CONN_CONNECTING;
    int rc = conn_watch(r, c, EPOLL_CTL_ADD, EPOLLOUT);
    if (rc) {
        close(c->fd);
        c->fd = -1;
    }
    return rc;
}

static void count_error(struct run *r)
{
    if (r->measuring)
        r->errors++;
}

/* Writes what is left of the request; arms EPOLLOUT only when the socket is full. */
static int conn_flush(struct run *r, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (c->state != CONN_WRITING) {
                c->state = CONN_WRITING;
                return conn_watch(r, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
            }
            return 0;
        }
        return -EPIPE;
    }
    if (c->state == CONN_WRITING) {
        c->state = CONN_READING;
        return conn_watch(r, c, EPOLL_CTL_MOD, EPOLLIN);
    }
    c->state = CONN_READING;
    return 0;
}

static int conn_send_next(struct run *r, struct conn *c)
{
    int rc = build_request(r, c);
    if (rc)
        return rc;
    c->started_ns = now_ns();
    c->measured = r->measuring;
    return conn_flush(r, c);
}

/* Case-insensitive search for a header line's value; NULL when absent. */
static const char *header_value(const char *head, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = memchr(head, '\n', len); /* skip the status line */
    const char *end = head + len;
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

static bool value_has_token(const char *v, size_t vlen, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i + tlen <= vlen; i++)
        if (strncasecmp(v + i, token, tlen) == 0)
            return true;
    return false;
}

/*
 * The length of a complete chunked body starting at p, 0 while incomplete,
 * -1 when malformed. Bodies here are small, so rescanning on each read is fine.
 */
static long chunked_length(const char *p, size_t len)
{
    size_t off = 0;
    for (;;) {
        const char *eol = memchr(p + off, '\n', len - off);
        if (!eol)
            return 0;
        size_t size = 0;
        const char *q = p + off;
        int digits = 0;
        for (; q < eol; q++, digits++) {
            int d;
            if (*q >= '0' && *q <= '9')
                d = *q - '0';
            else if (*q >= 'a' && *q <= 'f')
                d = *q - 'a' + 10;
            else if (*q >= 'A' && *q <= 'F')
                d = *q - 'A' + 10;
            else
                break;
            if (digits >= 8)
                return -1;
            size = size * 16 + (size_t)d;
        }
        if (digits == 0)
            return -1;
        off = (size_t)(eol - p) + 1;
        if (size == 0) {
            /* trailers end with an empty line */
            for (;;) {
                const char *tl = memchr(p + off, '\n', len - off);
                if (!tl)
                    return 0;
                size_t linelen = (size_t)(tl - (p + off));
                off = (size_t)(tl - p) + 1;
                if (linelen == 0 || (linelen == 1 && tl[-1] == '\r'))
                    return (long)off;
            }
        }
        if (len - off < size + 2)
            return 0;
        off += size + 2;
    }
}

/*
 * Parses c->in: 1 with status, total and keep_alive set when a whole response
 * is there, 0 when more bytes are needed, -1 when it is not HTTP/1.x.
 */
static int parse_response(const struct conn *c, int *status, size_t *total, bool *keep_alive)
{
    const char *buf = c->in;
    size_t len = c->in_len;
    if (len < 12)
        return 0;
    if (memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') || buf[8] != ' ')
        return -1;
    const char *hend = memmem(buf, len, "\r\n\r\n", 4);
    if (!hend)
        return len >= RESP_BUF_SIZE ? -1 : 0;
    size_t head_len = (size_t)(hend - buf) + 4;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        st = st * 10 + (buf[i] - '0');
    }
    if (st < 100)
        return -1;

    size_t vlen;
    const char *v = header_value(buf, head_len, "Connection", &vlen);
    bool ka = buf[7] == '1';
    if (v && value_has_token(v, vlen, "close"))
        ka = false;
    else if (v && value_has_token(v, vlen, "keep-alive"))
        ka = true;

    size_t body = 0;
    if (st == 204 || st == 304 || st < 200) {
        body = 0;
    } else if ((v = header_value(buf, head_len, "Transfer-Encoding", &vlen)) &&
               value_has_token(v, vlen, "chunked")) {
        long n = chunked_length(buf + head_len, len - head_len);
        if (n < 0)
            return -1;
        if (n == 0)
            return len >= RESP_BUF_SIZE ? -1 : 0;
        body = (size_t)n;
    } else if ((v = header_value(buf, head_len, "Content-Length", &vlen))) {
        char num[24];
        int64_t cl;
        if (vlen == 0 || vlen >= sizeof(num))
            return -1;
        memcpy(num, v, vlen);
        num[vlen] = '\0';
        if (str_to_int64(num, &cl) != 0 || cl < 0 || (uint64_t)cl > RESP_BUF_SIZE - head_len)
            return -1;
        body = (size_t)cl;
    } else {
        /* delimited by close: this loop never needs such a body, so count it and reconnect */
        *status = st;
        *total = len;
        *keep_alive = false;
        return 1;
    }
    if (len < head_len + body)
        return 0;
    *status = st;
    *total = head_len + body;
    *keep_alive = ka;
    return 1;
}

static void record_response(struct run *r, const struct conn *c, int status)
{
    if (!c->measured || !r->measuring)
        return;
    uint64_t us = (now_ns() - c->started_ns) / 1000u;
    hist_record(&r->hist, us);
    r->responses++;
    r->status_counts[status < MAX_STATUS ? status : 0]++;
}

/* Reads what is there; on a whole response records it and sends the next request. */
static int conn_read(struct run *r, struct conn *c)
{
    for (;;) {
        if (c->in_len >= RESP_BUF_SIZE)
            return -EMSGSIZE;
        ssize_t n = read(c->fd, c->in + c->in_len, RESP_BUF_SIZE - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return -ECONNRESET;
        c->in_len += (size_t)n;
        if (c->state != CONN_READING && c->state != CONN_WRITING)
            return -EPROTO; /* bytes nobody asked for */

        int status;
        size_t total;
        bool keep_alive;
        int pr = parse_response(c, &status, &total, &keep_alive);
        if (pr < 0)
            return -EPROTO;
        if (pr == 0)
            continue;
        if (c->in_len != total)
            return -EPROTO; /* no pipelining here: extra bytes mean a confused peer */
        record_response(r, c, status);
        c->in_len = 0;
        if (c->state == CONN_WRITING)
            return -EPROTO; /* answered before the request was fully sent */
        c->state = CONN_IDLE;
        if (!keep_alive)
            return -ECONNABORTED; /* the caller reconnects; not an error */
        return 0;
    }
}

/* Handles one epoll event for c; on failure the connection is reopened. */
static void conn_event(struct run *r, struct conn *c, uint32_t events)
{
    int rc = 0;
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0 ||
            (events & (EPOLLERR | EPOLLHUP))) {
            conn_close(r, c);
            if (++r->connect_failures >= CONNECT_FAIL_MAX)
                r->unreachable = true;
            count_error(r);
            return;
        }
        r->connect_failures = 0;
        c->state = CONN_IDLE;
        rc = conn_watch(r, c, EPOLL_CTL_MOD, EPOLLIN);
    } else {
        if ((events & EPOLLOUT) && c->state == CONN_WRITING)
            rc = conn_flush(r, c);
        if (rc == 0 && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
            rc = conn_read(r, c);
    }
    if (rc == -ECONNABORTED) {
        conn_close(r, c);
        return;
    }
    if (rc) {
        count_error(r);
        conn_close(r, c);
        return;
    }
    if (c->state == CONN_IDLE) {
        rc = conn_send_next(r, c);
        if (rc) {
            count_error(r);
            conn_close(r, c);
        }
    }
}

/* Blocking probe so an absent server is one clear error, not a stream of retries. */
static int probe(const struct run *r)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = connect(fd, (const struct sockaddr *)&r->addr, sizeof(r->addr)) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Runs warm-up and the measured window; *measured_ns is the window's length. */
static int run_loop(struct run *r, uint64_t *measured_ns)
{
    struct epoll_event events[256];
    uint64_t t0 = now_ns();
    uint64_t measure_at = t0 + (uint64_t)(r->opt.warmup_s * 1e9);
    uint64_t end_at = measure_at + (uint64_t)(r->opt.duration_s * 1e9);
    *measured_ns = 0;
    r->measuring = r->opt.warmup_s <= 0.0;
    getrusage(RUSAGE_SELF, &r->ru_start);
    for (int i = 0; i < r->opt.connections; i++) {
        int rc = conn_open(r, &r->conns[i]);
        if (rc) {
            fprintf(stderr, "ingest-load: cannot connect: %s\n", strerror(-rc));
            return rc;
        }
    }
    while (!stop_requested && !r->unreachable) {
        uint64_t now = now_ns();
        if (!r->measuring && now >= measure_at) {
            r->measuring = true;
            getrusage(RUSAGE_SELF, &r->ru_start);
            measure_at = now;
            end_at = now + (uint64_t)(r->opt.duration_s * 1e9);
        }
        if (now >= end_at ||
            (r->measuring && r->opt.max_requests && r->responses >= r->opt.max_requests)) {
            *measured_ns = now - measure_at;
            break;
        }
        int n = epoll_wait(r->epfd, events, (int)(sizeof(events) / sizeof(events[0])), 100);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "ingest-load: epoll_wait: %s\n", strerror(errno));
            return -errno;
        }
        for (int i = 0; i < n; i++)
            conn_event(r, events[i].data.ptr, events[i].events);
        /* reopen what failed or was closed by the server */
        for (int i = 0; i < r->opt.connections; i++) {
            if (r->conns[i].fd < 0 && !r->unreachable) {
                if (conn_open(r, &r->conns[i]) != 0 && ++r->connect_failures >= CONNECT_FAIL_MAX)
                    r->unreachable = true;
            }
        }
    }
    if (!*measured_ns && r->measuring)
        *measured_ns = now_ns() - measure_at; /* interrupted */
    getrusage(RUSAGE_SELF, &r->ru_end);
    for (int i = 0; i < r->opt.connections; i++)
        conn_close(r, &r->conns[i]);
    if (r->unreachable) {
        fprintf(stderr, "ingest-load: server at 127.0.0.1:%d became unreachable\n", r->opt.port);
        return -ECONNREFUSED;
    }
    return 0;
}

static double tv_secs(struct timeval a, struct timeval b)
{
    return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_usec - a.tv_usec) / 1e6;
}

static void report(const struct run *r, double secs)
{
    double user = tv_secs(r->ru_start.ru_utime, r->ru_end.ru_utime);
    double sys = tv_secs(r->ru_start.ru_stime, r->ru_end.ru_stime);
    double cpu_pct = secs > 0 ? (user + sys) / secs * 100.0 : 0.0;
    double us_per_req = r->responses ? (user + sys) * 1e6 / (double)r->responses : 0.0;
    uint64_t accepted = r->status_counts[202];
    double rps = secs > 0 ? (double)r->responses / secs : 0.0;
    double arps = secs > 0 ? (double)accepted / secs : 0.0;
    double p50 = hist_quantile_ms(&r->hist, 0.50);
    double p90 = hist_quantile_ms(&r->hist, 0.90);
    double p99 = hist_quantile_ms(&r->hist, 0.99);
    double maxms = (double)r->hist.max_us / 1000.0;

    printf("ingest-load: 127.0.0.1:%d source %s, %d connections, %zu-byte bodies, %.1f s "
           "measured after %.1f s warm-up\n",
           r->opt.port, r->opt.source, r->opt.connections, r->opt.body_size, secs, r->opt.warmup_s);
    printf("  %-14s %12llu\n", "responses", (unsigned long long)r->responses);
    printf("  %-14s %12llu\n", "accepted (202)", (unsigned long long)accepted);
    for (int s = 0; s < MAX_STATUS; s++)
        if (s != 202 && r->status_counts[s])
            printf("  status %-7d %12llu\n", s, (unsigned long long)r->status_counts[s]);
    printf("  %-14s %12llu\n", "errors", (unsigned long long)r->errors);
    printf("  %-14s %12.0f\n", "requests/s", rps);
    printf("  %-14s %12.0f\n", "accepted/s", arps);
    printf("  %-14s %12.2f ms\n", "p50", p50);
    printf("  %-14s %12.2f ms\n", "p90", p90);
    printf("  %-14s %12.2f ms\n", "p99", p99);
    printf("  %-14s %12.2f ms\n", "max", maxms);
    printf("  %-14s %12.0f %% of a core (%.1f us/request; user %.2f s, sys %.2f s)\n",
           "loadgen cpu", cpu_pct, us_per_req, user, sys);

    printf("{\"requests\":%llu,\"accepted\":%llu,\"other\":{", (unsigned long long)r->responses,
           (unsigned long long)accepted);
    bool first = true;
    for (int s = 0; s < MAX_STATUS; s++) {
        if (s == 202 || !r->status_counts[s])
            continue;
        printf("%s\"%d\":%llu", first ? "" : ",", s, (unsigned long long)r->status_counts[s]);
        first = false;
    }
    printf("},\"errors\":%llu,\"duration_s\":%.3f,\"rps\":%.1f,\"accepted_rps\":%.1f,"
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"loadgen_cpu_pct\":%.1f,\"loadgen_us_per_req\":%.1f}\n",
           (unsigned long long)r->errors, secs, rps, arps, p50, p90, p99, maxms, cpu_pct,
           us_per_req);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct run *r = xcalloc(1, sizeof(*r));
    uint8_t rnd[8];
    char hex[sizeof(rnd) * 2 + 1];
    int rc = 2;

    if (parse_options(argc, argv, &r->opt) != 0 || load_key(r) != 0)
        goto out_free_run;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    if (crypto_random_bytes(rnd, sizeof(rnd)) != 0 ||
        crypto_hex_encode(rnd, sizeof(rnd), hex, sizeof(hex)) < 0) {
        fprintf(stderr, "ingest-load: no random bytes for the run prefix\n");
        goto out_free_run;
    }
    snprintf(r->prefix, sizeof(r->prefix), "bench-%s", hex);
    r->addr.sin_family = AF_INET;
    r->addr.sin_port = htons((uint16_t)r->opt.port);
    r->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int prc = probe(r);
    if (prc) {
        fprintf(stderr, "ingest-load: cannot connect to 127.0.0.1:%d: %s\n", r->opt.port,
                strerror(-prc));
        goto out_free_run;
    }
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        fprintf(stderr, "ingest-load: epoll_create1: %s\n", strerror(errno));
        goto out_free_run;
    }
    size_t cap = r->opt.body_size + REQ_HEADROOM;
    r->body = xmalloc(cap);
    r->conns = xcalloc((size_t)r->opt.connections, sizeof(*r->conns));
    for (int i = 0; i < r->opt.connections; i++) {
        r->conns[i].fd = -1;
        r->conns[i].out = xmalloc(cap);
        r->conns[i].in = xmalloc(RESP_BUF_SIZE);
    }

    uint64_t measured_ns;
    if (run_loop(r, &measured_ns) != 0)
        goto out_free_conns;
    report(r, (double)measured_ns / 1e9);
    uint64_t accepted = r->status_counts[202];
    uint64_t answered = r->responses + r->errors;
    /* 99% with integers: accepted / answered >= 0.99 */
    rc = answered > 0 && accepted * 100 >= answered * 99 ? 0 : 1;
    if (rc)
        fprintf(stderr, "ingest-load: only %llu of %llu requests were accepted (need 99%%)\n",
                (unsigned long long)accepted, (unsigned long long)answered);
out_free_conns:
    for (int i = 0; i < r->opt.connections; i++) {
        free(r->conns[i].out);
        free(r->conns[i].in);
    }
    free(r->conns);
    free(r->body);
    close(r->epfd);
out_free_run:
    free(r);
    return rc;
}
