/*
 * Parsing and validation of a verified webhook body: one event object or an
 * array of them. Errors name the field and, for batches, the event index
 * ("events[2].robot_id") so the sender can fix exactly what is wrong.
 *
 * The body is scanned once, strictly (RFC 8259: UTF-8, no control characters
 * in strings, no trailing data, bounded nesting), without building a tree:
 * each event keeps the span of its raw bytes, which the producer splices into
 * the CloudEvent unchanged, and the few fields the platform reads are decoded.
 */
#ifndef INGEST_EVENTS_H
#define INGEST_EVENTS_H

#include <stdbool.h>
#include <stddef.h>

#define EVENT_ROBOT_ID_MAX 128
#define EVENT_ID_MAX       128
#define EVENT_DEPTH_MAX    512 /* nesting a body may have; consumers' cJSON allows 1000 */

struct event {
    const char *raw; /* the event object's JSON text (in the batch's copy of the body) */
    size_t raw_len;
    bool raw_empty; /* the object has no members ("{}") */
    const char *type;
    const char *robot_id;
    const char *occurred_at;
    const char *id; /* NULL when the sender gave none */
};

struct event_batch {
    struct event *events;
    size_t n;
    char *mem; /* owned: a copy of the body, then the decoded field values */
};

struct event_error {
    char field[64];
    char detail[192];
};

/*
 * Parses len bytes. 0 with *out filled (release with event_batch_release; it
 * copies what it keeps, body may go away), or -EINVAL with
 * err naming the field: malformed JSON, wrong shape, an empty or too large
 * batch, a missing or invalid field.
 */
int event_batch_parse(const char *body, size_t len, size_t max_batch, struct event_batch *out,
                      struct event_error *err);
void event_batch_release(struct event_batch *b);
/* True for the event types the platform knows. */
bool event_type_known(const char *type);

#endif
