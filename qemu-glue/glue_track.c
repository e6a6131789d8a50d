/*
 * glue_track.c — what the glue tells about the region it mapped (TLM_REGION_FILE) and
 * its dirty tracking (TLM_TRACK=1), at mmap (glue.c) and, on a destination, once the
 * migration is done (glue_daemon.c: the daemon has unregistered its uffd; see glue.c's
 * header for why tracking needs this process's own registration).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "glue_int.h"

/*
 * TLM_REGION_FILE: one line
 *   "base=0x.. size=N offset=N template=PATH|- mapping=private|shared track=wp-async|none"
 * so that an orchestrator can serve this process's RAM later (tlm-page-server
 * pid=PID,addr=BASE): the replacement mapping is private, so neither the RAM file nor QMP
 * shows where it is; track says whether the page server can track writes there live.
 * Fields are only ever appended (readers split on spaces into k=v). Written to a temporary
 * name and renamed: readers never see half a line.
 */
void glue_publish(const struct glue_region *r, const struct glue_cfg *c)
{
	char tmp[4096], line[4200];
	bool ok;
	int fd, n;

	if (!c->region_file)
		return;
	n = snprintf(line, sizeof(line), "base=%p size=%zu offset=%llu template=%s mapping=%s "
		     "track=%s\n", r->base, r->size, (unsigned long long)r->offset,
		     r->has_template ? c->template_path : "-", r->shared ? "shared" : "private",
		     r->track.fd >= 0 ? "wp-async" : "none");
	if (n >= (int)sizeof(line) ||
	    snprintf(tmp, sizeof(tmp), "%s.tmp", c->region_file) >= (int)sizeof(tmp))
		goto fail;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		goto fail;
	ok = write(fd, line, (size_t)n) == n;
	ok = close(fd) == 0 && ok;
	if (!ok || rename(tmp, c->region_file) < 0) {
		unlink(tmp);
		goto fail;
	}
	return;
fail:
	glue_log(GLUE_WARN, "TLM_REGION_FILE %s: cannot write it: %s", c->region_file,
		 strerror(errno ? errno : ENAMETOOLONG));
}

/*
 * TLM_TRACK: register the mapping with a userfaultfd in write-protect-async mode, so that
 * tlm-page-server's PAGEMAP_SCAN sees which pages are written (file header). WP is the only
 * mode: with WP_ASYNC the kernel then admits any memory (shmem, private file, anonymous).
 * WP_HUGETLBFS_SHMEM is the kernel's word that it protects file memory with pte markers
 * (an unmapped page keeps its protection); WP_UNPOPULATED (6.4) extends the markers to
 * unpopulated anonymous pages, so it is asked for where the kernel has it. Never fails the
 * mmap: without tracking the page server classifies after the stop.
 */
static int glue_track_register(struct glue_region *r, char *why, size_t whylen)
{
	const uint64_t wp = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
	int rc;

	rc = tlm_uffd_open(&r->track, 0, wp | UFFD_FEATURE_WP_UNPOPULATED);
	if (rc == -EINVAL)
		rc = tlm_uffd_open(&r->track, 0, wp);
	if (rc < 0)
		snprintf(why, whylen, "userfaultfd: %s", rc == -EINVAL ? "the kernel lacks "
			 "WP_ASYNC or WP_HUGETLBFS_SHMEM (Linux 6.7+)" : strerror(-rc));
	else if ((rc = tlm_uffd_register(&r->track, r->base, r->size, TLM_UFFD_MODE_WP,
					 NULL)) < 0)
		snprintf(why, whylen, "registering %p+%zu for write-protect: %s", r->base,
			 r->size, strerror(-rc));
	if (rc < 0) {
		tlm_uffd_close(&r->track);
		r->track.fd = -1;
	}
	return rc;
}

static void glue_track_start(struct glue_region *r, const char *when)
{
	char why[200];

	if (glue_track_register(r, why, sizeof(why)) < 0) {
		glue_log(GLUE_WARN, "%s: dirty tracking off (%s); tlm-page-server will classify "
			 "after the stop", glue_vm(), why);
		return;
	}
	glue_log(GLUE_INFO, "%s: dirty tracking on%s: %p+%zu registered userfaultfd WP with "
		 "WP_ASYNC WP_HUGETLBFS_SHMEM%s", glue_vm(), when, r->base, r->size,
		 r->track.features & UFFD_FEATURE_WP_UNPOPULATED ? " WP_UNPOPULATED" : "");
}

void glue_track_mapped(struct glue_region *r, const struct glue_cfg *c)
{
	if (!c->track)
		return;
	if (r->sock >= 0) {
		glue_log(GLUE_INFO, "%s: dirty tracking once the migration is done (%s is handed "
			 "to tlm-uffd-server, whose userfaultfd takes the whole mapping until "
			 "then)", glue_vm(), c->ram_path);
		return;
	}
	glue_track_start(r, "");
}

void glue_track_done(struct glue_region *r)
{
	const struct glue_cfg *c = glue_config();

	if (!c->track || r->track.fd >= 0)
		return;
	glue_track_start(r, " after the migration");
	glue_publish(r, c);
}
