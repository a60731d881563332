/*
 * The simulated fleet: N robots whose heartbeats, status changes, faults and
 * reboots are timers in one min-heap (so 100k robots cost a heap operation per
 * event, not a scan), scripted scenarios fired by elapsed time, and the
 * reboot-command state machine with the Idempotency-Key table. Events are
 * serialised here and handed to deliver.c once per tick, outside the lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "crypto.h"
#include "log.h"
#include "sim.h"
#include "timeutil.h"
#include "xalloc.h"

#define IDEM_BUCKETS   65536
#define LIST_CAP       1000 /* robots listed by name in /sim/stats */
#define SILENT_FOREVER INT64_MAX

const char *const sim_type_names[SIM_NTYPES] = {"robot.heartbeat", "robot.status",
                                                "robot.fault",     "robot.booted",
                                                "command.ack",     "command.result"};

enum timer_kind { T_HEARTBEAT, T_REBOOT_DONE, T_FAULT };
enum robot_status { ST_ONLINE, ST_WORKING, ST_CHARGING };
static const char *const status_names[] = {"online", "working", "charging"};

struct timer {
    int64_t due; /* ms since start */
    uint32_t robot;
    uint8_t kind;
};

struct robot {
    int64_t silent_until; /* ms since start; 0 = talking */
    char *command_id;     /* the reboot in progress, or NULL */
    uint32_t hb_seq;
    uint16_t cmds_soft, cmds_hard;
    uint8_t status;
};

struct idem {
    char *key;
    uint8_t digest[32];
    char *command_id;
    struct idem *next;
};

struct sim {
    struct sim_options o;
    struct sim_stats st;
    struct deliver *deliver;
    pthread_mutex_t mu;
    int64_t start_mono;
    struct robot *robots;
    struct timer *heap;
    size_t nheap, capheap;
    struct idem **idem;
    /* events waiting for the next tick */
    char **pend;
    uint8_t *pend_types;
    size_t npend, cappend;
    struct sim_misbehave mis;
};

/* ---- random numbers: xorshift64* per thread, seeded from the OS ---- */
static _Thread_local uint64_t rng_state;

double sim_rand(void)
{
    if (rng_state == 0) {
        while (rng_state == 0)
            crypto_random_bytes(&rng_state, sizeof(rng_state));
    }
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

int sim_type_index(const char *name)
{
    for (int i = 0; i < SIM_NTYPES; i++)
        if (strcmp(sim_type_names[i], name) == 0)
            return i;
    return -1;
}

/* ---- the timer heap ---- */
static void heap_push(struct sim *s, int64_t due, uint32_t robot, uint8_t kind)
{
    if (s->nheap == s->capheap) {
        s->capheap = s->capheap ? s->capheap * 2 : 1024;
        s->heap = xrealloc(s->heap, s->capheap * sizeof(*s->heap));
    }
    size_t i = s->nheap++;
    struct timer t = {.due = due, .robot = robot, .kind = kind};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (s->heap[parent].due <= due)
            break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = t;
}

static struct timer heap_pop(struct sim *s)
{
    struct timer top = s->heap[0];
    struct timer last = s->heap[--s->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap)
            break;
        if (c + 1 < s->nheap && s->heap[c + 1].due < s->heap[c].due)
            c++;
        if (last.due <= s->heap[c].due)
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->nheap > 0)
        s->heap[i] = last;
    return top;
}

/* ---- events ---- */
static void robot_id(const struct sim *s, uint32_t idx, char *out, size_t size)
{
    snprintf(out, size, "%s%05" PRIu32, s->o.id_prefix, idx + 1);
}

