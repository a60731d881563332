/*
 * The /v1 handlers (see api.h). Every answer that carries a document masks
 * its sealed values; every 4xx names the field (a JSON Pointer for a value of
 * the document). Identity for the audit comes from Kong's X-Consumer-Username.
 */
#include "api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cloudevents.h"
#include "config_client.h"
#include "crypto.h"
#include "doc.h"
#include "http_server.h"
#include "json.h"
#include "jsonschema.h"
#include "kafka.h"
#include "keyring.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "service.h"
#include "store.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "trace.h"
#include "watch.h"
#include "xalloc.h"

#define COMMENT_MAX     500
#define HISTORY_DEFAULT 100
#define HISTORY_MAX     1000
#define NS_ROUTES       8

struct api;

/* A handler of a /v1/namespaces/{ns}... route, called with a valid namespace name. */
typedef void (*ns_handler_fn)(struct api *a, struct http_request *req, const char *ns);

struct ns_route {
    struct api *a;
    ns_handler_fn fn;
};

struct api {
    struct service *svc;
    struct redis *redis;
    struct keyring *keyring;
    struct watch *watch;
    struct kafka_producer *producer;
    struct metric *m_releases; /* {namespace,action} */
    struct metric *m_drafts;   /* {namespace,outcome} */
    struct ns_route ns_routes[NS_ROUTES];
};

/* A release waiting for Kafka to acknowledge its announcement. */
struct pending {
    struct http_request *req;
    cJSON *body;
};

/* ---- helpers ---- */

static const char *author_of(struct http_request *req)
{
    const char *who = http_request_header(req, "X-Consumer-Username");
    return who && who[0] && strlen(who) <= 200 ? who : "anonymous";
}

static void now_text(char out[TIME_RFC3339_LEN])
{
    time_format_rfc3339(time_now_ms(), out, TIME_RFC3339_LEN);
}

static void count2(struct metric *m, const char *a, const char *b)
{
    const char *v[] = {a, b};
    metric_series_add(metric_series(m, v), 1);
}

/* The {ns} parameter, answering 400 when it is not a namespace name. */
static const char *ns_param(struct http_request *req)
{
    const char *ns = http_request_param(req, "ns");
    if (!ns || !config_ns_valid(ns)) {
        http_respond_problem(req, 400, "ns",
                             "namespace names are 1-64 of a-z 0-9 . _ - starting with a letter "
                             "or digit");
        return NULL;
    }
    return ns;
}

static void store_down(struct http_request *req)
{
    http_response_header(req, "Retry-After", "1");
    http_respond_problem(req, 503, NULL, "configuration store (Redis) unavailable");
}

/* Every {ns} route: a name that is not a namespace is answered 400 before the handler. */
static void with_ns(struct http_request *req, void *ud)
{
    const struct ns_route *r = ud;
    const char *ns = ns_param(req);
    if (ns)
        r->fn(r->a, req, ns);
}

/* store_get_record, answering 503 itself when the store is down: 1, 0 or -EIO. */
static int get_record(struct api *a, struct http_request *req, const char *ns, const char *suffix,
                      cJSON **out)
{
    int rc = store_get_record(a->redis, ns, suffix, out);
    if (rc < 0)
        store_down(req);
    return rc;
}

/* The record suffix of version v ("v:<N>"). */
static void version_suffix(int64_t v, char out[40])
{
    snprintf(out, 40, "v:%lld", (long long)v);
}

/* A new answer object starting with "namespace"; you delete it. */
static cJSON *ns_object(const char *ns)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "namespace", ns);
    return o;
}

/* Answers body with the list added under name, or 503 when the store gave no list. Frees body. */
static void respond_list(struct http_request *req, cJSON *body, const char *name, cJSON *list)
{
    if (list) {
        cJSON_AddItemToObject(body, name, list);
        http_respond_json(req, 200, body);
    } else {
        store_down(req);
    }
    cJSON_Delete(body);
}

/* The start of every audit record; you delete it. */
static cJSON *audit_new(struct http_request *req, const char *action, const char *ns,
                        const char *now)
{
    cJSON *audit = cJSON_CreateObject();
    cJSON_AddStringToObject(audit, "action", action);
    cJSON_AddStringToObject(audit, "namespace", ns);
    cJSON_AddStringToObject(audit, "author", author_of(req));
    cJSON_AddStringToObject(audit, "time", now);
    return audit;
}

