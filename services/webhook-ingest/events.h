/*
 * Parsing and validation of a verified webhook body: one event object or an
 * array of them. Errors name the field and, for batches, the event index
 * ("events[2].robot_id") so the sender can fix exactly what is wrong.
 */
#ifndef INGEST_EVENTS_H
#define INGEST_EVENTS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#define EVENT_ROBOT_ID_MAX 128
#define EVENT_ID_MAX       128

struct event {
    cJSON *obj; /* the event object inside the batch's tree */
    const char *type;
    const char *robot_id;
    const char *occurred_at;
    const char *id; /* NULL when the sender gave none */
};

struct event_batch {
    cJSON *root;
    struct event *events;
    size_t n;
};

struct event_error {
    char field[64];
    char detail[192];
};

/*
 * Parses len bytes. 0 with *out filled (release with event_batch_release), or
 * -EINVAL with err naming the field: malformed JSON, wrong shape, an empty or
 * too large batch, a missing or invalid field.
 */
int event_batch_parse(const char *body, size_t len, size_t max_batch, struct event_batch *out,
                      struct event_error *err);
void event_batch_release(struct event_batch *b);
/* True for the event types the platform knows. */
bool event_type_known(const char *type);

#endif
