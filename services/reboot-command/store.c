/*
 * The command records in Redis (proto/redis-keys.md): cmd:{id} (hash),
 * cmd:{id}:history (list of transitions as JSON), the indexes cmds:robot:{id}
 * and cmds:all (sorted by creation time) and the API's idempotency keys. Every
 * write is one Lua script, so a record and its indexes never disagree and a
 * transition happens only from the state it expects (two replicas racing on one
 * command: one wins, the other sees 0).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crypto.h"
#include "json.h"
#include "log.h"
#include "reboot.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define KEY_MAX    (CMD_ID_MAX + ROBOT_ID_MAX + 64)
#define LIST_BATCH 100
#define LIST_SCAN  (20L * LIST_BATCH)

/*
 * Appends a transition's status event to the outbox stream (outbox.c relays
 * it): key = robot id, id = "{command id}.{history index}", time, data.
 */
#define OUTBOX_LUA                                                                                 \
    "local function outbox(robot, id, seq, at, data)\n"                                            \
    "  redis.call('XADD', 'reboot:outbox', '*', 'key', robot, 'id', id .. '.' .. seq,\n"           \
    "             'time', at, 'data', data)\n"                                                     \
    "end\n"

/*
 * KEYS: cmd, history, cmds:robot:{robot}, cmds:all, idempotency key. ARGV: id,
 * created ms, idempotency ttl (0 = no key), history entry, status event data,
 * robot id, created_at, field pairs.
 */
static const char CREATE_LUA[] =
    OUTBOX_LUA "if ARGV[3] ~= '0' then\n"
               "  local ex = redis.call('GET', KEYS[5])\n"
               "  if ex then return {0, ex} end\n"
               "end\n"
               "if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[1]} end\n"
               "if ARGV[3] ~= '0' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[3]) end\n"
               "redis.call('HSET', KEYS[1], unpack(ARGV, 8))\n"
               "local seq = redis.call('RPUSH', KEYS[2], ARGV[4])\n"
               "redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])\n"
               "redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])\n"
               "outbox(ARGV[6], ARGV[1], seq, ARGV[7], ARGV[5])\n"
               "return {1, ARGV[1]}\n";

/*
 * transition(cmd, history, a, fields): a = {to, from (csv), entry, now ms,
 * deadline ms (0 = none), terminal (0/1), record ttl s, updated_at, event
 * data, robot id}; fields = extra hash field pairs. Returns {1, previous
 * state, slot released, history length} or {0, current state}.
 */
#define TRANSITION_FN                                                                              \
    "local function transition(cmd, hist, a, fields)\n"                                            \
    "  local cur = redis.call('HGET', cmd, 'state')\n"                                             \
    "  if not cur then return {0, ''} end\n"                                                       \
    "  local ok = false\n"                                                                         \
    "  for s in string.gmatch(a[2], '[^,]+') do if s == cur then ok = true end end\n"              \
    "  if not ok then return {0, cur} end\n"                                                       \
    "  local id = redis.call('HGET', cmd, 'id')\n"                                                 \
    "  redis.call('HSET', cmd, 'state', a[1], 'updated_at', a[8])\n"                               \
    "  for i = 1, #fields, 2 do redis.call('HSET', cmd, fields[i], fields[i + 1]) end\n"           \
    "  local seq = redis.call('RPUSH', hist, a[3])\n"                                              \
    "  if a[1] == 'scheduled' then\n"                                                              \
    "    redis.call('ZADD', 'reboot:sched', a[5], id)\n"                                           \
    "    redis.call('HSET', cmd, 'at_ms', a[5])\n"                                                 \
    "    redis.call('ZREM', 'reboot:deadlines', id)\n"                                             \
    "  elseif a[5] ~= '0' then redis.call('ZADD', 'reboot:deadlines', a[5], id)\n"                 \
    "  else redis.call('ZREM', 'reboot:deadlines', id) end\n"                                      \
    "  if a[1] == 'dispatched' then redis.call('ZADD', 'reboot:sending', a[4], id) end\n"          \
    "  local released = 0\n"                                                                       \
    "  if a[6] == '1' then\n"                                                                      \
    "    released = redis.call('SREM', 'reboot:active', id)\n"                                     \
    "    redis.call('ZREM', 'reboot:sending', id)\n"                                               \
    "    redis.call('ZREM', 'reboot:queue', id)\n"                                                 \
    "    redis.call('ZREM', 'reboot:sched', id)\n"                                                 \
    "    if a[7] ~= '0' then\n"                                                                    \
    "      redis.call('EXPIRE', cmd, a[7])\n"                                                      \
    "      redis.call('EXPIRE', hist, a[7])\n"                                                     \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  outbox(a[10], id, seq, a[8], a[9])\n"                                                       \
    "  return {1, cur, released, seq}\n"                                                           \
    "end\n"

