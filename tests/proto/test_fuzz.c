/*
 * test_fuzz.c — seeded random mutation of valid frames (~100k). Every mutated frame must
 * either decode, or be refused with -EBADMSG and a reason; nothing may crash or read out of
 * bounds (run under ASan with -DTLM_SANITIZE=ON). A frame that decodes must re-encode to
 * the very same bytes: the decoder accepts nothing the encoder would not produce.
 * TLM_FUZZ_SEED / TLM_FUZZ_ITERS override the defaults.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "samples.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: deterministic for a given seed, so failures reproduce */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

static uint64_t env_u64(const char *name, uint64_t def)
{
	const char *s = getenv(name);

	return s && *s ? strtoull(s, NULL, 0) : def;
}

/* Interesting values for length/count/page fields. */
static uint64_t edge_value(void)
{
	static const uint64_t v[] = { 0, 1, 2, 3, 15, 16, 255, 256, 257, 4096, 65535, 65536,
				      (1ull << 20), (1ull << 20) + 1, (1ull << 52) - 1,
				      1ull << 52, UINT32_MAX, UINT64_MAX, UINT64_MAX - 1 };

	return v[rnd() % (sizeof(v) / sizeof(v[0]))];
}

static void mutate(uint8_t *f, size_t *n, size_t cap)
{
	size_t pos = *n ? rnd() % *n : 0;
	uint64_t v;

	switch (rnd() % 8) {
	case 0:         /* bit flip */
		if (*n)
			f[pos] ^= 1u << (rnd() % 8);
		break;
	case 1:         /* random byte */
		if (*n)
			f[pos] = (uint8_t)rnd();
		break;
	case 2:         /* truncate */
		*n = *n ? rnd() % *n : 0;
		break;
	case 3:         /* extend with garbage */
		v = rnd() % 64;
		for (size_t i = 0; i < v && *n < cap; i++)
			f[(*n)++] = (uint8_t)rnd();
		break;
	case 4:         /* edge value at a random aligned-ish spot */
		v = edge_value();
		for (size_t i = 0, w = 1u << (rnd() % 4); i < w && pos + i < *n; i++)
			f[pos + i] = (uint8_t)(v >> (8 * i));
		break;
	case 5:         /* another type in the header */
		if (*n >= 6)
			f[4] = (uint8_t)(rnd() % (TLM_MSG__MAX + 2));
		break;
	default:        /* keep the header length consistent, so the payload is reached */
		if (*n >= 8) {
			uint32_t plen = (uint32_t)(*n - 8);

			memcpy(f, (uint8_t[]){ plen, plen >> 8, plen >> 16, plen >> 24 }, 4);
		}
		break;
	}
}

static void test_mutations(void **state)
{
	static uint8_t f[2 * SAMPLE_FRAME_MAX], g[2 * SAMPLE_FRAME_MAX];
	struct tlm_run runs[64];
	uint64_t iters = env_u64("TLM_FUZZ_ITERS", 100000);
	uint64_t ok = 0, bad = 0;
	struct tlm_msg m;
	char err[256];

	rng_state = env_u64("TLM_FUZZ_SEED", 0x746c6d31) | 1;
	print_message("seed 0x%llx, %llu iterations\n", (unsigned long long)rng_state,
		      (unsigned long long)iters);
	for (uint64_t it = 0; it < iters; it++) {
		enum tlm_msg_type t = TLM_MSG_HELLO + rnd() % (TLM_MSG__MAX - 1);
		size_t n = sample_frame(t, f, SAMPLE_FRAME_MAX);
		int k = 1 + rnd() % 4, ret;

		while (k--)
			mutate(f, &n, SAMPLE_FRAME_MAX);
		err[0] = '\0';
		ret = tlm_proto_decode(f, n, &m, runs, 64, err, sizeof(err));
		if (ret == -EBADMSG) {
			if (!err[0])
				fail_msg("iteration %llu: refused without a reason",
					 (unsigned long long)it);
			bad++;
			continue;
		}
		if (ret != 0)
			fail_msg("iteration %llu: decode returned %d", (unsigned long long)it, ret);
		ok++;
		assert_int_equal(tlm_proto_encode(&m, g, sizeof(g)), n);
		if (memcmp(f, g, n))
			fail_msg("iteration %llu: %s decoded but re-encodes differently",
				 (unsigned long long)it, tlm_msg_name(m.type));
	}
	print_message("decoded %llu, refused %llu\n", (unsigned long long)ok,
		      (unsigned long long)bad);
	/* Both outcomes must occur, or the mutator is not exercising the decoder. */
	assert_true(ok > iters / 100);
	assert_true(bad > iters / 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mutations),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
