/*
 * test_wire.c — encode/decode round trip of every message type, and a table of malformed
 * frames that must each be rejected with a reason naming the problem.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <xxhash.h>

#include "samples.h"

#define TLM_ARRAY_N(a) (sizeof(a) / sizeof((a)[0]))

static struct tlm_run runs[16];

static int decode(const uint8_t *f, size_t n, struct tlm_msg *m, char *err)
{
	err[0] = '\0';
	return tlm_proto_decode(f, n, m, runs, TLM_ARRAY_N(runs), err, 200);
}

/* Decoding then re-encoding gives the same bytes: the encoding is canonical. */
static void test_round_trip_all(void **state)
{
	for (int t = TLM_MSG_HELLO; t < TLM_MSG__MAX; t++) {
		uint8_t f[SAMPLE_FRAME_MAX], g[SAMPLE_FRAME_MAX];
		struct tlm_msg in, out;
		char err[200];
		size_t n;
		ssize_t n2;

		sample_msg(t, &in);
		n = sample_frame(t, f, sizeof(f));
		assert_int_equal(n, tlm_proto_frame_size(&in));
		assert_int_equal(tlm_proto_frame_len(f, n, err, sizeof(err)), n);
		assert_int_equal(decode(f, n, &out, err), 0);
		assert_int_equal(out.type, t);
		n2 = tlm_proto_encode(&out, g, sizeof(g));
		assert_int_equal(n2, n);
		assert_memory_equal(f, g, n);
	}
}

static void test_round_trip_fields(void **state)
{
	uint8_t f[SAMPLE_FRAME_MAX];
	struct tlm_msg in, out;
	char err[200];
	size_t n;

	n = sample_frame(TLM_MSG_CLASS_MAP, f, sizeof(f));
	sample_msg(TLM_MSG_CLASS_MAP, &in);
	assert_int_equal(decode(f, n, &out, err), 0);
	assert_int_equal(out.u.class_map.first_page, 1000);
	assert_int_equal(out.u.class_map.nruns, 4);
	assert_true(out.u.class_map.final);
	assert_ptr_equal(out.u.class_map.runs, runs);
	assert_int_equal(runs[1].cls, TLM_CLASS_REF);
	assert_int_equal(runs[1].len, 3);
	assert_int_equal(runs[1].arg, 77);

	n = sample_frame(TLM_MSG_PAGE, f, sizeof(f));
	sample_msg(TLM_MSG_PAGE, &in);
	assert_int_equal(decode(f, n, &out, err), 0);
	assert_ptr_equal(out.u.page.data, f + 24);      /* zero copy */
	assert_memory_equal(out.u.page.data, in.u.page.data, TLM_PROTO_PAGE_SIZE);
	assert_int_equal(out.u.page.xxh64, tlm_proto_page_sum(out.u.page.data));
	assert_int_equal(out.u.page.page, 4321);

	n = sample_frame(TLM_MSG_VM_OPEN, f, sizeof(f));
	assert_int_equal(decode(f, n, &out, err), 0);
	assert_string_equal(out.u.vm_open.vm_id, "vm-01.test_A");
	assert_int_equal(out.u.vm_open.ram_size, 256ull << 20);

	/* Fixed little-endian layout, independent of the host: spot-check bytes. */
	n = sample_frame(TLM_MSG_DEMAND, f, sizeof(f));
	static const uint8_t demand[] = { 16, 0, 0, 0, 8, 0, 0, 0,
					  0xd2, 0x04, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0 };
	assert_int_equal(n, sizeof(demand));
	assert_memory_equal(f, demand, n);
}