/* KEYS: cmd, history. ARGV: the ten of transition's a, then field pairs. */
static const char TRANSITION_LUA[] =
    OUTBOX_LUA TRANSITION_FN "local a = {unpack(ARGV, 1, 10)}\n"
                             "local f = {}\n"
                             "for i = 11, #ARGV do f[#f + 1] = ARGV[i] end\n"
                             "return transition(KEYS[1], KEYS[2], a, f)\n";

/*
 * KEYS: cmd, history, reboot:last:{robot}, reboot:day:{robot}:{day}. ARGV:
 * from (csv), now ms, updated_at, robot id, fleet cap, ack deadline ms, then
 * entry and data of: queued with a slot, queued waiting, dispatched.
 * Returns {1, previous state, admitted} or {0, current state}.
 */
static const char ENTER_LUA[] = OUTBOX_LUA TRANSITION_FN
    "local cur = redis.call('HGET', KEYS[1], 'state')\n"
    "if not cur then return {0, ''} end\n"
    "local ok = false\n"
    "for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end\n"
    "if not ok then return {0, cur} end\n"
    "local id = redis.call('HGET', KEYS[1], 'id')\n"
    "local admitted = redis.call('SISMEMBER', 'reboot:active', id) == 1\n"
    "if not admitted and redis.call('ZCARD', 'reboot:queue') == 0 and\n"
    "   redis.call('SCARD', 'reboot:active') < tonumber(ARGV[5]) then\n"
    "  redis.call('SADD', 'reboot:active', id)\n"
    "  admitted = true\n"
    "end\n"
    "if not admitted and not redis.call('ZSCORE', 'reboot:queue', id) then\n"
    "  redis.call('ZADD', 'reboot:queue', redis.call('INCR', 'reboot:queue:seq'), id)\n"
    "end\n"
    "if admitted then\n"
    "  transition(KEYS[1], KEYS[2], {'queued', ARGV[1], ARGV[7], ARGV[2], '0', '0', '0',\n"
    "             ARGV[3], ARGV[8], ARGV[4]}, {})\n"
    "  transition(KEYS[1], KEYS[2], {'dispatched', 'queued', ARGV[11], ARGV[2], ARGV[6], '0',\n"
    "             '0', ARGV[3], ARGV[12], ARGV[4]}, {})\n"
    "  redis.call('SET', KEYS[3], ARGV[2], 'EX', 604800)\n"
    "  redis.call('INCR', KEYS[4])\n"
    "  redis.call('EXPIRE', KEYS[4], 172800)\n"
    "else\n"
    "  transition(KEYS[1], KEYS[2], {'queued', ARGV[1], ARGV[9], ARGV[2], '0', '0', '0',\n"
    "             ARGV[3], ARGV[10], ARGV[4]}, {'detail', 'waiting for a fleet-wide reboot "
    "slot'})\n"
    "end\n"
    "return {1, cur, admitted and 1 or 0}\n";

/*
 * The hot scripts run as EVALSHA (a 40-byte name instead of kilobytes of Lua
 * to format, send and hash on every call), falling back to EVAL, which loads
 * the script, when Redis does not know it (first use, restart, SCRIPT FLUSH).
 */
