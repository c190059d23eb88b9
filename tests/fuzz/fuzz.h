/* Shared by the fuzz harnesses in this directory.
 *
 * Each harness defines LLVMFuzzerTestOneInput. Built with clang and
 * -fsanitize=fuzzer (SB_FUZZ=ON) it is a libFuzzer binary; built with any
 * compiler and replay_main.c it is a plain program that runs the harness
 * once over each file it is given (the committed corpus and regressions,
 * as a ctest). FUZZ_CHECK is an invariant of the code under test: a
 * failure aborts, which libFuzzer reports as a crash with the input. */
#ifndef SB_FUZZ_H
#define SB_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                   \
            abort();                                                          \
        }                                                                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
