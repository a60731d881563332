/*
 * The HTTP API (proto/openapi/reboot-command.yaml): request a reboot, read one
 * command or list them, cancel before dispatch, and see or resume the
 * automation abort switch. A reboot request is answered 202 only once it is in
 * robot.commands.v1 (the connection is suspended until the broker's delivery
 * report); the policy rules that can be judged at once answer 404/423/409
 * straight away, and the lane applies them all again when it decides.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "crypto.h"
#include "http_server.h"
#include "json.h"
#include "log.h"
#include "reboot.h"
#include "redis.h"
#include "service.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define IDEM_KEY_MAX 200
#define LIST_MAX     500

static const char *actor_of(const struct http_request *req)
{
    const char *who = http_request_header(req, "X-Consumer-Username");
    return who && who[0] && strlen(who) <= ACTOR_MAX ? who : "anonymous";
}

static bool robot_id_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

static bool printable(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

/* A policy refusal: problem+json naming the field and the rule that refused. */
static void respond_refused(struct http_request *req, unsigned status, const char *field,
                            const char *rule, const char *detail)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "about:blank");
    cJSON_AddStringToObject(p, "title", http_status_title(status));
    cJSON_AddNumberToObject(p, "status", status);
    cJSON_AddStringToObject(p, "detail", detail);
    cJSON_AddStringToObject(p, "field", field);
    cJSON_AddStringToObject(p, "rule", rule);
    size_t len = 0;
    char *body = json_print(p, &len);
    cJSON_Delete(p);
    http_respond(req, status, "application/problem+json", body, len);
}

static void respond_command(struct http_request *req, unsigned status, const char *id,
                            const char *state)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "command_id", id);
    cJSON_AddStringToObject(o, "state", state);
    http_respond_json(req, status, o);
    cJSON_Delete(o);
}

/* ---- POST /v1/robots/{id}/reboot ---- */

/* A request suspended until robot.commands.v1 has the command. */
struct pending_reboot {
    struct outbox_delivery d;
    struct reboot *rb;
    struct http_request *req;
    struct command c;
    char idem_key[IDEM_KEY_MAX + ACTOR_MAX + 2];
};

static void reboot_delivered(struct outbox_delivery *d, int err)
{
    struct pending_reboot *p = (struct pending_reboot *)d;
    if (err == 0) {
        respond_command(p->req, 202, p->c.id, "requested");
    } else {
        /* never in Kafka: the command ends here and the key may be used again */
        struct transition t = {.to = "rejected",
                               .from = "requested",
                               .rule = "unavailable",
                               .detail = "the command could not be queued (Kafka unavailable)"};
        reboot_transition(p->rb, p->rb->redis, &p->c, &t);
        if (p->idem_key[0]) {
            char key[sizeof(p->idem_key) + 16];
            snprintf(key, sizeof(key), "cmds:idem:%s", p->idem_key);
            redisReply *rep = redis_cmd(p->rb->redis, "DEL", key, (char *)NULL);
            if (rep)
                freeReplyObject(rep);
        }
        http_response_header(p->req, "Retry-After", "5");
        http_respond_problem(p->req, 503, NULL, "the command could not be queued; retry later");
    }
    free(p);
}

struct reboot_body {
    const char *mode;
    const char *reason;
    bool force;
    int64_t at_ms;
    bool window_next;
};

