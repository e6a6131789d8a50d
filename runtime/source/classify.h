/*
 * classify.h — page classification at the source (docs/ARCHITECTURE.md, "Page classes").
 *
 * For every page of a frozen region, in page order:
 *   TEMPLATE  bytes equal the template page at the same offset (tmpl_base + page)
 *   ZERO      all zero
 *   REF(k)    bytes equal template page k (index lookup; the bytes are compared, a hash
 *             match alone never decides)
 *   DATA      anything else
 * The result is a class map: one byte per page (class + a "sent on urgent" flag, so a
 * demand reply or a bulk skip costs O(1)) and the run-length form that goes out as
 * CLASS_MAP frames, with REF runs of consecutive template pages merged into one run.
 *
 * Usage:
 *     struct tlm_cls_map m;
 *     tlm_cls_map_init(&m, page_count, tmpl, tmpl_base);   // tmpl may be NULL
 *     tlm_classify_mem(&m, data, n);                       // repeat until complete
 *     ... m.runs[0 .. m.nruns), m.count[TLM_CLASS_DATA], tlm_cls_map_get(&m, page, &k)
 *     tlm_cls_map_fini(&m);
 */
#ifndef TLM_CLASSIFY_H
#define TLM_CLASSIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tlm_proto.h"

struct tlm_tmpl;

#define TLM_CLS_MASK 0x07u   /* enum tlm_page_class in the low bits of cls[page] */
#define TLM_CLS_SENT 0x80u   /* DATA page already sent as a demand reply */
#define TLM_CLS_BULK 0x40u   /* DATA page queued on the bulk stream */
#define TLM_CLS_HELD 0x20u   /* a demand for it was left to the bulk stream once */

struct tlm_cls_map {
	uint64_t page_count;          /* pages of the region */
	uint64_t added;               /* pages classified so far (in order) */
	const struct tlm_tmpl *tmpl;  /* NULL: no template, classes ZERO/DATA only */
	uint64_t tmpl_base;           /* template page of region page 0 */
	uint64_t tmpl_pages;          /* template page count (0 without a template) */
	uint8_t *cls;                 /* [page_count]: class | TLM_CLS_SENT */
	struct tlm_run *runs;         /* [nruns], in page order, covering [0, added) */
	uint64_t *run_first;          /* [nruns]: first page of runs[i] */
	size_t nruns, cap;
	uint64_t count[TLM_CLASS_DATA + 1];   /* pages per class, index = enum value */
	uint64_t known_pages;         /* classified without reading (pagemap) */
	uint64_t hole_pages;          /* classified without reading (holes of the RAM file) */
};

int tlm_cls_map_init(struct tlm_cls_map *m, uint64_t page_count, const struct tlm_tmpl *tmpl,
		     uint64_t tmpl_base);
void tlm_cls_map_fini(struct tlm_cls_map *m);
/* Forget the classification (keeps the sizes and template): for a retry. */
void tlm_cls_map_reset(struct tlm_cls_map *m);

static inline bool tlm_cls_map_complete(const struct tlm_cls_map *m)
{
	return m->added == m->page_count;
}

/* Class of one page's bytes. page is the region page (its same-offset template page is
 * tmpl_base + page); *k gets the template page for TEMPLATE and REF. */
enum tlm_page_class tlm_classify_page(const struct tlm_cls_map *m, uint64_t page,
				      const void *data, uint64_t *k);
/* The same with the REF guess given: hint is the template page to try right after the
 * same-offset one (the page after the previous REF; UINT64_MAX: none). For callers that
 * classify pages out of order (live reclassification) and keep no runs. */
enum tlm_page_class tlm_classify_page_hint(const struct tlm_cls_map *m, uint64_t page,
					   const void *data, uint64_t hint, uint64_t *k);

/* Classify the next n pages (pages m->added .. + n) from memory. 0 or -ENOMEM/-ERANGE. */
int tlm_classify_mem(struct tlm_cls_map *m, const void *data, uint64_t n);

/* Append the next page with a class decided elsewhere (pagemap: TEMPLATE without
 * reading). k: template page for TEMPLATE/REF. 0 or -ENOMEM/-ERANGE. */
int tlm_cls_map_add(struct tlm_cls_map *m, enum tlm_page_class c, uint64_t k);

/* Append n pages of one class (REF: template pages k .. k + n - 1; TEMPLATE: k ignored).
 * Same result as n calls of tlm_cls_map_add, in O(1) runs. 0 or -ENOMEM/-ERANGE.
 * TLM_CLASS_KEEP is taken too, for a fix map (presend.h); count[0] counts its pages. */
int tlm_cls_map_add_run(struct tlm_cls_map *m, enum tlm_page_class c, uint64_t k, uint64_t n);

/* Class of a classified page; *k gets the template page for TEMPLATE/REF. */
enum tlm_page_class tlm_cls_map_get(const struct tlm_cls_map *m, uint64_t page, uint64_t *k);

/* Per-page send flags (TLM_CLS_SENT / _BULK / _HELD) of DATA pages. */
static inline bool tlm_cls_flag(const struct tlm_cls_map *m, uint64_t page, uint8_t flag)
{
	return m->cls[page] & flag;
}

static inline void tlm_cls_set_flag(struct tlm_cls_map *m, uint64_t page, uint8_t flag)
{
	m->cls[page] |= flag;
}

static inline bool tlm_cls_is_data(const struct tlm_cls_map *m, uint64_t page)
{
	return (m->cls[page] & TLM_CLS_MASK) == TLM_CLASS_DATA;
}

/* Sent on the urgent channel (the bulk stream skips them). */
static inline bool tlm_cls_sent(const struct tlm_cls_map *m, uint64_t page)
{
	return tlm_cls_flag(m, page, TLM_CLS_SENT);
}

static inline void tlm_cls_mark_sent(struct tlm_cls_map *m, uint64_t page)
{
	tlm_cls_set_flag(m, page, TLM_CLS_SENT);
}

/* Forget every send flag (a new session sends everything again). */
void tlm_cls_clear_sent(struct tlm_cls_map *m);

#endif /* TLM_CLASSIFY_H */