/* The namespace's schema: 1 and *out, 0 none, -EIO, -EINVAL (stored schema unusable). */
static int load_schema(struct api *a, const char *ns, struct jsonschema **out)
{
    char *text = NULL;
    *out = NULL;
    int rc = store_get_schema(a->redis, ns, &text);
    if (rc <= 0)
        return rc;
    cJSON *j = cJSON_Parse(text);
    free(text);
    char err[256];
    *out = j ? jsonschema_new(j, err, sizeof(err)) : NULL;
    cJSON_Delete(j);
    return *out ? 1 : -EINVAL;
}

/* A stored record's "content" parsed; NULL when absent or unparsable. */
static cJSON *record_doc(const cJSON *rec)
{
    const char *content = json_get_str(rec, "content");
    return content ? cJSON_Parse(content) : NULL;
}

/* The record as answered: metadata plus "config" (masked) instead of "content". */
static cJSON *record_view(const char *ns, const cJSON *rec)
{
    cJSON *o = cJSON_Duplicate(rec, true);
    cJSON *doc = record_doc(rec);
    cJSON_DeleteItemFromObjectCaseSensitive(o, "content");
    cJSON_AddStringToObject(o, "namespace", ns);
    doc_mask(doc);
    cJSON_AddItemToObject(o, "config", doc ? doc : cJSON_CreateObject());
    return o;
}

/* 422 naming the JSON Pointer a schema error starts with ("/a/b: problem"). */
static void schema_problem(struct http_request *req, const char *what, const char *err)
{
    char field[JSONSCHEMA_PATH_MAX];
    size_t n = strcspn(err, ":");
    if (n >= sizeof(field))
        n = sizeof(field) - 1;
    memcpy(field, err, n);
    field[n] = '\0';
    http_respond_problem(req, 422, field, "%s%s", what, err);
}

/* If-Match / If-None-Match: a version as "N", W/"N" or N. 0 or -EINVAL. */
static int parse_etag(const char *v, int64_t *out)
{
    char tmp[32];
    if (str_has_prefix(v, "W/"))
        v += 2;
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, v, n);
    tmp[n] = '\0';
    return str_to_int64(tmp, out) == 0 && *out >= 0 ? 0 : -EINVAL;
}

/* An If-Match header as a version into *base (untouched when absent); else answers 400. */
static int if_match(struct http_request *req, int64_t *base)
{
    const char *im = http_request_header(req, "If-Match");
    if (im && parse_etag(im, base) != 0) {
        http_respond_problem(req, 400, "If-Match", "If-Match must be a version such as \"3\"");
        return -EINVAL;
    }
    return 0;
}

static void set_version_headers(struct http_request *req, int64_t version)
{
    char etag[32], v[24];
    snprintf(etag, sizeof(etag), "\"%lld\"", (long long)version);
    snprintf(v, sizeof(v), "%lld", (long long)version);
    http_response_header(req, "ETag", etag);
    http_response_header(req, "X-Config-Version", v);
}

/* ---- namespaces ---- */

static void handle_list(struct http_request *req, void *ud)
{
    struct api *a = ud;
    respond_list(req, cJSON_CreateObject(), "namespaces", store_namespaces(a->redis));
}

static void handle_get(struct api *a, struct http_request *req, const char *ns)
{
    cJSON *rec = NULL;
    int rc = get_record(a, req, ns, "released", &rec);
    if (rc == 0)
        http_respond_problem(req, 404, "ns", "namespace '%s' has no released version", ns);
    if (rc <= 0)
        return;
    int64_t version = 0;
    json_get_int(rec, "version", &version);
    set_version_headers(req, version);
    const char *inm = http_request_header(req, "If-None-Match");
    int64_t seen;
    if (inm && parse_etag(inm, &seen) == 0 && seen == version) {
        http_respond(req, 304, NULL, NULL, 0);
    } else {
        cJSON *view = record_view(ns, rec);
        http_respond_json(req, 200, view);
        cJSON_Delete(view);
    }
    cJSON_Delete(rec);
}

/* ---- drafts and schemas ---- */

