/*
 * dest_fake.h — drive one destination region's state machine alone: a fake uffd (a
 * small model of the kernel: guest memory, which pages are mapped, pending events; every
 * call recorded; errors on demand), a fake link to the source (demands recorded, up or
 * down at will), a real template in a temporary directory, and helpers that feed the
 * region what the source and the guest would. No root, no userfaultfd, no sockets.
 *
 *     struct fx x;
 *     fx_init(&x, 64, FX_MINOR);          // 64-page region over a 64-page template
 *     fx_connect(&x);                     // the link is up: phase MAPPING
 *     fx_fault(&x, 5);                    // a guest thread faults on page 5
 *     assert_int_equal(x.l.dem[0], 5);    // ... which is demanded
 *     fx_page(&x, 5, FX_URGENT);          // the PAGE comes back
 *     assert_int_equal(fk_count(&x.u, FK_COPY), 1);
 *     fx_fini(&x);
 */
#ifndef TLM_DEST_FAKE_H
#define TLM_DEST_FAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dst_region.h"
#include "evloop.h"

#define FX_PS     4096u
#define FX_BASE   0x7f1200000000ull      /* the guest address of page 0 (never touched) */
#define FK_CALLS  4096
#define FK_EVENTS 64
#define FK_INJECT 8
#define FK_DEM    8192

/* ---- fake uffd ------------------------------------------------------------------------------ */

enum fk_op { FK_COPY = 1, FK_ZERO, FK_CONT, FK_WAKE, FK_UNREG };

struct fk_call {
	enum fk_op op;
	uint64_t page, n;                /* the range asked for */
	int rc;
	uint64_t done;                   /* pages placed */
};

struct fk_uffd {
	uint64_t base, npages;
	uint8_t *mem;                    /* what the guest reads, npages * 4096 */
	uint8_t *mapped;                 /* per page: mapped (EEXIST when placed again) */
	const struct tlm_tmpl *tmpl;     /* CONTINUE maps template page tmpl_base + page */
	uint64_t tmpl_base;
	bool tmpl_backed;                /* the guest maps the template (FX_MINOR): once
					    unregistered, a page nothing placed reads as its
					    template page (the kernel maps the page cache) */
	bool unregistered;
	struct fk_call calls[FK_CALLS];
	size_t ncalls;
	struct { uint64_t page; int err; unsigned times; enum fk_op op; } inj[FK_INJECT];
	size_t ninj;
	struct tlm_uffd_event ev[FK_EVENTS];
	int nev;
};

extern const struct dst_uffd_ops fk_uffd_ops;

/* The next `times` placements of op (0: any) that reach page fail there with err. */
void fk_inject(struct fk_uffd *u, enum fk_op op, uint64_t page, int err, unsigned times);
size_t fk_count(const struct fk_uffd *u, enum fk_op op);
/* The i-th call of op (0-based), or NULL. */
const struct fk_call *fk_nth(const struct fk_uffd *u, enum fk_op op, size_t i);
/* Pages placed by op (all calls). */
uint64_t fk_pages(const struct fk_uffd *u, enum fk_op op);
const uint8_t *fk_mem(const struct fk_uffd *u, uint64_t page);
void fk_event(struct fk_uffd *u, const struct tlm_uffd_event *ev);

/* ---- fake link ------------------------------------------------------------------------------- */

struct fk_link {
	struct dst_link link;
	bool up;
	unsigned connects, pumps, ticks, releases;
	uint64_t dem[FK_DEM];            /* pages demanded, in order */
	size_t ndem;
	size_t room;                     /* what demand_room answers (default: plenty) */
	int demand_rc;                   /* 0, or -ENOMEM to refuse demands */
	uint64_t wire_in;
	/* A PAGES frame received, not handled yet: what `buffered` finds for buf_page. */
	uint64_t buf_page, buf_sum;
	const uint8_t *buf_data;         /* NULL: nothing buffered */
};

/* ---- the fixture ------------------------------------------------------------------------------- */

#define FX_MINOR    0x1u             /* template-backed region: TEMPLATE via CONTINUE */
#define FX_NOTMPL   0x2u             /* no template at all */
#define FX_NOMINOR  0x4u             /* template, but the uffd lacks MINOR */

#define FX_URGENT   0x1u             /* fx_page: came on urgent (else bulk) */
#define FX_BADSUM   0x2u             /* fx_page: checksum does not match */

struct fx {
	char dir[64], pages_path[96], index_path[112];
	struct tlm_tmpl *tmpl;
	uint64_t tp;                     /* template pages */
	struct tlm_evloop loop;
	struct fk_uffd u;
	struct fk_link l;
	struct dst_region *r;
	struct dst_stage_pool pool;      /* the region's stage pool (default --stage-max) */
	char err[320];
};

/* Template of tp pages (unless FX_NOTMPL), a region of npages at template page 0, the
 * fake link and uffd attached: phase CONNECTING. */
void fx_init(struct fx *x, uint64_t npages, unsigned flags);
/* The same with the region at template page offset of a template of tp pages. */
void fx_init_at(struct fx *x, uint64_t npages, uint64_t tp, uint64_t offset, unsigned flags);
void fx_fini(struct fx *x);

/* Distinct 4 KiB contents: what the source holds for DATA page `page`; fx_data_v: its
 * content at version v (a guest that wrote the page after it was pre-sent), fx_data is
 * version 0. */
const uint8_t *fx_data(uint64_t page);
const uint8_t *fx_data_v(uint64_t page, unsigned v);
const uint8_t *fx_tmpl_page(const struct fx *x, uint64_t k);
bool fx_is_zero(const uint8_t *p);

/* The link's sessions open / break (what dst_peer would tell the region). */
void fx_connect(struct fx *x);
void fx_disconnect(struct fx *x);

/* The guest: a fault on page, a discard of [first, first + n) (the kernel zaps the
 * pages); each is read by the region at once (as when its uffd is readable). */
void fx_fault(struct fx *x, uint64_t page);
void fx_remove(struct fx *x, uint64_t first, uint64_t n);
/* Queue an event without telling the region (the kernel has it pending). */
void fx_queue_remove(struct fx *x, uint64_t first, uint64_t n);

/* The source: returns the region's answer (0 or -EPROTO, err in x->err). */
int fx_map(struct fx *x, uint64_t first, bool final, const struct tlm_run *runs, uint32_t n);
/* The same with a map kind (TLM_MAP_WHOLE, TLM_MAP_LIVE, TLM_MAP_FIX). */
int fx_map_kind(struct fx *x, uint8_t kind, uint64_t first, bool final,
		const struct tlm_run *runs, uint32_t n);
int fx_page(struct fx *x, uint64_t page, unsigned flags);
/* A PAGES frame on bulk: count pages from page, content version v; FX_BADSUM spoils the
 * checksum of its first page. */
int fx_pages(struct fx *x, uint64_t page, uint32_t count, unsigned v, unsigned flags);
int fx_zero(struct fx *x, uint64_t page, uint64_t count);
int fx_ref(struct fx *x, uint64_t page, uint64_t count, uint64_t k);
void fx_done(struct fx *x);

/* The loop's background slices until nothing is pending (bounded): how many ran. */
unsigned fx_work(struct fx *x);

static inline enum dst_pg_state fx_state(const struct fx *x, uint64_t page)
{
	return dst_pg_state(x->r, page);
}

static inline unsigned fx_cls(const struct fx *x, uint64_t page)
{
	return dst_pg_cls(x->r, page);
}

#endif /* TLM_DEST_FAKE_H */