/* Validates the body; false after answering 400. */
static bool parse_body(struct http_request *req, const cJSON *doc, struct reboot_body *b)
{
    memset(b, 0, sizeof(*b));
    if (!cJSON_IsObject(doc)) {
        http_respond_problem(req, 400, "body", "the body must be a JSON object");
        return false;
    }
    b->mode = json_get_str(doc, "mode");
    if (!b->mode || (strcmp(b->mode, "soft") != 0 && strcmp(b->mode, "hard") != 0)) {
        http_respond_problem(req, 400, "mode", "mode must be \"soft\" or \"hard\"");
        return false;
    }
    b->reason = json_get_str(doc, "reason");
    if (!b->reason || !b->reason[0] || strlen(b->reason) > REASON_MAX) {
        http_respond_problem(req, 400, "reason", "reason must be a string of 1-%d characters",
                             REASON_MAX);
        return false;
    }
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(doc, "force");
    if (f && !cJSON_IsBool(f)) {
        http_respond_problem(req, 400, "force", "force must be true or false");
        return false;
    }
    b->force = cJSON_IsTrue(f);
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(doc, "at");
    if (at && !cJSON_IsNull(at)) {
        if (!cJSON_IsString(at) || time_parse_rfc3339(at->valuestring, &b->at_ms) != 0) {
            http_respond_problem(req, 400, "at", "at must be an RFC 3339 date-time");
            return false;
        }
        if (b->at_ms < time_now_ms()) {
            http_respond_problem(req, 400, "at", "at is in the past");
            return false;
        }
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(doc, "window");
    if (w && !cJSON_IsNull(w)) {
        if (!cJSON_IsString(w) || strcmp(w->valuestring, "next") != 0) {
            http_respond_problem(req, 400, "window", "window must be \"next\"");
            return false;
        }
        if (b->at_ms) {
            http_respond_problem(req, 400, "window", "give either at or window, not both");
            return false;
        }
        b->window_next = true;
    }
    return true;
}

/* An existing command for the same Idempotency-Key: 200 with it, or 409 when it differs. */
static void respond_existing(struct reboot *rb, struct http_request *req, const char *id,
                             const char *robot_id)
{
    struct command c;
    int rc = store_get(rb->redis, id, &c);
    if (rc == -EIO) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
    } else if (rc == -ENOENT) {
        http_respond_problem(req, 409, "Idempotency-Key",
                             "this key's command has expired; use a new key");
    } else if (strcmp(c.robot_id, robot_id) != 0) {
        http_respond_problem(req, 409, "Idempotency-Key",
                             "this key was used for a reboot of another robot");
    } else {
        respond_command(req, 200, c.id, c.state);
    }
}

/* The rules judged at request time; false after answering. */
static bool admissible(struct reboot *rb, struct http_request *req, const struct command *c,
                       const struct robot_view *v, bool scheduled)
{
    if (c->window_next && v->window_s == 0) {
        respond_refused(req, 409, "window", "maintenance_window",
                        "the robot has no maintenance window");
        return false;
    }
    if (scheduled)
        return true; /* judged when it fires */
    const char *rule = NULL;
    char detail[256];
    if (policy_check(rb, c, v, &rule, detail, sizeof(detail)) == 1) {
        bool busy = strcmp(rule, "busy") == 0;
        respond_refused(req, busy ? 423 : 409, busy ? "force" : "id", rule, detail);
        return false;
    }
    if (policy_queue_full(rb, rb->redis)) {
        respond_refused(req, 409, "id", "fleet_cap",
                        "too many reboots are already waiting for a fleet slot");
        return false;
    }
    return true;
}

