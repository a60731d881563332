/*
 * A follower: one consumer of a topic of CloudEvents in a consumer group of
 * its own ("<prefix>-<host>-<pid>-<random>") starting at the end of the topic,
 * so that every replica sees every event published once it has joined. It
 * polls on a thread of its own and hands each event that parses to a callback.
 * Used for change notifications (source changes, config releases) that every
 * replica must act on, never for work a group shares.
 */
#ifndef LIBCOMMON_FOLLOWER_H
#define LIBCOMMON_FOLLOWER_H

#include <stddef.h>

#include "kafka.h"

struct follower;
struct cloudevent;

/* On the follower's thread for every event that parses; ev is valid during the call only. */
typedef void (*follower_event_fn)(void *ud, const struct cloudevent *ev);
/* On the follower's thread after every poll, with or without a message. */
typedef void (*follower_poll_fn)(void *ud);

struct follower_options {
    const char *bootstrap;    /* NULL: no consumer, the thread only calls on_poll */
    const char *group_prefix; /* e.g. "config-center-watch" */
    const char *topic;
    const struct kafka_prop *props;  /* more consumer properties (the caller's, copied) */
    size_t nprops;                   /* at most FOLLOWER_PROPS_MAX are used */
    int poll_ms;                     /* 0 = 200 */
    follower_event_fn on_event;      /* may be NULL */
    follower_poll_fn on_poll;        /* may be NULL */
    kafka_rebalance_fn on_rebalance; /* may be NULL; called from the poll */
    void *ud;
};

#define FOLLOWER_PROPS_MAX 71

/*
 * Creates the consumer, subscribes and starts the thread. NULL with errbuf
 * filled when the consumer cannot be created or subscribed, or the thread
 * cannot start. You free it with follower_free.
 */
struct follower *follower_start(const struct follower_options *o, char *errbuf, size_t errsize);
/* Ends the thread after its current poll and joins it. NULL-safe; a second call does nothing. */
void follower_stop(struct follower *f);
/* Stops, then closes the consumer. NULL-safe. */
void follower_free(struct follower *f);

#endif
