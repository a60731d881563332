/*
 * Unit tests for sources.c against the real Redis (REDIS_URL): records sealed
 * with the keyring load back, wrong keys and corrupt records are refused, and
 * the cache remembers unknown ids, follows invalidation and drops deleted sources.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keyring.h"
#include "redis.h"
#include "sources.h"
#include "timeutil.h"

#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "//////////////////////////////////////////8="

static struct redis *rds;
static struct keyring *ring;
static char prefix[32];

static int setup(void **state)
{
    (void)state;
    const char *url = getenv("REDIS_URL");
    if (!url || !*url)
        fail_msg("REDIS_URL is not set: start scripts/redis-local.sh and export it");
    char err[160];
    struct redis_options o = {.url = url};
    rds = redis_new(&o, err, sizeof(err));
    ring = keyring_new(KEY_A, err, sizeof(err));
    snprintf(prefix, sizeof(prefix), "t%ld", (long)getpid());
    return rds && ring ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    redis_free(rds);
    keyring_free(ring);
    return 0;
}

static void put_source(const char *id, const char *scheme, const char *secrets_json,
                       const char *token)
{
    char key[96], aad[128];
    snprintf(key, sizeof(key), "source:%s", id);
    snprintf(aad, sizeof(aad), "source:%s:webhook_secrets", id);
    char *sec = keyring_seal(ring, aad, secrets_json, strlen(secrets_json));
    snprintf(aad, sizeof(aad), "source:%s:api_token", id);
    char *tok = keyring_seal(ring, aad, token, strlen(token));
    redisReply *r =
        redis_cmd(rds, "HSET", key, "id", id, "base_url", "http://vendor.test", "signature_scheme",
                  scheme, "webhook_secrets", sec, "api_token", tok, "version", "3", (char *)NULL);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    r = redis_cmd(rds, "SADD", "sources", id, (char *)NULL);
    freeReplyObject(r);
    free(sec);
    free(tok);
}

static void del_source(const char *id)
{
    char key[96];
    snprintf(key, sizeof(key), "source:%s", id);
    freeReplyObject(redis_cmd(rds, "DEL", key, (char *)NULL));
    freeReplyObject(redis_cmd(rds, "SREM", "sources", id, (char *)NULL));
}

static void test_load_decrypts_record(void **state)
{
    (void)state;
    char id[48];
    snprintf(id, sizeof(id), "%s-load", prefix);
    put_source(id, "github-sha256",
               "[{\"secret\":\"whsec_AQID\"},{\"secret\":\"raw\",\"expires_at_ms\":5}]", "tok-1");
    struct source *s = NULL;
    assert_int_equal(sources_load(rds, ring, id, &s), 0);
    assert_string_equal(s->id, id);
    assert_string_equal(s->base_url, "http://vendor.test");
    assert_int_equal(s->scheme, SOURCE_SCHEME_GITHUB_SHA256);
    assert_string_equal(s->api_token, "tok-1");
    assert_int_equal(s->version, 3);
    assert_int_equal(s->nsecrets, 2);
    assert_int_equal(s->secrets[0].keylen, 3); /* base64 "AQID" = 01 02 03 */
    assert_memory_equal(s->secrets[0].key, "\x01\x02\x03", 3);
    assert_int_equal(s->secrets[1].keylen, 3);
    assert_memory_equal(s->secrets[1].key, "raw", 3);
    assert_true(source_secret_active(&s->secrets[0], time_now_ms()));
    assert_false(source_secret_active(&s->secrets[1], 6));
    assert_true(source_secret_active(&s->secrets[1], 4));
    source_free(s);
    del_source(id);
}

static void test_load_refuses_wrong_key_and_unknown(void **state)
{
    (void)state;
    char id[48], err[160];
    snprintf(id, sizeof(id), "%s-wrongkey", prefix);
    put_source(id, "standard-webhooks", "[{\"secret\":\"whsec_AQID\"}]", "t");
    struct keyring *other = keyring_new(KEY_B, err, sizeof(err));
    struct source *s = NULL;
    assert_int_equal(sources_load(rds, other, id, &s), -EBADMSG);
    assert_int_equal(sources_load(rds, ring, "no-such-source-x", &s), -ENOENT);
    assert_int_equal(sources_load(rds, ring, "Bad Id", &s), -ENOENT);
    assert_null(s);
    keyring_free(other);
    del_source(id);
}

static void test_load_refuses_corrupt_records(void **state)
{
    (void)state;
    char id[48];
    struct source *s = NULL;
    snprintf(id, sizeof(id), "%s-corrupt", prefix);
    put_source(id, "carrier-pigeon", "[]", "t");
    assert_int_equal(sources_load(rds, ring, id, &s), -EINVAL);
    put_source(id, "standard-webhooks", "{\"not\":\"a list\"}", "t");
    assert_int_equal(sources_load(rds, ring, id, &s), -EINVAL);
    put_source(id, "standard-webhooks", "[{\"secret\":\"whsec_!!\"}]", "t");
    assert_int_equal(sources_load(rds, ring, id, &s), -EINVAL);
    del_source(id);
}

