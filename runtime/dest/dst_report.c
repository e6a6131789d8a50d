/*
 * dst_report.c — tlm-uffd-server's per-region statistics (JSON for the control socket's
 * `stats`) and the once-a-second progress line.
 *
 * Wire bytes: tlm_conn counters of closed sessions plus the open ones; payload is the
 * 4 KiB of every PAGE received; overhead is everything else (frame headers, class map,
 * DEMANDs, handshakes); pre-sent pages count as payload whether or not they were used.
 */
#include "dst_report.h"

#include <stdio.h>
#include <time.h>

#include "json.h"
#include "util.h"

#define PS TLM_PAGE_SIZE

static const char *const cls_key[] = { "unknown", "template", "zero", "ref", "data" };

static void json_by_class(struct tlm_json *j, const char *key, const uint64_t *v)
{
	tlm_json_obj_begin(j, key);
	for (unsigned c = 0; c <= TLM_CLASS_DATA; c++)
		tlm_json_u64(j, cls_key[c], v[c]);
	tlm_json_obj_end(j);
}

static uint64_t elapsed_ns(const struct dst_region *r)
{
	uint64_t end = r->t_end_ns ? r->t_end_ns : tlm_now_ns();

	return end > r->t_start_ns ? end - r->t_start_ns : 1;
}

static double since_start_ms(const struct dst_region *r, uint64_t t)
{
	return t > r->t_start_ns ? (double)(t - r->t_start_ns) / 1e6 : 0.0;
}

/* Monotonic time t on the wall clock (seconds since the epoch; 0 = not yet), so that an
 * orchestrator can put it on the same line as QMP events (host clock). */
static double wall_s(uint64_t t)
{
	struct timespec now;

	if (!t || clock_gettime(CLOCK_REALTIME, &now) < 0)
		return 0.0;
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9 -
	       (double)(tlm_now_ns() - t) / 1e9;
}

static void json_wire(const struct dst_region *r, struct tlm_json *j)
{
	uint64_t in = 0, out = 0, payload = r->st.data_pages_in * PS;
	double s = (double)elapsed_ns(r) / 1e9;

	if (r->link)
		r->link->ops->wire(r->link, &in, &out);
	in += r->st.wire_in;
	out += r->st.wire_out;

	tlm_json_obj_begin(j, "wire");
	tlm_json_u64(j, "in_bytes", in);
	tlm_json_u64(j, "out_bytes", out);
	tlm_json_u64(j, "payload_bytes", payload);
	tlm_json_u64(j, "overhead_bytes", in + out > payload ? in + out - payload : 0);
	tlm_json_double(j, "mb_per_s", (double)in / 1e6 / s);
	tlm_json_obj_end(j);
	tlm_json_double(j, "restore_mb_per_s", (double)(r->n_present * PS) / 1e6 / s);
	tlm_json_u64(j, "elapsed_ms", elapsed_ns(r) / 1000000);
	/* Since REGION; 0 = not yet. Between the two only DATA pages move (benchmarks). */
	tlm_json_double(j, "map_received_ms", since_start_ms(r, r->t_map_rcvd_ns));
	tlm_json_double(j, "fix_map_received_ms", since_start_ms(r, r->t_fix_ns));
	tlm_json_double(j, "map_applied_ms", since_start_ms(r, r->t_map_ns));
	tlm_json_double(j, "done_ms", since_start_ms(r, r->t_done_ns));
	tlm_json_double(j, "map_received_wall", wall_s(r->t_map_rcvd_ns));
}

static void json_pages(const struct dst_region *r, struct tlm_json *j)
{
	tlm_json_obj_begin(j, "pages");
	tlm_json_u64(j, "total", r->npages);
	tlm_json_u64(j, "present", r->n_present);
	/* TEMPLATE pages not placed that the kernel maps from the template at completion
	 * (MINOR regions): present + removed + template_left = settled */
	tlm_json_u64(j, "template_left", r->minor ? r->n_tmpl_left : 0);
	tlm_json_u64(j, "removed", r->n_removed);
	tlm_json_u64(j, "requested", r->n_requested);
	tlm_json_u64(j, "missing", r->npages - r->n_present - r->n_removed - r->n_requested);
	tlm_json_obj_end(j);
	json_by_class(j, "classes", r->st.pages_by_class);
	json_by_class(j, "placed", r->st.placed_by_class);
}

