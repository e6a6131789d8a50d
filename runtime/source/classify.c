/*
 * classify.c — page classes of a frozen region and their run-length map (classify.h).
 *
 * Cost per page, cheapest test first: a memcmp with the same-offset template page (stops
 * at the first differing byte for most DATA pages), the zero test, a memcmp with the
 * template page following the previous REF (keeps REF runs long when a block of the
 * template sits shifted in the guest), and only then the hash lookup (one XXH3 pass plus a
 * verified probe).
 */
#include "classify.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

int tlm_cls_map_init(struct tlm_cls_map *m, uint64_t page_count, const struct tlm_tmpl *tmpl,
		     uint64_t tmpl_base)
{
	memset(m, 0, sizeof(*m));
	if (page_count == 0 || page_count > SIZE_MAX / 16)
		return -EINVAL;
	m->cls = calloc(page_count, 1);
	if (!m->cls)
		return -ENOMEM;
	m->page_count = page_count;
	m->tmpl = tmpl;
	m->tmpl_base = tmpl_base;
	m->tmpl_pages = tmpl ? tlm_tmpl_page_count(tmpl) : 0;
	return 0;
}

void tlm_cls_map_fini(struct tlm_cls_map *m)
{
	free(m->cls);
	free(m->runs);
	free(m->run_first);
	memset(m, 0, sizeof(*m));
}

void tlm_cls_map_reset(struct tlm_cls_map *m)
{
	memset(m->cls, 0, m->page_count);
	m->added = 0;
	m->nruns = 0;
	m->known_pages = 0;
	m->hole_pages = 0;
	memset(m->count, 0, sizeof(m->count));
}

void tlm_cls_clear_sent(struct tlm_cls_map *m)
{
	for (uint64_t i = 0; i < m->added; i++)
		m->cls[i] &= TLM_CLS_MASK;
}

/* Template page k if it exists, else NULL. */
static const void *tmpl_page(const struct tlm_cls_map *m, uint64_t k)
{
	if (!m->tmpl || k >= m->tmpl_pages)
		return NULL;
	return tlm_tmpl_page(m->tmpl, k);
}

enum tlm_page_class tlm_classify_page_hint(const struct tlm_cls_map *m, uint64_t page,
					   const void *data, uint64_t hint, uint64_t *k)
{
	const void *t = tmpl_page(m, m->tmpl_base + page);
	int64_t found;

	*k = 0;
	if (t && memcmp(data, t, TLM_PAGE_SIZE) == 0) {
		*k = m->tmpl_base + page;
		return TLM_CLASS_TEMPLATE;
	}
	if (tlm_page_is_zero(data))
		return TLM_CLASS_ZERO;
	if (!m->tmpl)
		return TLM_CLASS_DATA;
	t = hint != UINT64_MAX ? tmpl_page(m, hint) : NULL;
	if (t && memcmp(data, t, TLM_PAGE_SIZE) == 0) {
		*k = hint;
		return TLM_CLASS_REF;
	}
	found = tlm_tmpl_lookup(m->tmpl, data);
	if (found < 0)
		return TLM_CLASS_DATA;
	*k = (uint64_t)found;
	return TLM_CLASS_REF;
}

enum tlm_page_class tlm_classify_page(const struct tlm_cls_map *m, uint64_t page,
				      const void *data, uint64_t *k)
{
	const struct tlm_run *last = m->nruns ? &m->runs[m->nruns - 1] : NULL;
	uint64_t hint = last && last->cls == TLM_CLASS_REF ? last->arg + last->len : UINT64_MAX;

	return tlm_classify_page_hint(m, page, data, hint, k);
}

static int grow_runs(struct tlm_cls_map *m)
{
	size_t cap = m->cap ? m->cap * 2 : 1024;
	struct tlm_run *r = realloc(m->runs, cap * sizeof(*r));
	uint64_t *f;

	if (!r)
		return -ENOMEM;
	m->runs = r;
	f = realloc(m->run_first, cap * sizeof(*f));
	if (!f)
		return -ENOMEM;
	m->run_first = f;
	m->cap = cap;
	return 0;
}

int tlm_cls_map_add_run(struct tlm_cls_map *m, enum tlm_page_class c, uint64_t k, uint64_t n)
{
	struct tlm_run *last = m->nruns ? &m->runs[m->nruns - 1] : NULL;
	uint64_t page = m->added;

	if (n == 0)
		return 0;
	if (n > m->page_count - page || c > TLM_CLASS_DATA)   /* KEEP (0): fix maps */
		return -ERANGE;
	if (c != TLM_CLASS_REF)
		k = 0;   /* a run's arg is the REF template page; 0 on the wire otherwise */
	while (n) {
		uint64_t take;

		if (last && last->cls == c && last->len < UINT32_MAX &&
		    (c != TLM_CLASS_REF || last->arg + last->len == k)) {
			take = n < UINT32_MAX - last->len ? n : UINT32_MAX - last->len;
			last->len += (uint32_t)take;
		} else {
			if (m->nruns == m->cap && grow_runs(m) < 0)
				return -ENOMEM;
			take = n < UINT32_MAX ? n : UINT32_MAX;
			last = &m->runs[m->nruns];
			*last = (struct tlm_run){ .cls = (uint8_t)c, .len = (uint32_t)take, .arg = k };
			m->run_first[m->nruns++] = page;
		}
		memset(m->cls + page, c, take);
		m->count[c] += take;
		m->added += take;
		page += take;
		k += c == TLM_CLASS_REF ? take : 0;
		n -= take;
	}
	return 0;
}

int tlm_cls_map_add(struct tlm_cls_map *m, enum tlm_page_class c, uint64_t k)
{
	return tlm_cls_map_add_run(m, c, k, 1);
}

int tlm_classify_mem(struct tlm_cls_map *m, const void *data, uint64_t n)
{
	const uint8_t *p = data;

	if (n > m->page_count - m->added)
		return -ERANGE;
	for (uint64_t i = 0; i < n; i++, p += TLM_PAGE_SIZE) {
		uint64_t k;
		enum tlm_page_class c = tlm_classify_page(m, m->added, p, &k);
		int rc = tlm_cls_map_add(m, c, k);

		if (rc < 0)
			return rc;
	}
	return 0;
}

/* The run holding page: binary search over run_first (ascending). */
static size_t run_of(const struct tlm_cls_map *m, uint64_t page)
{
	size_t lo = 0, hi = m->nruns;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (m->run_first[mid] <= page)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

enum tlm_page_class tlm_cls_map_get(const struct tlm_cls_map *m, uint64_t page, uint64_t *k)
{
	enum tlm_page_class c = m->cls[page] & TLM_CLS_MASK;
	size_t r;

	*k = 0;
	if (c == TLM_CLASS_TEMPLATE) {
		*k = m->tmpl_base + page;
	} else if (c == TLM_CLASS_REF) {
		r = run_of(m, page);
		*k = m->runs[r].arg + (page - m->run_first[r]);
	}
	return c;
}
