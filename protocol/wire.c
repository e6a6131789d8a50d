/*
 * wire.c — encode/decode of tlm frames (TCP, daemon <-> daemon).
 *
 * Frame = 8-byte header + payload, all integers little-endian, written and read with the
 * byte helpers below (never by copying structs, so padding and host byte order never
 * reach the wire):
 *
 *   off size field
 *     0    4 payload_len   <= TLM_PROTO_MAX_PAYLOAD, and within the per-type bounds
 *     4    2 type          enum tlm_msg_type (1..16)
 *     6    2 flags         must be 0 (reserved for later versions)
 *
 * Page numbers: every page range [page, page + count) must end at or below
 * TLM_WIRE_PAGE_LIMIT (2^52 pages), so that byte offsets (page * 4096) never overflow u64.
 * Reserved bytes must be 0: a decoder that ignored them could not give them a meaning
 * later. One validation function (msg_check) serves the encoder and the decoder, so we
 * never send what we would refuse.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "tlm_proto.h"
#include "proto_int.h"
#include "tlm_bytes.h"

#define TLM_WIRE_PAGE_LIMIT (1ull << 52)
#define TLM_PAGES_PER (8u + TLM_PROTO_PAGE_SIZE)   /* PAGES: checksum + data per page */

void tlm_proto_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}


static bool all_zero(const uint8_t *p, size_t n)
{
	uint8_t acc = 0;

	for (size_t i = 0; i < n; i++)
		acc |= p[i];
	return acc == 0;
}

/* ---- names and small validators --------------------------------------------------------- */

/* Payload length bounds per type; CLASS_MAP and VM_OPEN/ERROR are variable. */
static const struct {
	const char *name;
	uint32_t min, max;
} msg_info[TLM_MSG__MAX] = {
	[TLM_MSG_HELLO]     = { "HELLO",     48, 48 },
	[TLM_MSG_CHALLENGE] = { "CHALLENGE", 72, 72 },
	[TLM_MSG_AUTH]      = { "AUTH",      32, 32 },
	[TLM_MSG_AUTH_OK]   = { "AUTH_OK",    0,  0 },
	[TLM_MSG_VM_OPEN]   = { "VM_OPEN",   32 + 1, 32 + TLM_PROTO_VMID_MAX },
	[TLM_MSG_VM_ACCEPT] = { "VM_ACCEPT",  8,  8 },
	[TLM_MSG_CLASS_MAP] = { "CLASS_MAP", 16, 16 + 16 * TLM_PROTO_MAX_RUNS },
	[TLM_MSG_DEMAND]    = { "DEMAND",    16, 16 },
	[TLM_MSG_PAGE]      = { "PAGE",      16 + TLM_PROTO_PAGE_SIZE,
				16 + TLM_PROTO_PAGE_SIZE },
	[TLM_MSG_ZERO]      = { "ZERO",      16, 16 },
	[TLM_MSG_REF]       = { "REF",       24, 24 },
	[TLM_MSG_PROGRESS]  = { "PROGRESS",  16, 16 },
	[TLM_MSG_DONE]      = { "DONE",      16, 16 },
	[TLM_MSG_ERROR]     = { "ERROR",      8,  8 + TLM_PROTO_ERRMSG_MAX },
	[TLM_MSG_PAGES]     = { "PAGES",     16 + TLM_PAGES_PER,
				16 + TLM_PAGES_PER * TLM_PROTO_MAX_PAGES },
	[TLM_MSG_CREDIT]    = { "CREDIT",    16, 16 },
};

const char *tlm_msg_name(enum tlm_msg_type t)
{
	if (t < TLM_MSG_HELLO || t >= TLM_MSG__MAX)
		return "UNKNOWN";
	return msg_info[t].name;
}

const char *tlm_class_name(enum tlm_page_class c)
{
	if ((int)c == TLM_CLASS_KEEP)
		return "keep";
	switch (c) {
	case TLM_CLASS_TEMPLATE: return "template";
	case TLM_CLASS_ZERO:     return "zero";
	case TLM_CLASS_REF:      return "ref";
	case TLM_CLASS_DATA:     return "data";
	}
	return "unknown";
}

static bool vmid_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

/* 1..64 chars of [A-Za-z0-9._-]; "." and ".." are refused because ids name files. */
bool tlm_vmid_valid(const char *id)
{
	size_t n = id ? strnlen(id, TLM_PROTO_VMID_MAX + 1) : 0;

	if (n < 1 || n > TLM_PROTO_VMID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!vmid_char_ok(id[i]))
			return false;
	return strcmp(id, ".") && strcmp(id, "..");
}

uint64_t tlm_proto_page_sum(const uint8_t *page)
{
	return XXH3_64bits(page, TLM_PROTO_PAGE_SIZE);
}

