/*
 * fuzz.h — the entry point every harness in tests/fuzz/ defines (libFuzzer's). With
 * -DTLM_FUZZ=ON (clang) each harness is a libFuzzer binary; otherwise replay_main.c runs
 * every file of the harness's corpus through it (ctest fuzz_replay_*).
 *
 * A harness returns 0 and aborts (via fuzz_check) when the code under test breaks one of
 * its promises: a refusal without a reason, a decoded message that does not re-encode to
 * the same bytes, ... Sanitizers catch the rest (overflows, leaks, UB).
 */
#ifndef TLM_TEST_FUZZ_H
#define TLM_TEST_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define fuzz_check(cond, ...) do {                                                     \
	if (!(cond)) {                                                                  \
		fprintf(stderr, "fuzz: %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
		fprintf(stderr, __VA_ARGS__);                                           \
		fputc('\n', stderr);                                                    \
		abort();                                                                \
	}                                                                               \
} while (0)

#endif