/* Version 3 map kinds: live and fix survive the round trip; KEEP runs only in a fix. */
static void test_map_kinds(void **state)
{
	static const struct tlm_run fix[] = {
		{ TLM_CLASS_KEEP, 100, 0 }, { TLM_CLASS_DATA, 2, 0 }, { TLM_CLASS_KEEP, 7, 0 },
		{ TLM_CLASS_REF, 1, 9 },
	};
	uint8_t f[SAMPLE_FRAME_MAX];
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP }, out;
	char err[200];
	ssize_t n;

	(void)state;
	m.u.class_map.nruns = 4;
	m.u.class_map.runs = (struct tlm_run *)fix;
	m.u.class_map.kind = TLM_MAP_FIX;
	n = tlm_proto_encode(&m, f, sizeof(f));
	assert_true(n > 0);
	assert_int_equal(f[TLM_PROTO_HDR_SIZE + 12], 0x4);
	assert_int_equal(decode(f, n, &out, err), 0);
	assert_int_equal(out.u.class_map.kind, TLM_MAP_FIX);
	assert_false(out.u.class_map.final);
	assert_int_equal(runs[0].cls, TLM_CLASS_KEEP);
	assert_int_equal(runs[3].arg, 9);

	m.u.class_map.kind = TLM_MAP_LIVE;     /* the encoder refuses what would not decode */
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	m.u.class_map.runs = (struct tlm_run *)&fix[1];
	m.u.class_map.nruns = 1;
	m.u.class_map.final = true;
	n = tlm_proto_encode(&m, f, sizeof(f));
	assert_int_equal(f[TLM_PROTO_HDR_SIZE + 12], 0x3);
	assert_int_equal(decode(f, n, &out, err), 0);
	assert_int_equal(out.u.class_map.kind, TLM_MAP_LIVE);
	assert_true(out.u.class_map.final);
	m.u.class_map.kind = 3;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
}

static void test_empty_final_map_and_max_runs(void **state)
{
	static struct tlm_run big[TLM_PROTO_MAX_RUNS];
	static uint8_t f[TLM_PROTO_HDR_SIZE + TLM_PROTO_MAX_PAYLOAD];
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP }, out;
	char err[200];
	ssize_t n;

	m.u.class_map.final = true;
	n = tlm_proto_encode(&m, f, sizeof(f));
	assert_int_equal(n, 24);
	assert_int_equal(decode(f, n, &out, err), 0);
	assert_int_equal(out.u.class_map.nruns, 0);

	for (uint32_t i = 0; i < TLM_PROTO_MAX_RUNS; i++)
		big[i] = (struct tlm_run){ TLM_CLASS_DATA, 1, 0 };
	m.u.class_map.nruns = TLM_PROTO_MAX_RUNS;
	m.u.class_map.runs = big;
	n = tlm_proto_encode(&m, f, sizeof(f));
	assert_int_equal(n, sizeof(f));
	assert_int_equal(tlm_proto_decode(f, n, &out, big, TLM_PROTO_MAX_RUNS, err,
					  sizeof(err)), 0);
	/* The receiver's own limit applies too. */
	assert_int_equal(tlm_proto_decode(f, n, &out, big, 100, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "65535 runs exceed the receiver's limit 100"));
}

/* ---- malformed frames ------------------------------------------------------------------- */

struct bad_case {
	const char *what;
	enum tlm_msg_type type;   /* sample frame to start from */
	int off;                  /* byte offset in the frame to overwrite, -1 = none */
	int width;                /* 1, 2, 4 or 8 bytes, little-endian */
	uint64_t val;
	int trunc;                /* >0: decode only this many bytes */
	const char *expect;       /* substring of the reason */
};

