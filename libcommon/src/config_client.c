/*
 * The config-center client (see config_client.h): loading the released
 * namespaces at start, following config.changes.v1 and re-syncing from Redis,
 * building and validating the next config, and the reference-counted swap
 * that keeps readers safe.
 */
#include "config_client.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cloudevents.h"
#include "follower.h"
#include "json.h"
#include "jsonschema.h"
#include "keyring.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "str.h"
#include "timeutil.h"
#include "topics.h"
#include "xalloc.h"

#define NNS        2  /* common, then the service's own namespace */
#define MAX_LIVE   64 /* configs still held by readers */
#define CACHE_MAX  (4 * CONFIG_DOC_MAX)
#define POLL_MS    200
#define KEY_MAX    (CONFIG_NS_MAX + 32)
#define SECRET_TAG "v1:"

struct ns_state {
    char name[CONFIG_NS_MAX + 1];
    int64_t version; /* applied */
    int64_t refused; /* last version refused, so a bad release is logged once */
    char *content;   /* applied document as stored (sealed values stay sealed) */
    char checksum[65];
    struct metric_series *m_version;
};

struct live {
    struct cfg *cfg;
    int refs;
};

struct hook {
    config_reload_fn fn;
    void *ud;
};

struct config_client {
    char service[CONFIG_NS_MAX + 1];
    struct cfg *file_cfg;
    struct cfg *initial;
    const struct keyring *keyring;
    struct redis *redis;
    char *cache_path;
    int resync_s;

    pthread_mutex_t live_lock; /* guards current and live */
    struct cfg *current;
    struct live live[MAX_LIVE];

    pthread_mutex_t apply_lock; /* one apply at a time; guards ns */
    struct ns_state ns[NNS];
    struct hook hooks[CONFIG_CLIENT_MAX_HOOKS];
    size_t nhooks;

    char *bootstrap;
    struct kafka_prop props[FOLLOWER_PROPS_MAX];
    size_t nprops;
    struct follower *follower;
    int64_t next_sync;     /* on the follower's thread only */
    atomic_bool following; /* partitions assigned: changes from now on are seen */
    atomic_bool resync_now;

    struct metric *m_reloads; /* {namespace,outcome} */
};

/* ---- small shared pieces ---- */

int config_key(char *out, size_t size, const char *ns, const char *suffix)
{
    int n = snprintf(out, size, "config:%s:%s", ns, suffix);
    return n < 0 || (size_t)n >= size ? -E2BIG : 0;
}

