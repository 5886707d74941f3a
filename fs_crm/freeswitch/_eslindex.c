/* An index over the header lines of one `text/event-plain` ESL event, for fs_crm.eslparse.

Why C: a FreeSWITCH channel event is ~200 `Name: url-encoded-value` lines (~8 KB) and the call
tracker reads about a dozen of them. Building ~400 Python strings per event was most of the cost of
ingestion; here one pass records where each line's name and value sit in the event's bytes, and a
value becomes a Python string (URL-decoded) only when it is asked for.

Semantics, the same as the pure-Python parser in eslparse.py (tests compare both on every capture):
- header lines end at the first empty line or at the end of the data; what follows the empty line
  is the inner body, kept as an offset (`tail`) for the Python side;
- a line is split at its first ": " (FreeSWITCH URL-encodes ':' and ' ' inside values); a line
  ending in ':' is a name with an empty value; any other line is ignored;
- a repeated name keeps every value in order; get() returns the first;
- values are percent-decoded (invalid escapes stay as they are), then decoded as UTF-8 with
  U+FFFD for invalid bytes, like urllib.parse.unquote.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {           /* 28 bytes: an event's ~200 entries stay in L1 */
    uint32_t name_off;
    uint32_t name_len;
    uint32_t val_off;
    uint32_t val_len;
    uint32_t hash;
    int32_t next_same;     /* index of the next entry with the same name, or -1 */
    int32_t last_same;     /* on a name's first entry: its last entry, so appending is O(1) */
} Entry;

typedef struct {
    PyObject_HEAD
    PyObject *data;        /* the event bytes, kept alive for the offsets */
    Entry *entries;
    Py_ssize_t count;
    int32_t *slots;        /* open addressing: entry index + 1 of each name's first line, 0 = free */
    uint32_t mask;
    Py_ssize_t tail;       /* offset just after the empty line that ends the headers, or -1 */
} Headers;

static inline uint64_t
load8(const char *s)
{
    uint64_t v;
    memcpy(&v, s, 8);
    return v;
}

/* Variable names come partly from outside (a caller's SIP X- headers become variable_sip_h_X-...),
   so the hash is seeded per process, from Python's own randomised str hash. */
static uint64_t hash_seed;

static uint32_t
name_hash(const char *s, Py_ssize_t n)
{
    /* Eight bytes per multiply: hashing byte by byte cost more than the rest of the index. */
    const uint64_t k = 0xff51afd7ed558ccdULL;
    uint64_t h = hash_seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ULL);
    if (n < 8) {
        uint64_t v = 0;
        memcpy(&v, s, n);
        return (uint32_t)(((h ^ v) * k) >> 32);
    }
    Py_ssize_t i = 0;
    for (; i + 8 < n; i += 8)
        h = (h ^ load8(s + i)) * k;
    h = (h ^ load8(s + n - 8)) * k;  /* the last eight bytes, overlapping the previous word */
    return (uint32_t)(h >> 32);
}

static const char *
find_separator(const char *p, const char *end)
{
    /* the first ": " in [p, end) */
    while (p < end) {
        const char *colon = memchr(p, ':', end - p);
        if (colon == NULL || colon + 1 >= end)
            return NULL;
        if (colon[1] == ' ')
            return colon;
        p = colon + 1;
    }
    return NULL;
}

static Py_ssize_t
lookup(Headers *self, const char *name, Py_ssize_t len)
{
    /* index of the first entry named `name`, or -1 */
    const char *base = PyBytes_AS_STRING(self->data);
    if (len > UINT32_MAX)
        return -1;
    uint32_t h = name_hash(name, len);
    uint32_t i = h & self->mask;
    while (self->slots[i]) {
        Entry *e = &self->entries[self->slots[i] - 1];
        if (e->hash == h && e->name_len == (uint32_t)len && memcmp(base + e->name_off, name, len) == 0)
            return self->slots[i] - 1;
        i = (i + 1) & self->mask;
    }
    return -1;
}

