/*
 * Unit tests for redis.c against real redis-server processes: the shared one
 * from scripts/redis-local.sh (REDIS_URL) and private ones this file starts and
 * kills to walk the auth, timeout and reconnect paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "redis.h"
#include "timeutil.h"

static const char *shared_url(void)
{
    const char *url = getenv("REDIS_URL");
    if (!url || !*url)
        fail_msg("REDIS_URL is not set: run 'RUN_DIR=/tmp/x scripts/redis-local.sh start' and "
                 "export the REDIS_URL it prints");
    return url;
}

static struct redis *connect_url(const char *url, int command_timeout_ms, int backoff_max_ms)
{
    char err[256] = "";
    struct redis_options opt = {.url = url,
                                .connect_timeout_ms = 500,
                                .command_timeout_ms = command_timeout_ms,
                                .backoff_max_ms = backoff_max_ms};
    struct redis *r = redis_new(&opt, err, sizeof(err));
    if (!r)
        fail_msg("redis_new(%s): %s", url, err);
    return r;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static bool port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* Starts a throw-away redis-server on 127.0.0.1:port; extra args end with NULL. */
static pid_t start_redis(int port, const char *extra1, const char *extra2)
{
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        execlp("redis-server", "redis-server", "--port", portstr, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", "/tmp", extra1, extra2, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && !port_accepts(port); i++)
        time_sleep_ms(50);
    if (!port_accepts(port))
        fail_msg("redis-server did not listen on port %d (is it installed? run make deps)", port);
    return pid;
}

static void stop_redis(pid_t pid)
{
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
}

static void test_set_get_binary(void **state)
{
    (void)state;
    struct redis *r = connect_url(shared_url(), 0, 0);
    char key[64], guard[64];
    snprintf(key, sizeof(key), "test_redis:%d:bin", (int)getpid());
    snprintf(guard, sizeof(guard), "test_redis:%d:guard", (int)getpid());

    redisReply *rep = redis_cmd(r, "SET", guard, "still here", (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);

    /* NUL, spaces and a would-be command injection are stored verbatim. */
    static const char value[] = "a\0b c\r\nFLUSHALL\r\n";
    const char *argv[] = {"SET", key, value};
    size_t argvlen[] = {3, strlen(key), sizeof(value) - 1};
    rep = redis_command(r, 3, argv, argvlen);
    assert_non_null(rep);
    assert_string_equal(rep->str, "OK");
    freeReplyObject(rep);

    rep = redis_cmd(r, "GET", key, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, sizeof(value) - 1);
    assert_memory_equal(rep->str, value, sizeof(value) - 1);
    freeReplyObject(rep);

    rep = redis_cmd(r, "SET", key, "x\r\nFLUSHALL", (char *)NULL);
    assert_non_null(rep);
    freeReplyObject(rep);
    rep = redis_cmd(r, "GET", key, (char *)NULL);
    assert_non_null(rep);
    assert_string_equal(rep->str, "x\r\nFLUSHALL");
    freeReplyObject(rep);

    rep = redis_cmd(r, "GET", guard, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "still here");
    freeReplyObject(rep);

    rep = redis_cmd(r, "DEL", key, guard, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->integer, 2);
    freeReplyObject(rep);
    assert_true(redis_ping(r));
    redis_free(r);
}

static void test_error_reply(void **state)
{
    (void)state;
    struct redis *r = connect_url(shared_url(), 0, 0);
    redisReply *rep = redis_cmd(r, "NOSUCHCOMMAND", "x", (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(rep->str, "unknown command"));
    freeReplyObject(rep);

    char key[64];
    snprintf(key, sizeof(key), "test_redis:%d:notint", (int)getpid());
    rep = redis_cmd(r, "SET", key, "abc", (char *)NULL);
    freeReplyObject(rep);
    rep = redis_cmd(r, "INCR", key, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    rep = redis_cmd(r, "DEL", key, (char *)NULL);
    freeReplyObject(rep);

    /* An error answer is not a connection failure. */
    assert_true(redis_ping(r));
    assert_null(redis_command(r, 0, NULL, NULL));
    assert_string_equal(redis_last_error(r), "redis command without arguments");
    redis_free(r);
}

static void test_too_many_varargs(void **state)
{
    (void)state;
    struct redis *r = connect_url(shared_url(), 0, 0);
    const char *a = "k";
    /* 65 arguments: one more than redis_cmd collects. */
    redisReply *rep =
        redis_cmd(r, "DEL", a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a,
                  a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a,
                  a, a, a, a, a, a, a, a, a, a, a, a, a, a, (char *)NULL);
    assert_null(rep);
    assert_non_null(strstr(redis_last_error(r), "more than 64"));
    assert_true(redis_ping(r));
    redis_free(r);
}

static void test_pipeline(void **state)
{
    (void)state;
    struct redis *r = connect_url(shared_url(), 0, 0);
    char key[64];
    snprintf(key, sizeof(key), "test_redis:%d:counter", (int)getpid());
    redisReply *rep = redis_cmd(r, "DEL", key, (char *)NULL);
    freeReplyObject(rep);

    enum { N = 100 };
    const char *argv[] = {"INCR", key};
    struct redis_cmd cmds[N];
    redisReply *replies[N];
    for (int i = 0; i < N; i++)
        cmds[i] = (struct redis_cmd){.argc = 2, .argv = argv, .argvlen = NULL};
    assert_int_equal(redis_pipeline(r, N, cmds, replies), 0);
    for (int i = 0; i < N; i++) {
        assert_non_null(replies[i]);
        assert_int_equal(replies[i]->type, REDIS_REPLY_INTEGER);
        assert_int_equal(replies[i]->integer, i + 1);
        freeReplyObject(replies[i]);
    }

    /* An empty command would desynchronise replies: refused before sending anything. */
    cmds[1].argc = 0;
    assert_int_equal(redis_pipeline(r, 3, cmds, replies), -EINVAL);
    assert_null(replies[0]);
    rep = redis_cmd(r, "GET", key, (char *)NULL);
    assert_non_null(rep);
    assert_string_equal(rep->str, "100");
    freeReplyObject(rep);
    rep = redis_cmd(r, "DEL", key, (char *)NULL);
    freeReplyObject(rep);
    assert_int_equal(redis_pipeline(r, 0, cmds, replies), 0);
    redis_free(r);
}

static void test_bad_urls(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "http://127.0.0.1:6379", "rediss://127.0.0.1",     "redis://",
        "redis://:6379",         "redis://127.0.0.1:0",    "redis://127.0.0.1:65536",
        "redis://127.0.0.1:",    "redis://127.0.0.1:12ab", "redis://127.0.0.1:6379/x",
        "redis://127.0.0.1/-1",  "redis://127.0.0.1/1/2",  "redis://user@127.0.0.1",
        "redis://:@127.0.0.1",   "redis://:%zz@127.0.0.1", "redis://[::1",
        "redis://[::1]x",        "127.0.0.1:6379",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        struct redis_options opt = {.url = bad[i]};
        struct redis *r = redis_new(&opt, err, sizeof(err));
        if (r) {
            redis_free(r);
            fail_msg("url accepted: %s", bad[i]);
        }
        assert_true(strncmp(err, "redis url: ", 11) == 0);
    }
    char err[256] = "";
    struct redis_options opt = {.url = NULL};
    assert_null(redis_new(&opt, err, sizeof(err)));
    assert_non_null(strstr(err, "missing"));

    /* The password never shows up in the error text. */
    opt.url = "ftp://:hunter2@127.0.0.1";
    assert_null(redis_new(&opt, err, sizeof(err)));
    assert_null(strstr(err, "hunter2"));
}

static void test_select_db(void **state)
{
    (void)state;
    const char *base = shared_url();
    char url1[256];
    /* The shared URL ends with "/0"; swap in database 3. */
    size_t n = strlen(base);
    assert_true(n > 2 && strcmp(base + n - 2, "/0") == 0);
    snprintf(url1, sizeof(url1), "%.*s/3", (int)(n - 2), base);

    struct redis *r0 = connect_url(base, 0, 0);
    struct redis *r3 = connect_url(url1, 0, 0);
    char key[64];
    snprintf(key, sizeof(key), "test_redis:%d:db", (int)getpid());
    redisReply *rep = redis_cmd(r3, "SET", key, "in3", (char *)NULL);
    assert_non_null(rep);
    freeReplyObject(rep);
    rep = redis_cmd(r0, "EXISTS", key, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    rep = redis_cmd(r3, "GET", key, (char *)NULL);
    assert_string_equal(rep->str, "in3");
    freeReplyObject(rep);
    rep = redis_cmd(r3, "DEL", key, (char *)NULL);
    freeReplyObject(rep);
    redis_free(r0);
    redis_free(r3);
}

static void test_password_without_auth_server(void **state)
{
    (void)state;
    const char *base = shared_url();
    assert_true(strncmp(base, "redis://", 8) == 0);
    char url[256];
    snprintf(url, sizeof(url), "redis://:wrong@%s", base + 8);
    struct redis *r = connect_url(url, 0, 0);
    assert_false(redis_ping(r));
    const char *err = redis_last_error(r);
    assert_true(strncmp(err, "AUTH failed: ", 13) == 0);
    assert_null(strstr(err, "wrong"));
    redis_free(r);
}

static void test_auth_server(void **state)
{
    (void)state;
    int port = free_port();
    pid_t pid = start_redis(port, "--requirepass", "s3cr:et");
    char url[128];

    snprintf(url, sizeof(url), "redis://:s3cr%%3Aet@127.0.0.1:%d", port);
    struct redis *r = connect_url(url, 0, 0);
    assert_true(redis_ping(r));
    redis_free(r);

    snprintf(url, sizeof(url), "redis://default:s3cr%%3Aet@127.0.0.1:%d/2", port);
    r = connect_url(url, 0, 0);
    assert_true(redis_ping(r));
    redis_free(r);

    snprintf(url, sizeof(url), "redis://:nope@127.0.0.1:%d", port);
    r = connect_url(url, 0, 0);
    assert_false(redis_ping(r));
    assert_non_null(strstr(redis_last_error(r), "AUTH failed: WRONGPASS"));
    redis_free(r);

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    r = connect_url(url, 0, 0);
    redisReply *rep = redis_cmd(r, "GET", "x", (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(rep->str, "NOAUTH"));
    freeReplyObject(rep);
    redis_free(r);
    stop_redis(pid);
}

static void test_command_timeout(void **state)
{
    (void)state;
    /* A listener that never accepts: the TCP handshake completes, no answer ever comes. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 8), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ntohs(sa.sin_port));

    struct redis *r = connect_url(url, 200, 1000);
    int64_t t0 = time_mono_ms();
    assert_null(redis_cmd(r, "PING", (char *)NULL));
    int64_t took = time_mono_ms() - t0;
    assert_true(took >= 150);
    assert_true(took < 5000);
    assert_true(strlen(redis_last_error(r)) > 0);
    /* Now in backoff: no second wait for the timeout. */
    assert_null(redis_cmd(r, "PING", (char *)NULL));
    redis_free(r);
    close(fd);
}

static void test_redis_gone_and_back(void **state)
{
    (void)state;
    int port = free_port();
    pid_t pid = start_redis(port, NULL, NULL);
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    struct redis *r = connect_url(url, 1000, 400);
    redisReply *rep = redis_cmd(r, "SET", "k", "v", (char *)NULL);
    assert_non_null(rep);
    freeReplyObject(rep);

    stop_redis(pid);
    for (int i = 0; i < 5; i++) {
        int64_t t0 = time_mono_ms();
        rep = redis_cmd(r, "GET", "k", (char *)NULL);
        int64_t took = time_mono_ms() - t0;
        assert_null(rep);
        if (took > 500)
            print_message("note: call %d on a dead redis took %lld ms\n", i, (long long)took);
    }
    assert_false(redis_ping(r));
    assert_true(strlen(redis_last_error(r)) > 0);
    redisReply *replies[2];
    const char *argv[] = {"PING"};
    struct redis_cmd cmds[2] = {{1, argv, NULL}, {1, argv, NULL}};
    assert_int_equal(redis_pipeline(r, 2, cmds, replies), -EIO);
    assert_null(replies[0]);
    assert_null(replies[1]);

    /* Let the backoff grow to its cap before the server comes back. */
    time_sleep_ms(800);
    assert_false(redis_ping(r));
    pid = start_redis(port, NULL, NULL);
    bool back = false;
    for (int i = 0; i < 100 && !back; i++) {
        back = redis_ping(r);
        if (!back)
            time_sleep_ms(50);
    }
    assert_true(back);
    rep = redis_cmd(r, "SET", "k", "again", (char *)NULL);
    assert_non_null(rep);
    freeReplyObject(rep);
    rep = redis_cmd(r, "GET", "k", (char *)NULL);
    assert_non_null(rep);
    assert_string_equal(rep->str, "again");
    freeReplyObject(rep);
    assert_int_equal(redis_pipeline(r, 2, cmds, replies), 0);
    assert_string_equal(replies[1]->str, "PONG");
    freeReplyObject(replies[0]);
    freeReplyObject(replies[1]);
    redis_free(r);
    stop_redis(pid);
}

/*
 * The server drops the connection while a large write is going on: the write
 * fails with EPIPE. With SIGPIPE at its default (terminate) the guard must keep
 * the process alive; with SIGPIPE ignored at creation the guard is skipped.
 * Either way the next command reconnects.
 */
static void peer_close_during_write(void)
{
    struct redis *r = connect_url(shared_url(), 2000, 100);
    struct redis *killer = connect_url(shared_url(), 2000, 100);
    redisReply *rep = redis_cmd(r, "CLIENT", "ID", (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    char id[32];
    snprintf(id, sizeof(id), "%lld", rep->integer);
    freeReplyObject(rep);
    rep = redis_cmd(killer, "CLIENT", "KILL", "ID", id, (char *)NULL);
    assert_non_null(rep);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);

    size_t big = 8u << 20;
    char *value = malloc(big);
    assert_non_null(value);
    memset(value, 'x', big);
    const char *argv[] = {"SET", "test:redis:sigpipe", value};
    size_t argvlen[] = {3, 18, big};
    for (int i = 0; i < 3; i++) {
        rep = redis_command(r, 3, argv, argvlen);
        if (rep)
            freeReplyObject(rep);
    }
    bool back = false;
    for (int i = 0; i < 100 && !back; i++) {
        back = redis_ping(r);
        if (!back)
            time_sleep_ms(20);
    }
    assert_true(back);
    rep = redis_cmd(r, "DEL", "test:redis:sigpipe", (char *)NULL);
    assert_non_null(rep);
    freeReplyObject(rep);
    free(value);
    redis_free(killer);
    redis_free(r);
}

static void test_peer_close_with_default_sigpipe(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_DFL);
    peer_close_during_write();
}

static void test_peer_close_with_sigpipe_ignored(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    peer_close_during_write();
    signal(SIGPIPE, SIG_DFL);
}

static void test_free_null(void **state)
{
    (void)state;
    redis_free(NULL);
}

int main(void)
{
    log_init("test_redis", LOG_LEVEL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get_binary),
        cmocka_unit_test(test_error_reply),
        cmocka_unit_test(test_too_many_varargs),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_select_db),
        cmocka_unit_test(test_password_without_auth_server),
        cmocka_unit_test(test_auth_server),
        cmocka_unit_test(test_command_timeout),
        cmocka_unit_test(test_redis_gone_and_back),
        cmocka_unit_test(test_peer_close_with_default_sigpipe),
        cmocka_unit_test(test_peer_close_with_sigpipe_ignored),
        cmocka_unit_test(test_free_null),
    };
    return cmocka_run_group_tests_name("redis", tests, NULL, NULL);
}
