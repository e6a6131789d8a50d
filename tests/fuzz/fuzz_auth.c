/*
 * fuzz_auth.c — the handshake and key-file parsers (protocol/auth.c). The first input byte
 * picks what the rest feeds:
 *   0  a key file (memfd, mode 0600) for tlm_key_load
 *   1  what a client sends to tlm_proto_server_handshake
 *   2  what a server sends to tlm_proto_client_handshake
 * The peer's bytes go through a real socketpair, its end closed after them, so the
 * handshake sees exactly the input and then EOF. Promises checked: every failure carries
 * a reason; a refused key leaves the key zeroed. The handshakes cannot succeed (the
 * nonces are fresh and the MACs keyed), which is the point: no input gets past AUTH.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "tlm_proto.h"

static const struct tlm_key fuzz_key = { .b = "0123456789abcdef0123456789abcdef", .len = 32 };

static void fuzz_key_file(const uint8_t *d, size_t n)
{
	char path[64], err[256] = "";
	struct tlm_key k;
	int fd = memfd_create("fuzz-key", MFD_CLOEXEC), rc;

	fuzz_check(fd >= 0, "memfd_create");
	fuzz_check(fchmod(fd, 0600) == 0 && write(fd, d, n) == (ssize_t)n, "memfd setup");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	rc = tlm_key_load(path, &k, err, sizeof(err));
	close(fd);
	if (rc) {
		fuzz_check(err[0] && k.len == 0, "rc %d, reason '%s', key len %zu", rc, err, k.len);
		return;
	}
	fuzz_check(k.len >= 16 && k.len <= TLM_PROTO_KEY_MAX, "key of %zu bytes", k.len);
}

static void fuzz_handshake(bool server, const uint8_t *d, size_t n)
{
	struct tlm_msg open = { .type = TLM_MSG_VM_OPEN }, out;
	char err[256] = "";
	uint8_t chan;
	int sv[2], rc;

	fuzz_check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	/* The input fits the socket buffer (libFuzzer -max_len); a short write would only
	 * shorten the input. */
	if (n && write(sv[1], d, n) < 0)
		fuzz_check(0, "write: %s", strerror(errno));
	shutdown(sv[1], SHUT_WR);
	if (server) {
		rc = tlm_proto_server_handshake(sv[0], &fuzz_key, &chan, &out, 1000, err,
						sizeof(err));
	} else {
		open.u.vm_open.ram_size = 1u << 20;
		open.u.vm_open.page_size = TLM_PROTO_PAGE_SIZE;
		strcpy(open.u.vm_open.vm_id, "fuzz-vm");
		rc = tlm_proto_client_handshake(sv[0], &fuzz_key, TLM_CHAN_URGENT, &open, &out,
						1000, err, sizeof(err));
	}
	close(sv[0]);
	close(sv[1]);
	fuzz_check(rc < 0 && err[0], "%s handshake: rc %d, reason '%s'",
		   server ? "server" : "client", rc, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	switch (data[0] % 3) {
	case 0:
		fuzz_key_file(data + 1, size - 1);
		break;
	case 1:
		fuzz_handshake(true, data + 1, size - 1);
		break;
	default:
		fuzz_handshake(false, data + 1, size - 1);
		break;
	}
	return 0;
}
