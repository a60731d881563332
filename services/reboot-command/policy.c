/*
 * The safety policy: the robot as the registry describes it (robot:{id} in
 * Redis, written by robot-registry), maintenance windows (5-field UTC cron +
 * duration), the refusing rules (robot policy, abort switch, busy veto,
 * cooldown, daily cap), the fleet-wide cap on concurrent reboots (slots in
 * reboot:active, the excess waiting in reboot:queue in arrival order) and the
 * automatic abort switch fed by recent outcomes. Shared state lives in Redis so
 * every replica applies the same limits; each multi-key step is one Lua script.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "log.h"
#include "reboot.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"

#define KEY_MAX (ROBOT_ID_MAX + 64)

/* ---- robot view ---- */

/* The counters the refusing rules read, from the pipeline's replies 1-3 (strings or nil). */
static void read_counters(redisReply **rep, struct robot_view *v)
{
    v->paused = rep[1]->type == REDIS_REPLY_STRING && strcmp(rep[1]->str, "paused") == 0;
    if (rep[2]->type == REDIS_REPLY_STRING)
        str_to_int64(rep[2]->str, &v->last_ms);
    if (rep[3]->type == REDIS_REPLY_STRING)
        str_to_int64(rep[3]->str, &v->day_count);
}

int policy_robot(struct redis *r, const char *robot_id, struct robot_view *v)
{
    return policy_robot_with(r, robot_id, v, NULL, NULL);
}

int policy_robot_with(struct redis *r, const char *robot_id, struct robot_view *v,
                      const struct redis_cmd *first, redisReply **first_rep)
{
    char key[KEY_MAX], k_last[KEY_MAX], k_day[KEY_MAX + 16];
    memset(v, 0, sizeof(*v));
    v->read_ms = time_now_ms();
    snprintf(key, sizeof(key), "robot:%s", robot_id);
    snprintf(k_last, sizeof(k_last), "reboot:last:%s", robot_id);
    policy_day_key(k_day, sizeof(k_day), robot_id, v->read_ms);
    /* the record and the rules' counters in one round trip (after the caller's command) */
    const char *a0[] = {"HGET", key, "record"};
    const char *a1[] = {"HGET", "reboot:automation", "state"};
    const char *a2[] = {"GET", k_last};
    const char *a3[] = {"GET", k_day};
    struct redis_cmd cmds[5] = {{0, NULL, NULL}};
    size_t n = 0;
    if (first)
        cmds[n++] = *first;
    cmds[n++] = (struct redis_cmd){3, a0, NULL};
    cmds[n++] = (struct redis_cmd){3, a1, NULL};
    cmds[n++] = (struct redis_cmd){2, a2, NULL};
    cmds[n++] = (struct redis_cmd){2, a3, NULL};
    redisReply *all[5] = {NULL, NULL, NULL, NULL, NULL};
    int rc = redis_pipeline(r, n, cmds, all) == 0 ? 0 : -EIO;
    redisReply **rep = first ? all + 1 : all;
    if (first_rep)
        *first_rep = all[0];
    for (int i = 0; i < 4 && rc == 0; i++)
        if (!rep[i] || (rep[i]->type != REDIS_REPLY_STRING && rep[i]->type != REDIS_REPLY_NIL))
            rc = -EIO;
    cJSON *rec = NULL;
    if (rc == 0) {
        read_counters(rep, v);
        if (rep[0]->type == REDIS_REPLY_STRING)
            rec = json_parse(rep[0]->str, rep[0]->len, NULL, 0);
    }
    for (int i = 0; i < 4; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
    if (!rec)
        return rc; /* no or an unreadable record is treated as no robot: never reboot blind */
    v->found = true;
    json_get_bool(rec, "busy", &v->busy);
    const char *src = json_get_str(rec, "source");
    str_copy(v->source, src ? src : "", sizeof(v->source));
    const cJSON *pol = cJSON_GetObjectItemCaseSensitive(rec, "policy");
    json_get_bool(pol, "auto_reboot", &v->auto_reboot);
    const cJSON *modes = cJSON_GetObjectItemCaseSensitive(pol, "modes");
    const cJSON *m;
    cJSON_ArrayForEach(m, modes)
    {
        if (cJSON_IsString(m) && strcmp(m->valuestring, "soft") == 0)
            v->mode_soft = true;
        if (cJSON_IsString(m) && strcmp(m->valuestring, "hard") == 0)
            v->mode_hard = true;
    }
    const cJSON *win = cJSON_GetObjectItemCaseSensitive(rec, "maintenance_window");
    const char *cron = json_get_str(win, "cron");
    int64_t dur = 0;
    if (cron && json_get_int(win, "duration_s", &dur) == 0 && dur > 0 && policy_cron_valid(cron)) {
        str_copy(v->cron, cron, sizeof(v->cron));
        v->window_s = dur;
    }
    cJSON_Delete(rec);
    return 0;
}

/* ---- cron ---- */

struct cron {
    uint64_t minute, hour, dom, month, dow;
    bool dom_star, dow_star;
};

/* One field: comma-separated items of "*", "a" or "a-b", each with an optional "/step". */
static int cron_field(const char *s, size_t len, int lo, int hi, uint64_t *mask, bool *star)
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    *mask = 0;
    *star = strcmp(buf, "*") == 0;
    for (char *item = buf; item && *item;) {
        char *next = strchr(item, ',');
        if (next)
            *next++ = '\0';
        int64_t a = lo, b = hi, step = 1;
        char *slash = strchr(item, '/');
        if (slash) {
            *slash = '\0';
            if (str_to_int64(slash + 1, &step) != 0 || step < 1 || step > 60)
                return -EINVAL;
        }
        if (strcmp(item, "*") != 0) {
            char *dash = strchr(item, '-');
            if (dash)
                *dash = '\0';
            if (str_to_int64(item, &a) != 0 || (dash && str_to_int64(dash + 1, &b) != 0))
                return -EINVAL;
            if (!dash)
                b = slash ? hi : a;
        }
        if (a < lo || b > hi || a > b)
            return -EINVAL;
        for (int64_t v = a; v <= b; v += step)
            *mask |= 1ULL << v;
        item = next;
    }
    return 0;
}