uint64_t tlm_proto_pages_sum(const struct tlm_msg *m, uint32_t i)
{
	return tlm_le64_get(m->u.pages.sums + 8 * (size_t)i);
}

void tlm_proto_pages_sums(uint8_t *sums, const uint8_t *data, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++)
		tlm_le64_put(sums + 8 * (size_t)i,
			     tlm_proto_page_sum(data + (size_t)i * TLM_PROTO_PAGE_SIZE));
}

/* [page, page + count) with count >= 1 inside the page limit. */
static bool range_ok(uint64_t page, uint64_t count)
{
	return count >= 1 && count <= TLM_WIRE_PAGE_LIMIT && page <= TLM_WIRE_PAGE_LIMIT - count;
}

static bool printable(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return true;
}

/* Length check shared by the header peek and the decoder. */
static int check_len(unsigned type, uint32_t plen, char *err, size_t errlen)
{
	const char *n = msg_info[type].name;

	if (plen < msg_info[type].min || plen > msg_info[type].max) {
		if (msg_info[type].min == msg_info[type].max)
			return BAD("%s: payload length %u, expected %u", n, plen,
				   msg_info[type].min);
		return BAD("%s: payload length %u outside %u..%u", n, plen,
			   msg_info[type].min, msg_info[type].max);
	}
	if (type == TLM_MSG_CLASS_MAP && (plen - 16) % 16)
		return BAD("CLASS_MAP: payload length %u is not 16 + 16*nruns", plen);
	if (type == TLM_MSG_PAGES && (plen - 16) % TLM_PAGES_PER)
		return BAD("PAGES: payload length %u is not 16 + %u*count", plen, TLM_PAGES_PER);
	return 0;
}

/* ---- semantic checks, shared by encoder and decoder --------------------------------------- */

static int check_hello(const struct tlm_msg *m, char *err, size_t errlen)
{
	if (!m->u.hello.ver_min || m->u.hello.ver_min > m->u.hello.ver_max)
		return BAD("HELLO: bad version range %u..%u", m->u.hello.ver_min,
			   m->u.hello.ver_max);
	if (m->u.hello.channel != TLM_CHAN_URGENT && m->u.hello.channel != TLM_CHAN_BULK)
		return BAD("HELLO: bad channel %u (need 1=urgent or 2=bulk)",
			   m->u.hello.channel);
	return 0;
}

static int check_vm_open(const struct tlm_msg *m, char *err, size_t errlen)
{
	const char *id = m->u.vm_open.vm_id;

	if (!tlm_vmid_valid(id))
		return BAD("VM_OPEN: invalid vm id \"%.*s\" (1..64 of [A-Za-z0-9._-])",
			   (int)strnlen(id, TLM_PROTO_VMID_MAX), id);
	if (m->u.vm_open.page_size != TLM_PROTO_PAGE_SIZE)
		return BAD("VM_OPEN: page size %u (only %u is supported)",
			   m->u.vm_open.page_size, TLM_PROTO_PAGE_SIZE);
	if (!m->u.vm_open.ram_size || m->u.vm_open.ram_size % TLM_PROTO_PAGE_SIZE)
		return BAD("VM_OPEN: ram size %llu is not a nonzero multiple of %u",
			   (unsigned long long)m->u.vm_open.ram_size, TLM_PROTO_PAGE_SIZE);
	return 0;
}

static int check_run(const struct tlm_run *r, uint32_t i, uint8_t kind, char *err,
		     size_t errlen)
{
	uint8_t lo = kind == TLM_MAP_FIX ? TLM_CLASS_KEEP : TLM_CLASS_TEMPLATE;

	if (r->cls < lo || r->cls > TLM_CLASS_DATA)
		return BAD("CLASS_MAP: run %u has class %u", i, r->cls);
	if (r->len < 1)
		return BAD("CLASS_MAP: run %u has length 0", i);
	if (r->cls != TLM_CLASS_REF && r->arg)
		return BAD("CLASS_MAP: run %u (%s) has nonzero arg %llu", i,
			   tlm_class_name(r->cls), (unsigned long long)r->arg);
	if (r->cls == TLM_CLASS_REF && !range_ok(r->arg, r->len))
		return BAD("CLASS_MAP: run %u: template pages %llu+%u overflow", i,
			   (unsigned long long)r->arg, r->len);
	return 0;
}