/* Paths that differ between the released document and the draft, for the audit record. */
static cJSON *changed_paths(struct api *a, const char *ns, const cJSON *draft)
{
    cJSON *rec = NULL, *released = NULL;
    if (store_get_record(a->redis, ns, "released", &rec) == 1)
        released = record_doc(rec);
    cJSON *diff = doc_diff(released, draft, a->keyring, ns);
    cJSON *paths = cJSON_CreateArray();
    for (const cJSON *d = diff->child; d; d = d->next)
        cJSON_AddItemToArray(paths, cJSON_CreateString(json_get_str(d, "path")));
    cJSON_Delete(diff);
    cJSON_Delete(released);
    cJSON_Delete(rec);
    return paths;
}

/* The document a "******" secret refers to: the draft, else the released version. */
static cJSON *previous_doc(struct api *a, const char *ns)
{
    cJSON *rec = NULL, *doc = NULL;
    if (store_get_record(a->redis, ns, "draft", &rec) == 1)
        doc = record_doc(rec);
    cJSON_Delete(rec);
    rec = NULL;
    if (!doc && store_get_record(a->redis, ns, "released", &rec) == 1)
        doc = record_doc(rec);
    cJSON_Delete(rec);
    return doc;
}

static void handle_put_draft(struct api *a, struct http_request *req, const char *ns)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[512] = "";
    if (len > CONFIG_DOC_MAX) {
        http_respond_problem(req, 413, "body", "a document is at most %d bytes", CONFIG_DOC_MAX);
        return;
    }
    cJSON *doc = doc_parse(body, len, err, sizeof(err));
    if (!doc) {
        count2(a->m_drafts, ns, "invalid");
        http_respond_problem(req, 400, "body", "not a valid YAML or JSON mapping: %s", err);
        return;
    }
    struct jsonschema *schema = NULL;
    cJSON *prev = NULL, *paths = NULL, *audit = NULL, *answer = NULL;
    char *content = NULL, *audit_json = NULL;
    int rc = load_schema(a, ns, &schema);
    if (rc < 0) {
        store_down(req);
        goto out;
    }
    if (schema) {
        prev = previous_doc(a, ns);
        if (doc_unmask(schema, a->keyring, ns, doc, prev, err, sizeof(err)) != 0 ||
            jsonschema_validate(schema, doc, err, sizeof(err)) != 0) {
            count2(a->m_drafts, ns, "invalid");
            schema_problem(req, "", err);
            goto out;
        }
        if (doc_seal(schema, a->keyring, ns, doc, err, sizeof(err)) != 0) {
            schema_problem(req, "", err);
            goto out;
        }
    }
    size_t clen = 0;
    content = json_print(doc, &clen);
    char checksum[65], now[TIME_RFC3339_LEN];
    doc_checksum(content, clen, checksum);
    now_text(now);
    paths = changed_paths(a, ns, doc);
    audit = audit_new(req, "draft", ns, now);
    cJSON_AddStringToObject(audit, "checksum", checksum);
    cJSON_AddItemReferenceToObject(audit, "changed", paths);
    audit_json = json_print(audit, NULL);
    if (store_put_draft(a->redis, ns, content, checksum, author_of(req), now, audit_json) != 0) {
        store_down(req);
        goto out;
    }
    count2(a->m_drafts, ns, "saved");
    struct log_field f[] = {{"config.namespace", ns}, {"user.name", author_of(req)}};
    log_fields(LOG_LEVEL_INFO, f, 2, "draft of '%s' saved (%d keys changed)", ns,
               cJSON_GetArraySize(paths));
    answer = ns_object(ns);
    cJSON_AddStringToObject(answer, "checksum", checksum);
    cJSON_AddNumberToObject(answer, "base_version", (double)store_current_version(a->redis, ns));
    cJSON_AddItemReferenceToObject(answer, "changed", paths);
    doc_mask(doc);
    cJSON_AddItemReferenceToObject(answer, "draft", doc);
    http_respond_json(req, 200, answer);
out:
    cJSON_Delete(answer);
    cJSON_Delete(audit);
    cJSON_Delete(paths);
    free(audit_json);
    free(content);
    cJSON_Delete(prev);
    jsonschema_free(schema);
    cJSON_Delete(doc);
}

