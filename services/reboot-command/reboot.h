/*
 * reboot-command's shared context and the functions its files call on each
 * other: reboot.c (context, settings, lifecycle transitions and their status
 * events), store.c (the command records in Redis), policy.c (robot view, cron
 * windows, safety rules, fleet slots, abort switch), dispatch.c (the vendor
 * worker pool), outbox.c (the status events' outbox relay), lanes.c (the Kafka
 * consumers), leader.c (lease, schedule, timeouts) and api.c (HTTP).
 */
#ifndef REBOOT_H
#define REBOOT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "kafka.h"
#include "outbox.h"

struct service;
struct redis;
struct metric;
struct keyring;
struct source_cache;
struct dispatcher;
struct lanes;
struct leader;
struct outbox;
struct robot_view;
struct redis_cmd;
struct redisReply;

#define CMD_ID_MAX   200
#define ROBOT_ID_MAX 128
#define REASON_MAX   256
#define ACTOR_MAX    128

extern const struct cfg_key reboot_config_keys[];
extern const size_t reboot_config_nkeys;
extern const struct kafka_prop reboot_producer_defaults[];
extern const size_t reboot_producer_ndefaults;

/* The reloadable policy and timing settings, copied whole under a lock. */
struct reboot_settings {
    int64_t cooldown_s;
    int64_t max_per_day;
    int64_t fleet_max;
    int64_t fleet_queue_max;
    int64_t ack_timeout_s;
    int64_t completion_timeout_s;
    double abort_ratio;
    int64_t abort_min_count;
    int64_t abort_window_s;
    int64_t lease_ttl_ms;
    int64_t poll_ms;
    int64_t idempotency_ttl_s;
    int64_t record_ttl_s;
    int64_t stuck_after_s;
    int64_t max_request_age_s;
};

enum cmd_origin { ORIGIN_API, ORIGIN_AUTOMATIC, ORIGIN_SCHEDULED };

/* A command as the lanes and the dispatcher see it (fixed-size copy of cmd:{id}). */
struct command {
    char id[CMD_ID_MAX + 1];
    char robot_id[ROBOT_ID_MAX + 1];
    char mode[8];
    char reason[REASON_MAX + 1];
    char origin[16];
    char requested_by[ACTOR_MAX + 1];
    char state[16];
    bool force;
    bool window_next;
    int64_t at_ms; /* requested fire time, 0 = now */
    int64_t created_ms;
};

struct reboot {
    struct service *svc;
    struct redis *redis; /* the service's shared connection (API threads) */
    struct kafka_producer *producer;
    struct keyring *keyring;
    struct source_cache *sources;
    struct dispatcher *dispatch;
    struct lanes *lanes;
    struct leader *leader;
    struct outbox *outbox;
    char instance[96];
    int64_t started_ms;

    pthread_rwlock_t set_lock;
    struct reboot_settings set;

    struct metric *m_commands; /* {state,origin} */
    struct metric *m_latency;  /* dispatch latency histogram */
    struct metric *m_vendor_errors;
    struct metric *m_breaker; /* {vendor} */
    struct metric *m_queue;
    struct metric *m_active;
    struct metric *m_lease;
    struct metric *m_skipped; /* {reason} */
};

/* ---- reboot.c ---- */
struct reboot *reboot_new(struct service *s, char *errbuf, size_t errsize);
int reboot_start(struct reboot *rb, char *errbuf, size_t errsize);
int reboot_register_routes(struct reboot *rb); /* api.c */
void reboot_stop(void *ud);                    /* service_on_shutdown */
void reboot_free(struct reboot *rb);
void reboot_settings_get(struct reboot *rb, struct reboot_settings *out);

/* What a transition does besides changing the state. */
struct transition {
    const char *to;
    const char *from;    /* comma-separated states it may leave */
    const char *actor;   /* who: an operator's name or "reboot-command" */
    const char *detail;  /* why, for people; may be NULL */
    const char *rule;    /* the policy rule that refused, for rejected; may be NULL */
    int64_t deadline_ms; /* next timeout of the new state; 0 = none */
};
/*
 * Applies one lifecycle transition atomically in Redis (only from the listed
 * states) together with its status event in the outbox (outbox.c relays it to
 * robot.command-status.v1). A terminal state frees the command's fleet slot
 * (and lets queued ones in) and feeds the abort switch. 1 applied, 0 not (the
 * command was in another state), -EIO.
 */
