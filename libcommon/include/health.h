/*
 * Operational endpoints every service serves: GET /healthz (the process is
 * alive), GET /readyz (every registered check passes: Kafka and Redis reachable,
 * config loaded; 503 while draining) and GET /metrics (Prometheus text).
 * Checks run on a background thread at a fixed interval, so a probe never waits
 * on Kafka or Redis and cannot pile up requests against them.
 */
#ifndef HEALTH_H
#define HEALTH_H

#include <stdbool.h>

struct health;
struct http_server;
struct metrics;

typedef bool (*health_check_fn)(void *ud);

struct health *health_new(int interval_ms);
/* Registers a named check (before health_start). */
int health_add_check(struct health *h, const char *name, health_check_fn fn, void *ud);
/* Runs every check once, then keeps re-running them on a thread. */
int health_start(struct health *h);
/* While draining, /readyz answers 503 so load balancers stop sending work. */
void health_set_draining(struct health *h, bool draining);
/* True when every check passed on its last run and not draining. */
bool health_ready(struct health *h);
/* Adds GET /healthz, /readyz and /metrics (rendering m) to the server. */
int health_register_routes(struct health *h, struct http_server *s, struct metrics *m);
/* Stops the thread and frees. NULL-safe. */
void health_free(struct health *h);

#endif