bool config_ns_valid(const char *ns)
{
    size_t n = strlen(ns);
    if (n == 0 || n > CONFIG_NS_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = ns[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                  (i > 0 && (ch == '.' || ch == '_' || ch == '-'));
        if (!ok)
            return false;
    }
    return true;
}

int config_secret_aad(char *out, size_t size, const char *ns, const char *pointer)
{
    int n = snprintf(out, size, "config:%s:%s", ns, pointer);
    return n < 0 || (size_t)n >= size ? -E2BIG : 0;
}

struct open_ctx {
    const struct keyring *k;
    const char *ns;
    char *errbuf;
    size_t errsize;
};

static int open_walk(struct open_ctx *x, cJSON *parent, cJSON *v, char *path, size_t pathsize)
{
    if (cJSON_IsString(v) && str_has_prefix(v->valuestring, SECRET_TAG)) {
        char aad[CONFIG_NS_MAX + JSONSCHEMA_PATH_MAX + 16];
        char *plain = NULL;
        size_t len = 0;
        const char *ptr = path[0] ? path : "/";
        config_secret_aad(aad, sizeof(aad), x->ns, ptr);
        int rc = x->k ? keyring_open(x->k, aad, v->valuestring, &plain, &len) : -ENOKEY;
        if (rc == -EINVAL && x->k)
            return 0; /* looks like one, but is not a sealed value: plain text */
        if (rc) {
            snprintf(x->errbuf, x->errsize, "%s: sealed value does not open (%s)", ptr,
                     x->k ? "wrong key or tampered" : "SECRETS_KEY is not set");
            return -EBADMSG;
        }
        cJSON *val = cJSON_ParseWithLength(plain, len);
        if (!val)
            val = cJSON_CreateString(plain);
        explicit_bzero(plain, len);
        free(plain);
        if (parent)
            jsonschema_replace(parent, v, val);
        else
            cJSON_Delete(val);
        return 0;
    }
    cJSON *m = cJSON_IsObject(v) || cJSON_IsArray(v) ? v->child : NULL;
    int i = 0;
    while (m) {
        cJSON *next = m->next;
        char tok[16] = "";
        size_t mark = strlen(path);
        if (cJSON_IsArray(v))
            snprintf(tok, sizeof(tok), "%d", i++);
        if (jsonschema_path_push(path, pathsize, cJSON_IsArray(v) ? tok : m->string) == 0) {
            int rc = open_walk(x, v, m, path, pathsize);
            if (rc)
                return rc;
        }
        path[mark] = '\0';
        m = next;
    }
    return 0;
}

int config_open_secrets(const struct keyring *k, const char *ns, void *doc_cjson, char *errbuf,
                        size_t errsize)
{
    struct open_ctx x = {k, ns, errbuf, errsize};
    char path[JSONSCHEMA_PATH_MAX] = "";
    return open_walk(&x, NULL, doc_cjson, path, sizeof(path));
}

struct build_ctx {
    struct cfg *final;
    config_restart_fn restart_fn;
    void *ud;
    int rc;
    char *errbuf;
    size_t errsize;
};

static void take_reloadable(void *ud, const struct cfg_key *key, const char *old_value,
                            const char *new_value)
{
    (void)old_value;
    struct build_ctx *x = ud;
    if (x->rc)
        return;
    if (!key->reloadable || key->type == CFG_MAP) {
        if (x->restart_fn)
            x->restart_fn(x->ud, key->key);
        return;
    }
    if (new_value)
        x->rc = cfg_set(x->final, key->key, new_value, x->errbuf, x->errsize);
}

int config_build(const struct cfg *file_cfg, const struct cfg *running, const char *const *names,
                 const char *const *docs, size_t ndocs, config_restart_fn restart_fn, void *ud,
                 struct cfg **out, char *errbuf, size_t errsize)
{
    *out = NULL;
    struct cfg *next = cfg_clone(file_cfg);
    int rc = 0;
    for (size_t i = 0; i < ndocs && rc == 0; i++)
        if (docs[i])
            rc = cfg_load_string(next, names[i], docs[i], strlen(docs[i]), errbuf, errsize);
    if (rc == 0)
        rc = cfg_apply_env(next, errbuf, errsize);
    if (rc == 0)
        rc = cfg_validate(next, errbuf, errsize);
    if (rc || !running) {
        if (rc)
            cfg_free(next);
        else
            *out = next;
        return rc;
    }
    struct build_ctx x = {cfg_clone(running), restart_fn, ud, 0, errbuf, errsize};
    cfg_diff(running, next, take_reloadable, &x);
    cfg_free(next);
    if (x.rc) {
        cfg_free(x.final);
        return x.rc;
    }
    *out = x.final;
    return 0;
}

int config_write_atomic(const char *path, const char *text, size_t len)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -E2BIG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    size_t off = 0;
    while (off < len && rc == 0) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno != EINTR)
            rc = -errno;
        else if (w > 0)
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
    return rc;
}

/* ---- the current config ---- */

const struct cfg *config_client_acquire(struct config_client *c)
{
    pthread_mutex_lock(&c->live_lock);
    struct cfg *cur = c->current;
    for (size_t i = 0; i < MAX_LIVE; i++) {
        if (c->live[i].cfg == cur) {
            c->live[i].refs++;
            break;
        }
    }
    pthread_mutex_unlock(&c->live_lock);
    return cur;
}

/* Drops one reference of slot i; frees the config when it was the last. Lock held. */
static struct cfg *unref_locked(struct config_client *c, size_t i)
{
    if (--c->live[i].refs > 0)
        return NULL;
    struct cfg *dead = c->live[i].cfg;
    c->live[i].cfg = NULL;
    return dead;
}

