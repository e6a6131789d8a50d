/*
 * ramstub.h — the RAM stub: what a glue-mapped VM's RAM file holds instead of its memory.
 *
 * Once libtlm-glue.so maps a VM's RAM privately (a template clone, a tlm destination), the
 * RAM file QEMU opened (memory-backend-file, share=on) no longer holds the guest's memory,
 * while QEMU still flags the RAM block as shared. Whatever trusts that file would take
 * zeros for the guest's memory: a stock migration with x-ignore-shared to a QEMU mapping
 * the same file, QEMU's CPR modes, a template or a file source made from it. So the glue
 * turns the (still empty) file into this stub, and the readers refuse it:
 *   - QEMU itself: a memory-backend-file larger than its existing file fails at start with
 *     "backing store size 0x1000 does not match 'size' option" (QEMU 7.2 and later);
 *   - tlm-page-server: a file= region that is a stub is refused, naming the process;
 *   - anyone else: the file reads as the text below.
 *
 * Format: one 4096-byte page of text, NUL-padded (the file's whole size):
 *   "tlm-ram-stub 1\n"
 *   "pid PID\n"                 the process whose private mapping holds the guest memory
 *   "template PATH|-\n"         what the private mapping copies on write (- = anonymous)
 *   "why ...\n"                 one line for a person reading the file
 */
#ifndef TLM_TEMPLATE_RAMSTUB_H
#define TLM_TEMPLATE_RAMSTUB_H

#include <stddef.h>
#include <sys/types.h>

#define TLM_RAMSTUB_MAGIC "tlm-ram-stub 1\n"
#define TLM_RAMSTUB_SIZE 4096u

/*
 * Turn the RAM file open at fd (writable) into a stub for process pid. Only a file that
 * holds no data (every block a hole: what QEMU's new RAM file is) is changed: 0 done,
 * -EEXIST the file holds data and was left as it is, other -errno with err filled.
 */
int tlm_ramstub_write(int fd, pid_t pid, const char *template_path, char *err, size_t errlen);

/* Is the file open at fd a stub? 1 (and *pid), 0 not a stub, -errno when it cannot be read. */
int tlm_ramstub_check(int fd, pid_t *pid);

#endif