int reboot_transition(struct reboot *rb, struct redis *r, const struct command *c,
                      const struct transition *t);
/* Counts a stored transition (reboot_commands_total) and wakes the outbox relay. */
void reboot_announced(struct reboot *rb, const struct command *c, const char *state);
/* Produces robot.reboot.requested for c to robot.commands.v1; opaque goes to the callback. */
int reboot_produce_command(struct reboot *rb, const struct command *c, const char *origin,
                           void *opaque);
/* Produces and waits for the broker's answer (up to timeout_ms). 0 or negative. */
int reboot_produce_command_sync(struct reboot *rb, const struct command *c, const char *origin,
                                int timeout_ms);
/* Lets queued commands in while fleet slots are free, and dispatches them. */
void reboot_pump_queue(struct reboot *rb, struct redis *r);
/* Policy decision and its transitions for a command in state requested or scheduled. */
/* 0 (decided, whatever the outcome) or -EIO (Redis could not tell: try again later). */
/* known: the robot view when the caller just read it, else NULL. */
int reboot_decide(struct reboot *rb, struct redis *r, struct command *c, bool fired,
                  const struct robot_view *known);
/* A connection of its own for a busy thread; NULL only for a bad URL. */
struct redis *reboot_redis_new(struct reboot *rb);
const char *origin_name(enum cmd_origin o);

/* ---- store.c ---- */
/*
 * The data of a command's status event (robot.command-status.v1) as JSON text
 * (you free it); at is the transition's time.
 */
char *store_status_data(const struct command *c, const char *state, const char *actor,
                        const char *detail, const char *at);
/*
 * Creates cmd:{id} in state requested with its indexes and the "requested"
 * status event in the outbox; with an idempotency
 * key (idem_key not NULL) only when the key is new. 1 created, 0 the command
 * (or key) existed (*existing gets the id), -EIO.
 */
int store_create(struct redis *r, const struct command *c, const char *idem_key, int64_t idem_ttl_s,
                 char existing[CMD_ID_MAX + 1]);
/* store_create without idempotency key, reading the robot view v in the same round trip. */
int store_create_viewing(struct redis *r, const struct command *c, char existing[CMD_ID_MAX + 1],
                         struct robot_view *v);
/* Reads cmd:{id}: 0, -ENOENT, -EIO. */
int store_get(struct redis *r, const char *id, struct command *out);
/* The full record with its history as JSON (you delete it); NULL with *err = -ENOENT/-EIO. */
cJSON *store_record_json(struct redis *r, const char *id, int *err);
/* The pieces of GET /v1/commands. Fills items, sets *next_cursor ("" at the end). */
int store_list(struct redis *r, const char *robot_id, const char *state, int64_t since_ms,
               const char *cursor, int limit, cJSON *items, char *next_cursor, size_t ncursor);
/*
 * The transition script: 1 applied (*prev, *seq = history length, *terminal,
 * *released = a fleet slot was freed), 0 the command was in another state
 * (*prev = that state), -EIO.
 */
int store_transition(struct redis *r, const char *id, const struct transition *t,
                     const char *entry_json, int64_t now_ms, int64_t record_ttl_s, bool *terminal,
                     bool *released, char *prev, size_t nprev, int *seq, const struct command *c);
/*
 * A decided command enters the fleet: in one script, from the states in from,
 * it takes a fleet slot (or a place in the queue), goes to queued and, with a
 * slot, on to dispatched (ack deadline ack_deadline_ms) with the dispatch
 * counted for cooldown and the daily cap; both status events go to the outbox.
 * 1 applied (*admitted tells whether it is dispatched now), 0 the command was
 * in another state (*prev), -EIO.
 */
int store_enter_fleet(struct redis *r, const struct command *c, const char *from, int64_t fleet_max,
                      int64_t now_ms, int64_t ack_deadline_ms, bool *admitted, char *prev,
                      size_t nprev);
bool state_is_terminal(const char *state);

