/* number_text.h - numbers as checkpoint metadata text (number_text.c); not installed. */
#ifndef FADAM_NUMBER_TEXT_H
#define FADAM_NUMBER_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of a formatted float, NUL included, with room to spare. */
#define FADAM_FLOAT_TEXT_MAX 48

/* "%.9g" with '.', or "nan", "inf", "-inf". */
void fadam_format_float(float value, char out[FADAM_FLOAT_TEXT_MAX]);
/* -?digits(.digits)?([eE][+-]?digits)? that is a finite float: 1, else 0 with *why saying why (a
 * value that overflows to Inf or a nonzero one that underflows to 0 is refused; rounding is fine). */
int fadam_parse_float(const char *text, float *out, const char **why);
/* fadam_parse_float, and "nan", "inf", "-inf". */
int fadam_parse_any_float(const char *text, float *out);
/* A decimal integer in [0, INT64_MAX], digits only, no leading zeros. */
int fadam_parse_count(const char *text, int64_t *out);
/* A hex digit's value, -1 for another character. */
int fadam_hex_value(char c);
/* `bytes` bytes as 2 * bytes lowercase hex digits and a NUL. */
void fadam_hex_encode(const unsigned char *bytes_in, size_t bytes, char *hex);

#endif
