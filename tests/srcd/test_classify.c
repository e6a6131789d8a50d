/*
 * Unit tests for source-side classification (runtime/classify.c, runtime/src_region.c)
 * on generated data with a real template (pages file + index from tlm_tmpl_build_index):
 * every class, REF run merging, template-less regions, file and pid sources (the pid
 * source is this process: a MAP_PRIVATE mapping of the template with some pages written,
 * so the pagemap shortcut has to agree with byte comparison), the freeze guard, SPEC
 * errors, and classification speed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "classify.h"
#include "ramstub.h"
#include "tlm_test.h"
#include "tlm_io.h"
#include "src_region.h"
#include "template.h"
#include "util.h"

#define PG TLM_PAGE_SIZE
#define NPAGES 512u

struct fixture {
	char dir[64], pages[128], ram[128];
	struct tlm_tmpl *t;
	uint8_t *tmpl;            /* template bytes (NPAGES pages) */
	uint8_t *ram_bytes;       /* the region's expected content */
	enum tlm_page_class want[NPAGES];
	uint64_t want_k[NPAGES];
	bool written[NPAGES];     /* differs from a fresh MAP_PRIVATE template mapping */
};

static uint64_t rng_state = 1;

static void fill_random(uint8_t *p, size_t len)
{
	tt_fill(p, len, &rng_state);
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(tlm_write_full(fd, data, len), 0);
	close(fd);
}

/* Template: random pages, every 50th page zero, page 100 a copy of page 20. */
static void make_template(struct fixture *f)
{
	struct tlm_digest d;
	char err[256], idx[160];

	f->tmpl = malloc((size_t)NPAGES * PG);
	assert_non_null(f->tmpl);
	fill_random(f->tmpl, (size_t)NPAGES * PG);
	for (unsigned i = 7; i < NPAGES; i += 50)
		memset(f->tmpl + (size_t)i * PG, 0, PG);
	memcpy(f->tmpl + 100 * PG, f->tmpl + 20 * PG, PG);
	write_file(f->pages, f->tmpl, (size_t)NPAGES * PG);
	snprintf(idx, sizeof(idx), "%s%s", f->pages, TLM_TMPL_INDEX_SUFFIX);
	assert_int_equal(tlm_tmpl_build_index(f->pages, idx, 1, &d, err, sizeof(err)), 0);
	assert_int_equal(tlm_tmpl_open(&f->t, f->pages, NULL, 0, err, sizeof(err)), 0);
}

static void set_page(struct fixture *f, unsigned i, const void *src, enum tlm_page_class c,
		     uint64_t k)
{
	memcpy(f->ram_bytes + (size_t)i * PG, src, PG);
	/* Equal to the template at the same offset wins (e.g. a zero template page). */
	if (memcmp(src, f->tmpl + (size_t)i * PG, PG) == 0) {
		c = TLM_CLASS_TEMPLATE;
		k = i;
	}
	f->want[i] = c;
	f->want_k[i] = k;
	f->written[i] = true;
}

/*
 * Region content and the classes it must get:
 *   default         template page at the same offset       TEMPLATE (zero template pages too)
 *   100..109        zero                                    ZERO (107: TEMPLATE, zero there)
 *   110..129        template pages 310..329                 one REF run (310, 20)
 *   130             template page 20 (also at 100)          REF 20 (lowest match)
 *   131..140        random                                  DATA
 *   141             template page 7 (a zero page)           ZERO
 *   150             same bytes as the template (rewritten)  TEMPLATE, but read
 *   200..203        template pages 400, 401, 50, 51         REF runs (400,2) and (50,2)
 */