static void post_reboot(struct http_request *req, void *ud)
{
    struct reboot *rb = ud;
    const char *robot_id = http_request_param(req, "id");
    const char *actor = actor_of(req);
    const char *key = http_request_header(req, "Idempotency-Key");
    if (!robot_id_valid(robot_id)) {
        http_respond_problem(req, 404, "id", "no such robot");
        return;
    }
    if (key && !printable(key, IDEM_KEY_MAX)) {
        http_respond_problem(req, 400, "Idempotency-Key",
                             "Idempotency-Key must be 1-%d printable characters", IDEM_KEY_MAX);
        return;
    }
    size_t len = 0;
    const char *raw = http_request_body(req, &len);
    char err[128];
    cJSON *doc = json_parse(raw ? raw : "", len, err, sizeof(err));
    if (!doc) {
        http_respond_problem(req, 400, "body", "the body is not JSON: %s", err);
        return;
    }
    struct reboot_body b;
    struct pending_reboot *p = NULL;
    struct command *c = NULL;
    struct robot_view v;
    struct reboot_settings set;
    char existing[CMD_ID_MAX + 1] = "";
    int rc;
    if (!parse_body(req, doc, &b))
        goto out;
    p = xcalloc(1, sizeof(*p));
    p->d.done = reboot_delivered;
    p->rb = rb;
    p->req = req;
    if (key)
        snprintf(p->idem_key, sizeof(p->idem_key), "%s:%s", actor, key);
    c = &p->c;
    crypto_uuid_v7(c->id);
    str_copy(c->robot_id, robot_id, sizeof(c->robot_id));
    str_copy(c->mode, b.mode, sizeof(c->mode));
    str_copy(c->reason, b.reason, sizeof(c->reason));
    str_copy(c->origin, "api", sizeof(c->origin));
    str_copy(c->requested_by, actor, sizeof(c->requested_by));
    str_copy(c->state, "requested", sizeof(c->state));
    c->force = b.force;
    c->at_ms = b.at_ms;
    c->window_next = b.window_next;
    c->created_ms = time_now_ms();

    if (key) {
        char k[sizeof(p->idem_key) + 16];
        snprintf(k, sizeof(k), "cmds:idem:%s", p->idem_key);
        redisReply *rep = redis_cmd(rb->redis, "GET", k, (char *)NULL);
        bool found = rep && rep->type == REDIS_REPLY_STRING;
        if (found)
            respond_existing(rb, req, rep->str, robot_id);
        else if (!rep || rep->type != REDIS_REPLY_NIL)
            http_respond_problem(req, 503, NULL, "Redis is unavailable");
        bool answered = found || !rep || rep->type != REDIS_REPLY_NIL;
        if (rep)
            freeReplyObject(rep);
        if (answered)
            goto out;
    }
    if (policy_robot(rb->redis, robot_id, &v) != 0) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
        goto out;
    }
    if (!v.found) {
        http_respond_problem(req, 404, "id", "no such robot: %s", robot_id);
        goto out;
    }
    if (!admissible(rb, req, c, &v, b.at_ms > 0 || b.window_next))
        goto out;
    reboot_settings_get(rb, &set);
    rc = store_create(rb->redis, c, key ? p->idem_key : NULL, set.idempotency_ttl_s, existing);
    if (rc < 0) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
        goto out;
    }
    if (rc == 0) {
        respond_existing(rb, req, existing, robot_id);
        goto out;
    }
    reboot_announced(rb, c, "requested");
    http_request_suspend(req);
    if (reboot_produce_command(rb, c, "api", &p->d) != 0) {
        reboot_delivered(&p->d, -EIO);
        p = NULL;
        goto out;
    }
    p = NULL; /* the delivery callback answers and frees it */
out:
    free(p);
    cJSON_Delete(doc);
}

/* ---- commands ---- */

static void get_command(struct http_request *req, void *ud)
{
    struct reboot *rb = ud;
    const char *id = http_request_param(req, "id");
    if (!id || strlen(id) > CMD_ID_MAX) {
        http_respond_problem(req, 404, "id", "no such command");
        return;
    }
    int err = 0;
    cJSON *o = store_record_json(rb->redis, id, &err);
    if (!o) {
        if (err == -ENOENT)
            http_respond_problem(req, 404, "id", "no such command: %s", id);
        else
            http_respond_problem(req, 503, NULL, "Redis is unavailable");
        return;
    }
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

static bool state_valid(const char *s)
{
    static const char *const all[] = {"requested",  "rejected",     "scheduled", "queued",
                                      "dispatched", "acknowledged", "succeeded", "failed",
                                      "timed_out",  "cancelled"};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(s, all[i]) == 0)
            return true;
    return false;
}

