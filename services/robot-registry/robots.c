/*
 * Robots: validation with field-level errors, storage in Redis (a hash per
 * robot plus lexicographic index sorted sets, every write one Lua script), the
 * /v1/robots API with optimistic concurrency and stable cursors, and the
 * upserts of a vendor sync. Every change goes to robot.registry.v1.
 *
 * Redis (proto/redis-keys.md):
 *   robot:{id}              hash: record (the JSON served), version, fleet, status, source, q
 *   robots:all              zset, every id with score 0 (ZRANGEBYLEX = id order)
 *   robots:fleet:{fleet}    zset, same shape, one per fleet; robots:status:{s}, robots:source:{s}
 *   state:robot:{id}        hash written by stream-processor, merged into GET as "state"
 */
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "http_server.h"
#include "json.h"
#include "log.h"
#include "redis.h"
#include "registry.h"
#include "sources.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define ROBOT_ID_MAX    64
#define NAME_MAX_LEN    128
#define STATUS_MAX      32
#define LABELS_MAX      32
#define LABEL_KEY_MAX   64
#define LABEL_VALUE_MAX 256
#define QUERY_MAX       64
#define CAS_ATTEMPTS    5
#define LIST_MAX_BYTES  (64u * 1024 * 1024)
#define SYNC_BATCH      500
#define WINDOW_MIN_S    60
#define WINDOW_MAX_S    86400

struct field_err {
    char field[96];
    char detail[200];
};

static void ferr(struct field_err *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ferr(struct field_err *e, const char *field, const char *fmt, ...)
{
    va_list ap;
    str_copy(e->field, field, sizeof(e->field));
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof(e->detail), fmt, ap);
    va_end(ap);
}

/* ---- validation ---- */

/* 1-max chars of [A-Za-z0-9._-]: ids and fleets appear in URLs, cursors and Redis keys. */
static bool token_valid(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char ch = (unsigned char)s[n];
        if (n >= max || !(isalnum(ch) || ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return n > 0;
}

static bool status_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        if (n >= STATUS_MAX ||
            !((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return false;
    }
    return n > 0;
}

static bool robot_id_valid(const char *id)
{
    return id && token_valid(id, ROBOT_ID_MAX);
}

/* One cron field: comma list of *, n, a-b, each optionally /step, within [lo, hi]. */
static bool cron_field_valid(const char *f, size_t len, int lo, int hi)
{
    size_t i = 0;
    while (i <= len) {
        size_t end = i;
        while (end < len && f[end] != ',')
            end++;
        const char *p = f + i, *e = f + end;
        long a = lo, b = hi;
        if (p == e)
            return false;
        if (*p == '*') {
            p++;
        } else {
            char *q;
            a = strtol(p, &q, 10);
            if (q == p || a < lo || a > hi)
                return false;
            b = a;
            p = q;
            if (p < e && *p == '-') {
                b = strtol(p + 1, &q, 10);
                if (q == p + 1 || b < a || b > hi)
                    return false;
                p = q;
            }
        }
        if (p < e && *p == '/') {
            char *q;
            long step = strtol(p + 1, &q, 10);
            if (q == p + 1 || step < 1 || step > hi - lo + 1)
                return false;
            p = q;
        }
        if (p != e)
            return false;
        i = end + 1;
    }
    return true;
}

/* "m h dom mon dow", five numeric fields, UTC. */
static bool cron_valid(const char *cron)
{
    static const int lo[] = {0, 0, 1, 1, 0}, hi[] = {59, 23, 31, 12, 7};
    const char *p = cron;
    for (int field = 0; field < 5; field++) {
        while (*p == ' ')
            p++;
        size_t len = strcspn(p, " ");
        if (len == 0 || strspn(p, "0123456789*,-/") < len)
            return false;
        if (!cron_field_valid(p, len, lo[field], hi[field]))
            return false;
        p += len;
    }
    while (*p == ' ')
        p++;
    return *p == '\0';
}

static bool string_member(const cJSON *in, const char *name, size_t maxlen, bool required,
                          const char **out, struct field_err *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(in, name);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            ferr(e, name, "%s is required", name);
        return !required;
    }
    if (!cJSON_IsString(v)) {
        ferr(e, name, "%s must be a string", name);
        return false;
    }
    if (strlen(v->valuestring) > maxlen) {
        ferr(e, name, "%s is longer than %zu characters", name, maxlen);
        return false;
    }
    *out = v->valuestring;
    return true;
}

static cJSON *labels_from_json(const cJSON *v, struct field_err *e)
{
    if (!v || cJSON_IsNull(v))
        return cJSON_CreateObject();
    if (!cJSON_IsObject(v)) {
        ferr(e, "labels", "labels must be an object of strings");
        return NULL;
    }
    if (cJSON_GetArraySize(v) > LABELS_MAX) {
        ferr(e, "labels", "at most %d labels", LABELS_MAX);
        return NULL;
    }
    cJSON *out = cJSON_CreateObject();
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        char field[96];
        snprintf(field, sizeof(field), "labels.%.60s", it->string);
        if (!token_valid(it->string, LABEL_KEY_MAX) && !strchr(it->string, '/')) {
            ferr(e, field, "label names are 1-64 characters of [A-Za-z0-9._-]");
            goto bad;
        }
        if (!cJSON_IsString(it) || strlen(it->valuestring) > LABEL_VALUE_MAX) {
            ferr(e, field, "label values are strings of at most %d characters", LABEL_VALUE_MAX);
            goto bad;
        }
        cJSON_AddStringToObject(out, it->string, it->valuestring);
    }
    return out;
bad:
    cJSON_Delete(out);
    return NULL;
}

/* An object with no members but the two named; else e names the first other one. */
static bool members_known(const cJSON *v, const char *object, const char *a, const char *b,
                          struct field_err *e)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        if (strcmp(it->string, a) != 0 && strcmp(it->string, b) != 0) {
            char field[96];
            snprintf(field, sizeof(field), "%s.%.60s", object, it->string);
            ferr(e, field, "unknown field");
            return false;
        }
    }
    return true;
}

