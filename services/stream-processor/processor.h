/*
 * stream-processor's engine: one thread consumes robot.events.v1 in the group
 * (with the same-numbered partitions of robot.command-status.v1 and
 * robot.registry.v1 alongside), applies the rules (rules.h) to the per-robot
 * state (state.h), and every cycle (stream.cycle_ms or stream.cycle_max_events)
 * commits one Kafka transaction holding the reboot requests, the state
 * messages, the changelog records, the dead letters and the input offsets.
 * After a commit the Redis mirror state:robot:{id} is updated by a thread of
 * its own (guarded by the robot's state version). Also serves
 * GET /v1/state/{robot_id}.
 */
#ifndef SP_PROCESSOR_H
#define SP_PROCESSOR_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct processor;
struct service;

extern const struct cfg_key processor_config_keys[];
extern const size_t processor_config_nkeys;

/* Creates the transactional producer and the consumer, registers metrics and the
 * readiness check. NULL with errbuf filled on failure. */
struct processor *processor_new(struct service *svc, char *errbuf, size_t errsize);
/* Adds GET /v1/state/{robot_id}. */
int processor_register_routes(struct processor *p);
/* Starts the processing thread. 0 or negative. */
int processor_start(struct processor *p);
/*
 * Applies the reloadable stream.* keys of new_cfg (a config_reload_fn: call it
 * from the config client's reload hook). The processing thread picks them up at
 * its next cycle; a changed offline_after_s or reboot_grace_s re-times every
 * armed deadline.
 */
void processor_reload(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg);
/* Commits the open cycle, leaves the group and joins the thread (service_on_shutdown). */
void processor_stop(void *ud);
/* True after a fatal Kafka error (fenced producer): the process must exit non-zero. */
bool processor_failed(const struct processor *p);
void processor_free(struct processor *p);

#endif
