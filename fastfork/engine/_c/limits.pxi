# What a request may be and what a response says: gunicorn's limits (same
# names, same defaults, same answers), the status lines, the header checks.

import http as _http

cdef enum:
    # gunicorn's limit_request_line: the request line, method to version.
    LIMIT_REQUEST_LINE = 4094
    # gunicorn's limit_request_fields: header fields in one request head.
    LIMIT_REQUEST_FIELDS = 100
    # gunicorn's limit_request_field_size: one header line, name to value.
    LIMIT_REQUEST_FIELD_SIZE = 8190
    # Buffered request body, or unsent response, past which reading (or the
    # app's send) waits: uvicorn's HIGH_WATER_LIMIT.
    HIGH_WATER = 65536
    # Body pieces under this size are kept together (asgi.pxi, add_part).
    SMALL_PART = 4096
    # Requests parsed ahead of the one being answered, before reading stops.
    PIPELINE_DEPTH = 16

# Answered as gunicorn does, then closed: the request line too long is a 400,
# too many or too large header fields a 431.
LINE_TOO_LONG = "Request Line is too large"
FIELDS_TOO_LARGE = "Request Header Fields Too Large"
# WSGI on the loop reads a body whole before the call: past its limit, a 413.
BODY_TOO_LARGE = "Request body is too large"
# A header name with a byte no token may hold: gunicorn's answer.
BAD_HEADER_NAME = "Invalid HTTP Header"
UPGRADE_WITH_BODY = "An Upgrade or CONNECT request with a body is not served"
# header_map "refuse": fastfork.web.header_map.REFUSED's words.
UNDERSCORE_NAME = "Invalid HTTP Header Name: a name with an underscore"

# What a WSGI environ does with a header name that has an underscore
# (fastfork.web.header_map: gunicorn's header_map).
cdef enum:
    MAP_DROP = 0
    MAP_REFUSE = 1
    MAP_DANGEROUS = 2

cdef dict HEADER_MAPS = {"drop": MAP_DROP, "refuse": MAP_REFUSE, "dangerous": MAP_DANGEROUS}

cdef list STATUS_LINES = []
for _code in range(600):
    try:
        _reason = _http.HTTPStatus(_code).phrase.encode("ascii")
    except ValueError:
        _reason = b""
    STATUS_LINES.append(b"HTTP/1.1 %d %s\r\n" % (_code, _reason))

# The methods as str without a decode per request.
cdef dict METHODS = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")}


cdef bytes status_line(int status):
    if 100 <= status < 600:
        return <bytes>STATUS_LINES[status]
    raise RuntimeError(f"invalid HTTP status {status}")


cdef bint bad_name(bytes name) noexcept:
    """A header name with a byte no token may hold (uvicorn's HEADER_RE)."""
    cdef const unsigned char *p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(name)
    cdef unsigned char c
    if n == 0:
        return True
    for i in range(n):
        c = p[i]
        if c <= 0x20 or c == 0x7f or memchr(b'()<>@,;:[]={}\\"', c, 16) != NULL:
            return True
    return False


cdef bint bad_value(bytes value) noexcept:
    """A header value with a control byte (uvicorn's HEADER_VALUE_RE): CR or LF
    would end the header and let the app's data forge another."""
    cdef const unsigned char *p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if (c < 0x20 and c != 0x09) or c == 0x7f:
            return True
    return False


cdef bytes rstrip_ows(bytes value):
    """llhttp keeps a value's trailing spaces and tabs, which RFC 9110 excludes."""
    cdef const char *p = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    if n and (p[n - 1] == b' ' or p[n - 1] == b'\t'):
        return value.rstrip(b" \t")
    return value


cdef bytes ascii_lower(bytes name):
    cdef const char *p = PyBytes_AS_STRING(name)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(name)
    for i in range(n):
        if b'A' <= p[i] <= b'Z':
            return name.lower()
    return name
