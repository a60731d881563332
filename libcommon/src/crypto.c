/*
 * Cryptography on OpenSSL 3 (see crypto.h): HMAC-SHA256 for webhook signatures,
 * base64/hex codecs that reject anything non-canonical, AES-256-GCM for secrets
 * at rest and UUIDv7 ids that sort by creation time.
 */
#include "crypto.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "timeutil.h"

/* Fetching the MAC implementation takes a lock and a lookup: do it once per process. */
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac_impl;

static void hmac_fetch(void)
{
    hmac_impl = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

int crypto_hmac_sha256(const void *key, size_t keylen, const struct crypto_part *parts,
                       size_t nparts, uint8_t out[CRYPTO_SHA256_LEN])
{
    /* EVP_MAC_init treats a NULL key as "keep the old one", so an empty key needs a pointer. */
    static const uint8_t empty_key[1];
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC_CTX *ctx = NULL;
    size_t outlen = 0;
    int rc = -EIO;

    if ((!key && keylen) || (!parts && nparts))
        return -EINVAL;
    pthread_once(&hmac_once, hmac_fetch);
    if (!hmac_impl)
        return -EIO;
    ctx = EVP_MAC_CTX_new(hmac_impl);
    if (!ctx)
        return -ENOMEM;
    if (!EVP_MAC_init(ctx, keylen ? key : empty_key, keylen, params))
        goto out_free_ctx;
    for (size_t i = 0; i < nparts; i++) {
        if (parts[i].len && !EVP_MAC_update(ctx, parts[i].data, parts[i].len))
            goto out_free_ctx;
    }
    if (!EVP_MAC_final(ctx, out, &outlen, CRYPTO_SHA256_LEN) || outlen != CRYPTO_SHA256_LEN)
        goto out_free_ctx;
    rc = 0;
out_free_ctx:
    EVP_MAC_CTX_free(ctx);
    return rc;
}

int crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN])
{
    unsigned int outlen = 0;
    if (!data && len)
        return -EINVAL;
    if (!EVP_Digest(len ? data : "", len, out, &outlen, EVP_sha256(), NULL) ||
        outlen != CRYPTO_SHA256_LEN)
        return -EIO;
    return 0;
}

bool crypto_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int crypto_base64_encode(const void *in, size_t n, char *out, size_t outsize)
{
    /* EVP_EncodeBlock counts in int; keep the encoded length inside an int too. */
    if (n > (size_t)(INT_MAX / 4) * 3)
        return -E2BIG;
    size_t need = 4 * ((n + 2) / 3) + 1;
    if (outsize < need)
        return -E2BIG;
    if (n == 0) {
        out[0] = '\0';
        return 0;
    }
    return EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static int base64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/*
 * EVP_DecodeBlock skips surrounding whitespace, ignores where '=' appears and
 * always writes whole 3-byte groups, so the input is checked here first and
 * the last group goes through a scratch buffer to honour outsize exactly.
 */
int crypto_base64_decode(const char *in, size_t n, uint8_t *out, size_t outsize, size_t *outlen)
{
    uint8_t last[3];
    size_t pad = 0;

    if (n % 4 != 0 || n > INT_MAX)
        return -EINVAL;
    if (n == 0) {
        if (outlen)
            *outlen = 0;
        return 0;
    }
    if (in[n - 1] == '=')
        pad = in[n - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i < n - pad; i++) {
        if (base64_value(in[i]) < 0)
            return -EINVAL;
    }
    /* Canonical form only: the bits the padding leaves unused must be zero. */
    if (pad == 2 && (base64_value(in[n - 3]) & 0x0f))
        return -EINVAL;
    if (pad == 1 && (base64_value(in[n - 2]) & 0x03))
        return -EINVAL;

    size_t full = n / 4 - 1; /* whole groups before the last one */
    size_t declen = full * 3 + (3 - pad);
    if (outsize < declen)
        return -E2BIG;
    if (full && EVP_DecodeBlock(out, (const unsigned char *)in, (int)(full * 4)) < 0)
        return -EINVAL;
    if (EVP_DecodeBlock(last, (const unsigned char *)in + full * 4, 4) < 0)
        return -EINVAL;
    memcpy(out + full * 3, last, 3 - pad);
    OPENSSL_cleanse(last, sizeof(last));
    if (outlen)
        *outlen = declen;
    return 0;
}

int crypto_hex_encode(const void *in, size_t n, char *out, size_t outsize)
{
    static const char digits[] = "0123456789abcdef";
    const uint8_t *p = in;
    if (n > (SIZE_MAX - 1) / 2 || outsize < 2 * n + 1)
        return -E2BIG;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 0x0f];
    }
    out[2 * n] = '\0';
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int crypto_hex_decode(const char *in, size_t n, uint8_t *out, size_t outsize, size_t *outlen)
{
    if (n % 2 != 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (hex_value(in[i]) < 0)
            return -EINVAL;
    }
    if (outsize < n / 2)
        return -E2BIG;
    for (size_t i = 0; i < n / 2; i++)
        out[i] = (uint8_t)(hex_value(in[2 * i]) << 4 | hex_value(in[2 * i + 1]));
    if (outlen)
        *outlen = n / 2;
    return 0;
}

int crypto_random_bytes(void *out, size_t n)
{
    uint8_t *p = out;
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1)
            return -EIO;
        p += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

/*
 * RFC 9562 §6.2 method 1: rand_a is a 12-bit counter, seeded at random with its
 * top bit clear on each new millisecond, so ids from this process sort strictly
 * in creation order even within one millisecond or when the clock steps back.
 */
