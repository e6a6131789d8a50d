/*
 * auth.c — pre-shared key, HMAC proofs and the blocking session handshakes.
 *
 * Mutual authentication: each side proves knowledge of the key over both nonces and the
 * channel, with a different label per direction so one side's proof can never be
 * reflected as the other's. Both nonces are fresh per connection (getrandom), so a proof
 * recorded from an earlier session is useless in a new one.
 *
 * The handshakes read exactly one frame at a time (header, then its payload), so bytes the
 * peer sends right after the handshake (e.g. a CLASS_MAP) stay in the socket for the
 * caller's struct tlm_conn. timeout_ms bounds the whole exchange; <= 0 means no limit.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "tlm_proto.h"
#include "proto_int.h"
#include "tlm_bytes.h"
#include "tlm_io.h"
#include "tlm_tls.h"

#define TLM_KEY_MIN 16u
#define TLM_HS_FRAME_MAX 256u        /* largest handshake frame: ERROR, 8 + 208 */
#define TLM_ERR_SEND_TIMEOUT_MS 1000

/* ---- key file ------------------------------------------------------------------------------ */

/* Hex text (all hex digits, optional trailing newline, even count) or raw bytes. */
static int key_parse(const char *path, const uint8_t *b, size_t n, struct tlm_key *k,
		     char *err, size_t errlen)
{
	size_t digits = n;
	bool nl = false, hex = n > 0;

	if (n && b[n - 1] == '\n') {
		digits = n - 1;
		nl = true;
	}
	for (size_t i = 0; i < digits && hex; i++)
		hex = tlm_hex_digit(b[i]) >= 0;
	hex = hex && digits > 0;
	if (hex && digits % 2 == 0) {
		if (digits / 2 < TLM_KEY_MIN || digits / 2 > TLM_PROTO_KEY_MAX) {
			seterr(err, errlen, "%s: %zu hex digits give %zu bytes (need 16..64)",
			       path, digits, digits / 2);
			return -EINVAL;
		}
		for (size_t i = 0; i < digits / 2; i++)
			k->b[i] = (uint8_t)(tlm_hex_digit(b[2 * i]) << 4 | tlm_hex_digit(b[2 * i + 1]));
		k->len = digits / 2;
		return 0;
	}
	if (hex && nl) {
		seterr(err, errlen, "%s: odd number of hex digits (%zu)", path, digits);
		return -EINVAL;
	}
	if (n < TLM_KEY_MIN || n > TLM_PROTO_KEY_MAX) {
		seterr(err, errlen, "%s: %zu bytes (need 16..64 raw bytes or 32..128 hex digits)",
		       path, n);
		return -EINVAL;
	}
	memcpy(k->b, b, n);
	k->len = n;
	return 0;
}

static int key_read(int fd, const char *path, uint8_t *buf, size_t cap, size_t *n,
		    char *err, size_t errlen)
{
	*n = 0;
	while (*n < cap) {
		ssize_t r = read(fd, buf + *n, cap - *n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			seterr(err, errlen, "%s: read: %s", path, strerror(errno));
			return -errno;
		}
		if (r == 0)
			return 0;
		*n += r;
	}
	seterr(err, errlen, "%s: too large for a key (max 64 bytes or 128 hex digits)", path);
	return -EINVAL;
}

int tlm_key_load(const char *path, struct tlm_key *k, char *err, size_t errlen)
{
	uint8_t buf[2 * TLM_PROTO_KEY_MAX + 2];
	struct stat st;
	size_t n;
	int fd, ret;

	memset(k, 0, sizeof(*k));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		ret = -errno;
		seterr(err, errlen, "%s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		seterr(err, errlen, "%s: stat: %s", path, strerror(errno));
	} else if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		seterr(err, errlen, "%s: not a regular file", path);
	} else if (st.st_mode & 077) {
		ret = -EPERM;
		seterr(err, errlen, "%s: permissions %04o are too open (need 0600)", path,
		       (unsigned)(st.st_mode & 07777));
	} else {
		ret = key_read(fd, path, buf, sizeof(buf), &n, err, errlen);
		if (!ret)
			ret = key_parse(path, buf, n, k, err, errlen);
		OPENSSL_cleanse(buf, sizeof(buf));
	}
	close(fd);
	if (ret)
		OPENSSL_cleanse(k, sizeof(*k));
	return ret;
}

/* ---- MAC and nonces ------------------------------------------------------------------------ */

