/*
 * W3C Trace Context traceparent values (see trace.h). Parsing follows the
 * spec's rules for version 00 and accepts later versions by their 00 prefix;
 * everything written is version 00.
 */
#include "trace.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "crypto.h"

/* "00-" + 32 + "-" + 16 + "-" + 2 */
#define TP_VERSION_OFF  0
#define TP_TRACE_OFF    3
#define TP_SPAN_OFF     36
#define TP_FLAGS_OFF    53
#define TP_LEN          55
#define TP_SPAN_HEX     16
#define TP_FLAG_SAMPLED 0x01

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '0')
            return false;
    }
    return true;
}

/*
 * Trace and span ids must be unique, not secret: a per-thread xoshiro256**
 * seeded once from the OS costs a few nanoseconds per id, where RAND_bytes on
 * every request showed up in the ingest profile.
 */
static _Thread_local uint64_t rng_state[4];
static _Thread_local bool rng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static int trace_random(void *out, size_t n)
{
    if (!rng_seeded) {
        int rc = crypto_random_bytes(rng_state, sizeof(rng_state));
        if (rc)
            return rc;
        rng_seeded = true;
    }
    uint8_t *p = out;
    while (n > 0) {
        uint64_t *st = rng_state;
        uint64_t v = rotl(st[1] * 5, 7) * 9;
        uint64_t t = st[1] << 17;
        st[2] ^= st[0];
        st[3] ^= st[1];
        st[1] ^= st[2];
        st[0] ^= st[3];
        st[2] ^= t;
        st[3] = rotl(st[3], 45);
        size_t k = n < sizeof(v) ? n : sizeof(v);
        memcpy(p, &v, k);
        p += k;
        n -= k;
    }
    return 0;
}

static int hex_nibble(char c)
{
    return c <= '9' ? c - '0' : c - 'a' + 10;
}

static int write_parent(char out[TRACE_PARENT_LEN], const char *trace_hex, unsigned flags)
{
    static const char digits[] = "0123456789abcdef";
    uint8_t span[TP_SPAN_HEX / 2];
    char span_hex[TP_SPAN_HEX + 1];

    /* An all-zero span id is invalid; with 64 random bits this loop runs once. */
    do {
        int rc = trace_random(span, sizeof(span));
        if (rc)
            return rc;
        crypto_hex_encode(span, sizeof(span), span_hex, sizeof(span_hex));
    } while (all_zero(span_hex, TP_SPAN_HEX));

    memcpy(out, "00-", 3);
    memcpy(out + TP_TRACE_OFF, trace_hex, TRACE_ID_LEN - 1);
    out[TP_SPAN_OFF - 1] = '-';
    memcpy(out + TP_SPAN_OFF, span_hex, TP_SPAN_HEX);
    out[TP_FLAGS_OFF - 1] = '-';
    out[TP_FLAGS_OFF] = digits[(flags >> 4) & 0x0f];
    out[TP_FLAGS_OFF + 1] = digits[flags & 0x0f];
    out[TP_LEN] = '\0';
    return 0;
}

int trace_parent_new(char out[TRACE_PARENT_LEN])
{
    uint8_t id[(TRACE_ID_LEN - 1) / 2];
    char hex[TRACE_ID_LEN];

    do {
        int rc = trace_random(id, sizeof(id));
        if (rc)
            return rc;
        crypto_hex_encode(id, sizeof(id), hex, sizeof(hex));
    } while (all_zero(hex, TRACE_ID_LEN - 1));
    return write_parent(out, hex, TP_FLAG_SAMPLED);
}

int trace_parent_parse(const char *s, char trace_id[TRACE_ID_LEN])
{
    if (!s)
        return -EINVAL;
    size_t len = strnlen(s, TP_LEN + 1);
    if (len < TP_LEN)
        return -EINVAL;
    const char *ver = s + TP_VERSION_OFF;
    if (!lower_hex(ver, 2) || memcmp(ver, "ff", 2) == 0)
        return -EINVAL;
    /* Version 00 is exactly 55 chars; a later version may append "-<more>". */
    if (memcmp(ver, "00", 2) == 0 ? len != TP_LEN : (len > TP_LEN && s[TP_LEN] != '-'))
        return -EINVAL;
    if (s[TP_TRACE_OFF - 1] != '-' || s[TP_SPAN_OFF - 1] != '-' || s[TP_FLAGS_OFF - 1] != '-')
        return -EINVAL;
    if (!lower_hex(s + TP_TRACE_OFF, TRACE_ID_LEN - 1) ||
        !lower_hex(s + TP_SPAN_OFF, TP_SPAN_HEX) || !lower_hex(s + TP_FLAGS_OFF, 2))
        return -EINVAL;
    if (all_zero(s + TP_TRACE_OFF, TRACE_ID_LEN - 1) || all_zero(s + TP_SPAN_OFF, TP_SPAN_HEX))
        return -EINVAL;
    if (trace_id) {
        memcpy(trace_id, s + TP_TRACE_OFF, TRACE_ID_LEN - 1);
        trace_id[TRACE_ID_LEN - 1] = '\0';
    }
    return 0;
}

int trace_parent_child(const char *parent, char out[TRACE_PARENT_LEN])
{
    char trace_id[TRACE_ID_LEN];

    if (!parent || trace_parent_parse(parent, trace_id) != 0)
        return trace_parent_new(out);
    /* Keep the caller's sampling decision; the other flag bits are not ours to echo. */
    unsigned flags =
        (unsigned)(hex_nibble(parent[TP_FLAGS_OFF]) << 4 | hex_nibble(parent[TP_FLAGS_OFF + 1]));
    return write_parent(out, trace_id, flags & TP_FLAG_SAMPLED);
}