static cJSON *policy_from_json(const cJSON *v, struct field_err *e)
{
    bool auto_reboot = false, soft = true, hard = false;
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsObject(v)) {
            ferr(e, "policy", "policy must be an object {auto_reboot, modes}");
            return NULL;
        }
        if (!members_known(v, "policy", "auto_reboot", "modes", e))
            return NULL;
        const cJSON *it, *ar = cJSON_GetObjectItemCaseSensitive(v, "auto_reboot");
        if (ar && !cJSON_IsBool(ar)) {
            ferr(e, "policy.auto_reboot", "auto_reboot must be true or false");
            return NULL;
        }
        auto_reboot = cJSON_IsTrue(ar);
        const cJSON *modes = cJSON_GetObjectItemCaseSensitive(v, "modes");
        if (modes) {
            if (!cJSON_IsArray(modes)) {
                ferr(e, "policy.modes", "modes must be an array of \"soft\" and \"hard\"");
                return NULL;
            }
            soft = hard = false;
            int i = 0;
            cJSON_ArrayForEach(it, modes)
            {
                char field[64];
                snprintf(field, sizeof(field), "policy.modes[%d]", i++);
                bool is_soft = cJSON_IsString(it) && strcmp(it->valuestring, "soft") == 0;
                bool is_hard = cJSON_IsString(it) && strcmp(it->valuestring, "hard") == 0;
                if ((!is_soft && !is_hard) || (is_soft && soft) || (is_hard && hard)) {
                    ferr(e, field, "modes are distinct values of \"soft\" and \"hard\"");
                    return NULL;
                }
                soft = soft || is_soft;
                hard = hard || is_hard;
            }
            if (auto_reboot && !soft && !hard) {
                ferr(e, "policy.modes", "auto_reboot needs at least one mode");
                return NULL;
            }
        }
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddBoolToObject(out, "auto_reboot", auto_reboot);
    cJSON *arr = cJSON_AddArrayToObject(out, "modes");
    if (soft)
        cJSON_AddItemToArray(arr, cJSON_CreateString("soft"));
    if (hard)
        cJSON_AddItemToArray(arr, cJSON_CreateString("hard"));
    return out;
}

static cJSON *window_from_json(const cJSON *v, struct field_err *e)
{
    if (!v || cJSON_IsNull(v))
        return cJSON_CreateNull();
    if (!cJSON_IsObject(v)) {
        ferr(e, "maintenance_window", "maintenance_window must be null or {cron, duration_s}");
        return NULL;
    }
    if (!members_known(v, "maintenance_window", "cron", "duration_s", e))
        return NULL;
    const char *cron = json_get_str(v, "cron");
    if (!cron || strlen(cron) > 128 || !cron_valid(cron)) {
        ferr(e, "maintenance_window.cron",
             "cron must be five numeric fields \"m h dom mon dow\" (UTC), e.g. \"0 2 * * *\"");
        return NULL;
    }
    int64_t dur = 0;
    if (json_get_int(v, "duration_s", &dur) != 0 || dur < WINDOW_MIN_S || dur > WINDOW_MAX_S) {
        ferr(e, "maintenance_window.duration_s", "duration_s must be an integer from %d to %d",
             WINDOW_MIN_S, WINDOW_MAX_S);
        return NULL;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "cron", cron);
    cJSON_AddNumberToObject(out, "duration_s", (double)dur);
    return out;
}

static const char *const CONTENT_FIELDS[] = {
    "name", "model", "fleet", "source", "status", "labels", "policy", "maintenance_window", "busy",
};
static const char *const META_FIELDS[] = {"id",         "version",    "created_at",
                                          "updated_at", "updated_by", "state"};

static bool listed(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return true;
    return false;
}

/*
 * The normalised content of a robot (CONTENT_FIELDS in order, defaults filled)
 * from a request body, or NULL with e naming the field. Meta fields are
 * ignored when allow_meta (a GET body sent back), except a mismatching id.
 */
static cJSON *content_from_json(const cJSON *in, const char *id, bool allow_meta,
                                struct field_err *e)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, in)
    {
        size_t nc = sizeof(CONTENT_FIELDS) / sizeof(CONTENT_FIELDS[0]);
        size_t nm = sizeof(META_FIELDS) / sizeof(META_FIELDS[0]);
        if (listed(it->string, CONTENT_FIELDS, nc))
            continue;
        if (!listed(it->string, META_FIELDS, nm)) {
            ferr(e, it->string, "unknown field");
            return NULL;
        }
        if (strcmp(it->string, "id") == 0 &&
            (!cJSON_IsString(it) || strcmp(it->valuestring, id) != 0)) {
            ferr(e, "id", "id must equal the id in the path");
            return NULL;
        }
        if (!allow_meta && strcmp(it->string, "id") != 0) {
            ferr(e, it->string, "%s is read-only", it->string);
            return NULL;
        }
    }
    const char *name, *model, *fleet, *source, *status;
    if (!string_member(in, "name", NAME_MAX_LEN, true, &name, e) ||
        !string_member(in, "model", NAME_MAX_LEN, false, &model, e) ||
        !string_member(in, "fleet", ROBOT_ID_MAX, true, &fleet, e) ||
        !string_member(in, "source", SOURCE_ID_MAX, false, &source, e) ||
        !string_member(in, "status", STATUS_MAX, false, &status, e))
        return NULL;
    if (!*name) {
        ferr(e, "name", "name must not be empty");
        return NULL;
    }
    if (!token_valid(fleet, ROBOT_ID_MAX)) {
        ferr(e, "fleet", "fleet is 1-64 characters of [A-Za-z0-9._-]");
        return NULL;
    }
    if (source && *source && !source_id_valid(source)) {
        ferr(e, "source", "source is a source id: 1-64 characters of [a-z0-9_-]");
        return NULL;
    }
    if (status && !status_valid(status)) {
        ferr(e, "status", "status is 1-32 characters of [a-z0-9_-]");
        return NULL;
    }
    const cJSON *busy = cJSON_GetObjectItemCaseSensitive(in, "busy");
    if (busy && !cJSON_IsBool(busy)) {
        ferr(e, "busy", "busy must be true or false");
        return NULL;
    }
    cJSON *labels = labels_from_json(cJSON_GetObjectItemCaseSensitive(in, "labels"), e);
    cJSON *policy =
        labels ? policy_from_json(cJSON_GetObjectItemCaseSensitive(in, "policy"), e) : NULL;
    cJSON *window =
        policy ? window_from_json(cJSON_GetObjectItemCaseSensitive(in, "maintenance_window"), e)
               : NULL;
    if (!window) {
        cJSON_Delete(labels);
        cJSON_Delete(policy);
        return NULL;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "name", name);
    cJSON_AddStringToObject(out, "model", model ? model : "");
    cJSON_AddStringToObject(out, "fleet", fleet);
    cJSON_AddStringToObject(out, "source", source ? source : "");
    cJSON_AddStringToObject(out, "status", status ? status : "unknown");
    cJSON_AddItemToObject(out, "labels", labels);
    cJSON_AddItemToObject(out, "policy", policy);
    cJSON_AddItemToObject(out, "maintenance_window", window);
    cJSON_AddBoolToObject(out, "busy", cJSON_IsTrue(busy));
    return out;
}