static int count_use(void *ud, const struct source *src)
{
    int *n = ud;
    (*n)++;
    return (int)src->version;
}

static void test_cache_negative_ttl_invalidate_and_refresh(void **state)
{
    (void)state;
    char id[48];
    int uses = 0;
    snprintf(id, sizeof(id), "%s-cache", prefix);
    struct source_cache *c = source_cache_new(rds, ring, 60000);
    assert_int_equal(source_cache_use(c, id, count_use, &uses), -ENOENT);
    put_source(id, "standard-webhooks", "[]", "t");
    /* still remembered as unknown */
    assert_int_equal(source_cache_use(c, id, count_use, &uses), -ENOENT);
    source_cache_invalidate(c, id);
    assert_int_equal(source_cache_use(c, id, count_use, &uses), 3);
    assert_int_equal(uses, 1);
    /* a change in Redis is seen after refresh */
    char key[96];
    snprintf(key, sizeof(key), "source:%s", id);
    freeReplyObject(redis_cmd(rds, "HSET", key, "version", "4", (char *)NULL));
    assert_int_equal(source_cache_use(c, id, count_use, &uses), 3);
    assert_int_equal(source_cache_refresh(c), 0);
    assert_int_equal(source_cache_use(c, id, count_use, &uses), 4);
    /* deleted from Redis: gone after refresh */
    del_source(id);
    assert_int_equal(source_cache_refresh(c), 0);
    source_cache_invalidate(c, id);
    assert_int_equal(source_cache_use(c, id, count_use, &uses), -ENOENT);
    source_cache_free(c);
}

static void test_ids_and_schemes(void **state)
{
    (void)state;
    enum source_scheme s;
    assert_true(source_id_valid("acme-robots_1"));
    assert_false(source_id_valid(""));
    assert_false(source_id_valid("Acme"));
    assert_false(source_id_valid("a/b"));
    char longid[80];
    memset(longid, 'a', 65);
    longid[65] = '\0';
    assert_false(source_id_valid(longid));
    assert_int_equal(source_scheme_parse("github-sha256", &s), 0);
    assert_string_equal(source_scheme_name(s), "github-sha256");
    assert_int_equal(source_scheme_parse("standard-webhooks", &s), 0);
    assert_int_equal(s, SOURCE_SCHEME_STANDARD_WEBHOOKS);
    assert_int_equal(source_scheme_parse("md5", &s), -EINVAL);
}

