/*
 * dest_fake.c — the fake uffd, the fake link and the fixture (dest_fake.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dest_fake.h"
#include "dst_fault.h"
#include "dst_fetch.h"
#include "log.h"
#include "template.h"
#include "tlm_test.h"

/* ---- fake uffd: a small model of the kernel's side --------------------------------------- */

static void record(struct fk_uffd *u, enum fk_op op, uint64_t page, uint64_t n, int rc,
		   uint64_t done)
{
	assert_true(u->ncalls < FK_CALLS);
	u->calls[u->ncalls++] = (struct fk_call){ op, page, n, rc, done };
}

static uint64_t page_of(const struct fk_uffd *u, const void *addr)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;

	assert_true(a >= u->base && (a - u->base) % FX_PS == 0);
	assert_true((a - u->base) / FX_PS < u->npages);
	return (a - u->base) / FX_PS;
}

/* An injected error for op at page, used up one time; 0 if none. */
static int injected(struct fk_uffd *u, enum fk_op op, uint64_t page)
{
	for (size_t i = 0; i < u->ninj; i++)
		if (u->inj[i].page == page && u->inj[i].times &&
		    (!u->inj[i].op || u->inj[i].op == op)) {
			u->inj[i].times--;
			return u->inj[i].err;
		}
	return 0;
}

/* Place n pages from page on: src page by page (NULL: zero), like the ioctls: stop at
 * the first page that is mapped (EEXIST) or has an injected error. */
static int place(struct fk_uffd *u, enum fk_op op, void *dst, const uint8_t *src, size_t len,
		 size_t *done)
{
	uint64_t page = page_of(u, dst), n = len / FX_PS, i;
	int rc = 0;

	assert_true(len % FX_PS == 0 && page + n <= u->npages);
	for (i = 0; i < n && !rc; i++) {
		uint64_t p = page + i;
		const uint8_t *from = src ? src + i * FX_PS : NULL;

		rc = injected(u, op, p);
		if (!rc && u->mapped[p])
			rc = -EEXIST;
		if (!rc && op == FK_CONT)
			from = tlm_tmpl_page(u->tmpl, u->tmpl_base + p);
		if (rc)
			break;
		if (from)
			memcpy(u->mem + p * FX_PS, from, FX_PS);
		else
			memset(u->mem + p * FX_PS, 0, FX_PS);
		u->mapped[p] = 1;
	}
	*done = i * FX_PS;
	record(u, op, page, n, rc, i);
	return rc;
}

static int fk_copy(void *ctx, void *dst, const void *src, size_t len, size_t *done)
{
	assert_non_null(src);
	return place(ctx, FK_COPY, dst, src, len, done);
}

static int fk_zeropage(void *ctx, void *dst, size_t len, size_t *done)
{
	return place(ctx, FK_ZERO, dst, NULL, len, done);
}

static int fk_cont(void *ctx, void *dst, size_t len, size_t *done)
{
	struct fk_uffd *u = ctx;

	assert_non_null(u->tmpl);          /* CONTINUE only ever on a template region */
	return place(u, FK_CONT, dst, NULL, len, done);
}

static int fk_wake(void *ctx, void *addr, size_t len)
{
	struct fk_uffd *u = ctx;

	record(u, FK_WAKE, page_of(u, addr), len / FX_PS, 0, 0);
	return 0;
}

static int fk_read_events(void *ctx, struct tlm_uffd_event *ev, int max)
{
	struct fk_uffd *u = ctx;
	int n = u->nev < max ? u->nev : max;

	if (!n)
		return -EAGAIN;
	memcpy(ev, u->ev, (size_t)n * sizeof(*ev));
	memmove(u->ev, u->ev + n, (size_t)(u->nev - n) * sizeof(*ev));
	u->nev -= n;
	return n;
}

static int fk_unregister(void *ctx, void *addr, size_t len)
{
	struct fk_uffd *u = ctx;

	uint64_t page = page_of(u, addr);

	record(u, FK_UNREG, page, len / FX_PS, 0, 0);
	u->unregistered = true;
	for (uint64_t p = page; p < page + len / FX_PS && u->tmpl_backed; p++)
		if (!u->mapped[p])
			memcpy(u->mem + p * FX_PS, tlm_tmpl_page(u->tmpl, u->tmpl_base + p),
			       FX_PS);
	return 0;
}

