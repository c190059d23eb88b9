/* Hooks for tests of libsnapbus, kept out of the public structs. Not
 * exported from libsnapbus.so: a test that uses them links the library's
 * objects (the CMake object library sbclient_int) instead. */
#ifndef SBC_TESTING_H
#define SBC_TESTING_H

#include <stdint.h>

#include <snapbus/snapbus.h>

/* The next n replies are read and dropped as if lost (a lost ack). */
void sbc_publisher_test_drop_replies(sb_publisher *p, uint32_t n);

#endif