struct script {
    const char *src;
    char sha[41];
};
static struct script s_create = {CREATE_LUA, ""}, s_transition = {TRANSITION_LUA, ""},
                     s_enter = {ENTER_LUA, ""};
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void scripts_init(void)
{
    struct script *all[] = {&s_create, &s_transition, &s_enter};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (EVP_Digest(all[i]->src, strlen(all[i]->src), md, &n, EVP_sha1(), NULL) != 1 ||
            crypto_hex_encode(md, n, all[i]->sha, sizeof(all[i]->sha)) != 0)
            all[i]->sha[0] = '\0'; /* EVALSHA of "" answers NOSCRIPT: EVAL every time */
    }
}

static bool noscript(const redisReply *rep)
{
    return rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0;
}

/* Points argv[0..1] at EVALSHA and the script's SHA-1. */
static void script_argv(struct script *sc, const char **argv)
{
    pthread_once(&scripts_once, scripts_init);
    argv[0] = "EVALSHA";
    argv[1] = sc->sha;
}

/* Runs argv (script_argv'd) and, on NOSCRIPT, the same as EVAL with the source. */
static redisReply *script_run(struct redis *r, struct script *sc, int argc, const char **argv)
{
    script_argv(sc, argv);
    redisReply *rep = redis_command(r, argc, argv, NULL);
    if (noscript(rep)) {
        freeReplyObject(rep);
        argv[0] = "EVAL";
        argv[1] = sc->src;
        rep = redis_command(r, argc, argv, NULL);
    }
    return rep;
}

bool state_is_terminal(const char *s)
{
    static const char *const t[] = {"rejected", "succeeded", "failed", "timed_out", "cancelled"};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(s, t[i]) == 0)
            return true;
    return false;
}

static char *history_entry(const char *state, const char *iso, const char *actor,
                           const char *detail, const char *rule)
{
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "state", state);
    cJSON_AddStringToObject(e, "at", iso);
    cJSON_AddStringToObject(e, "actor", actor ? actor : "reboot-command");
    if (detail)
        cJSON_AddStringToObject(e, "detail", detail);
    if (rule)
        cJSON_AddStringToObject(e, "rule", rule);
    char *s = json_print(e, NULL);
    cJSON_Delete(e);
    return s;
}

char *store_status_data(const struct command *c, const char *state, const char *actor,
                        const char *detail, const char *at)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "command_id", c->id);
    cJSON_AddStringToObject(d, "robot_id", c->robot_id);
    cJSON_AddStringToObject(d, "state", state);
    cJSON_AddStringToObject(d, "mode", c->mode);
    cJSON_AddStringToObject(d, "reason", c->reason);
    cJSON_AddStringToObject(d, "origin", c->origin);
    cJSON_AddStringToObject(d, "at", at);
    cJSON_AddStringToObject(d, "actor", actor ? actor : "reboot-command");
    if (detail)
        cJSON_AddStringToObject(d, "detail", detail);
    if (strcmp(c->origin, "api") == 0)
        cJSON_AddStringToObject(d, "operator", c->requested_by);
    else
        cJSON_AddNullToObject(d, "operator");
    char *s = json_print(d, NULL);
    cJSON_Delete(d);
    return s;
}

