/*
 * robot-sim: a simulated robot vendor platform for tests and `make run`.
 *
 * sim.c holds the fleet (robots, a min-heap scheduler, scenarios, commands),
 * deliver.c the registered webhooks and the sender threads that sign and post
 * event batches, api.c the vendor API and the /sim admin routes, main.c the
 * command line and the wiring. Everything here is thread-safe: the HTTP pool,
 * the tick loop and the senders share one struct sim.
 */
#ifndef SIM_H
#define SIM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define SIM_MAX_ROBOTS   1000000
#define SIM_MAX_FLEETS   26
#define SIM_MAX_SCENARIO 256
#define SIM_MAX_WEBHOOKS 16
#define SIM_NTYPES       6
#define SIM_MAX_STATUS   600

/* Event types in the order of robot-event.schema.json's eventType. */
enum sim_type { EV_HEARTBEAT, EV_STATUS, EV_FAULT, EV_BOOTED, EV_ACK, EV_RESULT };
extern const char *const sim_type_names[SIM_NTYPES];
/* The index of a type name, or -1. */
int sim_type_index(const char *name);

enum scen_kind { SCEN_SILENT, SCEN_STORM };

/* "robot R goes silent at t=T for D" or "fleet F: K faults spread over W from t=T". */
struct sim_scenario {
    enum scen_kind kind;
    uint32_t robot; /* SCEN_SILENT: 1-based robot number */
    int fleet;      /* SCEN_STORM: 0-based fleet index */
    int64_t at_ms;
    int64_t for_ms; /* SCEN_SILENT: <0 = for ever */
    unsigned faults;
    int64_t window_ms;
    bool fired;
};

/* Misbehaviour switched at run time (POST /sim/misbehave); probabilities 0..1. */
struct sim_misbehave {
    double vendor_500;         /* vendor API answers 500 + Retry-After: 1 */
    int slow_ms;               /* vendor API answers after this delay */
    double duplicate_webhooks; /* a delivery is sent twice with the same webhook-id */
    double out_of_order;       /* a delivery is held back behind the next one */
    double bad_signature;      /* a delivery is signed with a wrong key */
};

struct sim_options {
    uint32_t robots;
    unsigned fleets;
    const char *id_prefix;      /* "robot-" -> robot-00017 */
    int heartbeat_ms;           /* mean interval, jittered +-20% */
    double status_prob;         /* per heartbeat: a robot.status change */
    double fault_prob;          /* per heartbeat: a robot.fault */
    int reboot_ms;              /* silence after a reboot command */
    double reboot_fail_prob;    /* command.result failed */
    bool early_ack;             /* command.ack at once instead of after the silence */
    unsigned max_batch;         /* events per delivery */
    unsigned senders;           /* sender threads */
    int tick_ms;                /* how often due timers are run and batches cut */
    int max_retries;            /* delivery retries on 5xx / 429 / network errors */
    int timeout_ms;             /* one delivery attempt */
    size_t queue_max;           /* deliveries waiting; more are dropped and counted */
    const char *webhook_url;    /* optional webhook registered at start */
    const char *webhook_secret; /* its whsec_ secret (generated when NULL) */
    struct sim_scenario scen[SIM_MAX_SCENARIO];
    size_t nscen;
};