static int check_class_map(const struct tlm_msg *m, char *err, size_t errlen)
{
	uint64_t end = m->u.class_map.first_page;
	uint32_t n = m->u.class_map.nruns;

	if (n > TLM_PROTO_MAX_RUNS)
		return BAD("CLASS_MAP: %u runs (max %u)", n, TLM_PROTO_MAX_RUNS);
	if (!n && !m->u.class_map.final)
		return BAD("CLASS_MAP: no runs in a non-final frame");
	if (n && !m->u.class_map.runs)
		return BAD("CLASS_MAP: no run storage");
	if (m->u.class_map.kind > TLM_MAP_FIX)
		return BAD("CLASS_MAP: unknown kind %u", m->u.class_map.kind);
	if (end > TLM_WIRE_PAGE_LIMIT)
		return BAD("CLASS_MAP: first page %llu out of range", (unsigned long long)end);
	for (uint32_t i = 0; i < n; i++) {
		const struct tlm_run *r = &m->u.class_map.runs[i];
		int ret = check_run(r, i, m->u.class_map.kind, err, errlen);

		if (ret)
			return ret;
		if (!range_ok(end, r->len))
			return BAD("CLASS_MAP: run %u ends past page 2^52 (overflow)", i);
		end += r->len;
	}
	return 0;
}

/* DEMAND and PAGES: count in 1..max pages from page, inside the page limit. */
static int check_count(enum tlm_msg_type t, uint64_t page, uint32_t count, uint32_t max,
		       char *err, size_t errlen)
{
	if (count < 1 || count > max)
		return BAD("%s: count %u outside 1..%u", msg_info[t].name, count, max);
	if (!range_ok(page, count))
		return BAD("%s: page %llu + count %u overflows", msg_info[t].name,
			   (unsigned long long)page, count);
	return 0;
}

static int check_ranges(const struct tlm_msg *m, char *err, size_t errlen)
{
	switch (m->type) {
	case TLM_MSG_DEMAND:
		return check_count(m->type, m->u.demand.page, m->u.demand.count,
				   TLM_PROTO_MAX_DEMAND, err, errlen);
	case TLM_MSG_PAGE:
		if (!range_ok(m->u.page.page, 1))
			return BAD("PAGE: page %llu out of range",
				   (unsigned long long)m->u.page.page);
		return 0;
	case TLM_MSG_PAGES:
		return check_count(m->type, m->u.pages.page, m->u.pages.count,
				   TLM_PROTO_MAX_PAGES, err, errlen);
	case TLM_MSG_ZERO:
		if (!range_ok(m->u.zero.page, m->u.zero.count))
			return BAD("ZERO: bad range page %llu count %llu",
				   (unsigned long long)m->u.zero.page,
				   (unsigned long long)m->u.zero.count);
		return 0;
	case TLM_MSG_REF:
		if (!range_ok(m->u.ref.page, m->u.ref.count) ||
		    !range_ok(m->u.ref.tmpl_page, m->u.ref.count))
			return BAD("REF: bad range page %llu count %llu template page %llu",
				   (unsigned long long)m->u.ref.page,
				   (unsigned long long)m->u.ref.count,
				   (unsigned long long)m->u.ref.tmpl_page);
		return 0;
	default:
		return 0;
	}
}

static int check_counters(const struct tlm_msg *m, char *err, size_t errlen)
{
	switch (m->type) {
	case TLM_MSG_VM_ACCEPT:
		if (!m->u.vm_accept.page_count || m->u.vm_accept.page_count > TLM_WIRE_PAGE_LIMIT)
			return BAD("VM_ACCEPT: page count %llu out of range",
				   (unsigned long long)m->u.vm_accept.page_count);
		return 0;
	case TLM_MSG_PROGRESS:
		if (m->u.progress.pages_sent > m->u.progress.pages_total ||
		    m->u.progress.pages_total > TLM_WIRE_PAGE_LIMIT)
			return BAD("PROGRESS: %llu of %llu pages is impossible",
				   (unsigned long long)m->u.progress.pages_sent,
				   (unsigned long long)m->u.progress.pages_total);
		return 0;
	case TLM_MSG_DONE:
		if (m->u.done.data_pages > TLM_WIRE_PAGE_LIMIT)
			return BAD("DONE: data page count %llu out of range",
				   (unsigned long long)m->u.done.data_pages);
		return 0;
	default:
		return 0;
	}
}

static int check_error(const struct tlm_msg *m, char *err, size_t errlen)
{
	size_t n = strnlen(m->u.error.msg, sizeof(m->u.error.msg));

	if (m->u.error.code < TLM_ERR_PROTOCOL || m->u.error.code > TLM_ERR_BUSY)
		return BAD("ERROR: unknown code %u", m->u.error.code);
	if (n > TLM_PROTO_ERRMSG_MAX)
		return BAD("ERROR: text longer than %u bytes", TLM_PROTO_ERRMSG_MAX);
	if (!printable(m->u.error.msg, n))
		return BAD("ERROR: text is not printable ASCII");
	return 0;
}

