/* utf8.c - UTF-8 validation (RFC 3629): tensor names must be UTF-8 because safetensors headers are. */
#include <string.h>

#include "utf8.h"

size_t fadam_utf8_sequence_length(const unsigned char *s, size_t available) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return available >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        /* E0 needs A0.. (else overlong), ED needs ..9F (else a surrogate). */
        unsigned char low = c == 0xE0 ? 0xA0 : 0x80, high = c == 0xED ? 0x9F : 0xBF;
        return available >= 3 && s[1] >= low && s[1] <= high && (s[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        /* F0 needs 90.. (else overlong), F4 needs ..8F (else above U+10FFFF). */
        unsigned char low = c == 0xF0 ? 0x90 : 0x80, high = c == 0xF4 ? 0x8F : 0xBF;
        return available >= 4 && s[1] >= low && s[1] <= high && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 ? 4
                                                                                                             : 0;
    }
    return 0;
}

int fadam_utf8_valid(const char *text, size_t *bad_offset) {
    const unsigned char *s = (const unsigned char *)text;
    size_t remaining = strlen(text), step;
    while (remaining) {
        if ((step = fadam_utf8_sequence_length(s, remaining)) == 0) {
            if (bad_offset) *bad_offset = (size_t)(s - (const unsigned char *)text);
            return 0;
        }
        s += step, remaining -= step;
    }
    return 1;
}
