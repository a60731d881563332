/*
 * Unit tests for crypto.c: published HMAC/SHA/GCM vectors, the Standard
 * Webhooks signature example, codec edge cases and UUIDv7 layout and order.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "crypto.h"

static void hex_of(const uint8_t *p, size_t n, char *out, size_t outsize)
{
    assert_int_equal(crypto_hex_encode(p, n, out, outsize), 0);
}

static void from_hex(const char *hex, uint8_t *out, size_t outsize, size_t *outlen)
{
    assert_int_equal(crypto_hex_decode(hex, strlen(hex), out, outsize, outlen), 0);
}

static void check_hmac(const uint8_t *key, size_t keylen, const void *msg, size_t msglen,
                       const char *want)
{
    struct crypto_part part = {msg, msglen};
    uint8_t mac[CRYPTO_SHA256_LEN];
    char hex[2 * CRYPTO_SHA256_LEN + 1];
    assert_int_equal(crypto_hmac_sha256(key, keylen, &part, 1, mac), 0);
    hex_of(mac, sizeof(mac), hex, sizeof(hex));
    assert_string_equal(hex, want);
}

/* RFC 4231 section 4, HMAC-SHA-256 results (case 5 is truncated output, skipped). */
static void test_hmac_rfc4231(void **state)
{
    (void)state;
    uint8_t key[131];
    uint8_t data[50];

    memset(key, 0x0b, 20);
    check_hmac(key, 20, "Hi There", 8,
               "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");

    check_hmac((const uint8_t *)"Jefe", 4, "what do ya want for nothing?", 28,
               "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    memset(key, 0xaa, 20);
    memset(data, 0xdd, 50);
    check_hmac(key, 20, data, 50,
               "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");

    for (int i = 0; i < 25; i++)
        key[i] = (uint8_t)(i + 1);
    memset(data, 0xcd, 50);
    check_hmac(key, 25, data, 50,
               "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");

    memset(key, 0xaa, 131);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    check_hmac(key, 131, m6, strlen(m6),
               "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    const char *m7 = "This is a test using a larger than block-size key and a larger than "
                     "block-size data. The key needs to be hashed before being used by the "
                     "HMAC algorithm.";
    check_hmac(key, 131, m7, strlen(m7),
               "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

static void test_hmac_empty_key_and_parts(void **state)
{
    (void)state;
    uint8_t whole[CRYPTO_SHA256_LEN], split[CRYPTO_SHA256_LEN];
    char hex[2 * CRYPTO_SHA256_LEN + 1];

    /* HMAC-SHA256 with empty key and empty message. */
    assert_int_equal(crypto_hmac_sha256(NULL, 0, NULL, 0, whole), 0);
    hex_of(whole, sizeof(whole), hex, sizeof(hex));
    assert_string_equal(hex, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");

    /* Feeding the message in pieces (including an empty one) gives the same MAC. */
    struct crypto_part one = {"what do ya want for nothing?", 28};
    struct crypto_part parts[] = {{"what do ", 8}, {"", 0}, {"ya want", 7}, {" for nothing?", 13}};
    assert_int_equal(crypto_hmac_sha256("Jefe", 4, &one, 1, whole), 0);
    assert_int_equal(crypto_hmac_sha256("Jefe", 4, parts, 4, split), 0);
    assert_memory_equal(whole, split, sizeof(whole));

    assert_int_equal(crypto_hmac_sha256(NULL, 4, &one, 1, whole), -EINVAL);
    assert_int_equal(crypto_hmac_sha256("Jefe", 4, NULL, 1, whole), -EINVAL);
}

/* https://www.standardwebhooks.com example: signature over "{id}.{timestamp}.{body}". */
static void test_standard_webhooks_example(void **state)
{
    (void)state;
    const char *secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const char *id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const char *ts = "1614265330";
    const char *body = "{\"test\": 2432232314}";
    uint8_t key[64];
    size_t keylen = 0;
    uint8_t mac[CRYPTO_SHA256_LEN];
    char sig[64] = "v1,";

    const char *b64 = secret + strlen("whsec_");
    assert_int_equal(crypto_base64_decode(b64, strlen(b64), key, sizeof(key), &keylen), 0);
    assert_int_equal(keylen, 24);

    struct crypto_part parts[] = {
        {id, strlen(id)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {body, strlen(body)},
    };
    assert_int_equal(crypto_hmac_sha256(key, keylen, parts, 5, mac), 0);
    int n = crypto_base64_encode(mac, sizeof(mac), sig + 3, sizeof(sig) - 3);
    assert_int_equal(n, 44);
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");

    /* One changed body byte must change the signature. */
    struct crypto_part tampered[] = {
        {id, strlen(id)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {"{\"test\": 2432232315}", 20},
    };
    uint8_t mac2[CRYPTO_SHA256_LEN];
    assert_int_equal(crypto_hmac_sha256(key, keylen, tampered, 5, mac2), 0);
    assert_false(crypto_equal(mac, mac2, sizeof(mac)));
}

static void test_sha256_and_equal(void **state)
{
    (void)state;
    uint8_t d[CRYPTO_SHA256_LEN];
    char hex[2 * CRYPTO_SHA256_LEN + 1];

    assert_int_equal(crypto_sha256("abc", 3, d), 0);
    hex_of(d, sizeof(d), hex, sizeof(hex));
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(crypto_sha256(NULL, 0, d), 0);
    hex_of(d, sizeof(d), hex, sizeof(hex));
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    assert_true(crypto_equal("abcd", "abcd", 4));
    assert_false(crypto_equal("abcd", "abce", 4));
    assert_false(crypto_equal("xbcd", "abcd", 4));
    assert_true(crypto_equal("a", "b", 0));
}

static void test_base64_round_trip(void **state)
{
    (void)state;
    /* RFC 4648 section 10 vectors. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char out[16];
    uint8_t dec[16];
    size_t declen = 99;

    for (size_t i = 0; i < 7; i++) {
        size_t n = strlen(plain[i]);
        assert_int_equal(crypto_base64_encode(plain[i], n, out, sizeof(out)), strlen(enc[i]));
        assert_string_equal(out, enc[i]);
        assert_int_equal(crypto_base64_decode(enc[i], strlen(enc[i]), dec, sizeof(dec), &declen),
                         0);
        assert_int_equal(declen, n);
        assert_memory_equal(dec, plain[i], n);
    }

    /* Every byte value survives. */
    uint8_t all[256], back[256];
    char big[4 * 86 + 1];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    assert_int_equal(crypto_base64_encode(all, 256, big, sizeof(big)), 344);
    assert_int_equal(crypto_base64_decode(big, 344, back, sizeof(back), &declen), 0);
    assert_int_equal(declen, 256);
    assert_memory_equal(all, back, 256);
}

static void test_base64_sizes(void **state)
{
    (void)state;
    char out[9];
    uint8_t dec[6];
    size_t declen = 0;

    /* "foobar" needs 8 chars + NUL. */
    assert_int_equal(crypto_base64_encode("foobar", 6, out, 8), -E2BIG);
    assert_int_equal(crypto_base64_encode("foobar", 6, out, 9), 8);

    /* The exact decoded length is enough, even though the last group decodes to 3 bytes. */
    memset(dec, 0x55, sizeof(dec));
    assert_int_equal(crypto_base64_decode("Zm9vYg==", 8, dec, 4, &declen), 0);
    assert_int_equal(declen, 4);
    assert_memory_equal(dec, "foob", 4);
    assert_int_equal(dec[4], 0x55); /* nothing written past outsize */
    assert_int_equal(crypto_base64_decode("Zm9vYg==", 8, dec, 3, &declen), -E2BIG);
    assert_int_equal(crypto_base64_decode("Zm9vYmFy", 8, dec, 5, &declen), -E2BIG);
}

static void test_base64_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Zg=",       /* not a multiple of 4 */
        "Zg",        /* padding missing */
        "Zm9v\n",    /* whitespace */
        " Zm9",      /* leading whitespace */
        "Zm9vYg=\n", /* trailing whitespace */
        "Z===",      /* too much padding */
        "====",      /* only padding */
        "Zg=a",      /* padding in the middle */
        "Z=g=",      /* padding in the middle */
        "Zm9*",      /* not in the alphabet */
        "Zm9-",      /* base64url is not accepted */
        "Zh==",      /* non-zero bits under the padding */
        "Zm9=",      /* non-zero bits under the padding */
    };
    uint8_t dec[16];
    size_t declen = 77;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = crypto_base64_decode(bad[i], strlen(bad[i]), dec, sizeof(dec), &declen);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d, want -EINVAL", bad[i], rc);
    }
    assert_int_equal(declen, 77);
    /* An embedded NUL is not base64. */
    assert_int_equal(crypto_base64_decode("Zm\0v", 4, dec, sizeof(dec), &declen), -EINVAL);
}

static void test_hex(void **state)
{
    (void)state;
    char out[9];
    uint8_t dec[4];
    size_t declen = 0;
    const uint8_t raw[] = {0x00, 0x9f, 0xa0, 0xff};

    assert_int_equal(crypto_hex_encode(raw, 4, out, sizeof(out)), 0);
    assert_string_equal(out, "009fa0ff");
    assert_int_equal(crypto_hex_encode(raw, 4, out, 8), -E2BIG);
    assert_int_equal(crypto_hex_encode(raw, 0, out, 1), 0);
    assert_string_equal(out, "");

    assert_int_equal(crypto_hex_decode("009fa0ff", 8, dec, sizeof(dec), &declen), 0);
    assert_int_equal(declen, 4);
    assert_memory_equal(dec, raw, 4);
    assert_int_equal(crypto_hex_decode("009FA0FF", 8, dec, sizeof(dec), &declen), 0);
    assert_memory_equal(dec, raw, 4);

    assert_int_equal(crypto_hex_decode("009", 3, dec, sizeof(dec), &declen), -EINVAL);
    assert_int_equal(crypto_hex_decode("0g", 2, dec, sizeof(dec), &declen), -EINVAL);
    assert_int_equal(crypto_hex_decode(" 0", 2, dec, sizeof(dec), &declen), -EINVAL);
    assert_int_equal(crypto_hex_decode("0x00", 4, dec, sizeof(dec), &declen), -EINVAL);
    assert_int_equal(crypto_hex_decode("009fa0ff00", 10, dec, sizeof(dec), &declen), -E2BIG);
}

static void test_random(void **state)
{
    (void)state;
    uint8_t a[32] = {0}, b[32] = {0}, zero[32] = {0};
    assert_int_equal(crypto_random_bytes(a, sizeof(a)), 0);
    assert_int_equal(crypto_random_bytes(b, sizeof(b)), 0);
    assert_memory_not_equal(a, b, sizeof(a));
    assert_memory_not_equal(a, zero, sizeof(a));
    assert_int_equal(crypto_random_bytes(NULL, 0), 0);
}

static void check_uuid_shape(const char *u)
{
    assert_int_equal(strlen(u), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            assert_int_equal(u[i], '-');
        } else if (!((u[i] >= '0' && u[i] <= '9') || (u[i] >= 'a' && u[i] <= 'f'))) {
            fail_msg("uuid \"%s\" has bad char at %d", u, i);
        }
    }
    assert_int_equal(u[14], '7'); /* version */
    if (!strchr("89ab", u[19]))   /* variant 10xx */
        fail_msg("uuid \"%s\" has variant nibble %c", u, u[19]);
}

static int64_t uuid_ms(const char *u)
{
    char hex[13];
    memcpy(hex, u, 8);
    memcpy(hex + 8, u + 9, 4);
    hex[12] = '\0';
    return strtoll(hex, NULL, 16);
}

static void test_uuid_v7(void **state)
{
    (void)state;
    char prev[CRYPTO_UUID_LEN], cur[CRYPTO_UUID_LEN];
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t before = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    assert_int_equal(crypto_uuid_v7(prev), 0);
    check_uuid_shape(prev);
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t after = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    /* The first 48 bits are the Unix time in milliseconds. */
    assert_in_range(uuid_ms(prev), before, after);

    /* Many ids in the same millisecond still sort in creation order and never repeat. */
    for (int i = 0; i < 5000; i++) {
        assert_int_equal(crypto_uuid_v7(cur), 0);
        check_uuid_shape(cur);
        if (strcmp(prev, cur) >= 0)
            fail_msg("uuid \"%s\" does not sort after \"%s\"", cur, prev);
        memcpy(prev, cur, sizeof(prev));
    }

    /* Across a clock tick as well. */
    struct timespec nap = {0, 3 * 1000 * 1000};
    nanosleep(&nap, NULL);
    assert_int_equal(crypto_uuid_v7(cur), 0);
    assert_true(strcmp(prev, cur) < 0);
    assert_true(uuid_ms(cur) >= uuid_ms(prev));
}

static const uint8_t test_key[CRYPTO_AES_KEY_LEN] = {
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
};

static void test_aead_round_trip(void **state)
{
    (void)state;
    const char *pt = "robot r-17 api token";
    size_t ptlen = strlen(pt);
    uint8_t sealed[64], sealed2[64], opened[64];
    size_t slen = 0, slen2 = 0, olen = 0;

    assert_int_equal(
        crypto_aead_seal(test_key, "tenant-a", 8, pt, ptlen, sealed, sizeof(sealed), &slen), 0);
    assert_int_equal(slen, ptlen + CRYPTO_GCM_OVERHEAD);
    assert_memory_not_equal(sealed + CRYPTO_GCM_NONCE_LEN, pt, ptlen);
    assert_int_equal(
        crypto_aead_open(test_key, "tenant-a", 8, sealed, slen, opened, sizeof(opened), &olen), 0);
    assert_int_equal(olen, ptlen);
    assert_memory_equal(opened, pt, ptlen);

    /* A fresh nonce each time: the same input never seals the same way. */
    assert_int_equal(
        crypto_aead_seal(test_key, "tenant-a", 8, pt, ptlen, sealed2, sizeof(sealed2), &slen2), 0);
    assert_memory_not_equal(sealed, sealed2, slen);

    /* Empty plaintext and no aad still authenticate. */
    assert_int_equal(crypto_aead_seal(test_key, NULL, 0, NULL, 0, sealed, sizeof(sealed), &slen),
                     0);
    assert_int_equal(slen, CRYPTO_GCM_OVERHEAD);
    assert_int_equal(crypto_aead_open(test_key, NULL, 0, sealed, slen, opened, 0, &olen), 0);
    assert_int_equal(olen, 0);
    sealed[slen - 1] ^= 1;
    assert_int_equal(crypto_aead_open(test_key, NULL, 0, sealed, slen, opened, 0, &olen), -EBADMSG);
}

/* McGrew & Viega GCM test case 16 (AES-256, 96-bit IV, with AAD), laid out as nonce||ct||tag. */
static void test_aead_open_known_answer(void **state)
{
    (void)state;
    uint8_t key[32], in[128], want[64], aad[20], out[64];
    size_t keylen, inlen, wantlen, aadlen, olen = 0, n;

    from_hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", key, sizeof(key),
             &keylen);
    from_hex("cafebabefacedbaddecaf888", in, sizeof(in), &n);
    from_hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3d"
             "a7b08b1056828838c5f61e6393ba7a0abcc9f662"
             "76fc6ece0f4e1768cddf8853bb2d551b",
             in + n, sizeof(in) - n, &inlen);
    inlen += n;
    from_hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532f"
             "cf0e2449a6b525b16aedf5aa0de657ba637b39",
             want, sizeof(want), &wantlen);
    from_hex("feedfacedeadbeeffeedfacedeadbeefabaddad2", aad, sizeof(aad), &aadlen);
    assert_int_equal(keylen, 32);

    assert_int_equal(crypto_aead_open(key, aad, aadlen, in, inlen, out, sizeof(out), &olen), 0);
    assert_int_equal(olen, wantlen);
    assert_memory_equal(out, want, wantlen);
}

