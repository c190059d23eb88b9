/* CRC32C (Castagnoli), the checksum of every on-disk log record.
 *
 * sb_crc32c() uses the SSE4.2 crc32 instruction when the CPU has it
 * (checked once, at run time, with __builtin_cpu_supports) and a portable
 * slicing-by-8 table otherwise; both give the same answers, and
 * tests/unit/test_crc32c.c checks that. The interface is zlib's: pass 0 to
 * start, or the previous result to continue over more bytes.
 * crc32c("123456789") = 0xE3069283. Any thread. */
#ifndef SB_CRC32C_H
#define SB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t sb_crc32c(uint32_t crc, const void *buf, size_t len);
/* The portable version, always available. */
uint32_t sb_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* 1 if the CPU has the instruction; then sb_crc32c_hw() may be called. */
int sb_crc32c_hw_available(void);
uint32_t sb_crc32c_hw(uint32_t crc, const void *buf, size_t len);

#endif