static pthread_mutex_t uuid_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t uuid_last_ms = -1;
static unsigned uuid_counter;

int crypto_uuid_v7(char out[CRYPTO_UUID_LEN])
{
    uint8_t b[16];
    uint8_t seed[2];
    char hex[33];
    int rc;

    rc = crypto_random_bytes(b, sizeof(b));
    if (!rc)
        rc = crypto_random_bytes(seed, sizeof(seed));
    if (rc)
        return rc;

    int64_t now = time_now_ms();
    pthread_mutex_lock(&uuid_lock);
    if (now > uuid_last_ms) {
        uuid_last_ms = now;
        uuid_counter = ((unsigned)seed[0] << 8 | seed[1]) & 0x7ff;
    } else if (++uuid_counter > 0xfff) {
        /* Counter exhausted: borrow the next millisecond, as the RFC allows. */
        uuid_last_ms++;
        uuid_counter = ((unsigned)seed[0] << 8 | seed[1]) & 0x7ff;
    }
    uint64_t ms = (uint64_t)uuid_last_ms;
    unsigned counter = uuid_counter;
    pthread_mutex_unlock(&uuid_lock);

    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (counter >> 8));
    b[7] = (uint8_t)(counter & 0xff);
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));

    crypto_hex_encode(b, sizeof(b), hex, sizeof(hex));
    /* 8-4-4-4-12 */
    memcpy(out, hex, 8);
    out[8] = '-';
    memcpy(out + 9, hex + 8, 4);
    out[13] = '-';
    memcpy(out + 14, hex + 12, 4);
    out[18] = '-';
    memcpy(out + 19, hex + 16, 4);
    out[23] = '-';
    memcpy(out + 24, hex + 20, 12);
    out[36] = '\0';
    return 0;
}

/*
 * One AES-256-GCM pass over len bytes, encrypting (enc = 1: the tag is written
 * out) or decrypting (enc = 0: the tag is checked; -EBADMSG when it does not
 * match). Lengths are checked by the callers to fit an int.
 */
static int gcm_pass(int enc, const uint8_t key[CRYPTO_AES_KEY_LEN],
                    const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad, size_t aadlen,
                    const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[CRYPTO_GCM_TAG_LEN])
{
    uint8_t scratch[CRYPTO_GCM_TAG_LEN];
    int n = 0;
    int rc = -EIO;

    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return -ENOMEM;
    if (!EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce, enc))
        goto out_free_ctx;
    if (aadlen && !EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aadlen))
        goto out_free_ctx;
    if (len && !EVP_CipherUpdate(ctx, out, &n, in, (int)len))
        goto out_free_ctx;
    if (!enc && !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, CRYPTO_GCM_TAG_LEN, tag))
        goto out_free_ctx;
    /* GCM is a stream mode: Update wrote every byte and Final writes none. */
    if (EVP_CipherFinal_ex(ctx, scratch, &n) != 1) {
        rc = enc ? -EIO : -EBADMSG;
        goto out_free_ctx;
    }
    if (enc && !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, CRYPTO_GCM_TAG_LEN, tag))
        goto out_free_ctx;
    rc = 0;
out_free_ctx:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int crypto_aead_seal(const uint8_t key[CRYPTO_AES_KEY_LEN], const void *aad, size_t aadlen,
                     const void *pt, size_t ptlen, uint8_t *out, size_t outsize, size_t *outlen)
{
    if ((!aad && aadlen) || (!pt && ptlen))
        return -EINVAL;
    if (ptlen > INT_MAX - CRYPTO_GCM_OVERHEAD || aadlen > INT_MAX ||
        outsize < ptlen + CRYPTO_GCM_OVERHEAD)
        return -E2BIG;
    uint8_t *nonce = out;
    uint8_t *ct = out + CRYPTO_GCM_NONCE_LEN;

    int rc = crypto_random_bytes(nonce, CRYPTO_GCM_NONCE_LEN);
    if (rc)
        return rc;
    rc = gcm_pass(1, key, nonce, aad, aadlen, pt, ptlen, ct, ct + ptlen);
    if (rc == 0 && outlen)
        *outlen = ptlen + CRYPTO_GCM_OVERHEAD;
    return rc;
}

int crypto_aead_open(const uint8_t key[CRYPTO_AES_KEY_LEN], const void *aad, size_t aadlen,
                     const uint8_t *in, size_t inlen, uint8_t *out, size_t outsize, size_t *outlen)
{
    uint8_t tag[CRYPTO_GCM_TAG_LEN];

    if ((!aad && aadlen) || !in)
        return -EINVAL;
    if (inlen < CRYPTO_GCM_OVERHEAD)
        return -EBADMSG;
    size_t ctlen = inlen - CRYPTO_GCM_OVERHEAD;
    if (ctlen > INT_MAX || aadlen > INT_MAX || outsize < ctlen)
        return -E2BIG;
    const uint8_t *ct = in + CRYPTO_GCM_NONCE_LEN;
    /* The tag ctrl takes a non-const pointer, so the tag is copied out. */
    memcpy(tag, ct + ctlen, CRYPTO_GCM_TAG_LEN);

    int rc = gcm_pass(0, key, in, aad, aadlen, ct, ctlen, out, tag);
    if (rc) {
        /* Never leave unauthenticated plaintext behind for a careless caller. */
        if (ctlen)
            OPENSSL_cleanse(out, ctlen);
        return rc;
    }
    if (outlen)
        *outlen = ctlen;
    return 0;
}