void config_client_release(struct config_client *c, const struct cfg *cfg)
{
    struct cfg *dead = NULL;
    pthread_mutex_lock(&c->live_lock);
    for (size_t i = 0; i < MAX_LIVE; i++) {
        if (c->live[i].cfg == cfg) {
            dead = unref_locked(c, i);
            break;
        }
    }
    pthread_mutex_unlock(&c->live_lock);
    cfg_free(dead);
}

/* Makes next current (the client's reference moves to it). -EBUSY when readers hold too many. */
static int swap_current(struct config_client *c, struct cfg *next)
{
    struct cfg *dead = NULL;
    int rc = -EBUSY;
    pthread_mutex_lock(&c->live_lock);
    for (size_t i = 0; i < MAX_LIVE; i++) {
        if (!c->live[i].cfg) {
            c->live[i] = (struct live){next, 1};
            rc = 0;
            break;
        }
    }
    if (rc == 0) {
        for (size_t i = 0; i < MAX_LIVE; i++) {
            if (c->live[i].cfg == c->current && c->current) {
                dead = unref_locked(c, i);
                break;
            }
        }
        c->current = next;
    }
    pthread_mutex_unlock(&c->live_lock);
    cfg_free(dead);
    return rc;
}

const struct cfg *config_client_initial(const struct config_client *c)
{
    return c->initial;
}

int64_t config_client_version(struct config_client *c, const char *ns)
{
    int64_t v = 0;
    pthread_mutex_lock(&c->apply_lock);
    for (size_t i = 0; i < NNS; i++)
        if (strcmp(c->ns[i].name, ns) == 0)
            v = c->ns[i].version;
    pthread_mutex_unlock(&c->apply_lock);
    return v;
}

int config_client_on_reload(struct config_client *c, config_reload_fn fn, void *ud)
{
    if (c->nhooks == CONFIG_CLIENT_MAX_HOOKS)
        return -ENOSPC;
    c->hooks[c->nhooks++] = (struct hook){fn, ud};
    return 0;
}

/* ---- applying documents ---- */

static void log_restart(void *ud, const char *key)
{
    (void)ud;
    struct log_field f[] = {{"config.key", key}};
    log_fields(LOG_LEVEL_WARN, f, 1, "config key '%s' changed but is not reloadable: needs restart",
               key);
}

static void count_reload(struct config_client *c, const char *ns, const char *outcome)
{
    if (!c->m_reloads)
        return;
    const char *v[] = {ns, outcome};
    metric_series_add(metric_series(c->m_reloads, v), 1);
}

static void write_cache(struct config_client *c)
{
    if (!c->cache_path)
        return;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "service", c->service);
    cJSON *nss = cJSON_AddObjectToObject(root, "namespaces");
    for (size_t i = 0; i < NNS; i++) {
        if (!c->ns[i].content)
            continue;
        cJSON *o = cJSON_AddObjectToObject(nss, c->ns[i].name);
        cJSON_AddNumberToObject(o, "version", (double)c->ns[i].version);
        cJSON_AddStringToObject(o, "checksum", c->ns[i].checksum);
        cJSON_AddStringToObject(o, "content", c->ns[i].content);
    }
    size_t len = 0;
    char *text = json_print(root, &len);
    cJSON_Delete(root);
    int rc = config_write_atomic(c->cache_path, text, len);
    if (rc)
        LOG_WARN("cannot write config cache file '%s': %s", c->cache_path, strerror(-rc));
    free(text);
}

/* The document of namespace i as the loader should see it: secrets opened. NULL + errbuf. */
static char *opened_doc(struct config_client *c, size_t i, const char *content, char *errbuf,
                        size_t errsize)
{
    cJSON *doc = json_parse(content, strlen(content), errbuf, errsize);
    if (!doc)
        return NULL;
    char *text = NULL;
    if (!cJSON_IsObject(doc))
        snprintf(errbuf, errsize, "the document is not a mapping");
    else if (config_open_secrets(c->keyring, c->ns[i].name, doc, errbuf, errsize) == 0)
        text = cJSON_Print(doc);
    cJSON_Delete(doc);
    return text;
}

/*
 * Tries namespace idx at (version, content) over the other namespaces' applied
 * documents. On success swaps the config, advances the version, writes the
 * cache and runs the callbacks. apply_lock held.
 */
