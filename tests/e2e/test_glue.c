/*
 * test_glue.c — libtlm-glue.so against a tiny in-test fake tlm-uffd-server (label uffd).
 *
 * A real tlm-synth-guest process with the glue preloaded maps its RAM the way QEMU does;
 * the test plays the daemon: it receives REGION (+ the uffd over SCM_RIGHTS), resolves the
 * guest's faults with tlm_uffd_* from the template (CONTINUE / ZEROPAGE / COPY), and
 * checks what the guest reads. Proves: the interposition, the private template mapping
 * (frames shared with the page cache, template file never written), fd passing in both
 * arming modes, REMOVE events on discards, DONE handling, and the refusals (template too
 * short, daemon absent, guest RAM on hugetlbfs).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include "tlm_test.h"
#include "tlm_proto.h"
#include "util.h"
#include "e2e_manifest.h"
#include "e2e_proc.h"
#include "e2e_tmpl.h"
#include "tlm_uffd.h"

#define FX_PAGES 512u
#define FX_SIZE (FX_PAGES * E2E_PAGE)

struct fx {
	char *dir;
	char tmpl[600], ram[600], sock[600], manifest[600], log[600];
	char guest_bin[600], glue[600];
	uint8_t digest[16];
	const uint8_t *tmap;              /* template, read-only */
	uint8_t *content;                 /* expected guest RAM */
	uint8_t cls[FX_PAGES];
	uint32_t ref_k[FX_PAGES];
	int lsock;
};

/* What the fake daemon saw and what the guest printed. */
struct fx_result {
	uint64_t minor, missing, removes, unmaps, placed, proactive;
	bool holding;
	long long mismatches, shared, pss_kb, discard_zero, write_ok;
};

static void fx_build_content(struct fx *f, bool with_template)
{
	uint64_t rng = 42;

	for (uint32_t i = 0; i < FX_PAGES; i++) {
		uint8_t *p = f->content + (size_t)i * E2E_PAGE;
		unsigned kind = i % 8;

		if (!with_template)
			kind = kind % 2 ? 6 : 4;
		f->cls[i] = kind < 4 ? TLM_CLASS_TEMPLATE : kind == 4 ? TLM_CLASS_ZERO :
			    kind == 5 ? TLM_CLASS_REF : TLM_CLASS_DATA;
		f->ref_k[i] = (i * 7 + 3) % FX_PAGES;
		if (f->ref_k[i] == i)
			f->ref_k[i] = (i + 1) % FX_PAGES;
		if (f->cls[i] == TLM_CLASS_TEMPLATE)
			memcpy(p, f->tmap + (size_t)i * E2E_PAGE, E2E_PAGE);
		else if (f->cls[i] == TLM_CLASS_REF)
			memcpy(p, f->tmap + (size_t)f->ref_k[i] * E2E_PAGE, E2E_PAGE);
		else if (f->cls[i] == TLM_CLASS_DATA)
			for (unsigned o = 0; o < E2E_PAGE; o++)
				p[o] = (uint8_t)((rng = rng * 6364136223846793005ull + 1) >> 56);
	}
}

