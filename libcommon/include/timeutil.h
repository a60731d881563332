/*
 * Clocks and RFC 3339 timestamps. Wall-clock time is milliseconds since the Unix
 * epoch (UTC); monotonic time is for durations and deadlines only.
 */
#ifndef TIMEUTIL_H
#define TIMEUTIL_H

#include <stddef.h>
#include <stdint.h>

#define TIME_RFC3339_LEN 32 /* enough for "2026-11-22T10:03:56.123Z" + NUL */

int64_t time_now_ms(void);
int64_t time_mono_ms(void);
/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ". Returns 0 or -E2BIG. */
int time_format_rfc3339(int64_t ms, char *out, size_t size);
/* Parses an RFC 3339 date-time ("Z" or "+hh:mm" offset, optional fraction). 0 or -EINVAL. */
int time_parse_rfc3339(const char *s, int64_t *ms);
/* Sleeps for ms milliseconds (restarting on EINTR unless the stop flag is set). */
void time_sleep_ms(int64_t ms);

#endif