/* The content fields of a stored record, for comparison and patching. */
static cJSON *content_of(const cJSON *record)
{
    cJSON *out = cJSON_CreateObject();
    for (size_t i = 0; i < sizeof(CONTENT_FIELDS) / sizeof(CONTENT_FIELDS[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(record, CONTENT_FIELDS[i]);
        if (v)
            cJSON_AddItemToObject(out, CONTENT_FIELDS[i], cJSON_Duplicate(v, true));
    }
    return out;
}

/* RFC 7396 JSON merge patch of target by patch (objects merge, null deletes). */
static void merge_patch(cJSON *target, const cJSON *patch)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, patch)
    {
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(target, it->string);
        if (cJSON_IsNull(it)) {
            cJSON_DeleteItemFromObjectCaseSensitive(target, it->string);
        } else if (cJSON_IsObject(it) && cJSON_IsObject(cur)) {
            merge_patch(cur, it);
        } else {
            cJSON_DeleteItemFromObjectCaseSensitive(target, it->string);
            cJSON_AddItemToObject(target, it->string, cJSON_Duplicate(it, true));
        }
    }
}

/* ---- storage ---- */

/*
 * ARGV: id, expected version (0 = must not exist), record, fleet, status,
 * source, search text, then the outbox messages. Moves the id between index
 * sets, writes the hash and appends the events to the outbox.
 * Returns {1, new version, outbox entry id} or {0, stored version}.
 */
static const char UPSERT_LUA[] = REGISTRY_OUTBOX_LUA
    "local key = 'robot:' .. ARGV[1]\n"
    "local cur = redis.call('HMGET', key, 'version', 'fleet', 'status', 'source')\n"
    "local v = tonumber(cur[1] or '0')\n"
    "if v ~= tonumber(ARGV[2]) then return {0, v} end\n"
    "local function move(prefix, old, new)\n"
    "  if old and old ~= '' and old ~= new then redis.call('ZREM', prefix .. old, ARGV[1]) end\n"
    "  if new ~= '' then redis.call('ZADD', prefix .. new, 0, ARGV[1]) end\n"
    "end\n"
    "move('robots:fleet:', cur[2], ARGV[4])\n"
    "move('robots:status:', cur[3], ARGV[5])\n"
    "move('robots:source:', cur[4], ARGV[6])\n"
    "redis.call('ZADD', 'robots:all', 0, ARGV[1])\n"
    "redis.call('HSET', key, 'version', tostring(v + 1), 'record', ARGV[3], 'fleet', ARGV[4],\n"
    "  'status', ARGV[5], 'source', ARGV[6], 'q', ARGV[7])\n"
    "return {1, v + 1, outbox(8)}\n";

/*
 * ARGV: id, expected version (-1 any), then the outbox messages. Returns
 * {1, version, outbox entry id} deleted or {0, stored or 0}.
 */
static const char DELETE_LUA[] = REGISTRY_OUTBOX_LUA
    "local key = 'robot:' .. ARGV[1]\n"
    "local cur = redis.call('HMGET', key, 'version', 'fleet', 'status', 'source')\n"
    "if not cur[1] then return {0, 0} end\n"
    "local v = tonumber(cur[1])\n"
    "local exp = tonumber(ARGV[2])\n"
    "if exp >= 0 and v ~= exp then return {0, v} end\n"
    "if cur[2] then redis.call('ZREM', 'robots:fleet:' .. cur[2], ARGV[1]) end\n"
    "if cur[3] then redis.call('ZREM', 'robots:status:' .. cur[3], ARGV[1]) end\n"
    "if cur[4] and cur[4] ~= '' then redis.call('ZREM', 'robots:source:' .. cur[4], ARGV[1]) end\n"
    "redis.call('ZREM', 'robots:all', ARGV[1])\n"
    "redis.call('DEL', key)\n"
    "return {1, v, outbox(3)}\n";

/*
 * KEYS: the index sets to intersect (robots:all when no filter). ARGV: cursor
 * (exclusive, "" = start), limit, scan budget, lowercase search text. Walks the
 * smallest set in id order and checks the others, so the cursor is the last id
 * examined whichever set was walked. Returns {next cursor or "", records...}.
 * Pages of one set without search text take list_one_index instead.
 */
static const char LIST_LUA[] =
    "local best, bestn = 1, nil\n"
    "if #KEYS > 1 then\n"
    "  bestn = redis.call('ZCARD', KEYS[1])\n"
    "  for i = 2, #KEYS do\n"
    "    local n = redis.call('ZCARD', KEYS[i])\n"
    "    if n < bestn then best, bestn = i, n end\n"
    "  end\n"
    "end\n"
    "local limit, budget, q = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]\n"
    "local filtered = #KEYS > 1 or q ~= ''\n"
    "local out = {''}\n"
    "local last, scanned, done = ARGV[1], 0, false\n"
    "while #out - 1 < limit and scanned < budget do\n"
    "  local want = limit - (#out - 1)\n"
    "  if filtered then want = math.max(want * 4, 64) end\n"
    "  want = math.min(want, budget - scanned)\n"
    "  local min = '-'\n"
    "  if last ~= '' then min = '(' .. last end\n"
    "  local ids = redis.call('ZRANGEBYLEX', KEYS[best], min, '+', 'LIMIT', 0, want)\n"
    "  local full = false\n"
    "  for _, id in ipairs(ids) do\n"
    "    scanned = scanned + 1\n"
    "    last = id\n"
    "    local ok = true\n"
    "    for i = 1, #KEYS do\n"
    "      if i ~= best and not redis.call('ZSCORE', KEYS[i], id) then ok = false break end\n"
    "    end\n"
    "    if ok then\n"
    "      local f = redis.call('HMGET', 'robot:' .. id, 'record', 'q')\n"
    "      if f[1] and (q == '' or string.find(f[2] or '', q, 1, true)) then\n"
    "        out[#out + 1] = f[1]\n"
    "        if #out - 1 >= limit then full = true break end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if not full and #ids < want then done = true break end\n"
    "end\n"
    "if not done then out[1] = last end\n"
    "return out\n";