static void make_ram(struct fixture *f)
{
	uint8_t page[PG], zero[PG] = { 0 };

	f->ram_bytes = malloc((size_t)NPAGES * PG);
	assert_non_null(f->ram_bytes);
	memcpy(f->ram_bytes, f->tmpl, (size_t)NPAGES * PG);
	for (unsigned i = 0; i < NPAGES; i++) {
		f->want[i] = TLM_CLASS_TEMPLATE;
		f->want_k[i] = i;
	}
	for (unsigned i = 100; i < 110; i++)
		set_page(f, i, zero, TLM_CLASS_ZERO, 0);
	for (unsigned i = 110; i < 130; i++)
		set_page(f, i, f->tmpl + (size_t)(i + 200) * PG, TLM_CLASS_REF, i + 200);
	set_page(f, 130, f->tmpl + 20 * PG, TLM_CLASS_REF, 20);
	for (unsigned i = 131; i < 141; i++) {
		fill_random(page, PG);
		set_page(f, i, page, TLM_CLASS_DATA, 0);
	}
	set_page(f, 141, f->tmpl + 7 * PG, TLM_CLASS_ZERO, 0);
	set_page(f, 150, f->tmpl + 150 * PG, TLM_CLASS_TEMPLATE, 150);
	set_page(f, 200, f->tmpl + 400 * PG, TLM_CLASS_REF, 400);
	set_page(f, 201, f->tmpl + 401 * PG, TLM_CLASS_REF, 401);
	set_page(f, 202, f->tmpl + 50 * PG, TLM_CLASS_REF, 50);
	set_page(f, 203, f->tmpl + 51 * PG, TLM_CLASS_REF, 51);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/tlm-srcd-unit-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->pages, sizeof(f->pages), "%s/base.pages", f->dir);
	snprintf(f->ram, sizeof(f->ram), "%s/ram", f->dir);
	make_template(f);
	make_ram(f);
	write_file(f->ram, f->ram_bytes, (size_t)NPAGES * PG);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char idx[160];

	tlm_tmpl_close(f->t);
	snprintf(idx, sizeof(idx), "%s%s", f->pages, TLM_TMPL_INDEX_SUFFIX);
	unlink(idx);
	unlink(f->pages);
	unlink(f->ram);
	rmdir(f->dir);
	free(f->tmpl);
	free(f->ram_bytes);
	free(f);
	return 0;
}

/* Runs must cover [0, n) in order, be maximal (no two neighbours could be one run) and
 * agree with the per-page classes. */
static void check_runs(const struct tlm_cls_map *m)
{
	uint64_t page = 0, cnt[TLM_CLASS_DATA + 1] = { 0 }, k;

	for (size_t i = 0; i < m->nruns; i++) {
		const struct tlm_run *r = &m->runs[i];

		assert_int_equal(m->run_first[i], page);
		assert_true(r->len >= 1);
		if (i) {
			const struct tlm_run *p = &m->runs[i - 1];

			assert_false(p->cls == r->cls &&
				     (r->cls != TLM_CLASS_REF || p->arg + p->len == r->arg));
		}
		for (uint32_t j = 0; j < r->len; j++, page++) {
			assert_int_equal(tlm_cls_map_get(m, page, &k), r->cls);
			if (r->cls == TLM_CLASS_REF)
				assert_int_equal(k, r->arg + j);
			else
				assert_int_equal(r->arg, 0);
		}
		cnt[r->cls] += r->len;
	}
	assert_int_equal(page, m->page_count);
	for (int c = TLM_CLASS_TEMPLATE; c <= TLM_CLASS_DATA; c++)
		assert_int_equal(cnt[c], m->count[c]);
}

static void check_classes(const struct fixture *f, const struct tlm_cls_map *m)
{
	uint64_t k;

	assert_true(tlm_cls_map_complete(m));
	for (unsigned i = 0; i < NPAGES; i++) {
		if (tlm_cls_map_get(m, i, &k) != f->want[i])
			fail_msg("page %u: class %d, want %d", i, tlm_cls_map_get(m, i, &k),
				 f->want[i]);
		if (f->want[i] == TLM_CLASS_REF || f->want[i] == TLM_CLASS_TEMPLATE)
			assert_int_equal(k, f->want_k[i]);
	}
	check_runs(m);
}

