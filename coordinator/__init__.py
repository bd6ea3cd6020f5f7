"""The coordinator: journals image events, plans per-region tasks, hands them to agents, registers locations."""