/* Queues one event; data_json is the text of the data object. Called with mu held. */
static void emit(struct sim *s, uint32_t idx, enum sim_type type, const char *data_json)
{
    char id[CRYPTO_UUID_LEN], rid[96], ts[TIME_RFC3339_LEN];
    crypto_uuid_v7(id);
    robot_id(s, idx, rid, sizeof(rid));
    time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
    struct buf b;
    buf_init(&b, 4096);
    buf_appendf(&b, "{\"id\":\"evt_%s\",\"type\":\"%s\",\"robot_id\":\"", id, sim_type_names[type]);
    buf_append_json_str(&b, rid);
    buf_appendf(&b, "\",\"occurred_at\":\"%s\",\"data\":%s}", ts, data_json);
    if (s->npend == s->cappend) {
        s->cappend = s->cappend ? s->cappend * 2 : 256;
        s->pend = xrealloc(s->pend, s->cappend * sizeof(*s->pend));
        s->pend_types = xrealloc(s->pend_types, s->cappend);
    }
    s->pend[s->npend] = buf_detach(&b, NULL);
    s->pend_types[s->npend++] = (uint8_t)type;
    atomic_fetch_add_explicit(&s->st.events[type], 1, memory_order_relaxed);
}

static void emit_command(struct sim *s, uint32_t idx, enum sim_type type, const char *command_id,
                         const char *status, const char *message)
{
    struct buf b;
    buf_init(&b, 1024);
    buf_append_str(&b, "{\"command_id\":\"");
    buf_append_json_str(&b, command_id);
    buf_append_str(&b, "\"");
    if (status)
        buf_appendf(&b, ",\"status\":\"%s\"", status);
    if (message) {
        buf_append_str(&b, ",\"message\":\"");
        buf_append_json_str(&b, message);
        buf_append_str(&b, "\"");
    }
    buf_append_str(&b, "}");
    emit(s, idx, type, b.data);
    buf_release(&b);
}

static int64_t jittered(const struct sim *s)
{
    return (int64_t)(s->o.heartbeat_ms * (0.8 + 0.4 * sim_rand())) + 1;
}

static void on_heartbeat(struct sim *s, uint32_t idx, int64_t now)
{
    struct robot *r = &s->robots[idx];
    heap_push(s, now + jittered(s), idx, T_HEARTBEAT);
    if (r->command_id || (r->silent_until && r->silent_until > now))
        return;
    r->silent_until = 0;
    char data[96];
    snprintf(data, sizeof(data), "{\"seq\":%" PRIu32 ",\"battery\":%.2f}", ++r->hb_seq,
             0.2 + 0.8 * sim_rand());
    emit(s, idx, EV_HEARTBEAT, data);
    if (sim_rand() < s->o.status_prob) {
        r->status = (uint8_t)((r->status + 1 + (sim_rand() < 0.5)) % 3);
        snprintf(data, sizeof(data), "{\"status\":\"%s\"}", status_names[r->status]);
        emit(s, idx, EV_STATUS, data);
    }
    if (sim_rand() < s->o.fault_prob) {
        snprintf(data, sizeof(data), "{\"code\":\"E%02d\",\"severity\":\"error\"}",
                 (int)(sim_rand() * 90) + 10);
        emit(s, idx, EV_FAULT, data);
    }
}

static void on_fault(struct sim *s, uint32_t idx, int64_t now)
{
    const struct robot *r = &s->robots[idx];
    if (r->command_id || (r->silent_until && r->silent_until > now))
        return;
    emit(s, idx, EV_FAULT, "{\"code\":\"E99\",\"severity\":\"error\",\"storm\":true}");
}

static void on_reboot_done(struct sim *s, uint32_t idx)
{
    struct robot *r = &s->robots[idx];
    if (!r->command_id)
        return;
    char rid[96];
    robot_id(s, idx, rid, sizeof(rid));
    bool ok = sim_rand() >= s->o.reboot_fail_prob;
    if (!s->o.early_ack)
        emit_command(s, idx, EV_ACK, r->command_id, NULL, NULL);
    if (ok)
        emit_command(s, idx, EV_BOOTED, r->command_id, NULL, NULL);
    emit_command(s, idx, EV_RESULT, r->command_id, ok ? "succeeded" : "failed",
                 ok ? "robot rebooted" : "simulated reboot failure");
    atomic_fetch_add_explicit(ok ? &s->st.reboots_succeeded : &s->st.reboots_failed, 1,
                              memory_order_relaxed);
    struct log_field f[] = {{"robot.id", rid}, {"command.id", r->command_id}};
    log_fields(LOG_LEVEL_INFO, f, 2, "reboot finished, result %s sent",
               ok ? "succeeded" : "failed");
    free(r->command_id);
    r->command_id = NULL;
    r->silent_until = ok ? 0 : r->silent_until;
    r->status = ST_ONLINE;
}

