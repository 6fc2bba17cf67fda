/*
 * Entry point. umbra enters here in 64-bit long mode with RDI = the vCPU's
 * boot_info, RSP = the vCPU's stack top (16-byte aligned), interrupts off.
 */
	.section .text.boot, "ax"
	.globl _start
	.type _start, @function
_start:
	cld
	xor %ebp, %ebp
	and $-16, %rsp
	call runtime_start	/* (boot_info) never returns */
1:	cli
	hlt
	jmp 1b
	.size _start, . - _start
	.section .note.GNU-stack, "", @progbits