void tlm_proto_mac(const struct tlm_key *k, const char *label, const uint8_t a[32],
		   const uint8_t b[32], uint8_t channel, uint8_t mac[32])
{
	uint8_t msg[64 + 32 + 32 + 1];
	size_t ll = strnlen(label, 64), n = 0;
	unsigned int mlen = 32;

	memcpy(msg, label, ll);
	n = ll;
	memcpy(msg + n, a, 32);
	n += 32;
	memcpy(msg + n, b, 32);
	n += 32;
	msg[n++] = channel;
	/* HMAC-SHA256 only fails if libcrypto is broken; a zero MAC could then look
	 * like a valid proof to a careless caller, so stop. */
	if (!HMAC(EVP_sha256(), k->b, (int)k->len, msg, n, mac, &mlen))
		abort();
}

bool tlm_proto_mac_equal(const uint8_t a[32], const uint8_t b[32])
{
	return CRYPTO_memcmp(a, b, 32) == 0;
}

int tlm_proto_random(void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r = getrandom(p, len, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		len -= r;
	}
	return 0;
}

/* ---- blocking frame I/O with a deadline ------------------------------------------------------ */

struct hs {
	int fd;
	uint64_t deadline;      /* CLOCK_MONOTONIC ns, 0 = none */
	char *err;
	size_t errlen;
};

static int send_deadline(int fd, const struct tlm_msg *m, uint64_t deadline)
{
	uint8_t small[TLM_PROTO_HDR_SIZE + 16 + TLM_PROTO_PAGE_SIZE];
	size_t fsize = tlm_proto_frame_size(m);
	uint8_t *buf = fsize <= sizeof(small) ? small : malloc(fsize);
	ssize_t n;
	int ret;

	if (!buf)
		return -ENOMEM;
	n = tlm_proto_encode(m, buf, fsize);
	ret = n < 0 ? (int)n : tlm_io_write(fd, buf, n, deadline);
	if (buf != small)
		free(buf);
	return ret;
}

int tlm_proto_send(int fd, const struct tlm_msg *m, int timeout_ms)
{
	return send_deadline(fd, m, tlm_io_deadline(timeout_ms));
}

int tlm_proto_send_error(int fd, uint32_t code, const char *fmt, ...)
{
	struct tlm_msg m = { .type = TLM_MSG_ERROR };
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	/* Our own text must never be refused by the peer's decoder. */
	for (size_t i = 0; i < TLM_PROTO_ERRMSG_MAX && text[i]; i++)
		m.u.error.msg[i] = (text[i] < 0x20 || text[i] > 0x7e) ? '?' : text[i];
	m.u.error.code = code;
	return tlm_proto_send(fd, &m, TLM_ERR_SEND_TIMEOUT_MS);
}

/* ---- handshake steps ------------------------------------------------------------------------- */

static int hs_ioerr(struct hs *h, int ret)
{
	if (ret == -ETIMEDOUT)
		seterr(h->err, h->errlen, "handshake timed out");
	else if (ret == -ECONNRESET || ret == -EPIPE)
		seterr(h->err, h->errlen, "peer closed the connection during the handshake");
	else
		seterr(h->err, h->errlen, "handshake: %s", strerror(-ret));
	return ret;
}

/* We refuse what the peer sent: tell it why (best effort), then fail with the same text. */
static int hs_refuse(struct hs *h, uint32_t code, int ret, const char *why)
{
	tlm_proto_send_error(h->fd, code, "%s", why);
	seterr(h->err, h->errlen, "%s", why);
	return ret;
}

static int hs_send(struct hs *h, const struct tlm_msg *m)
{
	int ret = send_deadline(h->fd, m, h->deadline);

	return ret ? hs_ioerr(h, ret) : 0;
}

