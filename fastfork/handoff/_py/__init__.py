"""The hand-off's pure-Python twin (FASTFORK_NO_EXTENSIONS=1): the same
``dispatcher``, ``receiver`` and ``scheduler`` as ``_c``, module for module."""