/* store_create's script, alone or (v not NULL) pipelined with the robot view's reads. */
static int create(struct redis *r, const struct command *c, const char *idem_key,
                  int64_t idem_ttl_s, char existing[CMD_ID_MAX + 1], struct robot_view *v)
{
    char k_cmd[KEY_MAX], k_hist[KEY_MAX], k_robot[KEY_MAX], k_idem[512];
    char created[24], ttl[24], at[24], iso[TIME_RFC3339_LEN];
    snprintf(k_cmd, sizeof(k_cmd), "cmd:%s", c->id);
    snprintf(k_hist, sizeof(k_hist), "cmd:%s:history", c->id);
    snprintf(k_robot, sizeof(k_robot), "cmds:robot:%s", c->robot_id);
    snprintf(k_idem, sizeof(k_idem), "cmds:idem:%s", idem_key ? idem_key : "");
    snprintf(created, sizeof(created), "%lld", (long long)c->created_ms);
    snprintf(ttl, sizeof(ttl), "%lld", idem_key ? (long long)idem_ttl_s : 0LL);
    snprintf(at, sizeof(at), "%lld", (long long)c->at_ms);
    time_format_rfc3339(c->created_ms, iso, sizeof(iso));
    char *entry = history_entry("requested", iso, c->requested_by, NULL, NULL);
    char *data = store_status_data(c, "requested", c->requested_by, NULL, iso);
    const char *argv[] = {"EVAL",
                          CREATE_LUA,
                          "5",
                          k_cmd,
                          k_hist,
                          k_robot,
                          "cmds:all",
                          k_idem,
                          c->id,
                          created,
                          ttl,
                          entry,
                          data,
                          c->robot_id,
                          iso,
                          "id",
                          c->id,
                          "robot_id",
                          c->robot_id,
                          "mode",
                          c->mode,
                          "reason",
                          c->reason,
                          "origin",
                          c->origin,
                          "force",
                          c->force ? "1" : "0",
                          "window",
                          c->window_next ? "next" : "",
                          "at_ms",
                          at,
                          "requested_by",
                          c->requested_by,
                          "state",
                          "requested",
                          "created_ms",
                          created,
                          "created_at",
                          iso,
                          "updated_at",
                          iso};
    redisReply *rep = NULL;
    int rc = -EIO;
    int argc = (int)(sizeof(argv) / sizeof(argv[0]));
    if (v) {
        script_argv(&s_create, argv);
        struct redis_cmd first = {argc, argv, NULL};
        int vrc = policy_robot_with(r, c->robot_id, v, &first, &rep);
        if (vrc != 0 && rep) {
            freeReplyObject(rep);
            rep = NULL;
        } else if (noscript(rep)) {
            freeReplyObject(rep);
            rep = script_run(r, &s_create, argc, argv);
        }
    } else {
        rep = script_run(r, &s_create, argc, argv);
    }
    free(entry);
    free(data);
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        rc = rep->element[0]->integer == 1 ? 1 : 0;
        if (existing && rep->element[1]->type == REDIS_REPLY_STRING)
            str_copy(existing, rep->element[1]->str, CMD_ID_MAX + 1);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

int store_create(struct redis *r, const struct command *c, const char *idem_key, int64_t idem_ttl_s,
                 char existing[CMD_ID_MAX + 1])
{
    return create(r, c, idem_key, idem_ttl_s, existing, NULL);
}

int store_create_viewing(struct redis *r, const struct command *c, char existing[CMD_ID_MAX + 1],
                         struct robot_view *v)
{
    return create(r, c, NULL, 0, existing, v);
}

int store_transition(struct redis *r, const char *id, const struct transition *t,
                     const char *entry_json, int64_t now_ms, int64_t record_ttl_s, bool *terminal,
                     bool *released, char *prev, size_t nprev, int *seq, const struct command *c)
{
    char k_cmd[KEY_MAX], k_hist[KEY_MAX], now[24], dl[24], ttl[24], iso[TIME_RFC3339_LEN];
    snprintf(k_cmd, sizeof(k_cmd), "cmd:%s", id);
    snprintf(k_hist, sizeof(k_hist), "cmd:%s:history", id);
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(dl, sizeof(dl), "%lld", (long long)t->deadline_ms);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)record_ttl_s);
    time_format_rfc3339(now_ms, iso, sizeof(iso));
    *terminal = state_is_terminal(t->to);
    char *data = store_status_data(c, t->to, t->actor, t->detail, iso);
    const char *argv[24] = {
        "EVAL", TRANSITION_LUA,        "2", k_cmd, k_hist, t->to,      t->from, entry_json, now,
        dl,     *terminal ? "1" : "0", ttl, iso,   data,   c->robot_id};
    int argc = 15;
    if (t->detail) {
        argv[argc++] = "detail";
        argv[argc++] = t->detail;
    }
    if (t->rule) {
        argv[argc++] = "rule";
        argv[argc++] = t->rule;
    }
    redisReply *rep = script_run(r, &s_transition, argc, argv);
    free(data);
    int rc = -EIO;
    *released = false;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        rc = rep->element[0]->integer == 1 ? 1 : 0;
        if (prev && rep->element[1]->type == REDIS_REPLY_STRING)
            str_copy(prev, rep->element[1]->str, nprev);
        if (rc == 1 && rep->elements == 4) {
            *released = rep->element[2]->integer == 1;
            *seq = (int)rep->element[3]->integer;
        }
    } else if (rep && rep->type == REDIS_REPLY_ERROR) {
        LOG_WARN("transition script failed: %s", rep->str);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

int store_enter_fleet(struct redis *r, const struct command *c, const char *from, int64_t fleet_max,
                      int64_t now_ms, int64_t ack_deadline_ms, bool *admitted, char *prev,
                      size_t nprev)
{
    char k_cmd[KEY_MAX], k_hist[KEY_MAX], k_last[KEY_MAX], k_day[KEY_MAX + 16];
    char now[24], cap[24], dl[24], iso[TIME_RFC3339_LEN];
    snprintf(k_cmd, sizeof(k_cmd), "cmd:%s", c->id);
    snprintf(k_hist, sizeof(k_hist), "cmd:%s:history", c->id);
    snprintf(k_last, sizeof(k_last), "reboot:last:%s", c->robot_id);
    policy_day_key(k_day, sizeof(k_day), c->robot_id, now_ms);
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(cap, sizeof(cap), "%lld", (long long)fleet_max);
    snprintf(dl, sizeof(dl), "%lld", (long long)ack_deadline_ms);
    time_format_rfc3339(now_ms, iso, sizeof(iso));
    static const char wait[] = "waiting for a fleet-wide reboot slot";
    char *e_q = history_entry("queued", iso, NULL, NULL, NULL);
    char *d_q = store_status_data(c, "queued", NULL, NULL, iso);
    char *e_w = history_entry("queued", iso, NULL, wait, NULL);
    char *d_w = store_status_data(c, "queued", NULL, wait, iso);
    char *e_d = history_entry("dispatched", iso, NULL, NULL, NULL);
    char *d_d = store_status_data(c, "dispatched", NULL, NULL, iso);
    const char *argv[] = {"EVAL",      ENTER_LUA, "4", k_cmd, k_hist, k_last, k_day, from, now, iso,
                          c->robot_id, cap,       dl,  e_q,   d_q,    e_w,    d_w,   e_d,  d_d};
    redisReply *rep = script_run(r, &s_enter, (int)(sizeof(argv) / sizeof(argv[0])), argv);
    char *owned[] = {e_q, d_q, e_w, d_w, e_d, d_d};
    for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++)
        free(owned[i]);
    int rc = -EIO;
    *admitted = false;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        rc = rep->element[0]->integer == 1 ? 1 : 0;
        if (prev && rep->element[1]->type == REDIS_REPLY_STRING)
            str_copy(prev, rep->element[1]->str, nprev);
        if (rc == 1 && rep->elements == 3)
            *admitted = rep->element[2]->integer == 1;
    } else if (rep && rep->type == REDIS_REPLY_ERROR) {
        LOG_WARN("fleet entry script failed: %s", rep->str);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static const char *field(const redisReply *rep, const char *name)
{
    for (size_t i = 0; i + 1 < rep->elements; i += 2)
        if (rep->element[i]->type == REDIS_REPLY_STRING && strcmp(rep->element[i]->str, name) == 0)
            return rep->element[i + 1]->type == REDIS_REPLY_STRING ? rep->element[i + 1]->str : "";
    return "";
}

static void fill_command(const redisReply *rep, struct command *out)
{
    memset(out, 0, sizeof(*out));
    str_copy(out->id, field(rep, "id"), sizeof(out->id));
    str_copy(out->robot_id, field(rep, "robot_id"), sizeof(out->robot_id));
    str_copy(out->mode, field(rep, "mode"), sizeof(out->mode));
    str_copy(out->reason, field(rep, "reason"), sizeof(out->reason));
    str_copy(out->origin, field(rep, "origin"), sizeof(out->origin));
    str_copy(out->requested_by, field(rep, "requested_by"), sizeof(out->requested_by));
    str_copy(out->state, field(rep, "state"), sizeof(out->state));
    out->force = strcmp(field(rep, "force"), "1") == 0;
    out->window_next = strcmp(field(rep, "window"), "next") == 0;
    str_to_int64(field(rep, "at_ms"), &out->at_ms);
    str_to_int64(field(rep, "created_ms"), &out->created_ms);
}

int store_get(struct redis *r, const char *id, struct command *out)
{
    char k[KEY_MAX];
    snprintf(k, sizeof(k), "cmd:%s", id);
    redisReply *rep = redis_cmd(r, "HGETALL", k, (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return -EIO;
    }
    int rc = rep->elements == 0 ? -ENOENT : 0;
    if (rc == 0)
        fill_command(rep, out);
    freeReplyObject(rep);
    return rc;
}

/* The public view of a record (without history). */
static cJSON *record_json(const redisReply *rep)
{
    static const char *const strs[] = {"robot_id",     "mode",  "reason",       "origin",
                                       "requested_by", "state", "created_at",   "updated_at",
                                       "detail",       "rule",  "vendor_status"};
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "command_id", field(rep, "id"));
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        const char *v = field(rep, strs[i]);
        if (v[0] || i < 8)
            cJSON_AddStringToObject(o, strs[i], v);
    }
    cJSON_AddBoolToObject(o, "force", strcmp(field(rep, "force"), "1") == 0);
    int64_t at = 0;
    char iso[TIME_RFC3339_LEN];
    if (str_to_int64(field(rep, "at_ms"), &at) == 0 && at > 0 &&
        time_format_rfc3339(at, iso, sizeof(iso)) == 0)
        cJSON_AddStringToObject(o, "scheduled_for", iso);
    else
        cJSON_AddNullToObject(o, "scheduled_for");
    return o;
}

