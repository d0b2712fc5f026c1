"""How one run is computed: the objective and its regularisers, the methods,
the integration loops with the online tracker, `solve` and its statuses."""
