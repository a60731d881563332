/*
 * Signature checks for incoming webhooks (see verify.h). Every candidate
 * signature is compared in constant time against the HMAC of every active
 * secret, so secret rotation needs no coordination with the sender.
 */
#include "verify.h"

#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "crypto.h"
#include "sources.h"
#include "str.h"

#define MAX_SECRETS  8
#define HMAC_SLOTS   8   /* keyed contexts kept per thread */
#define HMAC_KEY_MAX 128 /* longer secrets are not cached (crypto_hmac_sha256 signs them) */

/*
 * Keying HMAC costs more than hashing a small body: the digest is looked up
 * in the provider and both pads are hashed. Each HTTP thread therefore keeps
 * a context per recently used secret and only resets it per request
 * (EVP_MAC_init without a key restarts from the stored pads).
 */
struct hmac_slot {
    EVP_MAC_CTX *ctx;
    size_t keylen;
    uint8_t key[HMAC_KEY_MAX];
};

struct hmac_cache {
    struct hmac_slot slots[HMAC_SLOTS];
    size_t next; /* round-robin victim */
};

static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;
static pthread_key_t hmac_tls;
static bool hmac_tls_ok;
static EVP_MAC *hmac_alg;

static void hmac_cache_free(void *arg)
{
    struct hmac_cache *c = arg;
    for (size_t i = 0; i < HMAC_SLOTS; i++)
        EVP_MAC_CTX_free(c->slots[i].ctx);
    OPENSSL_clear_free(c, sizeof(*c));
}

static void hmac_setup(void)
{
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    hmac_tls_ok = hmac_alg && pthread_key_create(&hmac_tls, hmac_cache_free) == 0;
}

/* This thread's context keyed with key, ready for updates; NULL when none can be had. */
static EVP_MAC_CTX *keyed_ctx(const uint8_t *key, size_t keylen)
{
    pthread_once(&hmac_once, hmac_setup);
    if (!hmac_tls_ok || keylen == 0 || keylen > HMAC_KEY_MAX)
        return NULL;
    struct hmac_cache *c = pthread_getspecific(hmac_tls);
    if (!c) {
        c = OPENSSL_zalloc(sizeof(*c));
        if (!c || pthread_setspecific(hmac_tls, c) != 0) {
            OPENSSL_free(c);
            return NULL;
        }
    }
    for (size_t i = 0; i < HMAC_SLOTS; i++) {
        struct hmac_slot *s = &c->slots[i];
        if (s->ctx && s->keylen == keylen && memcmp(s->key, key, keylen) == 0)
            return EVP_MAC_init(s->ctx, NULL, 0, NULL) ? s->ctx : NULL;
    }
    struct hmac_slot *s = &c->slots[c->next];
    c->next = (c->next + 1) % HMAC_SLOTS;
    EVP_MAC_CTX_free(s->ctx);
    OPENSSL_cleanse(s, sizeof(*s));
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    s->ctx = EVP_MAC_CTX_new(hmac_alg);
    if (!s->ctx || !EVP_MAC_init(s->ctx, key, keylen, params)) {
        EVP_MAC_CTX_free(s->ctx);
        s->ctx = NULL;
        return NULL;
    }
    memcpy(s->key, key, keylen);
    s->keylen = keylen;
    return s->ctx;
}

/* HMAC-SHA256 of the parts, through the thread's cached context when it can. */
static int hmac_sha256(const uint8_t *key, size_t keylen, const struct crypto_part *parts,
                       size_t nparts, uint8_t out[CRYPTO_SHA256_LEN])
{
    EVP_MAC_CTX *ctx = keyed_ctx(key, keylen);
    size_t outlen = 0;
    if (!ctx)
        return crypto_hmac_sha256(key, keylen, parts, nparts, out);
    for (size_t i = 0; i < nparts; i++)
        if (parts[i].len && !EVP_MAC_update(ctx, parts[i].data, parts[i].len))
            return crypto_hmac_sha256(key, keylen, parts, nparts, out);
    if (!EVP_MAC_final(ctx, out, &outlen, CRYPTO_SHA256_LEN) || outlen != CRYPTO_SHA256_LEN)
        return crypto_hmac_sha256(key, keylen, parts, nparts, out);
    return 0;
}