static int msg_check(const struct tlm_msg *m, char *err, size_t errlen)
{
	switch (m->type) {
	case TLM_MSG_HELLO:
		return check_hello(m, err, errlen);
	case TLM_MSG_CHALLENGE:
		return m->u.challenge.version ? 0 : BAD("CHALLENGE: version 0");
	case TLM_MSG_VM_OPEN:
		return check_vm_open(m, err, errlen);
	case TLM_MSG_CLASS_MAP:
		return check_class_map(m, err, errlen);
	case TLM_MSG_ERROR:
		return check_error(m, err, errlen);
	case TLM_MSG_AUTH:
	case TLM_MSG_AUTH_OK:
	case TLM_MSG_CREDIT:
		return 0;
	case TLM_MSG_VM_ACCEPT:
	case TLM_MSG_PROGRESS:
	case TLM_MSG_DONE:
		return check_counters(m, err, errlen);
	case TLM_MSG_DEMAND:
	case TLM_MSG_PAGE:
	case TLM_MSG_PAGES:
	case TLM_MSG_ZERO:
	case TLM_MSG_REF:
		return check_ranges(m, err, errlen);
	default:
		return BAD("unknown message type %d", (int)m->type);
	}
}

/* ---- payload layouts: session setup ------------------------------------------------------ */
/*
 * HELLO (dst -> src), 48 bytes
 *   0  4 magic     TLM_PROTO_MAGIC 0x314d4c54 ("TLM1")
 *   4  2 ver_min   >= 1
 *   6  2 ver_max   >= ver_min
 *   8  1 channel   1 = urgent, 2 = bulk
 *   9  7 reserved  0
 *  16 32 nonce     client nonce (getrandom)
 *
 * CHALLENGE (src -> dst), 72 bytes
 *   0  2 version   chosen version, >= 1
 *   2  6 reserved  0
 *   8 32 nonce     server nonce
 *  40 32 mac       server proof HMAC-SHA256(key, "tlm1-srv" | cnonce | snonce | channel)
 *
 * AUTH (dst -> src), 32 bytes
 *   0 32 mac       client proof HMAC-SHA256(key, "tlm1-cli" | snonce | cnonce | channel)
 *
 * AUTH_OK (src -> dst), 0 bytes
 *
 * VM_OPEN (dst -> src), 32 + id_len bytes (33..96)
 *   0  8 ram_size  bytes, nonzero multiple of page_size
 *   8  4 page_size must be 4096
 *  12  1 id_len    1..64
 *  13  3 reserved  0
 *  16 16 digest    template digest, all zero for a region without template
 *  32  n vm_id     id_len bytes of [A-Za-z0-9._-], no NUL
 *
 * VM_ACCEPT (src -> dst), 8 bytes
 *   0  8 page_count  1..2^52
 */
static void enc_session(const struct tlm_msg *m, uint8_t *p)
{
	size_t n;

	switch (m->type) {
	case TLM_MSG_HELLO:
		tlm_le32_put(p, TLM_PROTO_MAGIC);
		tlm_le16_put(p + 4, m->u.hello.ver_min);
		tlm_le16_put(p + 6, m->u.hello.ver_max);
		p[8] = m->u.hello.channel;
		memcpy(p + 16, m->u.hello.nonce, TLM_PROTO_NONCE_LEN);
		break;
	case TLM_MSG_CHALLENGE:
		tlm_le16_put(p, m->u.challenge.version);
		memcpy(p + 8, m->u.challenge.nonce, TLM_PROTO_NONCE_LEN);
		memcpy(p + 40, m->u.challenge.mac, TLM_PROTO_MAC_LEN);
		break;
	case TLM_MSG_AUTH:
		memcpy(p, m->u.auth.mac, TLM_PROTO_MAC_LEN);
		break;
	case TLM_MSG_VM_OPEN:
		n = strnlen(m->u.vm_open.vm_id, TLM_PROTO_VMID_MAX);
		tlm_le64_put(p, m->u.vm_open.ram_size);
		tlm_le32_put(p + 8, m->u.vm_open.page_size);
		p[12] = n;
		memcpy(p + 16, m->u.vm_open.digest, 16);
		memcpy(p + 32, m->u.vm_open.vm_id, n);
		break;
	case TLM_MSG_VM_ACCEPT:
		tlm_le64_put(p, m->u.vm_accept.page_count);
		break;
	default:
		break;
	}
}