static void handle_put_schema(struct api *a, struct http_request *req, const char *ns)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[512] = "";
    cJSON *j = json_parse(body, len, err, sizeof(err));
    if (!j) {
        http_respond_problem(req, 400, "body", "not JSON: %s", err);
        return;
    }
    struct jsonschema *s = jsonschema_new(j, err, sizeof(err));
    if (!s) {
        schema_problem(req, "not a usable JSON Schema: ", err);
        cJSON_Delete(j);
        return;
    }
    jsonschema_free(s);
    char *text = json_print(j, NULL), now[TIME_RFC3339_LEN];
    now_text(now);
    cJSON *audit = audit_new(req, "schema", ns, now);
    char *audit_json = json_print(audit, NULL);
    if (store_put_schema(a->redis, ns, text, audit_json) != 0) {
        store_down(req);
    } else {
        cJSON *answer = ns_object(ns);
        cJSON_AddItemReferenceToObject(answer, "schema", j);
        http_respond_json(req, 200, answer);
        cJSON_Delete(answer);
    }
    free(audit_json);
    cJSON_Delete(audit);
    free(text);
    cJSON_Delete(j);
}

/* ---- releases ---- */

/* Announces the release; the answer goes out from api_on_delivery. */
static void announce(struct api *a, struct http_request *req, const char *ns, cJSON *answer,
                     const struct store_release *rel, int64_t version)
{
    watch_notify(a->watch, ns, version);
    cJSON *data = cJSON_CreateObject();
    cJSON_AddStringToObject(data, "namespace", ns);
    cJSON_AddNumberToObject(data, "version", (double)version);
    cJSON_AddStringToObject(data, "checksum", rel->checksum);
    cJSON_AddStringToObject(data, "author", rel->author);
    cJSON_AddStringToObject(data, "comment", rel->comment);
    char id[CRYPTO_UUID_LEN], traceparent[TRACE_PARENT_LEN];
    crypto_uuid_v7(id);
    trace_parent_child(http_request_header(req, "traceparent"), traceparent);
    struct cloudevent ce = {.id = id,
                            .source = "/config-center",
                            .type = "config.released",
                            .subject = ns,
                            .time = rel->time,
                            .data = data};
    struct buf b;
    buf_init(&b, CONFIG_DOC_MAX);
    int rc = ce_build(&ce, &b);
    cJSON_Delete(data);
    struct pending *p = xcalloc(1, sizeof(*p));
    p->req = req;
    p->body = answer;
    struct kafka_header h = {"traceparent", traceparent, strlen(traceparent)};
    http_request_suspend(req);
    if (rc == 0)
        rc = kafka_producer_send(a->producer, TOPIC_CONFIG_CHANGES, -1, ns, strlen(ns), b.data,
                                 b.len, &h, 1, p);
    buf_release(&b);
    if (rc != 0) {
        LOG_WARN("cannot announce release %lld of '%s' (%d); services pick it up at re-sync",
                 (long long)version, ns, rc);
        api_on_delivery(p, rc, "not queued", -1, -1);
    }
}

void api_on_delivery(void *opaque, int err, const char *errstr, int32_t partition, int64_t offset)
{
    (void)partition;
    (void)offset;
    struct pending *p = opaque;
    if (!p)
        return;
    cJSON_AddBoolToObject(p->body, "announced", err == 0);
    if (err)
        LOG_WARN("release announcement not acknowledged by kafka: %s", errstr ? errstr : "");
    int64_t version = 0;
    json_get_int(p->body, "version", &version);
    set_version_headers(p->req, version);
    http_respond_json(p->req, 201, p->body);
    cJSON_Delete(p->body);
    free(p);
}

/* 0 and the comment (may be "") from an optional JSON body, else answers 400. */
static int read_body(struct http_request *req, cJSON **out)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[256] = "";
    *out = len ? json_parse(body, len, err, sizeof(err)) : cJSON_CreateObject();
    if (!*out || !cJSON_IsObject(*out)) {
        http_respond_problem(req, 400, "body", "expected a JSON object%s%s", err[0] ? ": " : "",
                             err);
        cJSON_Delete(*out);
        return -EINVAL;
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(*out, "comment");
    if (c && (!cJSON_IsString(c) || strlen(c->valuestring) > COMMENT_MAX)) {
        http_respond_problem(req, 400, "comment", "comment must be a string of at most %d bytes",
                             COMMENT_MAX);
        cJSON_Delete(*out);
        return -EINVAL;
    }
    return 0;
}

