/* json_writer.c - a growing text buffer and JSON strings written into it (the checkpoint header). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_writer.h"

void fadam_text_append(fadam_text *text, const char *bytes, size_t count) {
    if (text->out_of_memory) return;
    if (text->length + count + 1 > text->capacity) {
        size_t capacity = text->capacity ? text->capacity : 4096;
        char *grown;
        while (capacity < text->length + count + 1) capacity *= 2;
        grown = (char *)realloc(text->data, capacity);
        if (!grown) {
            text->out_of_memory = 1;
            return;
        }
        text->data = grown;
        text->capacity = capacity;
    }
    memcpy(text->data + text->length, bytes, count);
    text->length += count;
    text->data[text->length] = '\0';
}

void fadam_text_append_string(fadam_text *text, const char *string) { fadam_text_append(text, string, strlen(string)); }

/* A JSON string: quotes, backslashes and control characters escaped, UTF-8 passed through. */
void fadam_text_append_json_string(fadam_text *text, const char *string) {
    const unsigned char *s = (const unsigned char *)string;
    fadam_text_append(text, "\"", 1);
    for (; *s; s++) {
        char escaped[8];
        if (*s == '"' || *s == '\\') {
            escaped[0] = '\\', escaped[1] = (char)*s;
            fadam_text_append(text, escaped, 2);
        } else if (*s < 0x20) {
            snprintf(escaped, sizeof escaped, "\\u%04x", *s);
            fadam_text_append(text, escaped, 6);
        } else {
            fadam_text_append(text, (const char *)s, 1);
        }
    }
    fadam_text_append(text, "\"", 1);
}
