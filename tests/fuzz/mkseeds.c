/*
 * mkseeds.c — (re)writes the seed corpus of every fuzz target: one small, valid input per
 * shape each decoder accepts (the fuzzers mutate from there).
 *
 *   build/tests/fuzz/fuzz_mkseeds tests/fuzz/corpus
 *
 * Regression inputs (crashes found and fixed) are added to the corpus by hand, named
 * crash-<what>; this tool never touches them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tlm_proto.h"
#include "template_int.h"
#include "samples.h"

static const char *root;

static void put(const char *target, const char *name, const void *a, size_t na,
		const void *b, size_t nb)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, target);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
	f = fopen(path, "wb");
	if (!f || fwrite(a, 1, na, f) != na || (nb && fwrite(b, 1, nb, f) != nb) || fclose(f)) {
		fprintf(stderr, "fuzz_mkseeds: %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

/* Wire: one valid frame per message type, named like the type. */
static void wire_seeds(void)
{
	for (int t = TLM_MSG_HELLO; t < TLM_MSG__MAX; t++) {
		uint8_t f[SAMPLE_FRAME_MAX];
		size_t n = sample_frame(t, f, sizeof(f));
		char name[64];

		sample_corpus_name(t, name, sizeof(name));
		put("wire", name, f, n, NULL, 0);
	}
	/* Version 3 class map kinds: a live map, and a fix map with a KEEP run. */
	uint8_t f[SAMPLE_FRAME_MAX];
	size_t n = sample_frame(TLM_MSG_CLASS_MAP, f, sizeof(f));

	f[TLM_PROTO_HDR_SIZE + 12] = 0x3;
	put("wire", "07-class_map-live.bin", f, n, NULL, 0);
	f[TLM_PROTO_HDR_SIZE + 12] = 0x5;
	f[TLM_PROTO_HDR_SIZE + 16 + 32] = TLM_CLASS_KEEP;
	put("wire", "07-class_map-fix.bin", f, n, NULL, 0);
}

/* Auth: selector byte, then a key file or the peer's frames. */
static void auth_frames(const char *name, uint8_t sel, const enum tlm_msg_type *t, int n)
{
	uint8_t buf[2 * SAMPLE_FRAME_MAX];
	size_t len = 1;

	buf[0] = sel;
	for (int i = 0; i < n; i++)
		len += sample_frame(t[i], buf + len, sizeof(buf) - len);
	put("auth", name, buf, len, NULL, 0);
}

static void auth_seeds(void)
{
	static const char hex[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
	static const enum tlm_msg_type srv[] = { TLM_MSG_HELLO, TLM_MSG_AUTH, TLM_MSG_VM_OPEN };
	static const enum tlm_msg_type cli[] = { TLM_MSG_CHALLENGE, TLM_MSG_AUTH_OK,
						 TLM_MSG_VM_ACCEPT };
	static const enum tlm_msg_type err[] = { TLM_MSG_ERROR };
	uint8_t raw[33] = { 0 };

	put("auth", "key-hex", "\0", 1, hex, sizeof(hex) - 1);
	for (int i = 1; i < 33; i++)
		raw[i] = (uint8_t)(i * 29);
	put("auth", "key-raw", raw, sizeof(raw), NULL, 0);
	auth_frames("server-session", 1, srv, 3);
	auth_frames("client-session", 2, cli, 3);
	auth_frames("client-refused", 2, err, 1);
}

static void local_seed(const char *name, uint32_t type, uint32_t flags)
{
	struct tlm_local_msg m;

	memset(&m, 0, sizeof(m));
	m.version = TLM_LOCAL_VERSION;
	m.type = type;
	m.flags = flags;
	m.page_size = TLM_PROTO_PAGE_SIZE;
	m.base = 0x7f0000000000ull;
	m.size = 64ull << 20;
	m.offset = 1ull << 20;
	m.uffd_features = 0x1ull;
	if (flags & TLM_REGION_TEMPLATE)
		memset(m.digest, 0xa5, sizeof(m.digest));
	strcpy(m.vm_id, "vm-01");
	strcpy(m.source, "127.0.0.1:7777");
	if (type == TLM_LOCAL_ERROR)
		strcpy(m.text, "template digest mismatch");
	put("local", name, &m, sizeof(m), NULL, 0);
}

/* Template: header bytes, then a real index of the pages those bytes describe. */
static void template_seed(const char *name, uint8_t flags, const uint8_t fill[4], int npages)
{
	uint8_t page[TLM_PAGE_SIZE], hdr[6] = { flags, (uint8_t)(npages - 1) }, *idx;
	uint64_t hashes[4];
	char path[] = "/tmp/tlm-mkseeds-XXXXXX", err[256];
	size_t len;
	FILE *f;
	int fd = mkstemp(path);

	memcpy(hdr + 2, fill, 4);
	for (int i = 0; i < npages; i++) {
		memset(page, fill[i], sizeof(page));
		hashes[i] = tlm_page_hash(page);
	}
	if (fd < 0 || tlm_tmpl_write_index(path, hashes, npages, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "fuzz_mkseeds: index: %s\n", fd < 0 ? strerror(errno) : err);
		exit(1);
	}
	close(fd);
	len = TLM_IDX_HDR_SIZE + 8 * npages + 8;
	idx = malloc(len);
	f = fopen(path, "rb");
	if (!idx || !f || fread(idx, 1, len, f) != len) {
		fprintf(stderr, "fuzz_mkseeds: cannot read back %s\n", path);
		exit(1);
	}
	fclose(f);
	unlink(path);
	put("template", name, hdr, sizeof(hdr), idx, len);
	free(idx);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fuzz_mkseeds CORPUS_DIR (tests/fuzz/corpus)\n");
		return 2;
	}
	root = argv[1];
	wire_seeds();
	auth_seeds();
	local_seed("region", TLM_LOCAL_REGION, 0);
	local_seed("region-template-armed", TLM_LOCAL_REGION,
		   TLM_REGION_TEMPLATE | TLM_REGION_ARMED);
	local_seed("arm", TLM_LOCAL_ARM, 0);
	local_seed("error", TLM_LOCAL_ERROR, 0);
	template_seed("one-page", 0, (const uint8_t[]){ 7, 0, 0, 0 }, 1);
	template_seed("four-pages-dup-zero-verify", 0x8, (const uint8_t[]){ 1, 0, 1, 9 }, 4);
	template_seed("two-pages-fixups", 0x7, (const uint8_t[]){ 3, 4, 0, 0 }, 2);
	return 0;
}