static int cron_parse(const char *text, struct cron *c)
{
    const char *p = text;
    const char *f[5];
    size_t n[5];
    for (int i = 0; i < 5; i++) {
        while (*p == ' ' || *p == '\t')
            p++;
        f[i] = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        n[i] = (size_t)(p - f[i]);
    }
    while (*p == ' ' || *p == '\t')
        p++;
    bool ignore;
    if (*p || cron_field(f[0], n[0], 0, 59, &c->minute, &ignore) ||
        cron_field(f[1], n[1], 0, 23, &c->hour, &ignore) ||
        cron_field(f[2], n[2], 1, 31, &c->dom, &c->dom_star) ||
        cron_field(f[3], n[3], 1, 12, &c->month, &ignore) ||
        cron_field(f[4], n[4], 0, 7, &c->dow, &c->dow_star))
        return -EINVAL;
    if (c->dow & (1ULL << 7))
        c->dow |= 1ULL; /* 7 is Sunday too */
    return 0;
}

bool policy_cron_valid(const char *cron)
{
    struct cron c;
    return cron_parse(cron, &c) == 0;
}

static bool cron_match(const struct cron *c, int64_t minute)
{
    time_t t = (time_t)(minute * 60);
    struct tm tm;
    gmtime_r(&t, &tm);
    if (!(c->minute & (1ULL << tm.tm_min)) || !(c->hour & (1ULL << tm.tm_hour)) ||
        !(c->month & (1ULL << (tm.tm_mon + 1))))
        return false;
    bool dom = (c->dom >> tm.tm_mday) & 1, dow = (c->dow >> tm.tm_wday) & 1;
    /* cron's rule: when both day fields are restricted, either may match */
    if (!c->dom_star && !c->dow_star)
        return dom || dow;
    return dom && dow;
}

int policy_next_window(const char *text, int64_t duration_s, int64_t now_ms, int64_t *start_ms)
{
    struct cron c;
    if (cron_parse(text, &c) != 0)
        return -EINVAL;
    int64_t minute = now_ms / 60000;
    for (int64_t m = minute; m > minute - (duration_s + 59) / 60 - 1; m--)
        if (cron_match(&c, m) && m * 60000 + duration_s * 1000 > now_ms) {
            *start_ms = now_ms;
            return 0;
        }
    for (int64_t m = minute + 1; m < minute + 366 * 1440; m++)
        if (cron_match(&c, m)) {
            *start_ms = m * 60000;
            return 0;
        }
    return -ENOENT;
}

/* ---- refusing rules ---- */

