/*
 * fuzz_wire.c — the TCP frame decoder (protocol/wire.c): the input is a byte stream cut
 * into frames the way struct tlm_conn cuts it (tlm_proto_frame_len), each frame decoded
 * with room for every CLASS_MAP run. Promises checked: a refusal always has a reason; a
 * decoded frame re-encodes to the very same bytes (the decoder accepts nothing the encoder
 * would not produce); CLASS_MAP runs stay inside the 2^52-page limit.
 */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "tlm_proto.h"

#define WIRE_RUNS 4096u

static void check_map(const struct tlm_msg *m)
{
	uint64_t end = m->u.class_map.first_page;

	for (uint32_t i = 0; i < m->u.class_map.nruns; i++) {
		const struct tlm_run *r = &m->u.class_map.runs[i];

		uint8_t lo = m->u.class_map.kind == TLM_MAP_FIX ? TLM_CLASS_KEEP : TLM_CLASS_TEMPLATE;

		fuzz_check(r->len >= 1 && r->cls >= lo && r->cls <= TLM_CLASS_DATA,
			   "run %u: class %u len %u", i, r->cls, r->len);
		end += r->len;
		fuzz_check(end <= (1ull << 52), "run %u ends at page %llu", i,
			   (unsigned long long)end);
	}
}

static void decode_one(const uint8_t *f, size_t n)
{
	static struct tlm_run runs[WIRE_RUNS];
	static uint8_t out[TLM_PROTO_HDR_SIZE + TLM_PROTO_MAX_PAYLOAD];
	struct tlm_msg m;
	char err[256] = "";
	int rc = tlm_proto_decode(f, n, &m, runs, WIRE_RUNS, err, sizeof(err));

	if (rc) {
		fuzz_check(rc == -EBADMSG && err[0], "rc %d, reason '%s'", rc, err);
		return;
	}
	if (m.type == TLM_MSG_CLASS_MAP)
		check_map(&m);
	fuzz_check(tlm_proto_frame_size(&m) == n, "%s: size %zu vs %zu", tlm_msg_name(m.type),
		   tlm_proto_frame_size(&m), n);
	fuzz_check(tlm_proto_encode(&m, out, sizeof(out)) == (ssize_t)n && !memcmp(out, f, n),
		   "%s decoded but re-encodes differently", tlm_msg_name(m.type));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	while (size) {
		char err[256] = "";
		ssize_t flen = tlm_proto_frame_len(data, size, err, sizeof(err));

		if (flen < 0)
			fuzz_check(flen == -EBADMSG && err[0], "frame_len %zd '%s'", flen, err);
		/* A bad header, a short tail or a frame cut short: the decoder must refuse
		 * the rest as a whole, with a reason. */
		if (flen <= 0 || (size_t)flen > size) {
			decode_one(data, size);
			return 0;
		}
		decode_one(data, (size_t)flen);
		data += flen;
		size -= (size_t)flen;
	}
	return 0;
}
