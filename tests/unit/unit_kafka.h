/*
 * Kafka addresses for the unit tests that talk to a real broker: the one
 * scripts/kafka-local.sh started (KAFKA_BOOTSTRAP_SERVERS, a failure when unset)
 * and a loopback address where nothing listens. Include after <cmocka.h>.
 */
#ifndef UNIT_KAFKA_H
#define UNIT_KAFKA_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static inline const char *bootstrap(void)
{
    const char *b = getenv("KAFKA_BOOTSTRAP_SERVERS");
    if (!b || !*b)
        fail_msg("KAFKA_BOOTSTRAP_SERVERS is not set: run 'RUN_DIR=/tmp/x "
                 "scripts/kafka-local.sh start' and export what it prints");
    return b;
}

/* A loopback address where nothing listens: bound once, then closed. */
static inline void dead_bootstrap(char *out, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    snprintf(out, size, "127.0.0.1:%d", ntohs(sa.sin_port));
}

#endif
