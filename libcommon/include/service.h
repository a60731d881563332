/*
 * The runtime every service shares, so each main.c reads top-down in one screen:
 *
 *   struct service *s = service_new(&def, argc, argv);   config + logging
 *   service_open(s);                                      Redis, Kafka, topics, HTTP, health
 *   http_server_route(service_http(s), ...);              the service's own routes
 *   service_run(s);                                       until SIGTERM
 *   service_free(s);                                      drain HTTP, flush Kafka, close
 *
 * Command line: `<service> [-c|--config FILE] [--check-config]`; the config file
 * defaults to $CONFIG_FILE or /etc/robot-fleet/<name>.yaml.
 */
#ifndef SERVICE_H
#define SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "kafka.h"

struct service;
struct http_server;
struct metrics;
struct redis;
struct redis_options;
struct health;

struct service_def {
    const char *name;           /* "webhook-ingest": log service.name, metrics, client ids */
    uint16_t default_port;      /* 8081 ... 8085 */
    const struct cfg_key *keys; /* the service's own config keys (may be NULL) */
    size_t nkeys;
    kafka_delivery_fn on_delivery; /* delivery reports of the shared producer (may be NULL) */
    /* librdkafka properties for the shared producer that kafka.properties may override */
    const struct kafka_prop *producer_defaults;
    size_t nproducer_defaults;
};

/*
 * Parses the command line, loads and validates the config (file, then
 * environment), sets up logging and signal handling. On a bad config it prints
 * "file:line: problem" to stderr and returns NULL; the caller exits 2.
 */
struct service *service_new(const struct service_def *def, int argc, char **argv);
/* Opens Redis, the Kafka producer, creates missing topics, builds the HTTP server. 0 or negative.
 */
int service_open(struct service *s);
/* Starts HTTP and health checks, then waits for SIGTERM/SIGINT. 0 or negative. */
int service_run(struct service *s);
/*
 * Orderly shutdown: /readyz goes 503, the listener closes, in-flight requests
 * are drained (up to shutdown.timeout_s), the producer is flushed so every
 * delivery report arrives, then clients close. NULL-safe.
 */
void service_free(struct service *s);

/* Called once per second from service_run's loop (timers, housekeeping); may be NULL. */
void service_on_tick(struct service *s, void (*fn)(void *ud), void *ud);
/* Called after the HTTP listener closed and in-flight requests drained, before Kafka is flushed. */
void service_on_shutdown(struct service *s, void (*fn)(void *ud), void *ud);

const char *service_name(const struct service *s);
/*
 * The configuration the service started with (file, released namespaces, env),
 * valid until service_free. Its reloadable keys are not updated: read those
 * through service_config_acquire or in a reload callback.
 */
const struct cfg *service_cfg(const struct service *s);
/*
 * The current configuration, safe against a concurrent reload: it stays valid
 * and unchanged until you give it back with service_config_release (a reload
 * swaps in a new struct cfg; the old one is freed by its last reader).
 */
const struct cfg *service_config_acquire(struct service *s);
void service_config_release(struct service *s, const struct cfg *cfg);
/*
 * Called after config-center released a change that was applied (only
 * reloadable keys differ; others are logged as "needs restart"). Runs on the
 * config client's thread; old_cfg and new_cfg are valid during the call. Up to
 * 8 callbacks; register before service_run. 0 or -ENOSPC.
 */
int service_on_reload(struct service *s,
                      void (*fn)(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg),
                      void *ud);
struct http_server *service_http(struct service *s);
struct metrics *service_metrics(struct service *s);
struct redis *service_redis(struct service *s);
/*
 * The options service_redis was opened with (redis.url, redis.*_timeout_ms),
 * for a service's own clients. Owned by the service (url included), valid
 * from service_open until service_free.
 */
const struct redis_options *service_redis_options(const struct service *s);
struct kafka_producer *service_producer(struct service *s);
struct health *service_health(struct service *s);
/* The librdkafka properties from kafka.properties in the config (for extra clients). */
size_t service_kafka_props(const struct service *s, const struct kafka_prop **props);

#endif
