/*
 * AES-256-GCM sealing of secrets under keys from the environment (see keyring.h).
 */
#include "keyring.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "xalloc.h"

#define KEYRING_MAX_KEYS  8
#define KEYRING_ID_MAX    16
#define KEYRING_MAX_PLAIN (1024 * 1024)
#define KEYRING_PREFIX    "v1:"

struct keyring_key {
    char id[KEYRING_ID_MAX + 1];
    uint8_t key[CRYPTO_AES_KEY_LEN];
};

struct keyring {
    struct keyring_key keys[KEYRING_MAX_KEYS];
    size_t nkeys;
};

static int valid_id(const char *id, size_t len)
{
    if (len == 0 || len > KEYRING_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

static int add_key(struct keyring *k, const char *id, size_t idlen, const char *b64, size_t len,
                   char *errbuf, size_t errsize)
{
    size_t n = 0;
    struct keyring_key *slot;
    if (k->nkeys == KEYRING_MAX_KEYS) {
        snprintf(errbuf, errsize, "more than %d keys", KEYRING_MAX_KEYS);
        return -EINVAL;
    }
    if (!valid_id(id, idlen)) {
        snprintf(errbuf, errsize, "key %zu: the id must be 1-%d of [A-Za-z0-9_-]", k->nkeys + 1,
                 KEYRING_ID_MAX);
        return -EINVAL;
    }
    slot = &k->keys[k->nkeys];
    memcpy(slot->id, id, idlen);
    slot->id[idlen] = '\0';
    for (size_t i = 0; i < k->nkeys; i++) {
        if (strcmp(k->keys[i].id, slot->id) == 0) {
            snprintf(errbuf, errsize, "key id '%s' appears twice", slot->id);
            return -EINVAL;
        }
    }
    uint8_t raw[CRYPTO_AES_KEY_LEN + 3];
    if (crypto_base64_decode(b64, len, raw, sizeof(raw), &n) != 0 || n != CRYPTO_AES_KEY_LEN) {
        OPENSSL_cleanse(raw, sizeof(raw));
        snprintf(errbuf, errsize, "key '%s' must be the base64 of exactly 32 bytes", slot->id);
        return -EINVAL;
    }
    memcpy(slot->key, raw, CRYPTO_AES_KEY_LEN);
    OPENSSL_cleanse(raw, sizeof(raw));
    k->nkeys++;
    return 0;
}

struct keyring *keyring_new(const char *spec, char *errbuf, size_t errsize)
{
    if (!spec || !*spec) {
        snprintf(errbuf, errsize, "no key given");
        return NULL;
    }
    struct keyring *k = xcalloc(1, sizeof(*k));
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        int rc;
        if (colon)
            rc = add_key(k, p, (size_t)(colon - p), colon + 1, len - (size_t)(colon - p) - 1,
                         errbuf, errsize);
        else if (k->nkeys == 0 && !end)
            rc = add_key(k, "k1", 2, p, len, errbuf, errsize);
        else {
            snprintf(errbuf, errsize, "with several keys each must be written id:base64");
            rc = -EINVAL;
        }
        if (rc) {
            keyring_free(k);
            return NULL;
        }
        p = end ? end + 1 : p + len;
    }
    return k;
}

struct keyring *keyring_from_env(const char *var, char *errbuf, size_t errsize)
{
    char err[160];
    const char *spec = getenv(var);
    if (!spec || !*spec) {
        snprintf(errbuf, errsize, "environment %s is not set (base64 of 32 random bytes)", var);
        return NULL;
    }
    struct keyring *k = keyring_new(spec, err, sizeof(err));
    if (!k)
        snprintf(errbuf, errsize, "environment %s: %s", var, err);
    return k;
}

void keyring_free(struct keyring *k)
{
    if (!k)
        return;
    OPENSSL_cleanse(k, sizeof(*k));
    free(k);
}

char *keyring_seal(const struct keyring *k, const char *aad, const void *plain, size_t len)
{
    if (len > KEYRING_MAX_PLAIN)
        return NULL;
    const struct keyring_key *key = &k->keys[0];
    size_t sealed_cap = len + CRYPTO_GCM_OVERHEAD, sealed_len = 0;
    uint8_t *sealed = xmalloc(sealed_cap);
    if (crypto_aead_seal(key->key, aad, strlen(aad), plain, len, sealed, sealed_cap, &sealed_len) !=
        0) {
        free(sealed);
        return NULL;
    }
    size_t prefix = strlen(KEYRING_PREFIX) + strlen(key->id) + 1;
    size_t b64cap = 4 * ((sealed_len + 2) / 3) + 1;
    char *out = xmalloc(prefix + b64cap);
    snprintf(out, prefix + 1, "%s%s:", KEYRING_PREFIX, key->id);
    if (crypto_base64_encode(sealed, sealed_len, out + prefix, b64cap) < 0) {
        free(out);
        out = NULL;
    }
    free(sealed);
    return out;
}

int keyring_open(const struct keyring *k, const char *aad, const char *sealed, char **plain,
                 size_t *len)
{
    size_t plen = strlen(KEYRING_PREFIX);
    if (!sealed || strncmp(sealed, KEYRING_PREFIX, plen) != 0)
        return -EINVAL;
    const char *id = sealed + plen;
    const char *colon = strchr(id, ':');
    if (!colon)
        return -EINVAL;
    const struct keyring_key *key = NULL;
    for (size_t i = 0; i < k->nkeys && !key; i++)
        if (strlen(k->keys[i].id) == (size_t)(colon - id) &&
            memcmp(k->keys[i].id, id, (size_t)(colon - id)) == 0)
            key = &k->keys[i];
    if (!key)
        return -ENOKEY;
    const char *b64 = colon + 1;
    size_t b64len = strlen(b64), raw_len = 0;
    if (b64len > 4 * ((KEYRING_MAX_PLAIN + CRYPTO_GCM_OVERHEAD + 2) / 3))
        return -EINVAL;
    size_t raw_cap = b64len / 4 * 3 + 3;
    uint8_t *raw = xmalloc(raw_cap);
    if (crypto_base64_decode(b64, b64len, raw, raw_cap, &raw_len) != 0 ||
        raw_len < CRYPTO_GCM_OVERHEAD) {
        free(raw);
        return -EINVAL;
    }
    char *out = xmalloc(raw_len - CRYPTO_GCM_OVERHEAD + 1);
    size_t out_len = 0;
    int rc = crypto_aead_open(key->key, aad, strlen(aad), raw, raw_len, (uint8_t *)out,
                              raw_len - CRYPTO_GCM_OVERHEAD + 1, &out_len);
    free(raw);
    if (rc != 0) {
        free(out);
        return -EBADMSG;
    }
    out[out_len] = '\0';
    *plain = out;
    if (len)
        *len = out_len;
    return 0;
}