static void release_failed(struct http_request *req, int rc, int64_t base, int64_t current)
{
    if (rc == -EAGAIN)
        http_respond_problem(req, 412, "If-Match",
                             "namespace is at version %lld, not %lld: someone released meanwhile",
                             (long long)current, (long long)base);
    else if (rc == -ENOENT)
        http_respond_problem(req, 409, "draft", "there is no draft to release");
    else if (rc == -ESTALE)
        http_respond_problem(req, 409, "draft", "the draft changed during the release; retry");
    else
        store_down(req);
}

static cJSON *release_answer(const char *ns, int64_t version, const struct store_release *rel)
{
    cJSON *o = ns_object(ns);
    cJSON_AddNumberToObject(o, "version", (double)version);
    cJSON_AddStringToObject(o, "checksum", rel->checksum);
    cJSON_AddStringToObject(o, "author", rel->author);
    cJSON_AddStringToObject(o, "time", rel->time);
    cJSON_AddStringToObject(o, "comment", rel->comment);
    if (rel->rollback_of)
        cJSON_AddNumberToObject(o, "rollback_of", (double)rel->rollback_of);
    return o;
}

/* The draft must still satisfy the namespace's schema (it may have changed since). */
static int check_draft(struct api *a, struct http_request *req, const char *ns, const char *content)
{
    struct jsonschema *schema = NULL;
    int rc = load_schema(a, ns, &schema);
    if (rc < 0) {
        store_down(req);
        return rc;
    }
    if (!schema)
        return 0;
    char err[512] = "";
    cJSON *doc = cJSON_Parse(content);
    rc = doc ? config_open_secrets(a->keyring, ns, doc, err, sizeof(err)) : -EINVAL;
    if (rc == 0)
        rc = jsonschema_validate(schema, doc, err, sizeof(err));
    if (rc)
        schema_problem(req, "the draft no longer satisfies the schema: ", err);
    cJSON_Delete(doc);
    jsonschema_free(schema);
    return rc;
}

/*
 * Stores the release of rel->content (a rollback when rel->rollback_of) and
 * announces it, or answers why it could not be stored. Fills checksum, author
 * and time.
 */
static void commit_release(struct api *a, struct http_request *req, struct store_release *rel)
{
    char now[TIME_RFC3339_LEN], checksum[65];
    now_text(now);
    doc_checksum(rel->content, strlen(rel->content), checksum);
    rel->checksum = checksum;
    rel->author = author_of(req);
    rel->time = now;
    int64_t version = 0;
    int rc = store_release(a->redis, rel, &version);
    if (rc) {
        release_failed(req, rc, rel->base, version);
        return;
    }
    struct log_field f[] = {{"config.namespace", rel->ns}, {"user.name", rel->author}};
    if (rel->rollback_of) {
        count2(a->m_releases, rel->ns, "rollback");
        log_fields(LOG_LEVEL_INFO, f, 2, "rolled '%s' back to version %lld as version %lld",
                   rel->ns, (long long)rel->rollback_of, (long long)version);
    } else {
        count2(a->m_releases, rel->ns, "release");
        log_fields(LOG_LEVEL_INFO, f, 2, "released version %lld of '%s'", (long long)version,
                   rel->ns);
    }
    announce(a, req, rel->ns, release_answer(rel->ns, version, rel), rel, version);
}

static void handle_release(struct api *a, struct http_request *req, const char *ns)
{
    int64_t base = 0;
    if (!http_request_header(req, "If-Match")) {
        http_respond_problem(req, 428, "If-Match",
                             "If-Match with the version the draft is based on is required");
        return;
    }
    if (if_match(req, &base) != 0)
        return;
    cJSON *body = NULL, *draft = NULL;
    if (read_body(req, &body) != 0)
        return;
    int rc = get_record(a, req, ns, "draft", &draft);
    const char *content = draft ? json_get_str(draft, "content") : NULL;
    if (rc >= 0 && !content) {
        http_respond_problem(req, 409, "draft", "there is no draft to release");
    } else if (rc >= 0 && check_draft(a, req, ns, content) == 0) {
        const char *comment = json_get_str(body, "comment");
        struct store_release rel = {
            .ns = ns, .base = base, .content = content, .comment = comment ? comment : ""};
        commit_release(a, req, &rel);
    }
    cJSON_Delete(draft);
    cJSON_Delete(body);
}