static int hs_recv(struct hs *h, struct tlm_msg *m)
{
	uint8_t buf[TLM_HS_FRAME_MAX];
	char why[200];
	ssize_t flen;
	int ret;

	ret = tlm_io_read(h->fd, buf, TLM_PROTO_HDR_SIZE, h->deadline);
	if (ret)
		return hs_ioerr(h, ret);
	flen = tlm_proto_frame_len(buf, TLM_PROTO_HDR_SIZE, why, sizeof(why));
	if (flen < 0 && tlm_tls_looks_like_hello(buf, TLM_PROTO_HDR_SIZE))
		return hs_refuse(h, TLM_ERR_PROTOCOL, -EPROTO, "peer speaks TLS, we do not: "
				 "start both daemons with the same --tls");
	if (flen < 0)
		return hs_refuse(h, TLM_ERR_PROTOCOL, -EBADMSG, why);
	if ((size_t)flen > sizeof(buf)) {
		snprintf(why, sizeof(why), "unexpected %s during the handshake",
			 tlm_msg_name(buf[4] | buf[5] << 8));
		return hs_refuse(h, TLM_ERR_PROTOCOL, -EPROTO, why);
	}
	ret = tlm_io_read(h->fd, buf + TLM_PROTO_HDR_SIZE, flen - TLM_PROTO_HDR_SIZE,
			    h->deadline);
	if (ret)
		return hs_ioerr(h, ret);
	if (tlm_proto_decode(buf, flen, m, NULL, 0, why, sizeof(why)))
		return hs_refuse(h, TLM_ERR_PROTOCOL, -EBADMSG, why);
	return 0;
}

static int peer_errno(uint32_t code)
{
	switch (code) {
	case TLM_ERR_AUTH:     return -EACCES;
	case TLM_ERR_VERSION:  return -EPROTONOSUPPORT;
	case TLM_ERR_PROTOCOL: return -EPROTO;
	case TLM_ERR_BUSY:     return -EBUSY;
	case TLM_ERR_MISMATCH: return -EINVAL;   /* size/digest differ: retrying cannot help */
	default:               return -ECONNREFUSED;
	}
}

/* Receive the next frame, which must be `type`; a peer ERROR is quoted in err. */
static int hs_expect(struct hs *h, enum tlm_msg_type type, struct tlm_msg *m)
{
	char why[128];
	int ret = hs_recv(h, m);

	if (ret)
		return ret;
	if (m->type == TLM_MSG_ERROR) {
		seterr(h->err, h->errlen, "peer: %s", m->u.error.msg[0] ? m->u.error.msg :
		       "error without text");
		return peer_errno(m->u.error.code);
	}
	if (m->type != type) {
		snprintf(why, sizeof(why), "handshake: expected %s, got %s", tlm_msg_name(type),
			 tlm_msg_name(m->type));
		return hs_refuse(h, TLM_ERR_PROTOCOL, -EPROTO, why);
	}
	return 0;
}

/* ---- handshakes -------------------------------------------------------------------------------- */

/* HELLO -> CHALLENGE (with our proof) -> AUTH checked -> AUTH_OK. */
static int server_auth(struct hs *h, const struct tlm_key *k, uint8_t *channel)
{
	struct tlm_msg m, out = { .type = TLM_MSG_CHALLENGE };
	uint8_t cnonce[32], want[32];
	char why[160];
	int ret;

	ret = hs_expect(h, TLM_MSG_HELLO, &m);
	if (ret)
		return ret;
	if (m.u.hello.ver_min > TLM_PROTO_VERSION || m.u.hello.ver_max < TLM_PROTO_VERSION) {
		snprintf(why, sizeof(why), "protocol version %u..%u not supported (server: %u)",
			 m.u.hello.ver_min, m.u.hello.ver_max, TLM_PROTO_VERSION);
		return hs_refuse(h, TLM_ERR_VERSION, -EPROTONOSUPPORT, why);
	}
	*channel = m.u.hello.channel;
	memcpy(cnonce, m.u.hello.nonce, 32);
	out.u.challenge.version = TLM_PROTO_VERSION;
	ret = tlm_proto_random(out.u.challenge.nonce, 32);
	if (ret)
		return hs_refuse(h, TLM_ERR_INTERNAL, ret, "getrandom failed");
	tlm_proto_mac(k, "tlm1-srv", cnonce, out.u.challenge.nonce, *channel,
		      out.u.challenge.mac);
	ret = hs_send(h, &out);
	if (!ret)
		ret = hs_expect(h, TLM_MSG_AUTH, &m);
	if (ret)
		return ret;
	tlm_proto_mac(k, "tlm1-cli", out.u.challenge.nonce, cnonce, *channel, want);
	if (!tlm_proto_mac_equal(want, m.u.auth.mac)) {
		tlm_proto_send_error(h->fd, TLM_ERR_AUTH, "authentication failed");
		seterr(h->err, h->errlen, "client failed authentication (wrong key or replay)");
		return -EACCES;
	}
	out = (struct tlm_msg){ .type = TLM_MSG_AUTH_OK };
	return hs_send(h, &out);
}