static void test_aead_failures(void **state)
{
    (void)state;
    const char *pt = "secret";
    uint8_t sealed[64], opened[64], zero[64] = {0};
    uint8_t other_key[CRYPTO_AES_KEY_LEN];
    size_t slen = 0, olen = 99;

    assert_int_equal(crypto_aead_seal(test_key, "aad", 3, pt, 6, sealed, sizeof(sealed), &slen), 0);

    /* Flip each byte in turn (nonce, ciphertext and tag): all must fail. */
    for (size_t i = 0; i < slen; i++) {
        sealed[i] ^= 0x01;
        memset(opened, 0, sizeof(opened));
        int rc = crypto_aead_open(test_key, "aad", 3, sealed, slen, opened, sizeof(opened), &olen);
        if (rc != -EBADMSG)
            fail_msg("tampered byte %zu gave %d, want -EBADMSG", i, rc);
        assert_memory_equal(opened, zero, 6); /* no unauthenticated plaintext left */
        sealed[i] ^= 0x01;
    }
    assert_int_equal(olen, 99);

    memcpy(other_key, test_key, sizeof(other_key));
    other_key[31] ^= 0x80;
    assert_int_equal(
        crypto_aead_open(other_key, "aad", 3, sealed, slen, opened, sizeof(opened), &olen),
        -EBADMSG);
    assert_int_equal(
        crypto_aead_open(test_key, "aae", 3, sealed, slen, opened, sizeof(opened), &olen),
        -EBADMSG);
    assert_int_equal(
        crypto_aead_open(test_key, NULL, 0, sealed, slen, opened, sizeof(opened), &olen), -EBADMSG);
    /* Truncated: shorter than nonce + tag, and one byte short. */
    assert_int_equal(crypto_aead_open(test_key, "aad", 3, sealed, CRYPTO_GCM_OVERHEAD - 1, opened,
                                      sizeof(opened), &olen),
                     -EBADMSG);
    assert_int_equal(
        crypto_aead_open(test_key, "aad", 3, sealed, slen - 1, opened, sizeof(opened), &olen),
        -EBADMSG);

    /* Buffers too small. */
    assert_int_equal(
        crypto_aead_seal(test_key, "aad", 3, pt, 6, sealed, 6 + CRYPTO_GCM_OVERHEAD - 1, &slen),
        -E2BIG);
    assert_int_equal(crypto_aead_open(test_key, "aad", 3, sealed, slen, opened, 5, &olen), -E2BIG);
    assert_int_equal(crypto_aead_open(test_key, "aad", 3, sealed, slen, opened, 6, &olen), 0);
    assert_int_equal(olen, 6);
    assert_memory_equal(opened, pt, 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_rfc4231),
        cmocka_unit_test(test_hmac_empty_key_and_parts),
        cmocka_unit_test(test_standard_webhooks_example),
        cmocka_unit_test(test_sha256_and_equal),
        cmocka_unit_test(test_base64_round_trip),
        cmocka_unit_test(test_base64_sizes),
        cmocka_unit_test(test_base64_invalid),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_uuid_v7),
        cmocka_unit_test(test_aead_round_trip),
        cmocka_unit_test(test_aead_open_known_answer),
        cmocka_unit_test(test_aead_failures),
    };
    return cmocka_run_group_tests_name("crypto", tests, NULL, NULL);
}