cJSON *store_record_json(struct redis *r, const char *id, int *err)
{
    char k_cmd[KEY_MAX], k_hist[KEY_MAX];
    snprintf(k_cmd, sizeof(k_cmd), "cmd:%s", id);
    snprintf(k_hist, sizeof(k_hist), "cmd:%s:history", id);
    const char *a1[] = {"HGETALL", k_cmd};
    const char *a2[] = {"LRANGE", k_hist, "0", "-1"};
    struct redis_cmd cmds[] = {{2, a1, NULL}, {4, a2, NULL}};
    redisReply *rep[2] = {NULL, NULL};
    cJSON *o = NULL;
    *err = -EIO;
    if (redis_pipeline(r, 2, cmds, rep) != 0 || !rep[0] || !rep[1] ||
        rep[0]->type != REDIS_REPLY_ARRAY || rep[1]->type != REDIS_REPLY_ARRAY)
        goto out;
    if (rep[0]->elements == 0) {
        *err = -ENOENT;
        goto out;
    }
    o = record_json(rep[0]);
    cJSON *h = cJSON_AddArrayToObject(o, "history");
    for (size_t i = 0; i < rep[1]->elements; i++) {
        const redisReply *e = rep[1]->element[i];
        cJSON *v = e->type == REDIS_REPLY_STRING ? json_parse(e->str, e->len, NULL, 0) : NULL;
        if (v)
            cJSON_AddItemToArray(h, v);
    }
    *err = 0;
out:
    for (int i = 0; i < 2; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
    return o;
}

int store_list(struct redis *r, const char *robot_id, const char *state, int64_t since_ms,
               const char *cursor, int limit, cJSON *items, char *next_cursor, size_t ncursor)
{
    char key[KEY_MAX], min[32], cur_id[CMD_ID_MAX + 1] = "";
    int64_t cur_ms = -1;
    if (robot_id)
        snprintf(key, sizeof(key), "cmds:robot:%s", robot_id);
    else
        str_copy(key, "cmds:all", sizeof(key));
    if (cursor && cursor[0]) {
        const char *colon = strchr(cursor, ':');
        char ms[24];
        if (!colon || (size_t)(colon - cursor) >= sizeof(ms))
            return -EINVAL;
        memcpy(ms, cursor, (size_t)(colon - cursor));
        ms[colon - cursor] = '\0';
        if (str_to_int64(ms, &cur_ms) != 0 || strlen(colon + 1) > CMD_ID_MAX)
            return -EINVAL;
        str_copy(cur_id, colon + 1, sizeof(cur_id));
    }
    int64_t from = since_ms > cur_ms ? since_ms : cur_ms;
    snprintf(min, sizeof(min), "%lld", (long long)(from < 0 ? 0 : from));
    next_cursor[0] = '\0';
    int count = 0;
    /*
     * A page reads at most LIST_SCAN index entries. When that cap ends it
     * before the index does, the cursor points after the last entry read (the
     * page may hold fewer than limit items, even none), so a filter that
     * matches rarely is walked page by page and no match is ever skipped.
     */
    char scanned[CMD_ID_MAX + 32] = "";
    for (long offset = 0;;) {
        if (offset >= LIST_SCAN) {
            str_copy(next_cursor, scanned, ncursor);
            return 0;
        }
        char off[24], lim[24];
        snprintf(off, sizeof(off), "%ld", offset);
        snprintf(lim, sizeof(lim), "%d", LIST_BATCH);
        redisReply *ids = redis_cmd(r, "ZRANGEBYSCORE", key, min, "+inf", "WITHSCORES", "LIMIT",
                                    off, lim, (char *)NULL);
        if (!ids || ids->type != REDIS_REPLY_ARRAY) {
            if (ids)
                freeReplyObject(ids);
            return -EIO;
        }
        size_t n = ids->elements / 2;
        offset += (long)n;
        struct redis_cmd cmds[LIST_BATCH];
        const char *argv[LIST_BATCH][2];
        char keys[LIST_BATCH][KEY_MAX];
        redisReply *recs[LIST_BATCH] = {0};
        for (size_t i = 0; i < n; i++) {
            snprintf(keys[i], sizeof(keys[i]), "cmd:%s", ids->element[2 * i]->str);
            argv[i][0] = "HGETALL";
            argv[i][1] = keys[i];
            cmds[i] = (struct redis_cmd){2, argv[i], NULL};
        }
        if (n && redis_pipeline(r, n, cmds, recs) != 0) {
            freeReplyObject(ids);
            return -EIO;
        }
        bool full = false;
        for (size_t i = 0; i < n; i++) {
            const char *id = ids->element[2 * i]->str;
            int64_t score = 0;
            str_to_int64(ids->element[2 * i + 1]->str, &score);
            bool skip = score == cur_ms && strcmp(id, cur_id) <= 0;
            if (!full && !skip)
                snprintf(scanned, sizeof(scanned), "%lld:%s", (long long)score, id);
            if (!full && !skip && recs[i] && recs[i]->type == REDIS_REPLY_ARRAY &&
                recs[i]->elements > 0 && (!state || strcmp(field(recs[i], "state"), state) == 0)) {
                if (count == limit) {
                    full = true;
                } else {
                    cJSON_AddItemToArray(items, record_json(recs[i]));
                    count++;
                    snprintf(next_cursor, ncursor, "%lld:%s", (long long)score, id);
                }
            }
            if (recs[i])
                freeReplyObject(recs[i]);
        }
        freeReplyObject(ids);
        if (full)
            return 0;
        if (n < LIST_BATCH)
            break;
    }
    /* the walk reached the end of the index: no more items after these */
    next_cursor[0] = '\0';
    return 0;
}
