/*
 * The simulator's HTTP routes: the vendor platform API exactly as
 * proto/openapi/vendor-platform.yaml describes it (bearer token on every /v1 route,
 * paged robot list, commands with Idempotency-Key, webhook registration), the
 * injected misbehaviour of that API (500s, slow answers), and the admin routes
 * tests and operators use: GET /sim/stats, GET/POST /sim/misbehave, /healthz.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "http_server.h"
#include "json.h"
#include "log.h"
#include "sim.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX     1000
#define KEY_MAX_LEN   255
#define SLOW_MAX_MS   60000

struct api {
    struct sim *sim;
    char *token;
};

#define COUNT(field) atomic_fetch_add_explicit(&sim_stats(a->sim)->field, 1, memory_order_relaxed)

static bool guard(struct http_request *req, void *ud)
{
    struct api *a = ud;
    if (!str_has_prefix(http_request_path(req), "/v1/"))
        return true;
    COUNT(api_requests);
    const char *auth = http_request_header(req, "Authorization");
    size_t want = strlen(a->token);
    if (!auth || !str_has_prefix(auth, "Bearer ") || strlen(auth + 7) != want ||
        !crypto_equal(auth + 7, a->token, want)) {
        COUNT(api_unauthorized);
        http_response_header(req, "WWW-Authenticate", "Bearer");
        http_respond_problem(req, 401, "Authorization", "a valid bearer token is required");
        return false;
    }
    struct sim_misbehave m = sim_misbehave_get(a->sim);
    if (m.slow_ms > 0) {
        COUNT(api_slowed);
        time_sleep_ms(m.slow_ms);
    }
    if (m.vendor_500 > 0 && sim_rand() < m.vendor_500) {
        COUNT(api_injected_500);
        http_response_header(req, "Retry-After", "1");
        http_respond_problem(req, 500, NULL, "simulated vendor failure");
        return false;
    }
    return true;
}

static void handle_health(struct http_request *req, void *ud)
{
    (void)ud;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

/* page_token is "o<offset>", opaque to clients. */
static void handle_list(struct http_request *req, void *ud)
{
    struct api *a = ud;
    int64_t limit = LIMIT_DEFAULT, offset = 0;
    const char *ls = http_request_query(req, "limit");
    if (ls && (str_to_int64(ls, &limit) != 0 || limit < 1 || limit > LIMIT_MAX)) {
        http_respond_problem(req, 400, "limit", "limit must be an integer 1..%d", LIMIT_MAX);
        return;
    }
    const char *pt = http_request_query(req, "page_token");
    if (pt && *pt &&
        (pt[0] != 'o' || str_to_int64(pt + 1, &offset) != 0 || offset < 0 ||
         offset > (int64_t)sim_robot_count(a->sim))) {
        http_respond_problem(req, 400, "page_token", "page_token is not one this server issued");
        return;
    }
    uint32_t total = sim_robot_count(a->sim);
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "robots");
    sim_robots_describe(a->sim, (uint32_t)offset, (uint32_t)limit, arr);
    int64_t next = offset + limit;
    if (next < total) {
        char tok[32];
        snprintf(tok, sizeof(tok), "o%" PRId64, next);
        cJSON_AddStringToObject(o, "next_page_token", tok);
    } else {
        cJSON_AddNullToObject(o, "next_page_token");
    }
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

static void handle_command(struct http_request *req, void *ud)
{
    struct api *a = ud;
    const char *rid = http_request_param(req, "id");
    const char *key = http_request_header(req, "Idempotency-Key");
    if (!key || !*key || strlen(key) > KEY_MAX_LEN) {
        http_respond_problem(req, 400, "Idempotency-Key",
                             "Idempotency-Key header of 1..%d characters is required", KEY_MAX_LEN);
        return;
    }
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[128];
    cJSON *doc = json_parse(body, len, err, sizeof(err));
    if (!doc || !cJSON_IsObject(doc)) {
        http_respond_problem(req, 400, "body", "body must be a JSON object: %s",
                             doc ? "not an object" : err);
        cJSON_Delete(doc);
        return;
    }
    const char *cid = json_get_str(doc, "command_id");
    const char *type = json_get_str(doc, "type");
    const char *mode = json_get_str(doc, "mode");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(doc, "reason");
    if (!cid || !*cid)
        http_respond_problem(req, 400, "command_id", "command_id must be a non-empty string");
    else if (!type || strcmp(type, "reboot") != 0)
        http_respond_problem(req, 400, "type", "type must be \"reboot\"");
    else if (!mode || (strcmp(mode, "soft") != 0 && strcmp(mode, "hard") != 0))
        http_respond_problem(req, 400, "mode", "mode must be \"soft\" or \"hard\"");
    else if (reason && !cJSON_IsString(reason))
        http_respond_problem(req, 400, "reason", "reason must be a string");
    else {
        uint8_t digest[32];
        struct crypto_part parts[] = {{rid, strlen(rid)}, {"\n", 1}, {body, len}};
        crypto_hmac_sha256("idem", 4, parts, 3, digest);
        char *answered = NULL;
        switch (sim_command(a->sim, sim_robot_find(a->sim, rid), key, digest, cid,
                            strcmp(mode, "hard") == 0, &answered)) {
        case CMD_UNKNOWN_ROBOT:
            http_respond_problem(req, 404, "id", "robot '%s' is unknown", rid);
            break;
        case CMD_CONFLICT:
            http_respond_problem(req, 409, "Idempotency-Key",
                                 "Idempotency-Key was already used with a different request");
            break;
        case CMD_ACCEPTED:
        case CMD_REPLAYED: {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "command_id", answered);
            cJSON_AddStringToObject(o, "status", "accepted");
            http_respond_json(req, 202, o);
            cJSON_Delete(o);
            break;
        }
        }
        free(answered);
    }
    cJSON_Delete(doc);
}

