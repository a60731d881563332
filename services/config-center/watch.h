/*
 * Long-poll watch (GET /v1/watch?ns=a:3,b:7&timeout=60): answers at once when
 * a listed namespace has a newer version, else suspends the request (no
 * thread held) until a release of one of them, or 304 at the timeout (minus up
 * to 10% jitter so re-polls spread out). Versions are kept in memory, learned
 * from Redis on first use, from local releases, from config.changes.v1 (so
 * every replica notifies its own watchers) and from a periodic Redis re-read.
 * A timer thread with a min-heap expires watchers.
 */
#ifndef CONFIG_CENTER_WATCH_H
#define CONFIG_CENTER_WATCH_H

#include <stddef.h>
#include <stdint.h>

struct watch;
struct service;
struct http_request;

/* Starts the timer and the change-follower threads. NULL + errbuf on failure. */
struct watch *watch_new(struct service *svc, char *errbuf, size_t errsize);
/* The GET /v1/watch handler (ud = the watch). */
void watch_handle(struct http_request *req, void *ud);
/* A namespace reached version: answers every watcher that knew an older one. */
void watch_notify(struct watch *w, const char *ns, int64_t version);
/* Once a second: re-reads the known namespaces' versions from Redis every few seconds. */
void watch_tick(struct watch *w);
/* Answers every waiting watcher (304) and stops the threads. */
void watch_stop(struct watch *w);
void watch_free(struct watch *w);

#endif
