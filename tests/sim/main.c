/*
 * robot-sim: the robot vendor platform, simulated, for integration tests and
 * `make run`. Serves the vendor API of proto/openapi/vendor-platform.yaml,
 * simulates N robots that send signed webhooks to every registered endpoint,
 * reboots robots on command, plays scripted scenarios and misbehaves on
 * request. README.md ("Robot simulator") documents every flag and route.
 *
 *   robot-sim --token T [--port 8090] [--robots 10] [--fleets 2] [--silent 17@30+60]
 *             [--storm a@60:10/5] [--scenario FILE] ...   (robot-sim --help)
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_server.h"
#include "log.h"
#include "sim.h"
#include "str.h"
#include "timeutil.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static const char usage[] =
    "usage: robot-sim --token TOKEN [options]\n"
    "  --bind ADDR            listen address (127.0.0.1)\n"
    "  --port N               vendor API + admin port, 0 = any (8090)\n"
    "  --token T              bearer token of the vendor API (or SIM_API_TOKEN)\n"
    "  --robots N             robots, 1..1000000 (10)\n"
    "  --fleets K             fleets fleet-a.., robot i is in fleet (i-1) %% K (2)\n"
    "  --id-prefix P          robot ids P00001.. (robot-)\n"
    "  --heartbeat-ms MS      mean heartbeat interval, jittered +-20%% (5000)\n"
    "  --status-prob P        robot.status change per heartbeat (0.01)\n"
    "  --fault-prob P         robot.fault per heartbeat (0.001)\n"
    "  --reboot-ms MS         silence after a reboot command (10000)\n"
    "  --reboot-fail-prob P   command.result failed (0)\n"
    "  --early-ack            command.ack at once, not after the silence\n"
    "  --max-batch N          events per webhook delivery (100)\n"
    "  --senders N            sender threads (4)\n"
    "  --tick-ms MS           timer resolution and batching period (100)\n"
    "  --retries N            delivery retries on 5xx/429/409/network errors (5)\n"
    "  --timeout-ms MS        one delivery attempt (5000)\n"
    "  --queue-max N          deliveries queued before dropping (10000)\n"
    "  --silent R@T[+D]       robot number R goes silent at T s (for D s; else for ever)\n"
    "  --storm F@T:K/W        fleet F (a, b, ..) gets K faults spread over W s from T s\n"
    "  --scenario FILE        lines 'silent R@T[+D]' / 'storm F@T:K/W'; '#' comments\n"
    "  --webhook-url URL      register this endpoint at start (all event types)\n"
    "  --webhook-secret S     its whsec_ secret (required with --webhook-url)\n"
    "  --log-level L          debug|info|warn|error (info)\n";

static int parse_seconds(const char *s, size_t n, int64_t *ms)
{
    char tmp[32];
    double v;
    if (n == 0 || n >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (str_to_double(tmp, &v) != 0 || v < 0 || v > 1e7)
        return -EINVAL;
    *ms = (int64_t)(v * 1000);
    return 0;
}

static int parse_uint(const char *s, size_t n, int64_t max, int64_t *out)
{
    char tmp[32];
    if (n == 0 || n >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (str_to_int64(tmp, out) != 0 || *out < 0 || *out > max)
        return -EINVAL;
    return 0;
}

/* "17@30+60" or "17@30" */
static int parse_silent(const char *spec, struct sim_scenario *sc)
{
    const char *at = strchr(spec, '@');
    int64_t robot;
    if (!at || parse_uint(spec, (size_t)(at - spec), SIM_MAX_ROBOTS, &robot) != 0 || robot < 1)
        return -EINVAL;
    const char *plus = strchr(at, '+');
    size_t tlen = plus ? (size_t)(plus - at - 1) : strlen(at + 1);
    *sc = (struct sim_scenario){.kind = SCEN_SILENT, .robot = (uint32_t)robot, .for_ms = -1};
    if (parse_seconds(at + 1, tlen, &sc->at_ms) != 0)
        return -EINVAL;
    if (plus && parse_seconds(plus + 1, strlen(plus + 1), &sc->for_ms) != 0)
        return -EINVAL;
    return 0;
}

/* "a@60:10/5" or "fleet-a@60:10/5" */
static int parse_storm(const char *spec, struct sim_scenario *sc)
{
    if (str_has_prefix(spec, "fleet-"))
        spec += 6;
    const char *at = strchr(spec, '@'), *colon = strchr(spec, ':'), *slash = strchr(spec, '/');
    int64_t k;
    if (!at || at != spec + 1 || spec[0] < 'a' || spec[0] > 'z' || !colon || !slash || colon < at ||
        slash < colon)
        return -EINVAL;
    *sc = (struct sim_scenario){.kind = SCEN_STORM, .fleet = spec[0] - 'a'};
    if (parse_seconds(at + 1, (size_t)(colon - at - 1), &sc->at_ms) != 0 ||
        parse_uint(colon + 1, (size_t)(slash - colon - 1), 1000000, &k) != 0 ||
        parse_seconds(slash + 1, strlen(slash + 1), &sc->window_ms) != 0)
        return -EINVAL;
    sc->faults = (unsigned)k;
    return 0;
}