static int dec_session(const uint8_t *p, uint32_t plen, struct tlm_msg *m,
		       char *err, size_t errlen)
{
	switch (m->type) {
	case TLM_MSG_HELLO:
		if (tlm_le32_get(p) != TLM_PROTO_MAGIC)
			return BAD("HELLO: bad magic 0x%08x (not a tlm peer?)", tlm_le32_get(p));
		if (!all_zero(p + 9, 7))
			return BAD("HELLO: reserved bytes not zero");
		m->u.hello.ver_min = tlm_le16_get(p + 4);
		m->u.hello.ver_max = tlm_le16_get(p + 6);
		m->u.hello.channel = p[8];
		memcpy(m->u.hello.nonce, p + 16, TLM_PROTO_NONCE_LEN);
		return 0;
	case TLM_MSG_CHALLENGE:
		if (!all_zero(p + 2, 6))
			return BAD("CHALLENGE: reserved bytes not zero");
		m->u.challenge.version = tlm_le16_get(p);
		memcpy(m->u.challenge.nonce, p + 8, TLM_PROTO_NONCE_LEN);
		memcpy(m->u.challenge.mac, p + 40, TLM_PROTO_MAC_LEN);
		return 0;
	case TLM_MSG_AUTH:
		memcpy(m->u.auth.mac, p, TLM_PROTO_MAC_LEN);
		return 0;
	case TLM_MSG_VM_OPEN:
		if (p[12] != plen - 32)
			return BAD("VM_OPEN: id length %u does not match payload length %u",
				   p[12], plen);
		if (!all_zero(p + 13, 3))
			return BAD("VM_OPEN: reserved bytes not zero");
		if (memchr(p + 32, '\0', plen - 32))
			return BAD("VM_OPEN: NUL byte in vm id");
		m->u.vm_open.ram_size = tlm_le64_get(p);
		m->u.vm_open.page_size = tlm_le32_get(p + 8);
		memcpy(m->u.vm_open.digest, p + 16, 16);
		memcpy(m->u.vm_open.vm_id, p + 32, plen - 32);
		m->u.vm_open.vm_id[plen - 32] = '\0';
		return 0;
	case TLM_MSG_VM_ACCEPT:
		m->u.vm_accept.page_count = tlm_le64_get(p);
		return 0;
	default:
		return 0;
	}
}

/* ---- payload layouts: class map ---------------------------------------------------------- */
/*
 * CLASS_MAP (src -> dst, bulk), 16 + 16 * nruns bytes, nruns <= TLM_PROTO_MAX_RUNS (65535)
 *   0  8 first_page  first page covered by this frame
 *   8  4 nruns       must equal (payload_len - 16) / 16; >= 1 unless final
 *  12  4 flags       bit 0 = final (last frame of the map); bit 1 = live map, bit 2 =
 *                    fix map (version 3; not both: neither = whole map); other bits 0
 *  16 16*nruns runs, each:
 *      0 1 class     enum tlm_page_class (1..4); a fix map also 0 = TLM_CLASS_KEEP
 *      1 3 reserved  0
 *      4 4 len       pages, >= 1
 *      8 8 arg       REF: first template page; 0 for the other classes
 *  Runs are contiguous: run i covers [first_page + sum(len[0..i-1]), + len[i]); the end
 *  of the last run and every REF template range stay within 2^52 pages.
 */
#define TLM_MAP_FINAL 0x1u
#define TLM_MAP_F_LIVE 0x2u
#define TLM_MAP_F_FIX 0x4u

static void enc_class_map(const struct tlm_msg *m, uint8_t *p)
{
	uint32_t flags = m->u.class_map.final ? TLM_MAP_FINAL : 0;

	if (m->u.class_map.kind == TLM_MAP_LIVE)
		flags |= TLM_MAP_F_LIVE;
	else if (m->u.class_map.kind == TLM_MAP_FIX)
		flags |= TLM_MAP_F_FIX;
	tlm_le64_put(p, m->u.class_map.first_page);
	tlm_le32_put(p + 8, m->u.class_map.nruns);
	tlm_le32_put(p + 12, flags);
	for (uint32_t i = 0; i < m->u.class_map.nruns; i++) {
		const struct tlm_run *r = &m->u.class_map.runs[i];
		uint8_t *q = p + 16 + 16 * (size_t)i;

		q[0] = r->cls;
		tlm_le32_put(q + 4, r->len);
		tlm_le64_put(q + 8, r->arg);
	}
}

static int dec_class_map(const uint8_t *p, uint32_t plen, struct tlm_msg *m,
			 struct tlm_run *runs, uint32_t max_runs, char *err, size_t errlen)
{
	uint32_t n = tlm_le32_get(p + 8), flags = tlm_le32_get(p + 12);
	const uint32_t known = TLM_MAP_FINAL | TLM_MAP_F_LIVE | TLM_MAP_F_FIX;