static void handle_rollback(struct api *a, struct http_request *req, const char *ns)
{
    cJSON *body = NULL, *target = NULL;
    if (read_body(req, &body) != 0)
        return;
    int64_t to = 0, current = store_current_version(a->redis, ns), base = current;
    char suffix[40];
    if (current < 0) {
        store_down(req);
        goto out;
    }
    if (json_get_int(body, "to_version", &to) != 0 || to < 1 || to > current) {
        http_respond_problem(req, current ? 400 : 404, "to_version",
                             "to_version must be a released version, 1..%lld", (long long)current);
        goto out;
    }
    if (if_match(req, &base) != 0)
        goto out;
    version_suffix(to, suffix);
    int rc = get_record(a, req, ns, suffix, &target);
    const char *content = target ? json_get_str(target, "content") : NULL;
    if (rc < 0)
        goto out;
    if (!content) {
        http_respond_problem(req, 404, "to_version", "version %lld is not stored", (long long)to);
        goto out;
    }
    char comment[COMMENT_MAX + 64];
    const char *c = json_get_str(body, "comment");
    snprintf(comment, sizeof(comment), "%s", c ? c : "");
    if (!c)
        snprintf(comment, sizeof(comment), "rollback to version %lld", (long long)to);
    struct store_release rel = {
        .ns = ns, .base = base, .content = content, .comment = comment, .rollback_of = to};
    commit_release(a, req, &rel);
out:
    cJSON_Delete(target);
    cJSON_Delete(body);
}

/* ---- history, diff, audit ---- */

static int query_int(struct http_request *req, const char *name, int64_t def, int64_t lo,
                     int64_t hi, int64_t *out)
{
    const char *v = http_request_query(req, name);
    *out = def;
    if (v && (str_to_int64(v, out) != 0 || *out < lo || *out > hi)) {
        http_respond_problem(req, 400, name, "%s must be a whole number in %lld..%lld", name,
                             (long long)lo, (long long)hi);
        return -EINVAL;
    }
    return 0;
}

static void handle_history(struct api *a, struct http_request *req, const char *ns)
{
    int64_t limit, current = store_current_version(a->redis, ns);
    if (query_int(req, "limit", HISTORY_DEFAULT, 1, HISTORY_MAX, &limit) != 0)
        return;
    cJSON *body = ns_object(ns);
    cJSON_AddNumberToObject(body, "version", (double)current);
    respond_list(req, body, "releases",
                 current < 0 ? NULL : store_history(a->redis, ns, current, (int)limit));
}

static void handle_version(struct api *a, struct http_request *req, const char *ns)
{
    int64_t v;
    const char *vs = http_request_param(req, "v");
    if (!vs || str_to_int64(vs, &v) != 0 || v < 1) {
        http_respond_problem(req, 400, "v", "the version must be a whole number >= 1");
        return;
    }
    char suffix[40];
    version_suffix(v, suffix);
    cJSON *rec = NULL;
    int rc = get_record(a, req, ns, suffix, &rec);
    if (rc == 0)
        http_respond_problem(req, 404, "v", "'%s' has no version %lld", ns, (long long)v);
    if (rc <= 0)
        return;
    set_version_headers(req, v);
    cJSON *view = record_view(ns, rec);
    http_respond_json(req, 200, view);
    cJSON_Delete(view);
    cJSON_Delete(rec);
}

/* The document of version v (0 = empty). 1 ok, 0 not found, -EIO. */
static int version_doc(struct api *a, const char *ns, int64_t v, cJSON **out)
{
    *out = NULL;
    if (v == 0)
        return 1;
    char suffix[40];
    version_suffix(v, suffix);
    cJSON *rec = NULL;
    int rc = store_get_record(a->redis, ns, suffix, &rec);
    if (rc == 1)
        *out = record_doc(rec);
    cJSON_Delete(rec);
    return rc;
}