static int add_scenario(struct sim_options *o, const char *kind, const char *spec)
{
    if (o->nscen == SIM_MAX_SCENARIO)
        return -ENOSPC;
    struct sim_scenario *sc = &o->scen[o->nscen];
    int rc = strcmp(kind, "silent") == 0  ? parse_silent(spec, sc)
             : strcmp(kind, "storm") == 0 ? parse_storm(spec, sc)
                                          : -EINVAL;
    if (rc == 0)
        o->nscen++;
    return rc;
}

static int load_scenario_file(struct sim_options *o, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -errno;
    }
    char line[256];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        char kind[16], spec[128];
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        int n = sscanf(line, "%15s %127s", kind, spec);
        if (n <= 0)
            continue;
        if (n != 2 || add_scenario(o, kind, spec) != 0) {
            fprintf(stderr, "%s:%d: expected 'silent R@T[+D]' or 'storm F@T:K/W'\n", path, lineno);
            rc = -EINVAL;
        }
    }
    fclose(f);
    return rc;
}

static int num_opt(const char *name, const char *v, int64_t min, int64_t max, int64_t *out)
{
    if (str_to_int64(v, out) != 0 || *out < min || *out > max) {
        fprintf(stderr, "--%s must be an integer %lld..%lld\n", name, (long long)min,
                (long long)max);
        return -EINVAL;
    }
    return 0;
}

