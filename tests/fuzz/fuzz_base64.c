/*
 * Fuzzes the strict base64 decoder (crypto_base64_decode) with an output
 * buffer of exactly the decoded size and with one too small. Only canonical
 * base64 is accepted, so encoding what was decoded gives the input back.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    /* Exact-size buffers, so ASan catches a write of a single byte too many. */
    size_t cap = size / 4 * 3 + 1;
    uint8_t *out = malloc(cap);
    FUZZ_ASSERT(out != NULL);

    size_t outlen = 0;
    int rc = crypto_base64_decode(in, size, out, cap, &outlen);
    FUZZ_ASSERT(rc == 0 || rc == -EINVAL);
    if (rc == 0) {
        FUZZ_ASSERT(outlen <= size / 4 * 3);
        uint8_t *exact = malloc(outlen ? outlen : 1);
        FUZZ_ASSERT(exact != NULL);
        size_t exactlen = 0;
        FUZZ_ASSERT(crypto_base64_decode(in, size, exact, outlen, &exactlen) == 0);
        FUZZ_ASSERT(exactlen == outlen && memcmp(exact, out, outlen) == 0);
        if (outlen > 0) {
            uint8_t *small = malloc(outlen - 1 ? outlen - 1 : 1);
            FUZZ_ASSERT(small != NULL);
            FUZZ_ASSERT(crypto_base64_decode(in, size, small, outlen - 1, NULL) == -E2BIG);
            free(small);
        }
        char *enc = malloc(size + 1);
        FUZZ_ASSERT(enc != NULL);
        int n = crypto_base64_encode(out, outlen, enc, size + 1);
        FUZZ_ASSERT(n >= 0 && (size_t)n == size && memcmp(enc, in, size) == 0);
        free(enc);
        free(exact);
    }
    /* A tiny buffer must fail cleanly, never be overrun. */
    uint8_t tiny[2];
    rc = crypto_base64_decode(in, size, tiny, sizeof(tiny), &outlen);
    FUZZ_ASSERT(rc == 0 || rc == -EINVAL || rc == -E2BIG);
    free(out);
    return 0;
}
