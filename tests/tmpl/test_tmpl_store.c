/* Template store: index round trip, lookups, forced hash collisions, corrupt input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "template_int.h"
#include "tmpl_fixture.h"

static const uint32_t ids8[8] = { 1, 2, 3, 1, 0, 4, 2, 0 };

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char err[256];

	if (!f || fx_setup(f) < 0)
		return -1;
	fx_write_pages(f->pages, ids8, 8);
	if (tlm_tmpl_build_index(f->pages, NULL, 2, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx_teardown(*state);
	free(*state);
	return 0;
}

static void test_round_trip_and_lookup(void **state)
{
	struct fx *f = *state;
	struct tlm_tmpl *t;
	struct tlm_tmpl_stats st;
	struct tlm_digest d;
	uint64_t hashes[8];
	uint8_t page[TLM_PAGE_SIZE];
	char err[256];

	assert_int_equal(tlm_tmpl_open(&t, f->pages, NULL, TLM_TMPL_VERIFY_PAGES, err, sizeof(err)), 0);
	assert_int_equal(tlm_tmpl_page_count(t), 8);
	for (int i = 0; i < 8; i++)
		hashes[i] = tlm_tmpl_page_hash(t, (uint64_t)i);
	tlm_digest_of_hashes(hashes, 8, &d);
	assert_memory_equal(d.b, tlm_tmpl_digest(t)->b, 16);
	/* Duplicates resolve to the lowest page; the zero page is found too. */
	fx_fill_page(page, 1);
	assert_int_equal(tlm_tmpl_lookup(t, page), 0);
	fx_fill_page(page, 2);
	assert_int_equal(tlm_tmpl_lookup(t, page), 1);
	fx_fill_page(page, 0);
	assert_int_equal(tlm_tmpl_lookup(t, page), 4);
	fx_fill_page(page, 99);
	assert_int_equal(tlm_tmpl_lookup(t, page), -ENOENT);
	/* A hash hit with other bytes is not a match. */
	assert_int_equal(tlm_tmpl_lookup_hashed(t, page, tlm_tmpl_page_hash(t, 2)), -ENOENT);
	assert_int_equal(tlm_tmpl_probe_hash(t, tlm_tmpl_page_hash(t, 5)), 5);
	assert_null(tlm_tmpl_page(t, 8));
	tlm_tmpl_stats(t, &st);
	assert_int_equal(st.pages, 8);
	assert_int_equal(st.zero_pages, 2);
	assert_int_equal(st.distinct, 5);
	assert_int_equal(st.duplicate_pages, 3);
	tlm_tmpl_close(t);
}

static void test_digest_hex(void **state)
{
	struct tlm_digest d, e;
	char hex[33];

	for (int i = 0; i < 16; i++)
		d.b[i] = (uint8_t)(i * 17);
	tlm_digest_hex(&d, hex);
	assert_string_equal(hex, "00112233445566778899aabbccddeeff");
	assert_int_equal(tlm_digest_parse(hex, &e), 0);
	assert_memory_equal(d.b, e.b, 16);
	assert_int_equal(tlm_digest_parse("0011", &e), -EINVAL);
	assert_int_equal(tlm_digest_parse("zz112233445566778899aabbccddeeff", &e), -EINVAL);
}

/* Every page gets the same hash: contents must still never be confused. */
static void test_forced_collisions(void **state)
{
	struct fx *f = *state;
	const uint32_t ids[4] = { 5, 6, 7, 5 };
	uint64_t same[4] = { 42, 42, 42, 42 };
	uint8_t page[TLM_PAGE_SIZE];
	struct tlm_tmpl *t;
	char err[256];

	fx_write_pages(f->pages, ids, 4);
	assert_int_equal(tlm_tmpl_write_index(f->index, same, 4, NULL, err, sizeof(err)), 0);
	assert_int_equal(tlm_tmpl_open(&t, f->pages, NULL, 0, err, sizeof(err)), 0);
	for (uint32_t i = 0; i < 3; i++) {
		fx_fill_page(page, ids[i]);
		assert_int_equal(tlm_tmpl_lookup_hashed(t, page, 42), i);
	}
	fx_fill_page(page, 8);
	assert_int_equal(tlm_tmpl_lookup_hashed(t, page, 42), -ENOENT);
	tlm_tmpl_close(t);
	/* Verification notices that the index does not describe these pages. */
	assert_int_equal(tlm_tmpl_open(&t, f->pages, NULL, TLM_TMPL_VERIFY_PAGES, err, sizeof(err)),
			 -EBADMSG);
	assert_non_null(strstr(err, "page 0 does not match"));
}