static void handle_diff(struct api *a, struct http_request *req, const char *ns)
{
    int64_t current = store_current_version(a->redis, ns), from, to;
    if (current < 0) {
        store_down(req);
        return;
    }
    if (query_int(req, "to", current, 0, current, &to) != 0 ||
        query_int(req, "from", to > 0 ? to - 1 : 0, 0, current, &from) != 0)
        return;
    cJSON *da = NULL, *db = NULL;
    int ra = version_doc(a, ns, from, &da), rb = version_doc(a, ns, to, &db);
    if (ra < 0 || rb < 0) {
        store_down(req);
    } else if (ra == 0 || rb == 0) {
        http_respond_problem(req, 404, ra == 0 ? "from" : "to", "version not stored");
    } else {
        cJSON *body = ns_object(ns);
        cJSON_AddNumberToObject(body, "from", (double)from);
        cJSON_AddNumberToObject(body, "to", (double)to);
        cJSON_AddItemToObject(body, "changes", doc_diff(da, db, a->keyring, ns));
        http_respond_json(req, 200, body);
        cJSON_Delete(body);
    }
    cJSON_Delete(da);
    cJSON_Delete(db);
}

static void handle_audit(struct http_request *req, void *ud)
{
    struct api *a = ud;
    const char *ns = http_request_query(req, "ns");
    int64_t limit;
    if (!ns || !config_ns_valid(ns)) {
        http_respond_problem(req, 400, "ns", "ns must name a namespace");
        return;
    }
    if (query_int(req, "limit", HISTORY_DEFAULT, 1, STORE_AUDIT_MAX, &limit) != 0)
        return;
    respond_list(req, ns_object(ns), "records", store_audit(a->redis, ns, (int)limit));
}

/* ---- lifecycle ---- */

int api_register_routes(struct api *a)
{
    struct http_server *h = service_http(a->svc);
    static const struct {
        const char *method, *path;
        ns_handler_fn fn;
    } routes[NS_ROUTES] = {
        {"GET", "/v1/namespaces/{ns}", handle_get},
        {"PUT", "/v1/namespaces/{ns}/draft", handle_put_draft},
        {"PUT", "/v1/namespaces/{ns}/schema", handle_put_schema},
        {"POST", "/v1/namespaces/{ns}/releases", handle_release},
        {"GET", "/v1/namespaces/{ns}/releases", handle_history},
        {"GET", "/v1/namespaces/{ns}/releases/{v}", handle_version},
        {"POST", "/v1/namespaces/{ns}/rollback", handle_rollback},
        {"GET", "/v1/namespaces/{ns}/diff", handle_diff},
    };
    int rc = http_server_route(h, "GET", "/v1/namespaces", handle_list, a);
    for (size_t i = 0; rc == 0 && i < NS_ROUTES; i++) {
        a->ns_routes[i] = (struct ns_route){a, routes[i].fn};
        rc = http_server_route(h, routes[i].method, routes[i].path, with_ns, &a->ns_routes[i]);
    }
    if (rc == 0)
        rc = http_server_route(h, "GET", "/v1/audit", handle_audit, a);
    if (rc == 0)
        rc = http_server_route(h, "GET", "/v1/watch", watch_handle, a->watch);
    return rc;
}

struct api *api_new(struct service *svc, struct watch *watch, char *errbuf, size_t errsize)
{
    struct api *a = xcalloc(1, sizeof(*a));
    a->svc = svc;
    a->redis = service_redis(svc);
    a->watch = watch;
    a->producer = service_producer(svc);
    a->keyring = keyring_from_env("SECRETS_KEY", errbuf, errsize);
    if (!a->keyring) {
        free(a);
        return NULL;
    }
    struct metrics *m = service_metrics(svc);
    const char *ns_action[] = {"namespace", "action"};
    const char *ns_outcome[] = {"namespace", "outcome"};
    a->m_releases = metrics_counter(m, "config_releases_total",
                                    "Releases and rollbacks by namespace", 2, ns_action);
    a->m_drafts = metrics_counter(m, "config_drafts_total", "Draft writes by namespace and outcome",
                                  2, ns_outcome);
    return a;
}

void api_free(struct api *a)
{
    if (!a)
        return;
    keyring_free(a->keyring);
    free(a);
}
