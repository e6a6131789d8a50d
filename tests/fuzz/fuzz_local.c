/*
 * fuzz_local.c — the glue <-> daemon message checks (protocol/local.c). The input is one
 * packet: sent over a real SOCK_SEQPACKET socketpair and received with tlm_local_recv
 * (size and truncation checks), then validated with tlm_local_check. Promises checked: a
 * refusal has a reason; an accepted REGION is page aligned, within the address space and
 * carries a valid VM id; every string field is NUL-terminated.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "tlm_proto.h"

static void check_accepted(const struct tlm_local_msg *m)
{
	fuzz_check(memchr(m->vm_id, 0, sizeof(m->vm_id)) && memchr(m->source, 0, sizeof(m->source))
		   && memchr(m->text, 0, sizeof(m->text)), "string without NUL");
	if (m->type != TLM_LOCAL_REGION)
		return;
	fuzz_check(m->size && m->size % TLM_PROTO_PAGE_SIZE == 0 &&
		   m->base % TLM_PROTO_PAGE_SIZE == 0 && m->base + m->size > m->base &&
		   tlm_vmid_valid(m->vm_id), "bad REGION accepted");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tlm_local_msg m;
	char err[256] = "";
	int sv[2], fd;
	ssize_t n;
	int rc;

	if (size > sizeof(m) + 64)
		return 0;
	fuzz_check(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	fuzz_check(send(sv[1], data, size, MSG_NOSIGNAL) == (ssize_t)size, "send");
	n = tlm_local_recv(sv[0], &m, &fd);
	close(sv[0]);
	close(sv[1]);
	fuzz_check(fd == -1, "fd %d out of nowhere", fd);
	if (n != (ssize_t)sizeof(m)) {
		fuzz_check(n == -EBADMSG || (n == 0 && size == 0), "recv %zd for %zu bytes", n, size);
		return 0;
	}
	rc = tlm_local_check(&m, (size_t)n, err, sizeof(err));
	if (rc) {
		fuzz_check(rc == -EBADMSG && err[0], "rc %d reason '%s'", rc, err);
		return 0;
	}
	check_accepted(&m);
	return 0;
}
