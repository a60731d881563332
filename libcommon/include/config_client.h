/*
 * The config-center client every service runs (through service.c): it owns the
 * service's current struct cfg and replaces it when config-center releases a
 * new version of the `common` or the service's own namespace.
 *
 * Layering, last one wins: file < `common` namespace < service namespace < env.
 * Environment overrides stay final because ops expect them to be. At start
 * every key takes the layered value; at run time only keys declared reloadable
 * change, the others log "needs restart" (the key, never the value) and keep
 * their running value.
 *
 * Where a released document comes from: the Redis hash
 * config:{ns}:released (version, content, checksum), written by config-center.
 * At start, Redis unreachable -> the cache file <cache_dir>/<service>.json
 * (the last applied documents, written atomically), with a warning. Then a
 * thread follows config.changes.v1 (its own consumer group, latest offsets) and
 * re-reads the versions from Redis every resync_s to cover a lost message.
 *
 * A document is applied only if it loads and validates against the service's
 * own schema (the same loader as the file: unknown keys and bad values are
 * refused with their path); a bad one is logged, the running config kept and
 * the known version not advanced. Sealed values (config-center seals schema
 * "x-secret" values with SECRETS_KEY, aad "config:<ns>:<json pointer>") are
 * opened here with the service's SECRETS_KEY; a sealed value that does not
 * open makes the whole document invalid. Clear secrets exist only in memory.
 *
 * Readers take the current config with config_client_acquire and give it back
 * with config_client_release: a reload swaps the pointer, and the old config is
 * freed when its last reader releases it, so nobody sees a half-applied or a
 * freed config.
 */
#ifndef CONFIG_CLIENT_H
#define CONFIG_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "kafka.h"

#define CONFIG_NS_MAX           64 /* longest namespace name */
#define CONFIG_DOC_MAX          (1024 * 1024)
#define CONFIG_CLIENT_MAX_HOOKS 8

struct config_client;
struct keyring;
struct metrics;

struct config_client_options {
    const char *service;         /* the service's namespace, e.g. "webhook-ingest" */
    const struct cfg *file_cfg;  /* file + defaults, before env (copied) */
    const struct cfg *start_cfg; /* file + env: the config used until a release applies (copied) */
    const char *redis_url;
    int redis_timeout_ms;
    const char *bootstrap; /* Kafka; NULL = do not follow config.changes.v1 */
    const struct kafka_prop *props;
    size_t nprops;
    const char *cache_dir;         /* NULL or "" = no cache file */
    int resync_s;                  /* re-read versions from Redis this often */
    const struct keyring *keyring; /* opens sealed values; may be NULL (then they are refused) */
    struct metrics *metrics;       /* config_version{namespace}, config_reloads_total{outcome} */
};

/* Called on the client's thread after a new config was swapped in. */
typedef void (*config_reload_fn)(void *ud, const struct cfg *old_cfg, const struct cfg *new_cfg);

/*
 * Loads the released namespaces (Redis, else the cache file) over the start
 * config. Problems with Redis or a document are logged, never fatal: the
 * service then runs on its file + env config. NULL only when the options are
 * unusable (errbuf says why).
 */
struct config_client *config_client_new(const struct config_client_options *o, char *errbuf,
                                        size_t errsize);
/* Adds a reload callback (at most CONFIG_CLIENT_MAX_HOOKS). 0 or -ENOSPC. */
int config_client_on_reload(struct config_client *c, config_reload_fn fn, void *ud);
/* Starts the follower thread (Kafka + periodic re-sync). 0 or negative. */
int config_client_start(struct config_client *c);
/* True once config.changes.v1 partitions are assigned (or when not following Kafka). */
bool config_client_following(struct config_client *c);
/* Stops and joins the follower thread; no callback runs afterwards. NULL-safe. */
void config_client_stop(struct config_client *c);
/* Frees (stopping first); every acquired config must have been released. NULL-safe. */
void config_client_free(struct config_client *c);

/* The current config; valid until config_client_release. Never NULL. */
const struct cfg *config_client_acquire(struct config_client *c);
void config_client_release(struct config_client *c, const struct cfg *cfg);
/* The config the service started with; lives as long as the client (non-reloadable keys). */
const struct cfg *config_client_initial(const struct config_client *c);
/* Version of a namespace currently applied (0 = none). */
int64_t config_client_version(struct config_client *c, const char *ns);
/* Re-reads the versions from Redis now and applies what changed. 0 or negative. */
int config_client_resync(struct config_client *c);

/* ---- pieces shared with config-center and the tests ---- */

/* "config:<ns>:released" and friends: the Redis key of a namespace; -E2BIG if too long. */
int config_key(char *out, size_t size, const char *ns, const char *suffix);
/* True for a valid namespace name: [a-z0-9][a-z0-9._-]{0,63}. */
bool config_ns_valid(const char *ns);
/* The GCM additional data binding a sealed value to its place: "config:<ns>:<pointer>". */
int config_secret_aad(char *out, size_t size, const char *ns, const char *pointer);

/*
 * Replaces every sealed string of doc (keyring format) by the JSON value it
 * seals. -EBADMSG with errbuf naming the JSON Pointer when one does not open
 * (or there is no keyring).
 */
int config_open_secrets(const struct keyring *k, const char *ns, void *doc_cjson, char *errbuf,
                        size_t errsize);

/*
 * Builds the next config: file_cfg, then each document in order (YAML/JSON
 * text, secrets already opened; names stand in for paths in errors), then the
 * environment, then validation. When running is not NULL only reloadable keys
 * take new values; every other key that would change is reported through
 * restart_fn (may be NULL). *out is a new config you free. 0 or negative, with
 * errbuf saying which document and key was refused.
 */
typedef void (*config_restart_fn)(void *ud, const char *key);
int config_build(const struct cfg *file_cfg, const struct cfg *running, const char *const *names,
                 const char *const *docs, size_t ndocs, config_restart_fn restart_fn, void *ud,
                 struct cfg **out, char *errbuf, size_t errsize);

/* Writes text to path atomically (temporary file in the same directory, fsync, rename). */
int config_write_atomic(const char *path, const char *text, size_t len);

#endif
