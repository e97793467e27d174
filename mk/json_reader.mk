# The JSON reader alone (csrc/json_reader.c, issue 10): its unit tests (valid and invalid documents,
# nesting limits, escapes, numbers, random documents written and read back) and its own fuzz target,
# both over the few host files it needs, built with ASan/UBSan.
JSON_READER_SOURCES := csrc/json_reader.c csrc/json_writer.c csrc/number_text.c csrc/utf8.c csrc/status.c csrc/safetensors.c
JSON_READER_HEADERS := csrc/json_reader.h csrc/json_writer.h csrc/number_text.h csrc/utf8.h csrc/safetensors.h

$(TEST_BIN)/test_json_reader: tests/test_json_reader.c $(TEST_HEADERS) $(JSON_READER_SOURCES) $(JSON_READER_HEADERS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $(SANITIZE) $< $(JSON_READER_SOURCES) -o $@

FUZZ_JSON_BINARY := $(BUILD)/fuzz_json_reader
FUZZ_INPUTS_fuzz_json_reader := tests/fuzz/fuzz_json_reader.c $(JSON_READER_SOURCES)

$(FUZZ_JSON_BINARY): tests/fuzz/fuzz_json_reader.c tests/fuzz/standalone_driver.c $(JSON_READER_SOURCES) $(HEADERS)
	$(build_fuzz_target)

FUZZ_RUNS += $(FUZZ_JSON_BINARY):tests/fuzz/corpus_json
fuzz: $(FUZZ_JSON_BINARY)

TEST_PROGRAMS += $(TEST_BIN)/test_json_reader $(FUZZ_JSON_BINARY)
TEST_RUN += $(TEST_BIN)/test_json_reader "tests/fuzz/run_fuzz.sh $(FUZZ_JSON_BINARY) $(FUZZ_SECONDS) tests/fuzz/corpus_json"