static int apply_locked(struct config_client *c, size_t idx, int64_t version, const char *content,
                        const char *checksum, bool at_start)
{
    char err[512] = "";
    char *texts[NNS] = {NULL};
    const char *names[NNS];
    int rc = 0;
    for (size_t i = 0; i < NNS && rc == 0; i++) {
        names[i] = c->ns[i].name;
        const char *src = i == idx ? content : c->ns[i].content;
        if (src && !(texts[i] = opened_doc(c, i, src, err, sizeof(err))))
            rc = -EINVAL;
    }
    struct cfg *next = NULL;
    const struct cfg *running = at_start ? NULL : config_client_acquire(c);
    if (rc == 0)
        rc = config_build(c->file_cfg, running, names, (const char *const *)texts, NNS, log_restart,
                          c, &next, err, sizeof(err));
    for (size_t i = 0; i < NNS; i++) {
        if (texts[i]) {
            explicit_bzero(texts[i], strlen(texts[i]));
            free(texts[i]);
        }
    }
    char vtext[24];
    snprintf(vtext, sizeof(vtext), "%lld", (long long)version);
    struct log_field f[] = {{"config.namespace", c->ns[idx].name}, {"config.version", vtext}};
    if (rc == 0 && (rc = swap_current(c, next)) != 0) {
        cfg_free(next);
        snprintf(err, sizeof(err), "too many configs still held by readers");
    }
    if (rc) {
        if (running)
            config_client_release(c, running);
        if (c->ns[idx].refused != version)
            log_fields(LOG_LEVEL_ERROR, f, 2,
                       "released config refused, keeping the running one: %s", err);
        c->ns[idx].refused = version;
        count_reload(c, c->ns[idx].name, "refused");
        return rc;
    }
    struct ns_state *ns = &c->ns[idx];
    free(ns->content);
    ns->content = xstrdup(content);
    ns->version = version;
    str_copy(ns->checksum, checksum ? checksum : "", sizeof(ns->checksum));
    /* Callbacks first: once the gauge shows the version, the service acts on it. */
    if (running) {
        const struct cfg *now = config_client_acquire(c);
        for (size_t i = 0; i < c->nhooks; i++)
            c->hooks[i].fn(c->hooks[i].ud, running, now);
        config_client_release(c, now);
        config_client_release(c, running);
    }
    if (ns->m_version)
        metric_series_set(ns->m_version, (double)version);
    log_fields(LOG_LEVEL_INFO, f, 2, "config version %lld of '%s' applied", (long long)version,
               ns->name);
    count_reload(c, ns->name, "applied");
    write_cache(c);
    return 0;
}

/* Reads config:<ns>:released. 1 found, 0 none released, -EIO Redis unreachable. */
static int fetch_released(struct config_client *c, const char *ns, int64_t *version, char **content,
                          char *checksum)
{
    char key[KEY_MAX];
    if (config_key(key, sizeof(key), ns, "released"))
        return -EINVAL;
    redisReply *r =
        redis_cmd(c->redis, "HMGET", key, "version", "content", "checksum", (char *)NULL);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
        if (r)
            freeReplyObject(r);
        return -EIO;
    }
    int found = 0;
    if (r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING &&
        str_to_int64(r->element[0]->str, version) == 0 && r->element[1]->len <= CONFIG_DOC_MAX) {
        *content = xstrndup(r->element[1]->str, r->element[1]->len);
        checksum[0] = '\0';
        if (r->element[2]->type == REDIS_REPLY_STRING)
            str_copy(checksum, r->element[2]->str, 65);
        found = 1;
    }
    freeReplyObject(r);
    return found;
}

static int sync_locked(struct config_client *c, bool at_start)
{
    for (size_t i = 0; i < NNS; i++) {
        int64_t version = 0;
        char *content = NULL;
        char checksum[65] = "";
        int rc = fetch_released(c, c->ns[i].name, &version, &content, checksum);
        if (rc < 0)
            return rc;
        if (rc == 1 && version != c->ns[i].version && version != c->ns[i].refused)
            apply_locked(c, i, version, content, checksum, at_start);
        free(content);
    }
    return 0;
}

