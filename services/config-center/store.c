/*
 * Redis storage of namespaces (see store.h). Every write of more than one key
 * is atomic: MULTI/EXEC for drafts and schemas, a Lua script for releases so
 * the compare-and-set on the base version and the writes cannot interleave
 * with another release.
 */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_client.h"
#include "json.h"
#include "redis.h"
#include "str.h"
#include "xalloc.h"

#define KEY_MAX (CONFIG_NS_MAX + 40)

/*
 * KEYS: released, draft, audit, namespaces. ARGV: base, content, checksum,
 * author, time, comment, version key prefix, namespace, rollback_of ("" for a
 * release), audit record JSON (gets "version"), audit cap.
 */
static const char RELEASE_LUA[] =
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')\n"
    "if cur ~= tonumber(ARGV[1]) then return {-1, cur} end\n"
    "if ARGV[9] == '' then\n"
    "  local d = redis.call('HGET', KEYS[2], 'content')\n"
    "  if not d then return {-2, cur} end\n"
    "  if d ~= ARGV[2] then return {-3, cur} end\n"
    "end\n"
    "local v = cur + 1\n"
    "local f = {'version', v, 'content', ARGV[2], 'checksum', ARGV[3], 'author', ARGV[4],\n"
    "           'time', ARGV[5], 'comment', ARGV[6], 'rollback_of', ARGV[9]}\n"
    "redis.call('HSET', ARGV[7] .. v, unpack(f))\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('SADD', KEYS[4], ARGV[8])\n"
    "local a = cjson.decode(ARGV[10])\n"
    "a['version'] = v\n"
    "redis.call('RPUSH', KEYS[3], cjson.encode(a))\n"
    "redis.call('LTRIM', KEYS[3], -tonumber(ARGV[11]), -1)\n"
    "return {v, cur}\n";

static int key(char *out, const char *ns, const char *suffix)
{
    return config_key(out, KEY_MAX, ns, suffix);
}

/* Runs MULTI, the commands, EXEC; 0 when EXEC answered an array. */
static int transaction(struct redis *r, size_t n, const struct redis_cmd *cmds)
{
    struct redis_cmd all[8];
    redisReply *replies[8] = {NULL};
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    all[0] = (struct redis_cmd){1, multi, NULL};
    memcpy(all + 1, cmds, n * sizeof(*cmds));
    all[n + 1] = (struct redis_cmd){1, exec, NULL};
    int rc = redis_pipeline(r, n + 2, all, replies);
    if (rc == 0 && (!replies[n + 1] || replies[n + 1]->type != REDIS_REPLY_ARRAY))
        rc = -EIO;
    for (size_t i = 0; i < n + 2; i++)
        if (replies[i])
            freeReplyObject(replies[i]);
    return rc ? -EIO : 0;
}

int store_put_draft(struct redis *r, const char *ns, const char *content, const char *checksum,
                    const char *author, const char *time, const char *audit_json)
{
    char draft[KEY_MAX], audit[KEY_MAX], cap[16];
    if (key(draft, ns, "draft") || key(audit, ns, "audit"))
        return -EINVAL;
    snprintf(cap, sizeof(cap), "-%d", STORE_AUDIT_MAX);
    const char *hset[] = {"HSET",   draft,    "content", content, "checksum",
                          checksum, "author", author,    "time",  time};
    const char *sadd[] = {"SADD", "config:namespaces", ns};
    const char *push[] = {"RPUSH", audit, audit_json};
    const char *trim[] = {"LTRIM", audit, cap, "-1"};
    struct redis_cmd cmds[] = {{10, hset, NULL}, {3, sadd, NULL}, {3, push, NULL}, {4, trim, NULL}};
    return transaction(r, 4, cmds);
}

int store_put_schema(struct redis *r, const char *ns, const char *schema, const char *audit_json)
{
    char skey[KEY_MAX], audit[KEY_MAX], cap[16];
    if (key(skey, ns, "schema") || key(audit, ns, "audit"))
        return -EINVAL;
    snprintf(cap, sizeof(cap), "-%d", STORE_AUDIT_MAX);
    const char *set[] = {"SET", skey, schema};
    const char *sadd[] = {"SADD", "config:namespaces", ns};
    const char *push[] = {"RPUSH", audit, audit_json};
    const char *trim[] = {"LTRIM", audit, cap, "-1"};
    struct redis_cmd cmds[] = {{3, set, NULL}, {3, sadd, NULL}, {3, push, NULL}, {4, trim, NULL}};
    return transaction(r, 4, cmds);
}

