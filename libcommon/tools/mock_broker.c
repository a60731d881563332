/*
 * mock-broker: an in-process Kafka cluster (librdkafka's mock cluster) for
 * `make run` when no real broker is wanted. It speaks the real Kafka protocol
 * but keeps everything in memory and gives no exactly-once guarantees; tests
 * use Apache Kafka instead (scripts/kafka-local.sh).
 *
 * Usage: mock-broker [--partitions N] [--env-file FILE]
 * Prints KAFKA_BOOTSTRAP_SERVERS=<host:port> and runs until SIGTERM/SIGINT.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <string.h>

#include "lifecycle.h"
#include "str.h"
#include "topics.h"

int main(int argc, char **argv)
{
    const char *env_file = NULL;
    int64_t partitions = 12;
    char errstr[512];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--env-file") == 0 && i + 1 < argc) {
            env_file = argv[++i];
        } else if (strcmp(argv[i], "--partitions") == 0 && i + 1 < argc &&
                   str_to_int64(argv[++i], &partitions) == 0 && partitions > 0 &&
                   partitions <= 1000) {
            continue;
        } else {
            fprintf(stderr, "usage: mock-broker [--partitions 1-1000] [--env-file FILE]\n");
            return 2;
        }
    }
    if (lifecycle_install() != 0) {
        fprintf(stderr, "mock-broker: cannot install signal handlers\n");
        return 1;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "mock-broker: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, 1);
    if (!mc) {
        fprintf(stderr, "mock-broker: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    struct kafka_topic_spec specs[16];
    size_t n = topics_specs((int)partitions, specs, 16);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t err =
            rd_kafka_mock_topic_create(mc, specs[i].name, specs[i].partitions, 1);
        if (err) {
            fprintf(stderr, "mock-broker: cannot create topic '%s': %s\n", specs[i].name,
                    rd_kafka_err2str(err));
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(rk);
            return 1;
        }
    }
    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(mc);
    printf("KAFKA_BOOTSTRAP_SERVERS=%s\n", bootstrap);
    fflush(stdout);
    if (env_file) {
        FILE *f = fopen(env_file, "w");
        if (!f || fprintf(f, "KAFKA_BOOTSTRAP_SERVERS=%s\n", bootstrap) < 0 || fclose(f) != 0) {
            fprintf(stderr, "mock-broker: cannot write '%s'\n", env_file);
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(rk);
            return 1;
        }
    }
    while (!lifecycle_wait(1000))
        ;
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