static void fire_scenarios(struct sim *s, int64_t now)
{
    for (size_t i = 0; i < s->o.nscen; i++) {
        struct sim_scenario *sc = &s->o.scen[i];
        if (sc->fired || sc->at_ms > now)
            continue;
        sc->fired = true;
        if (sc->kind == SCEN_SILENT) {
            char rid[96];
            robot_id(s, sc->robot - 1, rid, sizeof(rid));
            s->robots[sc->robot - 1].silent_until =
                sc->for_ms < 0 ? SILENT_FOREVER : now + sc->for_ms;
            struct log_field f[] = {{"robot.id", rid}};
            log_fields(LOG_LEVEL_INFO, f, 1, "scenario: robot goes silent for %" PRId64 " ms",
                       sc->for_ms);
            continue;
        }
        uint32_t in_fleet = (s->o.robots - (uint32_t)sc->fleet + s->o.fleets - 1) / s->o.fleets;
        for (unsigned k = 0; k < sc->faults && in_fleet > 0; k++) {
            uint32_t idx = (uint32_t)sc->fleet + s->o.fleets * (uint32_t)(sim_rand() * in_fleet);
            heap_push(s, now + (int64_t)(sim_rand() * (double)sc->window_ms), idx, T_FAULT);
        }
        LOG_INFO("scenario: fault storm on fleet-%c, %u faults within %" PRId64 " ms",
                 'a' + sc->fleet, sc->faults, sc->window_ms);
    }
}

void sim_tick(struct sim *s)
{
    pthread_mutex_lock(&s->mu);
    int64_t now = time_mono_ms() - s->start_mono;
    fire_scenarios(s, now);
    while (s->nheap > 0 && s->heap[0].due <= now) {
        struct timer t = heap_pop(s);
        if (t.kind == T_HEARTBEAT)
            on_heartbeat(s, t.robot, now);
        else if (t.kind == T_REBOOT_DONE)
            on_reboot_done(s, t.robot);
        else
            on_fault(s, t.robot, now);
    }
    char **ev = s->pend;
    uint8_t *ty = s->pend_types;
    size_t n = s->npend;
    s->pend = NULL;
    s->pend_types = NULL;
    s->npend = s->cappend = 0;
    struct sim_misbehave m = s->mis;
    pthread_mutex_unlock(&s->mu);
    if (n > 0)
        deliver_events(s->deliver, ev, ty, n, &m);
    free(ev);
    free(ty);
}

/* ---- commands ---- */
static uint32_t hash_str(const char *k)
{
    uint32_t h = 2166136261u;
    for (; *k; k++)
        h = (h ^ (uint8_t)*k) * 16777619u;
    return h;
}

