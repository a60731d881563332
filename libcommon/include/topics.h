/*
 * The platform's Kafka topics (ARCHITECTURE.md §3): names are contracts shared
 * with outside tooling, so they are defined once here.
 */
#ifndef TOPICS_H
#define TOPICS_H

#include <stddef.h>

#include "kafka.h"

#define TOPIC_ROBOT_EVENTS         "robot.events.v1"
#define TOPIC_ROBOT_STATE          "robot.state.v1"
#define TOPIC_ROBOT_COMMANDS       "robot.commands.v1"
#define TOPIC_ROBOT_COMMAND_STATUS "robot.command-status.v1"
#define TOPIC_ROBOT_REGISTRY       "robot.registry.v1"
#define TOPIC_CONFIG_CHANGES       "config.changes.v1"
#define TOPIC_SP_CHANGELOG         "stream-processor.changelog.v1"
#define TOPIC_ROBOT_EVENTS_DLQ     "robot.events.dlq.v1"

/*
 * Fills out (room for at least topics_count() entries) with every platform
 * topic, each with `partitions` partitions; returns the number written.
 */
size_t topics_specs(int partitions, struct kafka_topic_spec *out, size_t room);
size_t topics_count(void);

#endif