int store_get_schema(struct redis *r, const char *ns, char **out)
{
    char k[KEY_MAX];
    *out = NULL;
    if (key(k, ns, "schema"))
        return -EINVAL;
    redisReply *rep = redis_cmd(r, "GET", k, (char *)NULL);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        if (rep)
            freeReplyObject(rep);
        return -EIO;
    }
    int found = rep->type == REDIS_REPLY_STRING;
    if (found)
        *out = xstrndup(rep->str, rep->len);
    freeReplyObject(rep);
    return found;
}

int store_get_record(struct redis *r, const char *ns, const char *suffix, cJSON **out)
{
    char k[KEY_MAX];
    *out = NULL;
    if (key(k, ns, suffix))
        return -EINVAL;
    redisReply *rep = redis_cmd(r, "HGETALL", k, (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return -EIO;
    }
    if (rep->elements == 0) {
        freeReplyObject(rep);
        return 0;
    }
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *name = rep->element[i]->str;
        const redisReply *v = rep->element[i + 1];
        int64_t n;
        if ((strcmp(name, "version") == 0 || strcmp(name, "rollback_of") == 0)) {
            if (str_to_int64(v->str, &n) == 0)
                cJSON_AddNumberToObject(o, name, (double)n);
        } else {
            cJSON_AddStringToObject(o, name, v->str ? v->str : "");
        }
    }
    freeReplyObject(rep);
    *out = o;
    return 1;
}

int64_t store_current_version(struct redis *r, const char *ns)
{
    char k[KEY_MAX];
    if (key(k, ns, "released"))
        return -EINVAL;
    redisReply *rep = redis_cmd(r, "HGET", k, "version", (char *)NULL);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        if (rep)
            freeReplyObject(rep);
        return -EIO;
    }
    int64_t v = 0;
    if (rep->type == REDIS_REPLY_STRING && str_to_int64(rep->str, &v) != 0)
        v = 0;
    freeReplyObject(rep);
    return v;
}

int store_release(struct redis *r, const struct store_release *rel, int64_t *version)
{
    char released[KEY_MAX], draft[KEY_MAX], audit[KEY_MAX], prefix[KEY_MAX];
    char base[24], rollback[24] = "", cap[16];
    if (key(released, rel->ns, "released") || key(draft, rel->ns, "draft") ||
        key(audit, rel->ns, "audit") || key(prefix, rel->ns, "v:"))
        return -EINVAL;
    snprintf(base, sizeof(base), "%lld", (long long)rel->base);
    if (rel->rollback_of)
        snprintf(rollback, sizeof(rollback), "%lld", (long long)rel->rollback_of);
    snprintf(cap, sizeof(cap), "%d", STORE_AUDIT_MAX);

    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "action", rel->rollback_of ? "rollback" : "release");
    cJSON_AddStringToObject(a, "namespace", rel->ns);
    cJSON_AddStringToObject(a, "author", rel->author);
    cJSON_AddStringToObject(a, "time", rel->time);
    cJSON_AddStringToObject(a, "comment", rel->comment);
    cJSON_AddStringToObject(a, "checksum", rel->checksum);
    cJSON_AddNumberToObject(a, "base_version", (double)rel->base);
    if (rel->rollback_of)
        cJSON_AddNumberToObject(a, "rollback_to", (double)rel->rollback_of);
    char *audit_json = json_print(a, NULL);
    cJSON_Delete(a);

    const char *argv[] = {
        "EVAL",      RELEASE_LUA,         "4",          released,     draft,
        audit,       "config:namespaces", base,         rel->content, rel->checksum,
        rel->author, rel->time,           rel->comment, prefix,       rel->ns,
        rollback,    audit_json,          cap};
    redisReply *rep = redis_command(r, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
    free(audit_json);
    int rc = -EIO;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        long long code = rep->element[0]->integer;
        *version = code > 0 ? code : rep->element[1]->integer;
        rc = code > 0 ? 0 : code == -1 ? -EAGAIN : code == -2 ? -ENOENT : -ESTALE;
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

cJSON *store_history(struct redis *r, const char *ns, int64_t current, int limit)
{
    cJSON *out = cJSON_CreateArray();
    int n = current < limit ? (int)current : limit;
    if (n <= 0)
        return out;
    struct redis_cmd *cmds = xcalloc((size_t)n, sizeof(*cmds));
    const char **argvs = xcalloc((size_t)n * 8, sizeof(*argvs));
    char(*keys)[KEY_MAX] = xcalloc((size_t)n, KEY_MAX);
    redisReply **replies = xcalloc((size_t)n, sizeof(*replies));
    for (int i = 0; i < n; i++) {
        char suffix[40];
        snprintf(suffix, sizeof(suffix), "v:%lld", (long long)(current - i));
        key(keys[i], ns, suffix);
        const char **a = argvs + (size_t)i * 8;
        a[0] = "HMGET";
        a[1] = keys[i];
        a[2] = "version";
        a[3] = "author";
        a[4] = "time";
        a[5] = "comment";
        a[6] = "checksum";
        a[7] = "rollback_of";
        cmds[i] = (struct redis_cmd){8, a, NULL};
    }
    if (redis_pipeline(r, (size_t)n, cmds, replies) != 0) {
        cJSON_Delete(out);
        out = NULL;
    }
    static const char *const names[] = {"version", "author",   "time",
                                        "comment", "checksum", "rollback_of"};
    for (int i = 0; out && i < n; i++) {
        const redisReply *rep = replies[i];
        if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 6 ||
            rep->element[0]->type != REDIS_REPLY_STRING)
            continue;
        cJSON *o = cJSON_CreateObject();
        for (size_t f = 0; f < 6; f++) {
            const redisReply *v = rep->element[f];
            const char *s = v->type == REDIS_REPLY_STRING ? v->str : "";
            int64_t num;
            if (f == 0 || f == 5) {
                if (str_to_int64(s, &num) == 0)
                    cJSON_AddNumberToObject(o, names[f], (double)num);
            } else {
                cJSON_AddStringToObject(o, names[f], s);
            }
        }
        cJSON_AddItemToArray(out, o);
    }
    for (int i = 0; i < n; i++)
        if (replies[i])
            freeReplyObject(replies[i]);
    free(replies);
    free(keys);
    free(argvs);
    free(cmds);
    return out;
}

