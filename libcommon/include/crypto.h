/*
 * Cryptography on OpenSSL: HMAC-SHA256, constant-time comparison, base64 and
 * hex, AES-256-GCM sealing, random bytes and time-ordered ids (UUIDv7).
 * Functions return 0 or a negative errno value unless said otherwise.
 */
#ifndef CRYPTO_H
#define CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRYPTO_SHA256_LEN    32
#define CRYPTO_AES_KEY_LEN   32
#define CRYPTO_GCM_NONCE_LEN 12
#define CRYPTO_GCM_TAG_LEN   16
/* A sealed message is nonce || ciphertext || tag. */
#define CRYPTO_GCM_OVERHEAD (CRYPTO_GCM_NONCE_LEN + CRYPTO_GCM_TAG_LEN)
#define CRYPTO_UUID_LEN     37 /* 36 chars + NUL */

/* One piece of a message fed to HMAC in order (avoids concatenating big bodies). */
struct crypto_part {
    const void *data;
    size_t len;
};

int crypto_hmac_sha256(const void *key, size_t keylen, const struct crypto_part *parts,
                       size_t nparts, uint8_t out[CRYPTO_SHA256_LEN]);
int crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN]);
/* Constant-time equality of two n-byte buffers. */
bool crypto_equal(const void *a, const void *b, size_t n);

/* Standard base64 with padding. encode: out must hold 4*ceil(n/3)+1; returns the length or -E2BIG.
 */
int crypto_base64_encode(const void *in, size_t n, char *out, size_t outsize);
/* Decodes standard base64 (padding required, no whitespace). -EINVAL on bad input, -E2BIG if out is
 * small. */
int crypto_base64_decode(const char *in, size_t n, uint8_t *out, size_t outsize, size_t *outlen);
/* Lowercase hex. encode: out must hold 2n+1. */
int crypto_hex_encode(const void *in, size_t n, char *out, size_t outsize);
int crypto_hex_decode(const char *in, size_t n, uint8_t *out, size_t outsize, size_t *outlen);

int crypto_random_bytes(void *out, size_t n);
/* Writes a UUIDv7 (RFC 9562: 48-bit ms timestamp, random rest), lowercase, NUL-terminated. */
int crypto_uuid_v7(char out[CRYPTO_UUID_LEN]);

/* AES-256-GCM with a fresh random nonce. outsize >= ptlen + CRYPTO_GCM_OVERHEAD. */
int crypto_aead_seal(const uint8_t key[CRYPTO_AES_KEY_LEN], const void *aad, size_t aadlen,
                     const void *pt, size_t ptlen, uint8_t *out, size_t outsize, size_t *outlen);
/* Opens what crypto_aead_seal made; -EBADMSG when the key, aad or data do not match. */
int crypto_aead_open(const uint8_t key[CRYPTO_AES_KEY_LEN], const void *aad, size_t aadlen,
                     const uint8_t *in, size_t inlen, uint8_t *out, size_t outsize, size_t *outlen);

#endif
