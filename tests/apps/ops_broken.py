raise ZeroDivisionError("app cannot start: division by zero on purpose")