	if (n != (plen - 16) / 16)
		return BAD("CLASS_MAP: nruns %u does not match payload length %u (%u runs)",
			   n, plen, (plen - 16) / 16);
	if (flags & ~known)
		return BAD("CLASS_MAP: unknown flags 0x%x", flags & ~known);
	if ((flags & TLM_MAP_F_LIVE) && (flags & TLM_MAP_F_FIX))
		return BAD("CLASS_MAP: both live and fix flags set");
	if (n > max_runs || (n && !runs))
		return BAD("CLASS_MAP: %u runs exceed the receiver's limit %u", n, max_runs);
	m->u.class_map.first_page = tlm_le64_get(p);
	m->u.class_map.nruns = n;
	m->u.class_map.final = flags & TLM_MAP_FINAL;
	m->u.class_map.kind = (flags & TLM_MAP_F_LIVE) ? TLM_MAP_LIVE :
			      (flags & TLM_MAP_F_FIX) ? TLM_MAP_FIX : TLM_MAP_WHOLE;
	m->u.class_map.runs = runs;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *q = p + 16 + 16 * (size_t)i;

		if (!all_zero(q + 1, 3))
			return BAD("CLASS_MAP: run %u reserved bytes not zero", i);
		runs[i].cls = q[0];
		runs[i].len = tlm_le32_get(q + 4);
		runs[i].arg = tlm_le64_get(q + 8);
	}
	return 0;
}

/* ---- payload layouts: pages and progress ------------------------------------------------- */
/*
 * DEMAND (dst -> src, urgent), 16 bytes
 *   0  8 page      first page wanted
 *   8  4 count     1..TLM_PROTO_MAX_DEMAND (256)
 *  12  4 reserved  0
 *
 * PAGE (src -> dst), 4112 bytes
 *   0  8 page      page index
 *   8  8 xxh64     XXH3-64 (seed 0) of the data; verified by the receiver before placing
 *  16 4096 data
 *
 * PAGES (src -> dst, version 2), 16 + count * 4104 bytes: pages [page, page + count)
 *   0  8 page      first page
 *   8  4 count     1..TLM_PROTO_MAX_PAGES (64); must equal (payload_len - 16) / 4104
 *  12  4 reserved  0
 *  16  8*count     XXH3-64 (seed 0) of each page, in page order
 *  16 + 8*count    count * 4096 bytes of data, in page order: a contiguous run that the
 *                  receiver can place with one UFFDIO_COPY
 *
 * ZERO (src -> dst, urgent), 16 bytes: pages [page, page + count) are all zero
 *   0  8 page
 *   8  8 count     >= 1
 *
 * REF (src -> dst, urgent), 24 bytes: page + i equals template page tmpl_page + i
 *   0  8 page
 *   8  8 count     >= 1
 *  16  8 tmpl_page
 *
 * PROGRESS (src -> dst, bulk), 16 bytes
 *   0  8 pages_sent   <= pages_total
 *   8  8 pages_total
 *
 * DONE (src -> dst, bulk), 16 bytes: every DATA page has been sent
 *   0  8 data_pages
 *   8  8 bytes     payload bytes sent on this session
 *
 * CREDIT (dst -> src, urgent, version 2), 16 bytes: sent before DEMANDs, so that the
 * source knows how much of the bulk stream still lies ahead of a page it queued there
 *   0  8 bulk_bytes  bytes of the current bulk session the destination has handled
 *   8  8 reserved    0
 */
static void enc_data(const struct tlm_msg *m, uint8_t *p, bool pages_data)
{
	switch (m->type) {
	case TLM_MSG_DEMAND:
		tlm_le64_put(p, m->u.demand.page);
		tlm_le32_put(p + 8, m->u.demand.count);
		break;
	case TLM_MSG_PAGE:
		tlm_le64_put(p, m->u.page.page);
		tlm_le64_put(p + 8, m->u.page.xxh64);
		memcpy(p + 16, m->u.page.data, TLM_PROTO_PAGE_SIZE);
		break;
	case TLM_MSG_PAGES:
		tlm_le64_put(p, m->u.pages.page);
		tlm_le32_put(p + 8, m->u.pages.count);
		memcpy(p + 16, m->u.pages.sums, 8 * (size_t)m->u.pages.count);
		if (pages_data)
			memcpy(p + 16 + 8 * (size_t)m->u.pages.count, m->u.pages.data,
			       (size_t)m->u.pages.count * TLM_PROTO_PAGE_SIZE);
		break;
	case TLM_MSG_ZERO:
		tlm_le64_put(p, m->u.zero.page);
		tlm_le64_put(p + 8, m->u.zero.count);
		break;
	case TLM_MSG_REF:
		tlm_le64_put(p, m->u.ref.page);
		tlm_le64_put(p + 8, m->u.ref.count);
		tlm_le64_put(p + 16, m->u.ref.tmpl_page);
		break;
	case TLM_MSG_PROGRESS:
		tlm_le64_put(p, m->u.progress.pages_sent);
		tlm_le64_put(p + 8, m->u.progress.pages_total);
		break;
	case TLM_MSG_DONE:
		tlm_le64_put(p, m->u.done.data_pages);
		tlm_le64_put(p + 8, m->u.done.bytes);
		break;
	case TLM_MSG_CREDIT:
		tlm_le64_put(p, m->u.credit.bulk_bytes);
		break;
	default:
		break;
	}
}

