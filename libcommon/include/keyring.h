/*
 * Encryption at rest for secrets (vendor API tokens, webhook secrets, secret
 * config values): AES-256-GCM under keys from the environment.
 *
 * SECRETS_KEY holds one key as base64 of 32 bytes ("k1" is its id), or several
 * as "id:base64,id:base64": the first seals, every one opens, so a key can be
 * rotated by putting the new one first and re-sealing. A sealed value is text,
 * "v1:<key id>:<base64(nonce || ciphertext || tag)>", bound by the GCM
 * additional data to where it is stored (e.g. "source:acme:api_token") so a
 * ciphertext copied to another field does not open.
 */
#ifndef KEYRING_H
#define KEYRING_H

#include <stddef.h>

struct keyring;

/* Parses a key specification as above. NULL with errbuf saying what is wrong (never the key). */
struct keyring *keyring_new(const char *spec, char *errbuf, size_t errsize);
/* keyring_new(getenv(var)); an unset variable is an error naming it. */
struct keyring *keyring_from_env(const char *var, char *errbuf, size_t errsize);
void keyring_free(struct keyring *k);

/* Seals len bytes; returns the text form (you free it) or NULL if the input is over 1 MiB. */
char *keyring_seal(const struct keyring *k, const char *aad, const void *plain, size_t len);
/*
 * Opens a sealed value: 0 and *plain (NUL-terminated, you free it) / *len, or
 * -EINVAL (not a sealed value), -ENOKEY (unknown key id), -EBADMSG (wrong key,
 * aad or tampered data).
 */
int keyring_open(const struct keyring *k, const char *aad, const char *sealed, char **plain,
                 size_t *len);

#endif
