# Robot Fleet Control Platform — build, run and test.
#
#   make            libcommon.a + the five services + tools (optimised, -g)
#   make run        start Redis, a Kafka broker and all services (KAFKA=apache for a real broker)
#   make test       unit + integration tests under ASan/UBSan against real Redis and Apache Kafka
#   make check      -Werror build, cppcheck, clang-format, banned-function grep
#   make asan       the same build with AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz       libFuzzer targets for every parser of outside input (clang); make fuzz-run runs them
#   make bench      benchmarks (figures printed, nothing asserted)
#   make soak       30 min steady load on the release build: RSS flat, no event lost (SOAK_SECONDS)
#   make deps       install every Debian package the project needs (idempotent)

CC      ?= gcc
BUILD   ?= build
PKGS    := rdkafka libmicrohttpd hiredis libcjson libcurl yaml-0.1 openssl
SERVICES := webhook-ingest stream-processor reboot-command robot-registry config-center

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2
SANFLAGS ?=
CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wvla -g $(OPT) $(SANFLAGS) -MMD -MP \
            -Ilibcommon/include $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  := $(SANFLAGS) $(EXTRA_LDFLAGS)
LDLIBS   := $(PKG_LIBS) -lpthread -lm

LIB_SRCS := $(wildcard libcommon/src/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
LIB      := $(BUILD)/lib/libcommon.a

svc_srcs  = $(wildcard services/$(1)/*.c)
svc_objs  = $(patsubst %.c,$(BUILD)/obj/%.o,$(call svc_srcs,$(1)))
SIM_OBJS  := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/sim/*.c))
BINS      := $(SERVICES:%=$(BUILD)/bin/%) $(BUILD)/bin/mock-broker $(BUILD)/bin/ingest-load \
             $(BUILD)/bin/robot-sim

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

ALL_OBJS := $(LIB_OBJS) $(foreach s,$(SERVICES),$(call svc_objs,$(s))) \
            $(BUILD)/obj/libcommon/tools/mock_broker.o $(BUILD)/obj/tests/bench/ingest_load.o $(SIM_OBJS) \
            $(UNIT_SRCS:%.c=$(BUILD)/obj/%.o)

.PHONY: all lib services tests asan check format deps deps-check run test unit integration bench soak clean fuzz fuzz-run fuzz-bins
all: $(LIB) $(BINS) $(UNIT_BINS)
lib: $(LIB)
services: $(BINS)
tests: $(UNIT_BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

define service_rule
$(BUILD)/bin/$(1): $(call svc_objs,$(1)) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$(call svc_objs,$(1)) $(LIB) $$(LDLIBS)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rule,$(s))))

$(BUILD)/bin/mock-broker: $(BUILD)/obj/libcommon/tools/mock_broker.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# the load generator behind `make bench` (scripts/bench.sh)
$(BUILD)/bin/ingest-load: $(BUILD)/obj/tests/bench/ingest_load.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# the simulated robot vendor platform (tests/sim/) behind tests and `make run`
$(BUILD)/bin/robot-sim: $(SIM_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# the stream-processor's robot table, tested on its own
$(BUILD)/tests/test_robot_table: $(BUILD)/obj/tests/unit/test_robot_table.o \
    $(BUILD)/obj/services/stream-processor/state.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka
$(BUILD)/obj/tests/unit/test_robot_table.o: CFLAGS += -Iservices/stream-processor

asan:
	$(MAKE) -j$(shell nproc) BUILD=build-asan OPT=-O1 \
	  SANFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all

# ---- fuzzing ----------------------------------------------------------------
# libFuzzer needs clang: libcommon is rebuilt with clang and coverage
# instrumentation into its own archive, so the main build stays gcc.
FUZZ_CC    ?= clang-14
FUZZ_BUILD ?= build-fuzz
FUZZ_SAN   := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wvla -g -O1 $(FUZZ_SAN) -MMD -MP \
            -Ilibcommon/include $(PKG_CFLAGS)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_LIB  := $(FUZZ_BUILD)/lib/libcommon.a
FUZZ_OBJS := $(FUZZ_LIB_OBJS) $(FUZZ_SRCS:%.c=$(FUZZ_BUILD)/obj/%.o) \
             $(FUZZ_BUILD)/obj/services/webhook-ingest/events.o \
             $(FUZZ_BUILD)/obj/services/webhook-ingest/verify.o \
             $(FUZZ_BUILD)/obj/services/stream-processor/evscan.o

fuzz:
	$(MAKE) -j$(shell nproc) fuzz-bins

fuzz-bins: $(FUZZ_BINS)
# keep the objects of the chained pattern rules for incremental rebuilds
.SECONDARY: $(FUZZ_OBJS)

fuzz-run: fuzz
	FUZZ_BUILD=$(FUZZ_BUILD) tests/fuzz/run.sh

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# webhook-ingest's parsers live in the service, so its target links them too.
$(FUZZ_BUILD)/fuzz_webhook: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_webhook.o \
    $(FUZZ_BUILD)/obj/services/webhook-ingest/events.o \
    $(FUZZ_BUILD)/obj/services/webhook-ingest/verify.o $(FUZZ_LIB)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(LDLIBS)

# The stream-processor's envelope reader lives in its service as well.
$(FUZZ_BUILD)/fuzz_evscan: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_evscan.o \
    $(FUZZ_BUILD)/obj/services/stream-processor/evscan.o $(FUZZ_LIB)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(LDLIBS)

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(LDLIBS)

# ---- quality gate -----------------------------------------------------------
C_FILES = $(shell git ls-files --cached --others --exclude-standard '*.c' '*.h' 2>/dev/null)
BANNED  := '\b(strcpy|sprintf|strtok|atoi|gets)[[:space:]]*\('

check: deps-check
	$(MAKE) -j$(shell nproc) BUILD=build-check all
	@echo "== banned functions"
	@! grep -nE $(BANNED) $(C_FILES) || { echo "banned function used (see STYLE.md)"; exit 1; }
	@echo "== clang-format"
	@clang-format --dry-run --Werror $(C_FILES)
	@echo "== cppcheck"
	@cppcheck --quiet --error-exitcode=1 --std=c11 --enable=warning,portability,performance \
	  --inline-suppr --suppress=missingIncludeSystem --suppress=unusedStructMember \
	  -Ilibcommon/include -D__GNUC__ -DMHD_PLATFORM_H $(filter %.c,$(C_FILES))
	@echo "check: ok"

format:
	clang-format -i $(C_FILES)

# ---- running and testing ----------------------------------------------------
deps:
	scripts/deps.sh install

deps-check:
	@scripts/deps.sh check || scripts/deps.sh install

run: deps-check all
	scripts/run-local.sh $(if $(KAFKA),--kafka $(KAFKA))

# The sanitizer build runs the suite; the plain build is what valgrind checks.
test: deps-check
	$(MAKE) asan
	$(MAKE) -j$(shell nproc) all
	$(MAKE) fuzz
	BUILD=build-asan FUZZ_BUILD=$(FUZZ_BUILD) tests/run.sh

unit: asan
	BUILD=build-asan tests/run.sh --unit-only

bench: deps-check all
	scripts/bench.sh

# Not part of `make test`: SOAK_SECONDS (default 1800) of steady load (scripts/soak.sh).
soak: deps-check all
	scripts/soak.sh

clean:
	rm -rf build build-asan build-check build-fuzz

-include $(ALL_OBJS:.o=.d) $(FUZZ_OBJS:.o=.d)