static void test_classify_mem(void **state)
{
	struct fixture *f = *state;
	struct tlm_cls_map m;
	bool saw_ref_run = false;

	assert_int_equal(tlm_cls_map_init(&m, NPAGES, f->t, 0), 0);
	/* In two pieces: classification continues where it stopped. */
	assert_int_equal(tlm_classify_mem(&m, f->ram_bytes, 115), 0);
	assert_int_equal(tlm_classify_mem(&m, f->ram_bytes + 115 * PG, NPAGES - 115), 0);
	assert_int_equal(tlm_classify_mem(&m, f->ram_bytes, 1), -ERANGE);
	check_classes(f, &m);
	assert_int_equal(m.count[TLM_CLASS_ZERO], 10);
	assert_int_equal(m.count[TLM_CLASS_REF], 25);
	assert_int_equal(m.count[TLM_CLASS_DATA], 10);
	for (size_t i = 0; i < m.nruns; i++)
		if (m.runs[i].cls == TLM_CLASS_REF && m.runs[i].arg == 310)
			saw_ref_run = m.runs[i].len == 20;
	assert_true(saw_ref_run);
	/* Sent flags do not disturb the class. */
	tlm_cls_mark_sent(&m, 131);
	assert_true(tlm_cls_sent(&m, 131));
	check_classes(f, &m);
	tlm_cls_clear_sent(&m);
	assert_false(tlm_cls_sent(&m, 131));
	tlm_cls_map_fini(&m);
}

static void test_classify_no_template(void **state)
{
	struct fixture *f = *state;
	struct tlm_cls_map m;
	uint64_t k;

	assert_int_equal(tlm_cls_map_init(&m, NPAGES, NULL, 0), 0);
	assert_int_equal(tlm_classify_mem(&m, f->ram_bytes, NPAGES), 0);
	for (unsigned i = 0; i < NPAGES; i++) {
		bool zero = tlm_page_is_zero(f->ram_bytes + (size_t)i * PG);

		assert_int_equal(tlm_cls_map_get(&m, i, &k),
				 zero ? TLM_CLASS_ZERO : TLM_CLASS_DATA);
	}
	assert_int_equal(m.count[TLM_CLASS_TEMPLATE] + m.count[TLM_CLASS_REF], 0);
	check_runs(&m);
	tlm_cls_map_fini(&m);
}

/* A region with a template base: region page i is compared with template page 256 + i. */
static void test_classify_tmpl_base(void **state)
{
	struct fixture *f = *state;
	static uint8_t two[2 * PG];
	struct tlm_cls_map m;
	uint64_t k;

	assert_int_equal(tlm_cls_map_init(&m, 16, f->t, 256), 0);
	assert_int_equal(tlm_classify_mem(&m, f->tmpl + 256 * PG, 16), 0);
	assert_int_equal(m.count[TLM_CLASS_TEMPLATE], 16);
	assert_int_equal(tlm_cls_map_get(&m, 3, &k), TLM_CLASS_TEMPLATE);
	assert_int_equal(k, 259);
	tlm_cls_map_fini(&m);
	/* Past the end of the template nothing is TEMPLATE; REF still works. */
	memcpy(two, f->tmpl + (size_t)(NPAGES - 1) * PG, PG);
	memcpy(two + PG, f->tmpl + PG, PG);
	assert_int_equal(tlm_cls_map_init(&m, 2, f->t, NPAGES - 1), 0);
	assert_int_equal(tlm_classify_mem(&m, two, 2), 0);
	assert_int_equal(tlm_cls_map_get(&m, 0, &k), TLM_CLASS_TEMPLATE);
	assert_int_equal(k, NPAGES - 1);
	assert_int_equal(tlm_cls_map_get(&m, 1, &k), TLM_CLASS_REF);
	assert_int_equal(k, 1);
	tlm_cls_map_fini(&m);
}

static void test_file_source(void **state)
{
	struct fixture *f = *state;
	struct tlm_src_region *r;
	const uint8_t *ptrs[2];
	uint64_t pages[2] = { 131, 7 };
	char spec[512], err[256];

	snprintf(spec, sizeof(spec), "vm1,file=%s,template=%s", f->ram, f->pages);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	assert_int_equal(r->page_count, NPAGES);
	assert_memory_equal(r->digest.b, tlm_tmpl_digest(f->t)->b, 16);
	/* Not frozen: nothing may be read. */
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), -EPERM);
	assert_non_null(strstr(err, "needs frozen"));
	assert_int_equal(tlm_src_read_pages(r, pages, 2, NULL, ptrs, err, sizeof(err)), -EPERM);
	r->phase = TLM_SRC_FROZEN;
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), 0);
	check_classes(f, &r->map);
	assert_int_equal(r->map.known_pages, 0);
	assert_int_equal(tlm_src_read_pages(r, pages, 2, NULL, ptrs, err, sizeof(err)), 0);
	assert_memory_equal(ptrs[0], f->ram_bytes + 131 * PG, PG);
	assert_memory_equal(ptrs[1], f->ram_bytes + 7 * PG, PG);
	tlm_src_region_free(r);
}

