/*
 * Redis client on hiredis: connection from a redis:// URL, connect and command
 * timeouts, automatic reconnect with exponential backoff, argv-style commands
 * only (user data is never formatted into a command string), and pipelines.
 * A struct redis serialises its callers with a mutex; give busy threads their own.
 * Replies are hiredis redisReply objects: the caller frees them with
 * freeReplyObject().
 */
#ifndef REDIS_H
#define REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

struct redis;

struct redis_options {
    const char *url;        /* redis://[:password@]host[:port][/db] */
    int connect_timeout_ms; /* 0 = 1000 */
    int command_timeout_ms; /* 0 = 2000 */
    int backoff_max_ms;     /* longest wait between reconnect attempts; 0 = 5000 */
};

/* One command of a pipeline. argvlen may be NULL when every argument is a C string. */
struct redis_cmd {
    int argc;
    const char **argv;
    const size_t *argvlen;
};

/*
 * Parses the URL and tries to connect once; a failed connection is not an
 * error (commands reconnect later). NULL only for a bad URL, errbuf filled.
 */
struct redis *redis_new(const struct redis_options *opt, char *errbuf, size_t errsize);
void redis_free(struct redis *r);

/*
 * Runs one command. NULL when Redis is unreachable or timed out (the connection
 * is dropped and re-opened on a later call, after the backoff). A Redis error
 * answer is returned as a REDIS_REPLY_ERROR reply, not NULL.
 */
redisReply *redis_command(struct redis *r, int argc, const char **argv, const size_t *argvlen);
/* Same with NUL-terminated arguments ending with (char *)NULL: redis_cmd(r, "GET", key, (char
 * *)NULL). */
redisReply *redis_cmd(struct redis *r, const char *arg0, ...) __attribute__((sentinel));
/* Sends ncmds commands in one round trip; replies[i] gets each reply (NULL on failure). 0 or -EIO.
 */
int redis_pipeline(struct redis *r, size_t ncmds, const struct redis_cmd *cmds,
                   redisReply **replies);
/* PING with the command timeout; true when Redis answered. */
bool redis_ping(struct redis *r);
/* The last connection or protocol error (for logs), "" if none. Valid until the next call. */
const char *redis_last_error(struct redis *r);

#endif
