/*
 * dst_region.c — a region's life (dst_region.h): created from a REGION message, failed,
 * completed, released, dropped when its guest goes, freed.
 *
 * Releasing resources (link, uffd, tables) only happens at safe points of the loop
 * (dst_region_work, dst_region_free): deep inside a placement or a frame loop a failure
 * only sets the phase, and every loop checks it.
 */
#include "dst_region.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define PS TLM_PAGE_SIZE

struct dst_region *dst_region_find(struct dst_region *list, const char *id)
{
	for (struct dst_region *r = list; r; r = r->next)
		if (!r->dead && strcmp(r->id, id) == 0)
			return r;
	return NULL;
}

const char *dst_phase_name(enum dst_phase p)
{
	static const char *const names[] = {
		"waiting_uffd", "connecting", "mapping", "fetching", "complete", "failed",
	};

	return (unsigned)p < TLM_ARRAY_SIZE(names) ? names[p] : "?";
}

const char *dst_region_phase_name(const struct dst_region *r)
{
	return r->link && r->link->paused && dst_region_active(r) ? "paused" :
	       dst_phase_name(r->phase);
}

static int region_tmpl_check(const struct dst_region *r, char *err, size_t errlen)
{
	uint64_t tp = tlm_tmpl_page_count(r->tmpl);

	if (r->tmpl_base > tp || r->npages > tp - r->tmpl_base) {
		snprintf(err, errlen, "%s: region (offset %llu, %llu pages) extends beyond the "
			 "local template %s (%llu pages)", r->id, (unsigned long long)r->offset,
			 (unsigned long long)r->npages, tlm_tmpl_pages_path(r->tmpl),
			 (unsigned long long)tp);
		return -ERANGE;
	}
	return 0;
}

struct dst_region *dst_region_new(struct tlm_evloop *loop, struct dst_glue *g,
				  const struct tlm_local_msg *m, struct tlm_tmpl *tmpl,
				  const char *source, char *err, size_t errlen)
{
	struct dst_region *r = calloc(1, sizeof(*r));

	if (r)
		r->pg = calloc(m->size / PS, 1);
	if (!r || !r->pg) {
		free(r);
		snprintf(err, errlen, "%s: out of memory for %llu pages", m->vm_id,
			 (unsigned long long)(m->size / PS));
		return NULL;
	}
	r->loop = loop;
	r->glue = g;
	snprintf(r->id, sizeof(r->id), "%s", m->vm_id);
	snprintf(r->source, sizeof(r->source), "%s", source);
	r->base = (uint8_t *)(uintptr_t)m->base;
	r->size = m->size;
	r->npages = m->size / PS;
	r->offset = m->offset;
	r->flags = m->flags;
	memcpy(r->digest, m->digest, sizeof(r->digest));
	r->tmpl = tmpl;
	r->tmpl_base = m->offset / PS;
	r->fault_around = DST_FAULT_AROUND_DEFAULT;
	r->uffd.fd = -1;
	r->uffd_src.fd = -1;
	r->st.pages_by_class[0] = r->npages;
	dst_stage_init(&r->stage, NULL, r->npages);     /* the daemon gives it its pool */
	tlm_hist_init(&r->st.lat_all);
	tlm_hist_init(&r->st.lat_local);
	tlm_hist_init(&r->st.lat_demand);
	for (unsigned c = 0; c <= TLM_CLASS_DATA; c++)
		tlm_hist_init(&r->st.lat_cls[c]);
	r->t_start_ns = r->last_progress_ns = tlm_now_ns();
	if (tmpl && region_tmpl_check(r, err, errlen) < 0) {
		free(r->pg);
		free(r);
		return NULL;
	}
	return r;
}

void dst_region_notify_glue(struct dst_region *r, uint32_t type, const char *text)
{
	struct tlm_local_msg m;
	int rc;

	if (!r->glue || r->glue->dead)
		return;
	memset(&m, 0, sizeof(m));
	m.version = TLM_LOCAL_VERSION;
	m.type = type;
	m.page_size = PS;
	m.base = (uint64_t)(uintptr_t)r->base;
	m.size = r->size;
	m.offset = r->offset;
	memcpy(m.digest, r->digest, sizeof(m.digest));
	snprintf(m.vm_id, sizeof(m.vm_id), "%s", r->id);
	if (text)
		snprintf(m.text, sizeof(m.text), "%s", text);
	rc = tlm_local_send(r->glue->fd, &m, -1);
	if (rc < 0)
		log_warn("%s: telling the glue (pid %d): %s", r->id, (int)r->glue->pid,
			 strerror(-rc));
}

