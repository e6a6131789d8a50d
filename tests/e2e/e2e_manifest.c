#include "e2e_manifest.h"
#include "tlm_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tlm_proto.h"
#include "util.h"

#define E2E_MAGIC "TLMMAN1\0"
#define E2E_HDR 56u

int e2e_manifest_alloc(struct e2e_manifest *m, uint64_t pages)
{
	memset(m, 0, sizeof(*m));
	m->pages = pages;
	m->hash = calloc(pages ? pages : 1, sizeof(*m->hash));
	m->cls = calloc(pages ? pages : 1, 1);
	if (!m->hash || !m->cls) {
		e2e_manifest_free(m);
		return -ENOMEM;
	}
	return 0;
}

void e2e_manifest_free(struct e2e_manifest *m)
{
	free(m->hash);
	free(m->cls);
	m->hash = NULL;
	m->cls = NULL;
}

static void e2e_header(const struct e2e_manifest *m, uint8_t h[E2E_HDR])
{
	uint64_t psize = E2E_PAGE;

	memcpy(h, E2E_MAGIC, 8);
	memcpy(h + 8, &m->pages, 8);
	memcpy(h + 16, &psize, 8);
	memcpy(h + 24, &m->count[1], 32);
}

int e2e_manifest_write(const char *path, const struct e2e_manifest *m, char *err,
		       size_t errlen)
{
	char tmp[4200];
	uint8_t h[E2E_HDR];
	int fd, rc;

	fd = tlm_atomic_write_begin(path, tmp, sizeof(tmp));
	if (fd < 0) {
		snprintf(err, errlen, "manifest %s: %s", path, strerror(-fd));
		return fd;
	}
	e2e_header(m, h);
	rc = tlm_write_full(fd, h, sizeof(h));
	if (!rc)
		rc = tlm_write_full(fd, m->hash, m->pages * 8);
	if (!rc)
		rc = tlm_write_full(fd, m->cls, m->pages);
	if (rc) {
		tlm_atomic_write_abort(fd, tmp);
		snprintf(err, errlen, "manifest %s: write: %s", path, strerror(-rc));
		return rc;
	}
	rc = tlm_atomic_write_commit(fd, tmp, path);
	if (rc)
		snprintf(err, errlen, "manifest %s: commit: %s", path, strerror(-rc));
	return rc;
}

static int e2e_check_header(const char *path, const uint8_t h[E2E_HDR],
			    struct e2e_manifest *m, char *err, size_t errlen)
{
	uint64_t pages, psize;

	memcpy(&pages, h + 8, 8);
	memcpy(&psize, h + 16, 8);
	if (memcmp(h, E2E_MAGIC, 8) || psize != E2E_PAGE || pages == 0 || pages > (1ull << 32)) {
		snprintf(err, errlen, "manifest %s: bad header", path);
		return -EINVAL;
	}
	if (e2e_manifest_alloc(m, pages) < 0) {
		snprintf(err, errlen, "manifest %s: out of memory", path);
		return -ENOMEM;
	}
	memcpy(&m->count[1], h + 24, 32);
	return 0;
}

int e2e_manifest_read(const char *path, struct e2e_manifest *m, char *err, size_t errlen)
{
	uint8_t h[E2E_HDR];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc;

	memset(m, 0, sizeof(*m));
	if (fd < 0) {
		snprintf(err, errlen, "manifest %s: %s", path, strerror(errno));
		return -errno;
	}
	rc = tlm_read_full(fd, h, sizeof(h));
	if (!rc)
		rc = e2e_check_header(path, h, m, err, errlen);
	else
		snprintf(err, errlen, "manifest %s: short header", path);
	if (!rc) {
		rc = tlm_read_full(fd, m->hash, m->pages * 8);
		if (!rc)
			rc = tlm_read_full(fd, m->cls, m->pages);
		if (rc) {
			snprintf(err, errlen, "manifest %s: truncated", path);
			e2e_manifest_free(m);
		}
	}
	close(fd);
	return rc;
}

uint64_t e2e_manifest_runs(const struct e2e_manifest *m)
{
	uint64_t runs = 0;

	for (uint64_t i = 0; i < m->pages; i++)
		if (i == 0 || m->cls[i] != m->cls[i - 1] || m->cls[i] == TLM_CLASS_REF)
			runs++;
	return runs;
}