int config_client_resync(struct config_client *c)
{
    pthread_mutex_lock(&c->apply_lock);
    int rc = sync_locked(c, false);
    pthread_mutex_unlock(&c->apply_lock);
    return rc;
}

static void load_cache(struct config_client *c)
{
    if (!c->cache_path) {
        LOG_WARN("redis unreachable at start and no config cache file: using file and env only");
        return;
    }
    int fd = open(c->cache_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        LOG_WARN("redis unreachable at start and no config cache file '%s': using file and env",
                 c->cache_path);
        return;
    }
    char *text = xmalloc(CACHE_MAX + 1);
    size_t len = 0;
    ssize_t n;
    while (len < CACHE_MAX && (n = read(fd, text + len, CACHE_MAX - len)) > 0)
        len += (size_t)n;
    close(fd);
    text[len] = '\0';
    char err[256] = "";
    cJSON *root = json_parse(text, len, err, sizeof(err));
    free(text);
    const cJSON *nss = root ? cJSON_GetObjectItemCaseSensitive(root, "namespaces") : NULL;
    if (!nss) {
        LOG_WARN("config cache file '%s' is unusable (%s): using file and env", c->cache_path,
                 err[0] ? err : "no namespaces");
        cJSON_Delete(root);
        return;
    }
    LOG_WARN("redis unreachable at start: using the config cache file '%s'", c->cache_path);
    for (size_t i = 0; i < NNS; i++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(nss, c->ns[i].name);
        int64_t version = 0;
        const char *content = json_get_str(o, "content");
        if (content && json_get_int(o, "version", &version) == 0)
            apply_locked(c, i, version, content, json_get_str(o, "checksum"), true);
    }
    cJSON_Delete(root);
}

/* ---- the follower thread ---- */

static bool ours(const struct config_client *c, const char *ns)
{
    for (size_t i = 0; i < NNS; i++)
        if (strcmp(c->ns[i].name, ns) == 0)
            return true;
    return false;
}

static void on_event(void *ud, const struct cloudevent *ev)
{
    struct config_client *c = ud;
    if (ev->subject && ours(c, ev->subject)) {
        LOG_DEBUG("config change announced for '%s'", ev->subject);
        if (config_client_resync(c) != 0)
            LOG_WARN("cannot read released config from redis; retrying at the next re-sync");
    }
}

/* Once partitions are assigned, re-read Redis: a release since start would be missed otherwise. */
static void on_rebalance(void *ud, bool assigned, bool lost, const struct kafka_partition *parts,
                         size_t nparts)
{
    (void)lost;
    (void)parts;
    (void)nparts;
    struct config_client *c = ud;
    if (assigned && !atomic_exchange(&c->following, true))
        LOG_INFO("following %s", TOPIC_CONFIG_CHANGES);
    if (assigned)
        atomic_store(&c->resync_now, true);
}

bool config_client_following(struct config_client *c)
{
    return !c->bootstrap || atomic_load(&c->following);
}

/* After every poll (and every POLL_MS without Kafka): the periodic or requested re-sync. */
static void on_poll(void *ud)
{
    struct config_client *c = ud;
    if (atomic_exchange(&c->resync_now, false) || time_mono_ms() >= c->next_sync) {
        c->next_sync = time_mono_ms() + (int64_t)c->resync_s * 1000;
        if (config_client_resync(c) != 0)
            LOG_WARN("config re-sync: redis unreachable, keeping version");
    }
}

int config_client_start(struct config_client *c)
{
    char prefix[CONFIG_NS_MAX + 16], err[256] = "";
    /* Every replica must see every change: a follower (a group of its own, from the end). */
    snprintf(prefix, sizeof(prefix), "%s-config", c->service);
    struct follower_options o = {.bootstrap = c->bootstrap,
                                 .group_prefix = prefix,
                                 .topic = TOPIC_CONFIG_CHANGES,
                                 .props = c->props,
                                 .nprops = c->nprops,
                                 .poll_ms = POLL_MS,
                                 .on_event = on_event,
                                 .on_poll = on_poll,
                                 .on_rebalance = on_rebalance,
                                 .ud = c};
    follower_free(c->follower);
    c->next_sync = time_mono_ms() + (int64_t)c->resync_s * 1000;
    c->follower = follower_start(&o, err, sizeof(err));
    if (!c->follower) {
        LOG_ERROR("cannot follow %s: %s", TOPIC_CONFIG_CHANGES, err);
        return -EINVAL;
    }
    return 0;
}

