/*
 * The shared service runtime (see service.h): config and logging, the Redis and
 * Kafka clients, the HTTP server with /healthz, /readyz and /metrics, the run
 * loop and the orderly shutdown that keeps in-flight work.
 */
#include "service.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "health.h"
#include "http_server.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "xalloc.h"

#define SERVICE_VERSION "0.1.0"
#define MAX_KAFKA_PROPS 64
#define TOPIC_RETRY_MS  5000

static const struct cfg_key common_keys[] = {
    {"log.level", CFG_STRING, "info", 0, 0, true, "LOG_LEVEL", "debug, info, warn or error"},
    {"http.bind", CFG_STRING, "0.0.0.0", 0, 0, false, "HTTP_BIND", "address to listen on"},
    {"http.threads", CFG_INT, "2", 1, 64, false, "HTTP_THREADS", "HTTP worker threads"},
    {"http.max_body_bytes", CFG_INT, "1048576", 1024, 67108864, false, NULL,
     "largest request body accepted (413 above)"},
    {"http.conn_timeout_s", CFG_INT, "30", 1, 3600, false, NULL, "idle connection timeout"},
    {"http.max_connections", CFG_INT, "10000", 16, 100000, false, NULL, "concurrent connections"},
    {"kafka.bootstrap_servers", CFG_STRING, "127.0.0.1:9092", 0, 0, false,
     "KAFKA_BOOTSTRAP_SERVERS", "Kafka brokers, host:port[,host:port]"},
    {"kafka.create_topics", CFG_BOOL, "true", 0, 0, false, "KAFKA_CREATE_TOPICS",
     "create missing platform topics at start"},
    {"kafka.topic_partitions", CFG_INT, "12", 1, 1000, false, "KAFKA_TOPIC_PARTITIONS",
     "partitions of topics this service creates"},
    {"kafka.flush_timeout_ms", CFG_INT, "15000", 0, 600000, false, NULL,
     "how long shutdown waits for delivery reports"},
    {"kafka.properties", CFG_MAP, NULL, 0, 0, false, NULL,
     "librdkafka properties passed through unchanged"},
    {"redis.url", CFG_STRING, "redis://127.0.0.1:6379/0", 0, 0, false, "REDIS_URL",
     "redis://[:password@]host[:port][/db]"},
    {"redis.connect_timeout_ms", CFG_INT, "1000", 10, 60000, false, NULL, "connect timeout"},
    {"redis.command_timeout_ms", CFG_INT, "2000", 10, 60000, false, NULL, "command timeout"},
    {"health.interval_ms", CFG_INT, "1000", 100, 60000, false, NULL,
     "how often readiness checks run"},
    {"shutdown.timeout_s", CFG_INT, "25", 1, 600, false, "SHUTDOWN_TIMEOUT_S",
     "how long shutdown waits for in-flight requests"},
};

struct service {
    const struct service_def *def;
    char *config_path;
    struct cfg *cfg;
    struct cfg_key port_key[1];
    char port_default[8];
    struct kafka_prop props[MAX_KAFKA_PROPS];
    size_t nprops;
    struct metrics *metrics;
    struct health *health;
    struct http_server *http;
    struct redis *redis;
    struct kafka_producer *producer;
    atomic_bool topics_ready;
    int64_t topics_next_try_ms;
    void (*tick_fn)(void *);
    void *tick_ud;
    void (*shutdown_fn)(void *);
    void *shutdown_ud;
};

static void collect_prop(void *ud, const char *name, const char *value)
{
    struct service *s = ud;
    if (s->nprops < MAX_KAFKA_PROPS) {
        s->props[s->nprops].name = name;
        s->props[s->nprops].value = value;
        s->nprops++;
    }
}

static const char *parse_args(int argc, char **argv, const char *name, char *err, size_t errsize)
{
    const char *path = getenv("CONFIG_FILE");
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else {
            snprintf(err, errsize, "usage: %s [-c|--config FILE]", name);
            return NULL;
        }
    }
    return path;
}

struct service *service_new(const struct service_def *def, int argc, char **argv)
{
    char err[512] = "";
    const char *path = parse_args(argc, argv, def->name, err, sizeof(err));
    if (!path && err[0]) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    struct service *s = xcalloc(1, sizeof(*s));
    s->def = def;
    s->config_path = path ? xstrdup(path) : xasprintf("/etc/robot-fleet/%s.yaml", def->name);

