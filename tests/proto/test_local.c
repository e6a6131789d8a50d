/*
 * test_local.c — glue <-> daemon local messages over socketpair(SOCK_SEQPACKET): fd passing,
 * wrong-size and truncated packets, extra fds closed, validation table, SO_PEERCRED.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "tlm_proto.h"

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

static void region(struct tlm_local_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->version = TLM_LOCAL_VERSION;
	m->type = TLM_LOCAL_REGION;
	m->flags = TLM_REGION_TEMPLATE | TLM_REGION_ARMED;
	m->page_size = 4096;
	m->base = 0x7f0000000000ull;
	m->size = 64ull << 20;
	m->uffd_features = 0x123;
	memset(m->digest, 0x42, sizeof(m->digest));
	strcpy(m->vm_id, "vm1");
	strcpy(m->source, "127.0.0.1:7000");
}

static void test_fd_passing(void **state)
{
	struct tlm_local_msg m, r;
	struct stat a, b;
	char err[200];
	int sv[2], fd, got;

	pair(sv);
	region(&m);
	fd = memfd_create("tlm-test", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(tlm_local_send(sv[0], &m, fd), 0);
	assert_int_equal(tlm_local_recv(sv[1], &r, &got), (ssize_t)sizeof(r));
	assert_true(got >= 0 && got != fd);
	assert_memory_equal(&m, &r, sizeof(m));
	assert_int_equal(tlm_local_check(&r, sizeof(r), err, sizeof(err)), 0);
	assert_int_equal(fstat(fd, &a), 0);
	assert_int_equal(fstat(got, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);      /* the same file */
	assert_true(fcntl(got, F_GETFD) & FD_CLOEXEC);
	close(got);
	close(fd);

	m.type = TLM_LOCAL_ARM;                     /* without fd */
	assert_int_equal(tlm_local_send(sv[1], &m, -1), 0);
	assert_int_equal(tlm_local_recv(sv[0], &r, &got), (ssize_t)sizeof(r));
	assert_int_equal(got, -1);
	assert_int_equal(r.type, TLM_LOCAL_ARM);

	close(sv[0]);
	assert_int_equal(tlm_local_recv(sv[1], &r, &got), 0);   /* EOF */
	close(sv[1]);
}

/* Raw sendmsg of len bytes with nfds copies of fd attached. */
static void raw_send(int sock, const void *buf, size_t len, int fd, int nfds)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(4 * sizeof(int))];
	} cm;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fds[4] = { fd, fd, fd, fd };

	if (nfds) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.b;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		cm.h.cmsg_level = SOL_SOCKET;
		cm.h.cmsg_type = SCM_RIGHTS;
		cm.h.cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(&cm.h), fds, nfds * sizeof(int));
	}
	assert_int_equal(sendmsg(sock, &mh, 0), (ssize_t)len);
}

