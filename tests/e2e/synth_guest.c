/*
 * tlm-synth-guest — a stand-in for QEMU in tests: it maps its "RAM" the way QEMU maps a
 * memory-backend-file with share=on (PROT_NONE anonymous reservation, then
 * mmap(MAP_SHARED | MAP_FIXED) of the RAM file over it), so libtlm-glue.so substitutes it.
 *
 *   tlm-synth-guest source --ram F --size N [--template T] --seed S
 *                          --mix template=70,zero=10,ref=5,data=15[,dirty=P] --manifest OUT
 *                          [--live RATE]
 *       fills RAM deterministically from the seed, writes the manifest, prints
 *       "ready addr=0x... size=N pid=P" and waits for SIGTERM.
 *       --live RATE: a running VM. After "ready" it keeps rewriting pages, RATE pages/s,
 *       seeded (a DATA page given new bytes, a page zeroed, turned back into its template
 *       page or into a copy of another one (REF), a few bytes or one byte changed, half a
 *       page written; a third of the writes go to a hot set of 64 pages) until SIGUSR1,
 *       which means "the VM is stopped": it writes nothing more and prints "stopped
 *       writes=W" at once, then rewrites the manifest (XXH3 of every page as it is now),
 *       prints "manifest: template=A zero=B ref=C data=D" and waits for SIGTERM. For
 *       tlm-page-server's live phase the RAM must be tracked: preload the glue with
 *       TLM_TRACK=1.
 *   tlm-synth-guest dest --ram F --size N --manifest IN [--write-check] [--discard-check]
 *                        [--wait-signal] [--hold] [--reverse]
 *       (RAM armed by the glue) prints "mapped addr=0x... pid=P", reads and checks every
 *       page against the manifest (--reverse: last page first, so that the reads meet
 *       pages the daemon's forward class-map sweep has not placed yet: benchmarks),
 *       prints "verify: pages=N mismatches=M ...", class counts, shared_pages=K,
 *       pss_kb=P; --wait-signal: wait for SIGUSR1 before reading (stands for QEMU
 *       waiting for the incoming migration; the manifest is read after it, so that a
 *       live source can write its final one at its stop); --hold: print "holding" and
 *       wait for SIGTERM. Exit 0 only if every page matched and every check passed.
 *   tlm-synth-guest poke --ram F --size N --ctl-fd FD
 *       maps RAM as above (and touches none of it), prints "mapped addr=0x... pid=P", then
 *       serves lines "w I" (byte 123 of page I ^= 0x5a) and "r I" (read that byte) from
 *       the stream socket FD, answering one byte 'k' (or 'e': bad line) after each; exit 0
 *       at EOF. Lets a test decide exactly which pages the guest touches, and when.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "tlm_proto.h"
#include "tlm_test.h"
#include "util.h"
#include "e2e_manifest.h"

struct sg_opts {
	const char *mode, *ram, *tmpl, *manifest, *mix;
	uint64_t size, seed, live_rate;
	int ctl_fd;
	bool live;
	bool write_check, discard_check, wait_signal, hold, reverse;
};

struct sg_mix {
	unsigned pct[5];          /* by enum tlm_page_class */
	unsigned dirty;           /* % of template pages given a few changed bytes */
};

static const char *const sg_class_names[5] = { "-", "template", "zero", "ref", "data" };

static void sg_usage(FILE *f)
{
	fprintf(f, "usage: tlm-synth-guest source --ram F --size N [--template T] --seed S "
		"--mix template=70,zero=10,ref=5,data=15[,dirty=P] --manifest OUT\n"
		"                            [--live PAGES_PER_S]\n"
		"       tlm-synth-guest dest --ram F --size N --manifest IN [--write-check] "
		"[--discard-check] [--wait-signal] [--hold] [--reverse]\n"
		"       tlm-synth-guest poke --ram F --size N --ctl-fd FD\n");
}

static int sg_parse_mix(const char *s, struct sg_mix *mx)
{
	char buf[256], *save = NULL, *tok;
	unsigned sum = 0;

	memset(mx, 0, sizeof(*mx));
	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		unsigned v, *dst = NULL;

		if (!eq || sscanf(eq + 1, "%u", &v) != 1 || v > 100)
			goto bad;
		*eq = '\0';
		for (int c = 1; c <= 4; c++)
			if (strcmp(tok, sg_class_names[c]) == 0)
				dst = &mx->pct[c];
		if (strcmp(tok, "dirty") == 0)
			dst = &mx->dirty;
		if (!dst)
			goto bad;
		*dst = v;
		sum += dst == &mx->dirty ? 0 : v;
	}
	if (sum != 100)
		goto bad;
	return 0;
