"""Who did it: the request scope in a contextvar, route templates, request ids, route counters."""