enum sim_cmd_result sim_command(struct sim *s, long idx, const char *key, const uint8_t digest[32],
                                const char *command_id, bool hard, char **out_command_id)
{
    *out_command_id = NULL;
    if (idx < 0) {
        atomic_fetch_add_explicit(&s->st.commands_unknown_robot, 1, memory_order_relaxed);
        return CMD_UNKNOWN_ROBOT;
    }
    atomic_fetch_add_explicit(&s->st.commands_received, 1, memory_order_relaxed);
    pthread_mutex_lock(&s->mu);
    struct idem **slot = &s->idem[hash_str(key) % IDEM_BUCKETS];
    for (struct idem *e = *slot; e; e = e->next) {
        if (strcmp(e->key, key) != 0)
            continue;
        enum sim_cmd_result res = CMD_CONFLICT;
        if (crypto_equal(e->digest, digest, 32)) {
            *out_command_id = xstrdup(e->command_id);
            res = CMD_REPLAYED;
        }
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add_explicit(res == CMD_REPLAYED ? &s->st.duplicates_suppressed
                                                      : &s->st.idempotency_conflicts,
                                  1, memory_order_relaxed);
        return res;
    }
    struct idem *e = xcalloc(1, sizeof(*e));
    e->key = xstrdup(key);
    memcpy(e->digest, digest, 32);
    e->command_id = xstrdup(command_id);
    e->next = *slot;
    *slot = e;

    struct robot *r = &s->robots[idx];
    char rid[96];
    robot_id(s, (uint32_t)idx, rid, sizeof(rid));
    struct log_field f[] = {{"robot.id", rid}, {"command.id", command_id}};
    if (hard)
        r->cmds_hard++;
    else
        r->cmds_soft++;
    atomic_fetch_add_explicit(&s->st.commands_accepted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(hard ? &s->st.commands_hard : &s->st.commands_soft, 1,
                              memory_order_relaxed);
    if (r->command_id) {
        /* one reboot at a time: a second command is acknowledged and fails at once */
        emit_command(s, (uint32_t)idx, EV_ACK, command_id, NULL, NULL);
        emit_command(s, (uint32_t)idx, EV_RESULT, command_id, "failed",
                     "robot is already rebooting");
        atomic_fetch_add_explicit(&s->st.reboots_refused, 1, memory_order_relaxed);
        log_fields(LOG_LEVEL_WARN, f, 2, "reboot refused: robot is already rebooting");
    } else {
        int64_t now = time_mono_ms() - s->start_mono;
        r->command_id = xstrdup(command_id);
        heap_push(s, now + s->o.reboot_ms, (uint32_t)idx, T_REBOOT_DONE);
        if (s->o.early_ack)
            emit_command(s, (uint32_t)idx, EV_ACK, command_id, NULL, NULL);
        log_fields(LOG_LEVEL_INFO, f, 2, "reboot command received (%s), silent for %d ms",
                   hard ? "hard" : "soft", s->o.reboot_ms);
    }
    pthread_mutex_unlock(&s->mu);
    *out_command_id = xstrdup(command_id);
    return CMD_ACCEPTED;
}

/* ---- robots ---- */
uint32_t sim_robot_count(const struct sim *s)
{
    return s->o.robots;
}

long sim_robot_find(const struct sim *s, const char *id)
{
    size_t plen = strlen(s->o.id_prefix);
    if (strncmp(id, s->o.id_prefix, plen) != 0)
        return -1;
    const char *num = id + plen;
    size_t n = strlen(num);
    if (n < 5 || n > 7)
        return -1;
    uint32_t v = 0;
    for (const char *p = num; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint32_t)(*p - '0');
    }
    char canon[96];
    robot_id(s, v - 1, canon, sizeof(canon));
    if (v == 0 || v > s->o.robots || strcmp(canon, id) != 0)
        return -1;
    return (long)v - 1;
}

void sim_robots_describe(struct sim *s, uint32_t from, uint32_t n, cJSON *arr)
{
    pthread_mutex_lock(&s->mu);
    int64_t now = time_mono_ms() - s->start_mono;
    for (uint32_t i = from; i < from + n && i < s->o.robots; i++) {
        const struct robot *r = &s->robots[i];
        char rid[96], name[64], fleet[16];
        robot_id(s, i, rid, sizeof(rid));
        snprintf(name, sizeof(name), "sim-robot-%" PRIu32, i + 1);
        snprintf(fleet, sizeof(fleet), "fleet-%c", 'a' + (int)(i % s->o.fleets));
        const char *status = r->command_id                                ? "rebooting"
                             : (r->silent_until && r->silent_until > now) ? "offline"
                                                                          : status_names[r->status];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", rid);
        cJSON_AddStringToObject(o, "name", name);
        cJSON_AddStringToObject(o, "model", "SIM-1");
        cJSON_AddStringToObject(o, "fleet", fleet);
        cJSON_AddStringToObject(o, "status", status);
        cJSON_AddBoolToObject(o, "busy", false);
        cJSON *labels = cJSON_AddObjectToObject(o, "labels");
        cJSON_AddStringToObject(labels, "simulated", "true");
        cJSON_AddItemToArray(arr, o);
    }
    pthread_mutex_unlock(&s->mu);
}

/* ---- misbehaviour, stats ---- */
struct sim_misbehave sim_misbehave_get(struct sim *s)
{
    pthread_mutex_lock(&s->mu);
    struct sim_misbehave m = s->mis;
    pthread_mutex_unlock(&s->mu);
    return m;
}

