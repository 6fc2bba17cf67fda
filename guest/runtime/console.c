/*
 * Console output through the UART transmit register, and a small printf.
 */
#include "guest.h"

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

void console_putc(char c)
{
	/* Wait for "transmit holding register empty", as on a 16550. */
	while (!(inb(UMBRA_CONSOLE_PORT + 5) & 0x20))
		cpu_relax();
	outb(UMBRA_CONSOLE_PORT, (uint8_t)c);
}

/* One hypercall per buffer (one exit) instead of one port write per byte
 * (KVM exits once per byte even for rep outsb). The runtime runs on the boot
 * identity mapping, so a virtual address is the guest-physical one. */
void console_write(const char *s, size_t len)
{
	while (len) {
		size_t n = len < UMBRA_CONSOLE_WRITE_MAX ? len : UMBRA_CONSOLE_WRITE_MAX;
		hypercall4(UMBRA_HC_CONSOLE_WRITE, (unsigned long)s, n, 0, 0);
		s += n;
		len -= n;
	}
}

/* Output sink: either the console (through a small buffer) or a caller's
 * bounded buffer. */
struct sink {
	int to_console;
	char *buf;
	size_t size, len;
	char console[128];
	size_t pending;
};

static void sink_flush(struct sink *s)
{
	if (s->pending)
		console_write(s->console, s->pending);
	s->pending = 0;
}

static void sink_put(struct sink *s, char c)
{
	if (s->to_console) {
		s->console[s->pending++] = c;
		if (s->pending == sizeof(s->console))
			sink_flush(s);
	} else if (s->len + 1 < s->size) {
		s->buf[s->len] = c;
	}
	s->len++;
}

static void put_number(struct sink *s, unsigned long long v, unsigned int base, int upper,
		       int negative, int width, int zero_pad, int left)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);
	int len = n + negative;
	if (negative && zero_pad)
		sink_put(s, '-');
	for (; !left && width > len; width--)
		sink_put(s, zero_pad ? '0' : ' ');
	if (negative && !zero_pad)
		sink_put(s, '-');
	while (n)
		sink_put(s, tmp[--n]);
	for (; left && width > len; width--)
		sink_put(s, ' ');
}

static int format(struct sink *s, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			sink_put(s, *fmt);
			continue;
		}
		int zero_pad = 0, left = 0, alt = 0, width = 0, lng = 0;
		for (;; fmt++) {
			if (fmt[1] == '0')
				zero_pad = 1;
			else if (fmt[1] == '-')
				left = 1;
			else if (fmt[1] == '#')
				alt = 1;
			else
				break;
		}
		while (fmt[1] >= '0' && fmt[1] <= '9')
			width = width * 10 + (*++fmt - '0');
		while (fmt[1] == 'l' || fmt[1] == 'z') {
			lng++;
			fmt++;
		}
		switch (*++fmt) {
		case 'd':
		case 'i': {
			long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
			unsigned long long mag = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
			put_number(s, mag, 10, 0, v < 0, width, zero_pad, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			unsigned long long v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);
			unsigned int base = *fmt == 'u' ? 10 : 16;
			if (alt && base == 16) {
				sink_put(s, '0');
				sink_put(s, 'x');
			}
			put_number(s, v, base, *fmt == 'X', 0, width, zero_pad, left);
			break;
		}
		case 'p':
			sink_put(s, '0');
			sink_put(s, 'x');
			put_number(s, (unsigned long long)(uintptr_t)va_arg(ap, void *), 16, 0, 0, width,
				   zero_pad, left);
			break;
		case 's': {
			const char *str = va_arg(ap, const char *);
			int len = (int)strlen(str ? str : "(null)");
			for (; !left && width > len; width--)
				sink_put(s, ' ');
			for (const char *p = str ? str : "(null)"; *p; p++)
				sink_put(s, *p);
			for (; left && width > len; width--)
				sink_put(s, ' ');
			break;
		}
		case 'c':
			sink_put(s, (char)va_arg(ap, int));
			break;
		case '%':
			sink_put(s, '%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			sink_put(s, '%');
			sink_put(s, *fmt);
			break;
		}
	}
	return (int)s->len;
}

int vprintf(const char *fmt, va_list ap)
{
	struct sink s = { .to_console = 1 };
	int n = format(&s, fmt, ap);

	sink_flush(&s);
	return n;
}

int printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int n = vprintf(fmt, ap);
	va_end(ap);
	return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	struct sink s = { .buf = buf, .size = size };
	va_list ap;

	va_start(ap, fmt);
	int n = format(&s, fmt, ap);
	va_end(ap);
	if (size)
		buf[s.len < size ? s.len : size - 1] = '\0';
	return n;
}
