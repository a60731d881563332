/*
 * Webhook signature verification over the raw request bytes, before any
 * parsing: Standard Webhooks (default) and GitHub-style X-Signature-256.
 */
#ifndef INGEST_VERIFY_H
#define INGEST_VERIFY_H

#include <stddef.h>
#include <stdint.h>

struct source;

enum verify_result {
    VERIFY_OK = 0,
    VERIFY_MISSING,       /* a signature header is absent */
    VERIFY_BAD_TIMESTAMP, /* webhook-timestamp is not an integer */
    VERIFY_STALE,         /* timestamp outside the tolerance (either direction) */
    VERIFY_MISMATCH,      /* no signature matches any active secret */
};

struct verify_input {
    const char *webhook_id; /* Standard Webhooks headers */
    const char *webhook_timestamp;
    const char *webhook_signature;
    const char *signature_256; /* GitHub style: "sha256=<hex>" */
    const char *body;
    size_t len;
    int64_t now_ms;
    int64_t tolerance_s;
};

/* Checks the request against the source's scheme and active secrets. */
enum verify_result verify_request(const struct source *src, const struct verify_input *in);
/* Short machine-readable reason used in metrics and problem details. */
const char *verify_reason(enum verify_result r);

#endif