static void json_faults(const struct dst_region *r, struct tlm_json *j)
{
	const struct dst_region_stats *st = &r->st;

	tlm_json_obj_begin(j, "faults");
	tlm_json_u64(j, "total", st->faults);
	for (unsigned c = 0; c <= TLM_CLASS_DATA; c++)
		tlm_json_u64(j, cls_key[c], st->faults_by_class[c]);
	tlm_json_u64(j, "on_present", st->faults_present);
	tlm_json_u64(j, "on_removed", st->faults_removed);
	tlm_json_u64(j, "waiting", r->nfaults);
	tlm_json_obj_end(j);
	tlm_hist_json(j, "latency", &st->lat_all);
	tlm_hist_json(j, "latency_local", &st->lat_local);
	tlm_hist_json(j, "latency_demand", &st->lat_demand);
	tlm_json_obj_begin(j, "latency_by_class");
	for (unsigned c = TLM_CLASS_TEMPLATE; c <= TLM_CLASS_DATA; c++)
		tlm_hist_json(j, cls_key[c], &st->lat_cls[c]);
	tlm_json_obj_end(j);
}

/* Pre-sent DATA: received = placed + invalidated + held (dst_region.h). */
static void json_stage(const struct dst_region *r, struct tlm_json *j)
{
	tlm_json_obj_begin(j, "stage");
	tlm_json_u64(j, "held", r->stage.held);
	tlm_json_u64(j, "held_bytes", r->stage.held * PS);
	tlm_json_u64(j, "received", r->st.stage.received);
	tlm_json_u64(j, "placed", r->st.stage.placed);
	tlm_json_u64(j, "invalidated", r->st.stage.invalidated);
	tlm_json_u64(j, "dropped_full", r->st.stage.dropped_full);
	tlm_json_u64(j, "dropped_badsum", r->st.stage.dropped_badsum);
	tlm_json_obj_end(j);
}

void dst_region_stats_json(const struct dst_region *r, struct tlm_json *j)
{
	const struct dst_region_stats *st = &r->st;
	char base[32];

	snprintf(base, sizeof(base), "0x%llx", (unsigned long long)(uintptr_t)r->base);
	tlm_json_obj_begin(j, NULL);
	tlm_json_str(j, "id", r->id);
	tlm_json_str(j, "phase", dst_region_phase_name(r));
	tlm_json_str(j, "source", r->source);
	tlm_json_str(j, "base", base);
	tlm_json_bool(j, "template", r->tmpl != NULL);
	tlm_json_bool(j, "attached", r->glue != NULL);
	tlm_json_str(j, "map", r->map_kind ? r->map_kind : "none");
	json_pages(r, j);
	json_wire(r, j);
	json_stage(r, j);
	json_faults(r, j);
	tlm_json_u64(j, "demand_requests", st->demand_msgs);
	tlm_json_u64(j, "demand_pages", st->demand_pages);
	tlm_json_u64(j, "data_pages_received", st->data_pages_in);
	tlm_json_u64(j, "data_pages_dropped", st->data_pages_dropped);
	tlm_json_u64(j, "data_from_buffer", st->data_from_buffer);
	tlm_json_u64(j, "checksum_errors", st->checksum_errors);
	tlm_json_u64(j, "eexist", st->eexist);
	tlm_json_u64(j, "continue_fallbacks", st->continue_fallbacks);
	tlm_json_u64(j, "fault_around", st->fault_around);
	tlm_json_u64(j, "finish_demanded", st->finish_demanded);
	tlm_json_u64(j, "sessions", st->sessions);
	tlm_json_u64(j, "reconnects", st->reconnects);
	tlm_json_u64(j, "adopted_present", st->adopted);
	tlm_json_obj_begin(j, "source_progress");
	tlm_json_u64(j, "sent", st->source_sent);
	tlm_json_u64(j, "total", st->source_total);
	tlm_json_obj_end(j);
	tlm_json_bool(j, "done_received", r->done_rcvd);
	if (r->fail_reason[0])
		tlm_json_str(j, "error", r->fail_reason);
	tlm_json_obj_end(j);
}

/* One line per second and region while it migrates: settled % (placed, discarded or
 * TEMPLATE left to the kernel), placement rate, ETA. */
void dst_region_progress(struct dst_region *r, uint64_t now_ns)
{
	uint64_t dt = now_ns - r->last_progress_ns, dp, left;
	double rate, pct;

	if (!dst_region_active(r) || r->phase == DST_WAITING_UFFD || dt < 900000000ull)
		return;
	dp = r->n_present - r->last_progress_present;
	rate = (double)dp * PS / 1e6 / ((double)dt / 1e9);
	pct = 100.0 * (double)dst_region_settled(r) / (double)r->npages;
	left = r->npages - dst_region_settled(r);
	if (dp)
		fprintf(stderr, "%s: %5.1f%% settled (%llu/%llu pages present), %.1f MB/s, "
			"ETA %.1f s\n", r->id, pct, (unsigned long long)r->n_present,
			(unsigned long long)r->npages, rate, (double)left * PS / 1e6 / rate);
	else
		fprintf(stderr, "%s: %5.1f%% settled (%llu/%llu pages present), %s\n", r->id,
			pct, (unsigned long long)r->n_present, (unsigned long long)r->npages,
			dst_region_phase_name(r));
	r->last_progress_ns = now_ns;
	r->last_progress_present = r->n_present;
}
