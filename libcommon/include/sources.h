/*
 * Vendor sources: the robot vendor platforms we take webhooks from and send
 * commands to. robot-registry writes them; webhook-ingest and reboot-command
 * read them through a cache. Redis layout (proto/redis-keys.md):
 *
 *   source:{id}  hash  id, base_url, signature_scheme, api_token (sealed),
 *                      webhook_secrets (sealed JSON list), version, updated_at
 *   sources      set   every source id
 *
 * Sealed fields are keyring_seal'ed with aad "source:{id}:{field}".
 */
#ifndef SOURCES_H
#define SOURCES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct redis;
struct keyring;

enum source_scheme {
    SOURCE_SCHEME_STANDARD_WEBHOOKS = 0, /* webhook-id/-timestamp/-signature, base64 HMAC */
    SOURCE_SCHEME_GITHUB_SHA256,         /* X-Signature-256: sha256=<hex HMAC of body> */
};

struct source_secret {
    uint8_t *key; /* HMAC key: base64-decoded after "whsec_", else the raw bytes */
    size_t keylen;
    int64_t expires_at_ms; /* 0 = never; a rotated-out secret stays valid until then */
};

struct source {
    char *id;
    char *base_url;
    enum source_scheme scheme;
    char *api_token; /* may be NULL */
    struct source_secret *secrets;
    size_t nsecrets;
    int64_t version;
};

#define SOURCE_ID_MAX 64

/* True for 1-64 chars of [a-z0-9_-] (ids appear in URLs and Redis keys). */
bool source_id_valid(const char *id);
int source_scheme_parse(const char *s, enum source_scheme *out);
const char *source_scheme_name(enum source_scheme s);
/* True when the secret may be used at now_ms. */
bool source_secret_active(const struct source_secret *s, int64_t now_ms);

/*
 * Reads and decrypts one source: 0, -ENOENT (no such source), -EIO (Redis
 * unreachable), -EBADMSG (a sealed field does not open with our keys) or
 * -EINVAL (a malformed record). *out is yours: source_free().
 */
int sources_load(struct redis *r, const struct keyring *k, const char *id, struct source **out);
void source_free(struct source *s);

/* ---- writing (robot-registry) ---- */

/*
 * A Redis stream entry written by the same script as a change, only when the
 * change is made (a transactional outbox): XADD stream * fields...
 */
struct source_outbox {
    const char *stream;
    const char *const *fields; /* field, value, field, value ... */
    size_t nfields;            /* even */
    char id[48];               /* out: the entry id written */
};

struct source_store_opts {
    int64_t expected_version;     /* -1: any; 0: must not exist yet; else the stored version */
    const char *updated_by;       /* who made the change (X-Consumer-Username); NULL = "" */
    const char *webhook_id;       /* the vendor's subscription id: NULL keeps it, "" removes it */
    int64_t now_ms;               /* written as updated_at; secrets expired by then are dropped */
    struct source_outbox *outbox; /* NULL: none; else appended in the same script */
};

/*
 * Writes every field of src in one Lua script (never a half-written source):
 * base_url, signature_scheme, api_token and webhook_secrets sealed with k (the
 * secrets as "whsec_<base64 key>" in src's order, expired ones dropped),
 * updated_at, updated_by, created_at on first write, version bumped by one, and
 * the id added to `sources`. Only when the stored version equals
 * expected_version: 0 and *new_version, -ESTALE (*new_version = the stored
 * version), -EINVAL (a bad id or too many secrets) or -EIO (Redis).
 */
int sources_store(struct redis *r, const struct keyring *k, const struct source *src,
                  const struct source_store_opts *o, int64_t *new_version);
/* Removes source:{id} and its `sources` entry atomically: 0, -ENOENT or -EIO. */
int sources_delete(struct redis *r, const char *id);
/* The same, appending the outbox entry (if not NULL) in the same script when it deletes. */
int sources_delete_outbox(struct redis *r, const char *id, struct source_outbox *outbox);
/* A secret's key as "whsec_<base64>", the form sources_store writes. You free it. */
char *source_secret_text(const struct source_secret *s);

/* ---- cache ---- */
struct source_cache;

/* The cache uses r (shared, thread-safe) for misses and refreshes. */
struct source_cache *source_cache_new(struct redis *r, const struct keyring *k,
                                      int negative_ttl_ms);
void source_cache_free(struct source_cache *c);
typedef int (*source_use_fn)(void *ud, const struct source *src);
/*
 * Calls fn with the source while it cannot change, loading it on a miss;
 * returns fn's result, or -ENOENT / -EIO / -EBADMSG as sources_load. Unknown
 * ids are remembered for negative_ttl_ms so a flood of bad ids costs no Redis.
 */
int source_cache_use(struct source_cache *c, const char *id, source_use_fn fn, void *ud);
/* Forgets one source (it is reloaded on next use). */
void source_cache_invalidate(struct source_cache *c, const char *id);
/* Reloads every cached source from Redis; 0 or -EIO. */
int source_cache_refresh(struct source_cache *c);
size_t source_cache_size(struct source_cache *c);

#endif
