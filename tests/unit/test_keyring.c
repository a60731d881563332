/*
 * Unit tests for keyring.c: sealing round trips, the key-spec parser, key
 * rotation by id, and every way a sealed value must refuse to open.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keyring.h"

/* base64 of 32 bytes 0x00..0x1f and of 32 bytes 0xff */
#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "//////////////////////////////////////////8="

static struct keyring *ring(const char *spec)
{
    char err[160] = "";
    struct keyring *k = keyring_new(spec, err, sizeof(err));
    if (!k)
        fail_msg("keyring_new(%s): %s", spec, err);
    return k;
}

static void test_seal_open_round_trip(void **state)
{
    (void)state;
    struct keyring *k = ring(KEY_A);
    const char secret[] = "whsec_c2VjcmV0IHdpdGggXDAgYW5kIG1vcmU=";
    char *sealed = keyring_seal(k, "source:acme:webhook_secrets", secret, strlen(secret));
    assert_non_null(sealed);
    assert_true(strncmp(sealed, "v1:k1:", 6) == 0);
    assert_null(strstr(sealed, "whsec_"));
    char *plain = NULL;
    size_t len = 0;
    assert_int_equal(keyring_open(k, "source:acme:webhook_secrets", sealed, &plain, &len), 0);
    assert_int_equal(len, strlen(secret));
    assert_string_equal(plain, secret);
    free(plain);
    /* a fresh nonce every time: the same plaintext never seals the same */
    char *again = keyring_seal(k, "source:acme:webhook_secrets", secret, strlen(secret));
    assert_string_not_equal(sealed, again);
    free(again);
    free(sealed);
    keyring_free(k);
}

static void test_refuses_wrong_aad_key_or_tampering(void **state)
{
    (void)state;
    struct keyring *a = ring(KEY_A), *b = ring(KEY_B);
    char *sealed = keyring_seal(a, "source:acme:api_token", "tok", 3);
    char *plain = NULL;
    assert_int_equal(keyring_open(a, "source:other:api_token", sealed, &plain, NULL), -EBADMSG);
    assert_int_equal(keyring_open(b, "source:acme:api_token", sealed, &plain, NULL), -EBADMSG);
    size_t n = strlen(sealed);
    sealed[n - 5] = sealed[n - 5] == 'A' ? 'B' : 'A';
    assert_int_equal(keyring_open(a, "source:acme:api_token", sealed, &plain, NULL), -EBADMSG);
    assert_null(plain);
    assert_int_equal(keyring_open(a, "x", "plain text", &plain, NULL), -EINVAL);
    assert_int_equal(keyring_open(a, "x", "v1:k1:!!!", &plain, NULL), -EINVAL);
    assert_int_equal(keyring_open(a, "x", "v1:k1:AAAA", &plain, NULL), -EINVAL);
    assert_int_equal(keyring_open(a, "x", "v1:zz:AAAA", &plain, NULL), -ENOKEY);
    free(sealed);
    keyring_free(a);
    keyring_free(b);
}

static void test_rotation_by_key_id(void **state)
{
    (void)state;
    struct keyring *old = ring("old:" KEY_A);
    struct keyring *rotated = ring("new:" KEY_B ",old:" KEY_A);
    char *by_old = keyring_seal(old, "aad", "value", 5);
    char *by_new = keyring_seal(rotated, "aad", "value", 5);
    assert_true(strncmp(by_new, "v1:new:", 7) == 0);
    char *plain = NULL;
    assert_int_equal(keyring_open(rotated, "aad", by_old, &plain, NULL), 0);
    assert_string_equal(plain, "value");
    free(plain);
    assert_int_equal(keyring_open(old, "aad", by_new, &plain, NULL), -ENOKEY);
    free(by_old);
    free(by_new);
    keyring_free(old);
    keyring_free(rotated);
}

static void test_bad_specs_are_named_without_the_key(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "c2hvcnQ=", /* 5 bytes */
        "not base64!",
        KEY_A "," KEY_B,        /* several keys need ids */
        "a:" KEY_A ",a:" KEY_B, /* duplicate id */
        "bad id:" KEY_A,
        "k:" KEY_A ",k2:",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[160] = "";
        struct keyring *k = keyring_new(bad[i], err, sizeof(err));
        if (k)
            fail_msg("spec %zu accepted", i);
        assert_true(err[0] != '\0');
        assert_null(strstr(err, KEY_A));
    }
    char err[160] = "";
    unsetenv("KEYRING_TEST_UNSET");
    assert_null(keyring_from_env("KEYRING_TEST_UNSET", err, sizeof(err)));
    assert_non_null(strstr(err, "KEYRING_TEST_UNSET"));
    setenv("KEYRING_TEST_SET", KEY_B, 1);
    struct keyring *k = keyring_from_env("KEYRING_TEST_SET", err, sizeof(err));
    assert_non_null(k);
    keyring_free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seal_open_round_trip),
        cmocka_unit_test(test_refuses_wrong_aad_key_or_tampering),
        cmocka_unit_test(test_rotation_by_key_id),
        cmocka_unit_test(test_bad_specs_are_named_without_the_key),
    };
    return cmocka_run_group_tests_name("keyring", tests, NULL, NULL);
}