static int
add_entry(Headers *self, Py_ssize_t *capacity, const char *base, const char *name, const char *name_end,
          const char *value, const char *value_end)
{
    if (self->count == *capacity) {
        Py_ssize_t grown = *capacity * 2;
        Entry *entries = PyMem_Realloc(self->entries, grown * sizeof(Entry));
        if (entries == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->entries = entries;
        *capacity = grown;
    }
    Entry *e = &self->entries[self->count++];
    e->name_off = name - base;
    e->name_len = name_end - name;
    e->val_off = value - base;
    e->val_len = value_end - value;
    e->next_same = -1;
    e->last_same = (int32_t)(self->count - 1);
    e->hash = name_hash(name, name_end - name);
    return 0;
}

static int
build_table(Headers *self)
{
    const char *base = PyBytes_AS_STRING(self->data);
    uint32_t size = 16;
    while (size < 2 * (uint64_t)self->count)
        size <<= 1;
    self->slots = PyMem_Calloc(size, sizeof(int32_t));
    if (self->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->mask = size - 1;
    for (Py_ssize_t n = 0; n < self->count; n++) {
        Entry *e = &self->entries[n];
        uint32_t i = e->hash & self->mask;
        for (;;) {
            if (!self->slots[i]) {
                self->slots[i] = (int32_t)(n + 1);
                break;
            }
            Entry *other = &self->entries[self->slots[i] - 1];
            if (other->hash == e->hash && other->name_len == e->name_len
                    && memcmp(base + other->name_off, base + e->name_off, e->name_len) == 0) {
                self->entries[other->last_same].next_same = (int32_t)n;
                other->last_same = (int32_t)n;
                break;
            }
            i = (i + 1) & self->mask;
        }
    }
    return 0;
}

static int
build_index(Headers *self)
{
    const char *base = PyBytes_AS_STRING(self->data);
    const char *end = base + PyBytes_GET_SIZE(self->data);
    if (PyBytes_GET_SIZE(self->data) > INT32_MAX - 1) {
        PyErr_SetString(PyExc_ValueError, "event too large to index");
        return -1;
    }
    Py_ssize_t capacity = 256;  /* a channel event has ~200 lines */
    self->entries = PyMem_Malloc(capacity * sizeof(Entry));
    if (self->entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const char *p = base;
    while (p < end) {
        if (*p == '\n') {  /* the empty line: headers end, the inner body (if any) follows */
            self->tail = (p + 1) - base;
            break;
        }
        const char *q = p;  /* names are short: a plain loop beats memchr's call */
        while (q < end && *q != ':' && *q != '\n')
            q++;
        const char *name_end, *value, *nl, *line_end;
        if (q + 1 < end && q[0] == ':' && q[1] == ' ') {  /* every line FreeSWITCH writes */
            name_end = q;
            value = q + 2;
            nl = memchr(value, '\n', end - value);
            line_end = nl ? nl : end;
        } else {
            nl = memchr(q, '\n', end - q);
            line_end = nl ? nl : end;
            const char *sep = find_separator(q, line_end);
            if (sep != NULL) {
                name_end = sep;
                value = sep + 2;
            } else if (line_end[-1] == ':') {
                name_end = line_end - 1;
                value = line_end;
            } else {
                name_end = NULL;  /* not a header line: ignored */
                value = NULL;
            }
        }
        if (name_end != NULL && add_entry(self, &capacity, base, p, name_end, value, line_end) < 0)
            return -1;
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return build_table(self);
}

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static PyObject *
decode_value(const char *s, Py_ssize_t n)
{
    const char *pct = memchr(s, '%', n);
    if (pct == NULL)
        return PyUnicode_DecodeUTF8(s, n, "replace");
    char stack[512];
    char *buf = n <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc(n);
    if (buf == NULL)
        return PyErr_NoMemory();
    Py_ssize_t prefix = pct - s, out = prefix;
    memcpy(buf, s, prefix);
    for (Py_ssize_t i = prefix; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n
                && (hi = hex_value(s[i + 1])) >= 0 && (lo = hex_value(s[i + 2])) >= 0) {
            buf[out++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            buf[out++] = s[i];
        }
    }
    PyObject *result = PyUnicode_DecodeUTF8(buf, out, "replace");
    if (buf != stack)
        PyMem_Free(buf);
    return result;
}

static PyObject *
entry_value(Headers *self, Py_ssize_t index)
{
    Entry *e = &self->entries[index];
    return decode_value(PyBytes_AS_STRING(self->data) + e->val_off, e->val_len);
}

static Py_ssize_t
lookup_object(Headers *self, PyObject *name)
{
    /* -1 when absent, -2 with an exception set when `name` is not a str */
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "header name must be str, not %.100s", Py_TYPE(name)->tp_name);
        return -2;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s == NULL) {  /* lone surrogates: no header can have that name */
        PyErr_Clear();
        return -1;
    }
    return lookup(self, s, len);
}

static PyObject *
Headers_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *data;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Headers() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!:Headers", &PyBytes_Type, &data))
        return NULL;
    Headers *self = (Headers *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(data);
    self->data = data;
    self->tail = -1;
    if (build_index(self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
Headers_dealloc(Headers *self)
{
    PyMem_Free(self->entries);
    PyMem_Free(self->slots);
    Py_XDECREF(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Headers_get(Headers *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(name, default=None)");
        return NULL;
    }
    Py_ssize_t index = lookup_object(self, args[0]);
    if (index == -2)
        return NULL;
    if (index < 0) {
        PyObject *fallback = nargs == 2 ? args[1] : Py_None;
        Py_INCREF(fallback);
        return fallback;
    }
    return entry_value(self, index);
}

static PyObject *
Headers_int(Headers *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* int(name, default=0): the value as int() reads it, or the default when absent or not a number */
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "int(name, default=0)");
        return NULL;
    }
    Py_ssize_t index = lookup_object(self, args[0]);
    if (index == -2)
        return NULL;
    if (index >= 0) {
        Entry *e = &self->entries[index];
        const char *s = PyBytes_AS_STRING(self->data) + e->val_off;
        if (e->val_len > 0 && e->val_len <= 18) {  /* the usual microsecond stamp: plain digits */
            long long number = 0;
            Py_ssize_t i = 0;
            for (; i < (Py_ssize_t)e->val_len && s[i] >= '0' && s[i] <= '9'; i++)
                number = number * 10 + (s[i] - '0');
            if (i == (Py_ssize_t)e->val_len)
                return PyLong_FromLongLong(number);
        }
        PyObject *text = entry_value(self, index);
        if (text == NULL)
            return NULL;
        PyObject *number = PyLong_FromUnicodeObject(text, 10);
        Py_DECREF(text);
        if (number != NULL)
            return number;
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        PyErr_Clear();
    }
    if (nargs == 2) {
        Py_INCREF(args[1]);
        return args[1];
    }
    return PyLong_FromLong(0);
}

static PyObject *
value_or_empty(Headers *self, const char *name)
{
    Py_ssize_t index = lookup(self, name, (Py_ssize_t)strlen(name));
    return index < 0 ? PyUnicode_FromStringAndSize(NULL, 0) : entry_value(self, index);
}

static PyObject *
Headers_get_name(Headers *self, void *Py_UNUSED(closure))
{
    /* Event-Name, or the subclass of a CUSTOM event (what a subscription names) */
    PyObject *name = value_or_empty(self, "Event-Name");
    if (name == NULL || PyUnicode_CompareWithASCIIString(name, "CUSTOM") != 0)
        return name;
    PyObject *subclass = value_or_empty(self, "Event-Subclass");
    if (subclass == NULL || PyUnicode_GET_LENGTH(subclass) > 0) {
        Py_DECREF(name);
        return subclass;
    }
    Py_DECREF(subclass);
    return name;
}

static PyObject *
Headers_get_all(Headers *self, PyObject *name)
{
    Py_ssize_t index = lookup_object(self, name);
    if (index == -2)
        return NULL;
    PyObject *values = PyList_New(0);
    if (values == NULL)
        return NULL;
    for (; index >= 0; index = self->entries[index].next_same) {
        PyObject *value = entry_value(self, index);
        if (value == NULL || PyList_Append(values, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(values);
            return NULL;
        }
        Py_DECREF(value);
    }
    return values;
}

static PyObject *
Headers_names(Headers *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *names = PyList_New(0);
    if (names == NULL)
        return NULL;
    const char *base = PyBytes_AS_STRING(self->data);
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Entry *e = &self->entries[i];
        if (lookup(self, base + e->name_off, e->name_len) != i)  /* a repeat of an earlier name */
            continue;
        PyObject *name = PyUnicode_DecodeUTF8(base + e->name_off, e->name_len, "replace");
        if (name == NULL || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return names;
}

static PyObject *
Headers_subscript(Headers *self, PyObject *name)
{
    Py_ssize_t index = lookup_object(self, name);
    if (index == -2)
        return NULL;
    if (index < 0) {
        PyErr_SetObject(PyExc_KeyError, name);
        return NULL;
    }
    return entry_value(self, index);
}

static int
Headers_contains(Headers *self, PyObject *name)
{
    Py_ssize_t index = lookup_object(self, name);
    return index == -2 ? -1 : index >= 0;
}

static PyObject *
Headers_get_tail(Headers *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->tail);
}

static PyObject *
Headers_get_data(Headers *self, void *Py_UNUSED(closure))
{
    Py_INCREF(self->data);
    return self->data;
}

static PyMethodDef Headers_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Headers_get, METH_FASTCALL,
     "get(name, default=None): the first value of a header, URL-decoded"},
    {"int", (PyCFunction)(void (*)(void))Headers_int, METH_FASTCALL,
     "int(name, default=0): a header as an int, or the default when absent or not a number"},
    {"get_all", (PyCFunction)Headers_get_all, METH_O, "get_all(name): every value of a header, in order"},
    {"names", (PyCFunction)Headers_names, METH_NOARGS, "names(): each header name once, in order"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Headers_getset[] = {
    {"name", (getter)Headers_get_name, NULL, "Event-Name, or Event-Subclass for CUSTOM events", NULL},
    {"tail", (getter)Headers_get_tail, NULL, "offset of the inner body after the empty line, or -1", NULL},
    {"data", (getter)Headers_get_data, NULL, "the event bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods Headers_as_mapping = {
    .mp_subscript = (binaryfunc)Headers_subscript,
};

static PySequenceMethods Headers_as_sequence = {
    .sq_contains = (objobjproc)Headers_contains,
};

static PyTypeObject HeadersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fs_crm._eslindex.Headers",
    .tp_doc = "Headers(data: bytes): index over the header lines of a text/event-plain event",
    .tp_basicsize = sizeof(Headers),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = Headers_new,
    .tp_dealloc = (destructor)Headers_dealloc,
    .tp_methods = Headers_methods,
    .tp_getset = Headers_getset,
    .tp_as_mapping = &Headers_as_mapping,
    .tp_as_sequence = &Headers_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fs_crm._eslindex",
    .m_doc = "Lazy header index for text/event-plain ESL events (see fs_crm.eslparse).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__eslindex(void)
{
    if (PyType_Ready(&HeadersType) < 0)
        return NULL;
    PyObject *salt = PyUnicode_FromString("fs_crm._eslindex");
    if (salt == NULL)
        return NULL;
    hash_seed = (uint64_t)PyObject_Hash(salt);
    Py_DECREF(salt);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HeadersType);
    if (PyModule_AddObject(m, "Headers", (PyObject *)&HeadersType) < 0) {
        Py_DECREF(&HeadersType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
