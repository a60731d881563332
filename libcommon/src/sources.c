/*
 * Vendor source records in Redis and a read-mostly cache of them (see sources.h).
 */
#include "sources.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "json.h"
#include "keyring.h"
#include "log.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"
#include "xalloc.h"

#define SOURCE_MAX_SECRETS 8
#define SECRET_MAX_BYTES   256

bool source_id_valid(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++) {
        char ch = id[n];
        if (n >= SOURCE_ID_MAX ||
            !((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
            return false;
    }
    return n > 0;
}

int source_scheme_parse(const char *s, enum source_scheme *out)
{
    if (s && strcmp(s, "standard-webhooks") == 0)
        *out = SOURCE_SCHEME_STANDARD_WEBHOOKS;
    else if (s && strcmp(s, "github-sha256") == 0)
        *out = SOURCE_SCHEME_GITHUB_SHA256;
    else
        return -EINVAL;
    return 0;
}

const char *source_scheme_name(enum source_scheme s)
{
    return s == SOURCE_SCHEME_GITHUB_SHA256 ? "github-sha256" : "standard-webhooks";
}

bool source_secret_active(const struct source_secret *s, int64_t now_ms)
{
    return s->expires_at_ms == 0 || now_ms < s->expires_at_ms;
}

void source_free(struct source *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nsecrets; i++) {
        OPENSSL_cleanse(s->secrets[i].key, s->secrets[i].keylen);
        free(s->secrets[i].key);
    }
    free(s->secrets);
    if (s->api_token) {
        OPENSSL_cleanse(s->api_token, strlen(s->api_token));
        free(s->api_token);
    }
    free(s->base_url);
    free(s->id);
    free(s);
}

/* "whsec_<base64>" is the Standard Webhooks form; anything else is used as raw bytes. */
static int secret_key(const char *text, struct source_secret *out)
{
    size_t len = strlen(text);
    if (len == 0 || len > SECRET_MAX_BYTES)
        return -EINVAL;
    if (str_has_prefix(text, "whsec_")) {
        out->key = xmalloc(len);
        if (crypto_base64_decode(text + 6, len - 6, out->key, len, &out->keylen) != 0 ||
            out->keylen == 0) {
            free(out->key);
            out->key = NULL;
            return -EINVAL;
        }
        return 0;
    }
    out->key = (uint8_t *)xstrdup(text);
    out->keylen = len;
    return 0;
}

static int parse_secrets(const char *json, struct source *s)
{
    cJSON *root = json_parse(json, strlen(json), NULL, 0);
    int rc = -EINVAL;
    if (!cJSON_IsArray(root) || cJSON_GetArraySize(root) > SOURCE_MAX_SECRETS)
        goto out;
    s->secrets = xcalloc((size_t)cJSON_GetArraySize(root) + 1, sizeof(*s->secrets));
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        const char *text = json_get_str(item, "secret");
        int64_t expires = 0;
        if (!text || json_get_int(item, "expires_at_ms", &expires) == -EINVAL)
            goto out;
        struct source_secret *sec = &s->secrets[s->nsecrets];
        if (secret_key(text, sec) != 0)
            goto out;
        sec->expires_at_ms = expires;
        s->nsecrets++;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static const char *hash_field(const redisReply *reply, const char *name)
{
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            strcmp(k->str, name) == 0)
            return v->str;
    }
    return NULL;
}

static int open_field(const struct keyring *k, const char *id, const char *field,
                      const char *sealed, char **plain)
{
    char aad[SOURCE_ID_MAX + 64];
    snprintf(aad, sizeof(aad), "source:%s:%s", id, field);
    int rc = keyring_open(k, aad, sealed, plain, NULL);
    return rc == 0 ? 0 : rc == -EINVAL ? -EINVAL : -EBADMSG;
}

