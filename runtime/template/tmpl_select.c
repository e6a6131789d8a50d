/*
 * Template selection by page count (page-count-based dedup): count how often every page
 * content occurs across several VM memory images and keep the most frequent ones.
 */
#include "template.h"
#include "tlm_io.h"
#include "template_int.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct content {
	uint64_t hash, count;
	const uint8_t *first;        /* first occurrence (inside an image mapping) */
};

struct counter {
	struct content *tab;
	uint64_t mask, used;
};

static int counter_grow(struct counter *c)
{
	uint64_t cap = c->tab ? (c->mask + 1) * 2 : 1u << 16;
	struct content *nt = calloc(cap, sizeof(*nt));

	if (!nt)
		return -ENOMEM;
	for (uint64_t i = 0; c->tab && i <= c->mask; i++) {
		uint64_t s = c->tab[i].hash & (cap - 1);

		if (!c->tab[i].count)
			continue;
		while (nt[s].count)
			s = (s + 1) & (cap - 1);
		nt[s] = c->tab[i];
	}
	free(c->tab);
	c->tab = nt;
	c->mask = cap - 1;
	return 0;
}

/* Count one page; equal hashes with other bytes are separate contents. */
static int counter_add(struct counter *c, const uint8_t *page)
{
	uint64_t h = tlm_page_hash(page), s;

	if ((!c->tab || 2 * (c->used + 1) > c->mask + 1) && counter_grow(c) < 0)
		return -ENOMEM;
	for (s = h & c->mask; c->tab[s].count; s = (s + 1) & c->mask)
		if (c->tab[s].hash == h && !memcmp(c->tab[s].first, page, TLM_PAGE_SIZE))
			break;
	if (!c->tab[s].count) {
		c->tab[s] = (struct content){ h, 0, page };
		c->used++;
	}
	c->tab[s].count++;
	return 0;
}

/* Most frequent first; ties by hash then bytes, so the choice is deterministic. */
static int by_count(const void *a, const void *b)
{
	const struct content *x = a, *y = b;

	if (x->count != y->count)
		return x->count < y->count ? 1 : -1;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return memcmp(x->first, y->first, TLM_PAGE_SIZE);
}

static int write_selection(const char *out, const struct content *sel, uint64_t n)
{
	char tmp[4200], err[512];
	uint64_t *hashes = malloc(n * sizeof(*hashes));
	int fd, rc = hashes ? 0 : -ENOMEM;

	fd = rc ? rc : tlm_atomic_write_begin(out, tmp, sizeof(tmp));
	for (uint64_t i = 0; fd >= 0 && rc == 0 && i < n; i++) {
		hashes[i] = sel[i].hash;
		rc = tlm_write_full(fd, sel[i].first, TLM_PAGE_SIZE);
	}
	if (fd >= 0)
		rc = rc ? (tlm_atomic_write_abort(fd, tmp), rc) : tlm_atomic_write_commit(fd, tmp, out);
	else
		rc = fd;
	if (rc < 0) {
		fprintf(stderr, "tlm-template: %s: cannot write: %s\n", out, strerror(-rc));
	} else {
		snprintf(tmp, sizeof(tmp), "%s%s", out, TLM_TMPL_INDEX_SUFFIX);
		rc = tlm_tmpl_write_index(tmp, hashes, n, NULL, err, sizeof(err));
		if (rc < 0)
			fprintf(stderr, "tlm-template: %s\n", err);
	}
	free(hashes);
	return rc;
}

int tlm_template_select(uint64_t max_pages, uint64_t min_count, const char *out,
			char **imgs, int nimg)
{
	struct counter c = { 0 };
	const void *maps[256];
	size_t lens[256];
	uint64_t total = 0, covered = 0, n = 0;
	char err[512];
	int rc = 0, mapped = 0;

	if (nimg > 256) {
		fprintf(stderr, "tlm-template: select: at most 256 images\n");
		return -E2BIG;
	}
	for (; mapped < nimg && rc == 0; mapped++) {
		rc = tlm_map_pages_file(imgs[mapped], &maps[mapped], &lens[mapped], err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "tlm-template: %s\n", err);
			break;
		}
		for (size_t off = 0; rc == 0 && off < lens[mapped]; off += TLM_PAGE_SIZE) {
			const uint8_t *p = (const uint8_t *)maps[mapped] + off;

			total++;
			if (!tlm_page_is_zero(p))
				rc = counter_add(&c, p);
		}
	}
	if (rc == 0) {
		/* Compact the table in place, then sort. */
		for (uint64_t i = 0; i <= c.mask; i++)
			if (c.tab[i].count >= min_count)
				c.tab[n++] = c.tab[i];
		qsort(c.tab, n, sizeof(*c.tab), by_count);
		n = n < max_pages ? n : max_pages;
		for (uint64_t i = 0; i < n; i++)
			covered += c.tab[i].count;
		if (n == 0) {
			fprintf(stderr, "tlm-template: select: no page content occurs %llu times or more\n",
				(unsigned long long)min_count);
			rc = -ENOENT;
		}
	}
	if (rc == 0 && (rc = write_selection(out, c.tab, n)) == 0)
		printf("selected %llu pages into %s; they cover %llu of %llu image pages (%.1f %%)\n",
		       (unsigned long long)n, out, (unsigned long long)covered,
		       (unsigned long long)total, total ? 100.0 * (double)covered / (double)total : 0);
	for (int i = 0; i < mapped; i++)
		munmap((void *)maps[i], lens[i]);
	free(c.tab);
	return rc;
}