/* ---- policy.c ---- */
struct robot_view {
    bool found;
    bool busy;
    bool auto_reboot;
    bool mode_soft, mode_hard;
    char source[72];
    char cron[128];
    int64_t window_s; /* 0 = no maintenance window */
    /* what the refusing rules need, read in the same round trip */
    int64_t read_ms;   /* when */
    bool paused;       /* the abort switch */
    int64_t last_ms;   /* the robot's last dispatch (cooldown), 0 = none */
    int64_t day_count; /* its dispatches this UTC day (daily cap) */
};
/*
 * Reads the registry's robot:{id} record and the counters of the refusing
 * rules in one round trip: 0 (found or not, see v->found) or -EIO.
 */
int policy_robot(struct redis *r, const char *robot_id, struct robot_view *v);
/*
 * The same, pipelined after first (NULL = none): its reply goes to *first_rep
 * (yours to free; NULL when Redis did not answer).
 */
int policy_robot_with(struct redis *r, const char *robot_id, struct robot_view *v,
                      const struct redis_cmd *first, struct redisReply **first_rep);
/*
 * Checks the rules that refuse (robot policy, abort switch, busy, cooldown,
 * daily cap) on what policy_robot read. 0 allowed, else 1 with *rule and
 * detail filled.
 */
int policy_check(struct reboot *rb, const struct command *c, const struct robot_view *v,
                 const char **rule, char *detail, size_t ndetail);
/* Start of the robot's next maintenance window at or after now_ms (now_ms when inside one). */
int policy_next_window(const char *cron, int64_t duration_s, int64_t now_ms, int64_t *start_ms);
bool policy_cron_valid(const char *cron);
/* Queued ids admitted now that slots are free (up to room); returns how many, or -EIO. */
int policy_release(struct reboot *rb, struct redis *r, char ids[][CMD_ID_MAX + 1], int room);
/* Gives a slot back (a queued command that could not be dispatched). */
void policy_slot_free(struct redis *r, const char *id);
/* Records a dispatched reboot's outcome for the abort switch; true when it tripped now. */
bool policy_record_outcome(struct reboot *rb, struct redis *r, const char *id, bool ok);
/* The daily cap's counter key reboot:day:{robot}:{yyyymmdd} (UTC) for now_ms. */
void policy_day_key(char *out, size_t n, const char *robot_id, int64_t now_ms);
/* Counts a dispatch for cooldown and the daily cap. */
void policy_count_dispatch(struct redis *r, const char *robot_id, int64_t now_ms);
/* The abort switch: paused or not; state JSON for the API (you delete it). */
cJSON *policy_automation_json(struct redis *r, int *err);
int policy_automation_resume(struct redis *r, const char *actor);
int64_t policy_queue_depth(struct redis *r);
/* Queue room check for the API's fleet_cap refusal: true when the queue is full. */
bool policy_queue_full(struct reboot *rb, struct redis *r);

/* ---- dispatch.c ---- */
struct dispatcher *dispatcher_new(struct reboot *rb, char *errbuf, size_t errsize);
/* Queues a dispatch of c to the vendor source (never blocks: fleet slots bound the queue). */
void dispatcher_submit(struct dispatcher *d, const struct command *c, const char *source);
void dispatcher_reconfigure(struct dispatcher *d, const struct cfg *cfg);
void dispatcher_stop(struct dispatcher *d);
void dispatcher_free(struct dispatcher *d);

/* ---- outbox.c ---- */
/* Starts the relay of reboot:outbox (libcommon outbox.h: outbox_kick, outbox_stop, outbox_free). */
struct outbox *reboot_outbox_new(struct reboot *rb, char *errbuf, size_t errsize);

/* ---- lanes.c ---- */
struct lanes *lanes_new(struct reboot *rb, char *errbuf, size_t errsize);
bool lanes_ready(void *ud);
void lanes_stop(struct lanes *l);
void lanes_free(struct lanes *l);

/* ---- leader.c ---- */
struct leader *leader_new(struct reboot *rb, char *errbuf, size_t errsize);
bool leader_is_holder(struct leader *l);
void leader_stop(struct leader *l);
void leader_free(struct leader *l);

#endif
