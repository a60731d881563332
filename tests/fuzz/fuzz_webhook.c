/*
 * Fuzzes webhook-ingest's handling of outside input: the signature check over
 * raw bytes (both schemes, with header values taken from the input) and the
 * body parser. A valid signature is only accepted for the exact signed bytes,
 * and every accepted event has the fields the producer relies on.
 */
#include <string.h>

#include "../../services/webhook-ingest/events.h"
#include "../../services/webhook-ingest/verify.h"
#include "crypto.h"
#include "fuzz.h"
#include "json.h"
#include "sources.h"
#include "timeutil.h"

static uint8_t key1[] = "0123456789abcdef0123456789abcdef";
static uint8_t key2[] = "rotated-secret-key";

/* Splits the input at NUL bytes into up to n fields; the last keeps the rest. */
static size_t split(const uint8_t *data, size_t size, const char **parts, size_t *lens, size_t n,
                    char *copy)
{
    memcpy(copy, data, size);
    copy[size] = '\0';
    size_t k = 0, start = 0;
    for (size_t i = 0; i < size && k + 1 < n; i++) {
        if (copy[i] == '\0') {
            parts[k] = copy + start;
            lens[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    parts[k] = copy + start;
    lens[k] = size - start;
    return k + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    struct source_secret secrets[2] = {
        {key1, sizeof(key1) - 1, 0},
        {key2, sizeof(key2) - 1, 1},
    };
    struct source src = {.id = "fuzz", .base_url = "", .secrets = secrets, .nsecrets = 2};
    src.scheme = (data[0] & 1) ? SOURCE_SCHEME_GITHUB_SHA256 : SOURCE_SCHEME_STANDARD_WEBHOOKS;

    char *copy = malloc(size + 1);
    const char *p[5] = {0};
    size_t l[5] = {0};
    size_t n = split(data + 1, size - 1, p, l, 5, copy);
    const char *body = p[n - 1];
    size_t blen = l[n - 1];
    int64_t now = 1700000000000;

    struct verify_input in = {
        .webhook_id = n > 1 ? p[0] : NULL,
        .webhook_timestamp = n > 2 ? p[1] : NULL,
        .webhook_signature = n > 3 ? p[2] : NULL,
        .signature_256 = n > 1 ? p[0] : NULL,
        .body = body,
        .len = blen,
        .now_ms = now,
        .tolerance_s = 300,
    };
    enum verify_result r = verify_request(&src, &in);
    FUZZ_ASSERT(r >= VERIFY_OK && r <= VERIFY_MISMATCH);
    FUZZ_ASSERT(strcmp(verify_reason(r), "unknown") != 0);

    /* Sign the body properly: it must verify, and one flipped byte must not. */
    if (src.scheme == SOURCE_SCHEME_STANDARD_WEBHOOKS && blen > 0) {
        char ts[24], sig[64] = "v1,";
        uint8_t mac[CRYPTO_SHA256_LEN];
        snprintf(ts, sizeof(ts), "%lld", (long long)(now / 1000));
        struct crypto_part parts[] = {
            {"id", 2}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {body, blen}};
        FUZZ_ASSERT(crypto_hmac_sha256(key1, sizeof(key1) - 1, parts, 5, mac) == 0);
        FUZZ_ASSERT(crypto_base64_encode(mac, sizeof(mac), sig + 3, sizeof(sig) - 3) > 0);
        struct verify_input good = {"id", ts, sig, NULL, body, blen, now, 300};
        FUZZ_ASSERT(verify_request(&src, &good) == VERIFY_OK);
        char *flipped = malloc(blen);
        memcpy(flipped, body, blen);
        flipped[blen / 2] ^= 0x01;
        good.body = flipped;
        FUZZ_ASSERT(verify_request(&src, &good) == VERIFY_MISMATCH);
        free(flipped);
    }

    struct event_batch b;
    struct event_error err;
    if (event_batch_parse(body, blen, 50, &b, &err) == 0) {
        FUZZ_ASSERT(b.n >= 1 && b.n <= 50);
        for (size_t i = 0; i < b.n; i++) {
            FUZZ_ASSERT(b.events[i].raw && b.events[i].type && b.events[i].robot_id &&
                        b.events[i].occurred_at);
            /* the raw event is spliced into Kafka: consumers' cJSON must read it back */
            cJSON *obj = json_parse(b.events[i].raw, b.events[i].raw_len, NULL, 0);
            FUZZ_ASSERT(cJSON_IsObject(obj));
            FUZZ_ASSERT(strcmp(json_get_str(obj, "type"), b.events[i].type) == 0);
            FUZZ_ASSERT(strcmp(json_get_str(obj, "robot_id"), b.events[i].robot_id) == 0);
            cJSON_Delete(obj);
            FUZZ_ASSERT(event_type_known(b.events[i].type));
            FUZZ_ASSERT(strlen(b.events[i].robot_id) <= EVENT_ROBOT_ID_MAX);
        }
        event_batch_release(&b);
    } else {
        FUZZ_ASSERT(err.field[0] != '\0' && err.detail[0] != '\0');
    }
    free(copy);
    return 0;
}
