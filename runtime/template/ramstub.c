/* ramstub.c — the RAM stub (ramstub.h). */
#include "ramstub.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tlm_ramstub_write(int fd, pid_t pid, const char *template_path, char *err, size_t errlen)
{
	char page[TLM_RAMSTUB_SIZE] = { 0 };
	struct stat st;
	int n;

	errno = 0;
	if (fstat(fd, &st) < 0)
		goto fail;
	/* A file with data may be somebody's memory image: never destroy it. */
	if (st.st_blocks != 0)
		return -EEXIST;
	n = snprintf(page, sizeof(page), TLM_RAMSTUB_MAGIC "pid %ld\ntemplate %.3000s\n"
		     "why the guest memory of process %ld is a private mapping (libtlm-glue.so), "
		     "not this file: migrate it without x-ignore-shared or with tlm\n",
		     (long)pid, template_path ? template_path : "-", (long)pid);
	if (n < 0 || (size_t)n >= sizeof(page)) {
		errno = ENAMETOOLONG;
		goto fail;
	}
	/* Shrink first: the size is what makes QEMU refuse the file. */
	if (ftruncate(fd, TLM_RAMSTUB_SIZE) < 0 ||
	    pwrite(fd, page, sizeof(page), 0) != (ssize_t)sizeof(page))
		goto fail;
	return 0;
fail:
	n = errno ? errno : EIO;
	snprintf(err, errlen, "RAM stub: %s", strerror(n));
	return -n;
}

int tlm_ramstub_check(int fd, pid_t *pid)
{
	char head[64] = { 0 };
	const size_t mlen = sizeof(TLM_RAMSTUB_MAGIC) - 1;
	ssize_t got = pread(fd, head, sizeof(head) - 1, 0);
	char *end;
	long v;

	if (got < 0)
		return -errno;
	if ((size_t)got < mlen || memcmp(head, TLM_RAMSTUB_MAGIC, mlen) != 0 ||
	    strncmp(head + mlen, "pid ", 4) != 0)
		return 0;
	v = strtol(head + mlen + 4, &end, 10);
	if (*end != '\n' || v <= 0)
		return 0;
	*pid = (pid_t)v;
	return 1;
}