bad:
	fprintf(stderr, "tlm-synth-guest: bad --mix '%s' (want template=A,zero=B,ref=C,data=D "
		"summing to 100, optional dirty=P)\n", s);
	return -1;
}

/* Map the RAM file like QEMU's qemu_ram_mmap: reservation, then MAP_SHARED|MAP_FIXED. */
static uint8_t *sg_map_ram(const char *path, uint64_t size)
{
	struct stat st;
	void *res, *p;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "tlm-synth-guest: --ram %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if ((uint64_t)st.st_size < size && ftruncate(fd, (off_t)size) < 0) {
		fprintf(stderr, "tlm-synth-guest: --ram %s: resize: %s\n", path, strerror(errno));
		close(fd);
		return NULL;
	}
	res = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	p = res == MAP_FAILED ? res : mmap(res, size, PROT_READ | PROT_WRITE,
					    MAP_SHARED | MAP_FIXED, fd, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "tlm-synth-guest: mapping RAM %s: %s\n", path, strerror(errno));
		if (res != MAP_FAILED)
			munmap(res, size);
	}
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

static const uint8_t *sg_map_template(const char *path, uint64_t need, uint64_t *pages)
{
	struct stat st;
	void *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "tlm-synth-guest: --template %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if ((uint64_t)st.st_size < need) {
		fprintf(stderr, "tlm-synth-guest: --template %s: %lld bytes, need %llu\n", path,
			(long long)st.st_size, (unsigned long long)need);
		close(fd);
		return NULL;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	*pages = (uint64_t)st.st_size / E2E_PAGE;
	return p == MAP_FAILED ? NULL : p;
}

/* Intended class per page: exact counts from the mix, shuffled by the seed. */
static void sg_plan(uint8_t *cls, uint64_t n, const struct sg_mix *mx, uint64_t *rng)
{
	uint64_t i = 0;

	for (int c = 2; c <= 4; c++)
		for (uint64_t k = 0; k < n * mx->pct[c] / 100 && i < n; k++)
			cls[i++] = (uint8_t)c;
	while (i < n)
		cls[i++] = TLM_CLASS_TEMPLATE;
	for (i = n - 1; i > 0; i--) {
		uint64_t j = tt_rand(rng) % (i + 1);
		uint8_t t = cls[i];

		cls[i] = cls[j];
		cls[j] = t;
	}
}

static void sg_fill_random(uint8_t *p, uint64_t *rng)
{
	for (unsigned o = 0; o < E2E_PAGE; o += 8) {
		uint64_t v = tt_rand(rng);

		memcpy(p + o, &v, 8);
	}
}

static bool sg_is_zero(const uint8_t *p)
{
	static const uint8_t zero[E2E_PAGE];

	return memcmp(p, zero, E2E_PAGE) == 0;
}

/* A template page k != i whose content is neither zero nor template page i. */
static uint64_t sg_pick_ref(const uint8_t *t, uint64_t tpages, uint64_t i, uint64_t *rng)
{
	for (int tries = 0; tries < 64; tries++) {
		uint64_t k = tt_rand(rng) % tpages;
		const uint8_t *tk = t + k * E2E_PAGE;

		if (k != i && !sg_is_zero(tk) &&
		    (i >= tpages || memcmp(tk, t + i * E2E_PAGE, E2E_PAGE)))
			return k;
	}
	return UINT64_MAX;
}

/* Build page i as its intended class; returns the class it really has now. */
static uint8_t sg_build_page(uint8_t *p, uint64_t i, uint8_t want, const uint8_t *t,
			     uint64_t tpages, const struct sg_mix *mx, uint64_t *rng)
{
	const uint8_t *ti = t && i < tpages ? t + i * E2E_PAGE : NULL;
	uint64_t k;

	if (want == TLM_CLASS_ZERO) {
		memset(p, 0, E2E_PAGE);
	} else if (want == TLM_CLASS_DATA) {
		sg_fill_random(p, rng);
	} else if (want == TLM_CLASS_REF && t &&
		   (k = sg_pick_ref(t, tpages, i, rng)) != UINT64_MAX) {
		memcpy(p, t + k * E2E_PAGE, E2E_PAGE);
	} else if (want == TLM_CLASS_TEMPLATE && ti && tt_rand(rng) % 100 < mx->dirty) {
		for (int b = 0; b < 4; b++)
			p[tt_rand(rng) % E2E_PAGE] ^= (uint8_t)(1 + tt_rand(rng) % 255);
	}
	/* What the page-server will find: TEMPLATE first, then ZERO, REF, DATA. */
	if (ti && memcmp(p, ti, E2E_PAGE) == 0)
		return TLM_CLASS_TEMPLATE;
	if (sg_is_zero(p))
		return TLM_CLASS_ZERO;
	if (want == TLM_CLASS_REF && t)
		return TLM_CLASS_REF;
	return TLM_CLASS_DATA;
}

