/*
 * Fuzzes the hex decoder (crypto_hex_decode) with an output buffer of exactly
 * the decoded size and with one too small; decoding then encoding gives the
 * input back in lowercase.
 */
#include <errno.h>
#include <stdlib.h>
#include <strings.h>

#include "crypto.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    size_t need = size / 2;
    /* Exact-size buffers, so ASan catches a write of a single byte too many. */
    uint8_t *out = malloc(need ? need : 1);
    FUZZ_ASSERT(out != NULL);

    size_t outlen = 0;
    int rc = crypto_hex_decode(in, size, out, need, &outlen);
    FUZZ_ASSERT(rc == 0 || rc == -EINVAL);
    if (rc == 0) {
        FUZZ_ASSERT(outlen == need);
        if (need > 0) {
            uint8_t *small = malloc(need - 1 ? need - 1 : 1);
            FUZZ_ASSERT(small != NULL);
            FUZZ_ASSERT(crypto_hex_decode(in, size, small, need - 1, NULL) == -E2BIG);
            free(small);
        }
        char *enc = malloc(size + 1);
        FUZZ_ASSERT(enc != NULL);
        FUZZ_ASSERT(crypto_hex_encode(out, outlen, enc, size + 1) == 0);
        FUZZ_ASSERT(strncasecmp(enc, in, size) == 0);
        free(enc);
    }
    uint8_t tiny[2];
    rc = crypto_hex_decode(in, size, tiny, sizeof(tiny), &outlen);
    FUZZ_ASSERT(rc == 0 || rc == -EINVAL || rc == -E2BIG);
    free(out);
    return 0;
}