void policy_day_key(char *out, size_t n, const char *robot_id, int64_t now_ms)
{
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, n, "reboot:day:%s:%04d%02d%02d", robot_id, tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday);
}

int policy_check(struct reboot *rb, const struct command *c, const struct robot_view *v,
                 const char **rule, char *detail, size_t ndetail)
{
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    bool automatic = strcmp(c->origin, "automatic") == 0;
    bool hard = strcmp(c->mode, "hard") == 0;
    int64_t now = v->read_ms;
    if (automatic && (!v->auto_reboot || (hard ? !v->mode_hard : !v->mode_soft))) {
        *rule = "robot_policy";
        snprintf(detail, ndetail, "the robot's policy does not allow automatic %s reboots",
                 c->mode);
        return 1;
    }
    if (v->paused && (automatic || !c->force)) {
        *rule = "abort_switch";
        snprintf(detail, ndetail,
                 "automatic reboots are paused fleet-wide after too many failures; an operator "
                 "resumes them with POST /v1/automation/resume (or sends force)");
        return 1;
    }
    if (v->busy && !c->force) {
        *rule = "busy";
        snprintf(detail, ndetail, "the robot reports it is busy; an operator may send force");
        return 1;
    }
    int64_t last = v->last_ms, count = v->day_count;
    if (last > 0 && now - last < set.cooldown_s * 1000) {
        *rule = "cooldown";
        snprintf(detail, ndetail, "the robot was rebooted %llds ago; cooldown is %llds",
                 (long long)((now - last) / 1000), (long long)set.cooldown_s);
        return 1;
    }
    if (count >= set.max_per_day) {
        *rule = "daily_cap";
        snprintf(detail, ndetail, "the robot was rebooted %lld times today (UTC); the cap is %lld",
                 (long long)count, (long long)set.max_per_day);
        return 1;
    }
    return 0;
}

