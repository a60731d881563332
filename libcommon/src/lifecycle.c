/*
 * Signal handling: the handler only sets a flag and writes a byte to a pipe so
 * lifecycle_wait can sleep without polling (see lifecycle.h).
 */
#include "lifecycle.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static int wake_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    stop_flag = 1;
    if (wake_pipe[1] >= 0) {
        ssize_t w = write(wake_pipe[1], "x", 1);
        (void)w;
    }
    errno = saved;
}

int lifecycle_install(void)
{
    if (wake_pipe[0] < 0) {
        if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
            return -errno;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return -errno;
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) != 0)
        return -errno;
    return 0;
}

bool lifecycle_stopping(void)
{
    return stop_flag != 0;
}

void lifecycle_request_stop(void)
{
    on_signal(0);
}

bool lifecycle_wait(int timeout_ms)
{
    if (stop_flag)
        return true;
    if (wake_pipe[0] < 0) {
        struct pollfd none;
        poll(&none, 0, timeout_ms);
        return stop_flag != 0;
    }
    struct pollfd pfd = {.fd = wake_pipe[0], .events = POLLIN};
    int rc = poll(&pfd, 1, timeout_ms);
    (void)rc;
    /* Leave the byte in the pipe: every waiter in every thread must see it. */
    return stop_flag != 0;
}