const struct dst_uffd_ops fk_uffd_ops = {
	.copy = fk_copy,
	.zeropage = fk_zeropage,
	.cont = fk_cont,
	.wake = fk_wake,
	.read_events = fk_read_events,
	.unregister = fk_unregister,
};

void fk_inject(struct fk_uffd *u, enum fk_op op, uint64_t page, int err, unsigned times)
{
	assert_true(u->ninj < FK_INJECT);
	u->inj[u->ninj].page = page;
	u->inj[u->ninj].err = err;
	u->inj[u->ninj].times = times;
	u->inj[u->ninj].op = op;
	u->ninj++;
}

size_t fk_count(const struct fk_uffd *u, enum fk_op op)
{
	size_t n = 0;

	for (size_t i = 0; i < u->ncalls; i++)
		n += u->calls[i].op == op;
	return n;
}

const struct fk_call *fk_nth(const struct fk_uffd *u, enum fk_op op, size_t nth)
{
	for (size_t i = 0; i < u->ncalls; i++)
		if (u->calls[i].op == op && !nth--)
			return &u->calls[i];
	return NULL;
}

uint64_t fk_pages(const struct fk_uffd *u, enum fk_op op)
{
	uint64_t n = 0;

	for (size_t i = 0; i < u->ncalls; i++)
		if (u->calls[i].op == op)
			n += u->calls[i].done;
	return n;
}

const uint8_t *fk_mem(const struct fk_uffd *u, uint64_t page)
{
	return u->mem + page * FX_PS;
}

void fk_event(struct fk_uffd *u, const struct tlm_uffd_event *ev)
{
	assert_true(u->nev < FK_EVENTS);
	u->ev[u->nev++] = *ev;
}

/* ---- fake link ------------------------------------------------------------------------------- */

static struct fk_link *link_of(const struct dst_link *l)
{
	return (struct fk_link *)(void *)l;
}

static void fl_connect(struct dst_link *l)
{
	link_of(l)->connects++;
}

static bool fl_up(const struct dst_link *l)
{
	return link_of(l)->up;
}

static int fl_demand(struct dst_link *l, uint64_t page, uint32_t count)
{
	struct fk_link *f = link_of(l);

	assert_true(f->up);                /* the region only demands on a working link */
	if (f->demand_rc)
		return f->demand_rc;
	for (uint32_t i = 0; i < count; i++) {
		assert_true(f->ndem < FK_DEM);
		f->dem[f->ndem++] = page + i;
	}
	return 0;
}

static size_t fl_demand_room(const struct dst_link *l)
{
	return link_of(l)->up ? link_of(l)->room : 0;
}

static const uint8_t *fl_buffered(const struct dst_link *l, uint64_t page, uint64_t *sum)
{
	const struct fk_link *k = link_of(l);

	if (!k->buf_data || page != k->buf_page)
		return NULL;
	*sum = k->buf_sum;
	return k->buf_data;
}

static bool fl_pump(struct dst_link *l)
{
	link_of(l)->pumps++;
	return false;
}

static void fl_tick(struct dst_link *l, uint64_t now_ns)
{
	link_of(l)->ticks++;
}

static void fl_wire(const struct dst_link *l, uint64_t *in, uint64_t *out)
{
	*in = link_of(l)->wire_in;
	*out = 0;
}

static void fl_release(struct dst_link *l)
{
	link_of(l)->releases++;
	link_of(l)->up = false;
}

static const struct dst_link_ops fk_link_ops = {
	.connect = fl_connect, .up = fl_up, .demand = fl_demand, .demand_room = fl_demand_room,
	.buffered = fl_buffered, .pump = fl_pump, .tick = fl_tick, .wire = fl_wire, .release = fl_release,
};

/* ---- the fixture ------------------------------------------------------------------------------- */

const uint8_t *fx_data_v(uint64_t page, unsigned v)
{
	static uint8_t ring[8][FX_PS];
	static unsigned next;
	uint8_t *p = ring[next++ % 8];
	uint64_t seed = 0x5eed0000u + page + ((uint64_t)v << 40);

	tt_fill(p, FX_PS, &seed);
	return p;
}

const uint8_t *fx_data(uint64_t page)
{
	return fx_data_v(page, 0);
}

const uint8_t *fx_tmpl_page(const struct fx *x, uint64_t k)
{
	return tlm_tmpl_page(x->tmpl, k);
}

bool fx_is_zero(const uint8_t *p)
{
	for (size_t i = 0; i < FX_PS; i++)
		if (p[i])
			return false;
	return true;
}