int sources_load(struct redis *r, const struct keyring *k, const char *id, struct source **out)
{
    char key[SOURCE_ID_MAX + 8];
    if (!source_id_valid(id))
        return -ENOENT;
    snprintf(key, sizeof(key), "source:%s", id);
    redisReply *reply = redis_cmd(r, "HGETALL", key, (char *)NULL);
    if (!reply)
        return -EIO;
    if (reply->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(reply);
        return -EIO;
    }
    if (reply->elements == 0) {
        freeReplyObject(reply);
        return -ENOENT;
    }
    struct source *s = xcalloc(1, sizeof(*s));
    char *secrets_json = NULL;
    int rc = -EINVAL;
    const char *scheme = hash_field(reply, "signature_scheme");
    const char *base_url = hash_field(reply, "base_url");
    const char *token = hash_field(reply, "api_token");
    const char *secrets = hash_field(reply, "webhook_secrets");
    const char *version = hash_field(reply, "version");
    s->id = xstrdup(id);
    s->base_url = xstrdup(base_url ? base_url : "");
    if (scheme && source_scheme_parse(scheme, &s->scheme) != 0)
        goto out;
    if (version && str_to_int64(version, &s->version) != 0)
        goto out;
    if (token && *token && (rc = open_field(k, id, "api_token", token, &s->api_token)) != 0)
        goto out;
    if (secrets && *secrets) {
        if ((rc = open_field(k, id, "webhook_secrets", secrets, &secrets_json)) != 0)
            goto out;
        if ((rc = parse_secrets(secrets_json, s)) != 0)
            goto out;
    }
    rc = 0;
out:
    if (secrets_json) {
        OPENSSL_cleanse(secrets_json, strlen(secrets_json));
        free(secrets_json);
    }
    freeReplyObject(reply);
    if (rc) {
        source_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* ---- writing ---- */

/*
 * KEYS: source:{id}, sources, optionally an outbox stream. ARGV: expected
 * version (-1 any), webhook mode (keep|set|del), webhook id, created_at, the
 * number n of field/value arguments, n of them, then the outbox entry's
 * field/value pairs. Returns {1, new version, outbox id or ""} or {0, stored version}.
 */
static const char STORE_LUA[] =
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')\n"
    "local exp = tonumber(ARGV[1])\n"
    "if exp >= 0 and cur ~= exp then return {0, cur} end\n"
    "local nv = cur + 1\n"
    "local nh = tonumber(ARGV[5])\n"
    "local args = {}\n"
    "for i = 6, 5 + nh do args[#args + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], 'version', tostring(nv), unpack(args))\n"
    "redis.call('HSETNX', KEYS[1], 'created_at', ARGV[4])\n"
    "if ARGV[2] == 'set' then redis.call('HSET', KEYS[1], 'webhook_id', ARGV[3])\n"
    "elseif ARGV[2] == 'del' then redis.call('HDEL', KEYS[1], 'webhook_id') end\n"
    "redis.call('SADD', KEYS[2], ARGV[7])\n"
    "local ob = ''\n"
    "if KEYS[3] then ob = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 6 + nh)) end\n"
    "return {1, nv, ob}\n";

/*
 * KEYS: source:{id}, sources, optionally an outbox stream. ARGV: id, then the
 * outbox entry's field/value pairs. Returns {1, outbox id or ""} or {0, ""}.
 */
static const char DELETE_LUA[] =
    "if redis.call('DEL', KEYS[1]) == 0 then return {0, ''} end\n"
    "redis.call('SREM', KEYS[2], ARGV[1])\n"
    "local ob = ''\n"
    "if KEYS[3] then ob = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 2)) end\n"
    "return {1, ob}\n";

/* Copies the outbox id of reply element i into ob (if any). */
static void outbox_id(const redisReply *reply, size_t i, struct source_outbox *ob)
{
    if (!ob)
        return;
    ob->id[0] = '\0';
    if (reply->elements > i && reply->element[i]->type == REDIS_REPLY_STRING)
        snprintf(ob->id, sizeof(ob->id), "%s", reply->element[i]->str);
}

char *source_secret_text(const struct source_secret *s)
{
    size_t cap = 4 * ((s->keylen + 2) / 3) + 1;
    char *b64 = xmalloc(cap);
    if (crypto_base64_encode(s->key, s->keylen, b64, cap) < 0)
        b64[0] = '\0';
    char *out = xasprintf("whsec_%s", b64);
    OPENSSL_cleanse(b64, cap);
    free(b64);
    return out;
}

/* The sealed JSON list of src's secrets still active at now_ms. NULL if none. */
static char *seal_secrets(const struct keyring *k, const struct source *src, int64_t now_ms)
{
    char aad[SOURCE_ID_MAX + 64];
    cJSON *list = cJSON_CreateArray();
    size_t n = 0;
    for (size_t i = 0; i < src->nsecrets; i++) {
        const struct source_secret *sec = &src->secrets[i];
        if (!source_secret_active(sec, now_ms))
            continue;
        char *text = source_secret_text(sec);
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "secret", text);
        if (sec->expires_at_ms)
            cJSON_AddNumberToObject(item, "expires_at_ms", (double)sec->expires_at_ms);
        cJSON_AddItemToArray(list, item);
        OPENSSL_cleanse(text, strlen(text));
        free(text);
        n++;
    }
    char *json = json_print(list, NULL);
    /* The cJSON tree held secrets too: wipe the strings before freeing it. */
    const cJSON *item;
    cJSON_ArrayForEach(item, list)
    {
        const char *t = json_get_str(item, "secret");
        if (t)
            OPENSSL_cleanse((void *)t, strlen(t));
    }
    cJSON_Delete(list);
    snprintf(aad, sizeof(aad), "source:%s:webhook_secrets", src->id);
    char *sealed = n ? keyring_seal(k, aad, json, strlen(json)) : NULL;
    OPENSSL_cleanse(json, strlen(json));
    free(json);
    return sealed;
}

int sources_store(struct redis *r, const struct keyring *k, const struct source *src,
                  const struct source_store_opts *o, int64_t *new_version)
{
    char key[SOURCE_ID_MAX + 8], aad[SOURCE_ID_MAX + 64], expected[24], now[TIME_RFC3339_LEN];
    if (!source_id_valid(src->id) || src->nsecrets > SOURCE_MAX_SECRETS)
        return -EINVAL;
    snprintf(key, sizeof(key), "source:%s", src->id);
    snprintf(expected, sizeof(expected), "%lld", (long long)o->expected_version);
    time_format_rfc3339(o->now_ms, now, sizeof(now));
    char *token = NULL;
    if (src->api_token && *src->api_token) {
        snprintf(aad, sizeof(aad), "source:%s:api_token", src->id);
        token = keyring_seal(k, aad, src->api_token, strlen(src->api_token));
        if (!token)
            return -EINVAL;
    }
    char *secrets = seal_secrets(k, src, o->now_ms);
    const char *mode = !o->webhook_id ? "keep" : *o->webhook_id ? "set" : "del";
    const char *fields[] = {"id",
                            src->id,
                            "base_url",
                            src->base_url ? src->base_url : "",
                            "signature_scheme",
                            source_scheme_name(src->scheme),
                            "api_token",
                            token ? token : "",
                            "webhook_secrets",
                            secrets ? secrets : "",
                            "updated_at",
                            now,
                            "updated_by",
                            o->updated_by ? o->updated_by : ""};
    const size_t nf = sizeof(fields) / sizeof(fields[0]);
    const struct source_outbox *ob = o->outbox;
    size_t nob = ob ? ob->nfields : 0;
    const char **argv = xcalloc(11 + nf + nob, sizeof(*argv));
    char nfs[8];
    snprintf(nfs, sizeof(nfs), "%zu", nf);
    size_t argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = STORE_LUA;
    argv[argc++] = ob ? "3" : "2";
    argv[argc++] = key;
    argv[argc++] = "sources";
    if (ob)
        argv[argc++] = ob->stream;
    argv[argc++] = expected;
    argv[argc++] = mode;
    argv[argc++] = o->webhook_id ? o->webhook_id : "";
    argv[argc++] = now;
    argv[argc++] = nfs;
    for (size_t i = 0; i < nf; i++)
        argv[argc++] = fields[i];
    for (size_t i = 0; i < nob; i++)
        argv[argc++] = ob->fields[i];
    redisReply *reply = redis_command(r, (int)argc, argv, NULL);
    free(argv);
    free(token);
    free(secrets);
    if (!reply)
        return -EIO;
    int rc = -EIO;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER &&
        reply->element[1]->type == REDIS_REPLY_INTEGER) {
        *new_version = reply->element[1]->integer;
        rc = reply->element[0]->integer == 1 ? 0 : -ESTALE;
        if (rc == 0)
            outbox_id(reply, 2, o->outbox);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        LOG_ERROR("cannot store source '%s': %s", src->id, reply->str);
    }
    freeReplyObject(reply);
    return rc;
}