static int prob_opt(const char *name, const char *v, double *out)
{
    if (str_to_double(v, out) != 0 || *out < 0 || *out > 1) {
        fprintf(stderr, "--%s must be a probability 0..1\n", name);
        return -EINVAL;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct sim_options *o, const char **bind,
                      int64_t *port, const char **token, enum log_level *level)
{
    static const struct option longopts[] = {{"bind", 1, 0, 'b'},
                                             {"port", 1, 0, 'p'},
                                             {"token", 1, 0, 't'},
                                             {"robots", 1, 0, 'n'},
                                             {"fleets", 1, 0, 'f'},
                                             {"id-prefix", 1, 0, 'i'},
                                             {"heartbeat-ms", 1, 0, 'H'},
                                             {"status-prob", 1, 0, 'S'},
                                             {"fault-prob", 1, 0, 'F'},
                                             {"reboot-ms", 1, 0, 'R'},
                                             {"reboot-fail-prob", 1, 0, 'X'},
                                             {"early-ack", 0, 0, 'E'},
                                             {"max-batch", 1, 0, 'B'},
                                             {"senders", 1, 0, 'N'},
                                             {"tick-ms", 1, 0, 'T'},
                                             {"retries", 1, 0, 'r'},
                                             {"timeout-ms", 1, 0, 'o'},
                                             {"queue-max", 1, 0, 'Q'},
                                             {"silent", 1, 0, 's'},
                                             {"storm", 1, 0, 'm'},
                                             {"scenario", 1, 0, 'c'},
                                             {"webhook-url", 1, 0, 'u'},
                                             {"webhook-secret", 1, 0, 'w'},
                                             {"log-level", 1, 0, 'l'},
                                             {"help", 0, 0, 'h'},
                                             {0, 0, 0, 0}};
    int c, rc = 0;
    int64_t v;
    while (rc == 0 && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        const char *name = "";
        for (const struct option *lo = longopts; lo->name; lo++)
            if (lo->val == c)
                name = lo->name;
        switch (c) {
        case 'b':
            *bind = optarg;
            break;
        case 'p':
            rc = num_opt(name, optarg, 0, 65535, port);
            break;
        case 't':
            *token = optarg;
            break;
        case 'n':
            rc = num_opt(name, optarg, 1, SIM_MAX_ROBOTS, &v), o->robots = (uint32_t)v;
            break;
        case 'f':
            rc = num_opt(name, optarg, 1, SIM_MAX_FLEETS, &v), o->fleets = (unsigned)v;
            break;
        case 'i':
            o->id_prefix = optarg;
            break;
        case 'H':
            rc = num_opt(name, optarg, 10, 3600000, &v), o->heartbeat_ms = (int)v;
            break;
        case 'S':
            rc = prob_opt(name, optarg, &o->status_prob);
            break;
        case 'F':
            rc = prob_opt(name, optarg, &o->fault_prob);
            break;
        case 'R':
            rc = num_opt(name, optarg, 0, 3600000, &v), o->reboot_ms = (int)v;
            break;
        case 'X':
            rc = prob_opt(name, optarg, &o->reboot_fail_prob);
            break;
        case 'E':
            o->early_ack = true;
            break;
        case 'B':
            rc = num_opt(name, optarg, 1, 10000, &v), o->max_batch = (unsigned)v;
            break;
        case 'N':
            rc = num_opt(name, optarg, 1, 64, &v), o->senders = (unsigned)v;
            break;
        case 'T':
            rc = num_opt(name, optarg, 1, 10000, &v), o->tick_ms = (int)v;
            break;
        case 'r':
            rc = num_opt(name, optarg, 0, 100, &v), o->max_retries = (int)v;
            break;
        case 'o':
            rc = num_opt(name, optarg, 10, 600000, &v), o->timeout_ms = (int)v;
            break;
        case 'Q':
            rc = num_opt(name, optarg, 1, 10000000, &v), o->queue_max = (size_t)v;
            break;
        case 's':
        case 'm':
            rc = add_scenario(o, c == 's' ? "silent" : "storm", optarg);
            if (rc)
                fprintf(stderr, "--%s '%s': bad scenario (see --help)\n", name, optarg);
            break;
        case 'c':
            rc = load_scenario_file(o, optarg);
            break;
        case 'u':
            o->webhook_url = optarg;
            break;
        case 'w':
            o->webhook_secret = optarg;
            break;
        case 'l':
            rc = log_level_parse(optarg, level);
            if (rc)
                fprintf(stderr, "--log-level must be debug, info, warn or error\n");
            break;
        case 'h':
            fputs(usage, stdout);
            exit(0);
        default:
            rc = -EINVAL;
            break;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "unexpected argument '%s'\n", argv[optind]);
        rc = -EINVAL;
    }
    if (rc == 0 && (!*token || !**token)) {
        fprintf(stderr, "--token (or SIM_API_TOKEN) is required\n");
        rc = -EINVAL;
    }
    if (rc == 0 && o->webhook_url && !o->webhook_secret) {
        fprintf(stderr, "--webhook-url needs --webhook-secret\n");
        rc = -EINVAL;
    }
    return rc;
}

int main(int argc, char **argv)
{
    static struct sim_options o = {.robots = 10,
                                   .fleets = 2,
                                   .id_prefix = "robot-",
                                   .heartbeat_ms = 5000,
                                   .status_prob = 0.01,
                                   .fault_prob = 0.001,
                                   .reboot_ms = 10000,
                                   .max_batch = 100,
                                   .senders = 4,
                                   .tick_ms = 100,
                                   .max_retries = 5,
                                   .timeout_ms = 5000,
                                   .queue_max = 10000};
    const char *bind = "127.0.0.1", *token = getenv("SIM_API_TOKEN");
    int64_t port = 8090;
    enum log_level level = LOG_LEVEL_INFO;
    char err[256];
    if (parse_args(argc, argv, &o, &bind, &port, &token, &level) != 0) {
        fputs(usage, stderr);
        return 2;
    }
    log_init("robot-sim", level);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    struct api *api = NULL;
    struct sim *sim = sim_new(&o, err, sizeof(err));
    if (!sim) {
        fprintf(stderr, "robot-sim: %s\n", err);
        return 2;
    }
    struct http_server_options ho = {
        .bind = bind, .port = (uint16_t)port, .threads = 8, .max_body = 1024 * 1024};
    struct http_server *http = http_server_new(&ho, err, sizeof(err));
    if (!http || !(api = api_new(http, sim, token)) ||
        http_server_start(http, err, sizeof(err)) != 0) {
        LOG_ERROR("%s: cannot start the HTTP server", http ? err : "setup");
        goto out;
    }
    if (o.webhook_url) {
        char id[32], secret[96];
        if (deliver_add(sim_deliver(sim), o.webhook_url, (1u << SIM_NTYPES) - 1, o.webhook_secret,
                        id, sizeof(id), secret, sizeof(secret)) != 0) {
            LOG_ERROR("--webhook-secret must be whsec_<base64>");
            goto out;
        }
    }
    LOG_INFO("robot-sim listening on http://%s:%u with %u robots in %u fleets, %zu scenario steps",
             bind, http_server_port(http), o.robots, o.fleets, o.nscen);
    while (!g_stop) {
        int64_t next = time_mono_ms() + o.tick_ms;
        sim_tick(sim);
        int64_t left = next - time_mono_ms();
        if (left > 0)
            time_sleep_ms(left);
    }
    LOG_INFO("stopping");
    rc = 0;
out:
    http_server_free(http);
    api_free(api);
    sim_free(sim); /* drains the senders and logs the summary */
    return rc;
}