void sim_misbehave_set(struct sim *s, const struct sim_misbehave *m)
{
    pthread_mutex_lock(&s->mu);
    s->mis = *m;
    pthread_mutex_unlock(&s->mu);
}

struct sim_stats *sim_stats(struct sim *s)
{
    return &s->st;
}

struct deliver *sim_deliver(struct sim *s)
{
    return s->deliver;
}

const struct sim_options *sim_options(const struct sim *s)
{
    return &s->o;
}

void sim_stats_fleet(struct sim *s, cJSON *out)
{
    cJSON *silent = cJSON_CreateArray(), *rebooting = cJSON_CreateArray();
    cJSON *by_robot = cJSON_CreateObject();
    size_t nsilent = 0, nrebooting = 0, nby = 0;
    pthread_mutex_lock(&s->mu);
    int64_t now = time_mono_ms() - s->start_mono;
    for (uint32_t i = 0; i < s->o.robots; i++) {
        const struct robot *r = &s->robots[i];
        char rid[96];
        robot_id(s, i, rid, sizeof(rid));
        if (r->command_id && nrebooting++ < LIST_CAP)
            cJSON_AddItemToArray(rebooting, cJSON_CreateString(rid));
        if ((r->command_id || (r->silent_until && r->silent_until > now)) && nsilent++ < LIST_CAP)
            cJSON_AddItemToArray(silent, cJSON_CreateString(rid));
        if ((r->cmds_soft || r->cmds_hard) && nby++ < LIST_CAP) {
            cJSON *c = cJSON_AddObjectToObject(by_robot, rid);
            cJSON_AddNumberToObject(c, "soft", r->cmds_soft);
            cJSON_AddNumberToObject(c, "hard", r->cmds_hard);
        }
    }
    int64_t elapsed = now;
    size_t scheduled = s->nheap;
    pthread_mutex_unlock(&s->mu);
    cJSON_AddNumberToObject(out, "elapsed_ms", (double)elapsed);
    cJSON_AddNumberToObject(out, "robots", s->o.robots);
    cJSON_AddNumberToObject(out, "fleets", s->o.fleets);
    cJSON_AddNumberToObject(out, "timers", (double)scheduled);
    cJSON_AddNumberToObject(out, "silent_count", (double)nsilent);
    cJSON_AddItemToObject(out, "silent_robots", silent);
    cJSON_AddNumberToObject(out, "rebooting_count", (double)nrebooting);
    cJSON_AddItemToObject(out, "rebooting_robots", rebooting);
    cJSON *cmd = cJSON_AddObjectToObject(out, "commands");
#define N(field) (double)atomic_load_explicit(&s->st.field, memory_order_relaxed)
    cJSON_AddNumberToObject(cmd, "received", N(commands_received));
    cJSON_AddNumberToObject(cmd, "accepted", N(commands_accepted));
    cJSON_AddNumberToObject(cmd, "duplicates_suppressed", N(duplicates_suppressed));
    cJSON_AddNumberToObject(cmd, "idempotency_conflicts", N(idempotency_conflicts));
    cJSON_AddNumberToObject(cmd, "unknown_robot", N(commands_unknown_robot));
    cJSON *mode = cJSON_AddObjectToObject(cmd, "by_mode");
    cJSON_AddNumberToObject(mode, "soft", N(commands_soft));
    cJSON_AddNumberToObject(mode, "hard", N(commands_hard));
    cJSON_AddItemToObject(cmd, "by_robot", by_robot);
    cJSON *rb = cJSON_AddObjectToObject(out, "reboots");
    cJSON_AddNumberToObject(rb, "succeeded", N(reboots_succeeded));
    cJSON_AddNumberToObject(rb, "failed", N(reboots_failed));
    cJSON_AddNumberToObject(rb, "refused", N(reboots_refused));
    cJSON_AddNumberToObject(rb, "in_progress", (double)nrebooting);
#undef N
}

