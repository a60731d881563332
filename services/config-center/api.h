/*
 * config-center's HTTP API: namespaces, drafts (validated against the
 * namespace's JSON Schema, secrets sealed), releases with compare-and-set on
 * If-Match, rollback, history, diff and audit. A release is answered once
 * config.changes.v1 acknowledged its announcement (the connection is
 * suspended meanwhile); the watchers of this instance are told at once.
 */
#ifndef CONFIG_CENTER_API_H
#define CONFIG_CENTER_API_H

#include <stddef.h>
#include <stdint.h>

struct api;
struct service;
struct watch;

/* Reads SECRETS_KEY and registers metrics. NULL + errbuf on failure. */
struct api *api_new(struct service *svc, struct watch *watch, char *errbuf, size_t errsize);
/* Adds every /v1 route (GET /v1/watch goes to the watch). 0 or negative. */
int api_register_routes(struct api *a);
/* The shared producer's delivery callback (service_def.on_delivery): answers the release. */
void api_on_delivery(void *opaque, int err, const char *errstr, int32_t partition, int64_t offset);
void api_free(struct api *a);

#endif