int sources_delete(struct redis *r, const char *id)
{
    return sources_delete_outbox(r, id, NULL);
}

int sources_delete_outbox(struct redis *r, const char *id, struct source_outbox *ob)
{
    char key[SOURCE_ID_MAX + 8];
    if (!source_id_valid(id))
        return -ENOENT;
    snprintf(key, sizeof(key), "source:%s", id);
    size_t nob = ob ? ob->nfields : 0;
    const char **argv = xcalloc(7 + nob, sizeof(*argv));
    size_t argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = DELETE_LUA;
    argv[argc++] = ob ? "3" : "2";
    argv[argc++] = key;
    argv[argc++] = "sources";
    if (ob)
        argv[argc++] = ob->stream;
    argv[argc++] = id;
    for (size_t i = 0; i < nob; i++)
        argv[argc++] = ob->fields[i];
    redisReply *reply = redis_command(r, (int)argc, argv, NULL);
    free(argv);
    if (!reply)
        return -EIO;
    int rc = -EIO;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER) {
        rc = reply->element[0]->integer == 1 ? 0 : -ENOENT;
        if (rc == 0)
            outbox_id(reply, 1, ob);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        LOG_ERROR("cannot delete source '%s': %s", id, reply->str);
    }
    freeReplyObject(reply);
    return rc;
}

/* ---- cache ---- */

struct cache_entry {
    char id[SOURCE_ID_MAX + 1];
    struct source *src; /* NULL: known not to exist until neg_until_ms */
    int64_t neg_until_ms;
};