/* Random template pages (none zero), written and indexed in a temporary directory. */
static void make_template(struct fx *x, uint64_t tp)
{
	uint8_t *pages = malloc(tp * FX_PS);
	uint64_t seed = 0x7e3b1a7e;
	int fd;

	assert_non_null(pages);
	tt_fill(pages, tp * FX_PS, &seed);
	snprintf(x->dir, sizeof(x->dir), "/tmp/tlm-dest-XXXXXX");
	assert_non_null(mkdtemp(x->dir));
	snprintf(x->pages_path, sizeof(x->pages_path), "%s/t.pages", x->dir);
	snprintf(x->index_path, sizeof(x->index_path), "%s/t.pages.tlmi", x->dir);
	fd = open(x->pages_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, pages, tp * FX_PS), (ssize_t)(tp * FX_PS));
	close(fd);
	free(pages);
	assert_int_equal(tlm_tmpl_build_index(x->pages_path, x->index_path, 1, NULL, x->err,
					      sizeof(x->err)), 0);
	assert_int_equal(tlm_tmpl_open(&x->tmpl, x->pages_path, x->index_path, 0, x->err,
				       sizeof(x->err)), 0);
	x->tp = tp;
}

static void region_msg(const struct fx *x, struct tlm_local_msg *m, uint64_t npages,
		       uint64_t offset, unsigned flags)
{
	memset(m, 0, sizeof(*m));
	m->version = TLM_LOCAL_VERSION;
	m->type = TLM_LOCAL_REGION;
	m->page_size = FX_PS;
	m->base = FX_BASE;
	m->size = npages * FX_PS;
	m->offset = offset * FX_PS;
	m->flags = (flags & (FX_MINOR | FX_NOMINOR)) ? TLM_REGION_TEMPLATE : 0;
	if (x->tmpl)
		memcpy(m->digest, tlm_tmpl_digest(x->tmpl)->b, sizeof(m->digest));
	snprintf(m->vm_id, sizeof(m->vm_id), "vm1");
}

void fx_init_at(struct fx *x, uint64_t npages, uint64_t tp, uint64_t offset, unsigned flags)
{
	struct tlm_local_msg m;
	uint64_t features = UFFD_FEATURE_EVENT_REMOVE;

	memset(x, 0, sizeof(*x));
	tlm_log_init("test_dest", TLM_LOG_ERROR);
	assert_int_equal(tlm_evloop_init(&x->loop), 0);
	if (!(flags & FX_NOTMPL))
		make_template(x, tp);
	x->u = (struct fk_uffd){ .base = FX_BASE, .npages = npages, .tmpl = x->tmpl,
				 .tmpl_base = offset, .tmpl_backed = x->tmpl && (flags & FX_MINOR) };
	x->u.mem = calloc(npages, FX_PS);
	x->u.mapped = calloc(npages, 1);
	assert_true(x->u.mem && x->u.mapped);
	x->l = (struct fk_link){ .link.ops = &fk_link_ops, .room = 1u << 20 };
	region_msg(x, &m, npages, offset, flags);
	x->r = dst_region_new(&x->loop, NULL, &m, x->tmpl, "source:1", x->err, sizeof(x->err));
	assert_non_null(x->r);
	x->r->link = &x->l.link;
	x->pool.max = DST_STAGE_MAX_DEFAULT;
	x->r->stage.pool = &x->pool;
	if (flags & FX_MINOR)
		features |= UFFD_FEATURE_MINOR_SHMEM;
	dst_region_attach_ops(x->r, &fk_uffd_ops, &x->u, features);
}

void fx_init(struct fx *x, uint64_t npages, unsigned flags)
{
	fx_init_at(x, npages, npages, 0, flags);
}

void fx_fini(struct fx *x)
{
	if (x->r)
		dst_region_free(x->r);
	if (x->tmpl) {
		tlm_tmpl_close(x->tmpl);
		unlink(x->pages_path);
		unlink(x->index_path);
		rmdir(x->dir);
	}
	tlm_evloop_fini(&x->loop);
	free(x->u.mem);
	free(x->u.mapped);
}

void fx_connect(struct fx *x)
{
	x->l.up = true;
	dst_region_connected(x->r);
}

void fx_disconnect(struct fx *x)
{
	x->l.up = false;
	dst_region_disconnected(x->r);
}