void policy_count_dispatch(struct redis *r, const char *robot_id, int64_t now_ms)
{
    char k_last[KEY_MAX], k_day[KEY_MAX + 16], now[24];
    snprintf(k_last, sizeof(k_last), "reboot:last:%s", robot_id);
    policy_day_key(k_day, sizeof(k_day), robot_id, now_ms);
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    const char *a0[] = {"SET", k_last, now, "EX", "604800"};
    const char *a1[] = {"INCR", k_day};
    const char *a2[] = {"EXPIRE", k_day, "172800"};
    struct redis_cmd cmds[] = {{5, a0, NULL}, {2, a1, NULL}, {3, a2, NULL}};
    redisReply *rep[3] = {NULL, NULL, NULL};
    if (redis_pipeline(r, 3, cmds, rep) != 0)
        LOG_WARN("cannot count the reboot of '%s' for cooldown and daily cap", robot_id);
    for (int i = 0; i < 3; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
}

/* ---- fleet slots ---- */

static const char RELEASE_LUA[] = "local out = {}\n"
                                  "while #out < tonumber(ARGV[2]) and\n"
                                  "      redis.call('SCARD', KEYS[1]) < tonumber(ARGV[1]) do\n"
                                  "  local h = redis.call('ZRANGE', KEYS[2], 0, 0)\n"
                                  "  if #h == 0 then break end\n"
                                  "  redis.call('ZREM', KEYS[2], h[1])\n"
                                  "  redis.call('SADD', KEYS[1], h[1])\n"
                                  "  out[#out + 1] = h[1]\n"
                                  "end\n"
                                  "return out\n";

int policy_release(struct reboot *rb, struct redis *r, char ids[][CMD_ID_MAX + 1], int room)
{
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    char cap[24], n[24];
    snprintf(cap, sizeof(cap), "%lld", (long long)set.fleet_max);
    snprintf(n, sizeof(n), "%d", room);
    redisReply *rep = redis_cmd(r, "EVAL", RELEASE_LUA, "2", "reboot:active", "reboot:queue", cap,
                                n, (char *)NULL);
    int rc = -EIO;
    if (rep && rep->type == REDIS_REPLY_ARRAY) {
        rc = 0;
        for (size_t i = 0; i < rep->elements && rc < room; i++)
            if (rep->element[i]->type == REDIS_REPLY_STRING)
                str_copy(ids[rc++], rep->element[i]->str, CMD_ID_MAX + 1);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

void policy_slot_free(struct redis *r, const char *id)
{
    redisReply *rep = redis_cmd(r, "SREM", "reboot:active", id, (char *)NULL);
    if (rep)
        freeReplyObject(rep);
}

int64_t policy_queue_depth(struct redis *r)
{
    redisReply *rep = redis_cmd(r, "ZCARD", "reboot:queue", (char *)NULL);
    int64_t n = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    if (rep)
        freeReplyObject(rep);
    return n;
}

bool policy_queue_full(struct reboot *rb, struct redis *r)
{
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    return policy_queue_depth(r) >= set.fleet_queue_max;
}

/* ---- abort switch ---- */

static const char OUTCOME_LUA[] =
    "redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2] .. ':' .. ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))\n"
    "local all = redis.call('ZRANGE', KEYS[1], 0, -1)\n"
    "local f = 0\n"
    "for _, m in ipairs(all) do if string.sub(m, 1, 2) == '0:' then f = f + 1 end end\n"
    "local n = #all\n"
    "if n >= tonumber(ARGV[5]) and f / n >= tonumber(ARGV[6]) and\n"
    "   redis.call('HGET', KEYS[2], 'state') ~= 'paused' then\n"
    "  redis.call('HSET', KEYS[2], 'state', 'paused', 'at', ARGV[7], 'by', 'reboot-command',\n"
    "             'reason', f .. ' of the last ' .. n .. ' reboots failed')\n"
    "  return {1, n, f}\n"
    "end\n"
    "return {0, n, f}\n";

bool policy_record_outcome(struct reboot *rb, struct redis *r, const char *id, bool ok)
{
    struct reboot_settings set;
    reboot_settings_get(rb, &set);
    int64_t now = time_now_ms();
    char snow[24], win[24], min[24], ratio[32], iso[TIME_RFC3339_LEN];
    snprintf(snow, sizeof(snow), "%lld", (long long)now);
    snprintf(win, sizeof(win), "%lld", (long long)set.abort_window_s * 1000);
    snprintf(min, sizeof(min), "%lld", (long long)set.abort_min_count);
    snprintf(ratio, sizeof(ratio), "%.6f", set.abort_ratio);
    time_format_rfc3339(now, iso, sizeof(iso));
    redisReply *rep = redis_cmd(r, "EVAL", OUTCOME_LUA, "2", "reboot:outcomes", "reboot:automation",
                                id, ok ? "1" : "0", snow, win, min, ratio, iso, (char *)NULL);
    bool tripped = false;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 3) {
        tripped = rep->element[0]->integer == 1;
        if (tripped)
            LOG_WARN("automatic reboots paused fleet-wide: %lld of the last %lld reboots failed",
                     (long long)rep->element[2]->integer, (long long)rep->element[1]->integer);
    } else {
        LOG_WARN("cannot record the outcome of command '%s' for the abort switch", id);
    }
    if (rep)
        freeReplyObject(rep);
    return tripped;
}

cJSON *policy_automation_json(struct redis *r, int *err)
{
    redisReply *rep = redis_cmd(r, "HGETALL", "reboot:automation", (char *)NULL);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        *err = -EIO;
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", "running");
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *k = rep->element[i]->str, *v = rep->element[i + 1]->str;
        if (!k || !v)
            continue;
        if (strcmp(k, "state") == 0)
            cJSON_ReplaceItemInObject(o, "state", cJSON_CreateString(v));
        else if (strcmp(k, "at") == 0 || strcmp(k, "by") == 0 || strcmp(k, "reason") == 0)
            cJSON_AddStringToObject(o, k, v);
    }
    freeReplyObject(rep);
    *err = 0;
    return o;
}

int policy_automation_resume(struct redis *r, const char *actor)
{
    char iso[TIME_RFC3339_LEN];
    time_format_rfc3339(time_now_ms(), iso, sizeof(iso));
    const char *a0[] = {
        "HSET",   "reboot:automation",     "state", "running", "at", iso, "by", actor,
        "reason", "resumed by an operator"};
    const char *a1[] = {"DEL", "reboot:outcomes"};
    const char *m[] = {"MULTI"}, *e[] = {"EXEC"};
    struct redis_cmd cmds[] = {{1, m, NULL}, {10, a0, NULL}, {2, a1, NULL}, {1, e, NULL}};
    redisReply *rep[4] = {NULL, NULL, NULL, NULL};
    int rc = redis_pipeline(r, 4, cmds, rep) == 0 && rep[3] && rep[3]->type == REDIS_REPLY_ARRAY
                 ? 0
                 : -EIO;
    for (int i = 0; i < 4; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
    return rc;
}