    snprintf(s->port_default, sizeof(s->port_default), "%u", (unsigned)def->default_port);
    s->port_key[0] = (struct cfg_key){"http.port", CFG_INT, s->port_default, 1,
                                      65535,       false,   "HTTP_PORT",     "port to listen on"};
    s->cfg = cfg_new();
    if (cfg_declare(s->cfg, common_keys, sizeof(common_keys) / sizeof(common_keys[0])) ||
        cfg_declare(s->cfg, s->port_key, 1) ||
        (def->nkeys && cfg_declare(s->cfg, def->keys, def->nkeys))) {
        fprintf(stderr, "%s: duplicate configuration key in the service schema\n", def->name);
        goto out_free;
    }
    if (cfg_load_file(s->cfg, s->config_path, err, sizeof(err)) ||
        cfg_apply_env(s->cfg, err, sizeof(err)) || cfg_validate(s->cfg, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        goto out_free;
    }
    enum log_level level;
    if (log_level_parse(cfg_get_str(s->cfg, "log.level"), &level)) {
        fprintf(stderr, "%s: log.level must be debug, info, warn or error\n", s->config_path);
        goto out_free;
    }
    log_init(def->name, level);
    if (lifecycle_install()) {
        fprintf(stderr, "%s: cannot install signal handlers: %s\n", def->name, strerror(errno));
        goto out_free;
    }
    cfg_map_foreach(s->cfg, "kafka.properties", collect_prop, s);
    if (cfg_map_count(s->cfg, "kafka.properties") > MAX_KAFKA_PROPS) {
        fprintf(stderr, "%s: more than %d kafka.properties\n", s->config_path, MAX_KAFKA_PROPS);
        goto out_free;
    }
    s->metrics = metrics_new();
    return s;

out_free:
    cfg_free(s->cfg);
    free(s->config_path);
    free(s);
    return NULL;
}

static bool check_kafka(void *ud)
{
    struct service *s = ud;
    return kafka_producer_ping(s->producer, 2000);
}

static bool check_redis(void *ud)
{
    struct service *s = ud;
    return redis_ping(s->redis);
}

static bool check_config(void *ud)
{
    struct service *s = ud;
    return s->cfg != NULL;
}

static bool check_topics(void *ud)
{
    struct service *s = ud;
    return s->topics_ready;
}

static double rss_bytes(void *ud)
{
    (void)ud;
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static void ensure_topics(struct service *s)
{
    struct kafka_topic_spec specs[16];
    char err[256] = "";
    size_t n = topics_specs((int)cfg_get_int(s->cfg, "kafka.topic_partitions"), specs, 16);
    int rc = kafka_ensure_topics(cfg_get_str(s->cfg, "kafka.bootstrap_servers"), s->props,
                                 s->nprops, specs, n, 10000, err, sizeof(err));
    if (rc == 0) {
        if (!s->topics_ready)
            LOG_INFO("platform topics are present");
        s->topics_ready = true;
    } else {
        LOG_WARN("cannot create topics, retrying in %d ms: %s", TOPIC_RETRY_MS, err);
        s->topics_next_try_ms = time_mono_ms() + TOPIC_RETRY_MS;
    }
}

int service_open(struct service *s)
{
    char err[512] = "";
    const struct cfg *c = s->cfg;

    struct redis_options ro = {
        .url = cfg_get_str(c, "redis.url"),
        .connect_timeout_ms = (int)cfg_get_int(c, "redis.connect_timeout_ms"),
        .command_timeout_ms = (int)cfg_get_int(c, "redis.command_timeout_ms"),
    };
    s->redis = redis_new(&ro, err, sizeof(err));
    if (!s->redis) {
        LOG_ERROR("bad redis configuration: %s", err);
        return -EINVAL;
    }
    char client_id[96];
    snprintf(client_id, sizeof(client_id), "%s-%ld", s->def->name, (long)getpid());
    struct kafka_prop props[MAX_KAFKA_PROPS + 1];
    props[0] = (struct kafka_prop){"client.id", client_id};
    memcpy(props + 1, s->props, s->nprops * sizeof(props[0]));
    s->producer = kafka_producer_new(cfg_get_str(c, "kafka.bootstrap_servers"), props,
                                     s->nprops + 1, NULL, s->def->on_delivery, err, sizeof(err));
    if (!s->producer) {
        LOG_ERROR("cannot create kafka producer: %s", err);
        return -EINVAL;
    }
    if (cfg_get_bool(c, "kafka.create_topics"))
        ensure_topics(s);
    else
        s->topics_ready = true;

    struct http_server_options ho = {
        .bind = cfg_get_str(c, "http.bind"),
        .port = (uint16_t)cfg_get_int(c, "http.port"),
        .threads = (unsigned)cfg_get_int(c, "http.threads"),
        .max_body = (size_t)cfg_get_int(c, "http.max_body_bytes"),
        .conn_timeout_s = (unsigned)cfg_get_int(c, "http.conn_timeout_s"),
        .max_connections = (unsigned)cfg_get_int(c, "http.max_connections"),
        .metrics = s->metrics,
    };
    s->http = http_server_new(&ho, err, sizeof(err));
    if (!s->http) {
        LOG_ERROR("cannot create http server: %s", err);
        return -EINVAL;
    }
    s->health = health_new((int)cfg_get_int(c, "health.interval_ms"));
    health_add_check(s->health, "config", check_config, s);
    health_add_check(s->health, "redis", check_redis, s);
    health_add_check(s->health, "kafka", check_kafka, s);
    health_add_check(s->health, "topics", check_topics, s);
    int rc = health_register_routes(s->health, s->http, s->metrics);
    if (rc)
        return rc;

    const char *info_labels[] = {"service", "version"};
    const char *info_values[] = {s->def->name, SERVICE_VERSION};
    metric_series_set(
        metric_series(metrics_gauge(s->metrics, "robotfleet_build_info",
                                    "Service name and version, always 1", 2, info_labels),
                      info_values),
        1);
    metric_set(metrics_gauge(s->metrics, "process_start_time_seconds",
                             "Start time of the process since the Unix epoch in seconds", 0, NULL),
               (double)time_now_ms() / 1000.0);
    metrics_gauge_fn(s->metrics, "process_resident_memory_bytes", "Resident memory size in bytes",
                     rss_bytes, NULL);
    return 0;
}

int service_run(struct service *s)
{
    char err[512] = "";
    int rc = health_start(s->health);
    if (rc) {
        LOG_ERROR("cannot start health checks: %s", strerror(-rc));
        return rc;
    }
    rc = http_server_start(s->http, err, sizeof(err));
    if (rc) {
        LOG_ERROR("cannot start http server: %s", err);
        return rc;
    }
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)http_server_port(s->http));
    struct log_field fields[] = {{"url.port", port}, {"service.version", SERVICE_VERSION}};
    log_fields(LOG_LEVEL_INFO, fields, 2, "started, listening on %s:%s",
               cfg_get_str(s->cfg, "http.bind"), port);
    while (!lifecycle_wait(1000)) {
        if (!s->topics_ready && time_mono_ms() >= s->topics_next_try_ms)
            ensure_topics(s);
        if (s->tick_fn)
            s->tick_fn(s->tick_ud);
    }
    LOG_INFO("stop requested, shutting down");
    return 0;
}

