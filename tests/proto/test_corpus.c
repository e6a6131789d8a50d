/*
 * test_corpus.c — the seed frames in tests/proto/corpus/ (one valid frame per message
 * type, for later fuzzing) must still decode with the current decoder. With
 * TLM_PROTO_WRITE_CORPUS=DIR the seeds are (re)written to DIR first:
 *   TLM_PROTO_WRITE_CORPUS=tests/proto/corpus build/tests/proto/proto_corpus
 */
#include <ctype.h>
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
	size_t i;

	for (i = 0; tlm_msg_name(t)[i] && i < sizeof(name) - 1; i++)
		name[i] = (char)tolower((unsigned char)tlm_msg_name(t)[i]);
	name[i] = '\0';
	snprintf(path, len, "%s/%02d-%s.bin", dir, (int)t, name);
}

static void write_corpus(const char *dir)
{
	for (int t = TLM_MSG_HELLO; t < TLM_MSG__MAX; t++) {
		uint8_t f[SAMPLE_FRAME_MAX];
		size_t n = sample_frame(t, f, sizeof(f));
		char path[512];
		FILE *fp;

		corpus_path(path, sizeof(path), dir, t);
		fp = fopen(path, "wb");
		assert_non_null(fp);
		assert_int_equal(fwrite(f, 1, n, fp), n);
		assert_int_equal(fclose(fp), 0);
	}
}

static void test_corpus_decodes(void **state)
{
	const char *src = getenv("TLM_SOURCE_DIR");
	const char *w = getenv("TLM_PROTO_WRITE_CORPUS");
	char dir[512];

	if (w && *w)
		write_corpus(w);
	snprintf(dir, sizeof(dir), "%s/tests/proto/corpus", src);
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
		fprintf(stderr, "proto_corpus: TLM_SOURCE_DIR not set (run through ctest)\n");
		return 77;
	}

	return cmocka_run_group_tests(tests, NULL, NULL);
}