static void list_commands(struct http_request *req, void *ud)
{
    struct reboot *rb = ud;
    const char *robot_id = http_request_query(req, "robot_id");
    const char *state = http_request_query(req, "state");
    const char *since = http_request_query(req, "since");
    const char *cursor = http_request_query(req, "cursor");
    const char *limit_s = http_request_query(req, "limit");
    int64_t since_ms = 0, limit = 50;
    if (robot_id && !robot_id_valid(robot_id)) {
        http_respond_problem(req, 400, "robot_id", "robot_id is not a robot id");
        return;
    }
    if (state && !state_valid(state)) {
        http_respond_problem(req, 400, "state", "state is not a command state");
        return;
    }
    if (since && time_parse_rfc3339(since, &since_ms) != 0) {
        http_respond_problem(req, 400, "since", "since must be an RFC 3339 date-time");
        return;
    }
    if (limit_s && (str_to_int64(limit_s, &limit) != 0 || limit < 1 || limit > LIST_MAX)) {
        http_respond_problem(req, 400, "limit", "limit must be 1-%d", LIST_MAX);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *items = cJSON_AddArrayToObject(o, "items");
    char next[CMD_ID_MAX + 32];
    int rc = store_list(rb->redis, robot_id, state, since_ms, cursor, (int)limit, items, next,
                        sizeof(next));
    if (rc == -EINVAL)
        http_respond_problem(req, 400, "cursor", "cursor is not one this API returned");
    else if (rc != 0)
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
    if (rc != 0) {
        cJSON_Delete(o);
        return;
    }
    if (next[0])
        cJSON_AddStringToObject(o, "next_cursor", next);
    else
        cJSON_AddNullToObject(o, "next_cursor");
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

static void cancel_command(struct http_request *req, void *ud)
{
    struct reboot *rb = ud;
    const char *id = http_request_param(req, "id");
    struct command c;
    int rc = id && strlen(id) <= CMD_ID_MAX ? store_get(rb->redis, id, &c) : -ENOENT;
    if (rc == -ENOENT) {
        http_respond_problem(req, 404, "id", "no such command");
        return;
    }
    if (rc != 0) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
        return;
    }
    struct transition t = {.to = "cancelled",
                           .from = "requested,scheduled,queued",
                           .actor = actor_of(req),
                           .detail = "cancelled by an operator"};
    rc = reboot_transition(rb, rb->redis, &c, &t);
    if (rc < 0) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
        return;
    }
    if (rc == 0) {
        store_get(rb->redis, id, &c);
        http_respond_problem(req, 409, "id",
                             "the command is %s: only requested, scheduled or queued commands "
                             "can be cancelled",
                             c.state);
        return;
    }
    respond_command(req, 200, c.id, "cancelled");
}

/* ---- automation abort switch ---- */

static void get_automation(struct http_request *req, void *ud)
{
    struct reboot *rb = ud;
    int err = 0;
    cJSON *o = policy_automation_json(rb->redis, &err);
    if (!o) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
        return;
    }
    http_respond_json(req, 200, o);
    cJSON_Delete(o);
}

static void resume_automation(struct http_request *req, void *ud)
{
    struct reboot *rb = ud;
    const char *actor = actor_of(req);
    if (policy_automation_resume(rb->redis, actor) != 0) {
        http_respond_problem(req, 503, NULL, "Redis is unavailable");
        return;
    }
    LOG_INFO("automatic reboots resumed by '%s'", actor);
    get_automation(req, ud);
}

int reboot_register_routes(struct reboot *rb)
{
    struct http_server *h = service_http(rb->svc);
    int rc = 0;
    rc |= http_server_route(h, "POST", "/v1/robots/{id}/reboot", post_reboot, rb);
    rc |= http_server_route(h, "GET", "/v1/commands", list_commands, rb);
    rc |= http_server_route(h, "GET", "/v1/commands/{id}", get_command, rb);
    rc |= http_server_route(h, "POST", "/v1/commands/{id}/cancel", cancel_command, rb);
    rc |= http_server_route(h, "GET", "/v1/automation", get_automation, rb);
    rc |= http_server_route(h, "POST", "/v1/automation/resume", resume_automation, rb);
    return rc == 0 ? 0 : -EINVAL;
}
