/* samples.c — one valid message of every type, shared by the protocol tests. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "samples.h"

static struct tlm_run sample_runs[] = {
	{ TLM_CLASS_TEMPLATE, 10, 0 },
	{ TLM_CLASS_REF, 3, 77 },
	{ TLM_CLASS_ZERO, 1, 0 },
	{ TLM_CLASS_DATA, 5, 0 },
};

static uint8_t sample_page[TLM_PROTO_PAGE_SIZE];
static uint8_t sample_pages[TLM_PROTO_PAGE_SIZE], sample_sums[8];

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed + i * 7);
}

static void sample_session(enum tlm_msg_type t, struct tlm_msg *m)
{
	switch (t) {
	case TLM_MSG_HELLO:
		m->u.hello.ver_min = TLM_PROTO_VERSION;
		m->u.hello.ver_max = TLM_PROTO_VERSION;
		m->u.hello.channel = TLM_CHAN_BULK;
		fill(m->u.hello.nonce, 32, 1);
		break;
	case TLM_MSG_CHALLENGE:
		m->u.challenge.version = TLM_PROTO_VERSION;
		fill(m->u.challenge.nonce, 32, 2);
		fill(m->u.challenge.mac, 32, 3);
		break;
	case TLM_MSG_AUTH:
		fill(m->u.auth.mac, 32, 4);
		break;
	case TLM_MSG_VM_OPEN:
		m->u.vm_open.ram_size = 256ull << 20;
		m->u.vm_open.page_size = TLM_PROTO_PAGE_SIZE;
		fill(m->u.vm_open.digest, 16, 5);
		strcpy(m->u.vm_open.vm_id, "vm-01.test_A");
		break;
	case TLM_MSG_VM_ACCEPT:
		m->u.vm_accept.page_count = 65536;
		break;
	default:
		break;
	}
}

void sample_msg(enum tlm_msg_type t, struct tlm_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->type = t;
	switch (t) {
	case TLM_MSG_CLASS_MAP:
		m->u.class_map.first_page = 1000;
		m->u.class_map.nruns = 4;
		m->u.class_map.final = true;
		m->u.class_map.runs = sample_runs;
		break;
	case TLM_MSG_DEMAND:
		m->u.demand.page = 1234;
		m->u.demand.count = 16;
		break;
	case TLM_MSG_PAGE:
		fill(sample_page, sizeof(sample_page), 9);
		m->u.page.page = 4321;
		m->u.page.data = sample_page;
		m->u.page.xxh64 = tlm_proto_page_sum(sample_page);
		break;
	case TLM_MSG_PAGES:
		fill(sample_pages, sizeof(sample_pages), 11);
		tlm_proto_pages_sums(sample_sums, sample_pages, 1);
		m->u.pages.page = 5000;
		m->u.pages.count = 1;   /* small: the shared buffers hold 8 KiB */
		m->u.pages.sums = sample_sums;
		m->u.pages.data = sample_pages;
		break;
	case TLM_MSG_CREDIT:
		m->u.credit.bulk_bytes = 3u << 20;
		break;
	case TLM_MSG_ZERO:
		m->u.zero.page = 10;
		m->u.zero.count = 20;
		break;
	case TLM_MSG_REF:
		m->u.ref.page = 30;
		m->u.ref.count = 2;
		m->u.ref.tmpl_page = 99;
		break;
	case TLM_MSG_PROGRESS:
		m->u.progress.pages_sent = 100;
		m->u.progress.pages_total = 65536;
		break;
	case TLM_MSG_DONE:
		m->u.done.data_pages = 500;
		m->u.done.bytes = 500 * 4112;
		break;
	case TLM_MSG_ERROR:
		m->u.error.code = TLM_ERR_UNKNOWN_VM;
		strcpy(m->u.error.msg, "unknown vm \"x\": not configured");
		break;
	default:
		sample_session(t, m);
		break;
	}
}

size_t sample_frame(enum tlm_msg_type t, uint8_t *buf, size_t cap)
{
	struct tlm_msg m;
	ssize_t n;

	sample_msg(t, &m);
	n = tlm_proto_encode(&m, buf, cap);
	if (n <= 0)
		abort();
	return (size_t)n;
}

void sample_corpus_name(enum tlm_msg_type t, char *name, size_t len)
{
	char lower[32];
	size_t i;

	for (i = 0; tlm_msg_name(t)[i] && i < sizeof(lower) - 1; i++)
		lower[i] = (char)tolower((unsigned char)tlm_msg_name(t)[i]);
	lower[i] = '\0';
	snprintf(name, len, "%02d-%s.bin", (int)t, lower);
}
