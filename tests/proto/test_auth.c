/*
 * test_auth.c — key files (permissions, sizes, hex) and the handshakes over a real
 * socketpair, server in a second thread: success, wrong key on either side, wrong version,
 * a replayed AUTH, refusal by the server, timeout, and no over-read past VM_ACCEPT.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "samples.h"

static char tmpdir[64];

/* ---- key files ------------------------------------------------------------------------------ */

static const char *write_key(const char *name, const void *data, size_t n, mode_t mode)
{
	static char path[128];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

static void expect_key_err(const char *path, int ret, const char *msg)
{
	struct tlm_key k;
	char err[256] = "";

	assert_int_equal(tlm_key_load(path, &k, err, sizeof(err)), ret);
	print_message("%s\n", err);
	if (!strstr(err, msg))
		fail_msg("reason \"%s\" lacks \"%s\"", err, msg);
	assert_int_equal(k.len, 0);
}

static void test_key_files(void **state)
{
	uint8_t raw[300];
	struct tlm_key k;
	char err[256];
	const char *p;

	for (size_t i = 0; i < sizeof(raw); i++)
		raw[i] = (uint8_t)(i * 37 + 1);
	p = write_key("raw32", raw, 32, 0600);
	assert_int_equal(tlm_key_load(p, &k, err, sizeof(err)), 0);
	assert_int_equal(k.len, 32);
	assert_memory_equal(k.b, raw, 32);
	p = write_key("ro", raw, 16, 0400);
	assert_int_equal(tlm_key_load(p, &k, err, sizeof(err)), 0);
	assert_int_equal(k.len, 16);

	p = write_key("hex", "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100\n",
		      65, 0600);
	assert_int_equal(tlm_key_load(p, &k, err, sizeof(err)), 0);
	assert_int_equal(k.len, 32);
	assert_int_equal(k.b[0], 0x00);
	assert_int_equal(k.b[1], 0x11);
	assert_int_equal(k.b[15], 0xff);
	assert_int_equal(k.b[16], 0xff);
	assert_int_equal(k.b[31], 0x00);

	p = write_key("open", raw, 32, 0644);
	expect_key_err(p, -EPERM, "permissions 0644 are too open (need 0600)");
	p = write_key("group", raw, 32, 0640);
	expect_key_err(p, -EPERM, "permissions 0640 are too open");
	p = write_key("short", raw, 15, 0600);
	expect_key_err(p, -EINVAL, "15 bytes (need 16..64");
	p = write_key("long", raw, 65, 0600);
	expect_key_err(p, -EINVAL, "65 bytes (need 16..64");
	p = write_key("huge", raw, 200, 0600);
	expect_key_err(p, -EINVAL, "too large");
	p = write_key("hexshort", "00112233445566778899aabbccddee\n", 31, 0600);
	expect_key_err(p, -EINVAL, "30 hex digits give 15 bytes");
	p = write_key("hexodd", "00112233445566778899aabbccddeeff0\n", 34, 0600);
	expect_key_err(p, -EINVAL, "odd number of hex digits (33)");
	p = write_key("empty", "", 0, 0600);
	expect_key_err(p, -EINVAL, "0 bytes");
	expect_key_err(tmpdir, -EINVAL, "not a regular file");
	snprintf(err, sizeof(err), "%s/missing", tmpdir);
	expect_key_err(err, -ENOENT, "No such file");
}

/* ---- handshakes ------------------------------------------------------------------------------ */

static struct tlm_key key_a, key_b;

struct server {
	pthread_t th;
	int fd;
	const struct tlm_key *key;
	int ret;
	uint8_t channel;
	struct tlm_msg open;
	char err[256];
	bool refuse;            /* answer VM_OPEN with ERROR UNKNOWN_VM */
	bool extra;             /* send PROGRESS right behind VM_ACCEPT */
};

static void *server_main(void *arg)
{
	struct server *s = arg;
	struct tlm_msg m = { .type = TLM_MSG_VM_ACCEPT };
	uint8_t buf[64];
	ssize_t n;

	s->ret = tlm_proto_server_handshake(s->fd, s->key, &s->channel, &s->open, 5000,
					    s->err, sizeof(s->err));
	if (s->ret)
		return NULL;
	if (s->refuse) {
		tlm_proto_send_error(s->fd, TLM_ERR_UNKNOWN_VM, "unknown vm \"%s\"",
				     s->open.u.vm_open.vm_id);
		return NULL;
	}
	m.u.vm_accept.page_count = s->open.u.vm_open.ram_size / TLM_PROTO_PAGE_SIZE;
	n = tlm_proto_encode(&m, buf, sizeof(buf));
	if (s->extra) {
		sample_msg(TLM_MSG_PROGRESS, &m);
		n += tlm_proto_encode(&m, buf + n, sizeof(buf) - n);
	}
	if (write(s->fd, buf, n) != n)      /* one write: both frames arrive together */
		s->ret = -EIO;
	return NULL;
}

static void server_start(struct server *s, int fd, const struct tlm_key *k)
{
	s->fd = fd;
	s->key = k;
	assert_int_equal(pthread_create(&s->th, NULL, server_main, s), 0);
}

static int client_run(int fd, const struct tlm_key *k, struct tlm_msg *acc, char *err)
{
	struct tlm_msg open;

	sample_msg(TLM_MSG_VM_OPEN, &open);
	err[0] = '\0';
	return tlm_proto_client_handshake(fd, k, TLM_CHAN_URGENT, &open, acc, 5000, err, 256);
}

static void pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void test_handshake_ok(void **state)
{
	struct server s = { .extra = true };
	struct tlm_msg acc, m;
	uint8_t buf[64];
	char err[256];
	int sv[2];

	pair(sv);
	/* Daemons hand over non-blocking sockets: the handshake must cope. */
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	server_start(&s, sv[1], &key_a);
	assert_int_equal(client_run(sv[0], &key_a, &acc, err), 0);
	pthread_join(s.th, NULL);
	assert_int_equal(s.ret, 0);
	assert_int_equal(s.channel, TLM_CHAN_URGENT);
	assert_string_equal(s.open.u.vm_open.vm_id, "vm-01.test_A");
	assert_int_equal(acc.type, TLM_MSG_VM_ACCEPT);
	assert_int_equal(acc.u.vm_accept.page_count, (256u << 20) / 4096);
	/* The handshake read exactly its frames: the PROGRESS is still in the socket. */
	assert_int_equal(read(sv[0], buf, sizeof(buf)), 24);
	assert_int_equal(tlm_proto_decode(buf, 24, &m, NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(m.type, TLM_MSG_PROGRESS);
	close(sv[0]);
	close(sv[1]);
}

static void wrong_key(const struct tlm_key *ck, const struct tlm_key *sk)
{
	struct server s = { 0 };
	struct tlm_msg acc;
	char err[256];
	int sv[2];

	pair(sv);
	server_start(&s, sv[1], sk);
	assert_int_equal(client_run(sv[0], ck, &acc, err), -EACCES);
	pthread_join(s.th, NULL);
	print_message("client: %s\nserver: %s\n", err, s.err);
	assert_non_null(strstr(err, "server failed authentication"));
	assert_int_equal(s.ret, -EACCES);
	assert_non_null(strstr(s.err, "peer: authentication failed"));
	close(sv[0]);
	close(sv[1]);
}

static void test_wrong_key_server(void **state)
{
	wrong_key(&key_a, &key_b);
}

static void test_wrong_key_client(void **state)
{
	wrong_key(&key_b, &key_a);
}

static void test_refused_vm(void **state)
{
	struct server s = { .refuse = true };
	struct tlm_msg acc;
	char err[256];
	int sv[2];

	pair(sv);
	server_start(&s, sv[1], &key_a);
	assert_int_equal(client_run(sv[0], &key_a, &acc, err), -ECONNREFUSED);
	pthread_join(s.th, NULL);
	assert_int_equal(s.ret, 0);
	assert_string_equal(err, "peer: unknown vm \"vm-01.test_A\"");
	close(sv[0]);
	close(sv[1]);
}

/* A hand-driven client: one frame at a time, like the real one. */
static void raw_send(int fd, const struct tlm_msg *m)
{
	assert_int_equal(tlm_proto_send(fd, m, 2000), 0);
}

static void raw_recv(int fd, struct tlm_msg *m)
{
	uint8_t buf[512];
	char err[256];
	ssize_t flen;

	assert_int_equal(read(fd, buf, 8), 8);
	flen = tlm_proto_frame_len(buf, 8, err, sizeof(err));
	assert_true(flen >= 8 && flen <= (ssize_t)sizeof(buf));
	if (flen > 8)
		assert_int_equal(read(fd, buf + 8, flen - 8), flen - 8);
	assert_int_equal(tlm_proto_decode(buf, flen, m, NULL, 0, err, sizeof(err)), 0);
}

static void test_wrong_version(void **state)
{
	struct server s = { 0 };
	struct tlm_msg m = { .type = TLM_MSG_HELLO };
	int sv[2];

	pair(sv);
	server_start(&s, sv[1], &key_a);
	m.u.hello.ver_min = TLM_PROTO_VERSION + 1;
	m.u.hello.ver_max = TLM_PROTO_VERSION + 2;
	m.u.hello.channel = TLM_CHAN_BULK;
	raw_send(sv[0], &m);
	raw_recv(sv[0], &m);
	pthread_join(s.th, NULL);
	assert_int_equal(m.type, TLM_MSG_ERROR);
	assert_int_equal(m.u.error.code, TLM_ERR_VERSION);
	print_message("peer sent: %s\nserver: %s\n", m.u.error.msg, s.err);
	assert_non_null(strstr(m.u.error.msg, "not supported"));
	assert_int_equal(s.ret, -EPROTONOSUPPORT);
	close(sv[0]);
	close(sv[1]);
}

/* A server that picks a version the client did not offer. */
static void *bad_version_server(void *arg)
{
	int fd = *(int *)arg;
	struct tlm_msg m;

	raw_recv(fd, &m);
	m = (struct tlm_msg){ .type = TLM_MSG_CHALLENGE };
	m.u.challenge.version = 7;
	raw_send(fd, &m);
	raw_recv(fd, &m);               /* the client's ERROR */
	*(int *)arg = m.type == TLM_MSG_ERROR && m.u.error.code == TLM_ERR_VERSION;
	return NULL;
}

static void test_server_bad_version(void **state)
{
	struct tlm_msg acc;
	char err[256];
	pthread_t th;
	int sv[2], arg;

	pair(sv);
	arg = sv[1];
	assert_int_equal(pthread_create(&th, NULL, bad_version_server, &arg), 0);
	assert_int_equal(client_run(sv[0], &key_a, &acc, err), -EPROTONOSUPPORT);
	pthread_join(th, NULL);
	assert_int_equal(arg, 1);
	assert_non_null(strstr(err, "server chose protocol version 7"));
	close(sv[0]);
	close(sv[1]);
}

/* Record a legitimate client's HELLO and AUTH, replay them on a new connection. */
static void test_replayed_auth(void **state)
{
	struct tlm_msg hello = { .type = TLM_MSG_HELLO }, ch1, ch2, auth, m;
	struct server s1 = { 0 }, s2 = { 0 };
	int sv[2];

	hello.u.hello.ver_min = hello.u.hello.ver_max = TLM_PROTO_VERSION;
	hello.u.hello.channel = TLM_CHAN_BULK;
	assert_int_equal(tlm_proto_random(hello.u.hello.nonce, 32), 0);

	pair(sv);
	server_start(&s1, sv[1], &key_a);
	raw_send(sv[0], &hello);
	raw_recv(sv[0], &ch1);
	assert_int_equal(ch1.type, TLM_MSG_CHALLENGE);
	auth = (struct tlm_msg){ .type = TLM_MSG_AUTH };
	tlm_proto_mac(&key_a, "tlm1-cli", ch1.u.challenge.nonce, hello.u.hello.nonce,
		      TLM_CHAN_BULK, auth.u.auth.mac);
	raw_send(sv[0], &auth);
	raw_recv(sv[0], &m);
	assert_int_equal(m.type, TLM_MSG_AUTH_OK);    /* session 1 authenticated */
	close(sv[0]);                                 /* server fails reading VM_OPEN */
	pthread_join(s1.th, NULL);
	assert_int_not_equal(s1.ret, 0);
	close(sv[1]);

	pair(sv);
	server_start(&s2, sv[1], &key_a);
	raw_send(sv[0], &hello);                      /* same client nonce */
	raw_recv(sv[0], &ch2);
	assert_memory_not_equal(ch1.u.challenge.nonce, ch2.u.challenge.nonce, 32);
	raw_send(sv[0], &auth);                       /* replayed proof */
	raw_recv(sv[0], &m);
	pthread_join(s2.th, NULL);
	assert_int_equal(m.type, TLM_MSG_ERROR);
	assert_int_equal(m.u.error.code, TLM_ERR_AUTH);
	assert_string_equal(m.u.error.msg, "authentication failed");
	assert_int_equal(s2.ret, -EACCES);
	print_message("server: %s\n", s2.err);
	close(sv[0]);
	close(sv[1]);
}

static void test_timeout_and_eof(void **state)
{
	struct tlm_msg acc, open;
	char err[256];
	int sv[2];
	uint8_t ch;

	pair(sv);               /* nobody answers */
	sample_msg(TLM_MSG_VM_OPEN, &open);
	assert_int_equal(tlm_proto_client_handshake(sv[0], &key_a, TLM_CHAN_BULK, &open, &acc,
						    200, err, sizeof(err)), -ETIMEDOUT);
	assert_string_equal(err, "handshake timed out");
	close(sv[1]);           /* now the peer is gone */
	assert_int_equal(tlm_proto_server_handshake(sv[0], &key_a, &ch, &open, 200, err,
						    sizeof(err)), -ECONNRESET);
	assert_non_null(strstr(err, "peer closed the connection"));
	close(sv[0]);
}

static void test_garbage_peer(void **state)
{
	struct tlm_msg open, m;
	char err[256];
	int sv[2];
	uint8_t ch;

	pair(sv);
	/* Not a tlm peer: an HTTP request. */
	assert_int_equal(write(sv[1], "GET / HTTP/1.1\r\n\r\n", 18), 18);
	assert_int_equal(tlm_proto_server_handshake(sv[0], &key_a, &ch, &open, 1000, err,
						    sizeof(err)), -EBADMSG);
	print_message("server: %s\n", err);
	raw_recv(sv[1], &m);
	assert_int_equal(m.type, TLM_MSG_ERROR);
	assert_int_equal(m.u.error.code, TLM_ERR_PROTOCOL);
	close(sv[0]);
	close(sv[1]);
}

static void test_mac(void **state)
{
	uint8_t a[32] = { 1 }, b[32] = { 2 }, m1[32], m2[32];

	tlm_proto_mac(&key_a, "tlm1-cli", a, b, 1, m1);
	tlm_proto_mac(&key_a, "tlm1-cli", a, b, 1, m2);
	assert_true(tlm_proto_mac_equal(m1, m2));
	tlm_proto_mac(&key_a, "tlm1-cli", a, b, 2, m2);
	assert_false(tlm_proto_mac_equal(m1, m2));
	tlm_proto_mac(&key_a, "tlm1-srv", a, b, 1, m2);
	assert_false(tlm_proto_mac_equal(m1, m2));
	tlm_proto_mac(&key_b, "tlm1-cli", a, b, 1, m2);
	assert_false(tlm_proto_mac_equal(m1, m2));
}

static int setup(void **state)
{
	strcpy(tmpdir, "/tmp/tlm-proto-auth-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	key_a.len = key_b.len = 32;
	memset(key_a.b, 0xaa, 32);
	memset(key_b.b, 0xaa, 32);
	key_b.b[31] = 0xab;
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_files),
		cmocka_unit_test(test_mac),
		cmocka_unit_test(test_handshake_ok),
		cmocka_unit_test(test_wrong_key_server),
		cmocka_unit_test(test_wrong_key_client),
		cmocka_unit_test(test_refused_vm),
		cmocka_unit_test(test_wrong_version),
		cmocka_unit_test(test_server_bad_version),
		cmocka_unit_test(test_replayed_auth),
		cmocka_unit_test(test_timeout_and_eof),
		cmocka_unit_test(test_garbage_peer),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
