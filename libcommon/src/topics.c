/*
 * The platform's topic list (see topics.h and ARCHITECTURE.md §3).
 */
#include "topics.h"

static const struct {
    const char *name;
    int compacted;
} topic_table[] = {
    {TOPIC_ROBOT_EVENTS, 0},         {TOPIC_ROBOT_STATE, 1},      {TOPIC_ROBOT_COMMANDS, 0},
    {TOPIC_ROBOT_COMMAND_STATUS, 0}, {TOPIC_ROBOT_REGISTRY, 1},   {TOPIC_CONFIG_CHANGES, 1},
    {TOPIC_SP_CHANGELOG, 1},         {TOPIC_ROBOT_EVENTS_DLQ, 0},
};

size_t topics_count(void)
{
    return sizeof(topic_table) / sizeof(topic_table[0]);
}

size_t topics_specs(int partitions, struct kafka_topic_spec *out, size_t room)
{
    size_t n = 0;
    for (; n < topics_count() && n < room; n++) {
        out[n].name = topic_table[n].name;
        out[n].partitions = partitions;
        out[n].compacted = topic_table[n].compacted != 0;
    }
    return n;
}