static char *hget(const char *key, const char *field)
{
    redisReply *r = redis_cmd(rds, "HGET", key, field, (char *)NULL);
    assert_non_null(r);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static void test_store_round_trip_and_version_check(void **state)
{
    (void)state;
    char id[48], key[96];
    snprintf(id, sizeof(id), "%s-store", prefix);
    snprintf(key, sizeof(key), "source:%s", id);
    del_source(id);
    uint8_t k1[] = {1, 2, 3, 4}, k2[] = {'r', 'a', 'w'}, k3[] = {9, 9};
    int64_t now = time_now_ms();
    struct source_secret secs[] = {
        {k1, sizeof(k1), 0},
        {k2, sizeof(k2), now + 60000},
        {k3, sizeof(k3), now - 1}, /* expired: dropped by the write */
    };
    struct source src = {.id = id,
                         .base_url = "http://vendor.test",
                         .scheme = SOURCE_SCHEME_GITHUB_SHA256,
                         .api_token = "tok-secret-1",
                         .secrets = secs,
                         .nsecrets = 3};
    struct source_store_opts o = {
        .expected_version = 0, .updated_by = "alice", .webhook_id = "wh_1", .now_ms = now};
    int64_t v = 0;
    assert_int_equal(sources_store(rds, ring, &src, &o, &v), 0);
    assert_int_equal(v, 1);
    /* create-only again: the version no longer matches */
    assert_int_equal(sources_store(rds, ring, &src, &o, &v), -ESTALE);
    assert_int_equal(v, 1);

    struct source *got = NULL;
    assert_int_equal(sources_load(rds, ring, id, &got), 0);
    assert_int_equal(got->version, 1);
    assert_string_equal(got->api_token, "tok-secret-1");
    assert_string_equal(got->base_url, "http://vendor.test");
    assert_int_equal(got->scheme, SOURCE_SCHEME_GITHUB_SHA256);
    assert_int_equal(got->nsecrets, 2);
    assert_memory_equal(got->secrets[0].key, k1, sizeof(k1));
    assert_int_equal(got->secrets[0].expires_at_ms, 0);
    assert_memory_equal(got->secrets[1].key, k2, sizeof(k2));
    assert_int_equal(got->secrets[1].expires_at_ms, now + 60000);

    /* ciphertext at rest: neither the token nor a secret appears in Redis */
    char *tok = hget(key, "api_token"), *sealed = hget(key, "webhook_secrets");
    assert_non_null(strstr(tok, "v1:k1:"));
    assert_null(strstr(tok, "tok-secret-1"));
    char *text = source_secret_text(&secs[0]);
    assert_string_equal(text, "whsec_AQIDBA==");
    assert_null(strstr(sealed, text));
    free(text);
    free(tok);
    free(sealed);
    char *by = hget(key, "updated_by"), *wh = hget(key, "webhook_id");
    assert_string_equal(by, "alice");
    assert_string_equal(wh, "wh_1");
    free(by);
    free(wh);

    /* an update with the right version: webhook id kept, then removed */
    got->api_token[0] = 'T';
    o.expected_version = 1;
    o.webhook_id = NULL;
    assert_int_equal(sources_store(rds, ring, got, &o, &v), 0);
    assert_int_equal(v, 2);
    wh = hget(key, "webhook_id");
    assert_string_equal(wh, "wh_1");
    free(wh);
    o.expected_version = 2;
    o.webhook_id = "";
    assert_int_equal(sources_store(rds, ring, got, &o, &v), 0);
    assert_null(hget(key, "webhook_id"));
    source_free(got);
    assert_int_equal(sources_load(rds, ring, id, &got), 0);
    assert_string_equal(got->api_token, "Tok-secret-1");
    assert_int_equal(got->version, 3);
    source_free(got);

    assert_int_equal(sources_delete(rds, id), 0);
    assert_int_equal(sources_delete(rds, id), -ENOENT);
    assert_int_equal(sources_load(rds, ring, id, &got), -ENOENT);
    redisReply *m = redis_cmd(rds, "SISMEMBER", "sources", id, (char *)NULL);
    assert_int_equal(m->integer, 0);
    freeReplyObject(m);
}

/* The outbox entry is written with the change, and only when the change is made. */
static void test_store_and_delete_append_outbox_entry(void **state)
{
    (void)state;
    char id[48], stream[96];
    snprintf(id, sizeof(id), "%s-outbox", prefix);
    snprintf(stream, sizeof(stream), "%s-outbox-stream", prefix);
    del_source(id);
    redisReply *d = redis_cmd(rds, "DEL", stream, (char *)NULL);
    freeReplyObject(d);
    struct source src = {.id = id, .base_url = "http://vendor.test", .api_token = "t"};
    const char *fields[] = {"key", id, "value", "{\"v\":1}"};
    struct source_outbox ob = {.stream = stream, .fields = fields, .nfields = 4};
    struct source_store_opts o = {.expected_version = 0, .now_ms = time_now_ms(), .outbox = &ob};
    int64_t v = 0;
    assert_int_equal(sources_store(rds, ring, &src, &o, &v), 0);
    assert_int_equal(v, 1);
    assert_true(strchr(ob.id, '-') != NULL);
    /* refused (stale version): no entry */
    assert_int_equal(sources_store(rds, ring, &src, &o, &v), -ESTALE);
    redisReply *n = redis_cmd(rds, "XLEN", stream, (char *)NULL);
    assert_int_equal(n->integer, 1);
    freeReplyObject(n);
    redisReply *e = redis_cmd(rds, "XRANGE", stream, "-", "+", (char *)NULL);
    assert_int_equal(e->elements, 1);
    assert_string_equal(e->element[0]->element[0]->str, ob.id);
    assert_string_equal(e->element[0]->element[1]->element[3]->str, "{\"v\":1}");
    freeReplyObject(e);

    assert_int_equal(sources_delete_outbox(rds, id, &ob), 0);
    assert_int_equal(sources_delete_outbox(rds, id, &ob), -ENOENT);
    n = redis_cmd(rds, "XLEN", stream, (char *)NULL);
    assert_int_equal(n->integer, 2);
    freeReplyObject(n);
    d = redis_cmd(rds, "DEL", stream, (char *)NULL);
    freeReplyObject(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_decrypts_record),
        cmocka_unit_test(test_load_refuses_wrong_key_and_unknown),
        cmocka_unit_test(test_load_refuses_corrupt_records),
        cmocka_unit_test(test_cache_negative_ttl_invalidate_and_refresh),
        cmocka_unit_test(test_ids_and_schemes),
        cmocka_unit_test(test_store_round_trip_and_version_check),
        cmocka_unit_test(test_store_and_delete_append_outbox_entry),
    };
    return cmocka_run_group_tests_name("sources", tests, setup, teardown);
}
