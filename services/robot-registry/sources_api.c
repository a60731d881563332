/*
 * Vendor sources: the /v1/sources API. Tokens and webhook secrets are sealed
 * at rest (libcommon sources_store) and never answered or logged; a rotation
 * keeps the old secret valid for registry.secret_grace_s. Webhook registration
 * at the vendor and robot sync run on the registry's worker thread through the
 * libcommon http_client (timeouts, retries, circuit breaker). Every change is
 * announced on robot.registry.v1 as source.updated / source.deleted.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "buf.h"
#include "crypto.h"
#include "http_client.h"
#include "http_server.h"
#include "json.h"
#include "log.h"
#include "redis.h"
#include "registry.h"
#include "sources.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define URL_MAX        400
#define TOKEN_MAX      1024
#define SECRET_BYTES   32
#define MAX_SECRETS    8
#define CAS_ATTEMPTS   5
#define IDENT_MAX      129
#define SUB_ID_MAX     200
#define PAGE_TOKEN_MAX 1024

/* Fields of source:{id} the libcommon loader does not return. */
struct source_meta {
    char webhook_id[SUB_ID_MAX + 1];
    char created_at[TIME_RFC3339_LEN];
    char updated_at[TIME_RFC3339_LEN];
    char updated_by[IDENT_MAX];
};

