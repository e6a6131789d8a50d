/* Shared fixture for the template tests: a scratch directory with generated page files. */
#ifndef TLM_TEST_TMPL_FIXTURE_H
#define TLM_TEST_TMPL_FIXTURE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "template.h"
#include "tlm_test.h"

struct fx {
	char dir[64];
	char pages[128], index[160];
};

/* Page i of a generated image: content id ids[i]; id 0 = zero page, else a pattern
 * unique to the id (so equal ids mean equal pages). */
static inline void fx_fill_page(uint8_t *p, uint32_t id)
{
	uint64_t x = id;

	if (id == 0) {
		memset(p, 0, TLM_PAGE_SIZE);
		return;
	}
	tt_fill(p, TLM_PAGE_SIZE, &x);
}

static inline void fx_write_pages(const char *path, const uint32_t *ids, size_t n)
{
	uint8_t page[TLM_PAGE_SIZE];
	FILE *f = fopen(path, "w");

	for (size_t i = 0; i < n; i++) {
		fx_fill_page(page, ids[i]);
		fwrite(page, 1, sizeof(page), f);
	}
	fclose(f);
}

static inline int fx_setup(struct fx *f)
{
	snprintf(f->dir, sizeof(f->dir), "/tmp/tlm-tmpl-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->pages, sizeof(f->pages), "%s/t.pages", f->dir);
	snprintf(f->index, sizeof(f->index), "%s/t.pages.tlmi", f->dir);
	return 0;
}

static inline void fx_teardown(struct fx *f)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", f->dir);
}

/* Overwrite bytes of a file at off. */
static inline void fx_patch(const char *path, off_t off, const void *b, size_t n)
{
	int fd = open(path, O_WRONLY);

	if (pwrite(fd, b, n, off) != (ssize_t)n)
		abort();
	close(fd);
}

#endif