#define P 8   /* payload offset */
static const struct bad_case bad_cases[] = {
	{ "truncated header", TLM_MSG_DONE, -1, 0, 0, 5, "truncated header (5 of 8" },
	{ "truncated payload", TLM_MSG_HELLO, -1, 0, 0, 55, "HELLO length 56, but 55" },
	{ "oversize length", TLM_MSG_CLASS_MAP, 0, 4, (1u << 20) + 1, 0, "exceeds 1048576" },
	{ "unknown type", TLM_MSG_DONE, 4, 2, 99, 0, "unknown message type 99" },
	{ "type zero", TLM_MSG_DONE, 4, 2, 0, 0, "unknown message type 0" },
	{ "nonzero flags", TLM_MSG_DONE, 6, 2, 0x80, 0, "DONE with nonzero flags 0x80" },
	{ "fixed length wrong", TLM_MSG_AUTH_OK, 0, 4, 4, 0, "AUTH_OK: payload length 4, expected 0" },
	{ "bad magic", TLM_MSG_HELLO, P, 4, 0x12345678, 0, "bad magic" },
	{ "hello reserved", TLM_MSG_HELLO, P + 10, 1, 1, 0, "HELLO: reserved bytes not zero" },
	{ "bad channel", TLM_MSG_HELLO, P + 8, 1, 3, 0, "bad channel 3" },
	{ "version range", TLM_MSG_HELLO, P + 4, 2, 4, 0, "bad version range 4..3" },
	{ "version zero", TLM_MSG_HELLO, P + 4, 4, 0, 0, "bad version range 0..0" },
	{ "challenge v0", TLM_MSG_CHALLENGE, P, 2, 0, 0, "CHALLENGE: version 0" },
	{ "bad class", TLM_MSG_CLASS_MAP, P + 16 + 16 * 3, 1, 9, 0, "run 3 has class 9" },
	{ "zero-length run", TLM_MSG_CLASS_MAP, P + 16 + 4, 4, 0, 0, "run 0 has length 0" },
	{ "nruns mismatch", TLM_MSG_CLASS_MAP, P + 8, 4, 3, 0, "nruns 3 does not match" },
	{ "map length", TLM_MSG_CLASS_MAP, 0, 4, 16 + 16 * 4 + 5, 0, "not 16 + 16*nruns" },
	{ "map flags", TLM_MSG_CLASS_MAP, P + 12, 4, 9, 0, "unknown flags 0x8" },
	{ "live and fix", TLM_MSG_CLASS_MAP, P + 12, 4, 7, 0, "both live and fix flags set" },
	{ "keep in a whole map", TLM_MSG_CLASS_MAP, P + 16, 1, 0, 0, "run 0 has class 0" },
	{ "keep in a live map", TLM_MSG_CLASS_MAP, P + 12, 4, 3, 0, "run 2 has class 0" },
	{ "run reserved", TLM_MSG_CLASS_MAP, P + 16 + 2, 1, 1, 0, "run 0 reserved bytes" },
	{ "arg on template", TLM_MSG_CLASS_MAP, P + 16 + 8, 8, 5, 0, "run 0 (template) has nonzero arg 5" },
	{ "ref overflow", TLM_MSG_CLASS_MAP, P + 32 + 8, 8, UINT64_MAX - 1, 0, "run 1: template pages" },
	{ "map end overflow", TLM_MSG_CLASS_MAP, P, 8, (1ull << 52) - 12, 0, "run 1 ends past page 2^52" },
	{ "empty nonfinal map", TLM_MSG_CLASS_MAP, -2, 0, 0, 0, "no runs in a non-final frame" },
	{ "vm id with /", TLM_MSG_VM_OPEN, P + 32 + 2, 1, '/', 0, "invalid vm id \"vm/01.test_A\"" },
	{ "vm id length", TLM_MSG_VM_OPEN, P + 12, 1, 3, 0, "id length 3 does not match" },
	{ "vm page size", TLM_MSG_VM_OPEN, P + 8, 4, 8192, 0, "page size 8192" },
	{ "vm ram size", TLM_MSG_VM_OPEN, P, 8, 4097, 0, "ram size 4097" },
	{ "accept zero", TLM_MSG_VM_ACCEPT, P, 8, 0, 0, "VM_ACCEPT: page count 0" },
	{ "error not printable", TLM_MSG_ERROR, P + 8 + 3, 1, 0x01, 0, "not printable" },
	{ "error NUL", TLM_MSG_ERROR, P + 8, 1, 0, 0, "not printable" },
	{ "error code", TLM_MSG_ERROR, P, 4, 0, 0, "ERROR: unknown code 0" },
	{ "error text length", TLM_MSG_ERROR, P + 4, 2, 5, 0, "text length 5 does not match" },
	{ "demand count 0", TLM_MSG_DEMAND, P + 8, 4, 0, 0, "count 0 outside 1..256" },
	{ "demand count max", TLM_MSG_DEMAND, P + 8, 4, 257, 0, "count 257 outside 1..256" },
	{ "demand reserved", TLM_MSG_DEMAND, P + 12, 4, 1, 0, "DEMAND: reserved" },
	{ "demand overflow", TLM_MSG_DEMAND, P, 8, UINT64_MAX - 3, 0, "overflows" },
	{ "zero overflow", TLM_MSG_ZERO, P, 8, UINT64_MAX - 1, 0, "ZERO: bad range" },
	{ "zero count 0", TLM_MSG_ZERO, P + 8, 8, 0, 0, "ZERO: bad range page 10 count 0" },
	{ "ref count overflow", TLM_MSG_REF, P + 8, 8, UINT64_MAX, 0, "REF: bad range" },
	{ "ref tmpl overflow", TLM_MSG_REF, P + 16, 8, (1ull << 52) - 1, 0, "REF: bad range" },
	{ "page out of range", TLM_MSG_PAGE, P, 8, 1ull << 52, 0, "PAGE: page" },
	{ "credit reserved", TLM_MSG_CREDIT, P + 9, 1, 1, 0, "CREDIT: reserved bytes" },
	{ "pages count", TLM_MSG_PAGES, P + 8, 4, 2, 0, "PAGES: count 2 does not match" },
	{ "pages count 0", TLM_MSG_PAGES, P + 8, 4, 0, 0, "PAGES: count 0 does not match" },
	{ "pages reserved", TLM_MSG_PAGES, P + 12, 4, 1, 0, "PAGES: reserved bytes" },
	{ "pages length", TLM_MSG_PAGES, 0, 4, 16 + 4104 + 8, 0, "not 16 + 4104*count" },
	{ "pages too many", TLM_MSG_PAGES, 0, 4, 16 + 4104 * 65, 0, "outside 4120..262672" },
	{ "pages overflow", TLM_MSG_PAGES, P, 8, (1ull << 52), 0, "PAGES: page 4503599627370496 + count 1" },
	{ "progress", TLM_MSG_PROGRESS, P, 8, 70000, 0, "PROGRESS: 70000 of 65536" },
	{ "done pages", TLM_MSG_DONE, P, 8, UINT64_MAX, 0, "DONE: data page count" },
};