/* Counters read by GET /sim/stats; all relaxed atomics. */
struct sim_stats {
    atomic_uint_fast64_t events[SIM_NTYPES]; /* generated */
    atomic_uint_fast64_t events_unrouted;    /* generated while no webhook wanted them */
    atomic_uint_fast64_t deliveries;         /* requests sent (first attempts, duplicates too) */
    atomic_uint_fast64_t accepted;           /* 2xx */
    atomic_uint_fast64_t rejected;           /* a final non-2xx answer */
    atomic_uint_fast64_t failed;             /* no answer after the retries */
    atomic_uint_fast64_t dropped;            /* queue full */
    atomic_uint_fast64_t attempts;           /* including retries */
    atomic_uint_fast64_t events_accepted;    /* events in 2xx deliveries */
    atomic_uint_fast64_t by_status[SIM_MAX_STATUS];
    atomic_uint_fast64_t duplicates_sent;
    atomic_uint_fast64_t out_of_order;
    atomic_uint_fast64_t bad_signatures;
    atomic_uint_fast64_t api_requests;
    atomic_uint_fast64_t api_unauthorized;
    atomic_uint_fast64_t api_injected_500;
    atomic_uint_fast64_t api_slowed;
    atomic_uint_fast64_t commands_received; /* POSTs that reached a robot */
    atomic_uint_fast64_t commands_accepted; /* new commands executed */
    atomic_uint_fast64_t commands_soft, commands_hard;
    atomic_uint_fast64_t duplicates_suppressed;  /* same Idempotency-Key and body */
    atomic_uint_fast64_t idempotency_conflicts;  /* same key, other body: 409 */
    atomic_uint_fast64_t commands_unknown_robot; /* 404 */
    atomic_uint_fast64_t reboots_succeeded, reboots_failed, reboots_refused;
};

struct sim;

enum sim_cmd_result { CMD_ACCEPTED, CMD_REPLAYED, CMD_CONFLICT, CMD_UNKNOWN_ROBOT };

/* ---- sim.c: the fleet ---- */
/* NULL with errbuf filled on bad options. */
struct sim *sim_new(const struct sim_options *opt, char *errbuf, size_t errsize);
void sim_free(struct sim *s); /* NULL-safe; stops the senders first */
/* Runs due timers and scenarios and hands the new events to the senders. */
void sim_tick(struct sim *s);
struct sim_stats *sim_stats(struct sim *s);
struct deliver *sim_deliver(struct sim *s);
const struct sim_options *sim_options(const struct sim *s);
uint32_t sim_robot_count(const struct sim *s);
/* The 0-based index of a robot id, or -1. */
long sim_robot_find(const struct sim *s, const char *id);
/* Appends robots [from, from+n) as vendor Robot objects to arr. */
void sim_robots_describe(struct sim *s, uint32_t from, uint32_t n, cJSON *arr);
/*
 * A reboot command for robot idx: key is the Idempotency-Key, digest the
 * SHA-256 of the path and body. On CMD_ACCEPTED/CMD_REPLAYED *command_id
 * (yours, free()) is the command id answered the first time.
 */
enum sim_cmd_result sim_command(struct sim *s, long idx, const char *key, const uint8_t digest[32],
                                const char *command_id, bool hard, char **out_command_id);
/* Current misbehaviour (copied) and its replacement. */
struct sim_misbehave sim_misbehave_get(struct sim *s);
void sim_misbehave_set(struct sim *s, const struct sim_misbehave *m);
/* A uniform random number in [0, 1). */
double sim_rand(void);
/* Adds fleet/robot/command counts of this module to a stats object. */
void sim_stats_fleet(struct sim *s, cJSON *out);
/* Logs one summary line with the main counts. */
void sim_log_summary(struct sim *s);

/* ---- deliver.c: webhooks and senders ---- */
struct deliver;
struct deliver *deliver_new(const struct sim_options *opt, struct sim_stats *st);
void deliver_free(struct deliver *d); /* NULL-safe; waits for the senders (bounded) */
/* Registers a webhook; secret NULL = a new one. id and secret are written out. 0 or negative. */
int deliver_add(struct deliver *d, const char *url, uint32_t types_mask, const char *secret,
                char *id_out, size_t idsize, char *secret_out, size_t secretsize);
/* 0, or -ENOENT. */
int deliver_remove(struct deliver *d, const char *id);
size_t deliver_count(struct deliver *d);
/*
 * Hands over n serialised events (each malloc'd JSON object, freed here) with
 * their types; they are batched per webhook and queued for the senders.
 */
void deliver_events(struct deliver *d, char **events, const uint8_t *types, size_t n,
                    const struct sim_misbehave *m);
size_t deliver_queue_len(struct deliver *d);

/* ---- api.c: HTTP routes ---- */
struct http_server;
struct api;
/* Registers every route (and the bearer guard) on h; NULL on failure. */
struct api *api_new(struct http_server *h, struct sim *s, const char *token);
void api_free(struct api *a); /* NULL-safe; after the server is freed */

#endif
