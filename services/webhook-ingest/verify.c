/*
 * Signature checks for incoming webhooks (see verify.h). Every candidate
 * signature is compared in constant time against the HMAC of every active
 * secret, so secret rotation needs no coordination with the sender.
 */
#include "verify.h"

#include <string.h>

#include "crypto.h"
#include "sources.h"
#include "str.h"

#define MAX_SECRETS 8

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
        if (crypto_hmac_sha256(s->key, s->keylen, parts, nparts, macs[n]) == 0)
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