static void test_bad_packets(void **state)
{
	static uint8_t big[sizeof(struct tlm_local_msg) + 64];
	struct tlm_local_msg m, r;
	int sv[2], fd, got, before;

	pair(sv);
	region(&m);
	fd = memfd_create("tlm-test", MFD_CLOEXEC);
	before = count_fds();

	raw_send(sv[0], &m, 10, fd, 1);              /* too short, with an fd */
	assert_int_equal(tlm_local_recv(sv[1], &r, &got), -EBADMSG);
	assert_int_equal(got, -1);
	assert_int_equal(count_fds(), before);      /* the fd that came along is closed */

	raw_send(sv[0], big, sizeof(big), fd, 1);    /* too long: MSG_TRUNC */
	assert_int_equal(tlm_local_recv(sv[1], &r, &got), -EBADMSG);
	assert_int_equal(count_fds(), before);

	raw_send(sv[0], &m, sizeof(m), fd, 4);       /* right size, 4 fds: keep one */
	assert_int_equal(tlm_local_recv(sv[1], &r, &got), (ssize_t)sizeof(r));
	assert_true(got >= 0);
	assert_int_equal(count_fds(), before + 1);
	close(got);

	/* The channel is still usable afterwards. */
	assert_int_equal(tlm_local_send(sv[0], &m, -1), 0);
	assert_int_equal(tlm_local_recv(sv[1], &r, &got), (ssize_t)sizeof(r));
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

struct local_case {
	const char *what;
	void (*mutate)(struct tlm_local_msg *m);
	const char *expect;
};

static void m_version(struct tlm_local_msg *m) { m->version = 2; }
static void m_type(struct tlm_local_msg *m) { m->type = 9; }
static void m_flags(struct tlm_local_msg *m) { m->flags |= 0x10; }
static void m_pgsz(struct tlm_local_msg *m) { m->page_size = 8192; }
static void m_size0(struct tlm_local_msg *m) { m->size = 0; }
static void m_size(struct tlm_local_msg *m) { m->size = 4097; }
static void m_base(struct tlm_local_msg *m) { m->base = 0x1001; }
static void m_wrap(struct tlm_local_msg *m) { m->base = UINT64_MAX - 4095; }
static void m_vmid(struct tlm_local_msg *m) { strcpy(m->vm_id, "a/b"); }
static void m_vmid0(struct tlm_local_msg *m) { m->vm_id[0] = '\0'; }
static void m_vmnul(struct tlm_local_msg *m) { memset(m->vm_id, 'a', sizeof(m->vm_id)); }
static void m_src(struct tlm_local_msg *m) { memset(m->source, 'a', sizeof(m->source)); }
static void m_text(struct tlm_local_msg *m) { memset(m->text, 'a', sizeof(m->text)); }
static void m_nodig(struct tlm_local_msg *m) { memset(m->digest, 0, sizeof(m->digest)); }
static void m_digest(struct tlm_local_msg *m) { m->flags &= ~TLM_REGION_TEMPLATE; }

static const struct local_case local_cases[] = {
	{ "version", m_version, "version 2, expected 1" },
	{ "type", m_type, "unknown type 9" },
	{ "flags", m_flags, "unknown flags 0x13" },
	{ "page size", m_pgsz, "page size 8192" },
	{ "size zero", m_size0, "size 0 is not" },
	{ "size", m_size, "size 4097 is not" },
	{ "base", m_base, "not page aligned" },
	{ "wrap", m_wrap, "overflows" },
	{ "vm id", m_vmid, "invalid vm id \"a/b\"" },
	{ "vm id empty", m_vmid0, "invalid vm id \"\"" },
	{ "vm id no NUL", m_vmnul, "not NUL-terminated" },
	{ "source no NUL", m_src, "not NUL-terminated" },
	{ "text no NUL", m_text, "not NUL-terminated" },
	{ "template no digest", m_nodig, "template flag set but digest is zero" },
	{ "digest no template", m_digest, "digest set but no template flag" },
};

static void test_check_table(void **state)
{
	struct tlm_local_msg m;
	char err[200];

	region(&m);
	assert_int_equal(tlm_local_check(&m, sizeof(m), err, sizeof(err)), 0);
	assert_int_equal(tlm_local_check(&m, sizeof(m) - 1, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "bytes, expected"));
	for (size_t i = 0; i < sizeof(local_cases) / sizeof(local_cases[0]); i++) {
		const struct local_case *c = &local_cases[i];

		region(&m);
		c->mutate(&m);
		err[0] = '\0';
		assert_int_equal(tlm_local_check(&m, sizeof(m), err, sizeof(err)), -EBADMSG);
		print_message("%-20s -> %s\n", c->what, err);
		if (!strstr(err, c->expect))
			fail_msg("%s: reason \"%s\" lacks \"%s\"", c->what, err, c->expect);
	}
	/* Non-REGION messages do not need region fields. */
	memset(&m, 0, sizeof(m));
	m.version = TLM_LOCAL_VERSION;
	m.type = TLM_LOCAL_ERROR;
	strcpy(m.text, "no such vm");
	assert_int_equal(tlm_local_check(&m, sizeof(m), err, sizeof(err)), 0);
}

static void test_peer_cred(void **state)
{
	pid_t pid = 0;
	uid_t uid = 1;
	int sv[2];

	pair(sv);
	assert_int_equal(tlm_local_peer_ok(sv[0], &pid, &uid), 0);
	assert_int_equal(pid, getpid());
	assert_int_equal(uid, geteuid());
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(tlm_local_peer_ok(-1, NULL, NULL), -EBADF);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fd_passing),
		cmocka_unit_test(test_bad_packets),
		cmocka_unit_test(test_check_table),
		cmocka_unit_test(test_peer_cred),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
