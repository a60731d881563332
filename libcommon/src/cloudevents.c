/*
 * CloudEvents 1.0 structured-mode JSON envelopes (see cloudevents.h): every
 * Kafka message is built and checked here, so producers and consumers agree
 * on one shape.
 */
#include "cloudevents.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "json.h"
#include "timeutil.h"

#define CE_SPECVERSION  "1.0"
#define CE_CONTENT_TYPE "application/json"

static bool present(const char *s)
{
    return s && *s;
}

static int append_member(struct buf *out, const char *key, const char *value)
{
    /* No printf on the hot path: every webhook event passes here. */
    int rc = buf_append_str(out, ",\"");
    if (!rc)
        rc = buf_append_str(out, key);
    if (!rc)
        rc = buf_append_str(out, "\":\"");
    if (!rc)
        rc = buf_append_json_str(out, value);
    if (!rc)
        rc = buf_append_str(out, "\"");
    return rc;
}

/* The envelope around data (JSON text of data_len bytes, NULL for none). */
static int build(const struct cloudevent *ev, const char *data, size_t data_len, struct buf *out)
{
    int64_t ms;
    int rc;

    if (!ev || !present(ev->id) || !present(ev->source) || !present(ev->type))
        return -EINVAL;
    /* ce_parse would refuse the envelope later; refuse it where the mistake is made. */
    if (ev->time && time_parse_rfc3339(ev->time, &ms) != 0)
        return -EINVAL;

    size_t start = out->len;
    rc = buf_append_str(out, "{\"specversion\":\"" CE_SPECVERSION "\"");
    if (!rc)
        rc = append_member(out, "id", ev->id);
    if (!rc)
        rc = append_member(out, "source", ev->source);
    if (!rc)
        rc = append_member(out, "type", ev->type);
    if (!rc && ev->subject)
        rc = append_member(out, "subject", ev->subject);
    if (!rc && ev->time)
        rc = append_member(out, "time", ev->time);
    if (!rc && data) {
        rc = append_member(out, "datacontenttype", CE_CONTENT_TYPE);
        if (!rc)
            rc = buf_append_str(out, ",\"data\":");
        if (!rc)
            rc = buf_append(out, data, data_len);
    }
    if (!rc)
        rc = buf_append_str(out, "}");
    if (rc && out->data) {
        /* Leave no half envelope behind: the caller's buffer is as it was. */
        out->len = start;
        out->data[start] = '\0';
    }
    return rc;
}

int ce_build(const struct cloudevent *ev, struct buf *out)
{
    if (!ev || !ev->data)
        return build(ev, NULL, 0, out);
    char *data = cJSON_PrintUnformatted(ev->data);
    if (!data)
        return -ENOMEM;
    int rc = build(ev, data, strlen(data), out);
    free(data);
    return rc;
}

int ce_build_raw(const struct cloudevent *ev, const char *data, size_t data_len, struct buf *out)
{
    if (!data || data_len == 0)
        return -EINVAL;
    return build(ev, data, data_len, out);
}

static void ce_err(char *errbuf, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ce_err(char *errbuf, size_t errsize, const char *fmt, ...)
{
    va_list ap;
    if (!errbuf || !errsize)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errsize, fmt, ap);
    va_end(ap);
}

/* "application/json", "application/cloudevents+json", optionally with "; charset=...". */
static bool is_json_content_type(const char *ct)
{
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    if (n == strlen(CE_CONTENT_TYPE) && strncasecmp(ct, CE_CONTENT_TYPE, n) == 0)
        return true;
    return n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/* An optional string attribute: absent is fine, present must be a non-empty string. */
static int optional_str(const cJSON *root, const char *key, const char **out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = NULL;
    if (!item)
        return 0;
    if (!cJSON_IsString(item) || !present(item->valuestring))
        return -EINVAL;
    *out = item->valuestring;
    return 0;
}

cJSON *ce_parse(const char *json, size_t len, struct cloudevent *ev, char *errbuf, size_t errsize)
{
    static const char *const required[] = {"id", "source", "type"};
    const char *values[3];
    const char *specversion;
    const char *content_type = NULL;
    const char *bad = NULL;
    char jerr[128];
    int64_t ms;

    memset(ev, 0, sizeof(*ev));
    cJSON *root = json_parse(json, len, jerr, sizeof(jerr));
    if (!root) {
        ce_err(errbuf, errsize, "invalid cloudevent: %s", jerr);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        ce_err(errbuf, errsize, "invalid cloudevent: not a json object");
        goto out_delete_root;
    }
    specversion = json_get_str(root, "specversion");
    if (!specversion || strcmp(specversion, CE_SPECVERSION) != 0) {
        ce_err(errbuf, errsize, "invalid cloudevent: \"specversion\" missing or not \"1.0\"");
        goto out_delete_root;
    }
    for (size_t i = 0; i < 3; i++) {
        values[i] = json_get_str(root, required[i]);
        if (!present(values[i])) {
            ce_err(errbuf, errsize, "invalid cloudevent: \"%s\" missing or not a string",
                   required[i]);
            goto out_delete_root;
        }
    }
    if (optional_str(root, "subject", &ev->subject))
        bad = "subject";
    else if (optional_str(root, "time", &ev->time) ||
             (ev->time && time_parse_rfc3339(ev->time, &ms) != 0))
        bad = "time";
    else if (optional_str(root, "datacontenttype", &content_type) ||
             (content_type && !is_json_content_type(content_type)))
        bad = "datacontenttype";
    else if (cJSON_GetObjectItemCaseSensitive(root, "data_base64"))
        bad = "data_base64"; /* binary data is not used on the platform */
    if (bad) {
        ce_err(errbuf, errsize, "invalid cloudevent: \"%s\" is not valid", bad);
        goto out_delete_root;
    }
    ev->id = values[0];
    ev->source = values[1];
    ev->type = values[2];
    ev->data = cJSON_GetObjectItemCaseSensitive(root, "data");
    return root;

out_delete_root:
    memset(ev, 0, sizeof(*ev));
    cJSON_Delete(root);
    return NULL;
}