/* Rewrite the header checksum after patching a header field on purpose. */
static void fix_header_sum(const char *index)
{
	uint8_t h[48];
	FILE *fp = fopen(index, "r");
	uint32_t sum;

	assert_int_equal(fread(h, 1, 48, fp), 48);
	fclose(fp);
	sum = (uint32_t)XXH3_64bits(h, 44);
	fx_patch(index, 44, &sum, 4);     /* little-endian host */
}

enum corrupt { C_MISSING, C_TRUNC_HDR, C_TRUNC_HASHES, C_MAGIC, C_VERSION, C_PAGESIZE,
	       C_COUNT, C_HASH_FLIP, C_HDR_FLIP, C_PAGES_SIZE };

static const struct {
	enum corrupt what;
	const char *expect;      /* in the one-line error */
	int rc;
} corrupt_cases[] = {
	{ C_MISSING, "No such file", -ENOENT },
	{ C_TRUNC_HDR, "truncated index header", -EINVAL },
	{ C_TRUNC_HASHES, "truncated or oversized index", -EINVAL },
	{ C_MAGIC, "bad magic", -EINVAL },
	{ C_VERSION, "unsupported index version 2", -EINVAL },
	{ C_PAGESIZE, "page size 8192", -EINVAL },
	{ C_COUNT, "index has 8 pages but", -EINVAL },
	{ C_HASH_FLIP, "corrupt page hash array", -EINVAL },
	{ C_HDR_FLIP, "corrupt index header", -EINVAL },
	{ C_PAGES_SIZE, "not a multiple of 4096", -EINVAL },
};

static void corrupt(struct fx *f, enum corrupt what)
{
	uint32_t v;
	uint8_t b = 0xff;
	struct stat st;

	stat(f->index, &st);
	switch (what) {
	case C_MISSING: unlink(f->index); break;
	case C_TRUNC_HDR: assert_int_equal(truncate(f->index, 20), 0); break;
	case C_TRUNC_HASHES: assert_int_equal(truncate(f->index, st.st_size - 12), 0); break;
	case C_MAGIC: fx_patch(f->index, 0, "X", 1); break;
	case C_VERSION: v = 2; fx_patch(f->index, 8, &v, 4); fix_header_sum(f->index); break;
	case C_PAGESIZE: v = 8192; fx_patch(f->index, 12, &v, 4); fix_header_sum(f->index); break;
	case C_COUNT: fx_write_pages(f->pages, (const uint32_t[9]){ 1, 2, 3, 1, 0, 4, 2, 0, 9 }, 9);
		break;
	case C_HASH_FLIP: fx_patch(f->index, 48 + 8 * 3 + 2, &b, 1); break;
	case C_HDR_FLIP: fx_patch(f->index, 30, &b, 1); break;
	case C_PAGES_SIZE: assert_int_equal(truncate(f->pages, 8 * 4096 - 100), 0); break;
	}
}

static void test_corrupt_inputs(void **state)
{
	struct fx *f = *state;
	char err[512];

	for (size_t i = 0; i < sizeof(corrupt_cases) / sizeof(corrupt_cases[0]); i++) {
		struct tlm_tmpl *t = (void *)1;

		fx_write_pages(f->pages, ids8, 8);
		assert_int_equal(tlm_tmpl_build_index(f->pages, NULL, 1, NULL, err, sizeof(err)), 0);
		corrupt(f, corrupt_cases[i].what);
		err[0] = '\0';
		int rc = tlm_tmpl_open(&t, f->pages, NULL, 0, err, sizeof(err));
		if (rc != corrupt_cases[i].rc || !strstr(err, corrupt_cases[i].expect) ||
		    !strstr(err, f->dir))
			fail_msg("case %zu: rc %d, error '%s' (expected %d, '%s')", i, rc, err,
				 corrupt_cases[i].rc, corrupt_cases[i].expect);
		assert_null(t);
		assert_null(strchr(err, '\n'));
	}
}

static void test_verify_detects_modified_page(void **state)
{
	struct fx *f = *state;
	struct tlm_tmpl *t;
	char err[256];
	uint8_t b = 0x5a;

	fx_patch(f->pages, 3 * 4096 + 100, &b, 1);
	assert_int_equal(tlm_tmpl_open(&t, f->pages, NULL, 0, err, sizeof(err)), 0);
	tlm_tmpl_close(t);    /* without verification, the index alone is consistent */
	assert_int_equal(tlm_tmpl_open(&t, f->pages, NULL, TLM_TMPL_VERIFY_PAGES, err, sizeof(err)),
			 -EBADMSG);
	assert_non_null(strstr(err, "page 3 does not match"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip_and_lookup, setup, teardown),
		cmocka_unit_test(test_digest_hex),
		cmocka_unit_test_setup_teardown(test_forced_collisions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_inputs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_detects_modified_page, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