/* Current record (parsed) and version: 0, -ENOENT or -EIO. */
static int robot_load(struct redis *r, const char *id, cJSON **record, int64_t *version)
{
    char key[ROBOT_ID_MAX + 8];
    snprintf(key, sizeof(key), "robot:%s", id);
    redisReply *rep = redis_cmd(r, "HMGET", key, "record", "version", (char *)NULL);
    *record = NULL;
    *version = 0;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
        if (rep)
            freeReplyObject(rep);
        return -EIO;
    }
    int rc = -ENOENT;
    if (rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[1]->type == REDIS_REPLY_STRING) {
        *record = json_parse(rep->element[0]->str, rep->element[0]->len, NULL, 0);
        rc = *record && str_to_int64(rep->element[1]->str, version) == 0 ? 0 : -EIO;
        if (rc) {
            LOG_ERROR("stored robot '%s' is corrupt", id);
            cJSON_Delete(*record);
            *record = NULL;
        }
    }
    freeReplyObject(rep);
    return rc;
}

/*
 * {1, version, outbox id} or {0, version} replies of the scripts: 0 ok (with
 * entry = the outbox id), -ESTALE (with *version stored) or -EIO.
 */
static int script_result(redisReply *rep, int64_t *version, char entry[REGISTRY_OUTBOX_ID_MAX])
{
    int rc = -EIO;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_INTEGER) {
        *version = rep->element[1]->integer;
        rc = rep->element[0]->integer == 1 ? 0 : -ESTALE;
        entry[0] = '\0';
        if (rc == 0 && rep->elements == 3 && rep->element[2]->type == REDIS_REPLY_STRING)
            str_copy(entry, rep->element[2]->str, REGISTRY_OUTBOX_ID_MAX);
        else if (rc == 0)
            rc = -EIO;
    } else if (rep && rep->type == REDIS_REPLY_ERROR) {
        LOG_ERROR("robot store script failed: %s", rep->str);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

/* The full record: id, content, version and audit fields. */
static cJSON *record_build(const char *id, const cJSON *content, int64_t version,
                           const char *created_at, const char *now, const char *by)
{
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "id", id);
    const cJSON *it;
    cJSON_ArrayForEach(it, content)
    {
        cJSON_AddItemToObject(rec, it->string, cJSON_Duplicate(it, true));
    }
    cJSON_AddNumberToObject(rec, "version", (double)version);
    cJSON_AddStringToObject(rec, "created_at", created_at ? created_at : now);
    cJSON_AddStringToObject(rec, "updated_at", now);
    cJSON_AddStringToObject(rec, "updated_by", by);
    return rec;
}

/*
 * Writes rec, and its event msgs to the outbox, if the stored version is still
 * expected: 0 (entry = the outbox id), -ESTALE or -EIO.
 */
