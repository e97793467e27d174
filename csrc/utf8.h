/* utf8.h - UTF-8 validation, shared by tensor registration (names) and the checkpoint header
 * parser; not installed. */
#ifndef FADAM_UTF8_H
#define FADAM_UTF8_H

#include <stddef.h>

/* Length of the valid UTF-8 sequence at s (1 to 4), or 0: no overlong forms, no surrogates,
 * nothing above U+10FFFF, no sequence cut by the end of the `available` bytes. */
size_t fadam_utf8_sequence_length(const unsigned char *s, size_t available);

/* 1 when the NUL-terminated `text` is valid UTF-8; else 0 with the offset of the first byte that
 * starts no valid sequence in *bad_offset (optional). */
int fadam_utf8_valid(const char *text, size_t *bad_offset);

#endif
