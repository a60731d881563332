/*
 * config-center's Redis layout (proto/redis-keys.md):
 *   config:namespaces            set of namespaces with a draft, schema or release
 *   config:<ns>:draft            hash content, author, time, checksum
 *   config:<ns>:schema           string, the namespace's JSON Schema
 *   config:<ns>:released         hash version, content, checksum, author, time, comment,
 * rollback_of config:<ns>:v:<N>            hash, the same for every version ever released (never
 * rewritten) config:<ns>:audit            list of JSON audit records, newest last, capped A release
 * is one Lua script: compare the base version, write v:<N+1> and released, add the audit record.
 */
#ifndef CONFIG_CENTER_STORE_H
#define CONFIG_CENTER_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define STORE_AUDIT_MAX 1000

struct redis;

/* Draft write + audit record in one MULTI/EXEC. 0 or -EIO. */
int store_put_draft(struct redis *r, const char *ns, const char *content, const char *checksum,
                    const char *author, const char *time, const char *audit_json);
/* Schema write + audit record in one MULTI/EXEC. 0 or -EIO. */
int store_put_schema(struct redis *r, const char *ns, const char *schema, const char *audit_json);
/* A string key's value: 1 and *out (you free), 0 absent, -EIO. */
int store_get_schema(struct redis *r, const char *ns, char **out);
/*
 * A hash as a JSON object ("version" as a number): suffix is "draft",
 * "released" or "v:<N>". 1 and *out (you delete), 0 absent, -EIO.
 */
int store_get_record(struct redis *r, const char *ns, const char *suffix, cJSON **out);
/* The released version (0 = none) or -EIO. */
int64_t store_current_version(struct redis *r, const char *ns);

struct store_release {
    const char *ns;
    int64_t base;        /* the version the caller saw */
    const char *content; /* must still be the draft when rollback_of is 0 */
    const char *checksum;
    const char *author;
    const char *time;
    const char *comment;
    int64_t rollback_of; /* 0 for a release of the draft */
};
/*
 * The atomic release. 0 and *version; -EAGAIN when the released version is no
 * longer base (*version = the current one); -ENOENT no draft; -ESTALE the draft
 * changed meanwhile; -EIO.
 */
int store_release(struct redis *r, const struct store_release *rel, int64_t *version);
/* Newest first: up to limit versions' metadata (no content). NULL on -EIO. */
cJSON *store_history(struct redis *r, const char *ns, int64_t current, int limit);
/* [{namespace, version, draft, schema}] for every namespace. NULL on -EIO. */
cJSON *store_namespaces(struct redis *r);
/* The audit records of ns, newest first, up to limit. NULL on -EIO. */
cJSON *store_audit(struct redis *r, const char *ns, int limit);

#endif