static void handle_webhook_add(struct http_request *req, void *ud)
{
    struct api *a = ud;
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[128];
    cJSON *doc = json_parse(body, len, err, sizeof(err));
    const char *url = doc ? json_get_str(doc, "url") : NULL;
    const cJSON *types = doc ? cJSON_GetObjectItemCaseSensitive(doc, "event_types") : NULL;
    uint32_t mask = 0;
    const char *bad = NULL;
    if (!doc || !cJSON_IsObject(doc)) {
        http_respond_problem(req, 400, "body", "body must be a JSON object: %s",
                             doc ? "not an object" : err);
        goto out;
    }
    if (!url || !(str_has_prefix(url, "http://") || str_has_prefix(url, "https://"))) {
        http_respond_problem(req, 400, "url", "url must be an http(s) URL");
        goto out;
    }
    if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) == 0) {
        http_respond_problem(req, 400, "event_types", "event_types must be a non-empty array");
        goto out;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, types)
    {
        int i = cJSON_IsString(t) ? sim_type_index(t->valuestring) : -1;
        if (i < 0 || (mask & (1u << i))) {
            bad = cJSON_IsString(t) ? t->valuestring : "(not a string)";
            break;
        }
        mask |= 1u << i;
    }
    if (bad) {
        http_respond_problem(req, 400, "event_types",
                             "event_types holds an unknown or repeated type '%s'", bad);
        goto out;
    }
    char id[32], secret[96];
    int rc =
        deliver_add(sim_deliver(a->sim), url, mask, NULL, id, sizeof(id), secret, sizeof(secret));
    if (rc != 0) {
        http_respond_problem(req, 429, NULL, "too many webhooks registered (at most %d)",
                             SIM_MAX_WEBHOOKS);
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "secret", secret);
    http_respond_json(req, 201, o);
    cJSON_Delete(o);
out:
    cJSON_Delete(doc);
}

static void handle_webhook_delete(struct http_request *req, void *ud)
{
    struct api *a = ud;
    const char *id = http_request_param(req, "id");
    if (deliver_remove(sim_deliver(a->sim), id) != 0) {
        http_respond_problem(req, 404, "id", "webhook '%s' is unknown", id);
        return;
    }
    http_respond(req, 204, NULL, NULL, 0);
}

static cJSON *misbehave_json(const struct sim_misbehave *m)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "vendor_500", m->vendor_500);
    cJSON_AddNumberToObject(o, "slow_ms", m->slow_ms);
    cJSON_AddNumberToObject(o, "duplicate_webhooks", m->duplicate_webhooks);
    cJSON_AddNumberToObject(o, "out_of_order", m->out_of_order);
    cJSON_AddNumberToObject(o, "bad_signature", m->bad_signature);
    return o;
}

static void handle_misbehave_get(struct http_request *req, void *ud)
{
    struct api *a = ud;
    struct sim_misbehave m = sim_misbehave_get(a->sim);
    cJSON *o = misbehave_json(&m);
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

/* Partial update: fields absent keep their value. */
static void handle_misbehave_set(struct http_request *req, void *ud)
{
    struct api *a = ud;
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    char err[128];
    cJSON *doc = json_parse(body, len, err, sizeof(err));
    if (!doc || !cJSON_IsObject(doc)) {
        http_respond_problem(req, 400, "body", "body must be a JSON object: %s",
                             doc ? "not an object" : err);
        cJSON_Delete(doc);
        return;
    }
    struct sim_misbehave m = sim_misbehave_get(a->sim);
    struct {
        const char *name;
        double *p;
    } probs[] = {{"vendor_500", &m.vendor_500},
                 {"duplicate_webhooks", &m.duplicate_webhooks},
                 {"out_of_order", &m.out_of_order},
                 {"bad_signature", &m.bad_signature}};
    const cJSON *it;
    cJSON_ArrayForEach(it, doc)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(probs) / sizeof(probs[0]); i++) {
            if (strcmp(it->string, probs[i].name) != 0)
                continue;
            known = true;
            if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 1) {
                http_respond_problem(req, 400, it->string, "%s must be a number 0..1", it->string);
                goto out;
            }
            *probs[i].p = it->valuedouble;
        }
        if (strcmp(it->string, "slow_ms") == 0) {
            known = true;
            if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > SLOW_MAX_MS) {
                http_respond_problem(req, 400, "slow_ms", "slow_ms must be 0..%d", SLOW_MAX_MS);
                goto out;
            }
            m.slow_ms = (int)it->valuedouble;
        }
        if (!known) {
            http_respond_problem(req, 400, it->string, "unknown misbehaviour '%s'", it->string);
            goto out;
        }
    }
    sim_misbehave_set(a->sim, &m);
    LOG_INFO("misbehaviour set: vendor_500 %.2f, slow_ms %d, duplicate_webhooks %.2f, "
             "out_of_order %.2f, bad_signature %.2f",
             m.vendor_500, m.slow_ms, m.duplicate_webhooks, m.out_of_order, m.bad_signature);
    cJSON *o = misbehave_json(&m);
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
out:
    cJSON_Delete(doc);
}

