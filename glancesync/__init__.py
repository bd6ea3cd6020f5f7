"""The contract shared by glance_proxy, the coordinator and the agents.

Only what all three need lives here: the wire protocol, the state model, the
options, the ``glance_store.yaml`` model, key handling and the status tool.
Nothing in this package imports ``agent``, ``coordinator`` or ``glance_proxy``.
"""

__version__ = "0.1.0"