struct source_cache {
    struct redis *redis;
    const struct keyring *keyring;
    int negative_ttl_ms;
    pthread_rwlock_t lock;
    struct cache_entry *entries;
    size_t n, cap;
};

struct source_cache *source_cache_new(struct redis *r, const struct keyring *k, int negative_ttl_ms)
{
    struct source_cache *c = xcalloc(1, sizeof(*c));
    c->redis = r;
    c->keyring = k;
    c->negative_ttl_ms = negative_ttl_ms;
    pthread_rwlock_init(&c->lock, NULL);
    return c;
}

void source_cache_free(struct source_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        source_free(c->entries[i].src);
    free(c->entries);
    pthread_rwlock_destroy(&c->lock);
    free(c);
}

static struct cache_entry *find(struct source_cache *c, const char *id)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->entries[i].id, id) == 0)
            return &c->entries[i];
    return NULL;
}

/* Stores (or replaces) an entry; takes ownership of src. Caller holds the write lock. */
static void put(struct source_cache *c, const char *id, struct source *src)
{
    struct cache_entry *e = find(c, id);
    if (!e) {
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 8;
            c->entries = xrealloc(c->entries, c->cap * sizeof(*c->entries));
        }
        e = &c->entries[c->n++];
        memset(e, 0, sizeof(*e));
        str_copy(e->id, id, sizeof(e->id));
    } else {
        source_free(e->src);
    }
    e->src = src;
    e->neg_until_ms = src ? 0 : time_mono_ms() + c->negative_ttl_ms;
}

int source_cache_use(struct source_cache *c, const char *id, source_use_fn fn, void *ud)
{
    if (!source_id_valid(id))
        return -ENOENT;
    pthread_rwlock_rdlock(&c->lock);
    struct cache_entry *e = find(c, id);
    if (e && (e->src || time_mono_ms() < e->neg_until_ms)) {
        int rc = e->src ? fn(ud, e->src) : -ENOENT;
        pthread_rwlock_unlock(&c->lock);
        return rc;
    }
    pthread_rwlock_unlock(&c->lock);

    struct source *src = NULL;
    int rc = sources_load(c->redis, c->keyring, id, &src);
    if (rc == -EBADMSG)
        LOG_ERROR("cannot decrypt source '%s': is SECRETS_KEY the registry's key?", id);
    if (rc != 0 && rc != -ENOENT)
        return rc;
    pthread_rwlock_wrlock(&c->lock);
    put(c, id, src);
    e = find(c, id);
    rc = e->src ? fn(ud, e->src) : -ENOENT;
    pthread_rwlock_unlock(&c->lock);
    return rc;
}

void source_cache_invalidate(struct source_cache *c, const char *id)
{
    pthread_rwlock_wrlock(&c->lock);
    struct cache_entry *e = find(c, id);
    if (e) {
        source_free(e->src);
        *e = c->entries[--c->n];
    }
    pthread_rwlock_unlock(&c->lock);
}

int source_cache_refresh(struct source_cache *c)
{
    redisReply *ids = redis_cmd(c->redis, "SMEMBERS", "sources", (char *)NULL);
    if (!ids || ids->type != REDIS_REPLY_ARRAY) {
        if (ids)
            freeReplyObject(ids);
        return -EIO;
    }
    int rc = 0;
    for (size_t i = 0; i < ids->elements; i++) {
        const redisReply *id = ids->element[i];
        struct source *src = NULL;
        if (id->type != REDIS_REPLY_STRING || !source_id_valid(id->str))
            continue;
        int lrc = sources_load(c->redis, c->keyring, id->str, &src);
        if (lrc == -EIO) {
            rc = -EIO;
            break;
        }
        if (lrc != 0 && lrc != -ENOENT) {
            LOG_WARN("cannot load source '%s': %s", id->str, strerror(-lrc));
            continue;
        }
        pthread_rwlock_wrlock(&c->lock);
        put(c, id->str, src);
        pthread_rwlock_unlock(&c->lock);
    }
    if (rc == 0) {
        /* Sources deleted from Redis leave the cache too. */
        pthread_rwlock_wrlock(&c->lock);
        for (size_t i = 0; i < c->n;) {
            bool listed = false;
            for (size_t j = 0; j < ids->elements && !listed; j++)
                listed = ids->element[j]->type == REDIS_REPLY_STRING &&
                         strcmp(ids->element[j]->str, c->entries[i].id) == 0;
            if (listed || !c->entries[i].src) {
                i++;
                continue;
            }
            source_free(c->entries[i].src);
            c->entries[i] = c->entries[--c->n];
        }
        pthread_rwlock_unlock(&c->lock);
    }
    freeReplyObject(ids);
    return rc;
}

size_t source_cache_size(struct source_cache *c)
{
    pthread_rwlock_rdlock(&c->lock);
    size_t n = c->n;
    pthread_rwlock_unlock(&c->lock);
    return n;
}