const char *verify_reason(enum verify_result r)
{
    switch (r) {
    case VERIFY_OK:
        return "ok";
    case VERIFY_MISSING:
        return "missing_signature";
    case VERIFY_BAD_TIMESTAMP:
        return "invalid_timestamp";
    case VERIFY_STALE:
        return "stale_timestamp";
    case VERIFY_MISMATCH:
        return "bad_signature";
    }
    return "unknown";
}

/* HMACs of the message under every active secret; returns how many. */
static size_t sign_all(const struct source *src, int64_t now_ms, const struct crypto_part *parts,
                       size_t nparts, uint8_t macs[MAX_SECRETS][CRYPTO_SHA256_LEN])
{
    size_t n = 0;
    for (size_t i = 0; i < src->nsecrets && n < MAX_SECRETS; i++) {
        const struct source_secret *s = &src->secrets[i];
        if (!source_secret_active(s, now_ms))
            continue;
        if (hmac_sha256(s->key, s->keylen, parts, nparts, macs[n]) == 0)
            n++;
    }
    return n;
}

static bool matches_any(const uint8_t *sig, uint8_t macs[MAX_SECRETS][CRYPTO_SHA256_LEN],
                        size_t nmacs)
{
    bool ok = false;
    /* No early exit: the time taken does not depend on which secret matched. */
    for (size_t i = 0; i < nmacs; i++)
        ok |= crypto_equal(sig, macs[i], CRYPTO_SHA256_LEN);
    return ok;
}

static enum verify_result verify_standard(const struct source *src, const struct verify_input *in)
{
    int64_t ts;
    if (!in->webhook_id || !in->webhook_timestamp || !in->webhook_signature)
        return VERIFY_MISSING;
    if (str_to_int64(in->webhook_timestamp, &ts) != 0 || ts < 0)
        return VERIFY_BAD_TIMESTAMP;
    int64_t now_s = in->now_ms / 1000;
    if (ts < now_s - in->tolerance_s || ts > now_s + in->tolerance_s)
        return VERIFY_STALE;

    struct crypto_part parts[] = {
        {in->webhook_id, strlen(in->webhook_id)},
        {".", 1},
        {in->webhook_timestamp, strlen(in->webhook_timestamp)},
        {".", 1},
        {in->body, in->len},
    };
    uint8_t macs[MAX_SECRETS][CRYPTO_SHA256_LEN];
    size_t nmacs = sign_all(src, in->now_ms, parts, 5, macs);

    /* "v1,<base64> v1,<base64> ..." — unknown versions are skipped. */
    const char *p = in->webhook_signature;
    bool ok = false;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *end = strchr(p, ' ');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > 3 && strncmp(p, "v1,", 3) == 0 && len - 3 <= 64) {
            uint8_t sig[48];
            size_t siglen = 0;
            if (crypto_base64_decode(p + 3, len - 3, sig, sizeof(sig), &siglen) == 0 &&
                siglen == CRYPTO_SHA256_LEN)
                ok |= matches_any(sig, macs, nmacs);
        }
        p += len;
    }
    return ok ? VERIFY_OK : VERIFY_MISMATCH;
}

static enum verify_result verify_github(const struct source *src, const struct verify_input *in)
{
    static const char prefix[] = "sha256=";
    if (!in->signature_256)
        return VERIFY_MISSING;
    if (!str_has_prefix(in->signature_256, prefix))
        return VERIFY_MISMATCH;
    const char *hex = in->signature_256 + sizeof(prefix) - 1;
    uint8_t sig[CRYPTO_SHA256_LEN];
    size_t siglen = 0;
    if (strlen(hex) != 2 * CRYPTO_SHA256_LEN ||
        crypto_hex_decode(hex, strlen(hex), sig, sizeof(sig), &siglen) != 0)
        return VERIFY_MISMATCH;
    struct crypto_part part = {in->body, in->len};
    uint8_t macs[MAX_SECRETS][CRYPTO_SHA256_LEN];
    size_t nmacs = sign_all(src, in->now_ms, &part, 1, macs);
    return matches_any(sig, macs, nmacs) ? VERIFY_OK : VERIFY_MISMATCH;
}

enum verify_result verify_request(const struct source *src, const struct verify_input *in)
{
    if (src->scheme == SOURCE_SCHEME_GITHUB_SHA256)
        return verify_github(src, in);
    return verify_standard(src, in);
}