void sim_log_summary(struct sim *s)
{
    const struct sim_stats *st = &s->st;
    uint64_t ev = 0;
    for (int i = 0; i < SIM_NTYPES; i++)
        ev += atomic_load(&st->events[i]);
    LOG_INFO("summary: robots %" PRIu32 ", events %" PRIu64 " (heartbeats %" PRIu64
             ", faults %" PRIu64 "), deliveries %" PRIu64 " (accepted %" PRIu64
             ", rejected %" PRIu64 ", failed %" PRIu64 ", dropped %" PRIu64 "), commands %" PRIu64
             " (accepted %" PRIu64 ", duplicates suppressed %" PRIu64 ", conflicts %" PRIu64
             "), reboots succeeded %" PRIu64 ", failed %" PRIu64,
             s->o.robots, ev, (uint64_t)atomic_load(&st->events[EV_HEARTBEAT]),
             (uint64_t)atomic_load(&st->events[EV_FAULT]), (uint64_t)atomic_load(&st->deliveries),
             (uint64_t)atomic_load(&st->accepted), (uint64_t)atomic_load(&st->rejected),
             (uint64_t)atomic_load(&st->failed), (uint64_t)atomic_load(&st->dropped),
             (uint64_t)atomic_load(&st->commands_received),
             (uint64_t)atomic_load(&st->commands_accepted),
             (uint64_t)atomic_load(&st->duplicates_suppressed),
             (uint64_t)atomic_load(&st->idempotency_conflicts),
             (uint64_t)atomic_load(&st->reboots_succeeded),
             (uint64_t)atomic_load(&st->reboots_failed));
}

/* ---- lifecycle ---- */
struct sim *sim_new(const struct sim_options *opt, char *errbuf, size_t errsize)
{
    if (opt->robots < 1 || opt->robots > SIM_MAX_ROBOTS) {
        snprintf(errbuf, errsize, "--robots must be 1..%d", SIM_MAX_ROBOTS);
        return NULL;
    }
    if (opt->fleets < 1 || opt->fleets > SIM_MAX_FLEETS || opt->fleets > opt->robots) {
        snprintf(errbuf, errsize, "--fleets must be 1..%d and at most --robots", SIM_MAX_FLEETS);
        return NULL;
    }
    for (size_t i = 0; i < opt->nscen; i++) {
        const struct sim_scenario *sc = &opt->scen[i];
        if (sc->kind == SCEN_SILENT && (sc->robot < 1 || sc->robot > opt->robots)) {
            snprintf(errbuf, errsize, "scenario %zu: robot %" PRIu32 " is not in 1..%" PRIu32,
                     i + 1, sc->robot, opt->robots);
            return NULL;
        }
        if (sc->kind == SCEN_STORM && (unsigned)sc->fleet >= opt->fleets) {
            snprintf(errbuf, errsize, "scenario %zu: fleet-%c does not exist (--fleets %u)", i + 1,
                     'a' + sc->fleet, opt->fleets);
            return NULL;
        }
    }
    struct sim *s = xcalloc(1, sizeof(*s));
    s->o = *opt;
    pthread_mutex_init(&s->mu, NULL);
    s->start_mono = time_mono_ms();
    s->robots = xcalloc(opt->robots, sizeof(*s->robots));
    s->idem = xcalloc(IDEM_BUCKETS, sizeof(*s->idem));
    for (uint32_t i = 0; i < opt->robots; i++)
        heap_push(s, (int64_t)(sim_rand() * opt->heartbeat_ms), i, T_HEARTBEAT);
    s->deliver = deliver_new(&s->o, &s->st);
    return s;
}

void sim_free(struct sim *s)
{
    if (!s)
        return;
    deliver_free(s->deliver);
    sim_log_summary(s);
    for (uint32_t i = 0; i < s->o.robots; i++)
        free(s->robots[i].command_id);
    for (size_t b = 0; b < IDEM_BUCKETS; b++) {
        for (struct idem *e = s->idem[b], *next; e; e = next) {
            next = e->next;
            free(e->key);
            free(e->command_id);
            free(e);
        }
    }
    for (size_t i = 0; i < s->npend; i++)
        free(s->pend[i]);
    free(s->pend);
    free(s->pend_types);
    free(s->idem);
    free(s->heap);
    free(s->robots);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
