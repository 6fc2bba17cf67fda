/*
 * Exception hooks of the runtime (runtime.c): an image that expects an
 * exception installs a handler for its vector, which runs before umbra is
 * told of the exception.
 */
#ifndef UMBRA_GUEST_RUNTIME_H
#define UMBRA_GUEST_RUNTIME_H

#include <stdint.h>

/* What exception_common pushes, lowest address first. */
struct exception_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code;
	uint64_t rip, cs, rflags, rsp, ss;
};

/* For vector 14, handlers see only the faults umbra says are the guest's own
 * (error_code is then umbra's: the guest tables' view), after the
 * demand-zero heap declined them, and a fault that umbra says it fixed but
 * that came straight back 1000 times at the same RIP and CR2 (runtime.c:
 * the vCPU makes no progress; error_code is then the CPU's). */
/* Returns nonzero when it handled the exception (execution resumes at
 * frame->rip), zero to fall through to umbra's report. */
typedef int (*exception_handler_t)(struct exception_frame *frame);

exception_handler_t set_exception_handler(unsigned int vector, exception_handler_t handler);
/* "#PF" and the like for vectors 0..31, "IRQ" above. */
const char *exception_name(unsigned int vector);

#endif