void fx_fault(struct fx *x, uint64_t page)
{
	struct tlm_uffd_event ev = { .type = TLM_UFFD_EV_PAGEFAULT,
				     .addr = FX_BASE + page * FX_PS };

	fk_event(&x->u, &ev);
	dst_region_uffd_event(x->r);
}

void fx_queue_remove(struct fx *x, uint64_t first, uint64_t n)
{
	struct tlm_uffd_event ev = { .type = TLM_UFFD_EV_REMOVE,
				     .addr = FX_BASE + first * FX_PS,
				     .end = FX_BASE + (first + n) * FX_PS };

	for (uint64_t p = first; p < first + n; p++) {      /* the zap */
		x->u.mapped[p] = 0;
		memset(x->u.mem + p * FX_PS, 0, FX_PS);
	}
	fk_event(&x->u, &ev);
}

void fx_remove(struct fx *x, uint64_t first, uint64_t n)
{
	fx_queue_remove(x, first, n);
	dst_region_uffd_event(x->r);
}

int fx_map_kind(struct fx *x, uint8_t kind, uint64_t first, bool final,
		const struct tlm_run *runs, uint32_t n)
{
	struct tlm_run copy[64];
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP };

	assert_true(n <= 64);
	memcpy(copy, runs, n * sizeof(*runs));
	m.u.class_map.first_page = first;
	m.u.class_map.nruns = n;
	m.u.class_map.final = final;
	m.u.class_map.kind = kind;
	m.u.class_map.runs = copy;
	x->err[0] = '\0';
	return dst_region_map_msg(x->r, &m, x->err, sizeof(x->err));
}

int fx_map(struct fx *x, uint64_t first, bool final, const struct tlm_run *runs, uint32_t n)
{
	return fx_map_kind(x, TLM_MAP_WHOLE, first, final, runs, n);
}

int fx_page(struct fx *x, uint64_t page, unsigned flags)
{
	struct tlm_msg m = { .type = TLM_MSG_PAGE };

	m.u.page.page = page;
	m.u.page.data = fx_data(page);
	m.u.page.xxh64 = tlm_proto_page_sum(m.u.page.data) ^ (flags & FX_BADSUM ? 1 : 0);
	x->err[0] = '\0';
	return dst_region_page_msg(x->r, &m, flags & FX_URGENT, x->err, sizeof(x->err));
}

int fx_pages(struct fx *x, uint64_t page, uint32_t count, unsigned v, unsigned flags)
{
	static uint8_t data[TLM_PROTO_MAX_PAGES * FX_PS], sums[TLM_PROTO_MAX_PAGES * 8];
	struct tlm_msg m = { .type = TLM_MSG_PAGES };

	assert_true(count >= 1 && count <= TLM_PROTO_MAX_PAGES);
	for (uint32_t i = 0; i < count; i++)
		memcpy(data + (size_t)i * FX_PS, fx_data_v(page + i, v), FX_PS);
	tlm_proto_pages_sums(sums, data, count);
	if (flags & FX_BADSUM)
		sums[0] ^= 1;
	m.u.pages.page = page;
	m.u.pages.count = count;
	m.u.pages.sums = sums;
	m.u.pages.data = data;
	x->err[0] = '\0';
	return dst_region_pages_msg(x->r, &m, false, x->err, sizeof(x->err));
}

int fx_zero(struct fx *x, uint64_t page, uint64_t count)
{
	struct tlm_msg m = { .type = TLM_MSG_ZERO };

	m.u.zero.page = page;
	m.u.zero.count = count;
	x->err[0] = '\0';
	return dst_region_zero_msg(x->r, &m, x->err, sizeof(x->err));
}

int fx_ref(struct fx *x, uint64_t page, uint64_t count, uint64_t k)
{
	struct tlm_msg m = { .type = TLM_MSG_REF };

	m.u.ref.page = page;
	m.u.ref.count = count;
	m.u.ref.tmpl_page = k;
	x->err[0] = '\0';
	return dst_region_ref_msg(x->r, &m, x->err, sizeof(x->err));
}

void fx_done(struct fx *x)
{
	struct tlm_msg m = { .type = TLM_MSG_DONE };

	dst_region_done_msg(x->r, &m);
}

unsigned fx_work(struct fx *x)
{
	unsigned n = 0;

	while (n < 10000) {
		n++;
		if (!dst_region_work(x->r))
			break;
	}
	assert_true(n < 10000);              /* a busy region settles */
	return n;
}
