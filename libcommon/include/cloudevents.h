/*
 * CloudEvents 1.0 structured-mode JSON envelopes, the format of every Kafka
 * message on the platform:
 *   {"specversion":"1.0","id","source","type","subject","time",
 *    "datacontenttype":"application/json","data":{...}}
 */
#ifndef CLOUDEVENTS_H
#define CLOUDEVENTS_H

#include <stddef.h>

#include <cjson/cJSON.h>

struct buf;

struct cloudevent {
    const char *id;      /* required */
    const char *source;  /* required, URI-reference such as "/webhook-ingest/acme" */
    const char *type;    /* required, e.g. "robot.heartbeat" */
    const char *subject; /* robot id (or namespace), optional */
    const char *time;    /* RFC 3339, optional */
    const cJSON *data;   /* JSON value, optional */
};

/* Appends the envelope's JSON to out. 0, -EINVAL (a required field missing) or -E2BIG. */
int ce_build(const struct cloudevent *ev, struct buf *out);
/*
 * The same with data given as JSON text, copied verbatim (ev->data is
 * ignored): for data already validated as one JSON value, which saves a parse
 * and a print. The caller vouches for the text; nothing here re-checks it.
 */
int ce_build_raw(const struct cloudevent *ev, const char *data, size_t data_len, struct buf *out);
/*
 * Parses and checks an envelope (specversion "1.0", id/source/type strings).
 * Returns the cJSON root (caller frees with cJSON_Delete); ev's pointers point
 * into it. NULL with errbuf naming the field on failure.
 */
cJSON *ce_parse(const char *json, size_t len, struct cloudevent *ev, char *errbuf, size_t errsize);

#endif