static int robot_store(struct redis *r, const char *id, const cJSON *rec, int64_t expected,
                       const struct registry_msg *msgs, size_t n, const char *traceparent,
                       int64_t *version, char entry[REGISTRY_OUTBOX_ID_MAX])
{
    char exp[24], q[ROBOT_ID_MAX + NAME_MAX_LEN + 2];
    snprintf(exp, sizeof(exp), "%lld", (long long)expected);
    snprintf(q, sizeof(q), "%s %s", id, json_get_str(rec, "name"));
    for (char *p = q; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    char *json = json_print(rec, NULL);
    const char *argv[10 + 3 * 2] = {"EVAL",
                                    UPSERT_LUA,
                                    "0",
                                    id,
                                    exp,
                                    json,
                                    json_get_str(rec, "fleet"),
                                    json_get_str(rec, "status"),
                                    json_get_str(rec, "source"),
                                    q};
    size_t argc = 10 + registry_outbox_args(msgs, n, traceparent, argv + 10, 3 * 2);
    redisReply *rep = redis_command(r, (int)argc, argv, NULL);
    free(json);
    return script_result(rep, version, entry);
}

/* Deletes the robot and appends msgs to the outbox: 0, -ESTALE or -EIO. */
static int robot_delete(struct redis *r, const char *id, int64_t expected,
                        const struct registry_msg *msgs, size_t n, const char *traceparent,
                        int64_t *version, char entry[REGISTRY_OUTBOX_ID_MAX])
{
    char exp[24];
    snprintf(exp, sizeof(exp), "%lld", (long long)expected);
    const char *argv[5 + 3 * 2] = {"EVAL", DELETE_LUA, "0", id, exp};
    size_t argc = 5 + registry_outbox_args(msgs, n, traceparent, argv + 5, 3 * 2);
    return script_result(redis_command(r, (int)argc, argv, NULL), version, entry);
}

/* ---- change events ---- */

/* The robot.upserted (or robot.deleted + tombstone) messages for rec; free with msgs_release. */
static size_t robot_msgs(const char *id, const cJSON *rec, bool deleted,
                         struct registry_msg msgs[2])
{
    msgs[0].key = id;
    msgs[0].value =
        registry_event(deleted ? "robot.deleted" : "robot.upserted", id, rec, &msgs[0].len);
    if (!deleted)
        return 1;
    /* A null value after the deleted event lets compaction forget the robot. */
    msgs[1] = (struct registry_msg){.key = id, .value = NULL, .len = 0};
    return 2;
}

static void msgs_release(struct registry_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(msgs[i].value);
}

/* ---- HTTP ---- */

/* If-Match / If-None-Match: -1 absent, -2 "*", else the version ("3", "\"3\"" or W/"3"). */
static int precondition(struct http_request *req, const char *header, int64_t *out)
{
    const char *v = http_request_header(req, header);
    if (!v)
        return -1;
    char buf[32];
    while (*v == ' ')
        v++;
    if (strcmp(v, "*") == 0)
        return -2;
    if (str_has_prefix(v, "W/"))
        v += 2;
    str_copy(buf, v, sizeof(buf));
    size_t n = strlen(buf);
    char *p = buf;
    if (n >= 2 && buf[0] == '"' && buf[n - 1] == '"') {
        buf[n - 1] = '\0';
        p++;
    }
    if (str_to_int64(p, out) != 0 || *out < 1)
        return -3;
    return 0;
}

static void etag_of(int64_t version, char *out, size_t size)
{
    snprintf(out, size, "\"%lld\"", (long long)version);
}

static void respond_record(struct http_request *req, unsigned status, const cJSON *rec)
{
    char etag[32];
    int64_t v = 0;
    json_get_int(rec, "version", &v);
    etag_of(v, etag, sizeof(etag));
    http_response_header(req, "ETag", etag);
    http_respond_json(req, status, rec);
}

static bool path_id(struct http_request *req, const char **id)
{
    *id = http_request_param(req, "id");
    if (robot_id_valid(*id))
        return true;
    http_respond_problem(req, 400, "id", "robot ids are 1-64 characters of [A-Za-z0-9._-]");
    return false;
}

/* The If-Match precondition as precondition() has it, or -EINVAL when answered 400. */
static int if_match_param(struct http_request *req, int64_t *if_match)
{
    int pm = precondition(req, "If-Match", if_match);
    if (pm == -3 || pm == -2) {
        http_respond_problem(req, 400, "If-Match", "If-Match must be a version (ETag) like \"3\"");
        return -EINVAL;
    }
    return pm;
}

/* True (answered 412, cur deleted) when If-Match named another version than the stored one. */
static bool version_mismatch(struct http_request *req, int pm, int64_t if_match, int64_t version,
                             cJSON *cur)
{
    if (pm != 0 || version == if_match)
        return false;
    cJSON_Delete(cur);
    http_respond_problem(req, 412, "If-Match",
                         "the robot is at version %lld, not %lld; fetch it again",
                         (long long)version, (long long)if_match);
    return true;
}

/*
 * The write path of PUT and PATCH: content is computed from the current record
 * by build() on each attempt, stored with a version check, and published.
 */
typedef cJSON *(*content_fn)(const cJSON *current, const void *ud, struct field_err *e);

static void write_robot(struct registry *reg, struct http_request *req, const char *id,
                        content_fn build, const void *ud, bool patch)
{
    int64_t if_match = 0, if_none = 0;
    int pm = if_match_param(req, &if_match);
    int pn = precondition(req, "If-None-Match", &if_none);
    if (pm == -EINVAL)
        return;
    if (pn != -1 && pn != -2) {
        http_respond_problem(req, 400, "If-None-Match", "If-None-Match supports only *");
        return;
    }
    const char *by = registry_identity(req);
    struct redis *r = registry_redis(reg);
    for (int attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        cJSON *cur = NULL;
        int64_t version = 0;
        int rc = robot_load(r, id, &cur, &version);
        if (rc == -EIO) {
            http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was written");
            return;
        }
        if (rc == -ENOENT && patch) {
            http_respond_problem(req, 404, "id", "no robot with this id");
            return;
        }
        if (pn == -2 && cur) {
            cJSON_Delete(cur);
            http_respond_problem(req, 409, "id", "a robot with this id already exists");
            return;
        }
        if (version_mismatch(req, pm, if_match, version, cur))
            return;
        struct field_err e;
        cJSON *content = build(cur, ud, &e);
        if (!content) {
            cJSON_Delete(cur);
            http_respond_problem(req, 400, e.field, "%s", e.detail);
            return;
        }
        if (cur) {
            cJSON *old = content_of(cur);
            bool same = cJSON_Compare(old, content, true);
            cJSON_Delete(old);
            if (same) {
                /* Nothing changes: no new version, no event. */
                respond_record(req, 200, cur);
                cJSON_Delete(content);
                cJSON_Delete(cur);
                return;
            }
        }
        char now[TIME_RFC3339_LEN];
        time_format_rfc3339(time_now_ms(), now, sizeof(now));
        cJSON *rec = record_build(id, content, version + 1,
                                  cur ? json_get_str(cur, "created_at") : NULL, now, by);
        cJSON_Delete(content);
        cJSON_Delete(cur);
        int64_t newv = 0;
        char entry[REGISTRY_OUTBOX_ID_MAX], tp[TRACE_PARENT_LEN];
        struct registry_msg msgs[2];
        size_t n = robot_msgs(id, rec, false, msgs);
        if (!msgs[0].value) {
            cJSON_Delete(rec);
            http_respond_problem(req, 500, NULL, "cannot build the change event; nothing written");
            return;
        }
        registry_traceparent(req, tp);
        rc = robot_store(r, id, rec, version, msgs, n, tp, &newv, entry);
        msgs_release(msgs, n);
        if (rc == -ESTALE) {
            cJSON_Delete(rec);
            continue; /* a concurrent writer won: recompute from its record */
        }
        if (rc != 0) {
            cJSON_Delete(rec);
            http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was written");
            return;
        }
        char etag[32];
        etag_of(newv, etag, sizeof(etag));
        if (version == 0) {
            char loc[ROBOT_ID_MAX + 16];
            snprintf(loc, sizeof(loc), "/v1/robots/%s", id);
            http_response_header(req, "Location", loc);
        }
        registry_count_change(reg, "robot", "upserted");
        LOG_INFO("robot '%s' %s at version %lld by '%s'", id, version ? "updated" : "created",
                 (long long)newv, by);
        registry_respond_announced(reg, req, entry, version ? 200 : 201, json_print(rec, NULL),
                                   etag);
        cJSON_Delete(rec);
        return;
    }
    http_respond_problem(req, 409, "id", "the robot kept changing concurrently; retry");
}

struct put_ctx {
    const cJSON *body;
    const char *id;
};

static cJSON *put_content(const cJSON *current, const void *ud, struct field_err *e)
{
    (void)current;
    const struct put_ctx *p = ud;
    return content_from_json(p->body, p->id, true, e);
}

static cJSON *patch_content(const cJSON *current, const void *ud, struct field_err *e)
{
    const struct put_ctx *p = ud;
    cJSON *content = content_of(current);
    merge_patch(content, p->body);
    cJSON *out = content_from_json(content, p->id, false, e);
    cJSON_Delete(content);
    return out;
}

/* PUT replaces the content; PATCH merges into it and may not name a meta field. */
static void write_from_body(struct http_request *req, struct registry *reg, bool patch)
{
    const char *id;
    if (!path_id(req, &id))
        return;
    cJSON *body = registry_body_object(req);
    if (!body)
        return;
    const cJSON *it;
    cJSON_ArrayForEach(it, body)
    {
        if (patch &&
            listed(it->string, META_FIELDS, sizeof(META_FIELDS) / sizeof(META_FIELDS[0]))) {
            http_respond_problem(req, 400, it->string, "%s is read-only", it->string);
            cJSON_Delete(body);
            return;
        }
    }
    struct put_ctx p = {body, id};
    write_robot(reg, req, id, patch ? patch_content : put_content, &p, patch);
    cJSON_Delete(body);
}

static void handle_put(struct http_request *req, void *ud)
{
    write_from_body(req, ud, false);
}

static void handle_patch(struct http_request *req, void *ud)
{
    write_from_body(req, ud, true);
}

/* GET: the record with the live state mirror merged under "state" (one round trip). */
static void handle_get(struct http_request *req, void *ud)
{
    const char *id;
    if (!path_id(req, &id))
        return;
    char key[ROBOT_ID_MAX + 8], skey[ROBOT_ID_MAX + 16];
    snprintf(key, sizeof(key), "robot:%s", id);
    snprintf(skey, sizeof(skey), "state:robot:%s", id);
    const char *a0[] = {"HMGET", key, "record", "version"};
    const char *a1[] = {"HGETALL", skey};
    struct redis_cmd cmds[] = {{4, a0, NULL}, {2, a1, NULL}};
    redisReply *rep[2] = {NULL, NULL};
    if (redis_pipeline(registry_redis(ud), 2, cmds, rep) != 0 || !rep[0] || !rep[1] ||
        rep[0]->type != REDIS_REPLY_ARRAY || rep[0]->elements != 2) {
        http_respond_problem(req, 503, NULL, "redis is unavailable");
        goto out;
    }
    const redisReply *rec = rep[0]->element[0], *ver = rep[0]->element[1];
    if (rec->type != REDIS_REPLY_STRING || ver->type != REDIS_REPLY_STRING || rec->len < 2) {
        http_respond_problem(req, 404, "id", "no robot with this id");
        goto out;
    }
    struct buf b;
    buf_init(&b, LIST_MAX_BYTES);
    if (rep[1]->type == REDIS_REPLY_ARRAY && rep[1]->elements >= 2) {
        /* the stored record is a JSON object: reopen it to add "state" */
        buf_append(&b, rec->str, rec->len - 1);
        buf_append_str(&b, ",\"state\":{");
        for (size_t i = 0; i + 1 < rep[1]->elements; i += 2) {
            const redisReply *k = rep[1]->element[i], *v = rep[1]->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            buf_append_str(&b, i ? ",\"" : "\"");
            buf_append_json_str(&b, k->str);
            buf_append_str(&b, "\":\"");
            buf_append_json_str(&b, v->str);
            buf_append_str(&b, "\"");
        }
        buf_append_str(&b, "}}");
    } else {
        buf_append(&b, rec->str, rec->len);
    }
    char etag[40];
    snprintf(etag, sizeof(etag), "\"%s\"", ver->str);
    http_response_header(req, "ETag", etag);
    size_t len;
    char *body = buf_detach(&b, &len);
    http_respond(req, 200, "application/json", body, len);
out:
    for (size_t i = 0; i < 2; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
}

static void handle_delete(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    const char *id;
    if (!path_id(req, &id))
        return;
    int64_t if_match = 0;
    int pm = if_match_param(req, &if_match);
    if (pm == -EINVAL)
        return;
    struct redis *r = registry_redis(reg);
    for (int attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        cJSON *cur = NULL;
        int64_t version = 0, stored = 0;
        int rc = robot_load(r, id, &cur, &version);
        if (rc == -ENOENT) {
            http_respond_problem(req, 404, "id", "no robot with this id");
            return;
        }
        if (rc != 0) {
            http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was deleted");
            return;
        }
        if (version_mismatch(req, pm, if_match, version, cur))
            return;
        char now[TIME_RFC3339_LEN], entry[REGISTRY_OUTBOX_ID_MAX], tp[TRACE_PARENT_LEN];
        time_format_rfc3339(time_now_ms(), now, sizeof(now));
        cJSON_ReplaceItemInObjectCaseSensitive(cur, "updated_at", cJSON_CreateString(now));
        cJSON_ReplaceItemInObjectCaseSensitive(cur, "updated_by",
                                               cJSON_CreateString(registry_identity(req)));
        cJSON_AddBoolToObject(cur, "deleted", true);
        struct registry_msg msgs[2];
        size_t n = robot_msgs(id, cur, true, msgs);
        cJSON_Delete(cur);
        if (!msgs[0].value) {
            http_respond_problem(req, 500, NULL, "cannot build the change event; nothing deleted");
            return;
        }
        registry_traceparent(req, tp);
        rc = robot_delete(r, id, version, msgs, n, tp, &stored, entry);
        msgs_release(msgs, n);
        if (rc == -ESTALE)
            continue;
        if (rc != 0) {
            http_respond_problem(req, 503, NULL, "redis is unavailable; nothing was deleted");
            return;
        }
        registry_count_change(reg, "robot", "deleted");
        LOG_INFO("robot '%s' deleted by '%s'", id, registry_identity(req));
        registry_respond_announced(reg, req, entry, 204, NULL, NULL);
        return;
    }
    http_respond_problem(req, 409, "id", "the robot kept changing concurrently; retry");
}

/* A filter query parameter: NULL when absent; false (answered 400) when malformed. */
static bool filter_param(struct http_request *req, const char *name, bool (*valid)(const char *),
                         const char **out)
{
    *out = http_request_query(req, name);
    if (*out && !**out)
        *out = NULL;
    if (*out && !valid(*out)) {
        http_respond_problem(req, 400, name, "%s has characters or a length ids do not have", name);
        return false;
    }
    return true;
}

static bool fleet_valid(const char *s)
{
    return token_valid(s, ROBOT_ID_MAX);
}

/* Answers {"robots":[records...],"next_cursor":cursor or null}; takes nothing over. */
/* A read that failed: Redis's error logged under what, rep freed, 503 answered. */
static void read_failed(struct http_request *req, redisReply *rep, const char *what)
{
    if (rep && rep->type == REDIS_REPLY_ERROR)
        LOG_ERROR("%s failed: %s", what, rep->str);
    if (rep)
        freeReplyObject(rep);
    http_respond_problem(req, 503, NULL, "redis is unavailable");
}

static void respond_page(struct http_request *req, redisReply *const *records, size_t n,
                         const char *cursor)
{
    struct buf b;
    buf_init(&b, LIST_MAX_BYTES);
    buf_append_str(&b, "{\"robots\":[");
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (!records[i] || records[i]->type != REDIS_REPLY_STRING)
            continue;
        if (!first)
            buf_append_str(&b, ",");
        buf_append(&b, records[i]->str, records[i]->len);
        first = false;
    }
    buf_append_str(&b, "],\"next_cursor\":");
    if (cursor && *cursor) {
        buf_append_str(&b, "\"");
        buf_append_json_str(&b, cursor);
        buf_append_str(&b, "\"}");
    } else {
        buf_append_str(&b, "null}");
    }
    size_t len;
    char *body = buf_detach(&b, &len);
    http_respond(req, 200, "application/json", body, len);
}

/*
 * A page of one index set without search text: the ids in one ZRANGEBYLEX,
 * then every record in one pipelined round trip. Plain commands cost Redis a
 * tenth of the CPU of the same reads made from LIST_LUA. The page is the same
 * as the script's except that a robot deleted between the two round trips is
 * left out (the cursor still moves past it).
 */
static void list_one_index(struct http_request *req, struct redis *r, const char *key,
                           const char *cursor, int64_t count)
{
    char min[ROBOT_ID_MAX + 2], cnt[24];
    snprintf(min, sizeof(min), "%s%s", cursor ? "(" : "-", cursor ? cursor : "");
    snprintf(cnt, sizeof(cnt), "%lld", (long long)count);
    redisReply *ids = redis_cmd(r, "ZRANGEBYLEX", key, min, "+", "LIMIT", "0", cnt, (char *)NULL);
    if (!ids || ids->type != REDIS_REPLY_ARRAY) {
        read_failed(req, ids, "robot list index read");
        return;
    }
    size_t n = ids->elements;
    struct redis_cmd *cmds = xcalloc(n ? n : 1, sizeof(*cmds));
    const char **argv = xcalloc(n ? 3 * n : 1, sizeof(*argv));
    char(*keys)[ROBOT_ID_MAX + 8] = xcalloc(n ? n : 1, sizeof(*keys));
    redisReply **recs = xcalloc(n ? n : 1, sizeof(*recs));
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        const redisReply *id = ids->element[i];
        ok = id->type == REDIS_REPLY_STRING && robot_id_valid(id->str);
        if (!ok)
            break;
        snprintf(keys[i], sizeof(keys[i]), "robot:%s", id->str);
        argv[3 * i] = "HGET";
        argv[3 * i + 1] = keys[i];
        argv[3 * i + 2] = "record";
        cmds[i] = (struct redis_cmd){3, argv + 3 * i, NULL};
    }
    if (!ok) {
        LOG_ERROR("index '%s' holds a malformed robot id", key);
        http_respond_problem(req, 500, NULL, "the robot index is corrupt");
    } else if (n && redis_pipeline(r, n, cmds, recs) != 0) {
        http_respond_problem(req, 503, NULL, "redis is unavailable");
    } else {
        /* a full page may have more after it: the script's cursor rule */
        respond_page(req, recs, n, (int64_t)n == count ? ids->element[n - 1]->str : NULL);
    }
    for (size_t i = 0; i < n; i++)
        if (recs[i])
            freeReplyObject(recs[i]);
    free(recs);
    free(keys);
    free(argv);
    free(cmds);
    freeReplyObject(ids);
}

