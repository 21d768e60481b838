# Makes includes/ a Cython package, so that `from .includes cimport system` works.
