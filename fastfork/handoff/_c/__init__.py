"""The hand-off's hot path in Cython: ``dispatcher`` (the primary's end),
``receiver`` (the worker's end), ``scheduler`` (which worker next).  Chosen by
``fastfork.handoff.backend``; never imported directly by the rest of fastfork."""