static void fx_write_manifest(struct fx *f)
{
	struct e2e_manifest m;
	char err[256];

	assert_int_equal(e2e_manifest_alloc(&m, FX_PAGES), 0);
	for (uint32_t i = 0; i < FX_PAGES; i++) {
		m.hash[i] = XXH3_64bits(f->content + (size_t)i * E2E_PAGE, E2E_PAGE);
		m.cls[i] = f->cls[i];
		m.count[f->cls[i]]++;
	}
	assert_int_equal(e2e_manifest_write(f->manifest, &m, err, sizeof(err)), 0);
	e2e_manifest_free(&m);
}

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char err[256];
	int fd;

	assert_non_null(f);
	assert_int_equal(e2e_bin(f->guest_bin, sizeof(f->guest_bin), "TLM_TEST_BIN_DIR",
				 "e2e/tlm-synth-guest"), 0);
	assert_int_equal(e2e_bin(f->glue, sizeof(f->glue), "TLM_GLUE", NULL), 0);
	/* MINOR faults need shmem: the template lives on tmpfs. */
	assert_non_null(f->dir = e2e_mkdtemp("/dev/shm"));
	snprintf(f->tmpl, sizeof(f->tmpl), "%s/base.pages", f->dir);
	snprintf(f->ram, sizeof(f->ram), "%s/ram", f->dir);
	snprintf(f->sock, sizeof(f->sock), "%s/glue.sock", f->dir);
	snprintf(f->manifest, sizeof(f->manifest), "%s/manifest", f->dir);
	snprintf(f->log, sizeof(f->log), "%s/guest.log", f->dir);
	assert_int_equal(e2e_make_pages(f->tmpl, FX_PAGES, 7), 0);
	assert_int_equal(e2e_write_index(f->tmpl, f->digest), 0);
	fd = open(f->tmpl, O_RDONLY);
	f->tmap = mmap(NULL, FX_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	assert_true(f->tmap != MAP_FAILED);
	assert_non_null(f->content = calloc(1, FX_SIZE));
	f->lsock = tlm_unix_listen(f->sock, SOCK_SEQPACKET, err, sizeof(err));
	assert_true(f->lsock >= 0);
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	close(f->lsock);
	munmap((void *)f->tmap, FX_SIZE);
	free(f->content);
	e2e_rmrf(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

static void fx_spawn_dest(struct fx *f, struct e2e_proc *g, const char *arm, bool tmpl,
			  const char *sock, const char *extra)
{
	char e_pre[700], e_ram[700], e_tmpl[700], e_sock[700], e_arm[64];
	char *env[] = { e_pre, e_ram, tmpl ? e_tmpl : "TLM_TEMPLATE", e_sock, e_arm,
			"TLM_VM_ID=vmt", "TLM_SOURCE=127.0.0.1:1", "TLM_LOG_LEVEL=debug", NULL };
	char *argv[] = { f->guest_bin, "dest", "--ram", f->ram, "--size", "2M", "--manifest",
			 f->manifest, "--write-check", "--discard-check", "--hold",
			 (char *)extra, NULL };

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", f->glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", f->ram);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", f->tmpl);
	snprintf(e_sock, sizeof(e_sock), "TLM_SOCK=%s", sock);
	snprintf(e_arm, sizeof(e_arm), "TLM_ARM=%s", arm);
	truncate(f->log, 0);
	assert_int_equal(e2e_spawn(g, "dest", argv, env, f->log), 0);
}

static int fx_accept(struct fx *f, int timeout_ms)
{
	struct pollfd p = { .fd = f->lsock, .events = POLLIN };

	if (poll(&p, 1, timeout_ms) != 1)
		return -ETIMEDOUT;
	return accept4(f->lsock, NULL, NULL, SOCK_CLOEXEC);
}

static void fx_recv(int c, struct tlm_local_msg *m, int *fd, uint32_t type)
{
	struct pollfd p = { .fd = c, .events = POLLIN };
	char err[256];
	ssize_t n;

	assert_int_equal(poll(&p, 1, 10000), 1);
	n = tlm_local_recv(c, m, fd);
	assert_int_equal(n, sizeof(*m));
	if (tlm_local_check(m, (size_t)n, err, sizeof(err)) < 0)
		fail_msg("bad local message: %s", err);
	assert_int_equal(m->type, type);
}

/* ---- the fake daemon -------------------------------------------------------------------- */

struct fx_daemon {
	struct fx *f;
	struct tlm_uffd u;
	uint8_t *base;
	bool removed[FX_PAGES];
	uint32_t pend[256];
	unsigned pend_pf[256], npend;
	struct fx_result r;
};

static int fx_place(struct fx_daemon *d, uint32_t i, unsigned pf)
{
	struct fx *f = d->f;
	uint8_t *dst = d->base + (size_t)i * E2E_PAGE;
	const uint8_t *src;
	size_t done;
	int rc;

	if (d->removed[i] || f->cls[i] == TLM_CLASS_ZERO) {
		rc = tlm_uffd_zeropage(&d->u, dst, E2E_PAGE, 0, &done, NULL);
	} else if (f->cls[i] == TLM_CLASS_TEMPLATE && (pf & TLM_UFFD_PF_MINOR)) {
		rc = tlm_uffd_continue(&d->u, dst, E2E_PAGE, 0, &done, NULL);
	} else {
		src = f->cls[i] == TLM_CLASS_TEMPLATE ? f->tmap + (size_t)i * E2E_PAGE :
		      f->cls[i] == TLM_CLASS_REF ? f->tmap + (size_t)f->ref_k[i] * E2E_PAGE :
		      f->content + (size_t)i * E2E_PAGE;
		rc = tlm_uffd_copy(&d->u, dst, src, E2E_PAGE, 0, &done, NULL);
	}
	if (rc == -EEXIST)
		rc = tlm_uffd_wake(&d->u, dst, E2E_PAGE);
	d->r.placed += rc == 0;
	return rc;
}

static void fx_on_event(struct fx_daemon *d, const struct tlm_uffd_event *ev)
{
	uint64_t base = (uint64_t)(uintptr_t)d->base;

	switch (ev->type) {
	case TLM_UFFD_EV_PAGEFAULT:
		assert_true(ev->addr >= base && ev->addr < base + FX_SIZE);
		assert_true(d->npend < 256);
		d->pend[d->npend] = (uint32_t)((ev->addr - base) / E2E_PAGE);
		d->pend_pf[d->npend++] = ev->pf_flags;
		if (ev->pf_flags & TLM_UFFD_PF_MINOR)
			d->r.minor++;
		else
			d->r.missing++;
		break;
	case TLM_UFFD_EV_REMOVE:
		d->r.removes++;
		for (uint64_t a = ev->addr; a < ev->end; a += E2E_PAGE)
			if (a >= base && a < base + FX_SIZE)
				d->removed[(a - base) / E2E_PAGE] = true;
		break;
	case TLM_UFFD_EV_UNMAP:
		d->r.unmaps++;
		break;
	default:
		break;
	}
}

/* Read every pending event, then resolve the queued faults (-EAGAIN: retry next round). */
static void fx_pump(struct fx_daemon *d)
{
	struct tlm_uffd_event ev[16];
	unsigned keep = 0;
	int n;

	while ((n = tlm_uffd_read_events(&d->u, ev, 16)) > 0)
		for (int i = 0; i < n; i++)
			fx_on_event(d, &ev[i]);
	for (unsigned k = 0; k < d->npend; k++) {
		int rc = fx_place(d, d->pend[k], d->pend_pf[k]);

		if (rc == -EAGAIN) {
			d->pend[keep] = d->pend[k];
			d->pend_pf[keep++] = d->pend_pf[k];
		} else if (rc < 0) {
			fail_msg("placing page %u: %s", d->pend[k], strerror(-rc));
		}
	}
	d->npend = keep;
}

/* Map the template pages of the first half with no fault pending
 * (docs/ARCHITECTURE.md F2). */
static void fx_proactive(struct fx_daemon *d)
{
	for (uint32_t i = 0; i < FX_PAGES / 2; i++) {
		size_t done = 0, existed = 0;

		if (d->f->cls[i] != TLM_CLASS_TEMPLATE)
			continue;
		assert_int_equal(tlm_uffd_continue(&d->u, d->base + (size_t)i * E2E_PAGE,
						   E2E_PAGE, TLM_UFFD_SKIP_EXISTING, &done,
						   &existed), 0);
		d->r.proactive += done / E2E_PAGE;
	}
}

static void fx_parse(struct fx_result *r, const char *l)
{
	sscanf(l, "verify: pages=%*u mismatches=%lld", &r->mismatches);
	sscanf(l, "shared_pages=%lld", &r->shared);
	sscanf(l, "pss_kb=%lld", &r->pss_kb);
	sscanf(l, "discard: pages=4 zero=%lld", &r->discard_zero);
	sscanf(l, "write_check: pages=8 ok=%lld", &r->write_ok);
	if (strcmp(l, "holding") == 0)
		r->holding = true;
}

static void fx_serve(struct fx_daemon *d, struct e2e_proc *g)
{
	uint64_t end = tt_now_ms() + 30000;
	char line[512];

	d->r.mismatches = d->r.shared = d->r.discard_zero = d->r.write_ok = -1;
	while (!d->r.holding && g->out >= 0 && tt_now_ms() < end) {
		struct pollfd p[2] = { { .fd = d->u.fd, .events = POLLIN },
				       { .fd = g->out, .events = POLLIN } };

		poll(p, 2, 50);
		fx_pump(d);
		while (e2e_read_line(g, line, sizeof(line), 0) == 1)
			fx_parse(&d->r, line);
	}
	assert_true(d->r.holding);
}

static void fx_send(int c, uint32_t type, const struct tlm_local_msg *region)
{
	struct tlm_local_msg m = *region;

	m.type = type;
	m.flags = 0;
	assert_int_equal(tlm_local_send(c, &m, -1), 0);
}

static void fx_finish(struct fx *f, struct fx_daemon *d, int c, const struct tlm_local_msg *rm,
		      struct e2e_proc *g)
{
	uint64_t end = tt_now_ms() + 5000;

	assert_int_equal(tlm_uffd_unregister(&d->u, d->base, FX_SIZE), 0);
	fx_send(c, TLM_LOCAL_DONE, rm);
	while (!e2e_file_contains(f->log, "migration done") && tt_now_ms() < end)
		usleep(10000);
	assert_true(e2e_file_contains(f->log, "migration done"));
	assert_int_equal(e2e_stop(g, SIGTERM, 5000), 0);
	tlm_uffd_close(&d->u);
	close(c);
	e2e_close(g);
}

static uint64_t fx_file_hash(const char *path)
{
	char *s = e2e_read_file(path);
	uint64_t h;

	assert_non_null(s);
	h = XXH3_64bits(s, FX_SIZE);
	free(s);
	return h;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_map_mode_template(void **state)
{
	struct fx *f = *state;
	struct fx_daemon d = { .f = f };
	struct tlm_local_msg m;
	struct e2e_proc g;
	uint64_t before = fx_file_hash(f->tmpl);
	int c, fd;

	fx_build_content(f, true);
	fx_write_manifest(f);
	fx_spawn_dest(f, &g, "map", true, f->sock, NULL);
	c = fx_accept(f, 10000);
	assert_true(c >= 0);
	fx_recv(c, &m, &fd, TLM_LOCAL_REGION);
	assert_true(fd >= 0);
	assert_int_equal(m.flags, TLM_REGION_TEMPLATE | TLM_REGION_ARMED);
	assert_int_equal(m.size, FX_SIZE);
	assert_int_equal(m.offset, 0);
	assert_int_equal(m.page_size, E2E_PAGE);
	assert_memory_equal(m.digest, f->digest, 16);
	assert_string_equal(m.vm_id, "vmt");
	assert_string_equal(m.source, "127.0.0.1:1");
	assert_true(m.uffd_features & UFFD_FEATURE_MINOR_SHMEM);
	assert_true(m.uffd_features & UFFD_FEATURE_EVENT_REMOVE);
	tlm_uffd_adopt(&d.u, fd, m.uffd_features);
	d.base = (uint8_t *)(uintptr_t)m.base;
	fx_proactive(&d);
	fx_serve(&d, &g);
	print_message("map/template: faults minor=%llu missing=%llu proactive=%llu removes=%llu "
		      "shared=%lld pss_kb=%lld\n", (unsigned long long)d.r.minor,
		      (unsigned long long)d.r.missing, (unsigned long long)d.r.proactive,
		      (unsigned long long)d.r.removes, d.r.shared, d.r.pss_kb);
	assert_int_equal(d.r.mismatches, 0);
	assert_true(d.r.proactive >= FX_PAGES / 4);
	/* Proactively mapped pages never fault: at most the other pages did. */
	assert_true(d.r.minor + d.r.missing <= FX_PAGES - d.r.proactive + 16);
	assert_true(d.r.minor > 0);
	assert_true(d.r.shared >= FX_PAGES / 2);     /* every TEMPLATE page: page-cache frame */
	assert_int_equal(d.r.discard_zero, 4);
	assert_true(d.r.removes >= 1);
	assert_int_equal(d.r.write_ok, 8);
	assert_true(e2e_file_contains(f->log, "armed, handed to tlm-uffd-server"));
	fx_finish(f, &d, c, &m, &g);
	assert_true(fx_file_hash(f->tmpl) == before);   /* the guest never wrote the template */
}

static void test_deferred_anonymous(void **state)
{
	struct fx *f = *state;
	struct fx_daemon d = { .f = f };
	struct tlm_local_msg m, u;
	struct e2e_proc g;
	char line[256];
	int c, fd;

	fx_build_content(f, false);
	fx_write_manifest(f);
	fx_spawn_dest(f, &g, "deferred", false, f->sock, "--wait-signal");
	c = fx_accept(f, 10000);
	assert_true(c >= 0);
	fx_recv(c, &m, &fd, TLM_LOCAL_REGION);
	assert_int_equal(fd, -1);
	assert_int_equal(m.flags, 0);
	assert_int_equal(m.uffd_features, 0);
	assert_int_equal(e2e_expect(&g, "mapped addr=", line, sizeof(line), 10000), 1);
	fx_send(c, TLM_LOCAL_ARM, &m);
	fx_recv(c, &u, &fd, TLM_LOCAL_UFFD);
	assert_true(fd >= 0);
	assert_int_equal(u.base, m.base);
	assert_true(u.flags & TLM_REGION_ARMED);
	assert_false(u.uffd_features & UFFD_FEATURE_MINOR_SHMEM);
	tlm_uffd_adopt(&d.u, fd, u.uffd_features);
	d.base = (uint8_t *)(uintptr_t)u.base;
	kill(g.pid, SIGUSR1);
	fx_serve(&d, &g);
	print_message("deferred/anon: faults missing=%llu minor=%llu removes=%llu\n",
		      (unsigned long long)d.r.missing, (unsigned long long)d.r.minor,
		      (unsigned long long)d.r.removes);
	assert_int_equal(d.r.mismatches, 0);
	assert_int_equal(d.r.minor, 0);
	assert_true(d.r.missing >= FX_PAGES / 2);
	assert_int_equal(d.r.discard_zero, 4);
	assert_int_equal(d.r.write_ok, 8);
	assert_true(e2e_file_contains(f->log, "armed on request"));
	fx_finish(f, &d, c, &m, &g);
}

/* The mmap must fail (ENODEV) with a reason, never give the guest other memory. */
static void test_template_too_short(void **state)
{
	struct fx *f = *state;
	char shortp[500];
	uint8_t dg[16];
	struct e2e_proc g;
	int st;

	snprintf(shortp, sizeof(shortp), "%s/short.pages", f->dir);
	assert_int_equal(e2e_make_pages(shortp, FX_PAGES / 2, 9), 0);
	assert_int_equal(e2e_write_index(shortp, dg), 0);
	fx_build_content(f, true);
	fx_write_manifest(f);
	snprintf(f->tmpl, sizeof(f->tmpl), "%s", shortp);   /* fixture is per test */
	fx_spawn_dest(f, &g, "map", true, f->sock, NULL);
	assert_int_equal(e2e_wait(&g, 10000, &st), 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_true(e2e_file_contains(f->log, "tlm-glue:"));
	assert_true(e2e_file_contains(f->log, "the RAM mapping needs"));
	assert_true(e2e_file_contains(f->log, "No such device"));
	e2e_close(&g);
}

/*
 * Guest RAM on hugetlbfs: refused before anything is mapped, with one line saying what to
 * change. The mount needs no reserved huge pages: the glue refuses before the mmap that
 * would reserve them.
 */
static void test_ram_on_hugetlbfs(void **state)
{
	struct fx *f = *state;
	char mnt[560];
	struct e2e_proc g;
	int st;

	snprintf(mnt, sizeof(mnt), "%s/huge", f->dir);
	assert_int_equal(mkdir(mnt, 0700), 0);
	if (mount("tlm-test", mnt, "hugetlbfs", 0, "pagesize=2M") < 0) {
		print_message("skipped: cannot mount hugetlbfs (%s): this kernel has no 2 MiB "
			      "huge pages or we are not root\n", strerror(errno));
		skip();
	}
	snprintf(f->ram, sizeof(f->ram), "%s/ram", mnt);   /* fixture is per test */
	fx_build_content(f, true);
	fx_write_manifest(f);
	fx_spawn_dest(f, &g, "map", true, f->sock, NULL);
	assert_int_equal(e2e_wait(&g, 10000, &st), 0);
	unlink(f->ram);
	umount2(mnt, MNT_DETACH);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_true(e2e_file_contains(f->log, "is on hugetlbfs (2048 KiB pages): tlm places 4 KiB "
				      "pages; back the guest with memory-backend-file on tmpfs"));
	e2e_close(&g);
}

static void test_daemon_absent(void **state)
{
	struct fx *f = *state;
	char nosock[700];
	struct e2e_proc g;
	int st;

	snprintf(nosock, sizeof(nosock), "%s/nobody.sock", f->dir);
	fx_build_content(f, true);
	fx_write_manifest(f);
	fx_spawn_dest(f, &g, "map", true, nosock, NULL);
	assert_int_equal(e2e_wait(&g, 10000, &st), 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_true(e2e_file_contains(f->log, "cannot reach tlm-uffd-server"));
	e2e_close(&g);
}

/* Source side: private copy-on-write over the template, built from the seed; the region
 * is published in TLM_REGION_FILE where the mapping really is. */
static void test_source_private(void **state)
{
	struct fx *f = *state;
	char e_pre[700], e_ram[700], e_tmpl[700], e_info[700], line[256], maps[64], want[1000];
	char *env[] = { e_pre, e_ram, e_tmpl, e_info, "TLM_SOCK", NULL };
	char *argv[] = { f->guest_bin, "source", "--ram", f->ram, "--size", "2M", "--template",
			 f->tmpl, "--seed", "5", "--mix", "template=70,zero=10,ref=5,data=15,"
			 "dirty=10", "--manifest", f->manifest, NULL };
	uint64_t before = fx_file_hash(f->tmpl);
	struct e2e_manifest m;
	struct e2e_proc g;
	char err[256];

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", f->glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", f->ram);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", f->tmpl);
	snprintf(e_info, sizeof(e_info), "TLM_REGION_FILE=%s/region", f->dir);
	assert_int_equal(e2e_spawn(&g, "source", argv, env, f->log), 0);
	assert_int_equal(e2e_expect(&g, "ready addr=", line, sizeof(line), 10000), 1);
	*strchr(line + strlen("ready addr="), ' ') = '\0';
	snprintf(want, sizeof(want), "base=%s size=%u offset=0 template=%s mapping=private "
		 "track=none\n",
		 line + strlen("ready addr="), FX_SIZE, f->tmpl);
	snprintf(e_info, sizeof(e_info), "%s/region", f->dir);
	assert_true(e2e_file_contains(e_info, want));
	assert_int_equal(e2e_manifest_read(f->manifest, &m, err, sizeof(err)), 0);
	print_message("source: template=%llu zero=%llu ref=%llu data=%llu\n",
		      (unsigned long long)m.count[1], (unsigned long long)m.count[2],
		      (unsigned long long)m.count[3], (unsigned long long)m.count[4]);
	assert_int_equal(m.count[1] + m.count[2] + m.count[3] + m.count[4], FX_PAGES);
	assert_int_equal(m.count[2], FX_PAGES * 10 / 100);
	assert_int_equal(m.count[3], FX_PAGES * 5 / 100);
	/* dirty=10 moves about a tenth of the 70 % template pages to DATA */
	assert_true(m.count[4] > FX_PAGES * 15 / 100 && m.count[1] < FX_PAGES * 70 / 100);
	snprintf(maps, sizeof(maps), "/proc/%d/maps", (int)g.pid);
	assert_true(e2e_file_contains(maps, "base.pages"));
	assert_int_equal(e2e_stop(&g, SIGTERM, 5000), 0);
	e2e_close(&g);
	e2e_manifest_free(&m);
	assert_true(fx_file_hash(f->tmpl) == before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_map_mode_template, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_deferred_anonymous, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_template_too_short, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_daemon_absent, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_ram_on_hugetlbfs, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_source_private, fx_setup, fx_teardown),
	};
	uint64_t feat = 0, ioctls = 0;
	int rc = tlm_uffd_probe(&feat, &ioctls);

	if (rc < 0) {
		return tt_skip("uffd", "userfaultfd unavailable: %s", strerror(-rc));
	}
	if (!(feat & UFFD_FEATURE_MINOR_SHMEM) || !(feat & UFFD_FEATURE_EVENT_REMOVE)) {
		return tt_skip("uffd", "userfaultfd lacks MINOR_SHMEM or EVENT_REMOVE "
			       "(features 0x%llx)", (unsigned long long)feat);
	}
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