static void test_file_source_window(void **state)
{
	struct fixture *f = *state;
	struct tlm_src_region *r;
	char spec[512], err[256];
	uint64_t k;

	/* offset/size select a window; the template base follows the file offset. */
	snprintf(spec, sizeof(spec), "w,file=%s,offset=400k,size=64k,template=%s", f->ram,
		 f->pages);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	assert_int_equal(r->page_count, 16);
	assert_int_equal(r->tmpl_base, 100);
	r->phase = TLM_SRC_FROZEN;
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), 0);
	for (unsigned i = 0; i < 16; i++) {
		assert_int_equal(tlm_cls_map_get(&r->map, i, &k), f->want[100 + i]);
		if (f->want[100 + i] == TLM_CLASS_REF)
			assert_int_equal(k, f->want_k[100 + i]);
	}
	tlm_src_region_free(r);
}

/*
 * A RAM file on tmpfs with holes (pages punched as QEMU does for pages the guest freed,
 * and a tail never written): the holes are classified without being read, as reading
 * their zeros would classify them (ZERO, or TEMPLATE where the template page is zero),
 * counted, and left unallocated (a read through the mapping would allocate them).
 */
static void test_file_holes(void **state)
{
	struct fixture *f = *state;
	const unsigned total = NPAGES + 64;        /* 64 pages past the template: a sparse tail */
	static const unsigned punch[][2] = { { 7, 1 }, { 100, 10 }, { 300, 64 }, { 511, 1 } };
	char dir[] = "/dev/shm/tlm-holes-XXXXXX", path[64], spec[256], err[256];
	uint8_t *want = calloc(total, PG);
	struct tlm_src_region *r;
	struct tlm_cls_map m;
	struct stat before, after;
	uint64_t holes = 64, k1, k2;
	int fd;

	assert_non_null(want);
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ram", dir);
	memcpy(want, f->ram_bytes, (size_t)NPAGES * PG);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(tlm_write_full(fd, want, (size_t)NPAGES * PG), 0);
	assert_int_equal(ftruncate(fd, (off_t)total * PG), 0);
	for (unsigned i = 0; i < TLM_ARRAY_SIZE(punch); i++) {
		assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					   (off_t)punch[i][0] * PG, (off_t)punch[i][1] * PG), 0);
		memset(want + (size_t)punch[i][0] * PG, 0, (size_t)punch[i][1] * PG);
		holes += punch[i][1];
	}
	/* What reading the bytes gives. */
	assert_int_equal(tlm_cls_map_init(&m, total, f->t, 0), 0);
	assert_int_equal(tlm_classify_mem(&m, want, total), 0);
	snprintf(spec, sizeof(spec), "h,file=%s,template=%s", path, f->pages);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	r->phase = TLM_SRC_FROZEN;
	assert_int_equal(fstat(fd, &before), 0);
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), 0);
	assert_int_equal(fstat(fd, &after), 0);
	for (unsigned i = 0; i < total; i++) {
		if (tlm_cls_map_get(&r->map, i, &k1) != tlm_cls_map_get(&m, i, &k2) || k1 != k2)
			fail_msg("page %u: class %d/%llu, reading gives %d/%llu", i,
				 tlm_cls_map_get(&r->map, i, &k1), (unsigned long long)k1,
				 tlm_cls_map_get(&m, i, &k2), (unsigned long long)k2);
	}
	assert_int_equal(tlm_cls_map_get(&r->map, 7, &k1), TLM_CLASS_TEMPLATE);   /* zero there */
	assert_int_equal(tlm_cls_map_get(&r->map, 300, &k1), TLM_CLASS_ZERO);
	print_message("%llu pages in holes, file %lld -> %lld blocks\n",
		      (unsigned long long)r->map.hole_pages, (long long)before.st_blocks,
		      (long long)after.st_blocks);
	assert_int_equal(after.st_blocks, before.st_blocks);   /* no hole was filled */
	assert_int_equal(r->map.hole_pages, holes);
	check_runs(&r->map);
	tlm_src_region_free(r);
	tlm_cls_map_fini(&m);
	close(fd);
	unlink(path);
	rmdir(dir);
	free(want);
}

