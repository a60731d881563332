/*
 * The command records in Redis (proto/redis-keys.md): cmd:{id} (hash),
 * cmd:{id}:history (list of transitions as JSON), the indexes cmds:robot:{id}
 * and cmds:all (sorted by creation time) and the API's idempotency keys. Every
 * write is one Lua script, so a record and its indexes never disagree and a
 * transition happens only from the state it expects (two replicas racing on one
 * command: one wins, the other sees 0).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "reboot.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define KEY_MAX    (CMD_ID_MAX + ROBOT_ID_MAX + 64)
#define LIST_BATCH 100

static const char CREATE_LUA[] =
    "if ARGV[3] ~= '0' then\n"
    "  local ex = redis.call('GET', KEYS[5])\n"
    "  if ex then return {0, ex} end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[1]} end\n"
    "if ARGV[3] ~= '0' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[3]) end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 5))\n"
    "redis.call('RPUSH', KEYS[2], ARGV[4])\n"
    "redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])\n"
    "redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])\n"
    "return {1, ARGV[1]}\n";

/*
 * KEYS: cmd, history, reboot:deadlines, reboot:active, reboot:sending,
 * reboot:queue, reboot:sched. ARGV: to, from (csv), history entry, now ms,
 * deadline ms (0 = none), terminal (0/1), record ttl s, updated_at, field pairs.
 * Returns {1, previous state, slot released, history length} or {0, current}.
 */
static const char TRANSITION_LUA[] =
    "local cur = redis.call('HGET', KEYS[1], 'state')\n"
    "if not cur then return {0, ''} end\n"
    "local ok = false\n"
    "for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end\n"
    "if not ok then return {0, cur} end\n"
    "local id = redis.call('HGET', KEYS[1], 'id')\n"
    "redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[8])\n"
    "for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end\n"
    "local seq = redis.call('RPUSH', KEYS[2], ARGV[3])\n"
    "if ARGV[1] == 'scheduled' then\n"
    "  redis.call('ZADD', KEYS[7], ARGV[5], id)\n"
    "  redis.call('HSET', KEYS[1], 'at_ms', ARGV[5])\n"
    "  redis.call('ZREM', KEYS[3], id)\n"
    "elseif ARGV[5] ~= '0' then redis.call('ZADD', KEYS[3], ARGV[5], id)\n"
    "else redis.call('ZREM', KEYS[3], id) end\n"
    "if ARGV[1] == 'dispatched' then redis.call('ZADD', KEYS[5], ARGV[4], id) end\n"
    "local released = 0\n"
    "if ARGV[6] == '1' then\n"
    "  released = redis.call('SREM', KEYS[4], id)\n"
    "  redis.call('ZREM', KEYS[5], id)\n"
    "  redis.call('ZREM', KEYS[6], id)\n"
    "  redis.call('ZREM', KEYS[7], id)\n"
    "  if ARGV[7] ~= '0' then\n"
    "    redis.call('EXPIRE', KEYS[1], ARGV[7])\n"
    "    redis.call('EXPIRE', KEYS[2], ARGV[7])\n"
    "  end\n"
    "end\n"
    "return {1, cur, released, seq}\n";

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

int store_create(struct redis *r, const struct command *c, const char *idem_key, int64_t idem_ttl_s,
                 char existing[CMD_ID_MAX + 1])
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
    redisReply *rep = redis_command(r, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
    free(entry);
    int rc = -EIO;
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

int store_transition(struct redis *r, const char *id, const struct transition *t,
                     const char *entry_json, int64_t now_ms, int64_t record_ttl_s, bool *terminal,
                     bool *released, char *prev, size_t nprev, int *seq)
{
    char k_cmd[KEY_MAX], k_hist[KEY_MAX], now[24], dl[24], ttl[24], iso[TIME_RFC3339_LEN];
    snprintf(k_cmd, sizeof(k_cmd), "cmd:%s", id);
    snprintf(k_hist, sizeof(k_hist), "cmd:%s:history", id);
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(dl, sizeof(dl), "%lld", (long long)t->deadline_ms);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)record_ttl_s);
    time_format_rfc3339(now_ms, iso, sizeof(iso));
    *terminal = state_is_terminal(t->to);
    const char *argv[24] = {"EVAL",
                            TRANSITION_LUA,
                            "7",
                            k_cmd,
                            k_hist,
                            "reboot:deadlines",
                            "reboot:active",
                            "reboot:sending",
                            "reboot:queue",
                            "reboot:sched",
                            t->to,
                            t->from,
                            entry_json,
                            now,
                            dl,
                            *terminal ? "1" : "0",
                            ttl,
                            iso};
    int argc = 18;
    if (t->detail) {
        argv[argc++] = "detail";
        argv[argc++] = t->detail;
    }
    if (t->rule) {
        argv[argc++] = "rule";
        argv[argc++] = t->rule;
    }
    redisReply *rep = redis_command(r, argc, argv, NULL);
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
    for (long offset = 0; offset < 20L * LIST_BATCH;) {
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
    /* the walk ended: no more items after these */
    if (count < limit)
        next_cursor[0] = '\0';
    return 0;
}