static void handle_stats(struct http_request *req, void *ud)
{
    struct api *a = ud;
    const struct sim_stats *st = sim_stats(a->sim);
#define N(v) (double)atomic_load_explicit(&(v), memory_order_relaxed)
    cJSON *o = cJSON_CreateObject();
    sim_stats_fleet(a->sim, o);
    cJSON *ev = cJSON_AddObjectToObject(o, "events");
    for (int i = 0; i < SIM_NTYPES; i++)
        cJSON_AddNumberToObject(ev, sim_type_names[i], N(st->events[i]));
    cJSON_AddNumberToObject(o, "events_unrouted", N(st->events_unrouted));
    cJSON_AddNumberToObject(o, "events_accepted", N(st->events_accepted));
    cJSON *wh = cJSON_AddObjectToObject(o, "webhooks");
    cJSON_AddNumberToObject(wh, "registered", (double)deliver_count(sim_deliver(a->sim)));
    cJSON_AddNumberToObject(wh, "queued", (double)deliver_queue_len(sim_deliver(a->sim)));
    cJSON_AddNumberToObject(wh, "sent", N(st->deliveries));
    cJSON_AddNumberToObject(wh, "attempts", N(st->attempts));
    cJSON_AddNumberToObject(wh, "accepted", N(st->accepted));
    cJSON_AddNumberToObject(wh, "rejected", N(st->rejected));
    cJSON_AddNumberToObject(wh, "failed", N(st->failed));
    cJSON_AddNumberToObject(wh, "dropped", N(st->dropped));
    cJSON_AddNumberToObject(wh, "duplicates_sent", N(st->duplicates_sent));
    cJSON_AddNumberToObject(wh, "out_of_order", N(st->out_of_order));
    cJSON_AddNumberToObject(wh, "bad_signatures", N(st->bad_signatures));
    cJSON *bs = cJSON_AddObjectToObject(wh, "by_status");
    for (int i = 0; i < SIM_MAX_STATUS; i++) {
        if (atomic_load_explicit(&st->by_status[i], memory_order_relaxed) == 0)
            continue;
        char code[16];
        snprintf(code, sizeof(code), "%d", i);
        cJSON_AddNumberToObject(bs, code, N(st->by_status[i]));
    }
    cJSON *api = cJSON_AddObjectToObject(o, "vendor_api");
    cJSON_AddNumberToObject(api, "requests", N(st->api_requests));
    cJSON_AddNumberToObject(api, "unauthorized", N(st->api_unauthorized));
    cJSON_AddNumberToObject(api, "injected_500", N(st->api_injected_500));
    cJSON_AddNumberToObject(api, "slowed", N(st->api_slowed));
#undef N
    struct sim_misbehave m = sim_misbehave_get(a->sim);
    cJSON_AddItemToObject(o, "misbehave", misbehave_json(&m));
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

struct api *api_new(struct http_server *h, struct sim *s, const char *token)
{
    struct api *a = xcalloc(1, sizeof(*a));
    a->sim = s;
    a->token = xstrdup(token);
    int rc = http_server_set_guard(h, guard, a);
    rc |= http_server_route(h, "GET", "/healthz", handle_health, a);
    rc |= http_server_route(h, "GET", "/v1/robots", handle_list, a);
    rc |= http_server_route(h, "POST", "/v1/robots/{id}/commands", handle_command, a);
    rc |= http_server_route(h, "POST", "/v1/webhooks", handle_webhook_add, a);
    rc |= http_server_route(h, "DELETE", "/v1/webhooks/{id}", handle_webhook_delete, a);
    rc |= http_server_route(h, "GET", "/sim/stats", handle_stats, a);
    rc |= http_server_route(h, "GET", "/sim/misbehave", handle_misbehave_get, a);
    rc |= http_server_route(h, "POST", "/sim/misbehave", handle_misbehave_set, a);
    if (rc) {
        api_free(a);
        return NULL;
    }
    return a;
}

void api_free(struct api *a)
{
    if (!a)
        return;
    free(a->token);
    free(a);
}