static int dec_data(const uint8_t *p, uint32_t plen, struct tlm_msg *m, char *err,
		    size_t errlen)
{
	switch (m->type) {
	case TLM_MSG_PAGES:
		m->u.pages.count = tlm_le32_get(p + 8);
		if (m->u.pages.count != (plen - 16) / TLM_PAGES_PER)
			return BAD("PAGES: count %u does not match payload length %u (%u pages)",
				   m->u.pages.count, plen, (plen - 16) / TLM_PAGES_PER);
		if (!all_zero(p + 12, 4))
			return BAD("PAGES: reserved bytes not zero");
		m->u.pages.page = tlm_le64_get(p);
		m->u.pages.sums = p + 16;
		m->u.pages.data = p + 16 + 8 * (size_t)m->u.pages.count;
		return 0;
	case TLM_MSG_DEMAND:
		if (!all_zero(p + 12, 4))
			return BAD("DEMAND: reserved bytes not zero");
		m->u.demand.page = tlm_le64_get(p);
		m->u.demand.count = tlm_le32_get(p + 8);
		return 0;
	case TLM_MSG_PAGE:
		m->u.page.page = tlm_le64_get(p);
		m->u.page.xxh64 = tlm_le64_get(p + 8);
		m->u.page.data = p + 16;
		return 0;
	case TLM_MSG_ZERO:
		m->u.zero.page = tlm_le64_get(p);
		m->u.zero.count = tlm_le64_get(p + 8);
		return 0;
	case TLM_MSG_REF:
		m->u.ref.page = tlm_le64_get(p);
		m->u.ref.count = tlm_le64_get(p + 8);
		m->u.ref.tmpl_page = tlm_le64_get(p + 16);
		return 0;
	case TLM_MSG_PROGRESS:
		m->u.progress.pages_sent = tlm_le64_get(p);
		m->u.progress.pages_total = tlm_le64_get(p + 8);
		return 0;
	case TLM_MSG_DONE:
		m->u.done.data_pages = tlm_le64_get(p);
		m->u.done.bytes = tlm_le64_get(p + 8);
		return 0;
	case TLM_MSG_CREDIT:
		if (!all_zero(p + 8, 8))
			return BAD("CREDIT: reserved bytes not zero");
		m->u.credit.bulk_bytes = tlm_le64_get(p);
		return 0;
	default:
		return 0;
	}
}

/* ---- payload layouts: error -------------------------------------------------------------- */
/*
 * ERROR (either direction), 8 + msg_len bytes; the sender closes after it
 *   0  4 code      enum tlm_err_code (1..7)
 *   4  2 msg_len   0..200
 *   6  2 reserved  0
 *   8  n msg       printable ASCII (0x20..0x7e), no NUL
 */
static void enc_error(const struct tlm_msg *m, uint8_t *p)
{
	size_t n = strnlen(m->u.error.msg, TLM_PROTO_ERRMSG_MAX);

	tlm_le32_put(p, m->u.error.code);
	tlm_le16_put(p + 4, n);
	memcpy(p + 8, m->u.error.msg, n);
}

static int dec_error(const uint8_t *p, uint32_t plen, struct tlm_msg *m,
		     char *err, size_t errlen)
{
	uint16_t n = tlm_le16_get(p + 4);

	if (n != plen - 8)
		return BAD("ERROR: text length %u does not match payload length %u", n, plen);
	if (!all_zero(p + 6, 2))
		return BAD("ERROR: reserved bytes not zero");
	m->u.error.code = tlm_le32_get(p);
	memcpy(m->u.error.msg, p + 8, n);
	m->u.error.msg[n] = '\0';
	if (!printable(m->u.error.msg, n))
		return BAD("ERROR: text is not printable ASCII");
	return 0;
}

/* ---- frames -------------------------------------------------------------------------------- */

static size_t payload_size(const struct tlm_msg *m)
{
	switch (m->type) {
	case TLM_MSG_VM_OPEN:
		return 32 + strnlen(m->u.vm_open.vm_id, TLM_PROTO_VMID_MAX);
	case TLM_MSG_CLASS_MAP:
		return 16 + 16 * (size_t)m->u.class_map.nruns;
	case TLM_MSG_ERROR:
		return 8 + strnlen(m->u.error.msg, TLM_PROTO_ERRMSG_MAX);
	case TLM_MSG_PAGES:
		return 16 + (size_t)TLM_PAGES_PER * m->u.pages.count;
	default:
		if (m->type < TLM_MSG_HELLO || m->type >= TLM_MSG__MAX)
			return 0;
		return msg_info[m->type].min;
	}
}

