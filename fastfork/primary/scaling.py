"""How many workers to fork or stop to reach the wanted count.  No I/O.

Rules
-----
1. Workers that were asked to stop, and replacements still starting (their
   predecessor holds the index), do not count.
2. Scaling down stops the workers with the highest indices.
3. A new worker takes the lowest index no counted worker holds; when several
   are missing, the lowest ones.
"""


def plan(counted, size):
    """``(to_stop, missing)`` for ``counted`` workers (objects with an ``index``)
    and ``size`` wanted: the workers to stop and how many to fork."""
    ordered = sorted(counted, key=lambda w: w.index)
    return ordered[size:], max(0, size - len(ordered))


def free_index(taken):
    """The lowest index not in ``taken``."""
    index = 0
    while index in taken:
        index += 1
    return index


def free_indices(taken, count):
    """The ``count`` lowest indices not in ``taken``."""
    found, index = [], 0
    while len(found) < count:
        if index not in taken:
            found.append(index)
        index += 1
    return found
