"""Tables: typed specs, cells keyed by their composed config, the runner that trains and evaluates them,
the report (means, intervals, findings) and its figures; the main comparison is one of them."""
