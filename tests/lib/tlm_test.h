/*
 * tlm_test.h — what every tlm test program shares: the skip policy, a seeded RNG,
 * deadlines and waiting on a condition.
 *
 * Skips.  A test skips (exit 77, which ctest reports as skipped) only for what the
 * machine lacks, never for missing code, and always says why:
 *
 *     if (tt_uffd_missing(UFFD_FEATURE_MINOR_SHMEM, why, sizeof(why)))
 *             return tt_skip("uffd", "%s", why);
 *
 * tt_skip() returns 77, or 1 when the environment variable TLM_REQUIRE (comma-separated
 * kinds: uffd, root, qemu, kvm) names the kind: CI sets TLM_REQUIRE=uffd,qemu,root so it
 * cannot pass by skipping. Shell tests follow the same rule (tests/lib/skip.sh).
 *
 * Waiting.  Tests wait on the condition they need, never on elapsed time:
 *
 *     if (!tt_wait(page_is_mapped, f, 10000))
 *             fail_msg("page 10 was never mapped by the sweep");
 *
 * The deadline is generous (a loaded 2-core machine) and only bounds a hang.
 */
#ifndef TLM_TEST_H
#define TLM_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Skip or fail (see above): prints "SKIP: reason" or "FAIL: required KIND ...". */
int tt_skip(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True when TLM_REQUIRE names kind. */
bool tt_required(const char *kind);
/* Userfaultfd with every feature bit of need: NULL, else the reason (in why). */
const char *tt_uffd_missing(uint64_t need, char *why, size_t len);

/* splitmix64: a fast, seedable stream for test data. */
static inline uint64_t tt_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Fill len bytes (a multiple of 8) from the stream. */
void tt_fill(void *buf, size_t len, uint64_t *state);

/* Monotonic milliseconds, and a deadline ms from now for timed waits. */
uint64_t tt_now_ms(void);
struct timespec tt_deadline(int ms);     /* CLOCK_REALTIME: pthread_cond_timedwait */
void tt_sleep_ms(int ms);

/* Poll cond(arg) every millisecond or so until it holds (true) or ms pass (false). */
bool tt_wait(bool (*cond)(void *arg), void *arg, int ms);

#endif

/* Stats JSON (the daemons' `stats` replies), parsed with jansson. The value of the first
 * member named key (depth first) inside the first object member named in (NULL: anywhere).
 * 0, -ENOENT (absent or another type) or -EINVAL (not JSON). */
int tt_json_u64(const char *json, const char *in, const char *key, uint64_t *out);
int tt_json_str(const char *json, const char *in, const char *key, char *out, size_t len);

/* Inside a cmocka case (include <cmocka.h> first): skip this case for what the machine
 * lacks, or fail it when TLM_REQUIRE names kind. The reason goes to the output. */
#define TT_SKIP_CASE(kind, ...)                                                    \
	do {                                                                       \
		print_message(__VA_ARGS__);                                        \
		if (tt_required(kind))                                             \
			fail_msg("required %s unavailable (TLM_REQUIRE)", kind);   \
		skip();                                                            \
	} while (0)