cJSON *store_namespaces(struct redis *r)
{
    redisReply *rep = redis_cmd(r, "SMEMBERS", "config:namespaces", (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return NULL;
    }
    cJSON *out = cJSON_CreateArray();
    for (size_t i = 0; i < rep->elements; i++) {
        const char *ns = rep->element[i]->str;
        if (!ns || !config_ns_valid(ns))
            continue;
        char released[KEY_MAX], draft[KEY_MAX], schema[KEY_MAX];
        key(released, ns, "released");
        key(draft, ns, "draft");
        key(schema, ns, "schema");
        const char *a1[] = {"HMGET", released, "version", "time"};
        const char *a2[] = {"EXISTS", draft};
        const char *a3[] = {"EXISTS", schema};
        struct redis_cmd cmds[] = {{4, a1, NULL}, {2, a2, NULL}, {2, a3, NULL}};
        redisReply *reps[3] = {NULL};
        if (redis_pipeline(r, 3, cmds, reps) == 0 && reps[0] &&
            reps[0]->type == REDIS_REPLY_ARRAY && reps[1] && reps[2]) {
            cJSON *o = cJSON_CreateObject();
            int64_t v = 0;
            const redisReply *ver = reps[0]->element[0];
            if (ver->type == REDIS_REPLY_STRING && str_to_int64(ver->str, &v) != 0)
                v = 0;
            cJSON_AddStringToObject(o, "namespace", ns);
            cJSON_AddNumberToObject(o, "version", (double)v);
            if (reps[0]->element[1]->type == REDIS_REPLY_STRING)
                cJSON_AddStringToObject(o, "released_at", reps[0]->element[1]->str);
            cJSON_AddBoolToObject(o, "has_draft", reps[1]->integer == 1);
            cJSON_AddBoolToObject(o, "has_schema", reps[2]->integer == 1);
            cJSON_AddItemToArray(out, o);
        }
        for (size_t j = 0; j < 3; j++)
            if (reps[j])
                freeReplyObject(reps[j]);
    }
    freeReplyObject(rep);
    return out;
}

cJSON *store_audit(struct redis *r, const char *ns, int limit)
{
    char k[KEY_MAX], lo[16];
    if (key(k, ns, "audit"))
        return NULL;
    snprintf(lo, sizeof(lo), "-%d", limit);
    redisReply *rep = redis_cmd(r, "LRANGE", k, lo, "-1", (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return NULL;
    }
    cJSON *out = cJSON_CreateArray();
    for (size_t i = rep->elements; i > 0; i--) {
        const redisReply *e = rep->element[i - 1];
        cJSON *o = e->str ? cJSON_ParseWithLength(e->str, e->len) : NULL;
        if (o)
            cJSON_AddItemToArray(out, o);
    }
    freeReplyObject(rep);
    return out;
}
