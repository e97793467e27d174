/* json_writer.h - a growing text buffer and JSON strings written into it (json_writer.c); not
 * installed. A failed allocation sets out_of_memory, after which appends add nothing. */
#ifndef FADAM_JSON_WRITER_H
#define FADAM_JSON_WRITER_H

#include <stddef.h>

typedef struct fadam_text {
    char *data; /* NUL-terminated; free() it */
    size_t length, capacity;
    int out_of_memory;
} fadam_text;

void fadam_text_append(fadam_text *text, const char *bytes, size_t count);
void fadam_text_append_string(fadam_text *text, const char *string);
/* A JSON string: quotes, backslashes and control characters escaped, UTF-8 passed through. */
void fadam_text_append_json_string(fadam_text *text, const char *string);

#endif
