/*
 * webhook-ingest's business: POST /v1/webhooks/{source} verifies the signature
 * over the raw body, validates the events, drops duplicates (Redis), produces
 * one CloudEvent per event to robot.events.v1 and answers 202 only when Kafka
 * acknowledged all of them. The connection is suspended meanwhile.
 */
#ifndef INGEST_H
#define INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "kafka.h"

struct ingest;
struct service;

extern const struct cfg_key ingest_config_keys[];
extern const size_t ingest_config_nkeys;
/* Producer settings for webhooks (kafka.properties may override them). */
extern const struct kafka_prop ingest_producer_defaults[];
extern const size_t ingest_producer_ndefaults;

/* Reads its settings and SECRETS_KEY, registers metrics, starts helpers. NULL + errbuf on failure.
 */
struct ingest *ingest_new(struct service *svc, char *errbuf, size_t errsize);
/* Adds POST /v1/webhooks/{source}. */
int ingest_register_routes(struct ingest *in);
/* The producer's delivery callback (service_def.on_delivery). */
void ingest_on_delivery(void *opaque, int err, const char *errstr, int32_t partition,
                        int64_t offset);
/* Once a second: refreshes the source cache when due. */
void ingest_tick(void *ud);
/* After HTTP drained: finishes queued dedupe updates and stops the helper threads. */
void ingest_stop(void *ud);
void ingest_free(struct ingest *in);

#endif