int tlm_proto_server_handshake(int fd, const struct tlm_key *k, uint8_t *channel,
			       struct tlm_msg *open, int timeout_ms, char *err, size_t errlen)
{
	struct hs h = { fd, tlm_io_deadline(timeout_ms), err, errlen };
	int ret = server_auth(&h, k, channel);

	if (ret)
		return ret;
	return hs_expect(&h, TLM_MSG_VM_OPEN, open);
}

/* HELLO -> CHALLENGE checked (mutual auth) -> AUTH -> AUTH_OK. */
static int client_auth(struct hs *h, const struct tlm_key *k, uint8_t channel)
{
	struct tlm_msg m, out = { .type = TLM_MSG_HELLO };
	uint8_t cnonce[32], want[32];
	char why[128];
	int ret;

	ret = tlm_proto_random(cnonce, 32);
	if (ret) {
		seterr(h->err, h->errlen, "getrandom: %s", strerror(-ret));
		return ret;
	}
	out.u.hello.ver_min = TLM_PROTO_VERSION;
	out.u.hello.ver_max = TLM_PROTO_VERSION;
	out.u.hello.channel = channel;
	memcpy(out.u.hello.nonce, cnonce, 32);
	ret = hs_send(h, &out);
	if (!ret)
		ret = hs_expect(h, TLM_MSG_CHALLENGE, &m);
	if (ret)
		return ret;
	if (m.u.challenge.version != TLM_PROTO_VERSION) {
		snprintf(why, sizeof(why), "server chose protocol version %u (we speak %u)",
			 m.u.challenge.version, TLM_PROTO_VERSION);
		return hs_refuse(h, TLM_ERR_VERSION, -EPROTONOSUPPORT, why);
	}
	tlm_proto_mac(k, "tlm1-srv", cnonce, m.u.challenge.nonce, channel, want);
	if (!tlm_proto_mac_equal(want, m.u.challenge.mac)) {
		tlm_proto_send_error(h->fd, TLM_ERR_AUTH, "authentication failed: keys differ");
		seterr(h->err, h->errlen, "server failed authentication (keys differ?)");
		return -EACCES;
	}
	out = (struct tlm_msg){ .type = TLM_MSG_AUTH };
	tlm_proto_mac(k, "tlm1-cli", m.u.challenge.nonce, cnonce, channel, out.u.auth.mac);
	ret = hs_send(h, &out);
	if (!ret)
		ret = hs_expect(h, TLM_MSG_AUTH_OK, &m);
	return ret;
}

/* Refuse our own bad VM_OPEN with a clear reason before bothering the server. */
static int vm_open_ok(const struct tlm_msg *o, char *err, size_t errlen)
{
	if (o->type != TLM_MSG_VM_OPEN) {
		seterr(err, errlen, "handshake: %s given instead of VM_OPEN", tlm_msg_name(o->type));
		return -EINVAL;
	}
	if (!tlm_vmid_valid(o->u.vm_open.vm_id)) {
		seterr(err, errlen, "VM_OPEN: invalid vm id \"%.64s\" (1..64 of [A-Za-z0-9._-])",
		       o->u.vm_open.vm_id);
		return -EINVAL;
	}
	if (o->u.vm_open.page_size != TLM_PROTO_PAGE_SIZE || !o->u.vm_open.ram_size ||
	    o->u.vm_open.ram_size % TLM_PROTO_PAGE_SIZE) {
		seterr(err, errlen, "VM_OPEN: ram size %llu / page size %u invalid",
		       (unsigned long long)o->u.vm_open.ram_size, o->u.vm_open.page_size);
		return -EINVAL;
	}
	return 0;
}

int tlm_proto_client_handshake(int fd, const struct tlm_key *k, uint8_t channel,
			       const struct tlm_msg *vm_open, struct tlm_msg *accept,
			       int timeout_ms, char *err, size_t errlen)
{
	struct hs h = { fd, tlm_io_deadline(timeout_ms), err, errlen };
	int ret;

	if (channel != TLM_CHAN_URGENT && channel != TLM_CHAN_BULK) {
		seterr(err, errlen, "handshake: bad channel %u", channel);
		return -EINVAL;
	}
	ret = vm_open_ok(vm_open, err, errlen);
	if (!ret)
		ret = client_auth(&h, k, channel);
	if (!ret)
		ret = hs_send(&h, vm_open);
	if (!ret)
		ret = hs_expect(&h, TLM_MSG_VM_ACCEPT, accept);
	return ret;
}