static void put_le(uint8_t *p, int width, uint64_t v)
{
	for (int i = 0; i < width; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void test_malformed_table(void **state)
{
	for (size_t i = 0; i < TLM_ARRAY_N(bad_cases); i++) {
		const struct bad_case *c = &bad_cases[i];
		uint8_t f[SAMPLE_FRAME_MAX];
		struct tlm_msg m;
		char err[200];
		size_t n = sample_frame(c->type, f, sizeof(f));
		int ret;

		if (c->off >= 0)
			put_le(f + c->off, c->width, c->val);
		if (strstr(c->what, "keep in a live"))   /* a KEEP run in a live map */
			f[P + 16 + 32] = TLM_CLASS_KEEP;
		if (c->off == -2) {     /* CLASS_MAP without runs, final flag cleared */
			put_le(f, 4, 16);
			put_le(f + P + 8, 4, 0);
			put_le(f + P + 12, 4, 0);
			n = P + 16;
		}
		if (c->trunc)
			n = c->trunc;
		ret = decode(f, n, &m, err);
		print_message("%-20s -> %s\n", c->what, err);
		assert_int_equal(ret, -EBADMSG);
		if (!strstr(err, c->expect))
			fail_msg("%s: reason \"%s\" lacks \"%s\"", c->what, err, c->expect);
	}
}

static void test_frame_len(void **state)
{
	uint8_t f[SAMPLE_FRAME_MAX];
	char err[200];
	size_t n = sample_frame(TLM_MSG_PAGE, f, sizeof(f));

	for (size_t i = 0; i < TLM_PROTO_HDR_SIZE; i++)
		assert_int_equal(tlm_proto_frame_len(f, i, err, sizeof(err)), 0);
	assert_int_equal(tlm_proto_frame_len(f, 8, err, sizeof(err)), n);
	/* A bad header is refused before any payload is waited for. */
	put_le(f, 4, 17);
	assert_int_equal(tlm_proto_frame_len(f, 8, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "PAGE: payload length 17, expected 4112"));
}

static void test_encoder_refuses(void **state)
{
	uint8_t f[SAMPLE_FRAME_MAX];
	struct tlm_msg m;
	struct tlm_run r = { 7, 1, 0 };

	sample_msg(TLM_MSG_VM_OPEN, &m);
	strcpy(m.u.vm_open.vm_id, "../etc");
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	sample_msg(TLM_MSG_DEMAND, &m);
	m.u.demand.count = 0;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	sample_msg(TLM_MSG_CLASS_MAP, &m);
	m.u.class_map.runs = &r;
	m.u.class_map.nruns = 1;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	sample_msg(TLM_MSG_ERROR, &m);
	m.u.error.msg[2] = '\n';
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	sample_msg(TLM_MSG_PAGE, &m);
	m.u.page.data = NULL;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	m.type = TLM_MSG__MAX;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	sample_msg(TLM_MSG_PAGE, &m);
	assert_int_equal(tlm_proto_encode(&m, f, 4111), -ENOBUFS);
	assert_int_equal(tlm_proto_encode(&m, f, 4120), 4120);
}

static void test_names_and_ids(void **state)
{
	char id[80];

	assert_string_equal(tlm_msg_name(TLM_MSG_CLASS_MAP), "CLASS_MAP");
	assert_string_equal(tlm_msg_name(0), "UNKNOWN");
	assert_string_equal(tlm_class_name(TLM_CLASS_REF), "ref");
	assert_true(tlm_vmid_valid("a"));
	assert_true(tlm_vmid_valid("VM_1.x-y"));
	assert_false(tlm_vmid_valid(""));
	assert_false(tlm_vmid_valid("."));
	assert_false(tlm_vmid_valid(".."));
	assert_false(tlm_vmid_valid("a/b"));
	assert_false(tlm_vmid_valid("a b"));
	assert_false(tlm_vmid_valid(NULL));
	memset(id, 'x', sizeof(id));
	id[64] = '\0';
	assert_true(tlm_vmid_valid(id));
	id[64] = 'x';
	id[65] = '\0';
	assert_false(tlm_vmid_valid(id));
}

/* A PAGES frame of 64 pages round-trips; its sums and data point into the frame. */
static void test_pages_run(void **state)
{
	static uint8_t data[TLM_PROTO_MAX_PAGES * 4096], sums[TLM_PROTO_MAX_PAGES * 8];
	static uint8_t f[16 + 8 + TLM_PROTO_MAX_PAGES * 4104];
	struct tlm_msg m = { .type = TLM_MSG_PAGES }, out;
	char err[200];
	ssize_t n;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 31 + i / 4096);
	tlm_proto_pages_sums(sums, data, TLM_PROTO_MAX_PAGES);
	m.u.pages = (typeof(m.u.pages)){ 77, TLM_PROTO_MAX_PAGES, sums, data };
	n = tlm_proto_encode(&m, f, sizeof(f));
	assert_int_equal(n, 8 + 16 + TLM_PROTO_MAX_PAGES * 4104);
	assert_int_equal(tlm_proto_frame_size(&m), n);
	assert_int_equal(tlm_proto_decode(f, n, &out, NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(out.u.pages.page, 77);
	assert_int_equal(out.u.pages.count, TLM_PROTO_MAX_PAGES);
	assert_memory_equal(out.u.pages.data, data, sizeof(data));
	for (uint32_t i = 0; i < TLM_PROTO_MAX_PAGES; i++)
		assert_int_equal(tlm_proto_pages_sum(&out, i),
				 tlm_proto_page_sum(data + (size_t)i * 4096));
	/* The encoder refuses what the decoder would. */
	m.u.pages.count = TLM_PROTO_MAX_PAGES + 1;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
	m.u.pages.count = 1;
	m.u.pages.sums = NULL;
	assert_int_equal(tlm_proto_encode(&m, f, sizeof(f)), -EINVAL);
}

static void test_page_sum(void **state)
{
	uint8_t a[TLM_PROTO_PAGE_SIZE] = { 0 }, b[TLM_PROTO_PAGE_SIZE] = { 0 };

	b[4095] = 1;
	assert_int_equal(tlm_proto_page_sum(a), XXH3_64bits(a, sizeof(a)));
	assert_int_not_equal(tlm_proto_page_sum(a), tlm_proto_page_sum(b));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_all),
		cmocka_unit_test(test_round_trip_fields),
		cmocka_unit_test(test_map_kinds),
		cmocka_unit_test(test_empty_final_map_and_max_runs),
		cmocka_unit_test(test_malformed_table),
		cmocka_unit_test(test_frame_len),
		cmocka_unit_test(test_encoder_refuses),
		cmocka_unit_test(test_names_and_ids),
		cmocka_unit_test(test_pages_run),
		cmocka_unit_test(test_page_sum),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
