"""``openstack image sync ...``: the python-openstackclient plugin of the glance sync (doc/osc-plugin.md).

``plugin`` is the ``openstack.cli.extension`` module, ``commands`` the cliff
commands of the ``openstack.glance_sync.v1`` group, ``client`` their way to the
coordinator.  Client side only: nothing here imports ``coordinator`` or ``agent``.
"""
