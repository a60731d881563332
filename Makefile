# Robot Fleet Control Platform — build, run and test.
#
#   make            libcommon.a + the five services + tools (optimised, -g)
#   make run        start Redis, a Kafka broker and all services (KAFKA=apache for a real broker)
#   make test       unit + integration tests under ASan/UBSan against real Redis and Apache Kafka
#   make check      -Werror build, cppcheck, clang-format, banned-function grep
#   make asan       the same build with AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      benchmarks (figures printed, nothing asserted)
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
BINS      := $(SERVICES:%=$(BUILD)/bin/%) $(BUILD)/bin/mock-broker

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

ALL_OBJS := $(LIB_OBJS) $(foreach s,$(SERVICES),$(call svc_objs,$(s))) \
            $(BUILD)/obj/libcommon/tools/mock_broker.o $(UNIT_SRCS:%.c=$(BUILD)/obj/%.o)

.PHONY: all lib services tests asan check format deps deps-check run test unit integration bench clean fuzz
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

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

asan:
	$(MAKE) -j$(shell nproc) BUILD=build-asan OPT=-O1 \
	  SANFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all

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

test: deps-check
	$(MAKE) asan
	BUILD=build-asan tests/run.sh

unit: asan
	BUILD=build-asan tests/run.sh --unit-only

bench: deps-check all
	scripts/bench.sh

clean:
	rm -rf build build-asan build-check build-fuzz

-include $(ALL_OBJS:.o=.d)