static void sg_wait_term(void)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigwait(&set, &sig);
}

static void sg_block_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
}

/* The class page i really has now (m->cls[i]: what it was last made as). */
static uint8_t sg_class_now(const uint8_t *p, uint64_t i, uint8_t made, const uint8_t *t,
			    uint64_t tpages)
{
	if (t && i < tpages && memcmp(p, t + i * E2E_PAGE, E2E_PAGE) == 0)
		return TLM_CLASS_TEMPLATE;
	if (sg_is_zero(p))
		return TLM_CLASS_ZERO;
	return made == TLM_CLASS_REF ? TLM_CLASS_REF : TLM_CLASS_DATA;
}

/* One write of the running guest to page i; returns the class it was made as. */
static uint8_t sg_live_write_one(uint8_t *p, uint64_t i, uint8_t made, const uint8_t *t,
				 uint64_t tpages, uint64_t *rng)
{
	const uint8_t *ti = t && i < tpages ? t + i * E2E_PAGE : NULL;
	uint8_t half[E2E_PAGE / 2];
	uint64_t k;

	switch (tt_rand(rng) % 8) {
	case 0:
	case 1:                                 /* new random bytes: DATA */
		sg_fill_random(p, rng);
		return TLM_CLASS_DATA;
	case 2:                                 /* zeroed */
		memset(p, 0, E2E_PAGE);
		return TLM_CLASS_ZERO;
	case 3:                                 /* back to its template page */
		if (!ti)
			break;
		memcpy(p, ti, E2E_PAGE);
		return TLM_CLASS_TEMPLATE;
	case 4:                                 /* a copy of another template page: REF */
		if (!t || (k = sg_pick_ref(t, tpages, i, rng)) == UINT64_MAX)
			break;
		memcpy(p, t + k * E2E_PAGE, E2E_PAGE);
		return TLM_CLASS_REF;
	case 5:                                 /* a few bytes: a template page turns DATA */
		for (int b = 0; b < 4; b++)
			p[tt_rand(rng) % E2E_PAGE] ^= (uint8_t)(1 + tt_rand(rng) % 255);
		return TLM_CLASS_DATA;
	case 6:                                 /* one byte, near the end of the page */
		p[E2E_PAGE - 1 - tt_rand(rng) % 64]++;
		return made == TLM_CLASS_REF ? TLM_CLASS_DATA : made;
	default:                                /* half a page, the other half stays */
		tt_fill(half, sizeof(half), rng);
		memcpy(p + (tt_rand(rng) % 2) * (E2E_PAGE / 2), half, sizeof(half));
		return TLM_CLASS_DATA;
	}
	sg_fill_random(p, rng);
	return TLM_CLASS_DATA;
}

/*
 * --live: rewrite pages at rate pages/s until SIGUSR1 (the VM stops; SIGTERM/SIGINT end
 * the program). Returns the number of writes, or -1 when a terminating signal came first.
 */
static int64_t sg_live(uint8_t *ram, uint64_t n, struct e2e_manifest *m, const uint8_t *t,
		       uint64_t tpages, uint64_t rate, uint64_t seed)
{
	const struct timespec tick = { 0, 2 * 1000 * 1000 };
	uint64_t rng = seed ^ 0x6c69766577726974ull, hot = tt_rand(&rng) % n, done = 0;
	uint64_t t0 = tlm_now_ns();
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	for (;;) {
		uint64_t due = (tlm_now_ns() - t0) / 1000 * rate / 1000000;

		for (; done < due; done++) {
			uint64_t i = tt_rand(&rng) % 3 == 0 ? (hot + tt_rand(&rng) % 64) % n :
				     tt_rand(&rng) % n;

			m->cls[i] = sg_live_write_one(ram + i * E2E_PAGE, i, m->cls[i], t, tpages,
						      &rng);
		}
		sig = sigtimedwait(&set, NULL, &tick);
		if (sig == SIGUSR1)
			return (int64_t)done;
		if (sig == SIGTERM || sig == SIGINT)
			return -1;
	}
}