void config_client_stop(struct config_client *c)
{
    if (c)
        follower_stop(c->follower);
}

/* ---- lifecycle ---- */

struct config_client *config_client_new(const struct config_client_options *o, char *errbuf,
                                        size_t errsize)
{
    if (!config_ns_valid(o->service)) {
        snprintf(errbuf, errsize, "'%s' is not a valid namespace name", o->service);
        return NULL;
    }
    struct config_client *c = xcalloc(1, sizeof(*c));
    str_copy(c->service, o->service, sizeof(c->service));
    pthread_mutex_init(&c->live_lock, NULL);
    pthread_mutex_init(&c->apply_lock, NULL);
    c->file_cfg = cfg_clone(o->file_cfg);
    c->keyring = o->keyring;
    c->resync_s = o->resync_s > 0 ? o->resync_s : 30;
    str_copy(c->ns[0].name, "common", sizeof(c->ns[0].name));
    str_copy(c->ns[1].name, o->service, sizeof(c->ns[1].name));
    if (o->cache_dir && o->cache_dir[0]) {
        if (mkdir(o->cache_dir, 0700) != 0 && errno != EEXIST)
            LOG_WARN("cannot create config cache directory '%s': %s", o->cache_dir,
                     strerror(errno));
        c->cache_path = xasprintf("%s/%s.json", o->cache_dir, o->service);
    }
    if (o->bootstrap) {
        c->bootstrap = xstrdup(o->bootstrap);
        for (size_t i = 0; i < o->nprops && c->nprops < FOLLOWER_PROPS_MAX; i++)
            c->props[c->nprops++] = o->props[i];
    }
    if (o->metrics) {
        const char *ns_label[] = {"namespace"};
        const char *ns_outcome[] = {"namespace", "outcome"};
        struct metric *g =
            metrics_gauge(o->metrics, "config_version",
                          "Released config version applied, by namespace", 1, ns_label);
        for (size_t i = 0; i < NNS; i++) {
            const char *v[] = {c->ns[i].name};
            c->ns[i].m_version = metric_series(g, v);
            metric_series_set(c->ns[i].m_version, 0);
        }
        c->m_reloads =
            metrics_counter(o->metrics, "config_reloads_total",
                            "Released config versions applied or refused", 2, ns_outcome);
    }
    struct redis_options ro = {.url = o->redis_url,
                               .connect_timeout_ms = o->redis_timeout_ms,
                               .command_timeout_ms = o->redis_timeout_ms};
    c->redis = redis_new(&ro, errbuf, errsize);
    if (!c->redis)
        goto out_free;
    c->initial = cfg_clone(o->start_cfg);
    swap_current(c, cfg_clone(o->start_cfg));

    pthread_mutex_lock(&c->apply_lock);
    if (sync_locked(c, true) == -EIO)
        load_cache(c);
    pthread_mutex_unlock(&c->apply_lock);
    /* Non-reloadable keys come from what was applied at start. */
    const struct cfg *now = config_client_acquire(c);
    cfg_free(c->initial);
    c->initial = cfg_clone(now);
    config_client_release(c, now);
    return c;

out_free:
    config_client_free(c);
    return NULL;
}

void config_client_free(struct config_client *c)
{
    if (!c)
        return;
    follower_free(c->follower);
    redis_free(c->redis);
    for (size_t i = 0; i < MAX_LIVE; i++)
        cfg_free(c->live[i].cfg);
    for (size_t i = 0; i < NNS; i++)
        free(c->ns[i].content);
    cfg_free(c->initial);
    cfg_free(c->file_cfg);
    free(c->cache_path);
    free(c->bootstrap);
    pthread_mutex_destroy(&c->live_lock);
    pthread_mutex_destroy(&c->apply_lock);
    free(c);
}