static void handle_list(struct http_request *req, void *ud)
{
    struct registry *reg = ud;
    const struct registry_settings *set = registry_settings(reg);
    const char *fleet, *status, *source, *cursor;
    if (!filter_param(req, "fleet", fleet_valid, &fleet) ||
        !filter_param(req, "status", status_valid, &status) ||
        !filter_param(req, "source", source_id_valid, &source) ||
        !filter_param(req, "cursor", robot_id_valid, &cursor))
        return;
    int64_t limit = set->default_page;
    const char *ls = http_request_query(req, "limit");
    if (ls && (str_to_int64(ls, &limit) != 0 || limit < 1 || limit > set->max_page)) {
        http_respond_problem(req, 400, "limit", "limit must be an integer from 1 to %lld",
                             (long long)set->max_page);
        return;
    }
    const char *qs = http_request_query(req, "q");
    char q[QUERY_MAX + 1] = "";
    if (qs && strlen(qs) > QUERY_MAX) {
        http_respond_problem(req, 400, "q", "q is at most %d characters", QUERY_MAX);
        return;
    }
    for (size_t i = 0; qs && qs[i]; i++) {
        q[i] = (char)tolower((unsigned char)qs[i]);
        q[i + 1] = '\0';
    }

    char kf[ROBOT_ID_MAX + 16], ks[STATUS_MAX + 16], kso[SOURCE_ID_MAX + 16], lim[24], bud[24];
    const char *argv[12] = {"EVAL", LIST_LUA, NULL};
    int argc = 3;
    char nkeys[4];
    /* argv: EVAL script numkeys keys... cursor limit budget q */
    if (fleet) {
        snprintf(kf, sizeof(kf), "robots:fleet:%s", fleet);
        argv[argc++] = kf;
    }
    if (status) {
        snprintf(ks, sizeof(ks), "robots:status:%s", status);
        argv[argc++] = ks;
    }
    if (source) {
        snprintf(kso, sizeof(kso), "robots:source:%s", source);
        argv[argc++] = kso;
    }
    if (argc == 3)
        argv[argc++] = "robots:all";
    if (argc == 4 && !q[0]) {
        int64_t count = limit < set->list_scan_budget ? limit : set->list_scan_budget;
        list_one_index(req, registry_redis(reg), argv[3], cursor, count);
        return;
    }
    snprintf(nkeys, sizeof(nkeys), "%d", argc - 3);
    argv[2] = nkeys;
    snprintf(lim, sizeof(lim), "%lld", (long long)limit);
    snprintf(bud, sizeof(bud), "%lld", (long long)set->list_scan_budget);
    argv[argc++] = cursor ? cursor : "";
    argv[argc++] = lim;
    argv[argc++] = bud;
    argv[argc++] = q;

    redisReply *rep = redis_command(registry_redis(reg), argc, argv, NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        read_failed(req, rep, "robot list script");
        return;
    }
    respond_page(req, rep->element + 1, rep->elements - 1, rep->element[0]->str);
    freeReplyObject(rep);
}