/* The manifest of the RAM as it is now (after the live writes). */
static void sg_rehash(const uint8_t *ram, uint64_t n, struct e2e_manifest *m,
		      const uint8_t *t, uint64_t tpages)
{
	memset(m->count, 0, sizeof(m->count));
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *p = ram + i * E2E_PAGE;

		m->cls[i] = sg_class_now(p, i, m->cls[i], t, tpages);
		m->count[m->cls[i]]++;
		m->hash[i] = XXH3_64bits(p, E2E_PAGE);
	}
}

static int sg_source(const struct sg_opts *o)
{
	uint64_t n = o->size / E2E_PAGE, tpages = 0, rng = o->seed;
	const uint8_t *t = NULL;
	struct e2e_manifest m;
	struct sg_mix mx;
	char err[512];
	uint8_t *ram;

	if (!o->manifest || !o->mix || sg_parse_mix(o->mix, &mx) < 0)
		return 2;
	if (o->tmpl && !(t = sg_map_template(o->tmpl, o->size, &tpages)))
		return 1;
	ram = sg_map_ram(o->ram, o->size);
	if (!ram || e2e_manifest_alloc(&m, n) < 0)
		return 1;
	/* Untouched pages must show the template: proves the glue mapped it underneath. */
	if (t && memcmp(ram, t, E2E_PAGE) != 0) {
		fprintf(stderr, "tlm-synth-guest: RAM does not show the template: is "
			"libtlm-glue.so preloaded with TLM_TEMPLATE and TLM_RAM_PATH?\n");
		return 1;
	}
	sg_plan(m.cls, n, &mx, &rng);
	for (uint64_t i = 0; i < n; i++) {
		uint8_t *p = ram + i * E2E_PAGE;

		m.cls[i] = sg_build_page(p, i, m.cls[i], t, tpages, &mx, &rng);
		m.count[m.cls[i]]++;
		m.hash[i] = XXH3_64bits(p, E2E_PAGE);
	}
	if (e2e_manifest_write(o->manifest, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "tlm-synth-guest: %s\n", err);
		return 1;
	}
	printf("classes: template=%llu zero=%llu ref=%llu data=%llu\n",
	       (unsigned long long)m.count[1], (unsigned long long)m.count[2],
	       (unsigned long long)m.count[3], (unsigned long long)m.count[4]);
	printf("ready addr=%p size=%llu pid=%d\n", (void *)ram, (unsigned long long)o->size,
	       (int)getpid());
	fflush(stdout);
	if (o->live) {
		int64_t w = sg_live(ram, n, &m, t, tpages, o->live_rate, o->seed);

		if (w < 0) {
			e2e_manifest_free(&m);
			return 0;
		}
		/* At once: the test freezes now, as after QMP stop; the manifest follows. */
		printf("stopped writes=%lld\n", (long long)w);
		fflush(stdout);
		sg_rehash(ram, n, &m, t, tpages);
		if (e2e_manifest_write(o->manifest, &m, err, sizeof(err)) < 0) {
			fprintf(stderr, "tlm-synth-guest: %s\n", err);
			return 1;
		}
		printf("manifest: template=%llu zero=%llu ref=%llu data=%llu\n",
		       (unsigned long long)m.count[1], (unsigned long long)m.count[2],
		       (unsigned long long)m.count[3], (unsigned long long)m.count[4]);
		fflush(stdout);
	}
	e2e_manifest_free(&m);
	sg_wait_term();
	return 0;
}

/* Pages of [p, p + n pages) mapped from a file / shared (pagemap bit 61). */
static int64_t sg_shared_pages(const uint8_t *p, uint64_t n)
{
	uint64_t ent[512], shared = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	for (uint64_t i = 0; i < n; i += 512) {
		uint64_t cnt = n - i < 512 ? n - i : 512;
		off_t off = (off_t)(((uintptr_t)p / E2E_PAGE + i) * 8);

		if (pread(fd, ent, cnt * 8, off) != (ssize_t)(cnt * 8)) {
			close(fd);
			return -EIO;
		}
		for (uint64_t j = 0; j < cnt; j++)
			shared += (ent[j] >> 61) & 1;
	}
	close(fd);
	return (int64_t)shared;
}

