"""ppc.sim: the dependency simulator (validation, timeline, reports, pictures)."""
