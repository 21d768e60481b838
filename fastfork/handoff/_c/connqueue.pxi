# The connections the primary holds with no worker to take them yet; included
# by dispatcher.pyx.

@cython.final
cdef class ConnQueue:
    """A FIFO ring of ``conn_t`` (fd, listener id) that grows by doubling.

    Connections wait here for a worker with credit: those a dead worker never
    acknowledged (at the front, in their order) and those a failed send
    could not deliver.  Pushing needs room reserved first, so that the hot
    path never fails half-way; the fds are the owner's to close.
    """

    cdef conn_t *items
    cdef int head
    cdef int length
    cdef int capacity

    def __cinit__(self):
        self.items = NULL
        self.head = self.length = self.capacity = 0

    def __dealloc__(self):
        free(self.items)

    cdef int reserve(self, int extra) except -1:
        cdef int cap, i
        cdef conn_t *p
        if self.length + extra <= self.capacity:
            return 0
        cap = self.capacity if self.capacity > 0 else 16
        while cap < self.length + extra:
            cap *= 2
        p = <conn_t *>realloc(NULL, cap * sizeof(conn_t))
        if p == NULL:
            raise MemoryError()
        for i in range(self.length):
            p[i] = self.items[(self.head + i) % self.capacity]
        free(self.items)
        self.items = p
        self.capacity = cap
        self.head = 0
        return 0

    cdef inline void push_back(self, conn_t c) noexcept:
        self.items[(self.head + self.length) % self.capacity] = c
        self.length += 1

    cdef inline void push_front(self, conn_t c) noexcept:
        self.head = (self.head + self.capacity - 1) % self.capacity
        self.items[self.head] = c
        self.length += 1

    cdef inline conn_t pop_front(self) noexcept:
        cdef conn_t c = self.items[self.head]
        self.head = (self.head + 1) % self.capacity
        self.length -= 1
        return c

    cdef int close_all(self) noexcept:
        """Close every fd held; returns how many."""
        cdef int i, n = self.length
        for i in range(n):
            close(self.items[(self.head + i) % self.capacity].fd)
        self.length = self.head = 0
        return n