static long sg_pss_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/smaps_rollup", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static uint64_t sg_verify(const uint8_t *ram, const struct e2e_manifest *m, bool reverse,
			  uint64_t bad[5])
{
	uint64_t miss = 0;

	for (uint64_t k = 0; k < m->pages; k++) {
		uint64_t i = reverse ? m->pages - 1 - k : k;

		if (XXH3_64bits(ram + i * E2E_PAGE, E2E_PAGE) == m->hash[i])
			continue;
		if (miss < 5)
			fprintf(stderr, "tlm-synth-guest: page %llu (%s) differs from the "
				"manifest\n", (unsigned long long)i,
				sg_class_names[m->cls[i] < 5 ? m->cls[i] : 0]);
		miss++;
		bad[m->cls[i] < 5 ? m->cls[i] : 0]++;
	}
	return miss;
}

/* Write and re-read 8 pages spread over RAM (faults must be resolved for writes too). */
static int sg_write_check(uint8_t *ram, uint64_t n)
{
	int ok = 0;

	for (int k = 0; k < 8; k++) {
		uint8_t *p = ram + (n - 1) * k / 7 * E2E_PAGE;

		memset(p, 0xa5 ^ k, E2E_PAGE);
		ok += p[0] == (0xa5 ^ k) && p[E2E_PAGE - 1] == (0xa5 ^ k);
	}
	printf("write_check: pages=8 ok=%d\n", ok);
	return ok == 8 ? 0 : -1;
}

/* Discard 4 pages like QEMU's ram_block_discard_range; they must read back as zeros. */
static int sg_discard_check(uint8_t *ram, uint64_t n)
{
	uint64_t first = n / 2 < 4 ? 0 : n / 2;
	int zero = 0;

	if (madvise(ram + first * E2E_PAGE, 4 * E2E_PAGE, MADV_DONTNEED) < 0) {
		fprintf(stderr, "tlm-synth-guest: madvise(DONTNEED): %s\n", strerror(errno));
		return -1;
	}
	for (uint64_t i = first; i < first + 4; i++)
		zero += sg_is_zero(ram + i * E2E_PAGE);
	printf("discard: pages=4 zero=%d\n", zero);
	return zero == 4 ? 0 : -1;
}

static void sg_wait_usr1(void)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigwait(&set, &sig);
	if (sig == SIGTERM)
		exit(3);
}

static void sg_print_counts(const char *what, const uint64_t c[5])
{
	printf("%s: template=%llu zero=%llu ref=%llu data=%llu\n", what,
	       (unsigned long long)c[1], (unsigned long long)c[2], (unsigned long long)c[3],
	       (unsigned long long)c[4]);
}

static int sg_dest(const struct sg_opts *o)
{
	uint64_t n = o->size / E2E_PAGE, bad[5] = { 0 }, miss, t0;
	struct e2e_manifest m;
	int64_t shared;
	char err[512];
	uint8_t *ram;
	int rc = 0;

	if (!o->manifest) {
		fprintf(stderr, "tlm-synth-guest: --manifest missing\n");
		return 2;
	}
	ram = sg_map_ram(o->ram, o->size);
	if (!ram)
		return 1;
	printf("mapped addr=%p pid=%d\n", (void *)ram, (int)getpid());
	fflush(stdout);
	if (o->wait_signal)
		sg_wait_usr1();
	/* Read now: a live source writes its final manifest when it stops. */
	if (e2e_manifest_read(o->manifest, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "tlm-synth-guest: %s\n", err);
		return 2;
	}
	if (m.pages != n) {
		fprintf(stderr, "tlm-synth-guest: manifest has %llu pages, --size gives %llu\n",
			(unsigned long long)m.pages, (unsigned long long)n);
		e2e_manifest_free(&m);
		return 2;
	}
	t0 = tlm_now_ns();
	miss = sg_verify(ram, &m, o->reverse, bad);
	printf("verify: pages=%llu mismatches=%llu read_ms=%.1f\n", (unsigned long long)n,
	       (unsigned long long)miss, (double)(tlm_now_ns() - t0) / 1e6);
	sg_print_counts("classes", m.count);
	sg_print_counts("mismatch_by_class", bad);
	shared = sg_shared_pages(ram, n);
	printf("shared_pages=%lld\n", (long long)shared);
	if (o->discard_check && sg_discard_check(ram, n) < 0)
		rc = 1;
	if (o->write_check && sg_write_check(ram, n) < 0)
		rc = 1;
	printf("pss_kb=%ld\n", sg_pss_kb());
	e2e_manifest_free(&m);
	if (o->hold) {
		printf("holding\n");
		fflush(stdout);
		sg_wait_term();
	}
	return miss || rc ? 1 : 0;
}