size_t tlm_proto_frame_size(const struct tlm_msg *m)
{
	return TLM_PROTO_HDR_SIZE + payload_size(m);
}

/* PAGES: bytes of page data at the end of the frame; 0 for any other type. */
static size_t tail_size(const struct tlm_msg *m)
{
	return m->type == TLM_MSG_PAGES ? (size_t)m->u.pages.count * TLM_PROTO_PAGE_SIZE : 0;
}

size_t tlm_proto_head_size(const struct tlm_msg *m)
{
	return tlm_proto_frame_size(m) - tail_size(m);
}

/* The frame, or with tail = false all of it but a PAGES frame's page data. */
static ssize_t encode(const struct tlm_msg *m, uint8_t *buf, size_t cap, bool tail)
{
	size_t plen, skip;
	uint8_t *p = buf + TLM_PROTO_HDR_SIZE;

	if (msg_check(m, NULL, 0))
		return -EINVAL;
	if ((m->type == TLM_MSG_PAGE && !m->u.page.data) ||
	    (m->type == TLM_MSG_PAGES && (!m->u.pages.data || !m->u.pages.sums)))
		return -EINVAL;
	plen = payload_size(m);
	skip = tail ? 0 : tail_size(m);
	if (cap < TLM_PROTO_HDR_SIZE + plen - skip)
		return -ENOBUFS;
	tlm_le32_put(buf, plen);
	tlm_le16_put(buf + 4, m->type);
	tlm_le16_put(buf + 6, 0);
	memset(p, 0, plen - tail_size(m));     /* reserved bytes; page data is all copied */
	if (m->type <= TLM_MSG_VM_ACCEPT)
		enc_session(m, p);
	else if (m->type == TLM_MSG_CLASS_MAP)
		enc_class_map(m, p);
	else if (m->type == TLM_MSG_ERROR)
		enc_error(m, p);
	else
		enc_data(m, p, tail);
	return TLM_PROTO_HDR_SIZE + plen - skip;
}

ssize_t tlm_proto_encode(const struct tlm_msg *m, uint8_t *buf, size_t cap)
{
	return encode(m, buf, cap, true);
}

ssize_t tlm_proto_encode_head(const struct tlm_msg *m, uint8_t *buf, size_t cap)
{
	return encode(m, buf, cap, false);
}

ssize_t tlm_proto_frame_len(const uint8_t *buf, size_t len, char *err, size_t errlen)
{
	uint32_t plen;
	uint16_t type, flags;
	int ret;

	if (len < TLM_PROTO_HDR_SIZE)
		return 0;
	plen = tlm_le32_get(buf);
	type = tlm_le16_get(buf + 4);
	flags = tlm_le16_get(buf + 6);
	if (type < TLM_MSG_HELLO || type >= TLM_MSG__MAX)
		return BAD("frame: unknown message type %u", type);
	if (flags)
		return BAD("frame: %s with nonzero flags 0x%x", msg_info[type].name, flags);
	if (plen > TLM_PROTO_MAX_PAYLOAD)
		return BAD("frame: %s payload length %u exceeds %u", msg_info[type].name,
			   plen, TLM_PROTO_MAX_PAYLOAD);
	ret = check_len(type, plen, err, errlen);
	if (ret)
		return ret;
	return (ssize_t)TLM_PROTO_HDR_SIZE + plen;
}

int tlm_proto_decode(const uint8_t *frame, size_t len, struct tlm_msg *m,
		     struct tlm_run *runs, uint32_t max_runs, char *err, size_t errlen)
{
	ssize_t flen = tlm_proto_frame_len(frame, len, err, errlen);
	const uint8_t *p = frame + TLM_PROTO_HDR_SIZE;
	uint32_t plen;
	int ret;

	if (flen < 0)
		return (int)flen;
	if (flen == 0)
		return BAD("frame: truncated header (%zu of %u bytes)", len, TLM_PROTO_HDR_SIZE);
	if ((size_t)flen != len)
		return BAD("frame: %s length %zd, but %zu bytes given",
			   msg_info[tlm_le16_get(frame + 4)].name, flen, len);
	plen = flen - TLM_PROTO_HDR_SIZE;
	memset(m, 0, sizeof(*m));
	m->type = tlm_le16_get(frame + 4);
	if (m->type <= TLM_MSG_VM_ACCEPT)
		ret = dec_session(p, plen, m, err, errlen);
	else if (m->type == TLM_MSG_CLASS_MAP)
		ret = dec_class_map(p, plen, m, runs, max_runs, err, errlen);
	else if (m->type == TLM_MSG_ERROR)
		ret = dec_error(p, plen, m, err, errlen);
	else
		ret = dec_data(p, plen, m, err, errlen);
	if (ret)
		return ret;
	return msg_check(m, err, errlen);
}