/* This process as a pid source: the template mapped MAP_PRIVATE, some pages written. */
static void test_pid_source(void **state)
{
	struct fixture *f = *state;
	struct tlm_src_region *r;
	char spec[512], err[256];
	uint64_t pages[3] = { 131, 5, 300 }, nwritten = 0;
	const uint8_t *ptrs[3];
	uint8_t *buf = malloc(3 * PG);
	volatile uint8_t sink = 0;
	int fd = open(f->pages, O_RDONLY);
	uint8_t *p = mmap(NULL, (size_t)NPAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);

	assert_true(p != MAP_FAILED && buf);
	for (unsigned i = 0; i < NPAGES; i++) {
		if (f->written[i]) {
			memcpy(p + (size_t)i * PG, f->ram_bytes + (size_t)i * PG, PG);
			nwritten++;
		} else if (i % 3 == 0) {
			sink += p[(size_t)i * PG];       /* present page-cache page */
		}
	}
	(void)sink;
	snprintf(spec, sizeof(spec), "p1,pid=%d,addr=%p,size=%u,template=%s", (int)getpid(),
		 (void *)p, NPAGES * PG, f->pages);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	r->phase = TLM_SRC_FROZEN;
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), 0);
	check_classes(f, &r->map);
	/* Every page never written is provably TEMPLATE from the pagemap; written ones
	 * (even the one rewritten with template bytes) had to be read. */
	if (r->pagemap_fd < 0)
		print_message("no /proc/self/pagemap: shortcut not tested\n");
	else
		assert_int_equal(r->map.known_pages, NPAGES - nwritten);
	assert_int_equal(tlm_src_read_pages(r, pages, 3, buf, ptrs, err, sizeof(err)), 0);
	for (unsigned i = 0; i < 3; i++)
		assert_memory_equal(ptrs[i], f->ram_bytes + pages[i] * PG, PG);
	tlm_src_region_free(r);
	munmap(p, (size_t)NPAGES * PG);
	close(fd);
	free(buf);
}

/* A pid source whose range is anonymous memory: no shortcut, bytes decide. */
static void test_pid_source_anon(void **state)
{
	struct fixture *f = *state;
	struct tlm_src_region *r;
	char spec[512], err[256];
	uint8_t *p = mmap(NULL, (size_t)NPAGES * PG, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	memcpy(p, f->ram_bytes, (size_t)NPAGES * PG);
	snprintf(spec, sizeof(spec), "p2,pid=%d,addr=0x%lx,size=2M,template=%s", (int)getpid(),
		 (unsigned long)p, f->pages);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	r->phase = TLM_SRC_FROZEN;
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), 0);
	check_classes(f, &r->map);
	assert_int_equal(r->map.known_pages, 0);
	tlm_src_region_free(r);
	/* The range is unreadable: classification fails with a clear reason. */
	assert_int_equal(mprotect(p, (size_t)NPAGES * PG, PROT_NONE), 0);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	r->phase = TLM_SRC_FROZEN;
	assert_true(tlm_src_classify(r, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "cannot read pid"));
	tlm_src_region_free(r);
	munmap(p, (size_t)NPAGES * PG);
}

