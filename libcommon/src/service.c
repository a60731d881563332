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

#include "config_client.h"
#include "crypto.h"
#include "health.h"
#include "http_server.h"
#include "keyring.h"
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
    {"config_center.cache_dir", CFG_STRING, "/var/cache/robot-fleet", 0, 0, false,
     "CONFIG_CACHE_DIR", "where the last applied namespaces are kept for a start without Redis"},
    {"config_center.resync_s", CFG_INT, "30", 1, 3600, false, "CONFIG_RESYNC_S",
     "how often released versions are re-read from Redis (covers a lost message)"},
    {"gateway.require_identity", CFG_BOOL, "false", 0, 0, false, "GATEWAY_REQUIRE_IDENTITY",
     "refuse every request but /healthz, /readyz, /metrics without Kong's X-Gateway-Token"},
    {"gateway.token", CFG_STRING, "", 0, 256, false, "GATEWAY_TOKEN",
     "the token Kong adds as X-Gateway-Token (a secret: set it through the environment)"},
};

struct service {
    const struct service_def *def;
    char *config_path;
    struct cfg *boot_cfg;  /* file + env; owns the strings in props */
    const struct cfg *cfg; /* as started, including released namespaces (owned by config) */
    struct config_client *config;
    struct keyring *keyring; /* opens sealed config values; NULL without SECRETS_KEY */
    struct cfg_key port_key[1];
    char port_default[8];
    struct kafka_prop props[MAX_KAFKA_PROPS];
    size_t nprops;
    struct metrics *metrics;
    struct health *health;
    struct http_server *http;
    struct redis *redis;
    struct redis_options redis_opts; /* redis_opts.url owned */
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

/* Reloadable keys the runtime itself applies. */
static void reload_runtime(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg)
{
    (void)ud;
    const char *was = cfg_get_str(old_cfg, "log.level");
    const char *now = cfg_get_str(new_cfg, "log.level");
    enum log_level level;
    if (strcmp(was, now) == 0)
        return;
    if (log_level_parse(now, &level) == 0) {
        log_set_level(level);
        LOG_WARN("log level is now '%s'", now);
    } else {
        LOG_WARN("log.level '%s' is not debug, info, warn or error; keeping '%s'", now, was);
    }
}

/*
 * The config-center client: released namespaces over file_cfg (Redis, or the
 * cache file when Redis is down), env last. s->cfg is the config as started.
 */
static int open_config(struct service *s, const struct cfg *file_cfg, char *err, size_t errsize)
{
    char kerr[160] = "";
    if (getenv("SECRETS_KEY") &&
        !(s->keyring = keyring_from_env("SECRETS_KEY", kerr, sizeof(kerr))))
        LOG_WARN("SECRETS_KEY unusable, sealed config values will be refused: %s", kerr);
    const struct cfg *b = s->boot_cfg;
    struct config_client_options o = {
        .service = s->def->name,
        .file_cfg = file_cfg,
        .start_cfg = b,
        .redis_url = cfg_get_str(b, "redis.url"),
        .redis_timeout_ms = (int)cfg_get_int(b, "redis.connect_timeout_ms"),
        .bootstrap = cfg_get_str(b, "kafka.bootstrap_servers"),
        .props = s->props,
        .nprops = s->nprops,
        .cache_dir = cfg_get_str(b, "config_center.cache_dir"),
        .resync_s = (int)cfg_get_int(b, "config_center.resync_s"),
        .keyring = s->keyring,
        .metrics = s->metrics,
    };
    s->config = config_client_new(&o, err, errsize);
    if (!s->config)
        return -EINVAL;
    s->cfg = config_client_initial(s->config);
    enum log_level level;
    if (log_level_parse(cfg_get_str(s->cfg, "log.level"), &level) == 0)
        log_set_level(level);
    LOG_DEBUG("configuration loaded: common v%lld, %s v%lld",
              (long long)config_client_version(s->config, "common"), s->def->name,
              (long long)config_client_version(s->config, s->def->name));
    return config_client_on_reload(s->config, reload_runtime, s);
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
    struct cfg *file_cfg = cfg_new();
    if (cfg_declare(file_cfg, common_keys, sizeof(common_keys) / sizeof(common_keys[0])) ||
        cfg_declare(file_cfg, s->port_key, 1) ||
        (def->nkeys && cfg_declare(file_cfg, def->keys, def->nkeys))) {
        fprintf(stderr, "%s: duplicate configuration key in the service schema\n", def->name);
        goto out_free;
    }
    if (cfg_load_file(file_cfg, s->config_path, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        goto out_free;
    }
    s->boot_cfg = cfg_clone(file_cfg);
    if (cfg_apply_env(s->boot_cfg, err, sizeof(err)) ||
        cfg_validate(s->boot_cfg, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        goto out_free;
    }
    enum log_level level;
    if (log_level_parse(cfg_get_str(s->boot_cfg, "log.level"), &level)) {
        fprintf(stderr, "%s: log.level must be debug, info, warn or error\n", s->config_path);
        goto out_free;
    }
    log_init(def->name, level);
    if (lifecycle_install()) {
        fprintf(stderr, "%s: cannot install signal handlers: %s\n", def->name, strerror(errno));
        goto out_free;
    }
    cfg_map_foreach(s->boot_cfg, "kafka.properties", collect_prop, s);
    if (cfg_map_count(s->boot_cfg, "kafka.properties") > MAX_KAFKA_PROPS) {
        fprintf(stderr, "%s: more than %d kafka.properties\n", s->config_path, MAX_KAFKA_PROPS);
        goto out_free;
    }
    s->metrics = metrics_new();
    if (open_config(s, file_cfg, err, sizeof(err))) {
        fprintf(stderr, "%s: %s\n", def->name, err);
        goto out_free;
    }
    cfg_free(file_cfg);
    return s;

out_free:
    config_client_free(s->config);
    keyring_free(s->keyring);
    metrics_free(s->metrics);
    cfg_free(file_cfg);
    cfg_free(s->boot_cfg);
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
    return s->cfg != NULL && config_client_following(s->config);
}

static bool check_topics(void *ud)
{
    struct service *s = ud;
    return s->topics_ready;
}

/*
 * Behind Kong every request carries the gateway's token; a request without it
 * came around the gateway (and its key-auth), so it is refused. Probes and
 * Prometheus reach the operational paths directly.
 */
static bool gateway_guard(struct http_request *req, void *ud)
{
    struct service *s = ud;
    const char *route = http_request_route(req);
    if (strcmp(route, "/healthz") == 0 || strcmp(route, "/readyz") == 0 ||
        strcmp(route, "/metrics") == 0)
        return true;
    const char *want = cfg_get_str(s->cfg, "gateway.token");
    const char *got = http_request_header(req, "X-Gateway-Token");
    size_t n = strlen(want);
    if (got && strlen(got) == n && crypto_equal(got, want, n))
        return true;
    http_respond_problem(req, 401, "X-Gateway-Token", "requests must come through the API gateway");
    return false;
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

    s->redis_opts = (struct redis_options){
        .url = xstrdup(cfg_get_str(c, "redis.url")),
        .connect_timeout_ms = (int)cfg_get_int(c, "redis.connect_timeout_ms"),
        .command_timeout_ms = (int)cfg_get_int(c, "redis.command_timeout_ms"),
    };
    s->redis = redis_new(&s->redis_opts, err, sizeof(err));
    if (!s->redis) {
        LOG_ERROR("bad redis configuration: %s", err);
        return -EINVAL;
    }
    char client_id[96];
    snprintf(client_id, sizeof(client_id), "%s-%ld", s->def->name, (long)getpid());
    /* client.id, then the service's defaults, then the config file's properties (which win). */
    struct kafka_prop props[2 * MAX_KAFKA_PROPS + 1];
    size_t nprops = 0;
    props[nprops++] = (struct kafka_prop){"client.id", client_id};
    for (size_t i = 0; i < s->def->nproducer_defaults && i < MAX_KAFKA_PROPS; i++)
        props[nprops++] = s->def->producer_defaults[i];
    memcpy(props + nprops, s->props, s->nprops * sizeof(props[0]));
    nprops += s->nprops;
    s->producer = kafka_producer_new(cfg_get_str(c, "kafka.bootstrap_servers"), props, nprops, NULL,
                                     s->def->on_delivery, err, sizeof(err));
    if (!s->producer) {
        LOG_ERROR("cannot create kafka producer: %s", err);
        return -EINVAL;
    }
    if (cfg_get_bool(c, "kafka.create_topics"))
        ensure_topics(s);
    else
        s->topics_ready = true;
    if (config_client_start(s->config)) {
        LOG_ERROR("cannot start following %s", TOPIC_CONFIG_CHANGES);
        return -EINVAL;
    }

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
    if (cfg_get_bool(c, "gateway.require_identity")) {
        if (strlen(cfg_get_str(c, "gateway.token")) < 16) {
            LOG_ERROR("gateway.require_identity is on but gateway.token (GATEWAY_TOKEN) is "
                      "shorter than 16 characters");
            return -EINVAL;
        }
        http_server_set_guard(s->http, gateway_guard, s);
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
    config_client_stop(s->config); /* no reload callback runs from here on */
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
    free((char *)s->redis_opts.url);
    if (s->cfg)
        LOG_INFO("stopped");
    config_client_free(s->config);
    keyring_free(s->keyring);
    metrics_free(s->metrics);
    cfg_free(s->boot_cfg);
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

const struct cfg *service_config_acquire(struct service *s)
{
    return config_client_acquire(s->config);
}

void service_config_release(struct service *s, const struct cfg *cfg)
{
    config_client_release(s->config, cfg);
}

int service_on_reload(struct service *s,
                      void (*fn)(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg),
                      void *ud)
{
    return config_client_on_reload(s->config, fn, ud);
}

struct http_server *service_http(struct service *s)
{
    return s->http;
}

struct metrics *service_metrics(struct service *s)
{
    return s->metrics;
}

const struct redis_options *service_redis_options(const struct service *s)
{
    return &s->redis_opts;
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