int robots_register_routes(struct registry *reg)
{
    struct http_server *h = registry_http(reg);
    int rc = 0;
    rc |= http_server_route(h, "GET", "/v1/robots", handle_list, reg);
    rc |= http_server_route(h, "GET", "/v1/robots/{id}", handle_get, reg);
    rc |= http_server_route(h, "PUT", "/v1/robots/{id}", handle_put, reg);
    rc |= http_server_route(h, "PATCH", "/v1/robots/{id}", handle_patch, reg);
    rc |= http_server_route(h, "DELETE", "/v1/robots/{id}", handle_delete, reg);
    return rc ? -EINVAL : 0;
}

/* ---- sync ---- */

/* Vendor-owned fields replace ours; the rest of the current record stays. */
static cJSON *vendor_content(const cJSON *current, const cJSON *vr, const char *source,
                             struct field_err *e)
{
    static const char *const vendor_fields[] = {"name",   "model", "fleet",
                                                "status", "busy",  "labels"};
    cJSON *in = current ? content_of(current) : cJSON_CreateObject();
    for (size_t i = 0; i < sizeof(vendor_fields) / sizeof(vendor_fields[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(vr, vendor_fields[i]);
        cJSON_DeleteItemFromObjectCaseSensitive(in, vendor_fields[i]);
        if (v)
            cJSON_AddItemToObject(in, vendor_fields[i], cJSON_Duplicate(v, true));
    }
    cJSON_DeleteItemFromObjectCaseSensitive(in, "source");
    cJSON_AddStringToObject(in, "source", source);
    const char *id = json_get_str(vr, "id");
    cJSON *out = content_from_json(in, id ? id : "", false, e);
    cJSON_Delete(in);
    return out;
}

/* Robots stored by a sync whose events the outbox has not announced yet. */
struct sync_batch {
    size_t n;
    char last[REGISTRY_OUTBOX_ID_MAX];
    char tp[TRACE_PARENT_LEN];
};

static int sync_one(struct redis *r, const char *source, const cJSON *vr, const char *by,
                    struct robot_sync_counts *c, struct sync_batch *batch)
{
    const char *id = json_get_str(vr, "id");
    if (!robot_id_valid(id)) {
        c->invalid++;
        return 0;
    }
    for (int attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        cJSON *cur = NULL;
        int64_t version = 0, newv = 0;
        int rc = robot_load(r, id, &cur, &version);
        if (rc == -EIO)
            return -EIO;
        struct field_err e;
        cJSON *content = vendor_content(cur, vr, source, &e);
        if (!content) {
            LOG_WARN("sync of source '%s': robot '%s' skipped: %s: %s", source, id, e.field,
                     e.detail);
            cJSON_Delete(cur);
            c->invalid++;
            return 0;
        }
        if (cur) {
            cJSON *old = content_of(cur);
            bool same = cJSON_Compare(old, content, true);
            cJSON_Delete(old);
            if (same) {
                cJSON_Delete(content);
                cJSON_Delete(cur);
                c->unchanged++;
                return 0;
            }
        }
        char now[TIME_RFC3339_LEN], entry[REGISTRY_OUTBOX_ID_MAX];
        time_format_rfc3339(time_now_ms(), now, sizeof(now));
        cJSON *rec = record_build(id, content, version + 1,
                                  cur ? json_get_str(cur, "created_at") : NULL, now, by);
        cJSON_Delete(content);
        cJSON_Delete(cur);
        struct registry_msg msgs[2];
        size_t n = robot_msgs(id, rec, false, msgs);
        rc = msgs[0].value ? robot_store(r, id, rec, version, msgs, n, batch->tp, &newv, entry)
                           : -EIO;
        msgs_release(msgs, n);
        cJSON_Delete(rec);
        if (rc == -ESTALE)
            continue;
        if (rc != 0)
            return -EIO;
        if (version)
            c->updated++;
        else
            c->added++;
        batch->n++;
        str_copy(batch->last, entry, sizeof(batch->last));
        return 0;
    }
    return -EIO;
}

/* Waits until the outbox announced the batch (its last entry): 0 or -EPIPE. */
static int sync_flush(struct registry *reg, struct sync_batch *batch)
{
    if (batch->n == 0)
        return 0;
    for (size_t i = 0; i < batch->n; i++)
        registry_count_change(reg, "robot", "upserted");
    batch->n = 0;
    return registry_wait_announced(reg, batch->last);
}

int robots_sync_apply(struct registry *reg, const char *source, const cJSON *vendor_robots,
                      const char *updated_by, struct robot_sync_counts *counts)
{
    struct redis *r = registry_redis(reg);
    struct sync_batch batch = {0};
    registry_traceparent(NULL, batch.tp);
    const cJSON *vr;
    int rc = 0;
    cJSON_ArrayForEach(vr, vendor_robots)
    {
        if ((rc = sync_one(r, source, vr, updated_by, counts, &batch)) != 0)
            break;
        if (batch.n >= SYNC_BATCH && (rc = sync_flush(reg, &batch)) != 0)
            break;
    }
    int frc = sync_flush(reg, &batch);
    return rc ? rc : frc;
}
