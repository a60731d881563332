/*
 * robot-registry's business, shared by its files: the registry object (config,
 * clients, metrics), the outbox of robot.registry.v1 (every change is stored
 * with its event; the HTTP answer waits until Kafka acknowledged it), and a worker thread for the
 * slow vendor calls (webhook registration, sync) so no HTTP thread waits on
 * the vendor.
 *
 *   robots.c   robots: validation, Redis storage and indexes, the /v1/robots API
 *   sources_api.c  vendor sources: the /v1/sources API, secrets, registration, sync
 */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "trace.h"

struct registry;
struct service;
struct http_request;
struct redis;
struct keyring;
struct http_client;
struct http_server;
struct redis_options;

extern const struct cfg_key registry_config_keys[];
extern const size_t registry_config_nkeys;

/* Settings read once at start (see robot-registry.yaml). */
struct registry_settings {
    char public_ingest_url[512]; /* "{source}" is replaced by the source id */
    char event_types[512];       /* comma-separated, sent to the vendor */
    int64_t secret_grace_s;
    int64_t default_page, max_page, list_scan_budget;
    int64_t sync_page_size, sync_max_robots;
};

/* Reads settings and SECRETS_KEY, builds the vendor client, starts the worker. NULL + errbuf. */
struct registry *registry_new(struct service *svc, char *errbuf, size_t errsize);
/* Adds every /v1/robots and /v1/sources route. */
int registry_register_routes(struct registry *reg);
/* After HTTP drained: finishes the queued vendor jobs and stops the worker. */
void registry_stop(void *ud);
void registry_free(struct registry *reg); /* NULL-safe */

/* ---- for the business files ---- */

const struct registry_settings *registry_settings(const struct registry *reg);
const struct keyring *registry_keyring(const struct registry *reg);
struct http_client *registry_vendor(struct registry *reg);
struct http_server *registry_http(struct registry *reg);
/* A Redis connection of the calling thread's own (falls back to the shared one). */
struct redis *registry_redis(struct registry *reg);
/* Counts a change produced: kind "robot"/"source", type "upserted", "deleted", ... */
void registry_count_change(struct registry *reg, const char *kind, const char *type);
void registry_count_vendor(struct registry *reg, const char *op, const char *outcome);
void registry_count_sync(struct registry *reg, const char *result, double n);

/* X-Consumer-Username (set by Kong), or "anonymous". */
const char *registry_identity(struct http_request *req);
/*
 * Parses the request body as a JSON object; on failure answers 400 (or 415)
 * and returns NULL. The caller deletes the result.
 */
cJSON *registry_body_object(struct http_request *req);

/* One Kafka message of a change; value NULL is a tombstone. */
struct registry_msg {
    const char *key;
    char *value; /* owned by the caller */
    size_t len;
};

/*
 * Builds a CloudEvent (type, subject, data) for robot.registry.v1; you free it.
 * The event source is "/robot-registry".
 */
char *registry_event(const char *type, const char *subject, const cJSON *data, size_t *len);

/*
 * The transactional outbox (outbox.c). Write scripts start with
 * REGISTRY_OUTBOX_LUA and call outbox(first) to XADD the change events found
 * in ARGV[first..], three arguments per message (registry_outbox_args): key,
 * value ("" = tombstone) and traceparent; it returns the last entry id. The
 * relay produces entries to robot.registry.v1 in order and deletes each after
 * Kafka acknowledged it.
 */
#define REGISTRY_OUTBOX_KEY "registry:outbox"
#define REGISTRY_OUTBOX_LUA                                                                        \
    "local function outbox(first)\n"                                                               \
    "  local id = ''\n"                                                                            \
    "  for i = first, #ARGV - 2, 3 do\n"                                                           \
    "    if ARGV[i + 1] == '' then\n"                                                              \
    "      id = redis.call('XADD', 'registry:outbox', '*', 'key', ARGV[i], 'tombstone', '1',\n"    \
    "        'traceparent', ARGV[i + 2])\n"                                                        \
    "    else\n"                                                                                   \
    "      id = redis.call('XADD', 'registry:outbox', '*', 'key', ARGV[i], 'value', ARGV[i + "     \
    "1],\n"                                                                                        \
    "        'traceparent', ARGV[i + 2])\n"                                                        \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  return id\n"                                                                                \
    "end\n"
#define REGISTRY_OUTBOX_ID_MAX 48 /* "ms-seq" of a stream entry, with NUL */

/* Appends the script arguments of msgs to argv (at most max); returns how many. */
size_t registry_outbox_args(const struct registry_msg *msgs, size_t n, const char *traceparent,
                            const char **argv, size_t max);

/*
 * Answers req once the outbox entry entry_id (and every one before it) is on
 * robot.registry.v1: status with body (application/json, taken over, may be
 * NULL for 204) and an ETag when etag is not NULL. When Kafka does not
 * acknowledge it within registry.publish_wait_ms the answer is 503: the change
 * is stored and the relay announces it once Kafka is back. Suspends req.
 */
void registry_respond_announced(struct registry *reg, struct http_request *req,
                                const char *entry_id, unsigned status, char *body,
                                const char *etag);
/* Waits on the calling (worker) thread the same way: 0, or -EPIPE when not announced in time. */
int registry_wait_announced(struct registry *reg, const char *entry_id);
/* The traceparent the request's events carry (a child of its own, or a new trace). */
void registry_traceparent(struct http_request *req, char out[TRACE_PARENT_LEN]);

struct registry_outbox;
struct registry_outbox_settings {
    int64_t wait_ms, poll_ms, lease_ms, batch;
};
typedef void (*registry_announced_fn)(void *ud, bool announced);
/* Starts the relay thread on its own Redis connection. NULL + errbuf. */
struct registry_outbox *registry_outbox_new(struct service *svc, const struct redis_options *ropts,
                                            const struct registry_outbox_settings *set,
                                            char *errbuf, size_t errsize);
/* Calls done(ud, announced) from the relay thread once entry_id left the stream, or in time. */
void registry_outbox_wait(struct registry_outbox *ob, const char *entry_id,
                          registry_announced_fn done, void *ud);
int registry_outbox_wait_sync(struct registry_outbox *ob, const char *entry_id);
/* Stops the relay (pending waiters are answered "not announced"); releases the lease. */
void registry_outbox_stop(struct registry_outbox *ob);
void registry_outbox_free(struct registry_outbox *ob); /* NULL-safe */

/* Runs fn(reg, job) on the worker thread; req is suspended meanwhile. job is freed with free_fn. */
typedef void (*registry_job_fn)(struct registry *reg, struct http_request *req, void *job);
void registry_enqueue(struct registry *reg, struct http_request *req, registry_job_fn fn, void *job,
                      void (*free_fn)(void *));

/* ---- robots.c ---- */
int robots_register_routes(struct registry *reg);

struct robot_sync_counts {
    size_t added, updated, unchanged, invalid;
};
/*
 * Upserts one robot as reported by the vendor of source (vendor-owned fields
 * replace ours, policy and maintenance window are kept) and publishes the
 * change. Runs on the worker thread. 0 or negative (-EIO Redis, -EPIPE Kafka).
 */
int robots_sync_apply(struct registry *reg, const char *source, const cJSON *vendor_robots,
                      const char *updated_by, struct robot_sync_counts *counts);

/* ---- sources_api.c ---- */
int sources_register_routes(struct registry *reg);

#endif