static int meta_load(struct redis *r, const char *id, struct source_meta *m)
{
    char key[SOURCE_ID_MAX + 8];
    memset(m, 0, sizeof(*m));
    snprintf(key, sizeof(key), "source:%s", id);
    redisReply *rep = redis_cmd(r, "HMGET", key, "webhook_id", "created_at", "updated_at",
                                "updated_by", (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 4) {
        if (rep)
            freeReplyObject(rep);
        return -EIO;
    }
    char *dst[] = {m->webhook_id, m->created_at, m->updated_at, m->updated_by};
    size_t sizes[] = {sizeof(m->webhook_id), sizeof(m->created_at), sizeof(m->updated_at),
                      sizeof(m->updated_by)};
    for (size_t i = 0; i < 4; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING)
            str_copy(dst[i], rep->element[i]->str, sizes[i]);
    freeReplyObject(rep);
    return 0;
}

/* What GET shows: never a token or a secret. */
static cJSON *source_view(const struct source *s, const struct source_meta *m)
{
    cJSON *v = cJSON_CreateObject();
    cJSON_AddStringToObject(v, "id", s->id);
    cJSON_AddStringToObject(v, "base_url", s->base_url);
    cJSON_AddStringToObject(v, "signature_scheme", source_scheme_name(s->scheme));
    cJSON_AddBoolToObject(v, "has_api_token", s->api_token && *s->api_token);
    cJSON *secs = cJSON_AddArrayToObject(v, "webhook_secrets");
    int64_t now = time_now_ms();
    for (size_t i = 0; i < s->nsecrets; i++) {
        if (!source_secret_active(&s->secrets[i], now))
            continue;
        cJSON *it = cJSON_CreateObject();
        if (s->secrets[i].expires_at_ms) {
            char t[TIME_RFC3339_LEN];
            time_format_rfc3339(s->secrets[i].expires_at_ms, t, sizeof(t));
            cJSON_AddStringToObject(it, "expires_at", t);
        } else {
            cJSON_AddNullToObject(it, "expires_at");
        }
        cJSON_AddItemToArray(secs, it);
    }
    if (m->webhook_id[0])
        cJSON_AddStringToObject(v, "webhook_subscription_id", m->webhook_id);
    else
        cJSON_AddNullToObject(v, "webhook_subscription_id");
    cJSON_AddNumberToObject(v, "version", (double)s->version);
    cJSON_AddStringToObject(v, "created_at", m->created_at);
    cJSON_AddStringToObject(v, "updated_at", m->updated_at);
    cJSON_AddStringToObject(v, "updated_by", m->updated_by);
    return v;
}

/* Answers a load failure; true when src was loaded. */
static bool load_or_respond(struct registry *reg, struct http_request *req, const char *id,
                            struct source **src)
{
    int rc = sources_load(registry_redis(reg), registry_keyring(reg), id, src);
    if (rc == 0)
        return true;
    if (rc == -ENOENT)
        http_respond_problem(req, 404, "id", "no vendor source with this id");
    else if (rc == -EIO)
        http_respond_problem(req, 503, NULL, "redis is unavailable");
    else
        http_respond_problem(req, 500, NULL,
                             "the stored source cannot be decrypted with SECRETS_KEY (%s)",
                             rc == -EBADMSG ? "wrong key" : "malformed record");
    if (rc != -ENOENT && rc != -EIO)
        LOG_ERROR("cannot open source '%s': %s", id, rc == -EBADMSG ? "wrong key" : "malformed");
    return false;
}

/* A fresh "whsec_" secret as a source_secret (key owned by the caller's source). */
static void new_secret(struct source_secret *out)
{
    out->key = xmalloc(SECRET_BYTES);
    out->keylen = SECRET_BYTES;
    out->expires_at_ms = 0;
    crypto_random_bytes(out->key, SECRET_BYTES);
}

/* Puts sec first; the others expire within the grace period (earlier expiries stay). */
static void secrets_prepend(struct source *s, struct source_secret sec, int64_t grace_ms)
{
    int64_t now = time_now_ms(), until = now + grace_ms;
    size_t keep = 0;
    struct source_secret *out = xcalloc(MAX_SECRETS + 1, sizeof(*out));
    out[keep++] = sec;
    for (size_t i = 0; i < s->nsecrets; i++) {
        struct source_secret *o = &s->secrets[i];
        if (!source_secret_active(o, now) || keep >= MAX_SECRETS) {
            OPENSSL_cleanse(o->key, o->keylen);
            free(o->key);
            continue;
        }
        if (o->expires_at_ms == 0 || o->expires_at_ms > until)
            o->expires_at_ms = until;
        out[keep++] = *o;
    }
    free(s->secrets);
    s->secrets = out;
    s->nsecrets = keep;
}

/*
 * The outbox entry of a source event (key = source id) into fields[6]; the
 * event is yours to free. NULL when it cannot be built.
 */
static char *source_event(struct http_request *req, const char *id, const char *type,
                          const cJSON *view, char tp[TRACE_PARENT_LEN], const char *fields[6])
{
    size_t len = 0;
    char *ev = registry_event(type, id, view, &len);
    registry_traceparent(req, tp);
    fields[0] = "key";
    fields[1] = id;
    fields[2] = "value";
    fields[3] = ev;
    fields[4] = "traceparent";
    fields[5] = tp;
    return ev;
}

/*
 * Stores s together with its source.updated event (one script, so the event
 * cannot be lost) and answers with its view (plus the members of `extra`,
 * moved in) once the event is announced. 0 if stored.
 */
static int store_and_respond(struct registry *reg, struct http_request *req, struct source *s,
                             int64_t expected, const char *webhook_id, unsigned status,
                             cJSON *extra, const char *by)
{
    struct redis *r = registry_redis(reg);
    struct source_meta m;
    if (meta_load(r, s->id, &m) != 0) {
        cJSON_Delete(extra);
        http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was written");
        return -EIO;
    }
    /* The view as the write leaves it, computed first so the script can store its event. */
    int64_t now = time_now_ms();
    char now_s[TIME_RFC3339_LEN];
    time_format_rfc3339(now, now_s, sizeof(now_s));
    if (!m.created_at[0] || expected == 0)
        str_copy(m.created_at, now_s, sizeof(m.created_at));
    str_copy(m.updated_at, now_s, sizeof(m.updated_at));
    str_copy(m.updated_by, by ? by : "", sizeof(m.updated_by));
    if (webhook_id)
        str_copy(m.webhook_id, webhook_id, sizeof(m.webhook_id));
    int64_t prev_version = s->version;
    s->version = expected + 1;
    cJSON *view = source_view(s, &m);
    s->version = prev_version;

    char tp[TRACE_PARENT_LEN];
    const char *fields[6];
    char *ev = source_event(req, s->id, "source.updated", view, tp, fields);
    struct source_outbox ob = {.stream = REGISTRY_OUTBOX_KEY, .fields = fields, .nfields = 6};
    struct source_store_opts o = {.expected_version = expected,
                                  .updated_by = by,
                                  .webhook_id = webhook_id,
                                  .now_ms = now,
                                  .outbox = &ob};
    int64_t v = 0;
    int rc = ev ? sources_store(r, registry_keyring(reg), s, &o, &v) : -EIO;
    free(ev);
    if (rc == -ESTALE) {
        cJSON_Delete(extra);
        cJSON_Delete(view);
        http_respond_problem(req, 412, "If-Match",
                             "the source is at version %lld, not %lld; fetch it again",
                             (long long)v, (long long)expected);
        return rc;
    }
    if (rc != 0) {
        cJSON_Delete(extra);
        cJSON_Delete(view);
        http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was written");
        return rc;
    }
    LOG_INFO("source '%s' stored at version %lld by '%s'", s->id, (long long)v, by);
    registry_count_change(reg, "source", "updated");
    cJSON *resp = view;
    if (extra) {
        cJSON *it = extra->child;
        while (it) {
            cJSON *next = it->next;
            cJSON_AddItemToObject(resp, it->string, cJSON_DetachItemViaPointer(extra, it));
            it = next;
        }
        cJSON_Delete(extra);
    }
    char *body = json_print(resp, NULL);
    /* the response may hold a new secret: wipe the tree's copy */
    const char *sec = json_get_str(resp, "webhook_secret");
    if (sec)
        OPENSSL_cleanse((void *)sec, strlen(sec));
    cJSON_Delete(resp);
    registry_respond_announced(reg, req, ob.id, status, body, NULL);
    return 0;
}

static bool source_path_id(struct http_request *req, const char **id)
{
    *id = http_request_param(req, "id");
    if (source_id_valid(*id))
        return true;
    http_respond_problem(req, 400, "id", "source ids are 1-64 characters of [a-z0-9_-]");
    return false;
}

static bool url_valid(const char *u)
{
    return (str_has_prefix(u, "http://") || str_has_prefix(u, "https://")) &&
           strlen(u) <= URL_MAX && strlen(u) > 8 && !strpbrk(u, " \t\r\n\"<>\\^`{|}");
}

/* PUT /v1/sources/{id} {base_url, api_token, signature_scheme, webhook_secret?} */
static void handle_put(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    const char *id;
    if (!source_path_id(req, &id))
        return;
    cJSON *body = registry_body_object(req);
    if (!body)
        return;
    static const char *const known[] = {"base_url", "api_token", "signature_scheme",
                                        "webhook_secret", "id"};
    const cJSON *it;
    struct source *cur = NULL;
    cJSON_ArrayForEach(it, body)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            ok = ok || strcmp(it->string, known[i]) == 0;
        if (!ok) {
            http_respond_problem(req, 400, it->string, "unknown field");
            goto out;
        }
    }
    const char *bid = json_get_str(body, "id");
    const char *base_url = json_get_str(body, "base_url");
    const char *token = json_get_str(body, "api_token");
    const char *scheme_s = json_get_str(body, "signature_scheme");
    const char *secret = json_get_str(body, "webhook_secret");
    enum source_scheme scheme = SOURCE_SCHEME_STANDARD_WEBHOOKS;
    if (cJSON_GetObjectItemCaseSensitive(body, "id") && (!bid || strcmp(bid, id) != 0)) {
        http_respond_problem(req, 400, "id", "id must equal the id in the path");
        goto out;
    }
    if (!base_url || !url_valid(base_url)) {
        http_respond_problem(req, 400, "base_url",
                             "base_url must be an http(s) URL of at most %d characters", URL_MAX);
        goto out;
    }
    if (cJSON_GetObjectItemCaseSensitive(body, "api_token") &&
        (!token || !*token || strlen(token) > TOKEN_MAX)) {
        http_respond_problem(req, 400, "api_token", "api_token must be a non-empty string");
        goto out;
    }
    if (cJSON_GetObjectItemCaseSensitive(body, "signature_scheme") &&
        source_scheme_parse(scheme_s, &scheme) != 0) {
        http_respond_problem(req, 400, "signature_scheme",
                             "signature_scheme must be standard-webhooks or github-sha256");
        goto out;
    }
    struct source_secret given = {0};
    if (secret) {
        size_t len = strlen(secret);
        given.key = xmalloc(len + 1);
        if (!str_has_prefix(secret, "whsec_") || len > 256 ||
            crypto_base64_decode(secret + 6, len - 6, given.key, len, &given.keylen) != 0 ||
            given.keylen < 16) {
            free(given.key);
            http_respond_problem(req, 400, "webhook_secret",
                                 "webhook_secret must be whsec_ + base64 of at least 16 bytes");
            goto out;
        }
    }

    int64_t if_match = 0;
    const char *im = http_request_header(req, "If-Match");
    const char *inm = http_request_header(req, "If-None-Match");
    if (im) {
        char b[32];
        str_copy(b, im[0] == '"' ? im + 1 : im, sizeof(b));
        b[strcspn(b, "\"")] = '\0';
        if (str_to_int64(b, &if_match) != 0 || if_match < 1) {
            free(given.key);
            http_respond_problem(req, 400, "If-Match", "If-Match must be a version like \"3\"");
            goto out;
        }
    }
    int rc = sources_load(registry_redis(reg), registry_keyring(reg), id, &cur);
    if (rc != 0 && rc != -ENOENT) {
        free(given.key);
        load_or_respond(reg, req, id, &cur);
        goto out;
    }
    if (cur && inm && strcmp(inm, "*") == 0) {
        free(given.key);
        http_respond_problem(req, 409, "id", "a source with this id already exists");
        goto out;
    }
    if (!cur && !token) {
        free(given.key);
        http_respond_problem(req, 400, "api_token", "api_token is required for a new source");
        goto out;
    }
    if (im && (!cur || cur->version != if_match)) {
        free(given.key);
        http_respond_problem(req, 412, "If-Match", "the source is at version %lld, not %lld",
                             (long long)(cur ? cur->version : 0), (long long)if_match);
        goto out;
    }
    bool created = !cur;
    if (!cur) {
        cur = xcalloc(1, sizeof(*cur));
        cur->id = xstrdup(id);
    }
    free(cur->base_url);
    cur->base_url = xstrdup(base_url);
    cur->scheme = scheme;
    if (token) {
        if (cur->api_token) {
            OPENSSL_cleanse(cur->api_token, strlen(cur->api_token));
            free(cur->api_token);
        }
        cur->api_token = xstrdup(token);
    }
    cJSON *extra = NULL;
    if (given.key) {
        secrets_prepend(cur, given, registry_settings(reg)->secret_grace_s * 1000);
    } else if (cur->nsecrets == 0) {
        /* A new source gets a secret to configure at the vendor, shown only now. */
        struct source_secret fresh;
        new_secret(&fresh);
        secrets_prepend(cur, fresh, registry_settings(reg)->secret_grace_s * 1000);
        char *text = source_secret_text(&cur->secrets[0]);
        extra = cJSON_CreateObject();
        cJSON_AddStringToObject(extra, "webhook_secret", text);
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    store_and_respond(reg, req, cur, created ? 0 : cur->version, NULL, created ? 201 : 200, extra,
                      registry_identity(req));
out:
    source_free(cur);
    cJSON_Delete(body);
}

static void handle_get(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    const char *id;
    struct source *s = NULL;
    struct source_meta m;
    if (!source_path_id(req, &id) || !load_or_respond(reg, req, id, &s))
        return;
    if (meta_load(registry_redis(reg), id, &m) != 0) {
        source_free(s);
        http_respond_problem(req, 503, NULL, "redis is unavailable");
        return;
    }
    cJSON *view = source_view(s, &m);
    char etag[32];
    snprintf(etag, sizeof(etag), "\"%lld\"", (long long)s->version);
    http_response_header(req, "ETag", etag);
    http_respond_json(req, 200, view);
    cJSON_Delete(view);
    source_free(s);
}

static void handle_list(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    redisReply *ids = redis_cmd(registry_redis(reg), "SMEMBERS", "sources", (char *)NULL);
    if (!ids || ids->type != REDIS_REPLY_ARRAY) {
        if (ids)
            freeReplyObject(ids);
        http_respond_problem(req, 503, NULL, "redis is unavailable");
        return;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(out, "sources");
    for (size_t i = 0; i < ids->elements; i++) {
        struct source *s = NULL;
        struct source_meta m;
        if (ids->element[i]->type != REDIS_REPLY_STRING ||
            sources_load(registry_redis(reg), registry_keyring(reg), ids->element[i]->str, &s) != 0)
            continue;
        if (meta_load(registry_redis(reg), s->id, &m) == 0)
            cJSON_AddItemToArray(arr, source_view(s, &m));
        source_free(s);
    }
    freeReplyObject(ids);
    http_respond_json(req, 200, out);
    cJSON_Delete(out);
}

static void handle_delete(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    const char *id;
    if (!source_path_id(req, &id))
        return;
    cJSON *view = cJSON_CreateObject();
    cJSON_AddStringToObject(view, "id", id);
    cJSON_AddBoolToObject(view, "deleted", true);
    cJSON_AddStringToObject(view, "updated_by", registry_identity(req));
    char tp[TRACE_PARENT_LEN];
    const char *fields[6];
    char *ev = source_event(req, id, "source.deleted", view, tp, fields);
    cJSON_Delete(view);
    struct source_outbox ob = {.stream = REGISTRY_OUTBOX_KEY, .fields = fields, .nfields = 6};
    int rc = ev ? sources_delete_outbox(registry_redis(reg), id, &ob) : -EIO;
    free(ev);
    if (rc == -ENOENT) {
        http_respond_problem(req, 404, "id", "no vendor source with this id");
        return;
    }
    if (rc != 0) {
        http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was deleted");
        return;
    }
    LOG_INFO("source '%s' deleted by '%s'", id, registry_identity(req));
    registry_count_change(reg, "source", "deleted");
    registry_respond_announced(reg, req, ob.id, 204, NULL, NULL);
}

/* POST /v1/sources/{id}/secrets:rotate: a new secret first, the old ones expire after grace. */
static void handle_rotate(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    const char *id;
    struct source *s = NULL;
    if (!source_path_id(req, &id) || !load_or_respond(reg, req, id, &s))
        return;
    int64_t grace_ms = registry_settings(reg)->secret_grace_s * 1000;
    struct source_secret fresh;
    new_secret(&fresh);
    char *text = source_secret_text(&fresh);
    secrets_prepend(s, fresh, grace_ms);
    cJSON *extra = cJSON_CreateObject();
    cJSON_AddStringToObject(extra, "webhook_secret", text);
    char until[TIME_RFC3339_LEN];
    time_format_rfc3339(time_now_ms() + grace_ms, until, sizeof(until));
    cJSON_AddStringToObject(extra, "previous_secrets_valid_until", until);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    store_and_respond(reg, req, s, s->version, NULL, 200, extra, registry_identity(req));
    source_free(s);
}

/* ---- vendor calls (worker thread) ---- */

enum vendor_op { OP_REGISTER, OP_UNREGISTER, OP_SYNC };

struct vendor_job {
    enum vendor_op op;
    char id[SOURCE_ID_MAX + 1];
    char by[IDENT_MAX];
};

static const char *op_name(enum vendor_op op)
{
    return op == OP_REGISTER ? "register" : op == OP_UNREGISTER ? "unregister" : "sync";
}

/* The vendor URL for path under the source's base URL (no doubled slash). */
static char *vendor_url(const struct source *s, const char *path)
{
    size_t n = strlen(s->base_url);
    while (n > 0 && s->base_url[n - 1] == '/')
        n--;
    return xasprintf("%.*s%s", (int)n, s->base_url, path);
}

/* Answers a failed vendor call: 504 slow, 502 down or answering 5xx, 422 refused (4xx). */
static void respond_vendor_error(struct registry *reg, struct http_request *req, enum vendor_op op,
                                 int rc, const struct http_client_response *resp)
{
    const char *what = op_name(op);
    if (rc == HTTP_CLIENT_ERR_TIMEOUT) {
        registry_count_vendor(reg, what, "timeout");
        http_respond_problem(req, 504, NULL, "the vendor did not answer in time (%d attempts)",
                             resp->attempts);
    } else if (rc != 0) {
        registry_count_vendor(reg, what, "unavailable");
        http_respond_problem(req, 502, NULL, "the vendor cannot be reached: %s",
                             http_client_strerror(rc));
    } else if (resp->status >= 500 || resp->status == 429) {
        registry_count_vendor(reg, what, "unavailable");
        http_respond_problem(req, 502, NULL, "the vendor answered %ld after %d attempts",
                             resp->status, resp->attempts);
    } else {
        registry_count_vendor(reg, what, "refused");
        const char *field = resp->status == 401 || resp->status == 403 ? "api_token"
                            : resp->status == 404                      ? "base_url"
                                                                       : "vendor";
        http_respond_problem(req, 422, field, "the vendor refused the request with %ld",
                             resp->status);
    }
}

static bool vendor_ok(int rc, const struct http_client_response *resp)
{
    return rc == 0 && resp->status >= 200 && resp->status < 300;
}

static char *ingest_url(const struct registry_settings *set, const char *id)
{
    const char *at = strstr(set->public_ingest_url, "{source}");
    return xasprintf("%.*s%s%s", (int)(at - set->public_ingest_url), set->public_ingest_url, id,
                     at + strlen("{source}"));
}

static void do_register(struct registry *reg, struct http_request *req, const struct vendor_job *j)
{
    struct source *s = NULL;
    struct source_meta m;
    if (!load_or_respond(reg, req, j->id, &s))
        return;
    char *url = NULL, *body = NULL;
    cJSON *doc = NULL, *reqdoc = NULL;
    struct http_client_response resp = {0};
    if (meta_load(registry_redis(reg), j->id, &m) != 0) {
        http_respond_problem(req, 503, NULL, "redis is unavailable");
        goto out;
    }
    if (m.webhook_id[0]) {
        http_respond_problem(req, 409, "webhook_subscription_id",
                             "already registered at the vendor as '%s'; DELETE it first",
                             m.webhook_id);
        goto out;
    }
    if (!s->api_token) {
        http_respond_problem(req, 422, "api_token", "the source has no api_token");
        goto out;
    }
    reqdoc = cJSON_CreateObject();
    char *iu = ingest_url(registry_settings(reg), j->id);
    cJSON_AddStringToObject(reqdoc, "url", iu);
    free(iu);
    cJSON *types = cJSON_AddArrayToObject(reqdoc, "event_types");
    char list[sizeof(registry_settings(reg)->event_types)];
    str_copy(list, registry_settings(reg)->event_types, sizeof(list));
    for (char *save = NULL, *t = strtok_r(list, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
        cJSON_AddItemToArray(types, cJSON_CreateString(t));
    body = json_print(reqdoc, NULL);
    url = vendor_url(s, "/v1/webhooks");
    struct http_client_request hr = {.method = "POST",
                                     .url = url,
                                     .bearer_token = s->api_token,
                                     .body = body,
                                     .len = strlen(body),
                                     .max_retries = -1};
    int rc = http_client_do(registry_vendor(reg), &hr, &resp);
    if (!vendor_ok(rc, &resp)) {
        respond_vendor_error(reg, req, OP_REGISTER, rc, &resp);
        goto out;
    }
    doc = json_parse(resp.body, resp.len, NULL, 0);
    const char *sub = json_get_str(doc, "id");
    const char *secret = json_get_str(doc, "secret");
    struct source_secret sec = {0};
    size_t slen = secret ? strlen(secret) : 0;
    if (sub && *sub && strlen(sub) <= SUB_ID_MAX && secret && str_has_prefix(secret, "whsec_") &&
        slen <= 256) {
        sec.key = xmalloc(slen);
        if (crypto_base64_decode(secret + 6, slen - 6, sec.key, slen, &sec.keylen) != 0 ||
            sec.keylen == 0) {
            free(sec.key);
            sec.key = NULL;
        }
    }
    if (!sec.key) {
        registry_count_vendor(reg, "register", "invalid_answer");
        http_respond_problem(req, 502, NULL,
                             "the vendor's answer lacks a subscription id or a whsec_ secret");
        goto out;
    }
    registry_count_vendor(reg, "register", "ok");
    secrets_prepend(s, sec, registry_settings(reg)->secret_grace_s * 1000);
    cJSON *extra = cJSON_CreateObject();
    cJSON_AddStringToObject(extra, "registered_url", json_get_str(reqdoc, "url"));
    LOG_INFO("source '%s' registered at the vendor as '%s'", j->id, sub);
    if (store_and_respond(reg, req, s, s->version, sub, 201, extra, j->by) != 0) {
        /* Not stored: take the subscription back so the vendor does not sign with a lost secret. */
        struct http_client_response dresp = {0};
        char *durl = xasprintf("%s/%s", url, sub);
        struct http_client_request dr = {
            .method = "DELETE", .url = durl, .bearer_token = s->api_token, .max_retries = -1};
        if (!vendor_ok(http_client_do(registry_vendor(reg), &dr, &dresp), &dresp))
            LOG_WARN("cannot withdraw unstored vendor subscription '%s' of source '%s'", sub,
                     j->id);
        http_client_response_release(&dresp);
        free(durl);
    }
out:
    if (doc) {
        const char *sc = json_get_str(doc, "secret");
        if (sc)
            OPENSSL_cleanse((void *)sc, strlen(sc));
    }
    if (resp.body)
        OPENSSL_cleanse(resp.body, resp.len);
    http_client_response_release(&resp);
    cJSON_Delete(doc);
    cJSON_Delete(reqdoc);
    free(body);
    free(url);
    source_free(s);
}

static void do_unregister(struct registry *reg, struct http_request *req,
                          const struct vendor_job *j)
{
    struct source *s = NULL;
    struct source_meta m;
    if (!load_or_respond(reg, req, j->id, &s))
        return;
    struct http_client_response resp = {0};
    char *url = NULL;
    if (meta_load(registry_redis(reg), j->id, &m) != 0) {
        http_respond_problem(req, 503, NULL, "redis is unavailable");
        goto out;
    }
    if (!m.webhook_id[0]) {
        http_respond_problem(req, 404, "webhook_subscription_id",
                             "the source is not registered at the vendor");
        goto out;
    }
    char path[SUB_ID_MAX * 3 + 16];
    struct buf p;
    buf_init(&p, sizeof(path));
    buf_append_str(&p, "/v1/webhooks/");
    for (const char *c = m.webhook_id; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '-' || *c == '_' || *c == '.' || *c == '~')
            buf_append(&p, c, 1);
        else
            buf_appendf(&p, "%%%02X", (unsigned char)*c);
    }
    url = vendor_url(s, p.data);
    buf_release(&p);
    struct http_client_request hr = {
        .method = "DELETE", .url = url, .bearer_token = s->api_token, .max_retries = -1};
    int rc = http_client_do(registry_vendor(reg), &hr, &resp);
    if (!vendor_ok(rc, &resp) && !(rc == 0 && resp.status == 404)) {
        respond_vendor_error(reg, req, OP_UNREGISTER, rc, &resp);
        goto out;
    }
    registry_count_vendor(reg, "unregister", "ok");
    LOG_INFO("source '%s' unregistered at the vendor", j->id);
    store_and_respond(reg, req, s, s->version, "", 200, NULL, j->by);
out:
    http_client_response_release(&resp);
    free(url);
    source_free(s);
}

/* Appends s URL-encoded to b. */
static void append_escaped(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~')
            buf_append(b, s, 1);
        else
            buf_appendf(b, "%%%02X", c);
    }
}

/*
 * Fetches every page before writing anything, so a vendor failure half way
 * leaves the registry untouched. 0 with *robots (yours), or the answer given.
 */
static int fetch_all(struct registry *reg, struct http_request *req, const struct source *s,
                     cJSON **robots)
{
    const struct registry_settings *set = registry_settings(reg);
    cJSON *all = cJSON_CreateArray();
    char token[PAGE_TOKEN_MAX + 1] = "";
    int64_t max_pages = set->sync_max_robots / set->sync_page_size + 2;
    for (int64_t page = 0;; page++) {
        struct buf path;
        buf_init(&path, 4096);
        buf_appendf(&path, "/v1/robots?limit=%lld", (long long)set->sync_page_size);
        if (token[0]) {
            buf_append_str(&path, "&page_token=");
            append_escaped(&path, token);
        }
        char *url = vendor_url(s, path.data);
        buf_release(&path);
        struct http_client_request hr = {
            .method = "GET", .url = url, .bearer_token = s->api_token, .max_retries = -1};
        struct http_client_response resp = {0};
        int rc = http_client_do(registry_vendor(reg), &hr, &resp);
        free(url);
        if (!vendor_ok(rc, &resp)) {
            respond_vendor_error(reg, req, OP_SYNC, rc, &resp);
            http_client_response_release(&resp);
            goto fail;
        }
        cJSON *doc = json_parse(resp.body, resp.len, NULL, 0);
        http_client_response_release(&resp);
        cJSON *list = cJSON_GetObjectItemCaseSensitive(doc, "robots");
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(doc, "next_page_token");
        if (!cJSON_IsArray(list) || (next && !cJSON_IsNull(next) && !cJSON_IsString(next))) {
            cJSON_Delete(doc);
            registry_count_vendor(reg, "sync", "invalid_answer");
            http_respond_problem(req, 502, NULL, "the vendor's robot page %lld is malformed",
                                 (long long)page + 1);
            goto fail;
        }
        while (cJSON_GetArraySize(list) > 0)
            cJSON_AddItemToArray(all, cJSON_DetachItemFromArray(list, 0));
        const char *nt = cJSON_IsString(next) ? next->valuestring : "";
        bool repeat = *nt && strcmp(nt, token) == 0;
        bool toolong = strlen(nt) > PAGE_TOKEN_MAX;
        if (!repeat && !toolong)
            str_copy(token, nt, sizeof(token));
        cJSON_Delete(doc);
        if (cJSON_GetArraySize(all) > set->sync_max_robots || page + 1 >= max_pages || repeat ||
            toolong) {
            registry_count_vendor(reg, "sync", "invalid_answer");
            http_respond_problem(req, 502, NULL,
                                 "the vendor's robot list does not end (over %lld robots, "
                                 "%lld pages, or a repeated page token)",
                                 (long long)set->sync_max_robots, (long long)max_pages);
            goto fail;
        }
        if (!token[0])
            break;
    }
    *robots = all;
    return 0;
fail:
    cJSON_Delete(all);
    return -EIO;
}

static void do_sync(struct registry *reg, struct http_request *req, const struct vendor_job *j)
{
    struct source *s = NULL;
    if (!load_or_respond(reg, req, j->id, &s))
        return;
    cJSON *robots = NULL;
    if (!s->api_token) {
        http_respond_problem(req, 422, "api_token", "the source has no api_token");
        goto out;
    }
    int64_t t0 = time_mono_ms();
    if (fetch_all(reg, req, s, &robots) != 0)
        goto out;
    registry_count_vendor(reg, "sync", "ok");
    struct robot_sync_counts c = {0};
    int rc = robots_sync_apply(reg, j->id, robots, j->by, &c);
    registry_count_sync(reg, "added", (double)c.added);
    registry_count_sync(reg, "updated", (double)c.updated);
    registry_count_sync(reg, "unchanged", (double)c.unchanged);
    registry_count_sync(reg, "invalid", (double)c.invalid);
    if (rc != 0) {
        http_response_header(req, "Retry-After", "5");
        http_respond_problem(
            req, 503, NULL, "sync stopped: %s (%zu added, %zu updated so far); run it again",
            rc == -EPIPE ? "kafka did not acknowledge changes" : "redis is unavailable", c.added,
            c.updated);
        goto out;
    }
    LOG_INFO("source '%s' synced: %zu added, %zu updated, %zu unchanged, %zu invalid in %lld ms",
             j->id, c.added, c.updated, c.unchanged, c.invalid, (long long)(time_mono_ms() - t0));
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "source", j->id);
    cJSON_AddNumberToObject(out, "total", cJSON_GetArraySize(robots));
    cJSON_AddNumberToObject(out, "added", (double)c.added);
    cJSON_AddNumberToObject(out, "updated", (double)c.updated);
    cJSON_AddNumberToObject(out, "unchanged", (double)c.unchanged);
    cJSON_AddNumberToObject(out, "invalid", (double)c.invalid);
    http_respond_json(req, 200, out);
    cJSON_Delete(out);
out:
    cJSON_Delete(robots);
    source_free(s);
}

static void run_job(struct registry *reg, struct http_request *req, void *data)
{
    const struct vendor_job *j = data;
    if (j->op == OP_REGISTER)
        do_register(reg, req, j);
    else if (j->op == OP_UNREGISTER)
        do_unregister(reg, req, j);
    else
        do_sync(reg, req, j);
}

static void enqueue(struct http_request *req, struct registry *reg, enum vendor_op op)
{
    const char *id;
    if (!source_path_id(req, &id))
        return;
    struct vendor_job *j = xcalloc(1, sizeof(*j));
    j->op = op;
    str_copy(j->id, id, sizeof(j->id));
    str_copy(j->by, registry_identity(req), sizeof(j->by));
    registry_enqueue(reg, req, run_job, j, free);
}

static void handle_register(struct http_request *req, void *ud)
{
    enqueue(req, ud, OP_REGISTER);
}

static void handle_unregister(struct http_request *req, void *ud)
{
    enqueue(req, ud, OP_UNREGISTER);
}

static void handle_sync(struct http_request *req, void *ud)
{
    enqueue(req, ud, OP_SYNC);
}

int sources_register_routes(struct registry *reg)
{
    struct http_server *h = registry_http(reg);
    int rc = 0;
    rc |= http_server_route(h, "GET", "/v1/sources", handle_list, reg);
    rc |= http_server_route(h, "GET", "/v1/sources/{id}", handle_get, reg);
    rc |= http_server_route(h, "PUT", "/v1/sources/{id}", handle_put, reg);
    rc |= http_server_route(h, "DELETE", "/v1/sources/{id}", handle_delete, reg);
    rc |= http_server_route(h, "POST", "/v1/sources/{id}/secrets:rotate", handle_rotate, reg);
    rc |=
        http_server_route(h, "POST", "/v1/sources/{id}/webhook-registration", handle_register, reg);
    rc |= http_server_route(h, "DELETE", "/v1/sources/{id}/webhook-registration", handle_unregister,
                            reg);
    rc |= http_server_route(h, "POST", "/v1/sources/{id}/sync", handle_sync, reg);
    return rc ? -EINVAL : 0;
}