void service_free(struct service *s)
{
    if (!s)
        return;
    if (s->health)
        health_set_draining(s->health, true);
    if (s->http) {
        http_server_quiesce(s->http);
        int timeout_ms = (int)cfg_get_int(s->cfg, "shutdown.timeout_s") * 1000;
        if (!http_server_drain(s->http, timeout_ms))
            LOG_WARN("shutdown timeout: %zu requests still in flight",
                     http_server_inflight(s->http));
    }
    if (s->shutdown_fn)
        s->shutdown_fn(s->shutdown_ud);
    if (s->producer) {
        size_t left = kafka_producer_outstanding(s->producer);
        if (left)
            LOG_INFO("waiting for %zu kafka delivery reports", left);
        kafka_producer_free(s->producer, (int)cfg_get_int(s->cfg, "kafka.flush_timeout_ms"));
    }
    http_server_free(s->http);
    health_free(s->health);
    redis_free(s->redis);
    if (s->cfg)
        LOG_INFO("stopped");
    metrics_free(s->metrics);
    cfg_free(s->cfg);
    free(s->config_path);
    free(s);
}

void service_on_tick(struct service *s, void (*fn)(void *ud), void *ud)
{
    s->tick_fn = fn;
    s->tick_ud = ud;
}

void service_on_shutdown(struct service *s, void (*fn)(void *ud), void *ud)
{
    s->shutdown_fn = fn;
    s->shutdown_ud = ud;
}

const char *service_name(const struct service *s)
{
    return s->def->name;
}

const struct cfg *service_cfg(const struct service *s)
{
    return s->cfg;
}

struct http_server *service_http(struct service *s)
{
    return s->http;
}

struct metrics *service_metrics(struct service *s)
{
    return s->metrics;
}

struct redis *service_redis(struct service *s)
{
    return s->redis;
}

struct kafka_producer *service_producer(struct service *s)
{
    return s->producer;
}

struct health *service_health(struct service *s)
{
    return s->health;
}

size_t service_kafka_props(const struct service *s, const struct kafka_prop **props)
{
    *props = s->props;
    return s->nprops;
}
