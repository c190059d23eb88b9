/* CRC32C: known vectors (RFC 3720 appendix B.4 and the usual check value),
 * and the SSE4.2 path agrees with the portable one on every length and
 * alignment, and when continued over pieces. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sb_crc32c.h"

static void
test_known_vectors(void **state)
{
    uint8_t buf[32];

    (void)state;
    assert_int_equal(sb_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(sb_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(sb_crc32c(0, "", 0), 0);
    memset(buf, 0, sizeof buf);
    assert_int_equal(sb_crc32c(0, buf, 32), 0x8A9136AAu);
    assert_int_equal(sb_crc32c_sw(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, sizeof buf);
    assert_int_equal(sb_crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(sb_crc32c(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    assert_int_equal(sb_crc32c_sw(0, buf, 32), 0x113FDB5Cu);
    assert_int_equal(sb_crc32c_hw(0, buf, 32), 0x113FDB5Cu);
}

static void
test_hw_matches_sw(void **state)
{
    uint8_t *buf = malloc(4096 + 8);

    (void)state;
    srand(7);
    for (int i = 0; i < 4096 + 8; i++)
        buf[i] = (uint8_t)rand();
    if (!sb_crc32c_hw_available())
        print_message("no SSE4.2 here: only the portable path is checked\n");
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len <= 4096; len += len < 64 ? 1 : 37) {
            uint32_t sw = sb_crc32c_sw(0, buf + off, len);
            assert_int_equal(sb_crc32c_hw(0, buf + off, len), sw);
            assert_int_equal(sb_crc32c(0, buf + off, len), sw);
            /* Continuing over two pieces gives the whole's CRC. */
            size_t cut = len / 3;
            uint32_t a = sb_crc32c(0, buf + off, cut);
            assert_int_equal(sb_crc32c(a, buf + off + cut, len - cut), sw);
            a = sb_crc32c_sw(0, buf + off, cut);
            assert_int_equal(sb_crc32c_sw(a, buf + off + cut, len - cut), sw);
        }
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_known_vectors),
        cmocka_unit_test(test_hw_matches_sw),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
