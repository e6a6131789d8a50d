/*
 * test_corpus.c — the wire fuzzer's seed frames in tests/fuzz/corpus/wire/ (one valid
 * frame per message type, written by tests/fuzz/mkseeds.c) must still decode, each as its
 * own type, with the current decoder.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "samples.h"

static void corpus_path(char *path, size_t len, const char *dir, enum tlm_msg_type t)
{
	char name[32];

	sample_corpus_name(t, name, sizeof(name));
	snprintf(path, len, "%s/%s", dir, name);
}

static void test_corpus_decodes(void **state)
{
	const char *src = getenv("TLM_SOURCE_DIR");
	char dir[512];

	snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/wire", src);
	for (int t = TLM_MSG_HELLO; t < TLM_MSG__MAX; t++) {
		uint8_t f[SAMPLE_FRAME_MAX + 1];
		struct tlm_run runs[16];
		struct tlm_msg m;
		char path[600], err[200];
		size_t n;
		FILE *fp;

		corpus_path(path, sizeof(path), dir, t);
		fp = fopen(path, "rb");
		if (!fp)
			fail_msg("%s: %s", path, strerror(errno));
		n = fread(f, 1, sizeof(f), fp);
		fclose(fp);
		assert_true(n < 5000);
		if (tlm_proto_decode(f, n, &m, runs, 16, err, sizeof(err)))
			fail_msg("%s: %s", path, err);
		assert_int_equal(m.type, t);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus_decodes),
	};

	if (!getenv("TLM_SOURCE_DIR")) {
		fprintf(stderr, "FAIL proto_corpus: TLM_SOURCE_DIR not set (run through ctest)\n");
		return 1;
	}

	return cmocka_run_group_tests(tests, NULL, NULL);
}