static void test_spec_errors(void **state)
{
	struct fixture *f = *state;
	static const struct { const char *spec, *want; } cases[] = {
		{ "vm", "give file=PATH or pid=PID" },
		{ "bad id!,file=/x", "bad id" },
		{ "vm,file=/nonexistent/ram", "No such file" },
		{ "vm,pid=1", "needs addr= and size=" },
		{ "vm,pid=1,addr=0x1000,size=4k,offset=0", "no offset=" },
		{ "vm,file=/x,pid=1", "pid= and addr= go together" },
		{ "vm,file=/x,colour=red", "unknown key 'colour'" },
		{ "vm,file=/x,file=/y", "given twice" },
		{ "vm,file", "not KEY=VALUE" },
		{ "vm,pid=99999999999,addr=0x1000,size=4k", "bad pid" },
		{ "vm,pid=999999999,addr=0x1000,size=4k", "pid 999999999: no such process" },
		{ "vm,pid=1,addr=0x1001,size=4k", "not a multiple of 4096" },
	};
	struct tlm_src_region *r;
	char spec[512], err[256];
	int fd;

	for (size_t i = 0; i < TLM_ARRAY_SIZE(cases); i++) {
		err[0] = '\0';
		assert_true(tlm_src_region_new(&r, cases[i].spec, err, sizeof(err)) < 0);
		assert_null(r);
		if (!strstr(err, cases[i].want))
			fail_msg("spec '%s': error '%s' lacks '%s'", cases[i].spec, err,
				 cases[i].want);
	}
	snprintf(spec, sizeof(spec), "vm,file=%s,size=3000", f->ram);
	assert_true(tlm_src_region_new(&r, spec, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "not a multiple"));
	snprintf(spec, sizeof(spec), "vm,file=%s,offset=1M,size=2M", f->ram);
	assert_true(tlm_src_region_new(&r, spec, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "past the end"));
	snprintf(spec, sizeof(spec), "vm,file=%s,template=%s/none.pages", f->ram, f->dir);
	assert_true(tlm_src_region_new(&r, spec, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "template"));
	/* A glue-mapped VM's RAM file (ramstub.h) is refused, naming the process. */
	snprintf(spec, sizeof(spec), "%s/stub", f->dir);
	fd = open(spec, O_RDWR | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(tlm_ramstub_write(fd, 4321, NULL, err, sizeof(err)), 0);
	close(fd);
	snprintf(spec, sizeof(spec), "vm,file=%s/stub", f->dir);
	assert_true(tlm_src_region_new(&r, spec, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "is a tlm RAM stub"));
	assert_non_null(strstr(err, "process 4321"));
	snprintf(spec, sizeof(spec), "%s/stub", f->dir);
	unlink(spec);
}

/* Speed: 64 MiB, mostly template pages with DATA and ZERO sprinkled in, from memory. */
static void test_classify_speed(void **state)
{
	struct fixture *f = *state;
	const uint64_t n = 16384;
	uint8_t *big = malloc(n * PG);
	struct tlm_cls_map m;
	uint64_t t0, ns;

	assert_non_null(big);
	for (uint64_t i = 0; i < n; i++) {
		uint8_t *pg = big + i * PG;

		if (i % 7 == 3)
			fill_random(pg, PG);
		else if (i % 7 == 5)
			memset(pg, 0, PG);
		else
			memcpy(pg, f->tmpl + (i % NPAGES) * PG, PG);
	}
	assert_int_equal(tlm_cls_map_init(&m, n, f->t, 0), 0);
	t0 = tlm_now_ns();
	assert_int_equal(tlm_classify_mem(&m, big, n), 0);
	ns = tlm_now_ns() - t0;
	print_message("classified 64 MiB in %.1f ms (%.0f MiB/s)\n", ns / 1e6,
		      64.0 / (ns / 1e9));
	assert_int_equal(m.count[TLM_CLASS_DATA], n / 7 + (n % 7 > 3));
	/* Generous: 64 MiB must take well under a second even on a loaded machine. */
	assert_true(ns < 1000000000ull);
	check_runs(&m);
	tlm_cls_map_fini(&m);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_classify_mem),
		cmocka_unit_test(test_classify_no_template),
		cmocka_unit_test(test_classify_tmpl_base),
		cmocka_unit_test(test_file_source),
		cmocka_unit_test(test_file_source_window),
		cmocka_unit_test(test_file_holes),
		cmocka_unit_test(test_pid_source),
		cmocka_unit_test(test_pid_source_anon),
		cmocka_unit_test(test_spec_errors),
		cmocka_unit_test(test_classify_speed),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