void dst_region_fail(struct dst_region *r, const char *fmt, ...)
{
	va_list ap;

	if (r->phase == DST_FAILED || r->phase == DST_COMPLETE)
		return;
	va_start(ap, fmt);
	vsnprintf(r->fail_reason, sizeof(r->fail_reason), fmt, ap);
	va_end(ap);
	log_error("%s: migration FAILED: %s (the guest's faults stay waiting)", r->id,
		  r->fail_reason);
	r->phase = DST_FAILED;
	r->t_end_ns = tlm_now_ns();
	dst_region_notify_glue(r, TLM_LOCAL_ERROR, r->fail_reason);
}

void dst_region_complete(struct dst_region *r)
{
	const struct dst_region_stats *st = &r->st;
	uint64_t ms;
	int rc;

	rc = r->uops->unregister(r->uctx, r->base, r->size);
	if (rc < 0)
		log_warn("%s: unregistering the region: %s", r->id, strerror(-rc));
	/* A thread that faulted on a TEMPLATE page left to the kernel after our last read
	 * of the uffd faults again and gets the template's page (the kernel wakes MISSING
	 * registrations on unregister; this covers MINOR alone). */
	else if (r->n_tmpl_left && dst_region_tmpl_to_kernel(r))
		r->uops->wake(r->uctx, r->base, r->size);
	r->phase = DST_COMPLETE;
	r->t_end_ns = tlm_now_ns();
	dst_region_notify_glue(r, TLM_LOCAL_DONE, NULL);
	dst_region_release(r);
	ms = (r->t_end_ns - r->t_start_ns) / 1000000;
	log_info("%s: complete: %llu pages (%llu template, %llu of them left to the kernel, "
		 "%llu zero, %llu ref, %llu data), %.1f MB in %llu ms", r->id,
		 (unsigned long long)r->npages,
		 (unsigned long long)st->pages_by_class[TLM_CLASS_TEMPLATE],
		 (unsigned long long)(r->minor ? r->n_tmpl_left : 0),
		 (unsigned long long)st->pages_by_class[TLM_CLASS_ZERO],
		 (unsigned long long)st->pages_by_class[TLM_CLASS_REF],
		 (unsigned long long)st->pages_by_class[TLM_CLASS_DATA],
		 (double)st->wire_in / 1e6, (unsigned long long)ms);
}

void dst_region_release(struct dst_region *r)
{
	if (r->released)
		return;
	r->released = true;
	if (r->link) {
		r->link->ops->release(r->link);
		r->link = NULL;
	}
	if (r->uffd.fd >= 0) {
		/* before close: the glue holds the same uffd file, the epoll entry would stay */
		tlm_evloop_del(r->loop, &r->uffd_src);
		tlm_uffd_close(&r->uffd);
	}
	r->uops = NULL;
	free(r->pg);
	dst_runs_free(&r->map);
	dst_runs_free(&r->lv.live);
	dst_runs_free(&r->lv.fix);
	r->st.stage.invalidated += dst_stage_clear(&r->stage);      /* never placed */
	free(r->faults);
	free(r->redo);
	r->pg = NULL;
	r->faults = NULL;
	r->redo = NULL;
	r->mcur = 0;
	r->nfaults = r->faults_cap = r->nredo = r->redo_cap = 0;
}

/* The guest process is gone (or unmapped the region). Finished regions stay for stats. */
void dst_region_drop(struct dst_region *r, const char *why)
{
	if (dst_region_active(r))
		log_warn("%s: dropping the region in phase %s: %s", r->id,
			 dst_phase_name(r->phase), why);
	r->glue = NULL;
	if (r->phase != DST_COMPLETE && r->phase != DST_FAILED)
		r->dead = true;
}

void dst_region_free(struct dst_region *r)
{
	dst_region_release(r);
	free(r);
}