/* One "w I" / "r I" command on page I; false for a bad line. */
static bool sg_poke_one(uint8_t *ram, uint64_t n, const char *line)
{
	unsigned long long i;
	char op;

	if (sscanf(line, "%c %llu", &op, &i) != 2 || i >= n || (op != 'w' && op != 'r'))
		return false;
	/* Byte 123: anywhere in the page would do; a test finds it in the RAM file. */
	if (op == 'w')
		ram[i * E2E_PAGE + 123] ^= 0x5a;
	else
		(void)*(volatile uint8_t *)&ram[i * E2E_PAGE + 123];
	return true;
}

static int sg_poke(const struct sg_opts *o)
{
	FILE *in = o->ctl_fd >= 0 ? fdopen(o->ctl_fd, "r") : NULL;
	uint8_t *ram;
	char line[64];

	if (!in) {
		fprintf(stderr, "tlm-synth-guest: poke needs --ctl-fd\n");
		return 2;
	}
	ram = sg_map_ram(o->ram, o->size);
	if (!ram)
		return 1;
	printf("mapped addr=%p pid=%d\n", (void *)ram, (int)getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), in)) {
		char ok = sg_poke_one(ram, o->size / E2E_PAGE, line) ? 'k' : 'e';

		if (write(o->ctl_fd, &ok, 1) != 1)
			return 1;
	}
	return 0;
}

static int sg_parse(int argc, char **argv, struct sg_opts *o)
{
	static const struct option lo[] = {
		{ "ram", 1, 0, 'r' }, { "size", 1, 0, 's' }, { "template", 1, 0, 't' },
		{ "seed", 1, 0, 'S' }, { "mix", 1, 0, 'm' }, { "manifest", 1, 0, 'M' },
		{ "write-check", 0, 0, 'w' }, { "discard-check", 0, 0, 'd' },
		{ "wait-signal", 0, 0, 'W' }, { "hold", 0, 0, 'H' }, { "reverse", 0, 0, 'R' },
		{ "ctl-fd", 1, 0, 'C' }, { "live", 1, 0, 'L' }, { "help", 0, 0, 'h' },
		{ 0, 0, 0, 0 } };
	uint64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	o->ctl_fd = -1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'r': o->ram = optarg; break;
		case 's': if (tlm_parse_size(optarg, &o->size) < 0) goto bad; break;
		case 't': o->tmpl = optarg; break;
		case 'S': if (tlm_parse_u64(optarg, &o->seed) < 0) goto bad; break;
		case 'm': o->mix = optarg; break;
		case 'M': o->manifest = optarg; break;
		case 'w': o->write_check = true; break;
		case 'd': o->discard_check = true; break;
		case 'W': o->wait_signal = true; break;
		case 'H': o->hold = true; break;
		case 'R': o->reverse = true; break;
		case 'C': if (tlm_parse_u64(optarg, &v) < 0 || v > INT_MAX) goto bad;
			  o->ctl_fd = (int)v; break;
		case 'L': if (tlm_parse_u64(optarg, &o->live_rate) < 0 || !o->live_rate ||
			      o->live_rate > 10000000) goto bad;
			  o->live = true; break;
		case 'h': sg_usage(stdout); exit(0);
		default: goto usage;
		}
	}
	if (optind + 1 != argc || !o->ram || !o->size || o->size % E2E_PAGE)
		goto usage;
	o->mode = argv[optind];
	return 0;
bad:
	fprintf(stderr, "tlm-synth-guest: bad value '%s'\n", optarg);
usage:
	sg_usage(stderr);
	return -1;
}

int main(int argc, char **argv)
{
	struct sg_opts o;

	if (sg_parse(argc, argv, &o) < 0)
		return 2;
	sg_block_signals();
	if (strcmp(o.mode, "source") == 0)
		return sg_source(&o);
	if (strcmp(o.mode, "dest") == 0)
		return sg_dest(&o);
	if (strcmp(o.mode, "poke") == 0)
		return sg_poke(&o);
	fprintf(stderr, "tlm-synth-guest: unknown mode '%s' (source, dest or poke)\n", o.mode);
	return 2;
}
