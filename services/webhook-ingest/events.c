/*
 * Webhook body parsing and validation (see events.h).
 */
#include "events.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "timeutil.h"
#include "xalloc.h"

static const char *const known_types[] = {
    "robot.heartbeat", "robot.status", "robot.fault",
    "robot.booted",    "command.ack",  "command.result",
};

bool event_type_known(const char *type)
{
    for (size_t i = 0; i < sizeof(known_types) / sizeof(known_types[0]); i++)
        if (strcmp(type, known_types[i]) == 0)
            return true;
    return false;
}

/* Ids travel as Kafka keys, Redis keys and log fields: keep them plain. */
static bool id_chars_ok(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= max || c <= 0x20 || c >= 0x7f)
            return false;
    }
    return n > 0;
}

static int fail(struct event_error *err, bool batch, size_t index, const char *field,
                const char *fmt, const char *arg)
{
    if (batch)
        snprintf(err->field, sizeof(err->field), "events[%zu]%s%s", index, field[0] ? "." : "",
                 field);
    else
        snprintf(err->field, sizeof(err->field), "%s", field[0] ? field : "body");
    snprintf(err->detail, sizeof(err->detail), fmt, err->field, arg);
    return -EINVAL;
}

static int check_event(cJSON *obj, bool batch, size_t i, struct event *ev, struct event_error *err)
{
    int64_t ms;
    if (!cJSON_IsObject(obj))
        return fail(err, batch, i, "", "%s must be a JSON object%s", "");
    ev->obj = obj;
    ev->type = json_get_str(obj, "type");
    if (!ev->type)
        return fail(err, batch, i, "type", "%s is required and must be a string%s", "");
    if (!event_type_known(ev->type))
        return fail(err, batch, i, "type", "%s '%.64s' is not a known event type", ev->type);
    ev->robot_id = json_get_str(obj, "robot_id");
    if (!ev->robot_id)
        return fail(err, batch, i, "robot_id", "%s is required and must be a string%s", "");
    if (!id_chars_ok(ev->robot_id, EVENT_ROBOT_ID_MAX))
        return fail(err, batch, i, "robot_id",
                    "%s must be 1-128 printable characters without spaces%s", "");
    ev->occurred_at = json_get_str(obj, "occurred_at");
    if (!ev->occurred_at)
        return fail(err, batch, i, "occurred_at", "%s is required and must be a string%s", "");
    if (time_parse_rfc3339(ev->occurred_at, &ms) != 0)
        return fail(err, batch, i, "occurred_at", "%s must be an RFC 3339 date-time%s", "");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    ev->id = NULL;
    if (id) {
        if (!cJSON_IsString(id) || !id_chars_ok(id->valuestring, EVENT_ID_MAX))
            return fail(err, batch, i, "id",
                        "%s must be a string of 1-128 printable characters without spaces%s", "");
        ev->id = id->valuestring;
    }
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(obj, "data");
    if (data && !cJSON_IsObject(data))
        return fail(err, batch, i, "data", "%s must be a JSON object%s", "");
    return 0;
}

int event_batch_parse(const char *body, size_t len, size_t max_batch, struct event_batch *out,
                      struct event_error *err)
{
    char perr[128];
    memset(out, 0, sizeof(*out));
    out->root = json_parse(body, len, perr, sizeof(perr));
    if (!out->root) {
        snprintf(err->field, sizeof(err->field), "body");
        snprintf(err->detail, sizeof(err->detail), "body is not valid JSON: %s", perr);
        return -EINVAL;
    }
    bool batch = cJSON_IsArray(out->root);
    size_t n = batch ? (size_t)cJSON_GetArraySize(out->root) : 1;
    int rc = 0;
    if (!batch && !cJSON_IsObject(out->root)) {
        rc = fail(err, false, 0, "body", "%s must be an event object or an array of events%s", "");
        goto out;
    }
    if (batch && n == 0) {
        rc = fail(err, false, 0, "body", "%s is an empty batch%s", "");
        goto out;
    }
    if (n > max_batch) {
        char limit[32];
        snprintf(limit, sizeof(limit), "%zu", max_batch);
        rc = fail(err, false, 0, "body", "%s holds more events than the batch limit of %s", limit);
        goto out;
    }
    out->events = xcalloc(n, sizeof(*out->events));
    if (!batch) {
        rc = check_event(out->root, false, 0, &out->events[0], err);
    } else {
        cJSON *item;
        size_t i = 0;
        cJSON_ArrayForEach(item, out->root)
        {
            rc = check_event(item, true, i, &out->events[i], err);
            if (rc)
                break;
            i++;
        }
    }
    out->n = n;
out:
    if (rc)
        event_batch_release(out);
    return rc;
}

void event_batch_release(struct event_batch *b)
{
    cJSON_Delete(b->root);
    free(b->events);
    memset(b, 0, sizeof(*b));
}
